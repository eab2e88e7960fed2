//! The page's views: the model's status, where images come in, the controls, the results, the
//! batch table. Its state and the workers' messages live in `page`; all inference happens in
//! the workers (`inference.rs`), so this thread only draws.

use std::sync::Arc;

use js_sys::{Array, Uint8Array};
use leptos::ev;
use leptos::prelude::*;
use pneumoscope::stage_times::StageTimes;
use pneumoscope::ModelCard;
use wasm_bindgen::prelude::*;
use web_sys::HtmlInputElement;

use crate::card_panel::CardPanel;
use crate::page::{ModelState, Page, Status};
use crate::pdf_report::SaveReport;
use crate::report::{self, Row};
use crate::result_view::{HeatmapControls, ItemView};
use crate::viewer::Viewer;

/// What the file picker offers. DICOM files without an extension are read too (the worker
/// sniffs the `DICM` marker): drop or paste them, or pick "All files".
const ACCEPTED_FILES: &str = "image/png,image/jpeg,.dcm,.dicom,application/dicom";

pub fn mount() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

fn file_list(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    list.map(|list| (0..list.length()).filter_map(|i| list.get(i)).collect())
        .unwrap_or_default()
}

pub(crate) fn percent(p: f32) -> String {
    format!("{:.1}%", p * 100.0)
}

/// Saves `bytes` as a file through a `blob:` link: nothing is sent anywhere.
pub(crate) fn download(name: &str, mime: &str, bytes: &[u8]) -> Result<(), JsValue> {
    let options = web_sys::BlobPropertyBag::new();
    options.set_type(mime);
    let blob = web_sys::Blob::new_with_u8_array_sequence_and_options(
        &Array::of1(&Uint8Array::from(bytes)),
        &options,
    )?;
    let url = web_sys::Url::create_object_url_with_blob(&blob)?;
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let link: web_sys::HtmlAnchorElement = document.create_element("a")?.unchecked_into();
    link.set_href(&url);
    link.set_download(name);
    link.click();
    web_sys::Url::revoke_object_url(&url)
}

#[component]
pub fn App() -> impl IntoView {
    let page = Page::default();
    page.start_worker(0);
    let classes = Memo::new(move |_| match page.model.get() {
        ModelState::Ready(card) => card.classes.clone(),
        _ => Vec::new(),
    });
    let card = Memo::new(move |_| match page.model.get() {
        ModelState::Ready(card) => Some(card),
        _ => None,
    });
    let show_heatmap = RwSignal::new(true);
    let opacity = RwSignal::new(0.6f64);
    let viewing = RwSignal::new(None::<u32>);
    // Made here, owned by the app: a callback made inside `view!` is disposed with its
    // surroundings and then silently does nothing.
    let want_fine_map = Callback::new(move |(id, class)| page.want_fine_map(id, class));

    let paste = window_event_listener(ev::paste, move |event| {
        let files = file_list(event.clipboard_data().and_then(|data| data.files()));
        if !files.is_empty() {
            event.prevent_default();
            page.add_files(files);
        }
    });
    on_cleanup(move || paste.remove());

    view! {
        <header>
            <h1>"Pneumoscope"</h1>
            <p class="tagline">
                "Chest X-ray classification that runs entirely in your browser. "
                "Images never leave this device."
            </p>
            <p class="disclaimer" data-testid="disclaimer">
                "A research tool, not a diagnostic device. Do not use it for clinical decisions."
            </p>
        </header>
        <main>
            <ModelStatus model=page.model load_stages=page.load_stages workers=page.workers_ready />
            <DropZone page=page />
            <Controls show_heatmap=show_heatmap opacity=opacity page=page classes=classes card=card />
            <section class="results" data-testid="results">
                <For each=move || page.items.get() key=|item| item.id let:item>
                    <ItemView item=item classes=classes show_heatmap=show_heatmap opacity=opacity viewing=viewing card=card />
                </For>
            </section>
            <Viewer
                viewing=viewing
                items=page.items
                classes=classes
                show_heatmap=show_heatmap
                opacity=opacity
                card=card
                want_fine_map=want_fine_map
            />
            <BatchTable page=page classes=classes />
            {move || match page.model.get() {
                ModelState::Ready(card) => view! { <CardPanel card=card /> }.into_any(),
                _ => ().into_any(),
            }}
        </main>
    }
}

#[component]
fn ModelStatus(
    model: RwSignal<ModelState>,
    load_stages: RwSignal<StageTimes>,
    workers: RwSignal<usize>,
) -> impl IntoView {
    let state = move || match model.get() {
        ModelState::Loading { .. } => "loading",
        ModelState::Ready(_) => "ready",
        ModelState::Failed(_) => "error",
    };
    view! {
        <section
            class="model-status"
            data-testid="model-status"
            data-state=state
            data-load-stages=move || serde_json::to_string(&load_stages.get()).ok()
            data-workers=move || workers.get()
        >
            {move || match model.get() {
                ModelState::Loading { loaded, total } => {
                    let mb = |b: u64| b as f64 / 1_048_576.0;
                    let text = match total {
                        Some(total) => format!("Loading the model: {:.1} of {:.1} MB", mb(loaded), mb(total)),
                        None => format!("Loading the model: {:.1} MB", mb(loaded)),
                    };
                    view! {
                        <progress max=total.unwrap_or(0) as f64 value=loaded as f64></progress>
                        <span>{text}</span>
                    }
                        .into_any()
                }
                ModelState::Ready(card) => {
                    view! {
                        <span class="ok">
                            {format!(
                                "Model ready: {} ({} classes), checked against its card (SHA-256).",
                                card.name,
                                card.classes.len(),
                            )}
                        </span>
                    }
                        .into_any()
                }
                ModelState::Failed(message) => {
                    view! {
                        <div class="error" role="alert">
                            <strong>"The model could not be loaded. "</strong>
                            {message}
                        </div>
                    }
                        .into_any()
                }
            }}
        </section>
    }
}

#[component]
fn DropZone(page: Page) -> impl IntoView {
    let dragging = RwSignal::new(false);
    view! {
        <section
            class="drop-zone"
            class:dragging=move || dragging.get()
            on:dragover=move |event: ev::DragEvent| {
                event.prevent_default();
                dragging.set(true);
            }
            on:dragleave=move |_| dragging.set(false)
            on:drop=move |event: ev::DragEvent| {
                event.prevent_default();
                dragging.set(false);
                page.add_files(file_list(event.data_transfer().and_then(|d| d.files())));
            }
        >
            <p>"Drop chest radiographs (PNG, JPEG or DICOM) here, paste them, or"</p>
            <label class="button">
                "Choose files"
                <input
                    type="file"
                    multiple=true
                    accept=ACCEPTED_FILES
                    data-testid="file-input"
                    on:change=move |event| {
                        let input: HtmlInputElement = event_target(&event);
                        page.add_files(file_list(input.files()));
                        input.set_value("");
                    }
                />
            </label>
        </section>
    }
}

#[component]
fn Controls(
    show_heatmap: RwSignal<bool>,
    opacity: RwSignal<f64>,
    page: Page,
    classes: Memo<Vec<String>>,
    card: Memo<Option<Arc<ModelCard>>>,
) -> impl IntoView {
    let export = move |_| {
        let items = page.items.get_untracked();
        let statuses: Vec<Status> = items.iter().map(|i| i.status.get_untracked()).collect();
        let rows: Vec<Row> = items
            .iter()
            .zip(&statuses)
            .filter_map(|(item, status)| match status {
                Status::Done(result) => Some(Row {
                    file: &item.name,
                    outcome: Ok(result),
                }),
                Status::Failed(message) => Some(Row {
                    file: &item.name,
                    outcome: Err(message),
                }),
                _ => None,
            })
            .collect();
        let text = report::csv(&classes.get_untracked(), &rows);
        if let Err(error) = download("pneumoscope-results.csv", "text/csv", text.as_bytes()) {
            web_sys::console::error_1(&error);
        }
    };
    view! {
        <section class="controls">
            <HeatmapControls show_heatmap=show_heatmap opacity=opacity />
            <button data-testid="download-csv" on:click=export>
                "Download CSV"
            </button>
            <SaveReport
                card=card
                items=Signal::derive(move || page.items.get())
                opacity=opacity
                label="Save report (PDF, all)"
                file_name="pneumoscope-report.pdf".into()
                test_id="save-batch-report"
            />
            <button on:click=move |_| page.clear()>"Clear"</button>
        </section>
    }
}

#[component]
fn BatchTable(page: Page, classes: Memo<Vec<String>>) -> impl IntoView {
    let rows = move || {
        page.items
            .get()
            .into_iter()
            .map(|item| {
                let cells = move || match item.status.get() {
                    Status::Done(result) => {
                        let mut cells = vec![result.verdict(&classes.get())];
                        cells.extend(result.probabilities.iter().map(|&p| percent(p)));
                        cells.push(format!("{:.0}", result.millis));
                        cells
                    }
                    other => {
                        let mut cells = vec![match other {
                            Status::Failed(message) => format!("error: {message}"),
                            pending => pending.name().to_string(),
                        }];
                        cells.extend(std::iter::repeat_n(String::new(), classes.get().len() + 1));
                        cells
                    }
                };
                view! {
                    <tr>
                        <td>{item.name.clone()}</td>
                        {move || cells().into_iter().map(|c| view! { <td>{c}</td> }).collect_view()}
                    </tr>
                }
            })
            .collect_view()
    };
    view! {
        <Show when=move || !page.items.with(Vec::is_empty)>
            <section class="batch">
                <h2>"Batch"</h2>
                <table data-testid="batch-table">
                    <thead>
                        <tr>
                            <th>"File"</th>
                            <th>"Prediction"</th>
                            {move || classes.get().into_iter().map(|c| view! { <th>{c}</th> }).collect_view()}
                            <th>"ms"</th>
                        </tr>
                    </thead>
                    <tbody>{rows}</tbody>
                </table>
            </section>
        </Show>
    }
}

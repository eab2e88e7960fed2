//! The page: loading the model, taking images in, showing what the model says and where it looked.
//! All inference happens in the worker (`inference.rs`); this thread only draws.

use std::sync::Arc;

use js_sys::{Array, Uint8Array};
use leptos::ev;
use leptos::prelude::*;
use pneumoscope::cam::HeatMap;
use pneumoscope::stage_times::StageTimes;
use pneumoscope::ModelCard;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{HtmlInputElement, MessageEvent, Worker};

use crate::card_panel::CardPanel;
use crate::js::error_message;
use crate::pdf_report::SaveReport;
use crate::pool::{pool_size, Job, Pool, Urgency};
use crate::protocol::{FromWorker, ImageResult};
use crate::report::{self, Row};
use crate::result_view::{HeatmapControls, ItemView};
use crate::viewer::Viewer;

/// Files above this size are refused before they are read: no radiograph is this large, and
/// reading one would stall the tab.
pub const MAX_FILE_BYTES: f64 = 200.0 * 1024.0 * 1024.0;

/// What the file picker offers. DICOM files without an extension are read too (the worker
/// sniffs the `DICM` marker): drop or paste them, or pick "All files".
const ACCEPTED_FILES: &str = "image/png,image/jpeg,.dcm,.dicom,application/dicom";

/// The worker's loader script, written by trunk beside the page.
const WORKER_URL: &str = "./worker_loader.js";

#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    Loading { loaded: u64, total: Option<u64> },
    Ready(Arc<ModelCard>),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Reading,
    Queued,
    Running,
    Done(Arc<ImageResult>),
    Failed(String),
}

impl Status {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Status::Reading => "reading",
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Done(_) => "done",
            Status::Failed(_) => "error",
        }
    }
}

/// One image the user gave the page.
#[derive(Debug, Clone)]
pub struct Item {
    pub(crate) id: u32,
    pub(crate) name: String,
    /// What the page shows of the image: a `blob:` URL of the file itself, or, for a file the
    /// browser cannot show (DICOM), the worker's rendering as a `data:` URL. Neither leaves
    /// the browser.
    pub(crate) thumbnail: RwSignal<String>,
    pub(crate) status: RwSignal<Status>,
    /// The class whose evidence the heat map shows; `None` means the top class.
    pub(crate) heatmap_class: RwSignal<Option<usize>>,
    /// Show the probabilities of an image the gate flagged.
    pub(crate) reveal: RwSignal<bool>,
    /// The pool slot of the worker that classified it (and holds its input for fine maps).
    pub(crate) worker: RwSignal<Option<usize>>,
    /// The fine heat maps the worker has sent, by class.
    pub(crate) fine_maps: RwSignal<Vec<HeatMap>>,
}

/// Everything the worker's messages update.
#[derive(Clone, Copy)]
struct Page {
    model: RwSignal<ModelState>,
    /// How long each step of loading the model took, for the benchmark.
    load_stages: RwSignal<StageTimes>,
    items: RwSignal<Vec<Item>>,
    pool: StoredValue<Pool, LocalStorage>,
    /// Workers with the model loaded.
    workers_ready: RwSignal<usize>,
    next_id: StoredValue<u32>,
}

pub fn mount() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(App);
}

impl Page {
    fn item(&self, id: u32) -> Option<Item> {
        self.items
            .with_untracked(|items| items.iter().find(|i| i.id == id).cloned())
    }

    fn set_status(&self, id: u32, status: Status) {
        if let Some(item) = self.item(id) {
            item.status.set(status);
        }
    }

    fn model_ready(&self) -> bool {
        matches!(self.model.get_untracked(), ModelState::Ready(_))
    }

    fn on_message(&self, worker: usize, message: FromWorker) {
        match message {
            FromWorker::Booted => self.pool.update_value(|pool| pool.booted(worker)),
            FromWorker::LoadProgress { loaded, total } => {
                // Only the first load shows: later workers load while the page already works.
                if !self.model_ready() {
                    self.model.set(ModelState::Loading { loaded, total })
                }
            }
            FromWorker::Ready { card, load_stages } => {
                self.pool.update_value(|pool| pool.ready(worker));
                self.workers_ready
                    .set(self.pool.with_value(Pool::ready_count));
                if !self.model_ready() {
                    self.load_stages.set(load_stages);
                    self.model.set(ModelState::Ready(Arc::new(*card)));
                    register_service_worker();
                    for index in self.pool.with_value(Pool::slot_count)..pool_size() {
                        self.start_worker(index);
                    }
                }
            }
            FromWorker::LoadFailed { message } => {
                if self.model_ready() {
                    // An extra worker that cannot load (memory, say) only shrinks the pool.
                    web_sys::console::warn_1(&format!("a worker could not load: {message}").into());
                    self.pool.update_value(|pool| {
                        pool.remove(worker);
                    });
                    return;
                }
                for id in self
                    .pool
                    .try_update_value(Pool::drain_queue)
                    .unwrap_or_default()
                {
                    self.set_status(id, Status::Failed(no_model(&message)));
                }
                self.model.set(ModelState::Failed(message));
            }
            FromWorker::Started { id } => self.set_status(id, Status::Running),
            FromWorker::Classified { id, result } => {
                if let Some(item) = self.item(id) {
                    item.worker.set(Some(worker));
                    if let Some(preview) = result.preview.clone() {
                        revoke_blob_url(&item.thumbnail.get_untracked());
                        item.thumbnail.set(preview);
                    }
                }
                let top = result.top;
                self.set_status(id, Status::Done(Arc::new(*result)));
                // The top class's fine map, once this worker has no image waiting.
                self.pool.update_value(|pool| {
                    pool.finished(worker);
                    pool.request_fine_map(worker, id, top, Urgency::Background);
                });
            }
            FromWorker::FineMap { id, map } => {
                if let Some(item) = self.item(id) {
                    item.fine_maps.update(|maps| maps.push(map));
                }
                self.pool.update_value(|pool| pool.finished(worker));
            }
            FromWorker::FineMapFailed { id, class, message } => {
                // The page keeps drawing the coarser map it has.
                web_sys::console::warn_1(
                    &format!("no fine heat map for image {id}, class {class}: {message}").into(),
                );
                self.pool.update_value(|pool| pool.finished(worker));
            }
            FromWorker::Failed { id, message } => {
                self.set_status(id, Status::Failed(message));
                self.pool.update_value(|pool| pool.finished(worker));
            }
        }
    }

    /// Asks the worker that classified `id` for the fine map of `class`, ahead of queued images
    /// (the viewer shows it now), unless the item has it or it is on its way.
    fn want_fine_map(&self, id: u32, class: usize) {
        let Some(item) = self.item(id) else {
            return;
        };
        let has = item
            .fine_maps
            .with_untracked(|maps| maps.iter().any(|m| m.class == class));
        if let (false, Some(worker)) = (has, item.worker.get_untracked()) {
            self.pool
                .update_value(|pool| pool.request_fine_map(worker, id, class, Urgency::Now));
        }
    }

    /// A worker that traps (out of memory, say) cannot be trusted again: the image it held is
    /// marked failed and the worker is dropped; when it was the last one, a fresh worker loads
    /// the model again. Queued images wait for the others.
    fn on_worker_crash(&self, worker: usize, detail: String) {
        let running = self
            .pool
            .try_update_value(|pool| pool.remove(worker))
            .flatten()
            .and_then(Job::image);
        if let Some(id) = running {
            self.set_status(
                id,
                Status::Failed(format!(
                    "the inference worker stopped ({detail}); add the image again"
                )),
            );
        }
        let ready = self.pool.with_value(Pool::ready_count);
        self.workers_ready.set(ready);
        if ready == 0 {
            self.model.set(ModelState::Loading {
                loaded: 0,
                total: None,
            });
            self.start_worker(worker);
        }
    }

    /// Starts a worker in slot `index`; it loads the model once it has booted.
    fn start_worker(&self, index: usize) {
        let page = *self;
        let worker = match Worker::new(WORKER_URL) {
            Ok(worker) => worker,
            Err(error) => {
                if !self.model_ready() {
                    self.model.set(ModelState::Failed(format!(
                        "could not start the inference worker: {}",
                        error_message(&error)
                    )));
                }
                return;
            }
        };
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let text = event.data().as_string().unwrap_or_default();
            match serde_json::from_str::<FromWorker>(&text) {
                Ok(message) => page.on_message(index, message),
                Err(error) => web_sys::console::error_1(&error.to_string().into()),
            }
        });
        let on_error =
            Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |event: web_sys::ErrorEvent| {
                page.on_worker_crash(index, event.message())
            });
        worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        on_message.forget();
        on_error.forget();
        self.pool.update_value(|pool| pool.install(index, worker));
    }

    fn add_files(&self, files: Vec<web_sys::File>) {
        for file in files {
            let id = self.next_id.get_value();
            self.next_id.set_value(id + 1);
            let item = Item {
                id,
                name: file.name(),
                thumbnail: RwSignal::new(
                    web_sys::Url::create_object_url_with_blob(&file).unwrap_or_default(),
                ),
                status: RwSignal::new(Status::Reading),
                heatmap_class: RwSignal::new(None),
                reveal: RwSignal::new(false),
                worker: RwSignal::new(None),
                fine_maps: RwSignal::new(Vec::new()),
            };
            self.items.update(|items| items.push(item.clone()));
            if file.size() > MAX_FILE_BYTES {
                item.status.set(Status::Failed(format!(
                    "the file is {:.0} MB, over the {:.0} MB limit",
                    file.size() / 1048576.0,
                    MAX_FILE_BYTES / 1048576.0
                )));
                continue;
            }
            let page = *self;
            wasm_bindgen_futures::spawn_local(async move {
                match JsFuture::from(file.array_buffer()).await {
                    Ok(buffer) => match page.model.get_untracked() {
                        ModelState::Failed(message) => {
                            item.status.set(Status::Failed(no_model(&message)))
                        }
                        _ => {
                            item.status.set(Status::Queued);
                            page.pool.update_value(|pool| pool.enqueue(id, buffer));
                        }
                    },
                    Err(error) => item.status.set(Status::Failed(format!(
                        "could not read the file: {}",
                        error_message(&error)
                    ))),
                }
            });
        }
    }

    fn clear(&self) {
        self.pool.update_value(|pool| {
            pool.drain_queue();
        });
        self.items.update(|items| {
            for item in items.drain(..) {
                revoke_blob_url(&item.thumbnail.get_untracked());
            }
        });
    }
}

fn no_model(reason: &str) -> String {
    format!("no model to classify with: {reason}")
}

/// The service worker keeps the app and the weights for offline use; registered once the model
/// has loaded, so its copy of the weights comes from the browser's cache, not a second download.
fn register_service_worker() {
    let Some(window) = web_sys::window() else {
        return;
    };
    if !window.is_secure_context() {
        return;
    }
    let promise = window.navigator().service_worker().register("./sw.js");
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(error) = JsFuture::from(promise).await {
            web_sys::console::warn_1(&error);
        }
    });
}

fn file_list(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    list.map(|list| (0..list.length()).filter_map(|i| list.get(i)).collect())
        .unwrap_or_default()
}

fn revoke_blob_url(url: &str) {
    if url.starts_with("blob:") {
        let _ = web_sys::Url::revoke_object_url(url);
    }
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
    let page = Page {
        model: RwSignal::new(ModelState::Loading {
            loaded: 0,
            total: None,
        }),
        load_stages: RwSignal::new(StageTimes::default()),
        items: RwSignal::new(Vec::new()),
        pool: StoredValue::new_local(Pool::default()),
        workers_ready: RwSignal::new(0),
        next_id: StoredValue::new(0),
    };
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

//! One image's card on the page: the radiograph with its heat map, the verdict, the
//! probabilities, and how a DICOM file was read.

use std::sync::Arc;

use pneumoscope::preprocess::CropRegion;
use pneumoscope::track_record::AnswerRecord;
use pneumoscope::ModelCard;

use leptos::prelude::*;

use crate::app::percent;
use crate::heatmap;
use crate::page::{Item, Status};
use crate::pdf_report::{report_name, SaveReport};
use crate::picture::put_rgba;
use crate::protocol::ImageResult;

/// The heat map over the crop the network saw, once the worker has sent it (nothing before: the
/// last block's map that comes with the result scores worse than a random map on the deletion
/// metric, `cargo bench -p trainer --bench attribution`, so it is never drawn).
#[component]
pub(crate) fn HeatMap(
    map: Signal<Option<pneumoscope::cam::HeatMap>>,
    crop: CropRegion,
    show: RwSignal<bool>,
    opacity: RwSignal<f64>,
) -> impl IntoView {
    let canvas = NodeRef::<leptos::html::Canvas>::new();
    Effect::new(move |_| {
        let (Some(canvas), Some(map)) = (canvas.get(), map.get()) else {
            return;
        };
        let pixels = heatmap::rgba(&map.values);
        let drawn = put_rgba(&canvas, &pixels, map.width as u32, map.height as u32);
        if drawn.is_err() {
            web_sys::console::warn_1(&"could not draw the heat map".into());
        }
    });
    view! {
        <canvas
            class="heatmap"
            data-testid="heatmap"
            data-map-size=move || map.with(|m| m.as_ref().map(|m| format!("{}x{}", m.width, m.height)))
            title=move || map.with(|m| m.as_ref().map(|m| m.describe()))
            node_ref=canvas
            style:left=format!("{}%", crop.left * 100.0)
            style:top=format!("{}%", crop.top * 100.0)
            style:width=format!("{}%", crop.width * 100.0)
            style:height=format!("{}%", crop.height * 100.0)
            style:opacity=move || opacity.get().to_string()
            style:display=move || if show.get() && map.with(Option::is_some) { "block" } else { "none" }
        ></canvas>
    }
}

#[component]
fn Probabilities(
    probabilities: Vec<f32>,
    top: usize,
    classes: Vec<String>,
    positive: Vec<Option<bool>>,
    heatmap_class: RwSignal<Option<usize>>,
) -> impl IntoView {
    let selected = move || heatmap_class.get().unwrap_or(top);
    probabilities
        .into_iter()
        .zip(classes)
        .enumerate()
        .map(|(class, (p, name))| {
            let label = name.clone();
            // In words, not only colour: the card panel gives each threshold.
            let verdict = positive.get(class).copied().flatten().map(|called| {
                view! {
                    <span class="operating" class:positive=called data-testid="operating-verdict">
                        {if called { "positive at operating point" } else { "below operating point" }}
                    </span>
                }
            });
            view! {
                <button
                    class="bar"
                    class:top=class == top
                    class:selected=move || selected() == class
                    title="Show the evidence for this class"
                    data-testid="probability"
                    data-class=name
                    data-value=p.to_string()
                    on:click=move |_| heatmap_class.set(Some(class))
                >
                    <span class="label">{label}</span>
                    <span class="track">
                        <span class="fill" style:width=format!("{}%", p * 100.0)></span>
                    </span>
                    <span class="value">{percent(p)}</span>
                    {verdict}
                </button>
            }
        })
        .collect_view()
}

/// How often the top answer was right on the card's evaluation (`track_record`), below it.
#[component]
fn TrackRecord(record: AnswerRecord) -> impl IntoView {
    view! {
        <p
            class="track-record"
            data-testid="track-record"
            title="How often this answer was right on that recorded evaluation set; it depends on how common each class was there"
        >
            <strong>"Track record: "</strong>
            {record.describe()}
        </p>
    }
}

#[component]
fn Outcome(
    result: Arc<ImageResult>,
    classes: Vec<String>,
    record: Option<AnswerRecord>,
    item: Item,
) -> impl IntoView {
    let top_name = classes.get(result.top).cloned().unwrap_or_default();
    let flagged = result.flagged();
    let (reveal, heatmap_class) = (item.reveal, item.heatmap_class);
    let millis = format!("{:.0} ms", result.millis);
    let details = {
        let (probabilities, top) = (result.probabilities.clone(), result.top);
        let positive = result.positive.clone();
        move || {
            view! {
                <div class="probabilities">
                    <Probabilities
                        probabilities=probabilities.clone()
                        top=top
                        classes=classes.clone()
                        positive=positive.clone()
                        heatmap_class=heatmap_class
                    />
                </div>
            }
        }
    };
    let verdict = if flagged {
        view! {
            <div class="ood-warning" role="alert" data-testid="ood-warning">
                <strong>"This does not look like a chest X-ray of the kind the model was trained on."</strong>
                " No diagnosis is shown. "
                <button on:click=move |_| reveal.update(|r| *r = !*r)>
                    {move || if reveal.get() { "Hide probabilities" } else { "Show probabilities anyway" }}
                </button>
            </div>
        }
        .into_any()
    } else {
        view! {
            <p class="top" data-testid="top-class">
                {top_name}
                " "
                <span class="confidence">{percent(result.probabilities[result.top])}</span>
            </p>
            {record.map(|record| view! { <TrackRecord record=record /> })}
        }
        .into_any()
    };
    let dicom = result.dicom.as_ref().map(|info| {
        view! { <p class="dicom" data-testid="dicom-info">{info.summary()}</p> }
    });
    view! {
        {verdict}
        <Show when=move || !flagged || reveal.get()>{details.clone()}</Show>
        {dicom}
        <p class="time">{millis}</p>
    }
}

#[component]
pub fn ItemView(
    item: Item,
    classes: Memo<Vec<String>>,
    show_heatmap: RwSignal<bool>,
    opacity: RwSignal<f64>,
    viewing: RwSignal<Option<u32>>,
    card: Memo<Option<Arc<ModelCard>>>,
) -> impl IntoView {
    let status = item.status;
    let probabilities = move || match status.get() {
        Status::Done(result) => serde_json::to_string(&result.probabilities).ok(),
        _ => None,
    };
    // The top class's heat map as computed (before colouring), for comparison with trainer
    // predict.
    let fine_maps = item.fine_maps;
    let top_fine_map = move || match status.get() {
        Status::Done(result) => fine_maps.with(|maps| {
            let map = maps.iter().find(|m| m.class == result.top)?;
            serde_json::to_string(&(map.width, map.height, &map.values)).ok()
        }),
        _ => None,
    };
    let stages = move || match status.get() {
        Status::Done(result) => serde_json::to_string(&result.stages).ok(),
        _ => None,
    };
    let heatmap = {
        let item = item.clone();
        move || match status.get() {
            // An image the gate flags gets no heat map unless the user asks for its details.
            Status::Done(result) if !result.flagged() || item.reveal.get() => {
                let (top, crop) = (result.top, result.crop);
                let item = item.clone();
                let map =
                    Signal::derive(move || item.heat_map(item.heatmap_class.get().unwrap_or(top)));
                view! { <HeatMap map=map crop=crop show=show_heatmap opacity=opacity /> }.into_any()
            }
            _ => ().into_any(),
        }
    };
    let body = {
        let item = item.clone();
        move || match status.get() {
            Status::Reading => view! { <p class="pending">"Reading…"</p> }.into_any(),
            Status::Queued => view! { <p class="pending">"Waiting…"</p> }.into_any(),
            Status::Running => view! { <p class="pending">"Classifying…"</p> }.into_any(),
            Status::Failed(message) => {
                view! { <p class="error" data-testid="item-error">{message}</p> }.into_any()
            }
            Status::Done(result) => {
                let record = card.with(|card| card.as_ref()?.answer_record(result.top));
                view! {
                    <Outcome result=result classes=classes.get() record=record item=item.clone() />
                }
                .into_any()
            }
        }
    };
    let millis = move || match status.get() {
        Status::Done(result) => Some(result.millis.to_string()),
        _ => None,
    };
    let failed = move || matches!(status.get(), Status::Failed(_));
    let done = move || matches!(status.get(), Status::Done(_));
    let id = item.id;
    let thumbnail = item.thumbnail;
    let save_report = {
        let item = item.clone();
        move || {
            let only = item.clone();
            done().then(|| {
                view! {
                    <SaveReport
                        card=card
                        items=Signal::derive(move || vec![only.clone()])
                        opacity=opacity
                        label="Save report"
                        file_name=report_name(&item.name)
                        test_id="save-report"
                    />
                }
            })
        }
    };
    view! {
        <article
            class="item"
            data-testid="result"
            data-name=item.name.clone()
            data-status=move || status.get().name()
            data-probabilities=probabilities
            data-top-fine-map=top_fine_map
            data-millis=millis
            data-stages=stages
            data-worker=move || item.worker.get()
        >
            <button
                class="figure"
                class:hidden=failed
                disabled=move || !done()
                aria-label=format!("Open {} in the viewer", item.name)
                data-testid="open-viewer"
                on:click=move |_| viewing.set(Some(id))
            >
                <img src=move || thumbnail.get() alt=format!("radiograph {}", item.name) />
                {heatmap}
            </button>
            <div class="details">
                <h3 title=item.name.clone()>{item.name.clone()}</h3>
                {body}
                {save_report}
            </div>
        </article>
    }
}

/// The heat map's switch and opacity, shared by the page's controls and the viewer.
#[component]
pub(crate) fn HeatmapControls(
    show_heatmap: RwSignal<bool>,
    opacity: RwSignal<f64>,
) -> impl IntoView {
    view! {
        <label>
            <input
                type="checkbox"
                data-testid="heatmap-toggle"
                prop:checked=move || show_heatmap.get()
                on:change=move |event| {
                    let input: web_sys::HtmlInputElement = event_target(&event);
                    show_heatmap.set(input.checked());
                }
            />
            " Heat map"
        </label>
        <label>
            "Opacity "
            <input
                type="range"
                min="0"
                max="1"
                step="0.05"
                data-testid="heatmap-opacity"
                prop:value=move || opacity.get().to_string()
                on:input=move |event| {
                    if let Ok(value) = event_target_value(&event).parse() {
                        opacity.set(value);
                    }
                }
            />
        </label>
    }
}

//! "Save report": the shared PDF report (`pneumoscope::report`, the same as `trainer predict
//! --report`) made in the page from what it holds: each image's picture read back from its
//! thumbnail with the heat map of the class shown, its results and the card. Saved through a
//! `blob:` link; nothing leaves the device.

use std::sync::Arc;

use leptos::prelude::*;
use pneumoscope::report::{finding_lines, overlay, report_pdf, Findings, ReportEntry};
use pneumoscope::ModelCard;

use crate::app::download;
use crate::js::error_message;
use crate::page::{Item, MapState, Status};
use crate::picture::load_picture;
use crate::protocol::ImageResult;

/// Longest side of a report's picture, in pixels.
const REPORT_SIDE: f64 = 1024.0;

async fn entry(
    card: &ModelCard,
    item: &Item,
    result: &ImageResult,
    opacity: f32,
) -> Result<ReportEntry, String> {
    let picture = load_picture(&item.thumbnail.get_untracked(), REPORT_SIDE)
        .await
        .map_err(|e| format!("{}: {}", item.name, error_message(&e)))?
        .to_rgb()
        .ok_or("the picture could not be read")?;
    let class = item
        .heatmap_class
        .get_untracked()
        .unwrap_or(result.top)
        .min(card.classes.len().saturating_sub(1));
    // A flagged image's report shows no heat map unless the user revealed it, as on the page.
    let map = if result.flagged() && !item.reveal.get_untracked() {
        Err("the out-of-distribution gate flagged the image")
    } else {
        // Maps follow the batch's results: one may not have arrived yet.
        match untrack(|| item.map_state(class)) {
            MapState::Ready(map) => Ok(map),
            MapState::Computing => Err("still being computed when the report was saved"),
            MapState::Failed => Err("it could not be computed for this image"),
        }
    };
    let picture = match &map {
        Ok(map) => overlay(&picture, map, result.crop, opacity),
        Err(_) => picture,
    };
    let findings = Findings {
        probabilities: &result.probabilities,
        top: result.top,
        in_distribution: result.in_distribution,
        positive: &result.positive,
        heatmap: map.as_ref().map_err(|why| *why),
    };
    Ok(ReportEntry {
        file_name: item.name.clone(),
        picture,
        lines: finding_lines(card, &findings),
    })
}

/// Writes the report of `items` (those classified) as `file_name`.
pub async fn save(
    card: Arc<ModelCard>,
    items: Vec<Item>,
    opacity: f32,
    file_name: String,
) -> Result<(), String> {
    let mut entries = Vec::new();
    for item in &items {
        if let Status::Done(result) = item.status.get_untracked() {
            entries.push(entry(&card, item, &result, opacity).await?);
        }
    }
    if entries.is_empty() {
        return Err("no classified image to report".into());
    }
    let date = String::from(js_sys::Date::new_0().to_iso_string());
    // "2026-11-29T05:36:12.345Z" -> "2026-11-29 05:36 UTC"
    let date = format!("{} {} UTC", &date[..10], &date[11..16]);
    let pdf = report_pdf(&card, &date, &entries).map_err(|e| e.to_string())?;
    download(&file_name, "application/pdf", &pdf).map_err(|e| error_message(&e))
}

/// The report file's name for one image: its own name with `.pdf`.
pub fn report_name(image: &str) -> String {
    let stem = image.rsplit_once('.').map_or(image, |(stem, _)| stem);
    format!("{stem}-report.pdf")
}

/// Starts `save`; a failure is put in `failure` for the button to show.
fn save_in_background(
    card: Arc<ModelCard>,
    items: Vec<Item>,
    opacity: f32,
    file_name: String,
    failure: RwSignal<Option<String>>,
) {
    failure.set(None);
    leptos::task::spawn_local(async move {
        if let Err(message) = save(card, items, opacity, file_name).await {
            failure.set(Some(format!("The report could not be saved: {message}")));
        }
    });
}

/// A button that saves the report of `items`; disabled until the model is ready.
#[component]
pub fn SaveReport(
    card: Memo<Option<Arc<ModelCard>>>,
    items: Signal<Vec<Item>>,
    opacity: RwSignal<f64>,
    label: &'static str,
    file_name: String,
    test_id: &'static str,
) -> impl IntoView {
    let failure = RwSignal::new(None::<String>);
    let on_click = move |_| {
        if let Some(card) = card.get_untracked() {
            save_in_background(
                card,
                items.get_untracked(),
                opacity.get_untracked() as f32,
                file_name.clone(),
                failure,
            );
        }
    };
    view! {
        <button data-testid=test_id disabled=move || card.get().is_none() on:click=on_click>
            {label}
        </button>
        {move || failure.get().map(|message| view! {
            <span class="error" role="alert" data-testid="report-error">{message}</span>
        })}
    }
}

//! The viewer: one radiograph large, fitted to the window, with zoom and pan, window/level by
//! drag, the heat map over the crop the network saw (with its colour scale), and previous/next
//! through the batch. Everything works from the keyboard too (`HELP`).

use std::sync::Arc;

use leptos::prelude::*;
use pneumoscope::ModelCard;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{HtmlCanvasElement, HtmlImageElement};

use crate::heatmap;
use crate::page::{Item, MapState, Status};
use crate::pdf_report::{report_name, SaveReport};
use crate::picture::{put_rgba, read_picture, Picture};
use crate::result_view::{HeatMap, HeatmapControls};

const HELP: &str = "Drag: window/level (sideways: width, up/down: level) · Shift+drag or \
                    Shift+arrows: pan · wheel or + and −: zoom · 0: fit · [ and ]: window width · \
                    PageUp/PageDown: level · R: reset window · ← and →: previous/next · Esc: close";

/// Longest side the viewer draws at: enough for any screen, bounded work per window change.
const MAX_SIDE: f64 = 2048.0;

/// The grey range shown from black to white, in [0, 1] units of the picture's grey levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowLevel {
    pub center: f64,
    pub width: f64,
}

impl WindowLevel {
    pub const FULL: Self = Self {
        center: 0.5,
        width: 1.0,
    };

    /// After a drag of (dx, dy) pixels: sideways scales the width, up brightens (lowers the
    /// centre), as in radiology viewers.
    pub fn dragged(self, dx: f64, dy: f64) -> Self {
        Self {
            width: (self.width * (dx * 0.005).exp()).clamp(0.02, 2.0),
            center: (self.center + dy * 0.002).clamp(0.0, 1.0),
        }
    }

    /// The 8-bit lookup table of this window.
    pub fn table(self) -> [u8; 256] {
        let low = self.center - self.width / 2.0;
        std::array::from_fn(|v| {
            let grey = (v as f64 / 255.0 - low) / self.width;
            (grey.clamp(0.0, 1.0) * 255.0).round() as u8
        })
    }

    pub fn label(self) -> String {
        format!("window {:.2}, level {:.2}", self.width, self.center)
    }
}

/// Applies `table` to the colour channels of RGBA pixels (alpha kept).
pub fn apply_window(original: &[u8], table: &[u8; 256]) -> Vec<u8> {
    original
        .chunks_exact(4)
        .flat_map(|p| {
            [
                table[p[0] as usize],
                table[p[1] as usize],
                table[p[2] as usize],
                p[3],
            ]
        })
        .collect()
}

/// Zoom and pan of the picture in the stage.
#[derive(Debug, Clone, Copy, PartialEq)]
struct View {
    zoom: f64,
    x: f64,
    y: f64,
}

impl View {
    const FIT: Self = Self {
        zoom: 1.0,
        x: 0.0,
        y: 0.0,
    };

    fn zoomed(self, factor: f64) -> Self {
        Self {
            zoom: (self.zoom * factor).clamp(0.5, 16.0),
            ..self
        }
    }

    fn panned(self, dx: f64, dy: f64) -> Self {
        Self {
            x: self.x + dx,
            y: self.y + dy,
            ..self
        }
    }

    fn transform(self) -> String {
        format!("translate({}px, {}px) scale({})", self.x, self.y, self.zoom)
    }
}

fn draw(canvas: &HtmlCanvasElement, picture: &Picture, window: WindowLevel) -> Result<(), JsValue> {
    let pixels = apply_window(&picture.pixels, &window.table());
    put_rgba(canvas, &pixels, picture.width, picture.height)
}

/// Where a pointer drag started and what it changes.
#[derive(Clone, Copy)]
struct Drag {
    x: f64,
    y: f64,
    pan: bool,
    window: WindowLevel,
    view: View,
}

#[component]
pub fn Viewer(
    viewing: RwSignal<Option<u32>>,
    items: RwSignal<Vec<Item>>,
    classes: Memo<Vec<String>>,
    show_heatmap: RwSignal<bool>,
    opacity: RwSignal<f64>,
    card: Memo<Option<Arc<ModelCard>>>,
    /// Asks for the fine heat map of (image, class), which the viewer shows once it arrives.
    want_fine_map: Callback<(u32, usize)>,
) -> impl IntoView {
    // The batch's classified images, in order, and where the viewer is among them.
    let done = move || {
        items.with(|items| {
            items
                .iter()
                .filter(|i| matches!(i.status.get(), Status::Done(_)))
                .cloned()
                .collect::<Vec<Item>>()
        })
    };
    // (position among them, how many, the item's id)
    let current = Memo::new(move |_| {
        let id = viewing.get()?;
        let done = done();
        let index = done.iter().position(|i| i.id == id)?;
        Some((index, done.len(), id))
    });
    let item_of = move |id: u32| items.with(|items| items.iter().find(|i| i.id == id).cloned());
    // The fine heat map of the image and class on screen, asked for as soon as they change.
    Effect::new(move |_| {
        let Some(item) = current.get().and_then(|(_, _, id)| item_of(id)) else {
            return;
        };
        let Status::Done(result) = item.status.get() else {
            return;
        };
        if !result.flagged() || item.reveal.get() {
            let class = item.heatmap_class.get().unwrap_or(result.top);
            want_fine_map.run((item.id, class));
        }
    });
    let step = move |by: isize| {
        let done = done();
        if let Some((index, count, _)) = current.get_untracked() {
            let next = (index as isize + by).rem_euclid(count as isize) as usize;
            viewing.set(done.get(next).map(|i| i.id));
        }
    };
    let window = RwSignal::new(WindowLevel::FULL);
    let view_state = RwSignal::new(View::FIT);
    let drag = StoredValue::new(None::<Drag>);
    let picture = StoredValue::new_local(Picture::default());
    let loaded = RwSignal::new(0u32);
    let canvas = NodeRef::<leptos::html::Canvas>::new();
    let dialog = NodeRef::<leptos::html::Div>::new();

    // A new image: reset the view, read its pixels, focus the dialog.
    Effect::new(move |_| {
        let Some(item) = current.get().and_then(|(_, _, id)| item_of(id)) else {
            return;
        };
        window.set(WindowLevel::FULL);
        view_state.set(View::FIT);
        let Ok(image) = HtmlImageElement::new() else {
            return;
        };
        let source = image.clone();
        let onload = Closure::once_into_js(move || match read_picture(&source, MAX_SIDE) {
            Ok(read) => {
                picture.set_value(read);
                loaded.update(|n| *n += 1);
            }
            Err(error) => web_sys::console::error_1(&error),
        });
        image.set_onload(Some(onload.unchecked_ref()));
        image.set_src(&item.thumbnail.get_untracked());
        if let Some(dialog) = dialog.get_untracked() {
            let _ = dialog.focus();
        }
    });
    // Redraw on a new window or a newly read picture.
    Effect::new(move |_| {
        let (window, _) = (window.get(), loaded.get());
        if let Some(canvas) = canvas.get() {
            picture.with_value(|p| {
                if p.width > 0 {
                    if let Err(error) = draw(&canvas, p, window) {
                        web_sys::console::error_1(&error);
                    }
                }
            });
        }
    });

    let close = move || viewing.set(None);
    let on_key = move |event: leptos::ev::KeyboardEvent| {
        let shift = event.shift_key();
        let pan = |dx: f64, dy: f64| view_state.update(|v| *v = v.panned(dx, dy));
        let handled = match event.key().as_str() {
            "Escape" => {
                close();
                true
            }
            "ArrowLeft" if shift => {
                pan(40.0, 0.0);
                true
            }
            "ArrowRight" if shift => {
                pan(-40.0, 0.0);
                true
            }
            "ArrowUp" if shift => {
                pan(0.0, 40.0);
                true
            }
            "ArrowDown" if shift => {
                pan(0.0, -40.0);
                true
            }
            "ArrowLeft" => {
                step(-1);
                true
            }
            "ArrowRight" => {
                step(1);
                true
            }
            "+" | "=" => {
                view_state.update(|v| *v = v.zoomed(1.25));
                true
            }
            "-" => {
                view_state.update(|v| *v = v.zoomed(0.8));
                true
            }
            "0" => {
                view_state.set(View::FIT);
                true
            }
            "[" => {
                window.update(|w| *w = w.dragged(-40.0, 0.0));
                true
            }
            "]" => {
                window.update(|w| *w = w.dragged(40.0, 0.0));
                true
            }
            "PageUp" => {
                window.update(|w| *w = w.dragged(0.0, -25.0));
                true
            }
            "PageDown" => {
                window.update(|w| *w = w.dragged(0.0, 25.0));
                true
            }
            "r" | "R" => {
                window.set(WindowLevel::FULL);
                true
            }
            _ => false,
        };
        if handled {
            event.prevent_default();
        }
    };
    let on_pointer_down = move |event: leptos::ev::PointerEvent| {
        if event.button() != 0 {
            return;
        }
        drag.set_value(Some(Drag {
            x: event.client_x() as f64,
            y: event.client_y() as f64,
            pan: event.shift_key(),
            window: window.get_untracked(),
            view: view_state.get_untracked(),
        }));
        if let Some(target) = event
            .target()
            .and_then(|t| t.dyn_into::<web_sys::Element>().ok())
        {
            let _ = target.set_pointer_capture(event.pointer_id());
        }
        event.prevent_default();
    };
    let on_pointer_move = move |event: leptos::ev::PointerEvent| {
        let Some(start) = drag.get_value() else {
            return;
        };
        let (dx, dy) = (
            event.client_x() as f64 - start.x,
            event.client_y() as f64 - start.y,
        );
        if start.pan {
            view_state.set(start.view.panned(dx, dy));
        } else {
            window.set(start.window.dragged(dx, dy));
        }
    };
    let on_pointer_up = move |_: leptos::ev::PointerEvent| drag.set_value(None);
    let on_wheel = move |event: leptos::ev::WheelEvent| {
        event.prevent_default();
        let factor = if event.delta_y() < 0.0 {
            1.1
        } else {
            1.0 / 1.1
        };
        view_state.update(|v| *v = v.zoomed(factor));
    };

    move || {
        let (index, count, id) = current.get()?;
        let item = item_of(id)?;
        let Status::Done(result) = item.status.get() else {
            return None;
        };
        let crop = result.crop;
        let top = result.top;
        let heatmap_class = item.heatmap_class;
        let class = Signal::derive(move || heatmap_class.get().unwrap_or(top));
        let flagged = result.flagged() && !item.reveal.get();
        let map_state = Signal::derive({
            let item = item.clone();
            move || item.map_state(class.get())
        });
        let map = Signal::derive(move || match map_state.get() {
            MapState::Ready(map) => Some(map),
            MapState::Computing | MapState::Failed => None,
        });
        let class_options = classes
            .get()
            .into_iter()
            .enumerate()
            .map(|(i, name)| view! { <option value=i.to_string() selected=move || class.get() == i>{name}</option> })
            .collect_view();
        Some(view! {
            <div
                class="viewer"
                role="dialog"
                aria-modal="true"
                aria-label=format!("Viewer: {}", item.name)
                tabindex="-1"
                data-testid="viewer"
                node_ref=dialog
                on:keydown=on_key
            >
                <div class="viewer-bar">
                    <h2 data-testid="viewer-name">{format!("{} ({} of {count})", item.name, index + 1)}</h2>
                    <button data-testid="viewer-previous" on:click=move |_| step(-1)>"← Previous"</button>
                    <button data-testid="viewer-next" on:click=move |_| step(1)>"Next →"</button>
                    <button aria-label="Zoom in" on:click=move |_| view_state.update(|v| *v = v.zoomed(1.25))>"+"</button>
                    <button aria-label="Zoom out" on:click=move |_| view_state.update(|v| *v = v.zoomed(0.8))>"−"</button>
                    <button on:click=move |_| view_state.set(View::FIT)>"Fit"</button>
                    <span data-testid="window-level">{move || window.get().label()}</span>
                    <button data-testid="window-reset" on:click=move |_| window.set(WindowLevel::FULL)>"Reset window"</button>
                    <label>
                        "Heat map class "
                        <select
                            data-testid="viewer-class"
                            on:change=move |event| {
                                if let Ok(i) = event_target_value(&event).parse() {
                                    heatmap_class.set(Some(i));
                                }
                            }
                        >
                            {class_options}
                        </select>
                    </label>
                    <HeatmapControls show_heatmap=show_heatmap opacity=opacity />
                    <SaveReport
                        card=card
                        items=Signal::derive({
                            let item = item.clone();
                            move || vec![item.clone()]
                        })
                        opacity=opacity
                        label="Save report"
                        file_name=report_name(&item.name)
                        test_id="viewer-save-report"
                    />
                    <button data-testid="viewer-close" on:click=move |_| close()>"Close"</button>
                </div>
                <div
                    class="viewer-stage"
                    on:pointerdown=on_pointer_down
                    on:pointermove=on_pointer_move
                    on:pointerup=on_pointer_up
                    on:pointercancel=on_pointer_up
                    on:wheel=on_wheel
                >
                    <div class="viewer-frame" style:transform=move || view_state.get().transform()>
                        <canvas data-testid="viewer-image" node_ref=canvas></canvas>
                        {(!flagged).then(|| view! { <HeatMap map=map crop=crop show=show_heatmap opacity=opacity /> })}
                        <div
                            class="crop-outline"
                            title="The part of the image the network saw"
                            style:left=format!("{}%", crop.left * 100.0)
                            style:top=format!("{}%", crop.top * 100.0)
                            style:width=format!("{}%", crop.width * 100.0)
                            style:height=format!("{}%", crop.height * 100.0)
                        ></div>
                    </div>
                </div>
                <div class="viewer-legend">
                    <span data-testid="viewer-map-method">
                        {move || match (flagged, map_state.get()) {
                            (true, _) => "No heat map: the gate flagged this image (Show probabilities anyway shows it).".to_string(),
                            (false, MapState::Computing) => "Heat map: computing (LayerCAM on layer2)…".to_string(),
                            (false, MapState::Failed) => "Heat map: could not be computed for this image.".to_string(),
                            (false, MapState::Ready(map)) => format!("Heat map ({}):", map.describe()),
                        }}
                    </span>
                    <span>"where the network looked for the chosen class, not where disease is. Low"</span>
                    <span class="ramp" style:background=heatmap::css_gradient()></span>
                    <span>"high. Dashed box: the crop the network saw."</span>
                </div>
                <p class="viewer-help">{HELP}</p>
            </div>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_window_is_the_identity_and_a_narrow_one_stretches() {
        let full = WindowLevel::FULL.table();
        assert!(full.iter().enumerate().all(|(v, &out)| out as usize == v));
        // Centre 0.5, width 0.4: grey g maps to (g - 0.3) / 0.4, i.e. 8-bit v to 2.5 v - 191.25.
        let narrow = WindowLevel {
            center: 0.5,
            width: 0.4,
        }
        .table();
        assert_eq!(
            (narrow[76], narrow[100], narrow[128], narrow[180]),
            (0, 59, 129, 255)
        );
        let pixels = apply_window(&[100, 128, 180, 7], &narrow);
        assert_eq!(pixels, vec![59, 129, 255, 7]);
    }

    #[test]
    fn dragging_right_widens_and_down_raises_the_level() {
        let w = WindowLevel::FULL.dragged(100.0, 0.0);
        assert!(w.width > 1.0 && w.center == 0.5);
        let w = WindowLevel::FULL.dragged(0.0, 100.0);
        assert!(w.center > 0.5 && w.width == 1.0);
        let w = WindowLevel::FULL.dragged(-10_000.0, -10_000.0);
        assert_eq!((w.width, w.center), (0.02, 0.0));
    }
}

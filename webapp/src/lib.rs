//! Pneumoscope's web page: a Leptos (client-side) app and the web worker that runs the model.
//! Both are compiled to wasm by trunk from the root `index.html`.

pub mod app;
pub mod card_panel;
pub mod heatmap;
pub mod inference;
pub mod js;
pub mod page;
pub mod pdf_report;
pub mod picture;
pub mod pool;
pub mod protocol;
pub mod report;
pub mod result_view;
pub mod viewer;

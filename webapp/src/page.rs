//! The page's state: the model's loading, the images given and what became of them, and what
//! the inference workers' messages do to it. The views (`app`, `result_view`, `viewer`) draw it.

use std::sync::Arc;

use js_sys::{Array, Reflect};
use leptos::prelude::*;
use pneumoscope::cam::HeatMap;
use pneumoscope::stage_times::StageTimes;
use pneumoscope::ModelCard;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{MessageEvent, Worker};

use crate::js::error_message;
use crate::pool::{pool_size, Job, Pool, Urgency};
use crate::protocol::{FromWorker, ImageResult};

/// Files above this size are refused before they are read: no radiograph is this large, and
/// reading one would stall the tab.
pub const MAX_FILE_BYTES: f64 = 200.0 * 1024.0 * 1024.0;

/// The worker's loader script (webapp/worker_loader.js), beside the page.
const WORKER_URL: &str = "./worker_loader.js";

/// The loader's URL as `boot.js` chose it (with the page's `?simd=` choice), else `WORKER_URL`.
fn worker_url() -> String {
    web_sys::window()
        .and_then(|window| Reflect::get(&window, &JsValue::from_str("pneumoscopeWorkerUrl")).ok())
        .and_then(|url| url.as_string())
        .unwrap_or_else(|| WORKER_URL.to_string())
}

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
    /// Classes whose heat map the worker could not compute.
    pub(crate) failed_maps: RwSignal<Vec<usize>>,
}

/// Where an image's heat map of one class stands.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MapState {
    Ready(HeatMap),
    Computing,
    Failed,
}

/// Everything the worker's messages update.
#[derive(Clone, Copy)]
pub struct Page {
    pub(crate) model: RwSignal<ModelState>,
    /// How long each step of loading the model took, for the benchmark.
    pub(crate) load_stages: RwSignal<StageTimes>,
    pub(crate) items: RwSignal<Vec<Item>>,
    pub(crate) pool: StoredValue<Pool, LocalStorage>,
    /// Workers with the model loaded.
    pub(crate) workers_ready: RwSignal<usize>,
    pub(crate) next_id: StoredValue<u32>,
}

impl Item {
    /// The heat map of `class` once its worker has sent it (tracked).
    pub(crate) fn heat_map(&self, class: usize) -> Option<HeatMap> {
        self.fine_maps
            .with(|maps| maps.iter().find(|map| map.class == class).cloned())
    }

    /// The heat map of `class`, or whether it is still coming or failed (tracked).
    pub(crate) fn map_state(&self, class: usize) -> MapState {
        match self.heat_map(class) {
            Some(map) => MapState::Ready(map),
            None if self.failed_maps.with(|failed| failed.contains(&class)) => MapState::Failed,
            None => MapState::Computing,
        }
    }
}

/// A page with no model and no images yet; `start_worker(0)` begins loading.
impl Default for Page {
    fn default() -> Self {
        Self {
            model: RwSignal::new(ModelState::Loading {
                loaded: 0,
                total: None,
            }),
            load_stages: RwSignal::new(StageTimes::default()),
            items: RwSignal::new(Vec::new()),
            pool: StoredValue::new_local(Pool::default()),
            workers_ready: RwSignal::new(0),
            next_id: StoredValue::new(0),
        }
    }
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
                    self.grow_pool_if_images_wait();
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
                // The image stays shown without a heat map; the viewer and the report say so.
                web_sys::console::warn_1(
                    &format!("no fine heat map for image {id}, class {class}: {message}").into(),
                );
                if let Some(item) = self.item(id) {
                    item.failed_maps.update(|failed| {
                        if !failed.contains(&class) {
                            failed.push(class);
                        }
                    });
                }
                self.pool.update_value(|pool| pool.finished(worker));
            }
            FromWorker::Failed { id, message } => {
                self.set_status(id, Status::Failed(message));
                self.pool.update_value(|pool| pool.finished(worker));
            }
        }
    }

    /// One more worker (up to `pool_size`) while an image waits for a free one. Only then: a
    /// worker loading its model while the first image is classified would slow that image.
    fn grow_pool_if_images_wait(&self) {
        let (waiting, workers) = self
            .pool
            .with_value(|pool| (pool.waiting(), pool.slot_count()));
        if self.model_ready() && waiting > 0 && workers < pool_size() {
            self.start_worker(workers);
        }
    }

    /// Asks the worker that classified `id` for the fine map of `class`, ahead of queued images
    /// (the viewer shows it now), unless the item has it or it is on its way.
    pub(crate) fn want_fine_map(&self, id: u32, class: usize) {
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

    /// Starts a worker in slot `index`; it loads the model once it has booted. Slot 0 takes the
    /// worker boot.js started, if it did.
    pub(crate) fn start_worker(&self, index: usize) {
        let page = *self;
        let (worker, early) = match (index == 0).then(take_early_worker).flatten() {
            Some((worker, early)) => (worker, Some(early)),
            None => match Worker::new(&worker_url()) {
                Ok(worker) => (worker, None),
                Err(error) => {
                    if !self.model_ready() {
                        self.model.set(ModelState::Failed(format!(
                            "could not start the inference worker: {}",
                            error_message(&error)
                        )));
                    }
                    return;
                }
            },
        };
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            page.on_worker_message(index, &event)
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
        if let Some(early) = early {
            for event in early.messages {
                self.on_worker_message(index, &event);
            }
            if let Some(event) = early.errors.into_iter().next() {
                self.on_worker_crash(index, event.message());
            }
        }
    }

    fn on_worker_message(&self, index: usize, event: &MessageEvent) {
        let text = event.data().as_string().unwrap_or_default();
        match serde_json::from_str::<FromWorker>(&text) {
            Ok(message) => self.on_message(index, message),
            Err(error) => web_sys::console::error_1(&error.to_string().into()),
        }
    }

    pub(crate) fn add_files(&self, files: Vec<web_sys::File>) {
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
                failed_maps: RwSignal::new(Vec::new()),
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
            page.pool.update_value(Pool::begin_reading);
            wasm_bindgen_futures::spawn_local(async move {
                let read = JsFuture::from(file.array_buffer()).await;
                page.pool.update_value(Pool::end_reading);
                match read {
                    Ok(buffer) => match page.model.get_untracked() {
                        ModelState::Failed(message) => {
                            item.status.set(Status::Failed(no_model(&message)))
                        }
                        _ => {
                            item.status.set(Status::Queued);
                            page.pool.update_value(|pool| pool.enqueue(id, buffer));
                            page.grow_pool_if_images_wait();
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

    pub(crate) fn clear(&self) {
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

pub(crate) fn revoke_blob_url(url: &str) {
    if url.starts_with("blob:") {
        let _ = web_sys::Url::revoke_object_url(url);
    }
}

/// What the worker boot.js started said before the page listened.
struct EarlyEvents {
    messages: Vec<MessageEvent>,
    errors: Vec<web_sys::ErrorEvent>,
}

/// The worker boot.js started beside the page's wasm, taken once.
fn take_early_worker() -> Option<(Worker, EarlyEvents)> {
    let window = web_sys::window()?;
    let key = JsValue::from_str("pneumoscopeEarlyWorker");
    let early = Reflect::get(&window, &key).ok()?;
    let _ = Reflect::delete_property(&window, &key);
    let field = |name: &str| Reflect::get(&early, &JsValue::from_str(name)).ok();
    let events = |name: &str| -> Vec<JsValue> {
        field(name)
            .and_then(|list| list.dyn_into::<Array>().ok())
            .map(|list| list.iter().collect())
            .unwrap_or_default()
    };
    let worker = field("worker")?.dyn_into::<Worker>().ok()?;
    let early = EarlyEvents {
        messages: events("messages")
            .into_iter()
            .map(JsCast::unchecked_into)
            .collect(),
        errors: events("errors")
            .into_iter()
            .map(JsCast::unchecked_into)
            .collect(),
    };
    Some((worker, early))
}

//! The inference workers and the images waiting for them. The first worker loads the model alone
//! (the page is usable as soon as it is ready, and the download is not shared with others);
//! once it is ready, more start, one model each, up to the cores the browser reports and what
//! its memory allows. A free worker takes the oldest waiting image, one image at a time, so a
//! batch runs on every worker and a slow image holds up only its own worker.

use std::collections::VecDeque;

use js_sys::{Array, Uint8Array};
use wasm_bindgen::JsValue;
use web_sys::Worker;

use crate::protocol::ToWorker;

/// At most this many workers: each holds its own copy of the model (about 100 MB at f32).
const MAX_WORKERS: usize = 4;
/// Device memory (GB, as `navigator.deviceMemory` reports it) to allow per worker.
const GB_PER_WORKER: f64 = 1.0;

/// How many workers this browser should run: its logical cores, fewer on a device that reports
/// little memory, at most `MAX_WORKERS`.
pub fn pool_size() -> usize {
    let Some(window) = web_sys::window() else {
        return 1;
    };
    let navigator = window.navigator();
    let cores = navigator.hardware_concurrency().max(1.0) as usize;
    // `deviceMemory` is Chromium's; elsewhere memory sets no limit.
    let by_memory = js_sys::Reflect::get(&navigator, &"deviceMemory".into())
        .ok()
        .and_then(|v| v.as_f64())
        .map(|gb| ((gb / GB_PER_WORKER) as usize).max(1))
        .unwrap_or(usize::MAX);
    cores.min(by_memory).clamp(1, MAX_WORKERS)
}

struct Slot {
    worker: Worker,
    booted: bool,
    ready: bool,
    /// The image this worker is classifying.
    busy: Option<u32>,
}

/// The workers by slot number (a crashed worker's replacement takes its slot) and the queue.
#[derive(Default)]
pub struct Pool {
    slots: Vec<Option<Slot>>,
    /// Images waiting for a free worker, oldest first, with their bytes.
    queue: VecDeque<(u32, JsValue)>,
}

impl Pool {
    /// Puts `worker` into slot `index` (a new slot at the end when `index` is the length),
    /// terminating any worker that held it.
    pub fn install(&mut self, index: usize, worker: Worker) {
        let slot = Some(Slot {
            worker,
            booted: false,
            ready: false,
            busy: None,
        });
        if index == self.slots.len() {
            self.slots.push(slot);
        } else if let Some(old) = std::mem::replace(&mut self.slots[index], slot) {
            old.worker.terminate();
        }
    }

    /// Stops the worker in slot `index` for good and returns the image it was classifying.
    pub fn remove(&mut self, index: usize) -> Option<u32> {
        let slot = self.slots.get_mut(index)?.take()?;
        slot.worker.terminate();
        slot.busy
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Workers holding a loaded model.
    pub fn ready_count(&self) -> usize {
        self.slots.iter().flatten().filter(|s| s.ready).count()
    }

    /// The worker's script runs: it can take the `Load` message now (earlier ones are lost).
    pub fn booted(&mut self, index: usize) {
        if let Some(slot) = self.slot(index) {
            slot.booted = true;
            send(&slot.worker, &ToWorker::Load, None);
        }
    }

    pub fn ready(&mut self, index: usize) {
        if let Some(slot) = self.slot(index) {
            slot.ready = true;
        }
        self.dispatch();
    }

    /// The worker in slot `index` finished its image (classified or failed).
    pub fn finished(&mut self, index: usize) {
        if let Some(slot) = self.slot(index) {
            slot.busy = None;
        }
        self.dispatch();
    }

    /// Queues an image and hands it to a free worker if there is one.
    pub fn enqueue(&mut self, id: u32, bytes: JsValue) {
        self.queue.push_back((id, bytes));
        self.dispatch();
    }

    /// Every queued image's id, emptying the queue.
    pub fn drain_queue(&mut self) -> Vec<u32> {
        self.queue.drain(..).map(|(id, _)| id).collect()
    }

    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    /// Hands the oldest queued images to ready workers that have none.
    fn dispatch(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            if !(slot.booted && slot.ready) || slot.busy.is_some() {
                continue;
            }
            let Some((id, bytes)) = self.queue.pop_front() else {
                return;
            };
            send(&slot.worker, &ToWorker::Classify { id }, Some(&bytes));
            slot.busy = Some(id);
        }
    }
}

/// Posts a message, transferring the image's buffer (no copy) when there is one.
fn send(worker: &Worker, message: &ToWorker, buffer: Option<&JsValue>) {
    let parts = Array::of1(&JsValue::from_str(&message.to_json()));
    let transfer = Array::new();
    if let Some(buffer) = buffer {
        parts.push(&Uint8Array::new(buffer));
        transfer.push(buffer);
    }
    if let Err(error) = worker.post_message_with_transfer(&parts, &transfer) {
        web_sys::console::error_1(&error);
    }
}

//! The inference workers and the images waiting for them. The first worker loads the model alone
//! (the page is usable as soon as it is ready, and the download is not shared with others);
//! once it is ready, more start while images wait for a free one, one model each, up to the
//! cores the browser reports and what its memory allows. A free worker takes the oldest waiting image, one image at a time, so a
//! batch runs on every worker and a slow image holds up only its own worker. Fine heat maps are
//! jobs for the worker that classified the image (it keeps the network's input): one the viewer
//! shows goes ahead of waiting images, the others run when no image waits.

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

/// What a worker is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Job {
    Image(u32),
    /// (image, class)
    FineMap(u32, usize),
}

impl Job {
    /// The image being classified, if the job is a classification.
    pub fn image(self) -> Option<u32> {
        match self {
            Job::Image(id) => Some(id),
            Job::FineMap(..) => None,
        }
    }
}

/// When a fine heat map is wanted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Urgency {
    /// On screen now: before any waiting image.
    Now,
    /// Once no image waits.
    Background,
}

struct Slot {
    worker: Worker,
    booted: bool,
    ready: bool,
    busy: Option<Job>,
    /// Fine maps wanted now, then the background ones, oldest first: (image, class).
    urgent: VecDeque<(u32, usize)>,
    background: VecDeque<(u32, usize)>,
}

/// The workers by slot number (a crashed worker's replacement takes its slot) and the queue.
#[derive(Default)]
pub struct Pool {
    slots: Vec<Option<Slot>>,
    /// Images waiting for a free worker, oldest first, with their bytes.
    queue: VecDeque<(u32, JsValue)>,
    /// Files still being read: background heat maps wait for them too, so that a worker does
    /// not start a map just before the next image arrives.
    reading: usize,
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
            urgent: VecDeque::new(),
            background: VecDeque::new(),
        });
        if index == self.slots.len() {
            self.slots.push(slot);
        } else if let Some(old) = std::mem::replace(&mut self.slots[index], slot) {
            old.worker.terminate();
        }
    }

    /// Stops the worker in slot `index` for good and returns what it was doing.
    pub fn remove(&mut self, index: usize) -> Option<Job> {
        let slot = self.slots.get_mut(index)?.take()?;
        slot.worker.terminate();
        slot.busy
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Images queued for a free worker.
    pub fn waiting(&self) -> usize {
        self.queue.len()
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

    /// Asks worker `index` for the fine map of `class` for image `id`, once: a request already
    /// waiting is moved ahead when it becomes urgent; one running or done is not repeated.
    pub fn request_fine_map(&mut self, index: usize, id: u32, class: usize, urgency: Urgency) {
        let Some(slot) = self.slot(index) else {
            return;
        };
        let job = (id, class);
        if slot.busy == Some(Job::FineMap(id, class)) || slot.urgent.contains(&job) {
            return;
        }
        let waiting = slot.background.iter().position(|&j| j == job);
        match (urgency, waiting) {
            (Urgency::Now, Some(at)) => {
                slot.background.remove(at);
                slot.urgent.push_back(job);
            }
            (Urgency::Now, None) => slot.urgent.push_back(job),
            (Urgency::Background, None) => slot.background.push_back(job),
            (Urgency::Background, Some(_)) => {}
        }
        self.dispatch();
    }

    pub fn begin_reading(&mut self) {
        self.reading += 1;
    }

    pub fn end_reading(&mut self) {
        self.reading = self.reading.saturating_sub(1);
        self.dispatch();
    }

    /// Every queued image's id, emptying the queue.
    pub fn drain_queue(&mut self) -> Vec<u32> {
        self.queue.drain(..).map(|(id, _)| id).collect()
    }

    fn slot(&mut self, index: usize) -> Option<&mut Slot> {
        self.slots.get_mut(index).and_then(Option::as_mut)
    }

    /// Gives every free ready worker its next job: a fine map wanted now, the oldest queued
    /// image, or, when no image waits or is being read, a background fine map.
    fn dispatch(&mut self) {
        for slot in self.slots.iter_mut().flatten() {
            if !(slot.booted && slot.ready) || slot.busy.is_some() {
                continue;
            }
            let fine_map = |(id, class)| {
                send(&slot.worker, &ToWorker::FineMap { id, class }, None);
                Job::FineMap(id, class)
            };
            slot.busy = if let Some(job) = slot.urgent.pop_front() {
                Some(fine_map(job))
            } else if let Some((id, bytes)) = self.queue.pop_front() {
                send(&slot.worker, &ToWorker::Classify { id }, Some(&bytes));
                Some(Job::Image(id))
            } else if self.reading == 0 {
                slot.background.pop_front().map(fine_map)
            } else {
                None
            };
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

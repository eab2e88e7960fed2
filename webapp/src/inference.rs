//! The inference worker: it fetches and checks the model once, then classifies images one at a
//! time, so the page stays responsive while a batch runs.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use base64::prelude::*;
use candle_core::Device;
use js_sys::{Array, Promise, Reflect, Uint8Array};
use pneumoscope::classifier::classifier_from_bytes;
use pneumoscope::decode::{decode, preview_png};
use pneumoscope::stage_times::{StageTimes, Stopwatch};
use pneumoscope::{Classifier, Layer2Map, ModelCard};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::{DedicatedWorkerGlobalScope, MessageEvent, Response};

use crate::js::error_message;
use crate::protocol::{FromWorker, ImageResult, ToWorker, CARD_URL};

/// Images that arrive while the model is still loading wait here.
enum State {
    Loading(Vec<(u32, Vec<u8>)>),
    Ready(Box<Classifier>),
    Failed(String),
}

type Shared = Rc<RefCell<State>>;

/// How much memory the kept `layer2` maps may hold, whatever the model's input size: at 176x176
/// a map is 991 KB, so the last 67 images this worker classified keep theirs for a later fine
/// heat map (a batch of 100 on two workers keeps all of them).
const KEPT_MAP_BYTES: usize = 64 << 20;

thread_local! {
    /// The `layer2` maps of the last images classified here, oldest first, at most
    /// `KEPT_MAP_BYTES` together: a fine heat map starts from one without running the stem,
    /// layer1 and layer2 again.
    static MAPS: RefCell<VecDeque<(u32, Layer2Map)>> = const { RefCell::new(VecDeque::new()) };
}

fn keep_map(id: u32, map: Layer2Map) {
    MAPS.with_borrow_mut(|maps| {
        maps.push_back((id, map));
        let mut held: usize = maps.iter().map(|(_, kept)| kept.bytes()).sum();
        while held > KEPT_MAP_BYTES && maps.len() > 1 {
            if let Some((_, oldest)) = maps.pop_front() {
                held -= oldest.bytes();
            }
        }
    });
}

fn kept_map(id: u32) -> Option<Layer2Map> {
    MAPS.with_borrow(|maps| {
        maps.iter()
            .find(|(kept, _)| *kept == id)
            .map(|(_, map)| map.clone())
    })
}

/// The fine heat map of `class` for image `id`, from its kept `layer2` map.
fn fine_map(state: &State, id: u32, class: usize) -> FromWorker {
    let outcome = match state {
        State::Ready(classifier) => kept_map(id)
            .ok_or_else(|| "this worker no longer holds the image; add it again".to_string())
            .and_then(|layer2| {
                classifier
                    .fine_map(&layer2, class)
                    .map_err(|e| e.to_string())
            }),
        _ => Err("no model".into()),
    };
    match outcome {
        Ok(map) => FromWorker::FineMap { id, map },
        Err(message) => FromWorker::FineMapFailed { id, class, message },
    }
}

/// Installs the message handler; called once from the worker binary's `main`.
pub fn run() {
    console_error_panic_hook::set_once();
    let classifier: Shared = Rc::new(RefCell::new(State::Loading(Vec::new())));
    let handler = Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
        handle(event.data(), &classifier);
    });
    scope().set_onmessage(Some(handler.as_ref().unchecked_ref()));
    handler.forget(); // lives as long as the worker
    post(&FromWorker::Booted);
}

/// The worker's global scope (this code only ever runs inside the worker).
fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

fn post(message: &FromWorker) {
    // Posting a string to our own page cannot fail short of the worker being torn down.
    let _ = scope().post_message(&JsValue::from_str(&message.to_json()));
}

fn handle(data: JsValue, classifier: &Shared) {
    let parts = Array::from(&data);
    let message: Result<ToWorker, String> = parts
        .get(0)
        .as_string()
        .ok_or_else(|| "message is not text".to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()));
    match message {
        Ok(ToWorker::Load) => {
            let classifier = classifier.clone();
            wasm_bindgen_futures::spawn_local(async move {
                let next = match load().await {
                    Ok((loaded, card, load_stages)) => {
                        post(&FromWorker::Ready {
                            card: Box::new(card),
                            load_stages,
                        });
                        State::Ready(Box::new(loaded))
                    }
                    Err(message) => {
                        post(&FromWorker::LoadFailed {
                            message: message.clone(),
                        });
                        State::Failed(message)
                    }
                };
                let waiting = std::mem::replace(&mut *classifier.borrow_mut(), next);
                if let State::Loading(waiting) = waiting {
                    for (id, bytes) in waiting {
                        answer(&classifier.borrow(), id, &bytes);
                    }
                }
            });
        }
        Ok(ToWorker::Classify { id }) => {
            let bytes = Uint8Array::new(&parts.get(1)).to_vec();
            match &mut *classifier.borrow_mut() {
                State::Loading(waiting) => waiting.push((id, bytes)),
                ready_or_failed => answer(ready_or_failed, id, &bytes),
            }
        }
        Ok(ToWorker::FineMap { id, class }) => post(&fine_map(&classifier.borrow(), id, class)),
        Err(error) => web_sys::console::error_1(&format!("unreadable message: {error}").into()),
    }
}

fn answer(state: &State, id: u32, bytes: &[u8]) {
    post(&FromWorker::Started { id });
    let outcome = match state {
        State::Ready(classifier) => classify(classifier, bytes).map(|(result, layer2)| {
            keep_map(id, layer2);
            result
        }),
        State::Failed(message) => Err(format!("no model to classify with: {message}")),
        State::Loading(_) => Err("the model is still loading".into()),
    };
    post(&match outcome {
        Ok(result) => FromWorker::Classified {
            id,
            result: Box::new(result),
        },
        Err(message) => FromWorker::Failed { id, message },
    });
}

fn now_ms() -> f64 {
    scope().performance().map(|p| p.now()).unwrap_or_default()
}

/// Longest side of the rendering sent back for a DICOM file: enough for a large view.
const PREVIEW_SIDE: u32 = 1024;

fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", BASE64_STANDARD.encode(png))
}

/// The result of one image and its `layer2` map (kept for a fine heat map).
fn classify(classifier: &Classifier, bytes: &[u8]) -> Result<(ImageResult, Layer2Map), String> {
    let mut watch = Stopwatch::new(&now_ms);
    let decoded = decode(bytes).map_err(|e| e.to_string())?;
    let image = decoded.image;
    watch.lap("decode");
    let input = classifier.input_tensor(&image).map_err(|e| e.to_string())?;
    watch.lap("preprocess");
    let (prediction, layer2) = classifier
        .classify_input_timed(&input, &mut watch)
        .map_err(|e| e.to_string())?;
    let preview = match decoded.dicom {
        Some(_) => Some(png_data_url(
            &preview_png(&image, PREVIEW_SIDE).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    watch.lap("preview");
    let stages = watch.into_times();
    let result = ImageResult {
        width: image.width(),
        height: image.height(),
        top: prediction.top,
        probabilities: prediction.probabilities,
        crop: classifier
            .preprocessing()
            .crop_region(image.width(), image.height()),
        in_distribution: prediction.in_distribution,
        ood_score: prediction.ood_score,
        positive: prediction.positive,
        millis: stages.total(),
        stages,
        preview,
        dicom: decoded.dicom,
    };
    Ok((result, layer2))
}

fn js_error(context: &str, error: JsValue) -> String {
    format!("{context}: {}", error_message(&error))
}

/// The response `worker_loader.js` began fetching before this wasm compiled, if it fetched `url`;
/// taken once, since a body can be read only once.
fn take_prefetched(url: &str) -> Option<Promise> {
    let key = JsValue::from_str("weightsPrefetch");
    let prefetch = Reflect::get(&scope(), &key).ok()?;
    if Reflect::get(&prefetch, &"file".into()).ok()?.as_string()? != url {
        return None;
    }
    let _ = Reflect::delete_property(&scope(), &key);
    Reflect::get(&prefetch, &"response".into())
        .ok()?
        .dyn_into()
        .ok()
}

async fn fetch(url: &str) -> Result<Response, String> {
    let pending = take_prefetched(url).unwrap_or_else(|| scope().fetch_with_str(url));
    let response: Response = JsFuture::from(pending)
        .await
        .map_err(|e| js_error(&format!("could not fetch {url}"), e))?
        .unchecked_into();
    if !response.ok() {
        return Err(format!(
            "{url} is missing (HTTP {} {}): this copy of the page was built without a model",
            response.status(),
            response.status_text()
        ));
    }
    Ok(response)
}

/// Only a plain file name beside the page: the card must not send the page to another origin.
fn same_origin_file(name: &str) -> Result<&str, String> {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with('.');
    if plain {
        Ok(name)
    } else {
        Err(format!(
            "the model card names `{name}` as its weights; only a file beside the page is allowed"
        ))
    }
}

/// Reads a response body chunk by chunk, reporting progress.
async fn read_with_progress(response: Response) -> Result<Vec<u8>, String> {
    let total = response
        .headers()
        .get("content-length")
        .ok()
        .flatten()
        .and_then(|v| v.parse::<u64>().ok());
    let body = response
        .body()
        .ok_or_else(|| "the weights response has no body".to_string())?;
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes = Vec::with_capacity(total.unwrap_or(0) as usize);
    let mut reported = 0u64;
    loop {
        let chunk = JsFuture::from(reader.read())
            .await
            .map_err(|e| js_error("downloading the weights failed", e))?;
        let done = js_sys::Reflect::get(&chunk, &"done".into())
            .map(|v| v.is_truthy())
            .unwrap_or(true);
        if done {
            break;
        }
        let value = js_sys::Reflect::get(&chunk, &"value".into())
            .map_err(|e| js_error("downloading the weights failed", e))?;
        // Straight from the chunk into the buffer, without a temporary copy.
        let chunk = Uint8Array::new(&value);
        let start = bytes.len();
        bytes.resize(start + chunk.length() as usize, 0);
        chunk.copy_to(&mut bytes[start..]);
        let loaded = bytes.len() as u64;
        if loaded - reported >= 1 << 20 {
            reported = loaded;
            post(&FromWorker::LoadProgress { loaded, total });
        }
    }
    post(&FromWorker::LoadProgress {
        loaded: bytes.len() as u64,
        total,
    });
    Ok(bytes)
}

/// The weights' SHA-256 being computed: by the browser's SubtleCrypto (native code on its own
/// thread, so the model is built meanwhile) where the page has it, which is in secure contexts
/// only (https, localhost); by the wasm hash elsewhere, when it is checked.
enum WeightsDigest {
    Subtle(Promise),
    InWasm,
}

impl WeightsDigest {
    /// Starts hashing; the browser copies `weights` before this returns.
    fn start(weights: &[u8]) -> Result<Self, String> {
        let subtle = scope()
            .crypto()
            .ok()
            .map(|crypto| crypto.subtle())
            .filter(|subtle| !subtle.is_undefined());
        match subtle {
            Some(subtle) => subtle
                .digest_with_str_and_u8_array("SHA-256", weights)
                .map(Self::Subtle)
                .map_err(|e| js_error("hashing the weights", e)),
            None => Ok(Self::InWasm),
        }
    }

    /// The weights against the card's SHA-256.
    async fn check(self, card: &ModelCard, weights: &[u8]) -> Result<(), String> {
        match self {
            Self::Subtle(promise) => {
                let digest = JsFuture::from(promise)
                    .await
                    .map_err(|e| js_error("hashing the weights", e))?;
                card.verify_weights_digest(&Uint8Array::new(&digest).to_vec())
            }
            Self::InWasm => card.verify_weights(weights),
        }
        .map_err(|e| e.to_string())
    }
}

async fn load() -> Result<(Classifier, ModelCard, StageTimes), String> {
    let mut watch = Stopwatch::new(&now_ms);
    let card_text = JsFuture::from(
        fetch(CARD_URL)
            .await?
            .text()
            .map_err(|e| js_error("reading the model card", e))?,
    )
    .await
    .map_err(|e| js_error("reading the model card", e))?
    .as_string()
    .unwrap_or_default();
    let card = ModelCard::from_json(&card_text).map_err(|e| e.to_string())?;
    watch.lap("card");
    let weights_url = same_origin_file(&card.weights.file)?;
    let weights = read_with_progress(fetch(weights_url).await?).await?;
    watch.lap("download");
    let digest = WeightsDigest::start(&weights)?;
    // Built while the browser hashes, used only once the hash matches; a mismatch is the error
    // to report even when the altered file does not parse either.
    let built = classifier_from_bytes(&weights, Some(&card), &Device::Cpu);
    watch.lap("model");
    digest.check(&card, &weights).await?;
    watch.lap("sha256");
    let classifier = built.map_err(|e| e.to_string())?;
    Ok((classifier, card, watch.into_times()))
}

#[cfg(test)]
mod tests {
    use super::same_origin_file;

    #[test]
    fn weights_must_sit_beside_the_page() {
        assert!(same_origin_file("model.safetensors").is_ok());
        for bad in [
            "https://evil.example/model.safetensors",
            "//evil.example/m",
            "../model.safetensors",
            "/model.safetensors",
            "",
            "a b",
        ] {
            assert!(same_origin_file(bad).is_err(), "{bad}");
        }
    }
}

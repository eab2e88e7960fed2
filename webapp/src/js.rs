//! JavaScript values in Rust terms.

use wasm_bindgen::{JsCast, JsValue};

/// The message of a thrown JavaScript value (an `Error`, a string, or anything else).
pub fn error_message(error: &JsValue) -> String {
    error
        .dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| error.as_string())
        .unwrap_or_else(|| "unknown error".into())
}

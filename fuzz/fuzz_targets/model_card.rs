//! A model card (JSON) beside the weights: it must parse or be refused, and a parsed card must
//! check any weights without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(card) = pneumoscope::ModelCard::from_json(text) {
            let _ = card.verify_weights(b"not the weights");
            let _ = card.to_json();
        }
    }
});

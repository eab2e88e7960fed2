//! What a user drops on the page or passes to `trainer predict`: PNG, JPEG or DICOM bytes, with
//! the pixel limit. Must return an image or an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = pneumoscope::decode::decode(data) {
        let (width, height) = decoded.image.dimensions();
        assert!(u64::from(width) * u64::from(height) <= pneumoscope::decode::MAX_PIXELS);
    }
});

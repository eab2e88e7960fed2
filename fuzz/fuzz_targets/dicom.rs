//! DICOM alone (the seed corpus is DICOM files), so mutations stay inside the DICOM parser and
//! its pixel decoders, then the preview the page shows.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((image, info)) = pneumoscope::dicom::decode_dicom(data) {
        assert!(info.frames >= 1);
        let _ = pneumoscope::decode::preview_png(&image, 64);
    }
});

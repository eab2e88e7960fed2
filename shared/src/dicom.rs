//! Reading DICOM files (what a PACS hands out) into the same RGB floats as a PNG, with the
//! grey levels a radiologist's viewer shows: the Modality LUT (rescale slope and intercept), then
//! the file's first VOI LUT or window, else the stored values' range; MONOCHROME1 inverted so
//! bone is white.
//!
//! Only imaging attributes are read from the header (transfer syntax, photometric
//! interpretation, sizes and bit depths, rescale, window, VOI LUT, number of frames, modality);
//! nothing that names or identifies the patient is looked at, kept or returned.

use std::io::Cursor;

use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{
    ConvertOptions, DecodedPixelData, PhotometricInterpretation, PixelDecoder, VoiLutFunction,
    VoiLutOption, WindowLevelTransform,
};
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};
use image::{Rgb, Rgb32FImage};
use serde::{Deserialize, Serialize};

use crate::decode::check_dimensions;
use crate::error::{Error, Result};
use crate::float::{larger, smaller};

/// The magic bytes after the (optional) 128-byte preamble.
const MAGIC: &[u8; 4] = b"DICM";
const PREAMBLE: usize = 128;

/// How the stored values became grey levels, and the header facts a reader of the result may
/// want; nothing about the patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DicomInfo {
    /// The transfer syntax's name, e.g. "JPEG Lossless, Non-Hierarchical, First-Order Prediction".
    pub transfer_syntax: String,
    pub photometric_interpretation: String,
    pub bits_stored: u16,
    pub signed: bool,
    /// Frames in the file; only the first is read.
    pub frames: u32,
    /// E.g. "CR", "DX"; absent when the header has none.
    pub modality: Option<String>,
    /// The grey-level mapping used.
    pub voi: Voi,
}

impl DicomInfo {
    /// One line on how the file became the picture the model saw, for the page and the CLI.
    pub fn summary(&self) -> String {
        let modality = self.modality.as_deref().unwrap_or("");
        let mut parts = vec![
            format!("DICOM {modality}").trim_end().to_string(),
            self.transfer_syntax.clone(),
            format!("{} bits", self.bits_stored),
            if self.photometric_interpretation == "MONOCHROME1" {
                "MONOCHROME1 (inverted: bone white)".to_string()
            } else {
                self.photometric_interpretation.clone()
            },
            self.voi.to_string(),
        ];
        if self.frames > 1 {
            parts.push(format!("frame 1 of {} shown", self.frames));
        }
        parts.join(" · ")
    }
}

/// The VOI (values of interest) transform applied after the Modality LUT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Voi {
    /// The file's first VOI LUT table.
    Table { entries: usize },
    /// The file's first window, with its VOI LUT function.
    Window {
        center: f64,
        width: f64,
        function: String,
    },
    /// No usable VOI in the file: the frame's lowest value black, its highest white.
    MinMax { min: f64, max: f64 },
    /// A colour image: its 8-bit samples as they are.
    Colour,
}

impl std::fmt::Display for Voi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Voi::Table { entries } => write!(f, "the file's VOI LUT ({entries} entries)"),
            Voi::Window {
                center,
                width,
                function,
            } => write!(
                f,
                "the file's window, centre {center} width {width} ({function})"
            ),
            Voi::MinMax { min, max } => write!(f, "stored range {min} to {max} (no window)"),
            Voi::Colour => write!(f, "colour samples as stored"),
        }
    }
}

/// Whether `bytes` start like a DICOM Part 10 file: "DICM" after a 128-byte preamble, or at the
/// very start (files written without the preamble).
pub fn is_dicom(bytes: &[u8]) -> bool {
    from_magic(bytes).is_some()
}

/// The file from its "DICM" marker on, preamble or not.
fn from_magic(bytes: &[u8]) -> Option<&[u8]> {
    if bytes.get(PREAMBLE..PREAMBLE + 4) == Some(MAGIC) {
        Some(&bytes[PREAMBLE..])
    } else {
        bytes.starts_with(MAGIC).then_some(bytes)
    }
}

/// An error and its causes, "outer: inner: innermost" (dicom-rs puts the reason in the causes).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn dicom_error(context: &str, error: impl std::fmt::Display) -> Error {
    Error::Decode(format!("DICOM: {context}: {error}"))
}

fn parse(bytes: &[u8]) -> Result<DefaultDicomObject> {
    let body = from_magic(bytes).ok_or(Error::UnsupportedFormat)?;
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(Cursor::new(body))
        .map_err(|e| dicom_error("the file could not be read", error_chain(&e)))
}

fn int_attribute(object: &DefaultDicomObject, tag: dicom_object::Tag, name: &str) -> Result<u32> {
    object
        .element(tag)
        .map_err(|_| dicom_error("missing attribute", name))?
        .to_int::<u32>()
        .map_err(|e| dicom_error(name, e))
}

fn optional_int(object: &DefaultDicomObject, tag: dicom_object::Tag) -> Option<u32> {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
}

/// What the decoders need checked before they allocate or build lookup tables.
struct Geometry {
    rows: u32,
    columns: u32,
    samples: u32,
    bits_allocated: u32,
    frames: u32,
}

fn check_geometry(object: &DefaultDicomObject) -> Result<Geometry> {
    let rows = int_attribute(object, tags::ROWS, "Rows")?;
    let columns = int_attribute(object, tags::COLUMNS, "Columns")?;
    check_dimensions(columns, rows)?;
    let samples = optional_int(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    if samples != 1 && samples != 3 {
        return Err(dicom_error(
            "unsupported Samples per Pixel",
            format!("{samples} (1 or 3 expected)"),
        ));
    }
    let allocated = int_attribute(object, tags::BITS_ALLOCATED, "Bits Allocated")?;
    let stored = optional_int(object, tags::BITS_STORED).unwrap_or(allocated);
    if !matches!(allocated, 8 | 16) || stored == 0 || stored > allocated {
        return Err(dicom_error(
            "unsupported bit depth",
            format!("{stored} bits stored in {allocated} allocated (8 or 16 allocated, 1 to that stored)"),
        ));
    }
    if samples == 3 && allocated != 8 {
        return Err(dicom_error(
            "unsupported colour image",
            format!("{allocated} bits per colour sample (8 expected)"),
        ));
    }
    let frames = object
        .element_opt(tags::NUMBER_OF_FRAMES)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().and_then(|s| s.trim().parse::<u32>().ok()))
        .unwrap_or(1);
    if frames == 0 {
        return Err(dicom_error("Number of Frames", "0"));
    }
    Ok(Geometry {
        rows,
        columns,
        samples,
        bits_allocated: allocated,
        frames,
    })
}

/// The encapsulated pixel data's fragments; `None` when the pixel data is native or missing.
fn pixel_fragments(object: &DefaultDicomObject) -> Option<&[Vec<u8>]> {
    object
        .element(tags::PIXEL_DATA)
        .ok()
        .and_then(|e| e.value().fragments())
}

const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// An RLE frame starts with the number of segments and 15 segment offsets (PS3.5 annex G).
const RLE_HEADER_BYTES: usize = 64;

/// Bytes a PackBits segment decodes to (runs cut off by the segment's end count as far as they go).
fn packbits_length(segment: &[u8]) -> usize {
    let (mut at, mut length) = (0, 0);
    while let Some(&header) = segment.get(at) {
        let header = header as i8;
        if header >= 0 {
            let literal = header as usize + 1;
            length += literal.min(segment.len() - at - 1);
            at += 1 + literal;
        } else if header != -128 {
            length += (1 - isize::from(header)) as usize;
            at += 2;
        } else {
            at += 1;
        }
    }
    length
}

/// dicom-rs's RLE decoder indexes the frame's header and segments without checking them (it
/// panicked on fuzzed files): the header must hold one segment per sample byte, each within the
/// fragment and decoding to Rows x Columns bytes.
fn check_rle_frame(object: &DefaultDicomObject, uid: &str, geometry: &Geometry) -> Result<()> {
    if uid != RLE_LOSSLESS {
        return Ok(());
    }
    let invalid = |why: &str| dicom_error("invalid RLE pixel data", why);
    let fragment = pixel_fragments(object)
        .and_then(|f| f.first())
        .ok_or_else(|| invalid("no fragment"))?;
    if fragment.len() < RLE_HEADER_BYTES {
        return Err(invalid("the frame is shorter than its 64-byte header"));
    }
    let word = |i: usize| u32::from_le_bytes(fragment[4 * i..4 * i + 4].try_into().unwrap());
    let segments = word(0) as usize;
    if segments != (geometry.samples * geometry.bits_allocated / 8) as usize {
        return Err(invalid(&format!(
            "{segments} segments for {} samples of {} bits",
            geometry.samples, geometry.bits_allocated
        )));
    }
    let mut bounds: Vec<usize> = (1..=segments).map(|i| word(i) as usize).collect();
    bounds.push(fragment.len());
    let pixels = geometry.rows as usize * geometry.columns as usize;
    for pair in bounds.windows(2) {
        let (start, end) = (pair[0], pair[1]);
        if start < RLE_HEADER_BYTES || start > end || end > fragment.len() {
            return Err(invalid("segment offsets out of order or past the frame"));
        }
        if packbits_length(&fragment[start..end]) < pixels {
            return Err(invalid(
                "a segment decodes to fewer bytes than Rows x Columns",
            ));
        }
    }
    Ok(())
}

/// Transfer syntaxes whose fragments hold JPEG streams (baseline, extended, lossless 14 and
/// lossless SV1).
const JPEG_SYNTAXES: [&str; 4] = [
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];

/// Reads a JPEG stream's header before the decoder runs: it must be one the pure-Rust decoder
/// handles (12-bit lossy JPEG is not) and agree with the DICOM header, which sizes the output.
fn check_jpeg_stream(object: &DefaultDicomObject, uid: &str, geometry: &Geometry) -> Result<()> {
    if !JPEG_SYNTAXES.contains(&uid) {
        return Ok(());
    }
    let fragments = pixel_fragments(object)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| dicom_error("pixel data", "no encapsulated JPEG fragments"))?;
    let stream: Vec<u8> = fragments.iter().flatten().copied().collect();
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(&stream));
    decoder
        .read_info()
        .map_err(|e| dicom_error("the JPEG stream in the file cannot be decoded here", e))?;
    let info = decoder
        .info()
        .ok_or_else(|| dicom_error("the JPEG stream", "no frame header"))?;
    let components = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::L16 => 1,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::CMYK32 => 4,
    };
    let stream_shape = (u32::from(info.width), u32::from(info.height), components);
    if stream_shape != (geometry.columns, geometry.rows, geometry.samples) {
        return Err(dicom_error(
            "the JPEG stream disagrees with the header",
            format!(
                "{}x{} with {} samples per pixel in the stream, {}x{} with {} in the header",
                stream_shape.0,
                stream_shape.1,
                stream_shape.2,
                geometry.columns,
                geometry.rows,
                geometry.samples
            ),
        ));
    }
    Ok(())
}

/// The transfer syntax's (UID, name), when this build can decode it.
fn check_transfer_syntax(object: &DefaultDicomObject) -> Result<(String, String)> {
    let uid = object.meta().transfer_syntax();
    let uid = uid.trim_end_matches('\0').trim();
    let syntax = TransferSyntaxRegistry
        .get(uid)
        .ok_or_else(|| dicom_error("unknown transfer syntax", uid))?;
    if !syntax.can_decode_all() {
        return Err(Error::Decode(format!(
            "DICOM: transfer syntax {} ({uid}) cannot be decoded here (this build has no decoder for it); export the image uncompressed or as JPEG",
            syntax.name()
        )));
    }
    Ok((uid.to_string(), syntax.name().to_string()))
}

/// Grey levels in [0, 1] from the frame's values after the Modality LUT.
fn apply_voi(decoded: &DecodedPixelData, values: &mut [f32]) -> Result<Voi> {
    if let Some(table) = decoded
        .voi_lut_sequence()
        .ok()
        .flatten()
        .and_then(|s| s.first())
        .filter(|t| !t.data.is_empty() && (1..=16).contains(&t.bits_stored))
    {
        let top = f64::from((1u32 << table.bits_stored) - 1);
        let last = table.data.len() - 1;
        for v in values.iter_mut() {
            let index = (f64::from(*v) - f64::from(table.min_pixel_value)).clamp(0.0, last as f64);
            *v = (f64::from(table.data[index as usize]) / top).clamp(0.0, 1.0) as f32;
        }
        return Ok(Voi::Table {
            entries: table.data.len(),
        });
    }
    let function = decoded
        .voi_lut_function()
        .ok()
        .flatten()
        .and_then(|f| f.first().copied())
        .unwrap_or_default();
    let window = decoded
        .window()
        .ok()
        .flatten()
        .and_then(|w| w.first().copied())
        .filter(|w| w.center.is_finite() && w.width.is_finite())
        .filter(|w| match function {
            VoiLutFunction::Linear => w.width >= 1.0,
            _ => w.width > 0.0,
        });
    if let Some(window) = window {
        let transform = WindowLevelTransform::new(function, window);
        for v in values.iter_mut() {
            *v = transform.apply(f64::from(*v), 1.0).clamp(0.0, 1.0) as f32;
        }
        return Ok(Voi::Window {
            center: window.center,
            width: window.width,
            function: format!("{function:?}").to_uppercase(),
        });
    }
    let (min, max) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (smaller(lo, v), larger(hi, v))
        });
    let range = (max - min).max(f32::MIN_POSITIVE);
    for v in values.iter_mut() {
        *v = (*v - min) / range;
    }
    Ok(Voi::MinMax {
        min: f64::from(min),
        max: f64::from(max),
    })
}

fn grey_image(width: u32, height: u32, grey: &[f32]) -> Result<Rgb32FImage> {
    Rgb32FImage::from_raw(
        width,
        height,
        grey.iter().flat_map(|&v| [v, v, v]).collect(),
    )
    .ok_or_else(|| dicom_error("pixel data", "shorter than Rows x Columns"))
}

/// Decodes the first frame of a DICOM file into RGB in [0, 1], as a viewer shows it, and says
/// how (`DicomInfo`).
pub fn decode_dicom(bytes: &[u8]) -> Result<(Rgb32FImage, DicomInfo)> {
    let object = parse(bytes)?;
    let (uid, transfer_syntax) = check_transfer_syntax(&object)?;
    let geometry = check_geometry(&object)?;
    check_jpeg_stream(&object, &uid, &geometry)?;
    check_rle_frame(&object, &uid, &geometry)?;
    let modality = object
        .element_opt(tags::MODALITY)
        .ok()
        .flatten()
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()))
        .filter(|s| !s.is_empty());
    let decoded = object
        .decode_pixel_data_frame(0)
        .map_err(|e| dicom_error("the pixel data could not be decoded", error_chain(&e)))?;
    let (width, height) = (decoded.columns(), decoded.rows());
    let photometric = decoded.photometric_interpretation().clone();
    let pixels = width as usize * height as usize;
    let (image, voi) = match photometric {
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
            let options = ConvertOptions::new().with_voi_lut(VoiLutOption::Identity);
            let mut values: Vec<f32> = decoded
                .to_vec_frame_with_options(0, &options)
                .map_err(|e| dicom_error("the pixel values could not be read", e))?;
            if values.len() < pixels {
                return Err(dicom_error("pixel data", "shorter than Rows x Columns"));
            }
            values.truncate(pixels);
            let voi = apply_voi(&decoded, &mut values)?;
            if photometric == PhotometricInterpretation::Monochrome1 {
                values.iter_mut().for_each(|v| *v = 1.0 - *v);
            }
            (grey_image(width, height, &values)?, voi)
        }
        PhotometricInterpretation::Rgb => {
            let samples: Vec<u8> = decoded
                .to_vec_frame(0)
                .map_err(|e| dicom_error("the pixel values could not be read", e))?;
            if samples.len() < 3 * pixels {
                return Err(dicom_error("pixel data", "shorter than Rows x Columns x 3"));
            }
            let image = Rgb32FImage::from_fn(width, height, |x, y| {
                let i = 3 * (y as usize * width as usize + x as usize);
                Rgb([0, 1, 2].map(|c| f32::from(samples[i + c]) / 255.0))
            });
            (image, Voi::Colour)
        }
        other => {
            return Err(dicom_error(
                "unsupported photometric interpretation",
                format!("{other} (MONOCHROME1, MONOCHROME2 or RGB expected)"),
            ))
        }
    };
    let info = DicomInfo {
        transfer_syntax,
        photometric_interpretation: photometric.to_string(),
        bits_stored: decoded.bits_stored(),
        signed: decoded.pixel_representation() == dicom_pixeldata::PixelRepresentation::Signed,
        frames: geometry.frames,
        modality,
        voi,
    };
    Ok((image, info))
}

#[cfg(test)]
mod tests {
    use super::packbits_length;

    #[test]
    fn packbits_length_counts_literals_runs_and_no_ops() {
        // A literal of 3, a run of 4, a no-op, then a literal of 5 cut off after 2 bytes.
        let segment = [2, 1, 2, 3, 0xFD, 9, 0x80, 4, 7, 7];
        assert_eq!(packbits_length(&segment), 3 + 4 + 2);
        assert_eq!(packbits_length(&[]), 0);
        assert_eq!(packbits_length(&[0x81, 5]), 128);
    }
}

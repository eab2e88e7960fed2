//! The report a user keeps: a PDF with, per image, the picture with its heat map, the
//! probabilities, the top answer's track record, the gate's verdict and the operating-point
//! verdicts; the model's name, weights SHA-256 and evaluation summary; the date and "a research
//! tool, not a diagnostic device". The page ("Save report") and `trainer predict --report` both
//! write it here, so they say the same.

use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str};

use crate::cam::{heat_rgba, HeatMap};
use crate::card::ModelCard;
use crate::error::{Error, Result};
use crate::preprocess::CropRegion;

pub const DISCLAIMER: &str =
    "A research tool, not a diagnostic device. Do not use it for clinical decisions.";

/// One image's page.
pub struct ReportEntry {
    pub file_name: String,
    /// The picture as shown, heat map included (`overlay`).
    pub picture: RgbImage,
    pub lines: Vec<String>,
}

/// What the model said about one image, in words.
pub struct Findings<'a> {
    pub probabilities: &'a [f32],
    pub top: usize,
    pub in_distribution: Option<bool>,
    pub positive: &'a [Option<bool>],
    /// The heat map the picture shows, or why it shows none (in words, for the report).
    pub heatmap: std::result::Result<&'a HeatMap, &'a str>,
}

/// The lines of one image's page.
pub fn finding_lines(card: &ModelCard, findings: &Findings) -> Vec<String> {
    let classes = &card.classes;
    let mut lines = Vec::new();
    if findings.in_distribution == Some(false) {
        lines.push("WARNING: this does not look like a chest X-ray of the kind the model was trained on; the probabilities below are not a finding.".into());
    } else {
        lines.push(format!(
            "Top class: {} ({:.1}%)",
            classes[findings.top],
            findings.probabilities[findings.top] * 100.0
        ));
        if let Some(record) = card.answer_record(findings.top) {
            lines.push(format!("Track record: {}", record.describe()));
        }
    }
    for (i, class) in classes.iter().enumerate() {
        let point = card.operating_points.iter().find(|p| &p.class == class);
        let verdict = match (point, findings.positive.get(i).copied().flatten()) {
            (Some(point), Some(called)) => format!("  {}", point.verdict(called)),
            _ => String::new(),
        };
        lines.push(format!(
            "  {class}: {:.1}%{verdict}",
            findings.probabilities[i] * 100.0
        ));
    }
    lines.push(match findings.in_distribution {
        Some(true) => "Out-of-distribution gate: accepted (like the training radiographs).".into(),
        Some(false) => "Out-of-distribution gate: FLAGGED.".into(),
        None => "Out-of-distribution gate: none in this model.".into(),
    });
    lines.push(match findings.heatmap {
        Ok(map) => format!(
            "Heat map: {} for {}; where the network looked, not where disease is.",
            map.describe(),
            classes[map.class]
        ),
        Err(why) => format!("Heat map: not shown ({why})."),
    });
    lines
}

/// The model's part of every report: name, weights, evaluation summary.
fn model_lines(card: &ModelCard) -> Vec<String> {
    let mut lines = vec![
        format!("Model: {} ({})", card.name, card.weights.dtype),
        format!("Weights SHA-256: {}", card.weights.sha256),
    ];
    for evaluation in &card.evaluations {
        lines.push(format!(
            "  {}: accuracy {:.3}",
            evaluation.name, evaluation.report.accuracy
        ));
    }
    lines
}

/// `picture` with `map` over `crop`, upsampled smoothly, at `opacity`.
pub fn overlay(picture: &RgbImage, map: &HeatMap, crop: CropRegion, opacity: f32) -> RgbImage {
    let mut out = picture.clone();
    let (cam, cam_width, cam_height) = (&map.values, map.width, map.height);
    if cam.len() != cam_width * cam_height || cam.is_empty() {
        return out;
    }
    let (w, h) = (picture.width() as f32, picture.height() as f32);
    let (left, top) = (
        (crop.left * w).round() as u32,
        (crop.top * h).round() as u32,
    );
    let (width, height) = (
        ((crop.width * w).round() as u32).max(1),
        ((crop.height * h).round() as u32).max(1),
    );
    let small = RgbaImage::from_fn(cam_width as u32, cam_height as u32, |x, y| {
        Rgba(heat_rgba(cam[y as usize * cam_width + x as usize]))
    });
    let map = imageops::resize(&small, width, height, FilterType::Triangle);
    for (x, y, Rgba([r, g, b, a])) in map.enumerate_pixels() {
        let (px, py) = (left + x, top + y);
        if px >= out.width() || py >= out.height() {
            continue;
        }
        let alpha = f32::from(*a) / 255.0 * opacity;
        let Rgb(under) = *out.get_pixel(px, py);
        let blend =
            |u: u8, c: u8| (f32::from(u) * (1.0 - alpha) + f32::from(c) * alpha).round() as u8;
        out.put_pixel(
            px,
            py,
            Rgb([
                blend(under[0], *r),
                blend(under[1], *g),
                blend(under[2], *b),
            ]),
        );
    }
    out
}

/// The report's Helvetica is WinAnsi-encoded, Latin-1 for letters: other characters become `?`.
fn latin1(text: &str) -> Vec<u8> {
    text.replace('≥', ">=")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
        .collect()
}

fn jpeg(picture: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90)
        .encode_image(picture)
        .map_err(|e| Error::Decode(format!("cannot encode the report's picture: {e}")))?;
    Ok(bytes)
}

/// A4, in points.
const PAGE_WIDTH: f32 = 595.0;
const PAGE_HEIGHT: f32 = 842.0;
const MARGIN: f32 = 40.0;
const PICTURE_SIDE: f32 = 320.0;
/// Longest side of the embedded picture, in pixels (about 230 dpi at PICTURE_SIDE points).
const PICTURE_PIXELS: u32 = 1024;

/// Writes text lines from `y` down, `size` points, wrapping long lines at `chars` characters.
fn text_block(content: &mut Content, font: Name, lines: &[String], y: f32, size: f32) -> f32 {
    let chars = ((PAGE_WIDTH - 2.0 * MARGIN) / (size * 0.5)) as usize;
    let mut y = y;
    for line in lines {
        let bytes = latin1(line);
        for chunk in bytes.chunks(chars.max(20)) {
            content.begin_text();
            content.set_font(font, size);
            content.next_line(MARGIN, y);
            content.show(Str(chunk));
            content.end_text();
            y -= size * 1.35;
        }
    }
    y
}

/// A PDF with one page per entry.
pub fn report_pdf(card: &ModelCard, date: &str, entries: &[ReportEntry]) -> Result<Vec<u8>> {
    let mut pdf = Pdf::new();
    let (catalog, tree, font) = (Ref::new(1), Ref::new(2), Ref::new(3));
    let font_name = Name(b"F1");
    pdf.catalog(catalog).pages(tree);
    pdf.type1_font(font)
        .base_font(Name(b"Helvetica"))
        .encoding_predefined(Name(b"WinAnsiEncoding"));
    let pages: Vec<Ref> = (0..entries.len())
        .map(|i| Ref::new(4 + 3 * i as i32))
        .collect();
    pdf.pages(tree)
        .kids(pages.iter().copied())
        .count(entries.len() as i32);
    let header = [
        "Pneumoscope report".to_string(),
        DISCLAIMER.to_string(),
        format!("Date: {date}"),
    ];
    for (entry, &page_id) in entries.iter().zip(&pages) {
        let (image_id, content_id) = (Ref::new(page_id.get() + 1), Ref::new(page_id.get() + 2));
        let image_name = Name(b"Im1");
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, PAGE_WIDTH, PAGE_HEIGHT))
            .parent(tree)
            .contents(content_id);
        let mut resources = page.resources();
        resources.fonts().pair(font_name, font);
        resources.x_objects().pair(image_name, image_id);
        resources.finish();
        page.finish();

        let picture = if entry.picture.width().max(entry.picture.height()) > PICTURE_PIXELS {
            let scale =
                PICTURE_PIXELS as f32 / entry.picture.width().max(entry.picture.height()) as f32;
            imageops::resize(
                &entry.picture,
                ((entry.picture.width() as f32 * scale).round() as u32).max(1),
                ((entry.picture.height() as f32 * scale).round() as u32).max(1),
                FilterType::Triangle,
            )
        } else {
            entry.picture.clone()
        };
        let encoded = jpeg(&picture)?;
        let mut image = pdf.image_xobject(image_id, &encoded);
        image.filter(Filter::DctDecode);
        image.width(picture.width() as i32);
        image.height(picture.height() as i32);
        image.color_space().device_rgb();
        image.bits_per_component(8);
        image.finish();

        let mut content = Content::new();
        let mut y = text_block(
            &mut content,
            font_name,
            &header[..1],
            PAGE_HEIGHT - MARGIN - 8.0,
            16.0,
        );
        y = text_block(&mut content, font_name, &header[1..], y, 9.0);
        y = text_block(
            &mut content,
            font_name,
            &[format!("File: {}", entry.file_name)],
            y - 4.0,
            11.0,
        );
        let aspect = picture.width() as f32 / picture.height() as f32;
        let (w, h) = if aspect >= 1.0 {
            (PICTURE_SIDE, PICTURE_SIDE / aspect)
        } else {
            (PICTURE_SIDE * aspect, PICTURE_SIDE)
        };
        let top = y - 6.0;
        content.save_state();
        content.transform([w, 0.0, 0.0, h, MARGIN, top - h]);
        content.x_object(image_name);
        content.restore_state();
        y = text_block(&mut content, font_name, &entry.lines, top - h - 16.0, 10.0);
        text_block(&mut content, font_name, &model_lines(card), y - 8.0, 8.0);
        pdf.stream(content_id, &content.finish());
    }
    Ok(pdf.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_colours_only_the_crop_where_there_is_evidence() {
        let picture = RgbImage::from_pixel(40, 20, Rgb([100, 100, 100]));
        let crop = CropRegion {
            left: 0.25,
            top: 0.0,
            width: 0.5,
            height: 1.0,
        };
        // Evidence only in the right-hand cell of a 2x1 map.
        let map = HeatMap {
            class: 0,
            width: 2,
            height: 1,
            values: vec![0.0, 1.0],
        };
        let out = overlay(&picture, &map, crop, 1.0);
        assert_eq!(
            out.get_pixel(2, 10),
            &Rgb([100, 100, 100]),
            "outside the crop"
        );
        assert_eq!(out.get_pixel(11, 10), &Rgb([100, 100, 100]), "no evidence");
        assert_eq!(out.get_pixel(28, 10), &Rgb([220, 20, 20]), "full evidence");
        assert_eq!(latin1("p ≥ 0.5 → ok é"), b"p >= 0.5 ? ok \xe9".to_vec());
    }
}

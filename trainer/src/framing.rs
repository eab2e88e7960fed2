//! Another framing of the same radiograph, for measuring how much a model's answer depends on how
//! much of the body a film shows: each hospital collimates its own way, and a model that learned
//! "the chest fills the frame" from one collection answers by framing, not by disease.

use image::imageops::{self, FilterType};
use image::Rgb32FImage;
use rand::rngs::StdRng;
use rand::Rng;

use crate::planar;

/// The radiograph shown at `zoom` times its size in a frame of the same pixels: below 1 it is
/// shrunk into the centre of a black frame (a wider field, as a film with more margin), above 1
/// its centre `1 / zoom` is enlarged to fill the frame (a tighter collimation). 1 leaves it as is.
pub fn reframe(image: &Rgb32FImage, zoom: f32) -> Rgb32FImage {
    let (width, height) = image.dimensions();
    let scaled = |side: u32, factor: f32| ((side as f32 * factor).round() as u32).clamp(1, side);
    if zoom < 1.0 {
        let (w, h) = (scaled(width, zoom), scaled(height, zoom));
        let shrunk = imageops::resize(image, w, h, FilterType::Triangle);
        let mut framed = Rgb32FImage::new(width, height);
        let (left, top) = ((width - w) / 2, (height - h) / 2);
        imageops::replace(&mut framed, &shrunk, i64::from(left), i64::from(top));
        framed
    } else if zoom > 1.0 {
        let (w, h) = (scaled(width, 1.0 / zoom), scaled(height, 1.0 / zoom));
        let centre = imageops::crop_imm(image, (width - w) / 2, (height - h) / 2, w, h).to_image();
        imageops::resize(&centre, width, height, FilterType::Triangle)
    } else {
        image.clone()
    }
}

/// The same reframing of a (3, side, side) channel-first buffer, as training holds its images.
pub fn reframe_chw(chw: &[f32], side: usize, zoom: f32) -> Vec<f32> {
    planar::from_image(&reframe(&planar::to_image(chw, side), zoom))
}

/// A zoom drawn log-uniformly in [1 / max, max]: as likely a wider framing as a tighter one.
pub fn random_zoom(rng: &mut StdRng, max: f32) -> f32 {
    let reach = max.max(1.0).ln();
    rng.random_range(-reach..=reach).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A grey 40x30 image with a white 10x10 square in the middle.
    fn square() -> Rgb32FImage {
        Rgb32FImage::from_fn(40, 30, |x, y| {
            let inside = (15..25).contains(&x) && (10..20).contains(&y);
            Rgb([if inside { 1.0 } else { 0.5 }; 3])
        })
    }

    fn white_pixels(image: &Rgb32FImage) -> usize {
        image.pixels().filter(|p| p.0[0] > 0.75).count()
    }

    #[test]
    fn a_channel_first_buffer_is_reframed_as_its_image() {
        let image = square();
        let side = 30;
        let crop = imageops::crop_imm(&image, 5, 0, side, side).to_image();
        let chw: Vec<f32> = (0..3)
            .flat_map(|c| crop.pixels().map(move |p| p.0[c]))
            .collect();
        assert_eq!(reframe_chw(&chw, side as usize, 1.0), chw);
        let framed = reframe(&crop, 0.5);
        let expected: Vec<f32> = (0..3)
            .flat_map(|c| framed.pixels().map(move |p| p.0[c]))
            .collect();
        assert_eq!(reframe_chw(&chw, side as usize, 0.5), expected);
    }

    #[test]
    fn random_zooms_stay_in_range_and_go_both_ways() {
        use rand::SeedableRng;
        let mut rng = StdRng::seed_from_u64(7);
        let zooms: Vec<f32> = (0..400).map(|_| random_zoom(&mut rng, 1.25)).collect();
        assert!(zooms.iter().all(|z| (0.8 - 1e-6..=1.25 + 1e-6).contains(z)));
        let wider = zooms.iter().filter(|&&z| z < 1.0).count();
        assert!((150..250).contains(&wider), "{wider} of 400 wider");
        assert!(zooms.iter().any(|&z| z < 0.82) && zooms.iter().any(|&z| z > 1.22));
    }

    #[test]
    fn zoom_one_keeps_the_image() {
        assert_eq!(reframe(&square(), 1.0), square());
    }

    #[test]
    fn zooming_out_shrinks_into_a_black_frame_of_the_same_size() {
        let framed = reframe(&square(), 0.5);
        assert_eq!(framed.dimensions(), (40, 30));
        assert_eq!(framed.get_pixel(0, 0).0, [0.0; 3]);
        assert_eq!(framed.get_pixel(39, 29).0, [0.0; 3]);
        assert!(
            framed.get_pixel(20, 15).0[0] > 0.75,
            "the centre stays white"
        );
        let ratio = white_pixels(&framed) as f32 / white_pixels(&square()) as f32;
        assert!(
            (0.15..0.4).contains(&ratio),
            "a quarter of the area: {ratio}"
        );
    }

    #[test]
    fn zooming_in_enlarges_the_centre_to_fill_the_frame() {
        let framed = reframe(&square(), 2.0);
        assert_eq!(framed.dimensions(), (40, 30));
        assert!(framed.pixels().all(|p| p.0[0] >= 0.45), "no black margin");
        let ratio = white_pixels(&framed) as f32 / white_pixels(&square()) as f32;
        assert!((3.0..5.5).contains(&ratio), "four times the area: {ratio}");
    }
}

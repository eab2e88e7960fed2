//! Training holds an image as one channel-first buffer of f32 in [0, 1], (3, side, side), while
//! the image crate's operations (resizing, JPEG) take interleaved pixels. These convert.

use image::{Rgb, Rgb32FImage};

/// The (3, side, side) buffer as an image.
pub fn to_image(chw: &[f32], side: usize) -> Rgb32FImage {
    let plane = side * side;
    Rgb32FImage::from_fn(side as u32, side as u32, |x, y| {
        let at = y as usize * side + x as usize;
        Rgb([chw[at], chw[plane + at], chw[2 * plane + at]])
    })
}

/// The image as a (3, height, width) buffer.
pub fn from_image(image: &Rgb32FImage) -> Vec<f32> {
    let plane = image.pixels().len();
    let mut chw = vec![0.0; 3 * plane];
    for (at, pixel) in image.pixels().enumerate() {
        for (c, value) in pixel.0.iter().enumerate() {
            chw[c * plane + at] = *value;
        }
    }
    chw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_becomes_an_image_with_each_channel_in_place_and_back() {
        let side = 3;
        let chw: Vec<f32> = (0..3 * side * side).map(|i| i as f32 / 27.0).collect();
        let image = to_image(&chw, side);
        // Pixel (x 2, y 1) is at 1 * 3 + 2 = 5 in each plane.
        assert_eq!(image.get_pixel(2, 1).0, [chw[5], chw[9 + 5], chw[18 + 5]]);
        assert_eq!(from_image(&image), chw);
    }
}

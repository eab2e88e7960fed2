//! An image the page shows (a `blob:` or `data:` URL) read back as pixels, for the viewer and
//! the report. Both URLs are the page's own: nothing is fetched from elsewhere.

use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use web_sys::{CanvasRenderingContext2d, HtmlCanvasElement, HtmlImageElement};

/// RGBA pixels of a picture, at most some size on its longer side.
#[derive(Default)]
pub struct Picture {
    pub pixels: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

impl Picture {
    /// The RGB image (alpha dropped), for the shared report.
    pub fn to_rgb(&self) -> Option<image::RgbImage> {
        let rgb = self
            .pixels
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        image::RgbImage::from_raw(self.width, self.height, rgb)
    }
}

/// The canvas's 2d drawing context.
pub fn context_2d(canvas: &HtmlCanvasElement) -> Result<CanvasRenderingContext2d, JsValue> {
    Ok(canvas
        .get_context("2d")?
        .ok_or("no 2d context")?
        .unchecked_into())
}

/// Sizes `canvas` to `width` x `height` (which clears it) and puts the RGBA `pixels` on it.
pub fn put_rgba(
    canvas: &HtmlCanvasElement,
    pixels: &[u8],
    width: u32,
    height: u32,
) -> Result<(), JsValue> {
    canvas.set_width(width);
    canvas.set_height(height);
    let data = web_sys::ImageData::new_with_u8_clamped_array_and_sh(
        wasm_bindgen::Clamped(pixels),
        width,
        height,
    )?;
    context_2d(canvas)?.put_image_data(&data, 0.0, 0.0)
}

/// Draws a loaded `image` into a canvas at most `max_side` on its longer side and reads it back.
pub fn read_picture(image: &HtmlImageElement, max_side: f64) -> Result<Picture, JsValue> {
    let (w, h) = (image.natural_width() as f64, image.natural_height() as f64);
    let scale = (max_side / w.max(h)).min(1.0);
    let (width, height) = (
        ((w * scale).round() as u32).max(1),
        ((h * scale).round() as u32).max(1),
    );
    let document = web_sys::window()
        .and_then(|w| w.document())
        .ok_or("no document")?;
    let canvas: HtmlCanvasElement = document.create_element("canvas")?.unchecked_into();
    canvas.set_width(width);
    canvas.set_height(height);
    let context = context_2d(&canvas)?;
    context.draw_image_with_html_image_element_and_dw_and_dh(
        image,
        0.0,
        0.0,
        width as f64,
        height as f64,
    )?;
    let pixels = context
        .get_image_data(0.0, 0.0, width as f64, height as f64)?
        .data()
        .0;
    Ok(Picture {
        pixels,
        width,
        height,
    })
}

/// Loads `url` (the page's own `blob:`/`data:` URL) and reads it.
pub async fn load_picture(url: &str, max_side: f64) -> Result<Picture, JsValue> {
    let image = HtmlImageElement::new()?;
    image.set_src(url);
    JsFuture::from(image.decode()).await?;
    read_picture(&image, max_side)
}

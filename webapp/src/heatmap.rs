//! Turning a class activation map into RGBA pixels for the overlay canvas.

use pneumoscope::cam::{heat_rgba, RAMP};

/// RGBA bytes for a map of values in [0, 1]: no evidence is transparent, strong evidence opaque
/// red, so the radiograph stays readable under the overlay.
pub fn rgba(map: &[f32]) -> Vec<u8> {
    map.iter().flat_map(|&v| heat_rgba(v)).collect()
}

/// The ramp as a CSS gradient, for the legend beside a map.
pub fn css_gradient() -> String {
    let stops: Vec<String> = RAMP
        .iter()
        .map(|[r, g, b]| format!("rgb({r}, {g}, {b})"))
        .collect();
    format!("linear-gradient(to right, {})", stops.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ends_of_the_ramp() {
        assert_eq!(rgba(&[0.0]), vec![30, 60, 200, 0]);
        assert_eq!(rgba(&[1.0]), vec![220, 20, 20, 255]);
        assert_eq!(rgba(&[2.0, -1.0]), vec![220, 20, 20, 255, 30, 60, 200, 0]);
    }

    #[test]
    fn alpha_grows_with_evidence() {
        let pixels = rgba(&[0.1, 0.4, 0.9]);
        assert!(pixels[3] < pixels[7] && pixels[7] < pixels[11]);
    }
}

//! Turning a class activation map into RGBA pixels for the overlay canvas.

/// Colour stops of a dark-to-bright ramp (blue, cyan, yellow, red), evenly spaced over [0, 1].
const STOPS: [[f32; 3]; 4] = [
    [30.0, 60.0, 200.0],
    [0.0, 200.0, 220.0],
    [250.0, 220.0, 0.0],
    [220.0, 20.0, 20.0],
];

fn colour(value: f32) -> [u8; 3] {
    let v = value.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (v.floor() as usize).min(STOPS.len() - 2);
    let t = v - i as f32;
    let mix = |c: usize| (STOPS[i][c] * (1.0 - t) + STOPS[i + 1][c] * t).round() as u8;
    [mix(0), mix(1), mix(2)]
}

/// RGBA bytes for a map of values in [0, 1]: no evidence is transparent, strong evidence opaque
/// red, so the radiograph stays readable under the overlay.
pub fn rgba(map: &[f32]) -> Vec<u8> {
    map.iter()
        .flat_map(|&v| {
            let [r, g, b] = colour(v);
            let alpha = (v.clamp(0.0, 1.0).sqrt() * 255.0).round() as u8;
            [r, g, b, alpha]
        })
        .collect()
}

/// The ramp as a CSS gradient, for the legend beside a map.
pub fn css_gradient() -> String {
    let stops: Vec<String> = STOPS
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

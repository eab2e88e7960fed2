//! Class activation maps: the head's weights applied to the last conv block's feature map.
//!
//! With global average pooling followed by one linear layer, Grad-CAM's channel weights are the
//! head's weights divided by the map size, so this map equals Grad-CAM up to a constant factor.

use candle_core::Tensor;

use crate::error::Result;

/// Colour stops of the heat maps' dark-to-bright ramp (blue, cyan, yellow, red), evenly spaced
/// over [0, 1]: the page's overlay, its legend and the reports share it.
pub const RAMP: [[f32; 3]; 4] = [
    [30.0, 60.0, 200.0],
    [0.0, 200.0, 220.0],
    [250.0, 220.0, 0.0],
    [220.0, 20.0, 20.0],
];

/// The ramp's colour and the overlay's alpha for evidence `value` in [0, 1]: no evidence is
/// transparent, strong evidence opaque red, so the radiograph stays readable under it.
pub fn heat_rgba(value: f32) -> [u8; 4] {
    let v = value.clamp(0.0, 1.0) * (RAMP.len() - 1) as f32;
    let i = (v.floor() as usize).min(RAMP.len() - 2);
    let t = v - i as f32;
    let mix = |c: usize| (RAMP[i][c] * (1.0 - t) + RAMP[i + 1][c] * t).round() as u8;
    let alpha = (value.clamp(0.0, 1.0).sqrt() * 255.0).round() as u8;
    [mix(0), mix(1), mix(2), alpha]
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClassActivationMaps {
    pub height: usize,
    pub width: usize,
    /// One raw map per class, row-major `height * width`.
    pub maps: Vec<Vec<f32>>,
}

impl ClassActivationMaps {
    /// `feature_map` (2048, h, w) of one image, `head_weight` (classes, 2048).
    pub fn compute(feature_map: &Tensor, head_weight: &Tensor) -> Result<Self> {
        let (channels, height, width) = feature_map.dims3()?;
        let flat = feature_map.reshape((channels, height * width))?;
        let maps = head_weight.matmul(&flat)?.to_vec2::<f32>()?; // (classes, h*w)
        Ok(Self {
            height,
            width,
            maps,
        })
    }

    /// The evidence for `class`: positive part, scaled to [0, 1] (all zero when there is none).
    pub fn normalized(&self, class: usize) -> Vec<f32> {
        normalized(&self.maps[class])
    }
}

/// LayerCAM (Jiang et al., 2021): at each position, the channels' activations weighted by the
/// positive part of the class score's gradient there, summed, positive part. Unlike Grad-CAM's
/// one weight per channel it stays sharp on early layers.
/// `activation`, `gradient` (C, h, w) -> (h, w)
pub fn layer_cam(activation: &Tensor, gradient: &Tensor) -> Result<Tensor> {
    Ok((gradient.relu()? * activation)?.sum(0)?.relu()?)
}

/// Grad-CAM (Selvaraju et al., 2017): the channels' activations weighted by their mean
/// gradient, summed, positive part.
/// `activation`, `gradient` (C, h, w) -> (h, w)
pub fn grad_cam(activation: &Tensor, gradient: &Tensor) -> Result<Tensor> {
    let weights = gradient.mean_keepdim(2)?.mean_keepdim(1)?; // (C, 1, 1)
    Ok(activation.broadcast_mul(&weights)?.sum(0)?.relu()?)
}

/// A map's positive part scaled to [0, 1] (all zero when it has no positive value).
pub fn normalized(map: &[f32]) -> Vec<f32> {
    let max = map.iter().cloned().fold(0f32, f32::max);
    map.iter()
        .map(|v| if max > 0.0 { v.max(0.0) / max } else { 0.0 })
        .collect()
}

/// One class's heat map as drawn: LayerCAM on `layer2` (`layer_cam`), values in [0, 1] on a
/// grid over the network's crop, H/8 on a side.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatMap {
    pub class: usize,
    pub width: usize,
    pub height: usize,
    /// Row-major `height * width`.
    pub values: Vec<f32>,
}

impl HeatMap {
    /// The map of `class` from `layer_cam` (h, w), the raw LayerCAM on layer2.
    pub fn fine(class: usize, layer_cam: &Tensor) -> Result<Self> {
        let (height, width) = layer_cam.dims2()?;
        Ok(Self {
            class,
            width,
            height,
            values: normalized(&layer_cam.flatten_all()?.to_vec1::<f32>()?),
        })
    }

    /// What the map is, in words, for reports and captions.
    pub fn describe(&self) -> String {
        format!("LayerCAM on layer2, {}x{}", self.width, self.height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two channels on a 1x2 grid: activations [[1, 2]], [[3, 4]]; gradients [[1, -1]], [[-2, 2]].
    fn example() -> (Tensor, Tensor) {
        let device = Device::Cpu;
        let activation = Tensor::new(&[[[1f32, 2.]], [[3., 4.]]], &device).unwrap();
        let gradient = Tensor::new(&[[[1f32, -1.]], [[-2., 2.]]], &device).unwrap();
        (activation, gradient)
    }

    #[test]
    fn layer_cam_weighs_each_position_by_its_own_positive_gradient() {
        let (activation, gradient) = example();
        let map = layer_cam(&activation, &gradient).unwrap();
        // left: 1*1 + 0*3 = 1; right: 0*2 + 2*4 = 8
        assert_eq!(map.to_vec2::<f32>().unwrap(), [[1.0, 8.0]]);
    }

    #[test]
    fn grad_cam_weighs_each_channel_by_its_mean_gradient() {
        let (activation, gradient) = example();
        let map = grad_cam(&activation, &gradient).unwrap();
        // channel weights: mean(1, -1) = 0 and mean(-2, 2) = 0: no evidence anywhere.
        assert_eq!(map.to_vec2::<f32>().unwrap(), [[0.0, 0.0]]);
        let gradient = (gradient + 1.0).unwrap(); // weights 1 and 1
        let map = grad_cam(&activation, &gradient).unwrap();
        assert_eq!(map.to_vec2::<f32>().unwrap(), [[4.0, 6.0]]);
    }

    #[test]
    fn normalized_keeps_the_positive_part_scaled_to_one() {
        assert_eq!(normalized(&[-1.0, 2.0, 4.0]), [0.0, 0.5, 1.0]);
        assert_eq!(normalized(&[-1.0, 0.0]), [0.0, 0.0]);
    }
}

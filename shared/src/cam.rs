//! Class activation maps: the head's weights applied to the last conv block's feature map.
//!
//! With global average pooling followed by one linear layer, Grad-CAM's channel weights are the
//! head's weights divided by the map size, so this map equals Grad-CAM up to a constant factor.

use candle_core::Tensor;

use crate::error::Result;

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
        let map = &self.maps[class];
        let max = map.iter().cloned().fold(0f32, f32::max);
        map.iter()
            .map(|v| if max > 0.0 { v.max(0.0) / max } else { 0.0 })
            .collect()
    }
}

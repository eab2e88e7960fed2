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

/// A map's positive part scaled to [0, 1] (all zero when it has no positive value).
pub fn normalized(map: &[f32]) -> Vec<f32> {
    let max = map.iter().cloned().fold(0f32, f32::max);
    map.iter()
        .map(|v| if max > 0.0 { v.max(0.0) / max } else { 0.0 })
        .collect()
}

/// What computed a heat map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapMethod {
    /// The last block's class activation map (`ClassActivationMaps`), H/32 on a side: part of
    /// every classification.
    LastBlockCam,
    /// LayerCAM on `layer2` (`ResNet50::layer_cam`), H/8 on a side: a second pass with a
    /// backward one.
    Layer2LayerCam,
}

/// One class's heat map as drawn: values in [0, 1] on a grid over the network's crop.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatMap {
    pub class: usize,
    pub width: usize,
    pub height: usize,
    /// Row-major `height * width`.
    pub values: Vec<f32>,
    pub method: MapMethod,
}

impl HeatMap {
    /// The last block's map of `class`.
    pub fn coarse(cams: &ClassActivationMaps, class: usize) -> Self {
        Self {
            class,
            width: cams.width,
            height: cams.height,
            values: cams.normalized(class),
            method: MapMethod::LastBlockCam,
        }
    }

    /// The fine map of `class` from `layer_cam` (h, w), the raw LayerCAM.
    pub fn fine(class: usize, layer_cam: &Tensor) -> Result<Self> {
        let (height, width) = layer_cam.dims2()?;
        Ok(Self {
            class,
            width,
            height,
            values: normalized(&layer_cam.flatten_all()?.to_vec1::<f32>()?),
            method: MapMethod::Layer2LayerCam,
        })
    }

    /// What the map is, in words, for reports and captions.
    pub fn describe(&self) -> String {
        let method = match self.method {
            MapMethod::LastBlockCam => "class activation map of the last block",
            MapMethod::Layer2LayerCam => "LayerCAM on layer2",
        };
        format!("{method}, {}x{}", self.width, self.height)
    }
}

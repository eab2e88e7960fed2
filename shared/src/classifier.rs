//! Inference: weights + card in, class probabilities and heat maps out. The trainer's `predict`
//! and the web page both go through here.

use candle_core::{Device, Tensor};
use image::Rgb32FImage;

use crate::calibration::softmax_with_temperature;
use crate::ood::{GateFeatures, MahalanobisGate};
use crate::operating_point::OperatingPoint;

use crate::cam::{layer_cam, ClassActivationMaps, HeatMap};
use crate::card::ModelCard;
use crate::checkpoint::Checkpoint;
use crate::decode::decode_rgb;
use crate::error::{Error, Result};
use crate::model::{channel_stats, ResNet50, ResNetOutput};
use crate::preprocess::Preprocessing;
use crate::stage_times::Stopwatch;

#[derive(Debug, Clone)]
pub struct Prediction {
    pub probabilities: Vec<f32>,
    pub logits: Vec<f32>,
    pub top: usize,
    /// The 2048-d pooled features.
    pub features: Vec<f32>,
    /// Per-channel mean and standard deviation of `layer2`'s output (1024-d).
    pub layer2_stats: Vec<f32>,
    pub cams: ClassActivationMaps,
    /// The gate's score (squared distance), when the model has a gate.
    pub ood_score: Option<f32>,
    /// Whether the gate accepts the image as the kind the model was trained on.
    pub in_distribution: Option<bool>,
    /// Per class, the verdict at the card's operating point (`None`: the card has none).
    pub positive: Vec<Option<bool>>,
}

/// One classified image's `layer2` output (512, H/8, W/8): what its fine heat maps start from,
/// so that asking for one does not run the stem, layer1 and layer2 again.
#[derive(Debug, Clone)]
pub struct Layer2Map(Tensor);

impl Layer2Map {
    /// The memory it holds.
    pub fn bytes(&self) -> usize {
        self.0.elem_count() * self.0.dtype().size_in_bytes()
    }
}

pub struct Classifier {
    model: ResNet50,
    preprocessing: Preprocessing,
    classes: Vec<String>,
    temperature: f32,
    gate: Option<(MahalanobisGate, GateFeatures)>,
    /// Aligned with `classes`.
    operating_points: Vec<Option<OperatingPoint>>,
    device: Device,
}

impl Prediction {
    /// The activations a gate of this kind reads.
    pub fn gate_input(&self, features: GateFeatures) -> &[f32] {
        match features {
            GateFeatures::Pooled => &self.features,
            GateFeatures::Layer2Stats => &self.layer2_stats,
        }
    }
}

impl Classifier {
    /// Without a card, classes are named by their index and the default (ImageNet) transform is
    /// used. A file with int8 kernels computes its products in int8 (`use_int8_products`), one
    /// with float kernels in f32: the page, `predict` and `evaluate` run a model alike, and a
    /// card's results are those of the model as the page runs it.
    pub fn new(checkpoint: Checkpoint, card: Option<&ModelCard>, device: &Device) -> Result<Self> {
        let num_classes = checkpoint.num_classes()?;
        let gate = match card.and_then(|c| c.ood_gate.as_ref()) {
            Some(record) => Some((
                MahalanobisGate::from_tensors(checkpoint.tensors(), record.threshold)?.ok_or_else(
                    || {
                        Error::Card(
                            "the card has a gate but the weights hold no ood.* tensors".into(),
                        )
                    },
                )?,
                record.features,
            )),
            None => None,
        };
        if let Some((gate, features)) = &gate {
            if gate.input_dim() != features.dim() {
                return Err(Error::Card(format!(
                    "the gate reads {features:?} ({} values) but its tensors expect {}",
                    features.dim(),
                    gate.input_dim()
                )));
            }
        }
        let temperature = card.and_then(|c| c.temperature).unwrap_or(1.0);
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Card(format!(
                "temperature {temperature} is not positive"
            )));
        }
        let (classes, preprocessing) = match card {
            Some(card) => {
                if card.classes.len() != num_classes {
                    return Err(Error::Card(format!(
                        "the card names {} classes but the weights have {num_classes}",
                        card.classes.len()
                    )));
                }
                (card.classes.clone(), card.preprocessing.clone())
            }
            None => (
                (0..num_classes).map(|i| i.to_string()).collect(),
                Preprocessing::default(),
            ),
        };
        let operating_points = operating_points_for(&classes, card)?;
        let int8_kernels = checkpoint.has_int8_kernels();
        let mut model = checkpoint.into_model(device)?;
        model.fold_batch_norms()?;
        // Other devices run candle's f32 ops whatever the codes (`conv2d_infer`).
        if device.is_cpu() {
            model.use_inference_stem(preprocessing.mean, preprocessing.std)?;
            if int8_kernels {
                model.use_int8_products()?;
            }
        }
        Ok(Self {
            model,
            preprocessing,
            classes,
            temperature,
            gate,
            operating_points,
            device: device.clone(),
        })
    }

    /// Every convolution after the stem computes its product in int8 from now on: 7-bit
    /// activations with one scale per image and layer, int8 weights with one scale per output
    /// channel, exact i32 sums (`ops::conv_int8`).
    pub fn use_int8_products(&mut self) -> Result<()> {
        Ok(self.model.use_int8_products()?)
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Per class (card order), its operating point when the card has one.
    pub fn operating_points(&self) -> &[Option<OperatingPoint>] {
        &self.operating_points
    }

    pub fn has_gate(&self) -> bool {
        self.gate.is_some()
    }

    pub fn preprocessing(&self) -> &Preprocessing {
        &self.preprocessing
    }

    /// Where the model's weights live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Decodes, preprocesses and classifies one image file's bytes.
    pub fn classify_bytes(&self, bytes: &[u8]) -> Result<Prediction> {
        self.classify_image(&decode_rgb(bytes)?)
    }

    /// Preprocesses and classifies one decoded image.
    pub fn classify_image(&self, image: &Rgb32FImage) -> Result<Prediction> {
        self.classify_image_timed(image, &mut Stopwatch::off())
    }

    /// `classify_image`, charging "preprocess", the layer groups, "maps" and "gate" to `watch`.
    pub fn classify_image_timed(
        &self,
        image: &Rgb32FImage,
        watch: &mut Stopwatch,
    ) -> Result<Prediction> {
        let input = self.input_tensor(image)?;
        watch.lap("preprocess");
        Ok(self.classify_input_timed(&input, watch)?.0)
    }

    /// The network's input for `image`: (1, 3, crop, crop), preprocessed as the card says.
    pub fn input_tensor(&self, image: &Rgb32FImage) -> Result<Tensor> {
        let crop = self.preprocessing.crop as usize;
        Ok(Tensor::from_vec(
            self.preprocessing.apply(image),
            (1, 3, crop, crop),
            &self.device,
        )?)
    }

    /// Classifies one image's `input_tensor`; its `layer2` output comes along for its fine
    /// heat maps.
    pub fn classify_input_timed(
        &self,
        input: &Tensor,
        watch: &mut Stopwatch,
    ) -> Result<(Prediction, Layer2Map)> {
        let output = self.model.forward_timed(input, false, watch)?;
        let layer2 = Layer2Map(output.layer2_map.get(0)?);
        let mut predictions = self.predictions(output, watch)?;
        Ok((predictions.remove(0), layer2))
    }

    /// The fine heat map of `class` for one classified image (LayerCAM on layer2): layer3,
    /// layer4 and the head again with a backward pass, so the page asks for it apart from the
    /// classification.
    pub fn fine_map(&self, layer2: &Layer2Map, class: usize) -> Result<HeatMap> {
        let gradient = self.model.layer2_gradient(&layer2.0, class)?;
        HeatMap::fine(class, &layer_cam(&layer2.0, &gradient)?)
    }

    /// Classifies a normalised batch (N, 3, H, W).
    pub fn classify_batch(&self, batch: &Tensor) -> Result<Vec<Prediction>> {
        self.classify_batch_timed(batch, &mut Stopwatch::off())
    }

    /// `classify_batch`, charging the layer groups, "maps" and "gate" to `watch`.
    pub fn classify_batch_timed(
        &self,
        batch: &Tensor,
        watch: &mut Stopwatch,
    ) -> Result<Vec<Prediction>> {
        let output = self.model.forward_timed(batch, false, watch)?;
        self.predictions(output, watch)
    }

    /// Each image's prediction from the network's output, charging "maps" and "gate".
    fn predictions(&self, output: ResNetOutput, watch: &mut Stopwatch) -> Result<Vec<Prediction>> {
        let layer2_stats = channel_stats(&output.layer2_map)?; // (N, 1024)
        watch.lap("gate");
        let n = output.logits.dim(0)?;
        (0..n)
            .map(|i| {
                let logits: Vec<f32> = output.logits.get(i)?.to_vec1()?;
                let probabilities = softmax_with_temperature(&logits, self.temperature);
                let cams = ClassActivationMaps::compute(
                    &output.feature_map.get(i)?,
                    self.model.head_weight(),
                )?;
                watch.lap("maps");
                let mut prediction = Prediction {
                    top: argmax(&probabilities),
                    logits,
                    features: output.features.get(i)?.to_vec1()?,
                    layer2_stats: layer2_stats.get(i)?.to_vec1()?,
                    cams,
                    probabilities,
                    ood_score: None,
                    in_distribution: None,
                    positive: Vec::new(),
                };
                prediction.positive = self
                    .operating_points
                    .iter()
                    .zip(&prediction.probabilities)
                    .map(|(point, &p)| point.as_ref().map(|point| point.is_positive(p)))
                    .collect();
                if let Some((gate, features)) = &self.gate {
                    let score = gate.score(prediction.gate_input(*features));
                    prediction.ood_score = Some(score);
                    prediction.in_distribution = Some(score <= gate.threshold);
                }
                watch.lap("gate");
                Ok(prediction)
            })
            .collect()
    }
}

/// The card's operating points aligned with `classes`; one naming no class is an error.
fn operating_points_for(
    classes: &[String],
    card: Option<&ModelCard>,
) -> Result<Vec<Option<OperatingPoint>>> {
    let points = card.map(|c| c.operating_points.as_slice()).unwrap_or(&[]);
    if let Some(stray) = points.iter().find(|p| !classes.contains(&p.class)) {
        return Err(Error::Card(format!(
            "an operating point names class `{}`, which the model does not have",
            stray.class
        )));
    }
    Ok(classes
        .iter()
        .map(|class| points.iter().find(|p| &p.class == class).cloned())
        .collect())
}

/// Index of the largest value (the first one on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Reads a safetensors buffer and builds a classifier from it, for callers holding bytes.
pub fn classifier_from_bytes(
    weights: &[u8],
    card: Option<&ModelCard>,
    device: &Device,
) -> Result<Classifier> {
    Classifier::new(Checkpoint::from_bytes(weights, device)?, card, device)
}

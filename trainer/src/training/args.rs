//! `trainer train`'s options: the recipe, the data, augmentation and sampling, as recorded in
//! the card and checkpoints.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, ValueEnum};
use pneumoscope::Preprocessing;
use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::device::DeviceChoice;
use crate::sampler::Balance;

use super::consistency::FramingConsistency;
use super::mixstyle::MixStyle;

/// The last part of the network that `--freeze` keeps fixed (everything before it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize, Deserialize)]
pub enum FreezeUpTo {
    Stem,
    Layer1,
    Layer2,
    Layer3,
    Layer4,
}

impl FreezeUpTo {
    /// Whether the parameter `name` lies in the frozen part.
    pub(super) fn freezes(self, name: &str) -> bool {
        let part = match name.split('.').next().unwrap_or("") {
            "conv1" | "bn1" => FreezeUpTo::Stem,
            "layer1" => FreezeUpTo::Layer1,
            "layer2" => FreezeUpTo::Layer2,
            "layer3" => FreezeUpTo::Layer3,
            "layer4" => FreezeUpTo::Layer4,
            _ => return false,
        };
        part <= self
    }
}

#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq)]
pub struct TrainArgs {
    /// ImageFolder root: one sub-folder per class. Repeat to train on several folders with the
    /// same classes as one set.
    #[arg(long, required = true)]
    #[serde(deserialize_with = "one_or_many")]
    pub data: Vec<PathBuf>,
    /// Use only these class folders (comma-separated), e.g. the paper's three classes of a
    /// five-class corpus.
    #[arg(long, value_delimiter = ',')]
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Validation ImageFolder(s) (repeatable) for the best-checkpoint choice, instead of holding
    /// out --val-fraction of --data: a corpus split by patient belongs here.
    #[arg(long)]
    #[serde(default)]
    pub val_data: Vec<PathBuf>,
    /// How an epoch draws its images: `none` (each once, shuffled), `class-source` (classes
    /// equal, sources within a class by count^--source-power, with replacement) or
    /// `class-source-group` (every (class, source) group by count^--source-power).
    #[arg(long, value_enum, default_value = "none")]
    #[serde(default = "no_balance")]
    pub balance: Balance,
    /// Exponent of a group's size in its share (of its class with class-source, of all with
    /// class-source-group; 0: all alike).
    #[arg(long, default_value_t = 0.5)]
    #[serde(default)]
    pub source_power: f64,
    /// With --balance, weigh each acquisition batch of a source (the manifest's `origin` folder
    /// above the class folder, e.g. Kermany's own train and test collections) as a source of its
    /// own, so a small batch that looks unlike the rest is not drowned by it.
    #[arg(long)]
    #[serde(default)]
    pub balance_batches: bool,
    /// Images drawn per epoch with --balance (0: as many as the training set has).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub samples_per_epoch: usize,
    /// Output folder for checkpoints, the exported model, its card, metrics and plots.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    #[arg(long)]
    pub nesterov: bool,
    /// StepLR step size, in epochs.
    #[arg(long, default_value_t = 10)]
    pub lr_step: usize,
    /// StepLR decay factor.
    #[arg(long, default_value_t = 0.1)]
    pub lr_gamma: f64,
    /// Linear learning-rate warm-up over this many first epochs (0: none, the paper's recipe).
    #[arg(long, default_value_t = 0)]
    #[serde(default)]
    pub warmup_epochs: usize,
    /// Fraction of each class held out for validation.
    #[arg(long, default_value_t = 0.15)]
    pub val_fraction: f64,
    /// Seed of the split, the initialisation, the shuffling and the augmentation.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Start from this ResNet50 checkpoint (torchvision or timm names; e.g. ImageNet weights, or
    /// an earlier model of ours). A head with another class count is replaced by a fresh one.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// The classes of --init's head, in its order (comma-separated; e.g. from its card). With
    /// it, the head is matched by class name: classes the run shares with it keep their trained
    /// rows, the others start fresh, so a model can gain or drop classes without losing the rest.
    #[arg(long, value_delimiter = ',', requires = "init")]
    pub init_head_classes: Option<Vec<String>>,
    /// Start every bottleneck's last batch norm at zero scale (torchvision's
    /// `zero_init_residual`), so each block begins as the identity: what makes training from
    /// scratch converge. No effect on weights that --init loads.
    #[arg(long)]
    #[serde(default)]
    pub zero_init_residual: bool,
    /// Keep this part and everything before it fixed (the paper froze up to layer2).
    #[arg(long)]
    pub freeze: Option<FreezeUpTo>,
    /// Random rotation range in degrees (0 disables).
    #[arg(long, default_value_t = 10.0)]
    pub rotation: f32,
    /// Random translation range as a fraction of the image side (0 disables).
    #[arg(long, default_value_t = 0.1)]
    pub translate: f32,
    /// Random scaling range: scale drawn from [1 - s, 1 + s] (0 disables).
    #[arg(long, default_value_t = 0.1)]
    pub scale: f32,
    /// Random resized crop from the --resize square: least share of its area kept (1 disables;
    /// the centre crop is used).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "crate::augment::one")]
    pub crop_area_min: f32,
    /// Random resized crop: aspect ratio drawn from [1/a, a] (1 disables).
    #[arg(long, default_value_t = 1.0)]
    #[serde(default = "crate::augment::one")]
    pub aspect_max: f32,
    /// Random brightness shift in [-b, b] (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub brightness: f32,
    /// Random contrast factor in [1 - c, 1 + c] (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub contrast: f32,
    /// Random gamma in [1/(1 + g), 1 + g] (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub gamma: f32,
    /// Random sharpness factor in [1 - s, 1 + s]: below 1 blurs, above 1 sharpens (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub sharpness: f32,
    /// Share of training images re-encoded as JPEG at a random quality (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub jpeg_probability: f32,
    /// Lowest quality of that re-encoding (up to 95).
    #[arg(long, default_value_t = 40)]
    #[serde(default = "crate::augment::default_jpeg_quality")]
    pub jpeg_quality_min: u8,
    /// Framing consistency: each training draw is also shown reframed, at a zoom drawn
    /// log-uniformly in [1/--framing-zoom, --framing-zoom] (below 1 shrunk into a black margin,
    /// above 1 its centre enlarged), and this weight times the Jensen-Shannon divergence between
    /// the two answers joins the loss (both views also count in the cross-entropy), so the
    /// network learns to answer alike however a film is collimated. Doubles each step's images
    /// (0: off).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub framing_consistency: f32,
    /// Widest zoom of --framing-consistency's reframing (at least 1).
    #[arg(long, default_value_t = 1.25)]
    #[serde(default = "default_framing_zoom")]
    pub framing_zoom: f32,
    /// MixStyle: the chance that a training batch's feature maps after `layer1` ..
    /// `layer{--mixstyle-groups}` take each image's style (each channel's mean and standard
    /// deviation) mixed with another image's (Zhou et al. 2021), so that a collection's look
    /// (exposure, contrast, texture) stops telling classes apart (0: off; the paper uses 0.5).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub mixstyle: f32,
    /// How many layer groups, from `layer1`, MixStyle follows (1 to 3).
    #[arg(long, default_value_t = 3)]
    #[serde(default = "default_mixstyle_groups")]
    pub mixstyle_groups: usize,
    /// Histogram-equalise every crop before normalising (recorded in the card's preprocessing,
    /// so inference does the same): removes differences of exposure and processing between
    /// hospitals by construction.
    #[arg(long)]
    #[serde(default)]
    pub equalize: bool,
    /// Shorter side after resizing.
    #[arg(long, default_value_t = 256)]
    pub resize: u32,
    /// Side of the centre crop fed to the network.
    #[arg(long, default_value_t = 224)]
    pub crop: u32,
    /// Split each batch into chunks of this many images and accumulate their gradients, to fit
    /// memory. Batch-norm statistics are then taken per chunk ("ghost" batch norm), so the default
    /// (0: the whole batch) is the paper's recipe.
    #[arg(long, default_value_t = 0)]
    pub micro_batch: usize,
    /// Export the model in f16 (half the download).
    #[arg(long)]
    pub f16: bool,
    /// Continue the run in --out from its last completed epoch.
    #[arg(long)]
    pub resume: bool,
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceChoice,
}

fn default_framing_zoom() -> f32 {
    1.25
}

fn default_mixstyle_groups() -> usize {
    3
}

fn no_balance() -> Balance {
    Balance::None
}

/// Cards and checkpoints written before `--data` could repeat hold one path.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(path) => vec![path],
        OneOrMany::Many(paths) => paths,
    })
}

impl TrainArgs {
    pub fn augmentation(&self) -> Augmentation {
        Augmentation {
            rotation_degrees: self.rotation,
            translate_fraction: self.translate,
            scale_delta: self.scale,
            crop_area_min: self.crop_area_min,
            aspect_max: self.aspect_max,
            brightness: self.brightness,
            contrast: self.contrast,
            gamma: self.gamma,
            sharpness: self.sharpness,
            jpeg_probability: self.jpeg_probability,
            jpeg_quality_min: self.jpeg_quality_min,
        }
    }

    /// --framing-consistency's settings, when it is on.
    pub(super) fn framing_consistency(&self) -> Option<FramingConsistency> {
        (self.framing_consistency > 0.0).then_some(FramingConsistency {
            weight: self.framing_consistency,
            zoom_max: self.framing_zoom,
        })
    }

    /// --mixstyle's settings, when it is on.
    pub(super) fn mixstyle(&self) -> Option<MixStyle> {
        (self.mixstyle > 0.0).then_some(MixStyle {
            probability: self.mixstyle,
            groups: self.mixstyle_groups,
        })
    }

    /// Images per forward pass (--micro-batch, 0: the whole batch).
    pub(super) fn micro_batch_size(&self) -> usize {
        match self.micro_batch {
            0 => self.batch_size,
            n => n,
        }
    }

    /// Side of the cached images: the whole --resize square when a random crop is taken from
    /// it, else just the centre crop.
    pub(super) fn cache_side(&self) -> u32 {
        if self.augmentation().random_crop() {
            self.resize
        } else {
            self.crop
        }
    }

    pub(super) fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            resize_shorter: self.resize,
            crop: self.crop,
            equalize: self.equalize,
            ..Preprocessing::default()
        }
    }

    /// The settings a resumed run must share with the original (all but the epoch count, the
    /// resume flag and the device).
    pub(super) fn recipe_key(&self) -> TrainArgs {
        TrainArgs {
            epochs: 0,
            resume: false,
            device: DeviceChoice::Auto,
            ..self.clone()
        }
    }
}

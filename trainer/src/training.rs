//! `trainer train`: the seed paper's recipe (SGD momentum 0.9, lr 0.1 with StepLR(10, 0.1),
//! batch 32, 20 epochs, 85:15 stratified split, best-validation checkpoint), resumable, with
//! everything a run needs to be reproduced recorded in the model card.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use pneumoscope::card::{
    sha256_hex, DatasetRecord, ModelCard, TrainingRecord, WeightsInfo, ARCHITECTURE,
};
use pneumoscope::checkpoint::{named_vars, state_dict, to_safetensors_bytes, write_atomic};
use pneumoscope::{init, Checkpoint, Preprocessing, ResNet50};
use rand::{rngs::StdRng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::augment::Augmentation;
use crate::data::{
    class_counts, load, normalized_batch, source_counts, stratified_split, CachedImages,
    ImageFolder,
};
use crate::device::{select, DeviceChoice};
use crate::optim::{step_lr, warm_up, Sgd, SgdConfig};
use crate::plots;
use crate::sampler::{epoch_order, Balance, BalancedSampler};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";
pub const CARD_FILE: &str = "model.json";
pub const METRICS_FILE: &str = "metrics.csv";
const MOMENTUM_PREFIX: &str = "optimizer.momentum.";
const STATE_KEY: &str = "pneumoscope.train_state";

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
    fn freezes(self, name: &str) -> bool {
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
    /// Share of training images re-encoded as JPEG at a random quality (0 disables).
    #[arg(long, default_value_t = 0.0)]
    #[serde(default)]
    pub jpeg_probability: f32,
    /// Lowest quality of that re-encoding (up to 95).
    #[arg(long, default_value_t = 40)]
    #[serde(default = "crate::augment::default_jpeg_quality")]
    pub jpeg_quality_min: u8,
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
            jpeg_probability: self.jpeg_probability,
            jpeg_quality_min: self.jpeg_quality_min,
        }
    }

    /// Side of the cached images: the whole --resize square when a random crop is taken from
    /// it, else just the centre crop.
    fn cache_side(&self) -> u32 {
        if self.augmentation().random_crop() {
            self.resize
        } else {
            self.crop
        }
    }

    fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            resize_shorter: self.resize,
            crop: self.crop,
            ..Preprocessing::default()
        }
    }

    /// The settings a resumed run must share with the original (all but the epoch count, the
    /// resume flag and the device).
    fn recipe_key(&self) -> TrainArgs {
        TrainArgs {
            epochs: 0,
            resume: false,
            device: DeviceChoice::Auto,
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub validation_loss: f64,
    pub validation_accuracy: f64,
    pub images_per_second: f64,
    pub seconds: f64,
}

/// What a checkpoint remembers besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrainState {
    args: TrainArgs,
    epochs_completed: usize,
    optimizer_steps: i64,
    best_epoch: usize,
    best_validation_accuracy: f64,
    history: Vec<EpochMetrics>,
}

/// One pass over `indices` in batches: training (augmented, batch statistics, optimizer steps)
/// when `optimizer` is given, evaluation otherwise. Returns (mean loss, accuracy, images/s).
struct Pass<'a> {
    model: &'a ResNet50,
    images: &'a CachedImages,
    preprocessing: &'a Preprocessing,
    device: &'a Device,
    batch_size: usize,
    micro_batch: usize,
    /// Side of the cached images (the network's input is `preprocessing.crop`).
    cache_side: usize,
}

impl Pass<'_> {
    /// The network's input for `indices`; `first_draw` numbers the first one's augmentation draw
    /// within the epoch (an image drawn twice is augmented twice, differently).
    fn batch(
        &self,
        indices: &[usize],
        augment: Option<(&Augmentation, u64, usize)>,
        first_draw: usize,
    ) -> Result<Tensor> {
        let side = self.preprocessing.crop as usize;
        let centre_crop = Augmentation::default();
        let images = indices
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let cached = &self.images.pixels[i];
                match augment {
                    Some((aug, seed, epoch)) => aug.apply(
                        cached,
                        self.cache_side,
                        side,
                        &mut Augmentation::rng(seed, epoch, first_draw + n),
                    ),
                    None if self.cache_side == side => cached.clone(),
                    None => centre_crop.apply(
                        cached,
                        self.cache_side,
                        side,
                        &mut Augmentation::rng(0, 0, 0),
                    ),
                }
            })
            .collect();
        normalized_batch(images, side, self.preprocessing, self.device)
    }

    fn labels(&self, indices: &[usize]) -> Result<Tensor> {
        let labels: Vec<u32> = indices
            .iter()
            .map(|&i| self.images.samples[i].label as u32)
            .collect();
        Ok(Tensor::new(labels, self.device)?)
    }

    fn run(
        &self,
        indices: &[usize],
        mut train: Option<(&mut Sgd, f64, &Augmentation, u64, usize)>,
        progress: &ProgressBar,
    ) -> Result<(f64, f64, f64)> {
        let start = Instant::now();
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        for chunk in indices.chunks(self.batch_size) {
            // Batch statistics of a single image are undefined (PyTorch refuses them): a last
            // training batch of one is left out of this epoch.
            if train.is_some() && chunk.len() < 2 {
                continue;
            }
            let augment = train
                .as_ref()
                .map(|(_, _, aug, seed, epoch)| (*aug, *seed, *epoch));
            let mut batch_grads: Option<GradStore> = None;
            let mut draw = seen;
            for micro in micro_batches(chunk, self.micro_batch) {
                let x = self.batch(micro, augment, draw)?;
                draw += micro.len();
                let y = self.labels(micro)?;
                let output = self.model.forward_t(&x, train.is_some())?;
                let loss = candle_nn::loss::cross_entropy(&output.logits, &y)?;
                let loss_value = f64::from(loss.to_scalar::<f32>()?);
                if !loss_value.is_finite() {
                    bail!("the loss became {loss_value}: training diverged; try a lower --lr");
                }
                if let Some((optimizer, ..)) = train.as_ref() {
                    // The batch loss is the size-weighted mean of the chunks' mean losses.
                    let weight = micro.len() as f64 / chunk.len() as f64;
                    let grads = (loss * weight)?.backward()?;
                    batch_grads = Some(match batch_grads {
                        None => grads,
                        Some(sum) => accumulate(sum, grads, optimizer.params())?,
                    });
                }
                let predicted = output.logits.argmax(1)?.to_vec1::<u32>()?;
                let truth = y.to_vec1::<u32>()?;
                correct += predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
                loss_sum += loss_value * micro.len() as f64;
            }
            if let (Some((optimizer, lr, ..)), Some(grads)) = (train.as_mut(), batch_grads) {
                optimizer.step(&grads, *lr)?;
            }
            seen += chunk.len();
            let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
            progress.set_message(format!(
                "loss {:.4}  acc {:.3}  {rate:.1} img/s",
                loss_sum / seen as f64,
                correct as f64 / seen as f64
            ));
            progress.inc(chunk.len() as u64);
        }
        let seen_f = seen.max(1) as f64;
        let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
        Ok((loss_sum / seen_f, correct as f64 / seen_f, rate))
    }
}

/// Splits a batch into the fewest chunks of at most `max_len` images, of sizes that differ by
/// at most one, so that no chunk is left with a single image (batch statistics of one image are
/// undefined). Only where that cannot be had (`max_len` 1, or 2 with an odd batch) does a chunk
/// get one image more than `max_len`.
fn micro_batches(batch: &[usize], max_len: usize) -> Vec<&[usize]> {
    let n = batch.len();
    let mut count = n.div_ceil(max_len.max(1)).max(1);
    while count > 1 && n / count < 2 {
        count -= 1;
    }
    let (base, longer) = (n / count, n % count);
    let mut rest = batch;
    (0..count)
        .map(|i| {
            let (head, tail) = rest.split_at(base + usize::from(i < longer));
            rest = tail;
            head
        })
        .collect()
}

/// Adds `more`'s gradients of `params` into `sum`.
fn accumulate(mut sum: GradStore, more: GradStore, params: &[(String, Var)]) -> Result<GradStore> {
    for (_, var) in params {
        if let Some(extra) = more.get(var) {
            let total = match sum.get(var) {
                Some(g) => (g + extra)?,
                None => extra.clone(),
            };
            sum.insert(var, total);
        }
    }
    Ok(sum)
}

fn progress_bar(len: usize, label: String) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label);
    bar
}

fn trainable(vars: Vec<(String, Var)>, freeze: Option<FreezeUpTo>) -> Vec<(String, Var)> {
    vars.into_iter()
        .filter(|(name, _)| !name.ends_with("running_mean") && !name.ends_with("running_var"))
        .filter(|(name, _)| !freeze.is_some_and(|f| f.freezes(name)))
        .collect()
}

fn save_checkpoint(out: &Path, varmap: &VarMap, sgd: &Sgd, state: &TrainState) -> Result<()> {
    let mut tensors = state_dict(varmap, DType::F32, state.optimizer_steps)?;
    for (name, momentum) in sgd.state() {
        tensors.insert(format!("{MOMENTUM_PREFIX}{name}"), momentum);
    }
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    let views: Vec<(&String, &Tensor)> = tensors.iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(metadata))?;
    write_atomic(&out.join(CHECKPOINT_FILE), &bytes)?;
    Ok(())
}

fn load_checkpoint(
    out: &Path,
    varmap: &VarMap,
    sgd: &mut Sgd,
    device: &Device,
) -> Result<TrainState> {
    let path = out.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&path)
        .with_context(|| format!("--resume: cannot read {}", path.display()))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .with_context(|| format!("--resume: {} is not a checkpoint", path.display()))?;
    let state_json = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .with_context(|| format!("--resume: {} holds no training state", path.display()))?;
    let state: TrainState = serde_json::from_str(state_json)?;
    let checkpoint = Checkpoint::from_bytes(&bytes, device)?;
    checkpoint.load_into(varmap, false)?;
    sgd.load_state(|name| {
        checkpoint
            .tensors()
            .get(&format!("{MOMENTUM_PREFIX}{name}"))
            .cloned()
    });
    Ok(state)
}

fn draw_curves(out: &Path, history: &[EpochMetrics]) {
    if let Err(e) = plots::curves(&out.join("curves.png"), history) {
        eprintln!("warning: could not draw curves.png: {e:#}");
    }
}

fn write_metrics_csv(out: &Path, history: &[EpochMetrics]) -> Result<()> {
    let mut csv = String::from(
        "epoch,lr,train_loss,train_accuracy,validation_loss,validation_accuracy,images_per_second,seconds\n",
    );
    for m in history {
        csv += &format!(
            "{},{},{:.6},{:.6},{:.6},{:.6},{:.3},{:.1}\n",
            m.epoch,
            m.lr,
            m.train_loss,
            m.train_accuracy,
            m.validation_loss,
            m.validation_accuracy,
            m.images_per_second,
            m.seconds
        );
    }
    write_atomic(&out.join(METRICS_FILE), csv.as_bytes())?;
    Ok(())
}

/// Writes `model.safetensors` (from the best checkpoint, in f32 or f16) and its card.
fn export(
    args: &TrainArgs,
    images: &CachedImages,
    state: &TrainState,
    initialization: String,
    device: &Device,
) -> Result<ModelCard> {
    let best = candle_core::safetensors::load(args.out.join(BEST_FILE), device)?;
    let dtype = if args.f16 { DType::F16 } else { DType::F32 };
    let mut tensors = HashMap::new();
    for (name, tensor) in best {
        let tensor = if tensor.dtype().is_float() {
            tensor.to_dtype(dtype)?
        } else {
            tensor
        };
        tensors.insert(name, tensor);
    }
    let bytes = to_safetensors_bytes(&tensors)?;
    write_atomic(&args.out.join(MODEL_FILE), &bytes)?;
    let card = ModelCard {
        name: "Pneumoscope chest X-ray classifier".into(),
        architecture: ARCHITECTURE.into(),
        classes: images.classes.clone(),
        preprocessing: args.preprocessing(),
        weights: WeightsInfo {
            file: MODEL_FILE.into(),
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            dtype: if args.f16 { "f16" } else { "f32" }.into(),
        },
        training: Some(TrainingRecord {
            trainer_version: env!("CARGO_PKG_VERSION").into(),
            config: serde_json::to_value(args)?,
            initialization,
            data: images.record.clone(),
            epochs_completed: state.epochs_completed,
            best_epoch: state.best_epoch,
            best_validation_accuracy: state.best_validation_accuracy,
        }),
        temperature: None,
        ood_gate: None,
        evaluations: Vec::new(),
        quantization: None,
        operating_points: Vec::new(),
        intended_use: "Research and teaching: shows what a ResNet50 trained on public chest \
                       X-ray collections answers for a radiograph. A research tool, not a \
                       diagnostic device; never use it for a clinical decision."
            .into(),
        limitations: limitations(&images.record, args),
    };
    write_atomic(&args.out.join(CARD_FILE), card.to_json().as_bytes())?;
    Ok(card)
}

/// What a user must know about a model trained on `data`: a small single-collection set and a
/// multi-source corpus fail in different ways.
fn limitations(data: &DatasetRecord, args: &TrainArgs) -> Vec<String> {
    let mut limits: Vec<String> = if data.train_per_source.len() > 1 {
        vec![
            "Trained on public collections only (sources listed above). Class and source are \
             entangled there: every Covid image is an adult's, from the COVID-19 Radiography \
             Database or publication figures; every Viral Pneumonia image a child's, from one \
             Guangzhou collection (Kermany); only Normal has both. The model may still use age \
             or collection cues; the per-source results show where it holds."
                .into(),
            "Covid labels come from 2020 public collections; radiographs from other hospitals, \
             devices or later variants may look different. Accuracy elsewhere is unknown until \
             measured."
                .into(),
            "11 'Covid' images of the Kaggle copy are SARS (2003) figures, not COVID-19; the \
             Kaggle copy squashed every image to 640x640."
                .into(),
        ]
    } else {
        vec![
            "Trained on a few hundred images of one public Kaggle set (Covid-19 Image Dataset): \
             far too few to generalise; accuracy elsewhere is unknown until measured."
                .into(),
            "Covid images are adult radiographs from publications; Normal and Viral Pneumonia \
             look pediatric (Kermany-style), so the classes differ by source and patient age as \
             well as disease, and the model may have learned the source."
                .into(),
            "11 'Covid' training images are SARS (2003) figures, not COVID-19.".into(),
            "9 images of the public test split are duplicates of training images; the honest \
             test number excludes them."
                .into(),
            "Images were resized to 640x640 by the uploader (aspect ratio squashed).".into(),
        ]
    };
    limits.push(format!(
        "Input {0}x{0} pixels: fine detail is lost, and the heat map is coarse.",
        args.crop
    ));
    let classes: Vec<&str> = data.per_class.iter().map(|(c, _)| c.as_str()).collect();
    limits.push(format!(
        "{} classes only ({}): any other finding (bacterial pneumonia, tuberculosis...) or \
         any non-chest-X-ray input that passes the gate still gets one of them.",
        classes.len(),
        classes.join(", ")
    ));
    limits
}

/// A run's cached images and which of them train and which validate.
pub struct PreparedData {
    pub images: CachedImages,
    pub train: Vec<usize>,
    pub validation: Vec<usize>,
}

/// Reads the run's data as `train` does: --data (only --classes, when given), and either
/// --val-data or a stratified --val-fraction split of --data, cached as `caching` says (the
/// network's input, or a larger square for random crops). `calibrate` calls it with the card's
/// configuration to find the same split.
pub fn prepare_data(args: &TrainArgs, caching: &Preprocessing) -> Result<PreparedData> {
    let classes = args.classes.as_deref();
    let mut folder = ImageFolder::scan_all(&args.data, classes)?;
    let train_files = folder.samples.len();
    if !args.val_data.is_empty() {
        let validation = ImageFolder::scan_all(&args.val_data, Some(&folder.classes))?;
        folder.roots.extend(validation.roots);
        folder.samples.extend(validation.samples);
    }
    let mut images = load(&folder, caching)?;
    let num_classes = images.classes.len();
    let labels: Vec<usize> = images.samples.iter().map(|s| s.label).collect();
    let (train, validation) = if args.val_data.is_empty() {
        stratified_split(&labels, num_classes, args.val_fraction, args.seed)
    } else {
        // `load` keeps the order and skips unreadable files: the training files come first.
        let paths: HashSet<&Path> = folder.samples[..train_files]
            .iter()
            .map(|s| s.path.as_path())
            .collect();
        (0..images.samples.len()).partition(|&i| paths.contains(&images.samples[i].path.as_path()))
    };
    if train.is_empty() || validation.is_empty() {
        bail!("the split left no training or no validation image; add images or change --val-fraction");
    }
    images.record.train_per_class = class_counts(&labels, &train, num_classes);
    images.record.validation_per_class = class_counts(&labels, &validation, num_classes);
    images.record.train_per_source = source_counts(&images.samples, &train);
    Ok(PreparedData {
        images,
        train,
        validation,
    })
}

fn print_split(data: &PreparedData) {
    let record = &data.images.record;
    println!("{:<24} {:>6} {:>6} {:>6}", "class", "train", "val", "total");
    for (c, class) in data.images.classes.iter().enumerate() {
        let (t, v) = (record.train_per_class[c], record.validation_per_class[c]);
        println!("{class:<24} {t:>6} {v:>6} {:>6}", t + v);
    }
    println!(
        "{:<24} {:>6} {:>6} {:>6}  (skipped {} unreadable files)",
        "all",
        data.train.len(),
        data.validation.len(),
        data.images.samples.len(),
        record.skipped.len()
    );
    for (source, count) in &record.train_per_source {
        println!("  training images from {source}: {count}");
    }
}

/// The network, initialised as `args` say; returns it with its variables and a sentence saying
/// where its weights came from (for the card).
fn build_model(
    args: &TrainArgs,
    num_classes: usize,
    device: &Device,
) -> Result<(VarMap, ResNet50, String)> {
    let varmap = VarMap::new();
    let model = ResNet50::new(
        VarBuilder::from_varmap(&varmap, DType::F32, device),
        num_classes,
    )?;
    init::initialize(&varmap, args.seed)?;
    if args.zero_init_residual {
        init::zero_init_residual(&varmap)?;
    }
    let initialization = match &args.init {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --init {}", path.display()))?;
            let head = Checkpoint::from_bytes(&bytes, device)?.load_into(&varmap, true)?;
            format!(
                "{} (sha256 {}), head {head:?}",
                path.display(),
                sha256_hex(&bytes)
            )
        }
        None => format!(
            "from scratch (torchvision init rules{}, seed {})",
            if args.zero_init_residual {
                ", zero-init residual"
            } else {
                ""
            },
            args.seed
        ),
    };
    Ok((varmap, model, initialization))
}

/// A fresh run's state, or the checkpoint's in --out with --resume (whose recipe must be this
/// one's), loaded into `varmap` and `sgd`.
fn start_or_resume(
    args: &TrainArgs,
    varmap: &VarMap,
    sgd: &mut Sgd,
    device: &Device,
) -> Result<TrainState> {
    let mut state = if args.resume {
        let state = load_checkpoint(&args.out, varmap, sgd, device)?;
        if state.args.recipe_key() != args.recipe_key() {
            bail!(
                "--resume: the run in {} used other settings: {:?}",
                args.out.display(),
                state.args
            );
        }
        println!("resuming after epoch {}", state.epochs_completed);
        state
    } else {
        TrainState {
            args: args.clone(),
            epochs_completed: 0,
            optimizer_steps: 0,
            best_epoch: 0,
            best_validation_accuracy: -1.0,
            history: Vec::new(),
        }
    };
    state.args = args.clone();
    Ok(state)
}

/// The balanced sampler over the training images, when --balance asks for one.
fn sampler_for(
    args: &TrainArgs,
    images: &CachedImages,
    train_idx: &[usize],
) -> Result<Option<BalancedSampler>> {
    Ok(match args.balance {
        Balance::None => None,
        balance @ (Balance::ClassSource | Balance::ClassSourceGroup) => {
            let labels: Vec<usize> = train_idx.iter().map(|&i| images.samples[i].label).collect();
            let sources: Vec<&str> = train_idx
                .iter()
                .map(|&i| images.samples[i].provenance.source.as_str())
                .collect();
            Some(BalancedSampler::new(
                &labels,
                &sources,
                balance,
                args.source_power,
            )?)
        }
    })
}

pub fn run(args: &TrainArgs) -> Result<ModelCard> {
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!("--val-fraction must be in [0, 1)");
    }
    let device = select(args.device)?;
    let preprocessing = args.preprocessing();
    let caching = Preprocessing {
        crop: args.cache_side(),
        ..preprocessing.clone()
    };
    let data = prepare_data(args, &caching)?;
    println!("device: {device:?}");
    print_split(&data);
    let PreparedData {
        images,
        train: train_idx,
        validation: val_idx,
    } = data;
    let num_classes = images.classes.len();

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (varmap, model, initialization) = build_model(args, num_classes, &device)?;
    let sgd_config = SgdConfig {
        momentum: args.momentum,
        dampening: 0.0,
        weight_decay: args.weight_decay,
        nesterov: args.nesterov,
    };
    let mut sgd = Sgd::new(trainable(named_vars(&varmap)?, args.freeze), sgd_config);

    let mut state = start_or_resume(args, &varmap, &mut sgd, &device)?;

    let pass = Pass {
        model: &model,
        images: &images,
        preprocessing: &preprocessing,
        device: &device,
        batch_size: args.batch_size,
        micro_batch: if args.micro_batch == 0 {
            args.batch_size
        } else {
            args.micro_batch
        },
        cache_side: args.cache_side() as usize,
    };
    let augmentation = args.augmentation();
    let sampler = sampler_for(args, &images, &train_idx)?;
    let samples_per_epoch = match args.samples_per_epoch {
        0 => train_idx.len(),
        n => n,
    };
    for epoch in state.epochs_completed..args.epochs {
        let started = Instant::now();
        let lr = warm_up(
            step_lr(args.lr, args.lr_step, args.lr_gamma, epoch),
            args.warmup_epochs,
            epoch,
        );
        let order: Vec<usize> = epoch_order(
            train_idx.len(),
            sampler.as_ref(),
            samples_per_epoch,
            &mut StdRng::seed_from_u64(args.seed.wrapping_add(epoch as u64 + 1)),
        )
        .into_iter()
        .map(|position| train_idx[position])
        .collect();
        let bar = progress_bar(order.len(), format!("epoch {}/{}", epoch + 1, args.epochs));
        let (train_loss, train_accuracy, rate) = pass.run(
            &order,
            Some((&mut sgd, lr, &augmentation, args.seed, epoch)),
            &bar,
        )?;
        bar.finish();
        let bar = progress_bar(val_idx.len(), "validation".into());
        let (validation_loss, validation_accuracy, _) = pass.run(&val_idx, None, &bar)?;
        bar.finish_and_clear();
        state.optimizer_steps += order.len().div_ceil(args.batch_size) as i64;
        let metrics = EpochMetrics {
            epoch: epoch + 1,
            lr,
            train_loss,
            train_accuracy,
            validation_loss,
            validation_accuracy,
            images_per_second: rate,
            seconds: started.elapsed().as_secs_f64(),
        };
        println!(
            "epoch {:>3}  lr {lr:.4}  train loss {train_loss:.4} acc {train_accuracy:.4}  val loss {validation_loss:.4} acc {validation_accuracy:.4}  {rate:.2} img/s",
            epoch + 1
        );
        if validation_accuracy > state.best_validation_accuracy {
            state.best_validation_accuracy = validation_accuracy;
            state.best_epoch = epoch + 1;
            pneumoscope::checkpoint::save(
                &varmap,
                &args.out.join(BEST_FILE),
                DType::F32,
                state.optimizer_steps,
            )?;
        }
        state.history.push(metrics);
        state.epochs_completed = epoch + 1;
        save_checkpoint(&args.out, &varmap, &sgd, &state)?;
        write_metrics_csv(&args.out, &state.history)?;
        draw_curves(&args.out, &state.history);
    }
    // Also after a resume that had no epoch left to run: the export path redraws the figure.
    draw_curves(&args.out, &state.history);
    let card = export(args, &images, &state, initialization, &device)?;
    println!(
        "best validation accuracy {:.4} at epoch {}; wrote {} and {}",
        state.best_validation_accuracy,
        state.best_epoch,
        args.out.join(MODEL_FILE).display(),
        args.out.join(CARD_FILE).display()
    );
    Ok(card)
}

#[cfg(test)]
mod tests {
    use super::micro_batches;

    #[test]
    fn micro_batches_keep_order_and_never_leave_one_image_alone() {
        for n in 2..70 {
            let batch: Vec<usize> = (0..n).collect();
            for max_len in 1..20 {
                let chunks = micro_batches(&batch, max_len);
                assert_eq!(chunks.concat(), batch, "n {n} max {max_len}");
                assert!(chunks.iter().all(|c| c.len() >= 2), "n {n} max {max_len}");
                let longest = chunks.iter().map(|c| c.len()).max().unwrap();
                let shortest = chunks.iter().map(|c| c.len()).min().unwrap();
                assert!(longest - shortest <= 1, "n {n} max {max_len}");
                assert!(longest <= max_len.max(2) + 1, "n {n} max {max_len}");
                if max_len >= 3 {
                    assert!(longest <= max_len, "n {n} max {max_len}");
                }
            }
        }
        // The case that used to leave one image: 33 in chunks of 16.
        let batch: Vec<usize> = (0..33).collect();
        let sizes: Vec<usize> = micro_batches(&batch, 16).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [11, 11, 11]);
    }
}

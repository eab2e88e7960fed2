//! `trainer train`: the seed paper's recipe (SGD momentum 0.9, lr 0.1 with StepLR(10, 0.1),
//! batch 32, 20 epochs, 85:15 stratified split, best-validation checkpoint), resumable, with
//! everything a run needs to be reproduced recorded in the model card.

mod args;
mod consistency;
mod export;
mod mixstyle;
mod state;

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use pneumoscope::card::{sha256_hex, ModelCard};
use pneumoscope::checkpoint::named_vars;
use pneumoscope::stage_times::Stopwatch;
use pneumoscope::{init, Checkpoint, Preprocessing, ResNet50};
use rand::{rngs::StdRng, SeedableRng};

use crate::augment::Augmentation;
use crate::data::{
    class_counts, load, normalized_batch, source_counts, stratified_split, CachedImages,
    ImageFolder,
};
use crate::device::select;
use crate::optim::{step_lr, warm_up, Sgd, SgdConfig};
use crate::sampler::{epoch_order, Balance, BalancedSampler};

pub use args::{FreezeUpTo, TrainArgs};
use consistency::{jensen_shannon, FramingConsistency};
use export::{draw_curves, export, write_metrics_csv};
use mixstyle::MixStyle;
pub use state::EpochMetrics;
use state::{load_checkpoint, save_checkpoint, TrainState};

pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
pub const MODEL_FILE: &str = "model.safetensors";
pub const CARD_FILE: &str = "model.json";
pub const METRICS_FILE: &str = "metrics.csv";

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
    /// Training draws are also shown reframed, and the answers asked to agree.
    consistency: Option<FramingConsistency>,
    /// In training, early feature maps take styles mixed between images.
    mixstyle: Option<MixStyle>,
}

impl Pass<'_> {
    /// The network's inputs for `indices`, each (3, crop, crop) before normalising;
    /// `first_draw` numbers the first one's augmentation draw within the epoch (an image drawn
    /// twice is augmented twice, differently).
    fn views(
        &self,
        indices: &[usize],
        augment: Option<(&Augmentation, u64, usize)>,
        first_draw: usize,
    ) -> Vec<Vec<f32>> {
        let side = self.preprocessing.crop as usize;
        let centre_crop = Augmentation::default();
        indices
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
            .collect()
    }

    /// The mean loss on `indices` and their logits (n, classes). With framing consistency (in
    /// training), the draws and the same reframed go through the network as one batch (2n, 3,
    /// crop, crop): cross-entropy on both, plus the weighted Jensen-Shannon divergence between
    /// the two answers.
    fn loss(
        &self,
        indices: &[usize],
        augment: Option<(&Augmentation, u64, usize)>,
        first_draw: usize,
        training: bool,
    ) -> Result<(Tensor, Tensor)> {
        let side = self.preprocessing.crop as usize;
        let mut views = self.views(indices, augment, first_draw);
        let mut shown = indices.to_vec();
        let consistency = match (self.consistency, augment) {
            (Some(consistency), Some((_, seed, epoch))) => {
                views.extend(consistency.reframed(&views, side, seed, epoch, first_draw));
                shown.extend_from_slice(indices);
                Some(consistency)
            }
            _ => None,
        };
        let x = normalized_batch(views, side, self.preprocessing, self.device)?;
        let output = match (self.mixstyle, augment) {
            (Some(mixstyle), Some((_, seed, epoch))) if training => {
                let mut rng = MixStyle::rng(seed, epoch, first_draw);
                let mut mix = |index, x| mixstyle.apply(index, x, &mut rng);
                let watch = &mut Stopwatch::off();
                self.model.forward_between(&x, training, watch, &mut mix)?
            }
            _ => self.model.forward_t(&x, training)?,
        };
        let mut loss = candle_nn::loss::cross_entropy(&output.logits, &self.labels(&shown)?)?;
        let n = indices.len();
        let logits = output.logits.narrow(0, 0, n)?;
        if let Some(consistency) = consistency {
            let disagreement = jensen_shannon(&logits, &output.logits.narrow(0, n, n)?)?;
            loss = (loss + (disagreement * f64::from(consistency.weight))?)?;
        }
        Ok((loss, logits))
    }

    fn label_ids(&self, indices: &[usize]) -> Vec<u32> {
        indices
            .iter()
            .map(|&i| self.images.samples[i].label as u32)
            .collect()
    }

    fn labels(&self, indices: &[usize]) -> Result<Tensor> {
        Ok(Tensor::new(self.label_ids(indices), self.device)?)
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
                let (loss, logits) = self.loss(micro, augment, draw, train.is_some())?;
                draw += micro.len();
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
                let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
                let truth = self.label_ids(micro);
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
    images.record.train_per_source = source_counts(&images.samples, &train, args.balance_batches);
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
    classes: &[String],
    device: &Device,
) -> Result<(VarMap, ResNet50, String)> {
    let varmap = VarMap::new();
    let model = ResNet50::new(
        VarBuilder::from_varmap(&varmap, DType::F32, device),
        classes.len(),
    )?;
    init::initialize(&varmap, args.seed)?;
    if args.zero_init_residual {
        init::zero_init_residual(&varmap)?;
    }
    let initialization = match &args.init {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading --init {}", path.display()))?;
            let checkpoint = Checkpoint::from_bytes(&bytes, device)?;
            let (checkpoint, matched) = match &args.init_head_classes {
                Some(init_classes) => {
                    let (checkpoint, kept) =
                        checkpoint.with_head_for(init_classes, classes, &varmap)?;
                    let matched =
                        format!(" (rows matched by class name: {kept:?} kept, the rest fresh)");
                    (checkpoint, matched)
                }
                None => (checkpoint, String::new()),
            };
            let head = checkpoint.load_into(&varmap, true)?;
            format!(
                "{} (sha256 {}), head {head:?}{matched}",
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
            let groups: Vec<String> = train_idx
                .iter()
                .map(|&i| images.samples[i].provenance.group(args.balance_batches))
                .collect();
            let sources: Vec<&str> = groups.iter().map(String::as_str).collect();
            Some(BalancedSampler::new(
                &labels,
                &sources,
                balance,
                args.source_power,
            )?)
        }
    })
}

/// The training images epoch `epoch` visits, in order (seeded by --seed and the epoch).
fn epoch_images(
    args: &TrainArgs,
    sampler: Option<&BalancedSampler>,
    train_idx: &[usize],
    samples_per_epoch: usize,
    epoch: usize,
) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(epoch as u64 + 1));
    epoch_order(train_idx.len(), sampler, samples_per_epoch, &mut rng)
        .into_iter()
        .map(|position| train_idx[position])
        .collect()
}

/// Keeps the best weights so far, then the resumable checkpoint, metrics and curves.
fn record_epoch(
    args: &TrainArgs,
    varmap: &VarMap,
    sgd: &Sgd,
    state: &mut TrainState,
    metrics: EpochMetrics,
) -> Result<()> {
    if metrics.validation_accuracy > state.best_validation_accuracy {
        state.best_validation_accuracy = metrics.validation_accuracy;
        state.best_epoch = metrics.epoch;
        pneumoscope::checkpoint::save(
            varmap,
            &args.out.join(BEST_FILE),
            DType::F32,
            state.optimizer_steps,
        )?;
    }
    state.epochs_completed = metrics.epoch;
    state.history.push(metrics);
    save_checkpoint(&args.out, varmap, sgd, state)?;
    write_metrics_csv(&args.out, &state.history)?;
    draw_curves(&args.out, &state.history);
    Ok(())
}

pub fn run(args: &TrainArgs) -> Result<ModelCard> {
    if args.epochs == 0 || args.batch_size == 0 {
        bail!("--epochs and --batch-size must be at least 1");
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!("--val-fraction must be in [0, 1)");
    }
    if !(args.framing_consistency >= 0.0 && (1.0..=4.0).contains(&args.framing_zoom)) {
        bail!("--framing-consistency must be at least 0 and --framing-zoom in [1, 4]");
    }
    if !((0.0..=1.0).contains(&args.mixstyle) && (1..=3).contains(&args.mixstyle_groups)) {
        bail!("--mixstyle must be in [0, 1] and --mixstyle-groups in 1..=3");
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

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let (varmap, model, initialization) = build_model(args, &images.classes, &device)?;
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
        micro_batch: args.micro_batch_size(),
        cache_side: args.cache_side() as usize,
        consistency: args.framing_consistency(),
        mixstyle: args.mixstyle(),
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
        let order = epoch_images(args, sampler.as_ref(), &train_idx, samples_per_epoch, epoch);
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
        record_epoch(args, &varmap, &sgd, &mut state, metrics)?;
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

//! ResNet50 (torchvision's `resnet50`, v1.5: the stride sits on the 3x3 convolution) with
//! torchvision's parameter names, so public checkpoints load as they are.

use std::sync::Arc;

use candle_core::{Module, ModuleT, Result, Tensor, Var, D};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, Linear, VarBuilder};

use crate::ops::batch_norm::batch_norm_train;
use crate::ops::conv::conv2d_train;
use crate::ops::conv_infer::conv2d_infer;
use crate::ops::conv_int8::Int8Weight;
use crate::ops::max_pool::stem_max_pool;
use crate::ops::on_pool;
use crate::ops::residual::add_relu;
use crate::ops::stem_infer::InferenceStem;
use crate::stage_times::Stopwatch;

/// Width of the pooled feature vector that feeds the classifier head.
pub const FEATURE_DIM: usize = 2048;
/// Channels of `layer2`'s output.
pub const LAYER2_CHANNELS: usize = 512;
/// Bottleneck blocks per stage (`layer1` .. `layer4`).
pub const BLOCKS_PER_STAGE: [usize; 4] = [3, 4, 6, 3];
const LAYER_NAMES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];
const EXPANSION: usize = 4;
const BN_EPS: f64 = 1e-5;
/// PyTorch's default: `running = (1 - momentum) * running + momentum * batch_stat`.
const BN_MOMENTUM: f64 = 0.1;

/// What one forward pass yields: the head's logits and the two views of the backbone that the heat
/// map and the out-of-distribution gate need.
#[derive(Debug, Clone)]
pub struct ResNetOutput {
    /// (N, classes)
    pub logits: Tensor,
    /// (N, 2048): global-average-pooled `feature_map`.
    pub features: Tensor,
    /// (N, 2048, H/32, W/32): the output of `layer4`.
    pub feature_map: Tensor,
    /// (N, 512, H/8, W/8): the output of `layer2` (the gate summarises it by `channel_stats`).
    pub layer2_map: Tensor,
}

/// (N, C, H, W) -> (N, 2C): each channel's mean over the image, then its standard deviation.
pub fn channel_stats(x: &Tensor) -> Result<Tensor> {
    let x = x.flatten_from(2)?; // (N, C, HW)
    let mean = x.mean_keepdim(D::Minus1)?; // (N, C, 1)
    let std = x.broadcast_sub(&mean)?.sqr()?.mean(D::Minus1)?.sqrt()?; // (N, C)
    Tensor::cat(&[mean.squeeze(D::Minus1)?, std], 1)
}

fn conv2d(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv2d> {
    let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(weight, None, config))
}

fn batch_norm(vb: VarBuilder, channels: usize) -> Result<BatchNorm> {
    let config = BatchNormConfig {
        eps: BN_EPS,
        remove_mean: true,
        affine: true,
        momentum: BN_MOMENTUM,
    };
    candle_nn::batch_norm(channels, config, vb)
}

/// Conv + BN, the unit every part of the network is made of.
#[derive(Debug, Clone)]
enum ConvBn {
    Separate {
        conv: Conv2d,
        bn: BatchNorm,
    },
    /// The convolution with the eval-mode batch norm folded into its weight and bias, once
    /// `fold_batch_norm` has run: inference then skips four full-size passes per layer, and
    /// the unfolded weights are no longer held. `int8`: the folded weight's codes, once
    /// `use_int8_products` has run.
    Folded {
        conv: Conv2d,
        int8: Option<Arc<Int8Weight>>,
    },
}

impl ConvBn {
    fn new(conv: Conv2d, bn: BatchNorm) -> Self {
        Self::Separate { conv, bn }
    }

    /// w' = w * g / sqrt(var + eps), b' = beta - mean * g / sqrt(var + eps), per output channel.
    fn fold_batch_norm(&mut self) -> Result<()> {
        let Self::Separate { conv, bn } = self else {
            return Ok(());
        };
        let Some((gamma, beta)) = bn.weight_and_bias() else {
            candle_core::bail!("batch norm without affine parameters cannot be folded")
        };
        let scale = (gamma / (bn.running_var() + bn.eps())?.sqrt()?)?;
        let weight = conv
            .weight()
            .broadcast_mul(&scale.reshape(((), 1, 1, 1))?)?;
        let bias = (beta - (bn.running_mean() * &scale)?)?;
        *self = Self::Folded {
            conv: Conv2d::new(weight, Some(bias), *conv.config()),
            int8: None,
        };
        Ok(())
    }

    /// Quantizes the folded weight for int8 products (see `ops::conv_int8`).
    fn use_int8_products(&mut self) -> Result<()> {
        let Self::Folded { conv, int8 } = self else {
            candle_core::bail!("int8 products need folded batch norms")
        };
        *int8 = Some(Arc::new(Int8Weight::of_conv(conv)?));
        Ok(())
    }

    /// Conv, batch norm, then a ReLU if `relu` (fused into the batch norm when training).
    fn forward_t(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        match self {
            Self::Folded { .. } if train => {
                candle_core::bail!("a model with folded batch norms is for inference only")
            }
            Self::Folded { conv, int8 } => conv2d_infer(x, conv, int8.as_ref(), None, relu),
            Self::Separate { conv, bn } if train => {
                batch_norm_train(bn, &conv2d_train(x, conv)?, relu)
            }
            Self::Separate { conv, bn } => {
                let y = bn.forward_t(&conv.forward(x)?, false)?;
                if relu {
                    y.relu()
                } else {
                    Ok(y)
                }
            }
        }
    }

    /// relu(conv-bn(x) + identity), the bottleneck's last unit, in one pass once folded.
    fn forward_residual(&self, x: &Tensor, identity: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            Self::Folded { conv, int8 } if !train => {
                conv2d_infer(x, conv, int8.as_ref(), Some(identity), true)
            }
            _ => add_relu(&self.forward_t(x, train, false)?, identity),
        }
    }
}

#[derive(Debug, Clone)]
struct Bottleneck {
    reduce: ConvBn,
    spatial: ConvBn,
    expand: ConvBn,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    fn new(vb: VarBuilder, c_in: usize, width: usize, stride: usize) -> Result<Self> {
        let c_out = width * EXPANSION;
        let unit = |conv_name: &str, bn_name: &str, cin, cout, k, s, p| -> Result<ConvBn> {
            Ok(ConvBn::new(
                conv2d(vb.pp(conv_name), cin, cout, k, s, p)?,
                batch_norm(vb.pp(bn_name), cout)?,
            ))
        };
        let downsample = if stride != 1 || c_in != c_out {
            Some(unit(
                "downsample.0",
                "downsample.1",
                c_in,
                c_out,
                1,
                stride,
                0,
            )?)
        } else {
            None
        };
        Ok(Self {
            reduce: unit("conv1", "bn1", c_in, width, 1, 1, 0)?,
            spatial: unit("conv2", "bn2", width, width, 3, stride, 1)?,
            expand: unit("conv3", "bn3", width, c_out, 1, 1, 0)?,
            downsample,
        })
    }

    /// (N, C_in, H, W) -> (N, 4 * width, H / stride, W / stride)
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.reduce.forward_t(x, train, true)?;
        let out = self.spatial.forward_t(&out, train, true)?;
        let identity = match &self.downsample {
            Some(downsample) => downsample.forward_t(x, train, false)?,
            None => x.clone(),
        };
        self.expand.forward_residual(&out, &identity, train)
    }
}

/// ResNet50 with any number of output classes.
#[derive(Debug, Clone)]
pub struct ResNet50 {
    stem: ConvBn,
    /// The stem in inference (fixed-order sums, one channel for grey images), once
    /// `use_inference_stem` has run.
    inference_stem: Option<Arc<InferenceStem>>,
    stages: Vec<Vec<Bottleneck>>,
    fc: Linear,
    num_classes: usize,
}

impl ResNet50 {
    /// Builds the network from `vb`, reading (or, on a `VarMap`, creating) every tensor under
    /// torchvision's name.
    pub fn new(vb: VarBuilder, num_classes: usize) -> Result<Self> {
        let stem = ConvBn::new(
            conv2d(vb.pp("conv1"), 3, 64, 7, 2, 3)?,
            batch_norm(vb.pp("bn1"), 64)?,
        );
        let mut c_in = 64;
        let mut stages = Vec::with_capacity(BLOCKS_PER_STAGE.len());
        for (stage, &blocks) in BLOCKS_PER_STAGE.iter().enumerate() {
            let width = 64 << stage;
            let vb_stage = vb.pp(LAYER_NAMES[stage]);
            let mut stage_blocks = Vec::with_capacity(blocks);
            for block in 0..blocks {
                let stride = if block == 0 && stage > 0 { 2 } else { 1 };
                stage_blocks.push(Bottleneck::new(vb_stage.pp(block), c_in, width, stride)?);
                c_in = width * EXPANSION;
            }
            stages.push(stage_blocks);
        }
        let vb_fc = vb.pp("fc");
        let fc = Linear::new(
            vb_fc.get((num_classes, FEATURE_DIM), "weight")?,
            Some(vb_fc.get(num_classes, "bias")?),
        );
        Ok(Self {
            stem,
            inference_stem: None,
            stages,
            fc,
            num_classes,
        })
    }

    /// Folds every batch norm's running statistics into its convolution, for inference: the same
    /// eval-mode outputs (to float rounding) in fewer passes. The model can no longer train.
    pub fn fold_batch_norms(&mut self) -> Result<()> {
        self.stem.fold_batch_norm()?;
        self.block_units_mut()
            .try_for_each(|unit| unit.fold_batch_norm())
    }

    /// Every convolution after the stem computes its product in int8 from now on (see
    /// `ops::conv_int8`); needs `fold_batch_norms` first. The stem's input has negative values
    /// and stays in f32.
    pub fn use_int8_products(&mut self) -> Result<()> {
        self.block_units_mut()
            .try_for_each(|unit| unit.use_int8_products())
    }

    /// In inference the stem sums in a fixed order from now on, the same bits natively and in
    /// the page, and reads only the first channel of a grey image (`ops::stem_infer`), given
    /// the mean and std the input was normalised with; needs `fold_batch_norms` first.
    pub fn use_inference_stem(&mut self, mean: [f32; 3], std: [f32; 3]) -> Result<()> {
        let ConvBn::Folded { conv, .. } = &self.stem else {
            candle_core::bail!("the inference stem needs folded batch norms")
        };
        self.inference_stem = Some(Arc::new(InferenceStem::new(conv, mean, std)?));
        Ok(())
    }

    /// relu(stem(x)), by the inference stem when there is one and no gradient is asked.
    /// (N, 3, H, W) -> (N, 64, H/2, W/2)
    fn stem_forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        if let Some(stem) = self.inference_stem.as_ref().filter(|_| !train) {
            if let Some(y) = stem.forward(x)? {
                return Ok(y);
            }
        }
        self.stem.forward_t(x, train, true)
    }

    /// Every conv + batch norm of the bottleneck blocks (all but the stem's).
    fn block_units_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.stages.iter_mut().flatten().flat_map(|block| {
            [
                Some(&mut block.reduce),
                Some(&mut block.spatial),
                Some(&mut block.expand),
                block.downsample.as_mut(),
            ]
            .into_iter()
            .flatten()
        })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The head's (classes, 2048) weight matrix, which turns `feature_map` into a class
    /// activation map.
    pub fn head_weight(&self) -> &Tensor {
        self.fc.weight()
    }

    /// The gradient of `class`'s score (logit) with respect to `layer2`'s output, for the
    /// attribution maps on that layer (`cam::layer_cam`, `cam::grad_cam`). Runs layer3, layer4
    /// and the head again in eval mode with autograd (the fused inference ops pass the gradient
    /// to their inputs; the weights stay frozen).
    /// `layer2_map` (512, H/8, W/8) of one image -> the same shape
    pub fn layer2_gradient(&self, layer2_map: &Tensor, class: usize) -> Result<Tensor> {
        if class >= self.num_classes {
            candle_core::bail!("class {class} of a {}-class model", self.num_classes);
        }
        let activation = Var::from_tensor(&layer2_map.unsqueeze(0)?)?; // (1, 512, h, w)
        let mut x = activation.as_tensor().clone();
        for block in self.stages[2..].iter().flatten() {
            x = block.forward_t(&x, false)?;
        }
        let features = x.mean(D::Minus1)?.mean(D::Minus1)?; // (1, 2048)
        let score = self.fc.forward(&features)?.get(0)?.get(class)?;
        let grads = score.backward()?;
        match grads.get(activation.as_tensor()) {
            Some(gradient) => gradient.squeeze(0),
            None => candle_core::bail!("the class score does not depend on layer2"),
        }
    }

    /// (N, 3, H, W) normalised images -> logits (N, classes), features (N, 2048) and the `layer4`
    /// map (N, 2048, H/32, W/32). `train` selects batch statistics (and updates the running ones).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<ResNetOutput> {
        self.forward_timed(x, train, &mut Stopwatch::off())
    }

    /// `forward_t`, charging each layer group's time to `watch` ("stem", "layer1" .. "layer4",
    /// "head"). candle's CPU ops run eagerly, so a lap measures the group's own work.
    pub fn forward_timed(
        &self,
        x: &Tensor,
        train: bool,
        watch: &mut Stopwatch,
    ) -> Result<ResNetOutput> {
        self.forward_between(x, train, watch, &mut |_, x| Ok(x))
    }

    /// `forward_timed` with `between(index, x)` applied to the output of `layer1` (index 0) to
    /// `layer3` (2) before the next group takes it: a training-time feature augmentation such as
    /// MixStyle. `layer2_map` is `layer2`'s output before it.
    pub fn forward_between(
        &self,
        x: &Tensor,
        train: bool,
        watch: &mut Stopwatch,
        between: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<ResNetOutput> {
        // Each group on the thread pool: its ops' forks start from there (`ops::on_pool`).
        let device = x.device().clone();
        let mut x = on_pool(&device, || {
            let x = self.stem_forward(x, train)?; // (N, 64, H/2, W/2)
            stem_max_pool(&x, train) // (N, 64, H/4, W/4)
        })?;
        watch.lap("stem");
        let mut layer2_map = None;
        for (index, stage) in self.stages.iter().enumerate() {
            x = on_pool(&device, || {
                stage
                    .iter()
                    .try_fold(x, |x, block| block.forward_t(&x, train))
            })?;
            if index == 1 {
                layer2_map = Some(x.clone()); // (N, 512, H/8, W/8)
            }
            if index + 1 < self.stages.len() {
                x = between(index, x)?;
            }
            watch.lap(LAYER_NAMES[index]);
        }
        let layer2_map = layer2_map.expect("ResNet50 has a layer2");
        let features = x.mean(D::Minus1)?.mean(D::Minus1)?; // (N, 2048)
        let logits = self.fc.forward(&features)?; // (N, classes)
        watch.lap("head");
        Ok(ResNetOutput {
            logits,
            features,
            feature_map: x,
            layer2_map,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn channel_stats_are_each_channels_mean_then_standard_deviation() {
        // One image, two channels of 2x2: [1, 3, 1, 3] (mean 2, sd 1) and [5, 5, 5, 5] (5, 0).
        let x = Tensor::new(&[1f32, 3., 1., 3., 5., 5., 5., 5.], &Device::Cpu)
            .unwrap()
            .reshape((1, 2, 2, 2))
            .unwrap();
        let stats: Vec<f32> = channel_stats(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(stats, [2.0, 5.0, 1.0, 0.0]);
    }
}

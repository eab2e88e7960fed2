//! MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021): in training, the
//! feature maps after early layer groups take on a style mixed from their own and another image's
//! (each channel's mean and standard deviation over the image: contrast, exposure, texture of a
//! film), while keeping their content. Early layers' channel statistics are where a collection's
//! look lives; mixing them between images of different collections asks the network to answer
//! from content. No parameters; inference is unchanged.

use candle_core::{Result, Tensor, D};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::augment::Augmentation;

/// `--mixstyle` and `--mixstyle-groups`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixStyle {
    /// Chance that a training batch has its styles mixed (after each chosen layer group).
    pub probability: f32,
    /// Mixed after `layer1` .. `layer{groups}`.
    pub groups: usize,
}

/// The paper's Beta(0.1, 0.1): most mixes stay close to one of the two styles.
const ALPHA: f64 = 0.1;
const EPSILON: f64 = 1e-6;
/// Keeps MixStyle's draws apart from the augmentation's own random stream.
const MIX_STREAM: u64 = 0x6d69_7873;

impl MixStyle {
    /// The random stream of one micro-batch, from the run's seed, the epoch and its first draw.
    pub fn rng(seed: u64, epoch: usize, first_draw: usize) -> StdRng {
        Augmentation::rng(seed ^ MIX_STREAM, epoch, first_draw)
    }

    /// `x` (N, C, H, W), the output of layer group `index` (0: `layer1`), with its styles mixed,
    /// or as it is (a group not chosen, a batch not drawn, or a single image).
    pub fn apply(&self, index: usize, x: Tensor, rng: &mut StdRng) -> Result<Tensor> {
        let n = x.dim(0)?;
        if index >= self.groups || n < 2 || rng.random::<f32>() >= self.probability {
            return Ok(x);
        }
        let beta = Beta::new(ALPHA, ALPHA).expect("valid Beta parameters");
        let lambda: Vec<f32> = (0..n).map(|_| beta.sample(rng) as f32).collect();
        let mut partner: Vec<usize> = (0..n).collect();
        partner.shuffle(rng);
        mix_styles(&x, &lambda, &partner)
    }
}

/// Each image i of `x` (N, C, H, W) normalised per channel, then given the mean and standard
/// deviation `lambda[i]` x its own + (1 - `lambda[i]`) x those of image `partner[i]`. The
/// statistics are held constant for the gradient, as in the paper.
pub fn mix_styles(x: &Tensor, lambda: &[f32], partner: &[usize]) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let flat = x.flatten_from(2)?; // (N, C, HW)
    let mean = flat.mean_keepdim(D::Minus1)?.detach(); // (N, C, 1)
    let centred = flat.broadcast_sub(&mean)?;
    let std = (centred.sqr()?.mean_keepdim(D::Minus1)?.detach() + EPSILON)?.sqrt()?; // (N, C, 1)
    let normalised = centred.broadcast_div(&std)?;
    let device = x.device();
    let lambda = Tensor::from_slice(lambda, (n, 1, 1), device)?.to_dtype(x.dtype())?;
    let partner = Tensor::from_vec(
        partner.iter().map(|&p| p as u32).collect::<Vec<_>>(),
        n,
        device,
    )?;
    let mix = |own: &Tensor| -> Result<Tensor> {
        let theirs = own.index_select(&partner, 0)?;
        let keep = own.broadcast_mul(&lambda)?;
        keep + theirs.broadcast_mul(&(1.0 - &lambda)?)?
    };
    let mixed = normalised
        .broadcast_mul(&mix(&std)?)?
        .broadcast_add(&mix(&mean)?)?;
    mixed.reshape((n, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use pneumoscope::model::channel_stats;

    /// Two images of two channels, 2x2 each, with different styles.
    fn two_images() -> Tensor {
        Tensor::new(
            &[
                [[[1f32, 3.], [1., 3.]], [[0., 4.], [4., 0.]]],
                [[[10., 20.], [30., 40.]], [[-1., -2.], [-3., -4.]]],
            ],
            &Device::Cpu,
        )
        .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap()
    }

    fn stats(x: &Tensor) -> Vec<Vec<f32>> {
        channel_stats(x).unwrap().to_vec2().unwrap()
    }

    fn close(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .all(|(x, y)| (x - y).abs() < 1e-3 * (1.0 + y.abs()))
    }

    #[test]
    fn lambda_one_keeps_each_image_and_zero_takes_its_partner_s_style() {
        let x = two_images();
        let kept = mix_styles(&x, &[1.0, 1.0], &[1, 0]).unwrap();
        assert!(max_abs_diff(&kept, &x) < 1e-3);
        let swapped = mix_styles(&x, &[0.0, 0.0], &[1, 0]).unwrap();
        let (before, after) = (stats(&x), stats(&swapped));
        assert!(
            close(&after, &[before[1].clone(), before[0].clone()]),
            "{after:?}"
        );
    }

    #[test]
    fn a_half_mix_takes_the_mean_of_the_two_styles() {
        let x = two_images();
        let before = stats(&x);
        let mixed = stats(&mix_styles(&x, &[0.5, 0.5], &[1, 0]).unwrap());
        let average: Vec<f32> = before[0]
            .iter()
            .zip(&before[1])
            .map(|(a, b)| (a + b) / 2.0)
            .collect();
        // Means and standard deviations mix linearly; both images get the average.
        assert!(close(&mixed, &[average.clone(), average]), "{mixed:?}");
    }

    #[test]
    fn gradients_flow_through_the_content() {
        let x = Var::from_tensor(&two_images()).unwrap();
        let y = mix_styles(x.as_tensor(), &[0.3, 0.8], &[1, 0]).unwrap();
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let grad = grads.get(x.as_tensor()).expect("a gradient for the input");
        assert!(
            grad.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    #[test]
    fn only_chosen_groups_and_drawn_batches_are_mixed_and_the_draws_are_seeded() {
        let x = two_images();
        let always = MixStyle {
            probability: 1.0,
            groups: 2,
        };
        let never = MixStyle {
            probability: 0.0,
            groups: 2,
        };
        let same = |a: &Tensor, b: &Tensor| max_abs_diff(a, b) == 0.0;
        let mut rng = MixStyle::rng(7, 1, 0);
        assert!(same(&always.apply(2, x.clone(), &mut rng).unwrap(), &x));
        assert!(same(&never.apply(0, x.clone(), &mut rng).unwrap(), &x));
        let first = always
            .apply(0, x.clone(), &mut MixStyle::rng(7, 1, 0))
            .unwrap();
        let again = always
            .apply(0, x.clone(), &mut MixStyle::rng(7, 1, 0))
            .unwrap();
        assert!(same(&first, &again) && !same(&first, &x));
        let single = x.narrow(0, 0, 1).unwrap();
        assert!(same(
            &always.apply(0, single.clone(), &mut rng).unwrap(),
            &single
        ));
    }
}

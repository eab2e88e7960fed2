//! Writes a random-weight (formula) ResNet50 and its card into a folder, for testing the web page
//! without a trained model: `cargo run -p pneumoscope-tests --bin write-test-model -- DIR`.
//! Its answers mean nothing; its card says so. It carries an out-of-distribution gate fitted by
//! the trainer's own code on the features of real training radiographs, so the page's warning
//! path can be tested too.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use pneumoscope::card::{sha256_hex, WeightsInfo, ARCHITECTURE};
use pneumoscope::checkpoint::to_safetensors_bytes;
use pneumoscope::ood::{GateFeatures, GateRecord};
use pneumoscope::{Checkpoint, Classifier, ModelCard, Preprocessing};
use pneumoscope_tests::{colour_pattern, formula_weights, shared_data_dir};
use trainer::gate::{fit_mahalanobis, threshold_for_true_accept};

/// Training radiographs per class the gate is fitted on, and the gate's dimensions.
const GATE_IMAGES_PER_CLASS: usize = 8;
const GATE_DIMS: usize = 8;
const TRUE_ACCEPT: f64 = 0.95;

type Error = Box<dyn std::error::Error>;

/// Pooled features of the first images of each class folder, with their class indices.
fn training_features(
    weights: &HashMap<String, Tensor>,
    classes: &[String],
) -> Result<(Vec<Vec<f32>>, Vec<usize>), Error> {
    let classifier = Classifier::new(
        Checkpoint::from_tensors(weights.clone()),
        None,
        &Device::Cpu,
    )?;
    let root = shared_data_dir().join("covid19-kaggle/train");
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(root.join(class))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.sort();
        for file in files.iter().take(GATE_IMAGES_PER_CLASS) {
            features.push(classifier.classify_bytes(&std::fs::read(file)?)?.features);
            labels.push(label);
        }
    }
    Ok((features, labels))
}

/// Images unlike the training data, for the gate's path through the page: a radiograph with its
/// grey levels inverted and a colour pattern.
fn write_unlike_samples(dir: &std::path::Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    let radiograph = shared_data_dir().join("covid19-kaggle/test/Normal/0102.jpeg");
    let mut inverted = image::open(radiograph)?.to_rgb8();
    image::imageops::invert(&mut inverted);
    inverted.save(dir.join("inverted.png"))?;
    colour_pattern(320, 240).save(dir.join("pattern.png"))?;
    Ok(())
}

fn main() -> Result<(), Error> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: write-test-model OUT_DIR")?,
    );
    std::fs::create_dir_all(&out)?;
    let classes: Vec<String> = ["Covid", "Normal", "Viral Pneumonia"]
        .map(String::from)
        .into();
    // The f16 weights are what the page and `trainer predict` load, so the gate is fitted on them.
    let mut tensors: HashMap<String, Tensor> = formula_weights(classes.len())
        .into_iter()
        .map(|(name, tensor)| Ok((name, tensor.to_dtype(DType::F16)?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<_>>()?;
    let (features, labels) = training_features(&tensors, &classes)?;
    let gate = fit_mahalanobis(&features, &labels, classes.len(), GATE_DIMS)?;
    let scores: Vec<f32> = features.iter().map(|f| gate.score(f)).collect();
    // The trainer's rule (95% true accept), here on the fitting images themselves: random
    // features separate little, but the page's warning path needs some image flagged.
    let threshold = threshold_for_true_accept(&scores, TRUE_ACCEPT);
    for tensor in tensors.values_mut() {
        *tensor = tensor.to_dtype(DType::F16)?;
    }
    tensors.extend(gate.to_tensors(&Device::Cpu)?);
    let bytes = to_safetensors_bytes(&tensors)?;
    let card = ModelCard {
        name: "Random-weight test model (meaningless answers)".into(),
        architecture: ARCHITECTURE.into(),
        classes,
        preprocessing: Preprocessing::default(),
        weights: WeightsInfo {
            file: "model.safetensors".into(),
            sha256: sha256_hex(&bytes),
            bytes: bytes.len() as u64,
            dtype: "f16".into(),
        },
        training: None,
        // The formula weights give logits tens apart; this temperature spreads the probabilities
        // so a comparison of them means something (and checks it is applied on both sides).
        temperature: Some(25.0),
        ood_gate: Some(GateRecord {
            method: "Mahalanobis (shared covariance), fitted on 24 training radiographs".into(),
            dims: GATE_DIMS,
            threshold,
            target_true_accept: TRUE_ACCEPT,
            features: GateFeatures::Pooled,
            rejection: Vec::new(),
        }),
        evaluations: Vec::new(),
        quantization: None,
        operating_points: Vec::new(),
        averaged_from: Vec::new(),
        head_narrowed_from: None,
        intended_use: "Testing the software only.".into(),
        limitations: vec!["Random weights: its answers carry no information.".into()],
    };
    write_unlike_samples(&out.join("unlike"))?;
    std::fs::write(out.join("model.safetensors"), &bytes)?;
    std::fs::write(out.join("model.json"), card.to_json())?;
    println!("wrote {}", out.display());
    Ok(())
}

//! Reading and writing ResNet50 weights as safetensors with torchvision's names.

use std::collections::HashMap;
use std::path::Path;

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::error::{Error, Result};
use crate::model::ResNet50;
use crate::quantize;

/// Buffers PyTorch keeps beside each batch norm that the forward pass never reads.
const BATCHES_TRACKED: &str = "num_batches_tracked";
const HEAD_PREFIX: &str = "fc.";

/// The tensors of a ResNet50 safetensors file, in f32, without `num_batches_tracked`.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    tensors: HashMap<String, Tensor>,
    /// The file stored int8 convolution kernels (`quantize`).
    int8_kernels: bool,
}

/// What `Checkpoint::load_into` did with the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadLoad {
    /// The checkpoint's head has the model's class count and was loaded.
    Loaded,
    /// The head was left as initialised: the checkpoint has another class count.
    KeptFresh { checkpoint_classes: usize },
}

fn candle_to_checkpoint_error(err: candle_core::Error) -> Error {
    match err {
        candle_core::Error::WithBacktrace { inner, .. } => candle_to_checkpoint_error(*inner),
        candle_core::Error::CannotFindTensor { path } => Error::MissingTensor { name: path },
        candle_core::Error::UnexpectedShape { msg, expected, got } => Error::ShapeMismatch {
            name: msg.trim_start_matches("shape mismatch for ").to_string(),
            expected: expected.dims().to_vec(),
            found: got.dims().to_vec(),
        },
        other => Error::Checkpoint(other.to_string()),
    }
}

impl Checkpoint {
    /// Parses a safetensors buffer. Float tensors of any width are converted to f32; int8
    /// convolution kernels (`quantize`) are dequantized with their scales.
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::Checkpoint("the weights file is empty".into()));
        }
        let file = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Checkpoint(format!("not a readable safetensors file ({e})")))?;
        let mut tensors = HashMap::with_capacity(file.len());
        let mut int8_kernels = false;
        for (name, view) in file.iter() {
            if name.ends_with(BATCHES_TRACKED) || is_scale_of_int8(&file, name) {
                continue;
            }
            let tensor = match view.dtype() {
                safetensors::Dtype::I8 => {
                    int8_kernels = true;
                    quantize::load_int8(&file, name, device)?
                }
                _ => view.load(device).map_err(|e| {
                    Error::Checkpoint(format!("tensor `{name}` cannot be read ({e})"))
                })?,
            };
            if !tensor.dtype().is_float() {
                return Err(Error::Checkpoint(format!(
                    "tensor `{name}` has dtype {:?}, expected a float type",
                    tensor.dtype()
                )));
            }
            tensors.insert(name.to_string(), tensor.to_dtype(DType::F32)?);
        }
        Ok(Self {
            tensors,
            int8_kernels,
        })
    }

    /// Wraps tensors already in memory (f32, torchvision names).
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Self {
        Self {
            tensors,
            int8_kernels: false,
        }
    }

    pub fn from_file(path: &Path, device: &Device) -> Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Checkpoint(format!("cannot read {}: {e}", path.display())))?;
        Self::from_bytes(&bytes, device)
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    /// Whether the file stored its convolution kernels as int8 (a `trainer quantize` export).
    pub fn has_int8_kernels(&self) -> bool {
        self.int8_kernels
    }

    /// The same (dequantized) tensors taken as a float file's: a classifier built from them
    /// computes its products in f32.
    pub fn as_float(self) -> Self {
        Self {
            int8_kernels: false,
            ..self
        }
    }

    /// The class count, read from the head's weight (classes, 2048).
    pub fn num_classes(&self) -> Result<usize> {
        let name = "fc.weight";
        let weight = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        Ok(weight.dims()[0])
    }

    /// Builds an inference model that reads the tensors directly. Every tensor the model needs must
    /// be present with its exact shape.
    pub fn into_model(self, device: &Device) -> Result<ResNet50> {
        let num_classes = self.num_classes()?;
        let vb = VarBuilder::from_tensors(self.tensors, DType::F32, device);
        ResNet50::new(vb, num_classes).map_err(candle_to_checkpoint_error)
    }

    /// The checkpoint with its head rearranged for a model of `model_classes`, matching rows by
    /// class name: a class the checkpoint also has (`checkpoint_classes`, in its head's order)
    /// keeps its trained row, any other takes the row the model's freshly initialised head
    /// (`fresh`) has for it. Returns the classes that kept a trained row; none shared is an error.
    pub fn with_head_for(
        mut self,
        checkpoint_classes: &[String],
        model_classes: &[String],
        fresh: &VarMap,
    ) -> Result<(Self, Vec<String>)> {
        let source = self.head_rows_for(checkpoint_classes, model_classes)?;
        for (name, var) in named_vars(fresh)? {
            if !name.starts_with(HEAD_PREFIX) {
                continue;
            }
            let head = self.head_rows(&name, &source, Some(var.as_tensor()))?;
            self.tensors.insert(name, head);
        }
        let kept = model_classes
            .iter()
            .zip(&source)
            .filter(|(_, from)| from.is_some())
            .map(|(class, _)| class.clone())
            .collect();
        Ok((self, kept))
    }

    /// The checkpoint with a head for `kept` only, each a class of `checkpoint_classes` (the
    /// head's, in order): the same network answering among fewer classes, as a five-class model
    /// read as the paper's three.
    pub fn with_head_narrowed_to(
        mut self,
        checkpoint_classes: &[String],
        kept: &[String],
    ) -> Result<Self> {
        let source = self.head_rows_for(checkpoint_classes, kept)?;
        if let Some((class, _)) = kept.iter().zip(&source).find(|(_, from)| from.is_none()) {
            return Err(Error::Checkpoint(format!(
                "`{class}` is not one of the head's classes {checkpoint_classes:?}"
            )));
        }
        let names: Vec<String> = self
            .tensors
            .keys()
            .filter(|name| name.starts_with(HEAD_PREFIX))
            .cloned()
            .collect();
        for name in names {
            let head = self.head_rows(&name, &source, None)?;
            self.tensors.insert(name, head);
        }
        Ok(self)
    }

    /// For each of `model_classes`, the row of the head (`checkpoint_classes`, in order) with its
    /// name, if any. Class names that do not match the head's rows, or share none, are errors.
    fn head_rows_for(
        &self,
        checkpoint_classes: &[String],
        model_classes: &[String],
    ) -> Result<Vec<Option<usize>>> {
        let rows = self.num_classes()?;
        if checkpoint_classes.len() != rows {
            return Err(Error::Checkpoint(format!(
                "the head has {rows} rows but {} class names were given for it",
                checkpoint_classes.len()
            )));
        }
        let source: Vec<Option<usize>> = model_classes
            .iter()
            .map(|class| checkpoint_classes.iter().position(|c| c == class))
            .collect();
        if source.iter().all(Option::is_none) {
            return Err(Error::Checkpoint(format!(
                "the head's classes {checkpoint_classes:?} share none with the model's {model_classes:?}"
            )));
        }
        Ok(source)
    }

    /// Head tensor `name` (weight or bias) with its rows taken as `source` says: a trained row,
    /// or `fresh`'s row at that position.
    fn head_rows(
        &self,
        name: &str,
        source: &[Option<usize>],
        fresh: Option<&Tensor>,
    ) -> Result<Tensor> {
        let trained = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.into() })?;
        let rows = source
            .iter()
            .enumerate()
            .map(|(i, from)| match (from, fresh) {
                (Some(j), _) => trained.get(*j),
                (None, Some(fresh)) => fresh.get(i),
                (None, None) => unreachable!("narrowing checks every class has a row"),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&rows, 0)?.to_dtype(DType::F32)?)
    }

    /// Copies the checkpoint into a training model's variables. When `allow_new_head` is set and
    /// the checkpoint's head has another class count (ImageNet's 1000, say), the head is left as
    /// initialised and only the backbone is loaded.
    pub fn load_into(&self, varmap: &VarMap, allow_new_head: bool) -> Result<HeadLoad> {
        let vars = named_vars(varmap)?;
        let head_mismatch = vars.iter().any(|(name, var)| {
            name.starts_with(HEAD_PREFIX)
                && self
                    .tensors
                    .get(name)
                    .is_some_and(|t| t.dims() != var.dims())
        });
        let keep_head = allow_new_head && head_mismatch;
        // Check everything before changing anything, so a bad file leaves the model as it was.
        let mut updates = Vec::with_capacity(vars.len());
        for (name, var) in &vars {
            if keep_head && name.starts_with(HEAD_PREFIX) {
                continue;
            }
            let tensor = self
                .tensors
                .get(name)
                .ok_or_else(|| Error::MissingTensor { name: name.clone() })?;
            if tensor.dims() != var.dims() {
                return Err(Error::ShapeMismatch {
                    name: name.clone(),
                    expected: var.dims().to_vec(),
                    found: tensor.dims().to_vec(),
                });
            }
            updates.push((var, tensor));
        }
        for (var, tensor) in updates {
            var.set(&tensor.to_dtype(var.dtype())?)?;
        }
        Ok(if keep_head {
            HeadLoad::KeptFresh {
                checkpoint_classes: self.num_classes()?,
            }
        } else {
            HeadLoad::Loaded
        })
    }
}

/// The variables of a var map with their names, in sorted name order.
pub fn named_vars(varmap: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = varmap
        .data()
        .lock()
        .map_err(|_| Error::Checkpoint("the variable map lock is poisoned".into()))?;
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(vars)
}

/// The tensors to save for `varmap` in `dtype`, with `num_batches_tracked` (`add_batches_tracked`).
pub fn state_dict(
    varmap: &VarMap,
    dtype: DType,
    batches_tracked: i64,
) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for (name, var) in named_vars(varmap)? {
        tensors.insert(name, var.as_tensor().to_dtype(dtype)?);
    }
    add_batches_tracked(&mut tensors, batches_tracked)?;
    Ok(tensors)
}

/// Adds torchvision's `num_batches_tracked` beside every batch norm (each `running_mean`), so
/// that `load_state_dict(strict=True)` accepts the file.
pub fn add_batches_tracked(tensors: &mut HashMap<String, Tensor>, count: i64) -> Result<()> {
    let mut counters = Vec::new();
    for (name, tensor) in tensors.iter() {
        if let Some(prefix) = name.strip_suffix(".running_mean") {
            let counter = Tensor::new(count, tensor.device())?;
            counters.push((format!("{prefix}.{BATCHES_TRACKED}"), counter));
        }
    }
    tensors.extend(counters);
    Ok(())
}

/// Whether `name` is the scale of an int8 tensor (read with it, not on its own).
fn is_scale_of_int8(file: &safetensors::SafeTensors<'_>, name: &str) -> bool {
    name.strip_suffix(quantize::SCALE_SUFFIX)
        .and_then(|base| file.tensor(base).ok())
        .is_some_and(|base| base.dtype() == safetensors::Dtype::I8)
}

/// Serialises tensors to safetensors bytes.
pub fn to_safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let views: Vec<(&String, &Tensor)> = tensors.iter().collect();
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::Checkpoint(format!("cannot serialise: {e}")))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, then renamed, so a
/// crash at any moment leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Saves the model held by `varmap` as a torchvision-named safetensors file, atomically.
pub fn save(varmap: &VarMap, path: &Path, dtype: DType, batches_tracked: i64) -> Result<()> {
    let bytes = to_safetensors_bytes(&state_dict(varmap, dtype, batches_tracked)?)?;
    write_atomic(path, &bytes)
        .map_err(|e| Error::Checkpoint(format!("cannot write {}: {e}", path.display())))
}

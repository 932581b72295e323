//! Hugging Face GPT-2 weights in and out (`model.safetensors`).
//!
//! Burn's parameter paths are the Hugging Face names except that LayerNorm calls its gain and
//! bias `gamma` and `beta`. Conv1D weights are stored `[in, out]` by Hugging Face and by Burn's
//! `Linear` alike, so no tensor is transposed. Files of `GPT2LMHeadModel` prefix every name with
//! `transformer.`; both forms load. A tied model ignores a `lm_head.weight` in the file.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::model::Gpt2;

/// The Hugging Face name of the parameter at Burn path `path`.
pub fn hf_name(path: &[String]) -> String {
    let mut parts: Vec<&str> = path.iter().map(String::as_str).collect();
    if let Some(last) = parts.last_mut() {
        *last = match *last {
            "gamma" => "weight",
            "beta" => "bias",
            other => other,
        };
    }
    parts.join(".")
}

impl Gpt2 {
    /// Replace every parameter with the tensor of the same Hugging Face name in the
    /// safetensors file at `path` (F32, F16 or BF16; converted to f32).
    pub fn load_safetensors(self, path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| ModelError::WeightFile { path: path.display().to_string(), reason: e.to_string() })?;
        self.load_safetensors_bytes(&bytes).map_err(|e| match e {
            ModelError::WeightFile { reason, .. } => ModelError::WeightFile { path: path.display().to_string(), reason },
            other => other,
        })
    }

    /// [`load_safetensors`](Self::load_safetensors) from bytes in memory. A file written by
    /// [`to_safetensors`](Self::to_safetensors) carries a checksum of its tensor data, which is
    /// verified; files from elsewhere load unverified.
    pub fn load_safetensors_bytes(self, bytes: &[u8]) -> Result<Self, ModelError> {
        let corrupt = |reason: String| ModelError::WeightFile { path: "<bytes>".into(), reason };
        let (_, metadata) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
        let file = SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("not a safetensors file: {e}")))?;
        if let Some(written) = metadata.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
            let found = format!("{:08x}", tensor_checksum(file.tensors().iter().map(|(name, view)| (name.as_str(), view.data()))));
            if *written != found {
                return Err(corrupt(format!(
                    "its tensor data does not match the checksum written with it ({written}, found {found}): the file was altered or damaged after it was saved"
                )));
            }
        }
        let mut loader = Loader { file: &file, path: Vec::new(), error: None };
        let model = self.map(&mut loader);
        match loader.error {
            Some(error) => Err(error),
            None => Ok(model),
        }
    }

    /// Give every parameter an id derived from its name, so that two models of the same config
    /// (e.g. a run and its resumption) have the same ids, which optimizer states are keyed by.
    pub(crate) fn with_stable_ids(self) -> Self {
        self.map(&mut StableIds { path: Vec::new() })
    }

    /// Every parameter as `(Hugging Face name, id, shape)`, in module order.
    pub fn named_params(&self) -> Vec<(String, ParamId, Vec<usize>)> {
        self.collect(false).into_iter().map(|p| (p.name, p.id, p.shape)).collect()
    }

    /// All parameters as `(Hugging Face name, f32 data)`, in module order.
    pub fn named_tensors(&self) -> Vec<(String, TensorData)> {
        self.collect(true).into_iter().map(|p| (p.name, p.data.expect("collected with data").convert::<f32>())).collect()
    }

    fn collect(&self, with_data: bool) -> Vec<NamedParam> {
        let mut collector = Collector { path: Vec::new(), params: Vec::new(), with_data };
        self.visit(&mut collector);
        collector.params
    }

    /// Write the model as a Hugging Face `model.safetensors` (see
    /// [`to_safetensors`](Self::to_safetensors)).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<(), ModelError> {
        let path = path.as_ref();
        let bytes = self.to_safetensors()?;
        std::fs::write(path, bytes).map_err(|e| ModelError::WeightFile { path: path.display().to_string(), reason: e.to_string() })
    }

    /// The model as the bytes of a Hugging Face `model.safetensors` (no prefix, tied head
    /// omitted). The metadata carries a CRC32C of the tensor data (`sophia.crc32c`, over the
    /// tensors in name order), which [`load_safetensors`](Self::load_safetensors) verifies.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, ModelError> {
        let tensors = self.named_tensors();
        let views: BTreeMap<String, safetensors::tensor::TensorView<'_>> = tensors
            .iter()
            .map(|(name, data)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, data.shape().to_vec(), data.as_bytes()).expect("f32 data matches its shape");
                (name.clone(), view)
            })
            .collect();
        let checksum = format!("{:08x}", tensor_checksum(views.iter().map(|(name, view)| (name.as_str(), view.data()))));
        let metadata = Some([("format".to_string(), "pt".to_string()), (CHECKSUM_KEY.to_string(), checksum)].into());
        let bytes = safetensors::serialize(views, metadata).map_err(|e| ModelError::WeightFile { path: "<bytes>".into(), reason: e.to_string() })?;
        Ok(canonical_header(bytes))
    }
}

/// The same safetensors file with its JSON header's keys in sorted order (the metadata map is
/// hashed, so its order differs between calls), padded to the same length: an export of the
/// same weights is the same bytes.
fn canonical_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8-byte length")) as usize;
    let mut header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&bytes[8..8 + len]).expect("safetensors wrote JSON");
    if let Some(metadata) = header.get_mut("__metadata__") {
        let sorted: BTreeMap<String, String> = serde_json::from_value(metadata.take()).expect("string metadata");
        *metadata = serde_json::to_value(sorted).expect("JSON serializes");
    }
    let sorted = serde_json::to_string(&header).expect("JSON serializes");
    // Same keys and values, reordered: never longer than the original (which may carry padding).
    bytes[8..8 + len].fill(b' ');
    bytes[8..8 + sorted.len()].copy_from_slice(sorted.as_bytes());
    bytes
}

/// The metadata key of the tensor-data checksum.
const CHECKSUM_KEY: &str = "sophia.crc32c";

/// CRC32C of the tensors' names and bytes, in name order.
fn tensor_checksum<'a>(tensors: impl Iterator<Item = (&'a str, &'a [u8])>) -> u32 {
    let mut sorted: Vec<(&str, &[u8])> = tensors.collect();
    sorted.sort_by_key(|(name, _)| *name);
    sorted.into_iter().fold(0, |crc, (name, data)| crc32c::crc32c_append(crc32c::crc32c_append(crc, name.as_bytes()), data))
}

fn read_f32(name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, ModelError> {
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(ModelError::UnsupportedDtype { name: name.to_string(), dtype: format!("{other:?}") }),
    };
    Ok(values)
}

struct Loader<'a> {
    file: &'a SafeTensors<'a>,
    path: Vec<String>,
    error: Option<ModelError>,
}

impl Loader<'_> {
    fn tensor(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let prefixed = format!("transformer.{name}");
        let view = self.file.tensor(name).or_else(|_| self.file.tensor(&prefixed)).map_err(|_| ModelError::MissingTensor { name: name.to_string() })?;
        if view.shape() != expected {
            return Err(ModelError::ShapeMismatch { name: name.to_string(), expected: expected.to_vec(), found: view.shape().to_vec() });
        }
        read_f32(name, &view)
    }
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.error.is_some() {
            return param;
        }
        let name = hf_name(&self.path);
        let shape = param.shape().dims::<D>().to_vec();
        match self.tensor(&name, &shape) {
            Ok(values) => param.map(|old| {
                let require_grad = old.is_require_grad();
                let new = Tensor::<D>::from_data(TensorData::new(values, shape), &old.device());
                if require_grad { new.require_grad() } else { new }
            }),
            Err(error) => {
                self.error = Some(error);
                param
            }
        }
    }
}

struct NamedParam {
    name: String,
    id: ParamId,
    shape: Vec<usize>,
    data: Option<TensorData>,
}

struct Collector {
    path: Vec<String>,
    params: Vec<NamedParam>,
    with_data: bool,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shape = param.shape().dims::<D>().to_vec();
        let data = self.with_data.then(|| param.val().into_data());
        self.params.push(NamedParam { name: hf_name(&self.path), id: param.id, shape, data });
    }
}

struct StableIds {
    path: Vec<String>,
}

impl ModuleMapper for StableIds {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        // FNV-1a of the name: stable across runs, platforms and Rust versions.
        let id = hf_name(&self.path).bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3));
        let (_, value, mapper) = param.consume();
        Param::from_mapped_value(ParamId::from(id), value, mapper)
    }
}

//! Hugging Face checkpoint I/O: `config.json` + `model.safetensors` (or a sharded
//! `model.safetensors.index.json`), in HF names and layout, so that transformers and vLLM
//! load what rise writes.
//!
//! Only safetensors are read. Pickled `.bin`/`.pt` files can execute code when loaded, so
//! they are refused with an error that says how to convert them.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use tch::{Device, Kind, Tensor};

use crate::config::{ConfigError, LlamaConfig, MemoryBudget, WeightPlacement};
use crate::llama::Model;

/// Errors loading or saving a checkpoint directory.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// `config.json` is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The model directory does not exist.
    #[error("model directory {0} does not exist")]
    NoDirectory(PathBuf),
    /// Only pickled weights were found.
    #[error(
        "{dir} holds only pickled weights ({files}); rise loads safetensors only, because \
         unpickling can run arbitrary code. Convert once with transformers: \
         `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
    )]
    Pickled {
        /// The model directory.
        dir: PathBuf,
        /// The pickled files found.
        files: String,
    },
    /// No weights at all.
    #[error("{0} has no model.safetensors or model.safetensors.index.json")]
    NoWeights(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause: in the message, and not also reported as the error's source, which
        /// made `{:#}` chains print it twice.
        cause: std::io::Error,
    },
    /// A safetensors file or the shard index is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the architecture needs is absent, or has the wrong shape.
    #[error("{path}: tensor `{name}`: {message}")]
    Tensor {
        /// The file (or directory when the tensor is missing everywhere).
        path: PathBuf,
        /// The HF tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A libtorch call failed.
    #[error("torch: {0}")]
    Torch(#[from] tch::TchError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |cause| CheckpointError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// The safetensors files of a model directory, with the tensors each should hold
/// (`None` for a single unsharded file: whatever it holds).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    if !dir.is_dir() {
        return Err(CheckpointError::NoDirectory(dir.to_path_buf()));
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Format {
                path: index.clone(),
                message: e.to_string(),
            })?;
        let map = value
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| CheckpointError::Format {
                path: index.clone(),
                message: "field `weight_map` missing or not an object".into(),
            })?;
        let mut files: Vec<String> = Vec::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| CheckpointError::Format {
                path: index.clone(),
                message: format!("field `weight_map.{name}` is not a file name"),
            })?;
            // Shard names come from a file we did not write: keep them inside `dir`.
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(CheckpointError::Format {
                    path: index.clone(),
                    message: format!(
                        "field `weight_map.{name}`: shard `{file}` is not a plain file name"
                    ),
                });
            }
            if !files.iter().any(|f| f == file) {
                files.push(file.to_string());
            }
        }
        files.sort();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut pickled = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if [".bin", ".pt", ".pth", ".ckpt"]
                .iter()
                .any(|ext| name.ends_with(ext))
            {
                pickled.push(name);
            }
        }
    }
    pickled.sort();
    if !pickled.is_empty() {
        return Err(CheckpointError::Pickled {
            dir: dir.to_path_buf(),
            files: pickled.join(", "),
        });
    }
    Err(CheckpointError::NoWeights(dir.to_path_buf()))
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F16 => Some(Kind::Half),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

fn tensor_from_view(view: &TensorView<'_>) -> Option<Tensor> {
    let kind = kind_of(view.dtype())?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind).ok()
}

/// Loads `dir` (config + safetensors weights) onto `device`, converting weights to `kind`
/// (`Kind::Float`, `Kind::BFloat16` or `Kind::Half`), within this machine's memory and
/// `RISE_MAX_PARAMS` ([`MemoryBudget::from_env`]); see [`load_within`].
pub fn load(
    dir: &Path,
    device: Device,
    kind: Kind,
) -> Result<(LlamaConfig, Model), CheckpointError> {
    load_within(dir, device, kind, &MemoryBudget::from_env()?)
}

/// Where weights of `kind` on `device` live, for [`LlamaConfig::check_budget`].
pub fn placement(device: Device, kind: Kind) -> WeightPlacement {
    WeightPlacement {
        dtype: match kind {
            Kind::Double => "float64",
            other => dtype_name(other),
        },
        bytes_per_param: kind.elt_size_in_bytes() as u64,
        on_host: device == Device::Cpu,
    }
}

/// [`load`] within an explicit `budget`.
///
/// The config is checked against the budget before any tensor is allocated, so a config
/// with an absurd size is an error naming its fields, not a libtorch panic or an
/// out-of-memory kill. Files are memory-mapped and copied one tensor at a time, so peak host
/// memory is the model in `kind` plus one tensor. Every tensor the architecture needs must be
/// present with the right shape; unknown extra tensors are an error too (they mean the config
/// does not describe these weights), except rotary buffers some exporters include.
pub fn load_within(
    dir: &Path,
    device: Device,
    kind: Kind,
    budget: &MemoryBudget,
) -> Result<(LlamaConfig, Model), CheckpointError> {
    let files = weight_files(dir)?;
    let cfg = LlamaConfig::from_path(dir)?;
    cfg.check_budget(&dir.join("config.json"), placement(device, kind), budget)?;
    let model = Model::try_zeros(&cfg, device, kind)?;
    let vars = model.vs.variables();
    let mut loaded: HashSet<String> = HashSet::new();
    for path in &files {
        let file = File::open(path).map_err(io(path))?;
        // SAFETY: the map is read-only and lives only inside this loop iteration; a
        // concurrent truncation of the file by another process is the usual mmap caveat.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
        let st = SafeTensors::deserialize(&mmap).map_err(|e| CheckpointError::Format {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            if name.ends_with("rotary_emb.inv_freq") {
                continue;
            }
            // Tied checkpoints sometimes also store the shared matrix as `lm_head.weight`.
            if cfg.tie_word_embeddings && name == "lm_head.weight" {
                continue;
            }
            let Some(var) = vars.get(&name) else {
                return Err(CheckpointError::Tensor {
                    path: path.clone(),
                    name,
                    message: "not part of the architecture config.json describes".into(),
                });
            };
            let want: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
            if view.shape() != want.as_slice() {
                return Err(CheckpointError::Tensor {
                    path: path.clone(),
                    name,
                    message: format!(
                        "shape {:?}, but config.json implies {:?}",
                        view.shape(),
                        want
                    ),
                });
            }
            let t = tensor_from_view(&view).ok_or_else(|| CheckpointError::Tensor {
                path: path.clone(),
                name: name.clone(),
                message: format!(
                    "dtype {:?} is not a float type rise loads (f32, bf16, f16)",
                    view.dtype()
                ),
            })?;
            tch::no_grad(|| var.shallow_clone().f_copy_(&t))?;
            loaded.insert(name);
        }
    }
    let mut missing: Vec<&String> = vars.keys().filter(|n| !loaded.contains(*n)).collect();
    missing.sort();
    if let Some(name) = missing.first() {
        return Err(CheckpointError::Tensor {
            path: dir.to_path_buf(),
            name: (*name).clone(),
            message: format!(
                "missing from the checkpoint ({} tensors missing in all)",
                missing.len()
            ),
        });
    }
    Ok((cfg, model))
}

/// A fresh model for `cfg`, initialised as transformers would (normal(0, 0.02)), fp32 on
/// the CPU; identical for identical seeds. Panics if an allocation fails: for a config from
/// a user, use [`init_random_within`].
pub fn init_random(cfg: &LlamaConfig, seed: u64) -> Model {
    Model::random(cfg, seed, Device::Cpu, Kind::Float)
}

/// [`init_random`], after checking `cfg` (read from `origin`) against `budget`, and with a
/// failed allocation as an error.
pub fn init_random_within(
    cfg: &LlamaConfig,
    origin: &Path,
    seed: u64,
    budget: &MemoryBudget,
) -> Result<Model, CheckpointError> {
    cfg.check_budget(origin, placement(Device::Cpu, Kind::Float), budget)?;
    Ok(Model::try_random(cfg, seed, Device::Cpu, Kind::Float)?)
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

/// The model's tensors in HF names, contiguous on the CPU, sorted by name (the tied
/// `lm_head` is not a separate variable, so it is not written).
pub fn named_tensors(model: &Model) -> Vec<(String, Tensor)> {
    let mut out: Vec<(String, Tensor)> = model
        .vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Serialises tensors to safetensors bytes with `{"format": "pt"}` metadata (what
/// transformers checks for).
pub fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Result<Vec<u8>, CheckpointError> {
    let mut data: Vec<(String, Vec<u8>, Dtype, Vec<usize>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            Kind::Uint8 => Dtype::U8,
            k => {
                return Err(CheckpointError::Tensor {
                    path: PathBuf::from("<memory>"),
                    name: name.clone(),
                    message: format!("cannot save kind {k:?}"),
                })
            }
        };
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        data.push((
            name.clone(),
            bytes,
            dtype,
            t.size().iter().map(|&d| d as usize).collect(),
        ));
    }
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, b, d, s)| {
            TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| CheckpointError::Format {
                    path: PathBuf::from(n),
                    message: e.to_string(),
                })
        })
        .collect::<Result<_, _>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Format {
        path: PathBuf::from("<memory>"),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsynced,
/// then renamed over the target, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Saves `model` into `dir` (created if needed) as `config.json` + `model.safetensors`
/// in the parameters' own dtype, the layout `transformers.AutoModelForCausalLM` loads.
pub fn save(dir: &Path, model: &Model, cfg: &LlamaConfig) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tensors = named_tensors(model);
    let kind = tensors.first().map_or(Kind::Float, |(_, t)| t.kind());
    let mut cfg = cfg.clone();
    cfg.torch_dtype = dtype_name(kind).to_string();
    let bytes = safetensors_bytes(&tensors)?;
    write_atomic(&dir.join("model.safetensors"), &bytes)?;
    // A stale shard index would take precedence in other loaders: remove it.
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        std::fs::remove_file(&index).map_err(io(&index))?;
    }
    let text = serde_json::to_string_pretty(&cfg.to_hf_json()).expect("config serializes") + "\n";
    write_atomic(&dir.join("config.json"), text.as_bytes())?;
    Ok(())
}

/// Reads every tensor of one safetensors file into CPU tensors, by name.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let file = File::open(path).map_err(io(path))?;
    // SAFETY: read-only map, dropped before returning.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io(path))?;
    let st = SafeTensors::deserialize(&mmap).map_err(|e| CheckpointError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::I64 => Kind::Int64,
            Dtype::U8 => Kind::Uint8,
            d => kind_of(d).ok_or_else(|| CheckpointError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                message: format!("unsupported dtype {d:?}"),
            })?,
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.insert(name, Tensor::f_from_data_size(view.data(), &shape, kind)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_io_error_is_said_once_in_a_cause_chain() {
        let err = io(Path::new("/nowhere/model.safetensors"))(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ));
        // anyhow's `{:#}` prints the message, then each source: the cause must be in one only.
        let said = err.to_string();
        assert!(said.contains("not found"), "{said}");
        assert!(std::error::Error::source(&err).is_none(), "{said}");
    }

    fn tiny() -> LlamaConfig {
        let mut c = LlamaConfig::tiny(64);
        c.hidden_size = 32;
        c.intermediate_size = 48;
        c.num_hidden_layers = 2;
        c.num_attention_heads = 4;
        c.num_key_value_heads = 2;
        c.head_dim = 8;
        c
    }

    #[test]
    fn save_then_load_is_exact() {
        let cfg = tiny();
        let model = init_random(&cfg, 7);
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &model, &cfg).unwrap();
        let (cfg2, loaded) = load(dir.path(), Device::Cpu, Kind::Float).unwrap();
        assert_eq!(cfg2, cfg);
        for ((n1, a), (n2, b)) in named_tensors(&model)
            .iter()
            .zip(named_tensors(&loaded).iter())
        {
            assert_eq!(n1, n2);
            assert!(a.equal(b), "{n1} differs");
        }
    }

    #[test]
    fn same_seed_same_weights_different_seed_different() {
        let cfg = tiny();
        let a = named_tensors(&init_random(&cfg, 1));
        let b = named_tensors(&init_random(&cfg, 1));
        let c = named_tensors(&init_random(&cfg, 2));
        assert!(a.iter().zip(&b).all(|(x, y)| x.1.equal(&y.1)));
        assert!(!a.iter().zip(&c).all(|(x, y)| x.1.equal(&y.1)));
    }

    #[test]
    fn pickled_weights_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"not really").unwrap();
        let err = load(dir.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pytorch_model.bin") && err.contains("safetensors"),
            "{err}"
        );
    }

    #[test]
    fn empty_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }

    #[test]
    fn wrong_shape_names_the_tensor() {
        let cfg = tiny();
        let model = init_random(&cfg, 3);
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &model, &cfg).unwrap();
        let mut bigger = cfg.clone();
        bigger.intermediate_size = 64;
        bigger.save(dir.path()).unwrap();
        let err = load(dir.path(), Device::Cpu, Kind::Float)
            .unwrap_err()
            .to_string();
        assert!(err.contains("mlp") && err.contains("shape"), "{err}");
    }
}

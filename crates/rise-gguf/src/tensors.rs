//! GGUF tensors → Hugging Face tensors: names, shapes, llama.cpp's Q/K row permutation
//! undone, dequantized by candle one tensor at a time while `model.safetensors` is written.
use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::TensorInfo;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use safetensors::tensor::{Dtype, View};

use crate::hf_config::Architecture;
use crate::GgufError;

/// The dtype of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    /// fp32: every dequantized value exactly (GGML blocks dequantize to f32).
    F32,
    /// bf16: half the size, rounded to nearest even.
    Bf16,
}

impl OutDtype {
    /// The name transformers uses in `config.json`.
    pub fn torch_name(self) -> &'static str {
        match self {
            OutDtype::F32 => "float32",
            OutDtype::Bf16 => "bfloat16",
        }
    }

    fn bytes(self) -> usize {
        match self {
            OutDtype::F32 => 4,
            OutDtype::Bf16 => 2,
        }
    }
}

/// What to do to a tensor's rows after dequantizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rows {
    /// As stored.
    Keep,
    /// Undo llama.cpp's rotary permutation for a projection with this many heads.
    Unpermute(usize),
}

/// One tensor to write: where it comes from in the GGUF, its HF name and row-major shape.
pub(crate) struct Planned<'a> {
    pub gguf_name: String,
    pub hf_name: String,
    pub info: &'a TensorInfo,
    /// Row-major (HF) shape: GGUF lists dimensions fastest-first, candle reverses them.
    pub shape: Vec<usize>,
    pub rows: Rows,
}

/// The Hugging Face name of a `llama` GGUF tensor, and how to fix its rows.
fn hf_name(gguf: &str, arch: &Architecture) -> Option<(String, Rows)> {
    match gguf {
        "token_embd.weight" => return Some(("model.embed_tokens.weight".into(), Rows::Keep)),
        "output_norm.weight" => return Some(("model.norm.weight".into(), Rows::Keep)),
        "output.weight" => return Some(("lm_head.weight".into(), Rows::Keep)),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    if layer >= arch.num_layers {
        return None;
    }
    let (hf, rows) = match part {
        "attn_norm.weight" => ("input_layernorm.weight", Rows::Keep),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", Rows::Keep),
        // llama.cpp's converter permutes q and k rows so that each head's rotary pairs are
        // adjacent (GPT-J style) rather than half a head apart (HF's rotate_half).
        "attn_q.weight" => ("self_attn.q_proj.weight", Rows::Unpermute(arch.num_heads)),
        "attn_k.weight" => (
            "self_attn.k_proj.weight",
            Rows::Unpermute(arch.num_kv_heads),
        ),
        "attn_v.weight" => ("self_attn.v_proj.weight", Rows::Keep),
        "attn_output.weight" => ("self_attn.o_proj.weight", Rows::Keep),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", Rows::Keep),
        "ffn_up.weight" => ("mlp.up_proj.weight", Rows::Keep),
        "ffn_down.weight" => ("mlp.down_proj.weight", Rows::Keep),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}"), rows))
}

/// The HF shape every tensor of the architecture must have.
fn expected_shape(hf: &str, arch: &Architecture) -> Vec<usize> {
    let h = arch.hidden_size;
    let q = arch.num_heads * arch.head_dim;
    let kv = arch.num_kv_heads * arch.head_dim;
    let i = arch.intermediate_size;
    match hf
        .rsplit_once("layers.")
        .map_or(hf, |(_, r)| r.split_once('.').map_or(r, |(_, p)| p))
    {
        "model.embed_tokens.weight" | "lm_head.weight" => vec![arch.vocab_size, h],
        "model.norm.weight" | "input_layernorm.weight" | "post_attention_layernorm.weight" => {
            vec![h]
        }
        "self_attn.q_proj.weight" => vec![q, h],
        "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
        "self_attn.o_proj.weight" => vec![h, q],
        "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![i, h],
        "mlp.down_proj.weight" => vec![h, i],
        _ => vec![],
    }
}

/// Maps every tensor of the file, checking names and shapes; `tied` is true when the file
/// has no `output.weight` (the embedding doubles as the output projection).
pub(crate) fn plan<'a>(
    path: &Path,
    infos: &'a std::collections::HashMap<String, TensorInfo>,
    arch: &Architecture,
) -> Result<(Vec<Planned<'a>>, bool), GgufError> {
    let mut names: Vec<&String> = infos.keys().collect();
    names.sort();
    let mut planned = Vec::with_capacity(names.len());
    for name in names {
        let info = &infos[name];
        let Some((hf, rows)) = hf_name(name, arch) else {
            let why = if name == "rope_freqs.weight" {
                "Llama 3.1 rope scaling stored as per-frequency factors; rise cannot recover \
                 the rope_scaling parameters of config.json from them"
            } else if name.contains("_exps") {
                "a mixture-of-experts tensor; rise's decoder has no experts"
            } else if name.contains(".bias") {
                "a bias; llama-architecture files have none, and rise does not guess where it goes"
            } else {
                "not part of the llama architecture this file declares"
            };
            return Err(GgufError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                message: why.to_string(),
            });
        };
        let shape: Vec<usize> = info.shape.dims().to_vec();
        let want = expected_shape(&hf, arch);
        if shape != want {
            return Err(GgufError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                message: format!(
                    "shape {shape:?} (rows, columns), but the metadata implies {want:?}"
                ),
            });
        }
        planned.push(Planned {
            gguf_name: name.clone(),
            hf_name: hf,
            info,
            shape,
            rows,
        });
    }
    let tied = !infos.contains_key("output.weight");
    let mut required: Vec<String> = vec!["token_embd.weight".into(), "output_norm.weight".into()];
    for l in 0..arch.num_layers {
        for part in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            required.push(format!("blk.{l}.{part}.weight"));
        }
    }
    let missing: Vec<&String> = required
        .iter()
        .filter(|r| !infos.contains_key(*r))
        .collect();
    if let Some(first) = missing.first() {
        return Err(GgufError::Tensor {
            path: path.to_path_buf(),
            name: (*first).clone(),
            message: format!(
                "missing ({} of the {} tensors the metadata implies are missing)",
                missing.len(),
                required.len()
            ),
        });
    }
    Ok((planned, tied))
}

/// The bytes a GGML tensor occupies in the file.
pub(crate) fn stored_bytes(info: &TensorInfo) -> u64 {
    let elems = info.shape.elem_count() as u64;
    let block = info.ggml_dtype.block_size() as u64;
    elems.div_ceil(block) * info.ggml_dtype.type_size() as u64
}

/// llama.cpp's `name` for a GGML type.
pub(crate) fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
}

/// Undoes llama.cpp's `permute(w, n_head)` on a row-major `[rows, cols]` matrix: within each
/// head of `rows / n_head` rows, GGUF row `2j + s` is HF row `s * half + j` (`half` = half
/// the head width), i.e. GGUF interleaves the two rotary halves that HF keeps apart.
pub(crate) fn unpermute_rows(data: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
    let head = rows / n_head;
    let half = head / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let from = (h * head + 2 * j + s) * cols;
                let to = (h * head + s * half + j) * cols;
                out[to..to + cols].copy_from_slice(&data[from..from + cols]);
            }
        }
    }
    out
}

/// Dequantizes one tensor (rows fixed) to f32.
pub(crate) fn dequantize(
    mmap: &[u8],
    data_offset: u64,
    t: &Planned<'_>,
) -> Result<Vec<f32>, candle_core::Error> {
    let mut cursor = Cursor::new(mmap);
    let q = t.info.read(&mut cursor, data_offset, &Device::Cpu)?;
    let values: Vec<f32> = q.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    Ok(match t.rows {
        Rows::Keep => values,
        Rows::Unpermute(n_head) => {
            let rows = t.shape[0];
            let cols = values.len() / rows.max(1);
            unpermute_rows(&values, rows, cols, n_head)
        }
    })
}

/// A tensor that dequantizes itself when safetensors writes it, so that peak memory is one
/// tensor, not the model. A failure is kept in `error` (the `View` trait cannot return one):
/// the data is then zeros and the caller discards the file.
pub(crate) struct LazyTensor<'a> {
    pub planned: &'a Planned<'a>,
    pub mmap: &'a [u8],
    pub data_offset: u64,
    pub dtype: OutDtype,
    pub path: &'a Path,
    pub error: &'a RefCell<Option<GgufError>>,
}

impl View for LazyTensor<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            OutDtype::F32 => Dtype::F32,
            OutDtype::Bf16 => Dtype::BF16,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.planned.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        let len = self.data_len();
        let values = match dequantize(self.mmap, self.data_offset, self.planned) {
            Ok(v) => v,
            Err(e) => {
                let mut slot = self.error.borrow_mut();
                if slot.is_none() {
                    *slot = Some(GgufError::Tensor {
                        path: self.path.to_path_buf(),
                        name: self.planned.gguf_name.clone(),
                        message: format!("cannot dequantize: {}", crate::candle_message(&e)),
                    });
                }
                return Cow::Owned(vec![0u8; len]);
            }
        };
        let mut bytes = Vec::with_capacity(len);
        match self.dtype {
            OutDtype::F32 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
            OutDtype::Bf16 => values
                .iter()
                .for_each(|v| bytes.extend_from_slice(&half::bf16::from_f32(*v).to_le_bytes())),
        }
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        self.planned.shape.iter().product::<usize>() * self.dtype.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), written out directly:
    /// `w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
    fn llama_cpp_permute(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Vec<f32> {
        let half = rows / n_head / 2;
        let mut out = vec![0f32; w.len()];
        // out[h, j, s, :] = w[h, s, j, :]
        for h in 0..n_head {
            for j in 0..half {
                for s in 0..2 {
                    let to = ((h * half + j) * 2 + s) * cols;
                    let from = ((h * 2 + s) * half + j) * cols;
                    out[to..to + cols].copy_from_slice(&w[from..from + cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpps_permutation() {
        for (rows, cols, n_head) in [(8, 3, 2), (12, 2, 3), (64 * 3, 5, 3)] {
            let w: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
            let permuted = llama_cpp_permute(&w, rows, cols, n_head);
            assert_ne!(permuted, w);
            assert_eq!(unpermute_rows(&permuted, rows, cols, n_head), w);
        }
    }
}

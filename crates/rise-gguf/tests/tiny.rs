//! `rise_gguf::import` on tiny GGUF files that hold every GGML type rise supports, checked
//! against gguf-py's dequantization, transformers' un-permutation and transformers' own GGUF
//! tokenizer (tests/fixtures/make_tiny_gguf.py); and the files it must refuse.
#[allow(dead_code)]
#[path = "../../rise-model/tests/common/fixtures.rs"]
mod fixtures;

use std::path::{Path, PathBuf};

use rise_gguf::{import, GgufError, ImportOptions, OutDtype};
use safetensors::tensor::{Dtype, SafeTensors};

fn fixture(name: &str) -> PathBuf {
    fixtures::gguf_fixtures().join(name)
}

fn f32s(view: &safetensors::tensor::TensorView<'_>) -> Vec<f32> {
    match view.dtype() {
        Dtype::F32 => view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => view
            .data()
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

fn tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), f32s(&v)))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn weights_equal_gguf_py_dequantized_and_transformers_unpermuted() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("tiny");
    let summary = import(&fixture("tiny.gguf"), &to, &ImportOptions::default()).unwrap();
    for t in [
        "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
        "Q5_K", "Q6_K",
    ] {
        assert!(
            summary.tensor_types.contains_key(t),
            "the fixture lacks {t}: {:?}",
            summary.tensor_types
        );
    }
    assert!(summary.tied_embeddings);
    let got = tensors(&to.join("model.safetensors"));
    let want = tensors(&fixture("expected.safetensors"));
    let names =
        |v: &[(String, Vec<usize>, Vec<f32>)]| v.iter().map(|t| t.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want));
    for ((name, shape, a), (_, want_shape, b)) in got.iter().zip(&want) {
        assert_eq!(shape, want_shape, "{name}");
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        // candle and numpy may multiply a block's scales in a different order: one rounding.
        assert!(
            worst <= 1e-6 * scale.max(1.0),
            "{name}: max |Δ| = {worst:e} (scale {scale})"
        );
        assert!(scale > 0.0, "{name}: all zeros");
    }

    // bf16: the same values rounded to nearest even.
    let bf = tmp.path().join("bf16");
    let options = ImportOptions {
        dtype: OutDtype::Bf16,
        replace: false,
    };
    import(&fixture("tiny.gguf"), &bf, &options).unwrap();
    for ((name, _, a), (_, _, b)) in tensors(&bf.join("model.safetensors")).iter().zip(&got) {
        let rounded: Vec<f32> = b
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect();
        assert_eq!(a, &rounded, "{name}");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["torch_dtype"], "bfloat16");
}

#[test]
fn config_matches_what_transformers_reads_from_the_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("tiny");
    import(&fixture("tiny.gguf"), &to, &ImportOptions::default()).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(to.join("config.json")).unwrap()).unwrap();
    let want = &reference()["config"];
    for key in [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "max_position_embeddings",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ] {
        assert_eq!(cfg[key], want[key], "config.json `{key}`");
    }
    // The f32 in the file, written as the decimal it stands for.
    assert_eq!(cfg["rms_norm_eps"], 1e-5);
    assert_eq!(want["rms_norm_eps"].as_f64().unwrap() as f32, 1e-5f32);
    assert_eq!(cfg["rope_theta"], 50000.0);
}

#[test]
fn tokenizer_ids_equal_transformers_gguf_tokenizer() {
    let refs = reference();
    for (file, pre) in [("tiny.gguf", "smollm"), ("tiny-llama3.gguf", "llama-bpe")] {
        let tmp = tempfile::tempdir().unwrap();
        let to = tmp.path().join("m");
        let summary = import(&fixture(file), &to, &ImportOptions::default()).unwrap();
        assert_eq!(summary.pre_tokenizer, pre);
        let tok = tokenizers::Tokenizer::from_file(to.join("tokenizer.json")).unwrap();
        for (i, text) in refs["texts"].as_array().unwrap().iter().enumerate() {
            let text = text.as_str().unwrap();
            let got: Vec<u32> = tok.encode(text, true).unwrap().get_ids().to_vec();
            let want: Vec<u32> = refs[file]["ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(got, want, "{file}: ids of {text:?}");
            // Special tokens stay whole and decode back; digits are single tokens (both
            // pre-tokenizers split numbers; llama-bpe in groups of up to three, but this
            // vocabulary has no multi-digit tokens).
            assert_eq!(
                tok.decode(&got, false)
                    .unwrap()
                    .trim_start_matches("<|im_start|>"),
                text.trim_start_matches("<|im_start|>")
            );
        }
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(to.join("tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["bos_token"], "<|im_start|>");
        assert_eq!(cfg["eos_token"], "<|im_end|>");
        assert_eq!(cfg["unk_token"], "<|endoftext|>");
        assert_eq!(cfg["add_bos_token"], file == "tiny-llama3.gguf");
    }
}

/// Imports `file` into `tmp/out` and returns the error, checking nothing was left behind.
fn refused(file: &Path) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("out");
    let err = import(file, &to, &ImportOptions::default()).unwrap_err();
    assert!(!to.exists(), "{}: --to was created", file.display());
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "{}: left {left:?}", file.display());
    let msg = err.to_string();
    assert!(
        msg.contains(&file.display().to_string()),
        "the file is not named: {msg}"
    );
    msg
}

#[test]
fn broken_and_unsupported_files_are_refused_by_name_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("tiny.gguf")).unwrap();

    let msg = refused(&fixture("unknown-type.gguf"));
    assert!(
        msg.contains("IQ2_XXS") && msg.contains("16") && msg.contains("Q4_K"),
        "{msg}"
    );

    let msg = refused(&fixture("wrong-arch.gguf"));
    assert!(
        msg.contains("general.architecture") && msg.contains("\"mamba\"") && msg.contains("llama"),
        "{msg}"
    );

    let magic = tmp.path().join("magic.gguf");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"GGML");
    std::fs::write(&magic, &bytes).unwrap();
    let msg = refused(&magic);
    assert!(
        msg.contains("not a GGUF file") && msg.contains("GGML"),
        "{msg}"
    );

    // Cut inside the header (the token list), inside the tensor data, one byte short, empty.
    for (cut, what) in [
        (3000, "header"),
        (good.len() / 2, "tensor `"),
        (good.len() - 1, "tensor `"),
        (0, "4-byte magic"),
    ] {
        let short = tmp.path().join(format!("short-{cut}.gguf"));
        std::fs::write(&short, &good[..cut]).unwrap();
        let msg = refused(&short);
        assert!(
            msg.contains("truncated") && msg.contains(what),
            "cut at {cut}: {msg}"
        );
    }
}

#[test]
fn a_destination_is_replaced_only_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let to = tmp.path().join("m");
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("keep.txt"), "mine").unwrap();
    let err = import(&fixture("tiny.gguf"), &to, &ImportOptions::default()).unwrap_err();
    assert!(matches!(err, GgufError::Destination { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert!(to.join("keep.txt").exists());
    let options = ImportOptions {
        replace: true,
        ..Default::default()
    };
    import(&fixture("tiny.gguf"), &to, &options).unwrap();
    assert!(!to.join("keep.txt").exists());
    assert!(to.join("model.safetensors").exists());
    // A failed replacement leaves the previous import untouched.
    let err = import(&fixture("wrong-arch.gguf"), &to, &options).unwrap_err();
    assert!(err.to_string().contains("mamba"));
    assert!(to.join("model.safetensors").exists());
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["m"], "no staging or old directories left");
}

//! Parity with Hugging Face transformers on tiny random Llama (GQA, llama3 rope scaling),
//! Mistral (explicit head_dim, sliding window) and Qwen2 (q/k/v bias, tied embeddings).
mod common;

use common::{device, fixture, ids, reference, ARCHS};
use rise_model::checkpoint;
use tch::{Device, Kind, Tensor};

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn logits_match_transformers_within_1e4() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let refs = reference(&dir);
        let expected =
            checkpoint::read_safetensors(&dir.join("reference_logits.safetensors")).unwrap();
        let (_, model) = checkpoint::load(&dir, device(), Kind::Float).unwrap();
        for (i, seq) in refs["ids"].as_array().unwrap().iter().enumerate() {
            let x = Tensor::from_slice(&ids(seq))
                .unsqueeze(0)
                .to_device(device());
            let logits = tch::no_grad(|| model.forward(&x, None, None, None))
                .squeeze_dim(0)
                .to_device(Device::Cpu);
            let want = &expected[&format!("logits.{i}")];
            let diff = max_abs(&logits, want);
            assert!(diff < 1e-4, "{arch} sequence {i}: max |Δlogit| = {diff:e}");
            // Guard against a vacuous pass on near-constant logits.
            assert!(
                want.std(true).double_value(&[]) > 0.1,
                "{arch}: reference logits are degenerate"
            );
        }
    }
}

#[test]
fn kv_cache_decode_matches_full_forward() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let refs = reference(&dir);
        let (cfg, model) = checkpoint::load(&dir, device(), Kind::Float).unwrap();
        let seq = ids(&refs["ids"][2]);
        let full = tch::no_grad(|| {
            model.forward(
                &Tensor::from_slice(&seq).unsqueeze(0).to_device(device()),
                None,
                None,
                None,
            )
        });
        let mut cache =
            rise_model::KvCache::new(&cfg, 1, seq.len(), Kind::Float, device()).unwrap();
        let split = 5;
        let mut parts = vec![tch::no_grad(|| {
            model.forward(
                &Tensor::from_slice(&seq[..split])
                    .unsqueeze(0)
                    .to_device(device()),
                None,
                Some(&mut cache),
                None,
            )
        })];
        for &tok in &seq[split..] {
            parts.push(tch::no_grad(|| {
                model.forward(
                    &Tensor::from_slice(&[tok]).view([1, 1]).to_device(device()),
                    None,
                    Some(&mut cache),
                    None,
                )
            }));
        }
        let stepwise = Tensor::cat(&parts, 1);
        let diff = max_abs(&stepwise, &full);
        assert!(
            diff < 1e-4,
            "{arch}: cached decode differs from full forward by {diff:e}"
        );
    }
}

#[test]
fn greedy_decoding_matches_transformers_token_for_token() {
    for arch in ARCHS {
        let dir = fixture(arch);
        let refs = reference(&dir);
        let (cfg, model) = checkpoint::load(&dir, device(), Kind::Float).unwrap();
        let n_new = refs["greedy_new_tokens"].as_u64().unwrap() as usize;
        for case in refs["greedy"].as_array().unwrap() {
            let prompt = ids(&case["prompt_ids"]);
            let want = ids(&case["tokens"]);
            let mut cache =
                rise_model::KvCache::new(&cfg, 1, prompt.len() + n_new, Kind::Float, device())
                    .unwrap();
            let mut input = Tensor::from_slice(&prompt).unsqueeze(0).to_device(device());
            let mut got = Vec::new();
            for _ in 0..n_new {
                let logits = tch::no_grad(|| model.forward(&input, None, Some(&mut cache), None));
                let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]);
                got.push(next);
                if cfg.eos_token_ids.contains(&(next as u32)) {
                    break;
                }
                input = Tensor::from_slice(&[next]).view([1, 1]).to_device(device());
            }
            assert_eq!(
                got, want,
                "{arch}: greedy continuation of {:?}",
                case["prompt"]
            );
        }
    }
}

#[test]
fn tokenizer_and_chat_template_match_transformers() {
    use rise_data::conversation::{ChatTemplate, Message, Role, TokenizeText};
    let dir = fixture("llama");
    let refs = reference(&dir);
    let tok = rise_model::tokenizer::Tokenizer::from_dir(&dir).unwrap();
    for (i, text) in refs["texts"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = ids(&refs["ids"][i]).into_iter().map(|x| x as u32).collect();
        let got = tok.encode_with(text.as_str().unwrap(), true).unwrap();
        assert_eq!(got, want, "ids of {text}");
        assert_eq!(tok.decode(&got), refs["decoded"][i].as_str().unwrap());
    }
    let chat: Vec<Message> = refs["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let role = match m["role"].as_str().unwrap() {
                "system" => Role::System,
                "user" => Role::User,
                _ => Role::Assistant,
            };
            Message::new(role, m["content"].as_str().unwrap())
        })
        .collect();
    let rendered = tok.chat_template().unwrap().render(&chat, true).unwrap();
    assert_eq!(rendered, refs["chat_rendered"].as_str().unwrap());
}

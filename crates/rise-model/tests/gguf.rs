//! Tiny GGUF fixtures (tests/fixtures/make_tiny_gguf.py) through rise-model: a checkpoint
//! imported by rise-gguf gives transformers' logits for the same GGUF file, and tokenizers
//! saved by transformers 5 (chat template in chat_template.jinja, named ones in
//! additional_chat_templates/) render as `apply_chat_template` does.
mod common;

use common::gguf_fixtures;
use rise_data::conversation::{ChatTemplate, Message, Role, TokenizeText};
use rise_model::checkpoint;
use rise_model::tokenizer::Tokenizer;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

fn reference() -> Value {
    let text = std::fs::read_to_string(gguf_fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn chat(refs: &Value) -> Vec<Message> {
    refs["chat"]
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
        .collect()
}

#[test]
fn a_template_saved_as_chat_template_jinja_renders_like_apply_chat_template() {
    let refs = reference();
    let msgs = chat(&refs);
    assert_eq!(msgs.len(), 4, "a system message and 3 turns");
    let dir = gguf_fixtures().join("saved");
    assert!(
        dir.join("chat_template.jinja").is_file(),
        "transformers 5 writes the template there"
    );
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap();
    assert!(
        !config.contains("chat_template"),
        "and not in tokenizer_config.json"
    );
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let rendered = tok.chat_template().unwrap().render(&msgs, true).unwrap();
    assert_eq!(rendered, refs["saved"]["default"].as_str().unwrap());
    let ids: Vec<u32> = refs["saved"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tok.encode(&rendered), ids);

    let named = gguf_fixtures().join("saved-named");
    assert!(named
        .join("additional_chat_templates/tool_use.jinja")
        .is_file());
    let tok = Tokenizer::from_dir(&named).unwrap();
    assert_eq!(tok.chat_template_names(), ["default", "tool_use"]);
    let rendered = tok.chat_template().unwrap().render(&msgs, true).unwrap();
    assert_eq!(rendered, refs["saved-named"]["default"].as_str().unwrap());
    let tok = Tokenizer::from_dir_with_template(&named, Some("tool_use")).unwrap();
    let rendered = tok.chat_template().unwrap().render(&msgs, true).unwrap();
    assert_eq!(rendered, refs["saved-named"]["tool_use"].as_str().unwrap());
}

#[test]
fn an_imported_gguf_gives_transformers_logits_for_that_gguf() {
    let refs = reference();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    rise_gguf::import(
        &gguf_fixtures().join("tiny.gguf"),
        &dir,
        &rise_gguf::ImportOptions::default(),
    )
    .unwrap();
    let expected =
        checkpoint::read_safetensors(&gguf_fixtures().join("reference_logits.safetensors"))
            .unwrap();
    let (_, model) = checkpoint::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    for (i, ids) in refs["tiny.gguf"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let ids: Vec<i64> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        let text = refs["texts"][i].as_str().unwrap();
        let mine: Vec<i64> = tok
            .encode_with(text, true)
            .unwrap()
            .iter()
            .map(|&t| i64::from(t))
            .collect();
        assert_eq!(mine, ids, "text {i}");
        let logits = tch::no_grad(|| {
            model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None, None, None)
        })
        .squeeze_dim(0);
        let want = &expected[&format!("logits.{i}")];
        let diff = (&logits - want).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "text {i}: max |Δlogit| = {diff:e}");
        assert!(
            want.std(true).double_value(&[]) > 0.01,
            "degenerate reference logits"
        );
    }
    // The chat template came through the import and renders as transformers renders the
    // template it read from the same GGUF.
    let rendered = tok
        .chat_template()
        .unwrap()
        .render(&chat(&refs), true)
        .unwrap();
    assert_eq!(
        rendered,
        refs["tiny.gguf"]["chat_rendered"].as_str().unwrap()
    );
}

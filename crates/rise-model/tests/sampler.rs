//! The batched sampler on the tiny Llama fixture: greedy parity with transformers through
//! left-padded batches, seeding, n samples, stop strings, top-k/top-p edge cases.
mod common;

use common::{device, fixture, ids, reference};
use rise_model::sampler::{generate, generate_seeded, FinishReason, SamplingParams};
use rise_model::tokenizer::Tokenizer;
use rise_model::{checkpoint, Model};
use tch::Kind;

fn setup() -> (Model, Tokenizer, serde_json::Value) {
    let dir = fixture("llama");
    let (_, model) = checkpoint::load(&dir, device(), Kind::Float).unwrap();
    (model, Tokenizer::from_dir(&dir).unwrap(), reference(&dir))
}

fn prompts(refs: &serde_json::Value) -> Vec<Vec<u32>> {
    refs["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            ids(&c["prompt_ids"])
                .into_iter()
                .map(|t| t as u32)
                .collect()
        })
        .collect()
}

#[test]
fn greedy_batch_matches_transformers_token_for_token() {
    for arch in common::ARCHS {
        let dir = fixture(arch);
        let (_, model) = checkpoint::load(&dir, device(), Kind::Float).unwrap();
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let refs = reference(&dir);
        let ps = prompts(&refs);
        // The prompts have different lengths, so this batch is left-padded.
        assert!(ps.iter().any(|p| p.len() != ps[0].len()));
        let params = SamplingParams {
            temperature: 0.0,
            max_new_tokens: refs["greedy_new_tokens"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let out = generate(&model, &tok, &ps, &params, device()).unwrap();
        for (case, got) in refs["greedy"].as_array().unwrap().iter().zip(&out) {
            let want: Vec<u32> = ids(&case["tokens"]).into_iter().map(|t| t as u32).collect();
            assert_eq!(got[0].tokens, want, "{arch}: {}", case["prompt"]);
        }
    }
}

#[test]
fn same_seed_same_samples_and_n_samples_differ() {
    let (model, tok, refs) = setup();
    let ps = prompts(&refs);
    let params = SamplingParams {
        n: 4,
        temperature: 1.0,
        max_new_tokens: 16,
        seed: 11,
        ..Default::default()
    };
    let a = generate(&model, &tok, &ps, &params, device()).unwrap();
    let b = generate(&model, &tok, &ps, &params, device()).unwrap();
    assert_eq!(a, b);
    for samples in &a {
        assert_eq!(samples.len(), 4);
        let distinct: std::collections::HashSet<_> =
            samples.iter().map(|c| c.tokens.clone()).collect();
        assert!(
            distinct.len() > 1,
            "n samples of one prompt are all identical: {samples:?}"
        );
    }
    let c = generate(
        &model,
        &tok,
        &ps,
        &SamplingParams { seed: 12, ..params },
        device(),
    )
    .unwrap();
    assert_ne!(a, c, "a different seed gave the same samples");
}

#[test]
fn left_padded_batch_equals_unpadded_single_runs() {
    let (model, tok, refs) = setup();
    let ps = prompts(&refs);
    let params = SamplingParams {
        n: 3,
        temperature: 0.9,
        top_p: 0.95,
        max_new_tokens: 12,
        ..Default::default()
    };
    let seeds: Vec<(u64, u64)> = (0..ps.len() as u64).map(|i| (5, 100 + i)).collect();
    let batch = generate_seeded(&model, &tok, &ps, &seeds, &params, device()).unwrap();
    for (i, p) in ps.iter().enumerate() {
        let single = generate_seeded(
            &model,
            &tok,
            std::slice::from_ref(p),
            &seeds[i..i + 1],
            &params,
            device(),
        )
        .unwrap();
        assert_eq!(
            single[0], batch[i],
            "prompt {i} alone differs from its row in the padded batch"
        );
    }
}

#[test]
fn stop_strings_end_samples_and_are_cut_from_the_text() {
    let (model, tok, refs) = setup();
    let ps = prompts(&refs);
    let free = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 12,
        ..Default::default()
    };
    let full = generate(&model, &tok, &ps[..1], &free, device())
        .unwrap()
        .remove(0)
        .remove(0);
    assert!(
        full.tokens.len() >= 6,
        "need a longer greedy continuation: {full:?}"
    );
    // A stop string that the unconstrained continuation produces in the middle.
    let stop = tok.decode_with(&full.tokens[3..5], false).unwrap();
    assert!(!stop.is_empty());
    let params = SamplingParams {
        stop_strings: vec![stop.clone()],
        ..free
    };
    let got = generate(&model, &tok, &ps[..1], &params, device())
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(got.finish_reason, FinishReason::Stop);
    let cut = full.text.find(&stop).unwrap();
    assert_eq!(got.text, full.text[..cut]);
    assert!(got.tokens.len() <= 5 && full.tokens.starts_with(&got.tokens));
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    let (model, tok, refs) = setup();
    let ps = prompts(&refs);
    let greedy = SamplingParams {
        temperature: 0.0,
        max_new_tokens: 10,
        ..Default::default()
    };
    let want = generate(&model, &tok, &ps, &greedy, device()).unwrap();
    for params in [
        SamplingParams {
            temperature: 1.0,
            top_k: 1,
            n: 2,
            ..greedy.clone()
        },
        SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            n: 2,
            ..greedy.clone()
        },
    ] {
        let got = generate(&model, &tok, &ps, &params, device()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(g.iter().all(|c| c.tokens == w[0].tokens), "{params:?}");
        }
    }
}

#[test]
fn invalid_requests_name_the_problem() {
    let (model, tok, _) = setup();
    let err = generate(
        &model,
        &tok,
        &[vec![]],
        &SamplingParams::default(),
        device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("prompt 0"), "{err}");
    let err = generate(
        &model,
        &tok,
        &[vec![1]],
        &SamplingParams {
            top_p: 0.0,
            ..Default::default()
        },
        device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("top_p"), "{err}");
    let err = generate(
        &model,
        &tok,
        &[vec![99999]],
        &SamplingParams::default(),
        device(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("99999"), "{err}");
}

//! Sharded stages (`shards = N`, #15 item 5) on the real binaries, locally: `sample`, `relabel`
//! and `evaluate` split into shards give, once merged, the very artifacts of the unsharded
//! stages (so everything downstream is a cache hit); each shard is cached on its own; changing
//! `shards` re-runs the shards and the merge but nothing upstream; a kind that cannot be
//! sharded is refused at its `shards` line.
mod support;

use serde_json::Value;
use support::describe;
use support::pipeline::{
    env_with, micro_text as pipeline, outputs, sharded, stage_logs, states, Env,
};

fn run_with(env: &Env, text: &str) -> Value {
    std::fs::write(&env.pipeline, text).unwrap();
    env.run_ok(&[])
}

#[test]
fn shards_merge_into_the_unsharded_artifacts_and_are_cached_each() {
    let text = pipeline();
    let env = env_with(&text);
    let whole = outputs(&env.run_ok(&[]));

    let three = sharded(&text, &[("sample", 3), ("relabel", 3), ("evaluate", 3)]);
    let summary = run_with(&env, &three);
    let st = states(&summary);
    let out = outputs(&summary);
    for stage in ["sample", "relabel", "evaluate"] {
        for k in 1..=3 {
            let shard = format!("{stage}/shard-{k}-of-3");
            assert_eq!(st[&shard], "executed", "{shard}: {st:?}");
        }
        // The merge step ran (it is no cache hit) and made the unsharded stage's artifact.
        assert_eq!(st[stage], "executed", "{stage}: {st:?}");
        assert_eq!(out[stage], whole[stage], "{stage}: merged != unsharded");
    }
    // Shards did different work: no two shards of a stage made the same part.
    for stage in ["sample", "relabel", "evaluate"] {
        let parts: std::collections::BTreeSet<_> = (1..=3)
            .map(|k| out[&format!("{stage}/shard-{k}-of-3")].clone())
            .collect();
        assert_eq!(parts.len(), 3, "{stage}: {out:?}");
    }
    // Upstream and downstream of the merged stages did not run again.
    for stage in ["train_set", "test_set", "tokenizer", "init", "grade"] {
        assert_eq!(st[stage], "cached", "{stage}: {st:?}");
    }
    // The relabel actually relabelled (the micro model is always wrong): a second turn.
    let relabelled = env.output_dir("relabel");
    let first = std::fs::read_to_string(relabelled.join("shard-00000.jsonl")).unwrap();
    assert!(first.contains("\"turn\":2"), "{first}");

    // Every shard's result is cached: a re-run executes nothing and commits nothing.
    let results = env.result_count();
    let again = run_with(&env, &three);
    let executed: Vec<_> = states(&again)
        .into_iter()
        .filter(|(_, s)| s != "cached")
        .collect();
    assert!(executed.is_empty(), "{executed:?}");
    assert_eq!(env.result_count(), results);

    // Another shard count re-runs that stage's shards and merge only.
    let two = sharded(&text, &[("sample", 2), ("relabel", 3), ("evaluate", 3)]);
    let summary = run_with(&env, &two);
    let st = states(&summary);
    for stage in ["sample/shard-1-of-2", "sample/shard-2-of-2", "sample"] {
        assert_eq!(st[stage], "executed", "{stage}: {st:?}");
    }
    for (stage, state) in &st {
        if !stage.starts_with("sample") {
            assert_eq!(state, "cached", "{stage}: {st:?}");
        }
    }
    assert_eq!(outputs(&summary)["sample"], whole["sample"]);
}

#[test]
fn a_kind_that_cannot_be_sharded_is_refused_at_its_shards_line() {
    let text = sharded(&pipeline(), &[("grade", 2)]);
    let env = env_with(&text);
    let out = env.rise(&["plan", "PIPELINE"]);
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = text
        .lines()
        .position(|l| l == "shards = 2")
        .expect("shards line")
        + 1;
    assert!(
        err.contains(&format!(
            ":{line}: field stage.grade.shards: kind `grade` cannot be sharded"
        )),
        "{err}"
    );
    assert!(
        err.contains("kinds that can: evaluate, relabel, sample"),
        "{err}"
    );
    // One error, not one per shard.
    assert_eq!(err.matches("error").count(), 1, "{err}");
}

/// `--gpus 0,1,2`: the three shards of a GPU stage run at once, one per GPU, each with its own
/// card as `CUDA_VISIBLE_DEVICES` (the engine notes it in the stage log where it sets it). The
/// stage runs on the CPU here: no GPU is needed to check who gets which card. Without
/// `--gpus`, GPU stages run one at a time and the environment is left alone.
#[test]
fn gpus_run_one_shard_per_gpu_at_once() {
    let text = sharded(&pipeline(), &[("sample", 3)]);
    let env = env_with(&text);
    let summary = env.run_ok(&["--jobs", "3", "--gpus", "0,1,2", "--stage", "sample"]);
    let st = states(&summary);
    let mut cards = std::collections::BTreeSet::new();
    for k in 1..=3 {
        let shard = format!("sample/shard-{k}-of-3");
        assert_eq!(st[&shard], "executed", "{shard}: {st:?}");
        let log = stage_logs(&env.store, &shard);
        let seen: Vec<&str> = log
            .lines()
            .filter_map(|l| l.strip_prefix("# CUDA_VISIBLE_DEVICES="))
            .collect();
        assert_eq!(seen.len(), 1, "{shard}: {log}");
        cards.insert(seen[0].to_string());
    }
    // A card is handed out lowest first and taken back when its stage ends: three different
    // cards mean the three shards held them at the same time.
    assert_eq!(
        cards.into_iter().collect::<Vec<_>>(),
        ["0", "1", "2"],
        "shards did not run side by side"
    );

    // Without --gpus: no card assigned (the merge is in-process, the shards cached).
    let fresh = env_with(&sharded(&pipeline(), &[("evaluate", 2)]));
    fresh.run_ok(&["--jobs", "2", "--stage", "evaluate"]);
    for k in 1..=2 {
        let log = stage_logs(&fresh.store, &format!("evaluate/shard-{k}-of-2"));
        assert!(!log.contains("CUDA_VISIBLE_DEVICES"), "{log}");
    }
    // ... and one GPU stage at a time, whatever --jobs says.
    let [a, b] = [1, 2].map(|k| fresh.ran(&format!("evaluate/shard-{k}-of-2")));
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "GPU stages overlapped: {a:?} {b:?}"
    );

    // Each id once.
    let out = env.rise(&["run", "PIPELINE", "--gpus", "0,0"]);
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give each GPU id once"),
        "{}",
        describe(&out)
    );
}

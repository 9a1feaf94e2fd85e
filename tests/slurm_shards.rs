//! Sharded stages under Slurm (#15, `NODES=2`): the shards of one stage are separate jobs that
//! run on the two nodes at the same time, each with the stage's GPU; the merge step, which
//! only concatenates files, asks for no GPU; the merged artifact is the unsharded stage's.
mod slurm_support;
mod support;

use std::time::Duration;

use support::pipeline::{env_with, micro_text, outputs, sharded, states};

#[test]
fn two_shards_run_on_the_two_nodes_at_once_and_merge_into_the_unsharded_artifact() {
    let cluster = slurm_support::cluster();
    let text = micro_text();
    let env = env_with(&text);
    // Unsharded, locally: the reference artifact. Everything upstream is then committed, so
    // the Slurm run below submits only the shards and the merge (three jobs, two rounds).
    let whole = outputs(&env.run_ok(&["--stage", "evaluate"]));

    // Each shard asks for a GPU and each node has one: two shards running at once must be
    // on two nodes (the nodes have one CPU each too).
    let two = sharded(&text, &[("evaluate", 2)]) + "\n[stage.evaluate.resources]\ngpus = 1\n";
    std::fs::write(&env.pipeline, two).unwrap();
    // A job of another test on a node would make the shards take turns on the other one.
    slurm_support::wait_idle(Duration::from_secs(120));
    let summary = env.run_ok(&["--executor", "slurm", "--jobs", "3", "--stage", "evaluate"]);

    let st = states(&summary);
    let shards = ["evaluate/shard-1-of-2", "evaluate/shard-2-of-2"];
    for stage in shards.iter().chain(&["evaluate"]) {
        assert_eq!(st[*stage], "executed", "{stage}: {st:?}");
    }
    for stage in ["train_set", "test_set", "tokenizer", "init"] {
        assert_eq!(st[stage], "cached", "{stage}: {st:?}");
    }
    assert_eq!(
        outputs(&summary)["evaluate"],
        whole["evaluate"],
        "merged != unsharded"
    );

    // One job per shard and one for the merge.
    let jobs = slurm_support::job_ids(&env.store);
    assert_eq!(
        jobs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["evaluate", shards[0], shards[1]],
        "{jobs:?}"
    );
    let [a, b] = shards.map(|s| slurm_support::job(&jobs[s]));
    for job in [&a, &b] {
        assert_eq!(job["JobState"], "COMPLETED", "{job:?}");
        assert!(slurm_support::asked_for_gpus(job), "{job:?}");
        assert!(cluster.nodes.contains(&job["NodeList"]), "{job:?}");
    }
    assert_ne!(
        a["NodeList"], b["NodeList"],
        "both shards ran on one node: {a:?} {b:?}"
    );
    // At the same time: each shard's stage started before the other's finished.
    let [(a0, a1), (b0, b1)] = shards.map(|s| env.ran(s));
    assert!(
        a0 < b1 && b0 < a1,
        "the shards took turns: {a0}..{a1} and {b0}..{b1}"
    );

    // The merge only concatenates: it did not ask for the stage's GPU.
    let merge = slurm_support::job(&jobs["evaluate"]);
    assert_eq!(merge["JobState"], "COMPLETED", "{merge:?}");
    assert!(!slurm_support::asked_for_gpus(&merge), "{merge:?}");
}

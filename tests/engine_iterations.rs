//! Iteration templates, with the example pipeline: instances iter1/…, iter2/… wired through
//! @prev/@last; raising the count runs only the new iteration and what reads @last.
mod support;
use support::engine::*;

fn example() -> String {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/examples/iterations.toml");
    std::fs::read_to_string(path).unwrap()
}

fn executed(json: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let mut names: Vec<String> = v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["state"] == "executed")
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn report(env: &Env) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "report", "--json"])).unwrap();
    std::fs::read_to_string(
        std::path::Path::new(v["output_path"].as_str().unwrap()).join("report.txt"),
    )
    .unwrap()
}

#[test]
fn iterations_chain_and_extend() {
    let env = Env::new();
    let p = env.write("it.toml", &example());
    let p = p.to_str().unwrap();
    let dag: serde_json::Value = serde_json::from_str(&env.ok(&["dag", p, "--json"])).unwrap();
    let names: Vec<&str> = dag["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "prompts",
            "sft",
            "iter1/sample",
            "iter1/train",
            "iter2/sample",
            "iter2/train",
            "iter3/sample",
            "iter3/train",
            "report"
        ]
    );
    assert_eq!(dag["stages"][4]["inputs"]["policy"], "iter1/train");
    assert_eq!(dag["stages"][3]["inputs"]["base"], "sft");

    let first = env.ok(&["run", p, "--json", "--quiet"]);
    assert_eq!(executed(&first).len(), 9);
    // sft = 1; each iteration adds the 5 samples: 6, 11, 16.
    assert_eq!(report(&env), "first 6 last 16\n");

    env.write("it.toml", &example().replace("count = 3", "count = 4"));
    let more = env.ok(&["run", p, "--json", "--quiet"]);
    assert_eq!(executed(&more), ["iter4/sample", "iter4/train", "report"]);
    assert_eq!(report(&env), "first 6 last 21\n");

    // Editing the template's param re-runs every iteration's train and what follows, except
    // iter2/sample: with step 2 its policy (iter1/train) holds 11, exactly what iter3/sample
    // was given before, so its key (kind, params, input artifacts, seed) is already cached.
    env.write("it.toml", &example().replace("step = 1", "step = 2"));
    let edited = env.ok(&["run", p, "--json", "--quiet"]);
    assert_eq!(
        executed(&edited),
        [
            "iter1/train",
            "iter2/train",
            "iter3/sample",
            "iter3/train",
            "report"
        ]
    );
    assert_eq!(report(&env), "first 11 last 31\n");
}

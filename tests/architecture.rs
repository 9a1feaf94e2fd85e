//! The crate graph's invariants, read from `cargo metadata` (the resolved graph, so a
//! dependency that arrives through another crate counts). ARCHITECTURE.md explains each:
//! - `rise` answers in milliseconds and runs where libtorch is absent: no `tch`/`torch-sys`
//!   anywhere in its closure (the torch stages live in `rise-worker`);
//! - the engine knows nothing of RISE, models or data: `rise-engine` uses no workspace crate
//!   but `rise-store`;
//! - the RISE stages know nothing of the store: `rise-stages` depends neither on `sled` nor on
//!   `rise-store` (it reaches both only inside the engine, whose API hides them), and its
//!   sources name neither;
//! - the store is the bottom of the graph: `rise-store` uses no other workspace crate.
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Package name → names of its normal and build dependencies (dev-dependencies excluded:
/// they never reach a built binary), for the whole resolved workspace graph.
struct Graph {
    deps: BTreeMap<String, BTreeSet<String>>,
    workspace: BTreeSet<String>,
}

impl Graph {
    fn load() -> Graph {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--offline"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run cargo metadata");
        assert!(
            out.status.success(),
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata's JSON");
        let name_of: BTreeMap<&str, &str> = meta["packages"]
            .as_array()
            .expect("packages")
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
            .collect();
        let workspace = meta["workspace_members"]
            .as_array()
            .expect("workspace_members")
            .iter()
            .map(|id| name_of[id.as_str().unwrap()].to_string())
            .collect();
        let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in meta["resolve"]["nodes"].as_array().expect("resolve.nodes") {
            let name = name_of[node["id"].as_str().unwrap()].to_string();
            let entry = deps.entry(name).or_default();
            for dep in node["deps"].as_array().expect("deps") {
                let not_dev_only = dep["dep_kinds"]
                    .as_array()
                    .expect("dep_kinds")
                    .iter()
                    .any(|k| k["kind"].as_str() != Some("dev"));
                if not_dev_only {
                    entry.insert(name_of[dep["pkg"].as_str().unwrap()].to_string());
                }
            }
        }
        Graph { deps, workspace }
    }

    /// Every package `root` reaches (itself excluded).
    fn closure(&self, root: &str) -> BTreeSet<String> {
        assert!(self.deps.contains_key(root), "{root} is not in the graph");
        let mut seen = BTreeSet::new();
        let mut todo = vec![root.to_string()];
        while let Some(name) = todo.pop() {
            for dep in self.deps.get(&name).into_iter().flatten() {
                if seen.insert(dep.clone()) {
                    todo.push(dep.clone());
                }
            }
        }
        seen
    }

    /// The workspace crates `root` depends on directly.
    fn workspace_deps(&self, root: &str) -> BTreeSet<String> {
        self.deps[root]
            .iter()
            .filter(|d| self.workspace.contains(*d))
            .cloned()
            .collect()
    }
}

#[test]
fn rise_never_links_libtorch() {
    let graph = Graph::load();
    let closure = graph.closure("rise");
    let torch: Vec<&String> = closure
        .iter()
        .filter(|d| *d == "tch" || *d == "torch-sys" || *d == "rise-model")
        .collect();
    assert!(torch.is_empty(), "rise reaches {torch:?}");
    // The check has teeth: the worker does reach libtorch.
    assert!(graph.closure("rise-worker").contains("torch-sys"));
}

#[test]
fn the_engine_uses_no_workspace_crate_but_the_store() {
    let graph = Graph::load();
    let deps = graph.workspace_deps("rise-engine");
    assert_eq!(
        deps,
        BTreeSet::from(["rise-store".to_string()]),
        "rise-engine's workspace dependencies"
    );
}

#[test]
fn the_stages_know_nothing_of_the_store() {
    let graph = Graph::load();
    let direct = &graph.deps["rise-stages"];
    for forbidden in ["sled", "rise-store"] {
        assert!(
            !direct.contains(forbidden),
            "rise-stages depends on {forbidden}"
        );
    }
    // Nor through a re-export: the sources name neither.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/rise-stages/src");
    let mut todo = vec![src];
    let mut files = 0;
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read rise-stages/src")
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).expect("read a source file");
                for word in ["sled::", "rise_store"] {
                    assert!(!text.contains(word), "{} names {word}", path.display());
                }
            }
        }
    }
    assert!(
        files > 5,
        "found only {files} sources under rise-stages/src"
    );
}

#[test]
fn the_store_is_the_bottom_of_the_graph() {
    let graph = Graph::load();
    assert!(
        graph.workspace_deps("rise-store").is_empty(),
        "rise-store uses {:?}",
        graph.workspace_deps("rise-store")
    );
}

//! The results a result was built from, transitively, down to its roots (`rise lineage`).
//!
//! The walk is iterative (an explicit stack on the heap), so a chain of any depth cannot
//! overflow the thread's stack, and each result is expanded once, so shared ancestors (a
//! diamond) cost one listing each: the report has at most one node per input edge of the
//! distinct results reached, plus the root.
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rise_store::{ArtifactId, ResultId, ResultManifest, Store};
use serde::{Serialize, Serializer};

use crate::lookup::{LookupError, Producer, Results};

/// A result and its ancestry.
#[derive(Debug, Clone, Serialize)]
pub struct LineageReport {
    /// The result asked for.
    pub result: ResultId,
    /// Its ancestry, depth first in input-name order: each result is followed by its inputs.
    pub lineage: Vec<LineageNode>,
}

/// One line of a lineage. `via` is the input name through which the node's parent read it
/// (empty for the result asked for); `depth` is 0 for that result, 1 for its inputs, ...
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum LineageNode {
    /// A readable result. Its inputs follow, unless it was already listed above.
    Result {
        /// Depth below the result asked for.
        depth: usize,
        /// The input name its consumer read it through.
        via: String,
        /// Its stage.
        stage: String,
        /// Its stage kind.
        kind: String,
        /// The result.
        result: ResultId,
        /// Its output artifact.
        output: ArtifactId,
        /// Already listed above (its inputs are not repeated).
        #[serde(skip)]
        repeat: bool,
    },
    /// An input whose producing result is damaged: its branch ends here.
    Damaged {
        /// Depth below the result asked for.
        depth: usize,
        /// The input name.
        via: String,
        /// The input artifact.
        artifact: ArtifactId,
        /// The damaged producing result.
        damaged_result: ResultId,
        /// What is wrong with it.
        problem: String,
    },
    /// An input no indexed result produced: a root of the lineage.
    Root {
        /// Depth below the result asked for.
        depth: usize,
        /// The input name.
        via: String,
        /// The input artifact.
        artifact: ArtifactId,
        /// Why it has no producer.
        root: Root,
    },
}

/// Why an artifact is a root of a lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Root {
    /// Pinned under this name.
    Pinned(String),
    /// Neither produced by an indexed result nor pinned.
    Unproduced,
}

impl fmt::Display for Root {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Root::Pinned(name) => write!(f, "pinned as {name}"),
            Root::Unproduced => f.write_str("no producing result"),
        }
    }
}

/// Serialized as its text ("pinned as NAME", "no producing result"), as `rise lineage --json`
/// has always written it.
impl Serialize for Root {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl LineageNode {
    /// Depth below the result asked for.
    pub fn depth(&self) -> usize {
        match self {
            LineageNode::Result { depth, .. }
            | LineageNode::Damaged { depth, .. }
            | LineageNode::Root { depth, .. } => *depth,
        }
    }
}

/// The lineage of the result `what` names ([`Results::find`]).
pub fn lineage(
    store: &Store,
    what: &str,
    pipeline: Option<&str>,
) -> Result<LineageReport, LookupError> {
    let results = Results::read(store)?;
    let (id, m) = results.find(what, pipeline)?;
    let pins: BTreeMap<ArtifactId, String> =
        store.pins()?.into_iter().map(|(n, a)| (a, n)).collect();
    Ok(LineageReport {
        result: id,
        lineage: walk(&results, &pins, id, &m),
    })
}

/// What is left to do in the walk: expand a result, or list a leaf.
enum Work<'a> {
    Visit {
        id: ResultId,
        manifest: &'a ResultManifest,
        depth: usize,
        via: String,
    },
    Leaf(LineageNode),
}

/// Result `id` (manifest `m`) and every result it was built from, depth first; `pins` maps
/// pinned artifacts to their pin names.
pub fn walk(
    results: &Results,
    pins: &BTreeMap<ArtifactId, String>,
    id: ResultId,
    m: &ResultManifest,
) -> Vec<LineageNode> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let mut todo = vec![Work::Visit {
        id,
        manifest: m,
        depth: 0,
        via: String::new(),
    }];
    while let Some(work) = todo.pop() {
        let (id, m, depth, via) = match work {
            Work::Leaf(node) => {
                out.push(node);
                continue;
            }
            Work::Visit {
                id,
                manifest,
                depth,
                via,
            } => (id, manifest, depth, via),
        };
        let repeat = !seen.insert(id);
        out.push(LineageNode::Result {
            depth,
            via,
            stage: m.stage.clone(),
            kind: m.kind.clone(),
            result: id,
            output: m.output,
            repeat,
        });
        if repeat {
            continue;
        }
        let children: Vec<Work<'_>> = m
            .inputs
            .iter()
            .map(|(name, a)| match results.producer(a) {
                Producer::Result(pid, pm) => Work::Visit {
                    id: pid,
                    manifest: pm,
                    depth: depth + 1,
                    via: name.clone(),
                },
                // A damaged producer hides only its own branch of the lineage.
                Producer::Damaged(pid, problem) => Work::Leaf(LineageNode::Damaged {
                    depth: depth + 1,
                    via: name.clone(),
                    artifact: *a,
                    damaged_result: pid,
                    problem: problem.to_string(),
                }),
                Producer::None => Work::Leaf(LineageNode::Root {
                    depth: depth + 1,
                    via: name.clone(),
                    artifact: *a,
                    root: pins
                        .get(a)
                        .map_or(Root::Unproduced, |p| Root::Pinned(p.clone())),
                }),
            })
            .collect();
        // Reversed onto the stack, so inputs come off it in name order, each followed by
        // its own ancestry before the next input: the order a recursive walk would list.
        todo.extend(children.into_iter().rev());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rise_store::{BlobId, IndexSnapshot, StageKey};
    use serde_json::json;

    fn manifest(stage: &str, inputs: &[(&str, ArtifactId)]) -> ResultManifest {
        ResultManifest {
            key: StageKey(BlobId::of(stage.as_bytes()).0),
            pipeline: "p".into(),
            stage: stage.into(),
            kind: "shell".into(),
            kind_version: 1,
            params: json!({}),
            inputs: inputs.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            output: BlobId::of(format!("out {stage}").as_bytes()),
            metrics: json!({}),
            engine_version: "test".into(),
            host: "h".into(),
            device: "cpu".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            finished_at: "2026-01-01T00:00:01Z".into(),
            run_id: "r".into(),
        }
    }

    /// An in-memory `Results` of `ok` manifests (ids are hashes of their stage names) plus
    /// damaged results, each listed as the producer of an artifact.
    fn results(ok: Vec<ResultManifest>, damaged: &[(ResultId, ArtifactId)]) -> Results {
        let mut index = IndexSnapshot::default();
        let mut by_id = BTreeMap::new();
        for m in ok {
            let id = BlobId::of(format!("result {}", m.stage).as_bytes());
            index.results.insert(id);
            index.producers.insert(m.output, id);
            by_id.insert(id, m);
        }
        for (id, a) in damaged {
            index.results.insert(*id);
            index.producers.insert(*a, *id);
        }
        Results {
            ok: by_id,
            damaged: damaged
                .iter()
                .map(|(id, _)| (*id, "is corrupt".to_string()))
                .collect(),
            index,
        }
    }

    fn id_of(stage: &str) -> ResultId {
        BlobId::of(format!("result {stage}").as_bytes())
    }

    fn summary(nodes: &[LineageNode]) -> Vec<String> {
        nodes
            .iter()
            .map(|n| match n {
                LineageNode::Result {
                    depth,
                    via,
                    stage,
                    repeat,
                    ..
                } => format!(
                    "{depth} {via}:{stage}{}",
                    if *repeat { " (repeat)" } else { "" }
                ),
                LineageNode::Damaged { depth, via, .. } => format!("{depth} {via}:damaged"),
                LineageNode::Root {
                    depth, via, root, ..
                } => format!("{depth} {via}:{root}"),
            })
            .collect()
    }

    #[test]
    fn a_diamond_lists_each_ancestor_once_in_input_order() {
        let a = manifest("a", &[]);
        let b = manifest("b", &[("x", a.output)]);
        let c = manifest("c", &[("x", a.output)]);
        let d = manifest("d", &[("right", c.output), ("left", b.output)]);
        let r = results(vec![a, b, c, d.clone()], &[]);
        let nodes = walk(&r, &BTreeMap::new(), id_of("d"), &d);
        assert_eq!(
            summary(&nodes),
            ["0 :d", "1 left:b", "2 x:a", "1 right:c", "2 x:a (repeat)"]
        );
    }

    #[test]
    fn damaged_producers_and_roots_end_their_branch() {
        let pinned = BlobId::of(b"pinned");
        let loose = BlobId::of(b"loose");
        let broken = BlobId::of(b"broken output");
        let broken_result = BlobId::of(b"broken result");
        let b = manifest("b", &[("p", pinned), ("q", loose), ("r", broken)]);
        let r = results(vec![b.clone()], &[(broken_result, broken)]);
        let pins = BTreeMap::from([(pinned, "seed".to_string())]);
        let nodes = walk(&r, &pins, id_of("b"), &b);
        assert_eq!(
            summary(&nodes),
            [
                "0 :b",
                "1 p:pinned as seed",
                "1 q:no producing result",
                "1 r:damaged"
            ]
        );
        // The JSON form, field by field, as `rise lineage --json` has always written it.
        let v = serde_json::to_value(&nodes).unwrap();
        assert_eq!(v[0]["via"], "");
        assert_eq!(v[0]["result"], id_of("b").to_hex());
        assert!(v[0].get("repeat").is_none(), "{v}");
        assert_eq!(v[1]["root"], "pinned as seed");
        assert_eq!(v[2]["root"], "no producing result");
        assert_eq!(v[3]["damaged_result"], broken_result.to_hex());
        assert_eq!(v[3]["problem"], "is corrupt");
        assert_eq!(v[3]["depth"], 1);
    }

    #[test]
    fn a_deep_chain_does_not_overflow_the_stack() {
        // s0 <- s1 <- ... <- s(N-1): a recursive walk needs N frames. Run it on a thread
        // with a small stack, so the test fails if the walk recurses at all deeply.
        const N: usize = 5000;
        let mut chain = vec![manifest("s0", &[])];
        for i in 1..N {
            let prev = chain[i - 1].output;
            chain.push(manifest(&format!("s{i}"), &[("x", prev)]));
        }
        let last = chain[N - 1].clone();
        let r = results(chain, &[]);
        let nodes = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || walk(&r, &BTreeMap::new(), id_of(&format!("s{}", N - 1)), &last))
            .unwrap()
            .join()
            .expect("the walk overflowed its stack");
        assert_eq!(nodes.len(), N);
        assert_eq!(nodes[N - 1].depth(), N - 1);
        assert!(matches!(&nodes[N - 1], LineageNode::Result { stage, .. } if stage == "s0"));
    }
}

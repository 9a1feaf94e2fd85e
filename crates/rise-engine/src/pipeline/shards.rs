//! `shards = N`: a stage split into N instances that each do their part of the work, and a
//! merge step that puts the parts back together.
//!
//! ```toml
//! [stage.sample]
//! kind = "sample"
//! shards = 3
//! ```
//! becomes `sample/shard-1-of-3` ... `sample/shard-3-of-3` (the stage's kind, inputs, params
//! and seed, plus the param `shard = { index = K, count = N }`, K from 0) and `sample` itself,
//! of kind `sample/merge`, whose inputs are the shards in order (`shard_0001`, ...). Stages
//! that read `sample` read the merged artifact and do not change.
//!
//! What a shard is and how parts are merged is the kind's business: a kind that can be
//! sharded accepts the `shard` param and comes with a kind named [`merge_kind`] that
//! concatenates its shards' outputs into exactly what the unsharded stage writes. The engine
//! only expands names. So a shard's key is the stage's key plus its index and count (the
//! param), each shard is cached on its own, and a stage without `shards` (or `shards = 1`)
//! keeps the key it always had.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{Errors, StageDef};

/// The most shards one stage may have.
pub const MAX_SHARDS: u32 = 1024;

/// The param a shard receives: `{ "index": K, "count": N }`, K in `0..N`.
pub const SHARD_PARAM: &str = "shard";

/// The kind that merges the shards of a stage of kind `kind`.
pub fn merge_kind(kind: &str) -> String {
    format!("{kind}/merge")
}

/// Where a stage stands with respect to sharding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRole {
    /// An ordinary stage.
    Whole,
    /// Written with `shards = count` (count > 1), not yet expanded. Only inside the parser:
    /// a loaded [`super::Pipeline`] holds its shards and merge step instead.
    Sharded {
        /// The number of shards asked for.
        count: u32,
    },
    /// Shard `index` (from 0) of `count`.
    Shard {
        /// This shard's position, from 0.
        index: u32,
        /// How many shards the stage was split into.
        count: u32,
    },
    /// The step that merges `count` shards, under the stage's own name.
    Merge {
        /// How many shards it merges (its inputs `shard_0001`, ...).
        count: u32,
    },
}

/// The name of shard `index` (from 0) of `count` of stage `name`.
pub fn shard_name(name: &str, index: u32, count: u32) -> String {
    format!("{name}/shard-{}-of-{count}", index + 1)
}

/// The merge step's input name for shard `index` (from 0): zero-padded, so that the inputs'
/// (sorted) order is the shards' order.
pub fn shard_input(index: u32) -> String {
    format!("shard_{:04}", index + 1)
}

/// Every `Sharded` stage replaced by its shards, then its merge step, in place.
pub(super) fn expand(stages: Vec<StageDef>, errors: &mut Errors<'_>) -> Vec<StageDef> {
    let mut out = Vec::with_capacity(stages.len());
    for def in stages {
        let ShardRole::Sharded { count } = def.shard else {
            out.push(def);
            continue;
        };
        if def.params.contains_key(SHARD_PARAM) {
            errors.at(
                &format!("{}.params.{SHARD_PARAM}", def.origin),
                format!(
                    "`{SHARD_PARAM}` is set by `shards = N` for each shard; remove it from params"
                ),
            );
            continue;
        }
        let mut merge_inputs = BTreeMap::new();
        for index in 0..count {
            let mut shard = def.clone();
            shard.name = shard_name(&def.name, index, count);
            let part = serde_json::json!({ "index": index, "count": count });
            shard.params.insert(SHARD_PARAM.to_string(), part);
            shard.shard = ShardRole::Shard { index, count };
            merge_inputs.insert(shard_input(index), shard.name.clone());
            out.push(shard);
        }
        out.push(StageDef {
            kind: merge_kind(&def.kind),
            inputs: merge_inputs,
            params: serde_json::Map::new(),
            kind_fields: serde_json::Map::<String, Value>::new(),
            shard: ShardRole::Merge { count },
            ..def
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::Pipeline;
    use super::*;

    fn parse(text: &str) -> Pipeline {
        Pipeline::parse(Path::new("p.toml"), text.to_string()).unwrap()
    }

    const BASE: &str = "[pipeline]\nname = \"s\"\n[stage.a]\nkind = \"k\"\n";

    #[test]
    fn a_sharded_stage_becomes_its_shards_then_its_merge() {
        let p = parse(&format!(
            "{BASE}[stage.b]\nkind = \"k\"\nshards = 3\ninputs = {{ x = \"a\" }}\nparams = {{ n = 1 }}\n\
             [stage.c]\nkind = \"k\"\ninputs = {{ y = \"b\" }}\n"
        ));
        let names: Vec<_> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "b/shard-1-of-3",
                "b/shard-2-of-3",
                "b/shard-3-of-3",
                "b",
                "c"
            ]
        );
        let s = |n: &str| p.stage(n).unwrap();
        for (i, name) in ["b/shard-1-of-3", "b/shard-2-of-3", "b/shard-3-of-3"]
            .into_iter()
            .enumerate()
        {
            let shard = s(name);
            assert_eq!(shard.kind, "k");
            assert_eq!(shard.inputs["x"], "a");
            assert_eq!(shard.params["n"], 1);
            assert_eq!(
                shard.params[SHARD_PARAM],
                serde_json::json!({ "index": i, "count": 3 })
            );
            assert_eq!(
                shard.shard,
                ShardRole::Shard {
                    index: i as u32,
                    count: 3
                }
            );
            assert_eq!(shard.line, 5);
        }
        let merge = s("b");
        assert_eq!(merge.kind, "k/merge");
        assert_eq!(merge.shard, ShardRole::Merge { count: 3 });
        let inputs: Vec<_> = merge
            .inputs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            inputs,
            [
                ("shard_0001", "b/shard-1-of-3"),
                ("shard_0002", "b/shard-2-of-3"),
                ("shard_0003", "b/shard-3-of-3")
            ]
        );
        assert!(merge.params.is_empty());
        // Consumers read the merged stage, unchanged.
        assert_eq!(s("c").inputs["y"], "b");
        assert_eq!(s("c").shard, ShardRole::Whole);
    }

    #[test]
    fn one_shard_is_the_stage_itself() {
        let one = parse(&format!("{BASE}shards = 1\nparams = {{ n = 1 }}\n"));
        let none = parse(&format!("{BASE}params = {{ n = 1 }}\n"));
        assert_eq!(one.stages.len(), 1);
        assert_eq!(one.stages[0].shard, ShardRole::Whole);
        assert_eq!(one.stages[0].params, none.stages[0].params);
        assert_eq!(one.stages[0].kind_fields, none.stages[0].kind_fields);
    }

    #[test]
    fn iteration_instances_are_sharded_each() {
        let p = parse(
            "[pipeline]\nname = \"s\"\n[stage.a]\nkind = \"k\"\n[iterations]\ncount = 2\n\
             init = { t = \"a\" }\n[iter.stage.t]\nkind = \"k\"\nshards = 2\n\
             inputs = { p = \"@prev.t\" }\n",
        );
        let names: Vec<_> = p.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "iter1/t/shard-1-of-2",
                "iter1/t/shard-2-of-2",
                "iter1/t",
                "iter2/t/shard-1-of-2",
                "iter2/t/shard-2-of-2",
                "iter2/t"
            ]
        );
        // The second iteration's shards read the first iteration's merged stage.
        assert_eq!(
            p.stage("iter2/t/shard-1-of-2").unwrap().inputs["p"],
            "iter1/t"
        );
    }

    #[test]
    fn bad_shards_are_located() {
        for (value, expect) in [
            ("0", "from 1 to 1024"),
            ("1025", "from 1 to 1024"),
            ("\"3\"", "a string"),
        ] {
            let e = Pipeline::parse(Path::new("p.toml"), format!("{BASE}shards = {value}\n"))
                .unwrap_err()
                .0
                .remove(0);
            assert_eq!(e.field.as_deref(), Some("stage.a.shards"), "{e}");
            assert_eq!(e.line, Some(5), "{e}");
            assert!(e.message.contains(expect), "{e}");
        }
        let e = Pipeline::parse(
            Path::new("p.toml"),
            format!("{BASE}shards = 2\nparams = {{ shard = 1 }}\n"),
        )
        .unwrap_err()
        .0
        .remove(0);
        assert_eq!(e.field.as_deref(), Some("stage.a.params.shard"), "{e}");
    }
}

//! The part of every cache key that the stage kinds decide (kind, kind version, resolved params
//! with their defaults, which params name files or directories), pinned for every stage of
//! the shipped pipelines.
//!
//! A store filled before a refactor of the param schemas must still hit its cache after it,
//! so these values must never change unless a kind's version is bumped on purpose. They were
//! computed with the schemas as they stood before the params became typed structs (issue 14);
//! a failure here means a change of default, of a param's JSON type (an integer that became a
//! float), of an optional param's presence, or of a file param's role: every existing store
//! would re-run the stage.
//!
//! Input artifact ids and file contents are left out (they come from upstream results and the
//! files on disk, which this crate does not decide); `tests/stage_keys_pinned.rs` at the
//! workspace root pins full keys of the stages `rise plan` can key on an empty store.
use std::collections::BTreeMap;
use std::path::Path;

use rise_engine::key::{Canon, KeyFields};
use rise_engine::Registry;
use serde_json::Value;

/// Stands for a file's content hash in the key: what matters here is that the param is keyed
/// as a file at all.
const FILE: [u8; 32] = [0xf1; 32];
/// Likewise for a directory param.
const DIR: [u8; 32] = [0xd1; 32];

/// `(stage or template, kind, key of kind + version + params)` for every stage of a pipeline
/// file, in file order (`[stage.*]` then `[iter.stage.*]`, whose params are the same in every
/// iteration).
fn param_keys(pipeline: &str) -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../pipelines")
        .join(pipeline);
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let mut registry = Registry::new();
    rise_stages::register_all(&mut registry);
    let mut stages: Vec<(String, &toml::Table)> = Vec::new();
    stages.extend(tables(doc.get("stage")));
    let templates = doc
        .get("iter")
        .and_then(|i| i.as_table())
        .and_then(|i| i.get("stage"));
    stages.extend(
        tables(templates)
            .into_iter()
            .map(|(n, t)| (format!("iter.{n}"), t)),
    );
    let mut out = Vec::new();
    for (name, table) in stages {
        let kind = table["kind"].as_str().unwrap();
        let stage = registry
            .get(kind)
            .unwrap_or_else(|| panic!("{pipeline}: {name}: unknown kind {kind}"));
        let params: Value = match table.get("params") {
            Some(p) => serde_json::to_value(p).unwrap(),
            None => Value::Object(Default::default()),
        };
        let resolved = stage
            .resolve_params(&params)
            .unwrap_or_else(|e| panic!("{pipeline}: {name}: {e}"));
        let mut canon = Canon::from_json(&resolved);
        // As the engine keys them: params that choose how a stage runs (`devices`) stay out.
        if let Canon::Map(m) = &mut canon {
            for p in stage.unkeyed_params() {
                m.remove(*p);
            }
        }
        for p in stage.file_params(&resolved) {
            assert!(canon.replace(&p, Canon::File(FILE)), "{name}: {p}");
        }
        for p in stage.dir_params(&resolved) {
            assert!(canon.replace(&p, Canon::File(DIR)), "{name}: {p}");
        }
        let inputs = BTreeMap::new();
        let key = KeyFields {
            kind,
            kind_version: stage.version(),
            params: &canon,
            inputs: &inputs,
            seed: 0,
        }
        .key();
        out.push((name, key.to_string()));
    }
    out
}

/// The sub-tables of a table (`[stage.NAME]`), by name.
fn tables(t: Option<&toml::Value>) -> Vec<(String, &toml::Table)> {
    t.and_then(toml::Value::as_table)
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.as_table().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

/// `pinned`: one `STAGE KEY` line per stage.
fn check(pipeline: &str, pinned: &str) {
    let got: Vec<String> = param_keys(pipeline)
        .iter()
        .map(|(n, k)| format!("{n} {k}"))
        .collect();
    let got = got.join("\n");
    assert!(
        got == pinned,
        "{pipeline}: the kinds now key its stages differently (every existing store would \
         re-run them). Now:\n{got}"
    );
}

// Re-pinned on 2026-12-03 (issue 12): the two arms replaced the [iter.stage.*] templates (every
// self.iterN.* stage has the old template's kind/params key: same kind, same params), the test
// split grew to 1000 problems and the teacher came in.
#[test]
fn rise_toml() {
    check(
        "rise.toml",
        "\
base 3b146b7ca19c81331ef37927ed255c9d08926b3b48ce1ed001154c379344e593
distill.iter1.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
distill.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter1.relabel babdf547502ce8ce236e85a6a30e8679591c57e53f7b09351a90d94f0a8005af
distill.iter1.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
distill.iter1.train 2ce746e2d4b58652cb7ac1e3155afb85ca84ba101fbdbd4386b229fe72e9d271
distill.iter2.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
distill.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter2.relabel babdf547502ce8ce236e85a6a30e8679591c57e53f7b09351a90d94f0a8005af
distill.iter2.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
distill.iter2.train 2ce746e2d4b58652cb7ac1e3155afb85ca84ba101fbdbd4386b229fe72e9d271
eval_base cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
eval_teacher cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
report c9b5bc4a50012c89653ec3baafd851a0eb943f857f8f7f071b3c6bbc01c87af0
self.iter1.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
self.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter1.relabel cb66eb4804b834d534f26439c03f52ab8775121c3b93941efb0bc4d26728b4d4
self.iter1.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
self.iter1.train ffd2f46fba93ff5e7736b10daba5b93c0689b02f0aa51c1195ed230b811a36d5
self.iter2.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
self.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter2.relabel cb66eb4804b834d534f26439c03f52ab8775121c3b93941efb0bc4d26728b4d4
self.iter2.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
self.iter2.train ffd2f46fba93ff5e7736b10daba5b93c0689b02f0aa51c1195ed230b811a36d5
teacher 85d0c7e31f58807902f501e7bb628155f777d2f44a5f94798f6e84deafb01e77
teacher_init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
teacher_set b32a0c333767ee16b0296d503d3e04d9be79c2652ca59b08ed21879328713606
test_set 1695ff7a767bc379d4e66a53f5479bf55c6b569606881476f8216c368935aead
tokenizer f04b7d37bc903fa9a883f49aa4a8b8809e2146e416f93e45f5f661f91db195c5
train_set 4556f11a3e4902a7a61aa37ba181e4192eeb8221548607fc471c31a689915775",
    );
}

#[test]
fn rise_controls_toml() {
    check(
        "rise-controls.toml",
        "\
base 3b146b7ca19c81331ef37927ed255c9d08926b3b48ce1ed001154c379344e593
control.single_turn.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
control.single_turn.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
control.single_turn.sample 4032881e8f0e785289cd87a7d5d713cdedb37d16196993a420799529df54db93
control.single_turn.train 2ce746e2d4b58652cb7ac1e3155afb85ca84ba101fbdbd4386b229fe72e9d271
controls_report 75b359f1d613b6727025ddc44ac0cf0992457f208f686689261de0a82cde15ea
distill.iter1.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
distill.iter1.evaluate_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
distill.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter1.relabel babdf547502ce8ce236e85a6a30e8679591c57e53f7b09351a90d94f0a8005af
distill.iter1.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
distill.iter1.train 2ce746e2d4b58652cb7ac1e3155afb85ca84ba101fbdbd4386b229fe72e9d271
distill.iter2.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
distill.iter2.evaluate_from_base cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
distill.iter2.evaluate_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
distill.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter2.relabel babdf547502ce8ce236e85a6a30e8679591c57e53f7b09351a90d94f0a8005af
distill.iter2.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
distill.iter2.train 2ce746e2d4b58652cb7ac1e3155afb85ca84ba101fbdbd4386b229fe72e9d271
distill.iter2.train_from_base eb5baff01ff26188d2a589ea3d09cca10de0f7ccea176fe7bf5dfc53dbe71bf2
eval_base cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
eval_base_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
eval_teacher cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
eval_teacher_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
self.iter1.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
self.iter1.evaluate_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
self.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter1.relabel cb66eb4804b834d534f26439c03f52ab8775121c3b93941efb0bc4d26728b4d4
self.iter1.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
self.iter1.train ffd2f46fba93ff5e7736b10daba5b93c0689b02f0aa51c1195ed230b811a36d5
self.iter2.evaluate cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
self.iter2.evaluate_from_base cca96733a8458e30e39e0ee09686a2c94a2649ae7d2f16426f84a99e03901699
self.iter2.evaluate_t1 bd13145a4d2484299923f989e8db5520344796161c0ede9b845bfae4b92d89a6
self.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter2.relabel cb66eb4804b834d534f26439c03f52ab8775121c3b93941efb0bc4d26728b4d4
self.iter2.sample a6a0a1a0c801ed0a5b9ff728d6e8c7ff0b92a2f92aa8f75e5c2827dbcaed0d17
self.iter2.train ffd2f46fba93ff5e7736b10daba5b93c0689b02f0aa51c1195ed230b811a36d5
self.iter2.train_from_base 733b99ec6f894346fe920d3b0df2b4af1ef660de27941f0caa97702ae1ae37c8
teacher 85d0c7e31f58807902f501e7bb628155f777d2f44a5f94798f6e84deafb01e77
teacher_init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
teacher_set b32a0c333767ee16b0296d503d3e04d9be79c2652ca59b08ed21879328713606
temperature_1_report f90832a60febfc57435430efab8d66518d132159fd2b985c8f03740879593e0c
test_set 1695ff7a767bc379d4e66a53f5479bf55c6b569606881476f8216c368935aead
tokenizer f04b7d37bc903fa9a883f49aa4a8b8809e2146e416f93e45f5f661f91db195c5
train_set 4556f11a3e4902a7a61aa37ba181e4192eeb8221548607fc471c31a689915775",
    );
}

#[test]
fn rise_ci_toml() {
    check(
        "rise-ci.toml",
        "\
base f49ee10a5758a11360b2234a81bd552aabd902fbde9991a9f8752862f1427dec
distill.iter1.evaluate 07b0ee2720dc4f3499063b084912c096cf1f85c73244440e5cf1f9f5f4fcb68b
distill.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter1.relabel ad493381acdc3276b8268089a252ecc269eafa0054beb6530353ccc0d1198c8b
distill.iter1.sample 442678a6f7d617a7d608c5027436670b147f78ea906682fc1c4f67aea7ce4d0a
distill.iter1.train 1e6c9f3a7f1bb47c9b34648a5123047fe9dd62e6045058c21e518280fee4ee8d
eval_base 07b0ee2720dc4f3499063b084912c096cf1f85c73244440e5cf1f9f5f4fcb68b
eval_teacher 07b0ee2720dc4f3499063b084912c096cf1f85c73244440e5cf1f9f5f4fcb68b
init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
report db9566416c7ba1afe5f3c2fdea806cef51a76cfcbf191608ad914d1c86c64855
self.iter1.evaluate 07b0ee2720dc4f3499063b084912c096cf1f85c73244440e5cf1f9f5f4fcb68b
self.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter1.relabel 7750d1ee305e3f22f47a73ab887165a61f3d3e7e2493ef8197c67012db88bd2e
self.iter1.sample 442678a6f7d617a7d608c5027436670b147f78ea906682fc1c4f67aea7ce4d0a
self.iter1.train 1e6c9f3a7f1bb47c9b34648a5123047fe9dd62e6045058c21e518280fee4ee8d
self.iter2.evaluate 07b0ee2720dc4f3499063b084912c096cf1f85c73244440e5cf1f9f5f4fcb68b
self.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter2.relabel 7750d1ee305e3f22f47a73ab887165a61f3d3e7e2493ef8197c67012db88bd2e
self.iter2.sample 442678a6f7d617a7d608c5027436670b147f78ea906682fc1c4f67aea7ce4d0a
self.iter2.train 1e6c9f3a7f1bb47c9b34648a5123047fe9dd62e6045058c21e518280fee4ee8d
teacher f49ee10a5758a11360b2234a81bd552aabd902fbde9991a9f8752862f1427dec
teacher_init 01a25ce3e93ea31a630994899946cce133e8da6c55e2797f7baae1bca93694ca
teacher_set 2255a432f6dd8246f54c62a678b9dfe8fdb2bc29a3ec5cb40c6d2d74f1e952a2
test_set da62933c48d05ab03656f72c4dfe59a07e10a4a337644636674281a181e89467
tokenizer fffc219bc0e3de4acf90be7aff71561e005eb86a63bd80b82d3698e9ac34f504
train_set 2ab6a2111be300c6dad0877f433995f417e8e0915a16338dfc75826980670dfc",
    );
}

#[test]
fn gsm8k_toml() {
    check(
        "gsm8k.toml",
        "\
base e52ceac3d5b3be7b6cd5e0803ac5139a8e643f10a5a2c93ebc54e36160c28619
eval_base 19da4b7178c69c511ce0df0a485f50325910da0538bca0d0933b9feaa845d95b
export 8817e5baba54f7459ed51dacf595957760b16c76258b1ff7314aac69cb31f169
report 29aa20b63061308450c6590004a7447dc2a4b6f69be5ac555c259296ec72b207
test_set e38f474b32008ec79fd20f1d0d4ee3b8a857775f4ad7beaeec2e775d6669baf1
train_set e38f474b32008ec79fd20f1d0d4ee3b8a857775f4ad7beaeec2e775d6669baf1
iter.evaluate 19da4b7178c69c511ce0df0a485f50325910da0538bca0d0933b9feaa845d95b
iter.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
iter.relabel 92f66a3861f33937e4ff3e21d38ab3477335dd49dfdc19365450be4da83187a1
iter.sample b6d4760f88dbd63b8e3c768ab11997eca766cad3c991ed4b45ec2ad6469a5d90
iter.train 400fe99afe7a9fb813cebb6b50c2dcb802026ef9f51ee300e3a39d0f4c30f6cf",
    );
}

#[test]
fn gsm8k_smollm2_toml() {
    check(
        "gsm8k-smollm2.toml",
        "\
base f7fe9d67a92cc72e03657d78b4f53689f47afc18870fda25a31981d22853c8fb
distill.iter1.evaluate c5019b15e7bf7d9f0bdcd94d34d6c9caf9e20f357506c0c0bdf44673e9557ee1
distill.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter1.relabel 1b350920c39c0ac5f234e789ceba16ab52b6450a39ceea3d60d1eea69f1e231d
distill.iter1.sample c790c148dac42908c1f8031284fe62f35b625c6ade0379116acd50a55edcf8a0
distill.iter1.train 400fe99afe7a9fb813cebb6b50c2dcb802026ef9f51ee300e3a39d0f4c30f6cf
distill.iter2.evaluate c5019b15e7bf7d9f0bdcd94d34d6c9caf9e20f357506c0c0bdf44673e9557ee1
distill.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
distill.iter2.relabel 1b350920c39c0ac5f234e789ceba16ab52b6450a39ceea3d60d1eea69f1e231d
distill.iter2.sample c790c148dac42908c1f8031284fe62f35b625c6ade0379116acd50a55edcf8a0
distill.iter2.train 400fe99afe7a9fb813cebb6b50c2dcb802026ef9f51ee300e3a39d0f4c30f6cf
eval_base c5019b15e7bf7d9f0bdcd94d34d6c9caf9e20f357506c0c0bdf44673e9557ee1
report f21fa75f9b42d5111e039900ec8016803f567d0df7892ab7b4c1427da846b87c
self.iter1.evaluate c5019b15e7bf7d9f0bdcd94d34d6c9caf9e20f357506c0c0bdf44673e9557ee1
self.iter1.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter1.relabel 1b350920c39c0ac5f234e789ceba16ab52b6450a39ceea3d60d1eea69f1e231d
self.iter1.sample c790c148dac42908c1f8031284fe62f35b625c6ade0379116acd50a55edcf8a0
self.iter1.train 400fe99afe7a9fb813cebb6b50c2dcb802026ef9f51ee300e3a39d0f4c30f6cf
self.iter2.evaluate c5019b15e7bf7d9f0bdcd94d34d6c9caf9e20f357506c0c0bdf44673e9557ee1
self.iter2.grade d0cf329fd407d97084d223817ee33c1c3c4816df3b197dd2c3f71ae51afdda2e
self.iter2.relabel 1b350920c39c0ac5f234e789ceba16ab52b6450a39ceea3d60d1eea69f1e231d
self.iter2.sample c790c148dac42908c1f8031284fe62f35b625c6ade0379116acd50a55edcf8a0
self.iter2.train 400fe99afe7a9fb813cebb6b50c2dcb802026ef9f51ee300e3a39d0f4c30f6cf
test_set cbcf55709186cdec9b39ece2cf672d235d6cdfeab8fd4c18e2394edb9f0d910c
train_set e38f474b32008ec79fd20f1d0d4ee3b8a857775f4ad7beaeec2e775d6669baf1",
    );
}

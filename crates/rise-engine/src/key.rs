//! Cache keys (DESIGN §3): a blake3 derived key over a canonical, typed, length-prefixed
//! encoding of everything that determines a stage's output.
//!
//! In the key: the stage kind, the kind's implementation version, the resolved params (file
//! params by content hash), the input artifact ids by input name, the seed, and the key-scheme
//! version. Not in the key: the stage's name, the store path, time, threads, device.
//!
//! The encoding is injective: every value carries a type tag, strings and containers are
//! length-prefixed, map keys are sorted by bytes, and floats enter by value (their f64 bits,
//! with -0.0 folded into 0.0 and every NaN into one NaN). So two different inputs can never
//! produce the same byte string, and the order keys were written in TOML does not matter.
use std::collections::BTreeMap;

use rise_store::{ArtifactId, StageKey};
use serde_json::Value;

/// Bump when the encoding or the set of fields changes: every key changes with it.
pub const KEY_SCHEME_VERSION: u32 = 1;

/// blake3 `derive_key` context: globally unique, application-specific, versioned.
const CONTEXT: &str = "rise 2025-06 stage cache key v1";

/// A param value as it enters the key: JSON, plus file contents by hash.
#[derive(Debug, Clone, PartialEq)]
pub enum Canon {
    /// JSON null.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer that fits i64.
    Int(i64),
    /// An integer above i64::MAX.
    UInt(u64),
    /// A float, by value.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Canon>),
    /// A table; keys are sorted when encoded.
    Map(BTreeMap<String, Canon>),
    /// A file referenced by a param, by the blake3 hash of its content.
    File([u8; 32]),
}

mod tag {
    pub const NULL: u8 = 0;
    pub const FALSE: u8 = 1;
    pub const TRUE: u8 = 2;
    pub const INT: u8 = 3;
    pub const UINT: u8 = 4;
    pub const FLOAT: u8 = 5;
    pub const STR: u8 = 6;
    pub const ARRAY: u8 = 7;
    pub const MAP: u8 = 8;
    pub const FILE: u8 = 9;
}

impl Canon {
    /// Convert JSON (map keys are re-sorted here, whatever the map's own order).
    pub fn from_json(v: &Value) -> Canon {
        match v {
            Value::Null => Canon::Null,
            Value::Bool(b) => Canon::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Canon::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Canon::UInt(u)
                } else {
                    Canon::Float(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => Canon::Str(s.clone()),
            Value::Array(items) => Canon::Array(items.iter().map(Canon::from_json).collect()),
            Value::Object(map) => Canon::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Canon::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// Replace the value at dotted `path` (segments may index arrays as `name[i]`) with `with`.
    /// Returns false when the path does not exist.
    pub fn replace(&mut self, path: &str, with: Canon) -> bool {
        let mut node = self;
        for segment in parse_path(path) {
            let next = match (node, segment) {
                (Canon::Map(m), PathSeg::Key(k)) => m.get_mut(&k),
                (Canon::Array(a), PathSeg::Index(i)) => a.get_mut(i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return false,
            }
        }
        *node = with;
        true
    }

    /// Append the canonical encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Canon::Null => out.push(tag::NULL),
            Canon::Bool(false) => out.push(tag::FALSE),
            Canon::Bool(true) => out.push(tag::TRUE),
            Canon::Int(i) => {
                out.push(tag::INT);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Canon::UInt(u) => {
                out.push(tag::UINT);
                out.extend_from_slice(&u.to_le_bytes());
            }
            Canon::Float(f) => {
                out.push(tag::FLOAT);
                out.extend_from_slice(&canonical_f64_bits(*f).to_le_bytes());
            }
            Canon::Str(s) => encode_str(s, out),
            Canon::Array(items) => {
                out.push(tag::ARRAY);
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for item in items {
                    item.encode(out);
                }
            }
            Canon::Map(map) => {
                out.push(tag::MAP);
                out.extend_from_slice(&(map.len() as u64).to_le_bytes());
                // BTreeMap<String, _> iterates in byte order of the keys: canonical.
                for (k, v) in map {
                    encode_str(k, out);
                    v.encode(out);
                }
            }
            Canon::File(hash) => {
                out.push(tag::FILE);
                out.extend_from_slice(hash);
            }
        }
    }
}

/// A segment of a dotted param path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

/// `a.b[2].c` -> `Key(a)`, `Key(b)`, `Index(2)`, `Key(c)`.
pub fn parse_path(path: &str) -> Vec<PathSeg> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(PathSeg::Key(name.to_string()));
        }
        while let Some(end) = rest.find(']') {
            match rest[1..end].parse() {
                Ok(i) => out.push(PathSeg::Index(i)),
                Err(_) => out.push(PathSeg::Key(rest[..=end].to_string())),
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

fn encode_str(s: &str, out: &mut Vec<u8>) {
    out.push(tag::STR);
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// -0.0 and 0.0 are the same param; all NaNs are the same param.
pub fn canonical_f64_bits(f: f64) -> u64 {
    if f.is_nan() {
        f64::NAN.to_bits()
    } else if f == 0.0 {
        0
    } else {
        f.to_bits()
    }
}

/// Everything that enters one stage's key.
#[derive(Debug, Clone)]
pub struct KeyFields<'a> {
    /// Stage kind.
    pub kind: &'a str,
    /// Kind implementation version.
    pub kind_version: u32,
    /// Resolved params with file params replaced by [`Canon::File`].
    pub params: &'a Canon,
    /// Input name -> artifact id.
    pub inputs: &'a BTreeMap<String, ArtifactId>,
    /// Seed.
    pub seed: u64,
}

impl KeyFields<'_> {
    /// The canonical byte encoding (exposed for tests and `rise explain --debug`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&KEY_SCHEME_VERSION.to_le_bytes());
        encode_str(self.kind, &mut out);
        out.extend_from_slice(&self.kind_version.to_le_bytes());
        self.params.encode(&mut out);
        out.extend_from_slice(&(self.inputs.len() as u64).to_le_bytes());
        for (name, id) in self.inputs {
            encode_str(name, &mut out);
            out.extend_from_slice(id.as_bytes());
        }
        out.extend_from_slice(&self.seed.to_le_bytes());
        out
    }

    /// The stage key.
    pub fn key(&self) -> StageKey {
        StageKey(blake3::derive_key(CONTEXT, &self.encode()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon() -> impl Strategy<Value = Canon> {
        let leaf = prop_oneof![
            Just(Canon::Null),
            any::<bool>().prop_map(Canon::Bool),
            any::<i64>().prop_map(Canon::Int),
            (i64::MAX as u64 + 1..=u64::MAX).prop_map(Canon::UInt),
            any::<f64>().prop_map(Canon::Float),
            "[a-z\\\\\"\u{0}-\u{7f}é]{0,6}".prop_map(Canon::Str),
            any::<[u8; 32]>().prop_map(Canon::File),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Canon::Array),
                prop::collection::btree_map("[a-c]{0,3}", inner, 0..4).prop_map(Canon::Map),
            ]
        })
    }

    /// Equality as the key sees it: floats by canonical bits.
    fn same(a: &Canon, b: &Canon) -> bool {
        match (a, b) {
            (Canon::Float(x), Canon::Float(y)) => canonical_f64_bits(*x) == canonical_f64_bits(*y),
            (Canon::Array(x), Canon::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
            }
            (Canon::Map(x), Canon::Map(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
            }
            _ => a == b,
        }
    }

    fn enc(c: &Canon) -> Vec<u8> {
        let mut out = Vec::new();
        c.encode(&mut out);
        out
    }

    proptest! {
        #[test]
        fn distinct_values_never_encode_alike(a in canon(), b in canon()) {
            prop_assert_eq!(same(&a, &b), enc(&a) == enc(&b), "{:?} vs {:?}", a, b);
        }

        #[test]
        fn distinct_key_fields_never_collide(
            kind_a in "[a-z]{1,4}", kind_b in "[a-z]{1,4}",
            va in 0u32..3, vb in 0u32..3,
            pa in canon(), pb in canon(),
            ia in prop::collection::btree_map("[a-c]{1,2}", any::<[u8; 32]>(), 0..3),
            ib in prop::collection::btree_map("[a-c]{1,2}", any::<[u8; 32]>(), 0..3),
            sa in 0u64..3, sb in 0u64..3,
        ) {
            let ia: BTreeMap<String, ArtifactId> = ia.into_iter().map(|(k, v)| (k, rise_store::BlobId(v))).collect();
            let ib: BTreeMap<String, ArtifactId> = ib.into_iter().map(|(k, v)| (k, rise_store::BlobId(v))).collect();
            let a = KeyFields { kind: &kind_a, kind_version: va, params: &pa, inputs: &ia, seed: sa };
            let b = KeyFields { kind: &kind_b, kind_version: vb, params: &pb, inputs: &ib, seed: sb };
            let equal = kind_a == kind_b && va == vb && same(&pa, &pb) && ia == ib && sa == sb;
            prop_assert_eq!(equal, a.encode() == b.encode());
            prop_assert_eq!(equal, a.key() == b.key());
        }

        /// Writing a TOML table's keys in any order gives the same key.
        #[test]
        fn toml_key_order_does_not_matter(
            entries in prop::collection::btree_map("[a-e]{1,3}", (any::<i32>(), any::<bool>(), "[a-z]{0,4}", -1e6f64..1e6), 1..6),
            seed in any::<u64>(),
        ) {
            let lines: Vec<String> = entries
                .iter()
                .map(|(k, (i, b, s, f))| format!("{k} = {{ i = {i}, b = {b}, s = \"{s}\", f = {f:e} }}"))
                .collect();
            let mut reversed = lines.clone();
            reversed.reverse();
            let inner_reversed: Vec<String> = entries
                .iter()
                .map(|(k, (i, b, s, f))| format!("{k} = {{ f = {f:e}, s = \"{s}\", b = {b}, i = {i} }}"))
                .collect();
            let key_of = |body: &[String]| {
                let table: toml::Table = toml::from_str(&body.join("\n")).unwrap();
                let json = serde_json::to_value(&table).unwrap();
                let params = Canon::from_json(&json);
                let inputs = BTreeMap::new();
                KeyFields { kind: "k", kind_version: 1, params: &params, inputs: &inputs, seed }.key()
            };
            let k = key_of(&lines);
            prop_assert_eq!(k, key_of(&reversed));
            prop_assert_eq!(k, key_of(&inner_reversed));
        }
    }

    #[test]
    fn floats_by_value() {
        assert_eq!(enc(&Canon::Float(-0.0)), enc(&Canon::Float(0.0)));
        assert_eq!(enc(&Canon::Float(f64::NAN)), enc(&Canon::Float(-f64::NAN)));
        assert_ne!(enc(&Canon::Float(1.0)), enc(&Canon::Int(1)));
        // 1e-3 and 0.001 are the same float, whatever the text.
        let a: toml::Table = toml::from_str("x = 1e-3").unwrap();
        let b: toml::Table = toml::from_str("x = 0.001").unwrap();
        assert_eq!(
            Canon::from_json(&serde_json::to_value(a).unwrap()),
            Canon::from_json(&serde_json::to_value(b).unwrap())
        );
    }

    #[test]
    fn replace_file_params_by_path() {
        let mut c = Canon::from_json(&serde_json::json!({"a": {"b": ["x", "y"]}}));
        assert!(c.replace("a.b[1]", Canon::File([7; 32])));
        assert!(!c.replace("a.c", Canon::Null));
        let expect = Canon::Map(
            [(
                "a".to_string(),
                Canon::Map(
                    [(
                        "b".to_string(),
                        Canon::Array(vec![Canon::Str("x".into()), Canon::File([7; 32])]),
                    )]
                    .into(),
                ),
            )]
            .into(),
        );
        assert_eq!(c, expect);
    }

    #[test]
    fn key_is_stable() {
        // Changing this value means every cache key changed: bump KEY_SCHEME_VERSION instead.
        let params = Canon::from_json(&serde_json::json!({"n": 10, "lr": 0.001, "name": "x"}));
        let inputs = [("data".to_string(), rise_store::BlobId([1; 32]))].into();
        let k = KeyFields {
            kind: "shell",
            kind_version: 1,
            params: &params,
            inputs: &inputs,
            seed: 1,
        }
        .key();
        assert_eq!(k.to_string().len(), 64);
        let again = KeyFields {
            kind: "shell",
            kind_version: 1,
            params: &params,
            inputs: &inputs,
            seed: 1,
        }
        .key();
        assert_eq!(k, again);
        let other = KeyFields {
            kind: "shell",
            kind_version: 1,
            params: &params,
            inputs: &inputs,
            seed: 2,
        }
        .key();
        assert_ne!(k, other);
    }
}

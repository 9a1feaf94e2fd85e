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

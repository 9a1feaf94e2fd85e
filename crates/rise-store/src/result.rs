//! Result manifests: the record written when a stage succeeds, stored as a blob in canonical
//! JSON (object keys sorted at every depth, compact), so its id is a function of its content.
use std::collections::BTreeMap;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::id::{ArtifactId, ResultId, StageKey};

/// The format tag written into every result manifest.
pub const RESULT_FORMAT: &str = "rise-result/1";

/// What a successful stage execution produced, and from what. Written once, never modified.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResultManifest {
    /// The stage's cache key.
    pub key: StageKey,
    /// The pipeline's name.
    pub pipeline: String,
    /// The stage's name, e.g. "iter1/train".
    pub stage: String,
    /// The stage kind, e.g. "train".
    pub kind: String,
    /// The kind's implementation version.
    pub kind_version: u32,
    /// The resolved params (defaults filled in).
    pub params: Value,
    /// Input name -> input artifact.
    pub inputs: BTreeMap<String, ArtifactId>,
    /// The output artifact.
    pub output: ArtifactId,
    /// Metrics reported by the stage.
    pub metrics: Value,
    /// The engine version that ran it.
    pub engine_version: String,
    /// Host name.
    pub host: String,
    /// Device, e.g. "cpu" or "cuda:0".
    pub device: String,
    /// Start time, RFC 3339 UTC.
    pub started_at: String,
    /// End time, RFC 3339 UTC. Among several results for the same key or stage, the one with
    /// the greatest `(finished_at, result id)` is the current one.
    pub finished_at: String,
    /// The run that produced it.
    pub run_id: String,
}

/// Writes `v` as compact JSON with object keys sorted at every depth, whatever map type
/// serde_json was built with (`preserve_order` may be enabled by another crate in the graph).
pub fn write_canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Strings always serialise.
                serde_json::to_writer(&mut *out, k).expect("string serialisation is infallible");
                out.push(b':');
                write_canonical_json(&map[k.as_str()], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = out.write_all(
                serde_json::to_string(scalar)
                    .expect("scalar serialisation is infallible")
                    .as_bytes(),
            );
        }
    }
}

impl ResultManifest {
    /// The canonical bytes stored as the result's blob (with a format tag).
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>> {
        let mut value = serde_json::to_value(self).map_err(|source| StoreError::Json {
            op: "encode",
            what: format!(
                "result manifest for stage {:?} (key {})",
                self.stage, self.key
            ),
            source,
        })?;
        if let Value::Object(map) = &mut value {
            map.insert("format".into(), Value::String(RESULT_FORMAT.into()));
        }
        let mut out = Vec::with_capacity(512);
        write_canonical_json(&value, &mut out);
        Ok(out)
    }

    /// Parses the bytes of result `id`, checking the format tag.
    pub fn from_bytes(id: &ResultId, bytes: &[u8]) -> Result<ResultManifest> {
        let bad = |reason: String| StoreError::BadResult { id: *id, reason };
        let mut value: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let format = value.as_object_mut().and_then(|m| m.remove("format"));
        match format {
            Some(Value::String(f)) if f == RESULT_FORMAT => {}
            Some(other) => {
                return Err(bad(format!(
                    "format is {other}, expected {RESULT_FORMAT:?}"
                )))
            }
            None => return Err(bad("no format tag (not a result manifest)".into())),
        }
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))
    }

    /// The ordering key that decides which of several results is current.
    pub(crate) fn recency<'a>(&'a self, id: &'a ResultId) -> (&'a str, &'a ResultId) {
        (self.finished_at.as_str(), id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::BlobId;

    pub(crate) fn sample() -> ResultManifest {
        ResultManifest {
            key: StageKey([7; 32]),
            pipeline: "p".into(),
            stage: "iter1/train".into(),
            kind: "train".into(),
            kind_version: 3,
            params: serde_json::json!({"lr": 1e-4, "b": [1, {"z": 1, "a": 2}]}),
            inputs: [("data".to_string(), BlobId([1; 32]))]
                .into_iter()
                .collect(),
            output: BlobId([2; 32]),
            metrics: serde_json::json!({"loss": 0.5}),
            engine_version: "0.1.0".into(),
            host: "h".into(),
            device: "cpu".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            finished_at: "2025-01-01T00:00:01Z".into(),
            run_id: "r1".into(),
        }
    }

    #[test]
    fn canonical_encoding_sorts_keys_and_round_trips() {
        let m = sample();
        let bytes = m.to_canonical_bytes().unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(
            !text.contains(r#"{"z":1,"a":2}"#) && text.contains(r#"{"a":2,"z":1}"#),
            "{text}"
        );
        assert!(
            text.starts_with(r#"{"device":"cpu","engine_version""#),
            "{text}"
        );
        let id = BlobId::of(&bytes);
        assert_eq!(ResultManifest::from_bytes(&id, &bytes).unwrap(), m);
    }

    #[test]
    fn rejects_non_results() {
        let id = BlobId::of(b"x");
        assert!(
            ResultManifest::from_bytes(&id, b"{\"format\":\"rise-tree/1\",\"entries\":[]}")
                .is_err()
        );
        assert!(ResultManifest::from_bytes(&id, b"hello").is_err());
    }
}

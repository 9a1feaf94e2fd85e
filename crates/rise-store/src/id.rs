//! Content ids: 32-byte blake3 hashes written as 64 lowercase hex digits.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::StoreError;

fn parse_hex32(s: &str) -> Result<[u8; 32], StoreError> {
    let invalid = |reason| StoreError::InvalidId {
        input: s.to_string(),
        reason,
    };
    if s.len() != 64 {
        return Err(invalid("expected 64 hexadecimal digits"));
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        let hi = hex_val(pair[0]).ok_or_else(|| invalid("not a lowercase hexadecimal digit"))?;
        let lo = hex_val(pair[1]).ok_or_else(|| invalid("not a lowercase hexadecimal digit"))?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

// Only lowercase is accepted so that one id has exactly one spelling (file names, index keys).
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn write_hex(bytes: &[u8; 32], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

macro_rules! hex_id {
    ($name:ident, $what:literal) => {
        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// The 64-digit lowercase hex spelling (same as `Display`).
            pub fn to_hex(&self) -> String {
                self.to_string()
            }

            /// The first `n` hex digits, for human-facing tables (`n` is clamped to 64).
            pub fn short(&self, n: usize) -> String {
                let mut s = self.to_string();
                s.truncate(n.min(64));
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, "("))?;
                write_hex(&self.0, f)?;
                write!(f, ")")
            }
        }

        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self, StoreError> {
                parse_hex32(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The name of a blob: the blake3 hash of its bytes.
///
/// `Display` and serde use 64 lowercase hex digits; `FromStr` accepts exactly that.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobId(pub [u8; 32]);
hex_id!(BlobId, "BlobId");

impl BlobId {
    /// The id of `bytes` (their blake3 hash).
    pub fn of(bytes: &[u8]) -> BlobId {
        BlobId(*blake3::hash(bytes).as_bytes())
    }
}

impl From<blake3::Hash> for BlobId {
    fn from(h: blake3::Hash) -> Self {
        BlobId(*h.as_bytes())
    }
}

/// An artifact (a tree of files) is named by the hash of its canonical manifest blob.
pub type ArtifactId = BlobId;

/// A result is named by the hash of its result manifest blob.
pub type ResultId = BlobId;

/// A stage's cache key. The engine computes it (see DESIGN §3); the store only files results
/// under it. Same spelling and traits as [`BlobId`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageKey(pub [u8; 32]);
hex_id!(StageKey, "StageKey");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let id = BlobId::of(b"hello");
        let s = id.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(s.parse::<BlobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        let key = StageKey(id.0);
        assert_eq!(key.to_string(), s);
    }

    #[test]
    fn rejects_bad_spellings() {
        let upper = BlobId::of(b"x").to_string().to_uppercase();
        assert!(upper.parse::<BlobId>().is_err());
        assert!("abc".parse::<BlobId>().is_err());
        let err = "zz".repeat(32).parse::<BlobId>().unwrap_err().to_string();
        assert!(err.contains("hexadecimal"), "{err}");
        assert!(serde_json::from_str::<StageKey>("\"12\"").is_err());
    }
}

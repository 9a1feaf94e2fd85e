//! Typed reads of GGUF metadata, with errors that name the file and the key.
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;

use crate::GgufError;

/// The metadata of one file.
pub(crate) struct Meta<'a> {
    pub path: &'a Path,
    pub values: &'a HashMap<String, Value>,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::U8(_) | Value::U16(_) | Value::U32(_) | Value::U64(_) => "an unsigned integer",
        Value::I8(_) | Value::I16(_) | Value::I32(_) | Value::I64(_) => "an integer",
        Value::F32(_) | Value::F64(_) => "a float",
        Value::Bool(_) => "a bool",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
    }
}

/// A non-negative integer of any width.
fn as_u64(v: &Value) -> Option<u64> {
    match *v {
        Value::U8(x) => Some(x.into()),
        Value::U16(x) => Some(x.into()),
        Value::U32(x) => Some(x.into()),
        Value::U64(x) => Some(x),
        Value::I8(x) => u64::try_from(x).ok(),
        Value::I16(x) => u64::try_from(x).ok(),
        Value::I32(x) => u64::try_from(x).ok(),
        Value::I64(x) => u64::try_from(x).ok(),
        _ => None,
    }
}

impl<'a> Meta<'a> {
    pub fn error(&self, key: &str, message: impl Into<String>) -> GgufError {
        GgufError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn wrong_type(&self, key: &str, want: &str, v: &Value) -> GgufError {
        self.error(key, format!("expected {want}, found {}", kind(v)))
    }

    pub fn has(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>, GgufError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong_type(key, "a string", v)),
        }
    }

    pub fn str(&self, key: &str) -> Result<&'a str, GgufError> {
        self.opt_str(key)?
            .ok_or_else(|| self.error(key, "missing (a string is required)"))
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(v) => as_u64(v)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v)),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self
            .opt_u64(key)?
            .ok_or_else(|| self.error(key, "missing (an integer is required)"))?;
        usize::try_from(v).map_err(|_| self.error(key, format!("{v} does not fit in memory")))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) => usize::try_from(v)
                .map(Some)
                .map_err(|_| self.error(key, format!("{v} does not fit in memory"))),
        }
    }

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| self.error(key, format!("{v} is not a token id"))),
        }
    }

    /// A float, as the shortest decimal that reads back as the stored value: GGUF stores
    /// `1e-5` as the f32 nearest to it, which should be written to `config.json` as `1e-05`
    /// and not as `9.999999747378752e-06`.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => {
                let shortest = format!("{x}");
                Ok(Some(shortest.parse::<f64>().unwrap_or(f64::from(*x))))
            }
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(v) => Err(self.wrong_type(key, "a float", v)),
        }
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(key, "a bool", v)),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, GgufError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(v) => Err(self.wrong_type(key, "an array", v)),
        }
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<Vec<&'a str>>, GgufError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.wrong_type(&format!("{key}[{i}]"), "a string", v)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    pub fn opt_int_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(items) = self.array(key)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match *v {
                Value::I32(x) => Ok(i64::from(x)),
                Value::U32(x) => Ok(i64::from(x)),
                Value::I8(x) => Ok(i64::from(x)),
                Value::U8(x) => Ok(i64::from(x)),
                Value::I16(x) => Ok(i64::from(x)),
                Value::U16(x) => Ok(i64::from(x)),
                Value::I64(x) => Ok(x),
                ref v => Err(self.wrong_type(&format!("{key}[{i}]"), "an integer", v)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

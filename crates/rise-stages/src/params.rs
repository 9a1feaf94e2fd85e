//! Stage params: one typed definition per param, with its range, default and doc.
//!
//! Each kind declares its params once with [`stage_params!`](crate::stage_params): a struct
//! (`TrainParams`, ...) that the stage reads with [`TypedParams::params`], and, generated from
//! the same lines, the list of [`Field`]s (`TrainParams::FIELDS`) against which [`resolve`]
//! checks a pipeline's `params` table (unknown names, wrong types, out-of-range values) and fills
//! in every default, so that the cache key sees the full configuration and `rise plan` can show
//! it. [`document`] writes the help text from the same list, defaults included.
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use rise_engine::{ParamError, StageContext, StageError};

/// A param's type and accepted range.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// An integer in `min..=max`.
    Int {
        /// The smallest accepted value.
        min: i64,
        /// The largest accepted value.
        max: i64,
    },
    /// A finite float in `[min, max]`, or `(min, max]` when `open_min`.
    Float {
        /// The lower bound (accepted unless `open_min`).
        min: f64,
        /// The largest accepted value.
        max: f64,
        /// Whether `min` itself is refused (a strictly positive learning rate, say).
        open_min: bool,
    },
    /// `true` or `false`.
    Bool,
    /// Any non-empty string.
    Str,
    /// Any string, empty included.
    Text,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A file path (relative to the pipeline file); its content enters the cache key.
    File,
    /// A directory path (relative to the pipeline file); the content of the files under it
    /// enters the cache key.
    Dir,
    /// A table, checked by the function (which returns the table with its defaults filled in).
    Table(fn(&Value) -> Result<Value, String>),
    /// A list of strings.
    StrList,
}

/// One param of a stage kind.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    /// The key in the stage's `params` table (and the struct field's name).
    pub name: &'static str,
    /// What values the key accepts.
    pub ty: Ty,
    /// JSON text of the default; `None` makes the field required, `Some("null")` optional.
    pub default: Option<&'static str>,
    /// One line for `--help` and `rise plan`: what the param does, with its unit.
    pub doc: &'static str,
}

impl Field {
    /// A param with a default (`default` is its JSON text).
    pub const fn new(name: &'static str, ty: Ty, default: &'static str, doc: &'static str) -> Self {
        Field {
            name,
            ty,
            default: Some(default),
            doc,
        }
    }
    /// A param the pipeline must set (no default).
    pub const fn required(name: &'static str, ty: Ty, doc: &'static str) -> Self {
        Field {
            name,
            ty,
            default: None,
            doc,
        }
    }
    /// A param that resolves to `null` when the pipeline leaves it out.
    pub const fn optional(name: &'static str, ty: Ty, doc: &'static str) -> Self {
        Field {
            name,
            ty,
            default: Some("null"),
            doc,
        }
    }
}

/// [`Ty::Int`] in `min..=max`.
pub const fn int(min: i64, max: i64) -> Ty {
    Ty::Int { min, max }
}
/// [`Ty::Float`] in `[min, max]`.
pub const fn float(min: f64, max: f64) -> Ty {
    Ty::Float {
        min,
        max,
        open_min: false,
    }
}
/// [`Ty::Float`] in `(0, max]`: strictly positive.
pub const fn pos_float(max: f64) -> Ty {
    Ty::Float {
        min: 0.0,
        max,
        open_min: true,
    }
}

fn describe(ty: &Ty) -> String {
    match ty {
        Ty::Int { min, max } => format!("an integer in {min}..={max}"),
        Ty::Float {
            min,
            max,
            open_min: false,
        } => format!("a number in [{min}, {max}]"),
        Ty::Float {
            min,
            max,
            open_min: true,
        } => format!("a number in ({min}, {max}]"),
        Ty::Bool => "true or false".into(),
        Ty::Str => "a non-empty string".into(),
        Ty::Text => "a string".into(),
        Ty::Choice(c) => format!(
            "one of {}",
            c.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ty::File => "a file path (string)".into(),
        Ty::Dir => "a directory path (string)".into(),
        Ty::Table(_) => "a table".into(),
        Ty::StrList => "a list of strings".into(),
    }
}

fn check(field: &Field, v: &Value) -> Result<Value, String> {
    let want = || format!("expected {}, got {}", describe(&field.ty), short(v));
    match field.ty {
        Ty::Int { min, max } => {
            let i = v.as_i64().ok_or_else(want)?;
            if i < min || i > max {
                return Err(want());
            }
            Ok(Value::from(i))
        }
        Ty::Float { min, max, open_min } => {
            // TOML writes `lr = 1` as an integer; accept it as the float it means.
            let f = v.as_f64().ok_or_else(want)?;
            let low_ok = if open_min { f > min } else { f >= min };
            if !f.is_finite() || !low_ok || f > max {
                return Err(want());
            }
            Ok(Value::from(f))
        }
        Ty::Bool => v.as_bool().map(Value::from).ok_or_else(want),
        Ty::Text => v.as_str().map(|_| v.clone()).ok_or_else(want),
        Ty::Str | Ty::File | Ty::Dir => match v.as_str() {
            Some(s) if !s.is_empty() => Ok(v.clone()),
            _ => Err(want()),
        },
        Ty::Choice(choices) => match v.as_str() {
            Some(s) if choices.contains(&s) => Ok(v.clone()),
            _ => Err(want()),
        },
        Ty::Table(f) => {
            if !v.is_object() {
                return Err(want());
            }
            f(v)
        }
        Ty::StrList => match v.as_array() {
            Some(a) if a.iter().all(Value::is_string) => Ok(v.clone()),
            _ => Err(want()),
        },
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 40 {
        format!("{}…", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

/// Checks `params` against `fields` and returns them with defaults filled in. Field paths in
/// errors are `params.NAME`.
pub fn resolve(fields: &[Field], params: &Value) -> Result<Value, ParamError> {
    let empty = Map::new();
    let given = match params {
        Value::Object(m) => m,
        Value::Null => &empty,
        other => {
            return Err(ParamError::new(
                "params",
                format!("expected a table, got {}", short(other)),
            ))
        }
    };
    for name in given.keys() {
        if !fields.iter().any(|f| f.name == name) {
            let known: Vec<&str> = fields.iter().map(|f| f.name).collect();
            let msg = if known.is_empty() {
                "this kind takes no params".to_string()
            } else {
                format!("unknown param; this kind takes: {}", known.join(", "))
            };
            return Err(ParamError::new(format!("params.{name}"), msg));
        }
    }
    let mut out = Map::new();
    for f in fields {
        let path = format!("params.{}", f.name);
        let value = match (given.get(f.name), f.default) {
            // An explicit null for an optional field: what resolving writes, so resolved
            // params resolve to themselves.
            (Some(Value::Null), Some("null")) => Value::Null,
            (Some(v), _) => check(f, v).map_err(|m| ParamError::new(&path, m))?,
            (None, None) => {
                return Err(ParamError::new(
                    &path,
                    format!("required: {} ({})", f.doc, describe(&f.ty)),
                ))
            }
            (None, Some(text)) => {
                // Defaults are written by us; a bad one is a bug caught by the schema tests.
                let v: Value = serde_json::from_str(text).map_err(|e| {
                    ParamError::new(&path, format!("internal: bad default {text:?}: {e}"))
                })?;
                if v.is_null() {
                    v
                } else {
                    check(f, &v)
                        .map_err(|m| ParamError::new(&path, format!("internal: default {m}")))?
                }
            }
        };
        out.insert(f.name.to_string(), value);
    }
    Ok(Value::Object(out))
}

/// A stage's resolved params as its kind's typed struct: `let p: TrainParams = ctx.params()?`.
pub trait TypedParams {
    /// Deserializes the resolved params. The engine resolved them against the same struct's
    /// [`Field`]s, so a failure means they did not come through this kind's `resolve`.
    fn params<T: DeserializeOwned>(&self) -> Result<T, StageError>;
}

impl TypedParams for StageContext {
    fn params<T: DeserializeOwned>(&self) -> Result<T, StageError> {
        T::deserialize(&self.params).map_err(|e| {
            StageError::msg(format!(
                "stage {}: params: {e} (params were not resolved by this kind)",
                self.stage
            ))
        })
    }
}

/// The value of every param with a default, as the typed struct: what a pipeline that sets
/// none of them gets. `None` when a param is required.
pub fn defaults<T: DeserializeOwned>(fields: &[Field]) -> Option<T> {
    let resolved = resolve(fields, &Value::Null).ok()?;
    T::deserialize(&resolved).ok()
}

/// Checks one value against the param `name` of `fields` (for code that takes the same
/// setting outside a pipeline, such as the trainer's config): the bound stays in one place.
pub fn check_value(fields: &[Field], name: &str, value: &Value) -> Result<(), String> {
    let field = fields
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("no param `{name}`"))?;
    check(field, value).map(|_| ())
}

/// Declares a kind's params once: the typed struct its stage reads, and its schema
/// (`NAME::FIELDS`: names, ranges, defaults and docs, in declaration order).
///
/// ```text
/// stage_params! {
///     /// The `sample` kind's params.
///     pub struct SampleParams {
///         ..sampling: SamplingParams;                         // a shared group, flattened
///         turns: usize = int(1, 16), default 1, "on-policy turns per prompt";
///         limit: Option<usize> = int(1, i64::MAX), optional, "use only the first N prompts";
///     }
/// }
/// ```
///
/// A default is one token of JSON (`1.0`, `"all"`, `[]`, `{}`), written into the schema as
/// text, so the help text shows exactly the default the stage gets. A group may set defaults of
/// its params that differ per kind: `..training: TrainingParams { lr = 0.001, epochs = 3.0 };`.
/// `optional` params resolve to `null` when absent (`Option` in the struct); `required`
/// params have no default.
#[macro_export]
macro_rules! stage_params {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $crate::stage_params!(@munch [$(#[$meta])*] $name [] [] $($body)*);
    };
    (@munch $metas:tt $name:ident [$($fields:tt)*] [$($parts:tt)*]
        $(#[$fm:meta])* .. $field:ident : $ty:ty $({ $($k:ident = $d:tt),* $(,)? })? ; $($rest:tt)*) => {
        $crate::stage_params!(@munch $metas $name
            [$($fields)* $(#[$fm])*
                #[doc = concat!("The shared `", stringify!($ty),
                    "` params, flattened: their keys sit in this stage's own table.")]
                #[serde(flatten)] pub $field: $ty,]
            [$($parts)* &$crate::params::with_defaults::<{ <$ty>::FIELDS.len() }>(
                <$ty>::FIELDS, &[$($((stringify!($k), stringify!($d))),*)?]),]
            $($rest)*);
    };
    (@munch $metas:tt $name:ident [$($fields:tt)*] [$($parts:tt)*]
        $field:ident : $ty:ty = $schema:expr, default $d:tt, $doc:expr ; $($rest:tt)*) => {
        $crate::stage_params!(@munch $metas $name
            [$($fields)* #[doc = $doc] pub $field: $ty,]
            [$($parts)* &[$crate::params::Field::new(stringify!($field), $schema, stringify!($d), $doc)],]
            $($rest)*);
    };
    (@munch $metas:tt $name:ident [$($fields:tt)*] [$($parts:tt)*]
        $field:ident : $ty:ty = $schema:expr, optional, $doc:expr ; $($rest:tt)*) => {
        $crate::stage_params!(@munch $metas $name
            [$($fields)* #[doc = $doc] pub $field: $ty,]
            [$($parts)* &[$crate::params::Field::optional(stringify!($field), $schema, $doc)],]
            $($rest)*);
    };
    (@munch $metas:tt $name:ident [$($fields:tt)*] [$($parts:tt)*]
        $field:ident : $ty:ty = $schema:expr, required, $doc:expr ; $($rest:tt)*) => {
        $crate::stage_params!(@munch $metas $name
            [$($fields)* #[doc = $doc] pub $field: $ty,]
            [$($parts)* &[$crate::params::Field::required(stringify!($field), $schema, $doc)],]
            $($rest)*);
    };
    (@munch [$($meta:tt)*] $name:ident [$($fields:tt)*] [$($parts:tt)*]) => {
        $($meta)*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub struct $name {
            $($fields)*
        }

        impl $name {
            const PARTS: &'static [&'static [$crate::params::Field]] = &[$($parts)*];
            /// The schema of these params, in declaration order.
            pub const FIELDS: &'static [$crate::params::Field] =
                &$crate::params::concat::<{ $crate::params::count($name::PARTS) }>($name::PARTS);
        }
    };
}

/// Fields in `parts` together (for [`stage_params!`](crate::stage_params)).
pub const fn count(parts: &[&[Field]]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// `parts` as one list (for [`stage_params!`](crate::stage_params)); `N` must be
/// [`count`]`(parts)`.
pub const fn concat<const N: usize>(parts: &[&[Field]]) -> [Field; N] {
    let mut out = [Field::optional("", Ty::Bool, ""); N];
    let (mut n, mut i) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[n] = parts[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N, "concat: N is not the number of fields");
    out
}

/// `fields` with the defaults of some replaced (JSON text by name; for
/// [`stage_params!`](crate::stage_params)). Naming a field that does not exist fails the build.
pub const fn with_defaults<const N: usize>(
    fields: &[Field],
    defaults: &[(&'static str, &'static str)],
) -> [Field; N] {
    let mut out = [Field::optional("", Ty::Bool, ""); N];
    assert!(
        fields.len() == N,
        "with_defaults: N is not the number of fields"
    );
    let mut i = 0;
    while i < N {
        out[i] = fields[i];
        i += 1;
    }
    let mut d = 0;
    while d < defaults.len() {
        let mut found = false;
        let mut i = 0;
        while i < N {
            if same(out[i].name, defaults[d].0) {
                out[i].default = Some(defaults[d].1);
                found = true;
            }
            i += 1;
        }
        assert!(
            found,
            "with_defaults: a default for a param the group does not have"
        );
        d += 1;
    }
    out
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Markdown documentation of a schema, for `--help`-style listings and the README.
pub fn document(fields: &[Field]) -> String {
    let mut s = String::new();
    for f in fields {
        let default = match f.default {
            None => "required".to_string(),
            Some("null") => "optional".to_string(),
            Some(d) => format!("default {d}"),
        };
        s.push_str(&format!(
            "- `{}` ({}; {}): {}\n",
            f.name,
            describe(&f.ty),
            default,
            f.doc
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIELDS: &[Field] = &[
        Field::new("lr", pos_float(1.0), "0.001", "learning rate"),
        Field::new("steps", int(1, 1000), "10", "optimizer steps"),
        Field::new("mode", Ty::Choice(&["a", "b"]), "\"a\"", "mode"),
        Field::required("path", Ty::File, "input file"),
        Field::optional("note", Ty::Str, "a note"),
    ];

    #[test]
    fn defaults_are_filled_and_ints_become_floats() {
        let r = resolve(FIELDS, &json!({"path": "x.jsonl", "lr": 1})).unwrap();
        assert_eq!(
            r,
            json!({"lr": 1.0, "steps": 10, "mode": "a", "path": "x.jsonl", "note": null})
        );
    }

    #[test]
    fn resolving_is_idempotent() {
        let r = resolve(FIELDS, &json!({"path": "x.jsonl"})).unwrap();
        assert_eq!(resolve(FIELDS, &r).unwrap(), r);
    }

    #[test]
    fn errors_name_the_field() {
        let e = resolve(FIELDS, &json!({"path": "p", "lr": "fast"})).unwrap_err();
        assert_eq!(e.field, "params.lr");
        assert!(e.message.contains("expected a number in (0, 1]"), "{e}");
        let e = resolve(FIELDS, &json!({"path": "p", "stpes": 3})).unwrap_err();
        assert_eq!(e.field, "params.stpes");
        assert!(e.message.contains("steps"), "{e}");
        let e = resolve(FIELDS, &json!({})).unwrap_err();
        assert_eq!(e.field, "params.path");
        let e = resolve(FIELDS, &json!({"path": "p", "steps": 0})).unwrap_err();
        assert_eq!(e.field, "params.steps");
        let e = resolve(FIELDS, &json!({"path": "p", "mode": "c"})).unwrap_err();
        assert!(e.message.contains("\"a\", \"b\""), "{e}");
    }

    #[test]
    fn documentation_lists_every_field() {
        let d = document(FIELDS);
        assert_eq!(d.lines().count(), FIELDS.len());
        assert!(d.contains("`path` (a file path (string); required)"));
    }
}

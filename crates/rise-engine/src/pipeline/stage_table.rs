//! One stage table (`[stage.NAME]` or an `[iter.stage.NAME]` template): its kind, inputs,
//! params, seed and kind fields, each checked and located.
use std::collections::BTreeMap;

use serde_json::Value;

use super::{
    check_name, describe, to_json, toml_type, Errors, RawStage, ENGINE_FIELDS, MAX_SHARDS,
};

/// One `[stage.NAME]` or `[iter.stage.NAME]` table, before its references are resolved.
/// `None` when it has errors (they are in `errors`).
pub(super) fn parse_stage(
    name: &str,
    origin: &str,
    v: &toml::Value,
    errors: &mut Errors<'_>,
) -> Option<RawStage> {
    if let Err(msg) = check_name(name) {
        errors.at(origin, msg);
        return None;
    }
    let toml::Value::Table(t) = v else {
        errors.at(
            origin,
            format!("expected a table [{origin}], got {}", toml_type(v)),
        );
        return None;
    };
    // Every part is checked, so one pass reports all of a stage's errors.
    let kind = parse_kind(t, origin, errors);
    let inputs = parse_inputs(t, origin, errors);
    let params = parse_params(t, origin, errors);
    let seed = parse_seed(t, origin, errors);
    let shards = parse_shards(t, origin, errors);
    let kind_fields = parse_kind_fields(t, origin, errors);
    Some(RawStage {
        name: name.to_string(),
        origin: origin.to_string(),
        kind: kind?,
        inputs: inputs?,
        params: params?,
        kind_fields: kind_fields?,
        seed: seed?,
        shards: shards?,
        offset: errors.src.offset(origin),
    })
}

/// `kind`: the stage kind's name.
fn parse_kind(t: &toml::Table, origin: &str, errors: &mut Errors<'_>) -> Option<String> {
    let mut ok = true;
    let kind = match t.get("kind") {
        Some(toml::Value::String(k)) if !k.is_empty() => k.clone(),
        Some(other @ toml::Value::String(_)) | Some(other)
            if !matches!(other, toml::Value::String(_)) =>
        {
            errors.at(
                &format!("{origin}.kind"),
                format!("expected a string, got {}", toml_type(other)),
            );
            ok = false;
            String::new()
        }
        Some(_) => {
            errors.at(&format!("{origin}.kind"), "must not be empty");
            ok = false;
            String::new()
        }
        None => {
            errors.at(origin, "missing `kind = \"...\"`");
            ok = false;
            String::new()
        }
    };
    ok.then_some(kind)
}

/// `inputs`: input name -> stage reference, as written.
fn parse_inputs(
    t: &toml::Table,
    origin: &str,
    errors: &mut Errors<'_>,
) -> Option<BTreeMap<String, String>> {
    let mut ok = true;
    let mut inputs = BTreeMap::new();
    match t.get("inputs") {
        None => {}
        Some(toml::Value::Table(m)) => {
            for (input, target) in m {
                let field = format!("{origin}.inputs.{input}");
                if input.is_empty() {
                    errors.at(
                        &field,
                        "an input name must not be empty (it becomes $RISE_IN_<NAME> and a directory name)",
                    );
                    ok = false;
                    continue;
                }
                match target {
                    toml::Value::String(s) if !s.is_empty() => {
                        inputs.insert(input.clone(), s.clone());
                    }
                    other => {
                        errors.at(
                            &field,
                            format!("expected a stage name, got {}", describe(other)),
                        );
                        ok = false;
                    }
                }
            }
        }
        Some(other) => {
            errors.at(
                &format!("{origin}.inputs"),
                format!(
                    "expected a table of input = \"stage\", got {}",
                    toml_type(other)
                ),
            );
            ok = false;
        }
    }
    ok.then_some(inputs)
}

/// `params` as JSON.
fn parse_params(
    t: &toml::Table,
    origin: &str,
    errors: &mut Errors<'_>,
) -> Option<serde_json::Map<String, Value>> {
    let mut ok = true;
    let params = match t.get("params") {
        None => serde_json::Map::new(),
        Some(v @ toml::Value::Table(t)) => {
            if t.contains_key("") {
                // `params = { "" = 1 }`: TOML allows the quoted empty key, but a param needs a
                // name to be found by (and a shell stage, an environment variable name).
                errors.at(
                    &format!("{origin}.params."),
                    "a param name must not be empty",
                );
                ok = false;
            }
            match to_json(v, &format!("{origin}.params"), errors.src) {
                Ok(Value::Object(m)) => m,
                Ok(_) => serde_json::Map::new(),
                Err(e) => {
                    errors.list.push(e);
                    ok = false;
                    serde_json::Map::new()
                }
            }
        }
        Some(other) => {
            errors.at(
                &format!("{origin}.params"),
                format!("expected a table, got {}", toml_type(other)),
            );
            ok = false;
            serde_json::Map::new()
        }
    };
    ok.then_some(params)
}

/// `seed`, if the stage sets its own.
fn parse_seed(t: &toml::Table, origin: &str, errors: &mut Errors<'_>) -> Option<Option<u64>> {
    let mut ok = true;
    let seed = match t.get("seed") {
        None => None,
        Some(toml::Value::Integer(i)) if *i >= 0 => Some(*i as u64),
        Some(other) => {
            errors.at(
                &format!("{origin}.seed"),
                format!("expected an integer >= 0, got {}", describe(other)),
            );
            ok = false;
            None
        }
    };
    ok.then_some(seed)
}

/// `shards = N`: the stage runs as N instances, each on its part of the work, and a merge
/// step (see [`super::shards`]).
fn parse_shards(t: &toml::Table, origin: &str, errors: &mut Errors<'_>) -> Option<Option<u32>> {
    match t.get("shards") {
        None => Some(None),
        Some(toml::Value::Integer(i)) if (1..=i64::from(MAX_SHARDS)).contains(i) => {
            Some(Some(*i as u32))
        }
        Some(other) => {
            errors.at(
                &format!("{origin}.shards"),
                format!(
                    "expected an integer from 1 to {MAX_SHARDS}, got {}",
                    describe(other)
                ),
            );
            None
        }
    }
}

/// Fields other than [`ENGINE_FIELDS`], as JSON, for the kind to check.
fn parse_kind_fields(
    t: &toml::Table,
    origin: &str,
    errors: &mut Errors<'_>,
) -> Option<serde_json::Map<String, Value>> {
    let mut ok = true;
    let mut kind_fields = serde_json::Map::new();
    for (k, v) in t {
        if ENGINE_FIELDS.contains(&k.as_str()) {
            continue;
        }
        match to_json(v, &format!("{origin}.{k}"), errors.src) {
            Ok(j) => {
                kind_fields.insert(k.clone(), j);
            }
            Err(e) => {
                errors.list.push(e);
                ok = false;
            }
        }
    }
    ok.then_some(kind_fields)
}

//! Iteration templates: `[iterations]` and `[iter.stage.NAME]`, expanded into instances
//! `iter1/NAME` ... `iterN/NAME`, and input references (`@prev.X`, `@last.X`, `iterK/X`,
//! plain names) resolved to stage names.
use std::collections::{BTreeMap, BTreeSet};

use super::suggest::suggest;
use super::{finish, parse_stage, toml_type, Errors, RawStage, StageDef};

/// `[iterations]`: how many iterations, and what `@prev.X` means in iteration 1.
pub(super) fn parse_iterations(
    doc: &toml::Table,
    errors: &mut Errors<'_>,
) -> (u32, BTreeMap<String, String>) {
    let mut count = 0u32;
    let mut init: BTreeMap<String, String> = BTreeMap::new();
    match doc.get("iterations") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                let field = format!("iterations.{k}");
                match (k.as_str(), v) {
                    ("count", toml::Value::Integer(i)) if (0..=10_000).contains(i) => {
                        count = *i as u32
                    }
                    ("count", toml::Value::Integer(i)) => {
                        errors.at(&field, format!("must be between 0 and 10000, got {i}"))
                    }
                    ("count", other) => errors.at(
                        &field,
                        format!("expected an integer, got {}", toml_type(other)),
                    ),
                    ("init", toml::Value::Table(m)) => {
                        for (ik, iv) in m {
                            match iv {
                                toml::Value::String(s) => {
                                    init.insert(ik.clone(), s.clone());
                                }
                                other => errors.at(
                                    &format!("iterations.init.{ik}"),
                                    format!("expected a stage name, got {}", toml_type(other)),
                                ),
                            }
                        }
                    }
                    ("init", other) => errors.at(
                        &field,
                        format!("expected a table, got {}", toml_type(other)),
                    ),
                    _ => errors.at(&field, "unknown field; [iterations] has count and init"),
                }
            }
            if !t.contains_key("count") {
                errors.at("iterations", "missing `count = N`");
            }
        }
        Some(other) => errors.at(
            "iterations",
            format!("expected a table, got {}", toml_type(other)),
        ),
    }
    (count, init)
}

/// The `[iter.stage.NAME]` templates.
pub(super) fn parse_templates(doc: &toml::Table, errors: &mut Errors<'_>) -> Vec<RawStage> {
    let mut templates = Vec::new();
    match doc.get("iter") {
        None => {}
        Some(toml::Value::Table(t)) => {
            for (k, v) in t {
                if k != "stage" {
                    errors.at(
                        &format!("iter.{k}"),
                        "unknown table; templates are [iter.stage.NAME]",
                    );
                    continue;
                }
                match v {
                    toml::Value::Table(stages) => {
                        for (stage_name, sv) in stages {
                            let origin = format!("iter.stage.{stage_name}");
                            if let Some(raw) = parse_stage(stage_name, &origin, sv, errors) {
                                templates.push(raw);
                            }
                        }
                    }
                    other => errors.at(
                        "iter.stage",
                        format!("expected tables, got {}", toml_type(other)),
                    ),
                }
            }
            if doc.get("iterations").is_none() {
                errors.at(
                    "iter",
                    "iteration templates need an [iterations] table with `count = N`",
                );
            }
        }
        Some(other) => errors.at(
            "iter",
            format!("expected a table, got {}", toml_type(other)),
        ),
    }
    templates
}

/// Every stage definition: top-level stages and `count` instances of each template, input
/// references resolved to stage names, in file order (instances where their templates are,
/// iteration by iteration).
pub(super) fn expand(
    top: &[RawStage],
    templates: &[RawStage],
    count: u32,
    init: &BTreeMap<String, String>,
    seed: u64,
    errors: &mut Errors<'_>,
) -> Vec<StageDef> {
    let top_names: BTreeSet<&str> = top.iter().map(|s| s.name.as_str()).collect();
    let template_names: BTreeSet<&str> = templates.iter().map(|s| s.name.as_str()).collect();
    for (k, target) in init {
        let field = format!("iterations.init.{k}");
        if !template_names.contains(k.as_str()) {
            errors.at(&field, format!("no template [iter.stage.{k}]; init names what `@prev.{k}` means in iteration 1"));
        }
        if !top_names.contains(target.as_str()) {
            errors.at(
                &field,
                format!(
                    "unknown stage `{target}`{}",
                    suggest(target, top_names.iter().copied())
                ),
            );
        }
    }
    let all_names: Vec<String> = top
        .iter()
        .map(|s| s.name.clone())
        .chain(
            (1..=count).flat_map(|i| templates.iter().map(move |t| format!("iter{i}/{}", t.name))),
        )
        .collect();

    // Resolve references. Stages are ordered by where they appear in the file.
    let mut stages: Vec<(usize, u32, StageDef)> = Vec::new();
    for raw in top {
        let mut inputs = BTreeMap::new();
        for (input, target) in &raw.inputs {
            let field = format!("{}.inputs.{input}", raw.origin);
            match resolve_ref(target, None, count, &top_names, &template_names, init) {
                Ok(resolved) => {
                    inputs.insert(input.clone(), resolved);
                }
                Err(msg) => errors.at(&field, with_suggestion(msg, target, &all_names)),
            }
        }
        stages.push((
            raw.offset,
            0,
            finish(raw, raw.name.clone(), inputs, seed, None, errors),
        ));
    }
    for i in 1..=count {
        for raw in templates {
            let mut inputs = BTreeMap::new();
            for (input, target) in &raw.inputs {
                let field = format!("{}.inputs.{input}", raw.origin);
                match resolve_ref(target, Some(i), count, &top_names, &template_names, init) {
                    Ok(resolved) => {
                        inputs.insert(input.clone(), resolved);
                    }
                    Err(msg) => errors.at(&field, with_suggestion(msg, target, &all_names)),
                }
            }
            let name = format!("iter{i}/{}", raw.name);
            let iteration = Some((raw.name.clone(), i));
            stages.push((
                raw.offset,
                i,
                finish(raw, name, inputs, seed, iteration, errors),
            ));
        }
    }
    // Templates sit where they are written; instances of one template are ordered by iteration,
    // and all of iteration 1 comes before iteration 2 (so `rise plan` reads like the run).
    let template_start = templates.iter().map(|t| t.offset).min().unwrap_or(0);
    stages.sort_by_key(|(offset, iter, _)| {
        if *iter == 0 {
            (*offset, 0, 0)
        } else {
            (template_start, *iter, *offset)
        }
    });
    stages.into_iter().map(|(_, _, s)| s).collect()
}

/// Resolve one input reference to a stage name. `iteration` is `Some(i)` inside template i.
fn resolve_ref(
    target: &str,
    iteration: Option<u32>,
    count: u32,
    top: &BTreeSet<&str>,
    templates: &BTreeSet<&str>,
    init: &BTreeMap<String, String>,
) -> Result<String, String> {
    if let Some(x) = target.strip_prefix("@prev.") {
        let Some(i) = iteration else {
            return Err(format!(
                "`{target}`: @prev is only meaningful inside an [iter.stage.*] template"
            ));
        };
        if !templates.contains(x) {
            return Err(format!("`{target}`: there is no template [iter.stage.{x}]"));
        }
        if i == 1 {
            return init.get(x).cloned().ok_or_else(|| {
                format!("`{target}` in iteration 1 needs `init = {{ {x} = \"STAGE\" }}` in [iterations]")
            });
        }
        return Ok(format!("iter{}/{x}", i - 1));
    }
    if let Some(x) = target.strip_prefix("@last.") {
        if iteration.is_some() {
            return Err(format!(
                "`{target}`: @last inside a template would depend on a later iteration; use @prev"
            ));
        }
        if !templates.contains(x) {
            return Err(format!("`{target}`: there is no template [iter.stage.{x}]"));
        }
        if count == 0 {
            return Err(format!(
                "`{target}`: iterations.count is 0, so there is no last iteration"
            ));
        }
        return Ok(format!("iter{count}/{x}"));
    }
    if target.starts_with('@') {
        return Err(format!(
            "`{target}`: unknown reference; use a stage name, iterK/NAME, @prev.NAME or @last.NAME"
        ));
    }
    if let Some((iter, x)) = target.split_once('/') {
        let k = iter
            .strip_prefix("iter")
            .and_then(|n| n.parse::<u32>().ok());
        return match k {
            Some(k) if (1..=count).contains(&k) && templates.contains(x) => {
                if iteration.is_some_and(|i| k >= i) {
                    Err(format!(
                        "`{target}`: iteration {} cannot depend on iteration {k}",
                        iteration.unwrap_or(0)
                    ))
                } else {
                    Ok(target.to_string())
                }
            }
            Some(k) if !(1..=count).contains(&k) => Err(format!(
                "unknown stage `{target}`: iterations run from 1 to {count}"
            )),
            _ => Err(format!("unknown stage `{target}`")),
        };
    }
    if let Some(i) = iteration {
        if templates.contains(target) {
            return Ok(format!("iter{i}/{target}"));
        }
    }
    if top.contains(target) {
        return Ok(target.to_string());
    }
    Err(format!("unknown stage `{target}`"))
}

fn with_suggestion(msg: String, target: &str, names: &[String]) -> String {
    if msg.starts_with("unknown stage") {
        format!("{msg}{}", suggest(target, names.iter().map(String::as_str)))
    } else {
        msg
    }
}

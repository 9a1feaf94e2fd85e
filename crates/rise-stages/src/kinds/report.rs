//! The `report` kind: every evaluated model side by side (markdown, PNG chart, JSON), paired
//! tests between them, and the paper's claims checked arm by arm.
use rise_engine::{Execution, StageContext, StageError};
use serde_json::Value;

use crate::kinds::dataset::read_json;
use crate::kinds::KindSchema;
use crate::metrics::EvalMetrics;
use crate::params::{Ty, TypedParams};
use crate::report::{Arm, ArmKind, ModelResult, Report};
use crate::stage_params;

stage_params! {
    /// The `report` kind's params.
    pub struct ReportParams {
        title: String = Ty::Str, default "RISE: accuracy over turns", "the report's heading";
        baseline: String = Ty::Str, default "base",
            "the input name of the model before RISE (the effects are checked against it)";
        order: Option<Vec<String>> = Ty::StrList, optional,
            "input names in report order (default: the baseline, the teacher, the self arm, \
             the distill arm, then the rest by name); every input must be listed";
        teacher: Option<String> = Ty::Str, optional,
            "the input name of the teacher's evaluation: reported beside the others, with the \
             teacher rule (its m1@t1 at least 10 points above the baseline's)";
        self_arm: Option<Vec<String>> = Ty::StrList, optional,
            "input names of the self-distillation iterates, in iteration order: checked \
             against the paper's self-distillation shape";
        distill_arm: Option<Vec<String>> = Ty::StrList, optional,
            "input names of the distillation iterates, in iteration order: checked against \
             the paper's headline claims";
    }
}

/// The `report` kind.
pub static SCHEMA: KindSchema = KindSchema {
    kind: "report",
    // 2: the "After the feedback" table.
    // 3: ties, earliest-wins and pass@k, change rates, McNemar tests, arms and the teacher rule.
    version: 3,
    execution: Execution::InProcess,
    required_inputs: &[],
    optional_inputs: &[],
    any_inputs: true,
    fields: ReportParams::FIELDS,
    outputs: &["report.md", "report.json", "accuracy.png"],
    about: "Collects `evaluate` outputs wired under any input names (the names label the \
            models) into `report.md` (tables with 95% intervals, paired McNemar tests between \
            metrics and between models on the same problems, and a plain statement, arm by arm, \
            of which of the paper's claims hold), `accuracy.png` (accuracy against turn for \
            every model) and `report.json`. Without `self_arm` and `distill_arm`, every input \
            but the baseline and the teacher forms one arm checked against the paper's headline \
            claims.",
    validate: None,
    omit_when_absent: &[],
};

/// Runs a `report` stage.
pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    if ctx.inputs.is_empty() {
        return Err(fail(&"no inputs: wire evaluate stages, e.g. inputs = { base = \"eval_base\", iter1 = \"iter1/evaluate\" }"));
    }
    let ReportParams {
        title,
        baseline,
        order,
        teacher,
        self_arm,
        distill_arm,
    } = ctx.params()?;
    let is_input = |field: &str, name: &str| {
        if ctx.inputs.contains_key(name) {
            Ok(())
        } else {
            Err(fail(&format!(
                "params.{field} names `{name}`, which is not an input"
            )))
        }
    };
    if let Some(t) = &teacher {
        is_input("teacher", t)?;
    }
    let mut claimed: Vec<(&str, &String)> = Vec::new();
    for (field, list) in [("self_arm", &self_arm), ("distill_arm", &distill_arm)] {
        for name in list.iter().flatten() {
            is_input(field, name)?;
            if *name == baseline || Some(name) == teacher.as_ref() {
                return Err(fail(&format!(
                    "params.{field} lists `{name}`, the baseline or the teacher: an arm holds RISE iterates"
                )));
            }
            if let Some((other, _)) = claimed.iter().find(|(_, n)| *n == name) {
                return Err(fail(&format!(
                    "params.{field} lists `{name}`, which params.{other} lists too"
                )));
            }
            claimed.push((field, name));
        }
    }
    let mut arms = Vec::new();
    if let Some(models) = &self_arm {
        arms.push(Arm {
            name: "self".into(),
            kind: ArmKind::SelfDistill,
            models: models.clone(),
        });
    }
    if let Some(models) = &distill_arm {
        arms.push(Arm {
            name: "distill".into(),
            kind: ArmKind::Distill,
            models: models.clone(),
        });
    }
    // The rest, by name: one undeclared arm when no arm is declared (as before arms
    // existed), else models reported without claims.
    let rest: Vec<String> = ctx
        .inputs
        .keys()
        .filter(|k| **k != baseline && Some(*k) != teacher.as_ref())
        .filter(|k| !claimed.iter().any(|(_, n)| n == k))
        .cloned()
        .collect();
    if arms.is_empty() && !rest.is_empty() {
        arms.push(Arm {
            name: "rise".into(),
            kind: ArmKind::Unspecified,
            models: rest.clone(),
        });
    }
    let names: Vec<String> = match order {
        Some(order) => {
            for name in ctx.inputs.keys() {
                if !order.contains(name) {
                    return Err(fail(&format!("params.order does not list input `{name}`")));
                }
            }
            for name in &order {
                is_input("order", name)?;
            }
            order
        }
        None => {
            let mut names = Vec::new();
            if ctx.inputs.contains_key(&baseline) {
                names.push(baseline.clone());
            }
            names.extend(teacher.iter().cloned());
            for list in [&self_arm, &distill_arm].into_iter().flatten() {
                names.extend(list.iter().cloned());
            }
            for n in rest {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            names
        }
    };
    let mut models = Vec::new();
    for name in names {
        let dir = &ctx.inputs[&name];
        let metrics: EvalMetrics = read_json(&dir.join("metrics.json")).map_err(|e| {
            fail(&format!(
                "input `{name}` is not an evaluate output (version 3 or later): {e}"
            ))
        })?;
        models.push(ModelResult {
            name,
            source: String::new(),
            metrics,
        });
    }
    let baseline = ctx.inputs.contains_key(&baseline).then_some(baseline);
    let report = Report::new(title, baseline, teacher, arms, models).map_err(|e| fail(&e))?;
    report.write(&ctx.out_dir).map_err(|e| fail(&e))?;
    let held = report.effects.iter().filter(|e| e.holds).count();
    ctx.metric("effects_holding", Value::from(held));
    ctx.metric("effects_checked", Value::from(report.effects.len()));
    for m in &report.models {
        for h in &m.metrics.headline {
            ctx.metric(&format!("{}/{}", m.name, h.key), Value::from(h.value.value));
        }
    }
    ctx.log(format!(
        "report.md, report.json, accuracy.png for {} models; {held} of {} expected effects appear",
        report.models.len(),
        report.effects.len()
    ));
    Ok(())
}

//! The `report` kind: every evaluated model side by side (markdown, PNG chart, JSON).
use rise_engine::{Execution, InputSpec, ParamError, Stage, StageContext, StageError};
use serde_json::Value;

use crate::kinds::dataset::read_json;
use crate::kinds::KindSchema;
use crate::metrics::EvalMetrics;
use crate::params::{get, Field, Ty};
use crate::report::{ModelResult, Report};

pub static SCHEMA: KindSchema = KindSchema {
    kind: "report",
    // 2: the "After the feedback" table.
    version: 2,
    execution: Execution::InProcess,
    required_inputs: &[],
    optional_inputs: &[],
    fields: &[
        Field::new("title", Ty::Str, "\"RISE: accuracy over turns\"", "the report's heading"),
        Field::new("baseline", Ty::Str, "\"base\"", "the input name of the model before RISE (the effects are checked against it)"),
        Field::optional("order", Ty::StrList, "input names in report order (default: the baseline, then the rest by name); every input must be listed"),
    ],
    outputs: &["report.md", "report.json", "accuracy.png"],
    about: "Collects `evaluate` outputs wired under any input names (the names label the \
            models) into `report.md` (tables with 95% intervals and a plain statement of which \
            of the paper's effects appear), `accuracy.png` (accuracy against turn for every \
            model) and `report.json`.",
    validate: None,
    omit_when_absent: &[],
};

/// The `report` stage kind.
pub struct ReportStage;

impl Stage for ReportStage {
    fn kind(&self) -> &'static str {
        SCHEMA.kind
    }
    fn version(&self) -> u32 {
        SCHEMA.version
    }
    fn execution(&self) -> Execution {
        SCHEMA.execution
    }
    fn inputs(&self) -> InputSpec {
        InputSpec::any()
    }
    fn resolve_params(&self, params: &Value) -> Result<Value, ParamError> {
        SCHEMA.resolve(params)
    }
    fn declared_outputs(&self, _resolved: &Value) -> Vec<String> {
        SCHEMA.outputs.iter().map(|s| s.to_string()).collect()
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
        if ctx.inputs.is_empty() {
            return Err(fail(&"no inputs: wire evaluate stages, e.g. inputs = { base = \"eval_base\", iter1 = \"iter1/evaluate\" }"));
        }
        let title: String = get(&ctx.params, "title")?;
        let baseline: String = get(&ctx.params, "baseline")?;
        let order: Option<Vec<String>> = get(&ctx.params, "order")?;
        let names: Vec<String> = match order {
            Some(order) => {
                for name in ctx.inputs.keys() {
                    if !order.contains(name) {
                        return Err(fail(&format!("params.order does not list input `{name}`")));
                    }
                }
                for name in &order {
                    if !ctx.inputs.contains_key(name) {
                        return Err(fail(&format!(
                            "params.order lists `{name}`, which is not an input"
                        )));
                    }
                }
                order
            }
            None => {
                let mut names: Vec<String> = ctx
                    .inputs
                    .keys()
                    .filter(|k| **k != baseline)
                    .cloned()
                    .collect();
                if ctx.inputs.contains_key(&baseline) {
                    names.insert(0, baseline.clone());
                }
                names
            }
        };
        let mut models = Vec::new();
        for name in names {
            let dir = &ctx.inputs[&name];
            let metrics: EvalMetrics = read_json(&dir.join("metrics.json"))
                .map_err(|e| fail(&format!("input `{name}` is not an evaluate output: {e}")))?;
            models.push(ModelResult {
                name,
                source: String::new(),
                metrics,
            });
        }
        let baseline = ctx.inputs.contains_key(&baseline).then_some(baseline);
        let report = Report::new(title, baseline, models);
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
}

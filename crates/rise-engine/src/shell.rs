//! The built-in `shell` kind: `bash -c CMD` with inputs, outputs and params in the environment.
//!
//! Params are never spliced into the command text (no quoting bugs, no injection): each becomes
//! `RISE_PARAM_<NAME>`. Inputs become `RISE_IN_<NAME>`.
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::child::{run_child, LineSink};
use crate::stage::{Execution, InputSpec, ParamError, Stage, StageContext, StageError};

/// `kind = "shell"`: fields `cmd` (required) and `outputs` (relative paths that must exist).
pub struct ShellStage;

/// Version of the shell kind's behaviour (environment it provides): part of every shell key.
pub const SHELL_VERSION: u32 = 1;

impl Stage for ShellStage {
    fn kind(&self) -> &'static str {
        "shell"
    }

    fn version(&self) -> u32 {
        SHELL_VERSION
    }

    fn execution(&self) -> Execution {
        Execution::Shell
    }

    fn inputs(&self) -> InputSpec {
        InputSpec::any()
    }

    fn fields(&self) -> &'static [&'static str] {
        &["cmd", "outputs", "deps"]
    }

    /// `deps = ["script.py"]`: files the command reads (scripts, configs); their content
    /// enters the key, so editing a script re-runs the stage.
    fn file_params(&self, resolved: &Value) -> Vec<String> {
        let n = resolved["deps"].as_array().map_or(0, Vec::len);
        (0..n).map(|i| format!("deps[{i}]")).collect()
    }

    /// Input: `{cmd, outputs?, ...params}`. Output: `{"cmd", "outputs", "params": {...}}`.
    fn resolve_params(&self, value: &Value) -> Result<Value, ParamError> {
        let Some(table) = value.as_object() else {
            return Err(ParamError::new("params", "expected a table"));
        };
        let cmd = match table.get("cmd") {
            Some(Value::String(cmd)) if !cmd.trim().is_empty() => cmd.clone(),
            Some(Value::String(_)) => return Err(ParamError::new("cmd", "is empty")),
            Some(other) => {
                return Err(ParamError::new(
                    "cmd",
                    format!("expected a string, got {}", type_name(other)),
                ))
            }
            None => {
                return Err(ParamError::new(
                    "cmd",
                    "missing: a shell stage needs `cmd = \"...\"`",
                ))
            }
        };
        let mut outputs = Vec::new();
        match table.get("outputs") {
            None => {}
            Some(Value::Array(items)) => {
                // `a/b` and `a//b/` name one file: compare paths by their components.
                let mut seen: BTreeMap<Vec<&str>, usize> = BTreeMap::new();
                for (i, item) in items.iter().enumerate() {
                    let field = format!("outputs[{i}]");
                    let Value::String(path) = item else {
                        return Err(ParamError::new(
                            field,
                            format!("expected a string, got {}", type_name(item)),
                        ));
                    };
                    check_relative(path).map_err(|msg| ParamError::new(field.clone(), msg))?;
                    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
                    if let Some(first) = seen.insert(components, i) {
                        return Err(ParamError::new(
                            field,
                            format!("`{path}` is listed twice (also outputs[{first}])"),
                        ));
                    }
                    outputs.push(Value::String(path.clone()));
                }
            }
            Some(other) => {
                return Err(ParamError::new(
                    "outputs",
                    format!(
                        "expected an array of relative paths, got {}",
                        type_name(other)
                    ),
                ))
            }
        }
        let mut deps = Vec::new();
        match table.get("deps") {
            None => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(path) if !path.is_empty() => deps.push(item.clone()),
                        other => {
                            return Err(ParamError::new(
                                format!("deps[{i}]"),
                                format!("expected a file path, got {}", type_name(other)),
                            ))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(ParamError::new(
                    "deps",
                    format!("expected an array of file paths, got {}", type_name(other)),
                ))
            }
        }
        let mut params = Map::new();
        let mut env_names: BTreeMap<String, String> = BTreeMap::new();
        for (name, v) in table {
            if name == "cmd" || name == "outputs" || name == "deps" {
                continue;
            }
            let env = env_suffix(name);
            if let Some(previous) = env_names.insert(env.clone(), name.clone()) {
                return Err(ParamError::new(
                    format!("params.{name}"),
                    format!("maps to the same variable RISE_PARAM_{env} as param `{previous}`"),
                ));
            }
            params.insert(name.clone(), v.clone());
        }
        check_exec_limits(&cmd, &params)?;
        Ok(serde_json::json!({ "cmd": cmd, "outputs": outputs, "deps": deps, "params": params }))
    }

    fn declared_outputs(&self, resolved: &Value) -> Vec<String> {
        resolved["outputs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        let cmd = shell_command(ctx)?;
        let progress = ctx.progress.clone();
        let log: LineSink = Arc::new(move |line: &[u8]| {
            progress.emit(crate::protocol::Event::Log {
                msg: String::from_utf8_lossy(line).into_owned(),
            })
        });
        let exit = run_child(cmd, &log, &ctx.progress, &ctx.cancel)?;
        if !exit.success() {
            return Err(StageError::msg(exit.failure("command")));
        }
        Ok(())
    }
}

/// The kernel's limit on one argument or environment string, terminating NUL included
/// (Linux `MAX_ARG_STRLEN`, 32 pages of 4 KiB): `execve` fails with E2BIG beyond it.
pub const MAX_ARG_STRLEN: usize = 131_072;

/// The most bytes `cmd` and the params may take together in the command's arguments and
/// environment. `execve` refuses (E2BIG) arguments plus environment over `ARG_MAX`, a quarter
/// of the stack limit: 2 MiB with the usual 8 MiB stack. Half of that is left for the
/// environment the stage inherits and the `RISE_*` variables the engine adds.
pub const MAX_EXEC_BYTES: usize = 1 << 20;

/// Refuses, when the pipeline is read, a `cmd` or param that the kernel would refuse to pass
/// to `bash` when the stage runs (E2BIG, "Argument list too long"): then the failure names the
/// param and its line instead of surfacing as a spawn error mid-run.
fn check_exec_limits(cmd: &str, params: &Map<String, Value>) -> Result<(), ParamError> {
    let e2big = "the kernel would refuse to start the command (execve fails with E2BIG, \
                 \"Argument list too long\")";
    let cmd_bytes = cmd.len() + 1;
    if cmd_bytes > MAX_ARG_STRLEN {
        return Err(ParamError::new(
            "cmd",
            format!(
                "is {} bytes; one argument may have at most {MAX_ARG_STRLEN} bytes \
                 (MAX_ARG_STRLEN), so {e2big}. Put the script in a file, list it in `deps`, \
                 and run it from cmd",
                cmd.len()
            ),
        ));
    }
    let mut total = cmd_bytes;
    for (name, v) in params {
        // `RISE_PARAM_NAME=value` and its NUL, as the kernel counts it.
        let var = format!("RISE_PARAM_{}", env_suffix(name));
        let bytes = var.len() + 1 + env_value(v).len() + 1;
        if bytes > MAX_ARG_STRLEN {
            return Err(ParamError::new(
                format!("params.{name}"),
                format!(
                    "is {bytes} bytes as the environment variable {var}; one environment \
                     string may have at most {MAX_ARG_STRLEN} bytes (MAX_ARG_STRLEN), so \
                     {e2big}. Put the value in a file, list it in `deps`, and pass its path"
                ),
            ));
        }
        total += bytes;
    }
    if total > MAX_EXEC_BYTES {
        return Err(ParamError::new(
            "params",
            format!(
                "cmd and params take {total} bytes of arguments and environment together; \
                 rise allows {MAX_EXEC_BYTES}, because beyond the kernel's total (ARG_MAX, \
                 usually 2 MiB including the inherited environment) {e2big}. Put large values \
                 in files listed in `deps`"
            ),
        ));
    }
    Ok(())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// A declared output must stay inside the output directory.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty path".into());
    }
    if path.starts_with('/') {
        return Err(format!(
            "`{path}` is absolute; outputs are relative to $RISE_OUT"
        ));
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Err(format!(
            "`{path}` contains `.` or `..`; outputs must stay inside $RISE_OUT"
        ));
    }
    Ok(())
}

/// `my-input/x` -> `MY_INPUT_X`: upper-cased, anything not alphanumeric becomes `_`.
pub fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// How a param value appears in the environment: strings raw, numbers and booleans as TOML
/// would write them, arrays and tables as JSON.
pub fn env_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The `bash -c CMD` command for a resolved shell stage, with its environment.
pub fn shell_command(ctx: &StageContext) -> Result<Command, StageError> {
    let Some(cmd_text) = ctx.params["cmd"].as_str() else {
        return Err(StageError::msg(format!(
            "stage {}: resolved params lack `cmd`",
            ctx.stage
        )));
    };
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(cmd_text);
    cmd.env("RISE_OUT", &ctx.out_dir)
        .env("RISE_SCRATCH", &ctx.scratch_dir)
        .env("RISE_SEED", ctx.seed.to_string())
        .env("RISE_STAGE", &ctx.stage)
        .env("RISE_PIPELINE", &ctx.pipeline)
        .env("RISE_DEVICE", &ctx.device)
        .env("RISE_THREADS", ctx.threads.to_string());
    for (name, path) in &ctx.inputs {
        cmd.env(format!("RISE_IN_{}", env_suffix(name)), path);
    }
    if let Some(params) = ctx.params["params"].as_object() {
        for (name, v) in params {
            cmd.env(format!("RISE_PARAM_{}", env_suffix(name)), env_value(v));
        }
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resolves_cmd_outputs_and_params() {
        let r = ShellStage
            .resolve_params(&json!({"cmd": "echo", "outputs": ["a/b.txt"], "n": 3, "name": "x"}))
            .unwrap();
        assert_eq!(
            r,
            json!({"cmd": "echo", "outputs": ["a/b.txt"], "deps": [], "params": {"n": 3, "name": "x"}})
        );
        assert_eq!(ShellStage.declared_outputs(&r), vec!["a/b.txt".to_string()]);
        let r = ShellStage
            .resolve_params(&json!({"cmd": "x", "deps": ["a.py", "b.py"]}))
            .unwrap();
        assert_eq!(
            ShellStage.file_params(&r),
            vec!["deps[0]".to_string(), "deps[1]".to_string()]
        );
        let err = ShellStage
            .resolve_params(&json!({"cmd": "x", "deps": [3]}))
            .unwrap_err();
        assert_eq!(err.field, "deps[0]");
    }

    #[test]
    fn rejects_bad_fields_naming_them() {
        let cases = [
            (json!({}), "cmd"),
            (json!({"cmd": 3}), "cmd"),
            (json!({"cmd": " "}), "cmd"),
            (json!({"cmd": "x", "outputs": "a"}), "outputs"),
            (json!({"cmd": "x", "outputs": [1]}), "outputs[0]"),
            (json!({"cmd": "x", "outputs": ["../a"]}), "outputs[0]"),
            (json!({"cmd": "x", "outputs": ["/a"]}), "outputs[0]"),
            (json!({"cmd": "x", "a-b": 1, "a_b": 2}), "params.a_b"),
            (
                json!({"cmd": "x", "outputs": ["a", "b", "a"]}),
                "outputs[2]",
            ),
            (
                json!({"cmd": "x", "outputs": ["d/a", "d//a/"]}),
                "outputs[1]",
            ),
        ];
        for (value, field) in cases {
            let err = ShellStage.resolve_params(&value).unwrap_err();
            assert_eq!(err.field, field, "{value}: {err}");
        }
    }

    #[test]
    fn values_the_kernel_cannot_pass_are_refused_naming_the_param_and_size() {
        // Just under the limit: `RISE_PARAM_BIG=` (15 bytes) + value + NUL = 131072.
        let fits = "x".repeat(MAX_ARG_STRLEN - 16);
        assert!(ShellStage
            .resolve_params(&json!({"cmd": "x", "big": fits}))
            .is_ok());
        let over = "x".repeat(MAX_ARG_STRLEN - 15);
        let err = ShellStage
            .resolve_params(&json!({"cmd": "x", "big": over}))
            .unwrap_err();
        assert_eq!(err.field, "params.big");
        assert!(
            err.message
                .contains("is 131073 bytes as the environment variable RISE_PARAM_BIG")
                && err.message.contains("E2BIG")
                && err.message.contains("MAX_ARG_STRLEN"),
            "{err}"
        );
        // An array counts as the JSON it becomes.
        let many: Vec<String> = (0..20_000).map(|i| format!("item{i}")).collect();
        let err = ShellStage
            .resolve_params(&json!({"cmd": "x", "list": many}))
            .unwrap_err();
        assert_eq!(err.field, "params.list");
        // The command itself is one argument of `bash -c`.
        let err = ShellStage
            .resolve_params(&json!({"cmd": "#".repeat(MAX_ARG_STRLEN)}))
            .unwrap_err();
        assert_eq!(err.field, "cmd");
        // Each fits, but not all of them together.
        let mut table = serde_json::Map::new();
        table.insert("cmd".into(), json!("x"));
        for i in 0..10 {
            table.insert(format!("p{i}"), json!("y".repeat(120_000)));
        }
        let err = ShellStage
            .resolve_params(&Value::Object(table))
            .unwrap_err();
        assert_eq!(err.field, "params");
        assert!(err.message.contains("ARG_MAX"), "{err}");
    }

    #[test]
    fn env_names_and_values() {
        assert_eq!(env_suffix("my-input/x"), "MY_INPUT_X");
        assert_eq!(env_value(&json!(0.001)), "0.001");
        assert_eq!(env_value(&json!(true)), "true");
        assert_eq!(env_value(&json!("a b")), "a b");
        assert_eq!(env_value(&json!([1, 2])), "[1,2]");
    }
}

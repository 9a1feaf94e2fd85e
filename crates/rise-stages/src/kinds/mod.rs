//! The RISE stage kinds: their inputs, typed params and versions, and the one adapter that
//! makes a kind an engine [`Stage`].
//!
//! Every kind is a [`KindSchema`] (its params are a struct declared with
//! [`stage_params!`](crate::stage_params), whose `FIELDS` the schema holds) run through
//! [`KindStage`]. Pure-Rust kinds ([`dataset`], [`grade`], [`report`]) come with their `run`
//! and execute in the engine process. The torch kinds (`tokenizer`, `model`, `sft`, `sample`,
//! `relabel`, `train`, `evaluate`, `export`) are schemas only here, so `rise plan` validates
//! their params without libtorch; `rise-worker` supplies their `run` ([`KindStage::with_run`]).
use rise_data::grade::Rewards;
use rise_engine::{Execution, InputSpec, ParamError, Stage, StageContext, StageError};
use serde_json::Value;

use crate::examples::Criterion;
use crate::params::{self, float, int, pos_float, Field, Ty};
use crate::sharding::{check_shard, Shard};
use crate::{shard_doc, stage_params};

pub mod dataset;
pub mod grade;
pub mod report;

/// Cross-field param checks of a kind, after the schema check.
pub type Validator = fn(&Value) -> Result<(), ParamError>;
/// A kind's implementation: in this crate for the in-process kinds, in rise-worker for the
/// torch kinds.
pub type RunFn = fn(&StageContext) -> Result<(), StageError>;

/// Everything the engine needs to know about a kind, without its implementation.
#[derive(Debug)]
pub struct KindSchema {
    /// The name pipelines write as `kind = "..."`; enters every cache key.
    pub kind: &'static str,
    /// Enters every cache key: bump it when the kind's outputs change for the same inputs.
    pub version: u32,
    /// Where the kind runs: in the `rise` process, or in `rise-worker` (on a GPU or not).
    pub execution: Execution,
    /// Input names a stage of this kind must wire (`inputs.<name>`).
    pub required_inputs: &'static [&'static str],
    /// Input names it may wire; any other name is refused unless `any_inputs`.
    pub optional_inputs: &'static [&'static str],
    /// Any input names are accepted (and none required): the report's models.
    pub any_inputs: bool,
    /// The kind's params: `XParams::FIELDS` of its typed struct.
    pub fields: &'static [Field],
    /// Files every successful run leaves in the output directory.
    pub outputs: &'static [&'static str],
    /// One paragraph for documentation. Defaults are not repeated here: [`Self::document`]
    /// lists every param with the default it has.
    pub about: &'static str,
    /// Extra cross-field validation after the schema check.
    pub validate: Option<Validator>,
    /// Optional params added after results of this kind were cached: when absent they are
    /// left out of the resolved params, and so out of the cache key, which therefore stays
    /// what it was before they existed (resolving writes `null` for every other absent
    /// optional param, and a `null` is part of the key).
    pub omit_when_absent: &'static [&'static str],
}

impl KindSchema {
    /// Resolves `params` against the schema (defaults filled in) and runs the extra checks.
    pub fn resolve(&self, params: &Value) -> Result<Value, ParamError> {
        let mut resolved = params::resolve(self.fields, params)?;
        if let Some(v) = self.validate {
            v(&resolved)?;
        }
        if let Value::Object(map) = &mut resolved {
            for name in self.omit_when_absent {
                if map.get(*name).is_some_and(Value::is_null) {
                    map.remove(*name);
                }
            }
        }
        Ok(resolved)
    }

    /// The input names the kind accepts.
    pub fn inputs(&self) -> InputSpec {
        if self.any_inputs {
            InputSpec::any()
        } else {
            InputSpec::named(self.required_inputs, self.optional_inputs)
        }
    }

    /// The `File` params present in `resolved`.
    pub fn file_params(&self, resolved: &Value) -> Vec<String> {
        self.params_of(resolved, |ty| matches!(ty, Ty::File))
    }

    /// The `Dir` params present in `resolved`.
    pub fn dir_params(&self, resolved: &Value) -> Vec<String> {
        self.params_of(resolved, |ty| matches!(ty, Ty::Dir))
    }

    fn params_of(&self, resolved: &Value, wanted: fn(&Ty) -> bool) -> Vec<String> {
        self.fields
            .iter()
            .filter(|f| wanted(&f.ty))
            .filter(|f| resolved.get(f.name).is_some_and(|v| !v.is_null()))
            .map(|f| f.name.to_string())
            .collect()
    }

    /// Markdown documentation: what the kind does, its inputs and params.
    pub fn document(&self) -> String {
        let mut s = format!("### `{}`\n\n{}\n\n", self.kind, self.about);
        let names = |xs: &[&str]| {
            xs.iter()
                .map(|x| format!("`{x}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.any_inputs {
            s.push_str("Inputs: any names.\n\n");
        } else if !self.required_inputs.is_empty() {
            s.push_str(&format!("Inputs: {}", names(self.required_inputs)));
            if !self.optional_inputs.is_empty() {
                s.push_str(&format!("; optional {}", names(self.optional_inputs)));
            }
            s.push_str(".\n\n");
        } else if !self.optional_inputs.is_empty() {
            s.push_str(&format!(
                "Optional inputs: {}.\n\n",
                names(self.optional_inputs)
            ));
        }
        s.push_str(&params::document(self.fields));
        s
    }
}

/// A kind as an engine [`Stage`]: every method answers from the [`KindSchema`], and `run`
/// calls the kind's implementation, or, for a torch kind registered without one (the `rise`
/// binary), refuses to run in-process.
pub struct KindStage {
    schema: &'static KindSchema,
    run: Option<RunFn>,
}

impl KindStage {
    /// The schema-only kind the `rise` binary registers for a torch kind.
    pub fn new(schema: &'static KindSchema) -> Self {
        KindStage { schema, run: None }
    }

    /// A kind with its implementation.
    pub fn with_run(schema: &'static KindSchema, run: RunFn) -> Self {
        KindStage {
            schema,
            run: Some(run),
        }
    }

    /// The kind's schema (name, version, inputs, params).
    pub fn schema(&self) -> &'static KindSchema {
        self.schema
    }
}

impl Stage for KindStage {
    fn kind(&self) -> &'static str {
        self.schema.kind
    }
    fn version(&self) -> u32 {
        self.schema.version
    }
    fn execution(&self) -> Execution {
        self.schema.execution
    }
    fn inputs(&self) -> InputSpec {
        self.schema.inputs()
    }
    fn resolve_params(&self, params: &Value) -> Result<Value, ParamError> {
        self.schema.resolve(params)
    }
    fn declared_outputs(&self, resolved: &Value) -> Vec<String> {
        // A shard writes its part of the work; the merge step writes the declared outputs.
        if resolved.get("shard").is_some_and(|v| !v.is_null()) {
            return Vec::new();
        }
        self.schema.outputs.iter().map(|s| s.to_string()).collect()
    }
    fn file_params(&self, resolved: &Value) -> Vec<String> {
        self.schema.file_params(resolved)
    }
    fn dir_params(&self, resolved: &Value) -> Vec<String> {
        self.schema.dir_params(resolved)
    }
    fn unkeyed_params(&self) -> &'static [&'static str] {
        if self.schema.fields.iter().any(|f| UNKEYED.contains(&f.name)) {
            &UNKEYED
        } else {
            &[]
        }
    }
    fn run(&self, ctx: &StageContext) -> Result<(), StageError> {
        match self.run {
            Some(run) => run(ctx),
            None => Err(StageError::msg(format!(
                "stage {}: kind `{}` runs in rise-worker (it needs libtorch); the engine spawns \
                 `rise-worker stage SPEC` for it",
                ctx.stage, self.schema.kind
            ))),
        }
    }
}

const WORKER: Execution = Execution::Worker { gpu: false };
const WORKER_GPU: Execution = Execution::Worker { gpu: true };

/// The doc of every `rewards` param (a macro, so that it can be an attribute's value).
#[macro_export]
#[doc(hidden)]
macro_rules! rewards_doc {
    () => {
        "rewards per outcome: { correct = 1.0, wrong = 0.0, unparseable = -1.0 }"
    };
}

// Shared param groups. Defaults follow the RISE release where it has one (temperature 1.0,
// top_p 1.0, window 2, N = 16, tau 0.4) and the tiny CPU models elsewhere.
stage_params! {
    /// The sampling params of `sample`, `relabel` and `evaluate`.
    pub struct SamplingParams {
        temperature: f64 = float(0.0, 10.0), default 1.0, "sampling temperature (0 = greedy)";
        top_p: f64 = pos_float(1.0), default 1.0, "nucleus sampling mass";
        max_new_tokens: usize = int(1, 32768), default 256, "longest response, in tokens";
        window: usize = int(0, 64), default 2,
            "context window k: a state keeps the system message, the original question, \
             then the most recent k-1 attempts each followed by its feedback (0 = all); \
             collection, training and evaluation must agree";
        batch_size: usize = int(1, 4096), default 32, "prompts per sampler batch";
    }
}

stage_params! {
    /// The training params of `sft` and `train` (each kind sets its own `lr` and `epochs`
    /// defaults). rise-model's `TrainConfig::from` takes them as they are.
    pub struct TrainingParams {
        lr: f64 = float(0.0, 1e6), required, "peak learning rate (AdamW, cosine schedule)";
        epochs: f64 = pos_float(1000.0), required,
            "passes over the examples, fractional allowed: ceil(epochs x examples / \
             (batch_size x grad_accum)) optimizer steps, the last one filled from the next pass";
        batch_size: usize = int(1, 4096), default 16, "examples per micro-batch";
        grad_accum: usize = int(1, 1024), default 1, "micro-batches per optimizer step";
        max_len: usize = int(8, 131072), default 512,
            "longest example in tokens: longer ones are dropped before training (never \
             truncated, which could cut away the trained answer) and counted as \
             `dropped_too_long` in the stage's summary";
        warmup: f64 = float(0.0, 1.0), default 0.04,
            "warm-up fraction of the steps (linear from 0)";
        weight_decay: f64 = float(0.0, 10.0), default 0.0, "AdamW weight decay";
        grad_clip: f64 = float(0.0, 1e6), default 1.0, "gradient-norm clip (0 = none)";
        checkpoint_every: usize = int(1, 1_000_000), default 50,
            "optimizer steps between resumable checkpoints";
        devices: Option<usize> = int(1, 1024), optional,
            "data-parallel processes, one per device (default 1): on cpu N processes sharing \
             the stage's threads, on cuda one per card (cuda:0..N-1; with device = cuda:K all \
             on card K). Each takes a slice of every global batch (batch_size x grad_accum \
             examples), so the steps are those of one process. Not in the cache key: results \
             agree up to fp32 summation order";
        zero: Option<usize> = int(0, 1), optional,
            "with devices > 1: 1 = ZeRO-1, each process keeps the AdamW moments of its \
             1/devices share of the weights only (the same weights, bit for bit, at a fraction \
             of the optimizer memory). Not in the cache key";
    }
}

/// Params that choose how a stage runs, not what it computes: the engine keeps them out of
/// the cache key ([`Stage::unkeyed_params`]).
pub const UNKEYED: [&str; 2] = ["devices", "zero"];

/// Checks a `rewards` table against rise-data's [`rise_data::grade::Rewards`].
pub fn check_rewards(v: &Value) -> Result<Value, String> {
    let r: Rewards = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    if ![r.correct, r.wrong, r.unparseable]
        .iter()
        .all(|x| x.is_finite())
    {
        return Err("rewards must be finite numbers".into());
    }
    serde_json::to_value(r).map_err(|e| e.to_string())
}

stage_params! {
    /// The `tokenizer` kind's params.
    pub struct TokenizerParams {
        vocab_size: usize = int(64, 1_000_000), default 512, "BPE vocabulary size (training only)";
    }
}

stage_params! {
    /// The `model` kind's params: exactly one of `config`, `hf_dir` and `gguf`.
    pub struct ModelParams {
        config: Option<String> = Ty::File, optional,
            "model size config (configs/*.toml): a fresh, seeded Llama-architecture model";
        hf_dir: Option<String> = Ty::Dir, optional,
            "a local Hugging Face checkpoint directory to import (config.json, \
             model.safetensors, tokenizer.json); its files' content enters the cache key";
        gguf: Option<String> = Ty::File, optional,
            "a llama.cpp GGUF file to import (as `rise import gguf` does: dequantized to fp32, \
             tokenizer and chat template rebuilt from its metadata); its content enters the \
             cache key";
        chat_template: Option<String> = Ty::Str, optional,
            "for a checkpoint with several named chat templates, the one to use (default: the \
             one called `default`)";
        system: Option<String> = Ty::Text, optional,
            "system instruction for every conversation with this model (default: rise-data's \
             step-by-step instruction; \"\" for none)";
    }
}

stage_params! {
    /// The `sft` kind's params.
    pub struct SftParams {
        ..training: TrainingParams { lr = 0.001, epochs = 3.0 };
        chat_turns: usize = int(1, 64), default 1,
            "questions per training conversation: 1 = one question and its solution; k > 1 \
             chains k unrelated questions as consecutive user/assistant turns, every answer \
             trained (general multi-turn chat, never the RISE feedback)";
        repeat_questions: f64 = float(0.0, 1.0), default 0.0,
            "with chat_turns: probability that the user asks one of the conversation's \
             questions again after an answer (answered with the same reference solution)";
        preambles: Vec<String> = Ty::StrList, default [],
            "openings a user may put before a question (\"Next one.\"): each question gets \
             one of them, or none, with equal chance, so the model learns to find the \
             question in a longer message";
    }
}

stage_params! {
    /// The `sample` kind's params.
    pub struct SampleParams {
        ..sampling: SamplingParams;
        turns: usize = int(1, 16), default 1,
            "on-policy turns per prompt (an episode ends at the first correct answer)";
        shard_size: usize = int(1, 1_000_000), default 256,
            "prompts per committed shard (the resume unit)";
        limit: Option<usize> = int(1, i64::MAX), optional, "use only the first N prompts";
        shard: Option<Shard> = Ty::Table(check_shard), optional, shard_doc!();
        rewards: Rewards = Ty::Table(check_rewards), default {}, rewards_doc!();
    }
}

stage_params! {
    /// The `relabel` kind's params.
    pub struct RelabelParams {
        ..sampling: SamplingParams;
        n: Option<usize> = int(1, 1024), optional,
            "candidates drawn at each wrong state, the best by reward kept. Default: 16 \
             from `policy` (self-distillation, best-of-16); 1 from `teacher` (the \
             release's distillation: one teacher sample, kept whatever its reward and \
             weighted by exp(r / tau) in training). n > 1 with a teacher is best-of-N \
             from the teacher";
        turns: usize = int(1, 16), default 2,
            "train_turns: extend each wrong trajectory up to this many turns";
        shard_size: usize = int(1, 1_000_000), default 64,
            "trajectories per committed shard (the resume unit)";
        shard: Option<Shard> = Ty::Table(check_shard), optional, shard_doc!();
        rewards: Rewards = Ty::Table(check_rewards), default {}, rewards_doc!();
    }
}

stage_params! {
    /// The `train` kind's params.
    pub struct TrainParams {
        ..training: TrainingParams { lr = 0.0001, epochs = 2.0 };
        criterion: Criterion = Ty::Choice(&Criterion::NAMES), default "all",
            "which turns train: all | better | best | success";
        tau: f64 = pos_float(1e6), default 0.4, "reward-weight temperature: w = exp(r / tau)";
        dedup: bool = Ty::Bool, default true, "drop repeated (conversation, response) examples";
        shuffle: bool = Ty::Bool, default true, "shuffle the examples with the stage seed";
        restart_from_base: bool = Ty::Bool, default false,
            "start from input `base` instead of `model` (ReST-EM style)";
    }
}

stage_params! {
    /// The `evaluate` kind's params.
    pub struct EvaluateParams {
        ..sampling: SamplingParams;
        turns: usize = int(1, 64), default 5,
            "sequential turns with feedback always \"incorrect\"";
        parallel: usize = int(1, 64), default 5,
            "parallel first-turn samples for the majority baseline";
        limit: Option<usize> = int(1, i64::MAX), optional, "evaluate only the first N problems";
        shard: Option<Shard> = Ty::Table(check_shard), optional, shard_doc!();
    }
}

stage_params! {
    /// The `export` kind takes no params.
    pub struct ExportParams {}
}

/// The `tokenizer` kind (worker).
pub static TOKENIZER: KindSchema = KindSchema {
    kind: "tokenizer",
    version: 1,
    execution: WORKER,
    required_inputs: &[],
    optional_inputs: &["data", "model"],
    any_inputs: false,
    fields: TokenizerParams::FIELDS,
    outputs: &["tokenizer.json"],
    about:
        "Trains a byte-level BPE tokenizer on a dataset's questions and solutions plus the RISE \
            feedback text (input `data`), registering the plain chat template's role markers as \
            single tokens; or, with input `model`, takes that model's tokenizer unchanged.",
    validate: None,
    omit_when_absent: &[],
};

/// The `model` kind (worker).
pub static MODEL: KindSchema = KindSchema {
    kind: "model",
    version: 1,
    execution: WORKER,
    required_inputs: &[],
    optional_inputs: &["tokenizer"],
    any_inputs: false,
    fields: ModelParams::FIELDS,
    outputs: &["config.json", "tokenizer.json", "rise.json"],
    about: "A model as a Hugging Face directory: initialised from a size config with the \
            `tokenizer` input's vocabulary, imported from `hf_dir` (safetensors only), or \
            imported from a `gguf` file. An imported model's chat template is found where \
            transformers 5 looks (chat_template.jinja, additional_chat_templates/, \
            chat_template.json, tokenizer_config.json) and written into the output's \
            tokenizer_config.json; a vocabulary with chat tokens but no template is an error. \
            `rise.json` records the conversation format (template, system instruction) that \
            every later stage uses.",
    validate: Some(|v| {
        let given: Vec<&str> = ["config", "hf_dir", "gguf"]
            .into_iter()
            .filter(|k| !v[*k].is_null())
            .collect();
        match given.as_slice() {
            [] => Err(ParamError::new("params.config", "give `config` (a fresh model), `hf_dir` (a Hugging Face checkpoint) or `gguf` (a GGUF file)")),
            [_] => {
                if !v["chat_template"].is_null() && given == ["config"] {
                    return Err(ParamError::new("params.chat_template", "a fresh model (`config`) uses rise's plain template; `chat_template` chooses among an imported checkpoint's templates"));
                }
                Ok(())
            }
            [_, second, ..] => Err(ParamError::new(format!("params.{second}"), format!("give one of `config`, `hf_dir` and `gguf`, not {}", given.join(" and ")))),
        }
    }),
    omit_when_absent: &["gguf", "chat_template"],
};

/// The `sft` kind (worker, GPU).
pub static SFT: KindSchema = KindSchema {
    kind: "sft",
    version: 1,
    execution: WORKER_GPU,
    required_inputs: &["model", "data"],
    optional_inputs: &[],
    any_inputs: false,
    fields: SftParams::FIELDS,
    outputs: &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "rise.json",
    ],
    about: "Plain supervised fine-tuning on a dataset's reference solutions: trains the \
            from-scratch base model, or the paper's \"boost\" of a weak model. With \
            `chat_turns` > 1 the solutions are answers in multi-question chats, so that the \
            model learns to answer the latest user message of a longer conversation (what an \
            instruction-tuned model brings to RISE) without ever seeing a retry. Resumes from \
            its last checkpoint after a kill.",
    validate: None,
    // Added with data parallelism: absent, they stay out of the resolved params (keys
    // unchanged); set, the engine leaves them out of the key (UNKEYED).
    omit_when_absent: &["devices", "zero"],
};

/// The `sample` kind (worker, GPU).
pub static SAMPLE: KindSchema = KindSchema {
    kind: "sample",
    // 2: the release's context window (the original question stays in front).
    version: 2,
    execution: WORKER_GPU,
    required_inputs: &["policy", "prompts"],
    optional_inputs: &[],
    any_inputs: false,
    fields: SampleParams::FIELDS,
    outputs: &["rollouts.json"],
    about: "On-policy rollouts from the learner (RISE.md §4 step 1): one response per prompt at \
            `temperature`, continued with the \"incorrect\" feedback for up to `turns` turns \
            while wrong. Shards are committed to scratch as they finish; a re-run after a kill \
            resumes at the first unfinished shard.",
    validate: None,
    // Added with sharding: absent, it stays out of the resolved params (keys unchanged).
    omit_when_absent: &["shard"],
};

/// The `relabel` kind (worker, GPU).
pub static RELABEL: KindSchema = KindSchema {
    kind: "relabel",
    // 2: the release's context window; `n` defaults to 1 from a teacher (the release's
    // distillation: one sample per wrong state, kept whatever its reward).
    version: 2,
    execution: WORKER_GPU,
    required_inputs: &["graded"],
    optional_inputs: &["policy", "teacher"],
    any_inputs: false,
    fields: RelabelParams::FIELDS,
    outputs: &["rollouts.json"],
    about: "Relabelling (RISE.md §4 step 3): for every graded trajectory whose last turn is \
            wrong, draws `n` candidates at the next state from the learner (`policy`, \
            self-distillation, default best-of-16) or a `teacher` model (distillation, default \
            one sample kept whatever its reward, as the release does), keeps the \
            highest-reward non-degenerate one (ties: the first), records its reward, and \
            continues to `turns` turns. Resumes by shards.",
    validate: None,
    // Added with sharding: absent, it stays out of the resolved params (keys unchanged).
    omit_when_absent: &["shard"],
};

/// The `train` kind (worker, GPU).
pub static TRAIN: KindSchema = KindSchema {
    kind: "train",
    // 2: stored conversations are checked against the window rule; examples.json has
    // `per_source` (examples, mean weight and reward of policy / self-distill / teacher turns).
    version: 2,
    execution: WORKER_GPU,
    required_inputs: &["data", "model"],
    optional_inputs: &["base"],
    any_inputs: false,
    fields: TrainParams::FIELDS,
    outputs: &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "rise.json",
        "examples.json",
    ],
    about: "Reward-weighted regression on relabelled trajectories (RISE.md §5): one example per \
            turn up to the first correct one, only the final assistant message trained, loss \
            weighted by exp(r / tau). Starts from `model` (or `base` with restart_from_base); \
            checkpoints to scratch and resumes after a kill; a non-finite loss fails the stage.",
    validate: None,
    omit_when_absent: &["devices", "zero"],
};

/// The `evaluate` kind (worker, GPU).
pub static EVALUATE: KindSchema = KindSchema {
    kind: "evaluate",
    // 2: metrics.json has `transitions` (right after right / wrong, sequential vs parallel).
    // 3: the release's context window; tie rate, earliest-wins m1@tn, parallel pass@k, answer
    // change rates and per-problem outcomes (for the report's paired tests).
    version: 3,
    execution: WORKER_GPU,
    required_inputs: &["model", "data"],
    optional_inputs: &[],
    any_inputs: false,
    fields: EvaluateParams::FIELDS,
    outputs: &["metrics.json", "samples.jsonl"],
    about: "Every metric of RISE.md §6 for one model on a held-out set: m1@t1, m5@t1 \
            (self-consistency at equal compute), m1@t5 (majority over 5 sequential turns without \
            an oracle; ties to the most recent, with the tie rate and the earliest-wins figure), \
            p1@t5 (oracle) beside parallel pass@5, accuracy per turn, flip rates, how often the \
            next answer is right and how often it changes after a right / a wrong one \
            (sequential turns against parallel samples), with 95% Wilson intervals; and each \
            problem's outcomes, for paired tests between models.",
    validate: None,
    // Added with sharding: absent, it stays out of the resolved params (keys unchanged).
    omit_when_absent: &["shard"],
};

/// The `export` kind (worker).
pub static EXPORT: KindSchema = KindSchema {
    kind: "export",
    version: 1,
    execution: WORKER,
    required_inputs: &["model"],
    optional_inputs: &[],
    any_inputs: false,
    fields: ExportParams::FIELDS,
    outputs: &["config.json", "model.safetensors", "tokenizer.json"],
    about: "A model as a Hugging Face directory (config.json, model.safetensors, tokenizer.json, \
            tokenizer_config.json) that transformers and vLLM load, checked by loading it back.",
    validate: None,
    omit_when_absent: &[],
};

/// Every torch kind's schema.
pub static WORKER_KINDS: [&KindSchema; 8] = [
    &TOKENIZER, &MODEL, &SFT, &SAMPLE, &RELABEL, &TRAIN, &EVALUATE, &EXPORT,
];

/// A torch kind's schema by name.
pub fn worker_schema(kind: &str) -> Option<&'static KindSchema> {
    WORKER_KINDS.iter().copied().find(|s| s.kind == kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The typed struct and the schema agree field by field: resolving gives exactly the
    /// struct's fields, with the struct's types (an integer where the struct has one).
    fn typed_roundtrip<T>(schema: &KindSchema, given: Value)
    where
        T: serde::de::DeserializeOwned + serde::Serialize,
    {
        let resolved = schema
            .resolve(&given)
            .unwrap_or_else(|e| panic!("{}: {e}", schema.kind));
        let typed: T = T::deserialize(&resolved).unwrap_or_else(|e| panic!("{}: {e}", schema.kind));
        let mut back = serde_json::to_value(&typed).unwrap();
        for name in schema.omit_when_absent {
            if resolved.get(*name).is_none() {
                back.as_object_mut().unwrap().remove(*name);
            }
        }
        assert_eq!(back, resolved, "{}", schema.kind);
        let names: Vec<&str> = schema.fields.iter().map(|f| f.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "{}: a param twice", schema.kind);
    }

    #[test]
    fn typed_params_match_their_schemas() {
        typed_roundtrip::<TokenizerParams>(&TOKENIZER, json!({}));
        typed_roundtrip::<ModelParams>(&MODEL, json!({"config": "c.toml"}));
        typed_roundtrip::<ModelParams>(
            &MODEL,
            json!({"gguf": "m.gguf", "chat_template": "t", "system": ""}),
        );
        typed_roundtrip::<SftParams>(&SFT, json!({}));
        typed_roundtrip::<SftParams>(&SFT, json!({"lr": 1, "preambles": ["a"], "max_len": 64}));
        typed_roundtrip::<SampleParams>(&SAMPLE, json!({}));
        typed_roundtrip::<SampleParams>(&SAMPLE, json!({"limit": 3, "temperature": 0}));
        typed_roundtrip::<RelabelParams>(&RELABEL, json!({}));
        typed_roundtrip::<RelabelParams>(&RELABEL, json!({"n": 4}));
        typed_roundtrip::<TrainParams>(&TRAIN, json!({}));
        typed_roundtrip::<TrainParams>(&TRAIN, json!({"criterion": "better", "epochs": 4}));
        typed_roundtrip::<EvaluateParams>(&EVALUATE, json!({}));
        typed_roundtrip::<EvaluateParams>(&EVALUATE, json!({"limit": 9}));
        typed_roundtrip::<ExportParams>(&EXPORT, json!({}));
        typed_roundtrip::<dataset::DatasetParams>(&dataset::SCHEMA, json!({"source": "synthetic"}));
        typed_roundtrip::<dataset::DatasetParams>(
            &dataset::SCHEMA,
            json!({"source": "jsonl", "path": "d.jsonl", "task": "math", "limit": 2,
                   "fields": {"question": "q"}}),
        );
        typed_roundtrip::<grade::GradeParams>(&grade::SCHEMA, json!({}));
        typed_roundtrip::<report::ReportParams>(&report::SCHEMA, json!({}));
        typed_roundtrip::<report::ReportParams>(
            &report::SCHEMA,
            json!({"order": ["a"], "teacher": "t", "self_arm": ["s"], "distill_arm": []}),
        );
    }

    #[test]
    fn kinds_set_their_own_training_defaults() {
        let sft: SftParams = params::defaults(SftParams::FIELDS).unwrap();
        let train: TrainParams = params::defaults(TrainParams::FIELDS).unwrap();
        assert_eq!((sft.training.lr, sft.training.epochs), (1e-3, 3.0));
        assert_eq!((train.training.lr, train.training.epochs), (1e-4, 2.0));
        // The rest of the group is shared.
        assert_eq!(sft.training.max_len, train.training.max_len);
        // Required params have no defaults.
        assert!(params::defaults::<ModelParams>(ModelParams::FIELDS).is_some());
        assert!(params::defaults::<TrainingParams>(TrainingParams::FIELDS).is_none());
    }

    #[test]
    fn help_shows_the_defaults_the_stages_get() {
        let doc = SAMPLE.document();
        let sampling: SamplingParams = params::defaults(SamplingParams::FIELDS).unwrap();
        assert!(
            doc.contains(&format!(
                "`temperature` (a number in [0, 10]; default {:?})",
                sampling.temperature
            )),
            "{doc}"
        );
        assert!(!SAMPLE.about.contains("temperature 1"), "{}", SAMPLE.about);
        assert!(TRAIN
            .document()
            .contains("`lr` (a number in [0, 1000000]; default 0.0001)"));
    }

    #[test]
    fn every_default_is_valid() {
        for s in WORKER_KINDS {
            let minimal = match s.kind {
                "model" => json!({"config": "configs/tiny.toml"}),
                _ => json!({}),
            };
            let r = s
                .resolve(&minimal)
                .unwrap_or_else(|e| panic!("{}: {e}", s.kind));
            assert_eq!(
                r.as_object().unwrap().len(),
                s.fields.len() - s.omit_when_absent.len(),
                "{}",
                s.kind
            );
            assert!(s.document().contains(s.kind));
        }
    }

    #[test]
    fn model_needs_exactly_one_source() {
        assert_eq!(
            MODEL.resolve(&json!({})).unwrap_err().field,
            "params.config"
        );
        let both = json!({"config": "a.toml", "hf_dir": "b"});
        assert_eq!(MODEL.resolve(&both).unwrap_err().field, "params.hf_dir");
        let both = json!({"hf_dir": "b", "gguf": "m.gguf"});
        let e = MODEL.resolve(&both).unwrap_err();
        assert_eq!(e.field, "params.gguf");
        assert!(e.message.contains("hf_dir and gguf"), "{e}");
        assert_eq!(
            MODEL.file_params(&MODEL.resolve(&json!({"config": "a"})).unwrap()),
            ["config"]
        );
        let gguf = MODEL.resolve(&json!({"gguf": "m.gguf"})).unwrap();
        assert_eq!(MODEL.file_params(&gguf), ["gguf"]);
        let e = MODEL
            .resolve(&json!({"config": "a", "chat_template": "tool_use"}))
            .unwrap_err();
        assert_eq!(e.field, "params.chat_template");
    }

    #[test]
    fn params_added_later_leave_existing_keys_alone() {
        // What resolving gave before `gguf` and `chat_template` existed: their absence must
        // not show (a `null` would enter, and change, every existing model stage's key).
        let r = MODEL.resolve(&json!({"config": "a.toml"})).unwrap();
        assert_eq!(
            r,
            json!({"config": "a.toml", "hf_dir": null, "system": null})
        );
        assert_eq!(MODEL.resolve(&r).unwrap(), r, "resolving is idempotent");
        let r = MODEL
            .resolve(&json!({"gguf": "m.gguf", "chat_template": "tool_use"}))
            .unwrap();
        assert_eq!(r["gguf"], "m.gguf");
        assert_eq!(r["chat_template"], "tool_use");
        assert_eq!(MODEL.resolve(&r).unwrap(), r);
    }

    #[test]
    fn rewards_tables_are_checked() {
        let r = SAMPLE
            .resolve(&json!({"rewards": {"wrong": -0.5}}))
            .unwrap();
        assert_eq!(
            r["rewards"],
            json!({"correct": 1.0, "wrong": -0.5, "unparseable": -1.0})
        );
        let e = SAMPLE
            .resolve(&json!({"rewards": {"rigth": 1}}))
            .unwrap_err();
        assert_eq!(e.field, "params.rewards");
    }

    #[test]
    fn schema_only_kinds_refuse_to_run_in_process() {
        let stage = KindStage::new(&TRAIN);
        assert_eq!(stage.execution(), Execution::Worker { gpu: true });
        let ctx = StageContext::from_spec(
            rise_engine::StageSpec {
                pipeline: "p".into(),
                stage: "iter1/train".into(),
                kind: "train".into(),
                kind_version: 1,
                params: json!({}),
                inputs: Default::default(),
                out_dir: "/nonexistent".into(),
                scratch_dir: "/nonexistent".into(),
                seed: 0,
                device: "cpu".into(),
                threads: 1,
            },
            rise_engine::Progress::discard(),
            Default::default(),
        );
        let e = stage.run(&ctx).unwrap_err().to_string();
        assert!(e.contains("rise-worker"), "{e}");
    }
}

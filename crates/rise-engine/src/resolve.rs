//! Checking a parsed pipeline against the stage kinds, before anything runs: kinds, inputs,
//! kind fields, params (each kind's own validation), referenced files, and cycles.
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::{Path, PathBuf};

use petgraph::graph::{DiGraph, NodeIndex};
use serde_json::Value;

use crate::content_hash::{hash_dir, hash_file};
use crate::error::{PipelineError, PipelineErrors};
use crate::hash_cache::HashCache;
use crate::key::{parse_path, Canon, PathSeg};
use crate::pipeline::{merge_kind, suggest, Pipeline, ShardRole, StageDef, ENGINE_FIELDS};
use crate::registry::Registry;
use crate::stage::{Execution, ParamError, Stage};

/// A validated pipeline, ready to plan and run.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The parsed pipeline.
    pub pipeline: Pipeline,
    /// Stages in file order.
    pub stages: Vec<ResolvedStage>,
    /// Stage indices in a topological order (producers first; ties in file order).
    pub order: Vec<usize>,
    /// Data flow graph: an edge producer -> consumer, weighted by the input name.
    pub graph: DiGraph<usize, String>,
}

/// One validated stage.
#[derive(Debug, Clone)]
pub struct ResolvedStage {
    /// Stage name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// Kind implementation version.
    pub kind_version: u32,
    /// Where it runs.
    pub execution: Execution,
    /// Input name -> producing stage (index into [`Resolved::stages`]).
    pub inputs: BTreeMap<String, usize>,
    /// Resolved params as the stage receives them (file params as absolute paths).
    pub params: Value,
    /// Resolved params as recorded in results: file params as `{"file": PATH, "blake3": HEX}`.
    pub recorded_params: Value,
    /// Resolved params as they enter the key (file params by content hash).
    pub key_params: Canon,
    /// Seed.
    pub seed: u64,
    /// Relative paths that must exist in the output after a run.
    pub outputs: Vec<String>,
    /// Line of the stage's table in the pipeline file.
    pub line: usize,
    /// Where it is defined (`stage.x` or `iter.stage.x`).
    pub origin: String,
}

impl Resolved {
    /// Index of the stage named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.name == name)
    }

    /// The stage named `name`, or an error listing the stages.
    pub fn find(&self, name: &str) -> Result<usize, String> {
        self.index_of(name).ok_or_else(|| {
            format!(
                "pipeline {} has no stage `{name}`{}",
                self.pipeline.name,
                suggest(name, self.stages.iter().map(|s| s.name.as_str()))
            )
        })
    }

    /// `stage` and every stage that depends on it, transitively.
    pub fn descendants(&self, stage: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![stage];
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                for n in self
                    .graph
                    .neighbors_directed(NodeIndex::new(i), petgraph::Direction::Outgoing)
                {
                    todo.push(n.index());
                }
            }
        }
        out
    }

    /// `stage` and every stage it depends on, transitively.
    pub fn ancestors(&self, stage: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        let mut todo = vec![stage];
        while let Some(i) = todo.pop() {
            if out.insert(i) {
                todo.extend(self.stages[i].inputs.values().copied());
            }
        }
        out
    }
}

/// Validate `pipeline` against `registry`. Every problem is reported, each with file, line and
/// field.
pub fn resolve(pipeline: Pipeline, registry: &Registry) -> Result<Resolved, PipelineErrors> {
    resolve_with_cache(pipeline, registry, None)
}

/// [`resolve`], taking the content hashes of large files named by params from `cache` while
/// their metadata is unchanged (and adding new ones to it; the caller saves it).
pub fn resolve_with_cache(
    pipeline: Pipeline,
    registry: &Registry,
    cache: Option<&HashCache>,
) -> Result<Resolved, PipelineErrors> {
    let stages = {
        let mut resolver = Resolver {
            pipeline: &pipeline,
            registry,
            cache,
            index: pipeline
                .stages
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.as_str(), i))
                .collect(),
            file_hashes: BTreeMap::new(),
            errors: Vec::new(),
        };
        let mut stages = Vec::with_capacity(pipeline.stages.len());
        for def in &pipeline.stages {
            if let Some(stage) = resolver.resolve_stage(def) {
                stages.push(stage);
            }
        }
        if !resolver.errors.is_empty() {
            return Err(PipelineErrors::sorted(resolver.errors));
        }
        stages
    };
    // All stages resolved, so stage indices (input producers) match positions in `stages`.
    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..stages.len()).map(|i| graph.add_node(i)).collect();
    for (i, stage) in stages.iter().enumerate() {
        for (input, &p) in &stage.inputs {
            graph.add_edge(nodes[p], nodes[i], input.clone());
        }
    }
    let resolved = Resolved {
        pipeline,
        stages,
        order: Vec::new(),
        graph,
    };
    match topo_order(&resolved) {
        Ok(order) => Ok(Resolved { order, ..resolved }),
        Err(cycle) => Err(PipelineErrors::one(cycle_error(&resolved, &cycle))),
    }
}

/// Resolving a pipeline's stages one by one, collecting every error.
struct Resolver<'p> {
    pipeline: &'p Pipeline,
    registry: &'p Registry,
    cache: Option<&'p HashCache>,
    /// Stage name -> position in the pipeline.
    index: BTreeMap<&'p str, usize>,
    /// Content hashes of the files and directories params name, shared by all stages.
    file_hashes: BTreeMap<PathBuf, [u8; 32]>,
    errors: Vec<PipelineError>,
}

/// A stage's params in their three forms (see [`ResolvedStage`]).
struct StageParams {
    params: Value,
    recorded: Value,
    key_params: Canon,
}

impl Resolver<'_> {
    /// Validate one stage against its kind: its inputs, kind fields, params and the files and
    /// directories they name. `None` when it has errors (they are in `self.errors`).
    fn resolve_stage(&mut self, def: &StageDef) -> Option<ResolvedStage> {
        self.check_shardable(def)?;
        let Some(kind) = self.registry.get(&def.kind) else {
            let message = format!(
                "unknown kind `{}`{}; known kinds: {}",
                def.kind,
                suggest(&def.kind, self.registry.kinds().into_iter()),
                self.registry.kinds().join(", ")
            );
            self.error(&format!("{}.kind", def.origin), message);
            return None;
        };
        let inputs = self.stage_inputs(def, kind);
        let merged = self.merge_kind_fields(def, kind);
        let (inputs, merged) = (inputs?, merged?);
        let resolved = match kind.resolve_params(&Value::Object(merged)) {
            Ok(v) => v,
            Err(err) => {
                let e = param_error(self.pipeline, def, kind.fields(), &err);
                self.errors.push(e);
                return None;
            }
        };
        let StageParams {
            params,
            recorded,
            key_params,
        } = self.named_paths(def, kind, &resolved);
        Some(ResolvedStage {
            name: def.name.clone(),
            kind: def.kind.clone(),
            kind_version: kind.version(),
            execution: kind.execution(),
            inputs,
            outputs: kind.declared_outputs(&resolved),
            params,
            recorded_params: recorded,
            key_params,
            seed: def.seed,
            line: def.line,
            origin: def.origin.clone(),
        })
    }

    /// A stage with `shards = N` needs a kind that can be sharded (one with a merge kind):
    /// otherwise one error at `shards`, reported once (on the merge step), instead of an
    /// unknown param on every shard and an unknown merge kind.
    fn check_shardable(&mut self, def: &StageDef) -> Option<()> {
        let base = match def.shard {
            ShardRole::Whole | ShardRole::Sharded { .. } => return Some(()),
            ShardRole::Shard { .. } => def.kind.as_str(),
            ShardRole::Merge { .. } => def.kind.strip_suffix("/merge").unwrap_or(&def.kind),
        };
        if self.registry.get(&merge_kind(base)).is_some() {
            return Some(());
        }
        if matches!(def.shard, ShardRole::Merge { .. }) {
            let can: Vec<String> = self
                .registry
                .kinds()
                .into_iter()
                .filter(|k| self.registry.get(&merge_kind(k)).is_some())
                .map(str::to_string)
                .collect();
            let message = format!(
                "kind `{base}` cannot be sharded (there is no kind `{}` to merge its shards); \
                 kinds that can: {}",
                merge_kind(base),
                can.join(", ")
            );
            self.error(&format!("{}.shards", def.origin), message);
        }
        None
    }

    fn error(&mut self, field: &str, message: String) {
        self.errors
            .push(self.pipeline.source().error(field, message));
    }

    /// Input name -> producing stage's index, every input accepted by the kind and every
    /// required one wired.
    fn stage_inputs(
        &mut self,
        def: &StageDef,
        kind: &dyn Stage,
    ) -> Option<BTreeMap<String, usize>> {
        let origin = &def.origin;
        let spec = kind.inputs();
        let mut ok = true;
        let mut inputs = BTreeMap::new();
        for (input, producer) in &def.inputs {
            if !spec.accepts(input) {
                let mut takes: Vec<String> = spec
                    .required
                    .iter()
                    .map(|r| format!("{r} (required)"))
                    .collect();
                takes.extend(spec.optional.iter().map(|o| o.to_string()));
                let message = format!(
                    "kind `{}` has no input `{input}`{}; it takes: {}",
                    def.kind,
                    suggest(input, spec.required.iter().chain(&spec.optional).copied()),
                    if takes.is_empty() {
                        "no inputs".to_string()
                    } else {
                        takes.join(", ")
                    }
                );
                self.error(&format!("{origin}.inputs.{input}"), message);
                ok = false;
            }
            match self.index.get(producer.as_str()) {
                Some(&p) => {
                    inputs.insert(input.clone(), p);
                }
                None => {
                    self.error(
                        &format!("{origin}.inputs.{input}"),
                        format!("unknown stage `{producer}`"),
                    );
                    ok = false;
                }
            }
        }
        for required in &spec.required {
            if !def.inputs.contains_key(*required) {
                self.error(
                    &format!("{origin}.inputs"),
                    format!("kind `{}` needs input `{required}` (inputs = {{ {required} = \"STAGE\" }})", def.kind),
                );
                ok = false;
            }
        }
        ok.then_some(inputs)
    }

    /// The stage's params with its kind fields (`cmd`, `outputs`, ...) merged in at the top
    /// level; unknown fields and fields set in the wrong place are errors.
    fn merge_kind_fields(
        &mut self,
        def: &StageDef,
        kind: &dyn Stage,
    ) -> Option<serde_json::Map<String, Value>> {
        let origin = &def.origin;
        let allowed = kind.fields();
        let mut ok = true;
        let mut merged = def.params.clone();
        for (field, value) in &def.kind_fields {
            if !allowed.contains(&field.as_str()) {
                let mut known: Vec<&str> = ENGINE_FIELDS.to_vec();
                known.extend(allowed);
                let message = format!(
                    "unknown field for kind `{}`{}; a stage table has: {} (put stage settings in `params`)",
                    def.kind,
                    suggest(field, known.iter().copied()),
                    known.join(", ")
                );
                self.error(&format!("{origin}.{field}"), message);
                ok = false;
                continue;
            }
            if def.params.contains_key(field) {
                self.error(
                    &format!("{origin}.params.{field}"),
                    format!(
                        "`{field}` is a field of kind `{}`, set it beside `kind`, not in params",
                        def.kind
                    ),
                );
                ok = false;
                continue;
            }
            merged.insert(field.clone(), value.clone());
        }
        ok.then_some(merged)
    }

    /// Files and directories named by params: their content into the key, their absolute path
    /// to the stage, both into the recorded params.
    fn named_paths(&mut self, def: &StageDef, kind: &dyn Stage, resolved: &Value) -> StageParams {
        let mut out = StageParams {
            params: resolved.clone(),
            recorded: resolved.clone(),
            key_params: Canon::from_json(resolved),
        };
        if let Canon::Map(m) = &mut out.key_params {
            for name in kind.unkeyed_params() {
                m.remove(*name);
            }
        }
        let named = kind
            .file_params(resolved)
            .into_iter()
            .map(|path| (path, PathKind::File))
            .chain(
                kind.dir_params(resolved)
                    .into_iter()
                    .map(|path| (path, PathKind::Dir)),
            );
        for (path, what) in named {
            let fail = |message: String| {
                param_error(
                    self.pipeline,
                    def,
                    kind.fields(),
                    &ParamError::new(path.clone(), message),
                )
            };
            let Some(Value::String(given)) = get_path(resolved, &path) else {
                let e = fail(format!("names a {} but is not a string", what.noun()));
                self.errors.push(e);
                continue;
            };
            let found = match find_path(self.pipeline, given, what) {
                Ok(found) => found,
                Err(message) => {
                    let e = fail(message);
                    self.errors.push(e);
                    continue;
                }
            };
            let hash = match self.file_hashes.get(&found) {
                Some(h) => *h,
                None => match what.hash(&found, self.cache) {
                    Ok(h) => {
                        self.file_hashes.insert(found.clone(), h);
                        h
                    }
                    Err(e) => {
                        let e = fail(format!("cannot read `{}`: {e}", found.display()));
                        self.errors.push(e);
                        continue;
                    }
                },
            };
            set_path(
                &mut out.params,
                &path,
                Value::String(found.display().to_string()),
            );
            set_path(
                &mut out.recorded,
                &path,
                serde_json::json!({ what.record_field(): given, "blake3": blake3::Hash::from(hash).to_hex().to_string() }),
            );
            out.key_params.replace(&path, Canon::File(hash));
        }
        out
    }
}

/// Kahn's algorithm, taking the earliest stage in file order among the ready ones, so plans and
/// runs list stages in a stable, readable order. `Err` holds one cycle.
fn topo_order(r: &Resolved) -> Result<Vec<usize>, Vec<usize>> {
    let n = r.stages.len();
    let mut indegree: Vec<usize> = r
        .stages
        .iter()
        .map(|s| s.inputs.values().collect::<BTreeSet<_>>().len())
        .collect();
    let mut consumers: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (i, s) in r.stages.iter().enumerate() {
        for &p in s.inputs.values() {
            consumers[p].insert(i);
        }
    }
    let mut ready: BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&i| indegree[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &c in &consumers[i] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(std::cmp::Reverse(c));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Some stage is left with inputs: walk back through unfinished producers until a stage
    // repeats; the repeated stretch is a cycle.
    let done: BTreeSet<usize> = order.into_iter().collect();
    let Some(start) = (0..n).find(|i| !done.contains(i)) else {
        return Err(Vec::new());
    };
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let Some(&next) = r.stages[cur].inputs.values().find(|p| !done.contains(p)) else {
            return Err(path);
        };
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let mut cycle = path[pos..].to_vec();
            cycle.reverse();
            return Err(cycle);
        }
        path.push(next);
        cur = next;
    }
}

fn cycle_error(r: &Resolved, cycle: &[usize]) -> PipelineError {
    // Report at the stage that appears first in the file, on the input closing the cycle.
    let first_pos = cycle
        .iter()
        .enumerate()
        .min_by_key(|(_, &s)| r.stages[s].line)
        .map_or(0, |(i, _)| i);
    let rotated: Vec<usize> = cycle[first_pos..]
        .iter()
        .chain(&cycle[..first_pos])
        .copied()
        .collect();
    let names: Vec<&str> = rotated.iter().map(|&i| r.stages[i].name.as_str()).collect();
    let first = &r.stages[rotated[0]];
    let producer = *rotated.last().unwrap_or(&rotated[0]);
    let input = first
        .inputs
        .iter()
        .find(|(_, &p)| p == producer)
        .map(|(n, _)| n.clone())
        .unwrap_or_default();
    let mut chain = names.join(" -> ");
    chain.push_str(" -> ");
    chain.push_str(names[0]);
    r.pipeline.source().error(
        &format!("{}.inputs.{input}", first.origin),
        format!("cycle: {chain} (each feeds the next; a stage cannot depend on its own output)"),
    )
}

/// Locate a stage's param error in the file.
fn param_error(p: &Pipeline, def: &StageDef, fields: &[&str], err: &ParamError) -> PipelineError {
    let src = p.source();
    let origin = &def.origin;
    let f = err.field.as_str();
    let head = f.split(['.', '[']).next().unwrap_or(f);
    let candidates = if f.starts_with("params.")
        || f == "params"
        || def.kind_fields.contains_key(head)
        || fields.contains(&head)
    {
        vec![format!("{origin}.{f}")]
    } else {
        vec![format!("{origin}.params.{f}"), format!("{origin}.{f}")]
    };
    let field = candidates
        .iter()
        .find(|c| src.has(c))
        .unwrap_or(&candidates[0])
        .clone();
    src.error(&field, err.message.clone())
}

fn get_path<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    let mut node = v;
    for seg in parse_path(path) {
        node = match seg {
            PathSeg::Key(k) => node.get(k.as_str())?,
            PathSeg::Index(i) => node.get(i)?,
        };
    }
    Some(node)
}

fn set_path(v: &mut Value, path: &str, with: Value) {
    let mut node = v;
    for seg in parse_path(path) {
        let next = match seg {
            PathSeg::Key(k) => node.get_mut(k.as_str()),
            PathSeg::Index(i) => node.get_mut(i),
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    *node = with;
}

/// What a path-valued param names.
#[derive(Clone, Copy)]
enum PathKind {
    File,
    Dir,
}

impl PathKind {
    fn noun(self) -> &'static str {
        match self {
            PathKind::File => "file",
            PathKind::Dir => "directory",
        }
    }

    /// The field naming the path in the recorded params (`{"file": …, "blake3": …}`).
    fn record_field(self) -> &'static str {
        match self {
            PathKind::File => "file",
            PathKind::Dir => "dir",
        }
    }

    fn hash(self, path: &Path, cache: Option<&HashCache>) -> std::io::Result<[u8; 32]> {
        match self {
            PathKind::File => hash_file(path, cache),
            PathKind::Dir => hash_dir(path, cache),
        }
    }
}

/// A relative path param is looked up next to the pipeline file first, then in the current
/// directory (so `config = "configs/x.toml"` works from the repository root too).
///
/// Only `stat` is used to decide: a FIFO or a device is never opened (reading a FIFO would
/// block until someone writes to it). When no candidate is the right kind of file, the error
/// says what was found instead (`is a directory`, `is a FIFO`, ...) or that nothing was.
fn find_path(p: &Pipeline, given: &str, what: PathKind) -> Result<PathBuf, String> {
    let path = Path::new(given);
    let candidates = if path.is_absolute() {
        vec![path.to_path_buf()]
    } else {
        vec![p.dir().join(path), path.to_path_buf()]
    };
    let mut wrong_kind = None;
    for candidate in &candidates {
        // `metadata` follows symlinks, as opening would.
        match std::fs::metadata(candidate) {
            Ok(meta) => {
                let right = match what {
                    PathKind::File => meta.is_file(),
                    PathKind::Dir => meta.is_dir(),
                };
                if right {
                    return Ok(std::path::absolute(candidate).unwrap_or(candidate.clone()));
                }
                wrong_kind.get_or_insert_with(|| {
                    format!(
                        "`{}` {}, not a {}",
                        candidate.display(),
                        describe_file_type(&meta.file_type()),
                        what.noun()
                    )
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if std::fs::symlink_metadata(candidate).is_ok() {
                    wrong_kind.get_or_insert_with(|| {
                        format!(
                            "`{}` is a symbolic link to a missing target",
                            candidate.display()
                        )
                    });
                }
            }
            Err(e) => {
                wrong_kind
                    .get_or_insert_with(|| format!("cannot stat `{}`: {e}", candidate.display()));
            }
        }
    }
    Err(match wrong_kind {
        Some(message) if matches!(what, PathKind::File) && message.contains("is a FIFO") => {
            format!(
            "{message} (its content would enter the cache key, and reading a FIFO blocks until \
             something writes to it)"
        )
        }
        Some(message) => message,
        None => format!(
            "missing {} `{given}` (looked in {} and in the current directory)",
            what.noun(),
            p.dir().display()
        ),
    })
}

/// `is a directory`, `is a FIFO (named pipe)`, ...: what a path is, for errors.
fn describe_file_type(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "is a FIFO (named pipe)";
        }
        if ft.is_char_device() {
            return "is a character device";
        }
        if ft.is_block_device() {
            return "is a block device";
        }
        if ft.is_socket() {
            return "is a socket";
        }
    }
    if ft.is_dir() {
        "is a directory"
    } else if ft.is_file() {
        "is a regular file"
    } else {
        "is not a regular file or directory"
    }
}

#[cfg(test)]
mod unkeyed_tests {
    use super::*;
    use crate::stage::{Execution, InputSpec, ParamError, StageContext, StageError};

    /// Kind `k`: any params; `devices` is how it runs, not what it computes.
    struct K;

    impl Stage for K {
        fn kind(&self) -> &'static str {
            "k"
        }
        fn version(&self) -> u32 {
            1
        }
        fn execution(&self) -> Execution {
            Execution::InProcess
        }
        fn inputs(&self) -> InputSpec {
            InputSpec::none()
        }
        fn resolve_params(&self, params: &Value) -> Result<Value, ParamError> {
            Ok(params.clone())
        }
        fn unkeyed_params(&self) -> &'static [&'static str] {
            &["devices"]
        }
        fn run(&self, _: &StageContext) -> Result<(), StageError> {
            Ok(())
        }
    }

    fn stage(params: &str) -> ResolvedStage {
        let text =
            format!("[pipeline]\nname = \"p\"\n[stage.a]\nkind = \"k\"\nparams = {params}\n");
        let pipeline = Pipeline::parse(Path::new("p.toml"), text).unwrap();
        let mut registry = Registry::new();
        registry.register(Box::new(K));
        resolve(pipeline, &registry).unwrap().stages.remove(0)
    }

    #[test]
    fn unkeyed_params_reach_the_stage_but_not_the_key() {
        let one = stage("{ lr = 0.5 }");
        let two = stage("{ lr = 0.5, devices = 2 }");
        assert_eq!(one.key_params, two.key_params);
        assert_eq!(two.params["devices"], 2);
        assert_eq!(two.recorded_params["devices"], 2);
        // Every other param still keys.
        assert_ne!(
            one.key_params,
            stage("{ lr = 0.25, devices = 2 }").key_params
        );
    }
}

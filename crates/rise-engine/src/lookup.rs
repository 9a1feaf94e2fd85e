//! Finding committed results (by result id, artifact id, hex prefix or stage name) and
//! reporting on one (`rise show`), or copying its output out of the store (`rise export`).
//!
//! Every indexed result is read once ([`Results::read`]); a damaged manifest affects only the
//! lookups that need it, never those of other results.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rise_store::{ArtifactId, BlobId, IndexSnapshot, ResultId, ResultManifest, Store, StoreError};
use serde::Serialize;

/// What to do about a damaged result, said wherever one is met.
pub const DAMAGED_HINT: &str = "run `rise store verify` to list what is damaged, then `rise store \
reindex` to drop damaged results from the index (`rise run` recomputes them)";

/// Why a result could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The result asked for is damaged.
    #[error("{what} is result {id}, which is damaged ({problem}); {DAMAGED_HINT}")]
    Damaged {
        /// How the result was asked for, e.g. "the latest result of stage a (pipeline p)".
        what: String,
        /// The result.
        id: ResultId,
        /// What is wrong with it.
        problem: String,
    },
    /// The index names a result that is not among those read.
    #[error("{what}: result {id} is not in the store")]
    Missing {
        /// How the result was asked for.
        what: String,
        /// The result.
        id: ResultId,
    },
    /// A hex prefix that matches several ids.
    #[error("`{what}` is ambiguous: it prefixes {count} {ids}")]
    Ambiguous {
        /// The prefix.
        what: String,
        /// How many ids it prefixes.
        count: usize,
        /// "result ids" or "artifacts".
        ids: &'static str,
    },
    /// Nothing matches.
    #[error(
        "no result matches `{what}` (give a result id, an artifact id, a hex prefix of 6+ \
         digits, or a stage name that has run){damaged_note}"
    )]
    NoMatch {
        /// What was asked for.
        what: String,
        /// [`Results::damaged_note`]: damaged results might have matched.
        damaged_note: String,
    },
    /// A stage name found in several pipelines.
    #[error(
        "stage `{what}` exists in several pipelines ({}); pick one with --pipeline NAME",
        pipelines.join(", ")
    )]
    SeveralPipelines {
        /// The stage name.
        what: String,
        /// The pipelines that have it.
        pipelines: Vec<String>,
    },
    /// A file system operation failed (making a path absolute).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Every indexed result, read once: the readable ones, and those whose manifest is missing,
/// fails its hash or does not parse.
pub struct Results {
    /// Readable results by id.
    pub ok: BTreeMap<ResultId, ResultManifest>,
    /// Damaged results and what is wrong with each.
    pub damaged: BTreeMap<ResultId, String>,
    /// The index (current: it rolls forward every committed marker first).
    pub index: IndexSnapshot,
}

/// Who produced an artifact, as far as the index knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Producer<'a> {
    /// A readable result.
    Result(ResultId, &'a ResultManifest),
    /// The producing result is damaged: its id and what is wrong.
    Damaged(ResultId, &'a str),
    /// No indexed producer: the artifact was imported or pinned.
    None,
}

impl Results {
    /// Read every result the (current) index lists.
    pub fn read(store: &Store) -> Result<Results, StoreError> {
        let index = store.current_index()?;
        let mut ok = BTreeMap::new();
        let mut damaged = BTreeMap::new();
        for id in &index.results {
            match store.read_result(id) {
                Ok(m) => {
                    ok.insert(*id, m);
                }
                Err(e) if e.is_corruption() => {
                    damaged.insert(*id, e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Results { ok, damaged, index })
    }

    /// Result `id`, or an error saying it is damaged and what to do. `what` says how it was
    /// asked for, for the message.
    pub fn get(
        &self,
        id: &ResultId,
        what: &str,
    ) -> Result<(ResultId, ResultManifest), LookupError> {
        if let Some(m) = self.ok.get(id) {
            return Ok((*id, m.clone()));
        }
        match self.damaged.get(id) {
            Some(problem) => Err(LookupError::Damaged {
                what: what.to_string(),
                id: *id,
                problem: problem.clone(),
            }),
            None => Err(LookupError::Missing {
                what: what.to_string(),
                id: *id,
            }),
        }
    }

    /// `artifact`'s current producer.
    pub fn producer(&self, artifact: &ArtifactId) -> Producer<'_> {
        let Some(id) = self.index.producers.get(artifact) else {
            return Producer::None;
        };
        match (self.ok.get(id), self.damaged.get(id)) {
            (Some(m), _) => Producer::Result(*id, m),
            (None, Some(problem)) => Producer::Damaged(*id, problem),
            (None, None) => Producer::None,
        }
    }

    /// `; N damaged result(s) could not be read (...)`, or nothing.
    pub fn damaged_note(&self) -> String {
        if self.damaged.is_empty() {
            return String::new();
        }
        let ids: Vec<String> = self.damaged.keys().map(|id| id.short(12)).collect();
        format!(
            "; {} damaged result(s) could not be read ({}): {DAMAGED_HINT}",
            ids.len(),
            ids.join(", ")
        )
    }

    /// Find a result by result id, artifact id (its current producer), a hex prefix of 6+
    /// digits of either, or a stage name (its latest result; `pipeline` picks among
    /// pipelines that have a stage of that name).
    pub fn find(
        &self,
        what: &str,
        pipeline: Option<&str>,
    ) -> Result<(ResultId, ResultManifest), LookupError> {
        let is_hex = what.len() >= 6 && what.chars().all(|c| c.is_ascii_hexdigit());
        if is_hex {
            let lower = what.to_ascii_lowercase();
            let ids: Vec<&ResultId> = self
                .index
                .results
                .iter()
                .filter(|id| id.to_hex().starts_with(&lower))
                .collect();
            match ids.as_slice() {
                [] => {}
                [id] => return self.get(id, &format!("`{what}`")),
                many => {
                    return Err(LookupError::Ambiguous {
                        what: what.to_string(),
                        count: many.len(),
                        ids: "result ids",
                    })
                }
            }
            let artifacts: Vec<(&ArtifactId, &ResultId)> = self
                .index
                .producers
                .iter()
                .filter(|(a, _)| a.to_hex().starts_with(&lower))
                .collect();
            match artifacts.as_slice() {
                [] => {}
                [(a, id)] => return self.get(id, &format!("the producer of artifact {a}")),
                many => {
                    return Err(LookupError::Ambiguous {
                        what: what.to_string(),
                        count: many.len(),
                        ids: "artifacts",
                    })
                }
            }
        }
        // A stage name: its latest result in the index.
        let latest: Vec<(&(String, String), &ResultId)> = self
            .index
            .latest
            .iter()
            .filter(|((p, st), _)| st == what && pipeline.is_none_or(|want| p == want))
            .collect();
        match latest.as_slice() {
            [((p, st), id)] => self.get(
                id,
                &format!("the latest result of stage {st} (pipeline {p})"),
            ),
            [] => Err(LookupError::NoMatch {
                what: what.to_string(),
                damaged_note: self.damaged_note(),
            }),
            many => Err(LookupError::SeveralPipelines {
                what: what.to_string(),
                pipelines: many.iter().map(|((p, _), _)| p.clone()).collect(),
            }),
        }
    }
}

/// One committed result in full (`rise show`).
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// The result.
    pub result: ResultId,
    /// Its manifest.
    pub manifest: ResultManifest,
    /// The absolute path of a sealed, read-only checkout of its output.
    pub output_path: PathBuf,
    /// The output's files.
    pub files: Vec<ShowFile>,
    /// Each input and who produced it (for the text form; JSON readers have the manifest).
    #[serde(skip)]
    pub inputs: Vec<ShowInput>,
}

/// One file of a result's output.
#[derive(Debug, Clone, Serialize)]
pub struct ShowFile {
    /// Path inside the artifact.
    pub path: String,
    /// Its content.
    pub blob: BlobId,
    /// Its size in bytes.
    pub size: u64,
}

/// One input of a result.
#[derive(Debug, Clone)]
pub struct ShowInput {
    /// The input name.
    pub name: String,
    /// The artifact it read.
    pub artifact: ArtifactId,
    /// Who produced that artifact.
    pub producer: InputProducer,
}

/// Who produced an input artifact ([`Producer`] without the borrowed manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputProducer {
    /// A readable result of this stage.
    Stage(String),
    /// No producing result: imported or pinned.
    None,
    /// The producing result is damaged.
    Damaged(ResultId),
}

/// The result `what` names ([`Results::find`]), its output files and a checkout of its output.
pub fn show(store: &Store, what: &str, pipeline: Option<&str>) -> Result<ShowReport, LookupError> {
    let results = Results::read(store)?;
    let (result, manifest) = results.find(what, pipeline)?;
    let tree = store.read_tree(&manifest.output)?;
    let output_path = std::path::absolute(store.artifact_path(&manifest.output)?)?;
    let inputs = manifest
        .inputs
        .iter()
        .map(|(name, a)| ShowInput {
            name: name.clone(),
            artifact: *a,
            producer: match results.producer(a) {
                Producer::Result(_, pm) => InputProducer::Stage(pm.stage.clone()),
                Producer::None => InputProducer::None,
                Producer::Damaged(pid, _) => InputProducer::Damaged(pid),
            },
        })
        .collect();
    let files = tree
        .entries
        .iter()
        .map(|e| ShowFile {
            path: e.path.clone(),
            blob: e.blob,
            size: e.size,
        })
        .collect();
    Ok(ShowReport {
        result,
        manifest,
        output_path,
        files,
        inputs,
    })
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The result could not be found or read.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output lacks files the caller requires.
    #[error("{0}")]
    MissingFiles(Box<MissingFiles>),
    /// The destination has files in it.
    #[error("{} exists and is not empty; choose a new directory", .0.display())]
    NotEmpty(PathBuf),
    /// A file operation failed; `doing` says which, with its path.
    #[error("{doing}")]
    Io {
        /// What was being done, e.g. "cannot create /x/config.json".
        doing: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file operation failed on a path named by the caller.
    #[error(transparent)]
    Bare(#[from] std::io::Error),
}

/// An output that lacks files an export requires.
#[derive(Debug, thiserror::Error)]
#[error("{what} ({kind} stage `{stage}`, result {id}) is not a {noun}: its output lacks {}", missing.join(", "))]
pub struct MissingFiles {
    /// How the result was asked for.
    pub what: String,
    /// Its stage kind.
    pub kind: String,
    /// Its stage.
    pub stage: String,
    /// The result.
    pub id: ResultId,
    /// What the caller wanted, e.g. "model".
    pub noun: &'static str,
    /// The required files that are absent.
    pub missing: Vec<String>,
}

impl ExportError {
    fn io(doing: String) -> impl FnOnce(std::io::Error) -> ExportError {
        move |source| ExportError::Io { doing, source }
    }
}

/// What to export: the result that `what` names, the files it must have, and which of its
/// files to copy.
pub struct ExportRequest<'a> {
    /// Stage name, result id, artifact id or hex prefix ([`Results::find`]).
    pub what: &'a str,
    /// Pipeline name, to pick among stages of the same name.
    pub pipeline: Option<&'a str>,
    /// Files the output must contain, else [`ExportError::MissingFiles`].
    pub required: &'a [&'a str],
    /// What an output with the required files is called, for the error (e.g. "model").
    pub noun: &'static str,
    /// Files to copy (others in the output are left out).
    pub files: &'a [&'a str],
}

/// The result that was exported.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The result.
    pub result: ResultId,
    /// Its manifest.
    pub manifest: ResultManifest,
}

/// Copy files of a result's output into `to`, a new or empty directory. Every file is
/// verified against its hash while it is copied, into a sibling temporary directory that is
/// renamed into place, so an interrupted export leaves no half-written directory under `to`.
pub fn export(store: &Store, req: &ExportRequest<'_>, to: &Path) -> Result<Exported, ExportError> {
    let results = Results::read(store)?;
    let (id, m) = results.find(req.what, req.pipeline)?;
    let tree = store.read_tree(&m.output)?;
    let missing: Vec<String> = req
        .required
        .iter()
        .filter(|f| tree.get(f).is_none())
        .map(|f| f.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(ExportError::MissingFiles(Box::new(MissingFiles {
            what: req.what.to_string(),
            kind: m.kind,
            stage: m.stage,
            id,
            noun: req.noun,
            missing,
        })));
    }
    if to.exists() {
        let non_empty = std::fs::read_dir(to)
            .map_err(ExportError::io(format!("cannot read {}", to.display())))?
            .next()
            .is_some();
        if non_empty {
            return Err(ExportError::NotEmpty(to.to_path_buf()));
        }
    }
    let parent = std::path::absolute(to)?
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    std::fs::create_dir_all(&parent).map_err(ExportError::io(format!(
        "cannot create {}",
        parent.display()
    )))?;
    let staging = tempfile::Builder::new()
        .prefix(".rise-export-")
        .tempdir_in(&parent)
        .map_err(ExportError::io(format!(
            "cannot create a temporary directory in {}",
            parent.display()
        )))?;
    for entry in tree
        .entries
        .iter()
        .filter(|e| req.files.contains(&e.path.as_str()))
    {
        let dest = staging.path().join(&entry.path);
        let mut reader = store.open_blob(&entry.blob)?;
        let mut file = std::fs::File::create(&dest)
            .map_err(ExportError::io(format!("cannot create {}", dest.display())))?;
        std::io::copy(&mut reader, &mut file).map_err(ExportError::io(format!(
            "copying {} (blob {})",
            entry.path, entry.blob
        )))?;
        file.sync_all()?;
    }
    if to.exists() {
        std::fs::remove_dir(to).map_err(ExportError::io(format!(
            "cannot replace empty {}",
            to.display()
        )))?;
    }
    let staged = staging.keep();
    std::fs::rename(&staged, to).map_err(ExportError::io(format!(
        "cannot move the export into {}",
        to.display()
    )))?;
    Ok(Exported {
        result: id,
        manifest: m,
    })
}

/// A store and pipelines of shell stages, run for real, shared by the tests of the report
/// modules (`lookup`, `lineage`, `explain`, `audit`).
#[cfg(test)]
pub(crate) mod fixture {
    use std::path::Path;

    use rise_store::Store;

    use crate::exec::{self, RunOptions};
    use crate::pipeline::Pipeline;
    use crate::progress::DisplayMode;
    use crate::registry::Registry;
    use crate::resolve::{resolve, Resolved};

    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
        pub store: Store,
        pub registry: Registry,
    }

    /// A shell stage writing `out.txt`: its inputs' `out.txt`, then its name and params.
    /// `extra` is more shell, run before that (e.g. to write other files or to fail).
    pub(crate) fn stage(name: &str, inputs: &[(&str, &str)], params: &str, extra: &str) -> String {
        let ins: Vec<String> = inputs
            .iter()
            .map(|(i, s)| format!("{i} = \"{s}\""))
            .collect();
        let cats: String = inputs
            .iter()
            .map(|(i, _)| {
                format!(
                    "cat \"$RISE_IN_{}/out.txt\" >> \"$RISE_OUT/out.txt\"; ",
                    i.to_uppercase()
                )
            })
            .collect();
        format!(
            "[stage.{name}]\nkind = \"shell\"\ninputs = {{ {} }}\nparams = {{ {params} }}\n\
             cmd = '''{extra} : > \"$RISE_OUT/out.txt\"; {cats}echo \"{name} $(env | grep ^RISE_PARAM_ | sort | tr '\\n' ' ')\" >> \"$RISE_OUT/out.txt\"'''\n\n",
            ins.join(", ")
        )
    }

    impl Fixture {
        pub(crate) fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path().join("store")).unwrap();
            Fixture {
                dir,
                store,
                registry: Registry::new(),
            }
        }

        /// Pipeline `name` of `stages` ([`stage`]s), resolved.
        pub(crate) fn resolve(&self, name: &str, stages: &str) -> Resolved {
            let path = self.dir.path().join(format!("{name}.toml"));
            let text = format!("[pipeline]\nname = \"{name}\"\nseed = 1\n\n{stages}");
            std::fs::write(&path, &text).unwrap();
            let pipeline = Pipeline::parse(Path::new(&path), text).unwrap();
            resolve(pipeline, &self.registry).unwrap()
        }

        /// Run every stage; every one must succeed.
        pub(crate) fn run(&self, resolved: &Resolved) {
            let summary = exec::run(resolved, &self.registry, &self.store, &Self::opts()).unwrap();
            assert!(summary.success(), "{summary:?}");
        }

        pub(crate) fn opts() -> RunOptions {
            RunOptions {
                display: DisplayMode::Quiet,
                ..RunOptions::default()
            }
        }

        /// Overwrite the manifest of `stage`'s latest result (its blob is named by the result
        /// id): the result becomes damaged.
        pub(crate) fn damage_result(&self, pipeline: &str, stage: &str) {
            use std::os::unix::fs::PermissionsExt;
            let index = self.store.current_index().unwrap();
            let id = index.latest[&(pipeline.to_string(), stage.to_string())].to_hex();
            let path = self
                .store
                .root()
                .join("objects")
                .join(&id[..2])
                .join(&id[2..]);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&path, b"{\"not\": \"a manifest\"}").unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{stage, Fixture};
    use super::*;

    /// An in-memory index of results (none readable) whose ids start with `prefixes`.
    fn results_with_ids(prefixes: &[[u8; 4]]) -> Results {
        let mut index = IndexSnapshot::default();
        for prefix in prefixes {
            let mut bytes = [0u8; 32];
            bytes[..4].copy_from_slice(prefix);
            index.results.insert(BlobId(bytes));
        }
        Results {
            ok: BTreeMap::new(),
            damaged: BTreeMap::new(),
            index,
        }
    }

    #[test]
    fn a_prefix_of_several_ids_is_ambiguous_and_a_short_one_is_a_stage_name() {
        let results = results_with_ids(&[[0xab, 0xcd, 0xef, 0x01], [0xab, 0xcd, 0xef, 0x02]]);
        let err = results.find("abcdef", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`abcdef` is ambiguous: it prefixes 2 result ids"
        );
        // One match: found, but it is neither readable nor damaged.
        let err = results.find("ABCDEF01", None).unwrap_err();
        assert!(matches!(err, LookupError::Missing { .. }), "{err}");
        // Five digits are too few for a prefix: a stage name, which has no result.
        let err = results.find("abcde", None).unwrap_err();
        assert!(matches!(err, LookupError::NoMatch { .. }), "{err}");
    }

    #[test]
    fn finds_by_stage_by_result_and_by_artifact() {
        let f = Fixture::new();
        let text = stage("a", &[], "n = 1", "") + &stage("b", &[("x", "a")], "n = 2", "");
        f.run(&f.resolve("p", &text));
        let results = Results::read(&f.store).unwrap();
        let (id, m) = results.find("b", None).unwrap();
        assert_eq!(m.stage, "b");
        assert_eq!(results.find(&id.short(8), None).unwrap().0, id);
        // An artifact id (in upper case too) names its producer.
        let by_output = results
            .find(&m.output.short(10).to_uppercase(), None)
            .unwrap();
        assert_eq!(by_output.0, id);
        assert_eq!(results.find("b", Some("p")).unwrap().0, id);
        let err = results.find("b", Some("other")).unwrap_err().to_string();
        assert!(err.starts_with("no result matches `b`"), "{err}");
        let (_, a) = results.find("a", None).unwrap();
        assert_eq!(m.inputs["x"], a.output);
        assert!(matches!(results.producer(&a.output), Producer::Result(_, pm) if pm.stage == "a"));
        assert_eq!(results.producer(&BlobId::of(b"nothing")), Producer::None);
    }

    #[test]
    fn a_stage_in_several_pipelines_needs_a_pipeline_name() {
        let f = Fixture::new();
        f.run(&f.resolve("p", &stage("a", &[], "n = 1", "")));
        f.run(&f.resolve("q", &stage("a", &[], "n = 2", "")));
        let results = Results::read(&f.store).unwrap();
        let err = results.find("a", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "stage `a` exists in several pipelines (p, q); pick one with --pipeline NAME"
        );
        assert_eq!(results.find("a", Some("q")).unwrap().1.pipeline, "q");
    }

    #[test]
    fn a_damaged_result_fails_only_its_own_lookup() {
        let f = Fixture::new();
        let resolved = f.resolve(
            "p",
            &(stage("a", &[], "n = 1", "") + &stage("b", &[("x", "a")], "n = 2", "")),
        );
        f.run(&resolved);
        f.damage_result("p", "a");
        let results = Results::read(&f.store).unwrap();
        assert_eq!(results.damaged.len(), 1);
        let err = results.find("a", None).unwrap_err().to_string();
        assert!(
            err.starts_with("the latest result of stage a (pipeline p) is result "),
            "{err}"
        );
        assert!(err.contains(DAMAGED_HINT), "{err}");
        let report = show(&f.store, "b", None).unwrap();
        assert!(matches!(
            report.inputs[0].producer,
            InputProducer::Damaged(_)
        ));
        let err = results.find("zz", None).unwrap_err().to_string();
        assert!(
            err.contains("1 damaged result(s) could not be read"),
            "{err}"
        );
    }

    #[test]
    fn show_reports_files_inputs_and_a_checkout() {
        let f = Fixture::new();
        let resolved = f.resolve(
            "p",
            &(stage("a", &[], "n = 1", "") + &stage("b", &[("x", "a")], "n = 2", "")),
        );
        f.run(&resolved);
        let report = show(&f.store, "b", None).unwrap();
        assert_eq!(report.manifest.stage, "b");
        assert_eq!(report.files.len(), 1);
        assert_eq!(report.files[0].path, "out.txt");
        let text = std::fs::read_to_string(report.output_path.join("out.txt")).unwrap();
        assert_eq!(report.files[0].size, text.len() as u64);
        assert!(text.starts_with("a "), "{text}");
        assert_eq!(report.inputs.len(), 1);
        assert_eq!(report.inputs[0].producer, InputProducer::Stage("a".into()));
        // JSON: the inputs are in the manifest; the producers are for the text form only.
        let v = serde_json::to_value(&report).unwrap();
        assert!(v.get("inputs").is_none(), "{v}");
        assert_eq!(v["files"][0]["path"], "out.txt");
        assert_eq!(v["result"], report.result.to_hex());
    }

    #[test]
    fn export_copies_the_chosen_files_of_a_complete_output_only() {
        let f = Fixture::new();
        let extra = "echo '{}' > \"$RISE_OUT/config.json\"; echo x > \"$RISE_OUT/junk\";";
        let mut text = stage("m", &[], "n = 1", extra);
        text = text.replace(
            "kind = \"shell\"",
            "kind = \"shell\"\noutputs = [\"out.txt\", \"config.json\", \"junk\"]",
        );
        f.run(&f.resolve("p", &text));
        let to = f.dir.path().join("export");
        let req = |required: &'static [&'static str]| ExportRequest {
            what: "m",
            pipeline: None,
            required,
            noun: "model",
            files: &["config.json", "out.txt"],
        };
        let err = export(&f.store, &req(&["config.json", "weights"]), &to).unwrap_err();
        assert!(
            err.to_string()
                .contains("is not a model: its output lacks weights"),
            "{err}"
        );
        assert!(!to.exists());
        let done = export(&f.store, &req(&["config.json"]), &to).unwrap();
        assert_eq!(done.manifest.stage, "m");
        let mut names: Vec<String> = std::fs::read_dir(&to)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["config.json", "out.txt"]);
        // No staging directory is left beside it.
        let siblings = std::fs::read_dir(f.dir.path()).unwrap().filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".rise-export-")
        });
        assert_eq!(siblings.count(), 0);
        // A non-empty destination is refused.
        let err = export(&f.store, &req(&["config.json"]), &to).unwrap_err();
        assert!(matches!(err, ExportError::NotEmpty(_)), "{err}");
    }
}

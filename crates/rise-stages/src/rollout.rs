//! The rollout data model shared by `sample`, `grade`, `relabel`, `train` and `evaluate`.
//!
//! A [`Trajectory`] is one prompt's multi-turn episode: the attempts made at each turn, each with
//! the conversation the model saw, its response, and (once graded) the extracted answer, verdict and
//! reward. Trajectories are stored as JSON Lines shards (`shard-00000.jsonl`, …) so that long stages
//! can commit finished shards to scratch and resume from them after a crash.
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use rise_data::conversation::{Message, Role};
use rise_data::grade::TaskKind;

/// `rollouts.json`: what a rollouts artifact holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutsMeta {
    /// Which grading rules apply (from the prompts' dataset).
    pub task: TaskKind,
    /// Trajectories in the artifact's shard files, all shards together.
    pub trajectories: usize,
    /// Whether every attempt carries a verdict and reward.
    pub graded: bool,
    /// The context window the conversations were built with.
    pub window: usize,
}

/// The metadata file of a rollouts artifact.
pub const META_FILE: &str = "rollouts.json";

/// Where a response came from: the learner's own on-policy sample, a best-of-N relabel drawn from
/// the learner (self-distillation), or a teacher model (distillation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The learner's own on-policy sample (the `sample` stage).
    Policy,
    /// Best-of-N from the learner at a wrong state (relabel, self-distillation).
    SelfDistill,
    /// A teacher model's answer at a wrong state (relabel, distillation).
    Teacher,
}

/// The grader's verdict on one response (rise-data's, which maps a grade to it).
pub use rise_data::grade::Verdict;

/// One turn of a trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based turn number.
    pub turn: u32,
    /// The conversation the model was given (after the context window was applied).
    pub messages: Vec<Message>,
    /// The model's reply, as generated.
    pub response: String,
    /// Who wrote the reply.
    pub source: Source,
    /// How many candidates were drawn for this turn (1 on-policy, N for best-of-N).
    #[serde(default = "one")]
    pub candidates: u32,
    /// The extracted final answer; `None` until graded or when unparseable.
    #[serde(default)]
    pub answer: Option<String>,
    #[serde(default)]
    /// The grader's verdict; `None` until graded.
    pub verdict: Option<Verdict>,
    #[serde(default)]
    /// The reward the verdict maps to (the `grade` stage's rewards); `None` until graded.
    pub reward: Option<f64>,
}

fn one() -> u32 {
    1
}

impl Attempt {
    /// True when graded correct.
    pub fn is_correct(&self) -> bool {
        self.verdict.is_some_and(Verdict::is_correct)
    }
}

/// One prompt's episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    /// The problem's id in its dataset.
    pub prompt_id: String,
    /// The problem's text.
    pub question: String,
    /// The gold answer (already extracted from the reference solution).
    pub gold: String,
    /// Attempts in turn order (turn 1 first).
    pub attempts: Vec<Attempt>,
}

impl Trajectory {
    /// The conversation before the next attempt (RISE.md §2): the question, the attempts so far
    /// with their feedback, cut to the context `window`. Sampling and relabelling both build
    /// their turn-t state with this, so the two can never disagree on it.
    pub fn next_state(&self, window: usize, system: &str) -> Vec<rise_data::conversation::Message> {
        self.state_before(self.attempts.len(), window, system)
    }

    /// The conversation before attempt `index` (0-based): what [`Trajectory::next_state`]
    /// gave when that attempt was made. `train` checks stored conversations against it.
    pub fn state_before(
        &self,
        index: usize,
        window: usize,
        system: &str,
    ) -> Vec<rise_data::conversation::Message> {
        let previous: Vec<String> = self.attempts[..index.min(self.attempts.len())]
            .iter()
            .map(|a| a.response.clone())
            .collect();
        rise_data::conversation::build_messages(&self.question, &previous, window, system)
    }

    /// The system message the conversations were built with: turn 1's, if it has one ("" for
    /// none). Relabelling keeps the learner's, whichever model answers.
    pub fn system(&self) -> &str {
        self.attempts
            .first()
            .and_then(|a| a.messages.first())
            .filter(|m| m.role == Role::System)
            .map_or("", |m| m.content.as_str())
    }

    /// Index of the first correct attempt, if any.
    pub fn first_correct(&self) -> Option<usize> {
        self.attempts.iter().position(Attempt::is_correct)
    }

    /// True when every attempt carries a verdict and a reward.
    pub fn is_graded(&self) -> bool {
        self.attempts
            .iter()
            .all(|a| a.verdict.is_some() && a.reward.is_some())
    }
}

/// Errors reading or writing rollout shards.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("{path}: {source}")]
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a trajectory: {source}")]
    /// A line of a shard file is not a trajectory.
    Parse {
        /// The shard file.
        path: PathBuf,
        /// The line number, 1-based.
        line: usize,
        #[source]
        /// What serde_json said.
        source: serde_json::Error,
    },
    #[error("{path}: no rollout shards (shard-*.jsonl) found")]
    /// The artifact directory holds no shard file.
    NoShards {
        /// The artifact directory.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RolloutError + '_ {
    move |source| RolloutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of shard `index` (zero-padded so that lexical order is numeric order).
pub fn shard_name(index: usize) -> String {
    format!("shard-{index:05}.jsonl")
}

/// Writes `items` as JSON Lines to `path` atomically (temp file + rename), so a crash never leaves a
/// half-written shard that a resumed run would trust.
pub fn write_jsonl<T: Serialize>(path: &Path, items: &[T]) -> Result<(), RolloutError> {
    let tmp = path.with_extension("jsonl.partial");
    {
        let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = BufWriter::new(file);
        for item in items {
            // Serializing our own plain structs cannot fail; a failure here would be a bug.
            let line = serde_json::to_string(item).map_err(|e| RolloutError::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e),
            })?;
            w.write_all(line.as_bytes()).map_err(io_err(&tmp))?;
            w.write_all(b"\n").map_err(io_err(&tmp))?;
        }
        let file = w.into_inner().map_err(|e| RolloutError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Reads one JSON Lines file; blank lines are skipped, every other line must parse.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, RolloutError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_err(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let item = serde_json::from_str(&line).map_err(|source| RolloutError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(item);
    }
    Ok(out)
}

/// The shard files in `dir`, in order.
pub fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, RolloutError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("shard-") && name.ends_with(".jsonl") {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths)
}

/// Reads every trajectory of an artifact directory, shard by shard.
pub fn read_trajectories(dir: &Path) -> Result<Vec<Trajectory>, RolloutError> {
    let paths = shard_paths(dir)?;
    if paths.is_empty() {
        return Err(RolloutError::NoShards {
            path: dir.to_path_buf(),
        });
    }
    let mut all = Vec::new();
    for p in paths {
        all.extend(read_jsonl::<Trajectory>(&p)?);
    }
    Ok(all)
}

/// Writes trajectories into `dir` as shards of at most `shard_size` (≥ 1) trajectories each.
pub fn write_trajectories(
    dir: &Path,
    trajectories: &[Trajectory],
    shard_size: usize,
) -> Result<(), RolloutError> {
    let size = shard_size.max(1);
    if trajectories.is_empty() {
        return write_jsonl::<Trajectory>(&dir.join(shard_name(0)), &[]);
    }
    for (i, chunk) in trajectories.chunks(size).enumerate() {
        write_jsonl(&dir.join(shard_name(i)), chunk)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traj(id: &str, verdicts: &[Verdict]) -> Trajectory {
        Trajectory {
            prompt_id: id.into(),
            question: "q".into(),
            gold: "1".into(),
            attempts: verdicts
                .iter()
                .enumerate()
                .map(|(i, v)| Attempt {
                    turn: i as u32 + 1,
                    messages: vec![Message::new(Role::User, "q")],
                    response: format!("r{i}"),
                    source: Source::Policy,
                    candidates: 1,
                    answer: Some("1".into()),
                    verdict: Some(*v),
                    reward: Some(0.0),
                })
                .collect(),
        }
    }

    #[test]
    fn shards_round_trip_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let ts: Vec<_> = (0..7)
            .map(|i| traj(&i.to_string(), &[Verdict::Wrong]))
            .collect();
        write_trajectories(dir.path(), &ts, 3).unwrap();
        assert_eq!(shard_paths(dir.path()).unwrap().len(), 3);
        assert_eq!(read_trajectories(dir.path()).unwrap(), ts);
    }

    #[test]
    fn first_correct_finds_the_earliest() {
        let t = traj("a", &[Verdict::Wrong, Verdict::Correct, Verdict::Correct]);
        assert_eq!(t.first_correct(), Some(1));
        assert!(t.is_graded());
    }

    #[test]
    fn a_bad_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(shard_name(0));
        fs::write(&p, "\n{\"prompt_id\": 3}\n").unwrap();
        let err = read_trajectories(dir.path()).unwrap_err().to_string();
        assert!(err.contains("shard-00000.jsonl:2"), "{err}");
    }

    #[test]
    fn an_empty_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_trajectories(dir.path()),
            Err(RolloutError::NoShards { .. })
        ));
    }
}

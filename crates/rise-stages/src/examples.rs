//! Training-example construction for reward-weighted regression (RISE.md §5).
//!
//! Each turn of a graded trajectory, up to and including its first correct turn, can become one
//! example: the conversation the model saw at that turn as input, the response as the only trained
//! message, and the weight `exp(reward / tau)`. Wrong responses are kept with weight 1 under the
//! `all` criterion: this is reward-weighted regression, not filtered SFT. A teacher's response
//! (the distillation arm) is weighted the same way, whatever its reward: the release keeps one
//! teacher sample per wrong state and lets the weight say how good it was.
//!
//! Every stored conversation is checked against the one rule that builds states
//! ([`rise_data::conversation::build_messages`] with the rollouts' window): an example is only
//! trained on a prefix that sampling and evaluation would also show the model.
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::rollout::{Message, Source, Trajectory};

/// Which turns of a trajectory become training examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Criterion {
    /// Every turn up to and including the first correct one (the release default).
    All,
    /// Turn 1, plus every later turn whose reward improved on the previous turn's.
    Better,
    /// Only the highest-reward turn of each trajectory (ties: the earliest).
    Best,
    /// Only correct turns.
    Success,
}

impl Criterion {
    /// The names `train`'s `criterion` param accepts, in declaration order.
    pub const NAMES: [&'static str; 4] = ["all", "better", "best", "success"];
}

impl FromStr for Criterion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Criterion::All),
            "better" => Ok(Criterion::Better),
            "best" => Ok(Criterion::Best),
            "success" => Ok(Criterion::Success),
            other => Err(format!(
                "unknown criterion {other:?}; expected one of {}",
                Criterion::NAMES.join(", ")
            )),
        }
    }
}

impl fmt::Display for Criterion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Criterion::All => "all",
            Criterion::Better => "better",
            Criterion::Best => "best",
            Criterion::Success => "success",
        };
        f.write_str(s)
    }
}

/// The paper's temperature for the reward weights.
pub const DEFAULT_TAU: f64 = 0.4;

/// How to turn trajectories into examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleOptions {
    /// Which turns become examples.
    pub criterion: Criterion,
    /// Weight temperature: w = exp(r / tau). Must be > 0.
    pub tau: f64,
    /// Drop examples whose (input conversation, response) repeats an earlier one.
    pub dedup: bool,
    /// Shuffle the examples with `seed` (deterministic).
    pub shuffle: bool,
    /// The shuffle's seed.
    pub seed: u64,
    /// The context window the rollouts were built with (their `rollouts.json`): every stored
    /// conversation must be what [`Trajectory::state_before`] gives with it.
    pub window: usize,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        ExampleOptions {
            criterion: Criterion::All,
            tau: DEFAULT_TAU,
            dedup: true,
            shuffle: true,
            seed: 0,
            window: 2,
        }
    }
}

/// One weighted training example; only `response` carries loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingExample {
    /// The problem's id.
    pub prompt_id: String,
    /// The turn the response answers, 1-based.
    pub turn: u32,
    /// The conversation prefix (system, user, and earlier turns within the window).
    pub messages: Vec<Message>,
    /// The trained assistant message.
    pub response: String,
    /// Who wrote it: the learner on-policy, best-of-N from the learner, or a teacher.
    pub source: Source,
    /// The response's reward from the grader.
    pub reward: f64,
    /// The loss weight, `exp(reward / tau)`.
    pub weight: f64,
}

/// Why examples could not be built.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ExampleError {
    #[error("trajectory {prompt_id:?} turn {turn} has no reward: run the grade stage first")]
    /// A turn has no reward: the rollouts were not graded.
    Ungraded {
        /// The problem's id.
        prompt_id: String,
        /// The ungraded turn, 1-based.
        turn: u32,
    },
    #[error("tau must be a positive finite number, got {0}")]
    /// `tau` is zero, negative or not finite.
    BadTau(f64),
    #[error(
        "trajectory {prompt_id:?} turn {turn}: the stored conversation is not the state that \
         window {window} builds (system, question, the last window-1 attempts each with its \
         feedback); the rollouts were made under another rule: re-run sample and relabel"
    )]
    /// A stored conversation is not the state the rollouts' window builds.
    StateMismatch {
        /// The problem's id.
        prompt_id: String,
        /// The turn whose state differs, 1-based.
        turn: u32,
        /// The context window the state was checked against.
        window: usize,
    },
}

/// `exp(reward / tau)`: correct (1) ≈ 12.18, wrong (0) = 1, unparseable (−1) ≈ 0.082 at tau 0.4.
pub fn weight(reward: f64, tau: f64) -> f64 {
    (reward / tau).exp()
}

/// A seeded permutation of `0..n` (ChaCha8, stable across platforms and versions): the example
/// order of a training epoch.
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    order
}

/// Builds the weighted examples of RISE.md §5 from graded trajectories.
pub fn build_examples(
    trajectories: &[Trajectory],
    opts: &ExampleOptions,
) -> Result<Vec<TrainingExample>, ExampleError> {
    if !(opts.tau.is_finite() && opts.tau > 0.0) {
        return Err(ExampleError::BadTau(opts.tau));
    }
    let mut out = Vec::new();
    for t in trajectories {
        let mut rewards = Vec::with_capacity(t.attempts.len());
        for a in &t.attempts {
            match a.reward {
                Some(r) => rewards.push(r),
                None => {
                    return Err(ExampleError::Ungraded {
                        prompt_id: t.prompt_id.clone(),
                        turn: a.turn,
                    })
                }
            }
        }
        let system = t.system();
        for (i, a) in t.attempts.iter().enumerate() {
            if a.messages != t.state_before(i, opts.window, system) {
                return Err(ExampleError::StateMismatch {
                    prompt_id: t.prompt_id.clone(),
                    turn: a.turn,
                    window: opts.window,
                });
            }
        }
        // The episode ends at the first correct answer: later turns never train.
        let end = t.first_correct().map_or(t.attempts.len(), |i| i + 1);
        let keep: Vec<usize> = match opts.criterion {
            Criterion::All => (0..end).collect(),
            Criterion::Better => (0..end)
                .filter(|&i| i == 0 || rewards[i] > rewards[i - 1])
                .collect(),
            Criterion::Best => {
                let mut best: Option<usize> = None;
                for i in 0..end {
                    if best.is_none_or(|b| rewards[i] > rewards[b]) {
                        best = Some(i);
                    }
                }
                best.into_iter().collect()
            }
            Criterion::Success => (0..end).filter(|&i| t.attempts[i].is_correct()).collect(),
        };
        for i in keep {
            let a = &t.attempts[i];
            out.push(TrainingExample {
                prompt_id: t.prompt_id.clone(),
                turn: a.turn,
                messages: a.messages.clone(),
                response: a.response.clone(),
                source: a.source,
                reward: rewards[i],
                weight: weight(rewards[i], opts.tau),
            });
        }
    }
    if opts.dedup {
        let mut seen = HashSet::new();
        out.retain(|e| {
            let key: Vec<(&str, &str)> = e
                .messages
                .iter()
                .map(|m| (m.role.as_str(), m.content.as_str()))
                .collect();
            seen.insert((format!("{key:?}"), e.response.clone()))
        });
    }
    if opts.shuffle {
        out.shuffle(&mut ChaCha8Rng::seed_from_u64(opts.seed));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Attempt, Role, Verdict};
    use rise_data::conversation::build_messages;

    /// A trajectory whose stored conversations are the window-2 states (as sample and relabel
    /// build them), with a system message.
    fn traj(id: &str, rewards: &[f64]) -> Trajectory {
        let question = format!("question {id}");
        let responses: Vec<String> = (1..=rewards.len())
            .map(|t| format!("{id} response {t}"))
            .collect();
        Trajectory {
            prompt_id: id.into(),
            question: question.clone(),
            gold: "7".into(),
            attempts: rewards
                .iter()
                .enumerate()
                .map(|(i, &r)| Attempt {
                    turn: i as u32 + 1,
                    messages: build_messages(&question, &responses[..i], 2, "sys"),
                    response: responses[i].clone(),
                    source: if i == 0 {
                        Source::Policy
                    } else {
                        Source::SelfDistill
                    },
                    candidates: 1,
                    answer: None,
                    verdict: Some(if r == 1.0 {
                        Verdict::Correct
                    } else if r == 0.0 {
                        Verdict::Wrong
                    } else {
                        Verdict::Unparsed
                    }),
                    reward: Some(r),
                })
                .collect(),
        }
    }

    fn opts(criterion: Criterion) -> ExampleOptions {
        ExampleOptions {
            criterion,
            shuffle: false,
            ..ExampleOptions::default()
        }
    }

    fn turns(ex: &[TrainingExample]) -> Vec<(String, u32)> {
        ex.iter().map(|e| (e.prompt_id.clone(), e.turn)).collect()
    }

    #[test]
    fn weights_match_the_paper() {
        assert!((weight(1.0, 0.4) - 12.182_493_960_703_473).abs() < 1e-12);
        assert_eq!(weight(0.0, 0.4), 1.0);
        assert!((weight(-1.0, 0.4) - 0.082_084_998_623_898_8).abs() < 1e-12);
    }

    #[test]
    fn all_stops_at_the_first_correct_turn() {
        let ts = [traj("a", &[0.0, 1.0, 1.0]), traj("b", &[-1.0, 0.0])];
        let ex = build_examples(&ts, &opts(Criterion::All)).unwrap();
        assert_eq!(
            turns(&ex),
            vec![
                ("a".into(), 1),
                ("a".into(), 2),
                ("b".into(), 1),
                ("b".into(), 2)
            ]
        );
        assert_eq!(ex[1].weight, weight(1.0, DEFAULT_TAU));
    }

    #[test]
    fn better_keeps_turn_one_and_improvements() {
        let ts = [traj("a", &[0.0, -1.0, 0.0, 1.0])];
        let ex = build_examples(&ts, &opts(Criterion::Better)).unwrap();
        assert_eq!(
            turns(&ex),
            vec![("a".into(), 1), ("a".into(), 3), ("a".into(), 4)]
        );
    }

    #[test]
    fn best_keeps_one_turn_earliest_on_ties() {
        let ts = [traj("a", &[0.0, -1.0, 0.0]), traj("b", &[-1.0, 1.0])];
        let ex = build_examples(&ts, &opts(Criterion::Best)).unwrap();
        assert_eq!(turns(&ex), vec![("a".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn success_keeps_only_correct_turns() {
        let ts = [traj("a", &[0.0, 1.0]), traj("b", &[0.0, 0.0])];
        let ex = build_examples(&ts, &opts(Criterion::Success)).unwrap();
        assert_eq!(turns(&ex), vec![("a".into(), 2)]);
    }

    #[test]
    fn dedup_drops_repeated_pairs() {
        let ts = [traj("a", &[0.0]), traj("a", &[0.0])];
        let mut o = opts(Criterion::All);
        assert_eq!(build_examples(&ts, &o).unwrap().len(), 1);
        o.dedup = false;
        assert_eq!(build_examples(&ts, &o).unwrap().len(), 2);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let ts: Vec<_> = (0..50).map(|i| traj(&i.to_string(), &[0.0])).collect();
        let plain = build_examples(&ts, &opts(Criterion::All)).unwrap();
        let mut o = opts(Criterion::All);
        o.shuffle = true;
        o.seed = 3;
        let a = build_examples(&ts, &o).unwrap();
        let b = build_examples(&ts, &o).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, plain);
        let mut sorted = turns(&a);
        sorted.sort();
        let mut expected = turns(&plain);
        expected.sort();
        assert_eq!(sorted, expected);
        o.seed = 4;
        assert_ne!(build_examples(&ts, &o).unwrap(), a);
    }

    #[test]
    fn ungraded_and_bad_tau_are_errors() {
        let mut t = traj("a", &[0.0]);
        t.attempts[0].reward = None;
        assert_eq!(
            build_examples(&[t], &opts(Criterion::All)).unwrap_err(),
            ExampleError::Ungraded {
                prompt_id: "a".into(),
                turn: 1
            }
        );
        let mut o = opts(Criterion::All);
        o.tau = 0.0;
        assert!(matches!(
            build_examples(&[], &o),
            Err(ExampleError::BadTau(_))
        ));
    }

    #[test]
    fn stored_states_must_follow_the_window_rule() {
        let ts = [traj("a", &[0.0, 0.0, 1.0])];
        assert_eq!(build_examples(&ts, &opts(Criterion::All)).unwrap().len(), 3);
        // The same rollouts read with another window: turn 3 would have kept two attempts.
        let mut o = opts(Criterion::All);
        o.window = 3;
        assert_eq!(
            build_examples(&ts, &o).unwrap_err(),
            ExampleError::StateMismatch {
                prompt_id: "a".into(),
                turn: 3,
                window: 3
            }
        );
        // The rule before the release's window: turn 3 opened with the earlier feedback.
        let mut old = ts[0].clone();
        old.attempts[2].messages[1] = Message::new(
            Role::User,
            rise_data::conversation::feedback_message("question a"),
        );
        let e = build_examples(&[old], &opts(Criterion::All)).unwrap_err();
        assert!(
            matches!(e, ExampleError::StateMismatch { turn: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn teacher_turns_keep_their_source_and_weigh_exp_r_over_tau() {
        let mut t = traj("a", &[0.0, 0.0, -1.0]);
        t.attempts[1].source = Source::Teacher;
        t.attempts[2].source = Source::Teacher;
        let mut o = opts(Criterion::All);
        o.tau = 0.5;
        let ex = build_examples(&[t], &o).unwrap();
        let sources: Vec<_> = ex.iter().map(|e| (e.source, e.reward, e.weight)).collect();
        assert_eq!(
            sources,
            vec![
                (Source::Policy, 0.0, 1.0),
                (Source::Teacher, 0.0, 1.0),
                (Source::Teacher, -1.0, (-2.0f64).exp()),
            ]
        );
    }
}

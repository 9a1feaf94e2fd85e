//! Relabelling (RISE.md §4 step 3): best-of-N by reward, the degenerate-sample filter, and the
//! turn loop of the `relabel` kind, here without torch so that its rules are unit-tested (the
//! worker supplies the sampler as a closure).
//!
//! Two sources fill a wrong state:
//! - self-distillation: `n` (default 16) samples from the learner, the best by reward kept;
//! - distillation: as the release does it, ONE teacher sample per wrong state (`n` = 1), kept
//!   whatever its reward: training weighs it by exp(r / tau) (`examples`). Best-of-N from the
//!   teacher is the explicit option `n` > 1.
//!
//! Either way a degenerate response is never kept; a state whose every candidate is degenerate
//! ends its trajectory there.
use rise_data::conversation::Message;
use rise_data::grade::{grade, Rewards, TaskKind};

use crate::rollout::{Attempt, Source, Trajectory};

/// The release's degenerate-sample filter (rise-data's): any word repeated more than 150 times,
/// or any whitespace-separated "word" longer than 300 characters.
pub use rise_data::conversation::is_degenerate;

/// Candidates per wrong state when the pipeline does not say: best-of-16 from the learner (the
/// release's self-distillation), one sample from a teacher (the release's distillation).
pub fn default_n(source: Source) -> usize {
    match source {
        Source::Teacher => 1,
        Source::Policy | Source::SelfDistill => 16,
    }
}

/// How `relabel` extends wrong trajectories.
#[derive(Debug, Clone)]
pub struct RelabelOptions {
    /// Candidates drawn at each wrong state (the best by reward is kept).
    pub n: usize,
    /// Extend each wrong trajectory up to this many turns (the release's `train_turns`).
    pub turns: usize,
    /// The context window k the states are built with.
    pub window: usize,
    /// Who answers: [`Source::SelfDistill`] (the learner) or [`Source::Teacher`].
    pub source: Source,
    /// The grading rules of the problems (the dataset's task).
    pub task: TaskKind,
    /// Rewards the candidates are graded with (the best is kept).
    pub rewards: Rewards,
}

/// A wrong state to answer: trajectory `index` of the batch, at `turn` (1-based).
#[derive(Debug, Clone, PartialEq)]
pub struct WrongState {
    /// The trajectory's position in the batch.
    pub index: usize,
    /// The problem's id.
    pub prompt_id: String,
    /// The turn to answer, 1-based.
    pub turn: u32,
    /// The state to answer from ([`crate::rollout::Trajectory::next_state`]): question, earlier
    /// attempts and their feedback, cut to the context window, in the learner's format.
    pub messages: Vec<Message>,
}

/// What one [`relabel`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelabelCounts {
    /// Wrong states answered (one kept response each).
    pub kept: usize,
    /// Of those, the ones whose kept response beat the previous turn's reward.
    pub improved: usize,
    /// States where every candidate was degenerate (the trajectory ends there).
    pub stalled: usize,
}

/// What `relabel` asks for: `n` candidates for each state, one list per state, in order.
pub type Respond<'a, E> = dyn FnMut(&[WrongState], usize) -> Result<Vec<Vec<String>>, E> + 'a;

/// Extends every trajectory whose turns are all wrong, one turn at a time up to `opts.turns`:
/// at each wrong state `respond` draws `opts.n` candidates, the best by reward is kept (ties:
/// the first; degenerate ones never), graded and appended with its reward. Trajectories that
/// become correct stop. `respond` gets every open state of a turn at once (one batch) and must
/// return one list of candidates per state, in order.
pub fn relabel<E>(
    trajectories: &mut [Trajectory],
    opts: &RelabelOptions,
    respond: &mut Respond<'_, E>,
) -> Result<RelabelCounts, E> {
    let mut counts = RelabelCounts::default();
    let mut stalled = vec![false; trajectories.len()];
    for turn in 2..=opts.turns {
        let states: Vec<WrongState> = trajectories
            .iter()
            .enumerate()
            .filter(|(i, t)| {
                !stalled[*i]
                    && t.attempts.len() == turn - 1
                    && !t.attempts.iter().any(Attempt::is_correct)
            })
            .map(|(i, t)| WrongState {
                index: i,
                prompt_id: t.prompt_id.clone(),
                turn: turn as u32,
                // The learner's format (its system message), whichever model answers.
                messages: t.next_state(opts.window, t.system()),
            })
            .collect();
        if states.is_empty() {
            break;
        }
        let candidates = respond(&states, opts.n)?;
        for (state, cands) in states.into_iter().zip(candidates) {
            let t = &mut trajectories[state.index];
            let verdicts: Vec<_> = cands
                .iter()
                .map(|c| grade(opts.task, &t.gold, c, &opts.rewards))
                .collect();
            let Some(best) = best_of_n(
                cands
                    .iter()
                    .map(String::as_str)
                    .zip(verdicts.iter().map(|v| v.reward)),
            ) else {
                // Every candidate was degenerate: nothing worth training on at this state.
                stalled[state.index] = true;
                counts.stalled += 1;
                continue;
            };
            let v = &verdicts[best];
            let previous = t
                .attempts
                .last()
                .and_then(|a| a.reward)
                .unwrap_or(f64::NEG_INFINITY);
            counts.kept += 1;
            if v.reward > previous {
                counts.improved += 1;
            }
            t.attempts.push(Attempt {
                turn: state.turn,
                messages: state.messages,
                response: cands[best].clone(),
                source: opts.source,
                candidates: cands.len() as u32,
                answer: v.pred_answer.clone(),
                verdict: Some(v.verdict()),
                reward: Some(v.reward),
            });
        }
    }
    Ok(counts)
}

#[cfg(test)]
const MAX_WORD_REPEATS: usize = 150;
#[cfg(test)]
const MAX_WORD_CHARS: usize = 300;

/// Picks the best candidate by reward: the highest reward wins, ties go to the earliest candidate,
/// and degenerate responses are skipped. Returns `None` when there is no non-degenerate candidate.
///
/// `candidates` yields `(response, reward)`; NaN rewards never win.
pub fn best_of_n<'a, I>(candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (&'a str, f64)>,
{
    let mut best: Option<(usize, f64)> = None;
    for (i, (response, reward)) in candidates.into_iter().enumerate() {
        if reward.is_nan() || is_degenerate(response) {
            continue;
        }
        // Strictly greater: the first of equal rewards stays.
        if best.is_none_or(|(_, r)| reward > r) {
            best = Some((i, reward));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Verdict;

    #[test]
    fn highest_reward_wins_and_ties_go_to_the_first() {
        let c = [("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", -1.0)];
        assert_eq!(best_of_n(c.iter().map(|(s, r)| (*s, *r))), Some(1));
        let all_wrong = [("a", 0.0), ("b", 0.0)];
        assert_eq!(best_of_n(all_wrong.iter().map(|(s, r)| (*s, *r))), Some(0));
    }

    #[test]
    fn degenerate_and_nan_candidates_are_skipped() {
        let looped = "the ".repeat(MAX_WORD_REPEATS + 1);
        let c = [(looped.as_str(), 1.0), ("ok", f64::NAN), ("fine", 0.0)];
        assert_eq!(best_of_n(c.iter().map(|(s, r)| (*s, *r))), Some(2));
        let only_bad = [(looped.as_str(), 1.0)];
        assert_eq!(best_of_n(only_bad.iter().map(|(s, r)| (*s, *r))), None);
        assert_eq!(best_of_n(std::iter::empty()), None);
    }

    #[test]
    fn degenerate_thresholds_are_exclusive() {
        assert!(!is_degenerate(&"x ".repeat(MAX_WORD_REPEATS)));
        assert!(is_degenerate(&"x ".repeat(MAX_WORD_REPEATS + 1)));
        assert!(!is_degenerate(&"y".repeat(MAX_WORD_CHARS)));
        assert!(is_degenerate(&"y".repeat(MAX_WORD_CHARS + 1)));
        assert!(!is_degenerate("step 1: 3 + 4 = 7. \\boxed{7}"));
    }

    use crate::examples::{build_examples, weight, Criterion, ExampleOptions};
    use rise_data::conversation::build_messages;

    /// A graded turn-1 trajectory, as `sample` + `grade` leave it (window 2, system "S").
    fn turn1(id: &str, response: &str, gold: &str) -> Trajectory {
        let question = format!("what is {id}?");
        let v = grade(TaskKind::Synthetic, gold, response, &Rewards::default());
        Trajectory {
            prompt_id: id.into(),
            question: question.clone(),
            gold: gold.into(),
            attempts: vec![Attempt {
                turn: 1,
                messages: build_messages(&question, &[], 2, "S"),
                response: response.into(),
                source: Source::Policy,
                candidates: 1,
                answer: v.pred_answer.clone(),
                verdict: Some(v.verdict()),
                reward: Some(v.reward),
            }],
        }
    }

    fn teacher_opts(n: usize, turns: usize) -> RelabelOptions {
        RelabelOptions {
            n,
            turns,
            window: 2,
            source: Source::Teacher,
            task: TaskKind::Synthetic,
            rewards: Rewards::default(),
        }
    }

    #[test]
    fn a_teacher_answers_each_wrong_state_once_and_is_kept_whatever_its_reward() {
        let mut ts = vec![
            turn1("a", "\\boxed{3}", "3"), // right at turn 1: never relabelled
            turn1("b", "\\boxed{5}", "4"), // teacher wrong, then unparseable
            turn1("c", "no answer", "6"),  // teacher right at once
        ];
        // The teacher's answers, by (prompt, turn); it is asked for `n` samples each time.
        let script = |id: &str, turn: u32| match (id, turn) {
            ("b", 2) => "\\boxed{7}",
            ("b", 3) => "I do not know",
            ("c", 2) => "\\boxed{6}",
            other => panic!("unexpected state {other:?}"),
        };
        let mut asked = Vec::new();
        let counts = relabel(
            &mut ts,
            &teacher_opts(default_n(Source::Teacher), 3),
            &mut |states, n| {
                asked.extend(states.iter().map(|s| (s.prompt_id.clone(), s.turn, n)));
                Ok::<_, ()>(
                    states
                        .iter()
                        .map(|s| vec![script(&s.prompt_id, s.turn).to_string(); n])
                        .collect(),
                )
            },
        )
        .unwrap();
        // One teacher sample at each wrong state: b at turns 2 and 3, c at turn 2.
        assert_eq!(
            asked,
            [("b".into(), 2, 1), ("c".into(), 2, 1), ("b".into(), 3, 1)]
        );
        assert_eq!(
            counts,
            RelabelCounts {
                kept: 3,
                improved: 1,
                stalled: 0
            }
        );
        assert_eq!(ts[0].attempts.len(), 1);
        let b = &ts[1].attempts;
        assert_eq!(b.len(), 3);
        for a in &b[1..] {
            assert_eq!((a.source, a.candidates), (Source::Teacher, 1));
        }
        // Kept whatever the reward: wrong (0) at turn 2, unparseable (-1) at turn 3.
        assert_eq!(b[1].reward, Some(0.0));
        assert_eq!(b[1].verdict, Some(Verdict::Wrong));
        assert_eq!(b[2].reward, Some(-1.0));
        assert_eq!(b[2].verdict, Some(Verdict::Unparsed));
        // The state is the release's window-2 state, in the learner's format.
        assert_eq!(
            b[2].messages,
            build_messages(
                "what is b?",
                &["\\boxed{5}".into(), "\\boxed{7}".into()],
                2,
                "S"
            )
        );
        assert_eq!(b[2].messages[1].content, "what is b?");
        let c = &ts[2].attempts;
        assert_eq!(
            (c.len(), c[1].reward, c[1].source),
            (2, Some(1.0), Source::Teacher)
        );

        // Training weighs each teacher response by exp(r / tau), whatever r.
        let ex = build_examples(
            &ts,
            &ExampleOptions {
                criterion: Criterion::All,
                shuffle: false,
                ..ExampleOptions::default()
            },
        )
        .unwrap();
        let teacher: Vec<(String, u32, f64, f64)> = ex
            .iter()
            .filter(|e| e.source == Source::Teacher)
            .map(|e| (e.prompt_id.clone(), e.turn, e.reward, e.weight))
            .collect();
        assert_eq!(
            teacher,
            [
                ("b".into(), 2, 0.0, weight(0.0, 0.4)),
                ("b".into(), 3, -1.0, weight(-1.0, 0.4)),
                ("c".into(), 2, 1.0, weight(1.0, 0.4)),
            ]
        );
        assert!((weight(-1.0, 0.4) - (-2.5f64).exp()).abs() < 1e-15);
    }

    #[test]
    fn best_of_n_from_the_teacher_stays_an_option() {
        let mut ts = vec![turn1("b", "\\boxed{5}", "4")];
        relabel(&mut ts, &teacher_opts(3, 2), &mut |states, n| {
            assert_eq!(n, 3);
            Ok::<_, ()>(
                states
                    .iter()
                    .map(|_| {
                        vec![
                            "\\boxed{1}".into(),
                            "\\boxed{4}".into(),
                            "\\boxed{4} again".into(),
                        ]
                    })
                    .collect(),
            )
        })
        .unwrap();
        let a = &ts[0].attempts[1];
        assert_eq!(
            (a.response.as_str(), a.candidates, a.reward),
            ("\\boxed{4}", 3, Some(1.0))
        );
    }

    #[test]
    fn a_state_with_only_degenerate_candidates_ends_the_trajectory() {
        let mut ts = vec![turn1("b", "\\boxed{5}", "4")];
        let looped = "the ".repeat(MAX_WORD_REPEATS + 1);
        let counts = relabel(&mut ts, &teacher_opts(1, 4), &mut |states, _| {
            Ok::<_, ()>(states.iter().map(|_| vec![looped.clone()]).collect())
        })
        .unwrap();
        assert_eq!(
            counts,
            RelabelCounts {
                kept: 0,
                improved: 0,
                stalled: 1
            }
        );
        assert_eq!(ts[0].attempts.len(), 1);
    }

    #[test]
    fn the_default_n_follows_the_release() {
        assert_eq!(default_n(Source::Teacher), 1);
        assert_eq!(default_n(Source::SelfDistill), 16);
    }
}

//! The RISE conversation (RISE.md §2): one format for collection, training and evaluation.
//!
//! ```text
//! system:    <instruction>
//! user:      <question>
//! assistant: <attempt 1>
//! user:      The answer is incorrect. Please try again. Here's the question: <question>
//! assistant: <attempt 2>
//! ...
//! ```
//! With a context window of k, a state keeps the system message, the ORIGINAL turn-1 user
//! message (the question), then the most recent k−1 attempts, each followed by its feedback,
//! exactly as the release builds it (`construct_policy_dialogue`, RISE.md §2). With k = 2 every
//! turn t ≥ 2 is `[system, question, y_{t−1}, feedback]`: the very state turn-2 training
//! examples have, so later test turns never meet a prefix that training did not show.
//! [`build_messages`] is the one function that builds states: `sample`, `relabel`, `train`
//! (which checks every stored example against it) and `evaluate` all go through it.
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The default system instruction: reason step by step, end with `\boxed{}`.
pub const DEFAULT_SYSTEM: &str =
    "Solve the problem step by step. Put the final answer in \\boxed{} at the end.";

/// The feedback before the question, exactly as in RISE's release.
pub const FEEDBACK_PREFIX: &str =
    "The answer is incorrect. Please try again. Here's the question: ";

/// Who speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The instruction.
    System,
    /// Questions and feedback.
    User,
    /// Model attempts.
    Assistant,
}

impl Role {
    /// `system`, `user` or `assistant` (the names HF chat templates expect).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who says it.
    pub role: Role,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message with `role` and `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// The user message after a wrong answer:
/// `The answer is incorrect. Please try again. Here's the question: {question}`.
pub fn feedback_message(question: &str) -> String {
    format!("{FEEDBACK_PREFIX}{question}")
}

/// The conversation state before the next attempt, given the previous `attempts` (all graded
/// wrong, since an episode ends at the first correct answer).
///
/// `window` is RISE's context window k: the system message, the original question (the turn-1
/// user message, whatever is dropped), then the most recent `k − 1` attempts, each followed by
/// the feedback. `window = 0` keeps every attempt; `window = 1` keeps none, so every turn is
/// asked like turn 1. An empty `system` omits the system message. The result always ends with
/// a user message.
pub fn build_messages(
    question: &str,
    attempts: &[String],
    window: usize,
    system: &str,
) -> Vec<Message> {
    let keep = if window == 0 {
        attempts.len()
    } else {
        attempts.len().min(window - 1)
    };
    let mut messages = Vec::with_capacity(2 + 2 * keep);
    if !system.is_empty() {
        messages.push(Message::new(Role::System, system));
    }
    // The release keeps the turn-1 message in front, not the feedback that preceded the
    // oldest kept attempt: a turn-3 state opening with "The answer is incorrect" is a prefix
    // that no turn-2 training example has.
    messages.push(Message::new(Role::User, question));
    for attempt in &attempts[attempts.len() - keep..] {
        messages.push(Message::new(Role::Assistant, attempt.clone()));
        messages.push(Message::new(Role::User, feedback_message(question)));
    }
    messages
}

/// A training example: the state before an attempt plus the attempt as the final assistant
/// message (the only message [`render_for_training`] puts loss on).
pub fn build_training_messages(
    question: &str,
    previous: &[String],
    target: &str,
    window: usize,
    system: &str,
) -> Vec<Message> {
    let mut m = build_messages(question, previous, window, system);
    m.push(Message::new(Role::Assistant, target));
    m
}

/// Why a conversation could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template engine failed (e.g. a Jinja error in a Hugging Face chat template).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The messages do not fit what is asked (e.g. no final assistant message to train on).
    #[error("invalid conversation: {0}")]
    Conversation(String),
    /// Rendering the prompt alone is not a prefix of rendering the whole conversation, so the
    /// trained tokens cannot be separated from the prompt.
    #[error("the chat template is not prefix-stable: the prompt rendered with a generation prompt is not a prefix of the full conversation (prompt ends with {prompt_tail:?}, full text continues with {full_tail:?})")]
    NotPrefixStable {
        /// The last characters of the prompt rendering.
        prompt_tail: String,
        /// The characters of the full rendering at the same place.
        full_tail: String,
    },
}

/// Turns messages into model text. Implemented here by [`PlainTemplate`] and in `rise-model`
/// by Hugging Face `chat_template`s (minijinja).
pub trait ChatTemplate {
    /// Renders `messages`; with `add_generation_prompt`, appends what opens an assistant turn so
    /// that the model's continuation is the next assistant message.
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError>;

    /// Strings that end an assistant turn (the sampler stops on them). Empty by default: the
    /// tokenizer's EOS token is then the only stop.
    fn stop_strings(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Text ↔ token ids. Implemented in `rise-model` by the real tokenizer.
///
/// `encode` must not add special tokens of its own (BOS/EOS): [`render_for_training`] encodes
/// the prompt and the completion separately and concatenates them, exactly as the sampler sees
/// a prompt and then generates.
pub trait TokenizeText {
    /// Token ids for `text`.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Text for `ids`.
    fn decode(&self, ids: &[u32]) -> String;
}

/// Role markers for from-scratch tiny models: `<|user|>Q<|end|><|assistant|>A<|end|>`.
///
/// No newlines or spaces around markers: every character costs a tiny model capacity. A
/// tokenizer for such a model should register [`PlainTemplate::special_tokens`] as single tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlainTemplate {
    /// Opens a system message.
    pub system: String,
    /// Opens a user message.
    pub user: String,
    /// Opens an assistant message.
    pub assistant: String,
    /// Ends every message (the stop string when sampling).
    pub end: String,
}

impl Default for PlainTemplate {
    fn default() -> Self {
        PlainTemplate {
            system: "<|system|>".into(),
            user: "<|user|>".into(),
            assistant: "<|assistant|>".into(),
            end: "<|end|>".into(),
        }
    }
}

impl PlainTemplate {
    /// The four markers, for a tokenizer to treat as atomic tokens.
    pub fn special_tokens(&self) -> [&str; 4] {
        [&self.system, &self.user, &self.assistant, &self.end]
    }

    fn marker(&self, role: Role) -> &str {
        match role {
            Role::System => &self.system,
            Role::User => &self.user,
            Role::Assistant => &self.assistant,
        }
    }
}

impl ChatTemplate for PlainTemplate {
    fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for m in messages {
            out.push_str(self.marker(m.role));
            out.push_str(&m.content);
            out.push_str(&self.end);
        }
        if add_generation_prompt {
            out.push_str(&self.assistant);
        }
        Ok(out)
    }

    fn stop_strings(&self) -> Vec<String> {
        vec![self.end.clone()]
    }
}

/// Token ids and per-token loss mask for a conversation whose last message is the assistant
/// message to train on.
///
/// Only the final assistant message and what the template closes it with (its end-of-turn
/// marker) are `true` in the mask; the system message, the question, earlier attempts and
/// feedback are context only (RISE.md §5). The prompt is the conversation without its last
/// message rendered with a generation prompt, which must be a prefix of the full rendering.
pub fn render_for_training<T, K>(
    template: &T,
    tokenizer: &K,
    messages: &[Message],
) -> Result<(Vec<u32>, Vec<bool>), TemplateError>
where
    T: ChatTemplate + ?Sized,
    K: TokenizeText + ?Sized,
{
    render_with_loss_on(template, tokenizer, messages, false)
}

/// [`render_for_training`] with loss on every assistant message, for plain multi-turn chat
/// SFT (several independent question/answer pairs in one conversation), not for RISE turns.
pub fn render_for_training_every_turn<T, K>(
    template: &T,
    tokenizer: &K,
    messages: &[Message],
) -> Result<(Vec<u32>, Vec<bool>), TemplateError>
where
    T: ChatTemplate + ?Sized,
    K: TokenizeText + ?Sized,
{
    render_with_loss_on(template, tokenizer, messages, true)
}

fn render_with_loss_on<T, K>(
    template: &T,
    tokenizer: &K,
    messages: &[Message],
    every_assistant_turn: bool,
) -> Result<(Vec<u32>, Vec<bool>), TemplateError>
where
    T: ChatTemplate + ?Sized,
    K: TokenizeText + ?Sized,
{
    let Some(last) = messages.last() else {
        return Err(TemplateError::Conversation("no messages".into()));
    };
    if last.role != Role::Assistant {
        return Err(TemplateError::Conversation(format!(
            "the last message must be the assistant message to train on, found a {} message",
            last.role.as_str()
        )));
    }
    let trained: Vec<usize> = if every_assistant_turn {
        (0..messages.len())
            .filter(|&i| messages[i].role == Role::Assistant)
            .collect()
    } else {
        vec![messages.len() - 1]
    };
    // Each trained message: the text since the previous one (context, no loss), then the
    // message with its end-of-turn marker (loss). Pieces are tokenized separately so that a
    // token never straddles the boundary between context and trained text.
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    let mut done = String::new();
    for a in trained {
        let prompt = template.render(&messages[..a], true)?;
        let full = template.render(&messages[..=a], false)?;
        let context = strip_rendered_prefix(&prompt, &done)?;
        let completion = strip_rendered_prefix(&full, &prompt)?;
        let context_ids = tokenizer.encode(context);
        mask.extend(std::iter::repeat_n(false, context_ids.len()));
        ids.extend(context_ids);
        let completion_ids = tokenizer.encode(completion);
        if completion_ids.is_empty() {
            return Err(TemplateError::Conversation(format!(
                "assistant message {a} renders to no tokens"
            )));
        }
        mask.extend(std::iter::repeat_n(true, completion_ids.len()));
        ids.extend(completion_ids);
        done = full;
    }
    Ok((ids, mask))
}

/// `longer` without its prefix `prefix`, or the error that names where they part.
fn strip_rendered_prefix<'a>(longer: &'a str, prefix: &str) -> Result<&'a str, TemplateError> {
    if let Some(rest) = longer.strip_prefix(prefix) {
        return Ok(rest);
    }
    let at = prefix
        .char_indices()
        .zip(longer.chars())
        .find(|((_, a), b)| a != b)
        .map_or(prefix.len().min(longer.len()), |((i, _), _)| i);
    let floor = |s: &str, mut i: usize| {
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    };
    let lo = floor(prefix, at.saturating_sub(40));
    Err(TemplateError::NotPrefixStable {
        prompt_tail: prefix[lo..].chars().take(80).collect(),
        full_tail: longer[floor(longer, lo.min(longer.len()))..]
            .chars()
            .take(80)
            .collect(),
    })
}

/// UTF-8 bytes as token ids (0–255): a tokenizer with no training, for tests and debugging.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl TokenizeText for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }

    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().filter_map(|&i| u8::try_from(i).ok()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Degenerate samples are filtered from training (RISE.md §4): any word repeated more than 150
/// times, or any whitespace-separated "word" longer than 300 characters.
pub fn is_degenerate(text: &str) -> bool {
    const MAX_REPEATS: u32 = 150;
    const MAX_WORD_CHARS: usize = 300;
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for word in text.split_whitespace() {
        // Byte length bounds char count from above, so count chars only for long words.
        if word.len() > MAX_WORD_CHARS && word.chars().count() > MAX_WORD_CHARS {
            return true;
        }
        let c = counts.entry(word).or_insert(0);
        *c += 1;
        if *c > MAX_REPEATS {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempts(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("try {i}")).collect()
    }

    #[test]
    fn first_turn_is_system_and_question() {
        let m = build_messages("Q?", &[], 2, "sys");
        assert_eq!(
            m,
            vec![
                Message::new(Role::System, "sys"),
                Message::new(Role::User, "Q?")
            ]
        );
    }

    #[test]
    fn window_keeps_the_question_then_the_last_k_minus_one_attempts() {
        let m = build_messages("Q?", &attempts(3), 2, "sys");
        let fb = "The answer is incorrect. Please try again. Here's the question: Q?";
        assert_eq!(
            m,
            vec![
                Message::new(Role::System, "sys"),
                Message::new(Role::User, "Q?"),
                Message::new(Role::Assistant, "try 3"),
                Message::new(Role::User, fb),
            ]
        );
        let all = build_messages("Q?", &attempts(3), 0, "");
        assert_eq!(all.len(), 7);
        assert_eq!(all[0], Message::new(Role::User, "Q?"));
        assert_eq!(all[1], Message::new(Role::Assistant, "try 1"));
        assert_eq!(all[6], Message::new(Role::User, fb));
        assert_eq!(
            build_messages("Q?", &attempts(3), 1, ""),
            vec![Message::new(Role::User, "Q?")],
            "window 1 asks every turn like turn 1"
        );
        assert_eq!(build_messages("Q?", &attempts(3), 3, "s").len(), 6);
    }

    /// The exact prompt text (plain template, generation prompt added) at turn `turn` with
    /// window `k`, after attempts "try 1" .. "try {turn-1}".
    fn rendered_state(turn: usize, k: usize) -> String {
        let m = build_messages("Q?", &attempts(turn - 1), k, "S");
        PlainTemplate::default().render(&m, true).expect("renders")
    }

    #[test]
    fn window_2_renders_every_later_turn_like_turn_2() {
        let fb = "The answer is incorrect. Please try again. Here's the question: Q?";
        let head = "<|system|>S<|end|><|user|>Q?<|end|>";
        assert_eq!(
            rendered_state(2, 2),
            format!("{head}<|assistant|>try 1<|end|><|user|>{fb}<|end|><|assistant|>")
        );
        assert_eq!(
            rendered_state(3, 2),
            format!("{head}<|assistant|>try 2<|end|><|user|>{fb}<|end|><|assistant|>")
        );
        assert_eq!(
            rendered_state(5, 2),
            format!("{head}<|assistant|>try 4<|end|><|user|>{fb}<|end|><|assistant|>")
        );
    }

    #[test]
    fn window_3_keeps_the_question_and_the_last_two_attempts() {
        let fb = "The answer is incorrect. Please try again. Here's the question: Q?";
        let head = "<|system|>S<|end|><|user|>Q?<|end|>";
        assert_eq!(
            rendered_state(2, 3),
            format!("{head}<|assistant|>try 1<|end|><|user|>{fb}<|end|><|assistant|>")
        );
        assert_eq!(
            rendered_state(3, 3),
            format!(
                "{head}<|assistant|>try 1<|end|><|user|>{fb}<|end|>\
                 <|assistant|>try 2<|end|><|user|>{fb}<|end|><|assistant|>"
            )
        );
        assert_eq!(
            rendered_state(5, 3),
            format!(
                "{head}<|assistant|>try 3<|end|><|user|>{fb}<|end|>\
                 <|assistant|>try 4<|end|><|user|>{fb}<|end|><|assistant|>"
            )
        );
    }

    #[test]
    fn mask_covers_only_the_final_assistant_message() {
        let t = PlainTemplate::default();
        let msgs = build_training_messages("Q", &attempts(1), "A!", 2, "S");
        let (ids, mask) = render_for_training(&t, &ByteTokenizer, &msgs).expect("renders");
        let trained: Vec<u32> = ids
            .iter()
            .zip(&mask)
            .filter(|(_, &m)| m)
            .map(|(&i, _)| i)
            .collect();
        assert_eq!(ByteTokenizer.decode(&trained), "A!<|end|>");
        let full = ByteTokenizer.decode(&ids);
        assert_eq!(
            full,
            "<|system|>S<|end|><|user|>Q<|end|><|assistant|>try 1<|end|><|user|>The answer is incorrect. Please try again. Here's the question: Q<|end|><|assistant|>A!<|end|>"
        );
    }

    #[test]
    fn every_turn_masks_each_assistant_message_and_nothing_else() {
        let t = PlainTemplate::default();
        let msgs = vec![
            Message::new(Role::System, "S"),
            Message::new(Role::User, "Q1"),
            Message::new(Role::Assistant, "A1"),
            Message::new(Role::User, "Q2"),
            Message::new(Role::Assistant, "A2"),
        ];
        let (ids, mask) =
            render_for_training_every_turn(&t, &ByteTokenizer, &msgs).expect("renders");
        let (single_ids, _) = render_for_training(&t, &ByteTokenizer, &msgs).expect("renders");
        assert_eq!(
            ids, single_ids,
            "the same text, whichever turns are trained"
        );
        let mut spans = Vec::new();
        let mut current = Vec::new();
        for (&id, &m) in ids.iter().zip(&mask) {
            if m {
                current.push(id);
            } else if !current.is_empty() {
                spans.push(ByteTokenizer.decode(&std::mem::take(&mut current)));
            }
        }
        spans.push(ByteTokenizer.decode(&current));
        assert_eq!(spans, vec!["A1<|end|>", "A2<|end|>"]);
    }

    #[test]
    fn training_needs_a_final_assistant_message() {
        let t = PlainTemplate::default();
        let msgs = build_messages("Q", &[], 2, "S");
        assert!(matches!(
            render_for_training(&t, &ByteTokenizer, &msgs),
            Err(TemplateError::Conversation(_))
        ));
        assert!(render_for_training(&t, &ByteTokenizer, &[]).is_err());
    }

    struct Unstable;
    impl ChatTemplate for Unstable {
        fn render(&self, m: &[Message], gen: bool) -> Result<String, TemplateError> {
            Ok(format!("{}{}", m.len(), if gen { "GEN" } else { "" }))
        }
    }

    #[test]
    fn unstable_templates_are_rejected() {
        let msgs = build_training_messages("Q", &[], "A", 2, "");
        let e = render_for_training(&Unstable, &ByteTokenizer, &msgs).unwrap_err();
        assert!(matches!(e, TemplateError::NotPrefixStable { .. }), "{e}");
    }

    #[test]
    fn degenerate_text() {
        assert!(!is_degenerate("the answer is 5"));
        assert!(is_degenerate(&"ha ".repeat(151)));
        assert!(!is_degenerate(&"ha ".repeat(150)));
        assert!(is_degenerate(&"x".repeat(301)));
        assert!(!is_degenerate(&"é".repeat(300)));
    }
}

//! The live view of a run: indicatif bars on a terminal, plain lines otherwise, and always a
//! plain copy in the run's log file in the store.
//!
//! Everything shown passes [`escape_controls`]: what a stage prints (its messages, units, the
//! stderr tail quoted by a failure) reaches rise's terminal as text, never as escape sequences.
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{IsTerminal, LineWriter, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::protocol::Event;

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines on stderr.
    Plain,
    /// Nothing on stderr (the run log is still written).
    Quiet,
}

struct PlainState {
    last_print: Instant,
    total: Option<u64>,
    pos: u64,
    unit: String,
}

/// The run's display; shared by the executor's threads.
pub struct Display {
    multi: Option<MultiProgress>,
    quiet: bool,
    bars: Mutex<HashMap<String, ProgressBar>>,
    plain: Mutex<HashMap<String, PlainState>>,
    log: Mutex<Option<LineWriter<File>>>,
    width: usize,
}

/// How often a plain-mode stage may print a progress line.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

impl Display {
    /// A display for a run of stages whose longest name is `width` characters, logging to `log`.
    pub fn new(mode: DisplayMode, log: Option<File>, width: usize) -> Display {
        let bars = mode == DisplayMode::Auto && std::io::stderr().is_terminal();
        Display {
            multi: bars.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            quiet: mode == DisplayMode::Quiet,
            bars: Mutex::new(HashMap::new()),
            plain: Mutex::new(HashMap::new()),
            log: Mutex::new(log.map(LineWriter::new)),
            width: width.clamp(8, 40),
        }
    }

    /// A line for the terminal and the run log, control characters escaped.
    pub fn line(&self, line: &str) {
        let line = escape_controls(line);
        let line = line.as_ref();
        self.to_log(line);
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// A line for the run log only.
    pub fn to_log(&self, line: &str) {
        if let Ok(mut guard) = self.log.lock() {
            if let Some(log) = guard.as_mut() {
                let _ = writeln!(
                    log,
                    "{} {line}",
                    humantime::format_rfc3339_millis(std::time::SystemTime::now())
                );
            }
        }
    }

    fn tag(&self, tag: &str, stage: &str, rest: &str) -> String {
        format!("{tag:<8}{stage:<w$}{rest}", w = self.width + 1)
    }

    /// A stage began executing.
    pub fn started(&self, stage: &str, kind: &str) {
        if let Some(multi) = &self.multi {
            let bar = multi.add(ProgressBar::new_spinner());
            bar.set_style(spinner_style());
            bar.set_prefix(format!("{stage:<w$}", w = self.width));
            bar.set_message(kind.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            if let Ok(mut bars) = self.bars.lock() {
                bars.insert(stage.to_string(), bar);
            }
            self.to_log(&self.tag("run", stage, &format!("[{kind}]")));
        } else {
            self.line(&self.tag("run", stage, &format!("[{kind}]")));
        }
    }

    /// A protocol event from a running stage.
    pub fn event(&self, stage: &str, event: &Event) {
        if self.multi.is_some() {
            let bars = match self.bars.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            let Some(bar) = bars.get(stage) else { return };
            match event {
                Event::Start {
                    total: Some(total),
                    unit,
                } => {
                    bar.set_style(bar_style(&escape_controls(unit)));
                    bar.set_length(*total);
                    bar.set_position(0);
                    bar.reset_eta();
                }
                Event::Start { total: None, unit } => {
                    bar.set_style(spinner_style());
                    bar.set_message(escape_controls(unit).into_owned());
                }
                Event::Advance { n } => bar.inc(*n),
                Event::Message { msg } => bar.set_message(escape_controls(msg).into_owned()),
                Event::Metric { .. } | Event::Log { .. } => {}
            }
            return;
        }
        // Plain: a line when a bar starts, then at most one every PLAIN_EVERY.
        let mut states = match self.plain.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        let print = match event {
            Event::Start { total, unit } => {
                states.insert(
                    stage.to_string(),
                    PlainState {
                        last_print: now,
                        total: *total,
                        pos: 0,
                        unit: unit.clone(),
                    },
                );
                Some(match total {
                    Some(t) => format!("0/{t} {unit}"),
                    None => unit.clone(),
                })
            }
            Event::Advance { n } => states.get_mut(stage).and_then(|s| {
                s.pos += n;
                (now.duration_since(s.last_print) >= PLAIN_EVERY || Some(s.pos) == s.total).then(
                    || {
                        s.last_print = now;
                        match s.total {
                            Some(t) => format!("{}/{t} {}", s.pos, s.unit),
                            None => format!("{} {}", s.pos, s.unit),
                        }
                    },
                )
            }),
            Event::Message { msg } => {
                let s = states.entry(stage.to_string()).or_insert(PlainState {
                    last_print: now - PLAIN_EVERY,
                    total: None,
                    pos: 0,
                    unit: String::new(),
                });
                (now.duration_since(s.last_print) >= PLAIN_EVERY).then(|| {
                    s.last_print = now;
                    msg.clone()
                })
            }
            Event::Metric { .. } | Event::Log { .. } => None,
        };
        drop(states);
        if let Some(text) = print {
            self.line(&self.tag("...", stage, &text));
        }
    }

    /// A stage is waiting for another process that holds its key.
    pub fn waiting(&self, stage: &str, holder: &str) {
        self.line(&self.tag(
            "wait",
            stage,
            &format!("another run is executing this stage: {holder}"),
        ));
    }

    /// A stage ended; `tag` is e.g. `done`, `cached`, `FAILED`.
    pub fn finished(&self, stage: &str, tag: &str, detail: &str) {
        if let Ok(mut bars) = self.bars.lock() {
            if let Some(bar) = bars.remove(stage) {
                bar.finish_and_clear();
                if let Some(multi) = &self.multi {
                    multi.remove(&bar);
                }
            }
        }
        if let Ok(mut states) = self.plain.lock() {
            states.remove(stage);
        }
        self.line(&self.tag(tag, stage, detail));
    }

    /// Flush the run log.
    pub fn flush(&self) {
        if let Ok(mut guard) = self.log.lock() {
            if let Some(log) = guard.as_mut() {
                let _ = log.flush();
            }
        }
    }
}

/// `text` with its control characters (ESC, BEL, CR, DEL, C1 codes...) written as `\x1b`,
/// except newlines and tabs. For whatever a stage says that rise shows on its terminal or
/// stderr: raw, it could set the terminal's title or colours, move the cursor or erase what
/// rise printed.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escaped(c) {
            // Control characters are all below U+0100: two hex digits.
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {spinner} {elapsed:>6} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn bar_style(unit: &str) -> ProgressStyle {
    let template = format!(
        "{{prefix}} {{spinner}} {{elapsed:>6}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, ETA {{eta}}) {{msg}}"
    );
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_but_text_is_kept() {
        assert!(matches!(escape_controls("plain ü\tx\ny"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("\u{1b}[31mred\u{1b}]0;title\u{7} \u{fffd}\r\u{7f}\u{9b}"),
            "\\x1b[31mred\\x1b]0;title\\x07 \u{fffd}\\x0d\\x7f\\x9b"
        );
    }
}

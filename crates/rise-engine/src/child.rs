//! Running a stage as a child process under the engine's protocol: stdout lines that are
//! [`Event`]s go to the progress sink, everything else to the stage log; cancellation kills the
//! child's whole process group.
//!
//! Stage output is bytes, not text: a stage may print anything (binary, Latin-1, a 300 MB line
//! without a newline). Lines are read as bytes, capped at [`MAX_LINE_BYTES`] (the rest of an
//! over-long line is counted and dropped, so memory stays bounded), written raw to the log, and
//! decoded lossily only where a person reads them (the terminal, error messages).
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::protocol::Event;
use crate::stage::{Progress, StageError};

/// The longest line kept from a stage's output; the rest of a longer line is dropped and its
/// length noted in the log.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many of a child's last stderr lines are kept for its failure message.
const STDERR_TAIL_LINES: usize = 4;
/// How much of each of those lines is shown on the terminal.
const STDERR_TAIL_LINE_CHARS: usize = 400;

/// Process groups of running stage children, so Ctrl-C can kill them all.
fn running() -> &'static Mutex<HashSet<i32>> {
    static RUNNING: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashSet::new()))
}

/// SIGKILL every running stage child's process group (called on Ctrl-C after setting the
/// cancel flag; children spawned afterwards see the flag and are killed at once).
pub fn kill_all_children() {
    let groups: Vec<i32> = match running().lock() {
        Ok(set) => set.iter().copied().collect(),
        Err(poisoned) => poisoned.into_inner().iter().copied().collect(),
    };
    for pgid in groups {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// A stage's log file, shared by the stdout and stderr readers. Line-buffered so a crash loses
/// at most a partial line.
#[derive(Clone)]
pub struct StageLog {
    inner: Arc<Mutex<LineWriter<File>>>,
}

impl StageLog {
    /// Log into `file`.
    pub fn new(file: File) -> Self {
        StageLog {
            inner: Arc::new(Mutex::new(LineWriter::new(file))),
        }
    }

    /// Append one line of text.
    pub fn line(&self, line: &str) {
        self.bytes(line.as_bytes());
    }

    /// Append one line of raw bytes (a stage's output, whatever its encoding).
    pub fn bytes(&self, line: &[u8]) {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A full disk must not kill the stage; the commit will fail loudly on its own.
        let _ = guard.write_all(line);
        let _ = guard.write_all(b"\n");
    }

    /// Flush buffered bytes.
    pub fn flush(&self) {
        if let Ok(mut guard) = self.inner.lock() {
            let _ = guard.flush();
        }
    }
}

/// Where non-event output lines go: raw bytes, without the newline.
pub type LineSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Reads `reader` to its end as lines of bytes, calling `on_line(line, dropped)` for each: at
/// most `max` bytes of the line (without its `\n`) and how many more bytes it had. Memory stays
/// at `max` plus one buffer whatever the input. A last line without a newline is delivered too.
pub fn read_capped_lines(
    reader: impl Read,
    max: usize,
    mut on_line: impl FnMut(&[u8], u64),
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line: Vec<u8> = Vec::new();
    let mut dropped: u64 = 0;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if !line.is_empty() || dropped > 0 {
                on_line(&line, dropped);
            }
            return Ok(());
        }
        let newline = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let take = chunk.len().min(max.saturating_sub(line.len()));
        line.extend_from_slice(&chunk[..take]);
        dropped += (chunk.len() - take) as u64;
        let consumed = newline.map_or(buf.len(), |i| i + 1);
        reader.consume(consumed);
        if newline.is_some() {
            on_line(&line, dropped);
            line.clear();
            dropped = 0;
        }
    }
}

/// `line` as the log gets it: raw, with a note when its end was cut.
fn with_cut_note(line: &[u8], dropped: u64) -> std::borrow::Cow<'_, [u8]> {
    if dropped == 0 {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = line.to_vec();
    out.extend_from_slice(format!(" [rise: {dropped} more bytes of this line dropped]").as_bytes());
    std::borrow::Cow::Owned(out)
}

/// How a child process ended, with what it last said on stderr (for the failure message: a
/// worker's own error, e.g. "pickle refused", belongs on the terminal, not only in the log).
#[derive(Debug)]
pub struct ChildExit {
    /// The exit status.
    pub status: ExitStatus,
    /// Its last few non-empty stderr lines, decoded lossily and shortened.
    pub stderr_tail: Vec<String>,
}

impl ChildExit {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// `"{what} failed: exit code 1: error: …"`, naming the status and the stderr tail.
    pub fn failure(&self, what: &str) -> String {
        let mut msg = format!("{what} failed: {}", describe_status(&self.status));
        if !self.stderr_tail.is_empty() {
            msg.push_str(": ");
            msg.push_str(&self.stderr_tail.join(" | "));
        }
        msg
    }
}

/// Spawn `cmd` in its own process group, stream its output, wait for it.
///
/// Events on stdout go to `progress`; other stdout and all stderr lines go to `log`. If `cancel`
/// is (or becomes, via [`kill_all_children`]) set, the child is killed and
/// `StageError::cancelled()` returned.
pub fn run_child(
    mut cmd: Command,
    log: &LineSink,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<ChildExit, StageError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group: the engine, not the terminal, decides when a stage dies (Ctrl-C
    // reaches only the engine, which then kills the group and commits nothing).
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL this child if the
    // spawning thread dies (engine killed with -9). It reaches the direct child only: its
    // descendants are found by their stage token and killed before the key runs again
    // (`orphans`).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let program = format!("{:?}", cmd.get_program());
    let mut child = cmd
        .spawn()
        .map_err(|e| StageError::with_source(format!("cannot start {program}"), e))?;
    let pid = child.id() as i32;
    if let Ok(mut set) = running().lock() {
        set.insert(pid);
    }
    if cancel.load(Ordering::SeqCst) {
        // SAFETY: see kill_all_children.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_log = log.clone();
    let out_progress = progress.clone();
    // The readers never stop before end of file: a reader that gave up would leave the child
    // writing into a pipe nobody reads, and it would die of SIGPIPE.
    let out_reader = std::thread::spawn(move || {
        if let Some(stdout) = stdout {
            let _ = read_capped_lines(stdout, MAX_LINE_BYTES, |line, dropped| {
                let event = if dropped == 0 && line.starts_with(b"{\"event\"") {
                    std::str::from_utf8(line).ok().and_then(Event::parse_line)
                } else {
                    None
                };
                match event {
                    Some(event) => out_progress.emit(event),
                    None => out_log(&with_cut_note(line, dropped)),
                }
            });
        }
    });
    let err_log = log.clone();
    let err_reader = std::thread::spawn(move || {
        let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL_LINES);
        if let Some(stderr) = stderr {
            let _ = read_capped_lines(stderr, MAX_LINE_BYTES, |line, dropped| {
                err_log(&with_cut_note(line, dropped));
                let text = String::from_utf8_lossy(line);
                let text = text.trim();
                if text.is_empty() {
                    return;
                }
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(shorten(text, STDERR_TAIL_LINE_CHARS));
            });
        }
        tail.into_iter().collect::<Vec<String>>()
    });
    let status = child.wait();
    if let Ok(mut set) = running().lock() {
        set.remove(&pid);
    }
    // Grandchildren that kept the pipes open would block the readers forever: kill the group
    // once the leader has exited (harmless when the group is already empty).
    // SAFETY: see kill_all_children.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = out_reader.join();
    let stderr_tail = err_reader.join().unwrap_or_default();
    let status =
        status.map_err(|e| StageError::with_source(format!("waiting for {program}"), e))?;
    if cancel.load(Ordering::SeqCst) {
        return Err(StageError::cancelled());
    }
    Ok(ChildExit {
        status,
        stderr_tail,
    })
}

/// At most `max` characters of `text`, with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// "exit code 3" / "killed by signal 9".
pub fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => "unknown exit status".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8], max: usize) -> Vec<(Vec<u8>, u64)> {
        let mut out = Vec::new();
        read_capped_lines(input, max, |l, d| out.push((l.to_vec(), d))).unwrap();
        out
    }

    #[test]
    fn lines_are_bytes_and_capped() {
        assert_eq!(
            lines_of(b"a\n\xff\xfe b\nlast", 16),
            vec![
                (b"a".to_vec(), 0),
                (b"\xff\xfe b".to_vec(), 0),
                (b"last".to_vec(), 0)
            ]
        );
        assert_eq!(lines_of(b"", 16), Vec::<(Vec<u8>, u64)>::new());
        assert_eq!(
            lines_of(b"0123456789\nxy\n", 4),
            vec![(b"0123".to_vec(), 6), (b"xy".to_vec(), 0)]
        );
        // A line far longer than the reader's buffer, without a newline: bounded, counted.
        let long = vec![b'x'; 1_000_000];
        let got = lines_of(&long, 10);
        assert_eq!(got, vec![(vec![b'x'; 10], 999_990)]);
        assert_eq!(
            with_cut_note(b"ab", 3).as_ref(),
            b"ab [rise: 3 more bytes of this line dropped]"
        );
    }

    #[test]
    fn non_utf8_output_does_not_kill_the_stage_and_reaches_the_log_raw() {
        let logged: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
        let sink: LineSink = {
            let logged = logged.clone();
            Arc::new(move |l: &[u8]| logged.lock().unwrap().push(l.to_vec()))
        };
        // Before output was read as bytes, the reader stopped at the first invalid byte and
        // the writes after it (more than a pipe buffer) killed the child with SIGPIPE.
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r"printf 'caf\xe9\n'; printf 'x\xff\n' >&2; seq 1 200000; seq 1 200000 >&2");
        let exit = run_child(cmd, &sink, &Progress::new(|_| {}), &AtomicBool::new(false)).unwrap();
        assert!(exit.success(), "{}", exit.failure("bash"));
        let logged = logged.lock().unwrap();
        assert!(logged.contains(&b"caf\xe9".to_vec()));
        assert!(logged.contains(&b"x\xff".to_vec()));
        assert_eq!(logged.len(), 2 + 2 * 200_000);
    }

    #[test]
    fn failure_names_status_and_stderr_tail() {
        let sink: LineSink = Arc::new(|_: &[u8]| {});
        let cmd = {
            let mut c = Command::new("bash");
            c.arg("-c")
                .arg("printf 'noise\\n\\xff\\n' >&2; echo 'error: pickle refused' >&2; exit 3");
            c
        };
        let exit = run_child(cmd, &sink, &Progress::new(|_| {}), &AtomicBool::new(false)).unwrap();
        assert!(!exit.success());
        assert_eq!(
            exit.failure("worker"),
            "worker failed: exit code 3: noise | \u{fffd} | error: pickle refused"
        );
        assert_eq!(shorten("abcdef", 3), "abc…");
    }
}

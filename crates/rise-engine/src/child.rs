//! Running a stage as a child process under the engine's protocol: stdout lines that are
//! [`Event`]s go to the progress sink, everything else to the stage log; cancellation kills the
//! child's whole process group, and when the child exits nothing it started outlives it (see
//! [`crate::orphans`]).
//!
//! Stage output is bytes, not text: a stage may print anything (binary, Latin-1, a 300 MB line
//! without a newline). Lines are read as bytes, capped at [`MAX_LINE_BYTES`] (the rest of an
//! over-long line is counted and dropped, so memory stays bounded), written raw to the log, and
//! decoded lossily only where a person reads them (the terminal, error messages), with control
//! characters escaped there, so that a stage cannot drive rise's terminal.
use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::progress::escape_controls;
use crate::protocol::Event;
use crate::stage::{Progress, StageError};

/// The longest line kept from a stage's output; the rest of a longer line is dropped and its
/// length noted in the log.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// How many of a child's last stderr lines are kept for its failure message.
const STDERR_TAIL_LINES: usize = 4;
/// How much of each of those lines is shown on the terminal.
const STDERR_TAIL_LINE_CHARS: usize = 400;

/// Running stage children (the roots of their stages' process trees; each leads its own
/// process group), so Ctrl-C can kill them all and a sweep of leftovers spares them.
fn lock_running() -> MutexGuard<'static, HashSet<i32>> {
    static RUNNING: OnceLock<Mutex<HashSet<i32>>> = OnceLock::new();
    let running = RUNNING.get_or_init(|| Mutex::new(HashSet::new()));
    match running.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// SIGKILL every running stage child's process group (called on Ctrl-C after setting the
/// cancel flag; children spawned afterwards see the flag and are killed at once).
pub fn kill_all_children() {
    let groups: Vec<i32> = lock_running().iter().copied().collect();
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
    /// Its last few non-empty stderr lines, decoded lossily, shortened and with control
    /// characters escaped (`\x1b`).
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
/// `StageError::cancelled()` returned. When the child has exited, every process it left behind
/// is killed: its process group, and what left the group (see [`crate::orphans`]).
pub fn run_child(
    cmd: Command,
    log: &LineSink,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<ChildExit, StageError> {
    run_marked_child(cmd, log, progress, cancel, &mut |_| Ok(()))
}

/// [`run_child`], first handing `mark_pipes` the inode numbers of the child's stdout and stderr
/// pipes, before the child exists: a stage's processes that keep them open are found by them
/// after a killed engine, from the first instant (`StageProcesses::mark_pipes`).
pub fn run_marked_child(
    mut cmd: Command,
    log: &LineSink,
    progress: &Progress,
    cancel: &AtomicBool,
    mark_pipes: &mut dyn FnMut(&[u64]) -> std::io::Result<()>,
) -> Result<ChildExit, StageError> {
    let program = format!("{:?}", cmd.get_program());
    // The stage just ended, once the child exits: its token no longer spares anyone.
    let token = cmd
        .get_envs()
        .find(|(name, _)| *name == crate::orphans::STAGE_TOKEN_VAR)
        .and_then(|(_, value)| value)
        .map(|value| value.to_string_lossy().into_owned());
    let (stdout, stderr) = stage_pipes(&mut cmd, mark_pipes)?;
    let (mut child, pid) = spawn_root(cmd, &program)?;
    if cancel.load(Ordering::SeqCst) {
        // SAFETY: see kill_all_children.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let out_log = log.clone();
    let out_progress = progress.clone();
    // The readers never stop before end of file: a reader that gave up would leave the child
    // writing into a pipe nobody reads, and it would die of SIGPIPE.
    let out_reader = std::thread::spawn(move || {
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
    });
    let err_log = log.clone();
    let err_reader = std::thread::spawn(move || {
        let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL_LINES);
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
            // The tail is printed on rise's terminal: a stage must not set its title or
            // colours with escape sequences (the log keeps the raw bytes).
            tail.push_back(escape_controls(&shorten(text, STDERR_TAIL_LINE_CHARS)).into_owned());
        });
        tail.into_iter().collect::<Vec<String>>()
    });
    let status = child.wait();
    // Processes that kept the pipes open would block the readers forever: they die first.
    let escaped = end_root(pid, token.as_deref());
    if escaped > 0 {
        log(format!(
            "# rise: killed {escaped} processes that this stage left running outside its \
             process group after it exited"
        )
        .as_bytes());
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

/// The child's stdin (null), stdout and stderr (pipes), set on `cmd`; returns the pipes' read
/// ends, after `mark_pipes` has recorded their inode numbers.
fn stage_pipes(
    cmd: &mut Command,
    mark_pipes: &mut dyn FnMut(&[u64]) -> std::io::Result<()>,
) -> Result<(File, File), StageError> {
    let pipe = || -> std::io::Result<(File, std::io::PipeWriter)> {
        let (reader, writer) = std::io::pipe()?;
        Ok((File::from(OwnedFd::from(reader)), writer))
    };
    let cannot = |e| StageError::with_source("cannot create the stage's output pipes", e);
    let (out_read, out_write) = pipe().map_err(cannot)?;
    let (err_read, err_write) = pipe().map_err(cannot)?;
    let inodes = [
        out_read.metadata().map_err(cannot)?.ino(),
        err_read.metadata().map_err(cannot)?.ino(),
    ];
    mark_pipes(&inodes)
        .map_err(|e| StageError::with_source("cannot record the stage's output pipes", e))?;
    cmd.stdin(Stdio::null()).stdout(out_write).stderr(err_write);
    Ok((out_read, err_read))
}

/// Spawns the stage's root process: in its own process group, a child subreaper, killed when
/// the engine dies; registered as a live root before anyone can look.
fn spawn_root(mut cmd: Command, program: &str) -> Result<(Child, i32), StageError> {
    engine_becomes_subreaper();
    // Own process group: the engine, not the terminal, decides when a stage dies (Ctrl-C
    // reaches only the engine, which then kills the group and commits nothing).
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe and touches only this (forked) process.
    // PR_SET_PDEATHSIG asks the kernel to SIGKILL the child if the spawning thread dies
    // (engine killed with -9); it reaches the direct child only, and its descendants are found
    // by their marks before the key runs again (`orphans`). PR_SET_CHILD_SUBREAPER, kept
    // across execve, makes every descendant orphaned while the root lives (`setsid`, a double
    // fork) the root's child, so none leaves the engine's process tree.
    unsafe {
        cmd.pre_exec(|| {
            let on: libc::c_ulong = 1;
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on);
            Ok(())
        });
    }
    // Under the lock of the live roots: a sweep of escaped children (which holds it) must not
    // take a root between its fork and its registration for a leftover.
    let mut roots = lock_running();
    let child = cmd
        .spawn()
        .map_err(|e| StageError::with_source(format!("cannot start {program}"), e))?;
    let pid = child.id() as i32;
    roots.insert(pid);
    drop(roots);
    // `cmd` holds this process's copies of the pipes' write ends: closed now, the readers see
    // end of file once the stage's processes have closed theirs.
    drop(cmd);
    Ok((child, pid))
}

/// After the root `pid` was reaped: forget it, kill its process group, then kill and reap what
/// left the group and came to the engine when the root exited. Returns how many of those were
/// killed.
fn end_root(pid: i32, token: Option<&str>) -> usize {
    let mut roots = lock_running();
    roots.remove(&pid);
    // Grandchildren still in the group (harmless when the group is already empty).
    // SAFETY: see kill_all_children.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    crate::orphans::kill_escaped_children(&roots, token)
}

/// Makes this process a child subreaper, once, before its first stage: a stage's processes
/// that outlive their root are reparented to the engine instead of init, so the engine can
/// kill them (`orphans::kill_escaped_children`).
fn engine_becomes_subreaper() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let on: libc::c_ulong = 1;
        // SAFETY: prctl changes a flag of this process; no memory is touched.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, on) };
        if rc != 0 {
            tracing::warn!(
                "cannot make the engine a child subreaper ({}): processes a stage starts in \
                 a new session may outlive it",
                std::io::Error::last_os_error()
            );
        }
    });
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

    #[test]
    fn what_leaves_the_group_dies_with_the_stage_and_the_hosts_own_children_live() {
        // A child of this process in its process group (as `sbatch` is the engine's): not a
        // stage's, spared.
        let mut own = Command::new("sleep").arg("300").spawn().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let sink: LineSink = Arc::new(|_: &[u8]| {});
        // Two daemons without the stage's environment, in sessions of their own: one closed
        // the stage's pipes, the other holds them (and would keep the readers waiting).
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(
                r#"env -i setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $! > "$1/quiet"
                   env -i setsid sleep 300 & echo $! > "$1/loud""#,
            )
            .arg("bash")
            .arg(dir.path());
        let started = std::time::Instant::now();
        let exit = run_child(cmd, &sink, &Progress::new(|_| {}), &AtomicBool::new(false)).unwrap();
        assert!(exit.success(), "{}", exit.failure("bash"));
        assert!(started.elapsed() < std::time::Duration::from_secs(60));
        for name in ["quiet", "loud"] {
            let pid = std::fs::read_to_string(dir.path().join(name)).unwrap();
            // Killed and reaped: not even a zombie is left.
            let proc = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
            assert!(!proc.exists(), "the {name} daemon is still there");
        }
        assert!(
            matches!(own.try_wait(), Ok(None)),
            "the host's own child was killed"
        );
        let _ = own.kill();
        let _ = own.wait();
    }
}

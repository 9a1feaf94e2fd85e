//! Running a stage as a child process under the engine's protocol: stdout lines that are
//! [`Event`]s go to the progress sink, everything else to the stage log; cancellation kills the
//! child's whole process group.
use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, LineWriter, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::protocol::Event;
use crate::stage::{Progress, StageError};

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

    /// Append one line.
    pub fn line(&self, line: &str) {
        let mut guard = match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A full disk must not kill the stage; the commit will fail loudly on its own.
        let _ = writeln!(guard, "{line}");
    }

    /// Flush buffered bytes.
    pub fn flush(&self) {
        if let Ok(mut guard) = self.inner.lock() {
            let _ = guard.flush();
        }
    }
}

/// Where non-event output lines go.
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

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
) -> Result<ExitStatus, StageError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Own process group: the engine, not the terminal, decides when a stage dies (Ctrl-C
    // reaches only the engine, which then kills the group and commits nothing).
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL this child if the
    // spawning thread dies (engine killed with -9), so stages do not outlive the engine.
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
    let out_reader = std::thread::spawn(move || {
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match Event::parse_line(&line) {
                    Some(event) => out_progress.emit(event),
                    None => out_log(&line),
                }
            }
        }
    });
    let err_log = log.clone();
    let err_reader = std::thread::spawn(move || {
        if let Some(stderr) = stderr {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                err_log(&line);
            }
        }
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
    let _ = err_reader.join();
    let status =
        status.map_err(|e| StageError::with_source(format!("waiting for {program}"), e))?;
    if cancel.load(Ordering::SeqCst) {
        return Err(StageError::cancelled());
    }
    Ok(status)
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

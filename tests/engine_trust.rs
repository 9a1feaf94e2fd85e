//! The engine never commits a wrong result: processes that outlive a killed engine or their
//! stage (also those that leave its environment, group and session), stage output that is not
//! text or would drive rise's terminal, and twin keys (stages whose kind, params and inputs are
//! identical).
mod support;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use support::engine::*;
use support::{stderr, stdout};

/// A stage whose work runs in a background grandchild that appends `line 1` … `line 15` to its
/// scratch, 0.2 s a line, resuming after the lines already there; the stage copies them out when
/// done. `started` appears after line 3.
///
/// An orphaned writer from a killed run, still appending when the re-run resumes, would leave
/// duplicated lines: the artifact would differ from an uninterrupted run's.
fn background_writer_pipeline() -> String {
    header("orphans")
        + r#"[stage.bg]
kind = "shell"
outputs = ["lines"]
cmd = '''
lines="$RISE_SCRATCH/lines"
n=0; if [ -f "$lines" ]; then n=$(wc -l < "$lines"); fi
( i=$n
  while [ "$i" -lt 15 ]; do
    i=$((i+1)); echo "line $i" >> "$lines"
    if [ "$i" = 3 ]; then touch started; fi
    sleep 0.2
  done ) &
wait
cp "$lines" "$RISE_OUT/lines"
'''
"#
}

fn wait_for(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "rise exited before {} appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn uninterrupted_lock(text: &str) -> String {
    let clean = Env::new();
    let p = clean.write("p.toml", text);
    clean.ok(&["run", p.to_str().unwrap(), "--quiet"]);
    clean.ok(&["lock", p.to_str().unwrap()])
}

fn output_lines(env: &Env) -> String {
    let out = env.ok(&["show", "bg", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    let path = shown["output_path"]
        .as_str()
        .expect("show --json has the output path");
    std::fs::read_to_string(Path::new(path).join("lines")).unwrap()
}

fn killed_engine_then_rerun(signal: &str) {
    let env = Env::new();
    let text = background_writer_pipeline();
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    let mut child = env
        .rise(&["run", p, "--plain"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"), &mut child);
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    if signal == "TERM" {
        // Handled like Ctrl-C: the stage's process group is killed, the run record says so.
        assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
        assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    }
    let rerun = env.run(&["run", p, "--plain"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let expected: String = (1..=15).map(|i| format!("line {i}\n")).collect();
    assert_eq!(output_lines(&env), expected, "one writer, resumed once");
    assert_eq!(env.ok(&["lock", p]), uninterrupted_lock(&text));
    env.ok(&["audit"]);
}

#[test]
fn sigkill_of_the_engine_leaves_no_writer_behind() {
    killed_engine_then_rerun("KILL");
}

#[test]
fn sigterm_of_the_engine_kills_the_stage_tree() {
    killed_engine_then_rerun("TERM");
}

#[test]
fn sighup_is_handled_like_ctrl_c() {
    let env = Env::new();
    let p = env.write("p.toml", &background_writer_pipeline());
    let p = p.to_str().unwrap();
    let mut child = env
        .rise(&["run", p, "--plain"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&env.path("started"), &mut child);
    // SAFETY: kill(2) touches no memory.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    // The background writer died with its group: the scratch stops growing at once.
    let scratch = std::fs::read_dir(env.store().join("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("lines"))
        .find(|p| p.exists())
        .expect("the stage's scratch is kept");
    let before = std::fs::read_to_string(&scratch).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(std::fs::read_to_string(&scratch).unwrap(), before);
}

/// [`background_writer_pipeline`] with the writer started by `env -i setsid`: it carries no
/// stage token and leaves the engine's process group and session. With `detach` it also
/// closes the stage's stdout and stderr and works in the scratch directory; without, it keeps
/// them. Each line's writer (its pid) is appended to `writers` beside the pipeline.
fn escaping_writer_pipeline(detach: bool) -> String {
    let detach = if detach {
        r#"cd "$O"; exec </dev/null >/dev/null 2>&1"#
    } else {
        ":"
    };
    header("escapees")
        + &format!(
            r#"[stage.bg]
kind = "shell"
outputs = ["lines"]
cmd = '''
O="$RISE_SCRATCH"; D="$PWD"
env -i O="$O" D="$D" setsid bash -c '{detach}
lines="$O/lines"
n=0; if [ -f "$lines" ]; then n=$(wc -l < "$lines"); fi
i=$n
while [ "$i" -lt 15 ]; do
  i=$((i+1)); echo "line $i" >> "$lines"; echo $$ >> "$D/writers"
  if [ "$i" = 3 ]; then touch "$D/started"; fi
  sleep 0.2
done' &
wait
cp "$O/lines" "$RISE_OUT/lines"
'''
"#
        )
}

/// Each writer's lines (its pid, one per line written) are contiguous: a writer that outlived
/// its run would interleave with the next run's.
fn assert_one_writer_at_a_time(writers: &str) {
    let mut seen: Vec<&str> = Vec::new();
    for pid in writers.lines() {
        if seen.last() != Some(&pid) {
            assert!(
                !seen.contains(&pid),
                "writer {pid} came back after another started: {writers}"
            );
            seen.push(pid);
        }
    }
}

/// A SIGKILLed engine leaves a writer that cleared its environment (no token) and left the
/// session: the next run finds it by the stage's pipes it still holds, or by its working
/// directory inside the stage's scratch, and kills it before the stage runs again.
fn sigkill_then_rerun_with_escaped_writer(detach: bool) {
    let env = Env::new();
    let text = escaping_writer_pipeline(detach);
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    let mut child = env.rise(&["run", p, "--quiet"]).spawn().unwrap();
    wait_for(&env.path("started"), &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let rerun = env.run(&["run", p, "--plain"]);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    let said = stderr(&rerun);
    assert!(
        said.contains("was killed while running this stage; killed")
            && !said.contains("killed 0 of its processes"),
        "{said}"
    );
    let expected: String = (1..=15).map(|i| format!("line {i}\n")).collect();
    assert_eq!(output_lines(&env), expected, "one writer, resumed once");
    let writers = std::fs::read_to_string(env.path("writers")).unwrap();
    assert_eq!(writers.lines().count(), 15, "{writers}");
    assert_one_writer_at_a_time(&writers);
    assert_eq!(env.ok(&["lock", p]), uninterrupted_lock(&text));
    env.ok(&["audit"]);
}

#[test]
fn sigkill_of_the_engine_leaves_no_writer_that_left_its_session_and_environment() {
    sigkill_then_rerun_with_escaped_writer(false);
}

#[test]
fn sigkill_of_the_engine_leaves_no_detached_writer_working_in_its_scratch() {
    sigkill_then_rerun_with_escaped_writer(true);
}

#[test]
fn a_daemon_that_outlives_its_stage_dies_when_the_stage_exits() {
    let env = Env::new();
    // Two daemons outside the stage's environment, group and session; one closed the stage's
    // stdout and stderr, the other keeps them (the engine reads them to their end).
    let text = header("daemons")
        + r#"[stage.d]
kind = "shell"
outputs = ["out.txt"]
cmd = '''
D="$PWD"
env -i D="$D" setsid bash -c 'for i in $(seq 600); do echo x >> "$D/beat-quiet"; sleep 0.1; done' </dev/null >/dev/null 2>&1 &
env -i D="$D" setsid bash -c 'for i in $(seq 600); do echo x >> "$D/beat-loud"; sleep 0.1; done' &
while [ ! -s "$D/beat-quiet" ] || [ ! -s "$D/beat-loud" ]; do sleep 0.05; done
echo done > "$RISE_OUT/out.txt"
'''
"#;
    let p = env.write("p.toml", &text);
    let started = Instant::now();
    env.ok(&["run", p.to_str().unwrap(), "--quiet"]);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the run waited {:?} for a daemon holding its stage's stdout",
        started.elapsed()
    );
    let size = |name: &str| std::fs::metadata(env.path(name)).unwrap().len();
    let before = (size("beat-quiet"), size("beat-loud"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        (size("beat-quiet"), size("beat-loud")),
        before,
        "a daemon of the stage still writes after the stage ended"
    );
}

#[test]
fn stage_output_and_pipeline_names_cannot_drive_the_terminal() {
    let env = Env::new();
    // Colours, a window title and a bell on stderr (quoted by the failure), and the same in a
    // message event (shown live).
    let text = header("escapes")
        + r#"[stage.f]
kind = "shell"
cmd = '''echo '{"event":"message","msg":"\u001b]0;pwned\u0007"}'; printf '\x1b[31mred\x1b]0;title\x07 \xff\xfe\n' >&2; exit 3'''
"#;
    let p = env.write("p.toml", &text);
    let out = env.run(&["run", p.to_str().unwrap(), "--plain"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        !out.stderr.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw control characters on rise's stderr: {err:?}"
    );
    assert!(err.contains(r"\x1b[31mred\x1b]0;title\x07"), "{err}");
    assert!(err.contains(r"\x1b]0;pwned\x07"), "{err}");
    // The stage's log keeps what it wrote, byte for byte.
    let log = std::fs::read_dir(env.store().join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("f.log"))
        .find(|p| p.exists())
        .expect("the stage log");
    let bytes = std::fs::read(log).unwrap();
    let raw: &[u8] = b"\x1b[31mred\x1b]0;title\x07 \xff\xfe\n";
    assert!(bytes.windows(raw.len()).any(|w| w == raw));

    // The pipeline's name is printed too: one with a control character is refused, located.
    let named = env.write(
        "named.toml",
        "[pipeline]\nname = \"x\\u001b]0;pwn\\u0007y\"\nseed = 1\n\n\
         [stage.a]\nkind = \"shell\"\ncmd = 'true'\n",
    );
    let out = env.run(&["run", named.to_str().unwrap(), "--plain"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(!out.stderr.contains(&0x1b), "{err:?}");
    assert!(
        err.contains("named.toml:2") && err.contains("control character"),
        "{err}"
    );
}

#[test]
fn stage_output_is_bytes_and_lines_are_capped() {
    let env = Env::new();
    // Invalid UTF-8 on both streams, then enough output that a reader which stopped at the
    // first bad byte would leave the stage dying of SIGPIPE; then a 300 MB line without a
    // newline.
    let text = header("bytes")
        + r#"[stage.noisy]
kind = "shell"
outputs = ["done"]
cmd = '''
printf 'caf\xe9\n'; printf 'err \xff\n' >&2
seq 1 100000; seq 1 100000 >&2
head -c 300000000 /dev/zero | tr '\0' x
touch "$RISE_OUT/done"
'''
"#;
    let p = env.write("p.toml", &text);
    let out = env.run(&["run", p.to_str().unwrap(), "--plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let logs = env.store().join("logs");
    let log = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.path().join("noisy.log"))
        .find(|p| p.exists())
        .expect("the stage log");
    let bytes = std::fs::read(&log).unwrap();
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"\ncaf\xe9\n"), "raw bytes reach the log");
    assert!(has(b"\nerr \xff\n"));
    assert!(has(b"\n100000\n"));
    assert!(has(b"more bytes of this line dropped]"));
    assert!(bytes.len() < 4_000_000, "log is {} bytes", bytes.len());
    // Peak memory of every process this test waited for (rise, and through it bash, head, tr):
    // far below the 300 MB line.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    assert!(
        usage.ru_maxrss < 150 * 1024,
        "peak RSS {} KiB",
        usage.ru_maxrss
    );
}

/// Files under `dir` (recursively), to count what a run added to the store.
fn count_files(dir: &Path) -> usize {
    snapshot(dir).len()
}

fn store_objects_and_results(env: &Env) -> (usize, usize) {
    (
        count_files(&env.store().join("objects")),
        count_files(&env.store().join("results")),
    )
}

fn twin(name: &str, input: Option<&str>) -> String {
    let (inputs, cat) = match input {
        Some(i) => (
            format!("inputs = {{ x = \"{i}\" }}\n"),
            "cat \"$RISE_IN_X/out.txt\" > \"$RISE_OUT/out.txt\"; ",
        ),
        None => (String::new(), ": > \"$RISE_OUT/out.txt\"; "),
    };
    // The command does not mention the stage's name: twins have one key.
    format!(
        "[stage.{name}]\nkind = \"shell\"\n{inputs}outputs = [\"out.txt\"]\n\
         cmd = '''echo \"$RISE_STAGE\" >> \"$COUNTER\"; {cat}echo level >> \"$RISE_OUT/out.txt\"'''\n\n"
    )
}

#[test]
fn twin_keys_execute_once_and_no_op_reruns_write_nothing() {
    let env = Env::new();
    let text = header("twins")
        + &twin("left", None)
        + &twin("right", None)
        + &stage("join", &[("l", "left"), ("r", "right")], "n = 1");
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet", "--jobs", "2"]);
    let executed = env.executed();
    assert_eq!(executed.len(), 2, "one of the twins and join: {executed:?}");
    assert!(executed.contains(&"join".to_string()));
    // Both twins have a result of their own, with the same output.
    let left: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "left", "--json"])).unwrap();
    let right: serde_json::Value =
        serde_json::from_str(&env.ok(&["show", "right", "--json"])).unwrap();
    assert_eq!(left["manifest"]["output"], right["manifest"]["output"]);
    let before = store_objects_and_results(&env);
    for _ in 0..5 {
        env.ok(&["run", p, "--quiet"]);
    }
    assert_eq!(env.executed(), Vec::<String>::new());
    assert_eq!(
        store_objects_and_results(&env),
        before,
        "no-op re-runs add nothing"
    );
}

#[test]
fn a_thousand_stage_tree_of_twins_reruns_without_growing_the_store() {
    let env = Env::new();
    // A binary tree of 10 levels (1023 stages): siblings have identical commands and inputs.
    let mut text = header("tree") + &twin("n", None);
    for level in 1..10 {
        for i in 0..(1u32 << level) {
            let parent = if level == 1 {
                "n".to_string()
            } else {
                format!("n{}_{}", level - 1, i / 2)
            };
            text += &twin(&format!("n{level}_{i}"), Some(&parent));
        }
    }
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet", "--jobs", "2"]);
    assert_eq!(env.executed().len(), 10, "one execution per level");
    let before = store_objects_and_results(&env);
    for _ in 0..5 {
        env.ok(&["run", p, "--quiet"]);
    }
    assert_eq!(env.executed(), Vec::<String>::new());
    assert_eq!(
        store_objects_and_results(&env),
        before,
        "no-op re-runs add nothing"
    );
}

#[test]
fn a_stage_that_changes_its_input_commits_nothing() {
    let env = Env::new();
    // Root ignores the checkout's read-only modes: the seal check after the stage catches it.
    let text = header("tamper")
        + &stage("a", &[], "n = 1")
        + r#"[stage.b]
kind = "shell"
inputs = { x = "a" }
outputs = ["out.txt"]
cmd = '''echo evil >> "$RISE_IN_X/out.txt" && cat "$RISE_IN_X/out.txt" > "$RISE_OUT/out.txt"'''
"#;
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    let out = env.run(&["run", p, "--plain"]);
    let is_root = unsafe { libc::geteuid() } == 0;
    assert!(!out.status.success(), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    if is_root {
        assert!(said.contains("the stage changed its input `x`"), "{said}");
        assert!(said.contains("nothing committed"), "{said}");
    } else {
        assert!(said.contains("Permission denied"), "{said}");
    }
    let status: serde_json::Value =
        serde_json::from_str(&env.ok(&["status", p, "--json"])).unwrap();
    assert_eq!(status["stages"][1]["state"], "never run", "{status}");
    // The damaged checkout was discarded: the store is clean, a's output intact.
    env.ok(&["store", "verify"]);
}

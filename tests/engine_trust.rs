//! The engine never commits a wrong result: processes that outlive a killed engine, stage output
//! that is not text, and twin keys (stages whose kind, params and inputs are identical).
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

fn uninterrupted_lock() -> String {
    let clean = Env::new();
    let p = clean.write("p.toml", &background_writer_pipeline());
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
    let p = env.write("p.toml", &background_writer_pipeline());
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
    assert_eq!(env.ok(&["lock", p]), uninterrupted_lock());
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

//! The `rise` front end under conditions scripts create: a reader that stops early
//! (`rise status p.toml | head`), logs captured to a file, and a store with one damaged result.
mod support;
use support::engine::*;
use support::{stderr, stdout};

use std::io::{BufRead, BufReader};
use std::process::Stdio;

/// Twin stages (same key: executed once) feeding one stage with that many inputs and a long
/// list param: every listing command prints well over a pipe buffer (64 KiB) about it.
const TWINS: usize = 4000;

fn wide_pipeline(env: &Env) -> std::path::PathBuf {
    let mut text = header("wide");
    for i in 0..TWINS {
        text.push_str(&format!(
            "[stage.u{i}]\nkind = \"shell\"\ncmd = \"true\"\n\n"
        ));
    }
    let inputs: Vec<String> = (0..TWINS).map(|i| format!("i{i} = \"u{i}\"")).collect();
    let list: Vec<String> = (0..4000).map(|i| i.to_string()).collect();
    text.push_str(&format!(
        "[stage.all]\nkind = \"shell\"\ninputs = {{ {} }}\nparams = {{ list = [{}] }}\ncmd = \"true\"\n",
        inputs.join(", "),
        list.join(", ")
    ));
    env.write("wide.toml", &text)
}

/// Runs `rise ARGS` with stdout into a pipe whose reader takes one line and goes away.
/// Returns (exit code, stderr). Stderr goes to a file: a second pipe that nobody reads while
/// stdout is read would fill up and stall `rise` (the progress of a long run is on stderr).
fn read_one_line_then_close(env: &Env, args: &[&str]) -> (Option<i32>, String) {
    let err_path = env.path("stderr.txt");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = env
        .rise(args)
        .stdout(Stdio::piped())
        .stderr(err_file)
        .spawn()
        .expect("spawn rise");
    let stdout = child.stdout.take().expect("stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read one line");
    // The reader (and with it the pipe's only read end) is dropped here.
    let status = child.wait().expect("wait");
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status.code(), err)
}

#[test]
fn a_reader_that_stops_early_never_makes_rise_panic() {
    let env = Env::new();
    let p = wide_pipeline(&env);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet"]);
    let mut failures = Vec::new();
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", p],
        vec!["plan", p],
        vec!["dag", p],
        vec!["dag", p, "--dot"],
        vec!["lock", p],
        vec!["show", "all"],
        vec!["show", "all", "--json"],
        vec!["lineage", "all"],
        vec!["audit"],
        vec!["--help"],
        vec!["run", p, "--json"],
    ];
    for args in &commands {
        let (code, err) = read_one_line_then_close(&env, args);
        // A panic exits with 101 and says "panicked"; SIGPIPE (no exit code) or a clean exit
        // are both what `cat` or `ls` would do.
        if code == Some(101) || err.contains("panicked") || err.contains("Broken pipe") {
            failures.push(format!("rise {args:?}: exit {code:?}, stderr:\n{err}"));
        }
        // `run` keeps going without its reader: its exit status is the run's.
        if args[0] == "run" && code != Some(0) {
            failures.push(format!("rise {args:?}: exit {code:?}, wanted 0: {err}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_listings_really_overflow_a_pipe_buffer() {
    // Otherwise the test above would pass without ever meeting a closed pipe.
    let env = Env::new();
    let p = wide_pipeline(&env);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet"]);
    for args in [
        vec!["status", p],
        vec!["plan", p],
        vec!["dag", p],
        vec!["lock", p],
        vec!["show", "all"],
        vec!["lineage", "all"],
        vec!["run", p, "--json"],
    ] {
        let out = env.ok(&args);
        assert!(
            out.len() > 80 * 1024,
            "rise {args:?} prints only {} bytes",
            out.len()
        );
    }
}

#[test]
fn log_lines_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    let env = Env::new();
    let p = env.write("one.toml", &(header("one") + &stage("a", &[], "n = 1")));
    let out = env
        .rise(&["run", p.to_str().unwrap()])
        .env("RISE_LOG", "debug")
        .env("RUST_LOG", "debug")
        .output()
        .expect("spawn rise");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("DEBUG"), "debug logging is on: {err}");
    assert!(
        !err.contains('\x1b'),
        "escape codes in captured stderr: {err:?}"
    );
}

/// The result manifest blob of `stage`'s latest result, made writable.
fn manifest_blob(env: &Env, stage: &str) -> std::path::PathBuf {
    let out = env.ok(&["show", stage, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("show --json");
    let id = v["result"].as_str().expect("result id").to_string();
    let path = env.store().join("objects").join(&id[..2]).join(&id[2..]);
    let mut perms = std::fs::metadata(&path)
        .expect("manifest blob")
        .permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).expect("chmod");
    path
}

#[test]
fn a_damaged_result_manifest_affects_only_its_own_stage() {
    let env = Env::new();
    // a -> b, and c on its own; every output differs, so every artifact has one producer.
    let text = header("d")
        + &stage("a", &[], "n = 1")
        + &stage("b", &[("x", "a")], "n = 2")
        + &stage("c", &[], "n = 3");
    let p = env.write("d.toml", &text);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet"]);
    env.executed();
    let blob = manifest_blob(&env, "a");
    std::fs::write(&blob, b"{\"not\": \"the manifest\"}").expect("damage the manifest");

    // The other stages show as before; b names its damaged producer instead of failing.
    let show_c = env.ok(&["show", "c"]);
    assert!(show_c.contains("stage    c"), "{show_c}");
    let show_b = env.ok(&["show", "b"]);
    assert!(show_b.contains("is damaged"), "{show_b}");
    let lineage = env.ok(&["lineage", "b"]);
    assert!(
        lineage.starts_with("b [shell]")
            && lineage.contains("is damaged")
            && lineage.contains("rise store reindex"),
        "{lineage}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&env.ok(&["lineage", "b", "--json"])).expect("lineage --json");
    assert!(json["lineage"][1]["damaged_result"].is_string(), "{json}");

    // Its own stage says what is wrong and what to run.
    let out = env.run(&["show", "a"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the latest result of stage a")
            && err.contains("is corrupt")
            && err.contains("rise store verify")
            && err.contains("rise store reindex")
            && !err.contains("panicked"),
        "{err}"
    );
    // `audit` reports it as a problem, and still checks everything else.
    let out = env.run(&["audit", "--no-verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report = stdout(&out);
    assert!(
        report.contains("damaged results: 1") && report.contains("lineage: 2 results, closed"),
        "{report}"
    );

    // The hint works: after a reindex the damaged result is gone, and a run recomputes it.
    // (Its exit status is for `store reindex`'s own tests: it may report the damage.)
    let _ = env.run(&["store", "reindex"]);
    let out = env.run(&["show", "a"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no result matches `a`"),
        "{}",
        stderr(&out)
    );
    env.ok(&["run", p, "--quiet"]);
    assert_eq!(env.executed(), vec!["a".to_string()]);
    assert!(env.ok(&["show", "a"]).contains("stage    a"));
}

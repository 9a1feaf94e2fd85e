//! The bad-input corpus: every file in tests/fixtures/bad/ must make `rise run` exit non-zero
//! with `FILE:LINE:` and the expected problem, before touching the store.
//!
//! Each file says what it expects: `# expect: TEXT` (a substring of the message) and the line,
//! either marked with a trailing `# <- error` comment or given as `# expect-line: N`.
mod support;
use support::engine::*;
use support::stderr;

struct Case {
    path: std::path::PathBuf,
    expect: String,
    line: usize,
}

fn cases() -> Vec<Case> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks `# expect:`", path.display()))
            .to_string();
        let line = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("# expect-line: ")
                    .map(|n| n.trim().parse().unwrap())
            })
            .or_else(|| {
                text.lines()
                    .position(|l| l.contains("# <- error"))
                    .map(|i| i + 1)
            })
            .unwrap_or_else(|| panic!("{} marks no error line", path.display()));
        out.push(Case { path, expect, line });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

#[test]
fn corpus_has_at_least_twenty_files() {
    assert!(cases().len() >= 20, "only {} bad pipelines", cases().len());
}

#[test]
fn every_bad_pipeline_is_rejected_with_file_line_and_problem() {
    let env = Env::new();
    // A store with one committed result, to show bad files leave it byte-for-byte unchanged.
    let good = env.write("good.toml", &(header("good") + &stage("a", &[], "n = 1")));
    env.ok(&["run", good.to_str().unwrap(), "--quiet"]);
    env.executed();
    let before = snapshot(&env.store());
    let mut failures = Vec::new();
    for case in cases() {
        for cmd in ["run", "plan", "lock", "dag"] {
            let out = env.run(&[cmd, case.path.to_str().unwrap()]);
            let err = stderr(&out);
            let want = format!("{}:{}:", case.path.display(), case.line);
            if out.status.success() || !err.contains(&want) || !err.contains(&case.expect) {
                failures.push(format!(
                    "rise {cmd} {}: status {:?}, wanted `{want}` and `{}`, got:\n{err}",
                    case.path.display(),
                    out.status.code(),
                    case.expect
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(env.executed(), Vec::<String>::new(), "nothing ran");
    assert!(before == snapshot(&env.store()), "the store changed");
}

/// `rise CMD ARGS` that must finish within 30 s (a FIFO opened for reading would block it
/// forever): its output, or a failure saying it hung.
fn run_within_30s(env: &Env, args: &[&str]) -> std::process::Output {
    let mut child = env
        .rise(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rise");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("rise {args:?} still runs after 30 s: it opened the FIFO");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn a_param_over_the_kernels_argument_limit_is_refused_when_the_file_is_read() {
    let env = Env::new();
    // 200 KB: over MAX_ARG_STRLEN (128 KiB), so `execve` of the stage's bash would fail with
    // E2BIG; it must be refused before the run, at its line, not when the stage starts.
    let big = "x".repeat(200_000);
    let p = env.write(
        "big.toml",
        &format!(
            "{}[stage.a]\nkind = \"shell\"\ncmd = \"true\"\nparams = {{ n = 1 }}\n\n\
             [stage.b]\nkind = \"shell\"\ncmd = \"true\"\nparams = {{ blob = \"{big}\" }}\n",
            header("big")
        ),
    );
    for cmd in ["plan", "run"] {
        let out = env.run(&[cmd, p.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "rise {cmd}: {err}");
        let want = format!(
            "{}:13: field stage.b.params.blob: is 200017 bytes",
            p.display()
        );
        assert!(
            err.contains(&want) && err.contains("E2BIG") && err.contains("RISE_PARAM_BLOB"),
            "rise {cmd}: wanted `{want}`, got: {err}"
        );
    }
    assert_eq!(env.executed(), Vec::<String>::new(), "nothing ran");
    assert!(
        !env.store().exists(),
        "a bad file must not even create the store"
    );
}

#[test]
fn a_dependency_that_is_a_fifo_is_named_as_one_and_never_opened() {
    let env = Env::new();
    let fifo = env.path("input.fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let p = env.write(
        "fifo.toml",
        &format!(
            "{}[stage.a]\nkind = \"shell\"\ncmd = \"true\"\ndeps = [\"input.fifo\"]\n",
            header("fifo")
        ),
    );
    for cmd in ["plan", "run", "dag"] {
        let out = run_within_30s(&env, &[cmd, p.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "rise {cmd}: {err}");
        assert!(
            err.contains(&format!("{}:8: field stage.a.deps[0]:", p.display()))
                && err.contains("is a FIFO (named pipe), not a file")
                && !err.contains("missing file"),
            "rise {cmd}: {err}"
        );
    }
}

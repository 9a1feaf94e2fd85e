//! The bad-input corpus: every file in tests/fixtures/bad/ must make `rise run` exit non-zero
//! with `FILE:LINE:` and the expected problem, before touching the store.
//!
//! Each file says what it expects: `# expect: TEXT` (a substring of the message) and the line,
//! either marked with a trailing `# <- error` comment or given as `# expect-line: N`.
mod engine_support;
use engine_support::*;

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

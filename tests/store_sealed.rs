//! Sealed checkouts, end to end with the real `rise` binary: a stage cannot change the
//! checkout of its input (`$RISE_IN_X`), and a checkout damaged anyway (by root, who ignores
//! modes) is reported by `rise store verify` and rebuilt before the next stage reads it, so no
//! wrong result is committed under the right input id.
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// Who runs `rise` (and so its stages and the checkouts they get).
#[derive(Clone, Copy, PartialEq)]
enum User {
    /// The test process's own user.
    Me,
    /// `nobody`, through `setpriv` (the test runs as root).
    Nobody,
}

struct Env {
    dir: tempfile::TempDir,
    user: User,
}

impl Drop for Env {
    fn drop(&mut self) {
        // Sealed checkouts have read-only directories, which `TempDir` cannot delete unless
        // it runs as root: open them up first.
        make_writable(self.dir.path());
    }
}

fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
        for e in std::fs::read_dir(path).into_iter().flatten().flatten() {
            make_writable(&e.path());
        }
    }
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn has_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn uid_of(user: &str, flag: &str) -> u32 {
    let out = Command::new("id").args([flag, user]).output().expect("id");
    assert!(out.status.success(), "id {flag} {user}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("numeric id")
}

impl Env {
    fn new(user: User) -> Env {
        let env = Env {
            dir: tempfile::tempdir().expect("temp dir"),
            user,
        };
        if user == User::Nobody {
            // nobody must own the store, as a user running rise owns theirs.
            std::os::unix::fs::chown(
                env.dir.path(),
                Some(uid_of("nobody", "-u")),
                Some(uid_of("nobody", "-g")),
            )
            .expect("chown the temp dir to nobody");
        }
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn rise(&self, args: &[&str]) -> Output {
        let mut cmd = match self.user {
            User::Me => support::rise(),
            User::Nobody => support::rise_under(&[
                "setpriv",
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
            ]),
        };
        cmd.arg("--store")
            .arg(self.path("store"))
            .args(args)
            .env("HOME", self.dir.path())
            .env("DAMAGE_LOG", self.path("damage.log"))
            .current_dir(self.dir.path());
        cmd.output().expect("spawn rise")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.rise(args);
        assert!(
            out.status.success(),
            "rise {args:?} failed ({:?})\n{}",
            out.status,
            describe(&out)
        );
        out
    }

    /// Writes pipeline `stages` (after the header) to `p.toml` and runs it.
    fn run(&self, stages: &str) -> Output {
        let text = format!("[pipeline]\nname = \"sealed\"\nseed = 1\n\n{stages}");
        std::fs::write(self.path("p.toml"), text).expect("write pipeline");
        let p = self.path("p.toml");
        self.ok(&["run", p.to_str().expect("utf-8 path")])
    }

    fn show(&self, stage: &str) -> Value {
        let out = self.ok(&["show", stage, "--json"]);
        serde_json::from_slice(&out.stdout).expect("show --json")
    }

    /// The output artifact id of `stage`'s latest result.
    fn output_of(&self, stage: &str) -> String {
        self.show(stage)["manifest"]["output"]
            .as_str()
            .expect("manifest.output")
            .to_string()
    }
}

fn describe(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The producer: one file in a subdirectory and one at the top.
const PRODUCER: &str = r#"[stage.a]
kind = "shell"
outputs = ["out.txt", "sub/deep.txt"]
cmd = '''mkdir "$RISE_OUT/sub" && echo "from a" > "$RISE_OUT/out.txt" && echo "deep" > "$RISE_OUT/sub/deep.txt"'''

"#;

/// A consumer of `a`'s output. `n` only makes its key differ from other consumers (so a
/// later run executes it against the cached `a`, reading `a`'s checkout); its output does
/// not depend on it, so every undamaged consumer commits the same artifact. `before` runs
/// before it reads its input, `after` after it wrote its output.
fn consumer(name: &str, n: u32, before: &str, after: &str) -> String {
    format!(
        "[stage.{name}]\nkind = \"shell\"\ninputs = {{ x = \"a\" }}\nparams = {{ n = {n} }}\n\
         outputs = [\"out.txt\"]\ncmd = '''{before}\ncat \"$RISE_IN_X/out.txt\" \"$RISE_IN_X/sub/deep.txt\" > \"$RISE_OUT/out.txt\"\n\
         ls -A \"$RISE_IN_X\" >> \"$RISE_OUT/out.txt\"\necho consumed >> \"$RISE_OUT/out.txt\"\n{after}'''\n\n"
    )
}

/// What a consumer commits when its input is intact.
const CONSUMED: &str = "from a\ndeep\nout.txt\nsub\nconsumed\n";

/// The output artifact a consumer commits in a store nobody damaged.
fn undamaged_consumer_output() -> String {
    let env = Env::new(User::Me);
    env.run(&format!("{PRODUCER}{}", consumer("b", 1, "", "")));
    let show = env.show("b");
    let dir = PathBuf::from(show["output_path"].as_str().expect("output_path"));
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).expect("read b"),
        CONSUMED
    );
    env.output_of("b")
}

fn read_output(env: &Env, stage: &str) -> String {
    let dir = PathBuf::from(
        env.show(stage)["output_path"]
            .as_str()
            .expect("output_path")
            .to_string(),
    );
    std::fs::read_to_string(dir.join("out.txt")).expect("read output")
}

/// (a) A stage that is not root cannot delete, rewrite, append to or add files in its input's
/// checkout: every attempt fails with EACCES, and what it commits is what an undamaged run
/// commits. Before checkouts were sealed, the stage owned writable checkout directories: the
/// delete-and-rewrite went through and the consumer committed "evil" under `a`'s id.
#[test]
fn a_stage_that_is_not_root_cannot_change_its_input_checkout() {
    let user = if !is_root() {
        User::Me
    } else if has_setpriv() {
        User::Nobody
    } else {
        println!(
            "skipped: the test runs as root and setpriv is not installed, so it cannot run a \
             stage as another user (root ignores the read-only modes under test)"
        );
        return;
    };
    let expected = undamaged_consumer_output();
    let env = Env::new(user);
    env.run(PRODUCER);
    let attacks = [
        r#"rm -f "$RISE_IN_X/out.txt""#,
        r#"echo evil > "$RISE_IN_X/out.txt""#,
        r#"echo evil >> "$RISE_IN_X/out.txt""#,
        r#"rm -f "$RISE_IN_X/sub/deep.txt""#,
        r#"touch "$RISE_IN_X/extra""#,
        r#"mv "$RISE_IN_X/sub" "$RISE_IN_X/moved""#,
    ];
    let before: String = attacks
        .iter()
        // The group's stderr goes to the log, so bash's own error for a failed `>` does too.
        .map(|a| {
            format!(
                "{{ {a}; }} 2>> \"$DAMAGE_LOG\" && echo \"succeeded: {}\" >> \"$DAMAGE_LOG\"\n",
                a.replace('"', "")
            )
        })
        .collect();
    env.run(&format!("{PRODUCER}{}", consumer("b", 2, &before, "")));

    let log = std::fs::read_to_string(env.path("damage.log")).expect("damage log");
    assert!(
        !log.contains("succeeded"),
        "a write into the checkout went through:\n{log}"
    );
    assert_eq!(
        log.matches("Permission denied").count(),
        attacks.len(),
        "every attempt fails with EACCES:\n{log}"
    );
    assert_eq!(read_output(&env, "b"), CONSUMED);
    assert_eq!(
        env.output_of("b"),
        expected,
        "b commits what an undamaged run commits"
    );
    let out = env.rise(&["store", "verify"]);
    assert!(out.status.success(), "{}", describe(&out));
}

/// Two stages share the checkout of their input and run at the same time: one appends to it,
/// the other reads it meanwhile. The first one's check finds the damage and discards the
/// checkout; the reader must not take the vanished checkout for an intact one and commit what
/// it read under the input's id. Neither commits; the re-run (without the vandal) reads the
/// artifact's true files. Before the fix the reader committed "from a\nEVIL" and `rise run`
/// served that result from the cache afterwards.
#[test]
fn stages_sharing_a_checkout_commit_nothing_when_one_damages_it() {
    if !is_root() {
        println!("skipped: needs root (root is who can write into a sealed checkout)");
        return;
    }
    let env = Env::new(User::Me);
    env.run(PRODUCER);
    // The reader waits until the damage is there and reads it; the vandal exits 0.3 s after
    // the damage, so its check (and the discard) comes while the reader still runs.
    let marker = env.path("damaged");
    let vandal = format!(
        "[stage.vandal]\nkind = \"shell\"\ninputs = {{ x = \"a\" }}\noutputs = [\"out.txt\"]\n\
         cmd = '''sleep 0.5; echo EVIL >> \"$RISE_IN_X/out.txt\"; touch {m}; sleep 0.3; echo v > \"$RISE_OUT/out.txt\"'''\n\n",
        m = marker.display()
    );
    let wait = format!("while [ ! -e {} ]; do sleep 0.05; done", marker.display());
    let reader = consumer("reader", 1, &wait, "sleep 1.5");
    let text = format!("[pipeline]\nname = \"sealed\"\nseed = 1\n\n{PRODUCER}{vandal}{reader}");
    std::fs::write(env.path("p.toml"), text).expect("write pipeline");
    let p = env.path("p.toml");
    let out = env.rise(&["run", p.to_str().expect("utf-8 path"), "--jobs", "2"]);
    let said = describe(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the stage changed its input `x`, or another stage running at the same time")
            && said.contains("was discarded while in use")
            && said.contains("nothing committed"),
        "the reader is told why it commits nothing:\n{said}"
    );
    for stage in ["vandal", "reader"] {
        assert!(
            !env.rise(&["show", stage]).status.success(),
            "{stage} has no result:\n{said}"
        );
    }
    env.ok(&["store", "verify"]);
    // Without the vandal, the reader commits the artifact's true files.
    env.run(&format!("{PRODUCER}{}", consumer("reader", 1, "", "")));
    assert_eq!(read_output(&env, "reader"), CONSUMED);
}

/// (b) Root ignores modes, so root can damage a checkout: between runs, by hand, and from
/// inside a stage. `rise store verify` names the damaged file and the results that use it
/// while the damage exists, and the next stage to read the checkout gets it rebuilt, so the
/// downstream result equals an undamaged run's. Before the seal check, the next consumer read
/// the damaged file and committed it, and verify counted "0 bad results".
#[test]
fn root_damage_to_a_checkout_is_reported_and_repaired_before_the_next_consumer() {
    if !is_root() {
        println!("skipped: needs root (root is who can write into a sealed checkout)");
        return;
    }
    let expected = undamaged_consumer_output();
    let env = Env::new(User::Me);
    env.run(&format!("{PRODUCER}{}", consumer("b", 1, "", "")));
    // Before any damage: `rise show` checks (and so would repair) the checkout it shows.
    let a_output = env.output_of("a");
    let a_result = env.show("a")["result"]
        .as_str()
        .expect("result")
        .to_string();
    let checkout = PathBuf::from(
        env.show("a")["output_path"]
            .as_str()
            .expect("path")
            .to_string(),
    );
    for (rel, mode) in [
        ("", 0o555),
        ("sub", 0o555),
        ("out.txt", 0o444),
        ("sub/deep.txt", 0o444),
    ] {
        let p = if rel.is_empty() {
            checkout.clone()
        } else {
            checkout.join(rel)
        };
        let m = std::fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(m, mode, "{} is sealed", p.display());
    }

    // 1. Damage by hand, between runs (root's write ignores the 0444 mode).
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(checkout.join("out.txt"))
            .expect("root opens a read-only file for writing");
        f.write_all(b"EVIL\n").expect("append");
    }
    let out = env.rise(&["store", "verify"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        text.contains(&format!("DAMAGED CHECKOUT {}", checkout.display()))
            && text
                .contains("file \"out.txt\" was modified: it has 12 bytes, the artifact records 7")
            && text.contains(&format!("used by      {a_result} (sealed / a)"))
            && text.contains("fix: rise store verify --repair")
            && text.contains("damaged checkouts (used by 2 results)"),
        "{text}"
    );
    let out = env.rise(&["store", "verify", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("verify --json");
    assert_eq!(v["bad_checkouts"][0]["artifact"], a_output);
    assert!(
        v["bad_checkouts"][0]["results"]
            .as_array()
            .expect("results")
            .contains(&Value::String(a_result.clone())),
        "{v:#}"
    );

    // The next consumer (a is cached, so its input is the checkout) gets it rebuilt.
    let out = env.run(&format!("{PRODUCER}{}", consumer("c", 2, "", "")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("was damaged") && err.contains("\"out.txt\" was modified"),
        "the rebuild is logged as a warning:\n{err}"
    );
    assert_eq!(read_output(&env, "c"), CONSUMED);
    assert_eq!(env.output_of("c"), expected);
    assert_eq!(
        std::fs::read_to_string(checkout.join("out.txt")).unwrap(),
        "from a\n"
    );
    env.ok(&["store", "verify"]);

    // 2. Damage from inside a stage, after it read its input: replace a file and drop in an
    // extra one. The engine checks a stage's inputs against their seals before committing: the
    // stage fails, commits nothing, and the damaged checkout is discarded at once.
    let vandal = r#"rm "$RISE_IN_X/sub/deep.txt" && echo forged > "$RISE_IN_X/sub/deep.txt" && echo x > "$RISE_IN_X/extra""#;
    let text = format!(
        "[pipeline]\nname = \"sealed\"\nseed = 1\n\n{PRODUCER}{}",
        consumer("d", 3, "", vandal)
    );
    std::fs::write(env.path("p.toml"), text).expect("write pipeline");
    let p = env.path("p.toml");
    let out = env.rise(&["run", p.to_str().expect("utf-8 path")]);
    let said = describe(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("the stage changed its input `x`")
            && said.contains("file \"sub/deep.txt\" was modified")
            && said.contains("extra entry \"extra\" (a regular file) is not in the artifact")
            && said.contains("nothing committed"),
        "{said}"
    );
    assert!(
        !env.rise(&["show", "d"]).status.success(),
        "d has no result"
    );
    env.ok(&["store", "verify"]);
    env.run(&format!("{PRODUCER}{}", consumer("e", 4, "", "")));
    assert_eq!(read_output(&env, "e"), CONSUMED);
    assert_eq!(
        env.output_of("e"),
        expected,
        "the next consumer reads a rebuilt checkout"
    );
    assert!(!checkout.join("extra").exists());
    env.ok(&["store", "verify"]);

    // 3. `rise store verify --repair` rebuilds a damaged checkout at once.
    std::fs::write(checkout.join("out.txt"), b"tampered\n").expect("root overwrites");
    let out = env.rise(&["store", "verify", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.contains(&format!("rebuilt checkout {}", checkout.display())),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(checkout.join("out.txt")).unwrap(),
        "from a\n"
    );
    env.ok(&["store", "verify"]);
}

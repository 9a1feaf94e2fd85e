//! `rise audit`: lock comparison, determinism re-run, and damaged blobs; `rise lock` output.
mod support;
use support::engine::*;
use support::{stderr, stdout};

#[test]
fn audit_lock_rerun_and_corruption() {
    let env = Env::new();
    let mut text = header("audit");
    text += &stage("a", &[], "n = 1");
    text += &stage("b", &[("x", "a")], "n = 2");
    let p = env.write("p.toml", &text);
    let p = p.to_str().unwrap();
    env.ok(&["run", p, "--quiet"]);

    // lock -> file; audit against it passes; a tampered lock fails naming the stage.
    let lock_path = env.path("rise.lock");
    env.ok(&["lock", p, "-o", lock_path.to_str().unwrap()]);
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    assert_eq!(lock, env.ok(&["lock", p]), "lock output is deterministic");
    let out = env.ok(&["audit", "--lock", lock_path.to_str().unwrap()]);
    assert!(out.contains("all match"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&env.ok(&["lock", p, "--json"])).unwrap();
    let b_output = v["stage"]["b"]["output"].as_str().unwrap().to_string();
    let tampered = lock.replace(&b_output, &"0".repeat(64));
    env.write("bad.lock", &tampered);
    let out = env.run(&["audit", "--lock", env.path("bad.lock").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("b: different output"),
        "{}",
        stdout(&out)
    );

    // Determinism re-run in a temporary store.
    let out = env.ok(&["audit", "--pipeline", p, "--rerun", "b"]);
    assert!(out.contains("rerun b: reproducible"), "{out}");

    // A flipped byte in b's output blob: audit fails, and the next run recomputes b.
    let show: serde_json::Value = serde_json::from_str(&env.ok(&["show", "b", "--json"])).unwrap();
    let blob = show["files"][0]["blob"].as_str().unwrap();
    let path = env
        .store()
        .join("objects")
        .join(&blob[..2])
        .join(&blob[2..]);
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&path, perms).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    env.executed();
    let out = env.run(&["run", p]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unusable, re-running"),
        "{}",
        stderr(&out)
    );
    assert_eq!(env.executed(), ["b"]);
}

#[test]
fn lineage_lists_every_ancestor_once() {
    // a diamond: d reads b and c, which both read a.
    let env = Env::new();
    let mut text = header("lineage");
    text += &stage("a", &[], "n = 1");
    text += &stage("b", &[("x", "a")], "n = 2");
    text += &stage("c", &[("x", "a")], "n = 3");
    text += &stage("d", &[("left", "b"), ("right", "c")], "n = 4");
    let p = env.write("p.toml", &text);
    env.ok(&["run", p.to_str().unwrap(), "--quiet"]);

    let v: serde_json::Value = serde_json::from_str(&env.ok(&["lineage", "d", "--json"])).unwrap();
    let stages: Vec<(u64, &str, &str)> = v["lineage"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            Some((
                n["depth"].as_u64()?,
                n["via"].as_str()?,
                n["stage"].as_str()?,
            ))
        })
        .collect();
    assert_eq!(
        stages,
        vec![
            (0, "", "d"),
            (1, "left", "b"),
            (2, "x", "a"),
            (1, "right", "c"),
            (2, "x", "a"),
        ],
        "{v}"
    );
    let text = env.ok(&["lineage", "d"]);
    // The shared ancestor is expanded once and referred back to the second time.
    assert_eq!(text.matches("(see above)").count(), 1, "{text}");
    assert!(
        text.lines().next().unwrap().starts_with("d [shell]"),
        "{text}"
    );
}

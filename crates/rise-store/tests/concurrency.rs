//! Concurrency: two processes committing the same and different artifacts at once (no
//! corruption, no lost result, no deadlock), and a waiter told who holds a key lock.
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rise_store::{ResultId, StageKey, Store};

const BIN: &str = env!("CARGO_BIN_EXE_rise-store-torture");

fn spawn_commit(root: &Path, work: &Path, seed: u64, iterations: u64) -> Child {
    Command::new(BIN)
        .args([
            "commit",
            root.to_str().unwrap(),
            work.to_str().unwrap(),
            &seed.to_string(),
            &iterations.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rise-store-torture")
}

/// Waits for `child`; a watchdog, not a timing assertion: only a deadlock takes this long.
fn finish(mut child: Child, what: &str) -> Vec<ResultId> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            assert!(
                status.success(),
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            return String::from_utf8(out.stdout)
                .unwrap()
                .lines()
                .filter_map(|l| l.strip_prefix("committed "))
                .map(|l| l.split(' ').next().unwrap().parse().unwrap())
                .collect();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish in 10 minutes: deadlock suspected");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(root: &Path, expected: &BTreeSet<ResultId>) {
    let store = Store::open(root).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report:#?}");
    let ids: BTreeSet<ResultId> = store
        .results()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(&ids, expected, "results lost or invented");
}

#[test]
fn two_writers_same_and_different_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    Store::open(&root).unwrap();

    // Same seed: both put identical trees and commit identical manifests, racing on every blob
    // rename, marker and index entry.
    let a = spawn_commit(&root, &work, 7, 25);
    let b = spawn_commit(&root, &work, 7, 25);
    let ra = finish(a, "writer A (same)");
    let rb = finish(b, "writer B (same)");
    assert_eq!(ra.len(), 25);
    assert_eq!(ra, rb, "identical work must give identical result ids");
    let mut expected: BTreeSet<ResultId> = ra.into_iter().collect();
    check(&root, &expected);

    // Different seeds: disjoint results interleaving on the index.
    let a = spawn_commit(&root, &work, 100, 25);
    let b = spawn_commit(&root, &work, 200, 25);
    expected.extend(finish(a, "writer A (different)"));
    expected.extend(finish(b, "writer B (different)"));
    assert_eq!(expected.len(), 75);
    check(&root, &expected);

    // Every key resolves to its result.
    let store = Store::open(&root).unwrap();
    for (id, m) in store.results().unwrap() {
        assert_eq!(store.lookup(&m.key).unwrap().unwrap().0, id);
    }
}

#[test]
fn a_waiter_is_told_who_holds_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    Store::open(&root).unwrap();
    let key = StageKey([42; 32]).to_string();

    let mut holder = Command::new(BIN)
        .args(["hold-lock", root.to_str().unwrap(), &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");

    let mut waiter = Command::new(BIN)
        .args(["lock", root.to_str().unwrap(), &key])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut told = String::new();
    BufReader::new(waiter.stderr.take().unwrap())
        .read_line(&mut told)
        .unwrap();
    assert!(told.contains(&format!("pid {}", holder.id())), "{told}");
    assert!(
        told.contains("hold-lock") && told.contains("holding for a test"),
        "{told}"
    );

    // The waiter is still blocked; releasing the holder lets it through.
    assert!(waiter.try_wait().unwrap().is_none());
    holder.stdin.take().unwrap().write_all(b"").unwrap(); // dropped: stdin closes
    assert!(holder.wait().unwrap().success());
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "acquired");
}

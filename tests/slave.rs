//! Slave behaviour that needs no broker (in-memory journal): duplicates
//! and gaps in the partition sequence, replica failures held and retried,
//! refusing a non-empty directory, stopping on request.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafkafs::error::ReplicaError;
use kafkafs::journal::memory::MemoryJournal;
use kafkafs::op::{Op, RelPath, Timestamp};
use kafkafs::record::Record;
use kafkafs::slave::{self, SlaveConfig};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

fn create(name: &str) -> Op {
    Op::Create {
        path: p(name),
        mode: 0o644,
        uid: 0,
        gid: 0,
    }
}

fn config(root: &std::path::Path) -> SlaveConfig {
    let mut c = SlaveConfig::new(root, "mem");
    c.exit_when_caught_up = true;
    c
}

fn journal_with(records: &[Record]) -> MemoryJournal {
    let j = MemoryJournal::new(1);
    for r in records {
        j.append_raw(0, r.op.target().as_bytes(), &r.encode());
    }
    j
}

#[test]
fn duplicates_are_skipped_and_gaps_halt() {
    if common::skip(common::Need::Root, "duplicates_are_skipped_and_gaps_halt") {
        return;
    }
    let ops = [create("a"), create("b"), create("c")];
    let recs = common::records(&ops, 1, Timestamp::new(1_700_000_000, 0));
    // a, b, b again (duplicate), c.
    let j = journal_with(&[
        recs[0].clone(),
        recs[1].clone(),
        recs[1].clone(),
        recs[2].clone(),
    ]);
    let dir = common::tempdir();
    let root = common::path_of(&dir, "r");
    let report = slave::run(
        &config(&root),
        Box::new(j.source()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.duplicates, 1);
    assert_eq!(
        report.applied, 4,
        "three applied plus one duplicate skipped"
    );
    assert!(root.join("c").exists());

    // A hole: records 1 and 3 only.
    let j = journal_with(&[recs[0].clone(), recs[2].clone()]);
    let root2 = common::path_of(&dir, "r2");
    let err = slave::run(
        &config(&root2),
        Box::new(j.source()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicaError::Gap {
                last: 1,
                found: 3,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("offset 1"), "{err}");
    assert!(root2.join("a").exists());
    assert!(!root2.join("c").exists(), "never applies past a hole");
}

#[test]
fn refuses_a_non_empty_directory_without_checkpoint() {
    if common::skip(
        common::Need::Root,
        "refuses_a_non_empty_directory_without_checkpoint",
    ) {
        return;
    }
    let dir = common::tempdir();
    let root = common::path_of(&dir, "r");
    std::fs::write(root.join("stray"), b"x").unwrap();
    let j = journal_with(&[]);
    let err = slave::run(
        &config(&root),
        Box::new(j.source()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    let mut c = config(&root);
    c.allow_non_empty = true;
    slave::run(&c, Box::new(j.source()), Arc::new(AtomicBool::new(false))).unwrap();
}

#[test]
fn wrong_topic_is_refused() {
    if common::skip(common::Need::Root, "wrong_topic_is_refused") {
        return;
    }
    let dir = common::tempdir();
    let root = common::path_of(&dir, "r");
    let j = journal_with(&common::records(&[create("a")], 1, Timestamp::new(1, 0)));
    slave::run(
        &config(&root),
        Box::new(j.source()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let mut c = config(&root);
    c.topic = "other".into();
    let err = slave::run(&c, Box::new(j.source()), Arc::new(AtomicBool::new(false))).unwrap_err();
    assert!(err.to_string().contains("follows topic `mem`"), "{err}");
}

/// A replica that runs out of space holds its position and retries; once
/// space is available again it continues, and nothing was skipped.
#[test]
fn replica_failure_holds_position_and_retries() {
    if common::skip(
        common::Need::Root,
        "replica_failure_holds_position_and_retries",
    ) {
        return;
    }
    let dir = common::tempdir();
    let root = common::path_of(&dir, "small");
    let mount = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "kafkafs-test",
            root.to_str().unwrap(),
        ])
        .status()
        .expect("mount");
    assert!(
        mount.success(),
        "mounting a small tmpfs (tests run as root)"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(root.clone());

    let mut ops = vec![create("big")];
    for i in 0..4u64 {
        ops.push(Op::Write {
            path: p("big"),
            offset: i * 512 * 1024,
            data: vec![0xab; 512 * 1024].into(),
        });
    }
    ops.push(create("after"));
    let recs = common::records(&ops, 1, Timestamp::new(1_700_000_000, 0));
    let j = journal_with(&recs);
    let stop = Arc::new(AtomicBool::new(false));
    let root2 = root.clone();
    let handle = std::thread::spawn({
        let stop = stop.clone();
        move || slave::run(&config(&root2), Box::new(j.source()), stop)
    });
    // The slave gets stuck on ENOSPC and keeps retrying.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!handle.is_finished(), "slave must hold, not skip or exit");
    assert!(!root.join("after").exists());
    let grow = std::process::Command::new("mount")
        .args(["-o", "remount,size=8m", root.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(grow.success());
    let report = handle
        .join()
        .unwrap()
        .expect("slave completes once space is back");
    assert_eq!(report.applied, recs.len() as u64);
    assert_eq!(
        std::fs::metadata(root.join("big")).unwrap().len(),
        2 * 1024 * 1024
    );
    assert!(std::fs::read(root.join("big"))
        .unwrap()
        .iter()
        .all(|&b| b == 0xab));
    assert!(root.join("after").exists());
}

/// A stop request ends the run promptly with a checkpoint; the next run
/// continues where it stopped.
#[test]
fn stop_request_checkpoints_and_resumes() {
    if common::skip(common::Need::Root, "stop_request_checkpoints_and_resumes") {
        return;
    }
    let ops: Vec<Op> = (0..2000).map(|i| create(&format!("f{i}"))).collect();
    let recs = common::records(&ops, 1, Timestamp::new(1_700_000_000, 0));
    let j = journal_with(&recs);
    let dir = common::tempdir();
    let root = common::path_of(&dir, "r");
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = config(&root);
    c.exit_when_caught_up = false; // follow until stopped
    let handle = std::thread::spawn({
        let (stop, source) = (stop.clone(), j.source());
        move || slave::run(&c, Box::new(source), stop)
    });
    let sd = kafkafs::replica::checkpoint::StateDir::open(&root).unwrap();
    loop {
        let (_, slots) = sd.open_ledger(1).unwrap();
        if slots[0].is_some_and(|s| s.position.next_offset >= 500) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    let first = handle.join().unwrap().expect("a stop is a clean exit");
    assert!(first.applied >= 500);
    let cp = sd
        .load_checkpoint()
        .unwrap()
        .expect("checkpoint written on stop");
    assert_eq!(cp.positions, first.positions);
    let second = slave::run(
        &config(&root),
        Box::new(j.source()),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(first.applied + second.applied, 2000);
    assert_eq!(second.positions[0].next_offset, 2000);
    let reference = common::path_of(&dir, "ref");
    common::apply_direct(&reference, &recs);
    common::assert_trees_equal(&reference, &root, "stop and resume");
}

/// A snapshot is restored only into the history it was taken from: the
/// record before its position must be the one it says it applied.
#[test]
fn a_snapshot_of_another_history_is_refused() {
    if common::skip(
        common::Need::Root,
        "a_snapshot_of_another_history_is_refused",
    ) {
        return;
    }
    use kafkafs::replica::checkpoint::Position;
    use kafkafs::snapshot::bootstrap::take_into;
    use kafkafs::snapshot::dir_store::DirStore;
    use kafkafs::snapshot::take::Cut;
    use kafkafs::snapshot::Choice;

    let ops: Vec<Op> = (0..8).map(|i| create(&format!("f{i}"))).collect();
    let recs = common::records(&ops, 1, Timestamp::new(1_700_000_000, 0));
    let dir = common::tempdir();
    // The tree as of the first five records, with its position.
    let source = common::path_of(&dir, "source");
    common::apply_direct(&source, &recs[..5]);
    let mut store = DirStore::new(dir.path().join("snaps"));
    let cut = Cut {
        topic: "mem".into(),
        positions: vec![Position {
            next_offset: 5,
            last_seq: recs[4].seq,
            last_pseq: recs[4].partition_seq,
            fence: None,
        }],
        limits: Vec::new(),
    };
    take_into(&source, &cut, &mut store, &AtomicBool::new(false)).unwrap();
    let run = |j: &MemoryJournal, name: &str| {
        let root = common::path_of(&dir, name);
        let mut c = config(&root);
        c.from_snapshot = Some(Choice::Newest);
        let r = slave::run_with_snapshots(
            &c,
            Box::new(j.source()),
            Some(Box::new(DirStore::new(dir.path().join("snaps")))),
            Arc::new(AtomicBool::new(false)),
        );
        (root, r)
    };
    // Its own history: restored, then the tail applied.
    let (root, r) = run(&journal_with(&recs), "same");
    assert_eq!(r.expect("same history").applied, 3);
    let all = common::path_of(&dir, "all");
    common::apply_direct(&all, &recs);
    common::assert_trees_equal(&all, &root, "snapshot + tail");
    // Another history under the same name (a duplicate shifts offsets).
    let mut other = recs.clone();
    other.insert(2, recs[1].clone());
    let (root, r) = run(&journal_with(&other), "other");
    let e = r.expect_err("another history");
    assert!(e.to_string().contains("not of this topic's history"), "{e}");
    // Nothing was restored.
    assert_eq!(
        std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".kafkafs")
            .count(),
        0
    );
}

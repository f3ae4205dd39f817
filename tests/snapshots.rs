//! Snapshots kept in Kafka: taken by a running slave during a workload on
//! a real FUSE master; once the journal's beginning is deleted, a new
//! replica is built from a snapshot (the newest, or one at another cut)
//! and equals the master after catching up; a replica whose next records
//! were deleted is resynced by emptying it.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafkafs::error::ReplicaError;
use kafkafs::journal::kafka::{KafkaConfig, KafkaSource};
use kafkafs::journal::Source;
use kafkafs::slave::{self, SlaveConfig, SlaveReport, Until};
use kafkafs::snapshot::kafka_store::KafkaStore;
use kafkafs::snapshot::{Choice, SnapshotStore};

/// Files, directories, a hard link, a symlink, renames and removals.
fn workload(mnt: &Path, batch: usize, files: usize) {
    let dir = mnt.join(format!("batch{batch}"));
    fs::create_dir(&dir).unwrap();
    for i in 0..files {
        let f = dir.join(format!("f{i}"));
        fs::write(&f, format!("batch {batch} file {i} ").repeat(i % 50 + 1)).unwrap();
        if i % 7 == 0 {
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        }
        if i % 11 == 0 {
            fs::rename(&f, dir.join(format!("renamed{i}"))).unwrap();
        }
        if i % 13 == 0 && i > 0 {
            fs::remove_file(dir.join(format!("f{}", i - 1))).unwrap();
        }
    }
    fs::hard_link(dir.join("f1"), mnt.join(format!("link{batch}"))).unwrap();
    symlink(format!("batch{batch}/f2"), mnt.join(format!("sym{batch}"))).unwrap();
}

fn ends(cfg: &KafkaConfig, partitions: u32) -> Vec<(i64, i64)> {
    let source = KafkaSource::new(cfg).unwrap();
    (0..partitions)
        .map(|p| source.watermarks(p).unwrap())
        .collect()
}

fn slave(
    replica: &Path,
    cfg: &KafkaConfig,
    tune: impl FnOnce(&mut SlaveConfig),
) -> Result<SlaveReport, ReplicaError> {
    fs::create_dir_all(replica).unwrap();
    let mut c = SlaveConfig::new(replica, &cfg.topic);
    c.threads = 2;
    c.exit_when_caught_up = true;
    tune(&mut c);
    slave::run_with_snapshots(
        &c,
        common::kafka_source(cfg),
        Some(Box::new(KafkaStore::new(cfg))),
        Arc::new(AtomicBool::new(false)),
    )
}

#[test]
fn replicas_are_built_from_snapshots_once_the_journal_beginning_is_deleted() {
    if common::skip(
        common::Need::Kafka,
        "replicas_are_built_from_snapshots_once_the_journal_beginning_is_deleted",
    ) {
        return;
    }
    let partitions = 3;
    let cfg = common::kafka_topic("snapshots", partitions);
    let m = common::Mounted::with_journal(Arc::new(cfg.clone()), partitions, |_| {});
    workload(&m.mnt, 0, 60);
    let phase1: Vec<i64> = ends(&cfg, partitions).iter().map(|e| e.1).collect();

    // A replica that stops early: its next records will be deleted.
    let dir = common::tempdir();
    let stale = common::path_of(&dir, "stale");
    slave(&stale, &cfg, |c| c.until = Some(Until::Record(0, 1))).unwrap();

    // A slave taking snapshots while the workload runs.
    let stop = Arc::new(AtomicBool::new(false));
    let snapper = {
        let replica = common::path_of(&dir, "snapper");
        fs::create_dir_all(&replica).unwrap();
        let mut c = SlaveConfig::new(&replica, &cfg.topic);
        c.threads = 2;
        c.snapshot_every = Some(Duration::from_millis(400));
        c.snapshot_keep = 4;
        let (source, store, stop) = (
            common::kafka_source(&cfg),
            KafkaStore::new(&cfg),
            stop.clone(),
        );
        std::thread::spawn(move || {
            slave::run_with_snapshots(&c, source, Some(Box::new(store)), stop)
        })
    };
    let mut store = KafkaStore::new(&cfg);
    let started = Instant::now();
    let mut batch = 1;
    // Until two snapshots hold all of phase 1 (and then some).
    let covering = loop {
        workload(&m.mnt, batch, 40);
        batch += 1;
        let all = store.list().unwrap();
        let covering: Vec<_> = all
            .into_iter()
            .filter(|s| s.starts().iter().zip(&phase1).all(|(s, p)| s >= p))
            .collect();
        if covering.len() >= 2 && covering[0].starts() != covering[covering.len() - 1].starts() {
            break covering;
        }
        assert!(
            started.elapsed() < common::WAIT,
            "no two snapshots at different cuts"
        );
    };
    workload(&m.mnt, batch, 30);
    stop.store(true, Ordering::SeqCst);
    snapper.join().unwrap().expect("the snapshotting slave");
    let (older, newest) = (&covering[0], &covering[covering.len() - 1]);

    // The journal's beginning goes, up to the older snapshot.
    let cut: Vec<(u32, i64)> = older
        .starts()
        .iter()
        .enumerate()
        .map(|(p, &o)| (p as u32, o))
        .collect();
    cfg.delete_records(&cut).unwrap();
    let lows: Vec<i64> = ends(&cfg, partitions).iter().map(|e| e.0).collect();
    assert_eq!(lows, older.starts());
    assert!(lows.iter().any(|&l| l > 0));

    // A new replica restores the newest snapshot by itself.
    let fresh = common::path_of(&dir, "fresh");
    let report = slave(&fresh, &cfg, |_| {}).expect("a new replica from the newest snapshot");
    common::assert_trees_equal(&m.data, &fresh, "restored from the newest snapshot");
    let total: i64 = ends(&cfg, partitions).iter().map(|e| e.1).sum();
    assert!(
        (report.applied as i64) < total - newest.starts().iter().sum::<i64>() + 1,
        "it replayed only the tail after the snapshot ({} records applied)",
        report.applied
    );

    // Another replica from the snapshot at the older cut.
    let other = common::path_of(&dir, "older");
    slave(&other, &cfg, |c| {
        c.from_snapshot = Some(Choice::Id(older.id_hex()))
    })
    .expect("from the older snapshot");
    common::assert_trees_equal(&m.data, &other, "restored from the older snapshot");

    // The early replica cannot resume: the error says how to resync...
    let e = slave(&stale, &cfg, |_| {}).expect_err("its next records were deleted");
    assert!(matches!(e, ReplicaError::OffsetDeleted { .. }), "{e}");
    assert!(e.to_string().contains("empty the replica directory"), "{e}");
    // ...and the resync it describes works.
    fs::remove_dir_all(&stale).unwrap();
    slave(&stale, &cfg, |_| {}).expect("the resynced replica");
    common::assert_trees_equal(&m.data, &stale, "resynced");

    // A new replica without a store is refused with the reason.
    let none = common::path_of(&dir, "nostore");
    fs::create_dir_all(&none).unwrap();
    let mut c = SlaveConfig::new(&none, &cfg.topic);
    c.exit_when_caught_up = true;
    let e = slave::run(
        &c,
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("no longer starts at offset 0"),
        "{e}"
    );
}

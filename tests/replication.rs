//! Replication through a real Apache Kafka broker: a journal of mixed
//! operations replayed by the slave equals the same operations applied
//! directly; SIGKILL at random instants changes nothing; bad records stop
//! the slave with their position and never touch anything outside the root.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafkafs::error::ReplicaError;
use kafkafs::op::{Op, RelPath, Timestamp};
use kafkafs::record::pb;
use kafkafs::slave::{self, SlaveConfig};
use prost::Message as _;
use rand::{Rng, SeedableRng};

use common::workload::Workload;

const START: Timestamp = Timestamp {
    sec: 1_700_000_000,
    nsec: 0,
};

fn slave_config(root: &std::path::Path, topic: &str) -> SlaveConfig {
    let mut c = SlaveConfig::new(root, topic);
    c.exit_when_caught_up = true;
    c
}

/// Produces `records` to the topic, applies them directly to a reference
/// directory and replays the topic into a replica with the slave, which
/// must apply every record; returns (their directory, reference, replica,
/// the slave's report).
fn produce_and_replay(
    cfg: &kafkafs::journal::kafka::KafkaConfig,
    records: &[kafkafs::record::Record],
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    slave::SlaveReport,
) {
    common::produce(&common::kafka_sink(cfg), records);
    let dir = common::tempdir();
    let reference = common::path_of(&dir, "reference");
    let replica = common::path_of(&dir, "replica");
    common::apply_direct(&reference, records);
    let report = slave::run(
        &slave_config(&replica, &cfg.topic),
        common::kafka_source(cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .expect("slave run");
    assert_eq!(report.applied, records.len() as u64);
    (dir, reference, replica, report)
}

#[test]
fn slave_replays_a_mixed_journal_exactly() {
    if common::skip(common::Need::Kafka, "slave_replays_a_mixed_journal_exactly") {
        return;
    }
    let seed = 20261125;
    let ops = Workload::new(seed).ops(3000);
    let records = common::records(&ops, 1, START);
    let cfg = common::kafka_topic("replay", 1);
    let (_dir, reference, replica, report) = produce_and_replay(&cfg, &records);
    assert!(
        report.errno_outcomes > 0,
        "the workload includes failing ops"
    );
    assert_eq!(report.positions[0].next_offset, records.len() as i64);
    common::assert_trees_equal(&reference, &replica, &format!("seed {seed}"));

    // The tree is not trivial.
    let snap = kafkafs::tree::snapshot(&replica).unwrap();
    let kinds: std::collections::BTreeSet<char> = snap.nodes.values().map(|n| n.kind).collect();
    for k in ['d', 'f', 'l', 'p', 's', 'c', 'b'] {
        assert!(kinds.contains(&k), "seed {seed}: no node of kind {k}");
    }
    assert!(!snap.link_groups.is_empty(), "seed {seed}: no hard links");
    assert!(snap.nodes.values().any(|n| !n.xattrs.is_empty()));

    // A second run resumes from the checkpoint and applies nothing.
    let again = slave::run(
        &slave_config(&replica, &cfg.topic),
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(again.applied, 0);
    common::assert_trees_equal(&reference, &replica, "after an idle restart");
}

/// Records larger than the reader's per-partition fetch slice (4 MiB)
/// come whole and in order, next to small records of other partitions.
#[test]
fn records_larger_than_a_fetch_slice_replay_exactly() {
    if common::skip(
        common::Need::Kafka,
        "records_larger_than_a_fetch_slice_replay_exactly",
    ) {
        return;
    }
    const BIG: usize = 6 << 20;
    let mut cfg = common::kafka_topic_with(
        "big-records",
        4,
        &[("max.message.bytes", &(16 << 20).to_string())],
    );
    cfg.properties
        .push(("message.max.bytes".into(), (16 << 20).to_string()));
    let mut ops = Vec::new();
    for f in 0..3u8 {
        let path = RelPath::new(format!("big-{f}")).unwrap();
        ops.push(Op::Create {
            path: path.clone(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        });
        for chunk in 0..2u64 {
            let data = vec![f.wrapping_mul(31).wrapping_add(chunk as u8 + 1); BIG];
            ops.push(Op::Write {
                path: path.clone(),
                offset: chunk * BIG as u64,
                data: data.into(),
            });
        }
        for small in 0..20 {
            ops.push(Op::Mkdir {
                path: RelPath::new(format!("dir-{f}-{small}")).unwrap(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            });
        }
    }
    let records = common::records(&ops, 4, START);
    let (_dir, reference, replica, _) = produce_and_replay(&cfg, &records);
    assert_eq!(
        std::fs::metadata(replica.join("big-2")).unwrap().len(),
        2 * BIG as u64
    );
    common::assert_trees_equal(&reference, &replica, "records over the fetch slice");
}

/// The slave binary killed with SIGKILL at random instants, restarted each
/// time, ends exactly where an uninterrupted replay does.
#[test]
fn slave_killed_with_sigkill_resumes_exactly() {
    if common::skip(
        common::Need::Kafka,
        "slave_killed_with_sigkill_resumes_exactly",
    ) {
        return;
    }
    let seed = 77;
    let mut w = Workload::new(seed);
    w.max_len = 64 * 1024;
    let ops = w.ops(6000);
    let records = common::records(&ops, 1, START);
    let cfg = common::kafka_topic("sigkill", 1);
    common::produce(&common::kafka_sink(&cfg), &records);

    let dir = common::tempdir();
    let reference = common::path_of(&dir, "reference");
    let replica = common::path_of(&dir, "replica");
    common::apply_direct(&reference, &records);

    // Kill at increasing, random points of the replay, observed through
    // the replica's ledger, so every kill lands mid-replay.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = records.len() as i64;
    let mut targets: Vec<i64> = (0..8).map(|_| rng.random_range(1..n - 1)).collect();
    targets.sort();
    let progress = common::replay_with_sigkills(
        env!("CARGO_BIN_EXE_kafkafs"),
        &cfg,
        &replica,
        1,
        1,
        &targets,
    );
    assert!(
        progress.iter().all(|&p| p < n),
        "every kill landed mid-replay: {progress:?}"
    );
    let kills = progress.len();
    assert_eq!(kills, 8);
    common::assert_trees_equal(
        &reference,
        &replica,
        &format!("seed {seed}, after {kills} SIGKILLs at {progress:?}"),
    );
}

fn raw_record(seq: u64, op: pb::record::Op) -> Vec<u8> {
    pb::Record {
        version: 1,
        writer: Some(pb::Writer {
            id: b"w".to_vec(),
            epoch: 1,
        }),
        seq,
        partition_seq: seq,
        partition: 0,
        deps: vec![],
        barrier: None,
        time: Some(pb::Timestamp {
            sec: 1_700_000_000,
            nsec: 0,
        }),
        caller: None,
        op: Some(op),
    }
    .encode_to_vec()
}

fn good(seq: u64, name: &str) -> Vec<u8> {
    raw_record(
        seq,
        pb::record::Op::Create(pb::Create {
            path: name.as_bytes().to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        }),
    )
}

/// Records naming `../x` or `/etc/x` are refused with their topic,
/// partition and offset; the slave holds its position; nothing outside the
/// root changes; only the explicit flag skips them.
#[test]
fn escaping_records_are_refused_and_position_held() {
    if common::skip(
        common::Need::Kafka,
        "escaping_records_are_refused_and_position_held",
    ) {
        return;
    }
    let cfg = common::kafka_topic("escape", 1);
    let sink = common::kafka_sink(&cfg);
    let dir = common::tempdir();
    let replica = common::path_of(&dir, "replica");
    std::fs::write(dir.path().join("x"), b"outside").unwrap();
    let payloads = vec![
        good(1, "first"),
        raw_record(
            2,
            pb::record::Op::Create(pb::Create {
                path: b"../x".to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }),
        ),
        raw_record(
            3,
            pb::record::Op::Write(pb::Write {
                path: b"/etc/x".to_vec(),
                offset: 0,
                data: b"pwned".to_vec().into(),
            }),
        ),
        good(4, "last"),
    ];
    for p in &payloads {
        kafkafs::journal::send_and_wait(&sink, 0, b"k", p, &[], Duration::from_secs(30)).unwrap();
    }
    let outside_before = kafkafs::tree::snapshot(dir.path()).unwrap();

    for attempt in 0..2 {
        let err = slave::run(
            &slave_config(&replica, &cfg.topic),
            common::kafka_source(&cfg),
            Arc::new(AtomicBool::new(false)),
        )
        .expect_err("bad record must stop the slave");
        let msg = err.to_string();
        match &err {
            ReplicaError::BadRecord { pos, .. } => {
                assert_eq!(
                    (pos.partition, pos.offset),
                    (0, 1),
                    "attempt {attempt}: {msg}"
                );
                assert_eq!(pos.topic, cfg.topic);
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(
            msg.contains(&cfg.topic) && msg.contains("partition 0") && msg.contains("offset 1")
        );
        assert!(msg.contains("'..'"), "{msg}");
        assert!(replica.join("first").exists());
        assert!(
            !replica.join("last").exists(),
            "never applies past a bad record"
        );
        let cp = std::fs::read_to_string(replica.join(".kafkafs/checkpoint")).unwrap();
        assert!(
            cp.contains("partition 0 next_offset 1 "),
            "position held: {cp}"
        );
    }

    let mut c = slave_config(&replica, &cfg.topic);
    c.skip_bad_records = true;
    let report = slave::run(
        &c,
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.skipped_bad, 2);
    assert!(replica.join("last").exists());
    let outside_after = kafkafs::tree::snapshot(dir.path()).unwrap();
    for (k, v) in &outside_before.nodes {
        if k.starts_with(b"replica") {
            continue;
        }
        assert_eq!(
            outside_after.nodes.get(k),
            Some(v),
            "{}",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(std::fs::read(dir.path().join("x")).unwrap(), b"outside");
}

/// Records that are not valid at all (garbage, truncated, unknown version)
/// give a clear error with their position.
#[test]
fn corrupt_and_unknown_version_records_are_reported() {
    if common::skip(
        common::Need::Kafka,
        "corrupt_and_unknown_version_records_are_reported",
    ) {
        return;
    }
    let cfg = common::kafka_topic("corrupt", 1);
    let sink = common::kafka_sink(&cfg);
    let mut unknown = pb::Record::decode(&good(2, "b")[..]).unwrap();
    unknown.version = 9;
    let truncated = good(3, "c");
    let payloads: Vec<(Vec<u8>, &str)> = vec![
        (good(1, "a"), ""),
        (unknown.encode_to_vec(), "unknown record format version 9"),
        (
            truncated[..truncated.len() - 5].to_vec(),
            "corrupt or truncated",
        ),
        (vec![0xff; 64], "corrupt or truncated"),
    ];
    for (p, _) in &payloads {
        kafkafs::journal::send_and_wait(&sink, 0, b"k", p, &[], Duration::from_secs(30)).unwrap();
    }
    let dir = common::tempdir();
    let replica = common::path_of(&dir, "replica");
    for (offset, (_, expect)) in payloads.iter().enumerate().skip(1) {
        let err = slave::run(
            &slave_config(&replica, &cfg.topic),
            common::kafka_source(&cfg),
            Arc::new(AtomicBool::new(false)),
        )
        .expect_err("must stop");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("offset {offset}:")),
            "expected offset {offset}: {msg}"
        );
        assert!(msg.contains(expect), "{msg}");
        // The operator skips exactly this record.
        let mut c = slave_config(&replica, &cfg.topic);
        c.skip_records = (1..=offset as i64).map(|o| (0, o)).collect();
        let r = slave::run(
            &c,
            common::kafka_source(&cfg),
            Arc::new(AtomicBool::new(false)),
        );
        if offset + 1 < payloads.len() {
            assert!(r.is_err(), "the next bad record stops it again");
        } else {
            assert_eq!(r.unwrap().skipped_bad, 1);
        }
    }
    let report = slave::run(
        &slave_config(&replica, &cfg.topic),
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    assert_eq!(report.applied, 0);
    assert!(replica.join("a").exists());
}

/// An existing topic with another partition count is an error, never a remap.
#[test]
fn partition_count_mismatch_is_refused() {
    if common::skip(common::Need::Kafka, "partition_count_mismatch_is_refused") {
        return;
    }
    let cfg = common::kafka_topic("mismatch", 3);
    assert_eq!(cfg.ensure_topic(3, 1).unwrap(), 3, "same count: fine");
    let err = cfg.ensure_topic(4, 1).unwrap_err().to_string();
    assert!(
        err.contains("3 partitions") && err.contains("4 were requested"),
        "{err}"
    );
}

/// SIGTERM and SIGINT stop a following slave cleanly: exit status 0 and a
/// checkpoint of what it applied.
#[test]
fn slave_stops_cleanly_on_sigterm_and_sigint() {
    if common::skip(
        common::Need::Kafka,
        "slave_stops_cleanly_on_sigterm_and_sigint",
    ) {
        return;
    }
    let records = common::records(&Workload::new(5).ops(200), 1, START);
    let cfg = common::kafka_topic("sigterm", 1);
    common::produce(&common::kafka_sink(&cfg), &records);
    let dir = common::tempdir();
    for (i, sig) in [libc::SIGTERM, libc::SIGINT].into_iter().enumerate() {
        let replica = common::path_of(&dir, &format!("replica{i}"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_kafkafs"))
            .args([
                "slave",
                "--broker",
                cfg.broker_list(),
                "--topic",
                &cfg.topic,
            ])
            .arg(&replica)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Following: wait until it applied everything, then signal it.
        let sd = kafkafs::replica::checkpoint::StateDir::open(&replica).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, slots) = sd.open_ledger(1).unwrap();
            if slots[0].is_some_and(|s| s.position.next_offset == records.len() as i64) {
                break;
            }
            assert!(Instant::now() < deadline, "slave made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert!(status.success(), "signal {sig}: exit status {status}");
        let cp = sd.load_checkpoint().unwrap().expect("final checkpoint");
        assert_eq!(cp.positions[0].next_offset, records.len() as i64);
    }
}

/// `kafkafs status` shows where a replica stands against the topic, and a
/// following slave serves its progress as Prometheus metrics.
#[test]
fn status_command_and_metrics_endpoint() {
    if common::skip(common::Need::Kafka, "status_command_and_metrics_endpoint") {
        return;
    }
    let records = common::records(&Workload::new(11).ops(300), 1, START);
    let cfg = common::kafka_topic("status", 1);
    common::produce(&common::kafka_sink(&cfg), &records[..200]);
    let dir = common::tempdir();
    let replica = common::path_of(&dir, "replica");
    let bin = env!("CARGO_BIN_EXE_kafkafs");
    let status = |extra: &[&str]| {
        common::run(
            Command::new(bin)
                .arg("status")
                .args(extra)
                .arg(&replica)
                .env_remove("KAFKAFS_BROKERS"),
        )
    };
    slave::run(
        &slave_config(&replica, &cfg.topic),
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    let s = status(&["--broker", cfg.broker_list()]);
    assert!(s.contains(&cfg.topic) && s.contains("caught up"), "{s}");
    assert!(s.contains(" 200 "), "next offset 200: {s}");
    common::produce(&common::kafka_sink(&cfg), &records[200..]);
    let s = status(&["--broker", cfg.broker_list()]);
    assert!(s.contains("100 records behind"), "{s}");
    let s = status(&[]);
    assert!(s.contains("pass --broker"), "{s}");

    // A following slave with a metrics endpoint.
    let addr = "127.0.0.1:19464";
    let mut child = Command::new(bin)
        .args([
            "slave",
            "--broker",
            cfg.broker_list(),
            "--topic",
            &cfg.topic,
        ])
        .args(["--metrics", addr])
        .arg(&replica)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        assert!(
            Instant::now() < deadline,
            "metrics never showed the catch-up"
        );
        std::thread::sleep(Duration::from_millis(100));
        let Some(body) = common::get_metrics(addr) else {
            continue;
        };
        if body.contains("kafkafs_applied_records_total 100\n")
            && body.contains("kafkafs_partition_records_behind{")
        {
            break body;
        }
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(
        body.contains("kafkafs_partition_next_offset{topic=\""),
        "{body}"
    );
    // Lag is a Prometheus histogram: cumulative buckets, a sum, a count.
    let lag_count = common::metric(
        &body,
        &format!("kafkafs_lag_seconds_count{{topic=\"{}\"}}", cfg.topic),
    );
    assert_eq!(lag_count, Some(100.0), "{body}");
    assert_eq!(
        common::metric(
            &body,
            &format!(
                "kafkafs_lag_seconds_bucket{{topic=\"{}\",le=\"+Inf\"}}",
                cfg.topic
            )
        ),
        Some(100.0),
        "{body}"
    );
    assert!(
        common::metric(
            &body,
            &format!("kafkafs_lag_seconds_sum{{topic=\"{}\"}}", cfg.topic)
        )
        .is_some_and(|s| s > 0.0),
        "{body}"
    );
    // Caught up: nothing behind in any partition.
    assert!(
        body.lines()
            .filter(|l| l.starts_with("kafkafs_partition_records_behind{"))
            .all(|l| l.ends_with(" 0")),
        "{body}"
    );
    let s = status(&["--broker", cfg.broker_list()]);
    assert!(s.contains("caught up"), "{s}");
}

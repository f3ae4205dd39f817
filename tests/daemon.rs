//! A slave is a daemon: it holds only what a bad record blocks, survives a
//! full disk and broker outages, waits for a broker and a topic that do
//! not exist yet, and runs without root. A master starts on a topic whose
//! tail holds bad records when the operator says which to skip.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Mounted, PrivateBroker, Tmpfs};
use kafkafs::op::{Op, RelPath, Timestamp};
use kafkafs::slave::{self, SlaveConfig};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

use common::file_ops as file;

fn caught_up(root: &Path, topic: &str) -> SlaveConfig {
    let mut c = SlaveConfig::new(root, topic);
    c.exit_when_caught_up = true;
    c.threads = 2;
    c
}

fn no_stop() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Garbage and a truncated record in two partitions: everything that does
/// not depend on them is applied, the slave names the first with the exact
/// flag to pass, and skipping both converges with the reference.
#[test]
fn bad_records_hold_only_what_depends_on_them() {
    if common::skip(
        common::Need::Kafka,
        "bad_records_hold_only_what_depends_on_them",
    ) {
        return;
    }
    let cfg = common::kafka_topic("bad-held", 2);
    let sink = common::kafka_sink(&cfg);
    let ops: Vec<Op> = (0..24)
        .flat_map(|i| file(&format!("f{i}"), format!("body {i}").as_bytes()))
        .collect();
    let records = common::records(&ops, 2, Timestamp::new(1_700_000_000, 0));
    // After the 6th record of each partition, an undecodable message.
    let mut count = [0usize; 2];
    let mut bad_offsets = [None; 2];
    let mut offsets = [0i64; 2];
    let mut before_bad = Vec::new();
    for r in &records {
        let p = r.partition as usize;
        if count[p] == 6 && bad_offsets[p].is_none() {
            let payload = if p == 0 {
                vec![0xffu8; 40]
            } else {
                let good = r.encode();
                good[..good.len() - 3].to_vec()
            };
            kafkafs::journal::send_and_wait(&sink, p as u32, b"k", &payload, &[], common::WAIT)
                .unwrap();
            bad_offsets[p] = Some(offsets[p]);
            offsets[p] += 1;
        }
        common::produce(&sink, std::slice::from_ref(r));
        if bad_offsets[p].is_none() {
            before_bad.push(r.op.target().display());
        }
        count[p] += 1;
        offsets[p] += 1;
    }
    let (b0, b1) = (bad_offsets[0].unwrap(), bad_offsets[1].unwrap());

    let dir = common::tempdir();
    let replica = common::path_of(&dir, "replica");
    let err = slave::run(
        &caught_up(&replica, &cfg.topic),
        common::kafka_source(&cfg),
        no_stop(),
    )
    .expect_err("a bad record stops the slave");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("partition 0 offset {b0}")) && msg.contains("--skip-record 0:"),
        "{msg}"
    );
    assert!(msg.contains(&format!("--skip-record 0:{b0}")), "{msg}");
    assert!(!msg.contains("--skip-bad-records"), "{msg}");
    // Everything before the bad records, in both partitions, is applied.
    for name in &before_bad {
        assert!(replica.join(name).exists(), "{name} was not applied");
    }

    let mut c = caught_up(&replica, &cfg.topic);
    c.skip_records = vec![(0, b0)];
    let err = slave::run(&c, common::kafka_source(&cfg), no_stop()).expect_err("partition 1");
    assert!(
        err.to_string().contains(&format!("--skip-record 1:{b1}")),
        "{err}"
    );
    c.skip_records = vec![(0, b0), (1, b1)];
    let report = slave::run(&c, common::kafka_source(&cfg), no_stop()).unwrap();
    assert_eq!(
        report.skipped_bad, 1,
        "0:{b0} was skipped by the run before"
    );
    let reference = common::path_of(&dir, "reference");
    common::apply_direct(&reference, &records);
    common::assert_trees_equal(&reference, &replica, "after skipping two bad records");
}

/// A master restarted on a topic whose tail holds garbage in one partition
/// and a truncated record in another refuses with the exact flags; with
/// them it starts, continues the sequence, and slaves converge.
#[test]
fn a_master_starts_past_bad_records_when_told() {
    if common::skip(
        common::Need::Kafka,
        "a_master_starts_past_bad_records_when_told",
    ) {
        return;
    }
    let cfg = common::kafka_topic("bad-master", 2);
    let mut m = Mounted::with_journal(Arc::new(cfg.clone()), 2, |_| {});
    for i in 0..10 {
        fs::write(m.path(&format!("before{i}")), b"x").unwrap();
    }
    m.stop();
    let sink = common::kafka_sink(&cfg);
    let mut skip = Vec::new();
    for (p, payload) in [(0u32, vec![0x08u8, 0x96]), (1, b"not a record".to_vec())] {
        let off =
            kafkafs::journal::send_and_wait(&sink, p, b"k", &payload, &[], common::WAIT).unwrap();
        skip.push((p, off));
    }
    let stop = no_stop();
    let err = match kafkafs::master::Master::start(&m.config, m.journal.clone(), stop) {
        Err(e) => e,
        Ok(_) => panic!("the master must refuse an unreadable record"),
    };
    let msg = format!("{err:#}");
    let full = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    assert!(full.contains("--skip-record 0:"), "{full}");
    assert!(!full.contains("injected"), "{msg}");

    m.config.skip_records = skip.clone();
    m.start();
    for i in 0..10 {
        fs::write(m.path(&format!("after{i}")), b"y").unwrap();
    }
    // Restart once more: the unreadable records are behind the checkpoint.
    m.stop();
    m.config.skip_records.clear();
    m.start();
    fs::write(m.path("last"), b"z").unwrap();

    let replica = m.dir.path().join("replica");
    let mut c = caught_up(&replica, &m.journal.topic());
    c.skip_records = skip;
    fs::create_dir_all(&replica).unwrap();
    slave::run(&c, m.journal.source().unwrap(), no_stop()).unwrap();
    common::assert_trees_equal(&m.data, &replica, "slave past the skipped records");
}

/// A replica on a small tmpfs fills up: the slave holds (it does not exit,
/// leaves no temporary file) and finishes by itself once space returns.
#[test]
fn a_full_replica_disk_holds_and_resumes() {
    if common::skip(common::Need::Kafka, "a_full_replica_disk_holds_and_resumes") {
        return;
    }
    let cfg = common::kafka_topic("full-disk", 2);
    let chunk = vec![0x5au8; 256 * 1024];
    let ops: Vec<Op> = (0..12)
        .flat_map(|i| {
            let mut v = file(&format!("big{i}"), &chunk);
            for k in 1..4u64 {
                v.push(Op::Write {
                    path: RelPath::new(format!("big{i}")).unwrap(),
                    offset: k * chunk.len() as u64,
                    data: chunk.clone().into(),
                });
            }
            v
        })
        .collect();
    let records = common::records(&ops, 2, Timestamp::new(1_700_000_000, 0));
    common::produce(&common::kafka_sink(&cfg), &records);

    let dir = common::tempdir();
    let tmpfs = Tmpfs::mount(&dir.path().join("replica"), "6m");
    let replica = tmpfs.path.clone();
    let mut slave = Command::new(BIN)
        .args([
            "slave",
            "--broker",
            cfg.broker_list(),
            "--topic",
            &cfg.topic,
        ])
        .args(["--threads", "2", "--checkpoint-interval", "0.2"])
        .arg("--exit-when-caught-up")
        .arg(&replica)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        slave.try_wait().unwrap().is_none(),
        "the slave must not exit on a full disk"
    );
    assert!(
        !replica.join(".kafkafs/checkpoint.tmp").exists(),
        "no stray temporary checkpoint"
    );
    tmpfs.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = slave.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the slave did not resume");
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = slave.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{log}");
    assert!(
        log.contains("No space left"),
        "the full disk was reported: {log}"
    );
    let reference = common::path_of(&dir, "reference");
    common::apply_direct(&reference, &records);
    common::assert_trees_equal(&reference, &replica, "after the disk filled and grew");
}

/// Started before its broker and before its topic exist, then the broker
/// stopped for 60 s under it: the slave follows on and never exits.
#[test]
fn a_slave_waits_for_broker_and_topic_and_outlives_an_outage() {
    if common::skip(
        common::Need::Kafka,
        "a_slave_waits_for_broker_and_topic_and_outlives_an_outage",
    ) {
        return;
    }
    let dir = common::tempdir();
    let broker = PrivateBroker {
        run: dir.path().join("kafka"),
        port: 19492,
    };
    let topic = common::unique_topic("daemon");
    let replica = dir.path().join("replica");
    let mut slave = Command::new(BIN)
        .args(["slave", "--broker", &broker.addr(), "--topic", &topic])
        .args(["--checkpoint-interval", "0.5"])
        .arg(&replica)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let alive = |slave: &mut std::process::Child, when: &str| {
        assert!(slave.try_wait().unwrap().is_none(), "slave exited {when}");
    };
    std::thread::sleep(Duration::from_secs(4));
    alive(&mut slave, "without a broker");
    let out = broker.script("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(3));
    alive(&mut slave, "before the topic existed");

    let mut cfg = kafkafs::journal::kafka::KafkaConfig::new(broker.addr(), &topic);
    cfg.ensure_topic(2, 1).unwrap();
    let ops: Vec<Op> = (0..20)
        .flat_map(|i| file(&format!("f{i}"), b"first"))
        .collect();
    let records = common::records(&ops, 2, Timestamp::new(1_700_000_000, 0));
    common::produce(&common::kafka_sink(&cfg), &records[..20]);
    wait_for(&replica.join("f9"), &mut slave);

    let out = broker.script("stop");
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(60));
    alive(&mut slave, "during a 60 s broker outage");
    let out = broker.script("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cfg.send_timeout = Duration::from_secs(60);
    common::produce(&common::kafka_sink(&cfg), &records[20..]);
    wait_for(&replica.join("f19"), &mut slave);
    std::thread::sleep(Duration::from_secs(1));
    unsafe { libc::kill(slave.id() as i32, libc::SIGTERM) };
    let out = slave.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warnings < 40,
        "waiting must not flood the log ({warnings} lines):\n{log}"
    );
    let reference = dir.path().join("reference");
    fs::create_dir_all(&reference).unwrap();
    common::apply_direct(&reference, &records);
    common::assert_trees_equal(&reference, &replica, "after waiting and an outage");
}

fn wait_for(path: &Path, slave: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !path.exists() {
        assert!(slave.try_wait().unwrap().is_none(), "slave exited");
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `slave --unprivileged` as an ordinary user replays chowns, devices,
/// set-id bits and trusted xattrs: it finishes, and differs from a root
/// replica only in ownership, device nodes and set-id bits.
#[test]
fn an_unprivileged_slave_differs_only_in_what_it_documents() {
    if common::skip(
        common::Need::Kafka,
        "an_unprivileged_slave_differs_only_in_what_it_documents",
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    // One partition: these records carry no dependencies.
    let cfg = common::kafka_topic("unprivileged", 1);
    let p = |s: &str| RelPath::new(s).unwrap();
    let mut ops = file("plain", b"content");
    ops.extend([
        Op::Mkdir {
            path: p("dir"),
            mode: 0o2775,
            uid: 1234,
            gid: 5678,
        },
        Op::Mknod {
            path: p("dir/null"),
            mode: 0o020666,
            rdev: 0x103,
            uid: 0,
            gid: 0,
        },
        Op::Mknod {
            path: p("fifo"),
            mode: 0o010640,
            rdev: 0,
            uid: 42,
            gid: 42,
        },
        Op::Chown {
            path: p("plain"),
            uid: Some(1000),
            gid: Some(1000),
        },
        Op::Chmod {
            path: p("plain"),
            mode: 0o4755,
        },
        Op::SetXattr {
            path: p("plain"),
            name: b"user.note".to_vec(),
            value: b"kept".to_vec(),
            flags: kafkafs::op::XattrFlags::Any,
        },
        Op::SetXattr {
            path: p("plain"),
            name: b"trusted.secret".to_vec(),
            value: b"root only".to_vec(),
            flags: kafkafs::op::XattrFlags::Any,
        },
        Op::Symlink {
            path: p("link"),
            target: b"plain".to_vec(),
            uid: 7,
            gid: 7,
        },
    ]);
    let records = common::records(&ops, 1, Timestamp::new(1_700_000_000, 0));
    common::produce(&common::kafka_sink(&cfg), &records);

    let dir = common::tempdir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let reference = common::path_of(&dir, "reference");
    common::apply_direct(&reference, &records);
    let replica = common::path_of(&dir, "replica");
    common::run(Command::new("chown").arg("65534:65534").arg(&replica));
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(BIN)
        .args(["slave", "--unprivileged", "--exit-when-caught-up"])
        .args(["--broker", cfg.broker_list(), "--topic", &cfg.topic])
        .arg(&replica)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let diffs = kafkafs::tree::compare(&reference, &replica)
        .unwrap()
        .expect_err("ownership differs");
    for d in &diffs {
        let d = &only_trusted_xattrs_differ(d);
        let parts: Vec<&str> = d.split(": ").nth(1).unwrap_or("").split(", ").collect();
        for part in parts {
            let documented = part.starts_with("owner ")
                || part.starts_with("rdev ")
                || (d.starts_with("dir/null")
                    && (part.starts_with("type ") || part == "content differs"))
                || (part.starts_with("mode ") && setid_only(part))
                || part == "trusted xattrs";
            assert!(documented, "undocumented difference: {d}\nall: {diffs:#?}");
        }
    }
    assert_eq!(fs::read(replica.join("plain")).unwrap(), b"content");
}

/// Replaces an `xattrs [..] vs [..]` clause that differs only in trusted.*
/// names by "trusted xattrs".
fn only_trusted_xattrs_differ(d: &str) -> String {
    let Some(start) = d.find("xattrs [") else {
        return d.to_string();
    };
    let rest = &d[start + "xattrs ".len()..];
    let Some(mid) = rest.find("] vs [") else {
        return d.to_string();
    };
    let Some(end) = rest[mid + 6..].find(']') else {
        return d.to_string();
    };
    let list = |s: &str| -> Vec<String> {
        s.split(", ")
            .map(|n| {
                n.trim_matches(|c| c == '"' || c == '[' || c == ']')
                    .to_string()
            })
            .filter(|n| !n.is_empty() && !n.starts_with("trusted."))
            .collect()
    };
    let (a, b) = (&rest[..mid + 1], &rest[mid + 5..mid + 6 + end + 1]);
    if list(a) != list(b) {
        return d.to_string();
    }
    let clause_end = start + "xattrs ".len() + mid + 6 + end + 1;
    format!("{}trusted xattrs{}", &d[..start], &d[clause_end..])
}

/// "mode A vs B" differing only in set-id bits.
fn setid_only(part: &str) -> bool {
    let modes: Vec<u32> = part
        .trim_start_matches("mode ")
        .split(" vs ")
        .filter_map(|m| u32::from_str_radix(m.trim(), 8).ok())
        .collect();
    modes.len() == 2 && (modes[0] ^ modes[1]) & !0o6000 == 0
}

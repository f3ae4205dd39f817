//! The journal going away under a mounted master: calls fail with EIO
//! within the journal timeout, nothing unacknowledged is reported as done,
//! the mount works again once the journal is back, and every acknowledged
//! operation reaches the slaves.

mod common;

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{errno_of, Mounted, PrivateBroker};
use kafkafs::journal::memory::MemoryJournal;

/// In-memory journal: acknowledgements withheld, then a journal that
/// refuses everything.
#[test]
fn withheld_acknowledgements_fail_with_eio_then_recover() {
    if common::skip(
        common::Need::Kafka,
        "withheld_acknowledgements_fail_with_eio_then_recover",
    ) {
        return;
    }
    let j = MemoryJournal::new(2);
    let timeout = Duration::from_secs(2);
    let metrics = "127.0.0.1:19465";
    let m = Mounted::with_journal(Arc::new(j.clone()), 2, |c| {
        c.journal_timeout = timeout;
        c.metrics = Some(metrics.parse().unwrap());
    });
    fs::write(m.path("ok"), b"1").unwrap();
    fs::write(m.path("held"), b"").unwrap();
    let mut held = fs::OpenOptions::new()
        .write(true)
        .open(m.path("held"))
        .unwrap();

    j.hold_acks(true);
    let t = Instant::now();
    let e = std::io::Write::write_all(&mut held, b"late").unwrap_err();
    let took = t.elapsed();
    assert_eq!(errno_of(&e), libc::EIO, "{e}");
    assert!(
        took >= timeout && took < timeout * 4,
        "failed after {took:?}"
    );
    // While recovering, other calls fail with EIO within the timeout too.
    let t = Instant::now();
    let e = fs::create_dir(m.path("during")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO);
    assert!(t.elapsed() < timeout * 4);

    // The journal answers again. The write did reach the journal (only its
    // acknowledgement was lost): the data-root must hold it, as slaves do.
    j.hold_acks(false);
    common::wait_recovered(&m, Duration::from_secs(30));
    drop(held);
    assert_eq!(fs::read(m.path("held")).unwrap(), b"late");
    fs::write(m.path("after"), b"2").unwrap();
    m.assert_converged("after withheld acknowledgements");

    // A journal that refuses records outright.
    j.set_down(true);
    let e = fs::write(m.path("refused"), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO);
    j.set_down(false);
    common::wait_recovered(&m, Duration::from_secs(30));
    assert!(
        !m.path("refused").exists(),
        "never acknowledged, never applied"
    );
    // A send the producer takes but whose delivery report is a failure.
    j.fail_next_sends(1);
    let e = fs::write(m.path("undelivered"), b"x").unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO, "{e}");
    common::wait_recovered(&m, Duration::from_secs(30));
    assert!(
        !m.path("undelivered").exists(),
        "never delivered, never applied"
    );
    fs::write(m.path("final"), b"3").unwrap();
    m.assert_converged("after a refused record and a failed delivery");

    // The metrics count what happened: four calls answered EIO, the
    // acknowledged records with their latency, nothing in flight now.
    let body = common::get_metrics(metrics).expect("the metrics endpoint answers");
    let value =
        |name: &str| common::metric(&body, name).unwrap_or_else(|| panic!("no {name} in\n{body}"));
    assert!(value("kafkafs_journal_failed_calls_total") >= 4.0, "{body}");
    let acked = value("kafkafs_journal_acknowledged_records_total");
    assert!(acked >= 6.0, "{body}");
    assert_eq!(value("kafkafs_journal_ack_seconds_count"), acked, "{body}");
    assert_eq!(
        value("kafkafs_journal_ack_seconds_bucket{le=\"+Inf\"}"),
        acked,
        "{body}"
    );
    assert!(value("kafkafs_call_seconds_count") >= acked, "{body}");
    assert!(value("kafkafs_call_seconds_sum") > 0.0, "{body}");
    // The stages of a call: every record applied from its acknowledgement
    // was counted (recovery applies the withheld one), each answered call
    // was queued first, and the stages fit in the calls' total time.
    let applying = value("kafkafs_call_applying_seconds_count");
    assert!(applying >= acked - 1.0 && applying <= acked, "{body}");
    assert!(
        value("kafkafs_call_queued_seconds_count") >= applying,
        "{body}"
    );
    assert!(
        value("kafkafs_call_replying_seconds_count") >= 1.0,
        "{body}"
    );
    let stages = value("kafkafs_call_queued_seconds_sum")
        + value("kafkafs_call_applying_seconds_sum")
        + value("kafkafs_call_replying_seconds_sum");
    assert!(stages <= value("kafkafs_call_seconds_sum") * 1.01, "{body}");
    assert_eq!(value("kafkafs_journal_in_flight"), 0.0, "{body}");
    assert_eq!(value("kafkafs_journal_recovering"), 0.0, "{body}");
}

/// A real Apache Kafka broker frozen (unreachable) and then stopped and
/// restarted in the middle of a workload.
#[test]
fn real_broker_outage_mid_workload() {
    if common::skip(common::Need::Kafka, "real_broker_outage_mid_workload") {
        return;
    }
    let dir = common::tempdir();
    let broker = PrivateBroker::start(dir.path().join("kafka"), 19392);
    let addr = format!("127.0.0.1:{}", broker.port);
    let mut cfg = kafkafs::journal::kafka::KafkaConfig::new(&addr, common::unique_topic("outage"));
    let timeout = Duration::from_secs(3);
    cfg.send_timeout = timeout;
    cfg.request_timeout = Duration::from_secs(5);
    cfg.ensure_topic(2, 1).unwrap();
    let m = Mounted::with_journal(Arc::new(cfg), 2, |c| c.journal_timeout = timeout);

    // A writer that records which writes were acknowledged and how long
    // failed calls took.
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let failures: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mnt, acked, failures, done) =
            (m.mnt.clone(), acked.clone(), failures.clone(), done.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !done.load(Ordering::SeqCst) {
                let name = format!("f{}", i % 50);
                let body = format!("version {i}");
                let t = Instant::now();
                match fs::write(mnt.join(&name), &body) {
                    Ok(()) => acked.lock().unwrap().push((name, body)),
                    Err(e) => {
                        assert_eq!(errno_of(&e), libc::EIO, "{e}");
                        failures.lock().unwrap().push(t.elapsed());
                    }
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    // Unreachable: the broker process is frozen.
    broker.signal(libc::SIGSTOP);
    std::thread::sleep(timeout * 3);
    broker.signal(libc::SIGCONT);
    common::wait_recovered(&m, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    // Stopped and restarted (same data).
    let out = broker.script("stop");
    assert!(out.status.success());
    std::thread::sleep(timeout * 2);
    let out = broker.script("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_recovered(&m, Duration::from_secs(90));
    std::thread::sleep(Duration::from_secs(2));
    done.store(true, Ordering::SeqCst);
    writer.join().unwrap();

    let failures = failures.lock().unwrap().clone();
    assert!(
        !failures.is_empty(),
        "the outage must have failed some calls"
    );
    for f in &failures {
        assert!(
            *f < timeout * 3,
            "a call took {f:?} to fail (timeout {timeout:?})"
        );
    }
    // Every acknowledged write is on the slave: the last acknowledged
    // version of each file, or a later one that reached the journal.
    let replica = m.replay(2);
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    for (name, body) in acked.lock().unwrap().iter() {
        last.insert(name.clone(), body.clone());
    }
    for (name, body) in &last {
        let got = fs::read_to_string(replica.join(name)).unwrap();
        let v = |s: &str| s.trim_start_matches("version ").parse::<u64>().unwrap();
        assert!(
            v(&got) >= v(body),
            "{name}: slave has `{got}`, acknowledged `{body}`"
        );
    }
    common::assert_trees_equal(&m.data, &replica, "after a frozen and a restarted broker");
    eprintln!(
        "outage: {} writes acknowledged, {} failed with EIO (max {:?})",
        acked.lock().unwrap().len(),
        failures.len(),
        failures.iter().max()
    );
}

/// The kernel caches entries and attributes for a long TTL; an unlink
/// answered EIO (its acknowledgement came late) that then took effect is
/// forgotten by the kernel once the journal recovers: the name is gone on
/// the mount at once, not after the TTL.
#[test]
fn a_late_effect_is_not_hidden_by_the_kernel_cache() {
    if common::skip(
        common::Need::Kafka,
        "a_late_effect_is_not_hidden_by_the_kernel_cache",
    ) {
        return;
    }
    let j = MemoryJournal::new(1);
    let timeout = Duration::from_secs(1);
    let m = Mounted::with_journal(Arc::new(j.clone()), 1, |c| c.journal_timeout = timeout);
    fs::write(m.path("f"), b"cached").unwrap();
    assert!(fs::metadata(m.path("f")).is_ok(), "the kernel caches f");

    j.hold_acks(true);
    let e = fs::remove_file(m.path("f")).unwrap_err();
    assert_eq!(errno_of(&e), libc::EIO, "{e}");
    // The acknowledgement comes after all: the unlink took effect.
    j.hold_acks(false);
    common::wait_recovered(&m, Duration::from_secs(30));
    assert!(!m.data.join("f").exists(), "the unlink was applied");
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::symlink_metadata(m.path("f")).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the kernel still shows f, removed behind its back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The mount works on.
    fs::write(m.path("f"), b"again").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"again");
}

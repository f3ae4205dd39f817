//! Point-in-time replicas: `--until` stops at the journal's state as of a
//! moment (or a record), `--delay` keeps a replica behind the master.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafkafs::op::{Op, Timestamp};
use kafkafs::slave::{self, SlaveConfig, Until};

fn files(n: usize) -> Vec<Op> {
    (0..n)
        .flat_map(|i| common::file_ops(&format!("f{i}"), format!("body {i}").as_bytes()))
        .collect()
}

/// A slave with `--until` a record's time holds exactly the records up to
/// it, in every partition; `--until P:OFFSET` of that record too.
#[test]
fn until_stops_at_the_state_as_of_a_moment() {
    if common::skip(
        common::Need::Kafka,
        "until_stops_at_the_state_as_of_a_moment",
    ) {
        return;
    }
    let cfg = common::kafka_topic("until", 2);
    let records = common::records(&files(40), 2, Timestamp::new(1_700_000_000, 0));
    common::produce(&common::kafka_sink(&cfg), &records);
    let k = 51;
    let cut = &records[k - 1];
    let offset = records[..k - 1]
        .iter()
        .filter(|r| r.partition == cut.partition)
        .count() as i64;

    let dir = common::tempdir();
    let reference = common::path_of(&dir, "reference");
    common::apply_direct(&reference, &records[..k]);
    for (name, until) in [
        ("time", Until::Time(cut.time)),
        ("record", Until::Record(cut.partition, offset)),
    ] {
        let replica = common::path_of(&dir, name);
        let mut c = SlaveConfig::new(&replica, &cfg.topic);
        c.threads = 2;
        c.until = Some(until);
        let report = slave::run(
            &c,
            common::kafka_source(&cfg),
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap_or_else(|e| panic!("--until {name}: {e}"));
        assert_eq!(report.applied, k as u64, "--until {name}");
        common::assert_trees_equal(&reference, &replica, &format!("--until {name}"));
    }
}

/// A slave with `--delay` never applies a record younger than the delay.
#[test]
fn delay_keeps_a_replica_behind() {
    if common::skip(common::Need::Kafka, "delay_keeps_a_replica_behind") {
        return;
    }
    let cfg = common::kafka_topic("delay", 2);
    let mut records = common::records(&files(20), 2, Timestamp::new(1_700_000_000, 0));
    let now = Timestamp::now();
    let old = Timestamp::new(now.sec - 120, 0);
    for (i, r) in records.iter_mut().enumerate() {
        r.time = if i < 20 { old } else { now };
    }
    common::produce(&common::kafka_sink(&cfg), &records);
    let dir = common::tempdir();
    let replica = common::path_of(&dir, "replica");
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let (cfg, replica, stop) = (cfg.clone(), replica.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = SlaveConfig::new(&replica, &cfg.topic);
            c.threads = 2;
            c.delay = Some(Duration::from_secs(60));
            slave::run(&c, common::kafka_source(&cfg), stop)
        })
    };
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    let report = run.join().unwrap().unwrap();
    assert_eq!(report.applied, 20, "the records older than the delay, only");
    for i in 0..10 {
        assert!(replica.join(format!("f{i}")).exists(), "f{i} is old enough");
    }
    for i in 10..20 {
        assert!(!replica.join(format!("f{i}")).exists(), "f{i} is too young");
    }
    let reference = common::path_of(&dir, "reference");
    common::apply_direct(&reference, &records[..20]);
    common::assert_trees_equal(&reference, &replica, "a delayed replica");
}

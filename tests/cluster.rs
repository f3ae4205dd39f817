//! The distributed engine: a 3-node KRaft cluster on loopback (topic with 3
//! replicas, min.insync.replicas 2). The broker leading most partitions is
//! SIGKILLed under a writer that keeps an fsync'd manifest of what was
//! acknowledged, then the quorum is lost for 40 s: calls fail with EIO
//! within the timeout, the master recovers, no acknowledged operation is
//! lost, and a slave equals the data-root.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{errno_of, Mounted, PrivateBroker};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// Node id leading each partition of `topic`.
fn leaders(brokers: &str, topic: &str) -> Vec<i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.leader())
        .collect()
}

/// Writes files through the mount; after each write + fsync succeeds, its
/// name and content go into an fsync'd manifest outside the mount.
struct Writer {
    done: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<Duration>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(mnt: PathBuf, manifest: PathBuf) -> Writer {
        let done = Arc::new(AtomicBool::new(false));
        let failures: Arc<Mutex<Vec<Duration>>> = Arc::default();
        let handle = {
            let (done, failures) = (done.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut log = fs::File::create(&manifest).unwrap();
                let mut i = 0u64;
                while !done.load(Ordering::SeqCst) {
                    let name = format!("f{}", i % 200);
                    let body = format!("version {i}\n");
                    let t = Instant::now();
                    let written = fs::File::create(mnt.join(&name)).and_then(|mut f| {
                        f.write_all(body.as_bytes())?;
                        f.sync_all()
                    });
                    match written {
                        Ok(()) => {
                            writeln!(log, "{name} {i}").unwrap();
                            log.sync_all().unwrap();
                        }
                        Err(e) => {
                            assert_eq!(errno_of(&e), libc::EIO, "{e}");
                            failures.lock().unwrap().push(t.elapsed());
                            // The truncating open may have gone through
                            // before the write failed: the file may be
                            // empty from now on, and that is correct.
                            writeln!(log, "{name} {i} failed").unwrap();
                            log.sync_all().unwrap();
                        }
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Writer {
            done,
            failures,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Vec<Duration> {
        self.done.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        self.failures.lock().unwrap().clone()
    }
}

/// Every acknowledged (fsync'd) version is on `root`: the last one of each
/// file, or a later one that reached the journal, or nothing when a later
/// attempt failed after its truncating open went through.
fn assert_manifest_on(manifest: &Path, root: &Path) -> usize {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut failed_since: HashMap<String, bool> = HashMap::new();
    for line in fs::read_to_string(manifest).unwrap().lines() {
        let mut words = line.split(' ');
        let (name, v) = (words.next().unwrap(), words.next().unwrap());
        if words.next() == Some("failed") {
            failed_since.insert(name.to_string(), true);
        } else {
            last.insert(name.to_string(), v.parse().unwrap());
            failed_since.insert(name.to_string(), false);
        }
    }
    for (name, v) in &last {
        let got = fs::read_to_string(root.join(name)).unwrap();
        if got.is_empty() && failed_since[name] {
            continue;
        }
        let got: u64 = got
            .trim()
            .trim_start_matches("version ")
            .parse()
            .unwrap_or_else(|e| {
                panic!(
                    "{name}: {} holds {got:?} ({e}), acknowledged {v}",
                    root.display()
                )
            });
        assert!(
            got >= *v,
            "{name}: {} has version {got}, acknowledged {v}",
            root.display()
        );
    }
    last.len()
}

#[test]
fn leader_kill_and_quorum_loss_on_a_three_node_cluster() {
    if common::skip(
        common::Need::Kafka,
        "leader_kill_and_quorum_loss_on_a_three_node_cluster",
    ) {
        return;
    }
    let dir = common::tempdir();
    let cluster = PrivateBroker::start_nodes(dir.path().join("kafka"), 19800, 3);
    let brokers = cluster.addr();
    let mut cfg =
        kafkafs::journal::kafka::KafkaConfig::new(&brokers, common::unique_topic("cluster"));
    let timeout = Duration::from_secs(6);
    cfg.send_timeout = timeout;
    cfg.request_timeout = Duration::from_secs(10);
    cfg.topic_config
        .push(("min.insync.replicas".into(), "2".into()));
    cfg.ensure_topic(4, 3).unwrap();
    let m = Mounted::with_journal(Arc::new(cfg.clone()), 4, |c| c.journal_timeout = timeout);
    let manifest = dir.path().join("manifest");
    let writer = Writer::start(m.mnt.clone(), manifest.clone());
    std::thread::sleep(Duration::from_secs(3));

    // 1. The broker leading most partitions dies (SIGKILL), then returns.
    let lead = leaders(&brokers, &cfg.topic);
    let mut count: HashMap<i32, usize> = HashMap::new();
    for l in &lead {
        *count.entry(*l).or_default() += 1;
    }
    let victim = count.into_iter().max_by_key(|(_, n)| *n).unwrap().0 as u32;
    eprintln!("cluster: leaders {lead:?}; killing node {victim}");
    let out = cluster.script_args(&["kill-node", &victim.to_string()]);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(10));
    let out = cluster.script_args(&["start-node", &victim.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_recovered(&m, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(3));

    // 2. Quorum loss: two of three nodes frozen for 40 s.
    let frozen: Vec<u32> = (1..=3).filter(|n| *n != victim).collect();
    for n in &frozen {
        cluster.signal_node(*n, libc::SIGSTOP);
    }
    std::thread::sleep(Duration::from_secs(40));
    for n in &frozen {
        cluster.signal_node(*n, libc::SIGCONT);
    }
    common::wait_recovered(&m, Duration::from_secs(180));
    std::thread::sleep(Duration::from_secs(5));
    let failures = writer.stop();

    assert!(!failures.is_empty(), "quorum loss must fail some calls");
    for f in &failures {
        assert!(
            *f < timeout * 3,
            "a call took {f:?} to fail (timeout {timeout:?})"
        );
    }
    let files = assert_manifest_on(&manifest, &m.data);
    let replica = m.replay(4);
    assert_manifest_on(&manifest, &replica);
    common::assert_trees_equal(&m.data, &replica, "after a leader kill and quorum loss");
    eprintln!(
        "cluster: {files} files acknowledged, {} calls failed with EIO (max {:?})",
        failures.len(),
        failures.iter().max()
    );
}

//! One process per data-root or replica, and commands that refuse (or only
//! read) change nothing: not the directory, not the topic list.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

/// Everything under `root` (paths, sizes, modes, mtimes), to show it did
/// not change.
fn snapshot(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else {
            out.push(format!("{} (absent)", dir.display()));
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            use std::os::unix::fs::MetadataExt;
            out.push(format!(
                "{} {} {:o} {}.{}",
                e.path().display(),
                m.len(),
                m.mode(),
                m.mtime(),
                m.mtime_nsec()
            ));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

fn topic_exists(topic: &str) -> bool {
    kafkafs::journal::kafka::KafkaConfig::new(common::brokers(), topic)
        .partition_count()
        .unwrap()
        .is_some()
}

fn master_cmd(data: &Path, mnt: &Path, topic: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["master", "--broker", &common::brokers(), "--topic", topic])
        .arg(data)
        .arg(mnt)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn slave_cmd(data: &Path, topic: &str) -> Command {
    let mut c = Command::new(BIN);
    c.args(["slave", "--broker", &common::brokers(), "--topic", topic])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs a command that must refuse; returns its stderr.
#[track_caller]
fn refused(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{cmd:?} must refuse:\n{err}");
    err
}

struct Running {
    child: Child,
    mnt: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if let Some(m) = &self.mnt {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A second master, or a slave, on a data-root in use is refused at once,
/// naming the process that holds it; so is a second slave on a replica.
#[test]
fn a_second_process_on_the_same_data_is_refused() {
    if common::skip(
        common::Need::Kafka,
        "a_second_process_on_the_same_data_is_refused",
    ) {
        return;
    }
    let dir = common::tempdir();
    let (data, mnt, mnt2) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("mnt2"),
    );
    let topic = common::unique_topic("exclusive");
    let master = Running {
        child: master_cmd(&data, &mnt, &topic).spawn().unwrap(),
        mnt: Some(mnt.clone()),
    };
    wait_until("the master mounts", || common::is_mounted(&mnt));
    fs::write(mnt.join("f"), b"x").unwrap();
    let pid = master.child.id().to_string();
    for err in [
        refused(&mut master_cmd(&data, &mnt2, &topic)),
        refused(&mut slave_cmd(&data, &topic)),
    ] {
        assert!(
            err.contains("in use by process") && err.contains(&pid),
            "{err}"
        );
    }
    assert!(!common::is_mounted(&mnt2));

    let replica = dir.path().join("replica");
    let slave = Running {
        child: slave_cmd(&replica, &topic).spawn().unwrap(),
        mnt: None,
    };
    wait_until("the slave applies", || replica.join("f").exists());
    let err = refused(&mut slave_cmd(&replica, &topic));
    assert!(err.contains(&slave.child.id().to_string()), "{err}");
    drop(slave);
    drop(master);
}

/// Every refusal leaves the directories and the topic list as they were.
#[test]
fn refusals_change_nothing() {
    if common::skip(common::Need::Kafka, "refusals_change_nothing") {
        return;
    }
    let dir = common::tempdir();
    let p = |n: &str| dir.path().join(n);

    // A non-empty data-root without a checkpoint.
    fs::create_dir_all(p("full")).unwrap();
    fs::write(p("full/existing"), b"mine").unwrap();
    let before = snapshot(&p("full"));
    let topic = common::unique_topic("refuse-full");
    let err = refused(&mut master_cmd(&p("full"), &p("mnt"), &topic));
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(snapshot(&p("full")), before);
    assert!(!topic_exists(&topic), "a refused master created its topic");
    assert!(!p("mnt").exists());

    // A data-root of another topic.
    let mut served = common::Mounted::kafka("refuse-served", 1);
    fs::write(served.path("a"), b"a").unwrap();
    served.stop();
    let data = served.data.clone();
    let before = snapshot(&data);
    let other = common::unique_topic("refuse-other");
    let err = refused(&mut master_cmd(&data, &p("mnt"), &other));
    assert!(
        err.contains(&served.journal.topic()),
        "names the data-root's topic: {err}"
    );
    assert_eq!(snapshot(&data), before);
    assert!(!topic_exists(&other));

    // A topic last written by another master, without --take-over: nothing
    // is applied to (or created in) the new data-root.
    fs::create_dir_all(p("newdata")).unwrap();
    let err = refused(&mut master_cmd(
        &p("newdata"),
        &p("mnt"),
        &served.journal.topic(),
    ));
    assert!(err.contains("--take-over"), "{err}");
    assert_eq!(fs::read_dir(p("newdata")).unwrap().count(), 0);

    // Mountpoints: a file, a non-empty directory.
    fs::write(p("file"), b"not a dir").unwrap();
    fs::create_dir_all(p("busy")).unwrap();
    fs::write(p("busy/keep"), b"hidden if mounted over").unwrap();
    for (mnt, says) in [("file", "not a directory"), ("busy", "not empty")] {
        let topic = common::unique_topic("refuse-mnt");
        let err = refused(&mut master_cmd(&p("fresh"), &p(mnt), &topic));
        assert!(err.contains(says), "{err}");
        assert!(
            !p("fresh").exists(),
            "a refused master created its data-root"
        );
        assert!(!topic_exists(&topic));
    }
    assert!(!common::is_mounted(&p("busy")));

    // Reading commands write nothing.
    let out = Command::new(BIN)
        .arg("status")
        .arg(p("typo"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!p("typo").exists(), "status created its argument");
    let before = snapshot(&data);
    let out = Command::new(BIN).arg("status").arg(&data).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(snapshot(&data), before);
}

/// The directory of a caught-up replica, moved into a fresh test folder
/// as its `data` (for a master to take over on).
fn promote_dir(replica: &Path) -> tempfile::TempDir {
    let dir = common::tempdir();
    fs::rename(replica, dir.path().join("data")).unwrap();
    dir
}

/// A take-over while the old master still runs: the old master's writes
/// after the fence fail (EIO, then EROFS), the new master's succeed, and a
/// running slave, a fresh slave and the new data-root are all equal.
#[test]
fn a_take_over_fences_the_old_master() {
    if common::skip(common::Need::Kafka, "a_take_over_fences_the_old_master") {
        return;
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cfg = common::kafka_topic("takeover", 2);
    let a = common::Mounted::with_journal(Arc::new(cfg.clone()), 2, |_| {});
    fs::create_dir(a.path("before")).unwrap();
    fs::write(a.path("before/f"), b"1").unwrap();

    // A slave that follows the topic throughout.
    let follower = a.dir.path().join("follower");
    fs::create_dir_all(&follower).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let running = {
        let (cfg, follower, stop) = (cfg.clone(), follower.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut c = kafkafs::slave::SlaveConfig::new(&follower, &cfg.topic);
            c.threads = 2;
            kafkafs::slave::run(&c, common::kafka_source(&cfg), stop)
        })
    };

    // Promote a caught-up replica while A still runs.
    let b_dir = promote_dir(&a.replay(2));
    let b =
        common::Mounted::with_journal_in(b_dir, Arc::new(cfg.clone()), 2, |c| c.take_over = true);
    let e = fs::create_dir(a.path("from_old_master")).unwrap_err();
    assert!(
        [libc::EIO, libc::EROFS].contains(&common::errno_of(&e)),
        "the fenced master's write fails: {e}"
    );
    fs::create_dir(b.path("from_new_master_1")).unwrap();
    fs::create_dir(b.path("from_new_master_2")).unwrap();
    wait_until("the old master learns it is fenced", || {
        a.master().pipeline().fenced().is_some()
    });
    let e = fs::write(a.path("later"), b"x").unwrap_err();
    assert_eq!(common::errno_of(&e), libc::EROFS, "{e}");
    // Reads on the old mount still work.
    assert_eq!(fs::read(a.path("before/f")).unwrap(), b"1");

    b.assert_converged("a fresh slave after a take-over");
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    running
        .join()
        .unwrap()
        .expect("the running slave followed on");
    let mut c = kafkafs::slave::SlaveConfig::new(&follower, &cfg.topic);
    c.exit_when_caught_up = true;
    let report = kafkafs::slave::run(
        &c,
        common::kafka_source(&cfg),
        Arc::new(AtomicBool::new(false)),
    )
    .unwrap();
    common::assert_trees_equal(&b.data, &follower, "the running slave after a take-over");
    assert!(!follower.join("from_old_master").exists());
    assert!(follower.join("from_new_master_1").exists());
    let _ = report;
}

/// A produce request of the producer that recovery retired lands after
/// recovery read the log: it is behind this master's new fence, so every
/// replica ignores it, and the replicas equal the master.
#[test]
fn a_late_produce_after_recovery_is_void_everywhere() {
    if common::skip(
        common::Need::Kafka,
        "a_late_produce_after_recovery_is_void_everywhere",
    ) {
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    use std::sync::Arc;
    let j = kafkafs::journal::memory::MemoryJournal::new(2);
    let timeout = Duration::from_secs(2);
    let m = common::Mounted::with_journal(Arc::new(j.clone()), 2, |c| c.journal_timeout = timeout);
    fs::write(m.path("f"), b"first").unwrap();
    j.park_next_sends(1);
    let e = fs::write(m.path("f"), b"lost on the wire").unwrap_err();
    assert_eq!(common::errno_of(&e), libc::EIO, "{e}");
    wait_until("the master recovers", || {
        !m.master().pipeline().recovering()
    });
    // The same partition sequence numbers are used again by new records.
    fs::write(m.path("f"), b"second").unwrap();
    fs::write(m.path("g"), b"more").unwrap();
    let landed = j.land_parked();
    assert_eq!(landed.len(), 1);
    fs::write(m.path("h"), b"after").unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"second");
    m.assert_converged("after a late produce");
}

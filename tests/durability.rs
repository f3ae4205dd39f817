//! The `fsync` durability mode against a real broker and a real mount:
//! calls answered before Kafka's acknowledgement, fsync as the durability
//! point, a killed master sending its unacknowledged tail again, a full
//! window, and a lost write-ahead file rolling the data-root back to the
//! journal.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

/// A `kafkafs master --durability fsync` process; its stderr goes to a
/// file the test reads.
struct MasterProc {
    child: Child,
    mnt: PathBuf,
    log: PathBuf,
}

impl MasterProc {
    fn start(broker: &str, topic: &str, data: &Path, mnt: &Path, extra: &[&str]) -> MasterProc {
        let log = data.with_extension(format!("log.{}", unique()));
        let child = Command::new(BIN)
            .args(["master", "--broker", broker, "--topic", topic])
            .args(["--partitions", "2", "--durability", "fsync"])
            .args(extra)
            .arg(data)
            .arg(mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut m = MasterProc {
            child,
            mnt: mnt.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !common::is_mounted(mnt) {
            if let Some(status) = m.child.try_wait().unwrap() {
                panic!("the master exited ({status}) before mounting:\n{}", m.log());
            }
            assert!(
                Instant::now() < deadline,
                "no mount within 90 s:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and the mount it leaves behind cleared.
    fn kill(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        unmount(&self.mnt);
        self.log()
    }

    /// A clean stop (SIGTERM: unmount, flush, checkpoint).
    fn stop(mut self) -> String {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let log = self.log();
        assert!(status.success(), "the master stopped with {status}:\n{log}");
        log
    }
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
            let _ = self.child.wait();
        }
        unmount(&self.mnt);
    }
}

/// Waits until nothing listens on `port` any more (a SIGKILL is
/// delivered asynchronously, and a process's sockets close only when its
/// last thread has exited).
fn wait_closed(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
        assert!(Instant::now() < deadline, "port {port} still open");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn unmount(mnt: &Path) {
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mnt)
        .stderr(Stdio::null())
        .status();
}

/// A slave following the topic in the background.
struct Follower(Child);

impl Follower {
    fn start(broker: &str, topic: &str, replica: &Path) -> Follower {
        fs::create_dir_all(replica).unwrap();
        let child = Command::new(BIN)
            .args(["slave", "--broker", broker, "--topic", topic])
            .arg(replica)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Follower(child)
    }

    /// Waits until the replica equals `data` (the master idle or stopped).
    fn converge(&mut self, data: &Path, replica: &Path, context: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                panic!("{context}: the slave exited ({status})");
            }
            match kafkafs::tree::compare(data, replica).unwrap() {
                Ok(()) => return,
                Err(d) if Instant::now() > deadline => {
                    panic!("{context}: the slave differs:\n{}", d.join("\n"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

/// A source tree of `dirs` × `files` small files and symlinks, archived.
fn archive(dir: &Path, dirs: usize, files: usize) -> PathBuf {
    let src = dir.join("src");
    for d in 0..dirs {
        let sub = src.join(format!("d{d:02}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..files {
            fs::write(
                sub.join(format!("f{f:03}")),
                format!("{d}/{f}\n").repeat(f + 1),
            )
            .unwrap();
        }
        std::os::unix::fs::symlink(format!("f{:03}", 0), sub.join("link")).unwrap();
    }
    let tar = dir.join("src.tar");
    common::run(
        Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    tar
}

/// Files whose fsync returned: name and content.
type Manifest = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Writes and fsyncs files under `dir` until a call fails (the master was
/// killed); each file is noted in `manifest` once its fsync returned.
fn fsynced_writer(dir: PathBuf, round: usize, manifest: Manifest) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for j in 0.. {
            let name = format!("{round}-{j}");
            let body = format!("round {round} file {j}\n")
                .repeat(1 + j % 7)
                .into_bytes();
            let written = (|| -> std::io::Result<()> {
                let mut f = fs::File::create(dir.join(&name))?;
                f.write_all(&body)?;
                f.sync_all()
            })();
            if written.is_err() {
                return;
            }
            manifest.lock().unwrap().push((name, body));
        }
    })
}

fn check_manifest(data: &Path, manifest: &[(String, Vec<u8>)], context: &str) {
    for (name, body) in manifest {
        let got = fs::read(data.join("synced").join(name))
            .unwrap_or_else(|e| panic!("{context}: fsync'd file {name} is gone: {e}"));
        assert_eq!(&got, body, "{context}: fsync'd file {name} differs");
    }
}

/// The master SIGKILLed 20 times while `tar x` and an fsync'ing writer
/// run: after every restart each fsync'd file is there, and a slave that
/// followed throughout (no gap, nothing doubled) equals the master.
#[test]
fn every_fsynced_file_survives_twenty_sigkills() {
    if common::skip(
        common::Need::Kafka,
        "every_fsynced_file_survives_twenty_sigkills",
    ) {
        return;
    }
    let seed: u64 = std::env::var("KAFKAFS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    eprintln!("seed {seed} (KAFKAFS_TEST_SEED)");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = common::tempdir();
    let (data, mnt, replica) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("replica"),
    );
    fs::create_dir_all(&mnt).unwrap();
    let tar = archive(dir.path(), 12, 40);
    let (broker, topic) = (common::brokers(), common::unique_topic("fsync-kills"));
    let manifest: Manifest = Arc::default();
    let mut resent = 0;
    let mut follower: Option<Follower> = None;
    for round in 0..20 {
        let m = MasterProc::start(&broker, &topic, &data, &mnt, &[]);
        let context = format!("seed {seed}, round {round}");
        check_manifest(&data, &manifest.lock().unwrap(), &context);
        if follower.is_none() {
            follower = Some(Follower::start(&broker, &topic, &replica));
        }
        let synced = mnt.join("synced");
        fs::create_dir_all(&synced).unwrap();
        let into = mnt.join(format!("tar-{round}"));
        fs::create_dir(&into).unwrap();
        let mut untar = Command::new("tar")
            .arg("xf")
            .arg(&tar)
            .arg("-C")
            .arg(&into)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let writer = fsynced_writer(synced, round, manifest.clone());
        std::thread::sleep(Duration::from_millis(300 + next() % 1200));
        let log = m.kill();
        let _ = untar.kill();
        let _ = untar.wait();
        writer.join().unwrap();
        resent += log.matches("sending them again").count();
    }
    let m = MasterProc::start(&broker, &topic, &data, &mnt, &[]);
    check_manifest(&data, &manifest.lock().unwrap(), "after the last kill");
    let log = m.stop();
    resent += log.matches("sending them again").count();
    assert!(
        !data.join(".kafkafs/wal").exists(),
        "a clean stop leaves no write-ahead file"
    );
    let files = manifest.lock().unwrap().len();
    eprintln!("{files} fsync'd files; {resent} restarts sent an unacknowledged tail again");
    assert!(files >= 20, "the writer fsync'd only {files} files");
    follower
        .as_mut()
        .unwrap()
        .converge(&data, &replica, &format!("seed {seed}"));
}

/// A broker that stops answering: calls go on at local speed until the
/// window is full, then wait and fail with EIO at the journal timeout, and
/// so does fsync; nothing unjournaled reaches a slave. Then the master is
/// killed and its write-ahead file lost (a machine crash): the next start
/// rolls the data-root back to exactly the journal, keeping what it
/// discarded aside and listing it.
#[test]
fn a_lost_write_ahead_file_rolls_the_data_root_back_to_the_journal() {
    if common::skip(
        common::Need::Kafka,
        "a_lost_write_ahead_file_rolls_the_data_root_back_to_the_journal",
    ) {
        return;
    }
    let dir = common::tempdir();
    let broker = common::PrivateBroker::start(dir.path().join("kafka"), 19592);
    let addr = broker.addr();
    let topic = common::unique_topic("fsync-rollback");
    let (data, mnt, replica) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("replica"),
    );
    fs::create_dir_all(&mnt).unwrap();
    let window = ["--window-records", "40", "--journal-timeout", "4"];
    let m = MasterProc::start(&addr, &topic, &data, &mnt, &window);
    let mut follower = Follower::start(&addr, &topic, &replica);

    // Journaled: written, then fsync'd.
    fs::create_dir(mnt.join("kept")).unwrap();
    let mut f = fs::File::create(mnt.join("kept/f")).unwrap();
    f.write_all(b"promised").unwrap();
    f.sync_all().unwrap();
    drop(f);
    follower.converge(&data, &replica, "before the freeze");

    // The broker stops answering: calls still go on, up to the window.
    broker.signal(libc::SIGSTOP);
    let started = Instant::now();
    fs::create_dir(mnt.join("lost")).unwrap();
    for i in 0..10 {
        fs::write(mnt.join(format!("lost/{i}")), b"never journaled").unwrap();
    }
    let fast = started.elapsed();
    assert!(
        fast < Duration::from_secs(3),
        "calls inside the window are answered without Kafka ({fast:?})"
    );
    // The window is full: the next call waits, and fails at the timeout.
    let waited = Instant::now();
    let mut n = 0;
    let err = loop {
        match fs::create_dir(mnt.join(format!("lost/more-{n}"))) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 100, "the window of 40 records never filled");
    };
    assert_eq!(common::errno_of(&err), libc::EIO, "{err}");
    assert!(
        waited.elapsed() >= Duration::from_secs(3),
        "it waited for room"
    );
    // fsync waits for Kafka: EIO at the timeout.
    let f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(0)
        .open(mnt.join("lost/0"))
        .unwrap();
    let err = f.sync_all().unwrap_err();
    assert_eq!(common::errno_of(&err), libc::EIO, "{err}");
    drop(f);
    assert!(
        data.join("lost/9").exists(),
        "applied before the acknowledgement"
    );
    assert!(
        !replica.join("lost").exists(),
        "nothing unjournaled reaches a slave"
    );

    // A machine crash: the master dies, the broker never saw the records,
    // the write-ahead file is gone.
    m.kill();
    broker.signal(libc::SIGKILL);
    wait_closed(broker.port);
    // Its pid may linger as a zombie: the script must not take it for a
    // running broker.
    fs::remove_file(broker.run.join("kafka.pid")).unwrap();
    fs::remove_dir_all(data.join(".kafkafs/wal")).unwrap();
    let out = broker.script("start");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let m = MasterProc::start(&addr, &topic, &data, &mnt, &window);
    let log = m.log();
    assert!(log.contains("rolling the data-root back"), "{log}");
    assert!(!data.join("lost").exists(), "divergent effects are undone");
    assert_eq!(fs::read(data.join("kept/f")).unwrap(), b"promised");
    // What was discarded is kept aside and listed.
    let discarded = data.join(".kafkafs/discarded");
    let aside: Vec<PathBuf> = fs::read_dir(&discarded)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read(aside[0].join("lost/3")).unwrap(),
        b"never journaled"
    );
    let list = fs::read_to_string(aside[0].with_extension("list")).unwrap();
    assert!(list.contains("lost/3"), "{list}");
    assert!(log.contains("discarded (not in the journal)"), "{log}");
    // The data-root is a replay of the journal, as the slave's is.
    let fresh = dir.path().join("fresh");
    fs::create_dir(&fresh).unwrap();
    common::run(
        Command::new(BIN)
            .args(["slave", "--broker", &addr, "--topic", &topic])
            .arg("--exit-when-caught-up")
            .arg(&fresh),
    );
    common::assert_trees_equal(&data, &fresh, "the data-root after the roll-back");
    follower.converge(&data, &replica, "after the roll-back");
    // The mount works on.
    fs::write(mnt.join("after"), b"new").unwrap();
    m.stop();
}

//! Shared test helpers: the real broker, unique topics, a seeded workload
//! generator, producing records, comparing trees.
#![allow(dead_code)]

pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kafkafs::journal::kafka::{KafkaConfig, KafkaSink};
use kafkafs::journal::{Sink, Source};
use kafkafs::op::{Op, Timestamp};
use kafkafs::record::{Caller, Record, Writer};

/// What an integration test needs beyond the unit tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Root (ownership, devices, mounts) and /dev/fuse.
    Root,
    /// Root, /dev/fuse and a Kafka broker (KAFKAFS_TEST_BROKERS, or Java
    /// and Maven to start the project's own).
    Kafka,
}

/// The prerequisites of `need` this machine lacks.
pub fn missing(need: Need) -> Vec<&'static str> {
    let mut out = Vec::new();
    if !rustix::process::geteuid().is_root() {
        out.push("root");
    }
    if !Path::new("/dev/fuse").exists() {
        out.push("/dev/fuse");
    }
    let on_path = |cmd: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
    };
    let broker_given = std::env::var("KAFKAFS_TEST_BROKERS").is_ok_and(|b| !b.trim().is_empty());
    if need == Need::Kafka && !broker_given && !(on_path("java") && on_path("mvn")) {
        out.push("a Kafka broker (KAFKAFS_TEST_BROKERS, or java and mvn)");
    }
    out
}

/// True when the calling test must be skipped (prerequisites missing): it
/// says so on stderr. Under KAFKAFS_TEST_REQUIRE_ALL (set by
/// scripts/test.sh) a missing prerequisite fails the test instead, so the
/// full suite never passes by skipping.
pub fn skip(need: Need, test: &str) -> bool {
    let missing = missing(need);
    if missing.is_empty() {
        return false;
    }
    if std::env::var_os("KAFKAFS_TEST_REQUIRE_ALL").is_some() {
        panic!("{test} needs {}", missing.join(", "));
    }
    // Straight to the process's stderr: the test harness captures
    // `eprintln!` of passing tests, and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: needs {} (scripts/test.sh runs every tier)",
        missing.join(", ")
    );
    true
}

/// The Kafka bootstrap address for tests: `KAFKAFS_TEST_BROKERS` when set,
/// else the project's own broker (`scripts/kafka.sh start`, which reuses a
/// running one).
pub fn brokers() -> String {
    static B: OnceLock<String> = OnceLock::new();
    B.get_or_init(|| {
        if let Ok(b) = std::env::var("KAFKAFS_TEST_BROKERS") {
            if !b.trim().is_empty() {
                return b;
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .output()
            .expect("running scripts/kafka.sh start");
        assert!(
            out.status.success(),
            "scripts/kafka.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("127.0.0.1:19092")
            .trim()
            .to_string()
    })
    .clone()
}

/// A topic name no other test (or earlier run) uses.
pub fn unique_topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test-{name}-{}-{nanos}", std::process::id())
}

/// Creates a fresh topic on the real broker.
pub fn kafka_topic(name: &str, partitions: u32) -> KafkaConfig {
    kafka_topic_with(name, partitions, &[])
}

/// Creates a fresh topic on the real broker with topic-level settings.
pub fn kafka_topic_with(name: &str, partitions: u32, settings: &[(&str, &str)]) -> KafkaConfig {
    let mut cfg = KafkaConfig::new(brokers(), unique_topic(name));
    cfg.topic_config = settings
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    cfg.ensure_topic(partitions, 1)
        .expect("creating test topic");
    cfg
}

/// The instant `start + n * 1001 ns`.
pub fn at(start: Timestamp, n: u64) -> Timestamp {
    let total = start.as_nanos() + n as i128 * 1001;
    Timestamp::new(
        (total / 1_000_000_000) as i64,
        (total % 1_000_000_000) as u32,
    )
}

/// Wraps ops into records of a single-writer journal without dependencies:
/// seq and partition seq rise by one, each op routed by its target path.
pub fn records(ops: &[Op], partitions: u32, start: Timestamp) -> Vec<Record> {
    let mut pseq = vec![0u64; partitions as usize];
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let p = kafkafs::partition::partition_for(op.target().as_bytes(), partitions);
            pseq[p as usize] += 1;
            Record {
                writer: Writer {
                    id: b"test-writer".to_vec(),
                    epoch: 1,
                },
                seq: i as u64 + 1,
                partition_seq: pseq[p as usize],
                partition: p,
                deps: Vec::new(),
                time: at(start, i as u64 + 1),
                caller: Caller::default(),
                op: op.clone(),
            }
        })
        .collect()
}

/// Produces records (in order) and waits until all are acknowledged.
pub fn produce(sink: &dyn Sink, records: &[Record]) {
    let (tx, rx) = crossbeam_channel::unbounded();
    for r in records {
        let tx = tx.clone();
        sink.send(
            r.partition,
            r.op.target().as_bytes(),
            &r.encode(),
            &[("kafkafs-version", b"1")],
            Box::new(move |res| {
                tx.send(res).unwrap();
            }),
        )
        .expect("send");
    }
    drop(tx);
    let mut n = 0;
    for res in rx.iter() {
        res.expect("record not acknowledged");
        n += 1;
    }
    assert_eq!(n, records.len());
}

pub fn kafka_sink(cfg: &KafkaConfig) -> KafkaSink {
    KafkaSink::new(cfg, std::time::Duration::ZERO).expect("kafka sink")
}

pub fn kafka_source(cfg: &KafkaConfig) -> Box<dyn Source> {
    Box::new(kafkafs::journal::kafka::KafkaSource::new(cfg).expect("kafka source"))
}

/// Applies ops directly (no journal) to `dir`, the reference replica.
pub fn apply_direct(dir: &Path, records: &[Record]) {
    let r = kafkafs::replica::apply::Replica::open(dir).unwrap();
    r.init_fresh().unwrap();
    for rec in records {
        let _outcome = r
            .apply(
                &rec.op,
                rec.time,
                None,
                &mut kafkafs::replica::apply::NoIntentLog,
            )
            .expect("replica failure on the reference directory");
    }
}

/// Asserts two trees are equal, printing the differences otherwise.
#[track_caller]
pub fn assert_trees_equal(a: &Path, b: &Path, context: &str) {
    match kafkafs::tree::compare(a, b).expect("snapshotting trees") {
        Ok(()) => {}
        Err(d) => panic!(
            "{context}: trees differ ({} vs {}):\n  {}",
            a.display(),
            b.display(),
            d.join("\n  ")
        ),
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kafkafs-test")
        .tempdir()
        .unwrap()
}

pub fn path_of(d: &tempfile::TempDir, name: &str) -> PathBuf {
    let p = d.path().join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

pub const WAIT: Duration = Duration::from_secs(60);

/// Every record of a topic, each partition's in offset order (reads up to
/// each partition's end as it is now).
pub fn topic_records(journal: &dyn kafkafs::journal::Journal) -> Vec<Record> {
    let mut source = journal.source().expect("source");
    let partitions = source.partitions();
    let ends: Vec<i64> = (0..partitions)
        .map(|p| source.watermarks(p).expect("watermarks").1)
        .collect();
    let starts: Vec<(u32, i64)> = (0..partitions).map(|p| (p, 0)).collect();
    source.assign(&starts).expect("assign");
    let mut out = Vec::new();
    let t0 = std::time::Instant::now();
    while (out.len() as i64) < ends.iter().sum::<i64>() {
        assert!(t0.elapsed() < Duration::from_secs(60), "topic not read");
        if let Some(msg) = source.poll(Duration::from_secs(1)).expect("poll") {
            out.push(Record::decode(&msg.payload, 1 << 24).expect("a record"));
        }
    }
    out
}

/// A master running in this process on a temporary data-root, mounted on
/// a temporary mountpoint.
pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub mnt: PathBuf,
    pub journal: std::sync::Arc<dyn kafkafs::journal::Journal>,
    pub partitions: u32,
    pub config: kafkafs::master::MasterConfig,
    master: Option<kafkafs::master::Master>,
    session: Option<kafkafs::master::fuse::Mount>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Mounted {
    /// A master on a new topic of the real broker.
    pub fn kafka(name: &str, partitions: u32) -> Mounted {
        let cfg = kafka_topic(name, partitions);
        Self::with_journal(std::sync::Arc::new(cfg), partitions, |_| {})
    }

    pub fn with_journal(
        journal: std::sync::Arc<dyn kafkafs::journal::Journal>,
        partitions: u32,
        tune: impl FnOnce(&mut kafkafs::master::MasterConfig),
    ) -> Mounted {
        Self::with_journal_in(tempdir(), journal, partitions, tune)
    }

    /// Like `with_journal`, in a directory the caller prepared (its `data`
    /// may be a mount of its own, e.g. a small tmpfs).
    pub fn with_journal_in(
        dir: tempfile::TempDir,
        journal: std::sync::Arc<dyn kafkafs::journal::Journal>,
        partitions: u32,
        tune: impl FnOnce(&mut kafkafs::master::MasterConfig),
    ) -> Mounted {
        let data = dir.path().join("data");
        let mnt = dir.path().join("mnt");
        let mut config = kafkafs::master::MasterConfig::new(&data);
        config.threads = partitions.max(2) as usize;
        config.journal_timeout = Duration::from_secs(10);
        tune(&mut config);
        let mut m = Mounted {
            dir,
            data,
            mnt,
            journal,
            partitions,
            config,
            master: None,
            session: None,
            stop: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        m.start();
        m
    }

    /// (Re)starts the master on the same data-root and topic, and mounts it.
    pub fn start(&mut self) {
        self.stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let master =
            kafkafs::master::Master::start(&self.config, self.journal.clone(), self.stop.clone())
                .expect("master starts");
        let session = kafkafs::master::mount(&master, &self.mnt, 16).expect("mount");
        self.master = Some(master);
        self.session = Some(session);
    }

    /// Unmounts and shuts the master down (final checkpoint).
    pub fn stop(&mut self) {
        if let Some(s) = self.session.take() {
            s.unmount().expect("unmount");
        }
        if let Some(m) = self.master.take() {
            m.shutdown().expect("master shutdown");
        }
    }

    pub fn master(&self) -> &kafkafs::master::Master {
        self.master.as_ref().expect("master running")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Replays the whole topic into a new directory with `threads` threads.
    pub fn replay(&self, threads: usize) -> PathBuf {
        let replica = self
            .dir
            .path()
            .join(format!("replica-{}", unique_topic("r")));
        let mut c = kafkafs::slave::SlaveConfig::new(&replica, self.journal.topic());
        c.exit_when_caught_up = true;
        c.threads = threads;
        std::fs::create_dir_all(&replica).unwrap();
        kafkafs::slave::run(
            &c,
            self.journal.source().expect("source"),
            std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        )
        .expect("slave replays the topic");
        replica
    }

    /// A slave replaying the topic equals the data-root, and the mount
    /// shows exactly the data-root.
    #[track_caller]
    pub fn assert_converged(&self, context: &str) {
        let replica = self.replay(self.partitions.max(1) as usize);
        assert_trees_equal(
            &self.data,
            &replica,
            &format!("{context}: slave vs data-root"),
        );
        if self.session.is_some() {
            assert_trees_equal(
                &self.mnt,
                &self.data,
                &format!("{context}: mount vs data-root"),
            );
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        // A filesystem the test mounted at the data-root (a small tmpfs, an
        // ext4 image) is thawed first (a failed test may leave it frozen,
        // and the master's shutdown writes to it) and unmounted last, before
        // the temporary directory, which can then be removed whole (its
        // guard is dropped after this one).
        let own_fs = self.data_on_own_fs();
        if own_fs {
            thaw(&self.data);
        }
        if let Some(s) = self.session.take() {
            let _ = s.unmount();
        }
        if let Some(m) = self.master.take() {
            let _ = m.shutdown();
        }
        if own_fs {
            lazy_unmount(&self.data);
        }
    }
}

impl Mounted {
    /// Is the data-root a filesystem of its own (mounted by the test)?
    fn data_on_own_fs(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
        dev(&self.data).is_some() && dev(&self.data) != dev(self.dir.path())
    }
}

/// Runs a command, panicking with its output if it fails.
#[track_caller]
pub fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The errno of an io::Error.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Records a replica has applied: the sum of its ledger's next offsets.
pub fn ledger_applied(replica: &Path, partitions: u32) -> i64 {
    let sd = kafkafs::replica::checkpoint::StateDir::open(replica).unwrap();
    let (_, slots) = sd.open_ledger(partitions).unwrap();
    slots
        .iter()
        .map(|s| s.map(|s| s.position.next_offset).unwrap_or(0))
        .sum()
}

/// Runs the `kafkafs slave` binary on `replica`, SIGKILLs it as soon as the
/// replica has applied each of `targets` records in turn (restarting it
/// every time), then runs it once more to the end. Returns how far it had
/// got at each kill.
pub fn replay_with_sigkills(
    bin: &str,
    cfg: &KafkaConfig,
    replica: &Path,
    partitions: u32,
    threads: usize,
    targets: &[i64],
) -> Vec<i64> {
    let slave = |extra: &[&str]| {
        let mut c = std::process::Command::new(bin);
        c.args([
            "slave",
            "--broker",
            cfg.broker_list(),
            "--topic",
            &cfg.topic,
        ])
        .args([
            "--threads",
            &threads.to_string(),
            "--checkpoint-interval",
            "0.2",
        ])
        .args(extra)
        .arg(replica)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    };
    std::fs::create_dir_all(replica).unwrap();
    let mut at = Vec::new();
    for &target in targets {
        let mut child = slave(&[]).spawn().expect("spawn slave");
        let deadline = std::time::Instant::now() + WAIT;
        while ledger_applied(replica, partitions) < target {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("slave exited early ({status})");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no progress to {target}"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        at.push(ledger_applied(replica, partitions));
    }
    let out = slave(&["--exit-when-caught-up"]).output().unwrap();
    assert!(
        out.status.success(),
        "final run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    at
}

/// A tmpfs of `size` (e.g. "64m") mounted at `at` until dropped.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        run(std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=755"),
                "kafkafs-test",
            ])
            .arg(at));
        Tmpfs {
            path: at.to_path_buf(),
        }
    }

    /// Changes the size (e.g. to grow a full filesystem).
    pub fn resize(&self, size: &str) {
        run(std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path));
    }
}

/// A small ext4 filesystem in a loop-mounted image file, mounted at `at`.
pub struct Ext4 {
    pub path: PathBuf,
}

impl Ext4 {
    pub fn mount(at: &Path, image: &Path, megabytes: u64) -> Ext4 {
        std::fs::create_dir_all(at).unwrap();
        let f = std::fs::File::create(image).unwrap();
        f.set_len(megabytes << 20).unwrap();
        drop(f);
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-E", "root_owner=0:0"])
            .arg(image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at));
        std::fs::remove_dir(at.join("lost+found")).unwrap();
        std::fs::set_permissions(at, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Ext4 {
            path: at.to_path_buf(),
        }
    }

    /// Freezes the filesystem until the guard is dropped: writes block
    /// meanwhile. (Drop the guard before anything that waits for writes.)
    pub fn freeze(&self) -> Frozen {
        run(std::process::Command::new("fsfreeze")
            .arg("--freeze")
            .arg(&self.path));
        Frozen {
            path: self.path.clone(),
        }
    }
}

/// A frozen filesystem, thawed on drop.
pub struct Frozen {
    path: PathBuf,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.path)
            .status();
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        thaw(&self.path);
        lazy_unmount(&self.path);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        lazy_unmount(&self.path);
    }
}

/// Thaws a filesystem frozen with `fsfreeze` (nothing if it is not).
fn thaw(path: &Path) {
    let _ = std::process::Command::new("fsfreeze")
        .arg("--unfreeze")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .status();
}

/// Detaches the filesystem mounted at `path` (nothing if none is).
fn lazy_unmount(path: &Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .status();
}

/// A private broker instance controlled by one test (its own port and
/// data), which it can freeze, stop and restart.
pub struct PrivateBroker {
    pub run: PathBuf,
    pub port: u16,
}

impl PrivateBroker {
    pub fn script(&self, action: &str) -> std::process::Output {
        self.script_args(&[action])
    }

    pub fn script_args(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
            .args(args)
            .env("KAFKAFS_KAFKA_PORT", self.port.to_string())
            .env("KAFKAFS_KAFKA_RUN", &self.run)
            .env("KAFKAFS_KAFKA_KEEP", "1")
            .output()
            .expect("kafka.sh")
    }

    pub fn start(run: PathBuf, port: u16) -> PrivateBroker {
        Self::start_nodes(run, port, 1)
    }

    /// One node with a SASL_SSL listener on `port + 2`
    /// (`scripts/kafka.sh start --secure`).
    #[allow(dead_code)]
    pub fn start_secure(run: PathBuf, port: u16) -> PrivateBroker {
        let b = PrivateBroker { run, port };
        let out = b.script_args(&["start", "--secure"]);
        assert!(
            out.status.success(),
            "starting a secure private broker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    /// A cluster of `nodes` KRaft nodes (`scripts/kafka.sh start --nodes`).
    pub fn start_nodes(run: PathBuf, port: u16, nodes: u32) -> PrivateBroker {
        let b = PrivateBroker { run, port };
        let out = b.script_args(&["start", "--nodes", &nodes.to_string()]);
        assert!(
            out.status.success(),
            "starting a private broker: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    fn pid_file(&self, node: u32) -> PathBuf {
        if self.run.join("node1").exists() {
            self.run.join(format!("node{node}/kafka.pid"))
        } else {
            self.run.join("kafka.pid")
        }
    }

    fn node_count(&self) -> u32 {
        std::fs::read_to_string(self.run.join("nodes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1)
    }

    /// The pid of node `node` (1-based; 1 for a single broker).
    pub fn node_pid(&self, node: u32) -> i32 {
        std::fs::read_to_string(self.pid_file(node))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn pid(&self) -> i32 {
        self.node_pid(1)
    }

    pub fn signal(&self, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }

    pub fn signal_node(&self, node: u32, sig: i32) {
        assert_eq!(unsafe { libc::kill(self.node_pid(node), sig) }, 0);
    }

    /// Its bootstrap servers.
    pub fn addr(&self) -> String {
        let out = self.script("brokers");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn signal_safe(&self, sig: i32) {
        for node in 1..=self.node_count() {
            if let Ok(pid) = std::fs::read_to_string(self.pid_file(node)) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    unsafe { libc::kill(pid, sig) };
                }
            }
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.signal_safe(libc::SIGCONT);
        let _ = self.script("stop");
    }
}

/// Is `p` a mount point (per /proc/self/mounts)?
pub fn is_mounted(p: &Path) -> bool {
    let Some(canon) = p
        .parent()
        .and_then(|d| std::fs::canonicalize(d).ok())
        .and_then(|d| Some(d.join(p.file_name()?)))
    else {
        return false;
    };
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == canon.to_str())
}

/// Waits until the master is out of journal recovery.
#[track_caller]
pub fn wait_recovered(m: &Mounted, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while m.master().pipeline().recovering() {
        assert!(
            std::time::Instant::now() < deadline,
            "master did not recover within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new file with content: a create and a write.
pub fn file_ops(name: &str, body: &[u8]) -> Vec<Op> {
    let path = kafkafs::op::RelPath::new(name).unwrap();
    vec![
        Op::Create {
            path: path.clone(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path,
            offset: 0,
            data: body.to_vec().into(),
        },
    ]
}

/// The body of `GET /metrics` at `addr`, or None while nothing answers.
#[allow(dead_code)]
pub fn get_metrics(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    conn.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the sample line `name` (with its labels, if any) in a
/// Prometheus text body.
#[allow(dead_code)]
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits until a `kafkafs master` process has mounted `mnt`; panics if it
/// exits first or takes longer than `within`.
#[allow(dead_code)]
pub fn wait_master_mounted(mnt: &Path, master: &mut std::process::Child, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !is_mounted(mnt) {
        if let Some(status) = master.try_wait().unwrap() {
            panic!("the master exited ({status}) before mounting {mnt:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the master did not mount {mnt:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

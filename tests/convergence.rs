//! Randomized, seeded convergence and causality tests of the partitioned
//! design: concurrent writers on the master (through `MasterFs`, the code
//! behind the mount) in a small shared namespace; then slaves with 1, 2, 4
//! and 8 threads replay the topic and must equal the master's data-root.
//! Slaves sampled mid-replay (records arriving partition by partition, cut
//! at random points) must hold exactly the effect of a dependency-closed
//! set of records, and no file derived from another without it.
//!
//! Seeds: `KAFKAFS_TEST_SEEDS` (default 200 in-memory seeds; set thousands,
//! or a range FROM-TO, for a long run), `KAFKAFS_TEST_SEED` to rerun one. A failure names its
//! seed, partitions and threads.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kafkafs::journal::memory::MemoryJournal;
use kafkafs::journal::{Journal, Source};
use kafkafs::master::durability::Durability;
use kafkafs::master::fs::{MasterFs, SetAttr, SetTime};
use kafkafs::master::inodes::ROOT;
use kafkafs::master::pipeline::{since, AnswerEio, ReplayOrder};
use kafkafs::master::{Master, MasterConfig};
use kafkafs::op::Timestamp;
use kafkafs::record::{Caller, Record};
use kafkafs::slave::{self, SlaveConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const PARTITIONS: [u32; 6] = [1, 2, 3, 4, 8, 16];
const THREADS: [usize; 4] = [1, 2, 4, 8];
const DIRS: [&str; 3] = ["a", "b", "c"];
const NAMES: [&str; 5] = ["x", "y", "a", "b", "z"];

/// One writer on the master: random operations through `MasterFs`.
struct Writer<'a> {
    fs: &'a MasterFs,
    rng: StdRng,
    caller: Caller,
    tokens: &'a AtomicU64,
}

impl Writer<'_> {
    /// Looks a path up the way the kernel does (one lookup per component).
    fn resolve(&self, path: &[String]) -> Option<u64> {
        let mut ino = ROOT;
        for c in path {
            ino = self.fs.lookup(ino, c.as_bytes()).ok()?.ino;
        }
        Some(ino)
    }

    fn random_path(&mut self) -> Vec<String> {
        let mut p = vec!["w".to_string()];
        for _ in 0..self.rng.random_range(0..3) {
            p.push(DIRS[self.rng.random_range(0..DIRS.len())].to_string());
        }
        p.push(NAMES[self.rng.random_range(0..NAMES.len())].to_string());
        p
    }

    fn split(path: &[String]) -> (&[String], &str) {
        (&path[..path.len() - 1], &path[path.len() - 1])
    }

    fn write_file(&mut self, ino: u64, data: &[u8], offset: u64) {
        if let Ok(fh) = self.fs.open(ino, libc::O_WRONLY) {
            let _ = self.fs.write(self.caller, ino, fh, offset, data);
            self.fs.release(fh);
        }
    }

    /// One operation on the shared namespace under `w/` (failures are fine:
    /// their outcome is journaled and must match everywhere).
    fn general(&mut self) {
        let path = self.random_path();
        let (dir, name) = Self::split(&path);
        let Some(parent) = self.resolve(dir) else {
            // Make the missing directory chain, most of the time.
            if self.rng.random_bool(0.7) {
                let mut cur = ROOT;
                for c in dir {
                    cur = match self.fs.lookup(cur, c.as_bytes()) {
                        Ok(a) => a.ino,
                        Err(_) => match self.fs.mkdir(self.caller, cur, c.as_bytes(), 0o755, 0) {
                            Ok(a) => a.ino,
                            Err(_) => return,
                        },
                    };
                }
            }
            return;
        };
        let target = self.fs.lookup(parent, name.as_bytes()).ok().map(|a| a.ino);
        let c = self.caller;
        match self.rng.random_range(0..100) {
            0..=17 => {
                if let Ok((a, fh)) = self.fs.create(
                    c,
                    parent,
                    name.as_bytes(),
                    0o644,
                    0o022,
                    libc::O_EXCL | libc::O_RDWR,
                ) {
                    let len = self.rng.random_range(0..3000);
                    let b = self.rng.random::<u8>();
                    let _ = self.fs.write(c, a.ino, fh, 0, &vec![b; len]);
                    self.fs.release(fh);
                }
            }
            18..=25 => {
                let _ = self.fs.mkdir(c, parent, name.as_bytes(), 0o755, 0o022);
            }
            26..=41 => {
                if let Some(t) = target {
                    let len = self.rng.random_range(1..5000);
                    let off = self.rng.random_range(0..20000);
                    let b = self.rng.random::<u8>();
                    self.write_file(t, &vec![b; len], off);
                }
            }
            42..=45 => {
                if let Some(t) = target {
                    let size = self.rng.random_range(0..10000);
                    let _ = self.fs.setattr(
                        c,
                        t,
                        SetAttr {
                            size: Some(size),
                            ..SetAttr::default()
                        },
                    );
                }
            }
            46..=60 => {
                let dst = self.random_path();
                let (ddir, dname) = Self::split(&dst);
                if let Some(dp) = self.resolve(ddir) {
                    let flags = [0, 0, 0, 1, 2][self.rng.random_range(0..5)];
                    let _ = self
                        .fs
                        .rename(c, parent, name.as_bytes(), dp, dname.as_bytes(), flags);
                }
            }
            61..=65 => {
                let dst = self.random_path();
                let (ddir, dname) = Self::split(&dst);
                if let (Some(t), Some(dp)) = (target, self.resolve(ddir)) {
                    let _ = self.fs.link(c, t, dp, dname.as_bytes());
                }
            }
            66..=68 => {
                let tgt = ["x", "../a/y", "/abs/olute"][self.rng.random_range(0..3)];
                let _ = self.fs.symlink(c, parent, name.as_bytes(), tgt.as_bytes());
            }
            69..=77 => {
                let _ = self.fs.unlink(c, parent, name.as_bytes());
            }
            78..=82 => {
                let _ = self.fs.rmdir(c, parent, name.as_bytes());
            }
            83..=86 => {
                if let Some(t) = target {
                    let mode = [0o600, 0o755, 0o2775, 0o4711][self.rng.random_range(0..4)];
                    let _ = self.fs.setattr(
                        c,
                        t,
                        SetAttr {
                            mode: Some(mode),
                            ..SetAttr::default()
                        },
                    );
                }
            }
            87..=91 => {
                let t = target.unwrap_or(parent);
                let when = if self.rng.random_bool(0.5) {
                    SetTime::Now
                } else {
                    SetTime::At(Timestamp::new(self.rng.random_range(0..2_000_000_000), 7))
                };
                let _ = self.fs.setattr(
                    c,
                    t,
                    SetAttr {
                        mtime: Some(when),
                        ..SetAttr::default()
                    },
                );
            }
            92..=96 => {
                if let Some(t) = target {
                    let k = format!("user.k{}", self.rng.random_range(0..3));
                    let _ = self.fs.setxattr(c, t, k.as_bytes(), b"v", 0);
                }
            }
            _ => {
                if let Some(t) = target {
                    let _ = self.fs.removexattr(c, t, b"user.k0");
                }
            }
        }
    }

    /// Token files under `t/`: never deleted or overwritten; a derived file
    /// names the token of the file it was derived from, which existed (and
    /// was read) before it was created.
    fn tokens(&mut self, t_dir: u64) {
        let id = self.tokens.fetch_add(1, Ordering::SeqCst);
        let c = self.caller;
        let content = match self.rng.random_range(0..3) {
            0 => format!("token:{id}\n"),
            _ => {
                // Read an existing token file.
                let Ok(fh) = self.fs.opendir(t_dir) else {
                    return;
                };
                let entries = self.fs.readdir(fh, 0).unwrap_or_default();
                self.fs.releasedir(fh);
                let files: Vec<_> = entries
                    .iter()
                    .filter(|e| e.name != b"." && e.name != b"..")
                    .collect();
                if files.is_empty() {
                    format!("token:{id}\n")
                } else {
                    let pick = &files[self.rng.random_range(0..files.len())];
                    let Ok(a) = self.fs.lookup(t_dir, &pick.name) else {
                        return;
                    };
                    let Ok(fh) = self.fs.open(a.ino, libc::O_RDONLY) else {
                        return;
                    };
                    let body = self.fs.read(fh, 0, 4096).unwrap_or_default();
                    self.fs.release(fh);
                    let text = String::from_utf8_lossy(&body);
                    let Some(src) = text.lines().next().and_then(|l| l.strip_prefix("token:"))
                    else {
                        return;
                    };
                    format!("token:{id}\nfrom:{src}\n")
                }
            }
        };
        let name = format!("f{id}");
        if let Ok((a, fh)) = self.fs.create(
            c,
            t_dir,
            name.as_bytes(),
            0o644,
            0,
            libc::O_EXCL | libc::O_RDWR,
        ) {
            let _ = self.fs.write(c, a.ino, fh, 0, content.as_bytes());
            self.fs.release(fh);
        }
        if self.rng.random_bool(0.2) {
            let _ = self.fs.rename(
                c,
                t_dir,
                name.as_bytes(),
                t_dir,
                format!("r{id}").as_bytes(),
                1,
            );
        }
    }
}

/// Runs a master with `writers` concurrent writers on a journal; returns
/// the data-root (master stopped, checkpoint written).
fn run_master(
    journal: Arc<dyn Journal>,
    dir: &Path,
    seed: u64,
    writers: usize,
    ops: usize,
    ordering: ReplayOrder,
    durability: Durability,
) -> std::path::PathBuf {
    let data = dir.join("data");
    let mut config = MasterConfig::new(&data);
    config.threads = 4;
    config.ordering = ordering;
    config.durability = durability;
    config.journal_timeout = std::time::Duration::from_secs(20);
    let master = Master::start(&config, journal, Arc::new(AtomicBool::new(false))).unwrap();
    let fs = master.fs.clone();
    let caller = Caller {
        uid: 0,
        gid: 0,
        pid: 1,
    };
    fs.mkdir(caller, ROOT, b"w", 0o755, 0).unwrap();
    let t_dir = fs.mkdir(caller, ROOT, b"t", 0o755, 0).unwrap().ino;
    let tokens = AtomicU64::new(1);
    std::thread::scope(|s| {
        for w in 0..writers {
            let fs = &fs;
            let tokens = &tokens;
            s.spawn(move || {
                let mut wr = Writer {
                    fs,
                    rng: StdRng::seed_from_u64(seed * 1000 + w as u64),
                    caller: Caller {
                        uid: (w as u32 % 2) * 1000,
                        gid: (w as u32 % 3) * 100,
                        pid: 100 + w as u32,
                    },
                    tokens,
                };
                for _ in 0..ops {
                    // Even writers are served as the mount's dispatchers
                    // serve a call (one that can be answered without its
                    // thread): in fsync mode their records are claimed and
                    // their frames written on their own thread, beside the
                    // odd writers' records applied by the pool.
                    let answer: Option<AnswerEio> = (w % 2 == 0).then(|| Arc::new(|| {}) as _);
                    since(Instant::now(), answer, || {
                        if wr.rng.random_bool(0.25) {
                            wr.tokens(t_dir);
                        } else {
                            wr.general();
                        }
                    });
                }
            });
        }
    });
    drop(fs);
    master.shutdown().unwrap();
    data
}

fn replay(source: Box<dyn Source>, topic: &str, dir: &Path, threads: usize) -> Result<(), String> {
    let mut c = SlaveConfig::new(dir, topic);
    c.exit_when_caught_up = true;
    c.threads = threads;
    std::fs::create_dir_all(dir).unwrap();
    slave::run(&c, source, Arc::new(AtomicBool::new(false)))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every file deriving from a token finds that token in the tree.
fn check_tokens(root: &Path) -> Result<(), String> {
    let t = root.join("t");
    if !t.exists() {
        return Ok(());
    }
    let mut have = BTreeSet::new();
    let mut need = BTreeMap::new();
    for e in std::fs::read_dir(&t).unwrap() {
        let e = e.unwrap();
        let body = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in body.lines() {
            if let Some(x) = l.strip_prefix("token:") {
                have.insert(x.to_string());
            }
            if let Some(x) = l.strip_prefix("from:") {
                need.insert(x.to_string(), e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    for (src, file) in need {
        if !have.contains(&src) {
            return Err(format!(
                "t/{file} derives from token {src}, which the replica lacks"
            ));
        }
    }
    Ok(())
}

fn decode_all(j: &MemoryJournal, partitions: u32) -> Vec<Vec<Record>> {
    (0..partitions)
        .map(|p| {
            j.messages(p)
                .iter()
                .map(|m| Record::decode(&m.payload, 1 << 24).unwrap())
                .collect()
        })
        .collect()
}

/// The journal's records whose paths lie on or around the paths named in
/// `diffs` (the path itself, its parent and children), in sequence order:
/// what a failure report needs to find the missing dependency.
fn records_touching(j: &MemoryJournal, partitions: u32, diffs: &[String]) -> String {
    let paths: Vec<String> = diffs
        .iter()
        .filter_map(|d| d.split(':').next().map(str::to_string))
        .collect();
    // The path, its ancestors (a rename of one moves it) and descendants.
    let near = |p: &str| {
        paths
            .iter()
            .any(|d| d == p || d.starts_with(&format!("{p}/")) || p.starts_with(&format!("{d}/")))
    };
    let mut all: Vec<(u32, usize, Record)> = Vec::new();
    for (p, recs) in decode_all(j, partitions).into_iter().enumerate() {
        for (offset, r) in recs.into_iter().enumerate() {
            all.push((p as u32, offset, r));
        }
    }
    all.sort_by_key(|(_, _, r)| r.seq);
    let mut out = String::new();
    let mut everything = String::new();
    for (p, offset, r) in all {
        let head = format!(
            "seq {} p{p}@{offset} pseq {} time {} deps {:?}: {}",
            r.seq,
            r.partition_seq,
            r.time.as_nanos(),
            r.deps
                .iter()
                .map(|d| (d.partition, d.seq))
                .collect::<Vec<_>>(),
            r.op.name()
        );
        let detail = match &r.op {
            kafkafs::op::Op::Write { path, offset, data } => {
                format!("{} @{offset} +{}", path.display(), data.len())
            }
            other => format!("{other:?}"),
        };
        everything += &format!("{head} {detail}\n");
        let mut touched = vec![r.op.target().display()];
        if let kafkafs::op::Op::Rename { src, .. } | kafkafs::op::Op::Link { src, .. } = &r.op {
            touched.push(src.display());
        }
        if touched.iter().any(|t| near(t)) {
            out += &format!("  {head} {}\n", touched.join(" <- "));
        }
    }
    let dump = std::env::temp_dir().join(format!("kafkafs-convergence-{}.txt", std::process::id()));
    if std::fs::write(&dump, everything).is_ok() {
        out += &format!("  (every record: {})\n", dump.display());
    }
    out
}

/// Slaves sampled mid-replay: records of each partition arrive up to a
/// random cut; after each run the replica must be exactly the records it
/// applied (a dependency-closed set) applied in sequence order.
fn check_causality(
    j: &MemoryJournal,
    partitions: u32,
    dir: &Path,
    rng: &mut StdRng,
    threads: usize,
) -> Result<(), String> {
    let records = decode_all(j, partitions);
    let lens: Vec<i64> = records.iter().map(|r| r.len() as i64).collect();
    let replica = dir.join(format!("mid-{threads}"));
    std::fs::create_dir_all(&replica).unwrap();
    let mut limits = vec![0i64; partitions as usize];
    for step in 0..4 {
        for (p, l) in limits.iter_mut().enumerate() {
            let len = lens[p];
            *l = if step == 3 {
                len
            } else {
                rng.random_range(*l..=len)
            };
        }
        let mut c = SlaveConfig::new(&replica, "memory");
        c.exit_when_caught_up = true;
        c.threads = threads;
        let r = slave::run(
            &c,
            Box::new(j.source_limited(limits.clone())),
            Arc::new(AtomicBool::new(false)),
        );
        let positions = match r {
            Ok(rep) => rep.positions,
            Err(e) if e.to_string().contains("could not be applied") => {
                kafkafs::replica::checkpoint::StateDir::open(&replica)
                    .unwrap()
                    .load_checkpoint()
                    .unwrap()
                    .unwrap()
                    .positions
            }
            Err(e) => return Err(format!("cut {limits:?}: {e}")),
        };
        // The applied set: each partition's records below its position.
        let mut applied: Vec<&Record> = Vec::new();
        let mut applied_seq = vec![0u64; partitions as usize];
        for (p, pos) in positions.iter().enumerate() {
            for r in &records[p][..pos.next_offset as usize] {
                applied.push(r);
                applied_seq[p] = r.seq;
            }
        }
        for r in &applied {
            for d in &r.deps {
                if applied_seq[d.partition as usize] < d.seq {
                    return Err(format!(
                        "cut {limits:?}: seq {} applied before its dependency {d:?}",
                        r.seq
                    ));
                }
            }
        }
        applied.sort_by_key(|r| r.seq);
        let reference = dir.join(format!("ref-{threads}-{step}"));
        std::fs::create_dir_all(&reference).unwrap();
        let owned: Vec<Record> = applied.into_iter().cloned().collect();
        common::apply_direct(&reference, &owned);
        if let Err(d) = kafkafs::tree::compare(&reference, &replica).unwrap() {
            return Err(format!(
                "cut {limits:?}: the slave is not the applied records in sequence order:\n  {}",
                d.join("\n  ")
            ));
        }
        check_tokens(&replica).map_err(|e| format!("cut {limits:?}: {e}"))?;
    }
    Ok(())
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("KAFKAFS_TEST_SEED") {
        return vec![s.parse().expect("KAFKAFS_TEST_SEED is a number")];
    }
    // N seeds from 1, or FROM-TO.
    let spec = std::env::var("KAFKAFS_TEST_SEEDS").unwrap_or_default();
    if let Some((from, to)) = spec.split_once('-') {
        let from: u64 = from.parse().expect("KAFKAFS_TEST_SEEDS=FROM-TO");
        let to: u64 = to.parse().expect("KAFKAFS_TEST_SEEDS=FROM-TO");
        return (from..=to).collect();
    }
    let n: u64 = spec.parse().unwrap_or(200);
    (1..=n).collect()
}

/// In-memory journal: many seeds, every partition count, slaves with
/// 1, 2, 4, 8 threads, causality sampled mid-replay.
#[test]
fn randomized_convergence_in_memory() {
    if common::skip(common::Need::Kafka, "randomized_convergence_in_memory") {
        return;
    }
    let seeds = seeds();
    for &seed in &seeds {
        let partitions = PARTITIONS[(seed as usize) % PARTITIONS.len()];
        let ordering = if seed % 5 == 4 {
            ReplayOrder::Conflicts
        } else {
            ReplayOrder::Causal
        };
        // Every third seed answers before the acknowledgement.
        let durability = if seed % 3 == 1 {
            Durability::Fsync
        } else {
            Durability::Journal
        };
        let dir = common::tempdir();
        let j = MemoryJournal::new(partitions);
        let data = run_master(
            Arc::new(j.clone()),
            dir.path(),
            seed,
            4,
            40,
            ordering,
            durability,
        );
        let ctx = |threads: usize| {
            format!(
                "seed {seed} (rerun: KAFKAFS_TEST_SEED={seed}), {partitions} partitions, \
                 {threads} slave threads, {ordering:?} ordering, {durability:?} durability"
            )
        };
        for threads in THREADS {
            let replica = dir.path().join(format!("slave-{threads}"));
            replay(Box::new(j.source()), "memory", &replica, threads)
                .unwrap_or_else(|e| panic!("{}: {e}", ctx(threads)));
            if let Err(d) = kafkafs::tree::compare(&data, &replica).unwrap() {
                panic!(
                    "{}: slave differs from master:\n  {}\nrecords touching the paths that differ:\n{}",
                    ctx(threads),
                    d.join("\n  "),
                    records_touching(&j, partitions, &d)
                );
            }
        }
        if let Err(e) = check_tokens(&data) {
            panic!("{}: master itself: {e}", ctx(0));
        }
        if ordering == ReplayOrder::Causal {
            let mut rng = StdRng::seed_from_u64(seed ^ 0xc0ffee);
            let threads = THREADS[(seed as usize / 6) % THREADS.len()];
            check_causality(&j, partitions, dir.path(), &mut rng, threads)
                .unwrap_or_else(|e| panic!("{}: causality: {e}", ctx(threads)));
        }
    }
    eprintln!("{} seeds converged", seeds.len());
}

/// The same through the real broker, once per partition count.
#[test]
fn randomized_convergence_real_broker() {
    if common::skip(common::Need::Kafka, "randomized_convergence_real_broker") {
        return;
    }
    for (i, &partitions) in PARTITIONS.iter().enumerate() {
        let seed = 9000 + i as u64;
        let cfg = common::kafka_topic(&format!("conv{partitions}"), partitions);
        let dir = common::tempdir();
        let journal: Arc<dyn Journal> = Arc::new(cfg.clone());
        let durability = if i % 2 == 1 {
            Durability::Fsync
        } else {
            Durability::Journal
        };
        let data = run_master(
            journal,
            dir.path(),
            seed,
            4,
            30,
            ReplayOrder::Causal,
            durability,
        );
        for threads in THREADS {
            let replica = dir.path().join(format!("slave-{threads}"));
            replay(common::kafka_source(&cfg), &cfg.topic, &replica, threads).unwrap_or_else(|e| {
                panic!(
                    "seed {seed}, {partitions} partitions, {threads} threads, {durability:?}: {e}"
                )
            });
            if let Err(d) = kafkafs::tree::compare(&data, &replica).unwrap() {
                panic!(
                    "seed {seed}, {partitions} partitions, {threads} slave threads, \
                     {durability:?} durability (real broker): slave differs:\n  {}",
                    d.join("\n  ")
                );
            }
        }
    }
}

/// Exactly-once across SIGKILL with partitions and threads: a journal with
/// cross-partition dependencies, replayed by the slave binary with 4
/// threads, killed at random points, restarted, ends equal to the master.
#[test]
fn multi_partition_slave_killed_with_sigkill_converges() {
    if common::skip(
        common::Need::Kafka,
        "multi_partition_slave_killed_with_sigkill_converges",
    ) {
        return;
    }
    let seed = 4242;
    let partitions = 4;
    let cfg = common::kafka_topic("sigkill-multi", partitions);
    let dir = common::tempdir();
    let journal: Arc<dyn Journal> = Arc::new(cfg.clone());
    // The journal of an fsync-mode master (offsets taken ahead of the
    // acknowledgements): the slave's exactly-once resume is unchanged.
    let data = run_master(
        journal,
        dir.path(),
        seed,
        4,
        300,
        ReplayOrder::Conflicts,
        Durability::Fsync,
    );
    let source = common::kafka_source(&cfg);
    let total: i64 = (0..partitions)
        .map(|p| source.watermarks(p).unwrap().1)
        .sum();
    let replica = dir.path().join("replica");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut targets: Vec<i64> = (0..6).map(|_| rng.random_range(1..total - 1)).collect();
    targets.sort();
    let at = common::replay_with_sigkills(
        env!("CARGO_BIN_EXE_kafkafs"),
        &cfg,
        &replica,
        partitions,
        4,
        &targets,
    );
    assert!(
        at.iter().all(|&a| a < total),
        "kills landed mid-replay: {at:?} of {total}"
    );
    common::assert_trees_equal(
        &data,
        &replica,
        &format!("seed {seed}: {partitions} partitions, 4 threads, SIGKILL at {at:?} of {total}"),
    );
}

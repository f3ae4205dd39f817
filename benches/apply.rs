//! Slave apply throughput from a pre-filled topic on the real broker, for
//! partition counts 1, 2, 4, 8, 16 with one thread, threads = cores and
//! threads = partitions, on three mixes, next to a baseline measured in
//! the same run: the same operations applied directly with the same
//! syscalls and no Kafka, ending with the same `syncfs`. Everything runs
//! on an ext4 filesystem of its own (a loop-mounted image: needs root).
//! Each configuration under three dependency orderings: conflicts only
//! (`--ordering conflicts`), and the default causal ordering for one
//! writer (its records form one chain across partitions) and for four
//! concurrent writers.
//!
//!   cargo bench --bench apply            (KAFKAFS_BENCH_SCALE=0.1 for a quick run,
//!                                         KAFKAFS_BENCH_ONLY to pick configurations)
//!
//! Broker: KAFKAFS_TEST_BROKERS, else scripts/kafka.sh start. Prints a table
//! of ops/s, MB/s and the ratio to the baseline, then a thread-scaling
//! table (8 partitions: 8 threads against 1 in alternating pairs of
//! replays), and writes both to target/kafkafs-bench/apply.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use kafkafs::journal::kafka::KafkaConfig;
use kafkafs::master::keys::{Conflicts, Key, KeySet};
use kafkafs::op::{Op, RelPath, Timestamp};
use kafkafs::partition::partition_for;
use kafkafs::record::{Caller, Record, Writer};
use kafkafs::replica::apply::{NoIntentLog, Replica};
use kafkafs::slave::{self, SlaveConfig};

const PARTITIONS: [u32; 5] = [1, 2, 4, 8, 16];

fn scale() -> f64 {
    std::env::var("KAFKAFS_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0)
}

/// `KAFKAFS_BENCH_ONLY=<mix>[,<ordering>[,<partitions>]]` limits a run to
/// some configurations (pre-filling only their topics), e.g.
/// `large-1MiB,conflicts,1`; `*` matches any (`*,*,8`: every mix and
/// ordering on 8 partitions).
fn selected(mix: &str, ordering: Option<Ordering>, partitions: Option<u32>) -> bool {
    let Ok(only) = std::env::var("KAFKAFS_BENCH_ONLY") else {
        return true;
    };
    let mut it = only.split(',');
    let matches = |want: Option<&str>, have: Option<String>| match (want, have) {
        (Some(w), Some(h)) => w == "*" || w == h,
        _ => true,
    };
    matches(it.next(), Some(mix.to_string()))
        && matches(it.next(), ordering.map(Ordering::label))
        && matches(it.next(), partitions.map(|p| p.to_string()))
}

fn id(path: &str) -> u64 {
    kafkafs::partition::murmur2(path.as_bytes()) as u32 as u64 + 2
}

/// What records are ordered after, as the master builds them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ordering {
    /// `--ordering conflicts`: the records they conflict with.
    Conflicts,
    /// `--ordering causal` (the default) with this many concurrent writers:
    /// also everything applied when a record was sequenced, i.e. every
    /// record but the `writers - 1` still in flight. One writer makes one
    /// chain across partitions.
    Causal { writers: u64 },
}

impl Ordering {
    fn label(self) -> String {
        match self {
            Ordering::Conflicts => "conflicts".into(),
            Ordering::Causal { writers } => format!("causal-{writers}w"),
        }
    }
}

const ORDERINGS: [Ordering; 3] = [
    Ordering::Conflicts,
    Ordering::Causal { writers: 1 },
    Ordering::Causal { writers: 4 },
];

/// Builds records with the master's dependency rules (keys by path; the
/// mixes never rename directories, so paths identify inodes).
struct Builder {
    partitions: u32,
    ordering: Ordering,
    conflicts: Conflicts,
    pseq: Vec<u64>,
    /// Per partition: the seqs sent to it, ascending.
    sent: Vec<Vec<u64>>,
    records: Vec<Record>,
}

impl Builder {
    fn new(partitions: u32, ordering: Ordering) -> Self {
        Builder {
            partitions,
            ordering,
            conflicts: Conflicts::new(partitions, 1 << 22),
            pseq: vec![0; partitions as usize],
            sent: vec![Vec::new(); partitions as usize],
            records: Vec::new(),
        }
    }

    /// Causal dependencies: per other partition, its last record applied
    /// when `seq` was sequenced (at most `seq - writers`).
    fn causal(&self, p: u32, seq: u64, deps: &mut Vec<kafkafs::record::Dep>) {
        let Ordering::Causal { writers } = self.ordering else {
            return;
        };
        let Some(horizon) = seq.checked_sub(writers) else {
            return;
        };
        for (q, sent) in self.sent.iter().enumerate() {
            let q = q as u32;
            let last = sent.partition_point(|&s| s <= horizon);
            if q == p || last == 0 {
                continue;
            }
            let a = sent[last - 1];
            match deps.iter_mut().find(|d| d.partition == q) {
                Some(d) => d.seq = d.seq.max(a),
                None => deps.push(kafkafs::record::Dep {
                    partition: q,
                    seq: a,
                }),
            }
        }
        deps.sort_by_key(|d| d.partition);
    }

    fn push(&mut self, op: Op, keys: KeySet) {
        let seq = self.records.len() as u64 + 1;
        let p = partition_for(op.target().as_bytes(), self.partitions);
        self.pseq[p as usize] += 1;
        let mut deps = self.conflicts.record(&keys, p, seq);
        self.causal(p, seq, &mut deps);
        self.sent[p as usize].push(seq);
        self.records.push(Record {
            writer: Writer {
                id: b"bench".to_vec(),
                epoch: 1,
            },
            seq,
            partition_seq: self.pseq[p as usize],
            partition: p,
            deps,
            time: Timestamp::new(
                1_700_000_000 + seq as i64 / 1000,
                (seq % 1000) as u32 * 1000,
            ),
            caller: Caller::default(),
            op,
        });
    }

    fn mkdir(&mut self, d: &str) {
        let mut ks = KeySet::new();
        ks.exclusive(Key::Entry(1, d.as_bytes().to_vec()));
        ks.shared(Key::DirTimes(1));
        self.push(
            Op::Mkdir {
                path: RelPath::new(d).unwrap(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
            ks,
        );
    }

    /// Keys of an op on file `name` in top-level dir `d`.
    fn file_keys(d: &str, name: &str, entry_excl: bool, inode_excl: bool) -> KeySet {
        let mut ks = KeySet::new();
        ks.shared(Key::Entry(1, d.as_bytes().to_vec()));
        let e = Key::Entry(id(d), name.as_bytes().to_vec());
        if entry_excl {
            ks.exclusive(e);
            ks.shared(Key::DirTimes(id(d)));
        } else {
            ks.shared(e);
            if inode_excl {
                ks.exclusive(Key::Inode(id(&format!("{d}/{name}"))));
            } else {
                ks.shared(Key::Inode(id(&format!("{d}/{name}"))));
            }
        }
        ks
    }

    fn file_op(&mut self, d: &str, name: &str, op: Op) {
        let ks = match &op {
            Op::Create { .. } | Op::Unlink { .. } => Self::file_keys(d, name, true, false),
            Op::Fsync { .. } => Self::file_keys(d, name, false, false),
            _ => Self::file_keys(d, name, false, true),
        };
        self.push(op, ks);
    }

    /// Create file `name` in `d` and write `data` at offset 0.
    fn create_with(&mut self, d: &str, name: &str, data: Vec<u8>) {
        let path = format!("{d}/{name}");
        self.file_op(
            d,
            name,
            Op::Create {
                path: p(&path),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
        self.file_op(
            d,
            name,
            Op::Write {
                path: p(&path),
                offset: 0,
                data: data.into(),
            },
        );
    }

    fn rename(&mut self, d: &str, from: &str, to: &str) {
        let mut ks = Self::file_keys(d, from, true, false);
        ks.exclusive(Key::Entry(id(d), to.as_bytes().to_vec()));
        self.push(
            Op::Rename {
                src: RelPath::new(format!("{d}/{from}")).unwrap(),
                dst: RelPath::new(format!("{d}/{to}")).unwrap(),
                flags: Default::default(),
            },
            ks,
        );
    }
}

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

/// The three mixes: (name, records, bytes written).
fn mixes(partitions: u32, ordering: Ordering) -> Vec<(&'static str, Vec<Record>, u64)> {
    let s = scale();
    let dirs = 16;
    let mut out = Vec::new();

    // Metadata-heavy small files: create, 4 KiB write, chmod, rename, unlink.
    let files = ((2000.0 * s) as usize).max(16);
    let mut b = Builder::new(partitions, ordering);
    for i in 0..dirs {
        b.mkdir(&format!("d{i}"));
    }
    for i in 0..files {
        let d = format!("d{}", i % dirs);
        let f = format!("f{i}");
        let g = format!("g{i}");
        b.create_with(&d, &f, vec![i as u8; 4096]);
        b.file_op(
            &d,
            &f,
            Op::Chmod {
                path: p(&format!("{d}/{f}")),
                mode: 0o600,
            },
        );
        b.rename(&d, &f, &g);
        if i % 2 == 0 {
            b.file_op(
                &d,
                &g,
                Op::Unlink {
                    path: p(&format!("{d}/{g}")),
                },
            );
        }
    }
    out.push(("small-files", b.records, files as u64 * 4096));

    // Large sequential writes: 1 MiB per record into a few files.
    let per_file = ((32.0 * s) as usize).max(2);
    let nfiles = 4;
    let mut b = Builder::new(partitions, ordering);
    b.mkdir("big");
    for f in 0..nfiles {
        let name = format!("file{f}");
        b.file_op(
            "big",
            &name,
            Op::Create {
                path: p(&format!("big/{name}")),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        );
    }
    for chunk in 0..per_file {
        for f in 0..nfiles {
            let name = format!("file{f}");
            b.file_op(
                "big",
                &name,
                Op::Write {
                    path: p(&format!("big/{name}")),
                    offset: chunk as u64 * (1 << 20),
                    data: vec![(chunk + f) as u8; 1 << 20].into(),
                },
            );
        }
    }
    out.push(("large-1MiB", b.records, ((per_file * nfiles) as u64) << 20));

    // fsync-heavy: create, 4 KiB write, fsync.
    let files = ((300.0 * s) as usize).max(8);
    let mut b = Builder::new(partitions, ordering);
    for i in 0..dirs {
        b.mkdir(&format!("d{i}"));
    }
    for i in 0..files {
        let d = format!("d{}", i % dirs);
        let f = format!("s{i}");
        b.create_with(&d, &f, vec![7; 4096]);
        b.file_op(
            &d,
            &f,
            Op::Fsync {
                path: p(&format!("{d}/{f}")),
                datasync: false,
            },
        );
    }
    out.push(("fsync-heavy", b.records, files as u64 * 4096));
    out
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let d = base.join(format!("{name}-{}", common::unique_topic("d")));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Flushes what earlier runs left (their trees and removals) before a run
/// is timed: each run's closing `syncfs` then writes only its own data.
fn settle(dir: &Path) {
    Replica::open(dir).unwrap().sync().unwrap();
}

/// The same operations applied directly, ending with the same durability
/// point as a slave's final checkpoint (`syncfs`).
fn baseline(base: &Path, records: &[Record]) -> (Duration, PathBuf) {
    let dir = fresh_dir(base, "baseline");
    let r = Replica::open(&dir).unwrap();
    r.init_fresh().unwrap();
    r.sync().unwrap();
    let t = Instant::now();
    for rec in records {
        let _ = r.apply(&rec.op, rec.time, None, &mut NoIntentLog).unwrap();
    }
    r.sync().unwrap();
    (t.elapsed(), dir)
}

fn replay(base: &Path, cfg: &KafkaConfig, threads: usize) -> (Duration, PathBuf) {
    let dir = fresh_dir(base, "replica");
    settle(&dir);
    let mut c = SlaveConfig::new(&dir, &cfg.topic);
    c.exit_when_caught_up = true;
    c.threads = threads;
    c.checkpoint_interval = Duration::from_secs(3600);
    let source = common::kafka_source(cfg);
    let t = Instant::now();
    slave::run(&c, source, Arc::new(AtomicBool::new(false))).expect("replay");
    (t.elapsed(), dir)
}

type Results = Mutex<BTreeMap<(String, String), Vec<Duration>>>;

/// The thread-scaling comparison: `--threads 1` and `--threads N` replays
/// of one topic, by (mix, ordering, N).
type Paired = BTreeMap<(String, String, usize), (Vec<Duration>, Vec<Duration>)>;

/// Pairs of replays with 1 and `threads` threads, alternating which goes
/// first: drift over the run (the filesystem filling, the broker's
/// caches) falls on both sides alike, where criterion's runs of one
/// configuration after the other put it all on the later one.
fn paired_scaling(
    base: &Path,
    cfg: &KafkaConfig,
    threads: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut one, mut many) = (Vec::new(), Vec::new());
    // `cargo test --benches` (no `--bench`) is a smoke run: one pair.
    let pairs = if std::env::args().any(|a| a == "--bench") {
        PAIRS
    } else {
        1
    };
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [1, threads]
        } else {
            [threads, 1]
        };
        for t in order {
            let (d, dir) = replay(base, cfg, t);
            let _ = std::fs::remove_dir_all(dir);
            if t == 1 {
                one.push(d)
            } else {
                many.push(d)
            }
        }
    }
    (one, many)
}

/// Pairs per thread-scaling comparison (each replay takes 0.1–0.3 s here;
/// a single pair's ratio spreads by up to ±15 %, the median of 20 by
/// about ±3 %).
const PAIRS: usize = 20;

/// Partitions of the thread-scaling comparison (threads = partitions).
const SCALING_PARTITIONS: u32 = 8;

fn main() {
    let results: Results = Mutex::new(BTreeMap::new());
    let mut paired = Paired::new();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let tmp = tempfile::Builder::new()
        .prefix("kafkafs-bench")
        .tempdir()
        .unwrap();
    // A filesystem of its own: a run's closing syncfs then flushes only
    // the bench's own writes, not what the broker, the build or earlier
    // runs left on the machine's disk.
    let fs = common::Ext4::mount(&tmp.path().join("fs"), &tmp.path().join("fs.img"), 4096);
    let base = fs.path.as_path();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut meta: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (mix_index, mix_name) in ["small-files", "large-1MiB", "fsync-heavy"]
        .iter()
        .enumerate()
        .filter(|(_, mix)| selected(mix, None, None))
    {
        let mut g = c.benchmark_group(format!("apply/{mix_name}"));
        // One run per sample (criterion's linear sampling would run each
        // configuration 55 times for 10 samples).
        g.sampling_mode(SamplingMode::Flat);
        // Baseline (partitioning does not change the ops; use 1 partition's records).
        let (_, records, bytes) = mixes(1, Ordering::Conflicts).swap_remove(mix_index);
        meta.insert(mix_name.to_string(), (records.len() as u64, bytes));
        g.throughput(Throughput::Elements(records.len() as u64));
        g.bench_function("baseline-direct", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (d, dir) = baseline(base, &records);
                    let _ = std::fs::remove_dir_all(dir);
                    results
                        .lock()
                        .unwrap()
                        .entry((mix_name.to_string(), "baseline".into()))
                        .or_default()
                        .push(d);
                    total += d;
                }
                total
            })
        });
        let (_, reference) = baseline(base, &records);
        for (ordering, partitions) in ORDERINGS
            .iter()
            .flat_map(|&o| PARTITIONS.map(|p| (o, p)))
            .filter(|&(o, p)| selected(mix_name, Some(o), Some(p)))
        {
            let (_, records, _) = mixes(partitions, ordering).swap_remove(mix_index);
            let mut cfg = KafkaConfig::new(
                common::brokers(),
                common::unique_topic(&format!("bench-{mix_name}-{partitions}")),
            );
            cfg.topic_config
                .push(("max.message.bytes".into(), "8388608".into()));
            cfg.properties
                .push(("message.max.bytes".into(), "8388608".into()));
            cfg.ensure_topic(partitions, 1).expect("bench topic");
            common::produce(&common::kafka_sink(&cfg), &records);
            // One thread, one per core, one per partition.
            let mut thread_counts = vec![1, cores, partitions as usize];
            thread_counts.sort();
            thread_counts.dedup();
            for threads in thread_counts {
                // Correctness first: the replica equals the baseline.
                let (_, dir) = replay(base, &cfg, threads);
                common::assert_trees_equal(
                    &reference,
                    &dir,
                    &format!("{mix_name} {} p{partitions} t{threads}", ordering.label()),
                );
                let _ = std::fs::remove_dir_all(dir);
                let label = format!("{} p{partitions}-t{threads}", ordering.label());
                g.bench_with_input(
                    BenchmarkId::new("slave", &label),
                    &threads,
                    |b, &threads| {
                        b.iter_custom(|iters| {
                            let mut total = Duration::ZERO;
                            for _ in 0..iters {
                                let (d, dir) = replay(base, &cfg, threads);
                                let _ = std::fs::remove_dir_all(dir);
                                results
                                    .lock()
                                    .unwrap()
                                    .entry((mix_name.to_string(), label.clone()))
                                    .or_default()
                                    .push(d);
                                total += d;
                            }
                            total
                        })
                    },
                );
            }
            if partitions == SCALING_PARTITIONS {
                let runs = paired_scaling(base, &cfg, partitions as usize);
                paired.insert(
                    (mix_name.to_string(), ordering.label(), partitions as usize),
                    runs,
                );
            }
            let _ = cfg.delete_topic();
        }
        let _ = std::fs::remove_dir_all(reference);
        g.finish();
    }
    c.final_summary();
    report(&results, &meta, cores, &paired);
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn report(results: &Results, meta: &BTreeMap<String, (u64, u64)>, cores: usize, paired: &Paired) {
    let results = results.lock().unwrap();
    let mut out = format!(
        "Slave apply throughput from a pre-filled topic (median of the runs), {cores} cores, scale {}\n\n\
         | mix | config | records | median time | ops/s | MB/s | ratio to baseline |\n\
         |-----|--------|---------|-------------|-------|------|-------------------|\n",
        scale()
    );
    for (mix, (n, bytes)) in meta {
        let Some(base) = results.get(&(mix.clone(), "baseline".into())) else {
            continue;
        };
        let base = median(base);
        // Baseline first, then by ordering, partitions and threads.
        let order = |label: &str| -> (usize, u32, u32) {
            let rank = ORDERINGS
                .iter()
                .position(|o| label.starts_with(&o.label()))
                .map_or(0, |i| i + 1);
            let config = label.rsplit(' ').next().unwrap_or_default();
            let mut it = config
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap_or(0));
            (rank, it.next().unwrap_or(0), it.next().unwrap_or(0))
        };
        let mut runs_of: Vec<_> = results.iter().filter(|((m, _), _)| m == mix).collect();
        runs_of.sort_by_key(|((_, label), _)| order(label));
        for ((_, label), runs) in runs_of {
            let t = median(runs);
            let secs = t.as_secs_f64();
            out.push_str(&format!(
                "| {mix} | {} | {n} | {:.3} s | {:.0} | {:.1} | {:.2} |\n",
                if label == "baseline" {
                    "baseline (direct, no Kafka)"
                } else {
                    label
                },
                secs,
                *n as f64 / secs,
                *bytes as f64 / secs / 1e6,
                base.as_secs_f64() / secs,
            ));
        }
    }
    out.push_str(&report_paired(paired));
    println!("\n{out}");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafkafs-bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("apply.md"), out);
}

/// The thread-scaling table: medians of the paired replays, and the
/// speed of N threads as a multiple of one thread's (above 1: faster) in
/// each pair: its median, and the middle half of the pairs' ratios.
fn report_paired(paired: &Paired) -> String {
    if paired.is_empty() {
        return String::new();
    }
    let pairs = paired.values().next().map_or(0, |(one, _)| one.len());
    let mut out = format!(
        "\nThread scaling, {pairs} pairs of replays alternating which goes first \
         (median times; speed of N threads ÷ speed of 1 thread in each pair: the median \
         and the middle half of the pairs)\n\n\
         | mix | ordering | partitions | 1 thread | N threads | N ÷ 1 | middle half of pairs |\n\
         |-----|----------|------------|----------|-----------|-------|----------------------|\n"
    );
    for ((mix, ordering, n), (one, many)) in paired {
        let mut ratios: Vec<f64> = one
            .iter()
            .zip(many)
            .map(|(a, b)| a.as_secs_f64() / b.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
        let (m1, mn) = (median(one), median(many));
        out.push_str(&format!(
            "| {mix} | {ordering} | {n} | {:.3} s | {:.3} s (t{n}) | {:.2} | {:.2}–{:.2} |\n",
            m1.as_secs_f64(),
            mn.as_secs_f64(),
            at(0.5),
            at(0.25),
            at(0.75),
        ));
    }
    out
}

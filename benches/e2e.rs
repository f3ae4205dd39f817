//! End-to-end comparison, side by side on one machine and one filesystem
//! (a tmpfs mounted for the run, so the disk's noise stays out):
//! the native directory, bindfs (a plain FUSE passthrough), the kafkafs
//! master with 1 and 8 partitions (real broker, a slave following each
//! topic), and lsyncd replicating a native directory to a second one.
//!
//!   cargo bench --bench e2e            (KAFKAFS_BENCH_ONLY to pick a workload
//!                                       and systems)
//!
//! Workloads: untar of a tree of small files (KAFKAFS_BENCH_FILES, default
//! 10000), one sequential write (KAFKAFS_BENCH_BIG_MB, default 1024 MiB,
//! fsync at the end), a rename storm (KAFKAFS_BENCH_RENAMES, default 10000).
//! Each system runs each workload KAFKAFS_BENCH_RUNS times (default 5), one
//! round of every system after the other; the table shows the median run
//! and the range. Figures: wall time and its ratio to native and to
//! bindfs (of the medians); for kafkafs
//! the slave's convergence time after the workload ends and the
//! replication lag (record time on the master to applied on the slave)
//! p50/p99; for lsyncd its convergence time. Writes the table to
//! target/kafkafs-bench/e2e.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafkafs::master::durability::Durability;
use rand::{Rng, SeedableRng};

/// `KAFKAFS_BENCH_ONLY=<workload>[,<system>...]` limits a run to one
/// workload and, if named, some systems (native and bindfs always run:
/// they are the baselines), e.g. `untar,kafkafs-1p-fsync`.
fn selected(workload: &str, system: Option<&str>) -> bool {
    let Ok(only) = std::env::var("KAFKAFS_BENCH_ONLY") else {
        return true;
    };
    let mut it = only.split(',');
    if it.next().is_some_and(|w| w != workload) {
        return false;
    }
    let systems: Vec<&str> = it.collect();
    match system {
        Some(sys) => systems.is_empty() || systems.contains(&sys),
        None => true,
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[derive(Default, Clone)]
struct Row {
    secs: f64,
    converge: Option<f64>,
    /// Records in the topic after the run (kafkafs only): the workload's,
    /// its set-up's and the master's start.
    records: Option<i64>,
    lag_p50: Option<Duration>,
    lag_p99: Option<Duration>,
    /// Mean time of each stage of a mutating call (kafkafs only).
    profile: Vec<(&'static str, f64)>,
}

impl Row {
    /// A baseline's row: its wall time alone.
    fn timed(secs: f64) -> Row {
        Row {
            secs,
            ..Row::default()
        }
    }
}

/// The stages of a mutating call, from the master's histograms: name,
/// metric.
const STAGES: [(&str, &str); 5] = [
    (
        "arrival to keys held (dispatch, conflicts)",
        "kafkafs_call_queued_seconds",
    ),
    (
        "handed to the producer to acknowledged",
        "kafkafs_journal_ack_seconds",
    ),
    (
        "acknowledged to applied (applier queue, apply)",
        "kafkafs_call_applying_seconds",
    ),
    ("applied to answered", "kafkafs_call_replying_seconds"),
    ("whole call (arrival to answer)", "kafkafs_call_seconds"),
];

/// Mean of each stage over the run, from `_sum / _count`.
fn profile(metrics: &str) -> Vec<(&'static str, f64)> {
    STAGES
        .iter()
        .filter_map(|(what, name)| {
            let sum = common::metric(metrics, &format!("{name}_sum"))?;
            let count = common::metric(metrics, &format!("{name}_count"))?;
            (count > 0.0).then(|| (*what, sum / count))
        })
        .collect()
}

fn make_tarball(dir: &Path, files: u64) -> PathBuf {
    let src = dir.join("tree");
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for i in 0..files {
        let d = src.join(format!("dir{:03}/sub{}", i / 100, i % 3));
        std::fs::create_dir_all(&d).unwrap();
        let len = rng.random_range(0..4096);
        let body: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(d.join(format!("file{i}.txt")), body).unwrap();
        if i % 50 == 0 {
            std::os::unix::fs::symlink(format!("file{i}.txt"), d.join(format!("link{i}"))).unwrap();
        }
        if i % 97 == 0 {
            std::fs::hard_link(d.join(format!("file{i}.txt")), d.join(format!("hard{i}"))).unwrap();
        }
    }
    let tar = dir.join("tree.tar");
    common::run(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
    );
    tar
}

/// The three workloads, run in `dir` (inside the filesystem under test).
fn untar(dir: &Path, tar: &Path) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    common::run(Command::new("tar").arg("-C").arg(dir).arg("-xf").arg(tar));
    t.elapsed().as_secs_f64()
}

fn seq_write(dir: &Path, mb: u64) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(dir.join("big")).unwrap();
    for _ in 0..mb {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    t.elapsed().as_secs_f64()
}

fn rename_storm(dir: &Path, renames: u64) -> f64 {
    let files = (renames / 10).max(1);
    for d in 0..10 {
        std::fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
    }
    for i in 0..files {
        std::fs::write(dir.join(format!("d0/f{i}")), b"x").unwrap();
    }
    let t = Instant::now();
    for round in 0..10u64 {
        for i in 0..files {
            let from = dir.join(format!("d{round}/f{i}"));
            let to = dir.join(format!("d{}/f{i}", (round + 1) % 10));
            std::fs::rename(from, to).unwrap();
        }
    }
    t.elapsed().as_secs_f64()
}

const WORKLOADS: [&str; 3] = ["untar", "seq-write", "rename-storm"];

fn run_workload(name: &str, dir: &Path, tar: &Path) -> f64 {
    let mb = env_num("KAFKAFS_BENCH_BIG_MB", 1024);
    let renames = env_num("KAFKAFS_BENCH_RENAMES", 10_000);
    match name {
        "untar" => untar(dir, tar),
        "seq-write" => seq_write(dir, mb),
        _ => rename_storm(dir, renames),
    }
}

fn bindfs_mount(src: &Path, mnt: &Path) {
    std::fs::create_dir_all(src).unwrap();
    std::fs::create_dir_all(mnt).unwrap();
    common::run(Command::new("bindfs").arg(src).arg(mnt));
}

fn unmount(mnt: &Path) {
    let _ = Command::new("fusermount3").arg("-u").arg(mnt).status();
}

/// A kafkafs configuration in the table.
struct Setup {
    name: &'static str,
    partitions: u32,
    durability: Durability,
    /// A slave follows the topic during the workload.
    slave: bool,
}

const SETUPS: [Setup; 4] = [
    Setup {
        name: "kafkafs-1p",
        partitions: 1,
        durability: Durability::Journal,
        slave: true,
    },
    Setup {
        name: "kafkafs-8p",
        partitions: 8,
        durability: Durability::Journal,
        slave: true,
    },
    Setup {
        name: "kafkafs-1p-fsync",
        partitions: 1,
        durability: Durability::Fsync,
        slave: true,
    },
    Setup {
        name: "kafkafs-1p-fsync-noslave",
        partitions: 1,
        durability: Durability::Fsync,
        slave: false,
    },
];

/// A kafkafs master (real broker), with a slave following its topic (or
/// started after the workload); returns the wall time, the slave's
/// convergence time after the workload ended and its lag.
fn kafkafs_run(dir: &Path, setup: &Setup, workload: &str, tar: &Path) -> Row {
    let partitions = setup.partitions;
    let cfg = common::kafka_topic(&format!("e2e-{workload}-{}", setup.name), partitions);
    let scratch = tempfile::Builder::new()
        .prefix("kafkafs")
        .tempdir_in(dir)
        .unwrap();
    let m = common::Mounted::with_journal_in(scratch, Arc::new(cfg), partitions, |c| {
        c.durability = setup.durability;
    });
    let replica = m.dir.path().join("replica");
    std::fs::create_dir_all(&replica).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let follow = || {
        let (replica, stop, journal) = (replica.clone(), stop.clone(), m.journal.clone());
        std::thread::spawn(move || {
            let mut c = kafkafs::slave::SlaveConfig::new(&replica, journal.topic());
            c.threads = partitions as usize;
            kafkafs::slave::run(&c, journal.source().unwrap(), stop).unwrap()
        })
    };
    let slave = setup.slave.then(follow);
    let secs = run_workload(workload, &m.path(workload), tar);
    let profile = profile(&m.master().pipeline().render_metrics());
    // Convergence: the master's window drains (fsync mode), then the
    // slave's ledger reaches every partition's end.
    let end = Instant::now();
    let pipeline = m.master().pipeline();
    while pipeline.unacknowledged().is_some_and(|(n, _)| n > 0) {
        assert!(
            end.elapsed() < Duration::from_secs(600),
            "never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let slave = slave.unwrap_or_else(follow);
    let source = m.journal.source().unwrap();
    let highs: Vec<i64> = (0..partitions)
        .map(|p| source.watermarks(p).unwrap().1)
        .collect();
    let sd = kafkafs::replica::checkpoint::StateDir::open(&replica).unwrap();
    loop {
        let (_, slots) = sd.open_ledger(partitions).unwrap();
        let done = slots
            .iter()
            .zip(&highs)
            .all(|(s, h)| s.map(|s| s.position.next_offset).unwrap_or(0) >= *h);
        if done {
            break;
        }
        assert!(
            end.elapsed() < Duration::from_secs(3600),
            "slave never converged"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let converge = end.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let report = slave.join().unwrap();
    common::assert_trees_equal(&m.data, &replica, &format!("{workload} on {}", setup.name));
    Row {
        secs,
        converge: Some(converge),
        records: Some(highs.iter().sum()),
        lag_p50: report.lag_p50,
        lag_p99: report.lag_p99,
        profile,
    }
}

/// What rsync as lsyncd runs it replicates: names, types, content, symlink
/// targets (not modes, owners, times or hard links).
fn lsyncd_equal(a: &Path, b: &Path) -> bool {
    let (Ok(x), Ok(y)) = (kafkafs::tree::snapshot(a), kafkafs::tree::snapshot(b)) else {
        return false;
    };
    type Projection = BTreeMap<Vec<u8>, (char, Option<(u64, u64)>, Option<Vec<u8>>)>;
    let proj = |t: &kafkafs::tree::Tree| -> Projection {
        t.nodes
            .iter()
            .filter(|(k, _)| !k.is_empty())
            .map(|(k, n)| (k.clone(), (n.kind, n.content, n.target.clone())))
            .collect()
    };
    proj(&x) == proj(&y)
}

fn lsyncd_run(dir: &Path, workload: &str, tar: &Path) -> Row {
    let src = dir.join(format!("lsyncd-src-{workload}"));
    let dst = dir.join(format!("lsyncd-dst-{workload}"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let log = dir.join(format!("lsyncd-{workload}.log"));
    let mut child: Child = Command::new("lsyncd")
        .args(["-nodaemon", "-delay", "0", "-logfile"])
        .arg(&log)
        .arg("-rsync")
        .arg(&src)
        .arg(&dst)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("lsyncd (apt install lsyncd)");
    // Wait for its start-up sync.
    let t0 = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("finished")
    {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "lsyncd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = run_workload(workload, &src.join(workload), tar);
    let end = Instant::now();
    while !lsyncd_equal(&src, &dst) {
        assert!(
            end.elapsed() < Duration::from_secs(3600),
            "lsyncd never converged"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let converge = end.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    Row {
        secs,
        converge: Some(converge),
        ..Row::default()
    }
}

fn fmt_d(d: Option<Duration>) -> String {
    match d {
        Some(d) if d >= Duration::from_secs(1) => format!("{:.2} s", d.as_secs_f64()),
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1e3),
        None => "-".into(),
    }
}

/// Mean time of each stage of a mutating call during workload `w`, one
/// column per kafkafs configuration.
fn stage_table(rows: &BTreeMap<(String, String), Row>, w: &str) -> String {
    let systems = ["kafkafs-1p", "kafkafs-8p", "kafkafs-1p-fsync"];
    let mut out = format!(
        "\nRequest to reply: mean time of each stage of a mutating call on the master \
         ({w}; default ordering causal; in fsync mode the acknowledgement is off the \
         call's path)\n\n| stage | {} |\n|-------|{}\n",
        systems.join(" | "),
        "---|".repeat(systems.len())
    );
    let none = Vec::new();
    let profiles: Vec<&Vec<(&str, f64)>> = systems
        .iter()
        .map(|sys| {
            rows.get(&(w.to_string(), sys.to_string()))
                .map_or(&none, |r| &r.profile)
        })
        .collect();
    for (what, _) in STAGES {
        let means: Vec<String> = profiles
            .iter()
            .map(|p| {
                p.iter()
                    .find(|(stage, _)| *stage == what)
                    .map(|(_, m)| format!("{:.3} ms", m * 1e3))
                    .unwrap_or_else(|| "-".into())
            })
            .collect();
        out.push_str(&format!("| {what} | {} |\n", means.join(" | ")));
    }
    out
}

/// One run of workload `w` on every selected system: (system, row).
fn run_round(dir: &Path, w: &str, tar: &Path) -> Vec<(String, Row)> {
    let mut rows = Vec::new();
    let native = run_workload(w, &dir.join(format!("native-{w}")), tar);
    rows.push(("native".to_string(), Row::timed(native)));
    let (src, mnt) = (
        dir.join(format!("bindfs-src-{w}")),
        dir.join(format!("bindfs-mnt-{w}")),
    );
    bindfs_mount(&src, &mnt);
    let b = run_workload(w, &mnt.join(w), tar);
    unmount(&mnt);
    rows.push(("bindfs".to_string(), Row::timed(b)));
    for setup in SETUPS.iter().filter(|s| selected(w, Some(s.name))) {
        rows.push((setup.name.to_string(), kafkafs_run(dir, setup, w, tar)));
    }
    if selected(w, Some("lsyncd")) {
        rows.push(("lsyncd".to_string(), lsyncd_run(dir, w, tar)));
    }
    // The baselines' trees go (a 1 GiB file each, in memory).
    for name in [
        "native",
        "bindfs-src",
        "bindfs-mnt",
        "lsyncd-src",
        "lsyncd-dst",
    ] {
        let _ = std::fs::remove_dir_all(dir.join(format!("{name}-{w}")));
    }
    rows
}

/// The run with the median wall time (the lower middle one of an even
/// count), with its own convergence, lag and profile.
fn median_row(runs: &[Row]) -> Row {
    let mut sorted: Vec<&Row> = runs.iter().collect();
    sorted.sort_by(|a, b| a.secs.total_cmp(&b.secs));
    sorted[(sorted.len() - 1) / 2].clone()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // useful: the harness always runs at the configured sizes.
    let files = env_num("KAFKAFS_BENCH_FILES", 10_000);
    let tmp = tempfile::Builder::new()
        .prefix("kafkafs-e2e")
        .tempdir()
        .unwrap();
    // Every system works in one tmpfs of its own: the machine's disk (a
    // virtual disk shared with other machines) made native untar vary
    // 0.14-3.1 s between consecutive runs, which no ratio survives.
    let fs = common::Tmpfs::mount(&tmp.path().join("fs"), "16g");
    let dir = fs.path.as_path();
    let tar = make_tarball(dir, files);
    let runs = env_num("KAFKAFS_BENCH_RUNS", 5).max(1);
    let mut all: BTreeMap<(String, String), Vec<Row>> = BTreeMap::new();
    for w in WORKLOADS.into_iter().filter(|w| selected(w, None)) {
        // Every system once per round, the rounds one after the other: a
        // drift of the machine falls on every system alike.
        for round in 1..=runs {
            for (sys, row) in run_round(dir, w, &tar) {
                all.entry((w.into(), sys)).or_default().push(row);
            }
            eprintln!("e2e: {w} round {round}/{runs} done");
        }
    }
    let rows: BTreeMap<(String, String), Row> = all
        .iter()
        .map(|(k, v)| (k.clone(), median_row(v)))
        .collect();
    let spread = |w: &str, sys: &str| {
        let v = &all[&(w.to_string(), sys.to_string())];
        let secs = v.iter().map(|r| r.secs);
        let (lo, hi) = secs.fold((f64::MAX, 0f64), |(lo, hi), s| (lo.min(s), hi.max(s)));
        format!("{lo:.3}–{hi:.3} s")
    };

    let mut out = format!(
        "End-to-end, {} small files, {} MiB sequential write, {} renames\n\n\
         Median of {} runs of each system (interleaved); ratios of medians.\n\n\
         | workload | system | wall time (median) | all runs | ÷ native | ÷ bindfs | records | replica converged after | lag p50 | lag p99 |\n\
         |----------|--------|--------------------|----------|----------|----------|---------|-------------------------|---------|---------|\n",
        files,
        env_num("KAFKAFS_BENCH_BIG_MB", 1024),
        env_num("KAFKAFS_BENCH_RENAMES", 10_000),
        runs
    );
    for w in WORKLOADS.into_iter().filter(|w| selected(w, None)) {
        let native = rows[&(w.to_string(), "native".to_string())].secs;
        let bindfs = rows[&(w.to_string(), "bindfs".to_string())].secs;
        let systems = ["native", "bindfs"]
            .into_iter()
            .chain(SETUPS.iter().map(|s| s.name))
            .chain(["lsyncd"]);
        for sys in systems {
            let Some(r) = rows.get(&(w.to_string(), sys.to_string())) else {
                continue;
            };
            out.push_str(&format!(
                "| {w} | {sys} | {:.3} s | {} | {:.2} | {:.2} | {} | {} | {} | {} |\n",
                r.secs,
                spread(w, sys),
                r.secs / native,
                r.secs / bindfs,
                r.records
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.converge
                    .map(|c| format!("{c:.3} s"))
                    .unwrap_or_else(|| "-".into()),
                fmt_d(r.lag_p50),
                fmt_d(r.lag_p99),
            ));
        }
    }
    for w in ["untar", "rename-storm"] {
        if selected(w, None) {
            out.push_str(&stage_table(&rows, w));
        }
    }
    println!("\n{out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafkafs-bench");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(target.join("e2e.md"), out);
}

//! A master serving a large tree under a small open-file limit: creates
//! KAFKAFS_BENCH_MANY files (default 1 000 000, in directories of 1 000,
//! four writers) through a `kafkafs master` process started with
//! `ulimit -n 1024` (real broker), then stats every one of them again.
//! Reports wall time against the same work on the native directory, and
//! the master's descriptors (peak, sampled) and memory (peak RSS).
//!
//!   KAFKAFS_TEST_BROKERS=127.0.0.1:19092 cargo bench --bench many_files
//!
//! Writes the table to target/kafkafs-bench/many_files.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");
const PER_DIR: u64 = 1000;
const WRITERS: u64 = 4;
const NOFILE: u64 = 1024;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Creates `files` empty files under `root` with WRITERS threads, then
/// stats them all; returns (create seconds, stat seconds).
fn tree(root: &Path, files: u64) -> (f64, f64) {
    let dirs = files.div_ceil(PER_DIR);
    for d in 0..dirs {
        std::fs::create_dir_all(root.join(format!("d{d}"))).unwrap();
    }
    let run = |op: fn(&Path)| {
        let t = Instant::now();
        let workers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let root = root.to_path_buf();
                std::thread::spawn(move || {
                    for i in (w..files).step_by(WRITERS as usize) {
                        op(&root.join(format!("d{}/f{i}", i / PER_DIR)));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    let create = run(|p| drop(std::fs::File::create(p).unwrap()));
    let stat = run(|p| {
        std::fs::symlink_metadata(p).unwrap();
    });
    (create, stat)
}

fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0)
}

fn main() {
    let files = env_num("KAFKAFS_BENCH_MANY", 1_000_000);
    let tmp = tempfile::Builder::new()
        .prefix("kafkafs-many")
        .tempdir()
        .unwrap();
    let dir: PathBuf = std::fs::canonicalize(tmp.path()).unwrap();
    let (native_create, native_stat) = tree(&dir.join("native"), files);

    let (data, mnt) = (dir.join("data"), dir.join("mnt"));
    std::fs::create_dir_all(&mnt).unwrap();
    let topic = common::unique_topic("many");
    let mut master = Command::new("prlimit")
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(BIN)
        .args(["master", "--broker", &common::brokers(), "--topic", &topic])
        .args(["--partitions", "4"])
        .arg(&data)
        .arg(&mnt)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_master_mounted(&mnt, &mut master, Duration::from_secs(120));
    let pid = master.id();
    let peak_fds = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak_fds.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(open_fds(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let (create, stat) = tree(&mnt, files);
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let rss_peak = status_kib(pid, "VmHWM:");
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = master.wait().unwrap();
    assert!(status.success(), "master exited with {status}");

    let out = format!(
        "Many files: {files} empty files in directories of {PER_DIR}, {WRITERS} writers, \
         master under `ulimit -n {NOFILE}`, 4 partitions, journal durability, causal ordering\n\n\
         | phase | native | kafkafs master | ÷ native |\n\
         |-------|--------|----------------|----------|\n\
         | create | {native_create:.1} s | {create:.1} s ({:.0} files/s) | {:.1} |\n\
         | stat all again | {native_stat:.1} s | {stat:.1} s | {:.1} |\n\n\
         Master process: peak open descriptors {} (limit {NOFILE}), peak RSS {} MiB \
         ({:.0} bytes per file).\n",
        files as f64 / create,
        create / native_create,
        stat / native_stat,
        peak_fds.load(Ordering::SeqCst),
        rss_peak / 1024,
        rss_peak as f64 * 1024.0 / files as f64,
    );
    println!("\n{out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafkafs-bench");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(target.join("many_files.md"), out);
}

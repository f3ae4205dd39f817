//! Adopting an existing tree: `kafkafs master --import` of a generated
//! tree (KAFKAFS_BENCH_IMPORT_FILES small files, default 4 000, in
//! directories of 100, plus 8 files of 4 MiB) with one import thread and
//! with several, against `cp -a` of the same tree in the same run (the
//! baseline: what moving it into the mount by hand would at best cost
//! locally). Times run from the master's start to its mount (the import
//! ends before the mount). Real broker, 8 partitions, journal durability.
//!
//!   KAFKAFS_TEST_BROKERS=127.0.0.1:19092 cargo bench --bench import
//!
//! Writes the table to target/kafkafs-bench/import.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");
const PER_DIR: u64 = 100;
const BIG_FILES: u64 = 8;
const BIG: usize = 4 << 20;
const PARTITIONS: &str = "8";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn make_tree(root: &Path, files: u64) -> u64 {
    let mut bytes = 0;
    for i in 0..files {
        let dir = root.join(format!("d{}", i / PER_DIR));
        std::fs::create_dir_all(&dir).unwrap();
        let body = format!("file {i}\n").repeat(40);
        bytes += body.len() as u64;
        std::fs::write(dir.join(format!("f{i}")), body).unwrap();
    }
    let big: Vec<u8> = (0..BIG).map(|i| (i % 253) as u8).collect();
    for i in 0..BIG_FILES {
        std::fs::write(root.join(format!("big{i}")), &big).unwrap();
        bytes += BIG as u64;
    }
    bytes
}

/// Seconds from `kafkafs master --import` to its mount.
fn import(original: &Path, dir: &Path, jobs: u32) -> f64 {
    let (data, mnt) = (
        dir.join(format!("data-{jobs}")),
        dir.join(format!("mnt-{jobs}")),
    );
    common::run(Command::new("cp").arg("-a").arg(original).arg(&data));
    std::fs::create_dir_all(&mnt).unwrap();
    let topic = common::unique_topic("bench-import");
    let started = Instant::now();
    let mut master = Command::new(BIN)
        .args(["master", "--broker", &common::brokers(), "--topic", &topic])
        .args(["--partitions", PARTITIONS, "--import"])
        .args(["--import-jobs", &jobs.to_string()])
        .arg(&data)
        .arg(&mnt)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_master_mounted(&mnt, &mut master, std::time::Duration::from_secs(600));
    let secs = started.elapsed().as_secs_f64();
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    assert!(master.wait().unwrap().success());
    common::assert_trees_equal(original, &data, "the imported data-root");
    secs
}

fn main() {
    let files = env_num("KAFKAFS_BENCH_IMPORT_FILES", 4000);
    let tmp = tempfile::Builder::new()
        .prefix("kafkafs-import")
        .tempdir()
        .unwrap();
    let dir = std::fs::canonicalize(tmp.path()).unwrap();
    let original = dir.join("original");
    let bytes = make_tree(&original, files);
    let entries = files + files.div_ceil(PER_DIR) + BIG_FILES;

    let t = Instant::now();
    common::run(
        Command::new("cp")
            .arg("-a")
            .arg(&original)
            .arg(dir.join("copy")),
    );
    let baseline = t.elapsed().as_secs_f64();
    let mut rows = format!(
        "| `cp -a` (baseline, no Kafka) | {baseline:.2} s | {:.0} | {:.1} | 1.00 |\n",
        entries as f64 / baseline,
        bytes as f64 / 1048576.0 / baseline
    );
    for jobs in [1, 4, 8, 16] {
        let secs = import(&original, &dir, jobs);
        rows += &format!(
            "| import, {jobs} thread{} | {secs:.2} s | {:.0} | {:.1} | {:.2} |\n",
            if jobs == 1 { "" } else { "s" },
            entries as f64 / secs,
            bytes as f64 / 1048576.0 / secs,
            baseline / secs
        );
    }
    let out = format!(
        "Import: {entries} entries ({files} small files in directories of {PER_DIR}, \
         {BIG_FILES} files of {} MiB), {:.1} MiB; {PARTITIONS} partitions, journal \
         durability, causal ordering\n\n\
         | run | time | entries/s | MiB/s | speed ÷ baseline |\n\
         |-----|------|-----------|-------|------------------|\n{rows}",
        BIG >> 20,
        bytes as f64 / 1048576.0
    );
    println!("\n{out}");
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/kafkafs-bench");
    let _ = std::fs::create_dir_all(&target);
    let _ = std::fs::write(target.join("import.md"), out);
}

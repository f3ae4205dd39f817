//! Third-party POSIX conformance: the Rust pjdfstest (about 400 cases) on
//! the mount, with 0 failures outside the reviewed skip list
//! (tests/pjdfstest-skip.txt); afterwards a slave equals the data-root.
//! Install the runner with `cargo install pjdfstest` (scripts/test.sh does).

mod common;

use std::path::Path;
use std::process::Command;

use common::Mounted;

fn pjdfstest_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("PJDFSTEST") {
        return p.into();
    }
    let home = std::env::var("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo"));
    let bin = home.join("bin/pjdfstest");
    assert!(
        bin.exists(),
        "pjdfstest is not installed: run `cargo install pjdfstest --version 0.2.2 --locked` \
         (scripts/test.sh does it)"
    );
    bin
}

#[test]
fn pjdfstest_passes_on_the_mount() {
    if common::skip(common::Need::Kafka, "pjdfstest_passes_on_the_mount") {
        return;
    }
    let skips: Vec<String> = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pjdfstest-skip.txt"),
    )
    .unwrap()
    .lines()
    .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
    .collect();
    let m = Mounted::kafka("pjdfstest", 1);
    let conf = m.dir.path().join("pjdfstest.toml");
    // naptime: longer than the timestamp granularity of the data-root.
    std::fs::write(
        &conf,
        format!(
            "[features]\nposix_fallocate = {{}}\n[settings]\nnaptime = 0.05\nallow_remount = false\n\
             expected_failures = {skips:?}\n[dummy_auth]\nentries = [[\"nobody\", \"nogroup\"], [\"daemon\", \"daemon\"]]\n"
        ),
    )
    .unwrap();
    let out = Command::new(pjdfstest_bin())
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(&m.mnt)
        .output()
        .expect("running pjdfstest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .find(|l| l.starts_with("Summary:"))
        .map(str::to_string)
        .unwrap_or_default();
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with("FAILED"))
        .collect();
    assert!(
        out.status.success() && summary.contains(" 0 failed"),
        "pjdfstest: {summary}\nfailed cases:\n{}",
        failed.join("\n")
    );
    let passed: u32 = summary
        .split(',')
        .find(|s| s.contains("passed"))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(passed > 300, "pjdfstest ran too few cases: {summary}");
    eprintln!("pjdfstest on the kafkafs mount: {summary}");
    m.assert_converged("after pjdfstest");
}

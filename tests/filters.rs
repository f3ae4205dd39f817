//! Partial replicas (`kafkafs slave --include/--exclude`) of a FUSE
//! master on a real broker: the replica equals the master's tree cut to
//! the filter — names, contents, modes, owners, links, times of the
//! directories whose out-of-view entries changed — a rename out of the
//! view removes the entry, one into it is reported as a gap (the content
//! never reached the replica), and a later start with another filter is
//! refused without touching the replica.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::Mounted;

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

fn slave(
    cfg: &kafkafs::journal::kafka::KafkaConfig,
    replica: &Path,
    filter: &[&str],
) -> std::process::Output {
    Command::new(BIN)
        .args([
            "slave",
            "--broker",
            cfg.broker_list(),
            "--topic",
            &cfg.topic,
        ])
        .args(["--exit-when-caught-up", "--threads", "4"])
        .args(filter)
        .arg(replica)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Removes `rel` beneath `root` (a subtree for a directory), keeping the
/// times of the directory it was in.
fn prune(root: &Path, rel: &str) {
    let path = root.join(rel);
    let parent = path.parent().unwrap().to_path_buf();
    let before = fs::symlink_metadata(&parent).unwrap();
    if fs::symlink_metadata(&path).unwrap().is_dir() {
        fs::remove_dir_all(&path).unwrap();
    } else {
        fs::remove_file(&path).unwrap();
    }
    let times = [
        libc::timespec {
            tv_sec: before.atime(),
            tv_nsec: before.atime_nsec(),
        },
        libc::timespec {
            tv_sec: before.mtime(),
            tv_nsec: before.mtime_nsec(),
        },
    ];
    let c = CString::new(parent.as_os_str().as_bytes()).unwrap();
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(r, 0, "restoring the times of {parent:?}");
}

#[test]
fn a_partial_replica_holds_its_part_of_the_tree() {
    if common::skip(
        common::Need::Kafka,
        "a_partial_replica_holds_its_part_of_the_tree",
    ) {
        return;
    }
    let cfg = common::kafka_topic("filters", 4);
    let m = Mounted::with_journal(Arc::new(cfg.clone()), 4, |_| {});
    for d in [
        "docs/sub",
        "other",
        "projects/a/src",
        "projects/a/lib",
        "projects/b",
    ] {
        fs::create_dir_all(m.path(d)).unwrap();
    }
    for (f, body) in [
        ("docs/a", "a"),
        ("docs/b", "b"),
        ("docs/sub/c", "c"),
        ("docs/x.tmp", "scratch"),
        ("other/o1", "o1"),
        ("other/o2", "o2"),
        ("projects/a/src/m.rs", "fn main() {}"),
        ("projects/a/lib/l.rs", "// lib"),
        ("projects/b/readme", "b"),
        ("top", "top"),
    ] {
        fs::write(m.path(f), body).unwrap();
    }
    fs::set_permissions(
        m.path("docs/a"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(m.path("docs/sub/c"), Some(1000), Some(1000)).unwrap();
    fs::write(m.path("docs/b"), "b, longer").unwrap();
    // Across the view's edge, both ways, and within it.
    fs::rename(m.path("docs/b"), m.path("other/b")).unwrap();
    fs::rename(m.path("other/o1"), m.path("docs/o1")).unwrap();
    fs::rename(m.path("docs/a"), m.path("docs/a2")).unwrap();
    fs::rename(m.path("docs/sub"), m.path("other/sub")).unwrap();
    fs::create_dir(m.path("docs/sub2")).unwrap();
    fs::write(m.path("docs/sub2/d"), "d").unwrap();
    std::os::unix::fs::symlink("a2", m.path("docs/link")).unwrap();
    fs::hard_link(m.path("docs/a2"), m.path("docs/a2-link")).unwrap();
    fs::hard_link(m.path("other/o2"), m.path("docs/o2-link")).unwrap();
    fs::write(m.path("docs/y.tmp"), "scratch").unwrap();
    fs::remove_file(m.path("docs/x.tmp")).unwrap();
    fs::write(m.path("projects/a/src/sub.tmp"), "scratch").unwrap();
    m.assert_converged("the master before the partial replica");

    let dir = common::tempdir();
    let replica = dir.path().join("replica");
    let filter = [
        "--include",
        "docs",
        "--include",
        "projects/*/src",
        "--exclude",
        "*.tmp",
    ];
    let out = slave(&cfg, &replica, &filter);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");

    // The master's tree cut to the filter, less what came into view
    // without its content (and with the times its directories had).
    let expected = dir.path().join("expected");
    common::run(Command::new("cp").arg("-a").arg(&m.data).arg(&expected));
    for rel in [
        ".kafkafs",
        "other",
        "top",
        "projects/a/lib",
        "projects/b/readme",
        "docs/y.tmp",
        "projects/a/src/sub.tmp",
        "docs/o1",
        "docs/o2-link",
    ] {
        prune(&expected, rel);
    }
    common::assert_trees_equal(&expected, &replica, "a partial replica");

    // The two gaps, each named with its record's position, and listed.
    for gap in ["docs/o1", "docs/o2-link"] {
        assert!(
            err.lines().any(|l| l.contains(&format!("`{gap}`"))
                && l.contains(&cfg.topic)
                && l.contains("offset")),
            "no warning for {gap}:\n{err}"
        );
    }
    let listed = fs::read_to_string(replica.join(".kafkafs/filter-gaps")).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");

    // Another filter later: refused, the replica untouched.
    fs::write(m.path("docs/late"), "late").unwrap();
    let out = slave(&cfg, &replica, &["--include", "docs"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a different filter was accepted");
    assert!(
        err.contains("was built with include docs, include projects/*/src, exclude *.tmp")
            && err.contains("the same --include/--exclude"),
        "{err}"
    );
    assert!(!replica.join("docs/late").exists());
    common::assert_trees_equal(
        &expected,
        &replica,
        "a partial replica after a refused start",
    );

    // The same filter again: it follows on.
    let out = slave(&cfg, &replica, &filter);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(replica.join("docs/late")).unwrap(), b"late");

    // Refused before anything is made: a bad pattern (a usage error, 2),
    // and a filter with snapshots (whole trees).
    let fresh = dir.path().join("fresh");
    let out = slave(&cfg, &fresh, &["--include", "docs/../etc"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`docs/../etc`"));
    let snaps = dir.path().join("snaps").display().to_string();
    let out = slave(
        &cfg,
        &fresh,
        &[
            "--include",
            "docs",
            "--snapshot-every",
            "1m",
            "--snapshot-dir",
            &snaps,
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--snapshot-every needs the whole tree"),
        "{err}"
    );
}

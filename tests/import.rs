//! `kafkafs master --import`: an existing tree with every file type, hard
//! links, xattrs, odd names and exact times is journaled; the data-root,
//! the mount and a slave all equal the original; an import killed halfway
//! resumes and still equals it.

mod common;

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mknod(p: &Path, mode: u32, dev: u64) {
    assert_eq!(
        unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) },
        0,
        "{p:?}"
    );
}

fn xattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            cpath(p).as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "{p:?} {name}");
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let ts = [
        libc::timespec {
            tv_sec: sec - 100,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "{p:?}");
}

/// A tree with one of everything; times set last (directories bottom-up).
fn make_tree(root: &Path, extra_files: usize) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir(root.join("sgid")).unwrap();
    fs::write(root.join("a/small"), b"hello").unwrap();
    fs::write(root.join("a/empty"), b"").unwrap();
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("a/b/big"), &big).unwrap();
    fs::write(root.join("a/b/c/deep"), b"deep").unwrap();
    fs::write(root.join("linked"), b"one inode, three names").unwrap();
    fs::hard_link(root.join("linked"), root.join("a/second-name")).unwrap();
    fs::hard_link(root.join("linked"), root.join("a/b/third-name")).unwrap();
    // Many names of one inode side by side: concurrent import threads meet
    // them at once (one imports the inode, the others wait to link it).
    fs::create_dir(root.join("names")).unwrap();
    fs::write(root.join("names/n00"), b"one inode, twenty names").unwrap();
    for i in 1..20 {
        fs::hard_link(root.join("names/n00"), root.join(format!("names/n{i:02}"))).unwrap();
    }
    std::os::unix::fs::symlink("a/small", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o640, 0);
    mknod(
        &root.join("null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(&root.join("sock"), libc::S_IFSOCK | 0o600, 0);
    fs::write(root.join("sp ace"), b"s").unwrap();
    fs::write(root.join("new\nline"), b"n").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"bytes-\xff\xfe")), b"b").unwrap();
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    for i in 0..extra_files {
        fs::write(root.join(format!("a/f{i:05}")), format!("file {i}")).unwrap();
    }
    xattr(&root.join("a/small"), "user.note", b"imported");
    xattr(&root.join("a"), "user.dir", b"x");
    xattr(&root.join("linked"), "user.links", b"3");
    common::run(
        Command::new("chown")
            .arg("1000:1000")
            .arg(root.join("setuid")),
    );
    common::run(
        Command::new("chown")
            .arg("-h")
            .arg("42:43")
            .arg(root.join("rel-link")),
    );
    common::run(Command::new("chown").arg("7:7").arg(root.join("a/b")));
    common::run(Command::new("chmod").arg("4755").arg(root.join("setuid")));
    common::run(Command::new("chmod").arg("2775").arg(root.join("sgid")));
    common::run(Command::new("chmod").arg("750").arg(root.join("a/b/c")));
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
            all.push(e.path());
        }
    }
    // Deepest first, so setting a file's times never moves its directory's.
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_times(p, 1_600_000_000 + i as i64, 123_456_789);
    }
    set_times(root, 1_500_000_000, 1);
}

#[test]
fn import_adopts_a_tree_with_everything() {
    if common::skip(common::Need::Kafka, "import_adopts_a_tree_with_everything") {
        return;
    }
    let dir = common::tempdir();
    let original = dir.path().join("original");
    fs::create_dir(&original).unwrap();
    make_tree(&original, 20);
    let prepared = common::tempdir();
    common::run(
        Command::new("cp")
            .arg("-a")
            .arg(&original)
            .arg(prepared.path().join("data")),
    );
    let journal = Arc::new(common::kafka_topic("import", 4));
    let m = common::Mounted::with_journal_in(prepared, journal, 4, |c| c.import = true);
    common::assert_trees_equal(&original, &m.data, "the data-root after the import");
    common::assert_trees_equal(&original, &m.mnt, "the mount after the import");
    assert!(
        !m.data.join(".kafkafs/import").exists(),
        "the staging area is gone"
    );
    let replica = m.replay(4);
    common::assert_trees_equal(&original, &replica, "a slave of the imported tree");
}

/// Kills the master if the test fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_interrupted_import_resumes() {
    if common::skip(common::Need::Kafka, "an_interrupted_import_resumes") {
        return;
    }
    let dir = common::tempdir();
    let original = dir.path().join("original");
    fs::create_dir(&original).unwrap();
    make_tree(&original, 1500);
    let data = dir.path().join("data");
    common::run(Command::new("cp").arg("-a").arg(&original).arg(&data));
    let (mnt, topic) = (
        dir.path().join("mnt"),
        common::unique_topic("import-resume"),
    );
    let master = |extra: &[&str]| {
        Command::new(BIN)
            .args(["master", "--broker", &common::brokers(), "--topic", &topic])
            .args(["--partitions", "2", "--import-jobs", "16"])
            .args(extra)
            .arg(&data)
            .arg(&mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // Killed once part of the tree is journaled.
    let mut first = master(&["--import"]);
    let staged = data.join(".kafkafs/import/a");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "the import never progressed");
        assert!(
            first.try_wait().unwrap().is_none(),
            "the import ended too early"
        );
        let left = fs::read_dir(&staged)
            .map(|d| d.count())
            .unwrap_or(usize::MAX);
        if left < 1200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(&mnt)
        .status();

    // The next start finishes it, then mounts.
    let mut second = Killed(master(&["--import"]));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !common::is_mounted(&mnt) {
        assert!(
            Instant::now() < deadline,
            "the resumed import never mounted"
        );
        assert!(
            second.0.try_wait().unwrap().is_none(),
            "the resumed import failed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    common::assert_trees_equal(&original, &data, "the data-root after a resumed import");
    unsafe { libc::kill(second.0.id() as i32, libc::SIGTERM) };
    assert!(second.0.wait().unwrap().success());
    let replica = dir.path().join("replica");
    common::run(
        Command::new(BIN)
            .args(["slave", "--exit-when-caught-up", "--threads", "2"])
            .args(["--broker", &common::brokers(), "--topic", &topic])
            .arg(&replica)
            .env("RUST_LOG", "warn"),
    );
    common::assert_trees_equal(&original, &replica, "a slave of a resumed import");
}

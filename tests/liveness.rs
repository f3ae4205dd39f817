//! Nothing wedges: calls beyond what the data-root's filesystem can hold
//! are answered at once with a local filesystem's errno and never reach
//! the journal; a record that did reach it with such an effect terminates
//! everywhere; open files behave as on a local filesystem whatever happens
//! to their names; the master's descriptors do not grow with the tree.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{errno_of, Ext4, Mounted, Tmpfs};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

fn setxattr(path: &Path, name: &str, value: &[u8]) -> Result<(), i32> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

fn fallocate(f: &fs::File, offset: i64, len: i64) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, offset, len) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Runs `f`, asserting it fails with `errno` within a second.
#[track_caller]
fn refused_at_once(what: &str, errno: i32, f: impl FnOnce() -> Result<(), i32>) {
    let t = Instant::now();
    let got = f();
    let took = t.elapsed();
    assert_eq!(got, Err(errno), "{what}: expected errno {errno}");
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
}

/// The calls a conformance suite or a careless program makes beyond a
/// small data-root's limits: each answered within a second with the errno
/// ext4 gives, nothing journaled for them, the mount still usable, and a
/// slave converges.
#[test]
fn calls_beyond_the_data_roots_limits_are_answered_at_once() {
    if common::skip(
        common::Need::Kafka,
        "calls_beyond_the_data_roots_limits_are_answered_at_once",
    ) {
        return;
    }
    let dir = common::tempdir();
    let _tmpfs = Tmpfs::mount(&dir.path().join("data"), "64m");
    let journal = Arc::new(common::kafka_topic("limits", 2));
    let m = Mounted::with_journal_in(dir, journal, 2, |c| {
        c.journal_timeout = Duration::from_secs(5)
    });
    let path = m.path("f");
    fs::write(&path, b"content").unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();

    refused_at_once("truncate to 999999999999999", libc::EFBIG, || {
        f.set_len(999_999_999_999_999).map_err(|e| errno_of(&e))
    });
    refused_at_once("pwrite at 2^44 - 4096", libc::EFBIG, || {
        f.write_at(b"x", (1 << 44) - 4096)
            .map(drop)
            .map_err(|e| errno_of(&e))
    });
    refused_at_once("fallocate 2^50", libc::EFBIG, || fallocate(&f, 0, 1 << 50));
    refused_at_once("fallocate 1 TiB", libc::ENOSPC, || {
        fallocate(&f, 0, 1 << 40)
    });
    refused_at_once("setxattr of 8000 bytes", libc::ENOSPC, || {
        setxattr(&path, "user.big", &[7u8; 8000])
    });
    refused_at_once("setxattr in an unknown namespace", libc::EOPNOTSUPP, || {
        setxattr(&path, "foo.bar", b"1")
    });
    refused_at_once("a 300-byte name", libc::ENAMETOOLONG, || {
        fs::create_dir(m.path(&"n".repeat(300))).map_err(|e| errno_of(&e))
    });
    // A write that crosses the largest file size is short, as on ext4.
    let max = (1u64 << 44) - 4096;
    assert_eq!(f.write_at(b"abcd", max - 2).unwrap(), 2);
    f.set_len(7).unwrap();

    // What fits still works, and the mount is fine.
    setxattr(&path, "user.small", &[1u8; 1000]).unwrap();
    fallocate(&f, 0, 1 << 20).unwrap();
    fs::write(m.path("after"), b"still usable").unwrap();
    drop(f);
    m.assert_converged("after refused calls");
}

/// A record whose effect the data-root refuses, already in the journal
/// (written by an older master): the master restarted on it settles its
/// outcome (the same errno on every replica) and mounts; slaves finish.
#[test]
fn a_refused_record_in_the_journal_terminates_on_restart() {
    if common::skip(
        common::Need::Kafka,
        "a_refused_record_in_the_journal_terminates_on_restart",
    ) {
        return;
    }
    let cfg = common::kafka_topic("refused-tail", 2);
    let mut m = Mounted::with_journal(Arc::new(cfg.clone()), 2, |_| {});
    fs::write(m.path("f"), b"data").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    m.stop();

    // Append what an older master would have journaled: a truncate beyond
    // every filesystem's limit, and an xattr in a namespace nobody has.
    let mut source = common::kafka_source(&cfg);
    let last = kafkafs::master::pipeline::read_last(source.as_mut()).unwrap();
    let newest = last.iter().flatten().max_by_key(|(_, r)| r.seq).unwrap();
    let mut seq = newest.1.seq;
    let writer = newest.1.writer.clone();
    let mut pseq: Vec<u64> = last
        .iter()
        .map(|l| l.as_ref().map_or(0, |(_, r)| r.partition_seq))
        .collect();
    let ops = [
        kafkafs::op::Op::Truncate {
            path: kafkafs::op::RelPath::new("f").unwrap(),
            size: 999_999_999_999_999,
        },
        kafkafs::op::Op::SetXattr {
            path: kafkafs::op::RelPath::new("d").unwrap(),
            name: b"foo.bar".to_vec(),
            value: b"1".to_vec(),
            flags: kafkafs::op::XattrFlags::Any,
        },
    ];
    let records: Vec<_> = ops
        .iter()
        .map(|op| {
            let p = kafkafs::partition::partition_for(op.target().as_bytes(), 2);
            seq += 1;
            pseq[p as usize] += 1;
            kafkafs::record::Record {
                writer: writer.clone(),
                seq,
                partition_seq: pseq[p as usize],
                partition: p,
                deps: Vec::new(),
                time: kafkafs::op::Timestamp::now(),
                caller: Default::default(),
                op: op.clone(),
            }
        })
        .collect();
    common::produce(&common::kafka_sink(&cfg), &records);

    let t = Instant::now();
    m.start();
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "restart took {:?}",
        t.elapsed()
    );
    assert_eq!(fs::read(m.path("f")).unwrap(), b"data");
    fs::write(m.path("g"), b"after").unwrap();
    m.assert_converged("after settling refused records");
}

/// An open file behaves as on a local filesystem whatever happens to its
/// name meanwhile: writes, fsyncs and ftruncates racing with the unlink of
/// its last name never fail.
#[test]
fn writes_racing_with_unlink_never_fail() {
    if common::skip(common::Need::Kafka, "writes_racing_with_unlink_never_fail") {
        return;
    }
    let m = Mounted::kafka("unlink-race", 2);
    let mut failures = Vec::new();
    for round in 0..60 {
        let path = m.path(&format!("race{round}"));
        fs::write(&path, b"start").unwrap();
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let writer = std::thread::spawn(move || {
            let mut errors = Vec::new();
            for i in 0..20u64 {
                if let Err(e) = f.write_at(b"0123456789", i * 10) {
                    errors.push(format!("write: {e}"));
                }
                if i % 5 == 0 {
                    if let Err(e) = f.sync_all() {
                        errors.push(format!("fsync: {e}"));
                    }
                    if let Err(e) = f.set_len(i * 5) {
                        errors.push(format!("ftruncate: {e}"));
                    }
                }
            }
            errors
        });
        std::thread::sleep(Duration::from_micros(200 * (round % 10)));
        match round % 3 {
            0 => fs::remove_file(&path).unwrap(),
            1 => fs::rename(&path, m.path(&format!("moved{round}"))).unwrap(),
            _ => {
                fs::write(m.path("other"), b"x").unwrap();
                fs::rename(m.path("other"), &path).unwrap();
            }
        }
        failures.extend(writer.join().unwrap());
    }
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    m.assert_converged("after write/unlink races");
}

/// A master process under an open-file limit of 256 serves 5 000 files:
/// its handles are a bounded cache, not one per inode.
#[test]
fn a_master_with_256_descriptors_serves_5000_files() {
    if common::skip(
        common::Need::Kafka,
        "a_master_with_256_descriptors_serves_5000_files",
    ) {
        return;
    }
    let dir = common::tempdir();
    let (data, mnt, replica) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("replica"),
    );
    let topic = common::unique_topic("nofile");
    let mut master = std::process::Command::new("prlimit")
        .arg("--nofile=256:256")
        .arg(BIN)
        .args(["master", "--broker", &common::brokers(), "--topic", &topic])
        .args(["--partitions", "2"])
        .arg(&data)
        .arg(&mnt)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn master");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !common::is_mounted(&mnt) {
        assert!(Instant::now() < deadline, "master did not mount");
        assert!(master.try_wait().unwrap().is_none(), "master exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    for d in 0..10 {
        let sub = mnt.join(format!("d{d}"));
        fs::create_dir(&sub).unwrap();
        for i in 0..500 {
            fs::write(sub.join(format!("file{i}")), format!("{d}/{i}")).unwrap();
        }
    }
    // Everything is still readable through the mount.
    let mut n = 0;
    for d in 0..10 {
        for e in fs::read_dir(mnt.join(format!("d{d}"))).unwrap() {
            let e = e.unwrap();
            let body = fs::read_to_string(e.path()).unwrap();
            assert!(body.starts_with(&format!("{d}/")));
            n += 1;
        }
    }
    assert_eq!(n, 5000);
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    let status = master.wait().unwrap();
    assert!(status.success(), "master exited with {status}");

    common::run(
        std::process::Command::new(BIN)
            .args(["slave", "--broker", &common::brokers(), "--topic", &topic])
            .args(["--threads", "2", "--exit-when-caught-up"])
            .arg(&replica)
            .env("RUST_LOG", "warn"),
    );
    common::assert_trees_equal(&data, &replica, "5000 files under 256 descriptors");
}

/// The data-root itself stops taking writes (its filesystem is frozen)
/// under a journaled write: the caller gets EIO within the journal
/// timeout, reads keep working, and once the data-root takes writes again
/// the record takes effect and a slave equals the data-root.
#[test]
fn a_stalled_data_root_answers_within_the_timeout() {
    if common::skip(
        common::Need::Kafka,
        "a_stalled_data_root_answers_within_the_timeout",
    ) {
        return;
    }
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = common::tempdir();
    let image = dir.path().join("image");
    let ext4 = Ext4::mount(&dir.path().join("data"), &image, 64);
    let journal = Arc::new(common::kafka_topic("stalled-root", 2));
    let timeout = Duration::from_secs(3);
    let m = Mounted::with_journal_in(dir, journal, 2, |c| c.journal_timeout = timeout);
    fs::write(m.path("readable"), b"still here").unwrap();
    fs::write(m.path("target"), b"old").unwrap();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("target"))
        .unwrap();
    for i in 0..40 {
        fs::write(m.path(&format!("other{i}")), b"x").unwrap();
    }
    let frozen = ext4.freeze();
    // The write under test first (so it is dispatched and journaled before
    // the crowd below queues up), answered on its own thread.
    // (Its answer is waited for with a bound: a caller never answered —
    // its record applied on its own thread, stuck on the frozen data-root
    // — fails the test, whose guards then thaw it, rather than hanging it.)
    let t = Instant::now();
    let (answer, target) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = f.write_at(b"new", 0);
        let _ = answer.send((r.map_err(|e| errno_of(&e)), f));
    });
    std::thread::sleep(Duration::from_millis(300));
    // More callers than dispatcher threads: each is answered within the
    // journal timeout of its arrival, not after those queued before it.
    let others: Vec<_> = (0..40)
        .map(|i| {
            let path = m.path(&format!("other{i}"));
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = fs::write(&path, b"y");
                (r.map_err(|e| errno_of(&e)), t.elapsed())
            })
        })
        .collect();
    let (r, f) = target
        .recv_timeout(timeout * 4)
        .expect("the write under test got no answer while the data-root was frozen");
    let took = t.elapsed();
    assert_eq!(r.map(drop), Err(libc::EIO));
    assert!(took < timeout * 2, "answered after {took:?}");
    for o in others {
        let (r, took) = o.join().unwrap();
        assert_eq!(r, Err(libc::EIO));
        assert!(
            took < timeout * 2,
            "a queued caller was answered after {took:?}"
        );
    }
    assert_eq!(fs::read(m.path("readable")).unwrap(), b"still here");
    drop(frozen);
    // The journaled write is applied once the data-root takes it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read(m.path("target")).unwrap() != b"new" {
        assert!(
            Instant::now() < deadline,
            "the journaled write never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(f);
    fs::write(m.path("after"), b"fine").unwrap();
    m.assert_converged("after the data-root stalled and recovered");
}

/// The portable limits a master declares by default are held by a real
/// ext4 with 4 KiB blocks (the tightest common filesystem), and refused
/// beyond: a replica there never meets a record it cannot apply.
#[test]
fn portable_limits_fit_ext4() {
    if common::skip(common::Need::Kafka, "portable_limits_fit_ext4") {
        return;
    }
    use std::os::fd::AsFd;
    let dir = common::tempdir();
    let ext4 = Ext4::mount(&dir.path().join("fs"), &dir.path().join("image"), 64);
    let root = fs::File::open(&ext4.path).unwrap();
    let have = kafkafs::limits::probe(root.as_fd(), c"probe").unwrap();
    let portable = kafkafs::limits::Limits::portable();
    assert_eq!(portable.unmet_by(&have), None, "ext4 holds {have:?}");
    assert_eq!(have.max_file_size, portable.max_file_size, "{have:?}");
    assert!(have.xattr_bytes_max < 4200, "{have:?}");
}

/// The same in the `fsync` durability mode, where calls are answered
/// before Kafka's acknowledgement: a frozen data-root (which also holds the
/// write-ahead file) still gets every caller an answer within the journal
/// timeout — EIO for calls whose record cannot be written ahead or
/// applied — while reads and lookups go on; the records take effect once
/// it thaws.
#[test]
fn a_stalled_data_root_answers_within_the_timeout_in_fsync_mode() {
    if common::skip(
        common::Need::Kafka,
        "a_stalled_data_root_answers_within_the_timeout_in_fsync_mode",
    ) {
        return;
    }
    let dir = common::tempdir();
    let image = dir.path().join("image");
    let ext4 = Ext4::mount(&dir.path().join("data"), &image, 64);
    let journal = Arc::new(common::kafka_topic("stalled-root-fsync", 2));
    let timeout = Duration::from_secs(3);
    let m = Mounted::with_journal_in(dir, journal, 2, |c| {
        c.journal_timeout = timeout;
        c.durability = kafkafs::master::durability::Durability::Fsync;
    });
    fs::write(m.path("readable"), b"still here").unwrap();
    fs::create_dir(m.path("elsewhere")).unwrap();
    // One directory per caller: the kernel serializes the namespace calls
    // of one directory (each waiting out the one before it).
    for i in 0..8 {
        fs::create_dir(m.path(&format!("d{i}"))).unwrap();
    }
    let frozen = ext4.freeze();
    let (answers, answered) = std::sync::mpsc::channel();
    for i in 0..8 {
        let path = m.path(&format!("d{i}/during"));
        let answers = answers.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let r = fs::create_dir(&path);
            let _ = answers.send((r.map_err(|e| errno_of(&e)), t.elapsed()));
        });
    }
    // mkdir(2) is two requests (a lookup of the new name, then the
    // mkdir), each answered within the timeout. (Waited for with a bound:
    // a caller never answered fails the test, whose guards then thaw the
    // data-root, rather than hanging it.)
    for _ in 0..8 {
        let (r, took) = answered
            .recv_timeout(timeout * 4)
            .expect("a caller got no answer while the data-root was frozen");
        assert_eq!(r, Err(libc::EIO));
        assert!(took < timeout * 3, "a caller was answered after {took:?}");
    }
    // Reads, and lookups in a directory no pending record changes, go on
    // meanwhile.
    let t = Instant::now();
    assert_eq!(fs::read(m.path("readable")).unwrap(), b"still here");
    let e = fs::symlink_metadata(m.path("elsewhere/nothing-here")).unwrap_err();
    assert_eq!(errno_of(&e), libc::ENOENT);
    assert!(t.elapsed() < timeout, "reads waited {:?}", t.elapsed());
    drop(frozen);
    // The records were journaled: they take effect once the data-root
    // thaws.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..8).all(|i| m.data.join(format!("d{i}/during")).is_dir()) {
        assert!(
            Instant::now() < deadline,
            "the journaled mkdirs never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::write(m.path("after"), b"fine").unwrap();
    m.assert_converged("after the data-root stalled and recovered (fsync mode)");
}

//! The master on a real FUSE mount, journaling to the real broker: every
//! operation through plain syscalls and real programs, errno fidelity,
//! unlinked open files, restarts; then a slave replays the topic and its
//! tree equals the data-root, which equals what the mount shows.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::process::Command;

use common::{errno_of, run, Mounted};
use rustix::fs::{AtFlags, FileType, Mode, RenameFlags, Timespec, Timestamps, CWD};

fn ts(sec: i64, nsec: i64) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

#[test]
fn every_operation_through_the_mount_replicates() {
    if common::skip(
        common::Need::Kafka,
        "every_operation_through_the_mount_replicates",
    ) {
        return;
    }
    let m = Mounted::kafka("syscalls", 1);
    let p = |s: &str| m.path(s);

    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/f"), b"hello").unwrap();
    assert_eq!(fs::read(p("d/f")).unwrap(), b"hello", "read your writes");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("d/f"))
        .unwrap();
    f.write_at(b"tail", 1 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), (1 << 20) + 4);
    f.set_len(100).unwrap();
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::KEEP_SIZE, 0, 8192).unwrap();
    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, 200).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 200);
    f.sync_all().unwrap();
    f.sync_data().unwrap();
    drop(f);
    // Appends through O_APPEND.
    let mut a = OpenOptions::new().append(true).open(p("d/f")).unwrap();
    a.write_all(b"appended").unwrap();
    drop(a);
    assert_eq!(fs::metadata(p("d/f")).unwrap().len(), 208);

    symlink("f", p("d/s")).unwrap();
    assert_eq!(fs::read_link(p("d/s")).unwrap().to_str(), Some("f"));
    fs::hard_link(p("d/f"), p("d/h")).unwrap();
    assert_eq!(fs::metadata(p("d/f")).unwrap().nlink(), 2);
    rustix::fs::mknodat(
        CWD,
        p("d/fifo"),
        FileType::Fifo,
        Mode::from_bits_retain(0o640),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        p("d/sock"),
        FileType::Socket,
        Mode::from_bits_retain(0o600),
        0,
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        p("d/null"),
        FileType::CharacterDevice,
        Mode::from_bits_retain(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        p("d/loop"),
        FileType::BlockDevice,
        Mode::from_bits_retain(0o660),
        rustix::fs::makedev(7, 0),
    )
    .unwrap();
    assert_eq!(
        fs::metadata(p("d/null")).unwrap().rdev(),
        rustix::fs::makedev(1, 3)
    );

    fs::write(p("a"), b"A").unwrap();
    fs::write(p("b"), b"B").unwrap();
    let e =
        rustix::fs::renameat_with(CWD, p("a"), CWD, p("b"), RenameFlags::NOREPLACE).unwrap_err();
    assert_eq!(e, rustix::io::Errno::EXIST);
    rustix::fs::renameat_with(CWD, p("a"), CWD, p("b"), RenameFlags::EXCHANGE).unwrap();
    assert_eq!(fs::read(p("a")).unwrap(), b"B");
    fs::rename(p("a"), p("d/a2")).unwrap();
    fs::rename(p("d"), p("e")).unwrap();
    assert_eq!(fs::read(p("e/a2")).unwrap(), b"B");
    assert_eq!(
        fs::read(p("e/s")).unwrap().len(),
        208,
        "symlink follows within the mount"
    );

    fs::set_permissions(p("e/f"), fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(p("e/f")).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(p("e/h"), Some(1234), Some(4321)).unwrap();
    std::os::unix::fs::lchown(p("e/s"), Some(77), Some(88)).unwrap();
    assert_eq!(fs::symlink_metadata(p("e/s")).unwrap().uid(), 77);
    rustix::fs::utimensat(
        CWD,
        p("e/f"),
        &Timestamps {
            last_access: ts(1_000_000_000, 1),
            last_modification: ts(1_500_000_000, 999_999_999),
        },
        AtFlags::empty(),
    )
    .unwrap();
    let md = fs::metadata(p("e/f")).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 999_999_999));
    rustix::fs::utimensat(
        CWD,
        p("e/s"),
        &Timestamps {
            last_access: ts(5, 0),
            last_modification: ts(6, 7),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
    // utimes "now" resolves to the record time, the same on every replica.
    rustix::fs::utimensat(
        CWD,
        p("e/a2"),
        &Timestamps {
            last_access: ts(0, rustix::fs::UTIME_NOW),
            last_modification: ts(0, rustix::fs::UTIME_NOW),
        },
        AtFlags::empty(),
    )
    .unwrap();

    rustix::fs::setxattr(p("e/f"), "user.k", b"v", rustix::fs::XattrFlags::CREATE).unwrap();
    rustix::fs::setxattr(p("e/f"), "user.gone", b"x", rustix::fs::XattrFlags::empty()).unwrap();
    rustix::fs::removexattr(p("e/f"), "user.gone").unwrap();
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(p("e/f"), "user.k", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"v");
    rustix::fs::lsetxattr(
        p("e/s"),
        "trusted.t",
        b"on-link",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::create_dir(p("gone")).unwrap();
    fs::remove_dir(p("gone")).unwrap();
    fs::remove_file(p("b")).unwrap();
    fs::File::open(p("e")).unwrap().sync_all().unwrap();

    m.assert_converged("syscalls");
}

#[test]
fn errors_match_a_local_filesystem() {
    if common::skip(common::Need::Kafka, "errors_match_a_local_filesystem") {
        return;
    }
    let m = Mounted::kafka("errno", 1);
    let p = |s: &str| m.path(s);
    fs::create_dir(p("d")).unwrap();
    fs::write(p("d/f"), b"x").unwrap();
    fs::create_dir(p("d/sub")).unwrap();
    let expect = |r: std::io::Result<()>, errno: i32, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(errno_of(&e), errno, "{what}: {e}");
    };
    expect(fs::create_dir(p("d")), libc::EEXIST, "mkdir existing");
    expect(fs::remove_dir(p("d")), libc::ENOTEMPTY, "rmdir non-empty");
    expect(fs::remove_file(p("nope")), libc::ENOENT, "unlink missing");
    expect(
        fs::remove_file(p("d/sub")),
        libc::EISDIR,
        "unlink a directory",
    );
    expect(fs::remove_dir(p("d/f")), libc::ENOTDIR, "rmdir a file");
    expect(
        fs::create_dir(p("d/f/x")),
        libc::ENOTDIR,
        "mkdir under a file",
    );
    expect(
        fs::rename(p("d"), p("d/sub/x")),
        libc::EINVAL,
        "rename into itself",
    );
    expect(
        fs::hard_link(p("d/sub"), p("l")),
        libc::EPERM,
        "hard link to a directory",
    );
    expect(
        OpenOptions::new().write(true).open(p("d")).map(drop),
        libc::EISDIR,
        "open a directory for writing",
    );
    expect(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("d/f"))
            .map(drop),
        libc::EEXIST,
        "O_EXCL on an existing file",
    );
    expect(
        fs::rename(p("d/f"), p("d/sub")),
        libc::EISDIR,
        "rename file over dir",
    );
    fs::create_dir(p("d/sub/x")).unwrap();
    fs::create_dir(p("e")).unwrap();
    expect(
        fs::rename(p("e"), p("d/sub")),
        libc::ENOTEMPTY,
        "rename dir over non-empty dir",
    );
    // The state folder of the data-root is invisible and cannot be created.
    assert!(!fs::read_dir(&m.mnt)
        .unwrap()
        .any(|e| e.unwrap().file_name() == ".kafkafs"));
    expect(fs::create_dir(p(".kafkafs")), libc::EPERM, "reserved name");
    expect(
        fs::metadata(p(".kafkafs")).map(drop),
        libc::ENOENT,
        "reserved name hidden",
    );
    m.assert_converged("errors");
}

#[test]
fn unlinked_open_file_keeps_working() {
    if common::skip(common::Need::Kafka, "unlinked_open_file_keeps_working") {
        return;
    }
    let m = Mounted::kafka("unlinked", 1);
    let path = m.path("f");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    f.write_all(b"before").unwrap();
    fs::remove_file(&path).unwrap();
    assert!(!path.exists());
    f.write_all(b" after").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "before after");
    f.set_len(3).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 3);
    drop(f);
    // A hard-linked inode stays journaled through its other name.
    fs::write(m.path("a"), b"1").unwrap();
    fs::hard_link(m.path("a"), m.path("b")).unwrap();
    let mut g = OpenOptions::new().write(true).open(m.path("a")).unwrap();
    fs::remove_file(m.path("a")).unwrap();
    g.write_all(b"2").unwrap();
    drop(g);
    assert_eq!(fs::read(m.path("b")).unwrap(), b"2");
    m.assert_converged("unlinked");
}

#[test]
fn real_programs_tar_cp_mv_git() {
    if common::skip(common::Need::Kafka, "real_programs_tar_cp_mv_git") {
        return;
    }
    real_programs(1);
}

/// The partitioned design: a master with 8 partitions, slaves with 8 threads.
#[test]
fn real_programs_with_eight_partitions() {
    if common::skip(common::Need::Kafka, "real_programs_with_eight_partitions") {
        return;
    }
    real_programs(8);
}

fn real_programs(partitions: u32) {
    let m = Mounted::kafka(&format!("programs{partitions}"), partitions);
    let src = m.dir.path().join("src");
    build_source_tree(&src);
    let tarball = m.dir.path().join("src.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    fs::create_dir(m.path("untarred")).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(m.path("untarred"))
        .arg("-xpf")
        .arg(&tarball));
    run(Command::new("cp").arg("-a").arg(&src).arg(m.path("copy")));
    // cp -a keeps everything (modes, owners, times, links, xattrs).
    common::assert_trees_equal(&src, &m.path("copy"), "cp -a into the mount");
    run(Command::new("mv")
        .arg(m.path("untarred/dir1"))
        .arg(m.path("moved")));
    run(Command::new("mv")
        .arg(m.path("moved"))
        .arg(m.path("copy/dir2/moved-again")));
    let git = |args: &[&str]| {
        run(Command::new("git")
            .args([
                "-c",
                "user.name=kafkafs",
                "-c",
                "user.email=k@example.invalid",
            ])
            .args(["-c", "init.defaultBranch=main", "-c", "safe.directory=*"])
            .arg("-C")
            .arg(m.path("repo"))
            .args(args))
    };
    fs::create_dir(m.path("repo")).unwrap();
    git(&["init", "-q"]);
    run(Command::new("cp")
        .arg("-a")
        .arg(src.join("dir1"))
        .arg(m.path("repo/content")));
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "first"]);
    fs::write(m.path("repo/content/new.txt"), b"second commit\n").unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "second"]);
    git(&["gc", "-q"]);
    let log = git(&["log", "--oneline"]);
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(git(&["status", "--porcelain"]).is_empty());
    m.assert_converged(&format!("tar, cp -a, mv, git ({partitions} partitions)"));
}

/// A source tree with files, empty and nested directories, symlinks (also
/// dangling and absolute), hard links, odd modes, owners and xattrs.
pub fn build_source_tree(src: &std::path::Path) {
    fs::create_dir_all(src.join("dir1/nested/deep")).unwrap();
    fs::create_dir_all(src.join("dir2/empty")).unwrap();
    for i in 0..40 {
        let body: Vec<u8> = (0..(i * 997 % 20000)).map(|x| (x * 31 + i) as u8).collect();
        fs::write(src.join(format!("dir1/file{i}")), &body).unwrap();
        fs::write(src.join(format!("dir1/nested/n{i}.txt")), format!("n{i}\n")).unwrap();
    }
    fs::write(src.join("dir2/big"), vec![7u8; 3 * 1024 * 1024 + 17]).unwrap();
    symlink("../dir1/file3", src.join("dir2/link")).unwrap();
    symlink("/nonexistent/target", src.join("dir2/dangling")).unwrap();
    symlink("deep", src.join("dir1/nested/to-deep")).unwrap();
    fs::hard_link(src.join("dir1/file5"), src.join("dir2/hard5")).unwrap();
    fs::hard_link(src.join("dir1/file5"), src.join("dir1/nested/deep/hard5b")).unwrap();
    fs::set_permissions(src.join("dir1/file7"), fs::Permissions::from_mode(0o4711)).unwrap();
    fs::set_permissions(src.join("dir2/empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(src.join("dir1/file8"), Some(1000), Some(1000)).unwrap();
    rustix::fs::setxattr(
        src.join("dir1/file9"),
        "user.note",
        b"kept",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::mknodat(
        CWD,
        src.join("dir2/fifo"),
        FileType::Fifo,
        Mode::from_bits_retain(0o644),
        0,
    )
    .unwrap();
    // Deterministic times on everything (directories last).
    run(Command::new("find").arg(src).args([
        "-depth",
        "-exec",
        "touch",
        "-h",
        "-d",
        "2020-02-02 02:02:02.123456789",
        "{}",
        "+",
    ]));
}

#[test]
fn restart_continues_the_journal_and_refuses_unaccounted_data() {
    if common::skip(
        common::Need::Kafka,
        "restart_continues_the_journal_and_refuses_unaccounted_data",
    ) {
        return;
    }
    let mut m = Mounted::kafka("restart", 2);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path("d/before"), b"1").unwrap();
    m.stop();
    assert!(!m.path("d").exists(), "unmounted");
    m.start();
    assert_eq!(fs::read(m.path("d/before")).unwrap(), b"1");
    fs::write(m.path("d/after"), b"2").unwrap();
    fs::rename(m.path("d/before"), m.path("moved")).unwrap();
    m.stop();
    // The journal continued: sequence numbers never repeat, epochs rise.
    let mut source = m.journal.source().unwrap();
    let mut seqs = Vec::new();
    let mut epochs = std::collections::BTreeSet::new();
    let ends: Vec<i64> = (0..2).map(|p| source.watermarks(p).unwrap().1).collect();
    source.assign(&[(0, 0), (1, 0)]).unwrap();
    let mut seen = 0;
    let mut fences = 0;
    while seen < ends.iter().sum::<i64>() {
        if let Some(msg) = source.poll(std::time::Duration::from_secs(5)).unwrap() {
            let r = kafkafs::record::Record::decode(&msg.payload, 1 << 24).unwrap();
            seen += 1;
            if matches!(r.op, kafkafs::op::Op::Fence { .. }) {
                // Each start fences every partition first (not sequenced).
                fences += 1;
                continue;
            }
            seqs.push(r.seq);
            epochs.insert(r.writer.epoch);
        }
    }
    seqs.sort();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no sequence number repeats");
    assert_eq!(
        seqs,
        (1..=n as u64).collect::<Vec<_>>(),
        "and none is missing"
    );
    assert_eq!(epochs.len(), 2, "one epoch per start: {epochs:?}");
    assert_eq!(fences, 2 * 2, "each start fenced both partitions");
    m.start();
    m.assert_converged("after two restarts");
    m.stop();

    // A non-empty data-root the journal does not account for is refused.
    let other = common::tempdir();
    fs::write(other.path().join("stray"), b"?").unwrap();
    let cfg = kafkafs::master::MasterConfig::new(other.path());
    let err = match kafkafs::master::Master::start(
        &cfg,
        m.journal.clone(),
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
    ) {
        Ok(_) => panic!("a stray data-root must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("not accounted for"), "{err}");
}

#[test]
fn concurrent_writers_converge() {
    if common::skip(common::Need::Kafka, "concurrent_writers_converge") {
        return;
    }
    let m = Mounted::kafka("concurrent", 1);
    let mnt = m.mnt.clone();
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                let dir = mnt.join(format!("w{w}"));
                fs::create_dir(&dir).unwrap();
                for i in 0..60 {
                    let f = dir.join(format!("f{i}"));
                    fs::write(&f, format!("worker {w} file {i}").repeat(i + 1)).unwrap();
                    if i % 3 == 0 {
                        fs::rename(&f, dir.join(format!("r{i}"))).unwrap();
                    }
                    if i % 5 == 0 {
                        let _ = fs::remove_file(dir.join(format!("r{}", i.saturating_sub(3))));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    m.assert_converged("six concurrent writers");
}

/// New files, directories, nodes and symlinks belong to the calling user
/// (and to a set-group-id directory's group), on the master and replicas.
#[test]
fn new_inodes_belong_to_the_caller() {
    if common::skip(common::Need::Kafka, "new_inodes_belong_to_the_caller") {
        return;
    }
    let m = Mounted::kafka("owner", 1);
    fs::create_dir(m.path("shared")).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::create_dir(m.path("sgid")).unwrap();
    std::os::unix::fs::chown(m.path("sgid"), Some(0), Some(4242)).unwrap();
    fs::set_permissions(m.path("sgid"), fs::Permissions::from_mode(0o2777)).unwrap();
    let as_nobody = |script: &str| {
        run(Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .current_dir(&m.mnt))
    };
    as_nobody(
        "echo hi > shared/file && mkdir shared/dir && ln -s file shared/link && mkfifo shared/fifo",
    );
    as_nobody("echo hi > sgid/file && mkdir sgid/dir");
    for name in ["shared/file", "shared/dir", "shared/link", "shared/fifo"] {
        let md = fs::symlink_metadata(m.path(name)).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "{name}");
    }
    let f = fs::metadata(m.path("sgid/file")).unwrap();
    assert_eq!(
        (f.uid(), f.gid()),
        (65534, 4242),
        "group of a set-group-id directory"
    );
    let d = fs::metadata(m.path("sgid/dir")).unwrap();
    assert_eq!(d.gid(), 4242);
    assert!(d.mode() & 0o2000 != 0, "subdirectories inherit S_ISGID");
    // The kernel checks permissions against the caller.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            "echo x > rootfile",
        ])
        .current_dir(&m.mnt)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody cannot write in a 0755 root directory"
    );
    m.assert_converged("ownership");
}

/// Records in the topic so far (every partition's end).
fn journaled(m: &Mounted) -> i64 {
    let source = m.journal.source().unwrap();
    (0..m.partitions)
        .map(|p| source.watermarks(p).unwrap().1)
        .sum()
}

/// `tar x` as root chowns every entry to the owner it was created with:
/// a chown or chmod that changes nothing is answered without a record; one
/// that clears set-id bits or a file capability (Linux does on any chown)
/// is journaled, and the slave loses them as the master does.
#[test]
fn owner_and_mode_calls_that_change_nothing_journal_nothing() {
    if common::skip(
        common::Need::Kafka,
        "owner_and_mode_calls_that_change_nothing_journal_nothing",
    ) {
        return;
    }
    let m = Mounted::kafka("unchanged", 1);
    fs::write(m.path("f"), b"x").unwrap();
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::create_dir(m.path("d")).unwrap();
    let before = journaled(&m);
    std::os::unix::fs::chown(m.path("f"), Some(0), Some(0)).unwrap();
    std::os::unix::fs::chown(m.path("d"), Some(0), Some(0)).unwrap();
    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o640)).unwrap();
    let (untar_src, untar) = (m.dir.path().join("t"), m.dir.path().join("t.tar"));
    fs::create_dir_all(untar_src.join("sub")).unwrap();
    fs::write(untar_src.join("sub/file"), b"tar").unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&untar_src)
        .arg("-cf")
        .arg(&untar)
        .arg("."));
    let after_calls = journaled(&m);
    assert_eq!(
        after_calls, before,
        "no record for chown/chmod to what is there"
    );
    fs::create_dir(m.path("untar")).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(m.path("untar"))
        .arg("-xf")
        .arg(&untar));
    let untarred = journaled(&m) - after_calls;
    // mkdir untar; mkdir sub, create, write, times, mode (tar creates
    // with 0600); times and mode of sub and of the top directory: no
    // chown among them.
    let names: Vec<&str> = common::topic_records(&*m.journal)
        .iter()
        .map(|r| r.op.name())
        .collect();
    // A chown is a `chown` record, or part of a `setattr` one.
    let chowns = names[after_calls as usize..]
        .iter()
        .filter(|n| matches!(**n, "chown" | "setattr"))
        .count();
    assert_eq!(
        chowns, 0,
        "{untarred} records for the untar, chowns among them"
    );

    fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::chown(m.path("f"), Some(0), Some(0)).unwrap();
    let mode = fs::metadata(m.path("f")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755, "chown cleared set-user-ID");
    assert_eq!(
        fs::metadata(m.data.join("f")).unwrap().mode() & 0o7777,
        0o755
    );
    // The kernel removes a file capability through the mount before the
    // chown (journaled as a removexattr), so the chown itself changes
    // nothing further.
    let mut cap = [0u8; 20];
    cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
    cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
    rustix::fs::setxattr(
        m.path("f"),
        "security.capability",
        &cap,
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::chown(m.path("f"), Some(0), Some(0)).unwrap();
    for path in [m.path("f"), m.data.join("f")] {
        let mut buf = [0u8; 64];
        let read = rustix::fs::getxattr(&path, "security.capability", &mut buf[..]);
        assert_eq!(read, Err(rustix::io::Errno::NODATA), "{path:?}");
    }
    m.assert_converged("chown and chmod to what is there");
}

//! The applier against real directories: every op kind, its error cases,
//! containment, and resumption after an interrupted application.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use kafkafs::error::{Errno, ReplicaFailure};
use kafkafs::op::{Op, RelPath, RenameFlags, Timestamp, XattrFlags};
use kafkafs::op::{S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK};
use kafkafs::replica::apply::{Fingerprint, IntentLog, NoIntentLog, Outcome, Replica};

fn p(s: &str) -> RelPath {
    RelPath::new(s).unwrap()
}

const T: Timestamp = Timestamp {
    sec: 1_700_000_000,
    nsec: 123_456_789,
};

fn mtime(path: &Path) -> Timestamp {
    let m = fs::symlink_metadata(path).unwrap();
    Timestamp::new(m.mtime(), m.mtime_nsec() as u32)
}

struct Fix {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    r: Replica,
}

fn fix() -> Fix {
    let dir = common::tempdir();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let r = Replica::open(&root).unwrap();
    // A fixed, old root mtime: every fixture starts identical.
    r.apply(
        &Op::Utimens {
            path: RelPath::root(),
            atime: None,
            mtime: Some(Timestamp::new(1000, 0)),
        },
        T,
        None,
        &mut NoIntentLog,
    )
    .unwrap()
    .unwrap();
    Fix { _dir: dir, root, r }
}

impl Fix {
    fn run(&self, op: Op) -> Outcome {
        self.r
            .apply(&op, T, None, &mut NoIntentLog)
            .expect("no replica failure")
    }
    fn at(&self, t: Timestamp, op: Op) -> Outcome {
        self.r
            .apply(&op, t, None, &mut NoIntentLog)
            .expect("no replica failure")
    }
    fn path(&self, s: &str) -> std::path::PathBuf {
        self.root.join(s)
    }
    fn create(&self, s: &str) {
        assert_eq!(
            self.run(Op::Create {
                path: p(s),
                mode: 0o644,
                uid: 0,
                gid: 0
            }),
            Ok(())
        );
    }
    fn mkdir(&self, s: &str) {
        assert_eq!(
            self.run(Op::Mkdir {
                path: p(s),
                mode: 0o755,
                uid: 0,
                gid: 0
            }),
            Ok(())
        );
    }
    fn write(&self, s: &str, off: u64, data: &[u8]) -> Outcome {
        self.run(Op::Write {
            path: p(s),
            offset: off,
            data: data.to_vec().into(),
        })
    }
}

#[test]
fn create_sets_exact_mode_owner_and_times() {
    if common::skip(common::Need::Root, "create_sets_exact_mode_owner_and_times") {
        return;
    }
    let f = fix();
    let before_parent = mtime(&f.root);
    assert_eq!(
        f.run(Op::Create {
            path: p("a"),
            mode: 0o4751,
            uid: 1234,
            gid: 567
        }),
        Ok(())
    );
    let m = fs::metadata(f.path("a")).unwrap();
    assert!(m.is_file());
    assert_eq!(
        m.mode() & 0o7777,
        0o4751,
        "exact mode, no umask, set-id kept"
    );
    assert_eq!((m.uid(), m.gid()), (1234, 567));
    assert_eq!(mtime(&f.path("a")), T);
    // Parent mtime = max(before, record time).
    assert_eq!(mtime(&f.root), before_parent.max(T));
    // Exclusive: a second create is EEXIST and changes nothing.
    assert_eq!(
        f.run(Op::Create {
            path: p("a"),
            mode: 0o600,
            uid: 1,
            gid: 1
        }),
        Err(Errno::EXIST)
    );
    assert_eq!(fs::metadata(f.path("a")).unwrap().mode() & 0o7777, 0o4751);
    assert_eq!(
        f.run(Op::Create {
            path: p("missing/a"),
            mode: 0o600,
            uid: 1,
            gid: 1
        }),
        Err(Errno::NOENT)
    );
    assert_eq!(
        f.run(Op::Create {
            path: p("a/b"),
            mode: 0o600,
            uid: 1,
            gid: 1
        }),
        Err(Errno::NOTDIR)
    );
}

#[test]
fn parent_mtime_is_max_of_before_and_record_time() {
    if common::skip(
        common::Need::Root,
        "parent_mtime_is_max_of_before_and_record_time",
    ) {
        return;
    }
    let f = fix();
    f.mkdir("d");
    let later = Timestamp::new(T.sec + 100, 5);
    f.at(
        later,
        Op::Create {
            path: p("d/x"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    )
    .unwrap();
    assert_eq!(mtime(&f.path("d")), later);
    // An earlier record applied afterwards (a commuting namespace change
    // from another partition) does not move the mtime backwards.
    f.at(
        T,
        Op::Create {
            path: p("d/y"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    )
    .unwrap();
    assert_eq!(mtime(&f.path("d")), later);
}

#[test]
fn mkdir_mknod_symlink() {
    if common::skip(common::Need::Root, "mkdir_mknod_symlink") {
        return;
    }
    let f = fix();
    assert_eq!(
        f.run(Op::Mkdir {
            path: p("d"),
            mode: 0o2775,
            uid: 7,
            gid: 8
        }),
        Ok(())
    );
    let m = fs::metadata(f.path("d")).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.mode() & 0o7777, 0o2775);
    assert_eq!((m.uid(), m.gid()), (7, 8));
    assert_eq!(mtime(&f.path("d")), T);
    assert_eq!(
        f.run(Op::Mkdir {
            path: p("d"),
            mode: 0o755,
            uid: 0,
            gid: 0
        }),
        Err(Errno::EXIST)
    );

    for (name, kind, rdev) in [
        ("fifo", S_IFIFO, 0),
        ("sock", S_IFSOCK, 0),
        ("chr", S_IFCHR, rustix::fs::makedev(1, 3)),
        ("blk", S_IFBLK, rustix::fs::makedev(7, 1)),
    ] {
        assert_eq!(
            f.run(Op::Mknod {
                path: p(&format!("d/{name}")),
                mode: kind | 0o640,
                rdev,
                uid: 3,
                gid: 4
            }),
            Ok(()),
            "{name}"
        );
        let m = fs::symlink_metadata(f.path(&format!("d/{name}"))).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!((m.uid(), m.gid()), (3, 4));
        if rdev != 0 {
            assert_eq!(m.rdev(), rdev);
        }
        assert_eq!(mtime(&f.path(&format!("d/{name}"))), T);
    }
    let ft = |n: &str| fs::symlink_metadata(f.path(n)).unwrap().file_type();
    assert!(ft("d/fifo").is_fifo());
    assert!(ft("d/sock").is_socket());
    assert!(ft("d/chr").is_char_device());
    assert!(ft("d/blk").is_block_device());

    assert_eq!(
        f.run(Op::Symlink {
            path: p("d/s"),
            target: b"../../../etc/passwd".to_vec(),
            uid: 9,
            gid: 10
        }),
        Ok(())
    );
    assert_eq!(
        fs::read_link(f.path("d/s")).unwrap().to_str().unwrap(),
        "../../../etc/passwd"
    );
    let m = fs::symlink_metadata(f.path("d/s")).unwrap();
    assert_eq!((m.uid(), m.gid()), (9, 10));
    assert_eq!(mtime(&f.path("d/s")), T);
    assert_eq!(
        f.run(Op::Symlink {
            path: p("d/s"),
            target: b"x".to_vec(),
            uid: 0,
            gid: 0
        }),
        Err(Errno::EXIST)
    );
}

#[test]
fn write_sparse_truncate_fallocate() {
    if common::skip(common::Need::Root, "write_sparse_truncate_fallocate") {
        return;
    }
    let f = fix();
    f.create("a");
    assert_eq!(f.write("a", 1 << 20, b"end"), Ok(()));
    let m = fs::metadata(f.path("a")).unwrap();
    assert_eq!(m.len(), (1 << 20) + 3);
    assert!(m.blocks() * 512 < 1 << 20, "hole stays a hole");
    assert_eq!(mtime(&f.path("a")), T);
    assert_eq!(f.write("a", 0, b"start"), Ok(()));
    let data = fs::read(f.path("a")).unwrap();
    assert_eq!(&data[..5], b"start");
    assert!(data[5..1 << 20].iter().all(|&b| b == 0));
    assert_eq!(
        f.run(Op::Truncate {
            path: p("a"),
            size: 3
        }),
        Ok(())
    );
    assert_eq!(fs::read(f.path("a")).unwrap(), b"sta");
    assert_eq!(
        f.run(Op::Fallocate {
            path: p("a"),
            mode: 1,
            offset: 0,
            length: 65536
        }),
        Ok(())
    );
    assert_eq!(fs::metadata(f.path("a")).unwrap().len(), 3, "KEEP_SIZE");
    assert_eq!(
        f.run(Op::Fallocate {
            path: p("a"),
            mode: 0,
            offset: 0,
            length: 10
        }),
        Ok(())
    );
    assert_eq!(fs::metadata(f.path("a")).unwrap().len(), 10);
    f.write("a", 0, &[7u8; 10]).unwrap();
    assert_eq!(
        f.run(Op::Fallocate {
            path: p("a"),
            mode: 3,
            offset: 2,
            length: 4
        }),
        Ok(()),
        "punch hole"
    );
    assert_eq!(
        fs::read(f.path("a")).unwrap(),
        [7, 7, 0, 0, 0, 0, 7, 7, 7, 7]
    );
    // Errors: missing file, directory, not a regular file.
    assert_eq!(f.write("nope", 0, b"x"), Err(Errno::NOENT));
    f.mkdir("d");
    assert_eq!(f.write("d", 0, b"x"), Err(Errno::ISDIR));
    assert_eq!(f.write("", 0, b"x"), Err(Errno::ISDIR));
    f.run(Op::Mknod {
        path: p("fifo"),
        mode: S_IFIFO | 0o644,
        rdev: 0,
        uid: 0,
        gid: 0,
    })
    .unwrap();
    assert_eq!(
        f.write("fifo", 0, b"x"),
        Err(Errno::INVAL),
        "never opens a fifo"
    );
}

#[test]
fn attributes_and_xattrs() {
    if common::skip(common::Need::Root, "attributes_and_xattrs") {
        return;
    }
    let f = fix();
    f.create("a");
    assert_eq!(
        f.run(Op::Chmod {
            path: p("a"),
            mode: 0o6700
        }),
        Ok(())
    );
    assert_eq!(fs::metadata(f.path("a")).unwrap().mode() & 0o7777, 0o6700);
    assert_eq!(
        f.run(Op::Chown {
            path: p("a"),
            uid: Some(55),
            gid: None
        }),
        Ok(())
    );
    let m = fs::metadata(f.path("a")).unwrap();
    assert_eq!((m.uid(), m.gid()), (55, 0));
    let t1 = Timestamp::new(1000, 1);
    let t2 = Timestamp::new(2000, 999_999_999);
    assert_eq!(
        f.run(Op::Utimens {
            path: p("a"),
            atime: Some(t1),
            mtime: Some(t2)
        }),
        Ok(())
    );
    let m = fs::metadata(f.path("a")).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1000, 1));
    assert_eq!(mtime(&f.path("a")), t2);
    // UTIME_OMIT for mtime.
    f.run(Op::Utimens {
        path: p("a"),
        atime: Some(t2),
        mtime: None,
    })
    .unwrap();
    assert_eq!(mtime(&f.path("a")), t2);
    // Root's own attributes.
    f.run(Op::Utimens {
        path: p(""),
        atime: None,
        mtime: Some(t1),
    })
    .unwrap();
    assert_eq!(mtime(&f.root), t1);
    f.run(Op::Chmod {
        path: p(""),
        mode: 0o711,
    })
    .unwrap();
    assert_eq!(fs::metadata(&f.root).unwrap().mode() & 0o7777, 0o711);

    let set = |flags| Op::SetXattr {
        path: p("a"),
        name: b"user.k".to_vec(),
        value: b"v1".to_vec(),
        flags,
    };
    assert_eq!(f.run(set(XattrFlags::Replace)), Err(Errno::NODATA));
    assert_eq!(f.run(set(XattrFlags::Create)), Ok(()));
    assert_eq!(f.run(set(XattrFlags::Create)), Err(Errno::EXIST));
    assert_eq!(f.run(set(XattrFlags::Any)), Ok(()));
    let v = rustix::fs::getxattr(f.path("a"), "user.k", &mut [0u8; 16][..]).unwrap();
    assert_eq!(v, 2);
    assert_eq!(
        f.run(Op::RemoveXattr {
            path: p("a"),
            name: b"user.k".to_vec()
        }),
        Ok(())
    );
    assert_eq!(
        f.run(Op::RemoveXattr {
            path: p("a"),
            name: b"user.k".to_vec()
        }),
        Err(Errno::NODATA)
    );
    // Symlinks: chmod is refused (Linux cannot), chown and utimens act on
    // the link itself, never on its target.
    f.run(Op::Symlink {
        path: p("s"),
        target: b"a".to_vec(),
        uid: 0,
        gid: 0,
    })
    .unwrap();
    assert_eq!(
        f.run(Op::Chmod {
            path: p("s"),
            mode: 0o777
        }),
        Err(Errno::OPNOTSUPP)
    );
    f.run(Op::Chown {
        path: p("s"),
        uid: Some(99),
        gid: Some(98),
    })
    .unwrap();
    let ml = fs::symlink_metadata(f.path("s")).unwrap();
    assert_eq!((ml.uid(), ml.gid()), (99, 98));
    assert_eq!(
        fs::metadata(f.path("a")).unwrap().uid(),
        55,
        "target untouched"
    );
    f.run(Op::Utimens {
        path: p("s"),
        atime: None,
        mtime: Some(t1),
    })
    .unwrap();
    assert_eq!(mtime(&f.path("s")), t1);
    assert_eq!(mtime(&f.path("a")), t2);
    // user.* xattrs are not allowed on symlinks (the kernel says EPERM);
    // trusted.* are, and land on the link itself.
    assert_eq!(
        f.run(Op::SetXattr {
            path: p("s"),
            name: b"user.k".to_vec(),
            value: b"x".to_vec(),
            flags: XattrFlags::Any
        }),
        Err(Errno::PERM)
    );
    assert_eq!(
        f.run(Op::SetXattr {
            path: p("s"),
            name: b"trusted.k".to_vec(),
            value: b"x".to_vec(),
            flags: XattrFlags::Any
        }),
        Ok(())
    );
    assert!(rustix::fs::lgetxattr(f.path("s"), "trusted.k", &mut [0u8; 4][..]).is_ok());
    assert!(rustix::fs::lgetxattr(f.path("a"), "trusted.k", &mut [0u8; 4][..]).is_err());
    assert_eq!(
        f.run(Op::Chmod {
            path: p("nope"),
            mode: 0o777
        }),
        Err(Errno::NOENT)
    );
    assert_eq!(
        f.run(Op::Fsync {
            path: p("a"),
            datasync: false
        }),
        Ok(())
    );
    assert_eq!(
        f.run(Op::Fsync {
            path: p("s"),
            datasync: true
        }),
        Ok(())
    );
}

#[test]
fn link_unlink_rmdir() {
    if common::skip(common::Need::Root, "link_unlink_rmdir") {
        return;
    }
    let f = fix();
    f.create("a");
    f.mkdir("d");
    assert_eq!(
        f.run(Op::Link {
            src: p("a"),
            dst: p("d/b")
        }),
        Ok(())
    );
    let (ma, mb) = (
        fs::metadata(f.path("a")).unwrap(),
        fs::metadata(f.path("d/b")).unwrap(),
    );
    assert_eq!(ma.ino(), mb.ino());
    assert_eq!(ma.nlink(), 2);
    assert_eq!(
        f.run(Op::Link {
            src: p("a"),
            dst: p("d/b")
        }),
        Err(Errno::EXIST)
    );
    assert_eq!(
        f.run(Op::Link {
            src: p("d"),
            dst: p("d2")
        }),
        Err(Errno::PERM),
        "no hard links to directories"
    );
    assert_eq!(
        f.run(Op::Link {
            src: p("nope"),
            dst: p("x")
        }),
        Err(Errno::NOENT)
    );
    assert_eq!(f.run(Op::Unlink { path: p("a") }), Ok(()));
    assert_eq!(fs::metadata(f.path("d/b")).unwrap().nlink(), 1);
    assert_eq!(f.run(Op::Unlink { path: p("a") }), Err(Errno::NOENT));
    assert_eq!(f.run(Op::Unlink { path: p("d") }), Err(Errno::ISDIR));
    assert_eq!(f.run(Op::Rmdir { path: p("d") }), Err(Errno::NOTEMPTY));
    assert_eq!(f.run(Op::Rmdir { path: p("d/b") }), Err(Errno::NOTDIR));
    assert_eq!(f.run(Op::Unlink { path: p("d/b") }), Ok(()));
    assert_eq!(f.run(Op::Rmdir { path: p("d") }), Ok(()));
    assert!(!f.path("d").exists());
    assert_eq!(mtime(&f.root), T);
}

#[test]
fn rename_plain_noreplace_exchange_and_directories() {
    if common::skip(
        common::Need::Root,
        "rename_plain_noreplace_exchange_and_directories",
    ) {
        return;
    }
    let f = fix();
    f.create("a");
    f.write("a", 0, b"A").unwrap();
    f.create("b");
    f.write("b", 0, b"B").unwrap();
    f.mkdir("d");
    f.mkdir("d/sub");
    f.create("d/sub/f");
    let nr = RenameFlags {
        noreplace: true,
        exchange: false,
    };
    let ex = RenameFlags {
        noreplace: false,
        exchange: true,
    };
    assert_eq!(
        f.run(Op::Rename {
            src: p("a"),
            dst: p("b"),
            flags: nr
        }),
        Err(Errno::EXIST)
    );
    assert_eq!(
        f.run(Op::Rename {
            src: p("a"),
            dst: p("b"),
            flags: ex
        }),
        Ok(())
    );
    assert_eq!(fs::read(f.path("a")).unwrap(), b"B");
    assert_eq!(fs::read(f.path("b")).unwrap(), b"A");
    assert_eq!(
        f.run(Op::Rename {
            src: p("a"),
            dst: p("b"),
            flags: RenameFlags::default()
        }),
        Ok(())
    );
    assert!(!f.path("a").exists());
    assert_eq!(fs::read(f.path("b")).unwrap(), b"B");
    // Directory rename keeps the moved directory's own mtime.
    let sub_mtime = Timestamp::new(5, 5);
    f.run(Op::Utimens {
        path: p("d/sub"),
        atime: None,
        mtime: Some(sub_mtime),
    })
    .unwrap();
    assert_eq!(
        f.run(Op::Rename {
            src: p("d/sub"),
            dst: p("moved"),
            flags: RenameFlags::default()
        }),
        Ok(())
    );
    assert!(f.path("moved/f").exists());
    assert_eq!(mtime(&f.path("moved")), sub_mtime);
    assert_eq!(mtime(&f.path("d")), T);
    assert_eq!(
        f.run(Op::Rename {
            src: p("moved"),
            dst: p("moved/inside"),
            flags: RenameFlags::default()
        }),
        Err(Errno::INVAL),
        "into itself"
    );
    f.create("d/x");
    assert_eq!(
        f.run(Op::Rename {
            src: p("b"),
            dst: p("d"),
            flags: RenameFlags::default()
        }),
        Err(Errno::ISDIR)
    );
    assert_eq!(
        f.run(Op::Rename {
            src: p("moved"),
            dst: p("d"),
            flags: RenameFlags::default()
        }),
        Err(Errno::NOTEMPTY)
    );
    assert_eq!(
        f.run(Op::Rename {
            src: p("nope"),
            dst: p("d2"),
            flags: RenameFlags::default()
        }),
        Err(Errno::NOENT)
    );
    // Hard links of one inode: renaming one onto the other does nothing.
    f.run(Op::Link {
        src: p("b"),
        dst: p("b2"),
    })
    .unwrap();
    assert_eq!(
        f.run(Op::Rename {
            src: p("b"),
            dst: p("b2"),
            flags: RenameFlags::default()
        }),
        Ok(())
    );
    assert!(f.path("b").exists() && f.path("b2").exists());
}

#[test]
fn long_paths_beyond_path_max() {
    if common::skip(common::Need::Root, "long_paths_beyond_path_max") {
        return;
    }
    let f = fix();
    let comp = "x".repeat(200);
    let mut path = String::new();
    for _ in 0..30 {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(&comp);
        f.mkdir(&path);
    }
    assert!(path.len() > 4096);
    let file = format!("{path}/file");
    f.create(&file);
    assert_eq!(f.write(&file, 0, b"deep"), Ok(()));
    assert_eq!(
        f.run(Op::Rename {
            src: p(&file),
            dst: p(&format!("{path}/renamed")),
            flags: RenameFlags::default()
        }),
        Ok(())
    );
    let fd = f.r.open_path(&p(&format!("{path}/renamed"))).unwrap();
    let st = rustix::fs::fstat(&fd).unwrap();
    assert_eq!(st.st_size, 4);
}

/// Containment: a symlink in the tree pointing outside is never followed,
/// neither as an intermediate component nor as the final one.
#[test]
fn symlinks_out_of_the_root_are_never_followed() {
    if common::skip(
        common::Need::Root,
        "symlinks_out_of_the_root_are_never_followed",
    ) {
        return;
    }
    let f = fix();
    let outside = f._dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"keep").unwrap();
    fs::set_permissions(outside.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let target = outside.to_str().unwrap().as_bytes().to_vec();
    f.run(Op::Symlink {
        path: p("esc"),
        target: target.clone(),
        uid: 0,
        gid: 0,
    })
    .unwrap();
    let mut secret_target = target.clone();
    secret_target.extend_from_slice(b"/secret");
    f.run(Op::Symlink {
        path: p("esc_file"),
        target: secret_target,
        uid: 0,
        gid: 0,
    })
    .unwrap();
    f.run(Op::Symlink {
        path: p("up"),
        target: b"..".to_vec(),
        uid: 0,
        gid: 0,
    })
    .unwrap();
    let attempts = vec![
        Op::Create {
            path: p("esc/new"),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        Op::Write {
            path: p("esc/secret"),
            offset: 0,
            data: b"pwned".to_vec().into(),
        },
        Op::Write {
            path: p("esc_file"),
            offset: 0,
            data: b"pwned".to_vec().into(),
        },
        Op::Truncate {
            path: p("esc_file"),
            size: 0,
        },
        Op::Chmod {
            path: p("esc_file"),
            mode: 0o777,
        },
        Op::Chmod {
            path: p("esc/secret"),
            mode: 0o777,
        },
        Op::Unlink {
            path: p("esc/secret"),
        },
        Op::Rename {
            src: p("esc/secret"),
            dst: p("stolen"),
            flags: RenameFlags::default(),
        },
        Op::Link {
            src: p("esc/secret"),
            dst: p("stolen"),
        },
        Op::Mkdir {
            path: p("up/escaped"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        Op::SetXattr {
            path: p("esc/secret"),
            name: b"user.x".to_vec(),
            value: b"x".to_vec(),
            flags: XattrFlags::Any,
        },
        Op::Utimens {
            path: p("esc/secret"),
            atime: None,
            mtime: Some(T),
        },
        Op::Chown {
            path: p("esc/secret"),
            uid: Some(1),
            gid: Some(1),
        },
    ];
    let before = kafkafs::tree::snapshot(&outside).unwrap();
    let parent_before = kafkafs::tree::snapshot(f._dir.path()).unwrap();
    for op in attempts {
        let out = f.run(op.clone());
        assert!(
            out.is_err() || matches!(op, Op::Chmod { .. }),
            "{op:?} -> {out:?}"
        );
    }
    assert_eq!(
        kafkafs::tree::snapshot(&outside).unwrap(),
        before,
        "outside changed"
    );
    assert_eq!(fs::read(outside.join("secret")).unwrap(), b"keep");
    assert!(!f._dir.path().join("escaped").exists());
    let after = kafkafs::tree::snapshot(f._dir.path()).unwrap();
    assert!(
        !after
            .nodes
            .keys()
            .any(|k| !parent_before.nodes.contains_key(k) && !k.starts_with(b"root")),
        "nothing new outside the root"
    );
}

/// Records an intent and lets the test abort right after it.
struct CrashAfterIntent {
    fp: Option<Fingerprint>,
}

impl IntentLog for CrashAfterIntent {
    fn record(&mut self, fp: &Fingerprint) -> Result<(), ReplicaFailure> {
        self.fp = Some(*fp);
        Ok(())
    }
}

/// Resuming a record whose main effect already happened (the process died
/// between its syscalls) completes it exactly as an uninterrupted run would;
/// resuming one whose main effect did not happen applies it.
#[test]
fn resume_after_interruption_is_exact() {
    if common::skip(common::Need::Root, "resume_after_interruption_is_exact") {
        return;
    }
    let cases: Vec<(Vec<Op>, Op)> = vec![
        (
            vec![],
            Op::Create {
                path: p("c"),
                mode: 0o4710,
                uid: 5,
                gid: 6,
            },
        ),
        (
            vec![Op::Mkdir {
                path: p("d"),
                mode: 0o755,
                uid: 0,
                gid: 0,
            }],
            Op::Mkdir {
                path: p("d/e"),
                mode: 0o700,
                uid: 1,
                gid: 2,
            },
        ),
        (
            vec![Op::Create {
                path: p("a"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
            Op::Unlink { path: p("a") },
        ),
        (
            vec![
                Op::Create {
                    path: p("a"),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
                Op::Create {
                    path: p("b"),
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            ],
            Op::Rename {
                src: p("a"),
                dst: p("b"),
                flags: RenameFlags {
                    noreplace: false,
                    exchange: true,
                },
            },
        ),
        (
            vec![
                Op::Create {
                    path: p("a"),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
                Op::Mkdir {
                    path: p("d"),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            ],
            Op::Rename {
                src: p("a"),
                dst: p("d/a"),
                flags: RenameFlags::default(),
            },
        ),
        (
            vec![Op::Create {
                path: p("a"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
            Op::Link {
                src: p("a"),
                dst: p("l"),
            },
        ),
        // An op whose original outcome was an error stays that error.
        (
            vec![Op::Create {
                path: p("a"),
                mode: 0o644,
                uid: 0,
                gid: 0,
            }],
            Op::Create {
                path: p("a"),
                mode: 0o777,
                uid: 9,
                gid: 9,
            },
        ),
    ];
    let t0 = Timestamp::new(1_600_000_000, 0);
    for (setup, op) in cases {
        // Reference: uninterrupted.
        let reference = fix();
        let interrupted = fix();
        let not_started = fix();
        for (i, s) in setup.iter().enumerate() {
            for fx in [&reference, &interrupted, &not_started] {
                fx.at(Timestamp::new(t0.sec + i as i64, 0), s.clone())
                    .unwrap();
            }
        }
        let tt = Timestamp::new(t0.sec + 100, 42);
        let expected = reference.r.apply(&op, tt, None, &mut NoIntentLog).unwrap();

        // Interrupted after everything but the ledger update: resuming
        // with the fingerprint the first attempt captured changes nothing.
        let mut log = CrashAfterIntent { fp: None };
        let first = interrupted.r.apply(&op, tt, None, &mut log).unwrap();
        assert_eq!(first, expected);
        let out = interrupted
            .r
            .apply(&op, tt, log.fp.as_ref(), &mut NoIntentLog)
            .unwrap();
        if expected.is_ok() {
            assert_eq!(out, Ok(()), "{op:?}: resume after completion");
        }
        common::assert_trees_equal(
            &reference.root,
            &interrupted.root,
            &format!("{op:?} (resumed after completion)"),
        );

        // Interrupted right after the intent was recorded, before the main
        // effect: resuming applies it with the original outcome.
        let fp = fingerprint_of(&not_started.r, &op);
        let out = not_started
            .r
            .apply(&op, tt, fp.as_ref(), &mut NoIntentLog)
            .unwrap();
        assert_eq!(out, expected, "{op:?}: resume before the main effect");
        common::assert_trees_equal(
            &reference.root,
            &not_started.root,
            &format!("{op:?} (resumed before the main effect)"),
        );

        // Interrupted between the main effect and the finishing steps
        // (owner, mode, times): emulate the main effect with a plain syscall.
        if let (Some(main), true) = (main_effect(&op), expected.is_ok()) {
            let mid = fix();
            for (i, s) in setup.iter().enumerate() {
                mid.at(Timestamp::new(t0.sec + i as i64, 0), s.clone())
                    .unwrap();
            }
            let fp = fingerprint_of(&mid.r, &op);
            main(&mid.root);
            let out = mid.r.apply(&op, tt, fp.as_ref(), &mut NoIntentLog).unwrap();
            assert_eq!(out, expected, "{op:?}: resume after the main effect");
            common::assert_trees_equal(
                &reference.root,
                &mid.root,
                &format!("{op:?} (resumed after the main effect)"),
            );
        }
    }
}

/// The bare main effect of an op, as a plain syscall (no owner, mode or
/// times), for ops whose original outcome is success.
type MainEffect = Box<dyn Fn(&Path)>;

fn main_effect(op: &Op) -> Option<MainEffect> {
    let s = |r: &RelPath| r.display();
    match op.clone() {
        Op::Create { path, .. } => Some(Box::new(move |root: &Path| {
            let _ = fs::File::create(root.join(s(&path)));
        })),
        Op::Mkdir { path, .. } => Some(Box::new(move |root: &Path| {
            let _ = fs::create_dir(root.join(s(&path)));
        })),
        Op::Unlink { path } => Some(Box::new(move |root: &Path| {
            let _ = fs::remove_file(root.join(s(&path)));
        })),
        Op::Link { src, dst } => Some(Box::new(move |root: &Path| {
            let _ = fs::hard_link(root.join(s(&src)), root.join(s(&dst)));
        })),
        Op::Rename { src, dst, flags } if !flags.exchange => Some(Box::new(move |root: &Path| {
            let _ = fs::rename(root.join(s(&src)), root.join(s(&dst)));
        })),
        _ => None,
    }
}

/// The fingerprint a first attempt would capture, without applying.
fn fingerprint_of(r: &Replica, op: &Op) -> Option<Fingerprint> {
    struct Abort(Option<Fingerprint>);
    impl IntentLog for Abort {
        fn record(&mut self, fp: &Fingerprint) -> Result<(), ReplicaFailure> {
            self.0 = Some(*fp);
            Err(ReplicaFailure {
                op: "test",
                path: "abort".into(),
                errno: Errno::IO,
            })
        }
    }
    let mut a = Abort(None);
    let _ = r.apply(op, Timestamp::default(), None, &mut a);
    a.0
}

/// A partial replica's removals and directory touches (entries leaving
/// its view) stay beneath the root: a symlink on the way is never
/// followed, a symlink itself is removed as a link, a directory whole.
#[test]
fn partial_replica_removal_stays_beneath_the_root() {
    if common::skip(
        common::Need::Root,
        "partial_replica_removal_stays_beneath_the_root",
    ) {
        return;
    }
    let f = fix();
    let outside = f._dir.path().join("outside");
    fs::create_dir_all(outside.join("inner")).unwrap();
    fs::write(outside.join("inner/keep"), b"keep").unwrap();
    let before = mtime(&outside);
    std::os::unix::fs::symlink(&outside, f.root.join("esc")).unwrap();
    fs::create_dir_all(f.root.join("tree/a/b")).unwrap();
    fs::write(f.root.join("tree/a/b/f"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, f.root.join("tree/a/link")).unwrap();
    let t = Timestamp::new(2_000_000_000, 5);
    for path in ["esc/inner", "esc/inner/keep", "esc"] {
        f.r.remove_tree(&p(path), t).unwrap();
        f.r.touch_dir(&p(path), t).unwrap();
    }
    assert!(
        outside.join("inner/keep").exists(),
        "followed a symlink out"
    );
    assert_eq!(mtime(&outside), before, "touched a directory outside");
    assert!(!f.root.join("esc").exists(), "the symlink itself goes");
    f.r.remove_tree(&p("tree/a"), t).unwrap();
    assert!(!f.root.join("tree/a").exists());
    assert!(outside.join("inner/keep").exists());
    assert_eq!(mtime(&f.root.join("tree")), t, "the parent's mtime moves");
    // Idempotent: gone is gone.
    f.r.remove_tree(&p("tree/a"), t).unwrap();
    f.r.touch_dir(&p("tree"), Timestamp::new(2_000_000_001, 0))
        .unwrap();
    assert_eq!(
        mtime(&f.root.join("tree")),
        Timestamp::new(2_000_000_001, 0)
    );
}

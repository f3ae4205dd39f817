//! `MasterFs` over the in-memory journal: the master's calls, what they
//! journal, the errors they answer, and a replay of the journal that
//! reproduces the data-root (no root, no Kafka, no mount).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::inodes::ROOT;
use super::{Master, MasterConfig};
use crate::error::{Errno, FsError};
use crate::journal::memory::MemoryJournal;
use crate::record::{Caller, Record};
use crate::slave::SlaveConfig;

struct Fixture {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    journal: MemoryJournal,
    master: Option<Master>,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::ordered(super::pipeline::ReplayOrder::Causal)
    }

    fn ordered(ordering: super::pipeline::ReplayOrder) -> Fixture {
        Fixture::with(|c| c.ordering = ordering)
    }

    fn with(configure: impl FnOnce(&mut MasterConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let journal = MemoryJournal::new(3);
        let mut config = MasterConfig::new(&data);
        config.unprivileged = true;
        config.journal_timeout = Duration::from_secs(10);
        configure(&mut config);
        let stop = Arc::new(AtomicBool::new(false));
        let master = Master::start(&config, Arc::new(journal.clone()), stop).unwrap();
        Fixture {
            _dir: dir,
            data,
            journal,
            master: Some(master),
        }
    }

    fn fs(&self) -> &super::fs::MasterFs {
        &self.master.as_ref().unwrap().fs
    }

    /// Every record in the journal, in sequence order.
    fn records(&self) -> Vec<Record> {
        let mut all: Vec<Record> = (0..3)
            .flat_map(|p| self.journal.messages(p))
            .map(|m| Record::decode(&m.payload, 1 << 24).unwrap())
            .collect();
        all.sort_by_key(|r| r.seq);
        all
    }

    /// Replays the journal into a new directory (a slave, unprivileged)
    /// and checks it equals the data-root; returns it and the records
    /// applied.
    fn replay_equals_data_root(&self) -> (std::path::PathBuf, u64) {
        let replica = self._dir.path().join("replica");
        std::fs::create_dir(&replica).unwrap();
        let mut c = SlaveConfig::new(&replica, "memory");
        c.exit_when_caught_up = true;
        c.unprivileged = true;
        let stop = Arc::new(AtomicBool::new(false));
        let report = crate::slave::run(&c, Box::new(self.journal.source()), stop).unwrap();
        if let Err(diffs) = crate::tree::compare(&self.data, &replica).unwrap() {
            panic!("replay differs from the data-root:\n{}", diffs.join("\n"));
        }
        (replica, report.applied)
    }

    fn count(&self, name: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r.op.name() == name)
            .count()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(m) = self.master.take() {
            m.shutdown().unwrap();
        }
    }
}

fn me() -> Caller {
    Caller {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        pid: std::process::id(),
    }
}

#[test]
fn calls_are_journaled_applied_and_replayed_exactly() {
    let f = Fixture::new();
    let fs = f.fs();
    let dir = fs.mkdir(me(), ROOT, b"dir", 0o750, 0o022).unwrap();
    let (file, fh) = fs
        .create(me(), dir.ino, b"f", 0o640, 0o022, libc::O_RDWR)
        .unwrap();
    assert_eq!(fs.write(me(), file.ino, fh, 0, b"hello world").unwrap(), 11);
    fs.release(fh);
    fs.symlink(me(), ROOT, b"ln", b"dir/f").unwrap();
    fs.link(me(), file.ino, ROOT, b"hard").unwrap();
    fs.setxattr(me(), file.ino, b"user.k", b"v", 0).unwrap();
    fs.rename(me(), dir.ino, b"f", ROOT, b"moved", 0).unwrap();
    let gone = fs.mkdir(me(), ROOT, b"gone", 0o755, 0).unwrap();
    fs.rmdir(me(), ROOT, b"gone").unwrap();
    let _ = gone;

    assert_eq!(std::fs::read(f.data.join("moved")).unwrap(), b"hello world");
    assert_eq!(
        std::fs::read_link(f.data.join("ln")).unwrap().as_os_str(),
        "dir/f"
    );
    for op in [
        "mkdir", "create", "write", "symlink", "link", "setxattr", "rename", "rmdir",
    ] {
        assert!(f.count(op) >= 1, "no {op} record in the journal");
    }

    // A replay of the journal is the data-root.
    let (_, applied) = f.replay_equals_data_root();
    assert_eq!(applied as usize, f.records().len());
}

/// A master makes one producer for its fences and its calls, in both
/// durability modes: a new idempotent producer delivers nothing until it
/// has its producer id (librdkafka asks for it up to half a second after
/// the producer is made), and a second one made for the calls held the
/// first calls after every start that long (the `fsync` mode's mean
/// acknowledgement during an untar was 26 ms, 1.5 ms without its first
/// half second).
#[test]
fn the_fences_and_the_calls_share_one_producer() {
    use super::durability::Durability;
    for durability in [Durability::Journal, Durability::Fsync] {
        let f = Fixture::with(|c| c.durability = durability);
        f.fs().mkdir(me(), ROOT, b"d", 0o755, 0).unwrap();
        assert_eq!(f.journal.sinks_made(), 1, "{durability:?}");
    }
}

#[test]
fn an_errno_outcome_is_journaled_and_the_same_everywhere() {
    let f = Fixture::new();
    let fs = f.fs();
    fs.mkdir(me(), ROOT, b"d", 0o755, 0).unwrap();
    let again = fs.mkdir(me(), ROOT, b"d", 0o755, 0).unwrap_err();
    assert!(matches!(again, FsError::Outcome(Errno::EXIST)), "{again:?}");
    assert_eq!(
        f.count("mkdir"),
        2,
        "the failed mkdir is in the journal too"
    );
    let missing = fs.unlink(me(), ROOT, b"missing").unwrap_err();
    assert!(
        matches!(missing, FsError::Outcome(Errno::NOENT)),
        "{missing:?}"
    );
}

#[test]
fn local_failures_and_bad_arguments_journal_nothing() {
    let f = Fixture::new();
    let fs = f.fs();
    let before = f.records().len();
    let lookup = fs.lookup(ROOT, b"missing").unwrap_err();
    assert!(
        matches!(
            lookup,
            FsError::Local {
                op: "lookup",
                errno: Errno::NOENT
            }
        ),
        "{lookup:?}"
    );
    let state = fs.lookup(ROOT, crate::op::STATE_DIR).unwrap_err();
    assert_eq!(state.errno(), Errno::NOENT, "the state folder is invisible");
    let reserved = fs
        .mkdir(me(), ROOT, crate::op::STATE_DIR, 0o755, 0)
        .unwrap_err();
    assert!(matches!(reserved, FsError::Reserved));
    let flags = fs.rename(me(), ROOT, b"a", ROOT, b"b", 0xdead).unwrap_err();
    assert!(matches!(flags, FsError::Invalid(_)));
    let target = fs.symlink(me(), ROOT, b"l", b"").unwrap_err();
    assert!(matches!(target, FsError::Invalid(_)));
    let handle = fs.read(12345, 0, 10).unwrap_err();
    assert!(matches!(handle, FsError::BadHandle(12345)));
    assert_eq!(handle.errno(), Errno::BADF);
    let d = fs.mkdir(me(), ROOT, b"x", 0o755, 0).unwrap();
    let xflags = fs
        .setxattr(me(), d.ino, b"user.k", b"v", 0x100)
        .unwrap_err();
    assert!(matches!(xflags, FsError::Invalid(_)));
    assert_eq!(
        f.records().len(),
        before + 1,
        "only the mkdir reached the journal"
    );
}

#[test]
fn a_journal_that_refuses_records_answers_eio_with_its_cause() {
    let f = Fixture::new();
    let fs = f.fs();
    f.journal.set_down(true);
    let e = fs.mkdir(me(), ROOT, b"refused", 0o755, 0).unwrap_err();
    assert!(matches!(e, FsError::Journal(_)), "{e:?}");
    assert!(e.is_journal_failure());
    assert_eq!(e.errno(), Errno::IO);
    assert!(
        std::error::Error::source(&e).is_some(),
        "the journal's own error is kept"
    );
    assert!(
        !f.data.join("refused").exists(),
        "never journaled, never applied"
    );
    f.journal.set_down(false);
}

#[test]
fn xattrs_round_trip_through_the_journal() {
    let f = Fixture::new();
    let fs = f.fs();
    let d = fs.mkdir(me(), ROOT, b"x", 0o755, 0).unwrap();
    fs.setxattr(me(), d.ino, b"user.a", b"1", 1 /* XATTR_CREATE */)
        .unwrap();
    assert_eq!(fs.getxattr(d.ino, b"user.a").unwrap(), b"1");
    let exists = fs
        .setxattr(me(), d.ino, b"user.a", b"2", 1 /* XATTR_CREATE */)
        .unwrap_err();
    assert!(
        matches!(exists, FsError::Outcome(Errno::EXIST)),
        "{exists:?}"
    );
    fs.removexattr(me(), d.ino, b"user.a").unwrap();
    let gone = fs.getxattr(d.ino, b"user.a").unwrap_err();
    assert!(
        matches!(
            gone,
            FsError::Local {
                errno: Errno::NODATA,
                ..
            }
        ),
        "{gone:?}"
    );
}

#[test]
fn chmod_of_a_symlink_is_refused_like_linux_and_journals_nothing() {
    let f = Fixture::new();
    let fs = f.fs();
    let link = fs.symlink(me(), ROOT, b"l", b"target").unwrap();
    let before = f.records().len();
    let chmod = super::fs::SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let e = fs.setattr(me(), link.ino, chmod).unwrap_err();
    assert!(matches!(e, FsError::Unsupported(_)), "{e:?}");
    assert_eq!(e.errno(), Errno::OPNOTSUPP);
    assert_eq!(f.records().len(), before);
}

/// rename(2) between two hard links of one file does nothing (POSIX): the
/// file keeps both names. The inode table once dropped one of them, so
/// after the other was unlinked the file counted as unlinked: writes
/// through an open handle stayed on the data-root (never journaled) and a
/// lookup gave the same file a second inode number.
#[test]
fn rename_between_hard_links_of_one_file_keeps_both_names() {
    let f = Fixture::new();
    let fs = f.fs();
    let (file, fh) = fs.create(me(), ROOT, b"a", 0o644, 0, libc::O_RDWR).unwrap();
    fs.link(me(), file.ino, ROOT, b"b").unwrap();
    fs.rename(me(), ROOT, b"a", ROOT, b"b", 0).unwrap();
    assert!(f.data.join("a").exists() && f.data.join("b").exists());
    fs.unlink(me(), ROOT, b"b").unwrap();
    assert_eq!(fs.write(me(), file.ino, fh, 0, b"journaled").unwrap(), 9);
    fs.release(fh);
    assert_eq!(
        fs.lookup(ROOT, b"a").unwrap().ino,
        file.ino,
        "one file, one inode"
    );

    let (replica, _) = f.replay_equals_data_root();
    assert_eq!(std::fs::read(replica.join("a")).unwrap(), b"journaled");
}

/// A rename restores the moved file's mtime after the move, so it must be
/// ordered with a write through another hard link of the file: its record
/// depends on the write's (in another partition) on every replica.
#[test]
fn a_rename_is_ordered_after_writes_through_other_hard_links() {
    // Conflicts only: causal ordering would order them anyway.
    let f = Fixture::ordered(super::pipeline::ReplayOrder::Conflicts);
    let fs = f.fs();
    let part = |name: &str| crate::partition::partition_for(name.as_bytes(), 3);
    // Names whose records land in different partitions.
    let (first, other, to) = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .flat_map(|x| ["k", "l", "m", "n"].map(move |y| (*x, y)))
        .flat_map(|(x, y)| ["p", "q", "r", "s"].map(move |z| (x, y, z)))
        .find(|(x, _, z)| part(x) != part(z))
        .unwrap();
    let (file, fh) = fs
        .create(me(), ROOT, first.as_bytes(), 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.link(me(), file.ino, ROOT, other.as_bytes()).unwrap();
    fs.write(me(), file.ino, fh, 0, b"data").unwrap();
    fs.release(fh);
    fs.rename(me(), ROOT, other.as_bytes(), ROOT, to.as_bytes(), 0)
        .unwrap();
    let records = f.records();
    let write = records.iter().find(|r| r.op.name() == "write").unwrap();
    let rename = records.iter().find(|r| r.op.name() == "rename").unwrap();
    assert_ne!(write.partition, rename.partition);
    assert!(
        rename
            .deps
            .iter()
            .any(|d| d.partition == write.partition && d.seq >= write.seq),
        "rename deps {:?} miss the write (partition {}, seq {})",
        rename.deps,
        write.partition,
        write.seq
    );
}

/// A setattr changing several attributes is one record (one round trip),
/// applied as one step everywhere; a single attribute keeps its own op.
#[test]
fn one_setattr_call_is_one_record() {
    let f = Fixture::new();
    let fs = f.fs();
    let (file, fh) = fs.create(me(), ROOT, b"f", 0o644, 0, libc::O_RDWR).unwrap();
    fs.write(me(), file.ino, fh, 0, b"0123456789").unwrap();
    fs.release(fh);
    let before = f.records().len();
    let when = crate::op::Timestamp::new(1_000_000_000, 42);
    let attr = fs
        .setattr(
            me(),
            file.ino,
            super::fs::SetAttr {
                mode: Some(0o600),
                uid: Some(me().uid),
                size: Some(4),
                mtime: Some(super::fs::SetTime::At(when)),
                ..Default::default()
            },
        )
        .unwrap();
    let records = f.records();
    assert_eq!(records.len(), before + 1, "one record for four attributes");
    assert_eq!(records.last().unwrap().op.name(), "setattr");
    assert_eq!(attr.st.st_mode & 0o7777, 0o600);
    assert_eq!(attr.st.st_size, 4);
    assert_eq!(
        (attr.st.st_mtime, attr.st.st_mtime_nsec),
        (1_000_000_000, 42)
    );
    fs.setattr(
        me(),
        file.ino,
        super::fs::SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(f.records().last().unwrap().op.name(), "chmod");
    // Too large a size: EFBIG for the whole call, nothing changes.
    let huge = super::fs::SetAttr {
        mode: Some(0o600),
        size: Some(u64::MAX / 2),
        ..Default::default()
    };
    let e = fs.setattr(me(), file.ino, huge).unwrap_err();
    assert_eq!(e.errno(), Errno::FBIG, "{e:?}");
    assert_eq!(fs.getattr(file.ino).unwrap().st.st_mode & 0o7777, 0o640);

    f.replay_equals_data_root();
}

/// A lookup of a name a rename is changing waits for the rename (its keys)
/// and learns the result, never the half-way state: once the data-root is
/// renamed but the inode table not yet, learning the name would take the
/// file that left it for unlinked (its later calls served locally only).
#[test]
fn a_lookup_waits_for_a_rename_of_its_name() {
    let f = Fixture::new();
    let fs = f.fs();
    let (a, fh) = fs.create(me(), ROOT, b"a", 0o644, 0, libc::O_RDWR).unwrap();
    fs.release(fh);
    let (b, fh) = fs.create(me(), ROOT, b"b", 0o644, 0, libc::O_RDWR).unwrap();
    fs.release(fh);
    assert_ne!(a.ino, b.ino);
    f.journal.hold_acks(true);
    std::thread::scope(|s| {
        let rename = s.spawn(|| fs.rename(me(), ROOT, b"a", ROOT, b"b", 0));
        std::thread::sleep(Duration::from_millis(200));
        let lookup = s.spawn(|| fs.lookup(ROOT, b"b"));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !lookup.is_finished(),
            "the lookup did not wait for the rename"
        );
        f.journal.hold_acks(false);
        rename.join().unwrap().unwrap();
        let found = lookup.join().unwrap().unwrap();
        assert_eq!(found.ino, a.ino, "b is the renamed file");
    });
}

/// The `fsync` durability mode, with the given window and journal timeout.
fn fsync_mode(records: usize, timeout: Duration) -> Fixture {
    Fixture::with(|c| {
        c.durability = super::durability::Durability::Fsync;
        c.window.records = records;
        c.journal_timeout = timeout;
    })
}

#[test]
fn fsync_mode_answers_before_the_acknowledgement_and_fsync_waits_for_it() {
    let f = fsync_mode(1000, Duration::from_millis(800));
    let fs = f.fs();
    f.journal.hold_acks(true);
    let dir = fs.mkdir(me(), ROOT, b"dir", 0o755, 0).unwrap();
    let (file, fh) = fs
        .create(me(), dir.ino, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    assert_eq!(fs.write(me(), file.ino, fh, 0, b"local speed").unwrap(), 11);
    assert_eq!(
        std::fs::read(f.data.join("dir/f")).unwrap(),
        b"local speed",
        "applied to the data-root before any acknowledgement"
    );
    let (records, _) = f
        .master
        .as_ref()
        .unwrap()
        .pipeline()
        .unacknowledged()
        .unwrap();
    assert!(records >= 3, "{records} records unacknowledged");
    // fsync is the durability point: it waits for Kafka, EIO at the timeout.
    let started = std::time::Instant::now();
    let e = fs.fsync(me(), file.ino, false).unwrap_err();
    assert_eq!(e.errno(), Errno::IO, "{e}");
    assert!(started.elapsed() >= Duration::from_millis(700));
    // Kafka answers: fsync succeeds, nothing is left unacknowledged.
    f.journal.hold_acks(false);
    fs.fsync(me(), file.ino, true).unwrap();
    assert_eq!(
        f.master.as_ref().unwrap().pipeline().unacknowledged(),
        Some((0, 0))
    );
    fs.release(fh);
    assert!(f.count("fsync") >= 1);
    f.replay_equals_data_root();
}

#[test]
fn an_o_sync_write_is_a_durability_point() {
    let f = fsync_mode(1000, Duration::from_millis(500));
    let fs = f.fs();
    let (file, _) = fs.create(me(), ROOT, b"s", 0o644, 0, libc::O_RDWR).unwrap();
    let sync = fs.open(file.ino, libc::O_RDWR | libc::O_DSYNC).unwrap();
    let plain = fs.open(file.ino, libc::O_RDWR).unwrap();
    f.journal.hold_acks(true);
    assert_eq!(fs.write(me(), file.ino, plain, 0, b"a").unwrap(), 1);
    let e = fs.write(me(), file.ino, sync, 1, b"b").unwrap_err();
    assert_eq!(
        e.errno(),
        Errno::IO,
        "an O_DSYNC write waits for Kafka: {e}"
    );
    f.journal.hold_acks(false);
    assert_eq!(fs.write(me(), file.ino, sync, 2, b"c").unwrap(), 1);
    fs.release(sync);
    fs.release(plain);
    f.replay_equals_data_root();
}

#[test]
fn a_full_window_makes_new_calls_wait() {
    let f = fsync_mode(3, Duration::from_millis(500));
    let fs = f.fs();
    f.journal.hold_acks(true);
    for name in [&b"a"[..], b"b", b"c"] {
        fs.mkdir(me(), ROOT, name, 0o755, 0).unwrap();
    }
    let started = std::time::Instant::now();
    let e = fs.mkdir(me(), ROOT, b"d", 0o755, 0).unwrap_err();
    assert_eq!(e.errno(), Errno::IO, "{e}");
    assert!(started.elapsed() >= Duration::from_millis(400), "it waited");
    assert!(
        !f.data.join("d").exists(),
        "nothing past the window was applied"
    );
    // An acknowledgement makes room: a waiting call goes on.
    let waiter = {
        let fs = f.master.as_ref().unwrap().fs.clone();
        std::thread::spawn(move || fs.mkdir(me(), ROOT, b"e", 0o755, 0).map(|_| ()))
    };
    std::thread::sleep(Duration::from_millis(100));
    f.journal.hold_acks(false);
    waiter.join().unwrap().unwrap();
    f.replay_equals_data_root();
}

/// An answer hook as the FUSE adapter's (the deadline timer answers a
/// stuck call through it), counting how often it answered.
fn counting_answer_hook() -> (
    super::pipeline::AnswerEio,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = answers.clone();
    let hook: super::pipeline::AnswerEio = Arc::new(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    (hook, answers)
}

/// A call served on a FUSE thread (`pipeline::inline`) that would wait for
/// room in the window is handed back (`WouldWait`) having journaled and
/// applied nothing, at once; served again as a dispatcher serves it, it
/// waits. With room, the same call runs where it is, with its answer hook
/// (its record applied on its own thread).
#[test]
fn an_inline_call_that_would_wait_for_kafka_is_handed_back_untouched() {
    use super::pipeline::{inline, since};
    let f = fsync_mode(2, Duration::from_millis(400));
    let fs = f.fs();
    let (answered, timer_answers) = counting_answer_hook();
    let now = std::time::Instant::now;
    inline(now(), answered.clone(), || {
        fs.mkdir(me(), ROOT, b"a", 0o755, 0)
    })
    .unwrap();
    f.journal.hold_acks(true);
    inline(now(), answered.clone(), || {
        fs.mkdir(me(), ROOT, b"b", 0o755, 0)
    })
    .unwrap();
    inline(now(), answered.clone(), || {
        fs.mkdir(me(), ROOT, b"c", 0o755, 0)
    })
    .unwrap();
    let records = f.records().len();
    let started = now();
    let e = inline(now(), answered.clone(), || {
        fs.mkdir(me(), ROOT, b"d", 0o755, 0)
    });
    assert!(matches!(e, Err(FsError::WouldWait)), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "it did not wait"
    );
    assert_eq!(f.records().len(), records, "nothing journaled");
    assert!(!f.data.join("d").exists(), "nothing applied");
    let e = since(now(), Some(answered), || {
        fs.mkdir(me(), ROOT, b"d", 0o755, 0)
    })
    .unwrap_err();
    assert_eq!(
        e.errno(),
        Errno::IO,
        "a dispatcher waits, EIO at the timeout"
    );
    let stuck = timer_answers.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(stuck, 0, "nothing was stuck: no answer came from the timer");
    f.journal.hold_acks(false);
    f.replay_equals_data_root();
}

/// The counter of records applied by their call's own thread.
fn applied_by_callers(f: &Fixture) -> u64 {
    let metrics = f.master.as_ref().unwrap().pipeline().render_metrics();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("kafkafs_call_applied_by_caller_total "))
        .expect("the counter is rendered")
        .parse()
        .unwrap()
}

/// In `journal` mode a call that can be answered without its thread (a
/// dispatcher's call, with its answer hook) applies its own record when
/// the applier pool is idle: the delivery report hands it the claim. A
/// call that cannot be answered without its thread leaves it to the
/// pool's workers. Either way the answer and the replay are the same.
#[test]
fn a_journal_mode_call_applies_its_own_record_when_the_pool_is_idle() {
    use super::pipeline::since;
    let f = Fixture::new();
    let fs = f.fs();
    let (answered, timer_answers) = counting_answer_hook();
    let now = std::time::Instant::now;
    fs.mkdir(me(), ROOT, b"by-a-worker", 0o755, 0).unwrap();
    assert_eq!(applied_by_callers(&f), 0);
    for (i, name) in [&b"one"[..], b"two", b"three"].into_iter().enumerate() {
        since(now(), Some(answered.clone()), || {
            fs.mkdir(me(), ROOT, name, 0o755, 0)
        })
        .unwrap();
        assert_eq!(applied_by_callers(&f), i as u64 + 1);
    }
    let e = since(now(), Some(answered.clone()), || {
        fs.mkdir(me(), ROOT, b"one", 0o755, 0)
    })
    .unwrap_err();
    assert_eq!(e.errno(), Errno::EXIST, "a replicated errno outcome");
    assert_eq!(applied_by_callers(&f), 4);
    assert!(f.data.join("three").is_dir());
    let stuck = timer_answers.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(stuck, 0, "nothing was stuck: no answer came from the timer");
    f.replay_equals_data_root();
}

#[test]
fn records_whose_delivery_failed_are_sent_again() {
    let f = fsync_mode(1000, Duration::from_secs(10));
    let fs = f.fs();
    fs.mkdir(me(), ROOT, b"before", 0o755, 0).unwrap();
    // The first send fails, and so does its first re-send.
    f.journal.fail_next_sends(2);
    let d = fs.mkdir(me(), ROOT, b"lost-twice", 0o755, 0).unwrap();
    let (file, fh) = fs
        .create(me(), d.ino, b"f", 0o600, 0, libc::O_RDWR)
        .unwrap();
    // Answered; its deliveries failed; recovery sends it again (new calls
    // wait meanwhile), and fsync returns once everything is in the journal.
    fs.fsync(me(), file.ino, false).unwrap();
    fs.release(fh);
    assert_eq!(f.count("mkdir"), 2);
    assert_eq!(f.count("create"), 1, "sent again once, not doubled");
    f.replay_equals_data_root();
}

/// A setattr with nothing a replica keeps (the writeback cache's flush of a
/// renamed file's times: its own mtime, and a ctime) is answered from the
/// data-root and journals nothing; any real change is journaled.
#[test]
fn a_setattr_that_changes_nothing_replicated_journals_nothing() {
    use super::fs::{SetAttr, SetTime};
    use crate::op::Timestamp;
    let f = Fixture::new();
    let fs = f.fs();
    let (file, fh) = fs.create(me(), ROOT, b"f", 0o644, 0, libc::O_RDWR).unwrap();
    fs.release(fh);
    let before = f.records().len();
    let own = Timestamp::new(file.st.st_mtime, file.st.st_mtime_nsec as u32);
    let same = SetAttr {
        mtime: Some(SetTime::At(own)),
        ..SetAttr::default()
    };
    let answered = fs.setattr_unchanged(file.ino, &same).unwrap().unwrap();
    assert_eq!(answered.st.st_mtime_nsec, file.st.st_mtime_nsec);
    assert!(fs
        .setattr_unchanged(file.ino, &SetAttr::default())
        .is_some());
    assert_eq!(f.records().len(), before, "nothing journaled");
    // Changes are not answered here.
    let later = Timestamp::new(own.sec + 1, own.nsec);
    for change in [
        SetAttr {
            mtime: Some(SetTime::At(later)),
            ..SetAttr::default()
        },
        SetAttr {
            mtime: Some(SetTime::Now),
            ..SetAttr::default()
        },
        SetAttr {
            mtime: Some(SetTime::At(own)),
            atime: Some(SetTime::At(own)),
            ..SetAttr::default()
        },
        SetAttr {
            mode: Some(0o600),
            mtime: Some(SetTime::At(own)),
            ..SetAttr::default()
        },
    ] {
        assert!(
            fs.setattr_unchanged(file.ino, &change).is_none(),
            "{change:?}"
        );
    }
    fs.setattr(
        me(),
        file.ino,
        SetAttr {
            mtime: Some(SetTime::At(later)),
            ..SetAttr::default()
        },
    )
    .unwrap();
    assert_eq!(f.records().len(), before + 1);
    f.replay_equals_data_root();
}

/// A delivery that leaves nothing in flight wakes the recovery thread only
/// while it recovers (it waits for that then): not once per call, each a
/// wake-up of a thread on another CPU.
#[test]
fn calls_do_not_wake_the_idle_recovery_thread() {
    use super::durability::Durability;
    for durability in [Durability::Journal, Durability::Fsync] {
        let f = Fixture::with(|c| c.durability = durability);
        let fs = f.fs();
        let pipeline = f.master.as_ref().unwrap().pipeline();
        fs.mkdir(me(), ROOT, b"d", 0o755, 0).unwrap();
        let before = pipeline.recovery_checks();
        for i in 0..50u32 {
            let name = format!("f{i}");
            let d = fs.mkdir(me(), ROOT, name.as_bytes(), 0o755, 0).unwrap();
            // In `fsync` mode, each waits for the acknowledgement.
            fs.fsync(me(), d.ino, false).unwrap();
        }
        let checks = pipeline.recovery_checks() - before;
        assert!(
            checks <= 1,
            "{durability:?}: {checks} wake-ups for 50 calls"
        );
    }
}

/// A setattr answered on the FUSE thread never waits there: while a record
/// on its inode is in flight (Kafka not answering), it goes the journaled
/// way at once, whose waiting is off the FUSE threads.
#[test]
fn a_setattr_never_waits_on_the_fuse_thread_for_a_record_in_flight() {
    use super::fs::SetAttr;
    let f = Fixture::new();
    let fs = f.fs();
    let (file, fh) = fs.create(me(), ROOT, b"f", 0o644, 0, libc::O_RDWR).unwrap();
    let own_owner = SetAttr {
        uid: Some(file.st.st_uid),
        gid: Some(file.st.st_gid),
        ..SetAttr::default()
    };
    f.journal.hold_acks(true);
    std::thread::scope(|s| {
        let write = s.spawn(|| fs.write(me(), file.ino, fh, 0, b"x"));
        std::thread::sleep(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let answered = fs.setattr_unchanged(file.ino, &own_owner);
        let waited = started.elapsed();
        f.journal.hold_acks(false);
        assert!(answered.is_none(), "{answered:?}");
        assert!(waited < Duration::from_secs(2), "waited {waited:?}");
        assert_eq!(write.join().unwrap().unwrap(), 1);
    });
    fs.release(fh);
    let answered = fs.setattr_unchanged(file.ino, &own_owner);
    assert!(matches!(answered, Some(Ok(_))), "{answered:?}");
}

/// `tar x` as root chowns each entry to the owner it was created with: a
/// chown or chmod to what the inode has changes nothing a replica keeps
/// and journals nothing; a chown that would clear set-id bits or a file
/// capability (Linux does on any chown) is journaled (what it clears on
/// the master and a slave: `tests/fuse.rs`).
#[test]
fn a_chown_or_chmod_to_what_the_inode_has_journals_nothing() {
    use super::fs::SetAttr;
    let f = Fixture::new();
    let fs = f.fs();
    let (file, fh) = fs.create(me(), ROOT, b"f", 0o644, 0, libc::O_RDWR).unwrap();
    fs.release(fh);
    let dir = fs.mkdir(me(), ROOT, b"d", 0o755, 0).unwrap();
    let link = fs.symlink(me(), ROOT, b"l", b"f").unwrap();
    let (uid, gid) = (file.st.st_uid, file.st.st_gid);
    let before = f.records().len();
    let own_owner = SetAttr {
        uid: Some(uid),
        gid: Some(gid),
        ..SetAttr::default()
    };
    let own_mode = |a: &super::fs::Attr| SetAttr {
        mode: Some(a.st.st_mode & 0o7777),
        ..SetAttr::default()
    };
    for (ino, same) in [
        (file.ino, own_owner),
        (file.ino, own_mode(&file)),
        (dir.ino, own_owner),
        (dir.ino, own_mode(&dir)),
        (link.ino, own_owner),
    ] {
        let answered = fs.setattr_unchanged(ino, &same);
        assert!(matches!(answered, Some(Ok(_))), "{ino}: {same:?}");
    }
    assert_eq!(f.records().len(), before, "nothing journaled");
    // Real changes, and what Linux changes on any chown, are journaled.
    let other_mode = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let other_owner = SetAttr {
        uid: Some(uid + 1),
        ..SetAttr::default()
    };
    for (ino, change) in [
        (file.ino, other_mode),
        (file.ino, other_owner),
        // A symlink's chmod is refused on the journaled path.
        (link.ino, own_mode(&link)),
    ] {
        assert!(fs.setattr_unchanged(ino, &change).is_none(), "{change:?}");
    }
    let set_uid = SetAttr {
        mode: Some(0o4755),
        ..SetAttr::default()
    };
    fs.setattr(me(), file.ino, set_uid).unwrap();
    assert!(
        fs.setattr_unchanged(file.ino, &own_owner).is_none(),
        "set-user-ID"
    );
    let journaled = f.records().len();
    fs.setattr(me(), file.ino, own_owner).unwrap();
    assert_eq!(f.records().len(), journaled + 1);
    if rustix::process::geteuid().is_root() {
        // A file capability (cap_net_raw, effective), as setcap writes it.
        let (plain, fh) = fs
            .create(me(), ROOT, b"cap", 0o755, 0, libc::O_RDWR)
            .unwrap();
        fs.release(fh);
        let mut cap = [0u8; 20];
        cap[..4].copy_from_slice(&0x0200_0001u32.to_le_bytes());
        cap[4..8].copy_from_slice(&(1u32 << 13).to_le_bytes());
        fs.setxattr(me(), plain.ino, b"security.capability", &cap, 0)
            .unwrap();
        assert!(
            fs.setattr_unchanged(plain.ino, &own_owner).is_none(),
            "file capability"
        );
    }
    f.replay_equals_data_root();
}

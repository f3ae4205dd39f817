//! The `fuser::Filesystem` adapter: converts arguments, calls `MasterFs`,
//! maps the `Result` to a reply. Reads are answered on the FUSE thread
//! (they only touch the data-root); mutations are handed to dispatcher
//! threads and answered from there once journaled and applied, so the FUSE
//! request loop never waits for Kafka and many mutations are in flight.
//! In `fsync` mode, where no call waits for Kafka, a mutation is served on
//! the FUSE thread that read it while an inline slot is free (the session
//! has that many more threads, so reads keep theirs); one that would wait
//! for Kafka first is handed to a dispatcher. Replies wait in a slot the
//! pipeline's deadline timer can answer from (EIO) if the call's thread is
//! stuck on a failing data-root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::master::fs::{Attr, MasterFs, SetAttr, SetTime};
use crate::master::pipeline::{inline, since, AnswerEio};
use crate::op::Timestamp;
use crate::record::Caller;
use crate::sync::{channel, Mutex};
use std::sync::atomic::{AtomicUsize, Ordering};

/// How long the kernel may cache attributes and entries. kafkafs is the
/// only writer of its data-root, every mutation replies with fresh
/// attributes, and what changes without a reply is invalidated
/// (`KernelCache`), so long caching is safe.
const TTL: Duration = Duration::from_secs(60);

/// How long the kernel may answer "no such name" itself. Short: negative
/// entries are not tracked, so a name created behind the kernel's back
/// (a record applied after its caller got EIO) is seen within this.
const NEGATIVE_TTL: Duration = Duration::from_secs(1);

type Job = Box<dyn FnOnce() + Send>;

/// FUSE session threads kept for reads.
const READ_THREADS: usize = 4;

/// In `fsync` mode, mutations served on the FUSE thread that read them (no
/// hand-off to a dispatcher) at most at once; the session gets this many
/// more threads, so reads keep `READ_THREADS` even if every inline call
/// is stuck on a stalled data-root.
const INLINE_CALLS: usize = 4;

/// The adapter: a `MasterFs` and the dispatcher threads for mutations.
pub struct FuseAdapter {
    fs: Arc<MasterFs>,
    jobs: channel::Sender<Job>,
    /// Inline calls running (`fsync` mode only).
    inline: Option<Arc<AtomicUsize>>,
}

/// One of the `INLINE_CALLS` slots, held while a call runs on a FUSE thread.
struct InlineSlot(Arc<AtomicUsize>);

impl Drop for InlineSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The reply of a call, answered once: by the call's thread, or by the
/// pipeline's deadline timer (EIO) if that thread is stuck at the deadline.
type ReplySlot<R> = Arc<Mutex<Option<R>>>;

/// What the deadline timer does with a call's reply slot.
fn eio_answer<R: ErrorReply>(slot: &ReplySlot<R>) -> AnswerEio {
    let slot = slot.clone();
    Arc::new(move || {
        if let Some(reply) = slot.lock().take() {
            reply.error(FErrno::EIO);
        }
    })
}

/// Answers the call unless the deadline timer already did.
fn give_answer<R, T>(slot: &ReplySlot<R>, result: T, answer: impl FnOnce(R, T)) {
    if let Some(reply) = slot.lock().take() {
        answer(reply, result);
    }
}

impl FuseAdapter {
    /// The FUSE adapter over `fs`, answering from `dispatchers` threads.
    pub fn new(fs: Arc<MasterFs>, dispatchers: usize) -> Self {
        let (tx, rx) = channel::unbounded::<Job>();
        for i in 0..dispatchers.max(1) {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("kafkafs-dispatch-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        job();
                    }
                });
        }
        let inline = fs
            .pipeline()
            .answers_before_ack()
            .then(|| Arc::new(AtomicUsize::new(0)));
        FuseAdapter {
            fs,
            jobs: tx,
            inline,
        }
    }

    /// FUSE session threads: reads', and the inline calls'.
    fn session_threads(&self) -> usize {
        READ_THREADS + self.inline.as_ref().map_or(0, |_| INLINE_CALLS)
    }

    /// A slot to serve a call on this FUSE thread, if the mode allows it
    /// and one is free.
    fn inline_slot(&self) -> Option<InlineSlot> {
        let running = self.inline.as_ref()?;
        running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < INLINE_CALLS).then_some(n + 1)
            })
            .ok()?;
        Some(InlineSlot(running.clone()))
    }

    /// Serves a mutation: in `fsync` mode on this FUSE thread if an inline
    /// slot is free (the call then costs no hand-off; its pipeline hands it
    /// to a dispatcher instead, having journaled nothing, if it would wait
    /// for Kafka), else on a dispatcher thread (`dispatch`).
    fn serve<R: ErrorReply, T: Send + 'static>(
        &self,
        reply: R,
        call: impl Fn(&MasterFs) -> Result<T, FsError> + Send + 'static,
        answer: impl FnOnce(R, Result<T, FsError>) + Send + 'static,
    ) {
        let arrived = std::time::Instant::now();
        let slot = Arc::new(Mutex::new(Some(reply)));
        if let Some(inline_slot) = self.inline_slot() {
            let result = inline(arrived, eio_answer(&slot), || call(&self.fs));
            drop(inline_slot);
            if !matches!(result, Err(FsError::WouldWait)) {
                return give_answer(&slot, result, answer);
            }
        }
        self.dispatch_from(arrived, slot, call, answer);
    }

    /// Runs a mutation (`call`) on a dispatcher thread and gives its
    /// result to `answer`. The reply waits in a slot that the pipeline's
    /// deadline timer may empty first (answering EIO) if the dispatcher is
    /// stuck at the call's deadline, so the caller is answered once, by
    /// whichever comes first.
    fn dispatch<R: ErrorReply, T>(
        &self,
        reply: R,
        call: impl FnOnce(&MasterFs) -> T + Send + 'static,
        answer: impl FnOnce(R, T) + Send + 'static,
    ) {
        let slot = Arc::new(Mutex::new(Some(reply)));
        self.dispatch_from(std::time::Instant::now(), slot, call, answer);
    }

    fn dispatch_from<R: ErrorReply, T>(
        &self,
        arrived: std::time::Instant,
        slot: ReplySlot<R>,
        call: impl FnOnce(&MasterFs) -> T + Send + 'static,
        answer: impl FnOnce(R, T) + Send + 'static,
    ) {
        let fs = self.fs.clone();
        let job = move || {
            let result = since(arrived, Some(eio_answer(&slot)), || call(&fs));
            give_answer(&slot, result, answer);
        };
        if self.jobs.send(Box::new(job)).is_err() {
            tracing::error!("dispatcher threads are gone");
        }
    }
}

/// A reply that can fail the call (what the deadline timer answers).
trait ErrorReply: Send + 'static {
    fn error(self, errno: FErrno);
}

macro_rules! error_reply {
    ($($t:ty),*) => {$(
        impl ErrorReply for $t {
            fn error(self, errno: FErrno) {
                <$t>::error(self, errno)
            }
        }
    )*};
}

error_reply!(ReplyAttr, ReplyEntry, ReplyEmpty, ReplyWrite, ReplyCreate);

fn errno(e: &FsError) -> FErrno {
    if e.is_journal_failure() {
        tracing::warn!("failing a call with EIO: {e}");
    }
    FErrno::from_i32(e.errno().raw_os_error())
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn system_time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::from_nanos(nsec as u64)
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp::new(d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Timestamp::new(sec, nsec)
        }
    }
}

fn set_time(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(timestamp(t)),
    })
}

fn kind(mode: u32) -> FileType {
    match mode & 0o170000 {
        0o040000 => FileType::Directory,
        0o120000 => FileType::Symlink,
        0o010000 => FileType::NamedPipe,
        0o140000 => FileType::Socket,
        0o020000 => FileType::CharDevice,
        0o060000 => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec as i64),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec as i64),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec as i64),
        crtime: UNIX_EPOCH,
        kind: kind(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The entry of a name that does not exist (node id 0).
fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

fn reply_entry(reply: ReplyEntry, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_attr(reply: ReplyAttr, r: Result<Attr, FsError>) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), FsError>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, FsError>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(FErrno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(errno(&e)),
    }
}

fn bytes(s: &OsStr) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// What the kernel must forget, sent from a thread of its own: a
/// notification can wait for a directory lock that a request in flight
/// holds, and that request may be waiting for the thread that noticed the
/// change.
enum Forget {
    Entry(u64, Vec<u8>),
    Inode(u64),
}

/// The kernel's cache of the mount, over FUSE notifications.
struct Invalidations(channel::Sender<Forget>);

impl Invalidations {
    fn start(notifier: fuser::Notifier) -> std::io::Result<Invalidations> {
        let (tx, rx) = channel::unbounded::<Forget>();
        std::thread::Builder::new()
            .name("kafkafs-invalidate".into())
            .spawn(move || {
                while let Ok(f) = rx.recv() {
                    // ENOENT: the kernel had already forgotten it.
                    let sent = match &f {
                        Forget::Entry(parent, name) => {
                            notifier.inval_entry(INodeNo(*parent), OsStr::from_bytes(name))
                        }
                        Forget::Inode(ino) => notifier.inval_inode(INodeNo(*ino), 0, 0),
                    };
                    if let Err(e) = sent {
                        tracing::debug!("kernel cache invalidation: {e}");
                    }
                }
            })?;
        Ok(Invalidations(tx))
    }
}

impl crate::master::kernel_cache::KernelCache for Invalidations {
    fn forget_entry(&self, parent: u64, name: &[u8]) {
        let _ = self.0.send(Forget::Entry(parent, name.to_vec()));
    }

    fn forget_inode(&self, ino: u64) {
        let _ = self.0.send(Forget::Inode(ino));
    }
}

/// A mounted master filesystem, served by background threads.
pub struct Mount(fuser::BackgroundSession);

impl Mount {
    /// Mounts `fs` at `mountpoint`, answering from `dispatchers` threads.
    pub fn spawn(
        fs: Arc<MasterFs>,
        mountpoint: &Path,
        dispatchers: usize,
    ) -> std::io::Result<Mount> {
        let adapter = FuseAdapter::new(fs, dispatchers);
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("kafkafs".into()),
            fuser::MountOption::Subtype("kafkafs".into()),
            fuser::MountOption::DefaultPermissions,
            fuser::MountOption::Dev,
            fuser::MountOption::Suid,
            fuser::MountOption::RW,
        ];
        config.acl = fuser::SessionACL::All;
        config.n_threads = Some(adapter.session_threads());
        config.clone_fd = true;
        let fs = adapter.fs.clone();
        let session = fuser::spawn_mount(adapter, mountpoint, &config)?;
        fs.set_kernel_cache(Arc::new(Invalidations::start(session.notifier())?));
        Ok(Mount(session))
    }

    /// Has the kernel ended the session (unmounted from outside)?
    pub fn is_finished(&self) -> bool {
        self.0.guard.is_finished()
    }

    /// Unmounts and waits for the serving threads.
    pub fn unmount(self) -> std::io::Result<()> {
        self.0.umount_and_join()
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large writes mean fewer records; the journal splits them anyway.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if self.fs.answers_before_acknowledgement() {
            // Calls are answered at local speed: let the kernel cache
            // writes too (O_SYNC writes and fsync still reach us).
            if let Err(e) = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE) {
                tracing::warn!("the kernel does not offer writeback caching ({e:?})");
            }
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name.as_bytes()) {
            // A negative entry: the kernel answers ENOENT itself for
            // NEGATIVE_TTL (a name this mount creates replaces it).
            Err(e) if errno(&e) == FErrno::ENOENT => {
                reply.entry(&NEGATIVE_TTL, &negative_entry(), Generation(0))
            }
            r => reply_entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.fs.getattr(ino.0))
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = caller(req);
        let attr = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        if let Some(unchanged) = self.fs.setattr_unchanged(ino.0, &attr) {
            return reply_attr(reply, unchanged);
        }
        self.serve(reply, move |fs| fs.setattr(c, ino.0, attr), reply_attr);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(
            reply,
            move |fs| fs.mknod(c, parent.0, &name, mode, umask, rdev as u64),
            reply_entry,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(
            reply,
            move |fs| fs.mkdir(c, parent.0, &name, mode, umask),
            reply_entry,
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(reply, move |fs| fs.unlink(c, parent.0, &name), reply_empty);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(reply, move |fs| fs.rmdir(c, parent.0, &name), reply_empty);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (c, name, target) = (caller(req), bytes(link_name), bytes(target.as_os_str()));
        self.serve(
            reply,
            move |fs| fs.symlink(c, parent.0, &name, &target),
            reply_entry,
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (c, name, newname) = (caller(req), bytes(name), bytes(newname));
        self.serve(
            reply,
            move |fs| fs.rename(c, parent.0, &name, newparent.0, &newname, flags.bits()),
            reply_empty,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (c, newname) = (caller(req), bytes(newname));
        self.serve(
            reply,
            move |fs| fs.link(c, ino.0, newparent.0, &newname),
            reply_entry,
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.fs.read(fh.0, offset, size) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let (c, data) = (caller(req), data.to_vec());
        self.serve(
            reply,
            move |fs| fs.write(c, ino.0, fh.0, offset, &data),
            |reply, r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok()
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        self.dispatch(reply, move |fs| fs.fsync(c, ino.0, datasync), reply_empty);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, e) in entries.iter().enumerate() {
                    let next = offset + i as u64 + 1;
                    if reply.add(
                        INodeNo(e.ino),
                        next,
                        kind(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        self.dispatch(reply, move |fs| fs.fsync(c, ino.0, datasync), reply_empty);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (c, name, value) = (caller(req), bytes(name), value.to_vec());
        self.serve(
            reply,
            move |fs| fs.setxattr(c, ino.0, &name, &value, flags),
            reply_empty,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.fs.getxattr(ino.0, name.as_bytes()))
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, size, self.fs.listxattr(ino.0))
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(
            reply,
            move |fs| fs.removexattr(c, ino.0, &name),
            reply_empty,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // The kernel checks permissions (default_permissions).
        reply.ok()
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, name) = (caller(req), bytes(name));
        self.serve(
            reply,
            move |fs| fs.create(c, parent.0, &name, mode, umask, flags),
            |reply, r| match r {
                Ok((attr, fh)) => reply.created(
                    &TTL,
                    &file_attr(&attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(errno(&e)),
            },
        );
    }

    fn fallocate(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        self.serve(
            reply,
            move |fs| fs.fallocate(c, ino.0, offset, length, mode),
            reply_empty,
        );
    }

    /// No ioctl is supported: terminals probe every file with TCGETS, so
    /// this answers ENOTTY quietly (the default logs each call).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(FErrno::ENOTTY);
    }

    /// Not implemented: ENOSYS makes the kernel fall back to read + write
    /// (which are journaled), quietly.
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(FErrno::ENOSYS);
    }
}

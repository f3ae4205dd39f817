//! Applying one operation to a replica directory, exactly.
//!
//! Containment: every path is resolved beneath the replica root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`,
//! one chunk of components at a time (so paths longer than PATH_MAX work);
//! the final component is only ever touched through its parent's directory
//! handle with "no follow" semantics or through an `O_PATH|O_NOFOLLOW`
//! handle re-opened via `/proc/self/fd` (so a symlink is never followed and
//! a device node is never opened). Paths themselves were validated when the
//! record was decoded (`RelPath`: no `..`, no absolute paths, no NUL).
//!
//! Determinism: the outcome (`Ok` or an errno) depends only on the replica's
//! prior state. Times come from the record: the inodes an operation changes
//! get the record's time as mtime, and the parent directory of a namespace
//! change gets `max(its mtime before, record time)`, which makes concurrent
//! namespace changes in one directory commute (see DESIGN.md).
//!
//! Exactly-once across a crash: before the main effect of an operation that
//! is not idempotent, the applier captures a `Fingerprint` of the prior state
//! (inode numbers and mtimes of the entries involved) and hands it to an
//! `IntentLog`, which persists it. Re-applying the operation with that
//! fingerprint (`resume`) detects whether the main effect already happened
//! and only completes the remaining, idempotent steps.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::Timespec;
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::fs::{Stat, UTIME_OMIT};

use crate::error::{is_outcome, Errno, ReplicaFailure};
use crate::limits::Limits;
use crate::op::{Op, RelPath, Timestamp, XattrFlags, PERM_BITS, S_IFMT};
use crate::sync::{Mutex, MutexGuard};

/// The result of a record against a replica: success, or the errno every
/// replica gets for it. Not a failure.
pub type Outcome = Result<(), Errno>;

/// Facts about the replica captured just before an operation's main effect.
/// All fields are `None` when not applicable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Inode number of the target entry before (create/mknod/mkdir/symlink,
    /// link destination, unlink/rmdir target, rename destination).
    pub target: Option<u64>,
    /// Inode number of the rename/link source entry before.
    pub source: Option<u64>,
    /// Mtime of the target's parent directory before.
    pub target_parent_mtime: Option<Timestamp>,
    /// Mtime of the source's parent directory before (rename).
    pub source_parent_mtime: Option<Timestamp>,
    /// Mtime of the rename source inode before (restored after the move).
    pub source_mtime: Option<Timestamp>,
    /// Mtime of the rename destination inode before (RENAME_EXCHANGE).
    pub target_mtime: Option<Timestamp>,
}

/// Where the applier persists a fingerprint before a non-idempotent effect.
pub trait IntentLog {
    /// Persists `fp` before the operation's first effect.
    fn record(&mut self, fp: &Fingerprint) -> Result<(), ReplicaFailure>;
}

/// An intent log that keeps nothing: for tests and for direct application.
pub struct NoIntentLog;

impl IntentLog for NoIntentLog {
    fn record(&mut self, _fp: &Fingerprint) -> Result<(), ReplicaFailure> {
        Ok(())
    }
}

const DIR_LOCK_STRIPES: usize = 256;

/// Longest chunk of a path handed to one `openat2` call (PATH_MAX is 4096).
const WALK_CHUNK: usize = 3072;

/// A replica directory that records are applied to.
pub struct Replica {
    root: PathBuf,
    root_fd: OwnedFd,
    /// Serializes parent-directory mtime updates per directory (striped by
    /// inode number): the read-modify-write of `max(before, time)` must not
    /// interleave with another namespace change in the same directory.
    dir_locks: Box<[Mutex<()>]>,
    /// The limits the topic declared (portable ones until it declares any).
    limits: Mutex<Limits>,
    /// Ownership, device numbers and trusted xattrs are not reproduced.
    unprivileged: bool,
}

/// File in the state folder holding the declared limits.
pub const LIMITS_FILE: &str = "limits";

/// A resolved final component: its parent directory (open for reading) and name.
struct DirEntry {
    parent: OwnedFd,
    name: CString,
}

/// What the operation targets: the root itself, or an entry in a directory.
enum Target {
    Root,
    Entry(DirEntry),
}

fn fail(op: &'static str, path: &RelPath, errno: Errno) -> ReplicaFailure {
    ReplicaFailure {
        op,
        path: path.display(),
        errno,
    }
}

/// Turns a syscall error into an outcome or a replica failure.
fn classify(op: &'static str, path: &RelPath, errno: Errno) -> Result<Outcome, ReplicaFailure> {
    if is_outcome(errno) {
        Ok(Err(errno))
    } else {
        Err(fail(op, path, errno))
    }
}

/// `try_outcome!(expr, op, path)`: on a syscall error, return the outcome or failure.
macro_rules! try_outcome {
    ($e:expr, $op:expr, $path:expr) => {
        match $e {
            Ok(v) => v,
            Err(errno) => return classify($op, $path, errno),
        }
    };
}

pub(crate) fn ts(t: Timestamp) -> Timespec {
    Timespec {
        tv_sec: t.sec,
        tv_nsec: t.nsec as _,
    }
}

fn omit() -> Timespec {
    Timespec {
        tv_sec: 0,
        tv_nsec: UTIME_OMIT,
    }
}

/// The modification time of `st`.
pub fn stat_mtime(st: &Stat) -> Timestamp {
    Timestamp::new(st.st_mtime, st.st_mtime_nsec as u32)
}

pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // Cannot contain a NUL: it is ASCII digits.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// The fingerprint of an operation on one entry: the interrupted
/// attempt's, or what the entry and its directory are now (recorded
/// before the first effect).
fn entry_fingerprint(
    resume: Option<&Fingerprint>,
    e: &DirEntry,
    parent: &Stat,
    log: &mut dyn IntentLog,
) -> Result<Fingerprint, ReplicaFailure> {
    if let Some(fp) = resume {
        return Ok(*fp);
    }
    let fp = Fingerprint {
        target: lstat_ino(&e.parent, &e.name),
        target_parent_mtime: Some(stat_mtime(parent)),
        ..Fingerprint::default()
    };
    log.record(&fp)?;
    Ok(fp)
}

/// What a rename finds before its first effect.
fn rename_fingerprint(s: &DirEntry, d: &DirEntry, sst: &Stat, dstat: &Stat) -> Fingerprint {
    let src_st = lstat(&s.parent, &s.name);
    let dst_st = lstat(&d.parent, &d.name);
    Fingerprint {
        source: src_st.as_ref().map(|st| st.st_ino),
        target: dst_st.as_ref().map(|st| st.st_ino),
        source_mtime: src_st.as_ref().map(stat_mtime),
        target_mtime: dst_st.as_ref().map(stat_mtime),
        source_parent_mtime: Some(stat_mtime(sst)),
        target_parent_mtime: Some(stat_mtime(dstat)),
    }
}

fn rename_flags(flags: crate::op::RenameFlags) -> rfs::RenameFlags {
    let mut rf = rfs::RenameFlags::empty();
    if flags.noreplace {
        rf |= rfs::RenameFlags::NOREPLACE;
    }
    if flags.exchange {
        rf |= rfs::RenameFlags::EXCHANGE;
    }
    rf
}

fn cstring(name: &[u8]) -> Result<CString, Errno> {
    CString::new(name).map_err(|_| Errno::INVAL)
}

impl Replica {
    /// Opens a replica root (which must exist and be a directory).
    pub fn open(root: &Path) -> std::io::Result<Replica> {
        let root_fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let dir_locks = (0..DIR_LOCK_STRIPES).map(|_| Mutex::new(())).collect();
        let limits = load_limits(root)?.unwrap_or_else(Limits::portable);
        Ok(Replica {
            root: root.to_path_buf(),
            root_fd,
            dir_locks,
            limits: Mutex::new(limits),
            unprivileged: false,
        })
    }

    /// Neither ownership nor device nodes nor trusted.* xattrs are
    /// reproduced (a replica kept without root); everything else is exact.
    pub fn set_unprivileged(&mut self, unprivileged: bool) {
        self.unprivileged = unprivileged;
    }

    /// The limits every record is judged by.
    pub fn limits(&self) -> Limits {
        self.limits.lock().clone()
    }

    /// What this replica's filesystem can hold.
    pub fn capacity(&self) -> std::io::Result<Limits> {
        let state = self.state_dir()?;
        let name = CString::new(format!("limits-probe.{}", std::process::id()))
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let mut have = crate::limits::probe(state.as_fd(), &name)?;
        if self.unprivileged {
            // trusted.* needs privileges; it is not reproduced here anyway.
            have.xattr_namespaces.push("trusted.".into());
        }
        Ok(have)
    }

    /// Why this replica cannot honour `limits`, if it cannot.
    pub fn unmet(&self, limits: &Limits) -> std::io::Result<Option<String>> {
        Ok(limits.unmet_by(&self.capacity()?))
    }

    fn state_dir(&self) -> std::io::Result<OwnedFd> {
        let name = CString::new(crate::op::STATE_DIR).unwrap_or_default();
        let before = rfs::fstat(&self.root_fd)?;
        match rfs::mkdirat(&self.root_fd, &name, Mode::from_bits_retain(0o700)) {
            // The state folder is not part of the tree: the root's mtime
            // stays what the journal made it.
            Ok(()) => rfs::futimens(
                &self.root_fd,
                &Timestamps {
                    last_access: omit(),
                    last_modification: ts(stat_mtime(&before)),
                },
            )?,
            Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(rfs::openat(
            &self.root_fd,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }

    /// Adopts the topic's declared limits (kept in the state folder).
    fn declare_limits(&self, limits: &Limits) -> Result<Outcome, ReplicaFailure> {
        let f = |e: std::io::Error| ReplicaFailure {
            op: "limits",
            path: format!("{}/.kafkafs/{LIMITS_FILE}", self.root.display()),
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        };
        let dir = self
            .root
            .join(std::ffi::OsStr::from_bytes(crate::op::STATE_DIR));
        self.state_dir().map_err(f)?;
        let tmp = dir.join(format!("{LIMITS_FILE}.tmp"));
        let text = format!(
            "max_file_size={}\nname_max={}\nxattr_bytes_max={}\nxattr_namespaces={}\n",
            limits.max_file_size,
            limits.name_max,
            limits.xattr_bytes_max,
            limits.xattr_namespaces.join(",")
        );
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, dir.join(LIMITS_FILE))
        };
        write().map_err(f)?;
        *self.limits.lock() = limits.clone();
        Ok(Ok(()))
    }

    /// The replica directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A handle on the replica directory.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root_fd.as_fd()
    }

    /// Opens directory `path` beneath the root without following symlinks.
    pub fn open_dir(&self, path: &RelPath) -> Result<OwnedFd, Errno> {
        self.walk(path, OFlags::RDONLY | OFlags::DIRECTORY)
    }

    /// Opens `path` (any type) as an `O_PATH | O_NOFOLLOW` handle.
    pub fn open_path(&self, path: &RelPath) -> Result<OwnedFd, Errno> {
        self.walk(path, OFlags::PATH)
    }

    fn walk(&self, path: &RelPath, last_flags: OFlags) -> Result<OwnedFd, Errno> {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        let bytes = path.as_bytes();
        if bytes.is_empty() {
            return rustix::io::fcntl_dupfd_cloexec(&self.root_fd, 0).and_then(|fd| {
                if last_flags.contains(OFlags::PATH) {
                    Ok(fd)
                } else {
                    rfs::openat(
                        &self.root_fd,
                        c".",
                        last_flags | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                }
            });
        }
        let mut dir: Option<OwnedFd> = None;
        let mut rest = bytes;
        loop {
            let (chunk, tail) = if rest.len() <= WALK_CHUNK {
                (rest, &rest[rest.len()..])
            } else {
                // Split at the last '/' within the chunk limit.
                let cut = rest[..WALK_CHUNK]
                    .iter()
                    .rposition(|&b| b == b'/')
                    .ok_or(Errno::NAMETOOLONG)?;
                (&rest[..cut], &rest[cut + 1..])
            };
            let last = tail.is_empty();
            let flags = if last {
                last_flags | OFlags::NOFOLLOW | OFlags::CLOEXEC
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC
            };
            let c = cstring(chunk)?;
            let base: BorrowedFd<'_> = match &dir {
                Some(d) => d.as_fd(),
                None => self.root_fd.as_fd(),
            };
            let fd = openat2_retry(base, &c, flags, resolve)?;
            if last {
                return Ok(fd);
            }
            dir = Some(fd);
            rest = tail;
        }
    }

    fn target(&self, path: &RelPath) -> Result<Target, Errno> {
        match path.split_last() {
            None => Ok(Target::Root),
            Some((parent, name)) => Ok(Target::Entry(DirEntry {
                parent: self.open_dir(&parent)?,
                name: cstring(name)?,
            })),
        }
    }

    fn entry(&self, path: &RelPath) -> Result<DirEntry, Errno> {
        match self.target(path)? {
            Target::Root => Err(Errno::EXIST),
            Target::Entry(e) => Ok(e),
        }
    }

    fn lock_dir(&self, st: &Stat) -> MutexGuard<'_, ()> {
        self.dir_locks[(st.st_ino as usize) % DIR_LOCK_STRIPES].lock()
    }

    /// Locks the stripes of two directories in a fixed order.
    fn lock_dirs(&self, a: &Stat, b: &Stat) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let ia = (a.st_ino as usize) % DIR_LOCK_STRIPES;
        let ib = (b.st_ino as usize) % DIR_LOCK_STRIPES;
        if ia == ib {
            (self.dir_locks[ia].lock(), None)
        } else if ia < ib {
            let ga = self.dir_locks[ia].lock();
            (ga, Some(self.dir_locks[ib].lock()))
        } else {
            let gb = self.dir_locks[ib].lock();
            (gb, Some(self.dir_locks[ia].lock()))
        }
    }

    /// Applies `op` taking effect at `time`.
    ///
    /// `resume` is the fingerprint recorded by an earlier, interrupted
    /// attempt at the same record (after a crash or a replica failure);
    /// `None` for a first attempt, in which case a new fingerprint is
    /// captured and handed to `log` before any non-idempotent effect.
    pub fn apply(
        &self,
        op: &Op,
        time: Timestamp,
        resume: Option<&Fingerprint>,
        log: &mut dyn IntentLog,
    ) -> Result<Outcome, ReplicaFailure> {
        let span = tracing::trace_span!("apply", op = op.name(), path = %op.target());
        let _enter = span.enter();
        if let Some(errno) = self.limits.lock().refuse(op) {
            return Ok(Err(errno));
        }
        match op {
            Op::Create { .. } | Op::Mknod { .. } | Op::Mkdir { .. } | Op::Symlink { .. } => {
                match NewInode::of(op) {
                    Some((path, kind, uid, gid)) => {
                        self.create_like(path, kind, uid, gid, time, resume, log)
                    }
                    // Not reached (the same four operations); the same
                    // answer on every replica if it were.
                    None => Ok(Err(Errno::INVAL)),
                }
            }
            Op::Link { src, dst } => self.link(src, dst, time, resume, log),
            Op::Unlink { path } => self.remove(path, false, time, resume, log),
            Op::Rmdir { path } => self.remove(path, true, time, resume, log),
            Op::Rename { src, dst, flags } => self.rename(src, dst, *flags, time, resume, log),
            Op::Write { .. } | Op::Truncate { .. } | Op::Fallocate { .. } => {
                self.change_content(op, time)
            }
            Op::Chmod { path, mode } => self.chmod(path, *mode),
            Op::Chown { path, uid, gid } => self.chown(path, *uid, *gid),
            Op::Utimens { path, atime, mtime } => self.utimens(path, *atime, *mtime),
            Op::SetAttr { path, attrs } => self.setattr(path, attrs, time),
            Op::SetXattr { .. } => self.setxattr_op(op),
            Op::RemoveXattr { path, name } => self.removexattr(path, name),
            Op::Fsync { path, datasync } => self.fsync(path, *datasync),
            Op::Limits(limits) => self.declare_limits(limits),
            // Read by the reader; nothing to apply.
            Op::Fence { .. } => Ok(Ok(())),
        }
    }

    /// Write, truncate, fallocate: a regular file's content, then its
    /// mtime set to the record time.
    fn change_content(&self, op: &Op, time: Timestamp) -> Result<Outcome, ReplicaFailure> {
        match op {
            Op::Write { path, offset, data } => {
                self.with_writable(path, "write", time, |fd| write_all_at(fd, data, *offset))
            }
            Op::Truncate { path, size } => {
                self.with_writable(path, "truncate", time, |fd| rfs::ftruncate(fd, *size))
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                length,
            } => self.with_writable(path, "fallocate", time, |fd| {
                let flags = rfs::FallocateFlags::from_bits_retain(*mode);
                rfs::fallocate(fd, flags, *offset, *length)
            }),
            // Not reached (`apply` sends only the three above).
            _ => Ok(Err(Errno::INVAL)),
        }
    }

    fn setxattr_op(&self, op: &Op) -> Result<Outcome, ReplicaFailure> {
        match op {
            Op::SetXattr {
                path,
                name,
                value,
                flags,
            } => self.setxattr(path, name, value, *flags),
            // Not reached (`apply` sends only setxattr).
            _ => Ok(Err(Errno::INVAL)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_like(
        &self,
        path: &RelPath,
        kind: NewInode<'_>,
        uid: u32,
        gid: u32,
        time: Timestamp,
        resume: Option<&Fingerprint>,
        log: &mut dyn IntentLog,
    ) -> Result<Outcome, ReplicaFailure> {
        let op = kind.name();
        let e = try_outcome!(self.entry(path), op, path);
        let pst = rfs::fstat(&e.parent).map_err(|x| fail(op, path, x))?;
        let _guard = self.lock_dir(&pst);
        // The mtime "before" must be read under the lock.
        let pst = rfs::fstat(&e.parent).map_err(|x| fail(op, path, x))?;
        let fp = entry_fingerprint(resume, &e, &pst, log)?;
        let done =
            resume.is_some() && fp.target.is_none() && lstat_ino(&e.parent, &e.name).is_some();
        if !done {
            try_outcome!(self.make_inode(&e, &kind), op, path);
        }
        // Ownership, exact mode (no umask; chown clears set-id bits, so the
        // mode is set after it), times. Every step is idempotent.
        let f = |x| fail(op, path, x);
        self.set_owner_and_mode(&e, &kind, uid, gid).map_err(f)?;
        set_times(&e.parent, &e.name, Some(time), Some(time)).map_err(f)?;
        self.bump(&e.parent, fp.target_parent_mtime, time)
            .map_err(f)?;
        Ok(Ok(()))
    }

    /// Makes the new inode (the entry must not exist).
    fn make_inode(&self, e: &DirEntry, kind: &NewInode<'_>) -> Result<(), Errno> {
        let perm = |mode: u32| Mode::from_bits_retain(mode & PERM_BITS);
        let new_file = |mode: u32| {
            rfs::openat(
                &e.parent,
                &e.name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                perm(mode),
            )
            .map(drop)
        };
        match *kind {
            NewInode::File { mode } => new_file(mode),
            NewInode::Dir { mode } => rfs::mkdirat(&e.parent, &e.name, perm(mode)),
            // A device node needs privileges: an empty file stands in.
            NewInode::Node { mode, .. } if self.unprivileged && is_device(mode) => new_file(mode),
            NewInode::Node { mode, rdev } => rfs::mknodat(
                &e.parent,
                &e.name,
                FileType::from_raw_mode(mode & S_IFMT),
                perm(mode),
                rdev,
            ),
            NewInode::Symlink { target } => {
                let t = cstring(target)?;
                rfs::symlinkat(&t, &e.parent, &e.name)
            }
        }
    }

    /// Gives a new inode its owner, then its exact mode (chown clears
    /// set-id bits).
    fn set_owner_and_mode(
        &self,
        e: &DirEntry,
        kind: &NewInode<'_>,
        uid: u32,
        gid: u32,
    ) -> Result<(), Errno> {
        if !self.unprivileged {
            rfs::chownat(
                &e.parent,
                &e.name,
                Some(rfs::Uid::from_raw(uid)),
                Some(rfs::Gid::from_raw(gid)),
                AtFlags::SYMLINK_NOFOLLOW,
            )?;
        }
        if let Some(mode) = kind.perm() {
            let fd = rfs::openat(
                &e.parent,
                &e.name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rfs::chmod(
                proc_fd_path(fd.as_fd()).as_c_str(),
                Mode::from_bits_retain(mode & PERM_BITS),
            )?;
        }
        Ok(())
    }

    fn link(
        &self,
        src: &RelPath,
        dst: &RelPath,
        time: Timestamp,
        resume: Option<&Fingerprint>,
        log: &mut dyn IntentLog,
    ) -> Result<Outcome, ReplicaFailure> {
        let s = try_outcome!(self.entry(src), "link", src);
        let d = try_outcome!(self.entry(dst), "link", dst);
        let f = |x| fail("link", dst, x);
        let dst_st = rfs::fstat(&d.parent).map_err(f)?;
        let _guard = self.lock_dir(&dst_st);
        let dst_st = rfs::fstat(&d.parent).map_err(f)?;
        let fp = match resume {
            Some(fp) => *fp,
            None => {
                let fp = Fingerprint {
                    target: lstat_ino(&d.parent, &d.name),
                    source: lstat_ino(&s.parent, &s.name),
                    target_parent_mtime: Some(stat_mtime(&dst_st)),
                    ..Fingerprint::default()
                };
                log.record(&fp)?;
                fp
            }
        };
        let done = resume.is_some()
            && fp.target.is_none()
            && fp.source.is_some()
            && lstat_ino(&d.parent, &d.name) == fp.source;
        if !done {
            try_outcome!(
                rfs::linkat(&s.parent, &s.name, &d.parent, &d.name, AtFlags::empty()),
                "link",
                dst
            );
        }
        self.bump(&d.parent, fp.target_parent_mtime, time)
            .map_err(f)?;
        Ok(Ok(()))
    }

    fn remove(
        &self,
        path: &RelPath,
        dir: bool,
        time: Timestamp,
        resume: Option<&Fingerprint>,
        log: &mut dyn IntentLog,
    ) -> Result<Outcome, ReplicaFailure> {
        let op = if dir { "rmdir" } else { "unlink" };
        let e = try_outcome!(self.entry(path), op, path);
        let f = |x| fail(op, path, x);
        let pst = rfs::fstat(&e.parent).map_err(f)?;
        let _guard = self.lock_dir(&pst);
        let pst = rfs::fstat(&e.parent).map_err(f)?;
        let fp = entry_fingerprint(resume, &e, &pst, log)?;
        let done =
            resume.is_some() && fp.target.is_some() && lstat_ino(&e.parent, &e.name) != fp.target;
        if !done {
            let flags = if dir {
                AtFlags::REMOVEDIR
            } else {
                AtFlags::empty()
            };
            try_outcome!(rfs::unlinkat(&e.parent, &e.name, flags), op, path);
        }
        self.bump(&e.parent, fp.target_parent_mtime, time)
            .map_err(f)?;
        Ok(Ok(()))
    }

    fn rename(
        &self,
        src: &RelPath,
        dst: &RelPath,
        flags: crate::op::RenameFlags,
        time: Timestamp,
        resume: Option<&Fingerprint>,
        log: &mut dyn IntentLog,
    ) -> Result<Outcome, ReplicaFailure> {
        if flags.noreplace && flags.exchange {
            return Ok(Err(Errno::INVAL));
        }
        let s = try_outcome!(self.entry(src), "rename", src);
        let d = try_outcome!(self.entry(dst), "rename", dst);
        let f = |x| fail("rename", dst, x);
        let sst = rfs::fstat(&s.parent).map_err(f)?;
        let dstat = rfs::fstat(&d.parent).map_err(f)?;
        let same_dir = sst.st_ino == dstat.st_ino && sst.st_dev == dstat.st_dev;
        let _guards = self.lock_dirs(&sst, &dstat);
        let sst = rfs::fstat(&s.parent).map_err(f)?;
        let dstat = rfs::fstat(&d.parent).map_err(f)?;
        let fp = match resume {
            Some(fp) => *fp,
            None => {
                let fp = rename_fingerprint(&s, &d, &sst, &dstat);
                log.record(&fp)?;
                fp
            }
        };
        // Renaming a name onto another name of the same inode does nothing.
        if fp.source.is_some() && fp.source == fp.target && !flags.exchange {
            return Ok(Ok(()));
        }
        let done =
            resume.is_some() && fp.source.is_some() && lstat_ino(&s.parent, &s.name) != fp.source;
        if !done {
            try_outcome!(
                rfs::renameat_with(&s.parent, &s.name, &d.parent, &d.name, rename_flags(flags)),
                "rename",
                dst
            );
        }
        // Some filesystems touch the moved inode's times (a directory's ".."
        // changes); the record says nothing changed, so restore them.
        if let Some(m) = fp.source_mtime {
            set_times(&d.parent, &d.name, None, Some(m)).map_err(f)?;
        }
        if flags.exchange {
            if let Some(m) = fp.target_mtime {
                set_times(&s.parent, &s.name, None, Some(m)).map_err(f)?;
            }
        }
        self.bump(&d.parent, fp.target_parent_mtime, time)
            .map_err(f)?;
        if !same_dir {
            self.bump(&s.parent, fp.source_parent_mtime, time)
                .map_err(f)?;
        }
        Ok(Ok(()))
    }

    /// Sets a directory's mtime to `max(before, time)` after a namespace change.
    /// Removes the entry at `path` — a whole subtree for a directory — and
    /// moves its parent's mtime to `time` (a partial replica's entry that
    /// left its view). Idempotent: an entry already gone is fine.
    pub fn remove_tree(&self, path: &RelPath, time: Timestamp) -> Result<(), ReplicaFailure> {
        let f = |x| fail("remove", path, x);
        let e = match self.entry(path) {
            Ok(e) => e,
            // Nothing there, or not reachable without a symlink (then no
            // record could have put anything there either).
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV) => return Ok(()),
            Err(x) => return Err(f(x)),
        };
        let pst = rfs::fstat(&e.parent).map_err(f)?;
        let _guard = self.lock_dir(&pst);
        let Some(st) = lstat(&e.parent, &e.name) else {
            return Ok(());
        };
        if st.st_mode & S_IFMT == 0o040000 {
            // The parent was reached without symlinks; std's recursive
            // removal works with descriptors and never follows one.
            let dir = proc_fd_path(e.parent.as_fd());
            let at = Path::new(OsStr::from_bytes(dir.as_bytes()))
                .join(OsStr::from_bytes(e.name.as_bytes()));
            std::fs::remove_dir_all(&at)
                .map_err(|x| f(Errno::from_io_error(&x).unwrap_or(Errno::IO)))?;
        } else {
            match rfs::unlinkat(&e.parent, &e.name, AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(x) => return Err(f(x)),
            }
        }
        self.bump(&e.parent, Some(stat_mtime(&pst)), time)
            .map_err(f)
    }

    /// Moves the mtime of the directory at `path` to `time` if it is later
    /// (a partial replica's directory whose entries changed out of view).
    pub fn touch_dir(&self, path: &RelPath, time: Timestamp) -> Result<(), ReplicaFailure> {
        let f = |x| fail("touch", path, x);
        let dir = match self.open_dir(path) {
            Ok(d) => d,
            Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(()),
            Err(x) => return Err(f(x)),
        };
        let st = rfs::fstat(&dir).map_err(f)?;
        let _guard = self.lock_dir(&st);
        let st = rfs::fstat(&dir).map_err(f)?;
        self.bump(&dir, Some(stat_mtime(&st)), time).map_err(f)
    }

    fn bump(&self, dir: &OwnedFd, before: Option<Timestamp>, time: Timestamp) -> Result<(), Errno> {
        let m = match before {
            Some(b) if b > time => b,
            _ => time,
        };
        rfs::futimens(
            dir,
            &Timestamps {
                last_access: omit(),
                last_modification: ts(m),
            },
        )
    }

    /// Opens a regular file for writing without following a symlink or
    /// opening anything that is not a regular file, runs `f`, then sets the
    /// file's mtime to the record time.
    fn with_writable(
        &self,
        path: &RelPath,
        op: &'static str,
        time: Timestamp,
        f: impl FnOnce(BorrowedFd<'_>) -> Result<(), Errno>,
    ) -> Result<Outcome, ReplicaFailure> {
        let pfd = try_outcome!(self.open_path(path), op, path);
        let st = rfs::fstat(&pfd).map_err(|x| fail(op, path, x))?;
        match st.st_mode & S_IFMT {
            crate::op::S_IFREG => {}
            0o040000 => return Ok(Err(Errno::ISDIR)),
            0o120000 => return Ok(Err(Errno::LOOP)),
            _ => return Ok(Err(Errno::INVAL)),
        }
        let fd = rfs::open(
            proc_fd_path(pfd.as_fd()).as_c_str(),
            OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|x| fail(op, path, x))?;
        try_outcome!(f(fd.as_fd()), op, path);
        rfs::futimens(
            &fd,
            &Timestamps {
                last_access: omit(),
                last_modification: ts(time),
            },
        )
        .map_err(|x| fail(op, path, x))?;
        Ok(Ok(()))
    }

    fn chmod(&self, path: &RelPath, mode: u32) -> Result<Outcome, ReplicaFailure> {
        let fd = try_outcome!(self.open_path(path), "chmod", path);
        let st = rfs::fstat(&fd).map_err(|x| fail("chmod", path, x))?;
        if st.st_mode & S_IFMT == 0o120000 {
            // Linux cannot change a symlink's mode (fchmodat2 AT_SYMLINK_NOFOLLOW).
            return Ok(Err(Errno::OPNOTSUPP));
        }
        try_outcome!(
            rfs::chmod(
                proc_fd_path(fd.as_fd()).as_c_str(),
                Mode::from_bits_retain(mode & PERM_BITS)
            ),
            "chmod",
            path
        );
        Ok(Ok(()))
    }

    fn chown(
        &self,
        path: &RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<Outcome, ReplicaFailure> {
        let fd = try_outcome!(self.open_path(path), "chown", path);
        if self.unprivileged {
            return Ok(Ok(()));
        }
        try_outcome!(
            rfs::chownat(
                &fd,
                c"",
                uid.map(rfs::Uid::from_raw),
                gid.map(rfs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            ),
            "chown",
            path
        );
        Ok(Ok(()))
    }

    /// Several attributes, in the order a local setattr applies them;
    /// the first errno is the outcome (every replica stops at the same
    /// step: each step is idempotent and sees the same state).
    fn setattr(
        &self,
        path: &RelPath,
        a: &crate::op::Attrs,
        time: Timestamp,
    ) -> Result<Outcome, ReplicaFailure> {
        if a.uid.is_some() || a.gid.is_some() {
            if let Err(e) = self.chown(path, a.uid, a.gid)? {
                return Ok(Err(e));
            }
        }
        if let Some(mode) = a.mode {
            if let Err(e) = self.chmod(path, mode)? {
                return Ok(Err(e));
            }
        }
        if let Some(size) = a.size {
            let truncated =
                self.with_writable(path, "truncate", time, |fd| rfs::ftruncate(fd, size))?;
            if let Err(e) = truncated {
                return Ok(Err(e));
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            return self.utimens(path, a.atime, a.mtime);
        }
        Ok(Ok(()))
    }

    fn utimens(
        &self,
        path: &RelPath,
        atime: Option<Timestamp>,
        mtime: Option<Timestamp>,
    ) -> Result<Outcome, ReplicaFailure> {
        match try_outcome!(self.target(path), "utimens", path) {
            Target::Root => {
                try_outcome!(
                    rfs::futimens(
                        &self.root_fd,
                        &Timestamps {
                            last_access: atime.map(ts).unwrap_or_else(omit),
                            last_modification: mtime.map(ts).unwrap_or_else(omit),
                        },
                    ),
                    "utimens",
                    path
                );
            }
            Target::Entry(e) => {
                try_outcome!(set_times(&e.parent, &e.name, atime, mtime), "utimens", path);
            }
        }
        Ok(Ok(()))
    }

    fn setxattr(
        &self,
        path: &RelPath,
        name: &[u8],
        value: &[u8],
        flags: XattrFlags,
    ) -> Result<Outcome, ReplicaFailure> {
        let fd = try_outcome!(self.open_path(path), "setxattr", path);
        if self.unprivileged && name.starts_with(b"trusted.") {
            return Ok(Ok(()));
        }
        let limits = self.limits.lock().clone();
        try_outcome!(
            limits.refuse_xattr(proc_fd_path(fd.as_fd()).as_c_str(), name, value),
            "setxattr",
            path
        );
        let name = try_outcome!(cstring(name), "setxattr", path);
        let xf = match flags {
            XattrFlags::Any => rfs::XattrFlags::empty(),
            XattrFlags::Create => rfs::XattrFlags::CREATE,
            XattrFlags::Replace => rfs::XattrFlags::REPLACE,
        };
        // Through the O_PATH handle's /proc link: acts on the inode itself,
        // even a symlink, without resolving anything else.
        try_outcome!(
            rfs::setxattr(
                proc_fd_path(fd.as_fd()).as_c_str(),
                name.as_c_str(),
                value,
                xf
            ),
            "setxattr",
            path
        );
        Ok(Ok(()))
    }

    fn removexattr(&self, path: &RelPath, name: &[u8]) -> Result<Outcome, ReplicaFailure> {
        let fd = try_outcome!(self.open_path(path), "removexattr", path);
        let name = try_outcome!(cstring(name), "removexattr", path);
        try_outcome!(
            rfs::removexattr(proc_fd_path(fd.as_fd()).as_c_str(), name.as_c_str()),
            "removexattr",
            path
        );
        Ok(Ok(()))
    }

    fn fsync(&self, path: &RelPath, datasync: bool) -> Result<Outcome, ReplicaFailure> {
        let pfd = try_outcome!(self.open_path(path), "fsync", path);
        let st = rfs::fstat(&pfd).map_err(|x| fail("fsync", path, x))?;
        let kind = st.st_mode & S_IFMT;
        if kind != crate::op::S_IFREG && kind != 0o040000 {
            return Ok(Ok(()));
        }
        let fd = rfs::open(
            proc_fd_path(pfd.as_fd()).as_c_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|x| fail("fsync", path, x))?;
        let r = if datasync {
            rfs::fdatasync(&fd)
        } else {
            rfs::fsync(&fd)
        };
        r.map_err(|x| fail("fsync", path, x))?;
        Ok(Ok(()))
    }

    /// Prepares a fresh (empty) replica: its root's mtime is set to the
    /// epoch, the defined initial state of every replica, so that the
    /// journal's first namespace change gives every replica the same root
    /// mtime whenever the directory was created.
    pub fn init_fresh(&self) -> std::io::Result<()> {
        rfs::futimens(
            &self.root_fd,
            &Timestamps {
                last_access: omit(),
                last_modification: ts(Timestamp::new(0, 0)),
            },
        )?;
        Ok(())
    }

    /// Makes everything applied so far durable (syncfs on the replica's filesystem).
    pub fn sync(&self) -> std::io::Result<()> {
        rfs::syncfs(&self.root_fd)?;
        Ok(())
    }
}

/// What a create-like operation makes.
enum NewInode<'a> {
    File { mode: u32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a [u8] },
}

impl<'a> NewInode<'a> {
    /// What a create, mknod, mkdir or symlink makes: its path, the inode,
    /// its owner (`None` for any other operation).
    fn of(op: &'a Op) -> Option<(&'a RelPath, NewInode<'a>, u32, u32)> {
        let (path, kind, uid, gid) = match op {
            Op::Create {
                path,
                mode,
                uid,
                gid,
            } => (path, NewInode::File { mode: *mode }, uid, gid),
            Op::Mknod {
                path,
                mode,
                rdev,
                uid,
                gid,
            } => (
                path,
                NewInode::Node {
                    mode: *mode,
                    rdev: *rdev,
                },
                uid,
                gid,
            ),
            Op::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => (path, NewInode::Dir { mode: *mode }, uid, gid),
            Op::Symlink {
                path,
                target,
                uid,
                gid,
            } => (path, NewInode::Symlink { target }, uid, gid),
            _ => return None,
        };
        Some((path, kind, *uid, *gid))
    }

    fn name(&self) -> &'static str {
        match self {
            NewInode::File { .. } => "create",
            NewInode::Dir { .. } => "mkdir",
            NewInode::Node { .. } => "mknod",
            NewInode::Symlink { .. } => "symlink",
        }
    }

    /// The permission bits to set explicitly (symlinks have none).
    fn perm(&self) -> Option<u32> {
        match self {
            NewInode::File { mode } | NewInode::Dir { mode } | NewInode::Node { mode, .. } => {
                Some(*mode & PERM_BITS)
            }
            NewInode::Symlink { .. } => None,
        }
    }
}

fn is_device(mode: u32) -> bool {
    matches!(mode & S_IFMT, crate::op::S_IFCHR | crate::op::S_IFBLK)
}

/// The limits a replica adopted from its topic, if it adopted any.
fn load_limits(root: &Path) -> std::io::Result<Option<Limits>> {
    let path = root
        .join(std::ffi::OsStr::from_bytes(crate::op::STATE_DIR))
        .join(LIMITS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |why: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {why}", path.display()),
        )
    };
    let mut limits = Limits::portable();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| bad("not key=value"))?;
        let number = || value.trim().parse::<u64>().map_err(|_| bad("not a number"));
        match key.trim() {
            "max_file_size" => limits.max_file_size = number()?,
            "name_max" => limits.name_max = number()?.min(u32::MAX as u64) as u32,
            "xattr_bytes_max" => limits.xattr_bytes_max = number()?.min(u32::MAX as u64) as u32,
            "xattr_namespaces" => {
                limits.xattr_namespaces = value
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            other => return Err(bad(&format!("unknown key `{other}`"))),
        }
    }
    Ok(Some(limits))
}

fn openat2_retry(
    base: BorrowedFd<'_>,
    path: &CStr,
    flags: OFlags,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    // openat2 with RESOLVE_BENEATH returns EAGAIN when a concurrent rename
    // anywhere on the system might have affected the walk; just retry.
    let mut tries = 0;
    loop {
        match rfs::openat2(base, path, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 100 => tries += 1,
            other => return other,
        }
    }
}

fn lstat(dir: &OwnedFd, name: &CStr) -> Option<Stat> {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()
}

fn lstat_ino(dir: &OwnedFd, name: &CStr) -> Option<u64> {
    lstat(dir, name).map(|st| st.st_ino)
}

/// utimensat(dir, name, NOFOLLOW); `None` leaves a time unchanged.
fn set_times(
    dir: &OwnedFd,
    name: &CStr,
    atime: Option<Timestamp>,
    mtime: Option<Timestamp>,
) -> Result<(), Errno> {
    rfs::utimensat(
        dir,
        name,
        &Timestamps {
            last_access: atime.map(ts).unwrap_or_else(omit),
            last_modification: mtime.map(ts).unwrap_or_else(omit),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

fn write_all_at(fd: BorrowedFd<'_>, mut data: &[u8], mut offset: u64) -> Result<(), Errno> {
    while !data.is_empty() {
        let n = rustix::io::pwrite(fd, data, offset)?;
        if n == 0 {
            return Err(Errno::IO);
        }
        data = &data[n..];
        offset += n as u64;
    }
    Ok(())
}

//! The master filesystem: every FUSE call as a plain method returning a
//! `Result`, testable without a mount. Reads are served from the data-root
//! through per-inode handles; mutations are planned (paths and keys from
//! the inode table), journaled and applied through the `Pipeline`, and only
//! then reflected in the inode table and answered.
//!
//! Mutating methods block (on Kafka and the applier): the FUSE adapter calls
//! them from its dispatcher threads, never from the FUSE request loop.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, Stat};

use crate::error::{Errno, FsError};
use crate::master::inodes::{InodeTable, ROOT};
use crate::master::keys::{Key, KeySet};
use crate::master::pipeline::{Applied, Pipeline, Planned};
use crate::op::{
    Attrs, Op, RelPath, RenameFlags, Timestamp, XattrFlags, FALLOC_ALLOWED, PERM_BITS, STATE_DIR,
    S_IFMT,
};
use crate::record::Caller;
use crate::sync::Mutex;

const S_ISGID: u32 = 0o2000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_IFREG: u32 = 0o100000;

/// An inode as the kernel sees it: FUSE inode number and attributes.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    /// The FUSE inode number.
    pub ino: u64,
    /// Its attributes in the data-root.
    pub st: Stat,
}

/// A time given to setattr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The master's current time.
    Now,
    /// This time.
    At(Timestamp),
}

/// The attribute changes of one setattr call (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits.
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
}

/// One directory entry of a snapshot taken at opendir.
#[derive(Clone, Debug)]
pub struct DirEntry {
    /// The entry's FUSE inode number (0 while unknown).
    pub ino: u64,
    /// File type bits (S_IFMT), 0 if unknown.
    pub kind: u32,
    /// The entry's name.
    pub name: Vec<u8>,
}

struct Handle {
    ino: u64,
    fd: OwnedFd,
    /// Opened with O_SYNC or O_DSYNC: each write is a durability point.
    sync: bool,
}

/// Largest write carried by one record (Kafka's default message limit is
/// 1 MiB; the record header and protobuf framing need a little room).
pub const DEFAULT_MAX_CHUNK: usize = 256 * 1024;

/// The master's filesystem: every call of the mount, answered from the data-root or journaled through the pipeline.
pub struct MasterFs {
    pipeline: Pipeline,
    /// Largest file size the topic declares (writes beyond are short).
    max_file_size: u64,
    inodes: Arc<Mutex<InodeTable>>,
    handles: Mutex<HashMap<u64, Handle>>,
    dirs: Mutex<HashMap<u64, Vec<DirEntry>>>,
    next_fh: AtomicU64,
    max_chunk: usize,
}

fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

fn read_err(e: Errno) -> FsError {
    FsError::Local {
        op: "read",
        errno: e,
    }
}

fn name_ok(parent: u64, name: &[u8]) -> Result<(), FsError> {
    if parent == ROOT && name == STATE_DIR {
        return Err(FsError::Reserved);
    }
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(FsError::InvalidName);
    }
    Ok(())
}

/// Keys for resolving `ino`'s path: every entry along it, shared.
fn resolve_keys(ks: &mut KeySet, inodes: &InodeTable, ino: u64) -> Result<(), FsError> {
    if ino != ROOT && inodes.get(ino)?.names.is_empty() {
        return Err(FsError::Unlinked);
    }
    for (parent, name) in inodes.chain(ino)? {
        ks.shared(Key::Entry(parent, name));
    }
    Ok(())
}

/// Keys for creating or removing entry `name` in `parent`.
fn entry_keys(
    ks: &mut KeySet,
    inodes: &InodeTable,
    parent: u64,
    name: &[u8],
) -> Result<(), FsError> {
    resolve_keys(ks, inodes, parent)?;
    ks.exclusive(Key::Entry(parent, name.to_vec()));
    ks.shared(Key::DirTimes(parent));
    Ok(())
}

/// Keys for changing `ino`'s content or attributes.
fn inode_keys(ks: &mut KeySet, inodes: &InodeTable, ino: u64, times: bool) -> Result<(), FsError> {
    resolve_keys(ks, inodes, ino)?;
    ks.exclusive(Key::Inode(ino));
    if times {
        ks.exclusive(Key::DirTimes(ino));
    }
    Ok(())
}

fn planned(keys: KeySet, op: Op) -> Planned {
    Planned {
        keys,
        build: Box::new(move |_| op),
    }
}

impl MasterFs {
    /// A filesystem journaling through `pipeline` over the data-root's `inodes`.
    pub fn new(
        pipeline: Pipeline,
        inodes: Arc<Mutex<InodeTable>>,
        max_chunk: usize,
        max_file_size: u64,
    ) -> Self {
        MasterFs {
            pipeline,
            max_file_size,
            inodes,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            max_chunk: max_chunk.max(4096),
        }
    }

    /// The write path.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    fn fd(&self, ino: u64) -> Result<Arc<OwnedFd>, FsError> {
        self.inodes.lock().fd(ino)
    }

    fn stat(&self, ino: u64) -> Result<Attr, FsError> {
        let fd = self.fd(ino)?;
        let st = rfs::fstat(&*fd).map_err(read_err)?;
        Ok(Attr { ino, st })
    }

    fn submit(
        &self,
        caller: Caller,
        mut plan: impl FnMut(&mut InodeTable) -> Result<Planned, FsError>,
    ) -> Result<Applied, FsError> {
        self.pipeline.submit(caller, &mut plan)
    }

    /// Opens `name` in `parent` in the data-root and tells the inode table
    /// the kernel now knows it (one lookup).
    fn learn(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        let pfd = self.fd(parent)?;
        let fd = rfs::openat(
            &*pfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(FsError::local("lookup"))?;
        let st = rfs::fstat(&fd).map_err(read_err)?;
        let ino = self.inodes.lock().learn(parent, name, fd, &st);
        Ok(Attr { ino, st })
    }

    // ---- reads -------------------------------------------------------

    /// lookup(2): the entry `name` in `parent` (not journaled).
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        if parent == ROOT && name == STATE_DIR {
            return Err(FsError::Local {
                op: "lookup",
                errno: Errno::NOENT,
            });
        }
        // The name is read while no operation changing it is in flight:
        // a rename applied to the data-root but not yet to the inode table
        // would otherwise be learned half-way (a live file taken for
        // unlinked, a name given to the wrong inode).
        let keys = {
            let inodes = self.inodes.lock();
            let mut ks = KeySet::new();
            match resolve_keys(&mut ks, &inodes, parent) {
                Ok(()) | Err(FsError::Unlinked) => {}
                Err(e) => return Err(e),
            }
            ks.shared(Key::Entry(parent, name.to_vec()));
            ks
        };
        self.pipeline.reading(&keys, || self.learn(parent, name))?
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.lock().forget(ino, n);
    }

    /// stat(2) of an inode (not journaled).
    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        self.stat(ino)
    }

    /// readlink(2) (not journaled).
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let fd = self.fd(ino)?;
        let target = rfs::readlinkat(&*fd, c"", Vec::new()).map_err(FsError::local("readlink"))?;
        Ok(target.into_bytes())
    }

    /// open(2): a handle on the data-root's file (not journaled; the kernel sends O_TRUNC as a setattr, which is).
    pub fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        let fd = self.fd(ino)?;
        let acc = flags & libc::O_ACCMODE;
        let mut of = OFlags::CLOEXEC;
        of |= if acc == libc::O_RDONLY {
            OFlags::RDONLY
        } else {
            OFlags::RDWR
        };
        let file = rfs::open(proc_path(fd.as_fd()).as_c_str(), of, Mode::empty())
            .map_err(FsError::local("open"))?;
        self.inodes.lock().pin(ino)?;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let sync = flags & (libc::O_SYNC | libc::O_DSYNC) != 0;
        self.handles.lock().insert(
            fh,
            Handle {
                ino,
                fd: file,
                sync,
            },
        );
        Ok(fh)
    }

    /// read(2) from an open file (not journaled).
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let handles = self.handles.lock();
        let h = handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = rustix::io::pread(&h.fd, &mut buf[done..], offset + done as u64)
                .map_err(read_err)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    /// Closes a file handle.
    pub fn release(&self, fh: u64) {
        let handle = self.handles.lock().remove(&fh);
        if let Some(h) = handle {
            self.inodes.lock().unpin(h.ino);
        }
    }

    /// opendir(3): the directory's entries, read once (not journaled).
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        let fd = self.fd(ino)?;
        let dir = rfs::openat(
            &*fd,
            c".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(FsError::local("opendir"))?;
        let mut entries = Vec::new();
        let parent = {
            let inodes = self.inodes.lock();
            inodes
                .get(ino)
                .ok()
                .and_then(|n| n.names.first().map(|(p, _)| *p))
                .unwrap_or(ROOT)
        };
        let mut d = rfs::Dir::read_from(&dir).map_err(read_err)?;
        while let Some(e) = d.read() {
            let e = e.map_err(read_err)?;
            let name = e.file_name().to_bytes().to_vec();
            if ino == ROOT && name == STATE_DIR {
                continue;
            }
            let kind = match e.file_type() {
                rfs::FileType::Directory => S_IFDIR,
                rfs::FileType::RegularFile => crate::op::S_IFREG,
                rfs::FileType::Symlink => S_IFLNK,
                rfs::FileType::Fifo => crate::op::S_IFIFO,
                rfs::FileType::Socket => crate::op::S_IFSOCK,
                rfs::FileType::CharacterDevice => crate::op::S_IFCHR,
                rfs::FileType::BlockDevice => crate::op::S_IFBLK,
                rfs::FileType::Unknown => 0,
            };
            let child = if name == b"." {
                ino
            } else if name == b".." {
                parent
            } else {
                self.inodes
                    .lock()
                    .child(ino, &name)
                    .unwrap_or(e.ino() | (1 << 63))
            };
            entries.push(DirEntry {
                ino: child,
                kind,
                name,
            });
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, entries);
        Ok(fh)
    }

    /// Entries of an open directory from `offset` (0-based index).
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let dirs = self.dirs.lock();
        let entries = dirs.get(&fh).ok_or(FsError::BadHandle(fh))?;
        Ok(entries.iter().skip(offset as usize).cloned().collect())
    }

    /// Closes a directory handle.
    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// statfs(2) of the data-root.
    pub fn statfs(&self) -> Result<rfs::StatVfs, FsError> {
        let fd = self.fd(ROOT)?;
        rfs::fstatvfs(&*fd).map_err(read_err)
    }

    /// getxattr(2) (not journaled).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>, FsError> {
        let fd = self.fd(ino)?;
        let path = proc_path(fd.as_fd());
        let mut buf = vec![0u8; 256];
        loop {
            match rfs::getxattr(path.as_c_str(), name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
                Err(e) => return Err(FsError::local("getxattr")(e)),
            }
        }
    }

    /// listxattr(2) (not journaled).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let fd = self.fd(ino)?;
        let path = proc_path(fd.as_fd());
        let mut buf = vec![0u8; 1024];
        loop {
            match rfs::listxattr(path.as_c_str(), &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Err(Errno::RANGE) if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
                Err(e) => return Err(FsError::local("listxattr")(e)),
            }
        }
    }

    // ---- namespace changes -------------------------------------------

    /// Owner of a new inode in `parent`: the caller, with the group of a
    /// set-group-id directory; directories inherit its S_ISGID.
    fn new_owner(&self, parent: u64, caller: &Caller) -> Result<(u32, u32, bool), FsError> {
        let pst = self.stat(parent)?.st;
        if pst.st_mode & S_ISGID != 0 {
            Ok((caller.uid, pst.st_gid, true))
        } else {
            Ok((caller.uid, caller.gid, false))
        }
    }

    fn create_entry(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        make: impl Fn(RelPath, u32, u32, bool) -> Op,
    ) -> Result<(Applied, u32, u32), FsError> {
        name_ok(parent, name)?;
        let (uid, gid, sgid) = self.new_owner(parent, &caller)?;
        let applied = self.submit(caller, |inodes| {
            let path = inodes.child_path(parent, name)?;
            let mut ks = KeySet::new();
            entry_keys(&mut ks, inodes, parent, name)?;
            Ok(planned(ks, make(path, uid, gid, sgid)))
        })?;
        Ok((applied, uid, gid))
    }

    /// create(2) with O_CREAT: makes the file (or opens an existing one
    /// without O_EXCL) and opens it.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> Result<(Attr, u64), FsError> {
        let perm = mode & !umask & PERM_BITS;
        let (applied, _, _) =
            self.create_entry(caller, parent, name, |path, uid, gid, _| Op::Create {
                path,
                mode: perm,
                uid,
                gid,
            })?;
        match applied.outcome {
            Ok(()) => {}
            Err(Errno::EXIST) if flags & libc::O_EXCL == 0 => {
                // Learned while the keys are held (nothing changes it).
                let attr = self.learn(parent, name);
                drop(applied);
                let attr = attr?;
                if flags & libc::O_TRUNC != 0 && attr.st.st_size != 0 {
                    let truncate = SetAttr {
                        size: Some(0),
                        ..SetAttr::default()
                    };
                    self.setattr(caller, attr.ino, truncate)?;
                }
                let fh = self.open(attr.ino, flags)?;
                return Ok((self.stat(attr.ino)?, fh));
            }
            Err(e) => return Err(FsError::Outcome(e)),
        }
        let attr = self.learn(parent, name)?;
        drop(applied);
        let fh = self.open(attr.ino, flags)?;
        Ok((attr, fh))
    }

    /// mknod(2): device nodes, FIFOs, sockets and regular files.
    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u64,
    ) -> Result<Attr, FsError> {
        let kind = mode & S_IFMT;
        let perm = mode & !umask & PERM_BITS;
        let kind = if kind == 0 { crate::op::S_IFREG } else { kind };
        let (applied, _, _) =
            self.create_entry(caller, parent, name, |path, uid, gid, _| Op::Mknod {
                path,
                mode: kind | perm,
                rdev,
                uid,
                gid,
            })?;
        self.finish_entry(applied, parent, name)
    }

    /// mkdir(2).
    pub fn mkdir(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<Attr, FsError> {
        let perm = mode & !umask & PERM_BITS;
        let (applied, _, _) =
            self.create_entry(caller, parent, name, |path, uid, gid, sgid| Op::Mkdir {
                path,
                mode: if sgid { perm | S_ISGID } else { perm },
                uid,
                gid,
            })?;
        self.finish_entry(applied, parent, name)
    }

    /// symlink(2).
    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr, FsError> {
        if target.is_empty() || target.contains(&0) {
            return Err(FsError::Invalid(
                "a symlink target must be non-empty and free of NUL bytes",
            ));
        }
        let target = target.to_vec();
        let (applied, _, _) =
            self.create_entry(caller, parent, name, |path, uid, gid, _| Op::Symlink {
                path,
                target: target.clone(),
                uid,
                gid,
            })?;
        self.finish_entry(applied, parent, name)
    }

    fn finish_entry(&self, applied: Applied, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        applied.outcome.map_err(FsError::Outcome)?;
        let attr = self.learn(parent, name);
        drop(applied);
        attr
    }

    /// link(2).
    pub fn link(
        &self,
        caller: Caller,
        ino: u64,
        newparent: u64,
        newname: &[u8],
    ) -> Result<Attr, FsError> {
        name_ok(newparent, newname)?;
        let applied = self.submit(caller, |inodes| {
            let src = inodes.path(ino)?;
            let dst = inodes.child_path(newparent, newname)?;
            let mut ks = KeySet::new();
            resolve_keys(&mut ks, inodes, ino)?;
            entry_keys(&mut ks, inodes, newparent, newname)?;
            Ok(planned(ks, Op::Link { src, dst }))
        })?;
        self.finish_entry(applied, newparent, newname)
    }

    /// unlink(2).
    pub fn unlink(&self, caller: Caller, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.remove(caller, parent, name, false)
    }

    /// rmdir(2).
    pub fn rmdir(&self, caller: Caller, parent: u64, name: &[u8]) -> Result<(), FsError> {
        self.remove(caller, parent, name, true)
    }

    fn remove(&self, caller: Caller, parent: u64, name: &[u8], dir: bool) -> Result<(), FsError> {
        name_ok(parent, name)?;
        let applied = self.submit(caller, |inodes| {
            let path = inodes.child_path(parent, name)?;
            let mut ks = KeySet::new();
            entry_keys(&mut ks, inodes, parent, name)?;
            Ok(planned(
                ks,
                if dir {
                    Op::Rmdir { path }
                } else {
                    Op::Unlink { path }
                },
            ))
        })?;
        applied.outcome.map_err(FsError::Outcome)?;
        self.inodes.lock().remove_name(parent, name);
        Ok(())
    }

    /// rename(2) and renameat2(2) flags (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), FsError> {
        name_ok(parent, name)?;
        name_ok(newparent, newname)?;
        let flags =
            RenameFlags::from_bits(flags).ok_or(FsError::Invalid("unknown rename flags"))?;
        let applied = self.submit(caller, |inodes| {
            let src = inodes.child_path(parent, name)?;
            let dst = inodes.child_path(newparent, newname)?;
            let mut ks = KeySet::new();
            entry_keys(&mut ks, inodes, parent, name)?;
            entry_keys(&mut ks, inodes, newparent, newname)?;
            // The renamed inode's mtime is restored after the move (and,
            // for an exchange, the other one's): an exclusive key orders it
            // with writes and utimens through other hard links.
            let moved = [
                Some((parent, name)),
                flags.exchange.then_some((newparent, newname)),
            ];
            for (dir, entry) in moved.into_iter().flatten() {
                if let Some(ino) = inodes.known_at(dir, entry) {
                    ks.exclusive(Key::Inode(ino));
                }
            }
            Ok(planned(ks, Op::Rename { src, dst, flags }))
        })?;
        applied.outcome.map_err(FsError::Outcome)?;
        self.inodes
            .lock()
            .rename(parent, name, newparent, newname, flags.exchange);
        Ok(())
    }

    // ---- content and attributes --------------------------------------

    /// Journals an operation on inode `ino`'s content or attributes.
    fn inode_op(
        &self,
        caller: Caller,
        ino: u64,
        times: bool,
        make: impl Fn(RelPath) -> Op,
    ) -> Result<(), FsError> {
        let applied = self.submit(caller, |inodes| {
            let mut ks = KeySet::new();
            inode_keys(&mut ks, inodes, ino, times)?;
            let path = inodes.path(ino)?;
            Ok(planned(ks, make(path)))
        })?;
        applied.outcome.map_err(FsError::Outcome)
    }

    /// A setattr that changes nothing a replica keeps — an owner, group,
    /// permission bits and mtime the inode already has (or none), no size
    /// and no atime — is answered from the data-root and journals nothing:
    /// `Some(attributes)`. `tar x` as root sends one per entry (a chown to
    /// the owner the entry was created with); with the writeback cache the
    /// kernel sends one per renamed file (its own mtime, and a ctime, which
    /// no replica keeps: it cannot be set). The inode is read with its keys
    /// held shared, so no record changing it is in flight; the call takes
    /// effect at that instant, and applied to any replica (which holds the
    /// same inode there) it would change nothing either. `None`: it must be
    /// journaled (also when a record on the inode is in flight: this does
    /// not wait for it).
    pub fn setattr_unchanged(&self, ino: u64, attr: &SetAttr) -> Option<Result<Attr, FsError>> {
        let may_be_unchanged = attr.size.is_none()
            && attr.atime.is_none()
            && !matches!(attr.mtime, Some(SetTime::Now));
        if !may_be_unchanged {
            return None;
        }
        if *attr == SetAttr::default() {
            return Some(self.stat(ino));
        }
        let keys = {
            let inodes = self.inodes.lock();
            let mut ks = KeySet::new();
            resolve_keys(&mut ks, &inodes, ino).ok()?;
            ks.shared(Key::Inode(ino));
            ks
        };
        // Not waiting: this runs on a FUSE thread, and a record in flight
        // on the inode may wait for Kafka; the journaled path waits for it.
        let read = self
            .pipeline
            .try_reading(&keys, || self.unchanged_attr(ino, attr))?;
        match read {
            Ok(Some(a)) => Some(Ok(a)),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The inode's attributes if `attr` (no size, atime or "now") would
    /// change nothing a replica keeps, `None` if it would.
    fn unchanged_attr(&self, ino: u64, attr: &SetAttr) -> Result<Option<Attr>, FsError> {
        let a = self.stat(ino)?;
        let st = &a.st;
        let kind = st.st_mode & S_IFMT;
        let same_mtime = |t: SetTime| match t {
            SetTime::At(t) => (st.st_mtime, st.st_mtime_nsec as u32) == (t.sec, t.nsec),
            SetTime::Now => false,
        };
        let same = attr.uid.is_none_or(|u| u == st.st_uid)
            && attr.gid.is_none_or(|g| g == st.st_gid)
            // A symlink's mode cannot change: its chmod is refused on the
            // journaled path, as Linux refuses it.
            && attr.mode.is_none_or(|m| kind != S_IFLNK && m & PERM_BITS == st.st_mode & PERM_BITS)
            && attr.mtime.is_none_or(same_mtime);
        let owner = attr.uid.is_some() || attr.gid.is_some();
        if !same || (owner && self.chown_clears_something(ino, st)?) {
            return Ok(None);
        }
        Ok(Some(a))
    }

    /// Whether a chown of this inode to its own owner would still change
    /// it: Linux clears the set-user-ID and set-group-ID bits and the file
    /// capabilities (`security.capability`) of anything but a directory on
    /// every chown, whoever calls it and whatever the new owner.
    fn chown_clears_something(&self, ino: u64, st: &Stat) -> Result<bool, FsError> {
        const SET_ID: u32 = 0o6000;
        let kind = st.st_mode & S_IFMT;
        if kind == S_IFDIR {
            return Ok(false);
        }
        if st.st_mode & SET_ID != 0 {
            return Ok(true);
        }
        if kind != S_IFREG {
            // File capabilities exist on regular files only.
            return Ok(false);
        }
        let fd = self.fd(ino)?;
        let path = proc_path(fd.as_fd());
        let mut none = [0u8; 0];
        match rfs::getxattr(path.as_c_str(), c"security.capability", &mut none[..]) {
            Err(Errno::NODATA | Errno::NOTSUP) => Ok(false),
            // Present, or unknown: journaled, so every replica applies it.
            Ok(_) | Err(_) => Ok(true),
        }
    }

    /// setattr(2): chown, chmod, truncate, utimens, journaled in that order
    /// (chown clears set-id bits, so the mode comes after it). On an open
    /// file that lost its last name they are applied to the data-root alone.
    pub fn setattr(&self, caller: Caller, ino: u64, attr: SetAttr) -> Result<Attr, FsError> {
        match self.setattr_journaled(caller, ino, attr) {
            Err((FsError::Unlinked, rest)) => self.setattr_unlinked(ino, &rest)?,
            Err((e, _)) => return Err(e),
            Ok(()) => {}
        }
        self.stat(ino)
    }

    /// Journals each part of a setattr; on failure, returns the error and
    /// the parts not yet done.
    fn setattr_journaled(
        &self,
        caller: Caller,
        ino: u64,
        attr: SetAttr,
    ) -> Result<(), (FsError, SetAttr)> {
        if attr.mode.is_some() {
            let is_link = self.stat(ino).map_err(|e| (e, attr))?.st.st_mode & S_IFMT == S_IFLNK;
            if is_link {
                // As Linux (and every replica's applier): a symlink's mode
                // cannot change. Nothing is journaled.
                return Err((FsError::Unsupported("chmod of a symlink"), attr));
            }
        }
        let attrs = Attrs {
            uid: attr.uid,
            gid: attr.gid,
            mode: attr.mode.map(|m| m & PERM_BITS),
            size: attr.size,
            atime: None,
            mtime: None,
        };
        let times = attr.atime.is_some() || attr.mtime.is_some();
        if attrs.count() + usize::from(times) > 1 {
            // One record for the whole call: one round trip, and replicas
            // apply it as one step.
            return self
                .setattr_record(caller, ino, attrs, attr.atime, attr.mtime)
                .map_err(|e| (e, attr));
        }
        let journaled = if attr.uid.is_some() || attr.gid.is_some() {
            let (uid, gid) = (attr.uid, attr.gid);
            self.inode_op(caller, ino, false, |path| Op::Chown { path, uid, gid })
        } else if let Some(mode) = attrs.mode {
            self.inode_op(caller, ino, false, |path| Op::Chmod { path, mode })
        } else if let Some(size) = attr.size {
            self.inode_op(caller, ino, false, |path| Op::Truncate { path, size })
        } else if times {
            self.utimens(caller, ino, attr.atime, attr.mtime)
        } else {
            Ok(())
        };
        journaled.map_err(|e| (e, attr))
    }

    /// Several attributes as one `SetAttr` record.
    fn setattr_record(
        &self,
        caller: Caller,
        ino: u64,
        attrs: Attrs,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<(), FsError> {
        self.journal_times(caller, ino, atime, mtime, move |path, atime, mtime| {
            Op::SetAttr {
                path,
                attrs: Attrs {
                    atime,
                    mtime,
                    ..attrs
                },
            }
        })
    }

    fn utimens(
        &self,
        caller: Caller,
        ino: u64,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    ) -> Result<(), FsError> {
        self.journal_times(caller, ino, atime, mtime, |path, atime, mtime| {
            Op::Utimens { path, atime, mtime }
        })
    }

    /// Journals an operation on `ino` carrying times, "now" being the
    /// record's own time (resolved when it is sequenced).
    fn journal_times(
        &self,
        caller: Caller,
        ino: u64,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
        make: impl Fn(RelPath, Option<Timestamp>, Option<Timestamp>) -> Op + Clone + Send + 'static,
    ) -> Result<(), FsError> {
        let applied = self.submit(caller, |inodes| {
            let mut ks = KeySet::new();
            inode_keys(&mut ks, inodes, ino, mtime.is_some())?;
            let path = inodes.path(ino)?;
            let make = make.clone();
            Ok(Planned {
                keys: ks,
                build: Box::new(move |now| {
                    let resolve = |t: SetTime| match t {
                        SetTime::Now => now,
                        SetTime::At(t) => t,
                    };
                    make(path, atime.map(resolve), mtime.map(resolve))
                }),
            })
        })?;
        applied.outcome.map_err(FsError::Outcome)
    }

    /// setattr of an unlinked, open inode: applied locally only.
    fn setattr_unlinked(&self, ino: u64, attr: &SetAttr) -> Result<(), FsError> {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
        } = *attr;
        let fd = self.fd(ino)?;
        let path = proc_path(fd.as_fd());
        if uid.is_some() || gid.is_some() {
            rfs::chownat(
                &*fd,
                c"",
                uid.map(rfs::Uid::from_raw),
                gid.map(rfs::Gid::from_raw),
                AtFlags::EMPTY_PATH,
            )
            .map_err(FsError::local("chown"))?;
        }
        if let Some(mode) = mode {
            rfs::chmod(path.as_c_str(), Mode::from_bits_retain(mode & PERM_BITS))
                .map_err(FsError::local("chmod"))?;
        }
        if let Some(size) = size {
            let f = rfs::open(
                path.as_c_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(FsError::local("open"))?;
            rfs::ftruncate(&f, size).map_err(FsError::local("truncate"))?;
        }
        if atime.is_some() || mtime.is_some() {
            let spec = |t: Option<SetTime>| match t {
                None => rfs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rfs::UTIME_OMIT,
                },
                Some(SetTime::Now) => rfs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rfs::UTIME_NOW,
                },
                Some(SetTime::At(t)) => rfs::Timespec {
                    tv_sec: t.sec,
                    tv_nsec: t.nsec as _,
                },
            };
            rfs::utimensat(
                rfs::CWD,
                path.as_c_str(),
                &rfs::Timestamps {
                    last_access: spec(atime),
                    last_modification: spec(mtime),
                },
                AtFlags::empty(),
            )
            .map_err(FsError::local("utimens"))?;
        }
        Ok(())
    }

    /// write(2): journaled in chunks of at most `max_chunk` bytes. A write
    /// that fails after some chunks returns the short count; beyond the
    /// topic's largest file size it is short too (EFBIG at the limit), as
    /// on a local filesystem.
    pub fn write(
        &self,
        caller: Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<u32, FsError> {
        if offset >= self.max_file_size && !data.is_empty() {
            return Err(FsError::Refused(Errno::FBIG));
        }
        let fits = (self.max_file_size - offset).min(data.len() as u64) as usize;
        let data = &data[..fits];
        let mut done = 0;
        for chunk in data.chunks(self.max_chunk) {
            let off = offset + done as u64;
            let journaled = self.inode_op(caller, ino, false, |path| Op::Write {
                path,
                offset: off,
                data: bytes::Bytes::copy_from_slice(chunk),
            });
            match journaled {
                Ok(()) => done += chunk.len(),
                Err(FsError::Unlinked) => {
                    match self.write_unlinked(fh, off, &data[done..]) {
                        Ok(n) => done += n,
                        Err(e) if done == 0 => return Err(e),
                        Err(_) => {}
                    }
                    break;
                }
                Err(e) if done == 0 => return Err(e),
                Err(e) => {
                    tracing::debug!("write of inode {ino} short after {done} bytes: {e}");
                    break;
                }
            }
        }
        if self.is_sync(fh) {
            // O_SYNC/O_DSYNC: the write returns once it is durable.
            self.pipeline.barrier()?;
        }
        Ok(done as u32)
    }

    fn is_sync(&self, fh: u64) -> bool {
        self.handles.lock().get(&fh).is_some_and(|h| h.sync)
    }

    /// Tells the filesystem how to make the kernel forget what it cached
    /// (installed by the mount).
    pub fn set_kernel_cache(&self, cache: Arc<dyn crate::master::kernel_cache::KernelCache>) {
        self.pipeline.set_kernel_cache(cache);
    }

    /// Does the mount answer before Kafka's acknowledgement (the `fsync`
    /// durability mode, where the kernel may cache writes)?
    pub fn answers_before_acknowledgement(&self) -> bool {
        self.pipeline.unacknowledged().is_some()
    }

    /// A write to an open file that has no name: the data-root alone.
    fn write_unlinked(&self, fh: u64, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        let handles = self.handles.lock();
        let h = handles.get(&fh).ok_or(FsError::BadHandle(fh))?;
        let mut done = 0;
        while done < data.len() {
            match rustix::io::pwrite(&h.fd, &data[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if done == 0 => return Err(FsError::local("write")(e)),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    /// fallocate(2) with the modes every replica can reproduce.
    pub fn fallocate(
        &self,
        caller: Caller,
        ino: u64,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), FsError> {
        let mode = mode as u32;
        if mode & !FALLOC_ALLOWED != 0 {
            return Err(FsError::Unsupported("fallocate mode"));
        }
        let journaled = self.inode_op(caller, ino, false, |path| Op::Fallocate {
            path,
            mode,
            offset,
            length,
        });
        match journaled {
            Err(FsError::Unlinked) => {
                let fd = self.fd(ino)?;
                let file = rfs::open(
                    proc_path(fd.as_fd()).as_c_str(),
                    OFlags::WRONLY,
                    Mode::empty(),
                )
                .map_err(FsError::local("open"))?;
                rfs::fallocate(
                    &file,
                    rfs::FallocateFlags::from_bits_retain(mode),
                    offset,
                    length,
                )
                .map_err(FsError::local("fallocate"))
            }
            other => other,
        }
    }

    /// fsync(2): journaled, so every replica syncs the file at the same
    /// point; in the `fsync` durability mode it then waits until Kafka
    /// acknowledged every record before it.
    pub fn fsync(&self, caller: Caller, ino: u64, datasync: bool) -> Result<(), FsError> {
        self.fsync_record(caller, ino, datasync)?;
        self.pipeline.barrier()
    }

    fn fsync_record(&self, caller: Caller, ino: u64, datasync: bool) -> Result<(), FsError> {
        let applied = self.submit(caller, |inodes| {
            let mut ks = KeySet::new();
            resolve_keys(&mut ks, inodes, ino)?;
            ks.shared(Key::Inode(ino));
            let path = inodes.path(ino)?;
            Ok(planned(ks, Op::Fsync { path, datasync }))
        });
        match applied {
            // Nothing a replica could see; the data-root syncs at checkpoints.
            Err(FsError::Unlinked) => Ok(()),
            Err(e) => Err(e),
            Ok(a) => a.outcome.map_err(FsError::Outcome),
        }
    }

    /// setxattr(2).
    pub fn setxattr(
        &self,
        caller: Caller,
        ino: u64,
        name: &[u8],
        value: &[u8],
        flags: i32,
    ) -> Result<(), FsError> {
        let flags = XattrFlags::from_bits(flags as u32)
            .ok_or(FsError::Invalid("unknown setxattr flags"))?;
        if name.is_empty() || name.contains(&0) {
            return Err(FsError::Invalid(
                "an xattr name must be non-empty and free of NUL bytes",
            ));
        }
        let journaled = self.inode_op(caller, ino, false, |path| Op::SetXattr {
            path,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        });
        if !matches!(journaled, Err(FsError::Unlinked)) {
            return journaled;
        }
        let fd = self.fd(ino)?;
        let xf = match flags {
            XattrFlags::Any => rfs::XattrFlags::empty(),
            XattrFlags::Create => rfs::XattrFlags::CREATE,
            XattrFlags::Replace => rfs::XattrFlags::REPLACE,
        };
        rfs::setxattr(proc_path(fd.as_fd()).as_c_str(), name, value, xf)
            .map_err(FsError::local("setxattr"))
    }

    /// removexattr(2).
    pub fn removexattr(&self, caller: Caller, ino: u64, name: &[u8]) -> Result<(), FsError> {
        let journaled = self.inode_op(caller, ino, false, |path| Op::RemoveXattr {
            path,
            name: name.to_vec(),
        });
        if !matches!(journaled, Err(FsError::Unlinked)) {
            return journaled;
        }
        let fd = self.fd(ino)?;
        rfs::removexattr(proc_path(fd.as_fd()).as_c_str(), name)
            .map_err(FsError::local("removexattr"))
    }
}

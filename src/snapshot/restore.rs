//! Building a replica from a snapshot's parts, into an empty directory.
//!
//! Every name is created with `*at` calls in the directory the walk is in
//! (one open descriptor per level), never through a path, so no part can
//! reach outside the replica; a hard link's earlier name is resolved
//! beneath the root without following symlinks. Attributes are set after
//! content (owner, xattrs, mode, times; a directory's once its children
//! are in), so every mtime is the snapshot's.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timestamps};
use rustix::io::Errno;

use super::{io_at, join, SnapshotError, SnapshotInfo, SNAPSHOT_VERSION};
use crate::error::PathError;
use crate::op::{RelPath, Timestamp, PERM_BITS, STATE_DIR, S_IFMT};
use crate::record::pb;
use crate::record::pb::snapshot_part::Part;
use crate::replica::apply::{proc_fd_path, ts, Replica};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// What a restore built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Entries restored.
    pub entries: u64,
    /// File bytes restored.
    pub bytes: u64,
}

/// A directory whose entries are being created.
struct OpenDir {
    fd: OwnedFd,
    rel: Vec<u8>,
    entry: pb::SnapshotEntry,
}

/// A regular file whose content is arriving.
struct OpenFile {
    file: File,
    name: CString,
    rel: Vec<u8>,
    entry: pb::SnapshotEntry,
}

/// Applies the parts of one snapshot, in order.
pub struct Builder<'a> {
    root: &'a Path,
    replica: Replica,
    id: Vec<u8>,
    next: u64,
    stack: Vec<OpenDir>,
    file: Option<OpenFile>,
    done: Option<pb::SnapshotEnd>,
    got: Restored,
    unprivileged: bool,
    stop: &'a AtomicBool,
}

impl<'a> Builder<'a> {
    /// Starts a restore of `snap` into `root` (empty but for its state
    /// folder).
    pub fn new(
        root: &'a Path,
        snap: &SnapshotInfo,
        unprivileged: bool,
        stop: &'a AtomicBool,
    ) -> Result<Self, SnapshotError> {
        let replica = Replica::open(root).map_err(io_at(root))?;
        Ok(Builder {
            root,
            replica,
            id: snap.id.clone(),
            next: 0,
            stack: Vec::new(),
            file: None,
            done: None,
            got: Restored::default(),
            unprivileged,
            stop,
        })
    }

    fn malformed(&self, why: impl Into<String>) -> SnapshotError {
        SnapshotError::Malformed {
            id: super::hex(&self.id),
            index: self.next,
            why: why.into(),
        }
    }

    fn path(&self, rel: &[u8]) -> PathBuf {
        self.root.join(OsStr::from_bytes(rel))
    }

    /// Takes the next part.
    pub fn part(&mut self, part: pb::SnapshotPart) -> Result<(), SnapshotError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err(SnapshotError::Stopped);
        }
        if part.version != SNAPSHOT_VERSION {
            return Err(self.malformed(format!(
                "format version {} (this kafkafs reads {SNAPSHOT_VERSION})",
                part.version
            )));
        }
        if part.snapshot_id != self.id || part.index != self.next {
            return Err(self.malformed(format!(
                "found part {} of snapshot {} instead (parts missing or out of order)",
                part.index,
                super::hex(&part.snapshot_id)
            )));
        }
        if self.done.is_some() {
            return Err(self.malformed("a part after the end"));
        }
        match part.part {
            Some(Part::Header(_)) if self.next == 0 => {}
            Some(Part::Header(_)) => return Err(self.malformed("a second header")),
            _ if self.next == 0 => return Err(self.malformed("no header first")),
            Some(Part::Entry(e)) => self.entry(e)?,
            Some(Part::Data(d)) => self.data(d)?,
            Some(Part::DirEnd(_)) => self.dir_end()?,
            Some(Part::End(end)) => self.end(end)?,
            None => return Err(self.malformed("an empty part (written by a newer kafkafs?)")),
        }
        self.next += 1;
        Ok(())
    }

    /// What was built so far.
    pub fn so_far(&self) -> Restored {
        self.got
    }

    /// Checks the snapshot was complete; returns what was built.
    pub fn finish(mut self) -> Result<Restored, SnapshotError> {
        if self.done.is_none() {
            return Err(self.malformed("the snapshot ends before its End part"));
        }
        self.replica.sync().map_err(io_at(self.root))?;
        self.done = None;
        Ok(self.got)
    }

    fn entry(&mut self, e: pb::SnapshotEntry) -> Result<(), SnapshotError> {
        self.close_file()?;
        if self.stack.is_empty() {
            return self.root_entry(e);
        }
        let name = self.check_name(&e.name)?;
        let top = self.stack.len() - 1;
        let rel = join(&self.stack[top].rel, &e.name);
        self.got.entries += 1;
        let path = self.path(&rel);
        let at = |source: Errno| SnapshotError::Io {
            path: path.clone(),
            source: source.into(),
        };
        if !e.link_to.is_empty() {
            return self.link(&e.link_to, &name, &rel);
        }
        let parent = &self.stack[top].fd;
        match e.mode & S_IFMT {
            S_IFDIR => {
                rfs::mkdirat(parent, &name, Mode::from_bits_retain(0o700)).map_err(at)?;
                let fd = rfs::openat(
                    parent,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(at)?;
                self.stack.push(OpenDir { fd, rel, entry: e });
            }
            S_IFREG => self.open_file(name, rel, e, at)?,
            S_IFLNK => {
                let target = CString::new(e.symlink_target.clone())
                    .map_err(|_| self.malformed("NUL byte in a symlink target"))?;
                rfs::symlinkat(&target, parent, &name).map_err(at)?;
                self.attributes(Some(top), &name, &rel, &e)?;
            }
            kind @ (0o010000 | 0o140000 | 0o020000 | 0o060000) => {
                self.make_node(top, &name, kind, e.rdev).map_err(at)?;
                self.attributes(Some(top), &name, &rel, &e)?;
            }
            other => return Err(self.malformed(format!("unknown file type {other:#o}"))),
        }
        Ok(())
    }

    /// A regular file: created at its size, its content follows in chunks.
    fn open_file(
        &mut self,
        name: CString,
        rel: Vec<u8>,
        entry: pb::SnapshotEntry,
        at: impl Fn(Errno) -> SnapshotError,
    ) -> Result<(), SnapshotError> {
        let parent = &self.stack[self.stack.len() - 1].fd;
        let fd = rfs::openat(
            parent,
            &name,
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_retain(0o600),
        )
        .map_err(at)?;
        let file = File::from(fd);
        file.set_len(entry.size).map_err(io_at(self.path(&rel)))?;
        self.file = Some(OpenFile {
            file,
            name,
            rel,
            entry,
        });
        Ok(())
    }

    /// A FIFO, socket or device node (an empty file stands in for a device
    /// without root, as on a slave without root).
    fn make_node(&self, top: usize, name: &CString, kind: u32, rdev: u64) -> Result<(), Errno> {
        let parent = &self.stack[top].fd;
        let device = kind == 0o020000 || kind == 0o060000;
        if self.unprivileged && device {
            return rfs::openat(
                parent,
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW,
                Mode::from_bits_retain(0o600),
            )
            .map(drop);
        }
        rfs::mknodat(
            parent,
            name,
            FileType::from_raw_mode(kind),
            Mode::from_bits_retain(0o600),
            rdev,
        )
    }

    /// The root's entry opens the walk (its attributes come at its end).
    fn root_entry(&mut self, e: pb::SnapshotEntry) -> Result<(), SnapshotError> {
        if !e.name.is_empty() || e.mode & S_IFMT != S_IFDIR || self.got.entries > 0 {
            return Err(self.malformed("the tree must start with the root directory"));
        }
        let fd = rfs::open(
            self.root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|x| io_at(self.root)(x.into()))?;
        self.got.entries += 1;
        self.stack.push(OpenDir {
            fd,
            rel: Vec::new(),
            entry: e,
        });
        Ok(())
    }

    fn check_name(&self, name: &[u8]) -> Result<CString, SnapshotError> {
        let bad = |source| SnapshotError::BadName {
            id: super::hex(&self.id),
            index: self.next,
            source,
        };
        match name {
            b"" => return Err(bad(PathError::EmptyComponent)),
            b"." => return Err(bad(PathError::Dot)),
            b".." => return Err(bad(PathError::DotDot)),
            _ if name.contains(&b'/') => return Err(bad(PathError::EmptyComponent)),
            _ if self.stack.len() == 1 && name == STATE_DIR => {
                return Err(bad(PathError::Reserved))
            }
            _ => {}
        }
        CString::new(name).map_err(|_| bad(PathError::Nul))
    }

    /// Another name of an inode restored earlier.
    fn link(&mut self, to: &[u8], name: &CString, rel: &[u8]) -> Result<(), SnapshotError> {
        let target = RelPath::new_entry(to.to_vec()).map_err(|source| SnapshotError::BadName {
            id: super::hex(&self.id),
            index: self.next,
            source,
        })?;
        let Some((dir, first)) = target.split_last() else {
            return Err(self.malformed("a hard link to the root"));
        };
        let at = |x: Errno| io_at(self.path(rel))(x.into());
        let from = self.replica.open_dir(&dir).map_err(at)?;
        let first = CString::new(first).map_err(|_| self.malformed("NUL in a link target"))?;
        let top = &self.stack[self.stack.len() - 1].fd;
        rfs::linkat(&from, &first, top, name, AtFlags::empty()).map_err(at)?;
        Ok(())
    }

    fn data(&mut self, d: pb::SnapshotData) -> Result<(), SnapshotError> {
        let Some(f) = &self.file else {
            return Err(self.malformed("file content without a file"));
        };
        if d.offset.saturating_add(d.data.len() as u64) > f.entry.size {
            return Err(self.malformed("file content beyond the file's size"));
        }
        let path = self.path(&f.rel);
        f.file
            .write_all_at(&d.data, d.offset)
            .map_err(io_at(path))?;
        self.got.bytes += d.data.len() as u64;
        Ok(())
    }

    fn close_file(&mut self) -> Result<(), SnapshotError> {
        let Some(f) = self.file.take() else {
            return Ok(());
        };
        drop(f.file);
        let top = self.stack.len() - 1;
        self.attributes(Some(top), &f.name, &f.rel, &f.entry)
    }

    fn dir_end(&mut self) -> Result<(), SnapshotError> {
        self.close_file()?;
        let Some(dir) = self.stack.pop() else {
            return Err(self.malformed("a directory end with no directory open"));
        };
        match dir.rel.rsplit(|&b| b == b'/').next() {
            _ if dir.rel.is_empty() => self.root_attributes(&dir),
            Some(name) => {
                let name = CString::new(name).map_err(|_| self.malformed("NUL in a name"))?;
                let parent = self.stack.len() - 1;
                self.attributes(Some(parent), &name, &dir.rel, &dir.entry)
            }
            None => Err(self.malformed("a directory without a name")),
        }
    }

    fn end(&mut self, end: pb::SnapshotEnd) -> Result<(), SnapshotError> {
        self.close_file()?;
        if !self.stack.is_empty() {
            return Err(self.malformed("the end comes before every directory was closed"));
        }
        if end.entries != self.got.entries
            || end.bytes != self.got.bytes
            || end.parts != self.next + 1
        {
            return Err(self.malformed(format!(
                "the end counts {} entries, {} bytes, {} parts; the snapshot held {}, {}, {}",
                end.entries,
                end.bytes,
                end.parts,
                self.got.entries,
                self.got.bytes,
                self.next + 1
            )));
        }
        self.done = Some(end);
        Ok(())
    }

    fn root_attributes(&self, dir: &OpenDir) -> Result<(), SnapshotError> {
        let handle = rfs::openat(&dir.fd, c".", OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
            .map_err(|x| io_at(self.root)(x.into()))?;
        self.owner_xattrs_mode(&handle, self.root, &dir.entry)?;
        rfs::futimens(&dir.fd, &times(&dir.entry)).map_err(|x| io_at(self.root)(x.into()))
    }

    /// Owner, xattrs, mode and times of `name` in the open directory
    /// `parent` (an index into the stack).
    fn attributes(
        &self,
        parent: Option<usize>,
        name: &CString,
        rel: &[u8],
        e: &pb::SnapshotEntry,
    ) -> Result<(), SnapshotError> {
        let path = self.path(rel);
        let Some(dir) = parent.map(|i| &self.stack[i].fd) else {
            return Err(self.malformed("an entry outside every directory"));
        };
        let handle = rfs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|x| io_at(&path)(x.into()))?;
        self.owner_xattrs_mode(&handle, &path, e)?;
        rfs::utimensat(dir, name, &times(e), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|x| io_at(&path)(x.into()))
    }

    /// In this order: the owner (which clears set-id bits and
    /// capabilities), the xattrs, the mode.
    fn owner_xattrs_mode(
        &self,
        handle: &OwnedFd,
        path: &Path,
        e: &pb::SnapshotEntry,
    ) -> Result<(), SnapshotError> {
        let at = |x: Errno| io_at(path)(x.into());
        if !self.unprivileged {
            rfs::chownat(
                handle,
                c"",
                Some(rfs::Uid::from_raw(e.uid)),
                Some(rfs::Gid::from_raw(e.gid)),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(at)?;
        }
        let proc = proc_fd_path(handle.as_fd());
        for x in &e.xattrs {
            if self.unprivileged && x.name.starts_with(b"trusted.") {
                continue;
            }
            let name =
                CString::new(x.name.clone()).map_err(|_| self.malformed("NUL in an xattr name"))?;
            rfs::setxattr(
                proc.as_c_str(),
                name.as_c_str(),
                &x.value,
                rfs::XattrFlags::empty(),
            )
            .map_err(at)?;
        }
        if e.mode & S_IFMT != S_IFLNK {
            match rfs::chmod(proc.as_c_str(), Mode::from_bits_retain(e.mode & PERM_BITS)) {
                Ok(()) => {}
                Err(Errno::PERM) if self.unprivileged => {}
                Err(x) => return Err(at(x)),
            }
        }
        Ok(())
    }
}

fn times(e: &pb::SnapshotEntry) -> Timestamps {
    let t =
        |t: Option<pb::Timestamp>| ts(t.map(|t| Timestamp::new(t.sec, t.nsec)).unwrap_or_default());
    Timestamps {
        last_access: t(e.atime),
        last_modification: t(e.mtime),
    }
}

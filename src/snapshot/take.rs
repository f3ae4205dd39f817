//! Writing a replica's tree as snapshot parts. The caller guarantees that
//! nothing changes the tree meanwhile (the slave's appliers are paused).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, ReadDir};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::SeekFrom;

use super::{io_at, join, position_to_pb, PartWriter, SnapshotError, DATA_CHUNK, SNAPSHOT_VERSION};
use crate::op::{Timestamp, STATE_DIR};
use crate::record::pb;
use crate::record::pb::snapshot_part::Part;
use crate::replica::checkpoint::Position;

/// What a snapshot records besides the tree.
#[derive(Clone, Debug)]
pub struct Cut {
    /// The topic.
    pub topic: String,
    /// The applied positions, one per partition.
    pub positions: Vec<Position>,
    /// The replica's limits file, verbatim (empty: none).
    pub limits: Vec<u8>,
}

/// Numbers the parts of one snapshot and counts what it holds.
struct Parts<'a> {
    id: &'a [u8],
    next: u64,
    out: &'a mut dyn PartWriter,
    entries: u64,
    bytes: u64,
}

impl Parts<'_> {
    fn put(&mut self, part: Part) -> Result<(), SnapshotError> {
        let p = pb::SnapshotPart {
            version: SNAPSHOT_VERSION,
            snapshot_id: self.id.to_vec(),
            index: self.next,
            part: Some(part),
        };
        self.next += 1;
        self.out.put(&p)
    }
}

fn ts(sec: i64, nsec: i64) -> Option<pb::Timestamp> {
    let t = Timestamp::new(sec, nsec as u32);
    Some(pb::Timestamp {
        sec: t.sec,
        nsec: t.nsec,
    })
}

/// Writes the tree at `root` (without its state folder) as the snapshot
/// `id` of `cut` into `out`. Returns (entries, content bytes).
pub fn take(
    root: &Path,
    cut: &Cut,
    id: &[u8],
    out: &mut dyn PartWriter,
    stop: &AtomicBool,
) -> Result<(u64, u64), SnapshotError> {
    let mut parts = Parts {
        id,
        next: 0,
        out,
        entries: 0,
        bytes: 0,
    };
    parts.put(Part::Header(pb::SnapshotHeader {
        topic: cut.topic.clone(),
        taken: {
            let now = Timestamp::now();
            Some(pb::Timestamp {
                sec: now.sec,
                nsec: now.nsec,
            })
        },
        positions: cut.positions.iter().map(position_to_pb).collect(),
        limits: cut.limits.clone(),
    }))?;
    Walker {
        root,
        links: HashMap::new(),
        stop,
    }
    .walk(&mut parts)?;
    let end = pb::SnapshotEnd {
        entries: parts.entries,
        bytes: parts.bytes,
        parts: parts.next + 1,
    };
    parts.put(Part::End(end))?;
    Ok((parts.entries, parts.bytes))
}

struct Walker<'a> {
    root: &'a Path,
    /// Inodes with several names already written: (st_dev, st_ino) ->
    /// the path of their first name.
    links: HashMap<(u64, u64), Vec<u8>>,
    stop: &'a AtomicBool,
}

/// One directory being walked.
struct Open {
    dir: PathBuf,
    rel: Vec<u8>,
    entries: ReadDir,
}

impl Walker<'_> {
    /// Depth first, with an explicit stack (one open directory per level).
    fn walk(&mut self, parts: &mut Parts<'_>) -> Result<(), SnapshotError> {
        let meta = fs::symlink_metadata(self.root).map_err(io_at(self.root))?;
        parts.put(Part::Entry(self.entry(self.root, b"", &meta)?))?;
        parts.entries += 1;
        let mut stack = vec![self.open(self.root.to_path_buf(), Vec::new())?];
        while let Some(top) = stack.last_mut() {
            if self.stop.load(Ordering::Relaxed) {
                return Err(SnapshotError::Stopped);
            }
            let Some(next) = top.entries.next() else {
                stack.pop();
                parts.put(Part::DirEnd(pb::SnapshotDirEnd {}))?;
                continue;
            };
            let e = next.map_err(io_at(&top.dir))?;
            let name = e.file_name();
            if top.rel.is_empty() && name.as_bytes() == STATE_DIR {
                continue;
            }
            let path = top.dir.join(&name);
            let rel = join(&top.rel, name.as_bytes());
            let meta = fs::symlink_metadata(&path).map_err(io_at(&path))?;
            parts.entries += 1;
            if meta.is_dir() {
                parts.put(Part::Entry(self.entry(&path, name.as_bytes(), &meta)?))?;
                stack.push(self.open(path, rel)?);
                continue;
            }
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    parts.put(Part::Entry(pb::SnapshotEntry {
                        name: name.as_bytes().to_vec(),
                        link_to: first.clone(),
                        ..Default::default()
                    }))?;
                    continue;
                }
                self.links.insert((meta.dev(), meta.ino()), rel);
            }
            parts.put(Part::Entry(self.entry(&path, name.as_bytes(), &meta)?))?;
            if meta.is_file() {
                parts.bytes += content(&path, meta.len(), parts)?;
            }
        }
        Ok(())
    }

    fn open(&self, dir: PathBuf, rel: Vec<u8>) -> Result<Open, SnapshotError> {
        let entries = fs::read_dir(&dir).map_err(io_at(&dir))?;
        Ok(Open { dir, rel, entries })
    }

    fn entry(
        &self,
        path: &Path,
        name: &[u8],
        meta: &Metadata,
    ) -> Result<pb::SnapshotEntry, SnapshotError> {
        let symlink_target = if meta.file_type().is_symlink() {
            fs::read_link(path)
                .map_err(io_at(path))?
                .as_os_str()
                .as_bytes()
                .to_vec()
        } else {
            Vec::new()
        };
        let xattrs = crate::tree::xattrs(path)
            .map_err(io_at(path))?
            .into_iter()
            .map(|(name, value)| pb::SnapshotXattr { name, value })
            .collect();
        Ok(pb::SnapshotEntry {
            name: name.to_vec(),
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev(),
            size: if meta.is_file() { meta.len() } else { 0 },
            symlink_target,
            link_to: Vec::new(),
            xattrs,
            atime: ts(meta.atime(), meta.atime_nsec()),
            mtime: ts(meta.mtime(), meta.mtime_nsec()),
        })
    }
}

/// Writes the data of a regular file of `size` bytes, leaving holes out.
/// Returns the bytes written.
fn content(path: &Path, size: u64, parts: &mut Parts<'_>) -> Result<u64, SnapshotError> {
    let file = File::open(path).map_err(io_at(path))?;
    let mut written = 0u64;
    let mut pos = 0u64;
    let mut buf = vec![0u8; DATA_CHUNK];
    while pos < size {
        // The next data and the hole after it (a filesystem without
        // SEEK_DATA reports all of the file as data).
        let start = match rustix::fs::seek(&file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) => pos,
            Err(e) => return Err(io_at(path)(e.into())),
        };
        let end = match rustix::fs::seek(&file, SeekFrom::Hole(start)) {
            Ok(h) => h.min(size),
            Err(_) => size,
        };
        let mut at = start;
        while at < end {
            let want = ((end - at) as usize).min(DATA_CHUNK);
            let n = crate::replica::checkpoint::read_full_at(&file, &mut buf[..want], at)
                .map_err(io_at(path))?;
            if n == 0 {
                // Shrunk under us (it cannot: appliers are paused).
                return Err(io_at(path)(std::io::ErrorKind::UnexpectedEof.into()));
            }
            parts.put(Part::Data(pb::SnapshotData {
                offset: at,
                data: buf[..n].to_vec(),
            }))?;
            at += n as u64;
            written += n as u64;
        }
        pos = end;
    }
    Ok(written)
}

/// The limits file of a replica, verbatim (empty when it has none).
pub fn limits_file(root: &Path) -> Result<Vec<u8>, SnapshotError> {
    let path = root
        .join(OsStr::from_bytes(STATE_DIR))
        .join(crate::replica::apply::LIMITS_FILE);
    match fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_at(path)(e)),
    }
}

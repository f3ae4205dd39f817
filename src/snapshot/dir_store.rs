//! Snapshots kept as files in a directory: `snapshot-<id>.kfsnap`, each
//! the magic line, the parts (a little-endian u32 length, then the encoded
//! part), and a trailer giving the End part's length (so listing reads the
//! header and the end only). A file is written under a `.tmp` name and
//! renamed once complete and synced: a `.kfsnap` file is always complete.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;

use super::{io_at, Location, PartWriter, SnapshotError, SnapshotInfo, SnapshotStore};
use crate::record::pb;
use crate::record::pb::snapshot_part::Part;

const MAGIC: &[u8; 8] = b"KFSNAP1\n";
const TRAILER: &[u8; 8] = b"KFSEND1\n";
/// Largest part accepted when reading (a part holds at most a chunk of
/// content, or one entry's name, target and xattrs).
const MAX_PART: usize = 16 * 1024 * 1024;

/// A directory of snapshot files.
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// A store in directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DirStore { dir: dir.into() }
    }

    fn files(&self) -> Result<Vec<PathBuf>, SnapshotError> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd {
            let path = e.map_err(io_at(&self.dir))?.path();
            if path.extension().is_some_and(|x| x == "kfsnap") {
                out.push(path);
            }
        }
        Ok(out)
    }
}

fn read_part(r: &mut impl Read, path: &Path) -> Result<pb::SnapshotPart, SnapshotError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(io_at(path))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PART {
        return Err(io_at(path)(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a part of {len} bytes (corrupt file?)"),
        )));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).map_err(io_at(path))?;
    pb::SnapshotPart::decode(buf.as_slice())
        .map_err(|e| io_at(path)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

fn bad(path: &Path, why: &str) -> SnapshotError {
    io_at(path)(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        why.to_string(),
    ))
}

/// The header and end of one snapshot file.
fn describe_file(path: &Path) -> Result<SnapshotInfo, SnapshotError> {
    let mut f = File::open(path).map_err(io_at(path))?;
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic).map_err(io_at(path))?;
    if &magic != MAGIC {
        return Err(bad(path, "not a kafkafs snapshot file"));
    }
    let first = read_part(&mut f, path)?;
    let Some(Part::Header(header)) = first.part else {
        return Err(bad(path, "no header first"));
    };
    f.seek(SeekFrom::End(-12)).map_err(io_at(path))?;
    let mut tail = [0u8; 12];
    f.read_exact(&mut tail).map_err(io_at(path))?;
    if &tail[4..] != TRAILER {
        return Err(bad(path, "no trailer (truncated?)"));
    }
    let end_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) as i64;
    f.seek(SeekFrom::End(-12 - end_len - 4))
        .map_err(io_at(path))?;
    let last = read_part(&mut f, path)?;
    let Some(Part::End(end)) = last.part else {
        return Err(bad(path, "no end part before the trailer"));
    };
    Ok(SnapshotInfo::from_parts(
        first.snapshot_id,
        &header,
        &end,
        Location::File(path.to_path_buf()),
    ))
}

impl SnapshotStore for DirStore {
    fn list(&mut self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let mut out = Vec::new();
        for path in self.files()? {
            match describe_file(&path) {
                Ok(info) => out.push(info),
                Err(e) => tracing::warn!("ignoring snapshot file: {e}"),
            }
        }
        out.sort_by_key(|s| s.taken);
        Ok(out)
    }

    fn begin(&mut self, id: &[u8]) -> Result<Box<dyn PartWriter + '_>, SnapshotError> {
        fs::create_dir_all(&self.dir).map_err(io_at(&self.dir))?;
        let path = self.dir.join(format!("snapshot-{}.kfsnap", super::hex(id)));
        let tmp = path.with_extension("kfsnap.tmp");
        let file = File::create(&tmp).map_err(io_at(&tmp))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(MAGIC).map_err(io_at(&tmp))?;
        Ok(Box::new(FileWriter {
            out: Some(out),
            tmp,
            path,
            dir: self.dir.clone(),
            last_len: None,
        }))
    }

    fn read(
        &mut self,
        snap: &SnapshotInfo,
        each: &mut dyn FnMut(pb::SnapshotPart) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let Location::File(path) = &snap.location else {
            return Err(SnapshotError::NotFound(snap.id_hex()));
        };
        let mut r = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_at(path))?);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(io_at(path))?;
        loop {
            let part = read_part(&mut r, path)?;
            let end = matches!(part.part, Some(Part::End(_)));
            each(part)?;
            if end {
                return Ok(());
            }
        }
    }

    fn expire(&mut self, keep: usize) -> Result<usize, SnapshotError> {
        let all = self.list()?;
        let old = all.len().saturating_sub(keep.max(1));
        for s in &all[..old] {
            if let Location::File(path) = &s.location {
                fs::remove_file(path).map_err(io_at(path))?;
            }
        }
        Ok(old)
    }

    fn describe(&self) -> String {
        format!("directory {}", self.dir.display())
    }
}

struct FileWriter {
    /// `None` once committed.
    out: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    last_len: Option<u32>,
}

impl PartWriter for FileWriter {
    fn put(&mut self, part: &pb::SnapshotPart) -> Result<(), SnapshotError> {
        let bytes = part.encode_to_vec();
        let len = bytes.len() as u32;
        let Some(out) = self.out.as_mut() else {
            return Err(bad(&self.tmp, "written after its commit"));
        };
        out.write_all(&len.to_le_bytes())
            .map_err(io_at(&self.tmp))?;
        out.write_all(&bytes).map_err(io_at(&self.tmp))?;
        self.last_len = Some(len);
        Ok(())
    }

    fn commit(mut self: Box<Self>) -> Result<SnapshotInfo, SnapshotError> {
        let len = self.last_len.unwrap_or(0);
        let Some(mut out) = self.out.take() else {
            return Err(bad(&self.tmp, "committed twice"));
        };
        out.write_all(&len.to_le_bytes())
            .map_err(io_at(&self.tmp))?;
        out.write_all(TRAILER).map_err(io_at(&self.tmp))?;
        let file = out
            .into_inner()
            .map_err(|e| io_at(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(io_at(&self.tmp))?;
        fs::rename(&self.tmp, &self.path).map_err(io_at(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&self.dir))?;
        describe_file(&self.path)
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        // An abandoned snapshot leaves nothing behind.
        let _ = fs::remove_file(&self.tmp);
    }
}

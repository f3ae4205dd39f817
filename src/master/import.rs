//! Adopting an existing tree (`kafkafs master --import`): its entries are
//! moved aside into `DATA/.kafkafs/import/` (renames on one filesystem),
//! then journaled through `MasterFs` like calls on the mount — directories,
//! contents, symlinks, hard links, special files, owners, modes, xattrs and
//! ns times — and removed from the staging area one by one, so an import
//! that was interrupted resumes where it stopped. The mount comes after.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::FsError;
use crate::master::fs::{MasterFs, SetAttr, SetTime};
use crate::master::inodes::ROOT;
use crate::op::{hex, unhex};
use crate::op::{Timestamp, STATE_DIR};
use crate::record::Caller;

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journaling {}: {source}", path.display())]
    Journal {
        path: PathBuf,
        #[source]
        source: FsError,
    },
    #[error("stopped (the import resumes at the next start)")]
    Stopped,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImportError + '_ {
    move |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an import journaled.
#[derive(Debug, Default)]
pub struct ImportReport {
    pub entries: u64,
    pub bytes: u64,
    /// Extended attributes the topic's limits refused (each logged).
    pub xattrs_refused: u64,
}

/// The staging folder of an import.
fn staging(data: &Path) -> PathBuf {
    data.join(OsStr::from_bytes(STATE_DIR)).join("import")
}

/// Is an import under way (staged, not finished)?
pub fn pending(data: &Path) -> bool {
    staging(data).is_dir()
}

/// The root's attributes before anything of kafkafs was created in it.
pub fn root_attributes(data: &Path) -> Result<fs::Metadata, ImportError> {
    fs::symlink_metadata(data).map_err(io(data))
}

/// Moves every entry of `data` (but the state folder) into the staging
/// folder, and notes the root's own attributes (`root`, taken before the
/// state folder was created in it).
pub fn stage(data: &Path, root: &fs::Metadata) -> Result<(), ImportError> {
    let dir = staging(data);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let note = dir.join(".root");
    let text = format!("{}\n", Attrs::of(root).format());
    fs::write(&note, text).map_err(io(&note))?;
    let mut moved = 0u64;
    for e in fs::read_dir(data).map_err(io(data))? {
        let e = e.map_err(io(data))?;
        if e.file_name().as_bytes() == STATE_DIR {
            continue;
        }
        let to = dir.join(e.file_name());
        fs::rename(e.path(), &to).map_err(io(&e.path()))?;
        moved += 1;
    }
    tracing::info!(
        "import: {moved} entries of {} staged in {}",
        data.display(),
        dir.display()
    );
    Ok(())
}

/// Journals the staged tree, resuming where an earlier run stopped, then
/// removes the staging folder.
pub fn run(fs: &MasterFs, data: &Path, stop: &AtomicBool) -> Result<ImportReport, ImportError> {
    let dir = staging(data);
    let links_path = data.join(OsStr::from_bytes(STATE_DIR)).join("import-links");
    let dirs_path = data.join(OsStr::from_bytes(STATE_DIR)).join("import-dirs");
    let mut im = Importer {
        fs,
        stop,
        links: load_links(&links_path)?,
        links_file: fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&links_path)
            .map_err(io(&links_path))?,
        dir_notes: load_dir_notes(&dirs_path)?,
        dir_notes_file: fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&dirs_path)
            .map_err(io(&dirs_path))?,
        report: ImportReport::default(),
        started: Instant::now(),
        last_log: Instant::now(),
        total: count(&dir),
    };
    tracing::info!(
        "import: {} entries, {:.1} MiB to journal",
        im.total.0,
        im.total.1 as f64 / 1048576.0
    );
    im.import_dir(&dir, ROOT, &[])?;
    im.finish_root(&dir)?;
    fs::remove_dir_all(&dir).map_err(io(&dir))?;
    let _ = fs::remove_file(&links_path);
    let _ = fs::remove_file(&dirs_path);
    let r = im.report;
    tracing::info!(
        "import finished: {} entries, {:.1} MiB in {:.1} s{}",
        r.entries,
        r.bytes as f64 / 1048576.0,
        im.started.elapsed().as_secs_f64(),
        if r.xattrs_refused > 0 {
            format!(
                "; {} extended attributes refused by the topic's limits (logged)",
                r.xattrs_refused
            )
        } else {
            String::new()
        }
    );
    Ok(r)
}

/// Hard links already imported: (st_dev, st_ino) of the staged inode ->
/// the path it was imported at.
fn load_links(path: &Path) -> Result<HashMap<(u64, u64), Vec<u8>>, ImportError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(' ');
        let (Some(dev), Some(ino), Some(hex)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let bytes = unhex(hex);
        if let (Ok(dev), Ok(ino), Some(bytes)) = (dev.parse(), ino.parse(), bytes) {
            out.insert((dev, ino), bytes);
        }
    }
    Ok(out)
}

struct Importer<'a> {
    fs: &'a MasterFs,
    stop: &'a AtomicBool,
    links: HashMap<(u64, u64), Vec<u8>>,
    links_file: File,
    dir_notes: HashMap<Vec<u8>, Attrs>,
    dir_notes_file: File,
    report: ImportReport,
    started: Instant,
    last_log: Instant,
    /// Entries and bytes staged when this run began (for progress).
    total: (u64, u64),
}

/// Entries and content bytes staged beneath `dir` (unreadable parts are
/// left out: the import itself reports them).
fn count(dir: &Path) -> (u64, u64) {
    let mut total = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            total.0 += 1;
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total.1 += meta.len();
            }
        }
    }
    total
}

fn caller(meta: &fs::Metadata) -> Caller {
    Caller {
        uid: meta.uid(),
        gid: meta.gid(),
        pid: 0,
    }
}

/// The attributes an imported entry gets (noted for directories before
/// their children are moved out, which changes their times).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: Timestamp,
    mtime: Timestamp,
}

impl Attrs {
    fn of(meta: &fs::Metadata) -> Attrs {
        Attrs {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            atime: Timestamp::new(meta.atime(), meta.atime_nsec() as u32),
            mtime: Timestamp::new(meta.mtime(), meta.mtime_nsec() as u32),
        }
    }

    /// `mode uid gid asec ansec msec mnsec`
    fn format(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}",
            self.mode,
            self.uid,
            self.gid,
            self.atime.sec,
            self.atime.nsec,
            self.mtime.sec,
            self.mtime.nsec
        )
    }

    fn parse(fields: &[&str]) -> Option<Attrs> {
        let f: Vec<i64> = fields
            .iter()
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let [mode, uid, gid, asec, ansec, msec, mnsec] = f[..] else {
            return None;
        };
        Some(Attrs {
            mode: u32::try_from(mode).ok()?,
            uid: u32::try_from(uid).ok()?,
            gid: u32::try_from(gid).ok()?,
            atime: Timestamp::new(asec, u32::try_from(ansec).ok()?),
            mtime: Timestamp::new(msec, u32::try_from(mnsec).ok()?),
        })
    }
}

/// Directories whose children an earlier run began to move out: relative
/// path -> their attributes before that.
fn load_dir_notes(path: &Path) -> Result<HashMap<Vec<u8>, Attrs>, ImportError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(io(path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            Some((unhex(f.first()?)?, Attrs::parse(f.get(1..)?)?))
        })
        .collect())
}

impl Importer<'_> {
    fn journal<T>(&self, path: &Path, r: Result<T, FsError>) -> Result<T, ImportError> {
        r.map_err(|source| ImportError::Journal {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Imports every entry of staged directory `dir` into `parent`
    /// (imported at `rel`), removing each staged entry once journaled.
    fn import_dir(&mut self, dir: &Path, parent: u64, rel: &[u8]) -> Result<(), ImportError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io(dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io(dir))?;
        names.sort();
        for name in names {
            if parent == ROOT && name == ".root" {
                continue;
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(ImportError::Stopped);
            }
            let path = dir.join(&name);
            let mut child_rel = rel.to_vec();
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(name.as_bytes());
            self.import_entry(&path, parent, name.as_bytes(), &child_rel)?;
            self.progress();
        }
        Ok(())
    }

    fn import_entry(
        &mut self,
        path: &Path,
        parent: u64,
        name: &[u8],
        rel: &[u8],
    ) -> Result<(), ImportError> {
        let meta = fs::symlink_metadata(path).map_err(io(path))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            return self.import_directory(path, parent, name, rel, &meta);
        }
        let known = (meta.dev(), meta.ino());
        // Another name of an inode already imported (its other staged names
        // may be gone already, so nlink is no guide here).
        {
            if let Some(first) = self.links.get(&known).cloned() {
                self.replace_existing(parent, name, path)?;
                let chain = self.resolve(&first, path)?;
                let ino = chain.last().copied().unwrap_or(ROOT);
                let r = self.fs.link(caller(&meta), ino, parent, name);
                // Children first, as the kernel forgets.
                for i in chain.iter().rev() {
                    self.fs.forget(*i, 1);
                }
                let attr = self.journal(path, r)?;
                self.fs.forget(attr.ino, 1);
                return self.done(path, &meta);
            }
        }
        self.replace_existing(parent, name, path)?;
        let c = caller(&meta);
        let mode = meta.mode();
        let attr = if ft.is_file() {
            self.import_file(path, parent, name, &meta)?
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io(path))?;
            let r = self
                .fs
                .symlink(c, parent, name, target.as_os_str().as_bytes());
            self.journal(path, r)?
        } else {
            // fifo, socket, character or block device: the type is in the mode.
            let r = self.fs.mknod(c, parent, name, mode, 0, meta.rdev());
            self.journal(path, r)?
        };
        self.copy_xattrs(path, attr.ino)?;
        self.copy_attrs(path, attr.ino, &Attrs::of(&meta))?;
        self.fs.forget(attr.ino, 1);
        if meta.nlink() > 1 {
            self.note_link(known, rel, path)?;
        }
        self.done(path, &meta)
    }

    fn import_directory(
        &mut self,
        path: &Path,
        parent: u64,
        name: &[u8],
        rel: &[u8],
        meta: &fs::Metadata,
    ) -> Result<(), ImportError> {
        let ino = match self.fs.lookup(parent, name) {
            Ok(a) if a.st.st_mode & 0o170000 == 0o040000 => a.ino,
            Ok(a) => {
                self.fs.forget(a.ino, 1);
                self.replace_existing(parent, name, path)?;
                self.mkdir(path, parent, name, meta)?
            }
            Err(_) => self.mkdir(path, parent, name, meta)?,
        };
        let attrs = self.dir_attrs(rel, path, meta)?;
        self.import_dir(path, ino, rel)?;
        self.copy_xattrs(path, ino)?;
        self.copy_attrs(path, ino, &attrs)?;
        self.fs.forget(ino, 1);
        fs::remove_dir(path).map_err(io(path))?;
        self.report.entries += 1;
        Ok(())
    }

    fn mkdir(
        &self,
        path: &Path,
        parent: u64,
        name: &[u8],
        meta: &fs::Metadata,
    ) -> Result<u64, ImportError> {
        let r = self
            .fs
            .mkdir(caller(meta), parent, name, meta.mode() & 0o777, 0);
        Ok(self.journal(path, r)?.ino)
    }

    /// A directory's own attributes: as noted by an earlier run that began
    /// to move its children out (which changed its times), else as now,
    /// noted before any child moves.
    fn dir_attrs(
        &mut self,
        rel: &[u8],
        path: &Path,
        meta: &fs::Metadata,
    ) -> Result<Attrs, ImportError> {
        if let Some(a) = self.dir_notes.get(rel) {
            return Ok(*a);
        }
        let a = Attrs::of(meta);
        writeln!(self.dir_notes_file, "{} {}", hex(rel), a.format())
            .and_then(|()| self.dir_notes_file.sync_data())
            .map_err(io(path))?;
        self.dir_notes.insert(rel.to_vec(), a);
        Ok(a)
    }

    /// Creates the file and journals its content in chunks.
    fn import_file(
        &mut self,
        path: &Path,
        parent: u64,
        name: &[u8],
        meta: &fs::Metadata,
    ) -> Result<crate::master::fs::Attr, ImportError> {
        let r = self.fs.create(
            caller(meta),
            parent,
            name,
            meta.mode() & 0o777,
            0,
            libc::O_WRONLY | libc::O_EXCL,
        );
        let (attr, fh) = self.journal(path, r)?;
        let result = self.copy_content(path, attr.ino, fh, meta);
        self.fs.release(fh);
        result?;
        Ok(attr)
    }

    fn copy_content(
        &mut self,
        path: &Path,
        ino: u64,
        fh: u64,
        meta: &fs::Metadata,
    ) -> Result<(), ImportError> {
        let mut src = File::open(path).map_err(io(path))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                break;
            }
            let mut done = 0;
            while done < n {
                let r = self.fs.write(caller(meta), ino, fh, offset, &buf[done..n]);
                let w = self.journal(path, r)? as usize;
                done += w;
                offset += w as u64;
            }
            self.report.bytes += n as u64;
        }
        Ok(())
    }

    /// A name an earlier, interrupted run already imported is replaced.
    fn replace_existing(&self, parent: u64, name: &[u8], path: &Path) -> Result<(), ImportError> {
        let Ok(a) = self.fs.lookup(parent, name) else {
            return Ok(());
        };
        self.fs.forget(a.ino, 1);
        let root = Caller::default();
        let r = if a.st.st_mode & 0o170000 == 0o040000 {
            self.fs.rmdir(root, parent, name)
        } else {
            self.fs.unlink(root, parent, name)
        };
        self.journal(path, r)
    }

    /// Owner, mode (after the owner: chown clears set-id bits) and times.
    fn copy_attrs(&self, path: &Path, ino: u64, a: &Attrs) -> Result<(), ImportError> {
        let attr = SetAttr {
            mode: Some(a.mode & 0o7777),
            uid: Some(a.uid),
            gid: Some(a.gid),
            size: None,
            atime: Some(SetTime::At(a.atime)),
            mtime: Some(SetTime::At(a.mtime)),
        };
        let r = self.fs.setattr(Caller::default(), ino, attr);
        self.journal(path, r).map(drop)
    }

    fn copy_xattrs(&mut self, path: &Path, ino: u64) -> Result<(), ImportError> {
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io(path)(std::io::ErrorKind::InvalidInput.into()))?;
        let mut list = vec![0u8; 1 << 16];
        let n = match rustix::fs::llistxattr(c.as_c_str(), &mut list[..]) {
            Ok(n) => n,
            Err(e) => return Err(io(path)(e.into())),
        };
        for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let cname = std::ffi::CString::new(name).unwrap_or_default();
            let mut value = vec![0u8; 1 << 16];
            let len = rustix::fs::lgetxattr(c.as_c_str(), cname.as_c_str(), &mut value[..])
                .map_err(|e| io(path)(e.into()))?;
            value.truncate(len);
            match self.fs.setxattr(Caller::default(), ino, name, &value, 0) {
                Ok(()) => {}
                Err(e @ FsError::Refused(_)) => {
                    tracing::warn!(
                        "import: {}: extended attribute {} not imported: {e}",
                        path.display(),
                        String::from_utf8_lossy(name)
                    );
                    self.report.xattrs_refused += 1;
                }
                Err(source) => {
                    return Err(ImportError::Journal {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The FUSE inodes along an imported path, each looked up once (the
    /// caller forgets them, the last first).
    fn resolve(&self, rel: &[u8], path: &Path) -> Result<Vec<u64>, ImportError> {
        let mut chain: Vec<u64> = Vec::new();
        for comp in rel.split(|&b| b == b'/') {
            let parent = chain.last().copied().unwrap_or(ROOT);
            match self.fs.lookup(parent, comp) {
                Ok(a) => chain.push(a.ino),
                Err(source) => {
                    for i in chain.iter().rev() {
                        self.fs.forget(*i, 1);
                    }
                    return Err(ImportError::Journal {
                        path: path.to_path_buf(),
                        source,
                    });
                }
            }
        }
        Ok(chain)
    }

    fn note_link(&mut self, known: (u64, u64), rel: &[u8], path: &Path) -> Result<(), ImportError> {
        writeln!(self.links_file, "{} {} {}", known.0, known.1, hex(rel))
            .and_then(|()| self.links_file.sync_data())
            .map_err(io(path))?;
        self.links.insert(known, rel.to_vec());
        Ok(())
    }

    /// The staged name is journaled: remove it.
    fn done(&mut self, path: &Path, _meta: &fs::Metadata) -> Result<(), ImportError> {
        fs::remove_file(path).map_err(io(path))?;
        self.report.entries += 1;
        Ok(())
    }

    /// The root's own owner, mode, xattrs and times, last.
    fn finish_root(&mut self, dir: &Path) -> Result<(), ImportError> {
        let note = dir.join(".root");
        let text = fs::read_to_string(&note).map_err(io(&note))?;
        let fields: Vec<&str> = text.split_whitespace().collect();
        let Some(root) = Attrs::parse(&fields) else {
            return Err(io(&note)(std::io::ErrorKind::InvalidData.into()));
        };
        let data = dir
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.copy_xattrs(&data, ROOT)?;
        self.copy_attrs(&data, ROOT, &root)
    }

    fn progress(&mut self) {
        if self.last_log.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last_log = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let (entries, bytes) = (self.report.entries, self.report.bytes);
        let (all_entries, all_bytes) = self.total;
        // By bytes when there are bytes, else by entries.
        let done = if all_bytes > 0 {
            bytes as f64 / all_bytes as f64
        } else {
            entries as f64 / all_entries.max(1) as f64
        };
        let left = secs * (1.0 - done).max(0.0) / done.max(1e-9);
        tracing::info!(
            "import: {entries} of {all_entries} entries, {:.1} of {:.1} MiB ({:.0}%), {:.0} entries/s, {:.1} MiB/s, about {:.0} s left",
            bytes as f64 / 1048576.0,
            all_bytes as f64 / 1048576.0,
            100.0 * done.min(1.0),
            entries as f64 / secs,
            bytes as f64 / 1048576.0 / secs,
            left
        );
    }
}

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
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::FsError;
use crate::master::fs::{MasterFs, SetAttr, SetTime};
use crate::master::inodes::ROOT;
use crate::op::{hex, unhex};
use crate::op::{Timestamp, STATE_DIR};
use crate::progress::Progress;
use crate::record::Caller;
use crate::sync::{channel, Mutex};

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the staged tree failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// Journaling an entry failed.
    #[error("journaling {}: {source}", path.display())]
    Journal {
        /// The entry.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: FsError,
    },
    /// A stop was requested (the import resumes at the next start).
    #[error("stopped (the import resumes at the next start)")]
    Stopped,
    /// A worker thread went away.
    #[error("an import thread ended unexpectedly (the import resumes at the next start)")]
    Worker,
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
    /// Entries journaled.
    pub entries: u64,
    /// File bytes journaled.
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

/// Journals the staged tree with `jobs` threads, resuming where an earlier
/// run stopped, then removes the staging folder.
///
/// The calling thread walks the staged directories depth first, creating
/// each directory (its entries need it) and handing every other entry to
/// the workers, whose calls reach the journal concurrently, spread over
/// the partitions by path. A directory's own attributes are journaled once
/// its last entry is done (entries change its times), by whichever thread
/// finished that entry; the root's come last of all. Each staged entry is
/// removed once journaled, so a rerun resumes with what is left.
pub fn run(
    fs: &MasterFs,
    data: &Path,
    jobs: usize,
    stop: &AtomicBool,
) -> Result<ImportReport, ImportError> {
    let dir = staging(data);
    let state = data.join(OsStr::from_bytes(STATE_DIR));
    let links_path = state.join("import-links");
    let dirs_path = state.join("import-dirs");
    let total = count(&dir);
    let jobs = jobs.max(1);
    let im = Importer {
        fs,
        stop,
        failed: AtomicBool::new(false),
        error: Mutex::new(None),
        links: Mutex::new(Links {
            known: load_links(&links_path)?,
            file: append(&links_path)?,
        }),
        dir_notes: Mutex::new(DirNotes {
            known: load_dir_notes(&dirs_path)?,
            file: append(&dirs_path)?,
        }),
        progress: Progress::new("import", total.0, total.1),
        xattrs_refused: AtomicU64::new(0),
    };
    tracing::info!(
        "import: {} entries, {:.1} MiB to journal with {jobs} threads",
        total.0,
        total.1 as f64 / 1048576.0
    );
    let outcome = im
        .journal_tree(&dir, jobs)
        .and_then(|()| im.finish_root(&dir));
    im.progress.finish();
    outcome?;
    fs::remove_dir_all(&dir).map_err(io(&dir))?;
    let _ = fs::remove_file(&links_path);
    let _ = fs::remove_file(&dirs_path);
    let (entries, bytes) = im.progress.done();
    let r = ImportReport {
        entries,
        bytes,
        xattrs_refused: im.xattrs_refused.load(Ordering::Relaxed),
    };
    tracing::info!(
        "import finished: {} entries, {:.1} MiB in {:.1} s{}",
        r.entries,
        r.bytes as f64 / 1048576.0,
        im.progress.elapsed().as_secs_f64(),
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

fn append(path: &Path) -> Result<File, ImportError> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

/// Hard links already imported: (st_dev, st_ino) of the staged inode ->
/// the path it was imported at.
fn load_links(path: &Path) -> Result<HashMap<(u64, u64), LinkState>, ImportError> {
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
            out.insert((dev, ino), LinkState::Imported(bytes));
        }
    }
    Ok(out)
}

/// Entries and content bytes staged beneath `dir` (unreadable parts are
/// left out: the import itself reports them).
fn count(dir: &Path) -> (u64, u64) {
    let mut total = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if d == dir && e.file_name() == ".root" {
                continue;
            }
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

/// Names of a hard-linked inode (st_dev, st_ino of the staged inode): being
/// imported under its first name (later names wait on it), or imported.
enum LinkState {
    Importing(Vec<Job>),
    Imported(Vec<u8>),
}

struct Links {
    known: HashMap<(u64, u64), LinkState>,
    /// `dev ino hex(path)` per imported inode, for a rerun.
    file: File,
}

struct DirNotes {
    known: HashMap<Vec<u8>, Attrs>,
    /// `hex(path) attrs` per directory, for a rerun.
    file: File,
}

/// A directory being imported: finished (its own attributes journaled,
/// its staged folder removed) when nothing is pending in it any more.
struct OpenDir {
    path: PathBuf,
    ino: u64,
    /// None for the root (its attributes were noted at staging).
    attrs: Option<Attrs>,
    /// Entries not done yet, plus one while it is still being walked.
    pending: AtomicUsize,
    parent: Option<Arc<OpenDir>>,
}

/// A staged non-directory entry for a worker.
struct Job {
    path: PathBuf,
    name: Vec<u8>,
    /// Its path beneath the root, as imported.
    rel: Vec<u8>,
    parent: Arc<OpenDir>,
}

struct Importer<'a> {
    fs: &'a MasterFs,
    stop: &'a AtomicBool,
    /// Set with the first error: nothing more is journaled.
    failed: AtomicBool,
    error: Mutex<Option<ImportError>>,
    links: Mutex<Links>,
    dir_notes: Mutex<DirNotes>,
    progress: Progress,
    xattrs_refused: AtomicU64,
}

fn child_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = rel.to_vec();
    if !out.is_empty() {
        out.push(b'/');
    }
    out.extend_from_slice(name);
    out
}

fn sorted_names(dir: &Path) -> Result<Vec<std::ffi::OsString>, ImportError> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    names.sort();
    Ok(names)
}

impl Importer<'_> {
    fn journal<T>(&self, path: &Path, r: Result<T, FsError>) -> Result<T, ImportError> {
        r.map_err(|source| ImportError::Journal {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The first error stops the import; later ones are consequences.
    fn fail(&self, e: ImportError) {
        self.failed.store(true, Ordering::Release);
        let mut first = self.error.lock();
        if first.is_none() {
            *first = Some(e);
        }
    }

    /// Journals everything beneath the staging folder `dir` but the
    /// root's own attributes, with `jobs` worker threads.
    fn journal_tree(&self, dir: &Path, jobs: usize) -> Result<(), ImportError> {
        let root = Arc::new(OpenDir {
            path: dir.to_path_buf(),
            ino: ROOT,
            attrs: None,
            pending: AtomicUsize::new(1),
            parent: None,
        });
        let (tx, rx) = channel::bounded::<Job>(jobs * 4);
        let working = AtomicBool::new(true);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..jobs)
                .filter_map(|i| {
                    let rx = rx.clone();
                    std::thread::Builder::new()
                        .name(format!("kafkafs-import-{i}"))
                        .spawn_scoped(s, move || self.work(&rx))
                        .map_err(|e| self.fail(io(dir)(e)))
                        .ok()
                })
                .collect();
            s.spawn(|| {
                while working.load(Ordering::Relaxed) {
                    self.progress.tick();
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            if !self.failed.load(Ordering::Acquire) {
                if let Err(e) = self.walk(&root, &[], &tx) {
                    self.fail(e);
                }
            }
            drop(tx);
            for w in workers {
                if w.join().is_err() {
                    self.fail(ImportError::Worker);
                }
            }
            working.store(false, Ordering::Relaxed);
        });
        if let Some(e) = self.error.lock().take() {
            return Err(e);
        }
        // Every entry is done: only the walk's own token is left.
        match root.pending.load(Ordering::Acquire) {
            1 => Ok(()),
            _ => Err(ImportError::Worker),
        }
    }

    fn work(&self, rx: &channel::Receiver<Job>) {
        for job in rx.iter() {
            // After a failure the queue is only drained.
            if self.failed.load(Ordering::Acquire) {
                continue;
            }
            if self.stop.load(Ordering::Relaxed) {
                self.fail(ImportError::Stopped);
                continue;
            }
            if let Err(e) = self.import_job(job) {
                self.fail(e);
            }
        }
    }

    /// Walks staged directory `dir` (imported at `rel`): creates its
    /// subdirectories and walks them, and queues every other entry.
    fn walk(
        &self,
        dir: &Arc<OpenDir>,
        rel: &[u8],
        tx: &channel::Sender<Job>,
    ) -> Result<(), ImportError> {
        for name in sorted_names(&dir.path)? {
            if dir.parent.is_none() && name == ".root" {
                continue;
            }
            if self.failed.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.stop.load(Ordering::Relaxed) {
                return Err(ImportError::Stopped);
            }
            let path = dir.path.join(&name);
            let rel = child_rel(rel, name.as_bytes());
            let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
            dir.pending.fetch_add(1, Ordering::AcqRel);
            if meta.is_dir() {
                let child = self.open_directory(path, dir, name.as_bytes(), &rel, &meta)?;
                self.walk(&child, &rel, tx)?;
                self.release(&child)?;
            } else {
                let job = Job {
                    path,
                    name: name.into_vec(),
                    rel,
                    parent: dir.clone(),
                };
                tx.send(job).map_err(|_| ImportError::Worker)?;
            }
        }
        Ok(())
    }

    /// One pending entry of `dir` is done: finishes every directory up the
    /// chain that has nothing pending any more (the root is finished by
    /// `run`).
    fn release(&self, dir: &Arc<OpenDir>) -> Result<(), ImportError> {
        let mut dir = dir.clone();
        while dir.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let Some(parent) = dir.parent.clone() else {
                return Ok(());
            };
            if self.failed.load(Ordering::Acquire) {
                return Ok(());
            }
            self.finish_dir(&dir)?;
            dir = parent;
        }
        Ok(())
    }

    /// The directory's xattrs, owner, mode and times, after its entries.
    fn finish_dir(&self, dir: &OpenDir) -> Result<(), ImportError> {
        self.copy_xattrs(&dir.path, dir.ino)?;
        if let Some(a) = &dir.attrs {
            self.copy_attrs(&dir.path, dir.ino, a)?;
        }
        self.fs.forget(dir.ino, 1);
        fs::remove_dir(&dir.path).map_err(io(&dir.path))?;
        self.progress.add_entries(1);
        Ok(())
    }

    /// Creates (or, on a rerun, finds) the directory for staged `path`.
    fn open_directory(
        &self,
        path: PathBuf,
        parent: &Arc<OpenDir>,
        name: &[u8],
        rel: &[u8],
        meta: &fs::Metadata,
    ) -> Result<Arc<OpenDir>, ImportError> {
        let ino = match self.fs.lookup(parent.ino, name) {
            Ok(a) if a.st.st_mode & 0o170000 == 0o040000 => a.ino,
            Ok(a) => {
                self.fs.forget(a.ino, 1);
                self.replace_existing(parent.ino, name, &path)?;
                self.mkdir(&path, parent.ino, name, meta)?
            }
            Err(_) => self.mkdir(&path, parent.ino, name, meta)?,
        };
        let attrs = self.dir_attrs(rel, &path, meta)?;
        Ok(Arc::new(OpenDir {
            path,
            ino,
            attrs: Some(attrs),
            pending: AtomicUsize::new(1),
            parent: Some(parent.clone()),
        }))
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
        &self,
        rel: &[u8],
        path: &Path,
        meta: &fs::Metadata,
    ) -> Result<Attrs, ImportError> {
        let mut notes = self.dir_notes.lock();
        if let Some(a) = notes.known.get(rel) {
            return Ok(*a);
        }
        let a = Attrs::of(meta);
        writeln!(notes.file, "{} {}", hex(rel), a.format())
            .and_then(|()| notes.file.sync_data())
            .map_err(io(path))?;
        notes.known.insert(rel.to_vec(), a);
        Ok(a)
    }

    /// A staged non-directory: another name of an inode already imported
    /// becomes a hard link (or waits for the first name to be imported);
    /// anything else is created with its content and attributes.
    fn import_job(&self, job: Job) -> Result<(), ImportError> {
        let meta = fs::symlink_metadata(&job.path).map_err(io(&job.path))?;
        let known = (meta.dev(), meta.ino());
        // The links map is consulted whatever nlink says: other staged
        // names of an inode may be gone already on a rerun.
        let first = {
            let mut links = self.links.lock();
            match links.known.get_mut(&known) {
                Some(LinkState::Imported(first)) => Some(first.clone()),
                Some(LinkState::Importing(waiting)) => {
                    waiting.push(job);
                    return Ok(());
                }
                None => {
                    if meta.nlink() > 1 {
                        let state = LinkState::Importing(Vec::new());
                        links.known.insert(known, state);
                    }
                    None
                }
            }
        };
        if let Some(first) = first {
            self.link(&job, &meta, &first)?;
            return self.done(job);
        }
        self.import_new(&job, &meta)?;
        if meta.nlink() <= 1 {
            return self.done(job);
        }
        let rel = job.rel.clone();
        let waiting = self.note_link(known, &rel, &job.path)?;
        self.done(job)?;
        for other in waiting {
            let meta = fs::symlink_metadata(&other.path).map_err(io(&other.path))?;
            self.link(&other, &meta, &rel)?;
            self.done(other)?;
        }
        Ok(())
    }

    /// Staged `job` becomes another name of the inode imported at `first`.
    fn link(&self, job: &Job, meta: &fs::Metadata, first: &[u8]) -> Result<(), ImportError> {
        let parent = job.parent.ino;
        self.replace_existing(parent, &job.name, &job.path)?;
        let chain = self.resolve(first, &job.path)?;
        let ino = chain.last().copied().unwrap_or(ROOT);
        let r = self.fs.link(caller(meta), ino, parent, &job.name);
        // Children first, as the kernel forgets.
        for i in chain.iter().rev() {
            self.fs.forget(*i, 1);
        }
        let attr = self.journal(&job.path, r)?;
        self.fs.forget(attr.ino, 1);
        Ok(())
    }

    /// A file (with its content), symlink or special file, with its xattrs
    /// and attributes.
    fn import_new(&self, job: &Job, meta: &fs::Metadata) -> Result<(), ImportError> {
        let (path, parent, name) = (&job.path, job.parent.ino, &job.name[..]);
        self.replace_existing(parent, name, path)?;
        let ft = meta.file_type();
        let attr = if ft.is_file() {
            self.import_file(path, parent, name, meta)?
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io(path))?;
            let r = self
                .fs
                .symlink(caller(meta), parent, name, target.as_os_str().as_bytes());
            self.journal(path, r)?
        } else {
            // fifo, socket, character or block device: the type is in the mode.
            let r = self
                .fs
                .mknod(caller(meta), parent, name, meta.mode(), 0, meta.rdev());
            self.journal(path, r)?
        };
        let copied = self
            .copy_xattrs(path, attr.ino)
            .and_then(|()| self.copy_attrs(path, attr.ino, &Attrs::of(meta)));
        self.fs.forget(attr.ino, 1);
        copied
    }

    /// Creates the file and journals its content in chunks.
    fn import_file(
        &self,
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
        if let Err(e) = result {
            self.fs.forget(attr.ino, 1);
            return Err(e);
        }
        Ok(attr)
    }

    fn copy_content(
        &self,
        path: &Path,
        ino: u64,
        fh: u64,
        meta: &fs::Metadata,
    ) -> Result<(), ImportError> {
        let mut src = File::open(path).map_err(io(path))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Err(ImportError::Stopped);
            }
            let n = src.read(&mut buf).map_err(io(path))?;
            if n == 0 {
                return Ok(());
            }
            let mut done = 0;
            while done < n {
                let r = self.fs.write(caller(meta), ino, fh, offset, &buf[done..n]);
                let w = self.journal(path, r)? as usize;
                done += w;
                offset += w as u64;
            }
            self.progress.add_bytes(n as u64);
        }
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

    /// Owner, mode (after the owner: chown clears set-id bits; a symlink
    /// has none to set) and times.
    fn copy_attrs(&self, path: &Path, ino: u64, a: &Attrs) -> Result<(), ImportError> {
        let symlink = a.mode & 0o170000 == 0o120000;
        let attr = SetAttr {
            mode: (!symlink).then_some(a.mode & 0o7777),
            uid: Some(a.uid),
            gid: Some(a.gid),
            size: None,
            atime: Some(SetTime::At(a.atime)),
            mtime: Some(SetTime::At(a.mtime)),
        };
        let r = self.fs.setattr(Caller::default(), ino, attr);
        self.journal(path, r).map(drop)
    }

    fn copy_xattrs(&self, path: &Path, ino: u64) -> Result<(), ImportError> {
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
                    self.xattrs_refused.fetch_add(1, Ordering::Relaxed);
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

    /// The inode first imported at `rel` is noted for a rerun; returns the
    /// names that waited for it.
    fn note_link(
        &self,
        known: (u64, u64),
        rel: &[u8],
        path: &Path,
    ) -> Result<Vec<Job>, ImportError> {
        let mut links = self.links.lock();
        writeln!(links.file, "{} {} {}", known.0, known.1, hex(rel))
            .and_then(|()| links.file.sync_data())
            .map_err(io(path))?;
        match links.known.insert(known, LinkState::Imported(rel.to_vec())) {
            Some(LinkState::Importing(waiting)) => Ok(waiting),
            _ => Ok(Vec::new()),
        }
    }

    /// The staged name is journaled: remove it.
    fn done(&self, job: Job) -> Result<(), ImportError> {
        fs::remove_file(&job.path).map_err(io(&job.path))?;
        self.progress.add_entries(1);
        self.release(&job.parent)
    }

    /// The root's own owner, mode, xattrs and times, last.
    fn finish_root(&self, dir: &Path) -> Result<(), ImportError> {
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
}

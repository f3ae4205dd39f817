//! The master: a FUSE filesystem over a data-root whose every mutation is
//! journaled to Kafka before it takes effect, then applied by the master's
//! own applier (the slave's code) and only then answered.
//!
//! Start-up: bring the data-root up to the journal (the slave's catch-up,
//! from the data-root's own checkpoint), read the journal's tails to
//! continue its sequence numbers, start the applier, the pipeline and the
//! checkpointer; on a new topic, journal the root's attributes first. Then
//! the caller mounts `fuse::FuseAdapter` over `fs::MasterFs`.

pub mod deadline;
pub mod durability;
pub mod fs;
pub mod fuse;
pub(crate) mod handoff;
pub mod import;
pub mod inodes;
pub mod kernel_cache;
pub mod keys;
pub mod pipeline;
pub mod sequencer;
#[cfg(test)]
mod tests;
pub mod wal;
pub mod window;

use std::ffi::CString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use crate::error::{CheckpointError, Errno, FsError, JournalError, ReplicaError};
use crate::journal::{Journal, Sink};
use crate::limits::{Limits, LimitsProfile};
use crate::master::fs::MasterFs;
use crate::master::inodes::{InodeTable, ROOT};
use crate::master::keys::{Key, KeySet};
use crate::master::pipeline::{
    read_last, write_fences, FsyncStart, Pipeline, PipelineStart, Planned, PreCheck, ReplayOrder,
    Tail,
};
use crate::op::hex;
use crate::op::{Op, RelPath, Timestamp};
use crate::record::Record;
use crate::record::{Caller, Writer};
use crate::replica::checkpoint::{DataLock, StateDir};
use crate::replica::entry::{Entry, WorkError};
use crate::replica::pool::Pool;
use crate::replica::state::{durable_checkpoint, root_is_empty, ReplicaState};
use crate::replica::OpenOptions;
use crate::slave::{self, SlaveConfig, SlaveReport};
use crate::sync::Mutex;

/// Default cap on cached data-root handles.
pub const DEFAULT_FD_CACHE: usize = 4096;

/// Descriptors kept free for Kafka sockets, the ledger and checkpoint,
/// applier and dispatcher threads.
const FD_RESERVE: u64 = 192;

/// Raises the soft open-file limit to the hard one; returns the soft limit.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            tracing::warn!("raising the open-file limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// Handles the inode table may cache under an open-file limit of `nofile`.
pub fn fd_cache_capacity(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(FD_RESERVE) / 2;
    configured.min(room as usize).max(16)
}

/// How to run a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    /// The data-root: the master's own replica.
    pub data: PathBuf,
    /// Applier threads for the data-root.
    pub threads: usize,
    /// How long a call waits for the journal before failing with EIO.
    pub journal_timeout: Duration,
    /// Write to a topic last written by another master.
    pub take_over: bool,
    /// Largest write per record.
    pub max_chunk: usize,
    /// How often the durable checkpoint is written.
    pub checkpoint_interval: Duration,
    /// Inode-history size before it is folded into a full barrier.
    pub history_limit: usize,
    /// What records are ordered after on slaves.
    pub ordering: ReplayOrder,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Which limits a new topic declares.
    pub limits: LimitsProfile,
    /// Most `O_PATH` handles kept on the data-root's inodes (further
    /// capped by the open-file limit).
    pub fd_cache: usize,
    /// Catch-up: skip every undecodable record (each skip is logged).
    pub skip_bad_records: bool,
    /// Catch-up: skip exactly these records (partition, offset).
    pub skip_records: Vec<(u32, i64)>,
    /// Where the filesystem will be mounted (checked before anything is
    /// created: an existing directory, empty, not already a mount).
    pub mountpoint: Option<PathBuf>,
    /// Mount over a non-empty mountpoint (hiding its files).
    pub allow_non_empty_mount: bool,
    /// Adopt a non-empty DATA: journal its tree on a new topic, then serve it.
    pub import: bool,
    /// Threads journaling an import's entries concurrently.
    pub import_jobs: usize,
    /// Serve without root, in-process and without a mount (tests,
    /// embedding): calls come from this process's own user, and ownership,
    /// device nodes and set-id bits are not reproduced on the data-root.
    /// Refused together with a mountpoint.
    pub unprivileged: bool,
    /// When calls are answered (`journal`: after Kafka's acknowledgement).
    pub durability: durability::Durability,
    /// The `fsync` mode's unacknowledged window.
    pub window: window::WindowLimits,
}

/// Threads an import journals with unless told otherwise.
pub const DEFAULT_IMPORT_JOBS: usize = 8;

impl MasterConfig {
    /// A configuration for `data` with defaults.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        MasterConfig {
            data: data.into(),
            threads: 4,
            journal_timeout: Duration::from_secs(30),
            take_over: false,
            max_chunk: fs::DEFAULT_MAX_CHUNK,
            checkpoint_interval: Duration::from_secs(5),
            history_limit: 1 << 21,
            ordering: ReplayOrder::Causal,
            metrics: None,
            limits: LimitsProfile::Portable,
            fd_cache: DEFAULT_FD_CACHE,
            skip_bad_records: false,
            skip_records: Vec::new(),
            mountpoint: None,
            allow_non_empty_mount: false,
            import: false,
            import_jobs: DEFAULT_IMPORT_JOBS,
            unprivileged: false,
            durability: durability::Durability::Journal,
            window: window::WindowLimits::default(),
        }
    }
}

/// Why a master did not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// Its catch-up with the journal failed.
    #[error("bringing the data-root up to the journal: {0}")]
    CatchUp(#[source] ReplicaError),
    /// Its applier failed.
    #[error("{0}")]
    Slave(#[from] ReplicaError),
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The state folder failed.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A file of the data-root failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A non-empty data-root that no journal accounts for.
    #[error("{0} is not empty and holds no kafkafs checkpoint: it is not accounted for by the journal, so the master will not serve it. Pass --import to journal its tree into a new topic first, or use an empty directory.")]
    NotAccounted(PathBuf),
    /// The data-root has applied more than the topic holds.
    #[error("the data-root's checkpoint is ahead of topic `{topic}` (partition {partition}: checkpoint at offset {checkpoint}, topic ends at {end}); is this a new or different topic (an embedded broker keeps nothing after exit)? Use an empty data-root for a new topic.")]
    TopicBehind {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The checkpoint's next offset.
        checkpoint: i64,
        /// The topic's end offset.
        end: i64,
    },
    /// Another master wrote the topic last.
    #[error("topic `{topic}` was last written by another master (writer {other}); refusing to interleave. If that master is gone for good, pass --take-over.")]
    OtherWriter {
        /// The topic.
        topic: String,
        /// The last writer's identity (hex).
        other: String,
    },
    /// Journaling a new topic's first records failed.
    #[error("journaling the root's attributes: {0}")]
    Init(FsError),
    /// The data-root follows another topic.
    #[error("{} follows topic `{recorded}`, not `{requested}`: pass --topic {recorded}, or use an empty data-root for topic `{requested}`", data.display())]
    WrongTopic {
        /// The data-root.
        data: PathBuf,
        /// The topic its checkpoint names.
        recorded: String,
        /// The topic asked for.
        requested: String,
    },
    /// Importing an existing tree failed.
    #[error("importing: {0}")]
    Import(#[source] import::ImportError),
    /// An import needs a new, empty topic.
    #[error("--import journals an existing tree into a new, empty topic, but topic `{0}` already holds records; use a new topic")]
    ImportNeedsNewTopic(String),
    /// The mountpoint cannot be used.
    #[error("cannot mount at {}: {why}", mnt.display())]
    Mountpoint {
        /// The mountpoint.
        mnt: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Not running as root.
    #[error("the master must run as root: it serves every user of the mount (allow_other) and gives new files their callers' ownership")]
    NotRoot,
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MasterError + '_ {
    move |source| MasterError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A running master (without its mount).
pub struct Master {
    /// The exclusive use of the data-root.
    _lock: DataLock,
    /// The filesystem the mount serves.
    pub fs: Arc<MasterFs>,
    pipeline: Pipeline,
    pool: Option<Pool<Entry, WorkError>>,
    state: Arc<ReplicaState>,
    statedir: StateDir,
    stop: Arc<AtomicBool>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// An existing tree to import: the data-root's attributes before the
/// state folder is created in it (`None`: nothing to import).
fn import_root(
    config: &MasterConfig,
    last: &[Option<(i64, Record)>],
    topic: &str,
) -> Result<Option<std::fs::Metadata>, MasterError> {
    let data = &config.data;
    let adopt = config.import
        && !import::pending(data)
        && StateDir::existing(data)
            .map(|sd| sd.load_checkpoint().map(|c| c.is_none()))
            .transpose()?
            .unwrap_or(true)
        && data.exists()
        && !root_is_empty(data)?;
    if !adopt {
        return Ok(None);
    }
    if last.iter().any(Option::is_some) {
        return Err(MasterError::ImportNeedsNewTopic(topic.to_string()));
    }
    import::root_attributes(data)
        .map(Some)
        .map_err(MasterError::Import)
}

/// This master's writer, and the producer that wrote its fences.
struct Fenced {
    writer: Writer,
    /// Writes the calls' records too: a new idempotent producer delivers
    /// nothing until it has its producer id, which librdkafka asks for up
    /// to half a second after the producer is made; the fences paid that
    /// wait during the start, so the first calls do not.
    sink: Arc<dyn Sink>,
}

/// Writes this writer's fences (epoch one above the last writer's) with
/// the producer the calls will use, and returns both.
fn fence(
    config: &MasterConfig,
    journal: &dyn Journal,
    statedir: &StateDir,
    last: &[Option<(i64, Record)>],
) -> Result<Fenced, MasterError> {
    let id = writer_id(statedir)?;
    let epoch = last
        .iter()
        .flatten()
        .map(|(_, r)| r.writer.epoch)
        .max()
        .unwrap_or(0)
        + 1;
    let writer = Writer { id, epoch };
    let sink = journal.sink(config.durability.linger())?;
    write_fences(
        sink.as_ref(),
        &writer,
        config.take_over,
        config.journal_timeout,
    )?;
    Ok(Fenced { writer, sink })
}

fn open_replica(
    config: &MasterConfig,
    statedir: &StateDir,
    topic: &str,
    partitions: u32,
    stop: &Arc<AtomicBool>,
) -> Result<Arc<ReplicaState>, MasterError> {
    let opened = crate::replica::open(
        &config.data,
        statedir,
        OpenOptions {
            topic,
            partitions,
            unprivileged: config.unprivileged,
            filter: crate::filter::Filter::default(),
            stop: stop.clone(),
        },
    )?;
    Ok(opened.state)
}

/// The serving side of a started master.
struct Started {
    fs: Arc<MasterFs>,
    pipeline: Pipeline,
    root_st: rustix::fs::Stat,
    /// The limits a new topic declares (`None`: the topic has records).
    declared: Option<Limits>,
}

/// Opens the data-root's inode table and starts the pipeline and the
/// filesystem over it.
fn start_fs(
    config: &MasterConfig,
    journal: Arc<dyn Journal>,
    state: &Arc<ReplicaState>,
    pool: &Pool<Entry, WorkError>,
    tails: Vec<Tail>,
    fenced: Fenced,
    last_time: Option<Timestamp>,
) -> Result<Started, MasterError> {
    let data = &config.data;
    let (inodes, root_st) = open_inodes(config)?;
    let fresh_topic = tails.iter().all(|t| t.last_pseq == 0);
    let declared = if fresh_topic {
        let capacity = state.replica.capacity().map_err(io(data))?;
        Some(match config.limits {
            LimitsProfile::Portable => Limits::portable().min(&capacity),
            LimitsProfile::DataRoot => capacity,
        })
    } else {
        None
    };
    let limits = effective_limits(state, declared.as_ref(), data)?;
    let pipeline = Pipeline::start(PipelineStart {
        ordering: config.ordering,
        journal,
        inodes: inodes.clone(),
        feeder: pool.feeder(),
        tails,
        last_time: last_time.unwrap_or_default(),
        writer: fenced.writer,
        sink: fenced.sink,
        timeout: config.journal_timeout,
        history_limit: config.history_limit,
        check: pre_check(state.clone(), limits.clone()),
        fsync: fsync_start(config)?,
        deadlines: deadline::Deadlines::start().map_err(io(data))?,
    })?;
    let fs = Arc::new(MasterFs::new(
        pipeline.clone(),
        inodes,
        config.max_chunk,
        limits.max_file_size,
    ));
    Ok(Started {
        fs,
        pipeline,
        root_st,
        declared,
    })
}

/// The `fsync` mode's write-ahead file and window (`None`: `journal`).
fn fsync_start(config: &MasterConfig) -> Result<Option<FsyncStart>, MasterError> {
    if config.durability != durability::Durability::Fsync {
        return Ok(None);
    }
    let dir = wal::dir_of(&config.data);
    let segment = (config.window.bytes / 4).clamp(1 << 20, 64 << 20);
    let wal = wal::Wal::create(&dir, segment)
        .map(wal::WalWriter::new)
        .map_err(io(&dir))?;
    tracing::info!(
        "durability fsync: calls are answered before Kafka acknowledges them (at most {} \
         records, {} MiB, {:?} unacknowledged); fsync waits for Kafka",
        config.window.records,
        config.window.bytes >> 20,
        config.window.age
    );
    Ok(Some(FsyncStart {
        limits: config.window,
        wal,
        wal_dir: dir,
    }))
}

/// Deals with what an `fsync`-mode run left (under the lock, before the
/// catch-up): its unacknowledged records are sent again, or the data-root
/// is moved aside to be rebuilt from the journal (returned: where it went).
/// Returns the partitions' last records as they are now.
#[allow(clippy::type_complexity)]
fn settle_durability(
    config: &MasterConfig,
    journal: &dyn Journal,
    statedir: &StateDir,
    last: Vec<Option<(i64, Record)>>,
) -> Result<(Vec<Option<(i64, Record)>>, Option<PathBuf>), MasterError> {
    use durability::Leftovers;
    let ours = existing_writer_id(statedir)?;
    let leftovers = durability::settle_leftovers(config, journal, ours.as_deref(), &last)?;
    let why = match &leftovers {
        Leftovers::RollBack(why) => Some(why.clone()),
        Leftovers::Resent(_) => durability::ahead_of_journal(statedir, journal)?,
        Leftovers::None if config.durability == durability::Durability::Fsync => {
            durability::ahead_of_journal(statedir, journal)?
        }
        Leftovers::None => None,
    };
    let aside = why
        .map(|why| durability::roll_back(&config.data, statedir, &why))
        .transpose()?;
    if matches!(leftovers, Leftovers::None) {
        return Ok((last, aside));
    }
    let last = with_retries(config.journal_timeout, || {
        read_last(journal.source()?.as_mut())
    })?;
    Ok((last, aside))
}

/// The inode table over the data-root, with its handle cache sized to the
/// open-file limit.
fn open_inodes(
    config: &MasterConfig,
) -> Result<(Arc<Mutex<InodeTable>>, rustix::fs::Stat), MasterError> {
    let data = &config.data;
    let root_fd = rustix::fs::open(
        data.as_path(),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(data)(e.into()))?;
    let root_st = rustix::fs::fstat(&root_fd).map_err(|e| io(data)(e.into()))?;
    let nofile = raise_nofile();
    let capacity = fd_cache_capacity(config.fd_cache, nofile);
    tracing::info!("open-file limit {nofile}; at most {capacity} data-root handles cached");
    let table = InodeTable::new(root_fd, &root_st, capacity);
    Ok((Arc::new(Mutex::new(table)), root_st))
}

fn serve_metrics(
    config: &MasterConfig,
    state: &Arc<ReplicaState>,
    pipeline: &Pipeline,
) -> Result<(), MasterError> {
    let Some(addr) = config.metrics else {
        return Ok(());
    };
    let (m, p) = (state.clone(), pipeline.clone());
    let render = move || format!("{}{}", m.render_metrics(), p.render_metrics());
    let bound = crate::metrics::serve(addr, Arc::new(render)).map_err(io(&config.data))?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(())
}

/// A new topic's first records: the limits it declares and the root's
/// attributes; then an import that is pending.
fn journal_beginning(
    config: &MasterConfig,
    started: &Started,
    stop: &AtomicBool,
) -> Result<(), MasterError> {
    let data = &config.data;
    if let Some(declared) = &started.declared {
        journal_limits(&started.pipeline, declared.clone()).map_err(MasterError::Init)?;
        journal_root(&started.pipeline, &started.root_st).map_err(MasterError::Init)?;
    }
    if import::pending(data) {
        tracing::info!(
            "importing the existing tree of {} into the journal",
            data.display()
        );
        import::run(&started.fs, data, config.import_jobs, stop).map_err(MasterError::Import)?;
    }
    Ok(())
}

/// A thread writing the durable checkpoint every `checkpoint_interval`
/// and a line of activity a minute.
fn spawn_checkpointer(
    config: &MasterConfig,
    statedir: &StateDir,
    state: &Arc<ReplicaState>,
    pipeline: &Pipeline,
    stop: &Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, MasterError> {
    let (cp_state, cp_dir, cp_stop) = (state.clone(), statedir.clone(), stop.clone());
    let interval = config.checkpoint_interval;
    let mut activity = Activity::new(pipeline.clone());
    std::thread::Builder::new()
        .name("kafkafs-checkpoint".into())
        .spawn(move || {
            let mut last = std::time::Instant::now();
            while !cp_stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.elapsed() >= interval {
                    if let Err(e) = durable_checkpoint(&cp_dir, &cp_state) {
                        tracing::error!("writing the checkpoint failed: {e}");
                    }
                    last = std::time::Instant::now();
                }
                activity.tick();
            }
        })
        .map_err(io(&config.data))
}

/// This data-root's writer identity (created on first use).
fn writer_id(statedir: &StateDir) -> Result<Vec<u8>, MasterError> {
    if let Some(id) = existing_writer_id(statedir)? {
        return Ok(id);
    }
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(io(Path::new("/dev/urandom")))?;
    let tmp = statedir.path().join("writer-id.tmp");
    std::fs::write(&tmp, format!("{}\n", hex(&id))).map_err(io(&tmp))?;
    std::fs::rename(&tmp, statedir.path().join("writer-id")).map_err(io(statedir.path()))?;
    Ok(id.to_vec())
}

/// The writer identity this data-root already has, if any.
fn existing_writer_id(statedir: &StateDir) -> Result<Option<Vec<u8>>, MasterError> {
    let path = statedir.path().join("writer-id");
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            let s = s.trim();
            let bytes: Option<Vec<u8>> = (0..s.len() / 2)
                .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
                .collect();
            match bytes {
                Some(b) if b.len() == 16 => Ok(Some(b)),
                _ => Err(MasterError::Checkpoint(CheckpointError::Corrupt {
                    path,
                    why: "writer-id is not 32 hex digits".into(),
                })),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&path)(e)),
    }
}

impl Master {
    /// Brings the data-root up to the journal and starts serving it.
    pub fn start(
        config: &MasterConfig,
        journal: Arc<dyn Journal>,
        stop: Arc<AtomicBool>,
    ) -> Result<Master, MasterError> {
        let data = &config.data;
        let topic = journal.topic();
        preflight(config, &topic)?;
        // Who wrote the journal last, before anything is created or applied.
        let last = with_retries(config.journal_timeout, || {
            read_last(journal.source()?.as_mut())
        })?;
        check_writer(data, &last, config.take_over, &topic)?;
        let root_before = import_root(config, &last, &topic)?;
        std::fs::create_dir_all(data).map_err(io(data))?;
        let statedir = StateDir::open(data)?;
        let lock = statedir.lock()?;
        // 0. What an `fsync`-mode run left: sent again, or rolled back.
        let (last, discarded) = settle_durability(config, journal.as_ref(), &statedir, last)?;
        check_not_ahead(&statedir, journal.as_ref())?;
        if let Some(root) = &root_before {
            import::stage(data, root).map_err(MasterError::Import)?;
        }
        // 1. Fence the topic: from here on only this writer is valid.
        let fenced = fence(config, journal.as_ref(), &statedir, &last)?;
        // 2. Catch up with the journal, through the fences.
        let report = catch_up(config, journal.as_ref(), &stop)?;
        check_fenced_to(&report, &fenced.writer, &topic)?;
        if let Some(aside) = &discarded {
            durability::list_discarded(data, aside)?;
        }
        let tails: Vec<Tail> = report.positions.iter().map(Tail::after).collect();
        // 3. The data-root's own applier: the same replica runtime a slave
        //    runs (its catch-up in step 2 finished any interrupted record).
        let state = open_replica(config, &statedir, &topic, tails.len() as u32, &stop)?;
        let pool = crate::replica::start_pool(config.threads, &state);
        // 4. Inodes, pipeline, filesystem.
        let last_time = last.iter().flatten().map(|(_, r)| r.time).max();
        let started = start_fs(config, journal, &state, &pool, tails, fenced, last_time)?;
        serve_metrics(config, &state, &started.pipeline)?;
        // 5. A new journal starts with the root's attributes; an import
        //    follows.
        journal_beginning(config, &started, &stop)?;
        // 6. Periodic durable checkpoints, and a line of activity.
        let checkpointer = spawn_checkpointer(config, &statedir, &state, &started.pipeline, &stop)?;
        Ok(Master {
            _lock: lock,
            fs: started.fs,
            pipeline: started.pipeline,
            pool: Some(pool),
            state,
            statedir,
            stop,
            checkpointer: Some(checkpointer),
        })
    }

    /// The write path.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Stops accepting calls, waits for the journal and the applier, writes
    /// the final checkpoint.
    pub fn shutdown(mut self) -> Result<(), MasterError> {
        self.pipeline.stop();
        if let Err(e) = self.pipeline.flush(Duration::from_secs(30)) {
            tracing::warn!("flushing the journal: {e}");
        }
        self.pipeline.close_write_ahead(Duration::from_secs(5));
        self.stop.store(true, Ordering::SeqCst);
        if let Some(pool) = self.pool.take() {
            let end = pool.close();
            if end.scheduler.queued() > 0 {
                tracing::warn!(
                    "{} acknowledged records were not applied before exit; the next start applies them",
                    end.scheduler.queued()
                );
            }
        }
        if let Some(t) = self.checkpointer.take() {
            let _ = t.join();
        }
        durable_checkpoint(&self.statedir, &self.state)?;
        Ok(())
    }
}

/// Every check that can refuse a master, made before anything is created
/// (the topic, `DATA/.kafkafs`) or applied: privileges, the data-root's
/// state and topic, its exclusive use, the mountpoint.
pub fn preflight(config: &MasterConfig, topic: &str) -> Result<(), MasterError> {
    match (&config.mountpoint, config.unprivileged) {
        (Some(mnt), true) => {
            return Err(MasterError::Mountpoint {
                mnt: mnt.clone(),
                why: "an unprivileged master serves in-process only, never a mount".into(),
            })
        }
        (_, false) if !rustix::process::geteuid().is_root() => return Err(MasterError::NotRoot),
        _ => {}
    }
    let data = &config.data;
    match StateDir::existing(data) {
        Some(sd) => {
            sd.check_free()?;
            if let Some(cp) = sd.load_checkpoint()? {
                if cp.topic != topic {
                    return Err(MasterError::WrongTopic {
                        data: data.clone(),
                        recorded: cp.topic,
                        requested: topic.to_string(),
                    });
                }
            } else if !config.import && !import::pending(data) && !root_is_empty(data)? {
                return Err(MasterError::NotAccounted(data.clone()));
            }
        }
        None if !config.import && data.exists() && !root_is_empty(data)? => {
            return Err(MasterError::NotAccounted(data.clone()))
        }
        None => {}
    }
    if let Some(mnt) = &config.mountpoint {
        check_mountpoint(mnt, config.allow_non_empty_mount)?;
    }
    Ok(())
}

/// A mountpoint must be a directory, not already a mount, and empty
/// (unless asked): mounting over files would hide them.
fn check_mountpoint(mnt: &Path, allow_non_empty: bool) -> Result<(), MasterError> {
    let refuse = |why: String| MasterError::Mountpoint {
        mnt: mnt.to_path_buf(),
        why,
    };
    let meta = match std::fs::metadata(mnt) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        // A mount left behind by a crashed master: cleaned up at mount time.
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(()),
        Err(e) => return Err(io(mnt)(e)),
    };
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    if is_mountpoint(mnt) {
        return Err(refuse(
            "something is already mounted there (another master?); unmount it first".into(),
        ));
    }
    let mut entries = std::fs::read_dir(mnt).map_err(io(mnt))?;
    if !allow_non_empty && entries.next().is_some() {
        return Err(refuse(
            "it is not empty, and the mount would hide its files (pass --allow-non-empty-mount to \
             mount over them anyway)"
                .into(),
        ));
    }
    Ok(())
}

/// Is `path` a mount point (per /proc/self/mountinfo)?
fn is_mountpoint(path: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(path) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(want.as_str()))
}

/// The data-root's checkpoint must not be ahead of the topic (a new topic
/// of the same name, an embedded broker restarted).
fn check_not_ahead(statedir: &StateDir, journal: &dyn Journal) -> Result<(), MasterError> {
    let Some(cp) = statedir.load_checkpoint()? else {
        return Ok(());
    };
    let source = journal.source()?;
    for (p, pos) in cp.positions.iter().enumerate() {
        let (_, end) = with_retries(Duration::from_secs(30), || source.watermarks(p as u32))?;
        if pos.next_offset > end {
            return Err(MasterError::TopicBehind {
                topic: journal.topic(),
                partition: p as u32,
                checkpoint: pos.next_offset,
                end,
            });
        }
    }
    Ok(())
}

/// A topic last written by another master is refused unless taking over.
fn check_writer(
    data: &Path,
    last: &[Option<(i64, Record)>],
    take_over: bool,
    topic: &str,
) -> Result<(), MasterError> {
    let ours = match StateDir::existing(data) {
        Some(sd) => existing_writer_id(&sd)?,
        None => None,
    };
    // The last record of any partition (a fence included) by another writer.
    let other = last
        .iter()
        .flatten()
        .find(|(_, r)| ours.as_deref() != Some(r.writer.id.as_slice()));
    match other {
        Some((_, r)) if !take_over => Err(MasterError::OtherWriter {
            topic: topic.to_string(),
            other: hex(&r.writer.id),
        }),
        _ => Ok(()),
    }
}

/// Runs a read of the journal, retrying for up to `patience` while it
/// fails in a way waiting cures (a new topic's leaders being elected, a
/// broker restarting).
fn with_retries<T>(
    patience: Duration,
    f: impl FnMut() -> Result<T, JournalError>,
) -> Result<T, JournalError> {
    crate::journal::patiently(
        patience,
        "reading the journal",
        crate::journal::is_transient,
        f,
    )
}

/// After the catch-up, this master's fence must be in force in every
/// partition (else another master took over meanwhile).
fn check_fenced_to(report: &SlaveReport, writer: &Writer, topic: &str) -> Result<(), MasterError> {
    for (p, pos) in report.positions.iter().enumerate() {
        match pos.fence {
            Some(f) if f.id.as_slice() == writer.id.as_slice() => {}
            other => {
                return Err(MasterError::OtherWriter {
                    topic: topic.to_string(),
                    other: format!(
                        "{} (it holds partition {p})",
                        other
                            .map(|f| hex(&f.id))
                            .unwrap_or_else(|| "unknown".into())
                    ),
                })
            }
        }
    }
    Ok(())
}

/// Brings the data-root up to the journal (the slave's replay).
fn catch_up(
    config: &MasterConfig,
    journal: &dyn Journal,
    stop: &Arc<AtomicBool>,
) -> Result<SlaveReport, MasterError> {
    let mut c = SlaveConfig::new(&config.data, journal.topic());
    c.exit_when_caught_up = true;
    c.threads = config.threads;
    c.skip_bad_records = config.skip_bad_records;
    c.skip_records = config.skip_records.clone();
    c.hold_lock = false;
    c.unprivileged = config.unprivileged;
    let report = slave::run(&c, journal.source()?, stop.clone()).map_err(MasterError::CatchUp)?;
    if report.applied > 0 {
        tracing::info!(
            "data-root brought up to the journal: {} records applied",
            report.applied
        );
    }
    Ok(report)
}

/// The limits the master checks calls against: what the topic declares
/// (or is about to), within what the data-root can hold.
fn effective_limits(
    state: &ReplicaState,
    declared: Option<&Limits>,
    data: &Path,
) -> Result<Limits, MasterError> {
    let declared = declared.cloned().unwrap_or_else(|| state.replica.limits());
    let capacity = state.replica.capacity().map_err(io(data))?;
    if let Some(why) = declared.unmet_by(&capacity) {
        tracing::warn!(
            "the data-root cannot hold what the topic declares ({why}); calls beyond what it \
             holds are refused"
        );
    }
    Ok(declared.min(&capacity))
}

/// The check a record passes before it is journaled (with its keys held):
/// the topic's limits, the xattr space of its inode, the data-root's free
/// space for data it adds.
fn pre_check(state: Arc<ReplicaState>, limits: Limits) -> PreCheck {
    Arc::new(move |op: &Op| {
        if let Some(errno) = limits.refuse(op) {
            return Some(errno);
        }
        let replica = &state.replica;
        match op {
            Op::SetXattr {
                path, name, value, ..
            } => {
                let fd = replica.open_path(path).ok()?;
                let link = CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
                limits.refuse_xattr(&link, name, value).err()
            }
            Op::Write { data, .. } => free_space_for(replica, data.len() as u64),
            Op::Fallocate { mode, length, .. } if mode & crate::op::FALLOC_PUNCH_HOLE == 0 => {
                free_space_for(replica, *length)
            }
            _ => None,
        }
    })
}

/// ENOSPC when the data-root cannot take `bytes` more (with a margin for
/// the filesystem's own metadata).
fn free_space_for(replica: &crate::replica::apply::Replica, bytes: u64) -> Option<Errno> {
    let vfs = rustix::fs::fstatvfs(replica.root_fd()).ok()?;
    let free = vfs.f_bavail.saturating_mul(vfs.f_frsize);
    let margin = 64 * 1024 + bytes / 32;
    (free < bytes.saturating_add(margin)).then_some(Errno::NOSPC)
}

/// Journals the topic's limits: the first record of a new topic.
fn journal_limits(pipeline: &Pipeline, limits: Limits) -> Result<(), FsError> {
    let mut keys = KeySet::new();
    keys.exclusive(Key::Inode(ROOT));
    keys.exclusive(Key::DirTimes(ROOT));
    tracing::info!("the new topic declares its limits: {limits:?}");
    let applied = pipeline.submit(Caller::default(), &mut |_| {
        let limits = limits.clone();
        Ok(Planned {
            keys: keys.clone(),
            build: Box::new(move |_| Op::Limits(limits)),
        })
    })?;
    applied.outcome.map_err(FsError::Outcome)
}

/// Journals the root directory's mode, owner and times: the first records
/// of a new topic, so every replica's root matches the master's.
fn journal_root(pipeline: &Pipeline, st: &rustix::fs::Stat) -> Result<(), FsError> {
    let caller = Caller::default();
    let mut keys = KeySet::new();
    keys.exclusive(Key::Inode(ROOT));
    keys.exclusive(Key::DirTimes(ROOT));
    let ops: Vec<Box<dyn Fn(Timestamp) -> Op + Send + Sync>> = vec![
        Box::new({
            let (uid, gid) = (st.st_uid, st.st_gid);
            move |_| Op::Chown {
                path: RelPath::root(),
                uid: Some(uid),
                gid: Some(gid),
            }
        }),
        Box::new({
            let mode = st.st_mode & 0o7777;
            move |_| Op::Chmod {
                path: RelPath::root(),
                mode,
            }
        }),
        Box::new(|t| Op::Utimens {
            path: RelPath::root(),
            atime: Some(t),
            mtime: Some(t),
        }),
    ];
    for op in ops {
        let op = Arc::new(op);
        let applied = pipeline.submit(caller, &mut |_| {
            let op = op.clone();
            Ok(Planned {
                keys: keys.clone(),
                build: Box::new(move |t| op(t)),
            })
        })?;
        applied.outcome.map_err(FsError::Outcome)?;
    }
    Ok(())
}

/// Unmounts a FUSE mount left behind by a crashed master ("Transport
/// endpoint is not connected").
pub fn clean_stale_mount(mountpoint: &Path) -> std::io::Result<()> {
    match std::fs::metadata(mountpoint) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(
                "{} is a mount left behind by a crashed master; unmounting it",
                mountpoint.display()
            );
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                let c = std::ffi::CString::new(mountpoint.as_os_str().as_encoded_bytes())
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
                rustix::mount::unmount(c.as_c_str(), rustix::mount::UnmountFlags::DETACH)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Mounts the master's filesystem at `mountpoint` (served by background
/// threads until the returned mount is unmounted or dropped).
pub fn mount(
    master: &Master,
    mountpoint: &Path,
    dispatchers: usize,
) -> std::io::Result<fuse::Mount> {
    clean_stale_mount(mountpoint)?;
    std::fs::create_dir_all(mountpoint)?;
    fuse::Mount::spawn(master.fs.clone(), mountpoint, dispatchers)
}

/// The master's periodic line while it journals: records acknowledged
/// over the last interval, their acknowledgement latency, failed calls.
struct Activity {
    pipeline: Pipeline,
    last: std::time::Instant,
    last_acked: u64,
    last_failed: u64,
    last_ack: crate::metrics::Counts,
}

impl Activity {
    const EVERY: Duration = Duration::from_secs(60);

    fn new(pipeline: Pipeline) -> Self {
        let (last_acked, last_failed, last_ack) = pipeline.activity();
        Activity {
            pipeline,
            last: std::time::Instant::now(),
            last_acked,
            last_failed,
            last_ack,
        }
    }

    /// Logs a line if an interval passed with anything journaled or failed.
    fn tick(&mut self) {
        if self.last.elapsed() < Self::EVERY {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        let (acked, failed, ack) = self.pipeline.activity();
        let recent = ack.since(&self.last_ack);
        if acked > self.last_acked || failed > self.last_failed {
            tracing::info!(
                "journaled {} records in the last {secs:.0} s ({:.0}/s), acknowledged in p50 {:?} p99 {:?}; {} calls failed (EIO)",
                acked - self.last_acked,
                (acked - self.last_acked) as f64 / secs,
                recent.quantile(0.5).unwrap_or_default(),
                recent.quantile(0.99).unwrap_or_default(),
                failed - self.last_failed
            );
        }
        (self.last_acked, self.last_failed, self.last_ack) = (acked, failed, ack);
        self.last = std::time::Instant::now();
    }
}

//! The slave: follows a topic and applies it to a local directory.
//!
//! Start-up restores each partition's position (ledger if this boot wrote
//! it, else the durable checkpoint), first finishes any record whose
//! application was interrupted (its intent), then reads all partitions and
//! feeds the scheduler, whose workers apply records and advance the ledger.
//! The durable checkpoint is refreshed every `checkpoint_interval` and on
//! exit, always after `syncfs` of the replica.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::applier::{Pool, WorkFn};
use crate::apply::Replica;
use crate::checkpoint::{DataLock, Position, StateDir};
use crate::error::{JournalError, RecordPos, SlaveError};
use crate::journal::{Message, Source};
use crate::op::Timestamp;
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::replay::{
    apply_entry, durable_checkpoint, init_fresh, restore, root_is_empty, sleep_unless_stopped,
    Entry, Reader, ReplicaState, Restored, WorkError,
};
use crate::scheduler::{Item, Scheduler};
use crate::snapshot::bootstrap::{clear_interrupted, interrupted, restore_into, take_into};
use crate::snapshot::take::{limits_file, Cut};
use crate::snapshot::{choose, Choice, SnapshotStore};

/// How to run a slave.
#[derive(Clone, Debug)]
pub struct SlaveConfig {
    /// The replica directory.
    pub root: PathBuf,
    /// Topic name (for messages and to check the replica follows it).
    pub topic: String,
    /// Applier threads.
    pub threads: usize,
    /// Skip records that cannot be decoded (each skip is logged).
    pub skip_bad_records: bool,
    /// Skip exactly these records (partition, offset), whatever they hold.
    pub skip_records: Vec<(u32, i64)>,
    /// Exit once every partition is applied up to its end.
    pub exit_when_caught_up: bool,
    pub checkpoint_interval: Duration,
    pub max_record_bytes: usize,
    /// Pause reading a partition with this many records queued.
    pub max_queued_per_partition: usize,
    /// Accept a non-empty directory without a checkpoint.
    pub allow_non_empty: bool,
    /// Run without root (ownership, device nodes and set-id bits then
    /// cannot be reproduced and the replica may differ).
    pub unprivileged: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Take the exclusive use of the replica (off only for a master's own
    /// catch-up, which holds it already).
    pub hold_lock: bool,
    /// Stop at the state as of this moment: apply every record with a time
    /// at or before it, nothing after (a point-in-time replica).
    pub until: Option<Until>,
    /// Keep this far behind the master: a record is applied only once its
    /// time is this old.
    pub delay: Option<Duration>,
    /// Tell systemd (`Type=notify`): READY once following, STATUS with
    /// progress, WATCHDOG while the loop runs.
    pub notify: bool,
    /// Take a snapshot this often (and once more when exiting caught up).
    pub snapshot_every: Option<Duration>,
    /// Snapshots kept in the store (older ones are deleted).
    pub snapshot_keep: usize,
    /// Build a new replica from this snapshot even when the topic still
    /// holds every record (without it, a snapshot is used only when the
    /// topic's beginning was deleted).
    pub from_snapshot: Option<Choice>,
    /// Only the paths this lets through (a partial replica; see
    /// `crate::filter`).
    pub filter: crate::filter::Filter,
}

/// Where a point-in-time replica stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The master's time of the records.
    Time(crate::op::Timestamp),
    /// The time of the record at (partition, offset), included.
    Record(u32, i64),
}

impl SlaveConfig {
    pub fn new(root: impl Into<PathBuf>, topic: impl Into<String>) -> Self {
        SlaveConfig {
            root: root.into(),
            topic: topic.into(),
            threads: 1,
            skip_bad_records: false,
            skip_records: Vec::new(),
            exit_when_caught_up: false,
            checkpoint_interval: Duration::from_secs(5),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_queued_per_partition: 10_000,
            allow_non_empty: false,
            unprivileged: false,
            metrics: None,
            hold_lock: true,
            until: None,
            delay: None,
            notify: false,
            snapshot_every: None,
            snapshot_keep: 3,
            from_snapshot: None,
            filter: crate::filter::Filter::default(),
        }
    }
}

/// What a slave run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlaveReport {
    /// Records applied (successfully or with an errno outcome).
    pub applied: u64,
    /// Records whose outcome was an errno (same on every replica).
    pub errno_outcomes: u64,
    /// Records skipped as duplicates.
    pub duplicates: u64,
    /// Records skipped by --skip-bad-records or --skip-record.
    pub skipped_bad: u64,
    /// Records of fenced writers, ignored (as on every replica).
    pub fenced: u64,
    /// Final positions.
    pub positions: Vec<Position>,
    /// Replication lag of the applied records (record time on the master
    /// to applied here): median, 99th percentile, maximum.
    pub lag_p50: Option<Duration>,
    pub lag_p99: Option<Duration>,
    pub lag_max: Option<Duration>,
}

/// Everything about a configuration that can be refused before a broker
/// or the replica directory is touched.
pub fn check_config(config: &SlaveConfig) -> Result<(), SlaveError> {
    check_privileges(config)?;
    if !config.filter.is_empty() && config.snapshot_every.is_some() {
        return Err(SlaveError::Config(
            "--snapshot-every needs the whole tree, but --include/--exclude make a partial replica; \
             take snapshots with a slave that has no filter"
                .into(),
        ));
    }
    Ok(())
}

/// A slave reproduces ownership, device nodes and set-id bits, which needs
/// root; without it the replica could silently differ.
pub fn check_privileges(config: &SlaveConfig) -> Result<(), SlaveError> {
    if !config.unprivileged && !rustix::process::geteuid().is_root() {
        return Err(SlaveError::Config(
            "a slave must run as root to reproduce ownership, device nodes and set-id bits \
             exactly (pass --unprivileged to accept a replica that differs in just those)"
                .into(),
        ));
    }
    Ok(())
}

/// The replica opened for replay: where it resumes, its state.
struct Opened {
    _lock: Option<DataLock>,
    state: StateDir,
    ctx: Arc<ReplicaState>,
    positions: Vec<Position>,
    intents: std::collections::BTreeMap<u32, crate::checkpoint::Intent>,
}

/// Runs a slave until caught up (if configured), stopped via `stop`, or an
/// error. Always leaves a durable checkpoint of what was applied.
pub fn run(
    config: &SlaveConfig,
    source: Box<dyn Source>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, SlaveError> {
    run_with_snapshots(config, source, None, stop)
}

/// `run`, with a snapshot store: a new replica of a topic whose beginning
/// was deleted is built from its newest usable snapshot, and
/// `snapshot_every` takes snapshots into it.
pub fn run_with_snapshots(
    config: &SlaveConfig,
    mut source: Box<dyn Source>,
    snapshots: Option<Box<dyn SnapshotStore>>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, SlaveError> {
    check_config(config)?;
    let partitions = source.partitions();
    if partitions == 0 {
        return Err(SlaveError::Config(format!(
            "topic `{}` has no partitions",
            config.topic
        )));
    }
    let mut snaps = Snapshots::new(config, snapshots);
    let opened = open_replica(config, source.as_mut(), &mut snaps.store, &stop)?;
    check_retention(config, source.as_mut(), &opened.positions, &stop)?;
    tracing::info!(
        topic = %config.topic,
        partitions,
        threads = config.threads,
        "replica {} resumes at offsets {:?}",
        config.root.display(),
        opened.positions.iter().map(|p| p.next_offset).collect::<Vec<_>>()
    );
    if let Some(addr) = config.metrics {
        let m = opened.ctx.clone();
        let bound = crate::metrics::serve(addr, Arc::new(move || m.render_metrics()))
            .map_err(|e| SlaveError::Config(format!("serving metrics on {addr}: {e}")))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let mut follower = Follower {
        reader: Reader::new(
            &config.topic,
            config.max_record_bytes,
            config.skip_bad_records,
            config.skip_records.clone(),
            &opened.positions,
        ),
        next_read: opened.positions.iter().map(|p| p.next_offset).collect(),
        held: (0..partitions).map(|_| None).collect(),
        applied_first: 0,
        until: None,
        beyond: vec![false; partitions as usize],
        delay: config.delay,
        delayed: (0..partitions).map(|_| VecDeque::new()).collect(),
    };
    let until = match config.until {
        Some(Until::Record(p, offset)) => Some(record_time(config, source.as_mut(), p, offset)?),
        Some(Until::Time(t)) => Some(t),
        None => None,
    };
    if let Some(t) = until {
        tracing::info!("replica stops at the journal's state as of {}", t.rfc3339());
    }
    follower.until = until;
    let starts: Vec<(u32, i64)> = opened
        .positions
        .iter()
        .enumerate()
        .map(|(p, pos)| (p as u32, pos.next_offset))
        .collect();
    source.assign(&starts)?;
    let ctx = &opened.ctx;
    let Some(stash) = follower.finish_interrupted(ctx, source.as_mut(), &opened.intents, &stop)?
    else {
        return finish(&opened.state, ctx, &follower, None, &stop);
    };
    let pool = start_pool(config.threads, ctx);
    for m in stash {
        follower.push(&pool, source.as_mut(), m)?;
    }
    if config.notify {
        crate::notify::ready(&format!(
            "following topic `{}` into {}",
            config.topic,
            config.root.display()
        ));
    }
    let mut fatal = follower.follow(config, source.as_mut(), &pool, &opened, &mut snaps, &stop);
    let caught_up = fatal.is_none()
        && config.exit_when_caught_up
        && !stop.load(Ordering::Relaxed)
        && !pool.failed();
    if caught_up && config.snapshot_every.is_some() {
        if let Err(e) = snaps.take(&pool, &opened, config, &stop) {
            fatal = Some(e);
        }
    }
    if config.notify {
        crate::notify::stopping();
    }
    // What precedes a held record is applied (close drains); a stop
    // request or a failed worker stops at once.
    let end = if stop.load(Ordering::Relaxed) || pool.failed() {
        pool.stop()
    } else {
        pool.close()
    };
    follower.applied_first += end.applied;
    let mut error = fatal;
    match end.error {
        Some(WorkError::Fatal(e)) if error.is_none() => error = Some(e),
        _ => {}
    }
    if error.is_none()
        && config.exit_when_caught_up
        && !stop.load(Ordering::Relaxed)
        && end.scheduler.queued() > 0
    {
        error = Some(SlaveError::Config(format!(
            "{} records could not be applied: they depend on records that are not in the topic",
            end.scheduler.queued()
        )));
    }
    finish(&opened.state, ctx, &follower, error, &stop)
}

/// Opens the replica directory, restores its positions and checks that a
/// fresh replica starts empty and that its filesystem honours the limits
/// the topic declared.
fn open_replica(
    config: &SlaveConfig,
    source: &mut dyn Source,
    snapshots: &mut Option<Box<dyn SnapshotStore>>,
    stop: &Arc<AtomicBool>,
) -> Result<Opened, SlaveError> {
    let partitions = source.partitions();
    let root_err = |source| SlaveError::Root {
        path: config.root.clone(),
        source,
    };
    let not_empty = || {
        SlaveError::Config(format!(
            "{} is not empty and holds no kafkafs checkpoint; replaying the journal onto it would not \
             reproduce the master's tree. Use an empty directory (or pass --allow-non-empty).",
            config.root.display()
        ))
    };
    // Refused before anything is created in it.
    let never_used = StateDir::existing(&config.root).is_none();
    if never_used && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(not_empty());
    }
    let state = StateDir::open(&config.root)?;
    let lock = config.hold_lock.then(|| state.lock()).transpose()?;
    bootstrap(config, &state, source, snapshots, stop)?;
    let mut replica = Replica::open(&config.root).map_err(root_err)?;
    replica.set_unprivileged(config.unprivileged);
    let Restored {
        ledger,
        positions,
        intents,
        had_checkpoint,
    } = restore(&state, &config.topic, partitions)?;
    let fresh = !had_checkpoint && positions.iter().all(|p| *p == Position::default());
    if fresh && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(not_empty());
    }
    adopt_filter(config, &state, fresh)?;
    if fresh {
        init_fresh(&config.root)?;
    } else if let Some(why) = replica.unmet(&replica.limits()).map_err(root_err)? {
        return Err(SlaveError::Config(format!(
            "{}: this replica's filesystem cannot honour the limits of topic `{}`: it must hold {why}",
            config.root.display(),
            config.topic
        )));
    }
    let ctx = Arc::new(
        ReplicaState::new(replica, ledger, &config.topic, &positions, stop.clone())
            .with_filter(config.filter.clone(), state.path().join(FILTER_GAPS)),
    );
    Ok(Opened {
        _lock: lock,
        state,
        ctx,
        positions,
        intents,
    })
}

/// The filter a partial replica was built with, in its state folder.
const FILTER_FILE: &str = "filter";
/// Entries that came into a partial replica's view without their content.
pub const FILTER_GAPS: &str = "filter-gaps";

/// A replica keeps the filter it was built with: a new replica notes it,
/// a later start must give the same one (else the replica would hold what
/// the new filter leaves out, or lack what it lets in).
fn adopt_filter(config: &SlaveConfig, state: &StateDir, fresh: bool) -> Result<(), SlaveError> {
    let path = state.path().join(FILTER_FILE);
    let io = |e| SlaveError::Root {
        path: path.clone(),
        source: e,
    };
    let wanted = config.filter.spec();
    let noted = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let describe = |spec: &str| {
        if spec.is_empty() {
            "no filter (the whole tree)".to_string()
        } else {
            spec.trim_end().replace('\n', ", ")
        }
    };
    match noted {
        Some(noted) if noted == wanted => Ok(()),
        None if fresh => {
            if !wanted.is_empty() {
                std::fs::write(&path, &wanted).map_err(io)?;
            }
            Ok(())
        }
        None if wanted.is_empty() => Ok(()),
        noted => Err(SlaveError::Config(format!(
            "{} was built with {}, but this start gives {}: a filter holds from a replica's \
             first start. Start it with the same --include/--exclude, or build a new replica in an \
             empty directory",
            config.root.display(),
            describe(noted.as_deref().unwrap_or_default()),
            describe(&wanted)
        ))),
    }
}

/// A new replica (empty, no checkpoint) is built from a snapshot when the
/// topic no longer starts at offset 0, or when asked (--from-snapshot);
/// an interrupted restore is cleared and started again.
fn bootstrap(
    config: &SlaveConfig,
    state: &StateDir,
    source: &mut dyn Source,
    snapshots: &mut Option<Box<dyn SnapshotStore>>,
    stop: &AtomicBool,
) -> Result<(), SlaveError> {
    let root = &config.root;
    if interrupted(root) {
        tracing::warn!(
            "{}: a restore was interrupted; starting it again",
            root.display()
        );
        clear_interrupted(root)?;
    } else if state.load_checkpoint()?.is_some() || !root_is_empty(root)? {
        return Ok(());
    }
    let mut lows = Vec::new();
    let mut highs = Vec::new();
    for p in 0..source.partitions() {
        let (low, high) = retry_transient(stop, "reading the topic's watermarks", || {
            source.watermarks(p)
        })?;
        lows.push(low);
        highs.push(high);
    }
    let deleted = lows.iter().position(|&l| l > 0);
    let choice = match (&config.from_snapshot, deleted) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Choice::Newest,
        (None, None) => return Ok(()),
    };
    let why = match deleted {
        Some(p) => format!(
            "topic `{}` no longer starts at offset 0 (partition {p} starts at {}): a new replica is built from a snapshot",
            config.topic, lows[p]
        ),
        None => "--from-snapshot".into(),
    };
    if !config.filter.is_empty() {
        return Err(SlaveError::Config(format!(
            "{why}, but a snapshot holds the whole tree and --include/--exclude make a partial \
             replica: build it without a filter, or from a topic that still holds every record"
        )));
    }
    let Some(store) = snapshots.as_mut() else {
        return Err(SlaveError::Config(format!(
            "{why}, but no snapshot store is configured"
        )));
    };
    let snap = store
        .list()
        .and_then(|all| choose(&all, &config.topic, &lows, &highs, &choice))
        .map_err(|e| {
            SlaveError::Config(format!(
                "{why}, but {} has none to use: {e}. Snapshots are taken by a slave run with \
                 --snapshot-every (see README, \"Snapshots\")",
                store.describe()
            ))
        })?;
    verify_lineage(config, source, &snap, &lows).map_err(|e| {
        SlaveError::Config(format!(
            "{why}, but snapshot {} is not of this topic's history: {e}",
            snap.id_hex()
        ))
    })?;
    tracing::info!("{why}: restoring snapshot {}", snap.id_hex());
    restore_into(
        root,
        state,
        store.as_mut(),
        &snap,
        config.unprivileged,
        stop,
    )?;
    Ok(())
}

/// Checks that a snapshot's cut lies in this topic's history (not in that
/// of an earlier topic of the same name): the record before each of its
/// positions, where still in the topic, is the one its position says was
/// applied last (same partition sequence number).
fn verify_lineage(
    config: &SlaveConfig,
    source: &mut dyn Source,
    snap: &crate::snapshot::SnapshotInfo,
    lows: &[i64],
) -> Result<(), SlaveError> {
    for (p, pos) in snap.positions.iter().enumerate() {
        let p32 = p as u32;
        if pos.next_offset <= lows[p] || pos.last_pseq == 0 {
            continue;
        }
        let at = pos.next_offset - 1;
        let m = read_one(config, source, p32, at)?;
        let Ok(rec) = crate::record::Record::decode_from(&m, config.max_record_bytes, p32) else {
            continue;
        };
        let void = pos.fence.is_some_and(|f| f.voids(&rec.writer));
        if rec.seq != 0 && !void && rec.partition_seq != pos.last_pseq {
            return Err(SlaveError::Config(format!(
                "partition {p} offset {at} holds partition sequence {}, the snapshot applied {} there",
                rec.partition_seq, pos.last_pseq
            )));
        }
    }
    Ok(())
}

/// The payload of the message at (partition, offset).
fn read_one(
    config: &SlaveConfig,
    source: &mut dyn Source,
    p: u32,
    offset: i64,
) -> Result<Vec<u8>, SlaveError> {
    source.assign(&[(p, offset)])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(m) = source.poll(Duration::from_millis(200))? {
            if m.partition == p && m.offset == offset {
                return Ok(m.payload);
            }
        }
    }
    Err(SlaveError::Config(format!(
        "could not read {} within 60 s",
        RecordPos {
            topic: config.topic.clone(),
            partition: p,
            offset
        }
    )))
}

/// A position whose records were deleted by retention cannot be resumed.
fn check_retention(
    config: &SlaveConfig,
    source: &mut dyn Source,
    positions: &[Position],
    stop: &AtomicBool,
) -> Result<(), SlaveError> {
    for (p, pos) in positions.iter().enumerate() {
        let (low, _high) = retry_transient(stop, "reading the topic's watermarks", || {
            source.watermarks(p as u32)
        })?;
        if pos.next_offset < low {
            return Err(SlaveError::OffsetDeleted {
                pos: RecordPos {
                    topic: config.topic.clone(),
                    partition: p as u32,
                    offset: pos.next_offset,
                },
                low,
            });
        }
    }
    Ok(())
}

/// Runs `f` until it succeeds, a stop is requested, or it fails for a
/// reason that waiting does not cure; waits are logged every 30 s.
pub fn retry_transient<T>(
    stop: &AtomicBool,
    what: &str,
    mut f: impl FnMut() -> Result<T, JournalError>,
) -> Result<T, SlaveError> {
    let mut last_log: Option<Instant> = None;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && !stop.load(Ordering::Relaxed) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!("{what}: {e}; waiting for the broker");
                    last_log = Some(Instant::now());
                }
                if sleep_unless_stopped(stop, Duration::from_secs(1)) {
                    return Err(SlaveError::Journal(e));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Does waiting cure this journal error (broker away, topic not created
/// yet, a request that timed out)?
pub fn is_transient(e: &JournalError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        // A property librdkafka refuses (a CA file it cannot load...).
        JournalError::Kafka(
            rdkafka::error::KafkaError::ClientCreation(_)
            | rdkafka::error::KafkaError::ClientConfig(..),
        ) => false,
        JournalError::Kafka(k) => !matches!(
            k.rdkafka_error_code(),
            Some(C::AutoOffsetReset | C::OffsetOutOfRange | C::InvalidConfig | C::UnknownPartition)
        ),
        JournalError::NoSuchTopic(_) | JournalError::Timeout(_) => true,
        _ => false,
    }
}

fn start_pool(threads: usize, ctx: &Arc<ReplicaState>) -> Pool<Entry, WorkError> {
    let applied_seqs: Vec<u64> = (0..ctx.partitions())
        .map(|p| ctx.position(p).last_seq)
        .collect();
    let work_ctx = ctx.clone();
    let work: Box<WorkFn<Entry, WorkError>> =
        Box::new(move |p, item: &mut Item<Entry>| apply_entry(&work_ctx, p, &mut item.payload));
    Pool::start(threads, Scheduler::new(&applied_seqs), work)
}

/// The reading side of a slave: decodes messages and feeds the pool.
struct Follower {
    reader: Reader,
    next_read: Vec<i64>,
    /// Per partition: why reading it stopped (a bad record, a gap): what
    /// depends on it waits, everything else goes on.
    held: Vec<Option<SlaveError>>,
    /// Records applied outside the pool (interrupted ones), then in total.
    applied_first: u64,
    /// Point in time to stop at, and per partition whether its next
    /// record is beyond it (reading it stopped there).
    until: Option<Timestamp>,
    beyond: Vec<bool>,
    /// How far behind the master to stay, and per partition the records
    /// read but not old enough yet (reading it is paused meanwhile).
    delay: Option<Duration>,
    delayed: Vec<VecDeque<Entry>>,
}

impl Follower {
    /// Finishes the records interrupted by the last stop, alone: they were
    /// in flight together (so they do not conflict), and nothing else may
    /// run before them. Returns the other messages read meanwhile, or
    /// `None` when a stop was requested.
    fn finish_interrupted(
        &mut self,
        ctx: &ReplicaState,
        source: &mut dyn Source,
        intents: &std::collections::BTreeMap<u32, crate::checkpoint::Intent>,
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Message>>, SlaveError> {
        let mut stash = Vec::new();
        let mut pending = intents.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if Instant::now() > deadline {
                return Err(SlaveError::Config(format!(
                    "could not read back the interrupted records of partitions {:?} within 120 s",
                    pending.keys().collect::<Vec<_>>()
                )));
            }
            let Some(m) = source.poll(Duration::from_millis(200))? else {
                continue;
            };
            let p = m.partition;
            self.next_read[p as usize] = m.offset + 1;
            let Some(intent) = pending.remove(&p) else {
                stash.push(m);
                continue;
            };
            if intent.offset != m.offset {
                return Err(SlaveError::Config(format!(
                    "{}: expected the interrupted record at offset {}, found offset {}",
                    ctx.pos(p, m.offset),
                    intent.offset,
                    m.offset
                )));
            }
            let mut entry = self.reader.entry(m)?;
            entry.resume = Some(intent.fingerprint);
            tracing::info!(
                "{}: finishing the record interrupted by the last stop",
                ctx.pos(p, entry.offset)
            );
            match apply_entry(ctx, p, &mut entry) {
                Ok(()) => self.applied_first += 1,
                Err(WorkError::Stopped) => return Ok(None),
                Err(WorkError::Fatal(e)) => return Err(e),
            }
        }
        Ok(Some(stash))
    }

    /// Decodes one message and queues it; a record that cannot be applied
    /// holds its partition (reading it stops) instead.
    fn push(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        m: Message,
    ) -> Result<(), SlaveError> {
        let p = m.partition;
        if self.held[p as usize].is_some() {
            return Ok(());
        }
        if self.beyond[p as usize] {
            return Ok(());
        }
        self.next_read[p as usize] = m.offset + 1;
        match self.reader.entry(m) {
            Ok(e) => self.schedule(pool, source, p, e)?,
            Err(e) => {
                tracing::error!("{e}");
                tracing::info!(
                    "partition {p} is held; records of other partitions that do not depend on it \
                     are still applied"
                );
                source.pause(p)?;
                self.held[p as usize] = Some(e);
            }
        }
        Ok(())
    }

    /// Queues an entry now, keeps it back (--delay), or stops the
    /// partition before it (--until).
    fn schedule(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        p: u32,
        e: Entry,
    ) -> Result<(), SlaveError> {
        let time = e.record().map(|r| r.time);
        if let (Some(until), Some(t)) = (self.until, time) {
            if t > until {
                source.pause(p)?;
                self.beyond[p as usize] = true;
                return Ok(());
            }
        }
        let young = match (self.delay, time) {
            (Some(d), Some(t)) => t > delay_horizon(d),
            _ => false,
        };
        let queue = &mut self.delayed[p as usize];
        if young || !queue.is_empty() {
            if queue.is_empty() {
                source.pause(p)?;
            }
            queue.push_back(e);
            return Ok(());
        }
        pool.push(p, e.into_item());
        Ok(())
    }

    /// Queues the kept-back records that are now old enough.
    fn release_delayed(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
    ) -> Result<(), SlaveError> {
        let Some(d) = self.delay else {
            return Ok(());
        };
        let horizon = delay_horizon(d);
        for p in 0..self.delayed.len() {
            let queue = &mut self.delayed[p];
            if queue.is_empty() {
                continue;
            }
            while queue
                .front()
                .is_some_and(|e| e.record().is_none_or(|r| r.time <= horizon))
            {
                if let Some(e) = queue.pop_front() {
                    pool.push(p as u32, e.into_item());
                }
            }
            if queue.is_empty() && self.held[p].is_none() && !self.beyond[p] {
                source.resume(p as u32)?;
            }
        }
        Ok(())
    }

    /// Partitions not being read for a reason of their own (held, beyond
    /// --until, keeping records back).
    fn blocked(&self, p: usize) -> bool {
        self.held[p].is_some() || self.beyond[p] || !self.delayed[p].is_empty()
    }

    fn held_mask(&self) -> Vec<bool> {
        (0..self.held.len())
            .map(|p| self.held[p].is_some() || self.beyond[p])
            .collect()
    }

    /// Reads and applies until caught up (if asked), stopped, a worker
    /// fails, or every partition that is not held has been applied as far
    /// as it can be while another is held. Returns what stopped it.
    fn follow(
        &mut self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        opened: &Opened,
        snaps: &mut Snapshots,
        stop: &AtomicBool,
    ) -> Option<SlaveError> {
        let partitions = source.partitions();
        let mut paused = vec![false; partitions as usize];
        let mut checkpoints = Checkpoints::new(config.checkpoint_interval);
        let mut progress = Progress::new(config.notify);
        let watchdog = crate::notify::Watchdog::from_env();
        let mut poll_errors = 0u64;
        let mut last_poll_log: Option<Instant> = None;
        loop {
            if stop.load(Ordering::Relaxed) || pool.failed() {
                return None;
            }
            if let Err(e) = self.backpressure(config, source, pool, &mut paused) {
                return Some(e);
            }
            if let Err(e) = self.release_delayed(pool, source) {
                return Some(e);
            }
            match source.poll(Duration::from_millis(20)) {
                Ok(Some(m)) if m.partition < partitions => {
                    if let Err(e) = self.push(pool, source, m) {
                        return Some(e);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => match self.done(config, source, pool) {
                    Ok(true) => return self.first_held(),
                    Ok(false) => {}
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Some(e.into()),
                },
                Err(e) if is_transient(&e) => {
                    poll_errors += 1;
                    if last_poll_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                        tracing::warn!(
                            "reading the topic: {e} ({poll_errors} errors so far); following on"
                        );
                        last_poll_log = Some(Instant::now());
                    }
                    sleep_unless_stopped(stop, Duration::from_millis(200));
                }
                Err(e) => return Some(e.into()),
            }
            checkpoints.tick(&opened.state, &opened.ctx);
            if snaps.due() {
                // A failed snapshot is logged and tried again next time.
                if let Err(e) = snaps.take(pool, opened, config, stop) {
                    tracing::warn!(
                        "taking a snapshot: {e}; trying again in {:?}",
                        snaps.every()
                    );
                }
            }
            progress.tick(&opened.ctx, pool, source, self.applied_first);
            progress.caught_up(&opened.ctx, pool, source, &self.next_read);
            if config.notify {
                watchdog.tick();
            }
        }
    }

    /// Pauses a partition with too many records queued, resumes it once
    /// drained: a full partition never blocks others.
    fn backpressure(
        &self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        paused: &mut [bool],
    ) -> Result<(), SlaveError> {
        let high_mark = config.max_queued_per_partition.max(1);
        let queued: Vec<usize> =
            pool.inspect(|s| (0..paused.len() as u32).map(|p| s.queued_in(p)).collect());
        for p in 0..paused.len() {
            if self.blocked(p) {
                continue;
            }
            if !paused[p] && queued[p] >= high_mark {
                source.pause(p as u32)?;
                paused[p] = true;
            } else if paused[p] && queued[p] <= high_mark / 2 {
                source.resume(p as u32)?;
                paused[p] = false;
            }
        }
        Ok(())
    }

    /// Is there nothing more to do: everything read (but held partitions),
    /// nothing being applied, nothing ready? Only asked when caught up is
    /// an exit (--exit-when-caught-up) or a partition is held.
    fn done(
        &self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
    ) -> Result<bool, JournalError> {
        let held = self.held_mask();
        let until_passed = self.until.is_some_and(|t| t <= Timestamp::now());
        if !config.exit_when_caught_up && !held.contains(&true) && !until_passed {
            return Ok(false);
        }
        if self.delayed.iter().any(|q| !q.is_empty()) {
            return Ok(false);
        }
        if self.until.is_some() && !until_passed {
            // The moment is still to come: follow on until it has passed.
            return Ok(false);
        }
        // Records still queued then wait for records that are not in the
        // topic (or behind a held one); they are reported by the caller.
        Ok(pool.inspect(|s| s.in_flight() == 0 && !s.has_ready())
            && source.caught_up(&self.next_read, &held)?)
    }

    /// The error of the first held partition, if any.
    fn first_held(&mut self) -> Option<SlaveError> {
        self.held.iter_mut().find_map(Option::take)
    }
}

/// Records with a time after this are younger than `delay`.
fn delay_horizon(delay: Duration) -> Timestamp {
    let nanos = Timestamp::now().as_nanos() - delay.as_nanos() as i128;
    Timestamp::new(
        nanos.div_euclid(1_000_000_000) as i64,
        nanos.rem_euclid(1_000_000_000) as u32,
    )
}

/// The master's time of the record at (partition, offset).
fn record_time(
    config: &SlaveConfig,
    source: &mut dyn Source,
    p: u32,
    offset: i64,
) -> Result<Timestamp, SlaveError> {
    let pos = RecordPos {
        topic: config.topic.clone(),
        partition: p,
        offset,
    };
    let (low, high) = source.watermarks(p)?;
    if offset < low || offset >= high {
        return Err(SlaveError::Config(format!(
            "--until {p}:{offset}: {pos} is not in the topic (partition {p} holds offsets {low}..{high})"
        )));
    }
    let payload = read_one(config, source, p, offset)?;
    crate::record::Record::decode_from(&payload, config.max_record_bytes, p)
        .map(|r| r.time)
        .map_err(|source| SlaveError::BadRecord { pos, source })
}

/// The snapshot store, and periodic snapshots of the replica into it.
struct Snapshots {
    store: Option<Box<dyn SnapshotStore>>,
    every: Option<Duration>,
    keep: usize,
    last: Instant,
    /// Where the last snapshot was taken (an unchanged replica is not
    /// snapshotted again).
    last_starts: Option<Vec<i64>>,
}

impl Snapshots {
    fn new(config: &SlaveConfig, store: Option<Box<dyn SnapshotStore>>) -> Self {
        Snapshots {
            store,
            every: config.snapshot_every,
            keep: config.snapshot_keep,
            last: Instant::now(),
            last_starts: None,
        }
    }

    fn every(&self) -> Duration {
        self.every.unwrap_or_default()
    }

    fn due(&self) -> bool {
        self.every.is_some_and(|d| self.last.elapsed() >= d)
    }

    /// Pauses the appliers at a cut, writes the tree and the cut's
    /// positions into the store, resumes, and expires old snapshots.
    fn take(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        opened: &Opened,
        config: &SlaveConfig,
        stop: &AtomicBool,
    ) -> Result<(), SlaveError> {
        self.last = Instant::now();
        let Some(store) = self.store.as_mut() else {
            return Err(SlaveError::Config(
                "--snapshot-every: no snapshot store is configured".into(),
            ));
        };
        let started = Instant::now();
        pool.pause();
        let starts: Vec<i64> = opened
            .ctx
            .positions()
            .iter()
            .map(|p| p.next_offset)
            .collect();
        if self.last_starts.as_ref() == Some(&starts) {
            pool.resume();
            tracing::debug!("no snapshot: nothing applied since the last one");
            return Ok(());
        }
        let taken = limits_file(&config.root).and_then(|limits| {
            let cut = Cut {
                topic: config.topic.clone(),
                positions: opened.ctx.positions(),
                limits,
            };
            take_into(&config.root, &cut, store.as_mut(), stop)
        });
        pool.resume();
        let snap = taken?;
        self.last_starts = Some(starts);
        tracing::info!(
            "snapshot {} taken into {}: {} entries, {:.1} MiB, positions {:?}, appliers paused {:.1} s",
            snap.id_hex(),
            store.describe(),
            snap.entries,
            snap.bytes as f64 / 1048576.0,
            snap.starts(),
            started.elapsed().as_secs_f64()
        );
        match store.expire(self.keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} older snapshot(s) expired (keeping {})", self.keep),
            Err(e) => tracing::warn!("expiring old snapshots: {e}"),
        }
        Ok(())
    }
}

/// Periodic durable checkpoints; a failed one (a full disk) is logged and
/// retried, the previous one staying valid.
struct Checkpoints {
    interval: Duration,
    last: Instant,
    failing_since: Option<Instant>,
}

impl Checkpoints {
    fn new(interval: Duration) -> Self {
        Checkpoints {
            interval,
            last: Instant::now(),
            failing_since: None,
        }
    }

    fn tick(&mut self, state: &StateDir, ctx: &ReplicaState) {
        if self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        match durable_checkpoint(state, ctx) {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        "checkpoint written again (failing for {:.0?})",
                        since.elapsed()
                    );
                }
            }
            Err(e) => {
                if self.failing_since.is_none() {
                    tracing::error!(
                        "writing the checkpoint failed: {e}; the previous one stays valid, retrying \
                         every {:?}",
                        self.interval
                    );
                    self.failing_since = Some(Instant::now());
                }
            }
        }
    }
}

/// The periodic progress line (also systemd's STATUS when notifying).
struct Progress {
    last: Instant,
    last_applied: u64,
    /// Lag samples at the last line: its quantiles cover the interval.
    last_lag: crate::metrics::Counts,
    /// The catch-up's bar, on a terminal, until caught up.
    bar: Option<crate::progress::Progress>,
    /// When the bar last read the topic's end offsets.
    ends_read: Option<Instant>,
    notify: bool,
    /// The first time everything was read and applied (logged once).
    caught_up_once: bool,
}

impl Drop for Progress {
    /// A bar still drawn (the slave stops before catching up) goes: the
    /// stop's own line says where the replica stands.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.clear();
        }
    }
}

impl Progress {
    fn new(notify: bool) -> Self {
        Progress {
            last: Instant::now(),
            last_applied: 0,
            last_lag: crate::metrics::Counts::default(),
            bar: std::io::IsTerminal::is_terminal(&std::io::stderr())
                .then(|| crate::progress::Progress::new("catch-up", 0, 0).counting("records")),
            ends_read: None,
            notify,
            caught_up_once: false,
        }
    }

    /// Logs, once, the moment the replica first caught up with the topic.
    fn caught_up(
        &mut self,
        ctx: &ReplicaState,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        next_read: &[i64],
    ) {
        if self.caught_up_once || !pool.inspect(|s| s.in_flight() == 0 && !s.has_ready()) {
            return;
        }
        let none_held = vec![false; next_read.len()];
        if source.caught_up(next_read, &none_held).unwrap_or(false) {
            self.caught_up_once = true;
            if let Some(bar) = self.bar.take() {
                bar.finish();
            }
            tracing::info!(
                "caught up with topic `{}`: {} records applied, next offsets {:?}",
                ctx.topic,
                ctx.applied.load(Ordering::Relaxed),
                next_read
            );
            for (p, &end) in next_read.iter().enumerate() {
                ctx.set_end(p as u32, end);
            }
            if self.notify {
                crate::notify::status(&format!("caught up with topic `{}`", ctx.topic));
            }
        }
    }

    fn tick(
        &mut self,
        ctx: &ReplicaState,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        first: u64,
    ) {
        if let Some(bar) = &self.bar {
            if self
                .ends_read
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
            {
                // The topic's end, for the bar's total (else read every 10 s).
                for p in 0..ctx.partitions() {
                    if let Ok((_, end)) = source.watermarks(p) {
                        ctx.set_end(p, end);
                    }
                }
                self.ends_read = Some(Instant::now());
            }
            let applied = first + pool.applied();
            let behind: i64 = ctx.behind().iter().flatten().sum();
            bar.set_total(applied + behind.max(0) as u64, 0);
            bar.set(applied, 0);
            bar.tick();
        }
        if self.last.elapsed() < Duration::from_secs(10) {
            return;
        }
        for p in 0..ctx.partitions() {
            if let Ok((_, end)) = source.watermarks(p) {
                ctx.set_end(p, end);
            }
        }
        let applied = pool.applied();
        let secs = self.last.elapsed().as_secs_f64();
        let rate = (applied - self.last_applied) as f64 / secs;
        let behind: i64 = ctx.behind().iter().flatten().sum();
        let eta = if behind == 0 {
            "caught up".to_string()
        } else if rate >= 1.0 {
            format!("{behind} records behind, ETA {:.0} s", behind as f64 / rate)
        } else {
            format!("{behind} records behind")
        };
        let lag = ctx.lag.counts();
        let recent = lag.since(&self.last_lag);
        self.last_lag = lag;
        let line = format!(
            "applied {} records ({rate:.0}/s); {eta}; lag p50 {:?} p99 {:?} (last {:.0} s); next offsets {:?}",
            first + applied,
            recent.quantile(0.5).unwrap_or_default(),
            recent.quantile(0.99).unwrap_or_default(),
            secs,
            (0..ctx.partitions())
                .map(|p| ctx.position(p).next_offset)
                .collect::<Vec<_>>()
        );
        tracing::info!("{line}");
        if self.notify {
            crate::notify::status(&line);
        }
        self.last_applied = applied;
        self.last = Instant::now();
    }
}

/// Writes the final checkpoint (retried while the disk is full, unless a
/// stop was requested: the ledger then still holds every position) and
/// reports.
fn finish(
    state: &StateDir,
    ctx: &ReplicaState,
    follower: &Follower,
    error: Option<SlaveError>,
    stop: &AtomicBool,
) -> Result<SlaveReport, SlaveError> {
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = durable_checkpoint(state, ctx) {
        if error.is_some() || stop.load(Ordering::Relaxed) {
            tracing::error!(
                "writing the final checkpoint failed: {e}; the ledger keeps the positions"
            );
            break;
        }
        tracing::error!("writing the final checkpoint failed: {e}; retrying in {backoff:?}");
        if sleep_unless_stopped(stop, backoff) {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    if let Some(e) = error {
        return Err(e);
    }
    let reader = &follower.reader;
    Ok(SlaveReport {
        applied: follower.applied_first,
        errno_outcomes: ctx.errno_outcomes.load(Ordering::Relaxed),
        duplicates: reader.duplicates,
        skipped_bad: reader.skipped_bad,
        fenced: reader.fenced,
        positions: ctx.positions(),
        lag_p50: ctx.lag.quantile(0.5),
        lag_p99: ctx.lag.quantile(0.99),
        lag_max: (ctx.lag.count() > 0).then(|| ctx.lag.max()),
    })
}

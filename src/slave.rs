//! The slave: follows a topic and applies it to a local directory.
//!
//! Start-up restores each partition's position (ledger if this boot wrote
//! it, else the durable checkpoint), first finishes any record whose
//! application was interrupted (its intent), then reads all partitions and
//! feeds the scheduler, whose workers apply records and advance the ledger.
//! The durable checkpoint is refreshed every `checkpoint_interval` and on
//! exit, always after `syncfs` of the replica.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::applier::{Pool, WorkFn};
use crate::apply::{Fingerprint, IntentLog, Replica};
use crate::checkpoint::{Checkpoint, Intent, Ledger, Position, Slot, StateDir};
use crate::error::{CheckpointError, DecodeError, RecordPos, ReplicaFailure, SlaveError};
use crate::journal::{Message, Source};
use crate::op::STATE_DIR;
use crate::record::{Record, DEFAULT_MAX_RECORD_BYTES};
use crate::scheduler::{Item, Scheduler};

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
    /// Final positions.
    pub positions: Vec<Position>,
}

/// A queued record.
struct Entry {
    offset: i64,
    pseq: u64,
    kind: EntryKind,
    resume: Option<Fingerprint>,
}

enum EntryKind {
    Apply(Box<Record>),
    /// Advance past this offset without applying anything.
    Skip,
}

enum WorkError {
    Stopped,
    Fatal(SlaveError),
}

struct Ctx {
    replica: Replica,
    ledger: Ledger,
    topic: String,
    positions: Vec<std::sync::Mutex<Position>>,
    stop: Arc<AtomicBool>,
    errno_outcomes: AtomicU64,
}

impl Ctx {
    fn position(&self, p: u32) -> Position {
        match self.positions[p as usize].lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    fn set_position(&self, p: u32, pos: Position) {
        match self.positions[p as usize].lock() {
            Ok(mut g) => *g = pos,
            Err(poisoned) => *poisoned.into_inner() = pos,
        }
    }

    fn pos(&self, partition: u32, offset: i64) -> RecordPos {
        RecordPos {
            topic: self.topic.clone(),
            partition,
            offset,
        }
    }
}

/// Persists a record's intent in its partition's ledger slot.
struct LedgerIntent<'a> {
    ledger: &'a Ledger,
    partition: u32,
    position: Position,
    offset: i64,
    last: Option<Fingerprint>,
}

impl IntentLog for LedgerIntent<'_> {
    fn record(&mut self, fp: &Fingerprint) -> Result<(), ReplicaFailure> {
        let slot = Slot {
            position: self.position,
            intent: Some(Intent {
                offset: self.offset,
                fingerprint: *fp,
            }),
        };
        self.ledger
            .write(self.partition, &slot)
            .map_err(|e| ReplicaFailure {
                op: "ledger",
                path: e.to_string(),
                errno: crate::error::Errno::IO,
            })?;
        self.last = Some(*fp);
        Ok(())
    }
}

/// Applies one entry, retrying replica failures until they clear or a stop
/// is requested, then advances the partition's ledger slot.
fn apply_entry(ctx: &Ctx, p: u32, entry: &mut Entry) -> Result<(), WorkError> {
    let before = ctx.position(p);
    let mut after = Position {
        next_offset: entry.offset + 1,
        ..before
    };
    if let EntryKind::Apply(rec) = &entry.kind {
        let mut log = LedgerIntent {
            ledger: &ctx.ledger,
            partition: p,
            position: before,
            offset: entry.offset,
            last: None,
        };
        let mut resume = entry.resume;
        let mut backoff = Duration::from_millis(50);
        loop {
            match ctx
                .replica
                .apply(&rec.op, rec.time, resume.as_ref(), &mut log)
            {
                Ok(Ok(())) => break,
                Ok(Err(errno)) => {
                    tracing::debug!(
                        "{}: {} {} -> {errno} (an outcome, same on every replica)",
                        ctx.pos(p, entry.offset),
                        rec.op.name(),
                        rec.op.target()
                    );
                    ctx.errno_outcomes.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(failure) => {
                    tracing::error!(
                        "{}: replica failure: {failure}; position held, retrying in {backoff:?}",
                        ctx.pos(p, entry.offset)
                    );
                    if log.last.is_some() {
                        resume = log.last;
                    }
                    if sleep_unless_stopped(&ctx.stop, backoff) {
                        // Keep what we learned for the next start.
                        entry.resume = resume;
                        return Err(WorkError::Stopped);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        after.last_seq = rec.seq;
        after.last_pseq = rec.partition_seq;
    } else {
        after.last_pseq = after.last_pseq.max(entry.pseq);
    }
    ctx.ledger
        .write(
            p,
            &Slot {
                position: after,
                intent: None,
            },
        )
        .map_err(|e| WorkError::Fatal(e.into()))?;
    ctx.set_position(p, after);
    Ok(())
}

/// Sleeps `d`, waking early when `stop` is set; returns true if stopped.
fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10).min(d));
    }
    stop.load(Ordering::Relaxed)
}

/// Decodes and checks a message; returns the entry to queue, or an error
/// that stops the slave.
struct Reader {
    topic: String,
    max_record_bytes: usize,
    skip_bad: bool,
    skip_records: Vec<(u32, i64)>,
    partitions: u32,
    /// Per partition: last (pseq, seq) read.
    last_read: Vec<(u64, u64)>,
    /// Per partition: records skipped since the last good one (they may
    /// explain a jump in the partition sequence).
    skipped_since: Vec<u64>,
    duplicates: u64,
    skipped_bad: u64,
}

impl Reader {
    fn entry(&mut self, m: Message) -> Result<Entry, SlaveError> {
        let p = m.partition;
        let pos = RecordPos {
            topic: self.topic.clone(),
            partition: p,
            offset: m.offset,
        };
        let rec = Record::decode_from(&m.payload, self.max_record_bytes, p).and_then(|r| {
            match r.deps.iter().find(|d| d.partition >= self.partitions) {
                Some(d) => Err(DecodeError::BadValue {
                    field: "deps.partition",
                    value: d.partition as u64,
                }),
                None => Ok(r),
            }
        });
        let skip = |why: String, this: &mut Reader| {
            tracing::warn!("{pos}: SKIPPING record ({why})");
            this.skipped_bad += 1;
            this.skipped_since[p as usize] += 1;
            Ok(Entry {
                offset: m.offset,
                pseq: 0,
                kind: EntryKind::Skip,
                resume: None,
            })
        };
        if self.skip_records.contains(&(p, m.offset)) {
            let what = match &rec {
                Ok(r) => format!("{} {}", r.op.name(), r.op.target()),
                Err(e) => e.to_string(),
            };
            return skip(format!("--skip-record {p}:{}: {what}", m.offset), self);
        }
        let rec = match rec {
            Ok(r) => r,
            Err(source) if self.skip_bad => {
                return skip(format!("--skip-bad-records: {source}"), self);
            }
            Err(source) => return Err(SlaveError::BadRecord { pos, source }),
        };
        let (last_pseq, last_seq) = self.last_read[p as usize];
        if rec.partition_seq <= last_pseq {
            tracing::info!(
                "{pos}: duplicate record (partition sequence {} already applied), skipped",
                rec.partition_seq
            );
            self.duplicates += 1;
            return Ok(Entry {
                offset: m.offset,
                pseq: 0,
                kind: EntryKind::Skip,
                resume: None,
            });
        }
        if rec.partition_seq > last_pseq + 1 + self.skipped_since[p as usize] {
            return Err(SlaveError::Gap {
                pos,
                last: last_pseq,
                found: rec.partition_seq,
            });
        }
        if rec.seq <= last_seq {
            return Err(SlaveError::BadRecord {
                pos,
                source: DecodeError::BadValue {
                    field: "seq (not rising within the partition)",
                    value: rec.seq,
                },
            });
        }
        self.last_read[p as usize] = (rec.partition_seq, rec.seq);
        self.skipped_since[p as usize] = 0;
        Ok(Entry {
            offset: m.offset,
            pseq: rec.partition_seq,
            kind: EntryKind::Apply(Box::new(rec)),
            resume: None,
        })
    }
}

fn item(entry: Entry) -> Item<Entry> {
    match &entry.kind {
        EntryKind::Apply(r) => Item {
            seq: r.seq,
            deps: r.deps.clone(),
            payload: entry,
        },
        EntryKind::Skip => Item {
            seq: 0,
            deps: Vec::new(),
            payload: entry,
        },
    }
}

fn root_is_empty(root: &std::path::Path) -> Result<bool, SlaveError> {
    let rd = std::fs::read_dir(root).map_err(|source| SlaveError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| SlaveError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if e.file_name().as_encoded_bytes() != STATE_DIR {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a replica resumes.
struct Restored {
    ledger: Ledger,
    positions: Vec<Position>,
    /// Records interrupted mid-application, by partition.
    intents: BTreeMap<u32, Intent>,
    had_checkpoint: bool,
}

/// Restores positions: the ledger when this boot wrote it, else the durable
/// checkpoint.
fn restore(state: &StateDir, topic: &str, partitions: u32) -> Result<Restored, SlaveError> {
    let cp = state.load_checkpoint()?;
    if let Some(cp) = &cp {
        if cp.topic != topic {
            return Err(CheckpointError::WrongTopic {
                recorded: cp.topic.clone(),
                requested: topic.to_string(),
            }
            .into());
        }
        if cp.positions.len() as u32 != partitions {
            return Err(CheckpointError::PartitionCount {
                recorded: cp.positions.len() as u32,
                actual: partitions,
            }
            .into());
        }
    }
    let (ledger, slots) = state.open_ledger(partitions)?;
    let mut positions = Vec::with_capacity(partitions as usize);
    let mut intents = BTreeMap::new();
    for p in 0..partitions {
        let durable = cp
            .as_ref()
            .map(|c| c.positions[p as usize])
            .unwrap_or_default();
        match slots[p as usize] {
            Some(slot) if slot.position.next_offset >= durable.next_offset => {
                positions.push(slot.position);
                if let Some(i) = slot.intent {
                    intents.insert(p, i);
                }
            }
            Some(slot) => {
                tracing::warn!(
                    "partition {p}: ledger ({}) is behind the durable checkpoint ({}); using the checkpoint",
                    slot.position.next_offset,
                    durable.next_offset
                );
                positions.push(durable);
            }
            None => positions.push(durable),
        }
    }
    Ok(Restored {
        ledger,
        positions,
        intents,
        had_checkpoint: cp.is_some(),
    })
}

/// Runs a slave until caught up (if configured), stopped via `stop`, or an
/// error. Always leaves a durable checkpoint of what was applied.
pub fn run(
    config: &SlaveConfig,
    mut source: Box<dyn Source>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, SlaveError> {
    let partitions = source.partitions();
    if partitions == 0 {
        return Err(SlaveError::Config(format!(
            "topic `{}` has no partitions",
            config.topic
        )));
    }
    let replica = Replica::open(&config.root).map_err(|source| SlaveError::Root {
        path: config.root.clone(),
        source,
    })?;
    let state = StateDir::open(&config.root)?;
    let Restored {
        ledger,
        positions,
        intents,
        had_checkpoint,
    } = restore(&state, &config.topic, partitions)?;
    let fresh = !had_checkpoint && positions.iter().all(|p| *p == Position::default());
    if fresh && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(SlaveError::Config(format!(
            "{} is not empty and holds no kafkafs checkpoint; replaying the journal onto it would not \
             reproduce the master's tree. Use an empty directory (or pass --allow-non-empty).",
            config.root.display()
        )));
    }
    if fresh {
        ctx_init_fresh(&config.root)?;
    }
    // A position whose records were deleted by retention cannot be resumed.
    for (p, pos) in positions.iter().enumerate() {
        let (low, _high) = source.watermarks(p as u32)?;
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
    tracing::info!(
        topic = %config.topic,
        partitions,
        threads = config.threads,
        "replica {} resumes at offsets {:?}",
        config.root.display(),
        positions.iter().map(|p| p.next_offset).collect::<Vec<_>>()
    );

    let ctx = Arc::new(Ctx {
        replica,
        ledger,
        topic: config.topic.clone(),
        positions: positions
            .iter()
            .map(|p| std::sync::Mutex::new(*p))
            .collect(),
        stop: stop.clone(),
        errno_outcomes: AtomicU64::new(0),
    });
    let mut reader = Reader {
        topic: config.topic.clone(),
        max_record_bytes: config.max_record_bytes,
        skip_bad: config.skip_bad_records,
        skip_records: config.skip_records.clone(),
        partitions,
        skipped_since: vec![0; partitions as usize],
        last_read: positions
            .iter()
            .map(|p| (p.last_pseq, p.last_seq))
            .collect(),
        duplicates: 0,
        skipped_bad: 0,
    };
    let starts: Vec<(u32, i64)> = positions
        .iter()
        .enumerate()
        .map(|(p, pos)| (p as u32, pos.next_offset))
        .collect();
    source.assign(&starts)?;
    let mut next_read: Vec<i64> = positions.iter().map(|p| p.next_offset).collect();

    // Finish interrupted records first, alone: they were in flight together
    // (so they do not conflict), and nothing else may run before them.
    let mut stash: Vec<Message> = Vec::new();
    let mut applied_first = 0u64;
    if !intents.is_empty() {
        let mut pending = intents.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return finish(config, &state, &ctx, &reader, applied_first, None);
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
            next_read[p as usize] = m.offset + 1;
            match pending.remove(&p) {
                Some(intent) if intent.offset == m.offset => {
                    let mut entry = reader.entry(m)?;
                    entry.resume = Some(intent.fingerprint);
                    tracing::info!(
                        "{}: finishing the record interrupted by the last stop",
                        ctx.pos(p, entry.offset)
                    );
                    match apply_entry(&ctx, p, &mut entry) {
                        Ok(()) => applied_first += 1,
                        Err(WorkError::Stopped) => {
                            return finish(config, &state, &ctx, &reader, applied_first, None)
                        }
                        Err(WorkError::Fatal(e)) => return Err(e),
                    }
                }
                Some(intent) => {
                    return Err(SlaveError::Config(format!(
                        "{}: expected the interrupted record at offset {}, found offset {}",
                        ctx.pos(p, m.offset),
                        intent.offset,
                        m.offset
                    )))
                }
                None => stash.push(m),
            }
        }
    }

    let applied_seqs: Vec<u64> = (0..partitions).map(|p| ctx.position(p).last_seq).collect();
    let work_ctx = ctx.clone();
    let work: Box<WorkFn<Entry, WorkError>> =
        Box::new(move |p, item: &mut Item<Entry>| apply_entry(&work_ctx, p, &mut item.payload));
    let pool = Pool::start(config.threads, Scheduler::new(&applied_seqs), work);
    let mut fatal: Option<SlaveError> = None;
    for m in stash {
        let p = m.partition;
        match reader.entry(m) {
            Ok(e) => pool.push(p, item(e)),
            Err(e) => {
                fatal = Some(e);
                break;
            }
        }
    }

    let mut paused = vec![false; partitions as usize];
    let mut last_cp = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_applied = 0u64;
    let high_mark = config.max_queued_per_partition.max(1);
    while fatal.is_none() {
        if stop.load(Ordering::Relaxed) || pool.failed() {
            break;
        }
        // Backpressure per partition: a full partition never blocks others.
        let queued: Vec<usize> =
            pool.inspect(|s| (0..partitions).map(|p| s.queued_in(p)).collect());
        for p in 0..partitions as usize {
            if !paused[p] && queued[p] >= high_mark {
                source.pause(p as u32)?;
                paused[p] = true;
            } else if paused[p] && queued[p] <= high_mark / 2 {
                source.resume(p as u32)?;
                paused[p] = false;
            }
        }
        match source.poll(Duration::from_millis(100)) {
            Ok(Some(m)) => {
                let p = m.partition;
                if p >= partitions {
                    continue;
                }
                next_read[p as usize] = m.offset + 1;
                match reader.entry(m) {
                    Ok(e) => pool.push(p, item(e)),
                    Err(e) => fatal = Some(e),
                }
            }
            Ok(None) => {
                if config.exit_when_caught_up
                    && pool.inspect(|s| s.is_idle())
                    && caught_up(source.as_ref(), &next_read)?
                {
                    break;
                }
            }
            Err(e) => fatal = Some(e.into()),
        }
        if last_cp.elapsed() >= config.checkpoint_interval {
            durable_checkpoint(&state, &ctx, &config.topic)?;
            last_cp = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            let applied = pool.applied();
            let secs = last_progress.elapsed().as_secs_f64();
            tracing::info!(
                "applied {} records ({:.0}/s); next offsets {:?}",
                applied_first + applied,
                (applied - last_applied) as f64 / secs,
                (0..partitions)
                    .map(|p| ctx.position(p).next_offset)
                    .collect::<Vec<_>>()
            );
            last_applied = applied;
            last_progress = Instant::now();
        }
    }

    // A bad record stops reading, but what precedes it is still applied
    // (close drains); a stop request or a failed worker stops at once.
    let end = if stop.load(Ordering::Relaxed) || pool.failed() {
        pool.stop()
    } else {
        pool.close()
    };
    let applied = applied_first + end.applied;
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
    finish(config, &state, &ctx, &reader, applied, error)
}

fn ctx_init_fresh(root: &std::path::Path) -> Result<(), SlaveError> {
    Replica::open(root)
        .and_then(|r| r.init_fresh())
        .map_err(|source| SlaveError::Root {
            path: root.to_path_buf(),
            source,
        })
}

fn caught_up(source: &dyn Source, next_read: &[i64]) -> Result<bool, SlaveError> {
    for (p, &next) in next_read.iter().enumerate() {
        let (_, high) = source.watermarks(p as u32)?;
        if next < high {
            return Ok(false);
        }
    }
    Ok(true)
}

fn durable_checkpoint(state: &StateDir, ctx: &Ctx, topic: &str) -> Result<(), SlaveError> {
    // Snapshot first, then sync: the checkpoint then covers only data that
    // was applied before the sync began.
    let positions: Vec<Position> = (0..ctx.positions.len() as u32)
        .map(|p| ctx.position(p))
        .collect();
    ctx.replica.sync().map_err(|source| SlaveError::Root {
        path: ctx.replica.root().to_path_buf(),
        source,
    })?;
    ctx.ledger.sync()?;
    state.store_checkpoint(&Checkpoint {
        topic: topic.to_string(),
        positions,
    })?;
    Ok(())
}

fn finish(
    config: &SlaveConfig,
    state: &StateDir,
    ctx: &Ctx,
    reader: &Reader,
    applied: u64,
    error: Option<SlaveError>,
) -> Result<SlaveReport, SlaveError> {
    let cp = durable_checkpoint(state, ctx, &config.topic);
    if let Some(e) = error {
        if let Err(cpe) = cp {
            tracing::error!("writing the final checkpoint failed too: {cpe}");
        }
        return Err(e);
    }
    cp?;
    Ok(SlaveReport {
        applied,
        errno_outcomes: ctx.errno_outcomes.load(Ordering::Relaxed),
        duplicates: reader.duplicates,
        skipped_bad: reader.skipped_bad,
        positions: (0..ctx.positions.len() as u32)
            .map(|p| ctx.position(p))
            .collect(),
    })
}

//! Applying journal entries to a replica with exact bookkeeping: the part
//! shared by the slave and the master's own applier ("a slave is a master
//! without the mount").
//!
//! An `Entry` is a record read from (or acknowledged by) the journal;
//! `apply_entry` applies it, retrying replica failures, then advances the
//! partition's ledger slot and finally reports the outcome to the entry's
//! completion callback, if any. `Reader` decodes and checks messages;
//! `restore` finds where a replica resumes; `durable_checkpoint` writes the
//! atomic checkpoint after syncing the replica.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::apply::{Fingerprint, IntentLog, Outcome, Replica};
use crate::checkpoint::{Checkpoint, Fence, Intent, Ledger, Position, Slot, StateDir};
use crate::error::{CheckpointError, DecodeError, RecordPos, ReplicaFailure, SlaveError};
use crate::journal::Message;
use crate::op::hex;
use crate::op::STATE_DIR;
use crate::record::Record;
use crate::scheduler::Item;

/// Called once an entry is applied and recorded in the ledger, with its
/// outcome (`None` for an entry that was skipped).
pub type Completion = Box<dyn FnOnce(Option<Outcome>) + Send>;

/// A record to apply (or skip) at a journal position.
pub struct Entry {
    pub offset: i64,
    pub pseq: u64,
    pub kind: EntryKind,
    /// Fingerprint of an interrupted earlier attempt at this record.
    pub resume: Option<Fingerprint>,
    /// Who waits for this entry (the master's caller).
    pub done: Option<Completion>,
}

pub enum EntryKind {
    Apply(Box<Record>),
    /// Advance past this offset without applying anything.
    Skip,
    /// A fence: advance past it, and keep it as the partition's fence.
    Fence(Fence),
}

impl Entry {
    pub fn apply(offset: i64, record: Record) -> Self {
        Entry {
            offset,
            pseq: record.partition_seq,
            kind: EntryKind::Apply(Box::new(record)),
            resume: None,
            done: None,
        }
    }

    fn skip(offset: i64) -> Self {
        Self::control(offset, EntryKind::Skip)
    }

    fn control(offset: i64, kind: EntryKind) -> Self {
        Entry {
            offset,
            pseq: 0,
            kind,
            resume: None,
            done: None,
        }
    }

    /// The writer whose record this is, if it is a record to apply.
    pub fn record(&self) -> Option<&Record> {
        match &self.kind {
            EntryKind::Apply(r) => Some(r),
            _ => None,
        }
    }

    /// The scheduler item for this entry.
    pub fn into_item(self) -> Item<Entry> {
        match &self.kind {
            EntryKind::Apply(r) => Item {
                seq: r.seq,
                deps: r.deps.clone(),
                payload: self,
            },
            EntryKind::Skip | EntryKind::Fence(_) => Item {
                seq: 0,
                deps: Vec::new(),
                payload: self,
            },
        }
    }
}

/// Why a worker stopped.
pub enum WorkError {
    Stopped,
    Fatal(SlaveError),
}

/// A replica with its ledger and per-partition positions.
pub struct ReplicaState {
    pub replica: Replica,
    pub ledger: Ledger,
    pub topic: String,
    positions: Vec<std::sync::Mutex<Position>>,
    pub stop: Arc<AtomicBool>,
    pub errno_outcomes: AtomicU64,
    /// Replication lag: record time on the master to applied here.
    pub lag: crate::metrics::Histogram,
    /// Records applied (or skipped) since start.
    pub applied: AtomicU64,
    /// Per partition: the topic's end offset when last asked (-1: unknown).
    ends: Vec<std::sync::atomic::AtomicI64>,
    /// What a partial replica holds (empty: everything).
    filter: crate::filter::Filter,
    /// Where entries that came into view without their content are listed.
    gaps_file: Option<std::path::PathBuf>,
    /// Records a partial replica did not apply as they are.
    pub filtered: AtomicU64,
    pub filter_gaps: AtomicU64,
}

impl ReplicaState {
    /// Notes the topic's end offset of a partition (for records behind).
    pub fn set_end(&self, p: u32, end: i64) {
        if let Some(e) = self.ends.get(p as usize) {
            e.store(end, Ordering::Relaxed);
        }
    }

    /// Records between what is applied and the topic's end, per partition
    /// (`None` while the end is unknown).
    pub fn behind(&self) -> Vec<Option<i64>> {
        self.positions()
            .iter()
            .zip(&self.ends)
            .map(|(pos, e)| {
                let end = e.load(Ordering::Relaxed);
                (end >= 0).then(|| (end - pos.next_offset).max(0))
            })
            .collect()
    }

    pub fn new(
        replica: Replica,
        ledger: Ledger,
        topic: &str,
        positions: &[Position],
        stop: Arc<AtomicBool>,
    ) -> Self {
        ReplicaState {
            replica,
            ledger,
            topic: topic.to_string(),
            positions: positions
                .iter()
                .map(|p| std::sync::Mutex::new(*p))
                .collect(),
            stop,
            errno_outcomes: AtomicU64::new(0),
            lag: crate::metrics::Histogram::new(),
            applied: AtomicU64::new(0),
            ends: positions
                .iter()
                .map(|_| std::sync::atomic::AtomicI64::new(-1))
                .collect(),
            filter: crate::filter::Filter::default(),
            gaps_file: None,
            filtered: AtomicU64::new(0),
            filter_gaps: AtomicU64::new(0),
        }
    }

    /// A partial replica: only what `filter` lets through; entries that
    /// come into view without their content are listed in `gaps_file`.
    pub fn with_filter(
        mut self,
        filter: crate::filter::Filter,
        gaps_file: std::path::PathBuf,
    ) -> Self {
        self.filter = filter;
        self.gaps_file = Some(gaps_file);
        self
    }

    /// Applies `rec` — as it is, or as its plan under the filter.
    fn apply_record(
        &self,
        p: u32,
        offset: i64,
        rec: &Record,
        resume: Option<&crate::apply::Fingerprint>,
        log: &mut dyn crate::apply::IntentLog,
    ) -> Result<crate::apply::Outcome, crate::error::ReplicaFailure> {
        if self.filter.is_empty() {
            return self.replica.apply(&rec.op, rec.time, resume, log);
        }
        let plan = self.filter.plan(&rec.op);
        if plan.apply {
            return self.replica.apply(&rec.op, rec.time, resume, log);
        }
        if let Some(path) = &plan.remove {
            self.replica.remove_tree(path, rec.time)?;
        }
        for dir in &plan.touch {
            self.replica.touch_dir(dir, rec.time)?;
        }
        if let Some(path) = &plan.gap {
            self.note_gap(p, offset, rec, path);
        }
        self.filtered.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(()))
    }

    /// An entry came into view from outside it: its content is not here.
    fn note_gap(&self, p: u32, offset: i64, rec: &Record, path: &crate::op::RelPath) {
        self.filter_gaps.fetch_add(1, Ordering::Relaxed);
        let listed = self.gaps_file.as_ref().map(|file| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| {
                    use std::io::Write;
                    writeln!(f, "{p} {offset} {}", crate::op::hex(path.as_bytes()))
                })
                .map(|()| file.display().to_string())
        });
        tracing::warn!(
            "{}: {} brings `{}` into this partial replica's view from outside it: its content was \
             never replicated here, so the replica lacks it{}. A replica whose filter includes \
             both paths has it.",
            self.pos(p, offset),
            rec.op.name(),
            path.display(),
            match listed {
                Some(Ok(file)) => format!(" (listed in {file})"),
                Some(Err(e)) => format!(" (listing it failed: {e})"),
                None => String::new(),
            }
        );
    }

    pub fn partitions(&self) -> u32 {
        self.positions.len() as u32
    }

    pub fn positions(&self) -> Vec<Position> {
        (0..self.partitions()).map(|p| self.position(p)).collect()
    }

    pub fn position(&self, p: u32) -> Position {
        match self.positions[p as usize].lock() {
            Ok(g) => *g,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    pub fn set_position(&self, p: u32, pos: Position) {
        match self.positions[p as usize].lock() {
            Ok(mut g) => *g = pos,
            Err(poisoned) => *poisoned.into_inner() = pos,
        }
    }

    pub fn pos(&self, partition: u32, offset: i64) -> RecordPos {
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
/// is requested, then advances the partition's ledger slot, then calls the
/// entry's completion.
pub fn apply_entry(ctx: &ReplicaState, p: u32, entry: &mut Entry) -> Result<(), WorkError> {
    let before = ctx.position(p);
    let mut after = Position {
        next_offset: entry.offset + 1,
        ..before
    };
    let result = if let EntryKind::Apply(rec) = &entry.kind {
        if let crate::op::Op::Limits(limits) = &rec.op {
            check_capable(ctx, p, entry.offset, limits)?;
        }
        let mut log = LedgerIntent {
            ledger: &ctx.ledger,
            partition: p,
            position: before,
            offset: entry.offset,
            last: None,
        };
        let mut resume = entry.resume;
        let mut backoff = Duration::from_millis(50);
        let outcome = loop {
            match ctx.apply_record(p, entry.offset, rec, resume.as_ref(), &mut log) {
                Ok(Ok(())) => break Ok(()),
                Ok(Err(errno)) => {
                    tracing::debug!(
                        "{}: {} {} -> {errno} (an outcome, same on every replica)",
                        ctx.pos(p, entry.offset),
                        rec.op.name(),
                        rec.op.target()
                    );
                    ctx.errno_outcomes.fetch_add(1, Ordering::Relaxed);
                    break Err(errno);
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
        };
        after.last_seq = rec.seq;
        after.last_pseq = rec.partition_seq;
        let now = crate::op::Timestamp::now().as_nanos();
        let lag = (now - rec.time.as_nanos()).max(0) as u64;
        ctx.lag.record(Duration::from_nanos(lag));
        Some(outcome)
    } else {
        after.last_pseq = after.last_pseq.max(entry.pseq);
        if let EntryKind::Fence(f) = &entry.kind {
            after.fence = Some(*f);
        }
        None
    };
    advance_ledger(ctx, p, entry.offset, after)?;
    ctx.set_position(p, after);
    ctx.applied.fetch_add(1, Ordering::Relaxed);
    if let Some(done) = entry.done.take() {
        done(result);
    }
    Ok(())
}

/// Records the new position in the partition's ledger slot, retrying a
/// failed write (a full disk) like a replica failure.
fn advance_ledger(
    ctx: &ReplicaState,
    p: u32,
    offset: i64,
    after: Position,
) -> Result<(), WorkError> {
    let slot = Slot {
        position: after,
        intent: None,
    };
    retry_failures(ctx, p, offset, "recording the position", || {
        ctx.ledger.write(p, &slot)
    })
}

/// Runs `f` until it succeeds, retrying a failure of this replica (a full
/// disk) with backoff like a failed record; `Stopped` on a stop request.
fn retry_failures<T, E: std::fmt::Display>(
    ctx: &ReplicaState,
    p: u32,
    offset: i64,
    what: &str,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, WorkError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::error!(
                    "{}: {what}: {e}; position held, retrying in {backoff:?}",
                    ctx.pos(p, offset)
                );
                if sleep_unless_stopped(&ctx.stop, backoff) {
                    return Err(WorkError::Stopped);
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Refuses to go past a topic's limits this replica cannot honour (a
/// failure to measure them is retried like any replica failure).
fn check_capable(
    ctx: &ReplicaState,
    p: u32,
    offset: i64,
    limits: &crate::limits::Limits,
) -> Result<(), WorkError> {
    let unmet = retry_failures(ctx, p, offset, "measuring the replica's filesystem", || {
        ctx.replica.unmet(limits)
    })?;
    match unmet {
        None => Ok(()),
        Some(why) => Err(WorkError::Fatal(SlaveError::Incapable {
            pos: ctx.pos(p, offset),
            why,
        })),
    }
}

impl ReplicaState {
    /// Prometheus text for this replica's progress.
    pub fn render_metrics(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# HELP kafkafs_applied_records_total Records applied (or skipped) since start.\n",
        );
        s.push_str("# TYPE kafkafs_applied_records_total counter\n");
        s.push_str(&format!(
            "kafkafs_applied_records_total {}\n",
            self.applied.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP kafkafs_errno_outcomes_total Records whose outcome was an errno.\n");
        s.push_str("# TYPE kafkafs_errno_outcomes_total counter\n");
        s.push_str(&format!(
            "kafkafs_errno_outcomes_total {}\n",
            self.errno_outcomes.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP kafkafs_partition_next_offset Offset of the next record to apply.\n");
        s.push_str("# TYPE kafkafs_partition_next_offset gauge\n");
        for (p, pos) in self.positions().iter().enumerate() {
            s.push_str(&format!(
                "kafkafs_partition_next_offset{{topic=\"{}\",partition=\"{p}\"}} {}\n",
                self.topic, pos.next_offset
            ));
        }
        s.push_str(
            "# HELP kafkafs_partition_records_behind Records between the applied position and the topic's end.\n",
        );
        s.push_str("# TYPE kafkafs_partition_records_behind gauge\n");
        for (p, behind) in self.behind().iter().enumerate() {
            if let Some(b) = behind {
                s.push_str(&format!(
                    "kafkafs_partition_records_behind{{topic=\"{}\",partition=\"{p}\"}} {b}\n",
                    self.topic
                ));
            }
        }
        if !self.filter.is_empty() {
            s += &format!(
                "# HELP kafkafs_filtered_records_total Records a partial replica did not apply as they are (out of its view).\n\
                 # TYPE kafkafs_filtered_records_total counter\nkafkafs_filtered_records_total {}\n\
                 # HELP kafkafs_filter_gaps_total Entries that came into a partial replica's view without their content.\n\
                 # TYPE kafkafs_filter_gaps_total counter\nkafkafs_filter_gaps_total {}\n",
                self.filtered.load(Ordering::Relaxed),
                self.filter_gaps.load(Ordering::Relaxed)
            );
        }
        s.push_str(&self.lag.render(
            "kafkafs_lag_seconds",
            "Record time on the master to applied here.",
            &format!("topic=\"{}\"", self.topic),
        ));
        s
    }
}

/// Sleeps `d`, waking early when `stop` is set; returns true if stopped.
pub fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10).min(d));
    }
    stop.load(Ordering::Relaxed)
}

/// Decodes and checks messages, partition by partition.
pub struct Reader {
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
    /// Per partition: the fence in force (as read).
    fences: Vec<Option<Fence>>,
    pub duplicates: u64,
    pub skipped_bad: u64,
    /// Records of fenced writers, ignored.
    pub fenced: u64,
}

impl Reader {
    pub fn new(
        topic: &str,
        max_record_bytes: usize,
        skip_bad: bool,
        skip_records: Vec<(u32, i64)>,
        positions: &[Position],
    ) -> Self {
        Reader {
            topic: topic.to_string(),
            max_record_bytes,
            skip_bad,
            skip_records,
            partitions: positions.len() as u32,
            last_read: positions
                .iter()
                .map(|p| (p.last_pseq, p.last_seq))
                .collect(),
            skipped_since: vec![0; positions.len()],
            fences: positions.iter().map(|p| p.fence).collect(),
            duplicates: 0,
            skipped_bad: 0,
            fenced: 0,
        }
    }

    /// The fence in force in a partition, as read.
    pub fn fence(&self, partition: u32) -> Option<Fence> {
        self.fences[partition as usize]
    }

    /// A fence record: it becomes the partition's fence if it is the first,
    /// from the writer already in force, or a take-over; otherwise it is
    /// itself void (a fenced writer recovering).
    fn read_fence(&mut self, pos: &RecordPos, rec: &Record, take_over: bool) -> Entry {
        let p = pos.partition as usize;
        let Some(new) = Fence::of(&rec.writer) else {
            return Entry::skip(pos.offset);
        };
        match self.fences[p] {
            Some(cur) if cur.id != new.id && !take_over => {
                tracing::warn!(
                    "{pos}: fence of writer {} (epoch {}) after the take-over by {}: void",
                    hex(&new.id),
                    new.epoch,
                    hex(&cur.id)
                );
                self.fenced += 1;
                Entry::skip(pos.offset)
            }
            Some(cur) if cur.id == new.id && new.epoch < cur.epoch => {
                self.fenced += 1;
                Entry::skip(pos.offset)
            }
            cur => {
                if cur.is_some_and(|c| c.id != new.id) {
                    tracing::info!(
                        "{pos}: writer {} (epoch {}) took over from writer {}",
                        hex(&new.id),
                        new.epoch,
                        cur.map(|c| hex(&c.id)).unwrap_or_default()
                    );
                }
                self.fences[p] = Some(new);
                Entry::control(pos.offset, EntryKind::Fence(new))
            }
        }
    }

    /// The last (partition seq, seq) read from a partition.
    pub fn last_read(&self, partition: u32) -> (u64, u64) {
        self.last_read[partition as usize]
    }

    /// Decodes and checks a message: the entry to queue, or an error that
    /// stops the reader (bad record, gap).
    pub fn entry(&mut self, m: Message) -> Result<Entry, SlaveError> {
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
            Ok(Entry::skip(m.offset))
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
        if let crate::op::Op::Fence { take_over } = rec.op {
            return Ok(self.read_fence(&pos, &rec, take_over));
        }
        if let Some(f) = self.fences[p as usize].filter(|f| f.voids(&rec.writer)) {
            tracing::warn!(
                "{pos}: {} {} of writer {} (epoch {}) came after the fence of writer {} (epoch {}): \
                 a fenced master's write, ignored on every replica",
                rec.op.name(),
                rec.op.target(),
                hex(&rec.writer.id),
                rec.writer.epoch,
                hex(&f.id),
                f.epoch
            );
            self.fenced += 1;
            return Ok(Entry::skip(m.offset));
        }
        let (last_pseq, last_seq) = self.last_read[p as usize];
        if rec.partition_seq == last_pseq && rec.seq != last_seq {
            // Not a duplicate: two different records claim one place.
            return Err(SlaveError::Conflict {
                pos,
                pseq: rec.partition_seq,
                seq: rec.seq,
                applied_seq: last_seq,
            });
        }
        if rec.partition_seq <= last_pseq {
            tracing::info!(
                "{pos}: duplicate record (partition sequence {} already applied), skipped",
                rec.partition_seq
            );
            self.duplicates += 1;
            return Ok(Entry::skip(m.offset));
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
        Ok(Entry::apply(m.offset, rec))
    }
}

/// Is `root` empty apart from the state folder?
pub fn root_is_empty(root: &std::path::Path) -> Result<bool, SlaveError> {
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
pub struct Restored {
    pub ledger: Ledger,
    pub positions: Vec<Position>,
    /// Records interrupted mid-application, by partition.
    pub intents: BTreeMap<u32, Intent>,
    pub had_checkpoint: bool,
}

/// Restores positions: the ledger when this boot wrote it, else the durable
/// checkpoint.
pub fn restore(state: &StateDir, topic: &str, partitions: u32) -> Result<Restored, SlaveError> {
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

/// Sets up a fresh replica root (see `Replica::init_fresh`).
pub fn init_fresh(root: &std::path::Path) -> Result<(), SlaveError> {
    Replica::open(root)
        .and_then(|r| r.init_fresh())
        .map_err(|source| SlaveError::Root {
            path: root.to_path_buf(),
            source,
        })
}

/// Writes the durable checkpoint: positions first, then syncfs, then the
/// atomic file.
pub fn durable_checkpoint(state: &StateDir, ctx: &ReplicaState) -> Result<(), SlaveError> {
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
        topic: ctx.topic.clone(),
        positions,
    })?;
    Ok(())
}

//! An `Entry` is a record read from (or acknowledged by) the journal, or
//! a position to pass; `apply_entry` applies it, retrying replica
//! failures, then advances the partition's ledger slot and finally reports
//! the outcome to the entry's completion callback, if any.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::apply::{Fingerprint, IntentLog, Outcome};
use super::checkpoint::{Fence, Intent, Ledger, Position, Slot};
use super::scheduler::Item;
use super::sleep_unless_stopped;
use super::state::ReplicaState;
use crate::error::{ReplicaError, ReplicaFailure};
use crate::record::Record;

/// Called once an entry is applied and recorded in the ledger, with its
/// outcome (`None` for an entry that was skipped) and its record.
pub type Completion = Box<dyn FnOnce(Option<Outcome>, Option<&Record>) + Send>;

/// A record to apply (or skip) at a journal position.
pub struct Entry {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its partition sequence number (0 for control entries).
    pub pseq: u64,
    /// What to do with it.
    pub kind: EntryKind,
    /// Fingerprint of an interrupted earlier attempt at this record.
    pub resume: Option<Fingerprint>,
    /// Who waits for this entry (the master's caller).
    pub done: Option<Completion>,
}

/// What an entry asks of the applier.
pub enum EntryKind {
    /// Apply this record.
    Apply(Box<Record>),
    /// Advance past this offset without applying anything.
    Skip,
    /// A fence: advance past it, and keep it as the partition's fence.
    Fence(Fence),
}

impl Entry {
    /// An entry applying `record` read at `offset`.
    pub fn apply(offset: i64, record: Record) -> Self {
        Entry {
            offset,
            pseq: record.partition_seq,
            kind: EntryKind::Apply(Box::new(record)),
            resume: None,
            done: None,
        }
    }

    pub(crate) fn skip(offset: i64) -> Self {
        Self::control(offset, EntryKind::Skip)
    }

    pub(crate) fn control(offset: i64, kind: EntryKind) -> Self {
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
                // An fsync waits on the disk: it holds no core.
                blocks: matches!(r.op, crate::op::Op::Fsync { .. }),
                seq: r.seq,
                deps: r.deps.clone(),
                payload: self,
            },
            EntryKind::Skip | EntryKind::Fence(_) => Item {
                blocks: false,
                seq: 0,
                deps: Vec::new(),
                payload: self,
            },
        }
    }
}

/// Why a worker stopped.
pub enum WorkError {
    /// A stop was requested while a record was retried.
    Stopped,
    /// The replica cannot go on.
    Fatal(ReplicaError),
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
            .map_err(|e| ReplicaFailure::of_ledger(&e))?;
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
    let result = match &entry.kind {
        EntryKind::Apply(rec) => {
            let outcome = apply_retrying(ctx, p, entry.offset, rec, before, &mut entry.resume)?;
            after.last_seq = rec.seq;
            after.last_pseq = rec.partition_seq;
            let now = crate::op::Timestamp::now().as_nanos();
            let lag = (now - rec.time.as_nanos()).max(0) as u64;
            ctx.lag.record(Duration::from_nanos(lag));
            Some(outcome)
        }
        EntryKind::Skip | EntryKind::Fence(_) => {
            after.last_pseq = after.last_pseq.max(entry.pseq);
            if let EntryKind::Fence(f) = &entry.kind {
                after.fence = Some(*f);
            }
            None
        }
    };
    advance_ledger(ctx, p, entry.offset, after)?;
    ctx.set_position(p, after);
    ctx.applied.fetch_add(1, Ordering::Relaxed);
    if let Some(done) = entry.done.take() {
        done(result, entry.record());
    }
    Ok(())
}

/// Applies a record until it has an outcome (success or an errno every
/// replica gets), retrying failures of this replica with backoff. On a
/// stop request the fingerprint learned so far is kept in `resume` for the
/// next start.
fn apply_retrying(
    ctx: &ReplicaState,
    p: u32,
    offset: i64,
    rec: &Record,
    before: Position,
    resume: &mut Option<Fingerprint>,
) -> Result<Outcome, WorkError> {
    if let crate::op::Op::Limits(limits) = &rec.op {
        check_capable(ctx, p, offset, limits)?;
    }
    let mut log = LedgerIntent {
        ledger: &ctx.ledger,
        partition: p,
        position: before,
        offset,
        last: None,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        match ctx.apply_record(p, offset, rec, resume.as_ref(), &mut log) {
            Ok(Ok(())) => return Ok(Ok(())),
            Ok(Err(errno)) => {
                tracing::debug!(
                    "{}: {} {} -> {errno} (an outcome, same on every replica)",
                    ctx.pos(p, offset),
                    rec.op.name(),
                    rec.op.target()
                );
                ctx.errno_outcomes.fetch_add(1, Ordering::Relaxed);
                return Ok(Err(errno));
            }
            Err(failure) => {
                tracing::error!(
                    "{}: replica failure: {failure}; position held, retrying in {backoff:?}",
                    ctx.pos(p, offset)
                );
                if log.last.is_some() {
                    *resume = log.last;
                }
                if sleep_unless_stopped(&ctx.stop, backoff) {
                    return Err(WorkError::Stopped);
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
        Some(why) => Err(WorkError::Fatal(ReplicaError::Incapable {
            pos: ctx.pos(p, offset),
            why,
        })),
    }
}

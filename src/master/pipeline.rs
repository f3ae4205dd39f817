//! The master's write path: from a planned operation to an applied record.
//!
//! `submit` (called on a dispatcher thread; in `fsync` mode also on a
//! FUSE thread, where nothing waits for Kafka: see `inline`):
//!
//! 1. plans the operation against the inode table (paths, keys) and waits
//!    until no operation in flight conflicts with it;
//! 2. under one lock: takes its keys, assigns the global sequence number,
//!    the partition sequence number and the record time, computes its
//!    dependencies, and hands the record to the journal (so records reach
//!    every partition in sequence order);
//! 3. waits for Kafka's acknowledgement (acks=all) up to the journal
//!    timeout; the delivery report queues the record, in offset order, for
//!    the master's own applier (the same scheduler and workers as a slave);
//! 4. waits until the applier has applied it to the data-root and recorded
//!    it in the ledger, and returns its outcome with the keys still held;
//!    the caller updates the inode table, then drops the keys. When the
//!    applier has nothing else to apply, the delivery report hands the
//!    record to the waiting call's thread instead (a claim, for a call
//!    that can be answered without its thread), which applies it under
//!    the deadline timer (`guarded`).
//!
//! In `fsync` mode steps 3 and 4 differ (`unacked`): the record is queued
//! for the applier at once, and the call's own thread writes its
//! write-ahead frame and, when nothing else is being applied, applies the
//! record itself, under a deadline timer (`finish_guarded`).
//!
//! A record that Kafka did not acknowledge in time (or refused) fails its
//! caller with EIO and puts the master in *recovery*: new operations wait;
//! once the journal answers again, the records that did reach it are read
//! back and applied (the data-root stays a replay of the journal), sequence
//! numbers are re-read from the log, a new producer is made, and operations
//! resume.

mod unacked;

use std::time::{Duration, Instant};

use crate::error::{Errno, FsError, JournalError};
use crate::journal::{Journal, Message, Sink, Source};
use crate::master::deadline::Deadlines;
use crate::master::durability::Durability;
use crate::master::handoff::{self, handoff, GaveUp, Progress, Resumed, Standby};
use crate::master::inodes::InodeTable;
use crate::master::kernel_cache::{CacheSlot, KernelCache};
use crate::master::keys::KeySet;
use crate::master::sequencer::Sequencer;
use crate::op::hex;
use crate::op::{Op, Timestamp};
use crate::record::{Caller, Record, Writer, DEFAULT_MAX_RECORD_BYTES, HEADER_OP, HEADER_VERSION};
use crate::replica::apply::Outcome;
use crate::replica::checkpoint::{Fence, Position};
use crate::replica::entry::{Entry, WorkError};
use crate::replica::pool::{Claim, Feeder};
use crate::replica::reader::RecordReader;
use crate::sync::channel::RecvTimeoutError;
use crate::sync::{thread, Condvar, Mutex, MutexGuard};
use crate::sync::{AtomicBool, AtomicU64, Ordering};
// Shared handles (journal, sink, inode table) are plain `Arc`s: loom's
// cannot hold trait objects, and what loom must see here is the locks,
// atomics, channels and threads.
use std::sync::Arc;

pub use unacked::FsyncStart;
use unacked::Unacknowledged;

/// Answers the call a dispatcher serves with EIO, if it was not answered
/// yet (see `since`).
pub type AnswerEio = Arc<dyn Fn() + Send + Sync>;

/// The call a thread serves.
struct Call {
    arrived: Instant,
    answer_eio: Option<AnswerEio>,
    /// Served on a FUSE thread: until its first record is sequenced it is
    /// handed to a dispatcher (`FsError::WouldWait`) rather than wait for
    /// Kafka.
    may_defer: bool,
}

thread_local! {
    /// The call this thread serves (see `since`).
    static CALL: std::cell::RefCell<Option<Call>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (one filesystem call) with its journal deadline counted from
/// `arrived`, when the call reached the master, rather than from when a
/// thread took it up: a call that waited for a dispatcher still gets its
/// answer within the journal timeout of its arrival. With `answer_eio`
/// the caller can be answered without this thread: in `fsync` mode the
/// thread then writes its record's frame and applies it itself, and a
/// deadline timer answers EIO if that work outlasts the deadline.
pub fn since<R>(arrived: Instant, answer_eio: Option<AnswerEio>, f: impl FnOnce() -> R) -> R {
    serving(
        Call {
            arrived,
            answer_eio,
            may_defer: false,
        },
        f,
    )
}

/// As `since`, for a call served on a FUSE thread (`fsync` mode): if it
/// would have to wait for Kafka before its first record is sequenced
/// (window full, journal recovering), it fails with `FsError::WouldWait`
/// having journaled nothing, to be served again by a dispatcher.
pub fn inline<R>(arrived: Instant, answer_eio: AnswerEio, f: impl FnOnce() -> R) -> R {
    serving(
        Call {
            arrived,
            answer_eio: Some(answer_eio),
            may_defer: true,
        },
        f,
    )
}

fn serving<R>(call: Call, f: impl FnOnce() -> R) -> R {
    CALL.with(|c| *c.borrow_mut() = Some(call));
    let r = f();
    CALL.with(|c| *c.borrow_mut() = None);
    r
}

/// May the call this thread serves still be handed to a dispatcher?
fn call_may_defer() -> bool {
    CALL.with(|c| c.borrow().as_ref().is_some_and(|c| c.may_defer))
}

/// The call's first record is being sequenced: from now on it finishes
/// where it is.
fn call_committed() {
    CALL.with(|c| {
        if let Some(c) = c.borrow_mut().as_mut() {
            c.may_defer = false;
        }
    });
}

/// The journal deadline of the call this thread serves (see `since`).
fn call_deadline(timeout: Duration) -> Instant {
    CALL.with(|c| c.borrow().as_ref().map(|c| c.arrived))
        .unwrap_or_else(Instant::now)
        + timeout
}

/// How the call this thread serves is answered without it, if it can be.
fn call_answer() -> Option<AnswerEio> {
    CALL.with(|c| c.borrow().as_ref().and_then(|c| c.answer_eio.clone()))
}

/// What a record is ordered after on slaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplayOrder {
    /// After every record it conflicts with, and after every record the
    /// master had applied when it was sequenced: whatever a caller saw done
    /// before it issued an operation is on a slave before that operation
    /// (real-time causality, across processes).
    #[default]
    Causal,
    /// Only after the records it conflicts with (more parallel replay; a
    /// file written after reading another may appear on a slave before it).
    Conflicts,
}

/// A planned operation: what it touches, and how to build it once its
/// record time is known (utimens "now" is the record time).
pub struct Planned {
    /// The keys the record holds while it is sequenced and applied.
    pub keys: KeySet,
    /// Builds the operation at the time it is sequenced.
    pub build: Box<dyn FnOnce(Timestamp) -> Op + Send>,
}

/// Where each partition's log stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tail {
    /// Offset the next record will get.
    pub next_offset: i64,
    /// Sequence number of the last record in it.
    pub last_seq: u64,
    /// Partition sequence number of the last record in it.
    pub last_pseq: u64,
}

impl Tail {
    /// The tail after a replica's applied position.
    pub fn after(p: &crate::replica::checkpoint::Position) -> Tail {
        Tail {
            next_offset: p.next_offset,
            last_seq: p.last_seq,
            last_pseq: p.last_pseq,
        }
    }
}

/// The sequencing state, under the pipeline lock.
struct SeqState {
    seq: Sequencer,
    sink: Arc<dyn Sink>,
}

/// What recovery found when it read the log back.
struct ReadBack {
    reader: RecordReader,
    pushed: Vec<i64>,
    last: Vec<(u64, u64)>,
    applied: u64,
    /// Another writer holds the topic: why we think so.
    fenced: Option<String>,
}

impl ReadBack {
    fn new(from: &[i64], last: &[(u64, u64)], fence: Option<Fence>, topic: &str) -> Self {
        let positions: Vec<Position> = (0..from.len())
            .map(|p| Position {
                next_offset: from[p],
                last_seq: last[p].1,
                last_pseq: last[p].0,
                fence,
            })
            .collect();
        ReadBack {
            reader: RecordReader::new(
                topic,
                DEFAULT_MAX_RECORD_BYTES,
                false,
                Vec::new(),
                &positions,
            ),
            pushed: from.to_vec(),
            last: last.to_vec(),
            applied: 0,
            fenced: None,
        }
    }

    /// After this writer's fences: each partition must be fenced to it.
    fn check_fence(&mut self, writer: &Writer) {
        for p in 0..self.pushed.len() as u32 {
            match self.reader.fence(p) {
                Some(f) if f.id.as_slice() == writer.id.as_slice() => {}
                other => {
                    self.fenced.get_or_insert_with(|| {
                        format!(
                            "partition {p} is fenced to writer {}",
                            other.map(|f| hex(&f.id)).unwrap_or_else(|| "none".into())
                        )
                    });
                }
            }
        }
    }
}

/// Delivery bookkeeping, shared with the producer's callback thread.
struct Delivery {
    /// This master's fence, in force in every partition.
    fence: Option<Fence>,
    /// Next offset expected per partition (everything below was queued for
    /// the applier, by a delivery report or by recovery).
    pushed: Vec<i64>,
    /// (pseq, seq) of the last record queued per partition.
    last: Vec<(u64, u64)>,
}

struct Shared {
    state: Mutex<SeqState>,
    cv: Condvar,
    inodes: Arc<Mutex<InodeTable>>,
    feeder: Feeder<Entry, WorkError>,
    delivery: Mutex<Delivery>,
    /// Bumped when recovery takes over: older delivery reports are ignored.
    generation: AtomicU64,
    recovering: AtomicBool,
    in_flight: AtomicU64,
    stopping: AtomicBool,
    journal: Arc<dyn Journal>,
    timeout: Duration,
    partitions: u32,
    ordering: ReplayOrder,
    recovery: Mutex<Option<thread::JoinHandle<()>>>,
    /// The recovery thread waits here for work (`recovering`, `stopping`)
    /// and for deliveries to drain (`in_flight` reaching 0).
    events: Mutex<()>,
    events_cv: Condvar,
    check: PreCheck,
    /// Set once another master took over (why).
    fenced: Mutex<Option<String>>,
    stats: JournalStats,
    /// The `fsync` durability mode: records applied and answered before
    /// their acknowledgement (`None`: the `journal` mode).
    unacked: Option<Unacknowledged>,
    /// The producer's linger (by durability mode).
    linger: Duration,
    /// The kernel's cache of the mount, told about changes no reply
    /// described.
    kernel: CacheSlot,
    /// Answers callers whose thread is stuck on its record at their
    /// deadline (`Pipeline::guarded`).
    deadlines: Deadlines,
}

impl Shared {
    /// Wakes the recovery thread to re-read `recovering`, `stopping` and
    /// `in_flight` (set before this is called). Taking the lock first means
    /// a waiter that checked them before the change is already waiting.
    fn signal(&self) {
        drop(self.events.lock());
        self.events_cv.notify_all();
    }

    /// Waits until `done()` or `deadline` (None: no deadline); returns
    /// `done()`. Woken by `signal`.
    fn wait_for(&self, deadline: Option<Instant>, done: impl Fn() -> bool) -> bool {
        let mut g = self.events.lock();
        while !done() {
            match deadline {
                None => g = self.events_cv.wait(g),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break;
                    }
                    g = self.events_cv.wait_timeout(g, d - now);
                }
            }
        }
        done()
    }

    /// Wakes the callers waiting for keys to re-read the state (stopping,
    /// recovering, fenced: set before this is called). Taking the state
    /// lock first means no caller is between its check and its wait.
    fn wake_callers(&self) {
        drop(self.state.lock());
        self.cv.notify_all();
    }

    /// The last delivery in flight reported. Only recovery waits for that
    /// (`fresh_producer`, while `recovering`): the recovery thread is
    /// woken then, not after every delivery that empties the pipe (one
    /// per call in `journal` mode, a cross-CPU wake-up each). `recovering`
    /// is set before recovery reads `in_flight`, and read here after the
    /// decrement (both SeqCst): either this sees it set, or recovery
    /// sees the decrement.
    fn drained(&self) {
        if self.recovering.load(Ordering::SeqCst) || self.stopping.load(Ordering::SeqCst) {
            self.signal();
        }
    }

    /// A delivery failed or came out of turn: recovery takes over.
    fn start_recovery(&self) {
        self.recovering.store(true, Ordering::SeqCst);
        self.signal();
    }
}

/// What the write path exports as metrics.
#[derive(Default)]
struct JournalStats {
    /// Handing a record to the producer to its acknowledgement.
    ack: crate::metrics::Histogram,
    /// A call's arrival to its answer (journaled and applied, or an error).
    calls: crate::metrics::Histogram,
    /// The stages of a call, for the request-to-reply profile: arrival to
    /// its keys held (dispatch and waiting for conflicting calls), the
    /// acknowledgement to the record applied (the applier's queue and the
    /// apply), and applied to the caller answering.
    queued: crate::metrics::Histogram,
    applying: crate::metrics::Histogram,
    replying: crate::metrics::Histogram,
    acknowledged: AtomicU64,
    /// Calls answered EIO because the journal or the data-root failed them.
    failed: AtomicU64,
    /// Records applied by their call's own thread (a claim), not a worker.
    by_caller: AtomicU64,
    /// Times the idle recovery thread checked whether it has work (once
    /// per wake-up).
    recovery_checks: AtomicU64,
}

/// The write path (see module docs). Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

/// A record applied to the data-root; its keys are held until dropped.
pub struct Applied {
    /// What applying it gave (the same on every replica).
    pub outcome: Outcome,
    _keys: Option<KeyGuard>,
}

/// Decides, before a record is journaled and with its keys held (so every
/// record it conflicts with is applied), whether the data-root can take it:
/// `Some(errno)` refuses the call with the errno a local filesystem gives.
pub type PreCheck = Arc<dyn Fn(&Op) -> Option<Errno> + Send + Sync>;

/// A call's record, claimed to be applied on the call's own thread.
type RecordClaim = Claim<Entry, WorkError>;

/// The journal's side of a call's hand-off.
type Notifier = handoff::Notifier<KeyGuard, RecordClaim>;

/// The call's side of its hand-off.
type Waiter = handoff::Waiter<KeyGuard, RecordClaim>;

/// What waiting for a record's outcome ended with.
enum Awaited {
    /// It was applied (by a worker).
    Applied(Applied),
    /// The delivery report handed it to the caller's thread to apply.
    Claimed(KeyGuard, Box<RecordClaim>),
}

/// A record handed to the journal, for the rest of its call.
struct Sent {
    seq: u64,
    deadline: Instant,
    sent: Instant,
}

struct KeyGuard {
    shared: Arc<Shared>,
    keys: KeySet,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        self.shared.state.lock().seq.release(&self.keys);
        self.shared.cv.notify_all();
    }
}

/// Everything the pipeline starts from.
pub struct PipelineStart {
    /// Order records after everything applied when they were sequenced
    /// (see `ReplayOrder`).
    pub ordering: ReplayOrder,
    /// The journal to write.
    pub journal: Arc<dyn Journal>,
    /// The data-root's inodes.
    pub inodes: Arc<Mutex<InodeTable>>,
    /// Where acknowledged records go to be applied.
    pub feeder: Feeder<Entry, WorkError>,
    /// Where each partition ends.
    pub tails: Vec<Tail>,
    /// The newest record time in the journal (times only rise).
    pub last_time: Timestamp,
    /// This master's writer identity and epoch.
    pub writer: Writer,
    /// The producer that wrote this writer's fences, lingering as the
    /// durability mode wants (`Durability::linger`): a new one delivers
    /// nothing until librdkafka has its producer id.
    pub sink: Arc<dyn Sink>,
    /// How long a call waits for the journal.
    pub timeout: Duration,
    /// Conflict history kept before it is folded into a barrier.
    pub history_limit: usize,
    /// Refuses calls the data-root cannot take (limits, space).
    pub check: PreCheck,
    /// The `fsync` durability mode (`None`: `journal`).
    pub fsync: Option<FsyncStart>,
    /// Answers callers whose thread is stuck on its record at their
    /// deadline (`Pipeline::guarded`).
    pub deadlines: Deadlines,
}

impl PipelineStart {
    fn durability(&self) -> Durability {
        match self.fsync {
            Some(_) => Durability::Fsync,
            None => Durability::Journal,
        }
    }
}

impl Pipeline {
    /// Starts the write path (and its recovery thread).
    pub fn start(s: PipelineStart) -> Result<Pipeline, JournalError> {
        let partitions = s.tails.len() as u32;
        let (linger, sink) = (s.durability().linger(), s.sink);
        let fence = Fence::of(&s.writer);
        let seq = Sequencer::new(&s.tails, s.last_time, s.writer, s.ordering, s.history_limit);
        let shared = Arc::new(Shared {
            state: Mutex::new(SeqState { seq, sink }),
            cv: Condvar::new(),
            inodes: s.inodes,
            feeder: s.feeder,
            delivery: Mutex::new(Delivery {
                fence,
                pushed: s.tails.iter().map(|t| t.next_offset).collect(),
                last: s.tails.iter().map(|t| (t.last_pseq, t.last_seq)).collect(),
            }),
            generation: AtomicU64::new(0),
            recovering: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            journal: s.journal,
            timeout: s.timeout,
            partitions,
            ordering: s.ordering,
            recovery: Mutex::new(None),
            events: Mutex::new(()),
            events_cv: Condvar::new(),
            check: s.check,
            fenced: Mutex::new(None),
            stats: JournalStats::default(),
            linger,
            unacked: s.fsync.map(|f| Unacknowledged::new(f, &s.tails)),
            kernel: CacheSlot::default(),
            deadlines: s.deadlines,
        });
        let pipeline = Pipeline { shared };
        let recovery = pipeline.clone();
        let handle = thread::Builder::new()
            .name("kafkafs-recovery".into())
            .spawn(move || recovery.recovery_loop())
            .map_err(|_| JournalError::Closed)?;
        *pipeline.shared.recovery.lock() = Some(handle);
        Ok(pipeline)
    }

    /// Installs the mount's kernel cache: records applied after their
    /// caller gave up, and records recovery applies, make it forget what
    /// they changed.
    pub fn set_kernel_cache(&self, cache: Arc<dyn KernelCache>) {
        self.shared.kernel.set(cache);
    }

    /// Are calls answered before Kafka acknowledges them (`fsync` mode)?
    pub fn answers_before_ack(&self) -> bool {
        self.shared.unacked.is_some()
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    /// Is the master recovering from a journal failure?
    pub fn recovering(&self) -> bool {
        self.shared.recovering.load(Ordering::SeqCst)
    }

    /// Stops accepting operations and ends the recovery thread (shutdown).
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake_callers();
        self.shared.signal();
        let handle = self.shared.recovery.lock().take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// Waits for every sent record to be acknowledged (shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), JournalError> {
        let sink = self.shared.state.lock().sink.clone();
        sink.flush(timeout)
    }

    /// Journals and applies one operation (see module docs). Answers within
    /// the journal timeout: an outcome, or an error when the journal did not
    /// acknowledge the record or the data-root did not apply it in time.
    pub fn submit(
        &self,
        caller: Caller,
        plan: &mut dyn FnMut(&mut InodeTable) -> Result<Planned, FsError>,
    ) -> Result<Applied, FsError> {
        let deadline = call_deadline(self.shared.timeout);
        let arrived = deadline - self.shared.timeout;
        let answer = self.journal_and_apply(caller, deadline, plan);
        if let Err(FsError::WouldWait) = answer {
            // Not a call yet: it is served again by a dispatcher.
            return answer;
        }
        let stats = &self.shared.stats;
        stats.calls.record(arrived.elapsed());
        if let Err(
            FsError::Journal(_)
            | FsError::NotRecovered(_)
            | FsError::NotAcknowledged(_)
            | FsError::NotApplied(_)
            | FsError::ShuttingDown,
        ) = &answer
        {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    fn journal_and_apply(
        &self,
        caller: Caller,
        deadline: Instant,
        plan: &mut dyn FnMut(&mut InodeTable) -> Result<Planned, FsError>,
    ) -> Result<Applied, FsError> {
        let (st, planned) = self.wait_for_keys(deadline, plan)?;
        let arrived = deadline.checked_sub(self.shared.timeout);
        if let Some(a) = arrived {
            self.shared.stats.queued.record(a.elapsed());
        }
        // A thread whose caller can be answered without it (the deadline
        // timer) applies its record itself when nothing else is applied:
        // in `fsync` mode it claims it as it sequences it, in `journal`
        // mode the delivery report hands it the claim.
        let answer = call_answer();
        let fsync = self.shared.unacked.is_some();
        let (notifier, waiter) = handoff(answer.is_some() && !fsync);
        let (guard, seq, claim) =
            self.sequence_and_send(st, planned, caller, notifier, answer.is_some() && fsync)?;
        let call = Sent {
            seq,
            deadline,
            sent: Instant::now(),
        };
        if let (Some(answer), true) = (answer.clone(), fsync) {
            return self.finish_guarded(waiter, guard, call, claim, answer);
        }
        match self.await_outcome(&waiter, guard, deadline, call.sent, false)? {
            Awaited::Applied(applied) => {
                self.written(seq, deadline)?;
                Ok(applied)
            }
            Awaited::Claimed(guard, claim) => match answer {
                Some(answer) => self.guarded(waiter, guard, call, answer, move || {
                    self.run_claim(*claim);
                    Ok(())
                }),
                // Not offered without a way to answer: the pool applies it.
                None => {
                    drop(claim);
                    self.await_applied(&waiter, guard, deadline, call.sent, true)
                }
            },
        }
    }

    /// Does `busy` (the call's own work on its record: writing its
    /// write-ahead frame, applying it) under a deadline timer, then
    /// answers. The thread may block on a failing data-root past the
    /// call's deadline: the timer then gives up in its place (the keys go
    /// to the record, whose completion releases them and makes the kernel
    /// forget what it changed) and answers the caller EIO without it.
    /// Whichever comes first answers, once (`handoff::Standby`).
    fn guarded(
        &self,
        waiter: Waiter,
        guard: KeyGuard,
        call: Sent,
        answer_eio: AnswerEio,
        busy: impl FnOnce() -> Result<(), FsError>,
    ) -> Result<Applied, FsError> {
        let standby = Arc::new(Standby::new(waiter, guard));
        let expire = standby.clone();
        let timeout = self.shared.timeout;
        let timer = self.shared.deadlines.arm(
            call.deadline,
            Box::new(move || {
                if expire.expire() {
                    tracing::warn!(
                        "a call's own thread was still writing its record ahead or applying it \
                         {timeout:?} after its arrival (a stalled data-root?); the caller gets \
                         EIO, and the record takes effect once the data-root takes it"
                    );
                    answer_eio();
                }
            }),
        );
        let done = busy();
        timer.disarm();
        match standby.resume() {
            Resumed::GaveUp => Err(FsError::NotApplied(timeout)),
            Resumed::Applied(outcome, keys) => done.map(|()| Applied {
                outcome,
                _keys: keys,
            }),
            Resumed::Waiting(guard) => match done {
                // (Its record was delivered: to the applier, in `fsync`
                // mode, or by Kafka to this thread, in `journal` mode.)
                Ok(()) => {
                    self.await_applied(standby.waiter(), guard, call.deadline, call.sent, true)
                }
                Err(e) => {
                    // The keys stay with the record until it is applied.
                    drop(standby.waiter().give_up(guard));
                    Err(e)
                }
            },
        }
    }

    /// Applies a claimed record on this thread, as a worker would.
    fn run_claim(&self, claim: RecordClaim) {
        claim.run();
        self.shared.stats.by_caller.fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text for the write path: journal acknowledgement latency,
    /// call latency, records in flight, acknowledged records, failed calls,
    /// and whether the journal is recovering.
    pub fn render_metrics(&self) -> String {
        use Ordering::Relaxed;
        let (s, stats) = (&self.shared, &self.shared.stats);
        let mut out = stats.ack.render(
            "kafkafs_journal_ack_seconds",
            "A record handed to the producer to its acknowledgement by Kafka.",
            "",
        );
        out += &stats.calls.render(
            "kafkafs_call_seconds",
            "A mutating call's arrival to its answer (journaled and applied, or an error).",
            "",
        );
        for (name, help, h) in [
            (
                "kafkafs_call_queued_seconds",
                "A mutating call's arrival to its keys held (dispatch, conflicting calls).",
                &stats.queued,
            ),
            (
                "kafkafs_call_applying_seconds",
                "A record's acknowledgement to its application to the data-root.",
                &stats.applying,
            ),
            (
                "kafkafs_call_replying_seconds",
                "A record applied to its caller answering.",
                &stats.replying,
            ),
        ] {
            out += &h.render(name, help, "");
        }
        out += &format!(
            "# HELP kafkafs_journal_in_flight Records sent and not yet acknowledged.\n\
             # TYPE kafkafs_journal_in_flight gauge\nkafkafs_journal_in_flight {}\n\
             # HELP kafkafs_journal_acknowledged_records_total Records Kafka acknowledged.\n\
             # TYPE kafkafs_journal_acknowledged_records_total counter\n\
             kafkafs_journal_acknowledged_records_total {}\n\
             # HELP kafkafs_journal_failed_calls_total Calls answered EIO because the journal (or the data-root) did not take their record in time.\n\
             # TYPE kafkafs_journal_failed_calls_total counter\nkafkafs_journal_failed_calls_total {}\n\
             # HELP kafkafs_journal_recovering 1 while the journal is unavailable.\n\
             # TYPE kafkafs_journal_recovering gauge\nkafkafs_journal_recovering {}\n\
             # HELP kafkafs_call_applied_by_caller_total Records applied by their call's own thread (the applier pool was idle), not by an applier worker.\n\
             # TYPE kafkafs_call_applied_by_caller_total counter\nkafkafs_call_applied_by_caller_total {}\n",
            s.in_flight.load(Ordering::SeqCst),
            stats.acknowledged.load(Relaxed),
            stats.failed.load(Relaxed),
            u8::from(self.recovering()),
            stats.by_caller.load(Relaxed)
        );
        if let Some((records, bytes)) = self.unacknowledged() {
            out += &format!(
                "# HELP kafkafs_unacknowledged_records Records applied and answered, not yet acknowledged by Kafka (durability fsync).\n\
                 # TYPE kafkafs_unacknowledged_records gauge\nkafkafs_unacknowledged_records {records}\n\
                 # HELP kafkafs_unacknowledged_bytes Bytes of those records.\n\
                 # TYPE kafkafs_unacknowledged_bytes gauge\nkafkafs_unacknowledged_bytes {bytes}\n"
            );
        }
        out
    }

    /// Times the idle recovery thread checked whether it has work: once
    /// when it starts waiting, then once per wake-up.
    pub fn recovery_checks(&self) -> u64 {
        self.shared.stats.recovery_checks.load(Ordering::Relaxed)
    }

    /// Records acknowledged, calls failed, and the acknowledgement latency
    /// samples so far (for the master's periodic activity line).
    pub fn activity(&self) -> (u64, u64, crate::metrics::Counts) {
        use Ordering::Relaxed;
        let stats = &self.shared.stats;
        (
            stats.acknowledged.load(Relaxed),
            stats.failed.load(Relaxed),
            stats.ack.counts(),
        )
    }

    /// Runs `f` (a read of the data-root that the inode table then learns)
    /// with `keys` held shared: no operation changing them is in flight
    /// meanwhile. Nothing is journaled. Waits at most the journal timeout
    /// for such operations to finish (EIO after that: the entry is still
    /// changing, its record on its way).
    pub fn reading<R>(&self, keys: &KeySet, f: impl FnOnce() -> R) -> Result<R, FsError> {
        let shared = &self.shared;
        let deadline = Instant::now() + shared.timeout;
        let mut st = shared.state.lock();
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return Err(FsError::ShuttingDown);
            }
            if st.seq.can_acquire(keys) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(FsError::NotApplied(shared.timeout));
            }
            st = shared.cv.wait_timeout(st, deadline - now);
        }
        Ok(self.read_holding(st, keys, f))
    }

    /// As `reading`, without waiting: `None` if an operation in flight
    /// holds a conflicting key, or the master is stopping (the caller then
    /// takes the journaled path, which waits off the FUSE thread).
    pub fn try_reading<R>(&self, keys: &KeySet, f: impl FnOnce() -> R) -> Option<R> {
        let shared = &self.shared;
        let st = shared.state.lock();
        if shared.stopping.load(Ordering::SeqCst) || !st.seq.can_acquire(keys) {
            return None;
        }
        Some(self.read_holding(st, keys, f))
    }

    /// Takes `keys` (free: the caller checked under `st`), releases the
    /// sequencing lock, runs `f`, and gives the keys back.
    fn read_holding<R>(
        &self,
        mut st: MutexGuard<'_, SeqState>,
        keys: &KeySet,
        f: impl FnOnce() -> R,
    ) -> R {
        st.seq.acquire(keys);
        drop(st);
        let _held = KeyGuard {
            shared: self.shared.clone(),
            keys: keys.clone(),
        };
        f()
    }

    /// Plans the operation and waits until no operation in flight conflicts
    /// with it; returns with the sequencing lock held.
    fn wait_for_keys(
        &self,
        deadline: Instant,
        plan: &mut dyn FnMut(&mut InodeTable) -> Result<Planned, FsError>,
    ) -> Result<(MutexGuard<'_, SeqState>, Planned), FsError> {
        let shared = &self.shared;
        let mut st = shared.state.lock();
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return Err(FsError::ShuttingDown);
            }
            if let Some(why) = shared.fenced.lock().clone() {
                return Err(FsError::Fenced(why));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(if shared.recovering.load(Ordering::SeqCst) {
                    FsError::NotRecovered(shared.timeout)
                } else {
                    FsError::NotApplied(shared.timeout)
                });
            }
            let waits_for_kafka = shared.recovering.load(Ordering::SeqCst) || shared.window_full();
            if waits_for_kafka && call_may_defer() {
                return Err(FsError::WouldWait);
            }
            if !waits_for_kafka {
                let planned = plan(&mut shared.inodes.lock())?;
                if st.seq.can_acquire(&planned.keys) {
                    call_committed();
                    return Ok((st, planned));
                }
            }
            // Recovering, the unacknowledged window full, or a conflicting
            // operation in flight: wait for it to finish (it releases its
            // keys once applied, or failed), for recovery to end, for an
            // acknowledgement, or for the deadline. Every change of what is
            // checked above notifies under the lock.
            st = shared.cv.wait_timeout(st, deadline - now);
        }
    }

    /// Takes the keys, numbers the record, checks it against the data-root
    /// and hands it to the journal (under the sequencing lock, so records
    /// reach every partition in sequence order).
    fn sequence_and_send(
        &self,
        mut st: MutexGuard<'_, SeqState>,
        planned: Planned,
        caller: Caller,
        notifier: Notifier,
        may_claim: bool,
    ) -> Result<(KeyGuard, u64, Option<RecordClaim>), FsError> {
        let shared = &self.shared;
        st.seq.acquire(&planned.keys);
        let guard = KeyGuard {
            shared: shared.clone(),
            keys: planned.keys.clone(),
        };
        let time = st.seq.time_for(Timestamp::now());
        let op = (planned.build)(time);
        if let Some(errno) = (shared.check)(&op) {
            drop(st);
            drop(guard);
            return Err(FsError::Refused(errno));
        }
        let applied = self.applied_seqs();
        let record = st.seq.number(op, time, caller, &planned.keys, &applied);
        let (partition, seq) = (record.partition, record.seq);
        let sent = match &shared.unacked {
            Some(u) => self.send_unacked(&st, u, record, notifier, may_claim),
            None => self
                .send(&st, record, notifier)
                .map(|()| None)
                .map_err(|e| FsError::Journal(Box::new(e))),
        };
        match sent {
            Ok(claim) => Ok((guard, seq, claim)),
            Err(e) => {
                // Nothing was queued: its numbers are free again.
                st.seq.unnumber(partition);
                drop(st);
                self.enter_recovery(&format!("send failed: {e}"));
                Err(e)
            }
        }
    }

    /// Each partition's applied sequence number (for causal ordering:
    /// everything applied may have been seen by a caller).
    fn applied_seqs(&self) -> Vec<u64> {
        if self.shared.ordering != ReplayOrder::Causal {
            return Vec::new();
        }
        self.shared
            .feeder
            .inspect(|s| (0..s.partitions()).map(|q| s.applied_seq(q)).collect())
    }

    fn send(&self, st: &SeqState, record: Record, notifier: Notifier) -> Result<(), JournalError> {
        let shared = &self.shared;
        let payload = record.encode();
        let key = record.op.target().as_bytes().to_vec();
        let name = record.op.name();
        let p = record.partition;
        let generation = shared.generation.load(Ordering::SeqCst);
        let cb_shared = shared.clone();
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let handed = Instant::now();
        let sent = st.sink.send(
            p,
            &key,
            &payload,
            &[(HEADER_VERSION, b"1"), (HEADER_OP, name.as_bytes())],
            Box::new(move |res| {
                if res.is_ok() {
                    let stats = &cb_shared.stats;
                    stats.ack.record(handed.elapsed());
                    stats.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                deliver(&cb_shared, generation, record, notifier, res)
            }),
        );
        if sent.is_err() && shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            shared.drained();
        }
        sent
    }

    /// Waits for the outcome, after the acknowledgement unless the
    /// record was `delivered` already, until `deadline`; a claim handed
    /// over on the way is given back (`await_outcome`).
    fn await_applied(
        &self,
        waiter: &Waiter,
        guard: KeyGuard,
        deadline: Instant,
        sent: Instant,
        delivered: bool,
    ) -> Result<Applied, FsError> {
        let (mut guard, mut delivered) = (guard, delivered);
        loop {
            match self.await_outcome(waiter, guard, deadline, sent, delivered)? {
                Awaited::Applied(applied) => return Ok(applied),
                Awaited::Claimed(keys, claim) => {
                    // Back to the pool's workers (a hand-off takes one
                    // claim at most, so this happens once).
                    drop(claim);
                    (guard, delivered) = (keys, true);
                }
            }
        }
    }

    /// Waits for the acknowledgement and then the outcome, until
    /// `deadline`, or for the record handed over to be applied here.
    fn await_outcome(
        &self,
        waiter: &Waiter,
        guard: KeyGuard,
        deadline: Instant,
        sent: Instant,
        mut delivered: bool,
    ) -> Result<Awaited, FsError> {
        let timeout = self.shared.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match waiter.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(Progress::Delivered) => delivered = true,
                Ok(Progress::Claimed) => {
                    delivered = true;
                    if let Some(claim) = waiter.take_claim() {
                        return Ok(Awaited::Claimed(guard, Box::new(claim)));
                    }
                }
                Ok(Progress::Applied(outcome, at)) => {
                    self.shared.stats.replying.record(at.elapsed());
                    return Ok(Awaited::Applied(Applied {
                        outcome,
                        _keys: Some(guard),
                    }));
                }
                Ok(Progress::Failed(e)) => {
                    self.enter_recovery(&format!("record not acknowledged: {e}"));
                    return Err(FsError::Journal(Box::new(e)));
                }
                Err(RecvTimeoutError::Timeout) if delivered => {
                    return self.stop_waiting(waiter, guard).map(Awaited::Applied);
                }
                Err(RecvTimeoutError::Timeout) if sent.elapsed() < timeout / 2 => {
                    // The call spent most of its time before it was sent:
                    // its deadline passed, not the journal's patience. The
                    // record goes on; its delivery applies it (or fails and
                    // starts recovery).
                    return self.stop_waiting(waiter, guard).map(Awaited::Applied);
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.enter_recovery(&format!("no acknowledgement within {timeout:?}"));
                    return Err(FsError::NotAcknowledged(timeout));
                }
                Err(RecvTimeoutError::Disconnected) => return Err(FsError::ShuttingDown),
            }
        }
    }

    /// The call's deadline passed before the record was applied (the
    /// data-root is failing, or the call waited long before it was sent):
    /// the caller gets EIO, and the record keeps its keys until it is
    /// applied (or its delivery fails).
    fn stop_waiting(&self, waiter: &Waiter, guard: KeyGuard) -> Result<Applied, FsError> {
        // It may have been applied meanwhile.
        if let GaveUp::Applied(outcome, keys) = waiter.give_up(guard) {
            return Ok(Applied {
                outcome,
                _keys: keys,
            });
        }
        tracing::warn!(
            "a record had no outcome within {:?} of its call's arrival; the caller gets EIO, and \
             the record takes effect once the journal and the data-root take it",
            self.shared.timeout
        );
        Err(FsError::NotApplied(self.shared.timeout))
    }

    fn enter_recovery(&self, why: &str) {
        if !self.shared.recovering.swap(true, Ordering::SeqCst) {
            tracing::error!("journal failure ({why}): operations fail with EIO until it recovers");
        }
        self.shared.signal();
        self.shared.wake_callers();
    }

    fn recovery_loop(&self) {
        let shared = &self.shared;
        loop {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            if !shared.recovering.load(Ordering::SeqCst) {
                shared.wait_for(None, || {
                    shared.stats.recovery_checks.fetch_add(1, Ordering::Relaxed);
                    shared.recovering.load(Ordering::SeqCst)
                        || shared.stopping.load(Ordering::SeqCst)
                });
                continue;
            }
            let recovered = match &shared.unacked {
                Some(u) => self.recover_unacked(u),
                None => self.recover(),
            };
            match recovered {
                Ok(()) if self.fenced().is_some() => {
                    shared.recovering.store(false, Ordering::SeqCst);
                    shared.wake_callers();
                }
                Ok(()) => {
                    shared.recovering.store(false, Ordering::SeqCst);
                    shared.wake_callers();
                    tracing::info!("journal recovered; operations resume");
                }
                Err(e) => {
                    tracing::warn!("journal still unavailable: {e}; retrying");
                    // A pause between attempts, cut short by a stop.
                    let retry = Instant::now() + Duration::from_secs(1);
                    shared.wait_for(Some(retry), || shared.stopping.load(Ordering::SeqCst));
                }
            }
        }
    }

    /// Recovery's first step: outstanding deliveries report (librdkafka
    /// fails them after the message timeout at the latest), then a fresh
    /// producer replaces the old one (this fails while the journal is
    /// away), and a reader of the log.
    #[allow(clippy::type_complexity)]
    fn fresh_producer(&self) -> Result<(Arc<dyn Sink>, Box<dyn Source>), JournalError> {
        let shared = &self.shared;
        let wait_until = Instant::now() + shared.timeout + Duration::from_secs(5);
        shared.wait_for(Some(wait_until), || {
            shared.in_flight.load(Ordering::SeqCst) == 0 || shared.stopping.load(Ordering::SeqCst)
        });
        let sink = shared.journal.sink(shared.linger)?;
        let source = shared.journal.source()?;
        let old = std::mem::replace(&mut shared.state.lock().sink, sink.clone());
        drop(old);
        Ok((sink, source))
    }

    /// Reconciles the data-root with what the journal actually holds.
    fn recover(&self) -> Result<(), JournalError> {
        let shared = &self.shared;
        let (sink, mut source) = self.fresh_producer()?;
        let writer = {
            let st = shared.state.lock();
            Writer {
                id: st.seq.writer().id.clone(),
                epoch: st.seq.writer().epoch + 1,
            }
        };
        // From here on, late reports of the old producer are ignored.
        let (from, last, fence) = {
            let d = shared.delivery.lock();
            shared.generation.fetch_add(1, Ordering::SeqCst);
            (d.pushed.clone(), d.last.clone(), d.fence)
        };
        // Read what reached the log; if another master took over, stop
        // here. Otherwise fence (a late produce of the retired producer
        // lands before the fence and is read below, or after it and is
        // void everywhere), then read on to the fences.
        let mut read = ReadBack::new(&from, &last, fence, &shared.journal.topic());
        let mut apply = |p, offset, entry| self.apply_found(p, offset, entry);
        self.read_back(&mut read, source.as_mut(), &writer, &mut apply)?;
        if read.fenced.is_none() {
            write_fences(sink.as_ref(), &writer, false, shared.timeout)?;
            self.read_back(&mut read, source.as_mut(), &writer, &mut apply)?;
            read.check_fence(&writer);
        }
        {
            let mut d = shared.delivery.lock();
            d.pushed = read.pushed.clone();
            d.last = read.last.clone();
            d.fence = Fence::of(&writer);
        }
        if let Some(why) = read.fenced {
            self.fence_out(&why);
            return Ok(());
        }
        // Wait for the applier (records found in the log, and records whose
        // acknowledgement came after their caller got EIO), then the kernel
        // forgets what it cached (no reply described those changes) and
        // the table re-reads names recovery changed.
        // (A failing data-root does not hold recovery up for long: the
        // kernel then forgets after the journal timeout.)
        let caught_up = self.applied_within(&read.last, shared.timeout);
        shared.kernel.forget_everything(&shared.inodes);
        if read.applied > 0 {
            if !caught_up && !self.wait_applied(&read.last) {
                return Err(JournalError::Closed);
            }
            shared.inodes.lock().revalidate();
        }
        // Records past the log's tails never reached it: their numbers are
        // free again.
        shared.state.lock().seq.reset_to(&read.last, writer.epoch);
        Ok(())
    }

    /// Reads the log from `read.pushed` to its end as a replica would (the
    /// same reader: duplicates, fences, void records) and hands every entry
    /// to `found`. Notes whether another writer holds it.
    fn read_back(
        &self,
        read: &mut ReadBack,
        source: &mut dyn Source,
        writer: &Writer,
        found: &mut dyn FnMut(u32, i64, Entry),
    ) -> Result<(), JournalError> {
        let from = read.pushed.clone();
        for m in read_from(source, &from)? {
            let (p, offset) = (m.partition, m.offset);
            let entry = read
                .reader
                .entry(m)
                .map_err(|e| JournalError::Unreadable(e.to_string()))?;
            read.pushed[p as usize] = offset + 1;
            if let crate::replica::entry::EntryKind::Fence(f) = &entry.kind {
                if f.id.as_slice() != writer.id.as_slice() {
                    read.fenced.get_or_insert_with(|| {
                        format!(
                            "writer {} fenced partition {p} at offset {offset}",
                            hex(&f.id)
                        )
                    });
                }
            }
            if let Some(rec) = entry.record() {
                if rec.writer.id != writer.id {
                    read.fenced.get_or_insert_with(|| {
                        format!(
                            "partition {p} offset {offset} holds a record of writer {}",
                            hex(&rec.writer.id)
                        )
                    });
                }
                read.last[p as usize] = (rec.partition_seq, rec.seq);
                read.applied += 1;
            }
            found(p, offset, entry);
        }
        Ok(())
    }

    /// What journal-mode recovery does with an entry it read back: the
    /// data-root applies it.
    fn apply_found(&self, p: u32, offset: i64, entry: Entry) {
        if let Some(rec) = entry.record() {
            tracing::warn!(
                "recovery: partition {p} offset {offset} ({} {}) reached the journal without an \
                 acknowledgement; applying it to the data-root",
                rec.op.name(),
                rec.op.target()
            );
        }
        self.shared.feeder.push(p, entry.into_item());
    }

    /// Another master took over: this one stops writing for good.
    fn fence_out(&self, why: &str) {
        let mut fenced = self.shared.fenced.lock();
        if fenced.is_none() {
            tracing::error!(
                "this master has been fenced: another master took over the topic ({why}); it no \
                 longer writes, and every mutating call fails with EROFS. Restart it only as a \
                 slave, or take over again with --take-over."
            );
            *fenced = Some(why.to_string());
        }
        self.shared.wake_callers();
    }

    /// Why this master was fenced, if it was.
    pub fn fenced(&self) -> Option<String> {
        self.shared.fenced.lock().clone()
    }

    /// Has the applier applied up to `last` (seq) everywhere within
    /// `timeout`?
    fn applied_within(&self, last: &[(u64, u64)], timeout: Duration) -> bool {
        self.shared
            .feeder
            .wait_until(timeout, applied_through(last))
    }

    /// Waits until the applier has applied up to `last` (seq) everywhere;
    /// false if the master is stopping first.
    fn wait_applied(&self, last: &[(u64, u64)]) -> bool {
        let done = applied_through(last);
        // Woken by every completion; the timeout only re-checks for a stop.
        while !self.shared.stopping.load(Ordering::SeqCst) {
            if self.shared.feeder.wait_until(Duration::from_secs(1), &done) {
                return true;
            }
        }
        false
    }
}

/// Has the scheduler applied up to `last` (seq) in every partition?
fn applied_through(
    last: &[(u64, u64)],
) -> impl Fn(&crate::replica::scheduler::Scheduler<Entry>) -> bool + '_ {
    |s| (0..s.partitions()).all(|p| s.applied_seq(p) >= last[p as usize].1)
}

/// The producer's delivery report for one record.
fn deliver(
    shared: &Arc<Shared>,
    generation: u64,
    record: Record,
    notifier: Notifier,
    res: Result<i64, JournalError>,
) {
    if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.drained();
    }
    let offset = match res {
        Ok(offset) => offset,
        Err(e) => {
            shared.start_recovery();
            notifier.failed(e);
            return;
        }
    };
    let p = record.partition;
    let mut d = shared.delivery.lock();
    if shared.generation.load(Ordering::SeqCst) != generation || offset < d.pushed[p as usize] {
        // Recovery owns this record now (it read it from the log).
        notifier.abandon();
        return;
    }
    let after = Position {
        next_offset: d.pushed[p as usize],
        last_seq: d.last[p as usize].1,
        last_pseq: d.last[p as usize].0,
        fence: d.fence,
    };
    if offset > d.pushed[p as usize] && gap_is_void(shared, p, after, offset) {
        // Only void records (a fenced writer's, or a late one of this
        // writer's older epoch) came between: every replica ignores them
        // too.
        d.pushed[p as usize] = offset;
    }
    if offset > d.pushed[p as usize] {
        // Records this master did not write precede it: another writer
        // took over (or the log cannot be read). Recovery reads them and
        // decides; the record is not applied here.
        let expected = d.pushed[p as usize];
        drop(d);
        shared.start_recovery();
        notifier.failed(JournalError::Interleaved {
            partition: p,
            expected,
            offset,
        });
        return;
    }
    d.pushed[p as usize] = offset + 1;
    d.last[p as usize] = (record.partition_seq, record.seq);
    // Under the delivery lock: entries reach the applier in offset order.
    let Some(offer) = notifier.offer() else {
        notifier.delivered();
        shared.feeder.push(
            p,
            applied_entry(shared, offset, record, notifier).into_item(),
        );
        return;
    };
    // The caller takes claims: when nothing else is applied it applies
    // its record itself (no worker to wake, nothing to hand back).
    let entry = applied_entry(shared, offset, record, notifier).into_item();
    match shared.feeder.push_or_claim(p, entry) {
        Some(claim) => {
            if let Err(refused) = offer.give(claim) {
                // It stopped waiting: the pool's workers apply it.
                drop(refused);
            }
        }
        None => offer.delivered(),
    }
}

/// The entry that applies an acknowledged record to the data-root and
/// answers its caller (or, if the caller gave up, releases its keys).
fn applied_entry(shared: &Arc<Shared>, offset: i64, record: Record, notifier: Notifier) -> Entry {
    let mut entry = Entry::apply(offset, record);
    let acked = Instant::now();
    let stats = shared.clone();
    entry.done = Some(Box::new(move |outcome, record| {
        stats.stats.applying.record(acked.elapsed());
        if let Some(keys) = notifier.applied(outcome.unwrap_or(Ok(()))) {
            // Its caller gave up: no reply told the kernel; it forgets
            // what the record changed, and the names are re-read.
            let shared = &keys.shared;
            if let Some(op) = record.map(|r| &r.op) {
                shared.kernel.forget(&shared.inodes, &op.paths());
                if op.is_namespace() {
                    shared.inodes.lock().revalidate();
                }
            }
            drop(keys);
        }
    }));
    entry
}

/// Are the records of partition `p` between this writer's last one
/// (`after`) and `offset` all void or duplicates (as every replica's
/// reader judges them)?
fn gap_is_void(shared: &Shared, p: u32, after: Position, offset: i64) -> bool {
    let expected = after.next_offset;
    let judge = || -> Result<bool, JournalError> {
        let mut source = shared.journal.source()?;
        let mut positions = vec![Position::default(); source.partitions() as usize];
        positions[p as usize] = after;
        let topic = shared.journal.topic();
        let mut reader = RecordReader::new(
            &topic,
            DEFAULT_MAX_RECORD_BYTES,
            false,
            Vec::new(),
            &positions,
        );
        source.assign(&[(p, expected)])?;
        let deadline = Instant::now() + shared.timeout;
        let mut next = expected;
        while next < offset {
            if Instant::now() > deadline {
                return Err(JournalError::Timeout(shared.timeout));
            }
            let Some(m) = source.poll(Duration::from_millis(100))? else {
                continue;
            };
            if m.partition != p || m.offset < next {
                continue;
            }
            next = m.offset + 1;
            let entry = reader
                .entry(m)
                .map_err(|e| JournalError::Unreadable(e.to_string()))?;
            if !matches!(entry.kind, crate::replica::entry::EntryKind::Skip) {
                return Ok(false);
            }
        }
        Ok(true)
    };
    match judge() {
        Ok(void) => void,
        Err(e) => {
            tracing::warn!("partition {p}: reading offsets {expected}..{offset} back: {e}");
            false
        }
    }
}

/// Reads every message from the given offsets to the current end.
pub fn read_from(source: &mut dyn Source, from: &[i64]) -> Result<Vec<Message>, JournalError> {
    let n = from.len() as u32;
    let mut ends = Vec::with_capacity(n as usize);
    let mut starts = Vec::new();
    for p in 0..n {
        let (_, high) = source.watermarks(p)?;
        ends.push(high);
        if from[p as usize] < high {
            starts.push((p, from[p as usize]));
        }
    }
    let mut out = Vec::new();
    if starts.is_empty() {
        return Ok(out);
    }
    source.assign(&starts)?;
    let mut next: Vec<i64> = from.to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..n as usize).any(|p| next[p] < ends[p]) {
        if Instant::now() > deadline {
            return Err(JournalError::Timeout(Duration::from_secs(60)));
        }
        if let Some(m) = source.poll(Duration::from_millis(200))? {
            let p = m.partition as usize;
            if m.offset >= ends[p] || m.offset < next[p] {
                continue;
            }
            next[p] = m.offset + 1;
            out.push(m);
        }
    }
    Ok(out)
}

/// How far back `read_last` looks for a readable record.
const LAST_RECORD_SCAN: i64 = 64;

/// The last readable record of every non-empty partition (an unreadable
/// tail was already accepted by the catch-up, which needs an explicit
/// operator flag to pass it; it is skipped here).
pub fn read_last(source: &mut dyn Source) -> Result<Vec<Option<(i64, Record)>>, JournalError> {
    let n = source.partitions();
    let mut from = Vec::with_capacity(n as usize);
    for p in 0..n {
        let (low, high) = source.watermarks(p)?;
        from.push((high - LAST_RECORD_SCAN).max(low));
    }
    let mut last: Vec<Option<(i64, Record)>> = (0..n).map(|_| None).collect();
    for m in read_from(source, &from)? {
        let p = m.partition;
        match Record::decode_from(&m.payload, DEFAULT_MAX_RECORD_BYTES, p) {
            Ok(r) => last[p as usize] = Some((m.offset, r)),
            Err(e) => tracing::warn!(
                "partition {p} offset {}: unreadable record near the end of the journal ({e}); \
                 continuing after it",
                m.offset
            ),
        }
    }
    Ok(last)
}

/// Writes `writer`'s fence into every partition and waits until all are
/// acknowledged; returns their offsets.
pub fn write_fences(
    sink: &dyn Sink,
    writer: &Writer,
    take_over: bool,
    timeout: Duration,
) -> Result<Vec<i64>, JournalError> {
    (0..sink.partitions())
        .map(|p| {
            let record = Record {
                writer: writer.clone(),
                seq: 0,
                partition_seq: 0,
                partition: p,
                deps: Vec::new(),
                time: Timestamp::now(),
                caller: Caller::default(),
                op: Op::Fence { take_over },
            };
            crate::journal::send_and_wait(
                sink,
                p,
                b"",
                &record.encode(),
                &[(HEADER_VERSION, b"1"), (HEADER_OP, b"fence")],
                timeout,
            )
        })
        .collect()
}

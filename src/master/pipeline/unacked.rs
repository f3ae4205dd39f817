//! The `fsync` durability mode of the write path.
//!
//! A record is sequenced as in the `journal` mode, then added to the
//! unacknowledged window, handed to the producer, its frame queued for the
//! write-ahead file, and queued for the data-root's applier at once, at
//! the offset it will take (this master is the topic's only writer and its
//! idempotent producer stores a partition's records at consecutive
//! offsets; a record found elsewhere only moves the log's offsets further,
//! never before). The caller is answered once its frame is written and its
//! record applied — both done by the call's own thread when it can be
//! answered without it (`finish_guarded`: a deadline timer answers EIO if
//! that thread is stuck). Its acknowledgement removes it
//! from the window; `fsync`, `fdatasync`, `fsyncdir` and writes through
//! `O_SYNC`/`O_DSYNC` handles wait (`Pipeline::barrier`) until every
//! record numbered before them is acknowledged. While the window is full,
//! new calls wait.
//!
//! A failed acknowledgement (or a record found after another writer's)
//! starts recovery: with a fresh producer, the log is read from the last
//! acknowledged offset of each partition (what is there is acknowledged);
//! what is still in the window is sent again, in sequence order (its
//! partition sequence numbers follow the log's, and a late copy from the
//! retired producer is a duplicate every reader skips). If another master
//! took over, the data-root holds effects the journal will never have: the
//! write-ahead directory is marked diverged (the next start rolls the
//! data-root back to the journal) and this master stops writing.

use std::time::{Duration, Instant};

use crate::error::{Errno, FsError, JournalError};
use crate::master::wal::{NotWritten, WalWriter};
use crate::master::window::{Unacked, Window, WindowLimits};
use crate::record::{Record, HEADER_OP, HEADER_VERSION};
use crate::replica::checkpoint::Position;
use crate::sync::{AtomicU64, Condvar, Mutex, Ordering};
use std::sync::Arc;

use super::{
    applied_entry, gap_is_void, Applied, KeyGuard, Notifier, Pipeline, ReadBack, RecordClaim,
    SeqState, Shared, Tail, Waiter,
};

/// What the `fsync` mode starts from.
pub struct FsyncStart {
    /// How much may be unacknowledged.
    pub limits: WindowLimits,
    /// The write-ahead file (empty), written by the waiting callers.
    pub wal: WalWriter,
    /// Where the write-ahead file lives (marked diverged if another master
    /// takes over).
    pub wal_dir: std::path::PathBuf,
}

/// The acknowledged end of one partition.
#[derive(Clone, Copy, Debug)]
struct Acked {
    next_offset: i64,
    last_pseq: u64,
    last_seq: u64,
}

/// The window and its waiters: what acknowledgements and the threads
/// waiting for them (barriers, room for a call, recovery, shutdown) meet
/// at. Every change is made under the lock and notified after it, so a
/// waiter that checked before a change is already waiting when it is
/// notified (loom model below).
pub(super) struct Settlement {
    window: Mutex<Window>,
    settled: Condvar,
}

/// Why `Settlement::wait_for` returned before its condition held.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NotYet {
    /// The deadline passed.
    Deadline,
    /// `give_up` said so (a stop, a failed delivery).
    GaveUp,
}

impl Settlement {
    pub(super) fn new(limits: WindowLimits) -> Self {
        Settlement {
            window: Mutex::new(Window::new(limits)),
            settled: Condvar::new(),
        }
    }

    /// The window, locked.
    pub(super) fn lock(&self) -> crate::sync::MutexGuard<'_, Window> {
        self.window.lock()
    }

    /// Changes the window with `change` (acknowledgements) and wakes every
    /// waiter; returns what `change` did, and whether it made room (the
    /// window was full and is not any more).
    pub(super) fn settle<R>(&self, change: impl FnOnce(&mut Window) -> R) -> (R, bool) {
        let now = Instant::now();
        let mut w = self.window.lock();
        let was_full = w.is_full(now);
        let r = change(&mut w);
        let made_room = was_full && !w.is_full(now);
        drop(w);
        self.settled.notify_all();
        (r, made_room)
    }

    /// Wakes every waiter to re-check its `give_up` (set before this).
    pub(super) fn wake(&self) {
        drop(self.window.lock());
        self.settled.notify_all();
    }

    /// Waits until `done` holds of the window, `give_up` holds, or the
    /// deadline passes.
    pub(super) fn wait_for(
        &self,
        deadline: Instant,
        done: impl Fn(&Window) -> bool,
        give_up: impl Fn() -> bool,
    ) -> Result<(), NotYet> {
        let mut w = self.window.lock();
        loop {
            if done(&w) {
                return Ok(());
            }
            if give_up() {
                return Err(NotYet::GaveUp);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(NotYet::Deadline);
            }
            w = self.settled.wait_timeout(w, deadline - now);
        }
    }
}

/// The `fsync` mode's state.
pub(super) struct Unacknowledged {
    settlement: Settlement,
    /// Frames queued under the sequencing lock (so in sequence order),
    /// written by the callers waiting for them.
    wal: WalWriter,
    wal_dir: std::path::PathBuf,
    acked: Mutex<Vec<Acked>>,
    /// Failed deliveries so far (recovery's re-send stops waiting at one).
    failures: AtomicU64,
}

impl Unacknowledged {
    pub(super) fn new(start: FsyncStart, tails: &[Tail]) -> Self {
        let acked = tails
            .iter()
            .map(|t| Acked {
                next_offset: t.next_offset,
                last_pseq: t.last_pseq,
                last_seq: t.last_seq,
            })
            .collect();
        Unacknowledged {
            settlement: Settlement::new(start.limits),
            wal: start.wal,
            wal_dir: start.wal_dir,
            acked: Mutex::new(acked),
            failures: AtomicU64::new(0),
        }
    }

    /// Removes what `settle` says is acknowledged from the window; wakes
    /// barriers, and callers waiting for room if it made some.
    fn settle<R>(&self, shared: &Shared, settle: impl FnOnce(&mut Window) -> R) -> R {
        let (r, made_room) = self.settlement.settle(settle);
        if made_room {
            shared.wake_callers();
        }
        r
    }
}

impl Shared {
    /// Is the unacknowledged window full (new calls wait)?
    pub(super) fn window_full(&self) -> bool {
        self.unacked
            .as_ref()
            .is_some_and(|u| u.settlement.lock().is_full(Instant::now()))
    }
}

/// The write-ahead file failed earlier: calls fail (EIO) until a restart.
fn write_ahead_error(why: &str) -> FsError {
    tracing::debug!("refusing a call: the write-ahead file failed ({why})");
    FsError::Local {
        op: "write-ahead file",
        errno: Errno::IO,
    }
}

impl Pipeline {
    /// `fsync` mode: send, write ahead, and queue the record for the
    /// data-root at once (under the sequencing lock: records reach the
    /// producer, the write-ahead file's writer and the applier in sequence
    /// order). The caller is answered once it is applied *and* its frame is
    /// written (`written`).
    pub(super) fn send_unacked(
        &self,
        st: &SeqState,
        u: &Unacknowledged,
        record: Record,
        notifier: Notifier,
        may_claim: bool,
    ) -> Result<Option<RecordClaim>, FsError> {
        let shared = &self.shared;
        let (p, seq, pseq) = (record.partition, record.seq, record.partition_seq);
        let unacked = Unacked {
            seq,
            partition: p,
            pseq,
            key: record.op.target().as_bytes().to_vec(),
            payload: record.encode().into(),
            op: record.op.name(),
            since: Instant::now(),
        };
        if let Some(why) = u.wal.failed() {
            return Err(write_ahead_error(&why));
        }
        let generation = shared.generation.load(Ordering::SeqCst);
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        let watermark = {
            let mut w = u.settlement.lock();
            w.add(unacked.clone());
            w.watermark(seq - 1)
        };
        if let Err(e) = send_copy(shared, st, &unacked, generation) {
            u.settlement.lock().remove(seq);
            if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
                shared.drained();
            }
            return Err(FsError::Journal(Box::new(e)));
        }
        u.wal.append(unacked, watermark);
        let mut d = shared.delivery.lock();
        let offset = d.pushed[p as usize];
        d.pushed[p as usize] = offset + 1;
        d.last[p as usize] = (pseq, seq);
        notifier.delivered();
        let entry = applied_entry(shared, offset, record, notifier).into_item();
        if may_claim {
            return Ok(shared.feeder.push_or_claim(p, entry));
        }
        shared.feeder.push(p, entry);
        Ok(None)
    }

    /// `fsync` mode, a call that can be answered without its thread: the
    /// thread writes the write-ahead file (its frame and what is queued
    /// before it) and, if it claimed its record, applies it — no hand-off
    /// to another thread — under a deadline timer (`Pipeline::guarded`).
    /// The frame is written before the apply, so once the record is
    /// applied nothing on this thread can block before the answer.
    pub(super) fn finish_guarded(
        &self,
        waiter: Waiter,
        guard: KeyGuard,
        call: super::Sent,
        claim: Option<RecordClaim>,
        answer_eio: super::AnswerEio,
    ) -> Result<Applied, FsError> {
        let (seq, deadline) = (call.seq, call.deadline);
        self.guarded(waiter, guard, call, answer_eio, move || {
            let written = self.written(seq, deadline);
            match claim {
                // Applied by the pool instead (dropping the claim gives it back).
                Some(claim) if written.is_ok() => self.run_claim(claim),
                _ => {}
            }
            written
        })
    }

    /// Waits until every record numbered so far is acknowledged by Kafka
    /// (`fsync` mode; at once in `journal` mode, where every answered
    /// record already is), within the call's journal deadline.
    pub fn barrier(&self) -> Result<(), FsError> {
        let shared = &self.shared;
        let Some(u) = &shared.unacked else {
            return Ok(());
        };
        let deadline = super::call_deadline(shared.timeout);
        let last = shared.state.lock().seq.last_seq();
        let stopping = || shared.stopping.load(Ordering::SeqCst);
        match u
            .settlement
            .wait_for(deadline, |w| w.settled_through(last), stopping)
        {
            Ok(()) => Ok(()),
            Err(NotYet::GaveUp) => Err(FsError::ShuttingDown),
            Err(NotYet::Deadline) => {
                tracing::warn!(
                    "a sync waited {:?} for Kafka to acknowledge {} records; it fails with EIO \
                     (the records stay in the write-ahead file and are sent again)",
                    shared.timeout,
                    u.settlement.lock().len()
                );
                Err(FsError::NotAcknowledged(shared.timeout))
            }
        }
    }

    /// `fsync` mode: waits until the frame of record `seq` is in the
    /// write-ahead file (a caller is answered only then), within the
    /// call's deadline; at once in `journal` mode.
    pub(super) fn written(&self, seq: u64, deadline: Instant) -> Result<(), FsError> {
        let Some(u) = &self.shared.unacked else {
            return Ok(());
        };
        match u.wal.wait_written(seq, deadline) {
            Ok(()) => Ok(()),
            Err(NotWritten::Failed(why)) => Err(write_ahead_error(&why)),
            Err(NotWritten::Deadline) => {
                tracing::warn!(
                    "a record's write-ahead frame was not written within {:?} of its call (a \
                     stalled data-root?); the caller gets EIO",
                    self.shared.timeout
                );
                Err(FsError::NotApplied(self.shared.timeout))
            }
        }
    }

    /// Records and bytes not acknowledged yet (`fsync` mode).
    pub fn unacknowledged(&self) -> Option<(usize, u64)> {
        let u = self.shared.unacked.as_ref()?;
        let w = u.settlement.lock();
        Some((w.len(), w.bytes()))
    }

    /// At shutdown, after the producer was flushed: if everything was
    /// acknowledged, the write-ahead directory goes (a clean stop); else it
    /// stays for the next start to send again. Waits up to `timeout`.
    pub fn close_write_ahead(&self, timeout: Duration) {
        let Some(u) = &self.shared.unacked else {
            return;
        };
        let deadline = Instant::now() + timeout;
        let _ = u.settlement.wait_for(deadline, Window::is_empty, || false);
        u.wal.finish();
        let left = u.settlement.lock().len();
        if left > 0 {
            tracing::warn!(
                "{left} records were not acknowledged by Kafka before exit; they stay in {} and \
                 the next start sends them again",
                u.wal_dir.display()
            );
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&u.wal_dir) {
            tracing::warn!("removing {}: {e}", u.wal_dir.display());
        }
    }

    /// `fsync` mode's recovery: what reached the log is acknowledged, the
    /// rest of the window is sent again with a fresh producer.
    pub(super) fn recover_unacked(&self, u: &Unacknowledged) -> Result<(), JournalError> {
        let shared = &self.shared;
        let (sink, mut source) = self.fresh_producer()?;
        let writer = shared.state.lock().seq.writer().clone();
        let fence = {
            let d = shared.delivery.lock();
            shared.generation.fetch_add(1, Ordering::SeqCst);
            d.fence
        };
        let acked = u.acked.lock().clone();
        let from: Vec<i64> = acked.iter().map(|a| a.next_offset).collect();
        let last: Vec<(u64, u64)> = acked.iter().map(|a| (a.last_pseq, a.last_seq)).collect();
        let mut read = ReadBack::new(&from, &last, fence, &shared.journal.topic());
        let mut found = |_, _, _| {};
        self.read_back(&mut read, source.as_mut(), &writer, &mut found)?;
        self.note_found(u, &read);
        if let Some(why) = read.fenced {
            self.diverged(u, &why);
            return Ok(());
        }
        drop(sink);
        self.send_again(u)
    }

    /// What recovery read is acknowledged.
    fn note_found(&self, u: &Unacknowledged, read: &ReadBack) {
        let mut acked = u.acked.lock();
        for (p, a) in acked.iter_mut().enumerate() {
            a.next_offset = read.pushed[p];
            (a.last_pseq, a.last_seq) = read.last[p];
        }
        let tails: Vec<u64> = acked.iter().map(|a| a.last_pseq).collect();
        drop(acked);
        let settled = u.settle(&self.shared, |w| {
            (0..tails.len())
                .map(|p| w.settle_partition(p as u32, tails[p]))
                .sum::<usize>()
        });
        if settled > 0 {
            tracing::info!(
                "recovery: {settled} records reached the journal without an acknowledgement"
            );
        }
    }

    /// Sends the window again, in sequence order, and waits for it.
    fn send_again(&self, u: &Unacknowledged) -> Result<(), JournalError> {
        let shared = &self.shared;
        let again = u.settlement.lock().in_order();
        if !again.is_empty() {
            tracing::warn!(
                "recovery: sending {} unacknowledged records again",
                again.len()
            );
        }
        let generation = shared.generation.load(Ordering::SeqCst);
        let failures = u.failures.load(Ordering::SeqCst);
        let st = shared.state.lock();
        for x in &again {
            shared.in_flight.fetch_add(1, Ordering::SeqCst);
            if let Err(e) = send_copy(shared, &st, x, generation) {
                shared.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(e);
            }
        }
        drop(st);
        let deadline = Instant::now() + shared.timeout;
        let give_up = || {
            u.failures.load(Ordering::SeqCst) != failures || shared.stopping.load(Ordering::SeqCst)
        };
        match u.settlement.wait_for(deadline, Window::is_empty, give_up) {
            Ok(()) => Ok(()),
            Err(NotYet::GaveUp) => Err(JournalError::Closed),
            Err(NotYet::Deadline) => Err(JournalError::Timeout(shared.timeout)),
        }
    }

    /// Another master took over while records were unacknowledged.
    fn diverged(&self, u: &Unacknowledged, why: &str) {
        let n = u.settlement.lock().len();
        tracing::error!(
            "{n} records applied to the data-root will never be in the journal ({why}); the \
             data-root is marked for a roll-back to the journal at the next start"
        );
        if let Err(e) = crate::master::wal::mark_diverged(&u.wal_dir, why) {
            tracing::error!(
                "marking {} diverged: {e}; remove the data-root's contents before the next start",
                u.wal_dir.display()
            );
        }
        self.fence_out(why);
    }
}

/// Hands a copy of an unacknowledged record to the producer; its
/// acknowledgement settles it.
fn send_copy(
    shared: &Arc<Shared>,
    st: &SeqState,
    x: &Unacked,
    generation: u64,
) -> Result<(), JournalError> {
    let cb_shared = shared.clone();
    let (seq, p, pseq) = (x.seq, x.partition, x.pseq);
    let handed = Instant::now();
    st.sink.send(
        p,
        &x.key,
        &x.payload,
        &[(HEADER_VERSION, b"1"), (HEADER_OP, x.op.as_bytes())],
        Box::new(move |res| {
            if res.is_ok() {
                let stats = &cb_shared.stats;
                stats.ack.record(handed.elapsed());
                stats.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            acknowledged(&cb_shared, generation, (seq, p, pseq), res)
        }),
    )
}

/// The producer's delivery report for a record of the `fsync` mode.
fn acknowledged(
    shared: &Arc<Shared>,
    generation: u64,
    (seq, p, pseq): (u64, u32, u64),
    res: Result<i64, JournalError>,
) {
    if shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
        shared.drained();
    }
    let Some(u) = &shared.unacked else {
        return;
    };
    let offset = match res {
        Ok(offset) => offset,
        Err(e) => {
            tracing::warn!("record {seq} (partition {p}) not acknowledged: {e}; sending it again");
            u.failures.fetch_add(1, Ordering::SeqCst);
            u.settlement.wake();
            shared.start_recovery();
            return;
        }
    };
    if shared.generation.load(Ordering::SeqCst) != generation {
        // A retired producer's: recovery reads the log for it.
        return;
    }
    let mut acked = u.acked.lock();
    let a = acked[p as usize];
    if offset < a.next_offset {
        return;
    }
    let fence = shared.delivery.lock().fence;
    let after = Position {
        next_offset: a.next_offset,
        last_seq: a.last_seq,
        last_pseq: a.last_pseq,
        fence,
    };
    if offset > a.next_offset && !gap_is_void(shared, p, after, offset) {
        drop(acked);
        tracing::warn!(
            "partition {p}: record {seq} stored at offset {offset}, after records this master did \
             not write (from offset {}); reading the log",
            a.next_offset
        );
        shared.start_recovery();
        return;
    }
    acked[p as usize] = Acked {
        next_offset: offset + 1,
        last_pseq: pseq,
        last_seq: seq,
    };
    drop(acked);
    u.settle(shared, |w| w.remove(seq));
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model-checked with `RUSTFLAGS="--cfg loom" cargo test --lib --release loom`.
    use super::*;
    use crate::sync::{thread, Arc, AtomicBool};

    fn unacked(seq: u64) -> Unacked {
        Unacked {
            seq,
            partition: 0,
            pseq: seq,
            key: Vec::new(),
            payload: Default::default(),
            op: "write",
            since: Instant::now(),
        }
    }

    use crate::sync::bounded_model as model;

    /// A barrier on records 1 and 2 while their acknowledgements arrive on
    /// two threads in any order: it returns exactly when both are in (loom
    /// has no time: a lost wake-up would hang the model).
    #[test]
    fn loom_barrier_sees_every_acknowledgement() {
        model(|| {
            let s = Arc::new(Settlement::new(WindowLimits::default()));
            for seq in 1..=3 {
                s.lock().add(unacked(seq));
            }
            let ackers: Vec<_> = [1, 2]
                .into_iter()
                .map(|seq| {
                    let s = s.clone();
                    thread::spawn(move || {
                        s.settle(|w| w.remove(seq));
                    })
                })
                .collect();
            let far = Instant::now() + std::time::Duration::from_secs(3600);
            s.wait_for(far, |w| w.settled_through(2), || false).unwrap();
            assert!(s.lock().settled_through(2));
            assert!(!s.lock().settled_through(3), "record 3 is still out");
            for a in ackers {
                a.join().unwrap();
            }
        });
    }

    /// A failed delivery wakes a waiter that gives up on it.
    #[test]
    fn loom_a_failure_wakes_the_waiter() {
        model(|| {
            let s = Arc::new(Settlement::new(WindowLimits::default()));
            s.lock().add(unacked(1));
            let failed = Arc::new(AtomicBool::new(false));
            let failer = {
                let (s, failed) = (s.clone(), failed.clone());
                thread::spawn(move || {
                    failed.store(true, Ordering::SeqCst);
                    s.wake();
                })
            };
            let far = Instant::now() + std::time::Duration::from_secs(3600);
            let r = s.wait_for(far, Window::is_empty, || failed.load(Ordering::SeqCst));
            assert_eq!(r, Err(NotYet::GaveUp));
            failer.join().unwrap();
        });
    }
}

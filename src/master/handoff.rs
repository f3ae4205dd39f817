//! One call's hand-off between the journal's side (the producer's delivery
//! report, then the applier's completion) and the caller waiting for its
//! answer.
//!
//! The caller holds the record's conflict keys while it waits. If its
//! deadline passes first it gives up: the keys move into the hand-off and
//! the journal's side releases them once the record is applied (or its
//! delivery failed), so a conflicting call can never overtake a record
//! that is still on its way. Exactly one side ends up dropping the keys,
//! whatever the interleaving; the loom models below check that.
//!
//! A caller that takes claims (`handoff(true)`) can also be handed its
//! record to apply on its own thread (`Offer`, a claim `C` on the applier
//! pool): the delivery report parks the claim here and wakes the caller,
//! which takes it (`take_claim`). The claim holds the record's completion,
//! which holds this hand-off's notifier: a claim parked for a caller that
//! is gone would keep itself alive and its record in flight for ever. So
//! the caller closes the hand-off to claims before it stops waiting
//! (`give_up`, or dropping its side), dropping a claim parked there (its
//! record goes back to the pool's workers), and a claim offered after that
//! is refused and goes back too.

use crate::error::JournalError;
use crate::replica::apply::Outcome;
use crate::sync::channel::{self, RecvTimeoutError, TryRecvError};
use crate::sync::{Arc, Mutex};

/// What the journal's side reports to the caller.
pub(crate) enum Progress {
    /// Kafka acknowledged the record.
    Delivered,
    /// Kafka acknowledged the record, and it waits in the hand-off for the
    /// caller to apply it (`Waiter::take_claim`).
    Claimed,
    /// The data-root applied it, with this outcome, at this instant.
    Applied(Outcome, std::time::Instant),
    /// It was not acknowledged (or not by this writer's turn).
    Failed(JournalError),
}

/// Where a claim waits for its caller.
enum Parked<C> {
    /// The caller takes claims; none offered yet.
    Open,
    /// Offered, not taken yet.
    Claim(C),
    /// Taken, refused or never wanted: later offers are refused.
    Closed,
}

type Slot<C> = Arc<Mutex<Parked<C>>>;

/// The journal's side: delivery report and completion.
pub(crate) struct Notifier<K, C> {
    tx: channel::Sender<Progress>,
    late: Arc<Mutex<Option<K>>>,
    parked: Slot<C>,
}

/// The caller's side.
pub(crate) struct Waiter<K, C> {
    rx: channel::Receiver<Progress>,
    late: Arc<Mutex<Option<K>>>,
    parked: Slot<C>,
}

/// Hands a claim on the record to its caller (`Notifier::offer`).
pub(crate) struct Offer<C> {
    tx: channel::Sender<Progress>,
    parked: Slot<C>,
}

/// A new hand-off for one record; `claims`: the caller can apply its
/// record on its own thread.
pub(crate) fn handoff<K, C>(claims: bool) -> (Notifier<K, C>, Waiter<K, C>) {
    let (tx, rx) = channel::unbounded();
    let late = Arc::new(Mutex::new(None));
    let parked = Arc::new(Mutex::new(if claims {
        Parked::Open
    } else {
        Parked::Closed
    }));
    (
        Notifier {
            tx,
            late: late.clone(),
            parked: parked.clone(),
        },
        Waiter { rx, late, parked },
    )
}

impl<K, C> Notifier<K, C> {
    /// Kafka acknowledged the record (the caller waits on for the apply).
    pub(crate) fn delivered(&self) {
        // A caller that gave up no longer reads: nothing to do then.
        let _ = self.tx.send(Progress::Delivered);
    }

    /// The way to hand the caller a claim on its record, if it takes
    /// claims and still waits (taken before the notifier moves into the
    /// record's completion).
    pub(crate) fn offer(&self) -> Option<Offer<C>> {
        matches!(*self.parked.lock(), Parked::Open).then(|| Offer {
            tx: self.tx.clone(),
            parked: self.parked.clone(),
        })
    }

    /// The record was applied: the caller gets its outcome; returns the
    /// keys of a caller that gave up, which the completion releases.
    pub(crate) fn applied(self, outcome: Outcome) -> Option<K> {
        let _ = self
            .tx
            .send(Progress::Applied(outcome, std::time::Instant::now()));
        self.late.lock().take()
    }

    /// The record will not be applied from this report (its delivery
    /// failed): keys a caller left behind are released, the caller (if it
    /// still waits) gets the error.
    pub(crate) fn failed(self, e: JournalError) {
        // Report first, take the keys after: a caller giving up meanwhile
        // either sees the report (and releases its keys itself) or left
        // them before this takes them.
        let _ = self.tx.send(Progress::Failed(e));
        self.release_late();
    }

    /// Recovery took the record over (it reads it back from the log):
    /// keys a caller left behind are released; the caller, if it still
    /// waits, sees the hand-off closed.
    pub(crate) fn abandon(self) {
        self.release_late();
    }

    /// Closes the channel, then releases keys a caller left behind (the
    /// order `failed` explains).
    fn release_late(self) {
        let Notifier { tx, late, .. } = self;
        drop(tx);
        drop(late.lock().take());
    }
}

impl<C> Offer<C> {
    /// Kafka acknowledged the record, which went to the pool's workers
    /// (not claimed): as `Notifier::delivered`.
    pub(crate) fn delivered(self) {
        let _ = self.tx.send(Progress::Delivered);
    }

    /// Parks the claim for the caller and wakes it; a caller that stopped
    /// waiting refuses it (returned: dropping it gives the record back to
    /// the pool's workers).
    pub(crate) fn give(self, claim: C) -> Result<(), C> {
        let mut parked = self.parked.lock();
        if !matches!(*parked, Parked::Open) {
            return Err(claim);
        }
        *parked = Parked::Claim(claim);
        drop(parked);
        // Implies `Delivered`. A caller closing meanwhile took the claim.
        let _ = self.tx.send(Progress::Claimed);
        Ok(())
    }
}

/// What a caller that gave up gets back.
pub(crate) enum GaveUp<K> {
    /// The record was applied meanwhile: its outcome, and the keys if the
    /// completion had not taken them yet.
    Applied(Outcome, Option<K>),
    /// Not applied yet: the keys stay with the record until it is.
    Pending,
}

impl<K, C> Waiter<K, C> {
    /// The next report, waiting at most `timeout`.
    pub(crate) fn recv_timeout(
        &self,
        timeout: std::time::Duration,
    ) -> Result<Progress, RecvTimeoutError> {
        self.rx.recv_timeout(timeout)
    }

    /// The claim the journal's side parked (after `Progress::Claimed`);
    /// no other is offered afterwards.
    pub(crate) fn take_claim(&self) -> Option<C> {
        match std::mem::replace(&mut *self.parked.lock(), Parked::Closed) {
            Parked::Claim(claim) => Some(claim),
            Parked::Open | Parked::Closed => None,
        }
    }

    /// No claim is taken any more; one parked is dropped (outside the
    /// lock: its record goes back to the pool, whose lock that takes).
    fn close_claims(&self) {
        drop(self.take_claim());
    }

    /// The caller stops waiting: its keys go to the record, unless it was
    /// applied meanwhile (the caller takes them back with the outcome) or
    /// will never be applied from this hand-off (its delivery failed, or
    /// recovery took it over: the keys are released here). A claim parked
    /// for it goes back to the pool's workers.
    pub(crate) fn give_up(&self, keys: K) -> GaveUp<K> {
        *self.late.lock() = Some(keys);
        self.close_claims();
        loop {
            match self.rx.try_recv() {
                Ok(Progress::Delivered | Progress::Claimed) => continue,
                Ok(Progress::Applied(outcome, _)) => {
                    return GaveUp::Applied(outcome, self.late.lock().take());
                }
                Ok(Progress::Failed(_)) | Err(TryRecvError::Disconnected) => {
                    drop(self.late.lock().take());
                    return GaveUp::Pending;
                }
                Err(TryRecvError::Empty) => return GaveUp::Pending,
            }
        }
    }
}

impl<K, C> Drop for Waiter<K, C> {
    fn drop(&mut self) {
        // A claim parked here would hold its own notifier, and so this
        // hand-off, for ever (module docs).
        self.close_claims();
    }
}

/// The caller's side while the caller's own thread is busy with its record
/// (writing its write-ahead frame, applying it: a claim), guarded by a
/// deadline timer: that thread may be stuck in a syscall on a failing
/// data-root when the deadline passes, and the timer then gives up in its
/// place (`expire`) and the caller is answered EIO without it. The thread
/// comes back with `resume` and learns which side answers. Exactly one side
/// answers the caller, and the keys are dropped once (loom model below).
pub(crate) struct Standby<K, C> {
    waiter: Waiter<K, C>,
    phase: Mutex<Phase<K>>,
}

enum Phase<K> {
    /// The thread is busy; the keys wait here.
    Busy(K),
    /// The thread came back (the timer does nothing any more).
    Back,
    /// The timer gave up: the caller got EIO; the keys went to the record.
    GaveUp,
    /// The timer found the record applied: the thread answers with this.
    Applied(Outcome, Option<K>),
}

/// What the caller's thread finds when it comes back.
pub(crate) enum Resumed<K> {
    /// Nothing happened meanwhile: it waits for the outcome as usual, with
    /// the keys.
    Waiting(K),
    /// The deadline passed and the caller was answered EIO.
    GaveUp,
    /// The deadline passed after the record was applied: the thread
    /// answers with this outcome.
    Applied(Outcome, Option<K>),
}

impl<K, C> Standby<K, C> {
    /// The caller's side, with its keys, while its thread is busy.
    pub(crate) fn new(waiter: Waiter<K, C>, keys: K) -> Self {
        Standby {
            waiter,
            phase: Mutex::new(Phase::Busy(keys)),
        }
    }

    /// The deadline passed: if the thread is still busy, give up in its
    /// place. True if the caller must now be answered EIO (by the timer).
    pub(crate) fn expire(&self) -> bool {
        let mut phase = self.phase.lock();
        match std::mem::replace(&mut *phase, Phase::Back) {
            Phase::Busy(keys) => match self.waiter.give_up(keys) {
                GaveUp::Pending => {
                    *phase = Phase::GaveUp;
                    true
                }
                GaveUp::Applied(outcome, keys) => {
                    *phase = Phase::Applied(outcome, keys);
                    false
                }
            },
            other => {
                *phase = other;
                false
            }
        }
    }

    /// The thread is back: what happened meanwhile.
    pub(crate) fn resume(&self) -> Resumed<K> {
        match std::mem::replace(&mut *self.phase.lock(), Phase::Back) {
            Phase::Busy(keys) => Resumed::Waiting(keys),
            Phase::Back | Phase::GaveUp => Resumed::GaveUp,
            Phase::Applied(outcome, keys) => Resumed::Applied(outcome, keys),
        }
    }

    /// The caller's side of the hand-off (after `resume` said `Waiting`).
    pub(crate) fn waiter(&self) -> &Waiter<K, C> {
        &self.waiter
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The hand-off under every interleaving, alone and on the master's
    //! real path: delivery report → applier pool → completion → caller.

    use super::*;
    use crate::replica::pool::{Pool, WorkFn};
    use crate::replica::scheduler::{Item, Scheduler};
    use crate::sync::thread;
    use crate::sync::{AtomicUsize, Ordering};

    /// Conflict keys that count their releases.
    struct Keys(Arc<AtomicUsize>);

    impl Drop for Keys {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The caller's side of `Pipeline::await_outcome`: wait for the
    /// outcome (patient), or give up at once — loom runs that at every
    /// point of the other side's progress, as a deadline could fire.
    fn caller<C>(
        waiter: &Waiter<Keys, C>,
        keys: Keys,
        patient: bool,
    ) -> Option<(Outcome, Option<Keys>)> {
        caller_claiming(waiter, keys, patient, drop)
    }

    /// `caller`, applying a claim it is handed with `run`.
    fn caller_claiming<C>(
        waiter: &Waiter<Keys, C>,
        keys: Keys,
        patient: bool,
        run: impl Fn(C),
    ) -> Option<(Outcome, Option<Keys>)> {
        if !patient {
            return match waiter.give_up(keys) {
                GaveUp::Applied(o, k) => Some((o, k)),
                GaveUp::Pending => None,
            };
        }
        loop {
            match waiter.recv_timeout(std::time::Duration::from_secs(1)) {
                Ok(Progress::Delivered) => continue,
                Ok(Progress::Claimed) => {
                    if let Some(claim) = waiter.take_claim() {
                        run(claim);
                    }
                }
                Ok(Progress::Applied(o, _)) => return Some((o, Some(keys))),
                Ok(Progress::Failed(_)) | Err(_) => return None,
            }
        }
    }

    #[test]
    fn loom_give_up_races_the_completion() {
        loom::model(|| {
            let released = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let applier = thread::spawn(move || {
                notifier.delivered();
                drop(notifier.applied(Ok(())));
            });
            let answer = caller(&waiter, Keys(released.clone()), false);
            drop(answer);
            applier.join().unwrap();
            // Released exactly once, by whichever side held the keys last,
            // and nothing is left behind in the hand-off.
            assert_eq!(released.load(Ordering::SeqCst), 1);
            assert!(waiter.late.lock().is_none());
        });
    }

    #[test]
    fn loom_give_up_races_a_failed_delivery() {
        loom::model(|| {
            let released = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let reporter = thread::spawn(move || {
                notifier.failed(JournalError::Closed);
            });
            let answer = caller(&waiter, Keys(released.clone()), false);
            assert!(
                answer.is_none(),
                "a failed delivery never answers an outcome"
            );
            reporter.join().unwrap();
            assert_eq!(released.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn loom_give_up_races_recovery_taking_over() {
        loom::model(|| {
            let released = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let recovery = thread::spawn(move || notifier.abandon());
            let answer = caller(&waiter, Keys(released.clone()), false);
            assert!(answer.is_none());
            recovery.join().unwrap();
            assert_eq!(released.load(Ordering::SeqCst), 1);
        });
    }

    /// Keys a caller left behind are released only once the record is
    /// applied: never while a conflicting record could still overtake it.
    #[test]
    fn loom_late_keys_outlive_the_apply() {
        loom::model(|| {
            let released = Arc::new(AtomicUsize::new(0));
            let applied = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let (r, a) = (released.clone(), applied.clone());
            let applier = thread::spawn(move || {
                a.fetch_add(1, Ordering::SeqCst);
                let late = notifier.applied(Ok(()));
                if late.is_some() {
                    // The caller gave up before: nothing released its keys.
                    assert_eq!(r.load(Ordering::SeqCst), 0);
                }
                drop(late);
            });
            if let GaveUp::Applied(_, keys) = waiter.give_up(Keys(released.clone())) {
                assert_eq!(applied.load(Ordering::SeqCst), 1);
                drop(keys);
            }
            applier.join().unwrap();
            assert_eq!(released.load(Ordering::SeqCst), 1);
        });
    }

    /// A caller's thread applies its own record (delivered, then applied:
    /// the completion takes keys a give-up left) and comes back, while the
    /// deadline timer expires at any point: the caller is answered exactly
    /// once (EIO by the timer, or the outcome by its thread), and the keys
    /// are released exactly once, never before the apply if the timer gave
    /// up.
    #[test]
    fn loom_a_deadline_takes_over_a_busy_caller() {
        loom::model(|| {
            let released = Arc::new(AtomicUsize::new(0));
            let answers = Arc::new(AtomicUsize::new(0));
            let applied = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let standby = Arc::new(Standby::new(waiter, Keys(released.clone())));
            let timer = {
                let (standby, answers) = (standby.clone(), answers.clone());
                thread::spawn(move || {
                    if standby.expire() {
                        answers.fetch_add(1, Ordering::SeqCst);
                    }
                })
            };
            notifier.delivered();
            applied.fetch_add(1, Ordering::SeqCst);
            if let Some(late) = notifier.applied(Ok(())) {
                assert_eq!(released.load(Ordering::SeqCst), 0);
                drop(late);
            }
            match standby.resume() {
                Resumed::Waiting(keys) => {
                    let answer = caller(standby.waiter(), keys, true);
                    assert!(answer.is_some());
                    answers.fetch_add(1, Ordering::SeqCst);
                }
                Resumed::Applied(_, keys) => {
                    answers.fetch_add(1, Ordering::SeqCst);
                    drop(keys);
                }
                Resumed::GaveUp => {}
            }
            timer.join().unwrap();
            assert_eq!(answers.load(Ordering::SeqCst), 1, "answered once");
            assert_eq!(released.load(Ordering::SeqCst), 1, "keys released once");
        });
    }

    /// A record's completion (the master's applied entry runs its
    /// caller's side of the hand-off).
    type Done = Box<dyn FnOnce() + Send>;
    type DoneClaim = crate::replica::pool::Claim<Option<Done>, ()>;

    /// A one-worker pool on one partition whose work runs the completion.
    fn completing_pool() -> Pool<Option<Done>, ()> {
        let work: Box<WorkFn<Option<Done>, ()>> = Box::new(|_, item: &mut Item<Option<Done>>| {
            if let Some(done) = item.payload.take() {
                done();
            }
            Ok(())
        });
        Pool::start(1, Scheduler::new(&[0]), work)
    }

    /// The master's path: the delivery report pushes the entry to the
    /// applier pool, a worker applies it and runs the completion, the
    /// caller waits (patiently or not).
    fn delivery_apply_reply(patient: bool) {
        // Bounded preemptions (as the pool's own models): four threads make
        // the unbounded search take minutes for no extra interleaving class.
        crate::sync::bounded_model(move || {
            let released = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, ()>(false);
            let pool = completing_pool();
            let feeder = pool.feeder();
            let reporter = thread::spawn(move || {
                notifier.delivered();
                let done: Done = Box::new(move || drop(notifier.applied(Ok(()))));
                feeder.push(
                    0,
                    Item {
                        blocks: false,
                        seq: 1,
                        deps: Vec::new(),
                        payload: Some(done),
                    },
                );
            });
            let answer = caller(&waiter, Keys(released.clone()), patient);
            if patient {
                assert!(answer.is_some(), "a patient caller gets the outcome");
            }
            drop(answer);
            reporter.join().unwrap();
            let end = pool.close();
            assert_eq!(end.applied, 1);
            assert_eq!(released.load(Ordering::SeqCst), 1);
        });
    }

    /// The `journal` mode's path with claims: the delivery report claims
    /// the record from the idle pool and parks it for the caller, which
    /// applies it on its own thread (patient), or gives up at any point
    /// (then drops its side) — the claim parked for it, or refused, goes
    /// back to the pool's worker. Either way the record is applied once,
    /// the keys released once, and the pool ends with nothing in flight.
    fn delivery_claim_reply(patient: bool) {
        crate::sync::bounded_model(move || {
            let released = Arc::new(AtomicUsize::new(0));
            let (notifier, waiter) = handoff::<Keys, DoneClaim>(true);
            let pool = completing_pool();
            let feeder = pool.feeder();
            // As the master's delivery report (`pipeline::deliver`).
            let reporter = thread::spawn(move || {
                let offer = notifier.offer();
                if offer.is_none() {
                    // The caller stopped waiting already.
                    notifier.delivered();
                }
                let done: Done = Box::new(move || drop(notifier.applied(Ok(()))));
                let item = Item {
                    blocks: false,
                    seq: 1,
                    deps: Vec::new(),
                    payload: Some(done),
                };
                let Some(offer) = offer else {
                    feeder.push(0, item);
                    return;
                };
                match feeder.push_or_claim(0, item) {
                    Some(claim) => {
                        if let Err(refused) = offer.give(claim) {
                            drop(refused);
                        }
                    }
                    None => offer.delivered(),
                }
            });
            let answer = caller_claiming(&waiter, Keys(released.clone()), patient, |c| c.run());
            if patient {
                assert!(answer.is_some(), "a patient caller gets the outcome");
            }
            drop(answer);
            drop(waiter);
            reporter.join().unwrap();
            let end = pool.close();
            assert_eq!(end.applied, 1);
            assert_eq!(released.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn loom_a_claim_handed_to_a_patient_caller() {
        delivery_claim_reply(true);
    }

    #[test]
    fn loom_a_claim_handed_to_a_caller_giving_up() {
        delivery_claim_reply(false);
    }

    #[test]
    fn loom_delivery_apply_reply_patient_caller() {
        delivery_apply_reply(true);
    }

    #[test]
    fn loom_delivery_apply_reply_caller_gives_up() {
        delivery_apply_reply(false);
    }
}

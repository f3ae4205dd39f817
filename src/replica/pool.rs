//! Worker threads around the scheduler. Used by the slave and by the
//! master's own applier alike.
//!
//! Each worker loops: take a ready record from the scheduler (under the
//! pool lock), apply it without the lock, report it complete, wake the
//! others. Workers are not tied to partitions: any idle worker takes any
//! ready head, so no worker ever sleeps while a record it could run is
//! ready, and with N threads over P partitions up to min(N, P) records are
//! applied at once.
//!
//! The pool starts no worker up front, and starts one (up to N) only when
//! a record is ready and no worker is idle to take it: work that never has
//! two records ready at once (one writer's chain) runs on one thread
//! whatever N is, exactly as with N = 1.
//!
//! Threads beyond the cores only cost switches for work that uses a core
//! (the apply of small files is system calls on cached pages): at most
//! `cores` records that hold a core are applied at once (by default one
//! fewer than the machine has, leaving one to the thread feeding the
//! pool). Records that wait instead (an fsync, `Item::blocks`), and
//! records applied for longer than `STALLED_AFTER` (their thread waits on
//! the disk), do not count, so the threads up to N overlap waits.

use crate::replica::scheduler::{Item, Scheduler};
use std::time::{Duration, Instant};

/// A record applied for this long is taken to wait on the disk (a
/// journal commit, writeback) rather than to use a core.
const STALLED_AFTER: Duration = Duration::from_millis(1);

/// The records being applied, by partition, with when they started to
/// hold a core (`None`: one that blocks).
#[derive(Default)]
struct Running(Vec<(u32, Option<Instant>)>);

impl Running {
    fn begin(&mut self, partition: u32, blocks: bool) {
        self.0.push((partition, (!blocks).then(Instant::now)));
    }

    fn end(&mut self, partition: u32) {
        if let Some(i) = self.0.iter().position(|(p, _)| *p == partition) {
            self.0.swap_remove(i);
        }
    }

    /// Records using a core now: not known to block, and not at it so
    /// long that their thread must be waiting.
    fn on_cores(&self) -> usize {
        self.0
            .iter()
            .filter(|(_, since)| since.is_some_and(|t| !stalled(t)))
            .count()
    }
}

fn stalled(since: Instant) -> bool {
    // Time is not part of loom's model: there, nothing stalls.
    cfg!(not(loom)) && since.elapsed() >= STALLED_AFTER
}

/// Records that hold a core applied at once by default: one fewer than
/// the machine's cores (the thread feeding the pool keeps one), at least
/// one.
fn default_cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .saturating_sub(1)
        .max(1)
}

use crate::sync::{thread, Arc, Condvar, Mutex, MutexGuard};

/// What a worker does with a record. An `Err` stops the pool: the record
/// goes back to the head of its partition, unapplied.
pub type WorkFn<T, E> = dyn Fn(u32, &mut Item<T>) -> Result<(), E> + Send + Sync;

struct State<T, E> {
    sched: Scheduler<T>,
    /// No more records will be pushed: finish what can run, then exit.
    closing: bool,
    /// Stop taking records (after an error or on request).
    stopping: bool,
    /// Take no new records until resumed (a snapshot's cut).
    paused: bool,
    error: Option<E>,
    applied: u64,
    /// Workers waiting for a record, and how many of them were woken and
    /// have not run yet: another is woken only when none is on its way
    /// (waking a crowd for one record costs more than it gains).
    sleeping: usize,
    waking: usize,
    /// Threads waiting in `Feeder::wait_until` (completions notify them).
    watchers: usize,
    /// Times a worker woke from waiting for a record.
    wakeups: u64,
    /// Workers started, and how many may be.
    started: usize,
    limit: usize,
    /// What is being applied, and how many records that use a core may be.
    running: Running,
    cores: usize,
}

/// How a ready record gets a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// A worker is already on its way (it takes it, or wakes the next),
    /// or every worker is busy and none may be added: the first to finish
    /// takes it.
    Nobody,
    /// Wake a sleeping worker.
    Sleeper,
    /// Start a worker: none is idle and the limit allows one more.
    Start,
}

impl<T, E> State<T, E> {
    /// Would `call_one` call anyone? Nobody while a called worker is on
    /// its way (it takes a record, and calls the next if more are ready),
    /// nor while the cores are taken (a busy worker takes the record when
    /// it finishes). A closing pool still drains what is queued with
    /// every worker it may have (`finish` joins those started meanwhile).
    fn may_call(&self) -> bool {
        self.waking == 0
            && (self.sleeping > 0 || (self.started < self.limit && !self.stopping))
            && self.cores_free()
    }

    fn cores_free(&self) -> bool {
        self.running.on_cores() < self.cores
    }

    /// Who takes a ready record, once `may_call` said someone may (the
    /// callers ask it first, before looking for a ready record)? Counts
    /// the worker on its way. One at a time: the one woken or started
    /// takes a record and, if more are ready, calls for the next.
    fn call_one(&mut self) -> Wake {
        self.waking += 1;
        if self.sleeping > 0 {
            return Wake::Sleeper;
        }
        self.started += 1;
        Wake::Start
    }

    /// The ready record with the smallest sequence number a worker may
    /// apply now: only one that blocks while the cores are taken.
    fn take(&mut self) -> Option<(u32, Item<T>)> {
        if self.paused {
            return None;
        }
        let taken = if self.cores_free() {
            self.sched.take()
        } else {
            self.sched.take_if(|item| item.blocks)
        };
        if let Some((p, item)) = &taken {
            self.running.begin(*p, item.blocks);
        }
        taken
    }
}

struct Shared<T, E> {
    state: Mutex<State<T, E>>,
    /// Idle workers wait here for a ready record. Woken one at a time: a
    /// worker that takes a record while more are ready wakes the next one
    /// (a cascade as wide as the work, not a herd of every thread).
    work: Condvar,
    /// `pause` waits here for the records in flight to finish.
    idle: Condvar,
    /// `Feeder::wait_until` waits here for completions.
    progress: Condvar,
    /// What applying a record means.
    apply: Arc<Box<WorkFn<T, E>>>,
    /// The started workers, joined when the pool ends.
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
}

/// Where a record may have become ready.
#[derive(Clone, Copy)]
enum Changed {
    /// A push to this partition: only its head can have become ready
    /// (every record ready before had its worker called already).
    Partition(u32),
    /// A completion or a give-back: any partition's head.
    Any,
}

/// Calls a worker if a record is ready and none is on its way (one
/// record makes at most one more ready: one worker will do). Whether
/// anyone could be called is asked first: it is cheaper than looking for
/// a ready record, which a busy pool's every push would otherwise do.
fn wake_for_ready<T: Send + 'static, E: Send + 'static>(
    shared: &Arc<Shared<T, E>>,
    mut st: MutexGuard<'_, State<T, E>>,
    changed: Changed,
) {
    let ready = |st: &State<T, E>| match changed {
        // With no worker at all (none started yet, or starting one
        // failed), a record ready before may have nobody: look at all.
        Changed::Partition(p) if st.started > 0 => st.sched.is_ready(p),
        _ => st.sched.has_ready(),
    };
    let wake = if !st.paused && st.may_call() && ready(&st) {
        st.call_one()
    } else {
        Wake::Nobody
    };
    call(shared, wake, st);
}

/// Acts on `call_one`'s answer, releasing the lock. A worker is started
/// with the lock held, so a worker it starts is registered before the
/// starter can exit, and `finish` joins it.
fn call<T: Send + 'static, E: Send + 'static>(
    shared: &Arc<Shared<T, E>>,
    wake: Wake,
    mut st: MutexGuard<'_, State<T, E>>,
) {
    if wake == Wake::Start && !start_worker(shared) {
        // No thread to be had (a process limit): the busy workers take
        // the record when they finish.
        st.started -= 1;
        st.waking -= 1;
    }
    drop(st);
    if wake == Wake::Sleeper {
        shared.work.notify_one();
    }
}

/// Starts a worker thread (counted by the caller); false if the system
/// refused one.
fn start_worker<T: Send + 'static, E: Send + 'static>(shared: &Arc<Shared<T, E>>) -> bool {
    let worker_shared = shared.clone();
    let spawned = thread::Builder::new()
        .name("kafkafs-apply".into())
        .spawn(move || worker(&worker_shared));
    match spawned {
        Ok(handle) => {
            shared.workers.lock().push(handle);
            true
        }
        Err(e) => {
            tracing::warn!("starting an applier thread: {e}; going on with fewer");
            false
        }
    }
}

impl<T, E> Shared<T, E> {
    /// Everyone re-reads the state (stop, close, pause, resume, errors).
    fn wake_all(&self) {
        self.work.notify_all();
        self.idle.notify_all();
        self.progress.notify_all();
    }
}

/// A pool of applier threads over one scheduler.
pub struct Pool<T, E> {
    shared: Arc<Shared<T, E>>,
}

/// How a pool ended.
#[derive(Debug)]
pub struct PoolEnd<T, E> {
    /// The first error a worker reported, if any.
    pub error: Option<E>,
    /// The scheduler as left: anything still queued was not applied.
    pub scheduler: Scheduler<T>,
    /// Items applied.
    pub applied: u64,
}

impl<T: Send + 'static, E: Send + 'static> Pool<T, E> {
    /// A pool of up to `threads` workers applying what `sched` makes ready
    /// with `work`, each started when a record is ready and no worker is
    /// idle to take it; records that use a core run on at most one fewer
    /// thread than the machine has cores.
    pub fn start(threads: usize, sched: Scheduler<T>, work: Box<WorkFn<T, E>>) -> Self {
        Self::start_on(threads, default_cores(), sched, work)
    }

    /// `start`, with at most `cores` records that use a core applied at
    /// once.
    pub fn start_on(
        threads: usize,
        cores: usize,
        sched: Scheduler<T>,
        work: Box<WorkFn<T, E>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                sched,
                closing: false,
                stopping: false,
                paused: false,
                error: None,
                applied: 0,
                sleeping: 0,
                waking: 0,
                watchers: 0,
                wakeups: 0,
                started: 0,
                limit: threads.max(1),
                running: Running::default(),
                cores: cores.max(1),
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            progress: Condvar::new(),
            apply: Arc::new(work),
            workers: Mutex::new(Vec::new()),
        });
        Pool { shared }
    }

    /// A handle that queues records, usable from another thread.
    pub fn feeder(&self) -> Feeder<T, E> {
        Feeder {
            shared: self.shared.clone(),
        }
    }

    /// Queues a record for `partition` and wakes a worker.
    pub fn push(&self, partition: u32, item: Item<T>) {
        self.feeder().push(partition, item)
    }

    /// Looks at the scheduler (queue lengths, progress) under the lock.
    pub fn inspect<R>(&self, f: impl FnOnce(&Scheduler<T>) -> R) -> R {
        f(&self.lock().sched)
    }

    fn lock(&self) -> MutexGuard<'_, State<T, E>> {
        self.shared.state.lock()
    }

    /// True once a worker has failed (the pool is stopping).
    pub fn failed(&self) -> bool {
        self.lock().error.is_some()
    }

    /// Items applied so far.
    pub fn applied(&self) -> u64 {
        self.lock().applied
    }

    /// Times a worker woke from waiting for a record (each costs a
    /// context switch).
    pub fn wakeups(&self) -> u64 {
        self.lock().wakeups
    }

    /// Worker threads started so far (never more than the limit).
    pub fn started(&self) -> usize {
        self.lock().started
    }

    /// Stops taking records and waits until none is being applied: what is
    /// applied then is a cut closed under dependencies (every record was
    /// taken only once its dependencies were applied). Records keep being
    /// queued meanwhile. Undone by `resume`.
    pub fn pause(&self) {
        let mut st = self.lock();
        st.paused = true;
        while st.sched.in_flight() > 0 && !st.stopping {
            st = self.shared.idle.wait(st);
        }
    }

    /// Takes records again after `pause`: the sleepers look again, and
    /// what was queued meanwhile gets a worker if none sleeps (none may
    /// have been started yet).
    pub fn resume(&self) {
        let mut st = self.lock();
        st.paused = false;
        wake_for_ready(&self.shared, st, Changed::Any);
        self.shared.wake_all();
    }

    /// No more input: apply everything that can run, then stop.
    pub fn close(self) -> PoolEnd<T, E> {
        let mut st = self.lock();
        st.closing = true;
        st.paused = false;
        wake_for_ready(&self.shared, st, Changed::Any);
        self.finish()
    }

    /// Stop as soon as the records being applied are done.
    pub fn stop(self) -> PoolEnd<T, E> {
        self.lock().stopping = true;
        self.finish()
    }

    fn finish(self) -> PoolEnd<T, E> {
        self.shared.wake_all();
        // A worker may start another until it sees the pool closing: join
        // until no new one was registered.
        loop {
            let started = std::mem::take(&mut *self.shared.workers.lock());
            if started.is_empty() {
                break;
            }
            for w in started {
                // A worker that panicked has already released the lock;
                // the records it held stay unapplied and are reported below.
                let _ = w.join();
            }
        }
        let mut st = self.shared.state.lock();
        let sched = std::mem::replace(&mut st.sched, Scheduler::new(&[]));
        PoolEnd {
            error: st.error.take(),
            scheduler: sched,
            applied: st.applied,
        }
    }
}

/// Queues records into a running pool.
pub struct Feeder<T, E> {
    shared: Arc<Shared<T, E>>,
}

impl<T, E> Clone for Feeder<T, E> {
    fn clone(&self) -> Self {
        Feeder {
            shared: self.shared.clone(),
        }
    }
}

impl<T: Send + 'static, E: Send + 'static> Feeder<T, E> {
    /// Looks at the scheduler under the lock.
    pub fn inspect<R>(&self, f: impl FnOnce(&Scheduler<T>) -> R) -> R {
        f(&self.shared.state.lock().sched)
    }

    /// Waits until `done` holds of the scheduler (checked after every
    /// completion), the pool stops, or `timeout` passes; returns whether
    /// `done` holds.
    pub fn wait_until(&self, timeout: Duration, done: impl Fn(&Scheduler<T>) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock();
        loop {
            if done(&st.sched) {
                return true;
            }
            let now = Instant::now();
            if st.stopping || now >= deadline {
                return false;
            }
            st.watchers += 1;
            st = self.shared.progress.wait_timeout(st, deadline - now);
            st.watchers -= 1;
        }
    }

    /// Queues an item of `partition`.
    pub fn push(&self, partition: u32, item: Item<T>) {
        let mut st = self.shared.state.lock();
        st.sched.push(partition, item);
        wake_for_ready(&self.shared, st, Changed::Partition(partition));
    }

    /// Queues an item of `partition`; if nothing is being applied and it
    /// is ready at once, hands it back to the caller to apply itself
    /// (`Claim::run`) instead of waking a worker: one thread's chain of
    /// calls then costs no hand-off. At most one record is claimed at a
    /// time (claims run only while nothing else does), so a caller stuck
    /// in a claim holds no more than one thread.
    pub fn push_or_claim(&self, partition: u32, item: Item<T>) -> Option<Claim<T, E>> {
        let mut st = self.shared.state.lock();
        st.sched.push(partition, item);
        let may_claim = !(st.paused || st.stopping || st.closing)
            && st.sched.in_flight() == 0
            && st.sched.queued_in(partition) == 1;
        if let Some(item) = may_claim.then(|| st.sched.take_from(partition)).flatten() {
            st.running.begin(partition, item.blocks);
            return Some(Claim {
                shared: self.shared.clone(),
                partition,
                item: Some(item),
            });
        }
        wake_for_ready(&self.shared, st, Changed::Partition(partition));
        None
    }
}

/// A record its pusher took to apply on its own thread
/// (`Feeder::push_or_claim`). Counted in flight like a worker's; dropped
/// without running, it goes back to the head of its partition.
pub struct Claim<T: Send + 'static, E: Send + 'static> {
    shared: Arc<Shared<T, E>>,
    partition: u32,
    item: Option<Item<T>>,
}

impl<T: Send + 'static, E: Send + 'static> Claim<T, E> {
    /// Applies the record as a worker would and reports it; wakes a
    /// worker for what it made ready (the caller has its own answer to
    /// give, so it takes nothing more).
    pub fn run(mut self) {
        let Some(item) = self.item.take() else {
            return;
        };
        let st = apply_one(&self.shared, self.partition, item);
        wake_for_ready(&self.shared, st, Changed::Any);
    }
}

impl<T: Send + 'static, E: Send + 'static> Drop for Claim<T, E> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            let mut st = self.shared.state.lock();
            st.running.end(self.partition);
            st.sched.give_back(self.partition, item);
            wake_for_ready(&self.shared, st, Changed::Any);
        }
    }
}

/// Applies a record taken from the scheduler (without the lock) and
/// reports it; returns with the lock held.
fn apply_one<T, E>(
    shared: &Shared<T, E>,
    p: u32,
    mut item: Item<T>,
) -> MutexGuard<'_, State<T, E>> {
    let result = (shared.apply)(p, &mut item);
    let mut st = shared.state.lock();
    st.running.end(p);
    match result {
        Ok(()) => {
            st.sched.complete(p);
            st.applied += 1;
            if st.watchers > 0 {
                shared.progress.notify_all();
            }
        }
        Err(e) => {
            st.sched.give_back(p, item);
            if st.error.is_none() {
                st.error = Some(e);
            }
            st.stopping = true;
            shared.wake_all();
        }
    }
    if st.sched.in_flight() == 0 {
        // A pause waits for this; closing workers may now exit. Nobody
        // else is woken: a chain of records empties the pool after every
        // record, and waking every idle worker each time costs more than
        // applying (more threads than cores lost to one thread).
        if st.paused {
            shared.idle.notify_all();
        }
        if st.closing {
            shared.work.notify_all();
        }
    }
    st
}

fn worker<T: Send + 'static, E: Send + 'static>(shared: &Arc<Shared<T, E>>) {
    let mut st = shared.state.lock();
    // Started for a ready record, like a woken worker: arrived.
    st.waking = st.waking.saturating_sub(1);
    loop {
        if st.stopping {
            break;
        }
        if let Some((p, item)) = st.take() {
            let wake = if st.may_call() && st.sched.has_ready() {
                st.call_one()
            } else {
                Wake::Nobody
            };
            call(shared, wake, st);
            st = apply_one(shared, p, item);
            // Records this one unblocked: this worker takes one at once,
            // and wakes another if more are ready (above).
            continue;
        }
        if st.closing && st.sched.in_flight() == 0 {
            // Nothing ready and nothing being applied: nothing more can
            // become ready without new input.
            break;
        }
        st.sleeping += 1;
        st = shared.work.wait(st);
        st.wakeups += 1;
        st.sleeping -= 1;
        st.waking = st.waking.saturating_sub(1);
    }
    drop(st);
    shared.wake_all();
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::record::Dep;
    use crate::replica::scheduler::item;
    use std::sync::Mutex as StdMutex;

    /// `item`, marked as one that blocks (an fsync).
    fn blocking(item: Item<u64>) -> Item<u64> {
        Item {
            blocks: true,
            ..item
        }
    }

    #[test]
    fn pool_applies_everything_respecting_dependencies() {
        for threads in [1, 2, 4, 8] {
            let log = Arc::new(StdMutex::new(Vec::new()));
            let l2 = log.clone();
            let work: Box<WorkFn<u64, String>> = Box::new(move |_p, item: &mut Item<u64>| {
                l2.lock().unwrap().push(item.seq);
                Ok(())
            });
            let pool = Pool::start(threads, Scheduler::new(&[0, 0, 0]), work);
            // seq 1..=300 round-robin over 3 partitions; each depends on the
            // previous record in the previous partition.
            for seq in 1..=300u64 {
                let p = (seq % 3) as u32;
                let deps = if seq > 1 {
                    vec![Dep {
                        partition: ((seq - 1) % 3) as u32,
                        seq: seq - 1,
                    }]
                } else {
                    vec![]
                };
                pool.push(
                    p,
                    Item {
                        blocks: false,
                        seq,
                        deps,
                        payload: seq,
                    },
                );
            }
            let end = pool.close();
            assert!(end.error.is_none());
            assert_eq!(end.applied, 300);
            // The chain forces a total order.
            assert_eq!(*log.lock().unwrap(), (1..=300).collect::<Vec<_>>());
        }
    }

    /// Workers are woken one at a time; no record is ever left ready with
    /// every worker asleep (checked without a close, which wakes them all).
    #[test]
    fn no_record_is_stranded_by_waking_one_worker() {
        for round in 0..200u64 {
            let work: Box<WorkFn<u64, String>> = Box::new(move |_p, item: &mut Item<u64>| {
                if (item.seq + round) % 7 == 0 {
                    std::thread::yield_now();
                }
                Ok(())
            });
            let partitions = 1 + (round % 5) as u32;
            let pool = Pool::start(
                1 + (round % 8) as usize,
                Scheduler::new(&vec![0; partitions as usize]),
                work,
            );
            for seq in 1..=50u64 {
                let p = (seq % partitions as u64) as u32;
                let deps = if seq % 3 == 0 {
                    vec![Dep {
                        partition: ((seq + 1) % partitions as u64) as u32,
                        seq: seq - 1,
                    }]
                } else {
                    vec![]
                };
                pool.push(
                    p,
                    Item {
                        blocks: false,
                        seq,
                        deps,
                        payload: seq,
                    },
                );
                if seq % 10 == 0 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                }
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while pool.applied() < 50 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "round {round}: {} of 50 applied, the rest stranded",
                    pool.applied()
                );
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            assert_eq!(pool.close().applied, 50);
        }
    }

    /// A chain of records empties the pool after every record: each must
    /// wake one worker, not every idle one (8 threads on 2 cores lost to
    /// one thread when all seven idle workers woke per record).
    #[test]
    fn an_emptied_pool_wakes_no_idle_worker() {
        let work: Box<WorkFn<u64, String>> = Box::new(|_p, _item: &mut Item<u64>| Ok(()));
        let pool = Pool::start(8, Scheduler::new(&[0]), work);
        let feeder = pool.feeder();
        let records = 500u64;
        for seq in 1..=records {
            pool.push(
                0,
                Item {
                    blocks: false,
                    seq,
                    deps: vec![],
                    payload: seq,
                },
            );
            assert!(feeder.wait_until(Duration::from_secs(10), |s| s.applied_seq(0) == seq));
        }
        let wakeups = pool.wakeups();
        assert_eq!(pool.close().applied, records);
        assert!(
            wakeups <= 2 * records,
            "{wakeups} wake-ups for {records} records pushed one at a time"
        );
    }

    /// One writer's chain never has two records ready at once: it runs on
    /// one worker whatever the limit, as with `--threads 1` (the pool used
    /// to start every thread up front, and a chain then moved between
    /// them, each hand-off a wake-up).
    #[test]
    fn a_chain_runs_on_one_worker_whatever_the_limit() {
        let threads = Arc::new(StdMutex::new(std::collections::HashSet::new()));
        let seen = threads.clone();
        let work: Box<WorkFn<u64, String>> = Box::new(move |_p, _item: &mut Item<u64>| {
            seen.lock().unwrap().insert(std::thread::current().id());
            Ok(())
        });
        let pool = Pool::start(8, Scheduler::new(&[0, 0, 0]), work);
        for seq in 1..=300u64 {
            let deps = (seq > 1).then(|| (((seq - 1) % 3) as u32, seq - 1));
            pool.push((seq % 3) as u32, item(seq, deps.as_slice()));
            if seq % 50 == 0 {
                // Let the worker catch up and sleep, so pushes wake it.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let started = pool.started();
        assert_eq!(pool.close().applied, 300);
        assert_eq!(started, 1, "a chain started {started} workers");
        assert_eq!(threads.lock().unwrap().len(), 1);
    }

    /// Records ready together that block (fsyncs) start workers up to
    /// the limit, and no more, whatever the cores.
    #[test]
    fn ready_records_start_workers_up_to_the_limit() {
        let limit = 4;
        let running = Arc::new((StdMutex::new((0usize, 0usize)), std::sync::Condvar::new()));
        let r2 = running.clone();
        let work: Box<WorkFn<u64, String>> = Box::new(move |_p, _item: &mut Item<u64>| {
            let (lock, cv) = &*r2;
            let mut g = lock.lock().unwrap();
            g.0 += 1;
            g.1 = g.1.max(g.0);
            cv.notify_all();
            // Hold the record until `limit` run at once (or give up).
            let (mut g, _) = cv
                .wait_timeout_while(g, Duration::from_secs(10), |g| g.1 < limit)
                .unwrap();
            g.0 -= 1;
            Ok(())
        });
        let pool = Pool::start_on(limit, 1, Scheduler::new(&[0; 8]), work);
        for seq in 1..=16u64 {
            pool.push((seq % 8) as u32, blocking(item(seq, &[])));
        }
        let end = pool.close();
        assert_eq!(end.applied, 16);
        let most_at_once = running.0.lock().unwrap().1;
        assert_eq!(most_at_once, limit, "records applied at once");
    }

    /// Records that use a core run on no more threads than the cores
    /// allow, however many are ready and however many threads may be
    /// started (8 threads on 2 cores lost to one on small files).
    #[test]
    fn records_that_use_a_core_run_on_at_most_the_cores() {
        let running = Arc::new(StdMutex::new((0usize, 0usize)));
        let r2 = running.clone();
        let work: Box<WorkFn<u64, String>> = Box::new(move |_p, _item: &mut Item<u64>| {
            {
                let mut g = r2.lock().unwrap();
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            // Busy for a while, well under the stall time.
            let t = Instant::now();
            while t.elapsed() < Duration::from_micros(200) {
                std::hint::spin_loop();
            }
            r2.lock().unwrap().0 -= 1;
            Ok(())
        });
        let pool = Pool::start_on(8, 1, Scheduler::new(&[0; 8]), work);
        for seq in 1..=200u64 {
            pool.push((seq % 8) as u32, item(seq, &[]));
        }
        assert_eq!(pool.close().applied, 200);
        assert_eq!(running.lock().unwrap().1, 1, "records using a core at once");
    }

    /// A record applied past the stall time no longer counts as using a
    /// core: a record pushed meanwhile gets another worker and finishes
    /// first.
    #[test]
    fn a_stalled_record_lets_another_run() {
        let done = Arc::new(StdMutex::new(Vec::new()));
        let d2 = done.clone();
        let work: Box<WorkFn<u64, String>> = Box::new(move |_p, item: &mut Item<u64>| {
            if item.seq == 1 {
                std::thread::sleep(STALLED_AFTER * 50);
            }
            d2.lock().unwrap().push(item.seq);
            Ok(())
        });
        let pool = Pool::start_on(2, 1, Scheduler::new(&[0, 0]), work);
        pool.push(0, item(1, &[]));
        std::thread::sleep(STALLED_AFTER * 5);
        pool.push(1, item(2, &[]));
        assert_eq!(pool.close().applied, 2);
        assert_eq!(*done.lock().unwrap(), vec![2, 1]);
    }

    /// A record pushed while nothing runs is handed to its pusher, which
    /// applies it on its own thread; one pushed while another is being
    /// applied, or behind one, or during a pause, goes to the workers.
    #[test]
    fn an_idle_pool_lets_the_pusher_apply_its_record() {
        let ran_on = Arc::new(StdMutex::new(Vec::new()));
        let log = ran_on.clone();
        let work: Box<WorkFn<u64, String>> = Box::new(move |_p, item: &mut Item<u64>| {
            log.lock()
                .unwrap()
                .push((item.seq, std::thread::current().id()));
            Ok(())
        });
        let pool = Pool::start(2, Scheduler::new(&[0, 0]), work);
        let feeder = pool.feeder();
        let me = std::thread::current().id();
        let claim = feeder
            .push_or_claim(0, item(1, &[]))
            .expect("idle: claimed");
        // Claimed and not run yet: the record is in flight, so nothing
        // else is claimed, and its dependant waits for it.
        assert!(feeder.push_or_claim(1, item(2, &[])).is_none());
        assert!(feeder.push_or_claim(0, item(3, &[])).is_none());
        claim.run();
        assert!(feeder.wait_until(Duration::from_secs(10), |s| s.is_idle()));
        // Behind a queued record of its partition: not claimed.
        pool.pause();
        assert!(feeder.push_or_claim(1, item(4, &[])).is_none(), "paused");
        pool.resume();
        assert!(feeder.wait_until(Duration::from_secs(10), |s| s.is_idle()));
        // Not ready (a dependency not applied): not claimed, not lost.
        assert!(feeder.push_or_claim(1, item(6, &[(0, 5)])).is_none());
        let claim = feeder.push_or_claim(0, item(5, &[])).expect("idle again");
        drop(claim); // dropped unrun: back to the workers
        let end = pool.close();
        assert_eq!(end.applied, 6);
        let ran = ran_on.lock().unwrap().clone();
        let seqs: Vec<u64> = ran.iter().map(|(s, _)| *s).collect();
        let pos = |x| seqs.iter().position(|&s| s == x).unwrap();
        for (a, b) in [(1, 3), (5, 6)] {
            assert!(pos(a) < pos(b), "{b} ran before {a}: {seqs:?}");
        }
        for (seq, thread) in &ran {
            // Only the claim that ran ran on the pusher's thread.
            assert_eq!(*thread == me, *seq == 1, "{ran:?}");
        }
    }

    /// Records queued while paused, before any worker was started, are
    /// applied after the resume, and by a close without a resume.
    #[test]
    fn records_queued_before_any_worker_are_applied_after_a_pause() {
        for resume in [true, false] {
            let work: Box<WorkFn<u64, String>> = Box::new(|_p, _item: &mut Item<u64>| Ok(()));
            let pool = Pool::start(4, Scheduler::new(&[0, 0]), work);
            pool.pause();
            for seq in 1..=10u64 {
                pool.push((seq % 2) as u32, item(seq, &[]));
            }
            assert_eq!(pool.started(), 0, "paused: nothing to take yet");
            if resume {
                pool.resume();
                let feeder = pool.feeder();
                assert!(
                    feeder.wait_until(Duration::from_secs(10), |s| s.is_idle()),
                    "queued records stranded after the resume"
                );
            }
            assert_eq!(pool.close().applied, 10, "resume: {resume}");
        }
    }

    #[test]
    fn pause_holds_a_cut_until_resumed() {
        let work: Box<WorkFn<u64, String>> = Box::new(|_p, _item: &mut Item<u64>| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(())
        });
        let pool = Pool::start(2, Scheduler::new(&[0, 0]), work);
        for seq in 1..=200u64 {
            pool.push(
                (seq % 2) as u32,
                Item {
                    blocks: false,
                    seq,
                    deps: vec![],
                    payload: seq,
                },
            );
        }
        pool.pause();
        let at_cut = pool.applied();
        assert_eq!(pool.inspect(|s| s.in_flight()), 0);
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert_eq!(pool.applied(), at_cut, "a paused pool applied records");
        pool.resume();
        let end = pool.close();
        assert_eq!(end.applied, 200);
    }

    #[test]
    fn error_stops_pool_and_keeps_record() {
        let work: Box<WorkFn<u64, String>> = Box::new(|_p, item: &mut Item<u64>| {
            if item.seq == 3 {
                Err(format!("boom at {}", item.seq))
            } else {
                Ok(())
            }
        });
        let pool = Pool::start(2, Scheduler::new(&[0]), work);
        for seq in 1..=5 {
            pool.push(
                0,
                Item {
                    blocks: false,
                    seq,
                    deps: vec![],
                    payload: seq,
                },
            );
        }
        let end = pool.close();
        assert_eq!(end.error.as_deref(), Some("boom at 3"));
        assert_eq!(end.applied, 2);
        assert_eq!(end.scheduler.queued_in(0), 3, "records 3..=5 remain");
        assert_eq!(end.scheduler.applied_seq(0), 2);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! Model-checked with `RUSTFLAGS="--cfg loom" cargo test --lib --release loom`.
    use super::*;
    use crate::record::Dep;
    use crate::replica::scheduler::item;

    /// Runs `records` (partition, item) through a pool of `threads` workers
    /// with a concurrent feeder, and checks that every record was applied
    /// exactly once, after its dependencies and its partition predecessors.
    fn check(threads: usize, partitions: usize, records: Vec<(u32, Item<u64>)>) {
        let n = records.len();
        let deps: Vec<(u64, u32, Vec<Dep>)> = records
            .iter()
            .map(|(p, i)| (i.seq, *p, i.deps.clone()))
            .collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let work: Box<WorkFn<u64, ()>> = Box::new(move |p, item: &mut Item<u64>| {
            l2.lock().push((p, item.seq));
            Ok(())
        });
        // The test thread feeds while the workers run; every worker may
        // use a core.
        let pool = Pool::start_on(threads, threads, Scheduler::new(&vec![0; partitions]), work);
        for (p, it) in records {
            pool.push(p, it);
        }
        let end = pool.close();
        assert!(end.error.is_none());
        assert_eq!(end.applied as usize, n);
        let log = log.lock().clone();
        let pos = |s: u64| log.iter().position(|&(_, x)| x == s).unwrap();
        for (seq, p, ds) in deps {
            for d in ds {
                assert!(
                    pos(d.seq) < pos(seq),
                    "{seq} ran before its dependency {}",
                    d.seq
                );
            }
            for (q, other) in log.iter() {
                if *q == p && *other < seq {
                    assert!(pos(*other) < pos(seq));
                }
            }
        }
    }

    use crate::sync::bounded_model as model;

    /// Work that logs the sequence numbers it applies, and the log.
    fn logging_work() -> (Arc<Mutex<Vec<u64>>>, Box<WorkFn<u64, ()>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l2 = log.clone();
        let work: Box<WorkFn<u64, ()>> = Box::new(move |_p, item: &mut Item<u64>| {
            l2.lock().push(item.seq);
            Ok(())
        });
        (log, work)
    }

    #[test]
    fn loom_barrier_across_two_partitions() {
        // seq 3 in partition 1 is a barrier after seq 1 (p0) and seq 2 (p1);
        // seq 4 in p0 touches the same path, so it depends on the barrier.
        model(|| {
            check(
                2,
                2,
                vec![
                    (0, item(1, &[])),
                    (1, item(2, &[])),
                    (1, item(3, &[(0, 1)])),
                    (0, item(4, &[(1, 3)])),
                ],
            )
        });
    }

    #[test]
    fn loom_barrier_across_three_partitions() {
        model(|| {
            check(
                2,
                3,
                vec![
                    (0, item(1, &[])),
                    (1, item(2, &[])),
                    (2, item(3, &[(0, 1), (1, 2)])),
                ],
            )
        });
    }

    #[test]
    fn loom_dependency_chain_across_partitions() {
        model(|| {
            check(
                2,
                3,
                vec![
                    (2, item(3, &[(1, 2)])),
                    (1, item(2, &[(0, 1)])),
                    (0, item(1, &[])),
                ],
            )
        });
    }

    /// A pause waits for the records being applied and lets no other
    /// start until the resume; everything is applied in the end.
    #[test]
    fn loom_pause_is_a_cut() {
        model(|| {
            let work: Box<WorkFn<u64, ()>> = Box::new(|_p, _item: &mut Item<u64>| Ok(()));
            let pool = Pool::start(2, Scheduler::new(&[0, 0]), work);
            pool.push(0, item(1, &[]));
            pool.push(1, item(2, &[(0, 1)]));
            pool.pause();
            let at_cut = pool.applied();
            assert_eq!(pool.inspect(|s| s.in_flight()), 0);
            pool.push(0, item(3, &[]));
            assert_eq!(pool.applied(), at_cut);
            pool.resume();
            let end = pool.close();
            assert_eq!(end.applied, 3);
        });
    }

    /// A pusher's claim runs while a worker applies what the claim
    /// unblocks and another thread pushes: everything is applied once, in
    /// dependency order.
    #[test]
    fn loom_a_claim_races_a_worker_and_a_push() {
        model(|| {
            let (log, work) = logging_work();
            let pool = Pool::start(1, Scheduler::new(&[0, 0]), work);
            let feeder = pool.feeder();
            let other = {
                let feeder = pool.feeder();
                thread::spawn(move || {
                    if let Some(c) = feeder.push_or_claim(1, item(2, &[(0, 1)])) {
                        c.run();
                    }
                })
            };
            if let Some(c) = feeder.push_or_claim(0, item(1, &[])) {
                c.run();
            }
            other.join().unwrap();
            let end = pool.close();
            assert_eq!(end.applied, 2);
            assert_eq!(*log.lock(), vec![1, 2]);
        });
    }

    /// Two independent records: the second finds the first worker busy
    /// and starts another, racing the close (whose drain may start it).
    #[test]
    fn loom_a_busy_worker_makes_the_pool_start_another() {
        model(|| check(2, 2, vec![(0, item(1, &[])), (1, item(2, &[]))]));
    }

    /// One core for two threads: a record that blocks runs beside one
    /// that uses the core, the dependant of both runs after them.
    #[test]
    fn loom_a_blocking_record_runs_beside_the_cores_share() {
        model(|| {
            let (log, work) = logging_work();
            let pool = Pool::start_on(2, 1, Scheduler::new(&[0, 0, 0]), work);
            pool.push(0, item(1, &[]));
            pool.push(
                1,
                Item {
                    blocks: true,
                    ..item(2, &[])
                },
            );
            pool.push(2, item(3, &[(0, 1), (1, 2)]));
            let end = pool.close();
            assert_eq!(end.applied, 3);
            assert_eq!(log.lock().last(), Some(&3));
        });
    }

    #[test]
    fn loom_one_thread_owns_several_partitions() {
        model(|| {
            check(
                1,
                2,
                vec![
                    (1, item(2, &[(0, 1)])),
                    (0, item(1, &[])),
                    (0, item(3, &[(1, 2)])),
                ],
            )
        });
    }
}

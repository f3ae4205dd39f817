//! The reading side of a slave: decodes messages, holds a partition on a
//! bad record, keeps records back (--delay) or stops before them
//! (--until), and feeds the applier pool.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::periodic::{Chores, PollErrors, Snapshots};
use super::start::record_time;
use super::start::Opened;
use super::{SlaveConfig, Until};
use crate::error::{JournalError, ReplicaError};
use crate::journal::{is_transient, Message, Source};
use crate::op::Timestamp;
use crate::replica::entry::{apply_entry, Entry, WorkError};
use crate::replica::pool::Pool;
use crate::replica::reader::RecordReader;
use crate::replica::sleep_unless_stopped;
use crate::replica::state::ReplicaState;

/// The reading side of a slave: decodes messages and feeds the pool.
pub(super) struct Follower {
    pub(super) reader: RecordReader,
    next_read: Vec<i64>,
    /// Per partition: why reading it stopped (a bad record, a gap): what
    /// depends on it waits, everything else goes on.
    held: Vec<Option<ReplicaError>>,
    /// Records applied outside the pool (interrupted ones), then in total.
    pub(super) applied_first: u64,
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
    /// A follower resuming at the opened replica's positions; `--until` a
    /// record is resolved to that record's time here.
    pub(super) fn new(
        config: &SlaveConfig,
        source: &mut dyn Source,
        opened: &Opened,
    ) -> Result<Self, ReplicaError> {
        let partitions = opened.positions.len();
        let until = match config.until {
            Some(Until::Record(p, offset)) => Some(record_time(config, source, p, offset)?),
            Some(Until::Time(t)) => Some(t),
            None => None,
        };
        if let Some(t) = until {
            tracing::info!("replica stops at the journal's state as of {}", t.rfc3339());
        }
        Ok(Follower {
            reader: RecordReader::new(
                &config.topic,
                config.max_record_bytes,
                config.skip_bad_records,
                config.skip_records.clone(),
                &opened.positions,
            ),
            next_read: opened.positions.iter().map(|p| p.next_offset).collect(),
            held: (0..partitions).map(|_| None).collect(),
            applied_first: 0,
            until,
            beyond: vec![false; partitions],
            delay: config.delay,
            delayed: (0..partitions).map(|_| VecDeque::new()).collect(),
        })
    }

    /// Finishes the records interrupted by the last stop, alone: they were
    /// in flight together (so they do not conflict), and nothing else may
    /// run before them. Returns the other messages read meanwhile, or
    /// `None` when a stop was requested.
    pub(super) fn finish_interrupted(
        &mut self,
        ctx: &ReplicaState,
        source: &mut dyn Source,
        intents: &std::collections::BTreeMap<u32, crate::replica::checkpoint::Intent>,
        stop: &AtomicBool,
    ) -> Result<Option<Vec<Message>>, ReplicaError> {
        let mut stash = Vec::new();
        let mut pending = intents.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if Instant::now() > deadline {
                return Err(ReplicaError::Stalled(format!(
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
                return Err(ReplicaError::Stalled(format!(
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
    pub(super) fn push(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        m: Message,
    ) -> Result<(), ReplicaError> {
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
    pub(super) fn schedule(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        p: u32,
        e: Entry,
    ) -> Result<(), ReplicaError> {
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
    pub(super) fn release_delayed(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
    ) -> Result<(), ReplicaError> {
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
    pub(super) fn blocked(&self, p: usize) -> bool {
        self.held[p].is_some() || self.beyond[p] || !self.delayed[p].is_empty()
    }

    pub(super) fn held_mask(&self) -> Vec<bool> {
        (0..self.held.len())
            .map(|p| self.held[p].is_some() || self.beyond[p])
            .collect()
    }

    /// Reads and applies until caught up (if asked), stopped, a worker
    /// fails, or every partition that is not held has been applied as far
    /// as it can be while another is held. Returns what stopped it.
    pub(super) fn follow(
        &mut self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        opened: &Opened,
        snaps: &mut Snapshots,
        stop: &AtomicBool,
    ) -> Option<ReplicaError> {
        let mut paused = vec![false; source.partitions() as usize];
        let mut chores = Chores::new(config);
        let mut poll_errors = PollErrors::default();
        loop {
            if stop.load(Ordering::Relaxed) || pool.failed() {
                return None;
            }
            let flow = self
                .backpressure(config, source, pool, &mut paused)
                .and_then(|()| self.release_delayed(pool, source));
            if let Err(e) = flow {
                return Some(e);
            }
            if let Some(end) = self.step(config, source, pool, &mut poll_errors, stop) {
                return end;
            }
            chores.tick(config, source, pool, opened, snaps, self, stop);
        }
    }

    /// Reads one message, or finds there is none: `Some(why)` ends
    /// following (`Some(None)`: done without an error).
    fn step(
        &mut self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        poll_errors: &mut PollErrors,
        stop: &AtomicBool,
    ) -> Option<Option<ReplicaError>> {
        let partitions = source.partitions();
        match source.poll(Duration::from_millis(20)) {
            Ok(Some(m)) if m.partition < partitions => self.push(pool, source, m).err().map(Some),
            Ok(Some(_)) => None,
            Ok(None) => match self.done(config, source, pool) {
                Ok(true) => Some(self.first_held()),
                Ok(false) => None,
                Err(e) if is_transient(&e) => None,
                Err(e) => Some(Some(e.into())),
            },
            Err(e) if is_transient(&e) => {
                poll_errors.note(&e);
                sleep_unless_stopped(stop, Duration::from_millis(200));
                None
            }
            Err(e) => Some(Some(e.into())),
        }
    }

    /// The next offset to read per partition.
    pub(super) fn next_read(&self) -> &[i64] {
        &self.next_read
    }

    /// Pauses a partition with too many records queued, resumes it once
    /// drained: a full partition never blocks others.
    pub(super) fn backpressure(
        &self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        paused: &mut [bool],
    ) -> Result<(), ReplicaError> {
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
    pub(super) fn done(
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
    pub(super) fn first_held(&mut self) -> Option<ReplicaError> {
        self.held.iter_mut().find_map(Option::take)
    }
}

/// Records with a time after this are younger than `delay`.
pub(super) fn delay_horizon(delay: Duration) -> Timestamp {
    let nanos = Timestamp::now().as_nanos() - delay.as_nanos() as i128;
    Timestamp::new(
        nanos.div_euclid(1_000_000_000) as i64,
        nanos.rem_euclid(1_000_000_000) as u32,
    )
}

//! An in-process journal with Kafka's ordering semantics (per-partition
//! offsets, readers at their own positions) and fault injection: failed
//! sends, withheld acknowledgements (a broker that stops answering).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::{DeliveryCallback, Message, Sink, Source};
use crate::error::JournalError;
use crate::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct State {
    parts: Vec<Vec<Message>>,
    /// Number of upcoming sends that fail with an injected error.
    fail_sends: u64,
    /// While true, records are stored but acknowledgements are withheld.
    hold_acks: bool,
    held: Vec<(DeliveryCallback, Result<i64, JournalError>)>,
    /// While true, sends are refused outright (nothing is stored).
    down: bool,
    /// Number of upcoming sends that are neither stored nor acknowledged
    /// until `land_parked` (a produce request still on the wire).
    park_sends: u64,
    parked: Vec<(u32, Vec<u8>, Vec<u8>, DeliveryCallback)>,
    /// Writers handed out (`Journal::sink`).
    sinks_made: u64,
}

/// A topic held in memory. Cloning gives another handle to the same topic.
#[derive(Clone)]
pub struct MemoryJournal {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl MemoryJournal {
    /// An empty journal of `partitions` partitions.
    pub fn new(partitions: u32) -> Self {
        let state = State {
            parts: (0..partitions.max(1)).map(|_| Vec::new()).collect(),
            ..State::default()
        };
        MemoryJournal {
            inner: Arc::new((Mutex::new(state), Condvar::new())),
        }
    }

    /// A reader with its own positions.
    pub fn source(&self) -> MemorySource {
        let n = self.inner.0.lock().parts.len();
        MemorySource {
            journal: self.clone(),
            pos: vec![None; n],
            paused: HashSet::new(),
            next_part: 0,
            limits: None,
        }
    }

    /// A reader that sees only the first `limits[p]` records of each
    /// partition (as if the rest had not arrived yet).
    pub fn source_limited(&self, limits: Vec<i64>) -> MemorySource {
        let mut s = self.source();
        s.limits = Some(limits);
        s
    }

    /// How many writers were handed out (`Journal::sink`): each stands for
    /// a producer, which Kafka makes wait for its id before its first
    /// delivery.
    pub fn sinks_made(&self) -> u64 {
        self.inner.0.lock().sinks_made
    }

    /// Counts a writer handed out.
    pub(crate) fn note_sink(&self) {
        self.inner.0.lock().sinks_made += 1;
    }

    /// Makes the next `n` sends fail (delivery callback gets an error).
    pub fn fail_next_sends(&self, n: u64) {
        self.inner.0.lock().fail_sends = n;
    }

    /// Withholds (true) or releases (false) acknowledgements.
    pub fn hold_acks(&self, hold: bool) {
        let held = {
            let mut s = self.inner.0.lock();
            s.hold_acks = hold;
            if hold {
                Vec::new()
            } else {
                std::mem::take(&mut s.held)
            }
        };
        for (cb, r) in held {
            cb(r);
        }
    }

    /// The next `n` sends stay "on the wire": not stored, not acknowledged,
    /// until `land_parked`.
    pub fn park_next_sends(&self, n: u64) {
        self.inner.0.lock().park_sends = n;
    }

    /// Stores the parked sends now (late), acknowledging them; returns
    /// their offsets.
    pub fn land_parked(&self) -> Vec<i64> {
        let parked = std::mem::take(&mut self.inner.0.lock().parked);
        parked
            .into_iter()
            .map(|(p, key, payload, done)| {
                let offset = self.append_raw(p, &key, &payload);
                done(Ok(offset));
                offset
            })
            .collect()
    }

    /// Simulates an unreachable journal: sends are refused.
    pub fn set_down(&self, down: bool) {
        self.inner.0.lock().down = down;
    }

    /// Every message of a partition (for tests).
    pub fn messages(&self, partition: u32) -> Vec<Message> {
        self.inner
            .0
            .lock()
            .parts
            .get(partition as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// Appends raw bytes (for tests of corrupt records).
    pub fn append_raw(&self, partition: u32, key: &[u8], payload: &[u8]) -> i64 {
        let mut s = self.inner.0.lock();
        let part = &mut s.parts[partition as usize];
        let offset = part.len() as i64;
        part.push(Message {
            partition,
            offset,
            key: key.to_vec(),
            payload: payload.to_vec(),
            timestamp_ms: Some(now_ms()),
        });
        drop(s);
        self.inner.1.notify_all();
        offset
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Sink for MemoryJournal {
    fn partitions(&self) -> u32 {
        self.inner.0.lock().parts.len() as u32
    }

    fn send(
        &self,
        partition: u32,
        key: &[u8],
        payload: &[u8],
        _headers: &[(&str, &[u8])],
        done: DeliveryCallback,
    ) -> Result<(), JournalError> {
        let mut s = self.inner.0.lock();
        let count = s.parts.len() as u32;
        if partition >= count {
            return Err(JournalError::NoSuchPartition { partition, count });
        }
        if s.down {
            return Err(JournalError::Injected("journal is down".into()));
        }
        if s.park_sends > 0 {
            s.park_sends -= 1;
            s.parked
                .push((partition, key.to_vec(), payload.to_vec(), done));
            return Ok(());
        }
        let result = if s.fail_sends > 0 {
            s.fail_sends -= 1;
            Err(JournalError::Injected("send failed".into()))
        } else {
            let part = &mut s.parts[partition as usize];
            let offset = part.len() as i64;
            part.push(Message {
                partition,
                offset,
                key: key.to_vec(),
                payload: payload.to_vec(),
                timestamp_ms: Some(now_ms()),
            });
            Ok(offset)
        };
        if s.hold_acks {
            s.held.push((done, result));
            drop(s);
            self.inner.1.notify_all();
            return Ok(());
        }
        drop(s);
        self.inner.1.notify_all();
        done(result);
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> Result<(), JournalError> {
        if self.inner.0.lock().held.is_empty() {
            Ok(())
        } else {
            Err(JournalError::Timeout(timeout))
        }
    }
}

/// A reader of a `MemoryJournal`.
pub struct MemorySource {
    journal: MemoryJournal,
    pos: Vec<Option<i64>>,
    paused: HashSet<u32>,
    next_part: usize,
    limits: Option<Vec<i64>>,
}

impl MemorySource {
    fn limit(&self, p: usize, len: usize) -> usize {
        match &self.limits {
            Some(l) => (l.get(p).copied().unwrap_or(0).max(0) as usize).min(len),
            None => len,
        }
    }

    fn take_one(&mut self, s: &State) -> Option<Message> {
        let n = self.pos.len();
        for i in 0..n {
            let p = (self.next_part + i) % n;
            if self.paused.contains(&(p as u32)) {
                continue;
            }
            if let Some(off) = self.pos[p] {
                let visible = self.limit(p, s.parts[p].len());
                if let Some(m) = s.parts[p][..visible].get(off as usize) {
                    self.pos[p] = Some(off + 1);
                    self.next_part = (p + 1) % n;
                    return Some(m.clone());
                }
            }
        }
        None
    }
}

impl Source for MemorySource {
    fn partitions(&self) -> u32 {
        self.pos.len() as u32
    }

    fn assign(&mut self, starts: &[(u32, i64)]) -> Result<(), JournalError> {
        let count = self.pos.len() as u32;
        for &(p, off) in starts {
            if p >= count {
                return Err(JournalError::NoSuchPartition {
                    partition: p,
                    count,
                });
            }
            self.pos[p as usize] = Some(off.max(0));
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<Message>, JournalError> {
        let deadline = Instant::now() + timeout;
        let journal = self.journal.clone();
        let (lock, cv) = &*journal.inner;
        let mut s = lock.lock();
        loop {
            if let Some(m) = self.take_one(&s) {
                return Ok(Some(m));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            s = cv.wait_timeout(s, deadline - now);
        }
    }

    fn pause(&mut self, partition: u32) -> Result<(), JournalError> {
        self.paused.insert(partition);
        Ok(())
    }

    fn resume(&mut self, partition: u32) -> Result<(), JournalError> {
        self.paused.remove(&partition);
        Ok(())
    }

    fn watermarks(&self, partition: u32) -> Result<(i64, i64), JournalError> {
        let s = self.journal.inner.0.lock();
        let count = s.parts.len() as u32;
        let part = s
            .parts
            .get(partition as usize)
            .ok_or(JournalError::NoSuchPartition { partition, count })?;
        Ok((0, self.limit(partition as usize, part.len()) as i64))
    }
}

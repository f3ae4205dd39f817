//! The unacknowledged window of the `fsync` durability mode: records
//! applied and answered but not yet acknowledged by Kafka.
//!
//! A pure structure (records in, decisions out): the pipeline adds a record
//! when it hands it to the producer, removes it on its acknowledgement,
//! asks whether the window is full before sequencing a new call (callers
//! wait while it is), and whether everything up to a sequence number is
//! acknowledged (the barrier of `fsync`). Recovery re-sends what it holds,
//! in sequence order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How much may be unacknowledged at once (`--window-records`,
/// `--window-bytes`, `--window-age`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLimits {
    /// Records.
    pub records: usize,
    /// Bytes of encoded records.
    pub bytes: u64,
    /// Age of the oldest unacknowledged record.
    pub age: Duration,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            records: 10_000,
            bytes: 64 << 20,
            age: Duration::from_secs(10),
        }
    }
}

/// One record handed to the producer and not acknowledged yet: what it
/// takes to send it again.
#[derive(Clone, Debug)]
pub struct Unacked {
    /// Its global sequence number.
    pub seq: u64,
    /// Its partition.
    pub partition: u32,
    /// Its partition sequence number.
    pub pseq: u64,
    /// The message key (routing path).
    pub key: Vec<u8>,
    /// The encoded record (shared, not copied, by the window and the
    /// producer).
    pub payload: bytes::Bytes,
    /// The op name (the informative header).
    pub op: &'static str,
    /// When it was handed to the producer.
    pub since: Instant,
}

/// The records sent and not acknowledged, by sequence number.
#[derive(Debug)]
pub struct Window {
    limits: WindowLimits,
    pending: BTreeMap<u64, Unacked>,
    bytes: u64,
}

impl Window {
    /// An empty window.
    pub fn new(limits: WindowLimits) -> Self {
        Window {
            limits,
            pending: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// May no new record be sequenced now? (At `now`: the age limit counts
    /// from the oldest record's hand-off.)
    pub fn is_full(&self, now: Instant) -> bool {
        self.pending.len() >= self.limits.records
            || self.bytes >= self.limits.bytes
            || self
                .pending
                .values()
                .next()
                .is_some_and(|u| now.saturating_duration_since(u.since) >= self.limits.age)
    }

    /// A record was handed to the producer.
    pub fn add(&mut self, u: Unacked) {
        self.bytes += u.payload.len() as u64;
        if let Some(old) = self.pending.insert(u.seq, u) {
            self.bytes -= old.payload.len() as u64;
        }
    }

    /// The record `seq` is acknowledged (or was never sent): it leaves the
    /// window. Returns it, if it was there.
    pub fn remove(&mut self, seq: u64) -> Option<Unacked> {
        let u = self.pending.remove(&seq)?;
        self.bytes -= u.payload.len() as u64;
        Some(u)
    }

    /// Is every record numbered `seq` or lower acknowledged?
    pub fn settled_through(&self, seq: u64) -> bool {
        self.pending.keys().next().is_none_or(|&first| first > seq)
    }

    /// Every sequence number at or below this is acknowledged (`last` is
    /// the last number handed out).
    pub fn watermark(&self, last: u64) -> u64 {
        self.pending
            .keys()
            .next()
            .map_or(last, |&first| first.saturating_sub(1))
    }

    /// Records in the window.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Is the window empty?
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Bytes in the window.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The records of `partition` whose partition sequence number is at
    /// or below `pseq` (found in the log by recovery): acknowledged.
    pub fn settle_partition(&mut self, partition: u32, pseq: u64) -> usize {
        let found: Vec<u64> = self
            .pending
            .values()
            .filter(|u| u.partition == partition && u.pseq <= pseq)
            .map(|u| u.seq)
            .collect();
        for seq in &found {
            self.remove(*seq);
        }
        found.len()
    }

    /// What is still unacknowledged, in sequence order (to send again).
    pub fn in_order(&self) -> Vec<Unacked> {
        self.pending.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unacked(seq: u64, partition: u32, pseq: u64, bytes: usize, since: Instant) -> Unacked {
        Unacked {
            seq,
            partition,
            pseq,
            key: b"k".to_vec(),
            payload: vec![0; bytes].into(),
            op: "write",
            since,
        }
    }

    fn limits(records: usize, bytes: u64, age_ms: u64) -> WindowLimits {
        WindowLimits {
            records,
            bytes,
            age: Duration::from_millis(age_ms),
        }
    }

    #[test]
    fn full_by_records_bytes_or_age() {
        let t0 = Instant::now();
        let mut w = Window::new(limits(2, 1000, 500));
        assert!(!w.is_full(t0));
        w.add(unacked(1, 0, 1, 10, t0));
        assert!(!w.is_full(t0));
        w.add(unacked(2, 0, 2, 10, t0));
        assert!(w.is_full(t0), "two records fill a window of two");
        w.remove(1);
        assert!(!w.is_full(t0));

        let mut w = Window::new(limits(100, 100, 500));
        w.add(unacked(1, 0, 1, 60, t0));
        assert!(!w.is_full(t0));
        w.add(unacked(2, 0, 2, 40, t0));
        assert!(w.is_full(t0), "100 bytes fill a window of 100");
        assert_eq!(w.bytes(), 100);
        w.remove(2);
        assert_eq!(w.bytes(), 60);

        let mut w = Window::new(limits(100, 1000, 500));
        w.add(unacked(1, 0, 1, 1, t0));
        assert!(!w.is_full(t0 + Duration::from_millis(499)));
        assert!(
            w.is_full(t0 + Duration::from_millis(500)),
            "the oldest is too old"
        );
        w.remove(1);
        assert!(
            !w.is_full(t0 + Duration::from_secs(60)),
            "an empty window has no age"
        );
    }

    #[test]
    fn barrier_waits_for_every_lower_number() {
        let t0 = Instant::now();
        let mut w = Window::new(WindowLimits::default());
        for seq in 1..=4 {
            w.add(unacked(seq, (seq % 2) as u32, seq.div_ceil(2), 1, t0));
        }
        assert!(w.settled_through(0));
        assert!(!w.settled_through(1));
        // Acknowledgements of different partitions arrive out of order.
        w.remove(2);
        w.remove(4);
        assert!(!w.settled_through(2), "record 1 is still out");
        assert_eq!(w.watermark(4), 0);
        w.remove(1);
        assert!(w.settled_through(2));
        assert!(!w.settled_through(3));
        assert_eq!(w.watermark(4), 2);
        w.remove(3);
        assert!(w.settled_through(u64::MAX));
        assert_eq!(w.watermark(4), 4);
    }

    #[test]
    fn recovery_settles_what_the_log_holds_and_resends_the_rest_in_order() {
        let t0 = Instant::now();
        let mut w = Window::new(WindowLimits::default());
        // seq: partition/pseq = 1: 0/1, 2: 1/1, 3: 0/2, 4: 1/2, 5: 0/3
        for (seq, p, pseq) in [(1, 0, 1), (2, 1, 1), (3, 0, 2), (4, 1, 2), (5, 0, 3)] {
            w.add(unacked(seq, p, pseq, 5, t0));
        }
        assert_eq!(
            w.settle_partition(0, 2),
            2,
            "partition 0 holds pseq 1 and 2"
        );
        assert_eq!(w.settle_partition(1, 0), 0);
        let again: Vec<u64> = w.in_order().iter().map(|u| u.seq).collect();
        assert_eq!(again, vec![2, 4, 5]);
        assert_eq!(w.bytes(), 15);
        assert_eq!(w.len(), 3);
    }
}

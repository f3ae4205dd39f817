//! The dependency scheduler: a pure state machine, no threads, no I/O.
//!
//! Records come in per partition, in partition order (`push`). A record is
//! *ready* when it is at the head of its partition, no other record of its
//! partition is being applied, and every dependency `(q, s)` it carries is
//! satisfied: partition `q` has applied a record with sequence number `>= s`.
//! `take` hands out a ready record (the one with the smallest sequence
//! number), `complete` reports it applied.
//!
//! Why it cannot deadlock (DESIGN.md has the full argument): sequence
//! numbers are global and rise within every partition, and a dependency
//! always names a smaller sequence number than the record carrying it. Take
//! the unapplied record with the smallest sequence number among those
//! received, R in partition p. Everything before R in p has a smaller
//! sequence number, so it is applied: R is p's head. Each dependency (q, s)
//! of R has s < seq(R); every received record of q with sequence number <= s
//! is therefore applied; so either q's applied sequence is >= s, or the
//! record s has not been received yet, and then q has nothing unapplied
//! received, so the reader is not holding q back and s will arrive. Hence
//! as long as in-flight records complete, something is always ready.

use std::collections::VecDeque;

use crate::record::Dep;

/// One queued record (its payload is opaque to the scheduler).
#[derive(Debug)]
pub struct Item<T> {
    /// Applying it mostly waits (an fsync) instead of using a core: the
    /// pool runs it on a thread beyond the cores' share.
    pub blocks: bool,
    /// Global sequence number; 0 for an entry without one (a record being
    /// skipped), which carries no dependencies and satisfies none.
    pub seq: u64,
    /// Records that must be applied first.
    pub deps: Vec<Dep>,
    /// What to apply.
    pub payload: T,
}

#[derive(Debug)]
struct Part<T> {
    queue: VecDeque<Item<T>>,
    /// Sequence number of the record being applied, if any.
    in_flight: Option<u64>,
    /// Highest sequence number applied in this partition.
    applied_seq: u64,
}

/// The scheduler state for one topic.
#[derive(Debug)]
pub struct Scheduler<T> {
    parts: Vec<Part<T>>,
    queued: usize,
}

impl<T> Scheduler<T> {
    /// `applied[p]` is the sequence number partition `p` has applied up to
    /// (from the checkpoint).
    pub fn new(applied: &[u64]) -> Self {
        Scheduler {
            parts: applied
                .iter()
                .map(|&s| Part {
                    queue: VecDeque::new(),
                    in_flight: None,
                    applied_seq: s,
                })
                .collect(),
            queued: 0,
        }
    }

    /// The partition count.
    pub fn partitions(&self) -> u32 {
        self.parts.len() as u32
    }

    /// Queues a record read from `partition`, after those already queued.
    pub fn push(&mut self, partition: u32, item: Item<T>) {
        self.parts[partition as usize].queue.push_back(item);
        self.queued += 1;
    }

    fn satisfied(&self, partition: usize, item: &Item<T>) -> bool {
        item.deps.iter().all(|d| {
            let q = d.partition as usize;
            // Dependencies on the own partition hold by order; unknown
            // partitions were refused when the record was decoded.
            q == partition || self.parts.get(q).is_some_and(|p| p.applied_seq >= d.seq)
        })
    }

    /// Is the head of `partition` ready?
    pub fn is_ready(&self, partition: u32) -> bool {
        let p = partition as usize;
        let part = &self.parts[p];
        part.in_flight.is_none() && part.queue.front().is_some_and(|i| self.satisfied(p, i))
    }

    /// Is any partition's head ready?
    pub fn has_ready(&self) -> bool {
        (0..self.partitions()).any(|p| self.is_ready(p))
    }

    /// Hands out the ready record with the smallest sequence number and
    /// marks its partition busy, or `None` if nothing is ready.
    pub fn take(&mut self) -> Option<(u32, Item<T>)> {
        self.take_if(|_| true)
    }

    /// `take`, among the ready records `want` accepts.
    pub fn take_if(&mut self, want: impl Fn(&Item<T>) -> bool) -> Option<(u32, Item<T>)> {
        let mut best: Option<(usize, u64)> = None;
        for (p, part) in self.parts.iter().enumerate() {
            if part.in_flight.is_some() {
                continue;
            }
            let Some(head) = part.queue.front() else {
                continue;
            };
            if !want(head) || !self.satisfied(p, head) {
                continue;
            }
            // Entries without a sequence number go first: they wait for nothing.
            let key = head.seq;
            if best.is_none_or(|(_, k)| key < k) {
                best = Some((p, key));
            }
        }
        let (p, _) = best?;
        let part = &mut self.parts[p];
        let item = part.queue.pop_front()?;
        part.in_flight = Some(item.seq);
        self.queued -= 1;
        Some((p as u32, item))
    }

    /// Hands out the head of `partition` if it is ready (marking the
    /// partition busy), whatever other partitions hold: the master's
    /// dispatcher applies its own record this way when nothing else runs.
    pub fn take_from(&mut self, partition: u32) -> Option<Item<T>> {
        if !self.is_ready(partition) {
            return None;
        }
        let part = &mut self.parts[partition as usize];
        let item = part.queue.pop_front()?;
        part.in_flight = Some(item.seq);
        self.queued -= 1;
        Some(item)
    }

    /// Reports the record handed out for `partition` as applied.
    pub fn complete(&mut self, partition: u32) {
        let part = &mut self.parts[partition as usize];
        if let Some(seq) = part.in_flight.take() {
            part.applied_seq = part.applied_seq.max(seq);
        }
    }

    /// Puts the record handed out for `partition` back at its head (the
    /// applier is stopping before it could apply it).
    pub fn give_back(&mut self, partition: u32, item: Item<T>) {
        let part = &mut self.parts[partition as usize];
        part.in_flight = None;
        part.queue.push_front(item);
        self.queued += 1;
    }

    /// The highest sequence number applied in `partition` with everything before it.
    pub fn applied_seq(&self, partition: u32) -> u64 {
        self.parts[partition as usize].applied_seq
    }

    /// Records queued (not handed out) for one partition.
    pub fn queued_in(&self, partition: u32) -> usize {
        self.parts[partition as usize].queue.len()
    }

    /// Records queued in all partitions.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Items handed out and not finished.
    pub fn in_flight(&self) -> usize {
        self.parts.iter().filter(|p| p.in_flight.is_some()).count()
    }

    /// Nothing queued and nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.queued == 0 && self.in_flight() == 0
    }
}

/// A test record: sequence number `seq` (its own payload) with
/// dependencies `(partition, seq)`.
#[cfg(test)]
pub(crate) fn item(seq: u64, deps: &[(u32, u64)]) -> Item<u64> {
    Item {
        blocks: false,
        seq,
        deps: deps
            .iter()
            .map(|&(partition, seq)| Dep { partition, seq })
            .collect(),
        payload: seq,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_order_and_busy() {
        let mut s = Scheduler::new(&[0, 0]);
        s.push(0, item(1, &[]));
        s.push(0, item(3, &[]));
        s.push(1, item(2, &[]));
        let (p, i) = s.take().unwrap();
        assert_eq!((p, i.seq), (0, 1));
        // Partition 0 is busy: only partition 1 can run.
        let (p, i) = s.take().unwrap();
        assert_eq!((p, i.seq), (1, 2));
        assert!(s.take().is_none());
        s.complete(0);
        let (p, i) = s.take().unwrap();
        assert_eq!((p, i.seq), (0, 3));
        s.complete(1);
        s.complete(0);
        assert!(s.is_idle());
        assert_eq!(s.applied_seq(0), 3);
    }

    #[test]
    fn dependency_waits_for_other_partition() {
        let mut s = Scheduler::new(&[0, 0]);
        // Record 2 in partition 1 depends on record 1 in partition 0, which
        // has not arrived yet.
        s.push(1, item(2, &[(0, 1)]));
        assert!(s.take().is_none());
        s.push(0, item(1, &[]));
        let (p, _) = s.take().unwrap();
        assert_eq!(p, 0);
        assert!(s.take().is_none(), "dependency not applied yet");
        s.complete(0);
        let (p, i) = s.take().unwrap();
        assert_eq!((p, i.seq), (1, 2));
    }

    #[test]
    fn checkpointed_progress_satisfies_dependencies() {
        let mut s = Scheduler::new(&[10, 0]);
        s.push(1, item(12, &[(0, 9)]));
        assert!(s.take().is_some());
    }

    #[test]
    fn take_if_hands_out_the_first_ready_record_it_accepts() {
        let mut s = Scheduler::new(&[0, 0, 0]);
        s.push(0, item(1, &[]));
        s.push(
            1,
            Item {
                blocks: true,
                ..item(2, &[])
            },
        );
        s.push(
            2,
            Item {
                blocks: true,
                ..item(3, &[(0, 1)])
            },
        );
        let (p, i) = s.take_if(|i| i.blocks).unwrap();
        assert_eq!((p, i.seq), (1, 2), "1 is not accepted, 3 is not ready");
        assert!(s.take_if(|i| i.blocks).is_none());
        assert_eq!(s.take().unwrap().1.seq, 1);
    }

    #[test]
    fn take_from_hands_out_only_a_ready_head_of_that_partition() {
        let mut s = Scheduler::new(&[0, 0]);
        s.push(1, item(2, &[(0, 1)]));
        assert!(s.take_from(1).is_none(), "its dependency is not applied");
        assert!(s.take_from(0).is_none(), "nothing queued there");
        s.push(0, item(1, &[]));
        s.push(0, item(3, &[]));
        assert_eq!(s.take_from(0).unwrap().seq, 1);
        assert!(s.take_from(0).is_none(), "partition 0 is busy");
        assert_eq!(s.in_flight(), 1);
        s.complete(0);
        assert_eq!(s.take_from(1).unwrap().seq, 2);
        assert_eq!(s.take_from(0).unwrap().seq, 3);
        s.complete(0);
        s.complete(1);
        assert!(s.is_idle());
    }

    #[test]
    fn give_back_restores_head() {
        let mut s = Scheduler::new(&[0]);
        s.push(0, item(1, &[]));
        s.push(0, item(2, &[]));
        let (p, i) = s.take().unwrap();
        s.give_back(p, i);
        assert_eq!(s.take().unwrap().1.seq, 1);
    }

    /// Randomized: whatever the arrival interleaving, every record is handed
    /// out exactly once, after its partition predecessors and dependencies.
    #[test]
    fn randomized_orders_respect_dependencies() {
        use rand::{Rng, SeedableRng};
        for seed in 0..300u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let parts = rng.random_range(1..6u32);
            let n = rng.random_range(1..60u64);
            // Generate records with global seqs and random backward deps.
            let mut per_part: Vec<Vec<Item<u64>>> = (0..parts).map(|_| Vec::new()).collect();
            let mut where_: Vec<u32> = vec![0];
            for seq in 1..=n {
                let p = rng.random_range(0..parts);
                let mut deps = Vec::new();
                if seq > 1 && rng.random_bool(0.4) {
                    let d = rng.random_range(1..seq);
                    deps.push(Dep {
                        partition: where_[d as usize],
                        seq: d,
                    });
                }
                where_.push(p);
                per_part[p as usize].push(Item {
                    blocks: false,
                    seq,
                    deps,
                    payload: seq,
                });
            }
            let mut s = Scheduler::new(&vec![0; parts as usize]);
            let mut feeds: Vec<std::collections::VecDeque<Item<u64>>> =
                per_part.into_iter().map(Into::into).collect();
            let mut done = vec![false; n as usize + 1];
            let mut in_flight: Vec<(u32, Item<u64>)> = Vec::new();
            let mut applied = 0;
            while applied < n {
                match rng.random_range(0..3) {
                    0 => {
                        let p = rng.random_range(0..parts) as usize;
                        if let Some(it) = feeds[p].pop_front() {
                            s.push(p as u32, it);
                        }
                    }
                    1 => {
                        if let Some((p, it)) = s.take() {
                            for d in &it.deps {
                                assert!(
                                    done[d.seq as usize],
                                    "seed {seed}: dep {d:?} of {}",
                                    it.seq
                                );
                            }
                            in_flight.push((p, it));
                        }
                    }
                    _ => {
                        if !in_flight.is_empty() {
                            let k = rng.random_range(0..in_flight.len());
                            let (p, it) = in_flight.swap_remove(k);
                            assert!(!done[it.seq as usize]);
                            done[it.seq as usize] = true;
                            s.complete(p);
                            applied += 1;
                        }
                    }
                }
                // Liveness: if everything has arrived, nothing is in flight
                // and work remains, something must be ready.
                if feeds.iter().all(|f| f.is_empty()) && in_flight.is_empty() && applied < n {
                    assert!(
                        s.take().map(|(p, it)| in_flight.push((p, it))).is_some(),
                        "seed {seed}: stuck"
                    );
                }
            }
            assert!(s.is_idle(), "seed {seed}");
        }
    }
}

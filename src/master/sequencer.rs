//! Sequencing, as a pure state machine: an operation in, a numbered record
//! out — its record time (strictly after the previous one's), its
//! partition (by target path), its global and partition sequence numbers,
//! and what replicas order it after (the records it conflicts with, and
//! under causal ordering everything applied when it was sequenced). The
//! pipeline holds it under its lock; threads, the journal and the applier
//! stay outside (the applied sequence numbers come in as an argument).

use crate::master::keys::{Conflicts, KeySet};
use crate::master::pipeline::{ReplayOrder, Tail};
use crate::op::{Op, Timestamp};
use crate::partition::partition_for;
use crate::record::{Caller, Dep, Record, Writer};

/// The master's sequencing state: numbers, time, conflict history.
pub struct Sequencer {
    conflicts: Conflicts,
    /// The last global sequence number given.
    seq: u64,
    /// The last partition sequence number given, per partition.
    pseq: Vec<u64>,
    /// The last record time given.
    time: Timestamp,
    writer: Writer,
    ordering: ReplayOrder,
}

impl Sequencer {
    /// Continues after the log's `tails` and the last record time.
    pub fn new(
        tails: &[Tail],
        last_time: Timestamp,
        writer: Writer,
        ordering: ReplayOrder,
        history_limit: usize,
    ) -> Self {
        let mut conflicts = Conflicts::new(tails.len() as u32, history_limit);
        conflicts.reset_to(&tails.iter().map(|t| t.last_seq).collect::<Vec<_>>());
        Sequencer {
            conflicts,
            seq: tails.iter().map(|t| t.last_seq).max().unwrap_or(0),
            pseq: tails.iter().map(|t| t.last_pseq).collect(),
            time: last_time,
            writer,
            ordering,
        }
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.pseq.len() as u32
    }

    /// This master's writer identity and epoch.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// May an operation touching `keys` start (nothing in flight conflicts)?
    pub fn can_acquire(&self, keys: &KeySet) -> bool {
        self.conflicts.can_acquire(keys)
    }

    /// Marks `keys` as held by the operation being sequenced.
    pub fn acquire(&mut self, keys: &KeySet) {
        self.conflicts.acquire(keys);
    }

    /// The operation holding `keys` is applied (or failed).
    pub fn release(&mut self, keys: &KeySet) {
        self.conflicts.release(keys);
    }

    /// The record time of an operation sequenced at `now`: strictly after
    /// the previous record's, even if the clock went back.
    pub fn time_for(&self, now: Timestamp) -> Timestamp {
        if now > self.time {
            now
        } else {
            self.time.succ()
        }
    }

    /// Numbers `op`, built for `time` (from `time_for`): `applied` is the
    /// sequence number each partition's applier has reached (for causal
    /// ordering).
    pub fn number(
        &mut self,
        op: Op,
        time: Timestamp,
        caller: Caller,
        keys: &KeySet,
        applied: &[u64],
    ) -> Record {
        self.time = self.time.max(time);
        let p = partition_for(op.target().as_bytes(), self.partitions());
        self.seq += 1;
        self.pseq[p as usize] += 1;
        let deps = self.dependencies(keys, p, applied);
        Record {
            writer: self.writer.clone(),
            seq: self.seq,
            partition_seq: self.pseq[p as usize],
            partition: p,
            deps,
            time,
            caller,
            op,
        }
    }

    /// The sequence number of the last record numbered.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// The last record numbered (in `partition`) never reached the
    /// journal: its numbers are free again.
    pub fn unnumber(&mut self, partition: u32) {
        self.seq -= 1;
        self.pseq[partition as usize] -= 1;
    }

    /// After recovery read the log back: continue from its tails, last
    /// (pseq, seq) per partition, as writer epoch `epoch`.
    pub fn reset_to(&mut self, last: &[(u64, u64)], epoch: u64) {
        self.seq = last.iter().map(|l| l.1).max().unwrap_or(0);
        self.pseq = last.iter().map(|l| l.0).collect();
        self.writer.epoch = epoch;
        let tails: Vec<u64> = last.iter().map(|l| l.1).collect();
        self.conflicts.reset_to(&tails);
    }

    /// What the record numbered `self.seq` in partition `p` is ordered
    /// after on replicas.
    fn dependencies(&mut self, keys: &KeySet, p: u32, applied: &[u64]) -> Vec<Dep> {
        let mut deps = self.conflicts.record(keys, p, self.seq);
        if self.ordering == ReplayOrder::Causal {
            // Everything applied (so possibly seen by a caller) comes first.
            for (q, &a) in applied.iter().enumerate() {
                let q = q as u32;
                if q == p || a == 0 {
                    continue;
                }
                match deps.iter_mut().find(|d| d.partition == q) {
                    Some(d) => d.seq = d.seq.max(a),
                    None => deps.push(Dep {
                        partition: q,
                        seq: a,
                    }),
                }
            }
            deps.sort_by_key(|d| d.partition);
        }
        deps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::keys::{Access, Key};
    use crate::op::RelPath;

    fn writer() -> Writer {
        Writer {
            id: vec![7; 16],
            epoch: 3,
        }
    }

    fn tails(last: &[(u64, u64)]) -> Vec<Tail> {
        last.iter()
            .map(|&(pseq, seq)| Tail {
                next_offset: pseq as i64,
                last_seq: seq,
                last_pseq: pseq,
            })
            .collect()
    }

    fn write(path: &str) -> Op {
        Op::Write {
            path: RelPath::new(path.as_bytes().to_vec()).unwrap(),
            offset: 0,
            data: vec![1].into(),
        }
    }

    fn keys(names: &[&str]) -> KeySet {
        let mut ks = KeySet::new();
        for n in names {
            ks.add(Key::Entry(1, n.as_bytes().to_vec()), Access::Exclusive);
        }
        ks
    }

    #[test]
    fn numbers_continue_after_the_tails() {
        let mut s = Sequencer::new(
            &tails(&[(4, 10), (2, 9)]),
            Timestamp::new(100, 0),
            writer(),
            ReplayOrder::Conflicts,
            1000,
        );
        let t = s.time_for(Timestamp::new(200, 0));
        let r = s.number(write("a"), t, Caller::default(), &keys(&["a"]), &[0, 0]);
        assert_eq!(r.seq, 11);
        assert_eq!(r.partition, partition_for(b"a", 2));
        let before = [4, 2][r.partition as usize];
        assert_eq!(r.partition_seq, before + 1);
        assert_eq!(r.writer, writer());
        assert_eq!(r.time, Timestamp::new(200, 0));
    }

    #[test]
    fn record_times_strictly_increase_even_if_the_clock_goes_back() {
        let mut s = Sequencer::new(
            &tails(&[(0, 0)]),
            Timestamp::new(500, 10),
            writer(),
            ReplayOrder::Conflicts,
            1000,
        );
        let mut last = Timestamp::new(500, 10);
        for now in [400, 500, 600, 600, 100] {
            let t = s.time_for(Timestamp::new(now, 10));
            assert!(t > last, "{t:?} after {last:?}");
            s.number(write("f"), t, Caller::default(), &keys(&["f"]), &[0]);
            last = t;
        }
    }

    #[test]
    fn an_unsent_record_frees_its_numbers() {
        let mut s = Sequencer::new(
            &tails(&[(0, 0), (0, 0)]),
            Timestamp::new(1, 0),
            writer(),
            ReplayOrder::Conflicts,
            1000,
        );
        let t = s.time_for(Timestamp::new(2, 0));
        let r = s.number(write("x"), t, Caller::default(), &keys(&["x"]), &[0, 0]);
        s.unnumber(r.partition);
        let t = s.time_for(Timestamp::new(3, 0));
        let again = s.number(write("x"), t, Caller::default(), &keys(&["x"]), &[0, 0]);
        assert_eq!((again.seq, again.partition_seq), (r.seq, r.partition_seq));
    }

    #[test]
    fn conflicts_and_causal_order_make_the_dependencies() {
        for ordering in [ReplayOrder::Conflicts, ReplayOrder::Causal] {
            let mut s = Sequencer::new(
                &tails(&[(0, 0), (0, 0), (0, 0)]),
                Timestamp::new(1, 0),
                writer(),
                ordering,
                1000,
            );
            // Two paths in different partitions.
            let (a, b) = ["a", "b", "c", "d", "e"]
                .iter()
                .flat_map(|x| ["a", "b", "c", "d", "e"].iter().map(move |y| (*x, *y)))
                .find(|(x, y)| partition_for(x.as_bytes(), 3) != partition_for(y.as_bytes(), 3))
                .unwrap();
            let t = s.time_for(Timestamp::new(2, 0));
            let first = s.number(write(a), t, Caller::default(), &keys(&[a]), &[0, 0, 0]);
            // Shares a key with the first: ordered after it either way.
            let t = s.time_for(Timestamp::new(3, 0));
            let both = s.number(write(b), t, Caller::default(), &keys(&[a, b]), &[0, 0, 0]);
            assert!(
                both.deps
                    .iter()
                    .any(|d| d.partition == first.partition && d.seq >= first.seq),
                "{ordering:?}: {:?}",
                both.deps
            );
            // No shared key, but the first is applied: only causal orders after it.
            let mut applied = [0u64; 3];
            applied[first.partition as usize] = first.seq;
            let t = s.time_for(Timestamp::new(4, 0));
            let other = s.number(write(b), t, Caller::default(), &keys(&["zz"]), &applied);
            let after_first = other
                .deps
                .iter()
                .any(|d| d.partition == first.partition && d.seq >= first.seq);
            assert_eq!(
                after_first,
                ordering == ReplayOrder::Causal,
                "{:?}",
                other.deps
            );
            assert!(other
                .deps
                .windows(2)
                .all(|w| w[0].partition < w[1].partition));
        }
    }

    #[test]
    fn recovery_resets_numbers_epoch_and_history() {
        let mut s = Sequencer::new(
            &tails(&[(5, 20), (5, 19)]),
            Timestamp::new(1, 0),
            writer(),
            ReplayOrder::Conflicts,
            1000,
        );
        let t = s.time_for(Timestamp::new(2, 0));
        s.number(write("a"), t, Caller::default(), &keys(&["a"]), &[0, 0]);
        s.reset_to(&[(6, 22), (5, 19)], 4);
        assert_eq!(s.writer().epoch, 4);
        let t = s.time_for(Timestamp::new(3, 0));
        let r = s.number(write("a"), t, Caller::default(), &keys(&["a"]), &[0, 0]);
        assert_eq!(r.seq, 23);
        assert_eq!(r.writer.epoch, 4);
        assert_eq!(r.partition_seq, [6, 5][r.partition as usize] + 1);
    }
}

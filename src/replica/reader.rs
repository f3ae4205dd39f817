//! Decoding and checking messages before they are scheduled: undecodable
//! records, fences and fenced writers, duplicates, conflicts, gaps.

use super::checkpoint::{Fence, Position};
use super::entry::{Entry, EntryKind};
use crate::error::{DecodeError, RecordPos, ReplicaError};
use crate::journal::Message;
use crate::op::hex;
use crate::record::Record;

/// Decodes and checks messages, partition by partition.
pub struct RecordReader {
    topic: String,
    max_record_bytes: usize,
    skip_bad: bool,
    skip_records: Vec<(u32, i64)>,
    partitions: u32,
    /// Per partition: last (pseq, seq) read.
    last_read: Vec<(u64, u64)>,
    /// Per partition: records skipped since the last good one (they may
    /// explain a jump in the partition sequence).
    skipped_since: Vec<u64>,
    /// Per partition: the fence in force (as read).
    fences: Vec<Option<Fence>>,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Records skipped by --skip-bad-records or --skip-record.
    pub skipped_bad: u64,
    /// Records of fenced writers, ignored.
    pub fenced: u64,
}

impl RecordReader {
    /// A reader of `topic` resuming at `positions`, refusing records larger than `max_record_bytes`.
    pub fn new(
        topic: &str,
        max_record_bytes: usize,
        skip_bad: bool,
        skip_records: Vec<(u32, i64)>,
        positions: &[Position],
    ) -> Self {
        RecordReader {
            topic: topic.to_string(),
            max_record_bytes,
            skip_bad,
            skip_records,
            partitions: positions.len() as u32,
            last_read: positions
                .iter()
                .map(|p| (p.last_pseq, p.last_seq))
                .collect(),
            skipped_since: vec![0; positions.len()],
            fences: positions.iter().map(|p| p.fence).collect(),
            duplicates: 0,
            skipped_bad: 0,
            fenced: 0,
        }
    }

    /// The fence in force in a partition, as read.
    pub fn fence(&self, partition: u32) -> Option<Fence> {
        self.fences[partition as usize]
    }

    /// A fence record: it becomes the partition's fence if it is the first,
    /// from the writer already in force, or a take-over; otherwise it is
    /// itself void (a fenced writer recovering).
    fn read_fence(&mut self, pos: &RecordPos, rec: &Record, take_over: bool) -> Entry {
        let p = pos.partition as usize;
        let Some(new) = Fence::of(&rec.writer) else {
            return Entry::skip(pos.offset);
        };
        match self.fences[p] {
            Some(cur) if cur.id != new.id && !take_over => {
                tracing::warn!(
                    "{pos}: fence of writer {} (epoch {}) after the take-over by {}: void",
                    hex(&new.id),
                    new.epoch,
                    hex(&cur.id)
                );
                self.fenced += 1;
                Entry::skip(pos.offset)
            }
            Some(cur) if cur.id == new.id && new.epoch < cur.epoch => {
                self.fenced += 1;
                Entry::skip(pos.offset)
            }
            cur => {
                if cur.is_some_and(|c| c.id != new.id) {
                    tracing::info!(
                        "{pos}: writer {} (epoch {}) took over from writer {}",
                        hex(&new.id),
                        new.epoch,
                        cur.map(|c| hex(&c.id)).unwrap_or_default()
                    );
                }
                self.fences[p] = Some(new);
                Entry::control(pos.offset, EntryKind::Fence(new))
            }
        }
    }

    /// The last (partition seq, seq) read from a partition.
    pub fn last_read(&self, partition: u32) -> (u64, u64) {
        self.last_read[partition as usize]
    }

    /// Decodes and checks a message: the entry to queue, or an error that
    /// stops the reader (bad record, gap). The checks, in order: records
    /// named by --skip-record; undecodable records (skipped with
    /// --skip-bad-records); fences; records of fenced writers; two records
    /// claiming one partition sequence number (conflict); duplicates; gaps;
    /// sequence numbers that do not rise.
    pub fn entry(&mut self, m: Message) -> Result<Entry, ReplicaError> {
        let p = m.partition;
        let pos = RecordPos {
            topic: self.topic.clone(),
            partition: p,
            offset: m.offset,
        };
        let offset = m.offset;
        let rec = self.decode(p, m.payload);
        if self.skip_records.contains(&(p, offset)) {
            let what = match &rec {
                Ok(r) => format!("{} {}", r.op.name(), r.op.target()),
                Err(e) => e.to_string(),
            };
            return Ok(self.skip(&pos, format!("--skip-record {p}:{offset}: {what}")));
        }
        let rec = match rec {
            Ok(r) => r,
            Err(source) if self.skip_bad => {
                return Ok(self.skip(&pos, format!("--skip-bad-records: {source}")));
            }
            Err(source) => return Err(ReplicaError::BadRecord { pos, source }),
        };
        if let crate::op::Op::Fence { take_over } = rec.op {
            return Ok(self.read_fence(&pos, &rec, take_over));
        }
        if self.is_fenced(&pos, &rec) {
            return Ok(Entry::skip(offset));
        }
        self.check_sequence(pos, rec)
    }

    /// The record in a message, with its dependencies inside the topic.
    fn decode(&self, partition: u32, payload: Vec<u8>) -> Result<Record, DecodeError> {
        // The payload is handed over: a write's data stays a slice of it.
        let r = Record::decode_owned_from(payload.into(), self.max_record_bytes, partition)?;
        match r.deps.iter().find(|d| d.partition >= self.partitions) {
            Some(d) => Err(DecodeError::BadValue {
                field: "deps.partition",
                value: d.partition as u64,
            }),
            None => Ok(r),
        }
    }

    /// Skips a record on the user's word (logged, counted; it explains a
    /// jump in partition sequence after it).
    fn skip(&mut self, pos: &RecordPos, why: String) -> Entry {
        tracing::warn!("{pos}: SKIPPING record ({why})");
        self.skipped_bad += 1;
        self.skipped_since[pos.partition as usize] += 1;
        Entry::skip(pos.offset)
    }

    /// Is this the record of a writer the partition's fence voids?
    fn is_fenced(&mut self, pos: &RecordPos, rec: &Record) -> bool {
        let Some(f) = self.fences[pos.partition as usize].filter(|f| f.voids(&rec.writer)) else {
            return false;
        };
        tracing::warn!(
            "{pos}: {} {} of writer {} (epoch {}) came after the fence of writer {} (epoch {}): \
             a fenced master's write, ignored on every replica",
            rec.op.name(),
            rec.op.target(),
            hex(&rec.writer.id),
            rec.writer.epoch,
            hex(&f.id),
            f.epoch
        );
        self.fenced += 1;
        true
    }

    /// Places a record in its partition's sequence: the entry to apply, a
    /// duplicate to skip, or a conflict, gap or falling sequence number.
    fn check_sequence(&mut self, pos: RecordPos, rec: Record) -> Result<Entry, ReplicaError> {
        let p = pos.partition as usize;
        let (last_pseq, last_seq) = self.last_read[p];
        if rec.partition_seq == last_pseq && rec.seq != last_seq {
            // Not a duplicate: two different records claim one place.
            return Err(ReplicaError::Conflict {
                pos,
                pseq: rec.partition_seq,
                seq: rec.seq,
                applied_seq: last_seq,
            });
        }
        if rec.partition_seq <= last_pseq {
            tracing::info!(
                "{pos}: duplicate record (partition sequence {} already applied), skipped",
                rec.partition_seq
            );
            self.duplicates += 1;
            return Ok(Entry::skip(pos.offset));
        }
        if rec.partition_seq > last_pseq + 1 + self.skipped_since[p] {
            return Err(ReplicaError::Gap {
                pos,
                last: last_pseq,
                found: rec.partition_seq,
            });
        }
        if rec.seq <= last_seq {
            return Err(ReplicaError::BadRecord {
                pos,
                source: DecodeError::BadValue {
                    field: "seq (not rising within the partition)",
                    value: rec.seq,
                },
            });
        }
        self.last_read[p] = (rec.partition_seq, rec.seq);
        self.skipped_since[p] = 0;
        Ok(Entry::apply(pos.offset, rec))
    }
}

#[cfg(test)]
mod tests {
    //! The reader's checks, message by message (no Kafka).

    use super::*;
    use crate::op::{Op, RelPath, Timestamp};
    use crate::record::{Caller, Dep, Writer};

    const TOPIC: &str = "t";

    fn writer(id: &[u8], epoch: u64) -> Writer {
        Writer {
            id: id.to_vec(),
            epoch,
        }
    }

    fn record(w: &Writer, seq: u64, pseq: u64, op: Op) -> Record {
        Record {
            writer: w.clone(),
            seq,
            partition_seq: pseq,
            partition: 0,
            deps: Vec::new(),
            time: Timestamp::new(1_700_000_000, seq as u32),
            caller: Caller::default(),
            op,
        }
    }

    fn mkdir(name: &str) -> Op {
        Op::Mkdir {
            path: RelPath::new(name).unwrap(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        }
    }

    fn message(offset: i64, payload: Vec<u8>) -> Message {
        Message {
            partition: 0,
            offset,
            key: Vec::new(),
            payload,
            timestamp_ms: None,
        }
    }

    fn reader(partitions: usize) -> RecordReader {
        RecordReader::new(
            TOPIC,
            1 << 20,
            false,
            Vec::new(),
            &vec![Position::default(); partitions],
        )
    }

    fn is_skip(e: &Entry) -> bool {
        matches!(e.kind, EntryKind::Skip)
    }

    #[test]
    fn records_in_order_are_applied_and_duplicates_skipped() {
        let w = writer(b"w", 1);
        let mut r = reader(1);
        let first = record(&w, 1, 1, mkdir("a"));
        let e = r.entry(message(0, first.encode())).unwrap();
        assert!(e.record().is_some());
        let e = r.entry(message(1, first.encode())).unwrap();
        assert!(is_skip(&e), "a re-sent record is a duplicate");
        assert_eq!(r.duplicates, 1);
        let e = r
            .entry(message(2, record(&w, 2, 2, mkdir("b")).encode()))
            .unwrap();
        assert!(e.record().is_some());
        assert_eq!(r.last_read(0), (2, 2));
    }

    #[test]
    fn an_undecodable_record_names_its_position_unless_skipped() {
        let mut r = reader(1);
        let Err(err) = r.entry(message(7, b"\xff\xff garbage".to_vec())) else {
            panic!("garbage decoded");
        };
        let text = err.to_string();
        assert!(matches!(err, ReplicaError::BadRecord { .. }));
        assert!(text.contains("topic `t` partition 0 offset 7"), "{text}");
        assert!(text.contains("--skip-record 0:7"), "{text}");

        let mut skipping =
            RecordReader::new(TOPIC, 1 << 20, true, Vec::new(), &[Position::default()]);
        let e = skipping.entry(message(7, b"\xff\xff".to_vec())).unwrap();
        assert!(is_skip(&e));
        assert_eq!(skipping.skipped_bad, 1);
    }

    #[test]
    fn a_named_record_is_skipped_whatever_it_holds() {
        let w = writer(b"w", 1);
        let mut r = RecordReader::new(TOPIC, 1 << 20, false, vec![(0, 0)], &[Position::default()]);
        let e = r
            .entry(message(0, record(&w, 1, 1, mkdir("a")).encode()))
            .unwrap();
        assert!(is_skip(&e));
        // The next record explains the jump in partition sequence.
        let e = r
            .entry(message(1, record(&w, 2, 2, mkdir("b")).encode()))
            .unwrap();
        assert!(e.record().is_some());
    }

    #[test]
    fn gaps_conflicts_and_falling_seqs_stop_the_partition() {
        let w = writer(b"w", 1);
        let mut r = reader(1);
        r.entry(message(0, record(&w, 1, 1, mkdir("a")).encode()))
            .unwrap();
        let gap = r.entry(message(1, record(&w, 3, 3, mkdir("c")).encode()));
        assert!(matches!(
            gap,
            Err(ReplicaError::Gap {
                last: 1,
                found: 3,
                ..
            })
        ));
        let conflict = r.entry(message(1, record(&w, 9, 1, mkdir("x")).encode()));
        assert!(
            matches!(
                conflict,
                Err(ReplicaError::Conflict {
                    pseq: 1,
                    seq: 9,
                    applied_seq: 1,
                    ..
                })
            ),
            "two records claim partition sequence 1"
        );
        let falling = r.entry(message(1, record(&w, 1, 2, mkdir("y")).encode()));
        assert!(matches!(falling, Err(ReplicaError::BadRecord { .. })));
    }

    #[test]
    fn a_dependency_on_a_missing_partition_is_a_bad_record() {
        let w = writer(b"w", 1);
        let mut r = reader(2);
        let mut rec = record(&w, 2, 1, mkdir("a"));
        rec.deps = vec![Dep {
            partition: 5,
            seq: 1,
        }];
        let Err(err) = r.entry(message(0, rec.encode())) else {
            panic!("a dependency on partition 5 of 2 was accepted");
        };
        assert!(err.to_string().contains("deps.partition"), "{err}");
    }

    #[test]
    fn a_fence_voids_the_records_of_other_writers() {
        let (old, new) = (writer(&[1; 16], 1), writer(&[2; 16], 2));
        let mut r = reader(1);
        r.entry(message(0, record(&old, 1, 1, mkdir("a")).encode()))
            .unwrap();
        let fence = r
            .entry(message(
                1,
                record(&new, 0, 0, Op::Fence { take_over: true }).encode(),
            ))
            .unwrap();
        assert!(matches!(fence.kind, EntryKind::Fence(_)));
        assert_eq!(r.fence(0).map(|f| f.epoch), Some(2));
        // The old writer's late record: void on every replica.
        let late = r
            .entry(message(2, record(&old, 2, 2, mkdir("late")).encode()))
            .unwrap();
        assert!(is_skip(&late));
        assert_eq!(r.fenced, 1);
        // A fence of the old writer after the take-over is void too.
        let stale = r
            .entry(message(
                3,
                record(&old, 0, 0, Op::Fence { take_over: false }).encode(),
            ))
            .unwrap();
        assert!(is_skip(&stale));
        let e = r
            .entry(message(4, record(&new, 2, 2, mkdir("b")).encode()))
            .unwrap();
        assert!(e.record().is_some());
    }
}

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
    pub duplicates: u64,
    pub skipped_bad: u64,
    /// Records of fenced writers, ignored.
    pub fenced: u64,
}

impl RecordReader {
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
    /// stops the reader (bad record, gap).
    pub fn entry(&mut self, m: Message) -> Result<Entry, ReplicaError> {
        let p = m.partition;
        let pos = RecordPos {
            topic: self.topic.clone(),
            partition: p,
            offset: m.offset,
        };
        let rec = Record::decode_from(&m.payload, self.max_record_bytes, p).and_then(|r| {
            match r.deps.iter().find(|d| d.partition >= self.partitions) {
                Some(d) => Err(DecodeError::BadValue {
                    field: "deps.partition",
                    value: d.partition as u64,
                }),
                None => Ok(r),
            }
        });
        let skip = |why: String, this: &mut RecordReader| {
            tracing::warn!("{pos}: SKIPPING record ({why})");
            this.skipped_bad += 1;
            this.skipped_since[p as usize] += 1;
            Ok(Entry::skip(m.offset))
        };
        if self.skip_records.contains(&(p, m.offset)) {
            let what = match &rec {
                Ok(r) => format!("{} {}", r.op.name(), r.op.target()),
                Err(e) => e.to_string(),
            };
            return skip(format!("--skip-record {p}:{}: {what}", m.offset), self);
        }
        let rec = match rec {
            Ok(r) => r,
            Err(source) if self.skip_bad => {
                return skip(format!("--skip-bad-records: {source}"), self);
            }
            Err(source) => return Err(ReplicaError::BadRecord { pos, source }),
        };
        if let crate::op::Op::Fence { take_over } = rec.op {
            return Ok(self.read_fence(&pos, &rec, take_over));
        }
        if let Some(f) = self.fences[p as usize].filter(|f| f.voids(&rec.writer)) {
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
            return Ok(Entry::skip(m.offset));
        }
        let (last_pseq, last_seq) = self.last_read[p as usize];
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
            return Ok(Entry::skip(m.offset));
        }
        if rec.partition_seq > last_pseq + 1 + self.skipped_since[p as usize] {
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
        self.last_read[p as usize] = (rec.partition_seq, rec.seq);
        self.skipped_since[p as usize] = 0;
        Ok(Entry::apply(m.offset, rec))
    }
}

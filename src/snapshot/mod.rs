//! Snapshots: a replica's tree at a cut, kept where a new replica can find
//! it (the companion topic `<topic>.snapshots`, or a directory), so that a
//! replica can be built after retention deleted the journal's beginning.
//!
//! A slave takes one by pausing its appliers (`Pool::pause`: what is
//! applied then is closed under dependencies and each partition's applied
//! records are a prefix, exactly what its positions say), walking the tree
//! into parts (`take`), and resuming. A slave on an empty directory
//! restores one (`restore`), writes the snapshot's positions as its
//! checkpoint and tails the journal from there. The format is in
//! `proto/kafkafs.proto` (`SnapshotPart`); DESIGN.md §7 argues why restore
//! + tail equals a full replay.

pub mod bootstrap;
pub mod dir_store;
pub mod kafka_store;
pub mod restore;
pub mod take;

use std::path::PathBuf;

use crate::error::{JournalError, PathError};
use crate::op::Timestamp;
use crate::record::pb;
use crate::replica::checkpoint::{Fence, Position, FENCE_ID_LEN};

/// Format version of the snapshot parts this kafkafs writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Largest content carried by one data part.
pub const DATA_CHUNK: usize = 256 * 1024;

/// Why a snapshot could not be taken, listed, or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot topic failed.
    #[error("snapshot store: {0}")]
    Journal(#[from] JournalError),
    /// A part of a snapshot is not what it should be.
    #[error("snapshot {id}, part {index}: {why}")]
    Malformed {
        /// The snapshot (hex id).
        id: String,
        /// The part.
        index: u64,
        /// What is wrong with it.
        why: String,
    },
    /// A part names a path that cannot be restored.
    #[error("snapshot {id}, part {index}: name refused: {source}")]
    BadName {
        /// The snapshot (hex id).
        id: String,
        /// The part.
        index: u64,
        /// Why the path is refused.
        #[source]
        source: PathError,
    },
    /// No such snapshot.
    #[error("no snapshot {0} in the store")]
    NotFound(String),
    /// No snapshot fits.
    #[error("{0}")]
    Unusable(String),
    /// A stop was requested.
    #[error("stopped")]
    Stopped,
}

pub(crate) fn io_at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.into();
    move |source| SnapshotError::Io { path, source }
}

/// What is known of a complete snapshot without reading it.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    /// Its id (16 random bytes).
    pub id: Vec<u8>,
    /// The topic it is a replica of.
    pub topic: String,
    /// When it was taken.
    pub taken: Timestamp,
    /// The positions it holds everything before.
    pub positions: Vec<Position>,
    /// The replica's limits file, verbatim.
    pub limits: Vec<u8>,
    /// Entries (names) and content bytes.
    pub entries: u64,
    /// File bytes in it.
    pub bytes: u64,
    /// Where the store finds it (topic offsets or a file name).
    pub location: Location,
}

/// Where a store keeps one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// Partition 0 offsets of its header and end, and the offset of its
    /// index record in partition 1.
    Topic {
        /// Offset of its first part.
        first: i64,
        /// Offset of its last part.
        last: i64,
        /// Offset of its index.
        index: i64,
    },
    /// In a directory store: its file.
    File(PathBuf),
}

impl SnapshotInfo {
    /// Its id in hex.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// Records every position covers: the journal offsets a replica
    /// restored from it starts reading at, per partition.
    pub fn starts(&self) -> Vec<i64> {
        self.positions.iter().map(|p| p.next_offset).collect()
    }

    fn from_parts(
        id: Vec<u8>,
        header: &pb::SnapshotHeader,
        end: &pb::SnapshotEnd,
        location: Location,
    ) -> Self {
        SnapshotInfo {
            id,
            topic: header.topic.clone(),
            taken: header
                .taken
                .map(|t| Timestamp::new(t.sec, t.nsec))
                .unwrap_or_default(),
            positions: header.positions.iter().map(position_from_pb).collect(),
            limits: header.limits.clone(),
            entries: end.entries,
            bytes: end.bytes,
            location,
        }
    }
}

/// `dir/name` of two relative paths ("" is the root).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

pub use crate::op::hex;

/// Receives the parts of one snapshot, in order.
pub trait PartWriter {
    /// Adds a part.
    fn put(&mut self, part: &pb::SnapshotPart) -> Result<(), SnapshotError>;
    /// Makes the snapshot complete and visible (after its End was put).
    fn commit(self: Box<Self>) -> Result<SnapshotInfo, SnapshotError>;
}

/// Where snapshots are kept.
pub trait SnapshotStore: Send {
    /// Complete snapshots, oldest first.
    fn list(&mut self) -> Result<Vec<SnapshotInfo>, SnapshotError>;
    /// Starts writing a new snapshot.
    fn begin(&mut self, id: &[u8]) -> Result<Box<dyn PartWriter + '_>, SnapshotError>;
    /// Reads the parts of `snap`, in order, into `each`.
    fn read(
        &mut self,
        snap: &SnapshotInfo,
        each: &mut dyn FnMut(pb::SnapshotPart) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError>;
    /// Deletes every snapshot older than the newest `keep`; returns how
    /// many went.
    fn expire(&mut self, keep: usize) -> Result<usize, SnapshotError>;
    /// For messages: where the store is.
    fn describe(&self) -> String;
}

pub(crate) fn position_to_pb(p: &Position) -> pb::SnapshotPosition {
    pb::SnapshotPosition {
        next_offset: p.next_offset,
        last_seq: p.last_seq,
        last_pseq: p.last_pseq,
        fence_id: p.fence.map(|f| f.id.to_vec()).unwrap_or_default(),
        fence_epoch: p.fence.map(|f| f.epoch).unwrap_or(0),
    }
}

pub(crate) fn position_from_pb(p: &pb::SnapshotPosition) -> Position {
    let fence = <[u8; FENCE_ID_LEN]>::try_from(p.fence_id.as_slice())
        .ok()
        .map(|id| Fence {
            id,
            epoch: p.fence_epoch,
        });
    Position {
        next_offset: p.next_offset,
        last_seq: p.last_seq,
        last_pseq: p.last_pseq,
        fence,
    }
}

/// A fresh snapshot id: 16 random bytes.
pub fn new_id() -> Result<Vec<u8>, SnapshotError> {
    use std::io::Read;
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(io_at("/dev/urandom"))?;
    Ok(id.to_vec())
}

/// Which snapshot a restore uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    /// The newest one that covers the journal's beginning.
    Newest,
    /// This one (hex id, or a unique prefix of it).
    Id(String),
}

/// Chooses the snapshot to restore for a topic whose partitions start at
/// `lows` (earliest offsets still in the topic) and end at `highs`: it must
/// follow the topic, know its partition count, start every partition at
/// or after the earliest record still there (nothing it lacks was
/// deleted), and not beyond the end (a recreated topic).
pub fn choose(
    snaps: &[SnapshotInfo],
    topic: &str,
    lows: &[i64],
    highs: &[i64],
    choice: &Choice,
) -> Result<SnapshotInfo, SnapshotError> {
    let usable = |s: &SnapshotInfo| usable(s, topic, lows, highs);
    match choice {
        Choice::Id(want) => {
            let found: Vec<&SnapshotInfo> = snaps
                .iter()
                .filter(|s| s.id_hex().starts_with(&want.to_ascii_lowercase()))
                .collect();
            match found.as_slice() {
                [s] => usable(s).map(|()| (*s).clone()).map_err(|why| {
                    SnapshotError::Unusable(format!(
                        "snapshot {} cannot be restored: {why}",
                        s.id_hex()
                    ))
                }),
                [] => Err(SnapshotError::NotFound(want.clone())),
                _ => Err(SnapshotError::Unusable(format!(
                    "{want} names {} snapshots; give more of the id",
                    found.len()
                ))),
            }
        }
        Choice::Newest => {
            let mut why_not = Vec::new();
            for s in snaps.iter().rev() {
                match usable(s) {
                    Ok(()) => return Ok(s.clone()),
                    Err(why) => {
                        why_not.push(format!("{} ({}): {why}", s.id_hex(), s.taken.rfc3339()))
                    }
                }
            }
            Err(SnapshotError::Unusable(if why_not.is_empty() {
                "there is no complete snapshot".into()
            } else {
                format!("no snapshot covers the topic: {}", why_not.join("; "))
            }))
        }
    }
}

/// Can `s` start a replica of `topic` (see `choose`)? If not, why.
fn usable(s: &SnapshotInfo, topic: &str, lows: &[i64], highs: &[i64]) -> Result<(), String> {
    if s.topic != topic {
        return Err(format!("it is of topic `{}`", s.topic));
    }
    if s.positions.len() != lows.len() {
        return Err(format!(
            "it knows {} partitions, the topic has {}",
            s.positions.len(),
            lows.len()
        ));
    }
    for (p, pos) in s.positions.iter().enumerate() {
        if pos.next_offset < lows[p] {
            return Err(format!(
                "partition {p} resumes at offset {}, but the topic starts at {} there \
                 (the records between were deleted)",
                pos.next_offset, lows[p]
            ));
        }
        if pos.next_offset > highs[p] {
            return Err(format!(
                "partition {p} resumes at offset {}, beyond the topic's end {} \
                 (was the topic recreated?)",
                pos.next_offset, highs[p]
            ));
        }
    }
    Ok(())
}

/// Warns when the topic deletes old records and no snapshot in `store`
/// covers that: a new replica could then not be built once the beginning
/// is gone, nor a replica stopped longer resume.
pub fn warn_if_uncovered(
    kafka: &crate::journal::kafka::KafkaConfig,
    store: &mut dyn SnapshotStore,
) {
    let ms = match kafka.retention_ms() {
        Ok(Some(ms)) if ms >= 0 => ms,
        Ok(_) => return,
        Err(e) => {
            tracing::debug!("reading the retention of topic `{}`: {e}", kafka.topic);
            return;
        }
    };
    let newest = match store.list() {
        Ok(all) => all.into_iter().rev().find(|s| s.topic == kafka.topic),
        Err(e) => {
            tracing::debug!("listing snapshots in {}: {e}", store.describe());
            None
        }
    };
    let horizon = Timestamp::now().as_nanos() - i128::from(ms) * 1_000_000;
    let days = ms as f64 / 86_400_000.0;
    match newest {
        Some(s) if s.taken.as_nanos() >= horizon => tracing::info!(
            "topic `{}` deletes records older than {days:.1} days; the newest snapshot ({}, taken {}) covers that",
            kafka.topic,
            s.id_hex(),
            s.taken.rfc3339()
        ),
        newest => tracing::warn!(
            "topic `{}` deletes records older than {days:.1} days (retention.ms={ms}), and {} holds {}: \
             once its beginning is deleted, a new replica cannot be built and a replica stopped longer \
             cannot resume. Run one slave with --snapshot-every shorter than the retention (see README, \
             \"Snapshots\"), or set retention.ms=-1 on the topic to keep the whole journal.",
            kafka.topic,
            store.describe(),
            match newest {
                Some(s) => format!("no snapshot newer than that (the newest was taken {})", s.taken.rfc3339()),
                None => "no snapshot".into(),
            }
        ),
    }
}

/// The table `kafkafs snapshots` prints.
pub fn listing(all: &[SnapshotInfo]) -> String {
    let mut out = format!(
        "{:<32}  {:<30}  {:>9}  {:>10}  starts (next offset per partition)\n",
        "id", "taken", "entries", "MiB"
    );
    for s in all {
        out.push_str(&format!(
            "{:<32}  {:<30}  {:>9}  {:>10.1}  {:?}\n",
            s.id_hex(),
            s.taken.rfc3339(),
            s.entries,
            s.bytes as f64 / 1048576.0,
            s.starts()
        ));
    }
    if all.is_empty() {
        out.push_str("(no snapshots)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u8, starts: &[i64]) -> SnapshotInfo {
        SnapshotInfo {
            id: vec![id; 16],
            topic: "t".into(),
            taken: Timestamp::new(i64::from(id), 0),
            positions: starts
                .iter()
                .map(|&o| Position {
                    next_offset: o,
                    ..Position::default()
                })
                .collect(),
            limits: Vec::new(),
            entries: 1,
            bytes: 0,
            location: Location::File("x".into()),
        }
    }

    #[test]
    fn choose_takes_the_newest_snapshot_that_covers_the_topic() {
        let snaps = vec![snap(1, &[5, 5]), snap(2, &[9, 3]), snap(3, &[20, 20])];
        // The newest is beyond the end; the middle one lacks deleted records
        // of partition 1; the oldest covers.
        let got = choose(&snaps, "t", &[4, 4], &[10, 10], &Choice::Newest).unwrap();
        assert_eq!(got.id, vec![1; 16]);
        let got = choose(&snaps, "t", &[0, 0], &[30, 30], &Choice::Newest).unwrap();
        assert_eq!(got.id, vec![3; 16]);
        let e = choose(&snaps, "t", &[6, 6], &[10, 10], &Choice::Newest).unwrap_err();
        assert!(e.to_string().contains("deleted"), "{e}");
        let e = choose(&snaps, "other", &[0, 0], &[30, 30], &Choice::Newest).unwrap_err();
        assert!(e.to_string().contains("topic `t`"), "{e}");
        let got = choose(&snaps, "t", &[0, 0], &[30, 30], &Choice::Id("0202".into())).unwrap();
        assert_eq!(got.id, vec![2; 16]);
        assert!(matches!(
            choose(&snaps, "t", &[0, 0], &[30, 30], &Choice::Id("ff".into())),
            Err(SnapshotError::NotFound(_))
        ));
    }

    #[test]
    fn positions_round_trip_through_the_format() {
        let p = Position {
            next_offset: 42,
            last_seq: 7,
            last_pseq: 3,
            fence: Some(Fence {
                id: [9; FENCE_ID_LEN],
                epoch: 4,
            }),
        };
        assert_eq!(position_from_pb(&position_to_pb(&p)), p);
        let q = Position::default();
        assert_eq!(position_from_pb(&position_to_pb(&q)), q);
    }
}

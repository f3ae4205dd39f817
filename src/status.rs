//! `kafkafs status`: where a replica (or a master's data-root) stands —
//! per partition, the next offset it will apply, and (with a broker) the
//! topic's end offset and how many records it is behind.

use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use crate::error::{CheckpointError, JournalError};
use crate::journal::Source;
use crate::replica::checkpoint::{Position, StateDir};

/// Why a status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The directory holds no checkpoint.
    #[error("{0} holds no kafkafs checkpoint (not a replica or data-root, or never started)")]
    NoCheckpoint(String),
    /// The checkpoint could not be read.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The topic could not be read.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
}

/// One partition's progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// What is applied.
    pub position: Position,
    /// The topic's end offset, when a broker was asked.
    pub end: Option<i64>,
}

/// Where a replica or data-root stands.
#[derive(Clone, Debug)]
pub struct Status {
    /// The directory.
    pub root: String,
    /// The topic it follows.
    pub topic: String,
    /// A master's data-root (it has a writer id), not a slave's replica.
    pub master: bool,
    /// Age of its durable checkpoint.
    pub checkpoint_age: Option<std::time::Duration>,
    /// Each partition.
    pub partitions: Vec<PartitionStatus>,
}

impl Status {
    /// Records the replica is behind the topic (None without a broker).
    pub fn behind(&self) -> Option<i64> {
        self.partitions
            .iter()
            .map(|p| p.end.map(|e| (e - p.position.next_offset).max(0)))
            .sum()
    }

    /// Records applied here past the topic's end (None without a broker):
    /// a master with fsync durability applies a record before Kafka
    /// acknowledges it.
    pub fn ahead(&self) -> Option<i64> {
        self.partitions
            .iter()
            .map(|p| p.end.map(|e| (p.position.next_offset - e).max(0)))
            .sum()
    }

    fn summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(behind), Some(ahead)) = (self.behind(), self.ahead()) else {
            return writeln!(f, "(pass --broker to compare with the topic's end)");
        };
        if behind > 0 {
            writeln!(f, "{behind} records behind")?;
        }
        if ahead > 0 && self.master {
            writeln!(
                f,
                "{ahead} records applied but not yet acknowledged by Kafka \
                 (--durability fsync: a running master has them acknowledged shortly, a stopped one \
                 sends them again from its write-ahead file at its next start)"
            )?;
        } else if ahead > 0 {
            writeln!(
                f,
                "{ahead} records applied past the topic's end: the topic holds less than this \
                 replica applied (was it deleted and created again?)"
            )?;
        }
        if behind == 0 && ahead == 0 {
            writeln!(f, "caught up")?;
        }
        Ok(())
    }
}

/// Reads a replica's progress: the ledger when this boot wrote it (newer),
/// else the durable checkpoint.
pub fn read(root: &Path) -> Result<Status, StatusError> {
    let no_checkpoint = || StatusError::NoCheckpoint(root.display().to_string());
    let sd = StateDir::existing(root).ok_or_else(no_checkpoint)?;
    let cp = sd.load_checkpoint()?.ok_or_else(no_checkpoint)?;
    let slots = sd.read_ledger(cp.positions.len() as u32)?;
    let partitions = cp
        .positions
        .iter()
        .enumerate()
        .map(|(p, durable)| {
            let position = match slots[p] {
                Some(s) if s.position.next_offset >= durable.next_offset => s.position,
                _ => *durable,
            };
            PartitionStatus {
                partition: p as u32,
                position,
                end: None,
            }
        })
        .collect();
    let age = std::fs::metadata(sd.checkpoint_path())
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    Ok(Status {
        root: root.display().to_string(),
        topic: cp.topic,
        master: sd.path().join("writer-id").exists(),
        checkpoint_age: age,
        partitions,
    })
}

/// Adds the topic's end offsets.
pub fn with_ends(mut s: Status, source: &dyn Source) -> Result<Status, StatusError> {
    for p in &mut s.partitions {
        p.end = Some(source.watermarks(p.partition)?.1);
    }
    Ok(s)
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} {} follows topic `{}` ({} partition{})",
            if self.master { "data-root" } else { "replica" },
            self.root,
            self.topic,
            self.partitions.len(),
            if self.partitions.len() == 1 { "" } else { "s" }
        )?;
        if let Some(age) = self.checkpoint_age {
            writeln!(
                f,
                "durable checkpoint written {:.1} s ago",
                age.as_secs_f64()
            )?;
        }
        writeln!(
            f,
            "{:>9}  {:>12}  {:>12}  {:>8}  {:>10}",
            "partition", "next offset", "end offset", "behind", "last seq"
        )?;
        for p in &self.partitions {
            let (end, behind) = match p.end {
                Some(e) => (
                    e.to_string(),
                    (e - p.position.next_offset).max(0).to_string(),
                ),
                None => ("?".into(), "?".into()),
            };
            writeln!(
                f,
                "{:>9}  {:>12}  {:>12}  {:>8}  {:>10}",
                p.partition, p.position.next_offset, end, behind, p.position.last_seq
            )?;
        }
        self.summary(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(master: bool, ends: &[(i64, Option<i64>)]) -> Status {
        Status {
            root: "/r".into(),
            topic: "t".into(),
            master,
            checkpoint_age: None,
            partitions: ends
                .iter()
                .enumerate()
                .map(|(p, &(next, end))| PartitionStatus {
                    partition: p as u32,
                    position: Position {
                        next_offset: next,
                        ..Position::default()
                    },
                    end,
                })
                .collect(),
        }
    }

    #[test]
    fn a_master_ahead_of_the_topic_says_what_is_unacknowledged() {
        let s = status(true, &[(10, Some(7)), (3, Some(3))]).to_string();
        assert!(
            s.contains("3 records applied but not yet acknowledged by Kafka"),
            "{s}"
        );
        assert!(!s.contains("caught up"), "{s}");
        assert!(!s.contains("behind\n"), "{s}");
    }

    #[test]
    fn behind_caught_up_and_unknown() {
        let s = status(false, &[(5, Some(9)), (2, Some(2))]).to_string();
        assert!(s.contains("4 records behind"), "{s}");
        let s = status(false, &[(5, Some(5))]).to_string();
        assert!(s.ends_with("caught up\n"), "{s}");
        let s = status(false, &[(5, None)]).to_string();
        assert!(s.contains("pass --broker"), "{s}");
        let s = status(false, &[(9, Some(5))]).to_string();
        assert!(s.contains("4 records applied past the topic's end"), "{s}");
    }
}

//! A replica's state while records are applied: the replica directory,
//! its ledger, per-partition positions and counters; where a replica
//! resumes (`restore`) and its durable checkpoint.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::sync::{AtomicI64, AtomicU64, Mutex, Ordering};

use super::apply::Replica;
use super::checkpoint::{Checkpoint, Intent, Ledger, Position, StateDir};
use crate::error::{CheckpointError, RecordPos, ReplicaError};
use crate::op::STATE_DIR;
use crate::record::Record;

/// A replica with its ledger and per-partition positions.
pub struct ReplicaState {
    /// The replica directory.
    pub replica: Replica,
    /// Its per-partition ledger.
    pub ledger: Ledger,
    /// The topic it follows.
    pub topic: String,
    positions: Vec<Mutex<Position>>,
    /// Set to stop appliers retrying a failing replica.
    pub stop: Arc<AtomicBool>,
    /// Records whose outcome was an errno.
    pub errno_outcomes: AtomicU64,
    /// Replication lag: record time on the master to applied here.
    pub lag: crate::metrics::Histogram,
    /// Records applied (or skipped) since start.
    pub applied: AtomicU64,
    /// Per partition: the topic's end offset when last asked (-1: unknown).
    ends: Vec<AtomicI64>,
    /// What a partial replica holds (empty: everything).
    filter: crate::filter::Filter,
    /// Where entries that came into view without their content are listed.
    gaps_file: Option<std::path::PathBuf>,
    /// Records a partial replica did not apply as they are.
    pub filtered: AtomicU64,
    /// Entries that came into a partial replica's view without their content.
    pub filter_gaps: AtomicU64,
}

impl ReplicaState {
    /// Notes the topic's end offset of a partition (for records behind).
    pub fn set_end(&self, p: u32, end: i64) {
        if let Some(e) = self.ends.get(p as usize) {
            e.store(end, Ordering::Relaxed);
        }
    }

    /// Records between what is applied and the topic's end, per partition
    /// (`None` while the end is unknown).
    pub fn behind(&self) -> Vec<Option<i64>> {
        self.positions()
            .iter()
            .zip(&self.ends)
            .map(|(pos, e)| {
                let end = e.load(Ordering::Relaxed);
                (end >= 0).then(|| (end - pos.next_offset).max(0))
            })
            .collect()
    }

    /// The state of `replica` resuming at `positions`.
    pub fn new(
        replica: Replica,
        ledger: Ledger,
        topic: &str,
        positions: &[Position],
        stop: Arc<AtomicBool>,
    ) -> Self {
        ReplicaState {
            replica,
            ledger,
            topic: topic.to_string(),
            positions: positions.iter().map(|p| Mutex::new(*p)).collect(),
            stop,
            errno_outcomes: AtomicU64::new(0),
            lag: crate::metrics::Histogram::new(),
            applied: AtomicU64::new(0),
            ends: positions.iter().map(|_| AtomicI64::new(-1)).collect(),
            filter: crate::filter::Filter::default(),
            gaps_file: None,
            filtered: AtomicU64::new(0),
            filter_gaps: AtomicU64::new(0),
        }
    }

    /// A partial replica: only what `filter` lets through; entries that
    /// come into view without their content are listed in `gaps_file`.
    pub fn with_filter(
        mut self,
        filter: crate::filter::Filter,
        gaps_file: std::path::PathBuf,
    ) -> Self {
        self.filter = filter;
        self.gaps_file = Some(gaps_file);
        self
    }

    /// Applies `rec` — as it is, or as its plan under the filter.
    pub(crate) fn apply_record(
        &self,
        p: u32,
        offset: i64,
        rec: &Record,
        resume: Option<&crate::replica::apply::Fingerprint>,
        log: &mut dyn crate::replica::apply::IntentLog,
    ) -> Result<crate::replica::apply::Outcome, crate::error::ReplicaFailure> {
        if self.filter.is_empty() {
            return self.replica.apply(&rec.op, rec.time, resume, log);
        }
        let plan = self.filter.plan(&rec.op);
        if plan.apply {
            return self.replica.apply(&rec.op, rec.time, resume, log);
        }
        if let Some(path) = &plan.remove {
            self.replica.remove_tree(path, rec.time)?;
        }
        for dir in &plan.touch {
            self.replica.touch_dir(dir, rec.time)?;
        }
        if let Some(path) = &plan.gap {
            self.note_gap(p, offset, rec, path);
        }
        self.filtered.fetch_add(1, Ordering::Relaxed);
        Ok(Ok(()))
    }

    /// An entry came into view from outside it: its content is not here.
    fn note_gap(&self, p: u32, offset: i64, rec: &Record, path: &crate::op::RelPath) {
        self.filter_gaps.fetch_add(1, Ordering::Relaxed);
        let listed = self.gaps_file.as_ref().map(|file| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .and_then(|mut f| {
                    use std::io::Write;
                    writeln!(f, "{p} {offset} {}", crate::op::hex(path.as_bytes()))
                })
                .map(|()| file.display().to_string())
        });
        tracing::warn!(
            "{}: {} brings `{}` into this partial replica's view from outside it: its content was \
             never replicated here, so the replica lacks it{}. A replica whose filter includes \
             both paths has it.",
            self.pos(p, offset),
            rec.op.name(),
            path.display(),
            match listed {
                Some(Ok(file)) => format!(" (listed in {file})"),
                Some(Err(e)) => format!(" (listing it failed: {e})"),
                None => String::new(),
            }
        );
    }

    /// The partition count.
    pub fn partitions(&self) -> u32 {
        self.positions.len() as u32
    }

    /// Every partition's position.
    pub fn positions(&self) -> Vec<Position> {
        (0..self.partitions()).map(|p| self.position(p)).collect()
    }

    /// Partition `p`'s position.
    pub fn position(&self, p: u32) -> Position {
        *self.positions[p as usize].lock()
    }

    /// Sets partition `p`'s position.
    pub fn set_position(&self, p: u32, pos: Position) {
        *self.positions[p as usize].lock() = pos;
    }

    /// The position of a record, for messages.
    pub fn pos(&self, partition: u32, offset: i64) -> RecordPos {
        RecordPos {
            topic: self.topic.clone(),
            partition,
            offset,
        }
    }
}

impl ReplicaState {
    /// Prometheus text for this replica's progress.
    pub fn render_metrics(&self) -> String {
        let mut s = String::new();
        s.push_str(
            "# HELP kafkafs_applied_records_total Records applied (or skipped) since start.\n",
        );
        s.push_str("# TYPE kafkafs_applied_records_total counter\n");
        s.push_str(&format!(
            "kafkafs_applied_records_total {}\n",
            self.applied.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP kafkafs_errno_outcomes_total Records whose outcome was an errno.\n");
        s.push_str("# TYPE kafkafs_errno_outcomes_total counter\n");
        s.push_str(&format!(
            "kafkafs_errno_outcomes_total {}\n",
            self.errno_outcomes.load(Ordering::Relaxed)
        ));
        s.push_str("# HELP kafkafs_partition_next_offset Offset of the next record to apply.\n");
        s.push_str("# TYPE kafkafs_partition_next_offset gauge\n");
        for (p, pos) in self.positions().iter().enumerate() {
            s.push_str(&format!(
                "kafkafs_partition_next_offset{{topic=\"{}\",partition=\"{p}\"}} {}\n",
                self.topic, pos.next_offset
            ));
        }
        s.push_str(
            "# HELP kafkafs_partition_records_behind Records between the applied position and the topic's end.\n",
        );
        s.push_str("# TYPE kafkafs_partition_records_behind gauge\n");
        for (p, behind) in self.behind().iter().enumerate() {
            if let Some(b) = behind {
                s.push_str(&format!(
                    "kafkafs_partition_records_behind{{topic=\"{}\",partition=\"{p}\"}} {b}\n",
                    self.topic
                ));
            }
        }
        if !self.filter.is_empty() {
            s += &format!(
                "# HELP kafkafs_filtered_records_total Records a partial replica did not apply as they are (out of its view).\n\
                 # TYPE kafkafs_filtered_records_total counter\nkafkafs_filtered_records_total {}\n\
                 # HELP kafkafs_filter_gaps_total Entries that came into a partial replica's view without their content.\n\
                 # TYPE kafkafs_filter_gaps_total counter\nkafkafs_filter_gaps_total {}\n",
                self.filtered.load(Ordering::Relaxed),
                self.filter_gaps.load(Ordering::Relaxed)
            );
        }
        s.push_str(&self.lag.render(
            "kafkafs_lag_seconds",
            "Record time on the master to applied here.",
            &format!("topic=\"{}\"", self.topic),
        ));
        s
    }
}

/// Is `root` empty apart from the state folder?
pub fn root_is_empty(root: &std::path::Path) -> Result<bool, ReplicaError> {
    let rd = std::fs::read_dir(root).map_err(|source| ReplicaError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    for e in rd {
        let e = e.map_err(|source| ReplicaError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if e.file_name().as_encoded_bytes() != STATE_DIR {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Where a replica resumes.
pub struct Restored {
    /// The ledger, open.
    pub ledger: Ledger,
    /// Where each partition resumes.
    pub positions: Vec<Position>,
    /// Records interrupted mid-application, by partition.
    pub intents: BTreeMap<u32, Intent>,
    /// Whether a durable checkpoint existed.
    pub had_checkpoint: bool,
}

/// Restores positions: the ledger when this boot wrote it, else the durable
/// checkpoint.
pub fn restore(state: &StateDir, topic: &str, partitions: u32) -> Result<Restored, ReplicaError> {
    let cp = state.load_checkpoint()?;
    if let Some(cp) = &cp {
        if cp.topic != topic {
            return Err(CheckpointError::WrongTopic {
                recorded: cp.topic.clone(),
                requested: topic.to_string(),
            }
            .into());
        }
        if cp.positions.len() as u32 != partitions {
            return Err(CheckpointError::PartitionCount {
                recorded: cp.positions.len() as u32,
                actual: partitions,
            }
            .into());
        }
    }
    let (ledger, slots) = state.open_ledger(partitions)?;
    let mut positions = Vec::with_capacity(partitions as usize);
    let mut intents = BTreeMap::new();
    for p in 0..partitions {
        let durable = cp
            .as_ref()
            .map(|c| c.positions[p as usize])
            .unwrap_or_default();
        match slots[p as usize] {
            Some(slot) if slot.position.next_offset >= durable.next_offset => {
                positions.push(slot.position);
                if let Some(i) = slot.intent {
                    intents.insert(p, i);
                }
            }
            Some(slot) => {
                tracing::warn!(
                    "partition {p}: ledger ({}) is behind the durable checkpoint ({}); using the checkpoint",
                    slot.position.next_offset,
                    durable.next_offset
                );
                positions.push(durable);
            }
            None => positions.push(durable),
        }
    }
    Ok(Restored {
        ledger,
        positions,
        intents,
        had_checkpoint: cp.is_some(),
    })
}

/// Sets up a fresh replica root (see `Replica::init_fresh`).
pub fn init_fresh(root: &std::path::Path) -> Result<(), ReplicaError> {
    Replica::open(root)
        .and_then(|r| r.init_fresh())
        .map_err(|source| ReplicaError::Root {
            path: root.to_path_buf(),
            source,
        })
}

/// Writes the durable checkpoint: positions first, then syncfs, then the
/// atomic file.
pub fn durable_checkpoint(state: &StateDir, ctx: &ReplicaState) -> Result<(), ReplicaError> {
    // Snapshot first, then sync: the checkpoint then covers only data that
    // was applied before the sync began.
    let positions: Vec<Position> = (0..ctx.positions.len() as u32)
        .map(|p| ctx.position(p))
        .collect();
    ctx.replica.sync().map_err(|source| ReplicaError::Root {
        path: ctx.replica.root().to_path_buf(),
        source,
    })?;
    ctx.ledger.sync()?;
    state.store_checkpoint(&Checkpoint {
        topic: ctx.topic.clone(),
        positions,
    })?;
    Ok(())
}

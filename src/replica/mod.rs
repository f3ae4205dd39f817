//! The replica runtime: applying journal records to a directory with
//! exact bookkeeping. The slave and the master's own applier start it the
//! same way ("a slave is a master without the mount"): [`open`] restores
//! where the replica resumes and builds its [`ReplicaState`];
//! [`start_pool`] starts the applier threads behind the scheduler.
//!
//! - `apply`: one record against the directory (syscalls, containment,
//!   outcomes, resumable application);
//! - `scheduler`: the pure dependency scheduler;
//! - `pool`: applier threads driving the scheduler;
//! - `entry`: what the pool applies, and the ledger bookkeeping around it;
//! - `reader`: decoding and checking messages before they are scheduled;
//! - `state`: positions, counters, restore and the durable checkpoint;
//! - `checkpoint`: the on-disk ledger and checkpoint formats.

pub mod apply;
pub mod checkpoint;
pub mod entry;
pub mod pool;
pub mod reader;
pub mod scheduler;
pub mod state;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apply::Replica;
use checkpoint::{Intent, Position, StateDir};
use entry::{apply_entry, Entry, WorkError};
use pool::{Pool, WorkFn};
use scheduler::{Item, Scheduler};
use state::{restore, ReplicaState, Restored};

use crate::error::ReplicaError;

/// Where the filter of a partial replica lists entries that came into its
/// view without their content.
pub const FILTER_GAPS: &str = "filter-gaps";

/// A replica opened for replay.
pub struct Opened {
    /// The replica with its ledger, positions and counters.
    pub state: Arc<ReplicaState>,
    /// Where each partition resumes.
    pub positions: Vec<Position>,
    /// Records interrupted mid-application, by partition.
    pub intents: BTreeMap<u32, Intent>,
    /// Whether a durable checkpoint existed (else the replica is new or
    /// only its ledger survived).
    pub had_checkpoint: bool,
}

/// How to open a replica.
pub struct OpenOptions<'a> {
    /// The topic the replica follows.
    pub topic: &'a str,
    /// The topic's partition count.
    pub partitions: u32,
    /// Run without root (see `Replica::set_unprivileged`).
    pub unprivileged: bool,
    /// What a partial replica holds (empty: everything).
    pub filter: crate::filter::Filter,
    /// Set to stop appliers waiting on a failing replica.
    pub stop: Arc<AtomicBool>,
}

/// Opens the replica at `root` (whose state folder is `statedir`) and
/// restores where each partition resumes.
pub fn open(root: &Path, statedir: &StateDir, o: OpenOptions<'_>) -> Result<Opened, ReplicaError> {
    let root_err = |source| ReplicaError::Root {
        path: root.to_path_buf(),
        source,
    };
    let mut replica = Replica::open(root).map_err(root_err)?;
    replica.set_unprivileged(o.unprivileged);
    let Restored {
        ledger,
        positions,
        intents,
        had_checkpoint,
    } = restore(statedir, o.topic, o.partitions)?;
    let mut state = ReplicaState::new(replica, ledger, o.topic, &positions, o.stop);
    if !o.filter.is_empty() {
        state = state.with_filter(o.filter, statedir.path().join(FILTER_GAPS));
    }
    Ok(Opened {
        state: Arc::new(state),
        positions,
        intents,
        had_checkpoint,
    })
}

/// Starts `threads` applier threads on `state`, resuming after the
/// sequence numbers its positions record.
pub fn start_pool(threads: usize, state: &Arc<ReplicaState>) -> Pool<Entry, WorkError> {
    let applied_seqs: Vec<u64> = (0..state.partitions())
        .map(|p| state.position(p).last_seq)
        .collect();
    let work_state = state.clone();
    let work: Box<WorkFn<Entry, WorkError>> =
        Box::new(move |p, item: &mut Item<Entry>| apply_entry(&work_state, p, &mut item.payload));
    Pool::start(threads, Scheduler::new(&applied_seqs), work)
}

/// Sleeps `d`, waking early when `stop` is set; returns true if stopped.
pub fn sleep_unless_stopped(stop: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10).min(d));
    }
    stop.load(Ordering::Relaxed)
}

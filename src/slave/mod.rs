//! The slave: follows a topic and applies it to a local directory.
//!
//! Start-up restores each partition's position (ledger if this boot wrote
//! it, else the durable checkpoint), first finishes any record whose
//! application was interrupted (its intent), then reads all partitions and
//! feeds the scheduler, whose workers apply records and advance the ledger.
//! The durable checkpoint is refreshed every `checkpoint_interval` and on
//! exit, always after `syncfs` of the replica.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod follower;
mod periodic;
mod start;

use crate::error::{JournalError, ReplicaError};
use crate::journal::{is_transient, Source};
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::replica::checkpoint::Position;
use crate::replica::entry::{Entry, WorkError};
use crate::replica::pool::Pool;
use crate::replica::{sleep_unless_stopped, start_pool};
use crate::snapshot::{Choice, SnapshotStore};
use follower::Follower;
use periodic::{finish, Snapshots};
use start::{check_retention, open_replica, Opened};

/// How to run a slave.
#[derive(Clone, Debug)]
pub struct SlaveConfig {
    /// The replica directory.
    pub root: PathBuf,
    /// Topic name (for messages and to check the replica follows it).
    pub topic: String,
    /// Applier threads.
    pub threads: usize,
    /// Skip records that cannot be decoded (each skip is logged).
    pub skip_bad_records: bool,
    /// Skip exactly these records (partition, offset), whatever they hold.
    pub skip_records: Vec<(u32, i64)>,
    /// Exit once every partition is applied up to its end.
    pub exit_when_caught_up: bool,
    /// How often the durable checkpoint is written.
    pub checkpoint_interval: Duration,
    /// Largest record accepted.
    pub max_record_bytes: usize,
    /// Pause reading a partition with this many records queued.
    pub max_queued_per_partition: usize,
    /// Accept a non-empty directory without a checkpoint.
    pub allow_non_empty: bool,
    /// Run without root (ownership, device nodes and set-id bits then
    /// cannot be reproduced and the replica may differ).
    pub unprivileged: bool,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Take the exclusive use of the replica (off only for a master's own
    /// catch-up, which holds it already).
    pub hold_lock: bool,
    /// Stop at the state as of this moment: apply every record with a time
    /// at or before it, nothing after (a point-in-time replica).
    pub until: Option<Until>,
    /// Keep this far behind the master: a record is applied only once its
    /// time is this old.
    pub delay: Option<Duration>,
    /// Tell systemd (`Type=notify`): READY once following, STATUS with
    /// progress, WATCHDOG while the loop runs.
    pub notify: bool,
    /// Take a snapshot this often (and once more when exiting caught up).
    pub snapshot_every: Option<Duration>,
    /// Snapshots kept in the store (older ones are deleted).
    pub snapshot_keep: usize,
    /// Build a new replica from this snapshot even when the topic still
    /// holds every record (without it, a snapshot is used only when the
    /// topic's beginning was deleted).
    pub from_snapshot: Option<Choice>,
    /// Only the paths this lets through (a partial replica; see
    /// `crate::filter`).
    pub filter: crate::filter::Filter,
}

/// Where a point-in-time replica stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// The master's time of the records.
    Time(crate::op::Timestamp),
    /// The time of the record at (partition, offset), included.
    Record(u32, i64),
}

impl SlaveConfig {
    /// A configuration replicating `topic` into `root`, with defaults.
    pub fn new(root: impl Into<PathBuf>, topic: impl Into<String>) -> Self {
        SlaveConfig {
            root: root.into(),
            topic: topic.into(),
            threads: 1,
            skip_bad_records: false,
            skip_records: Vec::new(),
            exit_when_caught_up: false,
            checkpoint_interval: Duration::from_secs(5),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_queued_per_partition: 10_000,
            allow_non_empty: false,
            unprivileged: false,
            metrics: None,
            hold_lock: true,
            until: None,
            delay: None,
            notify: false,
            snapshot_every: None,
            snapshot_keep: 3,
            from_snapshot: None,
            filter: crate::filter::Filter::default(),
        }
    }
}

/// What a slave run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlaveReport {
    /// Records applied (successfully or with an errno outcome).
    pub applied: u64,
    /// Records whose outcome was an errno (same on every replica).
    pub errno_outcomes: u64,
    /// Records skipped as duplicates.
    pub duplicates: u64,
    /// Records skipped by --skip-bad-records or --skip-record.
    pub skipped_bad: u64,
    /// Records of fenced writers, ignored (as on every replica).
    pub fenced: u64,
    /// Final positions.
    pub positions: Vec<Position>,
    /// Replication lag of the applied records (record time on the master
    /// to applied here): median, 99th percentile, maximum.
    pub lag_p50: Option<Duration>,
    /// 99th percentile of the lag.
    pub lag_p99: Option<Duration>,
    /// Largest lag.
    pub lag_max: Option<Duration>,
}

/// Everything about a configuration that can be refused before a broker
/// or the replica directory is touched.
pub fn check_config(config: &SlaveConfig) -> Result<(), ReplicaError> {
    check_privileges(config)?;
    if !config.filter.is_empty() && config.snapshot_every.is_some() {
        return Err(ReplicaError::Config(
            "--snapshot-every needs the whole tree, but --include/--exclude make a partial replica; \
             take snapshots with a slave that has no filter"
                .into(),
        ));
    }
    Ok(())
}

/// A slave reproduces ownership, device nodes and set-id bits, which needs
/// root; without it the replica could silently differ.
pub fn check_privileges(config: &SlaveConfig) -> Result<(), ReplicaError> {
    if !config.unprivileged && !rustix::process::geteuid().is_root() {
        return Err(ReplicaError::Config(
            "a slave must run as root to reproduce ownership, device nodes and set-id bits \
             exactly (pass --unprivileged to accept a replica that differs in just those)"
                .into(),
        ));
    }
    Ok(())
}

/// Runs a slave until caught up (if configured), stopped via `stop`, or an
/// error. Always leaves a durable checkpoint of what was applied.
pub fn run(
    config: &SlaveConfig,
    source: Box<dyn Source>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, ReplicaError> {
    run_with_snapshots(config, source, None, stop)
}

/// `run`, with a snapshot store: a new replica of a topic whose beginning
/// was deleted is built from its newest usable snapshot, and
/// `snapshot_every` takes snapshots into it.
pub fn run_with_snapshots(
    config: &SlaveConfig,
    mut source: Box<dyn Source>,
    snapshots: Option<Box<dyn SnapshotStore>>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, ReplicaError> {
    check_config(config)?;
    check_partitions(config, source.as_ref())?;
    let mut snaps = Snapshots::new(config, snapshots);
    let opened = open_replica(config, source.as_mut(), &mut snaps.store, &stop)?;
    check_retention(config, source.as_mut(), &opened.positions, &stop)?;
    log_resume(config, &opened);
    serve_metrics(config, &opened)?;
    let mut follower = Follower::new(config, source.as_mut(), &opened)?;
    source.assign(&starts(&opened.positions))?;
    let ctx = &opened.ctx;
    let Some(stash) = follower.finish_interrupted(ctx, source.as_mut(), &opened.intents, &stop)?
    else {
        return finish(&opened.state, ctx, &follower, None, &stop);
    };
    let pool = start_pool(config.threads, ctx);
    for m in stash {
        follower.push(&pool, source.as_mut(), m)?;
    }
    notify_ready(config);
    let fatal = follower.follow(config, source.as_mut(), &pool, &opened, &mut snaps, &stop);
    let fatal = snapshot_when_caught_up(config, &pool, &opened, &mut snaps, fatal, &stop);
    if config.notify {
        crate::notify::stopping();
    }
    let error = drain(config, pool, &mut follower, fatal, &stop);
    finish(&opened.state, ctx, &follower, error, &stop)
}

/// A topic without partitions cannot be followed.
fn check_partitions(config: &SlaveConfig, source: &dyn Source) -> Result<(), ReplicaError> {
    if source.partitions() == 0 {
        return Err(ReplicaError::Config(format!(
            "topic `{}` has no partitions",
            config.topic
        )));
    }
    Ok(())
}

fn log_resume(config: &SlaveConfig, opened: &Opened) {
    tracing::info!(
        topic = %config.topic,
        partitions = opened.positions.len(),
        threads = config.threads,
        "replica {} resumes at offsets {:?}",
        config.root.display(),
        opened.positions.iter().map(|p| p.next_offset).collect::<Vec<_>>()
    );
}

fn serve_metrics(config: &SlaveConfig, opened: &Opened) -> Result<(), ReplicaError> {
    let Some(addr) = config.metrics else {
        return Ok(());
    };
    let m = opened.ctx.clone();
    let bound = crate::metrics::serve(addr, Arc::new(move || m.render_metrics()))
        .map_err(|source| ReplicaError::Metrics { addr, source })?;
    tracing::info!("metrics on http://{bound}/metrics");
    Ok(())
}

/// Where reading starts: each partition's next offset.
fn starts(positions: &[Position]) -> Vec<(u32, i64)> {
    positions
        .iter()
        .enumerate()
        .map(|(p, pos)| (p as u32, pos.next_offset))
        .collect()
}

fn notify_ready(config: &SlaveConfig) {
    if config.notify {
        crate::notify::ready(&format!(
            "following topic `{}` into {}",
            config.topic,
            config.root.display()
        ));
    }
}

/// A slave that exits caught up takes a last snapshot when it takes them.
fn snapshot_when_caught_up(
    config: &SlaveConfig,
    pool: &Pool<Entry, WorkError>,
    opened: &Opened,
    snaps: &mut Snapshots,
    fatal: Option<ReplicaError>,
    stop: &AtomicBool,
) -> Option<ReplicaError> {
    let caught_up = fatal.is_none()
        && config.exit_when_caught_up
        && !stop.load(Ordering::Relaxed)
        && !pool.failed();
    if caught_up && config.snapshot_every.is_some() {
        return snaps.take(pool, opened, config, stop).err();
    }
    fatal
}

/// Ends the pool: what precedes a held record is applied (close drains); a
/// stop request or a failed worker stops at once. Returns the error the
/// run ends with, if any.
fn drain(
    config: &SlaveConfig,
    pool: Pool<Entry, WorkError>,
    follower: &mut Follower,
    fatal: Option<ReplicaError>,
    stop: &AtomicBool,
) -> Option<ReplicaError> {
    let end = if stop.load(Ordering::Relaxed) || pool.failed() {
        pool.stop()
    } else {
        pool.close()
    };
    follower.applied_first += end.applied;
    let mut error = fatal;
    match end.error {
        Some(WorkError::Fatal(e)) if error.is_none() => error = Some(e),
        _ => {}
    }
    let unresolved = end.scheduler.queued();
    if error.is_none()
        && config.exit_when_caught_up
        && !stop.load(Ordering::Relaxed)
        && unresolved > 0
    {
        error = Some(ReplicaError::Unresolved {
            records: unresolved,
        });
    }
    error
}

/// Runs `f` until it succeeds, a stop is requested, or it fails for a
/// reason that waiting does not cure; waits are logged every 30 s.
pub fn retry_transient<T>(
    stop: &AtomicBool,
    what: &str,
    mut f: impl FnMut() -> Result<T, JournalError>,
) -> Result<T, ReplicaError> {
    let mut last_log: Option<Instant> = None;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && !stop.load(Ordering::Relaxed) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!("{what}: {e}; waiting for the broker");
                    last_log = Some(Instant::now());
                }
                if sleep_unless_stopped(stop, Duration::from_secs(1)) {
                    return Err(ReplicaError::Journal(e));
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

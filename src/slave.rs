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

use crate::applier::{Pool, WorkFn};
use crate::apply::Replica;
use crate::checkpoint::{Position, StateDir};
use crate::error::{RecordPos, SlaveError};
use crate::journal::{Message, Source};
use crate::record::DEFAULT_MAX_RECORD_BYTES;
use crate::replay::{
    apply_entry, durable_checkpoint, init_fresh, restore, root_is_empty, Entry, Reader,
    ReplicaState, Restored, WorkError,
};
use crate::scheduler::{Item, Scheduler};

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
    pub checkpoint_interval: Duration,
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
}

impl SlaveConfig {
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
    /// Final positions.
    pub positions: Vec<Position>,
    /// Replication lag of the applied records (record time on the master
    /// to applied here): median, 99th percentile, maximum.
    pub lag_p50: Option<Duration>,
    pub lag_p99: Option<Duration>,
    pub lag_max: Option<Duration>,
}

/// A slave reproduces ownership, device nodes and set-id bits, which needs
/// root; without it the replica could silently differ.
pub fn check_privileges(config: &SlaveConfig) -> Result<(), SlaveError> {
    if !config.unprivileged && !rustix::process::geteuid().is_root() {
        return Err(SlaveError::Config(
            "a slave must run as root to reproduce ownership, device nodes and set-id bits \
             exactly (pass --unprivileged to accept a replica that may differ)"
                .into(),
        ));
    }
    Ok(())
}

/// Runs a slave until caught up (if configured), stopped via `stop`, or an
/// error. Always leaves a durable checkpoint of what was applied.
pub fn run(
    config: &SlaveConfig,
    mut source: Box<dyn Source>,
    stop: Arc<AtomicBool>,
) -> Result<SlaveReport, SlaveError> {
    check_privileges(config)?;
    let partitions = source.partitions();
    if partitions == 0 {
        return Err(SlaveError::Config(format!(
            "topic `{}` has no partitions",
            config.topic
        )));
    }
    let replica = Replica::open(&config.root).map_err(|source| SlaveError::Root {
        path: config.root.clone(),
        source,
    })?;
    let state = StateDir::open(&config.root)?;
    let Restored {
        ledger,
        positions,
        intents,
        had_checkpoint,
    } = restore(&state, &config.topic, partitions)?;
    let fresh = !had_checkpoint && positions.iter().all(|p| *p == Position::default());
    if fresh && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(SlaveError::Config(format!(
            "{} is not empty and holds no kafkafs checkpoint; replaying the journal onto it would not \
             reproduce the master's tree. Use an empty directory (or pass --allow-non-empty).",
            config.root.display()
        )));
    }
    if fresh {
        init_fresh(&config.root)?;
    }
    // A position whose records were deleted by retention cannot be resumed.
    for (p, pos) in positions.iter().enumerate() {
        let (low, _high) = source.watermarks(p as u32)?;
        if pos.next_offset < low {
            return Err(SlaveError::OffsetDeleted {
                pos: RecordPos {
                    topic: config.topic.clone(),
                    partition: p as u32,
                    offset: pos.next_offset,
                },
                low,
            });
        }
    }
    tracing::info!(
        topic = %config.topic,
        partitions,
        threads = config.threads,
        "replica {} resumes at offsets {:?}",
        config.root.display(),
        positions.iter().map(|p| p.next_offset).collect::<Vec<_>>()
    );

    let ctx = Arc::new(ReplicaState::new(
        replica,
        ledger,
        &config.topic,
        &positions,
        stop.clone(),
    ));
    if let Some(addr) = config.metrics {
        let m = ctx.clone();
        let bound = crate::metrics::serve(addr, Arc::new(move || m.render_metrics()))
            .map_err(|e| SlaveError::Config(format!("serving metrics on {addr}: {e}")))?;
        tracing::info!("metrics on http://{bound}/metrics");
    }
    let mut reader = Reader::new(
        &config.topic,
        config.max_record_bytes,
        config.skip_bad_records,
        config.skip_records.clone(),
        &positions,
    );
    let starts: Vec<(u32, i64)> = positions
        .iter()
        .enumerate()
        .map(|(p, pos)| (p as u32, pos.next_offset))
        .collect();
    source.assign(&starts)?;
    let mut next_read: Vec<i64> = positions.iter().map(|p| p.next_offset).collect();

    // Finish interrupted records first, alone: they were in flight together
    // (so they do not conflict), and nothing else may run before them.
    let mut stash: Vec<Message> = Vec::new();
    let mut applied_first = 0u64;
    if !intents.is_empty() {
        let mut pending = intents.clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while !pending.is_empty() {
            if stop.load(Ordering::Relaxed) {
                return finish(&state, &ctx, &reader, applied_first, None);
            }
            if Instant::now() > deadline {
                return Err(SlaveError::Config(format!(
                    "could not read back the interrupted records of partitions {:?} within 120 s",
                    pending.keys().collect::<Vec<_>>()
                )));
            }
            let Some(m) = source.poll(Duration::from_millis(200))? else {
                continue;
            };
            let p = m.partition;
            next_read[p as usize] = m.offset + 1;
            match pending.remove(&p) {
                Some(intent) if intent.offset == m.offset => {
                    let mut entry = reader.entry(m)?;
                    entry.resume = Some(intent.fingerprint);
                    tracing::info!(
                        "{}: finishing the record interrupted by the last stop",
                        ctx.pos(p, entry.offset)
                    );
                    match apply_entry(&ctx, p, &mut entry) {
                        Ok(()) => applied_first += 1,
                        Err(WorkError::Stopped) => {
                            return finish(&state, &ctx, &reader, applied_first, None)
                        }
                        Err(WorkError::Fatal(e)) => return Err(e),
                    }
                }
                Some(intent) => {
                    return Err(SlaveError::Config(format!(
                        "{}: expected the interrupted record at offset {}, found offset {}",
                        ctx.pos(p, m.offset),
                        intent.offset,
                        m.offset
                    )))
                }
                None => stash.push(m),
            }
        }
    }

    let applied_seqs: Vec<u64> = (0..partitions).map(|p| ctx.position(p).last_seq).collect();
    let work_ctx = ctx.clone();
    let work: Box<WorkFn<Entry, WorkError>> =
        Box::new(move |p, item: &mut Item<Entry>| apply_entry(&work_ctx, p, &mut item.payload));
    let pool = Pool::start(config.threads, Scheduler::new(&applied_seqs), work);
    let mut fatal: Option<SlaveError> = None;
    for m in stash {
        let p = m.partition;
        match reader.entry(m) {
            Ok(e) => pool.push(p, e.into_item()),
            Err(e) => {
                fatal = Some(e);
                break;
            }
        }
    }

    let mut paused = vec![false; partitions as usize];
    let mut last_cp = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_applied = 0u64;
    let high_mark = config.max_queued_per_partition.max(1);
    while fatal.is_none() {
        if stop.load(Ordering::Relaxed) || pool.failed() {
            break;
        }
        // Backpressure per partition: a full partition never blocks others.
        let queued: Vec<usize> =
            pool.inspect(|s| (0..partitions).map(|p| s.queued_in(p)).collect());
        for p in 0..partitions as usize {
            if !paused[p] && queued[p] >= high_mark {
                source.pause(p as u32)?;
                paused[p] = true;
            } else if paused[p] && queued[p] <= high_mark / 2 {
                source.resume(p as u32)?;
                paused[p] = false;
            }
        }
        match source.poll(Duration::from_millis(20)) {
            Ok(Some(m)) => {
                let p = m.partition;
                if p >= partitions {
                    continue;
                }
                next_read[p as usize] = m.offset + 1;
                match reader.entry(m) {
                    Ok(e) => pool.push(p, e.into_item()),
                    Err(e) => fatal = Some(e),
                }
            }
            Ok(None) => {
                // Caught up: everything read, nothing being applied, nothing
                // ready (records still queued wait for records that are not
                // in the topic; they are reported below).
                if config.exit_when_caught_up
                    && pool.inspect(|s| s.in_flight() == 0 && !s.has_ready())
                    && source.caught_up(&next_read)?
                {
                    break;
                }
            }
            Err(e) => fatal = Some(e.into()),
        }
        if last_cp.elapsed() >= config.checkpoint_interval {
            durable_checkpoint(&state, &ctx)?;
            last_cp = Instant::now();
        }
        if last_progress.elapsed() >= Duration::from_secs(10) {
            let applied = pool.applied();
            let secs = last_progress.elapsed().as_secs_f64();
            tracing::info!(
                "applied {} records ({:.0}/s); lag p50 {:?} p99 {:?}; next offsets {:?}",
                applied_first + applied,
                (applied - last_applied) as f64 / secs,
                ctx.lag.quantile(0.5).unwrap_or_default(),
                ctx.lag.quantile(0.99).unwrap_or_default(),
                (0..partitions)
                    .map(|p| ctx.position(p).next_offset)
                    .collect::<Vec<_>>()
            );
            last_applied = applied;
            last_progress = Instant::now();
        }
    }

    // A bad record stops reading, but what precedes it is still applied
    // (close drains); a stop request or a failed worker stops at once.
    let end = if stop.load(Ordering::Relaxed) || pool.failed() {
        pool.stop()
    } else {
        pool.close()
    };
    let applied = applied_first + end.applied;
    let mut error = fatal;
    match end.error {
        Some(WorkError::Fatal(e)) if error.is_none() => error = Some(e),
        _ => {}
    }
    if error.is_none()
        && config.exit_when_caught_up
        && !stop.load(Ordering::Relaxed)
        && end.scheduler.queued() > 0
    {
        error = Some(SlaveError::Config(format!(
            "{} records could not be applied: they depend on records that are not in the topic",
            end.scheduler.queued()
        )));
    }
    finish(&state, &ctx, &reader, applied, error)
}

fn finish(
    state: &StateDir,
    ctx: &ReplicaState,
    reader: &Reader,
    applied: u64,
    error: Option<SlaveError>,
) -> Result<SlaveReport, SlaveError> {
    let cp = durable_checkpoint(state, ctx);
    if let Some(e) = error {
        if let Err(cpe) = cp {
            tracing::error!("writing the final checkpoint failed too: {cpe}");
        }
        return Err(e);
    }
    cp?;
    Ok(SlaveReport {
        applied,
        errno_outcomes: ctx.errno_outcomes.load(Ordering::Relaxed),
        duplicates: reader.duplicates,
        skipped_bad: reader.skipped_bad,
        positions: ctx.positions(),
        lag_p50: ctx.lag.quantile(0.5),
        lag_p99: ctx.lag.quantile(0.99),
        lag_max: (ctx.lag.count() > 0).then(|| ctx.lag.max()),
    })
}

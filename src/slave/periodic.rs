//! What a slave does every so often while following: durable checkpoints,
//! snapshots, the progress line; and its final checkpoint and report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::follower::Follower;
use super::start::Opened;
use super::{SlaveConfig, SlaveReport};
use crate::error::ReplicaError;
use crate::journal::Source;
use crate::replica::checkpoint::StateDir;
use crate::replica::entry::{Entry, WorkError};
use crate::replica::pool::Pool;
use crate::replica::sleep_unless_stopped;
use crate::replica::state::{durable_checkpoint, ReplicaState};
use crate::snapshot::bootstrap::take_into;
use crate::snapshot::take::{limits_file, Cut};
use crate::snapshot::SnapshotStore;

/// The snapshot store, and periodic snapshots of the replica into it.
pub(super) struct Snapshots {
    pub(super) store: Option<Box<dyn SnapshotStore>>,
    every: Option<Duration>,
    keep: usize,
    last: Instant,
    /// Where the last snapshot was taken (an unchanged replica is not
    /// snapshotted again).
    last_starts: Option<Vec<i64>>,
}

impl Snapshots {
    pub(super) fn new(config: &SlaveConfig, store: Option<Box<dyn SnapshotStore>>) -> Self {
        Snapshots {
            store,
            every: config.snapshot_every,
            keep: config.snapshot_keep,
            last: Instant::now(),
            last_starts: None,
        }
    }

    pub(super) fn every(&self) -> Duration {
        self.every.unwrap_or_default()
    }

    pub(super) fn due(&self) -> bool {
        self.every.is_some_and(|d| self.last.elapsed() >= d)
    }

    /// Pauses the appliers at a cut, writes the tree and the cut's
    /// positions into the store, resumes, and expires old snapshots.
    pub(super) fn take(
        &mut self,
        pool: &Pool<Entry, WorkError>,
        opened: &Opened,
        config: &SlaveConfig,
        stop: &AtomicBool,
    ) -> Result<(), ReplicaError> {
        self.last = Instant::now();
        let Some(store) = self.store.as_mut() else {
            return Err(ReplicaError::Config(
                "--snapshot-every: no snapshot store is configured".into(),
            ));
        };
        let started = Instant::now();
        pool.pause();
        let starts: Vec<i64> = opened
            .ctx
            .positions()
            .iter()
            .map(|p| p.next_offset)
            .collect();
        if self.last_starts.as_ref() == Some(&starts) {
            pool.resume();
            tracing::debug!("no snapshot: nothing applied since the last one");
            return Ok(());
        }
        let taken = limits_file(&config.root).and_then(|limits| {
            let cut = Cut {
                topic: config.topic.clone(),
                positions: opened.ctx.positions(),
                limits,
            };
            take_into(&config.root, &cut, store.as_mut(), stop)
        });
        pool.resume();
        let snap = taken?;
        self.last_starts = Some(starts);
        tracing::info!(
            "snapshot {} taken into {}: {} entries, {:.1} MiB, positions {:?}, appliers paused {:.1} s",
            snap.id_hex(),
            store.describe(),
            snap.entries,
            snap.bytes as f64 / 1048576.0,
            snap.starts(),
            started.elapsed().as_secs_f64()
        );
        match store.expire(self.keep) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} older snapshot(s) expired (keeping {})", self.keep),
            Err(e) => tracing::warn!("expiring old snapshots: {e}"),
        }
        Ok(())
    }
}

/// What the follow loop does between messages: checkpoints, snapshots,
/// the progress line, the systemd watchdog.
pub(super) struct Chores {
    checkpoints: Checkpoints,
    progress: Progress,
    watchdog: crate::notify::Watchdog,
}

impl Chores {
    pub(super) fn new(config: &SlaveConfig) -> Self {
        Chores {
            checkpoints: Checkpoints::new(config.checkpoint_interval),
            progress: Progress::new(config.notify),
            watchdog: crate::notify::Watchdog::from_env(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn tick(
        &mut self,
        config: &SlaveConfig,
        source: &mut dyn Source,
        pool: &Pool<Entry, WorkError>,
        opened: &Opened,
        snaps: &mut Snapshots,
        follower: &Follower,
        stop: &AtomicBool,
    ) {
        self.checkpoints.tick(&opened.state, &opened.ctx);
        if snaps.due() {
            // A failed snapshot is logged and tried again next time.
            if let Err(e) = snaps.take(pool, opened, config, stop) {
                tracing::warn!(
                    "taking a snapshot: {e}; trying again in {:?}",
                    snaps.every()
                );
            }
        }
        self.progress
            .tick(&opened.ctx, pool, source, follower.applied_first);
        self.progress
            .caught_up(&opened.ctx, pool, source, follower.next_read());
        if config.notify {
            self.watchdog.tick();
        }
    }
}

/// Transient read errors, counted and logged every 30 s.
#[derive(Default)]
pub(super) struct PollErrors {
    count: u64,
    logged: Option<Instant>,
}

impl PollErrors {
    pub(super) fn note(&mut self, e: &crate::error::JournalError) {
        self.count += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(30))
        {
            tracing::warn!(
                "reading the topic: {e} ({} errors so far); following on",
                self.count
            );
            self.logged = Some(Instant::now());
        }
    }
}

/// Periodic durable checkpoints; a failed one (a full disk) is logged and
/// retried, the previous one staying valid.
pub(super) struct Checkpoints {
    interval: Duration,
    last: Instant,
    failing_since: Option<Instant>,
}

impl Checkpoints {
    pub(super) fn new(interval: Duration) -> Self {
        Checkpoints {
            interval,
            last: Instant::now(),
            failing_since: None,
        }
    }

    pub(super) fn tick(&mut self, state: &StateDir, ctx: &ReplicaState) {
        if self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        match durable_checkpoint(state, ctx) {
            Ok(()) => {
                if let Some(since) = self.failing_since.take() {
                    tracing::info!(
                        "checkpoint written again (failing for {:.0?})",
                        since.elapsed()
                    );
                }
            }
            Err(e) => {
                if self.failing_since.is_none() {
                    tracing::error!(
                        "writing the checkpoint failed: {e}; the previous one stays valid, retrying \
                         every {:?}",
                        self.interval
                    );
                    self.failing_since = Some(Instant::now());
                }
            }
        }
    }
}

/// The periodic progress line (also systemd's STATUS when notifying).
pub(super) struct Progress {
    last: Instant,
    last_applied: u64,
    /// Lag samples at the last line: its quantiles cover the interval.
    last_lag: crate::metrics::Counts,
    /// The catch-up's bar, on a terminal, until caught up.
    bar: Option<crate::progress::Progress>,
    /// When the bar last read the topic's end offsets.
    ends_read: Option<Instant>,
    notify: bool,
    /// The first time everything was read and applied (logged once).
    caught_up_once: bool,
}

impl Drop for Progress {
    /// A bar still drawn (the slave stops before catching up) goes: the
    /// stop's own line says where the replica stands.
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.clear();
        }
    }
}

impl Progress {
    pub(super) fn new(notify: bool) -> Self {
        Progress {
            last: Instant::now(),
            last_applied: 0,
            last_lag: crate::metrics::Counts::default(),
            bar: std::io::IsTerminal::is_terminal(&std::io::stderr())
                .then(|| crate::progress::Progress::new("catch-up", 0, 0).counting("records")),
            ends_read: None,
            notify,
            caught_up_once: false,
        }
    }

    /// Logs, once, the moment the replica first caught up with the topic.
    pub(super) fn caught_up(
        &mut self,
        ctx: &ReplicaState,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        next_read: &[i64],
    ) {
        if self.caught_up_once || !pool.inspect(|s| s.in_flight() == 0 && !s.has_ready()) {
            return;
        }
        let none_held = vec![false; next_read.len()];
        if source.caught_up(next_read, &none_held).unwrap_or(false) {
            self.caught_up_once = true;
            if let Some(bar) = self.bar.take() {
                bar.finish();
            }
            tracing::info!(
                "caught up with topic `{}`: {} records applied, next offsets {:?}",
                ctx.topic,
                ctx.applied.load(Ordering::Relaxed),
                next_read
            );
            for (p, &end) in next_read.iter().enumerate() {
                ctx.set_end(p as u32, end);
            }
            if self.notify {
                crate::notify::status(&format!("caught up with topic `{}`", ctx.topic));
            }
        }
    }

    pub(super) fn tick(
        &mut self,
        ctx: &ReplicaState,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        first: u64,
    ) {
        if self.bar.is_some() {
            self.draw_bar(ctx, pool, source, first);
        }
        if self.last.elapsed() < Duration::from_secs(10) {
            return;
        }
        read_ends(ctx, source);
        let line = self.line(ctx, pool, first);
        tracing::info!("{line}");
        if self.notify {
            crate::notify::status(&line);
        }
        self.last_applied = pool.applied();
        self.last = Instant::now();
    }

    /// The catch-up bar: applied of applied plus behind.
    fn draw_bar(
        &mut self,
        ctx: &ReplicaState,
        pool: &Pool<Entry, WorkError>,
        source: &mut dyn Source,
        first: u64,
    ) {
        if self
            .ends_read
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            // The topic's end, for the bar's total (else read every 10 s).
            read_ends(ctx, source);
            self.ends_read = Some(Instant::now());
        }
        let Some(bar) = &self.bar else {
            return;
        };
        let applied = first + pool.applied();
        let behind: i64 = ctx.behind().iter().flatten().sum();
        bar.set_total(applied + behind.max(0) as u64, 0);
        bar.set(applied, 0);
        bar.tick();
    }

    /// The progress line: rate, records behind, lag over the interval.
    fn line(&mut self, ctx: &ReplicaState, pool: &Pool<Entry, WorkError>, first: u64) -> String {
        let applied = pool.applied();
        let secs = self.last.elapsed().as_secs_f64();
        let rate = (applied - self.last_applied) as f64 / secs;
        let behind: i64 = ctx.behind().iter().flatten().sum();
        let eta = if behind == 0 {
            "caught up".to_string()
        } else if rate >= 1.0 {
            format!("{behind} records behind, ETA {:.0} s", behind as f64 / rate)
        } else {
            format!("{behind} records behind")
        };
        let lag = ctx.lag.counts();
        let recent = lag.since(&self.last_lag);
        self.last_lag = lag;
        format!(
            "applied {} records ({rate:.0}/s); {eta}; lag p50 {:?} p99 {:?} (last {:.0} s); next offsets {:?}",
            first + applied,
            recent.quantile(0.5).unwrap_or_default(),
            recent.quantile(0.99).unwrap_or_default(),
            secs,
            (0..ctx.partitions())
                .map(|p| ctx.position(p).next_offset)
                .collect::<Vec<_>>()
        )
    }
}

/// Notes the topic's end offsets (for records behind).
fn read_ends(ctx: &ReplicaState, source: &mut dyn Source) {
    for p in 0..ctx.partitions() {
        if let Ok((_, end)) = source.watermarks(p) {
            ctx.set_end(p, end);
        }
    }
}

/// Writes the final checkpoint (retried while the disk is full, unless a
/// stop was requested: the ledger then still holds every position) and
/// reports.
pub(super) fn finish(
    state: &StateDir,
    ctx: &ReplicaState,
    follower: &Follower,
    error: Option<ReplicaError>,
    stop: &AtomicBool,
) -> Result<SlaveReport, ReplicaError> {
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = durable_checkpoint(state, ctx) {
        if error.is_some() || stop.load(Ordering::Relaxed) {
            tracing::error!(
                "writing the final checkpoint failed: {e}; the ledger keeps the positions"
            );
            break;
        }
        tracing::error!("writing the final checkpoint failed: {e}; retrying in {backoff:?}");
        if sleep_unless_stopped(stop, backoff) {
            break;
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
    if let Some(e) = error {
        return Err(e);
    }
    let reader = &follower.reader;
    Ok(SlaveReport {
        applied: follower.applied_first,
        errno_outcomes: ctx.errno_outcomes.load(Ordering::Relaxed),
        duplicates: reader.duplicates,
        skipped_bad: reader.skipped_bad,
        fenced: reader.fenced,
        positions: ctx.positions(),
        lag_p50: ctx.lag.quantile(0.5),
        lag_p99: ctx.lag.quantile(0.99),
        lag_max: (ctx.lag.count() > 0).then(|| ctx.lag.max()),
    })
}

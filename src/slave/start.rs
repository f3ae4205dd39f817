//! Opening a slave's replica: checks before anything is created, a new
//! replica's bootstrap from a snapshot, its filter, retention, and where
//! a point-in-time replica stops.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{retry_transient, SlaveConfig};
use crate::error::{RecordPos, ReplicaError};
use crate::journal::Source;
use crate::op::Timestamp;
use crate::replica::checkpoint::{DataLock, Position, StateDir};
use crate::replica::state::{init_fresh, root_is_empty, ReplicaState};
use crate::replica::OpenOptions;
use crate::snapshot::bootstrap::{clear_interrupted, interrupted, restore_into};
use crate::snapshot::Choice;
use crate::snapshot::{choose, SnapshotStore};

/// The replica opened for replay: where it resumes, its state.
pub(super) struct Opened {
    _lock: Option<DataLock>,
    pub(super) state: StateDir,
    pub(super) ctx: Arc<ReplicaState>,
    pub(super) positions: Vec<Position>,
    pub(super) intents: std::collections::BTreeMap<u32, crate::replica::checkpoint::Intent>,
}

/// Opens the replica directory, restores its positions and checks that a
/// fresh replica starts empty and that its filesystem honours the limits
/// the topic declared.
pub(super) fn open_replica(
    config: &SlaveConfig,
    source: &mut dyn Source,
    snapshots: &mut Option<Box<dyn SnapshotStore>>,
    stop: &Arc<AtomicBool>,
) -> Result<Opened, ReplicaError> {
    // Refused before anything is created in it.
    let never_used = StateDir::existing(&config.root).is_none();
    if never_used && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(not_empty(config));
    }
    let state = StateDir::open(&config.root)?;
    let lock = config.hold_lock.then(|| state.lock()).transpose()?;
    bootstrap(config, &state, source, snapshots, stop)?;
    let opened = crate::replica::open(
        &config.root,
        &state,
        OpenOptions {
            topic: &config.topic,
            partitions: source.partitions(),
            unprivileged: config.unprivileged,
            filter: config.filter.clone(),
            stop: stop.clone(),
        },
    )?;
    let fresh =
        !opened.had_checkpoint && opened.positions.iter().all(|p| *p == Position::default());
    if fresh && !config.allow_non_empty && !root_is_empty(&config.root)? {
        return Err(not_empty(config));
    }
    adopt_filter(config, &state, fresh)?;
    if fresh {
        init_fresh(&config.root)?;
    } else {
        check_capable(config, &opened.state)?;
    }
    Ok(Opened {
        _lock: lock,
        state,
        ctx: opened.state,
        positions: opened.positions,
        intents: opened.intents,
    })
}

fn not_empty(config: &SlaveConfig) -> ReplicaError {
    ReplicaError::Refused(format!(
        "{} is not empty and holds no kafkafs checkpoint; replaying the journal onto it would not \
         reproduce the master's tree. Use an empty directory (or pass --allow-non-empty).",
        config.root.display()
    ))
}

/// A replica resuming on another filesystem must still honour the limits
/// its topic declared.
fn check_capable(config: &SlaveConfig, state: &ReplicaState) -> Result<(), ReplicaError> {
    let replica = &state.replica;
    let unmet = replica
        .unmet(&replica.limits())
        .map_err(|source| ReplicaError::Root {
            path: config.root.clone(),
            source,
        })?;
    match unmet {
        None => Ok(()),
        Some(why) => Err(ReplicaError::Refused(format!(
            "{}: this replica's filesystem cannot honour the limits of topic `{}`: it must hold {why}",
            config.root.display(),
            config.topic
        ))),
    }
}

/// The filter a partial replica was built with, in its state folder.
pub(super) const FILTER_FILE: &str = "filter";

/// A replica keeps the filter it was built with: a new replica notes it,
/// a later start must give the same one (else the replica would hold what
/// the new filter leaves out, or lack what it lets in).
pub(super) fn adopt_filter(
    config: &SlaveConfig,
    state: &StateDir,
    fresh: bool,
) -> Result<(), ReplicaError> {
    let path = state.path().join(FILTER_FILE);
    let io = |e| ReplicaError::Root {
        path: path.clone(),
        source: e,
    };
    let wanted = config.filter.spec();
    let noted = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    let describe = |spec: &str| {
        if spec.is_empty() {
            "no filter (the whole tree)".to_string()
        } else {
            spec.trim_end().replace('\n', ", ")
        }
    };
    match noted {
        Some(noted) if noted == wanted => Ok(()),
        None if fresh => {
            if !wanted.is_empty() {
                std::fs::write(&path, &wanted).map_err(io)?;
            }
            Ok(())
        }
        None if wanted.is_empty() => Ok(()),
        noted => Err(ReplicaError::Refused(format!(
            "{} was built with {}, but this start gives {}: a filter holds from a replica's \
             first start. Start it with the same --include/--exclude, or build a new replica in an \
             empty directory",
            config.root.display(),
            describe(noted.as_deref().unwrap_or_default()),
            describe(&wanted)
        ))),
    }
}

/// A new replica (empty, no checkpoint) is built from a snapshot when the
/// topic no longer starts at offset 0, or when asked (--from-snapshot);
/// an interrupted restore is cleared and started again.
pub(super) fn bootstrap(
    config: &SlaveConfig,
    state: &StateDir,
    source: &mut dyn Source,
    snapshots: &mut Option<Box<dyn SnapshotStore>>,
    stop: &AtomicBool,
) -> Result<(), ReplicaError> {
    let root = &config.root;
    if interrupted(root) {
        tracing::warn!(
            "{}: a restore was interrupted; starting it again",
            root.display()
        );
        clear_interrupted(root)?;
    } else if state.load_checkpoint()?.is_some() || !root_is_empty(root)? {
        return Ok(());
    }
    let (lows, highs) = watermarks(source, stop)?;
    let Some((choice, why)) = snapshot_wanted(config, &lows) else {
        return Ok(());
    };
    if !config.filter.is_empty() {
        return Err(ReplicaError::Config(format!(
            "{why}, but a snapshot holds the whole tree and --include/--exclude make a partial \
             replica: build it without a filter, or from a topic that still holds every record"
        )));
    }
    let Some(store) = snapshots.as_mut() else {
        return Err(ReplicaError::Config(format!(
            "{why}, but no snapshot store is configured"
        )));
    };
    let snap = store
        .list()
        .and_then(|all| choose(&all, &config.topic, &lows, &highs, &choice))
        .map_err(|e| {
            ReplicaError::Refused(format!(
                "{why}, but {} has none to use: {e}. Snapshots are taken by a slave run with \
                 --snapshot-every (see README, \"Snapshots\")",
                store.describe()
            ))
        })?;
    verify_lineage(config, source, &snap, &lows).map_err(|e| {
        ReplicaError::Refused(format!(
            "{why}, but snapshot {} is not of this topic's history: {e}",
            snap.id_hex()
        ))
    })?;
    tracing::info!("{why}: restoring snapshot {}", snap.id_hex());
    restore_into(
        root,
        state,
        store.as_mut(),
        &snap,
        config.unprivileged,
        stop,
    )?;
    Ok(())
}

/// Every partition's (low, high) watermarks.
fn watermarks(
    source: &mut dyn Source,
    stop: &AtomicBool,
) -> Result<(Vec<i64>, Vec<i64>), ReplicaError> {
    let mut lows = Vec::new();
    let mut highs = Vec::new();
    for p in 0..source.partitions() {
        let (low, high) = retry_transient(stop, "reading the topic's watermarks", || {
            source.watermarks(p)
        })?;
        lows.push(low);
        highs.push(high);
    }
    Ok((lows, highs))
}

/// Which snapshot a new replica starts from, and why (`None`: it replays
/// the topic from its beginning).
fn snapshot_wanted(config: &SlaveConfig, lows: &[i64]) -> Option<(Choice, String)> {
    let deleted = lows.iter().position(|&l| l > 0);
    let choice = match (&config.from_snapshot, deleted) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => Choice::Newest,
        (None, None) => return None,
    };
    let why = match deleted {
        Some(p) => format!(
            "topic `{}` no longer starts at offset 0 (partition {p} starts at {}): a new replica is built from a snapshot",
            config.topic, lows[p]
        ),
        None => "--from-snapshot".into(),
    };
    Some((choice, why))
}

/// Checks that a snapshot's cut lies in this topic's history (not in that
/// of an earlier topic of the same name): the record before each of its
/// positions, where still in the topic, is the one its position says was
/// applied last (same partition sequence number).
pub(super) fn verify_lineage(
    config: &SlaveConfig,
    source: &mut dyn Source,
    snap: &crate::snapshot::SnapshotInfo,
    lows: &[i64],
) -> Result<(), ReplicaError> {
    for (p, pos) in snap.positions.iter().enumerate() {
        let p32 = p as u32;
        if pos.next_offset <= lows[p] || pos.last_pseq == 0 {
            continue;
        }
        let at = pos.next_offset - 1;
        let m = read_one(config, source, p32, at)?;
        let Ok(rec) = crate::record::Record::decode_from(&m, config.max_record_bytes, p32) else {
            continue;
        };
        let void = pos.fence.is_some_and(|f| f.voids(&rec.writer));
        if rec.seq != 0 && !void && rec.partition_seq != pos.last_pseq {
            return Err(ReplicaError::Refused(format!(
                "partition {p} offset {at} holds partition sequence {}, the snapshot applied {} there",
                rec.partition_seq, pos.last_pseq
            )));
        }
    }
    Ok(())
}

/// The payload of the message at (partition, offset).
pub(super) fn read_one(
    config: &SlaveConfig,
    source: &mut dyn Source,
    p: u32,
    offset: i64,
) -> Result<Vec<u8>, ReplicaError> {
    source.assign(&[(p, offset)])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(m) = source.poll(Duration::from_millis(200))? {
            if m.partition == p && m.offset == offset {
                return Ok(m.payload);
            }
        }
    }
    Err(ReplicaError::Stalled(format!(
        "could not read {} within 60 s",
        RecordPos {
            topic: config.topic.clone(),
            partition: p,
            offset
        }
    )))
}

/// A position whose records were deleted by retention cannot be resumed.
pub(super) fn check_retention(
    config: &SlaveConfig,
    source: &mut dyn Source,
    positions: &[Position],
    stop: &AtomicBool,
) -> Result<(), ReplicaError> {
    for (p, pos) in positions.iter().enumerate() {
        let (low, _high) = retry_transient(stop, "reading the topic's watermarks", || {
            source.watermarks(p as u32)
        })?;
        if pos.next_offset < low {
            return Err(ReplicaError::OffsetDeleted {
                pos: RecordPos {
                    topic: config.topic.clone(),
                    partition: p as u32,
                    offset: pos.next_offset,
                },
                low,
            });
        }
    }
    Ok(())
}

/// The master's time of the record at (partition, offset).
pub(super) fn record_time(
    config: &SlaveConfig,
    source: &mut dyn Source,
    p: u32,
    offset: i64,
) -> Result<Timestamp, ReplicaError> {
    let pos = RecordPos {
        topic: config.topic.clone(),
        partition: p,
        offset,
    };
    let (low, high) = source.watermarks(p)?;
    if offset < low || offset >= high {
        return Err(ReplicaError::Config(format!(
            "--until {p}:{offset}: {pos} is not in the topic (partition {p} holds offsets {low}..{high})"
        )));
    }
    let payload = read_one(config, source, p, offset)?;
    crate::record::Record::decode_from(&payload, config.max_record_bytes, p)
        .map(|r| r.time)
        .map_err(|source| ReplicaError::BadRecord { pos, source })
}

//! Durability modes, and what a master start does about the `fsync`
//! mode's leftovers: records a killed master had not seen acknowledged are
//! sent again from the write-ahead file; a data-root that holds effects the
//! journal will never have (the machine went down, the write-ahead file was
//! lost, another master took over) is rolled back to exactly the journal.
//! See DESIGN.md §6, "Durability".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::JournalError;
use crate::journal::{Journal, Source};
use crate::master::pipeline::read_from;
use crate::master::wal::{self, Leftover};
use crate::master::window::Unacked;
use crate::master::{io, MasterConfig, MasterError};
use crate::op::hex;
use crate::record::{Record, DEFAULT_MAX_RECORD_BYTES, HEADER_OP, HEADER_VERSION};
use crate::replica::checkpoint::StateDir;

/// When a mutating call is answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Once Kafka acknowledged its record (acks=all) and the data-root
    /// applied it: every answer is in the journal.
    #[default]
    Journal,
    /// Once its record is in the write-ahead file and applied; `fsync`,
    /// `fdatasync`, `fsyncdir` and `O_SYNC`/`O_DSYNC` writes wait for the
    /// acknowledgement of everything before them.
    Fsync,
}

impl Durability {
    /// How long a record may wait in the producer for others to share its
    /// Kafka request. `journal`: none (every call waits for its own round
    /// trip). `fsync`: 2 ms: calls do not wait for Kafka, so requests carry
    /// many records (the machine's user CPU during an untar fell by about
    /// 45%, which the calls on the same cores get instead), and an `fsync`
    /// waits at most that much longer. `-X linger.ms` overrides it.
    pub fn linger(self) -> Duration {
        match self {
            Durability::Journal => Duration::ZERO,
            Durability::Fsync => Duration::from_millis(2),
        }
    }
}

/// What the start found in the write-ahead directory.
#[derive(Debug, PartialEq, Eq)]
pub enum Leftovers {
    /// Nothing (a clean stop, or the `journal` mode).
    None,
    /// Records a killed master had not seen acknowledged, sent again.
    Resent(usize),
    /// The data-root must be rolled back to the journal: why.
    RollBack(String),
}

/// Deals with what a previous run left in `DATA/.kafkafs/wal` (under the
/// data-root's lock, before the catch-up): sends the unacknowledged tail
/// again if the run was only killed, or says why the data-root must be
/// rolled back. `last` is each partition's last readable record.
pub fn settle_leftovers(
    config: &MasterConfig,
    journal: &dyn Journal,
    writer_id: Option<&[u8]>,
    last: &[Option<(i64, Record)>],
) -> Result<Leftovers, MasterError> {
    let dir = wal::dir_of(&config.data);
    let Some(left) = wal::read_leftover(&dir).map_err(io(&dir))? else {
        return Ok(Leftovers::None);
    };
    if let Some(why) = rollback_reason(&left, writer_id, last) {
        return Ok(Leftovers::RollBack(why));
    }
    let mut source = journal.source()?;
    let mut tails = Vec::with_capacity(last.len());
    for p in 0..source.partitions() {
        tails.push(last_pseq(source.as_mut(), p)?);
    }
    let resend = match tail_to_resend(&left.records, &tails) {
        Ok(r) => r,
        Err(why) => return Ok(Leftovers::RollBack(why)),
    };
    if !resend.is_empty() {
        tracing::warn!(
            "the previous run stopped with {} records Kafka had not acknowledged; sending them \
             again from the write-ahead file",
            resend.len()
        );
        resend_all(journal, &resend, config.journal_timeout)?;
    }
    std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    Ok(Leftovers::Resent(resend.len()))
}

/// Whether what was left cannot be sent again as it is.
fn rollback_reason(
    left: &Leftover,
    writer_id: Option<&[u8]>,
    last: &[Option<(i64, Record)>],
) -> Option<String> {
    if let Some(why) = &left.diverged {
        return Some(format!(
            "another master took over while records were unacknowledged ({why})"
        ));
    }
    let now = wal::boot_id();
    if left.boot_id != now {
        return Some(format!(
            "the machine restarted since the write-ahead file was written (boot id {} then, {now} \
             now): the data-root may hold effects the journal never got",
            left.boot_id
        ));
    }
    let foreign = last
        .iter()
        .flatten()
        .find(|(_, r)| Some(r.writer.id.as_slice()) != writer_id);
    foreign.map(|(offset, r)| {
        format!(
            "writer {} wrote the topic after this master (partition {} offset {offset}) while \
             records were unacknowledged",
            hex(&r.writer.id),
            r.partition
        )
    })
}

/// The records Kafka lacks, in sequence order: in each partition, those
/// after the log's last partition sequence number, which must follow it
/// without a hole.
fn tail_to_resend(records: &[Unacked], tails: &[u64]) -> Result<Vec<Unacked>, String> {
    let mut next: Vec<u64> = tails.iter().map(|t| t + 1).collect();
    let mut out = Vec::new();
    for u in records {
        let Some(want) = next.get_mut(u.partition as usize) else {
            return Err(format!(
                "the write-ahead file names partition {}, the topic has {}",
                u.partition,
                tails.len()
            ));
        };
        if u.pseq < *want {
            continue; // in the log already
        }
        if u.pseq > *want {
            return Err(format!(
                "the write-ahead file lacks partition {}'s records {}..{} (the log ends at {})",
                u.partition,
                *want,
                u.pseq - 1,
                *want - 1
            ));
        }
        *want += 1;
        out.push(u.clone());
    }
    Ok(out)
}

/// How far back a partition is searched for its last record (past the
/// fences of starts that wrote nothing).
const PSEQ_SCAN: i64 = 256;

/// The partition sequence number of the last record in partition `p`
/// (0 if it holds none; fences carry none).
fn last_pseq(source: &mut dyn Source, p: u32) -> Result<u64, MasterError> {
    let (low, high) = source.watermarks(p)?;
    let mut end = high;
    while end > low {
        let start = (end - PSEQ_SCAN).max(low);
        let mut from: Vec<i64> = (0..source.partitions())
            .map(|q| source.watermarks(q).map(|w| w.1))
            .collect::<Result<_, _>>()?;
        from[p as usize] = start;
        let found = read_from(source, &from)?
            .into_iter()
            .filter(|m| m.partition == p && m.offset < end)
            .filter_map(|m| Record::decode_from(&m.payload, DEFAULT_MAX_RECORD_BYTES, p).ok())
            .map(|r| r.partition_seq)
            .max()
            .unwrap_or(0);
        if found > 0 {
            return Ok(found);
        }
        end = start;
    }
    Ok(0)
}

/// Sends `records` in order with a fresh producer and waits for every
/// acknowledgement.
fn resend_all(
    journal: &dyn Journal,
    records: &[Unacked],
    timeout: Duration,
) -> Result<(), JournalError> {
    let sink = journal.sink(Duration::ZERO)?;
    let (tx, rx) = crate::sync::channel::bounded(records.len());
    for u in records {
        let tx = tx.clone();
        sink.send(
            u.partition,
            &u.key,
            &u.payload,
            &[(HEADER_VERSION, b"1"), (HEADER_OP, u.op.as_bytes())],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )?;
    }
    let deadline = Instant::now() + timeout;
    for _ in records {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(JournalError::Timeout(timeout)),
        }
    }
    Ok(())
}

/// Is the data-root ahead of the journal (it applied records the topic
/// does not hold)? Compares the positions it restores (ledger or
/// checkpoint) with the partitions' ends.
pub fn ahead_of_journal(
    statedir: &StateDir,
    journal: &dyn Journal,
) -> Result<Option<String>, MasterError> {
    let mut source = journal.source()?;
    let topic = journal.topic();
    if statedir.load_checkpoint()?.is_none() && !statedir.ledger_path().exists() {
        return Ok(None);
    }
    let restored = crate::replica::state::restore(statedir, &topic, source.partitions())?;
    for (p, pos) in restored.positions.iter().enumerate() {
        let (_, end) = source.watermarks(p as u32)?;
        // Offsets alone could miss it (re-sent copies move the log's
        // offsets further than the data-root's); partition sequence
        // numbers cannot.
        let logged = last_pseq(source.as_mut(), p as u32)?;
        if pos.next_offset > end || pos.last_pseq > logged {
            return Ok(Some(format!(
                "the data-root applied partition {p} up to offset {} (partition sequence {}), \
                 but the topic ends at offset {end} (partition sequence {logged}): records \
                 applied before their acknowledgement never reached Kafka (the write-ahead \
                 file is gone)",
                pos.next_offset, pos.last_pseq
            )));
        }
    }
    Ok(None)
}

/// Moves everything the data-root holds aside (into
/// `DATA/.kafkafs/discarded/<time>`) and forgets what it applied, so the
/// catch-up rebuilds it from the journal. Returns where it went.
pub fn roll_back(data: &Path, statedir: &StateDir, why: &str) -> Result<PathBuf, MasterError> {
    let stamp = crate::op::Timestamp::now();
    let aside = statedir
        .path()
        .join("discarded")
        .join(format!("{}.{:09}", stamp.sec, stamp.nsec));
    std::fs::create_dir_all(&aside).map_err(io(&aside))?;
    let mut moved = 0usize;
    for e in std::fs::read_dir(data).map_err(io(data))? {
        let e = e.map_err(io(data))?;
        if e.file_name() == ".kafkafs" {
            continue;
        }
        let to = aside.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(io(&to))?;
        moved += 1;
    }
    for f in [statedir.checkpoint_path(), statedir.ledger_path()] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&f)(e)),
            _ => {}
        }
    }
    let wal_dir = wal::dir_of(data);
    if wal_dir.exists() {
        std::fs::remove_dir_all(&wal_dir).map_err(io(&wal_dir))?;
    }
    tracing::error!(
        "rolling the data-root back to the journal: {why}. Its {moved} top-level entries were \
         moved to {}; the journal is replayed into it, and what differs is listed after the \
         replay. Only what was fsync'd was promised, and the journal holds it.",
        aside.display()
    );
    Ok(aside)
}

/// After the replay: lists what the discarded tree held that the journal
/// does not (in the log, and in full in `<aside>.list`).
pub fn list_discarded(data: &Path, aside: &Path) -> Result<usize, MasterError> {
    let mut old = crate::tree::snapshot(aside).map_err(io(aside))?;
    let mut new = crate::tree::snapshot(data).map_err(io(data))?;
    // The root's own attributes are not compared: `aside` is a new
    // directory.
    old.nodes.remove(&Vec::new());
    new.nodes.remove(&Vec::new());
    let diffs: Vec<String> = crate::tree::diff(&old, &new, usize::MAX)
        .into_iter()
        .map(|d| {
            d.replace("only in the first tree", "only in the discarded data-root")
                .replace("only in the second tree", "only in the journal")
        })
        .collect();
    let list = aside.with_extension("list");
    std::fs::write(&list, diffs.join("\n") + "\n").map_err(io(&list))?;
    for d in diffs.iter().take(20) {
        tracing::warn!("discarded (not in the journal): {d}");
    }
    tracing::warn!(
        "{} differences between the discarded data-root ({}) and the journal; all listed in {}",
        diffs.len(),
        aside.display(),
        list.display()
    );
    Ok(diffs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unacked(seq: u64, partition: u32, pseq: u64) -> Unacked {
        Unacked {
            seq,
            partition,
            pseq,
            key: Vec::new(),
            payload: Default::default(),
            op: "write",
            since: Instant::now(),
        }
    }

    #[test]
    fn only_the_tail_kafka_lacks_is_sent_again() {
        let records = [
            unacked(1, 0, 4),
            unacked(2, 1, 7),
            unacked(3, 0, 5),
            unacked(4, 0, 6),
            unacked(5, 1, 8),
        ];
        let again = tail_to_resend(&records, &[4, 7]).unwrap();
        let seqs: Vec<u64> = again.iter().map(|u| u.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5], "pseq 4 of 0 and 7 of 1 are in the log");
        assert!(tail_to_resend(&records, &[6, 8]).unwrap().is_empty());
    }

    #[test]
    fn a_hole_between_the_log_and_the_file_means_roll_back() {
        let records = [unacked(1, 0, 4), unacked(2, 0, 5)];
        let why = tail_to_resend(&records, &[2]).unwrap_err();
        assert!(why.contains("lacks partition 0's records 3..3"), "{why}");
        let why = tail_to_resend(&[unacked(1, 3, 1)], &[0]).unwrap_err();
        assert!(why.contains("partition 3"), "{why}");
    }
}

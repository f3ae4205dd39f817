//! Snapshots kept in Kafka itself: the companion topic
//! `<topic>.snapshots`, two partitions, kept for ever (kafkafs deletes old
//! snapshots itself). Partition 0 holds the parts, one message each
//! (parts of snapshots taken at once by different slaves may interleave:
//! each carries its snapshot's id and index); partition 1 holds one
//! `SnapshotIndex` per complete snapshot, written only after every part
//! was acknowledged, so listing reads partition 1 alone.

use std::time::{Duration, Instant};

use prost::Message as _;

use super::{Location, PartWriter, SnapshotError, SnapshotInfo, SnapshotStore};
use crate::error::JournalError;
use crate::journal::kafka::{KafkaConfig, KafkaSink, KafkaSource};
use crate::journal::{send_and_wait, Sink, Source};
use crate::record::pb;
use crate::record::pb::snapshot_part::Part;
use crate::sync::{Arc, Mutex};

const PARTS: u32 = 0;
const INDEX: u32 = 1;
/// Unacknowledged bytes a snapshot writer allows itself (memory bound).
const MAX_UNACKED: usize = 64 * 1024 * 1024;

/// How long a read of the store waits out errors that waiting cures (a
/// partition without a leader just after the topic was created, or while
/// leadership moves).
const PATIENCE: Duration = Duration::from_secs(30);

/// Runs a read of the store, retrying it for up to `PATIENCE` while it
/// fails in a way waiting cures.
fn patiently<T>(
    what: &str,
    read: impl FnMut() -> Result<T, SnapshotError>,
) -> Result<T, SnapshotError> {
    crate::journal::patiently(
        PATIENCE,
        what,
        |e| matches!(e, SnapshotError::Journal(j) if crate::journal::is_transient(j)),
        read,
    )
}

/// Called with each (offset, payload) a scan reads; false stops it.
type Visit<'a> = dyn FnMut(i64, &[u8]) -> Result<bool, SnapshotError> + 'a;

/// The companion topic of a journal topic.
pub struct KafkaStore {
    config: KafkaConfig,
}

impl KafkaStore {
    /// The store of journal topic `journal.topic`, on the same cluster with
    /// the same client properties.
    pub fn new(journal: &KafkaConfig) -> Self {
        let mut config = journal.clone();
        config.topic = format!("{}.snapshots", journal.topic);
        config.topic_config = Vec::new();
        KafkaStore { config }
    }

    fn source(&self) -> Result<Option<KafkaSource>, SnapshotError> {
        match KafkaSource::new(&self.config) {
            Ok(s) => Ok(Some(s)),
            Err(JournalError::NoSuchTopic(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One attempt of `list`.
    fn list_once(&mut self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        let Some(mut source) = self.source()? else {
            return Ok(Vec::new());
        };
        let (parts_low, _) = source.watermarks(PARTS)?;
        let (low, high) = source.watermarks(INDEX)?;
        let topic = self.config.topic.clone();
        let mut out = Vec::new();
        self.scan(&mut source, INDEX, low, high, &mut |offset, payload| {
            let ix = match pb::SnapshotIndex::decode(payload) {
                Ok(ix) => ix,
                Err(e) => {
                    tracing::warn!(
                        "ignoring a snapshot index: {}",
                        undecodable(&topic, INDEX, offset, e)
                    );
                    return Ok(true);
                }
            };
            let (Some(header), Some(end)) = (&ix.header, &ix.end) else {
                return Ok(true);
            };
            // Parts deleted (expired): no longer restorable.
            if ix.first_offset >= parts_low {
                out.push(SnapshotInfo::from_parts(
                    ix.snapshot_id.clone(),
                    header,
                    end,
                    Location::Topic {
                        first: ix.first_offset,
                        last: ix.last_offset,
                        index: offset,
                    },
                ));
            }
            Ok(true)
        })?;
        out.sort_by_key(|s| s.taken);
        Ok(out)
    }

    /// Reads partition `p` from `from` up to (excluding) `to`, handing each
    /// message to `each` (which returns false to stop).
    fn scan(
        &self,
        source: &mut KafkaSource,
        p: u32,
        from: i64,
        to: i64,
        each: &mut Visit<'_>,
    ) -> Result<(), SnapshotError> {
        source.assign(&[(p, from)])?;
        let mut next = from;
        let mut quiet_since = Instant::now();
        while next < to {
            match source.poll(Duration::from_millis(200))? {
                Some(m) if m.partition == p => {
                    next = m.offset + 1;
                    quiet_since = Instant::now();
                    if !each(m.offset, &m.payload)? {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None if quiet_since.elapsed() > self.config.request_timeout => {
                    return Err(JournalError::Timeout(self.config.request_timeout).into());
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn undecodable(topic: &str, p: u32, offset: i64, e: prost::DecodeError) -> SnapshotError {
    SnapshotError::Malformed {
        id: format!("at topic `{topic}` partition {p} offset {offset}"),
        index: 0,
        why: format!("cannot decode: {e}"),
    }
}

impl SnapshotStore for KafkaStore {
    fn list(&mut self) -> Result<Vec<SnapshotInfo>, SnapshotError> {
        patiently("listing snapshots", || self.list_once())
    }

    fn begin(&mut self, id: &[u8]) -> Result<Box<dyn PartWriter + '_>, SnapshotError> {
        self.config.ensure_topic_default_replication(2)?;
        let sink = KafkaSink::new(&self.config, std::time::Duration::ZERO)?;
        Ok(Box::new(TopicWriter {
            sink,
            id: id.to_vec(),
            acks: Arc::new(Mutex::new(Acks::default())),
            header: None,
            end: None,
            timeout: self.config.send_timeout,
        }))
    }

    fn read(
        &mut self,
        snap: &SnapshotInfo,
        each: &mut dyn FnMut(pb::SnapshotPart) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let Location::Topic { first, last, .. } = snap.location else {
            return Err(SnapshotError::NotFound(snap.id_hex()));
        };
        let Some(mut source) = self.source()? else {
            return Err(SnapshotError::NotFound(snap.id_hex()));
        };
        let topic = self.config.topic.clone();
        self.scan(
            &mut source,
            PARTS,
            first,
            last + 1,
            &mut |offset, payload| {
                let part = pb::SnapshotPart::decode(payload)
                    .map_err(|e| undecodable(&topic, PARTS, offset, e))?;
                if part.snapshot_id != snap.id {
                    return Ok(true);
                }
                let end = matches!(part.part, Some(Part::End(_)));
                each(part)?;
                Ok(!end)
            },
        )
    }

    fn expire(&mut self, keep: usize) -> Result<usize, SnapshotError> {
        let all = self.list()?;
        let old = all.len().saturating_sub(keep.max(1));
        if old == 0 {
            return Ok(0);
        }
        let Location::Topic { first, index, .. } = all[old].location else {
            return Ok(0);
        };
        self.config
            .delete_records(&[(PARTS, first), (INDEX, index)])?;
        Ok(old)
    }

    fn describe(&self) -> String {
        format!("topic `{}`", self.config.topic)
    }
}

/// What the broker acknowledged of a snapshot being written.
#[derive(Default)]
struct Acks {
    first: Option<i64>,
    last: Option<i64>,
    unacked: usize,
    error: Option<String>,
}

struct TopicWriter {
    sink: KafkaSink,
    id: Vec<u8>,
    acks: Arc<Mutex<Acks>>,
    header: Option<pb::SnapshotHeader>,
    end: Option<pb::SnapshotEnd>,
    timeout: Duration,
}

impl TopicWriter {
    /// Waits while too much is unacknowledged; reports a failed part.
    fn wait_for_room(&self) -> Result<(), SnapshotError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            {
                let a = self.acks.lock();
                if let Some(e) = &a.error {
                    return Err(SnapshotError::Unusable(format!(
                        "a part of the snapshot was not stored: {e}"
                    )));
                }
                if a.unacked < MAX_UNACKED {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(JournalError::Timeout(self.timeout).into());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl PartWriter for TopicWriter {
    fn put(&mut self, part: &pb::SnapshotPart) -> Result<(), SnapshotError> {
        self.wait_for_room()?;
        let bytes = part.encode_to_vec();
        let (is_first, is_end) = match &part.part {
            Some(Part::Header(h)) => {
                self.header = Some(h.clone());
                (true, false)
            }
            Some(Part::End(e)) => {
                self.end = Some(*e);
                (false, true)
            }
            _ => (false, false),
        };
        let len = bytes.len();
        self.acks.lock().unacked += len;
        let acks = self.acks.clone();
        self.sink.send(
            PARTS,
            b"snapshot",
            &bytes,
            &[],
            Box::new(move |r| {
                let mut a = acks.lock();
                a.unacked -= len;
                match r {
                    Ok(offset) if is_first => a.first = Some(offset),
                    Ok(offset) if is_end => a.last = Some(offset),
                    Ok(_) => {}
                    Err(e) => {
                        a.error.get_or_insert(e.to_string());
                    }
                }
            }),
        )?;
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<SnapshotInfo, SnapshotError> {
        self.sink.flush(self.timeout)?;
        let (first, last) = {
            let a = self.acks.lock();
            if let Some(e) = &a.error {
                return Err(SnapshotError::Unusable(format!(
                    "a part of the snapshot was not stored: {e}"
                )));
            }
            match (a.first, a.last) {
                (Some(f), Some(l)) => (f, l),
                _ => return Err(JournalError::Timeout(self.timeout).into()),
            }
        };
        let (Some(header), Some(end)) = (self.header, self.end) else {
            return Err(SnapshotError::Unusable(
                "committed without its header and end".into(),
            ));
        };
        let ix = pb::SnapshotIndex {
            snapshot_id: self.id.clone(),
            header: Some(header.clone()),
            end: Some(end),
            first_offset: first,
            last_offset: last,
        };
        let index = send_and_wait(
            &self.sink,
            INDEX,
            b"index",
            &ix.encode_to_vec(),
            &[],
            self.timeout,
        )?;
        Ok(SnapshotInfo::from_parts(
            self.id,
            &header,
            &end,
            Location::Topic { first, last, index },
        ))
    }
}

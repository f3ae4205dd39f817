//! The journal: where records are written (a `Sink`) and read back (a
//! `Source`). `kafka` is the real one (rdkafka); `memory` is an in-process
//! one for fast tests and fault injection (tests and benches only: feature
//! `test-util`). Nothing outside this module
//! names rdkafka's producer or consumer types.

pub mod kafka;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;

use std::time::Duration;

use crate::error::JournalError;

/// A message read back from the journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The partition it was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The message key (the record's target path).
    pub key: Vec<u8>,
    /// The encoded record.
    pub payload: Vec<u8>,
    /// Broker/producer timestamp in ms since the epoch, when known.
    pub timestamp_ms: Option<i64>,
}

/// Called exactly once per sent record, possibly from another thread, with
/// the offset the record got or the reason it was not stored.
pub type DeliveryCallback = Box<dyn FnOnce(Result<i64, JournalError>) + Send + Sync + 'static>;

/// Writes records.
pub trait Sink: Send + Sync {
    /// Number of partitions of the topic.
    fn partitions(&self) -> u32;

    /// Enqueues a record for `partition`. Returns once the record is
    /// queued (not yet durable); `done` reports durability. Records sent to
    /// one partition are stored in the order of `send` calls.
    fn send(
        &self,
        partition: u32,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
        done: DeliveryCallback,
    ) -> Result<(), JournalError>;

    /// Waits until every queued record is acknowledged or failed.
    fn flush(&self, timeout: Duration) -> Result<(), JournalError>;
}

/// Reads records, partition by partition, from positions the caller chooses.
pub trait Source: Send {
    /// Number of partitions of the topic.
    fn partitions(&self) -> u32;

    /// Starts reading each listed partition at the given offset.
    fn assign(&mut self, starts: &[(u32, i64)]) -> Result<(), JournalError>;

    /// The next message from any assigned, unpaused partition, in offset
    /// order within each partition; `None` when none arrived within `timeout`.
    fn poll(&mut self, timeout: Duration) -> Result<Option<Message>, JournalError>;

    /// Stops (resumes) delivering messages of one partition (backpressure).
    fn pause(&mut self, partition: u32) -> Result<(), JournalError>;
    /// Starts reading a paused partition again.
    fn resume(&mut self, partition: u32) -> Result<(), JournalError>;

    /// (earliest available offset, offset the next record will get).
    fn watermarks(&self, partition: u32) -> Result<(i64, i64), JournalError>;

    /// Has every partition not `held` been read to its end, given the next
    /// offset the caller will read from each? The default asks for the
    /// watermarks.
    fn caught_up(&mut self, next_read: &[i64], held: &[bool]) -> Result<bool, JournalError> {
        for (p, &next) in next_read.iter().enumerate() {
            if held.get(p).copied().unwrap_or(false) {
                continue;
            }
            let (_, high) = self.watermarks(p as u32)?;
            if next < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Opens writers and readers of one topic (a new one after a failure).
pub trait Journal: Send + Sync {
    /// A writer of the topic. `linger`: how long a record may wait for
    /// others to share its request (zero: sent at once; see DESIGN §6,
    /// "Durability", for who waits how long).
    fn sink(&self, linger: std::time::Duration) -> Result<std::sync::Arc<dyn Sink>, JournalError>;
    /// A reader of the topic.
    fn source(&self) -> Result<Box<dyn Source>, JournalError>;
    /// Topic name, for messages and checkpoints.
    fn topic(&self) -> String;
}

#[cfg(any(test, feature = "test-util"))]
impl Journal for memory::MemoryJournal {
    fn sink(&self, _linger: std::time::Duration) -> Result<std::sync::Arc<dyn Sink>, JournalError> {
        self.note_sink();
        Ok(std::sync::Arc::new(self.clone()))
    }
    fn source(&self) -> Result<Box<dyn Source>, JournalError> {
        Ok(Box::new(memory::MemoryJournal::source(self)))
    }
    fn topic(&self) -> String {
        "memory".to_string()
    }
}

impl Journal for kafka::KafkaConfig {
    fn sink(&self, linger: std::time::Duration) -> Result<std::sync::Arc<dyn Sink>, JournalError> {
        Ok(std::sync::Arc::new(kafka::KafkaSink::new(self, linger)?))
    }
    fn source(&self) -> Result<Box<dyn Source>, JournalError> {
        Ok(Box::new(kafka::KafkaSource::new(self)?))
    }
    fn topic(&self) -> String {
        self.topic.clone()
    }
}

/// Parses `-X key=value` librdkafka properties.
pub fn parse_property(s: &str) -> Result<(String, String), JournalError> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(JournalError::BadProperty(s.to_string())),
    }
}

/// Blocks until a delivery callback reports, returning its result.
pub fn send_and_wait(
    sink: &dyn Sink,
    partition: u32,
    key: &[u8],
    payload: &[u8],
    headers: &[(&str, &[u8])],
    timeout: Duration,
) -> Result<i64, JournalError> {
    let (tx, rx) = crate::sync::channel::bounded(1);
    sink.send(
        partition,
        key,
        payload,
        headers,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    )?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(crate::sync::channel::RecvTimeoutError::Timeout) => Err(JournalError::Timeout(timeout)),
        Err(crate::sync::channel::RecvTimeoutError::Disconnected) => Err(JournalError::Closed),
    }
}

/// Runs `f`, retrying every 200 ms for up to `patience` while it fails in
/// a way waiting cures (`cured_by_waiting`: a new topic's leaders being
/// elected, a broker restarting); `what` names it in the debug log.
pub fn patiently<T, E: std::fmt::Display>(
    patience: std::time::Duration,
    what: &str,
    cured_by_waiting: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = std::time::Instant::now() + patience;
    loop {
        match f() {
            Err(e) if cured_by_waiting(&e) && std::time::Instant::now() < deadline => {
                tracing::debug!("{what}: {e}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Does waiting cure this journal error (broker away, topic not created
/// yet, a request that timed out)?
pub fn is_transient(e: &JournalError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e {
        // A property librdkafka refuses (a CA file it cannot load...).
        JournalError::Kafka(
            rdkafka::error::KafkaError::ClientCreation(_)
            | rdkafka::error::KafkaError::ClientConfig(..),
        ) => false,
        JournalError::Kafka(k) => !matches!(
            k.rdkafka_error_code(),
            Some(C::AutoOffsetReset | C::OffsetOutOfRange | C::InvalidConfig | C::UnknownPartition)
        ),
        JournalError::NoSuchTopic(_) | JournalError::Timeout(_) => true,
        _ => false,
    }
}

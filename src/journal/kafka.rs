//! The Kafka journal, through rdkafka (librdkafka built from source).
//!
//! Producer: idempotent, acks=all, explicit partition, key = routing path.
//! Consumer: manual partition assignment at offsets kafkafs keeps itself, no
//! group commits, `auto.offset.reset=error` so a deleted offset is reported
//! instead of silently jumping.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{DeliveryCallback, Message, Sink, Source};
use crate::error::JournalError;

/// How to reach a topic.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// bootstrap.servers
    pub brokers: String,
    /// The topic holding the journal.
    pub topic: String,
    /// librdkafka properties passed through (`-X key=value`), applied last.
    pub properties: Vec<(String, String)>,
    /// How long the producer keeps retrying a record before failing it
    /// (librdkafka `message.timeout.ms`).
    pub send_timeout: Duration,
    /// Timeout for metadata and admin requests.
    pub request_timeout: Duration,
    /// Topic-level configs for a topic this creates (e.g. max.message.bytes).
    pub topic_config: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A configuration for `topic` on the cluster at `brokers`, with defaults.
    pub fn new(brokers: impl Into<String>, topic: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            topic: topic.into(),
            properties: Vec::new(),
            send_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            topic_config: Vec::new(),
        }
    }

    /// The bootstrap servers, for messages.
    pub fn broker_list(&self) -> &str {
        &self.brokers
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Every call waits for its record's round trip: requests go out at
        // once, never held back to coalesce with the next one.
        c.set("socket.nagle.disable", "true");
        c.set_log_level(RDKafkaLogLevel::Warning);
        c
    }

    fn with_properties(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Properties that would void kafkafs's guarantees are refused.
    fn check_properties(&self) -> Result<(), JournalError> {
        for (k, v) in &self.properties {
            let bad = match k.as_str() {
                "enable.idempotence" => v != "true",
                "acks" | "request.required.acks" => v != "all" && v != "-1",
                "enable.auto.commit" | "enable.auto.offset.store" => v == "true",
                "auto.offset.reset" => v != "error",
                _ => false,
            };
            if bad {
                return Err(JournalError::BadProperty(format!(
                    "{k}={v} (kafkafs needs this property at its own value to keep records durable and in order)"
                )));
            }
        }
        Ok(())
    }

    /// The producer's settings; `linger` is the default `linger.ms` (a
    /// `-X linger.ms` given by the user wins).
    fn producer_config(&self, linger: Duration) -> Result<ClientConfig, JournalError> {
        self.check_properties()?;
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set("linger.ms", (linger.as_secs_f64() * 1000.0).to_string())
            .set(
                "message.timeout.ms",
                self.send_timeout.as_millis().to_string(),
            )
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "1048576");
        Ok(self.with_properties(c))
    }

    /// A consumer that only asks for metadata: no group (a consumer in a
    /// group takes up to 100 ms to drop, see `KafkaSource`'s `Drop`).
    fn metadata_config(&self) -> Result<ClientConfig, JournalError> {
        self.check_properties()?;
        Ok(self.with_properties(self.base()))
    }

    /// A reader: librdkafka assigns partitions by hand only to a consumer
    /// with a group id; kafkafs never commits to that group.
    fn consumer_config(&self) -> Result<ClientConfig, JournalError> {
        self.check_properties()?;
        let mut c = self.base();
        c.set("group.id", format!("kafkafs-reader-{}", self.topic))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "error")
            .set("fetch.wait.max.ms", "50")
            // Many records per round trip: 1 MiB records would otherwise
            // come one per fetch (the default is 1 MiB per partition). A
            // slice of 4 MiB, not more, per partition: a response then
            // covers every partition, so the next record of a chain
            // across partitions is usually in it (16 MiB slices filled a
            // 64 MiB response from the first partitions and left the
            // chain waiting on the next round trip). A larger record still
            // comes whole: the broker returns a first batch over the limit.
            .set("max.partition.fetch.bytes", "4194304")
            .set("fetch.max.bytes", "67108864")
            .set("queued.max.messages.kbytes", "262144");
        Ok(self.with_properties(c))
    }

    /// Number of partitions of the topic, or `None` if it does not exist.
    pub fn partition_count(&self) -> Result<Option<u32>, JournalError> {
        let consumer: BaseConsumer<ReaderContext> = self
            .metadata_config()?
            .create_with_context(ReaderContext::default())?;
        topic_partitions(&consumer, &self.topic, self.request_timeout)
    }

    /// Creates the topic with `partitions` partitions if it is missing; an
    /// existing topic with a different partition count is an error.
    pub fn ensure_topic(&self, partitions: u32, replication: u32) -> Result<u32, JournalError> {
        self.ensure_topic_replicated(partitions, replication as i32)
    }

    /// Like `ensure_topic`, with the broker's default replication factor.
    pub fn ensure_topic_default_replication(&self, partitions: u32) -> Result<u32, JournalError> {
        self.ensure_topic_replicated(partitions, -1)
    }

    fn ensure_topic_replicated(
        &self,
        partitions: u32,
        replication: i32,
    ) -> Result<u32, JournalError> {
        if let Some(n) = self.partition_count()? {
            return self.check_count(partitions, n);
        }
        let admin: AdminClient<DefaultClientContext> =
            self.with_properties(self.base()).create()?;
        let mut topic = NewTopic::new(
            &self.topic,
            partitions as i32,
            TopicReplication::Fixed(replication),
        );
        // The journal is the filesystem: kept for ever unless told otherwise.
        let mut config = self.topic_config.clone();
        if !config.iter().any(|(k, _)| k == "retention.ms") {
            config.push(("retention.ms".into(), "-1".into()));
        }
        if !config.iter().any(|(k, _)| k == "retention.bytes") {
            config.push(("retention.bytes".into(), "-1".into()));
        }
        for (k, v) in &config {
            topic = topic.set(k, v);
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.request_timeout));
        let results = futures_executor::block_on(admin.create_topics([&topic], &opts))?;
        for r in results {
            match r {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    tracing::error!(topic = %name, "creating topic failed: {code}");
                    return Err(JournalError::Kafka(KafkaError::AdminOp(code)));
                }
            }
        }
        // Wait until metadata shows the new topic with all its partitions,
        // each with a leader (a new topic's first reads fail before).
        let deadline = std::time::Instant::now() + self.request_timeout;
        loop {
            if let Some(n) = self.partition_count()? {
                if n >= partitions && self.leaders_elected()? {
                    return self.check_count(partitions, n);
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(JournalError::Timeout(self.request_timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn check_count(&self, expected: u32, actual: u32) -> Result<u32, JournalError> {
        if expected != actual {
            return Err(JournalError::PartitionMismatch {
                topic: self.topic.clone(),
                expected,
                actual,
            });
        }
        Ok(actual)
    }

    /// The topic's `retention.ms` (-1: records are kept for ever), if the
    /// broker tells.
    pub fn retention_ms(&self) -> Result<Option<i64>, JournalError> {
        use rdkafka::admin::ResourceSpecifier;
        let admin: AdminClient<DefaultClientContext> =
            self.with_properties(self.base()).create()?;
        let opts = AdminOptions::new().request_timeout(Some(self.request_timeout));
        let results = futures_executor::block_on(
            admin.describe_configs([&ResourceSpecifier::Topic(&self.topic)], &opts),
        )?;
        for r in results.into_iter().flatten() {
            if let Some(v) = r.get("retention.ms").and_then(|e| e.value.as_deref()) {
                return Ok(v.parse().ok());
            }
        }
        Ok(None)
    }

    /// Has every partition of the topic a leader, and no error?
    fn leaders_elected(&self) -> Result<bool, JournalError> {
        let consumer: BaseConsumer = self.metadata_config()?.create()?;
        let md = consumer.fetch_metadata(Some(&self.topic), self.request_timeout)?;
        Ok(md
            .topics()
            .iter()
            .find(|t| t.name() == self.topic)
            .is_some_and(|t| {
                t.error().is_none()
                    && t.partitions()
                        .iter()
                        .all(|p| p.error().is_none() && p.leader() >= 0)
            }))
    }

    /// Deletes every record before the given offset of each listed
    /// partition (Kafka's DeleteRecords): the partition then starts there.
    pub fn delete_records(&self, before: &[(u32, i64)]) -> Result<(), JournalError> {
        let admin: AdminClient<DefaultClientContext> =
            self.with_properties(self.base()).create()?;
        let mut tpl = TopicPartitionList::new();
        for &(p, offset) in before {
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(offset))?;
        }
        let opts = AdminOptions::new().operation_timeout(Some(self.request_timeout));
        let result = futures_executor::block_on(admin.delete_records(&tpl, &opts))?;
        for e in result.elements() {
            e.error()?;
        }
        Ok(())
    }

    /// Deletes the topic (tests and tools).
    pub fn delete_topic(&self) -> Result<(), JournalError> {
        let admin: AdminClient<DefaultClientContext> =
            self.with_properties(self.base()).create()?;
        let opts = AdminOptions::new().operation_timeout(Some(self.request_timeout));
        futures_executor::block_on(admin.delete_topics(&[&self.topic], &opts))?;
        Ok(())
    }
}

fn topic_partitions(
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<u32>, JournalError> {
    // In short attempts: a refused login or handshake ends the wait at once.
    let deadline = std::time::Instant::now() + timeout;
    let md = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match consumer.fetch_metadata(Some(topic), left.min(Duration::from_secs(1))) {
            Ok(md) => break md,
            Err(e) => {
                if let Some(refused) = security_failure(consumer, true) {
                    return Err(refused);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(JournalError::Kafka(e));
                }
            }
        }
    };
    match md.topics().iter().find(|t| t.name() == topic) {
        None => Ok(None),
        Some(t) => match t.error() {
            None => Ok(Some(t.partitions().len() as u32)),
            Some(e) if RDKafkaErrorCode::from(e) == RDKafkaErrorCode::UnknownTopicOrPartition => {
                Ok(None)
            }
            Some(e) => Err(JournalError::Kafka(KafkaError::MetadataFetch(e.into()))),
        },
    }
}

/// A request failed: was it because the broker refused the client's
/// credentials or TLS handshake (reported through the error callback)?
/// Waiting does not cure that. `serve` polls to run the callback first —
/// only on a consumer with nothing assigned, whose poll cannot return a
/// message.
fn security_failure(consumer: &BaseConsumer<ReaderContext>, serve: bool) -> Option<JournalError> {
    if serve {
        let _ = consumer.poll(Duration::ZERO);
    }
    let refused = consumer.context().refused.lock().ok()?.clone();
    refused.map(JournalError::Security)
}

/// The consumer's context: end-of-partition is a normal event for a
/// follower (used to detect "caught up"), not an error worth logging; a
/// refused authentication or TLS handshake is kept for the caller.
#[derive(Default)]
pub struct ReaderContext {
    quiet: Quiet,
    refused: std::sync::Mutex<Option<String>>,
}

/// librdkafka's words for a broker refusing the client's credentials or
/// TLS handshake (its FAIL log line comes before any error event).
fn is_refusal(message: &str) -> bool {
    [
        "SASL authentication error",
        "SSL handshake failed",
        "certificate verify failed",
    ]
    .iter()
    .any(|m| message.contains(m))
}

impl ClientContext for ReaderContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if is_refusal(log_message) {
            // Kept for the one error the caller reports; not logged per retry.
            if let Ok(mut refused) = self.refused.lock() {
                refused.get_or_insert_with(|| log_message.to_string());
            }
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", "librdkafka: {fac} {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {}
            KafkaError::Global(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL) => {
                if let Ok(mut refused) = self.refused.lock() {
                    refused.get_or_insert_with(|| reason.to_string());
                }
            }
            // After a refusal, "all brokers down" and the like only echo it.
            _ if self.refused.lock().is_ok_and(|r| r.is_some()) => {}
            e => {
                if let Some(repeats) = self.quiet.admit() {
                    tracing::warn!("kafka: {e}: {reason}{}", repeated(repeats));
                }
            }
        }
    }
}

/// Lets one message through per interval and counts the others.
#[derive(Default)]
pub struct Quiet {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

/// At most one Kafka client error per this interval is logged.
const QUIET_INTERVAL: Duration = Duration::from_secs(30);

impl Quiet {
    /// `Some(suppressed since the last one)` when this one may be logged.
    pub fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock().ok()?;
        let now = std::time::Instant::now();
        match st.0 {
            Some(last) if now.duration_since(last) < QUIET_INTERVAL => {
                st.1 += 1;
                None
            }
            _ => {
                let n = st.1;
                *st = (Some(now), 0);
                Some(n)
            }
        }
    }
}

/// " (and N more like it in the last 30 s)" when N > 0.
pub fn repeated(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more Kafka client errors in the last {QUIET_INTERVAL:?})")
    }
}

impl ConsumerContext for ReaderContext {}

/// Routes librdkafka's delivery reports to the per-record callbacks.
pub struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<DeliveryCallback>;

    fn delivery(&self, result: &DeliveryResult<'_>, done: Self::DeliveryOpaque) {
        let r = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(JournalError::Kafka(e.clone())),
        };
        done(r);
    }
}

/// Writes records to a Kafka topic.
pub struct KafkaSink {
    producer: ThreadedProducer<DeliveryContext>,
    topic: String,
    partitions: AtomicU32,
}

impl KafkaSink {
    /// Connects to an existing topic (see `KafkaConfig::ensure_topic`);
    /// records wait up to `linger` for others to share their request.
    pub fn new(config: &KafkaConfig, linger: Duration) -> Result<Self, JournalError> {
        let partitions = config
            .partition_count()?
            .ok_or_else(|| JournalError::NoSuchTopic(config.topic.clone()))?;
        let producer = config
            .producer_config(linger)?
            .create_with_context(DeliveryContext)?;
        Ok(KafkaSink {
            producer,
            topic: config.topic.clone(),
            partitions: AtomicU32::new(partitions),
        })
    }
}

impl Sink for KafkaSink {
    fn partitions(&self) -> u32 {
        self.partitions.load(Ordering::Relaxed)
    }

    fn send(
        &self,
        partition: u32,
        key: &[u8],
        payload: &[u8],
        headers: &[(&str, &[u8])],
        done: DeliveryCallback,
    ) -> Result<(), JournalError> {
        let count = self.partitions();
        if partition >= count {
            return Err(JournalError::NoSuchPartition { partition, count });
        }
        let mut h = OwnedHeaders::new_with_capacity(headers.len());
        for (k, v) in headers {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = BaseRecord::with_opaque_to(&self.topic, Box::new(done))
            .partition(partition as i32)
            .key(key)
            .payload(payload)
            .headers(h);
        // A full local queue is backpressure, not an error: wait for room.
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(JournalError::Kafka(e)),
            }
        }
    }

    fn flush(&self, timeout: Duration) -> Result<(), JournalError> {
        self.producer.flush(timeout)?;
        Ok(())
    }
}

/// Reads a Kafka topic at positions kafkafs chooses.
pub struct KafkaSource {
    consumer: BaseConsumer<ReaderContext>,
    topic: String,
    partitions: u32,
    timeout: Duration,
    /// Per partition: the consumer reached the end (librdkafka's partition
    /// EOF event) and nothing arrived since.
    at_end: Vec<bool>,
}

impl KafkaSource {
    /// A consumer of the configured topic.
    pub fn new(config: &KafkaConfig) -> Result<Self, JournalError> {
        let consumer: BaseConsumer<ReaderContext> = config
            .consumer_config()?
            .create_with_context(ReaderContext::default())?;
        let partitions = topic_partitions(&consumer, &config.topic, config.request_timeout)?
            .ok_or_else(|| JournalError::NoSuchTopic(config.topic.clone()))?;
        Ok(KafkaSource {
            consumer,
            topic: config.topic.clone(),
            partitions,
            timeout: config.request_timeout,
            at_end: vec![false; partitions as usize],
        })
    }

    fn tpl(&self, partition: u32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition as i32);
        tpl
    }
}

impl Drop for KafkaSource {
    /// Closes the consumer polling in short steps: rdkafka's own drop
    /// waits for the close in 100 ms polls, which nothing wakes early, and
    /// every reader (a slave, a master start, a status) would pay them.
    fn drop(&mut self) {
        if self.consumer.close_queue().is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + self.timeout;
        while !self.consumer.closed() && std::time::Instant::now() < deadline {
            let _ = self.consumer.poll(Duration::from_millis(1));
        }
    }
}

impl Source for KafkaSource {
    fn partitions(&self) -> u32 {
        self.partitions
    }

    fn assign(&mut self, starts: &[(u32, i64)]) -> Result<(), JournalError> {
        let mut tpl = TopicPartitionList::new();
        for &(p, off) in starts {
            if p >= self.partitions {
                return Err(JournalError::NoSuchPartition {
                    partition: p,
                    count: self.partitions,
                });
            }
            tpl.add_partition_offset(&self.topic, p as i32, Offset::Offset(off.max(0)))?;
        }
        self.consumer.assign(&tpl)?;
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<Message>, JournalError> {
        match self.consumer.poll(timeout) {
            None => Ok(None),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(e) = self.at_end.get_mut(p as usize) {
                    *e = true;
                }
                Ok(None)
            }
            Some(Err(e)) => Err(JournalError::Kafka(e)),
            Some(Ok(m)) => {
                if let Some(e) = self.at_end.get_mut(m.partition() as usize) {
                    *e = false;
                }
                Ok(Some(Message {
                    partition: m.partition() as u32,
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
                    payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                }))
            }
        }
    }

    fn pause(&mut self, partition: u32) -> Result<(), JournalError> {
        self.consumer.pause(&self.tpl(partition))?;
        Ok(())
    }

    fn resume(&mut self, partition: u32) -> Result<(), JournalError> {
        self.consumer.resume(&self.tpl(partition))?;
        Ok(())
    }

    fn watermarks(&self, partition: u32) -> Result<(i64, i64), JournalError> {
        self.consumer
            .fetch_watermarks(&self.topic, partition as i32, self.timeout)
            .map_err(|e| security_failure(&self.consumer, false).unwrap_or(JournalError::Kafka(e)))
    }

    fn caught_up(&mut self, _next_read: &[i64], held: &[bool]) -> Result<bool, JournalError> {
        // Every partition reported its end and nothing arrived since: no
        // request to the broker needed.
        Ok(self
            .at_end
            .iter()
            .enumerate()
            .all(|(p, &e)| e || held.get(p).copied().unwrap_or(false)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_lingers_as_asked_unless_the_user_says_otherwise() {
        let mut config = KafkaConfig::new("127.0.0.1:1", "t");
        let linger = |c: &KafkaConfig, d| {
            c.producer_config(d)
                .unwrap()
                .get("linger.ms")
                .map(str::to_string)
        };
        assert_eq!(linger(&config, Duration::ZERO).as_deref(), Some("0"));
        assert_eq!(
            linger(&config, Duration::from_millis(2)).as_deref(),
            Some("2")
        );
        assert_eq!(
            linger(&config, Duration::from_micros(500)).as_deref(),
            Some("0.5")
        );
        config.properties.push(("linger.ms".into(), "7".into()));
        assert_eq!(
            linger(&config, Duration::from_millis(2)).as_deref(),
            Some("7")
        );
    }
}

//! The embedded default broker: librdkafka's in-process mock cluster, which
//! speaks the Kafka protocol on a loopback port, so `kafkafs master` works
//! (and slaves can follow it) with no Kafka installed. It keeps nothing
//! after the process exits.

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::error::JournalError;

/// A single-node Kafka cluster inside this process (librdkafka's mock cluster), for trying kafkafs without a broker.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

impl EmbeddedBroker {
    /// Starts a one-broker cluster holding `topic` with `partitions` partitions.
    pub fn start(topic: &str, partitions: u32) -> Result<Self, JournalError> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic(topic, partitions as i32, 1)?;
        Ok(EmbeddedBroker { cluster })
    }

    /// The bootstrap address (host:port on loopback).
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

//! kafkafs: a filesystem replicated through Kafka.
//!
//! A master journals every mutating filesystem call into a Kafka topic
//! before it takes effect; slaves replay the topic onto local directories.
//! The module layout is described in DESIGN.md.

#![warn(missing_docs, unreachable_pub)]

pub mod cli;
pub mod embedded;
pub mod error;
pub mod filter;
pub mod journal;
pub mod limits;
pub mod log;
pub mod master;
pub mod metrics;
pub mod notify;
pub mod op;
pub mod partition;
pub mod progress;
pub mod record;
pub mod replica;
pub mod slave;
pub mod snapshot;
pub mod status;
pub mod sync;
pub mod tree;

//! Command-line interface: clap types, turned into the library's typed
//! configuration. No clap type leaves this module.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::JournalError;
use crate::journal::kafka::KafkaConfig;
use crate::journal::parse_property;
use crate::slave::SlaveConfig;

/// A filesystem replicated through Kafka.
///
/// A master mounts a FUSE filesystem and journals every mutating call into a
/// Kafka topic before it takes effect; slaves replay the topic onto local
/// directories, each at its own pace.
#[derive(Parser, Debug)]
#[command(name = "kafkafs", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Follow a topic and apply it to a local directory.
    ///
    /// The directory holds its own checkpoint (in DATA/.kafkafs); a slave
    /// stopped at any instant (even with SIGKILL) resumes exactly where it
    /// left off. SIGINT/SIGTERM stop it cleanly.
    Slave(SlaveArgs),
}

/// Where the journal lives.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port[,host:port...]).
    #[arg(short = 'b', long = "broker", env = "KAFKAFS_BROKERS")]
    pub broker: String,

    /// Topic holding the journal.
    #[arg(short = 't', long, env = "KAFKAFS_TOPIC", default_value = "kafkafs")]
    pub topic: String,

    /// librdkafka property passed through, e.g. -X security.protocol=SASL_SSL
    /// (repeatable). Properties that would weaken durability or ordering
    /// (acks, enable.idempotence, auto.offset.reset, auto commit) are refused.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,
}

impl KafkaArgs {
    pub fn config(&self) -> Result<KafkaConfig, JournalError> {
        let mut c = KafkaConfig::new(&self.broker, &self.topic);
        for p in &self.properties {
            c.properties.push(parse_property(p)?);
        }
        Ok(c)
    }
}

#[derive(Args, Debug)]
pub struct SlaveArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Applier threads (records of one partition are applied in order;
    /// records of different partitions in parallel, respecting their
    /// dependencies).
    #[arg(long, env = "KAFKAFS_THREADS", default_value_t = 1)]
    pub threads: usize,

    /// Exit with status 0 once every partition is applied up to its end,
    /// instead of following the topic forever.
    #[arg(long)]
    pub exit_when_caught_up: bool,

    /// Skip records that cannot be decoded (corrupt, unknown version,
    /// oversize) instead of stopping; every skip is logged with its
    /// partition and offset. The replica may then differ from the master.
    #[arg(long)]
    pub skip_bad_records: bool,

    /// Skip exactly the record at PARTITION:OFFSET (repeatable), whatever it
    /// holds; the skip is logged. For a record the slave refused.
    #[arg(long = "skip-record", value_name = "PARTITION:OFFSET", value_parser = parse_skip)]
    pub skip_records: Vec<(u32, i64)>,

    /// Seconds between durable checkpoints (syncfs + atomic checkpoint).
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_interval: f64,

    /// Largest record accepted, in bytes.
    #[arg(long, default_value_t = crate::record::DEFAULT_MAX_RECORD_BYTES)]
    pub max_record_bytes: usize,

    /// Accept a non-empty DATA without a checkpoint (its existing files stay
    /// and the replica will not equal the master).
    #[arg(long)]
    pub allow_non_empty: bool,

    /// The replica directory (created if missing).
    pub data: PathBuf,
}

impl SlaveArgs {
    pub fn config(&self) -> SlaveConfig {
        let mut c = SlaveConfig::new(&self.data, &self.kafka.topic);
        c.threads = self.threads.max(1);
        c.exit_when_caught_up = self.exit_when_caught_up;
        c.skip_bad_records = self.skip_bad_records;
        c.skip_records = self.skip_records.clone();
        c.checkpoint_interval = Duration::from_secs_f64(self.checkpoint_interval.max(0.1));
        c.max_record_bytes = self.max_record_bytes;
        c.allow_non_empty = self.allow_non_empty;
        c
    }
}

fn parse_skip(s: &str) -> Result<(u32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected PARTITION:OFFSET"))?;
    let p = p
        .parse()
        .map_err(|_| format!("`{p}` is not a partition number"))?;
    let o = o.parse().map_err(|_| format!("`{o}` is not an offset"))?;
    Ok((p, o))
}

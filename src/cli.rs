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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Mount a FUSE filesystem over DATA at MNT, journaling every mutation.
    ///
    /// Every mutating call (create, write, rename, chmod, setxattr, ...) is
    /// written to the Kafka topic (acks=all) before it takes effect, then
    /// applied to DATA, then answered. Reads are served from DATA. Without
    /// --broker, an embedded Kafka-protocol broker is started in-process
    /// (it keeps nothing after exit) and the command a slave uses to follow
    /// it is printed. SIGINT/SIGTERM unmount and exit cleanly.
    Master(MasterArgs),
    /// Follow a topic and apply it to a local directory.
    ///
    /// The directory holds its own checkpoint (in DATA/.kafkafs); a slave
    /// stopped at any instant (even with SIGKILL) resumes exactly where it
    /// left off. SIGINT/SIGTERM stop it cleanly.
    Slave(SlaveArgs),

    /// Show where a replica (or a master's data-root) stands: per partition
    /// the next offset to apply and, with --broker, the topic's end and how
    /// far behind it is.
    Status {
        /// Kafka bootstrap servers (to compare with the topic's end).
        #[arg(short = 'b', long = "broker", env = "KAFKAFS_BROKERS")]
        broker: Option<String>,
        /// librdkafka properties.
        #[command(flatten)]
        properties: PropertyArgs,
        /// The replica or data-root.
        data: PathBuf,
    },

    /// Print the journal's records as a change stream, one per line: the
    /// position (partition:offset), seq, partition seq, writer, epoch, the
    /// master's time, the operation and its paths and sizes. Stops at the
    /// topic's end unless --follow.
    Log(LogArgs),

    /// Print shell completions for SHELL (bash, zsh, fish, elvish,
    /// powershell), e.g. `kafkafs completions bash > /etc/bash_completion.d/kafkafs`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the manual page (roff), e.g. `kafkafs man > kafkafs.1`.
    Man,

    /// List the snapshots of a topic (id, when taken, positions, size),
    /// oldest first.
    Snapshots {
        /// The broker and topic.
        #[command(flatten)]
        kafka: KafkaArgs,
        /// Where snapshots are kept.
        #[command(flatten)]
        store: SnapshotStoreArgs,
    },

    /// Compare two directory trees fully (names, types, content, mode,
    /// owner, symlink targets, hard links, xattrs, mtimes in ns), ignoring
    /// the state folder .kafkafs. Exits 0 when equal, 1 when not.
    Compare {
        /// One tree.
        first: PathBuf,
        /// The other tree.
        second: PathBuf,
    },
}

/// Where the journal lives.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (host:port[,host:port...]).
    #[arg(short = 'b', long = "broker", env = "KAFKAFS_BROKERS")]
    pub broker: String,

    /// Topic holding the journal (default: the one DATA follows, else
    /// `kafkafs`).
    #[arg(short = 't', long, env = "KAFKAFS_TOPIC")]
    pub topic: Option<String>,

    /// librdkafka properties (-X, -F).
    #[command(flatten)]
    pub properties: PropertyArgs,
}

/// The topic when none is given and DATA follows none.
pub const DEFAULT_TOPIC: &str = "kafkafs";

/// The topic a replica or data-root follows, from its checkpoint.
fn followed_topic(data: &std::path::Path) -> Option<String> {
    let sd = crate::replica::checkpoint::StateDir::existing(data)?;
    Some(sd.load_checkpoint().ok()??.topic)
}

impl KafkaArgs {
    /// The topic (after `resolve_topic`, else the default).
    pub fn topic(&self) -> &str {
        self.topic.as_deref().unwrap_or(DEFAULT_TOPIC)
    }

    /// The journal configuration these arguments describe.
    pub fn config(&self) -> Result<KafkaConfig, JournalError> {
        let mut c = KafkaConfig::new(&self.broker, self.topic());
        c.properties = self.properties.parse()?;
        Ok(c)
    }
}

/// librdkafka properties: `-X` on the command line and `-F` files.
#[derive(Args, Debug, Clone, Default)]
pub struct PropertyArgs {
    /// librdkafka property passed through, e.g. -X security.protocol=SASL_SSL
    /// (repeatable; applied after -F files). Properties that would weaken
    /// durability or ordering (acks, enable.idempotence, auto.offset.reset,
    /// auto commit) are refused.
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    pub properties: Vec<String>,

    /// File of librdkafka properties, one KEY=VALUE per line (# comments),
    /// as kcat's -F: keeps secrets such as sasl.password off the command
    /// line (repeatable).
    #[arg(short = 'F', long = "properties-file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

impl PropertyArgs {
    /// The properties of every -F file, then every -X.
    pub fn parse(&self) -> Result<Vec<(String, String)>, JournalError> {
        let mut out = Vec::new();
        for path in &self.files {
            let text =
                std::fs::read_to_string(path).map_err(|source| JournalError::PropertiesFile {
                    path: path.clone(),
                    source,
                })?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    out.push(parse_property(line)?);
                }
            }
        }
        for p in &self.properties {
            out.push(parse_property(p)?);
        }
        Ok(out)
    }
}

/// `HOST:PORT`, or `:PORT` for every interface (as Prometheus exporters).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("`{s}`: expected HOST:PORT or :PORT (e.g. 127.0.0.1:9464)"))
}

/// Arguments of `kafkafs master`.
#[derive(Args, Debug)]
pub struct MasterArgs {
    /// Kafka bootstrap servers; without it an embedded broker is started.
    #[arg(short = 'b', long = "broker", env = "KAFKAFS_BROKERS")]
    pub broker: Option<String>,

    /// Topic holding the journal, created if missing (default: the one
    /// DATA follows, else `kafkafs`).
    #[arg(short = 't', long, env = "KAFKAFS_TOPIC")]
    pub topic: Option<String>,

    /// Partitions of a new topic. An existing topic must have this many.
    #[arg(long, default_value_t = 1)]
    pub partitions: u32,

    /// Replication factor of a new topic.
    #[arg(long, default_value_t = 1)]
    pub replication_factor: u32,

    /// How long a new topic keeps records (e.g. 30d, 12h; default: for
    /// ever). A replica stopped longer than this cannot resume, and new
    /// replicas can only be built while the topic still starts at offset 0.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub retention: Option<Duration>,

    /// `min.insync.replicas` of a new topic: with acks=all, a record is
    /// acknowledged once this many replicas have it (use 2 with factor 3).
    #[arg(long)]
    pub min_insync_replicas: Option<u32>,

    /// librdkafka properties (-X, -F).
    #[command(flatten)]
    pub properties: PropertyArgs,

    /// Threads applying the journal to DATA at most, started as records
    /// need them (default: number of partitions, at least 2).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Seconds a call waits for the journal (Kafka) before failing with EIO.
    #[arg(long, env = "KAFKAFS_JOURNAL_TIMEOUT", default_value_t = 30.0)]
    pub journal_timeout: f64,

    /// Threads that journal mutations (each waits for one call at a time).
    #[arg(long, default_value_t = 64)]
    pub dispatchers: usize,

    /// Write to a topic last written by another master (only when that
    /// master is gone for good: two masters must never write one topic).
    #[arg(long)]
    pub take_over: bool,

    /// Seconds between durable checkpoints of DATA.
    #[arg(long, default_value_t = 5.0)]
    pub checkpoint_interval: f64,

    /// What slaves order each record after: `causal` (everything the master
    /// had completed when the call began, plus conflicting records: a slave
    /// never shows an effect without what a caller saw before it) or
    /// `conflicts` (only records touching the same names/inodes: more
    /// parallel replay, but a file written after reading another may show up
    /// on a slave first).
    #[arg(long, value_enum, default_value_t = OrderingArg::Causal)]
    pub ordering: OrderingArg,

    /// When a mutating call is answered: `journal` (once Kafka acknowledged
    /// its record and DATA applied it: every answer is in the journal) or
    /// `fsync` (once it is in DATA's write-ahead file and applied, at local
    /// speed; fsync, fdatasync, fsyncdir and O_SYNC/O_DSYNC writes wait
    /// until Kafka acknowledged everything before them, as a local disk's
    /// durability point; after a machine crash DATA is rolled back to the
    /// journal, keeping what it discarded under DATA/.kafkafs/discarded).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Journal)]
    pub durability: DurabilityArg,

    /// `fsync` durability: most records applied but not yet acknowledged
    /// by Kafka (at most 500 000, half the producer's queue); new calls
    /// wait while the window is full.
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=500_000))]
    pub window_records: u64,

    /// `fsync` durability: most bytes of such records (MiB, at most 512,
    /// half the producer's queue).
    #[arg(long, value_name = "MIB", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=512))]
    pub window_mib: u64,

    /// `fsync` durability: longest a record may wait for its
    /// acknowledgement before new calls wait (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub window_age: Duration,

    /// Serve Prometheus metrics (applied records, offsets, lag, journal
    /// state) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR", env = "KAFKAFS_METRICS", value_parser = parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Limits a new topic declares (largest file, name length, xattr space
    /// and namespaces): `portable` (what ext4 with 4 KiB blocks, xfs, btrfs
    /// and tmpfs all hold, so replicas on any of them can follow) or
    /// `data-root` (whatever DATA's filesystem holds). Calls beyond them are
    /// refused before journaling, as a local filesystem would.
    #[arg(long, value_enum, default_value_t = LimitsArg::Portable)]
    pub limits: LimitsArg,

    /// Most open handles kept on DATA's inodes (also capped by the open-file
    /// limit, whose soft value is raised to the hard one at start).
    #[arg(long, default_value_t = crate::master::DEFAULT_FD_CACHE)]
    pub fd_cache: usize,

    /// While catching up with the journal at start: skip every record that
    /// cannot be decoded (each skip is logged).
    #[arg(long)]
    pub skip_bad_records: bool,

    /// While catching up with the journal at start: skip exactly the record
    /// at PARTITION:OFFSET (repeatable); the skip is logged.
    #[arg(long = "skip-record", value_name = "PARTITION:OFFSET", value_parser = parse_skip)]
    pub skip_records: Vec<(u32, i64)>,

    /// Mount even if MNT is not empty (its files are hidden while mounted).
    #[arg(long)]
    pub allow_non_empty_mount: bool,

    /// Adopt a non-empty DATA: journal its whole tree (directories,
    /// contents, symlinks, hard links, special files, owners, modes,
    /// xattrs, ns times) into a new topic, then mount it. An interrupted
    /// import resumes at the next start.
    #[arg(long)]
    pub import: bool,

    /// Threads journaling an import's entries concurrently (their calls
    /// spread over the topic's partitions).
    #[arg(long, value_name = "N", default_value_t = crate::master::DEFAULT_IMPORT_JOBS as u16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub import_jobs: u16,

    /// The data-root: an empty directory, or one this master served before.
    pub data: PathBuf,

    /// Where to mount the filesystem.
    pub mnt: PathBuf,
}

/// Arguments of `kafkafs log`.
#[derive(Args, Debug)]
pub struct LogArgs {
    /// The broker and topic.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Only records touching a path under this prefix (relative to the
    /// filesystem's root; both paths of a rename or link count).
    #[arg(long, value_name = "PREFIX")]
    pub path: Option<String>,

    /// Only records at or after TIME (RFC 3339 in UTC or @SECONDS).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub since: Option<crate::op::Timestamp>,

    /// Only records at or before TIME.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<crate::op::Timestamp>,

    /// Only this operation (create, write, rename, unlink, ...; repeatable).
    #[arg(long = "op", value_name = "NAME")]
    pub ops: Vec<String>,

    /// JSON lines instead of text.
    #[arg(long)]
    pub json: bool,

    /// Keep printing new records as they arrive.
    #[arg(short = 'f', long)]
    pub follow: bool,
}

impl LogArgs {
    /// What to print, checked.
    pub fn options(&self) -> Result<crate::log::LogOptions, String> {
        let path = match &self.path {
            None => None,
            Some(p) => Some(
                crate::op::RelPath::new(p.trim_start_matches('/').trim_end_matches('/'))
                    .map_err(|e| format!("--path {p}: {e}"))?,
            ),
        };
        Ok(crate::log::LogOptions {
            path,
            since: self.since,
            until: self.until,
            ops: self.ops.clone(),
            json: self.json,
            follow: self.follow,
        })
    }
}

fn parse_time(s: &str) -> Result<crate::op::Timestamp, String> {
    crate::op::Timestamp::parse(s).ok_or_else(|| {
        format!("`{s}`: expected RFC 3339 in UTC (2026-11-26T09:30:00Z) or @SECONDS")
    })
}

/// Which limits a new topic declares.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitsArg {
    /// Limits every supported filesystem honours.
    Portable,
    /// What the data-root's filesystem can hold.
    DataRoot,
}

/// When a master answers a mutating call.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DurabilityArg {
    /// Once Kafka acknowledged it.
    Journal,
    /// Once it is in the write-ahead file; sync calls wait for Kafka.
    Fsync,
}

/// What slaves order records after.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderingArg {
    /// Everything the master had applied when the record was made.
    Causal,
    /// Only the records it conflicts with.
    Conflicts,
}

impl MasterArgs {
    /// Without --topic, the topic DATA follows.
    pub fn resolve_topic(&mut self) {
        if self.topic.is_none() {
            self.topic = followed_topic(&self.data);
        }
    }

    /// The topic (after `resolve_topic`, else the default).
    pub fn topic(&self) -> &str {
        self.topic.as_deref().unwrap_or(DEFAULT_TOPIC)
    }

    /// The master's configuration these arguments describe.
    pub fn config(&self) -> crate::master::MasterConfig {
        let mut c = crate::master::MasterConfig::new(&self.data);
        c.ordering = match self.ordering {
            OrderingArg::Causal => crate::master::pipeline::ReplayOrder::Causal,
            OrderingArg::Conflicts => crate::master::pipeline::ReplayOrder::Conflicts,
        };
        c.threads = self
            .threads
            .unwrap_or(self.partitions.max(2) as usize)
            .max(1);
        c.journal_timeout = Duration::from_secs_f64(self.journal_timeout.max(0.1));
        c.take_over = self.take_over;
        c.metrics = self.metrics;
        c.checkpoint_interval = Duration::from_secs_f64(self.checkpoint_interval.max(0.1));
        c.limits = match self.limits {
            LimitsArg::Portable => crate::limits::LimitsProfile::Portable,
            LimitsArg::DataRoot => crate::limits::LimitsProfile::DataRoot,
        };
        c.fd_cache = self.fd_cache.max(1);
        c.skip_bad_records = self.skip_bad_records;
        c.skip_records = self.skip_records.clone();
        c.mountpoint = Some(self.mnt.clone());
        c.import = self.import;
        c.import_jobs = usize::from(self.import_jobs);
        c.allow_non_empty_mount = self.allow_non_empty_mount;
        c.durability = match self.durability {
            DurabilityArg::Journal => crate::master::durability::Durability::Journal,
            DurabilityArg::Fsync => crate::master::durability::Durability::Fsync,
        };
        c.window = crate::master::window::WindowLimits {
            records: self.window_records as usize,
            bytes: self.window_mib << 20,
            age: self.window_age.max(Duration::from_millis(1)),
        };
        c
    }

    /// The journal configuration, with the new topic's settings.
    pub fn kafka(&self, brokers: &str) -> Result<KafkaConfig, JournalError> {
        let mut c = KafkaConfig::new(brokers, self.topic());
        c.properties = self.properties.parse()?;
        c.send_timeout = Duration::from_secs_f64(self.journal_timeout.max(0.1));
        if let Some(r) = self.retention {
            c.topic_config
                .push(("retention.ms".into(), r.as_millis().to_string()));
        }
        if let Some(n) = self.min_insync_replicas {
            c.topic_config
                .push(("min.insync.replicas".into(), n.to_string()));
        }
        Ok(c)
    }
}

/// Arguments of `kafkafs slave`.
#[derive(Args, Debug)]
pub struct SlaveArgs {
    /// The broker and topic.
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Applier threads at most (records of one partition are applied in
    /// order; records of different partitions in parallel, respecting
    /// their dependencies; a thread is started only when a record is ready
    /// and no other is idle to take it).
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

    /// Run without root: ownership, device numbers (a device node becomes an
    /// empty file), set-id bits of files whose group is not yours and
    /// trusted.* xattrs are not reproduced; everything else is exact.
    #[arg(long)]
    pub unprivileged: bool,

    /// Serve Prometheus metrics (applied records, per-partition offsets and
    /// records behind, a lag histogram) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR", env = "KAFKAFS_METRICS", value_parser = parse_listen)]
    pub metrics: Option<std::net::SocketAddr>,

    /// Stop at the journal's state as of TIME (RFC 3339 in UTC, e.g.
    /// 2026-11-26T09:30:00Z, or @SECONDS since the epoch) or as of the
    /// record at PARTITION:OFFSET: every record of the master's up to that
    /// moment is applied, nothing after; exits 0 once there (a replica as
    /// of then).
    #[arg(long, value_name = "TIME|P:OFFSET", value_parser = parse_until)]
    pub until: Option<crate::slave::Until>,

    /// Stay DURATION behind the master (e.g. 1h): a record is applied only
    /// once it is that old (insurance against a mistaken `rm -rf`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub delay: Option<Duration>,

    /// Take a snapshot of the replica every DURATION (e.g. 6h) into the
    /// snapshot store, and one more when exiting caught up: the appliers
    /// pause while the tree is written. A new replica of a topic whose
    /// beginning was deleted is built from the newest one.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub snapshot_every: Option<Duration>,

    /// Snapshots kept in the store; older ones are deleted.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub snapshot_keep: usize,

    /// Where snapshots are kept.
    #[command(flatten)]
    pub store: SnapshotStoreArgs,

    /// Build this new (empty) replica from a snapshot even though the topic
    /// still holds every record: `newest`, or an id (or a unique prefix of
    /// one) as `kafkafs snapshots` lists them.
    #[arg(long, value_name = "newest|ID", value_parser = parse_choice)]
    pub from_snapshot: Option<crate::snapshot::Choice>,

    /// Hold only this subtree (a path from the root whose components may
    /// use `*` and `?`, e.g. `docs` or `projects/*/src`), with the
    /// directories on the way to it; repeatable. Fixed at the replica's
    /// first start.
    #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
    pub include: Vec<String>,

    /// Leave out what this matches: with a `/`, a subtree from the root;
    /// without, entries of that name anywhere (`*.tmp`, `node_modules`);
    /// wins over --include; repeatable.
    #[arg(long, value_name = "PATTERN", value_parser = parse_pattern)]
    pub exclude: Vec<String>,

    /// The replica directory (created if missing).
    pub data: PathBuf,
}

/// Where snapshots are kept.
#[derive(Args, Debug, Clone, Default)]
pub struct SnapshotStoreArgs {
    /// Keep snapshots as files in DIR instead of the companion topic
    /// `<topic>.snapshots` on the broker.
    #[arg(long, value_name = "DIR", env = "KAFKAFS_SNAPSHOT_DIR")]
    pub snapshot_dir: Option<PathBuf>,
}

impl SnapshotStoreArgs {
    /// The store for the journal `kafka`.
    pub fn open(&self, kafka: &KafkaConfig) -> Box<dyn crate::snapshot::SnapshotStore> {
        match &self.snapshot_dir {
            Some(dir) => Box::new(crate::snapshot::dir_store::DirStore::new(dir)),
            None => Box::new(crate::snapshot::kafka_store::KafkaStore::new(kafka)),
        }
    }
}

fn parse_choice(s: &str) -> Result<crate::snapshot::Choice, String> {
    if s == "newest" {
        return Ok(crate::snapshot::Choice::Newest);
    }
    if s.is_empty() || !s.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{s}`: expected `newest` or a snapshot id (hex)"));
    }
    Ok(crate::snapshot::Choice::Id(s.to_string()))
}

impl SlaveArgs {
    /// Without --topic, the topic DATA follows.
    pub fn resolve_topic(&mut self) {
        if self.kafka.topic.is_none() {
            self.kafka.topic = followed_topic(&self.data);
        }
    }

    /// The slave's configuration these arguments describe.
    pub fn config(&self) -> Result<SlaveConfig, crate::filter::FilterError> {
        let mut c = SlaveConfig::new(&self.data, self.kafka.topic());
        c.filter = crate::filter::Filter::new(&self.include, &self.exclude)?;
        c.threads = self.threads.max(1);
        c.exit_when_caught_up = self.exit_when_caught_up;
        c.skip_bad_records = self.skip_bad_records;
        c.skip_records = self.skip_records.clone();
        c.checkpoint_interval = Duration::from_secs_f64(self.checkpoint_interval.max(0.1));
        c.max_record_bytes = self.max_record_bytes;
        c.allow_non_empty = self.allow_non_empty;
        c.unprivileged = self.unprivileged;
        c.metrics = self.metrics;
        c.until = self.until;
        c.delay = self.delay;
        c.notify = true;
        c.snapshot_every = self.snapshot_every;
        c.snapshot_keep = self.snapshot_keep.max(1);
        c.from_snapshot = self.from_snapshot.clone();
        Ok(c)
    }
}

/// A filter pattern, checked as it is parsed.
fn parse_pattern(s: &str) -> Result<String, String> {
    crate::filter::Filter::new(&[s.to_string()], &[])
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

/// `500ms`, `90s`, `15m`, `12h`, `30d` (or plain seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as 90s, 15m, 12h or 30d"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

fn parse_until(s: &str) -> Result<crate::slave::Until, String> {
    if let Some(t) = crate::op::Timestamp::parse(s) {
        return Ok(crate::slave::Until::Time(t));
    }
    match parse_skip(s) {
        Ok((p, o)) => Ok(crate::slave::Until::Record(p, o)),
        Err(_) => Err(format!(
            "`{s}`: expected a time (2026-11-26T09:30:00Z or @SECONDS) or PARTITION:OFFSET"
        )),
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

/// Writes shell completions for the whole command line.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "kafkafs", out);
}

/// Writes the manual page, generated from the same definitions as --help.
pub fn man_page(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen(":9464").unwrap().to_string(), "0.0.0.0:9464");
        assert_eq!(
            parse_listen("127.0.0.1:9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert!(parse_listen("9464").is_err());
    }

    #[test]
    fn durations_and_until() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert!(parse_duration("1w").is_err());
        assert_eq!(
            parse_until("0:42").unwrap(),
            crate::slave::Until::Record(0, 42)
        );
        assert!(matches!(
            parse_until("@100").unwrap(),
            crate::slave::Until::Time(_)
        ));
        assert!(parse_until("soon").is_err());
    }
}

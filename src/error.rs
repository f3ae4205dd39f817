//! Error types, one per layer. Each layer's error says what went wrong in
//! terms of that layer (a path, a record at topic/partition/offset, a Kafka
//! call, a replica syscall); `anyhow` appears only in `main`.

use std::io;
use std::path::PathBuf;

pub use rustix::io::Errno;

/// Why a path taken from a record (or given to the master) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("absolute path (must be relative to the replica root)")]
    Absolute,
    #[error("empty path component")]
    EmptyComponent,
    #[error("'.' path component")]
    Dot,
    #[error("'..' path component (would leave the replica root)")]
    DotDot,
    #[error("NUL byte in path")]
    Nul,
    #[error("path names the reserved state folder '.kafkafs' at the root")]
    Reserved,
    #[error("path is the replica root itself, which this operation cannot target")]
    Root,
}

/// Why the bytes of a Kafka message are not a record this reader can apply.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a valid protobuf record (corrupt or truncated): {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("unknown record format version {found} (this kafkafs reads version {supported})")]
    UnknownVersion { found: u32, supported: u32 },
    #[error("record is {size} bytes, more than the {max}-byte limit")]
    Oversize { size: usize, max: usize },
    #[error("record carries no operation (written by a newer kafkafs?)")]
    MissingOp,
    #[error("record lacks required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}`: {source}")]
    BadPath {
        field: &'static str,
        #[source]
        source: PathError,
    },
    #[error("field `{field}` has invalid value {value:#x}")]
    BadValue { field: &'static str, value: u64 },
    #[error("record says partition {claimed} but was read from partition {actual}")]
    WrongPartition { claimed: u32, actual: u32 },
}

/// A failure talking to the journal (Kafka or the in-memory journal).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("topic `{topic}` has {actual} partitions, but {expected} were requested; refusing to remap paths onto a different partition count")]
    PartitionMismatch {
        topic: String,
        expected: u32,
        actual: u32,
    },
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    #[error("invalid librdkafka property `{0}` (expected key=value)")]
    BadProperty(String),
    #[error("reading librdkafka properties from {}: {source}", path.display())]
    PropertiesFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {0:?} waiting for the journal")]
    Timeout(std::time::Duration),
    #[error("the connection to Kafka failed its security checks (credentials or TLS): {0}. Check security.protocol, sasl.mechanisms, sasl.username, sasl.password and ssl.ca.location (given with -X or -F)")]
    Security(String),
    #[error("partition {partition} is out of range (topic has {count})")]
    NoSuchPartition { partition: u32, count: u32 },
    #[error("the journal is closed")]
    Closed,
    #[error("injected fault: {0}")]
    Injected(String),
    #[error("partition {partition}: the record was stored at offset {offset}, but this writer's previous one ended at {expected}: another writer's records (or a late one of this writer) came between")]
    Interleaved {
        partition: u32,
        expected: i64,
        offset: i64,
    },
    #[error("reading the journal back: {0}")]
    Unreadable(String),
    #[error("partition {partition} offset {offset}: cannot decode record: {source}")]
    Undecodable {
        partition: u32,
        offset: i64,
        #[source]
        source: DecodeError,
    },
}

/// A replica-side failure: the replica could not carry out a record for a
/// reason that is not part of the record's deterministic outcome (disk full,
/// I/O error, read-only filesystem...). The record is retried, never skipped.
#[derive(Debug, thiserror::Error)]
#[error("{op} on `{path}`: {errno}")]
pub struct ReplicaFailure {
    pub op: &'static str,
    pub path: String,
    pub errno: Errno,
}

/// Checkpoint and state-folder errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: corrupt checkpoint: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("replica follows topic `{recorded}`, not `{requested}`")]
    WrongTopic { recorded: String, requested: String },
    #[error("replica's checkpoint knows {recorded} partitions, but topic has {actual}")]
    PartitionCount { recorded: u32, actual: u32 },
    #[error("{} is in use by process {holder} (a master or a slave); one process at a time may use a data-root or replica", root.display())]
    InUse { root: PathBuf, holder: String },
}

/// Where a record came from, for error messages: topic, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPos {
    pub topic: String,
    pub partition: u32,
    pub offset: i64,
}

impl std::fmt::Display for RecordPos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "topic `{}` partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

/// Errors that stop a slave (or the master's own applier).
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "{pos}: cannot decode record: {source}. Its position is held and nothing that depends on it is applied; to skip exactly this record, restart with --skip-record {}:{}",
        .pos.partition, .pos.offset
    )]
    BadRecord {
        pos: RecordPos,
        #[source]
        source: DecodeError,
    },
    #[error("{pos}: partition sequence jumps from {last} to {found}: records are missing (position held)")]
    Gap {
        pos: RecordPos,
        last: u64,
        found: u64,
    },
    #[error("{pos}: record seq {seq} claims partition sequence {pseq}, which the applied record seq {applied_seq} already holds: two writers (or a write that surfaced after a journal failure) interleaved; position held")]
    Conflict {
        pos: RecordPos,
        pseq: u64,
        seq: u64,
        applied_seq: u64,
    },
    #[error("{pos}: this replica's filesystem cannot honour the limits the topic declares: it must hold {why}. Put the replica on a filesystem that can (see README, \"Limits\"); nothing past this record was applied")]
    Incapable { pos: RecordPos, why: String },
    #[error("{pos}: next offset was deleted by retention (earliest available is {low}); the replica cannot be brought up to date incrementally. Resync it: stop this slave, empty the replica directory (or use a new one) and start the slave again; it is rebuilt from the newest snapshot (see README, \"Snapshots\")")]
    OffsetDeleted { pos: RecordPos, low: i64 },
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("replica root {path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A configuration that cannot work (refused before anything changed).
    #[error("{0}")]
    Config(String),
    /// The replica (or the snapshot it would start from) cannot be used as
    /// asked; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// Records that must be read back could not be within a bound.
    #[error("{0}")]
    Stalled(String),
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "{records} records could not be applied: they depend on records that are not in the topic"
    )]
    Unresolved { records: usize },
}

/// Classifies an errno returned by a replica syscall: is it a deterministic
/// outcome of the record against the replica's prior state (same on every
/// replica), or a failure of this replica that must be retried?
///
/// Outcomes are the errors POSIX defines as consequences of the namespace or
/// the arguments. Everything else (ENOSPC, EIO, EROFS, EDQUOT, ENOMEM,
/// EACCES, EBADF, EXDEV, EBUSY, ETXTBSY, EFBIG, EOPNOTSUPP, ...) depends on
/// this replica's environment: it is a failure, retried later, because
/// skipping it would make this replica diverge. (Where the applier decides an
/// outcome itself, such as EOPNOTSUPP for chmod of a symlink, it never asks
/// this function.)
pub fn is_outcome(errno: Errno) -> bool {
    const OUTCOMES: &[Errno] = &[
        Errno::EXIST,
        Errno::NOENT,
        Errno::NOTEMPTY,
        Errno::NOTDIR,
        Errno::ISDIR,
        Errno::LOOP,
        Errno::INVAL,
        Errno::PERM,
        Errno::NAMETOOLONG,
        Errno::MLINK,
        Errno::NODATA,
        Errno::RANGE,
        Errno::TOOBIG,
    ];
    OUTCOMES.contains(&errno)
}

impl ReplicaFailure {
    /// Writing a record's intent into the ledger failed (the replica's
    /// disk, like any other replica failure: retried).
    pub fn of_ledger(e: &CheckpointError) -> Self {
        let (path, errno) = match e {
            CheckpointError::Io { path, source } => (
                path.display().to_string(),
                Errno::from_io_error(source).unwrap_or(Errno::IO),
            ),
            other => (other.to_string(), Errno::IO),
        };
        ReplicaFailure {
            op: "writing the ledger",
            path,
            errno,
        }
    }
}

impl From<io::Error> for ReplicaFailure {
    fn from(e: io::Error) -> Self {
        ReplicaFailure {
            op: "io",
            path: String::new(),
            errno: Errno::from_io_error(&e).unwrap_or(Errno::IO),
        }
    }
}

/// A filesystem call's failure on the master, with the errno the caller
/// gets. The mapping is exhaustive: every variant names its errno.
///
/// `Outcome` is the only replicated failure: the record is in the journal
/// and every replica got the same errno. Every other variant is local to
/// this master (nothing was journaled, or the call journals nothing).
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The journaled record's own outcome (the same errno every replica
    /// got).
    #[error("{0}")]
    Outcome(Errno),
    /// A call served from the data-root alone (lookup, open, read,
    /// readlink, readdir, a local xattr) failed with this errno; nothing
    /// was journaled.
    #[error("{op} on the data-root: {errno}")]
    Local { op: &'static str, errno: Errno },
    /// Arguments the call cannot take (unknown flags, a bad size); nothing
    /// was journaled.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// A file or directory handle this master never gave out (or closed).
    #[error("unknown handle {0}")]
    BadHandle(u64),
    /// An operation kafkafs does not journal (the errno a filesystem
    /// without it gives).
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// The journal refused the record or failed to deliver it: nothing was
    /// acknowledged.
    #[error("journal unavailable: {0}")]
    Journal(#[source] Box<JournalError>),
    /// The journal stayed in recovery (after a failed delivery) for the
    /// whole call.
    #[error("the journal did not recover within {0:?}")]
    NotRecovered(std::time::Duration),
    /// No acknowledgement from the journal within the timeout.
    #[error("no acknowledgement from the journal within {0:?}")]
    NotAcknowledged(std::time::Duration),
    /// The kernel named an inode this master does not know.
    #[error("unknown inode {0}")]
    StaleInode(u64),
    /// A name reserved by kafkafs (the state folder at the root).
    #[error("name reserved by kafkafs")]
    Reserved,
    /// A name that cannot be journaled.
    #[error("invalid name")]
    InvalidName,
    /// The master is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// Refused before journaling: the call exceeds the topic's limits or
    /// the data-root's free space (the errno a local filesystem gives).
    #[error("refused before journaling: {0}")]
    Refused(Errno),
    /// The record is in the journal, but the data-root did not apply it
    /// within the journal timeout (it is failing; the record is retried).
    #[error("the data-root did not apply the journaled record within {0:?}")]
    NotApplied(std::time::Duration),
    /// The inode has no name any more (an open, unlinked file): nothing a
    /// replica could see; the call is served on the data-root alone.
    #[error("unlinked inode")]
    Unlinked,
    /// Another master took over the topic: this one no longer writes.
    #[error("this master was fenced ({0})")]
    Fenced(String),
}

impl FsError {
    /// The errno the caller gets.
    pub fn errno(&self) -> Errno {
        match self {
            FsError::Outcome(e) => *e,
            FsError::Local { errno, .. } => *errno,
            FsError::Invalid(_) => Errno::INVAL,
            FsError::BadHandle(_) => Errno::BADF,
            FsError::Unsupported(_) => Errno::OPNOTSUPP,
            FsError::Journal(_) | FsError::NotRecovered(_) | FsError::NotAcknowledged(_) => {
                Errno::IO
            }
            FsError::StaleInode(_) => Errno::STALE,
            FsError::Reserved => Errno::PERM,
            FsError::InvalidName => Errno::INVAL,
            FsError::ShuttingDown => Errno::IO,
            FsError::Refused(e) => *e,
            FsError::NotApplied(_) => Errno::IO,
            FsError::Unlinked => Errno::NOENT,
            FsError::Fenced(_) => Errno::ROFS,
        }
    }

    /// The journal could not take a record: the caller gets EIO and the
    /// cause is worth a warning.
    pub fn is_journal_failure(&self) -> bool {
        matches!(
            self,
            FsError::Journal(_) | FsError::NotRecovered(_) | FsError::NotAcknowledged(_)
        )
    }

    /// A local call on the data-root failed.
    pub fn local(op: &'static str) -> impl Fn(Errno) -> FsError {
        move |errno| FsError::Local { op, errno }
    }
}

impl From<PathError> for FsError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Reserved => FsError::Reserved,
            PathError::Absolute
            | PathError::EmptyComponent
            | PathError::Dot
            | PathError::DotDot
            | PathError::Nul
            | PathError::Root => FsError::InvalidName,
        }
    }
}

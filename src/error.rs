//! Error types, one per layer. Each layer's error says what went wrong in
//! terms of that layer (a path, a record at topic/partition/offset, a Kafka
//! call, a replica syscall); `anyhow` appears only in `main`.

use std::io;
use std::path::PathBuf;

pub use rustix::io::Errno;

/// Why a path taken from a record (or given to the master) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path starts with '/'.
    #[error("absolute path (must be relative to the replica root)")]
    Absolute,
    /// Two slashes in a row, or a trailing slash.
    #[error("empty path component")]
    EmptyComponent,
    /// A '.' component.
    #[error("'.' path component")]
    Dot,
    /// A '..' component.
    #[error("'..' path component (would leave the replica root)")]
    DotDot,
    /// A NUL byte.
    #[error("NUL byte in path")]
    Nul,
    /// The state folder at the root.
    #[error("path names the reserved state folder '.kafkafs' at the root")]
    Reserved,
    /// The root itself where an entry is needed.
    #[error("path is the replica root itself, which this operation cannot target")]
    Root,
}

/// Why the bytes of a Kafka message are not a record this reader can apply.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not a protobuf record.
    #[error("not a valid protobuf record (corrupt or truncated): {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// A format version this reader does not know.
    #[error("unknown record format version {found} (this kafkafs reads version {supported})")]
    UnknownVersion {
        /// The version in the record.
        found: u32,
        /// The version this kafkafs reads.
        supported: u32,
    },
    /// Larger than allowed.
    #[error("record is {size} bytes, more than the {max}-byte limit")]
    Oversize {
        /// The record's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No operation in the record.
    #[error("record carries no operation (written by a newer kafkafs?)")]
    MissingOp,
    /// A required field is missing.
    #[error("record lacks required field `{0}`")]
    MissingField(&'static str),
    /// A path field is refused.
    #[error("field `{field}`: {source}")]
    BadPath {
        /// The field.
        field: &'static str,
        /// Why.
        #[source]
        source: PathError,
    },
    /// A field holds a value that cannot be.
    #[error("field `{field}` has invalid value {value:#x}")]
    BadValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The record was read from another partition than it names.
    #[error("record says partition {claimed} but was read from partition {actual}")]
    WrongPartition {
        /// The partition it names.
        claimed: u32,
        /// The partition it came from.
        actual: u32,
    },
}

/// A failure talking to the journal (Kafka or the in-memory journal).
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// librdkafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic has another partition count than asked for.
    #[error("topic `{topic}` has {actual} partitions, but {expected} were requested; refusing to remap paths onto a different partition count")]
    PartitionMismatch {
        /// The topic.
        topic: String,
        /// Partitions asked for.
        expected: u32,
        /// Partitions it has.
        actual: u32,
    },
    /// The topic does not exist.
    #[error("topic `{0}` does not exist")]
    NoSuchTopic(String),
    /// A librdkafka property without '='.
    #[error("invalid librdkafka property `{0}` (expected key=value)")]
    BadProperty(String),
    /// A properties file could not be read.
    #[error("reading librdkafka properties from {}: {source}", path.display())]
    PropertiesFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No answer within this time.
    #[error("timed out after {0:?} waiting for the journal")]
    Timeout(std::time::Duration),
    /// Authentication or TLS failed.
    #[error("the connection to Kafka failed its security checks (credentials or TLS): {0}. Check security.protocol, sasl.mechanisms, sasl.username, sasl.password and ssl.ca.location (given with -X or -F)")]
    Security(String),
    /// A partition the topic does not have.
    #[error("partition {partition} is out of range (topic has {count})")]
    NoSuchPartition {
        /// The partition.
        partition: u32,
        /// The topic's partition count.
        count: u32,
    },
    /// The journal was closed.
    #[error("the journal is closed")]
    Closed,
    /// A fault the in-memory journal was told to inject.
    #[error("injected fault: {0}")]
    Injected(String),
    /// Another writer's records came between this writer's.
    #[error("partition {partition}: the record was stored at offset {offset}, but this writer's previous one ended at {expected}: another writer's records (or a late one of this writer) came between")]
    Interleaved {
        /// The partition.
        partition: u32,
        /// Where this writer's record should have landed.
        expected: i64,
        /// Where it landed.
        offset: i64,
    },
    /// The journal could not be read back (recovery).
    #[error("reading the journal back: {0}")]
    Unreadable(String),
    /// A record read back could not be decoded.
    #[error("partition {partition} offset {offset}: cannot decode record: {source}")]
    Undecodable {
        /// The partition.
        partition: u32,
        /// The offset.
        offset: i64,
        /// Why.
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
    /// The operation (syscall or step).
    pub op: &'static str,
    /// The path it was applied to.
    pub path: String,
    /// The errno it failed with.
    pub errno: Errno,
}

/// Checkpoint and state-folder errors.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A state file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A state file is not what kafkafs wrote.
    #[error("{path}: corrupt checkpoint: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The replica follows another topic.
    #[error("replica follows topic `{recorded}`, not `{requested}`")]
    WrongTopic {
        /// The topic its checkpoint names.
        recorded: String,
        /// The topic asked for.
        requested: String,
    },
    /// The topic's partition count changed.
    #[error("replica's checkpoint knows {recorded} partitions, but topic has {actual}")]
    PartitionCount {
        /// Partitions the checkpoint knows.
        recorded: u32,
        /// Partitions the topic has.
        actual: u32,
    },
    /// Another process holds the directory.
    #[error("{} is in use by process {holder} (a master or a slave); one process at a time may use a data-root or replica", root.display())]
    InUse {
        /// The directory.
        root: PathBuf,
        /// Who holds it.
        holder: String,
    },
}

/// Where a record came from, for error messages: topic, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordPos {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset.
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
    /// A record that cannot be decoded.
    BadRecord {
        /// Where it is.
        pos: RecordPos,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// Records are missing in a partition.
    #[error("{pos}: partition sequence jumps from {last} to {found}: records are missing (position held)")]
    Gap {
        /// Where the next record is.
        pos: RecordPos,
        /// The partition sequence applied last.
        last: u64,
        /// The one found.
        found: u64,
    },
    /// Two records claim one partition sequence number.
    #[error("{pos}: record seq {seq} claims partition sequence {pseq}, which the applied record seq {applied_seq} already holds: two writers (or a write that surfaced after a journal failure) interleaved; position held")]
    Conflict {
        /// Where the second is.
        pos: RecordPos,
        /// The partition sequence number.
        pseq: u64,
        /// The second record's sequence number.
        seq: u64,
        /// The applied record's sequence number.
        applied_seq: u64,
    },
    /// The replica's filesystem cannot honour the topic's limits.
    #[error("{pos}: this replica's filesystem cannot honour the limits the topic declares: it must hold {why}. Put the replica on a filesystem that can (see README, \"Limits\"); nothing past this record was applied")]
    Incapable {
        /// The record declaring the limits.
        pos: RecordPos,
        /// What the filesystem must hold and cannot.
        why: String,
    },
    /// Retention deleted where the replica would resume.
    #[error("{pos}: next offset was deleted by retention (earliest available is {low}); the replica cannot be brought up to date incrementally. Resync it: stop this slave, empty the replica directory (or use a new one) and start the slave again; it is rebuilt from the newest snapshot (see README, \"Snapshots\")")]
    OffsetDeleted {
        /// The position to resume at.
        pos: RecordPos,
        /// The partition's earliest offset.
        low: i64,
    },
    /// The journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The state folder failed.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// The snapshot store failed.
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The replica directory failed.
    #[error("replica root {path}: {source}")]
    Root {
        /// The path.
        path: PathBuf,
        /// Why.
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
    /// Metrics could not be served.
    #[error("serving metrics on {addr}: {source}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    #[error(
        "{records} records could not be applied: they depend on records that are not in the topic"
    )]
    /// Records wait for records the topic does not hold.
    Unresolved {
        /// Records left in the scheduler.
        records: usize,
    },
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
    Local {
        /// The call.
        op: &'static str,
        /// Its errno.
        errno: Errno,
    },
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
    /// A call served on a FUSE thread would have to wait for Kafka (the
    /// unacknowledged window is full, or the journal is recovering) before
    /// anything was journaled: it is handed to a dispatcher thread and
    /// served again there. Never a caller's answer.
    #[error("the call would wait for the journal on a FUSE thread")]
    WouldWait,
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
            // Served again by a dispatcher; should it ever reach a caller,
            // EAGAIN says to try again.
            FsError::WouldWait => Errno::AGAIN,
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

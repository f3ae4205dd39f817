//! kafkafs's own model of a filesystem operation: no protobuf, no fuser.
//!
//! `RelPath` is a path that has been checked to stay beneath a replica root;
//! `Op` is one mutating filesystem call with every argument a replica needs
//! to reproduce it exactly.

use std::fmt;

use crate::error::PathError;

/// Name of the state folder kept at the root of every replica (checkpoint,
/// ledger). Records can never name it.
pub const STATE_DIR: &[u8] = b".kafkafs";

/// Bytes (ids, raw names) as lowercase hex, for messages and text files.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes of `hex` output (`None` if it is not).
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// A path relative to a replica root, validated: no leading '/', no empty,
/// '.' or '..' components, no NUL byte, and not the reserved state folder.
/// The empty path is the root itself.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<u8>);

/// The replica root itself.
pub static ROOT_PATH: RelPath = RelPath(Vec::new());

impl RelPath {
    /// A relative path (empty for the root), checked component by component.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Ok(RelPath(bytes));
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute);
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul);
        }
        for (i, c) in bytes.split(|&b| b == b'/').enumerate() {
            match c {
                b"" => return Err(PathError::EmptyComponent),
                b"." => return Err(PathError::Dot),
                b".." => return Err(PathError::DotDot),
                _ if i == 0 && c == STATE_DIR => return Err(PathError::Reserved),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// Like `new`, but refuses the root: for operations whose target is an
    /// entry in a directory (create, unlink, rename...).
    pub fn new_entry(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let p = Self::new(bytes)?;
        if p.is_root() {
            return Err(PathError::Root);
        }
        Ok(p)
    }

    /// The root (the empty path).
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Is this the root?
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path's bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Its components.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        let empty = self.0.is_empty();
        self.0.split(|&b| b == b'/').filter(move |_| !empty)
    }

    /// The parent directory and the final name; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        if self.is_root() {
            return None;
        }
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => Some((RelPath(self.0[..i].to_vec()), &self.0[i + 1..])),
            None => Some((RelPath::root(), &self.0[..])),
        }
    }

    /// The parent directory (`None` for the root).
    pub fn parent(&self) -> Option<RelPath> {
        self.split_last().map(|(p, _)| p)
    }

    /// The last component (`None` for the root).
    pub fn name(&self) -> Option<&[u8]> {
        self.split_last().map(|(_, n)| n)
    }

    /// Appends one name (which must be a single valid component).
    pub fn join(&self, name: &[u8]) -> Result<RelPath, PathError> {
        if name.contains(&b'/') {
            return Err(PathError::EmptyComponent);
        }
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        RelPath::new(v)
    }

    /// True when `self` is `other` or lies beneath it (component-wise).
    pub fn starts_with(&self, other: &RelPath) -> bool {
        if other.is_root() {
            return true;
        }
        self.0.starts_with(&other.0)
            && (self.0.len() == other.0.len() || self.0[other.0.len()] == b'/')
    }

    /// Ancestors from the first component down to the parent (excluding the
    /// root and `self`): "a/b/c" gives "a", "a/b".
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'/')
            .map(move |(i, _)| RelPath(self.0[..i].to_vec()))
    }

    /// The path for messages (lossy UTF-8, the root as ".").
    pub fn display(&self) -> String {
        if self.is_root() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(&self.0).into_owned()
        }
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

/// A point in time: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub sec: i64,
    /// Nanoseconds (below 10⁹).
    pub nsec: u32,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl Timestamp {
    /// RFC 3339 in UTC with nanoseconds, e.g. `2026-11-26T01:02:03.000000004Z`.
    pub fn rfc3339(&self) -> String {
        let days = self.sec.div_euclid(86400);
        let rem = self.sec.rem_euclid(86400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            self.nsec
        )
    }

    /// Parses `@SECONDS[.FRACTION]` (since the epoch) or RFC 3339 in UTC
    /// (`YYYY-MM-DDTHH:MM:SS[.FRACTION]Z`).
    pub fn parse(s: &str) -> Option<Timestamp> {
        let frac = |f: &str| -> Option<u32> {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(f.parse::<u32>().ok()? * 10u32.pow(9 - f.len() as u32))
        };
        if let Some(epoch) = s.strip_prefix('@') {
            let (sec, nsec) = match epoch.split_once('.') {
                Some((a, b)) => (a.parse().ok()?, frac(b)?),
                None => (epoch.parse().ok()?, 0),
            };
            return Some(Timestamp::new(sec, nsec));
        }
        let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
        let (date, time) = s.split_once(['T', ' '])?;
        let mut dp = date.splitn(3, '-');
        let y: i64 = dp.next()?.parse().ok()?;
        let m: u32 = dp.next()?.parse().ok()?;
        let d: u32 = dp.next()?.parse().ok()?;
        let (hms, nsec) = match time.split_once('.') {
            Some((a, b)) => (a, frac(b)?),
            None => (time, 0),
        };
        let mut tp = hms.splitn(3, ':');
        let h: i64 = tp.next()?.parse().ok()?;
        let mi: i64 = tp.next()?.parse().ok()?;
        let se: i64 = tp.next()?.parse().ok()?;
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
            return None;
        }
        let sec = days_from_civil(y, m, d) * 86400 + h * 3600 + mi * 60 + se;
        Some(Timestamp::new(sec, nsec))
    }

    /// A time.
    pub fn new(sec: i64, nsec: u32) -> Self {
        Timestamp { sec, nsec }
    }

    /// The current time.
    pub fn now() -> Self {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }

    /// Nanoseconds since the epoch.
    pub fn as_nanos(&self) -> i128 {
        self.sec as i128 * 1_000_000_000 + self.nsec as i128
    }

    /// The next representable instant (1 ns later).
    pub fn succ(&self) -> Self {
        if self.nsec + 1 >= 1_000_000_000 {
            Timestamp::new(self.sec + 1, 0)
        } else {
            Timestamp::new(self.sec, self.nsec + 1)
        }
    }
}

/// `renameat2` flags carried by a rename record.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct RenameFlags {
    /// Fail if the destination exists.
    pub noreplace: bool,
    /// Swap source and destination.
    pub exchange: bool,
}

impl RenameFlags {
    /// RENAME_NOREPLACE.
    pub const NOREPLACE: u32 = 1;
    /// RENAME_EXCHANGE.
    pub const EXCHANGE: u32 = 2;

    /// Flags from renameat2(2)'s bits (`None` for unknown bits or both).
    pub fn from_bits(bits: u32) -> Option<Self> {
        if bits & !(Self::NOREPLACE | Self::EXCHANGE) != 0 {
            return None;
        }
        Some(RenameFlags {
            noreplace: bits & Self::NOREPLACE != 0,
            exchange: bits & Self::EXCHANGE != 0,
        })
    }

    /// The renameat2(2) bits.
    pub fn bits(&self) -> u32 {
        (if self.noreplace { Self::NOREPLACE } else { 0 })
            | (if self.exchange { Self::EXCHANGE } else { 0 })
    }
}

/// `setxattr` flags.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum XattrFlags {
    /// Create or replace.
    #[default]
    Any,
    /// Only create (XATTR_CREATE).
    Create,
    /// Only replace (XATTR_REPLACE).
    Replace,
}

impl XattrFlags {
    /// Flags from setxattr(2)'s bits (`None` for unknown bits).
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            0 => Some(XattrFlags::Any),
            1 => Some(XattrFlags::Create),
            2 => Some(XattrFlags::Replace),
            _ => None,
        }
    }

    /// The setxattr(2) bits.
    pub fn bits(&self) -> u32 {
        match self {
            XattrFlags::Any => 0,
            XattrFlags::Create => 1,
            XattrFlags::Replace => 2,
        }
    }
}

/// The fallocate modes a record may carry (Linux FALLOC_FL_* values).
pub const FALLOC_KEEP_SIZE: u32 = 0x01;
/// FALLOC_FL_PUNCH_HOLE.
pub const FALLOC_PUNCH_HOLE: u32 = 0x02;
/// FALLOC_FL_ZERO_RANGE.
pub const FALLOC_ZERO_RANGE: u32 = 0x10;
/// The fallocate(2) modes kafkafs journals.
pub const FALLOC_ALLOWED: u32 = FALLOC_KEEP_SIZE | FALLOC_PUNCH_HOLE | FALLOC_ZERO_RANGE;

/// File type bits a mknod record may carry.
pub const S_IFMT: u32 = 0o170000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;
/// Character device.
pub const S_IFCHR: u32 = 0o020000;
/// Block device.
pub const S_IFBLK: u32 = 0o060000;
/// FIFO.
pub const S_IFIFO: u32 = 0o010000;
/// Socket.
pub const S_IFSOCK: u32 = 0o140000;
/// Permission bits (with set-id and sticky bits).
pub const PERM_BITS: u32 = 0o7777;

/// The attributes one setattr call changes together, applied in this
/// order: owner, permission bits (chown clears set-id bits), size, times.
/// An absent field is left unchanged.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Attrs {
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New permission bits (within `PERM_BITS`).
    pub mode: Option<u32>,
    /// New size.
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<Timestamp>,
    /// New modification time.
    pub mtime: Option<Timestamp>,
}

impl Attrs {
    /// How many attributes change.
    pub fn count(&self) -> usize {
        [
            self.uid.is_some() || self.gid.is_some(),
            self.mode.is_some(),
            self.size.is_some(),
            self.atime.is_some() || self.mtime.is_some(),
        ]
        .iter()
        .filter(|&&x| x)
        .count()
    }
}

/// One mutating filesystem operation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Op {
    /// Create a regular file (O_CREAT and O_EXCL).
    Create {
        /// The new file.
        path: RelPath,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Create a device node, FIFO, socket or regular file.
    Mknod {
        /// The new entry.
        path: RelPath,
        /// Its type and permission bits.
        mode: u32,
        /// Its device number.
        rdev: u64,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Create a directory.
    Mkdir {
        /// The new directory.
        path: RelPath,
        /// Its permission bits.
        mode: u32,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Create a symbolic link.
    Symlink {
        /// The new link.
        path: RelPath,
        /// What it points to.
        target: Vec<u8>,
        /// Its owner.
        uid: u32,
        /// Its group.
        gid: u32,
    },
    /// Create a hard link.
    Link {
        /// The existing entry.
        src: RelPath,
        /// The new name.
        dst: RelPath,
    },
    /// Remove a non-directory.
    Unlink {
        /// The entry.
        path: RelPath,
    },
    /// Remove an empty directory.
    Rmdir {
        /// The directory.
        path: RelPath,
    },
    /// Rename (or exchange) an entry.
    Rename {
        /// The entry.
        src: RelPath,
        /// Its new name.
        dst: RelPath,
        /// renameat2(2) flags.
        flags: RenameFlags,
    },
    /// Write bytes into a file.
    Write {
        /// The file.
        path: RelPath,
        /// Where.
        offset: u64,
        /// The bytes.
        data: bytes::Bytes,
    },
    /// Set a file's size.
    Truncate {
        /// The file.
        path: RelPath,
        /// The new size.
        size: u64,
    },
    /// Allocate, punch or zero a range of a file.
    Fallocate {
        /// The file.
        path: RelPath,
        /// fallocate(2) mode.
        mode: u32,
        /// Start of the range.
        offset: u64,
        /// Its length.
        length: u64,
    },
    /// Change permission bits.
    Chmod {
        /// The entry.
        path: RelPath,
        /// The new bits.
        mode: u32,
    },
    /// Change owner and/or group.
    Chown {
        /// The entry (not followed if a symlink).
        path: RelPath,
        /// The new owner.
        uid: Option<u32>,
        /// The new group.
        gid: Option<u32>,
    },
    /// Change access and/or modification time.
    Utimens {
        /// The entry (not followed if a symlink).
        path: RelPath,
        /// The new access time.
        atime: Option<Timestamp>,
        /// The new modification time.
        mtime: Option<Timestamp>,
    },
    /// Set an extended attribute.
    SetXattr {
        /// The entry.
        path: RelPath,
        /// The attribute's name.
        name: Vec<u8>,
        /// Its value.
        value: Vec<u8>,
        /// Create-only, replace-only or either.
        flags: XattrFlags,
    },
    /// Remove an extended attribute.
    RemoveXattr {
        /// The entry.
        path: RelPath,
        /// The attribute's name.
        name: Vec<u8>,
    },
    /// Several attributes in one call (see `Attrs`).
    SetAttr {
        /// The entry (not followed if a symlink).
        path: RelPath,
        /// What changes.
        attrs: Attrs,
    },
    /// Sync a file to stable storage.
    Fsync {
        /// The file.
        path: RelPath,
        /// Data only (fdatasync).
        datasync: bool,
    },
    /// The limits every replica honours (see `crate::limits`); targets the root.
    Limits(crate::limits::Limits),
    /// From here on in this partition only the record's writer (at its
    /// epoch or later) is valid; see DESIGN.md, fencing.
    Fence {
        /// This writer takes over from another.
        take_over: bool,
    },
}

/// Every op's `name()`.
pub const OP_NAMES: [&str; 20] = [
    "create",
    "mknod",
    "mkdir",
    "symlink",
    "link",
    "unlink",
    "rmdir",
    "rename",
    "write",
    "truncate",
    "fallocate",
    "chmod",
    "chown",
    "utimens",
    "setxattr",
    "removexattr",
    "setattr",
    "fsync",
    "limits",
    "fence",
];

impl Op {
    /// Short lowercase name, used in logs and the `kafkafs-op` header.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Mknod { .. } => "mknod",
            Op::Mkdir { .. } => "mkdir",
            Op::Symlink { .. } => "symlink",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Rmdir { .. } => "rmdir",
            Op::Rename { .. } => "rename",
            Op::Write { .. } => "write",
            Op::Truncate { .. } => "truncate",
            Op::Fallocate { .. } => "fallocate",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimens",
            Op::SetXattr { .. } => "setxattr",
            Op::RemoveXattr { .. } => "removexattr",
            Op::SetAttr { .. } => "setattr",
            Op::Fsync { .. } => "fsync",
            Op::Limits(_) => "limits",
            Op::Fence { .. } => "fence",
        }
    }

    /// The target path: the one the record is routed by. For link, symlink
    /// and rename it is the name being created (the destination).
    pub fn target(&self) -> &RelPath {
        match self {
            Op::Create { path, .. }
            | Op::Mknod { path, .. }
            | Op::Mkdir { path, .. }
            | Op::Symlink { path, .. }
            | Op::Unlink { path }
            | Op::Rmdir { path }
            | Op::Write { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::SetAttr { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Fsync { path, .. } => path,
            Op::Link { dst, .. } | Op::Rename { dst, .. } => dst,
            Op::Limits(_) | Op::Fence { .. } => &ROOT_PATH,
        }
    }

    /// Every path it names (the target; and the source of a link or
    /// rename).
    pub fn paths(&self) -> Vec<&RelPath> {
        match self {
            Op::Link { src, dst } => vec![src, dst],
            Op::Rename { src, dst, .. } => vec![src, dst],
            other => vec![other.target()],
        }
    }

    /// Does the operation add, remove or move a directory entry?
    pub fn is_namespace(&self) -> bool {
        matches!(
            self,
            Op::Create { .. }
                | Op::Mknod { .. }
                | Op::Mkdir { .. }
                | Op::Symlink { .. }
                | Op::Link { .. }
                | Op::Unlink { .. }
                | Op::Rmdir { .. }
                | Op::Rename { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_and_print() {
        let t = Timestamp::parse("2026-11-26T01:02:03.5Z").unwrap();
        assert_eq!(t, Timestamp::new(1_795_654_923, 500_000_000));
        assert_eq!(t.rfc3339(), "2026-11-26T01:02:03.500000000Z");
        assert_eq!(Timestamp::parse("@1795654923.5"), Some(t));
        assert_eq!(Timestamp::parse(&t.rfc3339()), Some(t));
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z"),
            Some(Timestamp::new(0, 0))
        );
        assert_eq!(
            Timestamp::parse("1969-12-31T23:59:59Z"),
            Some(Timestamp::new(-1, 0))
        );
        assert_eq!(
            Timestamp::parse("2024-02-29T12:00:00+00:00").unwrap().sec,
            1_709_208_000
        );
        for bad in [
            "2026-13-01T00:00:00Z",
            "yesterday",
            "2026-11-26T01:02:03",
            "@x",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn relpath_validation() {
        assert!(RelPath::new("a/b/c").is_ok());
        assert!(RelPath::new("").unwrap().is_root());
        assert_eq!(RelPath::new("/etc/x"), Err(PathError::Absolute));
        assert_eq!(RelPath::new("../x"), Err(PathError::DotDot));
        assert_eq!(RelPath::new("a/../../x"), Err(PathError::DotDot));
        assert_eq!(RelPath::new("a//b"), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new("a/"), Err(PathError::EmptyComponent));
        assert_eq!(RelPath::new("./a"), Err(PathError::Dot));
        assert_eq!(RelPath::new(b"a\0b".to_vec()), Err(PathError::Nul));
        assert_eq!(RelPath::new(".kafkafs/ledger"), Err(PathError::Reserved));
        assert!(RelPath::new("a/.kafkafs").is_ok());
        assert_eq!(RelPath::new_entry(""), Err(PathError::Root));
    }

    #[test]
    fn relpath_parts() {
        let p = RelPath::new("a/b/c").unwrap();
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.as_bytes(), b"a/b");
        assert_eq!(name, b"c");
        let top = RelPath::new("x").unwrap();
        assert!(top.parent().unwrap().is_root());
        assert_eq!(
            p.ancestors().map(|a| a.display()).collect::<Vec<_>>(),
            vec!["a", "a/b"]
        );
        assert!(p.starts_with(&RelPath::new("a/b").unwrap()));
        assert!(!RelPath::new("a/bc")
            .unwrap()
            .starts_with(&RelPath::new("a/b").unwrap()));
        assert!(p.starts_with(&RelPath::root()));
        assert_eq!(p.components().count(), 3);
        assert_eq!(RelPath::root().components().count(), 0);
        assert_eq!(RelPath::root().join(b"x").unwrap().as_bytes(), b"x");
    }
}

//! The limits a topic declares, so that every record Kafka accepted has the
//! same outcome on every replica.
//!
//! Whether a write, a truncate, a name or an extended attribute fits is a
//! property of a filesystem (ext4 stops files at 16 TiB - 4 KiB and keeps
//! an inode's xattrs in one block; tmpfs does neither). A record that one
//! filesystem refuses and another accepts would make replicas diverge, or
//! hold one of them for ever. So a master declares the limits in the first
//! record of a new topic (`Op::Limits`), refuses calls beyond them before
//! journaling (with the errno a local filesystem gives), and every replica
//! gives a record beyond them that errno as its outcome without touching
//! its filesystem. A replica whose filesystem cannot honour the declared
//! limits refuses to go on (it checks with `probe`).

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{self as rfs, Mode, OFlags};

use crate::error::Errno;
use crate::op::Op;

/// Accounting overhead of one extended attribute (ext4 uses 16 bytes plus
/// padding per entry; this is deliberately more).
pub const XATTR_ENTRY_COST: u64 = 32;

/// The Linux VFS's own limit on one xattr value (XATTR_SIZE_MAX).
const XATTR_SIZE_MAX: usize = 65536;

/// What every replica of a topic can hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest file size (EFBIG beyond).
    pub max_file_size: u64,
    /// Longest directory entry name in bytes (ENAMETOOLONG beyond).
    pub name_max: u32,
    /// Largest sum over one inode's xattrs of name + value + 32 bytes.
    pub xattr_bytes_max: u32,
    /// Replicated xattr namespaces: "user." prefixes or exact names.
    pub xattr_namespaces: Vec<String>,
}

/// Which limits a master declares for a new topic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitsProfile {
    /// What ext4 (4 KiB blocks), xfs, btrfs and tmpfs all hold, capped by
    /// the data-root: replicas on any of them can follow.
    #[default]
    Portable,
    /// Whatever the data-root's filesystem holds: replicas must be on a
    /// filesystem at least as capable.
    DataRoot,
}

const NAMESPACES: [&str; 5] = [
    "user.",
    "trusted.",
    "security.",
    "system.posix_acl_access",
    "system.posix_acl_default",
];

impl Limits {
    /// Limits ext4 with 4 KiB blocks can honour (and so xfs, btrfs, tmpfs).
    pub fn portable() -> Limits {
        Limits {
            max_file_size: (1 << 44) - 4096,
            name_max: 255,
            xattr_bytes_max: 3900,
            xattr_namespaces: NAMESPACES.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The tighter of two sets of limits (both honoured).
    pub fn min(&self, other: &Limits) -> Limits {
        Limits {
            max_file_size: self.max_file_size.min(other.max_file_size),
            name_max: self.name_max.min(other.name_max),
            xattr_bytes_max: self.xattr_bytes_max.min(other.xattr_bytes_max),
            xattr_namespaces: self
                .xattr_namespaces
                .iter()
                .filter(|n| other.xattr_namespaces.contains(n))
                .cloned()
                .collect(),
        }
    }

    /// Is the xattr `name` in a replicated namespace?
    pub fn xattr_allowed(&self, name: &[u8]) -> bool {
        self.xattr_namespaces.iter().any(|ns| {
            let ns = ns.as_bytes();
            if ns.ends_with(b".") {
                name.starts_with(ns) && name.len() > ns.len()
            } else {
                name == ns
            }
        })
    }

    /// The errno every replica gives `op` because it exceeds these limits,
    /// judged from the record alone (no filesystem state needed).
    pub fn refuse(&self, op: &Op) -> Option<Errno> {
        let too_big = |end: Option<u64>| match end {
            Some(end) if end <= self.max_file_size => None,
            _ => Some(Errno::FBIG),
        };
        match op {
            Op::Write { offset, data, .. } if !data.is_empty() => {
                too_big(offset.checked_add(data.len() as u64))
            }
            Op::Truncate { size, .. } => too_big(Some(*size)),
            // As setattr on Linux: the size is checked before anything
            // changes.
            Op::SetAttr { attrs, .. } if attrs.size.is_some() => too_big(attrs.size),
            // The VFS checks every fallocate mode against the size limit.
            Op::Fallocate { offset, length, .. } => too_big(offset.checked_add(*length)),
            Op::SetXattr { name, .. } if !self.xattr_allowed(name) => Some(Errno::OPNOTSUPP),
            Op::Create { .. }
            | Op::Mknod { .. }
            | Op::Mkdir { .. }
            | Op::Symlink { .. }
            | Op::Link { .. }
            | Op::Rename { .. } => {
                let name = op.target().name().unwrap_or_default();
                (name.len() > self.name_max as usize).then_some(Errno::NAMETOOLONG)
            }
            _ => None,
        }
    }

    /// ENOSPC when setting xattr `name` to `value` on the inode behind
    /// `path` (a `/proc/self/fd` link) would exceed `xattr_bytes_max`.
    pub fn refuse_xattr(&self, path: &CStr, name: &[u8], value: &[u8]) -> Result<(), Errno> {
        let mut used = 0u64;
        for (n, len) in xattrs(path)? {
            if n != name {
                used += xattr_cost(&n, len);
            }
        }
        if used + xattr_cost(name, value.len()) > self.xattr_bytes_max as u64 {
            return Err(Errno::NOSPC);
        }
        Ok(())
    }

    /// Why a filesystem with limits `have` cannot honour these, if it cannot.
    pub fn unmet_by(&self, have: &Limits) -> Option<String> {
        let mut why = Vec::new();
        if have.max_file_size < self.max_file_size {
            why.push(format!(
                "files up to {} bytes (this filesystem stops at {})",
                self.max_file_size, have.max_file_size
            ));
        }
        if have.name_max < self.name_max {
            why.push(format!(
                "names of {} bytes (this filesystem: {})",
                self.name_max, have.name_max
            ));
        }
        if have.xattr_bytes_max < self.xattr_bytes_max {
            why.push(format!(
                "{} bytes of extended attributes per inode (this filesystem: {})",
                self.xattr_bytes_max, have.xattr_bytes_max
            ));
        }
        let missing: Vec<&str> = self
            .xattr_namespaces
            .iter()
            .filter(|n| !have.xattr_namespaces.contains(n))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            why.push(format!("extended attributes {}", missing.join(", ")));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// Bytes an xattr counts against `xattr_bytes_max`.
pub fn xattr_cost(name: &[u8], value_len: usize) -> u64 {
    name.len() as u64 + value_len as u64 + XATTR_ENTRY_COST
}

/// The xattr names of an inode with their value sizes.
fn xattrs(path: &CStr) -> Result<Vec<(Vec<u8>, usize)>, Errno> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rfs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) if list.len() < (1 << 20) => {
                let len = list.len() * 4;
                list.resize(len, 0);
            }
            Err(e) => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
        let len = match rfs::lgetxattr(path, c.as_c_str(), &mut [0u8; 0][..]) {
            Ok(len) => len,
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e),
        };
        out.push((name.to_vec(), len));
    }
    Ok(out)
}

/// Measures what the filesystem holding directory `dir` can hold, with a
/// scratch file `name` created (and removed) in it.
pub fn probe(dir: BorrowedFd<'_>, name: &CStr) -> std::io::Result<Limits> {
    let _ = rfs::unlinkat(dir, name, rfs::AtFlags::empty());
    let file = rfs::openat(
        dir,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_bits_retain(0o600),
    )?;
    let result = probe_file(dir, file.as_fd());
    drop(file);
    let _ = rfs::unlinkat(dir, name, rfs::AtFlags::empty());
    result
}

fn probe_file(dir: BorrowedFd<'_>, file: BorrowedFd<'_>) -> std::io::Result<Limits> {
    let name_max = rfs::fstatvfs(dir)?.f_namemax.min(u32::MAX as u64) as u32;
    // The largest size ftruncate accepts (sparse: nothing is allocated).
    let max_file_size = largest(0, i64::MAX as u64, |s| rfs::ftruncate(file, s).is_ok());
    rfs::ftruncate(file, 0)?;
    let path = std::ffi::CString::new(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ))
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let xattr_namespaces: Vec<String> = NAMESPACES
        .iter()
        .filter(|ns| xattr_works(&path, ns))
        .map(|s| s.to_string())
        .collect();
    // The largest single value this inode takes (user. or trusted.).
    let probe_name = ["user.kafkafs.probe", "trusted.kafkafs.probe"]
        .into_iter()
        .find(|n| xattr_works(&path, n));
    let xattr_bytes_max = match probe_name {
        Some(n) => {
            let c = std::ffi::CString::new(n).map_err(|_| std::io::ErrorKind::InvalidInput)?;
            let fits = |len: u64| {
                let v = vec![0x5au8; len as usize];
                rfs::setxattr(&path, c.as_c_str(), &v, rfs::XattrFlags::empty()).is_ok()
            };
            let v = largest(0, XATTR_SIZE_MAX as u64, fits);
            let _ = rfs::removexattr(&path, c.as_c_str());
            xattr_cost(n.as_bytes(), v as usize).min(u32::MAX as u64) as u32
        }
        None => 0,
    };
    Ok(Limits {
        max_file_size,
        name_max,
        xattr_bytes_max,
        xattr_namespaces,
    })
}

/// Can an xattr of namespace `ns` be set and removed on the file?
fn xattr_works(path: &CStr, ns: &str) -> bool {
    let (name, value): (String, Vec<u8>) = if ns.ends_with('.') {
        (format!("{ns}kafkafs.probe"), b"1".to_vec())
    } else {
        // A minimal POSIX ACL: user::rw-, group::r--, other::r--.
        let mut acl = 2u32.to_le_bytes().to_vec();
        for (tag, perm) in [(0x01u16, 6u16), (0x04, 4), (0x20, 4)] {
            acl.extend_from_slice(&tag.to_le_bytes());
            acl.extend_from_slice(&perm.to_le_bytes());
            acl.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        (ns.to_string(), acl)
    };
    if name.ends_with("posix_acl_default") {
        // Only directories carry default ACLs; judge by the access ACL.
        return xattr_works(path, "system.posix_acl_access");
    }
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    let ok = rfs::setxattr(path, c.as_c_str(), &value, rfs::XattrFlags::empty()).is_ok();
    if ok {
        let _ = rfs::removexattr(path, c.as_c_str());
    }
    ok
}

/// The largest `x` in `[lo, hi]` with `fits(x)`, given `fits(lo)` and that
/// `fits` is monotone.
fn largest(mut lo: u64, mut hi: u64, mut fits: impl FnMut(u64) -> bool) -> u64 {
    if fits(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::RelPath;

    fn write(offset: u64, len: usize) -> Op {
        Op::Write {
            path: RelPath::new("f").unwrap(),
            offset,
            data: vec![0; len].into(),
        }
    }

    #[test]
    fn refuses_beyond_file_size() {
        let l = Limits::portable();
        let max = l.max_file_size;
        assert_eq!(l.refuse(&write(max - 1, 1)), None);
        assert_eq!(l.refuse(&write(max, 1)), Some(Errno::FBIG));
        assert_eq!(l.refuse(&write(u64::MAX, 1)), Some(Errno::FBIG));
        assert_eq!(l.refuse(&write(u64::MAX, 0)), None);
        let t = |size| Op::Truncate {
            path: RelPath::new("f").unwrap(),
            size,
        };
        assert_eq!(l.refuse(&t(max)), None);
        assert_eq!(l.refuse(&t(999_999_999_999_999)), Some(Errno::FBIG));
    }

    #[test]
    fn refuses_names_and_namespaces() {
        let l = Limits::portable();
        let mk = |name: &str| Op::Mkdir {
            path: RelPath::new(format!("d/{name}")).unwrap(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        assert_eq!(l.refuse(&mk(&"x".repeat(255))), None);
        assert_eq!(l.refuse(&mk(&"x".repeat(256))), Some(Errno::NAMETOOLONG));
        assert!(l.xattr_allowed(b"user.a"));
        assert!(!l.xattr_allowed(b"user."));
        assert!(!l.xattr_allowed(b"foo.bar"));
        assert!(l.xattr_allowed(b"system.posix_acl_access"));
        assert!(!l.xattr_allowed(b"system.other"));
    }

    #[test]
    fn min_and_unmet() {
        let p = Limits::portable();
        let mut small = p.clone();
        small.max_file_size = 1 << 30;
        small.xattr_namespaces.retain(|n| n == "user.");
        let m = p.min(&small);
        assert_eq!(m, small);
        assert_eq!(p.unmet_by(&p), None);
        let why = p.unmet_by(&small).unwrap();
        assert!(
            why.contains("files up to") && why.contains("trusted."),
            "{why}"
        );
    }

    #[test]
    fn largest_search() {
        assert_eq!(largest(0, 100, |x| x <= 37), 37);
        assert_eq!(largest(0, 100, |_| true), 100);
        assert_eq!(largest(0, 100, |x| x == 0), 0);
    }

    #[test]
    fn probe_a_temp_dir() {
        let d = std::env::temp_dir();
        let dir = rfs::open(&d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let name = std::ffi::CString::new(format!("kafkafs-probe-{}", std::process::id())).unwrap();
        let l = probe(dir.as_fd(), &name).unwrap();
        assert!(l.max_file_size >= 1 << 30, "{l:?}");
        assert!(l.name_max >= 255, "{l:?}");
        assert!(rfs::statat(&dir, &name, rfs::AtFlags::empty()).is_err());
    }
}

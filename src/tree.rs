//! Full comparison of two directory trees: names, types, content, mode,
//! uid/gid, device numbers, symlink targets, hard-link groups, xattrs and
//! mtimes to the nanosecond. The state folder `.kafkafs` at the root is not
//! part of the tree. Used by the tests, the benches and `kafkafs compare`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::op::STATE_DIR;

/// What is recorded of one inode reached through one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// 'd' directory, 'f' regular file, 'l' symlink, 'p' fifo, 's' socket,
    /// 'c' char device, 'b' block device.
    pub kind: char,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number (device nodes).
    pub rdev: u64,
    /// Size (regular files).
    pub size: u64,
    /// Regular files: a 128-bit hash of the content (FNV-1a, twice seeded).
    pub content: Option<(u64, u64)>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Modification time in ns.
    pub mtime_ns: i128,
}

/// A snapshot of a tree: every path (relative, "" = root) and the hard-link
/// groups (sets of paths sharing one inode, for inodes with several names).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tree {
    /// Every entry by path.
    pub nodes: BTreeMap<Vec<u8>, Node>,
    /// Paths sharing an inode, per inode with more than one name.
    pub link_groups: Vec<Vec<Vec<u8>>>,
}

fn kind_of(mode: u32) -> char {
    match mode & 0o170000 {
        0o040000 => 'd',
        0o100000 => 'f',
        0o120000 => 'l',
        0o010000 => 'p',
        0o140000 => 's',
        0o020000 => 'c',
        0o060000 => 'b',
        _ => '?',
    }
}

fn hash_content(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut a: u64 = 0xcbf2_9ce4_8422_2325;
    let mut b: u64 = 0x8422_2325_cbf2_9ce4;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &x in &buf[..n] {
            a = (a ^ x as u64).wrapping_mul(0x100_0000_01b3);
            b = (b ^ x as u64).wrapping_mul(0x100_0000_01b3).rotate_left(5);
        }
    }
    Ok((a, b))
}

pub(crate) fn xattrs(path: &Path) -> std::io::Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => names.resize(names.len() * 4, 0),
            Err(rustix::io::Errno::OPNOTSUPP) => return Ok(out),
            Err(e) => return Err(e.into()),
        }
    };
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let mut value = vec![0u8; 4096];
        let len = loop {
            match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
                Err(e) => return Err(e.into()),
            }
        };
        value.truncate(len);
        out.insert(name.to_vec(), value);
    }
    Ok(out)
}

/// Takes a snapshot of the tree at `root`.
pub fn snapshot(root: &Path) -> std::io::Result<Tree> {
    let mut tree = Tree::default();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&rel))
        };
        let md = std::fs::symlink_metadata(&full)?;
        let node = node_of(&full, &md)?;
        if node.kind == 'd' {
            push_children(&full, &rel, &mut stack)?;
        } else {
            inodes
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        tree.nodes.insert(rel, node);
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    tree.link_groups = groups;
    Ok(tree)
}

/// Everything compared about one entry.
fn node_of(full: &Path, md: &std::fs::Metadata) -> std::io::Result<Node> {
    let kind = kind_of(md.mode());
    let content = if kind == 'f' {
        Some(hash_content(full)?)
    } else {
        None
    };
    let target = if kind == 'l' {
        Some(std::fs::read_link(full)?.as_os_str().as_bytes().to_vec())
    } else {
        None
    };
    Ok(Node {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        rdev: if kind == 'c' || kind == 'b' {
            md.rdev()
        } else {
            0
        },
        size: if kind == 'd' { 0 } else { md.size() },
        content,
        target,
        xattrs: xattrs(full)?,
        mtime_ns: md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128,
    })
}

/// Queues a directory's entries (not the state folder at the root).
fn push_children(full: &Path, rel: &[u8], stack: &mut Vec<Vec<u8>>) -> std::io::Result<()> {
    for e in std::fs::read_dir(full)? {
        let e = e?;
        let name = e.file_name();
        let name = name.as_bytes();
        if rel.is_empty() && name == STATE_DIR {
            continue;
        }
        let mut child = rel.to_vec();
        if !child.is_empty() {
            child.push(b'/');
        }
        child.extend_from_slice(name);
        stack.push(child);
    }
    Ok(())
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        ".".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// What differs between two entries of one path.
fn node_diff(x: &Node, y: &Node) -> Vec<String> {
    let mut what = Vec::new();
    if x.kind != y.kind {
        what.push(format!("type {} vs {}", x.kind, y.kind));
    }
    if x.mode != y.mode {
        what.push(format!("mode {:o} vs {:o}", x.mode, y.mode));
    }
    if (x.uid, x.gid) != (y.uid, y.gid) {
        what.push(format!("owner {}:{} vs {}:{}", x.uid, x.gid, y.uid, y.gid));
    }
    if x.rdev != y.rdev {
        what.push(format!("rdev {} vs {}", x.rdev, y.rdev));
    }
    if x.size != y.size {
        what.push(format!("size {} vs {}", x.size, y.size));
    }
    if x.content != y.content {
        what.push("content differs".into());
    }
    if x.target != y.target {
        what.push(format!(
            "symlink target {:?} vs {:?}",
            x.target.as_deref().map(show),
            y.target.as_deref().map(show)
        ));
    }
    if x.xattrs != y.xattrs {
        what.push(format!(
            "xattrs {:?} vs {:?}",
            x.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>(),
            y.xattrs.keys().map(|k| show(k)).collect::<Vec<_>>()
        ));
    }
    if x.mtime_ns != y.mtime_ns {
        what.push(format!("mtime {} vs {} ns", x.mtime_ns, y.mtime_ns));
    }
    what
}

/// Human-readable differences between two snapshots (at most `limit`).
pub fn diff(a: &Tree, b: &Tree, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut keys: Vec<&Vec<u8>> = a.nodes.keys().chain(b.nodes.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        if out.len() >= limit {
            break;
        }
        match (a.nodes.get(k), b.nodes.get(k)) {
            (Some(_), None) => out.push(format!("{}: only in the first tree", show(k))),
            (None, Some(_)) => out.push(format!("{}: only in the second tree", show(k))),
            (Some(x), Some(y)) if x != y => {
                out.push(format!("{}: {}", show(k), node_diff(x, y).join(", ")))
            }
            _ => {}
        }
    }
    if a.link_groups != b.link_groups && out.len() < limit {
        let fmt = |g: &Vec<Vec<Vec<u8>>>| {
            g.iter()
                .map(|grp| grp.iter().map(|p| show(p)).collect::<Vec<_>>().join("="))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push(format!(
            "hard-link groups differ: [{}] vs [{}]",
            fmt(&a.link_groups),
            fmt(&b.link_groups)
        ));
    }
    out
}

/// Compares two directories; `Ok(())` when equal, else the differences.
pub fn compare(a: &Path, b: &Path) -> std::io::Result<Result<(), Vec<String>>> {
    let ta = snapshot(a)?;
    let tb = snapshot(b)?;
    let d = diff(&ta, &tb, 50);
    Ok(if d.is_empty() { Ok(()) } else { Err(d) })
}

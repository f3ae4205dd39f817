//! The master's inode table: FUSE inode numbers for the inodes of the
//! data-root, their names (parent + name; several for hard links), the
//! kernel's lookup counts, and an `O_PATH` handle on each.
//!
//! Reads go through the handles, so they are immune to concurrent renames;
//! mutations are journaled by path, and the path of an inode is derived
//! from its names, which change only when an operation that changes them
//! has been applied (and, being locked, never while another operation that
//! depends on them is being sequenced).
//!
//! FUSE inode numbers come from a counter and are never reused; the data-
//! root's own inode numbers (which the filesystem may reuse) only map to a
//! FUSE inode while the inode still has a name.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::Stat;

use crate::error::FsError;
use crate::op::RelPath;

/// FUSE's root inode number.
pub const ROOT: u64 = 1;

/// Longest chain of parents followed when building a path.
const MAX_DEPTH: usize = 1 << 16;

pub struct Node {
    /// `O_PATH | O_NOFOLLOW` handle on the inode in the data-root.
    pub fd: Arc<OwnedFd>,
    /// (st_dev, st_ino) in the data-root.
    pub backing: (u64, u64),
    /// File type bits (S_IFMT).
    pub kind: u32,
    /// Known names: (parent FUSE inode, name).
    pub names: Vec<(u64, Vec<u8>)>,
    /// The kernel's lookup count.
    pub lookups: u64,
}

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<(u64, u64), u64>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    next: u64,
}

fn backing(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl InodeTable {
    pub fn new(root_fd: OwnedFd, root: &Stat) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                fd: Arc::new(root_fd),
                backing: backing(root),
                kind: root.st_mode & 0o170000,
                names: Vec::new(),
                lookups: 1,
            },
        );
        let mut by_backing = HashMap::new();
        by_backing.insert(backing(root), ROOT);
        InodeTable {
            nodes,
            by_backing,
            by_name: HashMap::new(),
            next: ROOT + 1,
        }
    }

    pub fn get(&self, ino: u64) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::StaleInode(ino))
    }

    pub fn fd(&self, ino: u64) -> Result<Arc<OwnedFd>, FsError> {
        Ok(self.get(ino)?.fd.clone())
    }

    /// The FUSE inode currently known under (parent, name).
    pub fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, name.to_vec())).copied()
    }

    /// The entries leading from the root to `ino`: (parent, name) pairs.
    /// `Err(ENOENT)` when the inode has no name any more (unlinked).
    pub fn chain(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>, FsError> {
        let mut out = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.get(cur)?;
            let (parent, name) = node
                .names
                .first()
                .ok_or(FsError::Outcome(crate::error::Errno::NOENT))?;
            out.push((*parent, name.clone()));
            cur = *parent;
            if out.len() > MAX_DEPTH {
                return Err(FsError::StaleInode(ino));
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The path of `ino` relative to the data-root.
    pub fn path(&self, ino: u64) -> Result<RelPath, FsError> {
        let chain = self.chain(ino)?;
        let mut bytes = Vec::new();
        for (i, (_, name)) in chain.iter().enumerate() {
            if i > 0 {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(name);
        }
        RelPath::new(bytes).map_err(|_| FsError::InvalidName)
    }

    /// The path of entry `name` in directory `parent`.
    pub fn child_path(&self, parent: u64, name: &[u8]) -> Result<RelPath, FsError> {
        self.path(parent)?.join(name).map_err(FsError::from)
    }

    /// Records that the kernel learned (parent, name) -> the inode described
    /// by `st` (lookup, create, mkdir, ...): returns its FUSE inode number
    /// and counts one lookup.
    pub fn learn(&mut self, parent: u64, name: &[u8], fd: OwnedFd, st: &Stat) -> u64 {
        let key = (parent, name.to_vec());
        if let Some(&old) = self.by_name.get(&key) {
            if self.nodes.get(&old).map(|n| n.backing) != Some(backing(st)) {
                self.unname(old, parent, name);
            }
        }
        let ino = match self.by_backing.get(&backing(st)) {
            Some(&ino) if self.nodes.contains_key(&ino) => ino,
            _ => {
                let ino = self.next;
                self.next += 1;
                self.nodes.insert(
                    ino,
                    Node {
                        fd: Arc::new(fd),
                        backing: backing(st),
                        kind: st.st_mode & 0o170000,
                        names: Vec::new(),
                        lookups: 0,
                    },
                );
                self.by_backing.insert(backing(st), ino);
                ino
            }
        };
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
            if !node.names.iter().any(|(p, n)| *p == parent && n == name) {
                node.names.push((parent, name.to_vec()));
            }
        }
        self.by_name.insert(key, ino);
        ino
    }

    /// The kernel forgot `n` lookups of `ino`.
    pub fn forget(&mut self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = match self.nodes.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(node) = self.nodes.remove(&ino) {
                for (p, name) in node.names {
                    if self.by_name.get(&(p, name.clone())) == Some(&ino) {
                        self.by_name.remove(&(p, name));
                    }
                }
                if self.by_backing.get(&node.backing) == Some(&ino) {
                    self.by_backing.remove(&node.backing);
                }
            }
        }
    }

    fn unname(&mut self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.names.retain(|(p, n)| !(*p == parent && n == name));
            if node.names.is_empty() && ino != ROOT {
                // No name left: the data-root may reuse its inode number.
                if self.by_backing.get(&node.backing) == Some(&ino) {
                    self.by_backing.remove(&node.backing);
                }
            }
        }
    }

    /// An entry was removed (unlink, rmdir) in the data-root.
    pub fn remove_name(&mut self, parent: u64, name: &[u8]) {
        if let Some(ino) = self.by_name.remove(&(parent, name.to_vec())) {
            self.unname(ino, parent, name);
        }
    }

    /// An entry was renamed (or two exchanged) in the data-root.
    pub fn rename(&mut self, p1: u64, n1: &[u8], p2: u64, n2: &[u8], exchange: bool) {
        let src = self.by_name.remove(&(p1, n1.to_vec()));
        let dst = self.by_name.remove(&(p2, n2.to_vec()));
        if let Some(s) = src {
            self.unname(s, p1, n1);
        }
        if let Some(d) = dst {
            self.unname(d, p2, n2);
        }
        if let Some(s) = src {
            self.add_name(s, p2, n2);
        }
        if exchange {
            if let Some(d) = dst {
                self.add_name(d, p1, n1);
            }
        }
    }

    fn add_name(&mut self, ino: u64, parent: u64, name: &[u8]) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.names.push((parent, name.to_vec()));
            self.by_backing.insert(node.backing, ino);
            self.by_name.insert((parent, name.to_vec()), ino);
        }
    }

    /// Number of inodes the kernel knows about (besides the root).
    pub fn len(&self) -> usize {
        self.nodes.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every name that no longer matches the data-root (after records
    /// were applied behind the table's back, by recovery): `check(parent
    /// handle, name)` returns the backing identity now at that name.
    pub fn revalidate(&mut self, check: impl Fn(&OwnedFd, &[u8]) -> Option<(u64, u64)>) {
        let names: Vec<((u64, Vec<u8>), u64)> =
            self.by_name.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((parent, name), ino) in names {
            let want = self.nodes.get(&ino).map(|n| n.backing);
            let now = self.nodes.get(&parent).and_then(|p| check(&p.fd, &name));
            if now.is_none() || now != want {
                self.by_name.remove(&(parent, name.clone()));
                self.unname(ino, parent, &name);
            }
        }
    }
}

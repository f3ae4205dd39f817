//! The master's inode table: FUSE inode numbers for the inodes of the
//! data-root, their names (parent + name; several for hard links) and the
//! kernel's lookup counts, plus a *bounded* set of `O_PATH` handles.
//!
//! Descriptors are bounded by configuration, not by the tree: an inode the
//! kernel knows holds no descriptor of its own. Handles live in an LRU
//! cache of `capacity` entries, and only inodes with open files (which may
//! lose their last name while open) pin one. A handle that is not cached is
//! re-resolved from its parent's handle and its name with `openat` (never
//! by joining long paths), and checked against the inode's identity
//! (st_dev, st_ino): the master is the data-root's only writer, and the
//! table's names change only when an applied operation changed them.
//! Memory per known inode: about 300 bytes plus twice its name's length.
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

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::sync::Arc;

use rustix::fs::{self as rfs, Mode, OFlags, Stat};

use crate::error::FsError;
use crate::op::RelPath;

/// FUSE's root inode number.
pub const ROOT: u64 = 1;

/// Longest chain of parents followed when building a path.
const MAX_DEPTH: usize = 1 << 16;

/// An inode the kernel knows.
pub struct Node {
    /// A handle held while files of the inode are open (`opens > 0`): an
    /// open file can lose its last name, and then it cannot be re-resolved.
    pinned: Option<Arc<OwnedFd>>,
    /// Open files of the inode.
    opens: u32,
    /// (st_dev, st_ino) in the data-root.
    pub backing: (u64, u64),
    /// File type bits (S_IFMT).
    pub kind: u32,
    /// Known names: (parent FUSE inode, name).
    pub names: Vec<(u64, Vec<u8>)>,
    /// The kernel's lookup count.
    pub lookups: u64,
}

/// The FUSE inodes of the data-root: names, handles and lookup counts.
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_backing: HashMap<(u64, u64), u64>,
    by_name: HashMap<(u64, Vec<u8>), u64>,
    next: u64,
    cache: HandleCache,
}

/// Least-recently-used `O_PATH` handles, at most `capacity`.
struct HandleCache {
    capacity: usize,
    tick: u64,
    by_ino: HashMap<u64, (Arc<OwnedFd>, u64)>,
    by_age: BTreeMap<u64, u64>,
}

impl HandleCache {
    fn get(&mut self, ino: u64) -> Option<Arc<OwnedFd>> {
        let (fd, age) = self.by_ino.get_mut(&ino)?;
        self.by_age.remove(age);
        self.tick += 1;
        *age = self.tick;
        self.by_age.insert(self.tick, ino);
        Some(fd.clone())
    }

    fn put(&mut self, ino: u64, fd: Arc<OwnedFd>) {
        self.remove(ino);
        while self.by_ino.len() >= self.capacity.max(1) {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.by_ino.remove(&oldest);
        }
        self.tick += 1;
        self.by_age.insert(self.tick, ino);
        self.by_ino.insert(ino, (fd, self.tick));
    }

    fn remove(&mut self, ino: u64) -> Option<Arc<OwnedFd>> {
        let (fd, age) = self.by_ino.remove(&ino)?;
        self.by_age.remove(&age);
        Some(fd)
    }
}

fn backing(st: &Stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl InodeTable {
    /// A table whose root is `root_fd`, caching at most `capacity` other
    /// handles.
    pub fn new(root_fd: OwnedFd, root: &Stat, capacity: usize) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                pinned: Some(Arc::new(root_fd)),
                opens: 1,
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
            cache: HandleCache {
                capacity,
                tick: 0,
                by_ino: HashMap::new(),
                by_age: BTreeMap::new(),
            },
        }
    }

    /// The node of `ino`.
    pub fn get(&self, ino: u64) -> Result<&Node, FsError> {
        self.nodes.get(&ino).ok_or(FsError::StaleInode(ino))
    }

    /// An `O_PATH | O_NOFOLLOW` handle on `ino`: pinned, cached, or
    /// re-resolved from its parent's handle and name.
    pub fn fd(&mut self, ino: u64) -> Result<Arc<OwnedFd>, FsError> {
        if let Some(fd) = &self.get(ino)?.pinned {
            return Ok(fd.clone());
        }
        if let Some(fd) = self.cache.get(ino) {
            return Ok(fd);
        }
        let node = self.get(ino)?;
        let (parent, name) = node
            .names
            .first()
            .cloned()
            .ok_or(FsError::StaleInode(ino))?;
        let want = node.backing;
        if self.chain_len(parent) > MAX_DEPTH {
            return Err(FsError::StaleInode(ino));
        }
        let pfd = self.fd(parent)?;
        let fd = rfs::openat(
            &*pfd,
            name.as_slice(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.resolve_failed(ino, e))?;
        let st = rfs::fstat(&fd).map_err(FsError::local("fstat"))?;
        if backing(&st) != want {
            tracing::error!(
                "inode {ino}: the data-root changed behind the master's back at {:?}",
                String::from_utf8_lossy(&name)
            );
            return Err(FsError::StaleInode(ino));
        }
        let fd = Arc::new(fd);
        self.cache.put(ino, fd.clone());
        Ok(fd)
    }

    fn resolve_failed(&self, ino: u64, e: crate::error::Errno) -> FsError {
        match e {
            crate::error::Errno::NFILE
            | crate::error::Errno::MFILE
            | crate::error::Errno::NOMEM => FsError::Local {
                op: "open",
                errno: e,
            },
            _ => FsError::StaleInode(ino),
        }
    }

    /// Number of ancestors of `ino` (bounded by MAX_DEPTH + 1).
    fn chain_len(&self, mut ino: u64) -> usize {
        let mut n = 0;
        while ino != ROOT && n <= MAX_DEPTH {
            match self.nodes.get(&ino).and_then(|x| x.names.first()) {
                Some((p, _)) => ino = *p,
                None => return MAX_DEPTH + 1,
            }
            n += 1;
        }
        n
    }

    /// A file of `ino` was opened: keep its handle while it is open.
    pub fn pin(&mut self, ino: u64) -> Result<(), FsError> {
        let fd = self.fd(ino)?;
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.opens += 1;
            node.pinned = Some(fd);
        }
        Ok(())
    }

    /// A file of `ino` was closed.
    pub fn unpin(&mut self, ino: u64) {
        if ino == ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.opens = node.opens.saturating_sub(1);
        if node.opens == 0 {
            if let Some(fd) = node.pinned.take() {
                if !node.names.is_empty() {
                    self.cache.put(ino, fd);
                }
            }
        }
    }

    /// Handles cached (not counting pinned ones).
    pub fn cached(&self) -> usize {
        self.cache.by_ino.len()
    }

    /// The FUSE inode currently known under (parent, name).
    pub fn child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        self.by_name.get(&(parent, name.to_vec())).copied()
    }

    /// The entries leading from the root to `ino`: (parent, name) pairs.
    /// `Err(Unlinked)` (ENOENT) when an inode on the way has no name any
    /// more.
    pub fn chain(&self, ino: u64) -> Result<Vec<(u64, Vec<u8>)>, FsError> {
        let mut out = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let node = self.get(cur)?;
            let (parent, name) = node.names.first().ok_or(FsError::Unlinked)?;
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
                        pinned: None,
                        opens: 0,
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
        if self.nodes.get(&ino).is_some_and(|n| n.pinned.is_none()) {
            self.cache.put(ino, Arc::new(fd));
        }
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
            self.cache.remove(ino);
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
        let (k1, k2) = ((p1, n1.to_vec()), (p2, n2.to_vec()));
        if let Some(&s) = self.by_name.get(&k1) {
            if self.still_named(s, p1, n1) {
                // Two names of one file (known here or not): rename(2)
                // does nothing (POSIX), an exchange swaps a name for
                // itself. Both names stay.
                return;
            }
        }
        let src = self.by_name.remove(&k1);
        let dst = self.by_name.remove(&k2);
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

    /// The FUSE inode of the file at (parent, name): by its name, or by
    /// its data-root identity when it is known under another name.
    pub fn known_at(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        if let Some(&ino) = self.by_name.get(&(parent, name.to_vec())) {
            return Some(ino);
        }
        let pfd = self.fd(parent).ok()?;
        let st = rfs::statat(&*pfd, name, rfs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
        self.by_backing.get(&backing(&st)).copied()
    }

    /// Does (parent, name) still name `ino`'s file in the data-root?
    fn still_named(&mut self, ino: u64, parent: u64, name: &[u8]) -> bool {
        let Some(want) = self.nodes.get(&ino).map(|n| n.backing) else {
            return false;
        };
        let Ok(pfd) = self.fd(parent) else {
            return false;
        };
        rfs::statat(&*pfd, name, rfs::AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| backing(&st) == want)
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

    /// Does the kernel know no inode besides the root?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every name the kernel knows: (directory, name, inode).
    pub fn known_names(&self) -> Vec<(u64, Vec<u8>, u64)> {
        self.by_name
            .iter()
            .map(|((parent, name), ino)| (*parent, name.clone(), *ino))
            .collect()
    }

    /// Drops every name that no longer matches the data-root (after records
    /// were applied behind the table's back: by recovery, or after their
    /// callers had given up waiting), and every handle cached for it.
    pub fn revalidate(&mut self) {
        let names: Vec<((u64, Vec<u8>), u64)> =
            self.by_name.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for ((parent, name), ino) in names {
            let want = self.nodes.get(&ino).map(|n| n.backing);
            let now = self.fd(parent).ok().and_then(|pfd| {
                let st =
                    rfs::statat(&*pfd, name.as_slice(), rfs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
                Some(backing(&st))
            });
            if now.is_none() || now != want {
                self.by_name.remove(&(parent, name.clone()));
                self.unname(ino, parent, &name);
                self.cache.remove(ino);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The inode table over a real directory (no root, no Kafka).

    use super::*;

    fn table(dir: &std::path::Path, capacity: usize) -> InodeTable {
        let fd = rfs::open(
            dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let st = rfs::fstat(&fd).unwrap();
        InodeTable::new(fd, &st, capacity)
    }

    /// Learns `name` in `parent` as the kernel would after a lookup.
    fn learn(t: &mut InodeTable, parent: u64, name: &str) -> u64 {
        let pfd = t.fd(parent).unwrap();
        let fd = rfs::openat(
            &*pfd,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let st = rfs::fstat(&fd).unwrap();
        t.learn(parent, name.as_bytes(), fd, &st)
    }

    #[test]
    fn paths_follow_learned_names_and_renames() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), b"x").unwrap();
        let mut t = table(d.path(), 16);
        let a = learn(&mut t, ROOT, "a");
        let f = learn(&mut t, a, "f");
        assert_eq!(t.path(f).unwrap().as_bytes(), b"a/f");
        assert_eq!(t.child(a, b"f"), Some(f));
        assert_eq!(learn(&mut t, a, "f"), f, "the same file is the same inode");
        assert_eq!(t.get(f).unwrap().lookups, 2);

        std::fs::rename(d.path().join("a/f"), d.path().join("g")).unwrap();
        t.rename(a, b"f", ROOT, b"g", false);
        assert_eq!(t.path(f).unwrap().as_bytes(), b"g");
        assert_eq!(t.child(a, b"f"), None);
        // The handle still reaches the file under its new name.
        assert!(rfs::fstat(&*t.fd(f).unwrap()).is_ok());
    }

    #[test]
    fn hard_links_share_an_inode_and_unlinked_inodes_have_no_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("one"), b"x").unwrap();
        std::fs::hard_link(d.path().join("one"), d.path().join("two")).unwrap();
        let mut t = table(d.path(), 16);
        let one = learn(&mut t, ROOT, "one");
        let two = learn(&mut t, ROOT, "two");
        assert_eq!(one, two);
        assert_eq!(t.get(one).unwrap().names.len(), 2);
        t.remove_name(ROOT, b"one");
        assert_eq!(t.path(one).unwrap().as_bytes(), b"two");
        t.remove_name(ROOT, b"two");
        assert!(matches!(t.path(one), Err(FsError::Unlinked)));
    }

    #[test]
    fn a_rename_between_two_names_of_one_file_keeps_both() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        let mut t = table(d.path(), 16);
        let a = learn(&mut t, ROOT, "a");
        // The data-root did nothing (POSIX); "b" is not known to the table.
        std::fs::rename(d.path().join("a"), d.path().join("b")).unwrap();
        t.rename(ROOT, b"a", ROOT, b"b", false);
        assert_eq!(t.child(ROOT, b"a"), Some(a));
        assert_eq!(learn(&mut t, ROOT, "b"), a);
        t.remove_name(ROOT, b"b");
        assert_eq!(t.path(a).unwrap().as_bytes(), b"a", "still named");
    }

    #[test]
    fn forget_drops_an_inode_after_its_last_lookup() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let mut t = table(d.path(), 16);
        let f = learn(&mut t, ROOT, "f");
        learn(&mut t, ROOT, "f");
        t.forget(f, 1);
        assert!(t.get(f).is_ok());
        t.forget(f, 1);
        assert!(matches!(t.get(f), Err(FsError::StaleInode(_))));
        assert!(t.is_empty());
        t.forget(ROOT, 100);
        assert!(t.get(ROOT).is_ok(), "the root is never forgotten");
    }

    #[test]
    fn cached_handles_stay_within_capacity_and_reopen_on_demand() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..20 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
        }
        let mut t = table(d.path(), 4);
        let inos: Vec<u64> = (0..20)
            .map(|i| learn(&mut t, ROOT, &format!("f{i}")))
            .collect();
        assert!(t.cached() <= 4, "{} handles cached", t.cached());
        for &ino in &inos {
            assert!(rfs::fstat(&*t.fd(ino).unwrap()).is_ok());
            assert!(t.cached() <= 4);
        }
    }

    #[test]
    fn a_name_replaced_behind_the_table_is_dropped_by_revalidate() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"x").unwrap();
        let mut t = table(d.path(), 16);
        let f = learn(&mut t, ROOT, "f");
        // Replaced by another file (as a record applied by recovery would).
        std::fs::remove_file(d.path().join("f")).unwrap();
        std::fs::write(d.path().join("f2"), b"y").unwrap();
        std::fs::rename(d.path().join("f2"), d.path().join("f")).unwrap();
        t.revalidate();
        assert_eq!(t.child(ROOT, b"f"), None);
        assert!(t.get(f).unwrap().names.is_empty());
        let again = learn(&mut t, ROOT, "f");
        assert_ne!(again, f, "the new file is a new inode");
    }
}

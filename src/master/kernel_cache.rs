//! What the kernel caches about the mount — entries and attributes for a
//! long TTL, negative entries ("no such name") for a short one, file
//! pages — and how the master makes it forget them. Replies keep the cache
//! right for every change a call makes; what no reply describes must be
//! invalidated: a record applied after its caller gave up waiting (its
//! names and inodes), and journal recovery (records found in the log, and
//! records whose caller got EIO before their acknowledgement came: every
//! name the kernel knows).

use crate::master::inodes::{InodeTable, ROOT};
use crate::op::RelPath;
use crate::sync::Mutex;

/// The kernel's cache of the mount (implemented over FUSE notifications in
/// `fuse.rs`; absent without a mount).
pub trait KernelCache: Send + Sync {
    /// Forget the entry (positive or negative) `name` in directory
    /// `parent`.
    fn forget_entry(&self, parent: u64, name: &[u8]);
    /// Forget the attributes and cached pages of inode `ino`.
    fn forget_inode(&self, ino: u64);
}

/// What the kernel must forget about `paths` (changed behind its back):
/// each name whose directory the kernel knows, the inode behind it and the
/// directory (its times and link count changed). Computed from the inode
/// table, which tracks exactly what the kernel looked up, before it
/// re-reads the changed names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forget {
    entries: Vec<(u64, Vec<u8>)>,
    inodes: Vec<u64>,
}

impl Forget {
    /// The entries and inodes behind `paths`.
    pub fn of(inodes: &InodeTable, paths: &[&RelPath]) -> Forget {
        let mut f = Forget::default();
        for path in paths {
            let Some((parent_path, name)) = path.split_last() else {
                f.inodes.push(ROOT);
                continue;
            };
            let mut dir = Some(ROOT);
            for c in parent_path.components() {
                dir = dir.and_then(|d| inodes.child(d, c));
            }
            let Some(dir) = dir else {
                continue; // the kernel never looked that far
            };
            f.entries.push((dir, name.to_vec()));
            f.inodes.push(dir);
            if let Some(ino) = inodes.child(dir, name) {
                f.inodes.push(ino);
            }
        }
        f.inodes.sort_unstable();
        f.inodes.dedup();
        f
    }

    /// Every name and inode the kernel knows (after journal recovery: its
    /// replies may have missed a record applied after its caller got EIO).
    pub fn everything(inodes: &InodeTable) -> Forget {
        let mut f = Forget::default();
        for (parent, name, ino) in inodes.known_names() {
            f.entries.push((parent, name));
            f.inodes.push(ino);
        }
        f.inodes.push(ROOT);
        f.inodes.sort_unstable();
        f.inodes.dedup();
        f
    }

    /// Tells the kernel.
    pub fn send(self, cache: &dyn KernelCache) {
        for (parent, name) in &self.entries {
            cache.forget_entry(*parent, name);
        }
        for ino in self.inodes {
            cache.forget_inode(ino);
        }
    }
}

/// Where the pipeline finds the kernel's cache, once a mount exists.
pub struct CacheSlot(Mutex<Option<std::sync::Arc<dyn KernelCache>>>);

impl Default for CacheSlot {
    fn default() -> Self {
        CacheSlot(Mutex::new(None))
    }
}

impl CacheSlot {
    /// Installs the mount's cache.
    pub fn set(&self, cache: std::sync::Arc<dyn KernelCache>) {
        *self.0.lock() = Some(cache);
    }

    /// Makes the kernel forget everything it cached about known names.
    pub fn forget_everything(&self, inodes: &Mutex<InodeTable>) {
        let Some(cache) = self.0.lock().clone() else {
            return;
        };
        let forget = Forget::everything(&inodes.lock());
        forget.send(cache.as_ref());
    }

    /// Makes the kernel forget what `paths` named (computed under the
    /// inode table's lock, sent after it).
    pub fn forget(&self, inodes: &Mutex<InodeTable>, paths: &[&RelPath]) {
        let Some(cache) = self.0.lock().clone() else {
            return;
        };
        let forget = Forget::of(&inodes.lock(), paths);
        forget.send(cache.as_ref());
    }
}

//! What an operation touches, and the two things the master derives from it:
//! which in-flight operations it must wait for (locks), and which earlier
//! records in other partitions it depends on (`deps`). Pure data; no I/O.
//!
//! Keys name state by identity, not by path, so that a directory rename
//! does not change the keys of what lies beneath it:
//!
//! - `Entry(dir, name)`: the directory entry `name` in directory `dir`;
//!   resolving a path reads every entry along it (shared), creating,
//!   removing or renaming an entry writes it (exclusive).
//! - `Inode(ino)`: an inode's content and attributes (write, truncate,
//!   fallocate, chmod, chown, utimens, xattrs: exclusive).
//! - `DirTimes(dir)`: a directory's mtime. Namespace changes inside `dir`
//!   set it to `max(before, record time)`, which commutes, so they take it
//!   shared; `utimens` of the directory sets it exactly: exclusive.
//!
//! Shared accesses commute with each other; everything else conflicts. Two
//! operations that conflict are applied in master order on every replica:
//! on the master by locks (the later waits for the earlier to be applied),
//! on slaves by `deps`.

use std::collections::HashMap;

use crate::record::Dep;

/// Identity of a piece of filesystem state (inode numbers are the master's).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Key {
    /// A directory entry (parent inode, name).
    Entry(u64, Vec<u8>),
    /// An inode's content and attributes.
    Inode(u64),
    /// A directory's own times (changed by entries made or removed in it).
    DirTimes(u64),
}

/// How a record uses a key.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Reads it (records that only read commute).
    Shared,
    /// Changes it.
    Exclusive,
}

/// The keys one operation touches (duplicates merged, exclusive wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<(Key, Access)>,
}

impl KeySet {
    /// An empty key set.
    pub fn new() -> Self {
        KeySet::default()
    }

    /// Adds `key`; exclusive access wins over shared.
    pub fn add(&mut self, key: Key, access: Access) {
        match self.keys.iter_mut().find(|(k, _)| *k == key) {
            Some((_, a)) => {
                if access == Access::Exclusive {
                    *a = Access::Exclusive;
                }
            }
            None => self.keys.push((key, access)),
        }
    }

    /// Adds `key` for reading.
    pub fn shared(&mut self, key: Key) {
        self.add(key, Access::Shared)
    }

    /// Adds `key` for changing.
    pub fn exclusive(&mut self, key: Key) {
        self.add(key, Access::Exclusive)
    }

    /// The keys and how they are used.
    pub fn iter(&self) -> impl Iterator<Item = &(Key, Access)> {
        self.keys.iter()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// No keys?
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Default, Debug)]
struct Held {
    shared: u32,
    exclusive: bool,
}

#[derive(Default, Debug)]
struct History {
    /// Last exclusive access: (partition, seq).
    last_exclusive: Option<(u32, u64)>,
    /// Shared accesses since then: max seq per partition.
    shared_since: Vec<(u32, u64)>,
}

/// Locks of operations in flight and the access history of every key.
#[derive(Debug)]
pub struct Conflicts {
    held: HashMap<Key, Held>,
    history: HashMap<Key, History>,
    /// Every record depends on `floor[p]` for every partition p: what was
    /// forgotten when the history was cleared (or recovered from the log).
    floor: Vec<u64>,
    /// Largest seq sent to each partition.
    last_sent: Vec<u64>,
    /// History size that triggers folding it into the floor.
    limit: usize,
}

impl Conflicts {
    /// Conflict tracking for `partitions` partitions, folding its history into a barrier beyond `limit` keys.
    pub fn new(partitions: u32, limit: usize) -> Self {
        Conflicts {
            held: HashMap::new(),
            history: HashMap::new(),
            floor: vec![0; partitions as usize],
            last_sent: vec![0; partitions as usize],
            limit: limit.max(1),
        }
    }

    /// Can an operation with these keys start now (no conflicting one in flight)?
    pub fn can_acquire(&self, ks: &KeySet) -> bool {
        ks.iter().all(|(k, a)| match self.held.get(k) {
            None => true,
            Some(h) => match a {
                Access::Shared => !h.exclusive,
                Access::Exclusive => !h.exclusive && h.shared == 0,
            },
        })
    }

    /// Marks the keys as held by a record being sequenced.
    pub fn acquire(&mut self, ks: &KeySet) {
        for (k, a) in ks.iter() {
            let h = self.held.entry(k.clone()).or_default();
            match a {
                Access::Shared => h.shared += 1,
                Access::Exclusive => h.exclusive = true,
            }
        }
    }

    /// Releases keys taken by `acquire`.
    pub fn release(&mut self, ks: &KeySet) {
        for (k, a) in ks.iter() {
            if let Some(h) = self.held.get_mut(k) {
                match a {
                    Access::Shared => h.shared = h.shared.saturating_sub(1),
                    Access::Exclusive => h.exclusive = false,
                }
                if h.shared == 0 && !h.exclusive {
                    self.held.remove(k);
                }
            }
        }
    }

    /// Number of keys currently locked.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Records that the record `seq` in `partition` makes these accesses,
    /// and returns what it depends on in other partitions.
    pub fn record(&mut self, ks: &KeySet, partition: u32, seq: u64) -> Vec<Dep> {
        let n = self.floor.len();
        let mut need = self.floor.clone();
        let mut bump = |p: u32, s: u64| {
            if let Some(x) = need.get_mut(p as usize) {
                *x = (*x).max(s);
            }
        };
        for (k, a) in ks.iter() {
            let h = self.history.entry(k.clone()).or_default();
            if let Some((p, s)) = h.last_exclusive {
                bump(p, s);
            }
            match a {
                Access::Shared => match h.shared_since.iter_mut().find(|(p, _)| *p == partition) {
                    Some((_, s)) => *s = (*s).max(seq),
                    None => h.shared_since.push((partition, seq)),
                },
                Access::Exclusive => {
                    for &(p, s) in &h.shared_since {
                        bump(p, s);
                    }
                    h.shared_since.clear();
                    h.last_exclusive = Some((partition, seq));
                }
            }
        }
        if let Some(x) = self.last_sent.get_mut(partition as usize) {
            *x = (*x).max(seq);
        }
        if self.history.len() > self.limit {
            self.fold();
        }
        (0..n as u32)
            .filter(|&p| p != partition && need[p as usize] > 0)
            .map(|p| Dep {
                partition: p,
                seq: need[p as usize],
            })
            .collect()
    }

    /// Forgets the history: from now on every record depends on everything
    /// sent so far (a full barrier, once). Keeps memory bounded.
    pub fn fold(&mut self) {
        self.floor = self.last_sent.clone();
        self.history.clear();
    }

    /// Resets to the journal's actual tails (after recovery or at start):
    /// every later record depends on them.
    pub fn reset_to(&mut self, tails: &[u64]) {
        self.last_sent = tails.to_vec();
        self.fold();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(dir: u64, name: &str) -> Key {
        Key::Entry(dir, name.as_bytes().to_vec())
    }

    #[test]
    fn locks_shared_and_exclusive() {
        let mut c = Conflicts::new(1, 100);
        let mut read = KeySet::new();
        read.shared(e(1, "a"));
        let mut write = KeySet::new();
        write.exclusive(e(1, "a"));
        assert!(c.can_acquire(&read));
        c.acquire(&read);
        assert!(c.can_acquire(&read), "shared with shared");
        assert!(!c.can_acquire(&write));
        c.release(&read);
        assert!(c.can_acquire(&write));
        c.acquire(&write);
        assert!(!c.can_acquire(&read));
        c.release(&write);
        assert_eq!(c.held(), 0);
    }

    #[test]
    fn deps_follow_conflicts_across_partitions() {
        let mut c = Conflicts::new(3, 100);
        // mkdir d (p0, seq 1): writes entry (1,"d").
        let mut mkdir = KeySet::new();
        mkdir.exclusive(e(1, "d"));
        mkdir.shared(Key::DirTimes(1));
        assert_eq!(c.record(&mkdir, 0, 1), vec![]);
        // create d/x (p1, seq 2): resolves (1,"d"), writes (D,"x"), bumps D.
        let mut create = KeySet::new();
        create.shared(e(1, "d"));
        create.exclusive(e(5, "x"));
        create.shared(Key::DirTimes(5));
        assert_eq!(
            c.record(&create, 1, 2),
            vec![Dep {
                partition: 0,
                seq: 1
            }]
        );
        // create d/y (p2, seq 3): depends on mkdir only (bumps commute).
        let mut create2 = KeySet::new();
        create2.shared(e(1, "d"));
        create2.exclusive(e(5, "y"));
        create2.shared(Key::DirTimes(5));
        assert_eq!(
            c.record(&create2, 2, 3),
            vec![Dep {
                partition: 0,
                seq: 1
            }]
        );
        // rename d -> e (p0, seq 4): after everything that resolved d.
        let mut rename = KeySet::new();
        rename.exclusive(e(1, "d"));
        rename.exclusive(e(1, "e"));
        rename.shared(Key::DirTimes(1));
        let deps = c.record(&rename, 0, 4);
        assert_eq!(
            deps,
            vec![
                Dep {
                    partition: 1,
                    seq: 2
                },
                Dep {
                    partition: 2,
                    seq: 3
                }
            ]
        );
        // utimens d (p2, seq 5) orders after the bumps in d.
        let mut ut = KeySet::new();
        ut.shared(e(1, "e"));
        ut.exclusive(Key::Inode(5));
        ut.exclusive(Key::DirTimes(5));
        assert_eq!(
            c.record(&ut, 2, 5),
            vec![
                Dep {
                    partition: 0,
                    seq: 4
                },
                Dep {
                    partition: 1,
                    seq: 2
                }
            ]
        );
        // chmod d (p1, seq 6): not ordered after the creates (attributes only).
        let mut chmod = KeySet::new();
        chmod.shared(e(1, "e"));
        chmod.exclusive(Key::Inode(5));
        assert_eq!(
            c.record(&chmod, 1, 6),
            vec![
                Dep {
                    partition: 0,
                    seq: 4
                },
                Dep {
                    partition: 2,
                    seq: 5
                }
            ]
        );
    }

    #[test]
    fn folding_keeps_order_with_a_floor() {
        let mut c = Conflicts::new(2, 2);
        let mut a = KeySet::new();
        a.exclusive(Key::Inode(1));
        c.record(&a, 0, 1);
        let mut b = KeySet::new();
        b.exclusive(Key::Inode(2));
        c.record(&b, 1, 2);
        let mut x = KeySet::new();
        x.exclusive(Key::Inode(3));
        c.record(&x, 0, 3); // history exceeds 2 keys: folded
        let mut y = KeySet::new();
        y.exclusive(Key::Inode(9));
        assert_eq!(
            c.record(&y, 1, 4),
            vec![Dep {
                partition: 0,
                seq: 3
            }]
        );
    }
}

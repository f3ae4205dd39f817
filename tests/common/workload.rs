//! A seeded generator of mixed filesystem operations over a small
//! namespace. It keeps a rough model of what exists so that most operations
//! succeed, but does not need to be exact: failing operations are part of
//! the journal too (their errno outcome is the same on every replica).

use kafkafs::op::{Op, RelPath, RenameFlags, Timestamp, XattrFlags};
use kafkafs::op::{S_IFBLK, S_IFCHR, S_IFIFO, S_IFSOCK};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub struct Workload {
    rng: StdRng,
    dirs: Vec<String>,
    files: Vec<String>,
    others: Vec<String>,
    counter: u64,
    /// Largest write offset.
    pub max_offset: u64,
    /// Largest write length.
    pub max_len: usize,
}

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes().to_vec()).expect("generated path is valid")
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            rng: StdRng::seed_from_u64(seed),
            dirs: vec![String::new()],
            files: Vec::new(),
            others: Vec::new(),
            counter: 0,
            max_offset: 256 * 1024,
            max_len: 16 * 1024,
        }
    }

    fn pick<'a>(&mut self, v: &'a [String]) -> Option<&'a String> {
        if v.is_empty() {
            None
        } else {
            Some(&v[self.rng.random_range(0..v.len())])
        }
    }

    fn new_name(&mut self, dir: &str) -> String {
        self.counter += 1;
        // Reuse a small set of names now and then, so names collide.
        let name = if self.rng.random_bool(0.2) {
            format!("n{}", self.rng.random_range(0..5))
        } else {
            format!("e{}", self.counter)
        };
        if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        }
    }

    fn any_dir(&mut self) -> String {
        let dirs = self.dirs.clone();
        self.pick(&dirs).cloned().unwrap_or_default()
    }

    fn any_file(&mut self) -> Option<String> {
        let files = self.files.clone();
        self.pick(&files).cloned()
    }

    fn any_path(&mut self) -> String {
        match self.rng.random_range(0..3) {
            0 => self.any_file().unwrap_or_default(),
            1 => self.any_dir(),
            _ => {
                let o = self.others.clone();
                self.pick(&o).cloned().unwrap_or_default()
            }
        }
    }

    fn forget(&mut self, path: &str) {
        let under = format!("{path}/");
        for v in [&mut self.files, &mut self.dirs, &mut self.others] {
            v.retain(|x| x != path && !x.starts_with(&under));
        }
        if self.dirs.is_empty() {
            self.dirs.push(String::new());
        }
    }

    fn time(&mut self) -> Timestamp {
        Timestamp::new(
            self.rng.random_range(0..2_000_000_000),
            self.rng.random_range(0..1_000_000_000),
        )
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let uid = self.rng.random_range(0..3u32) * 1000;
        let gid = self.rng.random_range(0..3u32) * 100;
        loop {
            let roll = self.rng.random_range(0..100);
            let op = match roll {
                0..=11 => {
                    let d = self.any_dir();
                    let path = self.new_name(&d);
                    self.files.push(path.clone());
                    Op::Create {
                        path: p(&path),
                        mode: [0o644, 0o600, 0o755, 0o4755, 0o2644][self.rng.random_range(0..5)],
                        uid,
                        gid,
                    }
                }
                12..=17 => {
                    let d = self.any_dir();
                    let path = self.new_name(&d);
                    self.dirs.push(path.clone());
                    Op::Mkdir {
                        path: p(&path),
                        mode: [0o755, 0o700, 0o2775, 0o1777][self.rng.random_range(0..4)],
                        uid,
                        gid,
                    }
                }
                18..=37 => {
                    let Some(f) = self.any_file() else { continue };
                    let len = self.rng.random_range(1..=self.max_len);
                    let offset = self.rng.random_range(0..self.max_offset);
                    let byte = self.rng.random::<u8>();
                    let data = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                    Op::Write {
                        path: p(&f),
                        offset,
                        data,
                    }
                }
                38..=41 => {
                    let Some(f) = self.any_file() else { continue };
                    Op::Truncate {
                        path: p(&f),
                        size: self.rng.random_range(0..self.max_offset),
                    }
                }
                42..=43 => {
                    let Some(f) = self.any_file() else { continue };
                    Op::Fallocate {
                        path: p(&f),
                        mode: [0, 1, 3][self.rng.random_range(0..3)],
                        offset: self.rng.random_range(0..self.max_offset),
                        length: self.rng.random_range(1..65536),
                    }
                }
                44..=47 => Op::Chmod {
                    path: p(&self.any_path()),
                    mode: self.rng.random_range(0..0o7777),
                },
                48..=50 => Op::Chown {
                    path: p(&self.any_path()),
                    uid: self.rng.random_bool(0.7).then_some(uid),
                    gid: self.rng.random_bool(0.7).then_some(gid),
                },
                51..=54 => {
                    let atime = self.rng.random_bool(0.8).then(|| self.time());
                    let mtime = self.rng.random_bool(0.8).then(|| self.time());
                    Op::Utimens {
                        path: p(&self.any_path()),
                        atime,
                        mtime,
                    }
                }
                55..=58 => {
                    let name = format!("user.k{}", self.rng.random_range(0..4)).into_bytes();
                    let len = self.rng.random_range(0..200);
                    Op::SetXattr {
                        path: p(&self.any_path()),
                        name,
                        value: (0..len).map(|_| self.rng.random()).collect(),
                        flags: [XattrFlags::Any, XattrFlags::Create, XattrFlags::Replace]
                            [self.rng.random_range(0..3)],
                    }
                }
                59..=60 => Op::RemoveXattr {
                    path: p(&self.any_path()),
                    name: format!("user.k{}", self.rng.random_range(0..4)).into_bytes(),
                },
                61..=64 => {
                    let d = self.any_dir();
                    let path = self.new_name(&d);
                    self.others.push(path.clone());
                    let target = [
                        "../../../etc/passwd",
                        "/etc/shadow",
                        "e1",
                        "n1/../n2",
                        "dangling",
                    ][self.rng.random_range(0..5)];
                    Op::Symlink {
                        path: p(&path),
                        target: target.as_bytes().to_vec(),
                        uid,
                        gid,
                    }
                }
                65..=68 => {
                    let Some(src) = self.any_file() else { continue };
                    let d = self.any_dir();
                    let dst = self.new_name(&d);
                    self.files.push(dst.clone());
                    Op::Link {
                        src: p(&src),
                        dst: p(&dst),
                    }
                }
                69..=74 => {
                    let Some(f) = self.any_file() else { continue };
                    self.forget(&f);
                    Op::Unlink { path: p(&f) }
                }
                75..=77 => {
                    let d = self.any_dir();
                    if d.is_empty() {
                        continue;
                    }
                    // Often not empty: ENOTEMPTY is a fine outcome.
                    if self.rng.random_bool(0.5) {
                        self.forget(&d);
                    }
                    Op::Rmdir { path: p(&d) }
                }
                78..=87 => {
                    let src = if self.rng.random_bool(0.7) {
                        self.any_file().unwrap_or_default()
                    } else {
                        self.any_dir()
                    };
                    if src.is_empty() {
                        continue;
                    }
                    let d = self.any_dir();
                    let dst = self.new_name(&d);
                    let flags = match self.rng.random_range(0..10) {
                        0 => RenameFlags {
                            noreplace: true,
                            exchange: false,
                        },
                        1 => RenameFlags {
                            noreplace: false,
                            exchange: true,
                        },
                        _ => RenameFlags::default(),
                    };
                    if !flags.exchange {
                        let was_dir = self.dirs.contains(&src);
                        self.forget(&src);
                        if was_dir {
                            self.dirs.push(dst.clone());
                        } else {
                            self.files.push(dst.clone());
                        }
                    }
                    Op::Rename {
                        src: p(&src),
                        dst: p(&dst),
                        flags,
                    }
                }
                88..=92 => {
                    let d = self.any_dir();
                    let path = self.new_name(&d);
                    self.others.push(path.clone());
                    let (kind, rdev) = [
                        (S_IFIFO, 0),
                        (S_IFSOCK, 0),
                        (S_IFCHR, rustix::fs::makedev(1, 3)),
                        (S_IFBLK, rustix::fs::makedev(7, 0)),
                    ][self.rng.random_range(0..4)];
                    Op::Mknod {
                        path: p(&path),
                        mode: kind | 0o640,
                        rdev,
                        uid,
                        gid,
                    }
                }
                _ => {
                    let Some(f) = self.any_file() else { continue };
                    Op::Fsync {
                        path: p(&f),
                        datasync: self.rng.random_bool(0.5),
                    }
                }
            };
            return op;
        }
    }

    pub fn ops(&mut self, n: usize) -> Vec<Op> {
        (0..n).map(|_| self.next_op()).collect()
    }
}

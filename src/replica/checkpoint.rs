//! Where a replica records how far it has applied the journal.
//!
//! Two files in the replica's state folder (`<root>/.kafkafs/`):
//!
//! - `ledger`: one fixed 256-byte slot per partition, overwritten in place
//!   (`pwrite`, no fsync) after every applied record, and before the main
//!   effect of a non-idempotent record (its *intent*: the record's offset
//!   and the prior-state fingerprint). It survives the process being killed
//!   at any instant (the page cache outlives the process), not a machine
//!   crash; each slot carries the boot id it was written under and a CRC.
//! - `checkpoint`: the durable copy, replaced atomically (write temp file,
//!   fsync, rename, fsync folder) every few seconds and at shutdown, and
//!   only after `syncfs` of the replica, so it never runs ahead of data that
//!   is on disk.
//!
//! On start the ledger is used when it was written under the current boot
//! (the process died, the machine did not); otherwise the checkpoint is.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::CheckpointError;
use crate::op::Timestamp;
use crate::replica::apply::Fingerprint;

const SLOT: usize = 256;
const MAGIC: &[u8; 4] = b"KFL1";

/// Length of a writer id that can fence (what masters generate).
pub const FENCE_ID_LEN: usize = 16;

/// The writer a partition is fenced to: after its fence, records of any
/// other writer or of an older epoch are void.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fence {
    /// The writer's identity.
    pub id: [u8; FENCE_ID_LEN],
    /// Its epoch.
    pub epoch: u64,
}

impl Fence {
    /// The fence a writer sets, if its id can fence.
    pub fn of(writer: &crate::record::Writer) -> Option<Fence> {
        Some(Fence {
            id: writer.id.as_slice().try_into().ok()?,
            epoch: writer.epoch,
        })
    }

    /// Is a record of `writer` void after this fence?
    pub fn voids(&self, writer: &crate::record::Writer) -> bool {
        writer.id.as_slice() != self.id || writer.epoch < self.epoch
    }

    fn hex(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn parse(id: &str, epoch: &str) -> Option<Fence> {
        let mut out = [0u8; FENCE_ID_LEN];
        if id.len() != 2 * FENCE_ID_LEN {
            return None;
        }
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(id.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fence {
            id: out,
            epoch: epoch.parse().ok()?,
        })
    }
}

/// How far one partition has been applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    /// The offset of the next record to read.
    pub next_offset: i64,
    /// Global sequence number of the last applied record (0: none).
    pub last_seq: u64,
    /// Partition sequence number of the last applied record (0: none).
    pub last_pseq: u64,
    /// The fence in force in this partition, if one was applied.
    pub fence: Option<Fence>,
}

/// A record whose application began but did not finish.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Intent {
    /// The record's offset.
    pub offset: i64,
    /// What the replica looked like before its first effect.
    pub fingerprint: Fingerprint,
}

/// One partition's ledger slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    /// What is applied.
    pub position: Position,
    /// A record being applied, if any.
    pub intent: Option<Intent>,
}

/// The durable checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The topic the replica follows.
    pub topic: String,
    /// Where each partition resumes.
    pub positions: Vec<Position>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The exclusive use of a replica or data-root (released on drop, or when
/// the process dies).
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

/// The state folder of a replica.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// `<root>/.kafkafs` if it exists (nothing is created: for commands
    /// that only read).
    pub fn existing(root: &Path) -> Option<StateDir> {
        let dir = root.join(".kafkafs");
        dir.is_dir().then_some(StateDir { dir })
    }

    /// Takes the exclusive use of this replica or data-root for the life
    /// of the returned guard (`flock` on `.kafkafs/lock`, which holds the
    /// holder's pid). One process at a time, master or slave.
    pub fn lock(&self) -> Result<DataLock, CheckpointError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(self.in_use(&path)),
            Err(e) => return Err(io_err(&path)(e.into())),
        }
        file.set_len(0).map_err(io_err(&path))?;
        (&file)
            .write_all(format!("{}\n", std::process::id()).as_bytes())
            .map_err(io_err(&path))?;
        Ok(DataLock { _file: file })
    }

    /// Fails as `lock` would, without taking the lock or changing anything.
    pub fn check_free(&self) -> Result<(), CheckpointError> {
        let path = self.dir.join("lock");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(self.in_use(&path)),
            Err(e) => Err(io_err(&path)(e.into())),
        }
    }

    /// "In use by process N", from the lock file.
    fn in_use(&self, lock: &Path) -> CheckpointError {
        CheckpointError::InUse {
            root: self.dir.parent().unwrap_or(&self.dir).to_path_buf(),
            holder: fs::read_to_string(lock)
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    /// Reads the trusted ledger slots without creating or changing anything.
    pub fn read_ledger(&self, partitions: u32) -> Result<Vec<Option<Slot>>, CheckpointError> {
        let path = self.ledger_path();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(vec![None; partitions as usize])
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        read_slots(&file, &path, partitions, &boot_id())
    }

    /// Opens (creating if needed) `<root>/.kafkafs`.
    pub fn open(root: &Path) -> Result<StateDir, CheckpointError> {
        let dir = root.join(".kafkafs");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(StateDir { dir })
    }

    /// The state folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The durable checkpoint's file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// The ledger's file.
    pub fn ledger_path(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    /// Reads the durable checkpoint, if there is one.
    pub fn load_checkpoint(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let path = self.checkpoint_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        parse_checkpoint(&text)
            .map(Some)
            .map_err(|why| CheckpointError::Corrupt { path, why })
    }

    /// Atomically replaces the durable checkpoint. The caller must have made
    /// the data it covers durable first.
    pub fn store_checkpoint(&self, cp: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.checkpoint_path();
        let tmp = self.dir.join("checkpoint.tmp");
        let written = File::create(&tmp).and_then(|mut f| {
            f.write_all(format_checkpoint(cp).as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = written {
            // The previous checkpoint stays valid; leave no partial file.
            let _ = fs::remove_file(&tmp);
            return Err(io_err(&tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }

    /// Opens the ledger for `partitions` partitions and returns the slots
    /// that can be trusted (written under this boot, intact).
    pub fn open_ledger(
        &self,
        partitions: u32,
    ) -> Result<(Ledger, Vec<Option<Slot>>), CheckpointError> {
        let path = self.ledger_path();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let boot = boot_id();
        let slots = read_slots(&file, &path, partitions, &boot)?;
        Ok((Ledger { file, path, boot }, slots))
    }
}

/// The trusted slots of a ledger file (written under `boot`, intact).
fn read_slots(
    file: &File,
    path: &Path,
    partitions: u32,
    boot: &[u8; 16],
) -> Result<Vec<Option<Slot>>, CheckpointError> {
    (0..partitions)
        .map(|p| {
            let mut buf = [0u8; SLOT];
            let n = read_full_at(file, &mut buf, p as u64 * SLOT as u64).map_err(io_err(path))?;
            Ok(if n == SLOT {
                decode_slot(&buf, p, boot)
            } else {
                None
            })
        })
        .collect()
}

pub(crate) fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// The current boot's identity (Linux `boot_id`); all zeroes if unknown,
/// which makes ledgers untrusted after any restart.
fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(s) = fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = s.trim().bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let s = std::str::from_utf8(pair).unwrap_or("0");
            id[i] = u8::from_str_radix(s, 16).unwrap_or(0);
        }
    }
    id
}

/// The per-partition ledger (see module docs). Slots are written by the
/// thread applying that partition; distinct slots never overlap.
pub struct Ledger {
    file: File,
    path: PathBuf,
    boot: [u8; 16],
}

impl Ledger {
    /// Records that `partition` has applied everything up to `pos`.
    pub fn write(&self, partition: u32, slot: &Slot) -> Result<(), CheckpointError> {
        let buf = encode_slot(partition, &self.boot, slot);
        self.file
            .write_all_at(&buf, partition as u64 * SLOT as u64)
            .map_err(io_err(&self.path))
    }

    /// Makes the ledger durable (after the replica's data).
    pub fn sync(&self) -> Result<(), CheckpointError> {
        self.file.sync_data().map_err(io_err(&self.path))
    }
}

fn put_ts(buf: &mut Vec<u8>, t: Option<Timestamp>) {
    match t {
        Some(t) => {
            buf.push(1);
            buf.extend_from_slice(&t.sec.to_le_bytes());
            buf.extend_from_slice(&t.nsec.to_le_bytes());
        }
        None => buf.extend_from_slice(&[0; 13]),
    }
}

fn put_u64opt(buf: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(v) => {
            buf.push(1);
            buf.extend_from_slice(&v.to_le_bytes());
        }
        None => buf.extend_from_slice(&[0; 9]),
    }
}

fn encode_slot(partition: u32, boot: &[u8; 16], slot: &Slot) -> [u8; SLOT] {
    let mut b = Vec::with_capacity(SLOT);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&partition.to_le_bytes());
    b.extend_from_slice(boot);
    b.extend_from_slice(&slot.position.next_offset.to_le_bytes());
    b.extend_from_slice(&slot.position.last_seq.to_le_bytes());
    b.extend_from_slice(&slot.position.last_pseq.to_le_bytes());
    match &slot.intent {
        None => b.extend_from_slice(&[0; 9]),
        Some(i) => {
            b.push(1);
            b.extend_from_slice(&i.offset.to_le_bytes());
        }
    }
    let fp = slot.intent.map(|i| i.fingerprint).unwrap_or_default();
    put_u64opt(&mut b, fp.target);
    put_u64opt(&mut b, fp.source);
    put_ts(&mut b, fp.target_parent_mtime);
    put_ts(&mut b, fp.source_parent_mtime);
    put_ts(&mut b, fp.source_mtime);
    put_ts(&mut b, fp.target_mtime);
    match &slot.position.fence {
        None => b.extend_from_slice(&[0; 1 + FENCE_ID_LEN + 8]),
        Some(f) => {
            b.push(1);
            b.extend_from_slice(&f.id);
            b.extend_from_slice(&f.epoch.to_le_bytes());
        }
    }
    b.resize(SLOT - 4, 0);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let mut out = [0u8; SLOT];
    out.copy_from_slice(&b);
    out
}

struct SlotCursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl SlotCursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[self.at..self.at + N]);
        self.at += N;
        a
    }
    fn u64opt(&mut self) -> Option<u64> {
        let [flag] = self.take::<1>();
        let v = u64::from_le_bytes(self.take::<8>());
        (flag == 1).then_some(v)
    }
    fn ts(&mut self) -> Option<Timestamp> {
        let [flag] = self.take::<1>();
        let sec = i64::from_le_bytes(self.take::<8>());
        let nsec = u32::from_le_bytes(self.take::<4>());
        (flag == 1).then_some(Timestamp::new(sec, nsec))
    }
}

fn decode_slot(buf: &[u8; SLOT], partition: u32, boot: &[u8; 16]) -> Option<Slot> {
    let crc = u32::from_le_bytes([buf[SLOT - 4], buf[SLOT - 3], buf[SLOT - 2], buf[SLOT - 1]]);
    if &buf[..4] != MAGIC || crc32fast::hash(&buf[..SLOT - 4]) != crc {
        return None;
    }
    let mut r = SlotCursor { b: buf, at: 4 };
    if u32::from_le_bytes(r.take::<4>()) != partition {
        return None;
    }
    if &r.take::<16>() != boot || boot == &[0; 16] {
        return None;
    }
    let mut position = Position {
        next_offset: i64::from_le_bytes(r.take::<8>()),
        last_seq: u64::from_le_bytes(r.take::<8>()),
        last_pseq: u64::from_le_bytes(r.take::<8>()),
        fence: None,
    };
    let [has_intent] = r.take::<1>();
    let offset = i64::from_le_bytes(r.take::<8>());
    let fingerprint = Fingerprint {
        target: r.u64opt(),
        source: r.u64opt(),
        target_parent_mtime: r.ts(),
        source_parent_mtime: r.ts(),
        source_mtime: r.ts(),
        target_mtime: r.ts(),
    };
    let [has_fence] = r.take::<1>();
    let id = r.take::<FENCE_ID_LEN>();
    let epoch = u64::from_le_bytes(r.take::<8>());
    position.fence = (has_fence == 1).then_some(Fence { id, epoch });
    Some(Slot {
        position,
        intent: (has_intent == 1).then_some(Intent {
            offset,
            fingerprint,
        }),
    })
}

fn format_checkpoint(cp: &Checkpoint) -> String {
    let mut s = String::from("kafkafs checkpoint v1\n");
    s.push_str(&format!("topic {}\n", cp.topic));
    s.push_str(&format!("partitions {}\n", cp.positions.len()));
    for (p, pos) in cp.positions.iter().enumerate() {
        s.push_str(&format!(
            "partition {p} next_offset {} last_seq {} last_pseq {}",
            pos.next_offset, pos.last_seq, pos.last_pseq
        ));
        if let Some(f) = &pos.fence {
            s.push_str(&format!(" fence {} {}", f.hex(), f.epoch));
        }
        s.push('\n');
    }
    s.push_str("end\n");
    s
}

fn parse_checkpoint(text: &str) -> Result<Checkpoint, String> {
    let mut lines = text.lines();
    if lines.next() != Some("kafkafs checkpoint v1") {
        return Err("unknown header (expected `kafkafs checkpoint v1`)".into());
    }
    let topic = lines
        .next()
        .and_then(|l| l.strip_prefix("topic "))
        .ok_or("missing `topic` line")?
        .to_string();
    let n: usize = lines
        .next()
        .and_then(|l| l.strip_prefix("partitions "))
        .and_then(|v| v.parse().ok())
        .ok_or("missing or bad `partitions` line")?;
    let mut positions = Vec::with_capacity(n);
    for p in 0..n {
        let line = lines
            .next()
            .ok_or(format!("missing line for partition {p}"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = || format!("bad line for partition {p}: `{line}`");
        if !(f.len() == 8 || (f.len() == 11 && f[8] == "fence"))
            || f[0] != "partition"
            || f[1] != p.to_string()
            || f[2] != "next_offset"
            || f[4] != "last_seq"
            || f[6] != "last_pseq"
        {
            return Err(bad());
        }
        positions.push(Position {
            next_offset: f[3].parse().map_err(|_| bad())?,
            last_seq: f[5].parse().map_err(|_| bad())?,
            last_pseq: f[7].parse().map_err(|_| bad())?,
            fence: match f.get(9..11) {
                Some([id, epoch]) => Some(Fence::parse(id, epoch).ok_or_else(bad)?),
                _ => None,
            },
        });
    }
    if lines.next() != Some("end") {
        return Err("missing `end` line (truncated?)".into());
    }
    Ok(Checkpoint { topic, positions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        assert_eq!(sd.load_checkpoint().unwrap(), None);
        let cp = Checkpoint {
            topic: "t1".into(),
            positions: vec![
                Position {
                    next_offset: 10,
                    last_seq: 99,
                    last_pseq: 10,
                    fence: Some(Fence {
                        id: *b"0123456789abcdef",
                        epoch: 3,
                    }),
                },
                Position::default(),
            ],
        };
        sd.store_checkpoint(&cp).unwrap();
        assert_eq!(sd.load_checkpoint().unwrap(), Some(cp));
        let text = fs::read_to_string(sd.checkpoint_path()).unwrap();
        fs::write(sd.checkpoint_path(), &text[..text.len() - 4]).unwrap();
        let e = sd.load_checkpoint().unwrap_err();
        assert!(e.to_string().contains("corrupt checkpoint"), "{e}");
    }

    #[test]
    fn ledger_slots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::open(dir.path()).unwrap();
        let (ledger, slots) = sd.open_ledger(3).unwrap();
        assert_eq!(slots, vec![None, None, None]);
        let s1 = Slot {
            position: Position {
                next_offset: 5,
                last_seq: 7,
                last_pseq: 5,
                fence: Some(Fence {
                    id: [7; FENCE_ID_LEN],
                    epoch: u64::MAX,
                }),
            },
            intent: Some(Intent {
                offset: 5,
                fingerprint: Fingerprint {
                    target: Some(12),
                    source: None,
                    target_parent_mtime: Some(Timestamp::new(-1, 5)),
                    source_parent_mtime: None,
                    source_mtime: Some(Timestamp::new(100, 999_999_999)),
                    target_mtime: None,
                },
            }),
        };
        ledger.write(1, &s1).unwrap();
        drop(ledger);
        let (_, slots) = sd.open_ledger(3).unwrap();
        assert_eq!(slots[1], Some(s1));
        assert_eq!(slots[0], None);
        // A torn or foreign slot is not trusted.
        let path = sd.ledger_path();
        let mut bytes = fs::read(&path).unwrap();
        bytes[SLOT + 30] ^= 0xff;
        fs::write(&path, bytes).unwrap();
        let (_, slots) = sd.open_ledger(3).unwrap();
        assert_eq!(slots[1], None);
    }
}

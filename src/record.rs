//! The journal record: `Op` plus the header every record carries, and its
//! protobuf encoding (`proto/kafkafs.proto`, package `kafkafs.v1`).

use prost::Message;

use crate::error::{DecodeError, PathError};
use crate::op::{Op, RelPath, RenameFlags, Timestamp, XattrFlags, FALLOC_ALLOWED, PERM_BITS};
use crate::op::{S_IFBLK, S_IFCHR, S_IFIFO, S_IFMT, S_IFREG, S_IFSOCK};

/// The generated protobuf types.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/kafkafs.v1.rs"));
}

/// The record format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Kafka header names (values are ASCII).
pub const HEADER_VERSION: &str = "kafkafs-version";
/// Kafka header naming the operation (for tools reading the topic).
pub const HEADER_OP: &str = "kafkafs-op";

/// Default upper bound on an encoded record a reader accepts.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Identity of the master that wrote a record.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Writer {
    /// The writer's identity (16 random bytes, kept in the data-root).
    pub id: Vec<u8>,
    /// Its epoch: one more than the last writer's at each start or recovery.
    pub epoch: u64,
}

/// "Apply me after partition `partition` has applied the record `seq`."
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Dep {
    /// The partition of the record depended on.
    pub partition: u32,
    /// Its sequence number.
    pub seq: u64,
}

/// Who made the call (for messages and audit; never for permissions).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Process id.
    pub pid: u32,
}

/// One journal record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Record {
    /// Who wrote the record.
    pub writer: Writer,
    /// Sequence number across the topic (rises by one per record of a writer).
    pub seq: u64,
    /// Sequence number within its partition (rises by one).
    pub partition_seq: u64,
    /// The partition it belongs to (from its target path).
    pub partition: u32,
    /// Records that must be applied before it.
    pub deps: Vec<Dep>,
    /// The master's time of the call (mtimes and ctimes it sets).
    pub time: Timestamp,
    /// Who made the call.
    pub caller: Caller,
    /// The operation.
    pub op: Op,
}

impl Record {
    /// The record's bytes (protobuf, see proto/kafkafs.proto).
    pub fn encode(&self) -> Vec<u8> {
        to_pb(self).encode_to_vec()
    }

    /// Decodes and validates a record. `max` bounds the accepted size.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Record, DecodeError> {
        Record::decode_owned(bytes::Bytes::copy_from_slice(bytes), max)
    }

    /// Decodes a record from a buffer it may keep: a write's data is a
    /// slice of `bytes`, not a copy.
    pub fn decode_owned(bytes: bytes::Bytes, max: usize) -> Result<Record, DecodeError> {
        if bytes.len() > max {
            return Err(DecodeError::Oversize {
                size: bytes.len(),
                max,
            });
        }
        let r = pb::Record::decode(bytes)?;
        from_pb(r)
    }

    /// Decodes, and checks the record belongs to the partition it was read
    /// from.
    pub fn decode_from(bytes: &[u8], max: usize, partition: u32) -> Result<Record, DecodeError> {
        Record::decode_owned_from(bytes::Bytes::copy_from_slice(bytes), max, partition)
    }

    /// `decode_from` of a payload the record may keep (a write's data is a
    /// slice of it: the replay path, no copy before pwrite).
    pub fn decode_owned_from(
        bytes: bytes::Bytes,
        max: usize,
        partition: u32,
    ) -> Result<Record, DecodeError> {
        let r = Record::decode_owned(bytes, max)?;
        if r.partition != partition {
            return Err(DecodeError::WrongPartition {
                claimed: r.partition,
                actual: partition,
            });
        }
        Ok(r)
    }
}

fn ts_to_pb(t: Timestamp) -> pb::Timestamp {
    pb::Timestamp {
        sec: t.sec,
        nsec: t.nsec,
    }
}

fn ts_from_pb(t: pb::Timestamp, field: &'static str) -> Result<Timestamp, DecodeError> {
    if t.nsec >= 1_000_000_000 {
        return Err(DecodeError::BadValue {
            field,
            value: t.nsec as u64,
        });
    }
    Ok(Timestamp::new(t.sec, t.nsec))
}

fn to_pb(r: &Record) -> pb::Record {
    use pb::record::Op as P;
    let op = match &r.op {
        Op::Create {
            path,
            mode,
            uid,
            gid,
        } => P::Create(pb::Create {
            path: path.as_bytes().to_vec(),
            mode: *mode,
            uid: *uid,
            gid: *gid,
        }),
        Op::Mknod {
            path,
            mode,
            rdev,
            uid,
            gid,
        } => P::Mknod(pb::Mknod {
            path: path.as_bytes().to_vec(),
            mode: *mode,
            rdev: *rdev,
            uid: *uid,
            gid: *gid,
        }),
        Op::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => P::Mkdir(pb::Mkdir {
            path: path.as_bytes().to_vec(),
            mode: *mode,
            uid: *uid,
            gid: *gid,
        }),
        Op::Symlink {
            path,
            target,
            uid,
            gid,
        } => P::Symlink(pb::Symlink {
            path: path.as_bytes().to_vec(),
            target: target.clone(),
            uid: *uid,
            gid: *gid,
        }),
        Op::Link { src, dst } => P::Link(pb::Link {
            src: src.as_bytes().to_vec(),
            dst: dst.as_bytes().to_vec(),
        }),
        Op::Unlink { path } => P::Unlink(pb::Unlink {
            path: path.as_bytes().to_vec(),
        }),
        Op::Rmdir { path } => P::Rmdir(pb::Rmdir {
            path: path.as_bytes().to_vec(),
        }),
        Op::Rename { src, dst, flags } => P::Rename(pb::Rename {
            src: src.as_bytes().to_vec(),
            dst: dst.as_bytes().to_vec(),
            flags: flags.bits(),
        }),
        Op::Write { path, offset, data } => P::Write(pb::Write {
            path: path.as_bytes().to_vec(),
            offset: *offset,
            data: data.clone(),
        }),
        Op::Truncate { path, size } => P::Truncate(pb::Truncate {
            path: path.as_bytes().to_vec(),
            size: *size,
        }),
        Op::Fallocate {
            path,
            mode,
            offset,
            length,
        } => P::Fallocate(pb::Fallocate {
            path: path.as_bytes().to_vec(),
            mode: *mode,
            offset: *offset,
            length: *length,
        }),
        Op::Chmod { path, mode } => P::Chmod(pb::Chmod {
            path: path.as_bytes().to_vec(),
            mode: *mode,
        }),
        Op::Chown { path, uid, gid } => P::Chown(pb::Chown {
            path: path.as_bytes().to_vec(),
            uid: *uid,
            gid: *gid,
        }),
        Op::Utimens { path, atime, mtime } => P::Utimens(pb::Utimens {
            path: path.as_bytes().to_vec(),
            atime: atime.map(ts_to_pb),
            mtime: mtime.map(ts_to_pb),
        }),
        Op::SetAttr { path, attrs } => P::SetAttr(pb::SetAttr {
            path: path.as_bytes().to_vec(),
            uid: attrs.uid,
            gid: attrs.gid,
            mode: attrs.mode,
            size: attrs.size,
            atime: attrs.atime.map(ts_to_pb),
            mtime: attrs.mtime.map(ts_to_pb),
        }),
        Op::SetXattr {
            path,
            name,
            value,
            flags,
        } => P::SetXattr(pb::SetXattr {
            path: path.as_bytes().to_vec(),
            name: name.clone(),
            value: value.clone(),
            flags: flags.bits(),
        }),
        Op::RemoveXattr { path, name } => P::RemoveXattr(pb::RemoveXattr {
            path: path.as_bytes().to_vec(),
            name: name.clone(),
        }),
        Op::Fsync { path, datasync } => P::Fsync(pb::Fsync {
            path: path.as_bytes().to_vec(),
            datasync: *datasync,
        }),
        Op::Fence { take_over } => P::Fence(pb::Fence {
            take_over: *take_over,
        }),
        Op::Limits(l) => P::Limits(pb::Limits {
            max_file_size: l.max_file_size,
            name_max: l.name_max,
            xattr_bytes_max: l.xattr_bytes_max,
            xattr_namespaces: l.xattr_namespaces.clone(),
        }),
    };
    pb::Record {
        version: FORMAT_VERSION,
        writer: Some(pb::Writer {
            id: r.writer.id.clone(),
            epoch: r.writer.epoch,
        }),
        seq: r.seq,
        partition_seq: r.partition_seq,
        partition: r.partition,
        deps: r
            .deps
            .iter()
            .map(|d| pb::Dep {
                partition: d.partition,
                seq: d.seq,
            })
            .collect(),
        barrier: None,
        time: Some(ts_to_pb(r.time)),
        caller: Some(pb::Caller {
            uid: r.caller.uid,
            gid: r.caller.gid,
            pid: r.caller.pid,
        }),
        op: Some(op),
    }
}

fn path(field: &'static str, bytes: Vec<u8>) -> Result<RelPath, DecodeError> {
    RelPath::new(bytes).map_err(|source| DecodeError::BadPath { field, source })
}

/// A path that must name an entry (not the root itself).
fn entry(field: &'static str, bytes: Vec<u8>) -> Result<RelPath, DecodeError> {
    RelPath::new_entry(bytes).map_err(|source| DecodeError::BadPath { field, source })
}

fn perm(field: &'static str, mode: u32) -> Result<u32, DecodeError> {
    if mode & !PERM_BITS != 0 {
        return Err(DecodeError::BadValue {
            field,
            value: mode as u64,
        });
    }
    Ok(mode)
}

fn symlink_target(target: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    // The target is stored verbatim and never resolved by the applier, so it
    // may point anywhere; it only has to be a valid C string.
    if target.is_empty() || target.contains(&0) {
        return Err(DecodeError::BadPath {
            field: "symlink.target",
            source: if target.is_empty() {
                PathError::EmptyComponent
            } else {
                PathError::Nul
            },
        });
    }
    Ok(target)
}

fn from_pb(r: pb::Record) -> Result<Record, DecodeError> {
    use pb::record::Op as P;
    if r.version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion {
            found: r.version,
            supported: FORMAT_VERSION,
        });
    }
    let writer = r.writer.ok_or(DecodeError::MissingField("writer"))?;
    let time = ts_from_pb(r.time.ok_or(DecodeError::MissingField("time"))?, "time")?;
    let fence = matches!(r.op, Some(P::Fence(_)));
    if fence && (r.seq != 0 || r.partition_seq != 0 || !r.deps.is_empty()) {
        return Err(DecodeError::BadValue {
            field: "fence with seq, partition_seq or deps",
            value: r.seq,
        });
    }
    if fence && writer.id.len() != crate::replica::checkpoint::FENCE_ID_LEN {
        return Err(DecodeError::BadValue {
            field: "fence writer.id length",
            value: writer.id.len() as u64,
        });
    }
    if r.seq == 0 && !fence {
        return Err(DecodeError::MissingField("seq"));
    }
    if r.partition_seq == 0 && !fence {
        return Err(DecodeError::MissingField("partition_seq"));
    }
    let mut deps = Vec::with_capacity(r.deps.len());
    for d in r.deps {
        if d.seq >= r.seq {
            // A dependency on a later record could never be satisfied.
            return Err(DecodeError::BadValue {
                field: "deps.seq",
                value: d.seq,
            });
        }
        deps.push(Dep {
            partition: d.partition,
            seq: d.seq,
        });
    }
    let caller = r.caller.unwrap_or_default();
    let op = match r.op.ok_or(DecodeError::MissingOp)? {
        P::Create(c) => Op::Create {
            path: entry("create.path", c.path)?,
            mode: perm("create.mode", c.mode)?,
            uid: c.uid,
            gid: c.gid,
        },
        P::Mknod(m) => {
            let kind = m.mode & S_IFMT;
            if ![S_IFREG, S_IFCHR, S_IFBLK, S_IFIFO, S_IFSOCK].contains(&kind) {
                return Err(DecodeError::BadValue {
                    field: "mknod.mode",
                    value: m.mode as u64,
                });
            }
            perm("mknod.mode", m.mode & !S_IFMT)?;
            Op::Mknod {
                path: entry("mknod.path", m.path)?,
                mode: m.mode,
                rdev: m.rdev,
                uid: m.uid,
                gid: m.gid,
            }
        }
        P::Mkdir(m) => Op::Mkdir {
            path: entry("mkdir.path", m.path)?,
            mode: perm("mkdir.mode", m.mode)?,
            uid: m.uid,
            gid: m.gid,
        },
        P::Symlink(s) => Op::Symlink {
            path: entry("symlink.path", s.path)?,
            target: symlink_target(s.target)?,
            uid: s.uid,
            gid: s.gid,
        },
        P::Link(l) => Op::Link {
            src: entry("link.src", l.src)?,
            dst: entry("link.dst", l.dst)?,
        },
        P::Unlink(u) => Op::Unlink {
            path: entry("unlink.path", u.path)?,
        },
        P::Rmdir(u) => Op::Rmdir {
            path: entry("rmdir.path", u.path)?,
        },
        P::Rename(x) => Op::Rename {
            src: entry("rename.src", x.src)?,
            dst: entry("rename.dst", x.dst)?,
            flags: RenameFlags::from_bits(x.flags).ok_or(DecodeError::BadValue {
                field: "rename.flags",
                value: x.flags as u64,
            })?,
        },
        P::Write(w) => Op::Write {
            path: path("write.path", w.path)?,
            offset: w.offset,
            data: w.data,
        },
        P::Truncate(t) => Op::Truncate {
            path: path("truncate.path", t.path)?,
            size: t.size,
        },
        P::Fallocate(f) => {
            if f.mode & !FALLOC_ALLOWED != 0 {
                return Err(DecodeError::BadValue {
                    field: "fallocate.mode",
                    value: f.mode as u64,
                });
            }
            Op::Fallocate {
                path: path("fallocate.path", f.path)?,
                mode: f.mode,
                offset: f.offset,
                length: f.length,
            }
        }
        P::Chmod(c) => Op::Chmod {
            path: path("chmod.path", c.path)?,
            mode: perm("chmod.mode", c.mode)?,
        },
        P::Chown(c) => Op::Chown {
            path: path("chown.path", c.path)?,
            uid: c.uid,
            gid: c.gid,
        },
        P::Utimens(u) => Op::Utimens {
            path: path("utimens.path", u.path)?,
            atime: u
                .atime
                .map(|t| ts_from_pb(t, "utimens.atime"))
                .transpose()?,
            mtime: u
                .mtime
                .map(|t| ts_from_pb(t, "utimens.mtime"))
                .transpose()?,
        },
        P::SetAttr(a) => Op::SetAttr {
            path: path("setattr.path", a.path)?,
            attrs: crate::op::Attrs {
                uid: a.uid,
                gid: a.gid,
                mode: a.mode.map(|m| perm("setattr.mode", m)).transpose()?,
                size: a.size,
                atime: a
                    .atime
                    .map(|t| ts_from_pb(t, "setattr.atime"))
                    .transpose()?,
                mtime: a
                    .mtime
                    .map(|t| ts_from_pb(t, "setattr.mtime"))
                    .transpose()?,
            },
        },
        P::SetXattr(x) => Op::SetXattr {
            path: path("setxattr.path", x.path)?,
            name: xattr_name("setxattr.name", x.name)?,
            value: x.value,
            flags: XattrFlags::from_bits(x.flags).ok_or(DecodeError::BadValue {
                field: "setxattr.flags",
                value: x.flags as u64,
            })?,
        },
        P::RemoveXattr(x) => Op::RemoveXattr {
            path: path("removexattr.path", x.path)?,
            name: xattr_name("removexattr.name", x.name)?,
        },
        P::Fsync(f) => Op::Fsync {
            path: path("fsync.path", f.path)?,
            datasync: f.datasync,
        },
        P::Fence(f) => Op::Fence {
            take_over: f.take_over,
        },
        P::Limits(l) => Op::Limits(crate::limits::Limits {
            max_file_size: l.max_file_size,
            name_max: l.name_max,
            xattr_bytes_max: l.xattr_bytes_max,
            xattr_namespaces: l.xattr_namespaces,
        }),
    };
    Ok(Record {
        writer: Writer {
            id: writer.id,
            epoch: writer.epoch,
        },
        seq: r.seq,
        partition_seq: r.partition_seq,
        partition: r.partition,
        deps,
        time,
        caller: Caller {
            uid: caller.uid,
            gid: caller.gid,
            pid: caller.pid,
        },
        op,
    })
}

fn xattr_name(field: &'static str, name: Vec<u8>) -> Result<Vec<u8>, DecodeError> {
    if name.is_empty() || name.contains(&0) {
        return Err(DecodeError::BadValue {
            field,
            value: name.len() as u64,
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(op: Op) -> Record {
        Record {
            writer: Writer {
                id: b"m1".to_vec(),
                epoch: 3,
            },
            seq: 42,
            partition_seq: 7,
            partition: 1,
            deps: vec![Dep {
                partition: 0,
                seq: 40,
            }],
            time: Timestamp::new(1_700_000_000, 123_456_789),
            caller: Caller {
                uid: 1000,
                gid: 100,
                pid: 9,
            },
            op,
        }
    }

    fn p(s: &str) -> RelPath {
        RelPath::new(s).unwrap()
    }

    /// A write decoded from an owned payload keeps its data in the
    /// payload's buffer: replaying a large record copies nothing between
    /// the fetched message and pwrite.
    #[test]
    fn a_write_decoded_from_its_payload_is_not_copied() {
        let op = Op::Write {
            path: RelPath::new("big").unwrap(),
            offset: 0,
            data: vec![9u8; 1 << 20].into(),
        };
        let payload = bytes::Bytes::from(sample(op).encode());
        let range = payload.as_ptr_range();
        let r = Record::decode_owned(payload.clone(), 1 << 24).unwrap();
        let Op::Write { data, .. } = &r.op else {
            panic!("not a write");
        };
        assert_eq!(data.len(), 1 << 20);
        assert!(
            range.contains(&data.as_ptr()),
            "the write's data was copied out of the payload"
        );
    }

    #[test]
    fn every_op_round_trips() {
        let ops = vec![
            Op::Create {
                path: p("a"),
                mode: 0o644,
                uid: 1,
                gid: 2,
            },
            Op::Mknod {
                path: p("f"),
                mode: S_IFIFO | 0o600,
                rdev: 0,
                uid: 1,
                gid: 2,
            },
            Op::Mkdir {
                path: p("d"),
                mode: 0o2755,
                uid: 0,
                gid: 0,
            },
            Op::Symlink {
                path: p("s"),
                target: b"../../etc/passwd".to_vec(),
                uid: 3,
                gid: 4,
            },
            Op::Link {
                src: p("a"),
                dst: p("d/b"),
            },
            Op::Unlink { path: p("a") },
            Op::Rmdir { path: p("d") },
            Op::Rename {
                src: p("a"),
                dst: p("b"),
                flags: RenameFlags {
                    noreplace: false,
                    exchange: true,
                },
            },
            Op::Write {
                path: p("a"),
                offset: 1 << 40,
                data: vec![1, 2, 3].into(),
            },
            Op::Truncate {
                path: p("a"),
                size: 5,
            },
            Op::Fallocate {
                path: p("a"),
                mode: 3,
                offset: 0,
                length: 4096,
            },
            Op::Chmod {
                path: p("a"),
                mode: 0o4755,
            },
            Op::Chown {
                path: p("a"),
                uid: Some(0),
                gid: None,
            },
            Op::Utimens {
                path: p(""),
                atime: None,
                mtime: Some(Timestamp::new(-5, 999_999_999)),
            },
            Op::SetXattr {
                path: p("a"),
                name: b"user.k".to_vec(),
                value: vec![0, 255],
                flags: XattrFlags::Create,
            },
            Op::RemoveXattr {
                path: p("a"),
                name: b"user.k".to_vec(),
            },
            Op::Fsync {
                path: p("a"),
                datasync: true,
            },
            Op::SetAttr {
                path: p("a"),
                attrs: crate::op::Attrs {
                    uid: Some(1000),
                    gid: None,
                    mode: Some(0o4755),
                    size: Some(1 << 40),
                    atime: None,
                    mtime: Some(Timestamp::new(7, 8)),
                },
            },
        ];
        for op in ops {
            let r = sample(op);
            let bytes = r.encode();
            let back = Record::decode_from(&bytes, DEFAULT_MAX_RECORD_BYTES, 1).unwrap();
            assert_eq!(back, r);
        }
    }

    #[test]
    fn refuses_unknown_version_and_garbage() {
        let mut pbr = to_pb(&sample(Op::Unlink { path: p("a") }));
        pbr.version = 2;
        let e = Record::decode(&pbr.encode_to_vec(), 1 << 20).unwrap_err();
        assert!(
            matches!(e, DecodeError::UnknownVersion { found: 2, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("version 2"));

        let good = sample(Op::Unlink { path: p("a") }).encode();
        let e = Record::decode(&good[..good.len() - 3], 1 << 20).unwrap_err();
        assert!(matches!(e, DecodeError::Protobuf(_)), "{e}");
        let e = Record::decode(&[0xff; 40], 1 << 20).unwrap_err();
        assert!(matches!(e, DecodeError::Protobuf(_)), "{e}");
        let e = Record::decode(&good, 10).unwrap_err();
        assert!(matches!(e, DecodeError::Oversize { max: 10, .. }), "{e}");
        let e = Record::decode_from(&good, 1 << 20, 0).unwrap_err();
        assert!(matches!(
            e,
            DecodeError::WrongPartition {
                claimed: 1,
                actual: 0
            }
        ));
    }

    #[test]
    fn refuses_escaping_paths() {
        for bad in [
            &b"../x"[..],
            b"/etc/x",
            b"a/../../x",
            b"a\0b",
            b".kafkafs/checkpoint",
        ] {
            let mut pbr = to_pb(&sample(Op::Unlink { path: p("a") }));
            pbr.op = Some(pb::record::Op::Unlink(pb::Unlink { path: bad.to_vec() }));
            let e = Record::decode(&pbr.encode_to_vec(), 1 << 20).unwrap_err();
            assert!(matches!(e, DecodeError::BadPath { .. }), "{e}");
        }
        let mut pbr = to_pb(&sample(Op::Unlink { path: p("a") }));
        pbr.op = Some(pb::record::Op::Rename(pb::Rename {
            src: b"a".to_vec(),
            dst: b"../../b".to_vec(),
            flags: 0,
        }));
        assert!(Record::decode(&pbr.encode_to_vec(), 1 << 20).is_err());
    }

    #[test]
    fn refuses_bad_values() {
        let cases: Vec<pb::record::Op> = vec![
            pb::record::Op::Rename(pb::Rename {
                src: b"a".to_vec(),
                dst: b"b".to_vec(),
                flags: 4,
            }),
            pb::record::Op::Mknod(pb::Mknod {
                path: b"a".to_vec(),
                mode: 0o040755,
                ..Default::default()
            }),
            pb::record::Op::Chmod(pb::Chmod {
                path: b"a".to_vec(),
                mode: 0o100644,
            }),
            pb::record::Op::Fallocate(pb::Fallocate {
                path: b"a".to_vec(),
                mode: 0x8,
                offset: 0,
                length: 1,
            }),
            pb::record::Op::SetXattr(pb::SetXattr {
                path: b"a".to_vec(),
                name: vec![],
                value: vec![],
                flags: 0,
            }),
        ];
        for op in cases {
            let mut pbr = to_pb(&sample(Op::Unlink { path: p("a") }));
            pbr.op = Some(op);
            assert!(Record::decode(&pbr.encode_to_vec(), 1 << 20).is_err());
        }
        let mut pbr = to_pb(&sample(Op::Unlink { path: p("a") }));
        pbr.op = None;
        assert!(matches!(
            Record::decode(&pbr.encode_to_vec(), 1 << 20),
            Err(DecodeError::MissingOp)
        ));
    }
}

//! Building a replica from a snapshot (a new replica of a topic whose
//! beginning was deleted, or on request), and taking one at a slave's cut.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::restore::{Builder, Restored};
use super::take::{take, Cut};
use super::{io_at, new_id, SnapshotError, SnapshotInfo, SnapshotStore};
use crate::op::STATE_DIR;
use crate::progress::Progress;
use crate::replica::checkpoint::{Checkpoint, StateDir};

/// Marks a replica being restored: its tree is the restore's, unfinished.
const MARKER: &str = "restoring";

/// Was a restore into `root` interrupted? (Then everything but the state
/// folder is the restore's own and may go.)
pub fn interrupted(root: &Path) -> bool {
    root.join(OsStr::from_bytes(STATE_DIR))
        .join(MARKER)
        .exists()
}

/// Removes what an interrupted restore left (everything but the state
/// folder), so the restore can start again.
pub fn clear_interrupted(root: &Path) -> Result<(), SnapshotError> {
    for e in fs::read_dir(root).map_err(io_at(root))? {
        let e = e.map_err(io_at(root))?;
        if e.file_name().as_bytes() == STATE_DIR {
            continue;
        }
        let path = e.path();
        let gone = if e.file_type().map_err(io_at(&path))?.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        gone.map_err(io_at(&path))?;
    }
    Ok(())
}

/// Restores `snap` into the empty replica `root` and writes its positions
/// as the replica's durable checkpoint, so the slave resumes after it.
pub fn restore_into(
    root: &Path,
    state: &StateDir,
    store: &mut dyn SnapshotStore,
    snap: &SnapshotInfo,
    unprivileged: bool,
    stop: &AtomicBool,
) -> Result<Restored, SnapshotError> {
    let marker = state.path().join(MARKER);
    fs::write(&marker, format!("{}\n", snap.id_hex())).map_err(io_at(&marker))?;
    tracing::info!(
        "restoring snapshot {} of {} ({} entries, {:.1} MiB, taken {}) from {} into {}",
        snap.id_hex(),
        snap.topic,
        snap.entries,
        snap.bytes as f64 / 1048576.0,
        snap.taken.rfc3339(),
        store.describe(),
        root.display()
    );
    let mut builder = Builder::new(root, snap, unprivileged, stop)?;
    let progress = Progress::new("restore", snap.entries, snap.bytes);
    store.read(snap, &mut |part| {
        builder.part(part)?;
        let so_far = builder.so_far();
        progress.set(so_far.entries, so_far.bytes);
        progress.tick();
        Ok(())
    })?;
    progress.finish();
    let got = builder.finish()?;
    write_limits(state, &snap.limits)?;
    state
        .store_checkpoint(&Checkpoint {
            topic: snap.topic.clone(),
            positions: snap.positions.clone(),
        })
        .map_err(|e| SnapshotError::Unusable(format!("writing the restored checkpoint: {e}")))?;
    fs::remove_file(&marker).map_err(io_at(&marker))?;
    tracing::info!(
        "snapshot restored: {} entries, {:.1} MiB in {:.1} s; the replica resumes at offsets {:?}",
        got.entries,
        got.bytes as f64 / 1048576.0,
        progress.elapsed().as_secs_f64(),
        snap.starts()
    );
    Ok(got)
}

/// The topic's limits as the replica adopted them (the applier reads
/// them back when the replica is opened).
fn write_limits(state: &StateDir, limits: &[u8]) -> Result<(), SnapshotError> {
    if limits.is_empty() {
        return Ok(());
    }
    let path = state.path().join(crate::replica::apply::LIMITS_FILE);
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, limits)
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(io_at(&path))
}

/// A line every few seconds while a restore runs.
/// Takes a snapshot of the replica at `root`, whose applied state is
/// `cut` and which nothing changes meanwhile, into `store`.
pub fn take_into(
    root: &Path,
    cut: &Cut,
    store: &mut dyn SnapshotStore,
    stop: &AtomicBool,
) -> Result<SnapshotInfo, SnapshotError> {
    let id = new_id()?;
    let mut writer = store.begin(&id)?;
    take(root, cut, &id, writer.as_mut(), stop)?;
    writer.commit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::pb;
    use crate::record::pb::snapshot_part::Part;
    use crate::replica::checkpoint::Position;
    use crate::snapshot::dir_store::DirStore;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn build_tree(root: &Path) {
        let w = |p: &str, data: &[u8]| fs::write(root.join(p), data).unwrap();
        fs::create_dir_all(root.join("a/b/c")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        w("a/small", b"hello");
        w(
            "a/b/big",
            &(0..700_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        );
        let sparse = fs::File::create(root.join("a/sparse")).unwrap();
        sparse.set_len(10 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&sparse, b"middle", 5 << 20).unwrap();
        drop(sparse);
        w("a/b/c/linked", b"two names");
        fs::hard_link(root.join("a/b/c/linked"), root.join("other name")).unwrap();
        symlink("../a/small", root.join("a/b/link")).unwrap();
        symlink("/nowhere/at/all", root.join("dangling")).unwrap();
        let odd = OsStr::from_bytes(b"odd \xff name\n");
        fs::write(root.join(odd), b"odd").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_bits_retain(0o640),
            0,
        )
        .unwrap();
        // Where the filesystem has user xattrs.
        let _ = rustix::fs::setxattr(
            root.join("a/small").as_path(),
            "user.k",
            b"v",
            rustix::fs::XattrFlags::empty(),
        );
        fs::set_permissions(root.join("a/small"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o555)).unwrap();
    }

    fn cut() -> Cut {
        Cut {
            topic: "t".into(),
            positions: vec![
                Position {
                    next_offset: 7,
                    last_seq: 9,
                    last_pseq: 6,
                    fence: None,
                };
                2
            ],
            limits: b"max_file_size=1\n".to_vec(),
        }
    }

    #[test]
    fn a_tree_restored_from_its_snapshot_equals_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst, store_dir) = (
            tmp.path().join("src"),
            tmp.path().join("dst"),
            tmp.path().join("snaps"),
        );
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        build_tree(&src);
        let stop = AtomicBool::new(false);
        let mut store = DirStore::new(&store_dir);
        let info = take_into(&src, &cut(), &mut store, &stop).unwrap();
        assert_eq!(store.list().unwrap(), vec![info.clone()]);
        assert_eq!(info.starts(), vec![7, 7]);
        let state = StateDir::open(&dst).unwrap();
        let unprivileged = !rustix::process::geteuid().is_root();
        let got = restore_into(&dst, &state, &mut store, &info, unprivileged, &stop).unwrap();
        assert_eq!((got.entries, got.bytes), (info.entries, info.bytes));
        assert_eq!(crate::tree::compare(&src, &dst).unwrap(), Ok(()));
        // The positions became the checkpoint; the limits the replica's.
        let cp = state.load_checkpoint().unwrap().unwrap();
        assert_eq!(cp.positions, cut().positions);
        assert_eq!(fs::read(state.path().join("limits")).unwrap(), cut().limits);
        assert!(!interrupted(&dst));
        // Holes stay holes.
        use std::os::unix::fs::MetadataExt;
        assert!(fs::metadata(dst.join("a/sparse")).unwrap().blocks() < 1024);
        fs::set_permissions(src.join("a/b"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(dst.join("a/b"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn expiring_keeps_the_newest() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let stop = AtomicBool::new(false);
        let mut store = DirStore::new(tmp.path().join("snaps"));
        let ids: Vec<_> = (0..3)
            .map(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                take_into(&src, &cut(), &mut store, &stop).unwrap().id
            })
            .collect();
        assert_eq!(store.expire(2).unwrap(), 1);
        let left: Vec<_> = store.list().unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(left, ids[1..].to_vec());
    }

    fn part(index: u64, p: Part) -> pb::SnapshotPart {
        pb::SnapshotPart {
            version: crate::snapshot::SNAPSHOT_VERSION,
            snapshot_id: vec![1; 16],
            index,
            part: Some(p),
        }
    }

    fn dir_entry(name: &[u8]) -> Part {
        Part::Entry(pb::SnapshotEntry {
            name: name.to_vec(),
            mode: 0o040755,
            ..Default::default()
        })
    }

    /// Feeds hand-made parts; returns the first error.
    fn feed(dst: &Path, parts: Vec<Part>) -> Result<(), SnapshotError> {
        let stop = AtomicBool::new(false);
        let info = SnapshotInfo {
            id: vec![1; 16],
            topic: "t".into(),
            taken: crate::op::Timestamp::new(0, 0),
            positions: vec![],
            limits: vec![],
            entries: 0,
            bytes: 0,
            location: crate::snapshot::Location::File("x".into()),
        };
        let mut b = Builder::new(dst, &info, true, &stop)?;
        let mut all = vec![Part::Header(pb::SnapshotHeader::default()), dir_entry(b"")];
        all.extend(parts);
        for (i, p) in all.into_iter().enumerate() {
            b.part(part(i as u64, p))?;
        }
        Ok(())
    }

    #[test]
    fn hostile_parts_are_refused_and_nothing_leaves_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("dst");
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        for (what, parts) in [
            ("dotdot", vec![dir_entry(b"..")]),
            ("slash", vec![dir_entry(b"x/y")]),
            ("state folder", vec![dir_entry(b".kafkafs")]),
            (
                "link out",
                vec![Part::Entry(pb::SnapshotEntry {
                    name: b"l".to_vec(),
                    link_to: b"../outside/f".to_vec(),
                    ..Default::default()
                })],
            ),
            (
                "through a symlink",
                vec![
                    Part::Entry(pb::SnapshotEntry {
                        name: b"s".to_vec(),
                        mode: 0o120777,
                        symlink_target: outside.as_os_str().as_bytes().to_vec(),
                        ..Default::default()
                    }),
                    Part::Entry(pb::SnapshotEntry {
                        name: b"l".to_vec(),
                        link_to: b"s/f".to_vec(),
                        ..Default::default()
                    }),
                ],
            ),
            (
                "data without a file",
                vec![Part::Data(pb::SnapshotData {
                    offset: 0,
                    data: b"x".to_vec(),
                })],
            ),
        ] {
            let _ = fs::remove_dir_all(&dst);
            fs::create_dir(&dst).unwrap();
            fs::write(outside.join("f"), b"precious").unwrap();
            let e = feed(&dst, parts).expect_err(what);
            assert!(
                matches!(
                    e,
                    SnapshotError::BadName { .. }
                        | SnapshotError::Malformed { .. }
                        | SnapshotError::Io { .. }
                ),
                "{what}: {e}"
            );
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 1, "{what}");
        }
        // A part out of order is refused with its position.
        fs::remove_dir_all(&dst).unwrap();
        fs::create_dir(&dst).unwrap();
        let stop = AtomicBool::new(false);
        let mut store = DirStore::new(tmp.path().join("s"));
        let info = take_into(&outside, &cut(), &mut store, &stop).unwrap();
        let mut b = Builder::new(&dst, &info, true, &stop).unwrap();
        let mut parts = Vec::new();
        store
            .read(&info, &mut |p| {
                parts.push(p);
                Ok(())
            })
            .unwrap();
        parts.swap(1, 2);
        let e = parts.into_iter().try_for_each(|p| b.part(p)).unwrap_err();
        assert!(e.to_string().contains("part 1"), "{e}");
    }
}

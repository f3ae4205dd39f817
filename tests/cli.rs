//! The `kafkafs` binary as a newcomer uses it: the embedded-broker quick
//! start (the master prints the slave command, which works as printed),
//! clean shutdown on SIGINT, a crashed master's mount cleaned up on the
//! next start, and helpful --help.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

/// A master process, killed (and its mount detached) if the test fails.
struct MasterProc {
    child: Child,
    mnt: std::path::PathBuf,
}

impl Drop for MasterProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// Starts `kafkafs master DATA MNT` (embedded broker) and returns it with
/// the slave command it printed.
fn start_master(data: &Path, mnt: &Path) -> (MasterProc, Vec<String>) {
    let mut child = Command::new(BIN)
        .arg("master")
        .arg(data)
        .arg(mnt)
        .env_remove("KAFKAFS_BROKERS")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn master");
    let out = child.stdout.take().unwrap();
    let child = MasterProc {
        child,
        mnt: mnt.to_path_buf(),
    };
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut printed = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "master printed: {printed:?}");
        let line = lines.next().expect("master output").unwrap();
        printed.push(line.clone());
        if line.trim_start().contains("kafkafs slave ") {
            let cmd = line.split_whitespace().map(str::to_string).collect();
            // Keep reading in the background so the pipe never fills.
            std::thread::spawn(move || for _ in lines {});
            assert!(
                printed
                    .iter()
                    .any(|l| l.contains("EMBEDDED") && l.contains("keeps nothing")),
                "the master says plainly that the embedded broker keeps nothing: {printed:?}"
            );
            return (child, cmd);
        }
    }
}

fn sigint(p: &mut MasterProc) -> std::process::ExitStatus {
    let child = &mut p.child;
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "master did not exit on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn embedded_quick_start_replicates_to_the_printed_slave_command() {
    if common::skip(
        common::Need::Kafka,
        "embedded_quick_start_replicates_to_the_printed_slave_command",
    ) {
        return;
    }
    let dir = common::tempdir();
    let (data, mnt, replica) = (
        dir.path().join("data"),
        dir.path().join("mnt"),
        dir.path().join("replica"),
    );
    let (mut master, cmd) = start_master(&data, &mnt);
    assert!(common::is_mounted(&mnt));
    std::fs::create_dir(mnt.join("docs")).unwrap();
    std::fs::write(mnt.join("docs/readme"), b"hello from the master\n").unwrap();
    std::os::unix::fs::symlink("docs/readme", mnt.join("link")).unwrap();
    std::fs::rename(mnt.join("docs"), mnt.join("documents")).unwrap();

    // The printed command, as printed (the binary's own path, so it runs
    // without being on PATH), with a real replica path.
    assert_eq!(cmd[1], "slave");
    assert_eq!(
        std::fs::canonicalize(&cmd[0]).unwrap(),
        std::fs::canonicalize(BIN).unwrap()
    );
    let args: Vec<String> = cmd[1..]
        .iter()
        .map(|a| {
            if a == "/path/to/replica" {
                replica.to_str().unwrap().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let out = Command::new(&cmd[0])
        .args(&args)
        .arg("--exit-when-caught-up")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_trees_equal(&data, &replica, "quick start");
    common::assert_trees_equal(&mnt, &replica, "quick start (mount)");

    let status = sigint(&mut master);
    assert!(status.success(), "master exit status {status}");
    assert!(!common::is_mounted(&mnt), "unmounted on SIGINT");
}

#[test]
fn crashed_master_mount_is_cleaned_up_on_next_start() {
    if common::skip(
        common::Need::Kafka,
        "crashed_master_mount_is_cleaned_up_on_next_start",
    ) {
        return;
    }
    let dir = common::tempdir();
    let mnt = dir.path().join("mnt");
    let (mut master, _) = start_master(&dir.path().join("data1"), &mnt);
    std::fs::write(mnt.join("x"), b"x").unwrap();
    master.child.kill().unwrap();
    master.child.wait().unwrap();
    let e = std::fs::metadata(&mnt).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOTCONN),
        "a dead mount is left behind"
    );
    // The embedded broker kept nothing, so a new data-root; same mountpoint.
    let (mut master, _) = start_master(&dir.path().join("data2"), &mnt);
    std::fs::write(mnt.join("y"), b"y").unwrap();
    assert!(sigint(&mut master).success());
    assert!(!common::is_mounted(&mnt));
}

#[test]
fn help_explains_the_commands() {
    if common::skip(common::Need::Kafka, "help_explains_the_commands") {
        return;
    }
    let top = common::run(Command::new(BIN).arg("--help"));
    for word in ["master", "slave", "compare"] {
        assert!(top.contains(word), "{top}");
    }
    let m = common::run(Command::new(BIN).args(["master", "--help"]));
    for word in [
        "--broker",
        "--partitions",
        "--journal-timeout",
        "KAFKAFS_BROKERS",
        "embedded",
    ] {
        assert!(m.contains(word), "master --help lacks {word}:\n{m}");
    }
    let s = common::run(Command::new(BIN).args(["slave", "--help"]));
    for word in ["--threads", "--skip-record", "-X", "--exit-when-caught-up"] {
        assert!(s.contains(word), "slave --help lacks {word}:\n{s}");
    }
    // A slave without root is refused (it could not reproduce ownership).
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .args([
            "slave",
            "--broker",
            "127.0.0.1:1",
            "/tmp/kafkafs-never-created",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("must run as root") && err.contains("--unprivileged"),
        "{err}"
    );
    // A bad property is a clear error, not a crash.
    let out = Command::new(BIN)
        .args([
            "slave",
            "--broker",
            "127.0.0.1:1",
            "-X",
            "acks=1",
            "/tmp/x-never",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("acks=1"));
}

/// A master killed with SIGKILL in the middle of a workload, restarted on
/// the same data-root and topic (real broker): the data-root is brought up
/// to the journal, the mount works, and a slave equals it.
#[test]
fn master_killed_with_sigkill_restarts_consistent() {
    if common::skip(
        common::Need::Kafka,
        "master_killed_with_sigkill_restarts_consistent",
    ) {
        return;
    }
    let cfg = common::kafka_topic("master-kill", 2);
    let dir = common::tempdir();
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    let spawn = || {
        let mut child = Command::new(BIN)
            .args([
                "master",
                "--broker",
                cfg.broker_list(),
                "--topic",
                &cfg.topic,
            ])
            .args(["--partitions", "2"])
            .arg(&data)
            .arg(&mnt)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let l = lines.next().expect("master output").unwrap();
            if l.contains("Stop with Ctrl-C") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        MasterProc {
            child,
            mnt: mnt.clone(),
        }
    };
    let mut master = spawn();
    // A writer keeps going while the master dies under it.
    let writer = {
        let mnt = mnt.clone();
        std::thread::spawn(move || {
            let mut ok = 0;
            for i in 0..100_000 {
                let d = mnt.join(format!("d{}", i % 7));
                let _ = std::fs::create_dir(&d);
                if std::fs::write(d.join(format!("f{i}")), format!("{i}")).is_err() {
                    break;
                }
                ok += 1;
            }
            ok
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    master.child.kill().unwrap();
    master.child.wait().unwrap();
    let written = writer.join().unwrap();
    assert!(written > 10, "the workload ran ({written} files)");
    drop(master);
    // Restart: catch up, mount, keep working.
    let mut master = spawn();
    std::fs::write(mnt.join("after-restart"), b"ok").unwrap();
    assert!(sigint(&mut master).success());
    let replica = dir.path().join("replica");
    let out = Command::new(BIN)
        .args([
            "slave",
            "--broker",
            cfg.broker_list(),
            "--topic",
            &cfg.topic,
        ])
        .args(["--threads", "2", "--exit-when-caught-up"])
        .arg(&replica)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::assert_trees_equal(&data, &replica, "after a master SIGKILL and restart");
    assert!(replica.join("after-restart").exists());
    // Every write acknowledged before the kill survived it.
    for i in 0..written {
        let f = replica.join(format!("d{}/f{i}", i % 7));
        assert_eq!(
            std::fs::read_to_string(&f).unwrap(),
            format!("{i}"),
            "{}",
            f.display()
        );
    }
}

/// Completions and the man page come from the same definitions as --help.
#[test]
fn completions_and_man_page() {
    if common::skip(common::Need::Kafka, "completions_and_man_page") {
        return;
    }
    for shell in ["bash", "zsh", "fish"] {
        let out = common::run(Command::new(BIN).args(["completions", shell]));
        assert!(out.contains("kafkafs") && out.contains("slave"), "{shell}");
    }
    let man = common::run(Command::new(BIN).arg("man"));
    assert!(man.contains(".TH kafkafs 1"), "{man}");
    assert!(man.contains("slave"));
}

/// Properties from a file (-F) are checked like -X; a replica's topic is
/// the default --topic; compare exits 2 when a tree cannot be read.
#[test]
fn property_files_default_topic_and_compare_errors() {
    if common::skip(
        common::Need::Kafka,
        "property_files_default_topic_and_compare_errors",
    ) {
        return;
    }
    let dir = common::tempdir();
    let cfg = common::kafka_topic("cli-topic", 1);
    let replica = dir.path().join("replica");
    let slave = |extra: &[&str]| {
        Command::new(BIN)
            .args([
                "slave",
                "--exit-when-caught-up",
                "--broker",
                cfg.broker_list(),
            ])
            .args(extra)
            .arg(&replica)
            .env("RUST_LOG", "warn")
            .env_remove("KAFKAFS_TOPIC")
            .output()
            .unwrap()
    };
    let props = dir.path().join("client.properties");
    std::fs::write(&props, "# a comment\nclient.id=kafkafs-test\n").unwrap();
    let out = slave(&["-F", props.to_str().unwrap(), "--topic", &cfg.topic]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --topic: the topic the replica follows, not `kafkafs`.
    let out = slave(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    std::fs::write(&props, "enable.auto.commit=true\n").unwrap();
    let out = slave(&["-F", props.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("enable.auto.commit"),
        "{err}"
    );
    let out = slave(&["-F", "/nonexistent/client.properties"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/client.properties"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["compare", "/nonexistent/a"])
        .arg(&replica)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/a"));
}

/// The example systemd units pass `systemd-analyze verify` (with this
/// build's binary in ExecStart).
#[test]
fn systemd_units_verify() {
    if common::skip(common::Need::Kafka, "systemd_units_verify") {
        return;
    }
    let dir = common::tempdir();
    let units = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    for (file, as_name) in [
        ("kafkafs-master.service", "kafkafs-master.service"),
        ("kafkafs-slave@.service", "kafkafs-slave@replica1.service"),
    ] {
        let text = std::fs::read_to_string(units.join(file)).unwrap();
        assert!(text.contains("Type=notify") && text.contains("LimitNOFILE="));
        let unit = dir.path().join(as_name);
        std::fs::write(&unit, text.replace("/usr/local/bin/kafkafs", BIN)).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .expect("systemd-analyze (scripts/deps.sh test installs systemd)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && err.trim().is_empty(),
            "{as_name}: {err}"
        );
    }
}

/// Started by systemd (`NOTIFY_SOCKET`), a slave says READY once it
/// follows its topic, and STOPPING when it ends.
#[test]
fn slave_notifies_systemd() {
    if common::skip(common::Need::Kafka, "slave_notifies_systemd") {
        return;
    }
    let dir = common::tempdir();
    let cfg = common::kafka_topic("notify", 1);
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let out = Command::new(BIN)
        .args([
            "slave",
            "--exit-when-caught-up",
            "--broker",
            cfg.broker_list(),
        ])
        .args(["--topic", &cfg.topic])
        .arg(dir.path().join("replica"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut said = Vec::new();
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        said.iter()
            .any(|m| m.starts_with("READY=1\nSTATUS=following topic")),
        "{said:?}"
    );
    assert_eq!(
        said.last().map(String::as_str),
        Some("STOPPING=1"),
        "{said:?}"
    );
}

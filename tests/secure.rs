//! A broker that requires TLS and SASL/SCRAM (`scripts/kafka.sh start
//! --secure`): a FUSE master and a slave replicate through its SASL_SSL
//! listener with the properties given by `-F` (master) and `-X` (slave);
//! a wrong password or an untrusted certificate ends the slave at once
//! with one clear line, leaving nothing behind.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::PrivateBroker;

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");
const PORT: u16 = 19600;

/// `key=value` lines of a librdkafka properties file (comments left out).
fn properties(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A slave run to the topic's end; (success, stderr).
fn slave(broker: &str, topic: &str, replica: &Path, props: &[String]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["slave", "--broker", broker, "--topic", topic])
        .args(["--exit-when-caught-up", "--threads", "2"])
        .args(props)
        .arg(replica)
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn replication_through_sasl_ssl() {
    if common::skip(common::Need::Kafka, "replication_through_sasl_ssl") {
        return;
    }
    let dir = common::tempdir();
    let broker = PrivateBroker::start_secure(dir.path().join("kafka"), PORT);
    let out = broker.script("client-properties");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let file = dir.path().join("client.properties");
    fs::write(&file, &text).unwrap();
    let secure = format!("127.0.0.1:{}", PORT + 2);
    let topic = common::unique_topic("secure");

    // The master reads its properties from a file (-F).
    let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
    fs::create_dir(&mnt).unwrap();
    let mut master = Command::new(BIN)
        .args(["master", "--broker", &secure, "--topic", &topic])
        .args(["--partitions", "2", "-F"])
        .arg(&file)
        .arg(&data)
        .arg(&mnt)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    common::wait_master_mounted(&mnt, &mut master, Duration::from_secs(90));
    fs::create_dir_all(mnt.join("a/b")).unwrap();
    for i in 0..20 {
        fs::write(mnt.join(format!("a/b/f{i}")), format!("secret {i}")).unwrap();
    }
    std::os::unix::fs::symlink("a/b/f1", mnt.join("link")).unwrap();
    fs::rename(mnt.join("a/b/f2"), mnt.join("a/moved")).unwrap();

    // The slave gets the same properties one by one (-X).
    let as_x: Vec<String> = properties(&text)
        .iter()
        .flat_map(|(k, v)| ["-X".to_string(), format!("{k}={v}")])
        .collect();
    let replica = dir.path().join("replica");
    let (ok, err) = slave(&secure, &topic, &replica, &as_x);
    assert!(ok, "the slave failed through SASL_SSL: {err}");
    common::assert_trees_equal(&data, &replica, "a replica made through SASL_SSL");
    unsafe { libc::kill(master.id() as i32, libc::SIGTERM) };
    assert!(master.wait().unwrap().success());

    // A wrong password, a CA that did not sign the broker's certificate,
    // a CA file that is none: one line each, at once, no replica directory.
    let other_ca = dir.path().join("other-ca.pem");
    other_certificate(dir.path(), &other_ca);
    let file_arg = ["-F".to_string(), file.display().to_string()];
    let untrusted = format!("ssl.ca.location={}", other_ca.display());
    let cases = [
        ("sasl.password=wrong", "SASL authentication error", true),
        (untrusted.as_str(), "certificate verify failed", true),
        ("ssl.ca.location=/dev/null", "ssl.ca.location", false),
    ];
    for (bad, expected, checked) in cases {
        let refused = dir.path().join("refused");
        let mut props = file_arg.to_vec();
        props.extend(["-X".to_string(), bad.to_string()]);
        let t = Instant::now();
        let (ok, err) = slave(&secure, &topic, &refused, &props);
        assert!(!ok, "{bad}: the slave succeeded");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{bad}: took {:?}",
            t.elapsed()
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{bad}: one line expected:\n{err}");
        assert!(
            lines[0].starts_with("Error: ") && lines[0].contains(expected),
            "{bad}: {err}"
        );
        if checked {
            assert!(
                lines[0].contains("security checks") && lines[0].contains("ssl.ca.location"),
                "{bad}: the way forward is missing: {err}"
            );
        }
        assert!(!refused.exists(), "{bad}: a refused start left {refused:?}");
    }
}

/// A self-signed certificate unrelated to the broker's, as PEM.
fn other_certificate(dir: &Path, pem: &Path) {
    let store = dir.join("other.p12");
    common::run(
        Command::new("keytool")
            .args([
                "-genkeypair",
                "-alias",
                "other",
                "-keyalg",
                "RSA",
                "-keysize",
                "2048",
                "-dname",
                "CN=not-the-broker-ca",
                "-validity",
                "2",
                "-storetype",
                "PKCS12",
                "-storepass",
                "password",
                "-keystore",
            ])
            .arg(&store),
    );
    common::run(
        Command::new("keytool")
            .args([
                "-exportcert",
                "-rfc",
                "-alias",
                "other",
                "-storepass",
                "password",
            ])
            .arg("-keystore")
            .arg(&store)
            .arg("-file")
            .arg(pem),
    );
}

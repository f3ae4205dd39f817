//! Topics kafkafs creates keep the whole journal unless told otherwise;
//! a topic that deletes records is pointed out at start.

mod common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

#[test]
fn new_topics_keep_everything_and_finite_retention_is_pointed_out() {
    if common::skip(
        common::Need::Kafka,
        "new_topics_keep_everything_and_finite_retention_is_pointed_out",
    ) {
        return;
    }
    let kept = common::kafka_topic("retention-kept", 1);
    assert_eq!(kept.retention_ms().unwrap(), Some(-1));

    let mut finite =
        kafkafs::journal::kafka::KafkaConfig::new(common::brokers(), common::unique_topic("ret"));
    finite
        .topic_config
        .push(("retention.ms".into(), "86400000".into()));
    finite.ensure_topic(1, 1).unwrap();
    assert_eq!(finite.retention_ms().unwrap(), Some(86_400_000));

    let dir = common::tempdir();
    for (cfg, warns) in [(&kept, false), (&finite, true)] {
        let out = Command::new(BIN)
            .args([
                "slave",
                "--exit-when-caught-up",
                "--broker",
                cfg.broker_list(),
            ])
            .args(["--topic", &cfg.topic])
            .arg(dir.path().join(&cfg.topic))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(
            err.contains("deletes records older than 1.0 days"),
            warns,
            "{err}"
        );
    }
}

//! Topics kafkafs creates keep the whole journal unless told otherwise;
//! a topic that deletes records is pointed out at start, until a snapshot
//! covers it.

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
    // The second run on the finite topic took a snapshot (--snapshot-every
    // takes one more when exiting caught up): the third is not warned.
    for (i, (cfg, warns, snapshot)) in [
        (&kept, false, false),
        (&finite, true, true),
        (&finite, false, false),
    ]
    .into_iter()
    .enumerate()
    {
        let out = Command::new(BIN)
            .args([
                "slave",
                "--exit-when-caught-up",
                "--broker",
                cfg.broker_list(),
            ])
            .args(["--topic", &cfg.topic])
            .args(if snapshot {
                &["--snapshot-every", "1h"][..]
            } else {
                &[]
            })
            .arg(dir.path().join(format!("replica{i}")))
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

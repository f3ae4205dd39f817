//! `kafkafs log`: the journal as text or JSON lines, with filters.

mod common;

use std::fs;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_kafkafs");

fn log(topic: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .args(["log", "--broker", &common::brokers(), "--topic", topic])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn log_prints_filters_and_speaks_json() {
    if common::skip(common::Need::Kafka, "log_prints_filters_and_speaks_json") {
        return;
    }
    let mut m = common::Mounted::kafka("log", 2);
    fs::create_dir(m.path("docs")).unwrap();
    fs::write(m.path("docs/a"), b"hello").unwrap();
    fs::rename(m.path("docs/a"), m.path("b")).unwrap();
    fs::write(m.path("other"), b"x").unwrap();
    m.stop();
    let topic = m.journal.topic();
    let sink = common::kafka_sink(&kafkafs::journal::kafka::KafkaConfig::new(
        common::brokers(),
        &topic,
    ));
    kafkafs::journal::send_and_wait(&sink, 1, b"k", b"garbage", &[], common::WAIT).unwrap();

    let all = log(&topic, &[]);
    let total: i64 = {
        let source = m.journal.source().unwrap();
        (0..2).map(|p| source.watermarks(p).unwrap().1).sum()
    };
    assert_eq!(
        all.len() as i64,
        total,
        "one line per record:\n{}",
        all.join("\n")
    );
    assert!(
        all.iter().any(|l| l.contains("rename docs/a -> b")),
        "{all:#?}"
    );
    assert!(
        all.iter()
            .any(|l| l.contains("write /docs/a size=5 offset=0")),
        "{all:#?}"
    );
    assert!(all
        .iter()
        .any(|l| l.starts_with("1:") && l.contains("undecodable")));

    let under_docs = log(&topic, &["--path", "docs"]);
    assert!(!under_docs.is_empty());
    assert!(
        under_docs.iter().all(|l| l.contains("docs")),
        "{under_docs:#?}"
    );
    assert!(
        under_docs.iter().any(|l| l.contains(" rename ")),
        "a rename out of docs counts"
    );

    let renames = log(&topic, &["--op", "rename"]);
    assert_eq!(renames.len(), 1, "{renames:#?}");
    assert!(
        log(&topic, &["--since", "@4102444800"]).is_empty(),
        "nothing after 2100"
    );
    assert_eq!(
        log(&topic, &["--until", "@4102444800", "--op", "create"]).len(),
        2
    );

    // JSON lines a standard parser reads.
    let json = log(&topic, &["--json"]);
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nrows=[json.loads(l) for l in sys.stdin]\n\
             r=[x for x in rows if x.get('op')=='rename'][0]\n\
             assert r['path']=='b' and r['source']=='docs/a', r\n\
             print(len(rows))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin
        .take()
        .unwrap()
        .write_all(json.join("\n").as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        json.len().to_string()
    );
}

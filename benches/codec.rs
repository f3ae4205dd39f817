//! Record encode/decode throughput.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafkafs::op::{Op, RelPath, Timestamp};
use kafkafs::record::{Caller, Dep, Record, Writer};

fn record(op: Op) -> Record {
    Record {
        writer: Writer {
            id: vec![7; 16],
            epoch: 3,
        },
        seq: 123_456,
        partition_seq: 7_890,
        partition: 5,
        deps: vec![Dep {
            partition: 1,
            seq: 120_000,
        }],
        time: Timestamp::new(1_700_000_000, 1),
        caller: Caller {
            uid: 1000,
            gid: 1000,
            pid: 42,
        },
        op,
    }
}

fn bench(c: &mut Criterion) {
    let path = RelPath::new("src/kafkafs/module/file.rs").unwrap();
    let cases = vec![
        (
            "create",
            record(Op::Create {
                path: path.clone(),
                mode: 0o644,
                uid: 1000,
                gid: 1000,
            }),
        ),
        (
            "write-4KiB",
            record(Op::Write {
                path: path.clone(),
                offset: 4096,
                data: vec![0xab; 4096].into(),
            }),
        ),
        (
            "write-256KiB",
            record(Op::Write {
                path,
                offset: 0,
                data: vec![0xcd; 256 * 1024].into(),
            }),
        ),
    ];
    let mut g = c.benchmark_group("codec");
    for (name, r) in &cases {
        let bytes = r.encode();
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_with_input(BenchmarkId::new("encode", name), r, |b, r| {
            b.iter(|| r.encode())
        });
        g.bench_with_input(BenchmarkId::new("decode", name), &bytes, |b, bytes| {
            b.iter(|| Record::decode(bytes, 1 << 24).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

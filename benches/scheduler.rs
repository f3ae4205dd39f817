//! The scheduler alone (no I/O): records with cross-partition
//! dependencies pushed, taken and completed, single-threaded state machine
//! and the threaded pool with no-op work.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafkafs::record::Dep;
use kafkafs::replica::pool::{Pool, WorkFn};
use kafkafs::replica::scheduler::{Item, Scheduler};
use rand::{Rng, SeedableRng};

const N: u64 = 20_000;

/// (partition, seq, deps) for N records over `p` partitions; 20% carry a
/// dependency on a recent record of another partition.
fn workload(p: u32) -> Vec<(u32, u64, Vec<Dep>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut part_of = vec![0u32];
    (1..=N)
        .map(|seq| {
            let part = rng.random_range(0..p);
            part_of.push(part);
            let mut deps = Vec::new();
            if seq > 10 && rng.random_bool(0.2) {
                let d = seq - rng.random_range(1..10);
                if part_of[d as usize] != part {
                    deps.push(Dep {
                        partition: part_of[d as usize],
                        seq: d,
                    });
                }
            }
            (part, seq, deps)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    g.throughput(Throughput::Elements(N));
    for p in [1u32, 4, 16] {
        let w = workload(p);
        g.bench_with_input(BenchmarkId::new("state-machine", p), &w, |b, w| {
            b.iter(|| {
                let mut s: Scheduler<()> = Scheduler::new(&vec![0; p as usize]);
                for (part, seq, deps) in w {
                    s.push(
                        *part,
                        Item {
                            blocks: false,
                            seq: *seq,
                            deps: deps.clone(),
                            payload: (),
                        },
                    );
                }
                while let Some((part, _)) = s.take() {
                    s.complete(part);
                }
                assert!(s.is_idle());
            })
        });
        for threads in [1usize, 2, 4, 8] {
            g.bench_with_input(
                BenchmarkId::new(format!("pool-{threads}-threads"), p),
                &w,
                |b, w| {
                    b.iter(|| {
                        let work: Box<WorkFn<(), ()>> = Box::new(|_, _| Ok(()));
                        let pool = Pool::start(threads, Scheduler::new(&vec![0; p as usize]), work);
                        for (part, seq, deps) in w {
                            pool.push(
                                *part,
                                Item {
                                    blocks: false,
                                    seq: *seq,
                                    deps: deps.clone(),
                                    payload: (),
                                },
                            );
                        }
                        let end = pool.close();
                        assert_eq!(end.applied, N);
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

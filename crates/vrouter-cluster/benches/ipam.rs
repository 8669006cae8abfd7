//! IPAM allocations per second against a real etcd (started here, on loopback, one member):
//! one allocator assigning sequentially, and three nodes (three connections) assigning at the
//! same time. Each allocation is the whole `ipam::assign` a CNI ADD makes: handle lookup,
//! affine blocks, block read, and the block + handle transaction (etcd fsyncs each one), plus
//! a block claim every 64 addresses. Handles are new for every allocation; the pool (/12) does
//! not run out however long criterion runs.
//!
//! Run: `cargo bench -p vrouter-cluster --bench ipam` (about 20 s; sample size 10).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vrouter_cluster::ipam::{self, Attrs, PoolRef};
use vrouter_cluster::store::Store;
use vrouter_cluster::testing::Etcd;

static SEQ: AtomicU64 = AtomicU64::new(0);
/// (allocations, time) per bench, for the plain summary printed at the end.
static TOTALS: Mutex<Vec<(&str, u64, Duration)>> = Mutex::new(Vec::new());

fn record(name: &'static str, n: u64, d: Duration) {
    let mut t = TOTALS.lock().unwrap();
    match t.iter_mut().find(|e| e.0 == name) {
        Some(e) => {
            e.1 += n;
            e.2 += d;
        }
        None => t.push((name, n, d)),
    }
}

async fn assign_n(store: &Store, node: &str, pools: &[PoolRef], n: u64) {
    let attrs = Attrs { node: node.into(), namespace: Some("bench".into()), pod: None };
    for _ in 0..n {
        let h = format!("bench-{}", SEQ.fetch_add(1, Ordering::Relaxed));
        ipam::assign(store, node, &h, pools, &attrs).await.expect("assign");
    }
}

fn bench(c: &mut Criterion) {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pools = vec![PoolRef { cidr: "10.128.0.0/12".parse().unwrap(), block_size: 26 }];
    let stores: Vec<Store> = (0..3).map(|_| rt.block_on(Store::connect(&etcd.endpoints())).expect("connect")).collect();

    let mut g = c.benchmark_group("ipam");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(6));

    g.throughput(Throughput::Elements(1));
    g.bench_function("assign/sequential", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            rt.block_on(assign_n(&stores[0], "seq-node", &pools, iters));
            let d = t.elapsed();
            record("sequential (1 node)", iters, d);
            d
        })
    });

    g.throughput(Throughput::Elements(3));
    g.bench_function("assign/3-nodes-concurrent", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            rt.block_on(async {
                let tasks: Vec<_> = stores
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let (s, pools) = (s.clone(), pools.clone());
                        tokio::spawn(async move { assign_n(&s, &format!("node{i}"), &pools, iters).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
            let d = t.elapsed();
            record("concurrent (3 nodes)", 3 * iters, d);
            d
        })
    });
    g.finish();

    for (name, n, d) in TOTALS.lock().unwrap().iter() {
        println!("ipam assign, {name}: {:.0} allocations/s ({n} in {d:.2?})", *n as f64 / d.as_secs_f64());
    }
    let blocks = rt.block_on(ipam::blocks(&stores[0])).unwrap();
    println!(
        "({} blocks claimed, {} addresses allocated)",
        blocks.len(),
        blocks.iter().map(|b| b.used()).sum::<usize>()
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Policy evaluation over 10 / 1,000 / 10,000 random rules, and conntrack hits with 100k
//! entries. Rules, keys and table contents are generated outside the timed region; each timed
//! iteration evaluates one pre-generated key (cycling through 4096 of them).
//!
//! Run: `cargo bench --bench acl -- --measurement-time 2 --warm-up-time 1`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vrouter_core::acl::{
    Action, ConnTrack, CtTimeouts, Direction, EndpointPolicy, FlowKey, Fragment, PolicyConfig, PolicySet, PortRange,
    Rule, PROTO_ICMP, PROTO_TCP, PROTO_UDP,
};
use vrouter_core::fib::Ipv4Prefix;

const NKEYS: usize = 4096;

/// Counts allocations so the setup can check that the per-packet calls make none.
#[path = "../tests/common/counting_alloc.rs"]
mod counting_alloc;

#[global_allocator]
static ALLOC: counting_alloc::CountingAlloc = counting_alloc::CountingAlloc;

/// Runs `f` and panics if it allocated.
fn assert_no_alloc(what: &str, f: impl FnOnce()) {
    let n = counting_alloc::allocations_in(f);
    assert_eq!(n, 0, "{what} allocated {n} times");
}

/// Calico-like rules: pod/service CIDRs inside 10/8, mostly TCP/UDP with destination ports.
fn random_rule(rng: &mut SmallRng) -> Rule {
    let mut r = Rule::any(if rng.random_bool(0.5) { Action::Allow } else { Action::Deny });
    let prefix = |rng: &mut SmallRng| {
        Ipv4Prefix::new_masked(0x0a00_0000 | rng.random_range(0..1 << 24), rng.random_range(12..=32))
    };
    if rng.random_bool(0.7) {
        r.src.push(prefix(rng));
    }
    // Real policies select peers: every rule names a source or a destination.
    if r.src.is_empty() || rng.random_bool(0.7) {
        r.dst.push(prefix(rng));
    }
    match rng.random_range(0..10) {
        0..=4 => r.protocol = Some(PROTO_TCP),
        5..=7 => r.protocol = Some(PROTO_UDP),
        8 => r.protocol = Some(PROTO_ICMP),
        _ => {}
    }
    if matches!(r.protocol, Some(PROTO_TCP | PROTO_UDP)) && rng.random_bool(0.8) {
        let lo = rng.random_range(1..65000u16);
        let hi = if rng.random_bool(0.8) { lo } else { lo + rng.random_range(1..500) };
        r.dst_ports.push(PortRange { lo, hi });
    }
    r
}

fn random_key(rng: &mut SmallRng) -> FlowKey {
    let proto = [PROTO_TCP, PROTO_UDP, PROTO_ICMP][rng.random_range(0..3)];
    FlowKey {
        src: 0x0a00_0000 | rng.random_range(0..1 << 24),
        dst: 0x0a00_0000 | rng.random_range(0..1 << 24),
        proto,
        sport: rng.random(),
        dport: rng.random(),
        fragment: Fragment::None,
    }
}

/// One endpoint whose ingress policy holds `n` random rules.
fn policy_with(n: usize, rng: &mut SmallRng) -> (PolicyConfig, Vec<Rule>) {
    let rules: Vec<Rule> = (0..n).map(|_| random_rule(rng)).collect();
    let cfg = PolicyConfig {
        global: vec![],
        policies: BTreeMap::from([("p".to_string(), rules.clone())]),
        endpoints: vec![EndpointPolicy { ingress: vec!["p".into()], egress: vec![] }],
    };
    (cfg, rules)
}

fn bench_evaluate(c: &mut Criterion) {
    let mut g = c.benchmark_group("acl/evaluate");
    for n in [10usize, 1_000, 10_000] {
        let mut rng = SmallRng::seed_from_u64(n as u64);
        let (cfg, rules) = policy_with(n, &mut rng);
        let t0 = Instant::now();
        let ps = PolicySet::compile(&cfg, 1).unwrap();
        let compile = t0.elapsed();
        // Keys: half random, half built to hit a random rule (so matches spread over the list).
        let keys: Vec<FlowKey> = (0..NKEYS)
            .map(|i| {
                let mut k = random_key(&mut rng);
                if i % 2 == 1 {
                    let r = &rules[rng.random_range(0..rules.len())];
                    if let Some(p) = r.src.first() {
                        k.src = p.addr();
                    }
                    if let Some(p) = r.dst.first() {
                        k.dst = p.addr();
                    }
                    k.proto = r.protocol.unwrap_or(k.proto);
                    if let Some(p) = r.dst_ports.first() {
                        k.dport = p.lo;
                    }
                }
                k
            })
            .collect();
        assert_no_alloc("PolicySet::evaluate", || {
            for k in &keys {
                black_box(ps.evaluate(Some(0), Direction::Ingress, k));
                black_box(ps.evaluate(None, Direction::Egress, k));
            }
        });
        let hits: Vec<u32> = keys
            .iter()
            .filter_map(|k| match ps.evaluate(Some(0), Direction::Ingress, k).source {
                vrouter_core::acl::HitSource::Policy { rule, .. } => Some(rule),
                _ => None,
            })
            .collect();
        let mean = hits.iter().map(|&r| r as f64).sum::<f64>() / hits.len().max(1) as f64;
        eprintln!(
            "acl/evaluate/{n}: compile {:.1} ms, memory {} KiB, {}/{NKEYS} keys match a rule \
             (mean first-match index {mean:.0}), the rest hit default deny",
            compile.as_secs_f64() * 1e3,
            ps.memory_bytes() / 1024,
            hits.len()
        );
        g.bench_with_input(BenchmarkId::from_parameter(n), &keys, |b, keys| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % NKEYS;
                black_box(ps.evaluate(Some(0), Direction::Ingress, black_box(&keys[i])))
            })
        });
        // The baseline the classifier replaces: an ordered scan with the reference matcher.
        g.bench_with_input(BenchmarkId::new("naive-scan", n), &keys, |b, keys| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % NKEYS;
                black_box(rules.iter().position(|r| r.matches(black_box(&keys[i]))))
            })
        });
    }
    g.finish();
}

fn bench_conntrack(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(42);
    let n = 100_000;
    let mut ct = ConnTrack::with_capacity(n, CtTimeouts::default());
    let mut flows = Vec::with_capacity(n);
    while flows.len() < n {
        let k = FlowKey { proto: PROTO_UDP, ..random_key(&mut rng) };
        if ct.insert(&k, 0, 0, 1).is_ok() {
            flows.push(k);
        }
    }
    eprintln!("conntrack: {} entries, {} KiB", ct.len(), ct.memory_bytes() / 1024);
    // Look up in both directions, in random order.
    let keys: Vec<FlowKey> = (0..NKEYS)
        .map(|_| {
            let k = flows[rng.random_range(0..n)];
            if rng.random_bool(0.5) {
                FlowKey { src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, ..k }
            } else {
                k
            }
        })
        .collect();
    assert_no_alloc("ConnTrack lookup/insert/remove/expire", || {
        for (i, k) in keys.iter().enumerate() {
            black_box(ct.lookup(k, 0, 500, 1));
            let fresh = FlowKey { src: 0xc0a8_0000 | i as u32, ..*k };
            let _ = black_box(ct.insert(&fresh, 0, 500, 1));
            black_box(ct.remove(&fresh));
        }
        black_box(ct.expire(u64::MAX, 1 << 20));
    });
    // That expire emptied the table; fill it again for the timed lookups.
    for k in &flows {
        ct.insert(k, 0, 0, 1).unwrap();
    }
    c.bench_function("acl/conntrack-hit-100k", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % NKEYS;
            black_box(ct.lookup(black_box(&keys[i]), 0, 1_000, 1))
        })
    });
}

/// A new connection into a full table (issue 9 item 8): of flows nobody answered, it takes an
/// early-dropped entry's place; of answered ones, it is refused after the same bounded search.
fn bench_conntrack_full(c: &mut Criterion) {
    let mut rng = SmallRng::seed_from_u64(43);
    let n = 100_000;
    for (name, answered) in
        [("acl/conntrack-insert-full-unreplied-100k", false), ("acl/conntrack-insert-full-answered-100k", true)]
    {
        let mut ct = ConnTrack::with_capacity(n, CtTimeouts::default());
        while ct.len() < n {
            let k = FlowKey { proto: PROTO_UDP, ..random_key(&mut rng) };
            if ct.insert(&k, 0, 0, 1).is_ok() && answered {
                ct.lookup(&FlowKey { src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, ..k }, 0, 0, 1);
            }
        }
        let fresh: Vec<FlowKey> = (0..NKEYS).map(|_| FlowKey { proto: PROTO_UDP, ..random_key(&mut rng) }).collect();
        assert_no_alloc("ConnTrack insert into a full table", || {
            for k in &fresh[..1000] {
                let _ = black_box(ct.insert_for(k, Some(1), 0, 10, 1));
            }
        });
        let mut i = 0u32;
        c.bench_function(name, |b| {
            b.iter(|| {
                i = i.wrapping_add(1);
                // A key never seen before (the source port makes it unique for 65,536 rounds).
                let k = FlowKey { sport: i as u16, ..fresh[i as usize % NKEYS] };
                black_box(ct.insert(black_box(&k), 0, 10, 1)).ok()
            })
        });
        assert_eq!(ct.len(), n);
    }
}

criterion_group!(benches, bench_evaluate, bench_conntrack, bench_conntrack_full);
criterion_main!(benches);

//! One writer churns routes while readers look up continuously; every answer must be a route
//! that could have been the longest match at some moment.
//!
//! Checkability: next hop `2i+1` and `2i+2` both mean "route `i` of `POOL`", so a reader can map
//! any answer back to a prefix and check that it covers the address. Permanent routes (the
//! default route among them) are never removed or changed, so every address has a known lower
//! bound on the length of its answer and `NH_NONE` is never valid. Toggled routes come and go
//! (insert, remove, next-hop replace), including short ones that span many /18 blocks, and the
//! writer periodically swaps in a whole new structure (`compact`), so readers cross both kinds
//! of publication.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId, NH_NONE};

struct Pool {
    routes: Vec<Ipv4Prefix>,
    permanent: usize, // routes[..permanent] never change
}

fn pool() -> Pool {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut routes: Vec<Ipv4Prefix> =
        ["0.0.0.0/0", "10.0.0.0/8", "10.2.0.0/16", "10.0.5.0/24", "10.1.1.1/32", "10.3.255.0/25"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
    let permanent = routes.len();
    // Toggled routes nested inside 10.0.0.0/14 (16 blocks), every length 9..=32.
    while routes.len() < 400 {
        let len = rng.random_range(9..=32u8);
        let addr = 0x0a00_0000 | rng.random_range(0..1u32 << 18);
        let p = Ipv4Prefix::new_masked(addr, len);
        if !routes.contains(&p) {
            routes.push(p);
        }
    }
    Pool { routes, permanent }
}

fn nh_of(i: usize, variant: usize) -> NhId {
    (2 * i + 1 + variant) as NhId
}

fn route_of(nh: NhId) -> usize {
    (nh as usize - 1) / 2
}

#[test]
fn readers_see_only_valid_next_hops_during_churn() {
    let pool = Arc::new(pool());
    let (mut w, fib) = FibWriter::new();
    for i in 0..pool.permanent {
        w.insert(pool.routes[i], nh_of(i, 0));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|r| {
            let (fib, pool, stop) = (fib.clone(), pool.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rng = SmallRng::seed_from_u64(100 + r);
                let mut addrs = [0u32; 64];
                let mut out = [0 as NhId; 64];
                let mut checked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for a in addrs.iter_mut() {
                        // Inside, at the edges of, or just outside a pool route.
                        let p = pool.routes[rng.random_range(0..pool.routes.len())];
                        let last = p.addr() | !p.mask();
                        *a = match rng.random_range(0..4) {
                            0 => p.addr(),
                            1 => last,
                            2 => last.wrapping_add(1),
                            _ => p.addr() | (rng.random::<u32>() & !p.mask()),
                        };
                    }
                    let g = fib.pin();
                    g.lookup_batch(&addrs, &mut out);
                    let single: Vec<NhId> = addrs.iter().map(|&a| g.lookup(a)).collect();
                    drop(g);
                    for (k, &a) in addrs.iter().enumerate() {
                        for nh in [out[k], single[k]] {
                            assert_ne!(nh, NH_NONE, "no route for {a:#x} although the default route is permanent");
                            let i = route_of(nh);
                            assert!(i < pool.routes.len(), "next hop {nh} was never installed");
                            let p = pool.routes[i];
                            assert!(p.contains(a), "{p} (nh {nh}) returned for {a:#x} which it does not cover");
                            let floor = pool.routes[..pool.permanent]
                                .iter()
                                .filter(|q| q.contains(a))
                                .map(|q| q.len())
                                .max()
                                .unwrap();
                            assert!(
                                p.len() >= floor,
                                "{p} returned for {a:#x} although a permanent /{floor} covers it"
                            );
                        }
                        checked += 1;
                    }
                }
                checked
            })
        })
        .collect();

    let mut rng = SmallRng::seed_from_u64(7);
    let t = Instant::now();
    let mut ops = 0u64;
    while t.elapsed() < Duration::from_millis(1500) {
        let i = rng.random_range(pool.permanent..pool.routes.len());
        let p = pool.routes[i];
        match (w.get(p), rng.random_range(0..3)) {
            (Some(_), 0) => assert!(w.remove(p).is_some()),
            (Some(nh), _) => assert_eq!(w.insert(p, nh_of(i, ((nh as usize - 1) % 2) ^ 1)), Some(nh)),
            (None, _) => assert_eq!(w.insert(p, nh_of(i, rng.random_range(0..2))), None),
        }
        ops += 1;
        if ops.is_multiple_of(1500) {
            w.compact();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let checked: Vec<u64> = readers.into_iter().map(|h| h.join().expect("reader failed")).collect();
    assert!(ops > 1000, "writer made only {ops} changes");
    assert!(checked.iter().all(|&c| c > 1000), "readers checked too little: {checked:?}");

    // Quiescent: exact agreement with a naive LPM over the final RIB.
    let routes = w.routes();
    let g = fib.pin();
    let mut rng = SmallRng::seed_from_u64(3);
    for _ in 0..20_000 {
        let a = 0x0a00_0000 | rng.random_range(0..1u32 << 18);
        let best = routes.iter().filter(|(p, _)| p.contains(a)).max_by_key(|(p, _)| p.len()).unwrap().1;
        assert_eq!(g.lookup(a), best, "{a:#x}");
    }
    eprintln!("stress: {ops} route changes, readers checked {checked:?} lookups");
}

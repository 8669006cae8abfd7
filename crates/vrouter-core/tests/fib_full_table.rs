//! The FIB loaded with the real full table (or, when the file is absent, a synthetic one of
//! 100k prefixes) agrees with the `prefix-trie` crate on random keys and on the edges of every
//! 97th prefix; then after churning 5% of the routes with insert/remove.

use prefix_trie::PrefixMap;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vrouter_core::fib::table::{default_table_path, load_table_file, synthetic_table};
use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId, NH_NONE};

fn reference_lpm(m: &PrefixMap<(u32, u8), NhId>, a: u32) -> NhId {
    m.get_lpm(&(a, 32)).map_or(NH_NONE, |(_, &nh)| nh)
}

#[test]
fn full_table_agrees_with_prefix_trie() {
    let table = match default_table_path() {
        Some(p) => load_table_file(&p).unwrap(),
        None => {
            // CI has ../shared beside the clone: there, the real table is required.
            assert!(std::env::var_os("CI").is_none(), "../shared/data/ipv4-full-table.txt.gz not found under CI");
            eprintln!("full table not found (../shared/data/ipv4-full-table.txt.gz): using a synthetic 100k table");
            synthetic_table(100_000, 5)
        }
    };
    let mut rng = SmallRng::seed_from_u64(9);
    let routes: Vec<(Ipv4Prefix, NhId)> = table.iter().map(|&p| (p, rng.random_range(1..=4000))).collect();
    let (mut w, fib) = FibWriter::new();
    w.load(routes.iter().copied());
    assert_eq!(w.len(), routes.len());
    assert_eq!(fib.prefixes(), routes.len());
    let mut m = PrefixMap::<(u32, u8), NhId>::new();
    for &(p, nh) in &routes {
        m.insert((p.addr(), p.len()), nh);
    }

    let mut keys: Vec<u32> = (0..100_000).map(|_| rng.random()).collect();
    for &(p, _) in routes.iter().step_by(97) {
        let last = p.addr() | !p.mask();
        keys.extend([p.addr(), last, last.wrapping_add(1), p.addr().wrapping_sub(1)]);
    }
    let check = |w: &FibWriter, m: &PrefixMap<(u32, u8), NhId>| {
        let _ = w;
        let g = fib.pin();
        let mut out = vec![0; keys.len()];
        g.lookup_batch(&keys, &mut out);
        for (&a, &b) in keys.iter().zip(&out) {
            assert_eq!(b, reference_lpm(m, a), "lookup_batch {}", std::net::Ipv4Addr::from(a));
        }
        for &a in keys.iter().step_by(3) {
            assert_eq!(g.lookup(a), reference_lpm(m, a));
        }
    };
    check(&w, &m);

    // Churn 5%: remove some, re-insert half of those with a new next hop.
    for (k, &(p, _)) in routes.iter().enumerate().filter(|(k, _)| k % 20 == 3) {
        assert!(w.remove(p).is_some());
        m.remove(&(p.addr(), p.len()));
        if k % 40 == 3 {
            w.insert(p, 4001);
            m.insert((p.addr(), p.len()), 4001);
        }
    }
    check(&w, &m);
    let bpp = w.memory_bytes() as f64 / w.len() as f64;
    eprintln!("after churn: {} routes, {:.2} bytes/prefix ({} bytes on free lists)", w.len(), bpp, w.free_bytes());
}

//! Prints the `FibBenchReport` JSON. Ignored by default (it takes ~20 s and wants a release
//! build): `cargo test --release --test fib_bench_report -- --ignored --nocapture`.
//! `FIB_BENCH_SECONDS` sets the seconds per phase (default 3).

use vrouter_core::fib::bench::run_fib_bench;
use vrouter_core::fib::table::default_table_path;

#[test]
#[ignore = "benchmark; run explicitly in release"]
fn fib_bench_report() {
    let secs = std::env::var("FIB_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let path = default_table_path();
    if path.is_none() {
        eprintln!("full table not found; using a synthetic table");
    }
    let r = run_fib_bench(path.as_deref(), secs).expect("bench failed");
    println!("{}", serde_json::to_string_pretty(&r).unwrap());
}

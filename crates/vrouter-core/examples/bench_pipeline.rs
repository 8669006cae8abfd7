//! `vrouter bench pipeline` without building the daemon (which links libbpf): its one-worker
//! benchmark ([`vrouter_core::dataplane::bench::run_pipeline_bench`]: forward, encap + 1,000-rule
//! policy + conntrack, decap) and the same JSON fields, without the two-worker handoff figures
//! (`encap_acl_workers`), which need the daemon's worker.
//!
//!     cargo build --release -p vrouter-core --example bench_pipeline
//!     target/release/examples/bench_pipeline [bench pipeline] [--seconds S] [--table FILE]
//!
//! The leading `bench pipeline` is accepted and ignored, so `scripts/ab-bench.py` can run two
//! of these side by side as it runs two `vrouter` binaries.

use std::path::PathBuf;

fn main() {
    let (mut seconds, mut table) = (1.0f64, None::<PathBuf>);
    let mut args = std::env::args().skip(1).skip_while(|a| a == "bench" || a == "pipeline");
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--seconds", Some(v)) => match v.parse() {
                Ok(s) if s > 0.0 => seconds = s,
                _ => fail(&format!("--seconds {v}: want a positive number of seconds")),
            },
            ("--table", Some(v)) => table = Some(v.into()),
            _ => fail(&format!("unexpected argument {a:?}")),
        }
    }
    match vrouter_core::dataplane::bench::run_pipeline_bench(table.as_deref(), seconds) {
        Ok(r) => println!("{}", serde_json::to_string_pretty(&r).expect("the report serialises")),
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("bench_pipeline: {msg}\nusage: bench_pipeline [bench pipeline] [--seconds S] [--table FILE]");
    std::process::exit(2)
}

//! How long a reader's batch of lookups takes while the writer replaces the whole table, as a
//! bulk load, an arena growing or `shrink_to_fit` do (figures in BENCHMARKS.md).
//!
//! A reader thread (a worker) pins, looks up 64 random addresses and unpins, as fast as it can,
//! and records how long each batch took; meanwhile the writer compacts the table every 300 ms.
//! The replaced tables are freed by whoever runs the epoch's deferred work; a full table's
//! arenas freed inside a reader's batch show as that batch's time.
//!
//! `cargo run --release -p vrouter-core --example fib_stall -- [TABLE] [COMPACTIONS]`
//! (default: `../shared/data/ipv4-full-table.txt.gz`, 10; 0 measures the reader alone).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vrouter_core::fib::table::load_table_file;
use vrouter_core::fib::{FibWriter, NhId};

/// Batch times above these count as slow.
const LIMITS_US: [u64; 4] = [100, 500, 1_000, 5_000];

fn main() {
    let mut args = std::env::args().skip(1);
    let table = args.next().unwrap_or_else(|| "../shared/data/ipv4-full-table.txt.gz".into());
    let compactions: u32 = match args.next().map(|s| s.parse()) {
        None => 10,
        Some(Ok(n)) => n,
        Some(Err(e)) => exit(&format!("COMPACTIONS must be a count: {e}")),
    };
    let prefixes = load_table_file(Path::new(&table)).unwrap_or_else(|e| exit(&e.to_string()));
    let (mut w, fib) = FibWriter::new();
    w.load(prefixes.iter().enumerate().map(|(i, p)| (*p, (i % 4 + 1) as NhId)));

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (fib, stop) = (fib.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut x = 0x1234_5678u32;
            let (mut keys, mut out) = ([0u32; 64], [0 as NhId; 64]);
            let (mut batches, mut worst, mut slow) = (0u64, Duration::ZERO, [0u64; LIMITS_US.len()]);
            while !stop.load(Ordering::Relaxed) {
                for k in keys.iter_mut() {
                    // xorshift32: uniform keys over the whole address space.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    *k = x;
                }
                let t = Instant::now();
                let g = fib.pin();
                g.lookup_batch(&keys, &mut out);
                drop(g);
                let d = t.elapsed();
                std::hint::black_box(&out);
                batches += 1;
                worst = worst.max(d);
                for (n, us) in slow.iter_mut().zip(LIMITS_US) {
                    *n += u64::from(d > Duration::from_micros(us));
                }
            }
            (batches, worst, slow)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let mut writer = Duration::ZERO;
    for _ in 0..compactions {
        let t = Instant::now();
        w.compact();
        writer += t.elapsed();
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let (batches, worst, slow) = reader.join().expect("reader thread");
    let slow: Vec<String> = LIMITS_US.iter().zip(slow).map(|(us, n)| format!(">{us}us {n}")).collect();
    println!(
        "prefixes {} compactions {compactions} (writer {:.1} ms each); reader batches {batches}, worst {:.0} us, slow: {}",
        prefixes.len(),
        writer.as_secs_f64() * 1e3 / f64::from(compactions.max(1)),
        worst.as_secs_f64() * 1e6,
        slow.join(" ")
    );
}

fn exit(msg: &str) -> ! {
    eprintln!("fib_stall: {msg}");
    std::process::exit(2)
}

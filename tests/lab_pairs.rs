//! The demo's measurements as a test, on a lab of its own: every ordered pod pair pings, every
//! unordered pair moves TCP for 1 s (iperf3), both through vrouter in all three modes (local,
//! BGP, IPIP); IPIP counters move on node 3; every daemon survives the load and still forwards.

mod common;

use std::path::PathBuf;

use vrouter::lab::{self, LabOptions};

#[test]
fn every_pod_pair_pings_and_moves_tcp() {
    if let Some(why) = common::skip_unless_ready(&["ip", "ping", "iperf3", "sysctl"]) {
        eprintln!("SKIP every_pod_pair: {why}");
        return;
    }
    let o = LabOptions { vrouter: Some(PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))), ..LabOptions::default() };
    // Dropped at the end of the test, or while unwinding from a failed assertion: torn down.
    let lab = lab::up(&o).unwrap_or_else(|e| panic!("{e}"));
    let report = lab::measure(&lab).unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    let logs = || (1..=3).map(|n| format!("node{n} log:\n{}\n", lab.log_tail(n, 10))).collect::<String>();
    assert!(report.ok(), "{report}\n{}", logs());
    assert!(lab.counter(3, "ipip_encap") > 0 && lab.counter(3, "ipip_decap") > 0, "{}", lab.stats(3));
    assert!(lab.daemons_alive().iter().all(|(_, alive)| *alive), "{:?}\n{}", lab.daemons_alive(), logs());
    // Still forwarding after the load, in each mode.
    for (a, b) in [("1a", "2b"), ("2a", "3b"), ("3a", "1b")] {
        let out = lab.exec(&lab.pod(a).ns, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &lab.pod_ip(b).to_string()]);
        assert!(
            out.status.success(),
            "{a} -> {b} after the load: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            logs()
        );
    }
}

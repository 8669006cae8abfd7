//! `vrouter bench e2e` end to end (root; a failure otherwise, unless VROUTER_ALLOW_SKIP is set): the JSON carries
//! the documented figures (UDP through the hairpin, TCP pod to pod in the namespace labs, each
//! ratio's spread and the convergence verdict), every figure is finite and non-negative,
//! vrouter forwards frames and TCP on every path, and no namespace of the bench (nor of its
//! labs) is left behind. No pass/fail on speed.

mod common;

use std::process::Command;

fn cannot_run() -> Option<String> {
    if !common::is_root() {
        return Some("not root".into());
    }
    for (t, pkg) in [
        ("ip", "iproute2"),
        ("trafgen", "netsniff-ng"),
        ("iperf3", "iperf3"),
        ("clang", "clang"),
        ("ethtool", "ethtool"),
    ] {
        if !Command::new("sh").args(["-c", &format!("command -v {t} >/dev/null")]).status().is_ok_and(|s| s.success()) {
            return Some(format!("{t} not installed (apt-get install {pkg})"));
        }
    }
    None
}

/// Why this test cannot run here, if it cannot (a failure unless skipping knowingly).
fn skip() -> Option<String> {
    common::unless_allowed_to_skip(cannot_run())
}

/// The benches pin threads to both CPUs and check, by prefix, that they leave no namespace
/// behind: one at a time, or each would see the other's.
static ONE_BENCH: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(vrouter::perf::NS_PREFIX))
        .map(String::from)
        .collect()
}

fn check_numbers(path: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            let x = n.as_f64().expect("a number");
            assert!(x.is_finite() && x >= 0.0, "{path} = {x}: not finite and non-negative");
        }
        serde_json::Value::Array(a) => {
            a.iter().enumerate().for_each(|(i, x)| check_numbers(&format!("{path}[{i}]"), x))
        }
        serde_json::Value::Object(o) => o.iter().for_each(|(k, x)| check_numbers(&format!("{path}.{k}"), x)),
        _ => {}
    }
}

/// A bench run alone (see [`ONE_BENCH`]): `vrouter ARGS`, which must succeed with JSON on
/// stdout. `check` gets the JSON and stderr; then no new bench namespace may be left.
fn bench_alone(args: &[&str], check: impl FnOnce(&serde_json::Value, &str)) {
    if let Some(why) = skip() {
        eprintln!("SKIP perf_e2e: {why}");
        return;
    }
    let _one = ONE_BENCH.lock().unwrap_or_else(|e| e.into_inner());
    let before = bench_namespaces();
    let out = Command::new(env!("CARGO_BIN_EXE_vrouter")).args(args).output().expect("run vrouter");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stderr}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stderr}"));
    check_numbers("", &v);
    check(&v, &stderr);
    let left: Vec<String> = bench_namespaces().into_iter().filter(|n| !before.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

#[test]
fn quick_bench_reports_every_figure_and_cleans_up() {
    bench_alone(&["bench", "e2e", "--quick", "--reps", "1", "--max-reps", "1", "--json"], quick_bench_figures);
}

fn quick_bench_figures(v: &serde_json::Value, stderr: &str) {
    for size in [64, 512, 1500] {
        for key in [
            "kernel_mpps",
            "vrouter_mpps",
            "ipip_mpps",
            "ratio",
            "ratio_ipip",
            "kernel_gbps",
            "vrouter_gbps",
            "vrouter_loss",
            "kernel_fwd_cpu",
            "vrouter_proc_cpu",
            "kernel_mpps_per_core",
            "vrouter_mpps_per_core",
            "ratio_per_core",
        ] {
            let k = format!("{key}_{size}");
            assert!(v[&k].is_number(), "missing {k} in {v}");
        }
    }
    for streams in [1, 8] {
        for path in ["local", "remote", "ipip"] {
            for x in ["", "_nooffload"] {
                let ratio = format!("tcp{streams}_{path}_ratio{x}");
                assert!(v[&ratio].as_f64().is_some_and(f64::is_finite), "missing {ratio} in {v}");
                // One round: a spread, and no second median to agree with.
                assert_eq!(v["ratios"][&ratio]["rounds"], 1, "{ratio}");
                assert_eq!(v["ratios"][&ratio]["converged"], false, "{ratio}");
                for fwd in ["kernel", "vrouter"] {
                    for fig in ["gbps", "cpu_per_gbit"] {
                        let k = format!("{fwd}_tcp{streams}_{path}_{fig}{x}");
                        assert!(v[&k].as_f64().is_some_and(f64::is_finite), "missing {k} in {v}");
                    }
                }
            }
        }
    }
    // The ceiling under the cross-node ratios, at the labs' MTU.
    for k in ["tcp_remote_ceiling", "tcp_ipip_ceiling"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "missing {k} in {v}");
    }
    assert_eq!(v["uplink"]["mtu"], 1500, "{}", v["uplink"]);
    assert!(stderr.contains("AF_XDP here (bench uplink at MTU 1500)"), "the table says what bounds the ratios");
    assert_eq!(v["converged"], false, "one round cannot converge");
    assert_eq!(v["rounds"], 1);
    assert!(v["ratios"]["ratio_64"]["median"].is_number(), "{v}");
    let tcp = v["tcp_runs"].as_array().expect("tcp_runs");
    assert_eq!(tcp.len(), 24, "3 paths x 2 stream counts x 2 offload modes x 2 forwarders");
    let failed: Vec<&serde_json::Value> = tcp.iter().filter(|r| r["ok"] != true).collect();
    assert!(failed.is_empty(), "TCP runs failed: {failed:?}");
    for mode in ["kernel/on", "kernel/off", "vrouter/on", "vrouter/off"] {
        assert!(v["tcp_lab"]["pod_offloads"][mode].is_string(), "{mode}: {}", v["tcp_lab"]);
    }
    assert_eq!(v["tcp_lab"]["pod_offloads"]["kernel/off"], "tx off, tso off, gso off, gro off");
    assert!(v["vrouter_mpps_64"].as_f64().unwrap() > 0.0, "vrouter forwarded nothing: {stderr}");
    let per_core = v["vrouter_mpps_64"].as_f64().unwrap() / v["vrouter_fwd_cpu_64"].as_f64().unwrap();
    assert!((v["vrouter_mpps_per_core_64"].as_f64().unwrap() - per_core).abs() < 1e-9, "{v}");
    assert!(v["ipip_mpps_64"].as_f64().unwrap() > 0.0, "no IPIP frames arrived: {stderr}");
    assert_eq!(v["runs"].as_array().map(|a| a.len()), Some(9), "3 forwarders x 3 sizes");
}

/// `vrouter bench uplink`: AF_XDP moves frames at both MTUs (one buffer per frame, and chains
/// of 4 KiB chunks) with either NAPI placement, the kernel's TCP figure is there, and nothing is
/// left behind. The sender's and the receiver's sockets are in two namespaces of one process,
/// on devices of the same ifindex: a program keyed by ifindex alone took the receiver's queue
/// for the sender's socket and nothing arrived at 9000.
#[test]
fn uplink_bench_moves_frames_at_both_mtus_and_cleans_up() {
    bench_alone(&["bench", "uplink", "--reps", "1", "--seconds", "1", "--json"], |v, stderr| {
        let rows = v.as_array().expect("one row per MTU");
        assert_eq!(rows.iter().map(|r| r["mtu"].as_u64()).collect::<Vec<_>>(), [Some(1500), Some(9000)], "{v}");
        for r in rows {
            assert!(r["kernel_tcp_gbps"]["median"].as_f64().unwrap() > 0.0, "no kernel TCP: {r}");
            let napis: Vec<&str> = r["afxdp"].as_array().unwrap().iter().map(|a| a["napi"].as_str().unwrap()).collect();
            assert_eq!(napis, ["softirq", "threaded"], "{r}");
            for a in r["afxdp"].as_array().unwrap() {
                assert!(a["mpps"]["median"].as_f64().unwrap() > 0.0, "AF_XDP moved nothing: {a}\n{stderr}");
            }
            assert!(r["ceiling_ratio"]["median"].as_f64().unwrap() > 0.0, "{r}");
        }
        assert!(stderr.contains("mtu   path"), "the table goes to stderr with --json: {stderr}");
    });
}

#[test]
fn uplink_bench_refuses_an_mtu_veth_cannot_carry() {
    let out = Command::new(env!("CARGO_BIN_EXE_vrouter"))
        .args(["bench", "uplink", "--mtus", "1500,3600"])
        .output()
        .expect("run vrouter");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    // Judged before anything is built, root or not.
    assert!(err.contains("MTU 3600: veth's native XDP takes"), "{err}");
}

#[test]
fn refuses_clearly_without_root() {
    if common::is_root() {
        // As root, check the option validation instead: it happens before anything is built.
        let out = Command::new(env!("CARGO_BIN_EXE_vrouter"))
            .args(["bench", "e2e", "--duration", "0", "--no-tcp"])
            .output()
            .expect("run vrouter");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--duration") || err.contains("not found"), "{err}");
        return;
    }
    let out =
        Command::new(env!("CARGO_BIN_EXE_vrouter")).args(["bench", "e2e", "--quick"]).output().expect("run vrouter");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
}

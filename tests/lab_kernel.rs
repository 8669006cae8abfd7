//! The lab itself, with Linux forwarding in place of vrouter: namespaces and links come up, every
//! pod reaches every other pod, the demo's table is right, and nothing is left behind by `down`,
//! by a drop, or by a failure midway through `up`.

mod common;

use std::process::Command;

use vrouter::lab::{self, Backend, LabOptions};

/// Why this test cannot run here, if it cannot (a failure unless skipping knowingly).
fn skip() -> Option<String> {
    common::skip_unless_ready(&["ip", "ping", "iperf3", "sysctl"])
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .map(String::from)
        .collect()
}

fn opts() -> LabOptions {
    LabOptions {
        backend: Backend::Kernel,
        root: std::env::temp_dir().join("vrouter-lab-test"),
        ..LabOptions::default()
    }
}

#[test]
fn kernel_lab_demo_reaches_every_pair_and_cleans_up() {
    if let Some(why) = skip() {
        eprintln!("SKIP kernel_lab_demo: {why}");
        return;
    }
    let report = lab::demo(&opts()).unwrap_or_else(|e| panic!("{e}"));
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert_eq!(report.pings.len(), 30);
    assert_eq!(report.tcp.len(), 15);
    assert!(namespaces_of(&report.prefix).is_empty(), "namespaces left: {:?}", namespaces_of(&report.prefix));
}

#[test]
fn kernel_lab_topology_and_keep_then_down() {
    if let Some(why) = skip() {
        eprintln!("SKIP kernel_lab_topology: {why}");
        return;
    }
    let mut o = opts();
    o.prefix = Some(format!("vrk{:04x}", std::process::id() & 0xffff));
    let mut h = lab::up(&o).unwrap_or_else(|e| panic!("{e}"));
    let prefix = h.prefix().to_string();
    assert_eq!(namespaces_of(&prefix).len(), 10);
    // Names, addresses and the pods' Calico-style routes.
    let out = h.exec(&h.pod("1a").ns, &["ip", "-4", "route"]);
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    let out = h.exec(&h.pod("3b").ns, &["ip", "link", "show", "eth0"]);
    let link = String::from_utf8_lossy(&out.stdout);
    assert!(link.contains("mtu 1480") && link.contains("0a:58:0a:f4:03:03"), "{link}");
    let out = h.exec(&h.router_ns(), &["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.disable_ipv6"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["1", "1"]);
    // The underlay switch does not hand bridged frames to iptables where br_netfilter is there.
    if std::path::Path::new("/proc/sys/net/bridge").exists() {
        let keys = ["iptables", "ip6tables", "arptables"].map(|k| format!("net.bridge.bridge-nf-call-{k}"));
        let mut args = vec!["sysctl", "-n"];
        args.extend(keys.iter().map(String::as_str));
        let out = h.exec(&h.router_ns(), &args);
        assert_eq!(String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>(), ["0", "0", "0"]);
    }
    // A second lab with the same prefix is refused, and leaves the first alone.
    let err = lab::up(&o).err().expect("duplicate prefix refused");
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(namespaces_of(&prefix).len(), 10);
    // status and down find the kept lab by prefix under its root.
    h.keep();
    drop(h);
    assert_eq!(namespaces_of(&prefix).len(), 10, "keep() must leave the lab running");
    let st = lab::status_in(&o.root, Some(&prefix)).unwrap();
    assert!(st.contains("namespaces: 10/10 present"), "{st}");
    lab::down_in(&o.root, Some(&prefix)).unwrap();
    assert!(namespaces_of(&prefix).is_empty());
    assert!(lab::status_in(&o.root, Some(&prefix)).unwrap().contains("0/10 present"));
}

#[test]
fn failed_up_leaves_nothing_behind() {
    if let Some(why) = skip() {
        eprintln!("SKIP failed_up: {why}");
        return;
    }
    // A "vrouter" that exits at once: up fails waiting for it and must tear down.
    let mut o = opts();
    o.backend = Backend::Vrouter;
    o.vrouter = Some("/bin/false".into());
    o.prefix = Some(format!("vrf{:04x}", std::process::id() & 0xffff));
    let err = lab::up(&o).err().expect("up with a dead daemon fails");
    let msg = err.to_string();
    assert!(msg.contains("node1 not ready") && msg.contains("exited"), "{msg}");
    assert!(namespaces_of(o.prefix.as_deref().unwrap()).is_empty());
}

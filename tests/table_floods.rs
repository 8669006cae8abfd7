//! Bounded tables under a flood from one pod, in network namespaces (root only; issue 9 items
//! 7 and 8): after one pod has asked for more neighbours, or opened more connections, than the
//! node's tables hold, another pod's new connection (and the flooding pod's own, through a
//! route) must still be set up within a second. Each test has its own namespaces and daemon
//! (`common::Topo`).

mod common;

use std::time::Duration;

use common::{is_root, text, wait_until, Topo, DEFAULT_ROUTE};

fn require_root() {
    assert!(is_root(), "these tests need root (network namespaces, TAP, AF_XDP): run them as root");
}

/// Sends one UDP datagram to each of `count` consecutive addresses from `first` (port 9), or
/// to `count` ports of `first` when `ports` (one socket, so one flow per destination).
fn flood_script(first: &str, count: u32, ports: bool) -> String {
    format!(
        r#"
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
base = int.from_bytes(socket.inet_aton("{first}"), "big")
for i in range({count}):
    if i % 128 == 127:
        time.sleep(0.002)  # no loss in the pod's TAP queue: every datagram reaches vrouter
    if {ports}:
        dst = ("{first}", 1 + i)
    else:
        dst = (socket.inet_ntoa((base + i).to_bytes(4, "big")), 9)
    try:
        s.sendto(b"x", dst)
    except OSError:
        pass
"#,
        ports = if ports { "True" } else { "False" }
    )
}

/// Opens one TCP connection to `addr`:8080 with a one-second budget (the first SYN must get
/// through: the kernel retransmits only after a second); prints the time it took.
const CONNECT: &str = r#"
import socket, sys, time
t = time.monotonic()
c = socket.create_connection((sys.argv[1], 8080), timeout=1.0)
c.close()
print(f"{time.monotonic() - t:.3f}")
"#;

/// Accepts and closes connections on port 8080 forever.
const SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080))
s.listen(64)
while True:
    s.accept()[0].close()
"#;

/// The peer router listens on 8080 on 192.168.1.1 (on the node's subnet) and 10.99.0.1 (behind
/// the node's default route).
fn serve_on_peer(t: &Topo) -> common::Proc {
    t.exec_ok("peer", &["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"]);
    // A veth peer with TX checksum offload hands AF_XDP partial checksums (TCP would die).
    t.exec_ok("peer", &["ethtool", "-K", "gw0", "tx", "off"]);
    let server = t.spawn("peer", &["python3", "-c", SERVER]);
    wait_until("the peer's server to listen", Duration::from_secs(5), || {
        text(&t.exec("peer", &["ss", "-Hltn", "sport = :8080"])).contains("8080")
    });
    server
}

fn connect_within_a_second(t: &Topo, from: &str, to: &str) {
    let o = t.exec(from, &["python3", "-c", CONNECT, to]);
    assert!(
        o.status.success(),
        "{from} -> {to}:8080 not connected within 1 s: {}\ndrops: {}\nneighbours: {}",
        text(&o),
        text(&t.ctl(&["drops"])),
        text(&t.ctl(&["neighbours"]))
    );
}

fn drop_count(t: &Topo, reason: &str) -> u64 {
    t.ctl_json(&["counters"])["total"]["drops"][reason].as_u64().unwrap_or(0)
}

/// Waits until at least `least` drops for `reason` are counted and the count has stopped
/// moving (a loaded machine may lose a few of the flood's datagrams before vrouter sees them).
fn wait_for_flood(t: &Topo, reason: &str, least: u64) -> u64 {
    wait_until(&format!("{least} drops as {reason}"), Duration::from_secs(10), || drop_count(t, reason) >= least);
    let mut last = 0;
    wait_until("the flood to end", Duration::from_secs(10), || {
        std::thread::sleep(Duration::from_millis(300));
        let n = drop_count(t, reason);
        std::mem::replace(&mut last, n) == n
    });
    last
}

/// Item 7: with a /20 node subnet, one pod sends to 1,100 unused addresses of it (more than
/// the 1,024 entries of the neighbour table). Before the fix the table filled with Incomplete
/// entries for good and no new neighbour resolved; now the pod holds at most its 64 unresolved
/// entries, they age (Failed without any further lookup), and a new neighbour resolves at once
/// for another pod, and for the flooding pod through a route. `neighbours flush` forgets
/// learnt entries, which resolve again on next use.
#[test]
fn neighbour_flood_from_one_pod_leaves_new_neighbours_working() {
    require_root();
    let t = Topo::routed("nflood", &["pod", "b"]);
    let cfg = t.config(DEFAULT_ROUTE).replace("subnet = \"192.168.1.0/24\"", "subnet = \"192.168.0.0/20\"");
    t.write_config(&cfg);
    let _server = serve_on_peer(&t);
    let daemon = t.start();

    t.exec_ok("pod", &["python3", "-c", &flood_script("192.168.2.0", 1100, false)]);
    // 64 entries created, the rest refused (the 64 are checked below).
    assert!(wait_for_flood(&t, "neigh/source-limit", 900) <= 1100 - 64);
    assert_eq!(drop_count(&t, "neigh/table-full"), 0);

    // Another pod, an on-link neighbour not cached yet.
    connect_within_a_second(&t, "b", "192.168.1.1");
    // The flooding pod itself, through the default route (a route's next hop is not charged
    // to the pod), after the gateway's entry was flushed.
    let o = t.ctl(&["neighbours", "flush", "192.168.1.1"]);
    assert!(o.status.success() && text(&o).contains("flushed: 1"), "{}", text(&o));
    connect_within_a_second(&t, "pod", "10.99.0.1");

    // Ageing runs from the workers' timers: the flood's entries fail with no lookup at all.
    wait_until("the flood's entries to fail", Duration::from_secs(6), || {
        let v = t.ctl_json(&["neighbours"]);
        let n = v["neighbours"].as_array().unwrap();
        let flood = n.iter().filter(|e| e["ip"].as_str().unwrap().starts_with("192.168.2."));
        let states: Vec<&str> = flood.map(|e| e["state"].as_str().unwrap()).collect();
        states.len() == 64 && states.iter().all(|s| *s == "failed")
    });

    let o = t.ctl(&["--json", "neighbours", "flush"]);
    assert!(o.status.success(), "{}", text(&o));
    let flushed = serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["flushed"].as_u64().unwrap();
    assert!(flushed >= 65, "the flood's 64 and the gateway: {flushed}");
    assert!(!t.ctl_json(&["neighbours"])["neighbours"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["ip"].as_str().unwrap().starts_with("192.168.2.")));
    connect_within_a_second(&t, "b", "10.99.0.1");
    t.stop(daemon);
}

/// Item 8: with a policy in force (so connections are tracked) and a 4,096-entry table, one
/// pod opens 10,000 UDP flows. Before the fix the table filled and every new connection was
/// refused until the flows timed out; now the pod holds at most its share (half), the rest is
/// refused as `policy/conntrack-endpoint-share`, and another pod connects within a second.
#[test]
fn conntrack_flood_from_one_pod_leaves_new_connections_working() {
    require_root();
    let t = Topo::routed("ctflood", &["pod", "b"]);
    let extra = format!("{DEFAULT_ROUTE}[[global_rules]]\naction = \"allow\"\n[conntrack]\ncapacity = 4096\n");
    t.write_config(&t.config(&extra));
    let _server = serve_on_peer(&t);
    let daemon = t.start();

    t.exec_ok("pod", &["python3", "-c", &flood_script("10.99.0.1", 10_000, true)]);
    assert!(wait_for_flood(&t, "policy/conntrack-endpoint-share", 7_000) <= 10_000 - 2048);
    assert_eq!(drop_count(&t, "policy/conntrack-full"), 0);
    assert_eq!(t.ctl_json(&["status"])["connections"], 2048, "the pod holds exactly its share");
    connect_within_a_second(&t, "b", "10.99.0.1");
    connect_within_a_second(&t, "b", "192.168.1.1");
    t.stop(daemon);
}

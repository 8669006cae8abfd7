//! The namespace lab with three vrouter daemons, light traffic only (the all-pairs TCP load has
//! its own lab in `lab_pairs.rs`, so that a daemon wedged by load cannot fail these): IPIP on the
//! wire between the subnets and none within subnet A (checked with tcpdump, an independent
//! decoder); PMTU ("Frag needed", mtu 1480); policy deny with allowed traffic passing; and the
//! drop counters for unknown IPIP peers, spoofed pod sources and malformed frames.
//!
//! One lab serves every test of this binary; tests take turns (captures and counter deltas must
//! not see each other's traffic). The lab is torn down at exit, including after a failed test,
//! by the lab module's exit hook; Ctrl-C tears it down too.

mod common;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use vrouter::control::config::Config;
use vrouter::lab::{self, LabHandle, LabOptions};

static LAB: OnceLock<Result<LabHandle, String>> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// Why this test cannot run here, if it cannot (a failure unless skipping knowingly).
fn skip() -> Option<String> {
    common::skip_unless_ready(&["ip", "ping", "iperf3", "tcpdump", "python3", "sysctl", "ss"])
}

/// The shared lab, and the turn to use it; `None` when the test must be skipped.
fn lab(test: &str) -> Option<(MutexGuard<'static, ()>, &'static LabHandle)> {
    if let Some(why) = skip() {
        eprintln!("SKIP {test}: {why}");
        return None;
    }
    let turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = LAB.get_or_init(|| {
        let o = LabOptions { vrouter: Some(PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))), ..LabOptions::default() };
        lab::up(&o).map_err(|e| e.to_string())
    });
    match lab {
        Ok(h) => Some((turn, h)),
        Err(e) => panic!("lab up failed: {e}"),
    }
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn ping(lab: &LabHandle, from: &str, to: &str) -> std::process::Output {
    lab.exec(&lab.pod(from).ns, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &lab.pod_ip(to).to_string()])
}

/// A background process of a test (a server, a listener, a capture): killed and reaped when
/// dropped, so a test that panics half-way leaves nothing running in the shared lab.
struct Bg(std::process::Child);

impl Bg {
    fn new(child: std::process::Child) -> Bg {
        Bg(child)
    }

    /// Waits up to `timeout` for it to exit by itself; whether it did.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if self.0.try_wait().ok().flatten().is_some() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to 5 s) until something in `ns` listens on `port` (`udp`: a bound UDP socket,
/// else TCP), instead of guessing how long a server takes to start; panics if nothing does.
fn wait_listening(lab: &LabHandle, ns: &str, udp: bool, port: u16) {
    assert!(
        lab.wait_listening(ns, udp, port, Duration::from_secs(5)),
        "nothing listens on {} port {port} in {ns} after 5 s",
        if udp { "UDP" } else { "TCP" }
    );
}

/// Waits until a counter of `node` reaches `min` (stats are rewritten about every 200 ms).
fn wait_counter(lab: &LabHandle, node: u8, section: &str, name: &str, min: u64) -> u64 {
    lab.wait_stats(node, Duration::from_secs(3), |v| v[section][name].as_u64().unwrap_or(0) >= min);
    lab.stats(node)[section][name].as_u64().unwrap_or(0)
}

/// Runs tcpdump in `ns` on `dev` for up to `count` packets while `during` runs; returns its
/// decoded lines.
fn capture(lab: &LabHandle, ns: &str, dev: &str, filter: &str, count: u32, during: impl FnOnce()) -> Vec<String> {
    let log = lab.dir().join(format!("tcpdump-{dev}-{}.txt", std::process::id()));
    let n = count.to_string();
    let mut child = Bg::new(
        lab.spawn(ns, &["tcpdump", "-i", dev, "-n", "-l", "-c", &n, filter], Some(&log)).expect("tcpdump starts"),
    );
    let ready = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("listening on") && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(50));
    }
    during();
    child.wait_exit(Duration::from_secs(3));
    drop(child);
    std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.contains(" IP ")).map(String::from).collect()
}

#[test]
fn crosssubnet_traffic_is_ipip_between_node_ips_on_the_wire() {
    let Some((_turn, lab)) = lab("ipip_on_wire") else { return };
    let rt = lab.router_ns();
    let (encap3, decap3) = (lab.counter(3, "ipip_encap"), lab.counter(3, "ipip_decap"));
    let lines = capture(lab, &rt, "n3", "ip proto 4", 8, || {
        assert!(ping(lab, "1a", "3a").status.success());
        assert!(ping(lab, "2b", "3b").status.success());
    });
    // tcpdump decodes protocol 4: "IP 192.168.1.10 > 192.168.2.20: IP 10.244.1.2 > 10.244.3.2: ICMP echo request ..."
    assert!(lines.len() >= 8, "expected 8 IPIP packets on n3, got {lines:#?}");
    let allowed = [
        ("192.168.1.10", "192.168.2.20"),
        ("192.168.2.20", "192.168.1.10"),
        ("192.168.1.11", "192.168.2.20"),
        ("192.168.2.20", "192.168.1.11"),
    ];
    for l in &lines {
        let outer: Vec<&str> = l
            .split("IP ")
            .nth(1)
            .unwrap_or("")
            .split([' ', ':'])
            .filter(|s| !s.is_empty() && *s != ">")
            .take(2)
            .collect();
        assert!(outer.len() == 2 && allowed.contains(&(outer[0], outer[1])), "unexpected outer addresses in {l}");
        assert!(l.matches("IP ").count() >= 2 && l.contains("ICMP echo"), "not decoded as IP-in-IP ICMP: {l}");
    }
    for (a, b) in [
        ("10.244.1.2", "10.244.3.2"),
        ("10.244.3.2", "10.244.1.2"),
        ("10.244.2.3", "10.244.3.3"),
        ("10.244.3.3", "10.244.2.3"),
    ] {
        assert!(lines.iter().any(|l| l.contains(&format!("IP {a} > {b}: ICMP"))), "no inner {a} > {b} in {lines:#?}");
    }
    // Node 3 decapsulated the 4 requests and encapsulated the 4 replies.
    assert!(wait_counter(lab, 3, "counters", "ipip_decap", decap3 + 4) >= decap3 + 4, "{}", lab.stats(3));
    assert!(wait_counter(lab, 3, "counters", "ipip_encap", encap3 + 4) >= encap3 + 4, "{}", lab.stats(3));
}

#[test]
fn same_subnet_traffic_is_routed_plain() {
    let Some((_turn, lab)) = lab("bgp_plain") else { return };
    let rt = lab.router_ns();
    let lines = capture(lab, &rt, "n1", "icmp or ip proto 4", 4, || {
        assert!(ping(lab, "1a", "2a").status.success());
    });
    assert!(lines.len() >= 4, "expected 4 ICMP packets on n1, got {lines:#?}");
    assert!(lines.iter().all(|l| !l.contains("192.168.1.")), "encapsulated within subnet A: {lines:#?}");
    assert!(lines.iter().any(|l| l.contains("IP 10.244.1.2 > 10.244.2.2: ICMP echo request")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.contains("IP 10.244.2.2 > 10.244.1.2: ICMP echo reply")), "{lines:#?}");
}

#[test]
fn df_packet_too_big_for_the_tunnel_gets_frag_needed_1480() {
    let Some((_turn, lab)) = lab("frag_needed") else { return };
    let ns = &lab.pod("1b").ns;
    let before = lab.drops(1, "mtu/fragmentation-needed");
    let icmp_before = lab.counter(1, "icmp_errors_sent");
    let set = lab.exec(ns, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    assert!(set.status.success(), "{}", text(&set));
    let out = lab.exec(ns, &["ping", "-M", "do", "-s", "1472", "-c", "2", "-i", "0.3", "-W", "1", "10.244.3.2"]);
    lab.exec(ns, &["ip", "link", "set", "eth0", "mtu", "1480"]);
    lab.exec(ns, &["ip", "route", "flush", "cache"]);
    let t = text(&out);
    assert!(t.contains("Frag needed") && t.contains("mtu = 1480"), "{t}");
    assert!(wait_counter(lab, 1, "drops", "mtu/fragmentation-needed", before + 1) > before, "{}", lab.stats(1));
    assert!(wait_counter(lab, 1, "counters", "icmp_errors_sent", icmp_before + 1) > icmp_before, "{}", lab.stats(1));
}

#[test]
fn policy_denies_tcp_5202_to_guarded_pod_and_passes_the_rest() {
    let Some((_turn, lab)) = lab("policy") else { return };
    let ns3b = &lab.pod("3b").ns;
    let mut servers = vec![];
    for port in ["5201", "5202"] {
        servers.push(Bg::new(lab.spawn(ns3b, &["iperf3", "-s", "-p", port], None).expect("iperf3 server")));
    }
    for port in [5201, 5202] {
        wait_listening(lab, ns3b, false, port);
    }
    let ip = lab.pod_ip("3b").to_string();
    let client = |port: &str| {
        lab.exec(&lab.pod("1a").ns, &["iperf3", "-c", &ip, "-p", port, "-n", "1M", "-J", "--connect-timeout", "1500"])
    };
    let before = lab.drops(3, "policy/deny");
    let denied = client("5202");
    let allowed = client("5201");
    let pinged = ping(lab, "1a", "3b");
    drop(servers);
    // iperf3 -J may exit 0 on failure: the verdict is in the JSON.
    let denied_v: serde_json::Value = serde_json::from_slice(&denied.stdout).unwrap_or_default();
    assert!(denied_v["error"].is_string(), "TCP to 5202 passed: {}", text(&denied));
    assert!(wait_counter(lab, 3, "drops", "policy/deny", before + 1) > before, "{}", lab.stats(3));
    let v: serde_json::Value = serde_json::from_slice(&allowed.stdout).unwrap_or_default();
    assert!(v["error"].is_null(), "TCP to 5201 failed: {}", text(&allowed));
    assert!(v["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(pinged.status.success(), "{}", text(&pinged));
}

/// IPv4 and UDP builders and the checksum, for the raw-socket senders below.
const PY_PRELUDE: &str = r#"
import socket, struct, sys
def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def ip4(src, dst, proto, payload, ttl=64):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 0x1234, 0x4000, ttl, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack('!H', csum(h)) + h[12:] + payload
def udp(sport, dport, data):
    return struct.pack('!HHHH', sport, dport, 8 + len(data), 0) + data
"#;

/// A listener in `ns` printing each datagram to UDP `port` into `log`, once it listens, until
/// the one tagged `genuine` (sent last, on the same path as the others) or for 20 s.
fn collect_udp(lab: &LabHandle, ns: &str, port: u16, log: &std::path::Path) -> Bg {
    let listener = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', {port})); s.settimeout(0.2)\n\
         end = time.time() + 20\n\
         while time.time() < end:\n\
         \x20   try: got = s.recv(100).decode()\n\
         \x20   except socket.timeout: continue\n\
         \x20   print(got, flush=True)\n\
         \x20   if got == 'genuine': break\n"
    );
    let rx = Bg::new(lab.spawn(ns, &["python3", "-c", &listener], Some(log)).expect("listener"));
    wait_listening(lab, ns, true, port);
    rx
}

fn python(lab: &LabHandle, ns: &str, script: &str) -> std::process::Output {
    let code = format!("{PY_PRELUDE}\n{script}");
    lab.exec(ns, &["python3", "-c", &code])
}

/// From the underlay router, forging node 3 (192.168.2.20, a known peer) as the outer source:
/// two IPIP packets to node 1 for each `(inner source, tag)` of `forged`, then two from node 3's
/// own pod tagged `genuine` (the control), each carrying UDP to `inner_dst:port` with the tag as
/// its payload. Returns what `listen_ns` received on `port` meanwhile, after checking the
/// genuine datagram arrived (else the test itself is broken).
fn forge_ipip_from_node3(
    lab: &LabHandle,
    listen_ns: &str,
    inner_dst: &str,
    port: u16,
    forged: &[(&str, &str)],
) -> String {
    let log = lab.dir().join(format!("forged-inner-{port}-{}.txt", std::process::id()));
    let mut rx = collect_udp(lab, listen_ns, port, &log);
    let sources: String =
        forged.iter().chain(&[("10.244.3.2", "genuine")]).map(|(s, t)| format!("('{s}', '{t}'), ")).collect();
    let out = python(
        lab,
        &lab.router_ns(),
        &format!(
            "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)\n\
             for src, tag in ({sources}):\n\
             \x20   inner = ip4(src, '{inner_dst}', 17, udp(40000, {port}, tag.encode()))\n\
             \x20   for _ in range(2): s.sendto(ip4('192.168.2.20', '192.168.1.10', 4, inner), ('192.168.1.10', 0))\n"
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(rx.wait_exit(Duration::from_secs(25)), "the listener did not finish");
    drop(rx);
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(got.contains("genuine"), "the genuine datagram did not arrive (test broken?): {got:?}");
    got
}

#[test]
fn ipip_from_an_unknown_host_is_dropped_and_counted() {
    let Some((_turn, lab)) = lab("unknown_peer") else { return };
    let before = lab.drops(1, "ipip/unknown-peer");
    // From the underlay router (192.168.1.1, not a node): IPIP to node1 carrying UDP to pod 1a.
    let out = python(
        lab,
        &lab.router_ns(),
        "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)\n\
         inner = ip4('10.244.3.2', '10.244.1.2', 17, udp(40000, 9, b'x' * 32))\n\
         for _ in range(3): s.sendto(inner, ('192.168.1.10', 0))\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let after = wait_counter(lab, 1, "drops", "ipip/unknown-peer", before + 3);
    assert!(after >= before + 3, "ipip/unknown-peer {before} -> {after}: {}", lab.stats(1));
}

#[test]
fn ipip_with_a_forged_inner_source_is_dropped_and_counted() {
    let Some((_turn, lab)) = lab("forged_inner") else { return };
    let reasons = ["ipip/inner-source-ours", "ipip/inner-source-local-pod", "ipip/inner-source-rpf"];
    let before: Vec<u64> = reasons.iter().map(|r| lab.drops(1, r)).collect();
    // To pod 1a: our node IP, a local pod and node 2's pod as inner sources.
    let forged = [("192.168.1.10", "node-ip"), ("10.244.1.3", "local-pod"), ("10.244.2.2", "node2-pod")];
    let got = forge_ipip_from_node3(lab, &lab.pod("1a").ns, "10.244.1.2", 9999, &forged);
    for tag in ["node-ip", "local-pod", "node2-pod"] {
        assert!(!got.contains(tag), "forged inner source {tag} reached the pod: {got:?}");
    }
    for (r, b) in reasons.iter().zip(&before) {
        let after = wait_counter(lab, 1, "drops", r, b + 2);
        assert!(after >= b + 2, "{r}: {b} -> {after}; stats {}", lab.stats(1));
    }
}

#[test]
fn pod_spoofing_its_source_is_dropped_and_counted() {
    let Some((_turn, lab)) = lab("spoofed_source") else { return };
    let ns = &lab.pod("1a").ns;
    let before = lab.drops(1, "endpoint/spoofed-source");
    assert!(lab.exec(ns, &["ip", "addr", "add", "10.244.1.99/32", "dev", "eth0"]).status.success());
    let out = lab.exec(ns, &["ping", "-I", "10.244.1.99", "-c", "2", "-i", "0.2", "-W", "1", "10.244.2.2"]);
    lab.exec(ns, &["ip", "addr", "del", "10.244.1.99/32", "dev", "eth0"]);
    assert!(!out.status.success(), "spoofed ping answered: {}", text(&out));
    let after = wait_counter(lab, 1, "drops", "endpoint/spoofed-source", before + 2);
    assert!(after >= before + 2, "endpoint/spoofed-source {before} -> {after}: {}", lab.stats(1));
    assert!(ping(lab, "1a", "2a").status.success(), "pod 1a lost connectivity after the spoofing test");
}

#[test]
fn malformed_frames_from_a_pod_are_dropped_with_their_reasons() {
    let Some((_turn, lab)) = lab("malformed") else { return };
    let ns = &lab.pod("1b").ns;
    assert!(lab.exec(ns, &["ping", "-c", "1", "-W", "1", "169.254.1.1"]).status.success());
    let neigh = lab.exec(ns, &["ip", "neigh", "show", "169.254.1.1", "dev", "eth0"]);
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_string();
    let gw_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no gateway MAC in `{neigh}`"))
        .to_string();
    let reasons = ["ipv4/truncated", "ipv4/bad-checksum", "ipv4/bad-ihl", "ipv4/ttl-expired"];
    let before: Vec<u64> = reasons.iter().map(|r| lab.drops(1, r)).collect();
    let script = format!(
        "gw = bytes.fromhex('{}')\n\
         me = bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':', ''))\n\
         eth = gw + me + b'\\x08\\x00'\n\
         good = ip4('10.244.1.3', '10.244.2.2', 17, udp(40000, 9, b'y' * 18))\n\
         truncated = good[:10]\n\
         bad_csum = good[:10] + bytes([good[10] ^ 0xff, good[11]]) + good[12:]\n\
         bad_ihl = bytes([0x44]) + good[1:]\n\
         ttl1 = ip4('10.244.1.3', '10.244.2.2', 17, udp(40000, 9, b'y' * 18), ttl=1)\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('eth0', 0))\n\
         for f in (truncated, bad_csum, bad_ihl, ttl1):\n\
         \x20   for _ in range(3): s.send(eth + f)\n",
        gw_mac.replace(':', "")
    );
    let out = python(lab, ns, &script);
    assert!(out.status.success(), "{}", text(&out));
    for (r, b) in reasons.iter().zip(&before) {
        let after = wait_counter(lab, 1, "drops", r, b + 3);
        assert!(after >= b + 3, "{r}: {b} -> {after}; stats {}", lab.stats(1));
    }
    let out = ping(lab, "1b", "2a");
    assert!(out.status.success(), "router stopped forwarding after malformed frames: {}", text(&out));
}

#[test]
fn ipip_to_the_node_itself_with_a_forged_inner_source_never_reaches_its_kernel() {
    let Some((_turn, lab)) = lab("forged_inner_to_node") else { return };
    let before = lab.drops(1, "ipip/inner-source-rpf");
    // To node 1's IP, collected by its kernel: node 2's pod (not behind node 3) as inner source.
    let ns1 = lab.node(1).ns.clone();
    let got = forge_ipip_from_node3(lab, &ns1, "192.168.1.10", 9998, &[("10.244.2.2", "node2-pod")]);
    assert!(!got.contains("node2-pod"), "a forged inner source reached node 1's kernel: {got:?}");
    let after = wait_counter(lab, 1, "drops", "ipip/inner-source-rpf", before + 2);
    assert!(after >= before + 2, "ipip/inner-source-rpf {before} -> {after}; stats {}", lab.stats(1));
}

/// A TCP server that reads until the client's FIN and sends back what it read.
const TCP_ECHO_SERVER: &str = r#"
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 7777)); s.listen(16)
while True:
    c, _ = s.accept(); c.settimeout(5); d = b''
    try:
        while True:
            x = c.recv(65536)
            if not x: break
            d += x
        c.sendall(d)
    except OSError: pass
    c.close()
"#;

/// Connects to `ip`:7777, sends 200 kB (full-size segments), expects them back.
fn tcp_echo(lab: &LabHandle, from_ns: &str, ip: &str) -> Result<(), String> {
    tcp_echo_n(lab, from_ns, ip, 200 * 1024)
}

/// Connects to `ip`:7777, sends `n` random bytes in large writes, expects the same bytes back.
fn tcp_echo_n(lab: &LabHandle, from_ns: &str, ip: &str, n: usize) -> Result<(), String> {
    let script = format!(
        "import os, socket, sys\n\
         c = socket.create_connection(('{ip}', 7777), timeout=4)\n\
         c.settimeout(4); data = os.urandom({n})\n\
         c.sendall(data); c.shutdown(socket.SHUT_WR); got = b''\n\
         while True:\n\
         \x20   x = c.recv(65536)\n\
         \x20   if not x: break\n\
         \x20   got += x\n\
         sys.exit(0 if got == data else 'echoed %d of %d bytes' % (len(got), len(data)))\n"
    );
    let out = lab.exec_timeout(from_ns, &["python3", "-c", &script], Duration::from_secs(15));
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out))
    }
}

#[test]
fn host_and_pods_talk_tcp_both_ways_on_every_node_and_across_nodes() {
    let Some((_turn, lab)) = lab("host_pod_tcp") else { return };
    let node = |i: u8| lab.node(i).clone();
    let mut servers = vec![];
    for ns in [1, 2, 3].map(|i| node(i).ns).into_iter().chain(["1a", "2a", "3a"].map(|p| lab.pod(p).ns.clone())) {
        servers.push(Bg::new(lab.spawn(&ns, &["python3", "-c", TCP_ECHO_SERVER], None).expect("server starts")));
        wait_listening(lab, &ns, false, 7777);
    }
    let spoofed_before: Vec<u64> = [1, 2, 3].map(|i| lab.drops(i, "endpoint/spoofed-source")).to_vec();
    // (what, client namespace, server address)
    let mut cases: Vec<(String, String, String)> = vec![];
    for i in [1u8, 2, 3] {
        let pod = format!("{i}a");
        let (n, p) = (node(i), lab.pod(&pod).clone());
        cases.push((format!("pod {pod} -> its node{i}"), p.ns.clone(), n.ip.to_string()));
        cases.push((format!("node{i} -> its pod {pod}"), n.ns.clone(), p.ip.to_string()));
    }
    for (a, b, mode) in [(1u8, 2u8, "BGP"), (1, 3, "IPIP"), (3, 1, "IPIP"), (2, 3, "IPIP")] {
        let pod = format!("{a}a");
        let (pa, nb) = (lab.pod(&pod).clone(), node(b));
        cases.push((format!("pod {pod} -> node{b} ({mode})"), pa.ns.clone(), nb.ip.to_string()));
        cases.push((format!("node{b} -> pod {pod} ({mode})"), nb.ns.clone(), pa.ip.to_string()));
    }
    let failures: Vec<String> =
        cases.iter().filter_map(|(what, ns, ip)| tcp_echo(lab, ns, ip).err().map(|e| format!("{what}: {e}"))).collect();
    drop(servers);
    assert!(failures.is_empty(), "{} of {} failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
    for i in [1u8, 2, 3] {
        assert_eq!(
            lab.drops(i, "endpoint/spoofed-source"),
            spoofed_before[i as usize - 1],
            "node{i}: {}",
            lab.stats(i)
        );
    }
}

/// Pods hand vrouter 64 KiB TCP segments (TSO on their TAPs): to a pod on another node they
/// must reach the wire cut into segments that fit it, every IPv4 and TCP checksum valid as an
/// independent decoder (tcpdump -vv) computes it, inside IPIP and plain; the far node merges
/// them again (GRO); and the receiver's byte stream is exactly what was sent (echoed back, so
/// both directions are checked).
#[test]
fn big_segments_from_pods_cross_nodes_cut_to_the_wire_with_valid_checksums() {
    let Some((_turn, lab)) = lab("gso_on_wire") else { return };
    gso_on_wire(lab);
}

/// On an underlay of 3,500 bytes (AF_XDP in 4 KiB chunks) pods get 3,480: a packet that size
/// crosses to the other nodes whole, plain and inside IPIP, and GSO cuts segments that fill
/// the bigger wire (checked as above).
#[test]
fn a_jumbo_underlay_carries_frames_of_its_mtu_whole() {
    let Some((_turn, _shared)) = lab("jumbo_underlay") else { return };
    underlay_of(3500);
}

/// At 9,000 bytes a frame spans three chunks (multi-buffer AF_XDP behind vrouter's own
/// frags-aware XDP program): the same checks, with chains gathered on receive and scattered
/// on send, and nothing counted as too big.
#[test]
fn a_9000_byte_underlay_carries_multi_buffer_frames_whole() {
    let Some((_turn, _shared)) = lab("multi_buffer_underlay") else { return };
    let big = underlay_of(9000);
    for node in 1..=3 {
        let log = std::fs::read_to_string(big.dir().join(format!("node{node}.log"))).unwrap_or_default();
        assert!(log.contains("multi_buffer=true"), "node{node} did not say multi-buffer is on:\n{log}");
        let stats = big.stats(node);
        assert!(stats["drops"].is_object(), "node{node} has no drop counters to read: {stats}");
        assert_eq!(big.drops(node, "uplink/rx-too-big"), 0, "node{node}: {stats}");
    }
}

/// A lab whose underlay has MTU `mtu`: DF pings of the pods' MTU to pods on both other nodes
/// (plain and IPIP), then [`gso_on_wire`].
fn underlay_of(mtu: u16) -> LabHandle {
    let o = LabOptions { vrouter: Some(PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))), mtu, ..LabOptions::default() };
    let big = lab::up(&o).unwrap_or_else(|e| panic!("lab up --mtu {mtu}: {e}"));
    let from = big.pod("1a").ns.clone();
    // ICMP data of the pods' MTU less 28 (IP and ICMP headers), with DF (no fragments).
    let data = (mtu - 20 - 28).to_string();
    for to in ["2a", "3a"] {
        let o = big.exec(
            &from,
            &["ping", "-c", "2", "-i", "0.2", "-W", "1", "-M", "do", "-s", &data, &big.pod_ip(to).to_string()],
        );
        assert!(o.status.success(), "1a -> {to}, {} bytes with DF: {}", mtu - 20, text(&o));
    }
    gso_on_wire(&big);
    big
}

/// A TCP segment from the wire with a wrong checksum is not merged or marked valid: it reaches
/// the pod as it came (whose stack drops it) and the node counts it (`gro_bad_checksum`).
#[test]
fn a_tcp_segment_with_a_wrong_checksum_from_the_wire_is_counted_and_left_to_the_pod() {
    let Some((_turn, lab)) = lab("gro_bad_checksum") else { return };
    let before = lab.counter(1, "gro_bad_checksum");
    // Pod 2a sends pod 1a three TCP segments (ACK, 100 bytes of payload) through a raw
    // socket: the kernel adds the IP header and leaves the TCP checksum as given, one off the
    // right one.
    let out = python(
        lab,
        &lab.pod("2a").ns,
        "seg = lambda c: struct.pack('!HHIIBBHHH', 40000, 9, 1, 1, 5 << 4, 0x10, 65535, c, 0) + b'x' * 100\n\
         pseudo = socket.inet_aton('10.244.2.2') + socket.inet_aton('10.244.1.2') + struct.pack('!BBH', 0, 6, 120)\n\
         bad = csum(pseudo + seg(0)) ^ 1\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)\n\
         for _ in range(3): s.sendto(seg(bad), ('10.244.1.2', 0))",
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(wait_counter(lab, 1, "counters", "gro_bad_checksum", before + 3) >= before + 3, "node1: {}", lab.stats(1));
}

/// Pods' big TCP segments to the other nodes reach the wire cut to its MTU with valid
/// checksums, and are merged again on the far side (see the test above).
fn gso_on_wire(lab: &LabHandle) {
    let mtu = lab.state().mtu as usize;
    let rt = lab.router_ns();
    let before = |node: u8, name: &str| lab.counter(node, name);
    let (gso1, gro2, gro3) = (before(1, "gso_frames"), before(2, "gro_merged"), before(3, "gro_merged"));
    let mut servers = vec![];
    for pod in ["2a", "3a"] {
        let ns = lab.pod(pod).ns.clone();
        servers.push(Bg::new(lab.spawn(&ns, &["python3", "-c", TCP_ECHO_SERVER], None).expect("server starts")));
        wait_listening(lab, &ns, false, 7777);
    }
    // Everything node 1 sends and receives, as the router's kernel receives it (veth does
    // no GRO by default: what tcpdump sees on the router's side is what crossed the wire).
    let log = lab.dir().join(format!("tcpdump-gso-{}.txt", std::process::id()));
    let filter = "tcp port 7777 or (ip proto 4 and ip[20+9] = 6)";
    let mut dump = Bg::new(
        lab.spawn(&rt, &["tcpdump", "-i", "n1", "-n", "-l", "-vv", filter], Some(&log)).expect("tcpdump starts"),
    );
    let ready = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("listening on") && Instant::now() < ready {
        std::thread::sleep(Duration::from_millis(50));
    }
    let from = lab.pod("1a").ns.clone();
    for to in ["2a", "3a"] {
        tcp_echo_n(lab, &from, &lab.pod_ip(to).to_string(), 3 << 20).unwrap_or_else(|e| panic!("1a -> {to}: {e}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(dump.0.id() as i32), nix::sys::signal::Signal::SIGINT);
    dump.wait_exit(Duration::from_secs(3));
    drop((dump, servers));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    // -vv: "IP (tos 0x0, ttl 63, id 4711, offset 0, flags [DF], proto TCP (6), length 1500)"
    // then "10.244.1.2.40000 > 10.244.2.2.7777: Flags [.], cksum 0x1c46 (correct), seq ..., length 1448";
    // behind IPIP the outer "proto IPIP (4)" header and the node addresses come first.
    let lengths: Vec<usize> = text
        .match_indices("IP (")
        .filter_map(|(i, _)| {
            let t = &text[i..];
            let at = t.find("length ")? + "length ".len();
            t[at..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
        })
        .collect();
    let tcp = text.matches("Flags [").count();
    let correct = text.matches("(correct)").count();
    assert!(tcp > 1000, "too little captured ({tcp} TCP segments):\n{}", &text[..text.len().min(3000)]);
    assert!(!text.contains("incorrect") && !text.contains("bad cksum"), "a checksum tcpdump rejects:\n{}", {
        let at = text.find("incorrect").or(text.find("bad cksum")).unwrap_or(0);
        &text[at.saturating_sub(600)..(at + 400).min(text.len())]
    });
    assert!(lengths.iter().all(|&l| l <= mtu), "a frame longer than the wire's MTU {mtu}: {:?}", lengths.iter().max());
    assert_eq!(correct, tcp, "tcpdump verified the TCP checksum of {correct} of {tcp} segments");
    // Full-size segments of both kinds crossed (the pods' MTU is 20 less, so IPIP fills the wire).
    let largest = |proto: &str| {
        text.match_indices(proto)
            .filter_map(|(i, _)| text[i + proto.len()..].split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
            .max()
            .unwrap_or(0usize)
    };
    let (plain, ipip) = (largest("proto TCP (6), length "), largest("proto IPIP (4), length "));
    assert!(
        plain >= mtu - 100 && ipip >= mtu - 80,
        "largest plain TCP {plain}, largest IPIP {ipip}: no full-size segments for an MTU of {mtu}"
    );
    // The segments were cut by node 1 (pods sent big ones), and merged again by nodes 2 and 3.
    assert!(wait_counter(lab, 1, "counters", "gso_frames", gso1 + 1) > gso1, "node1: {}", lab.stats(1));
    assert!(wait_counter(lab, 2, "counters", "gro_merged", gro2 + 1) > gro2, "node2: {}", lab.stats(2));
    assert!(wait_counter(lab, 3, "counters", "gro_merged", gro3 + 1) > gro3, "node3: {}", lab.stats(3));
}

fn ctl(lab: &LabHandle, node: u8, args: &[&str]) -> std::process::Output {
    let sock = format!("/run/vrouter/{}.sock", lab.node(node).ns);
    common::vrouterctl().args(["-s", &sock]).args(args).output().expect("vrouterctl runs")
}

#[test]
fn unreachable_and_prohibit_routes_under_the_default_route_answer_icmp() {
    let Some((_turn, lab)) = lab("reject_routes") else { return };
    for (prefix, kind) in [("10.99.0.0/24", "unreachable"), ("10.99.1.0/24", "prohibit")] {
        let o = ctl(lab, 1, &["route", "add", prefix, kind]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let before = (lab.drops(1, "fib/unreachable"), lab.drops(1, "fib/prohibited"));
    let ns = &lab.pod("1a").ns;
    let unreachable = lab.exec(ns, &["ping", "-c", "1", "-W", "1", "10.99.0.5"]);
    let prohibited = lab.exec(ns, &["ping", "-c", "1", "-W", "1", "10.99.1.5"]);
    for prefix in ["10.99.0.0/24", "10.99.1.0/24"] {
        ctl(lab, 1, &["route", "del", prefix]);
    }
    assert!(text(&unreachable).contains("Destination Net Unreachable"), "{}", text(&unreachable));
    assert!(text(&prohibited).contains("Packet filtered"), "{}", text(&prohibited));
    assert!(wait_counter(lab, 1, "drops", "fib/unreachable", before.0 + 1) > before.0, "{}", lab.stats(1));
    assert!(wait_counter(lab, 1, "drops", "fib/prohibited", before.1 + 1) > before.1, "{}", lab.stats(1));
}

/// Node 3's config file, and its text with pod 3a under an ingress policy `closed` that admits
/// nothing new.
fn pod_3a_closed(lab: &LabHandle) -> (PathBuf, String) {
    let cfg = lab.state().daemons.iter().find(|d| d.node == lab.node(3).name).expect("node3").config.clone();
    let mut c = Config::load(&cfg).expect("node3 config");
    let pod = c.endpoints.iter_mut().find(|e| e.name == "pod-3a").expect("pod-3a in the config");
    assert!(pod.ingress.is_empty(), "pod-3a has an ingress policy already: {:?}", pod.ingress);
    pod.ingress = vec!["closed".into()];
    c.policies.insert("closed".into(), vec![]);
    (cfg, toml::to_string(&c).expect("config serializes"))
}

#[test]
fn icmp_error_about_a_tracked_flow_reaches_a_default_deny_pod_over_ipip() {
    let Some((_turn, lab)) = lab("related_icmp") else { return };
    // Pod 3a gets an ingress policy that admits nothing new.
    let (cfg, closed) = pod_3a_closed(lab);
    let closed_path = lab.dir().join(format!("node3-closed-{}.toml", std::process::id()));
    std::fs::write(&closed_path, closed).unwrap();
    let o = ctl(lab, 3, &["apply", "-f", closed_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // UDP from 3a to a closed port of pod 1a (node 1, IPIP): 1a's kernel answers port
    // unreachable, which must reach 3a as related to the flow 3a started.
    let out = python(
        lab,
        &lab.pod("3a").ns,
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)\n\
         s.connect(('10.244.1.2', 9)); s.send(b'x')\n\
         try:\n\
         \x20   s.recv(10); sys.exit('answered?')\n\
         except ConnectionRefusedError: print('refused')\n\
         except socket.timeout: sys.exit('no ICMP port unreachable arrived')\n",
    );
    // New connections to 3a are denied meanwhile (the policy is in force).
    let denied_before = lab.drops(3, "policy/deny");
    let pinged = ping(lab, "1a", "3a");
    let o = ctl(lab, 3, &["apply", "-f", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "restoring node3: {}", text(&o));
    assert!(out.status.success(), "{}", text(&out));
    assert!(!pinged.status.success(), "ping to a default-deny pod passed: {}", text(&pinged));
    assert!(wait_counter(lab, 3, "drops", "policy/deny", denied_before + 1) > denied_before, "{}", lab.stats(3));
}

#[test]
fn pmtud_over_ipip_through_a_smaller_underlay_hop_reaches_a_policed_pod() {
    let Some((_turn, lab)) = lab("pmtud_underlay") else { return };
    let rt = lab.router_ns();
    // The router's side towards subnet A shrinks to 1400: node 3's IPIP packets of a 1400-byte
    // DF ping from pod 3b (ingress policy 'guarded') no longer fit.
    let set = lab.exec(&rt, &["ip", "link", "set", vrouter::lab::topo::BRIDGE, "mtu", "1400"]);
    assert!(set.status.success(), "{}", text(&set));
    let sent_before = lab.counter(3, "icmp_errors_sent");
    let ns = &lab.pod("3b").ns;
    let out = lab.exec(ns, &["ping", "-M", "do", "-s", "1400", "-c", "2", "-i", "0.3", "-W", "1", "10.244.1.2"]);
    lab.exec(&rt, &["ip", "link", "set", vrouter::lab::topo::BRIDGE, "mtu", "1500"]);
    lab.exec(ns, &["ip", "route", "flush", "cache"]);
    let t = text(&out);
    // The router told node 3 "1400" about the outer packet; node 3 relays 1380 (RFC 2003 4).
    assert!(t.contains("mtu = 1380") || t.contains("mtu=1380"), "{t}");
    assert!(wait_counter(lab, 3, "counters", "icmp_errors_sent", sent_before + 1) > sent_before, "{}", lab.stats(3));
    assert!(ping(lab, "3b", "1a").status.success(), "pod 3b lost 1a after the MTU test");
}

/// `cargo test --test lab_vrouter -- --ignored keep_a_lab`: brings a lab up and leaves it running
/// for manual work; `vrouter lab down` (or `lab::down`) removes it.
#[test]
#[ignore]
fn keep_a_lab_for_manual_debugging() {
    if let Some(why) = skip() {
        eprintln!("SKIP keep_a_lab: {why}");
        return;
    }
    let mut o = LabOptions { vrouter: Some(PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))), ..LabOptions::default() };
    if let Ok(idle) = std::env::var("VRL_IDLE") {
        o.idle = idle;
    }
    let mut h = lab::up(&o).unwrap_or_else(|e| panic!("{e}"));
    h.keep();
    println!("lab {} is up; files in {}", h.prefix(), h.dir().display());
}

/// `cargo test --test lab_vrouter -- --ignored down_the_kept_lab`: `lab::down(None)`, which finds
/// the only lab on the machine (fails if there are several: give the prefix then).
#[test]
#[ignore]
fn down_the_kept_lab() {
    if let Some(why) = skip() {
        eprintln!("SKIP down_the_kept_lab: {why}");
        return;
    }
    println!("{}", lab::status(None).unwrap_or_else(|e| panic!("{e}")));
    lab::down(None).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn kubelet_probes_reach_a_default_deny_pod_from_its_own_node() {
    let Some((_turn, lab)) = lab("host_pod_policy") else { return };
    // Pod 3a gets an ingress policy that admits nothing new (as above).
    let (cfg, closed) = pod_3a_closed(lab);
    let closed_path = lab.dir().join(format!("node3-probe-{}.toml", std::process::id()));
    std::fs::write(&closed_path, closed).unwrap();
    let ns3a = lab.pod("3a").ns.clone();
    let server = Bg::new(lab.spawn(&ns3a, &["python3", "-c", TCP_ECHO_SERVER], None).expect("server starts"));
    wait_listening(lab, &ns3a, false, 7777);
    let o = ctl(lab, 3, &["apply", "-f", closed_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let ip3a = lab.pod_ip("3a").to_string();
    // The node's kernel (kubelet) connects to the pod: allowed (host_pod_policy = "allow").
    let probe = tcp_echo(lab, &lab.node(3).ns, &ip3a);
    // Another node's pod is still denied.
    let denied_before = lab.drops(3, "policy/deny");
    let other = tcp_echo(lab, &lab.pod("1a").ns, &ip3a);
    let o = ctl(lab, 3, &["apply", "-f", cfg.to_str().unwrap()]);
    drop(server);
    assert!(o.status.success(), "restoring node3: {}", text(&o));
    assert!(probe.is_ok(), "node3 -> default-deny pod 3a: {probe:?}");
    assert!(other.is_err(), "pod 1a reached default-deny pod 3a");
    assert!(wait_counter(lab, 3, "drops", "policy/deny", denied_before + 1) > denied_before, "{}", lab.stats(3));
}

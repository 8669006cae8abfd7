//! Routes between nodes over BGP, as Calico distributes them: BIRD on every node of a cluster
//! lab, its configuration rendered by the node's agent from etcd, sessions carried by vrouter's
//! host path, learned routes imported from the kernel table BIRD writes. What it promises, end
//! to end: pods reach each other (direct and IPIP) over routes nobody wrote; a node whose BIRD
//! dies has its routes gone elsewhere within a second (BFD), and they come back with it; a
//! graceful restart loses nothing; a peer's prefix outside the pools is refused and counted;
//! a wrong password gets no session.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use vrouter::lab::{self, bgp, cluster, LabHandle, LabOptions};

const TOOLS: &[&str] = &["ip", "ping", "sysctl", "etcd", "bird", "birdc", "curl"];

fn up() -> Option<LabHandle> {
    common::cluster_lab(TOOLS, LabOptions { bgp: true, ..LabOptions::default() })
}

fn logs(lab: &LabHandle) -> String {
    let mut s = String::new();
    for n in lab.nodes() {
        s += &format!("--- {} daemon:\n{}\n", n.name, lab.log_tail(n.index, 6));
        for (what, path) in
            [("agent", lab.dir().join(format!("{}.agent.log", n.name))), ("BIRD", bgp::files(lab, n.index).log)]
        {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(6).collect();
            s += &format!("--- {} {what}:\n{}\n", n.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
    }
    s
}

fn tools() -> cluster::Tools {
    cluster::Tools::beside(&PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))).expect("tools")
}

/// `vrouterctl node status --json` against node `index`'s BIRD, in its namespace.
fn node_status(lab: &LabHandle, index: u8) -> serde_json::Value {
    let sock = bgp::files(lab, index).socket.to_string_lossy().into_owned();
    let ctl = tools().vrouterctl.to_string_lossy().into_owned();
    let o = lab.exec(&lab.node(index).ns, &[&ctl, "--json", "node", "status", "--bird-socket", &sock]);
    assert!(o.status.success(), "vrouterctl node status on node{index}: {}", common::text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("node status JSON: {e}: {}", common::text(&o)))
}

/// node `index`'s session with the peer named `peer` (`mesh_node2`, `peer_tor`).
fn session(lab: &LabHandle, index: u8, peer: &str) -> serde_json::Value {
    find_session(lab, index, peer)
        .unwrap_or_else(|| panic!("node{index} has no session {peer}: {}", node_status(lab, index)))
}

/// node `index`'s session with the peer named `peer`, if it has one.
fn find_session(lab: &LabHandle, index: u8, peer: &str) -> Option<serde_json::Value> {
    node_status(lab, index)["peers"].as_array().and_then(|l| l.iter().find(|p| p["name"] == peer).cloned())
}

/// One echo from `from` to `to`, answered within 5 s (ping sends one a second until then: a
/// first echo lost to a loaded machine is not the verdict). Without an answer, its output says
/// what came back instead (an ICMP error, or nothing).
fn ping(lab: &LabHandle, from: &str, to: &str) -> Output {
    let ip = lab.pod_ip(to).to_string();
    lab.exec(&lab.pod(from).ns, &["ping", "-c", "1", "-w", "5", &ip])
}

/// Node `index`'s own blocks (what it announces).
fn blocks_of(lab: &LabHandle, index: u8) -> Vec<vrouter_core::fib::Ipv4Prefix> {
    bgp::node_blocks(lab).unwrap()[&index].iter().copied().collect()
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// The kernel-table route node `at` has for `block`, as its FIB shows it (`None`: no route).
fn learned_nexthop(lab: &LabHandle, at: u8, block: vrouter_core::fib::Ipv4Prefix) -> Option<String> {
    learned_on(lab.node(at), block)
}

/// The same, asked of a node directly (from a thread that does not hold the lab).
fn learned_on(n: &lab::LabNode, block: vrouter_core::fib::Ipv4Prefix) -> Option<String> {
    let r = bgp::routes(n, vrouter_api::RouteSource::Kernel, block).unwrap();
    r.routes.into_iter().find(|v| v.prefix == block).map(|v| v.nexthop)
}

/// Full mesh: every node learns the others' blocks over BGP (direct to node2, IPIP to node3
/// on the other subnet) and pods reach each other over them. node3's BIRD killed: BFD takes its
/// block out of node1's and node2's FIB within a second, and pods there get an ICMP net
/// unreachable instead of a blackhole; BIRD back: announced again, reachable again.
#[test]
fn mesh_routes_follow_a_nodes_bird_dying_and_coming_back() {
    let Some(lab) = up() else { return };
    for n in 1..=3u8 {
        let st = node_status(&lab, n);
        let peers = st["peers"].as_array().unwrap_or_else(|| panic!("node{n} status: {st}"));
        assert_eq!(peers.len(), 2, "node{n}: two mesh peers: {st}");
        assert!(peers.iter().all(|p| p["bgp_state"] == "Established"), "node{n}: {st}\n{}", logs(&lab));
    }
    // The daemon's metrics carry BIRD's sessions.
    let o = lab.exec(&lab.node(1).ns, &["curl", "-sf", &format!("http://{}/metrics", lab::topo::METRICS_LISTEN)]);
    let metrics = String::from_utf8_lossy(&o.stdout);
    assert!(metrics.contains("vrouter_bgp_bird_up 1"), "{}", common::text(&o));
    for peer in ["mesh_node2", "mesh_node3"] {
        let up =
            metrics.lines().find(|l| l.starts_with("vrouter_bgp_peer_up{") && l.contains(&format!("peer=\"{peer}\"")));
        assert!(up.is_some_and(|l| l.ends_with(" 1")), "{peer} up in the metrics: {metrics}");
    }
    let (b2, b3) = (blocks_of(&lab, 2), blocks_of(&lab, 3));
    assert_eq!((b2.len(), b3.len()), (1, 1), "one block per node");
    let (b2, b3) = (b2[0], b3[0]);
    let (ip2, ip3) = (lab.node(2).ip, lab.node(3).ip);
    assert_eq!(learned_nexthop(&lab, 1, b2), Some(format!("via {ip2}")), "same subnet: direct");
    assert_eq!(
        learned_nexthop(&lab, 1, b3),
        Some(format!("ipip to {ip3} via {}", lab.node(1).gateway)),
        "other subnet: IPIP (CrossSubnet pool)"
    );
    for (a, b) in [("1a", "2a"), ("1a", "3a"), ("3b", "2b")] {
        let o = ping(&lab, a, b);
        assert!(o.status.success(), "{a} -> {b}: {}\n{}", common::text(&o), logs(&lab));
    }

    bgp::kill_bird(&lab, 3).unwrap();
    let killed = Instant::now();
    let gone = wait("node3's block gone from node1 and node2", Duration::from_secs(5), || {
        learned_nexthop(&lab, 1, b3).is_none() && learned_nexthop(&lab, 2, b3).is_none()
    });
    let gone = gone.max(killed.elapsed());
    eprintln!("node3's BIRD killed: its block left node1's and node2's FIB after {gone:?}");
    // BFD took the sessions down (its detection time is 0.3 s; how fast the whole withdrawal
    // is, is a benchmark's to say, BENCHMARKS.md "Failover"), not the BGP hold timer.
    for n in [1, 2] {
        let s = session(&lab, n, "mesh_node3");
        assert!(
            s["last_error"].as_str().is_some_and(|e| e.contains("BFD session down")),
            "node{n}'s session with node3 went down by BFD: {s}"
        );
    }
    assert!(
        gone < Duration::from_secs(5),
        "withdrawn by BFD, well before any BGP timer: took {gone:?}\n{}",
        logs(&lab)
    );
    let o = ping(&lab, "1a", "3a");
    let out = common::text(&o);
    assert!(!o.status.success() && out.contains("Unreachable"), "ICMP unreachable, not silence: {out}");
    assert!(ping(&lab, "1a", "2a").status.success(), "the rest is untouched");

    bgp::start_bird(&lab, 3).unwrap();
    // node1's BIRD waits out its error wait (5 s) and connect delay after BFD's failure, and
    // node3 retries every 5 s: the sessions are back after about 8 s, more on a busy machine.
    wait("node3's block back on node1", Duration::from_secs(30), || learned_nexthop(&lab, 1, b3).is_some());
    let b1 = blocks_of(&lab, 1)[0];
    wait("node1's block back on node3", Duration::from_secs(30), || learned_nexthop(&lab, 3, b1).is_some());
    wait("1a reaches 3a again", Duration::from_secs(15), || ping(&lab, "1a", "3a").status.success());
}

/// Runs `restart` (on node3) while node1's and node2's routes to node3's block are sampled
/// every 10 ms; (samples, samples without the route).
fn watched(lab: &mut LabHandle, restart: impl FnOnce(&mut LabHandle) -> Result<(), lab::LabError>) -> (usize, usize) {
    let b3 = blocks_of(lab, 3)[0];
    let others = [lab.node(1).clone(), lab.node(2).clone()];
    let done = std::sync::atomic::AtomicBool::new(false);
    let (r, counts) = std::thread::scope(|s| {
        let watch = s.spawn(|| {
            let (mut samples, mut missing) = (0, 0);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for n in &others {
                    samples += 1;
                    missing += usize::from(learned_on(n, b3).is_none());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (samples, missing)
        });
        let r = restart(lab);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (r, watch.join().unwrap())
    });
    r.unwrap_or_else(|e| panic!("{e}\n{}", logs(lab)));
    counts
}

/// Echo sequence numbers answered in `ping` output: the last, and those missing up to it (the
/// echo in flight when SIGINT came counts as lost in ping's summary, but is not).
fn answered(out: &str) -> (u32, Vec<u32>) {
    let seqs: std::collections::BTreeSet<u32> =
        out.lines().filter_map(|l| l.split("icmp_seq=").nth(1)?.split_whitespace().next()?.parse().ok()).collect();
    let last = seqs.last().copied().unwrap_or(0);
    (last, (1..=last).filter(|s| !seqs.contains(s)).collect())
}

/// `ping -i 0.01` from pod `from` to pod `to`, killed on drop.
fn pinger(lab: &LabHandle, from: &str, to: &str) -> common::Proc {
    let ip = lab.pod_ip(to).to_string();
    let child = Command::new("ip")
        .args(["netns", "exec", &lab.pod(from).ns, "ping", "-i", "0.01", "-W", "1", &ip])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::Proc::new(child)
}

/// BIRD restarted gracefully on node3 (BFD drained first, then `birdc graceful restart` and
/// `bird -R`) while 1a pings 3a every 10 ms: node1 and node2 keep node3's block throughout
/// (stale, then refreshed) and no echo is lost.
#[test]
fn a_graceful_bird_restart_loses_nothing() {
    let Some(mut lab) = up() else { return };
    let ping = pinger(&lab, "1a", "3a");
    std::thread::sleep(Duration::from_millis(500));
    let (samples, missing) = watched(&mut lab, |lab| bgp::graceful_restart_bird(lab, &tools(), 3));
    eprintln!("node3's block on node1 and node2 sampled {samples} times during the restart, missing {missing}");
    assert!(samples > 10, "the restart was watched");
    assert_eq!(missing, 0, "a peer lost node3's block during the graceful restart\n{}", logs(&lab));
    assert_eq!(session(&lab, 1, "mesh_node3")["bgp_state"], "Established", "back after the restart");
    ping.signal(nix::sys::signal::Signal::SIGINT);
    let out = common::text(&ping.finish());
    let (last, lost) = answered(&out);
    eprintln!("pings across the graceful restart: {last} answered in order, lost {lost:?}");
    assert!(last > 100, "the pings ran through the restart: {out}");
    assert!(lost.is_empty(), "echoes lost during the graceful restart: {lost:?}\n{}", logs(&lab));
}

/// node3's vrouter restarted as planned (BFD drained first): its BGP sessions ride out the
/// daemon's absence, so node1 and node2 never drop node3's block (a plain restart makes them
/// drop it: BFD sees a dead node); once the daemon is back, node3 has its routes to the
/// others again and 1a reaches 3a.
#[test]
fn a_planned_vrouter_restart_keeps_the_nodes_routes_on_its_peers() {
    let Some(mut lab) = up() else { return };
    let (samples, missing) = watched(&mut lab, |lab| bgp::planned_vrouter_restart(lab, &tools(), 3));
    eprintln!(
        "node3's block on node1 and node2 sampled {samples} times during node3's vrouter restart, missing {missing}"
    );
    assert!(samples > 10, "the restart was watched");
    assert_eq!(missing, 0, "a peer dropped node3's block while its vrouter restarted\n{}", logs(&lab));
    let b1 = blocks_of(&lab, 1)[0];
    wait("node3 has node1's block again", Duration::from_secs(10), || learned_nexthop(&lab, 3, b1).is_some());
    wait("1a reaches 3a", Duration::from_secs(10), || ping(&lab, "1a", "3a").status.success());
}

/// A top-of-rack router (a BIRD of its own in the underlay router's namespace, AS 65000) as an
/// explicit BGPPeer of the nodes on subnet 1, with a TCP MD5 password from a mounted secret. It
/// announces a prefix inside the pool and one outside: node1 takes the first (via the router)
/// and refuses the second, counted as refused in `node status`; node2, to which the router
/// gives the wrong password, gets no session, and `node status` says why.
#[test]
fn a_tor_peers_prefix_outside_the_pools_is_refused_and_a_wrong_password_gets_no_session() {
    let Some(lab) = up() else { return };
    let rt = lab.router_ns();
    let (n1, n2) = (lab.node(1).ip, lab.node(2).ip);
    let dir = lab.dir().join("tor");
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("bird.conf");
    std::fs::write(
        &conf,
        format!(
            "router id 192.168.1.1;\nprotocol device {{}}\n\
             protocol static {{ ipv4; route 10.244.250.0/24 blackhole; route 198.51.100.0/24 blackhole; }}\n\
             template bgp node {{ local 192.168.1.1 as 65000; direct; ipv4 {{ import none; export all; }}; }}\n\
             protocol bgp node1 from node {{ neighbor {n1} as 64512; password \"s3cret\"; }}\n\
             protocol bgp node2 from node {{ neighbor {n2} as 64512; password \"wrong\"; }}\n"
        ),
    )
    .unwrap();
    let sock = dir.join("bird.ctl");
    let tor = Command::new("ip")
        .args(["netns", "exec", &rt, "bird", "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _tor = common::Proc::new(tor); // killed on drop, whatever happens
                                       // The secret, where the agents read mounted secrets (`--secrets-dir`).
    let secret = lab.dir().join("secrets").join("tor-password");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("password"), "s3cret\n").unwrap();
    let peer = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\n\
                spec:\n  nodeSelector: \"lab/subnet == '192.168.1.0_24'\"\n  peerIP: 192.168.1.1\n  asNumber: 65000\n\
                \x20 password: {secretKeyRef: {name: tor-password, key: password}}\n";
    let file = dir.join("peer.yaml");
    std::fs::write(&file, peer).unwrap();
    let t = tools();
    let ctl = t.vrouterctl.to_string_lossy().into_owned();
    let o = lab
        .exec(&rt, &[&ctl, "--etcd-endpoints", &cluster::etcd_endpoints(&lab), "apply", "-f", &file.to_string_lossy()]);
    assert!(o.status.success(), "{}", common::text(&o));

    let established = || find_session(&lab, 1, "peer_tor").is_some_and(|p| p["bgp_state"] == "Established");
    let start = Instant::now();
    while !established() {
        assert!(start.elapsed() < Duration::from_secs(30), "node1's session with the ToR:\n{}", logs(&lab));
        std::thread::sleep(Duration::from_millis(50));
    }
    let inside: vrouter_core::fib::Ipv4Prefix = "10.244.250.0/24".parse().unwrap();
    wait("the ToR's pool prefix on node1", Duration::from_secs(10), || learned_nexthop(&lab, 1, inside).is_some());
    assert_eq!(learned_nexthop(&lab, 1, inside), Some("via 192.168.1.1".into()), "not a node: a plain next hop");
    let s = session(&lab, 1, "peer_tor");
    assert_eq!((s["routes"]["imported"].as_u64(), s["routes"]["filtered"].as_u64()), (Some(1), Some(1)), "{s}");
    let outside: vrouter_core::fib::Ipv4Prefix = "198.51.100.0/24".parse().unwrap();
    assert_eq!(learned_nexthop(&lab, 1, outside), None, "refused, not installed");
    // The table view says it too.
    let o = lab.exec(
        &lab.node(1).ns,
        &[&ctl, "node", "status", "--bird-socket", &bgp::files(&lab, 1).socket.to_string_lossy()],
    );
    let text = common::text(&o);
    let row = text.lines().find(|l| l.starts_with("192.168.1.1 ")).unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("external") && row.contains("Established"), "{text}");
    // node3 is not on that rack: no session with the ToR at all.
    assert!(find_session(&lab, 3, "peer_tor").is_none());

    // node2: the passwords differ, so the kernel drops the ToR's segments: never established.
    std::thread::sleep(Duration::from_secs(3));
    let s = session(&lab, 2, "peer_tor");
    assert_ne!(s["bgp_state"], "Established", "{s}");
    let why = s["diagnosis"].as_str().unwrap_or_default();
    assert!(why.contains("password"), "node status says why: {s}");
    assert!(learned_nexthop(&lab, 2, inside).is_none(), "nothing learned from it");
}

/// Five nodes on three subnets with the mesh off and nodes 1 and 2 as route reflectors: every
/// client has exactly the two reflectors as peers, the reflectors each other and every client,
/// and every node still learns every other node's block with the announcing node as next hop
/// (direct on its subnet, IPIP to another), so pods on clients reach each other through
/// routes that crossed a reflector.
#[test]
fn route_reflectors_carry_every_block_with_the_announcing_node_as_next_hop() {
    // As `vrouter lab up` scales it: five agents, ten pods and the reflectors' sessions.
    let o = LabOptions {
        bgp: true,
        nodes: 5,
        route_reflectors: 2,
        ready_timeout: Duration::from_secs(20 + 4 * 5),
        ..LabOptions::default()
    };
    let Some(lab) = common::cluster_lab(TOOLS, o) else { return };
    // Each node's sessions, by name, with their BGP state.
    let sessions = |st: &serde_json::Value| {
        let mut peers: Vec<(String, String)> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or_default().to_string(),
                    p["bgp_state"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        peers.sort();
        peers
    };
    for n in 1..=5u8 {
        let want: Vec<(String, String)> = match n {
            // The two reflectors share a cluster ID: plain iBGP between them.
            1 => vec!["mesh_node2", "rrclient_node3", "rrclient_node4", "rrclient_node5"],
            2 => vec!["mesh_node1", "rrclient_node3", "rrclient_node4", "rrclient_node5"],
            _ => vec!["rr_node1", "rr_node2"],
        }
        .into_iter()
        .map(|p| (p.to_string(), "Established".to_string()))
        .collect();
        // The lab is ready once every node has learned every block, which one reflector
        // suffices for: a session to the other may still be coming up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while sessions(&node_status(&lab, n)) != want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let st = node_status(&lab, n);
        assert_eq!(sessions(&st), want, "node{n}: {st}\n{}", logs(&lab));
    }
    // Client node5 (subnet 2, with node3) learns node4's block (subnet 1) through the
    // reflectors, next hop node4 itself, in IPIP; node3's directly.
    let (b3, b4) = (blocks_of(&lab, 3)[0], blocks_of(&lab, 4)[0]);
    let (ip3, ip4) = (lab.node(3).ip, lab.node(4).ip);
    assert_eq!(learned_nexthop(&lab, 5, b4), Some(format!("ipip to {ip4} via {}", lab.node(5).gateway)));
    assert_eq!(learned_nexthop(&lab, 5, b3), Some(format!("via {ip3}")));
    for (a, b) in [("5a", "4a"), ("5a", "3a"), ("4a", "1a")] {
        let o = ping(&lab, a, b);
        assert!(o.status.success(), "{a} -> {b}: {}\n{}", common::text(&o), logs(&lab));
    }
}

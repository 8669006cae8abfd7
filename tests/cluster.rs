//! The lab as a cluster (`vrouter lab --cluster`): a real etcd, an agent per node, pods wired
//! by the CNI plugin with addresses from IPAM. What the cluster promises, end to end: pods
//! reach each other in every mode (local, direct, IPIP) with routes and peers that nobody
//! wrote by hand; policy applied by label reaches every node; addresses stay consistent; the
//! agent and the daemon restart without breaking what runs; etcd going away changes nothing
//! in forwarding.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use vrouter::lab::{self, cluster, LabHandle, LabOptions};

const TOOLS: &[&str] = &["ip", "ping", "sysctl", "etcd", "etcdctl", "iperf3"];

fn up() -> Option<LabHandle> {
    up_with(1)
}

fn up_with(etcd_members: usize) -> Option<LabHandle> {
    common::cluster_lab(TOOLS, LabOptions { etcd_members, ..LabOptions::default() })
}

fn tools() -> cluster::Tools {
    cluster::Tools::beside(&PathBuf::from(env!("CARGO_BIN_EXE_vrouter"))).expect("tools")
}

/// `vrouterctl --etcd-endpoints <the lab's etcd> ARGS` (in the router namespace, where etcd is).
fn ctl(lab: &LabHandle, args: &[&str]) -> Output {
    let t = tools();
    let ctl = t.vrouterctl.to_string_lossy().into_owned();
    let eps = cluster::etcd_endpoints(lab);
    lab.exec(&lab.router_ns(), &[&[ctl.as_str(), "--etcd-endpoints", eps.as_str()], args].concat())
}

fn ctl_ok(lab: &LabHandle, args: &[&str]) -> String {
    let o = ctl(lab, args);
    assert!(o.status.success(), "vrouterctl {args:?}: {}\n{}", common::text(&o), logs(lab));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn node_ctl_json(lab: &LabHandle, node: u8, args: &[&str]) -> serde_json::Value {
    let sock = lab::topo::socket_path(lab.node(node));
    let o = common::vrouterctl().args(["-s", &sock, "--json"]).args(args).output().unwrap();
    assert!(o.status.success(), "vrouterctl {args:?} on node{node}: {}", common::text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn logs(lab: &LabHandle) -> String {
    let mut s = String::new();
    for n in 1..=3u8 {
        let name = &lab.node(n).name;
        s += &format!("--- {name} daemon:\n{}\n", lab.log_tail(n, 8));
        let agent = lab.dir().join(format!("{name}.agent.log"));
        let text = std::fs::read_to_string(&agent).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(8).collect();
        s += &format!("--- {name} agent:\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    s
}

/// `from` reaches `to`: one echo answered within 5 s (ping sends one a second until then, so a
/// first echo lost to a loaded machine or a neighbour still resolving is not the verdict).
fn ping(lab: &LabHandle, from: &str, to: &str) -> bool {
    let ip = lab.pod_ip(to).to_string();
    lab.exec(&lab.pod(from).ns, &["ping", "-c", "1", "-w", "5", &ip]).status.success()
}

/// `from`'s echo to `to` goes unanswered for a second (one echo: a policy denies it).
fn denied(lab: &LabHandle, from: &str, to: &str) -> bool {
    let ip = lab.pod_ip(to).to_string();
    !lab.exec(&lab.pod(from).ns, &["ping", "-c", "1", "-W", "1", &ip]).status.success()
}

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

#[test]
fn pods_wired_by_cni_get_ipam_addresses_reach_each_other_and_policy_by_label_applies() {
    let Some(lab) = up() else { return };
    let logs = || logs(&lab);

    // Addresses from the pool, each inside a block affine to the pod's node.
    let pool: vrouter_core::fib::Ipv4Prefix = cluster::POOL.parse().unwrap();
    for pod in lab.pods() {
        assert!(pool.contains(u32::from(pod.ip)), "pod {} got {} outside {pool}", pod.name, pod.ip);
        let shown = ctl_ok(&lab, &["ipam", "show", "--ip", &pod.ip.to_string()]);
        assert!(shown.contains("allocated"), "{shown}");
    }
    let blocks = ctl_ok(&lab, &["ipam", "show"]);
    for n in lab.nodes() {
        assert!(
            blocks.contains(&format!("host:{}", n.name)) || blocks.contains(&n.name),
            "no block of {}: {blocks}",
            n.name
        );
    }
    // Peers come from the Node resources: every node knows the two others.
    for n in 1..=3u8 {
        let peers = node_ctl_json(&lab, n, &["peers"]);
        assert_eq!(peers["peers"].as_array().map(Vec::len), Some(2), "node{n}: {peers}\n{}", logs());
    }

    // Every mode: same node, direct (one subnet), IPIP (across subnets).
    for (a, b) in [("1a", "1b"), ("1a", "2a"), ("2b", "1b"), ("1a", "3a"), ("3a", "2b")] {
        wait(&format!("{a} -> {b}\n{}", logs()), Duration::from_secs(10), || ping(&lab, a, b));
    }
    let ipip = |s: &serde_json::Value| {
        s["counters"]["ipip_encap"].as_u64() > Some(0) && s["counters"]["ipip_decap"].as_u64() > Some(0)
    };
    assert!(lab.wait_stats(3, Duration::from_secs(5), ipip), "node3 moved no IPIP: {}", lab.stats(3));

    // The lab's GlobalNetworkPolicy `guarded` (by label) holds on node 3: port 5202 denied,
    // other ports allowed.
    let server = lab.pod("3b").ns.clone();
    let mut srv = lab.spawn(&server, &["iperf3", "-s", "-p", "5201"], None).unwrap();
    let mut srv2 = lab.spawn(&server, &["iperf3", "-s", "-p", "5202"], None).unwrap();
    for port in [5201, 5202] {
        assert!(lab.wait_listening(&server, false, port, Duration::from_secs(10)), "iperf3 -s -p {port} in 3b");
    }
    let ip3b = lab.pod_ip("3b").to_string();
    let tcp = |port: &str| {
        lab.exec_timeout(
            &lab.pod("1a").ns,
            &["iperf3", "-c", &ip3b, "-p", port, "-t", "1", "--connect-timeout", "1500"],
            Duration::from_secs(10),
        )
        .status
        .success()
    };
    assert!(tcp("5201"), "TCP 5201 to the guarded pod must pass\n{}", logs());
    assert!(!tcp("5202"), "TCP 5202 to the guarded pod must be denied\n{}", logs());

    // A policy applied by label reaches every node: ICMP into every pod of namespace default
    // denied, then allowed again when it is deleted.
    let deny = lab.dir().join("deny-icmp.yaml");
    std::fs::write(
        &deny,
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: no-ping\n  namespace: default\nspec:\n  order: 10\n  selector: all()\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      protocol: ICMP\n    - action: Pass\n",
    )
    .unwrap();
    // The router namespace sees the file through the shared mount namespace.
    let out = ctl_ok(&lab, &["apply", "-f", &deny.to_string_lossy()]);
    assert!(out.contains("NetworkPolicy 'default/no-ping' created") && out.contains("datastore"), "{out}");
    for (a, b) in [("1a", "2a"), ("2a", "3a"), ("3b", "1b")] {
        wait(&format!("{a} -> {b} denied\n{}", logs()), Duration::from_secs(15), || denied(&lab, a, b));
    }
    assert!(tcp("5201"), "TCP still passes (Pass goes on to the profile's allow)\n{}", logs());
    ctl_ok(&lab, &["delete", "networkpolicy", "no-ping", "-n", "default"]);
    for (a, b) in [("1a", "2a"), ("2a", "3a"), ("3b", "1b")] {
        wait(&format!("{a} -> {b} allowed again\n{}", logs()), Duration::from_secs(15), || ping(&lab, a, b));
    }
    let check = ctl(&lab, &["ipam", "check"]);
    assert!(check.status.success(), "ipam check: {}", common::text(&check));
    let _ = (srv.kill(), srv2.kill(), srv.wait(), srv2.wait());
}

/// Sent/received of a finished `ping` whose output went to `log`.
fn ping_counts(log: &std::path::Path) -> (u32, u32) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let line =
        text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no ping summary: {text}"));
    let num = |word: &str| -> u32 {
        let w: Vec<&str> = line.split([',', ' ']).filter(|w| !w.is_empty()).collect();
        let i = w.iter().position(|x| *x == word).unwrap_or_else(|| panic!("{line}"));
        w[i - 1].parse().unwrap()
    };
    (num("packets"), num("received"))
}

/// A namespace for one more pod, deleted on drop.
struct ExtraNs(String);
impl Drop for ExtraNs {
    fn drop(&mut self) {
        let _ = common::sh(&["ip", "netns", "del", &self.0]);
    }
}

#[test]
fn restarts_and_an_etcd_outage_leave_forwarding_alone_and_the_cluster_heals() {
    let Some(mut lab) = up() else { return };
    let t = tools();
    let endpoints = |lab: &LabHandle, n: u8| {
        let mut v: Vec<String> = node_ctl_json(lab, n, &["endpoints"])["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{} {} {}", e["name"], e["addrs"], e["ingress"]))
            .collect();
        v.sort();
        v
    };
    for (a, b) in [("1a", "3a"), ("1a", "2a")] {
        wait(&format!("{a} -> {b}\n{}", logs(&lab)), Duration::from_secs(10), || ping(&lab, a, b));
    }

    // 1. Agents killed and restarted under a running flow: not one packet lost, nothing changed.
    let before: Vec<_> = (1..=3).map(|n| endpoints(&lab, n)).collect();
    let log = lab.dir().join("flow.ping");
    let target = lab.pod_ip("3a").to_string();
    let mut flow =
        lab.spawn(&lab.pod("1a").ns, &["ping", "-i", "0.02", "-c", "150", "-W", "1", &target], Some(&log)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    cluster::kill(&lab, cluster::Service::Agent(1)).unwrap();
    cluster::kill(&lab, cluster::Service::Agent(3)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cluster::start_agent(&lab, &t, 1).unwrap();
    cluster::start_agent(&lab, &t, 3).unwrap();
    flow.wait().unwrap();
    let (sent, got) = ping_counts(&log);
    assert_eq!((sent, got), (150, 150), "packets lost while agents restarted\n{}", logs(&lab));
    std::thread::sleep(Duration::from_millis(1500)); // the restarted agents' first reconcile
    let after: Vec<_> = (1..=3).map(|n| endpoints(&lab, n)).collect();
    assert_eq!(before, after, "a restarted agent changed the nodes' pods");

    // 2. A daemon restarted on its own file (no pods in it) gets its full state back from
    //    the agent: pods' TAPs recreated in their namespaces, policies, peers. The lab runs
    //    BGP with BFD, so the restart is the planned one docs/bgp.md gives (BFD drained
    //    first); a plain one is a dead node to the peers, whose BIRDs may wait out their
    //    reconnect timers longer than this test does before they take node2's block back.
    vrouter::lab::bgp::planned_vrouter_restart(&mut lab, &t, 2).unwrap();
    wait(&format!("node2's pods back\n{}", logs(&lab)), Duration::from_secs(10), || endpoints(&lab, 2) == before[1]);
    for (a, b) in [("1a", "2a"), ("2b", "3b")] {
        wait(&format!("{a} -> {b} after node2's restart\n{}", logs(&lab)), Duration::from_secs(10), || {
            ping(&lab, a, b)
        });
    }

    // 3. etcd gone: forwarding unchanged, a new pod's ADD fails clearly, agents keep retrying.
    cluster::kill(&lab, cluster::Service::Etcd).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    for (a, b) in [("1a", "2b"), ("2a", "3b"), ("3a", "1b")] {
        assert!(ping(&lab, a, b), "{a} -> {b} with etcd down\n{}", logs(&lab));
    }
    assert_eq!((1..=3).map(|n| endpoints(&lab, n)).collect::<Vec<_>>(), before, "etcd's outage changed a node");
    let extra = ExtraNs(format!("{}-px", lab.prefix()));
    common::ok(&["ip", "netns", "add", &extra.0]);
    common::ok(&["ip", "-n", &extra.0, "link", "set", "lo", "up"]);
    let pod = vrouter::lab::LabPod {
        name: "x1".into(),
        ns: extra.0.clone(),
        node: 1,
        ip: "0.0.0.0".parse().unwrap(),
        mac: String::new(),
        ingress: vec![],
    };
    let err = cluster::add_pod(&lab, &t, &pod).expect_err("ADD with etcd down").to_string();
    assert!(err.contains("\"code\":11") && err.contains("etcd"), "{err}");
    let agents = sysinfo_agents(&lab);
    assert_eq!(agents, 3, "every agent keeps running through the outage\n{}", logs(&lab));

    // etcd back (same data): agents resync; the new pod's ADD works and it forwards; no
    // endpoint lost, no address leaked or doubled.
    cluster::start_etcd(&lab, false).unwrap();
    let wired = {
        let mut r = cluster::add_pod(&lab, &t, &pod);
        let end = Instant::now() + Duration::from_secs(10);
        while r.is_err() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(200));
            r = cluster::add_pod(&lab, &t, &pod);
        }
        r.unwrap_or_else(|e| panic!("ADD after etcd came back: {e}\n{}", logs(&lab)))
    };
    let ip2a = lab.pod_ip("2a").to_string();
    wait(&format!("new pod {} -> 2a\n{}", wired.ip, logs(&lab)), Duration::from_secs(10), || {
        lab.exec(&extra.0, &["ping", "-c", "1", "-W", "1", &ip2a]).status.success()
    });
    let check = ctl(&lab, &["ipam", "check"]);
    assert!(check.status.success(), "ipam check: {}", common::text(&check));
    cluster::del_pod(&lab, &t, &pod).unwrap();
    cluster::del_pod(&lab, &t, &pod).expect("DEL is idempotent");
    let check = ctl(&lab, &["ipam", "check"]);
    assert!(check.status.success(), "ipam check after DEL: {}", common::text(&check));
    let shown = ctl_ok(&lab, &["ipam", "show", "--ip", &wired.ip.to_string()]);
    assert!(shown.contains("free"), "{shown}");
    for n in 1..=3 {
        assert_eq!(endpoints(&lab, n), before[n as usize - 1], "node{n}'s pods after the outage");
    }
}

/// Agents running in the lab's router namespace.
fn sysinfo_agents(lab: &LabHandle) -> usize {
    let out = common::sh(&["ip", "netns", "pids", &lab.router_ns()]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.contains("vrouter-agent"))
        })
        .count()
}

#[test]
fn a_three_member_etcd_loses_one_member_without_effect_and_all_three_without_harm() {
    let Some(lab) = up_with(3) else { return };
    let t = tools();
    for (a, b) in [("1a", "2a"), ("2b", "3a")] {
        wait(&format!("{a} -> {b}\n{}", logs(&lab)), Duration::from_secs(10), || ping(&lab, a, b));
    }
    let policy = lab.dir().join("no-ping.yaml");
    std::fs::write(
        &policy,
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: no-ping\nspec:\n  selector: all()\n  ingress:\n    - action: Deny\n      protocol: ICMP\n    - action: Allow\n",
    )
    .unwrap();

    // One member gone (the first, the one every client lists first): once the other two
    // have a leader (an election if member 0 led, which a client waits out for 4 s and a busy
    // CI machine has taken longer), writes, watches and policy go on through them.
    cluster::kill(&lab, cluster::Service::EtcdMember(0)).unwrap();
    cluster::wait_etcd_members(&lab, &[1, 2]).unwrap();
    ctl_ok(&lab, &["apply", "-f", &policy.to_string_lossy()]);
    for (a, b) in [("1a", "2a"), ("2b", "3a")] {
        wait(&format!("{a} -> {b} denied with a member down\n{}", logs(&lab)), Duration::from_secs(10), || {
            denied(&lab, a, b)
        });
    }
    ctl_ok(&lab, &["delete", "gnp", "no-ping"]);
    for (a, b) in [("1a", "2a"), ("2b", "3a")] {
        wait(&format!("{a} -> {b} allowed again\n{}", logs(&lab)), Duration::from_secs(10), || ping(&lab, a, b));
    }

    // All gone: forwarding unchanged; back: the cluster heals (member 0 rejoins on its data).
    cluster::kill(&lab, cluster::Service::Etcd).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    for (a, b) in [("1a", "2b"), ("3b", "1b")] {
        assert!(ping(&lab, a, b), "{a} -> {b} with every etcd member down\n{}", logs(&lab));
    }
    cluster::start_etcd(&lab, false).unwrap();
    ctl_ok(&lab, &["apply", "-f", &policy.to_string_lossy()]);
    // (3b is guarded by an ordered policy that allows ICMP first: no-ping, unordered, comes after.)
    wait(&format!("policy after the cluster came back\n{}", logs(&lab)), Duration::from_secs(15), || {
        denied(&lab, "1a", "3a")
    });
    let check = ctl(&lab, &["ipam", "check"]);
    assert!(check.status.success(), "ipam check: {}", common::text(&check));
    let _ = t;
}

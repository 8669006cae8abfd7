//! Node intents for the cluster shapes Calico documents: the default mesh, route reflectors
//! with the mesh off, top-of-rack peers by node selector, node peers by address; plus AS
//! defaults, deduplication, passwords and names.

use std::cell::Cell;
use std::collections::BTreeMap;

use super::*;
use crate::desired::{BlockInfo, EndpointInfo, PoolInfo};
use crate::resource::{parse_manifests, Resource};
use vrouter_types::{IpipMode, Ipv4Prefix};

fn a(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn p(s: &str) -> Ipv4Prefix {
    s.parse().unwrap()
}

fn node(name: &str, ip: &str) -> NodeInfo {
    NodeInfo { name: name.into(), ip: Some(a(ip)), ..Default::default() }
}

fn labelled(name: &str, ip: &str, labels: &[(&str, &str)]) -> NodeInfo {
    let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    NodeInfo { labels, ..node(name, ip) }
}

/// Adds the BGPConfigurations and BGPPeers of `yaml` to `i`.
fn with(mut i: Inputs, yaml: &str) -> Inputs {
    for r in parse_manifests(yaml).unwrap_or_else(|e| panic!("{e}")) {
        match r {
            Resource::BgpConfiguration(c) => i.bgp_configs.push(c),
            Resource::BgpPeer(b) => i.bgp_peers.push(b),
            r => panic!("not a BGP resource: {r:?}"),
        }
    }
    i
}

fn cluster(nodes: Vec<NodeInfo>) -> Inputs {
    Inputs {
        nodes,
        pools: vec![
            PoolInfo { cidr: p("10.244.0.0/16"), ipip: IpipMode::Never },
            PoolInfo { cidr: p("10.99.0.0/16"), ipip: IpipMode::Always },
        ],
        ..Default::default()
    }
}

fn params() -> BgpParams {
    BgpParams { kernel_table: 100, device: "vrhost".into(), bfd: BfdTiming::default() }
}

fn no_secrets(r: &SecretKeyRef) -> Result<String, String> {
    Err(format!("no secrets in this test ({r})"))
}

fn intent(i: &Inputs, me: &str) -> BgpIntent {
    node_intent(i, me, &params(), &no_secrets).unwrap_or_else(|e| panic!("{me}: {e}"))
}

/// (name, ip, asn, role) of each session.
fn sessions(b: &BgpIntent) -> Vec<(String, String, u32, PeerRole)> {
    b.peers.iter().map(|s| (s.name.clone(), s.ip.to_string(), s.asn, s.role)).collect()
}

fn s(name: &str, ip: &str, asn: u32, role: PeerRole) -> (String, String, u32, PeerRole) {
    (name.into(), ip.into(), asn, role)
}

const BGPCONFIG: &str = "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n";

#[test]
fn the_default_mesh_peers_every_other_node_with_an_address() {
    let mut i = cluster(vec![node("n1", "192.168.1.1"), node("n2", "192.168.1.2"), node("n3", "192.168.2.3")]);
    i.nodes.push(NodeInfo { name: "n4".into(), ..Default::default() });
    i.blocks = vec![
        BlockInfo { cidr: p("10.244.0.0/26"), node: Some("n1".into()) },
        BlockInfo { cidr: p("10.99.0.0/26"), node: Some("n1".into()) },
        BlockInfo { cidr: p("10.244.0.64/26"), node: Some("n2".into()) },
    ];
    let b = intent(&i, "n1");
    assert_eq!(
        sessions(&b),
        [s("n2", "192.168.1.2", 64512, PeerRole::Mesh), s("n3", "192.168.2.3", 64512, PeerRole::Mesh)]
    );
    assert!(b.peers.iter().all(|s| s.bfd && s.password.is_none()));
    assert_eq!((b.node.as_str(), b.node_ip, b.asn), ("n1", a("192.168.1.1"), 64512));
    assert_eq!(b.export_blocks, [p("10.99.0.0/26"), p("10.244.0.0/26")]);
    assert_eq!(b.pools, [p("10.99.0.0/16"), p("10.244.0.0/16")]);
    assert_eq!((b.kernel_table, b.device.as_str(), b.bfd), (100, "vrhost", BfdTiming::default()));
    assert_eq!((b.graceful_restart_secs, b.route_reflector_cluster_id), (120, None));
}

#[test]
fn disabled_pools_still_bound_what_is_accepted_and_borrowed_addresses_are_announced() {
    let mut i = cluster(vec![node("n1", "192.168.1.1"), node("n2", "192.168.1.2")]);
    i.pools.push(PoolInfo { cidr: p("10.50.0.0/16"), ipip: IpipMode::Never });
    i.blocks = vec![BlockInfo { cidr: p("10.244.0.0/26"), node: Some("n2".into()) }];
    // n1's pod holds an address of n2's block: n1 announces it as a /32.
    i.endpoints = vec![EndpointInfo {
        key: "default/x".into(),
        node: "n1".into(),
        addrs: vec![a("10.244.0.7")],
        mac: None,
        tap: "t".into(),
        ifname: "eth0".into(),
        netns: None,
        mtu: None,
    }];
    let b = intent(&i, "n1");
    assert!(b.pools.contains(&p("10.50.0.0/16")));
    assert_eq!(b.export_blocks, [p("10.244.0.7/32")]);
    assert_eq!(intent(&i, "n2").export_blocks, [p("10.244.0.0/26")]);
}

#[test]
fn as_numbers_come_from_the_node_else_the_default_config_else_64512() {
    let mut i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3")]);
    i.nodes[2].asn = Some(65003);
    assert_eq!(intent(&i, "n1").asn, 64512);
    let i = with(i, &format!("{BGPCONFIG}spec: {{asNumber: 65000}}\n"));
    let b = intent(&i, "n1");
    assert_eq!(b.asn, 65000);
    assert_eq!(sessions(&b), [s("n2", "10.0.0.2", 65000, PeerRole::Mesh), s("n3", "10.0.0.3", 65003, PeerRole::Mesh)]);
    assert_eq!(intent(&i, "n3").asn, 65003);
    // A node's config does not set the AS (only `default` may).
    let node_cfg =
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: node.n1}\nspec: {asNumber: 1}\n";
    assert!(parse_manifests(node_cfg).unwrap_err().message.contains("logSeverityScreen only"));
}

#[test]
fn mesh_off_without_peers_leaves_no_sessions() {
    let i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]);
    let i = with(i, &format!("{BGPCONFIG}spec: {{nodeToNodeMeshEnabled: false}}\n"));
    assert!(intent(&i, "n1").peers.is_empty());
}

const RR_PEERING: &str = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
";

/// 50 nodes, the mesh off, 2 reflectors (one cluster ID) and 48 clients, with the one BGPPeer
/// Calico's route reflector guide applies: every client peers with both reflectors, each
/// reflector with the other and with every client, and every session has its other end.
#[test]
fn two_route_reflectors_serve_48_clients_with_one_bgppeer() {
    let mut nodes = Vec::new();
    for k in 0..2 {
        let mut n = labelled(&format!("rr-{k}"), &format!("10.0.0.{}", k + 1), &[("route-reflector", "true")]);
        n.rr_cluster_id = Some(a("224.0.0.1"));
        nodes.push(n);
    }
    for k in 0..48 {
        nodes.push(node(&format!("w-{k:02}"), &format!("10.0.1.{}", k + 1)));
    }
    let i = with(cluster(nodes), &format!("{BGPCONFIG}spec: {{nodeToNodeMeshEnabled: false}}\n---\n{RR_PEERING}"));

    let client = intent(&i, "w-07");
    assert_eq!(
        sessions(&client),
        [s("rr_0", "10.0.0.1", 64512, PeerRole::Reflector), s("rr_1", "10.0.0.2", 64512, PeerRole::Reflector)]
    );
    assert!(client.peers.iter().all(|s| s.bfd));
    assert_eq!(client.route_reflector_cluster_id, None);

    let rr = intent(&i, "rr-0");
    assert_eq!(rr.route_reflector_cluster_id, Some(a("224.0.0.1")));
    assert_eq!(rr.peers.len(), 49);
    let clients: Vec<_> = rr.peers.iter().filter(|s| s.role == PeerRole::ReflectorClient).collect();
    assert_eq!(clients.len(), 48);
    assert_eq!((clients[0].name.as_str(), clients[0].ip), ("w_00", a("10.0.1.1")));
    let other: Vec<_> = sessions(&rr).into_iter().filter(|x| x.3 != PeerRole::ReflectorClient).collect();
    assert_eq!(other, [s("rr_1", "10.0.0.2", 64512, PeerRole::Mesh)]);

    // Every session has its other end, with the roles mirrored.
    let all: BTreeMap<Ipv4Addr, BgpIntent> = i.nodes.iter().map(|n| (n.ip.unwrap(), intent(&i, &n.name))).collect();
    let mut count = 0;
    for (ip, b) in &all {
        for peer in &b.peers {
            let back = all[&peer.ip].peers.iter().find(|x| x.ip == *ip).expect("the other end");
            let mirrored = match peer.role {
                PeerRole::Reflector => PeerRole::ReflectorClient,
                PeerRole::ReflectorClient => PeerRole::Reflector,
                r => r,
            };
            assert_eq!(back.role, mirrored, "{} -> {}", b.node, peer.name);
            count += 1;
        }
    }
    assert_eq!(count, 2 * 48 * 2 + 2);
}

#[test]
fn a_tor_peer_by_node_selector_goes_to_its_rack_only() {
    let i = cluster(vec![
        labelled("n1", "10.0.1.1", &[("rack", "r1")]),
        labelled("n2", "10.0.1.2", &[("rack", "r1")]),
        labelled("n3", "10.0.2.3", &[("rack", "r2")]),
    ]);
    let tor = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor-r1}
spec:
  nodeSelector: rack == 'r1'
  peerIP: 10.0.1.254
  asNumber: 65100
";
    let i = with(i, tor);
    let b = intent(&i, "n1");
    assert_eq!(
        sessions(&b),
        [
            s("n2", "10.0.1.2", 64512, PeerRole::Mesh),
            s("n3", "10.0.2.3", 64512, PeerRole::Mesh),
            s("tor_r1", "10.0.1.254", 65100, PeerRole::External),
        ]
    );
    assert!(!b.peers[2].bfd, "BFD is off towards a router by default");
    assert!(!intent(&i, "n3").peers.iter().any(|s| s.role == PeerRole::External));
    // The same by node name.
    let i = with(
        cluster(vec![node("n1", "10.0.1.1"), node("n2", "10.0.1.2")]),
        &tor.replace("nodeSelector: rack == 'r1'", "node: n2"),
    );
    assert!(!intent(&i, "n1").peers.iter().any(|s| s.role == PeerRole::External));
    assert!(intent(&i, "n2").peers.iter().any(|s| s.name == "tor_r1"));
}

#[test]
fn a_peer_ip_that_is_a_node_is_that_node_and_it_peers_back() {
    let mut i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3")]);
    i.nodes[0].rr_cluster_id = Some(a("1.1.1.1"));
    let peer = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: n1-to-n2}
spec: {node: n1, peerIP: 10.0.0.2, asNumber: 64512}
";
    let i = with(i, &format!("{BGPCONFIG}spec: {{nodeToNodeMeshEnabled: false}}\n---\n{peer}"));
    // n1 is a reflector, n2 not: n2 is n1's client, n1 n2's reflector.
    assert_eq!(sessions(&intent(&i, "n1")), [s("n2", "10.0.0.2", 64512, PeerRole::ReflectorClient)]);
    assert_eq!(sessions(&intent(&i, "n2")), [s("n1", "10.0.0.1", 64512, PeerRole::Reflector)]);
    assert!(intent(&i, "n3").peers.is_empty());
    // Manual: n2 needs its own BGPPeer.
    let mut manual = i.clone();
    let Resource::BgpPeer(b) = &parse_manifests(&peer.replace("64512}", "64512, reversePeering: Manual}")).unwrap()[0]
    else {
        panic!()
    };
    manual.bgp_peers = vec![b.clone()];
    assert_eq!(intent(&manual, "n1").peers.len(), 1);
    assert!(intent(&manual, "n2").peers.is_empty());
    // Not n2's AS: no reverse peering (the address is not that node's speaker).
    let other_as = with(Inputs { bgp_peers: vec![], ..i.clone() }, &peer.replace("asNumber: 64512", "asNumber: 65000"));
    assert!(intent(&other_as, "n2").peers.is_empty());
}

#[test]
fn one_session_per_address_explicit_before_mesh_and_never_to_itself() {
    let i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]);
    let yaml = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: to-n2}
spec: {node: n1, peerIP: 10.0.0.2, asNumber: 64512, maxRestartTime: 30s}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: a-scoped}
spec: {node: n1, peerIP: 10.0.0.9, asNumber: 65001}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: z-global}
spec: {peerIP: 10.0.0.9, asNumber: 65002}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: self}
spec: {peerIP: 10.0.0.1, asNumber: 64512}
";
    let i = with(i, yaml);
    let b = intent(&i, "n1");
    // n2 once (the explicit peering, not the mesh); 10.0.0.9 once, from the BGPPeer for every
    // node (as confd); none to n1's own address.
    assert_eq!(
        sessions(&b),
        [s("n2", "10.0.0.2", 64512, PeerRole::Mesh), s("z_global", "10.0.0.9", 65002, PeerRole::External)]
    );
    // n2 has n1 by the reverse of `to-n2` and of `self` (n1's address and AS): one session.
    let b2 = intent(&i, "n2");
    assert_eq!(b2.peers.iter().filter(|s| s.ip == a("10.0.0.1")).count(), 1);
}

#[test]
fn passwords_are_read_once_per_secret_and_an_unreadable_one_is_an_error() {
    let i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3")]);
    let i = with(
        i,
        &format!(
            "{BGPCONFIG}spec: {{nodeMeshPassword: {{secretKeyRef: {{name: bgp-secrets, key: mesh}}}}}}\n---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {{name: tor}}
spec: {{peerIP: 10.0.0.254, asNumber: 65100, password: {{secretKeyRef: {{name: bgp-secrets, key: tor}}}}}}
"
        ),
    );
    let calls = Cell::new(0);
    let read = |r: &SecretKeyRef| {
        calls.set(calls.get() + 1);
        Ok(format!("pw-{}", r.key))
    };
    let b = node_intent(&i, "n1", &params(), &read).unwrap();
    let pw: Vec<_> = b.peers.iter().map(|s| (s.name.as_str(), s.password.as_deref())).collect();
    assert_eq!(pw, [("n2", Some("pw-mesh")), ("n3", Some("pw-mesh")), ("tor", Some("pw-tor"))]);
    assert_eq!(calls.get(), 2);
    let e = node_intent(&i, "n1", &params(), &|r: &SecretKeyRef| {
        if r.key == "tor" {
            Err("no such file".into())
        } else {
            Ok("x".into())
        }
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "BGPPeer 'tor' spec.password: cannot read the password from secret 'bgp-secrets' key 'tor': no such file"
    );
    let e = node_intent(&i, "n1", &params(), &|r: &SecretKeyRef| {
        if r.key == "mesh" {
            Err("gone".into())
        } else {
            Ok("x".into())
        }
    })
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "BGPConfiguration 'default' spec.nodeMeshPassword: cannot read the password from secret 'bgp-secrets' key 'mesh': gone"
    );
    // A secret no session of this node needs is not read.
    let mut solo = i.clone();
    solo.nodes.truncate(1);
    solo.bgp_peers.clear();
    assert!(node_intent(&solo, "n1", &params(), &no_secrets).unwrap().peers.is_empty());
}

#[test]
fn graceful_restart_is_the_longest_any_session_asks_for() {
    let i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]);
    let i = with(i, &format!("{BGPCONFIG}spec: {{nodeMeshMaxRestartTime: 5m0s}}\n"));
    assert_eq!(intent(&i, "n1").graceful_restart_secs, 300);
    let tor = "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65100, maxRestartTime: 600s}\n";
    assert_eq!(intent(&with(i.clone(), tor), "n1").graceful_restart_secs, 600);
    // Shorter than the mesh's: the mesh's stays.
    assert_eq!(intent(&with(i, &tor.replace("600s", "1s")), "n1").graceful_restart_secs, 300);
    let none =
        with(cluster(vec![node("n1", "10.0.0.1")]), &format!("{BGPCONFIG}spec: {{nodeMeshMaxRestartTime: 0s}}\n"));
    assert_eq!(intent(&none, "n1").graceful_restart_secs, 0);
}

fn is_bird_symbol(s: &str) -> bool {
    s.len() <= NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[test]
fn session_names_are_bird_symbols_unique_and_stable() {
    let long = format!("{}.example", "a".repeat(60));
    let i = cluster(vec![
        node("n1", "10.0.0.1"),
        node("a-b", "10.0.0.2"),
        node("a.b", "10.0.0.3"),
        node("node-4.example.com", "10.0.0.4"),
        node(&long, "10.0.0.5"),
    ]);
    let b = intent(&i, "n1");
    let names: Vec<&str> = b.peers.iter().map(|s| s.name.as_str()).collect();
    assert!(names.iter().all(|n| is_bird_symbol(n)), "{names:?}");
    assert!(names.contains(&"node_4_example_com"), "{names:?}");
    let set: BTreeSet<_> = names.iter().collect();
    assert_eq!(set.len(), names.len(), "{names:?}");
    // The two that sanitise alike both carry their own digest.
    let ab: Vec<_> = names.iter().filter(|n| n.starts_with("a_b_")).collect();
    assert_eq!(ab.len(), 2, "{names:?}");
    // The same inputs, in another order, give the same names.
    let mut shuffled = i.clone();
    shuffled.nodes.reverse();
    assert_eq!(intent(&shuffled, "n1"), b);
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sessions are sorted by name");
}

#[test]
fn a_node_without_resource_or_address_has_no_intent() {
    let mut i = cluster(vec![node("n1", "10.0.0.1")]);
    i.nodes.push(NodeInfo { name: "n2".into(), ..Default::default() });
    let e = node_intent(&i, "n9", &params(), &no_secrets).unwrap_err();
    assert_eq!(e, BgpIntentError::UnknownNode { node: "n9".into() });
    let e = node_intent(&i, "n2", &params(), &no_secrets).unwrap_err();
    assert!(e.to_string().contains("spec.bgp.ipv4Address"), "{e}");
}

#[test]
fn the_log_level_is_the_nodes_else_the_clusters_else_info() {
    let i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2")]);
    assert_eq!(log_severity(&i, "n1"), LogSeverity::Info);
    let i = with(
        i,
        &format!(
            "{BGPCONFIG}spec: {{logSeverityScreen: Warning}}\n---\napiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {{name: node.n2}}\nspec: {{logSeverityScreen: Debug}}\n"
        ),
    );
    assert_eq!(log_severity(&i, "n1"), LogSeverity::Warning);
    assert_eq!(log_severity(&i, "n2"), LogSeverity::Debug);
    assert_eq!(LogSeverity::Debug.bird_debug(), crate::resource::BirdDebug::All);
    assert_eq!(LogSeverity::Info.bird_debug(), crate::resource::BirdDebug::States);
    assert_eq!(LogSeverity::Error.bird_debug(), crate::resource::BirdDebug::Off);
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("vrouter-bgp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn secrets_are_read_from_mounted_files() {
    let dir = TempDir::new("secrets");
    std::fs::create_dir_all(dir.0.join("bgp")).unwrap();
    std::fs::write(dir.0.join("bgp/mesh"), "s3cret\n").unwrap();
    std::fs::write(dir.0.join("bgp/raw"), "exact").unwrap();
    std::fs::write(dir.0.join("bgp/empty"), "\n").unwrap();
    let r = |name: &str, key: &str| SecretKeyRef { name: name.into(), key: key.into() };
    assert_eq!(read_secret(&dir.0, &r("bgp", "mesh")), Ok("s3cret".into()));
    assert_eq!(read_secret(&dir.0, &r("bgp", "raw")), Ok("exact".into()));
    assert!(read_secret(&dir.0, &r("bgp", "empty")).unwrap_err().contains("empty"));
    let e = read_secret(&dir.0, &r("bgp", "missing")).unwrap_err();
    assert!(e.contains("bgp/missing"), "{e}");
    assert!(read_secret(&dir.0, &r("..", "mesh")).is_err());
    assert!(read_secret(&dir.0, &r("bgp", "../bgp/mesh")).is_err());
}

#[test]
fn a_node_about_to_restart_gracefully_has_bfd_drained_on_both_ends_of_its_sessions() {
    let mut i = cluster(vec![node("n1", "10.0.0.1"), node("n2", "10.0.0.2"), node("n3", "10.0.0.3")]);
    i.nodes[2].bgp_restart = true;
    let bfd = |b: &BgpIntent| b.peers.iter().map(|s| (s.name.clone(), s.bfd)).collect::<Vec<_>>();
    // The others keep BFD with each other, not with n3.
    assert_eq!(bfd(&intent(&i, "n1")), [("n2".to_string(), true), ("n3".to_string(), false)]);
    assert_eq!(bfd(&intent(&i, "n2")), [("n1".to_string(), true), ("n3".to_string(), false)]);
    // n3 itself runs none.
    assert!(intent(&i, "n3").peers.iter().all(|s| !s.bfd));
    i.nodes[2].bgp_restart = false;
    assert!(intent(&i, "n1").peers.iter().all(|s| s.bfd), "back on once the restart is over");
}

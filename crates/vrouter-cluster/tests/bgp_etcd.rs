//! BGPConfiguration and BGPPeer through a real etcd (started by `testing::Etcd`): stored under
//! Calico's keys, read back as written, re-applied unchanged, and a node's BGP intent built
//! from what was listed.

use vrouter_bgp::{BfdTiming, PeerRole};
use vrouter_cluster::bgp::{node_intent, BgpParams};
use vrouter_cluster::datastore::{Datastore, Written};
use vrouter_cluster::desired::{Inputs, NodeInfo};
use vrouter_cluster::resource::{parse_manifests, Kind, Resource, SecretKeyRef};
use vrouter_cluster::store::Store;
use vrouter_cluster::testing::Etcd;

const MANIFESTS: &str = "
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: rr-a, labels: {route-reflector: 'true'}}
spec: {bgp: {ipv4Address: 10.0.0.1/24, routeReflectorClusterID: 224.0.0.1}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: worker-1}
spec: {bgp: {ipv4Address: 10.0.0.11/24}}
---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 65010, nodeMeshMaxRestartTime: 90s}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: peer-with-route-reflectors}
spec: {nodeSelector: all(), peerSelector: route-reflector == 'true'}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec:
  peerIP: 10.0.0.254
  asNumber: 65000
  password: {secretKeyRef: {name: bgp, key: tor}}
";

#[tokio::test]
async fn bgp_resources_round_trip_through_etcd_and_give_a_nodes_intent() {
    let etcd = Etcd::start();
    let store = Store::connect(&etcd.endpoints()).await.expect("connect to the test etcd");
    let ds = Datastore::new(store.clone());
    let resources = parse_manifests(MANIFESTS).unwrap();
    for r in &resources {
        assert!(matches!(ds.create(r).await.unwrap(), Written::Created(_)), "{}", r.display_name());
    }
    for r in &resources {
        assert!(matches!(ds.apply(r).await.unwrap(), Written::Unchanged(_)), "{}", r.display_name());
    }
    for key in [
        "/calico/resources/v3/projectcalico.org/bgpconfigurations/default",
        "/calico/resources/v3/projectcalico.org/bgppeers/tor",
        "/calico/resources/v3/projectcalico.org/bgppeers/peer-with-route-reflectors",
    ] {
        assert!(store.get(key).await.unwrap().is_some(), "{key} not stored");
    }

    let mut i = Inputs::default();
    for kind in Kind::ALL {
        for r in ds.list(kind, None).await.unwrap() {
            let mut written = resources.iter().find(|w| w.kind() == r.kind() && w.name() == r.name()).unwrap().clone();
            written.set_resource_version(r.resource_version());
            assert_eq!(r, written);
            match r {
                Resource::Node(n) => i.nodes.push(NodeInfo::of(&n)),
                Resource::BgpConfiguration(c) => i.bgp_configs.push(c),
                Resource::BgpPeer(p) => i.bgp_peers.push(p),
                _ => {}
            }
        }
    }
    assert_eq!((i.nodes.len(), i.bgp_configs.len(), i.bgp_peers.len()), (2, 1, 2));

    let params = BgpParams { kernel_table: 100, device: "vrhost".into(), bfd: BfdTiming::default() };
    let secret = |r: &SecretKeyRef| Ok(format!("{}-{}", r.name, r.key));
    let b = node_intent(&i, "worker-1", &params, &secret).unwrap();
    assert_eq!(b.asn, 65010);
    let got: Vec<_> = b.peers.iter().map(|s| (s.name.as_str(), s.role, s.asn, s.password.as_deref())).collect();
    assert_eq!(got, [("rr_a", PeerRole::Reflector, 65010, None), ("tor", PeerRole::External, 65000, Some("bgp-tor"))]);
    assert_eq!(b.graceful_restart_secs, 120, "no mesh session: the peers' default");
    let rr = node_intent(&i, "rr-a", &params, &secret).unwrap();
    assert!(rr.peers.iter().any(|s| s.name == "worker_1" && s.role == PeerRole::ReflectorClient));
}

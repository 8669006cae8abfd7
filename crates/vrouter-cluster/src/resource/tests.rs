//! Manifests as Calico's documentation writes them parse unchanged; every refused field is
//! named with its reason; errors carry document, kind/name, path and valid values; stored and
//! printed forms round-trip.

use super::*;
use crate::selector::Selector;
use std::collections::BTreeMap;
use vrouter_types::IpipMode;

fn one(text: &str) -> Resource {
    let mut v = parse_manifests(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn fails(text: &str) -> ManifestError {
    match parse_manifests(text) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e,
    }
}

/// Asserts the error is at `path` and its message contains each of `needles`.
fn fails_at(text: &str, path: &str, needles: &[&str]) -> ManifestError {
    let e = fails(text);
    assert_eq!(e.path, path, "{e}");
    for n in needles {
        assert!(e.to_string().contains(n), "'{n}' not in: {e}");
    }
    e
}

const IPPOOL: &str = "
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: my.ippool-1
spec:
  cidr: 10.1.0.0/16
  ipipMode: CrossSubnet
  natOutgoing: false
  disabled: false
  nodeSelector: all()
";

const NODE: &str = "
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: node-hostname
  labels:
    rack: r1
spec:
  bgp:
    asNumber: 64512
    ipv4Address: 10.244.0.1/24
    routeReflectorClusterID: 224.0.0.1
";

// Calico's documented example, with containerID quoted (unquoted, YAML reads that many digits
// as a float).
const WEP: &str = "
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-my--nginx--b1337a-eth0
  namespace: default
  labels:
    app: frontend
    projectcalico.org/namespace: default
    projectcalico.org/orchestrator: k8s
spec:
  node: node1
  orchestrator: k8s
  endpoint: eth0
  containerID: '1337495556942031415926535'
  pod: my-nginx-b1337a
  interfaceName: cali0ef24ba
  mac: ca:fe:1d:52:bb:e9
  ipNetworks:
  - 192.168.0.0/32
  profiles:
  - profile1
  ports:
  - name: some-port
    port: 1234
    protocol: TCP
  - name: another-port
    port: 5432
    protocol: UDP
";

const NP: &str = "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-tcp-6379
  namespace: production
spec:
  selector: role == 'database'
  types:
  - Ingress
  - Egress
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports:
      - 6379
  egress:
  - action: Allow
";

const GNP: &str = "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: allow-tcp-6379
spec:
  selector: role == 'database'
  types:
  - Ingress
  - Egress
  ingress:
  - action: Allow
    metadata:
      annotations:
        from: frontend
        to: database
    protocol: TCP
    source:
      selector: role == 'frontend'
    destination:
      ports:
      - 6379
  egress:
  - action: Allow
";

const PROFILE: &str = "
apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.default
spec:
  ingress:
  - action: Allow
  egress:
  - action: Allow
  labelsToApply:
    pcns.projectcalico.org/name: default
";

// Calico's documented examples (bindMode and the mesh password added).
const BGPCONFIG: &str = "
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  logSeverityScreen: Info
  nodeToNodeMeshEnabled: true
  nodeMeshMaxRestartTime: 120s
  asNumber: 63400
  bindMode: None
  nodeMeshPassword:
    secretKeyRef:
      name: bgp-secrets
      key: mesh-password
";

const BGPPEER: &str = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: some.name
spec:
  node: rack1-host1
  peerIP: 192.168.1.1
  asNumber: 63400
  password:
    secretKeyRef:
      name: bgp-secrets
      key: rr-password
  maxRestartTime: 2m30s
  sourceAddress: UseNodeIP
  keepOriginalNextHop: false
";

const RR_PEER: &str = "
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: route-reflector == 'true'
  nextHopMode: Auto
  reversePeering: Manual
";

#[test]
fn calico_doc_ippool_parses_with_defaults() {
    let Resource::IpPool(p) = one(IPPOOL) else { panic!() };
    assert_eq!(p.metadata.name, "my.ippool-1");
    assert_eq!(p.spec.cidr.to_string(), "10.1.0.0/16");
    assert_eq!(p.spec.block_size, 26);
    assert_eq!(p.spec.ipip_mode, IpipMode::CrossSubnet);
    assert!(!p.spec.nat_outgoing && !p.spec.disabled);
    // Calico's docs write natOutgoing: true; vrouter cannot masquerade, so it says so.
    let e = parse_manifests(&IPPOOL.replace("natOutgoing: false", "natOutgoing: true")).unwrap_err();
    assert_eq!(e.path, "spec.natOutgoing");
    assert!(e.message.contains("no source NAT"), "{e}");
    assert_eq!(p.spec.node_selector, Selector::All);
    let Resource::IpPool(d) =
        one("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/8}")
    else {
        panic!()
    };
    assert_eq!((d.spec.block_size, d.spec.ipip_mode), (26, IpipMode::Never));
}

#[test]
fn calico_doc_node_parses() {
    let Resource::Node(n) = one(NODE) else { panic!() };
    let bgp = n.spec.bgp.unwrap();
    let a = bgp.ipv4_address.unwrap();
    assert_eq!((a.ip.to_string(), a.subnet().to_string()), ("10.244.0.1".into(), "10.244.0.0/24".into()));
    assert_eq!(bgp.as_number, Some(64512));
    assert_eq!(n.metadata.labels["rack"], "r1");
    let asdot = one(&NODE.replace("64512", "'1.10'"));
    let Resource::Node(n) = asdot else { panic!() };
    assert_eq!(n.spec.bgp.unwrap().as_number, Some(65536 + 10));
}

#[test]
fn calico_doc_workload_endpoint_parses() {
    let Resource::WorkloadEndpoint(w) = one(WEP) else { panic!() };
    assert_eq!(w.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(w.spec.node, "node1");
    assert_eq!(w.spec.interface_name.as_deref(), Some("cali0ef24ba"));
    assert_eq!(w.spec.mac.unwrap().to_string(), "ca:fe:1d:52:bb:e9");
    assert_eq!(w.spec.ip_networks[0].to_string(), "192.168.0.0/32");
    assert_eq!(w.spec.ports[1], EndpointPort { name: "another-port".into(), protocol: Protocol::UDP, port: 5432 });
    assert_eq!(w.spec.container_id.as_deref(), Some("1337495556942031415926535"));
}

#[test]
fn calico_doc_policies_and_profile_parse() {
    let Resource::NetworkPolicy(p) = one(NP) else { panic!() };
    assert_eq!(p.metadata.namespace.as_deref(), Some("production"));
    assert_eq!(p.spec.types, vec![PolicyType::Ingress, PolicyType::Egress]);
    let r = &p.spec.ingress[0];
    assert_eq!((r.action, r.protocol), (RuleAction::Allow, Some(Protocol::TCP)));
    assert_eq!(r.source.selector, Some(Selector::parse("role == 'frontend'").unwrap()));
    assert_eq!(r.destination.ports, vec![Port::Range(PortRange::single(6379))]);
    assert!(p.spec.egress[0].is_unconditional());
    let Resource::GlobalNetworkPolicy(g) = one(GNP) else { panic!() };
    assert_eq!(g.spec.ingress[0].metadata.as_ref().unwrap().annotations["to"], "database");
    let Resource::Profile(pr) = one(PROFILE) else { panic!() };
    assert_eq!(pr.spec.labels_to_apply["pcns.projectcalico.org/name"], "default");
    assert_eq!(pr.spec.ingress.len(), 1);
}

use vrouter_types::acl::PortRange;

#[test]
fn every_rule_field_parses() {
    let r = one(r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: all-fields}
spec:
  order: 10.5
  selector: has(app)
  namespaceSelector: team == "a"
  ingress:
  - action: Pass
    protocol: UDP
    notProtocol: TCP
    ipVersion: 4
    source: {nets: [10.0.0.0/8], notNets: [10.1.0.0/16], selector: a == 'b', notSelector: c == 'd', namespaceSelector: all(), ports: [53, "1000:2000", dns], notPorts: [1500]}
  - action: Deny
    protocol: ICMP
    icmp: {type: 3, code: 4}
    notICMP: {type: 8}
  - action: deny
    protocol: 47
  doNotTrack: false
  preDNAT: false
  applyOnForward: false
  tier: default
"#);
    let Resource::GlobalNetworkPolicy(g) = r else { panic!() };
    assert_eq!(g.spec.order, Some(10.5));
    assert_eq!(g.spec.types, vec![PolicyType::Ingress]);
    let s = &g.spec.ingress[0].source;
    assert_eq!(
        s.ports,
        vec![
            Port::Range(PortRange::single(53)),
            Port::Range(PortRange::new(1000, 2000).unwrap()),
            Port::Named("dns".into())
        ]
    );
    assert_eq!(g.spec.ingress[1].icmp, Some(Icmp { type_: 3, code: Some(4) }));
    assert_eq!(g.spec.ingress[1].not_icmp, Some(Icmp { type_: 8, code: None }));
    assert_eq!(g.spec.ingress[2].protocol, Some(Protocol(47)));
}

#[test]
fn types_default_as_calicos_client() {
    let ty = |spec: &str| {
        let text =
            format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p}}\nspec: {spec}");
        let Resource::GlobalNetworkPolicy(g) = one(&text) else { panic!() };
        g.spec.types
    };
    use PolicyType::*;
    assert_eq!(ty("{}"), vec![Ingress]);
    assert_eq!(ty("{ingress: [{action: Allow}]}"), vec![Ingress]);
    assert_eq!(ty("{egress: [{action: Allow}]}"), vec![Egress]);
    assert_eq!(ty("{ingress: [{action: Deny}], egress: [{action: Allow}]}"), vec![Ingress, Egress]);
    assert_eq!(ty("{types: [Egress]}"), vec![Egress]);
    fails_at(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {types: [Egress], ingress: [{action: Allow}]}",
        "spec.ingress",
        &["does not include Ingress"],
    );
}

#[test]
fn unsupported_calico_fields_are_refused_by_name_with_the_reason() {
    let pool = |extra: &str| format!("{IPPOOL}  {extra}\n");
    fails_at(
        &pool("vxlanMode: Always"),
        "spec.vxlanMode",
        &["Always is not supported", "IPIP only", "vxlanMode: Never"],
    );
    one(&pool("vxlanMode: Never"));
    fails_at(&pool("vxlanMode: Sometimes"), "spec.vxlanMode", &["valid values: Always, CrossSubnet, Never"]);
    fails_at(&pool("disableBGPExport: true"), "spec.disableBGPExport", &["not supported", "BGP"]);
    fails_at(&pool("ipip: {enabled: true}"), "spec.ipip", &["use spec.ipipMode"]);
    fails_at(&pool("allowedUses: [Tunnel]"), "spec.allowedUses", &["must include Workload"]);
    fails_at(&pool("allowedUses: [Workload, LoadBalancer]"), "spec.allowedUses[1]", &["LoadBalancer is not supported"]);
    fails_at(
        &pool("allowedUses: [Workloads]"),
        "spec.allowedUses[0]",
        &["valid values: Workload, Tunnel, LoadBalancer"],
    );
    one(&pool("allowedUses: [Workload]"));
    one(&pool("allowedUses: [Workload, Tunnel]"));
    fails_at(&format!("{NODE}    ipv6Address: 2001:db8::1/120\n"), "spec.bgp.ipv6Address", &["IPv4 only"]);
    fails_at(
        &format!("{NODE}    ipv4IPIPTunnelAddr: 192.168.0.1\n"),
        "spec.bgp.ipv4IPIPTunnelAddr",
        &["not supported"],
    );
    fails_at(&format!("{NODE}  wireguard: {{}}\n"), "spec.wireguard", &["WireGuard"]);
    fails_at(&format!("{WEP}  ipNATs: []\n"), "spec.ipNATs", &["NAT"]);
    fails_at(&format!("{WEP}  serviceAccountName: default\n"), "spec.serviceAccountName", &["service account"]);
    fails_at(
        &WEP.replace("    protocol: UDP", "    protocol: UDP\n    hostPort: 80"),
        "spec.ports[1].hostPort",
        &["host port"],
    );
    fails_at(
        &NP.replace("  - action: Allow\n    protocol", "  - action: Log\n    protocol"),
        "spec.ingress[0].action",
        &["Log is not supported", "cannot log", "Allow, Deny, Pass"],
    );
    fails_at(&format!("{NP}  serviceAccountSelector: all()\n"), "spec.serviceAccountSelector", &["not supported"]);
    fails_at(&format!("{NP}  doNotTrack: false\n"), "spec.doNotTrack", &["GlobalNetworkPolicy"]);
    fails_at(&format!("{GNP}  doNotTrack: true\n"), "spec.doNotTrack", &["true is not supported"]);
    fails_at(&format!("{GNP}  preDNAT: true\n"), "spec.preDNAT", &["DNAT"]);
    fails_at(&format!("{GNP}  tier: security\n"), "spec.tier", &["one tier"]);
    fails_at(
        &NP.replace("    protocol: TCP", "    protocol: TCP\n    http: {methods: [GET]}"),
        "spec.ingress[0].http",
        &["HTTP"],
    );
    fails_at(
        &NP.replace("    protocol: TCP", "    protocol: TCP\n    ipVersion: 6"),
        "spec.ingress[0].ipVersion",
        &["IPv4 only"],
    );
    fails_at(
        &NP.replace("      - 6379", "      - 6379\n      serviceAccounts: {names: [a]}"),
        "spec.ingress[0].destination.serviceAccounts",
        &["service account"],
    );
    fails_at(
        &NP.replace("      - 6379", "      - 6379\n      notPorts: [http]"),
        "spec.ingress[0].destination.notPorts[0]",
        &["named ports are not supported in notPorts"],
    );
    fails_at(&NP.replace("    protocol: TCP", "    protocol: ICMPv6"), "spec.ingress[0].protocol", &["IPv4 only"]);
    fails_at(
        &NP.replace("  name: allow-tcp-6379", "  generateName: x-"),
        "metadata.generateName",
        &["explicit metadata.name"],
    );
    fails_at(&format!("{IPPOOL}status: {{}}\n"), "status", &["written by the system"]);
    fails_at(
        &PROFILE.replace("  ingress:\n  - action: Allow", "  ingress:\n  - action: Deny"),
        "spec.ingress",
        &["single `- action: Allow`"],
    );
}

#[test]
fn unknown_fields_are_refused_with_the_valid_fields() {
    let e =
        fails_at(&format!("{IPPOOL}  blocksize: 24\n"), "spec.blocksize", &["unknown field", "blockSize", "ipipMode"]);
    assert_eq!(e.document, 1);
    fails_at(
        &NP.replace("      ports:", "      port:"),
        "spec.ingress[0].destination.port",
        &["valid fields here: nets, notNets"],
    );
    fails_at(
        &NP.replace("kind: NetworkPolicy", "kind: NetworkPolicy\nextra: 1"),
        "extra",
        &["apiVersion, kind, metadata, spec"],
    );
    // namespaceSelector at the top of a NetworkPolicy is not a Calico field.
    fails_at(&format!("{NP}  namespaceSelector: all()\n"), "spec.namespaceSelector", &["unknown field"]);
}

#[test]
fn errors_name_document_kind_name_path_and_valid_values() {
    let text = format!("{IPPOOL}---\n{}", NP.replace("      - 6379", "      - 6379\n      - 99999"));
    let e = fails(&text);
    assert_eq!(e.document, 2);
    assert_eq!(e.kind.as_deref(), Some("NetworkPolicy"));
    assert_eq!(e.name.as_deref(), Some("production/allow-tcp-6379"));
    assert_eq!(e.path, "spec.ingress[0].destination.ports[1]");
    assert_eq!(
        e.to_string(),
        "document 2 (NetworkPolicy 'production/allow-tcp-6379'): spec.ingress[0].destination.ports[1]: expected an \
         integer 0..=65535, found 99999"
    );
    fails_at(&NP.replace("TCP", "GRE"), "spec.ingress[0].protocol", &["valid values: TCP, UDP, ICMP, SCTP, UDPLite"]);
    fails_at(
        &NP.replace("role == 'frontend'", "role = 'frontend'"),
        "spec.ingress[0].source.selector",
        &["column 6", "=="],
    );
    fails_at(
        &NP.replace("action: Allow\n    protocol", "action: Permit\n    protocol"),
        "spec.ingress[0].action",
        &["valid values: Allow, Deny, Pass"],
    );
    fails_at(&NP.replace("projectcalico.org/v3", "projectcalico.org/v1"), "apiVersion", &["projectcalico.org/v3"]);
    fails_at(&NP.replace("kind: NetworkPolicy", "kind: HostEndpoint"), "kind", &["valid kinds: Node, IPPool"]);
    fails_at(&NP.replace("      - 6379", "      - 10:5"), "spec.ingress[0].destination.ports[0]", &["lo <= hi"]);
    fails_at(&NP.replace("      - 6379", "      - Web_Port"), "spec.ingress[0].destination.ports[0]", &["port name"]);
    fails_at(
        &NP.replace("    protocol: TCP\n", ""),
        "spec.ingress[0].destination.ports",
        &["ports need protocol TCP, UDP or SCTP", "none"],
    );
    fails_at(
        &NP.replace("    protocol: TCP\n", "    protocol: ICMP\n    icmp: {code: 1}\n"),
        "spec.ingress[0].icmp.type",
        &["required"],
    );
    fails_at(
        &NP.replace("    protocol: TCP\n", "    protocol: UDP\n    icmp: {type: 8}\n")
            .replace("      ports:\n      - 6379\n", ""),
        "spec.ingress[0].icmp",
        &["needs protocol ICMP"],
    );
    fails_at(
        &NP.replace("    protocol: TCP\n", "    protocol: ICMP\n    icmp: {type: 255}\n"),
        "spec.ingress[0].icmp.type",
        &["0..=254"],
    );
    fails_at(&NP.replace("allow-tcp-6379", "Allow_TCP"), "metadata.name", &["DNS-1123"]);
    fails_at(&NP.replace("production", "prod.a"), "metadata.namespace", &["DNS-1123 label"]);
    fails_at(
        &IPPOOL.replace("  name: my.ippool-1", "  name: p\n  namespace: x"),
        "metadata.namespace",
        &["cluster-scoped"],
    );
    fails_at(&NODE.replace("rack: r1", "rack: 1"), "metadata.labels.rack", &["quote it"]);
    fails_at(&NODE.replace("rack: r1", "rack: -bad-"), "metadata.labels.rack", &["invalid label value"]);
    fails_at(
        &NP.replace("  namespace: production", "  namespace: production\n  resourceVersion: abc"),
        "metadata.resourceVersion",
        &["decimal revision"],
    );
    let e = fails("apiVersion: projectcalico.org/v3\nkind: [\n");
    assert!(e.path.is_empty() && e.message.contains("YAML"), "{e}");
}

#[test]
fn cidrs_and_block_sizes_are_checked() {
    fails_at(&IPPOOL.replace("10.1.0.0/16", "10.1.0.1/16"), "spec.cidr", &["host bits", "10.1.0.0/16"]);
    fails_at(&IPPOOL.replace("10.1.0.0/16", "fd00::/64"), "spec.cidr", &["IPv4 only"]);
    let bs = |n: &str| format!("{IPPOOL}  blockSize: {n}\n");
    fails_at(&bs("19"), "spec.blockSize", &["20..=32"]);
    fails_at(&bs("33"), "spec.blockSize", &["20..=32"]);
    let Resource::IpPool(p) = one(&bs("32")) else { panic!() };
    assert_eq!(p.spec.block_size, 32);
    fails_at(
        &bs("22").replace("10.1.0.0/16", "10.1.0.0/24"),
        "spec.blockSize",
        &["shorter than the pool's prefix /24", "24..=32"],
    );
    fails_at(&WEP.replace("192.168.0.0/32", "192.168.0.0/24"), "spec.ipNetworks[0]", &["a.b.c.d/32"]);
    fails_at(
        &NP.replace("      ports:\n      - 6379", "      nets: [10.0.0.1/8]"),
        "spec.ingress[0].destination.nets[0]",
        &["host bits"],
    );
}

#[test]
fn multi_document_yaml_json_streams_and_lists() {
    let all = [NODE, IPPOOL, WEP, NP, GNP, PROFILE, BGPCONFIG, BGPPEER].join("---\n");
    let rs = parse_manifests(&format!("---\n{all}---\n")).unwrap();
    let kinds: Vec<Kind> = rs.iter().map(Resource::kind).collect();
    assert_eq!(kinds, Kind::ALL.to_vec());
    // JSON: the printed manifests, as a stream and as a List; YAML List as calicoctl prints.
    let json: Vec<String> = rs.iter().map(|r| r.to_manifest().to_string()).collect();
    assert_eq!(parse_manifests(&json.join("\n")).unwrap(), rs);
    let list = format!(r#"{{"apiVersion":"projectcalico.org/v3","kind":"List","items":[{}]}}"#, json.join(","));
    assert_eq!(parse_manifests(&list).unwrap(), rs);
    let typed = "apiVersion: projectcalico.org/v3\nkind: IPPoolList\nmetadata: {resourceVersion: '7'}\nitems:\n- metadata: {name: a}\n  spec: {cidr: 10.0.0.0/16}\n- apiVersion: projectcalico.org/v3\n  kind: IPPool\n  metadata: {name: b}\n  spec: {cidr: 10.1.0.0/16}\n";
    let pools = parse_manifests(typed).unwrap();
    assert_eq!(pools.iter().map(Resource::name).collect::<Vec<_>>(), vec!["a", "b"]);
    let e = fails(&typed.replace("  kind: IPPool\n", "  kind: Node\n"));
    assert_eq!(e.path, "items[1].kind");
    let e = fails(&typed.replace("{cidr: 10.1.0.0/16}", "{cidr: 10.1.0.0/16, x: 1}"));
    assert_eq!((e.document, e.path.as_str()), (1, "items[1].spec.x"));
    assert!(parse_manifests("").unwrap().is_empty());
    assert!(parse_manifests("---\n---\n").unwrap().is_empty());
}

#[test]
fn stored_form_and_manifest_round_trip() {
    let all = [NODE, IPPOOL, WEP, NP, GNP, PROFILE, BGPCONFIG, BGPPEER, RR_PEER].join("---\n");
    for mut r in parse_manifests(&all).unwrap() {
        let stored = r.to_stored_json();
        let v: serde_json::Value = serde_json::from_slice(&stored).unwrap();
        assert!(v["metadata"].get("resourceVersion").is_none());
        let back = Resource::from_stored(r.kind(), &stored, 42).unwrap();
        r.set_resource_version(Some(42));
        assert_eq!(back, r);
        let m = r.to_manifest();
        assert_eq!(m["metadata"]["resourceVersion"], "42");
        assert_eq!(m["apiVersion"], API_VERSION);
        let yaml = serde_yaml_ng::to_string(&m).unwrap();
        assert_eq!(parse_manifests(&yaml).unwrap(), vec![r.clone()], "{yaml}");
        assert_eq!(r.table_row().len(), r.kind().table_header().len());
        let wrong = if r.kind() == Kind::Node { Kind::Profile } else { Kind::Node };
        assert!(Resource::from_stored(wrong, &stored, 1).is_err());
    }
}

#[test]
fn keys_kinds_and_metadata_defaults() {
    let Resource::NetworkPolicy(p) = one(&NP.replace("  namespace: production\n", "")) else { panic!() };
    assert_eq!(p.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(one(NP).key(), "/calico/resources/v3/projectcalico.org/networkpolicies/production/allow-tcp-6379");
    assert_eq!(one(IPPOOL).key(), "/calico/resources/v3/projectcalico.org/ippools/my.ippool-1");
    let with_server_fields = NP.replace(
        "  namespace: production\n",
        "  namespace: production\n  uid: 3d8a0e4c-1b1e-4f1a-9a39-6c1a0b1e1f00\n  creationTimestamp: '2024-01-01T00:00:00Z'\n  resourceVersion: '1234'\n",
    );
    let r = one(&with_server_fields);
    assert_eq!(r.resource_version(), Some(1234));
    assert_eq!(r.to_manifest()["metadata"].get("uid"), None);
    for (s, k) in [
        ("nodes", Kind::Node),
        ("IPPool", Kind::IpPool),
        ("ippools", Kind::IpPool),
        ("wep", Kind::WorkloadEndpoint),
        ("workloadEndpoints", Kind::WorkloadEndpoint),
        ("netpol", Kind::NetworkPolicy),
        ("policy", Kind::NetworkPolicy),
        ("gnp", Kind::GlobalNetworkPolicy),
        ("GlobalNetworkPolicies", Kind::GlobalNetworkPolicy),
        ("profiles", Kind::Profile),
        ("BGPConfiguration", Kind::BgpConfiguration),
        ("bgpconfigs", Kind::BgpConfiguration),
        ("bgpconfig", Kind::BgpConfiguration),
        ("bgppeers", Kind::BgpPeer),
        ("BGPPeer", Kind::BgpPeer),
        ("bp", Kind::BgpPeer),
    ] {
        assert_eq!(s.parse::<Kind>(), Ok(k), "{s}");
    }
    assert!("hostendpoint".parse::<Kind>().unwrap_err().contains("valid kinds"));
    assert_eq!(Kind::GlobalNetworkPolicy.plural(), "globalnetworkpolicies");
    assert!(Kind::WorkloadEndpoint.namespaced() && !Kind::Profile.namespaced());
    assert_eq!(one(BGPCONFIG).key(), "/calico/resources/v3/projectcalico.org/bgpconfigurations/default");
    assert_eq!(one(BGPPEER).key(), "/calico/resources/v3/projectcalico.org/bgppeers/some.name");
    assert!(!Kind::BgpConfiguration.namespaced() && !Kind::BgpPeer.namespaced());
    fails_at(
        &BGPPEER.replace("  name: some.name", "  name: p\n  namespace: x"),
        "metadata.namespace",
        &["cluster-scoped"],
    );
}

#[test]
fn manifests_are_told_apart_from_node_toml() {
    assert!(is_manifest(NP));
    assert!(is_manifest(&format!("{IPPOOL}---\n{NODE}")));
    assert!(is_manifest(&one(NP).to_manifest().to_string()));
    // Broken YAML that is plainly a manifest still goes to the manifest parser.
    assert!(is_manifest("apiVersion: projectcalico.org/v3\nkind: [\n"));
    let toml = "[node]\nname = \"n1\"\nip = \"10.0.0.1\"\n\n[[endpoints]]\nname = \"web\"\n";
    assert!(!is_manifest(toml));
    assert!(!is_manifest("node:\n  name: x\n"));
    assert!(!is_manifest(""));
}

proptest::proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in "\\PC{0,200}") {
        let _ = parse_manifests(&s);
        let _ = is_manifest(&s);
    }

    /// Valid manifests with random edits (characters YAML and JSON care about) are refused or
    /// accepted, never a panic.
    #[test]
    fn edited_manifests_never_panic(
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0usize..4, proptest::sample::select(vec![":", "{", "}", "[", "]", "-", "'", "\"", "\n", " ", "0", "a", "/", "---\n", "*", "&a "])), 1..6),
    ) {
        let mut text = [NODE, IPPOOL, WEP, NP, GNP, PROFILE, BGPCONFIG, BGPPEER].join("---\n");
        for (at, del, ins) in edits {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            let mut j = (i + del).min(text.len());
            while !text.is_char_boundary(j) {
                j -= 1;
            }
            text.replace_range(i..j, ins);
        }
        if let Err(e) = parse_manifests(&text) {
            proptest::prop_assert!(e.document >= 1);
        }
    }
}

/// What `calicoctl get ippool -o yaml` prints for a default pool re-applies as is.
#[test]
fn calicoctl_get_output_reapplies() {
    let text = r#"
apiVersion: projectcalico.org/v3
items:
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata:
    creationTimestamp: "2024-03-01T10:00:00Z"
    name: default-ipv4-ippool
    resourceVersion: "693"
    uid: 0f4b0b8c-8d43-4c43-9a6e-2b1f4d5e6a7b
  spec:
    allowedUses:
    - Workload
    - Tunnel
    blockSize: 26
    cidr: 192.168.0.0/16
    ipipMode: Always
    natOutgoing: false
    nodeSelector: all()
    vxlanMode: Never
kind: IPPoolList
metadata:
  resourceVersion: "700"
"#;
    let rs = parse_manifests(text).unwrap();
    let Resource::IpPool(p) = &rs[0] else { panic!() };
    assert_eq!((p.metadata.resource_version, p.spec.ipip_mode), (Some(693), IpipMode::Always));
}

#[test]
fn calico_doc_bgp_configuration_parses() {
    let Resource::BgpConfiguration(c) = one(BGPCONFIG) else { panic!() };
    let spec = &c.spec;
    assert_eq!(spec.log_severity_screen, Some(LogSeverity::Info));
    assert!(spec.mesh_enabled());
    assert_eq!((spec.as_number, spec.default_as_number()), (Some(63400), 63400));
    assert_eq!(spec.node_mesh_max_restart_time.map(GoDuration::rounded_secs), Some(120));
    let r = &spec.node_mesh_password.as_ref().unwrap().secret_key_ref;
    assert_eq!((r.name.as_str(), r.key.as_str()), ("bgp-secrets", "mesh-password"));
    // Absent fields take Calico's defaults.
    let Resource::BgpConfiguration(d) =
        one("apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\n")
    else {
        panic!()
    };
    assert!(d.spec.mesh_enabled());
    assert_eq!(d.spec.default_as_number(), 64512);
    assert_eq!(d.spec.node_mesh_max_restart_time, None);
    // A node's configuration: its log level only.
    let Resource::BgpConfiguration(n) = one(
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: node.rack1-host1}\nspec: {logSeverityScreen: Debug}\n",
    ) else {
        panic!()
    };
    assert_eq!(n.spec.log_severity_screen, Some(LogSeverity::Debug));
}

#[test]
fn calico_doc_bgp_peers_parse() {
    let Resource::BgpPeer(p) = one(BGPPEER) else { panic!() };
    assert_eq!(p.spec.nodes, PeerNodes::Node("rack1-host1".into()));
    assert_eq!(p.spec.peer, PeerTarget::Ip { ip: "192.168.1.1".parse().unwrap(), as_number: 63400 });
    assert_eq!(p.spec.password.as_ref().unwrap().secret_key_ref.key, "rr-password");
    assert_eq!(p.spec.max_restart_time.map(GoDuration::rounded_secs), Some(150));
    assert_eq!(p.spec.reverse_peering, ReversePeering::Auto);
    let Resource::BgpPeer(rr) = one(RR_PEER) else { panic!() };
    assert_eq!(rr.spec.nodes, PeerNodes::Selector(Selector::All));
    assert_eq!(rr.spec.peer, PeerTarget::Selector(Selector::parse("route-reflector == 'true'").unwrap()));
    assert_eq!(rr.spec.reverse_peering, ReversePeering::Manual);
    let global = one(&BGPPEER.replace("  node: rack1-host1\n", ""));
    let Resource::BgpPeer(g) = &global else { panic!() };
    assert_eq!(g.spec.nodes, PeerNodes::All);
    let labels = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
    assert!(g.spec.applies_to("any", &BTreeMap::new()));
    assert!(p.spec.applies_to("rack1-host1", &BTreeMap::new()) && !p.spec.applies_to("other", &BTreeMap::new()));
    let by_rack = one(&BGPPEER.replace("node: rack1-host1", "nodeSelector: rack == 'r1'"));
    let Resource::BgpPeer(r) = &by_rack else { panic!() };
    assert!(r.spec.applies_to("x", &labels("rack", "r1")) && !r.spec.applies_to("x", &labels("rack", "r2")));
    // asdot AS numbers, as on a Node.
    let Resource::BgpPeer(d) = one(&BGPPEER.replace("asNumber: 63400", "asNumber: '1.10'")) else { panic!() };
    assert!(matches!(d.spec.peer, PeerTarget::Ip { as_number: 65546, .. }));
}

#[test]
fn bgp_fields_vrouter_does_not_honour_are_refused_by_name_with_the_reason() {
    let cfg = |extra: &str| format!("{BGPCONFIG}  {extra}\n");
    for (field, value, needle) in [
        ("serviceClusterIPs", "[{cidr: 10.96.0.0/12}]", "Service addresses"),
        ("serviceExternalIPs", "[{cidr: 1.2.3.0/24}]", "Service addresses"),
        ("serviceLoadBalancerIPs", "[{cidr: 1.2.4.0/24}]", "Service addresses"),
        ("serviceLoadBalancerAggregation", "Enabled", "Service addresses"),
        ("communities", "[{name: a, value: '1:2'}]", "communities"),
        ("prefixAdvertisements", "[]", "communities"),
        ("listenPort", "1790", "179"),
        ("ignoredInterfaces", "[eth1]", "device routes"),
        ("localWorkloadPeeringIPV4", "169.254.0.179", "pods"),
        ("localWorkloadPeeringIPV6", "fe80::179", "pods"),
    ] {
        fails_at(&cfg(&format!("{field}: {value}")), &format!("spec.{field}"), &["is not supported", needle]);
    }
    fails_at(&BGPCONFIG.replace("bindMode: None", "bindMode: NodeIP"), "spec.bindMode", &["every address", "None"]);
    fails_at(&BGPCONFIG.replace("bindMode: None", "bindMode: All"), "spec.bindMode", &["valid values: None, NodeIP"]);
    fails_at(&BGPCONFIG.replace("Info", "info"), "spec.logSeverityScreen", &["Debug, Info, Warning, Error, Fatal"]);
    fails_at(&BGPCONFIG.replace("name: default", "name: global"), "metadata.name", &["'default'", "node.<node name>"]);
    fails_at(
        &BGPCONFIG.replace("name: default", "name: node.rack1-host1"),
        "spec.asNumber",
        &["logSeverityScreen only", "BGPConfiguration 'default'"],
    );
    fails_at(&BGPCONFIG.replace("120s", "2h"), "spec.nodeMeshMaxRestartTime", &["at most 4095s", "RFC 4724"]);
    fails_at(&BGPCONFIG.replace("120s", "'120'"), "spec.nodeMeshMaxRestartTime", &["not a duration", "120s"]);
    fails_at(&BGPCONFIG.replace("120s", "120"), "spec.nodeMeshMaxRestartTime", &["duration string"]);
    fails_at(&BGPCONFIG.replace("asNumber: 63400", "asNumber: 0"), "spec.asNumber", &["1..=4294967295"]);
    fails_at(
        &BGPCONFIG.replace("key: mesh-password", "key: mesh-password\n      optional: true"),
        "spec.nodeMeshPassword.secretKeyRef.optional",
        &["cannot be read"],
    );
    fails_at(
        &BGPCONFIG.replace("key: mesh-password", "key: a/b"),
        "spec.nodeMeshPassword.secretKeyRef.key",
        &["not a Secret key"],
    );
    fails_at(
        &BGPCONFIG.replace("    secretKeyRef:\n      name: bgp-secrets\n      key: mesh-password\n", "    {}\n"),
        "spec.nodeMeshPassword.secretKeyRef",
        &["is required"],
    );

    let peer = |extra: &str| format!("{BGPPEER}  {extra}\n");
    for (field, value, needle) in [
        ("localASNumber", "65000", "one AS number"),
        ("numAllowedLocalASNumbers", "1", "loop prevention"),
        ("ttlSecurity", "1", "TTL security"),
        ("reachableBy", "10.0.0.1", "static route"),
        ("filters", "[f]", "BGPFilter"),
        ("localWorkloadSelector", "all()", "pods"),
    ] {
        fails_at(&peer(&format!("{field}: {value}")), &format!("spec.{field}"), &["is not supported", needle]);
    }
    fails_at(
        &BGPPEER.replace("sourceAddress: UseNodeIP", "sourceAddress: None"),
        "spec.sourceAddress",
        &["node's address", "UseNodeIP"],
    );
    fails_at(
        &BGPPEER.replace("keepOriginalNextHop: false", "keepOriginalNextHop: true"),
        "spec.keepOriginalNextHop",
        &["not supported"],
    );
    fails_at(&peer("nextHopMode: Self"), "spec.nextHopMode", &["Self is not supported", "Auto"]);
    fails_at(&peer("nextHopMode: Keep"), "spec.nextHopMode", &["Keep is not supported"]);
    fails_at(&peer("reversePeering: Sometimes"), "spec.reversePeering", &["valid values: Auto, Manual"]);
    fails_at(&BGPPEER.replace("192.168.1.1", "192.168.1.1:1179"), "spec.peerIP", &["port is not supported"]);
    fails_at(&BGPPEER.replace("192.168.1.1", "2001:db8::1"), "spec.peerIP", &["IPv4 only"]);
    fails_at(&BGPPEER.replace("192.168.1.1", "192.168.1"), "spec.peerIP", &["IPv4 address"]);
    fails_at(&BGPPEER.replace("2m30s", "5000s"), "spec.maxRestartTime", &["at most 4095s"]);
}

#[test]
fn bgp_peers_are_validated_as_calico_does() {
    fails_at(&format!("{BGPPEER}  nodeSelector: all()\n"), "spec.node", &["spec.nodeSelector", "one or the other"]);
    fails_at(&format!("{BGPPEER}  peerSelector: all()\n"), "spec.peerIP", &["spec.peerSelector"]);
    fails_at(
        &BGPPEER.replace("  peerIP: 192.168.1.1\n  asNumber: 63400\n", ""),
        "spec",
        &["needs a peer", "peerIP", "peerSelector"],
    );
    fails_at(&BGPPEER.replace("  asNumber: 63400\n", ""), "spec.asNumber", &["required with spec.peerIP"]);
    fails_at(&format!("{RR_PEER}  asNumber: 64512\n"), "spec.asNumber", &["its own AS number"]);
    fails_at(&BGPPEER.replace("rack1-host1", "Rack1"), "spec.node", &["DNS-1123"]);
    fails_at(
        &RR_PEER.replace("route-reflector == 'true'", "route-reflector = 'true'"),
        "spec.peerSelector",
        &["bad selector"],
    );
    fails_at("apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\n", "spec", &["is required"]);
}

#[test]
fn bgp_table_rows_are_calicoctls_columns() {
    assert_eq!(Kind::BgpConfiguration.table_header(), ["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"]);
    assert_eq!(one(BGPCONFIG).table_row(), ["default", "Info", "true", "63400"]);
    assert_eq!(Kind::BgpPeer.table_header(), ["NAME", "PEERIP", "NODE", "ASN"]);
    assert_eq!(one(BGPPEER).table_row(), ["some.name", "192.168.1.1", "rack1-host1", "63400"]);
    assert_eq!(one(RR_PEER).table_row(), ["peer-with-route-reflectors", "route-reflector == \"true\"", "all()", ""]);
    let global = one(&BGPPEER.replace("  node: rack1-host1\n", ""));
    assert_eq!(global.table_row()[2], "(global)");
}

#[test]
fn bgp_resources_print_calicos_fields_and_only_what_means_something() {
    let m = one(BGPPEER).to_manifest();
    let spec = &m["spec"];
    assert_eq!(spec["peerIP"], "192.168.1.1");
    assert_eq!(spec["asNumber"], 63400);
    assert_eq!(spec["maxRestartTime"], "2m30s");
    assert_eq!(spec["password"]["secretKeyRef"]["name"], "bgp-secrets");
    // The defaults accepted as such are not printed back.
    for absent in ["sourceAddress", "keepOriginalNextHop", "nextHopMode", "reversePeering", "nodeSelector"] {
        assert!(spec.get(absent).is_none(), "{absent} printed: {spec}");
    }
    let c = one(BGPCONFIG).to_manifest();
    assert_eq!(c["spec"]["nodeMeshMaxRestartTime"], "2m0s");
    assert!(c["spec"].get("bindMode").is_none());
    assert_eq!(one(RR_PEER).to_manifest()["spec"]["reversePeering"], "Manual");
}

//! Compiled policy against a direct reading of Calico's semantics (proptest over random
//! endpoints, policies and flows), and one readable test per feature.

use super::*;
use crate::resource::{parse_manifests, EndpointPort, Icmp, Metadata, Protocol, Resource, WorkloadEndpointSpec};
use proptest::prelude::*;
use vrouter_types::acl::{FlowKey, Fragment, PROTO_TCP, PROTO_UDP};

// ---------------------------------------------------------------------------------------------
// The reference: Calico's semantics read directly, rule by rule, over the endpoints.

#[derive(Debug)]
struct World {
    endpoints: Vec<WorkloadEndpoint>,
    nps: Vec<NetworkPolicy>,
    gnps: Vec<GlobalNetworkPolicy>,
    profiles: Vec<Profile>,
}

impl World {
    fn from_yaml(text: &str) -> World {
        let mut w = World { endpoints: vec![], nps: vec![], gnps: vec![], profiles: vec![] };
        for r in parse_manifests(text).unwrap_or_else(|e| panic!("{e}")) {
            match r {
                Resource::WorkloadEndpoint(e) => w.endpoints.push(e),
                Resource::NetworkPolicy(p) => w.nps.push(p),
                Resource::GlobalNetworkPolicy(p) => w.gnps.push(p),
                Resource::Profile(p) => w.profiles.push(p),
                _ => {}
            }
        }
        w
    }

    fn input<'a>(&'a self, node: &'a str) -> PolicyInput<'a> {
        PolicyInput {
            endpoints: &self.endpoints,
            network_policies: &self.nps,
            global_policies: &self.gnps,
            profiles: &self.profiles,
            node,
        }
    }
}

struct Reference<'a> {
    views: Vec<EndpointView<'a>>,
    ns_labels: BTreeMap<String, BTreeMap<String, String>>,
    /// (namespace, name, spec), sorted by (order, name, namespace).
    policies: Vec<(Option<&'a str>, &'a str, &'a PolicySpec)>,
}

impl<'a> Reference<'a> {
    fn new(input: &PolicyInput<'a>) -> Reference<'a> {
        let mut policies: Vec<(Option<&str>, &str, &PolicySpec)> = input
            .global_policies
            .iter()
            .map(|g| (None, g.metadata.name.as_str(), &g.spec))
            .chain(
                input
                    .network_policies
                    .iter()
                    .map(|p| (Some(p.metadata.namespace.as_deref().unwrap()), p.metadata.name.as_str(), &p.spec)),
            )
            .collect();
        policies.sort_by(|a, b| {
            let o = |s: &PolicySpec| s.order.unwrap_or(f64::MAX);
            o(a.2).partial_cmp(&o(b.2)).unwrap().then(a.1.cmp(b.1)).then(a.0.cmp(&b.0))
        });
        Reference { views: endpoint_views(input), ns_labels: namespace_labels(input), policies }
    }

    fn ns_matches(&self, sel: &Selector, ns: &str) -> bool {
        self.ns_labels.get(ns).is_some_and(|l| sel.matches(l))
    }

    fn verdict(&self, ep: &EndpointView, dir: PolicyType, k: &FlowKey) -> Action {
        let mut any = false;
        for &(ns, _, spec) in &self.policies {
            let selected = match ns {
                Some(ns) => ep.namespace == ns,
                None => spec.namespace_selector.as_ref().is_none_or(|s| self.ns_matches(s, ep.namespace)),
            } && spec.selector.matches(&ep.labels);
            if !selected || !spec.types.contains(&dir) {
                continue;
            }
            any = true;
            let rules = if dir == PolicyType::Ingress { &spec.ingress } else { &spec.egress };
            for r in rules {
                if self.rule_matches(ns, r, k) {
                    return match r.action {
                        RuleAction::Deny => Action::Deny,
                        RuleAction::Allow | RuleAction::Pass => Action::Allow,
                    };
                }
            }
        }
        if any {
            Action::Deny
        } else {
            Action::Allow
        }
    }

    fn rule_matches(&self, ns: Option<&str>, r: &CalicoRule, k: &FlowKey) -> bool {
        if r.protocol.is_some_and(|p| p.0 != k.proto) || r.not_protocol.is_some_and(|p| p.0 == k.proto) {
            return false;
        }
        let e_l4 = |e: &EntityRule| !e.ports.is_empty() || !e.not_ports.is_empty();
        let l4 = r.icmp.is_some() || r.not_icmp.is_some() || e_l4(&r.source) || e_l4(&r.destination);
        if l4 && k.fragment == Fragment::NonFirst {
            return false;
        }
        let icmp_hit = |i: &Icmp| i.type_ == k.icmp_type() && i.code.is_none_or(|c| c == k.icmp_code());
        if r.icmp.as_ref().is_some_and(|i| !icmp_hit(i)) || r.not_icmp.as_ref().is_some_and(icmp_hit) {
            return false;
        }
        let proto = r.protocol.map(|p| p.0);
        self.entity_matches(ns, &r.source, k.src, k.sport, proto)
            && self.entity_matches(ns, &r.destination, k.dst, k.dport, proto)
    }

    /// Does endpoint `v` lie in the namespaces entity `e` of a policy in `ns` looks at?
    fn in_scope(&self, ns: Option<&str>, e: &EntityRule, v: &EndpointView) -> bool {
        match (&e.namespace_selector, ns) {
            (Some(s), _) => self.ns_matches(s, v.namespace),
            (None, Some(ns)) => v.namespace == ns,
            (None, None) => true,
        }
    }

    fn entity_matches(&self, ns: Option<&str>, e: &EntityRule, ip: u32, port: u16, proto: Option<u8>) -> bool {
        if !e.nets.is_empty() && !e.nets.iter().any(|n| n.contains(ip)) {
            return false;
        }
        if e.not_nets.iter().any(|n| n.contains(ip)) {
            return false;
        }
        // Calico: a namespaced policy's selectors (and any namespaceSelector) restrict to the
        // scope's endpoints; notSelector alone in a global policy does not.
        let positive =
            e.namespace_selector.is_some() || e.selector.is_some() || (ns.is_some() && e.not_selector.is_some());
        let sel = e.selector.clone().unwrap_or(Selector::All);
        let picks = |v: &EndpointView| self.in_scope(ns, e, v) && sel.matches(&v.labels);
        if positive && !self.views.iter().any(|v| picks(v) && v.ips.contains(&ip)) {
            return false;
        }
        if let Some(n) = &e.not_selector {
            if self.views.iter().any(|v| n.matches(&v.labels) && v.ips.contains(&ip)) {
                return false;
            }
        }
        if !e.ports.is_empty() {
            let hit = e.ports.iter().any(|p| match p {
                Port::Range(r) => r.contains(port),
                Port::Named(name) => self.views.iter().any(|v| {
                    (!positive || picks(v))
                        && v.ips.contains(&ip)
                        && v.wep
                            .spec
                            .ports
                            .iter()
                            .any(|q| &q.name == name && Some(q.protocol.0) == proto && q.port == port)
                }),
            });
            if !hit {
                return false;
            }
        }
        !e.not_ports.iter().any(|p| matches!(p, Port::Range(r) if r.contains(port)))
    }
}

/// What the data plane decides with the compiled lists (the classifier's reference matcher).
fn compiled_verdict(c: &CompiledPolicy, key: &str, dir: PolicyType, k: &FlowKey) -> Action {
    let ep = &c.endpoints[key];
    let names = if dir == PolicyType::Ingress { &ep.ingress } else { &ep.egress };
    if names.is_empty() {
        return Action::Allow;
    }
    for n in names {
        for r in &c.policies[n] {
            if r.matches(k) {
                return r.action;
            }
        }
    }
    Action::Deny
}

fn flow(src: &str, dst: &str, proto: u8, sport: u16, dport: u16) -> FlowKey {
    let ip = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
    FlowKey { src: ip(src), dst: ip(dst), proto, sport, dport, fragment: Fragment::None }
}

/// Compiles for node n1 and checks every local endpoint, both directions, on `flows` against
/// the reference; returns the compiled policy.
fn check_agrees(w: &World, flows: &[FlowKey]) -> CompiledPolicy {
    let input = w.input("n1");
    let c = compile(&input);
    let reference = Reference::new(&input);
    for rules in c.policies.values() {
        for r in rules {
            r.validate().unwrap();
        }
    }
    for v in reference.views.iter().filter(|v| v.wep.spec.node == "n1") {
        let key = endpoint_key(v.wep);
        for dir in [PolicyType::Ingress, PolicyType::Egress] {
            for k in flows {
                let want = reference.verdict(v, dir, k);
                let got = compiled_verdict(&c, &key, dir, k);
                assert_eq!(got, want, "endpoint {key} {dir:?} flow {k:?}\ncompiled: {:#?}", c);
            }
        }
    }
    c
}

// ---------------------------------------------------------------------------------------------
// Readable tests, one per feature.

const ENDPOINTS: &str = "
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.a}
spec:
  labelsToApply: {pcns.team: red}
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.b}
spec:
  labelsToApply: {pcns.team: blue}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web1, namespace: a, labels: {app: web}}
spec:
  node: n1
  ipNetworks: [10.0.0.1/32]
  profiles: [kns.a]
  ports: [{name: http, protocol: TCP, port: 80}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web2, namespace: b, labels: {app: web}}
spec:
  node: n2
  ipNetworks: [10.0.0.2/32]
  profiles: [kns.b]
  ports: [{name: http, protocol: TCP, port: 8080}]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db1, namespace: a, labels: {app: db}}
spec:
  node: n1
  ipNetworks: [10.0.0.3/32]
  profiles: [kns.a]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: b, labels: {app: client}}
spec:
  node: n2
  ipNetworks: [10.0.0.4/32]
  profiles: [kns.b]
";

fn world(policies: &str) -> World {
    World::from_yaml(&format!("{ENDPOINTS}---\n{policies}"))
}

fn sample_flows() -> Vec<FlowKey> {
    let ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.9", "192.168.1.1"];
    let mut v = Vec::new();
    for s in ips {
        for d in ips {
            for (p, sp, dp) in [
                (PROTO_TCP, 40000, 80),
                (PROTO_TCP, 40000, 8080),
                (PROTO_UDP, 53, 53),
                (1, 8 << 8, 7),
                (1, 3 << 8 | 4, 0),
                (47, 0, 0),
            ] {
                v.push(flow(s, d, p, sp, dp));
            }
        }
    }
    v
}

#[test]
fn no_policy_leaves_endpoints_without_lists() {
    let c = check_agrees(&world(""), &sample_flows());
    assert_eq!(c.endpoints.keys().collect::<Vec<_>>(), vec!["a/db1", "a/web1"]);
    assert!(c.endpoints.values().all(|e| e.ingress.is_empty() && e.egress.is_empty()));
    assert!(c.policies.is_empty());
}

#[test]
fn policies_apply_in_order_then_name_and_share_one_list() {
    let c = check_agrees(
        &world(
            "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: z-allow-all}
spec: {order: 20, selector: all(), ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-tcp}
spec: {order: 10, selector: all(), ingress: [{action: Deny, protocol: TCP}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-unordered}
spec: {selector: all(), ingress: [{action: Deny}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b-same-order}
spec: {order: 20, selector: has(nothing), ingress: [{action: Deny}]}
",
        ),
        &sample_flows(),
    );
    let web = &c.endpoints["a/web1"];
    assert_eq!(web.ingress, vec!["gnp.deny-tcp.ingress", "gnp.z-allow-all.ingress", "gnp.a-unordered.ingress"]);
    assert_eq!(web.egress, Vec::<String>::new());
    assert_eq!(c.endpoints["a/db1"], *web);
    // A policy no local endpoint uses is not compiled.
    assert!(!c.policies.contains_key("gnp.b-same-order.ingress"));
    assert_eq!(c.policies["gnp.deny-tcp.ingress"], vec![Rule { protocol: Some(PROTO_TCP), ..Rule::any(Action::Deny) }]);
}

#[test]
fn pass_skips_later_policies_to_the_allowing_profile() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pass-udp}
spec: {order: 1, selector: all(), ingress: [{action: Pass, protocol: UDP}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec: {order: 2, selector: all(), ingress: [{action: Deny}]}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let udp = flow("10.0.0.4", "10.0.0.1", PROTO_UDP, 53, 53);
    let tcp = flow("10.0.0.4", "10.0.0.1", PROTO_TCP, 1, 80);
    assert_eq!(compiled_verdict(&c, "a/web1", PolicyType::Ingress, &udp), Action::Allow);
    assert_eq!(compiled_verdict(&c, "a/web1", PolicyType::Ingress, &tcp), Action::Deny);
}

#[test]
fn types_decide_the_directions_and_an_empty_policy_denies() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: isolate-egress, namespace: a}
spec: {selector: app == 'db', types: [Egress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-in, namespace: a}
spec: {selector: app == 'web', ingress: [{action: Allow}], egress: [{action: Deny, protocol: UDP}]}
",
    );
    let c = check_agrees(&w, &sample_flows());
    assert_eq!(c.endpoints["a/db1"].egress, vec!["np.a.isolate-egress.egress"]);
    assert!(c.endpoints["a/db1"].ingress.is_empty());
    assert!(c.policies["np.a.isolate-egress.egress"].is_empty());
    // Both rule lists given: both types.
    assert_eq!(c.endpoints["a/web1"].ingress, vec!["np.a.web-in.ingress"]);
    assert_eq!(c.endpoints["a/web1"].egress, vec!["np.a.web-in.egress"]);
}

#[test]
fn rule_selectors_of_a_network_policy_stay_in_its_namespace() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: from-web, namespace: a}
spec:
  selector: app == 'db'
  ingress: [{action: Allow, source: {selector: app == 'web'}}]
",
    );
    let c = check_agrees(&w, &sample_flows());
    // web2 (namespace b) also has app=web but is not in the policy's namespace.
    assert_eq!(c.policies["np.a.from-web.ingress"][0].src, vec!["10.0.0.1/32".parse().unwrap()]);
}

#[test]
fn namespace_selector_matches_namespace_labels_from_kns_profiles() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: from-blue}
spec:
  selector: all()
  namespaceSelector: projectcalico.org/name == 'a'
  ingress:
  - {action: Allow, source: {namespaceSelector: team == 'blue'}}
  - {action: Allow, source: {namespaceSelector: team == 'red', selector: app == 'db'}}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let rules = &c.policies["gnp.from-blue.ingress"];
    let src: Vec<String> = rules.iter().flat_map(|r| r.src.iter().map(|p| p.to_string())).collect();
    // Namespace b's endpoints (10.0.0.2, 10.0.0.4), then namespace a's db.
    assert_eq!(src, vec!["10.0.0.2/32", "10.0.0.4/32", "10.0.0.3/32"]);
}

#[test]
fn not_nets_and_not_selector_compile_to_the_set_difference() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: nets}
spec:
  selector: all()
  egress:
  - {action: Deny, destination: {nets: [10.0.0.0/24], notNets: [10.0.0.0/26]}}
  - {action: Deny, destination: {notSelector: app == 'web'}}
  - {action: Allow}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let rules = &c.policies["gnp.nets.egress"];
    let p = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<Ipv4Prefix>>();
    assert_eq!(rules[0].dst, p(&["10.0.0.64/26", "10.0.0.128/25"]));
    // Everything but the two web endpoints' addresses.
    assert!(!rules[1].dst.iter().any(|p| p.contains(0x0a00_0001) || p.contains(0x0a00_0002)));
    assert!(rules[1].dst.iter().any(|p| p.contains(0x0a00_0003)));
}

#[test]
fn a_rule_whose_selector_matches_nothing_is_left_out() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: nobody}
spec:
  selector: all()
  ingress:
  - {action: Allow, source: {selector: app == 'ghost'}}
  - {action: Allow, source: {nets: [10.0.0.0/8], notNets: [0.0.0.0/0]}}
",
    );
    let c = check_agrees(&w, &sample_flows());
    assert!(c.policies["gnp.nobody.ingress"].is_empty());
}

#[test]
fn named_ports_resolve_per_endpoint() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: http}
spec:
  selector: all()
  ingress:
  - {action: Allow, protocol: TCP, destination: {ports: [http, 443]}}
  - {action: Allow, protocol: UDP, destination: {ports: [http]}}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let rules = &c.policies["gnp.http.ingress"];
    let shown: Vec<String> = rules
        .iter()
        .map(|r| format!("{:?} {:?}", r.dst.iter().map(|p| p.to_string()).collect::<Vec<_>>(), r.dst_ports))
        .collect();
    assert_eq!(rules.len(), 3, "{shown:?}");
    assert_eq!(rules[0].dst, vec![]);
    assert_eq!(rules[0].dst_ports, vec![PortRange::single(443)]);
    assert_eq!(
        (rules[1].dst[0].to_string(), rules[1].dst_ports.clone()),
        ("10.0.0.1/32".into(), vec![PortRange::single(80)])
    );
    assert_eq!(
        (rules[2].dst[0].to_string(), rules[2].dst_ports.clone()),
        ("10.0.0.2/32".into(), vec![PortRange::single(8080)])
    );
}

#[test]
fn not_ports_not_protocol_and_not_icmp_compile_by_complement() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: neg}
spec:
  selector: all()
  ingress:
  - {action: Deny, protocol: TCP, destination: {notPorts: [80, '1000:2000']}}
  - {action: Deny, notProtocol: TCP}
  - {action: Allow, protocol: ICMP, notICMP: {type: 8}}
  - {action: Deny, protocol: ICMP, icmp: {type: 3}, notICMP: {type: 3, code: 4}}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let rules = &c.policies["gnp.neg.ingress"];
    let r = |lo, hi| PortRange { lo, hi };
    assert_eq!(rules[0].dst_ports, vec![r(0, 79), r(81, 999), r(2001, 65535)]);
    let not_tcp: Vec<_> =
        rules.iter().filter(|x| x.action == Action::Deny && x.dst_ports.is_empty() && x.icmp_type.is_none()).collect();
    assert_eq!(not_tcp.len(), 255);
    assert_eq!(rules.iter().filter(|x| x.action == Action::Allow).count(), 255);
    assert_eq!(rules.iter().filter(|x| x.icmp_type == Some(3) && x.icmp_code.is_some()).count(), 255);
}

#[test]
fn non_first_fragments_never_match_port_or_icmp_conditions() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: frag}
spec:
  selector: all()
  ingress:
  - {action: Allow, protocol: TCP, destination: {notPorts: [22]}}
  - {action: Allow, protocol: ICMP, notICMP: {type: 5}}
",
    );
    let mut flows = sample_flows();
    for f in flows.iter_mut().step_by(2) {
        *f = FlowKey { sport: 0, dport: 0, fragment: Fragment::NonFirst, ..*f };
    }
    check_agrees(&w, &flows);
}

#[test]
fn ip_set_prefixes_cover_exactly_the_set() {
    let s = IpSet::from_prefixes(&["10.0.0.0/24".parse().unwrap()]).subtract(&IpSet::from_addrs(vec![0x0a00_0005]));
    let ps = s.to_prefixes();
    assert_eq!(
        ps.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        vec![
            "10.0.0.0/30",
            "10.0.0.4/32",
            "10.0.0.6/31",
            "10.0.0.8/29",
            "10.0.0.16/28",
            "10.0.0.32/27",
            "10.0.0.64/26",
            "10.0.0.128/25"
        ]
    );
    assert_eq!(IpSet::full().to_prefixes(), vec![]);
    assert_eq!(IpSet::full().subtract(&IpSet::from_addrs(vec![0])).to_prefixes().len(), 32);
    assert!(IpSet::full().complement().is_empty());
}

proptest! {
    #[test]
    fn ip_set_algebra_matches_membership(
        a in prop::collection::vec((any::<u32>(), 0u8..=32), 0..4),
        b in prop::collection::vec((any::<u32>(), 0u8..=32), 0..4),
        probes in prop::collection::vec(any::<u32>(), 32),
    ) {
        let pa: Vec<Ipv4Prefix> = a.iter().map(|&(x, l)| Ipv4Prefix::new_masked(x, l)).collect();
        let pb: Vec<Ipv4Prefix> = b.iter().map(|&(x, l)| Ipv4Prefix::new_masked(x, l)).collect();
        let (sa, sb) = (IpSet::from_prefixes(&pa), IpSet::from_prefixes(&pb));
        let diff = sa.subtract(&sb);
        let cover = diff.to_prefixes();
        let mut probes = probes;
        probes.extend(pa.iter().chain(&pb).flat_map(|p| [p.addr(), p.addr() | !p.mask(), p.addr().wrapping_sub(1)]));
        for ip in probes {
            let want = pa.iter().any(|p| p.contains(ip)) && !pb.iter().any(|p| p.contains(ip));
            prop_assert_eq!(diff.contains(ip), want);
            prop_assert_eq!(cover.is_empty() && !diff.is_empty() || cover.iter().any(|p| p.contains(ip)), want);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Random worlds.

fn arb_endpoint(i: u8) -> impl Strategy<Value = WorkloadEndpoint> {
    (
        prop::sample::select(vec!["a", "b"]),
        prop::sample::select(vec!["n1", "n2"]),
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        any::<bool>(),
        any::<bool>(),
        prop::option::of((prop::sample::select(vec!["http", "dns"]), prop::sample::select(vec![53u16, 80, 8080]))),
    )
        .prop_map(move |(ns, node, app, tier, second_ip, port)| {
            let mut labels = BTreeMap::new();
            if let Some(app) = app {
                labels.insert("app".to_string(), app.to_string());
            }
            if tier {
                labels.insert("tier".to_string(), "x".to_string());
            }
            let mut ips = vec![Ipv4Prefix::new_masked(0x0a00_0000 | u32::from(i), 32)];
            if second_ip {
                ips.push(Ipv4Prefix::new_masked(0x0a00_0100 | u32::from(i), 32));
            }
            let ports = port
                .map(|(name, port)| {
                    let protocol = if name == "dns" { Protocol::UDP } else { Protocol::TCP };
                    vec![EndpointPort { name: name.to_string(), protocol, port }]
                })
                .unwrap_or_default();
            WorkloadEndpoint {
                metadata: Metadata {
                    name: format!("ep{i}"),
                    namespace: Some(ns.to_string()),
                    labels,
                    ..Default::default()
                },
                spec: WorkloadEndpointSpec {
                    node: node.to_string(),
                    ip_networks: ips,
                    profiles: vec![format!("kns.{ns}")],
                    ports,
                    ..Default::default()
                },
            }
        })
}

/// A selector, present with probability `p` (sparse conditions keep rules matchable).
fn arb_selector(p: f64) -> impl Strategy<Value = Option<Selector>> {
    prop::option::weighted(
        p,
        prop::sample::select(vec!["app == 'web'", "has(tier)", "app != 'db'", "all()", "team == 'red'"]),
    )
    .prop_map(|s| s.map(|s| Selector::parse(s).unwrap()))
}

fn arb_ports() -> impl Strategy<Value = (Vec<Port>, Vec<Port>)> {
    let port = prop::sample::select(vec![
        Port::Range(PortRange::single(80)),
        Port::Range(PortRange::single(53)),
        Port::Range(PortRange { lo: 1000, hi: 9000 }),
        Port::Named("http".into()),
        Port::Named("dns".into()),
    ]);
    let not_port =
        prop::sample::select(vec![PortRange::single(80), PortRange::single(8080), PortRange { lo: 0, hi: 1023 }])
            .prop_map(Port::Range);
    let ports = prop_oneof![3 => Just(vec![]), 2 => prop::collection::vec(port, 1..3)];
    let not_ports = prop_oneof![3 => Just(vec![]), 1 => prop::collection::vec(not_port, 1..3)];
    (ports, not_ports)
}

fn arb_entity() -> impl Strategy<Value = EntityRule> {
    let nets = prop_oneof![3 => Just(vec![]), 1 => Just(vec!["10.0.0.0/30"]), 1 => Just(vec!["10.0.0.4/31", "192.168.0.0/16"])];
    let not_nets = prop_oneof![4 => Just(vec![]), 1 => Just(vec!["10.0.0.2/32"]), 1 => Just(vec!["10.0.1.0/24"])];
    (nets, not_nets, arb_selector(0.3), arb_selector(0.2), arb_selector(0.2), arb_ports()).prop_map(
        |(nets, not_nets, selector, not_selector, namespace_selector, (ports, not_ports))| {
            let p = |v: Vec<&str>| v.into_iter().map(|s| s.parse().unwrap()).collect();
            EntityRule {
                nets: p(nets),
                not_nets: p(not_nets),
                selector,
                not_selector,
                namespace_selector,
                ports,
                not_ports,
            }
        },
    )
}

/// Half the entities have no condition at all, so that rules match often enough to decide.
fn arb_sparse_entity() -> impl Strategy<Value = EntityRule> {
    prop_oneof![Just(EntityRule::default()), arb_entity()]
}

fn arb_rule() -> impl Strategy<Value = CalicoRule> {
    let proto = prop::sample::select(vec![
        None,
        None,
        Some(Protocol::TCP),
        Some(Protocol::UDP),
        Some(Protocol::ICMP),
        Some(Protocol::ICMP),
    ]);
    let not_proto = prop::option::weighted(0.15, prop::sample::select(vec![Protocol::TCP, Protocol::UDP]));
    let icmp =
        prop::sample::select(vec![None, Some(Icmp { type_: 8, code: None }), Some(Icmp { type_: 3, code: Some(4) })]);
    let not_icmp =
        prop::sample::select(vec![None, Some(Icmp { type_: 8, code: None }), Some(Icmp { type_: 3, code: Some(1) })]);
    let action = prop::sample::select(vec![RuleAction::Allow, RuleAction::Deny, RuleAction::Pass]);
    (action, proto, not_proto, icmp, not_icmp, arb_sparse_entity(), arb_sparse_entity()).prop_map(
        |(action, protocol, not_protocol, icmp, not_icmp, mut source, mut destination)| {
            let l4 = protocol.is_some_and(Protocol::has_ports);
            if !l4 {
                for e in [&mut source, &mut destination] {
                    e.ports.clear();
                    e.not_ports.clear();
                }
            }
            let is_icmp = protocol == Some(Protocol::ICMP);
            CalicoRule {
                action,
                protocol,
                not_protocol,
                icmp: icmp.filter(|_| is_icmp),
                not_icmp: not_icmp.filter(|_| is_icmp),
                ip_version: None,
                source,
                destination,
                metadata: None,
            }
        },
    )
}

fn arb_spec(global: bool) -> impl Strategy<Value = PolicySpec> {
    let types = prop::sample::select(vec![
        vec![PolicyType::Ingress],
        vec![PolicyType::Egress],
        vec![PolicyType::Ingress, PolicyType::Egress],
    ]);
    (
        prop::option::of(prop::sample::select(vec![1.0f64, 2.0])),
        arb_selector(0.5),
        arb_selector(0.3),
        types,
        prop::collection::vec(arb_rule(), 0..4),
        prop::collection::vec(arb_rule(), 0..4),
    )
        .prop_map(move |(order, selector, ns_sel, types, ingress, egress)| PolicySpec {
            order,
            selector: selector.unwrap_or(Selector::All),
            namespace_selector: if global { ns_sel } else { None },
            ingress: if types.contains(&PolicyType::Ingress) { ingress } else { vec![] },
            egress: if types.contains(&PolicyType::Egress) { egress } else { vec![] },
            types,
        })
}

fn arb_world() -> impl Strategy<Value = World> {
    let eps = (1u8..=7).map(arb_endpoint).collect::<Vec<_>>();
    let nps = prop::collection::vec((prop::sample::select(vec!["a", "b"]), arb_spec(false)), 0..3);
    let gnps = prop::collection::vec(arb_spec(true), 0..3);
    (eps, nps, gnps).prop_map(|(endpoints, nps, gnps)| {
        let profile = |ns: &str, team: &str| Profile {
            metadata: Metadata::named(&format!("kns.{ns}")),
            spec: crate::resource::ProfileSpec {
                labels_to_apply: [("pcns.team".to_string(), team.to_string())].into(),
                ..Default::default()
            },
        };
        World {
            endpoints,
            nps: nps
                .into_iter()
                .enumerate()
                .map(|(i, (ns, spec))| NetworkPolicy {
                    metadata: Metadata {
                        name: format!("np{i}"),
                        namespace: Some(ns.to_string()),
                        ..Default::default()
                    },
                    spec,
                })
                .collect(),
            gnps: gnps
                .into_iter()
                .enumerate()
                .map(|(i, spec)| GlobalNetworkPolicy { metadata: Metadata::named(&format!("gnp{i}")), spec })
                .collect(),
            profiles: vec![profile("a", "red"), profile("b", "blue")],
        }
    })
}

fn arb_flow() -> impl Strategy<Value = FlowKey> {
    let ip = prop::sample::select(vec![
        0x0a00_0001u32,
        0x0a00_0002,
        0x0a00_0003,
        0x0a00_0004,
        0x0a00_0005,
        0x0a00_0006,
        0x0a00_0007,
        0x0a00_0101,
        0x0a00_0103,
        0xc0a8_0101,
        0x0a00_0000,
    ]);
    let port = prop::sample::select(vec![53u16, 80, 443, 1500, 8080, 3 << 8 | 4, 3 << 8 | 1, 8 << 8]);
    let frag = prop::sample::select(vec![Fragment::None, Fragment::None, Fragment::NonFirst]);
    (ip.clone(), ip, prop::sample::select(vec![1u8, 1, 6, 6, 17, 47]), port.clone(), port, frag).prop_map(
        |(src, dst, proto, sport, dport, fragment)| {
            let (sport, dport) = if fragment == Fragment::NonFirst { (0, 0) } else { (sport, dport) };
            FlowKey { src, dst, proto, sport, dport, fragment }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn compiled_lists_agree_with_calico_semantics(w in arb_world(), flows in prop::collection::vec(arb_flow(), 64)) {
        check_agrees(&w, &flows);
    }
}

#[test]
fn named_ports_minus_not_ports() {
    let w = world(
        "
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: http-not-80}
spec:
  selector: all()
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [http], notPorts: ['0:1023']}}
",
    );
    let c = check_agrees(&w, &sample_flows());
    let rules = &c.policies["gnp.http-not-80.ingress"];
    assert_eq!(rules.len(), 1);
    assert_eq!(
        (rules[0].dst[0].to_string(), rules[0].dst_ports.clone()),
        ("10.0.0.2/32".into(), vec![PortRange::single(8080)])
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]
    /// Random policies and endpoints (every rule field) print as manifests that parse back to
    /// the same resources, through YAML and JSON.
    #[test]
    fn random_resources_round_trip_through_manifests(w in arb_world()) {
        let rs: Vec<Resource> = w
            .endpoints
            .iter()
            .cloned()
            .map(Resource::WorkloadEndpoint)
            .chain(w.nps.iter().cloned().map(Resource::NetworkPolicy))
            .chain(w.gnps.iter().cloned().map(Resource::GlobalNetworkPolicy))
            .chain(w.profiles.iter().cloned().map(Resource::Profile))
            .collect();
        let yaml: Vec<String> = rs.iter().map(|r| serde_yaml_ng::to_string(&r.to_manifest()).unwrap()).collect();
        prop_assert_eq!(&parse_manifests(&yaml.join("---\n")).unwrap(), &rs);
        let json: Vec<String> = rs.iter().map(|r| r.to_manifest().to_string()).collect();
        prop_assert_eq!(&parse_manifests(&json.join("\n")).unwrap(), &rs);
    }
}

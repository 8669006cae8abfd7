//! Calico network policy compiled into vrouter's rule lists (docs/policy.md).
//!
//! vrouter's classifier evaluates, per endpoint and direction, the concatenation of named
//! first-match rule lists; an endpoint with a list and no match is denied, an endpoint with no
//! list is allowed. Calico's model maps onto that exactly:
//!
//! - The (Global)NetworkPolicies whose selector matches an endpoint apply to it, ordered by
//!   `(order, name)` (no order = after all ordered ones). Each policy compiles once per
//!   direction to a named list (`gnp.<name>.ingress`, `np.<namespace>.<name>.egress`) that
//!   every endpoint it selects shares; the endpoint's list is the concatenation, so the data
//!   plane's default deny is Calico's end-of-tier deny. No policy: no list, allowed (the
//!   namespace profile's Allow).
//! - `Pass` skips the remaining policies to the profiles, which allow: it compiles to allow.
//! - Selectors in rules become the /32s of the matching endpoints, cluster-wide.
//! - Negations (notNets, notSelector, notPorts, notProtocol, notICMP) compile by set
//!   complement (prefix-set difference, port-range and protocol/type complement) into plain
//!   rules, so first-match order is kept exactly; a rule whose match set is empty is left out.
//! - Named ports resolve to (address, port) pairs of the endpoints the entity selects, one
//!   rule per group of addresses sharing a port number.
//!
//! Cost: each distinct (namespace scope, selector) is evaluated once (cached), over the
//! candidates an index by namespace and by label value gives (`app == "web"` looks at the
//! endpoints with that label, not the cluster); each applicable policy compiles once per
//! direction. 10,000 endpoints and 1,000 policies compile for one node in about 0.1 s.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use vrouter_types::acl::{Action, EndpointPolicy, PortRange, Rule};
use vrouter_types::Ipv4Prefix;

use crate::resource::{
    EntityRule, GlobalNetworkPolicy, NetworkPolicy, PolicySpec, PolicyType, Port, Profile, Rule as CalicoRule,
    RuleAction, WorkloadEndpoint,
};
use crate::selector::Selector;

/// Label every endpoint carries: its namespace.
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
/// Label every endpoint carries when its spec names an orchestrator.
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
/// Label every namespace carries: its name (what namespaceSelector can match on).
pub const LABEL_NAMESPACE_NAME: &str = "projectcalico.org/name";
/// The profile holding a namespace's labels, as Calico's Kubernetes datastore names it.
pub const NAMESPACE_PROFILE_PREFIX: &str = "kns.";
/// The prefix Calico gives namespace labels inside a `kns.` profile's labelsToApply.
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";

/// Everything policy depends on.
pub struct PolicyInput<'a> {
    /// Every workload endpoint in the cluster (rule selectors match cluster-wide).
    pub endpoints: &'a [WorkloadEndpoint],
    pub network_policies: &'a [NetworkPolicy],
    pub global_policies: &'a [GlobalNetworkPolicy],
    pub profiles: &'a [Profile],
    /// The node compiled for: endpoints whose `spec.node` is this get policy lists.
    pub node: &'a str,
}

/// `<namespace>/<wep name>`: the daemon's endpoint name.
pub type EndpointKey = String;

/// The node's compiled policy: the named rule lists and each local endpoint's lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Only the lists some local endpoint uses.
    pub policies: BTreeMap<String, Vec<Rule>>,
    /// Every local endpoint, with empty lists when no policy selects it.
    pub endpoints: BTreeMap<EndpointKey, EndpointPolicy>,
}

/// The daemon endpoint name of a workload endpoint.
pub fn endpoint_key(w: &WorkloadEndpoint) -> EndpointKey {
    format!("{}/{}", w.metadata.namespace.as_deref().unwrap_or("default"), w.metadata.name)
}

/// The compiled list name of a policy's direction.
pub fn list_name(namespace: Option<&str>, name: &str, dir: PolicyType) -> String {
    let d = match dir {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    };
    match namespace {
        Some(ns) => format!("np.{ns}.{name}.{d}"),
        None => format!("gnp.{name}.{d}"),
    }
}

/// An endpoint as policy sees it.
pub struct EndpointView<'a> {
    pub wep: &'a WorkloadEndpoint,
    pub namespace: &'a str,
    /// Own labels over its profiles' labels, plus the namespace and orchestrator labels.
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<u32>,
}

/// The labels of every namespace that has endpoints or a `kns.` profile: the profile's
/// labelsToApply (with Calico's `pcns.` prefix removed) plus `projectcalico.org/name`.
pub fn namespace_labels(input: &PolicyInput) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for p in input.profiles {
        if let Some(ns) = p.metadata.name.strip_prefix(NAMESPACE_PROFILE_PREFIX) {
            let l = out.entry(ns.to_string()).or_default();
            for (k, v) in &p.spec.labels_to_apply {
                l.insert(k.strip_prefix(NAMESPACE_LABEL_PREFIX).unwrap_or(k).to_string(), v.clone());
            }
        }
    }
    for w in input.endpoints {
        out.entry(w.metadata.namespace.clone().unwrap_or_else(|| "default".into())).or_default();
    }
    for (ns, l) in out.iter_mut() {
        l.insert(LABEL_NAMESPACE_NAME.to_string(), ns.clone());
    }
    out
}

/// The endpoints with their effective labels.
pub fn endpoint_views<'a>(input: &PolicyInput<'a>) -> Vec<EndpointView<'a>> {
    let profiles: HashMap<&str, &Profile> = input.profiles.iter().map(|p| (p.metadata.name.as_str(), p)).collect();
    input
        .endpoints
        .iter()
        .map(|w| {
            let namespace = w.metadata.namespace.as_deref().unwrap_or("default");
            let mut labels = BTreeMap::new();
            // Earlier profiles win over later ones; the endpoint's own labels over all.
            for p in w.spec.profiles.iter().rev().filter_map(|n| profiles.get(n.as_str())) {
                labels.extend(p.spec.labels_to_apply.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            labels.extend(w.metadata.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
            labels.insert(LABEL_NAMESPACE.to_string(), namespace.to_string());
            if let Some(o) = &w.spec.orchestrator {
                labels.insert(LABEL_ORCHESTRATOR.to_string(), o.clone());
            }
            let ips = w.spec.ip_networks.iter().map(|p| p.addr()).collect();
            EndpointView { wep: w, namespace, labels, ips }
        })
        .collect()
}

struct PolicyRef<'a> {
    namespace: Option<&'a str>,
    name: &'a str,
    spec: &'a PolicySpec,
}

/// Compiles the policy of `input.node`'s endpoints.
pub fn compile(input: &PolicyInput) -> CompiledPolicy {
    let views = endpoint_views(input);
    let ns_labels = namespace_labels(input);
    let mut pols: Vec<PolicyRef> = input
        .global_policies
        .iter()
        .map(|g| PolicyRef { namespace: None, name: &g.metadata.name, spec: &g.spec })
        .chain(input.network_policies.iter().map(|p| PolicyRef {
            namespace: Some(p.metadata.namespace.as_deref().unwrap_or("default")),
            name: &p.metadata.name,
            spec: &p.spec,
        }))
        .collect();
    pols.sort_by(|a, b| {
        let o = |p: &PolicyRef| p.spec.order.unwrap_or(f64::INFINITY);
        o(a).total_cmp(&o(b)).then_with(|| a.name.cmp(b.name)).then_with(|| a.namespace.cmp(&b.namespace))
    });
    let mut cx = Compiler {
        views: &views,
        ns_labels: &ns_labels,
        index: Index::new(&views),
        picked: HashMap::new(),
        sets: HashMap::new(),
        ns_match: HashMap::new(),
        named: HashMap::new(),
    };
    let mut out = CompiledPolicy::default();
    let mut used: BTreeSet<(usize, PolicyType)> = BTreeSet::new();
    for v in views.iter().filter(|v| v.wep.spec.node == input.node) {
        let mut ep = EndpointPolicy::default();
        for (i, p) in pols.iter().enumerate() {
            if !cx.applies(p, v) {
                continue;
            }
            for t in &p.spec.types {
                let list = match t {
                    PolicyType::Ingress => &mut ep.ingress,
                    PolicyType::Egress => &mut ep.egress,
                };
                list.push(list_name(p.namespace, p.name, *t));
                used.insert((i, *t));
            }
        }
        out.endpoints.insert(endpoint_key(v.wep), ep);
    }
    for (i, t) in used {
        let p = &pols[i];
        let rules = match t {
            PolicyType::Ingress => &p.spec.ingress,
            PolicyType::Egress => &p.spec.egress,
        };
        let compiled = rules.iter().flat_map(|r| cx.rule(p, r)).collect();
        out.policies.insert(list_name(p.namespace, p.name, t), compiled);
    }
    out
}

/// Endpoint indices by namespace and by label, so that a selector like `app == "web"` in a
/// namespace looks at its candidates rather than every endpoint in the cluster.
struct Index<'v> {
    by_ns: HashMap<&'v str, Vec<usize>>,
    by_label: HashMap<(&'v str, &'v str), Vec<usize>>,
}

impl<'v> Index<'v> {
    fn new(views: &'v [EndpointView<'_>]) -> Index<'v> {
        let mut by_ns: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_label: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, v) in views.iter().enumerate() {
            by_ns.entry(v.namespace).or_default().push(i);
            for (k, val) in &v.labels {
                by_label.entry((k.as_str(), val.as_str())).or_default().push(i);
            }
        }
        Index { by_ns, by_label }
    }

    /// A sorted superset of the endpoints `sel` can match, when the selector requires some
    /// label value(s); None when it would take every endpoint.
    fn candidates(&self, sel: &Selector) -> Option<Vec<usize>> {
        let get = |k: &str, v: &str| self.by_label.get(&(k, v)).cloned().unwrap_or_default();
        match sel {
            Selector::Eq(k, v) => Some(get(k, v)),
            Selector::In(k, set) => Some(union(set.iter().map(|v| get(k, v)).collect())),
            Selector::And(a, b) => match (self.candidates(a), self.candidates(b)) {
                (Some(x), Some(y)) => Some(if x.len() <= y.len() { x } else { y }),
                (x, y) => x.or(y),
            },
            Selector::Or(a, b) => Some(union(vec![self.candidates(a)?, self.candidates(b)?])),
            _ => None,
        }
    }
}

fn union(lists: Vec<Vec<usize>>) -> Vec<usize> {
    let mut v: Vec<usize> = lists.into_iter().flatten().collect();
    v.sort_unstable();
    v.dedup();
    v
}

struct Compiler<'v, 'a> {
    views: &'v [EndpointView<'a>],
    ns_labels: &'v BTreeMap<String, BTreeMap<String, String>>,
    index: Index<'v>,
    /// (scope, selector) -> the matching endpoints (indices into `views`, ascending).
    picked: HashMap<(Scope, Selector), Rc<Vec<usize>>>,
    /// (scope, selector) -> the addresses of the matching endpoints.
    sets: HashMap<(Scope, Selector), Rc<IpSet>>,
    /// namespaceSelector -> matching namespaces.
    ns_match: HashMap<Selector, Rc<BTreeSet<String>>>,
    /// (scope, selector, protocol, port names) -> port number -> addresses of the picked
    /// endpoints that name it (before notPorts and the rule's nets apply).
    named: HashMap<NamedPortsKey, Rc<Vec<(u16, IpSet)>>>,
}

/// The endpoints a rule picks (scope and selector), its protocol and the port names it uses.
type NamedPortsKey = (Scope, Selector, Option<u8>, Vec<String>);

/// Which namespaces a rule selector looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Scope {
    All,
    Namespace(String),
    NamespaceSelector(Selector),
}

impl Compiler<'_, '_> {
    fn namespaces(&mut self, sel: &Selector) -> Rc<BTreeSet<String>> {
        if let Some(s) = self.ns_match.get(sel) {
            return s.clone();
        }
        let set: BTreeSet<String> =
            self.ns_labels.iter().filter(|(_, l)| sel.matches(l)).map(|(ns, _)| ns.clone()).collect();
        let set = Rc::new(set);
        self.ns_match.insert(sel.clone(), set.clone());
        set
    }

    fn in_scope(&mut self, scope: &Scope, v: &EndpointView) -> bool {
        match scope {
            Scope::All => true,
            Scope::Namespace(ns) => v.namespace == ns,
            Scope::NamespaceSelector(s) => self.namespaces(s).contains(v.namespace),
        }
    }

    fn applies(&mut self, p: &PolicyRef, v: &EndpointView) -> bool {
        let scope_ok = match (p.namespace, &p.spec.namespace_selector) {
            (Some(ns), _) => v.namespace == ns,
            (None, Some(s)) => self.namespaces(s).contains(v.namespace),
            (None, None) => true,
        };
        scope_ok && p.spec.selector.matches(&v.labels)
    }

    fn endpoints_in(&mut self, scope: &Scope, sel: &Selector) -> Rc<Vec<usize>> {
        let key = (scope.clone(), sel.clone());
        if let Some(p) = self.picked.get(&key) {
            return p.clone();
        }
        let in_ns = match scope {
            Scope::All => None,
            Scope::Namespace(ns) => Some(self.index.by_ns.get(ns.as_str()).cloned().unwrap_or_default()),
            Scope::NamespaceSelector(s) => {
                let nss = self.namespaces(s);
                Some(union(nss.iter().filter_map(|ns| self.index.by_ns.get(ns.as_str()).cloned()).collect()))
            }
        };
        let candidates = match (in_ns, self.index.candidates(sel)) {
            (Some(x), Some(y)) => Some(if x.len() <= y.len() { x } else { y }),
            (x, y) => x.or(y),
        };
        let all = || (0..self.views.len()).collect::<Vec<_>>();
        let mut out = Vec::new();
        for i in candidates.unwrap_or_else(all) {
            let v = &self.views[i];
            if self.in_scope(scope, v) && sel.matches(&v.labels) {
                out.push(i);
            }
        }
        let out = Rc::new(out);
        self.picked.insert(key, out.clone());
        out
    }

    fn addresses(&mut self, scope: &Scope, sel: &Selector) -> Rc<IpSet> {
        let key = (scope.clone(), sel.clone());
        if let Some(s) = self.sets.get(&key) {
            return s.clone();
        }
        let ips: Vec<u32> =
            self.endpoints_in(scope, sel).iter().flat_map(|&i| self.views[i].ips.iter().copied()).collect();
        let set = Rc::new(IpSet::from_addrs(ips));
        self.sets.insert(key, set.clone());
        set
    }

    /// The endpoints an entity's selectors pick (None: no endpoint condition), as Calico:
    /// a NetworkPolicy's rule selectors look in its own namespace unless a namespaceSelector
    /// is given; a GlobalNetworkPolicy's cluster-wide.
    fn entity_scope(&self, p: &PolicyRef, e: &EntityRule) -> Option<(Scope, Selector)> {
        let scope = match (&e.namespace_selector, p.namespace) {
            (Some(s), _) => Scope::NamespaceSelector(s.clone()),
            (None, Some(ns)) => Scope::Namespace(ns.to_string()),
            (None, None) => Scope::All,
        };
        let sel = e.selector.clone().unwrap_or(Selector::All);
        match scope {
            Scope::All if e.selector.is_none() => None,
            Scope::Namespace(_) if e.selector.is_none() && e.not_selector.is_none() => None,
            scope => Some((scope, sel)),
        }
    }

    /// An entity's alternatives: (addresses, ports) pairs any of which matches (ports None =
    /// no port condition). Empty: the entity matches nothing.
    fn entity(&mut self, p: &PolicyRef, e: &EntityRule, protocol: Option<u8>) -> Vec<(IpSet, Option<Vec<PortRange>>)> {
        let mut ips = IpSet::full();
        if !e.nets.is_empty() {
            ips = ips.intersect(&IpSet::from_prefixes(&e.nets));
        }
        let picked = self.entity_scope(p, e);
        if let Some((scope, sel)) = &picked {
            ips = ips.intersect(&self.addresses(scope, sel));
        }
        ips = ips.subtract(&IpSet::from_prefixes(&e.not_nets));
        if let Some(ns) = &e.not_selector {
            ips = ips.subtract(&self.addresses(&Scope::All, ns));
        }
        if ips.is_empty() {
            return Vec::new();
        }
        if e.ports.is_empty() && e.not_ports.is_empty() {
            return vec![(ips, None)];
        }
        let not_ports = PortSet::from_ranges(e.not_ports.iter().filter_map(|p| match p {
            Port::Range(r) => Some(*r),
            Port::Named(_) => None,
        }));
        let mut out = Vec::new();
        let numeric: Vec<PortRange> = e
            .ports
            .iter()
            .filter_map(|p| match p {
                Port::Range(r) => Some(*r),
                Port::Named(_) => None,
            })
            .collect();
        let named: BTreeSet<&str> = e
            .ports
            .iter()
            .filter_map(|p| match p {
                Port::Named(n) => Some(n.as_str()),
                Port::Range(_) => None,
            })
            .collect();
        if e.ports.is_empty() || !numeric.is_empty() {
            let base = if e.ports.is_empty() { PortSet::full() } else { PortSet::from_ranges(numeric) };
            let set = base.subtract(&not_ports);
            if !set.is_empty() {
                out.push((ips.clone(), Some(set.0)));
            }
        }
        if !named.is_empty() {
            // port number -> addresses of the picked endpoints that name it.
            // Without selectors, every endpoint in the cluster (as Calico: a rule's selector is
            // namespaced only when it has one).
            let (scope, sel) = picked.unwrap_or((Scope::All, Selector::All));
            let by_port = self.named_ports(scope, sel, protocol, &named);
            // Group the ports by address set: one rule per distinct set.
            let mut by_set: BTreeMap<Vec<(u32, u32)>, Vec<u16>> = BTreeMap::new();
            for (port, addrs) in by_port.iter().filter(|(p, _)| !not_ports.contains(*p)) {
                let set = addrs.intersect(&ips);
                if !set.is_empty() {
                    by_set.entry(set.0).or_default().push(*port);
                }
            }
            for (set, ports) in by_set {
                out.push((IpSet(set), Some(PortSet::from_ranges(ports.into_iter().map(PortRange::single)).0)));
            }
        }
        out
    }

    /// Port number -> addresses of the endpoints `(scope, sel)` picks that name one of `names`
    /// for `protocol` (cached: every rule naming the same ports over the same endpoints shares it).
    fn named_ports(
        &mut self,
        scope: Scope,
        sel: Selector,
        protocol: Option<u8>,
        names: &BTreeSet<&str>,
    ) -> Rc<Vec<(u16, IpSet)>> {
        let key = (scope, sel, protocol, names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        if let Some(v) = self.named.get(&key) {
            return v.clone();
        }
        let mut by_port: BTreeMap<u16, Vec<u32>> = BTreeMap::new();
        for &i in self.endpoints_in(&key.0, &key.1).iter() {
            let v = &self.views[i];
            for port in &v.wep.spec.ports {
                if names.contains(port.name.as_str()) && Some(port.protocol.0) == protocol {
                    by_port.entry(port.port).or_default().extend(v.ips.iter().copied());
                }
            }
        }
        let v = Rc::new(by_port.into_iter().map(|(p, a)| (p, IpSet::from_addrs(a))).collect::<Vec<_>>());
        self.named.insert(key, v.clone());
        v
    }

    /// One Calico rule as vrouter rules (the union of which is exactly its match set).
    fn rule(&mut self, p: &PolicyRef, r: &CalicoRule) -> Vec<Rule> {
        let action = match r.action {
            RuleAction::Allow | RuleAction::Pass => Action::Allow,
            RuleAction::Deny => Action::Deny,
        };
        let protocols: Vec<Option<u8>> = match (r.protocol, r.not_protocol) {
            (Some(p), Some(n)) if p == n => return Vec::new(),
            (Some(p), _) => vec![Some(p.0)],
            (None, Some(n)) => (0..=255u8).filter(|&x| x != n.0).map(Some).collect(),
            (None, None) => vec![None],
        };
        let icmps = icmp_alternatives(r);
        if icmps.is_empty() {
            return Vec::new();
        }
        let protocol = r.protocol.map(|p| p.0);
        let src = self.entity(p, &r.source, protocol);
        let dst = self.entity(p, &r.destination, protocol);
        let mut out = Vec::new();
        for proto in &protocols {
            for (itype, icode) in &icmps {
                for (s_ips, s_ports) in &src {
                    for (d_ips, d_ports) in &dst {
                        out.push(Rule {
                            action,
                            src: s_ips.to_prefixes(),
                            dst: d_ips.to_prefixes(),
                            protocol: *proto,
                            src_ports: s_ports.clone().unwrap_or_default(),
                            dst_ports: d_ports.clone().unwrap_or_default(),
                            icmp_type: *itype,
                            icmp_code: *icode,
                        });
                    }
                }
            }
        }
        out
    }
}

/// (type, code) conditions, any of which matches, for a rule's icmp/notICMP; `(None, None)` =
/// no ICMP condition. Empty: nothing matches. (Both fields need protocol ICMP: the resource
/// validation checks it.)
fn icmp_alternatives(r: &CalicoRule) -> Vec<(Option<u8>, Option<u8>)> {
    let Some(n) = r.not_icmp else {
        return vec![r.icmp.map_or((None, None), |i| (Some(i.type_), i.code))];
    };
    let excluded = |t: u8, c: Option<u8>| t == n.type_ && (n.code.is_none() || n.code == c);
    match r.icmp {
        Some(i) => match (i.code, n.code) {
            // Whole type `t`, minus one code of it.
            (None, Some(nc)) if i.type_ == n.type_ => {
                (0..=255u8).filter(|&c| c != nc).map(|c| (Some(i.type_), Some(c))).collect()
            }
            _ if excluded(i.type_, i.code) => Vec::new(),
            _ => vec![(Some(i.type_), i.code)],
        },
        None => {
            let mut v: Vec<_> = (0..=255u8).filter(|&t| t != n.type_).map(|t| (Some(t), None)).collect();
            if let Some(nc) = n.code {
                v.extend((0..=255u8).filter(|&c| c != nc).map(|c| (Some(n.type_), Some(c))));
            }
            v
        }
    }
}

/// A set of IPv4 addresses: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet(Vec<(u32, u32)>);

impl IpSet {
    pub fn full() -> IpSet {
        IpSet(vec![(0, u32::MAX)])
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, ip: u32) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < ip);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= ip)
    }

    fn normalise(mut v: Vec<(u32, u32)>) -> IpSet {
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        IpSet(out)
    }

    pub fn from_addrs(addrs: Vec<u32>) -> IpSet {
        IpSet::normalise(addrs.into_iter().map(|a| (a, a)).collect())
    }

    pub fn from_prefixes(ps: &[Ipv4Prefix]) -> IpSet {
        IpSet::normalise(ps.iter().map(|p| (p.addr(), p.addr() | !p.mask())).collect())
    }

    pub fn intersect(&self, o: &IpSet) -> IpSet {
        let (mut i, mut j, mut out) = (0, 0, Vec::new());
        while i < self.0.len() && j < o.0.len() {
            let (a, b) = (self.0[i], o.0[j]);
            let lo = a.0.max(b.0);
            let hi = a.1.min(b.1);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        IpSet(out)
    }

    pub fn complement(&self) -> IpSet {
        let mut out = Vec::new();
        let mut next: u64 = 0;
        for &(lo, hi) in &self.0 {
            if u64::from(lo) > next {
                out.push((next as u32, lo - 1));
            }
            next = u64::from(hi) + 1;
        }
        if next <= u64::from(u32::MAX) {
            out.push((next as u32, u32::MAX));
        }
        IpSet(out)
    }

    pub fn subtract(&self, o: &IpSet) -> IpSet {
        if o.is_empty() {
            return self.clone();
        }
        self.intersect(&o.complement())
    }

    /// The fewest prefixes covering exactly the set; empty for the full set (a rule's "any").
    pub fn to_prefixes(&self) -> Vec<Ipv4Prefix> {
        if *self == IpSet::full() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for &(lo, hi) in &self.0 {
            let (mut lo, hi) = (u64::from(lo), u64::from(hi));
            while lo <= hi {
                // The largest aligned block starting at lo that fits in [lo, hi].
                let mut size = if lo == 0 { 1u64 << 32 } else { lo & lo.wrapping_neg() };
                while lo + size - 1 > hi {
                    size >>= 1;
                }
                let len = 32 - size.trailing_zeros() as u8;
                out.push(Ipv4Prefix::new_masked(lo as u32, len));
                lo += size;
            }
        }
        out
    }
}

/// A set of ports: sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSet(Vec<PortRange>);

impl PortSet {
    fn full() -> PortSet {
        PortSet(vec![PortRange { lo: 0, hi: u16::MAX }])
    }

    fn from_ranges(rs: impl IntoIterator<Item = PortRange>) -> PortSet {
        let set = IpSet::normalise(rs.into_iter().map(|r| (u32::from(r.lo), u32::from(r.hi))).collect());
        PortSet(set.0.into_iter().map(|(lo, hi)| PortRange { lo: lo as u16, hi: hi as u16 }).collect())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, p: u16) -> bool {
        self.0.iter().any(|r| r.contains(p))
    }

    fn subtract(&self, o: &PortSet) -> PortSet {
        let mut out = Vec::new();
        for r in &self.0 {
            let mut lo = u32::from(r.lo);
            let hi = u32::from(r.hi);
            for x in &o.0 {
                let (xl, xh) = (u32::from(x.lo), u32::from(x.hi));
                if xh < lo || xl > hi {
                    continue;
                }
                if xl > lo {
                    out.push(PortRange { lo: lo as u16, hi: (xl - 1) as u16 });
                }
                lo = xh + 1;
            }
            if lo <= hi {
                out.push(PortRange { lo: lo as u16, hi: hi as u16 });
            }
        }
        PortSet(out)
    }
}

#[cfg(test)]
mod tests;

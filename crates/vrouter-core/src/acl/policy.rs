//! The compiled policy: what workers evaluate per packet.
//!
//! [`PolicySet::compile`] validates the whole config (so a bad config is refused as a unit and
//! the previous set stays published) and builds one [`Classifier`] for the global rules plus
//! one per distinct endpoint policy list: endpoints that name the same policies in the same
//! order (the common case: a Deployment's pods) share one classifier.

use std::collections::HashMap;

use super::classifier::Classifier;
use super::rule::{PolicyConfig, Rule, RuleError};
use super::{Action, Direction, EndpointId, FlowKey};

/// Why a config was refused. Rule indices are 0-based positions in their list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("global rule {index}: {error}")]
    BadGlobalRule { index: usize, error: RuleError },
    #[error("policy '{policy}' rule {index}: {error}")]
    BadPolicyRule { policy: String, index: usize, error: RuleError },
    #[error(
        "endpoint {endpoint} {direction} policy {position}: '{name}' is not defined \
         (defined policies: {defined})"
    )]
    UnknownPolicy {
        endpoint: usize,
        direction: &'static str,
        position: usize,
        name: String,
        /// The defined names, comma-separated (the first 20), or "none".
        defined: String,
    },
    #[error("{count} endpoints configured; at most {} are supported (EndpointId is u16)", u16::MAX as usize + 1)]
    TooManyEndpoints { count: usize },
    #[error("{count} rules in one list ({what}); at most {} are supported", u32::MAX)]
    TooManyRules { what: String, count: usize },
}

/// Which rule (or default) decided.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HitSource {
    /// Global rule `rule` (index in [`PolicyConfig::global`]).
    Global { rule: u32 },
    /// Rule `rule` of the policy at index `policy` in the sorted policy names.
    Policy { policy: u32, rule: u32 },
    /// The endpoint has policies for this direction and none matched.
    DefaultDeny,
    /// No endpoint, or an endpoint with no policy for this direction, and no global match.
    DefaultAllow,
}

/// The verdict and why.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RuleHit {
    pub action: Action,
    pub source: HitSource,
}

const NO_LIST: u32 = u32::MAX;

#[derive(Debug)]
struct CompiledList {
    classifier: Classifier,
    actions: Vec<Action>,
    /// Concatenated rule index -> (policy index, rule index in the policy).
    origin: Vec<(u32, u32)>,
}

/// A compiled, immutable policy configuration. `Send + Sync`; publish it behind an `Arc`.
#[derive(Debug)]
pub struct PolicySet {
    generation: u64,
    global: Classifier,
    global_actions: Vec<Action>,
    /// Policy names, sorted (the `policy` index of [`HitSource::Policy`]).
    names: Vec<String>,
    lists: Vec<CompiledList>,
    /// Per endpoint, `[ingress, egress]` index into `lists`, or `NO_LIST`.
    endpoints: Vec<[u32; 2]>,
    /// No global rules and no endpoint with a policy: nothing can be denied.
    allow_all: bool,
}

impl PolicySet {
    /// Validates and compiles `cfg`. The cost is proportional to the rules times the elementary
    /// intervals they cover; run it on the control thread, not on a worker.
    pub fn compile(cfg: &PolicyConfig, generation: u64) -> Result<PolicySet, AclError> {
        if cfg.endpoints.len() > u16::MAX as usize + 1 {
            return Err(AclError::TooManyEndpoints { count: cfg.endpoints.len() });
        }
        if cfg.global.len() > u32::MAX as usize {
            return Err(AclError::TooManyRules { what: "global".into(), count: cfg.global.len() });
        }
        for (index, r) in cfg.global.iter().enumerate() {
            r.validate().map_err(|error| AclError::BadGlobalRule { index, error })?;
        }
        for (name, rules) in &cfg.policies {
            for (index, r) in rules.iter().enumerate() {
                r.validate().map_err(|error| AclError::BadPolicyRule { policy: name.clone(), index, error })?;
            }
        }
        let names: Vec<String> = cfg.policies.keys().cloned().collect();
        let by_index: Vec<&Vec<Rule>> = cfg.policies.values().collect();
        let index_of: HashMap<&str, u32> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();

        let mut list_ids: HashMap<Vec<u32>, u32> = HashMap::new();
        let mut lists: Vec<CompiledList> = Vec::new();
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for (ep, e) in cfg.endpoints.iter().enumerate() {
            let mut slots = [NO_LIST; 2];
            for (slot, (direction, pols)) in [("ingress", &e.ingress), ("egress", &e.egress)].into_iter().enumerate() {
                if pols.is_empty() {
                    continue;
                }
                let mut ids = Vec::with_capacity(pols.len());
                for (position, name) in pols.iter().enumerate() {
                    let Some(&id) = index_of.get(name.as_str()) else {
                        return Err(AclError::UnknownPolicy {
                            endpoint: ep,
                            direction,
                            position,
                            name: name.clone(),
                            defined: defined_names(&names),
                        });
                    };
                    ids.push(id);
                }
                if let Some(&l) = list_ids.get(&ids) {
                    slots[slot] = l;
                    continue;
                }
                let mut origin = Vec::new();
                for &p in &ids {
                    origin.extend((0..by_index[p as usize].len() as u32).map(|r| (p, r)));
                }
                if origin.len() > u32::MAX as usize {
                    return Err(AclError::TooManyRules {
                        what: format!("endpoint {ep} {direction}"),
                        count: origin.len(),
                    });
                }
                let rules = || ids.iter().flat_map(|&p| by_index[p as usize].iter());
                let actions = rules().map(|r| r.action).collect();
                let classifier = Classifier::build(rules());
                let l = lists.len() as u32;
                lists.push(CompiledList { classifier, actions, origin });
                list_ids.insert(ids, l);
                slots[slot] = l;
            }
            endpoints.push(slots);
        }
        let allow_all = cfg.global.is_empty() && endpoints.iter().all(|e| e.iter().all(|l| *l == NO_LIST));
        Ok(PolicySet {
            allow_all,
            generation,
            global: Classifier::build(&cfg.global),
            global_actions: cfg.global.iter().map(|r| r.action).collect(),
            names,
            lists,
            endpoints,
        })
    }

    /// No rules and no endpoint policies: everything is allowed (generation 0).
    pub fn allow_all() -> PolicySet {
        PolicySet {
            generation: 0,
            global: Classifier::build([]),
            global_actions: Vec::new(),
            names: Vec::new(),
            lists: Vec::new(),
            endpoints: Vec::new(),
            allow_all: true,
        }
    }

    /// The verdict for `key` crossing endpoint `ep` in direction `dir`. No allocation.
    ///
    /// `ep = None` (transit traffic) sees only the global rules, then allow. An `ep` beyond the
    /// configured endpoints is treated like an endpoint with no policies (global rules, then
    /// allow): the pipeline drops frames from unknown endpoints before policy
    /// (`endpoint/unknown`), so this only matters during a config change.
    #[inline]
    pub fn evaluate(&self, ep: Option<EndpointId>, dir: Direction, key: &FlowKey) -> RuleHit {
        if let Some(i) = self.global.first_match(key) {
            return RuleHit { action: self.global_actions[i as usize], source: HitSource::Global { rule: i } };
        }
        let list =
            ep.and_then(|ep| self.endpoints.get(ep as usize)).map(|slots| slots[dir as usize]).unwrap_or(NO_LIST);
        if list == NO_LIST {
            return RuleHit { action: Action::Allow, source: HitSource::DefaultAllow };
        }
        let l = &self.lists[list as usize];
        match l.classifier.first_match(key) {
            Some(i) => {
                let (policy, rule) = l.origin[i as usize];
                RuleHit { action: l.actions[i as usize], source: HitSource::Policy { policy, rule } }
            }
            None => RuleHit { action: Action::Deny, source: HitSource::DefaultDeny },
        }
    }

    /// True when nothing can be denied: no global rules and no endpoint selected by a policy.
    /// The pipeline then skips classification and connection tracking altogether.
    #[inline]
    pub fn is_allow_all(&self) -> bool {
        self.allow_all
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Sorted policy names; `HitSource::Policy { policy, .. }` indexes this.
    pub fn policy_names(&self) -> &[String] {
        &self.names
    }

    /// Number of distinct compiled endpoint lists (endpoints naming the same policies share).
    pub fn compiled_lists(&self) -> usize {
        self.lists.len()
    }

    /// A human-readable account of a hit, e.g. `allow by policy 'web' rule 3`.
    pub fn describe(&self, hit: RuleHit) -> String {
        let verb = match hit.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        };
        match hit.source {
            HitSource::Global { rule } => format!("{verb} by global rule {rule}"),
            HitSource::Policy { policy, rule } => match self.names.get(policy as usize) {
                Some(name) => format!("{verb} by policy '{name}' rule {rule}"),
                None => format!("{verb} by policy #{policy} (not in this policy set) rule {rule}"),
            },
            HitSource::DefaultDeny => {
                format!("{verb} by default (the endpoint has policies for this direction, none matched)")
            }
            HitSource::DefaultAllow => {
                format!("{verb} by default (no global rule matched and no endpoint policy applies)")
            }
        }
    }

    /// Heap bytes held by the compiled tables (not counting the config it was built from).
    pub fn memory_bytes(&self) -> usize {
        let lists: usize = self
            .lists
            .iter()
            .map(|l| {
                l.classifier.memory_bytes()
                    + l.actions.capacity() * std::mem::size_of::<Action>()
                    + l.origin.capacity() * 8
            })
            .sum();
        std::mem::size_of::<Self>()
            + self.global.memory_bytes()
            + self.global_actions.capacity() * std::mem::size_of::<Action>()
            + self.names.iter().map(|n| n.capacity() + std::mem::size_of::<String>()).sum::<usize>()
            + self.lists.capacity() * std::mem::size_of::<CompiledList>()
            + lists
            + self.endpoints.capacity() * 8
    }
}

fn defined_names(names: &[String]) -> String {
    if names.is_empty() {
        return "none".to_string();
    }
    let mut s = names.iter().take(20).map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ");
    if names.len() > 20 {
        s.push_str(&format!(" and {} more", names.len() - 20));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acl::rule::EndpointPolicy;
    use crate::acl::{Fragment, PortRange, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const A: u32 = 0x0a00_0001; // 10.0.0.1
    const B: u32 = 0x0a00_0102; // 10.0.1.2

    fn key(src: u32, dst: u32, proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey { src, dst, proto, sport, dport, fragment: Fragment::None }
    }

    fn allow() -> Rule {
        Rule::any(Action::Allow)
    }

    #[test]
    fn allow_all_only_when_nothing_can_deny() {
        assert!(PolicySet::allow_all().is_allow_all());
        let unselected = PolicyConfig {
            policies: BTreeMap::from([("p".to_string(), vec![allow()])]),
            endpoints: vec![EndpointPolicy::default()],
            ..Default::default()
        };
        assert!(PolicySet::compile(&unselected, 1).unwrap().is_allow_all());
        let selected = PolicyConfig {
            endpoints: vec![EndpointPolicy { ingress: vec![], egress: vec!["p".into()] }],
            ..unselected.clone()
        };
        assert!(!PolicySet::compile(&selected, 1).unwrap().is_allow_all());
        let global = PolicyConfig { global: vec![allow()], ..Default::default() };
        assert!(!PolicySet::compile(&global, 1).unwrap().is_allow_all());
    }

    /// One endpoint with policy "p" = `rules` on ingress; returns the verdict for `k`.
    fn ingress_verdict(rules: Vec<Rule>, k: &FlowKey) -> RuleHit {
        let cfg = PolicyConfig {
            policies: BTreeMap::from([("p".to_string(), rules)]),
            endpoints: vec![EndpointPolicy { ingress: vec!["p".into()], egress: vec![] }],
            ..Default::default()
        };
        PolicySet::compile(&cfg, 1).unwrap().evaluate(Some(0), Direction::Ingress, k)
    }

    fn allowed(rules: Vec<Rule>, k: FlowKey) -> bool {
        ingress_verdict(rules, &k).action == Action::Allow
    }

    #[test]
    fn src_and_dst_prefixes_match_any_of_the_list() {
        let mut r = allow();
        r.src = vec!["10.0.0.0/24".parse().unwrap(), "192.0.2.0/30".parse().unwrap()];
        assert!(allowed(vec![r.clone()], key(A, B, 6, 1, 2)));
        assert!(allowed(vec![r.clone()], key(0xc000_0203, B, 6, 1, 2)));
        assert!(!allowed(vec![r.clone()], key(0xc000_0204, B, 6, 1, 2)));
        assert!(!allowed(vec![r], key(B, A, 6, 1, 2)));
        let mut d = allow();
        d.dst = vec!["10.0.1.0/24".parse().unwrap()];
        assert!(allowed(vec![d.clone()], key(A, B, 6, 1, 2)));
        assert!(!allowed(vec![d], key(B, A, 6, 1, 2)));
    }

    #[test]
    fn protocol_must_equal() {
        let mut r = allow();
        r.protocol = Some(PROTO_UDP);
        assert!(allowed(vec![r.clone()], key(A, B, PROTO_UDP, 1, 53)));
        assert!(!allowed(vec![r], key(A, B, PROTO_TCP, 1, 53)));
    }

    #[test]
    fn port_ranges_are_inclusive_and_per_direction() {
        let mut r = allow();
        r.protocol = Some(PROTO_TCP);
        r.dst_ports = vec![PortRange { lo: 8000, hi: 8080 }, PortRange::single(443)];
        for (p, ok) in [(7999, false), (8000, true), (8080, true), (8081, false), (443, true)] {
            assert_eq!(allowed(vec![r.clone()], key(A, B, PROTO_TCP, 1, p)), ok, "dport {p}");
        }
        let mut s = allow();
        s.protocol = Some(PROTO_SCTP);
        s.src_ports = vec![PortRange::single(5000)];
        assert!(allowed(vec![s.clone()], key(A, B, PROTO_SCTP, 5000, 1)));
        assert!(!allowed(vec![s], key(A, B, PROTO_SCTP, 1, 5000)));
    }

    #[test]
    fn icmp_type_and_code() {
        let mut r = allow();
        r.protocol = Some(PROTO_ICMP);
        r.icmp_type = Some(8);
        assert!(allowed(vec![r.clone()], key(A, B, PROTO_ICMP, 8 << 8, 77)));
        assert!(!allowed(vec![r.clone()], key(A, B, PROTO_ICMP, 0, 77)));
        r.icmp_type = Some(3);
        r.icmp_code = Some(4);
        assert!(allowed(vec![r.clone()], key(A, B, PROTO_ICMP, 3 << 8 | 4, 0)));
        assert!(!allowed(vec![r.clone()], key(A, B, PROTO_ICMP, 3 << 8 | 3, 0)));
        // The same sport value under TCP is not ICMP type 3 code 4.
        assert!(!allowed(vec![r], key(A, B, PROTO_TCP, 3 << 8 | 4, 0)));
    }

    #[test]
    fn default_deny_with_policy_default_allow_without() {
        let mut r = allow();
        r.protocol = Some(PROTO_TCP);
        let k = key(A, B, PROTO_UDP, 1, 2);
        assert_eq!(ingress_verdict(vec![r], &k).source, HitSource::DefaultDeny);
        // An empty policy still selects the endpoint: deny.
        assert_eq!(ingress_verdict(vec![], &k).action, Action::Deny);
        let cfg = PolicyConfig {
            policies: BTreeMap::from([("p".to_string(), vec![])]),
            endpoints: vec![EndpointPolicy { ingress: vec!["p".into()], egress: vec![] }],
            ..Default::default()
        };
        let ps = PolicySet::compile(&cfg, 1).unwrap();
        let allow_hit = RuleHit { action: Action::Allow, source: HitSource::DefaultAllow };
        assert_eq!(ps.evaluate(Some(0), Direction::Egress, &k), allow_hit);
        assert_eq!(ps.evaluate(None, Direction::Ingress, &k), allow_hit);
        assert_eq!(ps.evaluate(Some(9), Direction::Ingress, &k), allow_hit, "unknown endpoint");
        assert_eq!(PolicySet::allow_all().evaluate(Some(0), Direction::Ingress, &k), allow_hit);
    }

    #[test]
    fn global_rules_come_first_and_apply_to_transit() {
        let mut g = Rule::any(Action::Deny);
        g.dst = vec!["169.254.169.254/32".parse().unwrap()];
        let cfg = PolicyConfig {
            global: vec![g],
            policies: BTreeMap::from([("open".to_string(), vec![allow()])]),
            endpoints: vec![EndpointPolicy { ingress: vec![], egress: vec!["open".into()] }],
        };
        let ps = PolicySet::compile(&cfg, 7).unwrap();
        let meta = key(A, 0xa9fe_a9fe, PROTO_TCP, 1000, 80);
        let hit = ps.evaluate(Some(0), Direction::Egress, &meta);
        assert_eq!(hit, RuleHit { action: Action::Deny, source: HitSource::Global { rule: 0 } });
        assert_eq!(ps.evaluate(None, Direction::Egress, &meta).action, Action::Deny);
        let other = key(A, B, PROTO_TCP, 1000, 80);
        let hit = ps.evaluate(Some(0), Direction::Egress, &other);
        assert_eq!(hit.source, HitSource::Policy { policy: 0, rule: 0 });
        assert_eq!(ps.describe(hit), "allow by policy 'open' rule 0");
        assert_eq!(ps.generation(), 7);
    }

    #[test]
    fn policies_concatenate_in_endpoint_order_and_lists_are_shared() {
        let mut deny22 = Rule::any(Action::Deny);
        deny22.protocol = Some(PROTO_TCP);
        deny22.dst_ports = vec![PortRange::single(22)];
        let cfg = PolicyConfig {
            global: vec![],
            policies: BTreeMap::from([("a-open".to_string(), vec![allow()]), ("b-no-ssh".to_string(), vec![deny22])]),
            endpoints: vec![
                EndpointPolicy { ingress: vec!["b-no-ssh".into(), "a-open".into()], egress: vec![] },
                EndpointPolicy { ingress: vec!["a-open".into(), "b-no-ssh".into()], egress: vec![] },
                EndpointPolicy { ingress: vec!["b-no-ssh".into(), "a-open".into()], egress: vec![] },
            ],
        };
        let ps = PolicySet::compile(&cfg, 1).unwrap();
        let ssh = key(A, B, PROTO_TCP, 40000, 22);
        let h0 = ps.evaluate(Some(0), Direction::Ingress, &ssh);
        assert_eq!(h0, RuleHit { action: Action::Deny, source: HitSource::Policy { policy: 1, rule: 0 } });
        assert_eq!(ps.evaluate(Some(1), Direction::Ingress, &ssh).action, Action::Allow);
        assert_eq!(ps.evaluate(Some(2), Direction::Ingress, &ssh), h0);
        assert_eq!(ps.compiled_lists(), 2);
    }

    #[test]
    fn non_first_fragments_skip_rules_with_l4_conditions() {
        let mut r = allow();
        r.protocol = Some(PROTO_UDP);
        r.dst_ports = vec![PortRange { lo: 0, hi: 65535 }];
        let mut icmp = allow();
        icmp.protocol = Some(PROTO_ICMP);
        icmp.icmp_type = Some(0);
        let mut any_udp = Rule::any(Action::Deny);
        any_udp.protocol = Some(PROTO_UDP);
        let mut k = key(A, B, PROTO_UDP, 0, 0);
        for (frag, action) in
            [(Fragment::None, Action::Allow), (Fragment::First, Action::Allow), (Fragment::NonFirst, Action::Deny)]
        {
            k.fragment = frag;
            let hit = ingress_verdict(vec![r.clone(), any_udp.clone()], &k);
            assert_eq!(hit.action, action, "{frag:?}");
        }
        k.proto = PROTO_ICMP;
        k.fragment = Fragment::NonFirst;
        assert_eq!(ingress_verdict(vec![icmp], &k).source, HitSource::DefaultDeny);
    }

    #[test]
    fn compile_errors_name_the_place_and_what_is_valid() {
        let mut bad = allow();
        bad.dst_ports = vec![PortRange::single(80)];
        let cfg = PolicyConfig { global: vec![allow(), bad.clone()], ..Default::default() };
        let e = PolicySet::compile(&cfg, 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "global rule 1: ports need protocol tcp, udp or sctp, but the rule has protocol any (none given)"
        );
        let cfg = PolicyConfig {
            policies: BTreeMap::from([("web".to_string(), vec![allow(), allow(), bad])]),
            ..Default::default()
        };
        let e = PolicySet::compile(&cfg, 1).unwrap_err().to_string();
        assert!(e.starts_with("policy 'web' rule 2: ports need"), "{e}");
        let cfg = PolicyConfig {
            policies: BTreeMap::from([("web".to_string(), vec![])]),
            endpoints: vec![
                EndpointPolicy::default(),
                EndpointPolicy { ingress: vec![], egress: vec!["web".into(), "wbe".into()] },
            ],
            ..Default::default()
        };
        let e = PolicySet::compile(&cfg, 1).unwrap_err().to_string();
        assert_eq!(e, "endpoint 1 egress policy 1: 'wbe' is not defined (defined policies: 'web')");
    }

    #[test]
    fn policy_set_is_send_and_sync() {
        fn shared<T: Send + Sync>() {}
        shared::<PolicySet>();
    }

    #[test]
    fn describe_renders_every_source() {
        let ps = PolicySet::allow_all();
        let d = |action, source| ps.describe(RuleHit { action, source });
        assert_eq!(d(Action::Deny, HitSource::Global { rule: 3 }), "deny by global rule 3");
        assert!(d(Action::Deny, HitSource::DefaultDeny).starts_with("deny by default"));
        assert!(d(Action::Allow, HitSource::DefaultAllow).starts_with("allow by default"));
        assert!(d(Action::Allow, HitSource::Policy { policy: 4, rule: 1 }).contains("#4"));
    }

    // --- Property tests against the naive ordered list -------------------------------------

    /// The semantics, read directly off the config.
    fn naive(cfg: &PolicyConfig, ep: Option<EndpointId>, dir: Direction, k: &FlowKey) -> RuleHit {
        if let Some(i) = cfg.global.iter().position(|r| r.matches(k)) {
            return RuleHit { action: cfg.global[i].action, source: HitSource::Global { rule: i as u32 } };
        }
        let pols = match ep.and_then(|e| cfg.endpoints.get(e as usize)) {
            Some(e) if dir == Direction::Ingress => &e.ingress,
            Some(e) => &e.egress,
            None => return RuleHit { action: Action::Allow, source: HitSource::DefaultAllow },
        };
        if pols.is_empty() {
            return RuleHit { action: Action::Allow, source: HitSource::DefaultAllow };
        }
        for name in pols {
            let pi = cfg.policies.keys().position(|n| n == name).unwrap() as u32;
            let rules = &cfg.policies[name];
            if let Some(i) = rules.iter().position(|r| r.matches(k)) {
                return RuleHit { action: rules[i].action, source: HitSource::Policy { policy: pi, rule: i as u32 } };
            }
        }
        RuleHit { action: Action::Deny, source: HitSource::DefaultDeny }
    }

    /// Addresses and ports near which rule boundaries fall, so random keys hit edges.
    const ADDRS: &[u32] = &[0, 0x0a00_0000, 0x0a00_0040, 0x0a00_00ff, 0x0a00_0100, 0x0a01_0000, 0xc0a8_0001, u32::MAX];
    const LENS: &[u8] = &[0, 1, 8, 16, 24, 26, 31, 32];
    const PORTS: &[u16] = &[0, 1, 22, 53, 79, 80, 81, 443, 1024, 8000, 8080, 65535];
    const PROTOS: &[u8] = &[PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_SCTP, 47, 0];

    fn prefix() -> impl Strategy<Value = crate::fib::Ipv4Prefix> {
        (prop::sample::select(ADDRS), prop::sample::select(LENS))
            .prop_map(|(a, l)| crate::fib::Ipv4Prefix::new_masked(a, l))
    }

    fn port_range() -> impl Strategy<Value = PortRange> {
        (prop::sample::select(PORTS), prop::sample::select(PORTS))
            .prop_map(|(a, b)| PortRange { lo: a.min(b), hi: a.max(b) })
    }

    fn rule() -> impl Strategy<Value = Rule> {
        (
            prop::bool::ANY,
            prop::collection::vec(prefix(), 0..3),
            prop::collection::vec(prefix(), 0..3),
            prop::option::weighted(0.7, prop::sample::select(PROTOS)),
            prop::collection::vec(port_range(), 0..3),
            prop::collection::vec(port_range(), 0..3),
            prop::option::of(prop::sample::select(&[0u8, 3, 8, 11][..])),
            prop::option::of(0u8..3),
        )
            .prop_map(|(allow, src, dst, protocol, sp, dp, ty, code)| {
                let l4 = matches!(protocol, Some(PROTO_TCP | PROTO_UDP | PROTO_SCTP));
                let icmp = protocol == Some(PROTO_ICMP);
                Rule {
                    action: if allow { Action::Allow } else { Action::Deny },
                    src,
                    dst,
                    protocol,
                    src_ports: if l4 { sp } else { vec![] },
                    dst_ports: if l4 { dp } else { vec![] },
                    icmp_type: if icmp { ty } else { None },
                    icmp_code: if icmp && ty.is_some() { code } else { None },
                }
            })
    }

    fn flow_key() -> impl Strategy<Value = FlowKey> {
        let addr =
            (prop::sample::select(ADDRS), -1i64..=1).prop_map(|(a, d)| (a as i64 + d).clamp(0, u32::MAX as i64) as u32);
        let port = (prop::sample::select(PORTS), -1i32..=1).prop_map(|(p, d)| (p as i32 + d).clamp(0, 65535) as u16);
        let icmp_sport =
            (prop::sample::select(&[0u8, 3, 8, 11][..]), 0u8..3).prop_map(|(t, c)| (t as u16) << 8 | c as u16);
        (
            addr.clone(),
            addr,
            prop::sample::select(PROTOS),
            prop_oneof![port.clone(), icmp_sport],
            port,
            prop::sample::select(&[Fragment::None, Fragment::First, Fragment::NonFirst][..]),
        )
            .prop_map(|(src, dst, proto, sport, dport, fragment)| FlowKey {
                src,
                dst,
                proto,
                sport,
                dport,
                fragment,
            })
    }

    fn config() -> impl Strategy<Value = PolicyConfig> {
        (
            prop::collection::vec(rule(), 0..12),
            prop::collection::vec(prop::collection::vec(rule(), 0..120), 1..4),
            prop::collection::vec(
                (prop::collection::vec(0usize..4, 0..3), prop::collection::vec(0usize..4, 0..3)),
                0..4,
            ),
        )
            .prop_map(|(global, pols, eps)| {
                let name = |i: usize| format!("p{}", i % pols.len());
                PolicyConfig {
                    global,
                    endpoints: eps
                        .iter()
                        .map(|(i, e)| EndpointPolicy {
                            ingress: i.iter().map(|&x| name(x)).collect(),
                            egress: e.iter().map(|&x| name(x)).collect(),
                        })
                        .collect(),
                    policies: pols.into_iter().enumerate().map(|(i, r)| (format!("p{i}"), r)).collect(),
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn compiled_matches_naive_ordered_list(
            cfg in config(),
            keys in prop::collection::vec(flow_key(), 64),
        ) {
            let ps = PolicySet::compile(&cfg, 1).unwrap();
            for k in &keys {
                for ep in [None, Some(0), Some(1), Some(2), Some(3), Some(100)] {
                    for dir in [Direction::Ingress, Direction::Egress] {
                        prop_assert_eq!(ps.evaluate(ep, dir, k), naive(&cfg, ep, dir, k),
                            "ep {:?} {:?} key {:?}", ep, dir, k);
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Short lists take the linear path in `PolicySet`; check both forms on them.
        #[test]
        fn short_lists_agree_in_both_forms(
            rules in prop::collection::vec(rule(), 0..40),
            keys in prop::collection::vec(flow_key(), 64),
        ) {
            let refs: Vec<&Rule> = rules.iter().collect();
            let linear = Classifier::build(&rules);
            let bitsets = Classifier::build_bitsets(&refs);
            for k in &keys {
                let want = rules.iter().position(|r| r.matches(k)).map(|i| i as u32);
                prop_assert_eq!(linear.first_match(k), want, "linear, key {:?}", k);
                prop_assert_eq!(bitsets.first_match(k), want, "bitsets, key {:?}", k);
            }
        }
    }

    /// More than 4096 rules: the summary spans several words, which small cases never reach.
    #[test]
    fn large_list_matches_naive_across_summary_words() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let mut rules: Vec<Rule> = prop::collection::vec(rule(), 5000).new_tree(&mut runner).unwrap().current();
        // Rules past 4096 get a destination of their own, and each gets a witness key built
        // from its conditions, so first matches land in the second summary word.
        // Every rule also gets its /32 (and loses destinations wide enough to cover 11/8), so
        // that early catch-all rules do not shadow everything after them.
        let mut witnesses = Vec::new();
        for (i, r) in rules.iter_mut().enumerate() {
            let dst = 0x0b00_0000 + i as u32;
            r.dst.retain(|p| p.len() >= 8);
            r.dst.push(crate::fib::Ipv4Prefix::new_masked(dst, 32));
            if i < 4096 {
                continue;
            }
            let icmp = r.icmp_type.map(|t| (t as u16) << 8 | r.icmp_code.unwrap_or(0) as u16);
            witnesses.push(FlowKey {
                src: r.src.first().map_or(7, |p| p.addr()),
                dst,
                proto: r.protocol.unwrap_or(PROTO_TCP),
                sport: icmp.or(r.src_ports.first().map(|p| p.hi)).unwrap_or(9),
                dport: r.dst_ports.first().map_or(9, |p| p.lo),
                fragment: Fragment::None,
            });
        }
        let cfg = PolicyConfig {
            policies: BTreeMap::from([("big".to_string(), rules)]),
            endpoints: vec![EndpointPolicy { ingress: vec!["big".into()], egress: vec![] }],
            ..Default::default()
        };
        let ps = PolicySet::compile(&cfg, 1).unwrap();
        let mut keys = prop::collection::vec(flow_key(), 2000).new_tree(&mut runner).unwrap().current();
        keys.extend(witnesses.iter().step_by(3));
        let mut late = 0;
        for k in &keys {
            let hit = ps.evaluate(Some(0), Direction::Ingress, k);
            assert_eq!(hit, naive(&cfg, Some(0), Direction::Ingress, k), "key {k:?}");
            if matches!(hit.source, HitSource::Policy { rule, .. } if rule >= 4096) {
                late += 1;
            }
        }
        assert!(late > 0, "no key reached the second summary word; the test lost its point");
    }
}

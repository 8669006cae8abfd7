//! Network policy: the rule model, a compiled classifier, and connection tracking.
//!
//! Three layers, each usable on its own:
//!
//! - [`rule`]: what the operator writes ([`PolicyConfig`], [`Rule`]), its serde form, and a slow
//!   but obviously correct [`Rule::matches`] that the tests use as the reference model.
//! - [`policy`]: [`PolicySet::compile`] turns a config into an immutable, `Send + Sync`
//!   classifier that the control plane publishes behind an `Arc`; workers call
//!   [`PolicySet::evaluate`] per packet with no allocation and no linear scan of the rules.
//! - [`conntrack`]: a per-worker, fixed-size [`ConnTrack`] so that the reply traffic of an
//!   admitted connection passes even where policy would deny that direction (Kubernetes
//!   NetworkPolicy semantics: policies are stateful).
//!
//! Evaluation order (Calico-like), for `(endpoint, direction, flow)`: the global rules in order,
//! first match decides; then the endpoint's policies for that direction as one ordered list,
//! first match decides; no match is `Deny` if the endpoint has at least one policy for the
//! direction and `Allow` if it has none (an endpoint selected by no policy allows everything).
//! Traffic with no local endpoint (transit) sees only the global rules, then `Allow`.

pub mod classifier;
pub mod conntrack;
pub mod policy;
pub use vrouter_types::acl::rule;

pub use conntrack::{ConnTrack, CtDir, CtEntryView, CtError, CtLookup, CtState, CtTimeouts};
pub use policy::{AclError, HitSource, PolicySet, RuleHit};
pub use rule::{EndpointPolicy, PolicyConfig, PortRange, Rule, RuleError};

/// Index of a local endpoint (pod interface): its position in [`PolicyConfig::endpoints`].
pub type EndpointId = u16;

/// The value types of the rule model live in vrouter-types (the control protocol needs them
/// without the data plane); here at their old paths.
pub use vrouter_types::acl::{
    Action, FlowKey, Fragment, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
};

/// Which way a packet crosses the endpoint: `Ingress` is towards the pod, `Egress` from it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

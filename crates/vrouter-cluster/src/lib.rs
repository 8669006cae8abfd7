//! The cluster's intent, as Calico keeps it: resources in etcd (`projectcalico.org/v3` kinds),
//! label selectors, network policy compiled for vrouter's classifier, IP address management,
//! each node's desired state, and its BGP intent (what its BIRD is told). The node agent, the
//! CNI plugin and vrouterctl's datastore commands are built on it; the data plane daemon never
//! links it (nor an etcd client).

pub mod bgp;
pub mod datastore;
pub mod desired;
pub mod ipam;
pub mod policy;
pub mod resource;
pub mod selector;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

//! The cluster as the agent last read it from etcd: every resource and IPAM block, parsed
//! once when its key changes, at a revision. A value vrouter cannot read is left out and
//! reported (once per revision of that key), never half-read.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use vrouter_cluster::desired::{self, BlockInfo, EndpointInfo, Inputs, NodeInfo, NodeState, PoolInfo, Skipped};
use vrouter_cluster::ipam::{Block, PoolRef};
use vrouter_cluster::policy;
use vrouter_cluster::resource::{
    resource_key, GlobalNetworkPolicy, Kind, Metadata, NetworkPolicy, Node, NodeAddress, NodeBgp, NodeSpec, Profile,
    Resource, WorkloadEndpoint,
};
use vrouter_cluster::store::{keys, Kv, Store, StoreError, WatchEvent};
use vrouter_types::Ipv4Prefix;

pub use vrouter_cluster::resource::{MTU_ANNOTATION, NETNS_ANNOTATION};

#[derive(Debug)]
enum Entry {
    Resource(Box<Resource>),
    Block(Block),
}

#[derive(Debug, Default)]
pub struct View {
    revision: i64,
    entries: BTreeMap<String, Entry>,
}

impl View {
    pub fn from_list(kvs: Vec<Kv>, revision: i64) -> View {
        let mut v = View { revision, entries: BTreeMap::new() };
        for kv in kvs {
            v.put(kv);
        }
        v
    }

    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Every change up to `revision` has been seen: a watch's progress (etcd's progress
    /// notifications advance it while nothing under the prefix changes), so a resumed watch
    /// starts after it and does not ask for history etcd may have compacted since.
    pub fn advance(&mut self, revision: i64) {
        self.revision = self.revision.max(revision);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn apply(&mut self, ev: WatchEvent) {
        self.revision = self.revision.max(ev.mod_revision());
        match ev {
            WatchEvent::Put(kv) => self.put(kv),
            WatchEvent::Delete { key, .. } => {
                self.entries.remove(&key);
            }
        }
    }

    fn put(&mut self, kv: Kv) {
        match parse(&kv) {
            Some(Ok(e)) => {
                self.entries.insert(kv.key, e);
            }
            Some(Err(why)) => {
                tracing::warn!(key = %kv.key, revision = kv.mod_revision, "left out: {why}");
                self.entries.remove(&kv.key);
            }
            None => {} // handles, affinities, other tools' keys
        }
    }

    /// Every resource in the view, in key order.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.entries.values().filter_map(|e| match e {
            Entry::Resource(r) => Some(r.as_ref()),
            Entry::Block(_) => None,
        })
    }

    fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.entries.values().filter_map(|e| match e {
            Entry::Block(b) => Some(b),
            Entry::Resource(_) => None,
        })
    }

    fn node(&self, name: &str) -> Option<&Node> {
        self.resources().find_map(|r| match r {
            Resource::Node(n) if n.metadata.name == name => Some(n),
            _ => None,
        })
    }

    pub fn has_block(&self, node: &str) -> bool {
        self.blocks().any(|b| b.affine_node() == Some(node))
    }

    /// The enabled pools whose nodeSelector matches `node`'s labels, in name order.
    pub fn pools_for(&self, node: &str) -> Vec<PoolRef> {
        let empty = BTreeMap::new();
        let labels = self.node(node).map(|n| &n.metadata.labels).unwrap_or(&empty);
        self.resources()
            .filter_map(|r| match r {
                Resource::IpPool(p) if p.spec.allocates_for(labels) => {
                    Some(PoolRef { cidr: p.spec.cidr, block_size: p.spec.block_size })
                }
                _ => None,
            })
            .collect()
    }

    /// The inputs of [`desired::node_state`].
    pub fn inputs(&self) -> Inputs {
        let mut i = Inputs::default();
        for r in self.resources() {
            match r {
                Resource::Node(n) => i.nodes.push(NodeInfo::of(n)),
                Resource::IpPool(p) => i.pools.push(PoolInfo { cidr: p.spec.cidr, ipip: p.spec.ipip_mode }),
                Resource::WorkloadEndpoint(w) => i.endpoints.push(EndpointInfo {
                    key: r.display_name(),
                    node: w.spec.node.clone(),
                    addrs: w.spec.ip_networks.iter().map(|p| Ipv4Addr::from(p.addr())).collect(),
                    mac: w.spec.mac,
                    tap: w.spec.interface_name.clone().unwrap_or_default(),
                    ifname: w.spec.endpoint.clone().unwrap_or_else(|| "eth0".into()),
                    netns: w.metadata.annotations.get(NETNS_ANNOTATION).cloned(),
                    mtu: w.metadata.annotations.get(MTU_ANNOTATION).and_then(|m| m.parse().ok()),
                }),
                Resource::BgpConfiguration(c) => i.bgp_configs.push(c.clone()),
                Resource::BgpPeer(p) => i.bgp_peers.push(p.clone()),
                _ => {}
            }
        }
        for b in self.blocks() {
            i.blocks.push(BlockInfo { cidr: b.cidr, node: b.affine_node().map(str::to_string) });
        }
        i
    }

    /// The resources policy compilation reads, by kind (cloned out of the view).
    pub fn policy_resources(&self) -> PolicyResources {
        let mut p = PolicyResources::default();
        for r in self.resources() {
            match r {
                Resource::WorkloadEndpoint(w) => p.endpoints.push(w.clone()),
                Resource::NetworkPolicy(x) => p.network_policies.push(x.clone()),
                Resource::GlobalNetworkPolicy(x) => p.global_policies.push(x.clone()),
                Resource::Profile(x) => p.profiles.push(x.clone()),
                _ => {}
            }
        }
        p
    }

    /// This node's desired state: the cluster's, with its policy compiled for its pods.
    pub fn node_state(&self, me: &str) -> (NodeState, Vec<Skipped>) {
        let inputs = self.inputs();
        let compiled = policy::compile(&self.policy_resources().input(me));
        desired::node_state(&inputs, me, &compiled.policies, &compiled.endpoints)
    }
}

/// What [`policy::compile`] reads, owned (see [`View::policy_resources`]).
#[derive(Debug, Default)]
pub struct PolicyResources {
    pub endpoints: Vec<WorkloadEndpoint>,
    pub network_policies: Vec<NetworkPolicy>,
    pub global_policies: Vec<GlobalNetworkPolicy>,
    pub profiles: Vec<Profile>,
}

impl PolicyResources {
    pub fn input<'a>(&'a self, node: &'a str) -> policy::PolicyInput<'a> {
        policy::PolicyInput {
            endpoints: &self.endpoints,
            network_policies: &self.network_policies,
            global_policies: &self.global_policies,
            profiles: &self.profiles,
            node,
        }
    }
}

fn parse(kv: &Kv) -> Option<Result<Entry, String>> {
    if let Some(rest) = kv.key.strip_prefix(keys::RESOURCES) {
        let plural = rest.split('/').next().unwrap_or_default();
        let kind = Kind::ALL.into_iter().find(|k| k.plural() == plural)?;
        return Some(
            Resource::from_stored(kind, &kv.value, kv.mod_revision)
                .map(|r| Entry::Resource(Box::new(r)))
                .map_err(|e| e.to_string()),
        );
    }
    if kv.key.starts_with(keys::BLOCKS) {
        return Some(match serde_json::from_slice::<Block>(&kv.value) {
            Ok(mut b) => {
                b.mod_revision = kv.mod_revision;
                Ok(Entry::Block(b))
            }
            Err(e) => Err(format!("IPAM block: {e}")),
        });
    }
    None
}

/// What the agent's options set in the node's `spec.bgp` (besides its address).
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeBgpArgs {
    pub as_number: Option<u32>,
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

/// Creates or updates this node's `Node` resource: its address (from the daemon's config)
/// and the labels given, merged into the labels the datastore has (an operator's labels stay).
pub async fn register_node(
    store: &Store,
    name: &str,
    ip: Ipv4Addr,
    subnet: Ipv4Prefix,
    labels: &BTreeMap<String, String>,
    bgp_args: NodeBgpArgs,
) -> Result<(), StoreError> {
    let key = resource_key(Kind::Node, None, name);
    for _ in 0..10 {
        let current = store.get(&key).await?;
        let address = NodeAddress { ip, prefix_len: subnet.len() };
        let mut node = match &current {
            Some(kv) => match Resource::from_stored(Kind::Node, &kv.value, kv.mod_revision) {
                Ok(Resource::Node(n)) => n,
                _ => {
                    tracing::warn!("node {name}: the stored Node is unreadable; writing ours over it");
                    Node { metadata: Metadata::named(name), spec: NodeSpec::default() }
                }
            },
            None => Node { metadata: Metadata::named(name), spec: NodeSpec::default() },
        };
        let before = node.clone();
        node.metadata.labels.extend(labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        let bgp = node.spec.bgp.get_or_insert_with(NodeBgp::default);
        bgp.ipv4_address = Some(address);
        if bgp_args.as_number.is_some() {
            bgp.as_number = bgp_args.as_number;
        }
        if bgp_args.route_reflector_cluster_id.is_some() {
            bgp.route_reflector_cluster_id = bgp_args.route_reflector_cluster_id;
        }
        if current.is_some() && node == before {
            return Ok(());
        }
        let value = Resource::Node(node).to_stored_json();
        let written = match &current {
            None => store.create(&key, &value).await,
            Some(kv) => store.update(&key, &value, kv.mod_revision).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(node = name, address = %format!("{ip}/{}", subnet.len()), "registered");
                return Ok(());
            }
            Err(StoreError::Conflict { .. } | StoreError::Exists { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Unavailable {
        endpoints: store.endpoints().to_string(),
        msg: format!("node {name}: the Node kept changing under 10 attempts to register"),
    })
}

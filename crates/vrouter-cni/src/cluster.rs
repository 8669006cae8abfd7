//! The real [`Backend`]: etcd through vrouter-cluster (resources, IPAM) and the node's daemon
//! through vrouterctl's client. Each call runs to completion on a single-threaded runtime: a CNI
//! plugin is one short process per call.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vrouter_api::reply as r;
use vrouter_api::{ChangeReport, EndpointConfig, Ipv4Prefix, Request};
use vrouter_cluster::ipam::{self, Attrs, IpamError, PoolRef};
use vrouter_cluster::resource::{Kind, Metadata, Resource, WorkloadEndpoint, WorkloadEndpointSpec};
use vrouter_cluster::store::{keys, Store, StoreError};
use vrouterctl::CallError;

use crate::plugin::{Backend, BackendError, Pool, Wep};
use crate::spec::{CniError, Code, NetConf};

pub use vrouter_cluster::resource::{MTU_ANNOTATION, NETNS_ANNOTATION};
/// How long ADD waits for the node's daemon to know the pod's block (claimed by IPAM just
/// now, applied by the node agent) and the pending policy (installed by the agent).
pub const AGENT_WAIT: Duration = Duration::from_secs(10);
/// A daemon request's timeout.
const DAEMON_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Cluster {
    rt: tokio::runtime::Runtime,
    store: Store,
    socket: PathBuf,
    agent_wait: Duration,
}

/// The backend for `conf`: a connection to its etcd (unreachable: [`Code::TryAgainLater`]).
pub fn connect(conf: &NetConf) -> Result<Box<dyn Backend>, CniError> {
    Ok(Box::new(Cluster::connect(conf, AGENT_WAIT)?))
}

impl Cluster {
    pub fn connect(conf: &NetConf, agent_wait: Duration) -> Result<Cluster, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CniError::new(Code::Plugin, format!("cannot start the async runtime: {e}")))?;
        let store = rt
            .block_on(Store::connect(&conf.etcd_endpoints))
            .map_err(|e| store_err(e).into_cni_connect(&conf.etcd_endpoints))?;
        Ok(Cluster { rt, store, socket: PathBuf::from(&conf.socket), agent_wait })
    }

    fn daemon<T: serde::de::DeserializeOwned>(&self, req: Request) -> Result<T, CallError> {
        vrouterctl::request(&self.socket, req, DAEMON_TIMEOUT)
    }
}

trait ConnectErr {
    fn into_cni_connect(self, endpoints: &[String]) -> CniError;
}

impl ConnectErr for BackendError {
    fn into_cni_connect(self, endpoints: &[String]) -> CniError {
        match self {
            BackendError::Unavailable(d) => {
                CniError::new(Code::TryAgainLater, format!("etcd ({}) is unreachable", endpoints.join(",")))
                    .with_details(d)
            }
            BackendError::Failed(d) => CniError::new(Code::Plugin, format!("etcd ({}): {d}", endpoints.join(","))),
        }
    }
}

fn store_err(e: StoreError) -> BackendError {
    if e.is_unavailable() {
        BackendError::Unavailable(e.to_string())
    } else {
        BackendError::Failed(e.to_string())
    }
}

fn ipam_err(e: IpamError) -> BackendError {
    match e {
        IpamError::Store(s) => store_err(s),
        e => BackendError::Failed(e.to_string()),
    }
}

fn daemon_err(e: CallError) -> BackendError {
    match e {
        CallError::Unreachable(m) => BackendError::Unavailable(m),
        CallError::Daemon(e) => BackendError::Failed(e.to_string()),
    }
}

fn wep_key(namespace: &str, name: &str) -> String {
    vrouter_cluster::resource::resource_key(Kind::WorkloadEndpoint, Some(namespace), name)
}

fn to_resource(w: &Wep) -> Resource {
    let mut annotations = BTreeMap::new();
    annotations.insert(NETNS_ANNOTATION.to_string(), w.netns.clone());
    annotations.insert(MTU_ANNOTATION.to_string(), w.mtu.to_string());
    Resource::WorkloadEndpoint(WorkloadEndpoint {
        metadata: Metadata {
            name: w.name.clone(),
            namespace: Some(w.namespace.clone()),
            labels: w.labels.clone(),
            annotations,
            resource_version: None,
        },
        spec: WorkloadEndpointSpec {
            node: w.node.clone(),
            orchestrator: Some("cni".into()),
            workload: Some(w.container_id.chars().take(12).collect()),
            pod: w.pod.clone(),
            endpoint: Some(w.ifname.clone()),
            container_id: Some(w.container_id.clone()),
            interface_name: Some(w.tap.clone()),
            mac: Some(w.mac),
            ip_networks: w.addrs.iter().map(|a| Ipv4Prefix::new_masked(u32::from(*a), 32)).collect(),
            // Calico's namespace profile: its labelsToApply are the namespace's labels.
            profiles: vec![format!("kns.{}", w.namespace)],
            ports: vec![],
        },
    })
}

fn from_resource(r: Resource) -> Option<Wep> {
    let Resource::WorkloadEndpoint(w) = r else { return None };
    let s = w.spec;
    Some(Wep {
        namespace: w.metadata.namespace.unwrap_or_default(),
        name: w.metadata.name,
        node: s.node,
        container_id: s.container_id.unwrap_or_default(),
        pod: s.pod,
        ifname: s.endpoint.unwrap_or_default(),
        tap: s.interface_name.unwrap_or_default(),
        mac: s.mac.unwrap_or(vrouter_api::MacAddr([0; 6])),
        addrs: s.ip_networks.iter().map(|p| Ipv4Addr::from(p.addr())).collect(),
        labels: w.metadata.labels,
        netns: w.metadata.annotations.get(NETNS_ANNOTATION).cloned().unwrap_or_default(),
        mtu: w
            .metadata
            .annotations
            .get(MTU_ANNOTATION)
            .and_then(|m| m.parse().ok())
            .unwrap_or(vrouter_api::config::DEFAULT_POD_MTU),
    })
}

/// Whether the daemon refused an endpoint for what the node agent has not applied yet: the
/// address's block, or the pending policy.
fn waits_for_agent(msg: &str) -> bool {
    msg.contains("is outside node.pod_block and pod_blocks") || msg.contains("unknown policy 'vrouter.pending'")
}

impl Backend for Cluster {
    fn pools(&mut self, node: &str) -> Result<Vec<Pool>, BackendError> {
        let store = &self.store;
        self.rt.block_on(async {
            let key = vrouter_cluster::resource::resource_key(Kind::Node, None, node);
            let Some(kv) = store.get(&key).await.map_err(store_err)? else {
                return Err(BackendError::Unavailable(format!(
                    "node {node} is not registered in the datastore (no {key}): is vrouter-agent running on it, with this name?"
                )));
            };
            let labels = match Resource::from_stored(Kind::Node, &kv.value, kv.mod_revision) {
                Ok(Resource::Node(n)) => n.metadata.labels,
                Ok(_) => BTreeMap::new(),
                Err(e) => return Err(BackendError::Failed(format!("{key}: {e}"))),
            };
            let (pools, _) = store.list(&keys::resources(Kind::IpPool.plural(), None)).await.map_err(store_err)?;
            let mut out = Vec::new();
            for kv in pools {
                match Resource::from_stored(Kind::IpPool, &kv.value, kv.mod_revision) {
                    Ok(Resource::IpPool(p)) if p.spec.allocates_for(&labels) => {
                        out.push(Pool { cidr: p.spec.cidr, block_size: p.spec.block_size })
                    }
                    Ok(_) => {}
                    Err(e) => return Err(BackendError::Failed(format!("{}: {e}", kv.key))),
                }
            }
            Ok(out)
        })
    }

    fn assign(&mut self, node: &str, handle: &str, pools: &[Pool], wep: &Wep) -> Result<Ipv4Addr, BackendError> {
        let pools: Vec<PoolRef> = pools.iter().map(|p| PoolRef { cidr: p.cidr, block_size: p.block_size }).collect();
        let attrs = Attrs {
            node: node.to_string(),
            namespace: Some(wep.namespace.clone()),
            pod: Some(wep.pod.clone().unwrap_or_else(|| wep.name.clone())),
        };
        self.rt.block_on(ipam::assign(&self.store, node, handle, &pools, &attrs)).map_err(ipam_err)
    }

    fn release(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError> {
        self.rt.block_on(ipam::release(&self.store, handle)).map_err(ipam_err)
    }

    fn handle_addrs(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError> {
        let store = &self.store;
        self.rt.block_on(async {
            let Some(kv) = store.get(&keys::handle(handle)).await.map_err(store_err)? else { return Ok(vec![]) };
            let h: serde_json::Value = serde_json::from_slice(&kv.value)
                .map_err(|e| BackendError::Failed(format!("{}: not JSON: {e}", kv.key)))?;
            let mut out = Vec::new();
            for cidr in h
                .get("block")
                .and_then(|b| b.as_object())
                .map(|b| b.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
            {
                let Ok(prefix) = cidr.parse::<Ipv4Prefix>() else { continue };
                let Some(b) = store.get(&keys::block(prefix)).await.map_err(store_err)? else { continue };
                let block: ipam::Block =
                    serde_json::from_slice(&b.value).map_err(|e| BackendError::Failed(format!("{}: {e}", b.key)))?;
                out.extend(block.ips_of(handle));
            }
            Ok(out)
        })
    }

    fn wep_get(&mut self, namespace: &str, name: &str) -> Result<Option<Wep>, BackendError> {
        let key = wep_key(namespace, name);
        let kv = self.rt.block_on(self.store.get(&key)).map_err(store_err)?;
        let Some(kv) = kv else { return Ok(None) };
        let r = Resource::from_stored(Kind::WorkloadEndpoint, &kv.value, kv.mod_revision)
            .map_err(|e| BackendError::Failed(format!("{key}: {e}")))?;
        Ok(from_resource(r))
    }

    fn wep_create(&mut self, w: &Wep) -> Result<(), BackendError> {
        let r = to_resource(w);
        self.rt.block_on(self.store.create(&r.key(), &r.to_stored_json())).map(drop).map_err(store_err)
    }

    fn wep_delete(&mut self, namespace: &str, name: &str) -> Result<bool, BackendError> {
        match self.rt.block_on(self.store.delete(&wep_key(namespace, name), None)) {
            Ok(()) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    fn endpoint_add(&mut self, e: &EndpointConfig) -> Result<(), BackendError> {
        let deadline = Instant::now() + self.agent_wait;
        loop {
            match self.daemon::<ChangeReport>(Request::EndpointAdd { endpoint: e.clone() }) {
                Ok(_) => return Ok(()),
                Err(CallError::Daemon(d)) if waits_for_agent(&d.to_string()) => {
                    if Instant::now() >= deadline {
                        return Err(BackendError::Unavailable(format!(
                            "the node daemon still refuses the pod after {:?}, waiting for the node agent to apply its block or policy (is vrouter-agent running?): {d}",
                            self.agent_wait
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
                Err(other) => return Err(daemon_err(other)),
            }
        }
    }

    fn endpoint_del(&mut self, name: &str) -> Result<bool, BackendError> {
        match self.daemon::<ChangeReport>(Request::EndpointDel { name: name.to_string() }) {
            Ok(_) => Ok(true),
            Err(CallError::Daemon(d)) if d.to_string() == format!("no endpoint '{name}'") => Ok(false),
            Err(e) => Err(daemon_err(e)),
        }
    }

    fn endpoint_get(&mut self, name: &str) -> Result<Option<EndpointConfig>, BackendError> {
        let all: r::Endpoints = self.daemon(Request::Endpoints).map_err(daemon_err)?;
        Ok(all.endpoints.into_iter().map(|e| e.config).find(|e| e.name == name))
    }
}

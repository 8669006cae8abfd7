//! ADD, DEL and CHECK over a [`Backend`] (the datastore and the node's daemon; a fake in the
//! tests below). ADD undoes what it did when a later step fails; DEL removes whatever of the
//! container's pieces exists, in the order that keeps the node agent from re-creating any.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde_json::Value;

use vrouter_api::EndpointConfig;
use vrouter_types::{Ipv4Prefix, MacAddr};

use crate::identity::Identity;
use crate::spec::{self, Added, CniError, Code, Env, NetConf};

/// The policy a new pod starts under (see [`vrouter_api::PENDING_POLICY`]).
pub use vrouter_api::PENDING_POLICY;
/// The pods' gateway (answered by the daemon's proxy ARP): Calico's.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The MAC of the daemon's side of every pod port.
pub const HOST_MAC: MacAddr = MacAddr([0xee; 6]);

/// An IP pool a node may allocate from (enabled, its node selector matching the node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub cidr: Ipv4Prefix,
    pub block_size: u8,
}

/// A WorkloadEndpoint as the plugin writes and reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wep {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub container_id: String,
    /// `K8S_POD_NAME`, when the runtime gave one.
    pub pod: Option<String>,
    /// The interface in the pod (`spec.endpoint`).
    pub ifname: String,
    /// The host TAP (`spec.interfaceName`).
    pub tap: String,
    pub mac: MacAddr,
    pub addrs: Vec<Ipv4Addr>,
    pub labels: BTreeMap<String, String>,
    /// The pod's network namespace (annotation `vrouter.io/netns`).
    pub netns: String,
    /// The pod interface's MTU (annotation `vrouter.io/mtu`): the agent gives the port the
    /// same one, so the two never disagree and replace the port.
    pub mtu: u16,
}

/// What went wrong in the datastore or the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// Not reachable now (etcd down, no daemon on the socket, the node's block not there yet):
    /// the runtime may try again.
    Unavailable(String),
    /// Refused or failed for good (the message says what).
    Failed(String),
}

impl BackendError {
    fn into_cni(self, what: &str) -> CniError {
        match self {
            BackendError::Unavailable(d) => {
                CniError::new(Code::TryAgainLater, format!("{what}: unavailable")).with_details(d)
            }
            BackendError::Failed(d) => CniError::new(Code::Plugin, format!("{what}: {d}")),
        }
    }
    fn text(&self) -> &str {
        match self {
            BackendError::Unavailable(d) | BackendError::Failed(d) => d,
        }
    }
}

/// The datastore and the daemon, as ADD, DEL and CHECK use them.
pub trait Backend {
    /// The pools `node` allocates from, in order (an error if the node is not registered).
    fn pools(&mut self, node: &str) -> Result<Vec<Pool>, BackendError>;
    /// An address for `handle` (the same one again for a handle that holds one).
    fn assign(&mut self, node: &str, handle: &str, pools: &[Pool], wep: &Wep) -> Result<Ipv4Addr, BackendError>;
    /// Frees what `handle` holds (nothing held: fine).
    fn release(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError>;
    /// The addresses `handle` holds.
    fn handle_addrs(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError>;
    fn wep_get(&mut self, namespace: &str, name: &str) -> Result<Option<Wep>, BackendError>;
    /// Creates it (compare-and-swap: refused if it exists).
    fn wep_create(&mut self, wep: &Wep) -> Result<(), BackendError>;
    /// Deletes it if it exists; false if it did not.
    fn wep_delete(&mut self, namespace: &str, name: &str) -> Result<bool, BackendError>;
    /// Asks the daemon for the pod's port (the same port already running: fine).
    fn endpoint_add(&mut self, e: &EndpointConfig) -> Result<(), BackendError>;
    /// Removes it if the daemon has it; false if it did not.
    fn endpoint_del(&mut self, name: &str) -> Result<bool, BackendError>;
    fn endpoint_get(&mut self, name: &str) -> Result<Option<EndpointConfig>, BackendError>;
}

fn identity(conf: &NetConf, env: &Env) -> Identity {
    let ns = env.args.pod_namespace.as_deref().unwrap_or(&conf.namespace);
    Identity::new(&conf.node, ns, &env.container_id, &env.ifname)
}

/// The daemon's endpoint for a WorkloadEndpoint (what the node agent computes from it too).
pub fn endpoint_config(id: &Identity, wep: &Wep, mtu: u16) -> EndpointConfig {
    EndpointConfig {
        name: id.endpoint.clone(),
        tap: wep.tap.clone(),
        netns: Some(wep.netns.clone()),
        ifname: wep.ifname.clone(),
        mac: wep.mac,
        addrs: wep.addrs.clone(),
        mtu,
        ingress: vec![PENDING_POLICY.into()],
        egress: vec![PENDING_POLICY.into()],
    }
}

/// ADD: an address from IPAM, the WorkloadEndpoint, the pod's port; the result. A failure
/// undoes the steps done (the error's details say if an undo failed too).
pub fn add(b: &mut dyn Backend, conf: &NetConf, env: &Env) -> Result<Value, CniError> {
    let id = identity(conf, env);
    let pools = b.pools(&conf.node).map_err(|e| e.into_cni(&format!("reading the IP pools of node {}", conf.node)))?;
    if pools.is_empty() {
        return Err(CniError::new(
            Code::Plugin,
            format!("no enabled IPPool selects node {} (check the pools' nodeSelector and disabled)", conf.node),
        ));
    }
    let existing = b.wep_get(&id.namespace, &id.wep).map_err(|e| e.into_cni("reading the WorkloadEndpoint"))?;
    if let Some(w) = &existing {
        if w.container_id != env.container_id {
            return Err(CniError::new(
                Code::Plugin,
                format!(
                    "WorkloadEndpoint {}/{} exists for container {} (container IDs share their first 12 characters?)",
                    id.namespace, id.wep, w.container_id
                ),
            ));
        }
    }
    let mut wep = Wep {
        namespace: id.namespace.clone(),
        name: id.wep.clone(),
        node: conf.node.clone(),
        container_id: env.container_id.clone(),
        pod: env.args.pod_name.clone(),
        ifname: env.ifname.clone(),
        tap: id.tap.clone(),
        mac: env.args.mac.unwrap_or(id.mac),
        addrs: vec![],
        labels: conf.labels.clone(),
        netns: env.netns.clone(),
        mtu: conf.mtu,
    };
    let mut done = Undo::default();
    let r = (|| -> Result<(), CniError> {
        let ip = b
            .assign(&conf.node, &env.container_id, &pools, &wep)
            .map_err(|e| e.into_cni("assigning an address (IPAM)"))?;
        done.address = true;
        wep.addrs = vec![ip];
        // A repeated ADD of the same container finds its own WorkloadEndpoint: written again
        // (this call's netns and labels).
        if existing.is_some() {
            b.wep_delete(&id.namespace, &id.wep).map_err(|e| e.into_cni("replacing the WorkloadEndpoint"))?;
        }
        b.wep_create(&wep).map_err(|e| e.into_cni("writing the WorkloadEndpoint"))?;
        done.wep = true;
        let e = endpoint_config(&id, &wep, conf.mtu);
        done.endpoint = true; // a refused add may still have raced with the agent's
        b.endpoint_add(&e)
            .map_err(|e| e.into_cni(&format!("creating the pod's port on the node daemon ({})", conf.socket)))?;
        Ok(())
    })();
    if let Err(mut e) = r {
        let undo_errors = done.undo(b, &id, &env.container_id);
        if !undo_errors.is_empty() {
            let sep = if e.details.is_empty() { "" } else { "; " };
            e.details = format!("{}{sep}undo incomplete: {}", e.details, undo_errors.join("; "));
        }
        return Err(e);
    }
    Ok(spec::add_result(
        &conf.cni_version,
        &Added {
            host_ifname: id.tap.clone(),
            host_mac: HOST_MAC,
            ifname: env.ifname.clone(),
            mac: wep.mac,
            netns: env.netns.clone(),
            address: wep.addrs[0],
            gateway: POD_GATEWAY,
        },
    ))
}

/// What a failing ADD has to take back.
#[derive(Default)]
struct Undo {
    address: bool,
    wep: bool,
    endpoint: bool,
}

impl Undo {
    /// Undoes in reverse order; the errors of what could not be undone.
    fn undo(&self, b: &mut dyn Backend, id: &Identity, handle: &str) -> Vec<String> {
        let mut errors = Vec::new();
        if self.endpoint {
            if let Err(e) = b.endpoint_del(&id.endpoint) {
                errors.push(format!("endpoint {}: {}", id.endpoint, e.text()));
            }
        }
        if self.wep {
            if let Err(e) = b.wep_delete(&id.namespace, &id.wep) {
                errors.push(format!("WorkloadEndpoint {}/{}: {}", id.namespace, id.wep, e.text()));
            }
        }
        if self.address {
            if let Err(e) = b.release(handle) {
                errors.push(format!("address of handle {handle}: {}", e.text()));
            }
        }
        errors
    }
}

/// DEL: the WorkloadEndpoint first (so the node agent does not put the pod back), the port,
/// then the address (so it is not handed out while the pod still has it). Missing pieces are
/// fine; every piece is tried, and the first error is returned.
pub fn del(b: &mut dyn Backend, conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let id = identity(conf, env);
    let mut first: Option<CniError> = None;
    let mut note = |r: Result<(), CniError>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    // etcd unreachable: the pod's port still goes (its namespace is going away), and the
    // error (code 11) tells the runtime to try again for the rest.
    let wep = match b.wep_get(&id.namespace, &id.wep) {
        Ok(w) => w,
        Err(e) => {
            note(Err(e.into_cni("reading the WorkloadEndpoint")));
            None
        }
    };
    // Under these names, another container's endpoint (one whose ID starts with the same 12
    // characters): not ours to remove. Our address, if any, still goes.
    let others = wep.as_ref().is_some_and(|w| w.container_id != env.container_id);
    if !others {
        if wep.is_some() {
            note(
                b.wep_delete(&id.namespace, &id.wep).map(drop).map_err(|e| e.into_cni("deleting the WorkloadEndpoint")),
            );
        }
        note(
            b.endpoint_del(&id.endpoint)
                .map(drop)
                .map_err(|e| e.into_cni("removing the pod's port on the node daemon")),
        );
    }
    note(b.release(&env.container_id).map(drop).map_err(|e| e.into_cni("releasing the address (IPAM)")));
    first.map_or(Ok(()), Err)
}

/// CHECK: the WorkloadEndpoint, the daemon's endpoint and the IPAM handle agree with the
/// previous result.
pub fn check(b: &mut dyn Backend, conf: &NetConf, env: &Env) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3.") {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            format!("CHECK needs cniVersion 0.4.0 or later, not {}", conf.cni_version),
        ));
    }
    let prev = conf.prev_result.as_ref().ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
    let addr = spec::prev_address(prev)
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "prevResult has no IPv4 address in ips"))?;
    let id = identity(conf, env);
    let fail = |m: String| Err(CniError::new(Code::Plugin, m));
    let wep = b.wep_get(&id.namespace, &id.wep).map_err(|e| e.into_cni("reading the WorkloadEndpoint"))?;
    let Some(wep) = wep else { return fail(format!("no WorkloadEndpoint {}/{}", id.namespace, id.wep)) };
    if wep.container_id != env.container_id || !wep.addrs.contains(&addr) {
        return fail(format!(
            "WorkloadEndpoint {}/{} is container {} with {:?}, not {} with {addr}",
            id.namespace, id.wep, wep.container_id, wep.addrs, env.container_id
        ));
    }
    let held = b.handle_addrs(&env.container_id).map_err(|e| e.into_cni("reading the IPAM handle"))?;
    if !held.contains(&addr) {
        return fail(format!("IPAM handle {} holds {held:?}, not {addr}", env.container_id));
    }
    let e = b.endpoint_get(&id.endpoint).map_err(|e| e.into_cni("reading the node daemon's endpoints"))?;
    let Some(e) = e else { return fail(format!("the node daemon has no endpoint {}", id.endpoint)) };
    if !e.addrs.contains(&addr) || e.netns.as_deref() != Some(env.netns.as_str()) || e.ifname != env.ifname {
        return fail(format!(
            "the node daemon's endpoint {} is {:?} in {:?} as {}, not {addr} in {} as {}",
            id.endpoint, e.addrs, e.netns, e.ifname, env.netns, env.ifname
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::CniArgs;
    use crate::spec::Command;

    /// The datastore and daemon in memory, with a failure to inject per operation.
    #[derive(Default)]
    struct Fake {
        pools: Vec<Pool>,
        next: u8,
        handles: BTreeMap<String, Ipv4Addr>,
        weps: BTreeMap<(String, String), Wep>,
        endpoints: BTreeMap<String, EndpointConfig>,
        fail: Vec<(&'static str, BackendError)>,
        calls: Vec<String>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                pools: vec![Pool { cidr: "10.244.0.0/16".parse().unwrap(), block_size: 26 }],
                next: 2,
                ..Default::default()
            }
        }
        fn op(&mut self, name: &'static str) -> Result<(), BackendError> {
            self.calls.push(name.into());
            match self.fail.iter().find(|(n, _)| *n == name) {
                Some((_, e)) => Err(e.clone()),
                None => Ok(()),
            }
        }
        fn empty(&self) -> bool {
            self.handles.is_empty() && self.weps.is_empty() && self.endpoints.is_empty()
        }
    }

    impl Backend for Fake {
        fn pools(&mut self, _: &str) -> Result<Vec<Pool>, BackendError> {
            self.op("pools")?;
            Ok(self.pools.clone())
        }
        fn assign(&mut self, _: &str, handle: &str, _: &[Pool], _: &Wep) -> Result<Ipv4Addr, BackendError> {
            self.op("assign")?;
            if let Some(a) = self.handles.get(handle) {
                return Ok(*a);
            }
            let a = Ipv4Addr::new(10, 244, 1, self.next);
            self.next += 1;
            self.handles.insert(handle.into(), a);
            Ok(a)
        }
        fn release(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError> {
            self.op("release")?;
            Ok(self.handles.remove(handle).into_iter().collect())
        }
        fn handle_addrs(&mut self, handle: &str) -> Result<Vec<Ipv4Addr>, BackendError> {
            self.op("handle_addrs")?;
            Ok(self.handles.get(handle).copied().into_iter().collect())
        }
        fn wep_get(&mut self, ns: &str, name: &str) -> Result<Option<Wep>, BackendError> {
            self.op("wep_get")?;
            Ok(self.weps.get(&(ns.into(), name.into())).cloned())
        }
        fn wep_create(&mut self, w: &Wep) -> Result<(), BackendError> {
            self.op("wep_create")?;
            let k = (w.namespace.clone(), w.name.clone());
            if self.weps.contains_key(&k) {
                return Err(BackendError::Failed("exists".into()));
            }
            self.weps.insert(k, w.clone());
            Ok(())
        }
        fn wep_delete(&mut self, ns: &str, name: &str) -> Result<bool, BackendError> {
            self.op("wep_delete")?;
            Ok(self.weps.remove(&(ns.into(), name.into())).is_some())
        }
        fn endpoint_add(&mut self, e: &EndpointConfig) -> Result<(), BackendError> {
            self.op("endpoint_add")?;
            match self.endpoints.get(&e.name) {
                Some(x) if x.same_port(e) => Ok(()),
                Some(_) => Err(BackendError::Failed(format!("endpoint '{}' exists; delete it first", e.name))),
                None => {
                    self.endpoints.insert(e.name.clone(), e.clone());
                    Ok(())
                }
            }
        }
        fn endpoint_del(&mut self, name: &str) -> Result<bool, BackendError> {
            self.op("endpoint_del")?;
            Ok(self.endpoints.remove(name).is_some())
        }
        fn endpoint_get(&mut self, name: &str) -> Result<Option<EndpointConfig>, BackendError> {
            self.op("endpoint_get")?;
            Ok(self.endpoints.get(name).cloned())
        }
    }

    const ID: &str = "8d3f0f4c2b1a9e8d7c6b5a4f3e2d1c0b8d3f0f4c2b1a9e8d7c6b5a4f3e2d1c0b";

    fn conf(version: &str) -> NetConf {
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"vrnet","type":"vrouter-cni","etcd_endpoints":"http://127.0.0.1:2379","node":"n1","socket":"/run/vr.sock","runtimeConfig":{{"labels":{{"app":"web"}}}}}}"#
        );
        NetConf::parse(text.as_bytes()).unwrap()
    }

    fn env(command: Command) -> Env {
        Env {
            command,
            container_id: ID.into(),
            netns: "/run/netns/netns-1".into(),
            ifname: "eth0".into(),
            args: CniArgs { pod_name: Some("web-1".into()), ..CniArgs::default() },
        }
    }

    #[test]
    fn add_writes_everything_and_returns_the_result() {
        let mut b = Fake::new();
        let r = add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap();
        assert_eq!(r["ips"][0]["address"], "10.244.1.2/32");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/netns-1");
        let w = b.weps.get(&("default".into(), "n1-cni-8d3f0f4c2b1a-eth0".into())).unwrap();
        assert_eq!(
            (w.pod.as_deref(), w.addrs.as_slice(), w.netns.as_str()),
            (Some("web-1"), &["10.244.1.2".parse().unwrap()][..], "/run/netns/netns-1")
        );
        assert_eq!(w.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(r["interfaces"][1]["mac"], w.mac.to_string());
        let e = &b.endpoints["default/n1-cni-8d3f0f4c2b1a-eth0"];
        assert_eq!(
            (e.tap.as_str(), e.ingress.as_slice(), e.mtu),
            (w.tap.as_str(), &["vrouter.pending".to_string()][..], 1480)
        );
        // The address comes first, the WorkloadEndpoint before the port (the agent sees the WEP).
        let order: Vec<&str> = b
            .calls
            .iter()
            .map(String::as_str)
            .filter(|c| ["assign", "wep_create", "endpoint_add"].contains(c))
            .collect();
        assert_eq!(order, ["assign", "wep_create", "endpoint_add"]);
        check(&mut b, &NetConf { prev_result: Some(r), ..conf("1.0.0") }, &env(Command::Check)).unwrap();
    }

    #[test]
    fn a_failed_add_leaves_nothing_behind() {
        for (step, err) in [
            ("wep_create", BackendError::Failed("CAS lost".into())),
            ("endpoint_add", BackendError::Unavailable("no daemon at /run/vr.sock".into())),
            ("endpoint_add", BackendError::Failed("endpoint x: no such netns".into())),
        ] {
            let mut b = Fake::new();
            b.fail = vec![(step, err.clone())];
            let e = add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap_err();
            let want = if matches!(err, BackendError::Unavailable(_)) { Code::TryAgainLater } else { Code::Plugin };
            assert_eq!(e.code, want, "{step}: {e}");
            assert!(b.empty(), "{step}: left {:?} {:?} {:?}", b.handles, b.weps.keys(), b.endpoints.keys());
        }
        // etcd down at the start: code 11, nothing done.
        let mut b = Fake::new();
        b.fail = vec![("pools", BackendError::Unavailable("etcd http://127.0.0.1:2379: timed out".into()))];
        let e = add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(e.details.contains("127.0.0.1:2379"), "{e}");
        // An undo that fails is said in the details.
        let mut b = Fake::new();
        b.fail = vec![
            ("endpoint_add", BackendError::Failed("refused".into())),
            ("release", BackendError::Failed("etcd went away".into())),
        ];
        let e = add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap_err();
        assert!(
            e.details.contains("undo incomplete: address of handle") && e.details.contains("etcd went away"),
            "{e}"
        );
        let mut b = Fake::new();
        b.pools.clear();
        assert!(add(&mut b, &conf("1.0.0"), &env(Command::Add))
            .unwrap_err()
            .msg
            .contains("no enabled IPPool selects node n1"));
    }

    #[test]
    fn a_repeated_add_gets_the_same_address_and_del_is_idempotent() {
        let mut b = Fake::new();
        let r1 = add(&mut b, &conf("0.4.0"), &env(Command::Add)).unwrap();
        let r2 = add(&mut b, &conf("0.4.0"), &env(Command::Add)).unwrap();
        assert_eq!(r1, r2);
        assert_eq!(b.handles.len(), 1);
        del(&mut b, &conf("0.4.0"), &env(Command::Del)).unwrap();
        assert!(b.empty());
        del(&mut b, &conf("0.4.0"), &env(Command::Del)).unwrap();
        // Without a namespace (gone already): the same.
        let mut gone = env(Command::Del);
        gone.netns.clear();
        del(&mut b, &conf("0.4.0"), &gone).unwrap();
    }

    #[test]
    fn del_goes_on_past_a_failure_and_reports_it() {
        let mut b = Fake::new();
        add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap();
        b.fail = vec![("endpoint_del", BackendError::Unavailable("no daemon".into()))];
        let e = del(&mut b, &conf("1.0.0"), &env(Command::Del)).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(b.weps.is_empty() && b.handles.is_empty(), "the rest is done");
        b.fail.clear();
        del(&mut b, &conf("1.0.0"), &env(Command::Del)).unwrap();
        assert!(b.empty());
    }

    #[test]
    fn del_with_etcd_down_still_removes_the_port_and_asks_to_be_retried() {
        let mut b = Fake::new();
        add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap();
        let down = BackendError::Unavailable("etcd http://127.0.0.1:2379: timed out".into());
        b.fail = vec![("wep_get", down.clone()), ("wep_delete", down.clone()), ("release", down)];
        let e = del(&mut b, &conf("1.0.0"), &env(Command::Del)).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
        assert!(b.endpoints.is_empty(), "the port is gone");
        b.fail.clear();
        del(&mut b, &conf("1.0.0"), &env(Command::Del)).unwrap();
        assert!(b.empty(), "the retry frees the rest");
    }

    #[test]
    fn another_containers_endpoint_is_neither_taken_nor_removed() {
        let mut b = Fake::new();
        add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap();
        let mut other = env(Command::Add);
        other.container_id = format!("{}ffff", &ID[..60]);
        let e = add(&mut b, &conf("1.0.0"), &other).unwrap_err();
        assert!(e.msg.contains("exists for container"), "{e}");
        assert_eq!((b.weps.len(), b.handles.len()), (1, 1), "the first container's are untouched");
        del(&mut b, &conf("1.0.0"), &Env { command: Command::Del, ..other }).unwrap();
        assert_eq!((b.weps.len(), b.endpoints.len(), b.handles.len()), (1, 1, 1), "nor removed by the other's DEL");
    }

    #[test]
    fn check_finds_what_is_missing_or_different() {
        let mut b = Fake::new();
        let r = add(&mut b, &conf("1.0.0"), &env(Command::Add)).unwrap();
        let c = NetConf { prev_result: Some(r.clone()), ..conf("1.0.0") };
        check(&mut b, &c, &env(Command::Check)).unwrap();
        b.endpoints.clear();
        assert!(check(&mut b, &c, &env(Command::Check)).unwrap_err().msg.contains("has no endpoint"));
        b.handles.clear();
        assert!(check(&mut b, &c, &env(Command::Check)).unwrap_err().msg.contains("IPAM handle"));
        assert_eq!(check(&mut b, &conf("1.0.0"), &env(Command::Check)).unwrap_err().code, Code::InvalidConfig);
        let old = NetConf { prev_result: Some(r), ..conf("0.3.1") };
        assert_eq!(check(&mut b, &old, &env(Command::Check)).unwrap_err().code, Code::IncompatibleVersion);
    }
}

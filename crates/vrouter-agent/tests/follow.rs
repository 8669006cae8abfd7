//! The agent's follow loop against a real etcd (`testing::Etcd`), without a data plane: the
//! agent reconciles an in-memory node ([`MemNode`], our own implementation of its
//! [`Target`] interface) that keeps the operator's config, honours the generation
//! compare-and-swap as the daemon does, and records every state applied to it.
//!
//! What they prove: resources written to etcd become the applied state; a watch broken by
//! an etcd restart resumes from its revision (no list, no repeated event, no needless apply);
//! after a compaction the agent resyncs in full and gets deletions right; while etcd is down
//! nothing is applied unless the node lost its state, which then gets the last-known-good
//! state back; no applied state ever has an empty peer set while other Nodes exist; a pod the
//! daemon runs but the agent's view lacks is kept while its WorkloadEndpoint exists (or etcd
//! cannot be asked); a pod added between the agent's read and its apply is not overwritten.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vrouter_agent::daemon::merged;
use vrouter_agent::view::View;
use vrouter_agent::{agent, Agent, AgentArgs, Counters, DaemonError, Running, Status, Target, WATCH_PREFIX};
use vrouter_api::{ChangeReport, EndpointConfig};
use vrouter_cluster::datastore::Datastore;
use vrouter_cluster::desired::{NodeState, PENDING_POLICY};
use vrouter_cluster::ipam::{self, Attrs, PoolRef};
use vrouter_cluster::resource::{parse_manifests, Kind};
use vrouter_cluster::store::Store;
use vrouter_cluster::testing::Etcd;
use vrouter_types::acl::Action;
use vrouter_types::{IpipMode, Ipv4Prefix, MacAddr};

/// The node under test, as its operator's file has it (the agent learns its name and address
/// from it, and must leave `[workers]` alone).
const OPERATOR_FILE: &str =
    "[node]\nname = \"n1\"\nip = \"192.168.1.1\"\nsubnet = \"192.168.1.0/24\"\n\n[workers]\ncores = [0]\n";
const ME: &str = "n1";

/// How long a change may take to reach the node (the agent gathers events for 20 ms).
const PROPAGATION: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// The in-memory node
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Mem {
    table: toml::Table,
    generation: u64,
    /// Every state applied, in order.
    applied: Vec<NodeState>,
    /// Every `read` fails (the daemon is down).
    down: bool,
    /// Added by "vrouter-cni" between the agent's next read and its apply.
    race: Option<EndpointConfig>,
    /// Applies refused because the config changed since it was read.
    refused: usize,
}

/// A node daemon in memory: `read` and `apply` with the daemon's generation CAS.
#[derive(Clone, Debug)]
struct MemNode(Arc<Mutex<Mem>>);

impl MemNode {
    fn new() -> MemNode {
        MemNode(Arc::new(Mutex::new(Mem {
            table: OPERATOR_FILE.parse().expect("operator file"),
            generation: 1,
            applied: Vec::new(),
            down: false,
            race: None,
            refused: 0,
        })))
    }
    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn applied(&self) -> Vec<NodeState> {
        self.lock().applied.clone()
    }
    fn running(&self) -> Running {
        let m = self.lock();
        Running { table: m.table.clone(), generation: m.generation }
    }
    /// The daemon restarted on its own file: no peers, pods, policies or pod blocks.
    fn restart(&self) {
        let mut m = self.lock();
        m.table = OPERATOR_FILE.parse().expect("operator file");
        m.generation += 1;
    }
    /// What vrouter-cni's EndpointAdd does: one endpoint more, the generation bumped.
    fn add_endpoint(&self, e: EndpointConfig) {
        let mut m = self.lock();
        let mut eps: Vec<EndpointConfig> =
            m.table.get("endpoints").cloned().and_then(|v| v.try_into().ok()).unwrap_or_default();
        eps.push(e);
        m.table.insert("endpoints".into(), toml::Value::try_from(&eps).expect("endpoints"));
        m.generation += 1;
    }
}

impl Target for MemNode {
    fn describe(&self) -> String {
        "<memory>".into()
    }
    fn read(&self) -> Result<Running, DaemonError> {
        if self.lock().down {
            return Err(DaemonError::Unreachable("in-memory node is down".into()));
        }
        Ok(self.running())
    }
    fn apply(&self, running: &Running, state: &NodeState) -> Result<ChangeReport, DaemonError> {
        let race = self.lock().race.take();
        if let Some(e) = race {
            self.add_endpoint(e);
        }
        let mut m = self.lock();
        if running.generation != m.generation {
            m.refused += 1;
            return Err(DaemonError::Changed(running.generation));
        }
        m.table = merged(&running.table, state).map_err(DaemonError::Malformed)?;
        m.generation += 1;
        m.applied.push(state.clone());
        Ok(ChangeReport::default())
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// The agent running as a task; aborted on drop.
struct AgentTask {
    task: tokio::task::JoinHandle<()>,
    status: Status,
}

impl AgentTask {
    fn start(etcd: &Etcd, node: &MemNode) -> AgentTask {
        let status = Status::new();
        let args = AgentArgs {
            etcd_endpoints: etcd.endpoints(),
            node: None,
            labels: BTreeMap::new(),
            as_number: None,
            route_reflector_cluster_id: None,
            bird: None,
        };
        let (n, s) = (node.clone(), status.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = agent(n, args, s).await {
                panic!("agent: {e}");
            }
        });
        AgentTask { task, status }
    }
    fn counters(&self) -> Counters {
        self.status.get()
    }
}

impl Drop for AgentTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn datastore(etcd: &Etcd) -> Datastore {
    Datastore::new(Store::connect(&etcd.endpoints()).await.expect("connect to the test etcd"))
}

async fn apply(ds: &Datastore, yaml: &str) {
    for r in parse_manifests(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}")) {
        ds.apply(&r).await.unwrap_or_else(|e| panic!("apply {}: {e}", r.display_name()));
    }
}

fn pool_yaml() -> &'static str {
    "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: pool1}\n\
     spec: {cidr: 10.244.0.0/16, blockSize: 26, ipipMode: Always}\n"
}

fn pools() -> Vec<PoolRef> {
    vec![PoolRef { cidr: "10.244.0.0/16".parse().unwrap(), block_size: 26 }]
}

fn node_yaml(name: &str, ip: &str) -> String {
    format!("apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {{name: {name}}}\nspec: {{bgp: {{ipv4Address: {ip}/24}}}}\n")
}

/// A pod on `node`: its address assigned through IPAM (handle = container ID), its
/// WorkloadEndpoint written as vrouter-cni writes it.
async fn pod(ds: &Datastore, node: &str, pod: &str, app: &str, n: u8) -> Ipv4Addr {
    let cid = format!("c0ffee{n:02}{pod}");
    let attrs = Attrs { node: node.into(), namespace: Some("default".into()), pod: Some(pod.into()) };
    let ip = ipam::assign(ds.store(), node, &cid, &pools(), &attrs).await.expect("assign");
    apply(ds, &wep_yaml(node, pod, app, n, ip)).await;
    ip
}

fn wep_name(node: &str, pod: &str) -> String {
    format!("{node}-k8s-{pod}-eth0")
}

fn wep_yaml(node: &str, pod: &str, app: &str, n: u8, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: {name}
  namespace: default
  labels: {{app: {app}}}
  annotations: {{vrouter.io/netns: /run/netns/{pod}}}
spec:
  node: {node}
  orchestrator: k8s
  endpoint: eth0
  containerID: 'c0ffee{n:02}{pod}'
  pod: {pod}
  interfaceName: vrtest{n:02}
  mac: 02:00:00:00:00:{n:02x}
  ipNetworks: [{ip}/32]
",
        name = wep_name(node, pod)
    )
}

/// Waits until the node's last applied state satisfies `ok`; panics with the history.
async fn wait_state(node: &MemNode, what: &str, ok: impl Fn(&NodeState) -> bool) -> NodeState {
    let deadline = Instant::now() + PROPAGATION;
    loop {
        if let Some(s) = node.applied().last() {
            if ok(s) {
                return s.clone();
            }
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}; applied states:\n{:#?}", node.applied());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn peer_names(s: &NodeState) -> Vec<&str> {
    s.peers.iter().map(|p| p.name.as_str()).collect()
}

/// Last-known-good, over a whole history: once the node has had peers (other Nodes exist in
/// every test here), no applied state has an empty peer set or an empty pod block list, and
/// no state is applied twice in a row (an apply that changes nothing is needless).
fn assert_never_empty_nor_repeated(applied: &[NodeState]) {
    assert_never_empty(applied);
    assert_no_repeat(applied);
}

fn assert_never_empty(applied: &[NodeState]) {
    let first_full = applied.iter().position(|s| !s.peers.is_empty() && !s.pod_blocks.is_empty());
    if let Some(i) = first_full {
        for (j, s) in applied.iter().enumerate().skip(i) {
            assert!(!s.peers.is_empty(), "applied state {j} has no peers: {applied:#?}");
            assert!(!s.pod_blocks.is_empty(), "applied state {j} has no pod blocks: {applied:#?}");
        }
    }
}

fn assert_no_repeat(applied: &[NodeState]) {
    for (j, w) in applied.windows(2).enumerate() {
        assert_ne!(w[0], w[1], "state {} applied twice in a row", j + 1);
    }
}

/// Kills etcd (SIGKILL), off the runtime's threads.
async fn kill(etcd: Etcd) -> Etcd {
    tokio::task::spawn_blocking(move || {
        let mut etcd = etcd;
        etcd.kill();
        etcd
    })
    .await
    .expect("kill task")
}

/// Restarts it on its data and waits until it serves.
async fn restart(etcd: Etcd) -> Etcd {
    tokio::task::spawn_blocking(move || {
        let mut etcd = etcd;
        etcd.restart();
        etcd
    })
    .await
    .expect("restart task")
}

async fn start_etcd() -> Etcd {
    tokio::task::spawn_blocking(Etcd::start).await.expect("etcd start task")
}

/// A cluster of n1 (the node under test), n2 with a block and n3 without one.
async fn seed(ds: &Datastore) -> Ipv4Prefix {
    apply(ds, pool_yaml()).await;
    apply(ds, &node_yaml("n2", "192.168.1.2")).await;
    apply(ds, &node_yaml("n3", "192.168.1.3")).await;
    ipam::claim_block(ds.store(), "n2", &pools()).await.expect("claim n2's block")
}

async fn etcd_revision(ds: &Datastore) -> i64 {
    ds.store().list("/nothing-here/").await.expect("list").1
}

// ---------------------------------------------------------------------------------------
// (a) resources -> applied state
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_in_etcd_become_the_applied_state() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    let b2 = seed(&ds).await;
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);

    // The agent registers n1 and claims a block for it; peers come from the Node resources.
    let s =
        wait_state(&node, "peers n2, n3 and a pod block", |s| peer_names(s) == ["n2", "n3"] && s.pod_blocks.len() == 1)
            .await;
    let mine = ipam::affine_blocks(ds.store(), ME).await.unwrap();
    assert_eq!(s.pod_blocks, mine, "n1's pod blocks are its affine blocks");
    let n1 = ds.get(Kind::Node, None, ME).await.unwrap().expect("n1 registered");
    assert!(serde_json::to_string(&n1.to_manifest()).unwrap().contains("192.168.1.1/24"), "{n1:?}");
    let (p2, p3) = (&s.peers[0], &s.peers[1]);
    assert_eq!(
        (p2.ip, p2.pod_blocks.clone(), p2.ipip_mode),
        ("192.168.1.2".parse().unwrap(), vec![b2], Some(IpipMode::Always))
    );
    assert_eq!(
        (p3.ip, p3.pod_blocks.is_empty(), p3.ipip_mode),
        ("192.168.1.3".parse().unwrap(), true, Some(IpipMode::Never))
    );
    assert!(s.endpoints.is_empty());
    assert!(s.policies.contains_key(PENDING_POLICY), "the pending policy is installed");

    // Pods and a NetworkPolicy: the local pod is programmed with its compiled policy.
    let db = pod(&ds, ME, "db", "db", 1).await;
    let web = pod(&ds, "n2", "web", "web", 2).await;
    assert!(mine[0].contains(u32::from(db)) && b2.contains(u32::from(web)));
    apply(
        &ds,
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: default}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: app == 'web'}
    destination: {ports: [5432]}
",
    )
    .await;
    let list = "np.default.db-from-web.ingress";
    let s =
        wait_state(&node, "the db pod with its policy", |s| s.endpoints.len() == 1 && s.endpoints[0].ingress == [list])
            .await;
    let e = &s.endpoints[0];
    assert_eq!(e.name, format!("default/{}", wep_name(ME, "db")));
    assert_eq!((e.tap.as_str(), e.ifname.as_str(), e.netns.as_deref()), ("vrtest01", "eth0", Some("/run/netns/db")));
    assert_eq!((e.mac, e.addrs.clone()), (MacAddr([2, 0, 0, 0, 0, 1]), vec![db]));
    assert!(e.egress.is_empty(), "no egress policy selects it: allowed");
    let rules = &s.policies[list];
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].action, Action::Allow);
    assert_eq!(rules[0].src, vec![Ipv4Prefix::new_masked(u32::from(web), 32)], "the web pod's /32");
    assert_eq!(rules[0].protocol, Some(6));
    assert_eq!((rules[0].dst_ports[0].lo, rules[0].dst_ports[0].hi), (5432, 5432));
    assert_eq!(peer_names(&s), ["n2", "n3"], "the remote pod is not local");

    // Deletions: the policy's list goes, then a peer.
    ds.delete(Kind::NetworkPolicy, Some("default"), "db-from-web", None).await.unwrap();
    wait_state(&node, "the policy gone", |s| s.endpoints[0].ingress.is_empty() && !s.policies.contains_key(list)).await;
    ds.delete(Kind::Node, None, "n3", None).await.unwrap();
    wait_state(&node, "n3 gone", |s| peer_names(s) == ["n2"]).await;

    let c = agent.counters();
    assert_eq!((c.lists, c.resyncs, c.resumes, c.repeated_events, c.apply_errors), (1, 0, 0, 0, 0), "{c:?}");
    assert_never_empty_nor_repeated(&node.applied());
    // The operator's part of the config is untouched.
    assert_eq!(node.running().table["workers"]["cores"].as_array().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// (b) watch resumed after an etcd restart
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_broken_by_an_etcd_restart_resumes_from_its_revision() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    seed(&ds).await;
    ds.delete(Kind::Node, None, "n3", None).await.unwrap();
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);
    wait_state(&node, "peer n2", |s| peer_names(s) == ["n2"] && !s.pod_blocks.is_empty()).await;
    let before = node.applied().len();

    let etcd = kill(etcd).await;
    wait_until("the agent to see the watch break", Duration::from_secs(5), || agent.counters().etcd_failures > 0).await;
    let etcd = restart(etcd).await;
    // Written right after the restart: the agent may still be backing off.
    apply(&ds, &node_yaml("n3", "192.168.1.3")).await;
    let db = pod(&ds, ME, "db", "db", 1).await;

    let s = wait_state(&node, "n3 and the db pod after the restart", |s| {
        peer_names(s) == ["n2", "n3"] && s.endpoints.len() == 1
    })
    .await;
    assert_eq!(s.endpoints[0].addrs, vec![db]);
    // (The counters are updated just after the apply the node recorded.)
    let rev = etcd_revision(&ds).await;
    wait_until("the agent at etcd's revision", Duration::from_secs(2), || agent.counters().revision == rev).await;
    let c = agent.counters();
    assert_eq!(c.lists, 1, "resumed from its revision, not listed again: {c:?}");
    assert!(c.resumes >= 1, "{c:?}");
    assert_eq!((c.resyncs, c.repeated_events, c.apply_errors), (0, 0, 0), "{c:?}");
    let applied = node.applied();
    // Two changes (a Node; a pod's block update and endpoint): at most one apply each.
    assert!(
        (1..=3).contains(&(applied.len() - before)),
        "{} applies after the restart: {applied:#?}",
        applied.len() - before
    );
    assert_never_empty_nor_repeated(&applied);
    // Settled: nothing more is applied.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(node.applied().len(), applied.len(), "an apply with nothing changed");
    drop(etcd);
}

// ---------------------------------------------------------------------------------------
// (c) compaction -> full resync
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_compaction_the_agent_resyncs_in_full() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    seed(&ds).await;
    let db = pod(&ds, ME, "db", "db", 1).await;
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);
    wait_state(&node, "peers and the db pod", |s| peer_names(s) == ["n2", "n3"] && s.endpoints.len() == 1).await;

    // etcd away long enough for the agent's backoff to reach 3.2 s; back, changed and
    // compacted before the agent's next attempt.
    let etcd = kill(etcd).await;
    let grown = Duration::from_millis(3200);
    wait_until(
        "the agent's etcd backoff to grow",
        Duration::from_secs(10),
        || matches!(agent.counters().backoff, Some((at, d)) if d >= grown && at.elapsed() < Duration::from_millis(200)),
    )
    .await;
    let applies_while_down = node.applied().len();
    let etcd = restart(etcd).await;
    // Changes the agent's resumed watch would need history for: a deletion (n3), a new
    // Node (n4) and the db pod gone (its address released).
    ds.delete(Kind::Node, None, "n3", None).await.unwrap();
    apply(&ds, &node_yaml("n4", "192.168.1.4")).await;
    ds.delete(Kind::WorkloadEndpoint, Some("default"), &wep_name(ME, "db"), None).await.unwrap();
    assert_eq!(ipam::release(ds.store(), "c0ffee01db").await.unwrap(), vec![db]);
    let rev = etcd_revision(&ds).await;
    ds.store().compact(rev).await.expect("compact");
    let c = agent.counters();
    assert_eq!(c.resumes, 0, "the agent reconnected before the compaction: the test lost its race ({c:?})");
    assert_eq!(node.applied().len(), applies_while_down, "nothing applied while etcd was down");

    let s = wait_state(&node, "the resynced state", |s| peer_names(s) == ["n2", "n4"] && s.endpoints.is_empty()).await;
    wait_until("the agent at the compacted revision", Duration::from_secs(2), || agent.counters().revision == rev)
        .await;
    let c = agent.counters();
    assert_eq!((c.resyncs, c.lists), (1, 2), "one full resync: {c:?}");
    assert_eq!(c.repeated_events, 0);
    assert_eq!(s.pod_blocks, ipam::affine_blocks(ds.store(), ME).await.unwrap(), "n1 keeps its block");
    assert_never_empty_nor_repeated(&node.applied());
    drop(etcd);
}

// ---------------------------------------------------------------------------------------
// (d) last-known-good
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_etcd_is_down_the_node_keeps_its_last_known_good_state() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    let b2 = seed(&ds).await;
    pod(&ds, ME, "db", "db", 1).await;
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);
    let good = wait_state(&node, "the full state", |s| peer_names(s) == ["n2", "n3"] && s.endpoints.len() == 1).await;

    let etcd = kill(etcd).await;
    wait_until("the agent to see etcd gone", Duration::from_secs(5), || agent.counters().etcd_failures > 0).await;
    let applied = node.applied().len();
    tokio::time::sleep(Duration::from_millis(2500)).await; // two rechecks, several retries
    assert_eq!(node.applied().len(), applied, "nothing applied while etcd is down");
    assert!(node.running().matches(&good), "the node still has its state");

    // The daemon restarts (on its own file: no peers, no pods) while etcd is still down: it
    // gets the last-known-good state back, never an empty one.
    let lost_at = node.applied().len();
    node.restart();
    // (The agent rechecks its node every second; the bound is generous for a loaded machine.)
    wait_until("the last-known-good state reapplied", Duration::from_secs(10), || node.applied().len() > lost_at).await;
    let back = node.applied()[lost_at].clone();
    assert_eq!(back, good, "the last-known-good state, whole");
    assert!(node.running().matches(&good));
    assert_eq!(back.peers[0].pod_blocks, vec![b2]);
    assert!(agent.counters().etcd_failures > 1, "etcd is still down");

    // etcd back: the agent resumes and follows new changes.
    let etcd = restart(etcd).await;
    apply(&ds, &node_yaml("n4", "192.168.1.4")).await;
    wait_state(&node, "n4", |s| peer_names(s) == ["n2", "n3", "n4"]).await;
    let applied = node.applied();
    assert_never_empty(&applied);
    // The one repeat is the reapply to the restarted node, which had lost it.
    assert_no_repeat(&applied[..lost_at]);
    assert_no_repeat(&applied[lost_at..]);
    assert_eq!(agent.counters().apply_errors, 0);
    drop(etcd);
}

// ---------------------------------------------------------------------------------------
// (e) a pod the view does not have
// ---------------------------------------------------------------------------------------

/// The daemon endpoint vrouter-cni creates for a pod (under the pending policy).
fn cni_endpoint(pod: &str, n: u8, ip: Ipv4Addr) -> EndpointConfig {
    EndpointConfig {
        name: format!("default/{}", wep_name(ME, pod)),
        tap: format!("vrtest{n:02}"),
        netns: Some(format!("/run/netns/{pod}")),
        ifname: "eth0".into(),
        mac: MacAddr([2, 0, 0, 0, 0, n]),
        addrs: vec![ip],
        mtu: 1480,
        ingress: vec![PENDING_POLICY.into()],
        egress: vec![PENDING_POLICY.into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_unknown_to_the_view_is_kept_while_its_endpoint_exists() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    seed(&ds).await;
    ipam::claim_block(ds.store(), ME, &pools()).await.unwrap();

    // The race, made deterministic: a view listed before vrouter-cni wrote the pod's
    // WorkloadEndpoint and added it to the daemon.
    let (kvs, rev) = ds.store().list(WATCH_PREFIX).await.unwrap();
    let stale = View::from_list(kvs, rev);
    let node = MemNode::new();
    let mut a = Agent::new(ds.store().clone(), node.clone(), ME, Status::new());
    a.reconcile(&stale).await;
    assert_eq!(node.applied().len(), 1);
    assert!(node.running().endpoints().is_empty());

    let ip = pod(&ds, ME, "late", "db", 7).await;
    node.add_endpoint(cni_endpoint("late", 7, ip));
    a.reconcile(&stale).await;
    let eps = node.running().endpoints();
    assert_eq!(eps.len(), 1, "kept: etcd still has its endpoint");
    assert_eq!(
        (eps[0].ingress.clone(), eps[0].egress.clone()),
        (vec![PENDING_POLICY.to_string()], vec![PENDING_POLICY.to_string()]),
        "still denied"
    );
    assert!(node.running().table["pod_blocks"].as_array().is_some_and(|b| !b.is_empty()));

    // Its endpoint deleted (a CNI DEL whose daemon call has not happened yet): removed.
    ds.delete(Kind::WorkloadEndpoint, Some("default"), &wep_name(ME, "late"), None).await.unwrap();
    a.reconcile(&stale).await;
    assert!(node.running().endpoints().is_empty(), "removed once its endpoint is gone");

    // etcd cannot be asked: an unknown pod is kept (removed only when known to be gone).
    let etcd = kill(etcd).await;
    node.add_endpoint(cni_endpoint("late", 7, ip));
    let t = Instant::now();
    a.reconcile(&stale).await;
    assert_eq!(node.running().endpoints().len(), 1, "kept while etcd is down");
    assert!(t.elapsed() < Duration::from_secs(6), "bounded by the request timeout: {:?}", t.elapsed());
    let etcd = restart(etcd).await;
    a.reconcile(&stale).await;
    assert!(node.running().endpoints().is_empty(), "removed once etcd says it is gone");

    // The running agent: a CNI-added pod whose endpoint exists gets its real lists; deleted
    // from etcd, it goes from the node.
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);
    wait_state(&node, "synced", |s| peer_names(s) == ["n2", "n3"]).await;
    let ip = pod(&ds, ME, "web", "web", 8).await;
    node.add_endpoint(cni_endpoint("web", 8, ip));
    let s = wait_state(&node, "the pod with its real (empty: allowed) lists", |s| {
        s.endpoints.len() == 1 && s.endpoints[0].ingress.is_empty()
    })
    .await;
    assert_eq!(s.endpoints[0].addrs, vec![ip]);
    ds.delete(Kind::WorkloadEndpoint, Some("default"), &wep_name(ME, "web"), None).await.unwrap();
    wait_state(&node, "the pod removed", |s| s.endpoints.is_empty()).await;
    assert!(node.running().endpoints().is_empty());
    assert_eq!(agent.counters().apply_errors, 0);
    assert_never_empty_nor_repeated(&node.applied());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_added_between_read_and_apply_is_not_overwritten() {
    let etcd = start_etcd().await;
    let ds = datastore(&etcd).await;
    seed(&ds).await;
    let node = MemNode::new();
    let agent = AgentTask::start(&etcd, &node);
    wait_state(&node, "synced", |s| peer_names(s) == ["n2", "n3"] && !s.pod_blocks.is_empty()).await;

    // vrouter-cni adds the pod to the daemon just after the agent read the config for the
    // apply its WorkloadEndpoint triggers: that apply is refused (generation CAS), the agent
    // reads again and applies over the pod, now with its real lists.
    let before = node.applied().len();
    let cid_ip = {
        let attrs = Attrs { node: ME.into(), namespace: Some("default".into()), pod: Some("racer".into()) };
        ipam::assign(ds.store(), ME, "c0ffee09racer", &pools(), &attrs).await.unwrap()
    };
    node.lock().race = Some(cni_endpoint("racer", 9, cid_ip));
    apply(&ds, &wep_yaml(ME, "racer", "db", 9, cid_ip)).await;
    let s = wait_state(&node, "the racer with its real lists", |s| {
        s.endpoints.len() == 1 && s.endpoints[0].ingress.is_empty()
    })
    .await;
    assert_eq!(node.lock().refused, 1, "the apply computed before the pod was added was refused");
    assert_eq!(node.applied().len(), before + 1, "then applied once");
    assert_eq!(s.endpoints[0].addrs, vec![cid_ip]);
    assert_eq!(node.running().endpoints().len(), 1, "the pod is there once");
    assert_eq!(agent.counters().apply_errors, 0, "a refused CAS is retried, not an error");
}

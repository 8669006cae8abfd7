//! The node agent's pieces: [`daemon`] (the control socket side), [`view`] (the cluster as
//! last read from etcd) and [`run`] (the loop that joins them). See `src/main.rs` and
//! docs/agent.md.

pub mod daemon;
pub mod view;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vrouter_cluster::desired::{NodeState, PENDING_POLICY};
use vrouter_cluster::store::{keys, Store, StoreError};
use vrouter_types::Ipv4Prefix;

use daemon::{Daemon, DaemonError};
use view::View;

#[derive(Clone, Debug)]
pub struct AgentArgs {
    pub socket: PathBuf,
    pub etcd_endpoints: Vec<String>,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub as_number: Option<u32>,
}

/// How long changes are gathered before the node is reconciled (a burst of watch events, a
/// `vrouterctl apply` of many documents, becomes one apply).
const DEBOUNCE: Duration = Duration::from_millis(20);
/// The daemon is read this often even without changes: a restarted daemon (back on its own
/// file, without pods) is given the full state again within this.
const RECHECK: Duration = Duration::from_secs(1);
/// Backoff bounds for etcd and the daemon.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Everything under this prefix is watched: resources and IPAM.
pub const WATCH_PREFIX: &str = "/calico/";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
}

struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
    }
    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: AgentArgs) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Setup(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        tokio::select! {
            r = agent(args) => r,
            _ = shutdown() => {
                tracing::info!("stopping (the data plane keeps its state)");
                Ok(())
            }
        }
    })
}

async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The daemon's first answer: who this node is.
async fn first_read(daemon: &Daemon) -> daemon::Running {
    let mut backoff = Backoff::new();
    loop {
        let d = daemon.clone();
        match tokio::task::spawn_blocking(move || d.read()).await {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) => tracing::warn!("waiting for the daemon at {}: {e}", daemon.socket().display()),
            Err(e) => tracing::error!("daemon read task: {e}"),
        }
        backoff.wait().await;
    }
}

async fn connect(endpoints: &[String]) -> Store {
    let mut backoff = Backoff::new();
    loop {
        match Store::connect(endpoints).await {
            Ok(s) => return s,
            Err(e) => tracing::warn!("etcd: {e}; retrying"),
        }
        backoff.wait().await;
    }
}

async fn agent(args: AgentArgs) -> Result<(), AgentError> {
    let daemon = Daemon::new(&args.socket);
    let running = first_read(&daemon).await;
    let node = match (&args.node, running.node_name()) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n.to_string(),
        (None, None) => return Err(AgentError::Setup("the daemon's config has no [node] name; give --node".into())),
    };
    let (ip, subnet) = running
        .node_address()
        .ok_or_else(|| AgentError::Setup("the daemon's config has no [node] ip and subnet".into()))?;
    tracing::info!(node = %node, %ip, %subnet, "agent starting");

    let store = connect(&args.etcd_endpoints).await;
    let mut backoff = Backoff::new();
    loop {
        match view::register_node(&store, &node, ip, subnet, &args.labels, args.as_number).await {
            Ok(()) => break,
            Err(e) => tracing::warn!("registering node {node}: {e}; retrying"),
        }
        backoff.wait().await;
    }

    let mut agent = Agent { store, daemon, node, last_applied: None, applied_at: None };
    agent.follow().await;
    Ok(())
}

struct Agent {
    store: Store,
    daemon: Daemon,
    node: String,
    /// The last state the daemon accepted (for logs and to skip identical applies).
    last_applied: Option<NodeState>,
    applied_at: Option<Instant>,
}

impl Agent {
    /// Full list, then watch from its revision; again from the start after a compaction.
    async fn follow(&mut self) {
        let mut backoff = Backoff::new();
        loop {
            let (kvs, revision) = match self.store.list(WATCH_PREFIX).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("etcd list: {e}; the node keeps its state, retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            let mut view = View::from_list(kvs, revision);
            tracing::info!(revision, resources = view.len(), "in sync with etcd");
            self.claim_block_if_none(&view).await;
            self.reconcile(&view).await;
            backoff.reset();
            if self.watch(&mut view).await == Restart::Resync {
                tracing::warn!(revision = view.revision(), "watch history compacted: full resync");
            }
        }
    }

    /// Follows the watch until it must restart from a full list.
    async fn watch(&mut self, view: &mut View) -> Restart {
        let mut backoff = Backoff::new();
        let mut watch = None;
        let mut dirty = false;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watch.is_none() {
                match self.store.watch(WATCH_PREFIX, view.revision() + 1).await {
                    Ok(w) => {
                        watch = Some(w);
                        backoff.reset();
                    }
                    Err(StoreError::Compacted { .. }) => return Restart::Resync,
                    Err(e) => {
                        tracing::warn!("etcd watch: {e}; the node keeps its state, retrying");
                        backoff.wait().await;
                        continue;
                    }
                }
            }
            let w = watch.as_mut().expect("set above");
            tokio::select! {
                events = w.next() => match events {
                    Ok(events) => {
                        for ev in events {
                            view.apply(ev);
                        }
                        dirty = true;
                    }
                    Err(StoreError::Compacted { .. }) => return Restart::Resync,
                    Err(e) => {
                        tracing::warn!(revision = view.revision(), "etcd watch broke: {e}; resuming from the next revision");
                        watch = None;
                        backoff.wait().await;
                    }
                },
                _ = tokio::time::sleep(DEBOUNCE), if dirty => {
                    dirty = false;
                    self.reconcile(view).await;
                }
                _ = recheck.tick() => self.reconcile(view).await,
            }
        }
    }

    /// A node with no block of its own claims one (so its pods' first address and the
    /// blackhole of its block are ready before the first pod).
    async fn claim_block_if_none(&mut self, view: &View) {
        if view.has_block(&self.node) {
            return;
        }
        let pools = view.pools_for(&self.node);
        if pools.is_empty() {
            return;
        }
        match vrouter_cluster::ipam::claim_block(&self.store, &self.node, &pools).await {
            Ok(b) => tracing::info!(block = %b, "claimed a pod block"),
            Err(e) => tracing::warn!("claiming a pod block: {e}"),
        }
    }

    /// Makes the daemon's owned parts equal to the view's state for this node.
    async fn reconcile(&mut self, view: &View) {
        let (mut state, skipped) = view.node_state(&self.node);
        for s in &skipped {
            tracing::warn!(endpoint = %s.endpoint, "not programmed: {}", s.why);
        }
        for attempt in 0..5 {
            let d = self.daemon.clone();
            let running = match tokio::task::spawn_blocking(move || d.read()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!("daemon: {e}");
                    return;
                }
                Err(e) => {
                    tracing::error!("daemon task: {e}");
                    return;
                }
            };
            self.keep_unseen_endpoints(&running, &mut state).await;
            if running.matches(&state) {
                return;
            }
            let d = self.daemon.clone();
            let (r, s) = (running.clone(), state.clone());
            match tokio::task::spawn_blocking(move || d.apply(&r, &s)).await {
                Ok(Ok(report)) => {
                    tracing::info!(
                        revision = view.revision(),
                        peers = state.peers.len(),
                        endpoints = state.endpoints.len(),
                        policies = state.policies.len(),
                        added = ?report.endpoints_added,
                        removed = ?report.endpoints_removed,
                        routes_changed = report.routes_changed,
                        "applied"
                    );
                    self.last_applied = Some(state);
                    self.applied_at = Some(Instant::now());
                    return;
                }
                Ok(Err(DaemonError::Changed(_))) => {
                    tracing::debug!(attempt, "the node's config changed under us; reading it again");
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!("applying revision {}: {e}; the node keeps its previous state", view.revision());
                    return;
                }
                Err(e) => {
                    tracing::error!("daemon task: {e}");
                    return;
                }
            }
        }
    }

    /// Pods the daemon runs that the view does not have stay if etcd still has their
    /// endpoint (the CNI plugin wrote it and our watch has not caught up), or if etcd cannot
    /// be asked: a pod is removed only when its endpoint is known to be gone. Kept pods stay
    /// under the pending policy (denied) until the view has them.
    async fn keep_unseen_endpoints(&self, running: &daemon::Running, state: &mut NodeState) {
        for e in running.endpoints() {
            if state.endpoints.iter().any(|x| x.name == e.name) {
                continue;
            }
            let Some((ns, name)) = e.name.split_once('/') else {
                continue; // not one of ours (the operator's own pods are named without '/')
            };
            let key = keys::resource("workloadendpoints", Some(ns), name);
            let keep = match self.store.get(&key).await {
                Ok(found) => found.is_some(),
                Err(err) => {
                    tracing::warn!(endpoint = %e.name, "cannot ask etcd whether it still exists ({err}); keeping it");
                    true
                }
            };
            if keep {
                let mut e = e.clone();
                for a in &e.addrs {
                    if !state.pod_blocks.iter().any(|b| b.contains(u32::from(*a))) {
                        state.pod_blocks.push(Ipv4Prefix::new_masked(u32::from(*a), 32));
                    }
                }
                e.ingress = vec![PENDING_POLICY.to_string()];
                e.egress = vec![PENDING_POLICY.to_string()];
                state.endpoints.push(e);
            }
        }
        state.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        state.pod_blocks.sort();
    }
}

#[derive(Debug, PartialEq)]
enum Restart {
    Resync,
}

/// Addresses for tests and logs.
pub fn node_ip_text(ip: Ipv4Addr, subnet: Ipv4Prefix) -> String {
    format!("{ip}/{}", subnet.len())
}

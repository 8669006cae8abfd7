//! The node agent's pieces: [`daemon`] (the control socket side), [`view`] (the cluster as
//! last read from etcd) and [`run`] (the loop that joins them). See `src/main.rs` and
//! docs/agent.md.
//!
//! The loop is generic over its [`Target`], the node it reconciles: the daemon's control
//! socket ([`Daemon`]) in the binary, an in-memory node in the tests
//! (`tests/follow.rs`), which then follow a real etcd without a data plane. [`Status`]
//! counts what the loop did (lists, resyncs, resumed watches, applies), for those tests and
//! for logs.

pub mod bgp;
pub mod daemon;
pub mod view;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vrouter_cluster::desired::{NodeState, PENDING_POLICY};
use vrouter_cluster::resource::{resource_key, Kind, SecretKeyRef};
use vrouter_cluster::store::{keys, Store, StoreError};
use vrouter_types::Ipv4Prefix;

pub use daemon::{Daemon, DaemonError, Running};
use view::View;

/// What the agent needs besides its node: where etcd is and what to register.
#[derive(Clone, Debug)]
pub struct AgentArgs {
    pub etcd_endpoints: Vec<String>,
    pub node: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub as_number: Option<u32>,
    /// Registered as the node's `spec.bgp.routeReflectorClusterID` (the node reflects routes).
    pub route_reflector_cluster_id: Option<std::net::Ipv4Addr>,
    /// Routes between nodes come from BIRD, whose configuration the agent renders (confd's
    /// role); `None`: the agent programs the other nodes' blocks from the datastore.
    pub bird: Option<bgp::BirdArgs>,
}

/// How long changes are gathered before the node is reconciled (a burst of watch events, a
/// `vrouterctl apply` of many documents, becomes one apply).
const DEBOUNCE: Duration = Duration::from_millis(20);
/// The daemon is read this often even without changes: a restarted daemon (back on its own
/// file, without pods) is given the full state again within this. Also while etcd is away:
/// the last-known-good state is what it gets then.
const RECHECK: Duration = Duration::from_secs(1);
/// Backoff bounds for etcd and the daemon.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Everything under this prefix is watched: resources and IPAM.
pub const WATCH_PREFIX: &str = keys::CALICO;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Setup(String),
}

/// The node the agent reconciles: its running config, and an apply of a [`NodeState`] over
/// it that is refused ([`DaemonError::Changed`]) if the config changed since it was read.
/// The binary's is the daemon's control socket ([`Daemon`]); the tests' an in-memory node.
/// Calls block: the loop runs them on tokio's blocking pool.
pub trait Target: Clone + Send + Sync + 'static {
    /// Where the node is, for logs (the socket's path).
    fn describe(&self) -> String;
    /// The running config and its generation.
    fn read(&self) -> Result<Running, DaemonError>;
    /// Makes the parts the agent owns equal to `state`, if the config is still `running`'s
    /// generation.
    fn apply(&self, running: &Running, state: &NodeState) -> Result<vrouter_api::ChangeReport, DaemonError>;
}

/// What the agent has done so far, shared with whoever holds a clone (the tests read it; each
/// counter also has its log line).
#[derive(Clone, Debug, Default)]
pub struct Status(Arc<Mutex<Counters>>);

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// The etcd revision of the view the node was last found or made equal to.
    pub revision: i64,
    /// Full lists of [`WATCH_PREFIX`]: the first, then one per resync.
    pub lists: u64,
    /// Full resyncs: the watch's history had been compacted, so the view was listed afresh.
    pub resyncs: u64,
    /// Watches resumed from the last revision seen + 1 after a break (no list).
    pub resumes: u64,
    /// Watch events at or below a revision already applied to the view (history delivered
    /// twice). Zero unless a resume is wrong.
    pub repeated_events: u64,
    /// States the node accepted.
    pub applies: u64,
    /// Applies that failed or were refused (the node kept its previous state).
    pub apply_errors: u64,
    /// etcd requests that failed, each followed by a backoff.
    pub etcd_failures: u64,
    /// The latest etcd backoff: when it began and how long it is.
    pub backoff: Option<(Instant, Duration)>,
}

impl Status {
    pub fn new() -> Status {
        Status::default()
    }
    /// A snapshot of the counters.
    pub fn get(&self) -> Counters {
        self.lock().clone()
    }
    fn lock(&self) -> MutexGuard<'_, Counters> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn update(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.lock())
    }
}

struct Backoff {
    next: Duration,
    /// Backoffs after an etcd failure are counted here.
    status: Option<Status>,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN, status: None }
    }
    fn etcd(status: &Status) -> Backoff {
        Backoff { next: BACKOFF_MIN, status: Some(status.clone()) }
    }
    /// The next wait (doubling up to the maximum), recorded.
    fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        if let Some(s) = &self.status {
            s.update(|c| {
                c.etcd_failures += 1;
                c.backoff = Some((Instant::now(), d));
            });
        }
        d
    }
    async fn wait(&mut self) {
        tokio::time::sleep(self.step()).await;
    }
    fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }
}

/// Runs the agent for the daemon at `socket` until SIGINT/SIGTERM.
pub fn run(socket: &Path, args: AgentArgs) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AgentError::Setup(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        tokio::select! {
            r = agent(Daemon::new(socket), args, Status::new()) => r,
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

/// The node's first answer: who this node is.
async fn first_read<T: Target>(target: &T) -> Running {
    let mut backoff = Backoff::new();
    loop {
        let t = target.clone();
        match tokio::task::spawn_blocking(move || t.read()).await {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) => tracing::warn!("waiting for the daemon at {}: {e}", target.describe()),
            Err(e) => tracing::error!("daemon read task: {e}"),
        }
        backoff.wait().await;
    }
}

async fn connect(endpoints: &[String], status: &Status) -> Store {
    let mut backoff = Backoff::etcd(status);
    loop {
        match Store::connect(endpoints).await {
            Ok(s) => return s,
            Err(e) => tracing::warn!("etcd: {e}; retrying"),
        }
        backoff.wait().await;
    }
}

/// The agent's whole life for one node: learn who it is, register its `Node`, then follow
/// etcd and keep the node equal to its state there. Returns only on a setup error.
pub async fn agent<T: Target>(target: T, args: AgentArgs, status: Status) -> Result<(), AgentError> {
    let running = first_read(&target).await;
    let node = match (&args.node, running.node_name()) {
        (Some(n), _) => n.clone(),
        (None, Some(n)) => n.to_string(),
        (None, None) => return Err(AgentError::Setup("the daemon's config has no [node] name; give --node".into())),
    };
    let (ip, subnet) = running
        .node_address()
        .ok_or_else(|| AgentError::Setup("the daemon's config has no [node] ip and subnet".into()))?;
    tracing::info!(node = %node, %ip, %subnet, "agent starting");

    let store = connect(&args.etcd_endpoints, &status).await;
    let mut backoff = Backoff::etcd(&status);
    loop {
        let bgp = view::NodeBgpArgs {
            as_number: args.as_number,
            route_reflector_cluster_id: args.route_reflector_cluster_id,
        };
        match view::register_node(&store, &node, ip, subnet, &args.labels, bgp).await {
            Ok(()) => break,
            Err(e) => tracing::warn!("registering node {node}: {e}; retrying"),
        }
        backoff.wait().await;
    }

    let mut agent = Agent::new(store, target, &node, status);
    agent.bird = args.bird.map(|b| Arc::new(Mutex::new(bgp::Bird::new(b))));
    agent.follow().await;
    Ok(())
}

/// One node's agent: its etcd connection and its node.
pub struct Agent<T: Target> {
    store: Store,
    target: T,
    node: String,
    status: Status,
    /// When the node was last read (reconciled).
    checked: tokio::time::Instant,
    /// The node's state as last computed, and the view revision it was computed at: the
    /// once-a-second recheck reuses it instead of compiling the whole cluster again.
    computed: Option<(i64, NodeState)>,
    /// BIRD, when routes between nodes come from BGP.
    bird: Option<Arc<Mutex<bgp::Bird>>>,
    /// The BGP intent as last computed, for the view revision and daemon settings it was
    /// computed from.
    intent: Option<IntentAt>,
}

type IntentAt = ((i64, Result<(u32, String), String>), Result<vrouter_bgp::BgpIntent, String>);

impl<T: Target> Agent<T> {
    pub fn new(store: Store, target: T, node: &str, status: Status) -> Agent<T> {
        Agent {
            store,
            target,
            node: node.to_string(),
            status,
            checked: tokio::time::Instant::now(),
            computed: None,
            bird: None,
            intent: None,
        }
    }

    /// Full list, then watch from its revision; again from the start after a compaction.
    async fn follow(&mut self) {
        let mut backoff = Backoff::etcd(&self.status);
        // The last complete view: what the node is kept at while etcd cannot be listed.
        let mut last: Option<View> = None;
        loop {
            let (kvs, revision) = match self.store.list(WATCH_PREFIX).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("etcd list: {e}; the node keeps its state, retrying");
                    self.pause(&mut backoff, last.as_ref()).await;
                    continue;
                }
            };
            let mut view = View::from_list(kvs, revision);
            self.status.update(|c| c.lists += 1);
            tracing::info!(revision, resources = view.len(), "in sync with etcd");
            self.claim_block_if_none(&view).await;
            self.reconcile(&view).await;
            backoff.reset();
            self.watch(&mut view).await;
            self.status.update(|c| c.resyncs += 1);
            tracing::warn!(revision = view.revision(), "watch history compacted: full resync");
            last = Some(view);
        }
    }

    /// Waits out one etcd backoff step while keeping the node at `view`, the last-known-good
    /// state: the node is read every [`RECHECK`] as usual, so a daemon restarted during an etcd
    /// outage gets that state back within about a second, and a node that has it is left alone.
    async fn pause(&mut self, backoff: &mut Backoff, view: Option<&View>) {
        let until = tokio::time::Instant::now() + backoff.step();
        loop {
            let due = self.checked + RECHECK;
            let wake = match view {
                Some(_) => until.min(due),
                None => until,
            };
            tokio::time::sleep_until(wake).await;
            match view {
                Some(v) if tokio::time::Instant::now() >= due => self.reconcile(v).await,
                _ if tokio::time::Instant::now() >= until => return,
                _ => {}
            }
        }
    }

    /// Follows the watch; returns when etcd has compacted the revision it must resume from, so
    /// that only a full list can follow.
    async fn watch(&mut self, view: &mut View) {
        let mut backoff = Backoff::etcd(&self.status);
        let mut watch = None;
        let mut resuming = false;
        let mut dirty = false;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if watch.is_none() {
                match self.store.watch(WATCH_PREFIX, view.revision() + 1).await {
                    Ok(w) => {
                        watch = Some(w);
                        backoff.reset();
                        if resuming {
                            self.status.update(|c| c.resumes += 1);
                            tracing::info!(revision = view.revision(), "etcd watch resumed");
                        }
                    }
                    Err(StoreError::Compacted { .. }) => return,
                    Err(e) => {
                        tracing::warn!("etcd watch: {e}; the node keeps its state, retrying");
                        self.pause(&mut backoff, Some(view)).await;
                        continue;
                    }
                }
            }
            let w = watch.as_mut().expect("set above");
            tokio::select! {
                events = w.next() => match events {
                    Ok(events) => {
                        let seen = view.revision();
                        let repeated = events.iter().filter(|e| e.mod_revision() <= seen).count() as u64;
                        if repeated > 0 {
                            tracing::warn!(revision = seen, repeated, "etcd watch repeated events already applied");
                            self.status.update(|c| c.repeated_events += repeated);
                        }
                        for ev in events {
                            view.apply(ev);
                        }
                        dirty = true;
                    }
                    Err(StoreError::Compacted { .. }) => return,
                    Err(e) => {
                        view.advance(w.revision());
                        tracing::warn!(revision = view.revision(), "etcd watch broke: {e}; resuming from the next revision");
                        watch = None;
                        resuming = true;
                        self.pause(&mut backoff, Some(view)).await;
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

    /// Makes the node's owned parts equal to the view's state for this node (nothing is
    /// applied if they already are).
    pub async fn reconcile(&mut self, view: &View) {
        self.checked = tokio::time::Instant::now();
        let mut state = match &self.computed {
            // Views of one revision hold the same resources: the same state.
            Some((revision, state)) if *revision == view.revision() => state.clone(),
            _ => {
                let (state, skipped) = view.node_state(&self.node);
                for s in &skipped {
                    tracing::warn!(endpoint = %s.endpoint, "not programmed: {}", s.why);
                }
                self.computed = Some((view.revision(), state.clone()));
                state
            }
        };
        if self.bird.is_some() {
            // BIRD brings the other nodes' blocks; the peers stay as the known nodes (IPIP
            // decapsulation, and how BIRD's routes through them are sent).
            for p in &mut state.peers {
                p.pod_blocks.clear();
            }
        }
        for attempt in 0..5 {
            let t = self.target.clone();
            let running = match tokio::task::spawn_blocking(move || t.read()).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    tracing::warn!("daemon at {}: {e}", self.target.describe());
                    return;
                }
                Err(e) => {
                    tracing::error!("daemon task: {e}");
                    return;
                }
            };
            self.keep_unseen_endpoints(&running, &mut state).await;
            if running.matches(&state) {
                self.status.update(|c| c.revision = view.revision());
                self.sync_bird(view, &running).await;
                return;
            }
            let t = self.target.clone();
            let (r, s) = (running.clone(), state.clone());
            match tokio::task::spawn_blocking(move || t.apply(&r, &s)).await {
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
                    self.status.update(|c| {
                        c.applies += 1;
                        c.revision = view.revision();
                    });
                    self.sync_bird(view, &running).await;
                    return;
                }
                Ok(Err(DaemonError::Changed(_))) => {
                    tracing::debug!(attempt, "the node's config changed under us; reading it again");
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::error!("applying revision {}: {e}; the node keeps its previous state", view.revision());
                    self.status.update(|c| c.apply_errors += 1);
                    return;
                }
                Err(e) => {
                    tracing::error!("daemon task: {e}");
                    return;
                }
            }
        }
        self.status.update(|c| c.apply_errors += 1);
    }

    /// Once the daemon runs the node's state: BIRD is given the node's BGP intent (computed
    /// once per view revision), reloaded only if it changed.
    async fn sync_bird(&mut self, view: &View, running: &Running) {
        let Some(bird) = self.bird.clone() else { return };
        let settings = bgp::daemon_settings(running);
        let key = (view.revision(), settings.clone());
        let intent = match &self.intent {
            Some((k, intent)) if *k == key => intent.clone(),
            _ => {
                let secrets = bird.lock().unwrap_or_else(|p| p.into_inner()).secrets_dir().to_path_buf();
                let intent = settings.and_then(|(kernel_table, device)| {
                    let params = vrouter_cluster::bgp::BgpParams { kernel_table, device, bfd: Default::default() };
                    let read = move |r: &SecretKeyRef| vrouter_cluster::bgp::read_secret(&secrets, r);
                    vrouter_cluster::bgp::node_intent(&view.inputs(), &self.node, &params, &read)
                        .map_err(|e| e.to_string())
                });
                self.intent = Some((key, intent.clone()));
                intent
            }
        };
        if let Err(e) =
            tokio::task::spawn_blocking(move || bird.lock().unwrap_or_else(|p| p.into_inner()).sync(intent)).await
        {
            tracing::error!("BIRD task: {e}");
        }
    }

    /// Pods the daemon runs that the view does not have stay if etcd still has their
    /// endpoint (the CNI plugin wrote it and our watch has not caught up), or if etcd cannot
    /// be asked: a pod is removed only when its endpoint is known to be gone. Kept pods stay
    /// under the pending policy (denied) until the view has them.
    async fn keep_unseen_endpoints(&self, running: &Running, state: &mut NodeState) {
        for e in running.endpoints() {
            if state.endpoints.iter().any(|x| x.name == e.name) {
                continue;
            }
            let Some((ns, name)) = e.name.split_once('/') else {
                // Not made from a WorkloadEndpoint (those are `<namespace>/<name>`): in a cluster
                // the agent owns the node's pods, so it goes.
                continue;
            };
            let key = resource_key(Kind::WorkloadEndpoint, Some(ns), name);
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

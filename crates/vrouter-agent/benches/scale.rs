//! The agent at scale: CPU time and memory of one node's agent with 10,000 workload endpoints
//! and 1,000 policies in a real etcd (started here, on loopback, one member).
//!
//! Run: `cargo bench -p vrouter-agent --bench scale` (about a minute). It prints one table.
//!
//! A plain `main` (harness = false), not criterion: the figures are one-shot costs of a large
//! state (an initial sync that happens once per agent start, its memory, CPU seconds per
//! phase) plus medians over a few repetitions of operations that take tens of milliseconds;
//! criterion's warm-up and hundreds of samples would take minutes and say nothing about memory.
//!
//! The cluster is written through vrouter-cluster's own APIs and keys: resources parsed from
//! Calico v3 manifests (`parse_manifests`) and stored as `Resource::to_stored_json` under
//! `Resource::key`; IPAM blocks claimed with `ipam::claim_block` (block + affinity, CAS), then
//! filled: each block's allocations and one handle per address written in one transaction per
//! block (what 10,000 `ipam::assign` calls would leave, without 10,000 fsynced round trips).
//! Endpoints are simulated: a WorkloadEndpoint as vrouter-cni writes it, no pod behind it.
//!
//! Memory is measured in a fresh process (this binary re-executed with `SCALE_ETCD` set), so
//! that building the cluster's 11,000 manifests does not inflate or pre-warm the heap the
//! agent's figures are read from: the child is, like the agent, a process that connects,
//! lists `/calico/` and builds its view.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vrouter_agent::view::View;
use vrouter_cluster::desired;
use vrouter_cluster::ipam::{self, AllocationAttribute, Handle, PoolRef};
use vrouter_cluster::policy;
use vrouter_cluster::resource::{parse_manifests, Kind, Resource};
use vrouter_cluster::store::{keys, Op, Store, WatchEvent};
use vrouter_cluster::testing::Etcd;

const NODES: usize = 100;
const NAMESPACES: usize = 50;
const ENDPOINTS: usize = 10_000;
/// Half NetworkPolicy (10 per namespace), half GlobalNetworkPolicy.
const POLICIES: usize = 1_000;
const ME: &str = "node-0";
const POOL: &str = "10.244.0.0/16";
const BLOCK_SIZE: u8 = 26;
const STATE_RUNS: usize = 10;
const CHANGE_RUNS: usize = 20;
/// Operations per transaction (etcd refuses more than 128).
const TXN_OPS: usize = 100;

const TIERS: [&str; 4] = ["frontend", "backend", "db", "cache"];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];
/// Distinct `app` values per namespace.
const APPS: usize = 20;

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    match std::env::var("SCALE_ETCD") {
        Ok(endpoints) => rt.block_on(measure(endpoints.split(',').map(str::to_string).collect())),
        Err(_) => {
            let etcd = Etcd::start();
            let cpu = cpu_seconds();
            let t = Instant::now();
            let n = rt.block_on(populate(&etcd.endpoints()));
            let (wall, cpu) = (t.elapsed(), cpu_seconds() - cpu);
            println!(
                "agent scale: {ENDPOINTS} endpoints on {NODES} nodes, {POLICIES} policies, {NAMESPACES} namespaces"
            );
            println!("setup: {n} keys written in {:.1} s (this process: {cpu:.2} s CPU)\n", wall.as_secs_f64());
            let status = Command::new(std::env::current_exe().expect("own path"))
                .env("SCALE_ETCD", etcd.endpoints().join(","))
                .status()
                .expect("re-run for the measurement");
            assert!(status.success(), "measurement process failed: {status}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster

/// A small deterministic generator (xorshift64*), so every run builds the same cluster.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn ns(i: usize) -> String {
    format!("ns-{i}")
}

fn resource(doc: Value) -> Resource {
    let text = doc.to_string();
    let mut rs = parse_manifests(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(rs.len(), 1);
    rs.remove(0)
}

async fn write_all(store: &Store, ops: Vec<Op>) -> usize {
    let n = ops.len();
    for chunk in ops.chunks(TXN_OPS) {
        store.txn(chunk).await.expect("write");
    }
    n
}

fn create(r: &Resource) -> Op {
    Op::Create { key: r.key(), value: r.to_stored_json() }
}

/// Writes the cluster; returns the number of keys written.
async fn populate(endpoints: &[String]) -> usize {
    let store = Store::connect(endpoints).await.expect("connect");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut written = 0;

    // Nodes and the pool.
    let mut ops = Vec::new();
    for i in 0..NODES {
        ops.push(create(&resource(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "Node",
            "metadata": {"name": format!("node-{i}"),
                         "labels": {"kubernetes.io/os": "linux", "topology.kubernetes.io/zone": format!("zone-{}", i % 3)}},
            "spec": {"bgp": {"ipv4Address": format!("192.168.{}.{}/24", i / 200, i % 200 + 10), "asNumber": 64512}}
        }))));
    }
    ops.push(create(&resource(json!({
        "apiVersion": "projectcalico.org/v3", "kind": "IPPool",
        "metadata": {"name": "default-ipv4-ippool"},
        "spec": {"cidr": POOL, "blockSize": BLOCK_SIZE, "ipipMode": "CrossSubnet", "natOutgoing": false,
                 "nodeSelector": "all()"}
    }))));
    for k in 0..NAMESPACES {
        ops.push(create(&resource(json!({
            "apiVersion": "projectcalico.org/v3", "kind": "Profile",
            "metadata": {"name": format!("kns.{}", ns(k))},
            "spec": {"labelsToApply": {"pcns.projectcalico.org/name": ns(k),
                                       "pcns.team": format!("team-{}", k % 10),
                                       "pcns.env": ENVS[k % 3]},
                     "ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}]}
        }))));
    }
    written += write_all(&store, ops).await;

    // Blocks: enough per node for its endpoints, claimed as the agent claims them.
    let per_node = ENDPOINTS / NODES;
    let block_len = 1usize << (32 - BLOCK_SIZE);
    let pools = [PoolRef { cidr: POOL.parse().unwrap(), block_size: BLOCK_SIZE }];
    for i in 0..NODES {
        for _ in 0..per_node.div_ceil(block_len) {
            ipam::claim_block(&store, &format!("node-{i}"), &pools).await.expect("claim");
            written += 2;
        }
    }
    let mut blocks_of: BTreeMap<String, Vec<ipam::Block>> = BTreeMap::new();
    for b in ipam::blocks(&store).await.expect("blocks") {
        blocks_of.entry(b.affine_node().unwrap().to_string()).or_default().push(b);
    }

    // Endpoints: node-i gets endpoints i, i + NODES, ...; each takes the next free address of
    // its node's blocks, recorded in the block with a handle (the container ID), as assign does.
    let mut weps = Vec::new();
    let mut next_free: BTreeMap<String, usize> = BTreeMap::new();
    for j in 0..ENDPOINTS {
        let node = format!("node-{}", j % NODES);
        let k = rng.below(NAMESPACES);
        let namespace = ns(k);
        let app = format!("app-{}", rng.below(APPS));
        let tier = TIERS[rng.below(TIERS.len())];
        let pod = format!("{app}-{:08x}-{:05x}", rng.next() as u32, rng.next() as u32 & 0xfffff);
        let container = format!("{:016x}{:016x}", rng.next(), rng.next());
        let n = next_free.entry(node.clone()).or_default();
        let block = &mut blocks_of.get_mut(&node).unwrap()[*n / block_len];
        let ordinal = *n % block_len;
        *n += 1;
        let ip = block.ip(ordinal);
        block.allocations[ordinal] = Some(block.attributes.len());
        block.unallocated.retain(|&o| o != ordinal);
        block.attributes.push(AllocationAttribute {
            handle_id: Some(container.clone()),
            secondary: BTreeMap::from([
                ("node".into(), node.clone()),
                ("namespace".into(), namespace.clone()),
                ("pod".into(), pod.clone()),
            ]),
        });
        let mut ports = vec![json!({"name": "metrics", "port": 9090, "protocol": "TCP"})];
        if tier == "frontend" || tier == "backend" {
            ports.push(json!({"name": "http", "port": 8080 + (j % 3) as u16, "protocol": "TCP"}));
        }
        weps.push((
            container.clone(),
            block.cidr,
            create(&resource(json!({
                "apiVersion": "projectcalico.org/v3", "kind": "WorkloadEndpoint",
                "metadata": {"name": format!("{node}-k8s-{pod}-eth0"), "namespace": namespace,
                             "labels": {"app": app, "tier": tier, "version": format!("v{}", j % 3),
                                        "pod-template-hash": format!("{:08x}", rng.next() as u32)},
                             "annotations": {"vrouter.io/netns": format!("/var/run/netns/cni-{container}")}},
                "spec": {"node": node, "orchestrator": "k8s", "pod": pod, "endpoint": "eth0",
                         "containerID": container, "interfaceName": format!("vr{}", &container[..11]),
                         "mac": format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", j >> 24 & 0xff, j >> 16 & 0xff, j >> 8 & 0xff, j & 0xff),
                         "ipNetworks": [format!("{ip}/32")], "profiles": [format!("kns.{namespace}")],
                         "ports": ports}
            }))),
        ));
    }
    // One transaction per block: the block's allocations and its addresses' handles.
    for b in blocks_of.values().flatten() {
        let mut ops = vec![Op::Update {
            key: keys::block(b.cidr),
            value: serde_json::to_vec(b).unwrap(),
            expected: b.mod_revision,
        }];
        for a in &b.attributes {
            let id = a.handle_id.clone().unwrap();
            let h = Handle { handle_id: id.clone(), block: BTreeMap::from([(b.cidr.to_string(), 1)]), mod_revision: 0 };
            ops.push(Op::Create { key: keys::handle(&id), value: serde_json::to_vec(&h).unwrap() });
        }
        assert!(ops.len() <= 128);
        written += ops.len();
        store.txn(&ops).await.expect("block and handles");
    }
    written += write_all(&store, weps.into_iter().map(|w| w.2).collect()).await;

    // Policies as Calico users write them.
    let mut ops = Vec::new();
    for p in 0..POLICIES {
        let (kind, name, namespace) = if p % 2 == 0 {
            let k = (p / 2) % NAMESPACES;
            ("NetworkPolicy", format!("np-{p}"), Some(ns(k)))
        } else {
            ("GlobalNetworkPolicy", format!("gnp-{p}"), None)
        };
        let app = format!("app-{}", rng.below(APPS));
        let other = format!("app-{}", rng.below(APPS));
        let tier = TIERS[rng.below(TIERS.len())];
        let order = (p % 7 * 100) as f64;
        let spec = match p % 10 {
            // Ingress from a selected tier on numbered and named ports.
            0 | 1 => json!({
                "order": order, "selector": format!("app == '{app}'"), "types": ["Ingress"],
                "ingress": [{"action": "Allow", "protocol": "TCP",
                             "source": {"selector": format!("tier == 'frontend' && app == '{other}'")},
                             "destination": {"ports": [80, 443, "http", "8000:8100"]}},
                            {"action": "Deny", "protocol": "TCP", "destination": {"ports": [22]}}]
            }),
            // Egress to DNS and to the cluster's nets except a management range.
            2 | 3 => json!({
                "order": order, "selector": format!("tier == '{tier}'"), "types": ["Egress"],
                "egress": [{"action": "Allow", "protocol": "UDP", "destination": {"ports": [53]}},
                           {"action": "Allow", "protocol": "TCP",
                            "destination": {"nets": ["10.0.0.0/8", "172.16.0.0/12"], "notNets": ["10.96.0.0/12"],
                                            "ports": [5432, 6379]}},
                           {"action": "Deny", "destination": {"nets": ["169.254.0.0/16"]}}]
            }),
            // Both directions, set selectors, a named port, ICMP.
            4 | 5 => json!({
                "order": order, "selector": format!("app in {{'{app}', '{other}'}} && tier != 'db'"),
                "types": ["Ingress", "Egress"],
                "ingress": [{"action": "Allow", "protocol": "TCP",
                             "source": {"selector": "has(tier)", "notSelector": "tier == 'db'"},
                             "destination": {"ports": ["metrics"]}},
                            {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}}],
                "egress": [{"action": "Allow", "protocol": "TCP",
                            "destination": {"selector": format!("app == '{other}'"), "ports": ["http"]}},
                           {"action": "Pass"}]
            }),
            // Ingress from nets, denying everything but a few ports.
            6 | 7 => json!({
                "order": order, "selector": format!("tier == '{tier}' && version != 'v0'"), "types": ["Ingress"],
                "ingress": [{"action": "Deny", "protocol": "TCP", "source": {"nets": ["0.0.0.0/0"], "notNets": ["10.244.0.0/16"]},
                             "destination": {"notPorts": [80, 443]}},
                            {"action": "Allow", "source": {"nets": ["10.244.0.0/16", "192.168.0.0/16"]}}]
            }),
            // Broad: all() with a namespace selector (for GNPs) or !has().
            _ => json!({
                "order": order, "selector": if namespace.is_none() { "all()".to_string() } else { "!has(quarantine)".to_string() },
                "types": ["Ingress"],
                "ingress": [{"action": "Allow", "source": {"selector": format!("app == '{app}'")}}]
            }),
        };
        let mut doc =
            json!({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": {"name": name}, "spec": spec});
        if let Some(n) = &namespace {
            doc["metadata"]["namespace"] = json!(n);
        } else if p % 10 >= 8 {
            doc["spec"]["namespaceSelector"] = json!(format!("team == 'team-{}'", p % 10));
        }
        ops.push(create(&resource(doc)));
    }
    written += write_all(&store, ops).await;
    written
}

// ---------------------------------------------------------------------------------------------
// The measurement (a fresh process)

async fn measure(endpoints: Vec<String>) {
    let mut rows: Vec<[String; 4]> = Vec::new();
    let store = Store::connect(&endpoints).await.expect("connect");
    let rss0 = rss_kib();
    clear_peak_rss();

    // (1) Initial sync, as the agent does it.
    let (cpu, t) = (cpu_seconds(), Instant::now());
    let (kvs, revision) = store.list(keys::CALICO).await.expect("list");
    let (listed, list_wall, bytes) =
        (kvs.len(), t.elapsed(), kvs.iter().map(|kv| kv.key.len() + kv.value.len()).sum::<usize>());
    let t2 = Instant::now();
    let mut view = View::from_list(kvs, revision);
    let (view_wall, wall, cpu) = (t2.elapsed(), t.elapsed(), cpu_seconds() - cpu);
    let (rss1, hwm1) = (rss_kib(), peak_rss_kib());
    rows.push(row(
        "sync: Store::list(/calico/)",
        list_wall,
        None,
        &format!("{listed} keys, {:.1} MB", bytes as f64 / 1e6),
    ));
    rows.push(row("sync: View::from_list", view_wall, None, &format!("{} entries", view.len())));
    rows.push(row(
        "sync: total",
        wall,
        Some(cpu),
        &format!("RSS {} -> {} MiB (peak {})", rss0 / 1024, rss1 / 1024, hwm1 / 1024),
    ));

    // (2) node_state: the whole computation the agent runs on every change.
    let (cpu, mut times) = (cpu_seconds(), Vec::new());
    let mut state = None;
    for _ in 0..STATE_RUNS {
        let t = Instant::now();
        state = Some(view.node_state(ME));
        times.push(t.elapsed());
    }
    let cpu = cpu_seconds() - cpu;
    let (s, skipped) = state.unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let rules: usize = s.policies.values().map(Vec::len).sum();
    // A digest of the whole state, to compare two builds' results (same toolchain).
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&format!("{s:?}"), &mut h);
    rows.push(row(
        &format!("View::node_state (median of {STATE_RUNS})"),
        median(&mut times),
        Some(cpu / STATE_RUNS as f64),
        &format!(
            "{} endpoints, {} peers, {} lists, {rules} rules (digest {:016x})",
            s.endpoints.len(),
            s.peers.len(),
            s.policies.len(),
            std::hash::Hasher::finish(&h)
        ),
    ));
    for (what, d) in breakdown(&view) {
        rows.push(row(&format!("  of which {what}"), d, None, ""));
    }
    rows.push(row(
        "  RSS after",
        Duration::ZERO,
        None,
        &format!("{} MiB (peak {})", rss_kib() / 1024, peak_rss_kib() / 1024),
    ));

    // (3) One policy change, end to end in this process: write, watch, apply, recompute.
    let target = local_policy(&view, &s);
    let key = target.key();
    let mut rev = store.get(&key).await.expect("get").expect("policy exists").mod_revision;
    let mut watch = store.watch(keys::CALICO, view.revision() + 1).await.expect("watch");
    let (cpu, mut e2e, mut seen, mut applied) = (cpu_seconds(), Vec::new(), Vec::new(), Vec::new());
    let mut before = s.policies;
    for i in 0..CHANGE_RUNS {
        let changed = with_port(&target, 20_000 + i as u16);
        let t = Instant::now();
        rev = store.update(&key, &changed.to_stored_json(), rev).await.expect("update");
        'events: loop {
            for ev in watch.next().await.expect("watch") {
                let ours = matches!(&ev, WatchEvent::Put(kv) if kv.key == key && kv.mod_revision == rev);
                view.apply(ev);
                if ours {
                    break 'events;
                }
            }
        }
        seen.push(t.elapsed());
        let t3 = Instant::now();
        let (s, _) = view.node_state(ME);
        applied.push(t3.elapsed());
        e2e.push(t.elapsed());
        assert_ne!(s.policies, before, "the change reaches the node's compiled policy");
        before = s.policies;
    }
    let cpu = cpu_seconds() - cpu;
    rows.push(row(
        &format!("policy change end to end (median of {CHANGE_RUNS})"),
        median(&mut e2e),
        Some(cpu / CHANGE_RUNS as f64),
        &format!("max {:.1} ms; {}", e2e.iter().max().unwrap().as_secs_f64() * 1e3, target.display_name()),
    ));
    rows.push(row("  of which etcd write -> watch event", median(&mut seen), None, ""));
    rows.push(row("  of which node_state", median(&mut applied), None, ""));
    rows.push(row(
        "whole measurement process",
        Duration::ZERO,
        Some(cpu_seconds()),
        &format!("RSS {} MiB at the end", rss_kib() / 1024),
    ));

    println!("| phase | wall (ms) | CPU (s) | notes |\n|---|---:|---:|---|");
    for r in rows {
        println!("| {} | {} | {} | {} |", r[0], r[1], r[2], r[3]);
    }
}

/// Where `node_state`'s time goes: the same steps, timed one by one (median of `STATE_RUNS`).
fn breakdown(view: &View) -> Vec<(&'static str, Duration)> {
    let mut t = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..STATE_RUNS {
        let s = Instant::now();
        let inputs = view.inputs();
        t[0].push(s.elapsed());
        let s = Instant::now();
        let resources = view.policy_resources();
        t[1].push(s.elapsed());
        let s = Instant::now();
        let compiled = policy::compile(&resources.input(ME));
        t[2].push(s.elapsed());
        let s = Instant::now();
        std::hint::black_box(desired::node_state(&inputs, ME, &compiled.policies, &compiled.endpoints));
        t[3].push(s.elapsed());
    }
    let names = ["View::inputs", "cloning the resources", "policy::compile", "desired::node_state"];
    names.into_iter().zip(t.iter_mut().map(|v| median(v))).collect()
}

/// A NetworkPolicy with a numbered port that applies to some endpoint of `ME`, so that
/// changing the port changes the node's compiled rules.
fn local_policy(view: &View, s: &desired::NodeState) -> Resource {
    let used: BTreeSet<&str> = s.endpoints.iter().flat_map(|e| e.ingress.iter().map(String::as_str)).collect();
    view.resources()
        .find(|r| {
            r.kind() == Kind::NetworkPolicy
                && used.contains(
                    policy::list_name(r.namespace(), r.name(), vrouter_cluster::resource::PolicyType::Ingress).as_str(),
                )
                && r.to_stored_json().windows(7).any(|w| w == b"\"ports\"")
        })
        .expect("a NetworkPolicy that selects a local endpoint")
        .clone()
}

/// `r` with its last rule's ports replaced by `[port]`.
fn with_port(r: &Resource, port: u16) -> Resource {
    let mut doc = r.to_manifest();
    let rules = doc["spec"]["ingress"].as_array_mut().unwrap();
    let last = rules.iter_mut().rev().find(|x| x["destination"]["ports"].is_array() || x["protocol"] == "TCP").unwrap();
    last["protocol"] = json!("TCP");
    last["destination"]["ports"] = json!([port]);
    last["destination"].as_object_mut().unwrap().remove("notPorts");
    resource(doc)
}

// ---------------------------------------------------------------------------------------------
// Figures

fn row(what: &str, wall: Duration, cpu: Option<f64>, notes: &str) -> [String; 4] {
    let wall = if wall.is_zero() { String::new() } else { format!("{:.1}", wall.as_secs_f64() * 1e3) };
    let cpu = cpu.map(|c| format!("{c:.3}")).unwrap_or_default();
    [what.to_string(), wall, cpu, notes.to_string()]
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer given, which points to one.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    assert!(ok, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: zero-initialised and filled by a successful getrusage.
    let ru = unsafe { ru.assume_init() };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    s(ru.ru_utime) + s(ru.ru_stime)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so the peak read later is this phase's.
fn clear_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

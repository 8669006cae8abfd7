//! The CNI plugin driven by a real container runtime: podman (its CNI backend) runs
//! `vrouter-cni` for containers on a vrouter network, against a real etcd and a node's vrouter
//! daemon (root; podman, runc, busybox-static and etcd installed, see docs/cni.md).
//!
//! ```text
//!  etcd (Node t1 zone=a, IPPools: 10.248/16 zone=="a", 10.249/16 disabled, 10.250/16 zone=="b")
//!    |  vrouter-cni: IPAM, WorkloadEndpoints
//!  podman containers a, b --network <net>   TAP eth0 from t1's block, default via 169.254.1.1
//!    |  vrouter-cni: endpoint-add over the control socket
//!  <p>-node   vrouter (node t1, pod_blocks = [the block IPAM gave t1], vrouter.pending)
//! ```
//! The node agent's part is played by the test: it claims t1's block and gives it to the
//! daemon, and defines `vrouter.pending` (first empty: deny, then allow, as if the agent had
//! compiled the pods' policy).

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::podman::Podman;
use common::{skip_unless_ready, text, Topo};
use vrouter_cluster::ipam::{self, PoolRef};
use vrouter_cluster::resource::{parse_manifests, Kind, Resource};
use vrouter_cluster::store::{keys, Store};
use vrouter_cluster::testing::Etcd;
use vrouter_core::fib::Ipv4Prefix;

const MANIFESTS: &str = r#"
apiVersion: projectcalico.org/v3
kind: Node
metadata:
  name: t1
  labels: {zone: a}
spec:
  bgp:
    ipv4Address: 192.168.1.10/24
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec:
  cidr: 10.248.0.0/16
  blockSize: 26
  nodeSelector: zone == "a"
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-off}
spec:
  cidr: 10.249.0.0/16
  disabled: true
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-b}
spec:
  cidr: 10.250.0.0/16
  nodeSelector: zone == "b"
"#;

/// The `vrouter-cni` binary, built beside the daemon's (the root package's tests cannot name
/// another package's binary); `release`: the release build (what is installed, and measured).
fn plugin_binary(release: bool) -> PathBuf {
    let daemon = PathBuf::from(env!("CARGO_BIN_EXE_vrouter"));
    let target_dir = daemon.parent().unwrap().parent().unwrap();
    let mut c = Command::new(env!("CARGO"));
    c.args(["build", "-q", "-p", "vrouter-cni", "--bin", "vrouter-cni", "--target-dir"]).arg(target_dir);
    if release {
        c.arg("--release");
    }
    let o = c.current_dir(env!("CARGO_MANIFEST_DIR")).output().unwrap();
    assert!(o.status.success(), "building vrouter-cni: {}", text(&o));
    target_dir.join(if release { "release" } else { "debug" }).join("vrouter-cni")
}

/// etcd with [`MANIFESTS`], and t1's block claimed (what the node agent would do).
struct Datastore {
    etcd: Etcd,
    rt: tokio::runtime::Runtime,
    store: Store,
    block: Ipv4Prefix,
}

impl Datastore {
    fn start() -> Datastore {
        let etcd = Etcd::start();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = rt.block_on(Store::connect(&etcd.endpoints())).unwrap();
        for r in parse_manifests(MANIFESTS).unwrap() {
            rt.block_on(store.create(&r.key(), &r.to_stored_json())).unwrap();
        }
        let pool = PoolRef { cidr: "10.248.0.0/16".parse().unwrap(), block_size: 26 };
        let block = rt.block_on(ipam::claim_block(&store, "t1", &[pool])).unwrap();
        Datastore { etcd, rt, store, block }
    }

    fn weps(&self) -> Vec<Resource> {
        let prefix = keys::resources(Kind::WorkloadEndpoint.plural(), None);
        let (kvs, _) = self.rt.block_on(self.store.list(&prefix)).unwrap();
        kvs.iter()
            .map(|kv| Resource::from_stored(Kind::WorkloadEndpoint, &kv.value, kv.mod_revision).unwrap())
            .collect()
    }

    /// Handles holding addresses, and those addresses.
    fn allocations(&self) -> Vec<(String, Ipv4Addr)> {
        let blocks = self.rt.block_on(ipam::blocks(&self.store)).unwrap();
        let mut out = Vec::new();
        for b in blocks {
            for (i, a) in b.allocations.iter().enumerate() {
                if let Some(attr) = a.and_then(|a| b.attributes.get(a)) {
                    out.push((attr.handle_id.clone().unwrap_or_default(), b.ip(i)));
                }
            }
        }
        out
    }

    fn plugin_conf(&self, t: &Topo) -> serde_json::Value {
        serde_json::json!({
            "type": "vrouter-cni",
            "etcd_endpoints": self.etcd.endpoints().join(","),
            "node": "t1",
            "socket": t.sock().display().to_string(),
        })
    }
}

/// The node's config: the test topology's node (no pods), t1's block from IPAM, and the
/// pending policy with `pending` rules.
fn node_config(t: &Topo, block: Ipv4Prefix, pending: &str) -> String {
    format!("pod_blocks = [\"{block}\"]\n{}[policies]\n\"vrouter.pending\" = [{pending}]\n", t.config(""))
}

#[test]
fn podman_containers_get_addresses_from_the_nodes_block_reach_each_other_and_are_freed_by_rm() {
    if skip_unless_ready(&["podman", "runc", "etcd"]).is_some() {
        return;
    }
    let plugin = plugin_binary(false);
    let ds = Datastore::start();
    let t = Topo::namespaces("cnp", 1, &[]);
    t.write_config(&node_config(&t, ds.block, ""));
    let daemon = t.start();
    let pm = Podman::new("cnp");
    pm.install_plugin(&plugin);
    let net = format!("vr{}", pm.name("net"));
    pm.network(&net, &[ds.plugin_conf(&t)]);

    let a = pm.run("a", &net).unwrap_or_else(|e| panic!("podman run: {e}\ndaemon log: {}", t.log()));
    let b = pm.run("b", &net).unwrap_or_else(|e| panic!("podman run: {e}\ndaemon log: {}", t.log()));
    let (ip_a, ip_b) = (a.addr("eth0").expect("a's eth0 address"), b.addr("eth0").expect("b's eth0 address"));
    for ip in [&ip_a, &ip_b] {
        let ip: Ipv4Addr = ip.parse().unwrap();
        assert!(
            ds.block.contains(u32::from(ip)),
            "{ip} is in t1's block {} (pool-a, the only pool t1 may use)",
            ds.block
        );
    }
    assert_ne!(ip_a, ip_b);
    let route = a.exec_ok(&["ip", "route"]);
    assert!(route.contains("default via 169.254.1.1 dev eth0"), "{route}");
    // The WorkloadEndpoints, the daemon's endpoints and the IPAM handles agree.
    let weps = ds.weps();
    assert_eq!(weps.len(), 2, "{weps:?}");
    let eps = t.ctl_json(&["endpoints"]);
    let names: Vec<&str> = eps["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    for w in &weps {
        assert!(names.contains(&format!("default/{}", w.name()).as_str()), "{names:?} {w:?}");
    }
    let held = ds.allocations();
    assert_eq!(held.len(), 2, "{held:?}");

    // The pods start under the pending policy: denied until the agent compiles theirs ...
    assert!(!a.exec(&["ping", "-c", "1", "-W", "1", &ip_b]).status.success(), "pending denies");
    // ... which it does (played here: the pending policy allows).
    let allow = t.dir.join("allow.toml");
    std::fs::write(&allow, "rules = [{ action = \"allow\" }]\n").unwrap();
    let o = t.ctl(&["policy", "set", "vrouter.pending", "-f", allow.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = a.exec(&["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip_b]);
    assert!(o.status.success(), "a pings b through vrouter: {}\n{}", text(&o), t.log());

    // podman rm: DEL frees everything of b's, and a's are untouched.
    b.remove();
    let weps = ds.weps();
    assert_eq!(weps.len(), 1, "{weps:?}");
    let held = ds.allocations();
    let held: Vec<String> = held.iter().map(|(_, ip)| ip.to_string()).collect();
    assert_eq!(held, std::slice::from_ref(&ip_a), "b's address is free");
    let eps = t.ctl_json(&["endpoints"]);
    assert_eq!(eps["endpoints"].as_array().unwrap().len(), 1, "{eps}");
    a.remove();
    assert!(ds.weps().is_empty() && ds.allocations().is_empty(), "nothing left behind");
    t.stop(daemon);
}

#[test]
fn a_failed_add_leaves_nothing_and_podman_says_why() {
    if skip_unless_ready(&["podman", "runc", "etcd"]).is_some() {
        return;
    }
    let plugin = plugin_binary(false);
    let ds = Datastore::start();
    let t = Topo::namespaces("cnf", 1, &[]);
    // No daemon on the socket: the address and the WorkloadEndpoint are taken back.
    let pm = Podman::new("cnf");
    pm.install_plugin(&plugin);
    let net = format!("vr{}", pm.name("net"));
    pm.network(&net, &[ds.plugin_conf(&t)]);
    let e = pm.run("a", &net).err().expect("no daemon: podman run fails");
    assert!(e.contains("creating the pod's port on the node daemon") && e.contains("no daemon at"), "{e}");
    assert!(ds.weps().is_empty() && ds.allocations().is_empty(), "a failed ADD leaves nothing behind");
}

/// A network namespace (as a runtime makes for a container), deleted on drop.
struct Netns(String);

impl Netns {
    fn add(name: &str) -> Netns {
        common::ok(&["ip", "netns", "add", name]);
        Netns(name.to_string())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = common::sh(&["ip", "netns", "del", &self.0]);
    }
}

/// Runs the plugin as a runtime does: `cmd` for container `id` (interface eth0) in `netns`,
/// `conf` on stdin.
fn plugin_call(plugin: &std::path::Path, conf: &str, cmd: &str, id: &str, netns: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=direct;K8S_POD_NAMESPACE=ops")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_plugin_called_directly_adds_checks_and_deletes_idempotently() {
    if skip_unless_ready(&["etcd"]).is_some() {
        return;
    }
    let plugin = plugin_binary(false);
    let ds = Datastore::start();
    let t = Topo::namespaces("cnd", 1, &[]);
    t.write_config(&node_config(&t, ds.block, ""));
    let daemon = t.start();
    let sandbox = Netns::add(&format!("{}-sandbox", t.p));
    let ns = sandbox.0.clone();
    let netns = format!("/run/netns/{ns}");
    let id = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    let mut conf = ds.plugin_conf(&t);
    conf["cniVersion"] = "0.4.0".into();
    conf["name"] = "vrdirect".into();
    let conf_text = conf.to_string();

    let o = plugin_call(&plugin, &conf_text, "ADD", id, &netns);
    assert!(o.status.success(), "ADD: {}", text(&o));
    let result: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(result["cniVersion"], "0.4.0");
    assert_eq!(result["ips"][0]["version"], "4", "0.4.0's shape: {result}");
    let addr = result["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").to_string();
    let mac = result["interfaces"][1]["mac"].as_str().unwrap().to_string();
    // What the result says is what the sandbox has.
    let inside =
        String::from_utf8_lossy(&common::sh(&["ip", "-n", &ns, "-o", "link", "show", "eth0"]).stdout).into_owned();
    assert!(inside.contains(&mac), "{inside}");
    let inside = String::from_utf8_lossy(&common::sh(&["ip", "-n", &ns, "-4", "-o", "addr"]).stdout).into_owned();
    assert!(inside.contains(&format!("{addr}/32")), "{inside}");
    // The namespace from K8S_POD_NAMESPACE: the endpoint and the WorkloadEndpoint live there.
    let weps = ds.weps();
    assert_eq!(weps.iter().map(|w| w.namespace().unwrap_or("")).collect::<Vec<_>>(), ["ops"]);
    assert_eq!(t.ctl_json(&["endpoints"])["endpoints"][0]["name"], format!("ops/{}", weps[0].name()));

    // CHECK with the previous result: fine; a repeated ADD: the same address.
    conf["prevResult"] = result.clone();
    let with_prev = conf.to_string();
    let o = plugin_call(&plugin, &with_prev, "CHECK", id, &netns);
    assert!(o.status.success() && o.stdout.is_empty(), "CHECK: {}", text(&o));
    let o = plugin_call(&plugin, &conf_text, "ADD", id, &netns);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again["ips"], result["ips"], "a repeated ADD gets the same address");
    assert_eq!(ds.allocations().len(), 1);

    // DEL, twice: nothing left; CHECK now says what is missing (code 999).
    for _ in 0..2 {
        let o = plugin_call(&plugin, &with_prev, "DEL", id, &netns);
        assert!(o.status.success(), "DEL: {}", text(&o));
    }
    assert!(ds.weps().is_empty() && ds.allocations().is_empty());
    assert_eq!(t.ctl_json(&["endpoints"])["endpoints"], serde_json::json!([]));
    let o = plugin_call(&plugin, &with_prev, "CHECK", id, &netns);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!o.status.success() && e["code"] == 999, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("no WorkloadEndpoint"), "{e}");

    // etcd gone: ADD fails with code 11 naming the endpoints, and leaves no port behind.
    drop(ds);
    let o = plugin_call(&plugin, &conf_text, "ADD", id, &netns);
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!o.status.success() && e["code"] == 11, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("127.0.0.1"), "the message names etcd: {e}");
    assert_eq!(t.ctl_json(&["endpoints"])["endpoints"], serde_json::json!([]));
    t.stop(daemon);
}

/// ADD's latency, the release plugin run as a runtime runs it (a process per call, a fresh
/// network namespace), over 20 ADDs (each followed by its DEL, not timed). A measurement, not a
/// test of speed: `cargo test --test cni_podman -- --ignored --nocapture cni_add_latency`
/// prints the median and the spread (docs/cni.md has the figure).
#[test]
#[ignore]
fn cni_add_latency() {
    if skip_unless_ready(&["etcd"]).is_some() {
        return;
    }
    let plugin = plugin_binary(true);
    let ds = Datastore::start();
    let t = Topo::namespaces("cnl", 1, &[]);
    t.write_config(&node_config(&t, ds.block, "{ action = \"allow\" }"));
    let daemon = t.start();
    let conf = {
        let mut c = ds.plugin_conf(&t);
        c["cniVersion"] = "1.0.0".into();
        c["name"] = "vrbench".into();
        c.to_string()
    };
    let call = |cmd: &str, id: &str, netns: &str| {
        let o = plugin_call(&plugin, &conf, cmd, id, netns);
        assert!(o.status.success(), "{cmd}: {}", text(&o));
    };
    let mut times = Vec::new();
    for i in 0..21 {
        let sandbox = Netns::add(&format!("{}-b{i}", t.p));
        let ns = sandbox.0.clone();
        let id = format!("{:012x}{:052x}", 0xbe00 + i, 0);
        let start = Instant::now();
        call("ADD", &id, &format!("/run/netns/{ns}"));
        let took = start.elapsed();
        call("DEL", &id, &format!("/run/netns/{ns}"));
        drop(sandbox);
        if i > 0 {
            times.push(took); // the first warms the page cache
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "vrouter-cni ADD over {} runs: median {:.1} ms, min {:.1} ms, max {:.1} ms",
        times.len(),
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1])
    );
    t.stop(daemon);
}

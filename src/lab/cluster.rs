//! The lab as a cluster: etcd holds the intent, an agent per node applies it, and the pods are
//! wired by the CNI plugin, as on a real node; the node files carry only what is the node's
//! own (uplink, host port, routes to the underlay).
//!
//! etcd and the agents run in the underlay router's namespace (`<p>-rt`, on its loopback), so
//! nothing of the lab listens in the host's; teardown kills them with the namespace. The
//! tools are the binaries beside the `vrouter` binary (`vrouterctl`, `vrouter-agent`,
//! `vrouter-cni`: `cargo build --release --workspace` builds them) and Debian's `etcd`.
//! The daemon links no etcd client: the lab drives the cluster through those programs.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vrouter_api::reply::{Endpoints, Policies};
use vrouter_api::Request;

use super::{sys, topo, LabError, LabHandle};

/// etcd member `i`'s client URL inside the router namespace (its own loopback: no clash with
/// another lab or the host): ports 2379, 2479, 2579 ...
pub fn etcd_client(i: usize) -> String {
    format!("http://127.0.0.1:{}", 2379 + 100 * i)
}
fn etcd_peer(i: usize) -> String {
    format!("http://127.0.0.1:{}", 2380 + 100 * i)
}

/// Every member's client URL, comma-separated (what the agents, the CNI plugin and
/// vrouterctl are given).
pub fn etcd_endpoints(lab: &LabHandle) -> String {
    (0..lab.state().etcd_members.max(1)).map(etcd_client).collect::<Vec<_>>().join(",")
}

/// The lab's pool: blocks of /26 per node, IPIP across subnets as the file-based lab does.
pub const POOL: &str = "10.244.0.0/16";
/// The label that selects the guarded pod, and the policy that guards it.
pub const GUARDED_LABEL: (&str, &str) = ("role", "guarded");

/// The programs the cluster lab runs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub vrouterctl: PathBuf,
    pub agent: PathBuf,
    pub cni: PathBuf,
}

impl Tools {
    /// The tools beside `vrouter` (the binary the lab runs on its nodes), and etcd on PATH.
    pub fn beside(vrouter: &Path) -> Result<Tools, LabError> {
        sys::need_tool("etcd")?;
        let dir = vrouter.parent().unwrap_or(Path::new("."));
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(LabError::Binary {
                    path: p,
                    msg: format!(
                        "not found beside {}: build it (`cargo build --release -p {name}`)",
                        vrouter.display()
                    ),
                })
            }
        };
        Ok(Tools { vrouterctl: find("vrouterctl")?, agent: find("vrouter-agent")?, cni: find("vrouter-cni")? })
    }
}

/// The cluster's resources for the lab: the pool, and a policy that keeps TCP port
/// [`topo::DENIED_PORT`] from the guarded pod (what the file-based lab's `guarded` policy does).
pub fn manifest() -> String {
    format!(
        r#"apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: lab-pool
spec:
  cidr: {POOL}
  blockSize: 26
  ipipMode: CrossSubnet
  natOutgoing: false
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: guarded
spec:
  order: 100
  selector: {k} == '{v}'
  types: [Ingress]
  ingress:
    - action: Deny
      protocol: TCP
      destination:
        ports: [{port}]
    - action: Allow
"#,
        k = GUARDED_LABEL.0,
        v = GUARDED_LABEL.1,
        port = topo::DENIED_PORT
    )
}

/// Starts etcd (every member) in the router namespace and waits until each answers. `fresh`:
/// on empty data directories (otherwise on what stopped members left, as after an outage).
pub fn start_etcd(lab: &LabHandle, fresh: bool) -> Result<(), LabError> {
    for i in 0..lab.state().etcd_members.max(1) {
        start_etcd_member(lab, i, fresh)?;
    }
    wait_etcd(lab)
}

/// Starts member `i` (without waiting: a new cluster's members wait for each other).
pub fn start_etcd_member(lab: &LabHandle, i: usize, fresh: bool) -> Result<(), LabError> {
    let n = lab.state().etcd_members.max(1);
    let dir = lab.dir().join("etcd").join(format!("m{i}"));
    if fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let log = lab.dir().join(format!("etcd{i}.log"));
    let log = if log.exists() { lab.dir().join(format!("etcd{i}.restarted.log")) } else { log };
    let cluster: Vec<String> = (0..n).map(|m| format!("lab{m}={}", etcd_peer(m))).collect();
    let (name, client, peer) = (format!("lab{i}"), etcd_client(i), etcd_peer(i));
    let token = format!("vrouter-lab-{}", lab.prefix());
    #[rustfmt::skip]
    let child = sys::spawn_in(&lab.router_ns(), &[
        "etcd", "--name", &name, "--data-dir", &dir.to_string_lossy(),
        "--listen-client-urls", &client, "--advertise-client-urls", &client,
        "--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer,
        "--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new",
        "--initial-cluster-token", &token,
    ], Some(&log))?;
    lab.adopt(child);
    Ok(())
}

/// Waits until every member answers its health check.
pub fn wait_etcd(lab: &LabHandle) -> Result<(), LabError> {
    let all: Vec<usize> = (0..lab.state().etcd_members.max(1)).collect();
    wait_etcd_members(lab, &all)
}

/// Waits until members `which` answer their health check, which needs a leader: after a
/// member that led is gone, until the others elected one (etcd's election timeout is a
/// second; a busy machine takes longer).
pub fn wait_etcd_members(lab: &LabHandle, which: &[usize]) -> Result<(), LabError> {
    let rt = lab.router_ns();
    let eps = which.iter().map(|&i| etcd_client(i)).collect::<Vec<_>>().join(",");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sys::exec_in(&rt, &["etcdctl", "--endpoints", &eps, "endpoint", "health"], Duration::from_secs(5));
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::ForwarderNotReady {
                what: format!("etcd did not answer on {eps} in {rt}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                tail: sys::tail(&lab.dir().join("etcd0.log"), 15),
            });
        }
        sys::sleep(Duration::from_millis(100))?;
    }
}

/// `vrouterctl apply -f` of the lab's resources (into etcd).
pub fn seed(lab: &LabHandle, tools: &Tools) -> Result<(), LabError> {
    let file = lab.dir().join("cluster.yaml");
    let text = manifest() + &super::bgp::manifest(lab.state().route_reflectors);
    std::fs::write(&file, text).map_err(|err| LabError::Io { what: format!("writing {}", file.display()), err })?;
    let ctl = tools.vrouterctl.to_string_lossy();
    sys::ns_ok(
        &lab.router_ns(),
        &[&ctl, "--etcd-endpoints", &etcd_endpoints(lab), "apply", "-f", &file.to_string_lossy()],
        Duration::from_secs(30),
    )
    .map(|_| ())
}

/// Starts one agent per node (in the router namespace, beside etcd).
pub fn start_agents(lab: &LabHandle, tools: &Tools) -> Result<(), LabError> {
    for n in lab.nodes() {
        start_agent(lab, tools, n.index)?;
    }
    Ok(())
}

/// Starts node `index`'s agent, logging to `<node>.agent.log` (a restarted one to
/// `<node>.agent.restarted.log`).
pub fn start_agent(lab: &LabHandle, tools: &Tools, index: u8) -> Result<(), LabError> {
    let n = lab.node(index);
    let mut log = lab.dir().join(format!("{}.agent.log", n.name));
    if log.exists() {
        log = lab.dir().join(format!("{}.agent.restarted.log", n.name));
    }
    let socket = topo::socket_path(n);
    let agent = tools.agent.to_string_lossy();
    let subnet = n.subnet.replace('/', "_");
    let label = format!("lab/subnet={subnet}");
    let etcd = etcd_endpoints(lab);
    let mut args = vec![&*agent, "--socket", &socket, "--etcd-endpoints", &etcd, "--node", &n.name, "--label", &label];
    let bgp = if lab.state().bgp { super::bgp::agent_args(lab, index) } else { vec![] };
    args.extend(bgp.iter().map(String::as_str));
    let child = sys::spawn_in(&lab.router_ns(), &args, Some(&log))?;
    lab.adopt(child);
    Ok(())
}

/// A process of the cluster lab, found in the router namespace by its command line.
#[derive(Debug, Clone, Copy)]
pub enum Service {
    /// Every etcd member.
    Etcd,
    EtcdMember(usize),
    Agent(u8),
}

/// The pids of a cluster process, found in the router namespace by its command line.
pub fn pids(lab: &LabHandle, what: Service) -> Vec<u32> {
    let pattern = match what {
        Service::Etcd => "etcd --name lab".to_string(),
        Service::EtcdMember(i) => format!("etcd --name lab{i} "),
        Service::Agent(i) => format!("--node {} ", lab.node(i).name),
    };
    sys::netns_pids(&lab.router_ns())
        .into_iter()
        .filter(|&p| sys::cmdline(p).is_some_and(|c| (c + " ").contains(&pattern)))
        .collect()
}

/// SIGKILLs a cluster process (a crash, not a clean stop) and waits until it is gone.
pub fn kill(lab: &LabHandle, what: Service) -> Result<(), LabError> {
    let pids = pids(lab, what);
    if pids.is_empty() {
        return Err(LabError::BadOption(format!("no running {what:?} in {}", lab.router_ns())));
    }
    for &p in &pids {
        sys::signal(p, sys::Signal::SIGKILL);
    }
    sys::wait_gone(&pids, Duration::from_secs(5), &format!("kill {what:?}"))
}

/// Waits until every node's agent has registered it and applied its first state (the
/// pending policy is in the node's config): a pod added before would find no Node.
pub fn wait_agents(lab: &LabHandle, timeout: Duration) -> Result<(), LabError> {
    wait_nodes(lab, timeout, Request::Policies, "the agent did not apply its first state", |_, p: &Policies| {
        p.policies.contains_key(vrouter_api::PENDING_POLICY)
    })
}

/// Waits until every pod is programmed by its node's agent: in its node's running config and
/// out of the pending policy (which denies everything until the agent has compiled the pod's
/// own). A pod the lab hands out before that would drop its first packets.
pub fn wait_programmed(lab: &LabHandle, timeout: Duration) -> Result<(), LabError> {
    let pending = |l: &[String]| l.iter().any(|p| p == vrouter_api::PENDING_POLICY);
    wait_nodes(lab, timeout, Request::Endpoints, "pods still pending their policy", |n, e: &Endpoints| {
        e.endpoints.len() == lab.pods().iter().filter(|p| p.node == n.index).count()
            && e.endpoints.iter().all(|x| !pending(&x.config.ingress) && !pending(&x.config.egress))
    })
}

/// Asks each node's daemon `req` (on its control socket) until `ready` holds of the reply, node
/// after node; past `timeout` the error names the node, `what` it was still waiting for and the
/// end of its agent's log.
fn wait_nodes<T: serde::de::DeserializeOwned>(
    lab: &LabHandle,
    timeout: Duration,
    req: Request,
    what: &str,
    ready: impl Fn(&topo::LabNode, &T) -> bool,
) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    for n in lab.nodes() {
        let sock = topo::socket_path(n);
        loop {
            let got: Result<T, _> = vrouterctl::request(Path::new(&sock), req.clone(), Duration::from_secs(5));
            if got.is_ok_and(|r| ready(n, &r)) {
                break;
            }
            if Instant::now() >= deadline {
                let log = lab.dir().join(format!("{}.agent.log", n.name));
                return Err(LabError::ForwarderNotReady {
                    what: format!("{}: {what} within {timeout:?}", n.name),
                    tail: sys::tail(&log, 15),
                });
            }
            sys::sleep(Duration::from_millis(50))?;
        }
    }
    Ok(())
}

/// What the CNI plugin answered for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Wired {
    pub ip: Ipv4Addr,
    pub mac: String,
}

/// The CNI network config the lab's pods are wired with on node `n`, with the pod's labels
/// (as a runtime passes them, in `runtimeConfig`), on an underlay of `mtu`.
pub fn netconf(n: &topo::LabNode, etcd: &str, mtu: u16, labels: &[(&str, &str)]) -> serde_json::Value {
    let labels: serde_json::Map<String, serde_json::Value> =
        labels.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect();
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "vrouter-lab",
        "type": "vrouter-cni",
        "etcd_endpoints": etcd,
        "node": n.name,
        "socket": topo::socket_path(n),
        "mtu": topo::pod_mtu(mtu),
        "runtimeConfig": {"labels": labels},
    })
}

/// Runs the CNI plugin's ADD for `pod` (its namespace exists) on its node, as a runtime
/// would: the address comes from the node's block, the TAP is created by the node's daemon.
pub fn add_pod(lab: &LabHandle, tools: &Tools, pod: &topo::LabPod) -> Result<Wired, LabError> {
    let stdout = cni(lab, tools, pod, "ADD")?;
    parse_result(&stdout).map_err(|msg| LabError::Command {
        cmd: format!("vrouter-cni ADD for pod {}", pod.name),
        status: "0".into(),
        stderr: format!("unexpected result ({msg}): {stdout}"),
    })
}

/// Runs the CNI plugin's DEL for `pod` (frees its address, endpoint and TAP).
pub fn del_pod(lab: &LabHandle, tools: &Tools, pod: &topo::LabPod) -> Result<(), LabError> {
    cni(lab, tools, pod, "DEL").map(|_| ())
}

/// One CNI call for `pod`, its stdout; a failure carries the plugin's error JSON.
fn cni(lab: &LabHandle, tools: &Tools, pod: &topo::LabPod, command: &str) -> Result<String, LabError> {
    let n = lab.node(pod.node);
    let args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{}", pod.name);
    let guarded = pod.ingress.iter().any(|p| p == topo::GUARDED_POLICY);
    let pod_label = format!("pod-{}", pod.name);
    let mut labels = vec![("app", pod_label.as_str())];
    if guarded {
        labels.push(GUARDED_LABEL);
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.router_ns()])
        .arg(&tools.cni)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", format!("{}-lab-{}", pod.name, lab.prefix()))
        .env("CNI_NETNS", format!("/run/netns/{}", pod.ns))
        .env("CNI_IFNAME", topo::POD_IF)
        .env("CNI_ARGS", args)
        .env("CNI_PATH", tools.cni.parent().unwrap_or(Path::new("/")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = sys::describe(&cmd);
    let mut child = cmd.spawn().map_err(|err| LabError::Io { what: format!("starting {what}"), err })?;
    let conf = netconf(n, &etcd_endpoints(lab), lab.state.mtu, &labels).to_string();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(conf.as_bytes());
    }
    let out = child.wait_with_output().map_err(|err| LabError::Io { what: format!("waiting for {what}"), err })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("vrouter-cni {command} for pod {}", pod.name),
            status: out.status.to_string(),
            stderr: format!("{stdout} {}", String::from_utf8_lossy(&out.stderr)).trim().to_string(),
        });
    }
    Ok(stdout.into_owned())
}

/// The pod's address and MAC from a CNI 1.0.0 ADD result.
pub fn parse_result(text: &str) -> Result<Wired, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let addr = v["ips"][0]["address"].as_str().ok_or("no ips[0].address")?;
    let ip = addr.split('/').next().unwrap_or(addr).parse().map_err(|e| format!("{addr}: {e}"))?;
    let mac = v["interfaces"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["sandbox"].is_string()))
        .and_then(|i| i["mac"].as_str())
        .ok_or("no sandbox interface with a mac")?
        .to_string();
    Ok(Wired { ip, mac })
}

/// Policy propagation, as a benchmark (`vrouter lab bench-policy`): `changes` times, a
/// GlobalNetworkPolicy selecting every pod gets a new rule (TCP port 10000 + i denied), and the
/// time is measured from just before `vrouterctl apply` starts until every node's running
/// config has that rule (the daemon's reply comes after the new policy is published to its
/// workers). Returns the times in order.
pub fn policy_propagation(lab: &LabHandle, tools: &Tools, changes: usize) -> Result<Vec<Duration>, LabError> {
    let file = lab.dir().join("bench-policy.yaml");
    let ctl = tools.vrouterctl.to_string_lossy().into_owned();
    let sockets: Vec<String> = lab.nodes().iter().map(topo::socket_path).collect();
    let mut times = Vec::with_capacity(changes);
    for i in 0..changes {
        let port = 10_000 + i as u16;
        let manifest = format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: bench\nspec:\n  order: 500\n  selector: all()\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      protocol: TCP\n      destination:\n        ports: [{port}]\n    - action: Pass\n"
        );
        std::fs::write(&file, manifest)
            .map_err(|err| LabError::Io { what: format!("writing {}", file.display()), err })?;
        let start = Instant::now();
        sys::ns_ok(
            &lab.router_ns(),
            &[&ctl, "--etcd-endpoints", &etcd_endpoints(lab), "apply", "-f", &file.to_string_lossy()],
            Duration::from_secs(30),
        )?;
        let mut pending: Vec<&String> = sockets.iter().collect();
        while !pending.is_empty() {
            pending.retain(|sock| {
                let got: Result<Policies, _> =
                    vrouterctl::request(Path::new(sock.as_str()), Request::Policies, Duration::from_secs(5));
                let has = got.is_ok_and(|p| {
                    p.policies
                        .get("gnp.bench.ingress")
                        .is_some_and(|rules| rules.iter().any(|r| r.dst_ports.iter().any(|d| d.lo == port)))
                });
                !has
            });
            if start.elapsed() > Duration::from_secs(30) {
                return Err(LabError::Timeout { cmd: format!("policy change {i} reaching every node"), secs: 30.0 });
            }
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cni_result_gives_the_pods_address_and_mac() {
        let r = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"vr1"},{"name":"eth0","mac":"0a:58:0a:f4:00:05","sandbox":"/run/netns/x"}],
                   "ips":[{"address":"10.244.0.5/32","interface":1}],"routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"}]}"#;
        assert_eq!(parse_result(r), Ok(Wired { ip: "10.244.0.5".parse().unwrap(), mac: "0a:58:0a:f4:00:05".into() }));
        assert!(parse_result(r#"{"ips":[]}"#).unwrap_err().contains("ips[0]"));
        assert!(parse_result("not json").is_err());
    }

    #[test]
    fn the_lab_manifest_names_the_pool_and_the_guard() {
        let m = manifest();
        assert!(m.contains("cidr: 10.244.0.0/16") && m.contains("ipipMode: CrossSubnet"));
        assert!(m.contains("selector: role == 'guarded'") && m.contains("ports: [5202]"));
    }
}

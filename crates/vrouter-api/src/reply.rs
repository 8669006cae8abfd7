//! What the daemon answers, one struct per request: the `result` of a [`crate::Reply`]. The
//! daemon builds these and serializes them; clients deserialize the one their request expects
//! ([`crate::Reply::into_result`]), so a field renamed on one side fails to compile on the
//! other instead of reading as missing. The JSON field names are those `docs/control.md` lists.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{EndpointConfig, PeerConfig};
use crate::route::{RouteSource, RouteView};
use crate::{NhId, PortId};
use vrouter_types::{Ipv4Prefix, MacAddr, Rule};

/// `status`: the node at a glance.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub node: String,
    /// The daemon's version.
    pub version: String,
    /// The protocol version it speaks ([`crate::VERSION`]).
    pub protocol: u32,
    pub uptime_s: u64,
    pub workers: usize,
    /// The data-plane snapshot's generation.
    pub generation: u64,
    pub routes: usize,
    pub fib_bytes: usize,
    pub endpoints: usize,
    pub peers: usize,
    pub nexthops: usize,
    pub neighbours: usize,
    pub connections: u64,
    pub policy_generation: u64,
    pub snapshots_published: u64,
    pub grace_timeouts: u64,
}

/// `routes`: the winning route per prefix, and the kernel's routes that could not be installed.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Routes {
    pub routes: Vec<RouteView>,
    pub not_installed: Vec<NotInstalled>,
}

/// A route a source gave that is not in the FIB, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NotInstalled {
    pub prefix: Ipv4Prefix,
    pub source: RouteSource,
    pub error: String,
}

/// `route-lookup`: the route an address uses (longest-prefix match).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RouteLookup {
    pub address: Ipv4Addr,
    /// `None`: no route (then `source` is absent and `nexthop` says unreachable).
    pub prefix: Option<Ipv4Prefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<RouteSource>,
    pub nexthop: String,
    /// The next-hop id the workers' FIB gives.
    pub nh_id: NhId,
    /// That next hop as the workers' snapshot has it.
    #[serde(default)]
    pub forwarding: Option<String>,
}

/// `route-add`, `route-del`, `route-flush-kernel`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoutesChanged {
    pub routes_changed: usize,
}

/// `peers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Peers {
    pub peers: Vec<PeerConfig>,
}

/// `endpoints`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Endpoints {
    pub endpoints: Vec<EndpointInfo>,
}

/// A pod as configured, and the port slot it has (none while it is being set up).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EndpointInfo {
    #[serde(flatten)]
    pub config: EndpointConfig,
    pub port: Option<PortId>,
}

/// `policies`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Policies {
    pub global_rules: Vec<Rule>,
    pub policies: BTreeMap<String, Vec<Rule>>,
}

/// `ports`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ports {
    pub ports: Vec<Port>,
}

/// What a port is attached to.
#[derive(Copy, Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum PortKind {
    Uplink,
    Pod,
    Host,
}

impl std::fmt::Display for PortKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortKind::Uplink => "Uplink",
            PortKind::Pod => "Pod",
            PortKind::Host => "Host",
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Port {
    pub id: PortId,
    pub name: String,
    pub kind: PortKind,
    pub mac: MacAddr,
    pub mtu: u16,
    /// The pod on it.
    pub endpoint: Option<String>,
    pub stats: PortStats,
    /// `up`, `down` or `unknown`.
    pub link: String,
    /// The uplink's XDP attachment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<Xdp>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Xdp {
    /// `native` or `generic` (`skb`).
    pub mode: String,
    pub zero_copy: bool,
}

/// One port's packet and byte counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// `neighbours`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Neighbours {
    pub neighbours: Vec<Neighbour>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Neighbour {
    pub ip: Ipv4Addr,
    /// `None` while unresolved.
    pub mac: Option<MacAddr>,
    /// `incomplete`, `reachable`, `stale`, `failed`, `static` ...
    pub state: String,
    pub probes: u8,
}

/// `neighbours-flush`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flushed {
    pub flushed: usize,
}

/// `connections`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Connections {
    pub connections: Vec<Connection>,
    /// Tracked by all workers (`connections` may be cut at the request's limit).
    pub total: usize,
    pub workers_not_answering: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub worker: u32,
    /// The IP protocol number.
    pub proto: u8,
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub state: String,
    pub policy_generation: u64,
}

/// `counters`: summed over workers (`total`) and per worker.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    pub total: CounterTotals,
    pub workers: Vec<WorkerCounters>,
    /// Counted since `counters-clear`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub since_clear: bool,
}

/// All workers' counters summed; also what the daemon writes to its `--stats` file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CounterTotals {
    pub node: String,
    /// By port name.
    pub ports: BTreeMap<String, PortStats>,
    /// By drop reason (its stable name, docs/drops.md), every reason.
    pub drops: BTreeMap<String, u64>,
    /// The other counters, by name.
    pub counters: BTreeMap<String, u64>,
    /// Every drop reason the daemon knows, in order.
    #[serde(default)]
    pub drop_reasons: Vec<String>,
}

/// One worker's counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerCounters {
    pub worker: usize,
    pub ports: BTreeMap<String, PortStats>,
    pub drops: BTreeMap<String, u64>,
    /// The other counters, by name, beside the fields above.
    #[serde(flatten)]
    pub counters: BTreeMap<String, u64>,
}

impl Counters {
    /// What was counted since `base` (a `counters-clear`): every count minus its baseline,
    /// names kept; a count below its baseline (a port re-created) counts from zero.
    pub fn since(&self, base: &Counters) -> Counters {
        let mut out = self.clone();
        out.total.since(&base.total);
        if out.workers.len() == base.workers.len() {
            for (w, b) in out.workers.iter_mut().zip(&base.workers) {
                sub_ports(&mut w.ports, &b.ports);
                sub_map(&mut w.drops, &b.drops);
                sub_map(&mut w.counters, &b.counters);
            }
        }
        out.since_clear = true;
        out
    }
}

impl CounterTotals {
    fn since(&mut self, base: &CounterTotals) {
        sub_ports(&mut self.ports, &base.ports);
        sub_map(&mut self.drops, &base.drops);
        sub_map(&mut self.counters, &base.counters);
    }
}

fn sub_map(m: &mut BTreeMap<String, u64>, base: &BTreeMap<String, u64>) {
    for (k, v) in m.iter_mut() {
        if let Some(b) = base.get(k) {
            *v = v.saturating_sub(*b);
        }
    }
}

fn sub_ports(m: &mut BTreeMap<String, PortStats>, base: &BTreeMap<String, PortStats>) {
    for (k, v) in m.iter_mut() {
        if let Some(b) = base.get(k) {
            v.rx_packets = v.rx_packets.saturating_sub(b.rx_packets);
            v.rx_bytes = v.rx_bytes.saturating_sub(b.rx_bytes);
            v.tx_packets = v.tx_packets.saturating_sub(b.tx_packets);
            v.tx_bytes = v.tx_bytes.saturating_sub(b.tx_bytes);
        }
    }
}

/// `counters-clear`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cleared {
    pub cleared: bool,
}

/// `config-show`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigShow {
    /// The running config, as TOML.
    pub config: String,
    /// The file a reload would read.
    pub file: Option<PathBuf>,
    pub matches_file: bool,
    /// Why a reload would change or fail, when it would.
    pub warning: Option<String>,
    /// The running config's generation, bumped by every change applied to it: what `apply`'s
    /// `if_generation` compares.
    #[serde(default)]
    pub generation: u64,
}

/// `trace`: what each stage decided for each packet traced.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Trace {
    pub packets: Vec<TracedPacket>,
    /// Packets asked for.
    pub wanted: u32,
}

/// One traced packet.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TracedPacket {
    /// What the pipeline recorded (its fields appear at this level in JSON).
    #[serde(flatten)]
    pub packet: TraceRecord,
    /// The route that lookup matched.
    #[serde(default)]
    pub route: Option<TraceRoute>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TraceRoute {
    pub prefix: Ipv4Prefix,
    pub source: RouteSource,
    pub nexthop: String,
}

/// `trace-stop`.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stopped {
    /// Whether a trace or capture was running.
    pub stopped: bool,
}

/// `capture`: the frames seen.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Capture {
    pub frames: Vec<CapturedFrame>,
}

/// A captured frame, as the data plane records it (one definition, in vrouter-types).
pub use vrouter_types::observe::{CapturePoint, Captured as CapturedFrame, TraceRecord};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Reply, ReplyError, VERSION};
    use serde::de::DeserializeOwned;
    use serde_json::{json, Value};

    /// `t` as JSON, after checking it reads back as itself through a reply.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(t: &T) -> Value {
        let line = serde_json::to_string(&Reply::ok_with(t)).unwrap();
        let back: Reply = serde_json::from_str(&line).unwrap();
        assert_eq!(back.version, VERSION);
        let v = back.result.clone().unwrap();
        assert_eq!(&back.into_result::<T>().unwrap(), t, "{line}");
        v
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn endpoint() -> EndpointConfig {
        EndpointConfig {
            name: "web".into(),
            tap: "tapweb".into(),
            netns: Some("web".into()),
            ifname: "eth0".into(),
            mac: "0a:58:0a:f4:01:05".parse().unwrap(),
            addrs: vec!["10.244.1.5".parse().unwrap()],
            mtu: 1480,
            ingress: vec!["web".into()],
            egress: vec![],
        }
    }

    #[test]
    fn status_has_the_documented_fields() {
        let v = round_trip(&Status { node: "n1".into(), version: "0.1.0".into(), protocol: 1, ..Status::default() });
        let mut want = vec![
            "node",
            "version",
            "protocol",
            "uptime_s",
            "workers",
            "generation",
            "routes",
            "fib_bytes",
            "endpoints",
            "peers",
            "nexthops",
            "neighbours",
            "connections",
            "policy_generation",
            "snapshots_published",
            "grace_timeouts",
        ];
        want.sort_unstable();
        assert_eq!(keys(&v), want);
    }

    #[test]
    fn a_lookup_without_a_route_has_no_source() {
        let none = RouteLookup {
            address: "8.8.8.8".parse().unwrap(),
            prefix: None,
            source: None,
            nexthop: "unreachable (no route)".into(),
            nh_id: 0,
            forwarding: None,
        };
        let v = round_trip(&none);
        assert_eq!((v.get("source"), &v["prefix"]), (None, &Value::Null), "{v}");
        let some = RouteLookup {
            prefix: Some("0.0.0.0/0".parse().unwrap()),
            source: Some(RouteSource::Cli),
            nexthop: "via 192.168.1.1".into(),
            nh_id: 3,
            forwarding: Some("Gateway".into()),
            ..none
        };
        let v = round_trip(&some);
        assert_eq!((v["prefix"].as_str(), v["source"].as_str()), (Some("0.0.0.0/0"), Some("cli")), "{v}");
    }

    #[test]
    fn routes_and_endpoints_keep_their_wire_form() {
        let routes = Routes {
            routes: vec![RouteView {
                prefix: "10.244.2.0/26".parse().unwrap(),
                source: RouteSource::Config,
                nexthop: "via 192.168.1.20".into(),
                nh_id: 5,
                shadowed: vec![(RouteSource::Kernel, "via 192.168.1.1".into())],
            }],
            not_installed: vec![NotInstalled {
                prefix: "10.0.0.0/8".parse().unwrap(),
                source: RouteSource::Kernel,
                error: "no neighbour".into(),
            }],
        };
        let v = round_trip(&routes);
        assert_eq!(v["routes"][0]["shadowed"], json!([["kernel", "via 192.168.1.1"]]));
        assert_eq!(v["not_installed"][0]["source"], "kernel");
        // The endpoint's fields and its port, side by side in one object.
        let v = round_trip(&Endpoints { endpoints: vec![EndpointInfo { config: endpoint(), port: Some(2) }] });
        let e = &v["endpoints"][0];
        assert_eq!(
            (e["name"].as_str(), e["mac"].as_str(), e["port"].as_u64()),
            (Some("web"), Some("0a:58:0a:f4:01:05"), Some(2))
        );
        let v = round_trip(&Endpoints { endpoints: vec![EndpointInfo { config: endpoint(), port: None }] });
        assert_eq!(v["endpoints"][0]["port"], Value::Null);
    }

    #[test]
    fn peers_policies_ports_and_neighbours_round_trip() {
        round_trip(&Peers {
            peers: vec![PeerConfig {
                name: "node2".into(),
                ip: "192.168.1.11".parse().unwrap(),
                pod_blocks: vec!["10.244.2.0/26".parse().unwrap()],
                ipip_mode: Some(vrouter_types::IpipMode::CrossSubnet),
            }],
        });
        let rule: Rule =
            serde_json::from_value(json!({"action": "allow", "protocol": "tcp", "dst_ports": ["80"]})).unwrap();
        let v =
            round_trip(&Policies { global_rules: vec![rule.clone()], policies: [("web".into(), vec![rule])].into() });
        assert_eq!(v["policies"]["web"][0]["dst_ports"], json!(["80"]));
        let port = Port {
            id: 0,
            name: "up0".into(),
            kind: PortKind::Uplink,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            mtu: 1500,
            endpoint: None,
            stats: PortStats { rx_packets: 1, rx_bytes: 60, tx_packets: 2, tx_bytes: 120 },
            link: "up".into(),
            xdp: Some(Xdp { mode: "native".into(), zero_copy: false }),
        };
        let v = round_trip(&Ports { ports: vec![port.clone(), Port { xdp: None, kind: PortKind::Pod, ..port }] });
        assert_eq!(
            (v["ports"][0]["kind"].as_str(), v["ports"][0]["mac"].as_str()),
            (Some("Uplink"), Some("02:00:00:00:00:01"))
        );
        assert_eq!(v["ports"][0]["xdp"], json!({"mode": "native", "zero_copy": false}));
        assert!(v["ports"][1].get("xdp").is_none(), "only the uplink has one: {v}");
        let v = round_trip(&Neighbours {
            neighbours: vec![
                Neighbour { ip: "192.168.1.1".parse().unwrap(), mac: None, state: "incomplete".into(), probes: 2 },
                Neighbour {
                    ip: "192.168.1.2".parse().unwrap(),
                    mac: Some("02:00:00:00:00:02".parse().unwrap()),
                    state: "reachable".into(),
                    probes: 0,
                },
            ],
        });
        assert_eq!(
            (&v["neighbours"][0]["mac"], v["neighbours"][1]["mac"].as_str()),
            (&Value::Null, Some("02:00:00:00:00:02"))
        );
    }

    fn counters() -> Counters {
        let ports: BTreeMap<String, PortStats> =
            [("up0".into(), PortStats { rx_packets: 10, rx_bytes: 600, tx_packets: 4, tx_bytes: 240 })].into();
        let drops: BTreeMap<String, u64> = [("policy/deny".into(), 3)].into();
        let named: BTreeMap<String, u64> = [("punted".into(), 7), ("ipip_encap".into(), 1)].into();
        Counters {
            total: CounterTotals {
                node: "n1".into(),
                ports: ports.clone(),
                drops: drops.clone(),
                counters: named.clone(),
                drop_reasons: vec!["policy/deny".into()],
            },
            workers: vec![WorkerCounters { worker: 0, ports, drops, counters: named }],
            since_clear: false,
        }
    }

    #[test]
    fn counters_keep_their_wire_form() {
        let v = round_trip(&counters());
        assert_eq!(keys(&v), ["total", "workers"], "since_clear only after a clear");
        assert_eq!(v["total"]["counters"]["punted"], 7);
        assert_eq!(v["total"]["ports"]["up0"]["rx_packets"], 10);
        // A worker's named counters sit beside its ports and drops.
        assert_eq!(keys(&v["workers"][0]), ["drops", "ipip_encap", "ports", "punted", "worker"]);
    }

    #[test]
    fn counters_since_a_baseline_subtract_and_never_go_below_zero() {
        let base = counters();
        let mut now = counters();
        now.total.counters.insert("punted".into(), 9);
        now.workers[0].drops.insert("policy/deny".into(), 1);
        now.total.ports.get_mut("up0").unwrap().rx_packets = 15;
        now.total.ports.insert("tapb".into(), PortStats { rx_packets: 2, ..PortStats::default() });
        let d = now.since(&base);
        assert!(d.since_clear);
        assert_eq!((d.total.counters["punted"], d.total.counters["ipip_encap"]), (2, 0));
        assert_eq!(d.workers[0].drops["policy/deny"], 0, "below its baseline: zero");
        assert_eq!(
            (d.total.ports["up0"].rx_packets, d.total.ports["tapb"].rx_packets),
            (5, 2),
            "a new port counts all"
        );
        assert_eq!((d.total.node.as_str(), d.workers[0].worker), ("n1", 0), "names and indices are kept");
        assert_eq!(round_trip(&d)["since_clear"], true);
    }

    #[test]
    fn trace_and_capture_round_trip() {
        let p = TracedPacket {
            packet: TraceRecord {
                seq: 1,
                worker: 0,
                in_port: 2,
                received: "IPv4 10.244.1.2 > 8.8.8.8".into(),
                steps: vec!["lookup: 8.8.8.8 -> nh 3".into()],
                verdict: "tx".into(),
                drop_reason: None,
                out_port: Some(0),
                sent: Some("IPv4 ...".into()),
                lookup: Some((0x0808_0808, 3)),
            },
            route: Some(TraceRoute {
                prefix: "0.0.0.0/0".parse().unwrap(),
                source: RouteSource::Cli,
                nexthop: "via 192.168.1.1".into(),
            }),
        };
        let v = round_trip(&Trace { packets: vec![p.clone(), TracedPacket { route: None, ..p }], wanted: 5 });
        assert_eq!(v["packets"][0]["route"]["source"], "cli");
        assert_eq!(v["packets"][1]["route"], Value::Null);
        assert_eq!(
            (v["packets"][0]["seq"].clone(), v["packets"][0]["verdict"].clone()),
            (json!(1), json!("tx")),
            "flat"
        );
        let f = CapturedFrame { ts_ns: 5, port: 0, point: CapturePoint::Tx, orig_len: 64, data: vec![0xab, 0x01] };
        let v = round_trip(&Capture { frames: vec![f] });
        assert_eq!(v["frames"][0], json!({"ts_ns": 5, "port": 0, "point": "tx", "orig_len": 64, "data": "ab01"}));
        let bad = json!({"frames": [{"ts_ns": 5, "port": 0, "point": "tx", "orig_len": 64, "data": "abc"}]});
        assert!(serde_json::from_value::<Capture>(bad).is_err(), "odd hex is refused");
    }

    #[test]
    fn small_replies_round_trip() {
        assert_eq!(round_trip(&RoutesChanged { routes_changed: 2 }), json!({"routes_changed": 2}));
        assert_eq!(round_trip(&Flushed { flushed: 1 }), json!({"flushed": 1}));
        assert_eq!(round_trip(&Cleared { cleared: true }), json!({"cleared": true}));
        assert_eq!(round_trip(&Stopped { stopped: false }), json!({"stopped": false}));
        let c = Connection {
            worker: 1,
            proto: 6,
            src: "10.244.1.2".parse().unwrap(),
            sport: 40000,
            dst: "10.244.2.3".parse().unwrap(),
            dport: 80,
            state: "established".into(),
            policy_generation: 4,
        };
        let v = round_trip(&Connections { connections: vec![c], total: 1, workers_not_answering: 0 });
        assert_eq!(v["connections"][0]["src"], "10.244.1.2");
        let v = round_trip(&ConfigShow {
            config: "[node]\n".into(),
            file: None,
            matches_file: true,
            warning: None,
            generation: 3,
        });
        assert_eq!(
            v,
            json!({"config": "[node]\n", "file": null, "matches_file": true, "warning": null, "generation": 3})
        );
        // From a daemon that predates generations: 0.
        let old: ConfigShow =
            serde_json::from_value(json!({"config": "", "file": null, "matches_file": true, "warning": null})).unwrap();
        assert_eq!(old.generation, 0);
        round_trip(&crate::Plan { global_rules_changed: true, ..crate::Plan::default() });
        round_trip(&crate::ChangeReport { routes_changed: 1, ..crate::ChangeReport::default() });
    }

    #[test]
    fn a_refusal_or_a_wrong_shape_is_an_error_not_a_default() {
        let e = Reply::err("no CLI route to 10.0.0.0/8").into_result::<RoutesChanged>().unwrap_err();
        assert_eq!(e, ReplyError::Refused("no CLI route to 10.0.0.0/8".into()));
        // A renamed field on the daemon's side is a reported error, not a silent "-".
        let e = Reply::ok(json!({"routes_modified": 1})).into_result::<RoutesChanged>().unwrap_err();
        assert!(matches!(&e, ReplyError::Malformed(m) if m.contains("routes_changed")), "{e}");
    }
}

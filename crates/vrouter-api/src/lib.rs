//! vrouter's control protocol between `vrouterctl` and the daemon, version [`VERSION`] (1): typed
//! requests ([`Request`]) and replies ([`reply`]), shared by both sides so that they cannot
//! disagree on a field name without failing to compile. No data plane and no daemon code here:
//! a client builds on this crate (and vrouter-types) alone.
//!
//! One request per connection... or several: the client writes one JSON object per line,
//! the daemon answers each with one JSON object per line, in order.
//!
//! ```text
//! > {"version":1,"request":{"cmd":"route-add","prefix":"203.0.113.0/24","nexthop":{"gateway":"192.168.1.1"}}}
//! < {"version":1,"ok":true,"result":{"routes_changed":1, ...}}
//! > {"version":1,"request":{"cmd":"route-del","prefix":"198.51.100.0/24"}}
//! < {"version":1,"ok":false,"error":"no CLI route to 198.51.100.0/24 (...)"}
//! ```
//! A request line is at most [`MAX_REQUEST`] bytes and must arrive whole within
//! [`REQUEST_TIMEOUT_MS`] of the connection (or of the previous reply): a client that has not
//! sent a complete line by then is told so and disconnected, however slowly it keeps sending. Unknown fields are refused, so a typo is an error
//! rather than a silently ignored option. `docs/control.md` lists every request.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod config;
pub mod reply;
pub mod route;

pub use config::{EndpointConfig, PeerConfig};
pub use route::{ChangeReport, NhKey, Plan, RouteSource, RouteView};
pub use vrouter_types::{Ipv4Prefix, MacAddr, Rule};

/// A port's number (0 the uplink, 1 the host port, pods from 2 on), as the data plane has it.
pub type PortId = u16;
/// A next hop's number in the FIB, as the data plane has it.
pub type NhId = u16;

/// The annotation on a `Node` that drains BFD from its BGP sessions before a graceful restart
/// of its BIRD (any value; removed once BIRD is back): the agents read it, the lab and
/// operators set it.
pub const BGP_GRACEFUL_RESTART_ANNOTATION: &str = "vrouter.io/bgp-graceful-restart";

/// The protocol version: requests carry it, replies say it. Bumped when a request or a reply
/// changes in a way an older peer would misread (a field renamed, removed or retyped).
pub const VERSION: u32 = 1;
/// Where the daemon listens unless its config says otherwise (`[control] socket`).
pub const DEFAULT_SOCKET: &str = "/run/vrouter/vrouter.sock";
/// Largest request line (a whole config for `apply` fits comfortably).
pub const MAX_REQUEST: usize = 4 << 20;
/// A connection with no complete request this long after it opened (or after the previous
/// reply) is closed.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;
/// The policy a new pod starts under in a cluster: no rules, so everything is denied until the
/// node agent has compiled the pod's own (the CNI plugin names it, the agent installs it).
pub const PENDING_POLICY: &str = "vrouter.pending";

/// How the refusal of an `apply` whose `if_generation` is not the running config's begins.
pub const GENERATION_CHANGED: &str = "config generation changed";
/// Longest a trace or capture may wait for packets.
pub const MAX_WAIT_MS: u64 = 600_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Node name, uptime, workers, counts.
    Status,
    Routes {
        #[serde(default)]
        source: Option<RouteSource>,
        /// Only routes inside this prefix.
        #[serde(default)]
        within: Option<Ipv4Prefix>,
    },
    /// The route `addr` uses (longest-prefix match), as the workers look it up.
    RouteLookup {
        addr: std::net::Ipv4Addr,
    },
    RouteAdd {
        prefix: Ipv4Prefix,
        nexthop: NhKey,
    },
    RouteDel {
        prefix: Ipv4Prefix,
    },
    /// Withdraws every route imported from the kernel.
    RouteFlushKernel,
    Peers,
    PeerAdd {
        peer: PeerConfig,
    },
    PeerDel {
        name: String,
    },
    Endpoints,
    EndpointAdd {
        endpoint: EndpointConfig,
    },
    EndpointDel {
        name: String,
    },
    Policies,
    PolicySet {
        name: String,
        rules: Vec<Rule>,
    },
    PolicyDel {
        name: String,
    },
    GlobalRulesSet {
        rules: Vec<Rule>,
    },
    Ports,
    Neighbours,
    /// Removes learnt neighbours (all, or `ip`'s); static ones stay.
    NeighboursFlush {
        #[serde(default)]
        ip: Option<std::net::Ipv4Addr>,
    },
    Connections {
        #[serde(default)]
        limit: Option<usize>,
    },
    Counters,
    /// From now on `counters` counts from zero (a baseline on the control side: workers'
    /// counters, the stats file and Prometheus are not reset).
    CountersClear,
    /// The config the node runs, as TOML, and whether it still matches the file a reload
    /// (SIGHUP) would read.
    ConfigShow,
    /// The whole config as TOML text: the node is changed to match it (a diff); with
    /// `dry_run`, only what would change is returned.
    Apply {
        config: String,
        #[serde(default)]
        dry_run: bool,
        /// Compare and swap: refused (with an error starting [`GENERATION_CHANGED`]) unless the
        /// running config is still this generation (`config-show`'s), so that a
        /// read-modify-write cannot undo a change made in between.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        if_generation: Option<u64>,
        /// The file `config` was read from: errors name it (they say `<apply>` without it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        file: Option<String>,
    },
    /// Re-reads the config file the daemon was started with (as SIGHUP does).
    Reload,
    /// Ends the running trace and capture sessions (their clients get what was recorded).
    TraceStop,
    Trace {
        count: u32,
        #[serde(default)]
        port: Option<String>,
        #[serde(default = "default_wait")]
        timeout_ms: u64,
    },
    Capture {
        count: u32,
        #[serde(default)]
        port: Option<String>,
        #[serde(default = "yes")]
        rx: bool,
        #[serde(default = "yes")]
        tx: bool,
        #[serde(default = "default_snaplen")]
        snaplen: u32,
        #[serde(default = "default_wait")]
        timeout_ms: u64,
    },
}

impl Request {
    /// Whether it changes the node (these are logged with who asked).
    pub fn is_change(&self) -> bool {
        matches!(
            self,
            Request::RouteAdd { .. }
                | Request::RouteDel { .. }
                | Request::RouteFlushKernel
                | Request::PeerAdd { .. }
                | Request::PeerDel { .. }
                | Request::EndpointAdd { .. }
                | Request::EndpointDel { .. }
                | Request::PolicySet { .. }
                | Request::PolicyDel { .. }
                | Request::GlobalRulesSet { .. }
                | Request::Apply { dry_run: false, .. }
                | Request::Reload
                | Request::TraceStop
                | Request::CountersClear
        )
    }

    /// A one-line description for the log (a config's text is not repeated).
    pub fn describe(&self) -> String {
        let text = match self {
            Request::Apply { config, dry_run, .. } => {
                format!("apply ({} bytes of config, dry_run {dry_run})", config.len())
            }
            other => serde_json::to_string(other).unwrap_or_default(),
        };
        match text.char_indices().nth(300) {
            Some((i, _)) => format!("{}...", &text[..i]),
            None => text,
        }
    }
}

fn default_wait() -> u64 {
    10_000
}
fn yes() -> bool {
    true
}
fn default_snaplen() -> u32 {
    2048
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Reply {
        Reply { version: VERSION, ok: true, result: Some(result), error: None }
    }
    /// A reply carrying one of the [`reply`] structs.
    pub fn ok_with<T: Serialize>(result: &T) -> Reply {
        match serde_json::to_value(result) {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(format!("cannot encode the reply: {e}")),
        }
    }
    /// The result as the [`reply`] struct the request expects; the daemon's error otherwise.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ReplyError> {
        if !self.ok {
            return Err(ReplyError::Refused(self.error.unwrap_or_default()));
        }
        let v = self.result.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(v).map_err(|e| ReplyError::Malformed(e.to_string()))
    }
    pub fn err(e: impl std::fmt::Display) -> Reply {
        Reply { version: VERSION, ok: false, result: None, error: Some(e.to_string()) }
    }
}

/// Why a reply has no result of the expected type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// The daemon refused the request: its message.
    Refused(String),
    /// The result does not have the expected fields (a daemon of another version?).
    Malformed(String),
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyError::Refused(e) => f.write_str(e),
            ReplyError::Malformed(e) => write!(f, "unexpected reply from the daemon (another version?): {e}"),
        }
    }
}

impl std::error::Error for ReplyError {}

impl ReplyError {
    /// An `apply` with `if_generation` refused because the config changed since: read it again
    /// (`config-show`) and redo the change.
    pub fn is_generation_changed(&self) -> bool {
        matches!(self, ReplyError::Refused(e) if e.starts_with(GENERATION_CHANGED))
    }
}

/// Parses one request line, with errors a person can act on.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(n) if n == VERSION as u64 => {}
        Some(n) => return Err(format!("protocol version {n} is not supported (this daemon speaks {VERSION})")),
        None => return Err(format!("missing \"version\" (this daemon speaks {VERSION})")),
    }
    let env: Envelope = serde_json::from_value(v).map_err(|e| format!("bad request: {e}"))?;
    Ok(env.request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_typos_are_errors() {
        let r = Request::RouteAdd {
            prefix: "10.0.0.0/8".parse().unwrap(),
            nexthop: NhKey::Gateway("192.168.1.1".parse().unwrap()),
        };
        let line = serde_json::to_string(&Envelope { version: VERSION, request: r.clone() }).unwrap();
        assert_eq!(parse_request(&line).unwrap(), r);
        assert!(
            line.contains(r#""cmd":"route-add""#) && line.contains(r#""nexthop":{"gateway":"192.168.1.1"}"#),
            "{line}"
        );
        let e = parse_request(r#"{"version":1,"request":{"cmd":"routes","sauce":1}}"#).unwrap_err();
        assert!(e.contains("unknown field `sauce`"), "{e}");
        let e = parse_request(r#"{"version":2,"request":{"cmd":"status"}}"#).unwrap_err();
        assert!(e.contains("version 2 is not supported"), "{e}");
        let e = parse_request(r#"{"request":{"cmd":"status"}}"#).unwrap_err();
        assert!(e.contains("missing \"version\""), "{e}");
        let e = parse_request(r#"{"version":1,"request":{"cmd":"reboot"}}"#).unwrap_err();
        assert!(e.contains("unknown variant `reboot`"), "{e}");
        let e = parse_request("{").unwrap_err();
        assert!(e.starts_with("not JSON"), "{e}");
        let e = parse_request(r#"{"version":1,"request":{"cmd":"route-del","prefix":"10.0.0.0/33"}}"#).unwrap_err();
        assert!(e.contains("bad request"), "{e}");
    }

    #[test]
    fn apply_carries_an_optional_generation_to_compare() {
        let plain = parse_request(r#"{"version":1,"request":{"cmd":"apply","config":"x"}}"#).unwrap();
        assert_eq!(plain, Request::Apply { config: "x".into(), dry_run: false, file: None, if_generation: None });
        let r = Request::Apply { config: "x".into(), dry_run: false, file: None, if_generation: Some(7) };
        let line = serde_json::to_string(&Envelope { version: VERSION, request: r.clone() }).unwrap();
        assert!(line.contains(r#""if_generation":7"#), "{line}");
        assert_eq!(parse_request(&line).unwrap(), r);
        // Without it, the line is what older clients send.
        let line = serde_json::to_string(&Envelope { version: VERSION, request: plain }).unwrap();
        assert!(!line.contains("if_generation"), "{line}");
        let e = ReplyError::Refused(format!("{GENERATION_CHANGED}: the node runs generation 8, not 7"));
        assert!(e.is_generation_changed());
        assert!(!ReplyError::Refused("endpoint x: no such netns".into()).is_generation_changed());
    }

    #[test]
    fn endpoints_with_slashes_in_names_and_netns_paths_round_trip() {
        let e: EndpointConfig = serde_json::from_str(
            r#"{"name":"default/n1-cni-0123456789ab-eth0","tap":"vr0123456789a","netns":"/run/netns/netns-1",
                "ifname":"eth0","mac":"0a:58:0a:f4:01:02","addrs":["10.244.1.2"],"ingress":["vrouter.pending"],
                "egress":["vrouter.pending"]}"#,
        )
        .unwrap();
        let r = Request::EndpointAdd { endpoint: e.clone() };
        let line = serde_json::to_string(&Envelope { version: VERSION, request: r.clone() }).unwrap();
        assert_eq!(parse_request(&line).unwrap(), r);
        let other_policy = EndpointConfig { ingress: vec![], ..e.clone() };
        assert!(e.same_port(&other_policy));
        assert!(!e.same_port(&EndpointConfig { mtu: 1400, ..e.clone() }));
    }

    #[test]
    fn neighbours_flush_takes_an_optional_address() {
        let all = parse_request(r#"{"version":1,"request":{"cmd":"neighbours-flush"}}"#).unwrap();
        assert_eq!(all, Request::NeighboursFlush { ip: None });
        let one = parse_request(r#"{"version":1,"request":{"cmd":"neighbours-flush","ip":"192.168.1.1"}}"#).unwrap();
        assert_eq!(one, Request::NeighboursFlush { ip: Some("192.168.1.1".parse().unwrap()) });
    }
}

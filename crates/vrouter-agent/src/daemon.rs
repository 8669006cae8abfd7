//! The agent's side of the daemon's control socket: read the running config, and make the
//! parts the agent owns (`pod_blocks`, `peers`, `endpoints`, `policies`) match a
//! [`NodeState`] in one apply that is refused if the config changed since it was read (the
//! CNI plugin adds pods on its own; a blind write could remove one it just added).
//!
//! The daemon does the rest: it changes only what differs, creates new pods before removing
//! what they replace, and keeps forwarding with the previous config when an apply fails.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use vrouter_api::{reply as r, EndpointConfig, PeerConfig, Request};
use vrouter_cluster::desired::NodeState;
use vrouter_types::acl::Rule;
use vrouter_types::Ipv4Prefix;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The socket does not answer (the daemon is down or restarting).
    #[error("{0}")]
    Unreachable(String),
    /// The config changed between our read and our apply: read again.
    #[error("the node's config changed since it was read (generation {0})")]
    Changed(u64),
    /// The daemon refused the change (its message says why).
    #[error("the daemon refused the change: {0}")]
    Refused(String),
    #[error("unexpected reply from the daemon: {0}")]
    Malformed(String),
}

/// The node's running config as the daemon reported it.
#[derive(Clone, Debug)]
pub struct Running {
    pub table: toml::Table,
    pub generation: u64,
}

impl Running {
    pub fn node_name(&self) -> Option<&str> {
        self.table.get("node")?.get("name")?.as_str()
    }
    /// The node's address and subnet (`[node] ip`, `subnet`).
    pub fn node_address(&self) -> Option<(Ipv4Addr, Ipv4Prefix)> {
        let node = self.table.get("node")?;
        Some((node.get("ip")?.as_str()?.parse().ok()?, node.get("subnet")?.as_str()?.parse().ok()?))
    }
    /// The endpoints it runs.
    pub fn endpoints(&self) -> Vec<EndpointConfig> {
        part(&self.table, "endpoints").unwrap_or_default()
    }
    /// Whether the parts the agent owns already match `state`.
    pub fn matches(&self, state: &NodeState) -> bool {
        let t = &self.table;
        let mut peers: Vec<PeerConfig> = part(t, "peers").unwrap_or_default();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut endpoints: Vec<EndpointConfig> = part(t, "endpoints").unwrap_or_default();
        endpoints.sort_by(|a, b| a.name.cmp(&b.name));
        let policies: BTreeMap<String, Vec<Rule>> = part(t, "policies").unwrap_or_default();
        let blocks: Vec<Ipv4Prefix> = part(t, "pod_blocks").unwrap_or_default();
        peers == state.peers && endpoints == state.endpoints && policies == state.policies && blocks == state.pod_blocks
    }
}

fn part<T: DeserializeOwned>(t: &toml::Table, key: &str) -> Option<T> {
    t.get(key).and_then(|v| v.clone().try_into().ok())
}

/// `table` with the agent's parts replaced by `state` (everything else untouched).
pub fn merged(table: &toml::Table, state: &NodeState) -> Result<toml::Table, String> {
    let mut t = table.clone();
    let mut set = |key: &str, v: Result<toml::Value, toml::ser::Error>| -> Result<(), String> {
        t.insert(key.to_string(), v.map_err(|e| format!("{key}: {e}"))?);
        Ok(())
    };
    set("pod_blocks", toml::Value::try_from(&state.pod_blocks))?;
    set("peers", toml::Value::try_from(&state.peers))?;
    set("endpoints", toml::Value::try_from(&state.endpoints))?;
    set("policies", toml::Value::try_from(&state.policies))?;
    Ok(t)
}

/// A client of one daemon's control socket.
#[derive(Clone, Debug)]
pub struct Daemon {
    socket: PathBuf,
    timeout: Duration,
}

impl Daemon {
    pub fn new(socket: &Path) -> Daemon {
        Daemon { socket: socket.to_path_buf(), timeout: Duration::from_secs(30) }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, DaemonError> {
        use vrouter_api::ReplyError;
        use vrouterctl::CallError;
        vrouterctl::request(&self.socket, req, self.timeout).map_err(|e| match e {
            CallError::Unreachable(m) => DaemonError::Unreachable(m),
            CallError::Daemon(ReplyError::Refused(m)) => DaemonError::Refused(m),
            CallError::Daemon(e) => DaemonError::Malformed(e.to_string()),
        })
    }

    pub fn read(&self) -> Result<Running, DaemonError> {
        let show: r::ConfigShow = self.call(Request::ConfigShow)?;
        let table = show.config.parse::<toml::Table>().map_err(|e| DaemonError::Malformed(format!("config: {e}")))?;
        Ok(Running { table, generation: show.generation })
    }

    /// Applies `state` over `running`, if the daemon's config is still that generation.
    pub fn apply(&self, running: &Running, state: &NodeState) -> Result<vrouter_api::ChangeReport, DaemonError> {
        let table = merged(&running.table, state).map_err(DaemonError::Malformed)?;
        let config = toml::to_string(&table).map_err(|e| DaemonError::Malformed(e.to_string()))?;
        let req = Request::Apply {
            config,
            dry_run: false,
            file: Some("<vrouter-agent>".into()),
            if_generation: Some(running.generation),
        };
        match self.call(req) {
            Err(DaemonError::Refused(m)) if m.contains(vrouter_api::GENERATION_CHANGED) => {
                Err(DaemonError::Changed(running.generation))
            }
            other => other,
        }
    }
}

impl crate::Target for Daemon {
    fn describe(&self) -> String {
        self.socket.display().to_string()
    }
    fn read(&self) -> Result<Running, DaemonError> {
        Daemon::read(self)
    }
    fn apply(&self, running: &Running, state: &NodeState) -> Result<vrouter_api::ChangeReport, DaemonError> {
        Daemon::apply(self, running, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vrouter_types::MacAddr;

    const NODE: &str =
        "[node]\nname = \"n1\"\nip = \"192.168.1.1\"\nsubnet = \"192.168.1.0/24\"\n\n[workers]\ncores = [0]\n";

    fn state() -> NodeState {
        let mut s = NodeState { pod_blocks: vec!["10.244.0.0/26".parse().unwrap()], ..NodeState::default() };
        s.peers.push(PeerConfig {
            name: "n2".into(),
            ip: "192.168.1.2".parse().unwrap(),
            pod_blocks: vec!["10.244.0.64/26".parse().unwrap()],
            ipip_mode: Some(vrouter_types::IpipMode::Never),
        });
        s.endpoints.push(EndpointConfig {
            name: "default/a".into(),
            tap: "vra".into(),
            netns: Some("/run/netns/x".into()),
            ifname: "eth0".into(),
            mac: MacAddr([2, 0, 0, 0, 0, 1]),
            addrs: vec!["10.244.0.5".parse().unwrap()],
            mtu: 1480,
            ingress: vec!["vrouter.pending".into()],
            egress: vec![],
        });
        s.policies.insert("vrouter.pending".into(), vec![]);
        s
    }

    #[test]
    fn the_merged_config_keeps_the_operators_parts_and_matches_the_state() {
        let running = Running { table: NODE.parse().unwrap(), generation: 3 };
        assert!(!running.matches(&state()));
        let t = merged(&running.table, &state()).unwrap();
        assert_eq!(t["workers"]["cores"].as_array().unwrap().len(), 1);
        let after = Running { table: t, generation: 4 };
        assert!(after.matches(&state()), "{:#?}", after.table);
        assert_eq!(after.node_name(), Some("n1"));
        assert_eq!(after.endpoints().len(), 1);
        // Serialised and read back (what the daemon receives), it still matches.
        let text = toml::to_string(&after.table).unwrap();
        let back = Running { table: text.parse().unwrap(), generation: 4 };
        assert!(back.matches(&state()));
        // A change in any owned part is seen.
        let mut s = state();
        s.endpoints[0].ingress.clear();
        assert!(!back.matches(&s));
    }
}

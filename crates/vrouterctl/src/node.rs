//! `vrouterctl node status`: the node's BGP sessions as its BIRD sees them (read on BIRD's
//! control socket), laid out like `calicoctl node status`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use vrouter_bgp::{BirdStatus, Birdc, BirdcError, PeerStatus, TcpMd5Counters};

use super::table;

/// `--json`: BIRD's status and the sessions, each with why it is not up.
#[derive(Serialize)]
struct NodeStatus<'a> {
    socket: &'a Path,
    bird: BirdStatus,
    peers: Vec<Peer>,
}

#[derive(Serialize)]
struct Peer {
    #[serde(flatten)]
    status: PeerStatus,
    /// Why it is not established (absent when it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    diagnosis: Option<String>,
}

pub(crate) fn status(socket: &Path, json: bool) -> Result<bool, String> {
    let birdc = Birdc::new(socket).with_timeout(Duration::from_secs(10));
    let bird = birdc.status().map_err(explain)?;
    let peers = birdc.peers().map_err(explain)?;
    // The kernel's counters of this namespace (BIRD's, when run where BIRD runs): a password
    // mismatch shows there, not in BIRD.
    let md5 = TcpMd5Counters::read(Path::new("/proc/net/netstat")).ok();
    let peers: Vec<Peer> =
        peers.into_iter().map(|p| Peer { diagnosis: p.diagnosis(md5.as_ref()), status: p }).collect();
    if json {
        let v = NodeStatus { socket, bird, peers };
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        print!("{}", render(socket, &bird, &peers));
    }
    Ok(true)
}

fn explain(e: BirdcError) -> String {
    match e {
        BirdcError::NotRunning { .. } | BirdcError::Refused { .. } => {
            format!("{e}; give BIRD's control socket with --bird-socket or BIRD_SOCKET")
        }
        e => e.to_string(),
    }
}

fn render(socket: &Path, bird: &BirdStatus, peers: &[Peer]) -> String {
    let mut out = format!(
        "BIRD {} at {}: {}{}\n",
        bird.version,
        socket.display(),
        bird.message,
        bird.router_id.map_or(String::new(), |id| format!(", router ID {id}"))
    );
    if bird.graceful_restart_recovery {
        out.push_str(
            "graceful restart recovery in progress: the kernel table is kept as it was until the sessions are back\n",
        );
    }
    out.push_str("\nIPv4 BGP status\n");
    if peers.is_empty() {
        out.push_str("No IPv4 peers found.\n");
        return out;
    }
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|Peer { status: p, .. }| {
            vec![
                p.neighbor_ip.map_or_else(|| "-".into(), |ip| ip.to_string()),
                p.peer.clone().unwrap_or_else(|| p.name.clone()),
                p.peer_type().to_string(),
                p.state.clone(),
                p.since.clone(),
                p.uptime_secs.map_or_else(|| "-".into(), uptime),
                p.bgp_state.clone(),
                p.routes.imported.to_string(),
                p.routes.filtered.to_string(),
                p.routes.exported.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["PEER ADDRESS", "NAME", "PEER TYPE", "STATE", "SINCE", "UPTIME", "INFO", "IMPORTED", "REFUSED", "EXPORTED"],
        &rows,
    ));
    let down: Vec<String> = peers
        .iter()
        .filter_map(|p| {
            let why = p.diagnosis.as_ref()?;
            let ip = p.status.neighbor_ip.map_or_else(|| "-".into(), |ip| ip.to_string());
            Some(format!("  {ip} ({}): {why}\n", p.status.name))
        })
        .collect();
    if !down.is_empty() {
        out.push_str("\nNot established:\n");
        out.extend(down);
    }
    out
}

/// `3d4h`, `2h05m`, `4m10s`, `12s`.
fn uptime(s: u64) -> String {
    let (d, h, m) = (s / 86400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{:02}s", s % 60),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(12), "12s");
        assert_eq!(uptime(250), "4m10s");
        assert_eq!(uptime(7500), "2h05m");
        assert_eq!(uptime(4 * 86400 + 3 * 3600 + 59), "4d3h");
    }
}

//! BIRD's view of its sessions, read from `show protocols all` and `show status` replies, and
//! what the node shows of it: `vrouterctl node status` and the Prometheus metrics.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{PeerRole, Reply};

/// Routes of one session, as BIRD counts them in `Routes:` of its ipv4 channel.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteCounts {
    /// Learned and accepted by the import filter.
    pub imported: u64,
    /// Learned and refused by the import filter (outside the pools): kept, not used.
    pub filtered: u64,
    /// Sent to the peer.
    pub exported: u64,
    /// Imported and the best route for their prefix.
    pub preferred: u64,
}

/// One BGP session as BIRD sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// BIRD's protocol name (the role's prefix and the peer's name, see
    /// [`crate::protocol_name`]).
    pub name: String,
    /// The role, from the protocol name; `None` for a session this crate did not render.
    pub role: Option<PeerRole>,
    pub description: Option<String>,
    /// The peer's name, from a description this crate rendered (`ROLE: NAME`).
    pub peer: Option<String>,
    /// Whether the session has a TCP MD5 password, from a description this crate rendered;
    /// `None` for another description.
    pub tcp_md5: Option<bool>,
    pub neighbor_ip: Option<Ipv4Addr>,
    pub neighbor_as: Option<u32>,
    pub local_as: Option<u32>,
    /// The peer's router ID, once the session has been up.
    pub neighbor_id: Option<Ipv4Addr>,
    /// BIRD's protocol state: `up`, `start` (trying), `stop`, `down` (disabled), `flush`.
    pub state: String,
    /// The BGP state: `Established`, `Idle`, `Connect`, `Active`, `OpenSent`, `OpenConfirm`,
    /// `Passive`, `Close` or `Down`.
    pub bgp_state: String,
    /// When the protocol last changed state, as BIRD prints it.
    pub since: String,
    /// The same in seconds since the epoch, when BIRD prints it with a date and UTC offset (the
    /// rendered `timeformat protocol "%F %T %z"`) or as a number.
    pub since_unix: Option<i64>,
    /// How long the session has been established.
    pub uptime_secs: Option<u64>,
    /// BIRD's Info column: the BGP state and the last error.
    pub info: String,
    pub routes: RouteCounts,
    /// Why the session last went down or failed, as BIRD says it.
    pub last_error: Option<String>,
}

impl PeerStatus {
    pub fn established(&self) -> bool {
        self.bgp_state == "Established"
    }

    /// What the session is for, as `calicoctl node status` says it ("node-to-node mesh"...).
    pub fn peer_type(&self) -> &str {
        match (self.role, &self.description) {
            (Some(r), _) => r.describe(),
            (None, Some(d)) => d.as_str(),
            (None, None) => "BGP peer",
        }
    }

    /// Why a session that is not established is not, in words an operator can act on; `md5`
    /// are the TCP MD5 drop counters of the namespace BIRD runs in ([`TcpMd5Counters::read`]):
    /// a password mismatch shows only there (the kernel drops the segments, BIRD sees a peer
    /// that does not answer).
    pub fn diagnosis(&self, md5: Option<&TcpMd5Counters>) -> Option<String> {
        if self.established() {
            return None;
        }
        if self.state == "down" && self.last_error.is_none() {
            return Some("disabled".into());
        }
        if let Some(e) = &self.last_error {
            let hint = if e.contains("Connection refused") {
                Some("nothing listens on port 179 at the peer (BIRD not running there?)")
            } else if e.contains("No route to host") || e.contains("Network is unreachable") {
                Some("the peer's address does not answer (ARP) or has no route from this node")
            } else if e.contains("BFD session down") {
                Some("BFD lost the peer")
            } else {
                None
            };
            if let Some(h) = hint {
                return Some(format!("{e}: {h}"));
            }
        }
        let waiting = matches!(self.bgp_state.as_str(), "Connect" | "Active" | "Idle" | "Passive");
        let mut why: Vec<String> = self.last_error.iter().cloned().collect();
        let md5 = md5.copied().unwrap_or_default();
        let (f, nf, u) = (md5.failure, md5.not_found, md5.unexpected);
        let md5_hint = match self.tcp_md5 {
            Some(true) if f + nf > 0 => Some(format!(
                "this session has a TCP MD5 password and this node's kernel dropped {f} segments signed with another one and {nf} unsigned: the peer's password differs, or it has none"
            )),
            Some(false) if u > 0 => Some(format!(
                "this node's kernel dropped {u} segments signed with a TCP MD5 password: the peer has a password for this session, this node none"
            )),
            None if f + nf + u > 0 => Some(format!(
                "this node's kernel dropped TCP segments for their MD5 signature (wrong: {f}, missing: {nf}, unexpected: {u}): check the passwords"
            )),
            _ => None,
        };
        match md5_hint {
            Some(h) if waiting => why.push(h),
            _ if waiting && why.is_empty() => why.push(
                "no BGP connection yet: the peer is unreachable, does not have this node as a peer, or the passwords differ"
                    .into(),
            ),
            _ => {}
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// The peer's name and whether the session has a password, from a description rendered by
/// this crate: `ROLE: NAME[, TCP MD5]`.
fn parse_description(role: Option<PeerRole>, d: &str) -> (Option<String>, Option<bool>) {
    let Some(name) = role.and_then(|r| d.strip_prefix(r.describe())).and_then(|n| n.strip_prefix(": ")) else {
        return (None, None);
    };
    match name.strip_suffix(crate::MD5_MARK) {
        Some(n) => (Some(n.to_string()), Some(true)),
        None => (Some(name.to_string()), Some(false)),
    }
}

/// `show status`: which BIRD, and since when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BirdStatus {
    /// `2.0.12`.
    pub version: String,
    pub router_id: Option<Ipv4Addr>,
    pub server_time: Option<String>,
    pub last_reboot: Option<String>,
    pub last_reconfiguration: Option<String>,
    /// The last line: `Daemon is up and running`, `Shutdown in progress`, ...
    pub message: String,
    /// Graceful restart recovery (after a start with -R) is still running.
    pub graceful_restart_recovery: bool,
}

/// Parses a `show status` reply.
pub fn parse_status(reply: &Reply) -> Option<BirdStatus> {
    let mut s = BirdStatus::default();
    for l in &reply.lines {
        let t = l.text.trim();
        match l.code {
            1000 => s.version = t.strip_prefix("BIRD ").unwrap_or(t).to_string(),
            24 => s.graceful_restart_recovery |= t.contains("recovery"),
            _ => {}
        }
        if let Some(id) = t.strip_prefix("Router ID is ") {
            s.router_id = id.parse().ok();
        } else if let Some(x) = t.strip_prefix("Current server time is ") {
            s.server_time = Some(x.to_string());
        } else if let Some(x) = t.strip_prefix("Last reboot on ") {
            s.last_reboot = Some(x.to_string());
        } else if let Some(x) = t.strip_prefix("Last reconfiguration on ") {
            s.last_reconfiguration = Some(x.to_string());
        }
    }
    s.message = reply.lines.last()?.text.trim().to_string();
    (!s.version.is_empty()).then_some(s)
}

/// The BGP sessions of a `show protocols all` reply; `now` (seconds since the epoch) gives the
/// uptimes.
pub fn parse_protocols(reply: &Reply, now: i64) -> Vec<PeerStatus> {
    let mut out = Vec::new();
    let mut current: Option<PeerStatus> = None;
    let mut in_bgp = false;
    let mut routes_seen = false;
    for l in &reply.lines {
        match l.code {
            1002 => {
                out.extend(current.take());
                let row = parse_row(&l.text);
                in_bgp = row.as_ref().is_some_and(|r| r.proto == "BGP");
                routes_seen = false;
                current = row.filter(|_| in_bgp).map(|r| PeerStatus {
                    role: PeerRole::from_protocol_name(r.name),
                    name: r.name.to_string(),
                    description: None,
                    peer: None,
                    tcp_md5: None,
                    neighbor_ip: None,
                    neighbor_as: None,
                    local_as: None,
                    neighbor_id: None,
                    state: r.state.to_string(),
                    bgp_state: r.info.split_whitespace().next().unwrap_or("").to_string(),
                    since: r.since.to_string(),
                    since_unix: parse_time(r.since),
                    uptime_secs: None,
                    info: r.info.trim_end().to_string(),
                    routes: RouteCounts::default(),
                    last_error: None,
                });
            }
            1006 if in_bgp => {
                let Some(p) = current.as_mut() else { continue };
                let Some((key, value)) = l.text.split_once(':') else { continue };
                let value = value.trim();
                match key.trim() {
                    "Description" => {
                        (p.peer, p.tcp_md5) = parse_description(p.role, value);
                        p.description = Some(value.to_string());
                    }
                    "BGP state" => p.bgp_state = value.to_string(),
                    "Neighbor address" => p.neighbor_ip = value.split('%').next().and_then(|a| a.parse().ok()),
                    "Neighbor AS" => p.neighbor_as = value.parse().ok(),
                    "Local AS" => p.local_as = value.parse().ok(),
                    "Neighbor ID" => p.neighbor_id = value.parse().ok(),
                    "Last error" => p.last_error = Some(value.to_string()).filter(|e| !e.is_empty()),
                    // One ipv4 channel: the first Routes line is it.
                    "Routes" if !routes_seen => {
                        routes_seen = true;
                        p.routes = parse_routes(value);
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out.extend(current);
    for p in &mut out {
        if p.established() {
            p.uptime_secs = p.since_unix.map(|s| now.saturating_sub(s).max(0) as u64);
        }
    }
    out
}

struct Row<'a> {
    name: &'a str,
    proto: &'a str,
    state: &'a str,
    since: &'a str,
    info: &'a str,
}

/// `name proto table state since... info...`: the since column is one to three words (a time,
/// a date and time, with a UTC offset); the info column starts with a letter.
fn parse_row(text: &str) -> Option<Row<'_>> {
    let words = words(text);
    if words.len() < 4 {
        return None;
    }
    let is_time_part = |w: &str| {
        let mut c = w.chars();
        match c.next() {
            Some(d) if d.is_ascii_digit() => true,
            Some('+' | '-') => c.next().is_some_and(|d| d.is_ascii_digit()),
            _ => false,
        }
    };
    let since_words: Vec<&(usize, &str)> = words[4..].iter().take_while(|(_, w)| is_time_part(w)).collect();
    let since = match (since_words.first(), since_words.last()) {
        (Some((start, _)), Some((end, last))) => &text[*start..end + last.len()],
        _ => "",
    };
    let info_start = words.get(4 + since_words.len()).map_or(text.len(), |(i, _)| *i);
    Some(Row { name: words[0].1, proto: words[1].1, state: words[3].1, since, info: &text[info_start..] })
}

/// The words of `text` with their byte offsets.
fn words(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

/// `1 imported, 0 filtered, 1 exported, 1 preferred`.
fn parse_routes(value: &str) -> RouteCounts {
    let mut r = RouteCounts::default();
    for part in value.split(',') {
        let mut w = part.split_whitespace();
        let (Some(n), Some(kind)) = (w.next().and_then(|n| n.parse().ok()), w.next()) else { continue };
        match kind {
            "imported" => r.imported = n,
            "filtered" => r.filtered = n,
            "exported" => r.exported = n,
            "preferred" => r.preferred = n,
            _ => {}
        }
    }
    r
}

/// `YYYY-MM-DD hh:mm:ss[.frac] +hhmm` or a number of seconds since the epoch.
fn parse_time(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let mut parts = s.split_whitespace();
    let (date, time, zone) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let time = time.split('.').next()?;
    let t: Vec<i64> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (&[y, mo, da], &[h, mi, se]) = (d.as_slice(), t.as_slice()) else { return None };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let (sign, z) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    if z.len() != 4 || !z.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let offset = sign * (z[..2].parse::<i64>().ok()? * 3600 + z[2..].parse::<i64>().ok()? * 60);
    Some(days_from_civil(y, mo, da) * 86400 + h * 3600 + mi * 60 + se - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The kernel's TCP MD5 drop counters of the current network namespace (`TcpExt` of
/// `/proc/net/netstat`): a segment whose signature is wrong, missing or unexpected is dropped
/// silently, and all BIRD sees is a peer that does not answer.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpMd5Counters {
    /// `TCPMD5Failure`: signed with another password.
    pub failure: u64,
    /// `TCPMD5NotFound`: unsigned, where a password is set.
    pub not_found: u64,
    /// `TCPMD5Unexpected`: signed, where none is set.
    pub unexpected: u64,
}

impl TcpMd5Counters {
    /// Reads them from `/proc/net/netstat` (or another file of that format).
    pub fn read(path: &Path) -> std::io::Result<TcpMd5Counters> {
        Ok(TcpMd5Counters::parse(&std::fs::read_to_string(path)?))
    }

    /// Reads them from the text of `/proc/net/netstat`: `TcpExt:` lines, names then values.
    pub fn parse(text: &str) -> TcpMd5Counters {
        let mut lines = text.lines().filter_map(|l| l.strip_prefix("TcpExt:"));
        let mut c = TcpMd5Counters::default();
        if let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
                let v = v.parse().unwrap_or(0);
                match n {
                    "TCPMD5Failure" => c.failure = v,
                    "TCPMD5NotFound" => c.not_found = v,
                    "TCPMD5Unexpected" => c.unexpected = v,
                    _ => {}
                }
            }
        }
        c
    }

    pub fn total(&self) -> u64 {
        self.failure + self.not_found + self.unexpected
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The sessions as Prometheus exposition text (with `# HELP` and `# TYPE`); `None` when BIRD
/// could not be asked (then only `vrouter_bgp_bird_up 0`).
///
/// ```text
/// vrouter_bgp_bird_up 1
/// vrouter_bgp_peer_up{peer="mesh_node2",ip="192.168.1.20",type="node-to-node mesh"} 1
/// vrouter_bgp_peer_uptime_seconds{peer="mesh_node2",ip="192.168.1.20",type="node-to-node mesh"} 3600
/// vrouter_bgp_peer_routes{peer="mesh_node2",ip="192.168.1.20",type="node-to-node mesh",kind="imported"} 1
/// ```
pub fn prometheus_text(peers: Option<&[PeerStatus]>) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP vrouter_bgp_bird_up Whether BIRD answered on its control socket.");
    let _ = writeln!(o, "# TYPE vrouter_bgp_bird_up gauge");
    let _ = writeln!(o, "vrouter_bgp_bird_up {}", u8::from(peers.is_some()));
    let Some(peers) = peers else { return o };
    let labels = |p: &PeerStatus| {
        format!(
            "peer=\"{}\",ip=\"{}\",type=\"{}\"",
            label(&p.name),
            p.neighbor_ip.map_or(String::new(), |ip| ip.to_string()),
            label(p.peer_type())
        )
    };
    let _ = writeln!(o, "# HELP vrouter_bgp_peer_up Whether the BGP session is established.");
    let _ = writeln!(o, "# TYPE vrouter_bgp_peer_up gauge");
    for p in peers {
        let _ = writeln!(o, "vrouter_bgp_peer_up{{{}}} {}", labels(p), u8::from(p.established()));
    }
    let _ =
        writeln!(o, "# HELP vrouter_bgp_peer_uptime_seconds How long the BGP session has been established (0: not).");
    let _ = writeln!(o, "# TYPE vrouter_bgp_peer_uptime_seconds gauge");
    for p in peers {
        let _ = writeln!(o, "vrouter_bgp_peer_uptime_seconds{{{}}} {}", labels(p), p.uptime_secs.unwrap_or(0));
    }
    let _ = writeln!(
        o,
        "# HELP vrouter_bgp_peer_routes Routes of the session: imported (accepted), filtered (refused: outside the pools), exported (sent), preferred (best for their prefix)."
    );
    let _ = writeln!(o, "# TYPE vrouter_bgp_peer_routes gauge");
    for p in peers {
        let r = p.routes;
        for (kind, n) in
            [("imported", r.imported), ("filtered", r.filtered), ("exported", r.exported), ("preferred", r.preferred)]
        {
            let _ = writeln!(o, "vrouter_bgp_peer_routes{{{},kind=\"{kind}\"}} {n}", labels(p));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply recorded from BIRD 2.0.12 (greeting first, as the socket sends it).
    fn recorded(text: &str) -> Reply {
        let (greeting, rest) = text.split_once('\n').unwrap();
        assert_eq!(greeting, "0001 BIRD 2.0.12 ready.");
        Reply::parse(rest).unwrap()
    }

    /// A route reflector (node1, 10.0.0.1) with: a client up that sends 1 pool route and 2
    /// outside the pools; a mesh peer refusing connections; one unreachable; one disabled; an
    /// eBGP top-of-rack unreachable.
    const RR: &str = include_str!("testdata/proto_all_rr.txt");
    /// Its client (node2), with the reflector up.
    const CLIENT: &str = include_str!("testdata/proto_all_client.txt");
    /// The reflector's client session after the client changed its password.
    const MD5: &str = include_str!("testdata/proto_md5.txt");
    /// 2026-12-02 14:09:05 +0000, when the sessions came up.
    const UP_AT: i64 = 1_796_220_545;

    fn find<'a>(peers: &'a [PeerStatus], name: &str) -> &'a PeerStatus {
        peers.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no {name} in {peers:#?}"))
    }

    #[test]
    fn show_protocols_all_gives_the_bgp_sessions_only() {
        let peers = parse_protocols(&recorded(RR), UP_AT + 3600);
        let names: Vec<&str> = peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["mesh_node3", "mesh_node4", "mesh_node5", "peer_tor", "rrclient_node2"]);
    }

    #[test]
    fn an_established_client_session_has_its_counts_neighbor_and_uptime() {
        let peers = parse_protocols(&recorded(RR), UP_AT + 3600);
        let c = find(&peers, "rrclient_node2");
        assert_eq!(c.role, Some(PeerRole::ReflectorClient));
        assert_eq!(c.peer_type(), "route reflector client");
        assert_eq!(c.description.as_deref(), Some("route reflector client: node2, TCP MD5"));
        assert_eq!((c.peer.as_deref(), c.tcp_md5), (Some("node2"), Some(true)));
        assert_eq!(c.neighbor_ip, Some("10.0.0.2".parse().unwrap()));
        assert_eq!((c.neighbor_as, c.local_as), (Some(64512), Some(64512)));
        assert_eq!(c.neighbor_id, Some("10.0.0.2".parse().unwrap()));
        assert_eq!((c.state.as_str(), c.bgp_state.as_str()), ("up", "Established"));
        assert!(c.established());
        assert_eq!(c.since, "2026-12-02 14:09:05 +0000");
        assert_eq!(c.since_unix, Some(UP_AT));
        assert_eq!(c.uptime_secs, Some(3600));
        assert_eq!(c.routes, RouteCounts { imported: 1, filtered: 2, exported: 1, preferred: 1 });
        assert_eq!(c.last_error, None);
        assert_eq!(c.diagnosis(None), None);
    }

    #[test]
    fn sessions_that_are_not_up_say_why() {
        let peers = parse_protocols(&recorded(RR), UP_AT);
        let refused = find(&peers, "mesh_node3");
        assert_eq!((refused.state.as_str(), refused.bgp_state.as_str()), ("start", "Active"));
        assert_eq!(refused.last_error.as_deref(), Some("Socket: Connection refused"));
        assert_eq!(refused.info, "Active        Socket: Connection refused");
        assert_eq!(refused.uptime_secs, None, "no uptime unless established");
        assert!(refused.diagnosis(None).unwrap().contains("nothing listens on port 179"));
        let tor = find(&peers, "peer_tor");
        assert_eq!((tor.role, tor.neighbor_as), (Some(PeerRole::External), Some(65001)));
        assert_eq!(tor.last_error.as_deref(), Some("Socket: No route to host"));
        let off = find(&peers, "mesh_node5");
        assert_eq!((off.state.as_str(), off.bgp_state.as_str()), ("down", "Down"));
        assert_eq!(off.diagnosis(None).as_deref(), Some("disabled"));
    }

    #[test]
    fn a_silent_peer_with_md5_drops_is_told_to_check_the_password() {
        let peers = parse_protocols(&recorded(MD5), UP_AT);
        let p = find(&peers, "rrclient_node2");
        assert_eq!(p.bgp_state, "Connect");
        assert_eq!(p.tcp_md5, Some(true));
        let md5 = TcpMd5Counters { failure: 27, not_found: 0, unexpected: 0 };
        let why = p.diagnosis(Some(&md5)).unwrap();
        assert!(
            why.contains("dropped 27 segments signed with another one") && why.contains("password differs"),
            "{why}"
        );
        let no_drops = p.diagnosis(Some(&TcpMd5Counters::default())).unwrap();
        assert!(!no_drops.contains("dropped"), "{no_drops}");
        // Drops of signed segments say nothing about a session that has a password.
        let unexpected = TcpMd5Counters { unexpected: 5, ..Default::default() };
        assert!(!p.diagnosis(Some(&unexpected)).unwrap().contains("dropped"));
        // A session without one: only those do.
        let mut none = p.clone();
        none.tcp_md5 = Some(false);
        assert!(none
            .diagnosis(Some(&unexpected))
            .unwrap()
            .contains("the peer has a password for this session, this node none"));
        assert!(!none.diagnosis(Some(&md5)).unwrap().contains("dropped"));
        // A definite socket error is not blamed on passwords.
        let peers = parse_protocols(&recorded(RR), UP_AT);
        let refused =
            find(&peers, "mesh_node3").diagnosis(Some(&TcpMd5Counters { unexpected: 5, failure: 5, not_found: 5 }));
        assert!(!refused.unwrap().contains("MD5"));
    }

    #[test]
    fn the_client_side_sees_a_route_reflector() {
        let peers = parse_protocols(&recorded(CLIENT), UP_AT);
        assert_eq!(peers.len(), 1);
        let rr = &peers[0];
        assert_eq!(
            (rr.name.as_str(), rr.role, rr.peer_type()),
            ("rr_node1", Some(PeerRole::Reflector), "route reflector")
        );
        assert_eq!(rr.routes, RouteCounts { imported: 1, filtered: 0, exported: 3, preferred: 1 });
    }

    #[test]
    fn show_status_gives_version_router_id_and_recovery() {
        let s = parse_status(&recorded(include_str!("testdata/status.txt"))).unwrap();
        assert_eq!(s.version, "2.0.12");
        assert_eq!(s.router_id, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(s.last_reconfiguration.as_deref(), Some("2026-12-02 14:09:03.782"));
        assert_eq!(s.message, "Daemon is up and running");
        assert!(!s.graceful_restart_recovery);
        let gr = parse_status(&recorded(include_str!("testdata/status_gr.txt"))).unwrap();
        assert!(gr.graceful_restart_recovery);
    }

    #[test]
    fn since_reads_dates_with_offsets_epoch_numbers_and_nothing_else() {
        assert_eq!(parse_time("2026-12-02 14:09:05 +0000"), Some(UP_AT));
        assert_eq!(parse_time("2026-12-02 16:09:05.123 +0200"), Some(UP_AT));
        assert_eq!(parse_time("2026-12-02 08:39:05 -0530"), Some(UP_AT));
        assert_eq!(parse_time("1796220545"), Some(UP_AT));
        assert_eq!(parse_time("1970-01-01 00:00:00 +0000"), Some(0));
        assert_eq!(parse_time("2000-02-29 00:00:00 +0000"), Some(951_782_400));
        // BIRD's default format has no date: no uptime rather than a wrong one.
        assert_eq!(parse_time("13:58:20.123"), None);
        assert_eq!(parse_time("2026-12-02 13:58:20"), None);
        assert_eq!(parse_time("2026-13-02 13:58:20 +0000"), None);
    }

    #[test]
    fn rows_in_birds_default_time_format_parse_too() {
        let r = Reply::parse(
            "2002-Name       Proto      Table      State  Since         Info\n1002-bgp1       BGP        ---        up     13:58:20.582  Established   \n0000 \n",
        )
        .unwrap();
        let p = &parse_protocols(&r, 0)[0];
        assert_eq!((p.since.as_str(), p.since_unix, p.bgp_state.as_str()), ("13:58:20.582", None, "Established"));
        assert_eq!((p.role, p.peer_type()), (None, "BGP peer"));
    }

    #[test]
    fn netstat_md5_counters() {
        let text = "TcpExt: SyncookiesSent TCPMD5NotFound TCPMD5Unexpected TCPMD5Failure\nTcpExt: 0 2 3 27\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(TcpMd5Counters::parse(text), TcpMd5Counters { failure: 27, not_found: 2, unexpected: 3 });
        assert_eq!(TcpMd5Counters::parse("").total(), 0);
    }

    #[test]
    fn prometheus_text_has_one_series_per_peer_and_kind_with_escaped_labels() {
        let peers = parse_protocols(&recorded(RR), UP_AT + 60);
        let t = prometheus_text(Some(&peers));
        assert!(t.contains("vrouter_bgp_bird_up 1\n"), "{t}");
        let labels = r#"peer="rrclient_node2",ip="10.0.0.2",type="route reflector client""#;
        assert!(t.contains(&format!("vrouter_bgp_peer_up{{{labels}}} 1\n")), "{t}");
        assert!(t.contains(&format!("vrouter_bgp_peer_uptime_seconds{{{labels}}} 60\n")), "{t}");
        assert!(t.contains(&format!("vrouter_bgp_peer_routes{{{labels},kind=\"filtered\"}} 2\n")), "{t}");
        assert!(
            t.contains(r#"vrouter_bgp_peer_up{peer="mesh_node3",ip="10.0.1.3",type="node-to-node mesh"} 0"#),
            "{t}"
        );
        // An independent reader of the exposition format takes it whole.
        let lines = t.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        assert_eq!(scrape.samples.len(), 1 + 5 + 5 + 5 * 4);
        let filtered = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "vrouter_bgp_peer_routes"
                    && s.labels.get("peer") == Some("rrclient_node2")
                    && s.labels.get("kind") == Some("filtered")
            })
            .unwrap();
        assert_eq!(filtered.value, prometheus_parse::Value::Gauge(2.0));
        assert_eq!(t.lines().filter(|l| l.starts_with("vrouter_bgp_peer_routes{")).count(), 5 * 4);
        let mut odd = peers[0].clone();
        odd.role = None;
        odd.description = Some("a \"quoted\"\\ name".into());
        let t = prometheus_text(Some(&[odd]));
        assert!(t.contains(r#"type="a \"quoted\"\\ name""#), "{t}");
        assert_eq!(prometheus_text(None), "# HELP vrouter_bgp_bird_up Whether BIRD answered on its control socket.\n# TYPE vrouter_bgp_bird_up gauge\nvrouter_bgp_bird_up 0\n");
    }
}

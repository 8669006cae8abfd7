//! `vrouter lab demo`: a lab up, ping between every ordered pair of pods, one TCP transfer per
//! unordered pair with iperf3, a table, and the lab down again.
//!
//! The pods' interfaces keep the offloads they come with (a veth's as Linux sets them, a TAP's
//! as the daemon sets them up): nothing in the lab turns them off, so the TCP column shows
//! what a pod gets. Only the router's veth ends have tx checksumming off (see the lab's `build`).
//! `vrouter bench e2e` measures the same pods against the kernel lab, offloads on and off.

use std::fmt;
use std::time::{Duration, Instant};

use super::topo::{path_mode, PathMode};
use super::{sys, up, LabError, LabHandle, LabOptions};

/// iperf3 port of the demo's servers (allowed by the guarded pod's policy).
const IPERF_PORT: u16 = 5201;
/// A 1 s transfer that has not finished by then is stalled; this bounds the demo's time.
const TRANSFER_LIMIT: Duration = Duration::from_secs(5);

/// Ping from one pod to another.
#[derive(Debug, Clone)]
pub struct PingResult {
    pub src: String,
    pub dst: String,
    pub mode: PathMode,
    pub sent: u32,
    pub received: u32,
    pub rtt_avg_ms: Option<f64>,
    /// Why nothing could be measured, if so.
    pub error: Option<String>,
}

impl PingResult {
    pub fn loss_pct(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * f64::from(self.sent - self.received.min(self.sent)) / f64::from(self.sent)
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none() && self.received > 0
    }
}

/// A TCP transfer from `client` to `server` (iperf3, 1 s).
#[derive(Debug, Clone)]
pub struct TcpResult {
    pub client: String,
    pub server: String,
    pub mode: PathMode,
    pub mbit_s: Option<f64>,
    pub error: Option<String>,
}

impl TcpResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.mbit_s.is_some_and(|m| m > 0.0)
    }
}

/// What the demo measured; `Display` prints the table.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub prefix: String,
    pub pings: Vec<PingResult>,
    pub tcp: Vec<TcpResult>,
    pub elapsed: Duration,
}

impl DemoReport {
    /// Every ping got an answer and every transfer moved data. The CLI exits non-zero otherwise.
    pub fn ok(&self) -> bool {
        self.pings.iter().all(PingResult::ok) && self.tcp.iter().all(TcpResult::ok)
    }

    pub fn failures(&self) -> usize {
        self.pings.iter().filter(|p| !p.ok()).count() + self.tcp.iter().filter(|t| !t.ok()).count()
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lab {}: {} pings, {} TCP transfers in {:.1} s",
            self.prefix,
            self.pings.len(),
            self.tcp.len(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "{:<10} {:<6} {:>7} {:>12} {:>11}  result", "pair", "mode", "loss %", "rtt avg ms", "TCP Mbit/s")?;
        for p in &self.pings {
            // The TCP figure goes on the row of the direction it was measured in.
            let tcp = self.tcp.iter().find(|t| t.client == p.src && t.server == p.dst);
            let rtt = p.rtt_avg_ms.map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into());
            let mbit = match tcp {
                Some(t) => t.mbit_s.map(|m| format!("{m:.1}")).unwrap_or_else(|| "FAIL".into()),
                None => String::new(),
            };
            let mut problems: Vec<String> = vec![];
            if let Some(e) = &p.error {
                problems.push(format!("ping: {e}"));
            } else if !p.ok() {
                problems.push("ping: no reply".into());
            }
            if let Some(t) = tcp {
                if let Some(e) = &t.error {
                    problems.push(format!("tcp: {e}"));
                }
            }
            let result = if problems.is_empty() { "ok".to_string() } else { format!("FAIL {}", problems.join("; ")) };
            let pair = format!("{}->{}", p.src, p.dst);
            writeln!(f, "{pair:<10} {:<6} {:>7.1} {rtt:>12} {mbit:>11}  {result}", p.mode.to_string(), p.loss_pct())?;
        }
        let verdict =
            if self.ok() { "all pairs ok".to_string() } else { format!("{} check(s) FAILED", self.failures()) };
        write!(f, "{verdict}")
    }
}

/// Parses ping's summary: `3 packets transmitted, 3 received, ...` and `rtt min/avg/max/mdev =
/// 0.05/0.06/0.07/0.01 ms`.
pub(crate) fn parse_ping(out: &str) -> (u32, u32, Option<f64>) {
    let mut sent = 0;
    let mut received = 0;
    let mut avg = None;
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u32> =
                line.split(',').filter_map(|part| part.split_whitespace().next()?.parse().ok()).collect();
            if nums.len() >= 2 {
                sent = nums[0];
                received = nums[1];
            }
        } else if let Some(rest) =
            line.strip_prefix("rtt min/avg/max/mdev = ").or_else(|| line.strip_prefix("round-trip min/avg/max = "))
        {
            avg = rest.split('/').nth(1).and_then(|x| x.parse().ok());
        }
    }
    (sent, received, avg)
}

/// iperf3 `-J` output: the receiver's rate in Mbit/s, or iperf3's own error message.
pub(crate) fn parse_iperf(json: &str) -> Result<f64, String> {
    parse_iperf_run(json).map(|(bps, _)| bps / 1e6)
}

/// iperf3 `-J` output: the receiver's rate in bit/s and the sender's retransmits, or iperf3's
/// own error message.
pub(crate) fn parse_iperf_run(json: &str) -> Result<(f64, u64), String> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("iperf3 output is not JSON ({e})"))?;
    if let Some(e) = v["error"].as_str() {
        return Err(e.to_string());
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().ok_or("iperf3 JSON has no end.sum_received")?;
    Ok((bps, v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0)))
}

fn pings(lab: &LabHandle) -> Result<Vec<PingResult>, LabError> {
    let pods = lab.pods();
    let mut jobs = vec![];
    // All pairs at once: 30 pings of 3 x 0.2 s would take 15 s one after the other.
    for src in pods {
        for dst in pods.iter().filter(|d| d.name != src.name) {
            let (ns, ip) = (src.ns.clone(), dst.ip.to_string());
            let h = std::thread::spawn(move || {
                sys::exec_in(&ns, &["ping", "-c", "3", "-i", "0.2", "-W", "1", &ip], Duration::from_secs(10))
            });
            jobs.push((src, dst, h));
        }
    }
    let mut out = vec![];
    for (src, dst, h) in jobs {
        let o = h.join().expect("ping thread");
        sys::check_cancelled()?;
        let text = String::from_utf8_lossy(&o.stdout);
        let (sent, received, rtt) = parse_ping(&text);
        let error = if sent == 0 { Some(String::from_utf8_lossy(&o.stderr).trim().to_string()) } else { None };
        out.push(PingResult {
            src: src.name.clone(),
            dst: dst.name.clone(),
            mode: path_mode(src.node, dst.node),
            sent,
            received,
            rtt_avg_ms: rtt,
            error,
        });
    }
    Ok(out)
}

fn transfers(lab: &LabHandle) -> Result<Vec<TcpResult>, LabError> {
    let pods = lab.pods();
    let port = IPERF_PORT.to_string();
    let mut servers = vec![];
    for p in pods {
        servers.push(lab.spawn(&p.ns, &["iperf3", "-s", "-p", &port], None)?);
    }
    let result = (|| {
        // Every server listening before the first client connects (a loaded machine starts
        // thirty processes slowly); one that never does shows as that pair's error.
        for p in pods {
            lab.wait_listening(&p.ns, false, IPERF_PORT, Duration::from_secs(10));
        }
        let mut out = vec![];
        for (i, client) in pods.iter().enumerate() {
            for server in &pods[i + 1..] {
                let ip = server.ip.to_string();
                let args = ["iperf3", "-c", &ip, "-p", &port, "-t", "1", "-J", "--connect-timeout", "2000"];
                let o = sys::exec_in(&client.ns, &args, TRANSFER_LIMIT);
                sys::check_cancelled()?;
                let parsed = if o.stdout.is_empty() {
                    // Killed at the limit (a stalled connection prints nothing until the end).
                    Err(format!("no result within {} s (stalled)", TRANSFER_LIMIT.as_secs()))
                } else {
                    parse_iperf(&String::from_utf8_lossy(&o.stdout))
                };
                out.push(TcpResult {
                    client: client.name.clone(),
                    server: server.name.clone(),
                    mode: path_mode(client.node, server.node),
                    mbit_s: parsed.as_ref().ok().copied(),
                    error: parsed.err(),
                });
            }
        }
        Ok(out)
    })();
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    result
}

/// Brings a lab up, measures every pair, tears it down. A pair that fails is in the report
/// (see [`DemoReport::ok`]), not an error; errors are failures of the lab itself.
pub fn demo(opts: &LabOptions) -> Result<DemoReport, LabError> {
    sys::need_tool("iperf3")?;
    let start = Instant::now();
    let lab = up(opts)?;
    let mut report = measure(&lab)?;
    lab.down()?;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// The demo's measurements on a lab that is up: every ordered pair pings (in parallel), every
/// unordered pair moves TCP for 1 s (one pair at a time, lower-numbered pod as the client).
pub fn measure(lab: &LabHandle) -> Result<DemoReport, LabError> {
    sys::need_tool("iperf3")?;
    let start = Instant::now();
    let pings = pings(lab)?;
    let tcp = transfers(lab)?;
    Ok(DemoReport { prefix: lab.prefix().to_string(), pings, tcp, elapsed: start.elapsed() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ping_summary() {
        let out = "PING 10.244.2.2 (10.244.2.2) 56(84) bytes of data.\n\n--- 10.244.2.2 ping statistics ---\n3 packets transmitted, 2 received, 33.3333% packet loss, time 402ms\nrtt min/avg/max/mdev = 0.051/0.072/0.093/0.021 ms\n";
        assert_eq!(parse_ping(out), (3, 2, Some(0.072)));
        let lost = "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2003ms\n";
        assert_eq!(parse_ping(lost), (3, 0, None));
    }

    #[test]
    fn parse_iperf_json() {
        assert_eq!(parse_iperf(r#"{"end":{"sum_received":{"bits_per_second":2.5e9}}}"#), Ok(2500.0));
        assert_eq!(
            parse_iperf(r#"{"error":"unable to connect to server: Connection refused"}"#).unwrap_err(),
            "unable to connect to server: Connection refused"
        );
        assert!(parse_iperf("garbage").is_err());
    }
}

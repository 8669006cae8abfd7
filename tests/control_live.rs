//! Live control and observability of a running daemon, in network namespaces (root only): the
//! control socket and `vrouterctl` (bad requests are refused with a reason and never disturb
//! forwarding), packet trace naming the policy rule that dropped a packet, capture read back by
//! tcpdump, kernel routes followed over netlink, and thousands of changes under traffic without
//! losing a packet. Each test has its own namespaces and daemon (`common::Topo`).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};

use common::{is_root, text, wait_until, Topo, DEFAULT_ROUTE};

fn skip() -> bool {
    common::unless_allowed_to_skip((!is_root()).then(|| "needs root (network namespaces, TAP, AF_XDP)".to_string()))
        .inspect(|why| eprintln!("skipped: {why}"))
        .is_some()
}

/// One connection to the control socket, speaking the JSON-lines protocol directly.
struct Conn {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Conn {
    fn open(t: &Topo) -> Conn {
        let w = UnixStream::connect(t.sock()).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { r: BufReader::new(w.try_clone().unwrap()), w }
    }

    fn reply(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    /// Sends one line as is; the daemon's reply.
    fn line(&mut self, l: &str) -> Value {
        self.w.write_all(format!("{l}\n").as_bytes()).unwrap();
        self.reply()
    }

    /// Sends a version-1 request; its result, or the daemon's error.
    fn call(&mut self, request: Value) -> Result<Value, String> {
        let r = self.line(&json!({"version": 1, "request": request}).to_string());
        match r["ok"].as_bool() {
            Some(true) => Ok(r["result"].clone()),
            _ => Err(r["error"].as_str().unwrap_or("no error message").to_string()),
        }
    }
}

/// The route to `prefix` in a `routes` reply.
fn route<'a>(v: &'a Value, prefix: &str) -> Option<&'a Value> {
    v["routes"].as_array().unwrap().iter().find(|r| r["prefix"] == prefix)
}

/// Drop counters by reason, summed over the workers.
fn drops(t: &Topo) -> BTreeMap<String, u64> {
    let v = t.ctl_json(&["counters"]);
    v["total"]["drops"].as_object().unwrap().iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap())).collect()
}

fn nonzero(d: &BTreeMap<String, u64>) -> BTreeMap<&str, u64> {
    d.iter().filter(|(_, n)| **n > 0).map(|(k, n)| (k.as_str(), *n)).collect()
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(out: &str) -> (u64, u64) {
    let l = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no summary: {out}"));
    let n: Vec<u64> = l.split(", ").take(2).map(|p| p.split_whitespace().next().unwrap().parse().unwrap()).collect();
    (n[0], n[1])
}

/// Runs `ctl` on a thread while `traffic` is sent again and again (each call should be short),
/// so that a trace or capture started by `ctl` sees packets however long it takes to start.
fn during<T: Send>(ctl: impl FnOnce() -> T + Send, mut traffic: impl FnMut()) -> T {
    std::thread::scope(|s| {
        let h = s.spawn(ctl);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !h.is_finished() && Instant::now() < deadline {
            traffic();
        }
        h.join().unwrap()
    })
}

#[test]
fn socket_and_cli_refuse_bad_requests_and_forwarding_goes_on() {
    if skip() {
        return;
    }
    let t = Topo::routed("vcs", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let _d = t.start();
    let pod = t.pod_addr("pod");

    assert_eq!(t.ctl_json(&["status"])["node"], "t1");
    let o = t.ctl(&["status"]);
    assert!(
        o.status.success() && text(&o).lines().any(|l| l.starts_with("node") && l.ends_with(" t1")),
        "{}",
        text(&o)
    );
    let r = t.ctl_json(&["routes"]);
    let p = route(&r, &format!("{pod}/32")).unwrap_or_else(|| panic!("no pod route: {r}"));
    assert_eq!((p["source"].as_str(), p["nexthop"].as_str()), (Some("node"), Some("local port 2")), "{p}");
    let d = route(&r, "0.0.0.0/0").unwrap_or_else(|| panic!("no default route: {r}"));
    assert_eq!((d["source"].as_str(), d["nexthop"].as_str()), (Some("config"), Some("via 192.168.1.1")), "{d}");
    let mode = std::fs::metadata(t.sock()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode {mode:o}");

    // Malformed requests: each refused with what was wrong; the connection keeps serving.
    let mut c = Conn::open(&t);
    for (line, want) in [
        ("status please", "not JSON"),
        (r#"{"version":1,"request":{"cmd":"reboot"}}"#, "unknown variant `reboot`"),
        (r#"{"version":2,"request":{"cmd":"status"}}"#, "protocol version 2 is not supported"),
        (r#"{"version":1,"request":{"cmd":"routes","sauce":1}}"#, "unknown field `sauce`"),
        (r#"{"version":1,"request":{"cmd":"status"},"urgent":true}"#, "unknown field `urgent`"),
    ] {
        let r = c.line(line);
        assert_eq!(r["ok"], false, "{line} -> {r}");
        let e = r["error"].as_str().unwrap_or_default();
        assert!(e.contains(want), "{line} -> {e:?}, wanted {want:?}");
    }
    assert_eq!(c.call(json!({"cmd": "status"})).unwrap()["node"], "t1");

    // A line over 4 MiB: an error, then the daemon hangs up.
    let mut big = Conn::open(&t);
    let mut w = big.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&vec![b'x'; (4 << 20) + 64]); // EPIPE once the daemon hangs up
    });
    let r = big.reply();
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("larger than 4194304 bytes"), "{r}");
    let mut rest = Vec::new();
    match big.r.read_to_end(&mut rest) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("connection still open after an oversized request: {other:?} {rest:?}"),
    }
    writer.join().unwrap();

    // Clients that say nothing, or half a request, do not hold up another.
    let _silent = UnixStream::connect(t.sock()).unwrap();
    let mut half = UnixStream::connect(t.sock()).unwrap();
    half.write_all(br#"{"version":1,"req"#).unwrap();
    let start = Instant::now();
    let o = t.ctl(&["status"]);
    assert!(o.status.success(), "{}", text(&o));
    // Held up, it would wait out the idle clients' 10 s request timeout; 5 s leaves a busy
    // machine room to start vrouterctl.
    assert!(start.elapsed() < Duration::from_secs(5), "status took {:?} with idle clients", start.elapsed());

    // Another user: stopped by the file mode, then (socket opened up) by the peer check.
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_vrouter"), "ctl", "-s"])
            .arg(t.sock())
            .arg("status")
            .output()
            .unwrap()
    };
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("permission denied on") && !text(&o).contains("running?"), "{}", text(&o));
    std::fs::set_permissions(t.sock(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("uid 65534 is not allowed"), "{}", text(&o));
    assert!(t.log().contains("control client refused"), "{}", t.log());

    // Bad arguments never reach the daemon (exit 2); refusals by the daemon exit 1.
    for (args, code, want) in [
        (&["route", "add", "10.0.0.0/33", "via", "x"][..], 2, "10.0.0.0/33"),
        (&["route", "add", "10.1.0.0/16", "dev", "eth0"], 2, "expected 'via GATEWAY', got 'dev'"),
        (&["route", "add", "10.1.0.0/16", "via", "192.168.1.1", "via"], 2, "give 'via GATEWAY'"),
        (&["route", "add", "10.1.0.0/16", "via", "10.9.9.9"], 1, "10.9.9.9 is not on the node subnet"),
        (&["route", "del", "10.99.0.0/16"], 1, "no CLI route to 10.99.0.0/16"),
        (&["endpoint", "del", "ghost"], 1, "no endpoint 'ghost'"),
        (&["policy", "set", "p", "-f", "/nonexistent/rules.toml"], 2, "/nonexistent/rules.toml"),
    ] {
        let o = t.ctl(args);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {}", text(&o));
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{args:?}: {}", text(&o));
    }

    // None of it touched forwarding.
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router: {}", t.log());
    assert!(t.ping("peer", &pod, "3"), "router -> pod: {}", t.log());
    let r = t.ctl_json(&["routes"]);
    assert!(route(&r, "10.1.0.0/16").is_none(), "a refused route was installed: {r}");
}

#[test]
fn trace_names_the_policy_rule_that_dropped_a_packet() {
    if skip() {
        return;
    }
    let t = Topo::routed("vct", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let _d = t.start();
    let pod = t.pod_addr("pod");
    assert!(t.ping("peer", &pod, "1"), "before the policy: {}", t.log());

    // The policy, defined through the CLI, then selected by the pod in an applied config
    // (which defines it too: `apply` makes the node match the file whole).
    let deny = r#"[{ action = "deny", protocol = "icmp" }]"#;
    let rules = t.dir.join("rules.toml");
    std::fs::write(&rules, format!("rules = {deny}\n")).unwrap();
    assert!(t.ctl(&["policy", "set", "no-icmp", "-f", rules.to_str().unwrap()]).status.success());
    assert_eq!(t.ctl_json(&["policies"])["policies"]["no-icmp"][0]["action"], "deny");
    let cfg = t.config(&format!("{DEFAULT_ROUTE}[policies]\nno-icmp = {deny}\n"));
    let file = t.dir.join("apply.toml");
    std::fs::write(&file, t.edit(&cfg, |c| c.endpoints[0].ingress = vec!["no-icmp".into()])).unwrap();
    // First what it would do: only the pod's policy list changes; nothing is applied yet.
    let o = t.ctl(&["apply", "-f", file.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "endpoints policy changed:\n  pod\n");
    assert!(t.ping("peer", &pod, "1"), "a dry run changed something: {}", t.log());
    let o = t.ctl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(t.ctl_json(&["endpoints"])["endpoints"][0]["ingress"][0], "no-icmp");
    assert!(!t.ping("peer", &pod, "1"), "ICMP to the pod passed its deny policy");

    // Two packets received on the uplink, of which the first echo request is looked at (an
    // ARP exchange refreshing a neighbour may come first).
    let trace = || {
        let v = during(
            || t.ctl_json(&["trace", "--count", "2", "--port", "up0", "--timeout", "15"]),
            || {
                t.ping("peer", &pod, "1");
            },
        );
        let echo = v["packets"].as_array().unwrap().iter().find(|p| p["received"].as_str().unwrap().contains("(echo)"));
        echo.cloned().unwrap_or_else(|| panic!("no echo request traced: {v:#}"))
    };
    let p = &trace();
    let steps: Vec<&str> = p["steps"].as_array().unwrap().iter().flat_map(|s| s.as_str()).collect();
    assert!(p["received"].as_str().unwrap().contains(&format!("192.168.1.1 > {pod}")), "{p}");
    assert_eq!((p["verdict"].as_str(), p["drop_reason"].as_str()), (Some("drop"), Some("policy/deny")), "{p}");
    assert!(steps.contains(&"policy: ingress of 'pod': deny by policy 'no-icmp' rule 0"), "{steps:#?}");
    assert!(steps.iter().any(|s| s.starts_with(&format!("lookup: {pod} -> next hop #"))), "{steps:#?}");
    assert_eq!(p["route"], json!({"prefix": format!("{pod}/32"), "source": "node", "nexthop": "local port 2"}));
    assert!(drops(&t)["policy/deny"] >= 2);

    // The rules changed live: the same packet is allowed and sent to the pod.
    std::fs::write(&rules, "rules = [{ action = \"allow\", protocol = \"icmp\" }]\n").unwrap();
    assert!(t.ctl(&["policy", "set", "no-icmp", "-f", rules.to_str().unwrap()]).status.success());
    let p = &trace();
    let steps: Vec<&str> = p["steps"].as_array().unwrap().iter().flat_map(|s| s.as_str()).collect();
    assert_eq!((p["verdict"].as_str(), p["out_port"].as_u64()), (Some("tx"), Some(2)), "{p}");
    assert!(steps.contains(&"policy: ingress of 'pod': allow by policy 'no-icmp' rule 0"), "{steps:#?}");
    assert!(steps.contains(&"output: port 2 (tappod)"), "{steps:#?}");
    assert!(p["sent"].as_str().unwrap().contains(&format!("192.168.1.1 > {pod} ttl 63")), "{p}");
    // The table form says the same.
    let o = t.ctl(&["trace", "--count", "1", "--port", "up0", "--timeout", "0"]);
    assert!(o.status.success() && text(&o).contains("0 of 1 packets traced"), "{}", text(&o));
}

#[test]
fn capture_is_read_back_by_tcpdump() {
    if skip() {
        return;
    }
    let t = Topo::routed("vcc", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let _d = t.start();
    let pod = t.pod_addr("pod");
    assert!(t.ping("peer", &pod, "1"), "{}", t.log()); // ARP resolved both ways
    let capture = |name: &str, args: &[&str]| {
        let f = t.dir.join(name);
        let w = f.to_str().unwrap();
        let o = during(
            || t.ctl(&[&["capture", "-w", w, "--timeout", "15"], args].concat()),
            || assert!(t.ping("peer", &pod, "1"), "{}", t.log()),
        );
        assert!(o.status.success(), "{}", text(&o));
        let n = args[args.iter().position(|a| *a == "--count").unwrap() + 1];
        assert!(text(&o).contains(&format!("wrote {n} frames")), "{}", text(&o));
        let o = Command::new("tcpdump").args(["-nn", "-v", "-r", w]).output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    // Both points of the uplink: the requests in, the replies out.
    let both = capture("both.pcap", &["--port", "up0", "--count", "6"]);
    // (An ARP exchange refreshing a neighbour may take a frame or two of each capture.)
    let requests = both.matches(&format!("192.168.1.1 > {pod}: ICMP echo request")).count();
    let replies = both.matches(&format!("{pod} > 192.168.1.1: ICMP echo reply")).count();
    assert!(requests >= 2 && replies >= 2, "{both}");
    // As received: the requests only, before the TTL decrement.
    let rx = capture("rx.pcap", &["--port", "up0", "--count", "3", "--point", "rx"]);
    let requests = rx.matches(&format!("192.168.1.1 > {pod}: ICMP echo request")).count();
    assert!(requests >= 2 && rx.matches("ttl 64,").count() == requests, "{rx}");
    assert!(!rx.contains("echo reply") && !rx.contains("ttl 63,"), "{rx}");
    // As sent to the pod: after it.
    let tx = capture("tx.pcap", &["--port", "tappod", "--count", "3", "--point", "tx"]);
    let requests = tx.matches(&format!("192.168.1.1 > {pod}: ICMP echo request")).count();
    assert!(requests >= 2 && tx.matches("ttl 63,").count() == requests, "{tx}");
}

#[test]
fn kernel_routes_are_followed_over_netlink() {
    if skip() {
        return;
    }
    let t = Topo::routed("vck", &["pod"]);
    // Beyond the peer router: 203.0.113.1 and 198.18.2.1; a second gateway address on it.
    t.exec_ok("peer", &["ip", "addr", "add", "203.0.113.1/32", "dev", "lo"]);
    t.exec_ok("peer", &["ip", "addr", "add", "198.18.2.1/32", "dev", "lo"]);
    t.exec_ok("peer", &["ip", "addr", "add", "192.168.1.2/24", "dev", "gw0"]);
    t.write_config(&t.config("[kernel_routes]\ntable = 100\n")); // and no default route
    let _d = t.start();
    let kernel = || t.ctl_json(&["routes", "--source", "kernel"]);
    let listed = |prefix: &str| route(&kernel(), prefix).cloned();
    let ip_route = |args: &[&str]| t.exec_ok("node", &[&["ip", "route", args[0], "table", "100"], &args[1..]].concat());
    let secs = Duration::from_secs(5);
    assert!(!t.ping("pod", "203.0.113.1", "1"), "reachable without a route");

    ip_route(&["add", "203.0.113.0/24", "via", "192.168.1.1"]);
    wait_until("203.0.113.0/24 imported", secs, || listed("203.0.113.0/24").is_some());
    let r = listed("203.0.113.0/24").unwrap();
    assert_eq!((r["source"].as_str(), r["nexthop"].as_str()), (Some("kernel"), Some("via 192.168.1.1")), "{r}");
    assert!(t.ping("pod", "203.0.113.1", "2"), "through the imported route: {}", t.log());

    ip_route(&["del", "203.0.113.0/24"]);
    wait_until("203.0.113.0/24 withdrawn", secs, || listed("203.0.113.0/24").is_none());
    let no_route = drops(&t)["fib/no-route"];
    let o = t.exec("pod", &["ping", "-c", "1", "-W", "1", "203.0.113.1"]);
    assert!(!o.status.success(), "still reachable: {}", text(&o));
    assert!(text(&o).contains("Destination Net Unreachable"), "no ICMP unreachable from vrouter: {}", text(&o));
    assert_eq!(drops(&t)["fib/no-route"], no_route + 1);

    ip_route(&["add", "blackhole", "198.18.1.0/24"]);
    ip_route(&["add", "198.18.2.0/24", "nexthop", "via", "192.168.1.1", "nexthop", "via", "192.168.1.2"]);
    // A device vrouter does not drive (a veth: the dummy module may be missing).
    t.exec_ok("node", &["ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1"]);
    t.exec_ok("node", &["ip", "link", "set", "other0", "up"]);
    ip_route(&["add", "198.18.3.0/24", "dev", "other0"]);
    wait_until("the three routes imported or refused", secs, || {
        let v = kernel();
        route(&v, "198.18.1.0/24").is_some()
            && route(&v, "198.18.2.0/24").is_some()
            && v["not_installed"].as_array().is_some_and(|a| !a.is_empty())
    });
    let v = kernel();
    assert_eq!(route(&v, "198.18.1.0/24").unwrap()["nexthop"], "blackhole", "{v}");
    assert_eq!(route(&v, "198.18.2.0/24").unwrap()["nexthop"], "ecmp [via 192.168.1.1, via 192.168.1.2]", "{v}");
    assert!(route(&v, "198.18.3.0/24").is_none(), "{v}");
    let n = &v["not_installed"][0];
    assert_eq!((n["prefix"].as_str(), n["source"].as_str()), (Some("198.18.3.0/24"), Some("kernel")), "{v}");
    assert!(n["error"].as_str().unwrap().contains("device other0 is not one vrouter forwards to"), "{v}");
    assert!(t.ping("pod", "198.18.2.1", "2"), "through the multipath route: {}", t.log());
    let blackholed = drops(&t)["fib/blackhole"];
    assert!(!t.ping("pod", "198.18.1.1", "1"));
    assert_eq!(drops(&t)["fib/blackhole"], blackholed + 1);
}

/// Counts of what the churn changed.
#[derive(Default, Debug)]
struct Churned {
    route_changes: usize,
    policy_changes: usize,
    endpoint_cycles: usize,
    applies: usize,
    reloads: usize,
}

/// One round of changes that no steady flow depends on: 100 CLI routes added and deleted
/// (ECMP among them), 10 policy changes, pod C added and removed; every fourth round an
/// `apply -f` of a config with other peers and routes, or a SIGHUP reload of the file.
fn churn_round(t: &Topo, d: &common::Proc, c: &mut Conn, round: usize, n: &mut Churned) -> Result<(), String> {
    let prefix = |i: usize| format!("10.{}.{i}.0/24", 100 + round % 100);
    for i in 0..50 {
        let nh = match i % 5 {
            0 => json!({"ecmp": [{"gateway": "192.168.1.1"}, {"gateway": format!("192.168.1.{}", 2 + i % 3)}]}),
            1 => json!("blackhole"),
            2 => json!("unreachable"),
            _ => json!({"gateway": format!("192.168.1.{}", 1 + i % 4)}),
        };
        c.call(json!({"cmd": "route-add", "prefix": prefix(i), "nexthop": nh}))?;
    }
    for i in 0..50 {
        c.call(json!({"cmd": "route-del", "prefix": prefix(i)}))?;
    }
    n.route_changes += 100;
    for k in 0..5 {
        let rules = json!([{"action": "deny", "protocol": "tcp", "dst_ports": [format!("{}", 1000 + k)]}]);
        c.call(json!({"cmd": "policy-set", "name": format!("unused-{k}"), "rules": rules}))?;
    }
    for k in 0..5 {
        c.call(json!({"cmd": "policy-del", "name": format!("unused-{k}")}))?;
    }
    n.policy_changes += 10;
    let pod_c = json!({"name": "c", "tap": "tapc", "mac": "0a:58:0a:f4:01:09", "addrs": ["10.244.1.9"]});
    c.call(json!({"cmd": "endpoint-add", "endpoint": pod_c}))?;
    c.call(json!({"cmd": "endpoint-del", "name": "c"}))?;
    n.endpoint_cycles += 1;
    match round % 4 {
        1 => {
            let f = t.dir.join(format!("apply{}.toml", round % 8 / 4));
            let o = t.ctl(&["apply", "-f", f.to_str().unwrap()]);
            if !o.status.success() {
                return Err(format!("apply -f {}: {}", f.display(), text(&o)));
            }
            n.applies += 1;
        }
        3 => {
            let before = t.log().matches("config reloaded (SIGHUP)").count();
            d.signal(Signal::SIGHUP);
            let deadline = Instant::now() + Duration::from_secs(10);
            while t.log().matches("config reloaded (SIGHUP)").count() == before {
                if Instant::now() > deadline {
                    return Err("SIGHUP: no reload within 10 s".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            n.reloads += 1;
        }
        _ => {}
    }
    Ok(())
}

#[test]
fn thousands_of_changes_under_traffic_lose_no_packet() {
    if skip() {
        return;
    }
    let t = Topo::routed("vce", &["a", "b"]);
    t.exec_ok("peer", &["ip", "addr", "add", "198.51.100.1/32", "dev", "lo"]);
    // No static route through the peer router: the CLI routes via 192.168.1.1 are then the only
    // users of that next hop, whose id is freed and taken again as they come and go.
    t.write_config(&t.config(""));
    // What `apply -f` alternates between: other peers, other static routes.
    let peer = |name: &str, ip: &str, block: &str| {
        format!("[[peers]]\nname = \"{name}\"\nip = \"{ip}\"\npod_blocks = [\"{block}\"]\n")
    };
    let alt = [
        peer("n2", "192.168.1.20", "10.244.2.0/26") + "[[routes]]\nprefix = \"172.16.0.0/16\"\nvia = \"192.168.1.4\"\n",
        peer("n3", "192.168.1.30", "10.244.3.0/26") + "[[routes]]\nprefix = \"172.17.0.0/16\"\nblackhole = true\n",
    ];
    for (i, extra) in alt.iter().enumerate() {
        std::fs::write(t.dir.join(format!("apply{i}.toml")), t.config(extra)).unwrap();
    }
    let d = t.start();
    let b = t.pod_addr("b");
    for dst in [b.as_str(), "192.168.1.1"] {
        assert!(t.ping("a", dst, "1"), "a -> {dst}: {}", t.log());
    }

    // 1. Steady flows whose paths never change, while everything else does.
    let flow = |dst: &str| t.spawn("a", &["ping", "-q", "-i", "0.004", "-c", "2000", "-W", "5", dst]);
    let (mut to_b, mut to_peer) = (flow(&b), flow("192.168.1.1"));
    let mut c = Conn::open(&t);
    let mut n = Churned::default();
    let start = Instant::now();
    let mut result = Ok(());
    let (mut round, mut under_traffic) = (0, 0);
    while to_b.running() || to_peer.running() || round < 21 {
        result = churn_round(&t, &d, &mut c, round, &mut n);
        if result.is_err() {
            break;
        }
        round += 1;
        if to_b.running() && to_peer.running() {
            under_traffic = round;
        }
    }
    let churn_time = start.elapsed();
    let (ob, op) = (to_b.finish(), to_peer.finish());
    let ((tx_b, rx_b), (tx_p, rx_p)) = (ping_counts(&text(&ob)), ping_counts(&text(&op)));
    let dr = drops(&t);
    let status = t.ctl_json(&["status"]);
    eprintln!(
        "churn: {n:?} in {churn_time:.1?} ({round} rounds, {under_traffic} under both flows); a -> b {rx_b}/{tx_b}, a -> peer {rx_p}/{tx_p} received; \
         grace timeouts {}; drops {:?}",
        status["grace_timeouts"],
        nonzero(&dr)
    );
    if let Err(e) = result {
        panic!("change refused in round {round}: {e}\n{}", t.log());
    }
    assert!(under_traffic >= 21, "only {under_traffic} rounds of changes ran while both flows did");
    assert_eq!((tx_b, tx_p), (2000, 2000));
    assert_eq!(
        (rx_b, rx_p),
        (tx_b, tx_p),
        "steady flows lost packets while the node changed: drops {:?}",
        nonzero(&dr)
    );
    assert_eq!((dr["fib/bad-next-hop"], dr["tx/full"]), (0, 0), "{:?}", nonzero(&dr));
    assert!(n.route_changes >= 2000 && n.policy_changes >= 100 && n.endpoint_cycles >= 20, "{n:?}");

    // 2. A flow whose route flips between a gateway and a blackhole: each packet is either
    // answered or counted as blackholed, nothing else.
    let o = t.ctl(&["reload"]); // the file's config, whatever the last round left
    assert!(o.status.success(), "{}", text(&o));
    let mut cli = |nh: Value| c.call(json!({"cmd": "route-add", "prefix": "198.51.100.0/24", "nexthop": nh}));
    let via = json!({"gateway": "192.168.1.1"});
    cli(via.clone()).unwrap();
    assert!(t.ping("a", "198.51.100.1", "1"), "{}", t.log());
    let before = drops(&t);
    let start = Instant::now();
    let mut flow = t.spawn("a", &["ping", "-q", "-i", "0.004", "-c", "1000", "-W", "2", "198.51.100.1"]);
    let mut toggles = 0;
    while flow.running() {
        cli(json!("blackhole")).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        cli(via.clone()).unwrap();
        std::thread::sleep(Duration::from_millis(3));
        toggles += 2;
    }
    let (tx, rx) = ping_counts(&text(&flow.finish()));
    let after = drops(&t);
    let blackholed = after["fib/blackhole"] - before["fib/blackhole"];
    let others: BTreeMap<&str, (u64, u64)> = before
        .iter()
        .filter(|(k, v)| k.as_str() != "fib/blackhole" && after[k.as_str()] != **v)
        .map(|(k, v)| (k.as_str(), (*v, after[k.as_str()])))
        .collect();
    eprintln!(
        "flip: {toggles} route changes in {:.1?}; {tx} sent, {rx} answered, {blackholed} blackholed",
        start.elapsed()
    );
    assert!(toggles >= 200, "only {toggles} route changes while the flow ran");
    assert_eq!(tx - rx, blackholed, "lost packets not accounted for by fib/blackhole; other drops: {others:?}");
    assert!(others.is_empty(), "other drop counters rose: {others:?}");
}

/// BIRD as Calico runs it: an iBGP session between the node and a peer node, carried by
/// vrouter itself (the node's BIRD speaks from the host TAP; vrouter punts BGP to it and sends
/// what it answers out of the uplink). The node's BIRD exports what it learns into kernel
/// table 100; vrouter imports that table. The peer announcing, withdrawing and announcing its
/// pod block again is followed all the way into the pod's reachability.
#[test]
fn routes_learned_by_bird_over_bgp_are_imported_and_withdrawn() {
    if skip() {
        return;
    }
    if Command::new("bird").arg("--version").output().is_err() {
        panic!("bird (Debian package bird2) is missing: scripts/dev.sh installs it");
    }
    let t = Topo::routed("vbd", &["pod"]);
    t.exec_ok("peer", &["ip", "addr", "add", "10.244.2.1/32", "dev", "lo"]);
    // The peer's own TCP (BGP) leaves its veth with the checksum left to offload; AF_XDP
    // hands such frames over as they are, so have the peer's kernel compute it.
    t.exec_ok("peer", &["ethtool", "-K", "gw0", "tx", "off"]);
    t.write_config(&t.config("[kernel_routes]\ntable = 100\n")); // and no default route
    let _d = t.start();
    let timers = "connect delay time 1; connect retry time 2; error wait time 1, 2; hold time 6; keepalive time 2;";
    let bird = |n: &str, me: &str, other: &str, extra: &str, channel: &str| {
        let conf = format!(
            "router id {me};\nprotocol device {{ scan time 1; }}\n{extra}\n\
             protocol bgp peer {{ local {me} as 64512; neighbor {other} as 64512; direct; {timers}\n\
               ipv4 {{ {channel} }}; }}\n"
        );
        let path = t.dir.join(format!("bird-{n}.conf"));
        std::fs::write(&path, conf).unwrap();
        let sock = t.dir.join(format!("bird-{n}.ctl"));
        let p = t.spawn(n, &["bird", "-f", "-c", path.to_str().unwrap(), "-s", sock.to_str().unwrap()]);
        (p, sock)
    };
    let (_node_bird, _) = bird(
        "node",
        "192.168.1.10",
        "192.168.1.1",
        "protocol kernel { ipv4 { import none; export all; }; kernel table 100; }",
        "import all; export none; gateway direct;",
    );
    let (_peer_bird, peer_sock) = bird(
        "peer",
        "192.168.1.1",
        "192.168.1.10",
        "protocol static pods { ipv4; route 10.244.2.0/26 unreachable; }",
        "import none; export all; next hop self;",
    );
    let listed = || route(&t.ctl_json(&["routes", "--source", "kernel"]), "10.244.2.0/26").cloned();
    let secs = Duration::from_secs(30);
    wait_until("10.244.2.0/26 learned over BGP and imported", secs, || listed().is_some());
    let r = listed().unwrap();
    assert_eq!((r["source"].as_str(), r["nexthop"].as_str()), (Some("kernel"), Some("via 192.168.1.1")), "{r}");
    assert!(t.ping("pod", "10.244.2.1", "2"), "pod -> the peer's pod block: {}", t.log());

    let birdc = |cmd: &str| {
        let o = Command::new("birdc").args(["-s", peer_sock.to_str().unwrap(), cmd, "pods"]).output().unwrap();
        assert!(o.status.success(), "birdc {cmd}: {}", text(&o));
    };
    birdc("disable");
    wait_until("the withdrawal followed", secs, || listed().is_none());
    let o = t.exec("pod", &["ping", "-c", "1", "-W", "1", "10.244.2.1"]);
    assert!(text(&o).contains("Destination Net Unreachable"), "withdrawn, yet: {}", text(&o));
    birdc("enable");
    wait_until("announced again", secs, || listed().is_some());
    assert!(t.ping("pod", "10.244.2.1", "2"), "after the route came back: {}", t.log());
}

/// `[control] group`: the socket belongs to that group (mode 0660), and a user whose only
/// link to it is a supplementary group is served; without the group, refused.
#[test]
fn members_of_the_control_group_are_served() {
    use std::os::unix::fs::MetadataExt;
    if skip() {
        return;
    }
    let t = Topo::routed("vgr", &[]);
    t.write_config(&t.config("").replace("[control]\n", "[control]\ngroup = \"daemon\"\n"));
    let _d = t.start();
    let meta = std::fs::metadata(t.sock()).unwrap();
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 1, 0o660));
    let as_nobody = |groups: &str| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", groups, env!("CARGO_BIN_EXE_vrouter"), "ctl", "-s"])
            .arg(t.sock())
            .arg("status")
            .output()
            .unwrap()
    };
    let o = as_nobody("--groups=1");
    assert!(o.status.success(), "a member of group daemon (gid 1): {}", text(&o));
    assert!(text(&o).contains("t1"), "{}", text(&o));
    let o = as_nobody("--clear-groups");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("permission denied on") && !text(&o).contains("running?"), "{}", text(&o));
}

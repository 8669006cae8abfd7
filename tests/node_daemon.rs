//! The daemon end to end in network namespaces (root only): one node with an AF_XDP uplink
//! (veth), a pod on a TAP, and a peer router on the far side of the uplink.
//! Checks forwarding both ways, counters, a clean stop that leaves nothing behind, and an
//! immediate restart. Skipped with a message when not root.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().expect("command runs")
}

fn ok(args: &[&str]) {
    let o = sh(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A running daemon; killed on drop if the test fails before stopping it.
struct Daemon(Option<Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Namespaces `<p>-node`, `<p>-peer`, `<p>-pod`, deleted on drop (even on panic).
struct Topo {
    p: String,
    dir: PathBuf,
}

impl Drop for Topo {
    fn drop(&mut self) {
        for n in ["node", "peer", "pod"] {
            let _ = sh(&["ip", "netns", "del", &format!("{}-{n}", self.p)]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Topo {
    /// Namespaces `<tag><pid>-node`, `-peer`, `-pod` (IPv6 off, lo up) and the uplink veth
    /// `up0` (node) <-> `gw0` (peer) with `queues` queues each way, both ends up.
    fn namespaces(tag: &str, queues: u32) -> Topo {
        let p = format!("{tag}{:04x}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("{p}-test"));
        std::fs::create_dir_all(&dir).unwrap();
        let t = Topo { p, dir };
        for n in ["node", "peer", "pod"] {
            ok(&["ip", "netns", "add", &t.ns(n)]);
            ok(&["ip", "netns", "exec", &t.ns(n), "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ok(&["ip", "-n", &t.ns(n), "link", "set", "lo", "up"]);
        }
        let q = queues.to_string();
        let (node, peer) = (t.ns("node"), t.ns("peer"));
        ok(&[
            "ip",
            "link",
            "add",
            "up0",
            "netns",
            &node,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            "gw0",
            "netns",
            &peer,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ]);
        ok(&["ip", "-n", &node, "link", "set", "up0", "up"]);
        ok(&["ip", "-n", &peer, "link", "set", "gw0", "up"]);
        t
    }

    fn new() -> Topo {
        let t = Topo::namespaces("vrd", 1);
        ok(&["ip", "-n", &t.ns("peer"), "addr", "add", "192.168.1.1/24", "dev", "gw0"]);
        ok(&["ip", "-n", &t.ns("peer"), "route", "add", "10.244.1.0/26", "via", "192.168.1.10"]);
        let cfg = format!(
            r#"
[node]
name = "t1"
ip = "192.168.1.10"
subnet = "192.168.1.0/24"
pod_block = "10.244.1.0/26"
gateway = "192.168.1.1"
[uplink]
device = "up0"
[host]
tap = "vrhost"
[[endpoints]]
name = "pod"
tap = "tappod"
netns = "{}"
mac = "0a:58:0a:f4:01:02"
addrs = ["10.244.1.2"]
[[routes]]
prefix = "0.0.0.0/0"
via = "192.168.1.1"
[control]
socket = "{}"
"#,
            t.ns("pod"),
            t.dir.join("ctl.sock").display()
        );
        std::fs::write(t.dir.join("node.toml"), cfg).unwrap();
        t
    }

    fn ns(&self, n: &str) -> String {
        format!("{}-{n}", self.p)
    }

    fn start(&self) -> Daemon {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("node"), env!("CARGO_BIN_EXE_vrouter"), "run", "--config"])
            .arg(self.dir.join("node.toml"))
            .arg("--stats")
            .arg(self.dir.join("stats.json"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon(Some(child));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.dir.join("stats.json").exists() {
            assert!(Instant::now() < deadline, "daemon did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn stats(&self) -> serde_json::Value {
        std::thread::sleep(Duration::from_millis(500)); // one refresh
        serde_json::from_str(&std::fs::read_to_string(self.dir.join("stats.json")).unwrap()).unwrap()
    }

    fn ping(&self, from: &str, to: &str, count: &str) -> bool {
        sh(&["ip", "netns", "exec", &self.ns(from), "ping", "-c", count, "-i", "0.2", "-W", "1", to]).status.success()
    }

    fn stop(&self, mut daemon: Daemon) {
        let child = daemon.0.as_mut().expect("running");
        // SIGTERM to `ip netns exec`, which execs the daemon: same process.
        // SAFETY: kill(2) on a pid we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                daemon.0 = None;
                assert!(st.success(), "daemon exit status {st}: {}", self.log());
                break;
            }
            assert!(Instant::now() < deadline, "daemon did not stop: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn node_forwards_through_af_xdp_and_tap_and_stops_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces, TAP, AF_XDP)");
        return;
    }
    let t = Topo::new();
    let child = t.start();
    assert!(t.ping("pod", "169.254.1.1", "2"), "pod -> gateway: {}", t.log());
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router beyond the uplink: {}", t.log());
    assert!(t.ping("peer", "10.244.1.2", "3"), "router -> pod: {}", t.log());
    assert!(t.ping("peer", "192.168.1.10", "2"), "router -> node IP: {}", t.log());
    let s = t.stats();
    assert!(s["ports"]["up0"]["rx_packets"].as_u64().unwrap() >= 6, "{s}");
    assert!(s["ports"]["tappod"]["tx_packets"].as_u64().unwrap() >= 3, "{s}");
    assert!(s["counters"]["arp_replies_sent"].as_u64().unwrap() >= 1, "{s}");
    // The pod's interface was set up the Calico way.
    let r = sh(&["ip", "-n", &t.ns("pod"), "route"]);
    let routes = String::from_utf8_lossy(&r.stdout);
    assert!(routes.contains("default via 169.254.1.1 dev eth0"), "{routes}");
    t.stop(child);
    // Nothing left behind: no XDP program on the uplink, no TAPs.
    let link =
        String::from_utf8_lossy(&sh(&["ip", "-n", &t.ns("node"), "-d", "link", "show", "up0"]).stdout).to_string();
    assert!(!link.contains("prog/xdp"), "XDP program left attached: {link}");
    let links = String::from_utf8_lossy(&sh(&["ip", "-n", &t.ns("node"), "link"]).stdout).to_string();
    assert!(!links.contains("vrhost"), "host TAP left behind: {links}");
    let pod_links = String::from_utf8_lossy(&sh(&["ip", "-n", &t.ns("pod"), "link"]).stdout).to_string();
    assert!(!pod_links.contains("eth0"), "pod TAP left behind: {pod_links}");
    // A restart right after works.
    std::fs::remove_file(t.dir.join("stats.json")).unwrap();
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "after restart: {}", t.log());
    t.stop(child);
}

#[test]
fn bad_config_is_refused_with_file_and_field() {
    let dir = std::env::temp_dir().join(format!("vrd-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "[node]\nname = \"x\"\nip = \"10.0.0.1\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vrouter")).arg("check-config").arg(&f).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("bad.toml") && e.contains("node.ip") && e.contains("not inside node.subnet"), "{e}");
}

#[test]
fn queue_count_is_checked_before_binding_and_two_queues_get_two_workers() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces, AF_XDP)");
        return;
    }
    let t = Topo::namespaces("vrq", 2);
    let cfg = |queues: u32| {
        format!(
            "[node]\nname = \"q\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n[uplink]\ndevice = \"up0\"\nqueues = {queues}\n[control]\nsocket = \"{}\"\n",
            t.dir.join("ctl.sock").display()
        )
    };
    let run = |queues: u32| {
        std::fs::write(t.dir.join("node.toml"), cfg(queues)).unwrap();
        let _ = std::fs::remove_file(t.dir.join("stats.json"));
    };
    // Four queues on a two-queue device: refused before anything is bound.
    run(4);
    let o = sh(&[
        "ip",
        "netns",
        "exec",
        &t.ns("node"),
        env!("CARGO_BIN_EXE_vrouter"),
        "run",
        "--config",
        t.dir.join("node.toml").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("uplink.queues = 4 but the device has 2 RX queue(s)"), "{e}");
    // Two queues: two sockets, two workers.
    run(2);
    let child = t.start();
    let log = t.log();
    assert!(log.contains("queue=0") && log.contains("queue=1") && log.contains("workers=2"), "{log}");
    t.stop(child);
}

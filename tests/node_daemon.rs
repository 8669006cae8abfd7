//! The daemon end to end in network namespaces (root only): one node with an AF_XDP uplink
//! (veth), a pod on a TAP, and a peer router on the far side of the uplink.
//! Checks forwarding both ways, counters, a clean stop that leaves nothing behind, and an
//! immediate restart. Skipped with a message when not root.

mod common;

use std::process::Command;

use common::{is_root, sh, Topo, DEFAULT_ROUTE};

#[test]
fn node_forwards_through_af_xdp_and_tap_and_stops_cleanly() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces, TAP, AF_XDP)");
        return;
    }
    let t = Topo::routed("vrd", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
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
    let t = Topo::namespaces("vrq", 2, &[]);
    let cfg = |queues: u32| {
        format!(
            "[node]\nname = \"q\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n[uplink]\ndevice = \"up0\"\nqueues = {queues}\n[control]\nsocket = \"{}\"\n",
            t.sock().display()
        )
    };
    // Four queues on a two-queue device: refused before anything is bound.
    t.write_config(&cfg(4));
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
    t.write_config(&cfg(2));
    let child = t.start();
    let log = t.log();
    assert!(log.contains("queue=0") && log.contains("queue=1") && log.contains("workers=2"), "{log}");
    t.stop(child);
}

#[test]
fn apply_replacing_a_pod_into_a_missing_namespace_is_refused_and_the_pod_stays_up() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vra", &["pod"]);
    let good = t.config(DEFAULT_ROUTE);
    t.write_config(&good);
    let child = t.start();
    assert!(t.ping("peer", "10.244.1.2", "2"), "before: {}", t.log());
    // The same pod, now in a namespace that does not exist: a replacement that cannot be made.
    let bad = good.replace(&format!("netns = \"{}\"", t.ns("pod")), "netns = \"vra-no-such-ns\"");
    assert_ne!(bad, good);
    let f = t.dir.join("bad.toml");
    std::fs::write(&f, &bad).unwrap();
    let o = t.ctl(&["apply", "-f", f.to_str().unwrap()]);
    let out = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    // Nothing changed: the pod's interface is there and it is reachable.
    let links = common::text(&sh(&["ip", "-n", &t.ns("pod"), "link", "show", "eth0"]));
    assert!(links.contains("eth0") && links.contains("UP"), "the pod's interface is gone: {links}");
    assert!(out.contains("network namespace 'vra-no-such-ns' does not exist"), "{out}");
    assert!(t.ping("peer", "10.244.1.2", "2"), "after the refused apply: {}", t.log());
    // The same through SIGHUP.
    t.write_config(&bad);
    child.signal(libc::SIGHUP);
    common::wait_until("the reload to be refused", std::time::Duration::from_secs(5), || {
        t.log().contains("refused, still running the previous config")
    });
    assert!(t.ping("peer", "10.244.1.2", "2"), "after the refused reload: {}", t.log());
    // A port-level change that can be made replaces the pod without losing it.
    let mtu = good.replace("addrs = [\"10.244.1.2\"]", "addrs = [\"10.244.1.2\"]\nmtu = 1400");
    std::fs::write(&f, &mtu).unwrap();
    let o = t.ctl(&["apply", "-f", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", common::text(&o));
    let links = common::text(&sh(&["ip", "-n", &t.ns("pod"), "link", "show", "eth0"]));
    assert!(links.contains("mtu 1400"), "{links}");
    assert!(t.ping("peer", "10.244.1.2", "2"), "after the replacement: {}", t.log());
    t.write_config(&good);
    t.stop(child);
}

#[test]
fn check_config_env_lists_what_this_machine_lacks() {
    let dir = std::env::temp_dir().join(format!("vrd-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("node.toml");
    std::fs::write(
        &f,
        "[node]\nname = \"x\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n\
         [uplink]\ndevice = \"vrd-nodev0\"\n[[endpoints]]\nname = \"p\"\ntap = \"tapp\"\nnetns = \"vrd-no-ns\"\n\
         mac = \"0a:00:00:00:00:01\"\naddrs = [\"10.244.1.2\"]\n",
    )
    .unwrap();
    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_vrouter")).args(args).arg(&f).output().unwrap();
    let o = run(&["check-config"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let o = run(&["check-config", "--env"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!o.status.success());
    let e = common::text(&o);
    assert!(e.contains("this machine is not ready"), "{e}");
    assert!(e.contains("uplink.device: no device 'vrd-nodev0'") && e.contains("no namespace 'vrd-no-ns'"), "{e}");
}

#[test]
fn trickling_clients_and_an_abandoned_trace_do_not_lock_the_control_socket() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrl", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let child = t.start();
    // Sixteen clients (every slot) each trickle a byte of a request that never ends.
    let mut trickling: Vec<UnixStream> = (0..16).map(|_| UnixStream::connect(t.sock()).unwrap()).collect();
    for c in &mut trickling {
        c.write_all(b"{").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for c in &mut trickling {
        let _ = c.write_all(b" ");
    }
    let start = Instant::now();
    let o = t.ctl(&["status"]);
    assert!(o.status.success(), "an operator is locked out: {}", common::text(&o));
    assert!(start.elapsed() < Duration::from_secs(2), "status took {:?}", start.elapsed());
    // A trace whose client went away (Ctrl-C) ends; the next one may start at once.
    let mut abandoned = Command::new(env!("CARGO_BIN_EXE_vrouterctl"))
        .arg("-s")
        .arg(t.sock())
        .args(["trace", "--count", "5", "--port", "tappod", "--timeout", "600"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    abandoned.kill().unwrap();
    abandoned.wait().unwrap();
    common::wait_until("the abandoned trace to end", Duration::from_secs(2), || {
        t.ctl(&["trace", "--count", "1", "--timeout", "0.1"]).status.success()
    });
    // And `trace stop` ends one whose client is still there.
    let stopper = {
        let sock = t.sock();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            Command::new(env!("CARGO_BIN_EXE_vrouterctl")).arg("-s").arg(sock).args(["trace", "stop"]).output().unwrap()
        })
    };
    let start = Instant::now();
    let o = Command::new(env!("CARGO_BIN_EXE_vrouterctl"))
        .arg("-s")
        .arg(t.sock())
        .args(["trace", "--count", "5", "--port", "tappod", "--timeout", "600"])
        .output()
        .unwrap();
    assert!(o.status.success() && start.elapsed() < Duration::from_secs(5), "{}", common::text(&o));
    let s = stopper.join().unwrap();
    assert!(String::from_utf8_lossy(&s.stdout).contains("stopped the running trace"), "{}", common::text(&s));
    drop(trickling);
    t.stop(child);
}

//! The daemon end to end in network namespaces (root only): one node with an AF_XDP uplink
//! (veth), a pod on a TAP, and a peer router on the far side of the uplink.
//! Checks forwarding both ways, counters, a clean stop that leaves nothing behind, and an
//! immediate restart. Not root: a failure, unless skipping knowingly (tests/common).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{is_root, sh, Topo, DEFAULT_ROUTE};
use nix::sys::signal::Signal;

#[test]
fn node_forwards_through_af_xdp_and_tap_and_stops_cleanly() {
    if !common::root_or_skip("network namespaces, TAP, AF_XDP") {
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
    if !common::root_or_skip("network namespaces, AF_XDP") {
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
    let o = t.run_refused();
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
fn an_uplink_mtu_above_the_devices_is_refused_and_a_big_one_gets_4k_chunks() {
    if !common::root_or_skip("network namespaces, AF_XDP") {
        return;
    }
    let t = Topo::namespaces("vrmtu", 1, &[]);
    t.write_config(&format!(
        "[node]\nname = \"m\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n[uplink]\ndevice = \"up0\"\nmtu = 3000\n[control]\nsocket = \"{}\"\n",
        t.sock().display()
    ));
    // The device's MTU is 1500: frames of 3,000 would be lost on its wire. Refused, saying so.
    let o = t.run_refused();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("uplink.mtu: 3000 is above up0's MTU 1500") && e.contains("ip link set dev up0 mtu 3000"),
        "{e}"
    );
    // With the device's MTU raised, the UMEM takes 4 KiB chunks for such frames.
    assert!(sh(&["ip", "-n", &t.ns("node"), "link", "set", "up0", "mtu", "3000"]).status.success());
    let child = t.start();
    let log = t.log();
    assert!(log.contains("AF_XDP socket bound") && log.contains("chunk=4096"), "{log}");
    t.stop(child);
}

/// A jumbo uplink (MTU above one 4 KiB chunk): every queue's socket is bound for multi-buffer
/// behind one frags-aware program of vrouter's own (libxdp's is not, and veth refuses such an
/// MTU to it), and the program is gone when the daemon stops.
#[test]
fn a_jumbo_uplink_binds_every_queue_behind_one_frags_aware_program_removed_at_exit() {
    if !common::root_or_skip("network namespaces, AF_XDP") {
        return;
    }
    let t = Topo::namespaces("vrmb", 2, &[]);
    for ns in ["node", "peer"] {
        let dev = if ns == "node" { "up0" } else { "gw0" };
        let o = sh(&["ip", "-n", &t.ns(ns), "link", "set", dev, "mtu", "9000"]);
        assert!(o.status.success(), "{}", common::text(&o));
    }
    t.write_config(&format!(
        "[node]\nname = \"mb\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n[uplink]\ndevice = \"up0\"\nqueues = 2\nmtu = 9000\n[control]\nsocket = \"{}\"\n",
        t.sock().display()
    ));
    let child = t.start();
    let log = t.log();
    for q in 0..2 {
        assert!(log.contains(&format!("queue={q} mode=\"native\"")), "queue {q} not bound natively: {log}");
    }
    assert_eq!(log.matches("multi_buffer=true").count(), 3, "two sockets and the offloads line: {log}");
    let link = common::text(&sh(&["ip", "-d", "-n", &t.ns("node"), "link", "show", "up0"]));
    assert!(
        link.contains("prog/xdp") && link.matches("vrouter_xsk").count() == 1,
        "one program of ours on up0: {link}"
    );
    t.stop(child);
    let link = common::text(&sh(&["ip", "-d", "-n", &t.ns("node"), "link", "show", "up0"]));
    assert!(!link.contains("prog/xdp"), "an XDP program left on up0 after the daemon stopped: {link}");
}

/// The multi-buffer XDP program: one per device and mode however many sockets share it,
/// detached with its last holder; never put over another program, and never removing one
/// that took the hook since.
#[test]
fn the_multi_buffer_program_is_shared_per_device_and_leaves_other_programs_alone() {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use vrouter::port::xdp::{attached_prog, ifindex, AttachMode, XskProgram};
    if !common::root_or_skip("network namespaces, XDP") {
        return;
    }
    let t = Topo::namespaces("vrxp", 1, &[]);
    let ns = format!("/run/netns/{}", t.ns("node"));
    // The calls act on the calling thread's network namespace: a thread enters the test's.
    let r = std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("the namespace exists");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let up0 = ifindex("up0").expect("up0");
        let hook = || attached_prog(up0, AttachMode::Native).expect("query");
        let a = XskProgram::shared("up0", AttachMode::Native).expect("attach");
        let b = XskProgram::shared("up0", AttachMode::Native).expect("share");
        assert!(std::sync::Arc::ptr_eq(&a, &b), "one program per device and mode");
        let ours = hook();
        assert_ne!(ours, 0);
        drop(a);
        assert_eq!(hook(), ours, "still held by the second socket");
        drop(b);
        assert_eq!(hook(), 0, "detached with its last holder");

        // Someone else's program: an XDP_PASS of two instructions.
        // SAFETY: `bpf_insn` is plain integers; all zeroes is valid.
        let mut insns: [libbpf_sys::bpf_insn; 2] = unsafe { std::mem::zeroed() };
        insns[0].code = 0xb7; // r0 = XDP_PASS
        insns[0].imm = 2;
        insns[1].code = 0x95; // exit
                              // SAFETY: NUL-terminated names, `insns` alive for the call, no options.
        let fd = unsafe {
            libbpf_sys::bpf_prog_load(
                libbpf_sys::BPF_PROG_TYPE_XDP,
                c"other".as_ptr(),
                c"GPL".as_ptr(),
                insns.as_ptr(),
                2,
                std::ptr::null_mut(),
            )
        };
        assert!(fd >= 0, "load: {fd}");
        // SAFETY: a fresh descriptor nobody else owns.
        let other = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a valid program fd, no options.
        let put = |flags: u32| unsafe {
            libbpf_sys::bpf_xdp_attach(
                up0 as i32,
                other.as_raw_fd(),
                libbpf_sys::XDP_FLAGS_DRV_MODE | flags,
                std::ptr::null(),
            )
        };
        assert_eq!(put(0), 0);
        let theirs = hook();
        let e = XskProgram::shared("up0", AttachMode::Native).err().expect("refused over another program");
        assert!(e.to_string().contains("cannot attach the multi-buffer XDP program"), "{e}");
        assert_eq!(hook(), theirs, "the other program stays");
        // SAFETY: a plain syscall wrapper, no options.
        let r = unsafe { libbpf_sys::bpf_xdp_detach(up0 as i32, libbpf_sys::XDP_FLAGS_DRV_MODE, std::ptr::null()) };
        assert_eq!(r, 0, "detaching the other program");
        // Ours attached, then replaced by theirs: dropping ours leaves theirs in place.
        let c = XskProgram::shared("up0", AttachMode::Native).expect("attach");
        assert_eq!(put(0), 0, "replaced by the other program");
        drop(c);
        assert_eq!(hook(), theirs, "our drop did not remove the program that replaced ours");
    })
    .join();
    assert!(r.is_ok(), "the namespace thread failed (above)");
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
    child.signal(Signal::SIGHUP);
    common::wait_until("the reload to be refused", std::time::Duration::from_secs(5), || {
        t.log().contains("refused, still running the previous config")
    });
    assert!(t.ping("peer", "10.244.1.2", "2"), "after the refused reload: {}", t.log());
    // A port-level change that can be made replaces the pod without losing it.
    let mtu = t.edit(&good, |c| c.endpoints[0].mtu = 1400);
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
fn a_replaced_pod_that_cannot_be_finished_is_reported_down_not_refused_and_the_next_apply_brings_it_back() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrf", &["pod"]);
    let good = t.config(DEFAULT_ROUTE);
    t.write_config(&good);
    let child = t.start();
    assert!(t.ping("peer", "10.244.1.2", "2"), "before: {}", t.log());
    // The pod's interface renamed to a name another interface in its namespace holds: the
    // replacement is staged, the old port removed, and finishing it fails ("File exists").
    common::ok(&["ip", "-n", &t.ns("pod"), "link", "add", "taken0", "type", "veth", "peer", "name", "taken1"]);
    let renamed = t.edit(&good, |c| c.endpoints[0].ifname = "taken0".into());
    assert_ne!(renamed, good);
    t.write_config(&renamed);
    child.signal(Signal::SIGHUP);
    common::wait_until("the reload to fail", std::time::Duration::from_secs(15), || {
        t.log().contains("config reload (SIGHUP)")
    });
    let log = t.log();
    assert!(!log.contains("refused, still running the previous config"), "the pod is down, not kept: {log}");
    assert!(log.contains("applied, but pod pod could not be finished and is down until the next apply"), "{log}");
    assert!(log.contains("File exists"), "says why: {log}");
    let links = common::text(&sh(&["ip", "-n", &t.ns("pod"), "-br", "link"]));
    assert!(!links.contains("vrstage"), "a staged interface left behind: {links}");
    // Once the name is free, the next apply (of the file now running) brings the pod back.
    common::ok(&["ip", "-n", &t.ns("pod"), "link", "del", "taken0"]);
    let o = t.ctl(&["reload"]);
    assert!(o.status.success(), "{}", common::text(&o));
    let links = common::text(&sh(&["ip", "-n", &t.ns("pod"), "link", "show", "taken0"]));
    assert!(links.contains("UP"), "{links}");
    assert!(t.ping("peer", "10.244.1.2", "2"), "after the next apply: {}", t.log());
    t.write_config(&good);
    t.stop(child);
}

/// `ip -d link show up0` in the node's namespace.
fn uplink_link(t: &Topo) -> String {
    String::from_utf8_lossy(&sh(&["ip", "-n", &t.ns("node"), "-d", "link", "show", "up0"]).stdout).to_string()
}

/// The metrics page's URL (the daemon logs it).
fn metrics_url(t: &Topo) -> String {
    let log = t.log();
    log.split_whitespace()
        .find(|w| w.starts_with("http://") && w.ends_with("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
        .to_string()
}

/// The metrics page, fetched from inside the node's namespace.
fn metrics(t: &Topo) -> String {
    let url = metrics_url(t);
    let o = t.exec("node", &["curl", "-sS", "-m", "5", &url]);
    assert!(o.status.success(), "curl {url}: {}", common::text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// One value of the metrics page (`name` with its labels, as printed).
fn metric(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n";

#[test]
fn a_second_daemon_on_the_same_uplink_is_refused_and_the_first_keeps_forwarding() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vro", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let first = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "before: {}", t.log());
    // Traffic through the first daemon while the second tries to start: none of it is lost.
    let traffic = t.spawn("pod", &["ping", "-q", "-i", "0.05", "-c", "40", "-W", "1", "192.168.1.1"]);
    std::thread::sleep(Duration::from_millis(300));
    // Bounded: were the lock to let it start, it would run (and `output()` wait) for ever.
    let o = t.exec(
        "node",
        &["timeout", "10", env!("CARGO_BIN_EXE_vrouter"), "run", "--config", t.dir.join("node.toml").to_str().unwrap()],
    );
    let ping = common::text(&traffic.finish());
    assert!(ping.contains("40 packets transmitted, 40 received"), "traffic lost while a second daemon started: {ping}");
    let e = common::text(&o);
    assert!(!o.status.success(), "a second daemon on up0 started: {e}");
    assert!(e.contains(&format!("uplink up0 is already driven by another vrouter (pid {}", first.pid())), "{e}");
    // The first one's program is still there and it still forwards, both ways.
    assert!(uplink_link(&t).contains("prog/xdp"), "XDP program gone: {}", uplink_link(&t));
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router after the second start: {}", t.log());
    assert!(t.ping("peer", "10.244.1.2", "3"), "router -> pod after the second start: {}", t.log());
    t.stop(first);
    // The lock died with its holder: the next start works.
    let again = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "after restart: {}", t.log());
    t.stop(again);
}

#[test]
fn an_xdp_program_removed_by_someone_else_is_put_back_logged_and_counted() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrx", &["pod"]);
    t.write_config(&t.config(&format!("{DEFAULT_ROUTE}{METRICS}")));
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "before: {}", t.log());
    for mode in ["xdp", "xdpgeneric"] {
        common::ok(&["ip", "-n", &t.ns("node"), "link", "set", "dev", "up0", mode, "off"]);
    }
    common::wait_until("the XDP program back on up0", Duration::from_secs(5), || uplink_link(&t).contains("prog/xdp"));
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router after the reattach: {}", t.log());
    assert!(t.ping("peer", "10.244.1.2", "3"), "router -> pod after the reattach: {}", t.log());
    let log = t.log();
    assert!(log.contains("ERROR") && log.contains("XDP program was removed by someone else"), "{log}");
    let page = metrics(&t);
    assert_eq!(metric(&page, "vrouter_uplink_xdp_detached_total"), Some(1.0), "{page}");
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
fn a_mistyped_log_level_is_refused_with_the_valid_ones() {
    for bad in ["warning", "bogus"] {
        let o = Command::new(env!("CARGO_BIN_EXE_vrouter"))
            .args(["--log-level", bad, "check-config", "/nonexistent"])
            .output()
            .unwrap();
        let e = common::text(&o);
        assert!(!o.status.success(), "--log-level {bad} accepted: {e}");
        assert!(
            e.contains(&format!("invalid log level `{bad}`")) && e.contains("off, error, warn, info, debug, trace"),
            "{e}"
        );
        // The environment variable is held to the same rule.
        let o = Command::new(env!("CARGO_BIN_EXE_vrouter"))
            .env("VROUTER_LOG", bad)
            .args(["check-config", "/nonexistent"])
            .output()
            .unwrap();
        let e = common::text(&o);
        assert!(e.contains("VROUTER_LOG") && e.contains(&format!("invalid log level `{bad}`")), "{e}");
    }
    // A valid one still logs: an error (the missing file) is reported.
    let o = Command::new(env!("CARGO_BIN_EXE_vrouter"))
        .args(["--log-level", "warn", "check-config", "/nonexistent"])
        .output()
        .unwrap();
    assert!(common::text(&o).contains("/nonexistent"), "{}", common::text(&o));
}

/// CPU time (user + system, seconds) of every thread of process `pid` so far.
fn cpu_seconds(pid: i32) -> f64 {
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).unwrap().expect("CLK_TCK") as f64;
    let mut ticks = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // Fields after the command's closing parenthesis; utime and stime are fields 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        ticks += f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    }
    ticks as f64 / hz
}

#[test]
fn a_pod_tap_deleted_under_traffic_is_logged_not_spun_on_and_recreated_by_reload() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrg", &["pod"]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let child = t.start();
    assert!(t.ping("peer", "10.244.1.2", "2"), "router -> pod: {}", t.log());
    let traffic = t.spawn("peer", &["ping", "-q", "-i", "0.01", "-w", "6", "10.244.1.2"]);
    std::thread::sleep(Duration::from_millis(300));
    t.exec_ok("pod", &["ip", "link", "del", "eth0"]);
    common::wait_until("the log line", Duration::from_secs(3), || t.log().contains("TAP device gone"));
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(child.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(child.pid()) - before;
    eprintln!("daemon CPU over 1 s with the pod TAP gone: {used:.3} s");
    assert!(used < 0.3, "the daemon used {used:.2} s of CPU in 1 s with the pod's TAP gone (a spinning core is ~1)");
    assert_eq!(t.log().matches("TAP device gone").count(), 1, "logged once: {}", t.log());
    let ports = t.ctl_json(&["ports"]);
    let pod = ports["ports"].as_array().unwrap().iter().find(|p| p["name"] == "tappod").cloned().unwrap();
    assert_eq!(pod["link"], "down", "{pod}");
    let plan = t.ctl_json(&["apply", "--dry-run", "-f", t.dir.join("node.toml").to_str().unwrap()]);
    assert_eq!(plan["endpoints_replaced"], serde_json::json!(["pod"]), "{plan}");
    let s = t.stats();
    assert!(s["drops"]["tx/link-down"].as_u64().unwrap() > 0, "frames to the gone TAP: {s}");
    drop(traffic);
    // The same config applied again recreates it.
    let r = t.ctl_json(&["reload"]);
    assert_eq!(r["endpoints_added"], serde_json::json!(["pod"]), "{r}");
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router after the reload: {}", t.log());
    assert!(t.ping("peer", "10.244.1.2", "3"), "router -> pod after the reload: {}", t.log());
    // The pod's namespace destroyed: the same, without a core spinning.
    common::ok(&["ip", "netns", "del", &t.ns("pod")]);
    let traffic = t.spawn("peer", &["ping", "-q", "-i", "0.01", "-w", "3", "10.244.1.2"]);
    common::wait_until("the second log line", Duration::from_secs(3), || {
        t.log().matches("TAP device gone").count() == 2
    });
    let before = cpu_seconds(child.pid());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_seconds(child.pid()) - before;
    eprintln!("daemon CPU over 1 s with the pod's namespace gone: {used:.3} s");
    assert!(used < 0.3, "the daemon used {used:.2} s of CPU in 1 s with the pod's namespace gone");
    drop(traffic);
    t.stop(child);
}

#[test]
fn uplink_link_down_is_followed_logged_counted_and_shown_by_ports() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrl", &["pod"]);
    t.write_config(&t.config(&format!("{DEFAULT_ROUTE}{METRICS}")));
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "before: {}", t.log());
    let uplink = |t: &Topo| {
        let v = t.ctl_json(&["ports"]);
        v["ports"].as_array().unwrap().iter().find(|p| p["name"] == "up0").cloned().unwrap()
    };
    let up0 = uplink(&t);
    assert_eq!(up0["link"], "up", "{up0}");
    assert!(up0["xdp"]["mode"] == "native" || up0["xdp"]["mode"] == "generic", "{up0}");
    assert_eq!(up0["xdp"]["zero_copy"], false, "veth runs AF_XDP in copy mode: {up0}");
    let table = common::text(&t.ctl(&["ports"]));
    assert!(table.contains("LINK") && table.contains("/copy"), "{table}");
    assert!(metrics(&t).contains("vrouter_uplink_link_up 1\n"));

    t.exec_ok("peer", &["ip", "link", "set", "gw0", "down"]);
    common::wait_until("ports: up0 down", Duration::from_secs(3), || uplink(&t)["link"] == "down");
    assert!(t.log().contains("uplink link lost (no carrier)"), "{}", t.log());
    std::thread::sleep(Duration::from_millis(300)); // frames on their way when it went down
    let sent_before = uplink(&t)["stats"]["tx_packets"].as_u64().unwrap();
    assert!(!t.ping("pod", "192.168.1.1", "2"));
    let s = t.stats();
    assert!(s["drops"]["tx/link-down"].as_u64().unwrap() >= 2, "frames for the uplink while down: {s}");
    // Lost, so not sent: counted once, as tx/link-down.
    assert_eq!(uplink(&t)["stats"]["tx_packets"].as_u64().unwrap(), sent_before, "{}", uplink(&t));
    let page = metrics(&t);
    assert!(
        page.contains("vrouter_uplink_link_up 0\n") && page.contains("vrouter_uplink_link_changes_total 1\n"),
        "{page}"
    );

    t.exec_ok("peer", &["ip", "link", "set", "gw0", "up"]);
    common::wait_until("ports: up0 up", Duration::from_secs(3), || uplink(&t)["link"] == "up");
    assert!(t.log().contains("uplink link up"), "{}", t.log());
    // The peer's kernel dropped its route to the pods with the link: put it back.
    t.exec_ok("peer", &["ip", "route", "replace", "10.244.1.0/26", "via", "192.168.1.10"]);
    common::wait_until("pod -> router again", Duration::from_secs(5), || t.ping("pod", "192.168.1.1", "1"));
    t.stop(child);
}

#[test]
fn uplink_bind_copy_forwards_and_zerocopy_on_veth_is_refused_with_the_fix_or_reported() {
    use vrouter::control::config::BindMode;
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrbind", &["pod"]);
    let with_bind = |bind: BindMode| t.edit(&t.config(DEFAULT_ROUTE), |c| c.uplink.as_mut().unwrap().bind = bind);
    let uplink = |t: &Topo| {
        let v = t.ctl_json(&["ports"]);
        v["ports"].as_array().unwrap().iter().find(|p| p["name"] == "up0").cloned().unwrap()
    };
    // Copy mode, forced: forwards both ways, and says so.
    t.write_config(&with_bind(BindMode::Copy));
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "pod -> router: {}", t.log());
    assert!(t.ping("peer", "10.244.1.2", "2"), "router -> pod: {}", t.log());
    assert_eq!(uplink(&t)["xdp"]["zero_copy"], false, "{}", uplink(&t));
    assert!(t.log().contains("AF_XDP socket bound") && t.log().contains("zero_copy=false"), "{}", t.log());
    assert!(!t.log().contains("zero-copy AF_XDP unavailable"), "copy was asked for, not tried after zero-copy");
    t.stop(child);
    // Auto (the default): veth has no zero-copy AF_XDP, so copy mode, with the kernel's reason.
    t.write_config(&with_bind(BindMode::Auto));
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "pod -> router: {}", t.log());
    assert!(t.log().contains("zero-copy AF_XDP unavailable") && t.log().contains("using copy mode"), "{}", t.log());
    assert_eq!(uplink(&t)["xdp"]["zero_copy"], false, "{}", uplink(&t));
    t.stop(child);
    // Zero-copy or nothing: this kernel's veth refuses it, and the daemon does not start.
    t.write_config(&with_bind(BindMode::ZeroCopy));
    let o = t.run_refused();
    let e = String::from_utf8_lossy(&o.stderr);
    eprintln!("bind = \"zerocopy\" on veth: {}", e.trim_end().lines().last().unwrap_or_default());
    if o.status.code() == Some(124) {
        // A kernel whose veth does zero-copy AF_XDP: it ran, and said so.
        assert!(e.contains("AF_XDP socket bound") && e.contains("zero_copy=true"), "{e}");
    } else {
        assert!(!o.status.success(), "{e}");
        assert!(
            e.contains("up0 queue 0: the driver refused a zero-copy AF_XDP socket") && e.contains("bind = \"auto\""),
            "{e}"
        );
        assert!(!e.contains("AF_XDP socket bound"), "{e}");
    }
}

/// A node with no uplink and no pods (nothing to set up, no root needed to start it), its
/// control socket in `dir`.
fn bare_config(dir: &std::path::Path) -> std::path::PathBuf {
    let f = dir.join("bare.toml");
    std::fs::write(
        &f,
        format!(
            "[node]\nname = \"bare\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n[control]\nsocket = \"{}\"\n",
            dir.join("ctl.sock").display()
        ),
    )
    .unwrap();
    f
}

#[test]
fn a_stats_path_that_cannot_be_written_is_refused_at_start() {
    let dir = std::env::temp_dir().join(format!("vrd-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = bare_config(&dir);
    for (stats, says) in
        [("/nonexistent-vrouter-dir/stats.json", "does not exist"), ("/proc/vrouter-stats.json", "cannot write there")]
    {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vrouter"))
            .args(["run", "--config", cfg.to_str().unwrap(), "--stats", stats])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let running = child.try_wait().unwrap().is_none();
        if running {
            let _ = child.kill();
        }
        let o = child.wait_with_output().unwrap();
        let e = common::text(&o);
        assert!(!running, "--stats {stats}: the daemon started anyway: {e}");
        assert!(!o.status.success() && e.contains(&format!("--stats {stats}")) && e.contains(says), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_stats_file_failing_every_tick_is_logged_once_with_a_count() {
    let dir = std::env::temp_dir().join(format!("vrd-statsflood-{}", std::process::id()));
    let stats_dir = dir.join("st");
    std::fs::create_dir_all(&stats_dir).unwrap();
    let cfg = bare_config(&dir);
    let log = dir.join("log");
    let child = Command::new(env!("CARGO_BIN_EXE_vrouter"))
        .args(["run", "--config", cfg.to_str().unwrap(), "--stats", stats_dir.join("stats.json").to_str().unwrap()])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let daemon = common::Proc::new(child);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    common::wait_until("the stats file", Duration::from_secs(10), || stats_dir.join("stats.json").exists());
    std::fs::remove_dir_all(&stats_dir).unwrap();
    std::thread::sleep(Duration::from_millis(2500)); // about 12 ticks
    let lines = read_log().matches("cannot write stats").count();
    assert_eq!(lines, 1, "one line for a repeated failure: {}", read_log());
    std::fs::create_dir_all(&stats_dir).unwrap();
    common::wait_until("the recovery line", Duration::from_secs(3), || read_log().contains("stats file written again"));
    let l = read_log();
    let failures: u64 =
        l[l.find("failures=").unwrap() + 9..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    assert!(failures >= 8, "the count of failures told: {l}");
    daemon.signal(Signal::SIGTERM);
    assert!(daemon.finish().status.success(), "{}", read_log());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn thousands_of_unusable_kernel_routes_are_a_few_log_lines() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vru", &[]);
    t.exec_ok("node", &["ip", "link", "add", "dm0", "type", "veth", "peer", "name", "dm1"]);
    t.exec_ok("node", &["ip", "link", "set", "dm1", "up"]);
    t.exec_ok("node", &["ip", "link", "set", "dm0", "up"]);
    let batch: String =
        (0..3000).map(|i| format!("route add 10.{}.{}.0/24 dev dm0 table 100\n", 100 + i / 256, i % 256)).collect();
    std::fs::write(t.dir.join("routes.batch"), batch).unwrap();
    t.exec_ok("node", &["ip", "-batch", t.dir.join("routes.batch").to_str().unwrap()]);
    t.write_config(&t.config(&format!("{DEFAULT_ROUTE}[kernel_routes]\ntable = 100\n")));
    let child = t.start();
    common::wait_until("3000 routes refused", Duration::from_secs(10), || {
        t.ctl_json(&["routes"])["not_installed"].as_array().map_or(0, Vec::len) == 3000
    });
    // (Before the helper each one was a "kernel route not installed" line.)
    let lines = t.log().lines().filter(|l| l.contains("WARN") && l.contains("kernel route not")).count();
    assert!((1..=2).contains(&lines), "{lines} lines for 3000 unusable routes");
    assert!(t.log().contains("is not one vrouter forwards to"), "the first one says why: {}", t.log());
    common::wait_until("the count", Duration::from_secs(15), || t.log().contains("more kernel routes not imported"));
    t.stop(child);
}

#[test]
fn trickling_clients_and_an_abandoned_trace_do_not_lock_the_control_socket() {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrc", &["pod"]);
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
    // Locked out, it would wait out a trickler's 10 s request timeout.
    assert!(start.elapsed() < Duration::from_secs(5), "status took {:?}", start.elapsed());
    // A trace whose client went away (Ctrl-C) ends; the next one may start at once.
    let trace = |timeout: &str| {
        common::vrouterctl()
            .arg("-s")
            .arg(t.sock())
            .args(["trace", "--count", "5", "--port", "tappod", "--timeout", timeout])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Running once another trace is refused as already running. A probe that gets in first
    // makes the trace fail (it runs alone): then it is started again.
    let running = || {
        let o = t.ctl(&["trace", "--count", "1", "--timeout", "0.1"]);
        !o.status.success() && common::text(&o).contains("already running")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut abandoned = 'started: loop {
        let mut c = trace("600");
        loop {
            if running() {
                break 'started c;
            }
            if c.try_wait().unwrap().is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "the trace did not start within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    abandoned.kill().unwrap();
    abandoned.wait().unwrap();
    common::wait_until("the abandoned trace to end", Duration::from_secs(2), || {
        t.ctl(&["trace", "--count", "1", "--timeout", "0.1"]).status.success()
    });
    // And `trace stop` ends one whose client is still there (its timeout, 30 s, is far off).
    // Sent until it finds the trace running (the first may come before the trace starts).
    let start = Instant::now();
    let stopped = trace("30");
    common::wait_until("trace stop to find the trace", Duration::from_secs(20), || {
        let s = t.ctl(&["trace", "stop"]);
        assert!(s.status.success(), "{}", common::text(&s));
        String::from_utf8_lossy(&s.stdout).contains("stopped the running trace")
    });
    let stop_sent = Instant::now();
    let o = stopped.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", common::text(&o));
    assert!(
        stop_sent.elapsed() < Duration::from_secs(5) && start.elapsed() < Duration::from_secs(25),
        "the trace ended {:?} after the stop ({:?} after it started), not on the stop",
        stop_sent.elapsed(),
        start.elapsed()
    );
    drop(trickling);
    t.stop(child);
}

#[test]
fn a_veth_uplink_is_warned_about_checksum_offload() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrv", &[]);
    t.write_config(&t.config(DEFAULT_ROUTE));
    let child = t.start();
    let log = t.log();
    assert!(log.contains("WARN") && log.contains("uplink up0 is a veth"), "{log}");
    // The peer is in another namespace: named by its ifindex, with the command to run there.
    assert!(log.contains("ethtool -K PEER (ifindex ") && log.contains(" tx off"), "{log}");
    t.stop(child);
}

#[test]
fn metrics_serve_healthz_and_label_per_port_series_with_the_pod() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrh", &["web"]);
    t.write_config(&t.config(&format!("{DEFAULT_ROUTE}{METRICS}")));
    let child = t.start();
    assert!(t.ping("web", "192.168.1.1", "1"));
    let page = metrics(&t);
    assert!(page.contains("vrouter_port_transmit_packets_total{port=\"tapweb\",pod=\"web\",worker=\"0\"}"), "{page}");
    assert!(page.contains("vrouter_port_transmit_packets_total{port=\"up0\",worker=\"0\"}"), "{page}");
    let url = metrics_url(&t).replace("/metrics", "/healthz");
    let o = t.exec("node", &["curl", "-sS", "-m", "5", "-w", " %{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n 200", "{}", common::text(&o));
    t.stop(child);
}

#[test]
fn another_xdp_program_in_vrouters_place_is_left_alone_and_vrouters_comes_back_after_it() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::routed("vrp", &["pod"]);
    t.write_config(&t.config(&format!("{DEFAULT_ROUTE}{METRICS}")));
    let child = t.start();
    assert!(t.ping("pod", "192.168.1.1", "2"), "before: {}", t.log());
    // Someone else's XDP program (XDP_PASS), attached in vrouter's place in the same mode.
    let src = t.dir.join("pass.c");
    std::fs::write(
        &src,
        "__attribute__((section(\"xdp\"), used)) int pass(void *ctx) { return 2; }\n\
         char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    )
    .unwrap();
    let obj = t.dir.join("pass.o");
    common::ok(&["clang", "-O2", "-target", "bpf", "-c", src.to_str().unwrap(), "-o", obj.to_str().unwrap()]);
    let ports = t.ctl_json(&["ports"]);
    let mode = ports["ports"].as_array().unwrap().iter().find(|p| p["name"] == "up0").unwrap()["xdp"]["mode"].clone();
    let ip_mode = if mode == "native" { "xdpdrv" } else { "xdpgeneric" };
    let node = t.ns("node");
    common::ok(&[
        "ip",
        "-n",
        &node,
        "-force",
        "link",
        "set",
        "dev",
        "up0",
        ip_mode,
        "obj",
        obj.to_str().unwrap(),
        "sec",
        "xdp",
    ]);
    common::wait_until("the log line", Duration::from_secs(3), || {
        t.log().contains("another XDP program replaced vrouter's")
    });
    std::thread::sleep(Duration::from_millis(600));
    assert!(uplink_link(&t).contains("name pass"), "the other program was removed: {}", uplink_link(&t));
    assert_eq!(t.log().matches("another XDP program replaced vrouter's").count(), 1, "{}", t.log());
    // Its owner removes it: vrouter's comes back, and forwarding with it.
    common::ok(&["ip", "-n", &node, "link", "set", "dev", "up0", ip_mode, "off"]);
    common::wait_until("vrouter's program back", Duration::from_secs(3), || {
        let l = uplink_link(&t);
        l.contains("prog/xdp") && !l.contains("name pass")
    });
    assert!(t.ping("pod", "192.168.1.1", "3"), "pod -> router after: {}", t.log());
    assert_eq!(metric(&metrics(&t), "vrouter_uplink_xdp_detached_total"), Some(1.0), "one episode");
    t.stop(child);
}

/// Two uplink queues (two workers) with a stateful policy: the pod's ingress admits nothing new
/// from outside, so each reply passes only if it meets the connection-tracking entry its
/// request made. Replies arrive on either queue (the peer's veth picks its TX queue, and so our
/// RX queue, by flow hash) and the pod's requests on either queue of its TAP: every one must be
/// handed to the worker that owns its flow. 32 connections: were a reply judged by the other
/// worker, it would be dropped as `policy/deny` (the chance that all 32 land right by luck is
/// 2^-32).
#[test]
fn two_workers_with_policy_keep_every_flow_on_one_worker() {
    assert!(is_root(), "needs root (network namespaces, TAP, AF_XDP)");
    let t = Topo::namespaces("vrw2", 2, &["pod"]);
    t.exec_ok("peer", &["ip", "addr", "add", "192.168.1.1/24", "dev", "gw0"]);
    t.exec_ok("peer", &["ip", "route", "add", "10.244.1.0/26", "via", "192.168.1.10"]);
    // The peer's veth would hand AF_XDP partial TCP checksums (see the daemon's warning).
    t.exec_ok("peer", &["ethtool", "-K", "gw0", "tx", "off"]);
    let policy = "[policies]\nclosed = [{ action = \"allow\", protocol = \"icmp\", icmp_type = 8 }]\n";
    let cfg = t.edit(&t.config(&format!("{DEFAULT_ROUTE}{policy}")), |c| {
        c.uplink.as_mut().expect("uplink").queues = 2;
        c.endpoints[0].ingress = vec!["closed".into()];
    });
    t.write_config(&cfg);
    let child = t.start();
    assert!(t.log().contains("workers=2"), "{}", t.log());
    let server = t.spawn(
        "peer",
        &[
            "python3",
            "-c",
            "import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('192.168.1.1', 7777)); s.listen(64)\nwhile True:\n    c, _ = s.accept(); c.settimeout(5); d = b''\n    \
             try:\n        while True:\n            x = c.recv(65536)\n            if not x: break\n            d += x\n        \
             c.sendall(d)\n    except OSError: pass\n    c.close()\n",
        ],
    );
    common::wait_until("the peer's server", Duration::from_secs(5), || {
        !common::text(&sh(&["ip", "netns", "exec", &t.ns("peer"), "ss", "-ltnH", "sport = :7777"])).trim().is_empty()
    });
    let client = "import os, socket, sys\nbad = []\nfor i in range(32):\n    \
                  c = socket.create_connection(('192.168.1.1', 7777), timeout=4); c.settimeout(4)\n    \
                  data = os.urandom(100000); c.sendall(data); c.shutdown(socket.SHUT_WR); got = b''\n    \
                  while True:\n        x = c.recv(65536)\n        if not x: break\n        got += x\n    \
                  c.close()\n    if got != data: bad.append(i)\nsys.exit('connections with wrong echoes: %s' % bad if bad else 0)\n";
    let o = t.exec("pod", &["python3", "-c", client]);
    drop(server);
    let stats = t.stats();
    assert!(o.status.success(), "{}\nstats: {stats}\n{}", common::text(&o), t.log());
    assert_eq!(stats["drops"]["policy/deny"], 0, "a reply judged by the wrong worker: {stats}");
    assert_eq!(stats["drops"]["handoff/full"], 0, "{stats}");
    assert!(stats["counters"]["handed_off"].as_u64().unwrap_or(0) > 0, "no frame was handed over: {stats}");
    // The policy still denies what it should: a new connection from outside gets no answer
    // (not even the RST of a closed port), and is counted.
    let o =
        t.exec("peer", &["python3", "-c", "import socket; socket.create_connection(('10.244.1.2', 22), timeout=1)"]);
    assert!(
        common::text(&o).contains("timed out"),
        "a connection from outside reached the closed pod: {}",
        common::text(&o)
    );
    assert!(t.stats()["drops"]["policy/deny"].as_u64().unwrap_or(0) > 0, "{}", t.stats());
    t.stop(child);
}

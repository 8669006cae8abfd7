//! The kernel route watcher against real tables (root only). Each test makes its own namespace
//! with veth pairs, starts the watcher on table 100 there, and changes routes with `ip route` as
//! BIRD would; the events are asserted one by one (or as a set where the kernel's order is not
//! defined). "No event" is asserted by adding a marker route and seeing its event come next.
//! Skipped with a message when not root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vrouter::control::netlink::{spawn_watcher, KernelNextHop, KernelPath, KernelRoute, RouteEvent, WatchConfig};
use vrouter_core::fib::Ipv4Prefix;

const TABLE: u32 = 100;
/// Longest wait for one expected event.
const WAIT: Duration = Duration::from_secs(5);

fn run_ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip runs");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&o.stderr));
}

/// A namespace `vr-nl-<pid>-<n>` with `lo` up and veth `v0` (10.9.0.1/24) <-> `v1`, both up;
/// deleted on drop, even on panic.
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

impl Ns {
    fn new() -> Ns {
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = Ns(format!("vr-nl-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        run_ip(&["netns", "add", &ns.0]);
        ns.ip("link set lo up");
        ns.ip("link add v0 type veth peer name v1");
        ns.ip("link set v0 up");
        ns.ip("link set v1 up");
        ns.ip("addr add 10.9.0.1/24 dev v0");
        ns
    }

    /// `ip -n <ns> <args>`, args split on spaces.
    fn ip(&self, args: &str) {
        let mut v = vec!["-n", &self.0];
        v.extend(args.split_whitespace());
        run_ip(&v);
    }

    fn watch(&self, stop: &Arc<AtomicBool>, on_event: impl FnMut(RouteEvent) + Send + 'static) -> JoinHandle<()> {
        let cfg = WatchConfig { table: TABLE, netns: Some(self.0.clone()) };
        spawn_watcher(cfg, stop.clone(), on_event).expect("watcher starts")
    }

    /// Drop counts of this namespace's NETLINK_ROUTE sockets subscribed to `groups` (hex mask).
    fn netlink_drops(&self, groups: u32) -> u64 {
        let o = Command::new("ip").args(["netns", "exec", &self.0, "cat", "/proc/net/netlink"]).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
                let f: Vec<&str> = l.split_whitespace().collect();
                let ours = f.get(1) == Some(&"0") && u32::from_str_radix(f.get(3)?, 16).ok()? == groups;
                ours.then(|| f.get(8)?.parse::<u64>().ok()).flatten()
            })
            .sum()
    }
}

fn p(s: &str) -> Ipv4Prefix {
    s.parse().unwrap()
}

fn a(s: &str) -> std::net::Ipv4Addr {
    s.parse().unwrap()
}

/// A route as `ip route add` makes it: protocol boot (3), table 100.
fn set(prefix: &str, metric: u32, nh: KernelNextHop) -> RouteEvent {
    RouteEvent::Set(KernelRoute { prefix: p(prefix), table: TABLE, protocol: 3, metric, nh })
}

fn gw(via: &str, dev: &str, onlink: bool) -> KernelNextHop {
    KernelNextHop::Gateway { via: a(via), dev: Some(dev.into()), onlink }
}

fn dev(d: &str) -> KernelNextHop {
    KernelNextHop::Dev { dev: d.into() }
}

/// The events seen so far, and the state they add up to.
struct Events {
    rx: Receiver<RouteEvent>,
    state: BTreeMap<Ipv4Prefix, KernelRoute>,
    markers: u32,
}

impl Events {
    fn new(rx: Receiver<RouteEvent>) -> Events {
        Events { rx, state: BTreeMap::new(), markers: 0 }
    }

    fn next(&mut self) -> RouteEvent {
        let e = self.rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("no route event within {WAIT:?}"));
        match &e {
            RouteEvent::Set(r) => self.state.insert(r.prefix, r.clone()),
            RouteEvent::Unset(p) => self.state.remove(p),
        };
        e
    }

    fn expect(&mut self, want: RouteEvent) {
        assert_eq!(self.next(), want);
    }

    /// Asserts that nothing was emitted since the last expected event: a fresh marker route's
    /// Set must be the very next event.
    fn expect_quiet(&mut self, ns: &Ns) {
        self.markers += 1;
        let m = format!("10.250.0.{}/32", self.markers);
        ns.ip(&format!("route add {m} dev v0 table {TABLE}"));
        self.expect(set(&m, 0, dev("v0")));
    }
}

#[test]
fn follows_table_100_like_bird_programs_it() {
    if let Some(why) = common::skip_unless_ready(&["ip"]) {
        eprintln!("SKIPPED follows_table_100_like_bird_programs_it: {why}");
        return;
    }
    let ns = Ns::new();
    ns.ip("link add w0 type veth peer name w1");
    ns.ip("link set w0 up");
    ns.ip("link set w1 up");
    ns.ip("addr add 10.8.0.1/24 dev w0");
    // Present before the watcher starts: the dump must report the table-100 one only.
    ns.ip("route add 10.30.0.0/16 via 10.9.0.2 proto 12 table 100");
    ns.ip("route add 10.31.0.0/16 via 10.9.0.2");

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let watcher = ns.watch(&stop, move |e| {
        let _ = tx.send(e);
    });
    let mut ev = Events::new(rx);
    ev.expect(RouteEvent::Set(KernelRoute {
        prefix: p("10.30.0.0/16"),
        table: TABLE,
        protocol: 12,
        metric: 0,
        nh: gw("10.9.0.2", "v0", false),
    }));
    ev.expect_quiet(&ns);

    ns.ip("route add 10.20.0.0/16 via 10.9.0.2 table 100");
    ev.expect(set("10.20.0.0/16", 0, gw("10.9.0.2", "v0", false)));

    // A gateway outside every connected subnet, accepted only with onlink.
    ns.ip("route add 10.21.0.0/16 via 10.99.0.2 dev v0 onlink table 100");
    ev.expect(set("10.21.0.0/16", 0, gw("10.99.0.2", "v0", true)));

    ns.ip("route add blackhole 10.22.0.0/16 table 100");
    ev.expect(set("10.22.0.0/16", 0, KernelNextHop::Blackhole));
    ns.ip("route add unreachable 10.23.0.0/16 table 100");
    ev.expect(set("10.23.0.0/16", 0, KernelNextHop::Unreachable));
    ns.ip("route add prohibit 10.24.0.0/16 table 100");
    ev.expect(set("10.24.0.0/16", 0, KernelNextHop::Prohibit));

    ns.ip("route add 10.25.0.0/16 table 100 nexthop via 10.9.0.2 dev v0 weight 1 nexthop via 10.99.0.3 dev v0 onlink weight 3");
    ev.expect(set(
        "10.25.0.0/16",
        0,
        KernelNextHop::Multipath(vec![
            KernelPath { via: Some(a("10.9.0.2")), dev: Some("v0".into()), onlink: false, weight: 1 },
            KernelPath { via: Some(a("10.99.0.3")), dev: Some("v0".into()), onlink: true, weight: 3 },
        ]),
    ));

    // A worse duplicate is silent; deleting the better one promotes it.
    ns.ip("route add 10.26.0.0/16 via 10.9.0.2 metric 10 table 100");
    ev.expect(set("10.26.0.0/16", 10, gw("10.9.0.2", "v0", false)));
    ns.ip("route add 10.26.0.0/16 via 10.9.0.3 metric 20 table 100");
    ev.expect_quiet(&ns);
    ns.ip("route del 10.26.0.0/16 metric 10 table 100");
    ev.expect(set("10.26.0.0/16", 20, gw("10.9.0.3", "v0", false)));

    ns.ip("route replace 10.20.0.0/16 via 10.9.0.3 table 100");
    ev.expect(set("10.20.0.0/16", 0, gw("10.9.0.3", "v0", false)));

    // Other tables, and types vrouter does not import, are not events.
    ns.ip("route add 10.27.0.0/16 via 10.9.0.2 table 200");
    ns.ip("route add 10.28.0.0/16 via 10.9.0.2");
    ns.ip("route add local 10.29.0.1 dev v0 table 100");
    ev.expect_quiet(&ns);

    ns.ip("route del blackhole 10.22.0.0/16 table 100");
    ev.expect(RouteEvent::Unset(p("10.22.0.0/16")));

    // The kernel drops these three without an RTM_DELROUTE; the watcher re-dumps on the link
    // or address event.
    ns.ip("route add 10.34.0.0/16 via 10.8.0.2 table 100");
    ev.expect(set("10.34.0.0/16", 0, gw("10.8.0.2", "w0", false)));
    ns.ip("route add 10.35.0.0/16 dev w0 table 100");
    ev.expect(set("10.35.0.0/16", 0, dev("w0")));
    ns.ip("addr del 10.8.0.1/24 dev w0");
    let mut gone = BTreeSet::new();
    for _ in 0..2 {
        match ev.next() {
            RouteEvent::Unset(p) => assert!(gone.insert(p)),
            e => panic!("expected Unset, got {e:?}"),
        }
    }
    assert_eq!(gone, BTreeSet::from([p("10.34.0.0/16"), p("10.35.0.0/16")]), "last address of w0 deleted");
    ns.ip("route add 10.32.0.0/16 dev w0 table 100");
    ev.expect(set("10.32.0.0/16", 0, dev("w0")));
    ns.ip("link set w0 down");
    ev.expect(RouteEvent::Unset(p("10.32.0.0/16")));
    ns.ip("link set w0 up");
    ns.ip("route add 10.33.0.0/16 dev w0 table 100");
    ev.expect(set("10.33.0.0/16", 0, dev("w0")));
    ns.ip("link del w0");
    ev.expect(RouteEvent::Unset(p("10.33.0.0/16")));
    ev.expect_quiet(&ns);

    // Flush: one Unset per prefix the watcher reported, in whatever order the kernel walks.
    let left: BTreeSet<Ipv4Prefix> = ev.state.keys().copied().collect();
    assert!(left.len() >= 9, "{left:?}");
    ns.ip("route flush table 100");
    let mut unset = BTreeSet::new();
    while unset.len() < left.len() {
        match ev.next() {
            RouteEvent::Unset(p) => assert!(unset.insert(p), "{p} unset twice"),
            e => panic!("flush: expected only Unset, got {e:?}"),
        }
    }
    assert_eq!(unset, left);
    assert!(ev.state.is_empty());
    ev.expect_quiet(&ns);

    let t = Instant::now();
    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher thread exits cleanly");
    assert!(t.elapsed() < Duration::from_secs(1), "watcher took {:?} to stop", t.elapsed());
}

/// Fills the watcher's notification socket while its callback is blocked, so the kernel drops
/// notifications (ENOBUFS). After the callback returns, the watcher must re-dump and end with
/// exactly one event per prefix that changed.
#[test]
fn overrun_redumps_and_emits_each_difference_once() {
    if let Some(why) = common::skip_unless_ready(&["ip"]) {
        eprintln!("SKIPPED overrun_redumps_and_emits_each_difference_once: {why}");
        return;
    }
    const ROUTES: u32 = 10_000;
    let ns = Ns::new();
    ns.ip("route add 10.40.0.0/16 via 10.9.0.2 table 100");

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let watcher = ns.watch(&stop, move |e| {
        let block = matches!(&e, RouteEvent::Set(r) if r.prefix == p("10.41.0.0/16"));
        let _ = tx.send(e);
        if block {
            let _ = gate_rx.recv();
        }
    });
    let mut ev = Events::new(rx);
    ev.expect(set("10.40.0.0/16", 0, gw("10.9.0.2", "v0", false)));
    ns.ip("route add 10.41.0.0/16 via 10.9.0.2 table 100");
    ev.expect(set("10.41.0.0/16", 0, gw("10.9.0.2", "v0", false)));

    // The watcher is now stuck in its callback.
    ns.ip("route del 10.40.0.0/16 table 100");
    let batch: String = (0..ROUTES)
        .map(|i| format!("route add 10.{}.{}.0/24 via 10.9.0.2 table 100\n", 128 + i / 256, i % 256))
        .collect();
    let file = std::env::temp_dir().join(format!("{}-batch", ns.0));
    std::fs::write(&file, batch).unwrap();
    let r = Command::new("ip").args(["-n", &ns.0, "-batch"]).arg(&file).output().unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(r.status.success(), "ip -batch: {}", String::from_utf8_lossy(&r.stderr));
    // RTNLGRP_LINK (1), RTNLGRP_IPV4_IFADDR (5), RTNLGRP_IPV4_ROUTE (7) as a group mask.
    let drops = ns.netlink_drops(0x51);
    assert!(drops > 0, "the kernel dropped nothing: {ROUTES} routes did not overrun the socket");
    gate_tx.send(()).unwrap();

    let mut count: BTreeMap<Ipv4Prefix, u32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ev.state.len() != ROUTES as usize + 1 || ev.state.contains_key(&p("10.40.0.0/16")) {
        assert!(Instant::now() < deadline, "not converged: {} prefixes", ev.state.len());
        let e = ev.next();
        let prefix = match &e {
            RouteEvent::Set(r) => {
                assert_eq!(r.nh, gw("10.9.0.2", "v0", false));
                r.prefix
            }
            RouteEvent::Unset(p) => *p,
        };
        *count.entry(prefix).or_default() += 1;
    }
    assert_eq!(count.len(), ROUTES as usize + 1, "one event per new prefix and the Unset of 10.40.0.0/16");
    assert!(count.values().all(|&n| n == 1), "some prefix had more than one event");
    ev.expect_quiet(&ns);
    eprintln!("overrun: {drops} notifications dropped by the kernel, recovered by a re-dump");

    stop.store(true, Ordering::Relaxed);
    watcher.join().expect("watcher thread exits cleanly");
}

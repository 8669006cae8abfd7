//! Real BIRDs (2.0.12) on rendered configs, in network namespaces joined by veths and bridges
//! (root): what reaches the kernel table, reloads that restart nothing, refused routes, MD5,
//! BFD, graceful restart, route reflection and off-subnet next hops.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{intent, peer, skip, wait_until, Bird, Lab};
use vrouter_bgp::{BgpIntent, ConfigureOutcome, PeerRole, TcpMd5Counters};

const UP: Duration = Duration::from_secs(30);

fn route_line(lab: &Lab, ns: &str, prefix: &str) -> String {
    lab.route(ns, prefix).unwrap_or_else(|| panic!("no {prefix} in {ns}'s table 100:\n{}", lab.table(ns, 100)))
}

/// The kernel route BIRD writes for a block learned from `node` (the rendered kernel protocol
/// has BIRD's default metric, 32).
fn via(prefix: &str, node: &str, dev: &str) -> String {
    format!("{prefix} via {node} dev {dev} proto bird metric 32 onlink")
}

/// Three nodes in a mesh on one subnet: a block appears at the others as `via A dev eth0
/// onlink`; after A's intent drops it and BIRD is reloaded it is gone, while BIRD's process and
/// every session stay as they were. A change of the pools (the import filter) restarts no
/// session either.
#[test]
fn a_block_reaches_the_peers_kernel_via_the_node_onlink_and_a_reload_withdraws_it_without_a_restart() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("reload");
    let (a, b, c) = (lab.netns("a"), lab.netns("b"), lab.netns("c"));
    lab.lan(&[(&a, "eth0", "192.168.1.1/24"), (&b, "eth0", "192.168.1.2/24"), (&c, "eth0", "192.168.1.3/24")]);
    let mesh = |others: &[(&str, &str)]| others.iter().map(|(n, ip)| peer(n, ip, 64512, PeerRole::Mesh)).collect();
    let ia = intent(
        "a",
        "192.168.1.1",
        "eth0",
        &["10.244.1.0/26", "10.244.1.64/26"],
        mesh(&[("b", "192.168.1.2"), ("c", "192.168.1.3")]),
    );
    let ib =
        intent("b", "192.168.1.2", "eth0", &["10.244.2.0/26"], mesh(&[("a", "192.168.1.1"), ("c", "192.168.1.3")]));
    let ic =
        intent("c", "192.168.1.3", "eth0", &["10.244.3.0/26"], mesh(&[("a", "192.168.1.1"), ("b", "192.168.1.2")]));
    let bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_b = Bird::start(&lab, &b, "b", &ib);
    let _bird_c = Bird::start(&lab, &c, "c", &ic);

    let t = wait_until("the other nodes' blocks in every table", UP, || {
        [(&a, 2), (&b, 3), (&c, 3)].iter().all(|(ns, n)| lab.table(ns, 100).lines().count() == *n)
    });
    println!("mesh up and routes in the kernel after {t:?}");
    assert_eq!(route_line(&lab, &b, "10.244.1.0/26"), via("10.244.1.0/26", "192.168.1.1", "eth0"));
    assert_eq!(route_line(&lab, &a, "10.244.2.0/26"), via("10.244.2.0/26", "192.168.1.2", "eth0"));
    // Its own blocks are not written to a node's table (vrouter blackholes them itself).
    assert!(lab.route(&a, "10.244.1.0/26").is_none(), "{}", lab.table(&a, 100));
    assert_eq!(lab.table(&b, 100).lines().count(), 3, "{}", lab.table(&b, 100));
    wait_until("every session established", UP, || bird_a.peers().iter().all(|p| p.established()));

    let pid = bird_a.pid();
    let before = bird_a.peers();
    let b_before = bird_b.peer("mesh_a");
    assert_eq!(bird_a.peer("mesh_b").routes.exported, 2);
    // `since` has a resolution of a second: a session restarted now would show another one.
    std::thread::sleep(Duration::from_millis(1100));

    let mut ia2 = ia.clone();
    ia2.export_blocks = vec!["10.244.1.64/26".parse().unwrap()];
    assert_eq!(bird_a.reconfigure(&ia2), ConfigureOutcome::Reconfigured);
    let t = wait_until("10.244.1.0/26 withdrawn", Duration::from_secs(10), || {
        lab.route(&b, "10.244.1.0/26").is_none() && lab.route(&c, "10.244.1.0/26").is_none()
    });
    println!("withdrawn from the peers' kernel tables {t:?} after configure");
    assert!(lab.route(&b, "10.244.1.64/26").is_some(), "the other block stays: {}", lab.table(&b, 100));
    assert_eq!(bird_a.peer("mesh_b").routes.exported, 1);

    let mut ia3 = ia2.clone();
    ia3.pools.push("10.96.0.0/12".parse().unwrap());
    assert_eq!(bird_a.reconfigure(&ia3), ConfigureOutcome::Reconfigured);
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(bird_a.pid(), pid);
    let pidfile: u32 = std::fs::read_to_string(&bird_a.pidfile).unwrap().trim().parse().unwrap();
    assert_eq!(pidfile, pid, "BIRD was not restarted");
    let after = bird_a.peers();
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(x.name, y.name);
        assert!(y.established(), "{y:#?}");
        assert_eq!(x.since, y.since, "{}: the session was not restarted by the reloads", x.name);
        assert!(y.uptime_secs >= x.uptime_secs.map(|u| u + 1), "{x:?} {y:?}");
    }
    assert_eq!(bird_b.peer("mesh_a").since, b_before.since, "nor seen restarted from the other end");
    let status = bird_a.birdc().status().unwrap();
    assert_eq!(status.version, "2.0.12");
    assert_ne!(status.last_reboot, status.last_reconfiguration);
}

/// A peer announcing prefixes outside the pools (or shorter than its pool): they are refused,
/// kept as "filtered" and counted, and never reach the kernel.
#[test]
fn routes_outside_the_pools_are_refused_and_counted_as_filtered() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("filter");
    let (a, r) = (lab.netns("a"), lab.netns("rogue"));
    lab.veth((&a, "eth0", "192.168.1.1/24"), (&r, "eth0", "192.168.1.2/24"));
    let ia = intent(
        "a",
        "192.168.1.1",
        "eth0",
        &["10.244.1.0/26"],
        vec![peer("rogue", "192.168.1.2", 64512, PeerRole::Mesh)],
    );
    // The rogue's own pools let it announce all of these.
    let mut ir = intent(
        "rogue",
        "192.168.1.2",
        "eth0",
        &["10.244.2.0/26", "10.244.0.0/15", "192.0.2.0/24", "10.0.0.0/8"],
        vec![peer("a", "192.168.1.1", 64512, PeerRole::Mesh)],
    );
    ir.pools = vec!["10.0.0.0/8".parse().unwrap(), "192.0.2.0/24".parse().unwrap()];
    let bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_r = Bird::start(&lab, &r, "rogue", &ir);

    wait_until("the rogue's routes counted", UP, || {
        let p = bird_a.peer("mesh_rogue");
        p.routes.imported + p.routes.filtered == 4
    });
    let p = bird_a.peer("mesh_rogue");
    println!("{}: {} imported, {} filtered", p.name, p.routes.imported, p.routes.filtered);
    assert_eq!((p.routes.imported, p.routes.filtered, p.routes.preferred), (1, 3, 1));
    assert_eq!(bird_r.peer("mesh_a").routes.exported, 4);
    wait_until("the pool route in the kernel", UP, || lab.route(&a, "10.244.2.0/26").is_some());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.table(&a, 100).trim(), via("10.244.2.0/26", "192.168.1.2", "eth0"), "only the pool route");
    let metrics = vrouter_bgp::prometheus_text(Some(&bird_a.peers()));
    assert!(
        metrics.contains("peer=\"mesh_rogue\",ip=\"192.168.1.2\",type=\"node-to-node mesh\",kind=\"filtered\"} 3"),
        "{metrics}"
    );
}

/// Passwords that differ: no session (the kernel drops the segments; BIRD sees only silence),
/// and the status says it is the password. The same password on both ends brings it up.
#[test]
fn a_password_mismatch_keeps_the_session_down_and_the_status_says_why() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("md5");
    let (a, b) = (lab.netns("a"), lab.netns("b"));
    lab.veth((&a, "eth0", "192.168.1.1/24"), (&b, "eth0", "192.168.1.2/24"));
    let mut ia =
        intent("a", "192.168.1.1", "eth0", &["10.244.1.0/26"], vec![peer("b", "192.168.1.2", 64512, PeerRole::Mesh)]);
    let mut ib =
        intent("b", "192.168.1.2", "eth0", &["10.244.2.0/26"], vec![peer("a", "192.168.1.1", 64512, PeerRole::Mesh)]);
    ia.peers[0].password = Some("alpha-secret".into());
    ib.peers[0].password = Some("beta-secret".into());
    let bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_b = Bird::start(&lab, &b, "b", &ib);

    let md5 = |bird: &Bird| TcpMd5Counters::read(format!("/proc/{}/net/netstat", bird.pid()).as_ref()).unwrap();
    let mut ever_up = false;
    wait_until("segments dropped for their MD5 signature", UP, || {
        ever_up |= bird_a.established("mesh_b") || bird_b.established("mesh_a");
        md5(&bird_a).failure > 0 && md5(&bird_b).failure > 0
    });
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        ever_up |= bird_a.established("mesh_b") || bird_b.established("mesh_a");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!ever_up, "a session came up with different passwords");
    assert!(lab.route(&a, "10.244.2.0/26").is_none());
    let p = bird_a.peer("mesh_b");
    let why = p.diagnosis(Some(&md5(&bird_a))).unwrap();
    println!("{} ({}): {why}", p.name, p.bgp_state);
    assert!(why.contains("MD5") && why.contains("password"), "{why}");

    ib.peers[0].password = Some("alpha-secret".into());
    bird_b.reconfigure(&ib);
    wait_until("the session with the same password", UP, || lab.route(&a, "10.244.2.0/26").is_some());
    assert!(bird_a.established("mesh_b"));
}

/// BFD: BIRDs killed with -9 lose their routes at the peer within a second, through a multihop
/// (iBGP) and a single-hop (eBGP, a top-of-rack router) BFD session. A third peer killed at
/// the same time, without BFD, keeps its routes: graceful restart holds them (120 s), as it
/// is meant to for a crashed BIRD; only BFD removed the others.
#[test]
fn bfd_withdraws_the_routes_of_a_killed_bird_within_a_second() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("bfd");
    let (a, b, c, t) = (lab.netns("a"), lab.netns("b"), lab.netns("c"), lab.netns("tor"));
    lab.lan(&[
        (&a, "eth0", "192.168.1.1/24"),
        (&b, "eth0", "192.168.1.2/24"),
        (&c, "eth0", "192.168.1.3/24"),
        (&t, "eth0", "192.168.1.254/24"),
    ]);
    let b_peer = |bfd: bool| {
        let mut p = peer("b", "192.168.1.2", 64512, PeerRole::Mesh);
        p.bfd = bfd;
        p
    };
    let ia = intent("a", "192.168.1.1", "eth0", &["10.244.1.0/26"], vec![b_peer(true)]);
    let ic = intent("c", "192.168.1.3", "eth0", &["10.244.3.0/26"], vec![b_peer(false)]);
    let mut it = intent(
        "tor",
        "192.168.1.254",
        "eth0",
        &["10.244.254.0/24"],
        vec![peer("b", "192.168.1.2", 64512, PeerRole::External)],
    );
    it.asn = 65001;
    it.peers[0].bfd = true;
    let mut ib = intent(
        "b",
        "192.168.1.2",
        "eth0",
        &["10.244.2.0/26"],
        vec![
            peer("a", "192.168.1.1", 64512, PeerRole::Mesh),
            peer("c", "192.168.1.3", 64512, PeerRole::Mesh),
            peer("tor", "192.168.1.254", 65001, PeerRole::External),
        ],
    );
    ib.peers[0].bfd = true;
    ib.peers[2].bfd = true;
    let mut bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_b = Bird::start(&lab, &b, "b", &ib);
    let mut bird_c = Bird::start(&lab, &c, "c", &ic);
    let mut bird_t = Bird::start(&lab, &t, "tor", &it);

    let blocks = ["10.244.1.0/26", "10.244.3.0/26", "10.244.254.0/24"];
    wait_until("every block at b", UP, || blocks.iter().all(|p| lab.route(&b, p).is_some()));
    assert_eq!(route_line(&lab, &b, "10.244.254.0/24"), via("10.244.254.0/24", "192.168.1.254", "eth0"));
    let bfd = || bird_b.birdc().raw("show bfd sessions").unwrap().text();
    wait_until("both BFD sessions up", UP, || bfd().lines().filter(|l| l.contains(" Up ")).count() == 2);
    let sessions = bfd();
    let row = |ip: &str| sessions.lines().find(|l| l.trim_start().starts_with(ip)).unwrap_or("").to_string();
    // Multihop sessions have no interface; single-hop ones name theirs.
    assert!(row("192.168.1.1 ").split_whitespace().nth(1) == Some("---"), "{sessions}");
    assert!(row("192.168.1.254 ").split_whitespace().nth(1) == Some("eth0"), "{sessions}");

    let killed = Instant::now();
    bird_a.kill9();
    bird_t.kill9();
    bird_c.kill9();
    let (mut gone_a, mut gone_t) = (None, None);
    while killed.elapsed() < Duration::from_secs(3) {
        let e = killed.elapsed();
        if gone_a.is_none() && lab.route(&b, "10.244.1.0/26").is_none() {
            gone_a = Some(e);
        }
        if gone_t.is_none() && lab.route(&b, "10.244.254.0/24").is_none() {
            gone_t = Some(e);
        }
        assert!(lab.route(&b, "10.244.3.0/26").is_some(), "without BFD, graceful restart keeps c's routes");
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("after kill -9: multihop BFD (iBGP) routes gone in {gone_a:?}, single-hop BFD (eBGP) in {gone_t:?}; without BFD still there after 3 s");
    let bound = Duration::from_secs(3);
    assert!(gone_a.is_some_and(|g| g < bound), "a's routes still at b 3 s after kill -9:\n{}", bird_b.log_text());
    assert!(gone_t.is_some_and(|g| g < bound), "the ToR's routes still at b 3 s after kill -9:\n{}", bird_b.log_text());
    assert!(lab.route(&b, "10.244.3.0/26").is_some());
}

/// Polls the kernel tables of `probes` (namespace, prefix) every 20 ms until stopped, and
/// returns the probes that were found missing at least once, with the number of polls.
fn watch(lab_tables: Vec<(String, String)>) -> (Arc<AtomicBool>, std::thread::JoinHandle<(Vec<String>, u32)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let h = std::thread::spawn(move || {
        let mut missing = Vec::new();
        let mut polls = 0;
        while !s.load(Ordering::Relaxed) {
            for (ns, prefix) in &lab_tables {
                let o = std::process::Command::new("ip")
                    .args(["-n", ns, "route", "show", "table", "100"])
                    .output()
                    .unwrap();
                let table = String::from_utf8_lossy(&o.stdout);
                if !table.lines().any(|l| l.split_whitespace().next() == Some(prefix)) {
                    missing.push(format!("{prefix} in {ns} at poll {polls}"));
                }
            }
            polls += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (missing, polls)
    });
    (stop, h)
}

fn pair(lab: &mut Lab, bfd: bool) -> (String, String, BgpIntent, BgpIntent) {
    let (a, b) = (lab.netns("a"), lab.netns("b"));
    lab.veth((&a, "eth0", "192.168.1.1/24"), (&b, "eth0", "192.168.1.2/24"));
    let mut ia =
        intent("a", "192.168.1.1", "eth0", &["10.244.1.0/26"], vec![peer("b", "192.168.1.2", 64512, PeerRole::Mesh)]);
    let mut ib =
        intent("b", "192.168.1.2", "eth0", &["10.244.2.0/26"], vec![peer("a", "192.168.1.1", 64512, PeerRole::Mesh)]);
    ia.peers[0].bfd = bfd;
    ib.peers[0].bfd = bfd;
    (a, b, ia, ib)
}

/// `graceful restart` then a start with -R on the same config: the peer keeps a's routes all
/// along, and a's own table keeps the peer's (the kernel protocol waits for the sessions
/// before syncing).
#[test]
fn graceful_restart_keeps_the_routes_on_both_sides_through_a_bird_restart() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("gr");
    let (a, b, ia, ib) = pair(&mut lab, false);
    let mut bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_b = Bird::start(&lab, &b, "b", &ib);
    wait_until("routes both ways", UP, || {
        lab.route(&b, "10.244.1.0/26").is_some() && lab.route(&a, "10.244.2.0/26").is_some()
    });

    // Polls every 20 ms, and netlink events for a delete followed at once by an add.
    let (mon_a, mon_b) = (lab.dir.join("a-monitor.txt"), lab.dir.join("b-monitor.txt"));
    let mut monitors = [common::Monitor::start(&a, &mon_a), common::Monitor::start(&b, &mon_b)];
    let (stop, watcher) = watch(vec![(b.clone(), "10.244.1.0/26".into()), (a.clone(), "10.244.2.0/26".into())]);
    let old_pid = bird_a.pid();
    let started = Instant::now();
    let r = bird_a.birdc().raw("graceful restart").unwrap();
    assert_eq!(r.code(), 25, "{r:?}");
    bird_a.wait_exit(Duration::from_secs(10));
    bird_a.spawn(&["-R"]);
    assert_ne!(bird_a.pid(), old_pid);
    wait_until("a's session back and its recovery over", UP, || {
        bird_a.established("mesh_b") && !bird_a.birdc().status().unwrap().graceful_restart_recovery
    });
    let window = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (missing, polls) = watcher.join().unwrap();
    println!(
        "graceful restart: {window:?} from the command to a's recovery done, {polls} polls of both tables, {} misses",
        missing.len()
    );
    assert!(missing.is_empty(), "routes disappeared: {missing:?}\n{}", bird_b.log_text());
    assert!(polls > 10, "the watch ran through the restart");
    monitors.iter_mut().for_each(common::Monitor::stop);
    for (ns, events) in [(&a, &mon_a), (&b, &mon_b)] {
        let events = std::fs::read_to_string(events).unwrap();
        assert!(!events.contains("Deleted"), "a route of {ns} was deleted, if only for a moment:\n{events}");
    }
    assert_eq!(route_line(&lab, &b, "10.244.1.0/26"), via("10.244.1.0/26", "192.168.1.1", "eth0"));
    assert!(bird_b.established("mesh_a"));
}

/// The same restart without -R is not graceful: the restarted BIRD empties its kernel table
/// at start (its kernel protocol syncs before the sessions are back), and the peer drops its
/// routes when it reconnects (the new session does not say forwarding was preserved).
#[test]
fn a_restart_without_dash_r_loses_the_routes_on_both_sides() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("nor");
    let (a, b, ia, ib) = pair(&mut lab, false);
    let mut bird_a = Bird::start(&lab, &a, "a", &ia);
    let _bird_b = Bird::start(&lab, &b, "b", &ib);
    wait_until("routes both ways", UP, || {
        lab.route(&b, "10.244.1.0/26").is_some() && lab.route(&a, "10.244.2.0/26").is_some()
    });

    // b deletes and adds the route again within milliseconds: netlink events catch that.
    let monitor_out = lab.dir.join("b-monitor.txt");
    let mut monitor = common::Monitor::start(&b, &monitor_out);
    let (stop, watcher) = watch(vec![(a.clone(), "10.244.2.0/26".into())]);
    bird_a.birdc().raw("graceful restart").unwrap();
    bird_a.wait_exit(Duration::from_secs(10));
    bird_a.spawn(&[]);
    wait_until("a's session back", UP, || bird_a.established("mesh_b"));
    wait_until("routes both ways again", UP, || {
        lab.route(&b, "10.244.1.0/26").is_some() && lab.route(&a, "10.244.2.0/26").is_some()
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (missing, polls) = watcher.join().unwrap();
    monitor.stop();
    let events = std::fs::read_to_string(&monitor_out).unwrap();
    println!(
        "restart without -R: a's own table without b's route for {} of {polls} polls; at b:\n{events}",
        missing.len()
    );
    assert!(!missing.is_empty(), "a's own table kept b's routes");
    assert!(events.lines().any(|l| l.starts_with("Deleted 10.244.1.0/26 ")), "b kept a's routes:\n{events}");
}

/// What BIRD 2.0.12 does with BFD on a session whose peer restarts gracefully: the restarting
/// BIRD stops answering BFD (it sends no AdminDown, and 2.0.12 would take one as a failure
/// anyway), the peer's BFD declares the session down and BGP drops the graceful restart and
/// the routes within a second. BFD and graceful restart exclude each other on a session; the
/// routes come back once the restarted BIRD is up.
#[test]
fn bfd_turns_a_planned_graceful_restart_into_a_withdrawal_in_bird_2_0_12() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("grbfd");
    let (a, b, ia, ib) = pair(&mut lab, true);
    let mut bird_a = Bird::start(&lab, &a, "a", &ia);
    let bird_b = Bird::start(&lab, &b, "b", &ib);
    wait_until("routes both ways", UP, || {
        lab.route(&b, "10.244.1.0/26").is_some() && lab.route(&a, "10.244.2.0/26").is_some()
    });
    wait_until("BFD up", UP, || bird_b.birdc().raw("show bfd sessions").unwrap().text().contains(" Up "));

    let started = Instant::now();
    bird_a.birdc().raw("graceful restart").unwrap();
    bird_a.wait_exit(Duration::from_secs(10));
    bird_a.spawn(&["-R"]);
    wait_until("a's routes withdrawn at b", Duration::from_secs(3), || lab.route(&b, "10.244.1.0/26").is_none());
    println!(
        "with BFD, a planned graceful restart withdrew the routes at the peer {:?} after the command",
        started.elapsed()
    );
    wait_until("a's routes back at b", UP, || lab.route(&b, "10.244.1.0/26").is_some());
    // a's own table was kept through the restart all the same (its kernel protocol waited).
    assert!(lab.route(&a, "10.244.2.0/26").is_some());
}

/// A route reflector on another subnet than its clients (a router between): each client's
/// block reaches the other client with the client as next hop (the reflector does not
/// rewrite it), and off-subnet next hops are written `onlink`.
#[test]
fn a_route_reflector_keeps_next_hops_and_off_subnet_next_hops_are_onlink() {
    if skip(true).is_some() {
        return;
    }
    let mut lab = Lab::new("rr");
    let (a, r, b, c) = (lab.netns("rr"), lab.netns("router"), lab.netns("b"), lab.netns("c"));
    lab.veth((&a, "eth0", "192.168.1.1/24"), (&r, "eth0", "192.168.1.254/24"));
    lab.lan(&[(&b, "eth0", "192.168.2.2/24"), (&c, "eth0", "192.168.2.3/24"), (&r, "eth1", "192.168.2.254/24")]);
    let o = lab.exec(&r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert!(o.status.success(), "{}", common::text(&o));
    common::ok(&["ip", "-n", &a, "route", "add", "default", "via", "192.168.1.254"]);
    for ns in [&b, &c] {
        common::ok(&["ip", "-n", ns, "route", "add", "default", "via", "192.168.2.254"]);
    }
    let mut ia = intent(
        "rr",
        "192.168.1.1",
        "eth0",
        &["10.244.1.0/26"],
        vec![
            peer("b", "192.168.2.2", 64512, PeerRole::ReflectorClient),
            peer("c", "192.168.2.3", 64512, PeerRole::ReflectorClient),
        ],
    );
    ia.route_reflector_cluster_id = Some("192.168.1.1".parse().unwrap());
    let client = |n: &str, ip: &str, block: &str| {
        intent(n, ip, "eth0", &[block], vec![peer("rr", "192.168.1.1", 64512, PeerRole::Reflector)])
    };
    let bird_a = Bird::start(&lab, &a, "rr", &ia);
    let _bird_b = Bird::start(&lab, &b, "b", &client("b", "192.168.2.2", "10.244.2.0/26"));
    let bird_c = Bird::start(&lab, &c, "c", &client("c", "192.168.2.3", "10.244.3.0/26"));

    wait_until("every block everywhere", UP, || {
        lab.route(&b, "10.244.3.0/26").is_some()
            && lab.route(&c, "10.244.2.0/26").is_some()
            && lab.route(&b, "10.244.1.0/26").is_some()
            && lab.route(&a, "10.244.3.0/26").is_some()
    });
    // Reflected: the next hop is the client that announced it, not the reflector.
    assert_eq!(route_line(&lab, &b, "10.244.3.0/26"), via("10.244.3.0/26", "192.168.2.3", "eth0"));
    assert_eq!(route_line(&lab, &c, "10.244.2.0/26"), via("10.244.2.0/26", "192.168.2.2", "eth0"));
    // Off-subnet: the announcing node itself, onlink, not the router between.
    assert_eq!(route_line(&lab, &b, "10.244.1.0/26"), via("10.244.1.0/26", "192.168.1.1", "eth0"));
    assert_eq!(route_line(&lab, &a, "10.244.2.0/26"), via("10.244.2.0/26", "192.168.2.2", "eth0"));
    let client_b = bird_a.peer("rrclient_b");
    assert_eq!((client_b.role, client_b.routes.exported), (Some(PeerRole::ReflectorClient), 2), "{client_b:#?}");
    let rr = bird_c.peer("rr_rr");
    assert_eq!((rr.peer_type(), rr.routes.imported), ("route reflector", 2), "{rr:#?}");
}

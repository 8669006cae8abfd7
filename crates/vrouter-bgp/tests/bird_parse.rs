//! Every kind of config the renderer writes is accepted by BIRD itself (`bird -p`: parse and
//! check, no root needed).

mod common;

use std::process::Command;

use common::{intent, peer, skip, text};
use vrouter_bgp::{render, BfdTiming, BgpIntent, PeerRole};

fn variants() -> Vec<(&'static str, BgpIntent)> {
    let mesh = intent(
        "node1",
        "192.168.1.10",
        "vrhost",
        &["10.244.1.0/26", "10.244.1.64/26"],
        vec![
            peer("node2", "192.168.1.20", 64512, PeerRole::Mesh),
            peer("node3", "192.168.2.30", 64512, PeerRole::Mesh),
        ],
    );
    let mut v = vec![("mesh", mesh.clone())];

    let mut x = mesh.clone();
    x.peers[0].bfd = true;
    x.peers[1].password = Some(r"p@ss\word 'x' #1 {};".into());
    x.bfd = BfdTiming { interval_ms: 50, multiplier: 5 };
    v.push(("mesh with BFD and a password", x));

    let mut x = mesh.clone();
    x.graceful_restart_secs = 0;
    v.push(("graceful restart off", x));

    let mut x = mesh.clone();
    x.graceful_restart_secs = vrouter_bgp::MAX_GRACEFUL_RESTART_SECS;
    v.push(("longest graceful restart", x));

    let mut x = mesh.clone();
    x.route_reflector_cluster_id = Some("10.255.0.1".parse().unwrap());
    x.peers = vec![
        peer("node2", "192.168.1.20", 64512, PeerRole::ReflectorClient),
        peer("node3", "192.168.2.30", 64512, PeerRole::ReflectorClient),
        peer("rr2", "192.168.1.11", 64512, PeerRole::Reflector),
        peer("tor", "192.168.1.1", 65001, PeerRole::External),
    ];
    x.peers[0].bfd = true;
    x.peers[3].bfd = true;
    v.push(("route reflector", x));

    let mut x = mesh.clone();
    x.peers = vec![peer("rr1", "192.168.1.11", 64512, PeerRole::Reflector)];
    v.push(("reflector client", x));

    let mut x = mesh.clone();
    x.peers = vec![
        peer("tor-a", "192.168.1.1", 65001, PeerRole::External),
        peer("tor-b", "192.168.1.2", 4_200_000_001, PeerRole::External),
        peer("ibgp-tor", "192.168.1.3", 64512, PeerRole::External),
    ];
    x.peers[0].bfd = true;
    x.peers[1].password = Some("x".repeat(80));
    v.push(("external peers", x));

    let mut x = mesh.clone();
    x.peers.clear();
    x.export_blocks.clear();
    v.push(("no peers, no blocks", x));

    let mut x = mesh.clone();
    x.pools.push("10.96.0.0/12".parse().unwrap());
    x.pools.push("0.0.0.0/0".parse().unwrap());
    x.kernel_table = 254;
    x.device = "eth0.100@x".into();
    x.peers = (0..50)
        .map(|i| {
            let name =
                format!("ip-10-0-{i}-5.eu-west-1.compute.internal-with-a-name-longer-than-sixty-four-characters");
            peer(&name, &format!("10.0.{i}.5"), 64512, PeerRole::Mesh)
        })
        .collect();
    v.push(("long node names, many peers, main table", x));

    let mut x = mesh;
    x.node = "nœud-ü".into();
    x.peers = vec![peer("nœud-2", "192.168.1.20", 64512, PeerRole::Mesh)];
    v.push(("non-ASCII names", x));
    v
}

#[test]
fn every_rendered_variant_is_accepted_by_bird() {
    if skip(false).is_some() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vrouter-bgp-parse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut failures = Vec::new();
    for (i, (what, intent)) in variants().into_iter().enumerate() {
        let conf = render(&intent).unwrap_or_else(|e| panic!("{what}: {e}"));
        let path = dir.join(format!("{i}.conf"));
        std::fs::write(&path, &conf).unwrap();
        let o = Command::new("bird").args(["-p", "-c", path.to_str().unwrap()]).output().unwrap();
        if !o.status.success() {
            failures.push(format!("{what}: {}\n{conf}", text(&o)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(failures.is_empty(), "BIRD refused:\n{}", failures.join("\n"));
}

#[test]
fn bird_refuses_what_the_renderer_would_refuse_so_the_checks_are_needed() {
    // A password with a quote, written as is, breaks BIRD's parse: the renderer's check is
    // what keeps a bad password from taking the whole node's BGP down at the next reload.
    if skip(false).is_some() {
        return;
    }
    let path = std::env::temp_dir().join(format!("vrouter-bgp-quote-{}.conf", std::process::id()));
    let mut i = intent("n", "192.168.1.10", "vrhost", &[], vec![peer("p", "192.168.1.20", 64512, PeerRole::Mesh)]);
    i.peers[0].password = Some("ok".into());
    let conf = render(&i).unwrap().replace("password \"ok\"", "password \"a\"b\"");
    std::fs::write(&path, conf).unwrap();
    let o = Command::new("bird").args(["-p", "-c", path.to_str().unwrap()]).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(!o.status.success(), "{}", text(&o));
    i.peers[0].password = Some("a\"b".into());
    assert!(render(&i).is_err());
}

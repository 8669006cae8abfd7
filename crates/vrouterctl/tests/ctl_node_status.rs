//! `vrouterctl node status` against a stand-in BIRD that answers with replies recorded from
//! BIRD 2.0.12 (a route reflector with one client up, one peer refusing, one unreachable, one
//! disabled, and an eBGP top-of-rack router unreachable). No root needed.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const STATUS: &str = include_str!("../../vrouter-bgp/src/testdata/status.txt");
const PROTOCOLS: &str = include_str!("../../vrouter-bgp/src/testdata/proto_all_rr.txt");

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn sock(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("vrctl-bird-{tag}-{}.ctl", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// A BIRD stand-in answering `connections` connections, one command each, with the recording.
fn fake_bird(path: &Path, connections: usize) -> std::thread::JoinHandle<Vec<String>> {
    let l = UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        let mut asked = Vec::new();
        for _ in 0..connections {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").unwrap();
            let mut cmd = String::new();
            BufReader::new(&s).read_line(&mut cmd).unwrap();
            let recorded = match cmd.trim() {
                "show status" => STATUS,
                "show protocols all" => PROTOCOLS,
                other => panic!("unexpected command {other:?}"),
            };
            // The recording starts with the greeting, sent above.
            s.write_all(recorded.split_once('\n').unwrap().1.as_bytes()).unwrap();
            asked.push(cmd.trim().to_string());
        }
        asked
    })
}

fn ctl(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vrouterctl"));
    c.args(args).env_remove("BIRD_SOCKET").env_remove("VROUTER_SOCKET");
    c
}

#[test]
fn node_status_shows_each_session_like_calicoctl_with_routes_and_why_it_is_down() {
    let p = sock("table");
    let bird = fake_bird(&p, 2);
    let o = ctl(&["node", "status", "--bird-socket", p.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(bird.join().unwrap(), ["show status", "show protocols all"]);
    let out = String::from_utf8_lossy(&o.stdout);
    println!("{out}");
    assert!(
        out.starts_with(&format!("BIRD 2.0.12 at {}: Daemon is up and running, router ID 10.0.0.1\n", p.display())),
        "{out}"
    );
    let header = out.lines().find(|l| l.starts_with("PEER ADDRESS")).unwrap();
    let cols: Vec<&str> = header.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(
        cols,
        ["PEER ADDRESS", "NAME", "PEER TYPE", "STATE", "SINCE", "UPTIME", "INFO", "IMPORTED", "REFUSED", "EXPORTED"]
    );
    let row = |ip: &str| out.lines().find(|l| l.starts_with(ip)).unwrap_or_else(|| panic!("no {ip} row:\n{out}"));
    let up = row("10.0.0.2 ");
    for want in ["node2", "route reflector client", " up ", "2026-12-02 14:09:05 +0000", "Established"] {
        assert!(up.contains(want), "{want:?} in {up}");
    }
    // imported, refused, exported.
    assert!(up.trim_end().ends_with("1         2        1"), "{up}");
    assert!(row("10.0.1.3 ").contains("node-to-node mesh") && row("10.0.1.3 ").contains("Active"));
    assert!(row("10.0.0.254 ").contains("external"));
    assert!(out.contains("10.0.1.3 (mesh_node3): Socket: Connection refused: nothing listens on port 179"), "{out}");
    assert!(out.contains("10.0.0.5 (mesh_node5): disabled"), "{out}");
    assert!(out.contains("10.0.0.4 (mesh_node4): Socket: No route to host: "), "{out}");
    assert!(!out.contains("10.0.0.2 (rrclient_node2)"), "an established session needs no explanation:\n{out}");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn node_status_json_has_bird_and_the_sessions_with_counts() {
    let p = sock("json");
    let bird = fake_bird(&p, 2);
    // The socket from the environment, --json anywhere on the line.
    let o = ctl(&["--json", "node", "status"]).env("BIRD_SOCKET", &p).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    bird.join().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bird"]["version"], "2.0.12");
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 5);
    let client = peers.iter().find(|p| p["name"] == "rrclient_node2").unwrap();
    assert_eq!(client["role"], "ReflectorClient");
    assert_eq!((&client["peer"], &client["tcp_md5"]), (&serde_json::json!("node2"), &serde_json::json!(true)));
    assert_eq!(client["neighbor_ip"], "10.0.0.2");
    assert_eq!(client["bgp_state"], "Established");
    assert_eq!(client["since_unix"], 1_796_220_545);
    assert_eq!(client["routes"], serde_json::json!({"imported": 1, "filtered": 2, "exported": 1, "preferred": 1}));
    assert!(client.get("diagnosis").is_none(), "{client}");
    let refused = peers.iter().find(|p| p["name"] == "mesh_node3").unwrap();
    assert_eq!(refused["last_error"], "Socket: Connection refused");
    assert!(refused["diagnosis"].as_str().unwrap().contains("port 179"), "{refused}");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn node_status_without_bird_names_the_socket_and_says_bird_is_not_running() {
    let p = sock("missing");
    let o = ctl(&["node", "status", "--bird-socket", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(p.to_str().unwrap()) && err.contains("BIRD is not running"), "{err}");
    // Something that is not BIRD on the socket.
    let _l = UnixListener::bind(&p).unwrap();
    drop(_l);
    let o = ctl(&["node", "status", "--bird-socket", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing listens"), "{}", text(&o));
    let _ = std::fs::remove_file(&p);
}

//! `vrouterctl` as a program, against a stand-in daemon (a Unix socket in the test that answers
//! one canned reply): where global options go, `capture -w -`, and what it says when the
//! socket cannot be used. No root needed, except the permission test (setpriv to nobody).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vrctl-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A daemon stand-in at `sock`: answers the first request with `result`; returns the request.
fn fake_daemon(sock: &PathBuf, result: serde_json::Value) -> std::thread::JoinHandle<serde_json::Value> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        let reply = serde_json::json!({"version": 1, "ok": true, "result": result});
        (&s).write_all(format!("{reply}\n").as_bytes()).unwrap();
        serde_json::from_str(&line).unwrap()
    })
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vrouterctl")).args(args).env_remove("VROUTER_SOCKET").output().unwrap()
}

#[test]
fn socket_and_json_are_accepted_after_the_subcommand() {
    let d = dir("global");
    let sock = d.join("ctl.sock");
    let daemon = fake_daemon(&sock, serde_json::json!({"node": "n1"}));
    let o = ctl(&["status", "-s", sock.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(daemon.join().unwrap()["request"]["cmd"], "status");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["node"], "n1");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn capture_dash_w_dash_writes_pcap_to_stdout() {
    let d = dir("capture");
    let sock = d.join("ctl.sock");
    let frame = serde_json::json!({"ts_ns": 1_700_000_000_000_000_000u64, "port": 0, "point": "rx",
        "orig_len": 60, "data": "ab".repeat(60)});
    let daemon = fake_daemon(&sock, serde_json::json!({"frames": [frame]}));
    let o = ctl(&["-s", sock.to_str().unwrap(), "capture", "-c", "1", "-w", "-"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(daemon.join().unwrap()["request"]["cmd"], "capture");
    assert!(!std::path::Path::new("-").exists(), "no file named '-'");
    // The nanosecond pcap magic (either byte order), then one 60-byte frame; the summary on
    // stderr.
    let magic = &o.stdout[..4];
    assert!(magic == [0xa1, 0xb2, 0x3c, 0x4d] || magic == [0x4d, 0x3c, 0xb2, 0xa1], "{:?}", &o.stdout[..16]);
    assert_eq!(o.stdout.len(), 24 + 16 + 60);
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrote 1 frames to stdout"), "{}", text(&o));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn no_daemon_and_no_permission_are_told_apart() {
    let d = dir("perm");
    let sock = d.join("ctl.sock");
    let o = ctl(&["-s", sock.to_str().unwrap(), "status"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("no daemon at") && text(&o).contains("no such socket"), "{}", text(&o));
    assert!(is_root(), "the permission check needs root (setpriv to another user)");
    let _l = UnixListener::bind(&sock).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o660)).unwrap();
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", env!("CARGO_BIN_EXE_vrouterctl"), "-s"])
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("permission denied on") && t.contains("control group"), "{t}");
    assert!(!t.contains("running?"), "not a missing daemon: {t}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn apply_if_generation_is_sent_and_the_client_lib_tells_no_daemon_from_a_refusal() {
    let d = dir("ifgen");
    let sock = d.join("ctl.sock");
    let cfg = d.join("node.toml");
    std::fs::write(&cfg, "[node]\n").unwrap();
    let daemon = fake_daemon(&sock, serde_json::json!({"routes_changed": 0}));
    let o =
        ctl(&["apply", "-f", cfg.to_str().unwrap(), "--if-generation", "7", "-s", sock.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let req = daemon.join().unwrap();
    assert_eq!((req["request"]["cmd"].as_str(), req["request"]["if_generation"].as_u64()), (Some("apply"), Some(7)));
    // No daemon: Unreachable (a caller may try again later), not a refusal.
    let gone = d.join("none.sock");
    let e = vrouterctl::apply_config(&gone, String::new(), Some(1), std::time::Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, vrouterctl::CallError::Unreachable(ref m) if m.contains("no daemon at")), "{e:?}");
    let _ = std::fs::remove_dir_all(&d);
}

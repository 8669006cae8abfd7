//! README.md's "One node by hand" followed as written (root): its shell steps are taken from
//! the README between the `by-hand` markers, given unique names, and run with bash; then the
//! stop steps. What the operator would see is checked.

mod common;

use std::process::Command;

use common::{is_root, sh};

/// The shell block between `<!-- by-hand:NAME -->` and the next marker.
fn block(readme: &str, name: &str) -> String {
    let start = readme.find(&format!("<!-- by-hand:{name} -->")).unwrap_or_else(|| panic!("no marker {name}"));
    let rest = &readme[start..];
    let code = rest.split("```sh\n").nth(1).expect("a sh block after the marker");
    code.split("\n```").next().unwrap().to_string()
}

#[test]
fn the_readme_steps_run_a_node_by_hand() {
    assert!(is_root(), "needs root (network namespaces, AF_XDP, TAP)");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let p = format!("rbh{:04x}", std::process::id() & 0xffff);
    let unique = |s: String| {
        s.replace("node1", &format!("{p}-node1"))
            .replace(" router", &format!(" {p}-router"))
            .replace("pod-a", &format!("{p}-pod-a"))
    };
    let (run, stop) = (unique(block(&readme, "start")), unique(block(&readme, "stop")));
    assert!(run.contains("vrouter check-config --env") && run.contains("vrouter run") && stop.contains("ip netns del"));
    let dir = std::env::temp_dir().join(format!("{p}-readme"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(String, std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for n in ["pod-a", "router", "node1"] {
                let _ = sh(&["ip", "netns", "del", &format!("{}-{n}", self.0)]);
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let _cleanup = Cleanup(p.clone(), dir.clone());
    // The binaries this test was built with, first on PATH (the README assumes target/release).
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vrouter")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let script =
        format!("set -euo pipefail\ntrap 'exit 1' TERM\ntrap 'set +e; {}' EXIT\n{run}\n", stop.replace('\'', "'\\''"));
    let o = Command::new("timeout")
        .args(["90", "bash", "-c", &script])
        .current_dir(&dir)
        .env("PATH", path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    let log = std::fs::read_to_string(dir.join(format!("{p}-node1.log"))).unwrap_or_default();
    let all = format!("stdout:\n{out}\nstderr:\n{err}\ndaemon log:\n{log}");
    assert!(o.status.success(), "{all}");
    assert!(out.contains(&format!("valid (node {p}-node1, 1 endpoints")), "{all}");
    assert!(out.contains("this machine has what it needs"), "{all}");
    assert!(out.contains(&format!("{p}-pod-a")) && out.contains("tappoda"), "endpoints: {all}");
    assert!(out.contains("10.244.1.2 uses 10.244.1.2/32 (node)"), "routes ADDR: {all}");
    assert_eq!(out.matches("3 packets transmitted, 3 received").count(), 2, "both pings: {all}");
    assert!(log.contains("forwarding") && log.contains("stopped cleanly"), "{all}");
    assert!(!std::path::Path::new(&format!("/run/vrouter/{p}-node1.sock")).exists(), "socket removed");
    let left = String::from_utf8_lossy(&sh(&["ip", "netns", "list"]).stdout).to_string();
    assert!(!left.contains(&p), "the stop steps delete the namespaces: {left}");
}

//! scripts/dev.sh installs what a minimal Debian lacks and builds what the README then uses.

use std::process::Command;

fn script() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev.sh")).unwrap()
}

#[test]
fn dev_sh_parses() {
    let o = Command::new("bash").args(["-n", concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/dev.sh")]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn dev_sh_installs_make_procps_and_curl() {
    let s = script();
    let line = s.lines().find(|l| l.starts_with("PACKAGES=(")).expect("a PACKAGES line");
    let packages: Vec<&str> = line.trim_start_matches("PACKAGES=(").trim_end_matches(')').split_whitespace().collect();
    // libbpf-sys's build runs make; the lab and the tests call sysctl (procps) and curl; the
    // etcd client builds with protoc; the cluster runs etcd, and its CNI tests podman on runc.
    for p in [
        "make",
        "procps",
        "curl",
        "protobuf-compiler",
        "etcd-server",
        "etcd-client",
        "podman",
        "runc",
        "busybox-static",
    ] {
        assert!(packages.contains(&p), "{p} missing from {packages:?}");
    }
}

#[test]
fn dev_sh_demo_builds_vrouterctl_the_agent_and_the_cni_plugin_too() {
    let s = script();
    let demo = &s[s.find("    demo)").expect("a demo case")..];
    let demo = &demo[..demo.find(";;").unwrap()];
    // Each is its own package: the root package alone would not build them, and the cluster
    // lab runs them beside the vrouter binary.
    for p in ["-p vrouter ", "-p vrouterctl ", "-p vrouter-agent ", "-p vrouter-cni"] {
        assert!(demo.contains(p), "{p} missing from: {demo}");
    }
}

#[test]
fn dev_sh_test_checks_format_and_lints_before_the_suite() {
    let s = script();
    let test = &s[s.find("    test)").expect("a test case")..];
    let test = &test[..test.find(";;").unwrap()];
    let at = |what: &str| test.find(what).unwrap_or_else(|| panic!("`{what}` missing from:\n{test}"));
    assert!(at("cargo fmt --all --check") < at("cargo test --workspace"));
    assert!(at("cargo clippy --workspace --all-targets -- -D warnings") < at("cargo test --workspace"));
    // The cluster tests run every package's binary.
    assert!(at("cargo build --workspace --bins") < at("cargo test --workspace"));
}

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
    // libbpf-sys's build runs make; the lab and the tests call sysctl (procps) and curl.
    for p in ["make", "procps", "curl"] {
        assert!(packages.contains(&p), "{p} missing from {packages:?}");
    }
}

#[test]
fn dev_sh_demo_builds_vrouterctl_too() {
    let s = script();
    let demo = &s[s.find("    demo)").expect("a demo case")..];
    let demo = &demo[..demo.find(";;").unwrap()];
    // vrouterctl is its own package (crates/vrouterctl): the root package alone would not build it.
    assert!(demo.contains("-p vrouter ") && demo.contains("-p vrouterctl"), "{demo}");
}

#[test]
fn dev_sh_test_checks_format_and_lints_before_the_suite() {
    let s = script();
    let test = &s[s.find("    test)").expect("a test case")..];
    let test = &test[..test.find(";;").unwrap()];
    let at = |what: &str| test.find(what).unwrap_or_else(|| panic!("`{what}` missing from:\n{test}"));
    assert!(at("cargo fmt --all --check") < at("cargo test --workspace"));
    assert!(at("cargo clippy --workspace --all-targets -- -D warnings") < at("cargo test --workspace"));
}

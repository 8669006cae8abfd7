//! The plugin stays small: nothing of the data plane is linked (a runtime starts it once per
//! pod; it must build without clang and start in milliseconds).

#[test]
fn no_data_plane_crate_is_linked() {
    let o = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "vrouter-cni", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(o.status.success(), "cargo tree: {}", String::from_utf8_lossy(&o.stderr));
    let tree = String::from_utf8_lossy(&o.stdout);
    assert!(tree.contains("vrouter-cluster") && tree.contains("vrouterctl"), "{tree}");
    for banned in ["xsk-rs", "libbpf-sys", "libxdp-sys", "netlink-", "vrouter-core", "tun-tap"] {
        assert!(!tree.lines().any(|l| l.starts_with(banned)), "vrouter-cni links {banned}:\n{tree}");
    }
}

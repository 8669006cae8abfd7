//! The exact bird.conf of a mesh node, kept in tests/data/mesh_node.conf: a change to the
//! renderer shows in review as a change to that file (regenerate with
//! `VROUTER_BGP_BLESS=1 cargo test -p vrouter-bgp --test golden`).

mod common;

use common::{intent, peer};
use vrouter_bgp::{render, PeerRole};

#[test]
fn a_mesh_node_renders_exactly_the_recorded_config() {
    let mut i = intent(
        "node1",
        "192.168.1.10",
        "vrhost",
        &["10.244.1.0/26"],
        vec![
            peer("node2", "192.168.1.20", 64512, PeerRole::Mesh),
            peer("node3", "192.168.2.30", 64512, PeerRole::Mesh),
        ],
    );
    i.peers[0].bfd = true;
    i.peers[1].password = Some("s3cret".into());
    let conf = render(&i).unwrap();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mesh_node.conf");
    if std::env::var_os("VROUTER_BGP_BLESS").is_some() {
        std::fs::write(path, &conf).unwrap();
    }
    let want = std::fs::read_to_string(path).unwrap();
    assert!(conf == want, "render differs from {path} (VROUTER_BGP_BLESS=1 rewrites it):\n{conf}");
}

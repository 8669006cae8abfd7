//! How a container's interface is named everywhere (docs/cni.md, "Endpoint identity"): its
//! WorkloadEndpoint, the daemon's endpoint, the host TAP and the pod's MAC all derive from the
//! node, the namespace, the container ID and the interface name, so that ADD, DEL and CHECK
//! (and the node agent, from the WorkloadEndpoint) find the same things without state of their own.

use vrouter_types::MacAddr;

/// The names of one container interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The WorkloadEndpoint's namespace.
    pub namespace: String,
    /// The WorkloadEndpoint's name: `<node>-cni-<container ID, first 12>-<ifname>`.
    pub wep: String,
    /// The daemon's endpoint: `<namespace>/<wep>`.
    pub endpoint: String,
    /// The host TAP (the WorkloadEndpoint's `interfaceName`): `vr` + 11 hex digits of a hash of
    /// (namespace, wep), 13 characters (a Linux name has at most 15).
    pub tap: String,
    /// A locally administered unicast MAC, the same for every call about this container and
    /// interface.
    pub mac: MacAddr,
}

impl Identity {
    pub fn new(node: &str, namespace: &str, container_id: &str, ifname: &str) -> Identity {
        let short: String = container_id.chars().take(12).collect::<String>().to_ascii_lowercase();
        let wep = format!("{node}-cni-{short}-{ifname}");
        let tap_hash = fnv1a(&[namespace.as_bytes(), b"/", wep.as_bytes()]);
        let tap = format!("vr{:011x}", tap_hash >> 20);
        let h = fnv1a(&[container_id.as_bytes(), b"/", ifname.as_bytes()]).to_be_bytes();
        // Locally administered (bit 1) and unicast (bit 0 clear) in the first octet.
        let mac = MacAddr([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]]);
        Identity { namespace: namespace.to_string(), endpoint: format!("{namespace}/{wep}"), wep, tap, mac }
    }
}

/// FNV-1a, 64 bits: stable across builds and machines (the TAP name and the MAC must be the
/// same for the plugin and for whoever reads them back), and no dependency.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "8D3F0F4C2B1A9e8d7c6b5a4f3e2d1c0b8d3f0f4c2b1a9e8d7c6b5a4f3e2d1c0b";

    #[test]
    fn names_follow_the_design() {
        let i = Identity::new("n1", "default", ID, "eth0");
        assert_eq!(i.wep, "n1-cni-8d3f0f4c2b1a-eth0");
        assert_eq!(i.endpoint, "default/n1-cni-8d3f0f4c2b1a-eth0");
        assert_eq!(i.tap.len(), 13);
        assert!(i.tap.starts_with("vr") && i.tap[2..].chars().all(|c| c.is_ascii_hexdigit()), "{}", i.tap);
        assert!(i.mac.is_unicast() && i.mac.0[0] & 2 == 2, "{}", i.mac);
    }

    #[test]
    fn the_same_container_gets_the_same_names_and_others_differ() {
        assert_eq!(Identity::new("n1", "default", ID, "eth0"), Identity::new("n1", "default", ID, "eth0"));
        let other_ns = Identity::new("n1", "ops", ID, "eth0");
        let other_if = Identity::new("n1", "default", ID, "eth1");
        let base = Identity::new("n1", "default", ID, "eth0");
        assert_ne!(other_ns.tap, base.tap);
        assert_ne!(other_if.tap, base.tap);
        assert_ne!(other_if.mac, base.mac);
        // Over many containers, no TAP name or MAC repeats (44 and 46 bits of hash).
        let mut taps = std::collections::HashSet::new();
        let mut macs = std::collections::HashSet::new();
        for n in 0..20_000 {
            let i = Identity::new("n1", "default", &format!("{n:012x}{:052x}", 0), "eth0");
            assert!(taps.insert(i.tap) && macs.insert(i.mac.0), "container {n}");
        }
    }
}

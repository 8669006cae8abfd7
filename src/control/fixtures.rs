//! Config snippets for tests and benchmarks (in-memory nodes): one node on 192.168.1.10/24
//! with pod block 10.244.1.0/26, pods and peers by number.

/// `[node]` and `[uplink]` of the test node `name` (uplink `eth9`, gateway 192.168.1.1).
pub fn node_toml(name: &str) -> String {
    format!(
        "[node]\nname = \"{name}\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\npod_block = \"10.244.1.0/26\"\n\
         gateway = \"192.168.1.1\"\n[uplink]\ndevice = \"eth9\"\n"
    )
}

/// A pod called `name` at 10.244.1.`host`, MAC 0a:00:00:00:00:`host`, TAP `tap<name>`.
pub fn endpoint_toml(name: &str, host: u8) -> String {
    format!(
        "[[endpoints]]\nname = \"{name}\"\ntap = \"tap{name}\"\nmac = \"0a:00:00:00:00:{host:02x}\"\naddrs = [\"10.244.1.{host}\"]\n"
    )
}

/// A peer node at 192.168.1.`host` owning the pod block 10.244.`block`.0/26.
pub fn peer_toml(name: &str, host: u8, block: u8) -> String {
    format!("[[peers]]\nname = \"{name}\"\nip = \"192.168.1.{host}\"\npod_blocks = [\"10.244.{block}.0/26\"]\n")
}

/// A static neighbour 192.168.1.`host` with MAC 02:00:00:00:`set`:`host`.
pub fn neighbour_toml(host: u8, set: u8) -> String {
    format!("[[neighbours]]\nip = \"192.168.1.{host}\"\nmac = \"02:00:00:00:{set:02x}:{host:02x}\"\n")
}

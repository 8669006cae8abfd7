//! Ports: where frames come from and where they go. The uplink is AF_XDP ([`afxdp`]); pods and
//! the node's kernel are TAP devices ([`tap`]). The in-memory [`vrouter_core::dataplane::PacketBuf`]
//! serves tests and benchmarks.
//!
//! Most of the daemon's `unsafe` lives here: the AF_XDP rings and UMEM ([`afxdp`]; frames are
//! lent inside a batch that holds the port, so the types keep a frame from outliving the UMEM
//! or losing its chunk), TUN ioctls ([`tap`]) and libbpf/ioctl calls on the XDP hook ([`xdp`]).
//! It is not the only place: the FIB's trie keeps raw zeroed arrays (vrouter-core
//! `fib/trie.rs`), the worker sleeps in poll(2), control calls setns/if_indextoname (netlink)
//! and malloc_trim, and the namespace lab and perf lab make raw libc calls. Each `unsafe`
//! block carries a `// SAFETY:` comment.

pub mod afxdp;
pub mod tap;
pub mod xdp;

/// The file of the network namespace `name`: a plain name is one `ip netns` keeps under
/// `/run/netns`; an absolute path (what a container runtime gives a CNI plugin as `CNI_NETNS`,
/// e.g. `/run/netns/netns-UUID` or `/proc/PID/ns/net`) is that file. `None` for anything else
/// (empty, `.`, `..`, a relative path, an absolute path with `.` or `..` components or an
/// empty one).
pub fn netns_path(name: &str) -> Option<std::path::PathBuf> {
    if let Some(rest) = name.strip_prefix('/') {
        let clean = !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        return clean.then(|| std::path::PathBuf::from(name));
    }
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    plain.then(|| std::path::Path::new("/run/netns").join(name))
}

/// A link's state as read from the kernel (`/sys/class/net/<dev>/operstate` and `carrier`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl LinkState {
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Unknown => "unknown",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }

    /// The state stored as `state as u8` (anything else: unknown).
    pub fn from_u8(v: u8) -> LinkState {
        match v {
            1 => LinkState::Up,
            2 => LinkState::Down,
            _ => LinkState::Unknown,
        }
    }

    /// Reads `dev`'s state: down when the device is administratively down or has no carrier
    /// (the peer of a veth down, a cable out), up with carrier, unknown if sysfs does not say.
    pub fn read(dev: &str) -> LinkState {
        let read = |f: &str| std::fs::read_to_string(format!("/sys/class/net/{dev}/{f}")).map(|s| s.trim().to_string());
        match (read("operstate"), read("carrier")) {
            (Ok(op), _) if op == "down" || op == "lowerlayerdown" => LinkState::Down,
            (_, Ok(c)) if c == "0" => LinkState::Down,
            (_, Ok(c)) if c == "1" => LinkState::Up,
            // `carrier` cannot be read while the device is administratively down.
            (Ok(_), Err(_)) => LinkState::Down,
            _ => LinkState::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::netns_path;

    #[test]
    fn netns_path_takes_plain_names_and_clean_absolute_paths_only() {
        assert_eq!(netns_path("pod1").unwrap(), std::path::Path::new("/run/netns/pod1"));
        assert_eq!(netns_path("/run/netns/netns-4f2a").unwrap(), std::path::Path::new("/run/netns/netns-4f2a"));
        assert_eq!(netns_path("/proc/42/ns/net").unwrap(), std::path::Path::new("/proc/42/ns/net"));
        for bad in ["", ".", "..", "a/b", "/", "/run/../etc/passwd", "/run/./netns/x", "//run/netns/x", "/run/netns/"] {
            assert_eq!(netns_path(bad), None, "{bad:?}");
        }
    }
}

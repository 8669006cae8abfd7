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

/// The file `ip netns` keeps for the network namespace `name`, or `None` when `name` is not a
/// plain name (empty, `.`, `..`, or with a `/`, which would reach outside `/run/netns`).
pub fn netns_path(name: &str) -> Option<std::path::PathBuf> {
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

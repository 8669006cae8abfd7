//! TAP ports (tun-tap): a pod's interface, or the node kernel's (the host port). vrouter
//! creates the TAP, can move it into the pod's network namespace and configure it there the
//! way the Calico CNI plugin does; the TAP disappears when vrouter closes it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::process::Command;

use tun_tap::{Iface, Mode};

use crate::dataplane::{PacketBuf, PortId, HEADROOM};

/// Runs `ip ARGS`, turning a failure into an error that shows the command and its stderr.
pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run `ip` ({e}); install iproute2")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A TAP device. `send` takes `&self` (one write per frame), so any worker may transmit on
/// it; one worker receives from it.
pub struct TapPort {
    iface: Iface,
    pub name: String,
    port: PortId,
}

/// How to set up a pod's end of a TAP inside its namespace.
pub struct PodSetup<'a> {
    pub netns: &'a str,
    pub ifname: &'a str,
    pub mac: String,
    pub mtu: u16,
    pub addrs: Vec<String>,
    pub gateway: String,
}

impl TapPort {
    /// Creates the TAP `name` (non-blocking).
    pub fn create(name: &str, port: PortId) -> io::Result<TapPort> {
        let iface = Iface::without_packet_info(name, Mode::Tap).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create TAP {name}: {e} (root and /dev/net/tun needed)"))
        })?;
        iface.set_non_blocking()?;
        Ok(TapPort { iface, name: name.to_string(), port })
    }

    /// Moves the TAP into `s.netns` and configures it there as the pod's interface: name, MAC,
    /// MTU, addresses /32, an on-link route to the gateway and a default route through it.
    pub fn setup_pod(&self, s: &PodSetup<'_>) -> io::Result<()> {
        ip(&["link", "set", "dev", &self.name, "netns", s.netns])?;
        let n = s.netns;
        ip(&["-n", n, "link", "set", "dev", &self.name, "name", s.ifname])?;
        ip(&["-n", n, "link", "set", "dev", s.ifname, "address", &s.mac, "mtu", &s.mtu.to_string(), "up"])?;
        for a in &s.addrs {
            ip(&["-n", n, "addr", "add", &format!("{a}/32"), "dev", s.ifname])?;
        }
        ip(&["-n", n, "route", "add", &s.gateway, "dev", s.ifname, "scope", "link"])?;
        ip(&["-n", n, "route", "replace", "default", "via", &s.gateway, "dev", s.ifname])?;
        Ok(())
    }

    /// Configures the TAP in the current namespace as the node kernel's interface: the
    /// uplink's MAC, the node IP, up, and a default route via `gateway` if given.
    pub fn setup_host(&self, mac: &str, addr_cidr: &str, mtu: u16, gateway: Option<&str>) -> io::Result<()> {
        ip(&["link", "set", "dev", &self.name, "address", mac, "mtu", &mtu.to_string(), "up"])?;
        ip(&["addr", "add", addr_cidr, "dev", &self.name])?;
        if let Some(g) = gateway {
            ip(&["route", "replace", "default", "via", g, "dev", &self.name])?;
        }
        Ok(())
    }

    /// Routes `prefix` through this TAP to `via` on-link (`replace`: idempotent).
    pub fn route_via(&self, prefix: &str, via: &str) -> io::Result<()> {
        ip(&["route", "replace", prefix, "via", via, "dev", &self.name, "onlink"])
    }

    /// Removes what [`TapPort::route_via`] installed.
    pub fn unroute(&self, prefix: &str) -> io::Result<()> {
        ip(&["route", "del", prefix, "dev", &self.name])
    }

    pub fn fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }

    pub fn port(&self) -> PortId {
        self.port
    }

    /// Reads up to `bufs.len()` frames (one per buffer). Returns how many.
    pub fn rx_burst(&self, bufs: &mut [PacketBuf]) -> usize {
        let mut n = 0;
        for b in bufs.iter_mut() {
            match self.iface.recv(&mut b.buf[HEADROOM..]) {
                Ok(len) => {
                    b.head = HEADROOM;
                    b.len = len;
                    b.port = self.port;
                    n += 1;
                }
                Err(_) => break, // WouldBlock, or the device went away
            }
        }
        n
    }

    /// Writes one frame. False if the TAP could not take it (full queue, device down).
    #[inline]
    pub fn send(&self, frame: &[u8]) -> bool {
        self.iface.send(frame).is_ok()
    }
}

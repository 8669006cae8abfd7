//! TAP ports (tun-tap): a pod's interface, or the node kernel's (the host port). vrouter
//! creates the TAP, can move it into the pod's network namespace and configure it there the
//! way the Calico CNI plugin does; the TAP disappears when vrouter closes it.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tun_tap::{Iface, Mode};

use vrouter_core::dataplane::{PacketBuf, PortId, HEADROOM};
use vrouter_core::stats::DropReason;
use vrouter_core::wire::MacAddr;

mod rtnl;
use rtnl::Rtnl;

/// Runs one set-up step over rtnetlink; a failure names the step in `ip`'s words and keeps
/// the kernel's reason (`File exists`, which the daemon waits out when a name is still taken).
fn step<T>(what: impl FnOnce() -> String, r: io::Result<T>) -> io::Result<T> {
    r.map_err(|e| io::Error::new(e.kind(), format!("`ip {}` failed: {e}", what())))
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> io::Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} '{s}': {e}")))
}

/// `a.b.c.d/len`.
fn parse_cidr(s: &str) -> io::Result<(Ipv4Addr, u8)> {
    let (a, l) = s.split_once('/').unwrap_or((s, "32"));
    let len: u8 = parse("prefix length", l)?;
    if len > 32 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("prefix '{s}': length above 32")));
    }
    Ok((parse("address", a)?, len))
}

/// A TAP device. `send` takes `&self` (one write per frame), so any worker may transmit on
/// it; one worker receives from it.
///
/// The kernel can remove the device under us (deleted inside the pod, or the pod's namespace
/// destroyed) while we hold its fd: reads and writes then fail with `EBADFD` and poll(2)
/// reports `POLLERR` at once, for ever. The first such error marks the port gone (logged
/// once, [`TapPort::is_gone`]); a gone port is no longer read, polled or written, and the
/// next apply recreates it.
pub struct TapPort {
    iface: Iface,
    pub name: String,
    port: PortId,
    gone: AtomicBool,
}

/// Whether an error on a TAP's fd means the device is gone rather than busy. (`EIO` is a
/// device set down, which may come back up: not gone.)
fn is_gone_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADFD | libc::ENODEV | libc::ENXIO))
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
        Ok(TapPort { iface, name: name.to_string(), port, gone: AtomicBool::new(false) })
    }

    /// Creates the TAP `name` directly inside the network namespace `netns` (a name under
    /// /run/netns or an absolute path): the device lives there from the start, and the fd
    /// works from any namespace. Cheaper than [`TapPort::create`] and [`TapPort::move_to`]: a
    /// device changing namespace costs the kernel a network-wide RCU synchronisation (10-20
    /// ms measured here), which a CNI ADD would wait for.
    pub fn create_in(name: &str, port: PortId, netns: &str) -> io::Result<TapPort> {
        let f = rtnl::netns_file(netns)?;
        // setns moves only the calling thread, and /dev/net/tun creates the device in the
        // namespace of the thread that opens it: a thread of its own, which ends here.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("entering {netns}: {e}")))?;
                TapPort::create(name, port)
            })
            .join()
            .map_err(|_| io::Error::other("TAP namespace thread panicked"))?
        })
    }

    /// Moves the TAP into `s.netns` and configures it there as the pod's interface: name, MAC,
    /// MTU, addresses /32, an on-link route to the gateway and a default route through it.
    pub fn setup_pod(&self, s: &PodSetup<'_>) -> io::Result<()> {
        self.move_to(s.netns)?;
        self.configure_pod(s)
    }

    /// Moves the TAP into `netns` as it is (its name, down): a pod's port staged while the
    /// pod it replaces still holds the interface name there.
    pub fn move_to(&self, netns: &str) -> io::Result<()> {
        step(
            || format!("link set dev {} netns {netns}", self.name),
            Rtnl::open(None).and_then(|mut r| r.move_to_netns(&self.name, netns)),
        )
    }

    /// Renames the TAP (down) in the current namespace.
    pub fn rename(&mut self, to: &str) -> io::Result<()> {
        step(
            || format!("link set dev {} name {to}", self.name),
            Rtnl::open(None).and_then(|mut r| r.rename(&self.name, to)),
        )?;
        self.name = to.to_string();
        Ok(())
    }

    /// Configures the TAP, already moved into `s.netns`, as the pod's interface (see
    /// [`TapPort::setup_pod`]).
    pub fn configure_pod(&self, s: &PodSetup<'_>) -> io::Result<()> {
        let (n, dev) = (s.netns, s.ifname);
        let mac: MacAddr = parse("MAC", &s.mac)?;
        let gw: Ipv4Addr = parse("gateway", &s.gateway)?;
        let addrs = s.addrs.iter().map(|a| parse::<Ipv4Addr>("address", a)).collect::<io::Result<Vec<_>>>()?;
        let mut r = step(|| format!("-n {n} (a netlink socket in the namespace)"), Rtnl::open(Some(n)))?;
        step(|| format!("-n {n} link set dev {} name {dev}", self.name), r.rename(&self.name, dev))?;
        step(
            || format!("-n {n} link set dev {dev} address {} mtu {} up", s.mac, s.mtu),
            r.set_mac_mtu_up(dev, mac.0, s.mtu),
        )?;
        for a in addrs {
            step(|| format!("-n {n} addr add {a}/32 dev {dev}"), r.add_address(dev, a, 32))?;
        }
        step(|| format!("-n {n} route add {gw} dev {dev} scope link"), r.add_link_route(dev, gw))?;
        step(
            || format!("-n {n} route replace default via {gw} dev {dev}"),
            r.replace_route_via(dev, Ipv4Addr::UNSPECIFIED, 0, gw, false),
        )
    }

    /// Configures the TAP in the current namespace as the node kernel's interface: the
    /// uplink's MAC, the node IP, up, and a default route via `gateway` if given.
    pub fn setup_host(&self, mac: &str, addr_cidr: &str, mtu: u16, gateway: Option<&str>) -> io::Result<()> {
        let dev = self.name.as_str();
        let m: MacAddr = parse("MAC", mac)?;
        let (addr, len) = parse_cidr(addr_cidr)?;
        let gw = gateway.map(|g| parse::<Ipv4Addr>("gateway", g)).transpose()?;
        let mut r = Rtnl::open(None)?;
        step(|| format!("link set dev {dev} address {mac} mtu {mtu} up"), r.set_mac_mtu_up(dev, m.0, mtu))?;
        step(|| format!("addr add {addr_cidr} dev {dev}"), r.add_address(dev, addr, len))?;
        if let Some(g) = gw {
            step(
                || format!("route replace default via {g} dev {dev}"),
                r.replace_route_via(dev, Ipv4Addr::UNSPECIFIED, 0, g, false),
            )?;
        }
        Ok(())
    }

    /// Routes `prefix` through this TAP to `via` on-link (`replace`: idempotent).
    pub fn route_via(&self, prefix: &str, via: &str) -> io::Result<()> {
        let (dst, len) = parse_cidr(prefix)?;
        let gw: Ipv4Addr = parse("gateway", via)?;
        step(
            || format!("route replace {prefix} via {via} dev {} onlink", self.name),
            Rtnl::open(None).and_then(|mut r| r.replace_route_via(&self.name, dst, len, gw, true)),
        )
    }

    /// Removes what [`TapPort::route_via`] installed.
    pub fn unroute(&self, prefix: &str) -> io::Result<()> {
        let (dst, len) = parse_cidr(prefix)?;
        step(
            || format!("route del {prefix} dev {}", self.name),
            Rtnl::open(None).and_then(|mut r| r.del_route(&self.name, dst, len)),
        )
    }

    pub fn fd(&self) -> RawFd {
        self.iface.as_raw_fd()
    }

    pub fn port(&self) -> PortId {
        self.port
    }

    /// Whether the device was removed under us (see the type's docs).
    pub fn is_gone(&self) -> bool {
        self.gone.load(Relaxed)
    }

    fn check_gone(&self, e: &io::Error) {
        if is_gone_error(e) && !self.gone.swap(true, Relaxed) {
            tracing::error!(
                tap = %self.name,
                port = self.port,
                "TAP device gone ({e}): removed by someone else (inside the pod, or with its namespace); no longer \
                 polled, frames to it dropped as tx/link-down; the next apply or reload recreates a pod's TAP \
                 (the host TAP: restart vrouter)"
            );
        }
    }

    /// Reads up to `bufs.len()` frames (one per buffer). Returns how many; none once gone.
    pub fn rx_burst(&self, bufs: &mut [PacketBuf]) -> usize {
        if self.is_gone() {
            return 0;
        }
        let mut n = 0;
        for b in bufs.iter_mut() {
            match self.iface.recv(&mut b.buf[HEADROOM..]) {
                Ok(len) => {
                    b.head = HEADROOM;
                    b.len = len;
                    b.port = self.port;
                    n += 1;
                }
                Err(e) => {
                    self.check_gone(&e); // WouldBlock, or the device went away
                    break;
                }
            }
        }
        n
    }

    /// Writes one frame. False if the TAP could not take it (full queue, or gone: see
    /// [`TapPort::is_gone`]).
    #[inline]
    pub fn send(&self, frame: &[u8]) -> bool {
        if self.is_gone() {
            return false;
        }
        match self.iface.send(frame) {
            Ok(_) => true,
            Err(e) => {
                self.check_gone(&e);
                false
            }
        }
    }

    /// What a failed [`TapPort::send`] counts as.
    #[inline]
    pub fn send_failure(&self) -> DropReason {
        if self.is_gone() {
            DropReason::TxLinkDown
        } else {
            DropReason::TxFull
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_deleted_under_us_is_gone_after_one_error_and_not_read_again() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (/dev/net/tun); run the tests as root");
        let name = format!("vrgone{}", std::process::id() % 100_000);
        let t = TapPort::create(&name, 3).unwrap();
        assert!(!t.is_gone());
        let mut bufs: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new(&[], 0)).collect();
        assert_eq!(t.rx_burst(&mut bufs), 0); // nothing yet: WouldBlock, not gone
        assert!(!t.is_gone());
        let del = std::process::Command::new("ip").args(["link", "del", "dev", &name]).status().unwrap();
        assert!(del.success());
        let frame = [0xffu8; 60];
        assert!(!t.send(&frame));
        assert!(t.is_gone(), "a write to a deleted TAP marks it gone");
        assert_eq!(t.send_failure(), DropReason::TxLinkDown);
        assert_eq!(t.rx_burst(&mut bufs), 0);
    }

    #[test]
    fn cidr_parses_like_ip_does_and_refuses_bad_lengths() {
        assert_eq!(parse_cidr("10.244.1.0/26").unwrap(), (Ipv4Addr::new(10, 244, 1, 0), 26));
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap(), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(parse_cidr("192.168.1.10").unwrap(), (Ipv4Addr::new(192, 168, 1, 10), 32));
        assert!(parse_cidr("10.0.0.0/33").unwrap_err().to_string().contains("length above 32"));
        assert!(parse_cidr("10.0.0/8").is_err());
    }
}

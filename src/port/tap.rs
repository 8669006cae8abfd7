//! TAP ports: a pod's interface, or the node kernel's (the host port). vrouter creates the
//! TAP, can move it into the pod's network namespace and configure it there the way the Calico
//! CNI plugin does; the TAP disappears when vrouter closes it.
//!
//! # Offloads
//! Every TAP is opened with a virtio-net header (`IFF_VNET_HDR`) and offers the kernel checksum,
//! TSO (with ECN) and, where the kernel has it, USO (`TUNSETOFFLOAD`): the pod's stack hands
//! vrouter TCP segments of up to 64 KiB with partial checksums, one read each, and vrouter may
//! hand it such segments back (see `vrouter_core::offload`). The header travels in the frame
//! buffer's headroom on the way in; on the way out it is the first part of a vectored write.
//!
//! The design card names the `tun-tap` crate for TAPs; it opens a TAP with fixed flags
//! (`IFF_TAP | IFF_NO_PI`) and has no way to ask for `IFF_VNET_HDR`, which must be given when
//! the device is created (`TUNSETIFF`), not later through the descriptor. So the TAP is opened
//! here: `/dev/net/tun`, one `TUNSETIFF`, then `TUNSETOFFLOAD` (about 30 lines).

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use vrouter_core::dataplane::{PacketBuf, PortId, HEADROOM};
use vrouter_core::offload::{Offload, VNET_HDR_LEN};
use vrouter_core::stats::{Counters, DropReason};
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
    /// One descriptor per queue (per worker): each worker reads its own, and the kernel steers
    /// a flow's frames from the pod to the queue its replies were last written on.
    queues: Vec<File>,
    /// The offloads the kernel accepted (`TUN_F_*`), for the start-up log.
    pub offloads: u32,
    pub name: String,
    port: PortId,
    gone: AtomicBool,
}

/// Whether an error on a TAP's fd means the device is gone rather than busy. (`EIO` is a
/// device set down, which may come back up: not gone.)
fn is_gone_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EBADFD | libc::ENODEV | libc::ENXIO))
}

/// Offloads asked of every TAP: checksum, TSO (and with ECN), USO where the kernel has it
/// (6.2 and later; older ones refuse the whole set, and get it without USO). The kernel takes
/// USO for both families or neither; an IPv6 frame is dropped at input like any IPv6.
const OFFLOADS: [libc::c_uint; 2] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN | libc::TUN_F_USO4 | libc::TUN_F_USO6,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO_ECN,
];

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags (the rest of the union
/// unused).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` as the TAP `name` (a new queue of it, with `multi_queue`) with a
/// virtio-net header, non-blocking, and asks for [`OFFLOADS`]; returns the file and the
/// offloads granted.
fn open_tap(name: &str, multi_queue: bool) -> io::Result<(File, u32)> {
    use std::os::unix::fs::OpenOptionsExt;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid interface name {name:?}")));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mq = if multi_queue { libc::IFF_MULTI_QUEUE } else { 0 };
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | mq) as libc::c_short;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes: `IfReq` has its layout) from the
    // pointer, which is valid for the call; the fd is ours.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    for set in OFFLOADS {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the fd is ours.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, set as libc::c_ulong) } == 0 {
            return Ok((file, set));
        }
    }
    // Without offloads the TAP still works, one frame at a time, with the header.
    Ok((file, 0))
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
    /// Creates the TAP `name` (non-blocking, with a virtio-net header and offloads) with
    /// `queues` queues (`IFF_MULTI_QUEUE` when more than one).
    pub fn create(name: &str, port: PortId, queues: usize) -> io::Result<TapPort> {
        let mut files = Vec::with_capacity(queues.max(1));
        let mut offloads = 0;
        for _ in 0..queues.max(1) {
            let (f, o) = open_tap(name, queues > 1).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create TAP {name}: {e} (root and /dev/net/tun needed)"))
            })?;
            files.push(f);
            offloads = o;
        }
        Ok(TapPort { queues: files, offloads, name: name.to_string(), port, gone: AtomicBool::new(false) })
    }

    /// Creates the TAP `name` directly inside the network namespace `netns` (a name under
    /// /run/netns or an absolute path): the device lives there from the start, and the fd
    /// works from any namespace. Cheaper than [`TapPort::create`] and [`TapPort::move_to`]: a
    /// device changing namespace costs the kernel a network-wide RCU synchronisation (10-20
    /// ms measured here), which a CNI ADD would wait for.
    pub fn create_in(name: &str, port: PortId, netns: &str, queues: usize) -> io::Result<TapPort> {
        let f = rtnl::netns_file(netns)?;
        // setns moves only the calling thread, and /dev/net/tun creates the device in the
        // namespace of the thread that opens it: a thread of its own, which ends here.
        std::thread::scope(|sc| {
            sc.spawn(|| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("entering {netns}: {e}")))?;
                TapPort::create(name, port, queues)
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

    /// The offloads the kernel granted, by name (`csum tso4 tso-ecn uso4`, or `none`).
    pub fn offload_names(&self) -> String {
        let names = [
            (libc::TUN_F_CSUM, "csum"),
            (libc::TUN_F_TSO4, "tso4"),
            (libc::TUN_F_TSO_ECN, "tso-ecn"),
            (libc::TUN_F_USO4, "uso4"),
        ];
        let on: Vec<&str> = names.iter().filter(|(b, _)| self.offloads & b != 0).map(|(_, n)| *n).collect();
        if on.is_empty() {
            "none".into()
        } else {
            on.join(" ")
        }
    }

    /// The descriptor of queue `q` (queue 0 if there are fewer).
    pub fn fd(&self, q: usize) -> RawFd {
        self.queues.get(q).unwrap_or(&self.queues[0]).as_raw_fd()
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

    /// Reads up to `bufs.len()` frames (one per buffer; a buffer of
    /// [`vrouter_core::dataplane::BIG_BUF_SIZE`] takes the biggest segment). Each frame's
    /// virtio-net header lands in the headroom just before it and becomes its
    /// [`PacketBuf::offload`]; a frame whose header asks for what we cannot do is counted
    /// (`offload/bad-vnet-header`) and its buffer reused. Returns how many; none once gone.
    pub fn rx_burst(&self, q: usize, bufs: &mut [PacketBuf], counters: &Counters) -> usize {
        if self.is_gone() {
            return 0;
        }
        let mut n = 0;
        while n < bufs.len() {
            let b = &mut bufs[n];
            let at = HEADROOM - VNET_HDR_LEN;
            let room = &mut b.buf[at..];
            // SAFETY: `room` is a valid, writable buffer of `room.len()` bytes for the call.
            let got = unsafe { libc::read(self.fd(q), room.as_mut_ptr().cast(), room.len()) };
            if got < 0 {
                self.check_gone(&io::Error::last_os_error()); // WouldBlock, or the device went away
                break;
            }
            let got = got as usize;
            let hdr: &[u8; VNET_HDR_LEN] = room[..VNET_HDR_LEN].try_into().expect("VNET_HDR_LEN bytes");
            match (got > VNET_HDR_LEN).then(|| Offload::from_vnet(hdr)) {
                Some(Ok(o)) => {
                    b.head = HEADROOM;
                    b.len = got - VNET_HDR_LEN;
                    b.port = self.port;
                    b.offload = o;
                    n += 1;
                }
                _ => counters.count_drop(DropReason::VnetBadHeader),
            }
        }
        n
    }

    /// Writes one frame on queue `q` with `off` as its virtio-net header. False if the TAP
    /// could not take it (full queue, or gone: see [`TapPort::is_gone`]).
    #[inline]
    pub fn send(&self, q: usize, frame: &[u8], off: Offload) -> bool {
        let hdr = off.to_vnet(frame);
        self.send_parts(q, &hdr, &[IoSlice::new(frame)])
    }

    /// Writes one frame made of `parts` (a merged segment: the first frame, then the payloads
    /// of those merged into it) behind the virtio-net header `hdr`, in one vectored write.
    pub fn send_parts(&self, q: usize, hdr: &[u8; VNET_HDR_LEN], parts: &[IoSlice<'_>]) -> bool {
        if self.is_gone() {
            return false;
        }
        let mut iov = [IoSlice::new(&[]); 1 + vrouter_core::offload::gro::MAX_SEGS];
        let Some(rest) = iov.get_mut(1..1 + parts.len()) else { return false };
        rest.copy_from_slice(parts);
        iov[0] = IoSlice::new(hdr);
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec` (std guarantees it on Unix);
        // the slices it points at live for the call.
        let r = unsafe { libc::writev(self.fd(q), iov.as_ptr().cast(), (1 + parts.len()) as libc::c_int) };
        if r < 0 {
            self.check_gone(&io::Error::last_os_error());
            return false;
        }
        true
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
        let t = TapPort::create(&name, 3, 1).unwrap();
        assert!(!t.is_gone());
        assert_ne!(t.offloads & libc::TUN_F_TSO4, 0, "the kernel takes TSO on a TAP with a vnet header");
        let counters = Counters::new(4);
        let mut bufs: Vec<PacketBuf> = (0..4).map(|_| PacketBuf::new(&[], 0)).collect();
        assert_eq!(t.rx_burst(0, &mut bufs, &counters), 0); // nothing yet: WouldBlock, not gone
        assert!(!t.is_gone());
        let del = std::process::Command::new("ip").args(["link", "del", "dev", &name]).status().unwrap();
        assert!(del.success());
        let frame = [0xffu8; 60];
        assert!(!t.send(0, &frame, Offload::NONE));
        assert!(t.is_gone(), "a write to a deleted TAP marks it gone");
        assert_eq!(t.send_failure(), DropReason::TxLinkDown);
        assert_eq!(t.rx_burst(0, &mut bufs, &counters), 0);
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

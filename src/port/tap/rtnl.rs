//! The few rtnetlink requests TAP set-up needs (what `ip link set`, `ip addr add` and
//! `ip route add|replace|del` send), each acknowledged by the kernel before the next.
//!
//! A request for another network namespace goes through a socket opened in that namespace
//! (by a short-lived thread that enters it): the socket keeps talking to the namespace it was
//! created in, and device names are resolved there too.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// An rtnetlink socket in one network namespace.
pub struct Rtnl {
    sock: Socket,
    seq: u32,
}

/// The namespace file `ip netns` keeps for `name`.
pub fn netns_file(name: &str) -> io::Result<File> {
    let Some(path) = crate::port::netns_path(name) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' is not a namespace name")));
    };
    File::open(path).map_err(|e| io::Error::new(e.kind(), format!("network namespace {name}: {e}")))
}

impl Rtnl {
    /// A socket in this thread's namespace (`None`) or in the namespace `ip netns` calls `netns`.
    pub fn open(netns: Option<&str>) -> io::Result<Rtnl> {
        let sock = match netns {
            None => Socket::new(NETLINK_ROUTE)?,
            Some(ns) => {
                let f = netns_file(ns)?;
                // setns moves only the calling thread: a thread of its own, which ends here.
                std::thread::scope(|s| {
                    s.spawn(|| {
                        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("entering {ns}: {e}")))?;
                        Socket::new(NETLINK_ROUTE)
                    })
                    .join()
                    .map_err(|_| io::Error::other("netlink namespace thread panicked"))?
                })?
            }
        };
        Ok(Rtnl { sock, seq: 0 })
    }

    /// The index of device `name` in the socket's namespace.
    pub fn index(&mut self, name: &str) -> io::Result<u32> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        let reply = self.request(RouteNetlinkMessage::GetLink(m), 0, true)?;
        match reply {
            Some(RouteNetlinkMessage::NewLink(l)) => Ok(l.header.index),
            _ => Err(io::Error::other(format!("no link message for device {name}"))),
        }
    }

    /// Sends `msg` and waits for the kernel's answer: its acknowledgement (`Ok(None)`), the
    /// reply (`want_reply`), or its error.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        want_reply: bool,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        m.header.flags = NLM_F_REQUEST | flags | if want_reply { 0 } else { NLM_F_ACK };
        m.header.sequence_number = self.seq;
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut rx = vec![0u8; 64 * 1024];
        loop {
            let n = self.sock.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::other(format!("bad netlink reply: {e}")))?;
                let len = reply.header.length as usize;
                if reply.header.sequence_number == self.seq {
                    match reply.payload {
                        NetlinkPayload::Error(e) => {
                            return match e.code {
                                Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                                None => Ok(None),
                            }
                        }
                        NetlinkPayload::InnerMessage(inner) if want_reply => return Ok(Some(inner)),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
    }

    fn set_link(&mut self, index: u32, attrs: Vec<LinkAttribute>, up: bool) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes = attrs;
        self.request(RouteNetlinkMessage::SetLink(m), 0, false).map(|_| ())
    }

    /// `ip link set dev DEV netns NS`.
    pub fn move_to_netns(&mut self, dev: &str, netns: &str) -> io::Result<()> {
        let f = netns_file(netns)?;
        let index = self.index(dev)?;
        use std::os::fd::AsRawFd;
        self.set_link(index, vec![LinkAttribute::NetNsFd(f.as_raw_fd())], false)
    }

    /// `ip link set dev DEV name TO`.
    pub fn rename(&mut self, dev: &str, to: &str) -> io::Result<()> {
        let index = self.index(dev)?;
        self.set_link(index, vec![LinkAttribute::IfName(to.into())], false)
    }

    /// `ip link set dev DEV address MAC mtu MTU up`.
    pub fn set_mac_mtu_up(&mut self, dev: &str, mac: [u8; 6], mtu: u16) -> io::Result<()> {
        let index = self.index(dev)?;
        self.set_link(index, vec![LinkAttribute::Address(mac.to_vec()), LinkAttribute::Mtu(mtu.into())], true)
    }

    /// `ip addr add ADDR/LEN dev DEV`.
    pub fn add_address(&mut self, dev: &str, addr: Ipv4Addr, len: u8) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = len;
        m.header.index = self.index(dev)?;
        m.attributes.push(AddressAttribute::Local(addr.into()));
        m.attributes.push(AddressAttribute::Address(addr.into()));
        self.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL, false).map(|_| ())
    }

    fn route(dst: Ipv4Addr, len: u8, index: u32) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = len;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        if len > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dst)));
        }
        m.attributes.push(RouteAttribute::Oif(index));
        m
    }

    /// `ip route add DST/32 dev DEV scope link` (an on-link host route).
    pub fn add_link_route(&mut self, dev: &str, dst: Ipv4Addr) -> io::Result<()> {
        let mut m = Self::route(dst, 32, self.index(dev)?);
        m.header.scope = RouteScope::Link;
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_EXCL, false).map(|_| ())
    }

    /// `ip route replace DST/LEN via GW dev DEV [onlink]`.
    pub fn replace_route_via(
        &mut self,
        dev: &str,
        dst: Ipv4Addr,
        len: u8,
        gw: Ipv4Addr,
        onlink: bool,
    ) -> io::Result<()> {
        let mut m = Self::route(dst, len, self.index(dev)?);
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        if onlink {
            m.header.flags = RouteFlags::Onlink;
        }
        self.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE, false).map(|_| ())
    }

    /// `ip route del DST/LEN dev DEV`.
    pub fn del_route(&mut self, dev: &str, dst: Ipv4Addr, len: u8) -> io::Result<()> {
        let mut m = Self::route(dst, len, self.index(dev)?);
        m.header.protocol = RouteProtocol::Unspec;
        m.header.scope = RouteScope::NoWhere;
        m.header.kind = RouteType::Unspec;
        self.request(RouteNetlinkMessage::DelRoute(m), 0, false).map(|_| ())
    }
}

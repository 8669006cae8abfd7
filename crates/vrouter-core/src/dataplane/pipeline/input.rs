//! Stage 1, input (per frame). Reads the frame as received and the port it came on. L2 checks
//! (our MAC or broadcast, no multicast source, no VLAN tags), ARP (answers, learning, proxy ARP
//! for the pod gateway), RFC 1812 5.2.2 IPv4 checks (Parameter Problem for malformed options),
//! anti-spoofing (pods, the host port, our pod block from the uplink), then local delivery
//! ([`super::local`]) or the transit TTL check. Sets the verdict (`Drop`, `Tx` for ARP replies,
//! `Punt`, `Consumed`) or leaves `Continue` with `Meta::dst` as the lookup key. Drop reasons:
//! `port/*`, `eth/*`, `arp/*`, `ipv4/*`, `endpoint/*`, `host/*`, `ipip/from-pod`.

use super::*;
use egress::ipip_rpf;
use icmp_error::IcmpMsg;

impl Pipeline {
    /// Counts received frames per port, one counter update per run of frames from the same
    /// port (a burst usually comes from one port).
    pub(super) fn count_rx<F: Frame>(&mut self, frames: &mut [F]) {
        let mut run: Option<(PortId, u64, u64)> = None;
        for f in frames.iter_mut() {
            let port = f.port();
            let len = *f.parts().2 as u64;
            run = match run {
                Some((p, n, b)) if p == port => Some((p, n + 1, b + len)),
                Some((p, n, b)) => {
                    self.counters.rx_n(p as usize, n, b);
                    Some((port, 1, len))
                }
                None => Some((port, 1, len)),
            };
        }
        if let Some((p, n, b)) = run {
            self.counters.rx_n(p as usize, n, b);
        }
    }

    /// L2 checks, ARP, IPv4 input, anti-spoofing, local delivery, TTL.
    #[inline]
    pub(super) fn input(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) {
        let port = p.port;
        let Some(pinfo) = snap.port(port) else {
            m.verdict = Verdict::Drop(DropReason::UnknownPort);
            return;
        };
        if p.len < ETH {
            m.verdict = Verdict::Drop(DropReason::EthTruncated);
            return;
        }
        if pinfo.kind == PortKind::Host {
            self.host_input(snap, p, pinfo.mac, m, now);
            return;
        }
        let eth = &p.buf[p.head..p.head + ETH];
        let dst = MacAddr(eth[0..6].try_into().unwrap());
        if eth[6] & 1 != 0 {
            m.verdict = Verdict::Drop(DropReason::EthBadSource);
            return;
        }
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_IPV4 => {
                if dst != pinfo.mac {
                    // Never forwarded (RFC 1812 5.3.4); on the uplink the node's kernel may want
                    // link broadcast and multicast (DHCP, VRRP), so they go to the host port.
                    m.verdict = if dst.is_multicast() && pinfo.kind == PortKind::Uplink && snap.host_port.is_some() {
                        Verdict::Punt
                    } else if dst.is_broadcast() {
                        Verdict::Drop(DropReason::EthBroadcastIp)
                    } else {
                        Verdict::Drop(DropReason::EthNotForUs)
                    };
                    return;
                }
            }
            ETHERTYPE_ARP => {
                m.verdict = if dst == pinfo.mac || dst.is_broadcast() {
                    self.arp_input(snap, p, pinfo.kind, pinfo.mac, now)
                } else {
                    Verdict::Drop(DropReason::EthNotForUs)
                };
                return;
            }
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => {
                m.verdict = Verdict::Drop(DropReason::EthVlan);
                return;
            }
            _ => {
                m.verdict = if pinfo.punt_unknown && snap.host_port.is_some() {
                    Verdict::Punt
                } else {
                    Verdict::Drop(DropReason::EthUnsupportedType)
                };
                return;
            }
        }
        // IPv4 (RFC 1812 5.2.2)
        let l3 = p.head + ETH;
        let info = match ipv4::check_input(&p.buf[l3..p.head + p.len]) {
            Ok(i) => i,
            Err(Ipv4Error::BadOptions) => {
                self.parameter_problem(snap, p, m, now);
                return;
            }
            Err(e) => {
                m.verdict = Verdict::Drop(e.into());
                return;
            }
        };
        p.len = ETH + info.total_len as usize; // trim Ethernet padding
        let (src, dst, proto) = (info.src, info.dst, info.protocol);
        m.dst = dst;
        if pinfo.kind == PortKind::Pod {
            let Some(ep) = snap.port_endpoint.get(port as usize).copied().flatten() else {
                m.verdict = Verdict::Drop(DropReason::UnknownEndpoint);
                return;
            };
            if !snap.endpoints[ep as usize].addrs.contains(&src) {
                m.verdict = Verdict::Drop(DropReason::SpoofedSource);
                return;
            }
            if proto == PROTO_IPIP {
                m.verdict = Verdict::Drop(DropReason::IpipFromPod);
                return;
            }
        } else if snap.is_local(src) {
            // Our own addresses never arrive from outside.
            m.verdict = Verdict::Drop(DropReason::SpoofedSource);
            return;
        } else if snap.in_pod_block(src) {
            // Nor do our pods' (they are behind their own ports).
            m.verdict = Verdict::Drop(DropReason::UplinkPodSource);
            return;
        }
        if snap.is_local(dst) {
            self.local(snap, p, m, now);
        } else {
            self.transit_ttl(snap, p, m, now);
        }
    }

    /// What the node's kernel sends (host port). Its IPv4 unicast is routed through the FIB
    /// like any input: to local pods (their policy applies to what the kernel forwards for
    /// others), to other nodes (plain or IPIP), to the underlay, with our L2 rewrite, whatever
    /// MAC the kernel addressed it to (its gateway's, or ours). Its source may be anything but
    /// one of our pods' addresses (`host/spoofed-source`): the node's, or a client's the kernel
    /// forwards (NodePort). ARP for the pod gateway is answered here: the kernel's
    /// routes to the pod blocks point at the pod gateway on the host TAP (see `port::tap`).
    /// Everything else (ARP for its underlay neighbours, link broadcast and multicast, other
    /// EtherTypes) leaves by the uplink unchanged: the kernel shares the node IP and MAC there.
    pub(super) fn host_input(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, our_mac: MacAddr, m: &mut Meta, now: u64) {
        let eth = &p.buf[p.head..p.head + ETH];
        let dmac = MacAddr(eth[0..6].try_into().unwrap());
        let pass = match snap.uplink_port {
            Some(u) => Verdict::Tx(u),
            None => Verdict::Drop(DropReason::UnknownPort),
        };
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_ARP => {
                m.verdict = match crate::neigh::proxy_arp_answer(p.data_mut(), our_mac.0, snap.pod_gateway) {
                    ProxyArp::Reply(n) => {
                        p.len = n;
                        self.counters.inc(&self.counters.arp_replies_sent);
                        Verdict::Tx(p.port)
                    }
                    _ => pass,
                };
                return;
            }
            ETHERTYPE_IPV4 if !dmac.is_multicast() => {}
            _ => {
                m.verdict = pass;
                return;
            }
        }
        let l3 = p.head + ETH;
        let info = match ipv4::check_input(&p.buf[l3..p.head + p.len]) {
            Ok(i) => i,
            Err(e) => {
                m.verdict = Verdict::Drop(e.into());
                return;
            }
        };
        p.len = ETH + info.total_len as usize;
        let (src, dst) = (info.src, info.dst);
        // The node's own addresses, or whatever the kernel forwards for others (a NodePort
        // client's, source preserved); never one of our pods' (martians failed check_input).
        if !snap.is_local(src) && self.is_our_pods_address(snap, src) {
            m.verdict = Verdict::Drop(DropReason::HostSpoofedSource);
            return;
        }
        m.dst = dst;
        m.from_host = true;
        if snap.is_local(dst) {
            // Only ping is answered here (the pod gateway, say); anything else would only be
            // handed back to the kernel, which may forward it to us again.
            let l4 = l3 + info.header_len as usize;
            m.verdict = if info.protocol == PROTO_ICMP && p.len > l4 - p.head && p.buf[l4] == icmp::ECHO_REQUEST {
                self.local(snap, p, m, now);
                m.verdict
            } else {
                Verdict::Drop(DropReason::HostToRouterAddress)
            };
        }
    }

    /// In this node's pod blocks, or routed to a local pod (an address outside the blocks).
    pub(super) fn is_our_pods_address(&self, snap: &Snapshot, a: u32) -> bool {
        snap.in_pod_block(a) || matches!(snap.nexthop(self.shared.fib.pin().lookup(a)), Some(NextHop::Local { .. }))
    }

    /// ARP on a pod port: proxy-answer for the pod gateway only. On the uplink: answer for our
    /// addresses, learn replies we asked for (RFC 826 merge for requests from known senders).
    pub(super) fn arp_input(
        &mut self,
        snap: &Snapshot,
        p: &mut Pkt<'_>,
        kind: PortKind,
        our_mac: MacAddr,
        now: u64,
    ) -> Verdict {
        if kind == PortKind::Pod {
            return match crate::neigh::proxy_arp_answer(p.data_mut(), our_mac.0, snap.pod_gateway) {
                ProxyArp::Reply(n) => {
                    p.len = n;
                    self.counters.inc(&self.counters.arp_replies_sent);
                    Verdict::Tx(p.port)
                }
                ProxyArp::NotForUs => Verdict::Drop(DropReason::ArpNotForUs),
                ProxyArp::Ignore => Verdict::Drop(DropReason::ArpBadOpcode),
                ProxyArp::Malformed(_) => Verdict::Drop(DropReason::ArpMalformed),
            };
        }
        let (op, sip, smac, tip) = match ArpPacket::new_checked(&p.data()[ETH..]) {
            Ok(a) => (a.operation(), a.sender_ip(), a.sender_mac(), a.target_ip()),
            Err(_) => return Verdict::Drop(DropReason::ArpMalformed),
        };
        match op {
            arp::ARP_REQUEST => {
                self.shared.neigh.on_request_from(sip, smac, now);
                if tip != snap.pod_gateway && snap.is_local(tip) {
                    match arp::reply_in_place(p.data_mut(), our_mac.0) {
                        Some(n) => {
                            p.len = n;
                            self.counters.inc(&self.counters.arp_replies_sent);
                            Verdict::Tx(p.port)
                        }
                        None => Verdict::Drop(DropReason::ArpMalformed),
                    }
                } else {
                    Verdict::Drop(DropReason::ArpNotForUs)
                }
            }
            arp::ARP_REPLY => match self.shared.neigh.on_reply(sip, smac, now) {
                Ok(()) => {
                    self.release_held(sip, smac);
                    // The kernel behind the host port shares our address and may have asked
                    // too: it gets the reply as well.
                    if snap.host_port.is_some() {
                        Verdict::Punt
                    } else {
                        Verdict::Consumed
                    }
                }
                // The kernel behind the host port may have asked; a flood of them is not passed
                // on one for one.
                Err(_) if snap.host_port.is_some() && self.arp_punt_rl.allow(now) => Verdict::Punt,
                Err(_) if snap.host_port.is_some() => Verdict::Drop(DropReason::ArpPuntLimited),
                Err(_) => Verdict::Drop(DropReason::ArpUnsolicited),
            },
            _ => Verdict::Drop(DropReason::ArpBadOpcode),
        }
    }

    /// RFC 1812 5.3.1: a transit packet whose TTL would reach zero is dropped with an ICMP time
    /// exceeded (which, made in place, continues as a locally originated packet).
    #[inline]
    pub(super) fn transit_ttl(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) {
        if p.ip().ttl() > 1 || !self.inner_source_ok(snap, m) {
            return;
        }
        self.counters.count_drop(DropReason::Ipv4TtlExpired);
        self.note_answered(DropReason::Ipv4TtlExpired);
        if self.icmp_error(
            snap,
            p,
            IcmpMsg { ty: icmp::TIME_EXCEEDED, code: icmp::CODE_TTL_EXCEEDED, rest: 0 },
            m.from_host,
            now,
        ) {
            m.local_origin = true;
            m.dst = p.ip().dst();
        } else {
            m.verdict = Verdict::Consumed; // already counted as ttl-expired
        }
    }

    /// The reverse-path check of a decapsulated frame's inner source, for the (rare) paths that
    /// leave before egress, where the batched check runs: delivery to the node's kernel and ICMP
    /// errors about the frame (forged traffic must neither reach the kernel nor spend the error
    /// budget). Looks the source up on its own; false (and `ipip/inner-source-rpf` set as the
    /// verdict) when the check fails. Done at most once per frame.
    pub(super) fn inner_source_ok(&self, snap: &Snapshot, m: &mut Meta) -> bool {
        if m.rpf_src == 0 {
            return true;
        }
        let nh = self.shared.fib.pin().lookup(m.rpf_src);
        let ok = ipip_rpf(snap, m.rpf_src, nh, m.peer);
        m.rpf_src = 0;
        if !ok {
            m.verdict = Verdict::Drop(DropReason::IpipInnerSourceRpf);
        }
        ok
    }
}

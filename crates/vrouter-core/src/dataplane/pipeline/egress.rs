//! Stage 3, egress (per frame): IPIP reverse-path check, ECMP choice, policy with connection
//! tracking (ICMP errors about tracked connections are related), TTL decrement, MTU (fragment,
//! or ICMP fragmentation needed), IPIP encapsulation, neighbour resolution (or hold), L2
//! rewrite. Reads `Meta::nh`; sets `Tx`, `Held`, `Punt`, a drop, or marks the frame for a
//! second pass (`Meta::reroute`) when it was turned into an ICMP error. Drop reasons: `fib/*`,
//! `policy/*`, `ipv4/l4-truncated`, `mtu/*`, `neigh/*`, `ipip/inner-source-rpf`,
//! `ipip/no-headroom`.

use super::*;
use icmp_error::IcmpMsg;

impl Pipeline {
    #[inline]
    pub(super) fn egress(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) {
        if m.rpf_src != 0 {
            let ok = ipip_rpf(snap, m.rpf_src, m.rpf_nh, m.peer);
            m.rpf_src = 0;
            if !ok {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceRpf);
                return;
            }
        }
        if m.local_origin && m.from_host && snap.is_local(m.dst) {
            // An ICMP error about what the node's kernel sent, or our echo reply to it.
            host_l2(snap, p);
            m.verdict = Verdict::Punt;
            return;
        }
        let mut nh = match snap.nexthop(m.nh) {
            Some(nh) => nh,
            None => {
                m.verdict = Verdict::Drop(DropReason::BadNextHop);
                return;
            }
        };
        if let NextHop::Ecmp(members) = nh {
            let h = flow_hash(p.ip());
            let pick = members[(h as usize) % members.len()];
            nh = match snap.nexthop(pick) {
                Some(nh) => nh,
                None => {
                    m.verdict = Verdict::Drop(DropReason::BadNextHop);
                    return;
                }
            };
        }
        let dst_ep = match nh {
            NextHop::Unreachable
                if m.from_host
                    && !m.local_origin
                    && snap.port(p.port).is_some_and(|port| p.data()[..6] != port.mac.0) =>
            {
                // No route here, but the node's kernel chose a neighbour on the underlay (its
                // own default route, say) and addressed it: its choice stands.
                m.verdict = snap.uplink_port.map_or(Verdict::Drop(DropReason::NoRoute), Verdict::Tx);
                return;
            }
            NextHop::Unreachable => {
                self.reject(snap, p, m, icmp::CODE_NET_UNREACHABLE, DropReason::NoRoute, now);
                return;
            }
            NextHop::NetUnreachable => {
                self.reject(snap, p, m, icmp::CODE_NET_UNREACHABLE, DropReason::RouteUnreachable, now);
                return;
            }
            NextHop::Prohibit => {
                self.reject(snap, p, m, icmp::CODE_ADMIN_PROHIBITED, DropReason::RouteProhibited, now);
                return;
            }
            NextHop::Blackhole => {
                m.verdict = Verdict::Drop(DropReason::Blackhole);
                return;
            }
            NextHop::Host => {
                host_l2(snap, p);
                m.verdict = Verdict::Punt;
                return;
            }
            NextHop::Local { endpoint } => Some(*endpoint),
            NextHop::Gateway { .. } | NextHop::Connected { .. } | NextHop::Tunnel { .. } | NextHop::Ecmp(_) => None,
        };
        if !m.local_origin {
            let src_ep = if m.decapped { None } else { snap.port_endpoint.get(p.port as usize).copied().flatten() };
            // The node's own traffic is judged by the pods' policy only, not as transit, and
            // (unless `enforce_host_pod_policy`) not at all when the node itself talks to a
            // local pod. What the kernel forwards for others (a NodePort client's source) is.
            let node_to_pod =
                m.from_host && (dst_ep.is_none() || (!self.cfg.enforce_host_pod_policy && snap.is_local(p.ip().src())));
            if !node_to_pod {
                if let Err(r) = self.policy(snap, p.ip(), src_ep, dst_ep, now) {
                    m.verdict = Verdict::Drop(r);
                    return;
                }
            }
            if !m.from_host {
                p.ip_mut().decrement_ttl();
            }
        }
        m.verdict = self.send(snap, p, nh, m, now);
    }

    /// Stateful policy: established flows (either direction) pass on their conntrack entry; new
    /// ones are checked against the sender's egress and the receiver's ingress policy.
    pub(super) fn policy(
        &mut self,
        snap: &Snapshot,
        ip: Ipv4Packet<&[u8]>,
        src_ep: Option<EndpointId>,
        dst_ep: Option<EndpointId>,
        now: u64,
    ) -> Result<(), DropReason> {
        let pol = &snap.policy;
        if pol.is_allow_all() {
            self.note(|| "no policy selects anything on this node: allowed".into());
            return Ok(());
        }
        let (key, fields) = flow_key(&ip)?;
        let (proto, fragment) = (key.proto, key.fragment);
        let gen = pol.generation();
        self.note(|| describe_policy(snap, src_ep, dst_ep, &key));
        match self.ct.lookup(&key, fields.tcp_flags, now, gen) {
            CtLookup::Hit { stale: false, dir } => {
                self.note(|| format!("established connection ({dir:?} direction): allowed by conntrack"));
                Ok(())
            }
            CtLookup::Hit { stale: true, dir } => {
                self.note(|| format!("established connection, policy changed since: judged again as {dir:?}"));
                // Policy changed since the flow was admitted: judge it again as its originator.
                let allowed = match dir {
                    CtDir::Original => evaluate(pol, src_ep, dst_ep, &key),
                    CtDir::Reply => evaluate(pol, dst_ep, src_ep, &key.reversed()),
                };
                if allowed {
                    self.ct.refresh(&key, gen);
                    Ok(())
                } else {
                    self.ct.remove(&key);
                    Err(DropReason::PolicyDeny)
                }
            }
            CtLookup::Miss => {
                // RFC 792/1812 errors about a tracked connection travel to its sender: related.
                if proto == PROTO_ICMP && fragment == Fragment::None {
                    if let Some(q) = quoted_flow(ip.payload()).filter(|q| q.src == key.dst) {
                        if self.ct.related(&q, now) {
                            self.note(|| "ICMP error about a tracked connection: related, allowed".into());
                            return Ok(());
                        }
                    }
                }
                if !evaluate(pol, src_ep, dst_ep, &key) {
                    return Err(DropReason::PolicyDeny);
                }
                // Charged to the local originator, else the local destination (issue 9 item 8).
                self.ct.insert_for(&key, src_ep.or(dst_ep), fields.tcp_flags, now, gen).map_err(|e| e.drop_reason())
            }
        }
    }

    /// MTU, encapsulation, neighbour, L2 rewrite for a frame going to `nh`.
    #[inline]
    pub(super) fn send(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, nh: &NextHop, m: &mut Meta, now: u64) -> Verdict {
        let (port, overhead) = match nh {
            NextHop::Local { endpoint } => (snap.endpoints[*endpoint as usize].port, 0),
            NextHop::Gateway { port, .. } | NextHop::Connected { port } => (*port, 0),
            NextHop::Tunnel { port, .. } => (*port, IPIP_OVERHEAD),
            _ => return Verdict::Drop(DropReason::BadNextHop),
        };
        let Some(pinfo) = snap.port(port) else { return Verdict::Drop(DropReason::BadNextHop) };
        let mtu = pinfo.mtu as usize - overhead.min(pinfo.mtu as usize);
        if p.offload.is_gso() {
            // Judged by the segments it will be cut into (the kernel's
            // skb_gso_validate_network_len): those too big with DF get fragmentation needed
            // like any packet; without DF the kernel would cut and then fragment each, which
            // nothing sends (TCP sets DF; UDP_SEGMENT senders size to the path MTU).
            let Some(l) = offload::layout(p.data()) else { return Verdict::Drop(DropReason::GsoBadFrame) };
            if l.hdr_len - ETH + usize::from(p.offload.gso_size) > mtu {
                if !p.ip().dont_frag() {
                    return Verdict::Drop(DropReason::GsoTooBig);
                }
                return self.too_big(snap, p, nh, mtu, m, now);
            }
        } else if p.len - ETH > mtu {
            return self.too_big(snap, p, nh, mtu, m, now);
        }
        self.finish(snap, p, nh, now)
    }

    /// Encapsulates if needed, resolves the L2 destination and writes the Ethernet header.
    #[inline]
    pub(super) fn finish(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, nh: &NextHop, now: u64) -> Verdict {
        let (port, via, dmac) = match nh {
            NextHop::Local { endpoint } => {
                let ep: &Endpoint = &snap.endpoints[*endpoint as usize];
                (ep.port, 0, Some(ep.mac))
            }
            NextHop::Gateway { port, via } => (*port, *via, None),
            NextHop::Connected { port } => (*port, p.ip().dst(), None),
            NextHop::Tunnel { port, remote, via } => {
                if p.head < IPIP_OVERHEAD {
                    return Verdict::Drop(DropReason::IpipNoHeadroom);
                }
                let (tos, ff) = (p.ip().tos(), p.ip().flags_frag());
                let inner_len = p.len - ETH;
                p.head -= IPIP_OVERHEAD;
                p.len += IPIP_OVERHEAD;
                self.ident = self.ident.wrapping_add(1);
                // RFC 2003 3.1: TOS copied, DF copied from the inner header, protocol 4. (A
                // GSO frame of 64 KiB does not fit the length field once wrapped; each of its
                // segments gets its own length when it is cut.)
                ipv4::write_header(
                    &mut p.buf[p.head + ETH..],
                    tos,
                    (inner_len + IPIP_OVERHEAD).min(u16::MAX as usize) as u16,
                    self.ident,
                    ff & FLAG_DF,
                    64,
                    PROTO_IPIP,
                    snap.node_ip,
                    *remote,
                );
                self.counters.inc(&self.counters.ipip_encap);
                (*port, *via, None)
            }
            _ => return Verdict::Drop(DropReason::BadNextHop),
        };
        let Some(smac) = snap.port(port).map(|p| p.mac) else { return Verdict::Drop(DropReason::BadNextHop) };
        let on_link = matches!(nh, NextHop::Connected { .. });
        let dmac = match dmac.or_else(|| self.neigh_cache.get(via).map(MacAddr)) {
            Some(d) => d,
            None => match self.lookup_neigh(via, neigh_charge(nh, p), on_link, now) {
                NeighLookup::Reachable(mac) => {
                    self.neigh_cache.put(via, mac);
                    MacAddr(mac)
                }
                NeighLookup::Stale { mac, probe } => {
                    if probe {
                        self.send_arp_request(snap, port, via, on_link, now);
                    }
                    MacAddr(mac)
                }
                NeighLookup::Incomplete { send_request } => {
                    if send_request {
                        self.send_arp_request(snap, port, via, on_link, now);
                    }
                    ethernet::write_header(&mut p.buf[p.head..], MacAddr::ZERO, smac, ETHERTYPE_IPV4);
                    // The hold queue keeps bytes, not offload state: a partial checksum is
                    // completed now (a GSO frame is too big to hold and dropped as such).
                    complete_partial(p);
                    return match self.hold.hold(via, port, &p.buf[p.head..p.head + p.len], now) {
                        Ok(()) => {
                            if let Some(e) = self.pending.iter_mut().find(|e| e.0 == via) {
                                // Also a route's next hop (a pod may address the gateway or
                                // another node directly): asked for out of the routes' budget.
                                e.1 &= on_link;
                            } else if self.pending.len() < self.pending.capacity() {
                                self.pending.push((via, on_link));
                            }
                            Verdict::Held
                        }
                        Err(_) => Verdict::Drop(DropReason::NeighHoldFull),
                    };
                }
                NeighLookup::Failed => return Verdict::Drop(DropReason::NeighUnresolved),
                NeighLookup::TableFull => return Verdict::Drop(DropReason::NeighTableFull),
                NeighLookup::SourceLimit => return Verdict::Drop(DropReason::NeighSourceLimit),
            },
        };
        ethernet::write_header(&mut p.buf[p.head..], dmac, smac, ETHERTYPE_IPV4);
        Verdict::Tx(port)
    }

    /// Too big for the egress MTU (`mtu` already net of IPIP overhead): with DF, drop and send
    /// fragmentation needed advertising `mtu` (RFC 1191); without, fragment.
    pub(super) fn too_big(
        &mut self,
        snap: &Snapshot,
        p: &mut Pkt<'_>,
        nh: &NextHop,
        mtu: usize,
        m: &mut Meta,
        now: u64,
    ) -> Verdict {
        let l3 = p.l3();
        if p.ip().dont_frag() {
            self.counters.count_drop(DropReason::FragNeeded);
            self.note_answered(DropReason::FragNeeded);
            if !m.local_origin && self.icmp_error(snap, p, IcmpMsg::frag_needed(mtu), m.from_host, now) {
                // The TTL was already decremented; the quoted header shows it, as Linux does.
                m.reroute = true;
                m.local_origin = true;
                self.note_first_lookup(m.dst, m.nh);
                m.dst = p.ip().dst();
                return Verdict::Continue;
            }
            return Verdict::Consumed;
        }
        // Fragments are emitted as plain frames: a partial checksum is completed first.
        complete_partial(p);
        let hl = p.ip().header_len();
        let mut rest_hdr = [0u8; 60];
        let rl = frag::nonfirst_header(&p.buf[l3..l3 + hl], &mut rest_hdr);
        let Some((first, rest, count)) = frag::plan(mtu, hl, rl, p.len - ETH - hl) else {
            return Verdict::Drop(DropReason::FragNeeded);
        };
        let free = self.out.emitted.capacity() - self.out.emitted.len();
        if count - 1 > free {
            return Verdict::Drop(DropReason::FragNoBuffer);
        }
        // Resolve (or start resolving) the next hop while the generated-frame pool is in place,
        // so an ARP request it needs is not lost while the pool is lent to the fragments.
        self.prime_neighbour(snap, p, nh, now);
        // Later fragments into generated-frame buffers, each finished like the first.
        let mut pool = std::mem::replace(&mut self.out.emitted, crate::dataplane::output::EmitPool::new(0));
        let mut at = first;
        for _ in 1..count {
            let (slot, fbuf) = pool.next_free().expect("counted above");
            let n = frag::write_fragment(p.ip(), &rest_hdr[..rl], at, rest, &mut fbuf[HEADROOM + ETH..]);
            at += rest;
            let mut f = Pkt::new(fbuf, HEADROOM, ETH + n, p.port);
            match self.finish(snap, &mut f, nh, now) {
                Verdict::Tx(port) => {
                    let (head, len) = (f.head, f.len);
                    pool.commit(slot, port, head, len);
                    self.counters.tx(port as usize, len);
                    self.counters.inc(&self.counters.fragments_out);
                }
                Verdict::Drop(r) => self.counters.count_drop(r),
                _ => {}
            }
        }
        self.out.emitted = pool;
        p.len = ETH + frag::truncate_first(p.ip_mut(), first);
        self.counters.inc(&self.counters.fragmented);
        self.counters.inc(&self.counters.fragments_out);
        self.finish(snap, p, nh, now)
    }
}

/// Completes a frame's partial transport checksum (see [`crate::offload::complete_csum`])
/// before it is copied where its offload state does not follow.
#[inline]
fn complete_partial(p: &mut Pkt<'_>) {
    if p.offload.csum_partial && !p.offload.is_gso() {
        offload::complete_csum(p.data_mut());
        p.offload.csum_partial = false;
    }
}

/// The flow key policy and conntrack see for a packet, and its transport fields. Drops
/// (`ipv4/l4-truncated`) a first fragment or whole packet too short for its ports (RFC 1858)
/// and a TCP fragment at offset 8 bytes, which could overwrite the first one's flags.
#[inline]
pub(super) fn flow_key(ip: &Ipv4Packet<&[u8]>) -> Result<(FlowKey, l4::L4Fields), DropReason> {
    let (proto, ff) = (ip.protocol(), ip.flags_frag());
    let fragment = if ff & OFFSET_MASK != 0 {
        Fragment::NonFirst
    } else if ip.more_frags() {
        Fragment::First
    } else {
        Fragment::None
    };
    if proto == PROTO_TCP && ff & OFFSET_MASK == 1 {
        return Err(DropReason::L4Truncated);
    }
    let fields = if fragment == Fragment::NonFirst {
        l4::L4Fields::default()
    } else {
        l4::parse(proto, ip.payload()).ok_or(DropReason::L4Truncated)?
    };
    Ok((FlowKey { src: ip.src(), dst: ip.dst(), proto, sport: fields.sport, dport: fields.dport, fragment }, fields))
}

/// Policy for one packet: the sender's egress (if a local pod), then the receiver's ingress
/// (if a local pod); transit traffic between two non-pods gets the global rules only.
pub(super) fn evaluate(
    pol: &crate::acl::PolicySet,
    src_ep: Option<EndpointId>,
    dst_ep: Option<EndpointId>,
    key: &FlowKey,
) -> bool {
    if src_ep.is_none() && dst_ep.is_none() {
        return pol.evaluate(None, Direction::Ingress, key).action == Action::Allow;
    }
    if let Some(e) = src_ep {
        if pol.evaluate(Some(e), Direction::Egress, key).action != Action::Allow {
            return false;
        }
    }
    if let Some(e) = dst_ep {
        if pol.evaluate(Some(e), Direction::Ingress, key).action != Action::Allow {
            return false;
        }
    }
    true
}

/// The flow an ICMP error (`icmp`: its message) quotes: the original IP header and the first
/// 8 bytes of its payload (RFC 792), keyed as [`crate::acl::ConnTrack`] keys the packet as it
/// was sent. `None` for other ICMP types, a quote too short, or a quoted non-first fragment.
pub(super) fn quoted_flow(icmp: &[u8]) -> Option<FlowKey> {
    if icmp.len() < icmp::HEADER_LEN
        || !matches!(icmp[0], icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAMETER_PROBLEM)
    {
        return None;
    }
    let q = &icmp[icmp::HEADER_LEN..];
    if q.len() < ipv4::MIN_HEADER_LEN || q[0] >> 4 != 4 {
        return None;
    }
    let hl = ((q[0] & 0x0f) as usize) * 4;
    if hl < ipv4::MIN_HEADER_LEN || q.len() < hl + 8 {
        return None;
    }
    if u16::from_be_bytes([q[6], q[7]]) & OFFSET_MASK != 0 {
        return None;
    }
    let proto = q[9];
    let l4 = &q[hl..hl + 8];
    let (sport, dport) = match proto {
        PROTO_TCP | ipv4::PROTO_UDP => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        PROTO_ICMP if matches!(l4[0], icmp::ECHO_REQUEST | icmp::ECHO_REPLY) => {
            ((l4[0] as u16) << 8 | l4[1] as u16, u16::from_be_bytes([l4[4], l4[5]]))
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        src: u32::from_be_bytes([q[12], q[13], q[14], q[15]]),
        dst: u32::from_be_bytes([q[16], q[17], q[18], q[19]]),
        proto,
        sport,
        dport,
        fragment: Fragment::None,
    })
}

/// Reverse-path check of a decapsulated frame's inner source `src` (routed to `nh`), sent by
/// the peer `peer`. Strict (the default, as Calico's per-peer routes make natural): the peer
/// itself, or a source routed back through that peer (IPIP to it, or to it directly; with
/// ECMP, through any of the paths). Loose: any route but none, unreachable, prohibit or
/// blackhole.
#[inline]
pub(super) fn ipip_rpf(snap: &Snapshot, src: u32, nh: NhId, peer: u32) -> bool {
    if src == peer {
        return true;
    }
    let Some(nh) = snap.nexthop(nh) else { return false };
    if !snap.ipip_strict_rpf {
        return !matches!(nh, NextHop::Unreachable | NextHop::NetUnreachable | NextHop::Prohibit | NextHop::Blackhole);
    }
    let via_peer = |nh: &NextHop| match nh {
        NextHop::Tunnel { remote, .. } => *remote == peer,
        NextHop::Gateway { via, .. } => *via == peer,
        _ => false,
    };
    match nh {
        NextHop::Ecmp(members) => members.iter().any(|m| snap.nexthop(*m).is_some_and(via_peer)),
        nh => via_peer(nh),
    }
}

/// Whom a neighbour entry created for this frame is charged to: the sender, for an on-link
/// destination (which the sender picks); nobody for a route's next hop (configuration picks).
pub(super) fn neigh_charge(nh: &NextHop, p: &Pkt<'_>) -> u32 {
    match nh {
        NextHop::Connected { .. } => p.ip().src(),
        _ => 0,
    }
}

/// ECMP flow hash over addresses, protocol and (for unfragmented packets) ports, so a flow
/// stays on one path and fragments of it do too.
#[inline]
pub(super) fn flow_hash(v: Ipv4Packet<&[u8]>) -> u32 {
    let mut x = ((v.src() as u64) << 32 | v.dst() as u64) ^ (v.protocol() as u64) << 56;
    if !v.is_fragment() {
        if let Some(f) = l4::parse(v.protocol(), v.payload()) {
            x ^= (f.sport as u64) << 16 | f.dport as u64;
        }
    }
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 32) as u32
}

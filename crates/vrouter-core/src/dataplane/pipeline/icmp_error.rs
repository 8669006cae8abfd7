//! ICMP errors (RFC 1812 4.3.2), made in place: the quoted datagram stays where it is and the
//! new headers go into the headroom in front of it. Called by input (time exceeded, parameter
//! problem, the RFC 2003 relay), egress (unreachable, prohibited, fragmentation needed) and the
//! timers (host unreachable for what waited in vain for its neighbour). Never about an ICMP
//! error, a non-first fragment or an invalid source (4.3.2.7); rate limited (4.3.2.8).

use super::*;
use egress::flow_hash;

/// An ICMP error to make: type, code, and the 4 bytes after the checksum (the next-hop MTU of
/// fragmentation needed, the pointer of parameter problem, else zero).
#[derive(Copy, Clone, Debug)]
pub(super) struct IcmpMsg {
    pub ty: u8,
    pub code: u8,
    pub rest: u32,
}

impl IcmpMsg {
    /// Destination unreachable, fragmentation needed, advertising `mtu` (RFC 1191).
    pub(super) fn frag_needed(mtu: usize) -> IcmpMsg {
        IcmpMsg { ty: icmp::DEST_UNREACHABLE, code: icmp::CODE_FRAG_NEEDED, rest: mtu as u32 }
    }
}

impl Pipeline {
    /// Rewrites the frame in place into an ICMP error about it (RFC 1812 4.3.2), if one may be
    /// sent: never about an ICMP error, a non-first fragment, or an invalid source (4.3.2.7),
    /// and within the rate limit (4.3.2.8). The quoted datagram stays where it is; the new
    /// headers go into the headroom in front of it.
    pub(super) fn icmp_error(
        &mut self,
        snap: &Snapshot,
        p: &mut Pkt<'_>,
        msg: IcmpMsg,
        from_host: bool,
        now: u64,
    ) -> bool {
        let l3 = p.l3();
        let ip = p.ip();
        let (src, hl, proto, ff) = (ip.src(), ip.header_len(), ip.protocol(), ip.flags_frag());
        if ff & OFFSET_MASK != 0 || ipv4::is_martian_source(src) || (src == snap.node_ip && !from_host) {
            return false;
        }
        if proto == PROTO_ICMP && (ip.total_len() <= hl || icmp::is_error(p.buf[l3 + hl])) {
            return false;
        }
        if l3 < ICMP_ERR_OVERHEAD + ETH {
            return false;
        }
        if !self.icmp_dest_rl.allow(src, now) || !self.icmp_rl.allow(now) {
            self.counters.inc(&self.counters.icmp_errors_ratelimited);
            return false;
        }
        let quote = (p.len - ETH).min(ICMP_ERR_MAX - ICMP_ERR_OVERHEAD);
        let new_l3 = l3 - ICMP_ERR_OVERHEAD;
        let total = ICMP_ERR_OVERHEAD + quote;
        self.ident = self.ident.wrapping_add(1);
        ipv4::write_header(&mut p.buf[new_l3..], 0xc0, total as u16, self.ident, 0, 64, PROTO_ICMP, snap.node_ip, src);
        icmp::write_message(&mut p.buf[new_l3 + ipv4::MIN_HEADER_LEN..new_l3 + total], msg.ty, msg.code, msg.rest);
        p.head = new_l3 - ETH;
        p.len = ETH + total;
        // An ICMP message now, with its own checksum: nothing of the original's offload state
        // (a GSO size, a partial checksum) applies to it.
        p.offload = crate::offload::Offload::NONE;
        self.counters.inc(&self.counters.icmp_errors_sent);
        true
    }

    /// RFC 2003 section 4: an ICMP error from the underlay (`p.buf[at..end]`: its message) about
    /// an IPIP packet we sent is relayed to the inner packet's source when enough of it is
    /// quoted (the inner header and 8 bytes): fragmentation needed with the MTU less the 20
    /// bytes of the outer header, any other unreachable or time exceeded as host unreachable.
    /// Built in place over the quote (which stays where it is); true when the frame now is that
    /// error, addressed to the inner source. False leaves the frame as it was (punted).
    pub(super) fn relay_tunnel_error(
        &mut self,
        snap: &Snapshot,
        p: &mut Pkt<'_>,
        at: usize,
        end: usize,
        now: u64,
    ) -> bool {
        let (ty, code) = (p.buf[at], p.buf[at + 1]);
        if !matches!(ty, icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED) {
            return false;
        }
        // The quoted outer header: ours, IPIP, not a fragment.
        let q = at + icmp::HEADER_LEN;
        if end < q + ipv4::MIN_HEADER_LEN || p.buf[q] >> 4 != 4 {
            return false;
        }
        let qhl = ((p.buf[q] & 0x0f) as usize) * 4;
        let qsrc = u32::from_be_bytes([p.buf[q + 12], p.buf[q + 13], p.buf[q + 14], p.buf[q + 15]]);
        if qhl < ipv4::MIN_HEADER_LEN || p.buf[q + 9] != PROTO_IPIP || qsrc != snap.node_ip {
            return false;
        }
        if u16::from_be_bytes([p.buf[q + 6], p.buf[q + 7]]) & OFFSET_MASK != 0 {
            return false;
        }
        // The quoted inner header and 8 bytes of what it carries.
        let inner = q + qhl;
        if end < inner + ipv4::MIN_HEADER_LEN || p.buf[inner] >> 4 != 4 {
            return false;
        }
        let ihl = ((p.buf[inner] & 0x0f) as usize) * 4;
        if ihl < ipv4::MIN_HEADER_LEN || end < inner + ihl + 8 {
            return false;
        }
        let isrc = u32::from_be_bytes([p.buf[inner + 12], p.buf[inner + 13], p.buf[inner + 14], p.buf[inner + 15]]);
        let (iproto, iff) = (p.buf[inner + 9], u16::from_be_bytes([p.buf[inner + 6], p.buf[inner + 7]]));
        // RFC 1812 4.3.2.7, about the inner packet: never about an ICMP error, a non-first
        // fragment, or an invalid (or our own) source.
        if iff & OFFSET_MASK != 0 || ipv4::is_martian_source(isrc) || snap.is_local(isrc) {
            return false;
        }
        if iproto == PROTO_ICMP && icmp::is_error(p.buf[inner + ihl]) {
            return false;
        }
        let (code, rest) = match (ty, code) {
            (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED) => {
                let mtu = u16::from_be_bytes([p.buf[at + 6], p.buf[at + 7]]) as u32;
                if mtu < 68 + IPIP_OVERHEAD as u32 {
                    return false; // no usable MTU given (RFC 1191 routers give one)
                }
                (icmp::CODE_FRAG_NEEDED, mtu - IPIP_OVERHEAD as u32)
            }
            _ => (icmp::CODE_HOST_UNREACHABLE, 0),
        };
        if inner < ETH + ICMP_ERR_OVERHEAD {
            return false;
        }
        if !self.icmp_dest_rl.allow(isrc, now) || !self.icmp_rl.allow(now) {
            self.counters.inc(&self.counters.icmp_errors_ratelimited);
            return false;
        }
        let quote = (end - inner).min(ICMP_ERR_MAX - ICMP_ERR_OVERHEAD);
        let new_l3 = inner - ICMP_ERR_OVERHEAD;
        let total = ICMP_ERR_OVERHEAD + quote;
        self.ident = self.ident.wrapping_add(1);
        ipv4::write_header(&mut p.buf[new_l3..], 0xc0, total as u16, self.ident, 0, 64, PROTO_ICMP, snap.node_ip, isrc);
        icmp::write_message(
            &mut p.buf[new_l3 + ipv4::MIN_HEADER_LEN..new_l3 + total],
            icmp::DEST_UNREACHABLE,
            code,
            rest,
        );
        p.head = new_l3 - ETH;
        p.len = ETH + total;
        self.counters.inc(&self.counters.icmp_errors_sent);
        true
    }

    /// Malformed IP options (RFC 1812 4.3.2.7 / 5.2.5, as the kernel does): drop as
    /// `ipv4/bad-options` and answer ICMP Parameter Problem (12/0) pointing at the offending
    /// octet, when one may be sent. Only called after the header's lengths, checksum and
    /// addresses passed.
    pub(super) fn parameter_problem(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) {
        let l3 = p.l3();
        let (hl, tl) = (p.ip().header_len(), p.ip().total_len());
        self.counters.count_drop(DropReason::Ipv4BadOptions);
        m.verdict = Verdict::Consumed;
        self.note_answered(DropReason::Ipv4BadOptions);
        p.len = ETH + tl;
        let Some(ptr) = ipv4::bad_option_pointer(&p.buf[l3..l3 + hl]) else { return };
        let rest = (ptr as u32) << 24;
        if self.icmp_error(snap, p, IcmpMsg { ty: icmp::PARAMETER_PROBLEM, code: 0, rest }, false, now) {
            m.local_origin = true;
            m.dst = p.ip().dst();
            m.verdict = Verdict::Continue;
        }
    }

    /// Drops the frame as `reason` and turns it into an ICMP destination unreachable with
    /// `code` when one may be sent (it then takes a second lookup back to the sender).
    pub(super) fn reject(
        &mut self,
        snap: &Snapshot,
        p: &mut Pkt<'_>,
        m: &mut Meta,
        code: u8,
        reason: DropReason,
        now: u64,
    ) {
        self.counters.count_drop(reason);
        m.verdict = Verdict::Consumed;
        self.note_answered(reason);
        if !m.local_origin
            && self.icmp_error(snap, p, IcmpMsg { ty: icmp::DEST_UNREACHABLE, code, rest: 0 }, m.from_host, now)
        {
            m.reroute = true;
            m.local_origin = true;
            self.note_first_lookup(m.dst, m.nh);
            m.dst = p.ip().dst();
            m.verdict = Verdict::Continue;
        }
    }

    /// Takes one held frame (for `next_hop`, or else one that waited past the hold timeout),
    /// counts it as `neigh/unresolved` and answers it with ICMP host unreachable (RFC 1812
    /// 4.3.3.1) into the generated-frame pool, when the error may be sent and routed. False
    /// when there was no such frame or no free buffer (the caller drops what is left).
    pub(super) fn host_unreachable(&mut self, snap: &Snapshot, next_hop: Option<u32>, now: u64) -> bool {
        let mut pool = std::mem::replace(&mut self.out.emitted, crate::dataplane::output::EmitPool::new(0));
        let took = match pool.next_free() {
            Some((slot, b)) => match self.hold.take_one(next_hop, now, self.cfg.hold_timeout_ms, &mut b[HEADROOM..]) {
                Some(n) => {
                    self.counters.count_drop(DropReason::NeighUnresolved);
                    // The port is that of the generated frame's buffer (not looked at).
                    let mut p = Pkt::new(b, HEADROOM, n, 0);
                    if let Some(port) = self.route_local_error(snap, &mut p, now) {
                        let (head, len) = (p.head, p.len);
                        pool.commit(slot, port, head, len);
                        self.counters.tx(port as usize, len);
                    }
                    true
                }
                None => false,
            },
            None => false,
        };
        self.out.emitted = pool;
        took
    }

    /// Turns the (held, already forwarded once) frame at `head` into an ICMP host unreachable
    /// to its source and sends it by the FIB: the output port, or `None` when it may not be
    /// sent or has nowhere to go.
    pub(super) fn route_local_error(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, now: u64) -> Option<PortId> {
        if p.len < ETH + ipv4::MIN_HEADER_LEN
            || !self.icmp_error(
                snap,
                p,
                IcmpMsg { ty: icmp::DEST_UNREACHABLE, code: icmp::CODE_HOST_UNREACHABLE, rest: 0 },
                false,
                now,
            )
        {
            return None;
        }
        let dst = p.ip().dst();
        let id = self.shared.fib.pin().lookup(dst);
        let mut nh = snap.nexthop(id)?;
        if let NextHop::Ecmp(members) = nh {
            let h = flow_hash(p.ip());
            nh = snap.nexthop(members[(h as usize) % members.len()])?;
        }
        match nh {
            NextHop::Host => {
                host_l2(snap, p);
                snap.host_port
            }
            NextHop::Local { .. } | NextHop::Gateway { .. } | NextHop::Connected { .. } | NextHop::Tunnel { .. } => {
                match self.finish(snap, p, nh, now) {
                    Verdict::Tx(port) => Some(port),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

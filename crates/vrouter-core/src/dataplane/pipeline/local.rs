//! Stage 1b, local delivery (per frame), for frames addressed to one of our own addresses:
//! IPIP decapsulation from known peers (RFC 2003, with inner-source checks and RFC 6040 ECN),
//! echo replies, the RFC 2003 relay of underlay ICMP errors, delivery to the node's kernel
//! (host port). Sets `Punt` or a drop, or leaves `Continue` (decapsulated transit, echo replies
//! and relayed errors, the latter two marked locally originated). Drop reasons: `ipip/*`,
//! `ipv4/fragment-to-router`, `icmp/malformed`, `local/*`.

use super::*;

impl Pipeline {
    /// For our own addresses: IPIP decapsulation, echo, punt.
    pub(super) fn local(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) {
        let l3 = p.l3();
        let ip = p.ip();
        let (src, dst, proto, hl, tl, frag) =
            (ip.src(), ip.dst(), ip.protocol(), ip.header_len(), ip.total_len(), ip.is_fragment());
        if proto == PROTO_IPIP && !m.decapped {
            // RFC 2003, with CVE-2020-10136 in mind: only from known peers, to our endpoint.
            let r = if dst != snap.node_ip {
                Some(DropReason::IpipNotOurEndpoint)
            } else if !snap.is_peer(src) {
                Some(DropReason::IpipUnknownPeer)
            } else if frag {
                Some(DropReason::IpipOuterFragment)
            } else {
                None
            };
            if let Some(r) = r {
                m.verdict = Verdict::Drop(r);
                return;
            }
            let inner = l3 + hl;
            let info = match ipv4::check_input(&p.buf[inner..p.head + p.len]) {
                Ok(i) => i,
                Err(r) => {
                    m.verdict = Verdict::Drop(if r == Ipv4Error::MartianSource {
                        DropReason::IpipInnerSourceMartian
                    } else {
                        DropReason::IpipBadInner
                    });
                    return;
                }
            };
            if info.protocol == PROTO_IPIP {
                m.verdict = Verdict::Drop(DropReason::IpipNested);
                return;
            }
            // The inner datagram would pass as if it came from the peer's side: a source that
            // is ours or a local pod's is forged (the same datagram unencapsulated is dropped
            // as spoofed); the rest is checked against the route back (egress).
            let inner_src = info.src;
            if snap.is_local(inner_src) {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceOurs);
                return;
            }
            if snap.in_pod_block(inner_src) {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceLocalPod);
                return;
            }
            m.rpf_src = inner_src;
            m.peer = src;
            // RFC 6040 4.2 (normal mode): congestion marked on the outer header is carried to
            // an ECN-capable inner one; a not-ECT inner packet marked CE outside is dropped.
            let (outer_ecn, inner_ecn) = (p.buf[l3 + 1] & ECN_MASK, p.buf[inner + 1] & ECN_MASK);
            let new_ecn = match (outer_ecn, inner_ecn) {
                (ECN_CE, ECN_NOT_ECT) => {
                    m.verdict = Verdict::Drop(DropReason::IpipEcnCeNotEct);
                    return;
                }
                (ECN_CE, _) => ECN_CE,
                (ECN_ECT1, ECN_ECT0) => ECN_ECT1,
                (_, i) => i,
            };
            if new_ecn != inner_ecn {
                p.buf[inner + 1] = (p.buf[inner + 1] & !ECN_MASK) | new_ecn;
                Ipv4Packet::new_unchecked(&mut p.buf[inner..inner + info.total_len as usize]).fill_checksum();
            }
            // Strip the outer header: slide the Ethernet header forward over it.
            p.buf.copy_within(p.head..p.head + ETH, p.head + hl);
            p.head += hl;
            p.len = ETH + info.total_len as usize;
            m.decapped = true;
            self.counters.inc(&self.counters.ipip_decap);
            let inner_dst = info.dst;
            m.dst = inner_dst;
            if snap.is_local(inner_dst) {
                self.local(snap, p, m, now);
            } else {
                self.transit_ttl(snap, p, m, now);
            }
            return;
        }
        if frag {
            m.verdict =
                Verdict::Drop(if proto == PROTO_IPIP { DropReason::IpipNested } else { DropReason::Ipv4FragmentToUs });
            return;
        }
        if proto == PROTO_ICMP {
            let msg = &mut p.buf[l3 + hl..l3 + tl];
            if msg.len() < icmp::HEADER_LEN || !crate::wire::checksum::verify(msg) {
                m.verdict = Verdict::Drop(DropReason::IcmpMalformed);
                return;
            }
            if !m.decapped && self.relay_tunnel_error(snap, p, l3 + hl, l3 + tl, now) {
                m.local_origin = true;
                m.dst = p.ip().dst();
                return;
            }
            let msg = &mut p.buf[l3 + hl..l3 + tl];
            if msg[0] == icmp::ECHO_REQUEST {
                icmp::echo_request_to_reply(msg);
                let mut ip = p.ip_mut();
                ip.set_src(dst);
                ip.set_dst(src);
                ip.set_ttl(64);
                ip.fill_checksum();
                m.local_origin = true;
                m.dst = src;
                return;
            }
            m.verdict = if snap.host_port.is_some() {
                self.deliver_to_host(snap, p, m, now)
            } else {
                Verdict::Drop(DropReason::LocalIcmpOther)
            };
            return;
        }
        m.verdict = if snap.host_port.is_some() {
            self.deliver_to_host(snap, p, m, now)
        } else {
            Verdict::Drop(DropReason::LocalNoPunt)
        };
    }

    /// An IPv4 packet for the node's kernel, addressed to the kernel's MAC on the host port, from
    /// ours. A pod talking to its node is allowed (Kubernetes); with `enforce_host_pod_policy`
    /// its egress policy applies (and the kernel's answers find the connection in conntrack
    /// when the pod has ingress policy).
    pub(super) fn deliver_to_host(&mut self, snap: &Snapshot, p: &mut Pkt<'_>, m: &mut Meta, now: u64) -> Verdict {
        if !self.inner_source_ok(snap, m) {
            return m.verdict;
        }
        if !m.decapped && !m.local_origin && self.cfg.enforce_host_pod_policy {
            if let Some(ep) = snap.port_endpoint.get(p.port as usize).copied().flatten() {
                if let Err(r) = self.policy(snap, p.ip(), Some(ep), None, now) {
                    return Verdict::Drop(r);
                }
            }
        }
        host_l2(snap, p);
        Verdict::Punt
    }
}

//! Timers and neighbours: held frames whose neighbour resolved are sent, ARP requests and
//! probes go out (rate limited), what waited in vain is answered ICMP host unreachable (RFC 1812
//! 4.3.3.1) and counted as `neigh/unresolved`; conntrack is swept. Rides on each
//! [`Pipeline::process`] call, at most once per millisecond.

use super::*;
use egress::neigh_charge;

impl Pipeline {
    /// Timers that ride on the poll loop: held frames whose neighbour resolved (possibly on
    /// another worker), retransmitted ARP requests, expired holds, conntrack sweep.
    pub(super) fn service(&mut self, snap: &Snapshot, now: u64) {
        // At most once per millisecond: the timers are coarse, batches are not.
        if now == self.last_service_ms {
            return;
        }
        self.last_service_ms = now;
        // RFC 1812 4.3.3.1: what waited too long for its next hop is answered host unreachable
        // (within the ICMP error limits; the rest of a flood is only counted).
        while !self.hold.is_empty() && self.host_unreachable(snap, None, now) {}
        let expired = self.hold.expire(now, self.cfg.hold_timeout_ms);
        self.counters.drop_n(DropReason::NeighUnresolved, expired as u64);
        let mut i = 0;
        while i < self.pending.len() {
            let (ip, on_link) = self.pending[i];
            let done = match self.lookup_neigh(ip, 0, on_link, now) {
                NeighLookup::Reachable(mac) | NeighLookup::Stale { mac, .. } => {
                    self.release_held(ip, mac);
                    true
                }
                NeighLookup::Incomplete { send_request } => {
                    if send_request {
                        if let Some(up) = snap.uplink_port {
                            self.send_arp_request(snap, up, ip, on_link, now);
                        }
                    }
                    false
                }
                NeighLookup::Failed | NeighLookup::TableFull | NeighLookup::SourceLimit => {
                    while self.host_unreachable(snap, Some(ip), now) {}
                    let n = self.hold.drop_neighbour(ip);
                    self.counters.drop_n(DropReason::NeighUnresolved, n as u64);
                    true
                }
            };
            if done {
                self.pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
        // Neighbour ageing: shared, so one worker per interval runs it (issue 9 item 7).
        self.shared.neigh.maintain(now);
        self.counters.drop_n(DropReason::NeighHoldFull, self.hold.take_pushed_out() as u64);
        self.ct.expire(now, 64);
        self.counters.conntrack_entries.store(self.ct.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Looks the L2 next hop of `nh` up, sending the ARP request or probe it asks for.
    pub(super) fn prime_neighbour(&mut self, snap: &Snapshot, p: &Pkt<'_>, nh: &NextHop, now: u64) {
        let (port, via) = match nh {
            NextHop::Gateway { port, via } | NextHop::Tunnel { port, via, .. } => (*port, *via),
            NextHop::Connected { port } => (*port, p.ip().dst()),
            _ => return,
        };
        let on_link = matches!(nh, NextHop::Connected { .. });
        match self.lookup_neigh(via, neigh_charge(nh, p), on_link, now) {
            NeighLookup::Incomplete { send_request: true } | NeighLookup::Stale { probe: true, .. } => {
                self.send_arp_request(snap, port, via, on_link, now)
            }
            _ => {}
        }
    }

    /// Looks `via` up for a packet charged to `src` (see [`neigh_charge`]). The answer asks
    /// for a request only when the budget it would come out of has room (routes' next hops
    /// and on-link destinations each have their own, so a sender asking for many addresses
    /// of the node's subnet cannot delay the gateway's or another node's resolution); else a
    /// due request waits, in the table, for the first lookup that may send it.
    pub(super) fn lookup_neigh(&mut self, via: u32, src: u32, on_link: bool, now: u64) -> NeighLookup {
        // A request the batch has no room to emit is not sent either: left due, like one the
        // budget has no room for.
        let may_ask = self.out.emitted.has_room() && self.arp_budget(on_link).ready(now);
        self.shared.neigh.lookup_paced(via, src, now, may_ask)
    }

    fn arp_budget(&mut self, on_link: bool) -> &mut TokenBucket {
        if on_link {
            &mut self.arp_rl_onlink
        } else {
            &mut self.arp_rl_hops
        }
    }

    /// Sends an ARP request for `target`, out of the budget of its kind (`on_link`).
    pub(super) fn send_arp_request(&mut self, snap: &Snapshot, port: PortId, target: u32, on_link: bool, now: u64) {
        if !self.out.emitted.has_room() || !self.arp_budget(on_link).allow(now) {
            return;
        }
        let Some(mac) = snap.port(port).map(|p| p.mac) else { return };
        let Some((slot, b)) = self.out.emitted.next_free() else { return };
        let n = arp::build_request(&mut b[HEADROOM..], mac.0, snap.node_ip, target);
        self.out.emitted.commit(slot, port, HEADROOM, n);
        self.counters.tx(port as usize, n);
        self.counters.inc(&self.counters.arp_requests_sent);
    }

    /// Sends everything held for `ip`, now that it resolved to `mac`.
    pub(super) fn release_held(&mut self, ip: u32, mac: [u8; 6]) {
        let out = &mut self.out.emitted;
        let counters = &self.counters;
        self.hold.release(ip, |port, frame| {
            frame[0..6].copy_from_slice(&mac);
            if out.push_copy(port, frame) {
                counters.tx(port as usize, frame.len());
            } else {
                counters.count_drop(DropReason::TxFull);
            }
        });
    }
}

/// Next hops resolved in the current batch: consecutive frames to the same next hop (a
/// gateway, a peer node) reuse its MAC instead of looking the shared table up again. Only
/// `Reachable` answers are kept, and only for one batch (cleared when a chunk starts), where
/// `now` does not move: a second lookup would return the same MAC and stamp nothing new (the
/// use stamp has a coarser grain). A change made by another worker or the control thread
/// during the batch is seen from the next batch on, as if the lookups had run a little earlier.
/// Four entries, the oldest replaced first: a linear scan of four addresses is cheaper than one lookup.
#[derive(Default)]
pub(super) struct BatchNeigh {
    ips: [u32; BATCH_NEIGH],
    macs: [[u8; 6]; BATCH_NEIGH],
    len: usize,
    next: usize,
}

const BATCH_NEIGH: usize = 4;

impl BatchNeigh {
    #[inline]
    pub(super) fn clear(&mut self) {
        self.len = 0;
        self.next = 0;
    }

    #[inline]
    pub(super) fn get(&self, ip: u32) -> Option<[u8; 6]> {
        (0..self.len).find(|&i| self.ips[i] == ip).map(|i| self.macs[i])
    }

    #[inline]
    pub(super) fn put(&mut self, ip: u32, mac: [u8; 6]) {
        let i = if self.len < BATCH_NEIGH {
            self.len += 1;
            self.len - 1
        } else {
            let oldest = self.next;
            self.next = (oldest + 1) % BATCH_NEIGH;
            oldest
        };
        self.ips[i] = ip;
        self.macs[i] = mac;
    }
}

#[cfg(test)]
mod batch_neigh_tests {
    use super::BatchNeigh;

    #[test]
    fn batch_neigh_keeps_four_and_replaces_the_oldest() {
        let mut c = BatchNeigh::default();
        assert_eq!(c.get(1), None);
        for ip in 1..=4 {
            c.put(ip, [ip as u8; 6]);
        }
        assert!((1..=4).all(|ip| c.get(ip) == Some([ip as u8; 6])));
        c.put(5, [5; 6]);
        c.put(6, [6; 6]);
        assert_eq!((c.get(5), c.get(6)), (Some([5; 6]), Some([6; 6])));
        // The two oldest made room.
        assert_eq!([1, 2, 3, 4].map(|ip| c.get(ip)), [None, None, Some([3; 6]), Some([4; 6])]);
        c.clear();
        assert!((1..=6).all(|ip| c.get(ip).is_none()));
    }
}

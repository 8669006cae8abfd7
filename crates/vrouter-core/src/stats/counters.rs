//! Per-worker counters. One writer (the worker that owns them) and any number of readers (the
//! CLI, metrics): each counter is an `AtomicU64` updated with a relaxed load and store, which
//! compiles to plain moves, so counting costs the worker no locked instruction.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::DropReason;

/// Packet and byte counts in one direction of one port.
#[derive(Default, Debug)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
}

/// A plain copy of one port's counters.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

impl std::iter::Sum for PortStats {
    /// One port's counters summed over workers.
    fn sum<I: Iterator<Item = PortStats>>(it: I) -> PortStats {
        it.fold(PortStats::default(), |a, b| PortStats {
            rx_packets: a.rx_packets + b.rx_packets,
            rx_bytes: a.rx_bytes + b.rx_bytes,
            tx_packets: a.tx_packets + b.tx_packets,
            tx_bytes: a.tx_bytes + b.tx_bytes,
        })
    }
}

/// Everything one worker counts.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
    drops: [AtomicU64; DropReason::COUNT],
    /// ICMP errors generated (time exceeded, unreachable, frag needed).
    pub icmp_errors_sent: AtomicU64,
    /// ICMP errors suppressed by the rate limiter (RFC 1812 4.3.2.8).
    pub icmp_errors_ratelimited: AtomicU64,
    /// ARP requests sent / replies sent.
    pub arp_requests_sent: AtomicU64,
    pub arp_replies_sent: AtomicU64,
    /// Packets encapsulated / decapsulated.
    pub ipip_encap: AtomicU64,
    pub ipip_decap: AtomicU64,
    /// Packets fragmented and fragments produced.
    pub fragmented: AtomicU64,
    pub fragments_out: AtomicU64,
    /// Packets punted to the host port.
    pub punted: AtomicU64,
    /// Big segments from pods cut by software GSO, and the wire-sized segments made of them.
    pub gso_frames: AtomicU64,
    pub gso_segments: AtomicU64,
    /// Merged segments GRO handed to pods, and the wire segments merged into them.
    pub gro_merged: AtomicU64,
    pub gro_segments: AtomicU64,
    /// TCP segments from the wire whose checksum GRO found wrong (passed on unmerged).
    pub gro_bad_checksum: AtomicU64,
    /// Partial transport checksums completed before a wire.
    pub csum_completed: AtomicU64,
    /// Frames handed to the worker that owns their flow.
    pub handed_off: AtomicU64,
    /// A gauge, not a counter: connections this worker tracks (updated about every ms).
    pub conntrack_entries: AtomicU64,
}

#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    // Single writer: a load and a store, not a read-modify-write.
    c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
}

impl Counters {
    pub fn new(ports: usize) -> Self {
        Counters {
            ports: (0..ports).map(|_| PortCounters::default()).collect(),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            icmp_errors_sent: AtomicU64::new(0),
            icmp_errors_ratelimited: AtomicU64::new(0),
            arp_requests_sent: AtomicU64::new(0),
            arp_replies_sent: AtomicU64::new(0),
            ipip_encap: AtomicU64::new(0),
            ipip_decap: AtomicU64::new(0),
            fragmented: AtomicU64::new(0),
            fragments_out: AtomicU64::new(0),
            punted: AtomicU64::new(0),
            gso_frames: AtomicU64::new(0),
            gso_segments: AtomicU64::new(0),
            gro_merged: AtomicU64::new(0),
            gro_segments: AtomicU64::new(0),
            gro_bad_checksum: AtomicU64::new(0),
            csum_completed: AtomicU64::new(0),
            handed_off: AtomicU64::new(0),
            conntrack_entries: AtomicU64::new(0),
        }
    }

    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    #[inline]
    pub fn rx(&self, port: usize, bytes: usize) {
        if let Some(p) = self.ports.get(port) {
            bump(&p.rx_packets, 1);
            bump(&p.rx_bytes, bytes as u64);
        }
    }

    /// `packets` frames totalling `bytes` received on `port`.
    #[inline]
    pub fn rx_n(&self, port: usize, packets: u64, bytes: u64) {
        if let Some(p) = self.ports.get(port) {
            bump(&p.rx_packets, packets);
            bump(&p.rx_bytes, bytes);
        }
    }

    #[inline]
    pub fn tx(&self, port: usize, bytes: usize) {
        if let Some(p) = self.ports.get(port) {
            bump(&p.tx_packets, 1);
            bump(&p.tx_bytes, bytes as u64);
        }
    }

    /// Takes back `packets` frames totalling `bytes` that [`Counters::tx`] counted on `port`
    /// when the pipeline queued them and that the worker then could not send (counted under
    /// their drop reason instead): a lost frame is not also a sent one. Only on the failure
    /// path, so the send path keeps one update per frame.
    #[inline]
    pub fn tx_unsent(&self, port: usize, packets: u64, bytes: u64) {
        if let Some(p) = self.ports.get(port) {
            bump(&p.tx_packets, packets.wrapping_neg());
            bump(&p.tx_bytes, bytes.wrapping_neg());
        }
    }

    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    #[inline]
    pub fn drop_n(&self, reason: DropReason, n: u64) {
        if n != 0 {
            bump(&self.drops[reason as usize], n);
        }
    }

    #[inline]
    pub fn inc(&self, c: &AtomicU64) {
        bump(c, 1);
    }

    /// Adds `n` to one of the named counters.
    #[inline]
    pub fn add(&self, c: &AtomicU64, n: u64) {
        bump(c, n);
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Relaxed)
    }

    /// Non-zero drop counters, by stable name.
    pub fn drop_table(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL.iter().map(|r| (r.name(), self.drops(*r))).filter(|(_, n)| *n != 0).collect()
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|c| c.load(Relaxed)).sum()
    }

    pub fn port(&self, port: usize) -> PortStats {
        let p = &self.ports[port];
        PortStats {
            rx_packets: p.rx_packets.load(Relaxed),
            rx_bytes: p.rx_bytes.load(Relaxed),
            tx_packets: p.tx_packets.load(Relaxed),
            tx_bytes: p.tx_bytes.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_port_and_reason() {
        let c = Counters::new(2);
        c.rx(0, 64);
        c.rx(0, 100);
        c.tx(1, 64);
        c.rx(7, 1); // unknown port: ignored, not a panic
        c.count_drop(DropReason::Ipv4BadChecksum);
        c.count_drop(DropReason::Ipv4BadChecksum);
        assert_eq!(c.port(0).rx_packets, 2);
        assert_eq!(c.port(0).rx_bytes, 164);
        assert_eq!(c.port(1).tx_packets, 1);
        assert_eq!(c.drops(DropReason::Ipv4BadChecksum), 2);
        assert_eq!(c.drop_table(), vec![("ipv4/bad-checksum", 2)]);
        assert_eq!(c.total_drops(), 2);
        c.drop_n(DropReason::NoRoute, 5);
        c.drop_n(DropReason::NoRoute, 0);
        assert_eq!(c.drops(DropReason::NoRoute), 5);
        c.tx(1, 100);
        c.tx_unsent(1, 1, 100);
        c.tx_unsent(9, 1, 1); // unknown port: ignored
        assert_eq!(c.port(1), PortStats { tx_packets: 1, tx_bytes: 64, ..Default::default() });
    }
}

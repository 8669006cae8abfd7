//! The workers' counters as the daemon shows them: one list of the counters that are neither
//! per port nor per drop reason ([`WORKER_COUNTERS`]), from which the `counters` reply, the
//! `--stats` file ([`counters`], [`totals`]) and the Prometheus page ([`super::metrics`]) are
//! all built. Below both the socket server and the daemon: neither calls the other for it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use super::api::reply::{self, CounterTotals, WorkerCounters};
use vrouter_core::stats::{Counters, DropReason};

/// A worker counter: its name in the control protocol and the stats file, its Prometheus
/// family and help, and where each worker keeps it.
pub struct WorkerCounter {
    pub name: &'static str,
    pub metric: &'static str,
    pub help: &'static str,
    pub read: fn(&Counters) -> &AtomicU64,
}

const fn counter(
    name: &'static str,
    metric: &'static str,
    help: &'static str,
    read: fn(&Counters) -> &AtomicU64,
) -> WorkerCounter {
    WorkerCounter { name, metric, help, read }
}

/// Every worker counter that is neither per port nor per drop reason (the conntrack gauge is
/// shown as `connections`).
pub const WORKER_COUNTERS: [WorkerCounter; 16] = [
    counter(
        "icmp_errors_sent",
        "vrouter_icmp_errors_sent_total",
        "ICMP errors sent (time exceeded, destination unreachable, fragmentation needed).",
        |c| &c.icmp_errors_sent,
    ),
    counter(
        "icmp_errors_ratelimited",
        "vrouter_icmp_errors_ratelimited_total",
        "ICMP errors not sent because of the rate limit (RFC 1812 4.3.2.8).",
        |c| &c.icmp_errors_ratelimited,
    ),
    counter("arp_requests_sent", "vrouter_arp_requests_sent_total", "ARP requests sent to resolve next hops.", |c| {
        &c.arp_requests_sent
    }),
    counter(
        "arp_replies_sent",
        "vrouter_arp_replies_sent_total",
        "ARP replies sent for the router's addresses.",
        |c| &c.arp_replies_sent,
    ),
    counter(
        "ipip_encap",
        "vrouter_ipip_encapsulated_packets_total",
        "Packets encapsulated in IPIP (RFC 2003) toward peer nodes.",
        |c| &c.ipip_encap,
    ),
    counter(
        "ipip_decap",
        "vrouter_ipip_decapsulated_packets_total",
        "IPIP packets from peer nodes decapsulated.",
        |c| &c.ipip_decap,
    ),
    counter("fragmented", "vrouter_ipv4_fragmented_packets_total", "Packets fragmented to fit the egress MTU.", |c| {
        &c.fragmented
    }),
    counter(
        "fragments_out",
        "vrouter_ipv4_fragments_created_total",
        "Fragments created by fragmenting packets.",
        |c| &c.fragments_out,
    ),
    counter("punted", "vrouter_punted_packets_total", "Packets punted to the host port.", |c| &c.punted),
    counter(
        "gso_frames",
        "vrouter_gso_frames_total",
        "Big segments from pods (TSO/USO) cut into wire-sized ones by software GSO.",
        |c| &c.gso_frames,
    ),
    counter("gso_segments", "vrouter_gso_segments_total", "Wire-sized segments made by software GSO.", |c| {
        &c.gso_segments
    }),
    counter(
        "gro_merged",
        "vrouter_gro_merged_total",
        "Merged TCP segments (GRO) written to pods, each replacing several from the wire.",
        |c| &c.gro_merged,
    ),
    counter("gro_segments", "vrouter_gro_segments_total", "Segments from the wire merged by GRO.", |c| &c.gro_segments),
    counter(
        "gro_bad_checksum",
        "vrouter_gro_bad_checksum_total",
        "TCP segments from the wire with a wrong checksum, passed to the pod unmerged for it to drop.",
        |c| &c.gro_bad_checksum,
    ),
    counter(
        "csum_completed",
        "vrouter_checksums_completed_total",
        "Partial transport checksums from pods completed before a wire.",
        |c| &c.csum_completed,
    ),
    counter(
        "handed_off",
        "vrouter_handed_off_total",
        "Frames passed to the worker that owns their flow (several workers with stateful policy).",
        |c| &c.handed_off,
    ),
];

/// One port's counts as the protocol has them.
pub fn port_stats(p: vrouter_core::stats::counters::PortStats) -> reply::PortStats {
    reply::PortStats { rx_packets: p.rx_packets, rx_bytes: p.rx_bytes, tx_packets: p.tx_packets, tx_bytes: p.tx_bytes }
}

/// Named ports (`port_names` by port index; unnamed ones left out) with what `stats` gives each.
fn ports(
    port_names: &[String],
    stats: impl Fn(usize) -> vrouter_core::stats::counters::PortStats,
) -> BTreeMap<String, reply::PortStats> {
    port_names
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_empty())
        .map(|(i, n)| (n.clone(), port_stats(stats(i))))
        .collect()
}

/// All workers' counters summed: the `total` of the `counters` reply and the `--stats` file.
pub fn totals(node: &str, port_names: &[String], counters: &[Arc<Counters>]) -> CounterTotals {
    let sum = |read: fn(&Counters) -> &AtomicU64| counters.iter().map(|c| read(c).load(Relaxed)).sum();
    CounterTotals {
        node: node.to_string(),
        ports: ports(port_names, |i| counters.iter().map(|c| c.port(i)).sum()),
        drops: DropReason::ALL
            .iter()
            .map(|r| (r.name().to_string(), counters.iter().map(|c| c.drops(*r)).sum()))
            .collect(),
        counters: WORKER_COUNTERS.iter().map(|w| (w.name.to_string(), sum(w.read))).collect(),
        drop_reasons: DropReason::ALL.iter().map(|r| r.name().to_string()).collect(),
    }
}

/// The `counters` reply: summed and per worker.
pub fn counters(node: &str, port_names: &[String], counters: &[Arc<Counters>]) -> reply::Counters {
    let workers = counters
        .iter()
        .enumerate()
        .map(|(w, c)| WorkerCounters {
            worker: w,
            ports: ports(port_names, |i| c.port(i)),
            drops: c.drop_table().into_iter().map(|(n, v)| (n.to_string(), v)).collect(),
            counters: WORKER_COUNTERS.iter().map(|k| (k.name.to_string(), (k.read)(c).load(Relaxed))).collect(),
        })
        .collect();
    reply::Counters { total: totals(node, port_names, counters), workers, since_clear: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_one_name_a_metric_and_help() {
        let mut names: Vec<&str> = WORKER_COUNTERS.iter().map(|c| c.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), WORKER_COUNTERS.len(), "names repeat");
        for c in &WORKER_COUNTERS {
            assert!(c.metric.starts_with("vrouter_") && c.metric.ends_with("_total"), "{}", c.metric);
            assert!(!c.help.is_empty(), "{}", c.name);
        }
    }

    #[test]
    fn totals_sum_the_workers_and_workers_show_every_counter() {
        let (a, b) = (Arc::new(Counters::new(4)), Arc::new(Counters::new(4)));
        a.punted.fetch_add(2, Relaxed);
        b.punted.fetch_add(3, Relaxed);
        b.count_drop(DropReason::PolicyDeny);
        let names = vec!["up0".to_string(), String::new()];
        let c = counters("n", &names, &[a, b]);
        assert_eq!(c.total.counters["punted"], 5);
        assert_eq!(c.total.drops["policy/deny"], 1);
        assert_eq!(c.total.ports.keys().collect::<Vec<_>>(), ["up0"], "unnamed ports are left out");
        assert_eq!(c.workers[1].counters.len(), WORKER_COUNTERS.len());
        assert_eq!(c.total.drop_reasons.len(), DropReason::ALL.len());
    }
}

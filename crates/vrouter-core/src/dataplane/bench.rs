//! The pipeline benchmark behind `vrouter bench pipeline` and `benches/pipeline.rs`: one
//! worker on one core, 64-byte frames in batches of 64, over a full Internet table.
//!
//! Each scenario pre-builds 4,096 frames (random destinations drawn from the table's routes)
//! outside the timed region. The timed loop runs the pipeline over a batch of 64 buffers and
//! refills it from those frames (a 60-byte copy per frame, standing in for the NIC's DMA, and
//! included in the figure); two batches alternate so a refill is never read straight back.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::packet::{PacketBuf, PortId};
use super::sim::{self, frames, Sim, SimOptions};
use crate::acl::rule::PortRange;
use crate::acl::{Action, EndpointPolicy, PolicyConfig, PolicySet, Rule};
use crate::fib::table::{self, TableError};
use crate::fib::{Ipv4Prefix, NhId};

pub const BATCH: usize = 64;
const TEMPLATES: usize = 4096;
/// UDP payload that makes a 60-byte frame: 64 bytes on the wire with the FCS.
const PAYLOAD_64: usize = 18;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Uplink to uplink, routed by the table to gateways (BGP mode next hops).
    Forward,
    /// Pod to remote pods over IPIP, with a 1,000-rule egress policy and conntrack.
    EncapAcl,
    /// IPIP from a peer node to local pods.
    Decap,
}

/// A ready-to-run scenario: a simulated node with the table loaded and frames to feed it.
pub struct Scenario {
    pub sim: Sim,
    templates: Vec<(Vec<u8>, PortId)>,
    /// Two batches: one is refilled right after it was processed, so the copy's stores have
    /// retired before the pipeline reads them, as a NIC's DMA would be.
    bufs: [Vec<PacketBuf>; 2],
    cur: usize,
    next: usize,
    pub frame_len: usize,
}

/// Rules for the encap scenario: 999 denies that this traffic never matches (other
/// destinations, TCP port ranges), then allow-all: every packet walks the whole compiled list.
pub fn policy_1000_rules(rng: &mut SmallRng) -> PolicyConfig {
    let mut rules = Vec::with_capacity(1000);
    for i in 0..999u32 {
        let mut r = Rule::any(Action::Deny);
        // 100.64.0.0/10 (shared address space) is not in an Internet table.
        let net = 0x6440_0000 | ((i & 0x3fff) << 8);
        r.dst = vec![Ipv4Prefix::new_masked(net, 24)];
        r.protocol = Some(6);
        let lo = rng.random_range(1..60000u16);
        r.dst_ports = vec![PortRange::new(lo, lo + rng.random_range(0..1000u16)).expect("lo <= hi")];
        rules.push(r);
    }
    rules.push(Rule::any(Action::Allow));
    let mut cfg = PolicyConfig::default();
    cfg.policies.insert("bench".into(), rules);
    cfg.endpoints = vec![EndpointPolicy { ingress: vec![], egress: vec!["bench".into()] }, EndpointPolicy::default()];
    cfg
}

fn random_host(rng: &mut SmallRng, prefixes: &[Ipv4Prefix]) -> u32 {
    loop {
        let p = prefixes[rng.random_range(0..prefixes.len())];
        let a = p.addr() | (rng.random::<u32>() & !p.mask());
        // Skip the simulated node's own addresses and anything in the simulated node's 10/8 and 192.168/16.
        if a >> 24 != 10 && a >> 16 != 0xc0a8 && !crate::wire::ipv4::is_martian_dest(a) {
            return a;
        }
    }
}

impl Scenario {
    pub fn new(kind: Kind, prefixes: &[Ipv4Prefix], seed: u64) -> Scenario {
        let mut rng = SmallRng::seed_from_u64(seed);
        let policy = match kind {
            Kind::EncapAcl => {
                Arc::new(PolicySet::compile(&policy_1000_rules(&mut rng), 1).expect("valid bench policy"))
            }
            _ => Arc::new(PolicySet::allow_all()),
        };
        let mut sim = Sim::new(SimOptions { policy, ..Default::default() });
        let nh_for = |i: usize| -> NhId {
            match kind {
                Kind::Forward | Kind::Decap => [sim::NH_NODE2, sim::NH_UNDERLAY][i % 2],
                Kind::EncapAcl => sim::NH_NODE3_IPIP,
            }
        };
        sim.fib.load(prefixes.iter().enumerate().map(|(i, p)| (*p, nh_for(i))));
        // The sim's own routes are more specific than anything in an Internet table.
        sim.fib.insert(sim::pfx("10.244.1.2/32"), sim::NH_POD_A);
        sim.fib.insert(sim::pfx("10.244.1.3/32"), sim::NH_POD_B);
        let payload = [0u8; PAYLOAD_64];
        let templates: Vec<(Vec<u8>, PortId)> = (0..TEMPLATES)
            .map(|i| match kind {
                Kind::Forward => {
                    let dst = random_host(&mut rng, prefixes);
                    let src = 0xc633_6400 | (i as u32 & 0xff); // 198.51.100.x
                    (
                        frames::udp(sim::GW_MAC, sim::UPLINK_MAC, src, dst, 64, 1024 + i as u16, 53, &payload),
                        sim::UPLINK,
                    )
                }
                Kind::EncapAcl => {
                    let dst = random_host(&mut rng, prefixes);
                    (
                        frames::udp(
                            sim::POD_A_MAC,
                            sim::POD_A_PORT_MAC,
                            sim::POD_A_IP,
                            dst,
                            64,
                            1024 + i as u16,
                            53,
                            &payload,
                        ),
                        sim::POD_A,
                    )
                }
                Kind::Decap => {
                    let dst = [sim::POD_A_IP, sim::POD_B_IP][i % 2];
                    let inner =
                        frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, dst, 64, 1024 + i as u16, 53, &[]);
                    (frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner), sim::UPLINK)
                }
            })
            .collect();
        let frame_len = templates[0].0.len();
        let batch = |o: usize| (o..o + BATCH).map(|i| PacketBuf::new(&templates[i].0, templates[i].1)).collect();
        let bufs = [batch(0), batch(BATCH)];
        Scenario { sim, templates, bufs, cur: 0, next: 2 * BATCH, frame_len }
    }

    /// The frames the scenario feeds, in order, with the port each arrives on.
    pub fn templates(&self) -> &[(Vec<u8>, PortId)] {
        &self.templates
    }

    /// Runs the pipeline once over the current batch, then refills that batch from the next
    /// templates. Returns the number of frames sent.
    #[inline]
    pub fn run_batch(&mut self, now_ms: u64) -> usize {
        let bufs = &mut self.bufs[self.cur];
        let out = self.sim.pipeline.process(bufs, now_ms);
        let sent = out.active_ports().map(|p| out.tx(p).len()).sum();
        for b in bufs.iter_mut() {
            let (f, p) = &self.templates[self.next];
            b.reset(f, *p);
            self.next = (self.next + 1) % TEMPLATES;
        }
        self.cur ^= 1;
        sent
    }

    /// Frames per second over about `seconds`, and the fraction of frames sent.
    pub fn measure(&mut self, seconds: f64) -> (f64, f64) {
        for t in 0..(TEMPLATES / BATCH) * 2 {
            self.run_batch(t as u64); // warm-up: caches, conntrack entries
        }
        let start = Instant::now();
        let (mut frames, mut sent, mut iters) = (0u64, 0u64, 0u64);
        loop {
            for _ in 0..64 {
                sent += self.run_batch(1_000 + iters / 1024) as u64;
                frames += BATCH as u64;
                iters += 1;
            }
            if start.elapsed().as_secs_f64() >= seconds {
                break;
            }
        }
        (frames as f64 / start.elapsed().as_secs_f64(), sent as f64 / frames as f64)
    }
}

#[derive(Debug, serde::Serialize)]
pub struct PipelineBenchReport {
    /// The table file, or "synthetic".
    pub table: String,
    pub prefixes: usize,
    pub batch: usize,
    /// Frame length without FCS (60 = a 64-byte frame on the wire).
    pub frame_bytes: usize,
    pub runs: usize,
    /// Median of the runs, millions of frames per second on one core.
    pub forward_mpps: f64,
    pub encap_acl_mpps: f64,
    pub decap_mpps: f64,
    /// Fraction of input frames the pipeline sent (1.0 = nothing dropped).
    pub forward_sent: f64,
    pub encap_acl_sent: f64,
    pub decap_sent: f64,
    pub policy_rules: usize,
    pub flows: usize,
    /// Every run's figures, for spread.
    pub forward_runs: Vec<f64>,
    pub encap_acl_runs: Vec<f64>,
    pub decap_runs: Vec<f64>,
}

/// Loads `table` (or the default real table, or a synthetic one) and its name.
pub fn load_prefixes(table: Option<&Path>) -> Result<(Vec<Ipv4Prefix>, String), TableError> {
    match table.map(Path::to_path_buf).or_else(table::default_table_path) {
        Some(p) => Ok((table::load_table_file(&p)?, p.display().to_string())),
        None => Ok((table::synthetic_table(901_899, 1), "synthetic".into())),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn run_pipeline_bench(table: Option<&Path>, seconds: f64) -> Result<PipelineBenchReport, TableError> {
    let (prefixes, name) = load_prefixes(table)?;
    const RUNS: usize = 5;
    let mut sc = [Kind::Forward, Kind::EncapAcl, Kind::Decap].map(|k| Scenario::new(k, &prefixes, 7));
    let mut runs: [Vec<f64>; 3] = Default::default();
    let mut sent = [0f64; 3];
    // Interleave the scenarios so machine noise spreads over all of them.
    for _ in 0..RUNS {
        for (i, s) in sc.iter_mut().enumerate() {
            let (fps, frac) = s.measure(seconds / RUNS as f64);
            runs[i].push(fps / 1e6);
            sent[i] = frac;
        }
    }
    let [mut f, mut e, mut d] = runs;
    let fr = f.clone();
    let er = e.clone();
    let dr = d.clone();
    Ok(PipelineBenchReport {
        table: name,
        prefixes: prefixes.len(),
        batch: BATCH,
        frame_bytes: sc[0].frame_len,
        runs: RUNS,
        forward_mpps: median(&mut f),
        encap_acl_mpps: median(&mut e),
        decap_mpps: median(&mut d),
        forward_sent: sent[0],
        encap_acl_sent: sent[1],
        decap_sent: sent[2],
        policy_rules: 1000,
        flows: TEMPLATES,
        forward_runs: fr,
        encap_acl_runs: er,
        decap_runs: dr,
    })
}

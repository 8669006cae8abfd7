//! `vrouter bench pipeline`'s scaling figure: the encap + 1,000-rule policy + conntrack scenario
//! (pods' frames to remote pods over IPIP) on one worker, then on two workers with the daemon's
//! handoff (`worker::handoff`): each worker takes every other frame, as an RSS spread that
//! knows nothing of flows would, and hands those whose flow the other owns
//! (`dataplane::affinity`) over the ring, then processes what it was handed. The figure is the
//! pipeline's frames per second summed over the workers, in memory (no ports), each worker
//! pinned to a core of its own where there are two.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vrouter_core::dataplane::bench::{Kind, Scenario};
use vrouter_core::dataplane::{affinity, PacketBuf, Pipeline, PipelineConfig, PortId, BIG_BUF_SIZE};
use vrouter_core::fib::Ipv4Prefix;

use crate::worker::handoff::Handoff;

const BATCH: usize = 64;

/// One worker's and two workers' frames per second, and how many frames crossed.
#[derive(Debug, serde::Serialize)]
pub struct Scaling {
    pub one_worker_mpps: Vec<f64>,
    pub two_workers_mpps: Vec<f64>,
    /// Median two-worker figure over the median one-worker figure.
    pub speedup: f64,
    /// Fraction of the frames each worker took whose flow the other owns (handed over, or
    /// dropped when the other's ring was full).
    pub foreign: f64,
    /// Fraction of those dropped because the owner's ring was full (the owner behind).
    pub handoff_full: f64,
    pub cores: usize,
}

/// One worker's loop: its share of the templates (`me` of `n`) in batches, handed off where
/// another owns the flow, processed, then what it was handed. Returns (frames processed,
/// frames taken, of those another's, of those dropped at a full ring).
fn worker(
    me: usize,
    n: usize,
    mut pipeline: Pipeline,
    templates: &[(Vec<u8>, PortId)],
    handoff: Option<&Handoff>,
    stop: &AtomicBool,
    core: Option<core_affinity::CoreId>,
) -> [u64; 4] {
    if let Some(c) = core {
        core_affinity::set_for_current(c);
    }
    let mut lanes = handoff.and_then(|h| h.lanes(me));
    let mine: Vec<&(Vec<u8>, PortId)> = templates.iter().skip(me).step_by(n).collect();
    let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| PacketBuf::with_size(BIG_BUF_SIZE, &[], 0)).collect();
    let mut inbox = Vec::with_capacity(BATCH);
    let (mut frames, mut taken, mut foreign, mut full, mut next, mut tick) = (0u64, 0u64, 0u64, 0u64, 0usize, 0u64);
    while !stop.load(Ordering::Relaxed) {
        for b in bufs.iter_mut() {
            let (f, p) = mine[next];
            b.reset(f, *p);
            next = (next + 1) % mine.len();
        }
        let mut kept = BATCH;
        taken += BATCH as u64;
        if let (Some(h), Some(l)) = (handoff, lanes.as_mut()) {
            kept = 0;
            for i in 0..BATCH {
                match affinity::owner(bufs[i].data(), n).filter(|&o| o != me) {
                    Some(o) => {
                        foreign += 1;
                        if !l.give(o, &mut bufs[i]) {
                            full += 1;
                        }
                    }
                    None => {
                        bufs.swap(kept, i);
                        kept += 1;
                    }
                }
            }
            l.flush(h);
        }
        tick += 1;
        pipeline.process(&mut bufs[..kept], 1_000 + tick / 1024);
        frames += kept as u64;
        if let Some(l) = lanes.as_mut() {
            for from in (0..n).filter(|&w| w != me) {
                l.take(from, &mut inbox, BATCH);
                pipeline.process(&mut inbox[..], 1_000 + tick / 1024);
                frames += inbox.len() as u64;
                l.give_back(from, &mut inbox);
            }
        }
    }
    [frames, taken, foreign, full]
}

/// Frames per second of `n` workers over `seconds`, the fraction of frames another worker
/// owned, and the fraction of those lost at a full ring.
fn measure(sc: &Scenario, n: usize, seconds: f64) -> (f64, f64, f64) {
    let handoff = (n > 1).then(|| Handoff::new(n).expect("eventfds"));
    let stop = AtomicBool::new(false);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let sums: [AtomicU64; 4] = Default::default();
    let start = Instant::now();
    std::thread::scope(|s| {
        for me in 0..n {
            let pipeline = Pipeline::new(sc.sim.shared.clone(), PipelineConfig::default());
            let (h, stop, sums) = (handoff.as_ref(), &stop, &sums);
            let core = (cores.len() >= n).then(|| cores[me]);
            let templates = sc.templates();
            s.spawn(move || {
                for (sum, v) in sums.iter().zip(worker(me, n, pipeline, templates, h, stop, core)) {
                    sum.fetch_add(v, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let [frames, taken, foreign, full] = sums.map(|s| s.load(Ordering::Relaxed) as f64);
    (frames / start.elapsed().as_secs_f64(), foreign / taken.max(1.0), full / foreign.max(1.0))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// One worker, then two, alternating, `runs` times each.
pub fn run(prefixes: &[Ipv4Prefix], seconds: f64, runs: usize) -> Scaling {
    let sc = Scenario::new(Kind::EncapAcl, prefixes, 7);
    let (mut one, mut two, mut foreign, mut full) = (vec![], vec![], 0.0, 0.0);
    for _ in 0..runs.max(1) {
        one.push(measure(&sc, 1, seconds).0 / 1e6);
        let (fps, f, lost) = measure(&sc, 2, seconds);
        two.push(fps / 1e6);
        (foreign, full) = (f, lost);
    }
    let speedup = median(&two) / median(&one).max(f64::MIN_POSITIVE);
    Scaling {
        one_worker_mpps: one,
        two_workers_mpps: two,
        speedup,
        foreign,
        handoff_full: full,
        cores: core_affinity::get_core_ids().map_or(0, |c| c.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_workers_hand_over_about_half_their_frames_and_both_forward() {
        let prefixes = vrouter_core::fib::table::synthetic_table(2_000, 1);
        let s = run(&prefixes, 0.2, 1);
        assert!(s.one_worker_mpps[0] > 0.0 && s.two_workers_mpps[0] > 0.0, "{s:?}");
        // Every other frame goes to a worker regardless of its flow: about half of those
        // belong to the other worker (the symmetric hash over the scenario's 4,096 flows).
        assert!((0.4..0.6).contains(&s.foreign), "{s:?}");
        assert!(s.handoff_full < 1.0, "some frames crossed: {s:?}");
    }
}

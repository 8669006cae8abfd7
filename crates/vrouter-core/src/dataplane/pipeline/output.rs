//! Stage 5, output: `Tx` and `Punt` frames are listed per port in [`Output`] (by index into the
//! caller's slice, which sends them in bursts), drops are counted by reason. Counts `tx` per
//! port, `punted`; drop reasons: the frames' own, `local/no-punt-port` (a punt with no host
//! port), `fib/bad-next-hop` (a frame no stage decided on, which cannot happen).

use super::*;

impl Pipeline {
    #[inline]
    pub(super) fn output_stage<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], meta: &[Meta], base: u32) {
        for (i, (f, m)) in frames.iter_mut().zip(meta.iter()).enumerate() {
            let len = *f.parts().2;
            match m.verdict {
                Verdict::Tx(p) => {
                    self.out.push(p, base + i as u32);
                    self.counters.tx(p as usize, len);
                }
                Verdict::Punt => match snap.host_port {
                    Some(h) => {
                        self.out.push(h, base + i as u32);
                        self.counters.tx(h as usize, len);
                        self.counters.inc(&self.counters.punted);
                    }
                    None => self.counters.count_drop(DropReason::LocalNoPunt),
                },
                Verdict::Drop(r) => self.counters.count_drop(r),
                Verdict::Consumed | Verdict::Held => {}
                Verdict::Continue => self.counters.count_drop(DropReason::BadNextHop),
            }
        }
    }
}

//! Stage 2, lookup (batched): the longest-prefix match for every `Continue` frame's `Meta::dst`
//! at once, and for decapsulated frames' inner sources (the reverse-path check egress applies).
//! Sets `Meta::nh`, `Meta::rpf_nh`; no verdicts.

use super::*;

impl Pipeline {
    pub(super) fn lookup(&mut self, meta: &mut [Meta]) {
        let mut k = 0;
        for (i, m) in meta.iter().enumerate() {
            if m.verdict == Verdict::Continue {
                self.keys[k] = m.dst;
                self.idx[k] = i as u16;
                k += 1;
            }
        }
        let dsts = k;
        // Decapsulated frames' inner sources, for the reverse-path check.
        for (i, m) in meta.iter().enumerate() {
            if m.verdict == Verdict::Continue && m.rpf_src != 0 {
                self.keys[k] = m.rpf_src;
                self.idx[k] = i as u16;
                k += 1;
            }
        }
        if k == 0 {
            return;
        }
        let guard = self.shared.fib.pin();
        guard.lookup_batch(&self.keys[..k], &mut self.nhs[..k]);
        for j in 0..dsts {
            let m = &mut meta[self.idx[j] as usize];
            m.nh = self.nhs[j];
            m.looked_up = true;
        }
        for j in dsts..k {
            meta[self.idx[j] as usize].rpf_nh = self.nhs[j];
        }
    }
}

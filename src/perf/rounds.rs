//! When the perf lab stops repeating: the convergence rule, as pure functions.
//!
//! On this VM two runs of the same command disagree by up to 2x (other tenants, the host's
//! scheduler), and the disagreement drifts over minutes. So every figure that compares two
//! forwarders is a ratio of runs made back to back within one round (kernel then vrouter, the
//! next round vrouter then kernel: ABBA), and its value is the median of those per-round
//! ratios: what drifts between rounds cancels within each pair. The bench runs at least
//! `reps` rounds; after that it repeats the round of each ratio still moving (only those)
//! until the median after round n agrees with the median after round n-1 within the
//! tolerance (10 % by default), or `max_reps` rounds have run. The report says for each ratio
//! whether it converged, and gives its spread (min, median, max over the rounds).

use serde::Serialize;

use super::Spread;

/// Whether two figures agree within `tol` (a fraction), relative to the larger of the two in
/// magnitude, so that the rule is symmetric; two zeros agree.
pub fn agree(a: f64, b: f64, tol: f64) -> bool {
    if !(a.is_finite() && b.is_finite()) {
        return false;
    }
    (a - b).abs() <= tol * a.abs().max(b.abs())
}

/// Whether the median of `per_round` after its last round agrees within `tol` with the median
/// of the rounds before it. Fewer than two rounds have no two medians to compare: not
/// converged. Rounds that measured nothing are absent from `per_round`, not NaN (see
/// [`round_ratio`]); a non-finite value is skipped all the same.
pub fn converged(per_round: &[f64], tol: f64) -> bool {
    let v: Vec<f64> = per_round.iter().copied().filter(|x| x.is_finite()).collect();
    if v.len() < 2 {
        return false;
    }
    agree(Spread::of(&v[..v.len() - 1]).median, Spread::of(&v).median, tol)
}

/// One round's ratio of `new` over `base` (vrouter over the kernel), or `None` when the base
/// moved nothing (a failed kernel run says nothing about vrouter). A failed `new` run with a
/// working base is a ratio of 0: that round, vrouter did not do the job.
pub fn round_ratio(new: f64, base: f64) -> Option<f64> {
    (base > 0.0 && base.is_finite() && new.is_finite()).then(|| new.max(0.0) / base)
}

/// A ratio over the rounds: its value (the median of the per-round ratios), the spread, and
/// whether the rule above was met.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// The median one round earlier (what `median` was compared with), if there was one.
    pub previous_median: Option<f64>,
    /// Rounds that produced a ratio.
    pub rounds: usize,
    pub converged: bool,
    /// Each round's ratio, in order.
    pub per_round: Vec<f64>,
}

impl Ratio {
    pub fn of(per_round: &[f64], tol: f64) -> Ratio {
        let v: Vec<f64> = per_round.iter().copied().filter(|x| x.is_finite()).collect();
        let s = Spread::of(&v);
        Ratio {
            median: s.median,
            min: s.min,
            max: s.max,
            previous_median: (v.len() >= 2).then(|| Spread::of(&v[..v.len() - 1]).median),
            rounds: v.len(),
            converged: converged(&v, tol),
            per_round: v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agree_is_relative_to_the_larger_and_symmetric() {
        assert!(agree(1.0, 1.1, 0.10));
        assert!(agree(1.1, 1.0, 0.10));
        assert!(!agree(1.0, 1.12, 0.10));
        assert!(agree(0.0, 0.0, 0.10));
        assert!(!agree(0.0, 0.01, 0.10));
        assert!(!agree(f64::NAN, 1.0, 0.10));
    }

    #[test]
    fn one_round_has_nothing_to_compare_with() {
        assert!(!converged(&[], 0.1));
        assert!(!converged(&[0.7], 0.1));
    }

    #[test]
    fn consecutive_medians_decide_not_consecutive_rounds() {
        // Medians 1.0 then (1.0 + 1.05) / 2 = 1.025: agree, although the rounds differ.
        assert!(converged(&[1.0, 1.05], 0.1));
        // Medians 0.5 then 0.75: a 2x pair does not converge at two rounds ...
        assert!(!converged(&[0.5, 1.0], 0.1));
        // ... and a third round near either end settles the median: 0.75 -> 0.9.
        assert!(!converged(&[0.5, 1.0, 0.9], 0.1));
        // 0.9 (three rounds) -> 0.925 (four): within 10 %.
        assert!(converged(&[0.5, 1.0, 0.9, 0.95], 0.1));
        // An outlier round barely moves a median of many.
        assert!(converged(&[0.8, 0.82, 0.79, 0.81, 2.0], 0.1));
    }

    #[test]
    fn the_tolerance_is_an_option() {
        assert!(converged(&[1.0, 1.3], 0.2));
        assert!(!converged(&[1.0, 1.3], 0.1));
    }

    #[test]
    fn round_ratio_needs_a_working_base() {
        assert_eq!(round_ratio(1.0, 2.0), Some(0.5));
        assert_eq!(round_ratio(0.0, 2.0), Some(0.0));
        assert_eq!(round_ratio(1.0, 0.0), None);
        assert_eq!(round_ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn ratio_reports_spread_previous_median_and_verdict() {
        let r = Ratio::of(&[0.5, 1.0, 0.9, 0.95, f64::NAN], 0.1);
        assert_eq!((r.median, r.min, r.max, r.rounds), (0.925, 0.5, 1.0, 4));
        assert_eq!(r.previous_median, Some(0.9));
        assert!(r.converged);
        assert_eq!(r.per_round, vec![0.5, 1.0, 0.9, 0.95]);
        let one = Ratio::of(&[0.7], 0.1);
        assert_eq!((one.median, one.previous_median, one.converged), (0.7, None, false));
    }
}

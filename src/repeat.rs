//! Logging a condition that repeats: the first occurrence in full, the rest counted and told as
//! one line per window, so a stuck condition (an unwritable stats file every 200 ms, 50,000
//! unusable kernel routes in one dump) costs a few lines, not a flood that buries the rest.
//!
//! ```
//! # use std::time::{Duration, Instant};
//! # use vrouter::repeat::{Hit, Repeated};
//! let mut unwritable = Repeated::new(Duration::from_secs(60));
//! # let e = "permission denied";
//! match unwritable.hit(Instant::now()) {
//!     Hit::Log { suppressed: 0 } => tracing::error!("cannot write stats: {e}"),
//!     Hit::Log { suppressed } => tracing::error!("cannot write stats: {e} ({suppressed} more times since the last line)"),
//!     Hit::Quiet => {}
//! }
//! // Where the condition can clear, and on a timer for conditions that stop without clearing:
//! if let Some(n) = unwritable.flush(Instant::now()) {
//!     tracing::error!("cannot write stats: {n} more times");
//! }
//! ```

use std::time::{Duration, Instant};

/// What to do with one occurrence.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Hit {
    /// Log this one; `suppressed` occurrences were counted and not logged since the last line.
    Log { suppressed: u64 },
    /// Counted; say nothing now.
    Quiet,
}

/// One repeating condition: at most one line per `window`, each saying how many occurrences
/// it stands for.
#[derive(Debug)]
pub struct Repeated {
    window: Duration,
    /// When the last line was logged (the current window's start).
    logged_at: Option<Instant>,
    suppressed: u64,
    /// Occurrences since [`Repeated::clear`] (or the start).
    total: u64,
}

impl Repeated {
    pub const fn new(window: Duration) -> Repeated {
        Repeated { window, logged_at: None, suppressed: 0, total: 0 }
    }

    /// Records one occurrence at `now`.
    pub fn hit(&mut self, now: Instant) -> Hit {
        self.total += 1;
        match self.logged_at {
            Some(t) if now.saturating_duration_since(t) < self.window => {
                self.suppressed += 1;
                Hit::Quiet
            }
            _ => {
                self.logged_at = Some(now);
                Hit::Log { suppressed: std::mem::take(&mut self.suppressed) }
            }
        }
    }

    /// Occurrences counted and not yet logged, once the window they fell in has passed (for a
    /// timer: a burst that stops still gets its count told). Starts a new window.
    pub fn flush(&mut self, now: Instant) -> Option<u64> {
        let due = self.logged_at.is_some_and(|t| now.saturating_duration_since(t) >= self.window);
        (due && self.suppressed > 0).then(|| {
            self.logged_at = Some(now);
            std::mem::take(&mut self.suppressed)
        })
    }

    /// The condition cleared: how many times it occurred since it started (`None` if it had not
    /// occurred), forgetting it, so the next occurrence is logged at once.
    pub fn clear(&mut self) -> Option<u64> {
        let n = std::mem::take(&mut self.total);
        self.logged_at = None;
        self.suppressed = 0;
        (n > 0).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn first_is_logged_the_rest_counted_into_one_line_per_window() {
        let t0 = Instant::now();
        let mut r = Repeated::new(W);
        assert_eq!(r.hit(t0), Hit::Log { suppressed: 0 });
        // Every 200 ms for a minute: 299 more, all quiet.
        let quiet = (1..300).filter(|i| r.hit(t0 + Duration::from_millis(200 * i)) == Hit::Quiet).count();
        assert_eq!(quiet, 299);
        assert_eq!(r.hit(t0 + W), Hit::Log { suppressed: 299 });
        assert_eq!(r.clear(), Some(301));
        assert_eq!(r.clear(), None);
        assert_eq!(r.hit(t0 + W), Hit::Log { suppressed: 0 }, "after clearing, logged at once");
    }

    #[test]
    fn flush_tells_the_count_of_a_burst_once_its_window_is_over() {
        let t0 = Instant::now();
        let mut r = Repeated::new(Duration::from_secs(10));
        assert_eq!(r.hit(t0), Hit::Log { suppressed: 0 });
        for _ in 0..49_999 {
            assert_eq!(r.hit(t0), Hit::Quiet);
        }
        assert_eq!(r.flush(t0 + Duration::from_secs(9)), None, "window not over");
        assert_eq!(r.flush(t0 + Duration::from_secs(10)), Some(49_999));
        assert_eq!(r.flush(t0 + Duration::from_secs(30)), None, "told once");
    }
}

//! Token buckets for rate-limiting generated packets: ICMP errors (RFC 1812 section 4.3.2.8
//! requires routers to limit them) and ARP requests.
//!
//! The bucket never reads a clock: callers pass the worker's batch timestamp, so one clock read
//! serves a whole batch and tests are deterministic. Arithmetic is integer, in thousandths of a
//! token, so a rate of 1/s and a 1 ms tick still refill exactly.

/// A token bucket: up to `burst` packets at once, `rate_per_sec` on average. Starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate_per_sec: u32,
    burst: u32,
    /// Thousandths of a token, at most `burst * 1000`.
    milli_tokens: u64,
    last_ms: u64,
}

const MILLI: u64 = 1000;

impl TokenBucket {
    /// A bucket allowing `burst` back-to-back packets, refilling at `rate_per_sec`. A zero
    /// `burst` allows nothing; a zero rate allows `burst` packets once.
    pub const fn new(rate_per_sec: u32, burst: u32) -> Self {
        TokenBucket { rate_per_sec, burst, milli_tokens: burst as u64 * MILLI, last_ms: 0 }
    }

    pub const fn rate_per_sec(&self) -> u32 {
        self.rate_per_sec
    }

    pub const fn burst(&self) -> u32 {
        self.burst
    }

    /// Whether a token is there at `now_ms`, without taking it (a caller that must decide
    /// before it knows whether it will send: the next [`TokenBucket::allow`] at the same time
    /// then succeeds).
    pub fn ready(&mut self, now_ms: u64) -> bool {
        if now_ms > self.last_ms {
            // rate_per_sec tokens per 1000 ms = rate_per_sec milli-tokens per ms.
            let refill = (now_ms - self.last_ms).saturating_mul(self.rate_per_sec as u64);
            self.milli_tokens = self.milli_tokens.saturating_add(refill).min(self.burst as u64 * MILLI);
            self.last_ms = now_ms;
        }
        self.milli_tokens >= MILLI
    }

    /// Takes one token if there is one. `now_ms` may jump arbitrarily far ahead (refill is capped
    /// at `burst`, multiplications saturate) or go backwards (treated as no time passing).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        if self.ready(now_ms) {
            self.milli_tokens -= MILLI;
            true
        } else {
            false
        }
    }
}

/// Token buckets per destination (RFC 1812 4.3.2.8: limit ICMP errors per destination, so one
/// noisy sender cannot use up what every other sender is owed): a fixed table of buckets
/// indexed by a hash of the destination. Destinations that collide share a bucket (stricter,
/// never looser); nothing is allocated after [`DestBuckets::new`].
#[derive(Debug, Clone)]
pub struct DestBuckets {
    buckets: Box<[TokenBucket]>,
    seed: u32,
}

impl DestBuckets {
    /// `slots` buckets (rounded up to a power of two, at least 1) of `rate_per_sec` and `burst`.
    pub fn new(slots: usize, rate_per_sec: u32, burst: u32) -> Self {
        let n = slots.max(1).next_power_of_two();
        DestBuckets {
            buckets: vec![TokenBucket::new(rate_per_sec, burst); n].into_boxed_slice(),
            seed: crate::random_seed() as u32,
        }
    }

    /// Takes one token from `dst`'s bucket if it has one.
    pub fn allow(&mut self, dst: u32, now_ms: u64) -> bool {
        let h = (dst ^ self.seed).wrapping_mul(0x9e37_79b1);
        let i = (h >> 16) as usize & (self.buckets.len() - 1);
        self.buckets[i].allow(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(b: &mut TokenBucket, now: u64, tries: usize) -> usize {
        (0..tries).filter(|_| b.allow(now)).count()
    }

    #[test]
    fn per_destination_buckets_limit_each_destination_not_all() {
        let mut d = DestBuckets::new(1024, 1, 3);
        let dsts: Vec<u32> = (1..=8).map(|i| 0x0a00_0000 + i).collect();
        let got: Vec<usize> = dsts.iter().map(|a| (0..10).filter(|_| d.allow(*a, 0)).count()).collect();
        assert!(got.iter().all(|n| *n <= 3), "never more than one burst per destination: {got:?}");
        assert_eq!(got[0], 3, "the first destination gets its burst");
        assert!(got.iter().sum::<usize>() > 3, "others are not starved by the first: {got:?}");
        assert!(!d.allow(dsts[0], 0));
        assert!(d.allow(dsts[0], 1000), "refilled after 1 s");
        let mut one = DestBuckets::new(1, 1, 3);
        assert_eq!(dsts.iter().filter(|a| one.allow(**a, 0)).count(), 3, "a shared bucket is stricter, never looser");
    }

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10, 5);
        assert_eq!(count(&mut b, 0, 20), 5, "full burst at start");
        assert!(!b.allow(99), "10/s: one token takes 100 ms");
        assert!(b.allow(100));
        assert!(!b.allow(100));
        assert_eq!(count(&mut b, 1100, 20), 5, "after 1 s, 10 tokens refilled but capped at burst 5");
    }

    #[test]
    fn refill_accumulates_fractions() {
        let mut b = TokenBucket::new(3, 5);
        assert_eq!(count(&mut b, 0, 5), 5);
        // 3/s = one token every 333.3 ms; stepping 1 ms at a time must not lose the fractions.
        let mut got = 0;
        for t in 1..=1000 {
            got += b.allow(t) as usize;
        }
        assert_eq!(got, 3);
    }

    #[test]
    fn huge_time_jump_does_not_overflow() {
        let mut b = TokenBucket::new(u32::MAX, u32::MAX);
        assert!(b.allow(0));
        assert!(b.allow(u64::MAX));
        assert!(b.allow(u64::MAX));
        let mut b = TokenBucket::new(1, 2);
        assert_eq!(count(&mut b, u64::MAX, 10), 2);
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let mut b = TokenBucket::new(1000, 1);
        assert!(b.allow(5000));
        assert!(!b.allow(10));
        assert!(!b.allow(5000));
        assert!(b.allow(5001));
    }

    #[test]
    fn zero_rate_or_burst() {
        let mut b = TokenBucket::new(0, 2);
        assert_eq!(count(&mut b, 1_000_000, 5), 2);
        assert!(!b.allow(u64::MAX));
        let mut b = TokenBucket::new(100, 0);
        assert!(!b.allow(0));
        assert!(!b.allow(100_000));
    }
}

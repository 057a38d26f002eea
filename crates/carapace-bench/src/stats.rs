//! Latency statistics for the bench: a fixed-size log-linear histogram of nanoseconds (32
//! sub-buckets per power of two, so a reported percentile is within about 3% of the true
//! value), cheap enough to keep one per subscriber task and merge at the end.

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Values are clamped to 2^40 ns (about 18 minutes), far beyond any bounded run.
const MAX_SHIFT: usize = 40 - SUB_BITS as usize;
const BUCKETS: usize = (MAX_SHIFT + 2) * SUB;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u32]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let k = 63 - v.leading_zeros();
    let shift = (k - SUB_BITS) as usize;
    if shift > MAX_SHIFT {
        return BUCKETS - 1;
    }
    let sub = (v >> shift) as usize & (SUB - 1);
    (shift + 1) * SUB + sub
}

/// The middle of bucket `i`, in the histogram's unit.
fn value(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let shift = i / SUB - 1;
    let sub = (i % SUB) as u64;
    ((SUB as u64 + sub) << shift) + ((1u64 << shift) >> 1)
}

impl Histogram {
    pub fn record(&mut self, nanos: u64) {
        let i = index(nanos);
        self.counts[i] = self.counts[i].saturating_add(1);
        self.total += 1;
        self.max = self.max.max(nanos);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1), in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += u64::from(*c);
            if seen >= rank {
                return value(i).min(self.max);
            }
        }
        self.max
    }

    /// The quantile in milliseconds, rounded to microseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        (self.quantile(q) as f64 / 1_000.0).round() / 1_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_close() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            31,
            32,
            33,
            63,
            64,
            100,
            1_000,
            123_456,
            10_000_000,
            1 << 39,
        ] {
            let i = index(v);
            assert!(i >= last, "index must not go down at {v}");
            last = i;
            let back = value(i);
            let err = (back as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err <= 0.035, "{v} came back as {back}");
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1_000);
        }
        let p50 = h.quantile(0.5) as f64;
        let p99 = h.quantile(0.99) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.035, "{p50}");
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.035, "{p99}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        let mut m = Histogram::default();
        m.merge(&h);
        assert_eq!(m.count(), 1000);
    }
}

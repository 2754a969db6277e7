//! Counters and a latency histogram, one per loop thread, merged at the end.

use serde_json::{json, Value};

/// Latency buckets: 1 µs wide up to 1 ms, then 10 µs up to 100 ms, then 1 ms up to 10 s.
const FINE: u64 = 1_000;
const MID: u64 = 100_000;
const COARSE: u64 = 10_000_000;
const BUCKETS: usize = (FINE + (MID - FINE) / 10 + (COARSE - MID) / 1_000) as usize + 1;

fn bucket(us: u64) -> usize {
    (if us < FINE {
        us
    } else if us < MID {
        FINE + (us - FINE) / 10
    } else if us < COARSE {
        FINE + (MID - FINE) / 10 + (us - MID) / 1_000
    } else {
        BUCKETS as u64 - 1
    }) as usize
}

fn bucket_floor(b: usize) -> u64 {
    let b = b as u64;
    let mid0 = FINE + (MID - FINE) / 10;
    if b < FINE {
        b
    } else if b < mid0 {
        FINE + (b - FINE) * 10
    } else {
        MID + (b - mid0) * 1_000
    }
}

/// What one loop thread measured during the measured phase.
#[derive(Clone)]
pub struct Stats {
    /// Messages (or logins) sent.
    pub sent: u64,
    /// Deliveries received (one per recipient).
    pub delivered: u64,
    /// Deliveries expected for the messages sent.
    pub expected: u64,
    /// Error frames and failed replies.
    pub errors: u64,
    /// Completed logins (login scenario).
    pub logins: u64,
    /// LOGINs sent again to a legacy target (during the whole run, setup included).
    pub legacy_retries: u64,
    hist: Vec<u64>,
    max_us: u64,
    count: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: 0,
            delivered: 0,
            expected: 0,
            errors: 0,
            logins: 0,
            legacy_retries: 0,
            hist: vec![0; BUCKETS],
            max_us: 0,
            count: 0,
        }
    }
}

impl Stats {
    /// Records one latency sample.
    pub fn record(&mut self, us: u64) {
        self.hist[bucket(us)] += 1;
        self.max_us = self.max_us.max(us);
        self.count += 1;
    }

    /// Adds another thread's figures.
    pub fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.expected += o.expected;
        self.errors += o.errors;
        self.logins += o.logins;
        self.legacy_retries += o.legacy_retries;
        for (a, b) in self.hist.iter_mut().zip(&o.hist) {
            *a += b;
        }
        self.max_us = self.max_us.max(o.max_us);
        self.count += o.count;
    }

    /// The latency at quantile `q` (0..=1), in µs.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in self.hist.iter().enumerate() {
            seen += n;
            if seen >= target {
                return bucket_floor(b).min(self.max_us);
            }
        }
        self.max_us
    }

    /// The latency summary as JSON (µs).
    pub fn latency_json(&self) -> Value {
        json!({
            "samples": self.count,
            "p50_us": self.quantile(0.50),
            "p99_us": self.quantile(0.99),
            "p999_us": self.quantile(0.999),
            "max_us": self.max_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut s = Stats::default();
        for us in 1..=1000 {
            s.record(us);
        }
        assert_eq!(s.quantile(0.5), 500);
        assert_eq!(s.quantile(0.99), 990);
        assert_eq!(s.quantile(1.0), 1000);
        s.record(250_000);
        assert_eq!(s.quantile(1.0), 250_000);
        assert_eq!(bucket_floor(bucket(54_321)), 54_320);
        assert_eq!(bucket_floor(bucket(5_432_100)), 5_432_000);
    }
}

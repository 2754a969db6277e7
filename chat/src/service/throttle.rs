//! LoginThrottle: the per-account failed-login throttle — a few free attempts,
//! then a lock that doubles with every further failure, up to a ceiling.
//!
//! The rule it keeps: an attempt is counted *before* its password is checked, so
//! guesses sent at the same time from many connections cannot slip past the limit
//! while their hashes run; a successful login forgets the account's count. It is
//! keyed by the requested id whether or not that user exists, so a lock tells an
//! attacker nothing about which ids are real. In a cluster the count lives in Redis
//! (every node sees the same lock); when Redis fails, this node's own count stands in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::bus::{Bus, Counted, ThrottleRule};

/// How long an account's failure count outlives its last lock (or its last
/// counted attempt): 4 failures per this window never lock an account.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The local table is swept of forgotten accounts every this many attempts.
const SWEEP_EVERY: u32 = 1024;

/// The throttle's settings (README, "Limits").
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Attempts an account gets before the first lock; 0 disables the throttle.
    pub free_attempts: u32,
    /// The first lock; each further counted attempt doubles it.
    pub backoff_base: Duration,
    /// The longest lock.
    pub backoff_max: Duration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            free_attempts: 5,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(15 * 60),
        }
    }
}

impl ThrottleConfig {
    /// The lock that the `n`th counted attempt starts (none below the free attempts).
    pub fn lock_after(&self, n: u64) -> Option<Duration> {
        let free = u64::from(self.free_attempts);
        if free == 0 || n < free {
            return None;
        }
        let doublings = u32::try_from(n - free).unwrap_or(u32::MAX).min(31);
        Some(
            self.backoff_base
                .saturating_mul(1 << doublings)
                .min(self.backoff_max),
        )
    }
}

/// The outcome of [`LoginThrottle::begin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Check the password. `locked` is the lock this attempt started (it was the
    /// last free one, or the first after a lock ran out), for the audit log.
    Allowed {
        /// The lock this attempt started, if it did.
        locked: Option<Duration>,
    },
    /// Refused without a check: the account is locked for this much longer.
    Refused {
        /// Time left on the lock.
        retry_after: Duration,
    },
}

/// One account's record in the local table.
#[derive(Debug, Clone, Copy)]
struct Record {
    /// Counted attempts since the last success (or since the record was forgotten).
    attempts: u64,
    /// Refused until then.
    locked_until: Instant,
    /// Forgotten from then on.
    forget_at: Instant,
}

/// The throttle: Redis when clustered, this table otherwise (or when Redis fails).
pub struct LoginThrottle {
    cfg: ThrottleConfig,
    bus: Option<Arc<Bus>>,
    /// Account id → record; swept of forgotten records now and then.
    local: Mutex<HashMap<i64, Record>>,
    /// Attempts since the last sweep of `local`.
    since_sweep: Mutex<u32>,
}

impl LoginThrottle {
    /// A throttle with these settings, cluster-wide through `bus` when given.
    pub fn new(cfg: ThrottleConfig, bus: Option<Arc<Bus>>) -> LoginThrottle {
        LoginThrottle {
            cfg,
            bus,
            local: Mutex::new(HashMap::new()),
            since_sweep: Mutex::new(0),
        }
    }

    /// Counts a LOGIN attempt for `id`, or refuses it while the account is locked.
    /// May do one Redis round trip: call it on a worker.
    pub fn begin(&self, id: i64) -> Attempt {
        if self.cfg.free_attempts == 0 {
            return Attempt::Allowed { locked: None };
        }
        if let Some(bus) = &self.bus {
            let rule = ThrottleRule {
                free_attempts: self.cfg.free_attempts,
                base: self.cfg.backoff_base,
                max: self.cfg.backoff_max,
                forget_after: FORGET_AFTER,
            };
            match bus.login_attempt(id, &rule) {
                Ok(Counted::Locked(retry_after)) => return Attempt::Refused { retry_after },
                Ok(Counted::Yes(locked)) => return Attempt::Allowed { locked },
                // Debug: during an outage every attempt lands here; the bus logs it once.
                Err(e) => log::debug!("login throttle of {id}: {e}; counting on this node"),
            }
        }
        self.begin_local(id, Instant::now())
    }

    /// A login of `id` succeeded: forget its failures.
    pub fn succeeded(&self, id: i64) {
        if self.cfg.free_attempts == 0 {
            return;
        }
        self.local.lock().remove(&id);
        if let Some(bus) = &self.bus {
            if let Err(e) = bus.login_succeeded(id) {
                log::warn!("login throttle of {id}: count not reset: {e}");
            }
        }
    }

    fn begin_local(&self, id: i64, now: Instant) -> Attempt {
        self.maybe_sweep(now);
        let mut table = self.local.lock();
        let rec = table.entry(id).or_insert(Record {
            attempts: 0,
            locked_until: now,
            forget_at: now,
        });
        if rec.forget_at < now {
            rec.attempts = 0;
        }
        if rec.locked_until > now {
            return Attempt::Refused {
                retry_after: rec.locked_until - now,
            };
        }
        rec.attempts += 1;
        let locked = self.cfg.lock_after(rec.attempts);
        let lock = locked.unwrap_or_default();
        rec.locked_until = now + lock;
        rec.forget_at = now + lock + FORGET_AFTER;
        Attempt::Allowed { locked }
    }

    /// Drops forgotten records once every [`SWEEP_EVERY`] attempts, so ids tried once
    /// each do not pile up.
    fn maybe_sweep(&self, now: Instant) {
        let mut n = self.since_sweep.lock();
        *n += 1;
        if *n < SWEEP_EVERY {
            return;
        }
        *n = 0;
        drop(n);
        self.local.lock().retain(|_, r| r.forget_at >= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(free: u32) -> LoginThrottle {
        LoginThrottle::new(
            ThrottleConfig {
                free_attempts: free,
                backoff_base: Duration::from_secs(1),
                backoff_max: Duration::from_secs(8),
            },
            None,
        )
    }

    #[test]
    fn backoff_doubles_up_to_the_ceiling() {
        let cfg = throttle(5).cfg;
        let locks: Vec<_> = (1..=10).map(|n| cfg.lock_after(n)).collect();
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(
            locks,
            [None, None, None, None, s(1), s(2), s(4), s(8), s(8), s(8)]
        );
        assert_eq!(cfg.lock_after(u64::MAX), s(8));
    }

    #[test]
    fn locks_after_the_free_attempts_and_refuses_until_it_runs_out() {
        let t = throttle(3);
        let t0 = Instant::now();
        for _ in 0..2 {
            assert_eq!(t.begin_local(7, t0), Attempt::Allowed { locked: None });
        }
        let third = t.begin_local(7, t0);
        assert_eq!(
            third,
            Attempt::Allowed {
                locked: Some(Duration::from_secs(1))
            }
        );
        let half = t0 + Duration::from_millis(500);
        assert_eq!(
            t.begin_local(7, half),
            Attempt::Refused {
                retry_after: Duration::from_millis(500)
            }
        );
        // Other accounts are not affected.
        assert_eq!(t.begin_local(8, half), Attempt::Allowed { locked: None });
        // After the lock, one more attempt, which doubles it.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            t.begin_local(7, later),
            Attempt::Allowed {
                locked: Some(Duration::from_secs(2))
            }
        );
        // A success forgets everything.
        t.succeeded(7);
        assert_eq!(t.begin_local(7, later), Attempt::Allowed { locked: None });
    }

    /// Failures minutes apart, within `FORGET_AFTER` (15 minutes), add up to a lock;
    /// `begin` (the entry point, here without Redis) counts like `begin_local`.
    #[test]
    fn failures_minutes_apart_add_up() {
        let t = throttle(3);
        assert_eq!(t.begin(5), Attempt::Allowed { locked: None });
        let t0 = Instant::now();
        let at = |mins: u64| t0 + Duration::from_secs(mins * 60);
        assert_eq!(t.begin_local(5, at(5)), Attempt::Allowed { locked: None });
        assert_eq!(
            t.begin_local(5, at(14)),
            Attempt::Allowed {
                locked: Some(Duration::from_secs(1))
            },
            "the third failure in 14 minutes locks"
        );
    }

    /// An attempt right after a long lock ran out is not forgotten: the record
    /// outlives the lock by `FORGET_AFTER`, so the next lock doubles (up to the
    /// ceiling) instead of the count starting afresh with free attempts.
    #[test]
    fn a_long_lock_is_not_forgotten_when_it_ends() {
        let t = LoginThrottle::new(
            ThrottleConfig {
                free_attempts: 1,
                backoff_base: Duration::from_secs(600),
                backoff_max: Duration::from_secs(900),
            },
            None,
        );
        let t0 = Instant::now();
        let lock = |secs| Attempt::Allowed {
            locked: Some(Duration::from_secs(secs)),
        };
        assert_eq!(t.begin_local(6, t0), lock(600));
        assert_eq!(
            t.begin_local(6, t0 + Duration::from_secs(601)),
            lock(900),
            "doubled, up to the ceiling"
        );
    }

    /// Every `SWEEP_EVERY` attempts (not at each one) the table drops the accounts
    /// it forgot, so ids tried once each do not pile up.
    #[test]
    fn forgotten_accounts_are_swept() {
        let t = throttle(3);
        let t0 = Instant::now();
        let later = t0 + FORGET_AFTER + Duration::from_secs(1);
        let len = || t.local.lock().len() as i64;
        t.begin_local(0, t0);
        t.begin_local(1, later);
        assert_eq!(len(), 2, "no sweep before SWEEP_EVERY attempts");
        let n = i64::from(SWEEP_EVERY) - 1;
        for id in 2..n {
            t.begin_local(id, t0);
        }
        assert_eq!(len(), n);
        t.begin_local(-1, later);
        assert_eq!(len(), 2, "only the records of `later` are kept");
    }

    #[test]
    fn a_quiet_account_is_forgotten() {
        let t = throttle(2);
        let t0 = Instant::now();
        t.begin_local(9, t0);
        let much_later = t0 + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(
            t.begin_local(9, much_later),
            Attempt::Allowed { locked: None }
        );
    }

    #[test]
    fn zero_disables() {
        let t = throttle(0);
        for _ in 0..100 {
            assert_eq!(t.begin(1), Attempt::Allowed { locked: None });
        }
    }
}

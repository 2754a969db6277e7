//! The login throttle's Redis half: one account's failure count and lock, shared by
//! every node of the cluster (see `service::throttle` for the rule it keeps).
//!
//! Keys: `P:loginfail:<id>` counts the attempts (it expires a while after the last
//! lock), `P:loginlock:<id>` exists while the account is locked (its TTL is the time
//! left). Redis keeps the clock, so nodes never compare their own.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;

use super::{Bus, BusError};

/// Counts an attempt unless the account is locked.
/// KEYS: loginfail:id, loginlock:id. ARGV: free attempts, base ms, max ms, forget ms.
/// Returns {-1, ms left} when locked, else {attempts, lock ms started (0: none)}.
const ATTEMPT: &str = r"
local left = redis.call('PTTL', KEYS[2])
if left > 0 then
  return {-1, left}
end
local n = redis.call('INCR', KEYS[1])
local free = tonumber(ARGV[1])
local lock = 0
if n >= free then
  lock = tonumber(ARGV[2]) * 2 ^ math.min(n - free, 31)
  lock = math.floor(math.min(lock, tonumber(ARGV[3])))
  if lock > 0 then
    redis.call('SET', KEYS[2], 1, 'PX', lock)
  end
end
redis.call('PEXPIRE', KEYS[1], lock + tonumber(ARGV[4]))
return {n, lock}
";

static ATTEMPT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(ATTEMPT));

/// The throttle's numbers as the script takes them.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleRule {
    /// Attempts before the first lock (at least 1).
    pub free_attempts: u32,
    /// The first lock.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
    /// How long a count outlives its last lock.
    pub forget_after: Duration,
}

/// What Redis answered to [`Bus::login_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The account is locked for this much longer; nothing was counted.
    Locked(Duration),
    /// The attempt was counted; it started this lock, if any.
    Yes(Option<Duration>),
}

impl Bus {
    fn throttle_keys(&self, id: i64) -> (String, String) {
        let p = &self.cfg.prefix;
        (format!("{p}:loginfail:{id}"), format!("{p}:loginlock:{id}"))
    }

    /// Counts a LOGIN attempt of `id` cluster-wide, or refuses it while it is locked.
    pub fn login_attempt(&self, id: i64, rule: &ThrottleRule) -> Result<Counted, BusError> {
        let (fail, lock) = self.throttle_keys(id);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (n, lock_ms): (i64, i64) = self.with_con(|c| {
            ATTEMPT_SCRIPT
                .key(fail)
                .key(lock)
                .arg(rule.free_attempts)
                .arg(ms(rule.base))
                .arg(ms(rule.max))
                .arg(ms(rule.forget_after))
                .invoke(c)
        })?;
        let millis = |m: i64| Duration::from_millis(u64::try_from(m).unwrap_or(0));
        Ok(if n < 0 {
            Counted::Locked(millis(lock_ms))
        } else {
            Counted::Yes((lock_ms > 0).then(|| millis(lock_ms)))
        })
    }

    /// A login of `id` succeeded: forgets its count and lock cluster-wide.
    pub fn login_succeeded(&self, id: i64) -> Result<(), BusError> {
        let (fail, lock) = self.throttle_keys(id);
        self.with_con(|c| redis::cmd("DEL").arg(fail).arg(lock).query::<i64>(c))?;
        Ok(())
    }
}

//! Password hashing: argon2id PHC strings, with legacy plaintext rows still accepted.
//!
//! The legacy server stored passwords in plaintext. A stored value that is not an argon2
//! PHC string is taken to be such a legacy password: it is compared in constant time, and
//! the caller is told to replace it with [`hash`] (see [`Verified::OkLegacyPlaintext`]).

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::{Condvar, Mutex, OnceLock};

/// The cost of new hashes, set once at start-up ([`set_cost`]); argon2's defaults
/// (19 MiB, 2 passes — OWASP's recommendation) when never set.
static COST: OnceLock<Params> = OnceLock::new();

/// Sets the cost of new hashes: memory in KiB and passes. Existing hashes keep
/// verifying with the parameters stored in them. Call at most once, before serving.
///
/// # Errors
/// Parameters argon2 rejects, or a second call.
pub fn set_cost(memory_kib: u32, passes: u32) -> Result<(), String> {
    let params = Params::new(memory_kib, passes, 1, None).map_err(|e| e.to_string())?;
    COST.set(params)
        .map_err(|_| "the password cost is already set".to_owned())
}

fn hasher() -> Argon2<'static> {
    let params = COST.get().cloned().unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The stored value is an argon2 hash of the password.
    Ok,
    /// The stored value was a legacy plaintext password and matched: the caller must
    /// re-hash it with [`hash`] and store the result.
    OkLegacyPlaintext,
    /// The password is wrong.
    Mismatch,
}

/// Hashes `password` with argon2id and a fresh random salt; returns the PHC string
/// (`$argon2id$v=19$m=…`), which is what the `user.password` column stores.
///
/// Slow on purpose (tens of milliseconds): call it from a worker thread, never an IO loop.
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    with_permit(|| {
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 with default parameters accepts any password shorter than 4 GiB")
            .to_string()
    })
}

/// Password hashes computed (and verified) by this process: a resume must add none
/// (`chat_password_hashes` in /metrics; the failover bench reads it).
static HASHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many password hashes this process computed or verified so far.
pub fn hashes() -> u64 {
    HASHES.load(std::sync::atomic::Ordering::Relaxed)
}

/// At most one hash per core at a time. Hashing is CPU-bound, so more in parallel
/// would only add latency, and each hash holds its memory cost (19 MiB by default)
/// while it runs: this bounds that to cores × cost however many workers there are.
fn with_permit<T>(f: impl FnOnce() -> T) -> T {
    HASHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    static RUNNING: Mutex<usize> = Mutex::new(0);
    static FREED: Condvar = Condvar::new();
    let max = std::thread::available_parallelism().map_or(1, |n| n.get());
    {
        let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *running >= max {
            running = FREED.wait(running).unwrap_or_else(|e| e.into_inner());
        }
        *running += 1;
    }
    struct Release;
    impl Drop for Release {
        fn drop(&mut self) {
            *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
            FREED.notify_one();
        }
    }
    let _release = Release;
    f()
}

/// A hash that no password matches: the hash of a random secret that is thrown away.
/// Stored where a row has no usable password (e.g. a legacy row whose password is NULL).
pub fn unusable() -> String {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let secret: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    hash(&secret)
}

/// Checks `password` against `stored`, which is either an argon2 PHC string or, for rows
/// written by the legacy server, the plaintext password itself.
///
/// A value that starts with `$argon2` and parses as a PHC string is verified as a hash;
/// anything else is a legacy plaintext password, compared in constant time.
pub fn verify(stored: &str, password: &str) -> Verified {
    if stored.starts_with("$argon2") {
        if let Ok(parsed) = PasswordHash::new(stored) {
            let ok = with_permit(|| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            });
            return if ok { Verified::Ok } else { Verified::Mismatch };
        }
    }
    if constant_time_eq(stored.as_bytes(), password.as_bytes()) {
        Verified::OkLegacyPlaintext
    } else {
        Verified::Mismatch
    }
}

/// [`verify`] for a LOGIN, in about the same time whatever the outcome, so that the
/// reply's timing does not tell which ids exist: an unknown user (`stored` is `None`)
/// is checked against a hash no password matches, and a legacy plaintext row pays for
/// one such check too before its constant-time comparison.
///
/// Slow on purpose: call it from a hashing thread, never an IO loop.
pub fn verify_login(stored: Option<&str>, password: &str) -> Verified {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = || DUMMY.get_or_init(unusable).as_str();
    match stored {
        None => {
            let _ = verify(dummy(), password);
            Verified::Mismatch
        }
        Some(s) if is_hash(s) => verify(s, password),
        Some(s) => {
            let _ = verify(dummy(), password);
            verify(s, password)
        }
    }
}

/// Whether `stored` is an argon2 PHC string (not a legacy plaintext password).
fn is_hash(stored: &str) -> bool {
    stored.starts_with("$argon2") && PasswordHash::new(stored).is_ok()
}

/// Compares two byte strings in time that depends only on their lengths, not on where
/// they first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let stored = hash("pa55 wörd 密码 🔑");
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert_eq!(verify(&stored, "pa55 wörd 密码 🔑"), Verified::Ok);
        assert_eq!(verify(&stored, "pa55 wörd 密码"), Verified::Mismatch);
        assert_eq!(verify(&stored, ""), Verified::Mismatch);
    }

    #[test]
    fn salt_is_random() {
        let (a, b) = (hash("same"), hash("same"));
        assert_ne!(a, b);
        assert_eq!(verify(&a, "same"), Verified::Ok);
        assert_eq!(verify(&b, "same"), Verified::Ok);
    }

    #[test]
    fn hash_is_not_a_plaintext_password() {
        let stored = hash("secret");
        assert_eq!(verify(&stored, &stored), Verified::Mismatch);
    }

    #[test]
    fn legacy_plaintext() {
        assert_eq!(verify("pa", "pa"), Verified::OkLegacyPlaintext);
        assert_eq!(verify("pa", "pb"), Verified::Mismatch);
        assert_eq!(verify("pa", "pa "), Verified::Mismatch);
        assert_eq!(verify("pa", "p"), Verified::Mismatch);
        assert_eq!(verify("", ""), Verified::OkLegacyPlaintext);
        assert_eq!(verify("", "x"), Verified::Mismatch);
        assert_eq!(
            verify("'; DROP TABLE user; --", "'; DROP TABLE user; --"),
            Verified::OkLegacyPlaintext
        );
    }

    #[test]
    fn unparsable_argon2_prefix_is_plaintext() {
        assert_eq!(
            verify("$argon2 not phc", "$argon2 not phc"),
            Verified::OkLegacyPlaintext
        );
        assert_eq!(verify("$argon2id$broken", "x"), Verified::Mismatch);
    }

    #[test]
    fn unusable_matches_nothing() {
        let stored = unusable();
        assert!(stored.starts_with("$argon2id$"));
        assert_eq!(verify(&stored, ""), Verified::Mismatch);
        assert_eq!(verify(&stored, &stored), Verified::Mismatch);
    }

    #[test]
    fn verify_login_cases() {
        let stored = hash("pw");
        assert_eq!(verify_login(Some(&stored), "pw"), Verified::Ok);
        assert_eq!(verify_login(Some(&stored), "px"), Verified::Mismatch);
        assert_eq!(verify_login(None, "pw"), Verified::Mismatch);
        assert_eq!(verify_login(None, ""), Verified::Mismatch);
        assert_eq!(
            verify_login(Some("plain"), "plain"),
            Verified::OkLegacyPlaintext
        );
        assert_eq!(verify_login(Some("plain"), "plainx"), Verified::Mismatch);
    }

    #[test]
    fn constant_time_eq_cases() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abc\0"));
        assert!(!constant_time_eq(b"abc\0", b"abc"));
    }
}

//! Resume tokens: 256 random bits from the OS, handed to the client once; only
//! their BLAKE2s-256 hash is stored, and a presented token is checked against it
//! in constant time.
//!
//! The token is random, so a fast hash suffices: nothing is gained by a slow
//! password hash (which would put the cost back on the resume path), and a leaked
//! table does not give out tokens.

use blake2::{Blake2s256, Digest};
use subtle::ConstantTimeEq;

/// Bytes of randomness in a token (256 bits).
const TOKEN_BYTES: usize = 32;

/// A freshly drawn token: the text given to the client and the hash to store.
pub struct Issued {
    /// Lower-case hex of the random bytes; sent once, never stored.
    pub token: String,
    /// [`hash`] of `token`.
    pub hash: [u8; 32],
}

/// Draws a new token from the OS random source.
///
/// # Errors
///
/// The OS refused randomness (no token is issued then).
pub fn issue() -> Result<Issued, getrandom::Error> {
    let mut raw = [0u8; TOKEN_BYTES];
    getrandom::getrandom(&mut raw)?;
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash(&token);
    Ok(Issued { token, hash })
}

/// The stored form of a token: BLAKE2s-256 of its text.
pub fn hash(token: &str) -> [u8; 32] {
    Blake2s256::digest(token.as_bytes()).into()
}

/// Whether `token` hashes to `stored`, compared in constant time.
pub fn matches(token: &str, stored: &[u8]) -> bool {
    hash(token).ct_eq(stored).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_differ_and_match_only_their_hash() {
        let a = issue().unwrap();
        let b = issue().unwrap();
        assert_eq!(a.token.len(), 2 * TOKEN_BYTES);
        assert_ne!(a.token, b.token);
        assert!(matches(&a.token, &a.hash));
        assert!(!matches(&a.token, &b.hash));
        assert!(!matches(&a.token, &a.hash[..31]));
    }
}

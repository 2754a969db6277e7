//! Offline-store bounds: how much may wait for one recipient, in total and from one
//! sender. Both backends check them inside the insert's transaction, so a message
//! beyond them is refused and nothing already stored is ever dropped for it.

/// Messages one recipient may have waiting, by default. A legacy client gets them
/// all on login; 10,000 is weeks of a busy conversation, yet bounded.
pub const DEFAULT_MAX_MESSAGES: u64 = 10_000;
/// Bytes of messages one recipient may have waiting, by default: 64 MiB, a
/// thousand frames of the largest inbound size (64 KiB).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// The share of both bounds one sender may fill, in percent, by default: one sender
/// can fill a quarter, so it takes four accounts to shut a mailbox.
pub const DEFAULT_SENDER_PERCENT: u64 = 25;

/// The bounds of what is stored for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfflineLimits {
    /// Most messages stored for one recipient.
    pub max_messages: u64,
    /// Most bytes (of message text) stored for one recipient.
    pub max_bytes: u64,
    /// Percent of both bounds that one sender's messages may take (1–100).
    pub sender_percent: u64,
}

impl Default for OfflineLimits {
    fn default() -> Self {
        super::offline_defaults()
    }
}

/// What is stored for a recipient (or from one sender to it): messages and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Stored messages.
    pub messages: u64,
    /// Their total length in bytes.
    pub bytes: u64,
}

impl OfflineLimits {
    /// Whether one more message of `bytes` bytes fits, given what the recipient has
    /// stored in all (`total`) and from this sender (`sender`).
    pub fn admits(&self, total: Usage, sender: Usage, bytes: u64) -> bool {
        let (share_n, share_b) = self.sender_share();
        total.messages < self.max_messages
            && total.bytes.saturating_add(bytes) <= self.max_bytes
            && sender.messages < share_n
            && sender.bytes.saturating_add(bytes) <= share_b
    }

    /// One sender's share of the bounds: (messages, bytes).
    pub fn sender_share(&self) -> (u64, u64) {
        let pct = self.sender_percent.clamp(1, 100);
        let share = |bound: u64| (bound.saturating_mul(pct) / 100).max(1);
        (share(self.max_messages), share(self.max_bytes))
    }
}

/// The sender of a stored chat frame (its `id` field, which the server checked
/// against the logged-in user); 0 when it has none. Used where only the text
/// travelled (frames from other nodes, frames put back into the store).
pub fn sender_of(text: &str) -> i64 {
    #[derive(serde::Deserialize)]
    struct Head {
        id: Option<i64>,
    }
    serde_json::from_str::<Head>(text)
        .ok()
        .and_then(|h| h.id)
        .unwrap_or(0)
}

/// Where the ids of `n` messages put back ahead of everything stored go: just below
/// the smallest id in the table (`min`, `None` when empty), never 0 (which MySQL's
/// AUTO_INCREMENT would replace by a fresh, largest id).
pub fn ids_ahead(min: Option<i64>, n: usize) -> i64 {
    min.unwrap_or(1).min(0) - n as i64
}

/// Where a page of stored messages ends: given the recipient's oldest `(id, bytes)`
/// rows in order (at least `max + 1` of them if there are that many), the last id
/// of the page of at most `max` messages and `max_bytes` bytes (the first message
/// always goes, whatever its size), and whether any message is left after it.
pub fn page_end(rows: Vec<(i64, i64)>, max: usize, max_bytes: usize) -> (Option<i64>, bool) {
    let mut last = None;
    let mut sum: u64 = 0;
    for (taken, (id, bytes)) in rows.into_iter().enumerate() {
        let bytes = bytes.max(0) as u64;
        let fits = taken < max && (taken == 0 || sum + bytes <= max_bytes as u64);
        if !fits {
            return (last, true);
        }
        sum += bytes;
        last = Some(id);
    }
    (last, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_each_bound() {
        let l = OfflineLimits {
            max_messages: 8,
            max_bytes: 1000,
            sender_percent: 50,
        };
        let u = |messages, bytes| Usage { messages, bytes };
        assert!(l.admits(u(0, 0), u(0, 0), 500));
        assert!(!l.admits(u(0, 0), u(0, 0), 501), "one sender's byte share");
        assert!(l.admits(u(3, 0), u(3, 0), 1));
        assert!(!l.admits(u(4, 0), u(4, 0), 1), "one sender's message share");
        assert!(l.admits(u(7, 900), u(0, 0), 100));
        assert!(!l.admits(u(8, 0), u(0, 0), 1), "total messages");
        assert!(!l.admits(u(7, 901), u(0, 0), 100), "total bytes");
    }

    /// The defaults' promise: a recipient can have 10,000 messages waiting, or 64 MiB:
    /// 1,024 frames of the largest inbound size (64 KiB); one sender a quarter.
    #[test]
    fn defaults_hold_1024_largest_frames() {
        let l = OfflineLimits::default();
        let frame = 64 * 1024;
        let u = |messages, bytes| Usage { messages, bytes };
        let full = u(1023, 1023 * frame);
        assert!(l.admits(full, u(0, 0), frame), "the 1024th largest frame");
        assert!(!l.admits(u(1024, 1024 * frame), u(0, 0), frame));
        assert!(
            l.admits(u(0, 0), u(255, 255 * frame), frame),
            "a quarter each"
        );
        assert!(!l.admits(u(0, 0), u(256, 256 * frame), frame));
        assert!(l.admits(u(9_999, 0), u(0, 0), 1));
        assert!(!l.admits(u(10_000, 0), u(0, 0), 1));
    }

    #[test]
    fn sender_and_ids() {
        assert_eq!(sender_of(r#"{"id":42,"msg":"x","msgid":6}"#), 42);
        assert_eq!(sender_of("not json"), 0);
        assert_eq!(ids_ahead(None, 3), -3);
        assert_eq!(ids_ahead(Some(1), 2), -2);
        assert_eq!(ids_ahead(Some(57), 2), -2);
        assert_eq!(ids_ahead(Some(-10), 4), -14);
    }

    #[test]
    fn pages_end_at_either_bound() {
        let rows = vec![(1, 100), (2, 100), (3, 100)];
        assert_eq!(page_end(rows.clone(), 10, 250), (Some(2), true));
        assert_eq!(page_end(rows.clone(), 1, 1000), (Some(1), true));
        assert_eq!(
            page_end(rows.clone(), 10, 10),
            (Some(1), true),
            "the first always"
        );
        assert_eq!(page_end(rows, 10, 300), (Some(3), false));
        assert_eq!(page_end(Vec::new(), 10, 300), (None, false));
    }
}

//! The store half of history, friends and groups (protocol.md §10): a second trait that
//! both backends implement beside [`super::Store`], and its row types.
//!
//! History is kept in chunks (`history_chunks`: a batch's messages of one conversation
//! are one row) keyed by (conversation, first seq): a page is one range scan of that
//! key, newest first, whatever the table's size. Seqs come from a per-conversation
//! counter row bumped once per batch, in the batch's transaction, so nodes sharing the
//! database never hand out one seq twice. Blocking, like every store call: workers only.

use super::{GroupRow, StoreError};
use crate::protocol::{Conversation, HistoryItem};

/// One message to append to history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// The conversation's key ([`conv_key`]).
    pub conv: i64,
    /// The sender's user id.
    pub sender: i64,
    /// When the server took it, in milliseconds since the Unix epoch (retention).
    pub ts_ms: i64,
    /// The chat frame's JSON text, as delivered.
    pub text: String,
}

/// The key of a conversation as seen by `user`: a group's is `-groupid`; a one-to-one
/// conversation's is `(low id << 32) | high id`, the same for both sides. `None` for an id
/// beyond 32 bits (no such user can exist: ids are `INT`).
pub fn conv_key(user: i64, conv: Conversation) -> Option<i64> {
    match conv {
        Conversation::Group(g) => Some(-g),
        Conversation::Peer(p) => {
            let (lo, hi) = (user.min(p), user.max(p));
            (hi <= i64::from(u32::MAX >> 1)).then_some((lo << 32) | hi)
        }
    }
}

/// The outcome of [`SocialStore::request_friend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FriendRequest {
    /// The request was made: it waits for the other user's answer.
    Requested,
    /// The same request was already waiting for the other user's answer: nothing
    /// changed (the other user was told when it was made).
    AlreadyRequested,
    /// The other user had asked first: both are friends now.
    Accepted,
    /// Both already are friends of each other.
    AlreadyFriends,
    /// No such user.
    NoSuchUser,
}

/// The outcome of [`SocialStore::leave_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveGroup {
    /// Left; when the creator left, the remaining member with the lowest id (if any)
    /// became the creator.
    Left {
        /// The new creator.
        new_creator: Option<i64>,
    },
    /// The user is not in the group.
    NotMember,
    /// No such group.
    NoSuchGroup,
}

/// The outcome of [`SocialStore::remove_member`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveMember {
    /// Removed.
    Removed,
    /// The remover is not in the group.
    NotMember,
    /// The remover is a member but not the creator.
    NotCreator,
    /// The user to remove is not in the group.
    NotInGroup,
    /// No such group.
    NoSuchGroup,
}

/// History, friend requests and group membership changes. Blocking; thread-safe.
pub trait SocialStore {
    /// Appends `batch` to history in one transaction, giving each message its
    /// conversation's next seq in batch order.
    fn append_history(&self, batch: &[HistoryRecord]) -> Result<(), StoreError>;
    /// The longest message text (bytes) that [`SocialStore::append_history`] can keep:
    /// a longer one would make every attempt at its batch fail (MySQL: past the
    /// server's `max_allowed_packet` or a MEDIUMBLOB), so the history writer does not
    /// queue it. Unbounded unless the store says otherwise.
    fn history_text_max(&self) -> usize {
        usize::MAX
    }
    /// At most `limit` messages of conversation `conv` with a seq below `before` (all when
    /// `None`), newest first.
    fn history_page(
        &self,
        conv: i64,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<HistoryItem>, StoreError>;
    /// Deletes messages stored before `cutoff_ms`, at most `max` rows: a row is a
    /// chunk of up to 64 of one conversation's messages, written within 2 s of each
    /// other and removed once its newest one expired, or (MySQL) a message of the
    /// `history` table that older servers wrote. Returns how many messages went.
    fn prune_history(&self, cutoff_ms: i64, max: i64) -> Result<u64, StoreError>;
    /// The users who list `user` as a friend (who see its presence), ascending.
    fn friend_of(&self, user: i64) -> Result<Vec<i64>, StoreError>;
    /// `from` asks `to` to be a mutual friend. Whether the request is new or was
    /// already waiting is the insert's own result, in the request's transaction: nodes
    /// sharing the database agree on it.
    fn request_friend(&self, from: i64, to: i64) -> Result<FriendRequest, StoreError>;
    /// `user` answers the request of `from`; false when there is none.
    fn answer_friend(&self, user: i64, from: i64, accept: bool) -> Result<bool, StoreError>;
    /// The users whose requests wait for `user`'s answer, with names, ascending.
    fn friend_requests(&self, user: i64) -> Result<Vec<(i64, String)>, StoreError>;
    /// Removes the friendship both ways; false when neither way existed.
    fn del_friend(&self, user: i64, friend: i64) -> Result<bool, StoreError>;
    /// A group with its members (ordered by id); `None` if no such group.
    fn group(&self, group: i64) -> Result<Option<GroupRow>, StoreError>;
    /// `user` leaves `group`.
    fn leave_group(&self, user: i64, group: i64) -> Result<LeaveGroup, StoreError>;
    /// `by` (who must be the creator) removes `user` from `group`.
    fn remove_member(&self, by: i64, group: i64, user: i64) -> Result<RemoveMember, StoreError>;
}

/// For each conversation of `batch` in ascending key order: its key and how many of the
/// batch's messages are in it.
pub(super) fn counts(batch: &[HistoryRecord]) -> Vec<(i64, i64)> {
    let mut m = std::collections::BTreeMap::new();
    for r in batch {
        *m.entry(r.conv).or_insert(0i64) += 1;
    }
    m.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_keys() {
        assert_eq!(conv_key(5, Conversation::Group(9)), Some(-9));
        let both = (
            conv_key(3, Conversation::Peer(7)),
            conv_key(7, Conversation::Peer(3)),
        );
        assert_eq!(
            both,
            (Some((3 << 32) | 7), Some((3 << 32) | 7)),
            "one key for both sides"
        );
        let top = i64::from(i32::MAX);
        assert_eq!(conv_key(top, Conversation::Peer(1)), Some((1 << 32) | top));
        assert_eq!(conv_key(1, Conversation::Peer(top + 1)), None, "beyond INT");
    }
}

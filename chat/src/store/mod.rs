//! Persistent storage: one blocking [`Store`] trait, a MySQL and an embedded SQLite backend.
//!
//! The tables are the legacy ones (`user`, `friend`, `allgroup`, `groupuser`,
//! `offlinemessage`, see `chat.sql`, plus `resumetoken` and history's `historychunk`,
//! `historyseq` and, on MySQL, the `history` of older servers), widened and keyed so
//! that a password hash and a long message fit, duplicate rows cannot exist and offline messages keep their order. Every
//! call blocks on the database: call the store from worker threads, never from an IO loop.
//! Every statement binds its values as parameters; no SQL is ever built from user data.

mod history_chunks;
mod mysql;
mod mysql_history;
mod mysql_schema;
mod mysql_social;
mod offline;
pub mod social;
mod sqlite;
mod sqlite_history;
mod sqlite_social;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use self::mysql::MysqlStore;
pub use self::offline::{sender_of, OfflineLimits, Usage};
pub use self::social::SocialStore;
pub use self::sqlite::SqliteStore;

/// The default [`OfflineLimits`] (a `const fn`, for command-line defaults).
pub const fn offline_defaults() -> OfflineLimits {
    OfflineLimits {
        max_messages: offline::DEFAULT_MAX_MESSAGES,
        max_bytes: offline::DEFAULT_MAX_BYTES,
        sender_percent: offline::DEFAULT_SENDER_PERCENT,
    }
}

/// Connections per pool when the caller does not say ([`open`]).
pub const DEFAULT_POOL_SIZE: u32 = 16;
/// Longest user or group name, in characters (`VARCHAR(50)`, as legacy). Both backends
/// refuse a longer one the way they refuse a taken one, with `Ok(None)`; so they do a
/// name the protocol refuses ([`crate::protocol::name_problem`]: blank, whitespace at
/// either end, control characters).
pub const MAX_NAME_CHARS: usize = 50;
/// Longest group description, in characters (`VARCHAR(200)`, as legacy); a longer one
/// makes [`Store::create_group`] return `Ok(None)`.
pub const MAX_DESC_CHARS: usize = 200;

/// Whether a name and description may be stored: they fit the columns, and the name
/// is one the protocol accepts. Checked before any SQL, so both backends agree: MySQL
/// would fail a too-long value, SQLite would store it; and a name ending in spaces
/// would be another name on SQLite but, compared with PAD SPACE, the same on MySQL.
fn acceptable(name: &str, desc: &str) -> bool {
    name.chars().count() <= MAX_NAME_CHARS
        && desc.chars().count() <= MAX_DESC_CHARS
        && crate::protocol::name_problem(name).is_none()
}

/// The storage operations the chat service needs. Blocking; safe to call from any thread.
pub trait Store: Send + Sync + SocialStore {
    /// Creates a user; `Ok(None)` when the name is taken, longer than
    /// [`MAX_NAME_CHARS`] or not a valid name. Names compare as MySQL's `utf8mb4_bin`
    /// does on both backends: byte for byte (case-sensitive), a stored name's trailing
    /// spaces ignored (PAD SPACE; only names stored before names were checked have any).
    fn register(&self, name: &str, password_hash: &str) -> Result<Option<i64>, StoreError>;
    /// The user's id, name, stored password (hash or legacy plaintext) and `state` column.
    fn user(&self, id: i64) -> Result<Option<UserRow>, StoreError>;
    /// Replaces the stored password (e.g. a legacy plaintext one by its hash).
    fn set_password(&self, id: i64, password_hash: &str) -> Result<(), StoreError>;
    /// Sets the legacy `state` column (mirrors presence for legacy tools).
    fn set_state(&self, id: i64, online: bool) -> Result<(), StoreError>;
    /// Sets `state` to offline for all of `ids` (a node's users on clean shutdown).
    fn set_offline_many(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Sets `state` to offline for every user.
    fn set_all_offline(&self) -> Result<(), StoreError>;
    /// Friends of `id` (one-directional rows userid→friendid, as legacy), with their
    /// names, ordered by id.
    fn friends(&self, id: i64) -> Result<Vec<(i64, String)>, StoreError>;
    /// Adds the row `id`→`friend_id`. Idempotent; [`AddFriend::NoSuchUser`] when
    /// `friend_id` does not exist.
    fn add_friend(&self, id: i64, friend_id: i64) -> Result<AddFriend, StoreError>;
    /// Creates the group with `creator` as its creator member; `Ok(None)` when the name is
    /// taken (compared as in [`Store::register`]) or not a valid name, or the name or
    /// description is too long ([`MAX_NAME_CHARS`], [`MAX_DESC_CHARS`]).
    fn create_group(&self, creator: i64, name: &str, desc: &str)
        -> Result<Option<i64>, StoreError>;
    /// Joins `user` to `group` as a normal member, or as its creator if the group has no
    /// members (its last one left). Idempotent.
    fn join_group(&self, user: i64, group: i64) -> Result<JoinGroup, StoreError>;
    /// Groups the user is in, each with all its members (the user included), ordered by
    /// group id, members by user id.
    fn groups_of(&self, user: i64) -> Result<Vec<GroupRow>, StoreError>;
    /// Member ids of a group, ascending; `None` if the group does not exist.
    fn group_members(&self, group: i64) -> Result<Option<Vec<i64>>, StoreError>;
    /// Whether a user with this id exists.
    fn user_exists(&self, id: i64) -> Result<bool, StoreError>;
    /// Appends one offline message (the chat frame's JSON text) from `from` for `user`
    /// if it fits `limits` (checked in the insert's transaction); `Ok(false)`, storing
    /// nothing, if it does not. Nothing already stored is ever dropped to make room.
    fn store_offline(
        &self,
        user: i64,
        from: i64,
        message: &str,
        limits: &OfflineLimits,
    ) -> Result<bool, StoreError> {
        Ok(self
            .store_offline_many(&[user], from, message, limits)?
            .is_empty())
    }
    /// Sets `user`'s resume token: the hash of the token and its expiry (Unix
    /// seconds), replacing any earlier one (a user holds one token: one session).
    fn put_resume_token(&self, user: i64, hash: &[u8], expires: i64) -> Result<(), StoreError>;
    /// `user`'s resume token hash and expiry, if any.
    fn resume_token(&self, user: i64) -> Result<Option<(Vec<u8>, i64)>, StoreError>;
    /// Replaces `user`'s token hash `old` by `new` (expiring at `expires`) if `old`
    /// is still the stored one; false if it is not (rotated or revoked meanwhile), so
    /// one token resumes one session only.
    fn rotate_resume_token(
        &self,
        user: i64,
        old: &[u8],
        new: &[u8],
        expires: i64,
    ) -> Result<bool, StoreError>;
    /// Deletes `user`'s resume token (logout, kick).
    fn revoke_resume_token(&self, user: i64) -> Result<(), StoreError>;
    /// Appends the same message for each of `users` in one transaction (group fan-out to
    /// offline members), for those it fits; returns the others (refused).
    fn store_offline_many(
        &self,
        users: &[i64],
        from: i64,
        message: &str,
        limits: &OfflineLimits,
    ) -> Result<Vec<i64>, StoreError>;
    /// Puts messages that were taken but not delivered back, in order, ahead of
    /// everything stored for `user` since; not bounded (they were admitted before).
    fn restore_offline(&self, user: i64, messages: &[String]) -> Result<(), StoreError>;
    /// Atomically removes and returns the user's offline messages, oldest first. A message
    /// stored concurrently is either returned now or kept for the next call, never lost.
    fn take_offline(&self, user: i64) -> Result<Vec<String>, StoreError> {
        self.take_offline_batch(user, usize::MAX, usize::MAX)
            .map(|(msgs, _)| msgs)
    }
    /// Like [`Store::take_offline`], the oldest messages up to `max` of them and
    /// `max_bytes` bytes (but always the oldest one, whatever its size); the rest stay
    /// stored, in order, for the next call. The flag says whether any were left.
    fn take_offline_batch(
        &self,
        user: i64,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<String>, bool), StoreError>;
    /// Whether the database answers a trivial query (the readiness check).
    fn ping(&self) -> Result<(), StoreError>;
    /// Offline messages waiting, for all users together.
    fn offline_backlog(&self) -> Result<u64, StoreError>;
    /// How long callers waited for a pooled connection.
    fn pool_wait(&self) -> &PoolWait;
}

/// Time spent waiting for a pooled connection: a count and a sum, bumped with one
/// atomic add each per checkout.
#[derive(Debug, Default)]
pub struct PoolWait {
    checkouts: AtomicU64,
    micros: AtomicU64,
}

impl PoolWait {
    /// Times one checkout.
    pub fn time<T>(&self, checkout: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = checkout();
        self.micros
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.checkouts.fetch_add(1, Ordering::Relaxed);
        out
    }

    /// (checkouts, total seconds waited).
    pub fn get(&self) -> (u64, f64) {
        (
            self.checkouts.load(Ordering::Relaxed),
            self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// One row of `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    /// The user id, which is also the login name on the wire.
    pub id: i64,
    /// The display name (unique).
    pub name: String,
    /// An argon2 PHC string, or a legacy plaintext password: check it with
    /// [`crate::password::verify`].
    pub password: String,
    /// The legacy `state` column; presence proper lives elsewhere, this only mirrors it.
    pub online: bool,
}

/// A group with its members, as [`Store::groups_of`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// The group id.
    pub id: i64,
    /// The group name (unique).
    pub name: String,
    /// The free-text description.
    pub desc: String,
    /// Every member, ordered by user id.
    pub members: Vec<MemberRow>,
}

/// One member of a [`GroupRow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRow {
    /// The member's user id.
    pub id: i64,
    /// The member's name.
    pub name: String,
    /// The member's role in the group.
    pub role: Role,
}

/// A member's role in a group (`groupuser.grouprole`): the protocol's type, which
/// also spells the column.
pub use crate::protocol::Role;

/// The outcome of [`Store::add_friend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddFriend {
    /// The row was added.
    Added,
    /// The row already existed; nothing changed.
    AlreadyFriends,
    /// The friend id names no user.
    NoSuchUser,
}

/// The outcome of [`Store::join_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinGroup {
    /// The user is now a member: normal, or the creator of a group that had no members.
    Joined,
    /// The user was already a member (with whatever role); nothing changed.
    AlreadyMember,
    /// The group id names no group.
    NoSuchGroup,
}

/// A storage failure. Business outcomes (name taken, no such user…) are not errors: they
/// are values of the `Ok` side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The database could not be reached: connect failure, pool timeout, lost connection.
    /// Retrying later may succeed.
    Unavailable(String),
    /// The database answered with an error.
    Backend(String),
    /// The store URL or options are invalid.
    Config(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Unavailable(msg) => write!(f, "database unavailable: {msg}"),
            StoreError::Backend(msg) => write!(f, "database error: {msg}"),
            StoreError::Config(msg) => write!(f, "invalid store configuration: {msg}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<r2d2::Error> for StoreError {
    fn from(err: r2d2::Error) -> Self {
        StoreError::Unavailable(err.to_string())
    }
}

/// Opens the store named by `url` with [`DEFAULT_POOL_SIZE`] connections; see [`open_with`].
pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    open_with(url, DEFAULT_POOL_SIZE)
}

/// Opens the store named by `url` with at most `pool_size` pooled connections, creating
/// the database and its tables, or upgrading legacy ones, as needed.
///
/// - `mysql://user:pass@host:port/db`: MySQL/MariaDB; `db` defaults to `chat` and is
///   created if missing.
/// - `sqlite:PATH`, `sqlite://PATH` or a plain `PATH`: an SQLite file, created if missing.
pub fn open_with(url: &str, pool_size: u32) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("mysql://") {
        return Ok(Arc::new(MysqlStore::open(url, pool_size)?));
    }
    let path = match url.strip_prefix("sqlite:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None => url,
    };
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::Config(format!(
            "{url:?}: an SQLite store needs a file path (each pooled connection to \
             :memory: would see its own database)"
        )));
    }
    Ok(Arc::new(SqliteStore::open(path, pool_size)?))
}

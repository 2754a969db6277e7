//! Router: where a chat frame goes — a session on this node, another node through
//! the bus, or the offline store — and the rules that keep that exactly-once.
//!
//! A user's hub shard lock is held across "is the user here? then send, else try
//! the bus, else store" and, at login, across "register the session, then take the
//! offline messages". So on one node a message is never stored after the login
//! took the store. Across nodes the login runs elsewhere, so after storing for a
//! user the router looks again: if the user came online meanwhile, it asks that
//! node to flush the user's stored messages.

use std::sync::Arc;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::bus::{Bus, Orphan};
use crate::hub::{Hub, Shard};
use crate::session::Session;
use crate::stats::{Chat, Stats};
use crate::store::{Store, StoreError};

/// Stored frames a drained slow reader gets per drain.
const DRAIN_BATCH: usize = 1000;

/// The outcome of the IO loop's fast path ([`Router::try_send_local`]).
#[derive(Debug)]
pub enum Fast {
    /// Delivered.
    Sent,
    /// Nothing done: take the ordinary path.
    NotHere,
    /// The recipient's connection closed just now: this text must be stored for it.
    Store(String),
}

/// Where a one-to-one frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent to a session on this node.
    Local,
    /// Handed to the recipient's node.
    Remote,
    /// Stored for the recipient's next login.
    Stored,
    /// No such user: nothing was stored.
    NoSuchUser,
}

/// Routing over the hub, the bus (cluster mode) and the store.
pub struct Router {
    hub: Hub,
    store: Arc<dyn Store>,
    bus: Option<Arc<Bus>>,
    /// Users something was stored for whose "online elsewhere?" check failed
    /// (Redis unreachable): retried after each heartbeat, so one online on another
    /// node gets it then rather than at its next login.
    unchecked: Mutex<HashSet<i64>>,
    /// False while `unchecked` is empty (nearly always): the hot paths then skip
    /// its lock.
    any_unchecked: AtomicBool,
    /// Where chat frames went (local, remote, stored).
    stats: Arc<Stats>,
}

/// The wire bytes of a frame's JSON text: the text plus one NUL.
fn wire(text: &str) -> Vec<u8> {
    let mut b = Vec::with_capacity(text.len() + 1);
    b.extend_from_slice(text.as_bytes());
    b.push(0);
    b
}

impl Router {
    /// A router; `bus` is `None` on a standalone node.
    pub fn new(store: Arc<dyn Store>, bus: Option<Arc<Bus>>, stats: Arc<Stats>) -> Router {
        Router {
            stats,
            hub: Hub::default(),
            store,
            bus,
            unchecked: Mutex::new(HashSet::new()),
            any_unchecked: AtomicBool::new(false),
        }
    }

    /// The sessions of this node.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The bus, in cluster mode.
    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.bus.as_ref()
    }

    /// Sends one chat frame (JSON text) to `to`.
    pub fn send_one(&self, to: i64, text: &str) -> Result<Outcome, StoreError> {
        let outcome = self.route_one(to, text)?;
        let how = match outcome {
            Outcome::Local => Chat::Local,
            Outcome::Remote => Chat::Remote,
            Outcome::Stored => Chat::Stored,
            Outcome::NoSuchUser => return Ok(outcome),
        };
        self.stats.chats(how, 1);
        Ok(outcome)
    }

    fn route_one(&self, to: i64, text: &str) -> Result<Outcome, StoreError> {
        let shard = self.hub.lock(to);
        if let Some(session) = shard.get(&to) {
            if session.deliver(wire(text)) {
                return Ok(Outcome::Local);
            }
            // A slow reader: kept for the flush when its output drains.
            self.store.store_offline(to, text)?;
            return Ok(Outcome::Stored);
        }
        // A user whose earlier frames were stored while Redis failed keeps having
        // them stored until the flush notice for those went out (under this shard
        // lock, in `retry_rechecks`), so none overtakes them live.
        let unchecked = !self.held_back(&[to]).is_empty();
        if let Some(bus) = self.bus.as_ref().filter(|_| !unchecked) {
            match bus.route(&[to], text) {
                Ok(missed) if missed.is_empty() => return Ok(Outcome::Remote),
                Ok(_) => {}
                Err(e) => {
                    log::debug!("route to {to} through the bus: {e}; storing");
                    // Marked under the shard lock: no later frame goes live before
                    // this one's flush notice (see `retry_rechecks`).
                    self.mark_unchecked(&[to]);
                }
            }
        }
        if !self.store.user_exists(to)? {
            return Ok(Outcome::NoSuchUser);
        }
        self.store.store_offline(to, text)?;
        drop(shard);
        self.recheck(&[to]);
        Ok(Outcome::Stored)
    }

    /// The IO loop's fast path: if `to` is online on this node, not congested, and
    /// its shard is free right now, delivers `make_text()` and returns true. Never
    /// waits and never touches the store or the bus; on false nothing happened.
    pub fn try_send_local(&self, to: i64, make_text: impl FnOnce() -> String) -> Fast {
        let Some(shard) = self.hub.try_lock(to) else {
            return Fast::NotHere;
        };
        let Some(session) = shard.get(&to) else {
            return Fast::NotHere;
        };
        if session.is_congested() || session.is_closed() {
            return Fast::NotHere;
        }
        let text = make_text();
        if session.deliver_always(wire(&text)) {
            self.stats.chats(Chat::Local, 1);
            Fast::Sent
        } else {
            // Closed in the meantime: the text must be stored, off this thread.
            Fast::Store(text)
        }
    }

    /// Fans a chat frame out to `members` (existing users): at once where they are
    /// online, here or on other nodes (one bus message per node), stored for the rest
    /// in one transaction. Returns how many of them it was stored for.
    pub fn send_many(&self, members: &[i64], text: &str) -> Result<usize, StoreError> {
        let guards = self.hub.lock_many(members);
        let (mut elsewhere, mut stored) = self.deliver_local(&guards, members, text);
        // As in `send_one`: those with an unsent flush keep being stored.
        let held = self.held_back(&elsewhere);
        if !held.is_empty() {
            elsewhere.retain(|u| !held.contains(u));
            stored.extend_from_slice(&held);
        }
        let routed = elsewhere.len();
        let missed = match (&self.bus, elsewhere.is_empty()) {
            (_, true) => Vec::new(),
            (Some(bus), false) => bus.route(&elsewhere, text).unwrap_or_else(|e| {
                log::debug!("group route through the bus: {e}; storing");
                self.mark_unchecked(&elsewhere);
                elsewhere
            }),
            (None, false) => elsewhere,
        };
        self.stats.chats(Chat::Remote, routed - missed.len());
        stored.extend_from_slice(&missed);
        if !stored.is_empty() {
            self.store.store_offline_many(&stored, text)?;
            self.stats.chats(Chat::Stored, stored.len());
        }
        drop(guards);
        let mut check = missed;
        check.extend_from_slice(&held);
        self.recheck(&check);
        Ok(stored.len())
    }

    /// Delivers a frame that another node routed here to users expected on this node;
    /// those who left meanwhile get it stored (and flushed wherever they are now).
    /// If that store fails, returns those users: the caller keeps the frame for them.
    pub fn deliver_here(&self, to: &[i64], text: &str) -> Result<(), Vec<i64>> {
        let guards = self.hub.lock_many(to);
        let (gone, mut stored) = self.deliver_local(&guards, to, text);
        stored.extend_from_slice(&gone);
        if !stored.is_empty() {
            if let Err(e) = self.store.store_offline_many(&stored, text) {
                log::warn!("storing a frame for {stored:?}: {e}; kept for a retry");
                return Err(stored);
            }
            self.stats.chats(Chat::Stored, stored.len());
        }
        drop(guards);
        self.recheck(&gone);
        Ok(())
    }

    /// Delivers to the users in `users` that are on this node (their shards locked
    /// in `guards`). Returns (not here, here but congested): the caller routes the
    /// first further and stores for the second.
    fn deliver_local(
        &self,
        guards: &[Option<MutexGuard<'_, Shard>>],
        users: &[i64],
        text: &str,
    ) -> (Vec<i64>, Vec<i64>) {
        let frame: Arc<[u8]> = wire(text).into();
        let mut absent = Vec::new();
        let mut congested = Vec::new();
        let mut batch = Vec::with_capacity(users.len());
        for &u in users {
            let shard = guards[Hub::shard_index(u)]
                .as_ref()
                .expect("locked by lock_many");
            match shard.get(&u) {
                Some(session) => {
                    if !session.deliver_into(&frame, &mut batch) {
                        congested.push(u);
                    }
                }
                None => absent.push(u),
            }
        }
        // Queued while the shards are still locked, so a login that takes a
        // member's shard next sees this frame go out before its own.
        net::send_to_all(&batch, &frame);
        self.stats
            .chats(Chat::Local, users.len() - absent.len() - congested.len());
        (absent, congested)
    }

    /// Stores frames a dead node never delivered (each with its recipients); those
    /// recipients who are online again somewhere get a flush.
    pub fn store_orphans(&self, frames: &[Orphan]) -> Result<(), StoreError> {
        let mut users = Vec::new();
        for (to, text) in frames {
            self.store.store_offline_many(to, text)?;
            users.extend_from_slice(to);
        }
        users.sort_unstable();
        users.dedup();
        for chunk in users.chunks(1000) {
            self.recheck(chunk);
        }
        Ok(())
    }

    /// Delivers the stored messages of local users (after another node stored them
    /// while the users were logging in here).
    pub fn flush_here(&self, users: &[i64]) {
        for &u in users {
            let shard = self.hub.lock(u);
            if let Some(session) = shard.get(&u) {
                self.flush_session(u, session);
            }
        }
    }

    /// A congested session's output drained: under the user's shard lock, deliver
    /// what was stored meanwhile, then let deliveries go live again.
    pub fn drained(&self, user: i64, session: &Session) {
        let shard = self.hub.lock(user);
        let ours = shard.get(&user).is_some_and(|s| s.id() == session.id());
        if !ours {
            session.set_congested(false);
            return;
        }
        // One batch per drain: a long backlog comes out a batch at a time as the
        // reader catches up, instead of all at once into memory.
        let msgs = match self.store.take_offline_batch(user, DRAIN_BATCH) {
            Ok(msgs) => msgs,
            Err(e) => {
                // The frames stay stored: delivered at the next login or drain.
                log::warn!("flush for {user}: {e}; kept for later");
                session.set_congested(false);
                return;
            }
        };
        // Set before the frames are queued, under the shard lock: while more is
        // stored, the flag stays up so new frames queue behind it in the store and
        // this batch's write-complete asks for the next; when this was the last
        // batch, a new crossing of the mark by these frames raises it again.
        session.set_congested(msgs.len() == DRAIN_BATCH);
        self.deliver_or_restore(user, session, msgs);
    }

    /// Delivers taken messages in order; if the connection closed meanwhile, the
    /// rest go back to the store (behind anything stored since: order may suffer,
    /// nothing is lost).
    fn deliver_or_restore(&self, user: i64, session: &Session, msgs: Vec<String>) -> bool {
        let mut it = msgs.into_iter();
        for m in it.by_ref() {
            if !session.deliver_always(wire(&m)) {
                let rest: Vec<String> = std::iter::once(m).chain(it).collect();
                for r in &rest {
                    if let Err(e) = self.store.store_offline(user, r) {
                        log::error!("lost a stored frame for {user}: {e}");
                    }
                }
                return false;
            }
        }
        true
    }

    /// Takes the user's stored messages and delivers them to `session`, congested
    /// or not. The caller holds the user's shard lock. False if the store failed.
    pub(crate) fn flush_session(&self, user: i64, session: &Session) -> bool {
        if session.is_closed() {
            return false;
        }
        match self.store.take_offline(user) {
            Ok(msgs) => self.deliver_or_restore(user, session, msgs),
            Err(e) => {
                log::warn!("flush for {user}: {e}; kept for later");
                false
            }
        }
    }

    /// After storing for `users`: any who are online on another node now get a flush.
    /// Failed checks are kept for [`Router::retry_rechecks`].
    fn recheck(&self, users: &[i64]) {
        let Some(bus) = &self.bus else { return };
        if users.is_empty() {
            return;
        }
        let Ok(nodes) = bus.locate(users) else {
            self.mark_unchecked(users);
            return;
        };
        for (u, node) in users.iter().zip(nodes) {
            if let Some(node) = node {
                if let Err(e) = bus.publish_flush(&node, &[*u]) {
                    log::debug!("flush notice for {u}: {e}");
                    self.mark_unchecked(&[*u]);
                }
            }
        }
    }

    /// Runs again the checks [`Router::recheck`] could not make (after a heartbeat
    /// showed Redis reachable). Each user's flush notice goes out under the user's
    /// shard lock, and only then do frames for the user go live again.
    pub fn retry_rechecks(&self) {
        let Some(bus) = &self.bus else { return };
        let users: Vec<i64> = self.unchecked.lock().iter().copied().collect();
        if users.is_empty() {
            return;
        }
        log::info!(
            "bus: re-checking {} user(s) stored for while Redis failed",
            users.len()
        );
        for u in users {
            let _shard = self.hub.lock(u);
            let Ok(nodes) = bus.locate(&[u]) else {
                return; // Redis fails again: at the next heartbeat
            };
            if let Some(Some(node)) = nodes.first() {
                if bus.publish_flush(node, &[u]).is_err() {
                    return;
                }
            }
            let mut unchecked = self.unchecked.lock();
            unchecked.remove(&u);
            if unchecked.is_empty() {
                self.any_unchecked.store(false, Ordering::Release);
            }
        }
    }

    /// Those of `users` whose flush notice is owed (see `retry_rechecks`): frames
    /// for them are stored, not routed, until it went out.
    fn held_back(&self, users: &[i64]) -> Vec<i64> {
        if !self.any_unchecked.load(Ordering::Acquire) {
            return Vec::new();
        }
        let unchecked = self.unchecked.lock();
        users
            .iter()
            .copied()
            .filter(|u| unchecked.contains(u))
            .collect()
    }

    /// Notes users whose "online elsewhere?" check (and flush) is owed.
    fn mark_unchecked(&self, users: &[i64]) {
        let mut unchecked = self.unchecked.lock();
        unchecked.extend(users);
        self.any_unchecked.store(true, Ordering::Release);
    }

    /// Whether each user is online, here or (cluster mode) on a live node.
    pub fn online(&self, users: &[i64]) -> Vec<bool> {
        let mut out: Vec<bool> = users.iter().map(|&u| self.hub.is_online(u)).collect();
        if let Some(bus) = &self.bus {
            let remote: Vec<i64> = users
                .iter()
                .zip(&out)
                .filter(|(_, here)| !**here)
                .map(|(u, _)| *u)
                .collect();
            if let Ok(nodes) = bus.locate(&remote) {
                let mut it = nodes.into_iter();
                for o in out.iter_mut().filter(|o| !**o) {
                    *o = it.next().flatten().is_some();
                }
            }
        }
        out
    }
}

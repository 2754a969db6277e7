//! Router: where a chat frame goes — a session on this node, another node through
//! the bus, or the offline store — and the rules that keep that exactly-once.
//!
//! A user's hub shard lock is held across "is the user here? then send, else try
//! the bus, else store" and, at login, across "register the session, then take the
//! offline messages". So on one node a message is never stored after the login
//! took the store. Across nodes the login runs elsewhere, so after storing for a
//! user the router looks again: if the user came online meanwhile, it asks that
//! node to flush the user's stored messages.
//!
//! A chat is recorded in history (the caller's `record`) once it is taken: just
//! before it is handed to a session here, under the recipient's shard lock (so a
//! reply is recorded after it), or once the bus or the store took it. A chat the
//! store refused for every recipient is not recorded, except one whose recipient's
//! connection closed, or whose output passed its high-water mark (the IO loop sets
//! congestion outside the shard lock), between the router's look at it and the
//! hand-off (then stored, or refused, already recorded). `record` must not block:
//! it runs under shard locks (`HistoryWriter::record` never waits; callers wait for
//! room before).
//!
//! What is stored for one recipient is bounded ([`OfflineLimits`]): beyond the bound
//! a new frame is refused (counted, logged, and reported to the sender where it is
//! known), never an old one dropped. Frames taken from the store to be delivered
//! but not written go back ahead of everything newer.

use std::sync::Arc;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};

use crate::bus::{Bus, BusError, Orphan};
use crate::hub::{Hub, Shard};
use crate::outflow::FanOut;
use crate::protocol::msgid;
use crate::session::Session;
use crate::stats::{Chat, Stats};
use crate::store::{sender_of, OfflineLimits, Store, StoreError};

/// Stored frames a drained slow reader gets per drain, at most.
const DRAIN_BATCH: usize = 1000;
/// Bytes of stored frames taken per drain, at most (besides the first frame): a
/// backlog costs a connection this much memory at a time, whatever its length.
const DRAIN_BYTES: usize = 1024 * 1024;

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

/// How far [`Router::send_one_batched`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The frame went where the outcome says.
    Done(Outcome),
    /// The frame must go through the bus: route it, then [`Router::finish_one`].
    Bus,
    /// Nothing happened: the frame would not go through the bus (its recipient
    /// is here, or its earlier frames were stored), which
    /// [`Router::send_one_behind_routes`] leaves to a later call.
    Later,
}

/// How [`Router::route_one`] may send a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Anywhere, routed here and now.
    Now,
    /// Anywhere; a frame for the bus stops at [`Step::Bus`].
    Batch,
    /// Only to the bus ([`Step::Bus`]); anything else is [`Step::Later`].
    BatchOnly,
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
    /// Refused: the recipient's offline store is at its bound.
    Refused,
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
    /// The bounds of each recipient's offline store.
    limits: OfflineLimits,
    /// Frames refused because their recipient's offline store was full.
    refused: AtomicU64,
    /// Where chat frames went (local, remote, stored).
    stats: Arc<Stats>,
}

/// Calls `record` unless that was done already.
fn record_once(record: &mut Option<impl FnOnce()>) {
    if let Some(record) = record.take() {
        record();
    }
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
    pub fn new(
        store: Arc<dyn Store>,
        bus: Option<Arc<Bus>>,
        stats: Arc<Stats>,
        limits: OfflineLimits,
    ) -> Router {
        Router {
            stats,
            hub: Hub::default(),
            store,
            bus,
            unchecked: Mutex::new(HashSet::new()),
            any_unchecked: AtomicBool::new(false),
            limits,
            refused: AtomicU64::new(0),
        }
    }

    /// How many frames were refused so far because their recipient's offline store
    /// was full (one per recipient).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stores `text` from `from` for each of `users` within the bounds; returns those
    /// it was refused for, counted and logged.
    fn store_bounded(&self, users: &[i64], from: i64, text: &str) -> Result<Vec<i64>, StoreError> {
        let refused = self
            .store
            .store_offline_many(users, from, text, &self.limits)?;
        if !refused.is_empty() {
            let n = refused.len() as u64;
            let before = self.refused.fetch_add(n, Ordering::Relaxed);
            // The first and then one per thousand: a bomb must not flood the log too.
            if before == 0 || before / 1000 != (before + n) / 1000 {
                log::warn!(
                    "offline store full for {refused:?}: a frame from {from} refused \
                     ({} refused so far)",
                    before + n
                );
            }
        }
        Ok(refused)
    }

    /// [`Router::store_bounded`] for one recipient: `Stored` or `Refused`.
    fn store_one(&self, to: i64, from: i64, text: &str) -> Result<Outcome, StoreError> {
        Ok(if self.store_bounded(&[to], from, text)?.is_empty() {
            Outcome::Stored
        } else {
            Outcome::Refused
        })
    }

    /// The sessions of this node.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The bus, in cluster mode.
    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.bus.as_ref()
    }

    /// Sends one chat frame (JSON text) from `from` to `to`, recording nothing in
    /// history (the server routes through `send_one_batched`; this is for tests).
    pub fn send_one(&self, to: i64, from: i64, text: &str) -> Result<Outcome, StoreError> {
        match self.route_one(to, from, text, Via::Now, || {})? {
            Step::Done(outcome) => Ok(self.count(outcome)),
            Step::Bus | Step::Later => unreachable!("only a batched send stops at the bus"),
        }
    }

    /// [`Router::send_one`], except that a frame for a user on no session here, in
    /// cluster mode, stops at [`Step::Bus`]: the caller has it routed (in a batch,
    /// [`crate::route_batch`]) and finishes with [`Router::finish_one`]. `record`
    /// puts the frame in history if it is taken here (see the module's rule); it is
    /// not called for a frame left at [`Step::Bus`] or refused.
    pub fn send_one_batched(
        &self,
        to: i64,
        from: i64,
        text: &str,
        record: impl FnOnce(),
    ) -> Result<Step, StoreError> {
        Ok(match self.route_one(to, from, text, Via::Batch, record)? {
            Step::Done(outcome) => Step::Done(self.count(outcome)),
            step => step,
        })
    }

    /// [`Router::send_one_batched`] for a sender whose earlier frames are still on
    /// their way through the bus: only [`Step::Bus`] (this frame follows them
    /// through the bus, in order) or [`Step::Later`] (it would overtake them: the
    /// caller sends it again once they are through).
    pub fn send_one_behind_routes(
        &self,
        to: i64,
        from: i64,
        text: &str,
    ) -> Result<Step, StoreError> {
        // Nothing is taken here: the frame is routed or left for later.
        self.route_one(to, from, text, Via::BatchOnly, || {})
    }

    /// The second half of a batched send: `routed` is what the bus answered (the
    /// users with no node, or its failure). Stores the frame if nobody took it —
    /// unless the recipient logged in here meanwhile: then it is delivered.
    /// `record` as for [`Router::send_one_batched`].
    pub fn finish_one(
        &self,
        to: i64,
        from: i64,
        text: &str,
        routed: Result<Vec<i64>, BusError>,
        record: impl FnOnce(),
    ) -> Result<Outcome, StoreError> {
        if routed.as_ref().is_ok_and(|missed| missed.is_empty()) {
            record();
            return Ok(self.count(Outcome::Remote));
        }
        let shard = self.hub.lock(to);
        let outcome = match shard.get(&to) {
            Some(session) => self.to_session(session, to, from, text, record)?,
            None => self.after_bus(shard, to, from, text, Some(routed), record)?,
        };
        Ok(self.count(outcome))
    }

    /// Counts where a frame went.
    fn count(&self, outcome: Outcome) -> Outcome {
        let how = match outcome {
            Outcome::Local => Chat::Local,
            Outcome::Remote => Chat::Remote,
            Outcome::Stored => Chat::Stored,
            Outcome::NoSuchUser | Outcome::Refused => return outcome,
        };
        self.stats.chats(how, 1);
        outcome
    }

    /// Delivers to the recipient's session here, recorded just before, or stores
    /// for a slow reader (kept for the flush when its output drains), recorded once
    /// stored.
    fn to_session(
        &self,
        session: &Session,
        to: i64,
        from: i64,
        text: &str,
        record: impl FnOnce(),
    ) -> Result<Outcome, StoreError> {
        if !session.is_congested() && !session.is_closed() {
            record();
            // Closed since the check: stored, or refused, already recorded.
            if session.deliver_live(wire(text)).is_ok() {
                return Ok(Outcome::Local);
            }
            return self.store_one(to, from, text);
        }
        let outcome = self.store_one(to, from, text)?;
        if outcome == Outcome::Stored {
            record();
        }
        Ok(outcome)
    }

    fn route_one(
        &self,
        to: i64,
        from: i64,
        text: &str,
        via: Via,
        record: impl FnOnce(),
    ) -> Result<Step, StoreError> {
        let shard = self.hub.lock(to);
        let bus_only = via == Via::BatchOnly;
        if let Some(session) = shard.get(&to) {
            if bus_only {
                return Ok(Step::Later);
            }
            return self
                .to_session(session, to, from, text, record)
                .map(Step::Done);
        }
        // A user whose earlier frames were stored while Redis failed keeps having
        // them stored until the flush notice for those went out (under this shard
        // lock, in `retry_rechecks`), so none overtakes them live.
        let unchecked = !self.held_back(&[to]).is_empty();
        let routed = match self.bus.as_ref().filter(|_| !unchecked) {
            Some(_) if via != Via::Now => return Ok(Step::Bus),
            Some(bus) => Some(bus.route(&[to], text)),
            None if bus_only => return Ok(Step::Later),
            None => None,
        };
        self.after_bus(shard, to, from, text, routed, record)
            .map(Step::Done)
    }

    /// What follows the bus (`routed`: `None` when it was not asked), under the
    /// recipient's shard lock (`shard`): done if the bus took the frame, else it is
    /// stored (if the user exists) and, once stored, the user is looked up again.
    /// `record` is called once the bus or the store took the frame.
    fn after_bus(
        &self,
        shard: MutexGuard<'_, Shard>,
        to: i64,
        from: i64,
        text: &str,
        routed: Option<Result<Vec<i64>, BusError>>,
        record: impl FnOnce(),
    ) -> Result<Outcome, StoreError> {
        match routed {
            Some(Ok(missed)) if missed.is_empty() => {
                record();
                return Ok(Outcome::Remote);
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                log::debug!("route to {to} through the bus: {e}; storing");
                // Marked under the shard lock: no later frame goes live before
                // this one's flush notice (see `retry_rechecks`).
                self.mark_unchecked(&[to]);
            }
        }
        if !self.store.user_exists(to)? {
            return Ok(Outcome::NoSuchUser);
        }
        let outcome = self.store_one(to, from, text)?;
        if outcome == Outcome::Stored {
            record();
            drop(shard);
            self.recheck(&[to]);
        }
        Ok(outcome)
    }

    /// The IO loop's fast path: if `to` is online on this node, not congested, and
    /// its shard is free right now, delivers `make_frame()` (the frame's text followed
    /// by the NUL that ends it on the wire, so it goes out without a copy). Never
    /// waits and never touches the store or the bus; on [`Fast::NotHere`] nothing
    /// happened.
    pub fn try_send_local(&self, to: i64, make_frame: impl FnOnce() -> String) -> Fast {
        let Some(shard) = self.hub.try_lock(to) else {
            return Fast::NotHere;
        };
        let Some(session) = shard.get(&to) else {
            return Fast::NotHere;
        };
        if session.is_congested() || session.is_closed() {
            return Fast::NotHere;
        }
        let frame = make_frame();
        debug_assert!(frame.ends_with('\0'), "a wire frame ends in NUL");
        match session.deliver_live_as(frame.into_bytes(), Some(msgid::ONE_CHAT)) {
            Ok(()) => {
                self.stats.chats(Chat::Local, 1);
                Fast::Sent
            }
            // Closed in the meantime: the text must be stored, off this thread.
            Err(mut frame) => {
                frame.pop();
                Fast::Store(String::from_utf8(frame).expect("made from a String"))
            }
        }
    }

    /// Fans a chat frame out to `members` (existing users): at once where they are
    /// online, here or on other nodes (one bus message per node), stored for the rest
    /// in one transaction. Returns how many it was stored for, and the members it
    /// was refused for (their store is full). `record` puts the frame in history
    /// once: before any member here can see it, or once the bus or the store took
    /// it; not if the store refused it for every member.
    pub fn send_many(
        &self,
        members: &[i64],
        from: i64,
        text: &str,
        record: impl FnOnce(),
    ) -> Result<(usize, Vec<i64>), StoreError> {
        let mut record = Some(record);
        let guards = self.hub.lock_many(members);
        let (mut elsewhere, mut stored) = self.deliver_local(&guards, members, text, &mut record);
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
        if routed > missed.len() {
            record_once(&mut record);
        }
        stored.extend_from_slice(&missed);
        let refused = if stored.is_empty() {
            Vec::new()
        } else {
            self.store_bounded(&stored, from, text)?
        };
        let stored_for = stored.len() - refused.len();
        // A chat to nobody else (a group of one) is taken all the same.
        if stored_for > 0 || members.is_empty() {
            record_once(&mut record);
        }
        self.stats.chats(Chat::Stored, stored_for);
        drop(guards);
        let mut check = missed;
        check.extend_from_slice(&held);
        check.retain(|u| !refused.contains(u));
        self.recheck(&check);
        Ok((stored_for, refused))
    }

    /// Delivers a frame that another node routed here to users expected on this node;
    /// those who left meanwhile get it stored (and flushed wherever they are now).
    /// If that store fails, returns those users: the caller keeps the frame for them.
    /// The store's bound applies: a recipient whose store is full does not get it
    /// (counted and logged here; the sender, on another node, is not told).
    pub fn deliver_here(&self, to: &[i64], text: &str) -> Result<(), Vec<i64>> {
        let guards = self.hub.lock_many(to);
        // Recorded by the sender's node.
        let (gone, mut stored) = self.deliver_local(&guards, to, text, &mut None::<fn()>);
        stored.extend_from_slice(&gone);
        if !stored.is_empty() {
            if let Err(e) = self.store_bounded(&stored, sender_of(text), text) {
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
    /// in `guards`), calling `record` (if still there) before the first is handed
    /// the frame. Returns (not here, here but congested): the caller routes the
    /// first further and stores for the second.
    fn deliver_local(
        &self,
        guards: &[Option<MutexGuard<'_, Shard>>],
        users: &[i64],
        text: &str,
        record: &mut Option<impl FnOnce()>,
    ) -> (Vec<i64>, Vec<i64>) {
        let mut fan = FanOut::new(wire(text).into());
        let mut absent = Vec::new();
        let mut congested = Vec::new();
        for &u in users {
            let shard = guards[Hub::shard_index(u)]
                .as_ref()
                .expect("locked by lock_many");
            match shard.get(&u) {
                Some(session) => {
                    // Not under the outbox lock `deliver_into` keeps: a full
                    // history queue makes `record` wait.
                    if record.is_some() && !session.is_congested() && !session.is_closed() {
                        record_once(record);
                    }
                    if !session.deliver_into(&mut fan) {
                        congested.push(u);
                    }
                }
                None => absent.push(u),
            }
        }
        // Queued while the shards are still locked, so a login that takes a
        // member's shard next sees this frame go out before its own.
        let sent = fan.len();
        fan.send();
        self.stats.chats(Chat::Local, sent);
        (absent, congested)
    }

    /// Stores frames a dead node never delivered (each with its recipients); those
    /// recipients who are online again somewhere get a flush.
    pub fn store_orphans(&self, frames: &[Orphan]) -> Result<(), StoreError> {
        let mut users = Vec::new();
        for (to, text) in frames {
            // Bounded like any other store: beyond it a frame is refused (counted and
            // logged), never one already stored dropped.
            let refused = self.store_bounded(to, sender_of(text), text)?;
            users.extend(to.iter().filter(|u| !refused.contains(u)));
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
        let (msgs, more) = match self
            .store
            .take_offline_batch(user, DRAIN_BATCH, DRAIN_BYTES)
        {
            Ok(page) => page,
            Err(e) => {
                // The frames stay stored: delivered at the next login or drain.
                log::warn!("flush for {user}: {e}; kept for later");
                session.set_congested(false);
                return;
            }
        };
        // While more is stored, the flag stays up, so new frames queue behind this
        // batch in the store and its write-complete asks for the next. For the last
        // batch the flag goes down now, under the shard lock (so nothing is stored
        // behind it any more); live frames the loop still had queued from before
        // then are older than the batch and go out ahead of it (`Outflow::offer`).
        self.deliver_or_restore(user, session, msgs, Some(more));
    }

    /// Delivers taken messages in order (after any the loop spilled), setting the
    /// congestion flag to `congested` behind them; if the connection closed
    /// meanwhile, they go back to the store, ahead of anything stored since.
    fn deliver_or_restore(
        &self,
        user: i64,
        session: &Session,
        msgs: Vec<String>,
        congested: Option<bool>,
    ) -> bool {
        let page = msgs.iter().map(|m| wire(m)).collect();
        if session.deliver_page(page, congested).is_err() {
            self.restore(user, &msgs);
            return false;
        }
        true
    }

    /// Puts frames taken for `user` but not delivered back into the store, in order,
    /// ahead of everything stored for it since.
    pub fn restore(&self, user: i64, texts: &[String]) {
        if let Err(e) = self.store.restore_offline(user, texts) {
            log::error!("lost {} stored frame(s) for {user}: {e}", texts.len());
        }
    }

    /// At the close of an acking connection (`closed`): takes the frames it did not
    /// get acknowledged and stores them, then `spilled` (never written), ahead of
    /// everything stored for `user` since — all under the user's shard lock, so a
    /// login or resume taking its first page sees all of them or none. A session
    /// of the user that entered meanwhile gets them now: here at once, on another
    /// node through a flush notice.
    pub fn restore_and_flush(&self, user: i64, closed: &Session, spilled: Vec<String>) {
        let shard = self.hub.lock(user);
        let mut texts = closed.flow().take_unacked();
        texts.extend(spilled);
        if texts.is_empty() {
            return;
        }
        log::debug!(
            "user {user}: {} unacknowledged frame(s) stored again",
            texts.len()
        );
        self.restore(user, &texts);
        match shard.get(&user) {
            Some(session) if session.id() != closed.id() => {
                self.flush_session(user, session);
            }
            Some(_) => {}
            None => {
                drop(shard);
                self.recheck(&[user]);
            }
        }
    }

    /// Takes a page of the user's stored messages and delivers it to `session`,
    /// congested or not; if more is left, the session stays congested so that the
    /// rest follows page by page as its output drains ([`Router::drained`]). The
    /// caller holds the user's shard lock. False if the store failed.
    pub(crate) fn flush_session(&self, user: i64, session: &Session) -> bool {
        if session.is_closed() {
            return false;
        }
        match self
            .store
            .take_offline_batch(user, DRAIN_BATCH, DRAIN_BYTES)
        {
            Ok((msgs, more)) => self.deliver_or_restore(user, session, msgs, more.then_some(true)),
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

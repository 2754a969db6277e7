//! Login and logout: the failed-login throttle, the password check on the hasher,
//! claiming a user for a session (hub, cluster presence, offline messages, under the
//! user's shard lock) and letting it go, each with its audit line.
//!
//! The rule: a wrong id and a wrong password get the same bytes after the same work
//! (a hash either way), and a locked account costs no hash at all.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::throttle::Attempt;
use super::{frame_text, ChatService, Result, ServiceError, LOGIN_PAGE_BYTES};
use crate::audit::End;
use crate::bus::Claim;
use crate::password::{self, Verified};
use crate::protocol::{
    self, errno, msgid, Friend, GroupInfo, Member, Parsed, ProtocolError, Request,
};
use crate::session::{PasswordCheck, Session, Suspended, User};
use crate::store::StoreError;

/// How often a RESUME tries to replace the user's older session here before it
/// answers "unavailable" (2 ms apart after the first): the older one's own
/// sign-out, racing with it, can hold the hub entry for a moment.
const REPLACE_TRIES: u32 = 50;

/// How long a RESUME waits for the acking session it replaced to put its
/// unacknowledged frames back (its close is forced after 2 s).
const PUT_BACK_WAIT: Duration = Duration::from_millis(2500);

/// How a session enters ([`ChatService::enter`]).
pub(super) enum Entry {
    /// By LOGIN: refused while the user is online elsewhere.
    Login,
    /// By RESUME, with the freshly rotated token: takes over from any older session.
    Resume(String),
}

/// How a session enters: by which request, and whether it acks what it reads
/// (`Some(last seq the client saw)`, protocol.md §12).
pub(super) struct Entering {
    /// LOGIN or RESUME.
    pub entry: Entry,
    /// Acknowledged delivery asked for.
    pub acks: Option<u64>,
}

impl ChatService {
    /// Waits until the replaced acking session `old` of `id` put its
    /// unacknowledged frames back — if few enough RESUMEs wait already. The wait
    /// holds a worker (up to [`PUT_BACK_WAIT`] when the old connection is silent)
    /// while the put-back itself needs one: a wave of resumes that all waited
    /// would starve the pool, and the node, for seconds. Beyond half the workers,
    /// a RESUME goes on without waiting, and the frames put back late reach it by
    /// a flush (after newer ones: protocol.md §12, "Order").
    fn wait_put_back(&self, id: i64, old: &Session) {
        let waiting = &self.put_back_waiting;
        if waiting.fetch_add(1, Ordering::AcqRel) >= self.put_back_limit {
            waiting.fetch_sub(1, Ordering::AcqRel);
            log::debug!("user {id}: not waiting for session {}'s put-back", old.id());
            return;
        }
        if !old.wait_put_back(PUT_BACK_WAIT) {
            log::warn!("user {id}: session {} not closed in time", old.id());
        }
        waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// LOGIN, first half: refuse a locked account, count the attempt, read the user,
    /// and hand the password check to the hasher (the strand waits for it).
    pub(super) fn login(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let acks = parsed.acks;
        let Request::Login { id, password } = parsed.req else {
            unreachable!("handler registered for LOGIN")
        };
        if let Some(current) = session.user() {
            return Err(ServiceError::Protocol(ProtocolError::already_logged_in(
                current.id,
            )));
        }
        let stats = session.stats();
        match self.throttle.begin(id) {
            Attempt::Refused { retry_after } => {
                stats.login_failed(id, session.peer, "throttled");
                session.reply(throttled_reply(session.ext(), retry_after));
                return Ok(());
            }
            Attempt::Allowed { locked: Some(lock) } => log::warn!(
                "login of {id}: too many failed attempts, locked for {} s (this one from {})",
                lock.as_secs_f64().ceil(),
                session.peer
            ),
            Attempt::Allowed { locked: None } => {}
        }
        let row = match self.store.user(id) {
            Ok(row) => row,
            Err(e) => {
                stats.login_failed(id, session.peer, "unavailable");
                return Err(e.into());
            }
        };
        session.suspend(Suspended::Password(PasswordCheck {
            id,
            row,
            password,
            acks,
        }));
        Ok(())
    }

    /// LOGIN, second half, when the hasher answered: the same reply for an unknown id
    /// and a wrong password; on success, claim the user and send the LOGIN_ACK.
    pub(super) fn login_checked(
        &self,
        session: &Arc<Session>,
        check: PasswordCheck,
        verified: Verified,
    ) -> Result<()> {
        let id = check.id;
        let outcome = self.try_login(session, check, verified);
        self.count_login(session, id, outcome)
    }

    /// Counts (and audits) a LOGIN's or RESUME's outcome: `Ok(None)` logged in,
    /// `Ok(Some(reason))` refused; a store error is passed on for the reply.
    pub(super) fn count_login(
        &self,
        session: &Session,
        id: i64,
        outcome: Result<Option<&'static str>>,
    ) -> Result<()> {
        let stats = session.stats();
        match outcome {
            Ok(None) => stats.login_ok(id, session.peer),
            Ok(Some(why)) => stats.login_failed(id, session.peer, why),
            Err(ServiceError::Store(e)) => {
                stats.login_failed(id, session.peer, "unavailable");
                return Err(ServiceError::Store(e));
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Logs the session in after its password check; `Ok(Some(reason))` when refused
    /// with a reply sent.
    fn try_login(
        &self,
        session: &Arc<Session>,
        check: PasswordCheck,
        verified: Verified,
    ) -> Result<Option<&'static str>> {
        let PasswordCheck {
            id,
            row,
            password,
            acks,
        } = check;
        let row = match (row, verified) {
            (Some(row), Verified::Ok) => row,
            (Some(row), Verified::OkLegacyPlaintext) => {
                self.store.set_password(id, &password::hash(&password))?;
                row
            }
            (_, _) => {
                session.reply(protocol::encode(&protocol::login_err(
                    errno::INVALID_CREDENTIALS,
                    protocol::MSG_INVALID_CREDENTIALS,
                )));
                return Ok(Some("bad-credentials"));
            }
        };
        self.throttle.succeeded(id);

        let entering = Entering {
            entry: Entry::Login,
            acks,
        };
        self.enter(session, id, &row.name, entering)
    }

    /// Claims `id` for the session (hub, cluster presence) and takes its offline
    /// messages, under the user's shard lock, then sends the ACK: LOGIN_ACK, or
    /// RESUME_ACK when resuming. An ext session gets a resume token in it.
    /// `Ok(Some(reason))` when refused with a reply sent.
    pub(super) fn enter(
        &self,
        session: &Arc<Session>,
        id: i64,
        name: &str,
        Entering { entry, acks }: Entering,
    ) -> Result<Option<&'static str>> {
        let resume = matches!(entry, Entry::Resume(_));
        let ack_msgid = if resume { msgid::RESUME } else { msgid::LOGIN };
        let already = || {
            protocol::encode(&protocol::login_err(
                errno::ALREADY_ONLINE,
                protocol::MSG_ALREADY_ONLINE,
            ))
        };
        let mut drains = 0;
        let mut replaced = 0;
        let offline = loop {
            let mut shard = self.hub().lock(id);
            if let Some(old) = shard.get(&id).cloned() {
                drop(shard);
                if !resume {
                    session.reply(already());
                    return Ok(Some("already-online"));
                }
                // A live older session here: it gets the notice and is signed out
                // (outside the lock, which the sign-out takes); then claim.
                replaced += 1;
                if replaced > REPLACE_TRIES {
                    log::debug!("user {id}: session {} not replaced yet", old.id());
                    self.send_unavailable(session, ack_msgid);
                    return Ok(Some("unavailable"));
                }
                // False when it left by itself meanwhile (its own close): fine.
                self.replace_here(id);
                // What an acking one wrote and did not get acknowledged goes back to
                // the store at its close, ahead of newer frames: wait for that before
                // taking this session's first page (its close is forced within 2 s).
                if old.flow().acks() {
                    self.wait_put_back(id, &old);
                }
                if replaced > 1 {
                    // Its own sign-out (a close the client just made) is under way
                    // on another worker: give it a moment rather than refuse.
                    std::thread::sleep(Duration::from_millis(2));
                }
                continue;
            }
            if let Some(bus) = self.bus() {
                let claim = if resume {
                    bus.take_over(id)
                } else {
                    bus.claim(id)
                };
                match claim {
                    Ok(Claim::Claimed) => {
                        self.unreleased.lock().remove(&id);
                    }
                    Ok(Claim::Replaced(node)) => {
                        self.unreleased.lock().remove(&id);
                        if let Err(e) = bus.publish_replaced(&node, id) {
                            log::warn!("user {id}: node {node} not told of the take-over: {e}");
                        }
                    }
                    Ok(Claim::Orphaned(node)) => {
                        // The user was on a dead node whose undelivered frames are
                        // still in its stream: store them first, so this login's
                        // offline messages include them, then claim again.
                        drop(shard);
                        drains += 1;
                        if drains > 3 || !self.drain_dead(bus, &node, false) {
                            // Another drain is at it (a worker never waits for
                            // one: after a crash all of the node's users come
                            // back at once), or Redis failed: try again shortly.
                            self.send_unavailable(session, ack_msgid);
                            return Ok(Some("unavailable"));
                        }
                        continue;
                    }
                    Ok(Claim::Taken(node)) => {
                        drop(shard);
                        log::debug!("user {id} is online on node {node}");
                        session.reply(already());
                        return Ok(Some("already-online"));
                    }
                    Err(e) => {
                        drop(shard);
                        log::warn!("login {id}: {e}");
                        self.send_unavailable(session, ack_msgid);
                        return Ok(Some("unavailable"));
                    }
                }
            }
            session.hold();
            shard.insert(id, session.clone());
            // One page only: the rest follows as chat frames, page by page as the
            // connection writes them (the session stays congested until then, so
            // new frames queue behind in the store).
            match self
                .store
                .take_offline_batch(id, usize::MAX, LOGIN_PAGE_BYTES)
            {
                Ok((msgs, more)) => {
                    session.set_congested(more);
                    if let Some(last) = acks {
                        // Before anything is written: the offline messages are the
                        // first frames stamped.
                        let base = crate::acks::first_seq(last, msgs.iter().map(String::as_str));
                        session.flow().start_acks(base);
                        break session.flow().stamp_texts(msgs);
                    }
                    // Frames an acking session put back carry its dseq: not here.
                    break msgs
                        .into_iter()
                        .map(|m| match crate::acks::strip_seq(m.as_bytes()) {
                            Some(plain) => String::from_utf8_lossy(&plain).into_owned(),
                            None => m,
                        })
                        .collect();
                }
                Err(e) => {
                    shard.remove(&id);
                    self.release_presence(id);
                    drop(shard);
                    // Nothing was taken: held frames (if the connection also closed)
                    // go back to the store.
                    if let Err(held) = session.release(None) {
                        self.restore(id, held.iter().map(|f| frame_text(f)));
                    }
                    return Err(e.into());
                }
            }
        };
        session.set_user(Some(User {
            id,
            name: name.to_owned(),
        }));
        if let Err(e) = self.store.set_state(id, true) {
            log::warn!("user {id}: state column not updated: {e}");
        }
        let mut ack = match self.login_view(id) {
            Ok((friends, groups)) => protocol::login_ok(id, name, &friends, &groups, &offline),
            Err(e) => {
                // The messages were taken: deliver them rather than lose them.
                log::warn!("user {id}: friends/groups not loaded: {e}");
                protocol::login_ok(id, name, &[], &[], &offline)
            }
        };
        let token = match entry {
            Entry::Resume(token) => Some(token),
            Entry::Login if session.ext() => self.grant_token(id),
            Entry::Login => None,
        };
        if let Some(token) = token {
            protocol::add_token(&mut ack, &token, self.resume_ttl.as_secs());
        }
        if resume {
            ack["msgid"] = msgid::RESUME_ACK.into();
        }
        if let Err(held) = session.release(Some(protocol::encode(&ack))) {
            // The connection closed while the login ran: the ACK (with the offline
            // messages in it) and what was held cannot be delivered; store them
            // again and undo the login.
            log::debug!("user {id}: connection closed during login");
            // An acking session's offline messages are in its window: its close
            // puts them back (ahead of these), so they are not stored twice.
            let offline: &[String] = if session.flow().acks() { &[] } else { &offline };
            self.restore(
                id,
                offline
                    .iter()
                    .map(String::as_str)
                    .chain(held.iter().map(|f| frame_text(f))),
            );
            self.sign_out(session, End::Closed);
            return Ok(Some("closed"));
        }
        self.announce(id, name, true);
        Ok(None)
    }

    /// Friends and groups with live presence, for the LOGIN_ACK.
    pub(super) fn login_view(
        &self,
        id: i64,
    ) -> std::result::Result<(Vec<Friend>, Vec<GroupInfo>), StoreError> {
        let friends = self.store.friends(id)?;
        let groups = self.store.groups_of(id)?;
        let mut ids: Vec<i64> = friends.iter().map(|(f, _)| *f).collect();
        ids.extend(groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)));
        ids.sort_unstable();
        ids.dedup();
        let online: HashMap<i64, bool> =
            ids.iter().copied().zip(self.router.online(&ids)).collect();
        let is_online = |u: i64| online.get(&u).copied().unwrap_or(false);
        let friends = friends
            .into_iter()
            .map(|(fid, name)| Friend {
                id: fid,
                name,
                online: is_online(fid),
            })
            .collect();
        let groups = groups
            .into_iter()
            .map(|g| GroupInfo {
                id: g.id,
                name: g.name,
                desc: g.desc,
                members: g
                    .members
                    .into_iter()
                    .map(|m| Member {
                        id: m.id,
                        name: m.name,
                        role: m.role,
                        online: is_online(m.id),
                    })
                    .collect(),
            })
            .collect();
        Ok((friends, groups))
    }

    pub(super) fn logout(&self, session: &Arc<Session>, _parsed: Parsed) -> Result<()> {
        let user = session.user();
        self.sign_out(session, End::Logout);
        session.forget_last_user();
        // The ack window is the session's, not the connection's: a later login
        // here starts afresh (or without acks), and the dropped frames' records go.
        let dropped = session.flow().stop_acks();
        if dropped > 0 {
            log::debug!("{dropped} unacknowledged frame(s) dropped at a LOGINOUT");
        }
        if let Some(user) = &user {
            // Frames the loop spilled (the output at its mark, or a full ack window)
            // were never written and are this user's: left there, the drain after
            // the next login on this connection would write them to that user. They
            // go back to the store ahead of what was stored after them (or to a
            // session of the user elsewhere).
            let spilled = session.take_spilled_behind_sends();
            let texts = crate::outflow::undelivered(&[], &spilled);
            if !texts.is_empty() {
                log::debug!(
                    "user {}: {} spilled frame(s) stored again at a LOGINOUT",
                    user.id,
                    texts.len()
                );
                self.router.restore_and_flush(user.id, session, texts);
            }
        }
        if let Some(user) = user {
            // A logout ends the session for good: its token no longer resumes it.
            self.store.revoke_resume_token(user.id)?;
        }
        self.ack(session, msgid::LOGINOUT, errno::OK, "logged out", &[]);
        Ok(())
    }

    /// Logs the connection's user out, if any: presence first, then the state
    /// column; the audit line says `how` the session ended.
    pub(super) fn sign_out(&self, session: &Arc<Session>, how: End) {
        let Some(user) = session.user() else {
            return;
        };
        session.set_user(None);
        let removed = {
            // Presence goes with the hub entry under one shard lock, so a new login
            // of the same user on this node (which takes that lock) cannot have its
            // fresh claim released by this late sign-out.
            let mut shard = self.hub().lock(user.id);
            let ours = shard.get(&user.id).is_some_and(|s| s.id() == session.id());
            if ours {
                shard.remove(&user.id);
                self.release_presence(user.id);
            }
            ours
        };
        if removed {
            session.stats().session_end(user.id, session.peer, how);
            if let Err(e) = self.store.set_state(user.id, false) {
                log::warn!("user {}: state column not updated: {e}", user.id);
            }
            self.announce(user.id, &user.name, false);
        }
    }

    /// Drops the cluster presence of a user this node held.
    /// The caller holds the user's shard lock.
    pub(super) fn release_presence(&self, id: i64) {
        if let Some(bus) = self.bus() {
            if let Err(e) = bus.release(id) {
                log::warn!("user {id}: presence not released ({e}); retried by the keeper");
                self.unreleased.lock().insert(id);
            }
        }
    }

    /// At a close: the chat frames the connection never wrote go back to the
    /// store of the user they were for, in order, ahead of newer ones. For a
    /// connection that acks, that is every frame it did not acknowledge (the
    /// unwritten output is among them), then the spilled ones; they carry their
    /// seqs, and a session of the user that entered meanwhile gets a flush.
    pub(super) fn put_back(&self, session: &Session, unsent: &[u8], spilled: &[Vec<u8>]) {
        if session.flow().acks() {
            let spilled = crate::outflow::undelivered(&[], spilled);
            match session.last_user() {
                Some(user) => self.router.restore_and_flush(user, session, spilled),
                None => log::warn!(
                    "{} unacknowledged frame(s) of a connection that logged out dropped",
                    session.flow().take_unacked().len() + spilled.len()
                ),
            }
            session.mark_put_back();
            return;
        }
        let texts = crate::outflow::undelivered(unsent, spilled);
        if texts.is_empty() {
            return;
        }
        match session.last_user() {
            Some(user) => {
                log::debug!(
                    "user {user}: {} unwritten frame(s) stored again",
                    texts.len()
                );
                self.router.restore(user, &texts);
            }
            None => log::warn!(
                "{} unwritten frame(s) of a connection that logged out dropped",
                texts.len()
            ),
        }
    }

    /// Stores frames again for `user` (ones that could not be delivered after all),
    /// in order, ahead of anything stored for it since.
    pub(super) fn restore<'a>(&self, user: i64, texts: impl Iterator<Item = &'a str>) {
        let texts: Vec<String> = texts.filter(|t| !t.is_empty()).map(str::to_owned).collect();
        self.router.restore(user, &texts);
    }

    /// Signs out every session of this node (clean shutdown, or a claim lost to
    /// another node): presence and the state column of these users only.
    pub fn sign_out_all(&self) {
        for id in self.hub().online_users() {
            if let Some(session) = self.hub().get(id) {
                self.sign_out(&session, End::Shutdown);
            }
        }
    }
}

/// The reply to a LOGIN of a locked account: the legacy wrong-credentials bytes (a
/// legacy client prints them; they tell nothing more than a wrong password), or for an
/// opted-in client errno 114 with `retryafter`, whole seconds.
fn throttled_reply(ext: bool, retry_after: Duration) -> Vec<u8> {
    if !ext {
        return protocol::encode(&protocol::login_err(
            errno::INVALID_CREDENTIALS,
            protocol::MSG_INVALID_CREDENTIALS,
        ));
    }
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    let mut v = protocol::login_err(
        errno::LOGIN_THROTTLED,
        &format!("too many failed logins, try again in {secs} s"),
    );
    v["retryafter"] = serde_json::Value::from(secs);
    protocol::encode(&v)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread;
    use std::time::Instant;

    use super::*;
    use crate::service::tests::{register, service_on, Sockets};
    use crate::store::tests::SqliteDb;

    /// The reply's JSON (without its NUL).
    fn reply(ext: bool, retry_after: Duration) -> serde_json::Value {
        let bytes = throttled_reply(ext, retry_after);
        let json = bytes.strip_suffix(&[0]).expect("a NUL-terminated frame");
        serde_json::from_slice(json).expect("a JSON frame")
    }

    /// A legacy client gets the wrong-credentials bytes; an opted-in one errno 114
    /// and `retryafter` in whole seconds, a part of a second counting as one more.
    #[test]
    fn throttled_reply_rounds_the_wait_up() {
        let legacy = reply(false, Duration::from_millis(59_500));
        assert_eq!(legacy["errno"], errno::INVALID_CREDENTIALS, "{legacy}");
        assert!(legacy.get("retryafter").is_none(), "{legacy}");
        for (wait, secs) in [(59_500, 60), (60_000, 60), (500, 1), (1_000, 1)] {
            let v = reply(true, Duration::from_millis(wait));
            assert_eq!(v["errno"], errno::LOGIN_THROTTLED, "{v}");
            assert_eq!(v["retryafter"], secs, "{wait} ms: {v}");
            let msg = format!("too many failed logins, try again in {secs} s");
            assert_eq!(v["errmsg"], msg.as_str());
        }
    }

    /// A RESUME that finds the user's older session here still in the hub after
    /// replacing it (its own sign-out, on another worker, cleared its user and has
    /// not yet removed it) tries again, [`REPLACE_TRIES`] times in all, 2 ms apart
    /// after the first, then answers unavailable (the client tries again later).
    /// Seen failing with `replaced += 1` made `*=` (no bound): "the RESUME never
    /// gave up"; with `> REPLACE_TRIES` made `==` or `>=`: "tries", left 49; with the
    /// pause's `> 1` made `<` or `==`: "the tries were not 2 ms apart".
    #[test]
    fn a_resume_gives_a_leaving_session_its_tries_then_answers_unavailable() {
        let db = SqliteDb::new();
        let service = Arc::new(service_on(&db, false));
        let sockets = Sockets::start();
        let id = register(&db, "ursula");
        // In the hub with no user: as a session between its sign-out's
        // `set_user(None)` and its removal from the hub.
        let (old, _old_client) = sockets.session();
        service.hub().lock(id).insert(id, old.clone());
        let (new, _new_client) = sockets.session();
        let (answered_tx, answered) = mpsc::channel();
        let (s, n) = (service.clone(), new.clone());
        let started = Instant::now();
        let resume = thread::spawn(move || {
            let entering = Entering {
                entry: Entry::Resume("token".into()),
                acks: None,
            };
            let outcome = s.enter(&n, id, "ursula", entering);
            let _ = answered_tx.send(outcome.map_err(|e| format!("{e:?}")));
        });
        let outcome = answered.recv_timeout(Duration::from_secs(10));
        let took = started.elapsed();
        // A RESUME that never gives up ends once the older session is gone.
        service.hub().lock(id).remove(&id);
        resume.join().expect("the RESUME's thread");
        let outcome = outcome.expect("the RESUME never gave up");
        assert_eq!(outcome, Ok(Some("unavailable")));
        // Each try told the older session it was replaced.
        let tries: u64 = old
            .stats()
            .snapshot()
            .frames_out
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(tries, u64::from(REPLACE_TRIES), "tries");
        let pauses = Duration::from_millis(2) * (REPLACE_TRIES - 1);
        assert!(took >= pauses, "the tries were not 2 ms apart: {took:?}");
    }
}

//! Login and logout: claiming a user for a session (hub, cluster presence, offline
//! messages, under the user's shard lock) and letting it go, each with its audit line.

use std::collections::HashMap;
use std::sync::Arc;

use super::{frame_text, ChatService, Result, ServiceError};
use crate::audit::End;
use crate::bus::Claim;
use crate::password::{self, Verified};
use crate::protocol::{
    self, errno, msgid, Friend, GroupInfo, Member, Parsed, ProtocolError, Request,
};
use crate::session::{Session, User};
use crate::store::StoreError;

impl ChatService {
    pub(super) fn login(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Login { id, password } = parsed.req else {
            unreachable!("handler registered for LOGIN")
        };
        let stats = session.stats();
        match self.try_login(session, id, &password) {
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

    /// Logs the session in; `Ok(Some(reason))` when refused with a reply sent.
    fn try_login(
        &self,
        session: &Arc<Session>,
        id: i64,
        password: &str,
    ) -> Result<Option<&'static str>> {
        if let Some(current) = session.user() {
            return Err(ServiceError::Protocol(ProtocolError::already_logged_in(
                current.id,
            )));
        }
        let invalid = || {
            protocol::encode(&protocol::login_err(
                errno::INVALID_CREDENTIALS,
                protocol::MSG_INVALID_CREDENTIALS,
            ))
        };
        let Some(row) = self.store.user(id)? else {
            session.reply(invalid());
            return Ok(Some("bad-credentials"));
        };
        match password::verify(&row.password, password) {
            Verified::Mismatch => {
                session.reply(invalid());
                return Ok(Some("bad-credentials"));
            }
            Verified::OkLegacyPlaintext => {
                self.store.set_password(id, &password::hash(password))?;
            }
            Verified::Ok => {}
        }

        // Claim the user and take its offline messages under the user's shard lock.
        let mut drains = 0;
        let offline = loop {
            let mut shard = self.hub().lock(id);
            let already = || {
                protocol::encode(&protocol::login_err(
                    errno::ALREADY_ONLINE,
                    protocol::MSG_ALREADY_ONLINE,
                ))
            };
            if shard.contains_key(&id) {
                drop(shard);
                session.reply(already());
                return Ok(Some("already-online"));
            }
            if let Some(bus) = self.bus() {
                match bus.claim(id) {
                    Ok(Claim::Claimed) => {
                        self.unreleased.lock().remove(&id);
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
                            self.send_unavailable(session, msgid::LOGIN);
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
                        self.send_unavailable(session, msgid::LOGIN);
                        return Ok(Some("unavailable"));
                    }
                }
            }
            session.hold();
            shard.insert(id, session.clone());
            match self.store.take_offline(id) {
                Ok(msgs) => break msgs,
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
            name: row.name.clone(),
        }));
        if let Err(e) = self.store.set_state(id, true) {
            log::warn!("user {id}: state column not updated: {e}");
        }
        let ack = match self.login_view(id) {
            Ok((friends, groups)) => protocol::login_ok(id, &row.name, &friends, &groups, &offline),
            Err(e) => {
                // The messages were taken: deliver them rather than lose them.
                log::warn!("user {id}: friends/groups not loaded: {e}");
                protocol::login_ok(id, &row.name, &[], &[], &offline)
            }
        };
        if let Err(held) = session.release(Some(protocol::encode(&ack))) {
            // The connection closed while the login ran: the ACK (with the offline
            // messages in it) and what was held cannot be delivered; store them
            // again and undo the login.
            log::debug!("user {id}: connection closed during login");
            self.restore(id, offline.iter().map(String::as_str));
            self.restore(id, held.iter().map(|f| frame_text(f)));
            self.sign_out(session, End::Closed);
            return Ok(Some("closed"));
        }
        self.announce(id, &row.name, true);
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
        self.sign_out(session, End::Logout);
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

    /// Stores frames again for `user` (ones that could not be delivered after all).
    pub(super) fn restore<'a>(&self, user: i64, texts: impl Iterator<Item = &'a str>) {
        for t in texts.filter(|t| !t.is_empty()) {
            if let Err(e) = self.store.store_offline(user, t) {
                log::error!("lost a frame for {user}: {e}");
            }
        }
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

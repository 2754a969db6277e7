//! LOGIN: the throttle, the password check on the hasher, then the claim of the
//! user and the LOGIN_ACK.
//!
//! The rule: a wrong id and a wrong password get the same bytes after the same work
//! (a hash either way), and a locked account costs no hash at all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::throttle::Attempt;
use super::{frame_text, ChatService, Result, ServiceError};
use crate::bus::Claim;
use crate::password::{self, Verified};
use crate::protocol::{
    self, errno, msgid, Friend, GroupInfo, Member, Parsed, ProtocolError, Request,
};
use crate::session::{PasswordCheck, Session, User};
use crate::store::StoreError;

impl ChatService {
    /// LOGIN, first half: refuse a locked account, count the attempt, read the user,
    /// and hand the password check to the hasher (the strand waits for it).
    pub(super) fn login(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Login { id, password } = parsed.req else {
            unreachable!("handler registered for LOGIN")
        };
        if let Some(current) = session.user() {
            return Err(ServiceError::Protocol(ProtocolError::already_logged_in(
                current.id,
            )));
        }
        match self.throttle.begin(id) {
            Attempt::Refused { retry_after } => {
                log::debug!(
                    "login of {id} from {} refused: locked for {retry_after:?}",
                    session.peer()
                );
                session.reply(throttled_reply(session.ext(), retry_after));
                return Ok(());
            }
            Attempt::Allowed { locked: Some(lock) } => log::warn!(
                "login of {id}: too many failed attempts, locked for {} s (this one from {})",
                lock.as_secs_f64().ceil(),
                session.peer()
            ),
            Attempt::Allowed { locked: None } => {}
        }
        let row = self.store.user(id)?;
        session.suspend(PasswordCheck { id, row, password });
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
        let PasswordCheck { id, row, password } = check;
        let row = match (row, verified) {
            (Some(row), Verified::Ok) => row,
            (Some(row), Verified::OkLegacyPlaintext) => {
                self.store.set_password(id, &password::hash(&password))?;
                row
            }
            (_, _) => {
                log::info!(
                    "login of {id} from {}: wrong id or password",
                    session.peer()
                );
                session.reply(protocol::encode(&protocol::login_err(
                    errno::INVALID_CREDENTIALS,
                    protocol::MSG_INVALID_CREDENTIALS,
                )));
                return Ok(());
            }
        };
        self.throttle.succeeded(id);

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
                return Ok(());
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
                            return Ok(());
                        }
                        continue;
                    }
                    Ok(Claim::Taken(node)) => {
                        drop(shard);
                        log::debug!("user {id} is online on node {node}");
                        session.reply(already());
                        return Ok(());
                    }
                    Err(e) => {
                        drop(shard);
                        log::warn!("login {id}: {e}");
                        self.send_unavailable(session, msgid::LOGIN);
                        return Ok(());
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
            self.sign_out(session);
        }
        Ok(())
    }

    /// Friends and groups with live presence, for the LOGIN_ACK.
    fn login_view(
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

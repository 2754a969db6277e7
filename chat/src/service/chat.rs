//! Chat handlers: one-to-one (with the IO loop's fast path) and group chat, and
//! the group member cache they read. A chat goes live, to another node, or into
//! the recipient's bounded offline store; a refusal is reported to the sender.

use std::sync::Arc;

use serde_json::Value;

use super::{ChatService, Result, ServiceError};
use crate::protocol::{self, errno, msgid, Parsed, ProtocolError, Request};
use crate::router::{Fast, Outcome};
use crate::session::{Job, Session};
use crate::store::StoreError;
use crate::timefmt;

impl ChatService {
    /// Handles a ONE_CHAT on the IO loop when that needs no blocking work: the
    /// session has nothing queued (so order is kept), the sender is who it claims,
    /// and the recipient is online on this node. Otherwise hands the request back
    /// for the workers.
    pub fn try_fast(&self, session: &Arc<Session>, parsed: Parsed) -> std::result::Result<(), Job> {
        let Request::OneChat { id, toid, .. } = &parsed.req else {
            return Err(Job::Request(parsed));
        };
        let (id, toid) = (*id, *toid);
        let user = match session.user() {
            Some(u) if u.id == id && session.is_idle() => u,
            _ => return Err(Job::Request(parsed)),
        };
        let ext = parsed.ext;
        let mut parsed = Some(parsed);
        let sent = self.router.try_send_local(toid, || {
            let Some(Parsed {
                req: Request::OneChat { frame, .. },
                ..
            }) = parsed.take()
            else {
                unreachable!("checked above")
            };
            chat_text(frame, &user.name)
        });
        if ext && !matches!(sent, Fast::NotHere) {
            session.set_ext();
        }
        match (sent, parsed) {
            (Fast::Sent, _) => Ok(()),
            (Fast::Store(text), _) => Err(Job::Route {
                to: toid,
                from: id,
                text,
            }),
            (Fast::NotHere, Some(parsed)) => Err(Job::Request(parsed)),
            (Fast::NotHere, None) => unreachable!("the text is built only when sent"),
        }
    }

    pub(super) fn one_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::OneChat { toid, frame, .. } = parsed.req else {
            unreachable!("handler registered for ONE_CHAT")
        };
        let Some(user) = session.user() else {
            // Signed out by the node between dispatch and here (a lost claim).
            return Err(ServiceError::Protocol(ProtocolError::not_logged_in(
                parsed.msgid,
            )));
        };
        let text = chat_text(frame, &user.name);
        match self.router.send_one(toid, user.id, &text)? {
            Outcome::NoSuchUser => self.ack(
                session,
                msgid::ONE_CHAT,
                errno::NO_SUCH_USER,
                &format!("no such user {toid}"),
                &[("toid", Value::from(toid))],
            ),
            Outcome::Refused => self.refused_ack(session, msgid::ONE_CHAT, toid),
            Outcome::Local | Outcome::Remote | Outcome::Stored => {}
        }
        Ok(())
    }

    /// Tells an opted-in sender that its chat to `to` was refused: the recipient's
    /// offline store is full.
    pub(super) fn refused_ack(&self, session: &Session, reqmsgid: i64, to: i64) {
        self.ack(
            session,
            reqmsgid,
            errno::OFFLINE_FULL,
            &format!("the offline store of {to} is full; message not stored"),
            &[("toid", Value::from(to))],
        );
    }

    pub(super) fn group_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::GroupChat {
            id, groupid, frame, ..
        } = parsed.req
        else {
            unreachable!("handler registered for GROUP_CHAT")
        };
        let Some(user) = session.user() else {
            // Signed out by the node between dispatch and here (a lost claim).
            return Err(ServiceError::Protocol(ProtocolError::not_logged_in(
                parsed.msgid,
            )));
        };
        let Some(members) = self.group_members(groupid)? else {
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::NO_SUCH_GROUP,
                &format!("no such group {groupid}"),
                &[("groupid", Value::from(groupid))],
            );
            return Ok(());
        };
        if !members.contains(&id) {
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::NOT_MEMBER,
                &format!("you are not in group {groupid}"),
                &[("groupid", Value::from(groupid))],
            );
            return Ok(());
        }
        let others: Vec<i64> = members.iter().copied().filter(|&m| m != id).collect();
        let text = chat_text(frame, &user.name);
        let refused = self.router.send_many(&others, id, &text)?;
        if !refused.is_empty() {
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::OFFLINE_FULL,
                &format!(
                    "the offline store of {} member(s) is full; not stored for them",
                    refused.len()
                ),
                &[
                    ("groupid", Value::from(groupid)),
                    ("refused", Value::from(refused)),
                ],
            );
        }
        Ok(())
    }

    /// A group's member ids, from the cache or the store; `None` if no such group.
    fn group_members(&self, group: i64) -> std::result::Result<Option<Arc<Vec<i64>>>, StoreError> {
        if let Some(m) = self.members.get(group) {
            return Ok(Some(m));
        }
        let epoch = self.members.begin();
        let Some(mut members) = self.store.group_members(group)? else {
            return Ok(None);
        };
        members.sort_unstable();
        let members = Arc::new(members);
        self.members.insert(group, members.clone(), epoch);
        Ok(Some(members))
    }

    /// Drops a group from the member cache, here and on every other node.
    pub(super) fn invalidate_group(&self, group: i64) {
        self.members.invalidate(group);
        if let Some(bus) = self.bus() {
            if let Err(e) = bus.broadcast_invalidate(group) {
                log::warn!("group {group}: other nodes keep a stale member list: {e}");
            }
        }
    }
}

/// The JSON text of a chat frame as recipients get it (see `protocol::delivery_frame`).
fn chat_text(frame: serde_json::Map<String, Value>, sender_name: &str) -> String {
    let fallback = if frame.contains_key("time") {
        String::new()
    } else {
        timefmt::now()
    };
    let out = protocol::delivery_frame(frame, sender_name, &fallback);
    serde_json::to_string(&out).expect("a Value always serialises")
}

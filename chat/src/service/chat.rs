//! The chat handlers: ONE_CHAT (on the IO loop's fast path when possible) and GROUP_CHAT,
//! and the confirmation an opted-in sender asks for with a `cid` (protocol.md §4).
//!
//! The rule: a confirmation says what happened to the frame — delivered (written here or
//! handed to the recipient's node) or stored for the next login — and is sent only after
//! it happened, as the reply to that request, in request order.

use std::sync::Arc;

use serde_json::Value;

use super::{ChatService, Result, ServiceError};
use crate::codec;
use crate::protocol::{self, errno, msgid, FastChat, Parsed, ProtocolError, Request};
use crate::route_batch::{RouteTicket, Routed};
use crate::router::{Fast, Outcome, Step};
use crate::session::{Job, PreparedChat, Session, Suspended, User};
use crate::store::StoreError;
use crate::timefmt;

/// Where a chat went, for the sender's confirmation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    /// Recipients reached live (here or through their node).
    pub live: usize,
    /// Recipients it was stored for.
    pub stored: usize,
}

impl Delivered {
    /// The outcome of a one-to-one frame that reached its recipient (or the store).
    pub(crate) fn one(outcome: Outcome) -> Delivered {
        let stored = usize::from(outcome == Outcome::Stored);
        Delivered {
            live: 1 - stored,
            stored,
        }
    }
}

impl ChatService {
    /// A SEQ_ACK; a full window that has room again starts the drain of what was
    /// stored meanwhile (the job returned).
    fn take_ack(session: &Session, seq: u64) -> Option<Job> {
        let drain = session.flow().ack(seq) && session.is_congested() && session.start_drain();
        drain.then_some(Job::Drained)
    }

    /// A SEQ_ACK that came with no login done (on the IO loop's fast path it is
    /// handled at once): error 107 if there is still none, like any request other
    /// than LOGIN, REG and PING.
    pub(super) fn seq_ack(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::SeqAck { seq } = parsed.req else {
            unreachable!("registered for SEQ_ACK")
        };
        if session.user().is_none() {
            return Err(ServiceError::Protocol(ProtocolError::not_logged_in(
                msgid::SEQ_ACK,
            )));
        }
        if let Some(job) = Self::take_ack(session, seq) {
            self.run_job(session, job);
        }
        Ok(())
    }

    /// Handles a ONE_CHAT on the IO loop when that needs no blocking work: the
    /// session has nothing queued (so order is kept), the sender is who it claims,
    /// and the recipient is online on this node. Otherwise hands the request back
    /// for the workers.
    pub fn try_fast(&self, session: &Arc<Session>, parsed: Parsed) -> std::result::Result<(), Job> {
        if let Request::SeqAck { seq } = parsed.req {
            if session.user().is_none() {
                // Before login (or with one on its way): in order, as a request,
                // which gets error 107 unless a login came first (`seq_ack`).
                return Err(Job::Request(parsed));
            }
            // Cheap and order-free: handled here.
            return match Self::take_ack(session, seq) {
                Some(job) => Err(job),
                None => Ok(()),
            };
        }
        let Request::OneChat { id, toid, cid, .. } = &parsed.req else {
            return Err(Job::Request(parsed));
        };
        let (id, toid, cid) = (*id, *toid, *cid);
        let user = match session.user() {
            Some(u) if u.id == id && session.is_idle() && self.history.has_room() => u,
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
            let mut text = chat_text(frame, &user.name);
            // Called only when the frame goes out (or is stored): recorded before the
            // recipient can see it, so a reply gets the later seq.
            self.record_chat(id, toid, &text);
            text.push('\0');
            text
        });
        if ext && !matches!(sent, Fast::NotHere) {
            session.set_ext();
        }
        match (sent, parsed) {
            (Fast::Sent, _) => {
                let d = Delivered::one(Outcome::Local);
                self.confirm(session, msgid::ONE_CHAT, cid, d, ("toid", toid));
                Ok(())
            }
            (Fast::Store(text), _) => Err(Job::Route {
                to: toid,
                from: id,
                text,
                cid,
            }),
            (Fast::NotHere, Some(parsed)) => Err(Job::Request(parsed)),
            (Fast::NotHere, None) => unreachable!("the text is built only when sent"),
        }
    }

    /// [`Self::try_fast`] for a chat frame (`frame`, read as `chat` without a
    /// `Value`): `None` when this path cannot take it (then the caller parses it in
    /// full), else what `try_fast` gives — or, when it cannot deliver here and now,
    /// the job of the frame with its text made ([`Job::Chat`]), so that no worker
    /// parses it again. A WebSocket connection's frames take the full path then.
    pub fn try_fast_chat(
        &self,
        session: &Arc<Session>,
        chat: &FastChat,
        frame: &[u8],
        websocket: bool,
    ) -> Option<std::result::Result<(), Job>> {
        let user = session.user().filter(|u| u.id == chat.id)?;
        if session.is_idle() && self.history.has_room() {
            match self.router.try_send_local(chat.toid, || {
                let frame = chat.delivery_wire(&user.name, timefmt::now);
                self.record_chat(chat.id, chat.toid, &frame[..frame.len() - 1]);
                frame
            }) {
                Fast::Sent => return Some(Ok(())),
                Fast::Store(text) => {
                    return Some(Err(Job::Route {
                        to: chat.toid,
                        from: chat.id,
                        text,
                        cid: None,
                    }))
                }
                Fast::NotHere => {}
            }
        }
        if websocket {
            return None;
        }
        let mut text = chat.delivery_wire(&user.name, timefmt::now);
        text.pop(); // its NUL: a job carries the frame's JSON text alone
        Some(Err(Job::Chat(Box::new(PreparedChat {
            user,
            to: chat.toid,
            text,
            cid: None,
            frame: frame.to_vec(),
        }))))
    }

    /// Runs a ONE_CHAT with its text made ([`Job::Chat`], [`Job::Deferred`]) as
    /// [`Self::one_chat`] would, or parses it in full if the session's user
    /// changed since it was read.
    pub(super) fn prepared_chat(&self, session: &Arc<Session>, chat: PreparedChat) {
        match session.user() {
            Some(user) if Arc::ptr_eq(&user, &chat.user) => {
                let result = self.one_chat_text(session, &user, chat.to, chat.cid, chat.text);
                self.answer(session, msgid::ONE_CHAT, result);
            }
            _ => match codec::parse_frame(&chat.frame).and_then(protocol::parse_request) {
                Ok(parsed) => self.dispatch(session, parsed),
                Err(e) => self.send_error(session, &e),
            },
        }
    }

    /// Routes a frame the fast path could not deliver after all, and confirms it.
    pub(super) fn route_again(
        &self,
        session: &Session,
        (to, from): (i64, i64),
        text: String,
        cid: Option<i64>,
    ) {
        // Recorded already, when the fast path handed it to the connection.
        let result = match self.router.send_one_batched(to, from, &text, || {}) {
            Ok(Step::Bus) => {
                return session.suspend(Suspended::Route(RouteTicket {
                    to,
                    from,
                    text,
                    cid,
                    again: true,
                }))
            }
            Ok(Step::Done(outcome)) => Ok(outcome),
            Ok(Step::Later) => unreachable!("only a send behind routes is left for later"),
            Err(e) => Err(e),
        };
        self.routed_again(session, to, cid, result);
    }

    /// Confirms a frame of [`Self::route_again`] once it went somewhere.
    fn routed_again(
        &self,
        session: &Session,
        to: i64,
        cid: Option<i64>,
        result: std::result::Result<Outcome, StoreError>,
    ) {
        match result {
            Ok(Outcome::Refused) => self.refused_ack(session, msgid::ONE_CHAT, to, cid),
            Ok(outcome) => {
                let d = Delivered::one(outcome);
                self.confirm(session, msgid::ONE_CHAT, cid, d, ("toid", to));
            }
            Err(e) => {
                log::error!("lost a frame for {to}: {e}");
                // The sender asked to know: tell it the frame did not get through.
                if cid.is_some() {
                    let e = ProtocolError::unavailable(msgid::ONE_CHAT);
                    self.send_error(session, &e);
                }
            }
        }
    }

    pub(super) fn one_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::OneChat {
            toid, cid, frame, ..
        } = parsed.req
        else {
            unreachable!("handler registered for ONE_CHAT")
        };
        let user = sender(session, parsed.msgid)?;
        let text = chat_text(frame, &user.name);
        self.one_chat_text(session, &user, toid, cid, text)
    }

    /// [`Self::one_chat`] from its delivery text on. While earlier frames of the
    /// strand are with the route batcher, the frame follows them through the bus,
    /// or, for a recipient here (which it would reach before them), runs again once
    /// they are back ([`Job::Deferred`]).
    fn one_chat_text(
        &self,
        session: &Arc<Session>,
        user: &Arc<User>,
        toid: i64,
        cid: Option<i64>,
        text: String,
    ) -> Result<()> {
        let behind = session.routes_out();
        // Any wait for room in history here, before the router takes locks.
        self.history.wait_room();
        let step = if !behind {
            // In history once taken (the router's rule): before a recipient here can
            // see it, so that its reply gets the later seq; never if refused.
            let record = || self.record_chat(user.id, toid, &text);
            self.router.send_one_batched(toid, user.id, &text, record)?
        } else if self.hub().is_online(toid) {
            Step::Later
        } else {
            self.router.send_one_behind_routes(toid, user.id, &text)?
        };
        match step {
            Step::Done(outcome) => self.one_chat_done(session, toid, cid, outcome),
            // The frame comes back as `Job::Routed`.
            Step::Bus => session.suspend(Suspended::Route(RouteTicket {
                to: toid,
                from: user.id,
                text,
                cid,
                again: false,
            })),
            Step::Later => {
                session.suspend(Suspended::Later(Job::Deferred(Box::new(PreparedChat {
                    user: user.clone(),
                    to: toid,
                    text,
                    cid,
                    frame: Vec::new(),
                }))))
            }
        }
        Ok(())
    }

    /// A frame came back from the route batcher: finish its request.
    pub(super) fn routed(&self, session: &Arc<Session>, routed: Routed) {
        // `_unfinished` holds later frames for the recipient back from the bus
        // until this one is stored (dropped at the end).
        let Routed {
            ticket: t,
            result,
            unfinished: _unfinished,
        } = routed;
        // A frame of the fast path's was recorded there.
        if !t.again {
            self.history.wait_room();
        }
        let record = || {
            if !t.again {
                self.record_chat(t.from, t.to, &t.text);
            }
        };
        let result = self
            .router
            .finish_one(t.to, t.from, &t.text, result, record);
        if t.again {
            return self.routed_again(session, t.to, t.cid, result);
        }
        match result {
            Ok(outcome) => self.one_chat_done(session, t.to, t.cid, outcome),
            Err(e) => self.answer(session, msgid::ONE_CHAT, Err(e.into())),
        }
    }

    /// Acknowledges a ONE_CHAT whose frame went where `outcome` says.
    fn one_chat_done(&self, session: &Session, toid: i64, cid: Option<i64>, outcome: Outcome) {
        if outcome == Outcome::Refused {
            self.refused_ack(session, msgid::ONE_CHAT, toid, cid);
        } else if outcome == Outcome::NoSuchUser {
            let mut extra = vec![("toid", Value::from(toid))];
            extra.extend(cid.map(|c| ("cid", Value::from(c))));
            self.ack(
                session,
                msgid::ONE_CHAT,
                errno::NO_SUCH_USER,
                &format!("no such user {toid}"),
                &extra,
            );
        } else {
            let d = Delivered::one(outcome);
            self.confirm(session, msgid::ONE_CHAT, cid, d, ("toid", toid));
        }
    }

    pub(super) fn group_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::GroupChat {
            id,
            groupid,
            cid,
            frame,
            ..
        } = parsed.req
        else {
            unreachable!("handler registered for GROUP_CHAT")
        };
        let user = sender(session, parsed.msgid)?;
        let mut extra = vec![("groupid", Value::from(groupid))];
        extra.extend(cid.map(|c| ("cid", Value::from(c))));
        let Some(members) = self.group_members(groupid)? else {
            let msg = format!("no such group {groupid}");
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::NO_SUCH_GROUP,
                &msg,
                &extra,
            );
            return Ok(());
        };
        if !members.contains(&id) {
            let msg = format!("you are not in group {groupid}");
            self.ack(session, msgid::GROUP_CHAT, errno::NOT_MEMBER, &msg, &extra);
            return Ok(());
        }
        let others: Vec<i64> = members.iter().copied().filter(|&m| m != id).collect();
        let text = chat_text(frame, &user.name);
        // One record, before any member can see it (so replies get later seqs), and
        // none if every member was refused: nobody got it.
        self.history.wait_room();
        let record = || self.record_group_chat(id, groupid, &text);
        let (stored, refused) = self.router.send_many(&others, id, &text, record)?;
        let delivered = Delivered {
            live: others.len() - stored - refused.len(),
            stored,
        };
        if !refused.is_empty() {
            // The one reply to the request: the refusal, with what the confirmation
            // would have said about the others.
            let msg = format!(
                "the offline store of {} member(s) is full; not stored for them",
                refused.len()
            );
            extra.push(("refused", Value::from(refused)));
            extra.push(("delivered", Value::from(delivered.live)));
            extra.push(("stored", Value::from(delivered.stored)));
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::OFFLINE_FULL,
                &msg,
                &extra,
            );
            return Ok(());
        }
        self.confirm(
            session,
            msgid::GROUP_CHAT,
            cid,
            delivered,
            ("groupid", groupid),
        );
        Ok(())
    }

    /// Tells an opted-in sender that its chat to `to` was refused: the recipient's
    /// offline store is full.
    pub(super) fn refused_ack(&self, session: &Session, reqmsgid: i64, to: i64, cid: Option<i64>) {
        let mut extra = vec![("toid", Value::from(to))];
        extra.extend(cid.map(|c| ("cid", Value::from(c))));
        self.ack(
            session,
            reqmsgid,
            errno::OFFLINE_FULL,
            &format!("the offline store of {to} is full; message not stored"),
            &extra,
        );
    }

    /// The ACK errno 0 for a chat sent with a `cid` by an opted-in client:
    /// `"delivered"` and `"stored"` count its recipients each way; `target` is the
    /// `toid` or `groupid` that failure ACKs carry too.
    fn confirm(
        &self,
        session: &Session,
        reqmsgid: i64,
        cid: Option<i64>,
        d: Delivered,
        target: (&str, i64),
    ) {
        let Some(cid) = cid else { return };
        let errmsg = match (d.live, d.stored) {
            (_, 0) => "delivered",
            (0, _) => "stored for later",
            _ => "delivered, and stored for those offline",
        };
        let extra = [
            ("cid", Value::from(cid)),
            ("delivered", Value::from(d.live)),
            ("stored", Value::from(d.stored)),
            (target.0, Value::from(target.1)),
        ];
        self.ack(session, reqmsgid, errno::OK, errmsg, &extra);
    }

    /// A group's member ids, from the cache or the store; `None` if no such group.
    pub(super) fn group_members(
        &self,
        group: i64,
    ) -> std::result::Result<Option<Arc<Vec<i64>>>, StoreError> {
        // In a cluster, the membership's version first: a list cached before another
        // node's change is not used even if that node's notice has not arrived yet.
        // Without Redis, the cached list (until its TTL), as the notices are lost too.
        let version = match self.bus().map(|bus| bus.group_version(group)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                log::debug!("group {group}: membership version unknown: {e}");
                self.members.cached_version(group)
            }
            None => None,
        };
        if let Some(m) = self.members.get(group, version.as_deref()) {
            return Ok(Some(m));
        }
        let epoch = self.members.begin();
        let Some(mut members) = self.store.group_members(group)? else {
            return Ok(None);
        };
        members.sort_unstable();
        let members = Arc::new(members);
        self.members.insert(group, members.clone(), epoch, version);
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

/// The chat's sender: the session's user, who may have been signed out by the node
/// between dispatch and here (a lost claim).
fn sender(session: &Session, msgid: i64) -> Result<Arc<User>> {
    session
        .user()
        .ok_or_else(|| ServiceError::Protocol(ProtocolError::not_logged_in(msgid)))
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

#[cfg(test)]
mod tests;

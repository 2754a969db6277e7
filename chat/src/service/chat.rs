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
mod tests {
    use std::io::BufReader;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::protocol::Conversation;
    use crate::service::history::tests::full_for;
    use crate::service::tests::{
        read_frame, register, request, service_bounded, service_on, Sockets,
    };
    use crate::session::tests::at_delivery;
    use crate::store::social::conv_key;
    use crate::store::tests::SqliteDb;
    use crate::store::OfflineLimits;

    /// The `msg` fields of chat texts.
    fn msgs<'a>(texts: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        texts
            .into_iter()
            .map(|t| {
                let v: Value = serde_json::from_str(t).expect("a chat frame's JSON");
                v["msg"].as_str().expect("a msg").to_owned()
            })
            .collect()
    }

    /// The messages of conversation `conv` in history, oldest first, once the
    /// writer wrote what was recorded.
    fn history(db: &SqliteDb, service: &ChatService, conv: i64) -> Vec<String> {
        assert!(service.history().flush(Duration::from_secs(10)), "written");
        let page = db.store.history_page(conv, None, 10).expect("a page");
        let texts: Vec<String> = page.into_iter().rev().map(|m| m.text).collect();
        msgs(&texts)
    }

    /// A new group named `name` created by `creator` and joined by `members`.
    fn group(db: &SqliteDb, creator: i64, name: &str, members: &[i64]) -> i64 {
        let g = db.store.create_group(creator, name, "").expect("the store");
        let g = g.expect("a new group");
        for &m in members {
            db.store.join_group(m, g).expect("joined");
        }
        g
    }

    /// Bounds that hold two messages for a recipient, all from one sender if so.
    const TWO: OfflineLimits = OfflineLimits {
        max_messages: 2,
        max_bytes: 1 << 20,
        sender_percent: 100,
    };

    /// A chat for a recipient here whose output is congested goes to its offline
    /// store; once that is full, a chat is refused (ACK 206) and is not kept in
    /// history, which holds what the recipient got (protocol.md §10). Seen failing
    /// with the chat recorded before the router sent it (as `one_chat_text` did):
    /// "alice and bob's history, oldest first", left `["m0", "m1", "m2"]`.
    #[test]
    fn a_chat_refused_for_a_congested_recipient_here_is_not_in_history() {
        let db = SqliteDb::new();
        let service = service_bounded(&db, true, TWO);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let (a, a_client) = sockets.logged_in(&service, alice, "alice");
        let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
        b.set_congested(true);
        for (cid, msg) in ["m0", "m1", "m2"].into_iter().enumerate() {
            let chat = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob,
                "msg": msg, "cid": cid});
            service.run_job(&a, Job::Request(request(chat)));
        }
        let mut a_client = BufReader::new(a_client);
        let replies: Vec<Value> = (0..3)
            .map(|_| {
                let ack = read_frame(&mut a_client);
                json!([ack["cid"], ack["errno"], ack["stored"]])
            })
            .collect();
        assert_eq!(
            replies,
            [json!([0, 0, 1]), json!([1, 0, 1]), json!([2, 206, null])],
            "alice's replies: [cid, errno, stored]"
        );
        let stored = db.store.take_offline(bob).expect("the store");
        assert_eq!(msgs(&stored), ["m0", "m1"], "bob's offline messages");
        let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
        assert_eq!(
            history(&db, &service, conv),
            ["m0", "m1"],
            "alice and bob's history, oldest first"
        );
    }

    /// A group chat refused for every other member (each congested here with a
    /// full offline store) reached nobody and is not kept in history; one that
    /// reached a member is kept, though refused for another, and so is one to a
    /// group of the sender alone (refused for nobody). Seen failing with the group
    /// chat recorded before the router sent it (as `group_chat` did): "the history
    /// of bob's group", left `["to bob"]`.
    #[test]
    fn a_group_chat_refused_for_every_member_is_not_in_history() {
        let db = SqliteDb::new();
        let service = service_bounded(&db, true, TWO);
        let sockets = Sockets::start();
        let alice = register(&db, "alice");
        let (bob, carol) = (register(&db, "bob"), register(&db, "carol"));
        let with_bob = group(&db, alice, "b", &[bob]);
        let with_both = group(&db, alice, "bc", &[bob, carol]);
        let alone = group(&db, alice, "a", &[]);
        let (a, a_client) = sockets.logged_in(&service, alice, "alice");
        let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
        let (_c, c_client) = sockets.logged_in(&service, carol, "carol");
        b.set_congested(true);
        for msg in ["m0", "m1"] {
            let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": msg});
            service.run_job(&a, Job::Request(request(chat)));
        }
        let chats = [
            (with_bob, "to bob"),
            (with_both, "to both"),
            (alone, "to me"),
        ];
        for (groupid, msg) in chats {
            let chat = json!({"msgid": msgid::GROUP_CHAT, "ext": 1, "id": alice,
                "groupid": groupid, "msg": msg});
            service.run_job(&a, Job::Request(request(chat)));
        }
        let mut a_client = BufReader::new(a_client);
        let replies: Vec<Value> = (0..2)
            .map(|_| {
                let ack = read_frame(&mut a_client);
                json!([
                    ack["groupid"],
                    ack["errno"],
                    ack["refused"],
                    ack["delivered"]
                ])
            })
            .collect();
        assert_eq!(
            replies,
            [
                json!([with_bob, 206, [bob], 0]),
                json!([with_both, 206, [bob], 1])
            ],
            "alice's replies: [groupid, errno, refused, delivered]"
        );
        assert_eq!(
            read_frame(&mut BufReader::new(c_client))["msg"],
            "to both",
            "carol's frame"
        );
        let of = |g: i64| conv_key(alice, Conversation::Group(g)).expect("a group");
        let none: Vec<String> = Vec::new();
        assert_eq!(
            history(&db, &service, of(with_bob)),
            none,
            "the history of bob's group"
        );
        assert_eq!(
            history(&db, &service, of(with_both)),
            ["to both"],
            "the history of bob and carol's group"
        );
        assert_eq!(
            history(&db, &service, of(alone)),
            ["to me"],
            "alice's group"
        );
    }

    /// A group chat whose other members are all offline reaches nobody at once, yet
    /// the store took it for them: it is kept in history (only one refused for
    /// every member is not, protocol.md §10).
    #[test]
    fn a_group_chat_stored_for_every_member_is_in_history() {
        let db = SqliteDb::new();
        let service = service_on(&db, true);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let g = group(&db, alice, "g", &[bob]);
        let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
        let chat = json!({"msgid": msgid::GROUP_CHAT, "id": alice, "groupid": g, "msg": "g"});
        service.run_job(&a, Job::Request(request(chat)));
        let stored = db.store.take_offline(bob).expect("the store");
        assert_eq!(msgs(&stored), ["g"], "bob's offline messages");
        let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
        assert_eq!(
            history(&db, &service, conv),
            ["g"],
            "the history of bob's group"
        );
    }

    /// A chat the bus took (`Job::Routed`, from a ONE_CHAT request) waits, as one
    /// routed at once does, for room in history before the router records it: a
    /// queue full for a moment (the writer behind) costs the sender a wait, not the
    /// message. Seen failing with `routed`'s `!t.again` made `t.again` (only the fast
    /// path's frames, recorded already, wait): "alice and bob's history", left `[]`.
    #[test]
    fn a_chat_back_from_the_bus_waits_for_room_in_history() {
        let db = SqliteDb::new();
        let service = service_on(&db, true);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
        let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "m"});
        let routed = Routed {
            ticket: RouteTicket {
                to: bob,
                from: alice,
                text: chat.to_string(),
                cid: None,
                again: false,
            },
            // Bob's node took it.
            result: Ok(Vec::new()),
            unfinished: None,
        };
        let full = full_for(service.history(), Duration::from_millis(200));
        service.run_job(&a, Job::Routed(Box::new(routed)));
        full.join().expect("the queue drained");
        let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
        assert_eq!(
            history(&db, &service, conv),
            ["m"],
            "alice and bob's history"
        );
    }

    /// A chat read from a request, one-to-one or to a group, waits for room in
    /// history before the router takes its locks and records it: a queue full for
    /// a moment costs the sender a wait, not the message. Seen failing with
    /// `one_chat_text`'s `wait_room()` deleted: "alice and bob's history", left
    /// `[]`; with `group_chat`'s: "the history of bob's group", left `[]`.
    #[test]
    fn chats_from_requests_wait_for_room_in_history() {
        let db = SqliteDb::new();
        let service = service_on(&db, true);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let g = group(&db, alice, "g", &[bob]);
        let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
        let one = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "m"});
        let full = full_for(service.history(), Duration::from_millis(200));
        service.run_job(&a, Job::Request(request(one)));
        full.join().expect("the queue drained");
        let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
        assert_eq!(
            history(&db, &service, conv),
            ["m"],
            "alice and bob's history"
        );
        let group = json!({"msgid": msgid::GROUP_CHAT, "id": alice, "groupid": g, "msg": "g"});
        let full = full_for(service.history(), Duration::from_millis(200));
        service.run_job(&a, Job::Request(request(group)));
        full.join().expect("the queue drained");
        let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
        assert_eq!(
            history(&db, &service, conv),
            ["g"],
            "the history of bob's group"
        );
    }

    /// A recipient whose connection closed is kept in the hub until its sign-out
    /// (queued behind its requests): a chat for it then goes to its offline store,
    /// and once that is full it is refused and not kept in history, one-to-one or
    /// to a group. Seen failing with `to_session`'s `!session.is_closed()` deleted:
    /// "alice and bob's history", left `["m"]`; with `deliver_local`'s: "the
    /// history of bob's group", left `["g"]`.
    #[test]
    fn a_chat_refused_for_a_closed_recipient_here_is_not_in_history() {
        let db = SqliteDb::new();
        let service = service_bounded(&db, true, TWO);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let g = group(&db, alice, "g", &[bob]);
        let (a, a_client) = sockets.logged_in(&service, alice, "alice");
        let (b, _b_client) = sockets.logged_in(&service, bob, "bob");
        for _ in 0..2 {
            let refused = db.store.store_offline_many(&[bob], alice, "{}", &TWO);
            assert!(refused.expect("the store").is_empty(), "bob's store fills");
        }
        b.mark_closed();
        let one = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob, "msg": "m"});
        service.run_job(&a, Job::Request(request(one)));
        let group = json!({"msgid": msgid::GROUP_CHAT, "ext": 1, "id": alice, "groupid": g,
            "msg": "g"});
        service.run_job(&a, Job::Request(request(group)));
        let mut a_client = BufReader::new(a_client);
        let replies: Vec<Value> = (0..2)
            .map(|_| {
                let ack = read_frame(&mut a_client);
                json!([ack["reqmsgid"], ack["errno"]])
            })
            .collect();
        assert_eq!(
            replies,
            [
                json!([msgid::ONE_CHAT, 206]),
                json!([msgid::GROUP_CHAT, 206])
            ],
            "alice's replies: [reqmsgid, errno]"
        );
        let none: Vec<String> = Vec::new();
        let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
        assert_eq!(
            history(&db, &service, conv),
            none,
            "alice and bob's history"
        );
        let conv = conv_key(alice, Conversation::Group(g)).expect("a group");
        assert_eq!(
            history(&db, &service, conv),
            none,
            "the history of bob's group"
        );
    }

    /// A recipient whose connection closes while the IO loop's fast path hands it a
    /// chat (after the path found it open) gets the chat stored, and a sender that
    /// asked is told so, before the reply to its next request. Seen failing with
    /// `route_again` → (): "bob's offline messages", left `[]`; with `routed_again`
    /// → (): "alice's first frame: {"msgid":14}" (the PONG).
    #[test]
    fn a_chat_for_a_recipient_closing_under_the_fast_path_is_stored_and_confirmed() {
        let db = SqliteDb::new();
        let service = service_on(&db, false);
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let (a, a_client) = sockets.logged_in(&service, alice, "alice");
        let (_b, _b_client) = sockets.logged_in(&service, bob, "bob");
        let chat = json!({"msgid": msgid::ONE_CHAT, "ext": 1, "id": alice, "toid": bob,
            "msg": "in the gap", "cid": 7});
        // Bob's connection closes after `try_send_local` found it open, as the
        // chat is handed to it.
        let sent = at_delivery(Session::mark_closed, || service.try_fast(&a, request(chat)));
        let job = sent.expect_err("closed after the check: a job for the workers");
        assert!(matches!(job, Job::Route { to, .. } if to == bob), "{job:?}");
        service.run_job(&a, job);
        service.run_job(&a, Job::Request(request(json!({"msgid": msgid::PING}))));
        let stored = db.store.take_offline(bob).expect("the store");
        assert_eq!(msgs(&stored), ["in the gap"], "bob's offline messages");
        let first = read_frame(&mut BufReader::new(a_client));
        let confirmation = (&first["msgid"], &first["cid"], &first["stored"]);
        assert_eq!(
            confirmation,
            (&json!(msgid::ACK), &json!(7), &json!(1)),
            "alice's first frame: {first}"
        );
    }

    /// A chat a worker delivers to a recipient here is in history before it is
    /// handed to the recipient's connection, so a reply recorded from then on (the
    /// recipient answering at once) comes after it in the conversation. Seen
    /// failing with the router's `record()` moved after `deliver_live` in
    /// `to_session` (recorded once delivered): "alice and bob's history, oldest
    /// first", left `["reply", "question"]`.
    #[test]
    fn a_reply_follows_the_chat_it_answers_in_history() {
        let db = SqliteDb::new();
        let service = Arc::new(service_on(&db, true));
        let sockets = Sockets::start();
        let (alice, bob) = (register(&db, "alice"), register(&db, "bob"));
        let (a, _a_client) = sockets.logged_in(&service, alice, "alice");
        let (_b, _b_client) = sockets.logged_in(&service, bob, "bob");
        let s = service.clone();
        let reply = json!({"msgid": msgid::ONE_CHAT, "id": bob, "toid": alice, "msg": "reply"});
        let answer = move |to: &Session| {
            assert_eq!(to.user_id(), bob, "only bob gets a frame");
            s.record_chat(bob, alice, &reply.to_string());
        };
        // The workers' path (`one_chat_text`), as for a chat read behind a request.
        let chat = json!({"msgid": msgid::ONE_CHAT, "id": alice, "toid": bob, "msg": "question"});
        at_delivery(answer, || service.run_job(&a, Job::Request(request(chat))));
        let conv = conv_key(alice, Conversation::Peer(bob)).expect("a conversation");
        assert_eq!(
            history(&db, &service, conv),
            ["question", "reply"],
            "alice and bob's history, oldest first"
        );
    }
}

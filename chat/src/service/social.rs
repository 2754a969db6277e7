//! The service half of history, presence, friends and groups (msgids 23–37,
//! protocol.md §10): one handler for the extension's requests, and live notices.
//!
//! Its rule: notices (PRESENCE, friend requests and answers, removal from a group) are
//! live only. They go to opted-in sessions online now, here or on other nodes through a
//! broadcast, and are never stored: the state they announce can be asked for again
//! (GROUP_INFO, FRIEND_REQUESTS, LOGIN_ACK), and a stored one would reach a legacy
//! client's offline-message list, which reads only chat frames.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{ChatService, Result, ServiceError};
use crate::protocol::{self, errno, msgid, Conversation, Member, Parsed, Request, Social};
use crate::session::Session;
use crate::store::social::{conv_key, FriendRequest, LeaveGroup, RemoveMember};

/// How long a HISTORY request waits for this node's writer to catch up.
const HISTORY_FLUSH_WAIT: Duration = Duration::from_secs(2);

impl ChatService {
    /// The handler of every request of the extension.
    pub(super) fn social(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Social { id, req } = parsed.req else {
            unreachable!("handler registered for the social msgids")
        };
        let Some(user) = session.user() else {
            return Err(ServiceError::Protocol(
                protocol::ProtocolError::not_logged_in(parsed.msgid),
            ));
        };
        let reqmsgid = req.msgid();
        let answer = |code: i64, msg: &str, extra: &[(&str, Value)]| {
            session.reply(protocol::encode(&protocol::ack(reqmsgid, code, msg, extra)));
        };
        match req {
            Social::History {
                conv,
                before,
                limit,
            } => return self.history_page(session, id, conv, before, limit),
            Social::FriendRequest { friendid } => {
                let extra = [("friendid", Value::from(friendid))];
                if friendid == id {
                    answer(errno::SELF_FRIEND, "you cannot befriend yourself", &extra);
                    return Ok(());
                }
                match self.store.request_friend(id, friendid)? {
                    FriendRequest::Requested => {
                        answer(errno::OK, "friend request sent", &extra);
                        let n = protocol::friend_request_notice(id, &user.name);
                        self.notify(&[friendid], &n);
                    }
                    // Asked again while it waits: the target was told once, and is
                    // not told again (the store's insert decides, on every node).
                    FriendRequest::AlreadyRequested => answer(
                        errno::OK,
                        "friend request already sent, waiting for an answer",
                        &[extra[0].clone(), ("repeat", Value::Bool(true))],
                    ),
                    FriendRequest::Accepted => {
                        answer(errno::OK, "you are friends now", &extra);
                        let n = protocol::friend_answer_notice(id, &user.name, true);
                        self.notify(&[friendid], &n);
                    }
                    FriendRequest::AlreadyFriends => {
                        answer(errno::ALREADY_FRIENDS, "already friends", &extra)
                    }
                    FriendRequest::NoSuchUser => answer(
                        errno::NO_SUCH_USER,
                        &format!("no such user {friendid}"),
                        &extra,
                    ),
                }
            }
            Social::FriendAnswer { friendid, accept } => {
                let extra = [("friendid", Value::from(friendid))];
                if self.store.answer_friend(id, friendid, accept)? {
                    let msg = if accept { "accepted" } else { "declined" };
                    answer(errno::OK, msg, &extra);
                    let n = protocol::friend_answer_notice(id, &user.name, accept);
                    self.notify(&[friendid], &n);
                } else {
                    let msg = format!("no friend request from {friendid}");
                    answer(errno::NO_SUCH_REQUEST, &msg, &extra);
                }
            }
            Social::DelFriend { friendid } => {
                let extra = [("friendid", Value::from(friendid))];
                if self.store.del_friend(id, friendid)? {
                    answer(errno::OK, &format!("{friendid} removed"), &extra);
                } else {
                    let msg = format!("{friendid} is not a friend");
                    answer(errno::NOT_FRIENDS, &msg, &extra);
                }
            }
            Social::FriendRequests => {
                let list = self.store.friend_requests(id)?;
                session.reply(protocol::encode(&protocol::friend_requests_ack(&list)));
            }
            Social::LeaveGroup { groupid } => {
                let extra = [("groupid", Value::from(groupid))];
                match self.store.leave_group(id, groupid)? {
                    LeaveGroup::Left { .. } => {
                        self.invalidate_group(groupid);
                        answer(errno::OK, &format!("left group {groupid}"), &extra);
                    }
                    LeaveGroup::NotMember => {
                        let msg = format!("you are not in group {groupid}");
                        answer(errno::NOT_MEMBER, &msg, &extra);
                    }
                    LeaveGroup::NoSuchGroup => answer(
                        errno::NO_SUCH_GROUP,
                        &format!("no such group {groupid}"),
                        &extra,
                    ),
                }
            }
            Social::RemoveMember { groupid, userid } => {
                let extra = [
                    ("groupid", Value::from(groupid)),
                    ("userid", Value::from(userid)),
                ];
                if userid == id {
                    let msg = "use LEAVE_GROUP to leave a group";
                    answer(errno::REMOVE_SELF, msg, &extra);
                    return Ok(());
                }
                let (code, msg) = match self.store.remove_member(id, groupid, userid)? {
                    RemoveMember::Removed => {
                        self.invalidate_group(groupid);
                        let n = protocol::group_removed_notice(groupid, id);
                        self.notify(&[userid], &n);
                        (errno::OK, format!("{userid} removed from group {groupid}"))
                    }
                    RemoveMember::NotMember => {
                        (errno::NOT_MEMBER, format!("you are not in group {groupid}"))
                    }
                    RemoveMember::NotCreator => (
                        errno::NOT_CREATOR,
                        format!("only the creator of group {groupid} removes members"),
                    ),
                    RemoveMember::NotInGroup => (
                        errno::NOT_IN_GROUP,
                        format!("{userid} is not in group {groupid}"),
                    ),
                    RemoveMember::NoSuchGroup => {
                        (errno::NO_SUCH_GROUP, format!("no such group {groupid}"))
                    }
                };
                answer(code, &msg, &extra);
            }
            Social::GroupInfo { groupid } => {
                let extra = [("groupid", Value::from(groupid))];
                let Some(g) = self.store.group(groupid)? else {
                    answer(
                        errno::NO_SUCH_GROUP,
                        &format!("no such group {groupid}"),
                        &extra,
                    );
                    return Ok(());
                };
                if !g.members.iter().any(|m| m.id == id) {
                    let msg = format!("you are not in group {groupid}");
                    answer(errno::NOT_MEMBER, &msg, &extra);
                    return Ok(());
                }
                let ids: Vec<i64> = g.members.iter().map(|m| m.id).collect();
                let online = self.router.online(&ids);
                let members: Vec<Member> = g
                    .members
                    .into_iter()
                    .zip(online)
                    .map(|(m, online)| Member {
                        id: m.id,
                        name: m.name,
                        role: m.role,
                        online,
                    })
                    .collect();
                let ack = protocol::group_info_ack(groupid, &g.name, &g.desc, &members);
                session.reply(protocol::encode(&ack));
            }
        }
        Ok(())
    }

    /// HISTORY: a page of a conversation the user is part of, newest first.
    fn history_page(
        &self,
        session: &Session,
        id: i64,
        conv: Conversation,
        before: Option<i64>,
        limit: i64,
    ) -> Result<()> {
        let refuse = |code: i64, msg: String, extra: (&str, Value)| {
            session.reply(protocol::encode(&protocol::ack(
                msgid::HISTORY,
                code,
                &msg,
                &[extra],
            )));
        };
        match conv {
            Conversation::Peer(p) => {
                if conv_key(id, conv).is_none() || !self.store.user_exists(p)? {
                    refuse(
                        errno::NO_SUCH_USER,
                        format!("no such user {p}"),
                        ("peer", p.into()),
                    );
                    return Ok(());
                }
            }
            Conversation::Group(g) => match self.group_members(g)? {
                None => {
                    let msg = format!("no such group {g}");
                    refuse(errno::NO_SUCH_GROUP, msg, ("groupid", g.into()));
                    return Ok(());
                }
                Some(m) if !m.contains(&id) => {
                    let msg = format!("you are not in group {g}");
                    refuse(errno::NOT_MEMBER, msg, ("groupid", g.into()));
                    return Ok(());
                }
                Some(_) => {}
            },
        }
        let key = conv_key(id, conv).expect("checked above");
        // Read one's own writes: what this node recorded before the request is in.
        if !self.history.flush(HISTORY_FLUSH_WAIT) {
            log::warn!("history: the writer is behind; the page may lack recent messages");
        }
        let mut items = self.store.history_page(key, before, limit + 1)?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        session.reply(protocol::encode(&protocol::history_ack(conv, &items, more)));
        Ok(())
    }

    /// Records a one-to-one message from `from` to `to` in history.
    pub(super) fn record_chat(&self, from: i64, to: i64, text: &str) {
        if let Some(key) = conv_key(from, Conversation::Peer(to)) {
            self.history.record(key, from, text);
        }
    }

    /// Records a group message in history.
    pub(super) fn record_group_chat(&self, from: i64, group: i64, text: &str) {
        self.history.record(-group, from, text);
    }

    /// Tells the user's online, opted-in friends that it logged in or out.
    pub(super) fn announce(&self, id: i64, name: &str, online: bool) {
        match self.store.friend_of(id) {
            Ok(friends) if !friends.is_empty() => {
                self.notify(&friends, &protocol::presence(id, name, online))
            }
            Ok(_) => {}
            Err(e) => log::debug!("presence of {id} not announced: {e}"),
        }
    }

    /// Sends a live notice to those of `users` who are online and opted in: directly
    /// here, through a broadcast to the other nodes for the rest. Never stored.
    pub(super) fn notify(&self, users: &[i64], frame: &Value) {
        let text = frame.to_string();
        let elsewhere = self.notify_here(users, &text);
        if let (Some(bus), false) = (self.bus(), elsewhere.is_empty()) {
            if let Err(e) = bus.broadcast_notice(&elsewhere, &text) {
                log::debug!("notice to {elsewhere:?} not broadcast: {e}");
            }
        }
    }

    /// Delivers a notice to the opted-in sessions of `users` on this node; returns the
    /// users not on this node.
    pub(super) fn notify_here(&self, users: &[i64], text: &str) -> Vec<i64> {
        let mut elsewhere = Vec::new();
        for &u in users {
            match self.hub().get(u) {
                Some(s) if s.ext() && s.user().is_some() => {
                    let mut frame = Vec::with_capacity(text.len() + 1);
                    frame.extend_from_slice(text.as_bytes());
                    frame.push(0);
                    // A congested reader misses it: a notice is not worth storing.
                    s.deliver(frame);
                }
                Some(_) => {}
                None => elsewhere.push(u),
            }
        }
        elsewhere
    }
}

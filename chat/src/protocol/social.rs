//! The history, presence, friends and groups extension (msgids 23–37): its requests and
//! the frames the server sends for it. Legacy peers never send these ids and never get
//! these frames (protocol.md §10).

use serde_json::{json, Map, Value};

use super::{errno, msgid, Fields, Member, ProtocolError};

/// The most messages one HISTORY page holds.
pub const HISTORY_MAX_LIMIT: i64 = 100;
/// The page size when HISTORY names none.
pub const HISTORY_DEFAULT_LIMIT: i64 = 20;

/// The client → server msgids of this extension.
pub const SOCIAL_MSGIDS: [i64; 8] = [
    msgid::HISTORY,
    msgid::FRIEND_REQUEST,
    msgid::FRIEND_ANSWER,
    msgid::DEL_FRIEND,
    msgid::FRIEND_REQUESTS,
    msgid::LEAVE_GROUP,
    msgid::REMOVE_MEMBER,
    msgid::GROUP_INFO,
];

/// A conversation: the one with a peer, or a group's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Conversation {
    /// The one-to-one conversation with this user.
    Peer(i64),
    /// This group's conversation.
    Group(i64),
}

/// A request of this extension (the acting `id` is in [`super::Request::Social`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Social {
    /// HISTORY (23): `peer` or `groupid`, optional `before` (a seq) and `limit`.
    History {
        /// Whose conversation.
        conv: Conversation,
        /// Only messages with a smaller seq; `None`: from the newest.
        before: Option<i64>,
        /// 1..=[`HISTORY_MAX_LIMIT`].
        limit: i64,
    },
    /// FRIEND_REQUEST (26): `friendid`.
    FriendRequest {
        /// The user asked.
        friendid: i64,
    },
    /// FRIEND_ANSWER (28): `friendid` (who asked), `accept` (bool).
    FriendAnswer {
        /// The user who asked.
        friendid: i64,
        /// Accept (mutual friends) or decline.
        accept: bool,
    },
    /// DEL_FRIEND (30): `friendid`.
    DelFriend {
        /// The friend to remove.
        friendid: i64,
    },
    /// FRIEND_REQUESTS (31): no fields.
    FriendRequests,
    /// LEAVE_GROUP (33): `groupid`.
    LeaveGroup {
        /// The group.
        groupid: i64,
    },
    /// REMOVE_MEMBER (34): `groupid`, `userid`.
    RemoveMember {
        /// The group.
        groupid: i64,
        /// The member to remove.
        userid: i64,
    },
    /// GROUP_INFO (35): `groupid`.
    GroupInfo {
        /// The group.
        groupid: i64,
    },
}

impl Social {
    /// The request's msgid.
    pub fn msgid(&self) -> i64 {
        match self {
            Social::History { .. } => msgid::HISTORY,
            Social::FriendRequest { .. } => msgid::FRIEND_REQUEST,
            Social::FriendAnswer { .. } => msgid::FRIEND_ANSWER,
            Social::DelFriend { .. } => msgid::DEL_FRIEND,
            Social::FriendRequests => msgid::FRIEND_REQUESTS,
            Social::LeaveGroup { .. } => msgid::LEAVE_GROUP,
            Social::RemoveMember { .. } => msgid::REMOVE_MEMBER,
            Social::GroupInfo { .. } => msgid::GROUP_INFO,
        }
    }
}

/// Parses the fields of a request whose msgid is in [`MSGIDS`] (after `id`).
pub(super) fn parse(f: &Fields<'_>) -> Result<Social, ProtocolError> {
    Ok(match f.msgid {
        msgid::HISTORY => {
            let conv = match (f.obj.contains_key("peer"), f.obj.contains_key("groupid")) {
                (true, true) => {
                    let msg = "field \"groupid\" must be absent when \"peer\" is given";
                    return Err(f.bad(msg.into()));
                }
                (false, true) => Conversation::Group(f.id("groupid")?),
                _ => Conversation::Peer(f.id("peer")?),
            };
            let before = match f.obj.contains_key("before") {
                true => Some(f.id("before")?),
                false => None,
            };
            let limit = match f.obj.get("limit") {
                None => HISTORY_DEFAULT_LIMIT,
                Some(v) => v
                    .as_i64()
                    .filter(|n| (1..=HISTORY_MAX_LIMIT).contains(n) && !v.is_f64())
                    .ok_or_else(|| {
                        f.bad(format!(
                            "field \"limit\" must be an integer from 1 to {HISTORY_MAX_LIMIT}"
                        ))
                    })?,
            };
            Social::History {
                conv,
                before,
                limit,
            }
        }
        msgid::FRIEND_REQUEST => Social::FriendRequest {
            friendid: f.id("friendid")?,
        },
        msgid::FRIEND_ANSWER => Social::FriendAnswer {
            friendid: f.id("friendid")?,
            accept: match f.obj.get("accept") {
                None => return Err(f.missing("accept")),
                Some(Value::Bool(b)) => *b,
                Some(v) if v.as_u64() == Some(0) => false,
                Some(v) if v.as_u64() == Some(1) => true,
                Some(_) => return Err(f.bad("field \"accept\" must be true, false, 1 or 0".into())),
            },
        },
        msgid::DEL_FRIEND => Social::DelFriend {
            friendid: f.id("friendid")?,
        },
        msgid::FRIEND_REQUESTS => Social::FriendRequests,
        msgid::LEAVE_GROUP => Social::LeaveGroup {
            groupid: f.id("groupid")?,
        },
        msgid::REMOVE_MEMBER => Social::RemoveMember {
            groupid: f.id("groupid")?,
            userid: f.id("userid")?,
        },
        msgid::GROUP_INFO => Social::GroupInfo {
            groupid: f.id("groupid")?,
        },
        other => unreachable!("msgid {other} is not in social::MSGIDS"),
    })
}

/// One stored message of a HISTORY page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryItem {
    /// Its sequence number in the conversation (1, 2, … in the order stored).
    pub seq: i64,
    /// The chat frame's JSON text, as its recipients got it.
    pub text: String,
}

/// HISTORY_ACK: `{"errno":0,"msgid":24,"peer"|"groupid":N,"msgs":[…],"more":bool}`; each
/// element of `msgs` is the chat frame as delivered, plus its `"seq"`, newest first.
/// `more` says whether older messages exist (ask again with `before` = the last `seq`).
pub fn history_ack(conv: Conversation, items: &[HistoryItem], more: bool) -> Value {
    let msgs: Vec<Value> = items
        .iter()
        .map(|it| {
            let mut frame = match serde_json::from_str::<Value>(&it.text) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            frame.insert("seq".to_owned(), Value::from(it.seq));
            Value::Object(frame)
        })
        .collect();
    let mut v =
        json!({"errno": errno::OK, "msgid": msgid::HISTORY_ACK, "msgs": msgs, "more": more});
    match conv {
        Conversation::Peer(p) => v["peer"] = Value::from(p),
        Conversation::Group(g) => v["groupid"] = Value::from(g),
    }
    v
}

/// PRESENCE: `{"id":N,"msgid":25,"name":..,"state":"online"|"offline"}`.
pub fn presence(id: i64, name: &str, online: bool) -> Value {
    let state = if online { "online" } else { "offline" };
    json!({"id": id, "msgid": msgid::PRESENCE, "name": name, "state": state})
}

/// FRIEND_REQUEST_NOTICE: `{"from":N,"msgid":27,"name":..}`.
pub fn friend_request_notice(from: i64, name: &str) -> Value {
    json!({"from": from, "msgid": msgid::FRIEND_REQUEST_NOTICE, "name": name})
}

/// FRIEND_ANSWER_NOTICE: `{"accept":bool,"from":N,"msgid":29,"name":..}` (`from` answered).
pub fn friend_answer_notice(from: i64, name: &str, accept: bool) -> Value {
    json!({"accept": accept, "from": from, "msgid": msgid::FRIEND_ANSWER_NOTICE, "name": name})
}

/// FRIEND_REQUESTS_ACK: `{"errno":0,"msgid":32,"requests":[{"id":N,"name":..},…]}`.
pub fn friend_requests_ack(requests: &[(i64, String)]) -> Value {
    let list: Vec<Value> = requests
        .iter()
        .map(|(id, name)| json!({"id": id, "name": name}))
        .collect();
    json!({"errno": errno::OK, "msgid": msgid::FRIEND_REQUESTS_ACK, "requests": list})
}

/// GROUP_INFO_ACK: `{"errno":0,"groupdesc":..,"groupid":N,"groupname":..,"msgid":36,
/// "users":[{"id","name","role","state"},…]}` (members as objects, not strings).
pub fn group_info_ack(groupid: i64, name: &str, desc: &str, members: &[Member]) -> Value {
    let users: Vec<Value> = members
        .iter()
        .map(|m| serde_json::from_str(&m.to_wire()).expect("to_wire is JSON"))
        .collect();
    json!({
        "errno": errno::OK,
        "groupdesc": desc,
        "groupid": groupid,
        "groupname": name,
        "msgid": msgid::GROUP_INFO_ACK,
        "users": users,
    })
}

/// GROUP_REMOVED_NOTICE: `{"by":N,"groupid":N,"msgid":37}`.
pub fn group_removed_notice(groupid: i64, by: i64) -> Value {
    json!({"by": by, "groupid": groupid, "msgid": msgid::GROUP_REMOVED_NOTICE})
}

#[cfg(test)]
mod tests;

//! Reply builders and the wire shapes of LOGIN_ACK's friends and groups.

use serde_json::{json, Map, Value};

use super::{errno, msgid, ProtocolError};

/// The chat frame as delivered to recipients (online, through the bus, or stored offline).
///
/// `name` is overwritten with the sender's real name (a client cannot impersonate), `time` is
/// set to `fallback_time` only when the sender omitted it (the legacy client prints it and
/// would fail on a missing one), and the sender's `ext` opt-in and `cid` are dropped (they mean
/// nothing to the recipient). All other fields are kept as sent.
pub fn delivery_frame(
    mut frame: Map<String, Value>,
    sender_name: &str,
    fallback_time: &str,
) -> Value {
    frame.insert("name".to_owned(), Value::from(sender_name));
    if !frame.contains_key("time") {
        frame.insert("time".to_owned(), Value::from(fallback_time));
    }
    frame.remove("ext");
    frame.remove("cid");
    // The `dseq` of acknowledged delivery is the server's (protocol.md §12).
    frame.remove("dseq");
    Value::Object(frame)
}

/// A group member's role (`groupuser.grouprole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The user who created the group.
    Creator,
    /// A user who joined it.
    Normal,
}

impl Role {
    /// The wire and database spelling: `"creator"` or `"normal"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Creator => "creator",
            Role::Normal => "normal",
        }
    }

    /// Parses the wire and database spelling.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "creator" => Some(Role::Creator),
            "normal" => Some(Role::Normal),
            _ => None,
        }
    }

    /// Parses a `groupuser.grouprole` value; anything but `"creator"` is
    /// [`Role::Normal`], as legacy rows may hold NULL or odd values.
    pub fn from_column(value: &str) -> Role {
        Role::parse(value).unwrap_or(Role::Normal)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A friend as listed in LOGIN_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Friend {
    /// The friend's user id.
    pub id: i64,
    /// The friend's name.
    pub name: String,
    /// Whether the friend is online anywhere in the cluster.
    pub online: bool,
}

/// A group member as listed in LOGIN_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The member's user id.
    pub id: i64,
    /// The member's name.
    pub name: String,
    /// The member's role in the group.
    pub role: Role,
    /// Whether the member is online anywhere in the cluster.
    pub online: bool,
}

/// A group with its members as listed in LOGIN_ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group id.
    pub id: i64,
    /// The group name (`groupname`).
    pub name: String,
    /// The group description (`groupdesc`).
    pub desc: String,
    /// All members, including the user who logs in.
    pub members: Vec<Member>,
}

fn state_str(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

fn parse_state(v: &Value) -> Option<bool> {
    match v.as_str()? {
        "online" => Some(true),
        "offline" => Some(false),
        _ => None,
    }
}

impl Friend {
    /// The LOGIN_ACK element: compact JSON text `{"id":..,"name":..,"state":..}`.
    pub fn to_wire(&self) -> String {
        json!({"id": self.id, "name": self.name, "state": state_str(self.online)}).to_string()
    }

    /// Parses a LOGIN_ACK `friends` element (client side); `None` if malformed.
    pub fn from_wire(s: &str) -> Option<Friend> {
        let v: Value = serde_json::from_str(s).ok()?;
        Some(Friend {
            id: v.get("id")?.as_i64()?,
            name: v.get("name")?.as_str()?.to_owned(),
            online: parse_state(v.get("state")?)?,
        })
    }
}

impl Member {
    /// The `users` element: compact JSON text `{"id":..,"name":..,"role":..,"state":..}`.
    pub fn to_wire(&self) -> String {
        json!({
            "id": self.id,
            "name": self.name,
            "role": self.role.as_str(),
            "state": state_str(self.online),
        })
        .to_string()
    }

    /// Parses a group's `users` element (client side); `None` if malformed.
    pub fn from_wire(s: &str) -> Option<Member> {
        let v: Value = serde_json::from_str(s).ok()?;
        Some(Member {
            id: v.get("id")?.as_i64()?,
            name: v.get("name")?.as_str()?.to_owned(),
            role: Role::parse(v.get("role")?.as_str()?)?,
            online: parse_state(v.get("state")?)?,
        })
    }
}

impl GroupInfo {
    /// The LOGIN_ACK element: `{"groupdesc":..,"groupname":..,"id":..,"users":[strings]}`.
    pub fn to_wire(&self) -> String {
        let users: Vec<String> = self.members.iter().map(Member::to_wire).collect();
        json!({
            "groupdesc": self.desc,
            "groupname": self.name,
            "id": self.id,
            "users": users,
        })
        .to_string()
    }

    /// Parses a LOGIN_ACK `groups` element (client side); `None` if malformed. A missing
    /// `users` array is read as no members.
    pub fn from_wire(s: &str) -> Option<GroupInfo> {
        let v: Value = serde_json::from_str(s).ok()?;
        let members = match v.get("users") {
            None => Vec::new(),
            Some(u) => u
                .as_array()?
                .iter()
                .map(|m| Member::from_wire(m.as_str()?))
                .collect::<Option<Vec<_>>>()?,
        };
        Some(GroupInfo {
            id: v.get("id")?.as_i64()?,
            name: v.get("groupname")?.as_str()?.to_owned(),
            desc: v.get("groupdesc")?.as_str()?.to_owned(),
            members,
        })
    }
}

/// A successful LOGIN_ACK (protocol.md §3). `friends`, `groups` and `offlinemsg` appear only
/// when non-empty, as arrays of strings each holding compact JSON text; `offline` holds the
/// stored chat frames' text, oldest first, passed through unchanged.
pub fn login_ok(
    id: i64,
    name: &str,
    friends: &[Friend],
    groups: &[GroupInfo],
    offline: &[String],
) -> Value {
    let mut v = json!({"errno": errno::OK, "id": id, "msgid": msgid::LOGIN_ACK, "name": name});
    let obj = v.as_object_mut().expect("json! object");
    if !friends.is_empty() {
        let list: Vec<String> = friends.iter().map(Friend::to_wire).collect();
        obj.insert("friends".to_owned(), Value::from(list));
    }
    if !groups.is_empty() {
        let list: Vec<String> = groups.iter().map(GroupInfo::to_wire).collect();
        obj.insert("groups".to_owned(), Value::from(list));
    }
    if !offline.is_empty() {
        obj.insert("offlinemsg".to_owned(), Value::from(offline.to_vec()));
    }
    v
}

/// Adds a resume token and its lifetime in seconds to an ext LOGIN_ACK or a
/// RESUME_ACK: `"token":"…","tokenttl":N`.
pub fn add_token(ack: &mut Value, token: &str, ttl_secs: u64) {
    ack["token"] = Value::from(token);
    ack["tokenttl"] = Value::from(ttl_secs);
}

/// A refused RESUME: `{"errmsg":..,"errno":..,"msgid":18}`.
pub fn resume_err(errno: i64, errmsg: &str) -> Value {
    json!({"errmsg": errmsg, "errno": errno, "msgid": msgid::RESUME_ACK})
}

/// A failed LOGIN_ACK: `{"errmsg":..,"errno":..,"msgid":2}`. Legacy pairs are
/// ([`errno::INVALID_CREDENTIALS`], [`MSG_INVALID_CREDENTIALS`]) and
/// ([`errno::ALREADY_ONLINE`], [`MSG_ALREADY_ONLINE`]).
pub fn login_err(errno: i64, errmsg: &str) -> Value {
    json!({"errmsg": errmsg, "errno": errno, "msgid": msgid::LOGIN_ACK})
}

/// A successful REG_ACK: `{"errno":0,"id":N,"msgid":5}`.
pub fn reg_ok(id: i64) -> Value {
    json!({"errno": errno::OK, "id": id, "msgid": msgid::REG_ACK})
}

/// The legacy failed REG_ACK: `{"errno":1,"msgid":5}`.
pub fn reg_err() -> Value {
    json!({"errno": errno::REG_FAILED, "msgid": msgid::REG_ACK})
}

/// A failed REG_ACK for opted-in clients: [`reg_err`] plus `errmsg` saying why.
pub fn reg_err_ext(errmsg: &str) -> Value {
    json!({"errmsg": errmsg, "errno": errno::REG_FAILED, "msgid": msgid::REG_ACK})
}

/// A protocol error reply: `{"errmsg":..,"errno":..,"msgid":11}` plus `"reqmsgid"` when the
/// request's msgid is known.
pub fn error(e: &ProtocolError) -> Value {
    let mut v = json!({"errmsg": e.errmsg, "errno": e.errno, "msgid": msgid::ERROR});
    if let Some(m) = e.msgid {
        v["reqmsgid"] = Value::from(m);
    }
    v
}

/// A business outcome for opted-in clients:
/// `{"errmsg":..,"errno":..,"msgid":12,"reqmsgid":..}` plus `extra` fields (e.g.
/// `("groupid", json!(7))` for CREATE_GROUP). An `extra` key overrides a standard one.
pub fn ack(reqmsgid: i64, errno: i64, errmsg: &str, extra: &[(&str, Value)]) -> Value {
    let mut v =
        json!({"errmsg": errmsg, "errno": errno, "msgid": msgid::ACK, "reqmsgid": reqmsgid});
    for (k, x) in extra {
        v[*k] = x.clone();
    }
    v
}

/// The answer to CONTACTS: `{"errno":0,"friends":[…],"groups":[…],"msgid":16}`, the two
/// lists always present and shaped as in [`login_ok`].
pub fn contacts(friends: &[Friend], groups: &[GroupInfo]) -> Value {
    let friends: Vec<String> = friends.iter().map(Friend::to_wire).collect();
    let groups: Vec<String> = groups.iter().map(GroupInfo::to_wire).collect();
    json!({"errno": errno::OK, "friends": friends, "groups": groups, "msgid": msgid::CONTACTS_ACK})
}

/// The answer to PING: `{"msgid":14}`.
pub fn pong() -> Value {
    json!({"msgid": msgid::PONG})
}

/// The outbound bytes of one frame: compact JSON (sorted keys, UTF-8 unescaped, control
/// characters escaped) followed by one `0x00`.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).expect("a Value always serialises");
    out.push(0);
    out
}

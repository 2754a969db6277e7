//! The chat protocol: message ids, error numbers, typed requests and reply builders.
//!
//! Everything here works on `serde_json::Value`, whose objects are `BTreeMap`s, so every frame
//! we emit has its keys in byte-wise ascending order, exactly as the legacy server's serializer
//! did. Frame boundaries are the codec's business (`crate::codec`); this module only turns one
//! decoded JSON document into a [`Request`] and builds the documents we send back.
//!
//! Two kinds of negative replies are kept apart (protocol.md §4):
//! - protocol errors ([`ProtocolError`], sent as an [`error`] frame, msgid 11) are always sent;
//! - business outcomes ([`ack`], msgid 12) go only to clients that opted in with `"ext":1`.

use std::fmt;

use serde_json::{json, Map, Value};

/// Message ids (protocol.md §2, plus our extensions from 11 up).
pub mod msgid {
    /// Client → server: log in with `id` and `password`.
    pub const LOGIN: i64 = 1;
    /// Server → client: the answer to [`LOGIN`].
    pub const LOGIN_ACK: i64 = 2;
    /// Client → server: log out; the connection stays open.
    pub const LOGINOUT: i64 = 3;
    /// Client → server: register a `name` with a `password`.
    pub const REG: i64 = 4;
    /// Server → client: the answer to [`REG`].
    pub const REG_ACK: i64 = 5;
    /// Client → server → recipient: a one-to-one chat message.
    pub const ONE_CHAT: i64 = 6;
    /// Client → server: add `friendid` to the user's friends.
    pub const ADD_FRIEND: i64 = 7;
    /// Client → server: create a group (the creator gets role `creator`).
    pub const CREATE_GROUP: i64 = 8;
    /// Client → server: join a group (role `normal`).
    pub const ADD_GROUP: i64 = 9;
    /// Client → server → members: a group chat message.
    pub const GROUP_CHAT: i64 = 10;
    /// Ours, server → client: a protocol error reply, always sent.
    pub const ERROR: i64 = 11;
    /// Ours, server → client: a business outcome, sent only to clients that opted in.
    pub const ACK: i64 = 12;
    /// Ours, client → server: heartbeat.
    pub const PING: i64 = 13;
    /// Ours, server → client: the answer to [`PING`].
    pub const PONG: i64 = 14;

    /// The symbolic name of a msgid, for logs; `None` for ids outside the table.
    pub fn name(id: i64) -> Option<&'static str> {
        Some(match id {
            LOGIN => "LOGIN",
            LOGIN_ACK => "LOGIN_ACK",
            LOGINOUT => "LOGINOUT",
            REG => "REG",
            REG_ACK => "REG_ACK",
            ONE_CHAT => "ONE_CHAT",
            ADD_FRIEND => "ADD_FRIEND",
            CREATE_GROUP => "CREATE_GROUP",
            ADD_GROUP => "ADD_GROUP",
            GROUP_CHAT => "GROUP_CHAT",
            ERROR => "ERROR",
            ACK => "ACK",
            PING => "PING",
            PONG => "PONG",
            _ => return None,
        })
    }
}

/// Error numbers carried in `errno`.
pub mod errno {
    /// Success.
    pub const OK: i64 = 0;
    /// Legacy: LOGIN with a wrong id or password.
    pub const INVALID_CREDENTIALS: i64 = 1;
    /// Legacy: REG failed (name taken or invalid). Same number as [`INVALID_CREDENTIALS`].
    pub const REG_FAILED: i64 = 1;
    /// Legacy: LOGIN for a user who is already online somewhere in the cluster.
    pub const ALREADY_ONLINE: i64 = 2;

    /// The frame is not JSON (or not valid UTF-8).
    pub const BAD_JSON: i64 = 100;
    /// The frame is JSON but not an object.
    pub const NOT_OBJECT: i64 = 101;
    /// `msgid` is missing or not an integer.
    pub const BAD_MSGID: i64 = 102;
    /// `msgid` is an integer no client may send.
    pub const UNKNOWN_MSGID: i64 = 103;
    /// A required field is absent.
    pub const MISSING_FIELD: i64 = 104;
    /// A field has the wrong type or an out-of-range value.
    pub const BAD_FIELD: i64 = 105;
    /// A frame grew past the frame limit; the connection is closed after the reply.
    pub const FRAME_TOO_LARGE: i64 = 106;
    /// A request other than LOGIN, REG or PING before login.
    pub const NOT_LOGGED_IN: i64 = 107;
    /// The request's `id` is not the logged-in user's.
    pub const NOT_YOUR_ID: i64 = 108;
    /// The client sends faster than allowed.
    pub const RATE_LIMITED: i64 = 109;
    /// A server-side failure, e.g. the database is down.
    pub const UNAVAILABLE: i64 = 110;
    /// LOGIN on a connection that is already logged in.
    pub const ALREADY_LOGGED_IN: i64 = 111;
    /// The server is at its connection limit; the connection is closed.
    pub const SERVER_FULL: i64 = 112;
    /// No login within the time limit after connecting; the connection is closed.
    pub const LOGIN_TIMEOUT: i64 = 113;

    /// The addressed user does not exist.
    pub const NO_SUCH_USER: i64 = 201;
    /// The addressed group does not exist.
    pub const NO_SUCH_GROUP: i64 = 202;
    /// The user or group name is already taken.
    pub const NAME_TAKEN: i64 = 203;
    /// ADD_FRIEND with one's own id.
    pub const SELF_FRIEND: i64 = 204;
    /// GROUP_CHAT to a group the sender is not a member of.
    pub const NOT_MEMBER: i64 = 205;
}

/// Legacy LOGIN_ACK errmsg for [`errno::INVALID_CREDENTIALS`]; the legacy client prints it.
pub const MSG_INVALID_CREDENTIALS: &str = "id or password is invalid!";
/// Legacy LOGIN_ACK errmsg for [`errno::ALREADY_ONLINE`]; the legacy client prints it.
pub const MSG_ALREADY_ONLINE: &str = "this account is using, input another!";

/// Longest user name in bytes (`user.name varchar(50)`).
pub const NAME_MAX_BYTES: usize = 50;
/// Longest group name in bytes (`allgroup.groupname varchar(50)`).
pub const GROUPNAME_MAX_BYTES: usize = 50;
/// Longest group description in bytes (`allgroup.groupdesc varchar(200)`).
pub const GROUPDESC_MAX_BYTES: usize = 200;
/// Longest password in bytes; bounds the cost of hashing attacker-chosen input.
pub const PASSWORD_MAX_BYTES: usize = 256;

/// A request the server refuses at the protocol level; sent back as an [`error`] frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// One of the `errno` constants (100..=111).
    pub errno: i64,
    /// What is wrong and with which field, e.g. `missing field "password"`.
    pub errmsg: String,
    /// The offending request's msgid when it was readable; echoed as `reqmsgid`.
    pub msgid: Option<i64>,
}

impl ProtocolError {
    /// An error with the given errno and message, not tied to a request msgid.
    pub fn new(errno: i64, errmsg: impl Into<String>) -> Self {
        ProtocolError {
            errno,
            errmsg: errmsg.into(),
            msgid: None,
        }
    }

    /// The same error, attributed to the request with this msgid.
    pub fn with_msgid(mut self, msgid: i64) -> Self {
        self.msgid = Some(msgid);
        self
    }

    /// [`errno::NOT_LOGGED_IN`] for a request with `msgid` sent before login.
    pub fn not_logged_in(msgid: i64) -> Self {
        Self::new(errno::NOT_LOGGED_IN, "not logged in").with_msgid(msgid)
    }

    /// [`errno::NOT_YOUR_ID`]: the request claims `claimed` but the connection is `actual`.
    pub fn not_your_id(msgid: i64, claimed: i64, actual: i64) -> Self {
        let msg = format!("field \"id\" is {claimed} but this connection is logged in as {actual}");
        Self::new(errno::NOT_YOUR_ID, msg).with_msgid(msgid)
    }

    /// [`errno::ALREADY_LOGGED_IN`]: LOGIN on a connection logged in as `current`.
    pub fn already_logged_in(current: i64) -> Self {
        let msg = format!("this connection is already logged in as {current}");
        Self::new(errno::ALREADY_LOGGED_IN, msg).with_msgid(msgid::LOGIN)
    }

    /// [`errno::UNAVAILABLE`]: the server could not serve the request (e.g. database down).
    pub fn unavailable(msgid: i64) -> Self {
        Self::new(errno::UNAVAILABLE, "service temporarily unavailable").with_msgid(msgid)
    }

    /// [`errno::RATE_LIMITED`]: the client sends too fast.
    pub fn rate_limited(msgid: Option<i64>) -> Self {
        let mut e = Self::new(errno::RATE_LIMITED, "too many requests, slow down");
        e.msgid = msgid;
        e
    }

    /// [`errno::FRAME_TOO_LARGE`]: a frame passed `limit` bytes.
    pub fn frame_too_large(limit: usize) -> Self {
        Self::new(
            errno::FRAME_TOO_LARGE,
            format!("frame exceeds the limit of {limit} bytes"),
        )
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}: {}", self.errno, self.errmsg)?;
        if let Some(m) = self.msgid {
            write!(f, " (msgid {m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ProtocolError {}

/// A validated client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// LOGIN (1). `password` may be empty: it then simply fails to match (legacy behaviour).
    Login {
        /// The user id to log in as.
        id: i64,
        /// The plaintext password, at most [`PASSWORD_MAX_BYTES`].
        password: String,
    },
    /// LOGINOUT (3).
    Logout {
        /// The user logging out; must be the connection's user.
        id: i64,
    },
    /// REG (4).
    Reg {
        /// The new user's name, 1..=[`NAME_MAX_BYTES`] bytes.
        name: String,
        /// The new password, 1..=[`PASSWORD_MAX_BYTES`] bytes.
        password: String,
    },
    /// ONE_CHAT (6).
    OneChat {
        /// The sender.
        id: i64,
        /// The recipient, from `toid` or, failing that, `to`.
        toid: i64,
        /// The message text (any length; the frame limit bounds it).
        msg: String,
        /// The whole request object, forwarded after [`delivery_frame`].
        frame: Map<String, Value>,
    },
    /// ADD_FRIEND (7).
    AddFriend {
        /// The user adding a friend.
        id: i64,
        /// The friend to add.
        friendid: i64,
    },
    /// CREATE_GROUP (8).
    CreateGroup {
        /// The creator.
        id: i64,
        /// 1..=[`GROUPNAME_MAX_BYTES`] bytes.
        groupname: String,
        /// 0..=[`GROUPDESC_MAX_BYTES`] bytes; `""` when absent.
        groupdesc: String,
    },
    /// ADD_GROUP (9).
    AddGroup {
        /// The user joining.
        id: i64,
        /// The group to join.
        groupid: i64,
    },
    /// GROUP_CHAT (10).
    GroupChat {
        /// The sender.
        id: i64,
        /// The target group.
        groupid: i64,
        /// The message text.
        msg: String,
        /// The whole request object, forwarded after [`delivery_frame`].
        frame: Map<String, Value>,
    },
    /// PING (13); needs no login and no fields.
    Ping,
}

impl Request {
    /// The request's msgid.
    pub fn msgid(&self) -> i64 {
        match self {
            Request::Login { .. } => msgid::LOGIN,
            Request::Logout { .. } => msgid::LOGINOUT,
            Request::Reg { .. } => msgid::REG,
            Request::OneChat { .. } => msgid::ONE_CHAT,
            Request::AddFriend { .. } => msgid::ADD_FRIEND,
            Request::CreateGroup { .. } => msgid::CREATE_GROUP,
            Request::AddGroup { .. } => msgid::ADD_GROUP,
            Request::GroupChat { .. } => msgid::GROUP_CHAT,
            Request::Ping => msgid::PING,
        }
    }

    /// The user id the request acts as, which must equal the connection's logged-in user;
    /// `None` for LOGIN (it establishes the identity), REG and PING.
    pub fn acting_id(&self) -> Option<i64> {
        match self {
            Request::Logout { id }
            | Request::OneChat { id, .. }
            | Request::AddFriend { id, .. }
            | Request::CreateGroup { id, .. }
            | Request::AddGroup { id, .. }
            | Request::GroupChat { id, .. } => Some(*id),
            Request::Login { .. } | Request::Reg { .. } | Request::Ping => None,
        }
    }
}

/// The result of [`parse_request`].
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The validated request.
    pub req: Request,
    /// The client opted in to extended replies (`"ext":1` or `"ext":true`).
    pub ext: bool,
    /// The request's msgid (same as `req.msgid()`).
    pub msgid: i64,
}

/// Validates one decoded JSON document as a client request.
///
/// Checks, in order: an object (`NOT_OBJECT`), `msgid` (`BAD_MSGID`, `UNKNOWN_MSGID`), `ext`,
/// then the message's fields in their documented order (`MISSING_FIELD`, `BAD_FIELD`).
/// Unknown extra fields are ignored. Integers must be JSON integers (no floats, no strings);
/// ids must be in `1..=i64::MAX`.
///
/// # Errors
///
/// A [`ProtocolError`] naming the problem and the field; its `msgid` is set once the
/// request's msgid has been read.
pub fn parse_request(v: Value) -> Result<Parsed, ProtocolError> {
    let Value::Object(obj) = v else {
        return Err(ProtocolError::new(
            errno::NOT_OBJECT,
            "frame is not a JSON object",
        ));
    };
    let msgid = match obj.get("msgid") {
        None => {
            return Err(ProtocolError::new(
                errno::BAD_MSGID,
                "missing field \"msgid\"",
            ))
        }
        Some(m) => m.as_i64().ok_or_else(|| {
            ProtocolError::new(errno::BAD_MSGID, "field \"msgid\" must be an integer")
        })?,
    };
    let f = Fields { obj: &obj, msgid };
    let ext = f.ext()?;
    let req = match msgid {
        msgid::LOGIN => Request::Login {
            id: f.id("id")?,
            password: f.string("password", 0, PASSWORD_MAX_BYTES)?,
        },
        msgid::LOGINOUT => Request::Logout { id: f.id("id")? },
        msgid::REG => Request::Reg {
            name: f.string("name", 1, NAME_MAX_BYTES)?,
            password: f.string("password", 1, PASSWORD_MAX_BYTES)?,
        },
        msgid::ONE_CHAT => {
            let id = f.id("id")?;
            let toid = if f.obj.contains_key("toid") || !f.obj.contains_key("to") {
                f.id("toid")?
            } else {
                f.id("to")?
            };
            let msg = f.string("msg", 0, usize::MAX)?;
            f.chat_extras()?;
            Request::OneChat {
                id,
                toid,
                msg,
                frame: obj,
            }
        }
        msgid::ADD_FRIEND => Request::AddFriend {
            id: f.id("id")?,
            friendid: f.id("friendid")?,
        },
        msgid::CREATE_GROUP => Request::CreateGroup {
            id: f.id("id")?,
            groupname: f.string("groupname", 1, GROUPNAME_MAX_BYTES)?,
            groupdesc: f
                .opt_string("groupdesc", 0, GROUPDESC_MAX_BYTES)?
                .unwrap_or_default(),
        },
        msgid::ADD_GROUP => Request::AddGroup {
            id: f.id("id")?,
            groupid: f.id("groupid")?,
        },
        msgid::GROUP_CHAT => {
            let id = f.id("id")?;
            let groupid = f.id("groupid")?;
            let msg = f.string("msg", 0, usize::MAX)?;
            f.chat_extras()?;
            Request::GroupChat {
                id,
                groupid,
                msg,
                frame: obj,
            }
        }
        msgid::PING => Request::Ping,
        other => {
            let hint = match msgid::name(other) {
                Some(name) => format!(" ({name} is sent by the server only)"),
                None => String::new(),
            };
            return Err(ProtocolError::new(
                errno::UNKNOWN_MSGID,
                format!("unknown msgid {other}{hint}"),
            )
            .with_msgid(other));
        }
    };
    Ok(Parsed { req, ext, msgid })
}

/// Field accessors that produce the right errno and errmsg for one request object.
struct Fields<'a> {
    /// The request object.
    obj: &'a Map<String, Value>,
    /// The request's msgid, attached to every error.
    msgid: i64,
}

impl Fields<'_> {
    fn missing(&self, key: &str) -> ProtocolError {
        ProtocolError::new(errno::MISSING_FIELD, format!("missing field \"{key}\""))
            .with_msgid(self.msgid)
    }

    fn bad(&self, msg: String) -> ProtocolError {
        ProtocolError::new(errno::BAD_FIELD, msg).with_msgid(self.msgid)
    }

    /// A required id: a JSON integer in `1..=i64::MAX`.
    fn id(&self, key: &str) -> Result<i64, ProtocolError> {
        let v = self.obj.get(key).ok_or_else(|| self.missing(key))?;
        let Value::Number(n) = v else {
            return Err(self.bad(format!("field \"{key}\" must be an integer")));
        };
        if n.is_f64() {
            return Err(self.bad(format!("field \"{key}\" must be an integer")));
        }
        match n.as_i64() {
            Some(id) if id > 0 => Ok(id),
            _ => Err(self.bad(format!(
                "field \"{key}\" must be an integer from 1 to {}",
                i64::MAX
            ))),
        }
    }

    /// A required string of `min..=max` bytes.
    fn string(&self, key: &str, min: usize, max: usize) -> Result<String, ProtocolError> {
        self.opt_string(key, min, max)?
            .ok_or_else(|| self.missing(key))
    }

    /// An optional string of `min..=max` bytes; `None` when absent.
    fn opt_string(
        &self,
        key: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<String>, ProtocolError> {
        let Some(v) = self.obj.get(key) else {
            return Ok(None);
        };
        match v.as_str() {
            Some(s) if (min..=max).contains(&s.len()) => Ok(Some(s.to_owned())),
            _ => Err(self.bad(describe_string(key, min, max))),
        }
    }

    /// `ext`: absent, `0`, `1`, `false` or `true`.
    fn ext(&self) -> Result<bool, ProtocolError> {
        match self.obj.get("ext") {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) if v.as_u64() == Some(0) => Ok(false),
            Some(v) if v.as_u64() == Some(1) => Ok(true),
            Some(_) => Err(self.bad("field \"ext\" must be 0, 1, false or true".to_owned())),
        }
    }

    /// The optional `name` and `time` of a chat frame must be strings when present: the legacy
    /// client reads both as strings unconditionally when it receives the frame.
    fn chat_extras(&self) -> Result<(), ProtocolError> {
        self.opt_string("name", 0, usize::MAX)?;
        self.opt_string("time", 0, usize::MAX)?;
        Ok(())
    }
}

/// The errmsg for a string field that is mistyped or out of bounds.
fn describe_string(key: &str, min: usize, max: usize) -> String {
    match (min, max) {
        (0, usize::MAX) => format!("field \"{key}\" must be a string"),
        (0, max) => format!("field \"{key}\" must be a string of at most {max} bytes"),
        (_, usize::MAX) => format!("field \"{key}\" must be a non-empty string"),
        (1, max) => format!("field \"{key}\" must be a non-empty string of at most {max} bytes"),
        (min, max) => format!("field \"{key}\" must be a string of {min} to {max} bytes"),
    }
}

/// The chat frame as delivered to recipients (online, through the bus, or stored offline).
///
/// `name` is overwritten with the sender's real name (a client cannot impersonate), `time` is
/// set to `fallback_time` only when the sender omitted it (the legacy client prints it and
/// would fail on a missing one), and the sender's `ext` opt-in is dropped (it means nothing to
/// the recipient). All other fields are kept as sent.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn text(v: &Value) -> String {
        v.to_string()
    }

    fn parse(s: &str) -> Result<Parsed, ProtocolError> {
        parse_request(serde_json::from_str(s).unwrap())
    }

    fn req(s: &str) -> Request {
        parse(s).unwrap().req
    }

    fn err(s: &str) -> (i64, String, Option<i64>) {
        let e = parse(s).unwrap_err();
        (e.errno, e.errmsg, e.msgid)
    }

    #[test]
    fn legacy_login_errors_exact_bytes() {
        assert_eq!(
            encode(&login_err(
                errno::INVALID_CREDENTIALS,
                MSG_INVALID_CREDENTIALS
            )),
            b"{\"errmsg\":\"id or password is invalid!\",\"errno\":1,\"msgid\":2}\0"
        );
        assert_eq!(
            text(&login_err(errno::ALREADY_ONLINE, MSG_ALREADY_ONLINE)),
            r#"{"errmsg":"this account is using, input another!","errno":2,"msgid":2}"#
        );
    }

    #[test]
    fn reg_replies_exact_bytes() {
        assert_eq!(text(&reg_ok(23)), r#"{"errno":0,"id":23,"msgid":5}"#);
        assert_eq!(text(&reg_err()), r#"{"errno":1,"msgid":5}"#);
        assert_eq!(
            text(&reg_err_ext("name \"bob\" is taken")),
            r#"{"errmsg":"name \"bob\" is taken","errno":1,"msgid":5}"#
        );
    }

    #[test]
    fn login_ok_minimal() {
        assert_eq!(
            text(&login_ok(22, "alice", &[], &[], &[])),
            r#"{"errno":0,"id":22,"msgid":2,"name":"alice"}"#
        );
    }

    #[test]
    fn login_ok_full_strings_within_json() {
        let friends = [
            Friend {
                id: 13,
                name: "bob".into(),
                online: true,
            },
            Friend {
                id: 15,
                name: "carol".into(),
                online: false,
            },
        ];
        let groups = [GroupInfo {
            id: 2,
            name: "g".into(),
            desc: "d \"q\"".into(),
            members: vec![
                Member {
                    id: 22,
                    name: "alice".into(),
                    role: Role::Creator,
                    online: true,
                },
                Member {
                    id: 13,
                    name: "bob".into(),
                    role: Role::Normal,
                    online: false,
                },
            ],
        }];
        let offline =
            [r#"{"id":13,"msg":"hi","msgid":6,"name":"bob","time":"t","toid":22}"#.to_owned()];
        let v = login_ok(22, "alice", &friends, &groups, &offline);
        let expected = concat!(
            r#"{"errno":0,"friends":["{\"id\":13,\"name\":\"bob\",\"state\":\"online\"}","#,
            r#""{\"id\":15,\"name\":\"carol\",\"state\":\"offline\"}"],"#,
            r#""groups":["{\"groupdesc\":\"d \\\"q\\\"\",\"groupname\":\"g\",\"id\":2,"#,
            r#"\"users\":[\"{\\\"id\\\":22,\\\"name\\\":\\\"alice\\\",\\\"role\\\":\\\"creator\\\","#,
            r#"\\\"state\\\":\\\"online\\\"}\",\"{\\\"id\\\":13,\\\"name\\\":\\\"bob\\\","#,
            r#"\\\"role\\\":\\\"normal\\\",\\\"state\\\":\\\"offline\\\"}\"]}"],"#,
            r#""id":22,"msgid":2,"name":"alice","#,
            r#""offlinemsg":["{\"id\":13,\"msg\":\"hi\",\"msgid\":6,\"name\":\"bob\",\"time\":\"t\",\"toid\":22}"]}"#
        );
        assert_eq!(text(&v), expected);
        // And the client side reads it back.
        let f: Vec<Friend> = v["friends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Friend::from_wire(s.as_str().unwrap()).unwrap())
            .collect();
        assert_eq!(f, friends);
        let g = GroupInfo::from_wire(v["groups"][0].as_str().unwrap()).unwrap();
        assert_eq!(g, groups[0]);
    }

    #[test]
    fn only_non_empty_arrays_present() {
        let offline = ["{}".to_owned()];
        let v = login_ok(1, "a", &[], &[], &offline);
        assert!(v.get("friends").is_none());
        assert!(v.get("groups").is_none());
        assert_eq!(v["offlinemsg"], json!(["{}"]));
    }

    #[test]
    fn error_ack_pong() {
        let e = ProtocolError::new(errno::MISSING_FIELD, "missing field \"id\"").with_msgid(7);
        assert_eq!(
            text(&error(&e)),
            r#"{"errmsg":"missing field \"id\"","errno":104,"msgid":11,"reqmsgid":7}"#
        );
        let e = ProtocolError::new(errno::BAD_JSON, "x");
        assert_eq!(text(&error(&e)), r#"{"errmsg":"x","errno":100,"msgid":11}"#);
        assert_eq!(
            text(&ack(8, errno::OK, "", &[("groupid", json!(5))])),
            r#"{"errmsg":"","errno":0,"groupid":5,"msgid":12,"reqmsgid":8}"#
        );
        assert_eq!(
            text(&ack(7, errno::NO_SUCH_USER, "no user 9", &[])),
            r#"{"errmsg":"no user 9","errno":201,"msgid":12,"reqmsgid":7}"#
        );
        assert_eq!(encode(&pong()), b"{\"msgid\":14}\0");
    }

    #[test]
    fn parses_every_request() {
        assert_eq!(
            req(r#"{"id":22,"msgid":1,"password":"pa"}"#),
            Request::Login {
                id: 22,
                password: "pa".into()
            }
        );
        assert_eq!(
            req(r#"{"id":22,"msgid":1,"password":""}"#),
            Request::Login {
                id: 22,
                password: String::new()
            }
        );
        assert_eq!(req(r#"{"id":22,"msgid":3}"#), Request::Logout { id: 22 });
        assert_eq!(
            req(r#"{"msgid":4,"name":"bob","password":"x"}"#),
            Request::Reg {
                name: "bob".into(),
                password: "x".into()
            }
        );
        assert_eq!(
            req(r#"{"friendid":5,"id":22,"msgid":7}"#),
            Request::AddFriend {
                id: 22,
                friendid: 5
            }
        );
        assert_eq!(
            req(r#"{"groupdesc":"d","groupname":"g","id":22,"msgid":8}"#),
            Request::CreateGroup {
                id: 22,
                groupname: "g".into(),
                groupdesc: "d".into()
            }
        );
        assert_eq!(
            req(r#"{"groupname":"g","id":22,"msgid":8}"#),
            Request::CreateGroup {
                id: 22,
                groupname: "g".into(),
                groupdesc: String::new()
            }
        );
        assert_eq!(
            req(r#"{"groupid":3,"id":22,"msgid":9}"#),
            Request::AddGroup { id: 22, groupid: 3 }
        );
        assert_eq!(req(r#"{"msgid":13}"#), Request::Ping);

        let s = r#"{"groupid":3,"id":22,"msg":"hi","msgid":10,"name":"a","time":"t"}"#;
        let Request::GroupChat {
            id,
            groupid,
            msg,
            frame,
        } = req(s)
        else {
            panic!("not a group chat")
        };
        assert_eq!((id, groupid, msg.as_str()), (22, 3, "hi"));
        assert_eq!(Value::Object(frame).to_string(), s);
    }

    #[test]
    fn one_chat_to_and_toid() {
        let s = r#"{"id":1,"msg":"m","msgid":6,"name":"a","time":"2024-01-01 00:00:00","toid":2}"#;
        let p = parse(s).unwrap();
        assert_eq!(p.msgid, msgid::ONE_CHAT);
        let Request::OneChat {
            id,
            toid,
            msg,
            frame,
        } = p.req
        else {
            panic!()
        };
        assert_eq!((id, toid, msg.as_str()), (1, 2, "m"));
        assert_eq!(Value::Object(frame).to_string(), s);
        let toid_of = |s: &str| match req(s) {
            Request::OneChat { toid, .. } => toid,
            other => panic!("{other:?}"),
        };
        assert_eq!(toid_of(r#"{"id":1,"msg":"m","msgid":6,"to":3}"#), 3);
        assert_eq!(
            toid_of(r#"{"id":1,"msg":"m","msgid":6,"to":3,"toid":4}"#),
            4
        );
        // toid wins even when it is the invalid one.
        assert_eq!(
            err(r#"{"id":1,"msg":"m","msgid":6,"to":3,"toid":"4"}"#).1,
            "field \"toid\" must be an integer"
        );
        assert_eq!(
            err(r#"{"id":1,"msg":"m","msgid":6}"#),
            (
                errno::MISSING_FIELD,
                "missing field \"toid\"".into(),
                Some(6)
            )
        );
        // name and time are optional, but strings when present.
        assert!(parse(r#"{"id":1,"msg":"","msgid":6,"toid":2}"#).is_ok());
        assert_eq!(
            err(r#"{"id":1,"msg":"m","msgid":6,"time":5,"toid":2}"#).1,
            "field \"time\" must be a string"
        );
    }

    #[test]
    fn acting_id() {
        assert_eq!(req(r#"{"id":22,"msgid":3}"#).acting_id(), Some(22));
        assert_eq!(
            req(r#"{"id":22,"msgid":1,"password":"p"}"#).acting_id(),
            None
        );
        assert_eq!(req(r#"{"msgid":13}"#).acting_id(), None);
        assert_eq!(req(r#"{"msgid":13}"#).msgid(), msgid::PING);
    }

    #[test]
    fn frame_level_errors() {
        assert_eq!(
            err("[1]"),
            (errno::NOT_OBJECT, "frame is not a JSON object".into(), None)
        );
        assert_eq!(
            err(r#"{"id":1}"#),
            (errno::BAD_MSGID, "missing field \"msgid\"".into(), None)
        );
        for bad in [r#""1""#, "1.0", "null", "true", "1e2"] {
            assert_eq!(
                err(&format!(r#"{{"msgid":{bad}}}"#)),
                (
                    errno::BAD_MSGID,
                    "field \"msgid\" must be an integer".into(),
                    None
                ),
                "{bad}"
            );
        }
        assert_eq!(
            err(r#"{"msgid":99}"#),
            (errno::UNKNOWN_MSGID, "unknown msgid 99".into(), Some(99))
        );
        assert_eq!(err(r#"{"msgid":-1}"#).0, errno::UNKNOWN_MSGID);
        for server_only in [2, 5, 11, 12, 14] {
            let (no, msg, m) = err(&format!(r#"{{"msgid":{server_only}}}"#));
            assert_eq!((no, m), (errno::UNKNOWN_MSGID, Some(server_only)));
            assert!(
                msg.starts_with(&format!("unknown msgid {server_only} (")),
                "{msg}"
            );
        }
    }

    #[test]
    fn field_errors() {
        let cases: &[(&str, i64, &str)] = &[
            (
                r#"{"msgid":1,"password":"p"}"#,
                errno::MISSING_FIELD,
                "missing field \"id\"",
            ),
            (
                r#"{"id":1,"msgid":1}"#,
                errno::MISSING_FIELD,
                "missing field \"password\"",
            ),
            (
                r#"{"id":"1","msgid":1,"password":"p"}"#,
                errno::BAD_FIELD,
                "field \"id\" must be an integer",
            ),
            (
                r#"{"id":1.0,"msgid":1,"password":"p"}"#,
                errno::BAD_FIELD,
                "field \"id\" must be an integer",
            ),
            (
                r#"{"id":0,"msgid":3}"#,
                errno::BAD_FIELD,
                "field \"id\" must be an integer from 1 to 9223372036854775807",
            ),
            (
                r#"{"id":-4,"msgid":3}"#,
                errno::BAD_FIELD,
                "field \"id\" must be an integer from 1 to 9223372036854775807",
            ),
            (
                r#"{"id":9223372036854775808,"msgid":3}"#,
                errno::BAD_FIELD,
                "field \"id\" must be an integer from 1 to 9223372036854775807",
            ),
            (
                r#"{"id":1,"msgid":1,"password":7}"#,
                errno::BAD_FIELD,
                "field \"password\" must be a string of at most 256 bytes",
            ),
            (
                r#"{"msgid":4,"name":"","password":"p"}"#,
                errno::BAD_FIELD,
                "field \"name\" must be a non-empty string of at most 50 bytes",
            ),
            (
                r#"{"msgid":4,"name":"n","password":""}"#,
                errno::BAD_FIELD,
                "field \"password\" must be a non-empty string of at most 256 bytes",
            ),
            (
                r#"{"msgid":4,"password":"p"}"#,
                errno::MISSING_FIELD,
                "missing field \"name\"",
            ),
            (
                r#"{"id":1,"msgid":7}"#,
                errno::MISSING_FIELD,
                "missing field \"friendid\"",
            ),
            (
                r#"{"groupname":null,"id":1,"msgid":8}"#,
                errno::BAD_FIELD,
                "field \"groupname\" must be a non-empty string of at most 50 bytes",
            ),
            (
                r#"{"groupdesc":1,"groupname":"g","id":1,"msgid":8}"#,
                errno::BAD_FIELD,
                "field \"groupdesc\" must be a string of at most 200 bytes",
            ),
            (
                r#"{"groupid":true,"id":1,"msgid":9}"#,
                errno::BAD_FIELD,
                "field \"groupid\" must be an integer",
            ),
            (
                r#"{"groupid":1,"id":1,"msgid":10}"#,
                errno::MISSING_FIELD,
                "missing field \"msg\"",
            ),
            (
                r#"{"groupid":1,"id":1,"msg":[],"msgid":10}"#,
                errno::BAD_FIELD,
                "field \"msg\" must be a string",
            ),
            (
                r#"{"ext":2,"msgid":13}"#,
                errno::BAD_FIELD,
                "field \"ext\" must be 0, 1, false or true",
            ),
        ];
        for (input, no, msg) in cases {
            let (n, m, id) = err(input);
            assert_eq!((n, m.as_str()), (*no, *msg), "{input}");
            assert!(id.is_some(), "{input}");
        }
        // Length limits are in bytes: 50 ASCII bytes pass, 17 three-byte characters do not.
        let ok = format!(
            r#"{{"msgid":4,"name":"{}","password":"p"}}"#,
            "a".repeat(50)
        );
        assert!(parse(&ok).is_ok());
        let long = format!(
            r#"{{"msgid":4,"name":"{}","password":"p"}}"#,
            "中".repeat(17)
        );
        assert_eq!(err(&long).0, errno::BAD_FIELD);
    }

    #[test]
    fn ext_flag() {
        let ext = |s: &str| parse(s).unwrap().ext;
        assert!(!ext(r#"{"msgid":13}"#));
        assert!(ext(r#"{"ext":1,"msgid":13}"#));
        assert!(ext(r#"{"ext":true,"msgid":13}"#));
        assert!(!ext(r#"{"ext":0,"msgid":13}"#));
        assert!(!ext(r#"{"ext":false,"msgid":13}"#));
        assert!(ext(r#"{"ext":1,"id":1,"msgid":1,"password":"p"}"#));
    }

    #[test]
    fn unicode_and_quotes_round_trip() {
        let s = "{\"groupid\":1,\"id\":2,\"msg\":\"你好 \\\"q\\\" }{ 😀 \\\\ \\n\\u0001\",\"msgid\":10}";
        let Request::GroupChat { msg, frame, .. } = req(s) else {
            panic!()
        };
        assert_eq!(msg, "你好 \"q\" }{ 😀 \\ \n\u{1}");
        let out = encode(&delivery_frame(frame, "名字", "2024-01-01 00:00:00"));
        let out = std::str::from_utf8(&out[..out.len() - 1]).unwrap();
        // UTF-8 unescaped, control characters escaped, keys sorted.
        assert_eq!(
            out,
            "{\"groupid\":1,\"id\":2,\"msg\":\"你好 \\\"q\\\" }{ 😀 \\\\ \\n\\u0001\",\"msgid\":10,\
             \"name\":\"名字\",\"time\":\"2024-01-01 00:00:00\"}"
        );
    }

    #[test]
    fn delivery_frame_overwrites_name_keeps_time_drops_ext() {
        let Request::OneChat { frame, .. } =
            req(r#"{"ext":1,"id":1,"msg":"m","msgid":6,"name":"fake","time":"t0","to":2}"#)
        else {
            panic!()
        };
        assert_eq!(
            delivery_frame(frame, "real", "t1").to_string(),
            r#"{"id":1,"msg":"m","msgid":6,"name":"real","time":"t0","to":2}"#
        );
    }

    #[test]
    fn server_side_error_constructors() {
        assert_eq!(ProtocolError::not_logged_in(6).errno, errno::NOT_LOGGED_IN);
        let e = ProtocolError::not_your_id(6, 5, 4);
        assert_eq!((e.errno, e.msgid), (errno::NOT_YOUR_ID, Some(6)));
        assert_eq!(
            ProtocolError::already_logged_in(3).msgid,
            Some(msgid::LOGIN)
        );
        assert_eq!(ProtocolError::frame_too_large(10).msgid, None);
        assert_eq!(
            ProtocolError::frame_too_large(10).errmsg,
            "frame exceeds the limit of 10 bytes"
        );
    }
}

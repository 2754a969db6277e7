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

use serde_json::{Map, Value};

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
    /// Ours, client → server: a page of a conversation's history (`peer` or `groupid`).
    pub const HISTORY: i64 = 23;
    /// Ours, server → client: the answer to [`HISTORY`].
    pub const HISTORY_ACK: i64 = 24;
    /// Ours, server → client: a friend logged in or out (to opted-in clients).
    pub const PRESENCE: i64 = 25;
    /// Ours, client → server: ask `friendid` to become a (mutual) friend.
    pub const FRIEND_REQUEST: i64 = 26;
    /// Ours, server → client: someone asked the user to become a friend.
    pub const FRIEND_REQUEST_NOTICE: i64 = 27;
    /// Ours, client → server: accept or decline `friendid`'s request.
    pub const FRIEND_ANSWER: i64 = 28;
    /// Ours, server → client: the user's friend request was accepted or declined.
    pub const FRIEND_ANSWER_NOTICE: i64 = 29;
    /// Ours, client → server: remove a friend (both directions).
    pub const DEL_FRIEND: i64 = 30;
    /// Ours, client → server: list the friend requests waiting for the user's answer.
    pub const FRIEND_REQUESTS: i64 = 31;
    /// Ours, server → client: the answer to [`FRIEND_REQUESTS`].
    pub const FRIEND_REQUESTS_ACK: i64 = 32;
    /// Ours, client → server: leave a group.
    pub const LEAVE_GROUP: i64 = 33;
    /// Ours, client → server: the group's creator removes a member.
    pub const REMOVE_MEMBER: i64 = 34;
    /// Ours, client → server: a group's name, description and members.
    pub const GROUP_INFO: i64 = 35;
    /// Ours, server → client: the answer to [`GROUP_INFO`].
    pub const GROUP_INFO_ACK: i64 = 36;
    /// Ours, server → client: the user was removed from a group by its creator.
    pub const GROUP_REMOVED_NOTICE: i64 = 37;
    /// Ours, client → server: ask for one's friends and groups (with live presence).
    pub const CONTACTS: i64 = 15;
    /// Ours, server → client: the answer to [`CONTACTS`], shaped as LOGIN_ACK's lists.
    pub const CONTACTS_ACK: i64 = 16;
    /// Ours, client → server (ext only): log in again with a resume token.
    pub const RESUME: i64 = 17;
    /// Ours, server → client: the answer to [`RESUME`] (a LOGIN_ACK's shape).
    pub const RESUME_ACK: i64 = 18;
    /// Ours, client → server (acking sessions): every chat frame up to `seq` was
    /// received. No reply.
    pub const SEQ_ACK: i64 = 19;

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
            HISTORY => "HISTORY",
            HISTORY_ACK => "HISTORY_ACK",
            PRESENCE => "PRESENCE",
            FRIEND_REQUEST => "FRIEND_REQUEST",
            FRIEND_REQUEST_NOTICE => "FRIEND_REQUEST_NOTICE",
            FRIEND_ANSWER => "FRIEND_ANSWER",
            FRIEND_ANSWER_NOTICE => "FRIEND_ANSWER_NOTICE",
            DEL_FRIEND => "DEL_FRIEND",
            FRIEND_REQUESTS => "FRIEND_REQUESTS",
            FRIEND_REQUESTS_ACK => "FRIEND_REQUESTS_ACK",
            LEAVE_GROUP => "LEAVE_GROUP",
            REMOVE_MEMBER => "REMOVE_MEMBER",
            GROUP_INFO => "GROUP_INFO",
            GROUP_INFO_ACK => "GROUP_INFO_ACK",
            GROUP_REMOVED_NOTICE => "GROUP_REMOVED_NOTICE",
            CONTACTS => "CONTACTS",
            CONTACTS_ACK => "CONTACTS_ACK",
            RESUME => "RESUME",
            RESUME_ACK => "RESUME_ACK",
            SEQ_ACK => "SEQ_ACK",
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
    /// LOGIN of an account locked after too many failed attempts (a LOGIN_ACK with
    /// `retryafter`, to opted-in clients; legacy clients get errno 1).
    pub const LOGIN_THROTTLED: i64 = 114;
    /// RESUME with a token that is forged, expired, rotated or revoked (which one
    /// is never said).
    pub const BAD_TOKEN: i64 = 120;
    /// A newer session of the same user resumed; this connection is closed.
    pub const REPLACED: i64 = 121;
    /// RESUME without `"ext":1` (legacy clients cannot resume).
    pub const RESUME_NEEDS_EXT: i64 = 122;
    /// An operator disconnected the user (admin kick); the connection is closed.
    pub const KICKED: i64 = 135;

    /// The addressed user does not exist.
    pub const NO_SUCH_USER: i64 = 201;
    /// The addressed group does not exist.
    pub const NO_SUCH_GROUP: i64 = 202;
    /// The user or group name is already taken.
    pub const NAME_TAKEN: i64 = 203;
    /// ADD_FRIEND with one's own id.
    pub const SELF_FRIEND: i64 = 204;
    /// GROUP_CHAT to a group the sender is not a member of (also HISTORY, GROUP_INFO,
    /// LEAVE_GROUP and REMOVE_MEMBER by a non-member).
    pub const NOT_MEMBER: i64 = 205;
    /// The recipient is offline and what is stored for it is at its bound (in total,
    /// or this sender's share): the message was refused, not stored.
    pub const OFFLINE_FULL: i64 = 206;

    /// FRIEND_ANSWER with no request from that user waiting.
    pub const NO_SUCH_REQUEST: i64 = 210;
    /// FRIEND_REQUEST to a user who already is a mutual friend.
    pub const ALREADY_FRIENDS: i64 = 211;
    /// DEL_FRIEND of a user who is not a friend.
    pub const NOT_FRIENDS: i64 = 212;
    /// REMOVE_MEMBER by a member who is not the group's creator.
    pub const NOT_CREATOR: i64 = 213;
    /// REMOVE_MEMBER of a user who is not in the group.
    pub const NOT_IN_GROUP: i64 = 214;
    /// REMOVE_MEMBER of oneself (the creator leaves with LEAVE_GROUP instead).
    pub const REMOVE_SELF: i64 = 215;
}

/// Legacy LOGIN_ACK errmsg for [`errno::INVALID_CREDENTIALS`]; the legacy client prints it.
pub const MSG_INVALID_CREDENTIALS: &str = "id or password is invalid!";
/// Legacy LOGIN_ACK errmsg for [`errno::ALREADY_ONLINE`]; the legacy client prints it.
pub const MSG_ALREADY_ONLINE: &str = "this account is using, input another!";

/// Longest user name in characters (`user.name varchar(50)`).
pub const NAME_MAX_CHARS: usize = 50;
/// Longest group name in characters (`allgroup.groupname varchar(50)`).
pub const GROUPNAME_MAX_CHARS: usize = 50;
/// Longest group description in characters (`allgroup.groupdesc varchar(200)`).
pub const GROUPDESC_MAX_CHARS: usize = 200;
/// Longest password in characters; bounds the cost of hashing attacker-chosen input.
pub const PASSWORD_MAX_CHARS: usize = 256;

/// Why `name` cannot be a user or group name (REG, CREATE_GROUP), completing
/// `field "name" …`; `None` when it can. A name is not blank (nothing but white space
/// and characters that show as nothing, [`shows_as_nothing`]), neither begins nor
/// ends with whitespace (any Unicode white space) or a character that shows as
/// nothing (but a variation selector, which ends many emoji), and holds no control
/// character (U+0000–U+001F, U+007F–U+009F: tabs and newlines among them), no line
/// or paragraph separator (U+2028, U+2029) and no direction control
/// ([`direction_control`]: one reverses how the rest of a name shows). Spaces inside
/// are fine (`Ann Lee`), and so are joiners inside (the emoji `👨‍👩‍👧`).
///
/// Why the ends: a name that differs from another only by spaces at its end is the
/// same name on MySQL (`utf8mb4_bin` compares with PAD SPACE) and another on SQLite,
/// and names that differ only by spaces at either end look the same to users. With
/// no such name stored, uniqueness is exact (case-sensitive, byte for byte) on both
/// stores. The length (1 to 50 characters) is checked apart.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name
        .chars()
        .all(|c| c.is_whitespace() || shows_as_nothing(c))
    {
        return Some("must not be blank");
    }
    let edge = |c: char| c.is_whitespace() || shows_as_nothing(c);
    // A variation selector may end a name after what it changes the look of (`❤️`),
    // not after a letter or a digit, which looks the same with it as without.
    // A subdivision flag's tags show as the flag.
    let mut back = name.chars().rev();
    let ends_badly = !ends_with_tag_flag(name)
        && match (back.next(), back.next()) {
            (Some(vs), Some(before)) if is_variation_selector(vs) => {
                edge(before) || before.is_alphanumeric()
            }
            (Some(last), _) => edge(last),
            (None, _) => false,
        };
    if name.starts_with(edge) || ends_badly {
        return Some("must not begin or end with whitespace");
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
    {
        return Some("must not contain control characters or line breaks");
    }
    if name.chars().any(direction_control) {
        return Some("must not contain direction controls");
    }
    None
}

/// Characters a terminal or a browser shows as nothing: Unicode's default-ignorable
/// code points (zero-width spaces, joiners and marks, the word joiner, invisible
/// operators and the deprecated format characters after them, the byte order mark,
/// the soft hyphen, Hangul fillers, Khmer inherent vowels, Mongolian variation
/// selectors, shorthand format controls, musical formatting, tags, variation
/// selectors and their supplement), the interlinear annotation controls and the blank
/// Braille pattern. A name of only these looks empty, and one with them at an end
/// looks like another name.
pub fn shows_as_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{115f}'
            | '\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2060}'..='\u{206f}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fffb}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    ) || is_variation_selector(c)
}

/// Whether `name` ends with a subdivision flag (🏴 England, Scotland, Wales): the
/// black flag U+1F3F4, tag characters U+E0020–U+E007E, the cancel tag U+E007F. Its
/// tags show as the flag, not as nothing.
fn ends_with_tag_flag(name: &str) -> bool {
    let Some(rest) = name.strip_suffix('\u{e007f}') else {
        return false;
    };
    let head = rest.trim_end_matches(|c| ('\u{e0020}'..='\u{e007e}').contains(&c));
    head.len() < rest.len() && head.ends_with('\u{1f3f4}')
}

/// Variation selectors (U+FE00–U+FE0F): they choose how the character before them
/// shows (`❤️` ends with U+FE0F).
fn is_variation_selector(c: char) -> bool {
    matches!(c, '\u{fe00}'..='\u{fe0f}')
}

/// Bidirectional controls (embeddings, overrides, isolates, marks): they reorder how
/// the text around them shows, so that a name can read as another.
pub fn direction_control(c: char) -> bool {
    matches!(
        c,
        '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

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
        /// The plaintext password, at most [`PASSWORD_MAX_CHARS`].
        password: String,
    },
    /// LOGINOUT (3).
    Logout {
        /// The user logging out; must be the connection's user.
        id: i64,
    },
    /// REG (4).
    Reg {
        /// The new user's name, 1..=[`NAME_MAX_CHARS`] characters, a valid name
        /// ([`name_problem`]).
        name: String,
        /// The new password, 1..=[`PASSWORD_MAX_CHARS`] characters.
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
        /// The sender's own id for this message (`cid`), if it wants an ACK on success.
        cid: Option<i64>,
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
        /// 1..=[`GROUPNAME_MAX_CHARS`] characters, a valid name ([`name_problem`]).
        groupname: String,
        /// 0..=[`GROUPDESC_MAX_CHARS`] characters; `""` when absent.
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
        /// The sender's own id for this message (`cid`), if it wants an ACK on success.
        cid: Option<i64>,
        /// The whole request object, forwarded after [`delivery_frame`].
        frame: Map<String, Value>,
    },
    /// PING (13); needs no login and no fields.
    Ping,
    /// One of the history, friends and groups requests (msgids 23–37, see [`Social`]).
    Social {
        /// The user the request acts as.
        id: i64,
        /// What is asked.
        req: Social,
    },
    /// CONTACTS (15): the user's friends and groups, as LOGIN_ACK lists them.
    Contacts {
        /// The asking user.
        id: i64,
    },
    /// RESUME (17), ext only: log in as `id` with the token of an earlier session.
    Resume {
        /// The user id to log in as.
        id: i64,
        /// The resume token the last LOGIN_ACK or RESUME_ACK gave.
        token: String,
    },
    /// SEQ_ACK (19): the client received every chat frame up to `seq` (handled on
    /// the IO loop; ignored on a connection that does not ack).
    SeqAck {
        /// The seq of the last chat frame received.
        seq: u64,
    },
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
            Request::Social { req, .. } => req.msgid(),
            Request::Contacts { .. } => msgid::CONTACTS,
            Request::Resume { .. } => msgid::RESUME,
            Request::SeqAck { .. } => msgid::SEQ_ACK,
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
            | Request::GroupChat { id, .. }
            | Request::Social { id, .. }
            | Request::Contacts { id } => Some(*id),
            Request::Login { .. }
            | Request::Reg { .. }
            | Request::Ping
            | Request::Resume { .. }
            | Request::SeqAck { .. } => None,
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
    /// Acknowledged delivery asked for (protocol.md §12): `Some(last seq seen)` on
    /// an ext LOGIN with `"acks":1` (0) or a RESUME with `"lastseq"`.
    pub acks: Option<u64>,
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
    parse_request_on(v, false)
}

/// [`parse_request`] on a connection that is extended from the start (`ext_conn`:
/// WebSocket, protocol.md §13): every request counts as carrying `"ext":1`, so a
/// RESUME needs no field and a LOGIN's `"acks":1` holds without it.
pub fn parse_request_on(v: Value, ext_conn: bool) -> Result<Parsed, ProtocolError> {
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
    // The msgid is judged before `ext` and the fields, as documented above.
    if !REQUEST_MSGIDS.contains(&msgid) && !social::SOCIAL_MSGIDS.contains(&msgid) {
        return Err(unknown_msgid(msgid));
    }
    let f = Fields { obj: &obj, msgid };
    let ext = f.ext()? || ext_conn;
    let acks = match msgid {
        msgid::LOGIN if ext && f.flag("acks")? => Some(0),
        msgid::RESUME => f.opt_seq("lastseq")?,
        _ => None,
    };
    let req = match msgid {
        msgid::LOGIN => Request::Login {
            id: f.id("id")?,
            password: f.string("password", 0, PASSWORD_MAX_CHARS)?,
        },
        msgid::LOGINOUT => Request::Logout { id: f.id("id")? },
        msgid::REG => Request::Reg {
            name: f.name("name", NAME_MAX_CHARS)?,
            password: f.string("password", 1, PASSWORD_MAX_CHARS)?,
        },
        msgid::ONE_CHAT => {
            let id = f.id("id")?;
            let toid = if f.obj.contains_key("toid") || !f.obj.contains_key("to") {
                f.id("toid")?
            } else {
                f.id("to")?
            };
            let msg = f.string("msg", 0, usize::MAX)?;
            let cid = f.chat_extras()?;
            Request::OneChat {
                id,
                toid,
                msg,
                cid,
                frame: obj,
            }
        }
        msgid::ADD_FRIEND => Request::AddFriend {
            id: f.id("id")?,
            friendid: f.id("friendid")?,
        },
        msgid::CREATE_GROUP => Request::CreateGroup {
            id: f.id("id")?,
            groupname: f.name("groupname", GROUPNAME_MAX_CHARS)?,
            groupdesc: f
                .opt_string("groupdesc", 0, GROUPDESC_MAX_CHARS)?
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
            let cid = f.chat_extras()?;
            Request::GroupChat {
                id,
                groupid,
                msg,
                cid,
                frame: obj,
            }
        }
        msgid::PING => Request::Ping,
        other if social::SOCIAL_MSGIDS.contains(&other) => Request::Social {
            id: f.id("id")?,
            req: social::parse(&f)?,
        },
        msgid::CONTACTS => Request::Contacts { id: f.id("id")? },
        msgid::RESUME if !ext => {
            return Err(
                ProtocolError::new(errno::RESUME_NEEDS_EXT, "RESUME needs \"ext\":1")
                    .with_msgid(msgid),
            )
        }
        msgid::RESUME => Request::Resume {
            id: f.id("id")?,
            token: f.string("token", 1, TOKEN_MAX_CHARS)?,
        },
        msgid::SEQ_ACK => Request::SeqAck {
            seq: f.opt_seq("seq")?.ok_or_else(|| f.missing("seq"))?,
        },
        other => return Err(unknown_msgid(other)),
    };
    Ok(Parsed {
        req,
        ext,
        msgid,
        acks,
    })
}

/// The msgids a client may send.
const REQUEST_MSGIDS: [i64; 12] = [
    msgid::LOGIN,
    msgid::LOGINOUT,
    msgid::REG,
    msgid::ONE_CHAT,
    msgid::ADD_FRIEND,
    msgid::CREATE_GROUP,
    msgid::ADD_GROUP,
    msgid::GROUP_CHAT,
    msgid::PING,
    msgid::CONTACTS,
    msgid::RESUME,
    msgid::SEQ_ACK,
];

/// Longest resume token accepted (ours are 64 hex characters).
pub const TOKEN_MAX_CHARS: usize = 128;

/// [`errno::UNKNOWN_MSGID`] for `id`, naming a server-only msgid as such.
fn unknown_msgid(id: i64) -> ProtocolError {
    let hint = match msgid::name(id) {
        Some(name) => format!(" ({name} is sent by the server only)"),
        None => String::new(),
    };
    ProtocolError::new(errno::UNKNOWN_MSGID, format!("unknown msgid {id}{hint}")).with_msgid(id)
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

    /// A required string of `min..=max` characters.
    fn string(&self, key: &str, min: usize, max: usize) -> Result<String, ProtocolError> {
        self.opt_string(key, min, max)?
            .ok_or_else(|| self.missing(key))
    }

    /// A required user or group name: a string of `1..=max` characters that
    /// [`name_problem`] finds nothing wrong with.
    fn name(&self, key: &str, max: usize) -> Result<String, ProtocolError> {
        let s = self.string(key, 1, max)?;
        match name_problem(&s) {
            None => Ok(s),
            Some(why) => Err(self.bad(format!("field \"{key}\" {why}"))),
        }
    }

    /// An optional string of `min..=max` characters; `None` when absent.
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
            Some(s) if (min..=max).contains(&s.chars().count()) => Ok(Some(s.to_owned())),
            _ => Err(self.bad(describe_string(key, min, max))),
        }
    }

    /// An optional sequence number: a JSON integer in `0..=2^53` (what a browser
    /// reads exactly).
    fn opt_seq(&self, key: &str) -> Result<Option<u64>, ProtocolError> {
        let Some(v) = self.obj.get(key) else {
            return Ok(None);
        };
        match v.as_u64() {
            Some(n) if n <= 1 << 53 && !v.is_f64() => Ok(Some(n)),
            _ => Err(self.bad(format!("field \"{key}\" must be an integer from 0 to 2^53"))),
        }
    }

    /// `ext`: absent, `0`, `1`, `false` or `true`.
    fn ext(&self) -> Result<bool, ProtocolError> {
        self.flag("ext")
    }

    /// A flag: absent, `0`, `1`, `false` or `true`.
    fn flag(&self, key: &str) -> Result<bool, ProtocolError> {
        match self.obj.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) if v.as_u64() == Some(0) => Ok(false),
            Some(v) if v.as_u64() == Some(1) => Ok(true),
            Some(_) => Err(self.bad(format!("field \"{key}\" must be 0, 1, false or true"))),
        }
    }

    /// The optional `name` and `time` of a chat frame must be strings when present: the legacy
    /// client reads both as strings unconditionally when it receives the frame. Returns the
    /// optional `cid`: a JSON integer in `0..=i64::MAX` (protocol.md §4).
    fn chat_extras(&self) -> Result<Option<i64>, ProtocolError> {
        self.opt_string("name", 0, usize::MAX)?;
        self.opt_string("time", 0, usize::MAX)?;
        let Some(v) = self.obj.get("cid") else {
            return Ok(None);
        };
        match v.as_i64() {
            Some(cid) if cid >= 0 && !v.is_f64() => Ok(Some(cid)),
            _ => Err(self.bad(format!(
                "field \"cid\" must be an integer from 0 to {}",
                i64::MAX
            ))),
        }
    }
}

/// The errmsg for a string field that is mistyped or out of bounds.
fn describe_string(key: &str, min: usize, max: usize) -> String {
    match (min, max) {
        (0, usize::MAX) => format!("field \"{key}\" must be a string"),
        (0, max) => format!("field \"{key}\" must be a string of at most {max} characters"),
        (_, usize::MAX) => format!("field \"{key}\" must be a non-empty string"),
        (1, max) => {
            format!("field \"{key}\" must be a non-empty string of at most {max} characters")
        }
        (min, max) => format!("field \"{key}\" must be a string of {min} to {max} characters"),
    }
}

mod fast_chat;
mod replies;
mod social;

pub use fast_chat::{parse_fast_chat, FastChat};
pub use replies::*;
pub use social::*;

#[cfg(test)]
mod tests;

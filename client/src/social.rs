//! The client side of history, presence, friend requests and groups (protocol.md §10):
//! the commands that send those requests, and the lines printed for the server's frames.

use chat::protocol::msgid;
use serde_json::{json, Value};

use crate::commands::parse_id;
use crate::ui;

/// The commands of this module with their descriptions, listed by `help` in
/// interactive mode after the legacy ones.
pub const COMMANDS: &[(&str, &str)] = &[
    ("history", "聊天记录，格式history:friendid[:n]"),
    ("ghistory", "群聊记录，格式ghistory:groupid[:n]"),
    ("reqfriend", "请求加为好友（双向），格式reqfriend:friendid"),
    ("accept", "接受好友请求，格式accept:friendid"),
    ("decline", "拒绝好友请求，格式decline:friendid"),
    ("requests", "待处理的好友请求，格式requests"),
    ("delfriend", "删除好友，格式delfriend:friendid"),
    ("groupinfo", "群组成员，格式groupinfo:groupid"),
    ("leavegroup", "退出群组，格式leavegroup:groupid"),
];

/// A command of this module, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocialCommand {
    /// `history:<id>[:n]` / `ghistory:<gid>[:n]`: the last `n` messages (default 20).
    History {
        /// `peer` or `groupid`.
        key: &'static str,
        /// The peer or group.
        id: i64,
        /// How many, 1..=100.
        n: i64,
    },
    /// `reqfriend:<id>`.
    Request(i64),
    /// `accept:<id>` / `decline:<id>`.
    Answer {
        /// Who asked.
        id: i64,
        /// Accept or decline.
        accept: bool,
    },
    /// `requests`.
    Requests,
    /// `delfriend:<id>`.
    DelFriend(i64),
    /// `groupinfo:<gid>`.
    GroupInfo(i64),
    /// `leavegroup:<gid>`.
    LeaveGroup(i64),
}

/// Parses a command of this module: `None` if `name` is none of them.
pub fn parse(name: &str, rest: Option<&str>) -> Option<Result<SocialCommand, String>> {
    let id = |what: &str, form: &str| -> Result<i64, String> {
        rest.and_then(parse_id)
            .ok_or_else(|| format!("invalid {what}, usage: {form}"))
    };
    Some(match name {
        "history" | "ghistory" => {
            let (key, form) = if name == "history" {
                ("peer", "history:<friendid>[:n]")
            } else {
                ("groupid", "ghistory:<groupid>[:n]")
            };
            let (idpart, npart) = match rest.map(|r| r.split_once(':')) {
                Some(Some((i, n))) => (Some(i), Some(n)),
                Some(None) => (rest, None),
                None => (None, None),
            };
            let Some(id) = idpart.and_then(parse_id) else {
                return Some(Err(format!("usage: {form}")));
            };
            let n = match npart.map(|n| n.trim().parse::<i64>()) {
                None => 20,
                Some(Ok(n)) if (1..=100).contains(&n) => n,
                Some(_) => return Some(Err(format!("n is 1 to 100, usage: {form}"))),
            };
            Ok(SocialCommand::History { key, id, n })
        }
        "reqfriend" => id("friendid", "reqfriend:<friendid>").map(SocialCommand::Request),
        "accept" | "decline" => {
            id("friendid", &format!("{name}:<friendid>")).map(|id| SocialCommand::Answer {
                id,
                accept: name == "accept",
            })
        }
        "requests" => Ok(SocialCommand::Requests),
        "delfriend" => id("friendid", "delfriend:<friendid>").map(SocialCommand::DelFriend),
        "groupinfo" => id("groupid", "groupinfo:<groupid>").map(SocialCommand::GroupInfo),
        "leavegroup" => id("groupid", "leavegroup:<groupid>").map(SocialCommand::LeaveGroup),
        _ => return None,
    })
}

impl SocialCommand {
    /// The request frame, sent by user `me`.
    pub fn request(&self, me: i64) -> Value {
        match self {
            SocialCommand::History { key, id, n } => {
                json!({"ext": 1, "id": me, "limit": n, "msgid": msgid::HISTORY, *key: id})
            }
            SocialCommand::Request(f) => {
                json!({"ext": 1, "friendid": f, "id": me, "msgid": msgid::FRIEND_REQUEST})
            }
            SocialCommand::Answer { id, accept } => json!({
                "accept": accept, "ext": 1, "friendid": id, "id": me,
                "msgid": msgid::FRIEND_ANSWER,
            }),
            SocialCommand::Requests => {
                json!({"ext": 1, "id": me, "msgid": msgid::FRIEND_REQUESTS})
            }
            SocialCommand::DelFriend(f) => {
                json!({"ext": 1, "friendid": f, "id": me, "msgid": msgid::DEL_FRIEND})
            }
            SocialCommand::GroupInfo(g) => {
                json!({"ext": 1, "groupid": g, "id": me, "msgid": msgid::GROUP_INFO})
            }
            SocialCommand::LeaveGroup(g) => {
                json!({"ext": 1, "groupid": g, "id": me, "msgid": msgid::LEAVE_GROUP})
            }
        }
    }
}

/// What to print for one of this module's server frames; `None` for other frames.
pub fn line(frame: &Value) -> Option<String> {
    let text = |k: &str| frame.get(k).and_then(Value::as_str).unwrap_or("");
    let int = |k: &str| frame.get(k).and_then(Value::as_i64).unwrap_or(0);
    Some(match frame.get("msgid").and_then(Value::as_i64)? {
        msgid::HISTORY_ACK => {
            let msgs = frame.get("msgs").and_then(Value::as_array)?;
            let mut s = match frame.get("groupid") {
                Some(g) => format!("history of group {g} ({} messages):\n", msgs.len()),
                None => format!("history with {} ({} messages):\n", int("peer"), msgs.len()),
            };
            // Newest first on the wire; printed oldest first, as a chat reads.
            for m in msgs.iter().rev() {
                let seq = m.get("seq").and_then(Value::as_i64).unwrap_or(0);
                s.push_str(&format!("#{seq} {}", ui::chat_line(m).unwrap_or_default()));
            }
            if frame.get("more") == Some(&Value::Bool(true)) {
                s.push_str("(older messages exist)\n");
            }
            s
        }
        msgid::PRESENCE => format!("[{}]{} is {}\n", int("id"), text("name"), text("state")),
        msgid::FRIEND_REQUEST_NOTICE => format!(
            "[{}]{} wants to be your friend (accept:{0} or decline:{0})\n",
            int("from"),
            text("name")
        ),
        msgid::FRIEND_ANSWER_NOTICE => {
            let what = if frame.get("accept") == Some(&Value::Bool(true)) {
                "accepted"
            } else {
                "declined"
            };
            format!(
                "[{}]{} {what} your friend request\n",
                int("from"),
                text("name")
            )
        }
        msgid::FRIEND_REQUESTS_ACK => {
            let list = frame.get("requests").and_then(Value::as_array)?;
            let mut s = format!("friend requests ({}):\n", list.len());
            for r in list {
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                s.push_str(&format!("{} {name}\n", r.get("id").unwrap_or(&Value::Null)));
            }
            s
        }
        msgid::GROUP_INFO_ACK => {
            let users = frame.get("users").and_then(Value::as_array)?;
            let mut s = format!(
                "[{}]{} {}\n",
                int("groupid"),
                text("groupname"),
                text("groupdesc")
            );
            for u in users {
                let f = |k: &str| u.get(k).and_then(Value::as_str).unwrap_or("");
                let id = u.get("id").and_then(Value::as_i64).unwrap_or(0);
                s.push_str(&format!(
                    "{id} {} {} {}\n",
                    f("name"),
                    f("state"),
                    f("role")
                ));
            }
            s
        }
        msgid::GROUP_REMOVED_NOTICE => format!(
            "you were removed from group {} by {}\n",
            int("groupid"),
            int("by")
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_builds_requests() {
        let h = parse("history", Some("7:5")).unwrap().unwrap();
        assert_eq!(
            h.request(1).to_string(),
            r#"{"ext":1,"id":1,"limit":5,"msgid":23,"peer":7}"#
        );
        let g = parse("ghistory", Some("3")).unwrap().unwrap();
        assert_eq!(
            g.request(1).to_string(),
            r#"{"ext":1,"groupid":3,"id":1,"limit":20,"msgid":23}"#
        );
        assert!(parse("history", Some("7:500")).unwrap().is_err());
        assert!(parse("history", None).unwrap().is_err());
        let a = parse("decline", Some("4")).unwrap().unwrap();
        assert_eq!(
            a.request(1).to_string(),
            r#"{"accept":false,"ext":1,"friendid":4,"id":1,"msgid":28}"#
        );
        assert_eq!(
            parse("leavegroup", Some("x")).unwrap().unwrap_err(),
            "invalid groupid, usage: leavegroup:<groupid>"
        );
        assert_eq!(parse("chat", Some("1:x")), None);
    }

    #[test]
    fn lines_for_frames() {
        let p = json!({"id": 3, "msgid": 25, "name": "al", "state": "online"});
        assert_eq!(line(&p).unwrap(), "[3]al is online\n");
        let h = json!({"errno": 0, "more": false, "msgid": 24, "peer": 3, "msgs": [
            {"id": 3, "msg": "b", "msgid": 6, "name": "al", "seq": 2, "time": "T"},
            {"id": 1, "msg": "a", "msgid": 6, "name": "me", "seq": 1, "time": "T"},
        ]});
        assert_eq!(
            line(&h).unwrap(),
            "history with 3 (2 messages):\n#1 T [1]me said: a\n#2 T [3]al said: b\n"
        );
        assert_eq!(line(&json!({"msgid": 6})), None);
    }
}

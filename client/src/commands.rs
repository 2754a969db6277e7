//! Commands: parsing what the user types, and the request frames the commands send.
//!
//! After login a command is the text before the first `:`; its arguments are split on the
//! next colon at most, so a message or a group description may contain `:` itself.
//! Every request carries `"ext":1`, our opt-in to extended replies, which a legacy server
//! ignores.

use chat::protocol::msgid;
use serde_json::{json, Value};

use crate::session::User;

/// A chat-menu command, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `help`: print the command list.
    Help,
    /// `chat:<friendid>:<message>`.
    Chat {
        /// The recipient.
        to: i64,
        /// The message, colons included.
        msg: String,
    },
    /// `addfriend:<friendid>`.
    AddFriend(i64),
    /// `creategroup:<name>:<desc>` (the description may be left out).
    CreateGroup {
        /// The group name.
        name: String,
        /// The description, colons included.
        desc: String,
    },
    /// `addgroup:<groupid>`.
    AddGroup(i64),
    /// `groupchat:<groupid>:<message>`.
    GroupChat {
        /// The group.
        group: i64,
        /// The message, colons included.
        msg: String,
    },
    /// `friends`: list the friends with their state (CONTACTS, msgid 15).
    Friends,
    /// `groups`: list the groups with their members (CONTACTS, msgid 15).
    Groups,
    /// `loginout`: log out, back to the top menu.
    Loginout,
    /// `quit`: log out and exit.
    Quit,
}

/// Parses one chat-menu line. `Ok(None)` for a blank line; `Err` holds the hint to print.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (name, rest) = match line.split_once(':') {
        Some((name, rest)) => (name.trim(), Some(rest)),
        None => (line.trim(), None),
    };
    let cmd = match name {
        "help" => Command::Help,
        "loginout" => Command::Loginout,
        "quit" => Command::Quit,
        "friends" => Command::Friends,
        "groups" => Command::Groups,
        "chat" => {
            let (to, msg) = id_and_text(rest, "friendid", "chat:<friendid>:<message>")?;
            Command::Chat {
                to,
                msg: non_empty(msg)?,
            }
        }
        "groupchat" => {
            let (group, msg) = id_and_text(rest, "groupid", "groupchat:<groupid>:<message>")?;
            Command::GroupChat {
                group,
                msg: non_empty(msg)?,
            }
        }
        "addfriend" => Command::AddFriend(id_only(rest, "friendid", "addfriend:<friendid>")?),
        "addgroup" => Command::AddGroup(id_only(rest, "groupid", "addgroup:<groupid>")?),
        "creategroup" => {
            let usage = "usage: creategroup:<groupname>:<groupdesc>";
            let rest = rest.ok_or(usage)?;
            let (name, desc) = rest.split_once(':').unwrap_or((rest, ""));
            if name.trim().is_empty() {
                return Err(format!("the group name is empty, {usage}"));
            }
            Command::CreateGroup {
                name: name.to_owned(),
                desc: desc.to_owned(),
            }
        }
        _ => return Err(crate::ui::INVALID_COMMAND.to_owned()),
    };
    Ok(Some(cmd))
}

/// A message with something in it; an empty (or all blank) one is refused here.
fn non_empty(msg: String) -> Result<String, String> {
    if msg.trim().is_empty() {
        return Err("the message is empty, nothing sent".to_owned());
    }
    Ok(msg)
}

/// Parses a positive id (a user or group id), allowing surrounding spaces.
pub fn parse_id(s: &str) -> Option<i64> {
    s.trim().parse::<i64>().ok().filter(|&id| id > 0)
}

fn id_only(rest: Option<&str>, what: &str, form: &str) -> Result<i64, String> {
    let rest = rest.ok_or_else(|| format!("usage: {form}"))?;
    parse_id(rest).ok_or_else(|| bad_id(what, rest, form))
}

fn id_and_text(rest: Option<&str>, what: &str, form: &str) -> Result<(i64, String), String> {
    let (id, text) = rest
        .and_then(|r| r.split_once(':'))
        .ok_or_else(|| format!("usage: {form}"))?;
    let id = parse_id(id).ok_or_else(|| bad_id(what, id, form))?;
    Ok((id, text.to_owned()))
}

fn bad_id(what: &str, got: &str, form: &str) -> String {
    format!("invalid {what} \"{}\", usage: {form}", got.trim())
}

/// The request frame for `cmd` sent by `me` at `time`; `None` for local commands. A chat
/// with a `cid` asks our server to confirm it (protocol.md §4).
pub fn request(cmd: &Command, me: &User, time: &str, cid: Option<i64>) -> Option<Value> {
    let mut frame = match cmd {
        Command::Help | Command::Loginout | Command::Quit => return None,
        Command::Friends | Command::Groups => contacts_request(me.id),
        // Both `toid` (what the original server reads) and `to` (what some copies read).
        Command::Chat { to, msg } => json!({
            "ext": 1, "id": me.id, "msg": msg, "msgid": msgid::ONE_CHAT,
            "name": me.name, "time": time, "to": to, "toid": to,
        }),
        Command::AddFriend(friend) => json!({
            "ext": 1, "friendid": friend, "id": me.id, "msgid": msgid::ADD_FRIEND,
        }),
        Command::CreateGroup { name, desc } => json!({
            "ext": 1, "groupdesc": desc, "groupname": name, "id": me.id,
            "msgid": msgid::CREATE_GROUP,
        }),
        Command::AddGroup(group) => json!({
            "ext": 1, "groupid": group, "id": me.id, "msgid": msgid::ADD_GROUP,
        }),
        Command::GroupChat { group, msg } => json!({
            "ext": 1, "groupid": group, "id": me.id, "msg": msg,
            "msgid": msgid::GROUP_CHAT, "name": me.name, "time": time,
        }),
    };
    if let (Some(cid), Command::Chat { .. } | Command::GroupChat { .. }) = (cid, cmd) {
        frame["cid"] = Value::from(cid);
    }
    Some(frame)
}

/// CONTACTS (15): the user's friends and groups.
pub fn contacts_request(id: i64) -> Value {
    json!({"ext": 1, "id": id, "msgid": msgid::CONTACTS})
}

/// LOGIN (1).
pub fn login_request(id: i64, password: &str) -> Value {
    json!({"ext": 1, "id": id, "msgid": msgid::LOGIN, "password": password})
}

/// REG (4).
pub fn reg_request(name: &str, password: &str) -> Value {
    json!({"ext": 1, "msgid": msgid::REG, "name": name, "password": password})
}

/// LOGINOUT (3).
pub fn logout_request(id: i64) -> Value {
    json!({"ext": 1, "id": id, "msgid": msgid::LOGINOUT})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(line: &str) -> Command {
        parse(line).unwrap().unwrap()
    }

    #[test]
    fn simple_commands() {
        assert_eq!(ok("help"), Command::Help);
        assert_eq!(ok(" help "), Command::Help);
        assert_eq!(ok("loginout"), Command::Loginout);
        assert_eq!(ok("quit"), Command::Quit);
        assert_eq!(parse("   "), Ok(None));
        assert_eq!(parse("hello"), Err("invalid command, type help".into()));
        assert_eq!(parse("bogus:1:2"), Err("invalid command, type help".into()));
    }

    #[test]
    fn messages_keep_their_colons() {
        assert_eq!(
            ok("chat:23:hi: there :)"),
            Command::Chat {
                to: 23,
                msg: "hi: there :)".into()
            }
        );
        assert_eq!(
            ok("groupchat: 4 :你好:x"),
            Command::GroupChat {
                group: 4,
                msg: "你好:x".into()
            }
        );
        assert_eq!(
            parse("chat:2:").unwrap_err(),
            "the message is empty, nothing sent"
        );
        assert!(parse("groupchat:2:  ").is_err());
        assert_eq!(ok("friends"), Command::Friends);
        assert_eq!(ok("groups"), Command::Groups);
        assert_eq!(
            ok("creategroup:g:a:b"),
            Command::CreateGroup {
                name: "g".into(),
                desc: "a:b".into()
            }
        );
        assert_eq!(
            ok("creategroup:g"),
            Command::CreateGroup {
                name: "g".into(),
                desc: String::new()
            }
        );
    }

    #[test]
    fn bad_arguments_give_hints() {
        assert_eq!(
            parse("chat:abc:hi").unwrap_err(),
            "invalid friendid \"abc\", usage: chat:<friendid>:<message>"
        );
        assert_eq!(
            parse("chat:5").unwrap_err(),
            "usage: chat:<friendid>:<message>"
        );
        assert_eq!(
            parse("addfriend:0").unwrap_err(),
            "invalid friendid \"0\", usage: addfriend:<friendid>"
        );
        assert_eq!(parse("addgroup").unwrap_err(), "usage: addgroup:<groupid>");
        assert!(parse("creategroup::d").unwrap_err().contains("empty"));
        assert_eq!(ok("addfriend: 7"), Command::AddFriend(7));
        assert_eq!(ok("addgroup:9"), Command::AddGroup(9));
    }

    #[test]
    fn request_frames() {
        let me = User {
            id: 1,
            name: "al".into(),
        };
        let chat = request(&ok("chat:2:a:b"), &me, "T", None).unwrap();
        assert_eq!(
            chat.to_string(),
            r#"{"ext":1,"id":1,"msg":"a:b","msgid":6,"name":"al","time":"T","to":2,"toid":2}"#
        );
        let g = request(&ok("groupchat:3:m"), &me, "T", Some(4)).unwrap();
        assert_eq!(
            g.to_string(),
            r#"{"cid":4,"ext":1,"groupid":3,"id":1,"msg":"m","msgid":10,"name":"al","time":"T"}"#
        );
        assert_eq!(request(&Command::Help, &me, "T", None), None);
        assert_eq!(
            request(&Command::Friends, &me, "T", Some(5))
                .unwrap()
                .to_string(),
            r#"{"ext":1,"id":1,"msgid":15}"#
        );
        assert_eq!(
            login_request(5, "p").to_string(),
            r#"{"ext":1,"id":5,"msgid":1,"password":"p"}"#
        );
        assert_eq!(
            logout_request(5).to_string(),
            r#"{"ext":1,"id":5,"msgid":3}"#
        );
    }
}

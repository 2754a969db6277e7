//! Ui: everything the client prints, in the legacy client's exact shapes (protocol.md §4b).
//!
//! The formatting functions are pure (they return the text) so they can be tested; [`emit`]
//! and [`error`] write it out and flush at once, because prompts end without a newline and
//! two threads print. In interactive mode [`emit`] goes through the line editor's printer,
//! which prints above the line being typed and redraws it.

use std::borrow::Cow;
use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};

use chat::protocol::{msgid, Friend, GroupInfo};
use serde_json::Value;

/// The top menu, without its prompt.
pub const TOP_MENU: &str = "========================\n\
                            1. login\n\
                            2. register\n\
                            3. quit\n\
                            ========================\n";

/// The top menu's prompt.
pub const CHOICE: &str = "choice:";
/// The login prompt for the user id.
pub const USERID: &str = "userid:";
/// The password prompt (login and register).
pub const PASSWORD: &str = "userpassword:";
/// The register prompt for the name.
pub const USERNAME: &str = "username:";
/// What a line break inside a message prints as: the break, then an indent that no
/// message line starts with.
pub const CONTINUATION: &str = "\n    | ";
/// What an unknown command gets.
pub const INVALID_COMMAND: &str = "invalid command, type help";

/// The commands of the chat menu with their descriptions, in the order `help` lists them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("help", "显示所有支持的命令，格式help"),
    ("chat", "一对一聊天，格式chat:friendid:message"),
    ("addfriend", "添加好友，格式addfriend:friendid"),
    (
        "creategroup",
        "创建群组，格式creategroup:groupname:groupdesc",
    ),
    ("addgroup", "加入群组，格式addgroup:groupid"),
    ("groupchat", "群聊，格式groupchat:groupid:message"),
    ("loginout", "注销，格式loginout"),
    ("quit", "注销并退出，格式quit"),
];

/// The commands only interactive mode lists in `help` (the scripted client keeps the
/// original's list byte for byte).
pub const EXTRA_COMMANDS: &[(&str, &str)] = &[
    ("friends", "好友列表及在线状态，格式friends"),
    ("groups", "群组及成员列表，格式groups"),
];

/// Prints a line above the line being edited (interactive mode).
pub type Printer = Box<dyn FnMut(String) + Send>;

/// Where [`emit`] writes once interactive mode set it up.
static PRINTER: OnceLock<Mutex<Printer>> = OnceLock::new();

/// Sends every later [`emit`] through `printer`.
pub fn set_printer(printer: Printer) {
    let _ = PRINTER.set(Mutex::new(printer));
}

/// `text` made safe to print on a terminal: every control character but the newline
/// and the tab is shown in caret notation (`^[` for ESC, `^M` for a carriage return,
/// `^?` for DEL), and the C1 controls (which some terminals obey as ESC sequences)
/// as U+FFFD. Whatever is printed comes from the network (another user's message or
/// name, the server's words), and ESC starts the sequences by which a terminal is
/// driven: moving the cursor, clearing or rewriting the screen, setting the title,
/// writing the clipboard (OSC 52). A bare carriage return would let a message print
/// over its own sender's name.
pub fn visible(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push(char::from(c as u8 + 0x40));
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' => out.push('\u{fffd}'),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Writes `text` to stdout ([`visible`]) and flushes. A closed stdout is ignored: the
/// chat goes on.
pub fn emit(text: &str) {
    let text = &*visible(text);
    if let Some(p) = PRINTER.get() {
        (p.lock().unwrap_or_else(PoisonError::into_inner))(text.to_owned());
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Writes `line` ([`visible`]) and a newline to stderr.
pub fn error(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{}", visible(line));
    let _ = err.flush();
}

/// The command list: `show command list >>>` and one `name : description` line each;
/// `extended` (interactive mode) adds [`EXTRA_COMMANDS`] and the history, friend
/// and group commands (`social::COMMANDS`).
pub fn help(extended: bool) -> String {
    let mut s = String::from("show command list >>>\n");
    let (extra, social): (&[_], &[_]) = if extended {
        (EXTRA_COMMANDS, crate::social::COMMANDS)
    } else {
        (&[], &[])
    };
    for (name, desc) in COMMANDS.iter().chain(extra).chain(social) {
        s.push_str(&format!("{name} : {desc}\n"));
    }
    s
}

/// The login banner: the user, the friend list, the group list with members.
pub fn banner(id: i64, name: &str, friends: &[Friend], groups: &[GroupInfo]) -> String {
    let mut s = String::new();
    s.push_str("======================login user======================\n");
    s.push_str(&format!("current login user => id:{id} name:{name}\n"));
    s.push_str(&friend_list(friends));
    s.push_str(&group_list(groups));
    s.push_str("======================================================\n");
    s
}

/// The banner's friend list: a rule, then `<id> <name> <online|offline>` per friend.
pub fn friend_list(friends: &[Friend]) -> String {
    let mut s = String::from("----------------------friend list---------------------\n");
    for f in friends {
        s.push_str(&format!("{} {} {}\n", f.id, f.name, state(f.online)));
    }
    s
}

/// The banner's group list: a rule, then each group and its members with state and role.
pub fn group_list(groups: &[GroupInfo]) -> String {
    let mut s = String::from("----------------------group list----------------------\n");
    for g in groups {
        s.push_str(&format!("{} {} {}\n", g.id, g.name, g.desc));
        for m in &g.members {
            s.push_str(&format!(
                "{} {} {} {}\n",
                m.id,
                m.name,
                state(m.online),
                m.role.as_str()
            ));
        }
    }
    s
}

fn state(online: bool) -> &'static str {
    if online {
        "online"
    } else {
        "offline"
    }
}

/// The line for a received chat frame: `<time> [<id>]<name> said: <msg>` for ONE_CHAT,
/// prefixed with `群消息[<groupid>]:` for GROUP_CHAT; `None` for other frames. Missing
/// fields print as empty (or 0) rather than dropping the message. A message of several
/// lines has its later lines indented ([`CONTINUATION`]): a line of its own cannot pass
/// for another message, with another sender's name.
pub fn chat_line(frame: &Value) -> Option<String> {
    let text = |k: &str| frame.get(k).and_then(Value::as_str).unwrap_or("");
    let int = |k: &str| frame.get(k).and_then(Value::as_i64).unwrap_or(0);
    let body = format!(
        "{} [{}]{} said: {}\n",
        text("time"),
        int("id"),
        text("name"),
        text("msg").replace('\n', CONTINUATION)
    );
    match frame.get("msgid").and_then(Value::as_i64)? {
        msgid::ONE_CHAT => Some(body),
        msgid::GROUP_CHAT => Some(format!("群消息[{}]:{body}", int("groupid"))),
        _ => None,
    }
}

/// The result line of a REG_ACK for `name`.
pub fn reg_line(name: &str, ack: &Value) -> String {
    let errno = ack.get("errno").and_then(Value::as_i64).unwrap_or(-1);
    if errno == 0 {
        let id = ack.get("id").and_then(Value::as_i64).unwrap_or(0);
        return format!("{name} register success, userid is {id}, do not forget it!\n");
    }
    match ack.get("errmsg").and_then(Value::as_str) {
        // Our server says why; anything but "taken" deserves its own words.
        Some(why) if !why.contains("taken") && !why.is_empty() => {
            format!("{name} register error: {why}\n")
        }
        _ => format!("{name} is already exist, register error!\n"),
    }
}

/// The line for one of our extended replies: an ERROR (msgid 11) or an ACK (msgid 12).
/// `None` when there is nothing worth saying (a successful LOGINOUT, an empty success).
pub fn reply_line(frame: &Value) -> Option<String> {
    let errno = frame.get("errno").and_then(Value::as_i64).unwrap_or(0);
    let errmsg = frame.get("errmsg").and_then(Value::as_str).unwrap_or("");
    let req = frame.get("reqmsgid").and_then(Value::as_i64);
    if errno == 0 && frame.get("msgid").and_then(Value::as_i64) == Some(msgid::ACK) {
        if frame.get("cid").is_some() {
            return Some(confirm_line(frame));
        }
        match req {
            Some(msgid::LOGINOUT) => return None,
            Some(msgid::CREATE_GROUP) => {
                if let Some(gid) = frame.get("groupid").and_then(Value::as_i64) {
                    return Some(format!("create group success, groupid is {gid}\n"));
                }
            }
            _ => {}
        }
        if errmsg.is_empty() {
            return None;
        }
    }
    if errmsg.is_empty() {
        return Some(format!("error {errno}\n"));
    }
    Some(format!("{errmsg}\n"))
}

/// The line confirming one of our chats (an ACK errno 0 with our `cid`): where it went.
fn confirm_line(ack: &Value) -> String {
    let int = |k: &str| ack.get(k).and_then(Value::as_i64).unwrap_or(0);
    let (live, stored) = (int("delivered"), int("stored"));
    if let Some(to) = ack.get("toid").and_then(Value::as_i64) {
        return if stored > 0 {
            format!("(message to {to} stored: delivered when {to} logs in)\n")
        } else {
            format!("(message to {to} delivered)\n")
        };
    }
    let group = int("groupid");
    format!("(message to group {group}: delivered to {live}, stored for {stored} offline)\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat::protocol::{Member, Role};
    use serde_json::json;

    #[test]
    fn menu_and_help_shapes() {
        assert!(TOP_MENU.starts_with(&format!("{}\n1. login\n", "=".repeat(24))));
        assert!(TOP_MENU.ends_with(&format!("3. quit\n{}\n", "=".repeat(24))));
        let h = help(false);
        assert!(h.starts_with("show command list >>>\n"));
        assert!(h.contains("\nchat : 一对一聊天，格式chat:friendid:message\n"));
        assert_eq!(h.lines().count(), COMMANDS.len() + 1);
        let ext = help(true);
        assert!(ext.starts_with(&h));
        assert!(ext.contains("\ngroups : 群组及成员列表，格式groups\n"));
        assert!(ext.contains("\nhistory : 聊天记录，格式history:friendid[:n]\n"));
        assert!(ext.ends_with("leavegroup : 退出群组，格式leavegroup:groupid\n"));
        assert_eq!(
            ext.lines().count(),
            h.lines().count() + EXTRA_COMMANDS.len() + crate::social::COMMANDS.len()
        );
    }

    #[test]
    fn banner_exact() {
        let friends = [Friend {
            id: 2,
            name: "bob".into(),
            online: true,
        }];
        let groups = [GroupInfo {
            id: 1,
            name: "g".into(),
            desc: "a group".into(),
            members: vec![Member {
                id: 1,
                name: "alice".into(),
                role: Role::Creator,
                online: false,
            }],
        }];
        let b = banner(1, "alice", &friends, &groups);
        let lines: Vec<&str> = b.lines().collect();
        assert_eq!(
            lines,
            [
                &format!("{}login user{}", "=".repeat(22), "=".repeat(22)),
                "current login user => id:1 name:alice",
                &format!("{}friend list{}", "-".repeat(22), "-".repeat(21)),
                "2 bob online",
                &format!("{}group list{}", "-".repeat(22), "-".repeat(22)),
                "1 g a group",
                "1 alice offline creator",
                &"=".repeat(54),
            ]
        );
    }

    /// Control characters are shown, not sent to the terminal; newlines, tabs and
    /// any other text pass as they are.
    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert!(matches!(visible("hi 你好 😀\tok\n"), Cow::Borrowed(_)));
        assert_eq!(
            visible("\u{1b}]52;c;aGk=\u{7}\u{1b}[2Jgone\rX\u{0}\u{7f}\u{9b}31m"),
            "^[]52;c;aGk=^G^[[2Jgone^MX^@^?\u{fffd}31m"
        );
    }

    #[test]
    fn chat_lines() {
        let one = json!({"id":1,"msg":"a:b","msgid":6,"name":"al","time":"t","toid":2});
        assert_eq!(chat_line(&one).unwrap(), "t [1]al said: a:b\n");
        let grp = json!({"groupid":3,"id":1,"msg":"hi","msgid":10,"name":"al","time":"t"});
        assert_eq!(chat_line(&grp).unwrap(), "群消息[3]:t [1]al said: hi\n");
        assert_eq!(chat_line(&json!({"msgid":14})), None);
        // A line of its own inside a message is indented, not a message of its own.
        let forged = json!({"id":1,"msg":"hi\n12:00 [9]admin said: send me your password","msgid":6,"name":"al","time":"t"});
        assert_eq!(
            chat_line(&forged).unwrap(),
            "t [1]al said: hi\n    | 12:00 [9]admin said: send me your password\n"
        );
    }

    #[test]
    fn reg_and_reply_lines() {
        assert_eq!(
            reg_line("al", &json!({"errno":0,"id":7,"msgid":5})),
            "al register success, userid is 7, do not forget it!\n"
        );
        let taken = "al is already exist, register error!\n";
        assert_eq!(reg_line("al", &json!({"errno":1,"msgid":5})), taken);
        assert_eq!(
            reg_line(
                "al",
                &json!({"errmsg":"name is already taken","errno":1,"msgid":5})
            ),
            taken
        );
        assert_eq!(
            reg_line("al", &json!({"errmsg":"server down","errno":1,"msgid":5})),
            "al register error: server down\n"
        );
        let ack = |req: i64, errno: i64, msg: &str| json!({"errmsg":msg,"errno":errno,"msgid":12,"reqmsgid":req,"groupid":7});
        assert_eq!(
            reply_line(&ack(8, 0, "group 7 created")).unwrap(),
            "create group success, groupid is 7\n"
        );
        assert_eq!(reply_line(&ack(3, 0, "logged out")), None);
        assert_eq!(
            reply_line(&ack(9, 202, "no such group 9")).unwrap(),
            "no such group 9\n"
        );
        let sent = json!({"cid":1,"delivered":1,"errmsg":"delivered","errno":0,"msgid":12,"reqmsgid":6,"stored":0,"toid":2});
        assert_eq!(reply_line(&sent).unwrap(), "(message to 2 delivered)\n");
        let kept =
            json!({"cid":2,"delivered":0,"errno":0,"msgid":12,"reqmsgid":6,"stored":1,"toid":2});
        assert_eq!(
            reply_line(&kept).unwrap(),
            "(message to 2 stored: delivered when 2 logs in)\n"
        );
        let group = json!({"cid":3,"delivered":2,"errno":0,"groupid":5,"msgid":12,"reqmsgid":10,"stored":1});
        assert_eq!(
            reply_line(&group).unwrap(),
            "(message to group 5: delivered to 2, stored for 1 offline)\n"
        );
        let err = json!({"errmsg":"not logged in","errno":107,"msgid":11,"reqmsgid":6});
        assert_eq!(reply_line(&err).unwrap(), "not logged in\n");
        assert_eq!(
            reply_line(&json!({"errno":5,"msgid":11})).unwrap(),
            "error 5\n"
        );
    }
}

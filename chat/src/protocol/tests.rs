//! Unit tests of the protocol: exact legacy bytes, parsing, errors.

use super::*;
use serde_json::json;

fn text(v: &Value) -> String {
    v.to_string()
}

pub(super) fn parse(s: &str) -> Result<Parsed, ProtocolError> {
    parse_request(serde_json::from_str(s).unwrap())
}

pub(super) fn req(s: &str) -> Request {
    parse(s).unwrap().req
}

/// The errno, errmsg and msgid of the error `s` gets.
pub(super) fn err(s: &str) -> (i64, String, Option<i64>) {
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
        ..
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
        ..
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
    // Every request that acts as a user names it; dispatch refuses any other id.
    for acting in [
        r#"{"id":22,"msgid":3}"#,
        r#"{"id":22,"msg":"m","msgid":6,"name":"n","time":"t","toid":23}"#,
        r#"{"friendid":23,"id":22,"msgid":7}"#,
        r#"{"groupdesc":"","groupname":"g","id":22,"msgid":8}"#,
        r#"{"groupid":5,"id":22,"msgid":9}"#,
        r#"{"groupid":5,"id":22,"msg":"m","msgid":10,"name":"n","time":"t"}"#,
    ] {
        assert_eq!(req(acting).acting_id(), Some(22), "{acting}");
    }
    assert_eq!(
        req(r#"{"msgid":4,"name":"n","password":"p"}"#).acting_id(),
        None
    );
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
    for server_only in [2, 5, 11, 12, 14, 16] {
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
            "field \"password\" must be a string of at most 256 characters",
        ),
        (
            r#"{"msgid":4,"name":"","password":"p"}"#,
            errno::BAD_FIELD,
            "field \"name\" must be a non-empty string of at most 50 characters",
        ),
        (
            r#"{"msgid":4,"name":"n","password":""}"#,
            errno::BAD_FIELD,
            "field \"password\" must be a non-empty string of at most 256 characters",
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
            "field \"groupname\" must be a non-empty string of at most 50 characters",
        ),
        (
            r#"{"groupdesc":1,"groupname":"g","id":1,"msgid":8}"#,
            errno::BAD_FIELD,
            "field \"groupdesc\" must be a string of at most 200 characters",
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
    // Length limits are in characters, as the schema's varchar(50) counts them:
    // 50 Chinese characters (150 bytes) pass, 51 do not.
    let name = |n: usize| {
        format!(
            r#"{{"msgid":4,"name":"{}","password":"p"}}"#,
            "中".repeat(n)
        )
    };
    assert!(parse(&name(50)).is_ok());
    assert_eq!(err(&name(51)).0, errno::BAD_FIELD);
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
    let s =
        "{\"groupid\":1,\"id\":2,\"msg\":\"你好 \\\"q\\\" }{ 😀 \\\\ \\n\\u0001\",\"msgid\":10}";
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

/// What recipients get for the ONE_CHAT `s` of the user `name` (`time` if it has none).
fn delivered(s: &str, name: &str, time: &str) -> String {
    let Request::OneChat { frame, .. } = req(s) else {
        panic!("not a chat: {s}")
    };
    delivery_frame(frame, name, time).to_string()
}

#[test]
fn delivery_frame_overwrites_name_keeps_time_drops_ext() {
    assert_eq!(
        delivered(
            r#"{"ext":1,"id":1,"msg":"m","msgid":6,"name":"fake","time":"t0","to":2}"#,
            "real",
            "t1"
        ),
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

#[test]
fn msgid_names() {
    let table = [
        (msgid::LOGIN, "LOGIN"),
        (msgid::LOGIN_ACK, "LOGIN_ACK"),
        (msgid::LOGINOUT, "LOGINOUT"),
        (msgid::REG, "REG"),
        (msgid::REG_ACK, "REG_ACK"),
        (msgid::ONE_CHAT, "ONE_CHAT"),
        (msgid::ADD_FRIEND, "ADD_FRIEND"),
        (msgid::CREATE_GROUP, "CREATE_GROUP"),
        (msgid::ADD_GROUP, "ADD_GROUP"),
        (msgid::GROUP_CHAT, "GROUP_CHAT"),
        (msgid::ERROR, "ERROR"),
        (msgid::ACK, "ACK"),
        (msgid::PING, "PING"),
        (msgid::PONG, "PONG"),
        (msgid::HISTORY, "HISTORY"),
        (msgid::HISTORY_ACK, "HISTORY_ACK"),
        (msgid::PRESENCE, "PRESENCE"),
        (msgid::FRIEND_REQUEST, "FRIEND_REQUEST"),
        (msgid::FRIEND_REQUEST_NOTICE, "FRIEND_REQUEST_NOTICE"),
        (msgid::FRIEND_ANSWER, "FRIEND_ANSWER"),
        (msgid::FRIEND_ANSWER_NOTICE, "FRIEND_ANSWER_NOTICE"),
        (msgid::DEL_FRIEND, "DEL_FRIEND"),
        (msgid::FRIEND_REQUESTS, "FRIEND_REQUESTS"),
        (msgid::FRIEND_REQUESTS_ACK, "FRIEND_REQUESTS_ACK"),
        (msgid::LEAVE_GROUP, "LEAVE_GROUP"),
        (msgid::REMOVE_MEMBER, "REMOVE_MEMBER"),
        (msgid::GROUP_INFO, "GROUP_INFO"),
        (msgid::GROUP_INFO_ACK, "GROUP_INFO_ACK"),
        (msgid::GROUP_REMOVED_NOTICE, "GROUP_REMOVED_NOTICE"),
        (msgid::CONTACTS, "CONTACTS"),
        (msgid::CONTACTS_ACK, "CONTACTS_ACK"),
        (msgid::RESUME, "RESUME"),
        (msgid::RESUME_ACK, "RESUME_ACK"),
        (msgid::SEQ_ACK, "SEQ_ACK"),
    ];
    for (id, name) in table {
        assert_eq!(msgid::name(id), Some(name), "msgid {id}");
    }
    assert_eq!(msgid::name(0), None);
    assert_eq!(msgid::name(99), None);
}

#[test]
fn protocol_error_display_for_logs() {
    let e = ProtocolError::new(errno::UNKNOWN_MSGID, "unknown msgid 99").with_msgid(99);
    assert_eq!(
        e.to_string(),
        format!(
            "errno {}: unknown msgid 99 (msgid 99)",
            errno::UNKNOWN_MSGID
        )
    );
    let e = ProtocolError::new(errno::UNKNOWN_MSGID, "x");
    assert_eq!(e.to_string(), format!("errno {}: x", errno::UNKNOWN_MSGID));
}

/// The role spellings are the wire's and the database's (`groupuser.grouprole`): a
/// changed one would break legacy clients' member lists and legacy rows alike.
#[test]
fn role_spellings() {
    for (role, s) in [(Role::Creator, "creator"), (Role::Normal, "normal")] {
        assert_eq!(role.as_str(), s);
        assert_eq!(Role::parse(s), Some(role));
        assert_eq!(Role::from_column(s), role);
    }
    assert_eq!(Role::parse("Creator"), None);
    assert_eq!(Role::from_column("owner"), Role::Normal);
}

/// The extended requests (CONTACTS, RESUME, SEQ_ACK) and what `Parsed` carries for them:
/// the msgid, the acting id and the acknowledged-delivery start (protocol.md §11, §12).
#[test]
fn parses_the_extended_requests() {
    let p = parse(r#"{"id":22,"msgid":15}"#).unwrap();
    assert_eq!((p.req.clone(), p.msgid), (Request::Contacts { id: 22 }, 15));
    assert_eq!((p.req.msgid(), p.req.acting_id()), (15, Some(22)));

    let p = parse(r#"{"ext":1,"id":22,"msgid":17,"token":"ab"}"#).unwrap();
    let resume = Request::Resume {
        id: 22,
        token: "ab".into(),
    };
    assert_eq!((&p.req, p.msgid, p.ext, p.acks), (&resume, 17, true, None));
    assert_eq!((p.req.msgid(), p.req.acting_id()), (17, None));
    let p = parse(r#"{"ext":1,"id":22,"lastseq":9007199254740992,"msgid":17,"token":"ab"}"#);
    assert_eq!(p.unwrap().acks, Some(1 << 53));

    let p = parse(r#"{"msgid":19,"seq":0}"#).unwrap();
    assert_eq!((&p.req, p.msgid), (&Request::SeqAck { seq: 0 }, 19));
    assert_eq!((p.req.msgid(), p.req.acting_id()), (19, None));
    assert_eq!(
        req(r#"{"msgid":19,"seq":9007199254740992}"#),
        Request::SeqAck { seq: 1 << 53 }
    );
    let seq_range = "field \"seq\" must be an integer from 0 to 2^53";
    for bad in ["9007199254740993", "-1", "1.0", "\"1\""] {
        let e = err(&format!(r#"{{"msgid":19,"seq":{bad}}}"#));
        assert_eq!(
            (e.0, e.1.as_str(), e.2),
            (errno::BAD_FIELD, seq_range, Some(19))
        );
    }
    assert_eq!(
        err(r#"{"msgid":19}"#),
        (
            errno::MISSING_FIELD,
            "missing field \"seq\"".into(),
            Some(19)
        )
    );

    // Every request names its msgid, as the frame did.
    for frame in [
        r#"{"id":22,"msgid":1,"password":"p"}"#,
        r#"{"id":22,"msgid":3}"#,
        r#"{"msgid":4,"name":"n","password":"p"}"#,
        r#"{"id":22,"msg":"m","msgid":6,"toid":23}"#,
        r#"{"friendid":23,"id":22,"msgid":7}"#,
        r#"{"groupname":"g","id":22,"msgid":8}"#,
        r#"{"groupid":5,"id":22,"msgid":9}"#,
        r#"{"groupid":5,"id":22,"msg":"m","msgid":10}"#,
        r#"{"msgid":13}"#,
        r#"{"id":22,"msgid":31}"#,
    ] {
        let p = parse(frame).unwrap();
        assert_eq!(p.req.msgid(), p.msgid, "{frame}");
    }
    assert_eq!(req(r#"{"id":22,"msgid":31}"#).acting_id(), Some(22));
}

#[test]
fn resume_needs_ext_and_a_token() {
    assert_eq!(
        err(r#"{"id":22,"msgid":17,"token":"ab"}"#),
        (
            errno::RESUME_NEEDS_EXT,
            "RESUME needs \"ext\":1".into(),
            Some(17)
        )
    );
    let token = |n: usize| {
        format!(
            r#"{{"ext":1,"id":2,"msgid":17,"token":"{}"}}"#,
            "a".repeat(n)
        )
    };
    assert!(parse(&token(TOKEN_MAX_CHARS)).is_ok());
    for n in [0, TOKEN_MAX_CHARS + 1] {
        assert_eq!(
            err(&token(n)).1,
            "field \"token\" must be a non-empty string of at most 128 characters"
        );
    }
    assert_eq!(
        err(r#"{"ext":1,"id":2,"lastseq":-1,"msgid":17,"token":"a"}"#).1,
        "field \"lastseq\" must be an integer from 0 to 2^53"
    );
}

/// `"acks":1` asks for acknowledged delivery only on an extended LOGIN; a WebSocket
/// connection is extended from the start (protocol.md §12, §13).
#[test]
fn acks_and_extended_connections() {
    let acks = |s: &str, ws: bool| {
        parse_request_on(serde_json::from_str(s).unwrap(), ws)
            .unwrap()
            .acks
    };
    assert_eq!(
        acks(
            r#"{"acks":1,"ext":1,"id":2,"msgid":1,"password":"p"}"#,
            false
        ),
        Some(0)
    );
    assert_eq!(
        acks(
            r#"{"acks":true,"ext":1,"id":2,"msgid":1,"password":"p"}"#,
            false
        ),
        Some(0)
    );
    assert_eq!(
        acks(
            r#"{"acks":0,"ext":1,"id":2,"msgid":1,"password":"p"}"#,
            false
        ),
        None
    );
    assert_eq!(
        acks(r#"{"acks":1,"id":2,"msgid":1,"password":"p"}"#, false),
        None
    );
    assert_eq!(
        acks(r#"{"acks":1,"id":2,"msgid":1,"password":"p"}"#, true),
        Some(0)
    );
    assert_eq!(
        acks(r#"{"ext":1,"id":2,"msgid":1,"password":"p"}"#, false),
        None
    );
    assert_eq!(acks(r#"{"acks":1,"ext":1,"id":2,"msgid":3}"#, false), None);
    assert_eq!(
        err(r#"{"acks":2,"ext":1,"id":2,"msgid":1,"password":"p"}"#).1,
        "field \"acks\" must be 0, 1, false or true"
    );

    let on_ws = |s: &str| parse_request_on(serde_json::from_str(s).unwrap(), true);
    assert!(on_ws(r#"{"msgid":13}"#).unwrap().ext);
    assert!(on_ws(r#"{"ext":0,"msgid":13}"#).unwrap().ext);
    assert_eq!(
        on_ws(r#"{"id":2,"msgid":17,"token":"t"}"#).unwrap().req,
        Request::Resume {
            id: 2,
            token: "t".into()
        }
    );
    assert!(!parse(r#"{"msgid":13}"#).unwrap().ext);
}

/// `cid` (protocol.md §4): an integer from 0 up, on both chats; never forwarded.
#[test]
fn chat_cid() {
    let cid = |s: &str| match req(s) {
        Request::OneChat { cid, .. } | Request::GroupChat { cid, .. } => cid,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        cid(r#"{"cid":0,"id":1,"msg":"m","msgid":6,"toid":2}"#),
        Some(0)
    );
    assert_eq!(
        cid(r#"{"cid":7,"groupid":1,"id":1,"msg":"m","msgid":10}"#),
        Some(7)
    );
    assert_eq!(cid(r#"{"id":1,"msg":"m","msgid":6,"toid":2}"#), None);
    for bad in ["-1", "1.0", "\"1\"", "9223372036854775808"] {
        let e = err(&format!(
            r#"{{"cid":{bad},"id":1,"msg":"m","msgid":6,"toid":2}}"#
        ));
        assert_eq!(
            (e.0, e.1.as_str()),
            (
                errno::BAD_FIELD,
                "field \"cid\" must be an integer from 0 to 9223372036854775807"
            ),
            "{bad}"
        );
    }
    assert_eq!(
        err(r#"{"id":1,"msg":"m","msgid":6,"name":1,"toid":2}"#).1,
        "field \"name\" must be a string"
    );
    assert_eq!(
        delivered(r#"{"cid":3,"id":1,"msg":"m","msgid":6,"toid":2}"#, "n", "t"),
        r#"{"id":1,"msg":"m","msgid":6,"name":"n","time":"t","toid":2}"#
    );
}

/// REG's `name` and CREATE_GROUP's `groupname` are names: blank, white space at either
/// end (any Unicode white space), a control character or a line break is BAD_FIELD
/// naming the field and why, whatever the store would have made of it; so is a name
/// of characters that show as nothing or with one at an end (a variation selector
/// after a letter, the tags, the selectors' supplement, U+206A–U+206F, the blank
/// Braille pattern, …: `alice` and a lookalike). Spaces inside, CJK, emoji sequences
/// (joined by U+200D, ended by a variation selector or a keycap) and the longest
/// name are names.
#[test]
fn names_refuse_blank_edge_whitespace_and_controls() {
    let blank = "must not be blank";
    let edge = "must not begin or end with whitespace";
    let control = "must not contain control characters or line breaks";
    let direction = "must not contain direction controls";
    let cases = [
        (" ", blank),
        ("\u{200b}", blank),
        ("\u{3164}\u{3164}", blank),
        (" \u{feff} ", blank),
        ("\u{200b}alice", edge),
        ("alice\u{2060}", edge),
        ("alice\u{ad}", edge),
        ("\u{2800}", blank),
        ("\u{e0100}", blank),
        ("\u{e0061}\u{e0062}", blank),
        ("alice\u{fe0f}", edge),
        ("alice\u{fe00}", edge),
        ("\u{fe0f}alice", edge),
        ("alice\u{e0100}", edge),
        ("alice\u{e0061}", edge),
        ("alice\u{e0061}\u{e007f}", edge),
        ("alice\u{206a}", edge),
        ("alice\u{2065}", edge),
        ("alice\u{fff9}", edge),
        ("alice\u{1d173}", edge),
        ("alice\u{180b}", edge),
        ("alice\u{17b4}", edge),
        ("alice\u{2800}", edge),
        ("alice\u{200b}\u{fe0f}", edge),
        ("al\u{202e}ecila", direction),
        ("al\u{2066}ice\u{2069}x", direction),
        ("al\u{200f}ice", direction),
        ("   ", blank),
        ("\u{3000}", blank),
        (" alice", edge),
        ("alice ", edge),
        ("alice  ", edge),
        ("\talice", edge),
        ("alice\n", edge),
        ("alice\u{a0}", edge),
        ("\u{2003}alice", edge),
        ("al\u{0}ice", control),
        ("al\u{1b}[31mice", control),
        ("al\nice", control),
        ("al\u{7f}ice", control),
        ("al\u{85}ice", control),
        ("al\u{2028}ice", control),
        ("al\u{2029}ice", control),
    ];
    for (name, why) in cases {
        let reg = json!({"msgid": 4, "name": name, "password": "p"});
        let e = parse_request(reg).unwrap_err();
        assert_eq!(
            (e.errno, e.errmsg, e.msgid),
            (errno::BAD_FIELD, format!("field \"name\" {why}"), Some(4)),
            "REG {name:?}"
        );
        let group = json!({"groupname": name, "id": 1, "msgid": 8});
        let e = parse_request(group).unwrap_err();
        assert_eq!(
            (e.errno, e.errmsg, e.msgid),
            (
                errno::BAD_FIELD,
                format!("field \"groupname\" {why}"),
                Some(8)
            ),
            "CREATE_GROUP {name:?}"
        );
    }
    let longest = "x".repeat(NAME_MAX_CHARS);
    for name in [
        "Ann Lee",
        "a  b",
        "张三",
        "\u{1f468}\u{200d}\u{1f469}\u{200d}\u{1f467}",
        "love\u{2764}\u{fe0f}",
        "\u{a9}\u{fe0f}",
        "#\u{fe0f}\u{20e3}",
        "\u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}x",
        "Scots \u{1f3f4}\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
        "O'Brien",
        longest.as_str(),
    ] {
        assert_eq!(
            req(&json!({"msgid": 4, "name": name, "password": "p"}).to_string()),
            Request::Reg {
                name: name.into(),
                password: "p".into()
            }
        );
        let Request::CreateGroup { groupname, .. } =
            req(&json!({"groupname": name, "id": 1, "msgid": 8}).to_string())
        else {
            panic!("not a CREATE_GROUP")
        };
        assert_eq!(groupname, name);
    }
    // The length is judged first, as before: a long name of spaces is too long.
    assert_eq!(
        err(&json!({"msgid": 4, "name": " ".repeat(51), "password": "p"}).to_string()).1,
        "field \"name\" must be a non-empty string of at most 50 characters"
    );
}

#[test]
fn string_field_errmsgs() {
    for (min, max, says) in [
        (0, usize::MAX, "a string"),
        (0, 9, "a string of at most 9 characters"),
        (1, usize::MAX, "a non-empty string"),
        (1, 9, "a non-empty string of at most 9 characters"),
        (2, 9, "a string of 2 to 9 characters"),
    ] {
        assert_eq!(
            describe_string("k", min, max),
            format!("field \"k\" must be {says}")
        );
    }
}

#[test]
fn more_error_constructors() {
    let e = ProtocolError::unavailable(7);
    assert_eq!(
        text(&error(&e)),
        r#"{"errmsg":"service temporarily unavailable","errno":110,"msgid":11,"reqmsgid":7}"#
    );
    let e = ProtocolError::rate_limited(Some(6));
    assert_eq!(
        (e.errno, e.errmsg.as_str(), e.msgid),
        (errno::RATE_LIMITED, "too many requests, slow down", Some(6))
    );
    assert_eq!(ProtocolError::rate_limited(None).msgid, None);
    let e = ProtocolError::not_logged_in(6);
    assert_eq!((e.errmsg.as_str(), e.msgid), ("not logged in", Some(6)));
    assert_eq!(
        ProtocolError::not_your_id(6, 5, 4).errmsg,
        "field \"id\" is 5 but this connection is logged in as 4"
    );
    let e = ProtocolError::already_logged_in(3);
    assert_eq!(
        (e.errno, e.errmsg.as_str()),
        (
            errno::ALREADY_LOGGED_IN,
            "this connection is already logged in as 3"
        )
    );
    assert_eq!(
        ProtocolError::frame_too_large(10).errno,
        errno::FRAME_TOO_LARGE
    );
}

#[test]
fn resume_contacts_and_token_replies_exact_bytes() {
    let mut ack = login_ok(22, "alice", &[], &[], &[]);
    add_token(&mut ack, "tok", 600);
    assert_eq!(
        text(&ack),
        r#"{"errno":0,"id":22,"msgid":2,"name":"alice","token":"tok","tokenttl":600}"#
    );
    assert_eq!(
        text(&resume_err(errno::BAD_TOKEN, "bad token")),
        r#"{"errmsg":"bad token","errno":120,"msgid":18}"#
    );
    assert_eq!(
        text(&contacts(&[], &[])),
        r#"{"errno":0,"friends":[],"groups":[],"msgid":16}"#
    );
    let friend = Friend {
        id: 3,
        name: "bob".into(),
        online: false,
    };
    let group = GroupInfo {
        id: 4,
        name: "g".into(),
        desc: "".into(),
        members: vec![],
    };
    assert_eq!(
        text(&contacts(&[friend], &[group])),
        concat!(
            r#"{"errno":0,"friends":["{\"id\":3,\"name\":\"bob\",\"state\":\"offline\"}"],"#,
            r#""groups":["{\"groupdesc\":\"\",\"groupname\":\"g\",\"id\":4,\"users\":[]}"],"msgid":16}"#
        )
    );
    assert_eq!(Role::Creator.to_string(), "creator");
    assert_eq!(Role::Normal.to_string(), "normal");
}

/// The client side of LOGIN_ACK's lists refuses what it cannot read, and reads a group
/// without `users` as one without members.
#[test]
fn wire_lists_read_back_strictly() {
    assert_eq!(
        GroupInfo::from_wire(r#"{"groupdesc":"d","groupname":"g","id":4}"#),
        Some(GroupInfo {
            id: 4,
            name: "g".into(),
            desc: "d".into(),
            members: vec![]
        })
    );
    for bad in [
        r#"{"groupdesc":"d","groupname":"g","id":4,"users":"x"}"#,
        r#"{"groupdesc":"d","groupname":"g","id":4,"users":[1]}"#,
        r#"{"groupdesc":"d","groupname":"g","id":4,"users":["{}"]}"#,
        r#"{"groupdesc":"d","groupname":"g"}"#,
        "nope",
    ] {
        assert_eq!(GroupInfo::from_wire(bad), None, "{bad}");
    }
    assert_eq!(
        Friend::from_wire(r#"{"id":1,"name":"a","state":"away"}"#),
        None
    );
    assert_eq!(Friend::from_wire(r#"{"id":1,"name":"a","state":1}"#), None);
    assert_eq!(Friend::from_wire(r#"{"id":1,"name":"a"}"#), None);
    let member = r#"{"id":1,"name":"a","role":"normal","state":"online"}"#;
    assert_eq!(
        Member::from_wire(member),
        Some(Member {
            id: 1,
            name: "a".into(),
            role: Role::Normal,
            online: true
        })
    );
    assert_eq!(
        Member::from_wire(r#"{"id":1,"name":"a","role":"boss","state":"online"}"#),
        None
    );
}

//! Unit tests of the protocol: exact legacy bytes, parsing, errors.

use super::*;
use serde_json::json;

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

//! Unit tests of the history, friends and groups extension: its requests and the exact
//! bytes of its frames (protocol.md §10).

use super::*;
use crate::protocol::tests::{err, parse, req};
use crate::protocol::{Request, Role};

/// The extension request `s` parses to, checked to act as user 22.
fn social(s: &str) -> Social {
    let p = parse(s).unwrap();
    let Request::Social { id, req } = p.req.clone() else {
        panic!("not a social request: {s}")
    };
    assert_eq!((id, p.req.acting_id()), (22, Some(22)), "{s}");
    assert_eq!((req.msgid(), p.req.msgid()), (p.msgid, p.msgid), "{s}");
    req
}

#[test]
fn parses_every_request() {
    assert_eq!(
        social(r#"{"id":22,"msgid":23,"peer":5}"#),
        Social::History {
            conv: Conversation::Peer(5),
            before: None,
            limit: HISTORY_DEFAULT_LIMIT
        }
    );
    assert_eq!(
        social(r#"{"before":9,"groupid":3,"id":22,"limit":100,"msgid":23}"#),
        Social::History {
            conv: Conversation::Group(3),
            before: Some(9),
            limit: 100
        }
    );
    assert_eq!(
        social(r#"{"friendid":5,"id":22,"msgid":26}"#),
        Social::FriendRequest { friendid: 5 }
    );
    for (accept, yes) in [("true", true), ("false", false), ("1", true), ("0", false)] {
        assert_eq!(
            social(&format!(
                r#"{{"accept":{accept},"friendid":5,"id":22,"msgid":28}}"#
            )),
            Social::FriendAnswer {
                friendid: 5,
                accept: yes
            }
        );
    }
    assert_eq!(
        social(r#"{"friendid":5,"id":22,"msgid":30}"#),
        Social::DelFriend { friendid: 5 }
    );
    assert_eq!(social(r#"{"id":22,"msgid":31}"#), Social::FriendRequests);
    assert_eq!(
        social(r#"{"groupid":3,"id":22,"msgid":33}"#),
        Social::LeaveGroup { groupid: 3 }
    );
    assert_eq!(
        social(r#"{"groupid":3,"id":22,"msgid":34,"userid":5}"#),
        Social::RemoveMember {
            groupid: 3,
            userid: 5
        }
    );
    assert_eq!(
        social(r#"{"groupid":3,"id":22,"msgid":35}"#),
        Social::GroupInfo { groupid: 3 }
    );
}

#[test]
fn history_fields() {
    let limit = |l: &str| {
        let s = format!(r#"{{"id":22,"limit":{l},"msgid":23,"peer":5}}"#);
        match parse(&s).map(|p| p.req) {
            Ok(Request::Social {
                req: Social::History { limit, .. },
                ..
            }) => Ok(limit),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err((e.errno, e.errmsg)),
        }
    };
    assert_eq!(limit("1"), Ok(1));
    assert_eq!(limit("100"), Ok(HISTORY_MAX_LIMIT));
    for bad in ["0", "101", "-1", "5.0", "\"5\""] {
        assert_eq!(
            limit(bad),
            Err((
                errno::BAD_FIELD,
                "field \"limit\" must be an integer from 1 to 100".into()
            )),
            "{bad}"
        );
    }
    assert_eq!(
        err(r#"{"groupid":3,"id":22,"msgid":23,"peer":5}"#),
        (
            errno::BAD_FIELD,
            "field \"groupid\" must be absent when \"peer\" is given".into(),
            Some(23)
        )
    );
    assert_eq!(
        err(r#"{"id":22,"msgid":23}"#),
        (
            errno::MISSING_FIELD,
            "missing field \"peer\"".into(),
            Some(23)
        )
    );
    assert_eq!(
        err(r#"{"before":0,"id":22,"msgid":23,"peer":5}"#).1,
        "field \"before\" must be an integer from 1 to 9223372036854775807"
    );
    assert_eq!(
        req(r#"{"before":1,"id":22,"msgid":23,"peer":5}"#),
        Request::Social {
            id: 22,
            req: Social::History {
                conv: Conversation::Peer(5),
                before: Some(1),
                limit: 20
            }
        }
    );
}

#[test]
fn field_errors() {
    assert_eq!(
        err(r#"{"friendid":5,"id":22,"msgid":28}"#),
        (
            errno::MISSING_FIELD,
            "missing field \"accept\"".into(),
            Some(28)
        )
    );
    for bad in ["2", "\"true\"", "null"] {
        assert_eq!(
            err(&format!(
                r#"{{"accept":{bad},"friendid":5,"id":22,"msgid":28}}"#
            )),
            (
                errno::BAD_FIELD,
                "field \"accept\" must be true, false, 1 or 0".into(),
                Some(28)
            ),
            "{bad}"
        );
    }
    assert_eq!(
        err(r#"{"groupid":3,"id":22,"msgid":34}"#),
        (
            errno::MISSING_FIELD,
            "missing field \"userid\"".into(),
            Some(34)
        )
    );
    assert_eq!(
        err(r#"{"friendid":5,"msgid":26}"#),
        (
            errno::MISSING_FIELD,
            "missing field \"id\"".into(),
            Some(26)
        )
    );
}

#[test]
fn history_ack_exact_bytes() {
    let items = [
        HistoryItem {
            seq: 2,
            text: r#"{"id":1,"msg":"b","msgid":6,"toid":5}"#.into(),
        },
        HistoryItem {
            seq: 1,
            text: "not json".into(),
        },
    ];
    assert_eq!(
        history_ack(Conversation::Peer(5), &items, true).to_string(),
        concat!(
            r#"{"errno":0,"more":true,"msgid":24,"msgs":[{"id":1,"msg":"b","msgid":6,"seq":2,"toid":5},"#,
            r#"{"seq":1}],"peer":5}"#
        )
    );
    assert_eq!(
        history_ack(Conversation::Group(3), &[], false).to_string(),
        r#"{"errno":0,"groupid":3,"more":false,"msgid":24,"msgs":[]}"#
    );
}

#[test]
fn notices_exact_bytes() {
    assert_eq!(
        presence(5, "bob", true).to_string(),
        r#"{"id":5,"msgid":25,"name":"bob","state":"online"}"#
    );
    assert_eq!(
        presence(5, "bob", false).to_string(),
        r#"{"id":5,"msgid":25,"name":"bob","state":"offline"}"#
    );
    assert_eq!(
        friend_request_notice(5, "bob").to_string(),
        r#"{"from":5,"msgid":27,"name":"bob"}"#
    );
    assert_eq!(
        friend_answer_notice(5, "bob", false).to_string(),
        r#"{"accept":false,"from":5,"msgid":29,"name":"bob"}"#
    );
    assert_eq!(
        friend_requests_ack(&[(5, "bob".into()), (6, "ann".into())]).to_string(),
        r#"{"errno":0,"msgid":32,"requests":[{"id":5,"name":"bob"},{"id":6,"name":"ann"}]}"#
    );
    assert_eq!(
        group_removed_notice(3, 5).to_string(),
        r#"{"by":5,"groupid":3,"msgid":37}"#
    );
    let members = [Member {
        id: 5,
        name: "bob".into(),
        role: Role::Creator,
        online: true,
    }];
    assert_eq!(
        group_info_ack(3, "g", "d", &members).to_string(),
        concat!(
            r#"{"errno":0,"groupdesc":"d","groupid":3,"groupname":"g","msgid":36,"#,
            r#""users":[{"id":5,"name":"bob","role":"creator","state":"online"}]}"#
        )
    );
}

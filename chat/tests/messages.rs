//! Every message type end to end, the exact legacy bytes, and the opt-in ACKs.

mod util;

use serde_json::{json, Value};
use util::{expect_bytes, parsed, strings, Backend, Client, User, TIME};

both_backends!(
    register_and_login,
    logout_then_login_again_on_the_same_connection,
    one_chat_online,
    one_chat_with_to_instead_of_toid,
    one_chat_exact_bytes_on_either_path,
    add_friend_shows_presence_at_next_login,
    groups_roles_and_group_chat,
    ping_pong,
    login_ack_exact_bytes,
    legacy_client_never_gets_acks,
    ext_client_gets_acks,
    invalid_registration_is_a_failed_reg,
    names_are_refused_alike_on_both_stores,
);

/// A REG whose name is empty or too long is a failed registration, as the legacy
/// server answered it (the legacy client prints its own line for errno 1): the exact
/// legacy bytes for a legacy client, the reason for an opted-in one; a mistyped field too
/// (a legacy client waits for msgid 5 and ignores msgid 11).
fn invalid_registration_is_a_failed_reg(b: &Backend) {
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    let long = "n".repeat(51);
    c.send(&json!({"msgid": 4, "name": long, "password": "p"}));
    util::expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);
    c.send(&json!({"msgid": 4, "name": "", "password": "p"}));
    util::expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);
    c.send(&json!({"ext": 1, "msgid": 4, "name": long, "password": "p"}));
    let v = c.expect_msgid(5);
    assert_eq!(v["errno"], 1, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("name"), "{v}");
    c.send(&json!({"msgid": 4, "name": 5, "password": "p"}));
    util::expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);
    // The connection still registers a valid name.
    let id = c.register("fine", "pw");
    assert!(id > 0);
}

/// A REG or CREATE_GROUP name that is blank, begins or ends with white space or holds
/// a control character gets the same answer on either store: a failed REG (the legacy
/// bytes, or errno 1 with the reason for an opted-in client) and ERROR 105 for
/// CREATE_GROUP. Before, `alice ` next to `alice` was a new user on SQLite and "name is
/// already taken" on MySQL (PAD SPACE), and ` alice` a new user on both. Names are
/// case-sensitive on both (`Alice` is another user).
fn names_are_refused_alike_on_both_stores(b: &Backend) {
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    let alice = c.register("alice", "pa");
    for (name, why) in [
        ("alice ", "must not begin or end with whitespace"),
        (" alice", "must not begin or end with whitespace"),
        ("alice\u{a0}", "must not begin or end with whitespace"),
        ("   ", "must not be blank"),
        (
            "al\nice",
            "must not contain control characters or line breaks",
        ),
    ] {
        c.send(&json!({"msgid": 4, "name": name, "password": "p"}));
        expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);
        c.send(&json!({"ext": 1, "msgid": 4, "name": name, "password": "p"}));
        let v = c.expect_msgid(5);
        assert_eq!(
            v,
            json!({"errmsg": format!("field \"name\" {why}"), "errno": 1, "msgid": 5}),
            "REG {name:?}"
        );
    }
    assert!(c.register("Alice", "pA") > alice, "case-sensitive");
    c.send(&json!({"ext": 1, "msgid": 4, "name": "alice", "password": "p"}));
    let v = c.expect_msgid(5);
    assert_eq!(v["errmsg"], "name is already taken", "{v}");

    c.login_ok(alice, "pa");
    let create = |name: &str| json!({"ext": 1, "groupname": name, "id": alice, "msgid": 8});
    c.send(&create("crew"));
    c.expect_ack(8, 0);
    for name in ["crew ", " crew", "\tcrew", "cr\u{0}ew"] {
        c.send(&create(name));
        let v = c.expect_error(105, Some(8));
        assert!(
            v["errmsg"]
                .as_str()
                .unwrap()
                .starts_with("field \"groupname\" must not"),
            "CREATE_GROUP {name:?}: {v}"
        );
    }
    c.send(&create("Crew"));
    c.expect_ack(8, 0);
    c.send(&create("crew"));
    c.expect_ack(8, 203);
}

/// REG ok / name taken, LOGIN ok / wrong password / unknown id / already online, with
/// the legacy bytes.
fn register_and_login(b: &Backend) {
    util::assert_serde_sorts_keys();
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    let alice = c.register("alice", "pa");
    let bob = c.register("bob", "pb");
    assert!(alice > 0 && bob > alice, "ids {alice}, {bob}");

    c.send(&json!({"msgid": 4, "name": "alice", "password": "other"}));
    expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);

    c.send(&json!({"id": alice, "msgid": 1, "password": "wrong"}));
    expect_bytes(
        &mut c,
        r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#,
    );
    c.send(&json!({"id": bob + 1000, "msgid": 1, "password": "pa"}));
    expect_bytes(
        &mut c,
        r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#,
    );
    // Another user's password does not open this account.
    c.send(&json!({"id": alice, "msgid": 1, "password": "pb"}));
    expect_bytes(
        &mut c,
        r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#,
    );

    c.send(&json!({"id": alice, "msgid": 1, "password": "pa"}));
    expect_bytes(
        &mut c,
        &format!(r#"{{"errno":0,"id":{alice},"msgid":2,"name":"alice"}}"#),
    );

    let mut other = Client::connect(srv.addr());
    other.send(&json!({"id": alice, "msgid": 1, "password": "pa"}));
    expect_bytes(
        &mut other,
        r#"{"errmsg":"this account is using, input another!","errno":2,"msgid":2}"#,
    );
    // The refused connection can still log in as someone else.
    other.login_ok(bob, "pb");
    // And a LOGIN on a connection that is logged in is refused, not a second login.
    other.send(&json!({"id": alice, "msgid": 1, "password": "pa"}));
    other.expect_error(111, Some(1));
    c.expect_quiet();
}

/// LOGINOUT has no legacy reply, keeps the connection, and frees the account.
fn logout_then_login_again_on_the_same_connection(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");

    a.c.logout(a.id);
    a.c.expect_quiet();
    // Logged out: a request that needs a login is refused.
    a.chat(bob.id, "after logout");
    a.c.expect_error(107, Some(6));
    bob.c.expect_quiet();

    // The account is free: another connection can take it, then give it back.
    let mut other = Client::connect(srv.addr());
    other.login_ok(a.id, &a.pw);
    other.logout(a.id);
    other.barrier();

    let ack = a.login();
    assert_eq!(ack["name"], "alice");
    a.chat(bob.id, "back again");
    expect_bytes(
        &mut bob.c,
        &format!(
            r#"{{"id":{},"msg":"back again","msgid":6,"name":"alice","time":"{TIME}","toid":{}}}"#,
            a.id, bob.id
        ),
    );
}

/// The recipient gets the frame with the sender's real name; the sender gets nothing.
fn one_chat_online(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");

    // Claims to be "mallory", sent with spaces and unsorted keys and an extra field.
    let req = format!(
        "{{ \"msgid\": 6, \"toid\": {}, \"id\": {}, \"name\": \"mallory\", \"msg\": \"hi bob\", \
         \"time\": \"{TIME}\", \"extra\": [1, 2] }}\0",
        bob.id, a.id
    );
    a.c.send_raw(req.as_bytes());
    expect_bytes(
        &mut bob.c,
        &format!(
            r#"{{"extra":[1,2],"id":{},"msg":"hi bob","msgid":6,"name":"alice","time":"{TIME}","toid":{}}}"#,
            a.id, bob.id
        ),
    );
    // No echo, no ACK to a legacy sender.
    a.c.expect_quiet();

    // And back; a frame without `time` gets one in the legacy shape.
    bob.c
        .send(&json!({"id": bob.id, "msg": "hi alice", "msgid": 6, "toid": a.id}));
    let got = a.c.expect_msgid(6);
    assert_eq!(got["msg"], "hi alice");
    assert_eq!(got["name"], "bob");
    assert_eq!(got["id"], bob.id);
    let time = got["time"].as_str().expect("time added");
    assert_eq!(time.len(), 19, "{time}");
    assert!(
        time.bytes().enumerate().all(|(i, c)| match i {
            4 | 7 => c == b'-',
            10 => c == b' ',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        }),
        "time {time:?} is not YYYY-MM-DD HH:MM:SS"
    );
    bob.c.expect_quiet();
}

/// Some legacy clients address ONE_CHAT with `to`; the frame is forwarded as sent.
fn one_chat_with_to_instead_of_toid(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    a.c.send(&json!({"id": a.id, "msg": "via to", "msgid": 6, "name": "alice", "time": TIME, "to": bob.id}));
    expect_bytes(
        &mut bob.c,
        &format!(
            r#"{{"id":{},"msg":"via to","msgid":6,"name":"alice","time":"{TIME}","to":{}}}"#,
            a.id, bob.id
        ),
    );
    // Offline through `to` as well.
    let mut carol = User::register(srv.addr(), "carol");
    a.c.send(&json!({"id": a.id, "msg": "stored via to", "msgid": 6, "name": "alice", "time": TIME, "to": carol.id}));
    a.c.expect_quiet();
    let ack = carol.login();
    assert_eq!(
        strings(&ack, "offlinemsg"),
        vec![format!(
            r#"{{"id":{},"msg":"stored via to","msgid":6,"name":"alice","time":"{TIME}","to":{}}}"#,
            a.id, carol.id
        )]
    );
}

/// The IO loop reads plain chat frames without a `Value` (up to 16 distinct fields, no
/// escapes) and hands anything else to the full parse: both deliver the same bytes,
/// with the sender's registered name escaped as JSON, a repeated key's last value,
/// and every field of a frame with more fields than the fast path holds. The name has
/// a tab, which REG refuses now but an older server stored.
fn one_chat_exact_bytes_on_either_path(b: &Backend) {
    let srv = b.start();
    let name = "a \"quoted\"\\ name\twith a tab";
    let mut a = User {
        c: Client::connect(srv.addr()),
        id: b.legacy_user(name, "pw-a"),
        name: name.to_owned(),
        pw: "pw-a".to_owned(),
    };
    a.login();
    let mut bob = User::online(srv.addr(), "bob");
    let escaped = serde_json::to_string(name).unwrap();
    assert!(escaped.contains("\\t"), "{escaped}");

    // Fast path: plain fields, a repeated key (the last one counts), no `time`.
    let req = format!(
        r#"{{"msgid":6,"id":{},"toid":{},"msg":"one","x":1,"x":2,"name":"z"}}"#,
        a.id, bob.id
    );
    a.c.send_raw(format!("{req}\0").as_bytes());
    let got = bob.c.recv_raw();
    let got = String::from_utf8(got[..got.len() - 1].to_vec()).unwrap();
    let time = serde_json::from_str::<Value>(&got).unwrap()["time"]
        .as_str()
        .expect("time added")
        .to_owned();
    assert_eq!(
        got,
        format!(
            r#"{{"id":{},"msg":"one","msgid":6,"name":{escaped},"time":"{time}","toid":{},"x":2}}"#,
            a.id, bob.id
        )
    );

    // 17 distinct fields: past the fast path's array, delivered whole by the full parse.
    let extra: String = (0..14).map(|i| format!(r#","f{i:02}":{i}"#)).collect();
    let req = format!(
        r#"{{"msgid":6,"id":{},"toid":{},"msg":"two","time":"{TIME}"{extra}}}"#,
        a.id, bob.id
    );
    a.c.send_raw(format!("{req}\0").as_bytes());
    expect_bytes(
        &mut bob.c,
        &format!(
            r#"{{{},"id":{},"msg":"two","msgid":6,"name":{escaped},"time":"{TIME}","toid":{}}}"#,
            &extra[1..],
            a.id,
            bob.id
        ),
    );
    a.c.expect_quiet();
    bob.c.expect_quiet();
}

/// ADD_FRIEND (legacy: silent) appears in the next LOGIN_ACK with live presence.
fn add_friend_shows_presence_at_next_login(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let carol = User::register(srv.addr(), "carol");

    for f in [carol.id, bob.id, bob.id] {
        a.c.send(&json!({"friendid": f, "id": a.id, "msgid": 7}));
    }
    a.c.expect_quiet();
    let ack = a.relogin();
    assert_eq!(
        strings(&ack, "friends"),
        vec![
            format!(r#"{{"id":{},"name":"bob","state":"online"}}"#, bob.id),
            format!(r#"{{"id":{},"name":"carol","state":"offline"}}"#, carol.id),
        ],
        "friends (ordered by id, no duplicates) in {ack}"
    );
    // One-directional, as legacy.
    let ack = bob.relogin();
    assert!(ack.get("friends").is_none(), "{ack}");

    // Presence is live: bob leaves, carol arrives.
    bob.c.logout(bob.id);
    bob.c.barrier();
    let mut carol = carol;
    carol.login();
    let ack = a.relogin();
    assert_eq!(
        strings(&ack, "friends"),
        vec![
            format!(r#"{{"id":{},"name":"bob","state":"offline"}}"#, bob.id),
            format!(r#"{{"id":{},"name":"carol","state":"online"}}"#, carol.id),
        ]
    );
}

/// CREATE_GROUP (creator), ADD_GROUP (normal), GROUP_CHAT to online and offline members.
fn groups_roles_and_group_chat(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::register(srv.addr(), "carol");
    let mut dave = User::online(srv.addr(), "dave"); // not in the group

    a.c.send(&json!({"groupdesc": "the desc", "groupname": "g1", "id": a.id, "msgid": 8}));
    a.c.expect_quiet();
    // A legacy creator learns the group id at the next login.
    let ack = a.relogin();
    let groups = parsed(&ack, "groups");
    assert_eq!(groups.len(), 1, "{ack}");
    let gid = groups[0]["id"].as_i64().unwrap();
    assert_eq!(
        strings(&ack, "groups")[0],
        format!(
            r#"{{"groupdesc":"the desc","groupname":"g1","id":{gid},"users":["{{\"id\":{},\"name\":\"alice\",\"role\":\"creator\",\"state\":\"online\"}}"]}}"#,
            a.id
        )
    );

    bob.c
        .send(&json!({"groupid": gid, "id": bob.id, "msgid": 9}));
    bob.c.expect_quiet();
    carol.c.login_ok(carol.id, &carol.pw);
    carol
        .c
        .send(&json!({"groupid": gid, "id": carol.id, "msgid": 9}));
    carol
        .c
        .send(&json!({"groupid": gid, "id": carol.id, "msgid": 9})); // idempotent
    carol.c.logout(carol.id);
    carol.c.expect_quiet();

    let ack = bob.relogin();
    let g = &parsed(&ack, "groups")[0];
    assert_eq!(
        (g["id"].as_i64(), g["groupname"].as_str()),
        (Some(gid), Some("g1"))
    );
    let users: Vec<Value> = g["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::from_str(s.as_str().expect("users are strings")).unwrap())
        .collect();
    assert_eq!(
        users,
        vec![
            json!({"id": a.id, "name": "alice", "role": "creator", "state": "online"}),
            json!({"id": bob.id, "name": "bob", "role": "normal", "state": "online"}),
            json!({"id": carol.id, "name": "carol", "role": "normal", "state": "offline"}),
        ]
    );

    // alice speaks: bob gets it live, carol stored, dave nothing, alice no echo.
    a.group_chat(gid, "hello group");
    let expected = format!(
        r#"{{"groupid":{gid},"id":{},"msg":"hello group","msgid":10,"name":"alice","time":"{TIME}"}}"#,
        a.id
    );
    expect_bytes(&mut bob.c, &expected);
    a.c.expect_quiet();
    dave.c.expect_quiet();
    // bob answers, under a false name.
    bob.c
        .send(&util::group_chat(bob.id, "alice", gid, "hi all"));
    let got = a.c.expect_msgid(10);
    assert_eq!(
        (got["name"].as_str(), got["msg"].as_str()),
        (Some("bob"), Some("hi all"))
    );
    bob.c.expect_quiet();
    dave.c.expect_quiet();

    let ack = carol.login();
    let off = parsed(&ack, "offlinemsg");
    assert_eq!(off.len(), 2, "{ack}");
    assert_eq!(strings(&ack, "offlinemsg")[0], expected);
    assert_eq!(
        (off[1]["name"].as_str(), off[1]["msg"].as_str()),
        (Some("bob"), Some("hi all"))
    );
    // Now online, carol gets the next one live.
    a.group_chat(gid, "live");
    assert_eq!(carol.c.expect_msgid(10)["msg"], "live");
    assert_eq!(bob.c.expect_msgid(10)["msg"], "live");
    a.c.expect_quiet();
}

/// PING works before and after login, with the exact PONG bytes.
fn ping_pong(b: &Backend) {
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    c.send_raw(b"{\"msgid\":13}\0");
    expect_bytes(&mut c, r#"{"msgid":14}"#);
    let id = c.register("alice", "pa");
    c.login_ok(id, "pa");
    c.send(&json!({"msgid": 13, "id": id}));
    expect_bytes(&mut c, r#"{"msgid":14}"#);
}

/// A full LOGIN_ACK, byte for byte: friends, groups with users, offline messages, all
/// arrays of JSON strings, keys sorted.
fn login_ack_exact_bytes(b: &Backend) {
    let srv = b.start();
    let mut a = User::register(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let carol = User::register(srv.addr(), "carol");
    a.login();
    a.c.send(&json!({"friendid": bob.id, "id": a.id, "msgid": 7}));
    a.c.send(&json!({"friendid": carol.id, "id": a.id, "msgid": 7}));
    a.c.send(
        &json!({"ext": 1, "groupdesc": "d \"q\"", "groupname": "grp", "id": a.id, "msgid": 8}),
    );
    let gid = a.c.expect_ack(8, 0)["groupid"].as_i64().unwrap();
    bob.c
        .send(&json!({"groupid": gid, "id": bob.id, "msgid": 9}));
    bob.c.barrier();
    a.c.logout(a.id);
    a.c.expect_ack(3, 0); // this connection opted in above
    a.c.barrier();
    bob.chat(a.id, "m1");
    bob.group_chat(gid, "m2");
    bob.c.barrier();

    // A legacy connection gets the legacy bytes (an ext one also gets a resume token).
    a.c = Client::connect(srv.addr());
    a.c.send(&json!({"id": a.id, "msgid": 1, "password": a.pw}));
    let (ai, bi, ci) = (a.id, bob.id, carol.id);
    let expected = format!(
        concat!(
            r#"{{"errno":0,"friends":["{{\"id\":{bi},\"name\":\"bob\",\"state\":\"online\"}}","#,
            r#""{{\"id\":{ci},\"name\":\"carol\",\"state\":\"offline\"}}"],"#,
            r#""groups":["{{\"groupdesc\":\"d \\\"q\\\"\",\"groupname\":\"grp\",\"id\":{gid},"#,
            r#"\"users\":[\"{{\\\"id\\\":{ai},\\\"name\\\":\\\"alice\\\",\\\"role\\\":\\\"creator\\\","#,
            r#"\\\"state\\\":\\\"online\\\"}}\",\"{{\\\"id\\\":{bi},\\\"name\\\":\\\"bob\\\","#,
            r#"\\\"role\\\":\\\"normal\\\",\\\"state\\\":\\\"online\\\"}}\"]}}"],"#,
            r#""id":{ai},"msgid":2,"name":"alice","#,
            r#""offlinemsg":["{{\"id\":{bi},\"msg\":\"m1\",\"msgid\":6,\"name\":\"bob\",\"time\":\"{t}\",\"toid\":{ai}}}","#,
            r#""{{\"groupid\":{gid},\"id\":{bi},\"msg\":\"m2\",\"msgid\":10,\"name\":\"bob\",\"time\":\"{t}\"}}"]}}"#
        ),
        ai = ai,
        bi = bi,
        ci = ci,
        gid = gid,
        t = TIME
    );
    expect_bytes(&mut a.c, &expected);
    // Taken exactly once.
    let ack = a.relogin();
    assert!(ack.get("offlinemsg").is_none(), "{ack}");
}

/// A legacy client (never sends `ext`) sees exactly the legacy bytes: no ACK frames for
/// add-friend, create-group, add-group, logout, or business failures.
fn legacy_client_never_gets_acks(b: &Backend) {
    let srv = b.start();
    let mut a = User::online(srv.addr(), "alice");
    let bob = User::register(srv.addr(), "bob");
    let requests = [
        json!({"friendid": bob.id, "id": a.id, "msgid": 7}),
        json!({"friendid": bob.id + 100, "id": a.id, "msgid": 7}),
        json!({"friendid": a.id, "id": a.id, "msgid": 7}),
        json!({"groupdesc": "", "groupname": "g", "id": a.id, "msgid": 8}),
        json!({"groupdesc": "", "groupname": "g", "id": a.id, "msgid": 8}),
        json!({"groupid": 1, "id": a.id, "msgid": 9}),
        json!({"groupid": 999, "id": a.id, "msgid": 9}),
        json!({"groupid": 999, "id": a.id, "msg": "x", "msgid": 10}),
        json!({"id": a.id, "msg": "x", "msgid": 6, "toid": bob.id + 100}),
        json!({"id": a.id, "msgid": 3}),
    ];
    for r in &requests {
        a.c.send(r);
        a.c.expect_silence(util::SILENCE);
    }
    a.c.barrier();
    // And they took effect: the friend and the group are there.
    let ack = a.login();
    assert_eq!(parsed(&ack, "friends")[0]["id"], bob.id, "{ack}");
    assert_eq!(parsed(&ack, "groups")[0]["groupname"], "g", "{ack}");
}

/// A client that opts in with `"ext":1` gets an ACK (msgid 12) for each.
fn ext_client_gets_acks(b: &Backend) {
    let srv = b.start();
    let mut a = User::register(srv.addr(), "alice");
    let mut bob = User::online(srv.addr(), "bob");
    let mut carol = User::online(srv.addr(), "carol");
    a.c.send(&json!({"ext": 1, "id": a.id, "msgid": 1, "password": a.pw}));
    assert_eq!(a.c.expect_msgid(2)["errno"], 0);

    // The opt-in is sticky: later requests need not repeat it.
    a.c.send(&json!({"friendid": bob.id, "id": a.id, "msgid": 7}));
    assert_eq!(a.c.expect_ack(7, 0)["friendid"], bob.id);
    a.c.send(&json!({"friendid": bob.id, "id": a.id, "msgid": 7}));
    assert_eq!(a.c.expect_ack(7, 0)["friendid"], bob.id); // already friends: still ok
    a.c.send(&json!({"friendid": bob.id + 100, "id": a.id, "msgid": 7}));
    assert_eq!(a.c.expect_ack(7, 201)["friendid"], bob.id + 100);
    a.c.send(&json!({"friendid": a.id, "id": a.id, "msgid": 7}));
    a.c.expect_ack(7, 204);

    a.c.send(&json!({"groupdesc": "d", "groupname": "g", "id": a.id, "msgid": 8}));
    let ack = a.c.expect_ack(8, 0);
    let gid = ack["groupid"]
        .as_i64()
        .expect("groupid in the create-group ACK");
    assert_eq!(ack["groupname"], "g");
    a.c.send(&json!({"groupdesc": "d", "groupname": "g", "id": a.id, "msgid": 8}));
    let ack = a.c.expect_ack(8, 203);
    assert_eq!(ack["groupname"], "g");
    assert!(ack.get("groupid").is_none(), "{ack}");

    bob.c
        .send(&json!({"ext": 1, "groupid": gid, "id": bob.id, "msgid": 9}));
    assert_eq!(bob.c.expect_ack(9, 0)["groupid"], gid);
    bob.c
        .send(&json!({"ext": 1, "groupid": gid + 100, "id": bob.id, "msgid": 9}));
    assert_eq!(bob.c.expect_ack(9, 202)["groupid"], gid + 100);

    a.c.send(&json!({"id": a.id, "msg": "x", "msgid": 6, "toid": bob.id + 100}));
    assert_eq!(a.c.expect_ack(6, 201)["toid"], bob.id + 100);
    a.c.send(&json!({"groupid": gid + 100, "id": a.id, "msg": "x", "msgid": 10}));
    assert_eq!(a.c.expect_ack(10, 202)["groupid"], gid + 100);
    // Not a member: 205, and nothing reaches the members.
    carol
        .c
        .send(&json!({"ext": 1, "groupid": gid, "id": carol.id, "msg": "x", "msgid": 10}));
    assert_eq!(carol.c.expect_ack(10, 205)["groupid"], gid);
    // A successful chat gets no ACK, one-to-one or group.
    a.c.send(&json!({"groupid": gid, "id": a.id, "msg": "to the group", "msgid": 10}));
    assert_eq!(bob.c.expect_msgid(10)["msg"], "to the group");

    // The recipient never sees the sender's opt-in.
    a.c.send(&json!({"ext": 1, "id": a.id, "msg": "m", "msgid": 6, "time": TIME, "toid": bob.id}));
    expect_bytes(
        &mut bob.c,
        &format!(
            r#"{{"id":{},"msg":"m","msgid":6,"name":"alice","time":"{TIME}","toid":{}}}"#,
            a.id, bob.id
        ),
    );
    a.c.expect_quiet();
    bob.c.expect_quiet();
    carol.c.expect_quiet();

    a.c.logout(a.id);
    a.c.expect_ack(3, 0);
    a.c.expect_quiet();
    // After the ext logout, ext register failure carries an errmsg.
    a.c.send(&json!({"msgid": 4, "name": "bob", "password": "x"}));
    let v = a.c.expect_msgid(5);
    assert_eq!(v["errno"], 1);
    assert!(v["errmsg"].is_string(), "{v}");
}

/// Every LOGIN failure a legacy client can cause gets the legacy LOGIN_ACK, which it waits
/// for (the original client typed id 0 after bad input and hung on an ERROR frame); an
/// opted-in client gets the LOGIN_ACK with the protocol errno and the reason. REG alike.
#[test]
fn invalid_login_or_reg_gets_the_legacy_reply() {
    let b = Backend::sqlite();
    let srv = b.start();
    let mut c = Client::connect(srv.addr());
    let long = "p".repeat(257);
    let logins = [
        json!({"id": 0, "msgid": 1, "password": "p"}),
        json!({"id": -5, "msgid": 1, "password": "p"}),
        json!({"id": "22", "msgid": 1, "password": "p"}),
        json!({"id": 1.5, "msgid": 1, "password": "p"}),
        json!({"msgid": 1, "password": "p"}),
        json!({"id": 22, "msgid": 1}),
        json!({"id": 22, "msgid": 1, "password": 7}),
        json!({"id": 22, "msgid": 1, "password": long}),
    ];
    for req in &logins {
        c.send(req);
        expect_bytes(
            &mut c,
            r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#,
        );
    }
    for mut req in logins {
        req["ext"] = json!(1);
        c.send(&req);
        let v = c.expect_msgid(2);
        assert!(v["errno"] == 104 || v["errno"] == 105, "{req} got {v}");
        assert!(v["errmsg"].as_str().unwrap().contains("field"), "{v}");
    }
    for req in [
        json!({"msgid": 4, "name": ["n"], "password": "p"}),
        json!({"msgid": 4, "name": "n"}),
        json!({"msgid": 4, "name": "n", "password": long}),
    ] {
        c.send(&req);
        expect_bytes(&mut c, r#"{"errno":1,"msgid":5}"#);
    }
    c.send(&json!({"ext": 1, "msgid": 4, "password": "p"}));
    let v = c.expect_msgid(5);
    assert_eq!(v["errno"], 1, "{v}");
    assert!(v["errmsg"].as_str().unwrap().contains("name"), "{v}");
    // The connection still logs in.
    let id = c.register("fine", "pw");
    c.login_ok(id, "pw");
}

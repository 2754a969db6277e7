//! The admin listener (`--admin-addr`): health and readiness as dependencies come
//! and go, Prometheus metrics that parse and move with traffic, and the admin routes
//! behind the bearer token (list, kick on another node).
//!
//! Readiness runs against a private `redis-server` and a private `mariadbd` (never
//! the machine's shared ones), which the test kills and starts again.

mod cluster_util;
mod hardening_util;
mod util;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chat::admin::AdminOptions;
use chat::bus::BusConfig;
use chat::gateway::Limits;
use chat::server::ServerOptions;
use chat::server_thread::ServerThread;
use chat::store::OfflineLimits;
use serde_json::{json, Value};

use hardening_util::mariadb::MariaDb;
use hardening_util::{require_binary, unique};
use util::{frame_bytes, one_chat, poll, Backend, Client, User};

const TOKEN: &str = "test-admin-token";

/// Options with the admin listener on a free loopback port.
fn with_admin(token: Option<&str>, bus: Option<BusConfig>) -> ServerOptions {
    ServerOptions {
        admin: Some(AdminOptions {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: token.map(str::to_owned),
        }),
        bus,
        ..ServerOptions::default()
    }
}

fn bus(url: &str, prefix: &str, node: &str) -> Option<BusConfig> {
    Some(BusConfig {
        url: url.to_owned(),
        prefix: prefix.to_owned(),
        node_id: node.to_owned(),
        node_ttl: Duration::from_secs(2),
        wait: Default::default(),
    })
}

/// One HTTP/1.1 request with `Connection: close`; returns (status, body). Every
/// read and write has a timeout.
fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_owned())
}

fn admin(srv: &ServerThread) -> SocketAddr {
    srv.admin_addr().expect("the admin listener runs")
}

/// Scrapes `/metrics` and parses it with a Prometheus text parser: metric name plus
/// sorted labels → value.
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http(addr, "GET", "/metrics", None);
    assert_eq!(status, 200, "{body}");
    let lines = body.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                other => panic!("unexpected sample {other:?}"),
            };
            (format!("{}{{{}}}", s.metric, labels.join(",")), v)
        })
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// With `--ws-addr`, `/metrics` counts the WebSocket listener's connections apart
/// (`chat_connections` is the TCP listener's); without it the gauge is absent.
#[test]
fn metrics_count_websocket_connections() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let plain = b.start_with(with_admin(None, None));
    assert!(!scrape(admin(&plain)).contains_key("chat_websocket_connections{}"));
    let srv = b.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..with_admin(None, None)
    });
    let addr = admin(&srv);
    let ws = srv.ws_addr().expect("the WebSocket listener's address");
    assert_eq!(get(&scrape(addr), "chat_websocket_connections{}"), 0.0);
    // Connections that have not sent their HTTP request yet count too.
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(ws).expect("connect"))
        .collect();
    poll(
        Duration::from_secs(5),
        "3 WebSocket-listener connections",
        || (get(&scrape(addr), "chat_websocket_connections{}") == 3.0).then_some(()),
    );
    assert_eq!(get(&scrape(addr), "chat_connections{}"), 0.0);
    drop(held);
    poll(Duration::from_secs(5), "their close counted", || {
        (get(&scrape(addr), "chat_websocket_connections{}") == 0.0).then_some(())
    });
}

/// `/metrics` parses, and its counters move with the traffic that went through.
#[test]
fn metrics_parse_and_move_with_traffic() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(with_admin(None, None));
    let addr = admin(&srv);
    assert_eq!(http(addr, "GET", "/healthz", None).0, 200);
    let before = scrape(addr);
    let mut a = User::online(srv.addr(), "ann");
    let mut z = User::register(srv.addr(), "zed"); // offline: its chats are stored
    let mut bob = User::online(srv.addr(), "bob");
    for i in 0..3 {
        a.chat(bob.id, &format!("live {i}"));
        bob.c.expect_msgid(6);
    }
    a.chat(z.id, "stored");
    a.c.barrier();
    // A HISTORY_ACK carries chat frames (msgid 6) inside: it counts as 24.
    bob.c
        .send(&json!({"msgid": 23, "id": bob.id, "peer": a.id, "limit": 10}));
    assert_eq!(
        bob.c.expect_msgid(24)["msgs"].as_array().map(Vec::len),
        Some(3)
    );
    let mut bad = Client::connect(srv.addr());
    bad.send(&json!({"msgid": 1, "id": "x"})); // a BAD_FIELD protocol error
    bad.recv();
    z.c.login(z.id, "wrong password");
    // The worker bumps the login counters just after it sent the reply.
    let after = poll(Duration::from_secs(5), "the failed login counted", || {
        let m = scrape(addr);
        let failed = "chat_logins_total{result=failed}";
        (get(&m, failed) > get(&before, failed)).then_some(m)
    });
    let moved = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(moved("chat_logins_total{result=ok}"), 2.0, "{after:?}");
    assert_eq!(moved("chat_logins_total{result=failed}"), 1.0);
    assert_eq!(moved("chat_chats_total{outcome=local}"), 3.0);
    assert_eq!(moved("chat_chats_total{outcome=stored}"), 1.0);
    assert_eq!(moved("chat_frames_in_total{msgid=6}"), 4.0);
    assert_eq!(moved("chat_frames_out_total{msgid=6}"), 3.0);
    assert_eq!(moved("chat_frames_out_total{msgid=24}"), 1.0);
    assert_eq!(moved("chat_protocol_errors_total{errno=105}"), 1.0);
    assert_eq!(get(&after, "chat_users_online{}"), 2.0);
    assert_eq!(get(&after, "chat_connections{}"), 4.0);
    assert_eq!(get(&after, "chat_offline_backlog{}"), 1.0);
    assert!(moved("chat_bytes_in_total{}") > 100.0);
    assert!(moved("chat_bytes_out_total{}") > 100.0);
    assert!(get(&after, "chat_db_pool_checkouts_total{}") > 0.0);
    assert_eq!(after.get("chat_history_unkept_total{}"), Some(&0.0));
    drop(z);
}

/// A group chat counts each member it reached: live here, stored, and (with no
/// bus) nothing routed to another node; one whose members are all online stores
/// nothing and is confirmed. (Checked: with `send_many`'s counts `routed - missed`
/// turned into `+` or `/`, or `stored - refused` into `/` (0 / 0 panics the job:
/// the worker survives, the confirmation is lost), this fails.)
#[test]
fn group_chat_counts_each_member() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(with_admin(None, None));
    let addr = admin(&srv);
    let mut ann = User::online(srv.addr(), "ann");
    let mut bob = User::online(srv.addr(), "bob");
    let mut cy = User::online(srv.addr(), "cy");
    let gid = ann.create_group("g");
    bob.join_group(gid);
    cy.join_group(gid);
    let counts = |m: &HashMap<String, f64>| {
        ["local", "stored", "remote"].map(|o| get(m, &format!("chat_chats_total{{outcome={o}}}")))
    };
    let moved = |before: [f64; 3], what: &str, want: [f64; 3]| {
        poll(Duration::from_secs(5), what, || {
            let now = counts(&scrape(addr));
            let d = [0, 1, 2].map(|i| now[i] - before[i]);
            (d == want).then_some(())
        })
    };
    let before = counts(&scrape(addr));
    // With a cid, ann (opted in by the create) gets the counts confirmed.
    let mut g = util::group_chat(ann.id, "ann", gid, "all here");
    g["cid"] = json!(1);
    ann.c.send(&g);
    let ack = ann.c.expect_ack(10, 0);
    assert_eq!(
        (&ack["delivered"], &ack["stored"]),
        (&json!(2), &json!(0)),
        "{ack}"
    );
    for u in [&mut bob, &mut cy] {
        assert_eq!(u.c.expect_msgid(10)["msg"], "all here");
    }
    moved(before, "2 local, 0 stored, 0 remote", [2.0, 0.0, 0.0]);
    cy.c.logout(cy.id);
    cy.c.barrier();
    let before = counts(&scrape(addr));
    ann.group_chat(gid, "cy is away");
    assert_eq!(bob.c.expect_msgid(10)["msg"], "cy is away");
    ann.c.barrier();
    moved(before, "1 local, 1 stored, 0 remote", [1.0, 1.0, 0.0]);
    assert_eq!(b.stored_for(cy.id), 1);
}

/// Admin routes are refused without the token (403 when none is configured, 401
/// for a missing or wrong one) and served with it; health routes need none.
#[test]
fn admin_routes_need_the_token() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let off = b.start_with(with_admin(None, None));
    let (status, _) = http(admin(&off), "GET", "/admin/users", Some(TOKEN));
    assert_eq!(status, 403, "no token configured: admin routes disabled");
    drop(off);

    let srv = b.start_with(with_admin(Some(TOKEN), None));
    let addr = admin(&srv);
    let u = User::online(srv.addr(), "uma");
    // Two users, so that a list of user 1 alone (the first id) is not the answer.
    let v = User::online(srv.addr(), "vic");
    for (method, path) in [("GET", "/admin/users"), ("GET", "/admin/nodes")] {
        assert_eq!(
            http(addr, method, path, None).0,
            401,
            "{path} without a token"
        );
        assert_eq!(http(addr, method, path, Some("wrong")).0, 401);
    }
    let kick = format!("/admin/users/{}/kick", u.id);
    assert_eq!(http(addr, "POST", &kick, Some("wrong")).0, 401);
    assert_eq!(http(addr, "GET", "/readyz", None).0, 200);
    let (status, body) = http(addr, "GET", "/admin/users", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list["users"],
        json!([{"id": u.id, "name": "uma"}, {"id": v.id, "name": "vic"}])
    );
    drop((u, v));
}

/// A kick revokes the user's resume token: the kicked client cannot simply resume.
#[test]
fn kick_revokes_the_resume_token() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(with_admin(Some(TOKEN), None));
    let mut u = User::register(srv.addr(), "rita");
    u.c.send(&json!({"ext": 1, "id": u.id, "msgid": 1, "password": u.pw}));
    let token = u.c.expect_msgid(2)["token"].as_str().unwrap().to_owned();
    let kick = format!("/admin/users/{}/kick", u.id);
    assert_eq!(http(admin(&srv), "POST", &kick, Some(TOKEN)).0, 200);
    u.c.expect_error(135, None);
    let mut c = Client::connect(srv.addr());
    c.send(&json!({"ext": 1, "id": u.id, "msgid": 17, "token": token}));
    assert_eq!(c.expect_msgid(18)["errno"], 120);
}

/// A kick sent to node 1 for a user on node 2 goes through the bus: the user gets
/// the error frame (errno 135), then the connection closes; the node lists and the
/// cluster's user list show where everyone is.
#[test]
fn kick_closes_the_connection_on_another_node() {
    require_binary("redis-server");
    let b = Backend::mysql();
    let _ = chat::password::set_cost(1024, 1);
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("adm_{}", unique());
    let n1 = b.start_with(with_admin(
        Some(TOKEN),
        bus(&redis.url(), &prefix, "adm-n1"),
    ));
    let n2 = b.start_with(with_admin(
        Some(TOKEN),
        bus(&redis.url(), &prefix, "adm-n2"),
    ));
    let mut u = User::online(n2.addr(), "kate");
    let other = User::online(n1.addr(), "olga");

    let (status, body) = http(admin(&n1), "GET", "/admin/users?scope=cluster", Some(TOKEN));
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut users = v["users"].as_array().unwrap().clone();
    users.sort_by_key(|u| u["id"].as_i64());
    assert_eq!(
        users,
        vec![
            json!({"id": u.id, "node": "adm-n2"}),
            json!({"id": other.id, "node": "adm-n1"})
        ]
    );
    let (_, body) = http(admin(&n1), "GET", "/admin/nodes", Some(TOKEN));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["nodes"],
        json!([{"id": "adm-n1", "alive": true, "users": 1},
               {"id": "adm-n2", "alive": true, "users": 1}])
    );

    let (status, body) = http(
        admin(&n1),
        "POST",
        &format!("/admin/users/{}/kick", u.id),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["node"],
        "adm-n2"
    );
    u.c.expect_error(135, None);
    u.c.expect_eof();
    // The user is free again: a new login on node 1 succeeds.
    let mut again = Client::connect(n1.addr());
    poll(Duration::from_secs(10), "kate can log in again", || {
        (again.login(u.id, &u.pw)["errno"] == 0).then_some(())
    });
    let (status, _) = http(admin(&n2), "POST", "/admin/users/999999/kick", Some(TOKEN));
    assert_eq!(status, 404, "nobody to kick");
    // The cluster's presence puts a user on node 1 whose hub has no session for
    // them (a release that failed, waiting for the keeper): a kick through node 1
    // finds nobody here and answers 404, instead of sending the kick to itself.
    let mut r = cluster_util::redis_con(&redis.url()).expect("connect to redis");
    redis::cmd("HSET")
        .arg(format!("{prefix}:online"))
        .arg(999_998)
        .arg("adm-n1")
        .query::<i64>(&mut r)
        .expect("set the presence by hand");
    let (status, body) = http(admin(&n1), "POST", "/admin/users/999998/kick", Some(TOKEN));
    assert_eq!(
        status, 404,
        "a user this node's presence has, not its hub: {body}"
    );
    drop(other);
}

/// Cross-node one-to-one chats from many senders at once go through Redis in
/// batches: fewer route calls (round trips) than frames, each pair's frames in order.
/// (Checked: with batches capped at one frame, `route_batch::MAX_FRAMES = 1`, the
/// call count equals the frame count and this fails.)
#[test]
fn cross_node_chats_share_route_round_trips() {
    require_binary("redis-server");
    let b = Backend::mysql();
    let _ = chat::password::set_cost(1024, 1);
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("adm_{}", unique());
    let n1 = b.start_with(with_admin(None, bus(&redis.url(), &prefix, "batch-n1")));
    let n2 = b.start_with(with_admin(None, bus(&redis.url(), &prefix, "batch-n2")));
    const PAIRS: usize = 20;
    const EACH: usize = 25;
    let mut senders: Vec<User> = (0..PAIRS)
        .map(|i| User::online(n1.addr(), &format!("bs{i}")))
        .collect();
    let mut readers: Vec<User> = (0..PAIRS)
        .map(|i| User::online(n2.addr(), &format!("br{i}")))
        .collect();
    let before = scrape(admin(&n1));
    // Every sender's frames are written at once: they queue on the node together.
    for (s, r) in senders.iter_mut().zip(&readers) {
        for k in 0..EACH {
            s.chat(r.id, &format!("m{k}"));
        }
    }
    for (s, r) in senders.iter().zip(readers.iter_mut()) {
        for k in 0..EACH {
            let v = r.c.expect_msgid(6);
            assert_eq!(v["msg"], format!("m{k}"), "{} → {}: {v}", s.id, r.id);
        }
    }
    let after = scrape(admin(&n1));
    let moved = |k: &str| get(&after, k) - get(&before, k);
    let frames = moved("chat_bus_routed_frames_total{}");
    let calls = moved("chat_bus_route_calls_total{}");
    assert_eq!(frames, (PAIRS * EACH) as f64, "{after:?}");
    assert!(
        calls <= frames / 2.0,
        "{calls} route calls for {frames} frames: not batched"
    );
}

/// Two nodes on a private `redis-server` sharing one MySQL backend (dropped with
/// it), with the admin listener on both, no request rate limit and an offline
/// store that takes a whole burst (the limits are not what these tests are about).
fn two_batching_nodes(
    tag: &str,
) -> (
    cluster_util::RedisServer,
    Backend,
    ServerThread,
    ServerThread,
) {
    require_binary("redis-server");
    let b = Backend::mysql();
    let _ = chat::password::set_cost(1024, 1);
    let redis = cluster_util::RedisServer::start();
    let prefix = format!("{tag}_{}", unique());
    let node = |n: u32| ServerOptions {
        limits: Limits {
            rate: 0,
            ..Limits::default()
        },
        offline: OfflineLimits {
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
            sender_percent: 100,
        },
        ..with_admin(None, bus(&redis.url(), &prefix, &format!("{tag}-n{n}")))
    };
    let n1 = b.start_with(node(1));
    let n2 = b.start_with(node(2));
    (redis, b, n1, n2)
}

/// One sender's cross-node chats do not wait for each other's round trip: the
/// strand goes on with its next ONE_CHAT while the earlier ones are with the route
/// batcher, so one sender's burst shares route calls, and arrives in order.
/// (Checked: with the strand suspended until each frame is routed, as before,
/// every frame is a route call of its own: "200 route calls for 200 frames".)
#[test]
fn one_senders_burst_shares_route_round_trips() {
    burst_shares_route_round_trips("burst", false);
}

/// [`one_senders_burst_shares_route_round_trips`] for chats the IO loop does not
/// make into jobs itself (`ext` and `cid`: parsed in full, a request job each),
/// which go on beside the routed ones all the same; a PING right behind them
/// waits for them and is answered after every confirmation. (Mutation testing:
/// with `Strand::runs_beside_routes` not taking a parsed ONE_CHAT, each waited
/// for the one before: "200 route calls for 200 frames"; with it taking every
/// job, or `Session::pop` not waiting for routed frames, the PONG came first:
/// "expected an ACK, got {"msgid":14}".)
#[test]
fn one_senders_parsed_chats_share_route_round_trips() {
    burst_shares_route_round_trips("burstx", true);
}

fn burst_shares_route_round_trips(tag: &str, ext: bool) {
    let (_redis, _b, n1, n2) = two_batching_nodes(tag);
    const N: usize = 200;
    let mut s = User::online(n1.addr(), &format!("{tag}_s"));
    let mut r = User::online(n2.addr(), &format!("{tag}_r"));
    let before = scrape(admin(&n1));
    let mut burst: Vec<u8> = (0..N)
        .flat_map(|k| {
            let mut v = one_chat(s.id, &s.name, r.id, &format!("m{k}"));
            if ext {
                v["ext"] = json!(1);
                v["cid"] = json!(k);
            }
            frame_bytes(&v)
        })
        .collect();
    if ext {
        // A PING right behind the chats: answered after their confirmations.
        burst.extend_from_slice(b"{\"msgid\":13}\0");
    }
    s.c.send_raw(&burst);
    for k in 0..N {
        let v = r.c.expect_msgid(6);
        assert_eq!(v["msg"], format!("m{k}"), "{v}");
    }
    if ext {
        for k in 0..N {
            assert_eq!(
                s.c.expect_ack(6, 0)["cid"],
                json!(k),
                "confirmations in order"
            );
        }
        assert_eq!(
            s.c.recv(),
            json!({"msgid": 14}),
            "PONG after every confirmation"
        );
    }
    s.c.barrier();
    let after = scrape(admin(&n1));
    let moved = |k: &str| get(&after, k) - get(&before, k);
    let frames = moved("chat_bus_routed_frames_total{}");
    let calls = moved("chat_bus_route_calls_total{}");
    assert_eq!(frames, N as f64, "{after:?}");
    assert!(
        calls <= frames / 2.0,
        "{calls} route calls for {frames} frames: one sender's frames wait for each other"
    );
}

/// While a sender's frames are with the route batcher, its requests keep their
/// order: confirmations come in request order whether a chat went to another
/// node or to a user here, each recipient gets its frames in order, and a PING
/// is answered after every confirmation before it. (Checked: with a chat for a
/// user here run at once instead of after the routed ones, its confirmation
/// overtakes theirs.)
#[test]
fn replies_keep_request_order_behind_routed_chats() {
    let (_redis, _b, n1, n2) = two_batching_nodes("order");
    const N: i64 = 60;
    let mut s = User::online(n1.addr(), "order_s");
    let mut far = User::online(n2.addr(), "order_far");
    let mut near = User::online(n1.addr(), "order_near");
    let mut burst = Vec::new();
    for k in 0..N {
        // Runs of two far, one near, so that near chats meet routed ones in flight.
        let to = if k % 3 == 2 { near.id } else { far.id };
        let mut v = one_chat(s.id, &s.name, to, &format!("m{k}"));
        v["ext"] = json!(1);
        v["cid"] = json!(k);
        burst.extend(frame_bytes(&v));
    }
    burst.extend_from_slice(b"{\"msgid\":13}\0");
    s.c.send_raw(&burst);
    for k in 0..N {
        let ack = s.c.expect_ack(6, 0);
        assert_eq!(ack["cid"], json!(k), "confirmations out of order: {ack}");
        assert_eq!(ack["delivered"], json!(1), "{ack}");
    }
    assert_eq!(
        s.c.recv(),
        json!({"msgid": 14}),
        "PONG after every confirmation"
    );
    for (who, want) in [(&mut far, 0), (&mut near, 2)] {
        for k in (0..N).filter(|k| (k % 3 == 2) == (want == 2)) {
            let v = who.c.expect_msgid(6);
            assert_eq!(v["msg"], format!("m{k}"), "{v}");
        }
        who.c.barrier();
    }
}

/// A sender's frames for a user who logs in on the other node in the middle of
/// the burst reach that user in the order sent, each once: those the bus found no
/// node for are stored before any later one goes live. The login comes once the
/// first part's frames are being stored. (The window in which a later frame could
/// overtake a stored one, the route batcher's hold on frames behind an unfinished
/// one, is a few milliseconds wide: with the hold removed this still passed 7 of
/// 7 runs. It guards order and loss across the login, which the rate limit hid
/// before it was turned off here: "2472 of 3000 arrived".)
#[test]
fn a_burst_across_the_recipients_login_arrives_in_order() {
    let (_redis, b, n1, n2) = two_batching_nodes("login");
    const N: usize = 3000;
    let mut s = User::online(n1.addr(), "login_s");
    let mut r = User::register(n2.addr(), "login_r");
    let burst: Vec<u8> = (0..N)
        .flat_map(|k| frame_bytes(&one_chat(s.id, &s.name, r.id, &format!("m{k}"))))
        .collect();
    let (half, rest) = burst.split_at(burst.len() / 3);
    s.c.send_raw(half);
    poll(Duration::from_secs(20), "the first frames stored", || {
        (b.stored_for(r.id) > 0).then_some(())
    });
    let ack = r.login();
    s.c.send_raw(rest);
    let mut got: Vec<String> = util::offline_msgs(&ack);
    while got.len() < N {
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.c.expect_msgid(6)));
        let Ok(v) = next else {
            let seen: std::collections::HashSet<&String> = got.iter().collect();
            let missing: Vec<usize> = (0..N)
                .filter(|k| !seen.contains(&format!("m{k}")))
                .collect();
            panic!(
                "{} of {N} arrived ({} in the login reply, {} stored now); missing {:?}…",
                got.len(),
                util::offline_msgs(&ack).len(),
                b.stored_for(r.id),
                &missing[..missing.len().min(20)]
            );
        };
        got.push(v["msg"].as_str().unwrap().to_owned());
    }
    let want: Vec<String> = (0..N).map(|k| format!("m{k}")).collect();
    if got != want {
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        panic!(
            "out of order or repeated from index {first:?}: {:?}",
            &got[first.unwrap_or(0)..][..10.min(got.len())]
        );
    }
    r.c.barrier();
    s.c.barrier();
}

fn ready(addr: SocketAddr) -> (u16, String) {
    http(addr, "GET", "/readyz", None)
}

/// `/readyz` turns 503 when the node's Redis goes away, 200 after it is back; then
/// the same for its database.
#[test]
fn readyz_follows_redis_and_the_database() {
    require_binary("redis-server");
    let mut db = MariaDb::start();
    let mut redis = cluster_util::RedisServer::start();
    let prefix = format!("rdy_{}", unique());
    let srv = ServerThread::start(
        "127.0.0.1:0".parse().unwrap(),
        &db.url("chat"),
        with_admin(None, bus(&redis.url(), &prefix, "rdy-n1")),
    )
    .expect("node on the private MariaDB and Redis");
    let addr = admin(&srv);
    let limit = Duration::from_secs(30);
    poll(limit, "ready at start", || {
        (ready(addr).0 == 200).then_some(())
    });

    let outage = |what: &str, up: &mut dyn FnMut(bool)| {
        up(false);
        let body = poll(limit, &format!("503 without {what}"), || {
            let (s, b) = ready(addr);
            (s == 503).then_some(b)
        });
        assert!(body.contains(what), "{body}");
        assert_eq!(
            http(addr, "GET", "/healthz", None).0,
            200,
            "alive all the same"
        );
        up(true);
        poll(limit, &format!("ready once {what} is back"), || {
            (ready(addr).0 == 200).then_some(())
        });
    };
    outage("redis", &mut |on| {
        if on {
            redis.restart()
        } else {
            redis.kill()
        }
    });
    outage("database", &mut |on| {
        if on {
            db.restart()
        } else {
            db.kill()
        }
    });
}

/// Frames the server cannot attribute to a msgid are counted as
/// `chat_frames_in_total{msgid=other}`, never as a LOGIN (msgid 1): on TCP a frame
/// that is not JSON, an object without a msgid, a frame cut short by a NUL and a
/// stray start byte (fatal); on the WebSocket listener a binary message and an
/// oversize one (fatal). (Mutation testing: each of the gateway's `frame_in(-1)`
/// and its `-1` defaults turned into `1` passed every other test.)
#[test]
fn unreadable_frames_count_as_other() {
    let _ = chat::password::set_cost(1024, 1);
    let b = Backend::sqlite();
    let srv = b.start_with(ServerOptions {
        ws_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..with_admin(None, None)
    });
    let addr = admin(&srv);
    let before = scrape(addr);
    let mut c = Client::connect(srv.addr());
    for bad in [
        &b"{\"msgid\":13,}\0"[..],
        b"{\"x\":1}\0",
        b"{\"msgid\":13\0",
    ] {
        c.send_raw(bad);
        let v = c.recv();
        assert_eq!(v["msgid"], 11, "{v}");
    }
    c.barrier();
    let mut garbage = Client::connect(srv.addr());
    garbage.send_raw(b"xyz\0");
    let v = garbage.recv();
    assert_eq!(v["msgid"], 11, "{v}");
    garbage.expect_eof();

    let ws = srv.ws_addr().unwrap();
    let stream = TcpStream::connect(ws).unwrap();
    stream.set_read_timeout(Some(util::TIMEOUT)).unwrap();
    let (mut sock, _) =
        tungstenite::client::client(format!("ws://{ws}/ws"), stream).expect("an upgrade");
    let mut error_after = |m: tungstenite::Message| {
        sock.send(m).unwrap();
        loop {
            match sock.read().expect("a reply") {
                tungstenite::Message::Text(t) => {
                    return serde_json::from_str::<Value>(t.as_str()).unwrap()
                }
                tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    };
    let v = error_after(tungstenite::Message::binary(b"{\"msgid\":13}".to_vec()));
    assert_eq!(v["msgid"], 11, "{v}");
    let v = error_after(tungstenite::Message::text("o".repeat(70 * 1024)));
    assert_eq!(v["errno"], 106, "{v}");

    // Each was counted on the IO loop before its reply was queued.
    let after = scrape(addr);
    let moved = |k: &str| get(&after, k) - get(&before, k);
    assert_eq!(moved("chat_frames_in_total{msgid=other}"), 6.0, "{after:?}");
    assert_eq!(moved("chat_frames_in_total{msgid=1}"), 0.0, "{after:?}");
}

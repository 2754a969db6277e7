//! Login abuse over real sockets: the failed-login throttle (one node, and across
//! nodes through Redis). The hashing queue's fairness: `login_fairness.rs`.

mod util;

use std::time::Duration;

use chat::bus::BusConfig;
use chat::server::ServerOptions;
use chat::service::throttle::ThrottleConfig;
use serde_json::json;
use util::{expect_bytes, Backend, Client, User};

/// The legacy reply to a wrong id or password — and to a locked account.
const INVALID: &str = r#"{"errmsg":"id or password is invalid!","errno":1,"msgid":2}"#;

/// Cheap hashes: the hashing cost is not what these tests are about.
fn fast_hashes() {
    let _ = chat::password::set_cost(1024, 1);
}

/// Three free attempts, then a lock long enough that no slow machine sees it end.
fn throttle() -> ThrottleConfig {
    ThrottleConfig {
        free_attempts: 3,
        backoff_base: Duration::from_secs(60),
        backoff_max: Duration::from_secs(60),
    }
}

/// Three wrong passwords lock the account: the right one is then refused with the
/// legacy bytes (an opted-in client gets errno 114 and `retryafter`), other accounts
/// log in as usual, and an unknown id is locked the same way (a lock tells nothing).
#[test]
fn failed_logins_lock_the_account() {
    fast_hashes();
    let b = Backend::sqlite();
    let srv = b.start_with(ServerOptions {
        throttle: throttle(),
        ..ServerOptions::default()
    });
    let alice = User::register(srv.addr(), "alice");
    let mut bob = User::register(srv.addr(), "bob");
    let mut c = Client::connect(srv.addr());
    for _ in 0..3 {
        c.send(&json!({"id": alice.id, "msgid": 1, "password": "guess"}));
        expect_bytes(&mut c, INVALID);
    }
    c.send(&json!({"id": alice.id, "msgid": 1, "password": alice.pw}));
    expect_bytes(&mut c, INVALID);
    let mut ext = Client::connect(srv.addr());
    ext.send(&json!({"ext": 1, "id": alice.id, "msgid": 1, "password": alice.pw}));
    let v = ext.expect_msgid(2);
    assert_eq!(v["errno"], 114, "{v}");
    let retry = v["retryafter"].as_u64().unwrap_or(0);
    assert!((1..=60).contains(&retry), "{v}");
    // Others are not affected.
    bob.login();
    // An id nobody has: the same bytes, the same lock.
    for _ in 0..4 {
        c.send(&json!({"id": 987_654_321, "msgid": 1, "password": "guess"}));
        expect_bytes(&mut c, INVALID);
    }
    ext.send(&json!({"ext": 1, "id": 987_654_321, "msgid": 1, "password": "x"}));
    assert_eq!(ext.expect_msgid(2)["errno"], 114);
}

/// Deletes the test's Redis keys when dropped.
struct RedisKeys(String);

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let deleted = redis::Client::open("redis://127.0.0.1:6379")
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(3)))
            .and_then(|mut con| {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}:*", self.0))
                    .query(&mut con)?;
                if !keys.is_empty() {
                    redis::cmd("DEL").arg(keys).query::<()>(&mut con)?;
                }
                Ok(())
            });
        if let Err(e) = deleted {
            eprintln!("could not delete Redis keys {}:*: {e}", self.0);
        }
    }
}

/// In a cluster the count is shared: failures on one node lock the account on the
/// other; a success there (before the lock) resets it for both.
#[test]
fn the_lock_is_cluster_wide_through_redis() {
    fast_hashes();
    let b = Backend::mysql();
    let prefix = format!("logintest_{}", std::process::id());
    let _keys = RedisKeys(prefix.clone());
    let node = |id: &str| {
        b.start_with(ServerOptions {
            throttle: throttle(),
            bus: Some(BusConfig {
                url: "redis://127.0.0.1:6379".into(),
                prefix: prefix.clone(),
                node_id: format!("{prefix}_{id}"),
                node_ttl: Duration::from_secs(5),
                wait: Default::default(),
            }),
            ..ServerOptions::default()
        })
    };
    let (n1, n2) = (node("a"), node("b"));
    let mut carol = User::register(n1.addr(), "carol");
    let alice = User::register(n1.addr(), "alice");
    let mut c1 = Client::connect(n1.addr());
    let mut c2 = Client::connect(n2.addr());
    // Two failures on node 1, a success on node 2: the count starts again.
    for _ in 0..2 {
        c1.send(&json!({"id": carol.id, "msgid": 1, "password": "guess"}));
        expect_bytes(&mut c1, INVALID);
    }
    c2.login_ok(carol.id, &carol.pw);
    c2.logout(carol.id);
    c2.barrier();
    for _ in 0..2 {
        c1.send(&json!({"id": carol.id, "msgid": 1, "password": "guess"}));
        expect_bytes(&mut c1, INVALID);
    }
    carol.login();
    // Three failures on node 1 lock alice on node 2.
    for _ in 0..3 {
        c1.send(&json!({"id": alice.id, "msgid": 1, "password": "guess"}));
        expect_bytes(&mut c1, INVALID);
    }
    c2.send(&json!({"ext": 1, "id": alice.id, "msgid": 1, "password": alice.pw}));
    let v = c2.expect_msgid(2);
    assert_eq!(v["errno"], 114, "{v}");
    assert!(v["retryafter"].as_u64().is_some_and(|s| s > 0), "{v}");
}

//! The MySQL store's connection handling: the circuit breaker in front of the pool
//! (through a gate, a TCP relay to the test server that the test opens and shuts), the
//! retry of deadlock victims, the database-name check of `open`, and the isolation
//! level of the store's transactions.

use std::io;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use ::mysql::{IsolationLevel, TxOpts};

use super::{mysql_server, require_mysql, server_conn, DbGuard, FREE};
use crate::store::mysql::{retry_deadlock, MysqlStore};
use crate::store::social::{FriendRequest, SocialStore};
use crate::store::{open, open_with, Store, StoreError};

/// A relay on `127.0.0.1:0` to the test MySQL server. While open it relays each
/// connection; shut, it cuts the relayed ones and closes each new one at once (a
/// database that went away).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
    /// Both ends of every relayed connection, to cut them.
    relayed: Arc<Mutex<Vec<TcpStream>>>,
}

impl Gate {
    fn new() -> Gate {
        let opts = ::mysql::Opts::from_url(&mysql_server()).expect("CHAT_TEST_MYSQL_URL");
        let server = (opts.get_ip_or_hostname().to_string(), opts.get_tcp_port());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let gate = Gate {
            port: listener.local_addr().unwrap().port(),
            open: Arc::new(AtomicBool::new(true)),
            relayed: Arc::default(),
        };
        let (open, relayed) = (gate.open.clone(), gate.relayed.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let Ok(upstream) = TcpStream::connect((server.0.as_str(), server.1)) else {
                    continue;
                };
                let mut relayed = relayed.lock().unwrap();
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
                relayed.extend([client, upstream]);
            }
        });
        gate
    }

    /// A URL of `db` through the gate, with the test server's credentials (and TCP:
    /// the driver would otherwise switch to the server's Unix socket, past the gate).
    fn url(&self, db: &DbGuard) -> String {
        let opts = ::mysql::Opts::from_url(&mysql_server()).unwrap();
        let user = opts.get_user().unwrap_or("root");
        let pass = opts.get_pass().map(|p| format!(":{p}")).unwrap_or_default();
        format!(
            "mysql://{user}{pass}@127.0.0.1:{}/{}?prefer_socket=false",
            self.port, db.name
        )
    }

    fn shut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for s in self.relayed.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Longer than the breaker stays open (1 s), with a margin.
const PAST_BREAKER: Duration = Duration::from_millis(1300);

/// After a failed checkout the breaker is open: calls fail at once, without a
/// checkout; once it has been open a while one call probes the database, and when the
/// database is back the first probe closes the breaker for every call after it.
#[test]
fn mysql_breaker_fails_fast_probes_and_closes() {
    require_mysql();
    let gate = Gate::new();
    let db = DbGuard::new();
    let store = open_with(&gate.url(&db), 2).expect("open through the gate");
    store.ping().unwrap();
    let checkouts = || store.pool_wait().get().0;
    let unavailable = |r: Result<(), StoreError>| {
        assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    };

    gate.shut();
    let n = checkouts();
    unavailable(store.ping());
    assert_eq!(checkouts(), n + 1, "the failure was a checkout (5 s)");
    unavailable(store.ping());
    unavailable(store.offline_backlog().map(drop));
    assert_eq!(checkouts(), n + 1, "open breaker: no checkout");

    // Open a while: one call probes (and fails); the others meanwhile fail at once.
    std::thread::sleep(PAST_BREAKER);
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..2).map(|_| s.spawn(|| store.ping())).collect();
        for c in calls {
            unavailable(c.join().unwrap());
        }
    });
    assert_eq!(checkouts(), n + 2, "one probe of two calls");
    unavailable(store.ping());
    assert_eq!(checkouts(), n + 2, "the failed probe opened it again");

    // Back: a probe gets through (the pool's own connection attempts back off, so
    // the first probes may still miss it), and closes the breaker for every call after.
    gate.reopen();
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.ping().is_err() {
        assert!(Instant::now() < deadline, "the database never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let n = checkouts();
    for _ in 0..3 {
        store.ping().expect("closed: every call goes through");
        store.offline_backlog().unwrap();
    }
    assert_eq!(checkouts(), n + 6);
}

/// A deadlock victim (1213) or a failed auto-increment read (1467) is run again, up
/// to 8 attempts in all; any other error at once, as it is.
#[test]
fn deadlock_victims_are_retried_eight_times() {
    let server_error = |code| {
        ::mysql::Error::MySqlError(::mysql::MySqlError {
            state: "40001".into(),
            message: format!("error {code}"),
            code,
        })
    };
    for (code, fails, calls, ok) in [
        (1213, 3, 4, true),
        (1467, 7, 8, true),
        (1213, u32::MAX, 8, false),
        (1062, u32::MAX, 1, false),
        (1644, u32::MAX, 1, false),
    ] {
        let n = AtomicU32::new(0);
        let result = retry_deadlock(|| {
            let call = n.fetch_add(1, Ordering::SeqCst);
            assert!(call < 100, "retried forever");
            if call < fails {
                Err(server_error(code))
            } else {
                Ok(call)
            }
        });
        assert_eq!(n.into_inner(), calls, "{code} failing {fails} times");
        match result {
            Ok(last) => assert!(ok && last == calls - 1, "{code}: {last}"),
            Err(StoreError::Backend(msg)) => {
                assert!(!ok && msg.contains(&format!("error {code}")), "{msg}")
            }
            Err(other) => panic!("{other:?}"),
        }
    }
}

/// The database name is inlined in `CREATE DATABASE`: 1 to 64 ASCII letters, digits
/// or '_', checked before any connection (port 1 refuses the ones that pass).
#[test]
fn mysql_database_names_checked_before_connecting() {
    for (db, ok) in [
        ("a".repeat(64), true),
        ("a".repeat(65), false),
        ("Chat_2".into(), true),
        ("chat-2".into(), false),
        ("chat 2".into(), false),
        ("ch%C3%A4t".into(), false),
    ] {
        let result = open(&format!("mysql://root@127.0.0.1:1/{db}"));
        let config = matches!(result, Err(StoreError::Config(_)));
        assert_eq!(config, !ok, "{db}: {:?}", result.err());
    }
}

/// The isolation level of connection `conn_id`'s transaction (`INNODB_TRX`), polled
/// until it waits for a lock at an insert into `table`. The server answers from a
/// copy of its transaction list that it refreshes only once the copy went unread for
/// 100 ms: hence the slower poll, and the insert's table (a row of the previous wait
/// can still be in the copy).
fn waiting_isolation(watch: &mut ::mysql::Conn, conn_id: u64, table: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let level: Option<String> = watch
            .exec_first(
                "SELECT trx_isolation_level FROM information_schema.INNODB_TRX \
                 WHERE trx_mysql_thread_id = ? AND trx_state = 'LOCK WAIT' \
                 AND trx_query LIKE ?",
                (conn_id, format!("INSERT %INTO {table} %")),
            )
            .unwrap();
        if let Some(level) = level {
            return level;
        }
        assert!(
            Instant::now() < deadline,
            "the store's transaction never waited for the lock"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// The store's locking transactions run at REPEATABLE READ (the gap locks of their
/// `FOR UPDATE` reads) whatever the connection's own default: here the one pooled
/// connection's session reads committed, and each transaction is caught waiting at
/// its insert for a gap that the test holds, its level read from `INNODB_TRX`. A
/// transaction started without a level (`store_offline_many`'s) shows the session's.
#[test]
fn mysql_transactions_are_repeatable_read_whatever_the_session() {
    require_mysql();
    let db = DbGuard::new();
    let store = Arc::new(MysqlStore::open(&db.url(), 1).expect("open mysql"));
    let (a, b) = (
        store.register("ia", "p").unwrap().unwrap(),
        store.register("ib", "p").unwrap().unwrap(),
    );
    let conn_id: u64 = {
        let mut c = store.conn().unwrap();
        c.query_drop("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .unwrap();
        c.query_first("SELECT CONNECTION_ID()").unwrap().unwrap()
    };
    let mut holder = server_conn().unwrap();
    holder.select_db(&db.name).unwrap();
    let mut watch = server_conn().unwrap();
    // Holds the gap that `lock` reads (a repeatable read locks it), runs `call` on a
    // thread, and answers the level of the store's transaction waiting for that gap.
    let mut level_of = |table: &str, lock: &str, call: Box<dyn FnOnce() + Send>| {
        let opts = TxOpts::default().set_isolation_level(Some(IsolationLevel::RepeatableRead));
        let mut tx = holder.start_transaction(opts).unwrap();
        tx.query_drop(lock).unwrap();
        let waiting = std::thread::spawn(call);
        let level = waiting_isolation(&mut watch, conn_id, table);
        tx.commit().unwrap();
        waiting.join().unwrap();
        level
    };
    let s = store.clone();
    let level = level_of(
        "offlinemessage",
        &format!("SELECT id FROM offlinemessage WHERE userid = {b} FOR UPDATE"),
        Box::new(move || {
            let refused = s.store_offline_many(&[b], a, "m", &FREE).unwrap();
            assert_eq!(refused, Vec::<i64>::new());
        }),
    );
    assert_eq!(
        level, "READ COMMITTED",
        "a transaction without a level of its own reads as the session does"
    );
    let s = store.clone();
    let level = level_of(
        "friendrequest",
        &format!("SELECT toid FROM friendrequest WHERE fromid = {a} FOR UPDATE"),
        Box::new(move || {
            assert_eq!(s.request_friend(a, b).unwrap(), FriendRequest::Requested);
        }),
    );
    assert_eq!(
        level, "REPEATABLE READ",
        "request_friend sets its own level"
    );
    assert_eq!(store.take_offline(b).unwrap(), ["m"]);
    assert_eq!(store.friend_requests(b).unwrap(), [(a, "ia".to_owned())]);
}

//! One behaviour suite for every backend: each check takes `&dyn Store`, and
//! `backend_tests!` runs it against a fresh SQLite file and a fresh MySQL database.
//!
//! MySQL tests use `mysql://root@127.0.0.1:3306` (override: `CHAT_TEST_MYSQL_URL`, a server
//! URL without a database), create `chat_test_<pid>_<n>` and drop it afterwards. An
//! unreachable server fails them: there is no switch to skip them.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ::mysql::prelude::Queryable;

use super::mysql_schema::{conforms, create_table_sql, TABLES};
use super::*;
use crate::password::{self, Verified};

/// Distinguishes the databases and files of tests running in parallel.
fn unique_suffix() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}_{n}", std::process::id())
}

/// Removes an SQLite file and its WAL companions on drop.
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A store on a fresh SQLite file, deleted on drop (fields drop in order: store first).
/// Also used by other modules' unit tests (the history writer's).
pub(crate) struct SqliteDb {
    pub(crate) store: Arc<dyn Store>,
    _file: FileGuard,
}

impl SqliteDb {
    /// The database file.
    fn path(&self) -> &std::path::Path {
        &self._file.0
    }

    pub(crate) fn new() -> SqliteDb {
        let path = std::env::temp_dir().join(format!("chat_store_test_{}.db", unique_suffix()));
        let file = FileGuard(path.clone());
        let store = open_with(&format!("sqlite:{}", path.display()), 8).expect("open sqlite");
        SqliteDb { store, _file: file }
    }
}

/// The MySQL server the tests use.
fn mysql_server() -> String {
    let url = std::env::var("CHAT_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    url.trim_end_matches('/').to_owned()
}

/// Drops a test database on drop, even when the test panicked.
struct DbGuard {
    name: String,
}

impl DbGuard {
    fn new() -> DbGuard {
        DbGuard {
            name: format!("chat_test_{}", unique_suffix()),
        }
    }

    fn url(&self) -> String {
        format!("{}/{}", mysql_server(), self.name)
    }

    /// A raw connection to this database (made already), for what a test reads or
    /// changes behind the store's back.
    fn conn(&self) -> ::mysql::Conn {
        let mut c = server_conn().expect("connect to the test server");
        c.select_db(&self.name).expect("the test database");
        c
    }
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        let dropped = server_conn()
            .and_then(|mut c| c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.name)));
        if let Err(err) = dropped {
            eprintln!("could not drop test database {}: {err}", self.name);
        }
    }
}

/// A raw connection to the test server, no database selected.
fn server_conn() -> Result<::mysql::Conn, ::mysql::Error> {
    let opts = ::mysql::Opts::from_url(&mysql_server()).expect("CHAT_TEST_MYSQL_URL");
    let opts = ::mysql::OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(std::time::Duration::from_secs(3)))
        .init(vec!["SET NAMES utf8mb4"]);
    ::mysql::Conn::new(opts)
}

/// Panics when the test MySQL server is unreachable: a MySQL test never reports ok
/// without MySQL.
fn require_mysql() {
    if let Err(err) = server_conn() {
        panic!(
            "MySQL at {} is unreachable: {err} (run scripts/ensure-services.sh)",
            mysql_server()
        );
    }
}

/// A store on a fresh MySQL database, dropped on drop (fields drop in order: store first).
pub(crate) struct MysqlDb {
    pub(crate) store: Arc<dyn Store>,
    _db: DbGuard,
}

impl MysqlDb {
    pub(crate) fn new() -> MysqlDb {
        require_mysql();
        let db = DbGuard::new();
        let store = open_with(&db.url(), 8).expect("open mysql");
        MysqlDb { store, _db: db }
    }
}

/// No bound: these checks are about order and content.
const FREE: OfflineLimits = OfflineLimits {
    max_messages: u64::MAX,
    max_bytes: u64::MAX,
    sender_percent: 100,
};

/// Defines `sqlite::<check>` and `mysql::<check>` tests for each check below.
macro_rules! backend_tests {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $check() {
                let db = super::SqliteDb::new();
                super::$check(&*db.store);
            })*
        }
        mod mysql {
            $(#[test]
            fn $check() {
                let db = super::MysqlDb::new();
                super::$check(&*db.store);
            })*
        }
    };
}

pub(crate) mod history;
mod mysql_order;
mod mysql_pool;
mod mysql_schema;
mod names;
mod offline;
mod social;
mod sqlite_history;

backend_tests!(
    register_and_lookup,
    passwords,
    presence_state,
    friends,
    groups,
    offline_order,
    offline_special_and_large,
    take_offline_concurrent,
    resume_tokens,
    backlog_ping_and_pool_wait,
);

/// The readiness and metrics reads: `ping` answers, `offline_backlog` counts every
/// user's waiting messages, `pool_wait` counts the store's checkouts.
fn backlog_ping_and_pool_wait(store: &dyn Store) {
    store.ping().unwrap();
    assert_eq!(store.offline_backlog().unwrap(), 0);
    let (a, b) = (11, 12);
    for m in ["a1", "a2", "a3"] {
        store.store_offline(a, 0, m, &FREE).unwrap();
    }
    store.store_offline_many(&[a, b], 0, "ab", &FREE).unwrap();
    assert_eq!(store.offline_backlog().unwrap(), 5);
    assert_eq!(
        store.take_offline_batch(a, 2, usize::MAX).unwrap().0.len(),
        2
    );
    assert_eq!(store.offline_backlog().unwrap(), 3);
    let before = store.pool_wait().get().0;
    store.ping().unwrap();
    store.user_exists(a).unwrap();
    assert_eq!(
        store.pool_wait().get().0,
        before + 2,
        "one checkout per call"
    );
}

/// An insert that fails for another reason than a taken key (here a trigger that
/// `refuse` installs on each table makes it fail) is an error, never reported as
/// "name taken", "already friends" or "already a member".
fn failed_inserts_are_errors_not_duplicates(store: &dyn Store, refuse: impl FnOnce(&[&str])) {
    let a = store.register("fa", "p").unwrap().unwrap();
    let b = store.register("fb", "p").unwrap().unwrap();
    let g = store.create_group(a, "fg", "").unwrap().unwrap();
    refuse(&["user", "allgroup", "friend", "groupuser"]);
    let backend = |r: Result<String, StoreError>| match r {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("refused by"), "{msg}"),
        other => panic!("not a backend error: {other:?}"),
    };
    backend(store.register("fc", "p").map(|r| format!("{r:?}")));
    backend(store.create_group(a, "fg2", "").map(|r| format!("{r:?}")));
    backend(store.add_friend(a, b).map(|r| format!("{r:?}")));
    backend(store.join_group(b, g).map(|r| format!("{r:?}")));
}

#[test]
fn sqlite_failed_inserts_are_errors_not_duplicates() {
    let db = SqliteDb::new();
    failed_inserts_are_errors_not_duplicates(&*db.store, |tables| {
        let raw = rusqlite::Connection::open(&db._file.0).unwrap();
        for t in tables {
            raw.execute_batch(&format!(
                "CREATE TRIGGER refuse_{t} BEFORE INSERT ON {t} \
                 BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END;"
            ))
            .unwrap();
        }
    });
}

#[test]
fn mysql_failed_inserts_are_errors_not_duplicates() {
    let db = MysqlDb::new();
    failed_inserts_are_errors_not_duplicates(&*db.store, |tables| {
        let opts = ::mysql::Opts::from_url(&db._db.url()).unwrap();
        let mut raw = ::mysql::Conn::new(opts).unwrap();
        for t in tables {
            raw.query_drop(format!(
                "CREATE TRIGGER refuse_{t} BEFORE INSERT ON {t} FOR EACH ROW \
                 SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by a test trigger'"
            ))
            .unwrap();
        }
    });
}

/// The texts operators read (logs, `/readyz`'s body) say which failure it was.
#[test]
fn store_error_display() {
    let shown = [
        StoreError::Unavailable("no route".into()),
        StoreError::Backend("syntax".into()),
        StoreError::Config("bad url".into()),
    ]
    .map(|e| e.to_string());
    assert_eq!(
        shown,
        [
            "database unavailable: no route",
            "database error: syntax",
            "invalid store configuration: bad url",
        ]
    );
}

#[test]
fn pool_wait_counts_and_times_checkouts() {
    let wait = PoolWait::default();
    assert_eq!(wait.get(), (0, 0.0));
    let got = wait.time(|| {
        std::thread::sleep(std::time::Duration::from_millis(30));
        7
    });
    assert_eq!(got, 7);
    wait.time(|| ());
    let (checkouts, secs) = wait.get();
    assert_eq!(checkouts, 2);
    assert!((0.03..10.0).contains(&secs), "waited {secs} s");
}

/// One token per user: put replaces, rotate is a compare-and-swap, revoke deletes.
fn resume_tokens(store: &dyn Store) {
    let (a, b, c) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    assert_eq!(store.resume_token(7).unwrap(), None);
    store.put_resume_token(7, &a, 100).unwrap();
    store.put_resume_token(7, &b, 200).unwrap();
    assert_eq!(store.resume_token(7).unwrap(), Some((b.to_vec(), 200)));
    assert!(!store.rotate_resume_token(7, &a, &c, 300).unwrap(), "stale");
    assert!(store.rotate_resume_token(7, &b, &c, 300).unwrap());
    assert!(!store.rotate_resume_token(7, &b, &a, 400).unwrap(), "used");
    assert_eq!(store.resume_token(7).unwrap(), Some((c.to_vec(), 300)));
    store.put_resume_token(8, &a, 100).unwrap();
    store.revoke_resume_token(7).unwrap();
    assert_eq!(store.resume_token(7).unwrap(), None);
    assert!(
        !store.rotate_resume_token(7, &c, &a, 100).unwrap(),
        "revoked"
    );
    assert_eq!(store.resume_token(8).unwrap(), Some((a.to_vec(), 100)));
}

/// Names and texts that broke the legacy string-built SQL, or need utf8mb4.
const TRICKY: [&str; 6] = [
    "O'Brien \"q\" \\ back\\slash",
    "'; DROP TABLE user; --",
    "张三",
    "🦀 crab 😀",
    "it's \\' \\\" %_ ?",
    "{\"msg\":\"hi\"}",
];

fn register_and_lookup(store: &dyn Store) {
    let alice = store
        .register("alice", "h1")
        .unwrap()
        .expect("alice is new");
    assert_eq!(store.register("alice", "other").unwrap(), None);
    let bob = store.register("bob", "h2").unwrap().expect("bob is new");
    assert!(bob > alice);
    // Names compare exactly on both backends.
    let upper = store
        .register("Alice", "h3")
        .unwrap()
        .expect("Alice differs from alice");
    assert_ne!(upper, alice);
    assert_eq!(
        store.user(alice).unwrap(),
        Some(UserRow {
            id: alice,
            name: "alice".into(),
            password: "h1".into(),
            online: false,
        })
    );
    assert_eq!(store.user(999_999).unwrap(), None);
    assert!(store.user_exists(bob).unwrap());
    assert!(!store.user_exists(999_999).unwrap());
    for name in TRICKY {
        let id = store.register(name, name).unwrap().expect(name);
        let row = store.user(id).unwrap().unwrap();
        assert_eq!((row.name.as_str(), row.password.as_str()), (name, name));
        assert_eq!(store.register(name, "x").unwrap(), None, "{name} is taken");
    }
    // Length limits count characters, and both backends agree on them.
    let longest = "名".repeat(MAX_NAME_CHARS);
    assert!(store.register(&longest, "p").unwrap().is_some());
    assert_eq!(store.register(&format!("{longest}x"), "p").unwrap(), None);
    // Ids outside the backends' integer ranges are just unknown ids.
    for id in [i64::MAX, i64::MIN, -1, 0] {
        assert_eq!(store.user(id).unwrap(), None);
        assert!(!store.user_exists(id).unwrap());
    }
    // The emoji must not collide with other emoji (utf8mb4_bin, not a _ci collation).
    assert!(store.register("😁", "h").unwrap().is_some());
    assert!(store.register("😂", "h").unwrap().is_some());
}

fn passwords(store: &dyn Store) {
    let id = store.register("carol", "plain").unwrap().unwrap();
    assert_eq!(
        password::verify(&store.user(id).unwrap().unwrap().password, "plain"),
        Verified::OkLegacyPlaintext
    );
    let hashed = password::hash("plain");
    store.set_password(id, &hashed).unwrap();
    let stored = store.user(id).unwrap().unwrap().password;
    assert_eq!(stored, hashed);
    assert_eq!(password::verify(&stored, "plain"), Verified::Ok);
    for pw in TRICKY {
        store.set_password(id, pw).unwrap();
        assert_eq!(store.user(id).unwrap().unwrap().password, pw);
    }
    store.set_password(999_999, "x").unwrap();
}

fn presence_state(store: &dyn Store) {
    let ids: Vec<i64> = (0..4)
        .map(|i| store.register(&format!("u{i}"), "p").unwrap().unwrap())
        .collect();
    let online = |id: i64| store.user(id).unwrap().unwrap().online;
    for &id in &ids {
        store.set_state(id, true).unwrap();
        assert!(online(id));
    }
    store.set_state(ids[0], false).unwrap();
    assert!(!online(ids[0]));
    store.set_offline_many(&[]).unwrap();
    store.set_offline_many(&[ids[1], ids[2], 999_999]).unwrap();
    assert_eq!(
        ids.iter().map(|&id| online(id)).collect::<Vec<_>>(),
        [false, false, false, true]
    );
    store.set_all_offline().unwrap();
    assert!(ids.iter().all(|&id| !online(id)));
    store.set_state(999_999, true).unwrap();
}

fn friends(store: &dyn Store) {
    let a = store.register("a", "p").unwrap().unwrap();
    let b = store.register("b", "p").unwrap().unwrap();
    let c = store.register("c 张", "p").unwrap().unwrap();
    assert_eq!(store.add_friend(a, c).unwrap(), AddFriend::Added);
    assert_eq!(store.add_friend(a, b).unwrap(), AddFriend::Added);
    assert_eq!(store.add_friend(a, b).unwrap(), AddFriend::AlreadyFriends);
    assert_eq!(store.add_friend(a, 999_999).unwrap(), AddFriend::NoSuchUser);
    assert_eq!(
        store.friends(a).unwrap(),
        vec![(b, "b".to_owned()), (c, "c 张".to_owned())]
    );
    // One-directional, as legacy.
    assert_eq!(store.friends(b).unwrap(), vec![]);
    assert_eq!(store.add_friend(b, a).unwrap(), AddFriend::Added);
    assert_eq!(store.friends(b).unwrap(), vec![(a, "a".to_owned())]);
    assert_eq!(store.friends(999_999).unwrap(), vec![]);
    assert_eq!(
        store.add_friend(a, i64::MAX).unwrap(),
        AddFriend::NoSuchUser
    );
    assert_eq!(store.add_friend(a, -1).unwrap(), AddFriend::NoSuchUser);
    assert_eq!(store.friends(i64::MIN).unwrap(), vec![]);
}

/// A member row as the store returns it.
fn member(id: i64, name: &str, role: Role) -> MemberRow {
    MemberRow {
        id,
        name: name.to_owned(),
        role,
    }
}

fn groups(store: &dyn Store) {
    let a = store.register("ga", "p").unwrap().unwrap();
    let b = store.register("gb", "p").unwrap().unwrap();
    let c = store.register("gc", "p").unwrap().unwrap();
    let g1 = store
        .create_group(b, "devs", "the devs")
        .unwrap()
        .expect("new group");
    assert_eq!(store.create_group(a, "devs", "again").unwrap(), None);
    assert_eq!(store.join_group(a, g1).unwrap(), JoinGroup::Joined);
    assert_eq!(store.join_group(a, g1).unwrap(), JoinGroup::AlreadyMember);
    assert_eq!(store.join_group(b, g1).unwrap(), JoinGroup::AlreadyMember);
    assert_eq!(
        store.join_group(a, 999_999).unwrap(),
        JoinGroup::NoSuchGroup
    );
    let g2 = store
        .create_group(a, TRICKY[1], TRICKY[3])
        .unwrap()
        .unwrap();
    assert!(g2 > g1);
    assert_eq!(store.join_group(c, g2).unwrap(), JoinGroup::Joined);

    let devs = GroupRow {
        id: g1,
        name: "devs".into(),
        desc: "the devs".into(),
        members: vec![
            member(a, "ga", Role::Normal),
            member(b, "gb", Role::Creator),
        ],
    };
    let tricky = GroupRow {
        id: g2,
        name: TRICKY[1].into(),
        desc: TRICKY[3].into(),
        members: vec![
            member(a, "ga", Role::Creator),
            member(c, "gc", Role::Normal),
        ],
    };
    assert_eq!(
        store.groups_of(a).unwrap(),
        vec![devs.clone(), tricky.clone()]
    );
    assert_eq!(store.groups_of(b).unwrap(), vec![devs]);
    assert_eq!(store.groups_of(c).unwrap(), vec![tricky]);
    assert_eq!(store.groups_of(999_999).unwrap(), vec![]);
    assert_eq!(store.group_members(g1).unwrap(), Some(vec![a, b]));
    assert_eq!(store.group_members(g2).unwrap(), Some(vec![a, c]));
    assert_eq!(store.group_members(999_999).unwrap(), None);
    assert_eq!(
        store.join_group(a, i64::MAX).unwrap(),
        JoinGroup::NoSuchGroup
    );
    assert_eq!(store.group_members(i64::MIN).unwrap(), None);
    assert_eq!(store.groups_of(i64::MAX).unwrap(), vec![]);
    let (name, desc) = ("群".repeat(MAX_NAME_CHARS), "述".repeat(MAX_DESC_CHARS));
    assert!(store.create_group(c, &name, &desc).unwrap().is_some());
    assert_eq!(
        store.create_group(c, &format!("{name}x"), "").unwrap(),
        None
    );
    assert_eq!(
        store
            .create_group(c, "long desc", &format!("{desc}x"))
            .unwrap(),
        None
    );
    assert_eq!(store.groups_of(c).unwrap()[1].desc, desc);
    let empty = store.create_group(c, "empty desc", "").unwrap().unwrap();
    assert_eq!(store.groups_of(c).unwrap()[2].desc, "");
    assert_eq!(store.group_members(empty).unwrap(), Some(vec![c]));
}

fn offline_order(store: &dyn Store) {
    let a = store.register("oa", "p").unwrap().unwrap();
    let b = store.register("ob", "p").unwrap().unwrap();
    let c = store.register("oc", "p").unwrap().unwrap();
    assert_eq!(store.take_offline(a).unwrap(), Vec::<String>::new());
    for m in ["m1", "m2", "m3"] {
        store.store_offline(a, 0, m, &FREE).unwrap();
    }
    store.store_offline(b, 0, "for b", &FREE).unwrap();
    store
        .store_offline_many(&[c, a, b], 0, "fan", &FREE)
        .unwrap();
    store.store_offline_many(&[], 0, "nobody", &FREE).unwrap();
    store.store_offline(a, 0, "m4", &FREE).unwrap();
    assert_eq!(
        store.take_offline(a).unwrap(),
        ["m1", "m2", "m3", "fan", "m4"]
    );
    assert_eq!(store.take_offline(a).unwrap(), Vec::<String>::new());
    assert_eq!(store.take_offline(b).unwrap(), ["for b", "fan"]);
    store.store_offline(a, 0, "m5", &FREE).unwrap();
    assert_eq!(store.take_offline(a).unwrap(), ["m5"]);
    assert_eq!(store.take_offline(c).unwrap(), ["fan"]);

    // Batches: the oldest first, the rest kept in order for the next call.
    for m in ["b1", "b2", "b3", "b4", "b5"] {
        store.store_offline(a, 0, m, &FREE).unwrap();
    }
    store.store_offline(b, 0, "other", &FREE).unwrap();
    assert_eq!(
        store.take_offline_batch(a, 2, usize::MAX).unwrap().0,
        ["b1", "b2"]
    );
    store.store_offline(a, 0, "b6", &FREE).unwrap();
    assert_eq!(
        store.take_offline_batch(a, 3, usize::MAX).unwrap().0,
        ["b3", "b4", "b5"]
    );
    assert_eq!(
        store.take_offline_batch(a, 3, usize::MAX).unwrap().0,
        ["b6"]
    );
    assert_eq!(
        store.take_offline_batch(a, 3, usize::MAX).unwrap().0,
        Vec::<String>::new()
    );
    assert_eq!(store.take_offline(b).unwrap(), ["other"]);
}

fn offline_special_and_large(store: &dyn Store) {
    let a = store.register("sa", "p").unwrap().unwrap();
    for m in TRICKY {
        store.store_offline(a, 0, m, &FREE).unwrap();
    }
    let unit = "ab'\\\"张😀";
    let large: String = unit.repeat(100 * 1024 / unit.len() + 1);
    assert!(large.len() > 100 * 1024);
    store.store_offline(a, 0, &large, &FREE).unwrap();
    let mut expected: Vec<String> = TRICKY.iter().map(|m| m.to_string()).collect();
    expected.push(large.clone());
    assert_eq!(store.take_offline(a).unwrap(), expected);
    store.store_offline_many(&[a], 0, &large, &FREE).unwrap();
    assert_eq!(store.take_offline(a).unwrap(), [large]);
}

fn take_offline_concurrent(store: &dyn Store) {
    const WRITERS: usize = 4;
    const PER_WRITER: usize = 60;
    let user = store.register("busy", "p").unwrap().unwrap();
    let other = store.register("other", "p").unwrap().unwrap();
    let mut taken: Vec<String> = Vec::new();
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                s.spawn(move || {
                    for i in 0..PER_WRITER {
                        let message = format!("w{w}:{i}");
                        if i % 10 == 0 {
                            store
                                .store_offline_many(&[other, user], 0, &message, &FREE)
                                .unwrap();
                        } else {
                            store.store_offline(user, 0, &message, &FREE).unwrap();
                        }
                    }
                })
            })
            .collect();
        // A writer that fails ends too (its panic is re-raised by the scope), so
        // this loop cannot outlive them.
        while !writers.iter().all(|w| w.is_finished()) {
            taken.extend(store.take_offline(user).unwrap());
        }
    });
    taken.extend(store.take_offline(user).unwrap());
    assert_eq!(
        taken.len(),
        WRITERS * PER_WRITER,
        "each message taken exactly once"
    );
    for w in 0..WRITERS {
        let prefix = format!("w{w}:");
        let seq: Vec<usize> = taken
            .iter()
            .filter_map(|m| m.strip_prefix(&prefix))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(
            seq,
            (0..PER_WRITER).collect::<Vec<_>>(),
            "writer {w} in order"
        );
    }
    assert_eq!(
        store.take_offline(other).unwrap().len(),
        WRITERS * PER_WRITER / 10
    );
}

#[test]
fn open_rejects_memory_and_empty_paths() {
    for url in [":memory:", "sqlite::memory:", "sqlite:", ""] {
        assert!(matches!(open(url), Err(StoreError::Config(_))), "{url:?}");
    }
}

#[test]
fn sqlite_url_forms_reopen_the_same_file() {
    let path = std::env::temp_dir().join(format!("chat_store_test_{}.db", unique_suffix()));
    let _file = FileGuard(path.clone());
    let id = {
        let store = open(&format!("sqlite:{}", path.display())).unwrap();
        store.register("persisted", "p").unwrap().unwrap()
    };
    for url in [
        format!("sqlite://{}", path.display()),
        path.display().to_string(),
    ] {
        let store = open_with(&url, 2).unwrap();
        assert_eq!(store.user(id).unwrap().unwrap().name, "persisted");
    }
}

#[test]
fn mysql_unreachable_is_an_error_not_a_hang() {
    let started = std::time::Instant::now();
    let result = open("mysql://root@127.0.0.1:1/chat");
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{:?}",
        result.err()
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn mysql_rejects_odd_database_names() {
    let result = open("mysql://root@127.0.0.1:1/chat`x");
    assert!(
        matches!(result, Err(StoreError::Config(_))),
        "{:?}",
        result.err()
    );
}

/// Collapses whitespace so that formatting differences do not matter.
fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn chat_sql_matches_embedded_ddl() {
    let file = normalize(include_str!("../../../chat.sql"));
    for spec in &TABLES {
        let ddl = normalize(&create_table_sql(spec.name, spec.body, true));
        assert!(
            file.contains(&format!("{ddl};")),
            "chat.sql lacks or differs: {ddl}"
        );
    }
}

#[test]
fn mysql_chat_sql_schema_conforms() {
    require_mysql();
    let db = DbGuard::new();
    let mut conn = server_conn().unwrap();
    conn.query_drop(format!("CREATE DATABASE `{}`", db.name))
        .unwrap();
    conn.select_db(&db.name).unwrap();
    for statement in include_str!("../../../chat.sql").split(';') {
        let statement = statement.trim();
        if let Some(pos) = statement.find("CREATE TABLE") {
            conn.query_drop(&statement[pos..]).unwrap();
        }
    }
    for spec in &TABLES {
        assert!(
            conforms(&mut conn, spec).unwrap(),
            "{} as chat.sql creates it",
            spec.name
        );
    }
}

/// The tables as the legacy project's script created them: narrow columns, latin1/utf8,
/// no unique keys on the link tables, no ordering column.
const LEGACY_DDL: [&str; 5] = [
    "CREATE TABLE user (id INT(11) NOT NULL AUTO_INCREMENT, name VARCHAR(50) DEFAULT NULL,
      password VARCHAR(50) DEFAULT NULL,
      state ENUM('online','offline') CHARACTER SET latin1 DEFAULT 'offline',
      PRIMARY KEY (id), UNIQUE KEY name (name)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
    "CREATE TABLE friend (userid INT(11) NOT NULL, friendid INT(11) NOT NULL,
      KEY userid (userid, friendid)) ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "CREATE TABLE allgroup (id INT(11) NOT NULL AUTO_INCREMENT,
      groupname VARCHAR(50) CHARACTER SET latin1 NOT NULL,
      groupdesc VARCHAR(200) CHARACTER SET latin1 DEFAULT '',
      PRIMARY KEY (id), UNIQUE KEY groupname (groupname)) ENGINE=InnoDB DEFAULT CHARSET=utf8",
    "CREATE TABLE groupuser (groupid INT(11) NOT NULL, userid INT(11) NOT NULL,
      grouprole ENUM('creator','normal') CHARACTER SET latin1 DEFAULT NULL,
      KEY groupid (groupid, userid)) ENGINE=InnoDB DEFAULT CHARSET=latin1",
    "CREATE TABLE offlinemessage (userid INT(11) NOT NULL, message VARCHAR(500) NOT NULL)
      ENGINE=InnoDB DEFAULT CHARSET=latin1",
];

#[test]
fn mysql_legacy_upgrade() {
    require_mysql();
    let db = DbGuard::new();
    let mut conn = server_conn().unwrap();
    conn.query_drop(format!(
        "CREATE DATABASE `{}` CHARACTER SET latin1",
        db.name
    ))
    .unwrap();
    conn.select_db(&db.name).unwrap();
    for ddl in LEGACY_DDL {
        conn.query_drop(ddl).unwrap();
    }
    let users: [(i64, &str, Option<&str>, Option<&str>); 4] = [
        (1, "alice", Some("pa"), Some("online")),
        (2, "bob", None, Some("offline")),
        (3, "张三", Some("密码"), None),
        (7, "dave", Some("it's"), Some("offline")),
    ];
    conn.exec_batch(
        "INSERT INTO user (id, name, password, state) VALUES (?, ?, ?, ?)",
        users,
    )
    .unwrap();
    conn.exec_batch(
        "INSERT INTO friend (userid, friendid) VALUES (?, ?)",
        [(1, 2), (1, 3), (1, 2), (2, 1), (1, 3), (1, 2)],
    )
    .unwrap();
    conn.exec_batch(
        "INSERT INTO allgroup (id, groupname, groupdesc) VALUES (?, ?, ?)",
        [(1, "devs", Some("café")), (2, "ops", None)],
    )
    .unwrap();
    conn.exec_batch(
        "INSERT INTO groupuser (groupid, userid, grouprole) VALUES (?, ?, ?)",
        [
            (1, 2, Some("normal")),
            (1, 1, Some("creator")),
            (1, 2, Some("normal")),
            (1, 1, Some("normal")),
            (2, 3, None),
        ],
    )
    .unwrap();
    let messages = [
        (1, "m1"),
        (2, "b1"),
        (1, "m2 it's"),
        (1, "m3 café"),
        (2, "b2"),
        (1, "m4"),
    ];
    conn.exec_batch(
        "INSERT INTO offlinemessage (userid, message) VALUES (?, ?)",
        messages,
    )
    .unwrap();

    let store = open_with(&db.url(), 2).expect("upgrade the legacy schema");
    let alice = store.user(1).unwrap().unwrap();
    assert_eq!((alice.name.as_str(), alice.online), ("alice", true));
    assert_eq!(
        password::verify(&alice.password, "pa"),
        Verified::OkLegacyPlaintext
    );
    let bob = store.user(2).unwrap().unwrap();
    assert!(
        bob.password.starts_with("$argon2"),
        "a NULL password becomes unusable"
    );
    assert_eq!(password::verify(&bob.password, ""), Verified::Mismatch);
    let zhang = store.user(3).unwrap().unwrap();
    assert_eq!(
        (zhang.name.as_str(), zhang.password.as_str(), zhang.online),
        ("张三", "密码", false)
    );
    assert_eq!(
        store.friends(1).unwrap(),
        vec![(2, "bob".to_owned()), (3, "张三".to_owned())]
    );
    assert_eq!(store.friends(2).unwrap(), vec![(1, "alice".to_owned())]);
    let groups = store.groups_of(1).unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        (groups[0].name.as_str(), groups[0].desc.as_str()),
        ("devs", "café")
    );
    let roles: Vec<_> = groups[0].members.iter().map(|m| (m.id, m.role)).collect();
    assert_eq!(roles, [(1, Role::Creator), (2, Role::Normal)]);
    assert_eq!(store.groups_of(3).unwrap()[0].desc, "");
    assert_eq!(store.groups_of(3).unwrap()[0].members[0].role, Role::Normal);
    assert_eq!(store.add_friend(1, 2).unwrap(), AddFriend::AlreadyFriends);
    assert_eq!(store.join_group(2, 1).unwrap(), JoinGroup::AlreadyMember);
    // The AUTO_INCREMENT counter survives; utf8mb4 works now.
    assert_eq!(store.register("eve 🦀", "h").unwrap(), Some(8));
    store.store_offline(1, 0, "m5 🦀", &FREE).unwrap();
    assert_eq!(store.take_offline(2).unwrap(), ["b1", "b2"]);
    for spec in &TABLES {
        assert!(conforms(&mut conn, spec).unwrap(), "{} upgraded", spec.name);
    }
    let tables: Vec<String> = conn
        .query(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME",
        )
        .unwrap();
    assert_eq!(
        tables,
        [
            "allgroup",
            "friend",
            "friendrequest",
            "groupuser",
            "history",
            "historychunk",
            "historyseq",
            "offlinemessage",
            "resumetoken",
            "user"
        ]
    );
    drop(store);

    // A second open finds nothing to do and keeps everything.
    let store = open_with(&db.url(), 2).expect("reopen");
    assert_eq!(
        store.take_offline(1).unwrap(),
        ["m1", "m2 it's", "m3 café", "m4", "m5 🦀"]
    );
    assert_eq!(store.friends(1).unwrap().len(), 2);
    assert_eq!(store.user(8).unwrap().unwrap().name, "eve 🦀");
    assert_eq!(store.register("frank", "h").unwrap(), Some(9));
}

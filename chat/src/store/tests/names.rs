//! User and group names on both backends: the same answer to the same name. A name the
//! protocol refuses (blank, white space at either end, control characters) is refused
//! by the store too, and names compare as MySQL's `utf8mb4_bin` does — byte for byte,
//! case-sensitive, a stored name's trailing spaces ignored (PAD SPACE), which SQLite
//! is made to follow for the names older servers stored with trailing spaces.

use ::mysql::prelude::Queryable;

use super::{MysqlDb, SqliteDb};
use crate::store::Store;

backend_tests!(names_are_refused_and_compared_alike);

/// Names no request can carry: each one is refused as a user and as a group name.
/// Without the check, SQLite stored `alice ` beside `alice` while MySQL refused it as
/// taken (PAD SPACE), and both stored ` alice`.
const REFUSED: [&str; 9] = [
    "alice ",
    " alice",
    "",
    " ",
    "alice\t",
    "\u{3000}alice",
    "al\nice",
    "al\u{0}ice",
    "al\u{2028}ice",
];

fn names_are_refused_and_compared_alike(store: &dyn Store) {
    let alice = store.register("alice", "h").unwrap().expect("alice is new");
    store
        .create_group(alice, "crew", "")
        .unwrap()
        .expect("crew");
    for name in REFUSED {
        assert_eq!(store.register(name, "h").unwrap(), None, "user {name:?}");
        assert_eq!(
            store.create_group(alice, name, "").unwrap(),
            None,
            "group {name:?}"
        );
    }
    // Case counts and spaces inside are fine, on both.
    for name in ["Alice", "ali ce", "al  ice"] {
        assert!(
            store.register(name, "h").unwrap().is_some(),
            "user {name:?}"
        );
        assert!(
            store.create_group(alice, name, "").unwrap().is_some(),
            "group {name:?}"
        );
    }
    assert_eq!(store.register("alice", "h").unwrap(), None);
    assert_eq!(store.create_group(alice, "crew", "").unwrap(), None);
}

/// Names with trailing spaces that a server before the check stored: each takes the
/// name without them, on both backends (MySQL compares so itself; SQLite is made to).
/// `(user name, group name)` rows are written behind the store's back by `legacy`.
fn padded_legacy_names_take_their_trimmed_twins(store: &dyn Store, legacy: impl Fn(&str, &str)) {
    legacy("bob ", "crew  ");
    let carol = store.register("carol", "h").unwrap().expect("carol");
    assert_eq!(store.register("bob", "h").unwrap(), None, "bob is taken");
    assert_eq!(
        store.create_group(carol, "crew", "").unwrap(),
        None,
        "crew is taken"
    );
    assert!(store.register("bob2", "h").unwrap().is_some());
    assert!(store.create_group(carol, "crew2", "").unwrap().is_some());
    // A leading space is part of a name, as on MySQL: " dan" does not take "dan".
    legacy(" dan", " team");
    assert!(store.register("dan", "h").unwrap().is_some());
    assert!(store.create_group(carol, "team", "").unwrap().is_some());
}

#[test]
fn sqlite_padded_legacy_names_take_their_trimmed_twins() {
    let db = SqliteDb::new();
    let path = db.path().to_owned();
    padded_legacy_names_take_their_trimmed_twins(&*db.store, |user, group| {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute("INSERT INTO user (name, password) VALUES (?1, 'h')", [user])
            .unwrap();
        conn.execute("INSERT INTO allgroup (groupname) VALUES (?1)", [group])
            .unwrap();
    });
}

#[test]
fn mysql_padded_legacy_names_take_their_trimmed_twins() {
    let db = MysqlDb::new();
    padded_legacy_names_take_their_trimmed_twins(&*db.store, |user, group| {
        let mut conn = db._db.conn();
        conn.exec_drop("INSERT INTO user (name, password) VALUES (?, 'h')", (user,))
            .unwrap();
        conn.exec_drop("INSERT INTO allgroup (groupname) VALUES (?)", (group,))
            .unwrap();
    });
}

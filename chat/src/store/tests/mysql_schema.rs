//! The MySQL schema check and repair on tables that already have the new collation
//! (the legacy test's tables differ in collation first, which hides the rest): a
//! column's type, length or NULL, a column's collation, a unique key, and the
//! secondary index that `ensure_indexes` adds.

use ::mysql::prelude::Queryable;

use super::{server_conn, DbGuard, MysqlDb};
use crate::store::mysql_schema::{conforms, TABLES};
use crate::store::open_with;

fn conforms_by_name(c: &mut ::mysql::Conn, table: &str) -> bool {
    let spec = TABLES.iter().find(|s| s.name == table).unwrap();
    conforms(c, spec).unwrap()
}

/// Each difference alone makes a table non-conforming; undone, it conforms again.
#[test]
fn mysql_conforms_checks_each_column_and_key() {
    let db = MysqlDb::new();
    let mut c = db._db.conn();
    for (table, change, undo) in [
        (
            "user",
            "MODIFY password VARCHAR(100) NOT NULL",
            "MODIFY password VARCHAR(255) NOT NULL",
        ),
        (
            "allgroup",
            "MODIFY groupdesc VARCHAR(200) NULL DEFAULT ''",
            "MODIFY groupdesc VARCHAR(200) NOT NULL DEFAULT ''",
        ),
        (
            "offlinemessage",
            "MODIFY message TEXT NOT NULL",
            "MODIFY message MEDIUMTEXT NOT NULL",
        ),
        (
            "user",
            "MODIFY name VARCHAR(50) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci NOT NULL",
            "MODIFY name VARCHAR(50) NOT NULL",
        ),
        (
            "friendrequest",
            "DROP PRIMARY KEY",
            "ADD PRIMARY KEY (fromid, toid)",
        ),
        (
            "historychunk",
            "MODIFY body BLOB NOT NULL",
            "MODIFY body MEDIUMBLOB NOT NULL",
        ),
        (
            "historychunk",
            "DROP PRIMARY KEY",
            "ADD PRIMARY KEY (conv, seq)",
        ),
    ] {
        assert!(conforms_by_name(&mut c, table), "{table} before {change}");
        c.query_drop(format!("ALTER TABLE {table} {change}"))
            .unwrap();
        assert!(!conforms_by_name(&mut c, table), "{table} after {change}");
        c.query_drop(format!("ALTER TABLE {table} {undo}")).unwrap();
        assert!(conforms_by_name(&mut c, table), "{table} after {undo}");
    }
}

/// Opening a database whose tables lost their unique keys and the `friendid` index
/// puts them back (and keeps the rows).
#[test]
fn mysql_open_restores_lost_keys() {
    let db = MysqlDb::new();
    let a = db.store.register("ka", "p").unwrap().unwrap();
    let g = db.store.create_group(a, "kg", "").unwrap().unwrap();
    let mut c = db._db.conn();
    for alter in [
        "ALTER TABLE user DROP KEY name",
        "ALTER TABLE allgroup DROP KEY groupname",
        "ALTER TABLE friend DROP KEY friendid",
    ] {
        c.query_drop(alter).unwrap();
    }
    assert!(!conforms_by_name(&mut c, "user"));
    assert!(!conforms_by_name(&mut c, "allgroup"));
    let store = open_with(&db._db.url(), 2).expect("reopen");
    for spec in &TABLES {
        assert!(conforms(&mut c, spec).unwrap(), "{}", spec.name);
    }
    let friendid: Option<i64> = c
        .query_first(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'friend' AND INDEX_NAME = 'friendid'",
        )
        .unwrap();
    assert_eq!(friendid, Some(1), "the friendid index is back");
    assert_eq!(store.register("ka", "q").unwrap(), None, "name taken");
    assert_eq!(store.group_members(g).unwrap(), Some(vec![a]));
}

/// A table this version created, changed by hand (here `historychunk`'s body made a
/// BLOB), has no upgrade to run: opening the database says which table differs; it
/// does not panic (it did: "no upgrade for table historychunk").
#[test]
fn mysql_open_refuses_a_table_changed_by_hand() {
    let db = MysqlDb::new();
    let mut c = db._db.conn();
    c.query_drop("ALTER TABLE historychunk MODIFY body BLOB NOT NULL")
        .unwrap();
    let err = match std::panic::catch_unwind(|| open_with(&db._db.url(), 2)) {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(_)) => panic!("opened a database whose historychunk differs"),
        Err(_) => panic!("opening panicked"),
    };
    assert!(err.contains("historychunk"), "{err}");
}

/// A legacy `offlinemessage` that has an `id` column (not its primary key, so a scan
/// reads rows in insertion order) is copied in id order: the recipient gets its
/// messages in the order of their ids, not of the rows' insertion.
#[test]
fn mysql_legacy_offline_ids_order_the_copy() {
    super::require_mysql();
    let db = DbGuard::new();
    let mut c = server_conn().unwrap();
    c.query_drop(format!("CREATE DATABASE `{}`", db.name))
        .unwrap();
    c.select_db(&db.name).unwrap();
    c.query_drop(
        "CREATE TABLE offlinemessage (id INT NOT NULL AUTO_INCREMENT, userid INT NOT NULL,
           message VARCHAR(500) NOT NULL, KEY id (id)) ENGINE=InnoDB DEFAULT CHARSET=latin1",
    )
    .unwrap();
    c.exec_batch(
        "INSERT INTO offlinemessage (id, userid, message) VALUES (?, ?, ?)",
        [(3, 1, "m3"), (1, 1, "m1"), (4, 2, "x"), (2, 1, "m2")],
    )
    .unwrap();
    // The precondition: the copy's SELECT without its ORDER BY reads another order.
    let natural: Vec<String> = c
        .query("SELECT message FROM offlinemessage WHERE userid = 1")
        .unwrap();
    assert_eq!(
        natural,
        ["m3", "m1", "m2"],
        "a scan reads in id order anyway: this test would show nothing"
    );
    let store = open_with(&db.url(), 2).expect("upgrade the legacy table");
    assert_eq!(store.take_offline(1).unwrap(), ["m1", "m2", "m3"]);
    assert_eq!(store.take_offline(2).unwrap(), ["x"]);
    assert!(conforms_by_name(&mut c, "offlinemessage"));
}

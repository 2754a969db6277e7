//! MySQL hands stored messages out in id order because its queries say `ORDER BY id`, not
//! because of the plan InnoDB happens to pick. Here the plan is made to read rows in
//! another order (the `(userid, id, bytes)` index is dropped, so the `quota` index
//! `(userid, fromid, bytes)` serves `userid = ?`, and it orders one sender's messages by
//! size); the test first shows that the production query without `ORDER BY` returns
//! that other order, then that the store still pages and takes in id order.

use ::mysql::prelude::Queryable;

use super::{MysqlDb, FREE};

/// The recipient whose messages are taken.
const TO: i64 = 5;
/// One sender for all of them: the `quota` index then orders them by size alone.
const FROM: i64 = 7;
/// Stored in this (id) order, longest first: by size they come out reversed.
const SENT: [&str; 3] = ["ccc", "bb", "a"];

#[test]
fn mysql_offline_order_is_explicit_not_the_plans() {
    let db = MysqlDb::new();
    let mut c = db._db.conn();
    c.query_drop("ALTER TABLE offlinemessage DROP INDEX userid")
        .unwrap();
    // Other recipients' rows ahead of ours make a scan of the id range costlier than the
    // `quota` index lookup of our three rows.
    let others: Vec<String> = (0..2000)
        .map(|i| format!("({}, 'x', 1, 1)", 1000 + i % 50))
        .collect();
    c.query_drop(format!(
        "INSERT INTO offlinemessage (userid, message, fromid, bytes) VALUES {}",
        others.join(",")
    ))
    .unwrap();
    for m in SENT {
        assert!(db.store.store_offline(TO, FROM, m, &FREE).unwrap());
    }
    c.query_drop("ANALYZE TABLE offlinemessage").unwrap();

    // The precondition: the store's own queries, less their ORDER BY, read another order.
    let last: i64 = c
        .exec_first("SELECT MAX(id) FROM offlinemessage WHERE userid = ?", (TO,))
        .unwrap()
        .unwrap();
    let natural: Vec<String> = c
        .exec(
            "SELECT message FROM offlinemessage WHERE userid = ? AND id <= ?",
            (TO, last),
        )
        .unwrap();
    assert_ne!(
        natural, SENT,
        "the plan reads in id order anyway: this test would show nothing"
    );
    let sizes: Vec<i64> = c
        .exec(
            "SELECT bytes FROM offlinemessage WHERE userid = ? LIMIT 2",
            (TO,),
        )
        .unwrap();
    assert_ne!(
        sizes,
        [3, 2],
        "the page query's plan reads in id order anyway"
    );

    // The store: a one-message page is the oldest message, then the rest in order.
    let (page, more) = db.store.take_offline_batch(TO, 1, usize::MAX).unwrap();
    assert_eq!(page, SENT[..1], "first page");
    assert!(more);
    assert_eq!(db.store.take_offline(TO).unwrap(), SENT[1..], "the rest");
    assert!(db.store.take_offline(TO).unwrap().is_empty());
}

//! The offline store's bounds, pages and put-backs, on both backends.

use super::{MysqlDb, SqliteDb};
use crate::store::{OfflineLimits, Store};

backend_tests!(
    bound_refuses_the_new_keeps_the_old,
    bound_holds_under_concurrent_senders,
    pages_by_bytes,
    restore_goes_ahead,
);

fn limits(max_messages: u64, max_bytes: u64, sender_percent: u64) -> OfflineLimits {
    OfflineLimits {
        max_messages,
        max_bytes,
        sender_percent,
    }
}

fn bound_refuses_the_new_keeps_the_old(store: &dyn Store) {
    let to = store.register("victim", "p").unwrap().unwrap();
    let other = store.register("bystander", "p").unwrap().unwrap();
    let l = limits(4, 1000, 50);
    // One sender: its half of the count.
    assert!(store.store_offline(to, 7, "a1", &l).unwrap());
    assert!(store.store_offline(to, 7, "a2", &l).unwrap());
    assert!(
        !store.store_offline(to, 7, "a3", &l).unwrap(),
        "sender share"
    );
    // Another sender fills the rest; then nobody gets in.
    assert!(store.store_offline(to, 8, "b1", &l).unwrap());
    assert_eq!(
        store.store_offline_many(&[other, to], 8, "b2", &l).unwrap(),
        Vec::<i64>::new()
    );
    assert_eq!(
        store.store_offline_many(&[other, to], 9, "c1", &l).unwrap(),
        vec![to]
    );
    // Bytes: a message over the sender's half of the bytes is refused on its own.
    let big = "x".repeat(501);
    assert!(
        !store.store_offline(other, 9, &big, &l).unwrap(),
        "byte share"
    );
    assert_eq!(
        store.take_offline(to).unwrap(),
        ["a1", "a2", "b1", "b2"],
        "nothing stored was dropped, nothing refused was stored"
    );
    assert_eq!(store.take_offline(other).unwrap(), ["b2", "c1"]);
    // Taken means room again.
    assert!(store.store_offline(to, 7, "a4", &l).unwrap());
    assert_eq!(store.take_offline(to).unwrap(), ["a4"]);
}

fn bound_holds_under_concurrent_senders(store: &dyn Store) {
    let to = store.register("crowded", "p").unwrap().unwrap();
    let l = limits(40, u64::MAX, 100);
    let admitted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for w in 0..4 {
            let admitted = &admitted;
            s.spawn(move || {
                for i in 0..20 {
                    if store.store_offline(to, w, &format!("{w}:{i}"), &l).unwrap() {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 40);
    assert_eq!(
        store.take_offline(to).unwrap().len(),
        40,
        "exactly the bound"
    );
}

fn pages_by_bytes(store: &dyn Store) {
    let to = store.register("pager", "p").unwrap().unwrap();
    let free = limits(u64::MAX, u64::MAX, 100);
    let msgs: Vec<String> = (0..5).map(|i| format!("{i}{}", "y".repeat(99))).collect();
    for m in &msgs {
        assert!(store.store_offline(to, 1, m, &free).unwrap());
    }
    let (page, more) = store.take_offline_batch(to, usize::MAX, 250).unwrap();
    assert_eq!((page.as_slice(), more), (&msgs[..2], true));
    let (page, more) = store.take_offline_batch(to, usize::MAX, 10).unwrap();
    assert_eq!(
        (page.as_slice(), more),
        (&msgs[2..3], true),
        "the oldest always"
    );
    let (page, more) = store.take_offline_batch(to, 5, 1000).unwrap();
    assert_eq!((page.as_slice(), more), (&msgs[3..], false));
}

fn restore_goes_ahead(store: &dyn Store) {
    let to = store.register("returner", "p").unwrap().unwrap();
    let other = store.register("neighbour", "p").unwrap().unwrap();
    let free = limits(u64::MAX, u64::MAX, 100);
    let s = |v: &[&str]| v.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    // Into an empty table, and then ahead of it again.
    store.restore_offline(to, &s(&["r3", "r4"])).unwrap();
    store.restore_offline(to, &s(&["r1", "r2"])).unwrap();
    for m in ["m1", "m2", "m3"] {
        store.store_offline(to, 1, m, &free).unwrap();
    }
    store.store_offline(other, 1, "o1", &free).unwrap();
    let (page, _) = store.take_offline_batch(to, 5, usize::MAX).unwrap();
    assert_eq!(page, s(&["r1", "r2", "r3", "r4", "m1"]));
    store.store_offline(to, 1, "m4", &free).unwrap();
    // Taken, not delivered, put back: ahead of what came since.
    store.restore_offline(to, &page[3..]).unwrap();
    assert_eq!(
        store.take_offline(to).unwrap(),
        s(&["r4", "m1", "m2", "m3", "m4"])
    );
    assert_eq!(store.take_offline(other).unwrap(), s(&["o1"]));
}

//! The hub's shard locks, without sessions: every user id has a shard in range, 64
//! consecutive ids use all 64 shards (the shard is the id's low bits, so neighbours never
//! wait for each other), `lock_many` locks exactly its users' shards, and `try_lock`
//! (what an IO loop uses) fails only on a shard someone holds.

use chat::hub::Hub;

/// The number of shards (`hub::SHARDS`).
const SHARDS: usize = 64;

#[test]
fn every_id_has_a_shard_and_neighbours_spread() {
    for id in [0, 63, 64, 65, 127, 1 << 40, i64::MAX, -1, i64::MIN] {
        assert!(Hub::shard_index(id) < SHARDS, "id {id}");
    }
    assert_eq!(Hub::shard_index(64 * 7 + 5), Hub::shard_index(5));
    let mut used = [false; SHARDS];
    for id in 1000..1000 + SHARDS as i64 {
        used[Hub::shard_index(id)] = true;
    }
    assert!(used.iter().all(|&u| u), "64 consecutive ids share shards");
}

#[test]
fn lock_many_locks_its_users_shards_only() {
    let hub = Hub::default();
    // 67 and 3 share a shard; 10 has its own.
    let users = [67, 10, 3];
    let guards = hub.lock_many(&users);
    assert_eq!(guards.len(), SHARDS);
    let wanted: Vec<usize> = users.iter().map(|&u| Hub::shard_index(u)).collect();
    for (i, g) in guards.iter().enumerate() {
        assert_eq!(g.is_some(), wanted.contains(&i), "shard {i}");
    }
    for u in users {
        assert!(guards[Hub::shard_index(u)].is_some());
        assert!(hub.try_lock(u).is_none(), "user {u}: its shard is held");
    }
    assert!(hub.try_lock(4).is_some(), "a free shard");
    drop(guards);
    assert!(hub.try_lock(3).is_some(), "released");
}

#[test]
fn an_empty_hub_has_nobody_online() {
    let hub = Hub::default();
    for u in [1, 64, 1 << 33] {
        assert!(!hub.is_online(u));
        assert!(hub.get(u).is_none());
        assert!(hub.lock(u).is_empty());
    }
    assert_eq!(hub.count(), 0);
    assert!(hub.online_users().is_empty());
}

//! Hub: the users online on this node, sharded; a shard's lock also serialises
//! "is the user here?" with what follows (see `router`).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::session::Session;

/// Number of shards; a power of two.
const SHARDS: usize = 64;

/// One shard: user id → the session it is logged in on.
pub type Shard = HashMap<i64, Arc<Session>>;

/// The online users of this node.
pub struct Hub {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

fn shard_of(user: i64) -> usize {
    (user as u64 as usize) & (SHARDS - 1)
}

impl Hub {
    /// Locks the shard of `user`.
    pub fn lock(&self, user: i64) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(user)].lock()
    }

    /// Locks the shard of `user` if nobody holds it (the IO loop never waits).
    pub fn try_lock(&self, user: i64) -> Option<MutexGuard<'_, Shard>> {
        self.shards[shard_of(user)].try_lock()
    }

    /// Whether `user` is online on this node.
    pub fn is_online(&self, user: i64) -> bool {
        self.lock(user).contains_key(&user)
    }

    /// The session of `user`, if online here.
    pub fn get(&self, user: i64) -> Option<Arc<Session>> {
        self.lock(user).get(&user).cloned()
    }

    /// How many users are online on this node.
    pub fn count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// Every online user id.
    pub fn online_users(&self) -> Vec<i64> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Locks the shards of all `users`, in ascending shard order so that two
    /// callers never deadlock. Index the result with [`Hub::shard_index`].
    pub fn lock_many(&self, users: &[i64]) -> Vec<Option<MutexGuard<'_, Shard>>> {
        let mut wanted = [false; SHARDS];
        for &u in users {
            wanted[shard_of(u)] = true;
        }
        wanted
            .iter()
            .enumerate()
            .map(|(i, w)| w.then(|| self.shards[i].lock()))
            .collect()
    }

    /// The index of `user`'s shard in the result of [`Hub::lock_many`].
    pub fn shard_index(user: i64) -> usize {
        shard_of(user)
    }
}

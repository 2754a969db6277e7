//! Hub: the users online on this node, sharded, and the delivery rule
//! "online here → send; otherwise → offline store".

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::session::Session;
use crate::store::{Store, StoreError};

/// Number of shards; a power of two.
const SHARDS: usize = 64;

type Shard = HashMap<i64, Arc<Session>>;

/// Where a frame went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Sent to the recipient's connection.
    Live,
    /// Stored for the recipient's next login.
    Stored,
}

/// The online users of this node. A user's shard lock is held across "is the
/// user online? then send, else store" and across "register the login, then take
/// the offline messages", so a message is never stored after the login took the
/// store and left behind until the next login.
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

    /// Whether `user` is online on this node.
    pub fn is_online(&self, user: i64) -> bool {
        self.lock(user).contains_key(&user)
    }

    /// The session of `user`, if online here.
    pub fn get(&self, user: i64) -> Option<Arc<Session>> {
        self.lock(user).get(&user).cloned()
    }

    /// Removes `user` if `session` is the one registered for it.
    pub fn remove(&self, user: i64, session: &Session) -> bool {
        let mut shard = self.lock(user);
        match shard.get(&user) {
            Some(s) if s.id() == session.id() => {
                shard.remove(&user);
                true
            }
            _ => false,
        }
    }

    /// Every online user id.
    pub fn online_users(&self) -> Vec<i64> {
        self.shards
            .iter()
            .flat_map(|s| s.lock().keys().copied().collect::<Vec<_>>())
            .collect()
    }

    /// Sends `frame` to `to` if online, otherwise stores `text` for it.
    pub fn route(
        &self,
        store: &dyn Store,
        to: i64,
        frame: &[u8],
        text: &str,
    ) -> Result<Delivery, StoreError> {
        let shard = self.lock(to);
        if let Some(session) = shard.get(&to) {
            session.deliver(frame.to_vec());
            return Ok(Delivery::Live);
        }
        store.store_offline(to, text)?;
        Ok(Delivery::Stored)
    }

    /// Fans `frame` out to `members`: online ones get it at once, the others get
    /// it stored, all offline rows in one transaction. Shards are locked in
    /// ascending order, so two fan-outs never deadlock.
    pub fn route_many(
        &self,
        store: &dyn Store,
        members: &[i64],
        frame: &[u8],
        text: &str,
    ) -> Result<(), StoreError> {
        let mut wanted = [false; SHARDS];
        for &m in members {
            wanted[shard_of(m)] = true;
        }
        let mut guards: Vec<Option<MutexGuard<'_, Shard>>> = (0..SHARDS).map(|_| None).collect();
        for (i, w) in wanted.iter().enumerate() {
            if *w {
                guards[i] = Some(self.shards[i].lock());
            }
        }
        let mut offline = Vec::new();
        for &m in members {
            let shard = guards[shard_of(m)].as_ref().expect("locked above");
            match shard.get(&m) {
                Some(session) => session.deliver(frame.to_vec()),
                None => offline.push(m),
            }
        }
        if !offline.is_empty() {
            store.store_offline_many(&offline, text)?;
        }
        Ok(())
    }
}

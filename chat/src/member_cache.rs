//! MemberCache: group id → member ids, so a group message costs no database query.
//!
//! Correctness rests on two rules. An invalidation bumps an epoch, and a list read
//! from the store is cached only if no invalidation happened while it was being read
//! (otherwise a join committed meanwhile could be cached away). In a cluster,
//! invalidations of other nodes arrive through the bus, and also later than a chat
//! of a user who saw the change acknowledged: so each list is kept with the version
//! of the group's membership (in Redis) read before the list was, and is used only
//! while that is still the version (the caller reads it first). Entries also expire
//! after a TTL, so a change missed while Redis was down costs at most that long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A cached list, when it was read, and the membership version it was read at.
type Entry = (Arc<Vec<i64>>, Instant, Option<String>);

/// The cached member lists.
pub struct MemberCache {
    entries: Mutex<HashMap<i64, Entry>>,
    epoch: AtomicU64,
    ttl: Option<Duration>,
}

impl MemberCache {
    /// A cache whose entries live `ttl` (`None`: until invalidated).
    pub fn new(ttl: Option<Duration>) -> MemberCache {
        MemberCache {
            entries: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            ttl,
        }
    }

    /// The cached members of `group`, if fresh and read at membership `version`
    /// (`None` on a single node, or for a group whose membership never changed since
    /// Redis started).
    pub fn get(&self, group: i64, version: Option<&str>) -> Option<Arc<Vec<i64>>> {
        let entries = self.entries.lock();
        let (members, at, read_at) = entries.get(&group)?;
        match self.ttl {
            Some(ttl) if at.elapsed() > ttl => None,
            _ if read_at.as_deref() != version => None,
            _ => Some(members.clone()),
        }
    }

    /// The membership version the cached list of `group` was read at (`None` if
    /// none is cached): with Redis unreachable, the cached list stays in use.
    pub fn cached_version(&self, group: i64) -> Option<String> {
        self.entries.lock().get(&group).and_then(|e| e.2.clone())
    }

    /// Call before reading a list from the store; pass the result to [`MemberCache::insert`].
    pub fn begin(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches a list read since `begin` returned `epoch` (and after membership
    /// `version` was read), unless something was invalidated meanwhile.
    pub fn insert(&self, group: i64, members: Arc<Vec<i64>>, epoch: u64, version: Option<String>) {
        let mut entries = self.entries.lock();
        if self.epoch.load(Ordering::Acquire) == epoch {
            entries.insert(group, (members, Instant::now(), version));
        }
    }

    /// Forgets `group`.
    pub fn invalidate(&self, group: i64) {
        let mut entries = self.entries.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.remove(&group);
    }

    /// Forgets everything (after a gap in which invalidations may have been lost).
    pub fn clear(&self) {
        let mut entries = self.entries.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_and_invalidates() {
        let c = MemberCache::new(None);
        assert!(c.get(1, None).is_none());
        let e = c.begin();
        c.insert(1, Arc::new(vec![1, 2]), e, None);
        assert_eq!(*c.get(1, None).unwrap(), vec![1, 2]);
        c.invalidate(1);
        assert!(c.get(1, None).is_none());
    }

    #[test]
    fn a_list_read_across_an_invalidation_is_not_cached() {
        let c = MemberCache::new(None);
        let e = c.begin();
        c.invalidate(7); // a join committed while the list was being read
        c.insert(7, Arc::new(vec![1]), e, None);
        assert!(c.get(7, None).is_none());
        let e = c.begin();
        c.insert(7, Arc::new(vec![1, 2]), e, None);
        assert_eq!(*c.get(7, None).unwrap(), vec![1, 2]);
        c.clear();
        assert!(c.get(7, None).is_none());
    }

    #[test]
    fn a_list_is_used_only_at_the_version_it_was_read_at() {
        let c = MemberCache::new(None);
        let e = c.begin();
        c.insert(5, Arc::new(vec![1]), e, Some("n1/0".into()));
        assert_eq!(*c.get(5, Some("n1/0")).unwrap(), vec![1]);
        // Another node changed the membership; its notice has not arrived yet.
        assert!(c.get(5, Some("n2/0")).is_none());
        assert!(c.get(5, None).is_none());
        let e = c.begin();
        c.insert(5, Arc::new(vec![1, 2]), e, Some("n2/0".into()));
        assert_eq!(*c.get(5, Some("n2/0")).unwrap(), vec![1, 2]);
    }

    #[test]
    fn entries_expire() {
        let c = MemberCache::new(Some(Duration::from_millis(10)));
        let e = c.begin();
        c.insert(3, Arc::new(vec![3]), e, None);
        assert!(c.get(3, None).is_some());
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.get(3, None).is_none());
    }
}

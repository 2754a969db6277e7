//! What the admin module reads from the bus: Redis round trip, heartbeat age and
//! stream lag (atomics the bus threads update), the cluster's nodes and users, and
//! the kick notice a node sends to the node that holds a user.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::{Bus, BusError};

/// Figures the bus threads record for the health checks and the metrics.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// Microseconds the last successful heartbeat took (one Redis round trip).
    rtt_us: AtomicU64,
    /// Milliseconds since the bus epoch of the last successful heartbeat, plus one
    /// (0: none yet).
    beat_at: AtomicU64,
    /// Milliseconds between a stream entry's creation and its reading, for the
    /// last batch read.
    lag_ms: AtomicU64,
    /// Route calls made (each one round trip, however many frames it carried).
    route_calls: AtomicU64,
    /// Frames those calls carried.
    routed_frames: AtomicU64,
}

/// One node of the cluster, as Redis knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node id.
    pub id: String,
    /// Whether its liveness key exists.
    pub alive: bool,
    /// Users it holds.
    pub users: u64,
}

impl Bus {
    /// Records a successful heartbeat that took `rtt`.
    pub(super) fn beat_ok(&self, rtt: Duration) {
        self.health
            .rtt_us
            .store(rtt.as_micros() as u64, Ordering::Relaxed);
        self.health
            .beat_at
            .store(self.now_ms() + 1, Ordering::Relaxed);
    }

    /// Records the lag of a stream entry just read (its id is `ms-seq`, in Redis's
    /// clock).
    pub(super) fn entry_read(&self, id: &str) {
        let Some(created) = id.split('-').next().and_then(|ms| ms.parse::<u64>().ok()) else {
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.health
            .lag_ms
            .store(now.saturating_sub(created), Ordering::Relaxed);
    }

    /// The Redis round trip of the last successful heartbeat.
    pub fn redis_rtt(&self) -> Duration {
        Duration::from_micros(self.health.rtt_us.load(Ordering::Relaxed))
    }

    /// How long ago the last heartbeat succeeded (`None`: never).
    pub fn heartbeat_age(&self) -> Option<Duration> {
        match self.health.beat_at.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(self.now_ms().saturating_sub(at - 1))),
        }
    }

    /// Whether this node's liveness is fresh: a heartbeat succeeded within half the
    /// node TTL (two heartbeats were missed at most).
    pub fn heartbeat_fresh(&self) -> bool {
        self.heartbeat_age()
            .is_some_and(|age| age <= self.cfg.node_ttl / 2)
    }

    /// The lag of the last stream batch read.
    pub fn stream_lag(&self) -> Duration {
        Duration::from_millis(self.health.lag_ms.load(Ordering::Relaxed))
    }

    /// Counts a route call that carried `frames` frames.
    pub(super) fn routed(&self, frames: usize) {
        self.health.route_calls.fetch_add(1, Ordering::Relaxed);
        self.health
            .routed_frames
            .fetch_add(frames as u64, Ordering::Relaxed);
    }

    /// Route calls made so far (each one round trip) and the frames they carried:
    /// how well the route batcher shares round trips.
    pub fn route_counts(&self) -> (u64, u64) {
        (
            self.health.route_calls.load(Ordering::Relaxed),
            self.health.routed_frames.load(Ordering::Relaxed),
        )
    }

    /// Pings Redis; the round trip.
    pub fn ping(&self) -> Result<Duration, BusError> {
        let t = Instant::now();
        self.with_con(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(t.elapsed())
    }

    /// Every registered node, alive or not yet swept, with its user count.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, BusError> {
        let ids: Vec<String> =
            self.with_con(|c| redis::cmd("SMEMBERS").arg(&self.keys.nodes).query(c))?;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("EXISTS")
                .arg(format!("{}{id}", self.keys.node_prefix));
            pipe.cmd("SCARD")
                .arg(format!("{}nodeusers:{id}", self.keys.prefix_colon));
        }
        let facts: Vec<u64> = self.with_con(|c| pipe.query(c))?;
        let mut nodes: Vec<NodeInfo> = ids
            .into_iter()
            .zip(facts.chunks(2))
            .map(|(id, f)| NodeInfo {
                id,
                alive: f[0] == 1,
                users: f[1],
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(nodes)
    }

    /// Every user online on a live node, with that node, by id.
    pub fn online_users(&self) -> Result<Vec<(i64, String)>, BusError> {
        let online: HashMap<String, String> =
            self.with_con(|c| redis::cmd("HGETALL").arg(&self.keys.online).query(c))?;
        let alive: Vec<String> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.alive)
            .map(|n| n.id)
            .collect();
        let mut users: Vec<(i64, String)> = online
            .into_iter()
            .filter(|(_, node)| alive.contains(node))
            .filter_map(|(u, node)| Some((u.parse().ok()?, node)))
            .collect();
        users.sort_unstable();
        Ok(users)
    }

    /// Asks `node` to disconnect `user` (a broadcast every node hears; only `node`
    /// acts on it).
    pub fn publish_kick(&self, node: &str, user: i64) -> Result<(), BusError> {
        self.broadcast(json!({"t": "kick", "u": user, "n": node}).to_string())
    }

    /// Tells `node` that a newer session of `user` took over (RESUME): it closes
    /// its session with the "replaced" notice, and keeps its hands off presence.
    pub fn publish_replaced(&self, node: &str, user: i64) -> Result<(), BusError> {
        self.broadcast(json!({"t": "kick", "u": user, "n": node, "r": 1}).to_string())
    }
}

//! Bus: the Redis side of a cluster node — presence that expires with its node,
//! a per-node stream for delivery, a dedicated subscriber thread for broadcast
//! cache invalidations, a reader thread for the stream, a heartbeat thread that
//! keeps the node alive, and a keeper thread that re-claims its users after Redis
//! restarts and drains dead nodes.
//!
//! Why per-node queues: a node listens on one stream and one broadcast channel for
//! its whole life instead of one channel per logged-in user, so logins cost no SUBSCRIBE round trip and a group message reaches each
//! node once, carrying the list of that node's recipients. Presence is a hash
//! user → node checked against the node's liveness key, so a node killed with
//! `kill -9` stops owning its users when its key expires.
//!
//! Why a stream and not pub/sub for chat frames: delivery between nodes is
//! at least once. A node trims its stream only after its IO loops wrote the frames
//! it read (to the kernel, or into the output buffer of a reader slower than the
//! sender) or stored them, so what a killed node leaves in its stream is what it
//! never delivered; whoever finds the node dead first (a login of one of its
//! users, or any node's keeper) moves that rest to the offline store before the
//! node's users can log in again. With pub/sub, frames a node had read but not yet
//! written died with it. Flush notices travel in the same stream, so they keep
//! their place among the frames.

mod admin;
mod scripts;
mod stream;
mod threads;

pub use admin::NodeInfo;
pub use threads::{parse_message, BusThreads};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Connection, ConnectionLike, RedisResult, Script};
use serde_json::json;

/// How long a failed Redis call makes the bus fail fast before trying again.
const BREAKER: Duration = Duration::from_millis(500);
/// Read/write timeout of every Redis call, so a hung Redis cannot hang a worker.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the keeper sweeps dead nodes, in heartbeats.
const SWEEP_EVERY: u32 = 4;
/// How long the stream reader blocks in one XREAD when the stream is empty.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Most entries the reader takes from its stream per XREAD.
const READ_COUNT: usize = 1000;
/// Entries a drain moves to the store per step.
const DRAIN_COUNT: usize = 500;
/// How long a node may hold another node's drain lock (then it is presumed dead).
const DRAIN_LOCK: Duration = Duration::from_secs(30);
/// How long the reader waits for the IO loops to write a batch before reading on
/// (the batch is then trimmed with a later one).
const DELIVERY_WAIT: Duration = Duration::from_secs(1);

/// Settings of the Redis bus.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so deployments (and tests) can share a Redis.
    pub prefix: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How long the node stays "alive" without a heartbeat; its users become free
    /// to log in elsewhere this long after it dies.
    pub node_ttl: Duration,
}

/// A Redis failure (unreachable, timed out, or an error reply).
#[derive(Debug, Clone)]
pub struct BusError(pub String);

impl std::fmt::Display for BusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "redis: {}", self.0)
    }
}

impl std::error::Error for BusError {}

/// The outcome of claiming a user at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The user is now online on this node.
    Claimed,
    /// Another live node has the user.
    Taken(String),
    /// The user is now online on this node, taken over from this live node (or a
    /// node killed less than a TTL ago), which must close its session ([`Bus::take_over`]).
    Replaced(String),
    /// The user was on this dead node, whose stream still holds frames: drain it
    /// ([`Bus::drain_node`]), then claim again.
    Orphaned(String),
}

/// A frame a dead node never delivered: its recipients and its text.
pub type Orphan = (Vec<i64>, String);

/// The outcome of [`Bus::drain_node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// The stream was stored and the node forgotten.
    Done,
    /// Another node is draining it now (or took over this node's lock).
    Busy,
    /// The node is alive again (it was late with its heartbeat); it reads its own stream.
    Alive,
}

/// A message from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusMessage {
    /// Deliver `frame` (JSON text) to these users, who should be on this node
    /// (read from this node's stream).
    Deliver {
        /// Recipients.
        to: Vec<i64>,
        /// The chat frame.
        frame: String,
    },
    /// Messages were stored for these users while they logged in here: deliver them.
    Flush {
        /// Users to flush.
        to: Vec<i64>,
    },
    /// A group's membership changed: drop it from caches.
    Invalidate {
        /// The group.
        group: i64,
    },
    /// An operator kicked `user`, who is on `node`, or a newer session of the user
    /// took over (`replaced`): that node disconnects them.
    Kick {
        /// The user.
        user: i64,
        /// The node that should hold the user.
        node: String,
        /// A RESUME elsewhere replaced the session (not an operator's kick).
        replaced: bool,
    },
}

/// What a node does with bus traffic; implemented by the chat service.
pub trait BusHandler: Send + Sync {
    /// A message from another node. Runs on the subscriber thread (control
    /// messages) or the stream reader (deliveries); a delivery must be handed to
    /// the connections' loops or stored before this returns.
    /// A delivery whose recipients could be neither handed over nor stored (the
    /// store failed) comes back as `Err` with those recipients: the reader holds it
    /// for them and retries.
    fn on_message(&self, msg: BusMessage) -> Result<(), Orphan>;
    /// Calls `done` once everything handed to the IO loops so far has been written
    /// to the sockets (or buffered for slow ones). Runs on the stream reader, which
    /// trims its stream only then.
    fn after_delivery(&self, done: Box<dyn FnOnce() + Send>);
    /// A dead node's stream still exists: drain it into the store. Runs on a
    /// thread of its own that the keeper starts (the keeper must not miss its own
    /// heartbeats), one at a time per dead node.
    fn on_dead_node(&self, node: &str);
    /// Redis lost this node's presence (restart, or the node looked dead):
    /// claim every local user again. Runs on the keeper thread. Returns false if
    /// it could not finish; it is then called again after the next heartbeat.
    fn on_presence_lost(&self) -> bool;
    /// Redis is reachable again, or the subscriber re-subscribed, after a gap in
    /// which frames for local users may have been stored instead of delivered, and
    /// cache invalidations may have been missed: drop cached memberships and
    /// deliver what is stored for every local user. Runs on the keeper or
    /// subscriber thread.
    fn on_bus_restored(&self);
    /// After each successful heartbeat, on the keeper thread: retry work that
    /// failed while Redis was unreachable.
    fn on_heartbeat(&self);
}

/// An r2d2 manager for Redis connections with I/O timeouts.
struct Manager(redis::Client);

impl r2d2::ManageConnection for Manager {
    type Connection = Connection;
    type Error = redis::RedisError;

    fn connect(&self) -> RedisResult<Connection> {
        let con = self.0.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(con)
    }

    fn is_valid(&self, con: &mut Connection) -> RedisResult<()> {
        redis::cmd("PING").query(con)
    }

    fn has_broken(&self, con: &mut Connection) -> bool {
        !con.is_open()
    }
}

struct Keys {
    online: String,
    nodes: String,
    node_me: String,
    nodeusers_me: String,
    node_prefix: String,
    queue_prefix: String,
    queue_me: String,
    channel_all: String,
    prefix_colon: String,
}

struct Scripts {
    claim: Script,
    release: Script,
    route: Script,
    locate: Script,
    heartbeat: Script,
    sweep: Script,
    flush: Script,
    reset: Script,
    drain_take: Script,
    drained: Script,
    unlock: Script,
    leave: Script,
}

/// The Redis connection pool, scripts and keys of one node. Safe to share between threads.
pub struct Bus {
    cfg: BusConfig,
    client: redis::Client,
    pool: r2d2::Pool<Manager>,
    keys: Keys,
    scripts: Scripts,
    /// Milliseconds since `epoch` until which calls fail fast (a circuit breaker).
    down_until: AtomicU64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    /// Dead nodes a background drain is working on.
    draining: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Round trip, heartbeat age and stream lag, for health checks and metrics.
    health: admin::Health,
}

/// A fresh node id: the pid plus the clock, unique enough for a cluster.
pub fn new_node_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{:x}", std::process::id(), nanos & 0xffff_ffff_ffff)
}

impl Bus {
    /// Prepares the pool (connections are made lazily, so a node can start while
    /// Redis is down) and announces the node.
    pub fn connect(cfg: BusConfig) -> Result<Arc<Bus>, BusError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| BusError(e.to_string()))?;
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(0))
            // A dead Redis must not hold a worker (and the recipient's shard lock)
            // for long: the breaker takes over after the first failure.
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(Manager(client.clone()));
        let p = &cfg.prefix;
        let me = &cfg.node_id;
        let keys = Keys {
            online: format!("{p}:online"),
            nodes: format!("{p}:nodes"),
            node_me: format!("{p}:node:{me}"),
            nodeusers_me: format!("{p}:nodeusers:{me}"),
            node_prefix: format!("{p}:node:"),
            queue_prefix: format!("{p}:q:"),
            queue_me: format!("{p}:q:{me}"),
            channel_all: format!("{p}:ch:all"),
            prefix_colon: format!("{p}:"),
        };
        let scripts = Scripts {
            claim: Script::new(scripts::CLAIM),
            release: Script::new(scripts::RELEASE),
            route: Script::new(scripts::ROUTE),
            locate: Script::new(scripts::LOCATE),
            heartbeat: Script::new(scripts::HEARTBEAT),
            sweep: Script::new(scripts::SWEEP),
            flush: Script::new(scripts::FLUSH),
            reset: Script::new(scripts::RESET),
            drain_take: Script::new(scripts::DRAIN_TAKE),
            drained: Script::new(scripts::DRAINED),
            unlock: Script::new(scripts::UNLOCK),
            leave: Script::new(scripts::LEAVE),
        };
        let bus = Arc::new(Bus {
            cfg,
            client,
            pool,
            keys,
            scripts,
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            draining: parking_lot::Mutex::new(std::collections::HashSet::new()),
            health: admin::Health::default(),
        });
        let reset = bus.with_con(|c| {
            bus.scripts
                .reset
                .key(&bus.keys.online)
                .key(&bus.keys.nodeusers_me)
                .arg(&bus.cfg.node_id)
                .invoke::<i64>(c)
        });
        if let Err(e) = reset.and_then(|_| bus.heartbeat()) {
            log::warn!("bus: Redis not reachable yet ({e}); will keep trying");
        }
        Ok(bus)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs `f` on a pooled connection, failing fast while the breaker is open.
    ///
    /// After a failure the breaker stays open for [`BREAKER`]; then one caller probes
    /// Redis with a fresh connection while the others keep failing fast. Without the
    /// probe every caller would wait in the pool's checkout (which retries refused
    /// connects for [`IO_TIMEOUT`]) — each time the breaker closes during an outage,
    /// every worker stalled for 2 s, holding the shard lock of its recipient.
    fn with_con<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BusError> {
        let until = self.down_until.load(Ordering::Acquire);
        if until != 0 {
            let now = self.now_ms();
            let reopen = now + BREAKER.as_millis() as u64;
            if now < until
                || self
                    .down_until
                    .compare_exchange(until, reopen, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                return Err(BusError("unavailable (recent failure)".into()));
            }
            if let Err(e) = self.probe() {
                self.down_until.store(
                    self.now_ms() + BREAKER.as_millis() as u64,
                    Ordering::Release,
                );
                return Err(BusError(e.to_string()));
            }
            self.down_until.store(0, Ordering::Release);
        }
        let result = match self.pool.get() {
            Ok(mut con) => f(&mut con).map_err(|e| {
                let fatal = e.is_io_error() || e.is_timeout() || e.is_connection_dropped();
                (e.to_string(), fatal)
            }),
            Err(e) => Err((e.to_string(), true)),
        };
        result.map_err(|(msg, fatal)| {
            if fatal {
                // Never 0 (which means closed): `now_ms() + BREAKER` is at least 500.
                self.down_until.store(
                    self.now_ms() + BREAKER.as_millis() as u64,
                    Ordering::Release,
                );
            }
            BusError(msg)
        })
    }

    /// Whether Redis answers on a fresh connection (the breaker's half-open probe).
    fn probe(&self) -> RedisResult<()> {
        let mut con = self.client.get_connection_with_timeout(IO_TIMEOUT)?;
        con.set_read_timeout(Some(IO_TIMEOUT))?;
        con.set_write_timeout(Some(IO_TIMEOUT))?;
        redis::cmd("PING").query(&mut con)
    }

    /// Claims `uid` for this node unless another live node has it.
    pub fn claim(&self, uid: i64) -> Result<Claim, BusError> {
        self.claim_as(uid, false)
    }

    /// Claims `uid` for this node even from another live node (RESUME: the newer
    /// session wins; the caller tells that node to close its session). A dead
    /// node's undrained stream still comes first ([`Claim::Orphaned`]).
    pub fn take_over(&self, uid: i64) -> Result<Claim, BusError> {
        self.claim_as(uid, true)
    }

    fn claim_as(&self, uid: i64, take_over: bool) -> Result<Claim, BusError> {
        let owner: String = self.with_con(|c| {
            self.scripts
                .claim
                .key(&self.keys.online)
                .key(&self.keys.nodeusers_me)
                .arg(uid)
                .arg(&self.cfg.node_id)
                .arg(&self.keys.node_prefix)
                .arg(&self.keys.queue_prefix)
                .arg(if take_over { "1" } else { "0" })
                .arg(format!("{}nodeusers:", self.keys.prefix_colon))
                .invoke(c)
        })?;
        Ok(if owner.is_empty() {
            Claim::Claimed
        } else if let Some(from) = owner.strip_prefix('=') {
            Claim::Replaced(from.to_owned())
        } else if let Some(dead) = owner.strip_prefix('!') {
            Claim::Orphaned(dead.to_owned())
        } else {
            Claim::Taken(owner)
        })
    }

    /// Releases `uid` if this node holds it.
    pub fn release(&self, uid: i64) -> Result<(), BusError> {
        self.with_con(|c| {
            self.scripts
                .release
                .key(&self.keys.online)
                .key(&self.keys.nodeusers_me)
                .arg(uid)
                .arg(&self.cfg.node_id)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    /// Appends `frame` to the streams of the nodes of `uids`; returns the users with
    /// no node, for whom the caller stores it.
    pub fn route(&self, uids: &[i64], frame: &str) -> Result<Vec<i64>, BusError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let missed: Vec<String> = self.with_con(|c| {
            let mut inv = self.scripts.route.key(&self.keys.online);
            inv.arg(&self.keys.node_prefix)
                .arg(&self.keys.queue_prefix)
                .arg(frame);
            for u in uids {
                inv.arg(*u);
            }
            inv.invoke(c)
        })?;
        Ok(missed.iter().filter_map(|s| s.parse().ok()).collect())
    }

    /// The live node of each user, `None` when offline everywhere.
    pub fn locate(&self, uids: &[i64]) -> Result<Vec<Option<String>>, BusError> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let nodes: Vec<String> = self.with_con(|c| {
            let mut inv = self.scripts.locate.key(&self.keys.online);
            inv.arg(&self.keys.node_prefix);
            for u in uids {
                inv.arg(*u);
            }
            inv.invoke(c)
        })?;
        Ok(nodes
            .into_iter()
            .map(|n| if n.is_empty() { None } else { Some(n) })
            .collect())
    }

    /// Asks `node` to deliver the stored messages of `uids`: a notice in its stream,
    /// so it comes in order with the frames routed there after it.
    pub fn publish_flush(&self, node: &str, uids: &[i64]) -> Result<(), BusError> {
        self.with_con(|c| {
            self.scripts
                .flush
                .key(format!("{}{node}", self.keys.node_prefix))
                .key(format!("{}{node}", self.keys.queue_prefix))
                .arg(stream::id_text(uids))
                .invoke::<i64>(c)
        })?;
        Ok(())
    }

    /// Tells every node that a group's membership changed.
    pub fn broadcast_invalidate(&self, group: i64) -> Result<(), BusError> {
        self.broadcast(json!({"t": "inv", "g": group}).to_string())
    }

    /// Publishes `payload` on the channel every node listens to.
    fn broadcast(&self, payload: String) -> Result<(), BusError> {
        self.with_con(|c| {
            redis::cmd("PUBLISH")
                .arg(&self.keys.channel_all)
                .arg(payload)
                .query::<i64>(c)
        })?;
        Ok(())
    }

    /// Refreshes this node's liveness; `Ok(false)` when the key had been lost.
    pub fn heartbeat(&self) -> Result<bool, BusError> {
        let t = Instant::now();
        let existed: i64 = self.with_con(|c| {
            self.scripts
                .heartbeat
                .key(&self.keys.node_me)
                .key(&self.keys.nodes)
                .arg(self.cfg.node_ttl.as_millis() as u64)
                .arg(&self.cfg.node_id)
                .invoke(c)
        })?;
        self.beat_ok(t.elapsed());
        Ok(existed == 1)
    }

    /// Removes the presence of nodes whose liveness key expired and whose streams
    /// are drained. Returns how many were forgotten and the dead nodes whose streams
    /// still need a drain.
    pub fn sweep(&self) -> Result<(i64, Vec<String>), BusError> {
        self.with_con(|c| {
            self.scripts
                .sweep
                .key(&self.keys.nodes)
                .key(&self.keys.online)
                .arg(&self.keys.prefix_colon)
                .invoke(c)
        })
    }

    /// Clean leave: this node's users (only them) go offline, the node unregisters.
    pub fn leave(&self) -> Result<(), BusError> {
        self.with_con(|c| {
            self.scripts
                .leave
                .key(&self.keys.online)
                .key(&self.keys.nodeusers_me)
                .key(&self.keys.node_me)
                .key(&self.keys.nodes)
                .key(&self.keys.queue_me)
                .arg(&self.cfg.node_id)
                .invoke::<i64>(c)
        })?;
        Ok(())
    }
}

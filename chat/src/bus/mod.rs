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
mod connector;
mod records;
mod scripts;
mod stream;
mod threads;
mod throttle;

pub use admin::NodeInfo;
pub use threads::{parse_message, BusThreads};
pub use throttle::{Counted, ThrottleRule};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Connection, RedisResult, Script, ServerErrorKind};
use serde_json::json;

use connector::{Connector, Manager};

/// How long a failed Redis call makes the bus fail fast before trying again.
const BREAKER: Duration = Duration::from_millis(500);
/// Read/write timeout of every Redis call, so a hung Redis cannot hang a worker.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long writes stop waiting for replicas after a WAIT fell short.
const WAIT_PAUSE: Duration = Duration::from_secs(1);
/// How often the keeper sweeps dead nodes, in heartbeats: every one, so a killed
/// node's stream (what was routed to it after its death, and its dseq records)
/// reaches its users who resumed elsewhere within a heartbeat of its key expiring
/// (the sweep is one cheap script call).
const SWEEP_EVERY: u32 = 1;
/// How long the stream reader blocks in one XREAD when the stream is empty.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Most entries the reader takes from its stream per XREAD.
const READ_COUNT: usize = 1000;
/// The stream format this node reads besides plain entries: the field name of a
/// batch entry, and the value of the node's liveness key, which tells the other
/// nodes' route script to send it batches (`scripts::ROUTE`). Another format gets
/// another marker: a node never receives entries it cannot read.
const STREAM_FORMAT: &str = "b1";
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
    /// `redis://host:port[/db]`, or
    /// `redis+sentinel://host:port[,host:port…]/master[/db]` (see docs/protocol.md §9).
    pub url: String,
    /// Prefix of every key and channel, so deployments (and tests) can share a Redis.
    pub prefix: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How long the node stays "alive" without a heartbeat; its users become free
    /// to log in elsewhere this long after it dies.
    pub node_ttl: Duration,
    /// How many replicas must have a presence claim or a routed frame before the
    /// node goes on (Redis `WAIT`), so that a failover cannot lose it.
    pub wait: WaitReplicas,
}

/// How many replicas a write must reach (`WAIT`), and how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WaitReplicas {
    /// Replicas that must acknowledge the write (0: do not wait).
    pub replicas: u32,
    /// How long to wait for them at most.
    pub timeout: Duration,
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
    /// A live notice (PRESENCE and the like, never stored) for those of `to` who are
    /// on this node.
    Notice {
        /// Recipients, wherever they are.
        to: Vec<i64>,
        /// The frame's JSON text.
        frame: String,
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
    /// Before a frame (of `len` bytes) read from the stream for `to` is handed
    /// over: numbers it for each recipient whose session here acknowledges what it
    /// reads and has room for it in its ack window, returning (user, dseq). The
    /// reader records these in Redis before the frame goes out, so a drain of this
    /// node stores it with the same `dseq` (protocol.md §12).
    fn number(&self, _to: &[i64], _len: usize) -> Vec<(i64, u64)> {
        Vec::new()
    }
    /// The (user, dseq) records no longer needed since the last call (the frames
    /// were acknowledged, or stored again with their `dseq`): the reader deletes them.
    fn released(&self) -> Vec<(i64, u64)> {
        Vec::new()
    }
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

struct Keys {
    online: String,
    nodes: String,
    node_me: String,
    nodeusers_me: String,
    node_prefix: String,
    queue_prefix: String,
    queue_me: String,
    /// `P:qa:` (see `records`), and this node's.
    records_prefix: String,
    records_me: String,
    channel_all: String,
    /// `P:gv:` + group id: the version of the group's membership (see
    /// [`Bus::group_version`]).
    group_version_prefix: String,
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
    connector: Arc<Connector>,
    pool: r2d2::Pool<Manager>,
    keys: Keys,
    scripts: Scripts,
    /// Milliseconds since `epoch` until which calls fail fast (a circuit breaker).
    down_until: AtomicU64,
    /// Milliseconds since `epoch` until which writes do not wait for replicas.
    wait_off_until: AtomicU64,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    /// Dead nodes a background drain is working on.
    draining: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Round trip, heartbeat age and stream lag, for health checks and metrics.
    health: admin::Health,
    /// Membership versions this node wrote (with the node id, unique in the cluster).
    group_versions: AtomicU64,
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
        let connector = Arc::new(Connector::open(&cfg.url)?);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(0))
            // A dead Redis must not hold a worker (and the recipient's shard lock)
            // for long: the breaker takes over after the first failure.
            .connection_timeout(Duration::from_millis(500))
            .build_unchecked(Manager(connector.clone()));
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
            records_prefix: format!("{p}:qa:"),
            records_me: format!("{p}:qa:{me}"),
            channel_all: format!("{p}:ch:all"),
            group_version_prefix: format!("{p}:gv:"),
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
            connector,
            pool,
            keys,
            scripts,
            down_until: AtomicU64::new(0),
            wait_off_until: AtomicU64::new(0),
            epoch: Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            draining: parking_lot::Mutex::new(std::collections::HashSet::new()),
            health: admin::Health::default(),
            group_versions: AtomicU64::new(0),
        });
        // Records an earlier process under this id left (it was not drained) name
        // sessions that are gone: forgotten, not stored again.
        let fresh = bus.forget_own().and_then(|_| {
            bus.with_con(|c| redis::cmd("DEL").arg(&bus.keys.records_me).query::<()>(c))
        });
        if let Err(e) = fresh.and_then(|_| bus.heartbeat()) {
            log::warn!("bus: Redis not reachable yet ({e}); will keep trying");
        }
        Ok(bus)
    }

    /// Forgets every presence entry that points at this node (its users are then
    /// claimed again): what an earlier process under this id left, or what a new
    /// master says after a failover, which may still hold releases the old master
    /// acknowledged but never replicated.
    fn forget_own(&self) -> Result<(), BusError> {
        self.with_con(|c| {
            self.scripts
                .reset
                .key(&self.keys.online)
                .key(&self.keys.nodeusers_me)
                .arg(&self.cfg.node_id)
                .invoke::<i64>(c)
        })?;
        Ok(())
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
            Ok(mut p) => f(&mut p.con).map_err(|e| {
                // A demoted master: fail fast until the sentinels name the new one.
                p.demoted = e.kind() == ServerErrorKind::ReadOnly.into();
                let fatal =
                    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || p.demoted;
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
        redis::cmd("PING").query(&mut self.connector.connect()?)
    }

    /// [`Bus::with_con`] for a write a failover must not lose: with
    /// [`BusConfig::wait`], then waits (`WAIT`) until that many replicas have it, so
    /// the write is acknowledged (to the user) only once it would survive a
    /// failover. A shortfall (no replica, or a slow one) is not an error — the
    /// write is on the master, as without WAIT — but it stops the waiting for
    /// [`WAIT_PAUSE`]: while the replicas are away every write would otherwise
    /// wait the whole timeout, for nothing.
    fn with_replicated<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Result<T, BusError> {
        let want = self.cfg.wait;
        if want.replicas == 0 || self.now_ms() < self.wait_off_until.load(Ordering::Acquire) {
            return self.with_con(f);
        }
        let (value, acked) = self.with_con(|c| {
            let value = f(c)?;
            let acked: u32 = redis::cmd("WAIT")
                .arg(want.replicas)
                .arg(want.timeout.as_millis() as u64)
                .query(c)?;
            Ok((value, acked))
        })?;
        if acked < want.replicas {
            let until = self.now_ms() + WAIT_PAUSE.as_millis() as u64;
            if self.wait_off_until.swap(until, Ordering::AcqRel) < self.now_ms() {
                log::warn!(
                    "bus: {acked} of {} replica(s) acknowledged a write within {:?}; \
                     not waiting for replicas for {WAIT_PAUSE:?}",
                    want.replicas,
                    want.timeout
                );
            }
        }
        Ok(value)
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
        let owner: String = self.with_replicated(|c| {
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
        let mut missed = self.route_many(&[(uids, frame)])?;
        Ok(missed.pop().unwrap_or_default())
    }

    /// [`Bus::route`] for many frames (recipients, text) in one round trip (and,
    /// with [`BusConfig::wait`], one `WAIT`), appended in the order given: the
    /// users with no node, per frame.
    pub fn route_many(&self, frames: &[(&[i64], &str)]) -> Result<Vec<Vec<i64>>, BusError> {
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        self.routed(frames.len());
        let missed: Vec<String> = self.with_replicated(|c| {
            let mut inv = self.scripts.route.key(&self.keys.online);
            inv.arg(&self.keys.node_prefix)
                .arg(&self.keys.queue_prefix)
                .arg(STREAM_FORMAT);
            for (uids, frame) in frames {
                inv.arg(uids.len());
                for u in *uids {
                    inv.arg(*u);
                }
                inv.arg(*frame);
            }
            inv.invoke(c)
        })?;
        if missed.len() != frames.len() {
            return Err(BusError(format!(
                "route: {} answer(s) for {} frame(s)",
                missed.len(),
                frames.len()
            )));
        }
        Ok(missed
            .iter()
            .map(|m| m.split(',').filter_map(|s| s.parse().ok()).collect())
            .collect())
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

    /// Tells every node that a group's membership changed: a new version of it in
    /// Redis, which a node reads before it uses a cached member list
    /// ([`Bus::group_version`]), and a notice on the broadcast channel, which drops
    /// the cached lists at once. The notice alone comes too late for a chat sent
    /// right after the change was acknowledged: it can reach another node after the
    /// chat does, and that node would leave a new member out.
    pub fn broadcast_invalidate(&self, group: i64) -> Result<(), BusError> {
        let n = self.group_versions.fetch_add(1, Ordering::Relaxed);
        let version = format!("{}/{n}", self.cfg.node_id);
        let notice = json!({"t": "inv", "g": group}).to_string();
        self.with_con(|c| {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(self.group_version_key(group))
                .arg(version)
                .ignore()
                .cmd("PUBLISH")
                .arg(&self.keys.channel_all)
                .arg(notice)
                .ignore()
                .query::<()>(c)
        })
    }

    /// `P:gv:<group>`.
    fn group_version_key(&self, group: i64) -> String {
        format!("{}{group}", self.keys.group_version_prefix)
    }

    /// The version of a group's membership: `None` if it did not change since Redis
    /// started (or lost its data), else the last [`Bus::broadcast_invalidate`]'s.
    pub fn group_version(&self, group: i64) -> Result<Option<String>, BusError> {
        self.with_con(|c| {
            redis::cmd("GET")
                .arg(self.group_version_key(group))
                .query::<Option<String>>(c)
        })
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

    /// Sends a live notice to every node: `{"t":"note","to":[ids],"f":frame}`. Each node
    /// delivers it to those of `to` it has; lost when Redis is unreachable (by design:
    /// notices are not stored).
    pub fn broadcast_notice(&self, to: &[i64], frame: &str) -> Result<(), BusError> {
        self.broadcast(json!({"t": "note", "to": to, "f": frame}).to_string())
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
                .arg(STREAM_FORMAT)
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

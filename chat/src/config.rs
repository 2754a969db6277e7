//! Config: the command line (and environment) of `ChatServer`.

use std::net::{IpAddr, SocketAddr};

use clap::Parser;

use crate::bus::{new_node_id, BusConfig};
use crate::codec::DEFAULT_FRAME_LIMIT;
use crate::gateway::Limits;
use crate::server::ServerOptions;
use crate::service::HistoryOptions;

/// `ChatServer [IP] [PORT] [OPTIONS]` — as the original takes `ChatServer <ip> <port>`,
/// plus options, each also settable from the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ChatServer",
    version,
    about = "A cluster chat server (legacy ChatServer protocol)."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(default_value_t = 6000)]
    pub port: u16,
    /// Database: an SQLite file (`sqlite:PATH` or a path, created on first start) or
    /// `mysql://user:pass@host:port/db` (the database and tables are created or upgraded).
    #[arg(long, env = "CHAT_DB", default_value = "sqlite:chat.db")]
    pub db: String,
    /// Redis URL (`redis://127.0.0.1:6379`): run as a cluster node. Without it the
    /// node routes locally.
    #[arg(long, env = "CHAT_REDIS")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel (nodes of one cluster share it).
    #[arg(long, env = "CHAT_REDIS_PREFIX", default_value = "chat")]
    pub redis_prefix: String,
    /// This node's id in the cluster (default: made up from the pid and the clock).
    #[arg(long, env = "CHAT_NODE_ID")]
    pub node_id: Option<String>,
    /// Milliseconds a node stays alive in Redis without a heartbeat: after a crash its
    /// users can log in elsewhere this long later.
    #[arg(long, env = "CHAT_NODE_TTL_MS", default_value_t = 10_000)]
    pub node_ttl_ms: u64,
    /// IO loop threads (0: one per core).
    #[arg(long, env = "CHAT_IO_THREADS", default_value_t = 0)]
    pub io_threads: usize,
    /// Worker threads for database and password work (0: four per core).
    #[arg(long, env = "CHAT_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Database connections in the pool.
    #[arg(long, env = "CHAT_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Largest inbound frame in bytes; a larger one is refused and the connection closed.
    #[arg(long, env = "CHAT_FRAME_LIMIT", default_value_t = DEFAULT_FRAME_LIMIT)]
    pub frame_limit: usize,
    /// Connections beyond this are refused (error 112) and closed.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Seconds a new connection has to log in before it is closed (0: no limit).
    #[arg(long, env = "CHAT_LOGIN_TIMEOUT", default_value_t = 60)]
    pub login_timeout_secs: u64,
    /// Requests per second one connection may send; more get error 109 (0: no limit).
    #[arg(long, env = "CHAT_RATE", default_value_t = 1000)]
    pub rate: u32,
    /// Requests one connection may send in a burst above the rate.
    #[arg(long, env = "CHAT_BURST", default_value_t = 2000)]
    pub burst: u32,
    /// Output bytes queued for one connection above which it is a slow reader: its
    /// new messages are stored and delivered when it catches up.
    #[arg(long, env = "CHAT_OUTPUT_HIGH_WATER", default_value_t = 4 * 1024 * 1024)]
    pub output_high_water: usize,
    /// Memory cost of new password hashes in KiB (argon2id; the default is OWASP's).
    #[arg(long, env = "CHAT_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// Passes of new password hashes (argon2id).
    #[arg(long, env = "CHAT_ARGON2_PASSES", default_value_t = 2)]
    pub argon2_passes: u32,
    /// Keep no message history (HISTORY then answers empty pages).
    #[arg(long, env = "CHAT_NO_HISTORY")]
    pub no_history: bool,
    /// Delete history older than this many days (0: keep it forever).
    #[arg(long, env = "CHAT_HISTORY_DAYS", default_value_t = 0)]
    pub history_days: u64,
    /// Log level: error, warn, info, debug or trace (`RUST_LOG` overrides it).
    #[arg(long, env = "CHAT_LOG", default_value = "info")]
    pub log_level: String,
}

impl Config {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The server options, with 0 resolved against the machine's cores.
    pub fn server_options(&self) -> ServerOptions {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ServerOptions {
            io_threads: if self.io_threads == 0 {
                cores
            } else {
                self.io_threads
            },
            workers: if self.workers == 0 {
                4 * cores
            } else {
                self.workers
            },
            frame_limit: self.frame_limit,
            limits: Limits {
                max_connections: self.max_connections,
                login_timeout: std::time::Duration::from_secs(self.login_timeout_secs),
                rate: self.rate,
                burst: self.burst,
                output_high_water: self.output_high_water.max(1024),
            },
            bus: self.redis.as_ref().map(|url| BusConfig {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
                node_id: self.node_id.clone().unwrap_or_else(new_node_id),
                node_ttl: std::time::Duration::from_millis(self.node_ttl_ms.max(1000)),
            }),
            history: HistoryOptions {
                enabled: !self.no_history,
                retention: (self.history_days > 0).then(|| {
                    std::time::Duration::from_secs(self.history_days.saturating_mul(86_400))
                }),
            },
        }
    }
}

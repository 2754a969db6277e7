//! Config: the command line (and environment) of `ChatServer`.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::admin::AdminOptions;

use crate::bus::{new_node_id, BusConfig, WaitReplicas};
use crate::codec::DEFAULT_FRAME_LIMIT;
use crate::gateway::Limits;
use crate::hasher::HasherConfig;
use crate::server::ServerOptions;
use crate::service::throttle::ThrottleConfig;
use crate::service::HistoryOptions;
use crate::store::{self, OfflineLimits};

/// `ChatServer [IP] [PORT] [OPTIONS]` — as the original takes `ChatServer <ip> <port>`,
/// plus options, each also settable from the environment.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ChatServer",
    version,
    about = "A cluster chat server (legacy ChatServer protocol).",
    // The last of a repeated option wins, so a wrapper or a test can override
    // what an env file or a script already passed.
    args_override_self = true
)]
pub struct Config {
    /// Address or host name to listen on (`localhost`, `0.0.0.0`, `::1`).
    #[arg(default_value = "127.0.0.1")]
    pub ip: String,
    /// Port to listen on (0 picks a free one).
    #[arg(default_value_t = 6000)]
    pub port: u16,
    /// Database: an SQLite file (`sqlite:PATH` or a path, created on first start) or
    /// `mysql://user:pass@host:port/db` (the database and tables are created or upgraded).
    #[arg(long, env = "CHAT_DB", default_value = "sqlite:chat.db")]
    pub db: String,
    /// Redis URL: run as a cluster node. Without it the node routes locally. Either
    /// one Redis (`redis://127.0.0.1:6379[/DB]`) or a Sentinel-managed master
    /// (`redis+sentinel://HOST:PORT,HOST:PORT,.../MASTER[/DB]`), followed through failovers.
    #[arg(long, env = "CHAT_REDIS")]
    pub redis: Option<String>,
    /// Replicas that must have each presence claim and routed frame before the node
    /// goes on (Redis WAIT), so a failover cannot lose it (0: do not wait).
    #[arg(long, env = "CHAT_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,
    /// How long a WAIT for replicas may take. After a shortfall (the replicas are
    /// down or slow) the node stops waiting for a second.
    #[arg(long, env = "CHAT_REDIS_WAIT_MS", default_value_t = 200)]
    pub redis_wait_ms: u64,
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
    /// IO loop threads (0: one per two cores, at least one; see `default_io_threads`).
    #[arg(long, env = "CHAT_IO_THREADS", default_value_t = 0)]
    pub io_threads: usize,
    /// Worker threads for database and password work (0: four per core).
    #[arg(long, env = "CHAT_WORKERS", default_value_t = 0)]
    pub workers: usize,
    /// Database connections in the pool.
    #[arg(long, env = "CHAT_DB_POOL", default_value_t = 16)]
    pub db_pool: u32,
    /// Largest inbound frame in bytes; a larger one is refused and the connection closed.
    /// At least 128 (`MIN_FRAME_LIMIT`).
    #[arg(long, env = "CHAT_FRAME_LIMIT", default_value_t = DEFAULT_FRAME_LIMIT,
          value_parser = frame_limit)]
    pub frame_limit: usize,
    /// Connections beyond this are refused (error 112) and closed.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,
    /// Seconds a new connection has to log in before it is closed (0: no limit;
    /// default 60). The older env name `CHAT_LOGIN_TIMEOUT` is still read.
    #[arg(long, env = "CHAT_LOGIN_TIMEOUT_SECS")]
    pub login_timeout_secs: Option<u64>,
    /// The old name of `CHAT_LOGIN_TIMEOUT_SECS`.
    #[arg(long = "login-timeout", env = "CHAT_LOGIN_TIMEOUT", hide = true)]
    pub login_timeout_old: Option<u64>,
    /// Seconds a resume token stays valid after it was issued (RESUME, msgid 17).
    #[arg(long, env = "CHAT_RESUME_TTL_SECS", default_value_t = 86_400)]
    pub resume_ttl_secs: u64,
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
    /// WebSocket listener connections that may be in their HTTP phase at once (a
    /// request head not complete, or a page being sent); more get 503. They never
    /// count against --max-connections.
    #[arg(long, env = "CHAT_WS_HTTP_MAX", default_value_t = 64)]
    pub ws_http_max: usize,
    /// WebSocket listener connections one peer address may have in their HTTP
    /// phase at once (at least 1): one address cannot hold --ws-http-max alone.
    #[arg(long, env = "CHAT_WS_HTTP_PER_IP", default_value_t = 8)]
    pub ws_http_per_ip: usize,
    /// Seconds a WebSocket listener connection may spend in its HTTP phase (from
    /// its accept to the upgrade, or to the end of a page's reply), at least 1.
    #[arg(long, env = "CHAT_WS_HTTP_TIMEOUT_SECS", default_value_t = 10)]
    pub ws_http_timeout_secs: u64,
    /// Most messages stored for one offline recipient; more are refused (errno 206).
    #[arg(long, env = "CHAT_OFFLINE_MAX_MESSAGES", default_value_t = store::offline_defaults().max_messages)]
    pub offline_max_messages: u64,
    /// Most bytes of messages stored for one offline recipient; more are refused.
    #[arg(long, env = "CHAT_OFFLINE_MAX_BYTES", default_value_t = store::offline_defaults().max_bytes)]
    pub offline_max_bytes: u64,
    /// Percent of both bounds one sender may fill for one recipient (1-100).
    #[arg(long, env = "CHAT_OFFLINE_SENDER_PERCENT", default_value_t = store::offline_defaults().sender_percent)]
    pub offline_sender_percent: u64,
    /// Failed logins an account gets before it is locked (0: no throttle); each
    /// further one doubles the lock.
    #[arg(long, env = "CHAT_LOGIN_FAILURES", default_value_t = 5)]
    pub login_failures: u32,
    /// The first lock of an account, in milliseconds.
    #[arg(long, env = "CHAT_LOGIN_BACKOFF_MS", default_value_t = 1000)]
    pub login_backoff_ms: u64,
    /// The longest lock of an account, in seconds.
    #[arg(long, env = "CHAT_LOGIN_BACKOFF_MAX_SECS", default_value_t = 900)]
    pub login_backoff_max_secs: u64,
    /// Password-hashing threads (0: one per core).
    #[arg(long, env = "CHAT_HASHERS", default_value_t = 0)]
    pub hashers: usize,
    /// Hashes one peer address may have running while another address's login waits.
    #[arg(long, env = "CHAT_HASHES_PER_PEER", default_value_t = 1)]
    pub hashes_per_peer: usize,
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
    /// Log level: error, warn, info, debug or trace (default info; `RUST_LOG`
    /// overrides it). The older env name `CHAT_LOG` is still read.
    #[arg(long, env = "CHAT_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// The old name of `CHAT_LOG_LEVEL`.
    #[arg(long = "log", env = "CHAT_LOG", hide = true)]
    pub log_level_old: Option<String>,
    /// Log lines as plain text or as one JSON object per line.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// `HOST:PORT` of the admin HTTP listener (`/healthz`, `/readyz`, `/metrics`,
    /// and the `/admin/` routes behind the bearer token in `CHAT_ADMIN_TOKEN`).
    /// Off by default.
    #[arg(long, env = "CHAT_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// `HOST:PORT` of the WebSocket listener, which also serves the web client
    /// (`GET /`; browsers chat through `/ws`). Off by default.
    #[arg(long, env = "CHAT_WS_ADDR")]
    pub ws_addr: Option<String>,
}

/// The format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `[time level target] message`, env_logger's default.
    Text,
    /// `{"ts":…,"level":…,"target":…,"msg":…}`, one object per line.
    Json,
}

/// The first address `host` (with `port`) resolves to, IPv4 first.
pub fn resolve(host: &str, port: u16) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("{host}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| io::Error::other(format!("{host}: resolves to no address")))
}

/// The smallest `--frame-limit`: room for a LOGIN or a short chat. Below it (0 above
/// all) every frame a client can send would be refused with error 106, and the node
/// would serve nobody.
pub const MIN_FRAME_LIMIT: usize = 128;

/// Parses `--frame-limit`, refusing a limit below [`MIN_FRAME_LIMIT`].
fn frame_limit(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    if n < MIN_FRAME_LIMIT {
        return Err(format!(
            "{n} bytes is too small: every frame would be refused (at least {MIN_FRAME_LIMIT})"
        ));
    }
    Ok(n)
}

/// IO loops when none are asked for: one per two cores, at least one. The loops
/// share the machine with the workers, the history writer and the database; on the
/// 2-core VM of BENCHMARKS.md ("CPU per message, session 6") one loop costs 7.0 µs of
/// CPU per one-to-one message at N = 1,000 against 9.5 for two (each loop touches
/// sockets and sessions the other's core just had, and both sleep and wake more),
/// and delivers as much at N = 100, W = 16.
pub fn default_io_threads(cores: usize) -> usize {
    cores.div_ceil(2).max(1)
}

/// `HOST:PORT` resolved (IPv4 first).
fn resolve_pair(hostport: &str) -> io::Result<SocketAddr> {
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| io::Error::other(format!("{hostport}: expected HOST:PORT")))?;
    let port = port
        .parse()
        .map_err(|_| io::Error::other(format!("{hostport}: bad port")))?;
    resolve(host.trim_start_matches('[').trim_end_matches(']'), port)
}

impl Config {
    /// The log filter: `--log-level`, else the old `CHAT_LOG`, else `info`.
    pub fn log_filter(&self) -> &str {
        self.log_level
            .as_deref()
            .or(self.log_level_old.as_deref())
            .unwrap_or("info")
    }

    /// The listen address (a host name is resolved).
    pub fn addr(&self) -> io::Result<SocketAddr> {
        resolve(&self.ip, self.port)
    }

    /// The server options, with 0 resolved against the machine's cores and the
    /// admin address resolved; the admin token is read from `CHAT_ADMIN_TOKEN`.
    pub fn server_options(&self) -> io::Result<ServerOptions> {
        let admin = match &self.admin_addr {
            Some(a) => Some(AdminOptions {
                addr: resolve_pair(a)?,
                token: std::env::var("CHAT_ADMIN_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty()),
            }),
            None => None,
        };
        let login_timeout = self
            .login_timeout_secs
            .or(self.login_timeout_old)
            .unwrap_or(60);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ws_addr = self.ws_addr.as_deref().map(resolve_pair).transpose()?;
        Ok(ServerOptions {
            admin,
            ws_addr,
            io_threads: if self.io_threads == 0 {
                default_io_threads(cores)
            } else {
                self.io_threads
            },
            workers: if self.workers == 0 {
                4 * cores
            } else {
                self.workers
            },
            frame_limit: self.frame_limit,
            resume_ttl: std::time::Duration::from_secs(self.resume_ttl_secs.max(1)),
            limits: Limits {
                max_connections: self.max_connections,
                login_timeout: std::time::Duration::from_secs(login_timeout),
                rate: self.rate,
                burst: self.burst,
                output_high_water: self.output_high_water.max(1024),
                http_max: self.ws_http_max.max(1),
                http_per_ip: self.ws_http_per_ip.max(1),
                http_timeout: Duration::from_secs(self.ws_http_timeout_secs.max(1)),
            },
            offline: OfflineLimits {
                max_messages: self.offline_max_messages,
                max_bytes: self.offline_max_bytes,
                sender_percent: self.offline_sender_percent.clamp(1, 100),
            },
            throttle: ThrottleConfig {
                free_attempts: self.login_failures,
                backoff_base: Duration::from_millis(self.login_backoff_ms.max(1)),
                backoff_max: Duration::from_secs(self.login_backoff_max_secs),
            },
            hashing: HasherConfig {
                threads: self.hashers,
                per_peer: self.hashes_per_peer.max(1),
            },
            bus: self.redis.as_ref().map(|url| BusConfig {
                url: url.clone(),
                prefix: self.redis_prefix.clone(),
                node_id: self.node_id.clone().unwrap_or_else(new_node_id),
                node_ttl: std::time::Duration::from_millis(self.node_ttl_ms.max(1000)),
                wait: WaitReplicas {
                    replicas: self.redis_wait_replicas,
                    timeout: std::time::Duration::from_millis(self.redis_wait_ms.max(1)),
                },
            }),
            history: HistoryOptions {
                enabled: !self.no_history,
                retention: (self.history_days > 0).then(|| {
                    std::time::Duration::from_secs(self.history_days.saturating_mul(86_400))
                }),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_io_loop_per_two_cores() {
        let got: Vec<_> = [0, 1, 2, 3, 4, 8].map(default_io_threads).into();
        assert_eq!(got, [1, 1, 1, 2, 2, 4]);
    }

    /// The old names (`CHAT_LOG`, `CHAT_LOGIN_TIMEOUT`, and their hidden flags) are
    /// read when the new ones are absent, and lose to them when both are set.
    #[test]
    fn old_names_are_aliases() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("ChatServer").chain(args.iter().copied()))
                .expect("valid arguments")
        };
        let c = parse(&["--log", "debug", "--login-timeout", "7"]);
        assert_eq!(c.log_filter(), "debug");
        let opts = c.server_options().unwrap();
        assert_eq!(opts.limits.login_timeout, std::time::Duration::from_secs(7));
        let c = parse(&[
            "--log",
            "debug",
            "--log-level",
            "warn",
            "--login-timeout",
            "7",
        ]);
        assert_eq!(c.log_filter(), "warn");
        let c = parse(&["--login-timeout", "7", "--login-timeout-secs", "9"]);
        let opts = c.server_options().unwrap();
        assert_eq!(opts.limits.login_timeout, std::time::Duration::from_secs(9));
        assert_eq!(parse(&[]).log_filter(), "info");
    }

    #[test]
    fn host_names_resolve() {
        assert!(resolve("localhost", 6000).unwrap().ip().is_loopback());
        assert_eq!(
            resolve_pair("[::1]:9101").unwrap(),
            "[::1]:9101".parse().unwrap()
        );
        assert!(resolve_pair("localhost").is_err());
    }
}

//! The cluster test harness: a [`Cluster`] of real `ChatServer` processes behind a
//! private nginx, started by `scripts/cluster.sh` on a fresh MySQL database and a
//! fresh Redis key prefix, and torn down (processes, database, keys) when dropped —
//! also when the test panics. Plus a private [`RedisServer`] for the tests that
//! restart Redis, the blocking [`client::Client`] and the threaded
//! [`traffic`] generator with its delivery ledger.
//!
//! The services are required: a missing MariaDB, Redis or nginx fails the tests with
//! a message saying so (`bash scripts/ensure-services.sh` installs and starts them).
#![allow(dead_code)] // not every test uses every helper

pub mod client;
pub mod sentinel;
pub mod traffic;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use ::mysql::prelude::Queryable;
use serde_json::Value;

use client::Client;

/// The MySQL server of the tests (root, no password), without a database.
pub const MYSQL_SERVER: &str = "mysql://root@127.0.0.1:3306";
/// The machine's shared Redis; tests only ever use keys under their own prefix.
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
/// nginx's stream module, which the load balancer config loads.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// What to run when a service is missing.
const HINT: &str = "run `bash scripts/ensure-services.sh` (as root) to install and start it";

/// Serialises the tests of a binary: they start processes and take ports.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Distinguishes the clusters (database, key prefix, directory) of this process.
pub(crate) fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Polls `f` every 10 ms until it returns `Some`; panics after `limit`.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Panics with a clear message unless MariaDB, the shared Redis, nginx with its
/// stream module and `redis-server` are all there. CI must fail, never skip.
pub fn require_services() {
    if let Err(e) = mysql_conn() {
        panic!("cluster tests need MariaDB at {MYSQL_SERVER} (root, no password): {e}; {HINT}");
    }
    if let Err(e) =
        redis_con(SHARED_REDIS).and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
    {
        panic!("cluster tests need Redis at {SHARED_REDIS}: {e}; {HINT}");
    }
    let nginx = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status();
    if !nginx.is_ok_and(|s| s.success()) || !Path::new(NGINX_STREAM_MODULE).exists() {
        panic!("cluster tests need nginx with the stream module ({NGINX_STREAM_MODULE}); {HINT}");
    }
    let rs = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status();
    if !rs.is_ok_and(|s| s.success()) {
        panic!("cluster tests need the redis-server binary; {HINT}");
    }
}

fn mysql_conn() -> Result<::mysql::Conn, ::mysql::Error> {
    let opts = ::mysql::OptsBuilder::from_opts(::mysql::Opts::from_url(MYSQL_SERVER).unwrap())
        .tcp_connect_timeout(Some(Duration::from_secs(3)))
        .read_timeout(Some(Duration::from_secs(30)));
    ::mysql::Conn::new(opts)
}

/// A Redis connection with short timeouts.
pub fn redis_con(url: &str) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    con.set_write_timeout(Some(Duration::from_secs(2)))?;
    Ok(con)
}

/// The kernel's ephemeral port range (where `bind(:0)` and outgoing connections take
/// their ports).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|p| p.parse().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// `n` consecutive free ports (cluster.sh numbers its nodes BASE_PORT, +1, ...), each
/// checked by binding it. They are taken below the ephemeral range: a port found with
/// `bind(:0)` is released before the node binds it, and meanwhile any process on the
/// machine may get it for its own `bind(:0)` or an outgoing connection (a node once
/// failed with "Address already in use" that way).
pub fn free_port_run(n: usize) -> u16 {
    let (eph_lo, _) = ephemeral_range();
    let (lo, hi) = (10_000u64, u64::from(eph_lo).saturating_sub(n as u64 + 1));
    assert!(hi > lo + 1000, "no room below the ephemeral range {eph_lo}");
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20)
        | 1;
    for _ in 0..500 {
        // xorshift64: cheap, good enough to spread the candidates.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let first = (lo + x % (hi - lo)) as u16;
        let held: Vec<_> = (0..n as u16)
            .map_while(|i| TcpListener::bind(("127.0.0.1", first + i)).ok())
            .collect();
        if held.len() == n {
            return first;
        }
    }
    panic!("no run of {n} free ports found below {eph_lo}");
}

/// A free port (see [`free_port_run`]).
pub fn free_port() -> u16 {
    free_port_run(1)
}

/// Whether a process is alive (a zombie counts as dead: nobody may reap it here).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Sends `signal` (e.g. "-9", "-TERM") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {signal} {pid} failed");
}

/// A `redis-server` child of this test on a free port, without persistence, so a
/// restart loses everything (as a crashed cache would) and the machine's shared
/// Redis is never touched. Killed when dropped.
pub struct RedisServer {
    /// The port it listens on, kept across restarts.
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            child: None,
        };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let url = self.url();
        poll(
            Duration::from_secs(10),
            "private redis-server answers PING",
            || {
                redis_con(&url)
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .ok()
            },
        );
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it (SIGKILL: everything in it is lost) and waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How to start a cluster.
pub struct ClusterOpts {
    /// Number of nodes.
    pub nodes: usize,
    /// Redis URL (default: the shared one, under a private prefix).
    pub redis: String,
    /// `--node-ttl-ms`, when not the default 10000.
    pub node_ttl_ms: Option<u64>,
    /// More node options.
    pub node_args: String,
}

impl Default for ClusterOpts {
    fn default() -> Self {
        ClusterOpts {
            nodes: 2,
            redis: SHARED_REDIS.to_owned(),
            node_ttl_ms: None,
            node_args: String::new(),
        }
    }
}

/// A running cluster: N `ChatServer` nodes and an nginx in front of them, each with
/// a private database, Redis prefix, directory and ports. Dropping it stops them
/// (`cluster.sh stop`), drops the database and deletes the Redis keys.
pub struct Cluster {
    /// `$CLUSTER_DIR`: pid files, logs, nginx config.
    pub dir: PathBuf,
    /// Port of node 1; node i listens on `base_port + i - 1`.
    pub base_port: u16,
    /// nginx's listen port.
    pub lb_port: u16,
    /// Node i's WebSocket / web client port (`--ws-addr`): `ws_base_port + i - 1`.
    pub ws_base_port: u16,
    /// nginx's HTTP / WebSocket port in front of them (the web client's address).
    pub web_port: u16,
    /// Number of nodes.
    pub nodes: usize,
    /// The Redis the nodes use.
    pub redis: String,
    /// Every key and channel of this cluster starts with `prefix:`.
    pub prefix: String,
    db: String,
    /// Set once `cluster.sh start` was run, so Drop knows to stop it.
    started: bool,
    env: Vec<(String, String)>,
}

/// The cluster script.
pub(crate) fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Cluster {
    /// Starts a cluster; panics (after cleaning up) if it does not come up. A start
    /// that lost a port race ("Address already in use") is retried on other ports.
    pub fn start(opts: ClusterOpts) -> Cluster {
        require_services();
        let u = unique();
        let mut c = Cluster {
            dir: std::env::temp_dir().join(format!("chat_cluster_{u}")),
            base_port: 0,
            lb_port: 0,
            ws_base_port: 0,
            web_port: 0,
            nodes: opts.nodes,
            redis: opts.redis,
            prefix: format!("cltest_{u}"),
            db: format!("chat_cl_{u}"),
            started: false,
            env: Vec::new(),
        };
        // CLUSTER_TEST_NODE_ARGS: extra node options when debugging (`--log-level debug`).
        let node_args = format!(
            "{} {} {}",
            opts.node_ttl_ms
                .map(|ms| format!("--node-ttl-ms {ms}"))
                .unwrap_or_default(),
            opts.node_args,
            std::env::var("CLUSTER_TEST_NODE_ARGS").unwrap_or_default()
        );
        for attempt in 1..=3 {
            // The nodes, nginx's TCP port, the nodes' WebSocket ports, nginx's web port.
            let n = opts.nodes as u16;
            c.base_port = free_port_run(2 * opts.nodes + 2);
            c.lb_port = c.base_port + n;
            c.ws_base_port = c.lb_port + 1;
            c.web_port = c.ws_base_port + n;
            let _ = std::fs::remove_dir_all(&c.dir);
            c.env = vec![
                ("CLUSTER_DIR".into(), c.dir.display().to_string()),
                ("CHAT_DB".into(), format!("{MYSQL_SERVER}/{}", c.db)),
                ("CHAT_REDIS".into(), c.redis.clone()),
                ("CHAT_REDIS_PREFIX".into(), c.prefix.clone()),
                ("BASE_PORT".into(), c.base_port.to_string()),
                ("LB_PORT".into(), c.lb_port.to_string()),
                ("WS_BASE_PORT".into(), c.ws_base_port.to_string()),
                ("WEB_PORT".into(), c.web_port.to_string()),
                ("CHAT_BIN".into(), env!("CARGO_BIN_EXE_ChatServer").into()),
                ("NODE_ARGS".into(), node_args.clone()),
            ];
            c.started = true;
            let out = c.run_script(&["start", &opts.nodes.to_string()]);
            // cluster.sh only checks that the ports answer: make sure our nodes do.
            let up = out.status.success() && (1..=opts.nodes).all(|i| alive(c.pid(i)));
            if up {
                return c;
            }
            let logs = c.logs();
            let _ = c.run_script(&["stop"]);
            c.started = false;
            if attempt < 3 && logs.contains("Address already in use") {
                eprintln!("cluster start lost a port race (attempt {attempt}); retrying");
                continue;
            }
            panic!(
                "cluster.sh start failed: {}\n{logs}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        unreachable!("the last attempt returns or panics")
    }

    fn run_script(&self, args: &[&str]) -> std::process::Output {
        Command::new("bash")
            .arg(script())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/cluster.sh")
    }

    /// The port of node `i` (1-based, as cluster.sh numbers them).
    pub fn port(&self, i: usize) -> u16 {
        assert!((1..=self.nodes).contains(&i), "no node {i}");
        self.base_port + i as u16 - 1
    }

    /// The node id cluster.sh gives node `i`.
    pub fn node_id(&self, i: usize) -> String {
        format!("node{i}-{}", self.port(i))
    }

    /// The pid of node `i`, from `$CLUSTER_DIR/node<i>.pid`.
    pub fn pid(&self, i: usize) -> u32 {
        let f = self.dir.join(format!("node{i}.pid"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        text.trim().parse().expect("a pid")
    }

    /// `kill -9` node `i`; returns when it is gone.
    pub fn kill9(&self, i: usize) {
        let pid = self.pid(i);
        signal(pid, "-9");
        poll(Duration::from_secs(10), "killed node exits", || {
            (!alive(pid)).then_some(())
        });
    }

    /// A connection to this cluster's Redis.
    pub fn redis(&self) -> redis::Connection {
        redis_con(&self.redis).unwrap_or_else(|e| panic!("redis {}: {e}", self.redis))
    }

    /// The node user `uid` is registered on in Redis, `None` if none.
    pub fn try_presence(&self, uid: i64) -> redis::RedisResult<Option<String>> {
        redis::cmd("HGET")
            .arg(format!("{}:online", self.prefix))
            .arg(uid)
            .query(&mut redis_con(&self.redis)?)
    }

    /// [`Cluster::try_presence`], which must not fail.
    pub fn presence(&self, uid: i64) -> Option<String> {
        self.try_presence(uid)
            .unwrap_or_else(|e| panic!("HGET presence of {uid}: {e}"))
    }

    /// Waits until Redis says `uid` is on node `i`; returns how long that took.
    pub fn wait_presence(&self, uid: i64, i: usize, limit: Duration) -> Duration {
        let t = Instant::now();
        let want = self.node_id(i);
        poll(
            limit,
            &format!("user {uid} present on {want} in Redis"),
            || {
                let at = self.try_presence(uid).ok().flatten();
                (at.as_deref() == Some(want.as_str())).then_some(())
            },
        );
        t.elapsed()
    }

    /// The tail of every node's log and of nginx's error log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = (1..=self.nodes).map(|i| format!("node{i}.log")).collect();
        names.push("nginx-error.log".into());
        for name in names {
            let text = std::fs::read_to_string(self.dir.join(&name)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            out.push_str(&format!(
                "--- {name} (last {} lines)\n{}\n",
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "cluster in {} at failure:\n{}",
                self.dir.display(),
                self.logs()
            );
        }
        if self.started {
            let out = self.run_script(&["stop"]);
            if !out.status.success() {
                eprintln!("cluster.sh stop: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        match mysql_conn()
            .and_then(|mut c| c.query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.db)))
        {
            Ok(()) => {}
            Err(e) => eprintln!("could not drop test database {}: {e}", self.db),
        }
        let deleted = redis_con(&self.redis).and_then(|mut con| {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:*", self.prefix))
                .query(&mut con)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(&keys).query::<i64>(&mut con)?;
            }
            Ok(())
        });
        if let Err(e) = deleted {
            // A private Redis may already be gone with its keys; the shared one must not be.
            if self.redis == SHARED_REDIS {
                eprintln!("could not delete Redis keys {}:*: {e}", self.prefix);
            }
        }
        // CLUSTER_TEST_KEEP=1 keeps the logs of passing tests too.
        if !thread::panicking() && std::env::var_os("CLUSTER_TEST_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Registers `names` (password = name) on node 1; returns their ids.
pub fn register(c: &Cluster, names: &[&str]) -> Vec<i64> {
    let mut reg = Client::connect(c.port(1));
    names.iter().map(|n| reg.register(n, n)).collect()
}

/// A connection to `port` logged in as `id` (password `name`).
pub fn login(port: u16, id: i64, name: &str) -> (Client, Value) {
    let mut cl = Client::connect(port);
    let ack = cl.login_ok(id, name);
    (cl, ack)
}

/// Logs `id` in through `port`, retrying while it is still online elsewhere (errno 2),
/// for at most `limit`. Returns the connection and the ACK.
pub fn login_when_free(port: u16, id: i64, name: &str, limit: Duration) -> (Client, Value) {
    let start = Instant::now();
    let mut cl = Client::connect(port);
    loop {
        let ack = cl.login(id, name);
        match ack["errno"].as_i64() {
            Some(0) => return (cl, ack),
            // Online elsewhere, or (110) its dead node is being drained: retry.
            Some(2) | Some(110) => {}
            _ => panic!("login of {id}: {ack}"),
        }
        assert!(
            start.elapsed() < limit,
            "user {id} still online elsewhere after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Helpers of the hardening tests: a `ChatServer` child process whose memory can be
//! measured on its own ([`ServerProc`]), an RSS sampler ([`RssMonitor`]), a private
//! MariaDB ([`mariadb::MariaDb`]), the malformed-frame generator ([`malformed`]) and a
//! raw frame reader that counts instead of asserting ([`RawReader`]), and a
//! well-behaved chatting pair that measures latency ([`pair::Pair`]), and the
//! reading and accounting helpers of [`chats`].
//!
//! External programs (`mariadbd`, `mariadb-install-db`, `redis-server`) are required:
//! a missing one fails the test with a message saying so, it never skips it.
#![allow(dead_code)] // each test uses a different subset

pub mod chats;
pub mod malformed;
pub mod mariadb;
pub mod pair;

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Distinguishes the files and databases of tests running in parallel.
pub fn unique() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The full path of an external program, searched in `PATH` and the sbin directories
/// (where `mariadbd` lives, and which a non-root `PATH` often lacks). Panics with a
/// clear message when it is not installed: the hardening tests need it, and CI must
/// fail rather than skip.
pub fn require_binary(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        [
            "/usr/sbin",
            "/usr/local/sbin",
            "/sbin",
            "/usr/bin",
            "/usr/local/bin",
        ]
        .iter()
        .map(PathBuf::from),
    );
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the hardening tests need `{name}`, which is not installed (not in PATH nor in \
         /usr/sbin); run `bash scripts/ensure-services.sh` or install it (MariaDB server / \
         redis-server packages)"
    );
}

/// The resident set size of process `pid` in KiB (`VmRSS`), or `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14 and stime 15 (1-based).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Samples a process's RSS every 20 ms on a thread and keeps the peak.
pub struct RssMonitor {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u64>>,
}

impl RssMonitor {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> RssMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::spawn(move || {
            let mut peak = 0;
            while !s.load(Ordering::Acquire) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(20));
            }
            peak.max(rss_kib(pid).unwrap_or(0))
        });
        RssMonitor {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling; returns the peak in KiB.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.handle
            .take()
            .map(|h| h.join().expect("rss sampler"))
            .unwrap_or(0)
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// How many log lines of a child server are kept for failure messages.
const LOG_TAIL: usize = 40;

/// A `ChatServer` child process on `127.0.0.1:0` with its own SQLite file: its RSS
/// is the server's alone, not polluted by the test threads or the other tests of the
/// binary. Killed (and its database deleted) when dropped, also on panic.
pub struct ServerProc {
    child: Child,
    /// The address it listens on (read from its "listening on" log line).
    pub addr: SocketAddr,
    db: PathBuf,
    log: Arc<Mutex<VecDeque<String>>>,
}

impl ServerProc {
    /// Starts the server with `extra` options (e.g. `--output-high-water 262144`).
    /// Password hashes are made cheap (the cost is irrelevant here and a 19 MiB
    /// argon2 buffer per login would blur the memory figures).
    pub fn start(extra: &[&str]) -> ServerProc {
        let db = std::env::temp_dir().join(format!("chat_hard_{}.db", unique()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_ChatServer"))
            .args(["127.0.0.1", "0", "--db"])
            .arg(format!("sqlite:{}", db.display()))
            .args(["--log-level", "info", "--io-threads", "2", "--workers", "4"])
            .args(["--argon2-memory-kib", "1024", "--argon2-passes", "1"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the ChatServer binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        if let (Some(tx), Some(addr)) = (tx.take(), rest.split(' ').next()) {
                            let _ = tx.send(addr.to_owned());
                        }
                    }
                    let mut l = log.lock().unwrap();
                    if l.len() == LOG_TAIL {
                        l.pop_front();
                    }
                    l.push_back(line);
                }
            });
        }
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().expect("a socket address in the log line"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "ChatServer did not report its address within 20 s; log:\n{}",
                    log.lock()
                        .unwrap()
                        .iter()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        };
        ServerProc {
            child,
            addr,
            db,
            log,
        }
    }

    /// The address of its HTTP listener `what` ("WebSocket" for `--ws-addr`,
    /// "admin" for `--admin-addr`, either given as `127.0.0.1:0`), read from its
    /// log line.
    pub fn http_addr(&self, what: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = format!("{what} listening on http://");
        loop {
            let logged = self.log.lock().unwrap().iter().find_map(|l| {
                let rest = l.split(line.as_str()).nth(1)?;
                rest.split(' ').next()?.parse().ok()
            });
            if let Some(addr) = logged {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} listener logged within 20 s; log:\n{}",
                self.log_tail()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its RSS in KiB; panics if the process is gone.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid()).expect("the server process is gone")
    }

    /// How many offline messages its database holds for `user` right now.
    pub fn stored_for(&self, user: i64) -> usize {
        crate::util::stored_rows(&format!("sqlite:{}", self.db.display()), user)
    }

    /// Panics (with the log tail) if the process exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("the server exited ({status}); log:\n{}", self.log_tail());
        }
    }

    /// The last lines it logged.
    pub fn log_tail(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("server {} log tail:\n{}", self.addr, self.log_tail());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.db.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// MiB from KiB, for messages.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What a [`RawReader`] read.
#[derive(Debug)]
pub enum Next {
    /// A frame, parsed.
    Frame(Value),
    /// Nothing before the deadline.
    Timeout,
    /// The server closed the connection (EOF or reset).
    Eof,
}

/// A reader of NUL-terminated frames that reports timeouts and EOF instead of
/// panicking, for tests that count what arrives.
pub struct RawReader {
    stream: TcpStream,
    pending: Vec<u8>,
    buf: Vec<u8>,
}

impl RawReader {
    /// Reads from (a clone of) `stream`.
    pub fn new(stream: &TcpStream) -> RawReader {
        RawReader {
            stream: stream.try_clone().expect("clone the socket"),
            pending: Vec::new(),
            buf: vec![0; 64 * 1024],
        }
    }

    /// The next frame if one arrives before `deadline`.
    pub fn next_by(&mut self, deadline: Instant) -> Next {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == 0) {
                let frame: Vec<u8> = self.pending.drain(..=pos).collect();
                let v = serde_json::from_slice(&frame[..frame.len() - 1]).unwrap_or_else(|e| {
                    panic!(
                        "server sent a bad frame {:?}: {e}",
                        String::from_utf8_lossy(&frame)
                    )
                });
                return Next::Frame(v);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Next::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut self.buf) {
                Ok(0) => return Next::Eof,
                Ok(n) => self.pending.extend_from_slice(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Next::Timeout
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Next::Eof,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// The next frame within `limit`.
    pub fn next_within(&mut self, limit: Duration) -> Next {
        self.next_by(Instant::now() + limit)
    }

    /// Bytes received but not yet returned as a frame.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Latency figures of a chatting pair, in milliseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<f64>,
}

impl Latencies {
    /// Adds one round.
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d.as_secs_f64() * 1000.0);
    }

    /// Number of rounds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether no round was measured.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The `q` quantile (0..=1) in ms.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s[((s.len() - 1) as f64 * q).round() as usize]
    }

    /// The largest, in ms.
    pub fn max(&self) -> f64 {
        self.quantile(1.0)
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} rounds, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            self.len(),
            self.quantile(0.5),
            self.quantile(0.99),
            self.max()
        )
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

//! Helpers shared by the integration tests: a server on its own thread, blocking
//! std clients with timeouts, polling with a deadline, and descriptor limits.
//!
//! Every blocking wait here has a timeout, so a bug fails a test instead of
//! hanging CI.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use net::{EventLoop, LoopHandle, TcpServer};

/// How long any single blocking step may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A server running on its own thread. Dropping it quits the loop and joins the
/// thread, so a failing test still cleans up.
pub struct TestServer {
    /// The bound address (the real port, never 0).
    pub addr: SocketAddr,
    /// The server's base loop.
    pub handle: LoopHandle,
    /// Live connections, as counted by the server.
    pub connections: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Live connections right now.
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.quit();
        if let Some(t) = self.thread.take() {
            // Don't turn a test failure into a second panic while unwinding.
            let joined = t.join();
            if !thread::panicking() {
                joined.expect("server thread panicked");
            }
        }
    }
}

/// Starts a server on `127.0.0.1:0` with `threads` IO loops; `configure` runs on
/// the server thread before `start` to install callbacks.
pub fn start_server(
    threads: usize,
    configure: impl FnOnce(&TcpServer) + Send + 'static,
) -> TestServer {
    start_server_at("127.0.0.1:0".parse().unwrap(), threads, configure)
}

/// Like [`start_server`], on a given address.
pub fn start_server_at(
    addr: SocketAddr,
    threads: usize,
    configure: impl FnOnce(&TcpServer) + Send + 'static,
) -> TestServer {
    let (tx, rx) = mpsc::channel();
    let thread = thread::Builder::new()
        .name("test-server".into())
        .spawn(move || {
            let lp = EventLoop::new().unwrap();
            let server = TcpServer::new(&lp, addr, "test").unwrap();
            server.set_thread_num(threads);
            configure(&server);
            server.start().unwrap();
            tx.send((server.local_addr(), lp.handle(), server.connection_count()))
                .unwrap();
            lp.run();
        })
        .unwrap();
    let (addr, handle, connections) = rx
        .recv_timeout(TIMEOUT)
        .expect("server did not start in time");
    TestServer {
        addr,
        handle,
        connections,
        thread: Some(thread),
    }
}

/// Installs an echo message callback.
pub fn echo(server: &TcpServer) {
    server.set_message_callback(Arc::new(|conn, buf| {
        conn.send(buf.peek());
        buf.retrieve_all();
    }));
}

/// A blocking client with read and write timeouts of [`TIMEOUT`].
pub fn connect(addr: SocketAddr) -> TcpStream {
    connect_with_timeout(addr, TIMEOUT)
}

/// A blocking client whose reads and writes give up after `timeout`.
pub fn connect_with_timeout(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, timeout).expect("connect");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

/// Writes `msg` and reads back exactly as many bytes, asserting they are the same.
pub fn assert_echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got).expect("read echo");
    assert_eq!(got, msg, "echo differs");
}

/// Reads until end of stream (each read bounded by the socket's read timeout).
pub fn read_to_eof(s: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

/// Sets the soft RLIMIT_NOFILE of this process to `soft`.
pub fn set_fd_limit(soft: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = soft;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// The byte at `offset` of the test pattern: period 251 (a prime), so shifted or
/// dropped chunks show up.
pub fn pattern_byte(offset: usize) -> u8 {
    (offset % 251) as u8
}

/// `len` bytes of the test pattern starting at `offset`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..251).map(pattern_byte).collect();
    let mut out = Vec::with_capacity(len + 251);
    out.extend_from_slice(&period[offset % 251..]);
    while out.len() < len {
        out.extend_from_slice(&period);
    }
    out.truncate(len);
    out
}

/// Checks `chunk` against the pattern at `offset` with slice compares (fast even
/// in debug builds); returns the first bad offset.
pub fn check_pattern(offset: usize, chunk: &[u8]) -> Result<(), usize> {
    const PERIOD: usize = 251;
    thread_local! {
        static REF: Vec<u8> = (0..64 * 1024 + PERIOD).map(pattern_byte).collect();
    }
    REF.with(|reference| {
        let mut done = 0;
        while done < chunk.len() {
            let start = (offset + done) % PERIOD;
            let n = (chunk.len() - done).min(64 * 1024);
            if chunk[done..done + n] != reference[start..start + n] {
                let bad = (0..n)
                    .find(|&i| chunk[done + i] != reference[start + i])
                    .unwrap();
                return Err(offset + done + bad);
            }
            done += n;
        }
        Ok(())
    })
}

/// Waits until `lp` has gone round `turns` times: each hop is queued from inside the
/// previous one, which wakes the loop, so between two hops it polls once more and
/// handles whatever was ready, then runs the callbacks queued meanwhile. A positive
/// barrier for "nothing else happened": every event and queued callback that was due
/// when this was called has been handled when it returns.
pub fn loop_turns(lp: &LoopHandle, turns: usize) {
    fn hop(lp: &EventLoop, left: usize, done: mpsc::Sender<()>) {
        if left == 0 {
            let _ = done.send(());
        } else {
            lp.queue_in_loop(move |lp| hop(lp, left - 1, done));
        }
    }
    let (tx, rx) = mpsc::channel();
    lp.queue_in_loop(move |lp| hop(lp, turns, tx));
    rx.recv_timeout(TIMEOUT).expect("the loop did not turn");
}

/// The kernel thread id of the calling thread.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Waits until thread `tid` of this process is blocked in `epoll_wait` (or
/// `epoll_pwait`, `epoll_pwait2`), as `/proc/self/task/<tid>/syscall` shows it.
pub fn wait_blocked_in_epoll(tid: i32) {
    let waits = [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
    ];
    let path = format!("/proc/self/task/{tid}/syscall");
    let blocked = wait_until(TIMEOUT, || {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return false;
        };
        let nr = text.split_whitespace().next().and_then(|n| n.parse().ok());
        nr.is_some_and(|nr: libc::c_long| waits.contains(&nr))
    });
    assert!(blocked, "thread {tid} never blocked in epoll_wait");
}

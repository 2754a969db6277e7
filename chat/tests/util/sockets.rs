//! Kernel socket buffers: capping them (before connect), bounding what they can
//! hold, and reading their queues.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// At most how many bytes the kernel holds between a server and this client socket: the
/// largest send buffer the server's side may grow to (`tcp_wmem` max) plus this socket's
/// receive buffer. What a server queued beyond that is still in its own memory.
pub fn kernel_in_flight_max(s: &TcpStream) -> usize {
    use std::os::fd::AsRawFd;
    let wmem = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem").expect("tcp_wmem");
    let wmem_max: usize = wmem
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .expect("tcp_wmem has three numbers");
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid descriptor, and a pointer to a c_int with its size in `len`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt: {}", io::Error::last_os_error());
    wmem_max + usize::try_from(v).unwrap()
}

/// A connection from `source` (a loopback address other than 127.0.0.1 makes
/// another peer address) to `addr`.
pub fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    connect_socket(addr, Some(source), None)
}

/// A connection to `addr` whose kernel buffers (`SO_RCVBUF`, `SO_SNDBUF`) are capped
/// at `bytes` *before* it connects, so that what a test sends or leaves unread piles
/// up in the server rather than in the kernel. Capped after `connect` instead, the
/// window scale was agreed for a large buffer and on loopback (MSS 64 KiB) the
/// kernel then sends only on its persist timer, a few KB/s (BENCHMARKS.md #12).
pub fn connect_with_buffers(addr: SocketAddr, bytes: usize) -> TcpStream {
    connect_socket(addr, None, Some(bytes))
}

fn connect_socket(addr: SocketAddr, source: Option<[u8; 4]>, buffers: Option<usize>) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(source) = source {
        sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    }
    if let Some(bytes) = buffers {
        sock.set_recv_buffer_size(bytes).unwrap();
        sock.set_send_buffer_size(bytes).unwrap();
    }
    sock.connect_timeout(&addr.into(), super::TIMEOUT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(super::TIMEOUT)).unwrap();
    s
}

/// The kernel's queues of one end of a loopback TCP connection, from `/proc/net/tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpQueues {
    /// Bytes written by this end and not yet acknowledged by the other
    /// (`write_seq - snd_una`).
    pub send: usize,
    /// Bytes received by this end and not yet read by its process
    /// (`rcv_nxt - copied_seq`).
    pub recv: usize,
}

/// The queues of the end of a TCP connection whose local address is `local` and
/// remote address `remote` (either end: a test's own socket, or the server's end of
/// it as `(peer_addr, local_addr)`), IPv4 only. `None` if no such socket is listed.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<TcpQueues> {
    fn hex(a: SocketAddr) -> String {
        let SocketAddr::V4(a) = a else {
            panic!("tcp_queues: IPv4 only, got {a}")
        };
        // The kernel prints the address as its 32-bit word read in host order.
        format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        )
    }
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&l.as_str()) || f.get(2) != Some(&r.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some(TcpQueues {
            send: usize::from_str_radix(tx, 16).ok()?,
            recv: usize::from_str_radix(rx, 16).ok()?,
        })
    })
}

/// Writes `frames` to (a clone of) `stream` on a thread, adding every byte the kernel
/// accepts to `written`, and waiting (not failing) while the peer does not read.
pub fn spawn_writer(
    stream: &TcpStream,
    frames: Vec<Vec<u8>>,
    written: Arc<AtomicUsize>,
) -> JoinHandle<Result<(), String>> {
    let mut w = stream.try_clone().expect("clone the socket");
    w.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    thread::spawn(move || {
        for f in &frames {
            let mut at = 0;
            while at < f.len() {
                match w.write(&f[at..]) {
                    Ok(n) => {
                        at += n;
                        written.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
        }
        Ok(())
    })
}

/// Waits until a flood on `s` settles: the bytes `written` so far and the kernel's
/// queues at both ends of `s` stay the same for a second. Returns them (written,
/// this end, the server's end).
pub fn settled(s: &TcpStream, written: &AtomicUsize) -> (usize, TcpQueues, TcpQueues) {
    let (me, peer) = (s.local_addr().unwrap(), s.peer_addr().unwrap());
    let snapshot = || {
        let w = written.load(Ordering::Relaxed);
        let c = tcp_queues(me, peer).expect("the client's socket in /proc/net/tcp");
        let sv = tcp_queues(peer, me).expect("the server's socket in /proc/net/tcp");
        (w, c, sv)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (snapshot(), Instant::now());
    while since.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < deadline,
            "the flood never settled: {last:?}"
        );
        thread::sleep(Duration::from_millis(100));
        let now = snapshot();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

//! Kernel socket buffers: capping them, and bounding what they can hold.
#![allow(dead_code)] // each test binary uses a different subset

use std::io;
use std::net::{SocketAddr, TcpStream};

/// Caps a socket's kernel buffers (`SO_RCVBUF`, `SO_SNDBUF`), so that what a test
/// sends or leaves unread piles up in the server rather than in the kernel.
pub fn clamp_socket_buffers(s: &TcpStream, bytes: i32) {
    use std::os::fd::AsRawFd;
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
        let v: libc::c_int = bytes;
        // SAFETY: a valid descriptor, and a pointer to a c_int of the size we pass.
        let rc = unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt: {}", io::Error::last_os_error());
    }
}

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
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((source, 0)).into()).unwrap();
    sock.connect_timeout(&addr.into(), super::TIMEOUT).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(super::TIMEOUT)).unwrap();
    s
}

//! The admin listener's HTTP: one request per connection, read within bounds on
//! a thread of the connection's own, answered, closed. Rule: no client can hold
//! more than its own connection — not the accept loop, not another client's
//! request, not memory beyond one bounded head.
//!
//! Bounds: the head is at most [`MAX_HEAD`] bytes (431 beyond), a body at most
//! [`MAX_BODY`] (413 beyond; bodies are read and ignored, no route takes one),
//! the request must be complete within [`REQUEST_TIME`] of the accept, the
//! reply is written within [`WRITE_TIME`] and what follows the request is drained
//! for at most [`LINGER`]; at most [`MAX_CONNECTIONS`] are
//! served at once, and at most [`PER_IP`] of them from one peer address (so idle
//! connections from one address cannot lock a probe from another out); one more
//! gets 503. Every reply says `Connection: close`.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::ws::http::{plain, response};

/// The largest request head read (bytes).
pub const MAX_HEAD: usize = 16 * 1024;
/// The largest request body read (and ignored).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a connection has, from its accept, to send its whole request.
pub const REQUEST_TIME: Duration = Duration::from_secs(5);
/// How long the reply may take to write.
pub const WRITE_TIME: Duration = Duration::from_secs(5);
/// Connections served at once (each on a thread of its own).
pub const MAX_CONNECTIONS: usize = 128;
/// Of those, how many one peer address may have.
pub const PER_IP: usize = 16;
/// After the reply, how long unread input is drained before the close, so the
/// close does not reset the connection under a reply the client has not read.
const LINGER: Duration = Duration::from_millis(500);

/// One request, as the routes see it.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string (after `?`), possibly empty.
    pub query: String,
    /// The `Authorization` header's value, if there is exactly one.
    pub authorization: Option<String>,
}

/// A reply: status, content type, body.
pub type Reply = (u16, &'static str, String);

/// What answers requests; called on the connections' threads, several at once.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The listener: an accept thread, and a thread per connection being served.
pub struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Binds `addr` and serves `handler` on threads of its own.
    pub fn start(addr: SocketAddr, handler: Handler) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = thread::Builder::new()
            .name("admin".into())
            .spawn(move || accept_loop(listener, handler, halt))?;
        Ok(Listener {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let woken = TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok();
        if let Some(t) = self.thread.take() {
            // Not woken (out of descriptors, say): the thread ends at its next
            // accept; a stop does not hang on it.
            if woken {
                let _ = t.join();
            }
        }
    }
}

/// Connections being served: in all, and per peer address.
#[derive(Default)]
struct Busy {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// A connection's place in [`Busy`], given back when its thread ends.
struct Slot(Arc<Mutex<Busy>>, IpAddr);

impl Slot {
    /// A place for a connection from `ip`, if there is one.
    fn take(busy: &Arc<Mutex<Busy>>, ip: IpAddr) -> Option<Slot> {
        let mut b = busy.lock();
        let mine = b.by_ip.get(&ip).copied().unwrap_or(0);
        if b.total >= MAX_CONNECTIONS || mine >= PER_IP {
            return None;
        }
        b.total += 1;
        b.by_ip.insert(ip, mine + 1);
        Some(Slot(busy.clone(), ip))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut b = self.0.lock();
        b.total -= 1;
        if let Some(n) = b.by_ip.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                b.by_ip.remove(&self.1);
            }
        }
    }
}

fn accept_loop(listener: TcpListener, handler: Handler, stop: Arc<AtomicBool>) {
    let busy = Arc::new(Mutex::new(Busy::default()));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::Acquire) {
            return;
        }
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: the loop goes on once some are free.
                log::warn!("admin: accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(slot) = Slot::take(&busy, peer.ip()) else {
            // Never blocks the loop: what the socket does not take is dropped.
            let _ = stream.set_nonblocking(true);
            let _ = (&stream).write(&response(
                503,
                "Service Unavailable",
                "text/plain; charset=utf-8",
                &["Retry-After: 1"],
                b"too many admin connections\n",
                false,
            ));
            continue;
        };
        let handler = handler.clone();
        let spawned = thread::Builder::new()
            .name("admin-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, &handler);
            });
        if let Err(e) = spawned {
            log::warn!("admin: no thread for a connection: {e}");
        }
    }
}

/// What reading the request came to.
enum Incoming {
    Request(Request),
    Refuse(u16, &'static str, &'static str),
    /// Closed, timed out or failed: nothing to answer.
    Gone,
}

fn serve(mut stream: TcpStream, handler: &Handler) {
    let deadline = Instant::now() + REQUEST_TIME;
    let bytes = match read_request(&mut stream, deadline) {
        Incoming::Request(rq) => {
            let (status, ctype, body) = handler(&rq);
            let reply = response(
                status,
                reason(status),
                ctype,
                &[],
                body.as_bytes(),
                rq.method == "HEAD",
            );
            reply
        }
        Incoming::Refuse(status, reason, body) => plain(status, reason, body),
        Incoming::Gone => return,
    };
    if let Err(e) = write_by(&mut stream, &bytes, Instant::now() + WRITE_TIME) {
        log::debug!("admin: reply not sent: {e}");
        return;
    }
    let _ = stream.shutdown(Shutdown::Write);
    // Drain what the client sent beyond its request (a refused body, say), for
    // LINGER at most in all and MAX_BODY bytes: a close with input unread would
    // reset the connection under the reply; a client that trickles on holds its
    // connection no longer.
    skip(&mut stream, MAX_BODY, Instant::now() + LINGER);
}

/// Writes all of `bytes` before `deadline` (a timeout per write alone would let a
/// client that reads a byte at a time hold the connection for as long as it likes).
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "reply not taken in time"))?;
        stream.set_write_timeout(Some(left))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads one request head (and skips its body) before `deadline`.
fn read_request(stream: &mut TcpStream, deadline: Instant) -> Incoming {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (rq, body_len, consumed) = loop {
        let seen = buf.len();
        match read_some(stream, &mut chunk, deadline) {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None => return Incoming::Gone,
        }
        // The cheap check first: parse once a head's end may have come (an empty
        // line, CRLF or bare LF as httparse takes them) or the bound passed, not at
        // every read of a head trickled in byte by byte.
        let new = &buf[seen.saturating_sub(2)..];
        let ended = memchr::memmem::find(new, b"\n\n").is_some()
            || memchr::memmem::find(new, b"\n\r\n").is_some();
        if buf.len() <= MAX_HEAD && !ended {
            continue;
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => match request_of(&req) {
                Ok((rq, body)) => break (rq, body, n),
                Err(refusal) => return refusal,
            },
            Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => continue,
            Ok(_) | Err(httparse::Error::TooManyHeaders) => {
                return Incoming::Refuse(
                    431,
                    "Request Header Fields Too Large",
                    "request head too large\n",
                )
            }
            Err(_) => return Incoming::Refuse(400, "Bad Request", "malformed request\n"),
        }
    };
    // The body: read and dropped, so the reply is not reset by unread input.
    if !skip(
        stream,
        body_len.saturating_sub(buf.len() - consumed),
        deadline,
    ) {
        return Incoming::Gone;
    }
    Incoming::Request(rq)
}

/// Reads and drops `n` bytes before `deadline`; false if the stream ended, failed or
/// the deadline came first.
fn skip(stream: &mut TcpStream, mut n: usize, deadline: Instant) -> bool {
    let mut chunk = [0u8; 4096];
    while n > 0 {
        match read_some(stream, &mut chunk, deadline) {
            Some(got) => n = n.saturating_sub(got),
            None => return false,
        }
    }
    true
}

/// One read before `deadline`: `None` at the end of the stream, an error or the
/// deadline.
fn read_some(stream: &mut TcpStream, chunk: &mut [u8], deadline: Instant) -> Option<usize> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match stream.read(chunk) {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
}

/// The request of a complete head, and its body's length.
fn request_of(req: &httparse::Request<'_, '_>) -> Result<(Request, usize), Incoming> {
    let bad = |body| Incoming::Refuse(400, "Bad Request", body);
    let named = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).map(str::trim))
    };
    if named("Transfer-Encoding").next().is_some() {
        return Err(Incoming::Refuse(
            411,
            "Length Required",
            "request bodies need a Content-Length\n",
        ));
    }
    let mut lengths = named("Content-Length");
    let body = match (lengths.next(), lengths.next()) {
        (None, _) => 0,
        (Some(Ok(v)), None) => match v.parse::<u64>() {
            Ok(n) if n <= MAX_BODY as u64 => n as usize,
            Ok(_) => {
                return Err(Incoming::Refuse(
                    413,
                    "Content Too Large",
                    "request body too large\n",
                ))
            }
            Err(_) => return Err(bad("malformed Content-Length\n")),
        },
        _ => return Err(bad("malformed Content-Length\n")),
    };
    let mut auth = named("Authorization");
    let authorization = match (auth.next(), auth.next()) {
        (Some(Ok(v)), None) => Some(v.to_owned()),
        _ => None,
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok((
        Request {
            method: req.method.unwrap_or("").to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            authorization,
        },
        body,
    ))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(raw: &str) -> Result<(Request, usize), u16> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw.as_bytes()).unwrap().is_complete());
        request_of(&req).map_err(|r| match r {
            Incoming::Refuse(status, ..) => status,
            _ => 0,
        })
    }

    #[test]
    fn a_request_names_its_path_query_and_token() {
        let (rq, body) =
            parsed("POST /admin/users?scope=cluster HTTP/1.1\r\nAuthorization: Bearer x\r\nContent-Length: 3\r\n\r\n")
                .unwrap();
        assert_eq!(
            (rq.method.as_str(), rq.path.as_str(), rq.query.as_str()),
            ("POST", "/admin/users", "scope=cluster")
        );
        assert_eq!(rq.authorization.as_deref(), Some("Bearer x"));
        assert_eq!(body, 3);
    }

    #[test]
    fn bodies_beyond_the_bound_or_unframed_are_refused() {
        for (raw, status) in [
            (
                "GET / HTTP/1.1\r\nContent-Length: 1000000000000000\r\n\r\n",
                413,
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            ("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            ("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
        ] {
            assert_eq!(parsed(raw).err(), Some(status), "{raw:?}");
        }
        // Two Authorization headers: neither is taken.
        let (rq, _) =
            parsed("GET / HTTP/1.1\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n")
                .unwrap();
        assert_eq!(rq.authorization, None);
    }
}

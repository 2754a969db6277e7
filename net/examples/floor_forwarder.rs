//! The kernel's floor for chat-bench's one-to-one load: a measuring tool, not a chat
//! server. One thread, one `mio::Poll` (edge-triggered, as the net library), and per
//! message only what any server of this shape pays: one `read` of the sender's socket
//! and one `sendto` of the frame, unchanged, to the recipient's socket.
//!
//! It speaks just enough of the legacy protocol for `chat-bench one-to-one`: PING is
//! answered (so the bench treats it as ours), REG gets an id, LOGIN an ok, and a
//! ONE_CHAT frame is forwarded as it came to the connection that logged in as its
//! `toid`. No passwords, no storage, no history, no checks beyond the frame's cut.
//!
//! ```sh
//! cargo build --release -p net --example floor_forwarder
//! nice -n -15 target/release/examples/floor_forwarder 127.0.0.1:7040 &
//! nice -n -15 chat-bench one-to-one --targets 127.0.0.1:7040 -n 1000 -w 1 -t 1 -d 8 --server-pid PID
//! ```

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);

struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    /// Bytes the socket did not take yet (written when it becomes writable).
    output: Vec<u8>,
}

struct Forwarder {
    conns: HashMap<usize, Conn>,
    /// User id → the token of the connection it logged in on.
    users: HashMap<i64, usize>,
    next_id: i64,
    scratch: Vec<u8>,
}

fn main() -> io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7040".into())
        .parse()
        .expect("usage: floor_forwarder IP:PORT");
    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind(addr)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    eprintln!("floor_forwarder on {}", listener.local_addr()?);
    let mut fw = Forwarder {
        conns: HashMap::new(),
        users: HashMap::new(),
        next_id: 1,
        scratch: vec![0; 64 * 1024],
    };
    let mut next_token = 0;
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut stream, _)) = listener.accept() {
                    stream.set_nodelay(true)?;
                    let token = next_token;
                    next_token += 1;
                    poll.registry().register(
                        &mut stream,
                        Token(token),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    let conn = Conn {
                        stream,
                        input: Vec::with_capacity(4096),
                        output: Vec::new(),
                    };
                    fw.conns.insert(token, conn);
                }
                continue;
            }
            let token = ev.token().0;
            if ev.is_writable() {
                fw.flush(token);
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                fw.read(token, ev.is_read_closed() || ev.is_error());
            }
        }
    }
}

impl Forwarder {
    /// Reads until a short read (the socket is drained: the edge fires again on new
    /// data) and handles every complete frame.
    fn read(&mut self, token: usize, to_eof: bool) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let mut closed = false;
        loop {
            // One plain read into the scratch, as net's Buffer reads a small input.
            let r = (&c.stream).read(&mut self.scratch);
            match r {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    c.input.extend_from_slice(&self.scratch[..n]);
                    if n < self.scratch.len() && !to_eof {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        let input = std::mem::take(&mut c.input);
        let mut start = 0;
        while let Some(nul) = memchr(&input[start..]) {
            let end = start + nul + 1;
            self.frame(token, &input[start..end]);
            start = end;
        }
        if let Some(c) = self.conns.get_mut(&token) {
            c.input = input;
            c.input.drain(..start);
        }
        if closed {
            self.conns.remove(&token);
            self.users.retain(|_, t| *t != token);
        }
    }

    /// One frame, with its NUL.
    fn frame(&mut self, token: usize, frame: &[u8]) {
        match number_after(frame, b"\"msgid\":") {
            Some(6) => {
                if let Some(&to) =
                    number_after(frame, b"\"toid\":").and_then(|id| self.users.get(&id))
                {
                    self.send(to, frame);
                }
            }
            Some(13) => self.send(token, b"{\"msgid\":14}\0"),
            Some(4) => {
                let id = self.next_id;
                self.next_id += 1;
                let reply = format!("{{\"errno\":0,\"id\":{id},\"msgid\":5}}\0");
                self.send(token, reply.as_bytes());
            }
            Some(1) => {
                let id = number_after(frame, b"\"id\":").unwrap_or(0);
                self.users.insert(id, token);
                let reply = format!("{{\"errno\":0,\"id\":{id},\"msgid\":2,\"name\":\"u{id}\"}}\0");
                self.send(token, reply.as_bytes());
            }
            _ => {}
        }
    }

    /// Writes at once (one `sendto`); what the socket does not take waits for writable.
    fn send(&mut self, token: usize, data: &[u8]) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        if !c.output.is_empty() {
            c.output.extend_from_slice(data);
            return;
        }
        let mut written = 0;
        while written < data.len() {
            match (&c.stream).write(&data[written..]) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        c.output.extend_from_slice(&data[written..]);
    }

    fn flush(&mut self, token: usize) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        while !c.output.is_empty() {
            match (&c.stream).write(&c.output) {
                Ok(n) => {
                    c.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn memchr(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == 0)
}

/// The decimal number that follows the first `key` in `frame`.
fn number_after(frame: &[u8], key: &[u8]) -> Option<i64> {
    let at = frame.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = frame[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&frame[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

//! The order of a connection's chat frames when its IO loop lags behind the workers
//! that deliver to it: frames go out in the order they were delivered, whichever way
//! each took (written at once, spilled at the high-water mark, stored and sent in a
//! page when the output drained).
//!
//! Each test drives a real [`Session`] on a real connection of a real IO loop and
//! holds that loop in a task (a gate) while it makes the calls the workers would
//! make, so the interleaving that a loaded machine produces now and then (about 1
//! run in 10 of `hardening::limit_pipelining_without_reading`) happens every time.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use chat::session::Session;
use chat::stats::Stats;
use net::{ConnHandle, EventLoop, LoopHandle, TcpServer};

/// How long any single wait may take before the test fails.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The sessions' output high-water mark.
const HIGH_WATER: usize = 64 * 1024;

/// A one-IO-loop server whose connection callback hands each new connection's
/// handle to the test; stopped (loop quit, thread joined) when dropped.
struct Server {
    /// The base loop, quit at the drop.
    base: LoopHandle,
    /// The thread running the base loop (and owning the IO loop's pool).
    thread: Option<JoinHandle<()>>,
    /// Each accepted connection's handle and peer address.
    conns: mpsc::Receiver<(ConnHandle, SocketAddr)>,
    /// Where it listens.
    addr: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let (tx, conns) = mpsc::channel();
        let (up_tx, up) = mpsc::channel();
        let thread = thread::spawn(move || {
            let lp = EventLoop::new().expect("loop");
            let server = TcpServer::new(&lp, "127.0.0.1:0".parse().unwrap(), "order").unwrap();
            server.set_thread_num(1);
            let tx = parking_lot::Mutex::new(tx);
            server.set_connection_callback(Arc::new(move |conn| {
                if conn.connected() {
                    let _ = tx.lock().send((conn.handle(), conn.peer_addr()));
                }
            }));
            server.start().expect("start");
            up_tx.send((server.local_addr(), lp.handle())).unwrap();
            lp.run();
        });
        let (addr, base) = up.recv_timeout(TIMEOUT).expect("server up");
        Server {
            base,
            thread: Some(thread),
            conns,
            addr,
        }
    }

    /// Connects a client and returns it with a session on the server's side.
    fn session(&self) -> (TcpStream, Arc<Session>) {
        // A small receive buffer (set before connecting, so the window stays
        // small): what the client leaves unread piles up in the server's output.
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        sock.set_recv_buffer_size(64 << 10).expect("SO_RCVBUF");
        sock.connect_timeout(&self.addr.into(), TIMEOUT)
            .expect("connect");
        let client = TcpStream::from(sock);
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        let (conn, peer) = self.conns.recv_timeout(TIMEOUT).expect("accepted");
        let stats = Arc::new(Stats::default());
        (
            client,
            Arc::new(Session::new(conn, peer, stats, HIGH_WATER)),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.base.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Holds the connection's IO loop in a task until opened (or dropped, or after
/// [`TIMEOUT`]).
struct Gate(mpsc::Sender<()>);

impl Gate {
    /// Queues the holding task on `session`'s loop, behind everything queued so far.
    fn close(session: &Session) -> Gate {
        let (tx, rx) = mpsc::channel::<()>();
        session.conn.loop_handle().queue_in_loop(move |_| {
            let _ = rx.recv_timeout(TIMEOUT);
        });
        Gate(tx)
    }

    fn open(self) {
        let _ = self.0.send(());
    }

    /// Opens, then waits (bounded) until the loop raised `session`'s congestion flag.
    fn open_until_congested(self, session: &Session) {
        self.open();
        let deadline = Instant::now() + TIMEOUT;
        while !session.is_congested() {
            assert!(Instant::now() < deadline, "never congested");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

/// A chat frame (wire bytes) carrying `n`.
fn chat(n: u32) -> Vec<u8> {
    format!("{{\"msg\":\"{n:05}\",\"msgid\":5}}\0").into_bytes()
}

/// Reads frames until one carries `last` and returns the numbers of the chat frames
/// (other frames skipped); fails after [`TIMEOUT`] with what came so far.
fn read_until(client: &mut TcpStream, rest: &mut Vec<u8>, last: u32) -> Vec<u32> {
    let deadline = Instant::now() + TIMEOUT;
    let mut got = Vec::new();
    let mut buf = vec![0; 1 << 20];
    // Bytes of `rest` known to hold no NUL (the filler comes in many reads).
    let mut scanned = 0;
    loop {
        while let Some(end) = rest[scanned..].iter().position(|&b| b == 0) {
            let end = scanned + end;
            scanned = 0;
            let frame: Vec<u8> = rest.drain(..=end).collect();
            let text = String::from_utf8_lossy(&frame[..end]);
            if let Some(n) = text
                .strip_prefix("{\"msg\":\"")
                .and_then(|t| t.get(..5))
                .and_then(|d| d.parse().ok())
            {
                got.push(n);
                if n == last {
                    return got;
                }
            }
        }
        scanned = rest.len();
        assert!(
            Instant::now() < deadline,
            "frame {last} never came; got {got:?}"
        );
        match client.read(&mut buf) {
            Ok(0) => panic!("closed before frame {last}; got {got:?}"),
            Ok(n) => rest.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read: {e}; got {got:?}"),
        }
    }
}

/// Reads until the last of `want` came, then asserts the chat frames came as `want`.
/// One still missing then (a frame put behind a later one and kept there, spilled
/// again at the mark) is flushed as the next drain would, so that a wrong order
/// shows as such rather than as a timeout.
fn assert_arrive_in_order(client: &mut TcpStream, session: &Session, want: &[u32]) {
    let mut rest = Vec::new();
    let mut got = read_until(client, &mut rest, *want.last().expect("frames"));
    for &n in want {
        if !got.contains(&n) {
            session.deliver_page(Vec::new(), Some(false)).unwrap();
            got.extend(read_until(client, &mut rest, n));
        }
    }
    assert_eq!(got, want, "frames out of order");
}

/// What a worker does for frame `n` while the connection is congested: it is
/// refused live (so stored), the output drains, and the drain takes it from the
/// store as the last page.
fn store_then_drain_last(session: &Session, n: u32) {
    assert!(!session.deliver(chat(n)), "stored while congested");
    session.deliver_page(vec![chat(n)], Some(false)).unwrap();
}

/// The loop spills a frame at the mark and raises the congestion flag while a live
/// frame delivered before that is still queued on it; a worker then stores a newer
/// frame and sends it as the last page of a drain. The queued live frame is older
/// than the page and must go out before it (after the spilled one), not behind it.
#[test]
fn a_frame_queued_before_a_last_page_goes_out_before_it() {
    let server = Server::start();
    let (mut client, session) = server.session();
    // Output the client does not read yet: far more than the kernel holds (the
    // server's send buffer grows to tcp_wmem's maximum, 4 MiB by default; the
    // client's receive buffer is small), so the connection's own output stays above
    // the mark. If it did not, frame 1 would not spill and the wait below fails.
    let filler = [vec![b'x'; 16 << 20], vec![0]].concat();
    session.reply(filler);
    let gate1 = Gate::close(&session);
    assert!(session.deliver(chat(1)), "not congested yet");
    let gate2 = Gate::close(&session);
    assert!(session.deliver(chat(2)), "not congested yet");
    // The loop offers frame 1: above the mark, so it is spilled and the flag goes up;
    // frame 2 waits in the loop's queue behind the second gate.
    gate1.open_until_congested(&session);
    store_then_drain_last(&session, 3);
    gate2.open();
    assert_arrive_in_order(&mut client, &session, &[1, 2, 3]);
}

/// Two last pages on their way at once: the first drain's page (the flag lowered),
/// a live frame delivered after it, then the flag raised again by an earlier
/// (non-last) page, a frame stored and taken as a second last page. The live frame
/// must come between the two pages.
#[test]
fn a_live_frame_between_two_last_pages_keeps_its_place() {
    let server = Server::start();
    let (mut client, session) = server.session();
    let gate1 = Gate::close(&session);
    // A drain with more stored: its page goes out with the flag raised behind it.
    session.deliver_page(vec![chat(1)], Some(true)).unwrap();
    let gate2 = Gate::close(&session);
    // The next drain took the rest: the last page, the flag lowered now.
    session.deliver_page(vec![chat(2)], Some(false)).unwrap();
    assert!(session.deliver(chat(3)), "live after a last page");
    // The loop sends page 1 and raises the flag; then holds at the second gate.
    gate1.open_until_congested(&session);
    store_then_drain_last(&session, 4);
    gate2.open();
    assert_arrive_in_order(&mut client, &session, &[1, 2, 3, 4]);
}

//! The order of a connection's chat frames when its IO loop lags behind the workers
//! that deliver to it: frames go out in the order they were delivered, whichever way
//! each took (written at once, spilled at the high-water mark, stored and sent in a
//! page when the output drained).
//!
//! Each test drives a real [`Session`] on a real connection of a real IO loop and
//! holds that loop in a task (a gate) while it makes the calls the workers would
//! make, so the interleaving that a loaded machine produces now and then (about 1
//! run in 10 of `hardening::limit_pipelining_without_reading`) happens every time.

mod loop_server;

use std::io::Read;
use std::net::TcpStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use chat::session::Session;
use chat::stats::Stats;
use loop_server::{Server, TIMEOUT};
/// The sessions' output high-water mark.
const HIGH_WATER: usize = 64 * 1024;

/// Connects a client to `server` and returns it with a session on the server's
/// side (a 64 KiB client receive buffer).
fn session(server: &Server) -> (TcpStream, Arc<Session>) {
    let (client, conn, peer) = server.connect(64 << 10);
    let stats = Arc::new(Stats::default());
    (
        client,
        Arc::new(Session::new(conn, peer, stats, HIGH_WATER)),
    )
}

/// Holds the connection's IO loop in a task until opened (or dropped, or after
/// [`TIMEOUT`]).
struct Gate {
    open: mpsc::Sender<()>,
    /// Gets one message when the loop reaches the task.
    reached: mpsc::Receiver<()>,
}

impl Gate {
    /// Queues the holding task on `session`'s loop, behind everything queued so far.
    fn close(session: &Session) -> Gate {
        let (open, rx) = mpsc::channel::<()>();
        let (reached_tx, reached) = mpsc::channel();
        session.conn.loop_handle().queue_in_loop(move |_| {
            let _ = reached_tx.send(());
            let _ = rx.recv_timeout(TIMEOUT);
        });
        Gate { open, reached }
    }

    fn open(self) {
        let _ = self.open.send(());
    }

    /// Waits until the loop is held here: everything queued before ran.
    fn wait_reached(&self) {
        self.reached
            .recv_timeout(TIMEOUT)
            .expect("the loop reached the gate");
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
    let (mut client, session) = session(&server);
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

/// A live frame queued on the loop before a last page, while a frame that went
/// live before it is still spilled: the loop must not write it at once (the flag is
/// down and the output empty, so it would fit) but spill it behind the older one,
/// for the page's drain to send both ahead of the page.
/// (Checked: with `Outflow::offer`'s `final_drains > 0` turned into `< 0`, frame 3
/// went out first: "frames out of order, left: [1, 3, 2, 4]".)
#[test]
fn a_frame_queued_before_a_last_page_waits_behind_a_spilled_one() {
    let server = Server::start();
    let (mut client, session) = session(&server);
    let gate1 = Gate::close(&session);
    // A drain with more stored: its page goes out with the flag raised behind it.
    session.deliver_page(vec![chat(1)], Some(true)).unwrap();
    // Two live frames queued while the flag is still down on this side.
    assert!(session.deliver(chat(2)), "live before the page went out");
    let gate2 = Gate::close(&session);
    assert!(session.deliver(chat(3)), "live before the page went out");
    // The loop sends page 1, raises the flag, spills frame 2 (congested), then
    // holds at the second gate with frame 3 still queued.
    gate1.open();
    gate2.wait_reached();
    assert!(session.is_congested(), "page 1 raised the flag");
    // The next drain takes the rest: a stored frame 4 as the last page, the flag
    // lowered now, its page queued behind frame 3.
    store_then_drain_last(&session, 4);
    gate2.open();
    assert_arrive_in_order(&mut client, &session, &[1, 2, 3, 4]);
}

/// Two last pages on their way at once: the first drain's page (the flag lowered),
/// a live frame delivered after it, then the flag raised again by an earlier
/// (non-last) page, a frame stored and taken as a second last page. The live frame
/// must come between the two pages.
#[test]
fn a_live_frame_between_two_last_pages_keeps_its_place() {
    let server = Server::start();
    let (mut client, session) = session(&server);
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

/// True once `session`'s connection is gone from its loop (asked on the loop, so
/// everything queued there before has run).
fn gone(session: &Session) -> bool {
    let (tx, rx) = mpsc::channel();
    session.conn.with(move |c| {
        let _ = tx.send(c.is_none());
    });
    rx.recv_timeout(TIMEOUT).expect("the loop answers")
}

/// A login released after its connection closed (the close came between the
/// login's check and the loop's write): the LOGIN_ACK and the frames held behind
/// it are kept, in that order, for the close to store; an acking connection's
/// LOGIN_ACK is left out (its offline messages are in its window already).
/// (Checked: with `Outflow::force`'s `!self.acks()` turned into `self.acks()`, a
/// legacy login's offline messages were dropped and an acking one's kept twice.)
#[test]
fn a_release_after_the_close_keeps_the_login_ack_and_the_held_frames() {
    let server = Server::start();
    for acking in [false, true] {
        let (_client, session) = session(&server);
        if acking {
            session.flow().start_acks(1);
        }
        session.hold();
        assert!(session.deliver(chat(1)), "held");
        session.conn.force_close();
        let deadline = Instant::now() + TIMEOUT;
        while !gone(&session) {
            assert!(Instant::now() < deadline, "the connection never closed");
            thread::sleep(Duration::from_millis(1));
        }
        let login_ack = b"{\"errno\":0,\"msgid\":2,\"offlinemsg\":[]}\0".to_vec();
        // Nothing marked the outbox closed (no gateway here): the release goes on
        // to the loop, which finds the connection gone.
        session
            .release(Some(login_ack.clone()))
            .expect("the outbox is open");
        assert!(gone(&session), "the release ran on the loop");
        let text = |f: &Vec<u8>| String::from_utf8_lossy(f).into_owned();
        let want: Vec<String> = if acking {
            vec![chat(1)]
        } else {
            vec![login_ack, chat(1)]
        }
        .iter()
        .map(text)
        .collect();
        let got: Vec<String> = session.take_spilled().iter().map(text).collect();
        assert_eq!(got, want, "acking: {acking}");
    }
}

/// A group frame fanned out while a login holds the session is kept whole and
/// written after the LOGIN_ACK. (Checked: with `FanOut::frame` returning no bytes,
/// the held copy is empty and the frame never comes.)
#[test]
fn a_group_frame_held_by_a_login_follows_the_login_ack() {
    let server = Server::start();
    let (mut client, session) = session(&server);
    session.hold();
    let mut fan = chat::outflow::FanOut::new(chat(1).into());
    assert!(session.deliver_into(&mut fan), "held");
    assert_eq!(fan.len(), 0, "held, not sent");
    fan.send();
    // A stand-in LOGIN_ACK, numbered 0 as `read_until` reads numbers.
    let login_ack = b"{\"msg\":\"00000\",\"msgid\":2}\0".to_vec();
    session
        .release(Some(login_ack))
        .expect("the outbox is open");
    let mut rest = Vec::new();
    assert_eq!(read_until(&mut client, &mut rest, 1), [0, 1]);
}

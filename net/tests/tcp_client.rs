//! TcpClient against a real server: retry while nothing listens, reconnect after
//! the server closes, and stale ConnHandles that must not reach a reused slot.

mod util;

use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};

use net::{ConnHandle, EventLoop, LoopHandle, TcpClient};
use util::{echo, start_server, start_server_at, TIMEOUT};

/// What a connection callback reports: up or down, and the handle.
type ConnEvent = (bool, ConnHandle);
/// What a message callback reports: the connection id and the bytes.
type Message = (u64, Vec<u8>);

/// A TcpClient on its own loop thread; dropping quits the loop and joins.
struct TestClient {
    handle: LoopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.handle.quit();
        if let Some(t) = self.thread.take() {
            let joined = t.join();
            if !thread::panicking() {
                joined.expect("client thread panicked");
            }
        }
    }
}

/// Starts a client for `addr` on a new loop thread, reporting connection
/// events and messages on the returned channels.
fn start_client(
    addr: SocketAddr,
    retry: bool,
) -> (
    TestClient,
    mpsc::Receiver<ConnEvent>,
    mpsc::Receiver<Message>,
) {
    let (conn_tx, conn_rx) = mpsc::channel();
    let (msg_tx, msg_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let thread = thread::spawn(move || {
        let lp = EventLoop::new().unwrap();
        let client = TcpClient::new(&lp, addr, "test-client");
        let conn_tx = Mutex::new(conn_tx);
        client.set_connection_callback(Arc::new(move |conn| {
            let _ = conn_tx
                .lock()
                .unwrap()
                .send((conn.connected(), conn.handle()));
        }));
        let msg_tx = Mutex::new(msg_tx);
        client.set_message_callback(Arc::new(move |conn, buf| {
            let _ = msg_tx
                .lock()
                .unwrap()
                .send((conn.id(), buf.retrieve_all_as_vec()));
        }));
        if retry {
            client.enable_retry();
        }
        client.connect();
        tx.send(lp.handle()).unwrap();
        lp.run();
        drop(client);
    });
    let handle = rx.recv_timeout(TIMEOUT).expect("client loop did not start");
    let client = TestClient {
        handle,
        thread: Some(thread),
    };
    (client, conn_rx, msg_rx)
}

/// Waits for the next connection event, which must be `up`.
fn expect_conn(rx: &mpsc::Receiver<ConnEvent>, up: bool) -> ConnHandle {
    let (got, handle) = rx
        .recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("no {} event", if up { "UP" } else { "DOWN" }));
    assert_eq!(got, up, "unexpected connection event");
    handle
}

/// Collects what `conn_id` received until `want` bytes arrived; fails on bytes
/// for any other connection.
fn expect_bytes(rx: &mpsc::Receiver<Message>, conn_id: u64, want: &[u8]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let (id, bytes) = rx.recv_timeout(TIMEOUT).expect("message did not arrive");
        assert_eq!(
            id,
            conn_id,
            "bytes {:?} reached the wrong connection",
            String::from_utf8_lossy(&bytes)
        );
        got.extend(bytes);
    }
    assert_eq!(got, want);
}

/// The slab slot a handle names, read from its Debug output: the tests below
/// only prove something when the new connection really reuses the old slot.
fn token_of(handle: &ConnHandle) -> String {
    let dbg = format!("{handle:?}");
    let start = dbg.find("token: ").expect("Debug shows the token") + 7;
    dbg[start..].split(',').next().unwrap().to_string()
}

/// The client keeps retrying while nothing listens and connects once the server
/// comes up.
#[test]
fn client_retries_until_the_server_listens() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap(); // the listener is dropped: nothing listens there now
    let (client, conn_rx, msg_rx) = start_client(addr, false);
    // The first attempt is refused at once and a retry is scheduled (500 ms later): the
    // client's loop holds a timer then, and no connection came up.
    let retry_scheduled = util::wait_until(TIMEOUT, || {
        let (tx, rx) = mpsc::channel();
        client.handle.run_in_loop(move |lp| {
            let _ = tx.send(lp.timer_count());
        });
        rx.recv_timeout(TIMEOUT).expect("client loop stopped") > 0
    });
    assert!(
        retry_scheduled,
        "no retry scheduled after a refused connect"
    );
    assert!(
        conn_rx.try_recv().is_err(),
        "connected with nothing listening"
    );
    let _server = start_server_at(addr, 0, echo);
    let conn = expect_conn(&conn_rx, true);
    conn.send("hello");
    expect_bytes(&msg_rx, conn.id(), b"hello");
}

/// With retry enabled the client reconnects after the server closes it, and
/// handles to the old connection reach nothing, on either side, even though the
/// new connection sits in the same slab slot.
#[test]
fn client_reconnects_and_stale_handles_reach_nothing() {
    let (server_conn_tx, server_conn_rx) = mpsc::channel::<ConnEvent>();
    let (server_msg_tx, server_msg_rx) = mpsc::channel::<Message>();
    let server = start_server(0, move |s| {
        let tx = Mutex::new(server_conn_tx);
        s.set_connection_callback(Arc::new(move |conn| {
            let _ = tx.lock().unwrap().send((conn.connected(), conn.handle()));
        }));
        let tx = Mutex::new(server_msg_tx);
        s.set_message_callback(Arc::new(move |conn, buf| {
            let _ = tx
                .lock()
                .unwrap()
                .send((conn.id(), buf.retrieve_all_as_vec()));
        }));
    });
    let (_client, conn_rx, msg_rx) = start_client(server.addr, true);
    let client1 = expect_conn(&conn_rx, true);
    let server1 = expect_conn(&server_conn_rx, true);

    // The server closes: the client sees DOWN, then reconnects on its own.
    server1.force_close();
    expect_conn(&server_conn_rx, false);
    expect_conn(&conn_rx, false);
    let client2 = expect_conn(&conn_rx, true);
    let server2 = expect_conn(&server_conn_rx, true);
    assert_ne!(client1.id(), client2.id());
    assert_ne!(server1.id(), server2.id());
    assert_eq!(token_of(&client1), token_of(&client2), "slot not reused");
    assert_eq!(token_of(&server1), token_of(&server2), "slot not reused");

    // Sends through the stale handles go nowhere; the fresh ones arrive. Each pair
    // is queued on the same loop in order, so "fresh" arriving alone proves it.
    client1.send("stale client");
    client2.send("fresh client");
    expect_bytes(&server_msg_rx, server2.id(), b"fresh client");
    server1.send("stale server");
    server2.send("fresh server");
    expect_bytes(&msg_rx, client2.id(), b"fresh server");
    // Closing through a stale handle does nothing either.
    client1.force_close();
    server1.force_close();
    client2.send("still up");
    expect_bytes(&server_msg_rx, server2.id(), b"still up");
    assert!(conn_rx.try_recv().is_err() && server_conn_rx.try_recv().is_err());
}

//! What the service's unit tests build by hand: a service on a scratch store, and
//! sessions over real sockets (accepted by a server of the test's own, on a loop
//! thread of its own) that are logged in by putting them in the hub.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use net::{ConnHandle, EventLoop, LoopHandle, TcpConnectionPtr, TcpServer};
use serde_json::Value;

use super::{ChatService, HistoryOptions};
use crate::protocol::{self, Parsed};
use crate::session::{Session, User};
use crate::stats::Stats;
use crate::store::tests::SqliteDb;
use crate::store::OfflineLimits;

/// How long a test waits for a socket or a frame.
const WAIT: Duration = Duration::from_secs(10);

/// A service with no bus, on a scratch SQLite store, history kept or not.
pub(crate) fn service_on(db: &SqliteDb, history: bool) -> ChatService {
    service_bounded(db, history, Default::default())
}

/// [`service_on`] with these bounds on each recipient's offline store.
pub(crate) fn service_bounded(db: &SqliteDb, history: bool, limits: OfflineLimits) -> ChatService {
    let opts = HistoryOptions {
        enabled: history,
        retention: None,
    };
    ChatService::new(db.store.clone(), None, limits, Default::default(), &opts)
}

/// Registers `name` and returns its id.
pub(crate) fn register(db: &SqliteDb, name: &str) -> i64 {
    let id = db.store.register(name, "unused").expect("register");
    id.expect("a new name")
}

/// A request as the IO loop parses it from `v`.
pub(crate) fn request(v: Value) -> Parsed {
    protocol::parse_request(v).expect("a valid request")
}

/// A server on a loop thread of its own whose connections become sessions.
pub(crate) struct Sockets {
    lp: LoopHandle,
    addr: SocketAddr,
    accepted: mpsc::Receiver<ConnHandle>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Sockets {
    pub(crate) fn start() -> Sockets {
        let (started_tx, started_rx) = mpsc::channel();
        let (accepted_tx, accepted) = mpsc::channel();
        let thread = thread::spawn(move || {
            let lp = EventLoop::new().expect("an event loop");
            let any = SocketAddr::from(([127, 0, 0, 1], 0));
            let server = TcpServer::new(&lp, any, "sessions").expect("a listener");
            server.set_connection_callback(Arc::new(move |c: &TcpConnectionPtr| {
                if c.connected() {
                    let _ = accepted_tx.send(c.handle());
                }
            }));
            server.start().expect("listening");
            started_tx
                .send((lp.handle(), server.local_addr()))
                .expect("the test waits");
            lp.run();
        });
        let (lp, addr) = started_rx.recv().expect("the loop started");
        Sockets {
            lp,
            addr,
            accepted,
            thread: Some(thread),
        }
    }

    /// A session over a new connection (with counters of its own), and the
    /// client's end of it.
    pub(crate) fn session(&self) -> (Arc<Session>, TcpStream) {
        let client = TcpStream::connect(self.addr).expect("connect");
        client.set_read_timeout(Some(WAIT)).expect("a read timeout");
        let conn = self.accepted.recv_timeout(WAIT).expect("accepted");
        let peer = client.local_addr().expect("an address");
        let session = Session::new(conn, peer, Arc::new(Stats::default()), 1 << 20);
        (Arc::new(session), client)
    }

    /// [`Sockets::session`], logged in as `id`: in the hub, its user set.
    pub(crate) fn logged_in(
        &self,
        service: &ChatService,
        id: i64,
        name: &str,
    ) -> (Arc<Session>, TcpStream) {
        let (session, client) = self.session();
        service.hub().lock(id).insert(id, session.clone());
        session.set_user(Some(User {
            id,
            name: name.to_owned(),
        }));
        (session, client)
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        self.lp.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next frame a client reads (its JSON, without the NUL).
pub(crate) fn read_frame(client: &mut BufReader<TcpStream>) -> Value {
    let mut frame = Vec::new();
    client.read_until(0, &mut frame).expect("a frame");
    assert_eq!(frame.pop(), Some(0), "a whole frame: {frame:?}");
    serde_json::from_slice(&frame).expect("a JSON frame")
}

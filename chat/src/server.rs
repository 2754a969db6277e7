//! ChatServer: the chat service on the net reactor — decoding on the IO loops,
//! business on a worker pool, replies back through connection handles.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use net::{Buffer, EventLoop, TcpConnectionPtr, TcpServer};
use parking_lot::Mutex;

use crate::bus::{Bus, BusConfig, BusHandler, BusThreads};
use crate::codec::{self, Decoded, Decoder};
use crate::protocol;
use crate::service::ChatService;
use crate::session::{Job, Session};
use crate::store::Store;

/// How a worker yields a busy session: after this many jobs it goes to the back
/// of the worker queue so other sessions get their turn.
const JOBS_PER_TURN: usize = 32;

/// Server settings that are not about storage.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// IO loop threads (0: everything on the base loop).
    pub io_threads: usize,
    /// Worker threads for database and hashing work (at least 1).
    pub workers: usize,
    /// The largest inbound frame, in bytes.
    pub frame_limit: usize,
    /// Redis bus settings: set, the server runs as a cluster node.
    pub bus: Option<BusConfig>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            io_threads: 2,
            workers: 4,
            frame_limit: codec::DEFAULT_FRAME_LIMIT,
            bus: None,
        }
    }
}

/// What workers take from their queue.
enum Work {
    /// Run this session's jobs.
    Run(Arc<Session>),
    /// Exit.
    Stop,
}

/// What the IO loop keeps in each connection's context slot.
struct ConnState {
    session: Arc<Session>,
    decoder: Decoder,
    /// Set after a fatal frame: further input is discarded.
    closing: bool,
}

/// Every connection's session, for shutdown.
type Sessions = Arc<Mutex<std::collections::HashMap<u64, Arc<Session>>>>;

/// The chat server: a TcpServer plus the worker pool. Lives on the base loop thread.
pub struct ChatServer {
    tcp: TcpServer,
    service: Arc<ChatService>,
    sessions: Sessions,
    work_tx: Option<Sender<Work>>,
    workers: Vec<JoinHandle<()>>,
    bus_threads: Option<BusThreads>,
}

impl ChatServer {
    /// Binds `addr` and prepares the service. Must be called on the base loop thread.
    pub fn new(
        lp: &EventLoop,
        addr: SocketAddr,
        store: Arc<dyn Store>,
        opts: ServerOptions,
    ) -> io::Result<ChatServer> {
        let tcp = TcpServer::new(lp, addr, "ChatServer")?;
        tcp.set_thread_num(opts.io_threads);
        let bus = match &opts.bus {
            Some(cfg) => Some(Bus::connect(cfg.clone()).map_err(io::Error::other)?),
            None => None,
        };
        let service = Arc::new(ChatService::new(store, bus.clone()));
        let bus_threads = match &bus {
            Some(bus) => Some(bus.spawn(service.clone() as Arc<dyn BusHandler>)?),
            None => None,
        };
        let sessions: Sessions = Arc::default();
        let (work_tx, work_rx) = crossbeam_channel::unbounded::<Work>();
        let workers = (0..opts.workers.max(1))
            .map(|i| {
                let rx = work_rx.clone();
                let tx = work_tx.clone();
                let service = service.clone();
                thread::Builder::new()
                    .name(format!("chat-worker{i}"))
                    .spawn(move || worker(&service, &rx, &tx))
            })
            .collect::<io::Result<Vec<_>>>()?;

        let limit = opts.frame_limit;
        {
            let sessions = sessions.clone();
            let work_tx = work_tx.clone();
            tcp.set_connection_callback(Arc::new(move |conn: &TcpConnectionPtr| {
                if conn.connected() {
                    let _ = conn.set_tcp_no_delay(true);
                    let session = Arc::new(Session::new(conn.handle()));
                    sessions.lock().insert(conn.id(), session.clone());
                    conn.set_context(ConnState {
                        session,
                        decoder: Decoder::new(limit),
                        closing: false,
                    });
                } else {
                    sessions.lock().remove(&conn.id());
                    let session = conn.with_context(|st: &mut ConnState| st.session.clone());
                    if let Some(session) = session {
                        submit(&work_tx, conn, &session, Job::Closed);
                    }
                }
            }));
        }
        {
            let work_tx = work_tx.clone();
            tcp.set_message_callback(Arc::new(
                move |conn: &TcpConnectionPtr, buf: &mut Buffer| on_message(&work_tx, conn, buf),
            ));
        }
        Ok(ChatServer {
            tcp,
            service,
            sessions,
            work_tx: Some(work_tx),
            workers,
            bus_threads,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The service (for inspection in tests and tools).
    pub fn service(&self) -> &Arc<ChatService> {
        &self.service
    }

    /// Starts the IO threads and listening. Must be called on the base loop thread.
    pub fn start(&self) -> io::Result<()> {
        self.tcp.start()
    }

    /// Clean shutdown: stop accepting, log this node's users out (only them), close
    /// every connection once its output is written, then stop the workers and IO
    /// loops. Waits at most `grace` for connections to drain. Must be called on the
    /// base loop thread, after its `run` returned.
    pub fn shutdown(mut self, grace: Duration) {
        self.tcp.stop_accepting();
        let sessions: Vec<Arc<Session>> = self.sessions.lock().values().cloned().collect();
        if let Some(tx) = &self.work_tx {
            for s in &sessions {
                let (schedule, _) = s.push(Job::Shutdown);
                if schedule {
                    let _ = tx.send(Work::Run(s.clone()));
                }
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && !self.sessions.lock().is_empty() {
            thread::sleep(Duration::from_millis(10));
        }
        self.stop_workers();
        // Whoever did not drain in time is signed out here; then the node leaves.
        self.service.sign_out_all();
        if let Some(threads) = self.bus_threads.take() {
            threads.stop();
        }
        if let Some(bus) = self.service.bus() {
            if let Err(e) = bus.leave() {
                log::warn!("shutdown: node not unregistered ({e}); it expires by itself");
            }
        }
    }

    fn stop_workers(&mut self) {
        if let Some(tx) = self.work_tx.take() {
            for _ in &self.workers {
                let _ = tx.send(Work::Stop);
            }
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

/// Hands a job to the session's strand, scheduling it and pausing reads as needed.
fn submit(work_tx: &Sender<Work>, conn: &TcpConnectionPtr, session: &Arc<Session>, job: Job) {
    let (schedule, pause) = session.push(job);
    if pause {
        conn.stop_read();
    }
    if schedule {
        let _ = work_tx.send(Work::Run(session.clone()));
    }
}

/// The IO-loop half: cut frames, parse them, queue them. No blocking work here.
fn on_message(work_tx: &Sender<Work>, conn: &TcpConnectionPtr, buf: &mut Buffer) {
    let mut ctx = conn.context();
    let Some(st) = ctx.as_mut().and_then(|b| b.downcast_mut::<ConnState>()) else {
        buf.retrieve_all();
        return;
    };
    loop {
        if st.closing {
            buf.retrieve_all();
            return;
        }
        match st.decoder.decode(buf.peek()) {
            Ok(Decoded::Incomplete { skip }) => {
                buf.retrieve(skip);
                return;
            }
            Ok(Decoded::Frame { start, end }) => {
                let parsed =
                    codec::parse_frame(&buf.peek()[start..end]).and_then(protocol::parse_request);
                buf.retrieve(end);
                let job = match parsed {
                    Ok(p) => Job::Request(p),
                    Err(e) => Job::Reply(protocol::encode(&protocol::error(&e))),
                };
                submit(work_tx, conn, &st.session, job);
            }
            Err(e) => {
                let frame = protocol::encode(&protocol::error(&e.to_protocol_error()));
                st.closing = true;
                submit(work_tx, conn, &st.session, Job::Fatal(frame));
            }
        }
    }
}

/// A worker: takes sessions that have work and runs their jobs, a turn at a time.
fn worker(service: &ChatService, rx: &Receiver<Work>, tx: &Sender<Work>) {
    while let Ok(Work::Run(session)) = rx.recv() {
        let mut done = 0;
        loop {
            let (job, resume) = session.pop();
            if resume {
                session.conn.run(|c| c.start_read());
            }
            let Some(job) = job else { break };
            service.run_job(&session, job);
            done += 1;
            if done == JOBS_PER_TURN && session.has_jobs() {
                // Still scheduled: requeue at the back so other sessions run too.
                let _ = tx.send(Work::Run(session.clone()));
                break;
            }
        }
    }
}

//! ChatServer: the chat service on the net reactor — the gateway decodes on the
//! IO loops, workers run the business, replies go back through connection handles.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{Buffer, EventLoop, TcpConnectionPtr, TcpServer};

use crate::admin::{AdminOptions, AdminServer, Sources};
use crate::bus::{Bus, BusConfig, BusHandler, BusThreads};
use crate::codec;
use crate::gateway::{self, Gateway, Limits, Sessions};
use crate::hasher::HasherConfig;
use crate::service::throttle::ThrottleConfig;
use crate::service::{ChatService, HistoryOptions};
use crate::session::{Job, Session};
use crate::store::{OfflineLimits, Store};
use crate::workers::WorkerPool;
use crate::ws::WsServer;

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
    /// How long a resume token stays valid (see `docs/protocol.md`, RESUME).
    pub resume_ttl: Duration,
    /// Connection limits.
    pub limits: Limits,
    /// Bounds of each recipient's offline store.
    pub offline: OfflineLimits,
    /// The failed-login throttle.
    pub throttle: ThrottleConfig,
    /// The password-hashing threads and their fairness.
    pub hashing: HasherConfig,
    /// History on or off, and its retention.
    pub history: HistoryOptions,
    /// The admin HTTP listener (health, metrics, admin actions); `None`: off.
    pub admin: Option<AdminOptions>,
    /// The WebSocket and web client listener (`--ws-addr`); `None`: off.
    pub ws_addr: Option<SocketAddr>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            io_threads: 2,
            workers: 4,
            frame_limit: codec::DEFAULT_FRAME_LIMIT,
            bus: None,
            resume_ttl: crate::service::DEFAULT_RESUME_TTL,
            limits: Limits::default(),
            offline: OfflineLimits::default(),
            throttle: ThrottleConfig::default(),
            hashing: HasherConfig::default(),
            history: HistoryOptions::default(),
            admin: None,
            ws_addr: None,
        }
    }
}

/// The chat server: a TcpServer plus the worker pool. Lives on the base loop thread.
pub struct ChatServer {
    tcp: TcpServer,
    service: Arc<ChatService>,
    sessions: Sessions,
    workers: WorkerPool,
    bus_threads: Option<BusThreads>,
    admin: Option<AdminServer>,
    ws: Option<WsServer>,
}

impl ChatServer {
    /// Binds `addr` and prepares the service. Must be called on the base loop thread.
    pub fn new(
        lp: &EventLoop,
        addr: SocketAddr,
        store: Arc<dyn Store>,
        opts: ServerOptions,
    ) -> io::Result<ChatServer> {
        let tcp = TcpServer::new(lp, addr, "ChatServer")
            .map_err(|e| naming(e, format_args!("cannot serve on {addr}")))?;
        tcp.set_thread_num(opts.io_threads);
        let bus = match &opts.bus {
            Some(cfg) => Some(Bus::connect(cfg.clone()).map_err(io::Error::other)?),
            None => None,
        };
        let kept = store.history_text_max();
        if opts.history.enabled && opts.frame_limit > kept {
            log::warn!(
                "--frame-limit {} is above the longest message history keeps on this \
                 database ({kept} bytes): longer ones are delivered, not kept",
                opts.frame_limit
            );
        }
        let mut service = ChatService::new(
            store,
            bus.clone(),
            opts.offline,
            opts.throttle.clone(),
            &opts.history,
        );
        service.set_resume_ttl(opts.resume_ttl);
        service.set_workers(opts.workers);
        let service = Arc::new(service);
        let bus_threads = match &bus {
            Some(bus) => Some(bus.spawn(service.clone() as Arc<dyn BusHandler>)?),
            None => None,
        };
        let sessions: Sessions = Arc::default();
        let workers = WorkerPool::start(
            opts.workers,
            &opts.hashing,
            service.clone(),
            gateway::resume_session,
        )?;
        let ws = match opts.ws_addr {
            Some(addr) => Some(
                WsServer::bind(lp, addr, opts.io_threads)
                    .map_err(|e| naming(e, format_args!("cannot serve WebSocket on {addr}")))?,
            ),
            None => None,
        };
        let mut gw = Gateway::new(
            service.clone(),
            workers.submitter().clone(),
            sessions.clone(),
            opts.limits.clone(),
            opts.frame_limit,
            tcp.connection_count(),
        );
        if let Some(ws) = &ws {
            gw = gw.with_ws_connections(ws.chat_connection_count());
        }
        let gw = Arc::new(gw);
        if let Some(ws) = &ws {
            ws.attach(gw.clone());
        }
        let g = gw.clone();
        tcp.set_connection_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            g.on_connection(conn)
        }));
        let g = gw.clone();
        tcp.set_message_callback(Arc::new(
            move |conn: &TcpConnectionPtr, buf: &mut Buffer| g.on_message(conn, buf),
        ));
        let g = gw.clone();
        tcp.set_write_complete_callback(Arc::new(move |conn: &TcpConnectionPtr| {
            g.on_write_complete(conn)
        }));
        let g = gw;
        tcp.set_high_water_mark_callback(
            Arc::new(move |conn: &TcpConnectionPtr, size| g.on_high_water(conn, size)),
            opts.limits.output_high_water,
        );
        let admin = match opts.admin {
            Some(admin) => {
                let src = Sources {
                    service: service.clone(),
                    connections: tcp.connection_count(),
                    ws_connections: ws.as_ref().map(WsServer::connection_count),
                    queue: workers.submitter().clone(),
                    backlog: Arc::default(),
                };
                Some(AdminServer::start(admin, src)?)
            }
            None => None,
        };
        Ok(ChatServer {
            tcp,
            service,
            sessions,
            workers,
            bus_threads,
            admin,
            ws,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.tcp.local_addr()
    }

    /// The admin listener's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The WebSocket listener's address, when it runs.
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws.as_ref().map(WsServer::local_addr)
    }

    /// The service (for inspection in tests and tools).
    pub fn service(&self) -> &Arc<ChatService> {
        &self.service
    }

    /// Starts the IO threads and listening. Must be called on the base loop thread.
    pub fn start(&self) -> io::Result<()> {
        self.tcp.start()?;
        let mut loops = self.tcp.io_loops();
        if let Some(ws) = &self.ws {
            ws.start()?;
            loops.extend(ws.io_loops());
        }
        self.service.set_io_loops(loops);
        Ok(())
    }

    /// Clean shutdown: stop accepting, log this node's users out (only them), close
    /// every connection once its output is written, then stop the workers and the
    /// bus. Runs `lp` (the base loop, which with zero IO threads also carries the
    /// connections) until every connection closed or `grace` passed. Must be called
    /// on the base loop thread, after its `run` returned.
    pub fn shutdown(mut self, lp: &EventLoop, grace: Duration) {
        self.tcp.stop_accepting();
        if let Some(ws) = &self.ws {
            ws.stop_accepting();
        }
        // Scrapes and probes end with the node: a stopping node is not ready.
        self.admin.take();
        // A connection accepted just before `stop_accepting` may still be on its way
        // to its IO loop and join `sessions` later: every tick tells the newcomers too.
        let submitter = self.workers.submitter().clone();
        let mut told: HashSet<u64> = HashSet::new();
        let open = self.sessions.clone();
        let mut tell_newcomers = move || {
            let new: Vec<Arc<Session>> = open
                .lock()
                .iter()
                .filter(|(id, _)| told.insert(**id))
                .map(|(_, s)| s.clone())
                .collect();
            for s in &new {
                submitter.submit(s, Job::Shutdown);
            }
        };
        tell_newcomers();
        let deadline = Instant::now() + grace;
        let open = self.sessions.clone();
        lp.run_every(Duration::from_millis(5), move |lp| {
            tell_newcomers();
            if open.lock().is_empty() || Instant::now() >= deadline {
                lp.quit();
            }
        });
        lp.run();
        self.workers.stop();
        // Whoever did not drain in time is signed out here; then the node leaves.
        self.service.sign_out_all();
        self.service.history().finish(Duration::from_secs(5));
        self.service.set_closing();
        if let Some(threads) = self.bus_threads.take() {
            threads.stop();
        }
        if let Some(bus) = self.service.bus() {
            match bus.leave() {
                Ok(()) => self.service.drain_own(),
                Err(e) => {
                    log::warn!("shutdown: node not unregistered ({e}); it expires by itself");
                }
            }
        }
    }
}

/// `err` with `what` (which listener failed) in front of its message; same kind.
fn naming(err: io::Error, what: std::fmt::Arguments<'_>) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

//! Admin: the operator's HTTP listener (`--admin-addr`), owned by the server and
//! run on threads of its own (`http`: one bounded request per connection), never
//! on an IO loop. It reads what the
//! lower floors expose — the stats, the hub, the store, the bus — and calls down
//! into the service for actions; nothing below knows it exists.
//!
//! - `GET /healthz`: 200 while the process serves.
//! - `GET /readyz`: 200 when the database answers and, in a cluster, Redis answers
//!   and this node's heartbeat is fresh; 503 with the reasons otherwise.
//! - `GET /metrics`: Prometheus text format (see `metrics`).
//! - Behind `Authorization: Bearer <token>` (the token from `CHAT_ADMIN_TOKEN`;
//!   without one every admin route is refused): `GET /admin/users`
//!   (`?scope=cluster` for every node's), `GET /admin/nodes`,
//!   `POST /admin/users/<id>/kick`.

pub mod http;
mod metrics;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{json, Value};

use self::http::{Listener, Reply, Request};

use crate::service::{ChatService, Kick};
use crate::workers::Submitter;

/// How the admin listener is set up.
#[derive(Clone)]
pub struct AdminOptions {
    /// Where to listen (port 0 picks one).
    pub addr: SocketAddr,
    /// The bearer token of the admin routes; `None` refuses them all.
    pub token: Option<String>,
}

impl fmt::Debug for AdminOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token stays out of logs and panics.
        f.debug_struct("AdminOptions")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// What the admin reads: handed over by the server as values.
#[derive(Clone)]
pub struct Sources {
    /// The service (stats, hub, store, bus; kicks).
    pub service: Arc<ChatService>,
    /// Open connections (the TcpServer's count).
    pub connections: Arc<AtomicUsize>,
    /// Open connections of the WebSocket listener (`--ws-addr`), HTTP ones
    /// included; `None` without one.
    pub ws_connections: Option<Arc<AtomicUsize>>,
    /// The worker queue (its depth).
    pub queue: Submitter,
    /// Reads the offline backlog for scrapes, within a bound.
    pub backlog: Arc<metrics::BacklogProbe>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sources")
    }
}

/// The running listener; dropping it stops it.
pub struct AdminServer {
    listener: Listener,
}

impl AdminServer {
    /// Binds `opts.addr` and serves on threads of its own.
    pub fn start(opts: AdminOptions, src: Sources) -> io::Result<AdminServer> {
        let addr = opts.addr;
        let admin = Arc::new(Admin {
            opts,
            src,
            checks: Mutex::new(()),
        });
        let listener = Listener::start(addr, Arc::new(move |rq: &Request| admin.route(rq)))
            .map_err(|e| io::Error::other(format!("admin listener {addr}: {e}")))?;
        Ok(AdminServer { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
}

struct Admin {
    opts: AdminOptions,
    src: Sources,
    /// Held by readiness checks and admin actions, one at a time as they always
    /// were (a burst of `/readyz` cannot take every database connection);
    /// `/healthz` and `/metrics` never wait for it.
    checks: Mutex<()>,
}

fn text(status: u16, body: impl Into<String>) -> Reply {
    (status, "text/plain; charset=utf-8", body.into())
}

fn json_reply(status: u16, v: &Value) -> Reply {
    (status, "application/json", format!("{v}\n"))
}

/// Compares without stopping at the first difference, so timing does not tell how
/// much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    fn route(&self, rq: &Request) -> Reply {
        let get = rq.method == "GET";
        match rq.path.as_str() {
            "/healthz" if get => text(200, "ok\n"),
            "/readyz" if get => {
                let _one = self.checks.lock();
                self.ready()
            }
            "/metrics" if get => (
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics::render(&self.src),
            ),
            "/healthz" | "/readyz" | "/metrics" => text(405, "method not allowed\n"),
            p if p.starts_with("/admin/") => match self.authorize(rq) {
                Err(reply) => reply,
                Ok(()) => {
                    let _one = self.checks.lock();
                    self.admin(&rq.method, p, &rq.query)
                }
            },
            _ => text(404, "not found\n"),
        }
    }

    /// The readiness check: every dependency answers.
    fn ready(&self) -> Reply {
        let svc = &self.src.service;
        let mut problems = Vec::new();
        if let Err(e) = svc.store().ping() {
            problems.push(format!("database: {e}"));
        }
        if let Some(bus) = svc.bus() {
            if let Err(e) = bus.ping() {
                problems.push(format!("redis: {e}"));
            }
            if !bus.heartbeat_fresh() {
                let age = bus
                    .heartbeat_age()
                    .map_or("never".to_owned(), |a| format!("{a:.1?} ago"));
                problems.push(format!("heartbeat: stale (last {age})"));
            }
        }
        if problems.is_empty() {
            text(200, "ready\n")
        } else {
            text(503, problems.join("\n") + "\n")
        }
    }

    fn authorize(&self, rq: &Request) -> Result<(), Reply> {
        let Some(token) = self.opts.token.as_deref().filter(|t| !t.is_empty()) else {
            return Err(text(
                403,
                "admin routes are disabled: set CHAT_ADMIN_TOKEN to enable them\n",
            ));
        };
        let given = rq
            .authorization
            .as_deref()
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if same(g.trim().as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(text(401, "missing or wrong bearer token\n")),
        }
    }

    fn admin(&self, method: &str, path: &str, query: &str) -> Reply {
        let svc = &self.src.service;
        let get = method == "GET";
        match path.trim_end_matches('/') {
            "/admin/users" if get => {
                if query.split('&').any(|kv| kv == "scope=cluster") {
                    self.cluster_users()
                } else {
                    let users: Vec<Value> = svc
                        .online_here()
                        .into_iter()
                        .map(|(id, name)| json!({"id": id, "name": name}))
                        .collect();
                    json_reply(200, &json!({"node": self.node_id(), "users": users}))
                }
            }
            "/admin/nodes" if get => self.nodes(),
            p => match p
                .strip_prefix("/admin/users/")
                .and_then(|r| r.strip_suffix("/kick"))
            {
                Some(id) if method == "POST" => match id.parse::<i64>() {
                    Ok(id) => self.kick(id),
                    Err(_) => text(400, "the user id must be an integer\n"),
                },
                Some(_) => text(405, "use POST\n"),
                None => text(404, "not found\n"),
            },
        }
    }

    fn node_id(&self) -> String {
        self.src
            .service
            .bus()
            .map_or_else(|| "standalone".to_owned(), |b| b.node_id().to_owned())
    }

    fn cluster_users(&self) -> Reply {
        let Some(bus) = self.src.service.bus() else {
            let users: Vec<Value> = self
                .src
                .service
                .online_here()
                .into_iter()
                .map(|(id, _)| json!({"id": id, "node": "standalone"}))
                .collect();
            return json_reply(200, &json!({ "users": users }));
        };
        match bus.online_users() {
            Ok(users) => {
                let users: Vec<Value> = users
                    .into_iter()
                    .map(|(id, node)| json!({"id": id, "node": node}))
                    .collect();
                json_reply(200, &json!({ "users": users }))
            }
            Err(e) => text(503, format!("{e}\n")),
        }
    }

    fn nodes(&self) -> Reply {
        let svc = &self.src.service;
        let Some(bus) = svc.bus() else {
            let me = json!({"id": "standalone", "alive": true, "users": svc.hub().count()});
            return json_reply(200, &json!({ "nodes": [me] }));
        };
        match bus.nodes() {
            Ok(nodes) => {
                let nodes: Vec<Value> = nodes
                    .into_iter()
                    .map(|n| json!({"id": n.id, "alive": n.alive, "users": n.users}))
                    .collect();
                json_reply(200, &json!({ "nodes": nodes }))
            }
            Err(e) => text(503, format!("{e}\n")),
        }
    }

    fn kick(&self, id: i64) -> Reply {
        match self.src.service.kick(id) {
            Ok(Kick::Here) => json_reply(200, &json!({"kicked": id, "node": self.node_id()})),
            Ok(Kick::Sent(node)) => json_reply(200, &json!({"kicked": id, "node": node})),
            Ok(Kick::NotOnline) => json_reply(404, &json!({"error": "not online", "id": id})),
            Err(e) => text(503, format!("{e}\n")),
        }
    }
}

//! ChatService: the business, one handler per msgid, run by workers — never on an IO loop.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use serde_json::Value;

mod admin;
mod chat;
mod cluster;
mod history;
mod social;

pub use history::{HistoryOptions, HistoryWriter};
mod contacts;
mod login;
mod resume;
#[cfg(test)]
mod tests;
pub mod throttle;

pub use admin::Kick;

/// How long a resume token stays valid unless configured (one day).
pub const DEFAULT_RESUME_TTL: Duration = Duration::from_secs(86_400);

use crate::audit::End;
use crate::bus::Bus;
use crate::hub::Hub;
use crate::member_cache::MemberCache;
use crate::password;
use crate::protocol::{self, errno, msgid, Parsed, ProtocolError, Request};
use crate::router::Router;
use crate::session::{Job, Session};
use crate::stats::Stats;
use crate::store::{AddFriend, JoinGroup, Store, StoreError};
use throttle::{LoginThrottle, ThrottleConfig};

/// A failure that ends a request with an error reply.
#[derive(Debug)]
pub enum ServiceError {
    /// The request broke the protocol (answered with an ERROR frame, msgid 11).
    Protocol(ProtocolError),
    /// The database failed (answered with UNAVAILABLE).
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        ServiceError::Store(e)
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// Bytes of stored messages (their JSON text) a LOGIN_ACK carries at most, besides
/// the oldest one whatever its size: escaped into the ACK's strings they take at
/// most twice that, so the ACK stays within 256 KiB plus friends and groups.
pub const LOGIN_PAGE_BYTES: usize = 128 * 1024;

/// A message handler: the session that sent the request and the request.
type Handler = fn(&ChatService, &Arc<Session>, Parsed) -> Result<()>;

/// The chat business: stores, presence and routing, behind a msgid → handler map.
pub struct ChatService {
    store: Arc<dyn Store>,
    router: Router,
    handlers: HashMap<i64, Handler>,
    /// Group id → member ids: read once per group, dropped when membership changes
    /// (here, or on another node through the bus).
    members: MemberCache,
    /// Users signed out here whose presence release failed (Redis unreachable): the
    /// keeper retries them, or other nodes would answer errno 2 for them until
    /// this node dies.
    unreleased: parking_lot::Mutex<std::collections::HashSet<i64>>,
    /// The IO loops, once the server started: a delivery read from the bus is
    /// acknowledged only after they wrote it (see `after_delivery`).
    loops: std::sync::OnceLock<Vec<net::LoopHandle>>,
    /// Set at a clean shutdown once every session is signed out.
    closing: std::sync::atomic::AtomicBool,
    /// Appends chat messages to history off the chat path (see `service::history`).
    history: HistoryWriter,
    /// The server's counters (shared with the router, the sessions and the admin).
    stats: Arc<Stats>,
    /// Failed logins per account (cluster-wide through the bus).
    throttle: LoginThrottle,
    /// How long a resume token stays valid after it was issued.
    resume_ttl: Duration,
    /// RESUMEs that may wait at once for a replaced session's put-back (half
    /// the workers: the put-back needs a free one; see `login::wait_put_back`).
    put_back_limit: usize,
    /// RESUMEs waiting for a put-back right now.
    put_back_waiting: std::sync::atomic::AtomicUsize,
    /// Records of stream frames numbered for acking sessions here that are no
    /// longer needed (see `acks`); the stream reader deletes them.
    records: Arc<crate::acks::Records>,
}

impl ChatService {
    /// A service over `store`, with every handler registered; `bus` makes it a
    /// cluster node.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Option<Arc<Bus>>,
        limits: crate::store::OfflineLimits,
        throttle: ThrottleConfig,
        history: &HistoryOptions,
    ) -> ChatService {
        let mut handlers: HashMap<i64, Handler> = HashMap::new();
        handlers.insert(msgid::LOGIN, ChatService::login);
        handlers.insert(msgid::LOGINOUT, ChatService::logout);
        handlers.insert(msgid::REG, ChatService::register);
        handlers.insert(msgid::ONE_CHAT, ChatService::one_chat);
        handlers.insert(msgid::ADD_FRIEND, ChatService::add_friend);
        handlers.insert(msgid::CREATE_GROUP, ChatService::create_group);
        handlers.insert(msgid::ADD_GROUP, ChatService::add_group);
        handlers.insert(msgid::GROUP_CHAT, ChatService::group_chat);
        handlers.insert(msgid::PING, ChatService::ping);
        for id in protocol::SOCIAL_MSGIDS {
            handlers.insert(id, ChatService::social);
        }
        handlers.insert(msgid::CONTACTS, ChatService::contacts);
        handlers.insert(msgid::RESUME, ChatService::resume);
        handlers.insert(msgid::SEQ_ACK, ChatService::seq_ack);
        // Standalone, every change goes through this cache; in a cluster another
        // node's invalidation can be lost while Redis is down, so entries expire.
        let cache_ttl = bus.as_ref().map(|_| Duration::from_secs(30));
        let stats = Arc::new(Stats::default());
        ChatService {
            throttle: LoginThrottle::new(throttle, bus.clone()),
            router: Router::new(store.clone(), bus, stats.clone(), limits),
            history: HistoryWriter::start(store.clone(), history),
            stats,
            store,
            handlers,
            members: MemberCache::new(cache_ttl),
            unreleased: parking_lot::Mutex::new(std::collections::HashSet::new()),
            loops: std::sync::OnceLock::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            resume_ttl: DEFAULT_RESUME_TTL,
            put_back_limit: 0,
            put_back_waiting: std::sync::atomic::AtomicUsize::new(0),
            records: Arc::default(),
        }
    }

    /// Sets the number of worker threads (before the server starts): half of
    /// them may wait for a replaced session's put-back at once.
    pub fn set_workers(&mut self, workers: usize) {
        self.put_back_limit = workers / 2;
    }

    /// Sets how long resume tokens stay valid (before the server starts).
    pub fn set_resume_ttl(&mut self, ttl: Duration) {
        self.resume_ttl = ttl;
    }

    /// Tells the service the server's IO loops (once, after they started).
    pub fn set_io_loops(&self, loops: Vec<net::LoopHandle>) {
        let _ = self.loops.set(loops);
    }

    /// The server's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The history writer.
    pub fn history(&self) -> &HistoryWriter {
        &self.history
    }

    /// The users online on this node.
    pub fn hub(&self) -> &Hub {
        self.router.hub()
    }

    /// The bus, in cluster mode.
    pub fn bus(&self) -> Option<&Arc<Bus>> {
        self.router.bus()
    }

    /// Runs one job of `session`. Called by a worker that owns the session.
    pub fn run_job(&self, session: &Arc<Session>, job: Job) {
        match job {
            Job::Request(parsed) => self.dispatch(session, parsed),
            Job::Refused {
                frame,
                errno,
                msgid,
            } => {
                let peer = session.peer;
                self.stats
                    .protocol_error_from(session.user_id(), peer, errno, msgid);
                session.reply(frame);
            }
            Job::Fatal(frame, errno) => {
                let peer = session.peer;
                self.stats
                    .protocol_error_from(session.user_id(), peer, errno, -1);
                close_after(session, frame, || {
                    self.sign_out(session, End::ProtocolError)
                });
            }
            Job::Closed { unsent, spilled } => {
                self.put_back(session, &unsent, &spilled);
                self.sign_out(session, End::Closed);
            }
            Job::Drained => {
                session.end_drain();
                match session.user() {
                    // A full ack window: the ACK that makes room drains.
                    Some(_) if session.flow().window_blocks() => {}
                    Some(user) => self.router.drained(user.id, session),
                    None => session.set_congested(false),
                }
                // The IO loop stopped reading while the session was congested, and
                // its last check may have run before the flag was cleared above:
                // look again, or a drained connection that gets no more output is
                // never read again.
                crate::gateway::resume_session(session);
            }
            Job::Shutdown => {
                self.sign_out(session, End::Shutdown);
                session.conn.shutdown();
            }
            Job::Route {
                to,
                from,
                text,
                cid,
            } => self.route_again(session, (to, from), text, cid),
            Job::Routed(routed) => self.routed(session, *routed),
            Job::Chat(chat) | Job::Deferred(chat) => self.prepared_chat(session, *chat),
            Job::Checked(check, verified) => {
                let result = self.login_checked(session, check, verified);
                self.answer(session, msgid::LOGIN, result);
            }
        }
    }

    /// Checks identity, then calls the msgid's handler and answers its errors.
    fn dispatch(&self, session: &Arc<Session>, parsed: Parsed) {
        if parsed.ext {
            session.set_ext();
        }
        let msgid = parsed.msgid;
        if let Some(acting) = parsed.req.acting_id() {
            match session.user() {
                None => {
                    return self.send_error(session, &ProtocolError::not_logged_in(msgid));
                }
                Some(user) if user.id != acting => {
                    let e = ProtocolError::not_your_id(msgid, acting, user.id);
                    return self.send_error(session, &e);
                }
                Some(_) => {}
            }
        }
        let Some(handler) = self.handlers.get(&msgid) else {
            let e = ProtocolError::new(errno::UNKNOWN_MSGID, format!("unknown msgid {msgid}"))
                .with_msgid(msgid);
            return self.send_error(session, &e);
        };
        let result = handler(self, session, parsed);
        self.answer(session, msgid, result);
    }

    /// Answers a handler's error, if any.
    fn answer(&self, session: &Session, msgid: i64, result: Result<()>) {
        match result {
            Ok(()) => {}
            Err(ServiceError::Protocol(e)) => self.send_error(session, &e),
            Err(ServiceError::Store(e)) => {
                log::warn!("msgid {msgid}: {e}");
                self.send_unavailable(session, msgid);
            }
        }
    }

    fn send_error(&self, session: &Session, e: &ProtocolError) {
        let msgid = e.msgid.unwrap_or(-1);
        self.stats
            .protocol_error_from(session.user_id(), session.peer, e.errno, msgid);
        session.reply(protocol::encode(&protocol::error(e)));
    }

    /// Tells the client the server could not do it. LOGIN and REG get their own
    /// ACK shape, which a legacy client prints; others get an ERROR frame.
    fn send_unavailable(&self, session: &Session, msgid: i64) {
        const MSG: &str = "server unavailable, try again later";
        let frame = match msgid {
            msgid::LOGIN => protocol::login_err(errno::UNAVAILABLE, MSG),
            msgid::REG => protocol::reg_err_ext(MSG),
            _ => protocol::error(&ProtocolError::unavailable(msgid)),
        };
        session.reply(protocol::encode(&frame));
    }

    /// Sends an ACK (msgid 12) if the client opted in to them.
    fn ack(
        &self,
        session: &Session,
        reqmsgid: i64,
        code: i64,
        errmsg: &str,
        extra: &[(&str, Value)],
    ) {
        if session.ext() {
            session.reply(protocol::encode(&protocol::ack(
                reqmsgid, code, errmsg, extra,
            )));
        }
    }

    fn register(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Reg { name, password } = parsed.req else {
            unreachable!("handler registered for REG")
        };
        let hash = password::hash(&password);
        let frame = match self.store.register(&name, &hash)? {
            Some(id) => protocol::reg_ok(id),
            None if session.ext() => protocol::reg_err_ext("name is already taken"),
            None => protocol::reg_err(),
        };
        session.reply(protocol::encode(&frame));
        Ok(())
    }

    fn add_friend(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::AddFriend { id, friendid } = parsed.req else {
            unreachable!("handler registered for ADD_FRIEND")
        };
        let (code, msg) = if id == friendid {
            (
                errno::SELF_FRIEND,
                "you cannot add yourself as a friend".to_owned(),
            )
        } else {
            match self.store.add_friend(id, friendid)? {
                AddFriend::Added => (errno::OK, format!("{friendid} added as a friend")),
                AddFriend::AlreadyFriends => (errno::OK, format!("{friendid} is already a friend")),
                AddFriend::NoSuchUser => (errno::NO_SUCH_USER, format!("no such user {friendid}")),
            }
        };
        self.ack(
            session,
            msgid::ADD_FRIEND,
            code,
            &msg,
            &[("friendid", Value::from(friendid))],
        );
        Ok(())
    }

    fn create_group(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::CreateGroup {
            id,
            groupname,
            groupdesc,
        } = parsed.req
        else {
            unreachable!("handler registered for CREATE_GROUP")
        };
        match self.store.create_group(id, &groupname, &groupdesc)? {
            Some(gid) => self.ack(
                session,
                msgid::CREATE_GROUP,
                errno::OK,
                &format!("group {gid} created"),
                &[
                    ("groupid", Value::from(gid)),
                    ("groupname", Value::from(groupname)),
                ],
            ),
            None => self.ack(
                session,
                msgid::CREATE_GROUP,
                errno::NAME_TAKEN,
                &format!("group name {groupname} is already taken"),
                &[("groupname", Value::from(groupname))],
            ),
        }
        Ok(())
    }

    fn add_group(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::AddGroup { id, groupid } = parsed.req else {
            unreachable!("handler registered for ADD_GROUP")
        };
        let (code, msg) = match self.store.join_group(id, groupid)? {
            JoinGroup::Joined => {
                self.invalidate_group(groupid);
                (errno::OK, format!("joined group {groupid}"))
            }
            JoinGroup::AlreadyMember => (errno::OK, format!("already in group {groupid}")),
            JoinGroup::NoSuchGroup => (errno::NO_SUCH_GROUP, format!("no such group {groupid}")),
        };
        self.ack(
            session,
            msgid::ADD_GROUP,
            code,
            &msg,
            &[("groupid", Value::from(groupid))],
        );
        Ok(())
    }

    fn ping(&self, session: &Arc<Session>, _parsed: Parsed) -> Result<()> {
        session.reply(protocol::encode(&protocol::pong()));
        Ok(())
    }
}

/// Sends a final frame, runs `sign_out`, and closes the connection once the frame
/// is written (or after a grace period).
fn close_after(session: &Session, frame: Vec<u8>, sign_out: impl FnOnce()) {
    session.reply(frame);
    sign_out();
    session.conn.shutdown();
    let conn = session.conn.clone();
    session
        .conn
        .loop_handle()
        .run_after(Duration::from_secs(2), move |_| conn.force_close());
}

/// A wire frame's JSON text (without its NUL).
fn frame_text(frame: &[u8]) -> &str {
    let json = frame.strip_suffix(&[0]).unwrap_or(frame);
    std::str::from_utf8(json).unwrap_or_default()
}

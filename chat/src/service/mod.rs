//! ChatService: the business, one handler per msgid, run by workers — never on an IO loop.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use serde_json::Value;

mod cluster;
mod history;
mod social;

pub use history::{HistoryOptions, HistoryWriter};

use crate::bus::{Bus, Claim};
use crate::hub::Hub;
use crate::member_cache::MemberCache;
use crate::password::{self, Verified};
use crate::protocol::{
    self, errno, msgid, Friend, GroupInfo, Member, Parsed, ProtocolError, Request,
};
use crate::router::{Fast, Outcome, Router};
use crate::session::{Job, Session, User};
use crate::store::{AddFriend, JoinGroup, Store, StoreError};
use crate::timefmt;

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
}

impl ChatService {
    /// A service over `store`, with every handler registered; `bus` makes it a
    /// cluster node.
    pub fn new(
        store: Arc<dyn Store>,
        bus: Option<Arc<Bus>>,
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
        // Standalone, every change goes through this cache; in a cluster another
        // node's invalidation can be lost while Redis is down, so entries expire.
        let cache_ttl = bus.as_ref().map(|_| Duration::from_secs(30));
        ChatService {
            router: Router::new(store.clone(), bus),
            history: HistoryWriter::start(store.clone(), history),
            store,
            handlers,
            members: MemberCache::new(cache_ttl),
            unreleased: parking_lot::Mutex::new(std::collections::HashSet::new()),
            loops: std::sync::OnceLock::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Tells the service the server's IO loops (once, after they started).
    pub fn set_io_loops(&self, loops: Vec<net::LoopHandle>) {
        let _ = self.loops.set(loops);
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
            Job::Reply(frame) => session.reply(frame),
            Job::Fatal(frame) => {
                session.reply(frame);
                self.sign_out(session);
                session.conn.shutdown();
                let conn = session.conn.clone();
                session
                    .conn
                    .loop_handle()
                    .run_after(std::time::Duration::from_secs(2), move |_| {
                        conn.force_close()
                    });
            }
            Job::Closed => self.sign_out(session),
            Job::Drained => {
                session.end_drain();
                match session.user() {
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
                self.sign_out(session);
                session.conn.shutdown();
            }
            Job::Route { to, text } => {
                if let Err(e) = self.router.send_one(to, &text) {
                    log::error!("lost a frame for {to}: {e}");
                }
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
        match handler(self, session, parsed) {
            Ok(()) => {}
            Err(ServiceError::Protocol(e)) => self.send_error(session, &e),
            Err(ServiceError::Store(e)) => {
                log::warn!("msgid {msgid}: {e}");
                self.send_unavailable(session, msgid);
            }
        }
    }

    fn send_error(&self, session: &Session, e: &ProtocolError) {
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

    fn login(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Login { id, password } = parsed.req else {
            unreachable!("handler registered for LOGIN")
        };
        if let Some(current) = session.user() {
            return Err(ServiceError::Protocol(ProtocolError::already_logged_in(
                current.id,
            )));
        }
        let invalid = || {
            protocol::encode(&protocol::login_err(
                errno::INVALID_CREDENTIALS,
                protocol::MSG_INVALID_CREDENTIALS,
            ))
        };
        let Some(row) = self.store.user(id)? else {
            session.reply(invalid());
            return Ok(());
        };
        match password::verify(&row.password, &password) {
            Verified::Mismatch => {
                session.reply(invalid());
                return Ok(());
            }
            Verified::OkLegacyPlaintext => {
                self.store.set_password(id, &password::hash(&password))?;
            }
            Verified::Ok => {}
        }

        // Claim the user and take its offline messages under the user's shard lock.
        let mut drains = 0;
        let offline = loop {
            let mut shard = self.hub().lock(id);
            let already = || {
                protocol::encode(&protocol::login_err(
                    errno::ALREADY_ONLINE,
                    protocol::MSG_ALREADY_ONLINE,
                ))
            };
            if shard.contains_key(&id) {
                drop(shard);
                session.reply(already());
                return Ok(());
            }
            if let Some(bus) = self.bus() {
                match bus.claim(id) {
                    Ok(Claim::Claimed) => {
                        self.unreleased.lock().remove(&id);
                    }
                    Ok(Claim::Orphaned(node)) => {
                        // The user was on a dead node whose undelivered frames are
                        // still in its stream: store them first, so this login's
                        // offline messages include them, then claim again.
                        drop(shard);
                        drains += 1;
                        if drains > 3 || !self.drain_dead(bus, &node, false) {
                            // Another drain is at it (a worker never waits for
                            // one: after a crash all of the node's users come
                            // back at once), or Redis failed: try again shortly.
                            self.send_unavailable(session, msgid::LOGIN);
                            return Ok(());
                        }
                        continue;
                    }
                    Ok(Claim::Taken(node)) => {
                        drop(shard);
                        log::debug!("user {id} is online on node {node}");
                        session.reply(already());
                        return Ok(());
                    }
                    Err(e) => {
                        drop(shard);
                        log::warn!("login {id}: {e}");
                        self.send_unavailable(session, msgid::LOGIN);
                        return Ok(());
                    }
                }
            }
            session.hold();
            shard.insert(id, session.clone());
            match self.store.take_offline(id) {
                Ok(msgs) => break msgs,
                Err(e) => {
                    shard.remove(&id);
                    self.release_presence(id);
                    drop(shard);
                    // Nothing was taken: held frames (if the connection also closed)
                    // go back to the store.
                    if let Err(held) = session.release(None) {
                        self.restore(id, held.iter().map(|f| frame_text(f)));
                    }
                    return Err(e.into());
                }
            }
        };
        session.set_user(Some(User {
            id,
            name: row.name.clone(),
        }));
        if let Err(e) = self.store.set_state(id, true) {
            log::warn!("user {id}: state column not updated: {e}");
        }
        let ack = match self.login_view(id) {
            Ok((friends, groups)) => protocol::login_ok(id, &row.name, &friends, &groups, &offline),
            Err(e) => {
                // The messages were taken: deliver them rather than lose them.
                log::warn!("user {id}: friends/groups not loaded: {e}");
                protocol::login_ok(id, &row.name, &[], &[], &offline)
            }
        };
        if let Err(held) = session.release(Some(protocol::encode(&ack))) {
            // The connection closed while the login ran: the ACK (with the offline
            // messages in it) and what was held cannot be delivered; store them
            // again and undo the login.
            log::debug!("user {id}: connection closed during login");
            self.restore(id, offline.iter().map(String::as_str));
            self.restore(id, held.iter().map(|f| frame_text(f)));
            self.sign_out(session);
        } else {
            self.announce(id, &row.name, true);
        }
        Ok(())
    }

    /// Friends and groups with live presence, for the LOGIN_ACK.
    fn login_view(
        &self,
        id: i64,
    ) -> std::result::Result<(Vec<Friend>, Vec<GroupInfo>), StoreError> {
        let friends = self.store.friends(id)?;
        let groups = self.store.groups_of(id)?;
        let mut ids: Vec<i64> = friends.iter().map(|(f, _)| *f).collect();
        ids.extend(groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)));
        ids.sort_unstable();
        ids.dedup();
        let online: HashMap<i64, bool> =
            ids.iter().copied().zip(self.router.online(&ids)).collect();
        let is_online = |u: i64| online.get(&u).copied().unwrap_or(false);
        let friends = friends
            .into_iter()
            .map(|(fid, name)| Friend {
                id: fid,
                name,
                online: is_online(fid),
            })
            .collect();
        let groups = groups
            .into_iter()
            .map(|g| GroupInfo {
                id: g.id,
                name: g.name,
                desc: g.desc,
                members: g
                    .members
                    .into_iter()
                    .map(|m| Member {
                        id: m.id,
                        name: m.name,
                        role: m.role,
                        online: is_online(m.id),
                    })
                    .collect(),
            })
            .collect();
        Ok((friends, groups))
    }

    fn logout(&self, session: &Arc<Session>, _parsed: Parsed) -> Result<()> {
        self.sign_out(session);
        self.ack(session, msgid::LOGINOUT, errno::OK, "logged out", &[]);
        Ok(())
    }

    /// Logs the connection's user out, if any: presence first, then the state column.
    fn sign_out(&self, session: &Arc<Session>) {
        let Some(user) = session.user() else {
            return;
        };
        session.set_user(None);
        let removed = {
            // Presence goes with the hub entry under one shard lock, so a new login
            // of the same user on this node (which takes that lock) cannot have its
            // fresh claim released by this late sign-out.
            let mut shard = self.hub().lock(user.id);
            let ours = shard.get(&user.id).is_some_and(|s| s.id() == session.id());
            if ours {
                shard.remove(&user.id);
                self.release_presence(user.id);
            }
            ours
        };
        if removed {
            if let Err(e) = self.store.set_state(user.id, false) {
                log::warn!("user {}: state column not updated: {e}", user.id);
            }
            self.announce(user.id, &user.name, false);
        }
    }

    /// Drops the cluster presence of a user this node held.
    /// The caller holds the user's shard lock.
    fn release_presence(&self, id: i64) {
        if let Some(bus) = self.bus() {
            if let Err(e) = bus.release(id) {
                log::warn!("user {id}: presence not released ({e}); retried by the keeper");
                self.unreleased.lock().insert(id);
            }
        }
    }

    /// Stores frames again for `user` (ones that could not be delivered after all).
    fn restore<'a>(&self, user: i64, texts: impl Iterator<Item = &'a str>) {
        for t in texts.filter(|t| !t.is_empty()) {
            if let Err(e) = self.store.store_offline(user, t) {
                log::error!("lost a frame for {user}: {e}");
            }
        }
    }

    /// Signs out every session of this node (clean shutdown, or a claim lost to
    /// another node): presence and the state column of these users only.
    pub fn sign_out_all(&self) {
        for id in self.hub().online_users() {
            if let Some(session) = self.hub().get(id) {
                self.sign_out(&session);
            }
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

    /// Handles a ONE_CHAT on the IO loop when that needs no blocking work: the
    /// session has nothing queued (so order is kept), the sender is who it claims,
    /// and the recipient is online on this node. Otherwise hands the request back
    /// for the workers.
    pub fn try_fast(&self, session: &Arc<Session>, parsed: Parsed) -> std::result::Result<(), Job> {
        let Request::OneChat { id, toid, .. } = &parsed.req else {
            return Err(Job::Request(parsed));
        };
        let (id, toid) = (*id, *toid);
        let user = match session.user() {
            Some(u) if u.id == id && session.is_idle() && self.history.has_room() => u,
            _ => return Err(Job::Request(parsed)),
        };
        let ext = parsed.ext;
        let mut parsed = Some(parsed);
        let sent = self.router.try_send_local(toid, || {
            let Some(Parsed {
                req: Request::OneChat { frame, .. },
                ..
            }) = parsed.take()
            else {
                unreachable!("checked above")
            };
            let text = chat_text(frame, &user.name);
            // Called only when the frame goes out (or is stored): recorded before the
            // recipient can see it, so a reply gets the later seq.
            self.record_chat(id, toid, &text);
            text
        });
        if ext && !matches!(sent, Fast::NotHere) {
            session.set_ext();
        }
        match (sent, parsed) {
            (Fast::Sent, _) => Ok(()),
            (Fast::Store(text), _) => Err(Job::Route { to: toid, text }),
            (Fast::NotHere, Some(parsed)) => Err(Job::Request(parsed)),
            (Fast::NotHere, None) => unreachable!("the text is built only when sent"),
        }
    }

    fn one_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::OneChat { toid, frame, .. } = parsed.req else {
            unreachable!("handler registered for ONE_CHAT")
        };
        let Some(user) = session.user() else {
            // Signed out by the node between dispatch and here (a lost claim).
            return Err(ServiceError::Protocol(ProtocolError::not_logged_in(
                parsed.msgid,
            )));
        };
        let text = chat_text(frame, &user.name);
        // Recorded before a recipient here can see it (so its reply gets the later
        // seq); otherwise only once the recipient is known to exist.
        let here = self.hub().is_online(toid);
        if here {
            self.record_chat(user.id, toid, &text);
        }
        let outcome = self.router.send_one(toid, &text)?;
        if !here && outcome != Outcome::NoSuchUser {
            self.record_chat(user.id, toid, &text);
        }
        if outcome == Outcome::NoSuchUser {
            self.ack(
                session,
                msgid::ONE_CHAT,
                errno::NO_SUCH_USER,
                &format!("no such user {toid}"),
                &[("toid", Value::from(toid))],
            );
        }
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

    fn group_chat(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::GroupChat {
            id, groupid, frame, ..
        } = parsed.req
        else {
            unreachable!("handler registered for GROUP_CHAT")
        };
        let Some(user) = session.user() else {
            // Signed out by the node between dispatch and here (a lost claim).
            return Err(ServiceError::Protocol(ProtocolError::not_logged_in(
                parsed.msgid,
            )));
        };
        let Some(members) = self.group_members(groupid)? else {
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::NO_SUCH_GROUP,
                &format!("no such group {groupid}"),
                &[("groupid", Value::from(groupid))],
            );
            return Ok(());
        };
        if !members.contains(&id) {
            self.ack(
                session,
                msgid::GROUP_CHAT,
                errno::NOT_MEMBER,
                &format!("you are not in group {groupid}"),
                &[("groupid", Value::from(groupid))],
            );
            return Ok(());
        }
        let others: Vec<i64> = members.iter().copied().filter(|&m| m != id).collect();
        let text = chat_text(frame, &user.name);
        // Recorded before any member can see it, so replies get later seqs.
        self.record_group_chat(id, groupid, &text);
        self.router.send_many(&others, &text)?;
        Ok(())
    }

    /// A group's member ids, from the cache or the store; `None` if no such group.
    fn group_members(&self, group: i64) -> std::result::Result<Option<Arc<Vec<i64>>>, StoreError> {
        if let Some(m) = self.members.get(group) {
            return Ok(Some(m));
        }
        let epoch = self.members.begin();
        let Some(mut members) = self.store.group_members(group)? else {
            return Ok(None);
        };
        members.sort_unstable();
        let members = Arc::new(members);
        self.members.insert(group, members.clone(), epoch);
        Ok(Some(members))
    }

    /// Drops a group from the member cache, here and on every other node.
    fn invalidate_group(&self, group: i64) {
        self.members.invalidate(group);
        if let Some(bus) = self.bus() {
            if let Err(e) = bus.broadcast_invalidate(group) {
                log::warn!("group {group}: other nodes keep a stale member list: {e}");
            }
        }
    }

    fn ping(&self, session: &Arc<Session>, _parsed: Parsed) -> Result<()> {
        session.reply(protocol::encode(&protocol::pong()));
        Ok(())
    }
}

/// A wire frame's JSON text (without its NUL).
fn frame_text(frame: &[u8]) -> &str {
    let json = frame.strip_suffix(&[0]).unwrap_or(frame);
    std::str::from_utf8(json).unwrap_or_default()
}

/// The JSON text of a chat frame as recipients get it (see `protocol::delivery_frame`).
fn chat_text(frame: serde_json::Map<String, Value>, sender_name: &str) -> String {
    let fallback = if frame.contains_key("time") {
        String::new()
    } else {
        timefmt::now()
    };
    let out = protocol::delivery_frame(frame, sender_name, &fallback);
    serde_json::to_string(&out).expect("a Value always serialises")
}

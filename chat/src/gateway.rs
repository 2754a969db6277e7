//! Gateway: the IO-loop half of the server — admits connections, cuts frames,
//! parses and rate-limits requests, applies backpressure, and hands everything
//! else to the workers. Nothing here blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{Buffer, TcpConnectionPtr};
use parking_lot::Mutex;

use crate::codec::{self, CodecError, Decoded, Decoder};
use crate::protocol::{self, errno, ProtocolError};
use crate::service::ChatService;
use crate::session::{Job, Session};
use crate::stats::Stats;
use crate::workers::Submitter;
use crate::ws::{WsEvent, WsReader};

/// How long a refused or failed connection may take to read its error before it is closed.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Per-connection limits (see README, "Limits").
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections beyond this are refused with error 112 and closed.
    pub max_connections: usize,
    /// A connection that has not logged in this long after connecting gets error
    /// 113 and is closed. Zero disables it.
    pub login_timeout: Duration,
    /// Requests per second a connection may send (token bucket); beyond it a
    /// request is refused with error 109. Zero disables it.
    pub rate: u32,
    /// How many requests a connection may send in a burst above `rate`.
    pub burst: u32,
    /// Output bytes queued for a connection above which it counts as a slow
    /// reader: new chat frames for it are stored (and flushed when it drains),
    /// and its own requests are not read until it drains.
    pub output_high_water: usize,
    /// WebSocket listener connections that may be in their HTTP phase at once
    /// (request head not complete yet, or a page being answered); one more is
    /// answered 503 and closed. HTTP-phase connections never take chat slots
    /// (`max_connections`): half-open requests cannot lock chat clients out.
    pub http_max: usize,
    /// Of those, how many one peer address may have at once; one more from it is
    /// answered 503 and closed, so that one address cannot hold `http_max` alone.
    pub http_per_ip: usize,
    /// How long a WebSocket listener connection may stay in its HTTP phase, from
    /// its accept (request head and the page's reply together): then it is closed.
    pub http_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            login_timeout: Duration::from_secs(60),
            rate: 1000,
            burst: 2000,
            output_high_water: 4 * 1024 * 1024,
            http_max: 64,
            http_per_ip: 8,
            http_timeout: Duration::from_secs(10),
        }
    }
}

/// What the IO loop keeps in each connection's context slot.
struct ConnState {
    session: Arc<Session>,
    decoder: Decoder,
    /// Set after a fatal frame or a refusal: further input is discarded.
    closing: bool,
    /// Closing because a frame was over the limit: a WebSocket's close frame then
    /// says 1009 (message too big, RFC 6455 §7.4.1) after the ERROR 106.
    oversize: bool,
    /// Token bucket for the request rate.
    tokens: f64,
    refilled: Instant,
    /// The login time limit's timer, cancelled when the connection closes.
    login_timer: Option<net::TimerId>,
    /// Bytes left in the input buffer after the last `on_message`: what is beyond
    /// them is new (counted in the stats).
    seen: usize,
    /// A WebSocket connection's protocol layer (`--ws-addr`); `None` on TCP (and
    /// while `on_ws_message` has it out).
    ws: Option<Box<WsReader>>,
    /// A WebSocket connection: extended throughout (protocol.md §13).
    websocket: bool,
}

/// Every connection's session, for shutdown.
pub type Sessions = Arc<Mutex<HashMap<u64, Arc<Session>>>>;

/// The IO-loop callbacks' shared state.
pub struct Gateway {
    service: Arc<ChatService>,
    submitter: Submitter,
    sessions: Sessions,
    limits: Limits,
    frame_limit: usize,
    connections: Arc<AtomicUsize>,
    /// The WebSocket listener's connections, counted against the same limit.
    ws_connections: Option<Arc<AtomicUsize>>,
    stats: Arc<Stats>,
}

impl Gateway {
    /// A gateway handing jobs to `submitter`.
    pub fn new(
        service: Arc<ChatService>,
        submitter: Submitter,
        sessions: Sessions,
        limits: Limits,
        frame_limit: usize,
        connections: Arc<AtomicUsize>,
    ) -> Gateway {
        Gateway {
            stats: service.stats().clone(),
            service,
            submitter,
            sessions,
            limits,
            frame_limit,
            connections,
            ws_connections: None,
        }
    }

    /// Counts the WebSocket listener's upgraded connections too, against
    /// `max_connections` (not those in their HTTP phase: see [`crate::ws`]).
    pub fn with_ws_connections(mut self, count: Arc<AtomicUsize>) -> Gateway {
        self.ws_connections = Some(count);
        self
    }

    /// The largest inbound frame (a WebSocket message's limit too).
    pub fn frame_limit(&self) -> usize {
        self.frame_limit
    }

    /// The connection limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connection up or down.
    pub fn on_connection(&self, conn: &TcpConnectionPtr) {
        if conn.connected() {
            self.on_connected(conn);
        } else {
            self.sessions.lock().remove(&conn.id());
            let closed =
                conn.with_context(|st: &mut ConnState| (st.session.clone(), st.login_timer.take()));
            if let Some((session, timer)) = closed {
                if let Some(timer) = timer {
                    conn.loop_handle().cancel(timer);
                }
                let unsent = conn.take_unsent_output();
                // Before the job: deliveries from now on are stored, not lost.
                session.mark_closed();
                // Every send queued before the mark runs before this task (the
                // loop runs tasks in order) and keeps its frame in the session
                // when it finds the connection gone; the job then puts all of it
                // back into the store.
                let submitter = self.submitter.clone();
                conn.loop_handle().queue_in_loop(move |_| {
                    let spilled = session.take_spilled();
                    submitter.submit(&session, Job::Closed { unsent, spilled });
                });
            }
        }
    }

    fn on_connected(&self, conn: &TcpConnectionPtr) {
        self.admit(conn, None);
    }

    /// A WebSocket connection finished its upgrade: from here on it is a chat
    /// connection like a TCP one, opted in to extended replies.
    pub fn on_ws_upgraded(&self, conn: &TcpConnectionPtr, reader: WsReader) {
        if let Some(session) = self.admit(conn, Some(Box::new(reader))) {
            session.set_ext();
        }
    }

    /// Sets the connection's state up; `None` if it was refused (server full).
    fn admit(&self, conn: &TcpConnectionPtr, ws: Option<Box<WsReader>>) -> Option<Arc<Session>> {
        let _ = conn.set_tcp_no_delay(true);
        conn.set_high_water_mark(self.limits.output_high_water);
        let session = Arc::new(Session::new(
            conn.handle(),
            conn.peer_addr(),
            self.stats.clone(),
            self.limits.output_high_water,
        ));
        let open = self.connections.load(Ordering::Relaxed)
            + self
                .ws_connections
                .as_ref()
                .map_or(0, |c| c.load(Ordering::Relaxed));
        let full = open > self.limits.max_connections;
        conn.set_context(ConnState {
            session: session.clone(),
            decoder: Decoder::new(self.frame_limit),
            closing: full,
            oversize: false,
            tokens: f64::from(self.limits.burst.max(1)),
            refilled: Instant::now(),
            login_timer: None,
            seen: 0,
            websocket: ws.is_some(),
            ws,
        });
        if full {
            let e = ProtocolError::new(errno::SERVER_FULL, "server is full, try again later");
            close_with(conn, &e, &self.stats);
            return None;
        }
        self.sessions.lock().insert(conn.id(), session.clone());
        if !self.limits.login_timeout.is_zero() {
            let session = session.clone();
            let handle = conn.handle();
            let timer = conn
                .loop_handle()
                .run_after(self.limits.login_timeout, move |lp| {
                    if session.logged_in_once() {
                        return;
                    }
                    if let Some(conn) = handle.get(lp) {
                        let stats = session.stats();
                        let e =
                            ProtocolError::new(errno::LOGIN_TIMEOUT, "no login in time, closing");
                        conn.with_context(|st: &mut ConnState| st.closing = true);
                        close_with(&conn, &e, stats);
                    }
                });
            conn.with_context(|st: &mut ConnState| st.login_timer = Some(timer));
        }
        Some(session)
    }

    /// Bytes arrived: cut frames, parse them, queue them in order.
    pub fn on_message(&self, conn: &TcpConnectionPtr, buf: &mut Buffer) {
        let mut ctx = conn.context();
        let Some(st) = ctx.as_mut().and_then(|b| b.downcast_mut::<ConnState>()) else {
            buf.retrieve_all();
            return;
        };
        self.stats
            .bytes_in(buf.readable_bytes().saturating_sub(st.seen));
        st.seen = buf.readable_bytes();
        if st.session.queue_paused() {
            // Reading resumes when the queue drains; read on meanwhile and every
            // read would pile its bytes up here.
            conn.stop_read();
            return;
        }
        if self.decode(st, buf) {
            conn.stop_read();
        }
        st.seen = buf.readable_bytes();
    }

    /// A WebSocket connection's bytes arrived (or reading resumed): read its
    /// messages and decode each text message's frame as `on_message` decodes TCP
    /// input, one message at a time so that a pause leaves the rest unread.
    pub fn on_ws_message(&self, conn: &TcpConnectionPtr, buf: &mut Buffer) {
        let mut ctx = conn.context();
        let Some(st) = ctx.as_mut().and_then(|b| b.downcast_mut::<ConnState>()) else {
            buf.retrieve_all();
            return;
        };
        let Some(mut ws) = st.ws.take() else {
            buf.retrieve_all();
            return;
        };
        if st.session.queue_paused() {
            // The loop hands these bytes over again when reading resumes.
            st.ws = Some(ws);
            conn.stop_read();
            return;
        }
        self.stats.bytes_in(buf.readable_bytes());
        if !st.closing {
            ws.push(buf.peek());
        }
        buf.retrieve_all();
        let mut pause = false;
        let mut close = false;
        let mut broken = false;
        while !st.closing && !pause {
            if !ws.frames.is_empty() {
                pause = self.decode(st, &mut ws.frames);
                if st.oversize {
                    ws.close_as_too_big();
                }
                if !ws.frames.is_empty() {
                    break; // paused, or closing (every message ends in a NUL)
                }
                continue;
            }
            let job = match ws.read_event() {
                WsEvent::Text | WsEvent::Control => None,
                WsEvent::Idle => break,
                WsEvent::Ping => {
                    // Pings count against the rate limit like requests; one over
                    // it is not answered (and counted as errno 109).
                    if !self.take_token(st) {
                        ws.drop_answer();
                        self.stats.protocol_error(errno::RATE_LIMITED);
                    }
                    None
                }
                WsEvent::Binary => {
                    self.stats.frame_in(-1);
                    let e = if self.take_token(st) {
                        ProtocolError::new(
                            errno::BAD_JSON,
                            "binary WebSocket messages are not read: send JSON as text",
                        )
                    } else {
                        ProtocolError::rate_limited(None)
                    };
                    Some(refused(protocol::encode(&protocol::error(&e)), e.errno, -1))
                }
                WsEvent::Oversize => {
                    self.stats.frame_in(-1);
                    st.closing = true;
                    let e = ProtocolError::frame_too_large(self.frame_limit);
                    Some(Job::Fatal(protocol::encode(&protocol::error(&e)), e.errno))
                }
                WsEvent::Closed => {
                    st.closing = true;
                    close = true;
                    None
                }
                WsEvent::Broken(_) => {
                    st.closing = true;
                    close = true;
                    broken = true;
                    None
                }
            };
            if let Some(job) = job {
                pause |= self.submitter.submit(&st.session, job);
            }
        }
        let mut control = ws.take_output();
        if broken {
            // After what the protocol layer wrote: a close with 1002, not 1000.
            control.extend(ws.protocol_error_close().unwrap_or_default());
        }
        if !control.is_empty() {
            conn.send_wire(&control);
        }
        if st.closing {
            ws.frames.retrieve_all();
        }
        st.ws = Some(ws);
        drop(ctx);
        if pause {
            conn.stop_read();
        }
        if close {
            // The client closed (its close answered) or broke the protocol: the
            // server ends the TCP connection (RFC 6455 §7.1.1) once the answer is
            // written; frames still queued for it are kept at the close, as on TCP.
            conn.shutdown();
            let handle = conn.handle();
            conn.loop_handle().queue_after_writes(move |lp| {
                if let Some(c) = handle.get(lp) {
                    c.force_close();
                }
            });
        }
    }

    /// Cuts, parses and queues the frames in `buf`; true if reading must pause.
    fn decode(&self, st: &mut ConnState, buf: &mut Buffer) -> bool {
        let mut pause = false;
        loop {
            if st.closing {
                buf.retrieve_all();
                break;
            }
            match st.decoder.decode(buf.peek()) {
                Ok(Decoded::Incomplete { skip }) => {
                    buf.retrieve(skip);
                    break;
                }
                Ok(Decoded::Frame { start, end }) => {
                    let token = self.take_token(st);
                    let frame = &buf.peek()[start..end];
                    let fast = token
                        .then(|| protocol::parse_fast_chat(frame))
                        .flatten()
                        .and_then(|chat| {
                            self.service
                                .try_fast_chat(&st.session, &chat, frame, st.websocket)
                        });
                    if let Some(done) = fast {
                        buf.retrieve(end);
                        self.stats.frame_in(protocol::msgid::ONE_CHAT);
                        if let Err(job) = done {
                            pause |= self.submitter.submit_frame(&st.session, job, end - start);
                            if pause {
                                break;
                            }
                        }
                        continue;
                    }
                    // A WebSocket connection is extended throughout (§13).
                    let ws = st.websocket;
                    let (mut ext, mut msgid) = (ws, -1);
                    let parsed = codec::parse_frame(&buf.peek()[start..end]).and_then(|v| {
                        ext |= asks_ext(&v);
                        msgid = v
                            .get("msgid")
                            .and_then(serde_json::Value::as_i64)
                            .unwrap_or(-1);
                        protocol::parse_request_on(v, ws)
                    });
                    buf.retrieve(end);
                    self.stats.frame_in(msgid);
                    let job = if !token {
                        let e = ProtocolError::rate_limited(parsed.as_ref().ok().map(|p| p.msgid));
                        refused(protocol::encode(&protocol::error(&e)), e.errno, msgid)
                    } else {
                        match parsed {
                            Ok(p) => match self.service.try_fast(&st.session, p) {
                                Ok(()) => continue,
                                Err(job) => job,
                            },
                            Err(e) => refused(error_reply(&e, ext), e.errno, msgid),
                        }
                    };
                    pause |= self.submitter.submit_frame(&st.session, job, end - start);
                    if pause {
                        // Leave the rest undecoded in the input buffer: the loop
                        // hands it over again when reading resumes, so a flood
                        // costs its bytes, not a job per frame.
                        break;
                    }
                }
                Ok(Decoded::Unterminated { end }) => {
                    buf.retrieve(end);
                    self.stats.frame_in(-1);
                    let e = if st.websocket {
                        codec::unterminated_message()
                    } else {
                        codec::unterminated()
                    };
                    let job = refused(protocol::encode(&protocol::error(&e)), e.errno, -1);
                    pause |= self.submitter.submit(&st.session, job);
                    if pause {
                        break;
                    }
                }
                Err(e) => {
                    st.oversize = matches!(e, CodecError::Oversize { .. });
                    let e = e.to_protocol_error();
                    let frame = protocol::encode(&protocol::error(&e));
                    st.closing = true;
                    self.stats.frame_in(-1);
                    pause |= self
                        .submitter
                        .submit(&st.session, Job::Fatal(frame, e.errno));
                }
            }
        }
        pause
    }

    /// The connection's output passed the high-water mark: a slow reader.
    pub fn on_high_water(&self, conn: &TcpConnectionPtr, _size: usize) {
        if let Some(session) = conn.with_context(|st: &mut ConnState| st.session.clone()) {
            log::debug!(
                "{}: slow reader, storing its messages until it drains",
                conn.name()
            );
            session.set_congested(true);
            conn.stop_read();
        }
    }

    /// The connection's output drained completely.
    pub fn on_write_complete(&self, conn: &TcpConnectionPtr) {
        let Some(session) = conn.with_context(|st: &mut ConnState| st.session.clone()) else {
            return;
        };
        // Requests held back while the output was over its mark run again.
        if session.output_drained() {
            self.submitter.wake(&session);
        }
        // The drain job can be the one that fills the queue: then reading pauses as
        // it does for a request (read on, and `on_message`, which returns at once
        // while the queue is paused, would leave every read's bytes in the input).
        if session.is_congested()
            && session.start_drain()
            && self.submitter.submit(&session, Job::Drained)
        {
            conn.stop_read();
        }
        // The common case, every completed write of a reading connection, stops here.
        if !conn.is_reading() {
            update_reading(conn);
        }
    }

    fn take_token(&self, st: &mut ConnState) -> bool {
        if self.limits.rate == 0 {
            return true;
        }
        let now = Instant::now();
        let elapsed = now.duration_since(st.refilled).as_secs_f64();
        st.refilled = now;
        st.tokens = (st.tokens + elapsed * f64::from(self.limits.rate))
            .min(f64::from(self.limits.burst.max(1)));
        if st.tokens >= 1.0 {
            st.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads again unless the session's queue is paused or, congested, it still has
/// output to write (a slow reader's own requests would only add replies; one that
/// is being sent its stored messages page by page may go on talking meanwhile).
/// Runs on the connection's loop thread.
pub fn update_reading(conn: &TcpConnectionPtr) {
    let Some(session) = conn.with_context(|st: &mut ConnState| st.session.clone()) else {
        return;
    };
    if session.queue_paused() || (session.is_congested() && conn.output_bytes() > 0) {
        conn.stop_read();
    } else {
        conn.start_read();
        // A WebSocket's reader keeps messages it took from the input: go on with them.
        if conn
            .with_context(|st: &mut ConnState| st.ws.is_some())
            .unwrap_or(false)
        {
            conn.redeliver();
        }
    }
}

/// A worker drained a paused session's queue: let its loop read again.
pub fn resume_session(session: &Session) {
    session.conn.run(update_reading);
}

/// Whether a request opted in to extended replies (before it is validated).
fn asks_ext(v: &serde_json::Value) -> bool {
    matches!(v.get("ext"), Some(serde_json::Value::Bool(true)))
        || v.get("ext").and_then(serde_json::Value::as_u64) == Some(1)
}

/// The reply to an invalid request. A LOGIN or REG with a missing or invalid field
/// (an id <= 0, an over-long value, a wrong type) gets the legacy failed LOGIN_ACK or
/// REG_ACK, which is what a legacy client waits for (it ignores msgid 11 and would hang):
/// the legacy bytes for a legacy client, the reason for an opted-in one (a LOGIN_ACK
/// with the protocol errno, a REG_ACK errno 1 with errmsg). Anything else an ERROR.
fn error_reply(e: &ProtocolError, ext: bool) -> Vec<u8> {
    let field = matches!(e.errno, errno::MISSING_FIELD | errno::BAD_FIELD);
    protocol::encode(&match (e.msgid, field, ext) {
        (Some(protocol::msgid::LOGIN), true, false) => protocol::login_err(
            errno::INVALID_CREDENTIALS,
            protocol::MSG_INVALID_CREDENTIALS,
        ),
        (Some(protocol::msgid::LOGIN), true, true) => protocol::login_err(e.errno, &e.errmsg),
        (Some(protocol::msgid::REG), true, false) => protocol::reg_err(),
        (Some(protocol::msgid::REG), true, true) => protocol::reg_err_ext(&e.errmsg),
        _ => protocol::error(e),
    })
}

/// A protocol error reply for the workers to send (and audit) in turn.
fn refused(frame: Vec<u8>, errno: i64, msgid: i64) -> Job {
    Job::Refused {
        frame,
        errno,
        msgid,
    }
}

/// Sends a final error and closes the connection once it is written (or after a
/// grace period). Counted, not audited: this runs on the IO loop, which never logs
/// per connection at the default level.
fn close_with(conn: &TcpConnectionPtr, e: &ProtocolError, stats: &Stats) {
    let frame = protocol::encode(&protocol::error(e));
    stats.frame_out(&frame);
    stats.protocol_error(e.errno);
    conn.send(&frame);
    conn.shutdown();
    let handle = conn.handle();
    conn.loop_handle()
        .run_after(CLOSE_GRACE, move |_| handle.force_close());
}

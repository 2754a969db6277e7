//! Gateway: the IO-loop half of the server — admits connections, cuts frames,
//! parses and rate-limits requests, applies backpressure, and hands everything
//! else to the workers. Nothing here blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{Buffer, TcpConnectionPtr};
use parking_lot::Mutex;

use crate::codec::{self, Decoded, Decoder};
use crate::protocol::{self, errno, ProtocolError};
use crate::service::ChatService;
use crate::session::{Job, Session};
use crate::stats::Stats;
use crate::workers::Submitter;

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            login_timeout: Duration::from_secs(60),
            rate: 1000,
            burst: 2000,
            output_high_water: 4 * 1024 * 1024,
        }
    }
}

/// What the IO loop keeps in each connection's context slot.
struct ConnState {
    session: Arc<Session>,
    decoder: Decoder,
    /// Set after a fatal frame or a refusal: further input is discarded.
    closing: bool,
    /// Token bucket for the request rate.
    tokens: f64,
    refilled: Instant,
    /// The login time limit's timer, cancelled when the connection closes.
    login_timer: Option<net::TimerId>,
    /// Bytes left in the input buffer after the last `on_message`: what is beyond
    /// them is new (counted in the stats).
    seen: usize,
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
        }
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
        let _ = conn.set_tcp_no_delay(true);
        conn.set_high_water_mark(self.limits.output_high_water);
        let session = Arc::new(Session::new(
            conn.handle(),
            conn.peer_addr(),
            self.stats.clone(),
            self.limits.output_high_water,
        ));
        let full = self.connections.load(Ordering::Relaxed) > self.limits.max_connections;
        conn.set_context(ConnState {
            session: session.clone(),
            decoder: Decoder::new(self.frame_limit),
            closing: full,
            tokens: f64::from(self.limits.burst.max(1)),
            refilled: Instant::now(),
            login_timer: None,
            seen: 0,
        });
        if full {
            let e = ProtocolError::new(errno::SERVER_FULL, "server is full, try again later");
            close_with(conn, &e, &self.stats);
            return;
        }
        self.sessions.lock().insert(conn.id(), session.clone());
        if !self.limits.login_timeout.is_zero() {
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
            return;
        }
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
                    let fast = token
                        .then(|| protocol::parse_fast_chat(&buf.peek()[start..end]))
                        .flatten()
                        .and_then(|chat| self.service.try_fast_chat(&st.session, &chat));
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
                    let (mut ext, mut msgid) = (false, -1);
                    let parsed = codec::parse_frame(&buf.peek()[start..end]).and_then(|v| {
                        ext = asks_ext(&v);
                        msgid = v
                            .get("msgid")
                            .and_then(serde_json::Value::as_i64)
                            .unwrap_or(-1);
                        protocol::parse_request(v)
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
                    let e = codec::unterminated();
                    let job = refused(protocol::encode(&protocol::error(&e)), e.errno, -1);
                    pause |= self.submitter.submit(&st.session, job);
                    if pause {
                        break;
                    }
                }
                Err(e) => {
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
        st.seen = buf.readable_bytes();
        if pause {
            conn.stop_read();
        }
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
        if session.is_congested() && session.start_drain() {
            self.submitter.submit(&session, Job::Drained);
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

//! Session: what the server knows about one connection, shared by its IO loop
//! and the workers; requests run through it one at a time, in arrival order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use net::ConnHandle;
use parking_lot::Mutex;

use crate::protocol::Parsed;
use crate::stats::Stats;

/// Above this many queued requests the connection stops reading (backpressure).
pub const QUEUE_HIGH: usize = 256;
/// Below this many queued requests a paused connection reads again.
pub const QUEUE_LOW: usize = 64;

/// One unit of work for the connection's strand.
#[derive(Debug)]
pub enum Job {
    /// A parsed request.
    Request(Parsed),
    /// A protocol error the IO loop found (the reply frame and its errno and the
    /// request's msgid), sent in turn with the others.
    Refused {
        /// The reply.
        frame: Vec<u8>,
        /// Its errno, for the audit line.
        errno: i64,
        /// The request's msgid (-1 if unreadable).
        msgid: i64,
    },
    /// A fatal protocol error (frame, errno): send it, then close the connection.
    Fatal(Vec<u8>, i64),
    /// The connection closed: log its user out.
    Closed,
    /// The server is stopping: log the user out and close after output drains.
    Shutdown,
    /// A chat frame (JSON text) for `to` that the IO loop could not deliver after
    /// all: route it again (it ends up stored).
    Route {
        /// The recipient.
        to: i64,
        /// The frame's JSON text.
        text: String,
        /// The sender's `cid`, when it asked for a confirmation.
        cid: Option<i64>,
    },
    /// The connection's output drained after it was congested: flush what was
    /// stored for the user meanwhile, then deliver live again.
    Drained,
}

/// The logged-in user of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub id: i64,
    /// The user's name, as stored.
    pub name: String,
}

/// Frames for this connection; while `holding`, live deliveries wait so that they
/// reach the client after its LOGIN_ACK, never before.
#[derive(Default)]
struct Outbox {
    holding: bool,
    held: Vec<Vec<u8>>,
    /// The connection closed: nothing sent now would arrive, so deliveries are
    /// refused (the caller stores them) instead of being dropped on the floor.
    closed: bool,
}

/// The strand: queued jobs and whether a worker owns the session right now.
#[derive(Default)]
struct Strand {
    jobs: VecDeque<Job>,
    /// True while the session is in the worker queue or being run: at most one
    /// worker runs a session's jobs at a time, which keeps them in order.
    scheduled: bool,
    /// True while the IO loop has stopped reading because too much is queued.
    paused: bool,
}

/// Per-connection state. Created by the IO loop when the connection comes up.
pub struct Session {
    /// Sends to and closes the connection, from any thread.
    pub conn: ConnHandle,
    /// The client's address, for the audit log.
    pub peer: SocketAddr,
    /// The server's counters: every frame sent through the session is counted.
    stats: Arc<Stats>,
    user: Mutex<Option<Arc<User>>>,
    /// The client opted in to extended replies (`"ext":1` on any request).
    ext: AtomicBool,
    outbox: Mutex<Outbox>,
    strand: Mutex<Strand>,
    /// True while the connection's output is above its high-water mark (a slow
    /// reader): deliveries are then stored offline instead of growing its buffer.
    congested: AtomicBool,
    /// Set at the first successful login (the login time limit checks it).
    logged_in_once: AtomicBool,
    /// A `Drained` job is queued: every completed write of a flushed batch would
    /// otherwise queue one more.
    drain_pending: AtomicBool,
}

impl Session {
    /// A session for a new connection.
    pub fn new(conn: ConnHandle, peer: SocketAddr, stats: Arc<Stats>) -> Session {
        Session {
            conn,
            peer,
            stats,
            user: Mutex::new(None),
            ext: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            strand: Mutex::new(Strand::default()),
            congested: AtomicBool::new(false),
            logged_in_once: AtomicBool::new(false),
            drain_pending: AtomicBool::new(false),
        }
    }

    /// The connection's unique id.
    pub fn id(&self) -> u64 {
        self.conn.id()
    }

    /// The logged-in user, if any (shared: reading it copies no name).
    pub fn user(&self) -> Option<Arc<User>> {
        self.user.lock().clone()
    }

    /// Binds (or with `None` unbinds) the connection's identity.
    pub fn set_user(&self, user: Option<User>) {
        if user.is_some() {
            self.logged_in_once.store(true, Ordering::Relaxed);
        }
        *self.user.lock() = user.map(Arc::new);
    }

    /// Whether the connection ever logged in.
    pub fn logged_in_once(&self) -> bool {
        self.logged_in_once.load(Ordering::Relaxed)
    }

    /// Marks the connection congested (or not); see [`Session::deliver`].
    pub fn set_congested(&self, on: bool) {
        self.congested.store(on, Ordering::Release);
    }

    /// Claims the one pending `Drained` job; false if one is already queued.
    pub fn start_drain(&self) -> bool {
        !self.drain_pending.swap(true, Ordering::AcqRel)
    }

    /// The queued `Drained` job is running: a later drain may queue another.
    pub fn end_drain(&self) {
        self.drain_pending.store(false, Ordering::Release);
    }

    /// Whether the connection's output is above its high-water mark.
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire)
    }

    /// Whether extended replies were asked for.
    pub fn ext(&self) -> bool {
        self.ext.load(Ordering::Relaxed)
    }

    /// Records the opt-in; it is sticky for the connection's life.
    pub fn set_ext(&self) {
        self.ext.store(true, Ordering::Relaxed);
    }

    /// The server's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The logged-in user's id, 0 before a login (for the audit log).
    pub fn user_id(&self) -> i64 {
        self.user.lock().as_ref().map_or(0, |u| u.id)
    }

    /// Counts and sends one frame.
    fn send(&self, frame: Vec<u8>) {
        self.stats.frame_out(&frame);
        self.conn.send(frame);
    }

    /// Sends a reply to this connection's own request (never held).
    pub fn reply(&self, frame: Vec<u8>) {
        self.send(frame);
    }

    /// Delivers a frame from someone else: held while a login is being answered.
    /// Returns false, delivering nothing, while the connection is congested: the
    /// caller (holding the user's hub shard lock) stores the frame instead.
    pub fn deliver(&self, frame: Vec<u8>) -> bool {
        if self.is_congested() {
            return false;
        }
        self.deliver_always(frame)
    }

    /// Like [`Session::deliver`], for a fan-out: instead of sending, adds this
    /// connection to `batch` (the caller sends the frame to the whole batch with
    /// `net::send_to_all`), or holds a copy while a login is being answered.
    /// False, doing nothing, while congested or once closed.
    pub fn deliver_into(&self, frame: &[u8], batch: &mut Vec<ConnHandle>) -> bool {
        if self.is_congested() {
            return false;
        }
        let mut out = self.outbox.lock();
        if out.closed {
            return false;
        }
        if out.holding {
            out.held.push(frame.to_vec());
        } else {
            self.stats.frame_out(frame);
            batch.push(self.conn.clone());
        }
        true
    }

    /// Delivers a frame even when congested (stored frames being flushed). False,
    /// doing nothing, once the connection closed: the caller keeps the frame stored.
    pub fn deliver_always(&self, frame: Vec<u8>) -> bool {
        let mut out = self.outbox.lock();
        if out.closed {
            return false;
        }
        if out.holding {
            out.held.push(frame);
        } else {
            self.send(frame);
        }
        true
    }

    /// Marks the connection closed (by its IO loop, before the `Closed` job is
    /// queued): from now on every delivery is refused and stored instead.
    pub fn mark_closed(&self) {
        self.outbox.lock().closed = true;
    }

    /// Whether the connection closed.
    pub fn is_closed(&self) -> bool {
        self.outbox.lock().closed
    }

    /// Starts holding deliveries (before the user becomes reachable at login).
    pub fn hold(&self) {
        self.outbox.lock().holding = true;
    }

    /// Sends `first` (the LOGIN_ACK, or nothing), then everything held, in order.
    /// If the connection closed meanwhile nothing is sent and the held frames are
    /// returned, for the caller to store again.
    pub fn release(&self, first: Option<Vec<u8>>) -> Result<(), Vec<Vec<u8>>> {
        let mut out = self.outbox.lock();
        out.holding = false;
        if out.closed {
            return Err(std::mem::take(&mut out.held));
        }
        if let Some(first) = first {
            self.send(first);
        }
        for frame in out.held.drain(..) {
            self.send(frame);
        }
        Ok(())
    }

    /// Queues a job. Returns `(schedule, pause)`: whether the caller must hand the
    /// session to a worker, and whether it must stop reading the connection.
    pub fn push(&self, job: Job) -> (bool, bool) {
        let mut s = self.strand.lock();
        s.jobs.push_back(job);
        let schedule = !s.scheduled;
        s.scheduled = true;
        let pause = !s.paused && s.jobs.len() > QUEUE_HIGH;
        if pause {
            s.paused = true;
        }
        (schedule, pause)
    }

    /// Takes the next job for the worker that owns the session. Returns
    /// `(job, resume)`; with no job left the session is no longer scheduled.
    pub fn pop(&self) -> (Option<Job>, bool) {
        let mut s = self.strand.lock();
        let job = s.jobs.pop_front();
        if job.is_none() {
            s.scheduled = false;
        }
        let resume = s.paused && s.jobs.len() < QUEUE_LOW;
        if resume {
            s.paused = false;
        }
        (job, resume)
    }

    /// True while the IO loop has stopped reading because too much is queued.
    pub fn queue_paused(&self) -> bool {
        self.strand.lock().paused
    }

    /// True when no job is queued or running: a request handled right now on the
    /// IO loop keeps its place in the connection's order.
    pub fn is_idle(&self) -> bool {
        let s = self.strand.lock();
        s.jobs.is_empty() && !s.scheduled
    }

    /// True when jobs are waiting (used to yield a busy session to others).
    pub fn has_jobs(&self) -> bool {
        !self.strand.lock().jobs.is_empty()
    }
}

//! Session: what the server knows about one connection, shared by its IO loop
//! and the workers; requests run through it one at a time, in arrival order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use net::ConnHandle;
use parking_lot::Mutex;

use crate::outflow::{FanOut, Outflow};
use crate::password::Verified;
use crate::protocol::Parsed;
use crate::route_batch::{RouteTicket, Routed};
use crate::stats::Stats;
use crate::store::UserRow;

/// Above this many queued requests the connection stops reading (backpressure).
pub const QUEUE_HIGH: usize = 256;
/// Below this many queued requests a paused connection reads again.
pub const QUEUE_LOW: usize = 64;
/// Above this many bytes of queued request frames the connection stops reading
/// too: 256 chats of 60 KB would otherwise hold 15 MiB per connection, and a few
/// such senders cost the server more memory than every session's output.
pub const QUEUE_HIGH_BYTES: usize = 1 << 20;
/// Below this many queued bytes (and [`QUEUE_LOW`] jobs) a paused connection
/// reads again.
pub const QUEUE_LOW_BYTES: usize = 256 << 10;

/// How long a worker waits for an IO loop to hand over a connection's spilled
/// frames ([`Session::take_spilled_behind_sends`]); a loop runs its tasks in
/// microseconds, so this only ends a wait on a loop that is gone.
pub const SPILL_TAKE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The connection closed: put what it never wrote back into the store, then
    /// log its user out.
    Closed {
        /// The output buffer's unwritten bytes.
        unsent: Vec<u8>,
        /// Frames the IO loop kept instead of appending them (wire bytes).
        spilled: Vec<Vec<u8>>,
    },
    /// The server is stopping: log the user out and close after output drains.
    Shutdown,
    /// A chat frame (JSON text) for `to` that the IO loop could not deliver after
    /// all: route it again (it ends up stored).
    Route {
        /// The recipient.
        to: i64,
        /// The sender (the session this job runs on).
        from: i64,
        /// The frame's JSON text.
        text: String,
        /// The sender's `cid`, when it asked for a confirmation.
        cid: Option<i64>,
    },
    /// The connection's output drained after it was congested: flush what was
    /// stored for the user meanwhile, then deliver live again.
    Drained,
    /// A LOGIN's password check came back from the hasher: finish the login. It
    /// runs before every job queued behind that LOGIN.
    Checked(PasswordCheck, Verified),
    /// A one-to-one frame came back from the route batcher: finish its request. It
    /// runs before every job still queued (see [`Session::pop`]).
    Routed(Box<Routed>),
    /// A ONE_CHAT the IO loop read without a `Value` and could not deliver there
    /// (the recipient is not on this node, or the strand was busy): its delivery
    /// text is made already.
    Chat(Box<PreparedChat>),
    /// A ONE_CHAT for a recipient on this node, met while earlier frames of the
    /// strand were with the route batcher: it waits for them (so that it reaches
    /// its recipient after them), then runs as [`Job::Chat`].
    Deferred(Box<PreparedChat>),
}

/// A ONE_CHAT whose delivery text is made ([`Job::Chat`], [`Job::Deferred`]), as a
/// request the strand runs in turn. Its text was made for `user`, the session's
/// user when it was read: if the session's user is another by the time it runs (a
/// LOGINOUT or LOGIN queued ahead of it), `frame` is parsed in full instead, like
/// any request.
#[derive(Debug)]
pub struct PreparedChat {
    /// The sender, as logged in when the frame was read.
    pub user: Arc<User>,
    /// The recipient.
    pub to: i64,
    /// The frame's JSON text as recipients get it.
    pub text: String,
    /// The sender's `cid`, when it asked for a confirmation (never on the IO
    /// loop's fast path).
    pub cid: Option<i64>,
    /// The frame as the client sent it (without its NUL).
    pub frame: Vec<u8>,
}

/// What the job that just returned handed over: the strand waits for a password
/// check to come back; past a frame for the route batcher it goes on (see
/// [`Session::pop`]).
#[derive(Debug)]
pub enum Suspended {
    /// A password check, for the hasher ([`Job::Checked`]).
    Password(PasswordCheck),
    /// A frame for another node, for the route batcher ([`Job::Routed`]). The
    /// strand goes on with further ONE_CHATs meanwhile (see [`Session::pop`]).
    Route(RouteTicket),
    /// A job to run again once the strand's frames are back from the route
    /// batcher ([`Job::Deferred`]).
    Later(Job),
}

/// A LOGIN's password check, run off the strand by the hasher: the session's later
/// jobs wait (its strand stays owned) until it comes back as [`Job::Checked`].
pub struct PasswordCheck {
    /// The id the client logs in as.
    pub id: i64,
    /// The user's row; `None` when there is no such user (the check still costs a
    /// hash, so that the reply's timing does not tell).
    pub row: Option<UserRow>,
    /// The password the client sent.
    pub password: String,
    /// Acknowledged delivery asked for (see [`crate::protocol::Parsed::acks`]).
    pub acks: Option<u64>,
}

impl std::fmt::Debug for PasswordCheck {
    /// Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordCheck")
            .field("id", &self.id)
            .field("known", &self.row.is_some())
            .finish_non_exhaustive()
    }
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
/// reach the client after its LOGIN_ACK, never before. Every send of a frame to
/// the connection is queued under this lock after checking `closed`, so a send
/// is either queued before the close is marked or refused.
#[derive(Default)]
pub struct Outbox {
    holding: bool,
    held: Vec<Vec<u8>>,
    /// The connection closed: nothing sent now would arrive, so deliveries are
    /// refused (the caller stores them) instead of being dropped on the floor.
    closed: bool,
}

/// The strand: queued jobs and whether a worker owns the session right now.
#[derive(Default)]
struct Strand {
    /// The jobs, each with the bytes of the frame it came from (0 when it came
    /// from elsewhere), counted in `bytes`.
    jobs: VecDeque<(Job, usize)>,
    /// The frame bytes of the queued jobs.
    bytes: usize,
    /// True while the session is in the worker queue or being run: at most one
    /// worker runs a session's jobs at a time, which keeps them in order.
    scheduled: bool,
    /// True while the IO loop has stopped reading because too much is queued.
    paused: bool,
    /// The output gate (issue #12): reply bytes handed to the IO loop and not yet
    /// appended to the connection's output.
    replies_in_flight: usize,
    /// The connection's output bytes the IO loop last saw after appending a reply
    /// (0 once the output drained completely). It only goes stale upwards.
    output_seen: usize,
    /// True while the strand waits for the output to drain: its next client
    /// request is not run while the output (with replies on their way) is over
    /// the high-water mark, so that replies cannot pile up in server memory.
    parked: bool,
    /// The connection closed: the gate is open for good (nothing is written).
    ungated: bool,
    /// Frames handed to the route batcher and not back yet. While there are any,
    /// only ONE_CHATs that go to the bus too run (their frames queue behind the
    /// earlier ones, in order); any other job waits for them, so that replies
    /// and effects keep the order of the requests.
    routes_out: usize,
    /// Frames back from the route batcher, finished before any queued job in the
    /// order they were handed over.
    routed: VecDeque<Box<Routed>>,
    /// The strand waits for `routes_out` to come back before its next job; no
    /// worker owns it meanwhile, but it stays scheduled.
    awaiting_routes: bool,
}

impl Strand {
    /// Whether the next job must wait for the output to drain: a client request
    /// (whose reply would add to the output) while the output and the replies on
    /// their way to it are over the mark.
    fn gated(&self, high_water: usize) -> bool {
        !self.ungated
            && self.output_seen + self.replies_in_flight > high_water
            && matches!(
                self.jobs.front(),
                Some((
                    Job::Request(_) | Job::Refused { .. } | Job::Chat(_) | Job::Deferred(_),
                    _
                ))
            )
    }

    /// Ends a wait for the output if the gate is open now; true if the strand
    /// must be scheduled (it is then marked scheduled, so that a job pushed before
    /// the worker takes it does not schedule it a second time).
    fn unpark(&mut self, high_water: usize) -> bool {
        if !self.parked || self.gated(high_water) {
            return false;
        }
        self.parked = false;
        let schedule = !self.scheduled && !self.jobs.is_empty();
        self.scheduled |= schedule;
        schedule
    }

    /// Whether the next job may run while frames are with the route batcher: a
    /// ONE_CHAT of the logged-in `user` (it goes to the bus behind them, or comes
    /// back as [`Job::Deferred`] if its recipient is here).
    fn runs_beside_routes(&self, user: Option<&Arc<User>>) -> bool {
        let Some(user) = user else { return false };
        match self.jobs.front() {
            Some((Job::Chat(c), _)) => Arc::ptr_eq(&c.user, user),
            Some((Job::Request(p), _)) => {
                matches!(p.req, crate::protocol::Request::OneChat { id, .. } if id == user.id)
            }
            _ => false,
        }
    }
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
    /// Shared with the IO loop's reply tasks, which account the output gate.
    strand: Arc<Mutex<Strand>>,
    /// The connection's output high-water mark (the output gate's bound).
    high_water: usize,
    /// The frames on their way out: the hard high-water mark, congestion, and
    /// what the IO loop kept instead of writing.
    flow: Arc<Outflow>,
    /// The user whose frames the connection carries, for putting back what it
    /// did not write at its close (0: none, or not safe to tell after a LOGINOUT).
    last_user: AtomicI64,
    /// Set at the first successful login (the login time limit checks it).
    logged_in_once: AtomicBool,
    /// A `Drained` job is queued: every completed write of a flushed batch would
    /// otherwise queue one more.
    drain_pending: AtomicBool,
    /// What the running job handed over (a password check, a frame for the route
    /// batcher): the worker passes it on once the job returned, and leaves the
    /// strand waiting for it.
    suspended: Mutex<Option<Suspended>>,
    /// Set once the close put the unacknowledged frames back (acking sessions): a
    /// RESUME that replaced this session waits for it before its first page.
    put_back: (Mutex<bool>, parking_lot::Condvar),
}

impl Session {
    /// A session for a new connection whose live chat output is bounded by
    /// `high_water`.
    pub fn new(
        conn: ConnHandle,
        peer: SocketAddr,
        stats: Arc<Stats>,
        high_water: usize,
    ) -> Session {
        Session {
            conn,
            peer,
            stats,
            user: Mutex::new(None),
            ext: AtomicBool::new(false),
            outbox: Mutex::new(Outbox::default()),
            strand: Arc::new(Mutex::new(Strand::default())),
            high_water,
            flow: Outflow::new(high_water),
            last_user: AtomicI64::new(0),
            logged_in_once: AtomicBool::new(false),
            drain_pending: AtomicBool::new(false),
            suspended: Mutex::new(None),
            put_back: (Mutex::new(false), parking_lot::Condvar::new()),
        }
    }

    /// The close put this session's unacknowledged frames back into the store.
    pub fn mark_put_back(&self) {
        *self.put_back.0.lock() = true;
        self.put_back.1.notify_all();
    }

    /// Waits (a worker, at most `limit`) until [`Session::mark_put_back`]; false
    /// if it did not come in time.
    pub fn wait_put_back(&self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut done = self.put_back.0.lock();
        while !*done {
            if self.put_back.1.wait_until(&mut done, deadline).timed_out() {
                break;
            }
        }
        *done
    }

    /// Hands work over (from the job running on this session's strand), for the
    /// worker to pass on once the job returned (see [`Suspended`]).
    pub fn suspend(&self, work: Suspended) {
        *self.suspended.lock() = Some(work);
    }

    /// What the job that just returned handed over, if any (for the worker).
    pub fn take_suspended(&self) -> Option<Suspended> {
        self.suspended.lock().take()
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
        if let Some(u) = &user {
            self.logged_in_once.store(true, Ordering::Relaxed);
            // Once a LOGINOUT made it ambiguous whose frames are in the output,
            // they are never attributed again on this connection.
            let _ = self
                .last_user
                .compare_exchange(0, u.id, Ordering::AcqRel, Ordering::Acquire);
        }
        *self.user.lock() = user.map(Arc::new);
    }

    /// After a LOGINOUT: frames still unwritten at the close are no longer put
    /// back for anyone (they may be the previous user's).
    pub fn forget_last_user(&self) {
        self.last_user.store(-1, Ordering::Release);
    }

    /// The user whose unwritten frames go back to the store at the close, if any.
    pub fn last_user(&self) -> Option<i64> {
        Some(self.last_user.load(Ordering::Acquire)).filter(|&u| u > 0)
    }

    /// Whether the connection ever logged in.
    pub fn logged_in_once(&self) -> bool {
        self.logged_in_once.load(Ordering::Relaxed)
    }

    /// Marks the connection congested (or not); see [`Session::deliver`].
    pub fn set_congested(&self, on: bool) {
        self.flow.set_congested(on);
    }

    /// The frames the IO loop kept instead of writing (at the close).
    pub fn take_spilled(&self) -> Vec<Vec<u8>> {
        self.flow.take_spilled()
    }

    /// From a worker, once the user's sign-out made it unreachable here: the frames
    /// the IO loop spilled, taken on the loop behind every send queued before (a
    /// frame offered after the sign-out was delivered before it). Waits for the
    /// loop; empty if the loop dropped the task (it is stopping) or did not run it
    /// within [`SPILL_TAKE_LIMIT`] (the frames then stay spilled; logged).
    pub fn take_spilled_behind_sends(&self) -> Vec<Vec<u8>> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let flow = self.flow.clone();
        self.conn.with(move |_| {
            if let Err(back) = tx.try_send(flow.take_spilled()) {
                // The worker gave up waiting: they stay where they were.
                flow.respill(back.into_inner());
            }
        });
        match rx.recv_timeout(SPILL_TAKE_LIMIT) {
            Ok(frames) => frames,
            Err(e) => {
                log::warn!("connection {}: spilled frames not taken ({e})", self.id());
                Vec::new()
            }
        }
    }

    /// Claims the one pending `Drained` job; false if one is already queued.
    pub fn start_drain(&self) -> bool {
        !self.drain_pending.swap(true, Ordering::AcqRel)
    }

    /// The queued `Drained` job is running: a later drain may queue another.
    pub fn end_drain(&self) {
        self.drain_pending.store(false, Ordering::Release);
    }

    /// The frames on their way out (acknowledged delivery lives there).
    pub fn flow(&self) -> &Arc<Outflow> {
        &self.flow
    }

    /// Whether the connection's output is above its high-water mark.
    pub fn is_congested(&self) -> bool {
        self.flow.is_congested()
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

    /// Sends a reply to this connection's own request (never held). Its bytes
    /// count against the output gate until the IO loop appended them; the loop
    /// then notes the output's size (see [`Session::pop`]).
    pub fn reply(&self, frame: Vec<u8>) {
        self.stats.frame_out(&frame);
        let len = frame.len();
        self.strand.lock().replies_in_flight += len;
        let strand = self.strand.clone();
        self.conn.with(move |c| {
            let out = c.map_or(0, |c| {
                c.send(&frame);
                c.output_bytes()
            });
            let mut s = strand.lock();
            s.replies_in_flight -= len;
            s.output_seen = out;
        });
    }

    /// On the IO loop, when the connection's output drained completely: the gate
    /// opens. True if the strand was parked and now holds the caller's duty to
    /// hand the session to a worker ([`crate::workers::Submitter::wake`]).
    pub fn output_drained(&self) -> bool {
        let mut s = self.strand.lock();
        s.output_seen = 0;
        s.unpark(self.high_water)
    }

    /// Delivers a frame from someone else: held while a login is being answered.
    /// Returns false, delivering nothing, while the connection is congested or
    /// once it closed: the caller (holding the user's hub shard lock) stores the
    /// frame instead.
    pub fn deliver(&self, frame: Vec<u8>) -> bool {
        if self.is_congested() {
            return false;
        }
        self.deliver_live(frame).is_ok()
    }

    /// Like [`Session::deliver`] without the congestion check (the IO loop's fast
    /// path made it): the loop still spills the frame if the output is at its
    /// mark. Once the connection closed, does nothing and gives the frame back.
    pub fn deliver_live(&self, frame: Vec<u8>) -> Result<(), Vec<u8>> {
        self.deliver_live_as(frame, None)
    }

    /// [`Session::deliver_live`] for a frame of a msgid the caller knows (counted
    /// without reading it from the frame).
    pub fn deliver_live_as(&self, frame: Vec<u8>, msgid: Option<i64>) -> Result<(), Vec<u8>> {
        #[cfg(test)]
        tests::AT_DELIVERY.with_borrow_mut(|hook| {
            if let Some(hook) = hook {
                hook(self);
            }
        });
        let mut out = self.outbox.lock();
        if out.closed {
            return Err(frame);
        }
        if out.holding {
            out.held.push(frame);
        } else {
            match msgid {
                Some(msgid) => self.stats.frame_out_as(&frame, msgid),
                None => self.stats.frame_out(&frame),
            }
            let flow = self.flow.clone();
            self.conn.with(move |c| flow.offer(c, &frame));
        }
        Ok(())
    }

    /// Like [`Session::deliver`], for a fan-out: adds this connection to `fan`
    /// (which sends the frame to all of them, this outbox locked until then), or
    /// holds a copy while a login is being answered. False, doing nothing, while
    /// congested or once closed.
    pub fn deliver_into<'a>(&'a self, fan: &mut FanOut<'a, Outbox>) -> bool {
        if self.is_congested() {
            return false;
        }
        let mut out = self.outbox.lock();
        if out.closed {
            return false;
        }
        if out.holding {
            out.held.push(fan.frame().to_vec());
        } else {
            self.stats.frame_out(fan.frame());
            fan.push(out, self.conn.clone(), self.flow.clone());
        }
        true
    }

    /// Delivers a page of stored frames, congested or not, after any frames the
    /// loop spilled; then sets the congestion flag to `congested` (`None`: leaves
    /// it), in the same step of the loop. If the connection closed, nothing is
    /// sent and the page is returned, for the caller to store again.
    pub fn deliver_page(
        &self,
        page: Vec<Vec<u8>>,
        congested: Option<bool>,
    ) -> Result<(), Vec<Vec<u8>>> {
        let mut out = self.outbox.lock();
        if out.closed {
            return Err(page);
        }
        if out.holding {
            out.held.extend(page);
            if let Some(on) = congested {
                self.set_congested(on);
            }
        } else {
            page.iter().for_each(|f| self.stats.frame_out(f));
            let flow = self.flow.clone();
            // The last page lowers the flag now, under the caller's shard lock: a
            // frame stored after this could otherwise stay behind in the store while
            // newer ones go out live once the loop lowered it.
            let last = congested == Some(false);
            if last {
                flow.begin_final_drain();
            }
            self.conn.with(move |c| {
                let on = congested.unwrap_or_else(|| flow.is_congested());
                flow.drain(c, page, on, last);
            });
        }
        Ok(())
    }

    /// Marks the connection closed (by its IO loop, before the `Closed` job is
    /// queued): from now on every delivery is refused and stored instead.
    pub fn mark_closed(&self) {
        self.outbox.lock().closed = true;
        // Nothing is written any more: queued requests run (their replies go
        // nowhere) so that the `Closed` job behind them is reached.
        let mut s = self.strand.lock();
        s.ungated = true;
        s.parked = false;
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
        let frames: Vec<Vec<u8>> = out.held.drain(..).collect();
        first
            .iter()
            .chain(&frames)
            .for_each(|f| self.stats.frame_out(f));
        if first.is_some() || !frames.is_empty() {
            let flow = self.flow.clone();
            self.conn.with(move |c| flow.force(c, first, frames));
        }
        Ok(())
    }

    /// Queues a job. Returns `(schedule, pause)`: whether the caller must hand the
    /// session to a worker, and whether it must stop reading the connection.
    /// `bytes` is the size of the request frame the job came from (0 for jobs
    /// that did not come from the client).
    pub fn push(&self, job: Job, bytes: usize) -> (bool, bool) {
        let mut s = self.strand.lock();
        s.jobs.push_back((job, bytes));
        s.bytes += bytes;
        // A strand parked on its output is scheduled again when the output drains;
        // one waiting for its routed frames looks again whether the new job may run.
        let schedule = (!s.scheduled && !s.parked) || s.awaiting_routes;
        s.awaiting_routes = false;
        s.scheduled |= schedule;
        let pause = !s.paused && (s.jobs.len() > QUEUE_HIGH || s.bytes > QUEUE_HIGH_BYTES);
        if pause {
            s.paused = true;
        }
        (schedule, pause)
    }

    /// Takes the next job for the worker that owns the session. Returns
    /// `(job, resume)`; with no job left the session is no longer scheduled. Nor
    /// is it while its output is over the high-water mark and the next job is a
    /// client request: the strand parks (`None`) until the output drains
    /// ([`Session::output_drained`]), so what one connection makes the server
    /// hold in replies stays under the mark plus one reply.
    ///
    /// Frames back from the route batcher come first. While frames are still with
    /// it, the strand runs only ONE_CHATs of its user; before any other job it
    /// waits (`None`, still scheduled) until they are back
    /// ([`Session::route_back`]).
    pub fn pop(&self) -> (Option<Job>, bool) {
        let mut s = self.strand.lock();
        let job = if let Some(routed) = s.routed.pop_front() {
            Some(Job::Routed(routed))
        } else if s.routes_out > 0 && !s.runs_beside_routes(self.user().as_ref()) {
            s.awaiting_routes = true;
            None
        } else if s.gated(self.high_water) {
            s.parked = true;
            None
        } else {
            s.jobs.pop_front().map(|(job, bytes)| {
                s.bytes -= bytes;
                job
            })
        };
        if job.is_none() && !s.awaiting_routes {
            s.scheduled = false;
        }
        let resume = s.paused && s.jobs.len() < QUEUE_LOW && s.bytes < QUEUE_LOW_BYTES;
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
        let s = self.strand.lock();
        !s.jobs.is_empty() || !s.routed.is_empty()
    }

    /// Puts `job` first in the queue (a job handed back by the one that ran).
    pub fn push_front(&self, job: Job) {
        self.strand.lock().jobs.push_front((job, 0));
    }

    /// A frame of this strand goes to the route batcher (see [`Session::pop`]).
    pub fn route_out(&self) {
        self.strand.lock().routes_out += 1;
    }

    /// Frames of this strand are with the route batcher, or back and not finished
    /// yet: a frame sent now must not overtake them.
    pub fn routes_out(&self) -> bool {
        let s = self.strand.lock();
        s.routes_out > 0 || !s.routed.is_empty()
    }

    /// A frame came back from the route batcher: it is finished before the next
    /// queued job. True if the caller must hand the session to a worker (it
    /// waited for its frames, or was parked on its output).
    pub fn route_back(&self, routed: Box<Routed>) -> bool {
        let mut s = self.strand.lock();
        s.routed.push_back(routed);
        s.routes_out -= 1;
        let schedule = !s.scheduled || s.awaiting_routes;
        s.awaiting_routes = false;
        s.scheduled = true;
        schedule
    }
}

#[cfg(test)]
pub(crate) mod tests;

//! Route batching: one-to-one frames for users on other nodes go through Redis in
//! batches, one round trip (one Lua script, and with `--redis-wait-replicas` one
//! `WAIT`) per batch instead of per frame.
//!
//! A worker that finds a frame's recipient is not on this node hands the frame
//! here, and the sender's strand goes on with its further ONE_CHATs for other
//! nodes, which queue behind it; any other request of the sender waits until the
//! strand's frames are back (see `Session::pop`), so replies keep the order of
//! the requests and the PING barrier holds. The thread takes whatever is queued
//! when it is free — the first frame wakes it, the rest of the batch is what
//! queued meanwhile; it never waits on a timer for a batch to fill — routes it in
//! one call and hands each frame back to its session in the order it came
//! ([`Session::route_back`]), where a worker finishes it ([`Job::Routed`]) under
//! the recipient's shard lock (stores it for those with no node, or delivers it
//! if the user logged in here meanwhile).
//!
//! Order per sender and recipient: frames enter the streams in the order they
//! were handed over. A frame the bus did not take (no node has its recipient, or
//! the bus failed) is stored later, by a worker; until that is done, and for the
//! frames handed over before it was done (whose senders could not yet see that
//! the recipient's frames are being stored), later frames for the same recipient
//! are not routed but handed back as not taken too, so that they are stored
//! behind it instead of overtaking it live.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use std::collections::HashMap;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;

use crate::bus::{Bus, BusError};
use crate::session::Session;

/// Where the thread hands a routed frame back to its session.
pub type Back = Arc<dyn Fn(Arc<Session>, Box<Routed>) + Send + Sync>;

/// Most frames in one batch: bounds how long one script holds Redis.
const MAX_FRAMES: usize = 1024;
/// Most frame bytes in one batch (beyond the first frame).
const MAX_BYTES: usize = 1024 * 1024;

/// A one-to-one frame waiting for the bus, and what its sender's strand needs to
/// finish the request afterwards.
#[derive(Debug)]
pub struct RouteTicket {
    /// The recipient.
    pub to: i64,
    /// The sender.
    pub from: i64,
    /// The frame's JSON text.
    pub text: String,
    /// The sender's `cid`, when it asked for a confirmation.
    pub cid: Option<i64>,
    /// The frame came back from the IO loop's fast path ([`Job::Route`]), not from a
    /// ONE_CHAT request: it was recorded there, and a failure is only logged.
    pub again: bool,
}

/// A routed frame coming back to its sender's strand.
#[derive(Debug)]
pub struct Routed {
    /// The frame.
    pub ticket: RouteTicket,
    /// The recipients with no node (the worker stores it for them), or why the bus
    /// failed (the worker stores it and marks the recipient for a flush).
    pub result: Result<Vec<i64>, BusError>,
    /// For a frame the bus did not take: holds later frames for its recipient
    /// back from the bus until this one is finished (dropped with it).
    pub unfinished: Option<Unfinished>,
}

/// Recipients of frames the bus did not take, and the hold on later frames for
/// each (see [`Hold`]).
type Untaken = Arc<Mutex<HashMap<i64, Hold>>>;

/// Why frames for one recipient stay off the bus: frames of it the bus did not take
/// and no worker finished yet, and, once they are, the frames handed over before
/// the last one was finished (their senders saw no sign of it when they handed
/// them over: they are stored behind it too).
#[derive(Debug, Default)]
struct Hold {
    unfinished: usize,
    /// Frames handed over with a number below this are held.
    until: u64,
}

/// One frame counted in [`Untaken`] until dropped.
#[derive(Debug)]
pub struct Unfinished {
    untaken: Untaken,
    handed: Arc<AtomicU64>,
    to: i64,
}

impl Unfinished {
    fn new(untaken: &Untaken, handed: &Arc<AtomicU64>, to: i64) -> Unfinished {
        untaken.lock().entry(to).or_default().unfinished += 1;
        Unfinished {
            untaken: untaken.clone(),
            handed: handed.clone(),
            to,
        }
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let mut untaken = self.untaken.lock();
        if let Some(hold) = untaken.get_mut(&self.to) {
            hold.unfinished -= 1;
            hold.until = self.handed.load(Ordering::SeqCst);
        }
    }
}

/// Whether a frame for `to` handed over as number `n` stays off the bus; forgets
/// holds that are over.
fn held(untaken: &mut HashMap<i64, Hold>, to: i64, n: u64) -> bool {
    let Some(hold) = untaken.get(&to) else {
        return false;
    };
    if hold.unfinished > 0 || n < hold.until {
        return true;
    }
    untaken.remove(&to);
    false
}

/// A frame and the session whose strand waits for it.
struct Waiting {
    session: Arc<Session>,
    ticket: RouteTicket,
    /// The order it was handed over in.
    n: u64,
}

/// The batching thread. Dropping it routes what is queued, then stops it.
pub struct RouteBatcher {
    tx: Option<Sender<Waiting>>,
    /// Frames handed over so far (numbers them).
    handed: Arc<AtomicU64>,
    /// Held while numbering and queueing a frame: the queue is in number order.
    handing: Mutex<()>,
    thread: Option<JoinHandle<()>>,
}

impl RouteBatcher {
    /// Starts the thread; routed frames go back to their sessions through `back`.
    pub fn start(bus: Arc<Bus>, back: Back) -> io::Result<RouteBatcher> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let handed = Arc::new(AtomicU64::new(0));
        let counter = handed.clone();
        let thread = thread::Builder::new()
            .name("chat-route".into())
            .spawn(move || run(&bus, &rx, &back, &counter))?;
        Ok(RouteBatcher {
            tx: Some(tx),
            handed,
            handing: Mutex::new(()),
            thread: Some(thread),
        })
    }

    /// Queues a frame; it comes back through the thread's `back`. After
    /// [`RouteBatcher::stop`] the ticket is handed back: the caller routes it itself.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, session: Arc<Session>, ticket: RouteTicket) -> Result<(), RouteTicket> {
        match &self.tx {
            Some(tx) => {
                let _order = self.handing.lock();
                let n = self.handed.fetch_add(1, Ordering::SeqCst);
                tx.send(Waiting { session, ticket, n })
                    .map_err(|e| e.into_inner().ticket)
            }
            None => Err(ticket),
        }
    }

    /// Routes what is queued, hands it back, and stops the thread.
    pub fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RouteBatcher {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Routes `ticket` at once, without the batcher (when it is stopped).
pub fn route_now(bus: Option<&Arc<Bus>>, ticket: RouteTicket) -> Routed {
    let result = match bus {
        Some(bus) => bus.route(&[ticket.to], &ticket.text),
        None => Err(BusError("no bus".into())),
    };
    Routed {
        ticket,
        result,
        unfinished: None,
    }
}

/// The thread: a batch per wake-up, until every sender is gone.
fn run(bus: &Bus, rx: &Receiver<Waiting>, back: &Back, handed: &Arc<AtomicU64>) {
    let untaken: Untaken = Arc::default();
    let mut batch: Vec<Waiting> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut bytes = 0;
        batch.push(first);
        while batch.len() < MAX_FRAMES && bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(w) => {
                    bytes += w.ticket.text.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        // Frames behind an unfinished one for the same recipient stay off the bus.
        let held: Vec<bool> = {
            let mut untaken = untaken.lock();
            batch
                .iter()
                .map(|w| held(&mut untaken, w.ticket.to, w.n))
                .collect()
        };
        let frames: Vec<(&[i64], &str)> = batch
            .iter()
            .zip(&held)
            .filter(|(_, &held)| !held)
            .map(|(w, _)| (std::slice::from_ref(&w.ticket.to), w.ticket.text.as_str()))
            .collect();
        let result = if frames.is_empty() {
            Ok(Vec::new())
        } else {
            bus.route_many(&frames)
        };
        drop(frames);
        // The call's answers, one per frame it carried, in order.
        let mut answers = result.as_ref().map(|missed| missed.iter());
        for (w, held) in batch.drain(..).zip(held) {
            let to = w.ticket.to;
            let result = match (held, &mut answers) {
                (true, _) => Ok(vec![to]),
                (false, Ok(missed)) => Ok(missed.next().cloned().unwrap_or_default()),
                (false, Err(e)) => Err((*e).clone()),
            };
            let taken = result.as_ref().is_ok_and(|missed| missed.is_empty());
            let routed = Routed {
                ticket: w.ticket,
                result,
                unfinished: (!taken).then(|| Unfinished::new(&untaken, handed, to)),
            };
            back(w.session, Box::new(routed));
        }
    }
}

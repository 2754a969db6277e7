//! Route batching: one-to-one frames for users on other nodes go through Redis in
//! batches, one round trip (one Lua script, and with `--redis-wait-replicas` one
//! `WAIT`) per batch instead of per frame.
//!
//! A worker that finds a frame's recipient is not on this node hands the frame
//! here and leaves the sender's strand suspended (as for a password check): the
//! sender's later requests wait until the frame is in the recipient node's stream
//! or stored, exactly as when the worker made the round trip itself, so order per
//! sender and recipient, replies in request order and the PING barrier all hold.
//! The thread takes whatever is queued when it is free — the first frame wakes
//! it, the rest of the batch is what queued meanwhile; it never waits on a timer
//! for a batch to fill — routes it in one call and hands each frame back to the
//! workers ([`Job::Routed`]), which finish it under the recipient's shard lock
//! (store it for those with no node, or deliver it if the user logged in here
//! meanwhile).

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

use crate::bus::{Bus, BusError};
use crate::hasher::Resume;
use crate::session::{Job, Session};

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
    /// The frame was recorded in the history before it was routed (its recipient
    /// was online here when the request was handled).
    pub recorded: bool,
    /// The frame came back from the IO loop's fast path ([`Job::Route`]), not from a
    /// ONE_CHAT request: it is not recorded again, and a failure is only logged.
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
}

/// A frame and the session whose strand waits for it.
struct Waiting {
    session: Arc<Session>,
    ticket: RouteTicket,
}

/// The batching thread. Dropping it routes what is queued, then stops it.
pub struct RouteBatcher {
    tx: Option<Sender<Waiting>>,
    thread: Option<JoinHandle<()>>,
}

impl RouteBatcher {
    /// Starts the thread; routed frames go back to the workers through `resume`.
    pub fn start(bus: Arc<Bus>, resume: Resume) -> io::Result<RouteBatcher> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let thread = thread::Builder::new()
            .name("chat-route".into())
            .spawn(move || run(&bus, &rx, &resume))?;
        Ok(RouteBatcher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a frame whose sender's strand is suspended until it comes back as
    /// [`Job::Routed`]. After [`RouteBatcher::stop`] the ticket is handed back: the
    /// caller routes it itself.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, session: Arc<Session>, ticket: RouteTicket) -> Result<(), RouteTicket> {
        match &self.tx {
            Some(tx) => tx
                .send(Waiting { session, ticket })
                .map_err(|e| e.into_inner().ticket),
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
    Routed { ticket, result }
}

/// The thread: a batch per wake-up, until every sender is gone.
fn run(bus: &Bus, rx: &Receiver<Waiting>, resume: &Resume) {
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
        let frames: Vec<(&[i64], &str)> = batch
            .iter()
            .map(|w| (std::slice::from_ref(&w.ticket.to), w.ticket.text.as_str()))
            .collect();
        let result = bus.route_many(&frames);
        drop(frames);
        for (i, w) in batch.drain(..).enumerate() {
            let result = match &result {
                Ok(missed) => Ok(missed.get(i).cloned().unwrap_or_default()),
                Err(e) => Err(e.clone()),
            };
            let routed = Routed {
                ticket: w.ticket,
                result,
            };
            resume(w.session, Job::Routed(Box::new(routed)));
        }
    }
}

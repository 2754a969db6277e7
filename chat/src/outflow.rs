//! Outflow: the chat frames on their way out of one connection, shared by the
//! workers that deliver them and the IO loop that writes them.
//!
//! The rule it keeps: a frame handed to a connection is written, or kept — never
//! dropped in user space. The output high-water mark is a hard bound for live
//! frames: one that would take the output past it is not appended but *spilled*
//! (kept here, in order), and the connection counts as congested, so later frames
//! are stored instead; the next drain sends the spilled ones first. A frame whose
//! connection closed before the loop got to it is spilled too, and at the close
//! whatever is still in user space (the output buffer and the spilled frames)
//! goes back to the offline store, in order, ahead of newer frames.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use net::{ConnHandle, LoopHandle, TcpConnectionPtr};
use parking_lot::{Mutex, MutexGuard};
use serde_json::Value;

use crate::acks::AckWindow;
use crate::protocol::msgid;

/// One connection's outflow state; the IO loop's send tasks hold it too.
#[derive(Debug)]
pub struct Outflow {
    /// True while live frames must not be appended: the reader is slow (the
    /// output passed the high-water mark), or stored frames are being delivered
    /// page by page and newer ones must queue behind them in the store.
    congested: AtomicBool,
    /// Frames the IO loop did not append (the mark, or a closed connection),
    /// oldest first. Its lock also orders "check congested, then append or
    /// spill" on the loop against the drain's "send the spilled, then clear".
    spilled: Mutex<Vec<Vec<u8>>>,
    /// The output size no live frame may take the buffer past.
    high_water: usize,
    /// Last pages of stored frames queued for the loop but not yet sent. The
    /// worker lowers the congestion flag when it queues the last page (under the
    /// user's shard lock, so nothing can be stored behind that page afterwards);
    /// live frames the loop is offered before that page went out are spilled, to
    /// go out ahead of it (see [`Outflow::offer`]).
    final_drains: AtomicUsize,
    /// The acknowledgement window of a connection that acks what it reads
    /// (`None`: it does not, and frames go out as they are). Locked after the others.
    window: Mutex<Option<AckWindow>>,
}

impl Outflow {
    /// An outflow bounded by `high_water` bytes of output.
    pub fn new(high_water: usize) -> Arc<Outflow> {
        Arc::new(Outflow {
            congested: AtomicBool::new(false),
            spilled: Mutex::new(Vec::new()),
            high_water,
            final_drains: AtomicUsize::new(0),
            window: Mutex::new(None),
        })
    }

    /// Starts acknowledged delivery (at the login, before anything is written):
    /// chat frames from now on carry a seq, the first new one `base`.
    pub fn start_acks(&self, base: u64) {
        let old = self.window.lock().replace(AckWindow::new(base));
        // A login after a LOGINOUT on this connection: the earlier session's
        // frames are not put back (§12), but their Redis records must go.
        if let Some(mut old) = old {
            old.take();
        }
    }

    /// Ends acknowledged delivery (a LOGINOUT): the session's unacknowledged frames
    /// are not put back (§12) and their Redis records go; what the connection gets
    /// next (another user's session, which may not ack) carries no `dseq` and is
    /// not held back by this window. Returns how many frames it dropped.
    pub fn stop_acks(&self) -> usize {
        let old = self.window.lock().take();
        old.map_or(0, |mut w| w.take().len())
    }

    /// Whether the connection acknowledges what it reads.
    pub fn acks(&self) -> bool {
        self.window.lock().is_some()
    }

    /// Stamps chat frames (JSON texts) as written (the offline messages of a
    /// LOGIN_ACK); texts pass unchanged without a window.
    pub fn stamp_texts(&self, texts: Vec<String>) -> Vec<String> {
        let mut w = self.window.lock();
        let Some(w) = w.as_mut() else { return texts };
        texts
            .into_iter()
            .map(|t| String::from_utf8_lossy(&w.stamp(t.as_bytes())).into_owned())
            .collect()
    }

    /// Numbers a frame from another node's stream for this acking connection
    /// ([`AckWindow::reserve`]); `None` if the connection does not ack, its
    /// window has no room for `len` bytes, or live frames go to the store now.
    pub fn reserve(
        &self,
        user: i64,
        records: &Arc<crate::acks::Records>,
        len: usize,
    ) -> Option<u64> {
        if self.is_congested() {
            return None;
        }
        self.window
            .lock()
            .as_mut()
            .and_then(|w| w.reserve(user, records, len))
    }

    /// A cumulative acknowledgement; true if a full window has room again (the
    /// caller then starts a drain of what was stored meanwhile).
    pub fn ack(&self, seq: u64) -> bool {
        self.window.lock().as_mut().is_some_and(|w| w.ack(seq))
    }

    /// True, and noted for the next [`Outflow::ack`], if the window is full.
    pub fn window_blocks(&self) -> bool {
        let mut w = self.window.lock();
        match w.as_mut() {
            Some(w) if w.is_full() => {
                w.block();
                true
            }
            _ => false,
        }
    }

    /// The unacknowledged frames' texts (with their seqs), oldest first, taken.
    pub fn take_unacked(&self) -> Vec<String> {
        self.window
            .lock()
            .as_mut()
            .map_or_else(Vec::new, AckWindow::take)
    }

    /// Writes one chat frame (wire bytes) to `c`, stamped if the connection acks.
    fn write(&self, c: &TcpConnectionPtr, frame: &[u8]) {
        let mut w = self.window.lock();
        match w.as_mut() {
            Some(w) => {
                let text = frame.strip_suffix(&[0]).unwrap_or(frame);
                let mut stamped = w.stamp(text);
                stamped.push(0);
                c.send(&stamped);
            }
            None => {
                drop(w);
                // A frame put back by an acking session, now for one that is not.
                let text = frame.strip_suffix(&[0]).unwrap_or(frame);
                match crate::acks::strip_seq(text) {
                    Some(mut plain) => {
                        plain.push(0);
                        c.send(&plain);
                    }
                    None => c.send(frame),
                }
            }
        }
    }

    /// Whether live frames go to the store rather than to the connection.
    pub fn is_congested(&self) -> bool {
        self.congested.load(Ordering::Acquire)
    }

    /// Raises or clears the congestion flag (from a worker).
    pub fn set_congested(&self, on: bool) {
        self.congested.store(on, Ordering::Release);
    }

    /// Takes the spilled frames (at a close, once no send can be on its way).
    pub fn take_spilled(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.spilled.lock())
    }

    /// Puts taken spilled frames back, ahead of any spilled since.
    pub fn respill(&self, frames: Vec<Vec<u8>>) {
        let mut spilled = self.spilled.lock();
        let newer = std::mem::replace(&mut *spilled, frames);
        spilled.extend(newer);
    }

    /// From a worker, under the user's shard lock, as it queues the last page of
    /// stored frames: live frames may flow again, and any the loop is offered
    /// before that page is sent go out ahead of it (see [`Outflow::offer`]).
    pub fn begin_final_drain(&self) {
        self.final_drains.fetch_add(1, Ordering::AcqRel);
        self.set_congested(false);
    }

    /// On the loop: appends a live frame to `conn`'s output if the connection is
    /// not congested and the frame fits under the mark (an empty output takes any
    /// frame); otherwise spills it and marks the connection congested. While a
    /// last page of stored frames is on its way, spills it without the mark.
    pub fn offer(&self, conn: Option<&TcpConnectionPtr>, frame: &[u8]) {
        let mut spilled = self.spilled.lock();
        if self.final_drains.load(Ordering::Acquire) > 0 {
            // A last page is queued on this loop, not sent yet. This frame was
            // queued before it: a delivery and the page's queueing both take the
            // session's outbox lock, so a frame delivered after the worker queued
            // the page is offered after it. So this frame is older than the page
            // (it went live before the flag was raised, and the page holds frames
            // stored after that) and younger than the frames spilled so far: it
            // joins them, and the page's drain sends it ahead of the page. (Kept
            // until after the page instead, it came after frames stored later
            // than it: tests/outflow_order.rs.)
            spilled.push(frame.to_vec());
            return;
        }
        match conn {
            Some(c) => {
                let out = c.output_bytes();
                let fits = out == 0 || out + frame.len() <= self.high_water;
                // A full ack window holds frames back like the mark, but the
                // connection keeps being read: the ACK that makes room comes in.
                let waits = self.window_blocks();
                if !self.is_congested() && fits && !waits {
                    drop(spilled);
                    self.write(c, frame);
                } else {
                    if !self.congested.swap(true, Ordering::AcqRel) {
                        log::debug!("{}: output at its mark; storing new frames", c.name());
                    }
                    spilled.push(frame.to_vec());
                    if !waits {
                        // Its own requests would only add replies: read when it drained.
                        c.stop_read();
                    }
                }
            }
            None => spilled.push(frame.to_vec()),
        }
    }

    /// On the loop: appends frames that must go out whatever the mark: `first`
    /// (a LOGIN_ACK, not a chat frame), then `frames` (held chat frames), or
    /// spills them if the connection closed. An acking connection's spilled
    /// LOGIN_ACK is left out: its offline messages are in the window already.
    pub fn force(
        &self,
        conn: Option<&TcpConnectionPtr>,
        first: Option<Vec<u8>>,
        frames: Vec<Vec<u8>>,
    ) {
        match conn {
            Some(c) => {
                if let Some(f) = first {
                    c.send(&f);
                }
                frames.iter().for_each(|f| self.write(c, f));
            }
            None => {
                let first = first.filter(|_| !self.acks());
                self.spilled.lock().extend(first.into_iter().chain(frames));
            }
        }
    }

    /// On the loop: a page of stored frames after the spilled ones, then the flag
    /// set to `congested` — all in one step of the loop, so no live frame can slip
    /// between (one that was spilled meanwhile went out first, in order; one that
    /// comes after sees the new flag). For a last page (`last`: the worker already
    /// lowered the flag with [`Outflow::begin_final_drain`]) the flag is left alone.
    pub fn drain(
        &self,
        conn: Option<&TcpConnectionPtr>,
        page: Vec<Vec<u8>>,
        congested: bool,
        last: bool,
    ) {
        let mut spilled = self.spilled.lock();
        if last {
            self.final_drains.fetch_sub(1, Ordering::AcqRel);
        }
        match conn {
            Some(c) => {
                for f in spilled.drain(..).chain(page) {
                    self.write(c, &f);
                }
                if !last {
                    self.set_congested(congested);
                }
            }
            None => spilled.extend(page),
        }
    }
}

/// Connections to send one frame to, with their outflows.
type Targets = Vec<(ConnHandle, Arc<Outflow>)>;

/// A group frame's fan-out: the connections it goes to, sent with one task per
/// loop. It holds the recipients' outbox locks until it is sent, so that a
/// connection closing meanwhile sees the frame queued before its close (and then
/// keeps it) rather than after.
pub struct FanOut<'a, T> {
    frame: Arc<[u8]>,
    guards: Vec<MutexGuard<'a, T>>,
    targets: Targets,
}

impl<'a, T> FanOut<'a, T> {
    /// An empty fan-out of `frame`.
    pub fn new(frame: Arc<[u8]>) -> FanOut<'a, T> {
        FanOut {
            frame,
            guards: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// The frame's bytes.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }

    /// Adds a connection, keeping its outbox locked until [`FanOut::send`].
    pub fn push(&mut self, guard: MutexGuard<'a, T>, conn: ConnHandle, flow: Arc<Outflow>) {
        self.guards.push(guard);
        self.targets.push((conn, flow));
    }

    /// How many connections it goes to.
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// True if it goes nowhere.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Queues the frame on every target's loop (one task per loop), then unlocks.
    pub fn send(self) {
        let mut by_loop: Vec<(LoopHandle, Targets)> = Vec::new();
        for (conn, flow) in self.targets {
            match by_loop
                .iter_mut()
                .find(|(lh, _)| lh.same_loop(conn.loop_handle()))
            {
                Some((_, v)) => v.push((conn, flow)),
                None => by_loop.push((conn.loop_handle().clone(), vec![(conn, flow)])),
            }
        }
        for (lh, targets) in by_loop {
            let frame = self.frame.clone();
            lh.run_in_loop(move |lp| {
                for (conn, flow) in targets {
                    flow.offer(conn.get(lp).as_ref(), &frame);
                }
            });
        }
        drop(self.guards);
    }
}

/// The chat frames (JSON text, no NUL) among bytes and frames that were never
/// written to a closed connection, in order: ONE_CHAT and GROUP_CHAT frames, and
/// the offline messages of an unsent LOGIN_ACK. Replies are not kept. The first
/// piece of `unsent` can be the tail of a frame the kernel already took part of;
/// it does not parse and counts as written.
pub fn undelivered(unsent: &[u8], spilled: &[Vec<u8>]) -> Vec<String> {
    let pieces = unsent
        .split(|&b| b == 0)
        .chain(spilled.iter().map(|f| f.strip_suffix(&[0]).unwrap_or(f)));
    let mut texts = Vec::new();
    for piece in pieces.filter(|p| !p.is_empty()) {
        let Ok(v) = serde_json::from_slice::<Value>(piece) else {
            continue;
        };
        match v.get("msgid").and_then(Value::as_i64) {
            Some(msgid::ONE_CHAT | msgid::GROUP_CHAT) => {
                texts.push(String::from_utf8_lossy(piece).into_owned());
            }
            Some(msgid::LOGIN_ACK) => {
                let offline = v.get("offlinemsg").and_then(Value::as_array);
                texts.extend(
                    offline
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m.as_str().map(str::to_owned)),
                );
            }
            _ => {}
        }
    }
    texts
}

#[cfg(test)]
mod tests {
    use super::undelivered;

    #[test]
    fn keeps_chats_in_order_and_skips_a_torn_head() {
        let unsent = b"msg\":\"torn\",\"msgid\":6}\0{\"msgid\":14}\0{\"id\":1,\"msgid\":6}\0\
            {\"errno\":0,\"id\":2,\"msgid\":2,\"offlinemsg\":[\"{\\\"msgid\\\":6,\\\"n\\\":1}\"]}\0";
        let spilled = vec![b"{\"groupid\":3,\"msgid\":10}\0".to_vec()];
        assert_eq!(
            undelivered(unsent, &spilled),
            [
                r#"{"id":1,"msgid":6}"#,
                r#"{"msgid":6,"n":1}"#,
                r#"{"groupid":3,"msgid":10}"#
            ]
        );
        assert!(undelivered(b"", &[]).is_empty());
    }
}

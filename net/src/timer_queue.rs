//! TimerQueue: the loop's timers, driven by the poll timeout (internal).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::callbacks::TimerCallback;
use crate::event_loop::EventLoop;

/// Identifies a timer for [`cancel`](crate::LoopHandle::cancel). Unique per loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

struct Timer {
    callback: TimerCallback,
    interval: Option<Duration>,
}

/// A min-heap of expirations plus a map of live timers; cancelled timers are
/// simply removed from the map and their heap entries skipped when they surface.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, TimerId)>>,
    timers: HashMap<TimerId, Timer>,
    /// Timers cancelled while their own callback runs (repeating ones must not be re-armed).
    cancelled_while_running: HashSet<TimerId>,
    running: Option<TimerId>,
}

impl TimerQueue {
    pub(crate) fn add(
        &mut self,
        id: TimerId,
        when: Instant,
        interval: Option<Duration>,
        callback: TimerCallback,
    ) {
        self.timers.insert(id, Timer { callback, interval });
        self.heap.push(Reverse((when, id)));
    }

    pub(crate) fn cancel(&mut self, id: TimerId) {
        if self.timers.remove(&id).is_none() && self.running == Some(id) {
            self.cancelled_while_running.insert(id);
        }
    }

    /// How long the poller may sleep before the earliest live timer is due.
    pub(crate) fn next_timeout(&mut self, now: Instant) -> Option<Duration> {
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if self.timers.contains_key(&id) {
                return Some(when.saturating_duration_since(now));
            }
            self.heap.pop();
        }
        None
    }

    /// Pops one expired timer, if any, handing out its callback; the caller runs it
    /// and then calls [`TimerQueue::finish`].
    pub(crate) fn pop_expired(
        &mut self,
        now: Instant,
    ) -> Option<(TimerId, Instant, Option<Duration>, TimerCallback)> {
        while let Some(Reverse((when, id))) = self.heap.peek().copied() {
            if when > now {
                return None;
            }
            self.heap.pop();
            if let Some(timer) = self.timers.remove(&id) {
                self.running = Some(id);
                return Some((id, when, timer.interval, timer.callback));
            }
        }
        None
    }

    /// Re-arms a repeating timer after its callback ran, unless it was cancelled meanwhile.
    pub(crate) fn finish(
        &mut self,
        id: TimerId,
        when: Instant,
        interval: Option<Duration>,
        callback: TimerCallback,
        now: Instant,
    ) {
        self.running = None;
        if self.cancelled_while_running.remove(&id) {
            return;
        }
        if let Some(interval) = interval {
            // Keep the period's phase unless we fell behind by more than a period.
            let mut next = when + interval;
            if next <= now {
                next = now + interval;
            }
            self.add(id, next, Some(interval), callback);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.timers.len()
    }
}

/// Runs every timer that is due, on the loop thread.
pub(crate) fn run_expired(lp: &EventLoop) {
    let now = Instant::now();
    loop {
        let Some((id, when, interval, mut cb)) = lp.timers().borrow_mut().pop_expired(now) else {
            break;
        };
        cb(lp);
        lp.timers()
            .borrow_mut()
            .finish(id, when, interval, cb, Instant::now());
    }
}

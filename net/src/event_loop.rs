//! EventLoop: the reactor, at most one per thread; LoopHandle: its thread-safe face.

use std::cell::{Cell, RefCell};
use std::io;
use std::marker::PhantomData;
use std::rc::{Rc, Weak};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use mio::event::Source;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use crate::callbacks::{Task, TcpConnectionPtr, TimerCallback, WriteCompleteCallback};
use crate::channel::Channel;
use crate::timer_queue::{self, TimerId, TimerQueue};

/// The waker's token: outside the slab's range, never handed to a channel.
const WAKER_TOKEN: Token = Token(usize::MAX);
/// How many readiness events one `poll` call may return.
const EVENTS_CAPACITY: usize = 1024;

thread_local! {
    /// The loop living on this thread, if any: enforces one loop per thread and lets
    /// `LoopHandle::run_in_loop` run a task at once when called on the loop thread.
    static CURRENT: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

/// What a slab slot holds: connections are kept typed so that a `ConnHandle` can
/// find them again; everything else only needs its events.
pub(crate) enum Slot {
    Connection(TcpConnectionPtr),
    Other(Rc<dyn Channel>),
}

/// The part of a loop that other threads may touch.
pub(crate) struct Shared {
    /// Tasks queued for the loop thread; swapped out under the lock and run unlocked.
    pending: Mutex<Vec<Task>>,
    /// Wakes `poll` from another thread; never read by the loop (mio's rule).
    waker: Waker,
    /// The thread that owns the loop.
    thread: ThreadId,
    quit: AtomicBool,
    /// True while the loop runs pending tasks: a task the loop thread queues then
    /// must not run at once, ahead of those still to run.
    calling_pending: AtomicBool,
    /// True from just before the loop's last look at `pending` until its poll
    /// returns. Only then does a queued task need the waker: a running loop looks at
    /// `pending` again before it polls, so a task queued meanwhile costs no `write`
    /// to the waker and no extra `epoll_wait` (one of each per cross-thread send).
    polling: AtomicBool,
    /// False once the loop is dropped: tasks queued after that are discarded.
    alive: AtomicBool,
    /// Timer ids are handed out here so that other threads get one at once.
    next_timer: AtomicU64,
}

pub(crate) struct Inner {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    slab: RefCell<Slab>,
    timers: RefCell<TimerQueue>,
    shared: Arc<Shared>,
    looping: Cell<bool>,
    /// Polls done so far ([`EventLoop::iteration`]).
    iteration: Cell<u64>,
    /// Loop-thread work that needs no `Send` (it holds `Rc`s): deferred work such as
    /// a read continuation or a write-complete callback, run with the pending tasks.
    deferred: RefCell<Vec<Deferred>>,
    /// Emptied vectors kept for the next iteration's swaps: taking a queue leaves
    /// one of these in its place, so a busy loop does not allocate a queue per
    /// iteration (nor grow it again from nothing).
    spare_deferred: RefCell<Vec<Deferred>>,
    spare_pending: RefCell<Vec<Task>>,
    spare_unflushed: RefCell<Vec<TcpConnectionPtr>>,
    /// True from the end of `poll` until the iteration's writes are flushed: sends
    /// made meanwhile are appended to their connection's output and written once at
    /// the end, so a connection sent several frames in one iteration (a member of
    /// several busy groups) costs one `write` instead of one per frame.
    corked: Cell<bool>,
    /// Connections with output appended while corked, written at the end of the iteration.
    unflushed: RefCell<Vec<TcpConnectionPtr>>,
}

/// A task queued on the loop thread itself.
type LocalTask = Box<dyn FnOnce(&EventLoop)>;

/// Work deferred on the loop thread.
enum Deferred {
    Task(LocalTask),
    /// A connection's write-complete callback: queued for every completed write
    /// (every delivered frame), so it is queued without a box.
    WriteComplete(TcpConnectionPtr, WriteCompleteCallback),
}

/// A spare queue longer than this is dropped rather than kept (a burst is over).
const SPARE_MAX: usize = 4096;

/// Swaps `queue` for the empty `spare` and returns what `queue` held.
fn take_queue<T>(queue: &mut Vec<T>, spare: &RefCell<Vec<T>>) -> Vec<T> {
    let mut taken = spare.take();
    std::mem::swap(queue, &mut taken);
    taken
}

/// Gives a drained queue back as the next spare, unless it grew past [`SPARE_MAX`].
fn keep_spare<T>(drained: Vec<T>, spare: &RefCell<Vec<T>>) {
    debug_assert!(drained.is_empty());
    if drained.capacity() <= SPARE_MAX {
        *spare.borrow_mut() = drained;
    }
}

/// A reactor: waits for readiness with `mio::Poll`, dispatches it to the
/// acceptor, connections and connectors registered on it, runs due timers and
/// then the tasks other threads queued.
///
/// At most one per thread: creating a second on the same thread panics. It is
/// neither `Send` nor `Sync`; other threads use its [`LoopHandle`]. Cloning an
/// `EventLoop` gives another reference to the same loop, on the same thread.
#[derive(Clone)]
pub struct EventLoop {
    inner: Rc<Inner>,
    _not_send: PhantomData<*const ()>,
}

/// The handle other threads hold to talk to a loop: `Send + Sync + Clone`.
/// Every method is safe to call from any thread.
#[derive(Clone)]
pub struct LoopHandle {
    shared: Arc<Shared>,
}

impl EventLoop {
    /// Creates the loop of the calling thread.
    ///
    /// # Panics
    /// If this thread already has a live loop.
    pub fn new() -> io::Result<EventLoop> {
        CURRENT.with(|cur| {
            assert!(
                cur.borrow().upgrade().is_none(),
                "another EventLoop exists in this thread"
            );
            let poll = Poll::new()?;
            let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
            let inner = Rc::new(Inner {
                poll: RefCell::new(poll),
                events: RefCell::new(Events::with_capacity(EVENTS_CAPACITY)),
                slab: RefCell::new(Slab::default()),
                timers: RefCell::new(TimerQueue::default()),
                shared: Arc::new(Shared {
                    pending: Mutex::new(Vec::new()),
                    waker,
                    thread: thread::current().id(),
                    quit: AtomicBool::new(false),
                    calling_pending: AtomicBool::new(false),
                    polling: AtomicBool::new(false),
                    alive: AtomicBool::new(true),
                    next_timer: AtomicU64::new(1),
                }),
                looping: Cell::new(false),
                iteration: Cell::new(0),
                corked: Cell::new(false),
                unflushed: RefCell::new(Vec::new()),
                deferred: RefCell::new(Vec::new()),
                spare_deferred: RefCell::new(Vec::new()),
                spare_pending: RefCell::new(Vec::new()),
                spare_unflushed: RefCell::new(Vec::new()),
            });
            *cur.borrow_mut() = Rc::downgrade(&inner);
            Ok(EventLoop {
                inner,
                _not_send: PhantomData,
            })
        })
    }

    /// The loop of the calling thread, if it has one.
    pub fn current() -> Option<EventLoop> {
        CURRENT
            .with(|cur| cur.borrow().upgrade())
            .map(|inner| EventLoop {
                inner,
                _not_send: PhantomData,
            })
    }

    /// The handle for other threads. Must be called on the loop thread.
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            shared: self.inner.shared.clone(),
        }
    }

    /// Runs until [`quit`](LoopHandle::quit). Must be called on the loop thread.
    pub fn run(&self) {
        assert!(!self.inner.looping.get(), "EventLoop::run is not reentrant");
        self.inner.looping.set(true);
        log::trace!("EventLoop {:?} start looping", self.inner.shared.thread);
        while !self.inner.shared.quit.load(Ordering::Acquire) {
            let mut timeout = if self.inner.deferred.borrow().is_empty() {
                self.inner.timers.borrow_mut().next_timeout(Instant::now())
            } else {
                Some(Duration::ZERO)
            };
            // Pairs with the fence in `queue_in_loop`: either this look finds the
            // task, or its sender finds `polling` set and wakes the poll.
            let shared = &self.inner.shared;
            shared.polling.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !shared.pending.lock().is_empty() {
                timeout = Some(Duration::ZERO);
            }
            let mut events = self.inner.events.borrow_mut();
            if let Err(e) = self.inner.poll.borrow_mut().poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("poll failed: {e}");
                }
            }
            shared.polling.store(false, Ordering::Release);
            self.inner.iteration.set(self.inner.iteration.get() + 1);
            self.inner.corked.set(true);
            for event in events.iter() {
                if event.token() == WAKER_TOKEN {
                    continue;
                }
                let channel = match self.inner.slab.borrow().get(event.token().0) {
                    Some(Slot::Connection(c)) => c.clone() as Rc<dyn Channel>,
                    Some(Slot::Other(c)) => c.clone(),
                    None => continue, // a stale or spurious event: mio allows both
                };
                channel.handle_event(self, event);
            }
            drop(events);
            timer_queue::run_expired(self);
            self.do_pending_functors();
            self.flush_corked();
            // The write-complete callbacks of that flush run now rather than after
            // a poll that could not block (one `epoll_wait` less per busy
            // iteration); other deferred work waits for the next iteration as before.
            self.run_write_completes();
        }
        self.inner.shared.quit.store(false, Ordering::Release);
        self.inner.looping.set(false);
        log::trace!("EventLoop {:?} stop looping", self.inner.shared.thread);
    }

    /// How many times the loop has polled (muduo's `iteration()`): what it does
    /// between two polls is one iteration. Must be called on the loop thread.
    pub fn iteration(&self) -> u64 {
        self.inner.iteration.get()
    }

    /// Asks the loop to stop after the current iteration. Must be called on the loop thread.
    pub fn quit(&self) {
        self.handle().quit();
    }

    /// Runs `task` now (we are on the loop thread). Must be called on the loop thread.
    pub fn run_in_loop(&self, task: impl FnOnce(&EventLoop)) {
        task(self)
    }

    /// Runs `task` after the current events are handled. Must be called on the loop thread.
    pub fn queue_in_loop(&self, task: impl FnOnce(&EventLoop) + Send + 'static) {
        self.handle().queue_in_loop(task)
    }

    /// Runs `cb` once at `when`. Must be called on the loop thread.
    pub fn run_at(&self, when: Instant, cb: impl FnMut(&EventLoop) + 'static) -> TimerId {
        let id = self.inner.shared.new_timer_id();
        self.add_timer(id, when, None, Box::new(cb));
        id
    }

    /// Runs `cb` once after `delay`. Must be called on the loop thread.
    pub fn run_after(&self, delay: Duration, cb: impl FnMut(&EventLoop) + 'static) -> TimerId {
        self.run_at(Instant::now() + delay, cb)
    }

    /// Runs `cb` every `interval`, first after one interval. Must be called on the loop thread.
    pub fn run_every(&self, interval: Duration, cb: impl FnMut(&EventLoop) + 'static) -> TimerId {
        let id = self.inner.shared.new_timer_id();
        self.add_timer(id, Instant::now() + interval, Some(interval), Box::new(cb));
        id
    }

    /// Cancels a timer; a no-op if it already ran or was cancelled. Must be called on the loop thread.
    pub fn cancel(&self, id: TimerId) {
        self.inner.timers.borrow_mut().cancel(id);
    }

    /// Number of live timers. Must be called on the loop thread.
    pub fn timer_count(&self) -> usize {
        self.inner.timers.borrow().len()
    }

    /// Number of registered sockets (connections, acceptors, connectors). Must be called on the loop thread.
    pub fn channel_count(&self) -> usize {
        self.inner.slab.borrow().len
    }

    /// Looks up a live connection by slot and connection id. Must be called on the loop thread.
    pub fn connection(&self, token: usize, id: u64) -> Option<TcpConnectionPtr> {
        match self.inner.slab.borrow().get(token) {
            Some(Slot::Connection(c)) if c.id() == id => Some(c.clone()),
            _ => None,
        }
    }

    pub(crate) fn add_timer(
        &self,
        id: TimerId,
        when: Instant,
        interval: Option<Duration>,
        cb: TimerCallback,
    ) {
        self.inner.timers.borrow_mut().add(id, when, interval, cb);
    }

    pub(crate) fn timers(&self) -> &RefCell<TimerQueue> {
        &self.inner.timers
    }

    /// Registers `source` and puts `make(token)` in the slab; rolls the slot back if
    /// registration fails.
    pub(crate) fn register<S: Source + ?Sized>(
        &self,
        source: &mut S,
        interest: Interest,
        make: impl FnOnce(Token) -> Slot,
    ) -> io::Result<Token> {
        let token = Token(self.inner.slab.borrow_mut().vacant());
        self.inner
            .poll
            .borrow()
            .registry()
            .register(source, token, interest)?;
        self.inner.slab.borrow_mut().insert(token.0, make(token));
        Ok(token)
    }

    /// Deregisters `source` and frees its slot.
    pub(crate) fn deregister<S: Source + ?Sized>(&self, token: Token, source: &mut S) {
        if let Err(e) = self.inner.poll.borrow().registry().deregister(source) {
            log::debug!("deregister {token:?}: {e}");
        }
        // Dropped after the borrow ends, in case dropping runs more loop code.
        let slot = self.inner.slab.borrow_mut().remove(token.0);
        drop(slot);
    }

    fn do_pending_functors(&self) {
        let shared = &self.inner.shared;
        shared.calling_pending.store(true, Ordering::Release);
        let mut tasks = take_queue(&mut shared.pending.lock(), &self.inner.spare_pending);
        for task in tasks.drain(..) {
            task(self);
        }
        keep_spare(tasks, &self.inner.spare_pending);
        let mut deferred = take_queue(
            &mut self.inner.deferred.borrow_mut(),
            &self.inner.spare_deferred,
        );
        for d in deferred.drain(..) {
            match d {
                Deferred::Task(task) => task(self),
                Deferred::WriteComplete(conn, cb) => cb(&conn),
            }
        }
        keep_spare(deferred, &self.inner.spare_deferred);
        shared.calling_pending.store(false, Ordering::Release);
    }

    /// Runs the write-complete callbacks deferred so far (in order) and keeps the
    /// other deferred work, in its order, for the next iteration. Whatever they
    /// send is written at once (the loop is no longer corked).
    fn run_write_completes(&self) {
        let deferred = &self.inner.deferred;
        if !deferred
            .borrow()
            .iter()
            .any(|d| matches!(d, Deferred::WriteComplete(..)))
        {
            return;
        }
        let shared = &self.inner.shared;
        shared.calling_pending.store(true, Ordering::Release);
        let mut taken = take_queue(&mut deferred.borrow_mut(), &self.inner.spare_deferred);
        let mut kept = Vec::new();
        for d in taken.drain(..) {
            match d {
                Deferred::WriteComplete(conn, cb) => cb(&conn),
                task => kept.push(task),
            }
        }
        keep_spare(taken, &self.inner.spare_deferred);
        if !kept.is_empty() {
            // Ahead of what the callbacks deferred: the order it was deferred in.
            let mut deferred = deferred.borrow_mut();
            kept.append(&mut deferred);
            *deferred = kept;
        }
        shared.calling_pending.store(false, Ordering::Release);
    }

    /// Writes out what connections were sent during this iteration, one `write`
    /// sequence per connection, and ends the cork.
    fn flush_corked(&self) {
        self.inner.corked.set(false);
        let mut conns = take_queue(
            &mut self.inner.unflushed.borrow_mut(),
            &self.inner.spare_unflushed,
        );
        for conn in conns.drain(..) {
            conn.flush_output();
        }
        keep_spare(conns, &self.inner.spare_unflushed);
    }

    /// While the loop is corked (handling an iteration's events, timers and tasks),
    /// takes `conn` to be written at the end of the iteration and returns true; else
    /// returns false and the caller writes now. Must be called on the loop thread.
    pub(crate) fn cork(&self, conn: &TcpConnectionPtr) -> bool {
        if !self.inner.corked.get() {
            return false;
        }
        self.inner.unflushed.borrow_mut().push(conn.clone());
        true
    }

    /// Runs `task` on this thread after the current events, without the `Send`
    /// bound of [`EventLoop::queue_in_loop`]; the next poll does not block while such
    /// tasks wait. Must be called on the loop thread.
    pub(crate) fn defer(&self, task: impl FnOnce(&EventLoop) + 'static) {
        self.inner
            .deferred
            .borrow_mut()
            .push(Deferred::Task(Box::new(task)));
    }

    /// Defers `conn`'s write-complete callback `cb` like [`EventLoop::defer`], without
    /// allocating; it runs at the end of the iteration that completed the write.
    pub(crate) fn defer_write_complete(&self, conn: TcpConnectionPtr, cb: WriteCompleteCallback) {
        self.inner
            .deferred
            .borrow_mut()
            .push(Deferred::WriteComplete(conn, cb));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.alive.store(false, Ordering::Release);
        let tasks = std::mem::take(&mut *self.shared.pending.lock());
        drop(tasks);
        let slab = std::mem::take(&mut *self.slab.borrow_mut());
        drop(slab);
        self.deferred.borrow_mut().clear();
    }
}

impl Shared {
    fn new_timer_id(&self) -> TimerId {
        TimerId(self.next_timer.fetch_add(1, Ordering::Relaxed))
    }
}

impl LoopHandle {
    /// True when called on the loop's own thread.
    pub fn is_in_loop_thread(&self) -> bool {
        thread::current().id() == self.shared.thread
    }

    /// True when both handles name the same loop.
    pub fn same_loop(&self, other: &LoopHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// False once the loop has been dropped; tasks sent to it are then discarded.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// Runs `task` on the loop thread: at once when called there and no queued task
    /// is waiting, otherwise queued. A task never overtakes one queued before it, so
    /// work handed over by other threads (say, sends to a connection) keeps its order
    /// with work the loop thread adds itself.
    pub fn run_in_loop(&self, task: impl FnOnce(&EventLoop) + Send + 'static) {
        if self.is_in_loop_thread()
            && !self.shared.calling_pending.load(Ordering::Acquire)
            && self.shared.pending.lock().is_empty()
        {
            if let Some(lp) = EventLoop::current() {
                task(&lp);
            }
        } else {
            self.queue_in_loop(task);
        }
    }

    /// Queues `task` for the loop thread, to run after the current events. Wakes the
    /// loop only if it is blocked in (or about to enter) its poll; a running loop finds
    /// the task before it polls again.
    pub fn queue_in_loop(&self, task: impl FnOnce(&EventLoop) + Send + 'static) {
        if !self.is_alive() {
            return;
        }
        let was_empty = {
            let mut pending = self.shared.pending.lock();
            let was_empty = pending.is_empty();
            pending.push(Box::new(task));
            was_empty
        };
        // A non-empty queue means whoever queued first owes (or already gave) the
        // wake-up, and the loop drains everything it finds in one swap. A loop that
        // is not polling looks at the queue before it polls again (see `polling`).
        fence(Ordering::SeqCst);
        if was_empty && self.shared.polling.load(Ordering::SeqCst) {
            self.wakeup();
        }
    }

    /// Runs `task` on the loop once everything sent on its connections before this
    /// call has been written out — handed to the kernel, or buffered for a socket
    /// that cannot take more. Sends queued earlier run first and the loop flushes
    /// coalesced writes at the end of each iteration, so the task runs in the next
    /// one. Safe to call from any thread.
    pub fn queue_after_writes(&self, task: impl FnOnce(&EventLoop) + Send + 'static) {
        self.queue_in_loop(move |lp| lp.handle().queue_in_loop(task));
    }

    /// Asks the loop to stop after its current iteration.
    pub fn quit(&self) {
        self.shared.quit.store(true, Ordering::Release);
        if !self.is_in_loop_thread() {
            self.wakeup();
        }
    }

    /// Runs `cb` once at `when`, on the loop thread.
    pub fn run_at(&self, when: Instant, cb: impl FnMut(&EventLoop) + Send + 'static) -> TimerId {
        let id = self.shared.new_timer_id();
        self.run_in_loop(move |lp| lp.add_timer(id, when, None, Box::new(cb)));
        id
    }

    /// Runs `cb` once after `delay`, on the loop thread.
    pub fn run_after(
        &self,
        delay: Duration,
        cb: impl FnMut(&EventLoop) + Send + 'static,
    ) -> TimerId {
        self.run_at(Instant::now() + delay, cb)
    }

    /// Runs `cb` every `interval` on the loop thread, first after one interval.
    pub fn run_every(
        &self,
        interval: Duration,
        cb: impl FnMut(&EventLoop) + Send + 'static,
    ) -> TimerId {
        let id = self.shared.new_timer_id();
        let when = Instant::now() + interval;
        self.run_in_loop(move |lp| lp.add_timer(id, when, Some(interval), Box::new(cb)));
        id
    }

    /// Cancels a timer; a no-op if it already ran or was cancelled.
    pub fn cancel(&self, id: TimerId) {
        self.run_in_loop(move |lp| lp.cancel(id));
    }

    fn wakeup(&self) {
        if let Err(e) = self.shared.waker.wake() {
            log::error!("EventLoop wakeup failed: {e}");
        }
    }
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle")
            .field("thread", &self.shared.thread)
            .finish()
    }
}

/// A vector of slots with a free list: tokens are indices, reused after removal.
#[derive(Default)]
pub(crate) struct Slab {
    entries: Vec<Option<Slot>>,
    free: Vec<usize>,
    len: usize,
}

impl Slab {
    /// The index the next insert will use.
    fn vacant(&mut self) -> usize {
        if let Some(&i) = self.free.last() {
            i
        } else {
            self.entries.push(None);
            self.free.push(self.entries.len() - 1);
            self.entries.len() - 1
        }
    }

    fn insert(&mut self, index: usize, slot: Slot) {
        let pos = self.free.iter().rposition(|&i| i == index);
        debug_assert!(pos.is_some(), "slot {index} is not vacant");
        if let Some(pos) = pos {
            self.free.swap_remove(pos);
        }
        self.entries[index] = Some(slot);
        self.len += 1;
    }

    fn get(&self, index: usize) -> Option<&Slot> {
        self.entries.get(index).and_then(Option::as_ref)
    }

    fn remove(&mut self, index: usize) -> Option<Slot> {
        let slot = self.entries.get_mut(index).and_then(Option::take);
        if slot.is_some() {
            self.len -= 1;
            self.free.push(index);
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn one_loop_per_thread() {
        let lp = EventLoop::new().unwrap();
        let second = std::panic::catch_unwind(|| EventLoop::new().map(|_| ()));
        assert!(second.is_err(), "a second loop on one thread must panic");
        drop(lp);
        // Once the first is gone the thread may have a new one.
        let _again = EventLoop::new().unwrap();
        // Another thread has its own.
        thread::spawn(|| {
            let _other = EventLoop::new().unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn timers_fire_in_order_and_cancel() {
        let lp = EventLoop::new().unwrap();
        let log = Rc::new(RefCell::new(Vec::new()));
        for (name, ms) in [("c", 30u64), ("a", 10), ("b", 20)] {
            let log = log.clone();
            lp.run_after(Duration::from_millis(ms), move |_| {
                log.borrow_mut().push(name)
            });
        }
        let cancelled = {
            let log = log.clone();
            lp.run_after(Duration::from_millis(15), move |_| {
                log.borrow_mut().push("x")
            })
        };
        lp.cancel(cancelled);
        let ticks = Rc::new(Cell::new(0));
        let t = ticks.clone();
        let every = lp.run_every(Duration::from_millis(5), move |_| t.set(t.get() + 1));
        lp.run_after(Duration::from_millis(60), move |lp| {
            lp.cancel(every);
            lp.quit();
        });
        let start = Instant::now();
        lp.run();
        assert!(start.elapsed() >= Duration::from_millis(60));
        assert_eq!(*log.borrow(), vec!["a", "b", "c"]);
        let n = ticks.get();
        assert!((3..=12).contains(&n), "repeating timer ticked {n} times");
        assert_eq!(lp.timer_count(), 0);
    }

    #[test]
    fn repeating_timer_cancels_itself() {
        let lp = EventLoop::new().unwrap();
        let count = Rc::new(Cell::new(0));
        let id = Rc::new(Cell::new(None::<TimerId>));
        let (c, i) = (count.clone(), id.clone());
        let timer = lp.run_every(Duration::from_millis(1), move |lp| {
            c.set(c.get() + 1);
            if c.get() == 3 {
                lp.cancel(i.get().unwrap());
            }
        });
        id.set(Some(timer));
        lp.run_after(Duration::from_millis(30), |lp| lp.quit());
        lp.run();
        assert_eq!(count.get(), 3);
    }

    #[test]
    fn queue_and_timers_from_another_thread() {
        let lp = EventLoop::new().unwrap();
        let handle = lp.handle();
        let (tx, rx) = mpsc::channel();
        let worker = thread::spawn(move || {
            assert!(!handle.is_in_loop_thread());
            let tx2 = tx.clone();
            handle.run_in_loop(move |lp| {
                tx2.send(("task", EventLoop::current().is_some())).unwrap();
                // Queued while pending tasks run: must still run without a new event.
                let tx3 = tx2.clone();
                lp.queue_in_loop(move |_| tx3.send(("nested", true)).unwrap());
            });
            let id = handle.run_after(Duration::from_millis(5), |_| panic!("cancelled"));
            handle.cancel(id);
            handle.run_after(Duration::from_millis(10), move |lp| {
                tx.send(("timer", true)).unwrap();
                lp.quit();
            });
        });
        lp.run();
        worker.join().unwrap();
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got, vec![("task", true), ("nested", true), ("timer", true)]);
    }

    /// A task from another thread is never left waiting for an unrelated event
    /// (here there are none: no sockets, no timers): whether the loop is busy, about
    /// to poll or blocked in its poll when the task comes, it runs. Each round waits
    /// for its task with a deadline, so a lost wake-up fails the test.
    #[test]
    fn cross_thread_tasks_never_miss_a_wake_up() {
        let lp = EventLoop::new().unwrap();
        let handle = lp.handle();
        let worker = thread::spawn(move || {
            let (tx, rx) = mpsc::channel();
            let mut lost = None;
            for i in 0..20_000u32 {
                let tx = tx.clone();
                // Some tasks keep the loop busy for a moment, so the next one often
                // comes while it runs or just before it polls.
                handle.queue_in_loop(move |_| {
                    if i % 3 == 0 {
                        std::hint::black_box((0..i % 500).sum::<u32>());
                    }
                    let _ = tx.send(i);
                });
                if rx.recv_timeout(Duration::from_secs(5)) != Ok(i) {
                    lost = Some(i);
                    break;
                }
            }
            // `quit` always wakes the loop, so a failure ends the test too.
            handle.quit();
            lost
        });
        lp.run();
        let lost = worker.join().unwrap();
        assert_eq!(lost, None, "a task did not run within 5 s: a lost wake-up");
    }

    #[test]
    fn tasks_to_a_dropped_loop_are_discarded() {
        let lp = EventLoop::new().unwrap();
        let handle = lp.handle();
        drop(lp);
        assert!(!handle.is_alive());
        handle.queue_in_loop(|_| panic!("must not run"));
    }
}

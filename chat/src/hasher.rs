//! Hasher: the password-hashing threads, behind a queue that is fair between peer
//! addresses, so that a flood of LOGINs from some addresses cannot keep another
//! address's login waiting behind it.
//!
//! The rule it keeps: the next free thread serves the peer addresses with work in
//! turn (round robin), and while some address's check waits, no address has more
//! than `per_peer` hashes running. When no one else waits, an address may use every
//! thread (work-conserving: one busy address, e.g. a load balancer in front of the
//! node, keeps the whole throughput). Within one address checks run in arrival
//! order; a connection has at most one queued (its later requests wait behind its
//! LOGIN, see `session`), so that order is also round robin between connections.
//! Nothing here runs on an IO loop or on a worker: workers hand checks over and go
//! on with other sessions.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use crate::password;
use crate::session::{Job, PasswordCheck, Session};

/// The hasher's settings.
#[derive(Debug, Clone)]
pub struct HasherConfig {
    /// Hashing threads (0: one per core).
    pub threads: usize,
    /// Hashes one peer address may have running while another address's check waits
    /// (at least 1).
    pub per_peer: usize,
}

impl Default for HasherConfig {
    fn default() -> Self {
        HasherConfig {
            threads: 0,
            per_peer: 1,
        }
    }
}

/// Where a finished check goes: back to the workers, at the front of its session.
pub type Resume = Arc<dyn Fn(Arc<Session>, Job) + Send + Sync>;

/// A queued check.
struct Task {
    session: Arc<Session>,
    check: PasswordCheck,
}

/// One peer address's checks.
#[derive(Default)]
struct Peer {
    waiting: VecDeque<Task>,
    running: usize,
}

/// The fair queue.
#[derive(Default)]
struct Queue {
    peers: HashMap<IpAddr, Peer>,
    /// Addresses with waiting checks, each once, in turn order.
    turns: VecDeque<IpAddr>,
    stopping: bool,
}

impl Queue {
    /// The next check to run: the first address in turn under its cap, or, when every
    /// waiting address is at its cap, the first in turn (no thread idles while work waits).
    fn take(&mut self, per_peer: usize) -> Option<(IpAddr, Task)> {
        let peers = &self.peers;
        let pos = self
            .turns
            .iter()
            .position(|a| peers.get(a).is_some_and(|p| p.running < per_peer))
            .or(if self.turns.is_empty() { None } else { Some(0) })?;
        let addr = self.turns.remove(pos)?;
        let peer = self.peers.get_mut(&addr)?;
        let task = peer.waiting.pop_front()?;
        peer.running += 1;
        if !peer.waiting.is_empty() {
            self.turns.push_back(addr);
        }
        Some((addr, task))
    }

    fn done(&mut self, addr: IpAddr) {
        if let Some(peer) = self.peers.get_mut(&addr) {
            peer.running -= 1;
            if peer.running == 0 && peer.waiting.is_empty() {
                self.peers.remove(&addr);
            }
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    per_peer: usize,
    resume: Resume,
}

/// The hashing threads. Safe to share; [`Hasher::stop`] joins them.
pub struct Hasher {
    shared: Arc<Shared>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Hasher {
    /// Starts the threads; each finished check is handed to `resume`.
    pub fn start(cfg: &HasherConfig, resume: Resume) -> io::Result<Hasher> {
        let n = if cfg.threads == 0 {
            thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            per_peer: cfg.per_peer.max(1),
            resume,
        });
        let threads = (0..n)
            .map(|i| {
                let shared = shared.clone();
                thread::Builder::new()
                    .name(format!("chat-hasher{i}"))
                    .spawn(move || run(&shared))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Hasher {
            shared,
            threads: parking_lot::Mutex::new(threads),
        })
    }

    /// Queues `check` for `session`, whose strand waits for it. Safe to call from any thread.
    pub fn submit(&self, session: Arc<Session>, check: PasswordCheck) {
        let addr = session.peer.ip();
        let mut q = lock(&self.shared.queue);
        let peer = q.peers.entry(addr).or_default();
        peer.waiting.push_back(Task { session, check });
        if peer.waiting.len() == 1 {
            q.turns.push_back(addr);
        }
        drop(q);
        self.shared.ready.notify_one();
    }

    /// Stops the threads after their current check; queued checks are dropped.
    pub fn stop(&self) {
        lock(&self.shared.queue).stopping = true;
        self.shared.ready.notify_all();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock(m: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A hashing thread: takes the next fair check, runs it, hands the session back.
fn run(shared: &Shared) {
    loop {
        let (addr, task) = {
            let mut q = lock(&shared.queue);
            loop {
                if q.stopping {
                    return;
                }
                if let Some(next) = q.take(shared.per_peer) {
                    break next;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        let Task { session, check } = task;
        let stored = check.row.as_ref().map(|r| r.password.as_str());
        let verified = std::panic::catch_unwind(|| password::verify_login(stored, &check.password))
            .unwrap_or(password::Verified::Mismatch);
        lock(&shared.queue).done(addr);
        // A thread freed: an address that was at its cap may go now.
        shared.ready.notify_one();
        (shared.resume)(session, Job::Checked(check, verified));
    }
}

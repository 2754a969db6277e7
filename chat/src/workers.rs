//! Workers: the pool that runs sessions' jobs — database and Redis round trips —
//! so that no IO loop ever blocks. A LOGIN's password check goes on to the hasher
//! (its own threads, fair between peer addresses): the session's strand waits for
//! it while the worker serves other sessions.

use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};
use parking_lot::RwLock;

use crate::hasher::{Hasher, HasherConfig};
use crate::route_batch::{self, RouteBatcher};
use crate::service::ChatService;
use crate::session::{Job, Session, Suspended};

/// How a worker yields a busy session: after this many jobs it goes to the back
/// of the queue so other sessions get their turn.
const JOBS_PER_TURN: usize = 32;

/// What workers take from their queue.
enum Work {
    /// Run this session's jobs.
    Run(Arc<Session>),
    /// Run this job of the session (a finished password check) first, then its queue.
    Resume(Arc<Session>, Job),
    /// Exit.
    Stop,
}

/// A cheap, cloneable way to hand a session's job to the pool. Safe from any thread.
#[derive(Clone)]
pub struct Submitter {
    tx: Sender<Work>,
}

impl Submitter {
    /// Queues `job` on the session's strand and schedules the session if no worker
    /// owns it. Returns true when the strand is now over its high mark, so the
    /// caller (the IO loop) must stop reading the connection.
    pub fn submit(&self, session: &Arc<Session>, job: Job) -> bool {
        self.submit_frame(session, job, 0)
    }

    /// [`Submitter::submit`] for a job made from a request frame of `bytes` bytes:
    /// the strand's high mark counts bytes as well as jobs.
    pub fn submit_frame(&self, session: &Arc<Session>, job: Job, bytes: usize) -> bool {
        let (schedule, pause) = session.push(job, bytes);
        if schedule {
            let _ = self.tx.send(Work::Run(session.clone()));
        }
        pause
    }

    /// Hands a session whose strand was parked on its output back to a worker
    /// (after [`Session::output_drained`] said so).
    pub fn wake(&self, session: &Arc<Session>) {
        let _ = self.tx.send(Work::Run(session.clone()));
    }

    /// Sessions waiting for a worker (the depth of the pool's queue).
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }
}

/// The worker threads and the hasher. Dropping stops them after their current job.
pub struct WorkerPool {
    submitter: Submitter,
    threads: Vec<JoinHandle<()>>,
    hasher: Arc<Hasher>,
    /// In cluster mode; `None` once stopped.
    batcher: Arc<RwLock<Option<RouteBatcher>>>,
}

/// Where a worker passes what a job handed over ([`Suspended`]).
#[derive(Clone)]
struct Handoff {
    hasher: Arc<Hasher>,
    batcher: Arc<RwLock<Option<RouteBatcher>>>,
}

impl Handoff {
    /// Passes `work` on. Returns true if the strand goes on with its next job (a
    /// frame went to the route batcher, or a job waits for the frames there),
    /// false if it waits for the work to come back (a password check).
    fn pass(&self, service: &ChatService, session: &Arc<Session>, work: Suspended) -> bool {
        let ticket = match work {
            Suspended::Password(check) => {
                self.hasher.submit(session.clone(), check);
                return false;
            }
            Suspended::Later(job) => {
                session.push_front(job);
                return true;
            }
            Suspended::Route(ticket) => ticket,
        };
        session.route_out();
        // While the batcher stops, this waits: what it held is back first.
        let refused = match self.batcher.read().as_ref() {
            Some(b) => match b.submit(session.clone(), ticket) {
                Ok(()) => return true,
                Err(ticket) => ticket,
            },
            None => ticket,
        };
        let routed = route_batch::route_now(service.bus(), refused);
        // This worker owns the strand: nobody else is to be told.
        let _ = session.route_back(Box::new(routed));
        true
    }
}

impl WorkerPool {
    /// Starts `n` (at least one) workers running jobs through `service`, and the
    /// hasher. `on_resume` runs when a paused session's queue drains below its low mark.
    pub fn start(
        n: usize,
        hashing: &HasherConfig,
        service: Arc<ChatService>,
        on_resume: fn(&Session),
    ) -> io::Result<WorkerPool> {
        let (tx, rx) = crossbeam_channel::unbounded::<Work>();
        let back = tx.clone();
        let hasher = Hasher::start(
            hashing,
            Arc::new(move |session, job| {
                let _ = back.send(Work::Resume(session, job));
            }),
        )?;
        let hasher = Arc::new(hasher);
        let batcher = match service.bus() {
            Some(bus) => {
                let back = tx.clone();
                let back: route_batch::Back = Arc::new(move |session: Arc<Session>, routed| {
                    if session.route_back(routed) {
                        let _ = back.send(Work::Run(session));
                    }
                });
                Some(RouteBatcher::start(bus.clone(), back)?)
            }
            None => None,
        };
        let batcher = Arc::new(RwLock::new(batcher));
        let handoff = Handoff {
            hasher: hasher.clone(),
            batcher: batcher.clone(),
        };
        let threads = (0..n.max(1))
            .map(|i| {
                let rx = rx.clone();
                let tx = tx.clone();
                let service = service.clone();
                let handoff = handoff.clone();
                thread::Builder::new()
                    .name(format!("chat-worker{i}"))
                    .spawn(move || worker(&service, &handoff, &rx, &tx, on_resume))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(WorkerPool {
            submitter: Submitter { tx },
            threads,
            hasher,
            batcher,
        })
    }

    /// The handle for queueing jobs.
    pub fn submitter(&self) -> &Submitter {
        &self.submitter
    }

    /// Stops the hasher (checks still queued are dropped: the server is going) and
    /// the route batcher (what it holds is routed and handed back first; later
    /// frames are routed by the workers themselves), then the workers (after the
    /// jobs queued before this call), and joins them.
    pub fn stop(&mut self) {
        self.hasher.stop();
        // Stopped under the lock: a worker routing a frame meanwhile waits until
        // every frame the batcher held is back, so that its own comes after them.
        let mut batcher = self.batcher.write();
        if let Some(mut b) = batcher.take() {
            b.stop();
        }
        drop(batcher);
        for _ in &self.threads {
            let _ = self.submitter.tx.send(Work::Stop);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A worker: takes sessions that have work and runs their jobs, a turn at a time.
fn worker(
    service: &ChatService,
    handoff: &Handoff,
    rx: &Receiver<Work>,
    tx: &Sender<Work>,
    on_resume: fn(&Session),
) {
    loop {
        let (session, mut first) = match rx.recv() {
            Ok(Work::Run(session)) => (session, None),
            Ok(Work::Resume(session, job)) => (session, Some(job)),
            Ok(Work::Stop) | Err(_) => return,
        };
        let mut done = 0;
        loop {
            let job = match first.take() {
                Some(job) => job,
                None => {
                    let (job, resume) = session.pop();
                    if resume {
                        on_resume(&session);
                    }
                    let Some(job) = job else { break };
                    job
                }
            };
            // A panicking handler must not take the worker, or the session's strand
            // (left scheduled forever), with it.
            let run = std::panic::AssertUnwindSafe(|| service.run_job(&session, job));
            if std::panic::catch_unwind(run).is_err() {
                log::error!(
                    "a job of connection {} panicked; it was dropped",
                    session.id()
                );
            }
            if let Some(work) = session.take_suspended() {
                // For a password check the strand stays scheduled: the hasher hands
                // the session back (Work::Resume) and only then do its later jobs run.
                if !handoff.pass(service, &session, work) {
                    break;
                }
            }
            done += 1;
            if done >= JOBS_PER_TURN && session.has_jobs() {
                // Still scheduled: requeue at the back so other sessions run too.
                let _ = tx.send(Work::Run(session.clone()));
                break;
            }
        }
    }
}

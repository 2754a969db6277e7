//! EventLoopThread: a thread running one loop; EventLoopThreadPool: N of them, round robin.

use std::cell::Cell;
use std::io;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

use crate::callbacks::ThreadInitCallback;
use crate::event_loop::{EventLoop, LoopHandle};

/// A thread that creates an [`EventLoop`], runs the init callback on it, then runs
/// it until dropped. Dropping quits the loop and joins the thread.
pub struct EventLoopThread {
    handle: LoopHandle,
    thread: Option<JoinHandle<()>>,
}

impl EventLoopThread {
    /// Spawns the thread and waits until its loop exists. Safe to call from any thread.
    pub fn start(name: String, init: Option<ThreadInitCallback>) -> io::Result<EventLoopThread> {
        let (tx, rx) = mpsc::channel();
        let thread = thread::Builder::new().name(name).spawn(move || {
            let lp = match EventLoop::new() {
                Ok(lp) => lp,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            if let Some(init) = init {
                init(&lp);
            }
            let _ = tx.send(Ok(lp.handle()));
            lp.run();
        })?;
        let handle = rx
            .recv()
            .map_err(|_| io::Error::other("event loop thread died during start"))??;
        Ok(EventLoopThread {
            handle,
            thread: Some(thread),
        })
    }

    /// The handle of this thread's loop.
    pub fn handle(&self) -> &LoopHandle {
        &self.handle
    }
}

impl Drop for EventLoopThread {
    fn drop(&mut self) {
        self.handle.quit();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The IO loops of a server: `next_loop` hands them out round robin. With zero
/// threads everything runs on the base loop. Lives on the base loop's thread.
pub struct EventLoopThreadPool {
    base: LoopHandle,
    name: String,
    num_threads: usize,
    threads: Vec<EventLoopThread>,
    loops: Vec<LoopHandle>,
    next: Cell<usize>,
}

impl EventLoopThreadPool {
    /// A pool around `base`. Must be called on the base loop thread.
    pub fn new(base: &EventLoop, name: impl Into<String>) -> EventLoopThreadPool {
        EventLoopThreadPool {
            base: base.handle(),
            name: name.into(),
            num_threads: 0,
            threads: Vec::new(),
            loops: Vec::new(),
            next: Cell::new(0),
        }
    }

    /// Sets how many IO threads `start` spawns. Must be called before `start`.
    pub fn set_thread_num(&mut self, n: usize) {
        self.num_threads = n;
    }

    /// Spawns the threads, running `init` on each new loop (on the base loop when
    /// there are no threads). Must be called on the base loop thread.
    pub fn start(&mut self, base: &EventLoop, init: Option<ThreadInitCallback>) -> io::Result<()> {
        for i in 0..self.num_threads {
            let t = EventLoopThread::start(format!("{}{}", self.name, i), init.clone())?;
            self.loops.push(t.handle().clone());
            self.threads.push(t);
        }
        if self.num_threads == 0 {
            if let Some(init) = init {
                init(base);
            }
        }
        Ok(())
    }

    /// The next IO loop, round robin; the base loop when there are no threads.
    /// Must be called on the base loop thread.
    pub fn next_loop(&self) -> LoopHandle {
        if self.loops.is_empty() {
            return self.base.clone();
        }
        let i = self.next.get();
        self.next.set((i + 1) % self.loops.len());
        self.loops[i].clone()
    }

    /// Every IO loop (just the base loop when there are no threads).
    pub fn all_loops(&self) -> Vec<LoopHandle> {
        if self.loops.is_empty() {
            vec![self.base.clone()]
        } else {
            self.loops.clone()
        }
    }
}

//! EventLoop and LoopHandle threading behaviour that unit tests cannot see.

mod util;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use net::{EventLoop, EventLoopThreadPool};
use util::TIMEOUT;

/// A task queued on the loop thread before `run` must run without waiting for an
/// unrelated event, and must not keep later tasks from other threads waiting.
#[test]
fn tasks_queued_before_run_are_not_stranded() {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let lp = EventLoop::new().unwrap();
        let tx2 = tx.clone();
        lp.queue_in_loop(move |_| tx2.send("early").unwrap());
        let handle = lp.handle();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            handle.run_in_loop(move |lp| {
                tx.send("late").unwrap();
                lp.quit();
            });
        });
        lp.run();
    });
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("early"));
    assert_eq!(rx.recv_timeout(TIMEOUT), Ok("late"));
    t.join().unwrap();
}

/// The pool hands its loops out round robin, and each runs on its own thread.
#[test]
fn pool_hands_out_loops_round_robin() {
    let lp = EventLoop::new().unwrap();
    let mut pool = EventLoopThreadPool::new(&lp, "pool");
    pool.set_thread_num(3);
    pool.start(&lp, None).unwrap();
    let (tx, rx) = mpsc::channel();
    for i in 0..6 {
        let tx = tx.clone();
        pool.next_loop()
            .run_in_loop(move |_| tx.send((i, thread::current().id())).unwrap());
    }
    let mut got: Vec<_> = (0..6).map(|_| rx.recv_timeout(TIMEOUT).unwrap()).collect();
    got.sort_by_key(|&(i, _)| i);
    for i in 0..3 {
        assert_eq!(got[i].1, got[i + 3].1, "loop {i} not reused in turn");
        assert_ne!(got[i].1, thread::current().id());
    }
    assert_ne!(got[0].1, got[1].1);
    assert_ne!(got[1].1, got[2].1);
    assert_eq!(pool.all_loops().len(), 3);
}

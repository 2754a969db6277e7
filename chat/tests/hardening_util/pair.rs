//! A well-behaved pair of users chatting in the background while a test abuses the
//! server: one message at a time, each timed from the write to its arrival, each
//! checked to be the next one in order.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::Latencies;
use crate::util::User;

/// The background chat; [`Pair::stop`] returns its latencies.
pub struct Pair {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
    handle: Option<JoinHandle<Latencies>>,
}

impl Pair {
    /// `a` and `b` take turns sending to each other every `pace`. The thread panics
    /// (failing [`Pair::stop`]) if a message does not arrive within the client's
    /// timeout, or arrives out of order.
    pub fn start(mut a: User, mut b: User, pace: Duration) -> Pair {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicUsize::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let handle = thread::Builder::new()
            .name("good-pair".into())
            .spawn(move || {
                let mut lat = Latencies::default();
                let mut i = 0u64;
                while !s.load(Ordering::Acquire) {
                    let (from, to) = if i.is_multiple_of(2) {
                        (&mut a, &mut b)
                    } else {
                        (&mut b, &mut a)
                    };
                    let text = format!("pair {i}");
                    let t = Instant::now();
                    from.chat(to.id, &text);
                    let got = to.c.expect_msgid(6);
                    assert_eq!(
                        got["msg"],
                        text.as_str(),
                        "the pair's messages out of order"
                    );
                    lat.push(t.elapsed());
                    r.fetch_add(1, Ordering::Release);
                    i += 1;
                    thread::sleep(pace);
                }
                a.c.expect_quiet();
                b.c.expect_quiet();
                lat
            })
            .expect("spawn the pair thread");
        Pair {
            stop,
            rounds,
            handle: Some(handle),
        }
    }

    /// Messages delivered so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(Ordering::Acquire)
    }

    /// Stops the pair; panics if its thread failed.
    pub fn stop(mut self) -> Latencies {
        self.stop.store(true, Ordering::Release);
        match self.handle.take().expect("joined once").join() {
            Ok(lat) => lat,
            Err(_) => panic!("the well-behaved pair failed (see its panic above)"),
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

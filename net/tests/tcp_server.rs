//! TcpServer and TcpConnection over real sockets on 127.0.0.1.

mod util;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use net::{ConnHandle, EventLoop};
use util::{
    assert_echo, check_pattern, connect, echo, pattern, raise_fd_limit, read_to_eof, start_server,
    wait_until, TIMEOUT,
};

/// 1,000 connections at once over 4 IO loops: every byte comes back, the loops
/// share the connections round robin, and all are counted down at the end.
#[test]
fn echo_1000_connections_over_4_loops() {
    const CONNS: usize = 1000;
    const CLIENT_THREADS: usize = 4;
    const ROUNDS: usize = 3;
    let limit = raise_fd_limit();
    assert!(
        limit >= 2 * CONNS as libc::rlim_t + 100,
        "RLIMIT_NOFILE hard limit {limit} is too low for {CONNS} connections"
    );
    // Which IO thread each connection landed on.
    let threads_seen = Arc::new(Mutex::new(HashMap::<thread::ThreadId, usize>::new()));
    let seen = threads_seen.clone();
    let server = start_server(4, move |s| {
        echo(s);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                *seen
                    .lock()
                    .unwrap()
                    .entry(thread::current().id())
                    .or_default() += 1;
            }
        }));
    });
    let addr = server.addr;
    let clients: Vec<_> = (0..CLIENT_THREADS)
        .map(|t| {
            thread::spawn(move || {
                let per = CONNS / CLIENT_THREADS;
                let mut socks: Vec<_> = (0..per).map(|_| connect(addr)).collect();
                for round in 0..ROUNDS {
                    // Write to every connection first, then read every echo back,
                    // so all of them are in flight at once.
                    let msgs: Vec<Vec<u8>> = (0..per)
                        .map(|i| {
                            let id = t * per + i;
                            let len = 1 + (id * 7 + round * 13) % 2000;
                            pattern(id + round, len)
                        })
                        .collect();
                    for (s, m) in socks.iter_mut().zip(&msgs) {
                        s.write_all(m).unwrap();
                    }
                    for (s, m) in socks.iter_mut().zip(&msgs) {
                        let mut got = vec![0; m.len()];
                        s.read_exact(&mut got).unwrap();
                        assert_eq!(&got, m, "echo differs");
                    }
                }
                socks
            })
        })
        .collect();
    let socks: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert_eq!(socks.len(), CONNS);
    assert!(wait_until(TIMEOUT, || server.connection_count() == CONNS));
    {
        let seen = threads_seen.lock().unwrap();
        assert_eq!(
            seen.len(),
            4,
            "connections spread over {} loops",
            seen.len()
        );
        assert!(seen.values().all(|&n| n == CONNS / 4), "{seen:?}");
    }
    drop(socks);
    assert!(
        wait_until(TIMEOUT, || server.connection_count() == 0),
        "{} connections left",
        server.connection_count()
    );
}

/// A 64 MiB send to a reader that starts late and reads in small pieces arrives
/// intact; write-complete and the 1 MiB high-water mark each fire exactly once.
#[test]
fn big_send_to_slow_reader() {
    const TOTAL: usize = 64 * 1024 * 1024;
    const MARK: usize = 1024 * 1024;
    let write_complete = Arc::new(AtomicUsize::new(0));
    let high_water = Arc::new(AtomicUsize::new(0));
    let high_water_size = Arc::new(AtomicUsize::new(0));
    let (wc, hw, hws) = (
        write_complete.clone(),
        high_water.clone(),
        high_water_size.clone(),
    );
    let payload = pattern(0, TOTAL);
    let (loop_tx, loop_rx) = mpsc::channel();
    let server = start_server(1, move |s| {
        let loop_tx = Mutex::new(loop_tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                let _ = loop_tx.lock().unwrap().send(conn.loop_handle().clone());
                conn.send(&payload);
            }
        }));
        s.set_write_complete_callback(Arc::new(move |_| {
            wc.fetch_add(1, Ordering::SeqCst);
        }));
        s.set_high_water_mark_callback(
            Arc::new(move |_, size| {
                hw.fetch_add(1, Ordering::SeqCst);
                hws.store(size, Ordering::SeqCst);
            }),
            MARK,
        );
    });
    let mut s = connect(server.addr);
    // The server fills the socket buffers and queues the rest, crossing the mark.
    assert!(wait_until(TIMEOUT, || high_water.load(Ordering::SeqCst) > 0));
    assert_eq!(
        write_complete.load(Ordering::SeqCst),
        0,
        "write completed before the reader read anything"
    );
    assert!(high_water_size.load(Ordering::SeqCst) >= MARK);
    let mut received = 0;
    let mut buf = vec![0; 16 * 1024];
    let mut next_pause = 0;
    while received < TOTAL {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "EOF after {received} bytes");
        check_pattern(received, &buf[..n])
            .unwrap_or_else(|bad| panic!("corrupt byte at offset {bad}"));
        received += n;
        if received >= next_pause {
            // Slow down now and then so the server keeps a backlog.
            thread::sleep(Duration::from_millis(5));
            next_pause += 4 * 1024 * 1024;
        }
    }
    assert_eq!(received, TOTAL);
    assert!(wait_until(TIMEOUT, || write_complete
        .load(Ordering::SeqCst)
        >= 1));
    // A duplicate would be queued by now: the loop goes round twice more first.
    let conn_loop = loop_rx.recv_timeout(TIMEOUT).expect("no connection");
    util::loop_turns(&conn_loop, 2);
    assert_eq!(write_complete.load(Ordering::SeqCst), 1);
    assert_eq!(high_water.load(Ordering::SeqCst), 1);
}

/// Each echo's write-complete callback runs in the loop iteration that wrote the echo
/// (after the end-of-iteration flush), not after another, non-blocking poll; and a
/// send made from the callback goes out.
#[test]
fn write_complete_runs_in_the_iteration_that_wrote() {
    // (iteration of the read, iteration of the echo's write-complete) per message.
    let turns = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let t = turns.clone();
    let server = start_server(1, move |s| {
        s.set_message_callback(Arc::new(|conn, buf| {
            let lp = EventLoop::current().expect("on the loop");
            conn.set_context(Some(lp.iteration()));
            let data = buf.retrieve_all_as_vec();
            conn.send(&data);
        }));
        s.set_write_complete_callback(Arc::new(move |conn| {
            let now = EventLoop::current().expect("on the loop").iteration();
            // The echo's completion, not the "+"'s.
            if let Some(read) = conn.with_context(|r: &mut Option<u64>| r.take()).flatten() {
                t.lock().unwrap().push((read, now));
                conn.send(b"+");
            }
        }));
    });
    let mut s = connect(server.addr);
    for i in 0..20u8 {
        s.write_all(&[b'a' + i]).unwrap();
        let mut got = [0u8; 2];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, [b'a' + i, b'+']);
    }
    let turns = turns.lock().unwrap();
    assert_eq!(turns.len(), 20, "{turns:?}");
    assert!(
        turns.iter().all(|(read, wrote)| read == wrote),
        "a write-complete ran in a later iteration than its write: {turns:?}"
    );
}

/// The server sends N bytes then shuts down its writing half: the client gets
/// every byte, then EOF, and the server still reads what the client sends after.
#[test]
fn half_close_delivers_everything_then_eof() {
    const N: usize = 3 * 1024 * 1024 + 17;
    let (tx, rx) = mpsc::channel();
    let server = start_server(1, move |s| {
        s.set_connection_callback(Arc::new(|conn| {
            if conn.connected() {
                conn.send(&pattern(0, N));
                conn.shutdown();
                // Sending after shutdown is dropped, not interleaved after the FIN.
                conn.send(b"too late");
            }
        }));
        let tx = Mutex::new(tx);
        s.set_message_callback(Arc::new(move |_, buf| {
            tx.lock().unwrap().send(buf.retrieve_all_as_vec()).unwrap();
        }));
    });
    let mut s = connect(server.addr);
    let got = read_to_eof(&mut s).expect("read to EOF");
    assert_eq!(got.len(), N);
    check_pattern(0, &got).unwrap();
    // Our half is still open: the server keeps reading.
    s.write_all(b"after eof").unwrap();
    let mut heard = Vec::new();
    while heard.len() < 9 {
        heard.extend(rx.recv_timeout(TIMEOUT).expect("server read nothing"));
    }
    assert_eq!(heard, b"after eof");
    drop(s);
    assert!(wait_until(TIMEOUT, || server.connection_count() == 0));
}

/// Small sends made while the loop handles an event are held and written together
/// at the end of the iteration; a large send queues behind them, and a shutdown
/// waits for all of it: the peer reads every byte in order, then EOF.
#[test]
fn small_sends_in_one_iteration_are_coalesced_in_order() {
    let (tx, rx) = mpsc::channel();
    let server = start_server(1, move |s| {
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                let mut expected = Vec::new();
                for i in 0..100 {
                    let line = format!("small {i}\n");
                    conn.send(line.as_bytes());
                    expected.extend_from_slice(line.as_bytes());
                }
                // Nothing written yet: the hundred lines wait for one flush.
                let held = conn.output_bytes();
                let big = pattern(7, 200_000);
                conn.send(&big);
                expected.extend_from_slice(&big);
                conn.send(b"tail\n");
                expected.extend_from_slice(b"tail\n");
                conn.shutdown();
                tx.lock().unwrap().send((held, expected)).unwrap();
            }
        }));
    });
    let mut s = connect(server.addr);
    let (held, expected) = rx.recv_timeout(TIMEOUT).expect("no connection");
    let got = read_to_eof(&mut s).expect("read to EOF");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "bytes differ from what was sent, in order");
    let small: usize = (0..100).map(|i| format!("small {i}\n").len()).sum();
    assert_eq!(held, small, "small sends were written one by one");
}

/// Corked bytes count against the high-water mark only if the socket does not take
/// them at the flush; a force_close discards what is still corked.
#[test]
fn corked_bytes_and_the_high_water_mark_and_force_close() {
    let crossings = Arc::new(AtomicUsize::new(0));
    let seen = crossings.clone();
    let (loop_tx, loop_rx) = mpsc::channel();
    let server = start_server(1, move |s| {
        let loop_tx = Mutex::new(loop_tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                let _ = loop_tx.lock().unwrap().send(conn.loop_handle().clone());
            }
        }));
        s.set_high_water_mark_callback(
            Arc::new(move |_, _| {
                seen.fetch_add(1, Ordering::SeqCst);
            }),
            1024,
        );
        s.set_message_callback(Arc::new(|conn, buf| {
            let cmd = buf.retrieve_all_as_vec();
            // 8 KiB in small pieces, far above the mark, all taken by the socket.
            for _ in 0..64 {
                conn.send(&[b'x'; 128]);
            }
            if cmd == b"close" {
                conn.force_close();
            }
        }));
    });
    let mut s = connect(server.addr);
    s.write_all(b"send").unwrap();
    let mut got = vec![0u8; 64 * 128];
    s.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|&b| b == b'x'));
    // High-water callbacks are queued: a crossing would have run after two more turns.
    let conn_loop = loop_rx.recv_timeout(TIMEOUT).expect("no connection");
    util::loop_turns(&conn_loop, 2);
    assert_eq!(
        crossings.load(Ordering::SeqCst),
        0,
        "the socket took it all"
    );

    s.write_all(b"close").unwrap();
    let rest = read_to_eof(&mut s).expect("read to EOF");
    assert!(
        rest.is_empty(),
        "force_close wrote {} corked bytes",
        rest.len()
    );
}

/// Eight threads send through clones of one ConnHandle: each thread's messages
/// arrive complete and in its own order.
#[test]
fn foreign_threads_keep_their_order() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 2000;
    let (tx, rx) = mpsc::channel::<ConnHandle>();
    let server = start_server(2, move |s| {
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                tx.lock().unwrap().send(conn.handle()).unwrap();
            }
        }));
    });
    let s = connect(server.addr);
    let handle = rx.recv_timeout(TIMEOUT).expect("no connection");
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = handle.clone();
            thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    handle.send(format!("{t} {seq}\n"));
                    if seq % 256 == 0 {
                        thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut next = [0usize; THREADS];
    let mut lines = BufReader::new(s);
    let mut line = String::new();
    for _ in 0..THREADS * PER_THREAD {
        line.clear();
        lines.read_line(&mut line).expect("read line");
        let mut it = line.split_whitespace().map(|x| x.parse::<usize>().unwrap());
        let (t, seq) = (it.next().unwrap(), it.next().unwrap());
        assert_eq!(seq, next[t], "thread {t} out of order");
        next[t] += 1;
    }
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(next, [PER_THREAD; THREADS]);
}

/// `quit` from another thread stops a loop that is blocked in poll, promptly.
#[test]
fn quit_from_another_thread() {
    let (tx, rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let t = thread::spawn(move || {
        let lp = EventLoop::new().unwrap();
        // A far-away timer: the loop must not wait for it.
        lp.run_after(Duration::from_secs(3600), |_| {});
        tx.send((lp.handle(), util::gettid())).unwrap();
        lp.run();
        done_tx.send(Instant::now()).unwrap();
    });
    let (handle, tid) = rx.recv_timeout(TIMEOUT).unwrap();
    util::wait_blocked_in_epoll(tid);
    let asked = Instant::now();
    handle.quit();
    let stopped = done_rx
        .recv_timeout(Duration::from_secs(2))
        .expect("run() did not return after quit");
    assert!(stopped - asked < Duration::from_millis(500));
    t.join().unwrap();
}

/// A peer that resets (SO_LINGER 0, then close) takes down only its own
/// connection: the callback sees it DOWN and the others keep echoing.
#[test]
fn peer_reset_closes_only_that_connection() {
    let (tx, rx) = mpsc::channel::<(SocketAddr, bool)>();
    let server = start_server(2, move |s| {
        echo(s);
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            let _ = tx
                .lock()
                .unwrap()
                .send((conn.peer_addr(), conn.connected()));
        }));
    });
    let mut socks: Vec<_> = (0..4).map(|_| connect(server.addr)).collect();
    for s in &mut socks {
        assert_echo(s, b"hello");
    }
    let victim = socks.remove(1);
    let victim_addr = victim.local_addr().unwrap();
    // Leave unread output on the server side too, so the reset hits a busy socket.
    let sock = socket2::Socket::from(victim);
    (&sock).write_all(b"pending").unwrap();
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(sock); // sends RST
    let deadline = Instant::now() + TIMEOUT;
    let mut ups = HashSet::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (peer, up) = rx.recv_timeout(left).expect("no DOWN for the reset peer");
        if up {
            ups.insert(peer);
            continue;
        }
        assert_eq!(peer, victim_addr, "a DOWN for the wrong connection");
        break;
    }
    assert!(ups.contains(&victim_addr));
    assert!(wait_until(TIMEOUT, || server.connection_count() == 3));
    for s in &mut socks {
        assert_echo(s, b"still here");
    }
    // No other connection went down.
    assert!(rx.try_iter().all(|(_, up)| up));
}

/// stop_read/start_read: while reading is stopped the message callback never
/// runs; after start_read the data that waited in the kernel arrives, in order.
#[test]
fn stop_read_holds_back_messages() {
    const TOTAL: usize = 4 * 1024 * 1024;
    const PHASE: usize = 256 * 1024;
    let paused = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let corrupt = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<ConnHandle>();
    let (p, v, r, c) = (
        paused.clone(),
        violations.clone(),
        received.clone(),
        corrupt.clone(),
    );
    let server = start_server(1, move |s| {
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                tx.lock().unwrap().send(conn.handle()).unwrap();
            }
        }));
        s.set_message_callback(Arc::new(move |conn, buf| {
            if p.load(Ordering::SeqCst) {
                v.fetch_add(1, Ordering::SeqCst);
            }
            let before = r.load(Ordering::SeqCst);
            if check_pattern(before, buf.peek()).is_err() {
                c.store(true, Ordering::SeqCst);
            }
            let after = before + buf.readable_bytes();
            buf.retrieve_all();
            r.store(after, Ordering::SeqCst);
            // Pause each time another PHASE bytes came in.
            if after / PHASE != before / PHASE && after < TOTAL {
                p.store(true, Ordering::SeqCst);
                conn.stop_read();
            }
        }));
    });
    let mut s = connect(server.addr);
    let handle = rx.recv_timeout(TIMEOUT).expect("no connection");
    let writer = thread::spawn(move || {
        s.write_all(&pattern(0, TOTAL)).expect("write");
        s
    });
    let mut pauses = 0;
    while received.load(Ordering::SeqCst) < TOTAL {
        assert!(
            wait_until(TIMEOUT, || paused.load(Ordering::SeqCst)
                || received.load(Ordering::SeqCst) >= TOTAL),
            "stalled at {} bytes",
            received.load(Ordering::SeqCst)
        );
        if received.load(Ordering::SeqCst) >= TOTAL {
            break;
        }
        pauses += 1;
        let at = received.load(Ordering::SeqCst);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(received.load(Ordering::SeqCst), at, "read while stopped");
        paused.store(false, Ordering::SeqCst);
        handle.run(|conn| conn.start_read());
    }
    assert!(pauses >= 2, "only {pauses} pauses");
    assert_eq!(violations.load(Ordering::SeqCst), 0);
    assert!(!corrupt.load(Ordering::SeqCst), "data corrupted");
    assert_eq!(received.load(Ordering::SeqCst), TOTAL);
    writer.join().unwrap();
}

/// Stopping reading from another thread before any data arrives: nothing is
/// delivered until start_read, then everything is.
#[test]
fn stop_read_from_another_thread() {
    let received = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<ConnHandle>();
    let r = received.clone();
    let server = start_server(1, move |s| {
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                tx.lock().unwrap().send(conn.handle()).unwrap();
            }
        }));
        s.set_message_callback(Arc::new(move |_, buf| {
            r.fetch_add(buf.readable_bytes(), Ordering::SeqCst);
            buf.retrieve_all();
        }));
    });
    let mut s = connect(server.addr);
    let handle = rx.recv_timeout(TIMEOUT).expect("no connection");
    let (ack_tx, ack_rx) = mpsc::channel();
    handle.run(move |conn| {
        conn.stop_read();
        ack_tx.send(()).unwrap();
    });
    ack_rx.recv_timeout(TIMEOUT).expect("stop_read did not run");
    s.write_all(&[7; 100_000]).unwrap();
    // The bytes are readable at the server now; the loop polls twice more.
    util::loop_turns(handle.loop_handle(), 2);
    assert_eq!(received.load(Ordering::SeqCst), 0);
    handle.run(|conn| conn.start_read());
    assert!(wait_until(TIMEOUT, || received.load(Ordering::SeqCst) == 100_000));
}

/// A message callback that always leaves a partial message behind (here one byte)
/// keeps the input buffer from shrinking; each readiness event still reads at most
/// `MAX_READ_BETWEEN_CALLBACKS` before the callback runs. (Seen failing when a read
/// was offered the buffer's whole free space: the buffer ratcheted up by a read
/// budget per event, the callback saw ever larger inputs.)
#[test]
fn a_partial_message_left_in_the_input_does_not_grow_the_reads() {
    const TOTAL: usize = 48 * 1024 * 1024;
    let largest = Arc::new(AtomicUsize::new(0));
    let consumed = Arc::new(AtomicUsize::new(0));
    let (l, c) = (largest.clone(), consumed.clone());
    let server = start_server(1, move |s| {
        s.set_message_callback(Arc::new(move |_conn, buf| {
            l.fetch_max(buf.readable_bytes(), Ordering::SeqCst);
            let take = buf.readable_bytes() - 1;
            if check_pattern(c.load(Ordering::SeqCst), &buf.peek()[..take]).is_err() {
                panic!("data corrupted");
            }
            buf.retrieve(take);
            c.fetch_add(take, Ordering::SeqCst);
            // A slow consumer: the kernel queues more meanwhile.
            thread::sleep(Duration::from_millis(2));
        }));
    });
    let mut s = connect(server.addr);
    let writer = thread::spawn(move || {
        s.write_all(&pattern(0, TOTAL)).expect("write");
        s
    });
    assert!(
        wait_until(Duration::from_secs(60), || consumed.load(Ordering::SeqCst)
            == TOTAL - 1),
        "stalled at {} bytes",
        consumed.load(Ordering::SeqCst)
    );
    let largest = largest.load(Ordering::SeqCst);
    eprintln!(
        "largest input handed to the callback: {largest} B (bound {})",
        net::MAX_READ_BETWEEN_CALLBACKS + 1
    );
    assert!(
        largest <= net::MAX_READ_BETWEEN_CALLBACKS + 1,
        "the callback was handed {largest} B at once"
    );
    writer.join().unwrap();
}

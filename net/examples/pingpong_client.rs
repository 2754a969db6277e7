//! pingpong_client: the driving half of muduo's pingpong throughput benchmark.
//!
//! Usage: `pingpong_client <address> <port> <threads> <block size> <sessions> <seconds>`
//!
//! Opens `sessions` connections with [`TcpClient`], spread round robin over
//! `threads` IO loops (with 1, muduo's convention: the main loop does the IO).
//! Each session sends one block on connect and from then on echoes back whatever
//! it reads, so `sessions` blocks bounce between client and server. After
//! `seconds` every session half-closes; once all are down the client prints the
//! bytes and messages read and the throughput in MiB/s
//! (bytes read divided by `seconds`, as muduo computes it).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::process::exit;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use net::{EventLoop, EventLoopThreadPool, LoopHandle, TcpClient};

thread_local! {
    /// The sessions living on this IO thread: a TcpClient is not `Send`, so each
    /// stays on the loop that created it.
    static CLIENTS: RefCell<Vec<TcpClient>> = const { RefCell::new(Vec::new()) };
}

/// One session's counters, on its own cache line: each is written by one IO
/// thread only and read once at the end.
#[derive(Default)]
#[repr(align(64))]
struct Counters {
    bytes: AtomicU64,
    messages: AtomicU64,
}

/// What every session shares.
struct Shared {
    counters: Vec<Counters>,
    sessions: usize,
    connected: AtomicUsize,
    disconnected: AtomicUsize,
    /// Quit once every session is down.
    main_loop: LoopHandle,
    /// The block each session sends first.
    message: Vec<u8>,
    started: Instant,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 7 {
        eprintln!(
            "Usage: {} <address> <port> <threads> <block size> <sessions> <seconds>",
            args[0]
        );
        exit(2);
    }
    let ip: IpAddr = args[1].parse().unwrap_or_else(|e| fail("address", e));
    let port: u16 = args[2].parse().unwrap_or_else(|e| fail("port", e));
    let threads: usize = args[3].parse().unwrap_or_else(|e| fail("threads", e));
    let block_size: usize = args[4].parse().unwrap_or_else(|e| fail("block size", e));
    let sessions: usize = args[5].parse().unwrap_or_else(|e| fail("sessions", e));
    let seconds: u64 = args[6].parse().unwrap_or_else(|e| fail("seconds", e));
    if threads == 0 || block_size == 0 || sessions == 0 || seconds == 0 {
        fail(
            "arguments",
            "threads, block size, sessions and seconds must be > 0",
        );
    }
    let addr = SocketAddr::new(ip, port);

    let lp = EventLoop::new().expect("event loop");
    let mut pool = EventLoopThreadPool::new(&lp, "pingpong-client");
    // As in muduo, one thread means the sessions share the main loop.
    if threads > 1 {
        pool.set_thread_num(threads);
    }
    pool.start(&lp, None).expect("IO threads");

    let shared = Arc::new(Shared {
        counters: (0..sessions).map(|_| Counters::default()).collect(),
        sessions,
        connected: AtomicUsize::new(0),
        disconnected: AtomicUsize::new(0),
        main_loop: lp.handle(),
        message: (0..block_size).map(|i| (i % 128) as u8).collect(),
        started: Instant::now(),
    });
    for i in 0..sessions {
        let shared = shared.clone();
        pool.next_loop()
            .run_in_loop(move |lp| start_session(lp, addr, i, shared));
    }

    let io_loops = pool.all_loops();
    lp.run_after(Duration::from_secs(seconds), move |_| {
        eprintln!("pingpong_client: time is up, disconnecting");
        for io in &io_loops {
            io.run_in_loop(|_| CLIENTS.with(|c| c.borrow().iter().for_each(TcpClient::disconnect)));
        }
    });
    // Do not wait forever for sessions that never connected or never close.
    lp.run_after(Duration::from_secs(seconds + 10), |lp| {
        eprintln!("pingpong_client: not every session closed, giving up");
        lp.quit();
    });
    lp.run();

    let bytes: u64 = shared
        .counters
        .iter()
        .map(|c| c.bytes.load(Ordering::Relaxed))
        .sum();
    let messages: u64 = shared
        .counters
        .iter()
        .map(|c| c.messages.load(Ordering::Relaxed))
        .sum();
    println!("{bytes} total bytes read");
    println!("{messages} total messages read");
    println!(
        "{} average message size",
        bytes.checked_div(messages).unwrap_or(0)
    );
    println!(
        "{:.2} MiB/s throughput",
        bytes as f64 / (seconds as f64 * 1024.0 * 1024.0)
    );
    if bytes == 0 {
        eprintln!("pingpong_client: no data moved; is the server up at {addr}?");
    }
    // Drop the clients on their own threads while their loops still run, then
    // quit and join the IO threads.
    let (tx, rx) = std::sync::mpsc::channel();
    let io_loops = pool.all_loops();
    for io in &io_loops {
        let tx = tx.clone();
        io.run_in_loop(move |_| {
            CLIENTS.with(|c| c.borrow_mut().clear());
            let _ = tx.send(());
        });
    }
    for _ in &io_loops {
        let _ = rx.recv_timeout(Duration::from_secs(5));
    }
    drop(pool);
}

/// Creates session `i` on this IO loop and starts connecting.
fn start_session(lp: &EventLoop, addr: SocketAddr, i: usize, shared: Arc<Shared>) {
    let client = TcpClient::new(lp, addr, format!("C{i:05}"));
    let on_conn = shared.clone();
    client.set_connection_callback(Arc::new(move |conn| {
        if conn.connected() {
            let _ = conn.set_tcp_no_delay(true);
            conn.send(&on_conn.message);
            if on_conn.connected.fetch_add(1, Ordering::Relaxed) + 1 == on_conn.sessions {
                eprintln!(
                    "pingpong_client: all {} sessions connected in {:?}",
                    on_conn.sessions,
                    on_conn.started.elapsed()
                );
            }
        } else if on_conn.disconnected.fetch_add(1, Ordering::Relaxed) + 1 == on_conn.sessions {
            eprintln!("pingpong_client: all disconnected");
            on_conn.main_loop.quit();
        }
    }));
    client.set_message_callback(Arc::new(move |conn, buf| {
        let counters = &shared.counters[i];
        counters
            .bytes
            .fetch_add(buf.readable_bytes() as u64, Ordering::Relaxed);
        counters.messages.fetch_add(1, Ordering::Relaxed);
        conn.send(buf.peek());
        buf.retrieve_all();
    }));
    client.connect();
    CLIENTS.with(|c| c.borrow_mut().push(client));
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("pingpong_client: bad {what}: {e}");
    exit(2);
}

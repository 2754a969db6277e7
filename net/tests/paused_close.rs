//! A peer that leaves while its connection is not being read, and output that was
//! never written: noticed at once, and handed back to the user at the close.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use util::{check_pattern, connect, pattern, start_server, TIMEOUT};

/// How soon a close must be noticed: far below "when reading resumes" (never here).
const PROMPT: Duration = Duration::from_secs(3);

/// Closes `s` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized `linger` value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

/// A server that stops reading a connection at its first bytes and reports
/// "paused" and "down" events.
fn pausing_server() -> (util::TestServer, mpsc::Receiver<&'static str>) {
    let (tx, rx) = mpsc::channel();
    let server = start_server(1, move |s| {
        let tx = Arc::new(Mutex::new(tx));
        let t = tx.clone();
        s.set_connection_callback(Arc::new(move |conn| {
            if !conn.connected() {
                let _ = t.lock().unwrap().send("down");
            }
        }));
        s.set_message_callback(Arc::new(move |conn, buf| {
            buf.retrieve_all();
            conn.stop_read();
            let _ = tx.lock().unwrap().send("paused");
        }));
    });
    (server, rx)
}

fn left_while_paused(leave: impl FnOnce(TcpStream)) {
    let (server, events) = pausing_server();
    let mut s = connect(server.addr);
    s.write_all(b"first").unwrap();
    assert_eq!(events.recv_timeout(TIMEOUT), Ok("paused"));
    // These wait in the kernel: nobody reads them.
    s.write_all(&[b'x'; 4096]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    leave(s);
    assert_eq!(
        events.recv_timeout(PROMPT),
        Ok("down"),
        "the close went unnoticed while reading was paused"
    );
    assert!(t0.elapsed() < PROMPT);
}

/// The peer's FIN reaches the user although the connection is not being read.
#[test]
fn fin_is_noticed_while_reading_is_paused() {
    left_while_paused(|s| s.shutdown(std::net::Shutdown::Write).unwrap());
}

/// So does a reset.
#[test]
fn reset_is_noticed_while_reading_is_paused() {
    left_while_paused(reset);
}

/// Output the peer never took is handed to the close callback, byte for byte the
/// tail of what was sent.
#[test]
fn unsent_output_is_kept_for_the_close_callback() {
    const TOTAL: usize = 16 * 1024 * 1024;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let server = start_server(1, move |s| {
        let tx = Mutex::new(tx);
        s.set_connection_callback(Arc::new(move |conn| {
            if conn.connected() {
                conn.send(&pattern(0, TOTAL));
            } else {
                let _ = tx.lock().unwrap().send(conn.take_unsent_output());
            }
        }));
        s.set_message_callback(Arc::new(|_, buf| buf.retrieve_all()));
    });
    let s = connect(server.addr);
    std::thread::sleep(Duration::from_millis(100));
    reset(s);
    let unsent = rx.recv_timeout(TIMEOUT).expect("no close");
    assert!(
        !unsent.is_empty() && unsent.len() < TOTAL,
        "{} bytes unsent",
        unsent.len()
    );
    assert_eq!(check_pattern(TOTAL - unsent.len(), &unsent), Ok(()));
}

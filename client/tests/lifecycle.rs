//! Arguments, connecting, the heartbeat, and the server going away.

mod util;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use util::{login, Client, TestServer, MENU};

#[test]
fn wrong_arguments_print_usage_and_exit_2() {
    for args in [
        &[][..],
        &["127.0.0.1"][..],
        &["127.0.0.1", "1", "2"][..],
        &["127.0.0.1", "port"][..],
        &["127.0.0.1", "0"][..],
        &["127.0.0.1", "70000"][..],
    ] {
        let mut c = Client::spawn_args(args, &[]);
        let status = c.wait_exit();
        assert_eq!(status.code(), Some(2), "{args:?}");
        let err = c.stderr();
        // A missing or extra argument shows the usage; a bad port names the value.
        assert!(
            err.contains("Usage: ChatClient [OPTIONS] <host> <port>")
                || err.contains(&format!("invalid value '{}' for '<port>'", args[1])),
            "{args:?}: {err}"
        );
        assert_eq!(c.stdout(), "");
    }
    // --ca-file goes with --tls, and the other way round.
    for args in [&["--tls", "h", "1"][..], &["--ca-file", "x", "h", "1"][..]] {
        let mut c = Client::spawn_args(args, &[]);
        assert_eq!(c.wait_exit().code(), Some(2), "{args:?}");
    }
    let mut c = Client::spawn_args(&["--help"], &[]);
    assert!(c.wait_exit().success());
    let help = c.stdout();
    for want in [
        "Usage: ChatClient [OPTIONS] <host> <port>",
        "--tls",
        "--ca-file <PEM>",
        "--no-reconnect",
        "--version",
    ] {
        assert!(help.contains(want), "{want:?} not in:\n{help}");
    }
    let mut c = Client::spawn_args(&["--version"], &[]);
    assert!(c.wait_exit().success());
    assert_eq!(
        c.stdout(),
        format!("ChatClient {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn connect_failure_exits_1_with_a_clear_message() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = Client::spawn_args(&["127.0.0.1", &port.to_string()], &[]);
    assert_eq!(c.wait_exit().code(), Some(1));
    let err = c.stderr();
    assert!(
        err.starts_with(&format!("cannot connect to 127.0.0.1:{port}: ")),
        "{err}"
    );
    assert_eq!(c.stdout(), "");
}

#[test]
fn host_names_resolve() {
    let server = TestServer::start();
    let id = server.register("alice");
    let mut c = Client::spawn_args(&["localhost", &server.port()], &[]);
    c.send(&login(id));
    c.wait_for("current login user => id:");
    c.close_stdin();
    assert!(c.wait_exit().success(), "{}", c.stderr());
}

#[test]
fn server_shutdown_while_logged_in_is_reported() {
    let mut server = TestServer::start();
    let id = server.register("alice");
    let mut c = Client::spawn(&server);
    c.send(&login(id));
    c.wait_for("show command list >>>");
    server.stop();
    let status = c.wait_exit();
    assert!(!status.success(), "{status:?}");
    assert!(
        c.stderr().contains("server closed the connection"),
        "{}",
        c.stderr()
    );
}

#[test]
fn server_shutdown_at_the_menu_is_reported() {
    let mut server = TestServer::start();
    let mut c = Client::spawn(&server);
    c.wait_for("choice:");
    server.stop();
    let status = c.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert_eq!(c.stderr(), "server closed the connection\n");
    assert_eq!(c.stdout(), MENU);
}

/// A relay between a client and a server that counts the exact PING frames going up
/// and PONG frames coming down, so a test can see heartbeats really were exchanged.
struct PingCounter {
    port: u16,
    pings: Arc<AtomicUsize>,
    pongs: Arc<AtomicUsize>,
}

impl PingCounter {
    fn start(server: SocketAddr) -> PingCounter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (pings, pongs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (up, down) = (pings.clone(), pongs.clone());
        thread::spawn(move || {
            let (client, _) = listener.accept().unwrap();
            let upstream = TcpStream::connect(server).unwrap();
            let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
            thread::spawn(move || relay(c2, u2, b"{\"msgid\":13}", &up));
            relay(upstream, client, b"{\"msgid\":14}", &down);
        });
        PingCounter { port, pings, pongs }
    }
}

/// Copies `from` to `to` until either side closes, counting the frames equal to
/// `frame` before passing them on (so a PING is counted before its PONG can be).
fn relay(mut from: TcpStream, mut to: TcpStream, frame: &[u8], count: &AtomicUsize) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == 0) {
            if pending[..end] == *frame {
                count.fetch_add(1, Ordering::SeqCst);
            }
            pending.drain(..=end);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn heartbeat_pongs_stay_silent() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let relay = PingCounter::start(server.addr());
    let mut a = Client::spawn_args(
        &["127.0.0.1", &relay.port.to_string()],
        &[("CHAT_HEARTBEAT_SECS", "0.05")],
    );
    a.send(&login(alice));
    let banner = a.wait_for("show command list >>>");
    // Several heartbeats go by, answered: their PONGs print nothing and the session
    // lives on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.pongs.load(Ordering::SeqCst) < 3 {
        assert!(
            Instant::now() < deadline,
            "{} PINGs, {} PONGs",
            relay.pings.load(Ordering::SeqCst),
            relay.pongs.load(Ordering::SeqCst)
        );
        thread::sleep(Duration::from_millis(10));
    }
    assert!(relay.pings.load(Ordering::SeqCst) >= 3);
    assert_eq!(a.stdout(), banner);
    let mut b = Client::spawn(&server);
    b.send(&format!("{}chat:{alice}:still there?\n", login(bob)));
    a.wait_for(&format!("[{bob}]bob said: still there?\n"));
    a.close_stdin();
    assert!(a.wait_exit().success());
    assert_eq!(a.stderr(), "");
}

//! Arguments, connecting, the heartbeat, and the server going away.

mod util;

use std::net::TcpListener;
use std::thread;
use std::time::Duration;

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

#[test]
fn heartbeat_pongs_stay_silent() {
    let server = TestServer::start();
    let alice = server.register("alice");
    let bob = server.register("bob");
    let mut a = Client::spawn_args(
        &["127.0.0.1", &server.port()],
        &[("CHAT_HEARTBEAT_SECS", "0.05")],
    );
    a.send(&login(alice));
    let banner = a.wait_for("show command list >>>");
    // Several heartbeats go by; their PONGs print nothing and the session lives on.
    thread::sleep(Duration::from_millis(400));
    assert_eq!(a.stdout(), banner);
    let mut b = Client::spawn(&server);
    b.send(&format!("{}chat:{alice}:still there?\n", login(bob)));
    a.wait_for(&format!("[{bob}]bob said: still there?\n"));
    a.close_stdin();
    assert!(a.wait_exit().success());
    assert_eq!(a.stderr(), "");
}

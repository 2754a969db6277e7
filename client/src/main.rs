//! `ChatClient <host> <port>`: the terminal client of the chat server.
//!
//! Two threads and a heartbeat: [`reader`] reads the socket and prints what the server
//! says; [`app`] runs the menus on stdin and sends requests; [`heartbeat`] pings while
//! logged in. They share a [`session::Session`]. Works against our server and the original
//! one (protocol.md): every request opts in to extended replies with `"ext":1`, and nothing
//! ever waits for one.

mod app;
mod commands;
mod heartbeat;
mod reader;
mod session;
mod social;
mod ui;

use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use session::Session;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a blocked write may take before the server counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: ChatClient <host> <port>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if matches!(args.first().map(String::as_str), Some("-h" | "--help")) {
        println!("{USAGE}\n  host: a host name or an IP address; port: 1-65535");
        return ExitCode::SUCCESS;
    }
    let (host, port) = match args.as_slice() {
        [host, port] => match port.parse::<u16>() {
            Ok(p) if p != 0 => (host.as_str(), p),
            _ => {
                ui::error(&format!("invalid port \"{port}\"\n{USAGE}"));
                return ExitCode::from(2);
            }
        },
        _ => {
            ui::error(USAGE);
            return ExitCode::from(2);
        }
    };
    let stream = match connect(host, port) {
        Ok(s) => s,
        Err(e) => {
            ui::error(&format!("cannot connect to {host}:{port}: {e}"));
            return ExitCode::from(1);
        }
    };
    match start(stream) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&format!("ChatClient: {e}"));
            ExitCode::from(1)
        }
    }
}

/// Resolves `host` (a name or an address) and connects to the first address that answers.
fn connect(host: &str, port: u16) -> io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("the host name has no address")))
}

fn start(stream: TcpStream) -> io::Result<ExitCode> {
    // Small frames go out at once: the original server wants one frame per read.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let read_half = stream.try_clone()?;
    let session = Arc::new(Session::new(stream, heartbeat::interval_from_env()));
    let (tx, rx) = mpsc::channel();
    reader::spawn(read_half, session.clone(), tx)?;
    heartbeat::spawn(session.clone())?;
    Ok(app::App::new(session, rx, io::stdin().lines()).run())
}

//! `ChatClient <host> <port>`: the terminal client of the chat server.
//!
//! Two threads and a heartbeat: [`reader`] reads the socket and prints what the server
//! says; [`app`] runs the menus on stdin and sends requests; [`heartbeat`] pings while
//! logged in. They share a [`session::Session`]. Works against our server and the original
//! one (protocol.md): every request opts in to extended replies with `"ext":1`, and nothing
//! ever waits for one. With a terminal on stdin, [`input`] edits lines with rustyline;
//! piped, it reads them as the original client did. [`transport`] is plain TCP or TLS.

mod app;
mod commands;
mod heartbeat;
mod input;
mod reader;
mod resume;
mod session;
mod social;
mod transport;
mod ui;

use std::io::{self, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};

use clap::Parser;
use session::Session;
use transport::Connector;

/// The terminal client of the chat server (and of the original C++ ChatServer).
///
/// At a terminal it edits lines (arrows, history, Ctrl-R), hides the password, prints what
/// arrives above the line being typed and confirms each message. With stdin piped it
/// reads the original client's menu answers and commands line by line, for scripts.
#[derive(Parser, Debug)]
#[command(
    name = "ChatClient",
    version,
    override_usage = "ChatClient [OPTIONS] <host> <port>"
)]
struct Args {
    /// The server (or its nginx): a host name or an IP address.
    #[arg(value_name = "host")]
    host: String,
    /// The server's port.
    #[arg(value_name = "port", value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Connect with TLS (to a TLS port such as nginx's, see deploy/); needs --ca-file.
    #[arg(long, requires = "ca_file")]
    tls: bool,
    /// The CA certificate(s), PEM, that the server's certificate must chain to.
    #[arg(long, value_name = "PEM", requires = "tls")]
    ca_file: Option<PathBuf>,
    /// Exit (status 1) when the server closes the connection. By default an
    /// interactive session connects again by itself and resumes (piped: never).
    #[arg(long)]
    no_reconnect: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (host, port) = (args.host.as_str(), args.port);
    let connector = match &args.ca_file {
        Some(ca) => match Connector::tls(host, port, ca) {
            Ok(c) => c,
            Err(e) => {
                ui::error(&format!("--ca-file: {e}"));
                return ExitCode::from(2);
            }
        },
        None => Connector::plain(host, port),
    };
    let (read, write) = match connector.connect() {
        Ok(halves) => halves,
        Err(e) => {
            ui::error(&format!("cannot connect to {host}:{port}: {e}"));
            return ExitCode::from(1);
        }
    };
    // Set up before the reader starts, so its first line goes through the editor. A
    // terminal the editor cannot drive is read as a script is.
    let editor = if io::stdin().is_terminal() && io::stdout().is_terminal() {
        input::Interactive::new()
            .map_err(|e| ui::error(&format!("no line editing on this terminal: {e}")))
            .ok()
    } else {
        None
    };
    let session = Arc::new(Session::new(
        write,
        connector,
        editor.is_some(),
        heartbeat::interval_from_env(),
    ));
    session.state().resume.enabled = editor.is_some() && !args.no_reconnect;
    match start(read, session, editor) {
        Ok(code) => code,
        Err(e) => {
            ui::error(&format!("ChatClient: {e}"));
            ExitCode::from(1)
        }
    }
}

fn start(
    read: transport::ReadHalf,
    session: Arc<Session>,
    editor: Option<input::Interactive>,
) -> io::Result<ExitCode> {
    let (tx, rx) = mpsc::channel();
    heartbeat::spawn(session.clone())?;
    reader::spawn(read, session.clone(), tx.clone())?;
    Ok(match editor {
        Some(input) => app::App::new(session, (tx, rx), input).run(),
        None => app::App::new(session, (tx, rx), input::Piped::stdin()).run(),
    })
}

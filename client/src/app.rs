//! App: the blocking command loop on stdin — the top menu, login and register prompts,
//! and the chat menu.
//!
//! It never waits for an extended reply (those are printed by the reader whenever they
//! come); it waits only for the LOGIN_ACK or REG_ACK that every server sends, with a
//! timeout, and at the end for the server's last replies ([`Session::settle`]).

use std::io;
use std::process::ExitCode;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::codec::DEFAULT_FRAME_LIMIT;
use chat::{protocol, timefmt};
use serde_json::Value;

use crate::commands::{self, Command};
use crate::input::Input;
use crate::session::{Awaiting, Contacts, Outcome, Session};
use crate::{reader, ui};

/// How long to wait for a LOGIN_ACK or REG_ACK before giving up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// How often a wait for an answer looks whether the connection was closed meanwhile.
const DROP_CHECK: Duration = Duration::from_millis(100);

/// How long a clean exit waits for the server to close its side after our FIN.
pub const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// The command loop over lines of input.
pub struct App<I> {
    /// The connection and the state shared with the reader and the heartbeat.
    session: Arc<Session>,
    /// Answers from the reader thread to our LOGIN and REG.
    outcomes: Receiver<Outcome>,
    /// The sending side of `outcomes`, for the reader of a new connection.
    outcomes_tx: Sender<Outcome>,
    /// Lines of input; an `InvalidData` error is a line that is not UTF-8.
    input: I,
}

impl<I: Input> App<I> {
    /// A loop reading `input`, talking through `session`.
    pub fn new(
        session: Arc<Session>,
        outcomes: (Sender<Outcome>, Receiver<Outcome>),
        input: I,
    ) -> Self {
        App {
            session,
            outcomes_tx: outcomes.0,
            outcomes: outcomes.1,
            input,
        }
    }

    /// Runs until `3` / `quit` / the end of input, then logs out and returns the exit code.
    /// A lost connection exits the process from whichever thread notices it first.
    pub fn run(&mut self) -> ExitCode {
        loop {
            ui::emit(ui::TOP_MENU);
            let Some(line) = self.ask(ui::CHOICE) else {
                return self.finish();
            };
            match line.trim().parse::<u32>() {
                Ok(1) => match self.login() {
                    None => return self.finish(),
                    Some(true) => {
                        if let Some(code) = self.chat_menu() {
                            return code;
                        }
                    }
                    Some(false) => {}
                },
                Ok(2) => {
                    if self.register().is_none() {
                        return self.finish();
                    }
                }
                Ok(3) => return self.finish(),
                _ => ui::emit(&format!(
                    "invalid choice \"{}\", enter 1, 2 or 3\n",
                    line.trim()
                )),
            }
        }
    }

    /// Prints `prompt` and reads a line (without its `\r\n`); `None` at the end of input.
    /// A line that is not UTF-8 gets a hint and the prompt again.
    fn ask(&mut self, prompt: &str) -> Option<String> {
        self.ask_with(prompt, false)
    }

    /// [`App::ask`], or for a password (`secret`: not echoed, not in the history).
    fn ask_with(&mut self, prompt: &str, secret: bool) -> Option<String> {
        loop {
            let line = if secret {
                self.input.secret(prompt)
            } else {
                self.input.line(prompt)
            };
            match line? {
                Ok(mut line) => {
                    if line.ends_with('\r') {
                        line.pop();
                    }
                    return Some(line);
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    ui::emit("input is not valid UTF-8, try again\n");
                }
                Err(_) => return None,
            }
        }
    }

    /// Prompts for an id and a password and logs in. `Some(true)` when logged in,
    /// `Some(false)` when refused, `None` at the end of input.
    fn login(&mut self) -> Option<bool> {
        let id = loop {
            let line = self.ask(ui::USERID)?;
            match commands::parse_id(&line) {
                Some(id) => break id,
                None => ui::emit(&format!(
                    "invalid userid \"{}\", enter a number\n",
                    line.trim()
                )),
            }
        };
        let password = self.ask_with(ui::PASSWORD, true)?;
        let mut frame = commands::login_request(id, &password);
        if self.session.state().resume.enabled {
            // Acknowledged delivery: what a dropped connection lost comes again.
            frame["acks"] = 1.into();
        }
        Some(self.request(Awaiting::Login, &frame) == Some(Outcome::LoggedIn))
    }

    /// Prompts for a name and a password and registers. `None` at the end of input.
    fn register(&mut self) -> Option<()> {
        let name = self.ask_non_empty(ui::USERNAME, "the name must not be empty")?;
        let password = self.ask_non_empty(ui::PASSWORD, "the password must not be empty")?;
        let frame = commands::reg_request(&name, &password);
        self.request(Awaiting::Reg { name }, &frame);
        Some(())
    }

    fn ask_non_empty(&mut self, prompt: &str, hint: &str) -> Option<String> {
        loop {
            let line = self.ask_with(prompt, prompt == ui::PASSWORD)?;
            if !line.trim().is_empty() {
                return Some(line);
            }
            ui::emit(&format!("{hint}\n"));
        }
    }

    /// Sends a LOGIN or REG and waits for the reader to hand over its answer (which it has
    /// printed). `None` after [`ANSWER_TIMEOUT`].
    ///
    /// If the server's login timeout closes the connection before the answer, a LOGIN is
    /// sent again once on a new connection (a login on a closed connection is undone by
    /// the server); a REG is not (it may have been done), and the person is told.
    fn request(&mut self, awaiting: Awaiting, frame: &Value) -> Option<Outcome> {
        // Answers to requests we gave up on are stale now.
        while self.outcomes.try_recv().is_ok() {}
        let mut resent = false;
        let mut deadline = Instant::now();
        loop {
            if !self.connected() {
                return None;
            }
            self.session.state().awaiting = Some(awaiting.clone());
            self.send(frame);
            deadline = deadline.max(Instant::now() + ANSWER_TIMEOUT);
            loop {
                let wait = DROP_CHECK.min(deadline.saturating_duration_since(Instant::now()));
                match self.outcomes.recv_timeout(wait) {
                    Ok(o) => return Some(o),
                    Err(RecvTimeoutError::Disconnected) => return None,
                    Err(RecvTimeoutError::Timeout) => {}
                }
                if self.session.state().dropped {
                    break;
                }
                if Instant::now() >= deadline {
                    let gave_up = self.session.state().awaiting.take().is_some();
                    if gave_up {
                        ui::emit("no answer from the server, try again\n");
                        return None;
                    }
                    // The reader took the answer just now; it is on its way.
                    return self.outcomes.recv().ok();
                }
            }
            // The connection was closed for idling just as the request went out.
            self.session.state().awaiting = None;
            if resent || awaiting != Awaiting::Login {
                ui::emit("the server closed the connection before answering, try again\n");
                return None;
            }
            resent = true;
        }
    }

    /// Connects again if the server closed the idle connection at the menu (its login
    /// timeout). False, with the reason printed, if that fails.
    fn connected(&mut self) -> bool {
        let read = match self.session.reconnect_if_dropped() {
            Ok(None) => return true,
            Ok(Some(read)) => read,
            Err(e) => {
                ui::error(&format!("cannot connect to the server: {e}"));
                return false;
            }
        };
        let spawned = reader::spawn(read, self.session.clone(), self.outcomes_tx.clone());
        if let Err(e) = spawned {
            ui::error(&format!("ChatClient: {e}"));
            return false;
        }
        true
    }

    /// The chat menu. `None` after `loginout` (back to the top menu), `Some(code)` to exit.
    fn chat_menu(&mut self) -> Option<ExitCode> {
        loop {
            // A person gets a prompt; a script gets none, as with the original client.
            let prompt = match (self.session.interactive(), self.session.user()) {
                (true, Some(me)) => format!("{}> ", me.name),
                _ => String::new(),
            };
            let Some(line) = self.ask(&prompt) else {
                return Some(self.finish());
            };
            match commands::parse(&line) {
                Ok(None) => {}
                Ok(Some(Command::Help)) => ui::emit(&ui::help(self.session.interactive())),
                Ok(Some(Command::Loginout)) => {
                    self.session.settle();
                    if let Err(e) = self.session.logout() {
                        self.lost(&e);
                    }
                    return None;
                }
                Ok(Some(Command::Quit)) => return Some(self.finish()),
                Ok(Some(cmd)) => self.command(&cmd)?,
                Err(hint) => ui::emit(&format!("{hint}\n")),
            }
        }
    }

    /// Sends the request of a chat-menu command. `None` if no one is logged in.
    fn command(&mut self, cmd: &Command) -> Option<()> {
        let me = self.session.user()?;
        // A person is told where each chat went; a script's output stays the original's.
        let cid = self.session.interactive().then(|| {
            let mut st = self.session.state();
            st.last_cid += 1;
            st.last_cid
        });
        let Some(frame) = commands::request(cmd, &me, &timefmt::now_local(), cid) else {
            return Some(());
        };
        let size = protocol::encode(&frame).len();
        if size > DEFAULT_FRAME_LIMIT {
            ui::emit(&format!(
                "message too long: {size} bytes with its header, the server takes {DEFAULT_FRAME_LIMIT}; nothing sent\n"
            ));
            return Some(());
        }
        match cmd {
            Command::Friends => self.session.state().contacts.push_back(Contacts::Friends),
            Command::Groups => self.session.state().contacts.push_back(Contacts::Groups),
            _ => {}
        }
        self.send(&frame);
        Some(())
    }

    fn send(&self, frame: &Value) {
        if let Err(e) = self.session.send(frame) {
            self.lost(&e);
        }
    }

    fn lost(&self, e: &io::Error) {
        let resuming = {
            let st = self.session.state();
            st.resume.enabled && !st.resume.replaced && st.resume.token.is_some()
        };
        if resuming && self.session.user().is_some() {
            ui::emit("(not connected, reconnecting: that was not sent)\n");
            return;
        }
        self.session
            .connection_lost(&format!("server closed the connection ({e})"));
    }

    /// The clean end: let the last replies print, log out, close.
    fn finish(&mut self) -> ExitCode {
        if self.session.user().is_some() {
            self.session.settle();
            // Failing to say goodbye to a server that is gone changes nothing.
            let _ = self.session.logout();
        }
        self.session.close(CLOSE_GRACE);
        ExitCode::SUCCESS
    }
}

//! Reader: the thread that reads the socket, cuts frames and prints what the server says.
//!
//! It prints everything that comes from the server, in arrival order — the login banner
//! included, so that a live message that follows the LOGIN_ACK can never be printed before
//! it — and hands the command loop an [`Outcome`] for the LOGIN or REG it waits on.

use std::io::{self, Read};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use chat::codec::FrameReader;
use chat::protocol::{errno, msgid, Friend, GroupInfo};
use serde_json::Value;

use crate::session::{Awaiting, Contacts, Outcome, Session, User};
use crate::transport::ReadHalf;
use crate::ui;

/// The largest frame accepted from the server. Far beyond any real LOGIN_ACK; only a
/// runaway server reaches it.
pub const FRAME_LIMIT: usize = 256 * 1024 * 1024;

/// Starts the reader thread on `stream` (the connection's read half).
pub fn spawn(
    stream: ReadHalf,
    session: Arc<Session>,
    outcomes: Sender<Outcome>,
) -> io::Result<JoinHandle<()>> {
    let reader = Reader { session, outcomes };
    thread::Builder::new()
        .name("reader".into())
        .spawn(move || reader.run(stream))
}

/// The reader thread's state.
struct Reader {
    /// Where the reader records what arrived and who is logged in.
    session: Arc<Session>,
    /// Answers for the command loop.
    outcomes: Sender<Outcome>,
}

impl Reader {
    fn run(&self, mut stream: ReadHalf) {
        loop {
            let why = self.read_connection(&mut stream);
            // A resumable session comes back on a new connection; anything else
            // ends as before.
            match crate::resume::reconnect(&self.session) {
                Some(next) => stream = next,
                None => return self.session.connection_lost(&why),
            }
        }
    }

    /// Reads one connection until it ends; returns why it ended.
    fn read_connection(&self, stream: &mut ReadHalf) -> String {
        let mut frames = FrameReader::new(FRAME_LIMIT);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => return "server closed the connection".to_owned(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return format!("server closed the connection ({e})"),
            };
            frames.push(&buf[..n]);
            loop {
                match frames.next_frame() {
                    Ok(Some(frame)) => self.handle(&frame),
                    Ok(None) => break,
                    Err(e) if e.is_fatal() => {
                        return format!("server sent unreadable data ({e}), disconnecting");
                    }
                    Err(e) => ui::error(&format!("ignored a bad frame from the server: {e}")),
                }
            }
            let ack = {
                let mut st = self.session.state();
                st.last_rx = Instant::now();
                self.session.changed.notify_all();
                st.resume.ack_due(false)
            };
            if let Some(ack) = ack {
                let _ = self.session.send(&ack);
            }
        }
    }

    fn handle(&self, frame: &Value) {
        let Some(id) = frame.get("msgid").and_then(Value::as_i64) else {
            return;
        };
        match id {
            msgid::LOGIN_ACK => self.login_ack(frame),
            msgid::RESUME_ACK => self.resume_ack(frame),
            msgid::REG_ACK => self.reg_ack(frame),
            msgid::ONE_CHAT | msgid::GROUP_CHAT => {
                if !self.session.state().resume.take(frame) {
                    return; // shown already, before the connection dropped
                }
                if let Some(line) = ui::chat_line(frame) {
                    ui::emit(&line);
                }
            }
            msgid::ERROR | msgid::ACK => self.reply(frame),
            msgid::CONTACTS_ACK => self.contacts(frame),
            msgid::PONG => {
                let mut st = self.session.state();
                st.ours = true;
                st.pongs += 1;
                self.session.changed.notify_all();
            }
            // History, presence, friend requests, groups; anything else is from a newer
            // server: nothing to show.
            _ => {
                if let Some(line) = crate::social::line(frame) {
                    ui::emit(&line);
                }
            }
        }
    }

    /// Takes the command loop's pending request if it is `want`.
    fn take_awaiting(&self, want: impl Fn(&Awaiting) -> bool) -> Option<Awaiting> {
        let mut st = self.session.state();
        match &st.awaiting {
            Some(a) if want(a) => st.awaiting.take(),
            _ => None,
        }
    }

    /// A CONTACTS_ACK: prints the list the oldest unanswered `friends` or `groups` asked for.
    fn contacts(&self, frame: &Value) {
        let Some(which) = self.session.state().contacts.pop_front() else {
            return;
        };
        let out = match which {
            Contacts::Friends => ui::friend_list(&wire_list(frame, "friends", Friend::from_wire)),
            Contacts::Groups => ui::group_list(&wire_list(frame, "groups", GroupInfo::from_wire)),
        };
        ui::emit(&out);
    }

    fn login_ack(&self, frame: &Value) {
        let waited = self.take_awaiting(|a| *a == Awaiting::Login).is_some();
        let errno = frame.get("errno").and_then(Value::as_i64).unwrap_or(-1);
        if errno != 0 {
            if waited {
                let line = match frame.get("errmsg").and_then(Value::as_str) {
                    Some(msg) => format!("{msg}\n"),
                    None => format!("login failed (errno {errno})\n"),
                };
                ui::emit(&line);
                let _ = self.outcomes.send(Outcome::LoginFailed);
            }
            return;
        }
        let id = frame.get("id").and_then(Value::as_i64).unwrap_or(0);
        if !waited {
            // A login the command loop gave up waiting for: undo it on the server.
            let _ = self.session.send(&crate::commands::logout_request(id));
            return;
        }
        let name = frame.get("name").and_then(Value::as_str).unwrap_or("");
        let friends = wire_list(frame, "friends", Friend::from_wire);
        let groups = wire_list(frame, "groups", GroupInfo::from_wire);
        let mut out = ui::banner(id, name, &friends, &groups);
        self.offline_lines(frame, &mut out);
        out.push_str(&ui::help(self.session.interactive()));
        self.session.state().resume.token = frame
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.session.logged_in(User {
            id,
            name: name.to_owned(),
        });
        ui::emit(&out);
        let _ = self.outcomes.send(Outcome::LoggedIn);
    }

    /// The offline messages of a LOGIN_ACK or RESUME_ACK, each once, appended to
    /// `out`; returns how many.
    fn offline_lines(&self, frame: &Value, out: &mut String) -> usize {
        let mut n = 0;
        for text in wire_list(frame, "offlinemsg", |s| Some(s.to_owned())) {
            let Ok(m) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if !self.session.state().resume.take(&m) {
                continue;
            }
            if let Some(line) = ui::chat_line(&m) {
                out.push_str(&line);
                n += 1;
            }
        }
        n
    }

    /// The answer to the RESUME the reconnect sent: one notice line, then the
    /// messages missed meanwhile; a refused one ends the client as a lost
    /// connection did before.
    fn resume_ack(&self, frame: &Value) {
        if !std::mem::take(&mut self.session.state().resume.resuming) {
            return;
        }
        if frame.get("errno").and_then(Value::as_i64) != Some(0) {
            let why = frame
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or("the session cannot be resumed");
            self.session.state().resume.enabled = false;
            self.session
                .connection_lost(&format!("reconnected, but {why}"));
            return;
        }
        self.session.state().resume.token = frame
            .get("token")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut lines = String::new();
        let n = self.offline_lines(frame, &mut lines);
        let mut out = format!("(connection lost and restored: {n} message(s) missed meanwhile)\n");
        out.push_str(&lines);
        ui::emit(&out);
        // The heartbeat tells whether the new server is ours, as after a login.
        let mut st = self.session.state();
        st.next_ping = Some(Instant::now());
        self.session.changed.notify_all();
    }

    fn reg_ack(&self, frame: &Value) {
        if let Some(Awaiting::Reg { name }) =
            self.take_awaiting(|a| matches!(a, Awaiting::Reg { .. }))
        {
            ui::emit(&ui::reg_line(&name, frame));
            let _ = self.outcomes.send(Outcome::Registered);
        }
    }

    /// An ERROR or ACK frame: the server is ours. Print what it says; if it answers the
    /// LOGIN or REG the command loop waits on, hand that over too.
    fn reply(&self, frame: &Value) {
        {
            let mut st = self.session.state();
            st.ours = true;
            let errno = frame.get("errno").and_then(Value::as_i64);
            if errno == Some(errno::REPLACED) {
                // A newer session of ours took over: this one must not come back.
                st.resume.replaced = true;
            }
            if errno == Some(errno::LOGIN_TIMEOUT) && st.user.is_none() {
                // The server closes an idle connection at the menu: not worth a line,
                // the next login or register connects again.
                st.login_timed_out = true;
                return;
            }
        }
        if let Some(line) = ui::reply_line(frame) {
            ui::emit(&line);
        }
        if frame.get("msgid").and_then(Value::as_i64) != Some(msgid::ERROR) {
            return;
        }
        let outcome = match frame.get("reqmsgid").and_then(Value::as_i64) {
            Some(msgid::LOGIN) => self
                .take_awaiting(|a| *a == Awaiting::Login)
                .map(|_| Outcome::LoginFailed),
            Some(msgid::REG) => self
                .take_awaiting(|a| matches!(a, Awaiting::Reg { .. }))
                .map(|_| Outcome::Registered),
            _ => None,
        };
        if let Some(o) = outcome {
            let _ = self.outcomes.send(o);
        }
    }
}

/// The LOGIN_ACK or CONTACTS_ACK list `key` (strings holding JSON), parsed by `parse`;
/// malformed elements are skipped.
fn wire_list<T>(frame: &Value, key: &str, parse: fn(&str) -> Option<T>) -> Vec<T> {
    frame
        .get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| parse(s.as_str()?)).collect())
        .unwrap_or_default()
}

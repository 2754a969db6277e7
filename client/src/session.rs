//! Session: the client's state shared by the command loop, the reader thread and the
//! heartbeat — the connection's write half, who is logged in, and what the server has said.
//!
//! A connection the server closed at the menu because nobody logged in in time (error
//! 113) is not an error: the session notes it and connects again at the next request.
//!
//! One `Mutex<State>` plus one `Condvar` ([`Session::changed`]): every change that someone
//! may wait for (a frame arrived, a login happened, the heartbeat is due, we are closing)
//! notifies it. The socket's write half has its own mutex so that one frame is one
//! `write_all`, never interleaved with another thread's frame.

use std::collections::VecDeque;
use std::io;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use chat::protocol;
use serde_json::{json, Value};

use crate::resume::Resume;
use crate::transport::{Connector, ReadHalf, WriteHalf};

/// The smallest gap between two frames while the server may be a legacy one: the original
/// server assumes one `read` is one frame and aborts on two, so a scripted client must not
/// let the kernel coalesce its frames.
pub const LEGACY_SEND_GAP: Duration = Duration::from_millis(40);

/// How long the output must have been quiet before [`Session::settle`] returns when the
/// server offers no PONG to wait for.
pub const QUIET: Duration = Duration::from_millis(300);

/// The longest [`Session::settle`] waits in any case.
pub const SETTLE_MAX: Duration = Duration::from_secs(3);

/// The logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user id (the login name on the wire).
    pub id: i64,
    /// The user's display name, as the server reported it in LOGIN_ACK.
    pub name: String,
}

/// The request the command loop is blocked on, so the reader knows who gets the answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Awaiting {
    /// A LOGIN: the LOGIN_ACK (or an ERROR frame with `reqmsgid` 1) answers it.
    Login,
    /// A REG for this name: the REG_ACK (or an ERROR frame with `reqmsgid` 4) answers it.
    Reg {
        /// The name being registered, for the result line.
        name: String,
    },
}

/// What the reader thread hands to the command loop once it has printed an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// LOGIN succeeded; the banner, offline messages and command list are printed.
    LoggedIn,
    /// LOGIN failed; the reason is printed.
    LoginFailed,
    /// REG was answered (either way); the result line is printed.
    Registered,
}

/// Which list a CONTACTS request (msgid 15) was sent for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contacts {
    /// `friends`: the friend list.
    Friends,
    /// `groups`: the groups with their members.
    Groups,
}

/// The mutable part of the session, behind [`Session::state`].
#[derive(Debug)]
pub struct State {
    /// The logged-in user, set by the reader on a successful LOGIN_ACK.
    pub user: Option<User>,
    /// The request the command loop waits for, if any.
    pub awaiting: Option<Awaiting>,
    /// The server has sent one of our extended frames (ERROR, ACK or PONG): it is ours, so
    /// frames need no pacing and a PING/PONG round trip marks the end of its replies.
    pub ours: bool,
    /// When the last frame was received (the connect time before any).
    pub last_rx: Instant,
    /// When the last frame was sent (PINGs included), for pacing.
    pub last_tx: Option<Instant>,
    /// When the last request other than a PING was sent, for [`Session::settle`].
    pub last_request: Option<Instant>,
    /// PINGs written so far.
    pub pings_sent: u64,
    /// PONGs received so far; PONGs come in the order of the PINGs.
    pub pongs: u64,
    /// When the heartbeat sends its next PING; `None` while logged out.
    pub next_ping: Option<Instant>,
    /// We are exiting: the server closing the connection is expected, not an error.
    pub closing: bool,
    /// The reader thread has stopped (the connection is gone).
    pub reader_done: bool,
    /// The server closed the connection because nobody logged in in time (error 113):
    /// connect again at the next request instead of exiting.
    pub dropped: bool,
    /// The server said error 113 on this connection: its close is the login timeout.
    pub login_timed_out: bool,
    /// The CONTACTS requests sent and not answered yet, oldest first.
    pub contacts: VecDeque<Contacts>,
    /// The last `cid` put on a chat (interactive mode asks for confirmations).
    pub last_cid: i64,
    /// The token, the `dseq`s seen and the acks of a session that can be resumed.
    pub resume: Resume,
}

/// The state shared by the client's threads. Safe to use from any thread.
pub struct Session {
    /// The connection's write half; locked for the duration of one frame.
    writer: Mutex<WriteHalf>,
    /// How to connect again after the login timeout closed the connection.
    connector: Connector,
    /// Stdin is a terminal: confirmations and the extra commands are shown.
    interactive: bool,
    /// See [`State`].
    state: Mutex<State>,
    /// Notified whenever `state` changes in a way someone may wait for.
    pub changed: Condvar,
    /// The heartbeat interval; `None` disables the periodic PING.
    heartbeat: Option<Duration>,
}

impl Session {
    /// A session writing to `writer` (connected by `connector`), with the given
    /// heartbeat interval.
    pub fn new(
        writer: WriteHalf,
        connector: Connector,
        interactive: bool,
        heartbeat: Option<Duration>,
    ) -> Session {
        Session {
            writer: Mutex::new(writer),
            connector,
            interactive,
            state: Mutex::new(State {
                user: None,
                awaiting: None,
                ours: false,
                last_rx: Instant::now(),
                last_tx: None,
                last_request: None,
                pings_sent: 0,
                pongs: 0,
                next_ping: None,
                closing: false,
                reader_done: false,
                dropped: false,
                login_timed_out: false,
                contacts: VecDeque::new(),
                last_cid: 0,
                resume: Resume::default(),
            }),
            changed: Condvar::new(),
            heartbeat,
        }
    }

    /// Locks the shared state. A panicked holder leaves consistent data, so poisoning is
    /// ignored.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits on [`Session::changed`] for at most `timeout`.
    pub fn wait<'a>(
        &self,
        guard: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Option<Duration> {
        self.heartbeat
    }

    /// Whether stdin is a terminal (a person, not a script).
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// If the server dropped the idle connection at the menu, connects again and returns
    /// the new read half for a new reader thread.
    pub fn reconnect_if_dropped(&self) -> io::Result<Option<ReadHalf>> {
        if !self.state().dropped {
            return Ok(None);
        }
        self.replace_connection().map(Some)
    }

    /// Connects again (to the same address) and makes the new connection the
    /// session's: its write half replaces the old, and the per-connection state
    /// starts afresh. Returns the read half, for the reader.
    pub fn replace_connection(&self) -> io::Result<ReadHalf> {
        let (read, write) = self.connector.connect()?;
        *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = write;
        let mut st = self.state();
        st.dropped = false;
        st.login_timed_out = false;
        st.reader_done = false;
        st.ours = false;
        st.last_rx = Instant::now();
        st.last_tx = None;
        st.last_request = None;
        st.pings_sent = 0;
        st.pongs = 0;
        st.contacts.clear();
        self.changed.notify_all();
        Ok(read)
    }

    /// Sends one frame as compact JSON plus `0x00`, in one write. While the server may be a
    /// legacy one, keeps [`LEGACY_SEND_GAP`] between frames.
    pub fn send(&self, frame: &Value) -> io::Result<()> {
        self.send_counted(frame, false).map(|_| ())
    }

    /// Sends a PING and returns its sequence number (the PONG count that answers it).
    pub fn ping(&self) -> io::Result<u64> {
        self.send_counted(&json!({"msgid": protocol::msgid::PING}), true)
    }

    fn send_counted(&self, frame: &Value, is_ping: bool) -> io::Result<u64> {
        let bytes = protocol::encode(frame);
        let mut writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let pause = {
            let st = self.state();
            match st.last_tx {
                Some(t) if !st.ours => LEGACY_SEND_GAP.checked_sub(t.elapsed()),
                _ => None,
            }
        };
        if let Some(pause) = pause {
            thread::sleep(pause);
        }
        writer.write_frame(&bytes)?;
        let mut st = self.state();
        let now = Instant::now();
        st.last_tx = Some(now);
        if is_ping {
            st.pings_sent += 1;
        } else {
            st.last_request = Some(now);
        }
        Ok(st.pings_sent)
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<User> {
        self.state().user.clone()
    }

    /// Records a successful login: the heartbeat sends a PING at once (which also tells us
    /// whether the server is ours) and then every interval.
    pub fn logged_in(&self, user: User) {
        let mut st = self.state();
        st.user = Some(user);
        st.next_ping = Some(Instant::now());
        self.changed.notify_all();
    }

    /// Logs out if logged in: forgets the user, stops the heartbeat, sends LOGINOUT.
    pub fn logout(&self) -> io::Result<()> {
        let user = {
            let mut st = self.state();
            st.next_ping = None;
            self.changed.notify_all();
            st.user.take()
        };
        match user {
            Some(u) => self.send(&crate::commands::logout_request(u.id)),
            None => Ok(()),
        }
    }

    /// Waits until the replies to what we sent have had a chance to arrive, at most
    /// [`SETTLE_MAX`]: with our server, until a fresh PING's PONG (the server answers a
    /// connection's requests in order, so everything before it has been sent); otherwise
    /// until no request was sent and nothing was received for [`QUIET`].
    pub fn settle(&self) {
        let deadline = Instant::now() + SETTLE_MAX;
        let mut barrier: Option<u64> = None;
        let mut st = self.state();
        loop {
            if st.closing || st.reader_done {
                return;
            }
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let wake = if st.ours {
                match barrier {
                    None => {
                        drop(st);
                        match self.ping() {
                            Ok(seq) => barrier = Some(seq),
                            Err(_) => return,
                        }
                        st = self.state();
                        continue;
                    }
                    Some(seq) if st.pongs >= seq => return,
                    Some(_) => deadline,
                }
            } else {
                let last = st.last_request.map_or(st.last_rx, |t| t.max(st.last_rx));
                let quiet_until = last + QUIET;
                if now >= quiet_until {
                    return;
                }
                quiet_until.min(deadline)
            };
            st = self.wait(st, wake - now);
        }
    }

    /// Ends the session for a clean exit: marks it closing (so the reader treats the end of
    /// the connection as expected), sends FIN after anything already written, and gives
    /// the reader up to `grace` to see the server close its side, so that a final LOGINOUT
    /// is delivered rather than reset.
    pub fn close(&self, grace: Duration) {
        {
            let mut st = self.state();
            st.closing = true;
            st.next_ping = None;
            self.changed.notify_all();
        }
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .shutdown();
        let deadline = Instant::now() + grace;
        let mut st = self.state();
        while !st.reader_done {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self.wait(st, deadline - now);
        }
    }

    /// Reports `why` (the connection is gone) and exits with status 1, unless we are
    /// closing anyway, in which case it only records that the reader has stopped, or the
    /// server only closed an idle connection at the menu (login timeout), in which case
    /// the next request connects again.
    pub fn connection_lost(&self, why: &str) {
        let quiet = {
            let mut st = self.state();
            st.reader_done = true;
            if st.login_timed_out && st.user.is_none() && !st.closing {
                st.dropped = true;
            }
            self.changed.notify_all();
            st.closing || st.dropped
        };
        if quiet {
            return;
        }
        crate::ui::error(why);
        crate::input::restore_terminal();
        std::process::exit(1);
    }
}

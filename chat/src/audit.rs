//! Audit: one log line per session event (target `audit`), each with the counter
//! it moves. Called from workers and service threads, never from an IO loop, so a
//! slow log sink cannot stall a loop.
//!
//! Lines are `key=value` pairs after the event name, e.g.
//! `login ok user=7 peer=127.0.0.1:51234`; with `--log-format json` the whole line
//! is the `msg` of a JSON record.

use std::net::SocketAddr;

use crate::protocol::errno;
use crate::stats::{Login, Stats};

/// The log target of every audit line (filter with `RUST_LOG=audit=info`).
pub const TARGET: &str = "audit";

/// Why a logged-in session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client sent LOGINOUT.
    Logout,
    /// The connection closed.
    Closed,
    /// The server shut down.
    Shutdown,
    /// A fatal protocol error closed it.
    ProtocolError,
    /// An operator kicked the user.
    Kicked,
    /// A newer session of the user resumed and took over.
    Replaced,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Logout => "logout",
            End::Closed => "closed",
            End::Shutdown => "shutdown",
            End::ProtocolError => "protocol-error",
            End::Kicked => "kicked",
            End::Replaced => "replaced",
        }
    }
}

impl Stats {
    /// A user logged in.
    pub fn login_ok(&self, user: i64, peer: SocketAddr) {
        self.login(Login::Ok);
        log::info!(target: TARGET, "login ok user={user} peer={peer}");
    }

    /// A login was refused (`why`: bad-credentials, already-online, unavailable).
    pub fn login_failed(&self, user: i64, peer: SocketAddr, why: &str) {
        self.login(Login::Failed);
        log::info!(target: TARGET, "login failed user={user} peer={peer} reason={why}");
    }

    /// The hook for the login throttle: a login refused before its password was
    /// checked, because this user or peer failed too often.
    pub fn login_throttled(&self, user: i64, peer: SocketAddr) {
        self.login(Login::Throttled);
        log::info!(target: TARGET, "login throttled user={user} peer={peer}");
    }

    /// A logged-in session ended.
    pub fn session_end(&self, user: i64, peer: SocketAddr, how: End) {
        self.logout();
        if how == End::Kicked {
            self.kick();
        }
        log::info!(target: TARGET, "{} user={user} peer={peer}", how.as_str());
    }

    /// A request was answered with a protocol error (msgid 11); `user` is 0 before a
    /// login. Rate limiting (errno 109) is logged at debug: a flood would otherwise
    /// write a line per dropped request.
    pub fn protocol_error_from(&self, user: i64, peer: SocketAddr, errno: i64, msgid: i64) {
        self.protocol_error(errno);
        let level = if errno == errno::RATE_LIMITED {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        log::log!(target: TARGET, level,
            "protocol-error errno={errno} msgid={msgid} user={user} peer={peer}");
    }
}

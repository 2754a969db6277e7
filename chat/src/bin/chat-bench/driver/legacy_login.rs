//! LOGIN, and LOGINOUT then LOGIN, toward either server. The original parses each read
//! as one document up to its first NUL, so a request that reaches it in the same read
//! as the one before is dropped without a word; a pause after a LOGINOUT (which it
//! never answers) avoids that only while its IO thread is not held up longer by its
//! database. So toward a legacy target a LOGIN with no answer after --legacy-retry-ms
//! goes again, and one refused as already online (the LOGINOUT was the one dropped)
//! goes again after a new LOGINOUT. Toward ours (unless --legacy forces the legacy
//! pacing on it too), which answers every request in order, nothing is retried.

use chat::protocol::msgid;
use serde_json::{json, Value};
use std::time::Duration;

use super::{send, with_driver, Driver, Phase, UserState};

/// The original's errno for a LOGIN of a user it has online.
const ERRNO_ONLINE: i64 = 2;

impl Driver {
    /// Sends user `i`'s first LOGIN, after its registration was answered (so it
    /// cannot share a read with it, and is not retried).
    pub(super) fn login(&mut self, i: usize) {
        self.users[i].login_sent_us = self.shared.now_us();
        self.next_login_try(i);
        self.send_login(i);
    }

    /// Logs user `i` out and, once the LOGINOUT has been read on its own, in again.
    /// `fresh`: a new login whose latency is measured from this LOGIN (not a retry).
    pub(super) fn logout_then_login(&mut self, i: usize, fresh: bool) {
        let t = self.next_login_try(i);
        let u = &self.users[i];
        if let Some(conn) = &u.conn {
            send(conn, &json!({"msgid": msgid::LOGINOUT, "id": u.id}));
        }
        self.after_unanswered(move |d| {
            if d.users[i].login_try == t {
                if fresh {
                    d.users[i].login_sent_us = d.shared.now_us();
                }
                d.send_login_retried(i, t);
            }
        });
    }

    /// Toward a legacy target, takes care of the replies a LOGIN sent again can bring:
    /// the answer to the one before it (it was only late), which is dropped, and
    /// "already online" when the LOGINOUT before it was the request dropped, after
    /// which both go again. Returns whether frame `v` (msgid `id`) was taken care of.
    pub(super) fn legacy_login_reply(&mut self, i: usize, id: i64, v: &Value) -> bool {
        if !self.shared.legacy {
            return false;
        }
        let errno = v.get("errno").and_then(Value::as_i64);
        let u = &mut self.users[i];
        let waiting = matches!(u.state, UserState::Relogin | UserState::Cycling);
        let late = match id {
            // A relogin's LOGINs all follow one LOGINOUT, and the first of them to be
            // served moves the user to Ready: "online" while it still waits is never
            // late. A login cycle starts again as soon as one is served, so there
            // "online" may answer the cycle before's second LOGIN.
            msgid::LOGIN_ACK => {
                u.state == UserState::Ready
                    || (u.state == UserState::Cycling
                        && errno == Some(ERRNO_ONLINE)
                        && u.dup_logins > 0)
            }
            // Ours answers a LOGIN on a logged-in connection with an ERROR frame.
            msgid::ERROR => {
                u.dup_logins > 0 && v.get("reqmsgid").and_then(Value::as_i64) == Some(msgid::LOGIN)
            }
            _ => false,
        };
        if late {
            u.dup_logins = u.dup_logins.saturating_sub(1);
            return true;
        }
        if id == msgid::LOGIN_ACK && waiting && errno == Some(ERRNO_ONLINE) {
            self.stats.legacy_retries += 1;
            self.logout_then_login(i, false);
            return true;
        }
        false
    }

    fn next_login_try(&mut self, i: usize) -> u64 {
        let u = &mut self.users[i];
        u.login_try += 1;
        u.login_try
    }

    fn send_login(&self, i: usize) {
        let u = &self.users[i];
        if let Some(conn) = &u.conn {
            send(
                conn,
                &json!({"msgid": msgid::LOGIN, "id": u.id, "password": self.shared.args.password}),
            );
        }
    }

    /// Sends LOGIN number `t`, which follows a LOGINOUT; toward a legacy target, sends
    /// it again if it is still unanswered after --legacy-retry-ms.
    fn send_login_retried(&mut self, i: usize, t: u64) {
        self.send_login(i);
        if self.shared.legacy {
            let retry = Duration::from_millis(self.shared.args.legacy_retry_ms);
            self.lp
                .run_after(retry, move |_| with_driver(|d| d.login_unanswered(i, t)));
        }
    }

    fn login_unanswered(&mut self, i: usize, t: u64) {
        let u = &self.users[i];
        let waiting = matches!(u.state, UserState::Relogin | UserState::Cycling);
        if u.login_try == t && waiting && self.shared.phase() < Phase::Drain {
            self.stats.legacy_retries += 1;
            self.users[i].dup_logins += 1;
            let t = self.next_login_try(i);
            self.send_login_retried(i, t);
        }
    }
}

//! RESUME: logging in again with the token of an earlier session instead of the
//! password. The rule: a token resumes one session only — it is rotated (compare
//! and swap in the store) before the session enters, and a failed entry puts the
//! old one back so the client can retry.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::login::{Entering, Entry};
use super::{ChatService, Result, ServiceError};
use crate::protocol::{self, errno, Parsed, ProtocolError, Request};
use crate::resume_token;
use crate::session::Session;

/// The one refusal for a forged, expired, rotated or revoked token (which one is
/// never said).
const MSG_BAD_TOKEN: &str = "the session cannot be resumed: log in with the password";

impl ChatService {
    pub(super) fn resume(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let acks = parsed.acks;
        let Request::Resume { id, token } = parsed.req else {
            unreachable!("handler registered for RESUME")
        };
        let outcome = self.try_resume(session, (id, acks), &token);
        self.count_login(session, id, outcome)
    }

    fn try_resume(
        &self,
        session: &Arc<Session>,
        (id, acks): (i64, Option<u64>),
        token: &str,
    ) -> Result<Option<&'static str>> {
        if let Some(current) = session.user() {
            return Err(ServiceError::Protocol(
                ProtocolError::already_logged_in(current.id).with_msgid(protocol::msgid::RESUME),
            ));
        }
        let refuse = || {
            session.reply(protocol::encode(&protocol::resume_err(
                errno::BAD_TOKEN,
                MSG_BAD_TOKEN,
            )));
            Ok(Some("bad-token"))
        };
        let Some((stored, expires)) = self.store.resume_token(id)? else {
            return refuse();
        };
        if !resume_token::matches(token, &stored) || expires <= unix_now() {
            return refuse();
        }
        let Some(row) = self.store.user(id)? else {
            return refuse();
        };
        let fresh = resume_token::issue().map_err(|e| {
            log::error!("no randomness for a resume token: {e}");
            ServiceError::Store(crate::store::StoreError::Unavailable(e.to_string()))
        })?;
        let expires = unix_now() + self.resume_ttl.as_secs() as i64;
        if !self
            .store
            .rotate_resume_token(id, &stored, &fresh.hash, expires)?
        {
            // Another RESUME with the same token won the swap.
            return refuse();
        }
        let entering = Entering {
            entry: Entry::Resume(fresh.token),
            acks,
        };
        let entered = self.enter(session, id, &row.name, entering);
        if !matches!(entered, Ok(None) | Ok(Some("closed"))) {
            // Not resumed (busy, unavailable): the old token stays good for a retry.
            if let Err(e) = self
                .store
                .rotate_resume_token(id, &fresh.hash, &stored, expires)
            {
                log::warn!("user {id}: resume token not restored: {e}");
            }
        }
        entered
    }

    /// Issues and stores a new resume token for `id` (an ext LOGIN); `None` (and a
    /// warning) if that failed: the login stands, without a token.
    pub(super) fn grant_token(&self, id: i64) -> Option<String> {
        let issued = match resume_token::issue() {
            Ok(t) => t,
            Err(e) => {
                log::error!("no randomness for a resume token: {e}");
                return None;
            }
        };
        let expires = unix_now() + self.resume_ttl.as_secs() as i64;
        match self.store.put_resume_token(id, &issued.hash, expires) {
            Ok(()) => Some(issued.token),
            Err(e) => {
                log::warn!("user {id}: resume token not stored: {e}");
                None
            }
        }
    }
}

/// Seconds since the Unix epoch (token expiry is stored in these).
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

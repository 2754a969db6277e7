//! CONTACTS (msgid 15): the user's friends and groups with live presence, as LOGIN_ACK
//! lists them (`login_view`), asked for again at any time.
//!
//! Read-only: it reads the store and presence, and changes nothing.

use std::sync::Arc;

use super::{ChatService, Result};
use crate::protocol::{self, Parsed, Request};
use crate::session::Session;

impl ChatService {
    /// CONTACTS (15): answers CONTACTS_ACK (16) with the user's friends and groups.
    pub(super) fn contacts(&self, session: &Arc<Session>, parsed: Parsed) -> Result<()> {
        let Request::Contacts { id } = parsed.req else {
            unreachable!("handler registered for CONTACTS")
        };
        let (friends, groups) = self.login_view(id)?;
        session.reply(protocol::encode(&protocol::contacts(&friends, &groups)));
        Ok(())
    }
}

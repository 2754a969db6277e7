//! The user's own directory: friends and groups with live presence, as LOGIN_ACK lists
//! them and as CONTACTS (msgid 15) asks for them again at any time.
//!
//! Read-only: it reads the store and presence, and changes nothing.

use std::collections::HashMap;
use std::sync::Arc;

use super::{ChatService, Result};
use crate::protocol::{self, Friend, GroupInfo, Member, Parsed, Request};
use crate::session::Session;
use crate::store::StoreError;

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

    /// Friends and groups with live presence, for the LOGIN_ACK.
    pub(super) fn login_view(
        &self,
        id: i64,
    ) -> std::result::Result<(Vec<Friend>, Vec<GroupInfo>), StoreError> {
        let friends = self.store.friends(id)?;
        let groups = self.store.groups_of(id)?;
        let mut ids: Vec<i64> = friends.iter().map(|(f, _)| *f).collect();
        ids.extend(groups.iter().flat_map(|g| g.members.iter().map(|m| m.id)));
        ids.sort_unstable();
        ids.dedup();
        let online: HashMap<i64, bool> =
            ids.iter().copied().zip(self.router.online(&ids)).collect();
        let is_online = |u: i64| online.get(&u).copied().unwrap_or(false);
        let friends = friends
            .into_iter()
            .map(|(fid, name)| Friend {
                id: fid,
                name,
                online: is_online(fid),
            })
            .collect();
        let groups = groups
            .into_iter()
            .map(|g| GroupInfo {
                id: g.id,
                name: g.name,
                desc: g.desc,
                members: g
                    .members
                    .into_iter()
                    .map(|m| Member {
                        id: m.id,
                        name: m.name,
                        role: m.role,
                        online: is_online(m.id),
                    })
                    .collect(),
            })
            .collect();
        Ok((friends, groups))
    }
}

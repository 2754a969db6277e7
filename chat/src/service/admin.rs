//! What the admin module asks of the service: who is online here, and kicking a
//! user wherever in the cluster they are.

use std::sync::Arc;

use super::{close_after, ChatService};
use crate::audit::End;
use crate::bus::BusError;
use crate::protocol::{self, errno, ProtocolError};

/// Where a kick went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kick {
    /// The user was on this node and is being disconnected.
    Here,
    /// The user is on that node, which was told to disconnect them.
    Sent(String),
    /// The user is not online anywhere.
    NotOnline,
}

impl ChatService {
    /// The users online on this node, with their names, by id.
    pub fn online_here(&self) -> Vec<(i64, String)> {
        let mut users: Vec<(i64, String)> = self
            .hub()
            .online_users()
            .into_iter()
            .filter_map(|id| {
                let session = self.hub().get(id)?;
                let user = session.user()?;
                Some((id, user.name.clone()))
            })
            .collect();
        users.sort_unstable();
        users
    }

    /// Disconnects `user` if online on this node: an ERROR frame with errno 135,
    /// then the sign-out and the close. False if the user is not here.
    pub fn kick_here(&self, user: i64) -> bool {
        self.end_here(
            user,
            errno::KICKED,
            "disconnected by an operator",
            End::Kicked,
        )
    }

    /// Closes `user`'s session here because a newer one resumed: an ERROR frame
    /// with errno 121, then the sign-out (which leaves the new claim alone) and the
    /// close. False if the user is not here.
    pub(super) fn replace_here(&self, user: i64) -> bool {
        let msg = "replaced by a newer session of this user";
        self.end_here(user, errno::REPLACED, msg, End::Replaced)
    }

    /// Ends `user`'s session here with an ERROR frame (`code`, `msg`).
    fn end_here(&self, user: i64, code: i64, msg: &str, how: End) -> bool {
        let Some(session) = self.hub().get(user) else {
            return false;
        };
        let frame = protocol::encode(&protocol::error(&ProtocolError::new(code, msg)));
        let session: Arc<_> = session;
        close_after(&session, frame, || self.sign_out(&session, how));
        true
    }

    /// Disconnects `user` here, or (in a cluster) tells the node that has them.
    /// Their resume token is revoked first, so the client cannot simply resume.
    pub fn kick(&self, user: i64) -> Result<Kick, BusError> {
        if let Err(e) = self.store().revoke_resume_token(user) {
            log::error!("kick of user {user}: resume token not revoked: {e}");
        }
        if self.kick_here(user) {
            return Ok(Kick::Here);
        }
        let Some(bus) = self.bus() else {
            return Ok(Kick::NotOnline);
        };
        match bus.locate(&[user])?.pop().flatten() {
            Some(node) if node == bus.node_id() => Ok(Kick::NotOnline),
            Some(node) => {
                bus.publish_kick(&node, user)?;
                Ok(Kick::Sent(node))
            }
            None => Ok(Kick::NotOnline),
        }
    }
}

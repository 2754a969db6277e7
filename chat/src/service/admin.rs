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
        let Some(session) = self.hub().get(user) else {
            return false;
        };
        let e = ProtocolError::new(errno::KICKED, "disconnected by an operator");
        let frame = protocol::encode(&protocol::error(&e));
        let session: Arc<_> = session;
        close_after(&session, frame, || self.sign_out(&session, End::Kicked));
        true
    }

    /// Disconnects `user` here, or (in a cluster) tells the node that has them.
    pub fn kick(&self, user: i64) -> Result<Kick, BusError> {
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

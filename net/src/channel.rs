//! Channel: what the loop dispatches a token's readiness to (internal).

use std::rc::Rc;

use mio::event::Event;

use crate::event_loop::EventLoop;

/// An object registered with a loop's poller under one token: an acceptor, a
/// connection or a connector. muduo's Channel plus its owner in one trait, since
/// mio hands us the token and readiness and there is no fd-to-object map to keep.
pub(crate) trait Channel {
    /// Handles readiness. Called on the loop thread with a clone of the `Rc`, so the
    /// object outlives the event even if it removes itself from the loop.
    fn handle_event(self: Rc<Self>, lp: &EventLoop, event: &Event);
}

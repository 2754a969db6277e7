//! Unit tests of the session: a strand's scheduling, and a test's hook at each live delivery.

use std::cell::RefCell;

use super::*;

/// A test's hook at [`Session::deliver_live`], called with the recipient.
type Delivery = Box<dyn FnMut(&Session)>;

thread_local! {
    /// Runs at the start of every [`Session::deliver_live`] on this thread, with
    /// the recipient's session: a test puts a close or a reply into the moment a
    /// frame is handed to a connection (see [`at_delivery`]).
    pub(crate) static AT_DELIVERY: RefCell<Option<Delivery>> = const { RefCell::new(None) };
}

/// Runs `f` with `hook` called at each [`Session::deliver_live`] it makes on
/// this thread.
pub(crate) fn at_delivery<T>(hook: impl FnMut(&Session) + 'static, f: impl FnOnce() -> T) -> T {
    AT_DELIVERY.set(Some(Box::new(hook)));
    let result = f();
    AT_DELIVERY.set(None);
    result
}

/// A strand woken from its wait for the output is handed to a worker marked
/// scheduled: a job the IO loop pushes before the worker takes it must not
/// schedule it again (two workers would run one strand, and replies could go
/// out of order). Seen failing with `scheduled |= schedule` made `&=`:
/// "woken, yet not marked scheduled".
#[test]
fn a_woken_strand_is_marked_scheduled() {
    let mut s = Strand {
        parked: true,
        ..Strand::default()
    };
    s.jobs.push_back((Job::Shutdown, 0));
    assert!(s.unpark(1024), "the gate is open: the strand must run");
    assert!(s.scheduled, "woken, yet not marked scheduled");
    assert!(!s.parked);
    // A second wake (the output drained again) schedules nothing more.
    s.parked = true;
    assert!(!s.unpark(1024), "already scheduled");
}

/// A strand with nothing queued is not scheduled when the output drains, and
/// one whose next request is still gated stays parked.
#[test]
fn unpark_schedules_only_queued_work_past_the_gate() {
    let mut idle = Strand {
        parked: true,
        ..Strand::default()
    };
    assert!(!idle.unpark(1024));
    assert!(!idle.scheduled && !idle.parked);
    let mut gated = Strand {
        parked: true,
        output_seen: 4096,
        ..Strand::default()
    };
    gated.jobs.push_back((
        Job::Refused {
            frame: Vec::new(),
            errno: 0,
            msgid: -1,
        },
        0,
    ));
    assert!(!gated.unpark(1024), "over the mark: still gated");
    assert!(gated.parked && !gated.scheduled);
}

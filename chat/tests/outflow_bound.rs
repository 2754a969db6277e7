//! Outflow's high-water mark is a hard bound (issue #12: the output buffer of a
//! slow reader overshot a 4 MiB mark to ~9 MB): on a real connection whose peer
//! reads nothing, live frames offered in one burst on the loop — before any
//! high-water callback could run — never take the output buffer past the mark;
//! the first that would is kept aside and the connection counts as congested.
//!
//! Through the server this is invisible from outside (a frame over the mark is in
//! the server's memory either way, and both go back to the store at a close), so
//! the test drives `Outflow` directly on a net connection.

mod loop_server;

use std::sync::mpsc;

use chat::outflow::Outflow;
use loop_server::{Server, TIMEOUT};

/// The mark under test.
const MARK: usize = 64 * 1024;
/// One frame: about a sixth of the mark.
const FRAME: usize = 10_000;
/// Offered in one burst: 10 MB, far more than the kernel's buffers (a loopback
/// send buffer grows to `tcp_wmem`'s maximum, 4 MiB by default) and the mark hold.
const BURST: usize = 1000;

#[test]
fn live_frames_never_take_the_output_past_the_mark() {
    let server = Server::start();
    // The peer reads nothing, with a small receive buffer: the kernel fills up fast.
    let (peer, conn, _) = server.connect(4096);

    let flow = Outflow::new(MARK);
    let (done_tx, done_rx) = mpsc::channel();
    let probe = flow.clone();
    conn.with(move |c| {
        let c = c.expect("still connected");
        let frame = vec![b'x'; FRAME];
        let mut max = 0;
        for _ in 0..BURST {
            probe.offer(Some(c), &frame);
            max = max.max(c.output_bytes());
        }
        let _ = done_tx.send((max, c.output_bytes()));
    });
    let (max, last) = done_rx
        .recv_timeout(TIMEOUT)
        .expect("the burst ran on the loop");
    let spilled = flow.take_spilled();
    eprintln!(
        "outflow: output at most {max} B (mark {MARK}), {last} B at the end, {} frames kept aside",
        spilled.len()
    );
    assert!(
        max <= MARK,
        "the output reached {max} B, past the {MARK} B mark"
    );
    assert!(flow.is_congested(), "a frame over the mark did not congest");
    assert!(
        last + FRAME > MARK,
        "frames were kept aside while the output ({last} B) still had room for one"
    );
    // The frames over the mark are kept (in order, for the drain, or for the
    // store at a close), not dropped.
    assert!(!spilled.is_empty(), "no frame was kept aside");
    assert!(spilled.iter().all(|f| f.len() == FRAME));
    drop(peer);
}

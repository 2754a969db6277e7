//! The IO loop's chat fast path reads a frame and writes the delivered one with a
//! single allocation: the delivered frame (issue #18). Counted by a global allocator
//! that counts the allocations of the calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use chat::protocol::parse_fast_chat;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: the thread's slot may be gone while it exits.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations<R>(f: impl FnOnce() -> R) -> (usize, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

#[test]
fn a_legacy_chat_frame_costs_one_allocation() {
    // What the legacy client and chat-bench send (keys in any order).
    let frames = [
        r#"{"msgid":6,"id":13,"from":"zhang san","toid":15,"msg":"hello","time":"2026-01-01 00:00:00"}"#,
        r#"{"id":1,"msg":"1 2 3 pad","msgid":6,"name":"u1","time":"2026-01-01 00:00:00","to":2,"toid":2}"#,
    ];
    for frame in frames {
        let (n, wire) = allocations(|| {
            let chat = parse_fast_chat(frame.as_bytes()).expect("takes the fast path");
            chat.delivery_wire("sender name", || unreachable!("the frame has a time"))
        });
        assert!(wire.ends_with("}\0"), "{wire:?}");
        assert_eq!(n, 1, "allocations for {frame}");
    }
}

#[test]
fn a_frame_without_time_costs_the_time_text_too() {
    let frame = r#"{"msgid":6,"id":1,"toid":2,"msg":"hi"}"#;
    let (n, wire) = allocations(|| {
        let chat = parse_fast_chat(frame.as_bytes()).expect("takes the fast path");
        chat.delivery_wire("n", || "2030-01-01 00:00:00".to_owned())
    });
    assert!(wire.contains(r#""time":"2030-01-01 00:00:00""#), "{wire}");
    // The frame and the fallback time's text.
    assert_eq!(n, 2);
}

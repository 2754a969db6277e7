//! Fuzz harness for the chat codec and request parser; the checks live in [`harness`] so
//! the fuzz targets, the `replay` example and `chat/tests/fuzz_props.rs` share them.

pub mod harness;

pub use harness::{fuzz_decoder, fuzz_frame_reader, fuzz_parse_request, fuzz_websocket};

//! Fuzz target `websocket`: the WebSocket listener's request head, its reader of client frames (in reads chosen by the input) and its framer's give-back of unwritten output.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chat_fuzz::fuzz_websocket(data));

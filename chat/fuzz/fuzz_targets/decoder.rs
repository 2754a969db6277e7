//! Fuzz target `decoder`: The server's streaming decoder over a net::Buffer, in reads chosen by the input's first bytes, against a whole-stream reference.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chat_fuzz::fuzz_decoder(data));

//! Fuzz target `parse_request`: One frame's bytes through parse_frame and parse_request, as the server's IO loop does.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| chat_fuzz::fuzz_parse_request(data));

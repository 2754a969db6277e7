//! Replays fuzz inputs through a target's checks without libFuzzer, on stable Rust:
//! `cargo run --example replay -- <decoder|parse_request|frame_reader|websocket> <file or dir>...`.
//! Exits non-zero (with the panic message) on the first input that fails.

use std::path::{Path, PathBuf};
use std::{env, fs, process};

fn main() {
    let mut args = env::args().skip(1);
    let target = args.next().unwrap_or_default();
    let check: fn(&[u8]) = match target.as_str() {
        "decoder" => chat_fuzz::fuzz_decoder,
        "parse_request" => chat_fuzz::fuzz_parse_request,
        "frame_reader" => chat_fuzz::fuzz_frame_reader,
        "websocket" => chat_fuzz::fuzz_websocket,
        _ => {
            eprintln!("usage: replay <decoder|parse_request|frame_reader|websocket> <file or dir>...");
            process::exit(2);
        }
    };
    let mut files = Vec::new();
    for arg in args {
        collect(Path::new(&arg), &mut files);
    }
    files.sort();
    for f in &files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        eprintln!("{}", f.display());
        check(&data);
    }
    println!("{target}: {} inputs passed", files.len());
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
            collect(&entry.expect("directory entry").path(), out);
        }
    } else {
        out.push(path.to_path_buf());
    }
}

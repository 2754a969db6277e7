//! Property tests for the codec and the request parser, with a seeded generator (no new
//! dependency), plus a replay of the checked-in fuzz corpus (`chat/fuzz/corpus/`).
//!
//! The invariant checks are the fuzz targets' own (`chat/fuzz/src/harness.rs`), so what
//! the fuzzers check is checked here on every `cargo test`. A failure prints the seed of
//! the case; `FUZZ_PROPS_SEED=<n>` changes the base seed and `FUZZ_PROPS_SCALE=<k>` runs
//! `k` times as many cases.

mod fuzz_ws;
#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use chat::codec::{CodecError, DEFAULT_FRAME_LIMIT};
use chat::protocol::{self, errno};
use harness::{End, Rng};
use serde_json::{json, Map, Value};

/// The base seed, fixed so that CI runs are reproducible.
fn base_seed() -> u64 {
    std::env::var("FUZZ_PROPS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c4_a75e_2fe0)
}

/// `n` cases, times `FUZZ_PROPS_SCALE`.
fn cases(n: usize) -> usize {
    let scale: usize = std::env::var("FUZZ_PROPS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    n * scale.max(1)
}

/// Runs `body` once per case with its own generator, naming the case's seed on failure.
fn for_cases(name: &str, n: usize, mut body: impl FnMut(&mut Rng)) {
    for case in 0..cases(n) {
        let seed = base_seed() ^ (case as u64).wrapping_mul(0x9e37_79b9) ^ name.len() as u64;
        let mut rng = Rng::new(seed);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(&mut rng)));
        if let Err(e) = result {
            eprintln!("{name}: case {case} failed (generator seed {seed})");
            std::panic::resume_unwind(e);
        }
    }
}

// ---- Generators -----------------------------------------------------------------------

/// Request keys (protocol.md §3) plus a few of ours and some unicode.
const KEYS: &[&str] = &[
    "id",
    "toid",
    "to",
    "password",
    "name",
    "msg",
    "time",
    "friendid",
    "groupid",
    "groupname",
    "groupdesc",
    "ext",
    "msgid",
    "errno",
    "键",
    "ключ",
    "",
    "😀",
];

fn rand_string(rng: &mut Rng) -> String {
    const PIECES: &[&str] = &[
        "a",
        "bob",
        " ",
        "\"",
        "\\",
        "\0",
        "\n",
        "\u{1}",
        "}",
        "{",
        "[",
        "]",
        ":",
        ",",
        "你好",
        "😀",
        "é",
        "\u{7f}",
        "\u{2028}",
        "2024-01-01 00:00:00",
    ];
    let len = match rng.below(10) {
        0 => rng.range(40, 300),
        1 => 0,
        _ => rng.range(1, 8),
    };
    (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
}

fn rand_int(rng: &mut Rng) -> Value {
    match rng.below(9) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(i64::MAX),
        3 => json!(i64::MIN),
        4 => json!(u64::MAX),
        5 => json!(i64::MAX as u64 + 1),
        6 => json!(rng.next_u64() as i64),
        _ => json!(rng.range(1, 30)),
    }
}

/// A float that survives a JSON round trip exactly (a multiple of 1/8, 1e22 or -0.0).
fn rand_float(rng: &mut Rng) -> Value {
    match rng.below(4) {
        0 => json!(1e22),
        1 => json!(-0.0),
        _ => json!((rng.range(0, 4000) as f64 - 2000.0) / 8.0),
    }
}

fn rand_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => rand_int(rng),
        3 => rand_float(rng),
        4 | 5 => Value::String(rand_string(rng)),
        6 => Value::Array(
            (0..rng.below(4))
                .map(|_| rand_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(rand_object(rng, depth - 1)),
    }
}

fn rand_object(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    (0..rng.below(5))
        .map(|_| {
            let key = if rng.one_in(3) {
                rand_string(rng)
            } else {
                KEYS[rng.below(KEYS.len())].to_owned()
            };
            (key, rand_value(rng, depth))
        })
        .collect()
}

/// A request-like object: mostly a real msgid and plausible fields, often one that is not.
fn rand_request(rng: &mut Rng) -> Value {
    let mut obj = rand_object(rng, 2);
    let msgid = match rng.below(10) {
        0 => rand_value(rng, 1),
        1 => rand_int(rng),
        _ => json!(rng.range(1, 14)),
    };
    if !rng.one_in(20) {
        obj.insert("msgid".into(), msgid);
    }
    for key in &KEYS[..12] {
        if rng.one_in(2) {
            continue;
        }
        let v = match (rng.below(3), *key) {
            (0, _) => rand_value(rng, 2),
            (_, "id" | "toid" | "to" | "friendid" | "groupid") if rng.one_in(3) => rand_int(rng),
            (_, "id" | "toid" | "to" | "friendid" | "groupid") => json!(rng.range(1, 1000)),
            (_, "ext") => [json!(0), json!(1), json!(true), json!(false)][rng.below(4)].clone(),
            (1, _) if rng.one_in(3) => {
                // A length at a bound of one of the string fields.
                let n = [0, 1, 49, 50, 51, 199, 200, 201, 255, 256, 257][rng.below(11)];
                Value::String("a".repeat(n))
            }
            _ => Value::String(rand_string(rng)),
        };
        obj.insert((*key).to_owned(), v);
    }
    Value::Object(obj)
}

/// A limit for a stream test: mostly small, so that oversize paths are exercised.
fn rand_limit(rng: &mut Rng) -> usize {
    [0, 1, 7, 16, 40, 100, 300, 1024, DEFAULT_FRAME_LIMIT][rng.below(9)]
}

/// A hostile byte stream around `limit`: valid frames, truncated frames, garbage, deep
/// nesting, strings near the limit, invalid UTF-8, NULs and whitespace.
fn rand_stream(rng: &mut Rng, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(10) {
        let frame = |rng: &mut Rng| protocol::encode(&rand_request(rng));
        match rng.below(14) {
            0..=3 => out.extend(frame(rng)),
            4 => {
                let mut f = frame(rng);
                f.pop();
                out.extend(f);
            }
            5 => {
                let f = frame(rng);
                out.extend(&f[..rng.below(f.len())]);
            }
            6 => out.extend((0..rng.below(6)).map(|_| rng.next_u64() as u8)),
            7 => {
                let n = rng.range(1, 300.min(limit + 2).max(1));
                out.extend(std::iter::repeat_n(b'[', n));
                out.extend(std::iter::repeat_n(b']', rng.below(n + 2)));
            }
            8 if rng.one_in(4) => {
                // A string frame of about `limit` bytes.
                let target = limit.min(70_000) + rng.range(0, 20);
                out.extend(b"{\"msg\":\"");
                out.extend(std::iter::repeat_n(b'x', target.saturating_sub(20)));
                out.extend(b"\",\"msgid\":6}");
            }
            9 => out.extend(b"{\"msg\":\"\xff\xfe\xc3\",\"msgid\":6}"),
            10 => out.extend((0..rng.below(5)).map(|_| b"\0 \t\r\n"[rng.below(5)])),
            11 => out.extend(std::iter::repeat_n(0, rng.below(4))),
            12 => out.extend(br#"{"a":"}\"{","b":"\\","c":"\\\"}","msgid":13}"#),
            _ => out.extend(br#"{"msgid":13}"#),
        }
    }
    out
}

/// Read sizes: all at once, one byte, small, or around the limit.
fn rand_chunker(rng: &mut Rng, limit: usize) -> impl FnMut(usize) -> usize {
    let mode = rng.below(5);
    let max = match mode {
        0 => usize::MAX,
        1 => 1,
        2 => 16,
        3 => limit.max(1) * 2,
        _ => 1024,
    };
    let mut rng = Rng::new(rng.next_u64());
    move |left| rng.range(1, max.min(left))
}

/// Cuts `stream` at `cuts` random points.
fn rand_splits(rng: &mut Rng, stream: &[u8]) -> Vec<usize> {
    let mut cuts: Vec<usize> = (0..rng.below(6))
        .map(|_| rng.below(stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut prev = 0;
    cuts.into_iter()
        .map(|c| {
            let n = c - prev;
            prev = c;
            n
        })
        .collect()
}

// ---- Properties -----------------------------------------------------------------------

#[test]
fn decoder_survives_hostile_streams() {
    let mut seen = [0usize; 4]; // frames, clean ends, garbage, oversize
    for_cases("decoder_survives_hostile_streams", 2500, |rng| {
        let limit = rand_limit(rng);
        let stream = rand_stream(rng, limit);
        let drive = harness::drive_decoder(limit, &stream, rand_chunker(rng, limit));
        assert_eq!(drive.split, harness::reference_split(limit, &stream));
        for frame in &drive.split.frames {
            let _ = harness::check_frame(frame);
        }
        seen[0] += drive.split.frames.len();
        match drive.split.end {
            End::Pending(_) => seen[1] += 1,
            End::Failed(CodecError::Garbage { .. }) => seen[2] += 1,
            End::Failed(_) => seen[3] += 1,
        }
    });
    // The generator must reach every outcome, or the property says little.
    assert!(seen.iter().all(|&n| n > 50), "outcomes {seen:?}");
}

#[test]
fn decoder_memory_is_bounded_by_the_limit() {
    // A peer that never closes its frame: the buffer may hold at most limit + one read.
    for limit in [0, 1, 100, 4096] {
        let stream = [b"{\"msg\":\"".as_slice(), &vec![b'a'; 3 * limit + 100]].concat();
        for read in [1, 7, 1000] {
            let drive = harness::drive_decoder(limit, &stream, |_| read);
            assert_eq!(drive.split.end, End::Failed(CodecError::Oversize { limit }));
            assert!(
                drive.max_buffered <= limit + read,
                "{} > {limit} + {read}",
                drive.max_buffered
            );
        }
    }
}

#[test]
fn decoder_work_is_linear_in_a_bytewise_feed() {
    // One 1 MiB frame (under a 2 MiB limit), braces and escapes inside its strings, fed one
    // byte per read: a decoder that rescans the partial frame would do ~5·10¹¹ steps.
    let filler = "ab{c}[d]\\\"e\\\\ ".repeat(75_000);
    let frame = format!("{{\"msg\":\"{filler}\",\"msgid\":6,\"x\":[{{}}]}}");
    assert!(frame.len() >= 1 << 20);
    let stream = [frame.as_bytes(), b"\0"].concat();
    let t = Instant::now();
    let drive = harness::drive_decoder(2 << 20, &stream, |_| 1);
    let elapsed = t.elapsed();
    assert_eq!(drive.split.frames, vec![frame.as_bytes().to_vec()]);
    assert_eq!(drive.split.end, End::Pending(0));
    assert_eq!(drive.reads, stream.len());
    assert_eq!(drive.decode_calls, stream.len() + 1);
    assert!(
        elapsed < Duration::from_secs(10),
        "bytewise feed took {elapsed:?}"
    );
}

#[test]
fn split_points_do_not_change_the_frames() {
    for_cases("split_points_do_not_change_the_frames", 1500, |rng| {
        let values: Vec<Value> = (0..rng.below(6))
            .map(|_| Value::Object(rand_object(rng, 3)))
            .collect();
        let mut stream = Vec::new();
        for v in &values {
            stream.extend((0..rng.below(3)).map(|_| b"\0 \t\r\n"[rng.below(5)]));
            let text = if rng.one_in(4) {
                serde_json::to_vec_pretty(v)
            } else {
                serde_json::to_vec(v)
            };
            stream.extend(text.expect("a Value serialises"));
        }
        stream.extend((0..rng.below(3)).map(|_| b"\0 \t\r\n"[rng.below(5)]));
        let mut sizes = rand_splits(rng, &stream).into_iter();
        let drive = harness::drive_decoder(DEFAULT_FRAME_LIMIT, &stream, |_| {
            sizes.next().unwrap_or(usize::MAX)
        });
        assert_eq!(drive.split.end, End::Pending(0));
        let decoded: Vec<Value> = drive
            .split
            .frames
            .iter()
            .map(|f| chat::codec::parse_frame(f).expect("a valid frame"))
            .collect();
        assert_eq!(decoded, values);
    });
}

#[test]
fn parse_request_on_random_values() {
    let mut outcomes = std::collections::BTreeMap::new();
    for_cases("parse_request_on_random_values", 4000, |rng| {
        let v = if rng.one_in(30) {
            rand_value(rng, 2)
        } else {
            rand_request(rng)
        };
        let errno = match harness::check_parse_request(v) {
            Ok(p) => -p.msgid,
            Err(e) => e.errno,
        };
        *outcomes.entry(errno).or_insert(0) += 1;
    });
    // Every error kind and most requests must have been generated.
    for no in [
        errno::NOT_OBJECT,
        errno::BAD_MSGID,
        errno::UNKNOWN_MSGID,
        errno::MISSING_FIELD,
        errno::BAD_FIELD,
    ] {
        assert!(outcomes.contains_key(&no), "no errno {no} in {outcomes:?}");
    }
    let successes = outcomes.keys().filter(|&&k| k < 0).count();
    assert!(successes >= 7, "too few request kinds parsed: {outcomes:?}");
}

#[test]
fn frame_reader_legacy_and_terminated_frames() {
    for_cases("frame_reader_legacy_and_terminated_frames", 1500, |rng| {
        let values: Vec<Value> = (0..rng.range(1, 8)).map(|_| rand_request(rng)).collect();
        let mut stream = Vec::new();
        for v in &values {
            let mut bytes = protocol::encode(v);
            if rng.one_in(2) {
                bytes.pop(); // a legacy server: bare JSON, no terminator
            }
            stream.extend(bytes);
        }
        let expected: Vec<_> = values.iter().cloned().map(Ok).collect();
        let limit = if rng.one_in(4) {
            1024
        } else {
            DEFAULT_FRAME_LIMIT
        };
        let got = harness::drive_frame_reader(limit, &stream, rand_chunker(rng, 1024));
        if expected
            .iter()
            .all(|v| v.as_ref().is_ok_and(|v| v.to_string().len() <= limit))
        {
            assert_eq!(got, expected);
        }
        // Whatever the limit, the reader agrees with the reference split.
        let reference = harness::reference_split(limit, &stream);
        assert_eq!(got, harness::expected_reader_outcomes(&reference));
    });
}

#[test]
fn frame_reader_on_hostile_streams() {
    for_cases("frame_reader_on_hostile_streams", 1500, |rng| {
        let limit = rand_limit(rng);
        let stream = rand_stream(rng, limit);
        let got = harness::drive_frame_reader(limit, &stream, rand_chunker(rng, limit));
        let reference = harness::reference_split(limit, &stream);
        assert_eq!(got, harness::expected_reader_outcomes(&reference));
    });
}

// ---- Regressions found by the fuzzers --------------------------------------------------

#[test]
fn unknown_msgid_is_reported_before_a_bad_ext() {
    // parse_request judged `ext` before the msgid, so an unknown msgid with a bad `ext` got
    // BAD_FIELD about `ext` instead of the documented UNKNOWN_MSGID
    // (corpus/parse_request/regress-*_bad_ext).
    for (input, msgid) in [
        (json!({"ext": 2, "msgid": 99}), 99),
        (json!({"ext": "1", "msgid": 14}), 14),
    ] {
        let e = harness::check_parse_request(input).unwrap_err();
        assert_eq!(
            (e.errno, e.msgid),
            (errno::UNKNOWN_MSGID, Some(msgid)),
            "{e}"
        );
    }
    // A known msgid still has its `ext` judged before its fields.
    let e = harness::check_parse_request(json!({"ext": 2, "msgid": 3})).unwrap_err();
    assert_eq!(e.errno, errno::BAD_FIELD);
    assert!(e.errmsg.contains("\"ext\""), "{e}");
}

// ---- The checked-in corpus ------------------------------------------------------------

/// Replays every file of `chat/fuzz/corpus/<target>/` through that target's checks.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "{}: only {} inputs",
        dir.display(),
        files.len()
    );
    for f in files {
        let data = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let result = std::panic::catch_unwind(|| check(&data));
        if let Err(e) = result {
            eprintln!("corpus input {} failed", f.display());
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn corpus_decoder() {
    replay("decoder", harness::fuzz_decoder);
}

#[test]
fn corpus_parse_request() {
    replay("parse_request", harness::fuzz_parse_request);
}

#[test]
fn corpus_frame_reader() {
    replay("frame_reader", harness::fuzz_frame_reader);
}

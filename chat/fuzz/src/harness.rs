//! Invariant checks shared by the fuzz targets and `chat/tests/fuzz_props.rs`.
//!
//! Each `fuzz_*` function takes one raw fuzz input, drives the code under test and panics when
//! an invariant breaks, so libFuzzer, the corpus replay in the normal test suite and the
//! property tests all check exactly the same things. This file is compiled twice: as the
//! `chat-fuzz` library (for the targets) and, through `#[path]`, as a module of the
//! `fuzz_props` integration test, so it uses only `chat`, `net` and `serde_json`.

use chat::codec::{self, is_separator, CodecError, Decoded, Decoder, FrameReader};
use chat::protocol::{self, errno, msgid, Parsed, ProtocolError, Request};
use net::Buffer;
use serde_json::Value;

/// SplitMix64: a tiny seeded generator, so every run (and every failure) is reproducible.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator whose whole output is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n` must not be 0.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// How a fuzz input configures a run: its first two bytes, then the byte stream itself.
#[derive(Debug, Clone, Copy)]
pub struct Config<'a> {
    /// The decoder's frame limit.
    pub limit: usize,
    /// Chunking: 0 = the whole stream in one read, 1 = one byte per read, n = random reads
    /// of 1..=n bytes from a generator seeded with n.
    pub chunking: u8,
    /// The bytes on the wire.
    pub stream: &'a [u8],
}

impl<'a> Config<'a> {
    /// Byte 0 picks the limit (low two bits: 0 = the default 64 KiB, 1 = tiny `0..=63`,
    /// 2 = `64..=1072`, 3 = 4096), byte 1 the chunking; the rest is the stream. Inputs
    /// shorter than two bytes use the default limit, one read, and an empty stream.
    pub fn from_input(data: &'a [u8]) -> Self {
        let (b0, b1, stream) = match data {
            [b0, b1, rest @ ..] => (*b0, *b1, rest),
            _ => (0, 0, &[][..]),
        };
        let high = usize::from(b0 >> 2);
        let limit = match b0 & 3 {
            0 => codec::DEFAULT_FRAME_LIMIT,
            1 => high,
            2 => 64 + high * 16,
            _ => 4096,
        };
        Config {
            limit,
            chunking: b1,
            stream,
        }
    }

    /// The read sizes this config stands for, as a closure over the bytes still unread.
    pub fn chunker(&self) -> impl FnMut(usize) -> usize {
        let max = usize::from(self.chunking);
        let mut rng = Rng::new(u64::from(self.chunking));
        move |left| match max {
            0 => left,
            1 => 1,
            _ => rng.range(1, max),
        }
    }
}

/// How a stream ended, as far as framing is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Input ran out; this many bytes of a partial frame are buffered (0 between frames).
    Pending(usize),
    /// The decoder gave up on the stream.
    Failed(CodecError),
}

/// The frames found in a stream, in order, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Each frame's bytes, from its opening `{`/`[` to its closing `}`/`]`, or to the NUL
    /// that cut it short (included).
    pub frames: Vec<Vec<u8>>,
    /// What came after the last frame.
    pub end: End,
}

/// [`drive_decoder`]'s result: the split plus counters for the resource checks.
#[derive(Debug, Clone)]
pub struct Drive {
    /// What the decoder found.
    pub split: Split,
    /// How many times `Decoder::decode` was called.
    pub decode_calls: usize,
    /// How many reads (chunks) were fed.
    pub reads: usize,
    /// The most bytes the buffer ever held.
    pub max_buffered: usize,
}

/// An independent, whole-stream statement of protocol.md §1, to compare the streaming
/// decoder against: skip separators; a frame starts at `{` or `[`; it ends where the
/// bracket depth, counted outside JSON strings, returns to zero, or — cut short — at the
/// first NUL byte, wherever it is; it may be at most `limit` bytes (a cut frame: at most
/// `limit` bytes before its NUL); a partial frame longer than `limit` is already refused.
/// A cut frame is listed in `frames` with its NUL, as [`drive_decoder`] does.
pub fn reference_split(limit: usize, stream: &[u8]) -> Split {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        while pos < stream.len() && is_separator(stream[pos]) {
            pos += 1;
        }
        let Some(&first) = stream.get(pos) else {
            return Split {
                frames,
                end: End::Pending(0),
            };
        };
        if first != b'{' && first != b'[' {
            return Split {
                frames,
                end: End::Failed(CodecError::Garbage { byte: first }),
            };
        }
        let rest = &stream[pos..];
        match frame_len(rest) {
            Scan::Closed(n) | Scan::Cut(n) if n - usize::from(rest[n - 1] == 0) <= limit => {
                frames.push(rest[..n].to_vec());
                pos += n;
            }
            Scan::Closed(_) | Scan::Cut(_) => break,
            Scan::Open if rest.len() > limit => break,
            Scan::Open => {
                return Split {
                    frames,
                    end: End::Pending(rest.len()),
                }
            }
        }
    }
    Split {
        frames,
        end: End::Failed(CodecError::Oversize { limit }),
    }
}

/// How the bracketed value at the front of a stream ends.
enum Scan {
    /// It closes after this many bytes.
    Closed(usize),
    /// A NUL cuts it: this many bytes, the NUL included.
    Cut(usize),
    /// Neither, yet.
    Open,
}

/// Where the bracketed value at the front of `s` ends.
fn frame_len(s: &[u8]) -> Scan {
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            0 => return Scan::Cut(i + 1),
            b'"' => {
                // Jump over the string: a backslash always takes the next byte with it,
                // unless that byte is a NUL.
                i += 1;
                loop {
                    match s.get(i) {
                        None => return Scan::Open,
                        Some(0) => return Scan::Cut(i + 1),
                        Some(b'\\') if s.get(i + 1) == Some(&0) => return Scan::Cut(i + 2),
                        Some(b'\\') => i += 2,
                        Some(b'"') => break,
                        Some(_) => i += 1,
                    }
                }
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Scan::Closed(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Scan::Open
}

/// Feeds `stream` to a [`Decoder`] through a `net::Buffer` exactly as the server's IO loop
/// does (`server.rs` `on_message`), one read of `chunk(bytes_left)` bytes at a time, and
/// checks every step of the decode contract on the way:
/// - `skip` and the bytes before a frame's `start` are separators; a frame starts with
///   `{`/`[`, ends with `}`/`]`, and is at most `limit` bytes;
/// - consumed plus buffered bytes always equal the bytes fed;
/// - between reads the buffer holds at most `limit` bytes (a partial frame), so it never
///   holds more than `limit` plus one read;
/// - `decode` runs at most once per read plus once per frame (no spinning), and an error is
///   only reported when it is true of the buffered bytes.
///
/// Framing only: parse the frames with [`check_frame`].
pub fn drive_decoder(limit: usize, stream: &[u8], mut chunk: impl FnMut(usize) -> usize) -> Drive {
    let mut decoder = Decoder::new(limit);
    let mut buf = Buffer::new();
    let mut frames = Vec::new();
    let (mut fed, mut consumed, mut decode_calls, mut reads, mut max_buffered) = (0, 0, 0, 0, 0);
    while fed < stream.len() {
        let n = chunk(stream.len() - fed).clamp(1, stream.len() - fed);
        buf.append(&stream[fed..fed + n]);
        fed += n;
        reads += 1;
        max_buffered = max_buffered.max(buf.readable_bytes());
        assert!(
            buf.readable_bytes() <= limit + n,
            "buffer holds {} bytes, more than the limit {limit} plus one read of {n}",
            buf.readable_bytes()
        );
        loop {
            decode_calls += 1;
            let data = buf.peek();
            match decoder.decode(data) {
                Ok(Decoded::Incomplete { skip }) => {
                    assert!(skip <= data.len(), "skip {skip} past {} bytes", data.len());
                    assert!(data[..skip].iter().all(|&b| is_separator(b)));
                    buf.retrieve(skip);
                    consumed += skip;
                    assert!(
                        buf.readable_bytes() <= limit,
                        "an incomplete frame of {} bytes passed the limit {limit}",
                        buf.readable_bytes()
                    );
                    assert!(buf.peek().first().is_none_or(|&b| b == b'{' || b == b'['));
                    break;
                }
                Ok(Decoded::Frame { start, end }) => {
                    assert!(
                        start < end && end <= data.len(),
                        "{start}..{end} of {}",
                        data.len()
                    );
                    assert!(data[..start].iter().all(|&b| is_separator(b)));
                    assert!(matches!(data[start], b'{' | b'['));
                    assert!(matches!(data[end - 1], b'}' | b']'));
                    assert!(end - start <= limit, "frame of {} > {limit}", end - start);
                    frames.push(data[start..end].to_vec());
                    buf.retrieve(end);
                    consumed += end;
                }
                Ok(Decoded::Unterminated { end }) => {
                    assert!(end <= data.len(), "{end} of {}", data.len());
                    let lead = data.iter().take_while(|&&b| is_separator(b)).count();
                    assert!(lead < end - 1, "no frame before the NUL");
                    assert!(matches!(data[lead], b'{' | b'['));
                    assert_eq!(data[end - 1], 0);
                    assert!(
                        !data[lead..end - 1].contains(&0),
                        "an earlier NUL was passed"
                    );
                    assert!(
                        end - 1 - lead <= limit,
                        "cut frame of {} > {limit}",
                        end - 1 - lead
                    );
                    check_error(&codec::unterminated(), None);
                    frames.push(data[lead..end].to_vec());
                    buf.retrieve(end);
                    consumed += end;
                }
                Err(e) => {
                    let data = buf.peek();
                    let lead = data.iter().take_while(|&&b| is_separator(b)).count();
                    match &e {
                        CodecError::Garbage { byte } => assert_eq!(data.get(lead), Some(byte)),
                        CodecError::Oversize { limit: l } => {
                            assert_eq!(*l, limit);
                            assert!(
                                data.len() - lead > limit,
                                "oversize with {} bytes",
                                data.len()
                            );
                        }
                        CodecError::Invalid(_) => panic!("Decoder::decode returned {e:?}"),
                    }
                    assert!(e.is_fatal());
                    check_error(&e.to_protocol_error(), None);
                    let split = Split {
                        frames,
                        end: End::Failed(e),
                    };
                    return Drive {
                        split,
                        decode_calls,
                        reads,
                        max_buffered,
                    };
                }
            }
            assert_eq!(
                consumed + buf.readable_bytes(),
                fed,
                "bytes unaccounted for"
            );
        }
        assert_eq!(
            consumed + buf.readable_bytes(),
            fed,
            "bytes unaccounted for"
        );
        assert!(decode_calls <= reads + frames.len(), "decode spun");
    }
    Drive {
        split: Split {
            frames,
            end: End::Pending(buf.readable_bytes()),
        },
        decode_calls,
        reads,
        max_buffered,
    }
}

/// Feeds `stream` to a [`FrameReader`] in reads of `chunk(bytes_left)` bytes, draining
/// `next_frame` after each, and checks that `pending` stays within the limit between reads
/// and that a fatal error sticks. Returns every outcome in order.
pub fn drive_frame_reader(
    limit: usize,
    stream: &[u8],
    mut chunk: impl FnMut(usize) -> usize,
) -> Vec<Result<Value, CodecError>> {
    let mut reader = FrameReader::new(limit);
    let mut out = Vec::new();
    let mut fed = 0;
    while fed < stream.len() {
        let n = chunk(stream.len() - fed).clamp(1, stream.len() - fed);
        reader.push(&stream[fed..fed + n]);
        fed += n;
        loop {
            match reader.next_frame() {
                Ok(Some(v)) => {
                    assert!(v.is_object());
                    out.push(Ok(v));
                }
                Ok(None) => {
                    assert!(reader.pending() <= limit, "{} pending", reader.pending());
                    break;
                }
                Err(e) if e.is_fatal() => {
                    // Sticky, whatever arrives afterwards.
                    reader.push(b"{\"msgid\":13}\0");
                    assert_eq!(reader.next_frame(), Err(e.clone()));
                    out.push(Err(e));
                    return out;
                }
                Err(e) => {
                    let CodecError::Invalid(pe) = &e else {
                        unreachable!()
                    };
                    // Compared with `parse_frame`'s own error below; the error frame itself is
                    // `check_frame`'s business.
                    assert!(matches!(pe.errno, errno::BAD_JSON | errno::NOT_OBJECT));
                    assert!(!pe.errmsg.is_empty() && pe.msgid.is_none());
                    out.push(Err(e));
                }
            }
        }
    }
    out
}

/// What [`drive_frame_reader`] must return for a stream with this reference split.
pub fn expected_reader_outcomes(split: &Split) -> Vec<Result<Value, CodecError>> {
    let mut out: Vec<_> = split
        .frames
        .iter()
        .map(|f| match f.last() {
            Some(0) => Err(CodecError::Invalid(codec::unterminated())),
            _ => codec::parse_frame(f).map_err(CodecError::Invalid),
        })
        .collect();
    if let End::Failed(e) = &split.end {
        out.push(Err(e.clone()));
    }
    out
}

/// Parses one frame as the server does (`parse_frame`, then `parse_request`) and checks both
/// steps: `parse_frame` accepts exactly the UTF-8 JSON objects, and the request passes
/// [`check_parse_request`].
pub fn check_frame(bytes: &[u8]) -> Result<Parsed, ProtocolError> {
    let parsed = codec::parse_frame(bytes);
    let plain = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(s).ok());
    match (&parsed, plain) {
        (Ok(v), Some(p)) => assert_eq!(*v, p),
        (Ok(v), None) => panic!("parse_frame accepted what serde_json refuses: {v}"),
        (Err(e), Some(p)) => {
            assert!(!p.is_object(), "an object refused: {e}");
            assert_eq!(e.errno, errno::NOT_OBJECT);
        }
        (Err(e), None) => assert_eq!(e.errno, errno::BAD_JSON),
    }
    match parsed {
        Ok(v) => check_parse_request(v),
        Err(e) => {
            check_error(&e, None);
            Err(e)
        }
    }
}

/// Runs `parse_request` on `v` and checks the outcome:
/// - an error has an errno of the protocol-error range (in fact one of the five a request
///   can earn), a non-empty errmsg, the request's msgid once it was readable, and encodes
///   to an error frame that decodes back;
/// - a success has the msgid of `v` and carries `v`'s fields unchanged and within bounds,
///   and a chat request's delivery frame decodes back with the same text.
pub fn check_parse_request(v: Value) -> Result<Parsed, ProtocolError> {
    let result = protocol::parse_request(v.clone());
    let wire_msgid = v.get("msgid").and_then(Value::as_i64);
    match &result {
        Err(e) => {
            let expected_msgid = match e.errno {
                errno::NOT_OBJECT => {
                    assert!(!v.is_object());
                    None
                }
                errno::BAD_MSGID => {
                    assert_eq!(wire_msgid, None);
                    None
                }
                errno::UNKNOWN_MSGID => {
                    let m = wire_msgid.expect("a readable msgid");
                    assert!(!CLIENT_MSGIDS.contains(&m) && !protocol::SOCIAL_MSGIDS.contains(&m));
                    wire_msgid
                }
                errno::MISSING_FIELD | errno::BAD_FIELD => {
                    check_field_error(&v, e);
                    wire_msgid
                }
                errno::RESUME_NEEDS_EXT => {
                    assert_eq!(wire_msgid, Some(msgid::RESUME));
                    wire_msgid
                }
                other => panic!("parse_request gave errno {other}: {e}"),
            };
            check_error(e, expected_msgid);
        }
        Ok(p) => check_request(&v, p),
    }
    result
}

/// The msgids a client may send (protocol.md §2 plus PING, CONTACTS and RESUME).
const CLIENT_MSGIDS: [i64; 12] = [
    msgid::LOGIN,
    msgid::LOGINOUT,
    msgid::REG,
    msgid::ONE_CHAT,
    msgid::ADD_FRIEND,
    msgid::CREATE_GROUP,
    msgid::ADD_GROUP,
    msgid::GROUP_CHAT,
    msgid::PING,
    msgid::CONTACTS,
    msgid::RESUME,
    msgid::SEQ_ACK,
];

/// A `MISSING_FIELD` or `BAD_FIELD` error must name (in double quotes, as its first quoted
/// word) a field that really is absent, or really breaks that field's rule, so that a valid
/// request is never refused.
fn check_field_error(v: &Value, e: &ProtocolError) {
    let msgid = v["msgid"].as_i64().expect("a readable msgid");
    assert!(
        CLIENT_MSGIDS.contains(&msgid) || protocol::SOCIAL_MSGIDS.contains(&msgid),
        "{e} for msgid {msgid}"
    );
    let key = e
        .errmsg
        .split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("errmsg names no field: {e}"));
    let value = v.get(key);
    if e.errno == errno::MISSING_FIELD {
        let absent = match key {
            "toid" => value.is_none() && v.get("to").is_none(),
            _ => value.is_none(),
        };
        assert!(absent, "{e}, but it is there: {v}");
        return;
    }
    let value = value.unwrap_or_else(|| panic!("{e}, but it is absent: {v}"));
    let is_id = |x: &Value| x.as_i64().is_some_and(|id| id > 0);
    let is_str = |x: &Value, min: usize, max: usize| {
        x.as_str()
            .is_some_and(|s| (min..=max).contains(&s.chars().count()))
    };
    let valid = match (key, msgid) {
        // HISTORY takes `peer` or `groupid`, not both.
        ("groupid", msgid::HISTORY) => is_id(value) && v.get("peer").is_none(),
        ("id" | "toid" | "to" | "friendid" | "groupid", _) => is_id(value),
        ("peer" | "before" | "userid", _) => is_id(value),
        ("limit", _) => value
            .as_i64()
            .is_some_and(|n| (1..=protocol::HISTORY_MAX_LIMIT).contains(&n) && !value.is_f64()),
        ("accept", _) => value.is_boolean() || matches!(value.as_u64(), Some(0 | 1)),
        ("password", msgid::LOGIN) => is_str(value, 0, protocol::PASSWORD_MAX_CHARS),
        ("password", _) => is_str(value, 1, protocol::PASSWORD_MAX_CHARS),
        ("name", msgid::REG) => is_name(value, protocol::NAME_MAX_CHARS),
        ("groupname", _) => is_name(value, protocol::GROUPNAME_MAX_CHARS),
        ("groupdesc", _) => is_str(value, 0, protocol::GROUPDESC_MAX_CHARS),
        ("name" | "msg" | "time", _) => value.is_string(),
        ("ext" | "acks", _) => value.is_boolean() || matches!(value.as_u64(), Some(0 | 1)),
        ("seq" | "lastseq", _) => value.as_u64().is_some_and(|n| n <= 1 << 53) && !value.is_f64(),
        ("cid", msgid::ONE_CHAT | msgid::GROUP_CHAT) => {
            value.as_i64().is_some_and(|c| c >= 0) && !value.is_f64()
        }
        _ => panic!("{e}: a field no request has"),
    };
    assert!(!valid, "{e}, but {key} is valid: {value}");
}

/// A user or group name as protocol.md §3 defines it, written apart from the parser's
/// `name_problem` so that each checks the other: 1..=`max` characters, not all white
/// space or invisible, no white space or invisible character at either end (but a
/// variation selector at the end after a character neither a letter nor a digit), no control character, no line or paragraph separator, no
/// direction control.
fn is_name(x: &Value, max: usize) -> bool {
    let invisible = |c: char| {
        let n = c as u32;
        [0xad, 0x34f, 0x115f, 0x1160, 0x2800, 0x3164, 0xfeff, 0xffa0].contains(&n)
            || [
                0x17b4..=0x17b5,
                0x180b..=0x180f,
                0x200b..=0x200f,
                0x2060..=0x206f,
                0xfe00..=0xfe0f,
                0xfff0..=0xfffb,
                0x1bca0..=0x1bca3,
                0x1d173..=0x1d17a,
                0xe0000..=0xe0fff,
            ]
            .iter()
            .any(|r| r.contains(&n))
    };
    let selector = |c: char| (0xfe00..=0xfe0f).contains(&(c as u32));
    let edge = |c: char| c.is_whitespace() || invisible(c);
    let at_start = |s: &str| s.chars().next().is_some_and(edge);
    // A variation selector ends a name only after a character it changes the look
    // of: not white space, invisible, a letter or a digit.
    let tag_flag = |s: &str| {
        // 🏴 then tags then the cancel tag: a subdivision flag, which shows.
        let mut back = s.chars().rev();
        back.next() == Some('\u{e007f}') && {
            let tags = back
                .by_ref()
                .take_while(|&c| (0xe0020..=0xe007e).contains(&(c as u32)))
                .count();
            tags > 0 && s.chars().rev().nth(tags + 1) == Some('\u{1f3f4}')
        }
    };
    let at_end = |s: &str| {
        let mut back = s.chars().rev();
        !tag_flag(s)
            && match (back.next(), back.next()) {
                (Some(vs), Some(b)) if selector(vs) => edge(b) || b.is_alphanumeric(),
                (Some(last), _) => edge(last),
                (None, _) => false,
            }
    };
    let direction = |c: char| {
        let n = c as u32;
        [0x61c, 0x200e, 0x200f].contains(&n)
            || (0x202a..=0x202e).contains(&n)
            || (0x2066..=0x2069).contains(&n)
    };
    x.as_str().is_some_and(|s| {
        (1..=max).contains(&s.chars().count())
            && !s.chars().all(|c| c.is_whitespace() || invisible(c))
            && !at_start(s)
            && !at_end(s)
            && !s
                .chars()
                .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}' || direction(c))
    })
}

/// Checks a protocol error and its error frame (`msgid` 11) on the wire. `msgid` is the
/// request msgid the error must carry (`None` for errors about the frame itself).
pub fn check_error(e: &ProtocolError, msgid: Option<i64>) {
    assert!(
        (100..=111).contains(&e.errno),
        "errno {} out of range: {e}",
        e.errno
    );
    assert!(!e.errmsg.is_empty(), "empty errmsg for errno {}", e.errno);
    assert_eq!(e.msgid, msgid, "{e}");
    let back = decode_one(&protocol::encode(&protocol::error(e)));
    assert_eq!(back["msgid"], msgid::ERROR);
    assert_eq!(back["errno"], e.errno);
    assert_eq!(back["errmsg"].as_str(), Some(e.errmsg.as_str()));
    assert_eq!(back.get("reqmsgid").and_then(Value::as_i64), e.msgid);
}

/// Decodes the single frame `bytes` (one `encode` output) with a fresh reader, checking
/// that the only NUL is the terminator, as a legacy peer needs.
fn decode_one(bytes: &[u8]) -> Value {
    assert_eq!(bytes.last(), Some(&0));
    assert!(
        !bytes[..bytes.len() - 1].contains(&0),
        "raw NUL inside a frame"
    );
    let mut r = FrameReader::new(usize::MAX);
    r.push(bytes);
    let v = r
        .next_frame()
        .expect("our frame decodes")
        .expect("complete");
    assert_eq!(r.next_frame(), Ok(None));
    assert_eq!(r.pending(), 0);
    v
}

/// The id field `key` of `v`, which a successful parse must have found valid.
fn id_of(v: &Value, key: &str) -> i64 {
    let id = v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("{key} accepted as {}", v[key]));
    assert!(id > 0, "{key} {id} accepted");
    assert!(!v[key].is_f64());
    id
}

/// The string field `key` of `v`, checked to be `min..=max` bytes.
fn str_of<'v>(v: &'v Value, key: &str, min: usize, max: usize) -> &'v str {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} accepted as {}", v[key]));
    assert!(
        (min..=max).contains(&s.chars().count()),
        "{key} of {} characters accepted",
        s.chars().count()
    );
    s
}

/// Checks that the successful parse `p` of `v` round-trips `v`'s fields.
fn check_request(v: &Value, p: &Parsed) {
    let wire_msgid = v["msgid"].as_i64();
    assert_eq!(Some(p.msgid), wire_msgid);
    assert_eq!(p.req.msgid(), p.msgid);
    let ext = match v.get("ext") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(x) => match x.as_u64() {
            Some(0) => false,
            Some(1) => true,
            _ => panic!("ext {x} accepted"),
        },
    };
    assert_eq!(p.ext, ext);
    match &p.req {
        Request::Login { id, password } => {
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(
                password,
                str_of(v, "password", 0, protocol::PASSWORD_MAX_CHARS)
            );
        }
        Request::Logout { id } => assert_eq!(*id, id_of(v, "id")),
        Request::Resume { id, token } => {
            assert!(ext, "RESUME without ext accepted");
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(token, str_of(v, "token", 1, protocol::TOKEN_MAX_CHARS));
        }
        Request::Reg { name, password } => {
            assert_eq!(name, str_of(v, "name", 1, protocol::NAME_MAX_CHARS));
            assert!(is_name(&v["name"], protocol::NAME_MAX_CHARS), "{name:?}");
            assert_eq!(
                password,
                str_of(v, "password", 1, protocol::PASSWORD_MAX_CHARS)
            );
        }
        Request::OneChat {
            id,
            toid,
            msg,
            cid,
            frame,
        } => {
            assert_eq!(*cid, v.get("cid").and_then(Value::as_i64));
            assert_eq!(*id, id_of(v, "id"));
            let to_key = if v.get("toid").is_some() {
                "toid"
            } else {
                "to"
            };
            assert_eq!(*toid, id_of(v, to_key));
            assert_eq!(msg, str_of(v, "msg", 0, usize::MAX));
            check_chat_frame(v, frame);
        }
        Request::AddFriend { id, friendid } => {
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(*friendid, id_of(v, "friendid"));
        }
        Request::CreateGroup {
            id,
            groupname,
            groupdesc,
        } => {
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(
                groupname,
                str_of(v, "groupname", 1, protocol::GROUPNAME_MAX_CHARS)
            );
            assert!(
                is_name(&v["groupname"], protocol::GROUPNAME_MAX_CHARS),
                "{groupname:?}"
            );
            let desc = match v.get("groupdesc") {
                None => "",
                Some(_) => str_of(v, "groupdesc", 0, protocol::GROUPDESC_MAX_CHARS),
            };
            assert_eq!(groupdesc, desc);
        }
        Request::AddGroup { id, groupid } => {
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(*groupid, id_of(v, "groupid"));
        }
        Request::GroupChat {
            id,
            groupid,
            msg,
            cid,
            frame,
        } => {
            assert_eq!(*cid, v.get("cid").and_then(Value::as_i64));
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(*groupid, id_of(v, "groupid"));
            assert_eq!(msg, str_of(v, "msg", 0, usize::MAX));
            check_chat_frame(v, frame);
        }
        Request::Ping => assert_eq!(p.msgid, msgid::PING),
        Request::Social { id, req } => {
            assert_eq!(*id, id_of(v, "id"));
            assert_eq!(req.msgid(), p.msgid);
        }
        Request::Contacts { id } => assert_eq!(*id, id_of(v, "id")),
        Request::SeqAck { seq } => assert_eq!(Some(*seq), v["seq"].as_u64()),
    }
    match p.req.acting_id() {
        Some(id) => assert_eq!(id, id_of(v, "id")),
        None => assert!(matches!(
            p.msgid,
            msgid::LOGIN | msgid::REG | msgid::PING | msgid::RESUME | msgid::SEQ_ACK
        )),
    }
}

/// A chat request keeps the whole object, and its delivery frame survives the wire.
fn check_chat_frame(v: &Value, frame: &serde_json::Map<String, Value>) {
    assert_eq!(v.as_object(), Some(frame));
    for key in ["name", "time"] {
        if v.get(key).is_some() {
            str_of(v, key, 0, usize::MAX);
        }
    }
    let delivered = protocol::delivery_frame(frame.clone(), "sender", "2024-01-01 00:00:00");
    let back = decode_one(&protocol::encode(&delivered));
    assert_eq!(back["msg"], v["msg"]);
    assert_eq!(back["msgid"], v["msgid"]);
    assert_eq!(back["id"], v["id"]);
    assert_eq!(back["name"], "sender");
    let time = v
        .get("time")
        .cloned()
        .unwrap_or_else(|| "2024-01-01 00:00:00".into());
    assert_eq!(back["time"], time);
    assert!(back.get("ext").is_none());
    assert!(back.get("cid").is_none());
}

/// The `decoder` target: the streaming decoder, fed in reads chosen by the input, must
/// find exactly what [`reference_split`] finds on the whole stream, under every check of
/// [`drive_decoder`].
/// The first few frames are also parsed as the server would (the `parse_request` target
/// covers parsing in depth; parsing every frame would halve the executions per second).
pub fn fuzz_decoder(data: &[u8]) {
    let cfg = Config::from_input(data);
    let drive = drive_decoder(cfg.limit, cfg.stream, cfg.chunker());
    assert_eq!(drive.split, reference_split(cfg.limit, cfg.stream));
    for frame in drive.split.frames.iter().take(4) {
        let _ = check_frame(frame);
    }
}

/// The `parse_request` target: the whole input is one frame's bytes.
pub fn fuzz_parse_request(data: &[u8]) {
    let _ = check_frame(data);
}

/// The `frame_reader` target: the client's reader, fed in reads chosen by the input, must
/// yield what the reference split plus `parse_frame` give for the whole stream.
pub fn fuzz_frame_reader(data: &[u8]) {
    let cfg = Config::from_input(data);
    let got = drive_frame_reader(cfg.limit, cfg.stream, cfg.chunker());
    let expected = expected_reader_outcomes(&reference_split(cfg.limit, cfg.stream));
    assert_eq!(got, expected);
}

// ---- The WebSocket path (`--ws-addr`) -------------------------------------------------

/// The `websocket` target. Byte 0's top two bits pick the part, the rest of the input is
/// read as by [`Config::from_input`]: 0 and 1 feed the stream as client WebSocket frames
/// into [`chat::ws::WsReader`] in reads chosen by byte 1 ([`check_ws_reader`]); 2 reads
/// the stream as the HTTP request a listener connection starts with ([`check_http`]); 3
/// sends the stream's NUL-separated frames through [`chat::ws::WsFramer`] and gives back
/// an unwritten tail ([`check_ws_framer`]).
pub fn fuzz_websocket(data: &[u8]) {
    let cfg = Config::from_input(data);
    match data.first().map_or(0, |b| b >> 6) {
        0 | 1 => check_ws_reader(cfg.limit, cfg.stream, cfg.chunker()),
        2 => check_http(cfg.stream),
        _ => check_ws_framer(cfg.stream, cfg.chunking),
    }
}

/// The reader never panics; every text message becomes exactly one NUL-terminated
/// piece of valid UTF-8 without a NUL inside and not longer than the protocol layer's
/// bound; its own output is only pongs and a close; after a terminal event (close,
/// oversize, protocol error) it reads nothing more.
pub fn check_ws_reader(limit: usize, stream: &[u8], mut chunk: impl FnMut(usize) -> usize) {
    use chat::ws::{WsEvent, WsReader};
    let mut reader = WsReader::new(limit, chat::ws::CloseState::new());
    let bound = limit.saturating_add(1024);
    let mut at = 0;
    let mut ended = false;
    while at < stream.len() {
        let n = chunk(stream.len() - at).clamp(1, stream.len() - at);
        reader.push(&stream[at..at + n]);
        at += n;
        loop {
            let event = reader.read_event();
            let frames = reader.frames.retrieve_all_as_vec();
            if event == WsEvent::Text {
                assert!(!ended, "a message after the end");
                assert_eq!(frames.last(), Some(&0), "a text message ends in one NUL");
                let text = &frames[..frames.len() - 1];
                assert!(!text.contains(&0), "one message, one frame");
                assert!(std::str::from_utf8(text).is_ok(), "text is UTF-8");
                assert!(text.len() <= bound, "{} > {bound}", text.len());
            } else {
                assert!(frames.is_empty(), "{event:?} appended frames");
            }
            if let Some(b) = reader.take_output().first() {
                assert!(matches!(b, 0x8a | 0x88), "output starts with 0x{b:02x}");
            }
            match event {
                WsEvent::Text | WsEvent::Binary | WsEvent::Ping | WsEvent::Control => {}
                WsEvent::Idle => break,
                WsEvent::Closed | WsEvent::Oversize | WsEvent::Broken(_) => {
                    ended = true;
                    assert_eq!(reader.read_event(), WsEvent::Idle, "nothing after the end");
                    break;
                }
            }
        }
    }
}

/// The request head is read without panicking; an upgrade names a key and where the
/// head ends, and its reply is a complete 101; a refusal is a complete 4xx response
/// whose Content-Length is its body's.
pub fn check_http(stream: &[u8]) {
    use chat::ws::http::{self, Request};
    match http::parse(stream) {
        Request::Partial => assert!(stream.len() <= http::MAX_REQUEST),
        Request::Upgrade { key, consumed } => {
            assert!(consumed <= stream.len() && !key.is_empty());
            let reply = http::upgrade_response(&key);
            assert!(reply.starts_with(b"HTTP/1.1 101 ") && reply.ends_with(b"\r\n\r\n"));
        }
        Request::Get { path, .. } => {
            assert!(!path.contains('?') && !path.contains('#'), "{path}");
            let _ = chat::ws::web::asset(&path);
        }
        Request::Refuse(reply) => {
            let text = String::from_utf8(reply).expect("our replies are text");
            assert!(text.starts_with("HTTP/1.1 4"), "{text}");
            let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
            assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        }
    }
}

/// Each frame goes out as one text message; of a tail of the wire cut at a point
/// chosen by `cut` (of 255), exactly the frames that start in it come back, in order.
pub fn check_ws_framer(stream: &[u8], cut: u8) {
    use chat::ws::WsFramer;
    use net::OutputFramer;
    let mut framer = WsFramer::new(chat::ws::CloseState::new());
    let mut wire = Vec::new();
    let mut starts = Vec::new();
    for piece in stream.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        starts.push((wire.len(), piece));
        let mut data = piece.to_vec();
        data.push(0);
        let before = wire.len();
        framer.encode(&data, wire.len(), &mut wire);
        assert_eq!(wire[before] & 0x8f, 0x81, "a final text frame");
        assert!(wire[before + 1] & 0x80 == 0, "server frames are not masked");
        assert!(wire.ends_with(piece));
    }
    let at = wire.len() * usize::from(cut) / 255;
    let back = framer.decode_unsent(&wire[at..]);
    let mut want = Vec::new();
    for (start, piece) in starts {
        if start >= at {
            want.extend_from_slice(piece);
            want.push(0);
        }
    }
    assert_eq!(back, want);
}

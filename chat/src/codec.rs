//! Stream decoder: finds JSON frames in a byte stream and parses them (protocol.md §1).
//!
//! The stream is a sequence of JSON objects, each optionally followed by separator bytes
//! (`0x00`, space, `\t`, `\r`, `\n`). A frame may be split across reads, several may arrive in
//! one read, and they may follow each other with no separator at all. This covers what a
//! legacy client sends (JSON + `0x00`), what a legacy server sends (bare JSON, possibly
//! coalesced), and what we send (JSON + `0x00`), so server and client share one decoder.
//!
//! Decoding is two-phase, as in mini-redis: [`Decoder::decode`] finds where a frame ends by
//! scanning brace/bracket depth (skipping over JSON strings and their backslash escapes), and
//! [`parse_frame`] turns the frame's bytes into a `Value`. A frame that fails to parse is a
//! recoverable error (its boundary is known); an oversize frame or a stray start byte is fatal
//! because the stream can no longer be resynchronised.

use std::fmt;

use serde_json::Value;

use crate::protocol::{errno, ProtocolError};

/// The default frame limit: 64 KiB.
pub const DEFAULT_FRAME_LIMIT: usize = 64 * 1024;

/// Whether `b` may appear between frames.
pub fn is_separator(b: u8) -> bool {
    matches!(b, 0 | b' ' | b'\t' | b'\r' | b'\n')
}

/// A successful step of [`Decoder::decode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    /// No complete frame yet. The first `skip` bytes are separators: the caller must discard
    /// exactly them (possibly none) before the next call, then append more bytes.
    Incomplete {
        /// Leading separator bytes to discard.
        skip: usize,
    },
    /// A complete frame is `data[start..end]`; `data[..start]` are separators. The caller must
    /// discard exactly `end` bytes before the next call.
    Frame {
        /// Where the frame's opening `{` or `[` is.
        start: usize,
        /// One past the frame's closing `}` or `]`.
        end: usize,
    },
}

/// A fatal decoding failure, or ([`CodecError::Invalid`]) a frame that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A frame grew past the limit without completing. Fatal: reply, then close.
    Oversize {
        /// The limit in force, in bytes.
        limit: usize,
    },
    /// A frame started with a byte other than `{` or `[`. Fatal: the stream cannot be
    /// resynchronised.
    Garbage {
        /// The offending byte.
        byte: u8,
    },
    /// A frame with a known boundary that is not valid JSON or not an object (errno
    /// `BAD_JSON` or `NOT_OBJECT`). Not fatal: the next frame can still be read. Only
    /// [`FrameReader::next_frame`] returns this; [`Decoder::decode`] never does.
    Invalid(ProtocolError),
}

impl CodecError {
    /// Whether the connection must be closed (after sending the error reply).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, CodecError::Invalid(_))
    }

    /// The error reply for this failure: `FRAME_TOO_LARGE`, or `BAD_JSON` for garbage.
    pub fn to_protocol_error(&self) -> ProtocolError {
        match self {
            CodecError::Oversize { limit } => ProtocolError::frame_too_large(*limit),
            CodecError::Garbage { byte } => ProtocolError::new(
                errno::BAD_JSON,
                format!("frame starts with byte 0x{byte:02x}, expected '{{'"),
            ),
            CodecError::Invalid(e) => e.clone(),
        }
    }
}

impl From<CodecError> for ProtocolError {
    fn from(e: CodecError) -> Self {
        e.to_protocol_error()
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_protocol_error().errmsg)
    }
}

impl std::error::Error for CodecError {}

/// Finds frame boundaries in a byte stream, resuming where the previous call stopped.
///
/// The caller owns the buffer. Contract, so that a frame fed one byte at a time costs O(n)
/// in total rather than O(n²):
/// - pass the unconsumed bytes, front first, every time;
/// - after [`Decoded::Incomplete`]`{ skip }` discard exactly `skip` bytes from the front, and
///   after [`Decoded::Frame`]`{ end, .. }` discard exactly `end` bytes;
/// - otherwise only append: the bytes already scanned stay unchanged and at the front.
///
/// If the buffer is dropped or replaced, call [`Decoder::reset`].
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The largest frame accepted, in bytes (separators excluded).
    limit: usize,
    /// Bytes of the current partial frame already scanned; 0 when between frames. The
    /// partial frame always starts at `data[0]` because its leading separators were reported
    /// in `skip` and discarded.
    scanned: usize,
    /// Brace plus bracket nesting depth at `scanned`.
    depth: usize,
    /// Inside a JSON string at `scanned`, where braces do not count.
    in_string: bool,
    /// The previous byte was a backslash inside a string, so this one is escaped.
    escaped: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_FRAME_LIMIT)
    }
}

impl Decoder {
    /// A decoder refusing frames longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Decoder {
            limit,
            scanned: 0,
            depth: 0,
            in_string: false,
            escaped: false,
        }
    }

    /// The frame limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Forgets any partial frame, for when the caller's buffer was cleared.
    pub fn reset(&mut self) {
        *self = Decoder::new(self.limit);
    }

    /// Looks for the next frame at the front of `data` (see the type's contract).
    ///
    /// Returns [`CodecError::Oversize`] as soon as the partial frame is longer than the limit
    /// (a frame of exactly `limit` bytes is accepted) and [`CodecError::Garbage`] when a frame
    /// would start with a byte other than `{` or `[`. After either, the stream is unusable.
    pub fn decode(&mut self, data: &[u8]) -> Result<Decoded, CodecError> {
        let mut start = 0;
        if self.scanned == 0 {
            start = data
                .iter()
                .position(|&b| !is_separator(b))
                .unwrap_or(data.len());
            match data.get(start) {
                None => return Ok(Decoded::Incomplete { skip: start }),
                Some(b'{' | b'[') => {}
                Some(&byte) => return Err(CodecError::Garbage { byte }),
            }
        }
        let frame = &data[start..];
        debug_assert!(frame.len() >= self.scanned, "decoder contract broken");
        let window = frame.len().min(self.limit);
        let mut i = self.scanned;
        while i < window {
            let b = frame[i];
            i += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.reset();
                        return Ok(Decoded::Frame {
                            start,
                            end: start + i,
                        });
                    }
                }
                _ => {}
            }
        }
        if frame.len() > self.limit {
            return Err(CodecError::Oversize { limit: self.limit });
        }
        self.scanned = i;
        Ok(Decoded::Incomplete { skip: start })
    }
}

/// Parses one frame's bytes (as delimited by [`Decoder::decode`]) into a JSON object.
///
/// Invalid UTF-8 or invalid JSON gives `BAD_JSON`; valid JSON that is not an object (a
/// top-level array) gives `NOT_OBJECT`. Either way the stream itself stays usable.
///
/// # Errors
///
/// `BAD_JSON` or `NOT_OBJECT` as above, with no `msgid`.
pub fn parse_frame(bytes: &[u8]) -> Result<Value, ProtocolError> {
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(ProtocolError::new(
            errno::BAD_JSON,
            format!(
                "frame is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(ProtocolError::new(
            errno::NOT_OBJECT,
            "frame is not a JSON object",
        )),
        Err(e) => Err(ProtocolError::new(
            errno::BAD_JSON,
            format!("frame is not valid JSON: {e}"),
        )),
    }
}

/// A [`Decoder`] with its own buffer, for a blocking reader such as the client's reader
/// thread: `push` whatever `read` returned, then call `next_frame` until it yields `None`.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Received bytes; the unconsumed ones are `buf[head..]`.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes. Consumed bytes are dropped lazily, once they are at
    /// least half of the buffer, so consuming costs amortised O(1) per byte.
    head: usize,
    /// The frame scanner, whose contract this type upholds.
    decoder: Decoder,
    /// A fatal error, repeated by every later `next_frame` call.
    failed: Option<CodecError>,
}

impl FrameReader {
    /// A reader refusing frames longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        FrameReader {
            decoder: Decoder::new(limit),
            ..FrameReader::default()
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.head > 0 && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Unconsumed bytes held (a partial frame and/or separators).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.head
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    ///
    /// A frame that is not valid JSON or not an object gives
    /// [`CodecError::Invalid`] and is consumed, so the next call reads on. A fatal error
    /// ([`CodecError::is_fatal`]) is returned again by every later call.
    pub fn next_frame(&mut self) -> Result<Option<Value>, CodecError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decoder.decode(&self.buf[self.head..]) {
            Ok(Decoded::Incomplete { skip }) => {
                self.consume(skip);
                Ok(None)
            }
            Ok(Decoded::Frame { start, end }) => {
                let parsed = parse_frame(&self.buf[self.head + start..self.head + end]);
                self.consume(end);
                parsed.map(Some).map_err(CodecError::Invalid)
            }
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.head += n;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Feeds `chunks` through a `FrameReader` and collects every outcome.
    fn collect(limit: usize, chunks: &[&[u8]]) -> Vec<Result<Value, CodecError>> {
        let mut r = FrameReader::new(limit);
        let mut out = Vec::new();
        for c in chunks {
            r.push(c);
            loop {
                match r.next_frame() {
                    Ok(Some(v)) => out.push(Ok(v)),
                    Ok(None) => break,
                    Err(e) => {
                        let fatal = e.is_fatal();
                        out.push(Err(e));
                        if fatal {
                            return out;
                        }
                    }
                }
            }
        }
        out
    }

    fn ok_values(out: Vec<Result<Value, CodecError>>) -> Vec<Value> {
        out.into_iter().map(|r| r.unwrap()).collect()
    }

    fn invalid_errno(r: &Result<Value, CodecError>) -> i64 {
        match r {
            Err(CodecError::Invalid(e)) => e.errno,
            other => panic!("expected an invalid frame, got {other:?}"),
        }
    }

    const LOGIN: &[u8] = br#"{"id":22,"msgid":1,"password":"p{a}\"}"}"#;

    #[test]
    fn split_at_every_position() {
        let mut stream = LOGIN.to_vec();
        stream.push(0);
        stream.extend_from_slice(LOGIN);
        for cut in 0..=stream.len() {
            let out = ok_values(collect(
                DEFAULT_FRAME_LIMIT,
                &[&stream[..cut], &stream[cut..]],
            ));
            assert_eq!(out.len(), 2, "cut at {cut}");
            assert_eq!(out[0]["password"], "p{a}\"}");
            assert_eq!(out[0], out[1]);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let stream = [LOGIN, b"\0\r\n", LOGIN, LOGIN, b" \t"].concat();
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        let out = ok_values(collect(DEFAULT_FRAME_LIMIT, &chunks));
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|v| v["id"] == 22));
    }

    #[test]
    fn one_byte_at_a_time_scans_linearly() {
        // Drive the Decoder directly and check the resume position never goes backwards.
        let msg = "x".repeat(10_000);
        let frame = json!({"msg": msg, "msgid": 6}).to_string().into_bytes();
        let mut d = Decoder::new(DEFAULT_FRAME_LIMIT);
        let mut buf = Vec::new();
        let mut found = None;
        for (n, &b) in frame.iter().enumerate() {
            buf.push(b);
            match d.decode(&buf).unwrap() {
                Decoded::Incomplete { skip } => {
                    assert_eq!(skip, 0);
                    assert_eq!(d.scanned, n + 1);
                }
                Decoded::Frame { start, end } => found = Some((start, end)),
            }
        }
        assert_eq!(found, Some((0, frame.len())));
    }

    #[test]
    fn hundred_frames_in_one_chunk() {
        let mut stream = Vec::new();
        for i in 1..=100 {
            stream.extend(crate::protocol::encode(&json!({"id": i, "msgid": 3})));
        }
        let out = ok_values(collect(DEFAULT_FRAME_LIMIT, &[&stream]));
        assert_eq!(out.len(), 100);
        for (i, v) in out.iter().enumerate() {
            assert_eq!(v["id"], i as i64 + 1);
        }
    }

    #[test]
    fn back_to_back_without_separator() {
        let out = ok_values(collect(
            DEFAULT_FRAME_LIMIT,
            &[br#"{"msgid":2}{"msgid":5}{"a":[1,{"b":[]}],"msgid":14}"#],
        ));
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], json!({"a": [1, {"b": []}], "msgid": 14}));
    }

    #[test]
    fn separators_between_and_before() {
        let out = ok_values(collect(
            DEFAULT_FRAME_LIMIT,
            &[
                b"\0 \t\r\n{\"msgid\":1}\0\0\n",
                b"  ",
                b"\r\n{\"msgid\":2}\0",
            ],
        ));
        assert_eq!(out, vec![json!({"msgid": 1}), json!({"msgid": 2})]);
    }

    #[test]
    fn separators_only_are_discarded() {
        let mut d = Decoder::new(16);
        assert_eq!(
            d.decode(b"\0\0  \n").unwrap(),
            Decoded::Incomplete { skip: 5 }
        );
        assert_eq!(d.decode(b"").unwrap(), Decoded::Incomplete { skip: 0 });
        assert_eq!(
            d.decode(b" {\"a\"").unwrap(),
            Decoded::Incomplete { skip: 1 }
        );
        // The caller discarded the space; the partial frame is now at the front.
        assert_eq!(
            d.decode(b"{\"a\":1}\0").unwrap(),
            Decoded::Frame { start: 0, end: 7 }
        );
    }

    #[test]
    fn braces_and_escapes_inside_strings() {
        let input: &[u8] = br#"{"m":"a\"}b","n":"\\","o":"{[","p":"\\\"}"}{"msgid":1}"#;
        let out = ok_values(collect(DEFAULT_FRAME_LIMIT, &[input]));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["m"], "a\"}b");
        assert_eq!(out[0]["n"], "\\");
        assert_eq!(out[0]["o"], "{[");
        assert_eq!(out[0]["p"], "\\\"}");
    }

    #[test]
    fn nested_objects() {
        let v = json!({"a": {"b": {"c": [[{"d": "}"}]]}}, "msgid": 10});
        let bytes = crate::protocol::encode(&v);
        let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
        assert_eq!(ok_values(collect(DEFAULT_FRAME_LIMIT, &chunks)), vec![v]);
    }

    #[test]
    fn chinese_and_emoji_split_inside_characters() {
        let v = json!({"msg": "你好，世界 😀🎉", "msgid": 6, "name": "张三"});
        let bytes = crate::protocol::encode(&v);
        for cut in 0..bytes.len() {
            let out = ok_values(collect(
                DEFAULT_FRAME_LIMIT,
                &[&bytes[..cut], &bytes[cut..]],
            ));
            assert_eq!(out, vec![v.clone()], "cut at {cut}");
        }
    }

    #[test]
    fn invalid_utf8_is_bad_json_and_decoding_continues() {
        let out = collect(
            DEFAULT_FRAME_LIMIT,
            &[b"{\"msg\":\"\xff\xfe\",\"msgid\":6}\0{\"msgid\":13}\0"],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(invalid_errno(&out[0]), errno::BAD_JSON);
        assert_eq!(out[1], Ok(json!({"msgid": 13})));
        let e = parse_frame(b"{\"a\":\"\xc3\"}").unwrap_err();
        assert!(e.errmsg.contains("UTF-8"), "{}", e.errmsg);
    }

    #[test]
    fn not_json_is_bad_json_and_decoding_continues() {
        let out = collect(DEFAULT_FRAME_LIMIT, &[b"{abc}\0{\"msgid\":13}"]);
        assert_eq!(out.len(), 2);
        assert_eq!(invalid_errno(&out[0]), errno::BAD_JSON);
        assert_eq!(out[1], Ok(json!({"msgid": 13})));
        let e = parse_frame(b"{abc}").unwrap_err();
        assert!(
            e.errmsg.starts_with("frame is not valid JSON"),
            "{}",
            e.errmsg
        );
        assert_eq!(e.msgid, None);
    }

    #[test]
    fn top_level_array_is_not_object_and_decoding_continues() {
        let out = collect(DEFAULT_FRAME_LIMIT, &[b"[1,{\"a\":2}]\0{\"msgid\":13}"]);
        assert_eq!(out.len(), 2);
        assert_eq!(invalid_errno(&out[0]), errno::NOT_OBJECT);
        assert_eq!(out[1], Ok(json!({"msgid": 13})));
    }

    #[test]
    fn garbage_start_is_fatal() {
        let out = collect(
            DEFAULT_FRAME_LIMIT,
            &[b"{\"msgid\":13}\0hello{\"msgid\":13}"],
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], Err(CodecError::Garbage { byte: b'h' }));
        assert!(out[1].as_ref().unwrap_err().is_fatal());
        let pe = out[1].clone().unwrap_err().to_protocol_error();
        assert_eq!(pe.errno, errno::BAD_JSON);
        // A fatal error sticks.
        let mut r = FrameReader::new(DEFAULT_FRAME_LIMIT);
        r.push(b"x");
        assert!(r.next_frame().is_err());
        r.push(b"{\"msgid\":13}");
        assert_eq!(r.next_frame(), Err(CodecError::Garbage { byte: b'x' }));
    }

    #[test]
    fn oversize_detected_before_the_frame_completes() {
        let limit = DEFAULT_FRAME_LIMIT;
        let mut big = b"{\"msg\":\"".to_vec();
        big.resize(limit + 1, b'x');
        // The frame never completes; the limit alone must trip it.
        let mut d = Decoder::new(limit);
        assert_eq!(
            d.decode(&big[..limit]).unwrap(),
            Decoded::Incomplete { skip: 0 }
        );
        assert_eq!(d.decode(&big), Err(CodecError::Oversize { limit }));
        // In one go as well, and through FrameReader.
        assert_eq!(
            Decoder::new(limit).decode(&big),
            Err(CodecError::Oversize { limit })
        );
        let out = collect(limit, &[&big]);
        assert_eq!(out, vec![Err(CodecError::Oversize { limit })]);
        let pe = ProtocolError::from(CodecError::Oversize { limit });
        assert_eq!(pe.errno, errno::FRAME_TOO_LARGE);
    }

    #[test]
    fn exactly_limit_frame_accepted() {
        let limit = DEFAULT_FRAME_LIMIT;
        let head = b"{\"msg\":\"";
        let mut frame = head.to_vec();
        frame.resize(limit - 2, b'y');
        frame.extend_from_slice(b"\"}");
        assert_eq!(frame.len(), limit);
        let stream = [b"\0\0".as_slice(), &frame, b"\0"].concat();
        let out = ok_values(collect(limit, &[&stream]));
        assert_eq!(
            out[0]["msg"].as_str().unwrap().len(),
            limit - head.len() - 2
        );
    }

    #[test]
    fn small_limit() {
        // `{"a":1}` is 7 bytes: accepted at limit 7, refused at 6; separators don't count.
        let mut d = Decoder::new(7);
        assert_eq!(
            d.decode(b"\0\0\0\0{\"a\":1}{").unwrap(),
            Decoded::Frame { start: 4, end: 11 }
        );
        let mut d = Decoder::new(6);
        assert_eq!(d.decode(b"{\"a\":1"), Ok(Decoded::Incomplete { skip: 0 }));
        assert_eq!(
            d.decode(b"{\"a\":1}"),
            Err(CodecError::Oversize { limit: 6 })
        );
        let out = collect(6, &[b"{\"a\":", b"1}"]);
        assert_eq!(out, vec![Err(CodecError::Oversize { limit: 6 })]);
        // A completed frame followed by more bytes than the limit is fine.
        let out = collect(7, &[b"{\"a\":1}{\"b\":2}{\"c\":3}"]);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn legacy_server_stream_for_the_client() {
        // A legacy server writes bare JSON, possibly coalesced; ours adds 0x00.
        let out = ok_values(collect(
            DEFAULT_FRAME_LIMIT,
            &[
                br#"{"errno":0,"id":1,"msgid":2,"name":"a"}{"id":2,"msg":"m","#,
                br#""msgid":6,"name":"b","time":"t","toid":1}"#,
                b"{\"msgid\":14}\0",
            ],
        ));
        assert_eq!(out.len(), 3);
        assert_eq!(out[1]["msg"], "m");
    }

    #[test]
    fn frame_reader_compacts_its_buffer() {
        let mut r = FrameReader::new(DEFAULT_FRAME_LIMIT);
        for _ in 0..1000 {
            r.push(b"{\"msgid\":13}\0{\"msg");
            assert!(r.next_frame().unwrap().is_some());
            assert!(r.next_frame().unwrap().is_none());
            r.push(b"id\":14}");
            assert!(r.next_frame().unwrap().is_some());
        }
        assert!(r.pending() <= 1);
        assert!(r.buf.len() < 64);
    }
}

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
//! recoverable error (its boundary is known). A NUL byte always ends the current frame: valid
//! JSON never contains a raw NUL, and every legacy peer ends its frames with one, so a frame
//! cut short by a NUL is reported ([`Decoded::Unterminated`]) and decoding resumes after it.
//! An oversize frame or a stray start byte is fatal because the stream can no longer be
//! resynchronised.

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
    /// A frame was cut short by a NUL byte: `data[..end]` are separators, the frame's
    /// beginning and the NUL (at `end - 1`). The caller must discard exactly `end` bytes,
    /// answer [`unterminated`] and decode on.
    Unterminated {
        /// One past the NUL that ended the frame.
        end: usize,
    },
}

/// The error for a frame that a NUL byte ended before it was complete (errno `BAD_JSON`).
pub fn unterminated() -> ProtocolError {
    ProtocolError::new(
        errno::BAD_JSON,
        "frame ended by a NUL byte before it was complete",
    )
}

/// [`unterminated`] on a WebSocket connection: there the end of a text message ends
/// the frame (the reader puts the NUL), so the message was cut, not by a NUL.
pub fn unterminated_message() -> ProtocolError {
    ProtocolError::new(
        errno::BAD_JSON,
        "WebSocket message ended before its JSON was complete",
    )
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

/// The bytes that matter to [`Decoder::decode`] outside a string: the NUL, a quote
/// and the brackets.
const STOPS: [bool; 256] = stops(b"\0\"{}[]");
/// The bytes that matter inside a string: the NUL, the closing quote and a backslash.
const STRING_STOPS: [bool; 256] = stops(b"\0\"\\");

/// A table marking `bytes`.
const fn stops(bytes: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
}

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
    /// Returns [`Decoded::Unterminated`] when a NUL byte comes before the frame completes,
    /// [`CodecError::Oversize`] as soon as the partial frame is longer than the limit with no
    /// NUL in sight (a frame of exactly `limit` bytes is accepted, and so is a NUL right
    /// after `limit` bytes of an unfinished one) and [`CodecError::Garbage`] when a frame
    /// would start with a byte other than `{` or `[`. After either error, the stream is
    /// unusable.
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
        // One byte past the limit is looked at: a NUL there still ends the frame.
        let window = frame.len().min(self.limit.saturating_add(1));
        // Bytes before the limit; the one at the limit, if any, is looked at last.
        let below = window.min(self.limit);
        // The state in locals (the loop's hot path), written back when it stops.
        let (mut depth, mut in_string, mut escaped) = (self.depth, self.in_string, self.escaped);
        let mut i = self.scanned;
        while i < below {
            if !escaped {
                // Jump over the bytes that change nothing (most of a frame), by table.
                let stops = if in_string { &STRING_STOPS } else { &STOPS };
                match frame[i..below].iter().position(|&b| stops[usize::from(b)]) {
                    Some(at) => i += at,
                    None => {
                        i = below;
                        break;
                    }
                }
            }
            let b = frame[i];
            i += 1;
            if b == 0 {
                self.reset();
                return Ok(Decoded::Unterminated { end: start + i });
            }
            if in_string {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else {
                    in_string = false; // the table stopped at a quote
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
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
        if i < window {
            // The byte at the limit: only a NUL may stand there.
            if frame[i] == 0 {
                self.reset();
                return Ok(Decoded::Unterminated { end: start + i + 1 });
            }
            return Err(CodecError::Oversize { limit: self.limit });
        }
        (self.depth, self.in_string, self.escaped) = (depth, in_string, escaped);
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
            Ok(Decoded::Unterminated { end }) => {
                self.consume(end);
                Err(CodecError::Invalid(unterminated()))
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
mod tests;

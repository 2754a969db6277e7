//! Malformed input of every kind, and a flood thread that sends it over many
//! connections and checks each answer: every recoverable bad frame gets exactly one
//! error frame (msgid 11) with the errno its kind deserves, in order; every fatal one
//! gets its error and then the close.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{Next, RawReader};

/// How long a flood connection waits for the server's answers.
const WAIT: Duration = Duration::from_secs(15);

/// A small deterministic PRNG (xorshift64*): reproducible floods without a dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded; any seed works.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.range(0, items.len())]
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.range(0, 100) < percent
    }
}

/// A recoverable bad frame and the errno of its error reply (`None`: no reply, e.g.
/// a flood of separator bytes).
pub struct Bad {
    /// The bytes, separators included.
    pub bytes: Vec<u8>,
    /// The expected errno.
    pub errno: Option<i64>,
    /// The kind, for failure messages.
    pub kind: &'static str,
}

fn bad(kind: &'static str, bytes: impl Into<Vec<u8>>, errno: Option<i64>) -> Bad {
    let mut bytes = bytes.into();
    bytes.push(0);
    Bad { bytes, errno, kind }
}

/// Frames that are well-formed JSON objects with a known msgid but wrong fields,
/// before login: (text, errno).
const WRONG_FIELDS: &[(&str, i64)] = &[
    (r#"{"id":"1","msgid":1,"password":"p"}"#, 105),
    (r#"{"id":1,"msgid":1,"password":7}"#, 105),
    (r#"{"id":1.5,"msgid":1,"password":"p"}"#, 105),
    (r#"{"msgid":4,"name":["n"],"password":"p"}"#, 105),
    (r#"{"msgid":4,"name":"n","password":{"a":1}}"#, 105),
    (r#"{"msgid":1,"password":"p"}"#, 104),
    (r#"{"id":1,"msgid":1}"#, 104),
    (r#"{"msgid":4,"name":"n"}"#, 104),
    (r#"{"msgid":4,"password":"p"}"#, 104),
    // Well-formed requests that need a login.
    (r#"{"id":1,"msg":"x","msgid":6,"toid":2}"#, 107),
    (r#"{"friendid":2,"id":1,"msgid":7}"#, 107),
    (r#"{"id":1,"msgid":3}"#, 107),
    (
        r#"{"groupid":1,"id":1,"msg":"x","msgid":10,"name":"n"}"#,
        107,
    ),
    (r#"{"groupdesc":"d","groupname":"g","id":1,"msgid":8}"#, 107),
    // No usable msgid.
    ("{}", 102),
    (r#"{"a":1}"#, 102),
    (r#"{"msgid":"1"}"#, 102),
    (r#"{"msgid":null}"#, 102),
    (r#"{"msgid":1.5}"#, 102),
    (r#"{"msgid":true}"#, 102),
    (r#"{"msgid":[1]}"#, 102),
    (r#"{"msgid":123456789012345678901234567890}"#, 102),
    // Not objects.
    ("[]", 101),
    ("[1,2,3]", 101),
    (r#"[{"msgid":13}]"#, 101),
    ("[[[[]]]]", 101),
    // Not JSON, braces balanced.
    ("{not json}", 100),
    (r#"{"msgid":13,}"#, 100),
    (r#"{"msgid":13 "x":1}"#, 100),
    (r#"{"msgid":1e400}"#, 100),
];

/// One recoverable bad frame of a random kind.
pub fn recoverable(rng: &mut Rng) -> Bad {
    match rng.range(0, 8) {
        0 => {
            // Invalid UTF-8 inside a string of an otherwise fine frame: a stray
            // continuation byte first (random high bytes alone may happen to be valid).
            let mut b = br#"{"id":1,"msg":""#.to_vec();
            b.push(rng.range(0x80, 0xC0) as u8);
            for _ in 0..rng.range(0, 64) {
                b.push(rng.range(0x80, 0x100) as u8);
            }
            b.extend_from_slice(br#"","msgid":6,"toid":2}"#);
            bad("invalid utf-8", b, Some(100))
        }
        1 => {
            // Junk between braces: never JSON (it starts with a letter), never
            // containing a bracket or quote, so the frame ends at our `}`.
            let mut b = b"{z".to_vec();
            for _ in 0..rng.range(0, 200) {
                let c = loop {
                    let c = rng.range(1, 256) as u8;
                    if !b"{}[]\"\\".contains(&c) {
                        break c;
                    }
                };
                b.push(c);
            }
            b.push(b'}');
            bad("junk in braces", b, Some(100))
        }
        2 | 3 => {
            let (text, errno) = *rng.pick(WRONG_FIELDS);
            bad("wrong fields", text, Some(errno))
        }
        4 => {
            let m: i64 = match rng.range(0, 3) {
                // Server-only ids, and ids past the extensions in use or planned (15-49).
                0 => *rng.pick(&[0, 2, 5, 11, 12, 14, 16, -1]),
                1 => rng.range(50, 1_000_000_000) as i64,
                _ => -(rng.range(1, 1_000_000) as i64),
            };
            bad("unknown msgid", format!("{{\"msgid\":{m}}}"), Some(103))
        }
        5 => {
            // Deep nesting that still fits the 64 KiB limit: serde's recursion limit.
            if rng.chance(50) {
                let k = rng.range(200, 30_000);
                let b = [vec![b'['; k], vec![b']'; k]].concat();
                bad("deep array nesting", b, Some(100))
            } else {
                let k = rng.range(200, 10_000);
                let b = [b"{\"a\":".repeat(k), b"1".to_vec(), vec![b'}'; k]].concat();
                bad("deep object nesting", b, Some(100))
            }
        }
        6 => {
            // A flood of separators: ignored, no reply.
            let mut b = vec![0u8; rng.range(1, 256 * 1024)];
            for _ in 0..rng.range(0, 64) {
                let at = rng.range(0, b.len());
                b[at] = *rng.pick(b" \n\r\t");
            }
            Bad {
                bytes: b,
                errno: None,
                kind: "separator flood",
            }
        }
        _ => {
            let (text, errno) = *rng.pick(WRONG_FIELDS);
            // The same, with separators around and no NUL: the stream decoder copes.
            let mut b = b"\r\n ".to_vec();
            b.extend_from_slice(text.as_bytes());
            b.push(b'\n');
            Bad {
                bytes: b,
                errno: Some(errno),
                kind: "wrong fields, newline-separated",
            }
        }
    }
}

/// How a flood connection ends.
pub enum Ending {
    /// A frame after which the server must reply `errno` and close.
    Fatal {
        /// The bytes.
        bytes: Vec<u8>,
        /// 100 or 106.
        errno: i64,
        /// The kind, for messages.
        kind: &'static str,
    },
    /// Half a frame, then we close.
    HalfThenClose(Vec<u8>),
    /// The batch is sent and we close without reading any reply.
    Abandon,
    /// We read the replies, then close.
    Clean,
}

/// A random ending.
pub fn ending(rng: &mut Rng) -> Ending {
    match rng.range(0, 10) {
        0 | 1 => {
            let mut b = vec![*rng.pick(b"hxZ\x01\x7f\xff}]\"1")];
            for _ in 0..rng.range(0, 100) {
                b.push(rng.range(0, 256) as u8);
            }
            Ending::Fatal {
                bytes: b,
                errno: 100,
                kind: "garbage start byte",
            }
        }
        2 => {
            let pad = "x".repeat(rng.range(65_536, 100_000));
            Ending::Fatal {
                bytes: format!("{{\"msgid\":13,\"pad\":\"{pad}\"}}\0").into_bytes(),
                errno: 106,
                kind: "oversize frame",
            }
        }
        3 => Ending::Fatal {
            bytes: vec![b'['; 100_000],
            errno: 106,
            kind: "100k unterminated '['",
        },
        4 | 5 => {
            let text = r#"{"id":1,"msg":"half","msgid":6,"toid":2}"#;
            let cut = rng.range(1, text.len() - 1);
            let mut b = Vec::new();
            if rng.chance(50) {
                b.resize(rng.range(1, 64 * 1024), 0);
            }
            b.extend_from_slice(&text.as_bytes()[..cut]);
            Ending::HalfThenClose(b)
        }
        6 => Ending::Abandon,
        _ => Ending::Clean,
    }
}

/// What one flood thread did.
#[derive(Debug, Default, Clone)]
pub struct FloodStats {
    /// Malformed frames sent (separator floods and half frames count as one).
    pub frames: usize,
    /// Connections opened.
    pub connections: usize,
    /// Error replies checked.
    pub errors_checked: usize,
    /// Fatal frames answered by their error and a close.
    pub fatal_closes: usize,
}

/// Writes `bytes` in random pieces (so frames are split across reads).
fn write_split(s: &mut TcpStream, bytes: &[u8], rng: &mut Rng) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let n = if rng.chance(70) {
            bytes.len() - at
        } else {
            rng.range(1, 4096).min(bytes.len() - at)
        };
        s.write_all(&bytes[at..at + n])?;
        at += n;
    }
    Ok(())
}

/// Reads until PONG; returns the errnos of the error frames before it.
fn errors_until_pong(r: &mut RawReader, what: &str) -> Result<Vec<i64>, String> {
    let deadline = Instant::now() + WAIT;
    let mut errnos = Vec::new();
    loop {
        match r.next_by(deadline) {
            Next::Frame(v) if v["msgid"] == 14 => return Ok(errnos),
            Next::Frame(v) if v["msgid"] == 11 => {
                errnos.push(v["errno"].as_i64().ok_or(format!("no errno in {v}"))?)
            }
            Next::Frame(v) => return Err(format!("{what}: unexpected frame {v}")),
            Next::Timeout => return Err(format!("{what}: no PONG within {WAIT:?}")),
            Next::Eof => return Err(format!("{what}: closed before the PONG")),
        }
    }
}

/// Sends `total` malformed frames to `addr` over as many connections as it takes,
/// checking every answer. Returns a description of the first discrepancy.
pub fn flood(addr: SocketAddr, seed: u64, total: usize) -> Result<FloodStats, String> {
    let mut rng = Rng::new(seed);
    let mut st = FloodStats::default();
    while st.frames < total {
        let mut s = TcpStream::connect_timeout(&addr, WAIT).map_err(|e| format!("connect: {e}"))?;
        s.set_write_timeout(Some(WAIT)).unwrap();
        st.connections += 1;
        let mut r = RawReader::new(&s);
        let conn = st.connections;
        let what = format!("seed {seed} connection {conn}");

        // A batch of recoverable frames, then a PING as the barrier.
        let n = rng.range(0, 30).min(total - st.frames);
        let batch: Vec<Bad> = (0..n).map(|_| recoverable(&mut rng)).collect();
        st.frames += n;
        let end = if st.frames < total {
            st.frames += 1;
            ending(&mut rng)
        } else {
            Ending::Clean
        };
        let mut bytes: Vec<u8> = Vec::new();
        for b in &batch {
            bytes.extend_from_slice(&b.bytes);
        }
        if matches!(end, Ending::Abandon) {
            let _ = write_split(&mut s, &bytes, &mut rng);
            continue;
        }
        bytes.extend_from_slice(b"{\"msgid\":13}\0");
        write_split(&mut s, &bytes, &mut rng).map_err(|e| format!("{what}: write: {e}"))?;
        let got = errors_until_pong(&mut r, &what)?;
        let want: Vec<i64> = batch.iter().filter_map(|b| b.errno).collect();
        if got != want {
            let kinds: Vec<&str> = batch.iter().map(|b| b.kind).collect();
            return Err(format!(
                "{what}: errors {got:?}, expected {want:?} for {kinds:?}"
            ));
        }
        st.errors_checked += got.len();

        match end {
            Ending::Fatal { bytes, errno, kind } => {
                // The server may close before reading all of it: a failed write is fine.
                let _ = s.write_all(&bytes);
                match r.next_within(WAIT) {
                    Next::Frame(v) if v["msgid"] == 11 && v["errno"] == errno => {}
                    other => {
                        return Err(format!(
                            "{what}: {kind}: expected error {errno}, got {other:?}"
                        ))
                    }
                }
                match r.next_within(WAIT) {
                    Next::Eof => st.fatal_closes += 1,
                    other => {
                        return Err(format!(
                            "{what}: {kind}: expected the close after the error, got {other:?}"
                        ))
                    }
                }
            }
            Ending::HalfThenClose(b) => {
                let _ = s.write_all(&b);
            }
            Ending::Abandon | Ending::Clean => {}
        }
    }
    Ok(st)
}

//! ONE_CHAT read without building a `Value`: the frame's fields are borrowed as raw JSON
//! text, in key order, and the delivered frame is written from them.
//!
//! The rule: this path takes only frames whose delivered bytes it produces exactly as
//! `parse_request` + `delivery_frame` + `serde_json::to_string` would, and only frames
//! that path accepts. Anything else (escapes, floats, nested values, `ext`, `cid`, a field of
//! the wrong type, more than [`MAX_FIELDS`] fields) gets `None`, and the caller takes the
//! `Value` path.
//!
//! Nothing here allocates but the delivered frame itself: the fields sit in an array
//! on the stack, kept in key order as they are read.
//!
//! The object is read by hand, not by serde_json: deserialising its fields as
//! `RawValue`s cost ~5,000 instructions per chat-bench frame (callgrind), most of this
//! path. The reader takes only the flat objects whose every value is in canonical form
//! (see [`scan`]); whatever else it meets, valid JSON or not, goes to serde_json on the
//! `Value` path, which gives the errors.

use std::cmp::Ordering;
use std::fmt;

/// The most distinct fields a frame may have on this path (a legacy client sends 7).
pub const MAX_FIELDS: usize = 16;

/// A ONE_CHAT frame whose every field is in canonical form.
#[derive(Debug)]
pub struct FastChat<'a> {
    /// The sender (`id`).
    pub id: i64,
    /// The recipient (`toid`, or `to` when `toid` is absent).
    pub toid: i64,
    /// Whether the sender wrote its own `time` (then it stays).
    has_time: bool,
    /// The frame, when it is already in the form serde_json writes (no whitespace,
    /// keys in order, none repeated): the delivered frame is then this text with the
    /// server's fields spliced in.
    compact: Option<&'a str>,
    /// Every field as sent, in the order `serde_json::Map` keeps them.
    fields: Fields<'a>,
}

/// Up to [`MAX_FIELDS`] `(key, raw value)` pairs sorted by key, a repeated key keeping
/// its last value: what a `BTreeMap` (and so `serde_json::Map`) makes of the object.
struct Fields<'a> {
    /// How many of `items` are in use.
    len: usize,
    /// `(key, raw value)`, sorted by key.
    items: [(&'a str, &'a str); MAX_FIELDS],
    /// Every key was added after the last one (none out of order, none repeated).
    sorted: bool,
}

impl<'a> Fields<'a> {
    fn as_slice(&self) -> &[(&'a str, &'a str)] {
        &self.items[..self.len]
    }

    /// Adds or replaces `key`; false when the array is full.
    fn insert(&mut self, key: &'a str, value: &'a str) -> bool {
        // Clients write their keys sorted (serde_json's and nlohmann's maps do): then
        // each key goes at the end.
        let after_last = self.len == 0 || key_order(self.items[self.len - 1].0, key).is_lt();
        if after_last && self.len < MAX_FIELDS {
            self.items[self.len] = (key, value);
            self.len += 1;
            return true;
        }
        self.sorted = false;
        match self.as_slice().binary_search_by(|(k, _)| key_order(k, key)) {
            Ok(i) => self.items[i].1 = value,
            Err(_) if self.len == MAX_FIELDS => return false,
            Err(i) => {
                self.items.copy_within(i..self.len, i + 1);
                self.items[i] = (key, value);
                self.len += 1;
            }
        }
        true
    }
}

/// `a.cmp(b)` (byte order, as `str` and so `BTreeMap` order keys), inlined: keys are
/// a few bytes, and a `memcmp` call per comparison was a tenth of this path's time.
#[inline]
fn key_order(a: &str, b: &str) -> Ordering {
    for (x, y) in a.bytes().zip(b.bytes()) {
        if x != y {
            return x.cmp(&y);
        }
    }
    a.len().cmp(&b.len())
}

impl fmt::Debug for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.as_slice().iter().copied())
            .finish()
    }
}

/// Reads `bytes` (one frame, without its NUL) as a ONE_CHAT, or `None`.
pub fn parse_fast_chat(bytes: &[u8]) -> Option<FastChat<'_>> {
    let mut known = Known::default();
    // Built in place: the fields are half a KiB, and each move of them was a memcpy.
    let mut chat = FastChat {
        id: 0,
        toid: 0,
        has_time: false,
        compact: None,
        fields: Fields {
            len: 0,
            items: [("", ""); MAX_FIELDS],
            sorted: true,
        },
    };
    chat.compact = scan(bytes, &mut chat.fields, &mut known)?;
    // `ext` switches the connection's replies and `cid` asks for a confirmation
    // (and is never forwarded): both are the Value path's business.
    // `dseq` is removed there too (the server's own, protocol.md §12).
    if known.msgid? != "6" || known.value_path {
        return None;
    }
    chat.id = positive(known.id?)?;
    chat.toid = positive(known.toid.or(known.to)?)?;
    let is_string = |v: Option<&str>| v.map(|v| v.starts_with('"'));
    if is_string(known.msg) != Some(true)
        || is_string(known.name) == Some(false)
        || is_string(known.time) == Some(false)
    {
        return None;
    }
    chat.has_time = known.time.is_some();
    Some(chat)
}

/// The raw values of the fields this path reads (a repeated key: its last value),
/// noted as the frame is read, so that none is looked up afterwards.
#[derive(Default)]
struct Known<'a> {
    /// Must be `6` (ONE_CHAT).
    msgid: Option<&'a str>,
    /// The sender: must be the session's user.
    id: Option<&'a str>,
    /// The recipient.
    toid: Option<&'a str>,
    /// The recipient when `toid` is absent (legacy clients send both).
    to: Option<&'a str>,
    /// The text: must be a string.
    msg: Option<&'a str>,
    /// Replaced by the sender's name; a string if there.
    name: Option<&'a str>,
    /// Kept if there (a string); else the server's time is added.
    time: Option<&'a str>,
    /// `ext`, `cid` or `dseq` is there.
    value_path: bool,
}

impl<'a> Known<'a> {
    fn note(&mut self, key: &str, value: &'a str) {
        let slot = match key {
            "msgid" => &mut self.msgid,
            "id" => &mut self.id,
            "toid" => &mut self.toid,
            "to" => &mut self.to,
            "msg" => &mut self.msg,
            "name" => &mut self.name,
            "time" => &mut self.time,
            "ext" | "cid" | "dseq" => {
                self.value_path = true;
                return;
            }
            _ => return,
        };
        *slot = Some(value);
    }
}

/// Reads `bytes` as a JSON object of at most [`MAX_FIELDS`] distinct keys whose
/// values serde_json writes back as the same text: strings without escapes, integers
/// that fit, `true`, `false` and `null`. Keys are strings without escapes; a repeated
/// key keeps its last value. `None` for anything else, valid JSON or not. The fields
/// go to `fields` (empty at the call), and the ones this path reads are noted in
/// `known` on the way. Gives the frame's text if it is compact (see
/// [`FastChat::compact`]).
fn scan<'a>(
    bytes: &'a [u8],
    fields: &mut Fields<'a>,
    known: &mut Known<'a>,
) -> Option<Option<&'a str>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let b = text.as_bytes();
    // Whitespace anywhere, or a key out of order or repeated, and the frame is not
    // written back as it came.
    let mut spaced = false;
    let mut skip = |at: usize| {
        let past = skip_ws(b, at);
        spaced |= past != at;
        past
    };
    let mut i = skip(0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip(i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let end = string_end(b, i)?;
            let key = &text[i + 1..end - 1];
            i = skip(end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip(i + 1);
            let end = value_end(b, i)?;
            let value = &text[i..end];
            if !fields.insert(key, value) {
                return None;
            }
            known.note(key, value);
            i = skip(end);
            match b.get(i)? {
                b',' => i = skip(i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    if skip(i) != b.len() {
        return None;
    }
    Some((!spaced && fields.sorted).then_some(text))
}

/// The index past JSON whitespace from `i`.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index past the string starting at `i`, if it is one without escapes or
/// control characters (which JSON does not allow in a string unescaped).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let len = b[i + 1..]
        .iter()
        .position(|&c| STRING_STOPS[usize::from(c)])?;
    let end = i + 1 + len;
    (b[end] == b'"').then_some(end + 1)
}

/// What ends a string without escapes here: the quote; or a backslash or a control
/// character, which make [`string_end`] decline it.
const STRING_STOPS: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        table[c] = true;
        c += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// The index past the value starting at `i`, if it is a canonical one (see [`scan`]);
/// what follows it is the caller's to check.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b't' if b[i..].starts_with(b"true") => Some(i + 4),
        b'f' if b[i..].starts_with(b"false") => Some(i + 5),
        b'n' if b[i..].starts_with(b"null") => Some(i + 4),
        b'-' | b'0'..=b'9' => {
            let sign = usize::from(b[i] == b'-');
            let digits = &b[i + sign..];
            let len = digits
                .iter()
                .position(|c| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            // At most 18 digits (so it fits an i64 either way), no leading zero, no
            // `-0`. A fraction or an exponent after the digits is not a delimiter: the
            // caller declines the frame.
            let canonical = match (len, digits.first()) {
                (0 | 19.., _) => false,
                (1, Some(b'0')) => sign == 0,
                (_, first) => first != Some(&b'0'),
            };
            canonical.then_some(i + sign + len)
        }
        _ => None,
    }
}

fn positive(raw: &str) -> Option<i64> {
    raw.parse().ok().filter(|&n: &i64| n > 0)
}

impl FastChat<'_> {
    /// The frame as recipients get it (see `delivery_frame`), followed by the NUL that
    /// ends it on the wire: `name` is the sender's, `time` is `fallback_time()` only
    /// when the sender left it out. One allocation: the frame.
    pub fn delivery_wire(
        &self,
        sender_name: &str,
        fallback_time: impl FnOnce() -> String,
    ) -> String {
        let time = (!self.has_time).then(fallback_time);
        // The two fields the server writes, in key order, merged into the sender's
        // (`None`: the sender's own `time` stays).
        let own = [("name", Some(sender_name)), ("time", time.as_deref())];
        if let Some(text) = self.compact {
            return self.spliced(text, own);
        }
        let mut out = String::with_capacity(
            self.fields
                .as_slice()
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
                + sender_name.len()
                + time.as_ref().map_or(0, String::len)
                + 24,
        );
        out.push('{');
        let mut next = 0;
        for &(key, raw) in self.fields.as_slice() {
            while next < own.len() && own[next].0 < key {
                if let (k, Some(s)) = own[next] {
                    string_field(&mut out, k, s);
                }
                next += 1;
            }
            match own.get(next) {
                Some(&(k, Some(s))) if k == key => {
                    string_field(&mut out, k, s);
                    next += 1;
                }
                Some(&(k, None)) if k == key => {
                    field(&mut out, key, raw);
                    next += 1;
                }
                _ => field(&mut out, key, raw),
            }
        }
        for &(k, s) in &own[next..] {
            if let Some(s) = s {
                string_field(&mut out, k, s);
            }
        }
        out.push_str("}\0");
        out
    }

    /// [`FastChat::delivery_wire`] of a compact frame: its text with the server's
    /// fields (`own`, in key order) put in place, a few copies instead of a write per
    /// field (chat-bench's frames, and the legacy client's, are compact).
    fn spliced(&self, text: &str, own: [(&str, Option<&str>); 2]) -> String {
        let at = |s: &str| s.as_ptr() as usize - text.as_ptr() as usize;
        let extra: usize = own
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, str::len) + 6)
            .sum();
        let mut out = String::with_capacity(text.len() + extra + 1);
        let fields = self.fields.as_slice();
        // The bytes of `text` before this index are in `out`.
        let mut copied = 0;
        for (k, value) in own {
            let i = fields.partition_point(|&(key, _)| key_order(key, k).is_lt());
            let Some(value) = value else {
                continue; // the sender's own `time` stays as it is
            };
            match fields.get(i) {
                Some(&(key, raw)) if key == k => {
                    let start = at(raw);
                    out.push_str(&text[copied..start]);
                    json_string(&mut out, value);
                    copied = start + raw.len();
                }
                Some(&(key, _)) => {
                    // Before the next key's opening quote.
                    let point = at(key) - 1;
                    out.push_str(&text[copied..point]);
                    bare_key(&mut out, k);
                    json_string(&mut out, value);
                    out.push(',');
                    copied = point;
                }
                None => {
                    // Before the closing brace. Not reached by a chat frame (its `to`
                    // or `toid` sorts after both), kept so that the splice holds for
                    // any fields.
                    let point = text.len() - 1;
                    out.push_str(&text[copied..point]);
                    string_field(&mut out, k, value); // after a comma: `out` holds `{…`
                    copied = point;
                }
            }
        }
        out.push_str(&text[copied..]);
        out.push('\0');
        out
    }
}

/// Appends `"key":` (with a comma unless it is the first field).
fn key(out: &mut String, key: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    bare_key(out, key);
}

/// Appends `"key":`, no comma before it.
fn bare_key(out: &mut String, key: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
}

/// Appends `"key":value`, `value` being raw JSON.
fn field(out: &mut String, k: &str, value: &str) {
    key(out, k);
    out.push_str(value);
}

/// Appends `"key":"text"`, `text` escaped as serde_json does.
fn string_field(out: &mut String, k: &str, text: &str) {
    key(out, k);
    json_string(out, text);
}

/// Appends `"text"`, escaped as serde_json does.
fn json_string(out: &mut String, text: &str) {
    // serde_json escapes exactly these: `"`, `\` and the control characters.
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&serde_json::to_string(text).expect("a string always serialises"));
    } else {
        out.push('"');
        out.push_str(text);
        out.push('"');
    }
}

#[cfg(test)]
mod tests;

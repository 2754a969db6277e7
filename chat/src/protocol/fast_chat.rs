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
mod tests {
    use super::*;
    use crate::protocol::{delivery_frame, parse_request, Request};

    /// At most 18 digits (so it fits an i64 either way), no leading zero.
    fn integer(digits: &[u8]) -> bool {
        !digits.is_empty()
            && digits.len() <= 18
            && digits.iter().all(u8::is_ascii_digit)
            && (digits[0] != b'0' || digits.len() == 1)
    }

    /// What the Value path delivers for `frame`.
    fn slow(frame: &str, name: &str) -> String {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        let Request::OneChat { frame, .. } = parse_request(v).unwrap().req else {
            panic!("not a chat")
        };
        serde_json::to_string(&delivery_frame(frame, name, "2030-01-01 00:00:00")).unwrap()
    }

    #[test]
    fn same_bytes_as_the_value_path() {
        for frame in [
            r#"{"msgid":6,"id":1,"from":"x","toid":2,"to":2,"msg":"hi","name":"me","time":"t"}"#,
            r#"{"msgid":6,"id":1,"to":2,"msg":"hi"}"#,
            r#"{"zz":null,"a":true,"msgid":6,"id":1,"toid":2,"msg":"日本語 ok","time":"t"}"#,
            r#"{ "msgid" : 6 , "id" : 10 , "toid" : 20 , "msg" : "" , "n" : -5 }"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":"a","x":"b","name":"a"}"#,
            // Zero and the longest integers this path takes (18 digits), either sign.
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","z":0,"p":123456789012345678,"n":-123456789012345678}"#,
        ] {
            let fast = parse_fast_chat(frame.as_bytes()).expect(frame);
            // Names that need escaping for one reason each (a lone quote or backslash too:
            // the check must see them alone), and one that does not.
            for name in [
                "plain",
                "real \"name\"",
                "tab\there\\",
                "\t",
                "a\u{1}b",
                "\"",
                "\\",
                " ",
            ] {
                let got = fast.delivery_wire(name, || "2030-01-01 00:00:00".into());
                assert_eq!(got, format!("{}\0", slow(frame, name)), "{frame}");
            }
        }
    }

    /// The fields as a log line shows them.
    #[test]
    fn debug_names_the_fields() {
        let fast = parse_fast_chat(br#"{"msgid":6,"id":1,"toid":2,"msg":"hi"}"#).unwrap();
        assert_eq!(
            format!("{fast:?}"),
            r#"FastChat { id: 1, toid: 2, has_time: false, compact: None, fields: {"id": "1", "msg": "\"hi\"", "msgid": "6", "toid": "2"} }"#
        );
    }

    /// Frames as chat-bench and the legacy client write them (compact, keys in
    /// order) are delivered by splicing; any whitespace, or a key out of order or
    /// repeated, takes the field-by-field writer. Both give the Value path's bytes
    /// (`the_reader_agrees_with_serde_json`).
    #[test]
    fn compact_frames_are_spliced() {
        let compact = |f: &str| parse_fast_chat(f.as_bytes()).unwrap().compact.is_some();
        assert!(compact(
            r#"{"id":1,"msg":"hi","msgid":6,"name":"u1","time":"t","to":2,"toid":2}"#
        ));
        assert!(compact(r#"{"id":1,"msg":"hi","msgid":6,"toid":2}"#));
        assert!(!compact(r#"{"id":1,"msg":"hi","msgid":6, "toid":2}"#));
        assert!(!compact(r#"{"id":1,"msgid":6,"msg":"hi","toid":2}"#));
        assert!(!compact(
            r#"{"id":1,"msg":"hi","msgid":6,"toid":2,"toid":2}"#
        ));
        assert!(!compact(
            "{\"id\":1,\"msg\":\"hi\",\"msgid\":6,\"toid\":2}\n"
        ));
    }

    /// What serde_json makes of `bytes` as this path took it before it read frames by
    /// hand: an object of borrowed keys (an escaped one fails) and raw values, kept if
    /// it has at most [`MAX_FIELDS`] keys and every value is in canonical form.
    fn by_serde(bytes: &[u8]) -> Option<Vec<(String, String)>> {
        use std::collections::BTreeMap;
        let map: BTreeMap<&str, &serde_json::value::RawValue> =
            serde_json::from_slice(bytes).ok()?;
        // The rule the serde_json reader of this path kept: a string without any
        // escape, an integer of up to 18 digits (no leading zero, no `-0`), `true`,
        // `false` or `null`.
        let same_text = |raw: &str| match raw.as_bytes() {
            [b'"', ..] => !raw.contains('\\'),
            b"true" | b"false" | b"null" => true,
            [b'-', digits @ ..] => integer(digits) && digits != b"0",
            digits => integer(digits),
        };
        (map.len() <= MAX_FIELDS && map.values().all(|v| same_text(v.get()))).then(|| {
            map.iter()
                .map(|(k, v)| ((*k).to_owned(), v.get().to_owned()))
                .collect()
        })
    }

    /// Whether the fields (by [`by_serde`]) make a chat this path takes: `msgid` 6,
    /// positive `id` and `toid` (or `to`), a string `msg`, `name` and `time` strings
    /// if there, and none of `ext`, `cid`, `dseq`.
    fn chat_rules(fields: &[(String, String)]) -> bool {
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let positive =
            |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n > 0);
        let string = |v: &str| v.starts_with('"');
        get("msgid") == Some("6")
            && ["ext", "cid", "dseq"].iter().all(|k| get(k).is_none())
            && positive(get("id"))
            && positive(get("toid").or(get("to")))
            && get("msg").is_some_and(string)
            && get("name").is_none_or(string)
            && get("time").is_none_or(string)
    }

    /// The hand-written reader takes exactly what serde_json reads as this path needs
    /// it, field for field, over frames that are one edit away from chat frames (it
    /// also declines a repeated key whose earlier value is not canonical, which the
    /// serde_json reader took; none of these frames has one):
    /// every byte deleted, replaced, or with a byte inserted before it, from a set of
    /// bytes that matter to JSON (structure, whitespace, escapes, numbers, control
    /// characters, broken UTF-8).
    #[test]
    fn the_reader_agrees_with_serde_json() {
        let bases: [&[u8]; 7] = [
            br#"{"id":12,"msg":"hi there","msgid":6,"name":"u1","time":"2026-01-01 00:00:00","to":13,"toid":13}"#,
            br#"{ "msgid" : 6 , "id" : -10 , "toid" : 20 , "msg" : "" , "n" : null, "t": true, "f": false }"#,
            "{\"msgid\":6,\"id\":1,\"toid\":2,\"msg\":\"日本語\",\"k\":\"a\\\"b\"}\n".as_bytes(),
            br#"{}"#,
            br#"{"b":1,"a":2,"msg":"x","b":"y","a":null,"msgid":6,"msgid":7}"#,
            // Compact without the server's fields; and extra fields around a name to
            // replace, keys out of order (not compact: the field-by-field writer).
            br#"{"id":1,"msg":"x","msgid":6,"toid":2}"#,
            br#"{"a":0,"id":1,"msg":"x","msgid":6,"name":"q","zz":true,"toid":2}"#,
        ];
        let edits: &[u8] = b" \t\n\r\"\\,:{}[]0-.eExtfn\x01\x1f\x7f\xff\xc3";
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for base in bases {
            frames.push(base.to_vec());
            for at in 0..=base.len() {
                if at < base.len() {
                    let mut f = base.to_vec();
                    f.remove(at);
                    frames.push(f);
                }
                for &e in edits {
                    let mut f = base.to_vec();
                    f.insert(at, e);
                    frames.push(f.clone());
                    if at < base.len() {
                        f.remove(at + 1);
                        frames.push(f);
                    }
                }
            }
        }
        let (mut taken, mut declined) = (0, 0);
        for f in &frames {
            let mut fields = Fields {
                len: 0,
                items: [("", ""); MAX_FIELDS],
                sorted: true,
            };
            let ours = scan(f, &mut fields, &mut Known::default()).map(|_| {
                fields
                    .as_slice()
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>()
            });
            let theirs = by_serde(f);
            assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(f));
            // The chat read from them: taken when the serde_json reader's rules took
            // it, and delivered as the Value path delivers it.
            let chat = parse_fast_chat(f);
            assert_eq!(
                chat.is_some(),
                theirs.as_deref().is_some_and(chat_rules),
                "{:?}",
                String::from_utf8_lossy(f)
            );
            if let Some(chat) = chat {
                let text = std::str::from_utf8(f).unwrap();
                let got = chat.delivery_wire("n", || "2030-01-01 00:00:00".into());
                assert_eq!(got, format!("{}\0", slow(text, "n")), "{text}");
            }
            if ours.is_some() {
                taken += 1;
            } else {
                declined += 1;
            }
        }
        // Both sides of the rule are exercised.
        assert!(
            taken > 1000 && declined > 1000,
            "{taken} taken, {declined} declined"
        );
    }

    #[test]
    fn key_order_is_str_order() {
        let keys = [
            "", "a", "ab", "b", "id", "msg", "msgid", "t", "time", "to", "toid", "é", "z\u{0}",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(key_order(a, b), a.cmp(b), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn sixteen_fields_and_repeats_fit() {
        let frame = r#"{"msgid":6,"id":1,"toid":2,"msg":"a","a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"a":2,"msg":"b"}"#;
        let fast = parse_fast_chat(frame.as_bytes()).expect("16 distinct fields");
        let got = fast.delivery_wire("n", || "2030-01-01 00:00:00".into());
        assert_eq!(got, format!("{}\0", slow(frame, "n")));
        assert!(
            got.contains(r#""a":2,"#) && got.contains(r#""msg":"b","#),
            "{got}"
        );
    }

    #[test]
    fn anything_else_takes_the_value_path() {
        for frame in [
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a\"b"}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":1.5}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":[1]}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":-0}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":12345678901234567890}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","ext":1}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","dseq":1}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","cid":1}"#,
            r#"{"msgid":6,"id":0,"toid":2,"msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":"2","msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":5}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","time":5}"#,
            r#"{"msgid":6,"id":1,"msg":"a"}"#,
            r#"{"msgid":7,"id":1,"toid":2,"msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","k\u0041":1}"#,
            r#"[6]"#,
            "{\"msgid\":6,\"id\":1,\"toid\":2,\"msg\":\"a\u{1}b\"}",
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a"} x"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a",}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":1e5}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":01}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","x":truex}"#,
            // 17 distinct fields: more than the array holds.
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"m":1}"#,
        ] {
            assert!(parse_fast_chat(frame.as_bytes()).is_none(), "{frame}");
        }
    }
}

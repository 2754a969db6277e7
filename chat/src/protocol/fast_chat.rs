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

use std::cmp::Ordering;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The most distinct fields a frame may have on this path (a legacy client sends 7).
pub const MAX_FIELDS: usize = 16;

/// A ONE_CHAT frame whose every field is in canonical form.
#[derive(Debug)]
pub struct FastChat<'a> {
    /// The sender (`id`).
    pub id: i64,
    /// The recipient (`toid`, or `to` when `toid` is absent).
    pub toid: i64,
    /// Every field as sent, in the order `serde_json::Map` keeps them.
    fields: Fields<'a>,
}

/// Up to [`MAX_FIELDS`] `(key, raw value)` pairs sorted by key, a repeated key keeping
/// its last value: what a `BTreeMap` (and so `serde_json::Map`) makes of the object.
struct Fields<'a> {
    len: usize,
    items: [(&'a str, &'a str); MAX_FIELDS],
}

impl<'a> Fields<'a> {
    fn as_slice(&self) -> &[(&'a str, &'a str)] {
        &self.items[..self.len]
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        let s = self.as_slice();
        s.binary_search_by(|(k, _)| key_order(k, key))
            .ok()
            .map(|i| s[i].1)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Adds or replaces `key`; false when the array is full.
    fn insert(&mut self, key: &'a str, value: &'a str) -> bool {
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

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {MAX_FIELDS} fields")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Fields {
                    len: 0,
                    items: [("", ""); MAX_FIELDS],
                };
                // Keys with escapes cannot be borrowed: the parse fails.
                while let Some(key) = map.next_key::<&'de str>()? {
                    let value: &'de RawValue = map.next_value()?;
                    if !fields.insert(key, value.get()) {
                        return Err(de::Error::custom("too many fields"));
                    }
                }
                Ok(fields)
            }
        }
        d.deserialize_map(FieldsVisitor)
    }
}

/// Reads `bytes` (one frame, without its NUL) as a ONE_CHAT, or `None`.
pub fn parse_fast_chat(bytes: &[u8]) -> Option<FastChat<'_>> {
    // Keys with escapes cannot be borrowed: the parse fails and the Value path runs.
    let fields: Fields = serde_json::from_slice(bytes).ok()?;
    // `ext` switches the connection's replies and `cid` asks for a confirmation
    // (and is never forwarded): both are the Value path's business.
    // `dseq` is removed there too (the server's own, protocol.md §12).
    if fields.get("msgid")? != "6"
        || fields.contains_key("ext")
        || fields.contains_key("cid")
        || fields.contains_key("dseq")
    {
        return None;
    }
    if !fields.as_slice().iter().all(|(_, v)| canonical(v)) {
        return None;
    }
    let id = positive(fields.get("id")?)?;
    let toid = positive(fields.get("toid").or_else(|| fields.get("to"))?)?;
    let is_string = |k: &str| fields.get(k).map(|v| v.starts_with('"'));
    if is_string("msg") != Some(true)
        || is_string("name") == Some(false)
        || is_string("time") == Some(false)
    {
        return None;
    }
    Some(FastChat { id, toid, fields })
}

/// Whether serde_json writes this value back as the same text: a string without
/// escapes, an integer that fits, `true`, `false` or `null`.
fn canonical(raw: &str) -> bool {
    match raw.as_bytes() {
        [b'"', ..] => !raw.contains('\\'),
        b"true" | b"false" | b"null" => true,
        [b'-', digits @ ..] => integer(digits) && digits != b"0",
        digits => integer(digits),
    }
}

/// At most 18 digits (so it fits an i64 either way), no leading zero.
fn integer(digits: &[u8]) -> bool {
    !digits.is_empty()
        && digits.len() <= 18
        && digits.iter().all(u8::is_ascii_digit)
        && (digits[0] != b'0' || digits.len() == 1)
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
        let time = (!self.fields.contains_key("time")).then(fallback_time);
        // The two fields the server writes, in key order, merged into the sender's
        // (`None`: the sender's own `time` stays).
        let own = [("name", Some(sender_name)), ("time", time.as_deref())];
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
}

/// Appends `"key":` (with a comma unless it is the first field).
fn key(out: &mut String, key: &str) {
    if out.len() > 1 {
        out.push(',');
    }
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

    /// The fields as a log line shows them, and why a frame that is not an object (or has
    /// too many fields) fails.
    #[test]
    fn debug_and_errors_name_the_fields() {
        let fast = parse_fast_chat(br#"{"msgid":6,"id":1,"toid":2,"msg":"hi"}"#).unwrap();
        assert_eq!(
            format!("{fast:?}"),
            r#"FastChat { id: 1, toid: 2, fields: {"id": "1", "msg": "\"hi\"", "msgid": "6", "toid": "2"} }"#
        );
        let e = serde_json::from_str::<Fields>("[6]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("an object of at most 16 fields"), "{e}");
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
            // 17 distinct fields: more than the array holds.
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","a":1,"b":1,"c":1,"d":1,"e":1,"f":1,"g":1,"h":1,"i":1,"j":1,"k":1,"l":1,"m":1}"#,
        ] {
            assert!(parse_fast_chat(frame.as_bytes()).is_none(), "{frame}");
        }
    }
}

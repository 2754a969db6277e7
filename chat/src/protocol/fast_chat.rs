//! ONE_CHAT read without building a `Value`: the frame's fields are borrowed as raw JSON
//! text, in key order, and the delivered frame is written from them.
//!
//! The rule: this path takes only frames whose delivered bytes it produces exactly as
//! `parse_request` + `delivery_frame` + `serde_json::to_string` would, and only frames
//! that path accepts. Anything else (escapes, floats, nested values, `ext`, `cid`, a field of
//! the wrong type) gets `None`, and the caller takes the `Value` path.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

/// A ONE_CHAT frame whose every field is in canonical form.
#[derive(Debug)]
pub struct FastChat<'a> {
    /// The sender (`id`).
    pub id: i64,
    /// The recipient (`toid`, or `to` when `toid` is absent).
    pub toid: i64,
    /// Every field as sent, in the order `serde_json::Map` keeps them.
    fields: BTreeMap<&'a str, &'a RawValue>,
}

/// Reads `bytes` (one frame, without its NUL) as a ONE_CHAT, or `None`.
pub fn parse_fast_chat(bytes: &[u8]) -> Option<FastChat<'_>> {
    // Keys with escapes cannot be borrowed: the parse fails and the Value path runs.
    let fields: BTreeMap<&str, &RawValue> = serde_json::from_slice(bytes).ok()?;
    // `ext` switches the connection's replies and `cid` asks for a confirmation
    // (and is never forwarded): both are the Value path's business.
    // `dseq` is removed there too (the server's own, protocol.md §12).
    if fields.get("msgid")?.get() != "6"
        || fields.contains_key("ext")
        || fields.contains_key("cid")
        || fields.contains_key("dseq")
    {
        return None;
    }
    if !fields.values().all(|v| canonical(v.get())) {
        return None;
    }
    let id = positive(fields.get("id")?)?;
    let toid = positive(fields.get("toid").or_else(|| fields.get("to"))?)?;
    let is_string = |k: &str| fields.get(k).map(|v| v.get().starts_with('"'));
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

fn positive(raw: &RawValue) -> Option<i64> {
    raw.get().parse().ok().filter(|&n: &i64| n > 0)
}

impl FastChat<'_> {
    /// The frame as recipients get it (see `delivery_frame`): `name` is the sender's,
    /// `time` is `fallback_time()` only when the sender left it out.
    pub fn delivery_text(
        &self,
        sender_name: &str,
        fallback_time: impl FnOnce() -> String,
    ) -> String {
        let name = serde_json::to_string(sender_name).expect("a string always serialises");
        let time = if self.fields.contains_key("time") {
            None
        } else {
            Some(serde_json::to_string(&fallback_time()).expect("a string always serialises"))
        };
        // The two fields this writes, in key order, merged into the sender's.
        let extras = [("name", Some(name.as_str())), ("time", time.as_deref())];
        let mut out = String::with_capacity(
            self.fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>()
                + name.len()
                + time.as_ref().map_or(0, String::len)
                + 16,
        );
        out.push('{');
        let mut next = 0;
        for (k, v) in &self.fields {
            while next < extras.len() && extras[next].0 < *k {
                if let (key, Some(text)) = extras[next] {
                    field(&mut out, key, text);
                }
                next += 1;
            }
            if next < extras.len() && extras[next].0 == *k {
                field(&mut out, k, extras[next].1.unwrap_or(v.get()));
                next += 1;
            } else {
                field(&mut out, k, v.get());
            }
        }
        for (key, text) in &extras[next..] {
            if let Some(text) = text {
                field(&mut out, key, text);
            }
        }
        out.push('}');
        out
    }
}

/// Appends `"key":value` (with a comma unless it is the first field).
fn field(out: &mut String, key: &str, value: &str) {
    if out.len() > 1 {
        out.push(',');
    }
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    out.push_str(value);
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
        ] {
            let fast = parse_fast_chat(frame.as_bytes()).expect(frame);
            let got = fast.delivery_text("real \"name\"", || "2030-01-01 00:00:00".into());
            assert_eq!(got, slow(frame, "real \"name\""), "{frame}");
        }
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
            r#"{"msgid":6,"id":0,"toid":2,"msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":"2","msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":5}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","time":5}"#,
            r#"{"msgid":6,"id":1,"msg":"a"}"#,
            r#"{"msgid":7,"id":1,"toid":2,"msg":"a"}"#,
            r#"{"msgid":6,"id":1,"toid":2,"msg":"a","k\u0041":1}"#,
            r#"[6]"#,
        ] {
            assert!(parse_fast_chat(frame.as_bytes()).is_none(), "{frame}");
        }
    }
}

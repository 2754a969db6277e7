//! Unit tests of the fast path for one-to-one chat frames: the same bytes as the Value path.

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
    let map: BTreeMap<&str, &serde_json::value::RawValue> = serde_json::from_slice(bytes).ok()?;
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
    let positive = |v: Option<&str>| v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|n| n > 0);
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

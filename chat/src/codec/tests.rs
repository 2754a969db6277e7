//! Unit tests of the decoder and the frame reader.

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
            Decoded::Unterminated { .. } => panic!("no NUL in the frame"),
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

/// Each push ends inside the next frame, so the reader never runs dry: the
/// consumed bytes must still be dropped, and `pending` counts the partial frame.
/// (Mutation testing: with `push` never compacting, or `pending` returning 0 or 1,
/// the other tests passed: a reader that drains now and then clears its buffer.)
#[test]
fn frame_reader_compacts_a_stream_that_never_drains() {
    let mut r = FrameReader::new(DEFAULT_FRAME_LIMIT);
    r.push(b"{\"msg");
    assert_eq!(r.pending(), 5);
    for _ in 0..1000 {
        r.push(b"id\":13}\0{\"msg");
        assert!(r.next_frame().unwrap().is_some());
        assert!(r.next_frame().unwrap().is_none());
        assert_eq!(r.pending(), 5, "the next frame's beginning");
    }
    assert!(r.buf.len() < 64, "{} bytes kept", r.buf.len());
}

#[test]
fn nul_ends_an_unterminated_frame_and_decoding_resumes() {
    // The issue's case: no reply at all before, now an error and the PONG.
    let out = collect(DEFAULT_FRAME_LIMIT, &[b"{\"msgid\":13\0{\"msgid\":13}\0"]);
    assert_eq!(out.len(), 2);
    assert_eq!(invalid_errno(&out[0]), errno::BAD_JSON);
    assert_eq!(out[0], Err(CodecError::Invalid(unterminated())));
    assert_eq!(out[1], Ok(json!({"msgid": 13})));
    // Inside a string, after a backslash, split across reads, nested.
    for stream in [
        &b"{\"msg\":\"ab\0{\"msgid\":13}"[..],
        b"{\"msg\":\"ab\\\0{\"msgid\":13}",
        b"[{\"a\":[1,\0\0 {\"msgid\":13}",
    ] {
        for cut in 0..=stream.len() {
            let out = collect(DEFAULT_FRAME_LIMIT, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(out.len(), 2, "{stream:?} cut at {cut}: {out:?}");
            assert_eq!(invalid_errno(&out[0]), errno::BAD_JSON);
            assert_eq!(out[1], Ok(json!({"msgid": 13})));
        }
    }
}

#[test]
fn nul_right_after_the_limit_is_not_oversize() {
    // `{"a":1` is 6 bytes: cut by a NUL at limit 6, it is an unterminated frame (100), not
    // an oversize one (106); one more byte before the NUL is oversize.
    let mut d = Decoder::new(6);
    assert_eq!(
        d.decode(b"\0{\"a\":1\0{}"),
        Ok(Decoded::Unterminated { end: 8 })
    );
    assert_eq!(d.decode(b"{}"), Ok(Decoded::Frame { start: 0, end: 2 }));
    let mut d = Decoder::new(6);
    assert_eq!(
        d.decode(b"{\"a\":12\0"),
        Err(CodecError::Oversize { limit: 6 })
    );
}

/// What a log line says of a codec failure, and the limit a decoder was made with.
#[test]
fn error_display_and_limit() {
    assert_eq!(
        CodecError::Oversize { limit: 10 }.to_string(),
        "frame exceeds the limit of 10 bytes"
    );
    assert_eq!(
        CodecError::Garbage { byte: b'x' }.to_string(),
        "frame starts with byte 0x78, expected '{'"
    );
    assert_eq!(Decoder::new(10).limit(), 10);
    assert_eq!(Decoder::default().limit(), DEFAULT_FRAME_LIMIT);
}

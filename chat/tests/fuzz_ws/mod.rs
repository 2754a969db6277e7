//! The WebSocket path's properties (issue 17), with `fuzz_props`' generator and the
//! `websocket` fuzz target's checks: client frames (valid, fragmented, control,
//! unmasked, corrupted, oversize) into the reader, hostile request heads, and the
//! framer's give-back of unwritten output; plus the target's corpus.

use serde_json::Value;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::Frame;

use super::harness::{self, Rng};
use super::{for_cases, rand_chunker, rand_limit, rand_request, replay};
use chat::protocol;

/// A request's JSON, without the NUL.
fn request(rng: &mut Rng) -> Vec<u8> {
    let mut v = protocol::encode(&rand_request(rng));
    v.pop();
    v
}

/// One client frame on the wire: masked, except now and then.
fn client_frame(rng: &mut Rng, opcode: OpCode, payload: Vec<u8>, fin: bool) -> Vec<u8> {
    let mut f = match opcode {
        OpCode::Control(Control::Ping) => Frame::ping(payload),
        OpCode::Control(Control::Pong) => Frame::pong(payload),
        OpCode::Control(_) => Frame::close(None),
        OpCode::Data(_) => Frame::message(payload, opcode, fin),
    };
    if !rng.one_in(30) {
        f.header_mut().mask = Some((rng.next_u64() as u32).to_be_bytes());
    }
    let mut out = Vec::new();
    f.format(&mut out).expect("a Vec takes it");
    out
}

/// A hostile sequence of client frames: requests as text messages (some several
/// to a message, some fragmented around control frames), pings, pongs, closes,
/// binary, invalid UTF-8 and opcodes, unmasked frames, and messages near the limit,
/// then a few bytes flipped now and then.
fn rand_frames(rng: &mut Rng, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(8) {
        let frame = match rng.below(12) {
            0..=3 => {
                let p = request(rng);
                client_frame(rng, OpCode::Data(Data::Text), p, true)
            }
            4 => {
                let p = request(rng);
                let cut = rng.below(p.len() + 1);
                let mut v = client_frame(rng, OpCode::Data(Data::Text), p[..cut].to_vec(), false);
                v.extend(client_frame(
                    rng,
                    OpCode::Control(Control::Ping),
                    b"x".to_vec(),
                    true,
                ));
                v.extend(client_frame(
                    rng,
                    OpCode::Data(Data::Continue),
                    p[cut..].to_vec(),
                    true,
                ));
                v
            }
            5 => {
                let p = vec![7; rng.below(126)];
                client_frame(rng, OpCode::Control(Control::Ping), p, true)
            }
            6 => client_frame(rng, OpCode::Control(Control::Pong), Vec::new(), true),
            7 if rng.one_in(3) => {
                client_frame(rng, OpCode::Control(Control::Close), Vec::new(), true)
            }
            8 => {
                let p = request(rng);
                client_frame(rng, OpCode::Data(Data::Binary), p, true)
            }
            9 => client_frame(
                rng,
                OpCode::Data(Data::Text),
                b"{\"msg\":\"\xff\"}".to_vec(),
                true,
            ),
            10 => {
                let n = limit.min(70_000) + rng.range(0, 1100);
                client_frame(rng, OpCode::Data(Data::Text), vec![b'a'; n], true)
            }
            _ => {
                let p = request(rng);
                let mut v = client_frame(rng, OpCode::Data(Data::Text), p, true);
                v[0] = (v[0] & 0xf0) | [0x3, 0xb, 0x0][rng.below(3)];
                v
            }
        };
        out.extend(frame);
    }
    if !out.is_empty() && rng.one_in(5) {
        for _ in 0..rng.range(1, 3) {
            let i = rng.below(out.len());
            out[i] ^= 1 << rng.below(8);
        }
    }
    out
}

#[test]
fn websocket_reader_survives_hostile_frames() {
    for_cases("websocket_reader", 400, |rng| {
        let limit = rand_limit(rng).max(16);
        let stream = rand_frames(rng, limit);
        harness::check_ws_reader(limit, &stream, rand_chunker(rng, limit));
    });
}

const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[test]
fn websocket_request_heads_are_read_or_refused() {
    for_cases("websocket_http", 600, |rng| {
        let mut head = match rng.below(4) {
            0 => UPGRADE.to_vec(),
            1 => b"GET /app.js?x=1 HTTP/1.1\r\nHost: y\r\n\r\n".to_vec(),
            2 => (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
            _ => [UPGRADE, &vec![b'h'; rng.below(20_000)]].concat(),
        };
        for _ in 0..rng.below(4) {
            if head.is_empty() {
                break;
            }
            let i = rng.below(head.len());
            match rng.below(3) {
                0 => head[i] = rng.next_u64() as u8,
                1 => head.truncate(i),
                _ => head.insert(i, b"\r\n: \0"[rng.below(5)]),
            }
        }
        harness::check_http(&head);
    });
}

#[test]
fn websocket_framer_gives_back_whole_unwritten_frames() {
    for_cases("websocket_framer", 300, |rng| {
        let mut stream = Vec::new();
        for _ in 0..rng.below(6) {
            stream.extend(protocol::encode(&rand_request(rng)));
        }
        if rng.one_in(3) {
            stream.extend(vec![b'z'; rng.below(70_000)]);
        }
        harness::check_ws_framer(&stream, rng.next_u64() as u8);
    });
}

#[test]
fn corpus_websocket() {
    replay("websocket", harness::fuzz_websocket);
}

/// The reader's frames are what the gateway decodes: a request sent as one text
/// message comes out as its JSON and one NUL, parseable as sent.
#[test]
fn a_text_message_becomes_the_frame_sent() {
    for_cases("websocket_roundtrip", 200, |rng| {
        let v = rand_request(rng);
        let mut bytes = protocol::encode(&v);
        bytes.pop();
        let wire = client_frame(rng, OpCode::Data(Data::Text), bytes.clone(), true);
        let mut r = chat::ws::WsReader::new(
            chat::codec::DEFAULT_FRAME_LIMIT,
            chat::ws::CloseState::new(),
        );
        r.push(&wire);
        let event = r.read_event();
        if wire[1] & 0x80 == 0 {
            assert!(
                matches!(event, chat::ws::WsEvent::Broken(_)),
                "unmasked: {event:?}"
            );
            return;
        }
        assert_eq!(event, chat::ws::WsEvent::Text);
        let got = r.frames.retrieve_all_as_vec();
        assert_eq!(&got[..got.len() - 1], &bytes[..]);
        let back: Value = serde_json::from_slice(&got[..got.len() - 1]).unwrap();
        assert_eq!(back, v);
    });
}

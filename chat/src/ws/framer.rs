//! The WebSocket side of a connection's output: every frame the server sends
//! (JSON + NUL, as on TCP) goes out as one text message, and what was never
//! written comes back as those frames at the close, so that nothing stored is lost.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;

use net::OutputFramer;
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame};

/// One message on the wire, for giving back what was not written.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Its bytes on the wire, header included.
    len: usize,
    /// Its header's length; 0 for bytes sent raw (not ours to give back).
    header: usize,
    /// A text message carrying one of our frames.
    text: bool,
}

/// The [`OutputFramer`] of a WebSocket connection.
#[derive(Debug)]
pub struct WsFramer {
    /// The messages that may still be (partly) in the output buffer, oldest first.
    sent: VecDeque<Sent>,
    /// Their total length on the wire.
    total: usize,
    /// Shared with the connection's reader: whether a close frame went out, and
    /// the status of the one the server sends when it closes.
    close: Rc<CloseState>,
}

/// The close handshake's state, shared by a connection's reader and framer: only
/// one close frame goes out, and the reader can set the status the server's
/// close carries (1000 unless the reader saw a reason for another).
#[derive(Debug)]
pub struct CloseState {
    /// A close frame went out (ours or the answer to the client's).
    sent: Cell<bool>,
    /// The status of the close frame the server sends when it ends the connection.
    code: Cell<CloseCode>,
}

impl CloseState {
    /// Nothing sent yet; a server close says 1000 (normal).
    pub fn new() -> Rc<CloseState> {
        Rc::new(CloseState {
            sent: Cell::new(false),
            code: Cell::new(CloseCode::Normal),
        })
    }

    /// Notes that a close frame went out (the client's was answered).
    pub fn mark_sent(&self) {
        self.sent.set(true);
    }

    /// The status the server's close will carry, e.g. 1009 for a message too big
    /// (RFC 6455 §7.4.1).
    pub fn set_code(&self, code: CloseCode) {
        self.code.set(code);
    }

    /// A close frame with `code`, unless one went out already.
    pub fn frame(&self, code: CloseCode) -> Option<Vec<u8>> {
        if self.sent.replace(true) {
            return None;
        }
        let mut out = Vec::new();
        let frame = Frame::close(Some(CloseFrame {
            code,
            reason: "".into(),
        }));
        // Writing into a Vec cannot fail.
        let _ = frame.format(&mut out);
        Some(out)
    }
}

impl WsFramer {
    /// A framer sharing `close` with the connection's reader.
    pub fn new(close: Rc<CloseState>) -> WsFramer {
        WsFramer {
            sent: VecDeque::new(),
            total: 0,
            close,
        }
    }

    /// Forgets the messages wholly before the last `buffered` bytes: written.
    fn forget_written(&mut self, buffered: usize) {
        while let Some(front) = self.sent.front() {
            if self.total - front.len < buffered {
                break;
            }
            self.total -= front.len;
            self.sent.pop_front();
        }
    }

    fn note(&mut self, s: Sent) {
        self.total += s.len;
        self.sent.push_back(s);
    }
}

/// One text message holding `payload`, on the wire.
pub fn text_message(payload: &[u8], out: &mut Vec<u8>) -> usize {
    let before = out.len();
    let frame = Frame::message(payload.to_vec(), OpCode::Data(Data::Text), true);
    // Writing into a Vec cannot fail.
    let _ = frame.format(out);
    out.len() - before
}

impl OutputFramer for WsFramer {
    /// Each NUL-terminated frame in `data` (one, from every send path of the
    /// server) becomes one text message, without its NUL.
    fn encode(&mut self, data: &[u8], buffered: usize, out: &mut Vec<u8>) {
        self.forget_written(buffered);
        for piece in data.split(|&b| b == 0).filter(|p| !p.is_empty()) {
            let len = text_message(piece, out);
            self.note(Sent {
                len,
                header: len - piece.len(),
                text: true,
            });
        }
    }

    fn raw(&mut self, len: usize, buffered: usize) {
        self.forget_written(buffered);
        self.note(Sent {
            len,
            header: 0,
            text: false,
        });
    }

    fn decode_unsent(&mut self, wire: &[u8]) -> Vec<u8> {
        self.forget_written(wire.len());
        let mut out = Vec::new();
        // Bytes of the oldest message that the kernel already took: that message
        // counts as written.
        let torn = self.total.saturating_sub(wire.len());
        let mut at = 0usize; // the current message's offset among those remembered
        for s in &self.sent {
            let end = at + s.len;
            if at >= torn && s.text {
                if let Some(payload) = wire.get(at - torn + s.header..end - torn) {
                    out.extend_from_slice(payload);
                    out.push(0);
                }
            }
            at = end;
        }
        self.sent.clear();
        self.total = 0;
        out
    }

    /// The server's close: 1000 (the ERROR frame before it, if any, says why),
    /// or the status the reader set (1009 after a message over the limit).
    fn closing(&mut self) -> Option<Vec<u8>> {
        self.close.frame(self.close.code.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framer() -> WsFramer {
        WsFramer::new(CloseState::new())
    }

    #[test]
    fn one_text_message_per_frame_and_unsent_ones_come_back_whole() {
        let mut f = framer();
        let mut wire = Vec::new();
        f.encode(b"{\"msgid\":6,\"n\":1}\0", 0, &mut wire);
        let first = wire.len();
        assert_eq!(wire[0], 0x81, "a final text frame");
        assert_eq!(&wire[2..], b"{\"msgid\":6,\"n\":1}");
        f.raw(2, wire.len());
        wire.extend_from_slice(&[0x8a, 0]); // a pong
        f.encode(
            b"{\"msgid\":6,\"n\":2}\0{\"msgid\":6,\"n\":3}\0",
            wire.len(),
            &mut wire,
        );
        // The kernel took the first message and one byte of the pong.
        let unsent = &wire[first + 1..];
        let back = f.decode_unsent(unsent);
        assert_eq!(back, b"{\"msgid\":6,\"n\":2}\0{\"msgid\":6,\"n\":3}\0");
    }

    #[test]
    fn a_torn_message_counts_as_written() {
        let mut f = framer();
        let mut wire = Vec::new();
        f.encode(b"{\"msgid\":6,\"n\":1}\0", 0, &mut wire);
        f.encode(b"{\"msgid\":6,\"n\":2}\0", wire.len(), &mut wire);
        let back = f.decode_unsent(&wire[3..]);
        assert_eq!(back, b"{\"msgid\":6,\"n\":2}\0");
        // Everything written: nothing comes back.
        let mut f = framer();
        let mut wire = Vec::new();
        f.encode(b"{\"a\":1}\0", 0, &mut wire);
        assert!(f.decode_unsent(&[]).is_empty());
    }

    #[test]
    fn written_messages_are_forgotten_and_one_close_frame_is_sent() {
        let mut f = framer();
        let mut wire = Vec::new();
        for _ in 0..1000 {
            wire.clear();
            f.encode(b"{\"a\":1}\0", 0, &mut wire);
        }
        assert_eq!(f.sent.len(), 1, "only the newest may be unwritten");
        let close = f.closing().expect("a close frame");
        assert_eq!(close[0], 0x88);
        assert!(f.closing().is_none());
    }
}

//! The WebSocket side of a connection's input: tungstenite's protocol layer
//! reads messages from the bytes the IO loop received (through an in-memory
//! stream) and answers pings and closes; each text message's JSON becomes one
//! frame (JSON + NUL) for the gateway's usual decoder.

use std::io::{self, Read, Write};
use std::rc::Rc;

use net::Buffer;
use tungstenite::error::{CapacityError, Error};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};

use super::framer::CloseState;
use tungstenite::Message;

/// Room above the frame limit for a message's separators: a text message longer
/// than the limit plus this is refused by the protocol layer before it is buffered
/// whole; one up to it reaches the gateway, whose decoder refuses it (errno 106).
const MESSAGE_SLACK: usize = 1024;

/// The in-memory stream tungstenite reads from and writes to.
#[derive(Debug, Default)]
struct Pipe {
    /// Received bytes not yet read by the protocol layer; from `head` on.
    input: Vec<u8>,
    head: usize,
    /// What the protocol layer wrote (pongs, close answers), for the connection.
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rest = &self.input[self.head..];
        if rest.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.head += n;
        if self.head == self.input.len() {
            self.input.clear();
            self.head = 0;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What one step of [`WsReader::read_event`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A text message: its bytes and a NUL were appended to [`WsReader::frames`].
    Text,
    /// A binary message (refused: the protocol is JSON text).
    Binary,
    /// A ping (its pong is in the output; [`WsReader::drop_answer`] takes it back).
    Ping,
    /// A pong.
    Control,
    /// Nothing more until more bytes arrive.
    Idle,
    /// The client closed (the answer is in the output) or the stream ended.
    Closed,
    /// A message longer than the limit.
    Oversize,
    /// A protocol violation (unmasked frame, bad opcode, invalid UTF-8 text, …).
    Broken(String),
}

/// One WebSocket connection's reading state, kept in the gateway's connection state.
pub struct WsReader {
    ctx: WebSocketContext,
    pipe: Pipe,
    /// Frames (JSON + NUL) from text messages that the gateway has not decoded yet;
    /// it decodes them as it decodes a TCP connection's input buffer.
    pub frames: Buffer,
    /// Shared with the connection's [`super::WsFramer`]: whether a close frame
    /// went out, and the status of the server's.
    close: Rc<CloseState>,
    /// The protocol layer ended (closed or broken): nothing more is read.
    done: bool,
    /// Where in the output the last event's answer starts.
    answered_from: usize,
}

impl std::fmt::Debug for WsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsReader")
            .field("pending_in", &(self.pipe.input.len() - self.pipe.head))
            .field("frames", &self.frames.readable_bytes())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl WsReader {
    /// A reader for messages of at most `frame_limit` bytes (plus separators),
    /// after an upgrade; `close` is shared with the connection's framer.
    pub fn new(frame_limit: usize, close: Rc<CloseState>) -> WsReader {
        let max = frame_limit.saturating_add(MESSAGE_SLACK);
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        WsReader {
            ctx: WebSocketContext::new(Role::Server, Some(config)),
            pipe: Pipe::default(),
            frames: Buffer::with_capacity(0),
            close,
            done: false,
            answered_from: 0,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.done {
            self.pipe.input.extend_from_slice(bytes);
        }
    }

    /// Reads the next message, if its bytes are all there.
    pub fn read_event(&mut self) -> WsEvent {
        if self.done {
            return WsEvent::Idle;
        }
        // Every event flushes: what is written from here on answers this one.
        self.answered_from = self.pipe.output.len();
        let event = match self.ctx.read(&mut self.pipe) {
            Ok(Message::Text(text)) => {
                self.frames.append(text.as_bytes());
                self.frames.append(&[0]);
                WsEvent::Text
            }
            Ok(Message::Binary(_)) => WsEvent::Binary,
            Ok(Message::Ping(_)) => WsEvent::Ping,
            Ok(Message::Pong(_) | Message::Frame(_)) => WsEvent::Control,
            Ok(Message::Close(_)) | Err(Error::ConnectionClosed | Error::AlreadyClosed) => {
                self.close.mark_sent();
                WsEvent::Closed
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => WsEvent::Idle,
            Err(Error::Capacity(CapacityError::MessageTooLong { .. })) => {
                self.close_as_too_big();
                WsEvent::Oversize
            }
            Err(e) => WsEvent::Broken(e.to_string()),
        };
        if !matches!(
            event,
            WsEvent::Text | WsEvent::Binary | WsEvent::Ping | WsEvent::Control | WsEvent::Idle
        ) {
            self.done = true;
        }
        // Pongs and the answer to a close go out now.
        let _ = self.ctx.flush(&mut self.pipe);
        event
    }

    /// The server's close frame will say 1009 (message too big, RFC 6455 §7.4.1):
    /// a message was over the frame limit (the ERROR 106 before it says so too).
    pub fn close_as_too_big(&self) {
        self.close.set_code(CloseCode::Size);
    }

    /// Takes back what the protocol layer wrote for the last event (a ping's
    /// pong, when the ping is over the rate limit).
    pub fn drop_answer(&mut self) {
        let from = self.answered_from.min(self.pipe.output.len());
        self.pipe.output.truncate(from);
    }

    /// The close frame that answers a protocol violation (1002, RFC 6455 §7.4.1),
    /// unless a close frame went out already.
    pub fn protocol_error_close(&self) -> Option<Vec<u8>> {
        self.close.frame(CloseCode::Protocol)
    }

    /// What the protocol layer wrote (control frames), to send as it is.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pipe.output)
    }
}

//! OutputFramer: an optional per-connection layer between what the application
//! sends and what goes on the wire (a WebSocket wraps each frame in its own
//! framing), so that the application's send paths stay the same for every transport.

/// Turns the bytes of each [`crate::TcpConnection::send`] into wire bytes, and wire
/// bytes that were never written back into the application's bytes. Set with
/// [`crate::TcpConnection::set_framer`]; called on the connection's loop thread only.
pub trait OutputFramer {
    /// Appends the wire form of one send's `data` to `out`. `buffered` is how many
    /// output bytes are still unwritten as this send comes (what is older has left,
    /// so a framer that remembers frame boundaries may forget those).
    fn encode(&mut self, data: &[u8], buffered: usize, out: &mut Vec<u8>);

    /// Notes `len` bytes sent as they are with [`crate::TcpConnection::send_wire`]
    /// (control frames of the framer's protocol), `buffered` as in `encode`.
    fn raw(&mut self, len: usize, buffered: usize);

    /// The application bytes of `wire`, the connection's unsent output at its close
    /// (a suffix of everything sent): whole frames only; one the kernel already
    /// took part of counts as written, and raw bytes are left out.
    fn decode_unsent(&mut self, wire: &[u8]) -> Vec<u8>;

    /// The bytes to write before the connection half-closes after a
    /// [`crate::TcpConnection::shutdown`] (a close frame), if any.
    fn closing(&mut self) -> Option<Vec<u8>> {
        None
    }
}

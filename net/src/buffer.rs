//! Buffer: muduo's byte buffer, `prependable | readable | writable` in one `Vec<u8>`.

use std::cell::RefCell;
use std::io::{self, Read};

/// Cheap bytes reserved in front of the readable data, so a length header can be
/// prepended without moving the payload.
pub const CHEAP_PREPEND: usize = 8;
/// The writable space a new buffer starts with.
pub const INITIAL_SIZE: usize = 1024;
/// Size of the scratch buffer that `read_from` reads into when the buffer's free
/// space is small: one read can take this much without growing the buffer up front.
pub(crate) const EXTRA_BUF: usize = 65536;
/// Free space from which `read_from` reads straight into the buffer (a buffer grown
/// by a burst); below it, it reads into the scratch and appends what came.
pub const DIRECT_READ: usize = 4096;

thread_local! {
    /// `read_from`'s overflow space, one per thread and so one per loop. muduo uses an
    /// uninitialised stack array; a zeroed one would cost a 64 KiB memset on every
    /// read (a quarter of the pingpong server's CPU time), so it is zeroed once here.
    static EXTRA: RefCell<Box<[u8]>> = RefCell::new(vec![0; EXTRA_BUF].into_boxed_slice());
}

/// A growable byte buffer with muduo's layout:
///
/// ```text
/// +-------------------+------------------+------------------+
/// | prependable bytes |  readable bytes  |  writable bytes  |
/// |                   |     (CONTENT)    |                  |
/// +-------------------+------------------+------------------+
/// 0      <=      reader_index   <=   writer_index    <=    len
/// ```
///
/// Not thread-safe: a buffer belongs to one connection on one loop.
#[derive(Debug, Clone)]
pub struct Buffer {
    buf: Vec<u8>,
    reader_index: usize,
    writer_index: usize,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::new()
    }
}

impl Buffer {
    /// A buffer with [`INITIAL_SIZE`] writable bytes.
    pub fn new() -> Buffer {
        Buffer::with_capacity(INITIAL_SIZE)
    }

    /// A buffer with `initial` writable bytes.
    pub fn with_capacity(initial: usize) -> Buffer {
        Buffer {
            buf: vec![0; CHEAP_PREPEND + initial],
            reader_index: CHEAP_PREPEND,
            writer_index: CHEAP_PREPEND,
        }
    }

    /// Bytes ready to be read.
    pub fn readable_bytes(&self) -> usize {
        self.writer_index - self.reader_index
    }

    /// Bytes that can be written without growing or compacting.
    pub fn writable_bytes(&self) -> usize {
        self.buf.len() - self.writer_index
    }

    /// Bytes in front of the readable data (at least [`CHEAP_PREPEND`] after a reset).
    pub fn prependable_bytes(&self) -> usize {
        self.reader_index
    }

    /// True when nothing is readable.
    pub fn is_empty(&self) -> bool {
        self.readable_bytes() == 0
    }

    /// The readable bytes.
    pub fn peek(&self) -> &[u8] {
        &self.buf[self.reader_index..self.writer_index]
    }

    /// Position (relative to `peek()`) of the first `\r\n`.
    pub fn find_crlf(&self) -> Option<usize> {
        self.peek().windows(2).position(|w| w == b"\r\n")
    }

    /// Position (relative to `peek()`) of the first `\r\n` at or after `start`.
    pub fn find_crlf_from(&self, start: usize) -> Option<usize> {
        let data = self.peek();
        if start >= data.len() {
            return None;
        }
        data[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|p| p + start)
    }

    /// Position (relative to `peek()`) of the first `\n`.
    pub fn find_eol(&self) -> Option<usize> {
        self.find_byte(b'\n')
    }

    /// Position (relative to `peek()`) of the first `\n` at or after `start`.
    pub fn find_eol_from(&self, start: usize) -> Option<usize> {
        self.find_byte_from(b'\n', start)
    }

    /// Position (relative to `peek()`) of the first `byte`.
    pub fn find_byte(&self, byte: u8) -> Option<usize> {
        self.find_byte_from(byte, 0)
    }

    /// Position (relative to `peek()`) of the first `byte` at or after `start`.
    pub fn find_byte_from(&self, byte: u8, start: usize) -> Option<usize> {
        let data = self.peek();
        if start >= data.len() {
            return None;
        }
        data[start..]
            .iter()
            .position(|&b| b == byte)
            .map(|p| p + start)
    }

    /// Consumes `len` readable bytes (all of them if `len` is larger).
    pub fn retrieve(&mut self, len: usize) {
        if len < self.readable_bytes() {
            self.reader_index += len;
        } else {
            self.retrieve_all();
        }
    }

    /// Consumes everything and resets the indices, so the buffer is reused from the front.
    pub fn retrieve_all(&mut self) {
        self.reader_index = CHEAP_PREPEND;
        self.writer_index = CHEAP_PREPEND;
    }

    /// Consumes `len` bytes and returns them.
    pub fn retrieve_as_vec(&mut self, len: usize) -> Vec<u8> {
        let len = len.min(self.readable_bytes());
        let out = self.peek()[..len].to_vec();
        self.retrieve(len);
        out
    }

    /// Consumes everything and returns it.
    pub fn retrieve_all_as_vec(&mut self) -> Vec<u8> {
        self.retrieve_as_vec(self.readable_bytes())
    }

    /// Consumes `len` bytes and returns them as a string, replacing invalid UTF-8.
    pub fn retrieve_as_string(&mut self, len: usize) -> String {
        String::from_utf8_lossy(&self.retrieve_as_vec(len)).into_owned()
    }

    /// Consumes everything and returns it as a string, replacing invalid UTF-8.
    pub fn retrieve_all_as_string(&mut self) -> String {
        self.retrieve_as_string(self.readable_bytes())
    }

    /// Appends bytes, compacting or growing first when needed.
    pub fn append(&mut self, data: &[u8]) {
        self.ensure_writable_bytes(data.len());
        self.buf[self.writer_index..self.writer_index + data.len()].copy_from_slice(data);
        self.writer_index += data.len();
    }

    /// Makes room for `len` more bytes.
    pub fn ensure_writable_bytes(&mut self, len: usize) {
        if self.writable_bytes() < len {
            self.make_space(len);
        }
    }

    /// The writable space, for filling in place; follow with [`Buffer::has_written`].
    pub fn begin_write(&mut self) -> &mut [u8] {
        &mut self.buf[self.writer_index..]
    }

    /// Marks `len` bytes of the writable space as written.
    pub fn has_written(&mut self, len: usize) {
        assert!(len <= self.writable_bytes());
        self.writer_index += len;
    }

    /// Takes back the last `len` written bytes.
    pub fn unwrite(&mut self, len: usize) {
        assert!(len <= self.readable_bytes());
        self.writer_index -= len;
    }

    /// Appends a big-endian `i64`.
    pub fn append_i64(&mut self, x: i64) {
        self.append(&x.to_be_bytes());
    }

    /// Appends a big-endian `i32`.
    pub fn append_i32(&mut self, x: i32) {
        self.append(&x.to_be_bytes());
    }

    /// Appends a big-endian `i16`.
    pub fn append_i16(&mut self, x: i16) {
        self.append(&x.to_be_bytes());
    }

    /// Appends one byte.
    pub fn append_i8(&mut self, x: i8) {
        self.append(&x.to_be_bytes());
    }

    fn peek_array<const N: usize>(&self) -> [u8; N] {
        assert!(self.readable_bytes() >= N, "not enough readable bytes");
        let mut a = [0u8; N];
        a.copy_from_slice(&self.peek()[..N]);
        a
    }

    /// Reads a big-endian `i64` without consuming it. Panics if fewer than 8 bytes are readable.
    pub fn peek_i64(&self) -> i64 {
        i64::from_be_bytes(self.peek_array())
    }

    /// Reads a big-endian `i32` without consuming it. Panics if fewer than 4 bytes are readable.
    pub fn peek_i32(&self) -> i32 {
        i32::from_be_bytes(self.peek_array())
    }

    /// Reads a big-endian `i16` without consuming it. Panics if fewer than 2 bytes are readable.
    pub fn peek_i16(&self) -> i16 {
        i16::from_be_bytes(self.peek_array())
    }

    /// Reads one byte without consuming it. Panics if the buffer is empty.
    pub fn peek_i8(&self) -> i8 {
        i8::from_be_bytes(self.peek_array())
    }

    /// Reads and consumes a big-endian `i64`.
    pub fn read_i64(&mut self) -> i64 {
        let x = self.peek_i64();
        self.retrieve(8);
        x
    }

    /// Reads and consumes a big-endian `i32`.
    pub fn read_i32(&mut self) -> i32 {
        let x = self.peek_i32();
        self.retrieve(4);
        x
    }

    /// Reads and consumes a big-endian `i16`.
    pub fn read_i16(&mut self) -> i16 {
        let x = self.peek_i16();
        self.retrieve(2);
        x
    }

    /// Reads and consumes one byte.
    pub fn read_i8(&mut self) -> i8 {
        let x = self.peek_i8();
        self.retrieve(1);
        x
    }

    /// Puts `data` in front of the readable bytes. Panics if it does not fit in the prependable space.
    pub fn prepend(&mut self, data: &[u8]) {
        assert!(data.len() <= self.prependable_bytes(), "prepend overflow");
        self.reader_index -= data.len();
        self.buf[self.reader_index..self.reader_index + data.len()].copy_from_slice(data);
    }

    /// Prepends a big-endian `i64`.
    pub fn prepend_i64(&mut self, x: i64) {
        self.prepend(&x.to_be_bytes());
    }

    /// Prepends a big-endian `i32`.
    pub fn prepend_i32(&mut self, x: i32) {
        self.prepend(&x.to_be_bytes());
    }

    /// Prepends a big-endian `i16`.
    pub fn prepend_i16(&mut self, x: i16) {
        self.prepend(&x.to_be_bytes());
    }

    /// Prepends one byte.
    pub fn prepend_i8(&mut self, x: i8) {
        self.prepend(&x.to_be_bytes());
    }

    /// Releases memory: keeps the readable bytes plus `reserve` bytes of writable space.
    pub fn shrink(&mut self, reserve: usize) {
        let mut other = Buffer::with_capacity(self.readable_bytes() + reserve);
        other.append(self.peek());
        *self = other;
    }

    /// The allocated size, prepend area included.
    pub fn internal_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// One read from `reader`: straight into the writable space when it has at least
    /// [`DIRECT_READ`] bytes (at most 64 KiB of it), else into a 64 KiB per-thread
    /// scratch buffer whose bytes are then appended, growing the buffer only as much
    /// as needed. Returns what `read` returned (0 at end of stream). One read takes
    /// at most [`Buffer::read_offer`] bytes, however large the buffer grew: a buffer
    /// that once held a burst does not make every later read as large.
    ///
    /// muduo reads with one `readv` into the free space plus the scratch. A socket's
    /// `readv` goes through the kernel's vectored file path, which a plain `read`
    /// (`recv` for std's and mio's sockets) skips: ~0.7 µs of the ~10 µs a
    /// one-to-one chat message costs the floor on this machine (BENCHMARKS.md). A
    /// connection's input is sized to what arrived (a chat frame), so copying a
    /// small read out of the scratch costs less than the second iovec saved.
    pub fn read_from<R: Read>(&mut self, reader: &mut R) -> io::Result<usize> {
        if let Some(writable) = self.direct_space() {
            let free = &mut self.buf[self.writer_index..self.writer_index + writable];
            let n = reader.read(free)?;
            self.writer_index += n;
            return Ok(n);
        }
        EXTRA.with(|extra| match extra.try_borrow_mut() {
            Ok(mut extra) => self.read_with_extra(reader, &mut extra),
            // Only if `reader` itself reads into a Buffer on this thread.
            Err(_) => self.read_with_extra(reader, &mut vec![0; EXTRA_BUF]),
        })
    }

    /// How many bytes the next [`Buffer::read_from`] offers the reader.
    pub fn read_offer(&self) -> usize {
        self.direct_space().unwrap_or(EXTRA_BUF)
    }

    /// The free space [`Buffer::read_from`] reads straight into (at most 64 KiB of
    /// it), if it is at least [`DIRECT_READ`]; else it reads into the scratch. One
    /// decision for both, so the offer always matches the read.
    fn direct_space(&self) -> Option<usize> {
        let writable = self.writable_bytes().min(EXTRA_BUF);
        (writable >= DIRECT_READ).then_some(writable)
    }

    fn read_with_extra<R: Read>(&mut self, reader: &mut R, extra: &mut [u8]) -> io::Result<usize> {
        let n = reader.read(extra)?;
        self.append(&extra[..n]);
        Ok(n)
    }

    fn make_space(&mut self, len: usize) {
        if self.writable_bytes() + self.prependable_bytes() < len + CHEAP_PREPEND {
            // Not enough room even after compacting: grow exactly to what is needed.
            self.buf.resize(self.writer_index + len, 0);
        } else {
            // Move the readable data to the front and reuse the space before it.
            let readable = self.readable_bytes();
            self.buf
                .copy_within(self.reader_index..self.writer_index, CHEAP_PREPEND);
            self.reader_index = CHEAP_PREPEND;
            self.writer_index = CHEAP_PREPEND + readable;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSliceMut;

    #[test]
    fn append_retrieve() {
        let mut buf = Buffer::new();
        assert_eq!(buf.readable_bytes(), 0);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);

        let s = vec![b'x'; 200];
        buf.append(&s);
        assert_eq!(buf.readable_bytes(), s.len());
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - s.len());
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);

        let s2 = buf.retrieve_as_string(50);
        assert_eq!(s2.len(), 50);
        assert_eq!(buf.readable_bytes(), s.len() - s2.len());
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - s.len());
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + s2.len());
        assert_eq!(s2, "x".repeat(50));

        buf.append(&s);
        assert_eq!(buf.readable_bytes(), 2 * s.len() - s2.len());
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 2 * s.len());
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + s2.len());

        let s3 = buf.retrieve_all_as_string();
        assert_eq!(s3.len(), 350);
        assert_eq!(buf.readable_bytes(), 0);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);
        assert_eq!(s3, "x".repeat(350));
    }

    #[test]
    fn grow() {
        let mut buf = Buffer::new();
        buf.append(&[b'y'; 400]);
        assert_eq!(buf.readable_bytes(), 400);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 400);

        buf.retrieve(50);
        assert_eq!(buf.readable_bytes(), 350);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 400);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + 50);

        buf.append(&[b'z'; 1000]);
        assert_eq!(buf.readable_bytes(), 1350);
        assert_eq!(buf.writable_bytes(), 0);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + 50);

        buf.retrieve_all();
        assert_eq!(buf.readable_bytes(), 0);
        assert_eq!(buf.writable_bytes(), 1400);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);
    }

    #[test]
    fn inside_grow() {
        let mut buf = Buffer::new();
        buf.append(&[b'y'; 800]);
        assert_eq!(buf.readable_bytes(), 800);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 800);

        buf.retrieve(500);
        assert_eq!(buf.readable_bytes(), 300);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 800);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + 500);

        buf.append(&[b'z'; 300]);
        assert_eq!(buf.readable_bytes(), 600);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 600);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);
        assert_eq!(&buf.peek()[..300], &[b'y'; 300][..]);
        assert_eq!(&buf.peek()[300..], &[b'z'; 300][..]);
    }

    #[test]
    fn shrink() {
        let mut buf = Buffer::new();
        buf.append(&[b'y'; 2000]);
        assert_eq!(buf.readable_bytes(), 2000);
        assert_eq!(buf.writable_bytes(), 0);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);

        buf.retrieve(1500);
        assert_eq!(buf.readable_bytes(), 500);
        assert_eq!(buf.writable_bytes(), 0);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND + 1500);

        buf.shrink(0);
        assert_eq!(buf.readable_bytes(), 500);
        assert_eq!(buf.writable_bytes(), 0);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);
        assert_eq!(buf.retrieve_all_as_string(), "y".repeat(500));
        assert!(buf.internal_capacity() < 1000);
    }

    #[test]
    fn prepend() {
        let mut buf = Buffer::new();
        buf.append(&[b'y'; 200]);
        assert_eq!(buf.readable_bytes(), 200);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 200);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND);

        buf.prepend_i32(0);
        assert_eq!(buf.readable_bytes(), 204);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE - 200);
        assert_eq!(buf.prependable_bytes(), CHEAP_PREPEND - 4);
        assert_eq!(buf.read_i32(), 0);
    }

    #[test]
    fn read_int() {
        let mut buf = Buffer::new();
        buf.append(b"HTTP");
        assert_eq!(buf.readable_bytes(), 4);
        assert_eq!(buf.peek_i8(), b'H' as i8);
        let top16 = buf.peek_i16();
        assert_eq!(top16, (b'H' as i16) * 256 + b'T' as i16);
        assert_eq!(
            buf.peek_i32(),
            top16 as i32 * 65536 + (b'T' as i32) * 256 + b'P' as i32
        );

        assert_eq!(buf.read_i8(), b'H' as i8);
        assert_eq!(buf.read_i16(), (b'T' as i16) * 256 + b'T' as i16);
        assert_eq!(buf.read_i8(), b'P' as i8);
        assert_eq!(buf.readable_bytes(), 0);
        assert_eq!(buf.writable_bytes(), INITIAL_SIZE);

        buf.append_i8(-1);
        buf.append_i16(-2);
        buf.append_i32(-3);
        buf.append_i64(-4);
        assert_eq!(buf.readable_bytes(), 15);
        assert_eq!(buf.read_i8(), -1);
        assert_eq!(buf.read_i16(), -2);
        assert_eq!(buf.read_i32(), -3);
        assert_eq!(buf.read_i64(), -4);
    }

    #[test]
    fn find_eol() {
        let mut buf = Buffer::new();
        buf.append(&vec![b'x'; 100_000]);
        assert_eq!(buf.find_eol(), None);
        assert_eq!(buf.find_eol_from(90_000), None);
        buf.append(b"\r\nabc\n");
        assert_eq!(buf.find_eol(), Some(100_001));
        assert_eq!(buf.find_crlf(), Some(100_000));
        assert_eq!(buf.find_crlf_from(100_001), None);
        assert_eq!(buf.find_eol_from(100_002), Some(100_005));
        assert_eq!(buf.find_byte(b'a'), Some(100_002));
        assert_eq!(buf.find_byte_from(b'x', 200_000), None);
    }

    #[test]
    fn move_keeps_content() {
        let mut buf = Buffer::new();
        buf.append(b"muduo");
        let data_ptr = buf.peek().as_ptr();
        let moved = buf;
        assert_eq!(moved.peek(), b"muduo");
        assert_eq!(
            moved.peek().as_ptr(),
            data_ptr,
            "a move does not copy the bytes"
        );
    }

    /// A reader that hands out a fixed byte string through `read_vectored`.
    struct Source(Vec<u8>);

    impl Read for Source {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.read_vectored(&mut [IoSliceMut::new(out)])
        }

        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            let mut n = 0;
            for b in bufs.iter_mut() {
                let take = b.len().min(self.0.len() - n);
                b[..take].copy_from_slice(&self.0[n..n + take]);
                n += take;
            }
            self.0.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn read_from_overflows_into_scratch_buffer() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = Buffer::new();
        buf.append(b"head");
        let n = buf.read_from(&mut Source(data.clone())).unwrap();
        assert_eq!(n, data.len());
        assert_eq!(buf.readable_bytes(), 4 + data.len());
        assert_eq!(&buf.peek()[..4], b"head");
        assert_eq!(&buf.peek()[4..], &data[..]);

        // Fits in the writable space: no growth.
        let mut small = Buffer::new();
        let cap = small.internal_capacity();
        assert_eq!(small.read_from(&mut Source(vec![7; 100])).unwrap(), 100);
        assert_eq!(small.internal_capacity(), cap);
        assert_eq!(small.peek(), &[7; 100][..]);
        assert_eq!(small.read_from(&mut Source(Vec::new())).unwrap(), 0);
    }

    #[test]
    fn read_from_offers_at_most_64k_of_a_large_buffer() {
        let mut buf = Buffer::with_capacity(1 << 20);
        assert_eq!(buf.read_offer(), EXTRA_BUF);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
        let mut src = Source(data.clone());
        assert_eq!(buf.read_from(&mut src).unwrap(), EXTRA_BUF);
        assert_eq!(buf.read_from(&mut src).unwrap(), EXTRA_BUF);
        assert_eq!(buf.peek(), &data[..2 * EXTRA_BUF]);
        // A small buffer offers the scratch.
        assert_eq!(Buffer::new().read_offer(), EXTRA_BUF);
        assert_eq!(Buffer::with_capacity(DIRECT_READ).read_offer(), DIRECT_READ);
        // Less than the free space: no growth.
        let mut small = Buffer::with_capacity(1 << 20);
        let cap = small.internal_capacity();
        assert_eq!(small.read_from(&mut Source(vec![3; 1000])).unwrap(), 1000);
        assert_eq!(small.internal_capacity(), cap);
    }

    /// A socket's reader: `readv` would work, but each read must be a plain one
    /// (the kernel's vectored path costs more per call).
    struct PlainOnly(Source);

    impl Read for PlainOnly {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.0.read(out)
        }

        fn read_vectored(&mut self, _: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            panic!("read_from used readv")
        }
    }

    /// Small reads (into the scratch) and large ones (straight into a grown buffer)
    /// are one plain read each.
    #[test]
    fn read_from_reads_without_readv() {
        let mut buf = Buffer::with_capacity(0);
        let frame = b"{\"msgid\":6}\0".to_vec();
        assert_eq!(
            buf.read_from(&mut PlainOnly(Source(frame.clone())))
                .unwrap(),
            frame.len()
        );
        assert_eq!(buf.peek(), &frame[..]);
        let burst: Vec<u8> = (0..30_000u32).map(|i| (i % 239) as u8).collect();
        assert_eq!(
            buf.read_from(&mut PlainOnly(Source(burst.clone())))
                .unwrap(),
            burst.len()
        );
        buf.retrieve_all();
        assert!(buf.writable_bytes() >= DIRECT_READ, "grown by the burst");
        assert_eq!(
            buf.read_from(&mut PlainOnly(Source(frame.clone())))
                .unwrap(),
            frame.len()
        );
        assert_eq!(buf.peek(), &frame[..]);
    }

    /// A reader that itself reads through a Buffer, so the thread's scratch buffer
    /// is already borrowed when it is called.
    struct Nested(Vec<u8>);

    impl Read for Nested {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.read_vectored(&mut [IoSliceMut::new(out)])
        }

        fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
            let mut inner = Buffer::new();
            inner.read_from(&mut Source(std::mem::take(&mut self.0)))?;
            Source(inner.retrieve_all_as_vec()).read_vectored(bufs)
        }
    }

    #[test]
    fn read_from_reentered_falls_back() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        let mut buf = Buffer::new();
        assert_eq!(
            buf.read_from(&mut Nested(data.clone())).unwrap(),
            data.len()
        );
        assert_eq!(buf.peek(), &data[..]);
    }
}

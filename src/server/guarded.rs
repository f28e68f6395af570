//! A connection with the binary protocol's idle and write limits, for the HTTP and gRPC front
//! ends, whose connection loops belong to hyper and tonic: a connection with no bytes in either
//! direction for `server.idle_timeout_ms` reads as closed by the peer, and a write the peer does
//! not take within `server.write_timeout_ms` fails. The server then closes it as it would any
//! connection whose peer went away. It also holds the connection's place under
//! `server.max_connections` while it lives.
//!
//! For HTTP/2 (gRPC) it also reads the byte stream frame by frame ([`H2Frames`]): a peer that
//! stops inside the connection preface, inside a frame, or inside a header block (HEADERS and
//! its CONTINUATIONs up to END_HEADERS) for `server.read_timeout_ms` is cut off, as the binary
//! protocol cuts off a half-sent frame. Such a stall happens before any call exists that could
//! be answered with a status; a quiet peer between frames is idle, not stalled.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::open::Place;

pub struct Guarded {
    inner: TcpStream,
    idle_limit: Duration,
    write_limit: Duration,
    idle: Pin<Box<Sleep>>,
    /// Armed while a write waits for the peer to read.
    write_stall: Deadline,
    /// Given back when the connection is dropped.
    _place: Option<Place>,
    /// HTTP/2 only: where the peer's byte stream stands, the read limit, and the deadline armed
    /// while the peer is inside a frame or a header block.
    frames: Option<(H2Frames, Duration)>,
    mid_frame: Deadline,
}

/// A timer armed and disarmed many times over a connection's life. Its `Sleep` is boxed once,
/// when first armed, and re-armed with `reset`: a gRPC connection arms the mid-frame deadline
/// for nearly every frame it reads, and a fresh boxed `Sleep` each time is an allocation (and a
/// timer-wheel insertion and removal) per frame.
#[derive(Default)]
struct Deadline {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Deadline {
    fn arm(&mut self, after: Duration) {
        let at = Instant::now() + after;
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        self.armed = true;
    }

    fn disarm(&mut self) {
        self.armed = false;
    }

    fn is_armed(&self) -> bool {
        self.armed
    }

    /// Whether the armed deadline has passed; registers the task to be woken when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        match (&mut self.sleep, self.armed) {
            (Some(s), true) => s.as_mut().poll(cx).is_ready(),
            _ => false,
        }
    }
}

impl Guarded {
    /// `place` is the connection's place under the cap, held for as long as it lives.
    pub fn new(inner: TcpStream, idle_limit: Duration, write_limit: Duration, place: Option<Place>) -> Guarded {
        Guarded {
            inner,
            idle_limit,
            write_limit,
            idle: Box::pin(tokio::time::sleep(idle_limit)),
            write_stall: Deadline::default(),
            _place: place,
            frames: None,
            mid_frame: Deadline::default(),
        }
    }

    /// Reads the stream as HTTP/2 frames and cuts off a peer that stalls inside one (or inside a
    /// header block) for `read_limit`.
    pub fn http2_read_limit(mut self, read_limit: Duration) -> Guarded {
        self.frames = Some((H2Frames::default(), read_limit));
        self
    }

    /// After bytes arrived: the mid-frame deadline is armed when a frame or header block starts
    /// (and again with each frame that completes, so a long stream of frames is not one stall),
    /// and dropped at a boundary.
    fn track(&mut self, bytes: &[u8]) {
        let Some((frames, limit)) = &mut self.frames else { return };
        let completed = frames.feed(bytes);
        if !frames.mid() {
            self.mid_frame.disarm();
        } else if !self.mid_frame.is_armed() || completed {
            self.mid_frame.arm(*limit);
        }
    }

    fn progressed(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_limit);
    }

    /// After a write attempt: progress resets the timers; a write the peer leaves waiting
    /// fails once it has waited the write limit.
    fn after_write(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if r.is_ready() {
            self.write_stall.disarm();
            self.progressed();
            return r;
        }
        if !self.write_stall.is_armed() {
            let limit = self.write_limit;
            self.write_stall.arm(limit);
        }
        if self.write_stall.expired(cx) {
            return Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer did not read within server.write_timeout_ms")));
        }
        Poll::Pending
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                    self.track(&buf.filled()[before..]);
                }
                Poll::Ready(r)
            }
            // Nothing to read. Stalled inside a frame past the read limit: an error, and the
            // connection closes. Idle past the idle limit reads as end of stream, so the
            // connection's own loop closes it. Otherwise the timers wake this task when due.
            Poll::Pending => {
                if self.mid_frame.expired(cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "peer stalled inside an HTTP/2 frame past server.read_timeout_ms",
                    )));
                }
                match self.idle.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Ok(())),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.after_write(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// An HTTP/2 byte stream read as frames (RFC 9113 §3.4, §4.1): the 24-byte client preface, then
/// frames of a 9-byte header (24-bit payload length, type, flags, stream) and a payload. Only
/// the framing is read; hyper parses the frames themselves.
#[derive(Debug)]
pub struct H2Frames {
    /// Bytes of the client preface still to come.
    preface_left: usize,
    header: [u8; 9],
    /// Bytes of the current frame header received.
    header_have: usize,
    payload_left: usize,
    /// Inside a header block: a HEADERS or PUSH_PROMISE frame without END_HEADERS, until the
    /// CONTINUATION that carries it.
    in_header_block: bool,
}

const PREFACE_LEN: usize = 24;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;

impl Default for H2Frames {
    fn default() -> Self {
        H2Frames { preface_left: PREFACE_LEN, header: [0; 9], header_have: 0, payload_left: 0, in_header_block: false }
    }
}

impl H2Frames {
    /// Reads `bytes`; true when a frame completed outside a header block (progress that re-arms
    /// the stall deadline).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        let mut completed = false;
        while !bytes.is_empty() {
            let n = if self.preface_left > 0 {
                let n = self.preface_left.min(bytes.len());
                self.preface_left -= n;
                n
            } else if self.header_have < 9 {
                let n = (9 - self.header_have).min(bytes.len());
                self.header[self.header_have..self.header_have + n].copy_from_slice(&bytes[..n]);
                self.header_have += n;
                if self.header_have == 9 {
                    let h = self.header;
                    self.payload_left = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                    match h[3] {
                        HEADERS | PUSH_PROMISE => self.in_header_block = h[4] & END_HEADERS == 0,
                        CONTINUATION if h[4] & END_HEADERS != 0 => self.in_header_block = false,
                        _ => {}
                    }
                }
                n
            } else {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                n
            };
            bytes = &bytes[n..];
            if self.preface_left == 0 && self.header_have == 9 && self.payload_left == 0 {
                self.header_have = 0;
                completed |= !self.in_header_block;
            }
        }
        completed
    }

    /// Inside the preface (once begun), a frame, or a header block.
    pub fn mid(&self) -> bool {
        (self.preface_left > 0 && self.preface_left < PREFACE_LEN) || self.header_have > 0 || self.in_header_block
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(ty: u8, flags: u8, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags, 0, 0, 0, 1];
        f.resize(9 + payload, 7);
        f
    }

    #[tokio::test]
    async fn a_deadline_rearms_its_one_timer() {
        async fn expired(d: &mut Deadline) -> bool {
            std::future::poll_fn(|cx| Poll::Ready(d.expired(cx))).await
        }
        let mut d = Deadline::default();
        assert!(!expired(&mut d).await, "never armed");
        d.arm(Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(expired(&mut d).await);
        let timer: *const Sleep = &**d.sleep.as_ref().unwrap();
        d.disarm();
        assert!(!expired(&mut d).await, "disarmed, though its time has passed");
        // Re-armed after firing: pending again, on the same boxed timer.
        d.arm(Duration::from_secs(60));
        assert!(!expired(&mut d).await);
        assert!(std::ptr::eq(timer, &**d.sleep.as_ref().unwrap()), "the timer was boxed anew");
        d.arm(Duration::from_millis(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(expired(&mut d).await, "moved earlier by a re-arm");
    }

    #[test]
    fn frames_are_followed_byte_by_byte_and_whole() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut stream = preface.to_vec();
        stream.extend(frame(0x4, 0, 6)); // SETTINGS
        stream.extend(frame(HEADERS, END_HEADERS, 20));
        stream.extend(frame(0x0, 0, 100)); // DATA
                                           // Whole: at a boundary, not mid-frame.
        let mut whole = H2Frames::default();
        assert!(!whole.mid(), "nothing received yet is idle");
        assert!(whole.feed(&stream));
        assert!(!whole.mid());
        // Byte by byte: mid-frame everywhere but at the boundaries.
        let mut f = H2Frames::default();
        let boundaries = [24, 24 + 15, 24 + 15 + 29, stream.len()];
        for (i, b) in stream.iter().enumerate() {
            f.feed(std::slice::from_ref(b));
            assert_eq!(f.mid(), !boundaries.contains(&(i + 1)), "after {} bytes", i + 1);
        }
        // Zero-length frames (SETTINGS ack) complete with their header.
        let mut f = H2Frames { preface_left: 0, ..H2Frames::default() };
        assert!(f.feed(&frame(0x4, 0x1, 0)));
        assert!(!f.mid());
    }

    #[test]
    fn a_header_block_is_open_until_end_headers() {
        let mut f = H2Frames { preface_left: 0, ..H2Frames::default() };
        assert!(!f.feed(&frame(HEADERS, 0, 10)), "HEADERS without END_HEADERS completes no block");
        assert!(f.mid(), "between HEADERS and its CONTINUATION");
        assert!(!f.feed(&frame(CONTINUATION, 0, 10)));
        assert!(f.mid());
        assert!(f.feed(&frame(CONTINUATION, END_HEADERS, 10)));
        assert!(!f.mid());
    }
}

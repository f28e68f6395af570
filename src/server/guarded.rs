//! A connection with the binary protocol's idle and write limits, for the HTTP and gRPC front
//! ends, whose connection loops belong to hyper and tonic: a connection with no bytes in either
//! direction for `server.idle_timeout_ms` reads as closed by the peer, and a write the peer does
//! not take within `server.write_timeout_ms` fails. The server then closes it as it would any
//! connection whose peer went away. It also counts itself as open while it lives.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// The open-connection counter a connection holds a place in while it lives.
pub type Counter = (Arc<super::oip::Oip>, fn(&super::oip::Oip) -> &AtomicUsize);

pub struct Guarded {
    inner: TcpStream,
    idle_limit: Duration,
    write_limit: Duration,
    idle: Pin<Box<Sleep>>,
    /// Armed while a write waits for the peer to read.
    write_stall: Option<Pin<Box<Sleep>>>,
    open: Option<Counter>,
}

impl Guarded {
    /// `open` names the counter this connection holds a place in while it lives.
    pub fn new(inner: TcpStream, idle_limit: Duration, write_limit: Duration, open: Option<Counter>) -> Guarded {
        if let Some((oip, counter)) = &open {
            counter(oip).fetch_add(1, Ordering::Relaxed);
        }
        Guarded { inner, idle_limit, write_limit, idle: Box::pin(tokio::time::sleep(idle_limit)), write_stall: None, open }
    }

    fn progressed(&mut self) {
        self.idle.as_mut().reset(Instant::now() + self.idle_limit);
    }

    /// After a write attempt: progress resets the timers; a write the peer leaves waiting
    /// fails once it has waited the write limit.
    fn after_write(&mut self, cx: &mut Context<'_>, r: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if r.is_ready() {
            self.write_stall = None;
            self.progressed();
            return r;
        }
        let limit = self.write_limit;
        let stall = self.write_stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "peer did not read within server.write_timeout_ms")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some((oip, counter)) = &self.open {
            counter(oip).fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.progressed();
                }
                Poll::Ready(r)
            }
            // Nothing to read: idle past the limit reads as end of stream, so the connection's
            // own loop closes it; otherwise the timer wakes this task when the limit comes.
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Ok(())),
                Poll::Pending => Poll::Pending,
            },
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

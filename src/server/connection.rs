//! One device connection: read frames, serve each request in turn, write the responses.
//!
//! A bad request fails alone: it gets an error response and the connection reads on. Only a
//! broken framing (oversized, truncated or stalled frame), a wrong token, or a peer that stops
//! reading closes the connection: after those the byte stream or the peer cannot be trusted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

use super::pipeline::error_reply;
use super::Shared;
use crate::protocol::codec::{frame_codec, is_frame_too_large};
use crate::protocol::frame::peek_request_id;
use crate::protocol::{Request, Response, Status};

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

/// Why the read side gave no frame.
enum NoFrame {
    Closed,
    Shutdown,
}

pub(super) async fn handle(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: CancellationToken) {
    // No read buffer until the first byte arrives: idle devices then cost a task and a socket.
    let mut conn = Framed::with_capacity(socket, frame_codec(shared.limits.max_frame_bytes), 0);
    loop {
        let body = match next_frame(&mut conn, peer, &shared, &shutdown).await {
            Ok(body) => body,
            Err(NoFrame::Closed) => return,
            Err(NoFrame::Shutdown) => {
                answer_buffered_while_stopping(&mut conn, &shared).await;
                return;
            }
        };
        let arrival = Instant::now();
        let (response, mut record) = match Request::decode(body.clone()) {
            Ok(req) => {
                let serving = super::pipeline::serve(&shared.engine, &shared.limits, req, arrival);
                // While the engine works, watch the socket: if the peer closes, dropping
                // `serving` drops the answer's receiver, and the executor skips the request
                // instead of spending a model run on an answer nobody will read.
                tokio::select! {
                    r = serving => r,
                    _ = peer_closed(conn.get_ref()) => {
                        tracing::debug!(%peer, "peer closed with a request in flight; abandoned");
                        return;
                    }
                }
            }
            Err(e) => error_reply(peek_request_id(&body), Status::BadRequest, e.to_string()),
        };
        let delivered = send(&mut conn, &response, &shared).await;
        // Counted whether or not the peer was still there to read it: the work was done.
        record.timings.total_us = arrival.elapsed().as_micros().min(u32::MAX as u128) as u32;
        shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
        if !delivered || response.status == Status::Unauthorized {
            return;
        }
    }
}

/// Waits for the next complete frame, enforcing the idle and per-frame read timeouts.
async fn next_frame(conn: &mut Conn, peer: SocketAddr, shared: &Shared, shutdown: &CancellationToken) -> Result<Bytes, NoFrame> {
    let limits = &shared.limits;
    // Idle: wait for the first byte of the next frame without consuming it. Skipped when a
    // pipelined frame is already buffered.
    if conn.read_buffer().is_empty() {
        // The probe also reads the length prefix when it has arrived, so the read buffer can be
        // sized to the whole frame and one read takes it. Left to the codec, the first read
        // takes only the 8 bytes an empty buffer grows to, and the body needs a second.
        let mut probe = [0u8; 4];
        tokio::select! {
            _ = shutdown.cancelled() => return Err(NoFrame::Shutdown),
            r = tokio::time::timeout(limits.idle_timeout, conn.get_ref().peek(&mut probe)) => match r {
                Err(_) => {
                    tracing::debug!(%peer, "idle timeout");
                    return Err(NoFrame::Closed);
                }
                Ok(Ok(0)) | Ok(Err(_)) => return Err(NoFrame::Closed),
                Ok(Ok(seen)) => {
                    // The codec reserves the same once it has read the prefix; an announced
                    // length over the limit is left to it to refuse, with nothing reserved.
                    let body = u32::from_be_bytes(probe) as usize;
                    if seen == probe.len() && body <= limits.max_frame_bytes {
                        conn.read_buffer_mut().reserve(probe.len() + body);
                    }
                }
            },
        }
    }
    // A frame has started: all of it must arrive within the read timeout. Shutdown does not
    // interrupt this, so a request the peer is sending is still read and answered.
    match tokio::time::timeout(limits.read_timeout, conn.next()).await {
        Err(_) => {
            tracing::debug!(%peer, "peer stalled mid-frame; dropped");
            shared.telemetry.count_dropped_connection();
            Err(NoFrame::Closed)
        }
        Ok(None) => Err(NoFrame::Closed),
        Ok(Some(Ok(body))) => Ok(body.freeze()),
        Ok(Some(Err(e))) if is_frame_too_large(&e) => {
            let msg = format!("frame exceeds the {}-byte limit (server.max_frame_bytes)", limits.max_frame_bytes);
            let (response, record) = error_reply(0, Status::TooLarge, msg);
            send(conn, &response, shared).await;
            shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
            Err(NoFrame::Closed)
        }
        Ok(Some(Err(e))) => {
            // Truncated frame at EOF, reset by peer, ...: nothing to answer to.
            tracing::debug!(%peer, "connection closed: {e}");
            Err(NoFrame::Closed)
        }
    }
}

/// At shutdown, requests that already reached us but were not started are not dropped
/// silently: each gets `overloaded` ("shutting down") so the device knows to go elsewhere.
async fn answer_buffered_while_stopping(conn: &mut Conn, shared: &Shared) {
    while let Some(Some(Ok(body))) = conn.next().now_or_never() {
        let (response, record) = error_reply(peek_request_id(&body), Status::Overloaded, "server is shutting down".into());
        shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
        if !send(conn, &response, shared).await {
            return;
        }
    }
}

/// Resolves when the peer has closed the connection (end of stream or an error). Bytes of a
/// pipelined next frame mean the peer is still there: then it never resolves. A peer that only
/// shuts down its sending side is taken as gone too: this protocol has no use for half-close.
async fn peer_closed(socket: &TcpStream) {
    let mut probe = [0u8; 1];
    match socket.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending::<()>().await,
    }
}

/// Writes one response within the write timeout. `false` when the peer is gone or not reading.
async fn send(conn: &mut Conn, r: &Response, shared: &Shared) -> bool {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    match tokio::time::timeout(shared.limits.write_timeout, conn.send(buf.freeze())).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            shared.telemetry.count_dropped_connection();
            tracing::debug!("peer did not read its response within the write timeout; dropped");
            false
        }
    }
}

/// Refuses a connection over `server.max_connections` with a clear answer, then closes it.
pub(super) async fn refuse(socket: TcpStream, shared: Arc<Shared>, max: usize) {
    let mut conn = Framed::with_capacity(socket, frame_codec(shared.limits.max_frame_bytes), 0);
    let (response, _) = error_reply(0, Status::Overloaded, format!("too many connections (server.max_connections = {max})"));
    send(&mut conn, &response, &shared).await;
}

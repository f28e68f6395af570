//! One device connection: read frames, serve each request in turn, write the responses.
//!
//! A bad request fails alone: it gets an error response and the connection reads on. Only a
//! broken framing (oversized or truncated frame) closes the connection, since after it the byte
//! stream can no longer be trusted to start at a frame boundary.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::protocol::codec::{frame_codec, is_frame_too_large};
use crate::protocol::frame::peek_request_id;
use crate::protocol::{Request, Response, Status, Timings};
use crate::telemetry::RequestRecord;

pub(super) async fn handle(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut framed = Framed::new(socket, frame_codec(shared.max_frame_bytes));
    loop {
        // Shutdown interrupts only the wait for a new frame; a request already read is finished.
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            f = framed.next() => f,
        };
        let body = match next {
            None => break,
            Some(Ok(body)) => body,
            Some(Err(e)) if is_frame_too_large(&e) => {
                let msg = format!("frame exceeds the {}-byte limit (server.max_frame_bytes)", shared.max_frame_bytes);
                tracing::debug!(%peer, "{msg}");
                answer_error(&mut framed, &shared, 0, Status::TooLarge, msg).await;
                break;
            }
            Some(Err(e)) => {
                // Truncated frame at EOF, reset by peer, ...: nothing to answer to.
                tracing::debug!(%peer, "connection closed: {e}");
                break;
            }
        };
        let arrival = Instant::now();
        let id = peek_request_id(&body);
        let (response, record) = match Request::decode(body.freeze()) {
            Ok(req) => crate::pipeline::serve(&shared.engine, &shared.limits, req, arrival).await,
            Err(e) => {
                let record = RequestRecord { status: Status::BadRequest, model: None, timings: Timings::default(), estimate_us: None };
                (Response::error(id, Status::BadRequest, e.to_string()), record)
            }
        };
        if send(&mut framed, &response).await.is_err() {
            // Peer gone mid-request: the work was done and is counted, the answer has nowhere to go.
            shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
            break;
        }
        let mut record = record;
        record.timings.total_us = arrival.elapsed().as_micros().min(u32::MAX as u128) as u32;
        shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
    }
}

async fn send(framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>, r: &Response) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    r.encode(&mut buf);
    framed.send(buf.freeze()).await
}

async fn answer_error(
    framed: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
    shared: &Shared,
    id: u64,
    status: Status,
    msg: String,
) {
    let record = RequestRecord { status, model: None, timings: Timings::default(), estimate_us: None };
    shared.telemetry.record(&record, shared.engine.dispatcher.bound_ms());
    let _ = send(framed, &Response::error(id, status, msg)).await;
}

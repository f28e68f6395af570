//! The path of one request through the server, independent of sockets:
//! validate → decode (pixel cap) → dispatch (choose queue) → resize/normalise → queue → infer →
//! response. Decoding and resizing run on tokio's blocking pool; inference on the model's worker.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::engine::preprocess::{self, ImageError};
use crate::engine::pool::{PoolJob, PoolOutcome};
use crate::engine::worker::{Job, JobOutcome};
use crate::engine::Engine;
use crate::protocol::{Class, ModelRef, Request, Response, Status, Timings};
use crate::server::Limits;
use crate::telemetry::RequestRecord;

/// Serves one decoded request. Never panics on input: every failure becomes a status.
pub async fn serve(engine: &Arc<Engine>, limits: &Limits, req: Request, arrival: Instant) -> (Response, RequestRecord) {
    let id = req.request_id;
    let fail = |status: Status, msg: String| {
        let record = RequestRecord { status, model: None, timings: Timings::default(), estimate_us: None };
        (Response::error(id, status, msg), record)
    };
    if !token_matches(&limits.auth_token, &req.token) {
        return fail(Status::Unauthorized, "missing or wrong access token".into());
    }
    let staged = {
        let engine = engine.clone();
        let max = limits.max_image_pixels;
        tokio::task::spawn_blocking(move || stage(&engine, &req.image, max, arrival)).await
    };
    let (preprocess_us, pending) = match staged {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return fail(e.status(), e.to_string()),
        Err(join) => return fail(Status::Internal, format!("preprocessing failed: {join}")),
    };
    let answered = match pending {
        Pending::Queue { queue, estimate_us, reply } => reply.await.map(|o| (queue, estimate_us, 0, o)),
        Pending::Pool(reply) => reply.await.map(|o| (o.model, o.estimate_us, o.resize_us, o.job)),
    };
    let Ok((queue, estimate_us, resize_us, outcome)) = answered else {
        return fail(Status::Internal, "model worker stopped before answering".into());
    };
    let spec = &engine.ladder[queue];
    let model = Some(ModelRef { index: queue as u16, name: spec.name.clone(), accuracy: spec.accuracy });
    let mut timings = Timings {
        queue_us: clamp_u32(outcome.queue_us),
        preprocess_us: clamp_u32(preprocess_us + resize_us),
        inference_us: clamp_u32(outcome.inference_us),
        total_us: 0,
    };
    timings.total_us = clamp_u32(arrival.elapsed().as_micros() as u64);
    let (status, message, top) = match outcome.result {
        Ok(top) => {
            let top = top
                .into_iter()
                .map(|(i, score)| Class { index: i as u32, score, label: spec.label(i).map(str::to_string) })
                .collect();
            (Status::Ok, String::new(), top)
        }
        Err(e) => (Status::Internal, e, Vec::new()),
    };
    let record = RequestRecord { status, model: Some(queue), timings, estimate_us: Some(estimate_us) };
    (Response { request_id: id, status, message, model, top, timings }, record)
}

/// Constant-time comparison, so response timing does not reveal how much of a guess was right.
fn token_matches(expected: &str, given: &str) -> bool {
    if expected.is_empty() {
        return true;
    }
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("server is shutting down")]
    ShuttingDown,
    #[error("server overloaded: {0} requests already waiting (server.max_waiting)")]
    Overloaded(usize),
}

impl StageError {
    fn status(&self) -> Status {
        match self {
            StageError::Image(ImageError::TooLarge { .. }) => Status::TooLarge,
            StageError::Image(_) => Status::BadRequest,
            StageError::ShuttingDown | StageError::Overloaded(_) => Status::Overloaded,
        }
    }
}

/// Where a staged request waits for its answer.
enum Pending {
    /// In the queue the policy chose on arrival.
    Queue { queue: usize, estimate_us: f64, reply: oneshot::Receiver<JobOutcome> },
    /// In the shared pool; the worker that takes it chooses the model.
    Pool(oneshot::Receiver<PoolOutcome>),
}

/// Blocking part before the queue: decode; then either choose the queue and shape the tensor
/// for that model, or hand the decoded image to the pool. Decoding comes first so that a bad
/// image never occupies a queue slot.
fn stage(engine: &Engine, image: &[u8], max_pixels: u64, arrival: Instant) -> Result<(u64, Pending), StageError> {
    let start = Instant::now();
    let img = preprocess::decode(image, max_pixels)?;
    let max_waiting = engine.dispatcher.max_waiting();
    if engine.is_pooled() {
        let waiting = engine.pool_backlog() + engine.dispatcher.snapshot().iter().map(|q| q.depth).sum::<usize>();
        if waiting >= max_waiting {
            return Err(StageError::Overloaded(max_waiting));
        }
        let (tx, rx) = oneshot::channel();
        let preprocess_us = start.elapsed().as_micros() as u64;
        let job = PoolJob { image: img, arrival, enqueued: Instant::now(), reply: tx };
        engine.submit_pool(job).map_err(|_| StageError::ShuttingDown)?;
        return Ok((preprocess_us, Pending::Pool(rx)));
    }
    let choice = engine.dispatcher.try_assign().ok_or(StageError::Overloaded(max_waiting))?;
    let tensor = preprocess::to_tensor(&img, &engine.ladder[choice.queue].input);
    let preprocess_us = start.elapsed().as_micros() as u64;
    let (tx, rx) = oneshot::channel();
    let job = Job { tensor, enqueued: Instant::now(), reply: tx };
    if engine.enqueue(choice.queue, job).is_err() {
        engine.dispatcher.release(choice.queue);
        return Err(StageError::ShuttingDown);
    }
    Ok((preprocess_us, Pending::Queue { queue: choice.queue, estimate_us: choice.estimate_us, reply: rx }))
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn token_check() {
        assert!(token_matches("", ""));
        assert!(token_matches("", "anything"));
        assert!(token_matches("s3cret", "s3cret"));
        assert!(!token_matches("s3cret", ""));
        assert!(!token_matches("s3cret", "s3cres"));
        assert!(!token_matches("s3cret", "s3cret!"));
    }
}

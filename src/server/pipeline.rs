//! The binary protocol's way into the engine: check the token, submit through the engine's one
//! door, and turn the [`Answer`] into a wire [`Response`] and a telemetry record. Sockets are
//! `server/connection.rs`'s business; the work is the engine's.

use std::time::Instant;

use super::Limits;
use crate::engine::preprocess::ImageError;
use crate::engine::{Answer, Engine, Failure};
use crate::protocol::{Class, ModelRef, Request, Response, Status, Timings};
use crate::telemetry::RequestRecord;

/// Serves one decoded request. Never panics on input: every failure becomes a status.
pub async fn serve(engine: &Engine, limits: &Limits, req: Request, arrival: Instant) -> (Response, RequestRecord) {
    let id = req.request_id;
    if !token_matches(&limits.auth_token, &req.token) {
        return error_reply(id, Status::Unauthorized, "missing or wrong access token".into());
    }
    let answer = match engine.submit(req.image, arrival, None) {
        Ok(rx) => match rx.await {
            Ok(a) => a,
            Err(_) => return error_reply(id, Status::Internal, "the executor stopped before answering".into()),
        },
        Err(refused) => return error_reply(id, Status::Overloaded, refused.to_string()),
    };
    respond(engine, id, answer, arrival)
}

/// The wire status for a failure.
pub fn status_of(f: &Failure) -> Status {
    match f {
        Failure::Image(ImageError::TooLarge { .. }) => Status::TooLarge,
        Failure::Image(_) => Status::BadRequest,
        Failure::Refused(_) | Failure::Shed => Status::Overloaded,
        Failure::Inference(_) => Status::Internal,
    }
}

fn respond(engine: &Engine, id: u64, a: Answer, arrival: Instant) -> (Response, RequestRecord) {
    let mut timings = Timings {
        queue_us: clamp_u32(a.queue_us),
        preprocess_us: clamp_u32(a.preprocess_us),
        inference_us: clamp_u32(a.inference_us),
        total_us: 0,
    };
    timings.total_us = clamp_u32(arrival.elapsed().as_micros() as u64);
    let model = a.model.map(|m| {
        let spec = &engine.ladder[m];
        ModelRef { index: m as u16, name: spec.name.clone(), accuracy: spec.accuracy }
    });
    let (status, message, top) = match a.result {
        Ok(top) => {
            let spec = &engine.ladder[a.model.expect("a model ran")];
            let top = top.into_iter().map(|(i, score)| Class { index: i as u32, score, label: spec.label(i).map(str::to_string) }).collect();
            (Status::Ok, String::new(), top)
        }
        Err(f) => (status_of(&f), f.to_string(), Vec::new()),
    };
    let record = RequestRecord { status, model: a.model, timings, estimate_us: a.estimate_us };
    (Response { request_id: id, status, message, model, top, timings }, record)
}

/// An answer that never reached the engine.
pub fn error_reply(id: u64, status: Status, msg: String) -> (Response, RequestRecord) {
    let record = RequestRecord { status, model: None, timings: Timings::default(), estimate_us: None };
    (Response::error(id, status, msg), record)
}

/// Constant-time comparison, so response timing does not reveal how much of a guess was right.
pub(crate) fn token_matches(expected: &str, given: &str) -> bool {
    if expected.is_empty() {
        return true;
    }
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
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

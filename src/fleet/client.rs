//! One closed-loop client: connect over TCP to the server's listener, send an image at the
//! controller's resolution, wait for the answer, optionally think, repeat.
//!
//! Stopping (removal, fleet shutdown) is only observed between requests, so a request in flight
//! is always finished and its answer counted: the server answers everything it accepted.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::controller::Controller;
use super::Shared;
use crate::client::Client;
use crate::control::ClientView;
use crate::protocol::{Response, Status};
use crate::telemetry::window::Outcome;

/// What the console sees of one client: atomics, written by the client, read by snapshots.
#[derive(Debug, Default)]
pub struct ClientState {
    level: AtomicU8,
    /// Last `ok` latency in µs; `u64::MAX` before the first.
    last_latency_us: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Label of the last `ok` answer's top class (a pretrained ladder with labels), so a live
    /// demo with real photos shows what each client is being told.
    last_label: parking_lot::Mutex<Option<Arc<str>>>,
}

impl ClientState {
    pub fn new() -> Self {
        Self { last_latency_us: AtomicU64::new(u64::MAX), ..Default::default() }
    }

    pub fn level(&self) -> usize {
        self.level.load(Ordering::Relaxed) as usize
    }

    pub fn view(&self, id: u32, resolutions: &[u16]) -> ClientView {
        let last = self.last_latency_us.load(Ordering::Relaxed);
        ClientView {
            id,
            resolution: resolutions[self.level()],
            last_latency_ms: (last != u64::MAX).then(|| last as f64 / 1000.0),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_label: self.last_label.lock().clone(),
        }
    }

    fn record_label(&self, resp: &Response) {
        let Some(label) = resp.top.first().and_then(|c| c.label.as_deref()) else { return };
        let mut last = self.last_label.lock();
        // Clients cycle through a few photos: most answers repeat the last label, so only a
        // change allocates.
        if last.as_deref() != Some(label) {
            *last = Some(label.into());
        }
    }
}

/// Waits until the fleet is not paused; false when stopped meanwhile.
async fn wait_unpaused(paused: &mut watch::Receiver<bool>, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        r = paused.wait_for(|p| !*p) => r.is_ok(),
    }
}

/// Sleeps unless stopped; false when stopped.
async fn pause_for(d: std::time::Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

pub(super) async fn run(id: u32, shared: Arc<Shared>, state: Arc<ClientState>, stop: CancellationToken, mut paused: watch::Receiver<bool>) {
    let mut conn: Option<Client> = None;
    let mut ctl = Controller::new();
    let mut backoff = Backoff::new(id as u64);
    // Clients start on different images and cycle through them.
    let mut image_no = id as usize;
    while !stop.is_cancelled() && wait_unpaused(&mut paused, &stop).await {
        let c = match &mut conn {
            Some(c) => c,
            None => match Client::connect(shared.addr, id).await {
                Ok(mut c) => {
                    c.timeout = shared.timeout;
                    conn.insert(c)
                }
                Err(e) => {
                    tracing::debug!(client = id, "cannot connect: {e:#}");
                    shared.stats.record(Outcome::Failed);
                    state.errors.fetch_add(1, Ordering::Relaxed);
                    // Back off so an unreachable server does not become a busy loop.
                    if !pause_for(std::time::Duration::from_secs(1), &stop).await {
                        break;
                    }
                    continue;
                }
            },
        };
        let level = ctl.level();
        let image = shared.images.get(image_no, level);
        image_no += 1;
        let resolution = shared.params.resolutions[level];
        state.requests.fetch_add(1, Ordering::Relaxed);
        shared.stats.sent();
        let start = Instant::now();
        let result = match &shared.link {
            Some(link) => {
                link.uplink_delay().await;
                let r = c.infer_via(image, resolution, link).await;
                link.downlink_delay().await;
                r
            }
            None => c.infer(image, resolution).await,
        };
        let latency_us = start.elapsed().as_micros() as u64;
        match result {
            Ok(resp) if resp.status == Status::Ok => {
                backoff.served();
                state.last_latency_us.store(latency_us, Ordering::Relaxed);
                state.record_label(&resp);
                shared.stats.record(Outcome::Served {
                    latency_us,
                    model: None,
                    accuracy: accuracy(&resp),
                    inference_us: 0,
                    within_bound: false,
                });
                if ctl.observe(&shared.params, latency_us as f64 / 1000.0, Instant::now()).is_some() {
                    state.level.store(ctl.level() as u8, Ordering::Relaxed);
                }
            }
            Ok(resp) => {
                tracing::debug!(client = id, status = %resp.status, "request refused: {}", resp.message);
                shared.stats.record(Outcome::Refused { overloaded: resp.status == Status::Overloaded });
                state.errors.fetch_add(1, Ordering::Relaxed);
                // A device told `overloaded` backs off before trying again, longer after each
                // refusal in a row, as real clients do: resending at once would turn shed
                // requests into a storm of refusals that takes CPU from the requests being
                // served (see `backoff`).
                if resp.status == Status::Overloaded && !pause_for(backoff.refused(), &stop).await {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(client = id, "request failed: {e:#}");
                shared.stats.record(Outcome::Failed);
                state.errors.fetch_add(1, Ordering::Relaxed);
                // The stream may be mid-frame: start over on a fresh connection.
                conn = None;
            }
        }
        if !shared.think.is_zero() && !pause_for(shared.think, &stop).await {
            break;
        }
    }
}

fn accuracy(r: &Response) -> Option<f32> {
    r.model.as_ref().map(|m| m.accuracy)
}

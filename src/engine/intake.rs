//! The engine's front door: one FIFO queue of accepted requests, and the exact count of every
//! request in the system — waiting here, being decoded, queued at a model, running — from the
//! moment it is admitted until its answer is handed back (or it is dropped).
//!
//! Admission is one compare-and-swap on that count, so `server.max_waiting` is exact: two
//! arrivals can never both see room for one. The count is released by [`Admitted`]'s `Drop`,
//! so whichever path a request takes — answered, failed, shed, abandoned by its peer, drained
//! at shutdown — it cannot leak.
//!
//! Nothing is done to a request before it is here: decoding and resizing happen on the
//! executor's threads after they take it, so the whole backlog is visible to the policy.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::Answer;

/// Why the front door refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("server overloaded: {0} requests already in the system (server.max_waiting)")]
    Overloaded(usize),
    #[error("server is shutting down")]
    ShuttingDown,
}

/// One admitted request: holds its place in the count until dropped.
#[derive(Debug)]
pub struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request for one rung by name, past the policy (the Open Inference Protocol serves each rung
/// as a model of its own): the rung, and its input tensor when the requester sent one instead of
/// an image.
pub struct Pinned {
    pub rung: usize,
    /// Already in the rung's input shape (checked by the front end); `None`: decode `image`.
    pub tensor: Option<Vec<f32>>,
}

/// An accepted request on its way through the engine.
pub struct Ticket {
    /// The encoded image, as received (a view into the frame; no copy).
    pub image: Bytes,
    /// When its frame arrived: its deadline is `arrival + bound`.
    pub arrival: Instant,
    /// Its latency bound, µs: T, or its own deadline where the front end gave one.
    pub bound_us: f64,
    pub reply: oneshot::Sender<Answer>,
    pub admitted: Admitted,
    /// Set by [`Engine::submit_to`](super::Engine::submit_to): no dispatch, this rung only.
    pub pinned: Option<Pinned>,
}

impl Ticket {
    /// Microseconds since the request arrived.
    pub fn waited_us(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.arrival).as_secs_f64() * 1e6
    }

    /// The requester stopped waiting (its connection closed): the work would be wasted.
    pub fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    /// Sends the answer, having left the system first: a closed-loop client that resubmits the
    /// moment its answer arrives must not find its own answered request still counted against
    /// `server.max_waiting` (nor a caller see it in `in_system`).
    pub fn answer(self, answer: Answer) {
        let Ticket { reply, admitted, .. } = self;
        drop(admitted);
        let _ = reply.send(answer);
    }
}

/// What a taker learns with the request it takes.
pub struct Taken {
    pub ticket: Ticket,
    /// Requests still queued behind it.
    pub behind: usize,
    /// Time left before the newest queued request's deadline (this one's when none), µs.
    pub newest_slack_us: f64,
}

struct State {
    jobs: VecDeque<Ticket>,
    closed: bool,
}

pub struct Intake {
    state: Mutex<State>,
    ready: Condvar,
    in_system: Arc<AtomicUsize>,
    max: AtomicUsize,
    abandoned: AtomicUsize,
}

impl Intake {
    pub fn new(max_in_system: usize) -> Self {
        Self {
            state: Mutex::new(State { jobs: VecDeque::new(), closed: false }),
            ready: Condvar::new(),
            in_system: Arc::new(AtomicUsize::new(0)),
            max: AtomicUsize::new(max_in_system.max(1)),
            abandoned: AtomicUsize::new(0),
        }
    }

    pub fn set_max(&self, n: usize) {
        self.max.store(n.max(1), Ordering::Relaxed);
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// Takes a place in the system, or says why not. Exact under concurrency.
    pub fn admit(&self) -> Result<Admitted, Refusal> {
        let max = self.max();
        self.in_system
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map(|_| Admitted(self.in_system.clone()))
            .map_err(|_| Refusal::Overloaded(max))
    }

    /// Queues an admitted request; fails once [`close`](Self::close) was called.
    pub fn push(&self, t: Ticket) -> Result<(), Refusal> {
        let mut g = self.state.lock();
        if g.closed {
            return Err(Refusal::ShuttingDown);
        }
        g.jobs.push_back(t);
        drop(g);
        self.ready.notify_one();
        Ok(())
    }

    /// Blocks for the next request, skipping (and counting) those whose requester is gone.
    /// `None` once closed and drained.
    pub fn take(&self) -> Option<Taken> {
        let mut g = self.state.lock();
        loop {
            while let Some(ticket) = g.jobs.pop_front() {
                if ticket.abandoned() {
                    self.abandoned.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let now = Instant::now();
                let newest = g.jobs.back().unwrap_or(&ticket);
                let newest_slack_us = newest.bound_us - newest.waited_us(now);
                return Some(Taken { behind: g.jobs.len(), newest_slack_us, ticket });
            }
            if g.closed {
                return None;
            }
            self.ready.wait(&mut g);
        }
    }

    /// Requests waiting to be taken.
    pub fn waiting(&self) -> usize {
        self.state.lock().jobs.len()
    }

    /// Requests admitted and not yet answered.
    pub fn in_system(&self) -> usize {
        self.in_system.load(Ordering::Acquire)
    }

    /// Requests dropped because their requester had gone before a model ran them.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::Relaxed)
    }

    /// Counts one request dropped by an executor thread (see [`abandoned`](Self::abandoned)).
    pub fn count_abandoned(&self) {
        self.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// No new requests; takers drain what is queued, then get `None`.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(intake: &Intake, bound_us: f64) -> (Ticket, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        let t = Ticket { image: Bytes::new(), arrival: Instant::now(), bound_us, reply: tx, admitted: intake.admit().unwrap(), pinned: None };
        (t, rx)
    }

    #[test]
    fn admission_is_exact_and_released_on_drop() {
        let intake = Intake::new(2);
        let a = intake.admit().unwrap();
        let b = intake.admit().unwrap();
        assert_eq!(intake.admit().unwrap_err(), Refusal::Overloaded(2));
        drop(a);
        assert_eq!(intake.in_system(), 1);
        let _c = intake.admit().unwrap();
        drop(b);
        assert_eq!(intake.in_system(), 1);
    }

    #[test]
    fn concurrent_admission_never_overshoots() {
        let intake = Arc::new(Intake::new(100));
        let held = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (intake, held) = (intake.clone(), held.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        if let Ok(a) = intake.admit() {
                            held.lock().push(a);
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(held.lock().len(), 100);
        assert_eq!(intake.in_system(), 100);
        held.lock().clear();
        assert_eq!(intake.in_system(), 0);
    }

    #[test]
    fn take_reports_the_backlog_and_skips_abandoned_requests() {
        let intake = Intake::new(10);
        let (t1, _rx1) = ticket(&intake, 50_000.0);
        let (t2, rx2) = ticket(&intake, 50_000.0);
        let (t3, _rx3) = ticket(&intake, 20_000.0);
        for t in [t1, t2, t3] {
            intake.push(t).ok().unwrap();
        }
        drop(rx2); // its connection closed
        let first = intake.take().unwrap();
        assert_eq!(first.behind, 2);
        // The newest (third) request's slack: its own 20 ms bound, barely waited.
        assert!(first.newest_slack_us <= 20_000.0 && first.newest_slack_us > 19_000.0, "{}", first.newest_slack_us);
        let next = intake.take().unwrap();
        assert_eq!((next.behind, next.ticket.bound_us), (0, 20_000.0));
        assert_eq!(intake.abandoned(), 1);
        // The abandoned one left the count when it was skipped; the two taken still hold theirs.
        assert_eq!(intake.in_system(), 2);
    }

    #[test]
    fn close_drains_then_ends() {
        let intake = Intake::new(10);
        let (t, _rx) = ticket(&intake, 1.0);
        intake.push(t).ok().unwrap();
        intake.close();
        let (late, _rx2) = ticket(&intake, 1.0);
        assert_eq!(intake.push(late).err(), Some(Refusal::ShuttingDown));
        assert!(intake.take().is_some());
        assert!(intake.take().is_none());
    }
}

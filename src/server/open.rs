//! The node's open connections, per front end and in all, and the one cap on them.
//!
//! Every front end (binary, HTTP, gRPC) takes a [`Place`] here before it serves a connection and
//! gives it back when the connection ends. `server.max_connections` is what an operator sizes
//! for memory and file descriptors, so it caps the node: three front ends that each admitted up
//! to it would let in three times what was planned for.
//!
//! A connection over the cap is answered (a refusal that names the key), and those answers are
//! capped too, for the node: each holds a task and a socket for up to the write or read timeout,
//! so a flood of connections must not turn into a flood of refusals. Past [`REFUSALS_IN_FLIGHT`]
//! a further connection is closed without an answer.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::telemetry::Telemetry;

/// The front ends, as counted in `/metrics` (`edgeinfer_open_connections{protocol=…}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Binary,
    Http,
    Grpc,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Binary, Protocol::Http, Protocol::Grpc];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Binary => "binary",
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Refusals being answered at once, over all front ends. Each costs a task and a socket (for a
/// gRPC one, an HTTP/2 connection's state) for up to the read timeout; a client that is refused
/// keeps no place, so this bounds what the node spends on connections it does not serve.
pub const REFUSALS_IN_FLIGHT: usize = 64;

pub struct OpenConnections {
    max: usize,
    total: AtomicUsize,
    refusing: AtomicUsize,
    by_protocol: [AtomicUsize; 3],
    /// Told the total on every change (the summary's and the console's `open`), and every refusal.
    telemetry: Option<Arc<Telemetry>>,
}

impl OpenConnections {
    pub fn new(max: usize, telemetry: Option<Arc<Telemetry>>) -> Arc<Self> {
        Arc::new(OpenConnections { max, total: AtomicUsize::new(0), refusing: AtomicUsize::new(0), by_protocol: Default::default(), telemetry })
    }

    /// `server.max_connections`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// A place for one more connection of `protocol`, or `None` (counted as a refusal) when the
    /// node is at the cap. The check and the count are one atomic step, so connections accepted
    /// at the same moment on several front ends cannot pass the cap between them.
    pub fn admit(self: &Arc<Self>, protocol: Protocol) -> Option<Place> {
        match take(&self.total, self.max) {
            Ok(before) => {
                self.by_protocol[protocol as usize].fetch_add(1, Ordering::Relaxed);
                self.report(before + 1);
                Some(Place { of: self.clone(), protocol })
            }
            Err(_) => {
                if let Some(t) = &self.telemetry {
                    t.count_refused_connection();
                }
                None
            }
        }
    }

    /// `answer`, the refusal of one connection over the cap, holding a slot of the node's
    /// refusal budget until it is done; `None` when [`REFUSALS_IN_FLIGHT`] are being answered
    /// already. The caller then drops `answer`, and with it the socket: the connection is closed
    /// without a word.
    pub fn refusal(self: &Arc<Self>, answer: impl Future<Output = ()>) -> Option<impl Future<Output = ()>> {
        let slot = take(&self.refusing, REFUSALS_IN_FLIGHT).ok().map(|_| Refusal { of: self.clone() })?;
        Some(async move {
            answer.await;
            drop(slot);
        })
    }

    /// Refusals being answered now.
    pub fn refusing(&self) -> usize {
        self.refusing.load(Ordering::Relaxed)
    }

    /// Connections open on one front end.
    pub fn open(&self, protocol: Protocol) -> usize {
        self.by_protocol[protocol as usize].load(Ordering::Relaxed)
    }

    /// Connections open on all front ends together.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn report(&self, total: usize) {
        if let Some(t) = &self.telemetry {
            t.set_open_connections(total);
        }
    }
}

/// One more on `count` if it is under `max`, as one atomic step (no check-then-act): the count
/// before, or `Err` when full.
fn take(count: &AtomicUsize, max: usize) -> Result<usize, usize> {
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
}

/// A slot of the refusal budget, given back when the answer holding it is done with.
struct Refusal {
    of: Arc<OpenConnections>,
}

impl Drop for Refusal {
    fn drop(&mut self) {
        self.of.refusing.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One connection's place under the cap, given back when dropped.
pub struct Place {
    of: Arc<OpenConnections>,
    protocol: Protocol,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.of.by_protocol[self.protocol as usize].fetch_sub(1, Ordering::Relaxed);
        let total = self.of.total.fetch_sub(1, Ordering::AcqRel) - 1;
        self.of.report(total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cap_across_front_ends() {
        let open = OpenConnections::new(3, None);
        let a = open.admit(Protocol::Binary).unwrap();
        let _b = open.admit(Protocol::Http).unwrap();
        let _c = open.admit(Protocol::Grpc).unwrap();
        // Each front end has one connection, far under 3 of its own: the node is full.
        for p in Protocol::ALL {
            assert!(open.admit(p).is_none(), "{p:?} admitted over the node's cap");
        }
        assert_eq!((open.total(), open.open(Protocol::Binary), open.open(Protocol::Http), open.open(Protocol::Grpc)), (3, 1, 1, 1));
        // A place given back on one front end is free for any.
        drop(a);
        assert_eq!(open.total(), 2);
        let g = open.admit(Protocol::Grpc).unwrap();
        assert_eq!((open.open(Protocol::Binary), open.open(Protocol::Grpc)), (0, 2));
        drop(g);
        assert_eq!(open.total(), 2);
    }

    #[test]
    fn refusals_and_the_total_reach_telemetry() {
        let telemetry = Arc::new(Telemetry::new(vec![70.0]));
        let open = OpenConnections::new(1, Some(telemetry.clone()));
        let a = open.admit(Protocol::Http).unwrap();
        assert_eq!(telemetry.connections().open, 1);
        assert!(open.admit(Protocol::Binary).is_none());
        assert_eq!(telemetry.connections().refused, 1);
        drop(a);
        assert_eq!(telemetry.connections().open, 0);
    }

    #[test]
    fn racing_admissions_never_pass_the_cap() {
        // 8 threads × 1,000 admit-and-hold-briefly rounds against a cap of 5: the count never
        // reads above it, and every place comes back.
        let open = OpenConnections::new(5, None);
        let peak = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|s| {
            for t in 0..8 {
                let (open, peak) = (open.clone(), peak.clone());
                s.spawn(move || {
                    for _ in 0..1_000 {
                        if let Some(place) = open.admit(Protocol::ALL[t % 3]) {
                            peak.fetch_max(open.total(), Ordering::Relaxed);
                            std::hint::black_box(&place);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Relaxed) <= 5, "peak {}", peak.load(Ordering::Relaxed));
        assert_eq!(open.total(), 0);
        assert_eq!(Protocol::ALL.map(|p| open.open(p)), [0, 0, 0]);
    }

    #[test]
    fn refusals_answered_at_once_are_capped_for_the_node() {
        let open = OpenConnections::new(0, None);
        let answer = || std::future::ready(());
        let held: Vec<_> = (0..REFUSALS_IN_FLIGHT).map(|_| open.refusal(answer()).expect("under the refusal cap")).collect();
        assert_eq!(open.refusing(), REFUSALS_IN_FLIGHT);
        assert!(open.refusal(answer()).is_none(), "a refusal past the cap");
        drop(held);
        assert_eq!(open.refusing(), 0);
        // An answer run to its end gives its slot back too.
        let one = open.refusal(answer()).expect("room again");
        assert_eq!(open.refusing(), 1);
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(one);
        assert_eq!(open.refusing(), 0);
    }
}

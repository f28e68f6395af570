//! The built-in client fleet: the paper's clients (sections 3–4) inside the same process, or
//! alone as a load generator (`edgeinfer client`). Each client is a closed loop over real TCP to
//! the server's listener, adapting its image resolution with [`controller::Controller`], its
//! bytes paced by the emulated cellular uplink ([`link::Link`]) unless that is switched off.
//!
//! The fleet is driven through [`FleetControl`] (console keys, headless flags, tests alike).

pub mod backoff;
pub mod client;
pub mod config;
pub mod controller;
pub mod images;
pub mod link;
pub mod stats;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{FleetControl, FleetSnapshot, RampView};
use crate::telemetry::summary::{ClientsSummary, Counts, PerResolution};
use crate::telemetry::Row;
use crate::telemetry::Telemetry;
use client::ClientState;
use config::FleetConfig;
use controller::ControllerParams;
use images::ImageSet;
use link::{Link, LinkParams};
use stats::Stats;

/// What every client of the fleet shares (one copy, behind an `Arc`).
pub(crate) struct Shared {
    addr: SocketAddr,
    params: ControllerParams,
    images: ImageSet,
    link: Option<Link>,
    think: Duration,
    timeout: Duration,
    stats: Stats,
}

struct Member {
    id: u32,
    state: Arc<ClientState>,
    stop: CancellationToken,
}

struct Ramp {
    step: usize,
    every: Duration,
    max: usize,
    /// Present while a ramp task runs; cancelled to stop it (or by the task when `max` is reached).
    stop: Option<CancellationToken>,
}

impl Ramp {
    fn running(&self) -> bool {
        self.stop.as_ref().is_some_and(|t| !t.is_cancelled())
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// Running clients, oldest first; removal takes the newest.
    members: Mutex<Vec<Member>>,
    next_id: AtomicU32,
    ramp: Mutex<Ramp>,
    paused: watch::Sender<bool>,
    tasks: TaskTracker,
    /// Control calls may come from a thread outside the runtime (the console's).
    runtime: tokio::runtime::Handle,
    telemetry: Option<Arc<Telemetry>>,
}

pub struct Fleet {
    inner: Arc<Inner>,
}

impl Fleet {
    /// Builds the images, then starts `cfg.clients` clients against `addr` and, when
    /// `cfg.ramp_at_start`, the ramp. Events go to `telemetry` when given, else to the log.
    pub async fn start(cfg: &FleetConfig, addr: SocketAddr, telemetry: Option<Arc<Telemetry>>) -> Result<Arc<Fleet>> {
        let images = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || ImageSet::for_fleet(&cfg, &cfg.resolutions)).await.context("image preparation panicked")??
        };
        let l = &cfg.link;
        let link = l.enabled.then(|| {
            Link::new(LinkParams {
                cell_mbps: l.cell_mbps,
                client_cap_mbps: (l.client_cap_mbps > 0.0).then_some(l.client_cap_mbps),
                rtt: Duration::from_secs_f64(l.rtt_ms / 1000.0),
                chunk_bytes: l.chunk_bytes,
            })
        });
        let shared = Shared {
            addr,
            params: ControllerParams {
                resolutions: cfg.resolutions.clone(),
                tc_lower_ms: cfg.tc_lower_ms,
                tc_upper_ms: cfg.tc_upper_ms,
                hold_responses: cfg.hold_responses,
                hold: Duration::from_millis(cfg.hold_ms),
            },
            images,
            link,
            think: Duration::from_millis(cfg.think_ms),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
            stats: Stats::new(),
        };
        let fleet = Arc::new(Fleet {
            inner: Arc::new(Inner {
                shared: Arc::new(shared),
                members: Mutex::new(Vec::new()),
                next_id: AtomicU32::new(1),
                ramp: Mutex::new(Ramp {
                    step: cfg.ramp_step,
                    every: Duration::from_secs_f64(cfg.ramp_every_s),
                    max: cfg.max_clients,
                    stop: None,
                }),
                paused: watch::Sender::new(false),
                tasks: TaskTracker::new(),
                runtime: tokio::runtime::Handle::current(),
                telemetry,
            }),
        });
        let sizes = fleet.inner.shared.images.mean_bytes();
        let ladder: Vec<String> = cfg.resolutions.iter().zip(&sizes).map(|(r, b)| format!("{r}px {:.1} kB", *b as f64 / 1000.0)).collect();
        let uplink = match &cfg.link {
            l if l.enabled => format!("cell {} Mbit/s, cap {} Mbit/s, RTT {} ms", l.cell_mbps, l.client_cap_mbps, l.rtt_ms),
            _ => "off".into(),
        };
        fleet.inner.event(format!("fleet → {addr}: images {}; uplink {uplink}", ladder.join(", ")));
        fleet.inner.add(cfg.clients);
        if cfg.ramp_at_start {
            fleet.inner.start_ramp();
        }
        Ok(fleet)
    }

    pub fn resolutions(&self) -> &[u16] {
        &self.inner.shared.params.resolutions
    }

    pub fn count(&self) -> usize {
        self.inner.members.lock().len()
    }

    /// Clients at each R_i, ladder order.
    pub fn per_resolution(&self) -> Vec<usize> {
        self.inner.per_resolution()
    }

    /// Closes the current interval of the fleet's time series.
    pub fn tick(&self) -> Row {
        self.inner.shared.stats.tick(self.count(), self.per_resolution())
    }

    pub fn rows(&self) -> Vec<Row> {
        self.inner.shared.stats.rows()
    }

    pub fn counts(&self) -> Counts {
        self.inner.shared.stats.counts()
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.shared.stats
    }

    /// The `clients` entry of the summary, as things stand now.
    pub fn clients_summary(&self) -> ClientsSummary {
        let per = self.per_resolution();
        ClientsSummary { final_count: per.iter().sum(), resolutions: PerResolution(self.resolutions().iter().copied().zip(per).collect()) }
    }

    /// Stops the ramp and every client, and waits until each has finished its request in flight.
    /// The fleet stays closed: control calls that come later (a key pressed while the console
    /// stops, a task that was about to grow the fleet) add no client and start no ramp.
    pub async fn shutdown(&self) {
        {
            // Closed under the ramp's lock, so a ramp cannot start after this (see `start_ramp`).
            let mut ramp = self.inner.ramp.lock();
            self.inner.tasks.close();
            if let Some(t) = ramp.stop.take() {
                t.cancel();
            }
        }
        // `add` checks for closed under this lock: a client added just before is drained here.
        for m in self.inner.members.lock().drain(..) {
            m.stop.cancel();
        }
        self.inner.tasks.wait().await;
    }
}

impl Inner {
    fn event(&self, text: String) {
        match &self.telemetry {
            Some(t) => t.event(text),
            None => tracing::info!(event = %text),
        }
    }

    fn per_resolution(&self) -> Vec<usize> {
        let mut per = vec![0; self.shared.params.resolutions.len()];
        for m in self.members.lock().iter() {
            per[m.state.level()] += 1;
        }
        per
    }

    /// Adds `n` clients, or none once the fleet has shut down; returns how many were added.
    fn add(&self, n: usize) -> usize {
        let mut members = self.members.lock();
        if self.tasks.is_closed() {
            return 0;
        }
        for _ in 0..n {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (state, stop) = (Arc::new(ClientState::new()), CancellationToken::new());
            let task = client::run(id, self.shared.clone(), state.clone(), stop.clone(), self.paused.subscribe());
            self.tasks.spawn_on(task, &self.runtime);
            members.push(Member { id, state, stop });
        }
        n
    }

    /// Removes the newest `n` clients; each finishes its request in flight first.
    fn remove(&self, n: usize) -> usize {
        let mut members = self.members.lock();
        let keep = members.len().saturating_sub(n);
        let gone = members.split_off(keep);
        for m in &gone {
            m.stop.cancel();
        }
        gone.len()
    }

    /// Starts the ramp task, unless the fleet has shut down; returns whether it started.
    fn start_ramp(self: &Arc<Self>) -> bool {
        let mut ramp = self.ramp.lock();
        if self.tasks.is_closed() {
            return false;
        }
        let token = CancellationToken::new();
        ramp.stop = Some(token.clone());
        let (step, every, max) = (ramp.step, ramp.every, ramp.max);
        self.event(format!("ramp started: +{step} clients every {:.1} s up to {max}", every.as_secs_f64()));
        let inner = self.clone();
        self.runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let n = inner.members.lock().len();
                let add = step.min(max.saturating_sub(n));
                inner.add(add);
                if n + add >= max {
                    break;
                }
            }
            token.cancel();
            inner.event(format!("ramp reached {max} clients"));
        });
        true
    }
}

impl FleetControl for Fleet {
    fn add_clients(&self, n: usize) {
        match self.inner.add(n) {
            0 if n > 0 => self.inner.event(format!("+{n} clients refused: the fleet has stopped")),
            _ => self.inner.event(format!("+{n} clients → {}", self.count())),
        }
    }

    fn remove_clients(&self, n: usize) {
        let gone = self.inner.remove(n);
        self.inner.event(format!("−{gone} clients → {}", self.count()));
    }

    fn toggle_ramp(&self) -> bool {
        let stop = {
            let mut ramp = self.inner.ramp.lock();
            if ramp.running() {
                ramp.stop.take()
            } else {
                None
            }
        };
        match stop {
            Some(t) => {
                t.cancel();
                self.inner.event("ramp stopped".into());
                false
            }
            None => self.inner.start_ramp(),
        }
    }

    fn set_paused(&self, paused: bool) {
        if self.inner.paused.send_replace(paused) != paused {
            self.inner.event(if paused { "fleet paused".into() } else { "fleet resumed".into() });
        }
    }

    fn snapshot(&self) -> FleetSnapshot {
        let p = &self.inner.shared.params;
        let clients = self.inner.members.lock().iter().map(|m| m.state.view(m.id, &p.resolutions)).collect();
        let ramp = self.inner.ramp.lock();
        FleetSnapshot {
            clients,
            resolutions: p.resolutions.clone(),
            per_resolution: self.per_resolution(),
            tc_lower_ms: p.tc_lower_ms,
            tc_upper_ms: p.tc_upper_ms,
            ramp: Some(RampView { step: ramp.step, every_s: ramp.every.as_secs_f64(), max: ramp.max, running: ramp.running() }),
            paused: *self.inner.paused.borrow(),
            latency_ms: self.inner.shared.stats.latency(),
        }
    }

    fn count(&self) -> usize {
        Fleet::count(self)
    }

    fn thresholds_ms(&self) -> (f64, f64) {
        let p = &self.inner.shared.params;
        (p.tc_lower_ms, p.tc_upper_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_fleet_takes_no_more_clients() {
        // Nothing listens there: the clients only retry their connection, which is all this needs.
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let cfg = FleetConfig { clients: 1, resolutions: vec![64], ramp_step: 1, ramp_every_s: 0.02, max_clients: 50, ..FleetConfig::default() };
        let fleet = Fleet::start(&cfg, addr, None).await.unwrap();
        fleet.add_clients(2);
        assert_eq!(fleet.count(), 3);
        assert!(fleet.toggle_ramp(), "the ramp starts while the fleet runs");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while fleet.count() < 5 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fleet.count() >= 5, "the ramp grows the fleet: {}", fleet.count());
        fleet.shutdown().await;
        assert_eq!(fleet.count(), 0);
        // Control calls after the stop (the experiment's one-client lead, a console key) change nothing.
        fleet.add_clients(3);
        assert!(!fleet.toggle_ramp(), "no ramp starts on a stopped fleet");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(fleet.count(), 0);
    }
}

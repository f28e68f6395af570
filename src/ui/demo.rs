//! A stand-in fleet: an in-memory client list implementing [`FleetControl`] that sends no
//! traffic. The console tests use it, and `bench console` uses it to put N clients on screen
//! when no built-in fleet is attached.

use parking_lot::Mutex;

use crate::control::{ClientView, FleetControl, FleetSnapshot, RampView};

pub struct StandInFleet {
    state: Mutex<FleetSnapshot>,
}

impl StandInFleet {
    pub fn new(resolutions: Vec<u16>, tc_lower_ms: f64, tc_upper_ms: f64) -> StandInFleet {
        let per_resolution = vec![0; resolutions.len()];
        let ramp = Some(RampView { step: 10, every_s: 5.0, max: 1000, running: false });
        StandInFleet { state: Mutex::new(FleetSnapshot { resolutions, per_resolution, tc_lower_ms, tc_upper_ms, ramp, ..Default::default() }) }
    }

    /// Gives client `id` a last top-1 label, as a labelled ladder's answers would.
    pub fn set_label(&self, id: u32, label: &str) {
        if let Some(c) = self.state.lock().clients.iter_mut().find(|c| c.id == id) {
            c.last_label = Some(label.into());
        }
    }
}

impl FleetControl for StandInFleet {
    /// New clients spread over the resolutions, with made-up but plausible counters.
    fn add_clients(&self, n: usize) {
        let mut s = self.state.lock();
        let k = s.resolutions.len().max(1);
        for _ in 0..n {
            let id = s.clients.last().map_or(1, |c| c.id + 1);
            let r = id as usize % k;
            let resolution = s.resolutions.get(r).copied().unwrap_or(0);
            s.clients.push(ClientView {
                id,
                resolution,
                last_latency_ms: Some(5.0 + r as f64),
                requests: id as u64 * 3,
                errors: 0,
                last_label: None,
            });
            if let Some(c) = s.per_resolution.get_mut(r) {
                *c += 1;
            }
        }
    }

    fn remove_clients(&self, n: usize) {
        let mut s = self.state.lock();
        for _ in 0..n {
            let Some(c) = s.clients.pop() else { break };
            if let Some(i) = s.resolutions.iter().position(|r| *r == c.resolution) {
                s.per_resolution[i] -= 1;
            }
        }
    }

    fn toggle_ramp(&self) -> bool {
        let mut s = self.state.lock();
        let ramp = s.ramp.get_or_insert(RampView { step: 10, every_s: 5.0, max: 1000, running: false });
        ramp.running = !ramp.running;
        ramp.running
    }

    fn set_paused(&self, paused: bool) {
        self.state.lock().paused = paused;
    }

    fn snapshot(&self) -> FleetSnapshot {
        self.state.lock().clone()
    }

    fn thresholds_ms(&self) -> (f64, f64) {
        let s = self.state.lock();
        (s.tc_lower_ms, s.tc_upper_ms)
    }
}

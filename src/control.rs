//! The control handle: every runtime change an operator can make (T, the built-in fleet) goes
//! through here, so the console keys, headless flags and tests share one set of rules.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::dispatch::Dispatcher;
use crate::telemetry::{LatencySummary, Telemetry};

/// One client of the built-in fleet, as the console lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientView {
    pub id: u32,
    pub resolution: u16,
    pub last_latency_ms: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    /// The label of the last answer's top class, when the ladder has labels.
    pub last_label: Option<Arc<str>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RampView {
    pub step: usize,
    pub every_s: f64,
    pub max: usize,
    pub running: bool,
}

/// A consistent picture of the fleet at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetSnapshot {
    pub clients: Vec<ClientView>,
    /// The resolution ladder R_1 > … > R_k.
    pub resolutions: Vec<u16>,
    /// Clients currently at each R_i, same order.
    pub per_resolution: Vec<usize>,
    pub tc_lower_ms: f64,
    pub tc_upper_ms: f64,
    pub ramp: Option<RampView>,
    pub paused: bool,
    /// Client-observed latency (transmission + server + return) since start.
    pub latency_ms: LatencySummary,
}

/// What can be done to a running fleet. Implemented by the built-in fleet.
pub trait FleetControl: Send + Sync {
    fn add_clients(&self, n: usize);
    fn remove_clients(&self, n: usize);
    /// Starts the ramp if stopped, stops it if running; returns whether it now runs.
    fn toggle_ramp(&self) -> bool;
    fn set_paused(&self, paused: bool);
    fn snapshot(&self) -> FleetSnapshot;
    /// Clients running now.
    fn count(&self) -> usize {
        self.snapshot().clients.len()
    }
    /// The client thresholds (TC_lower, TC_upper) in ms, which must stay above T.
    fn thresholds_ms(&self) -> (f64, f64);
}

pub struct Control {
    pub dispatcher: Arc<Dispatcher>,
    pub telemetry: Arc<Telemetry>,
    fleet: RwLock<Option<Arc<dyn FleetControl>>>,
}

impl Control {
    pub fn new(dispatcher: Arc<Dispatcher>, telemetry: Arc<Telemetry>) -> Self {
        Self { dispatcher, telemetry, fleet: RwLock::new(None) }
    }

    pub fn attach_fleet(&self, fleet: Arc<dyn FleetControl>) {
        *self.fleet.write() = Some(fleet);
    }

    pub fn fleet(&self) -> Option<Arc<dyn FleetControl>> {
        self.fleet.read().clone()
    }

    pub fn bound_ms(&self) -> f64 {
        self.dispatcher.bound_ms()
    }

    /// Changes T. Refused (with the reason, also logged as an event) when it is not positive or
    /// would break the paper's condition TC_upper > TC_lower > T for a running fleet.
    pub fn set_bound_ms(&self, ms: f64) -> Result<(), String> {
        let refuse = |why: String| {
            self.telemetry.problem(format!("T change to {ms:.1} ms refused: {why}"));
            Err(why)
        };
        if !(ms.is_finite() && ms > 0.0) {
            return refuse("T must be a positive number of milliseconds".into());
        }
        if let Some(f) = self.fleet() {
            let (lower, upper) = f.thresholds_ms();
            if !(lower > ms && upper > ms) {
                return refuse(format!("client thresholds TC_lower = {lower} ms and TC_upper = {upper} ms must both stay above T"));
            }
        }
        let old = self.dispatcher.bound_ms();
        self.dispatcher.set_bound_ms(ms);
        self.telemetry.event(format!("T changed {old:.1} → {ms:.1} ms"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::policy::Paper;

    struct Fixed(f64, f64);
    impl FleetControl for Fixed {
        fn add_clients(&self, _: usize) {}
        fn remove_clients(&self, _: usize) {}
        fn toggle_ramp(&self) -> bool {
            false
        }
        fn set_paused(&self, _: bool) {}
        fn snapshot(&self) -> FleetSnapshot {
            FleetSnapshot::default()
        }
        fn thresholds_ms(&self) -> (f64, f64) {
            (self.0, self.1)
        }
    }

    fn control() -> Control {
        let d = Arc::new(Dispatcher::new(Box::new(Paper), 1, 0.1, 50.0));
        Control::new(d, Arc::new(Telemetry::new(vec![70.0])))
    }

    #[test]
    fn t_changes_are_logged() {
        let c = control();
        c.set_bound_ms(20.0).unwrap();
        assert_eq!(c.bound_ms(), 20.0);
        assert!(c.telemetry.events().last().unwrap().text.contains("50.0 → 20.0"));
        assert!(c.set_bound_ms(-1.0).is_err());
        assert!(c.set_bound_ms(f64::NAN).is_err());
        assert_eq!(c.bound_ms(), 20.0);
    }

    #[test]
    fn t_must_stay_below_client_thresholds() {
        let c = control();
        c.attach_fleet(Arc::new(Fixed(80.0, 150.0)));
        assert!(c.set_bound_ms(79.0).is_ok());
        let err = c.set_bound_ms(80.0).unwrap_err();
        assert!(err.contains("TC_lower"), "{err}");
        assert_eq!(c.bound_ms(), 79.0);
        assert!(c.telemetry.events().last().unwrap().text.contains("refused"));
    }
}

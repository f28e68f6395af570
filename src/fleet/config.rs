//! `[fleet]` and `[fleet.link]`: the built-in clients and their emulated uplink (see
//! `config.toml` for what each key means and why).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub clients: usize,
    pub ramp_at_start: bool,
    pub ramp_step: usize,
    pub ramp_every_s: f64,
    pub max_clients: usize,
    pub resolutions: Vec<u16>,
    pub tc_lower_ms: f64,
    pub tc_upper_ms: f64,
    pub hold_responses: u32,
    pub hold_ms: u64,
    pub think_ms: u64,
    pub jpeg_quality: u8,
    pub jpeg_subsampling: Subsampling,
    pub images: PathBuf,
    pub request_timeout_ms: u64,
    pub link: LinkConfig,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            clients: 0,
            ramp_at_start: false,
            ramp_step: 4,
            ramp_every_s: 2.0,
            max_clients: 64,
            resolutions: vec![224, 192, 160, 128, 96],
            tc_lower_ms: 100.0,
            tc_upper_ms: 200.0,
            hold_responses: 2,
            hold_ms: 500,
            think_ms: 0,
            jpeg_quality: 75,
            jpeg_subsampling: Subsampling::S420,
            images: PathBuf::new(),
            request_timeout_ms: 30_000,
            link: LinkConfig::default(),
        }
    }
}

/// How the fleet's JPEGs store colour (`fleet.jpeg_subsampling`): the chroma planes at half the
/// width and height (4:2:0), half the width (4:2:2), or full size (4:4:4).
///
/// 4:2:0 is the default because it is what a client's encoder writes unless told otherwise:
/// phone cameras, Android's `Bitmap.compress`, browsers' `canvas.toBlob`, Pillow and OpenCV
/// all default to it. It matters to the server: the decoder has half the blocks of colour to
/// read, so a 224-px JPEG decodes ~20 % faster than at 4:4:4 (`edgeinfer bench overhead
/// --subsampling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
pub enum Subsampling {
    #[serde(rename = "4:2:0")]
    #[value(name = "4:2:0")]
    S420,
    #[serde(rename = "4:2:2")]
    #[value(name = "4:2:2")]
    S422,
    #[serde(rename = "4:4:4")]
    #[value(name = "4:4:4")]
    S444,
}

impl std::fmt::Display for Subsampling {
    /// The name the config and the flag use ("4:2:0"), from the one place it is written.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
        f.write_str(v.get_name())
    }
}

/// The fleet's emulated cellular uplink (`[fleet.link]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinkConfig {
    pub enabled: bool,
    pub cell_mbps: f64,
    pub client_cap_mbps: f64,
    pub rtt_ms: f64,
    pub chunk_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self { enabled: true, cell_mbps: 20.0, client_cap_mbps: 5.0, rtt_ms: 40.0, chunk_bytes: 1460 }
    }
}

impl FleetConfig {
    /// Checks serde cannot express: `Err((key, why))` for the first bad key. `bound_ms` is the
    /// server's T, which both client thresholds must exceed (paper, section 3).
    pub fn validate(&self, bound_ms: f64) -> Result<(), (&'static str, String)> {
        if let Err((key, msg)) = super::controller::check(&self.resolutions, self.tc_lower_ms, self.tc_upper_ms, bound_ms) {
            let key = match key {
                "resolutions" => "fleet.resolutions",
                _ => "fleet.tc_lower_ms",
            };
            return Err((key, msg));
        }
        let checks: [(bool, &'static str, &str); 9] = [
            (self.ramp_step >= 1, "fleet.ramp_step", "must be at least 1"),
            (self.ramp_every_s.is_finite() && self.ramp_every_s > 0.0, "fleet.ramp_every_s", "must be a positive number of seconds"),
            (self.max_clients >= 1, "fleet.max_clients", "must be at least 1"),
            ((1..=100).contains(&self.jpeg_quality), "fleet.jpeg_quality", "must be between 1 and 100"),
            (self.request_timeout_ms >= 1, "fleet.request_timeout_ms", "must be at least 1"),
            (self.link.cell_mbps.is_finite() && self.link.cell_mbps > 0.0, "fleet.link.cell_mbps", "must be a positive rate in Mbit/s"),
            (
                self.link.client_cap_mbps.is_finite() && self.link.client_cap_mbps >= 0.0,
                "fleet.link.client_cap_mbps",
                "must be 0 (no cap) or a positive rate in Mbit/s",
            ),
            (self.link.rtt_ms.is_finite() && self.link.rtt_ms >= 0.0, "fleet.link.rtt_ms", "must be 0 or a positive number of milliseconds"),
            (self.link.chunk_bytes >= 1, "fleet.link.chunk_bytes", "must be at least 1"),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, key, msg)) => Err((key, msg.to_string())),
            None => Ok(()),
        }
    }
}

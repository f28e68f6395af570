//! `edgeinfer bench fleet`: how many clients one process holds, and what each costs in memory.
//! By default a server (the configured ladder) and the fleet run in this process, over loopback
//! TCP, so the difference in resident set per client covers both ends of each connection and the
//! server's work in flight (each waiting request holds its encoded bytes; the executor threads
//! decode into buffers they keep). With
//! `--connect ADDR` only the fleet runs here, against a server in another process: the
//! difference is then the clients' own cost.

use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::Config;
use crate::control::FleetControl;
use crate::fleet::Fleet;
use crate::service::Service;
use crate::telemetry::summary::{ClientsSummary, Counts};
use crate::telemetry::{fmt_opt, LatencySummary};

#[derive(Debug, Serialize)]
pub struct FleetBench {
    /// Whether the server ran in this process (its memory then counts too).
    pub in_process_server: bool,
    pub clients: usize,
    pub secs: f64,
    pub link: bool,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub kb_per_client: f64,
    /// RSS once `warmup_s` had passed, and growth from there to the end (a soak's leak check).
    pub warmup_s: f64,
    pub rss_after_warmup_kb: u64,
    pub growth_after_warmup_pct: f64,
    /// Panics anywhere in the process during the run (caught ones included).
    pub panics: u64,
    pub requests: Counts,
    pub unanswered: u64,
    pub client_latency_ms: LatencySummary,
    pub clients_at_end: ClientsSummary,
}

/// Resident set size of this process, kB (Linux: /proc/self/status).
pub fn rss_kb() -> Result<u64> {
    super::rss_kib(std::process::id()).context("cannot read VmRSS from /proc/self/status")
}

pub async fn run(mut config: Config, clients: usize, secs: f64, warmup_s: f64, connect: Option<&str>) -> Result<FleetBench> {
    config.fleet.clients = 0;
    config.fleet.ramp_at_start = false;
    // In this process, the fleet is the node's own (the node stops it first); against another
    // server, it runs alone.
    let (service, fleet, addr) = match connect {
        Some(a) => {
            let addr = tokio::net::lookup_host(a).await?.next().with_context(|| format!("{a} resolves to no address"))?;
            (None, Fleet::start(&config.fleet, addr, None).await?, addr)
        }
        None => {
            let mut s = Service::start(crate::service::binary_only(config.clone())).await?;
            let f = s.start_fleet().await?;
            let addr = s.addr;
            (Some(s), f, addr)
        }
    };
    let rss_before_kb = rss_kb()?;
    let place = if service.is_some() { "in-process server" } else { "server in another process" };
    eprintln!("edgeinfer: {clients} clients for {secs} s against {addr} ({place}; RSS before: {rss_before_kb} kB)");
    let panics_before = crate::logging::panics();
    fleet.add_clients(clients);
    let every = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut rss_after_warmup_kb = None;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline - tokio::time::Instant::now())).await;
        if rss_after_warmup_kb.is_none() && start.elapsed().as_secs_f64() >= warmup_s {
            rss_after_warmup_kb = Some(rss_kb()?);
        }
        let r = fleet.tick();
        eprintln!(
            "  [{:>5.1}s] clients {} rps {:.1} p50 {} ms errors {} rss {} kB",
            r.t_s,
            r.clients,
            r.rps,
            fmt_opt(r.p50_ms, 1),
            r.errors,
            rss_kb().unwrap_or(0)
        );
    }
    let rss_after_kb = rss_kb()?;
    let rss_after_warmup_kb = rss_after_warmup_kb.unwrap_or(rss_after_kb);
    let clients_at_end = fleet.clients_summary();
    match service {
        Some(s) => {
            s.stop().await;
        }
        None => fleet.shutdown().await,
    }
    let requests = fleet.counts();
    let client_latency_ms = fleet.stats().latency();
    Ok(FleetBench {
        in_process_server: connect.is_none(),
        clients,
        secs,
        link: config.fleet.link.enabled,
        rss_before_kb,
        rss_after_kb,
        kb_per_client: rss_after_kb.saturating_sub(rss_before_kb) as f64 / clients.max(1) as f64,
        warmup_s,
        rss_after_warmup_kb,
        growth_after_warmup_pct: (rss_after_kb as f64 - rss_after_warmup_kb as f64) / rss_after_warmup_kb.max(1) as f64 * 100.0,
        panics: crate::logging::panics() - panics_before,
        requests,
        unanswered: requests.unanswered(),
        client_latency_ms,
        clients_at_end,
    })
}

impl FleetBench {
    /// What makes the run fail: requests never answered, errors other than `overloaded`, and
    /// panics. An `overloaded` refusal is an answer — the server declining for want of capacity,
    /// here mostly the `deadline` policy shedding what bursts of synchronised clients bring past
    /// the cores' capacity — so it is reported, not counted as a fault.
    pub fn faults(&self) -> u64 {
        self.unanswered + self.requests.errors.saturating_sub(self.requests.overloaded) + self.panics
    }
}

pub fn report(b: &FleetBench) -> String {
    format!(
        "clients {} for {} s (emulated uplink {}, {})\nRSS before {} kB, after {} kB: {:.1} kB per client\nRSS after {} s warm-up {} kB, growth since {:+.2}%\nrequests {}, panics {}\nclient latency p50 {} ms, p99 {} ms, max {} ms\n",
        b.clients,
        b.secs,
        if b.link { "on" } else { "off" },
        if b.in_process_server { "server in this process" } else { "fleet only" },
        b.rss_before_kb,
        b.rss_after_kb,
        b.kb_per_client,
        b.warmup_s,
        b.rss_after_warmup_kb,
        b.growth_after_warmup_pct,
        b.requests,
        b.panics,
        fmt_opt(b.client_latency_ms.p50, 1),
        fmt_opt(b.client_latency_ms.p99, 1),
        fmt_opt(b.client_latency_ms.max, 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bench(errors: u64, overloaded: u64, unanswered: u64, panics: u64) -> FleetBench {
        let requests = Counts { sent: 100 + unanswered, answered: 100, errors, overloaded };
        FleetBench {
            in_process_server: true,
            clients: 10,
            secs: 1.0,
            link: true,
            rss_before_kb: 1000,
            rss_after_kb: 1100,
            kb_per_client: 10.0,
            warmup_s: 0.0,
            rss_after_warmup_kb: 1100,
            growth_after_warmup_pct: 0.0,
            panics,
            requests,
            unanswered: requests.unanswered(),
            client_latency_ms: LatencySummary::default(),
            clients_at_end: ClientsSummary { final_count: 10, resolutions: crate::telemetry::summary::PerResolution(Vec::new()) },
        }
    }

    #[test]
    fn overloaded_refusals_are_reported_but_not_faults() {
        let shed = bench(7, 7, 0, 0);
        assert_eq!(shed.faults(), 0);
        assert!(report(&shed).contains("requests 100 sent, 100 answered, 7 errors (7 overloaded), 0 unanswered, panics 0"), "{}", report(&shed));
        // Any other error, an unanswered request or a panic fails the run.
        assert_eq!(bench(8, 7, 0, 0).faults(), 1);
        assert_eq!(bench(0, 0, 2, 0).faults(), 2);
        assert_eq!(bench(0, 0, 0, 1).faults(), 1);
    }
}

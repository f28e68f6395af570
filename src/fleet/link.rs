//! The emulated cellular uplink: one cell whose capacity is shared by the clients transmitting at
//! that moment, an optional per-client cap, and a round-trip delay.
//!
//! Model: a request's bytes go onto the socket in chunks, each released when the link would have
//! finished sending the previous one at the client's current share of the cell, recomputed per
//! chunk as clients start and stop sending. The uplink's one-way delay (RTT/2) is waited before
//! the first byte, the downlink's after the response arrives; the downlink is not a bottleneck
//! (responses are a few hundred bytes). So the latency a client measures = RTT/2 + transmission +
//! server + RTT/2.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Link parameters, in the units the config uses.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkParams {
    /// Capacity of the whole cell's uplink, Mbit/s.
    pub cell_mbps: f64,
    /// Per-client cap, Mbit/s; `None`: a lone client may use the whole cell.
    pub client_cap_mbps: Option<f64>,
    pub rtt: Duration,
    /// Bytes released per pacing step.
    pub chunk_bytes: usize,
}

/// A client's rate when `transmitting` clients (itself included) share the cell, bit/s.
pub fn share_bps(p: &LinkParams, transmitting: usize) -> f64 {
    let fair = p.cell_mbps * 1e6 / transmitting.max(1) as f64;
    match p.client_cap_mbps {
        Some(cap) => fair.min(cap * 1e6),
        None => fair,
    }
}

/// Time to send `bytes` at `bps`.
pub fn transmission_time(bytes: usize, bps: f64) -> Duration {
    Duration::from_secs_f64(bytes as f64 * 8.0 / bps)
}

/// The shared cell. Clients hold an `Arc` to it.
#[derive(Debug)]
pub struct Link {
    pub params: LinkParams,
    transmitting: AtomicUsize,
}

/// Counts a client as transmitting while alive, so a cancelled send cannot leak a slot.
struct Sending<'a>(&'a AtomicUsize);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Link {
    pub fn new(params: LinkParams) -> Self {
        Self { params, transmitting: AtomicUsize::new(0) }
    }

    /// Clients sending right now.
    pub fn transmitting(&self) -> usize {
        self.transmitting.load(Ordering::Relaxed)
    }

    /// The uplink's propagation delay, waited before the first byte.
    pub async fn uplink_delay(&self) {
        tokio::time::sleep(self.params.rtt / 2).await;
    }

    /// The downlink's propagation delay, waited after the response arrived.
    pub async fn downlink_delay(&self) {
        tokio::time::sleep(self.params.rtt / 2).await;
    }
}

impl crate::client::Uplink for Link {
    /// Writes one frame (its head, then its image) at the rate the cell allows this client.
    async fn send(&self, socket: &mut TcpStream, head: &[u8], image: &[u8]) -> std::io::Result<()> {
        self.transmitting.fetch_add(1, Ordering::Relaxed);
        let _slot = Sending(&self.transmitting);
        // Deadlines are absolute: a late timer wake-up is made up by the next chunks, so the mean
        // rate stays exact even with tokio's 1 ms timer resolution.
        let mut due = Instant::now();
        for part in [head, image] {
            for chunk in part.chunks(self.params.chunk_bytes.max(1)) {
                socket.write_all(chunk).await?;
                due += transmission_time(chunk.len(), share_bps(&self.params, self.transmitting()));
                tokio::time::sleep_until(due).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Uplink;

    fn params(cap: Option<f64>) -> LinkParams {
        LinkParams { cell_mbps: 10.0, client_cap_mbps: cap, rtt: Duration::from_millis(20), chunk_bytes: 1000 }
    }

    #[test]
    fn the_cell_is_shared_equally() {
        let p = params(None);
        assert_eq!(share_bps(&p, 1), 10e6);
        assert_eq!(share_bps(&p, 4), 2.5e6);
        // Nobody counted (a race at the edges) is treated as one sender, never a division by zero.
        assert_eq!(share_bps(&p, 0), 10e6);
    }

    #[test]
    fn the_per_client_cap_binds_only_when_the_cell_is_idle() {
        let p = params(Some(4.0));
        assert_eq!(share_bps(&p, 1), 4e6);
        assert_eq!(share_bps(&p, 2), 4e6);
        assert_eq!(share_bps(&p, 5), 2e6);
    }

    #[test]
    fn transmission_time_is_bits_over_rate() {
        assert_eq!(transmission_time(12_500, 1e6), Duration::from_millis(100));
        assert_eq!(transmission_time(0, 1e6), Duration::ZERO);
    }

    #[tokio::test]
    async fn pacing_follows_the_share() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf).await.unwrap();
            buf.len()
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let link = Link::new(params(None));
        let data = vec![7u8; 25_000];
        let t = Instant::now();
        link.send(&mut s, &data[..5_000], &data[5_000..]).await.unwrap();
        // 25 kB at 10 Mbit/s take 20 ms: pacing never runs ahead of the link.
        assert!(t.elapsed() >= Duration::from_millis(20), "{:?}", t.elapsed());
        assert_eq!(link.transmitting(), 0);
        drop(s);
        assert_eq!(reader.await.unwrap(), 25_000);
    }
}

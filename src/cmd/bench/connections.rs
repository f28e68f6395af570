//! `edgeinfer bench connections`: the memory idle connections cost a headless server.

use std::io::{BufRead, Read};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::io::AsyncReadExt;

use super::rss_kib;
use crate::client::Client;
use crate::protocol::Status;

#[derive(Debug, Serialize)]
pub struct ConnectionsReport {
    pub connections: usize,
    pub opened: usize,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    pub bytes_per_connection: f64,
    pub still_open_after_hold: usize,
    pub served_after: bool,
}

/// Starts a headless server as a child process (so each side has its own file-descriptor
/// limit), opens `count` idle connections to it, holds them, and reports the server's resident
/// memory before and after, per connection.
pub async fn run(config: Option<&Path>, count: usize, hold: Duration) -> Result<ConnectionsReport> {
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--headless", "--listen", "127.0.0.1:0"]);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let addr = match listening_addr(stdout).await {
        Ok(a) => a,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let pid = child.id();
    let result = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(pid).unwrap_or(0);
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            match tokio::net::TcpStream::connect(addr.as_str()).await {
                Ok(s) => conns.push(s),
                Err(e) => {
                    eprintln!("connect failed after {} connections: {e}", conns.len());
                    break;
                }
            }
        }
        let opened = conns.len();
        tokio::time::sleep(hold).await;
        let after = rss_kib(pid).unwrap_or(0);
        // A connection the server closed reads EOF at once; an open idle one would block.
        let mut still_open = 0;
        for c in &mut conns {
            let mut b = [0u8; 1];
            if tokio::time::timeout(Duration::from_micros(1), c.read(&mut b)).await.is_err() {
                still_open += 1;
            }
        }
        drop(conns);
        // The server still answers once the idle crowd is gone.
        let mut probe = Client::connect(addr.as_str(), 1).await?;
        let png = {
            let mut out = Vec::new();
            image::RgbImage::new(64, 64).write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
            out
        };
        let served_after = probe.infer(png.into(), 64).await?.status == Status::Ok;
        Ok(ConnectionsReport {
            connections: count,
            opened,
            server_rss_before_kib: before,
            server_rss_after_kib: after,
            bytes_per_connection: (after.saturating_sub(before) * 1024) as f64 / opened.max(1) as f64,
            still_open_after_hold: still_open,
            served_after,
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Reads the child's stdout until its banner names the address it listens on — on a blocking
/// thread, since the child takes seconds to load its models and a tokio worker must not wait on
/// a pipe meanwhile — then keeps draining it there, so the child never blocks on a full pipe.
async fn listening_addr(stdout: impl Read + Send + 'static) -> Result<String> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = lines.by_ref().map_while(Result::ok).find_map(|l| l.strip_prefix("edgeinfer: listening on ").map(str::to_string));
        let found = addr.is_some();
        let _ = tx.send(addr);
        if found {
            lines.for_each(drop);
        }
    });
    rx.await.ok().flatten().context("server child did not start")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// While the child is still starting (its banner comes late), the runtime's only worker
    /// keeps running other tasks: waiting for the banner does not block it.
    #[test]
    fn waiting_for_the_banner_leaves_the_runtime_free() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            writeln!(writer, "edgeinfer: backend tract").unwrap();
            writeln!(writer, "edgeinfer: listening on 127.0.0.1:4242").unwrap();
            writeln!(writer, "[     1s] a status line").unwrap();
        });
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let ticks = Arc::new(AtomicUsize::new(0));
        let counted = ticks.clone();
        let addr = rt.block_on(async move {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            });
            let addr = listening_addr(reader).await;
            ticker.abort();
            addr
        });
        late.join().unwrap();
        assert_eq!(addr.unwrap(), "127.0.0.1:4242");
        let n = ticks.load(Ordering::Relaxed);
        assert!(n >= 10, "the runtime ran other work only {n} times in 400 ms of waiting");
    }

    #[test]
    fn a_child_that_never_listens_is_an_error() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        writeln!(writer, "edgeinfer: error: no models").unwrap();
        drop(writer);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(listening_addr(reader)).unwrap_err();
        assert!(err.to_string().contains("did not start"), "{err}");
    }
}

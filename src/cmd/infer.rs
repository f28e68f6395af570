//! `edgeinfer infer`: send images to a server and print what came back.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::client::Client;
use crate::protocol::{Response, Status};

pub struct InferOptions {
    pub connect: String,
    pub images: Vec<PathBuf>,
    pub json: bool,
    pub token: String,
}

/// Returns whether every image was answered `ok`.
pub async fn run(opts: InferOptions) -> Result<bool> {
    let mut client = Client::connect(opts.connect.as_str(), std::process::id()).await?;
    client.token = opts.token.clone();
    let mut all_ok = true;
    for path in &opts.images {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        // Advertise the image's side so the server's telemetry can show it; 0 when unknown.
        let resolution = image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .map_or(0, |(w, h)| w.max(h).min(u16::MAX as u32) as u16);
        let sent = Instant::now();
        let resp = client.infer(bytes.into(), resolution).await?;
        let rtt_ms = sent.elapsed().as_secs_f64() * 1e3;
        all_ok &= resp.status == Status::Ok;
        if opts.json {
            println!("{}", to_json(path, &resp, rtt_ms));
        } else {
            print!("{}", to_text(path, &resp, rtt_ms));
        }
    }
    Ok(all_ok)
}

fn to_json(path: &std::path::Path, r: &Response, rtt_ms: f64) -> serde_json::Value {
    json!({
        "image": path.display().to_string(),
        "request_id": r.request_id,
        "status": r.status.as_str(),
        "message": r.message,
        "model": r.model.as_ref().map(|m| json!({"index": m.index, "name": m.name, "accuracy": m.accuracy})),
        "top": r.top.iter().map(|c| json!({"class": c.index, "score": c.score, "label": c.label})).collect::<Vec<_>>(),
        "timings_us": r.timings,
        "round_trip_ms": rtt_ms,
    })
}

fn to_text(path: &std::path::Path, r: &Response, rtt_ms: f64) -> String {
    let mut s = format!("{}: {}", path.display(), r.status);
    if !r.message.is_empty() {
        s.push_str(&format!(" ({})", r.message));
    }
    s.push('\n');
    if let Some(m) = &r.model {
        s.push_str(&format!("  model    {} (#{}, declared top-1 {:.1}%)\n", m.name, m.index, m.accuracy));
    }
    let t = r.timings;
    s.push_str(&format!(
        "  timings  queue {:.2} ms, preprocess {:.2} ms, inference {:.2} ms, server total {:.2} ms, round trip {:.2} ms\n",
        t.queue_us as f64 / 1e3,
        t.preprocess_us as f64 / 1e3,
        t.inference_us as f64 / 1e3,
        t.total_us as f64 / 1e3,
        rtt_ms
    ));
    for (i, c) in r.top.iter().enumerate() {
        s.push_str(&format!("  {}. class {:>4}  {:.4}  {}\n", i + 1, c.index, c.score, c.label.as_deref().unwrap_or("")));
    }
    s
}

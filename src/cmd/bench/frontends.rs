//! `edgeinfer bench frontends`: what each front end adds per request. One server in this
//! process, `static-cheapest` (the same model for every request, so only the protocol differs),
//! and closed-loop clients sending the same JPEG and asking for the top 5 classes over the
//! binary protocol, the Open Inference Protocol over HTTP (Triton's binary tensor data, the way
//! `tritonclient.http` sends by default) and over gRPC (raw contents, as `tritonclient.grpc`),
//! at each client count in turn, the three protocols taking turns of a quarter second so that
//! the machine's drift falls on all of them alike. Reports round-trip p50/p99 and the
//! difference from binary.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::config::Config;
use crate::fleet::images::{Encoding, ImageSet};
use crate::server::grpc::proto::{self, grpc_inference_service_client::GrpcInferenceServiceClient};
use crate::service::Service;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Binary,
    Http,
    Grpc,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub protocol: Protocol,
    pub clients: usize,
    pub requests: u64,
    pub errors: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// p50 minus the binary protocol's p50 at the same client count, ms.
    pub p50_over_binary_ms: f64,
    pub p99_over_binary_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub model: String,
    pub jpeg_bytes: usize,
    pub secs: f64,
    pub rows: Vec<Row>,
}

pub fn run(runtime: &tokio::runtime::Runtime, cfg: &Config, clients: &[usize], secs: f64) -> Result<Report> {
    let mut c = cfg.clone();
    c.dispatch.policy = crate::dispatch::policy::PolicyName::StaticCheapest;
    c.server.listen = "127.0.0.1:0".parse().expect("literal address");
    c.server.http_listen = "127.0.0.1:0".into();
    c.server.grpc_listen = "127.0.0.1:0".into();
    // Every client may have a request in the system; none is refused for the bench's sake.
    c.server.max_waiting = c.server.max_waiting.max(4 * clients.iter().copied().max().unwrap_or(1));
    c.fleet.clients = 0;
    let image = ImageSet::synthetic(&[224], Encoding::of(&c.fleet))?.get(0, 0);
    runtime.block_on(async {
        let service = Service::start(c).await?;
        let model = service.engine.ladder.last().map(|m| m.name.clone()).unwrap_or_default();
        let name = service.oip.ladder_name().to_string();
        let addrs = (service.addr, service.http_addr.context("HTTP is on")?, service.grpc_addr.context("gRPC is on")?);
        let secs_each = Duration::from_secs_f64(secs);
        let mut rows = Vec::new();
        for &n in clients {
            let measured = measure(addrs, &name, &image, n, secs_each).await?;
            let mut base = None;
            for (p, (h, errors, elapsed)) in PROTOCOLS.into_iter().zip(measured) {
                let (p50, p99) = (h.value_at_quantile(0.5) as f64 / 1000.0, h.value_at_quantile(0.99) as f64 / 1000.0);
                let (b50, b99) = *base.get_or_insert((p50, p99));
                rows.push(Row {
                    protocol: p,
                    clients: n,
                    requests: h.len(),
                    errors,
                    rps: h.len() as f64 / elapsed,
                    p50_ms: p50,
                    p99_ms: p99,
                    p50_over_binary_ms: p50 - b50,
                    p99_over_binary_ms: p99 - b99,
                });
            }
        }
        service.stop().await;
        Ok(Report { model, jpeg_bytes: image.len(), secs, rows })
    })
}

pub fn table(r: &Report) -> String {
    let mut t = format!("front ends: static-cheapest ({}), {}-byte JPEG, {} s per row; round trip per request\n", r.model, r.jpeg_bytes, r.secs);
    t += "protocol  clients  requests  errors     req/s   p50 ms   p99 ms   p50 - binary   p99 - binary\n";
    for x in &r.rows {
        let p = match x.protocol {
            Protocol::Binary => "binary",
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        };
        t += &format!(
            "{p:<8} {:>8} {:>9} {:>7} {:>9.0} {:>8.3} {:>8.3} {:>11.3} ms {:>11.3} ms\n",
            x.clients, x.requests, x.errors, x.rps, x.p50_ms, x.p99_ms, x.p50_over_binary_ms, x.p99_over_binary_ms
        );
    }
    t
}

const PROTOCOLS: [Protocol; 3] = [Protocol::Binary, Protocol::Http, Protocol::Grpc];

/// How long each protocol runs in its turn. The protocols take turns, round after round, until
/// each has run `secs`: a machine whose speed drifts from one second to the next (a shared VM,
/// another build) then slows them all alike, where one long run per protocol in a row booked the
/// drift as a difference between protocols.
const SLICE: Duration = Duration::from_millis(250);

/// `clients` closed-loop clients of each protocol, the protocols in turns of [`SLICE`] until
/// each has run `secs`, after a first round that warms every path (connections, the model's
/// arenas) untimed. Per protocol, in [`PROTOCOLS`] order: the merged round-trip histogram (µs),
/// the errors, and the seconds it ran.
async fn measure(
    addrs: (SocketAddr, SocketAddr, SocketAddr),
    model: &str,
    image: &Bytes,
    clients: usize,
    secs: Duration,
) -> Result<Vec<(Histogram<u64>, u64, f64)>> {
    let mut pools = Vec::new();
    for p in PROTOCOLS {
        let mut pool = Vec::with_capacity(clients);
        for i in 0..clients {
            pool.push(Client::connect(p, addrs, i as u32).await?);
        }
        pools.push(pool);
    }
    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut results: Vec<_> = PROTOCOLS.iter().map(|_| (new_histogram(), 0u64, 0f64)).collect();
    let rounds = (secs.as_secs_f64() / SLICE.as_secs_f64()).ceil().max(1.0) as usize;
    for round in 0..=rounds {
        for (pool, result) in pools.iter_mut().zip(results.iter_mut()) {
            let start = Instant::now();
            let stop = start + SLICE;
            let tasks: Vec<_> = pool
                .drain(..)
                .map(|mut client| {
                    let (model, image) = (model.to_string(), image.clone());
                    tokio::spawn(async move {
                        let mut h = new_histogram();
                        let mut errors = 0u64;
                        while Instant::now() < stop {
                            let t = Instant::now();
                            match client.infer(&model, &image).await {
                                Ok(()) => h.saturating_record(t.elapsed().as_micros() as u64),
                                Err(_) => errors += 1,
                            }
                        }
                        (client, h, errors)
                    })
                })
                .collect();
            for t in tasks {
                let (client, h, errors) = t.await.context("bench client panicked")?;
                pool.push(client);
                // Round 0 warms up.
                if round > 0 {
                    result.0.add(&h).context("histograms share bounds")?;
                    result.1 += errors;
                }
            }
            if round > 0 {
                result.2 += start.elapsed().as_secs_f64();
            }
        }
    }
    Ok(results)
}

/// One connection of each kind, asking for the top 5 classes as the binary protocol answers.
/// Each is a bare connection (the binary protocol's client, one hyper HTTP/1.1 connection, one
/// hyper HTTP/2 connection under tonic's generated client), so what differs is the protocol, not
/// how much machinery a client library puts around it.
enum Client {
    Binary(crate::client::Client),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>, String),
    Grpc(GrpcInferenceServiceClient<crate::server::grpc::Connection>),
}

impl Client {
    async fn connect(p: Protocol, (bin, http, grpc): (SocketAddr, SocketAddr, SocketAddr), id: u32) -> Result<Client> {
        Ok(match p {
            Protocol::Binary => Client::Binary(crate::client::Client::connect(bin, id).await?),
            Protocol::Http => {
                let socket = tokio::net::TcpStream::connect(http).await?;
                socket.set_nodelay(true)?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket)).await?;
                tokio::spawn(conn);
                Client::Http(send, http.to_string())
            }
            Protocol::Grpc => Client::Grpc(crate::server::grpc::connect(grpc).await?),
        })
    }

    async fn infer(&mut self, model: &str, image: &Bytes) -> Result<()> {
        match self {
            Client::Binary(c) => {
                let r = c.infer(image.clone(), 224).await?;
                if r.status != crate::protocol::Status::Ok {
                    bail!("{}", r.message);
                }
            }
            Client::Http(send, host) => {
                let (head, body) = http_request(image);
                let req = http::Request::post(format!("/v2/models/{model}/infer"))
                    .header(http::header::HOST, host.as_str())
                    .header(crate::server::http::HEADER_LENGTH, head)
                    .body(Full::new(body))?;
                let resp = send.send_request(req).await?;
                let ok = resp.status().is_success();
                let body = resp.into_body().collect().await?.to_bytes();
                if !ok {
                    bail!("{}", String::from_utf8_lossy(&body));
                }
            }
            Client::Grpc(c) => {
                c.model_infer(grpc_request(model, image)).await?;
            }
        }
        Ok(())
    }
}

/// A Triton binary-data request body for one image, top 5 as a binary output: (JSON length, body).
pub fn http_request(image: &[u8]) -> (usize, Bytes) {
    let raw = crate::server::oip::bytes_to_raw(&[image.to_vec()]);
    let head = format!(
        r#"{{"inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}],"outputs":[{{"name":"probabilities","parameters":{{"classification":5,"binary_data":true}}}}]}}"#,
        raw.len()
    );
    let len = head.len();
    let mut body = head.into_bytes();
    body.extend_from_slice(&raw);
    (len, Bytes::from(body))
}

/// A `ModelInferRequest` for one image in raw contents, top 5 classes.
pub fn grpc_request(model: &str, image: &[u8]) -> proto::ModelInferRequest {
    let k = proto::InferParameter { parameter_choice: Some(proto::infer_parameter::ParameterChoice::Int64Param(5)) };
    proto::ModelInferRequest {
        model_name: model.into(),
        inputs: vec![proto::model_infer_request::InferInputTensor {
            name: "image".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        outputs: vec![proto::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: [("classification".to_string(), k)].into(),
        }],
        raw_input_contents: vec![crate::server::oip::bytes_to_raw(&[image.to_vec()]).into()],
        ..Default::default()
    }
}

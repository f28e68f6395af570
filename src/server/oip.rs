//! The Open Inference Protocol (KServe v2) as edgeinfer speaks it, whatever the transport:
//! which models exist, their metadata, how a request's tensors become images or input tensors,
//! and how the engine's answers become output tensors. `http.rs` and `grpc.rs` only translate
//! their wire formats to and from the types here, so both front ends validate alike and enter
//! the engine by the same door as the binary protocol (`Engine::submit` / `Engine::submit_to`).
//!
//! Models: the adaptive ladder (`models.name`, default `edgeinfer`: the policy picks a rung per
//! image) and every rung under its own name (that rung only). Input `image`: `BYTES` `[N]`, each
//! element an encoded JPEG or PNG; a rung also takes an `FP32` tensor in its own input shape
//! under its input's name. Output `probabilities`: `FP32` `[N, classes]`, or with Triton's
//! classification extension `BYTES` `[N, K]` strings `"score:index:label"`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};

use super::open::{OpenConnections, Protocol};
use super::Limits;
use crate::control::Control;
use crate::engine::preprocess::ImageError;
use crate::engine::session::top_k;
use crate::engine::{Answer, Engine, Failure, Input as EngineInput};
use crate::models::{Layout, ModelSpec};
use crate::protocol::{Status, Timings};
use crate::telemetry::metrics::Scrape;
use crate::telemetry::{RequestRecord, Telemetry};

/// What `GET /v2` and `ServerMetadata` list: Triton's names for the extensions served.
pub const EXTENSIONS: &[&str] = &["classification", "binary_tensor_data", "schedule_policy", "model_configuration", "statistics"];
pub const IMAGE_INPUT: &str = "image";
pub const OUTPUT: &str = "probabilities";
/// Every model has one version; an empty version in a request means this one.
pub const VERSION: &str = "1";

/// Why a request failed; each transport maps the kind to its own status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    BadRequest,
    NotFound,
    Unauthorized,
    TooLarge,
    /// Admission control, shed past saturation, shutting down: try again later or elsewhere.
    Unavailable,
    /// The request was not received in time (`server.read_timeout_ms`).
    Timeout,
    Internal,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OipError {
    pub kind: Kind,
    pub message: String,
}

impl OipError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    pub fn bad(message: impl Into<String>) -> Self {
        Self::new(Kind::BadRequest, message)
    }

    /// The `status` label in `edgeinfer_requests_total`.
    pub fn label(&self) -> &'static str {
        match self.kind {
            Kind::BadRequest => "bad_request",
            Kind::NotFound => "not_found",
            Kind::Unauthorized => "unauthorized",
            Kind::TooLarge => "too_large",
            Kind::Unavailable => "overloaded",
            Kind::Timeout => "timeout",
            Kind::Internal => "internal",
        }
    }

    /// The binary protocol's nearest status, for the console and the summary.
    fn status(&self) -> Status {
        match self.kind {
            Kind::BadRequest | Kind::NotFound | Kind::Timeout => Status::BadRequest,
            Kind::Unauthorized => Status::Unauthorized,
            Kind::TooLarge => Status::TooLarge,
            Kind::Unavailable => Status::Overloaded,
            Kind::Internal => Status::Internal,
        }
    }
}

impl std::fmt::Display for OipError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A tensor's elements as the transport delivered them, typed by its declared datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Bytes(Vec<Bytes>),
    Fp32(Vec<f32>),
    /// A datatype edgeinfer never takes (INT32, FP16, …): refused by name, not parsed.
    Unsupported,
}

/// Raw tensor contents (Triton's binary section, gRPC's `raw_input_contents`) as typed data:
/// `BYTES` elements each behind a 4-byte little-endian length, `FP32` little-endian.
pub fn raw_to_data(name: &str, datatype: &str, raw: Bytes) -> Result<Data, OipError> {
    match datatype {
        "BYTES" => {
            let mut items = Vec::new();
            let mut at = 0;
            while at < raw.len() {
                let Some(len) = raw.get(at..at + 4) else {
                    return Err(OipError::bad(format!("input '{name}': raw BYTES data ends inside an element's 4-byte length")));
                };
                let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                let end = (at + 4).checked_add(len).filter(|e| *e <= raw.len()).ok_or_else(|| {
                    OipError::bad(format!("input '{name}': raw BYTES element declares {len} bytes, only {} remain", raw.len() - at - 4))
                })?;
                items.push(raw.slice(at + 4..end));
                at = end;
            }
            Ok(Data::Bytes(items))
        }
        "FP32" => {
            if !raw.len().is_multiple_of(4) {
                return Err(OipError::bad(format!(
                    "input '{name}': {} bytes of raw FP32 data is not a whole number of 4-byte values",
                    raw.len()
                )));
            }
            Ok(Data::Fp32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect()))
        }
        _ => Ok(Data::Unsupported),
    }
}

/// `BYTES` elements in raw form (4-byte little-endian length, then the bytes).
pub fn bytes_to_raw(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
    for i in items {
        out.extend_from_slice(&(i.len() as u32).to_le_bytes());
        out.extend_from_slice(i);
    }
    out
}

/// `FP32` elements in raw form (little-endian).
pub fn fp32_to_raw(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Data,
}

#[derive(Debug, Clone, Default)]
pub struct RequestedOutput {
    pub name: String,
    /// Triton's classification extension: the top K classes as strings instead of scores.
    pub classification: Option<usize>,
    /// HTTP only: return this output in the binary section (Triton's `binary_data`).
    pub binary: Option<bool>,
}

#[derive(Debug, Clone, Default)]
pub struct InferRequest {
    pub model: String,
    pub version: String,
    pub id: String,
    pub inputs: Vec<InputTensor>,
    pub outputs: Vec<RequestedOutput>,
    /// The schedule-policy parameter `timeout`, µs: this request's own latency bound.
    pub timeout_us: Option<f64>,
    /// When the client gives up (gRPC's `grpc-timeout`), from arrival: the bound is never later.
    pub deadline: Option<Duration>,
    /// HTTP only: outputs not listed, or listed without `binary_data`, go in the binary section.
    pub binary_output: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutData {
    Fp32(Vec<f32>),
    Bytes(Vec<Vec<u8>>),
}

impl OutData {
    pub fn datatype(&self) -> &'static str {
        match self {
            OutData::Fp32(_) => "FP32",
            OutData::Bytes(_) => "BYTES",
        }
    }
    /// The raw form (binary section / `raw_output_contents`).
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            OutData::Fp32(v) => fp32_to_raw(v),
            OutData::Bytes(v) => bytes_to_raw(v),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: OutData,
    pub binary: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Str(String),
    F64(f64),
    I64(i64),
}

#[derive(Debug, Clone)]
pub struct InferResponse {
    pub model: String,
    pub id: String,
    pub parameters: Vec<(&'static str, Param)>,
    pub outputs: Vec<OutputTensor>,
}

/// A tensor's metadata: `-1` is a dimension of any size.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

#[derive(Debug, Clone)]
pub struct ModelMeta {
    pub name: String,
    pub platform: String,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
}

/// Which model a request addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Ladder,
    Rung(usize),
}

/// Triton-shaped per-model statistics (`/v2/models/{m}/stats`), in nanoseconds.
#[derive(Default)]
struct ModelStats {
    success: AtomicU64,
    success_ns: AtomicU64,
    fail: AtomicU64,
    fail_ns: AtomicU64,
    queue_ns: AtomicU64,
    input_ns: AtomicU64,
    infer_ns: AtomicU64,
    /// Images run (a request of N images counts N).
    inferences: AtomicU64,
    last_ms: AtomicU64,
}

/// A front end's bound listening socket, before it serves (`http::run`, `grpc::run`).
pub struct Listener {
    pub(super) socket: tokio::net::TcpListener,
    pub(super) oip: Arc<Oip>,
}

impl Listener {
    /// `key` names the config key the address came from, for the error.
    pub fn bind(addr: std::net::SocketAddr, key: &str, oip: Arc<Oip>) -> anyhow::Result<Listener> {
        let socket = super::listen(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))?;
        Ok(Listener { socket, oip })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.socket.local_addr().expect("bound listener has an address")
    }

    /// The next connection, with Nagle off (answers are small and go out at once); `None` once
    /// `shutdown` is cancelled. A failed accept (e.g. out of file descriptors) is logged and
    /// retried after a pause rather than ending the front end.
    pub(super) async fn next(&self, shutdown: &tokio_util::sync::CancellationToken, what: &str) -> Option<tokio::net::TcpStream> {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return None,
                a = self.socket.accept() => a,
            };
            match accepted {
                Ok((s, _)) => {
                    let _ = s.set_nodelay(true);
                    return Some(s);
                }
                Err(e) => {
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Stops listening and waits for the connections `graceful` watches, bounded: a request
    /// still being received gets the read timeout, an answer being written the write timeout,
    /// and the engine answers everything it admitted.
    pub(super) async fn drain(self, graceful: hyper_util::server::graceful::GracefulShutdown, what: &str) {
        let limits = self.oip.limits.clone();
        drop(self.socket);
        let limit = limits.read_timeout + limits.write_timeout + Duration::from_secs(30);
        if tokio::time::timeout(limit, graceful.shutdown()).await.is_err() {
            tracing::warn!("{what}: connections still open after {limit:?} of shutdown; closing them");
        }
    }
}

/// What both OIP front ends share: the engine, the model table, the limits, the statistics.
pub struct Oip {
    pub engine: Arc<Engine>,
    pub telemetry: Arc<Telemetry>,
    pub control: Arc<Control>,
    pub limits: Limits,
    /// The node's open connections (all front ends, one cap).
    pub connections: Arc<OpenConnections>,
    /// Set when shutdown begins: readiness turns false, so orchestrators stop routing here.
    pub closing: std::sync::atomic::AtomicBool,
    name: String,
    timeout_range_ms: (f64, f64),
    /// Classes each rung returns: from its labels, else learnt from its first answer (0 unknown).
    classes: Vec<AtomicUsize>,
    /// Index 0: the ladder; 1 + i: rung i.
    stats: Vec<ModelStats>,
}

impl Oip {
    /// `name` is `models.name`; `timeout_range_ms` is `dispatch.timeout_min_ms`..`timeout_max_ms`.
    pub fn new(
        engine: Arc<Engine>,
        telemetry: Arc<Telemetry>,
        control: Arc<Control>,
        server: &super::config::ServerConfig,
        connections: Arc<OpenConnections>,
        name: &str,
        timeout_range_ms: (f64, f64),
    ) -> Oip {
        let classes = engine.ladder.iter().map(|m| AtomicUsize::new(m.labels.as_ref().map_or(0, Vec::len))).collect();
        let stats = (0..=engine.ladder.len()).map(|_| ModelStats::default()).collect();
        Oip {
            limits: Limits::from_config(server),
            connections,
            closing: Default::default(),
            name: name.to_string(),
            timeout_range_ms,
            classes,
            stats,
            engine,
            telemetry,
            control,
        }
    }

    /// The adaptive ladder's model name (`models.name`).
    pub fn ladder_name(&self) -> &str {
        &self.name
    }

    /// Every model served: the ladder first, then the rungs in ladder order.
    pub fn model_names(&self) -> Vec<String> {
        std::iter::once(self.name.clone()).chain(self.engine.ladder.iter().map(|m| m.name.clone())).collect()
    }

    /// Resolves a model name and version (empty or `1`).
    pub fn target(&self, name: &str, version: &str) -> Result<Target, OipError> {
        let t = if name == self.name {
            Target::Ladder
        } else if let Some(i) = self.engine.ladder.iter().position(|m| m.name == name) {
            Target::Rung(i)
        } else {
            let known = self.model_names().join(", ");
            return Err(OipError::new(Kind::NotFound, format!("unknown model '{name}'; served: {known}")));
        };
        if !version.is_empty() && version != VERSION {
            return Err(OipError::new(Kind::NotFound, format!("model '{name}' has no version '{version}'; its only version is {VERSION}")));
        }
        Ok(t)
    }

    fn target_name(&self, t: Target) -> &str {
        match t {
            Target::Ladder => &self.name,
            Target::Rung(i) => &self.engine.ladder[i].name,
        }
    }

    /// Checks a bearer credential (`Authorization: Bearer TOKEN`, or the same gRPC metadata)
    /// against `server.auth_token`, in constant time. No token configured: everything passes.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), OipError> {
        let given = authorization.and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        if crate::server::pipeline::token_matches(&self.limits.auth_token, given) {
            Ok(())
        } else {
            Err(OipError::new(Kind::Unauthorized, "missing or wrong access token (send `Authorization: Bearer TOKEN`)"))
        }
    }

    /// Ready to serve: false once shutdown began (the health endpoints say so to orchestrators).
    pub fn ready(&self) -> bool {
        !self.closing.load(Ordering::Relaxed)
    }

    fn classes(&self, rung: usize) -> i64 {
        match self.classes[rung].load(Ordering::Relaxed) {
            0 => -1,
            n => n as i64,
        }
    }

    pub fn metadata(&self, t: Target) -> ModelMeta {
        let classes = match t {
            Target::Ladder => (0..self.engine.ladder.len()).map(|i| self.classes(i)).max().unwrap_or(-1),
            Target::Rung(i) => self.classes(i),
        };
        let image = TensorMeta { name: IMAGE_INPUT.into(), datatype: "BYTES", shape: vec![-1] };
        let mut inputs = vec![image];
        let platform = match t {
            Target::Ladder => "edgeinfer_adaptive".to_string(),
            Target::Rung(i) => {
                let spec = &self.engine.ladder[i];
                inputs.push(TensorMeta { name: spec.input.name.clone(), datatype: "FP32", shape: tensor_shape(spec, -1) });
                format!("{}_onnx", self.engine.backend.name.as_str())
            }
        };
        ModelMeta {
            name: self.target_name(t).to_string(),
            platform,
            inputs,
            outputs: vec![TensorMeta { name: OUTPUT.into(), datatype: "FP32", shape: vec![-1, classes] }],
        }
    }

    /// The model's configuration in Triton's shape (`GET /v2/models/{m}/config`), so Triton's
    /// tools accept the server. `max_batch_size` 0: shapes include the batch dimension.
    pub fn config_json(&self, t: Target) -> Value {
        let meta = self.metadata(t);
        let ty = |d: &str| if d == "BYTES" { "TYPE_STRING" } else { "TYPE_FP32" };
        let tensors =
            |ts: &[TensorMeta]| ts.iter().map(|m| json!({"name": m.name, "data_type": ty(m.datatype), "dims": m.shape})).collect::<Vec<_>>();
        let mut parameters = serde_json::Map::new();
        match t {
            Target::Ladder => {
                let rungs: Vec<&str> = self.engine.ladder.iter().map(|m| m.name.as_str()).collect();
                parameters.insert("ladder".into(), json!({"string_value": rungs.join(",")}));
                parameters.insert("policy".into(), json!({"string_value": self.engine.policy_name()}));
                parameters.insert("latency_bound_ms".into(), json!({"string_value": self.engine.dispatcher.bound_ms().to_string()}));
            }
            Target::Rung(i) => {
                parameters.insert("accuracy".into(), json!({"string_value": self.engine.ladder[i].accuracy.to_string()}));
            }
        }
        json!({
            "name": meta.name,
            "platform": meta.platform,
            "backend": self.engine.backend.name.as_str(),
            "version_policy": {"latest": {"num_versions": 1}},
            "max_batch_size": 0,
            "input": tensors(&meta.inputs),
            "output": tensors(&meta.outputs),
            "parameters": parameters,
        })
    }

    /// Triton-shaped statistics of one model, or of all (`None`).
    pub fn stats_json(&self, t: Option<Target>) -> Value {
        let targets: Vec<Target> = match t {
            Some(t) => vec![t],
            None => std::iter::once(Target::Ladder).chain((0..self.engine.ladder.len()).map(Target::Rung)).collect(),
        };
        let stats: Vec<Value> = targets
            .into_iter()
            .map(|t| {
                let s = &self.stats[stat_index(t)];
                let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let ok = get(&s.success);
                let pair = |count: u64, ns: u64| json!({"count": count, "ns": ns});
                json!({
                    "name": self.target_name(t),
                    "version": VERSION,
                    "last_inference": get(&s.last_ms),
                    "inference_count": get(&s.inferences),
                    "execution_count": get(&s.inferences),
                    "inference_stats": {
                        "success": pair(ok, get(&s.success_ns)),
                        "fail": pair(get(&s.fail), get(&s.fail_ns)),
                        "queue": pair(ok, get(&s.queue_ns)),
                        "compute_input": pair(ok, get(&s.input_ns)),
                        "compute_infer": pair(ok, get(&s.infer_ns)),
                        "compute_output": pair(ok, 0),
                        "cache_hit": pair(0, 0),
                        "cache_miss": pair(0, 0),
                    },
                    "batch_stats": [],
                })
            })
            .collect();
        json!({ "model_stats": stats })
    }

    /// What `/metrics` shows, read from the running node now.
    pub fn scrape(&self) -> String {
        let e = &self.engine;
        let queues = e.dispatcher.snapshot().iter().zip(e.ladder.iter()).map(|(q, m)| (m.name.clone(), q.depth, q.ewma_us)).collect();
        let fleet = self.control.fleet().map(|f| {
            let s = f.snapshot();
            (s.clients.len(), s.resolutions.iter().copied().zip(s.per_resolution.iter().copied()).collect())
        });
        let connections = Protocol::ALL.iter().map(|&p| (p.name(), self.connections.open(p))).collect();
        let s = Scrape { queues, bound_ms: e.dispatcher.bound_ms(), in_system: e.in_system(), backlog: e.backlog(), connections, fleet };
        self.telemetry.metrics.render(&s)
    }

    /// Serves one inference request and books it (telemetry, `/metrics`, model statistics).
    pub async fn infer(&self, req: InferRequest, arrival: Instant) -> Result<InferResponse, OipError> {
        let target = self.target(&req.model, &req.version);
        let bound = self.bound(req.timeout_us, req.deadline);
        let result = match &target {
            Ok(t) => self.run(*t, req, arrival, bound).await,
            Err(e) => Err(e.clone()),
        };
        let target = target.ok();
        let bound_ms = bound.map_or_else(|| self.engine.dispatcher.bound_ms(), |b| b.as_secs_f64() * 1e3);
        match &result {
            Ok((_, booked)) => {
                let t = target.expect("served, so resolved");
                let record = RequestRecord {
                    status: Status::Ok,
                    model: booked.first_rung,
                    timings: booked.timings(arrival),
                    estimate_us: booked.estimate_us,
                };
                self.telemetry.record_named(self.target_name(t), "ok", &record, bound_ms);
                self.book_stats(t, true, arrival, Some(booked));
            }
            Err(e) => {
                let name = target.map_or("unknown", |t| self.target_name(t));
                self.record_failure_as(name, e, arrival, bound_ms);
                if let Some(t) = target {
                    self.book_stats(t, false, arrival, None);
                }
            }
        }
        result.map(|(r, _)| r)
    }

    /// Books a request that failed before it could be served (bad token, body over the cap,
    /// malformed framing): `model` is the name it addressed, when the transport knows it.
    pub fn record_failure(&self, model: Option<&str>, e: &OipError, arrival: Instant) {
        let name = match model.map(|m| self.target(m, "")) {
            Some(Ok(t)) => self.target_name(t),
            _ => "unknown",
        };
        self.record_failure_as(name, e, arrival, self.engine.dispatcher.bound_ms());
    }

    fn record_failure_as(&self, name: &str, e: &OipError, arrival: Instant, bound_ms: f64) {
        let timings = Timings { total_us: clamp_u32(arrival.elapsed().as_micros() as u64), ..Default::default() };
        let record = RequestRecord { status: e.status(), model: None, timings, estimate_us: None };
        self.telemetry.record_named(name, e.label(), &record, bound_ms);
    }

    fn book_stats(&self, t: Target, ok: bool, arrival: Instant, booked: Option<&Booked>) {
        let s = &self.stats[stat_index(t)];
        let ns = arrival.elapsed().as_nanos() as u64;
        if ok {
            s.success.fetch_add(1, Ordering::Relaxed);
            s.success_ns.fetch_add(ns, Ordering::Relaxed);
        } else {
            s.fail.fetch_add(1, Ordering::Relaxed);
            s.fail_ns.fetch_add(ns, Ordering::Relaxed);
        }
        if let Some(b) = booked {
            s.queue_ns.fetch_add(b.queue_us * 1000, Ordering::Relaxed);
            s.input_ns.fetch_add(b.preprocess_us * 1000, Ordering::Relaxed);
            s.infer_ns.fetch_add(b.inference_us * 1000, Ordering::Relaxed);
            s.inferences.fetch_add(b.images as u64, Ordering::Relaxed);
        }
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        s.last_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The request's own bound: its `timeout` (µs), or T without one, tightened to the client's
    /// `deadline` when that comes first — a client that gives up after 30 ms is better served by
    /// a cheaper model within 30 ms than by the best one after it left. A deadline only
    /// tightens: clients set generous ones (seconds) that must not loosen T. Clamped to the
    /// configured range; `None` is T.
    fn bound(&self, timeout_us: Option<f64>, deadline: Option<Duration>) -> Option<Duration> {
        let (lo, hi) = self.timeout_range_ms;
        let clamp = |ms: f64| Duration::from_secs_f64(ms.clamp(lo, hi) / 1000.0);
        let own = timeout_us.filter(|t| t.is_finite()).map(|us| clamp(us / 1000.0));
        let base = own.unwrap_or_else(|| Duration::from_secs_f64(self.engine.dispatcher.bound_ms() / 1000.0));
        match deadline {
            Some(d) if d < base => Some(clamp(d.as_secs_f64() * 1000.0)),
            _ => own,
        }
    }

    async fn run(&self, t: Target, req: InferRequest, arrival: Instant, bound: Option<Duration>) -> Result<(InferResponse, Booked), OipError> {
        let model_name = self.target_name(t).to_string();
        let items = self.inputs(t, &model_name, req.inputs)?;
        let outputs = requested_outputs(&model_name, req.outputs)?;
        let n = items.len();
        // Every image enters by the same door and is counted there; a batch is N requests.
        // Returning early drops the remaining receivers, and the executor skips their images.
        let mut pending = Vec::with_capacity(n);
        for item in items {
            let admitted = match t {
                Target::Ladder => match item {
                    EngineInput::Image(b) => self.engine.submit(b, arrival, bound),
                    EngineInput::Tensor(_) => return Err(OipError::bad("the adaptive ladder takes images only")),
                },
                Target::Rung(i) => self.engine.submit_to(i, item, arrival, bound),
            };
            pending.push(admitted.map_err(|r| OipError::new(Kind::Unavailable, r.to_string()))?);
        }
        let mut answers = Vec::with_capacity(n);
        for rx in pending {
            answers.push(rx.await.map_err(|_| OipError::new(Kind::Internal, "the executor stopped before answering"))?);
        }
        for (i, a) in answers.iter().enumerate() {
            if let Err(f) = &a.result {
                return Err(failure(f, i, n));
            }
        }
        let booked = Booked::of(&answers);
        let resp = self.respond(&model_name, req.id, &answers, &outputs, req.binary_output)?;
        Ok((resp, booked))
    }

    /// The engine inputs, one per image, after checking names, datatypes and shapes.
    fn inputs(&self, t: Target, model: &str, inputs: Vec<InputTensor>) -> Result<Vec<EngineInput>, OipError> {
        let tensor_input = match t {
            Target::Rung(i) => Some(&self.engine.ladder[i]),
            Target::Ladder => None,
        };
        let expected = match tensor_input {
            Some(spec) => format!("'{IMAGE_INPUT}' (BYTES [N], encoded JPEG/PNG) or '{}' (FP32 {:?})", spec.input.name, tensor_shape(spec, -1)),
            None => format!("'{IMAGE_INPUT}' (BYTES [N], encoded JPEG/PNG)"),
        };
        let mut inputs = inputs.into_iter();
        let Some(input) = inputs.next() else {
            return Err(OipError::bad(format!("missing input: model '{model}' takes one input, {expected}")));
        };
        if let Some(extra) = inputs.next() {
            return Err(OipError::bad(format!("unexpected input '{}': model '{model}' takes one input, {expected}", extra.name)));
        }
        let is_tensor_name = tensor_input.is_some_and(|s| s.input.name == input.name);
        // A rung whose own input is also called "image" is told apart by datatype.
        let as_tensor = is_tensor_name && (input.name != IMAGE_INPUT || input.datatype == "FP32");
        if !as_tensor && input.name != IMAGE_INPUT {
            return Err(OipError::bad(format!("missing input: model '{model}' takes {expected}, not '{}'", input.name)));
        }
        if as_tensor {
            let spec = tensor_input.expect("rung");
            if input.datatype != "FP32" {
                return Err(OipError::bad(format!("input '{}' of model '{model}' must be FP32, not {}", input.name, input.datatype)));
            }
            let per_image: usize = tensor_shape(spec, 1).iter().product::<i64>() as usize;
            let want = tensor_shape(spec, -1);
            let shape_ok = input.shape.len() == want.len() && input.shape[0] >= 1 && input.shape[1..] == want[1..];
            if !shape_ok {
                return Err(OipError::bad(format!(
                    "input '{}' of model '{model}' has shape {:?}; it takes {want:?} (N images)",
                    input.name, input.shape
                )));
            }
            let n = input.shape[0] as usize;
            let Data::Fp32(values) = input.data else {
                return Err(OipError::bad(format!("input '{}' declares FP32 but its data is not FP32", input.name)));
            };
            if values.len() != n * per_image {
                return Err(OipError::bad(format!(
                    "input '{}' has shape {:?} ({} values) but {} values of data",
                    input.name,
                    input.shape,
                    n * per_image,
                    values.len()
                )));
            }
            return Ok(values.chunks_exact(per_image).map(|c| EngineInput::Tensor(c.to_vec())).collect());
        }
        if input.datatype != "BYTES" {
            return Err(OipError::bad(format!(
                "input '{IMAGE_INPUT}' of model '{model}' must be BYTES (encoded JPEG or PNG), not {}",
                input.datatype
            )));
        }
        if input.shape.len() != 1 || input.shape[0] < 1 {
            return Err(OipError::bad(format!(
                "input '{IMAGE_INPUT}' has shape {:?}; it takes [N], one encoded image per element",
                input.shape
            )));
        }
        let Data::Bytes(images) = input.data else {
            return Err(OipError::bad(format!("input '{IMAGE_INPUT}' declares BYTES but its data is not BYTES")));
        };
        if images.len() != input.shape[0] as usize {
            return Err(OipError::bad(format!("input '{IMAGE_INPUT}' has shape {:?} but {} element(s) of data", input.shape, images.len())));
        }
        Ok(images.into_iter().map(EngineInput::Image).collect())
    }

    fn respond(
        &self,
        model: &str,
        id: String,
        answers: &[Answer],
        outputs: &[RequestedOutput],
        binary_default: bool,
    ) -> Result<InferResponse, OipError> {
        let n = answers.len();
        let rungs: Vec<usize> = answers.iter().map(|a| a.model.expect("an ok answer names its rung")).collect();
        let classes = answers[0].scores.len();
        if classes == 0 || answers.iter().any(|a| a.scores.len() != classes) {
            return Err(OipError::new(Kind::Internal, "the models returned score vectors of different lengths"));
        }
        for r in &rungs {
            self.classes[*r].store(classes, Ordering::Relaxed);
        }
        let out = outputs
            .iter()
            .map(|o| {
                let binary = o.binary.unwrap_or(binary_default);
                match o.classification {
                    Some(k) => {
                        let k = k.min(classes);
                        let data = answers
                            .iter()
                            .zip(&rungs)
                            .flat_map(|(a, r)| {
                                let spec = &self.engine.ladder[*r];
                                top_k(&a.scores, k)
                                    .into_iter()
                                    .map(move |(i, p)| format!("{p:.6}:{i}:{}", spec.label(i).unwrap_or("")).into_bytes())
                            })
                            .collect();
                        OutputTensor { name: o.name.clone(), shape: vec![n as i64, k as i64], data: OutData::Bytes(data), binary }
                    }
                    None => {
                        let data = answers.iter().flat_map(|a| a.scores.iter().copied()).collect();
                        OutputTensor { name: o.name.clone(), shape: vec![n as i64, classes as i64], data: OutData::Fp32(data), binary }
                    }
                }
            })
            .collect();
        let names: Vec<&str> = rungs.iter().map(|r| self.engine.ladder[*r].name.as_str()).collect();
        let accuracy = rungs.iter().map(|r| self.engine.ladder[*r].accuracy as f64).sum::<f64>() / n as f64;
        let max = |f: fn(&Answer) -> u64| answers.iter().map(f).max().unwrap_or(0) as i64;
        let parameters = vec![
            ("model", Param::Str(names.join(","))),
            ("accuracy", Param::F64((accuracy * 100.0).round() / 100.0)),
            ("queue_us", Param::I64(max(|a| a.queue_us))),
            ("preprocess_us", Param::I64(max(|a| a.preprocess_us))),
            ("inference_us", Param::I64(max(|a| a.inference_us))),
        ];
        Ok(InferResponse { model: model.to_string(), id, parameters, outputs: out })
    }
}

/// What a served request cost, for telemetry and statistics (a batch: its slowest image).
struct Booked {
    first_rung: Option<usize>,
    queue_us: u64,
    preprocess_us: u64,
    inference_us: u64,
    estimate_us: Option<f64>,
    images: usize,
}

impl Booked {
    fn of(answers: &[Answer]) -> Booked {
        let max = |f: fn(&Answer) -> u64| answers.iter().map(f).max().unwrap_or(0);
        Booked {
            first_rung: answers.first().and_then(|a| a.model),
            queue_us: max(|a| a.queue_us),
            preprocess_us: max(|a| a.preprocess_us),
            inference_us: max(|a| a.inference_us),
            estimate_us: answers.first().and_then(|a| a.estimate_us),
            images: answers.len(),
        }
    }

    fn timings(&self, arrival: Instant) -> Timings {
        Timings {
            queue_us: clamp_u32(self.queue_us),
            preprocess_us: clamp_u32(self.preprocess_us),
            inference_us: clamp_u32(self.inference_us),
            total_us: clamp_u32(arrival.elapsed().as_micros() as u64),
        }
    }
}

fn stat_index(t: Target) -> usize {
    match t {
        Target::Ladder => 0,
        Target::Rung(i) => 1 + i,
    }
}

fn clamp_u32(v: u64) -> u32 {
    v.min(u32::MAX as u64) as u32
}

/// A rung's input tensor shape with batch dimension `batch`, per its layout.
pub fn tensor_shape(spec: &ModelSpec, batch: i64) -> Vec<i64> {
    let s = spec.input.size as i64;
    match spec.input.layout {
        Layout::Nchw => vec![batch, 3, s, s],
        Layout::Nhwc => vec![batch, s, s, 3],
    }
}

/// The outputs to return: those requested (each must be `probabilities`), else all of them.
fn requested_outputs(model: &str, outputs: Vec<RequestedOutput>) -> Result<Vec<RequestedOutput>, OipError> {
    if outputs.is_empty() {
        return Ok(vec![RequestedOutput { name: OUTPUT.into(), ..Default::default() }]);
    }
    for o in &outputs {
        if o.name != OUTPUT {
            return Err(OipError::bad(format!("unknown output '{}': model '{model}' has one output, '{OUTPUT}'", o.name)));
        }
        if o.classification == Some(0) {
            return Err(OipError::bad(format!("output '{}': classification must be at least 1", o.name)));
        }
    }
    Ok(outputs)
}

/// The error for a failed image, naming which one in a batch.
fn failure(f: &Failure, i: usize, n: usize) -> OipError {
    let which = if n > 1 { format!("input '{IMAGE_INPUT}' element {i}: ") } else { format!("input '{IMAGE_INPUT}': ") };
    match f {
        Failure::Image(ImageError::TooLarge { .. }) => OipError::new(Kind::TooLarge, format!("{which}{f}")),
        Failure::Image(_) => OipError::bad(format!("{which}{f}")),
        Failure::Refused(_) | Failure::Shed => OipError::new(Kind::Unavailable, f.to_string()),
        Failure::Inference(_) => OipError::new(Kind::Internal, f.to_string()),
    }
}

/// A parameter value as a number of µs (the `timeout` parameter); JSON and gRPC clients send
/// it as an integer, some as a float or a numeric string.
pub fn timeout_from_json(v: &Value) -> Result<f64, OipError> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    n.filter(|x| x.is_finite() && *x >= 0.0)
        .ok_or_else(|| OipError::bad(format!("parameter 'timeout' must be a non-negative number of microseconds, not {v}")))
}

/// The `classification` parameter of a requested output.
pub fn classification_from_json(v: &Value) -> Result<usize, OipError> {
    v.as_u64().map(|k| k as usize).ok_or_else(|| OipError::bad(format!("parameter 'classification' must be a positive integer, not {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_and_truncation_is_named() {
        let raw = bytes_to_raw(&[b"abc".to_vec(), Vec::new(), b"z".to_vec()]);
        assert_eq!(
            raw_to_data("image", "BYTES", Bytes::from(raw.clone())).unwrap(),
            Data::Bytes(vec![Bytes::from_static(b"abc"), Bytes::new(), Bytes::from_static(b"z")])
        );
        let cut = raw_to_data("image", "BYTES", Bytes::from(raw[..5].to_vec())).unwrap_err();
        assert!(cut.message.contains("declares 3 bytes, only 1 remain"), "{}", cut.message);
        let cut = raw_to_data("image", "BYTES", Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(cut.message.contains("4-byte length"), "{}", cut.message);
    }

    #[test]
    fn raw_fp32_round_trip() {
        let v = [1.5f32, -2.0, 0.0];
        assert_eq!(raw_to_data("x", "FP32", Bytes::from(fp32_to_raw(&v))).unwrap(), Data::Fp32(v.to_vec()));
        assert!(raw_to_data("x", "FP32", Bytes::from_static(&[0, 0, 0])).is_err());
        assert_eq!(raw_to_data("x", "INT8", Bytes::new()).unwrap(), Data::Unsupported);
    }

    #[test]
    fn parameters_parse_or_say_why_not() {
        assert_eq!(timeout_from_json(&json!(5000)).unwrap(), 5000.0);
        assert_eq!(timeout_from_json(&json!("250")).unwrap(), 250.0);
        assert!(timeout_from_json(&json!(-1)).is_err());
        assert!(timeout_from_json(&json!(true)).unwrap_err().message.contains("timeout"));
        assert_eq!(classification_from_json(&json!(3)).unwrap(), 3);
        assert!(classification_from_json(&json!("x")).is_err());
    }

    #[test]
    fn outputs_default_to_probabilities_and_unknown_ones_are_named() {
        assert_eq!(requested_outputs("m", vec![]).unwrap()[0].name, OUTPUT);
        let e = requested_outputs("m", vec![RequestedOutput { name: "logits".into(), ..Default::default() }]).unwrap_err();
        assert!(e.message.contains("unknown output 'logits'"), "{}", e.message);
    }
}

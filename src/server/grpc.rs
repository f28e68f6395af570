//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (proto/
//! grpc_predict_v2.proto) on tonic's generated service, served by hyper's HTTP/2 connections
//! from our own accept loop (as `http.rs` does for HTTP/1), so every limit is ours to apply and
//! to phrase: the token in the `authorization` metadata (`Bearer TOKEN`); `server.max_frame_bytes`
//! as the largest request message, checked on its 5-byte length prefix before any of it is
//! buffered; `server.read_timeout_ms` from a call's headers to the end of its request;
//! `server.max_connections`, where one more connection is still answered with a status that names
//! the key; the idle and write timeouts (`guarded.rs`). Messages are translated to and from
//! `oip.rs`'s types, which do the validation and enter the engine. Shutdown stops accepting and
//! lets calls in flight finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body_util::Empty;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tonic::codegen::Service;
use tonic::{Code, Request, Response, Status};

use super::guarded::Guarded;
use super::oip::{self, Data, InferRequest, InputTensor, Kind, Listener, Oip, OipError, OutData, Param, RequestedOutput, Target};
use super::open::Protocol;

/// The generated messages, server and client (the client serves tests and `bench frontends`).
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_response::InferOutputTensor;
use proto::*;

/// The path of the one call that is an inference request (counted in the metrics when refused).
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";

/// HTTP/2 settings for every connection, served or refused.
fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    // No `date` header: gRPC clients do not read it, and formatting it costs every answer.
    b.timer(TokioTimer::new()).auto_date_header(false);
    b
}

/// Serves until `shutdown`, then stops accepting and waits for the calls in flight.
pub async fn run(l: Listener, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let oip = l.oip.clone();
    let limits = oip.limits.clone();
    // tonic's own cap stays as a backstop one prefix longer than ours: `Limited` refuses an
    // oversize message first, with a status that names the config key.
    let service = GrpcInferenceServiceServer::new(Grpc { oip: oip.clone() })
        .max_decoding_message_size(limits.max_frame_bytes.saturating_add(5))
        .max_encoding_message_size(usize::MAX);
    let builder = h2_builder();
    while let Some(socket) = l.next(&shutdown, "grpc").await {
        let Some(place) = oip.connections.admit(Protocol::Grpc) else {
            let (oip, builder) = (oip.clone(), builder.clone());
            if let Some(answer) = oip.connections.clone().refusal(async move { refuse(socket, &oip, &builder).await }) {
                tokio::spawn(answer);
            }
            continue;
        };
        let io = Guarded::new(socket, limits.idle_timeout, limits.write_timeout, Some(place)).http2_read_limit(limits.read_timeout);
        let (service, oip) = (service.clone(), oip.clone());
        let hyper_service = service_fn(move |req: http::Request<Incoming>| {
            let mut service = service.clone();
            let counted = (req.uri().path() == MODEL_INFER).then(|| (oip.clone(), Instant::now()));
            let req = req.map(|body| Limited::new(body, &oip.limits, counted));
            service.call(req)
        });
        let watched = graceful.watch(builder.serve_connection(TokioIo::new(io), hyper_service));
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!("grpc connection ended: {e}");
            }
        });
    }
    l.drain(graceful, "grpc").await;
}

/// One connection over `server.max_connections`. A gRPC client only reads a status as the
/// answer to a call, so the connection is accepted: the HTTP/2 handshake completes, every
/// call it sends is answered `RESOURCE_EXHAUSTED` naming the key, and after the first one the
/// server sends GOAWAY (the calls already sent are still answered) and closes. A client that
/// sends nothing within the read timeout is closed without an answer.
async fn refuse(socket: TcpStream, oip: &Oip, builder: &http2::Builder<TokioExecutor>) {
    let limits = &oip.limits;
    let message = format!("too many connections (server.max_connections = {})", limits.max_connections);
    let answered = Arc::new(Notify::new());
    let signal = answered.clone();
    let service = service_fn(move |_req: http::Request<Incoming>| {
        signal.notify_one();
        std::future::ready(Ok::<_, Infallible>(Status::resource_exhausted(message.clone()).into_http::<Empty<Bytes>>()))
    });
    let io = Guarded::new(socket, limits.idle_timeout, limits.write_timeout, None);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = answered.notified() => conn.as_mut().graceful_shutdown(),
        _ = tokio::time::sleep(limits.read_timeout) => return,
    }
    let _ = tokio::time::timeout(limits.write_timeout, conn).await;
}

/// A call's request body under the front end's limits, as tonic reads it. The whole request
/// (all its messages and the end of the stream) must arrive within `server.read_timeout_ms` of
/// the call's headers, or the call fails `DEADLINE_EXCEEDED` saying so — the limit HTTP puts on
/// a body, so a client that sends part of a message and stalls holds nothing for long. Each
/// message's 5-byte prefix is read as it passes: one longer than `server.max_frame_bytes` fails
/// the call `RESOURCE_EXHAUSTED` before a byte of it is buffered. (gRPC's own implementations
/// answer an oversize message with RESOURCE_EXHAUSTED, "received message larger than max", and
/// the protocol maps `Kind::TooLarge` to it; tonic's own check says OUT_OF_RANGE and names no key.)
/// A refused inference call is counted in the metrics, under `unknown`: its model is inside the
/// message that was not read.
struct Limited {
    inner: Incoming,
    cap: usize,
    read_timeout: Duration,
    deadline: Instant,
    timer: Pin<Box<Sleep>>,
    /// The prefix of the message being started, and how many of its bytes are still to come.
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: usize,
    /// Set once the body has ended or failed: nothing more is read.
    done: bool,
    counted: Option<(Arc<Oip>, Instant)>,
}

impl Limited {
    fn new(inner: Incoming, limits: &super::Limits, counted: Option<(Arc<Oip>, Instant)>) -> Limited {
        let deadline = Instant::now() + limits.read_timeout;
        Limited {
            inner,
            cap: limits.max_frame_bytes,
            read_timeout: limits.read_timeout,
            deadline,
            timer: Box::pin(tokio::time::sleep_until(deadline.into())),
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
            done: false,
            counted,
        }
    }

    /// Follows the message boundaries through one chunk of the body.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), OipError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                self.remaining -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes(self.prefix[1..].try_into().expect("4 bytes")) as usize;
                if len > self.cap {
                    return Err(OipError::new(
                        Kind::TooLarge,
                        format!("request message of {len} bytes exceeds the {}-byte limit (server.max_frame_bytes)", self.cap),
                    ));
                }
                self.remaining = len;
            }
        }
        Ok(())
    }

    fn fail(&mut self, e: OipError) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        if let Some((oip, arrival)) = self.counted.take() {
            oip.record_failure(None, &e, arrival);
        }
        Poll::Ready(Some(Err(status(&e))))
    }

    fn timed_out(&self) -> OipError {
        OipError::new(Kind::Timeout, format!("request not received within {} ms (server.read_timeout_ms)", self.read_timeout.as_millis()))
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // A client trickling bytes is cut off at the deadline as one that stalls.
                if Instant::now() >= self.deadline {
                    let e = self.timed_out();
                    return self.fail(e);
                }
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = self.scan(data.chunk()) {
                        return self.fail(e);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(Status::from_error(Box::new(e)))))
            }
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let e = self.timed_out();
                    self.fail(e)
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC client on one HTTP/2 connection and nothing else, for the tests and `bench
/// frontends`: tonic's `Channel` puts a buffer task (and its reconnect and balancing logic)
/// between the caller and the connection, one more hop per call that a gRPC client such as
/// `tritonclient.grpc` (gRPC's C core) does not have and that the bench would otherwise book to
/// the server. The HTTP bench client is likewise one bare hyper connection.
#[derive(Clone)]
pub struct Connection(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl From<hyper::client::conn::http2::SendRequest<tonic::body::Body>> for Connection {
    fn from(send: hyper::client::conn::http2::SendRequest<tonic::body::Body>) -> Connection {
        Connection(send)
    }
}

impl Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// Connects a [`Connection`] client to `addr` (TCP_NODELAY, as the server's side is).
pub async fn connect(addr: SocketAddr) -> anyhow::Result<GrpcInferenceServiceClient<Connection>> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(TokioExecutor::new()).timer(TokioTimer::new()).handshake(TokioIo::new(socket)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("grpc client connection ended: {e}");
        }
    });
    let origin: http::Uri = format!("http://{addr}").parse()?;
    Ok(GrpcInferenceServiceClient::with_origin(Connection(send), origin))
}

struct Grpc {
    oip: Arc<Oip>,
}

/// The client's deadline from the `grpc-timeout` header (gRPC over HTTP/2: 1 to 8 digits and a
/// unit, `H` `M` `S` `m` `u` `n`); `None` without one.
pub fn client_deadline(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, OipError> {
    let Some(v) = metadata.get("grpc-timeout") else { return Ok(None) };
    let text = v.to_str().unwrap_or("");
    parse_grpc_timeout(text)
        .map(Some)
        .ok_or_else(|| OipError::bad(format!("malformed grpc-timeout header '{text}': expected 1 to 8 digits and a unit (H, M, S, m, u, n)")))
}

fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status that fits each kind of failure.
pub fn status(e: &OipError) -> Status {
    let code = match e.kind {
        Kind::BadRequest => Code::InvalidArgument,
        Kind::NotFound => Code::NotFound,
        Kind::Unauthorized => Code::Unauthenticated,
        Kind::TooLarge => Code::ResourceExhausted,
        Kind::Unavailable => Code::Unavailable,
        Kind::Timeout => Code::DeadlineExceeded,
        Kind::Internal => Code::Internal,
    };
    Status::new(code, e.message.clone())
}

impl Grpc {
    fn authorize<T>(&self, r: &Request<T>) -> Result<(), OipError> {
        self.oip.authorize(r.metadata().get("authorization").and_then(|v| v.to_str().ok()))
    }

    /// Token and model checks shared by the metadata calls.
    fn target<T>(&self, r: &Request<T>, name: &str, version: &str) -> Result<Target, Status> {
        self.authorize(r).map_err(|e| status(&e))?;
        self.oip.target(name, version).map_err(|e| status(&e))
    }
}

/// A parameter as JSON, so both transports share one parser per parameter.
fn param_value(p: &InferParameter) -> Value {
    match &p.parameter_choice {
        Some(ParameterChoice::BoolParam(b)) => json!(b),
        Some(ParameterChoice::Int64Param(i)) => json!(i),
        Some(ParameterChoice::StringParam(s)) => json!(s),
        Some(ParameterChoice::DoubleParam(d)) => json!(d),
        Some(ParameterChoice::Uint64Param(u)) => json!(u),
        None => Value::Null,
    }
}

fn parameter(p: &Param) -> InferParameter {
    let choice = match p {
        Param::Str(s) => ParameterChoice::StringParam(s.clone()),
        Param::F64(x) => ParameterChoice::DoubleParam(*x),
        Param::I64(x) => ParameterChoice::Int64Param(*x),
    };
    InferParameter { parameter_choice: Some(choice) }
}

/// A `ModelInferRequest` as the protocol's request: each input's data from
/// `raw_input_contents` (one entry per input, in order) or from its typed `contents`.
pub fn to_request(r: ModelInferRequest) -> Result<InferRequest, OipError> {
    let raw = r.raw_input_contents;
    if !raw.is_empty() && raw.len() != r.inputs.len() {
        return Err(OipError::bad(format!("raw_input_contents has {} entries for {} inputs", raw.len(), r.inputs.len())));
    }
    let mut raw = raw.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for i in r.inputs {
        let data = match raw.next() {
            Some(bytes) => oip::raw_to_data(&i.name, &i.datatype, bytes)?,
            None => {
                let c = i.contents.unwrap_or_default();
                match i.datatype.as_str() {
                    "BYTES" if !c.bytes_contents.is_empty() => Data::Bytes(c.bytes_contents),
                    "FP32" if !c.fp32_contents.is_empty() => Data::Fp32(c.fp32_contents),
                    "BYTES" | "FP32" => return Err(OipError::bad(format!("input '{}' has no data (contents or raw_input_contents)", i.name))),
                    _ => Data::Unsupported,
                }
            }
        };
        inputs.push(InputTensor { name: i.name, datatype: i.datatype, shape: i.shape, data });
    }
    let timeout_us = r.parameters.get("timeout").map(|p| oip::timeout_from_json(&param_value(p))).transpose()?;
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            let classification = o.parameters.get("classification").map(|p| oip::classification_from_json(&param_value(p))).transpose()?;
            Ok(RequestedOutput { name: o.name, classification, binary: None })
        })
        .collect::<Result<_, OipError>>()?;
    Ok(InferRequest {
        model: r.model_name,
        version: r.model_version,
        id: r.id,
        inputs,
        outputs,
        timeout_us,
        deadline: None,
        binary_output: false,
    })
}

/// The protocol's response as a `ModelInferResponse`, every output in `raw_output_contents`
/// (what Triton sends and its clients read).
pub fn to_response(r: oip::InferResponse) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(r.outputs.len());
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            raw.push(Bytes::from(o.data.to_raw()));
            InferOutputTensor {
                name: o.name,
                datatype: o.data.datatype().into(),
                shape: o.shape,
                parameters: Default::default(),
                contents: None,
            }
        })
        .collect();
    ModelInferResponse {
        model_name: r.model,
        model_version: oip::VERSION.into(),
        id: r.id,
        parameters: r.parameters.iter().map(|(k, v)| (k.to_string(), parameter(v))).collect(),
        outputs,
        raw_output_contents: raw,
    }
}

/// Typed output elements from a response (tests and the bench read answers with it).
pub fn output_data(r: &ModelInferResponse, index: usize) -> Option<OutData> {
    let o = r.outputs.get(index)?;
    let raw = r.raw_output_contents.get(index)?.clone();
    match oip::raw_to_data(&o.name, &o.datatype, raw).ok()? {
        Data::Fp32(v) => Some(OutData::Fp32(v)),
        Data::Bytes(v) => Some(OutData::Bytes(v.into_iter().map(|b| b.to_vec()).collect())),
        Data::Unsupported => None,
    }
}

#[tonic::async_trait]
impl GrpcInferenceService for Grpc {
    async fn server_live(&self, _r: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _r: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.oip.ready() }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        self.target(&r, &r.get_ref().name, &r.get_ref().version)?;
        Ok(Response::new(ModelReadyResponse { ready: self.oip.ready() }))
    }

    async fn server_metadata(&self, r: Request<ServerMetadataRequest>) -> Result<Response<ServerMetadataResponse>, Status> {
        self.authorize(&r).map_err(|e| status(&e))?;
        Ok(Response::new(ServerMetadataResponse {
            name: "edgeinfer".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: oip::EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, r: Request<ModelMetadataRequest>) -> Result<Response<ModelMetadataResponse>, Status> {
        let t = self.target(&r, &r.get_ref().name, &r.get_ref().version)?;
        let m = self.oip.metadata(t);
        let tensors = |ts: Vec<oip::TensorMeta>| {
            ts.into_iter()
                .map(|t| model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype.into(), shape: t.shape })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: m.name,
            versions: vec![oip::VERSION.into()],
            platform: m.platform,
            inputs: tensors(m.inputs),
            outputs: tensors(m.outputs),
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let arrival = Instant::now();
        let model = r.get_ref().model_name.clone();
        let request = self.authorize(&r).and_then(|()| {
            let deadline = client_deadline(r.metadata())?;
            Ok(InferRequest { deadline, ..to_request(r.into_inner())? })
        });
        let request = match request {
            Ok(req) => req,
            Err(e) => {
                self.oip.record_failure(Some(&model), &e, arrival);
                return Err(status(&e));
            }
        };
        // The client's deadline is also kept here: past it the call ends with DEADLINE_EXCEEDED
        // (what a gRPC server owes a client that sent one), and the request, dropped, is skipped
        // by the executor if it has not started.
        let deadline = request.deadline;
        let answer = self.oip.infer(request, arrival);
        let answer = match deadline {
            None => answer.await,
            Some(d) => tokio::time::timeout_at((arrival + d).into(), answer).await.unwrap_or_else(|_| {
                let e = OipError::new(Kind::Timeout, format!("no answer within the call's deadline of {} ms (grpc-timeout)", d.as_millis()));
                self.oip.record_failure(Some(&model), &e, arrival);
                Err(e)
            }),
        };
        answer.map(|resp| Response::new(to_response(resp))).map_err(|e| status(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_parse_as_the_spec_writes_them() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "m", "100", "123456789m", "10x", "-1m", "1.5S", " 5S", "5é", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(client_deadline(&md).unwrap(), None);
        md.insert("grpc-timeout", "40m".parse().unwrap());
        assert_eq!(client_deadline(&md).unwrap(), Some(Duration::from_millis(40)));
        md.insert("grpc-timeout", "soon".parse().unwrap());
        assert!(client_deadline(&md).unwrap_err().message.contains("malformed grpc-timeout header 'soon'"));
    }
}

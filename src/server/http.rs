//! The Open Inference Protocol over HTTP/1.1 (KServe v2 REST, with Triton's binary tensor data
//! extension), and Prometheus' `GET /metrics`. Plain hyper: the routes are few, and every limit
//! is applied here before any work — the token, the body cap (from `Content-Length` before a
//! byte of the body is read, and again while reading), the read timeout on headers and body;
//! `guarded.rs` adds the idle and write timeouts. Inference itself is `oip.rs`'s business.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::guarded::Guarded;
use super::oip::{self, Data, InferRequest, InferResponse, InputTensor, Kind, Listener, Oip, OipError, OutData, Param, RequestedOutput, Target};
use super::open::Protocol;

type Body = Full<Bytes>;

/// Triton's binary tensor data extension: the length of the JSON part of a body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";
/// How much of an oversized body is read and thrown away so the 413 reaches the client (a
/// socket closed with unread data resets, and the client may lose the answer); past it, the
/// connection is just closed.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Accepts until `shutdown`; then stops accepting, lets every request already received be
/// answered (idle keep-alive connections close at once), and returns.
pub async fn run(l: Listener, shutdown: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let limits = l.oip.limits.clone();
    while let Some(socket) = l.next(&shutdown, "http").await {
        let Some(place) = l.oip.connections.admit(Protocol::Http) else {
            if let Some(answer) = l.oip.connections.refusal(refuse(socket, limits.max_connections)) {
                tokio::spawn(answer);
            }
            continue;
        };
        let io = Guarded::new(socket, limits.idle_timeout, limits.write_timeout, Some(place));
        let oip = l.oip.clone();
        let service = service_fn(move |req| {
            let oip = oip.clone();
            async move { Ok::<_, Infallible>(handle(&oip, req).await) }
        });
        let conn =
            http1::Builder::new().timer(TokioTimer::new()).header_read_timeout(limits.read_timeout).serve_connection(TokioIo::new(io), service);
        let watched = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!("http connection ended: {e}");
            }
        });
    }
    l.drain(graceful, "http").await;
}

/// One connection over `server.max_connections`: a clear 503, then close.
async fn refuse(mut socket: TcpStream, max: usize) {
    let body = json!({"error": format!("too many connections (server.max_connections = {max})")}).to_string();
    let text = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.write_all(text.as_bytes())).await;
}

/// The endpoints.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Live,
    Ready,
    Server,
    Metrics,
    AllStats,
    Model { name: &'a str, version: &'a str, action: Action },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Action {
    Metadata,
    Ready,
    Infer,
    Config,
    Stats,
}

fn route(path: &str) -> Option<Route<'_>> {
    if path == "/metrics" {
        return Some(Route::Metrics);
    }
    let rest = path.strip_prefix("/v2")?;
    match rest {
        "" | "/" => return Some(Route::Server),
        "/health/live" => return Some(Route::Live),
        "/health/ready" => return Some(Route::Ready),
        "/models/stats" => return Some(Route::AllStats),
        _ => {}
    }
    let mut parts = rest.strip_prefix("/models/")?.split('/');
    let name = parts.next().filter(|n| !n.is_empty())?;
    let mut version = "";
    let mut next = parts.next();
    if next == Some("versions") {
        version = parts.next().filter(|v| !v.is_empty())?;
        next = parts.next();
    }
    let action = match next {
        None => Action::Metadata,
        Some("ready") => Action::Ready,
        Some("infer") => Action::Infer,
        Some("config") => Action::Config,
        Some("stats") => Action::Stats,
        _ => return None,
    };
    parts.next().is_none().then_some(Route::Model { name, version, action })
}

async fn handle(oip: &Oip, req: Request<Incoming>) -> Response<Body> {
    let arrival = Instant::now();
    let path = req.uri().path().to_string();
    let Some(route) = route(&path) else {
        return error(&OipError::new(Kind::NotFound, format!("no endpoint {path}; see GET /v2 and /v2/models/{{model}}")));
    };
    let want = if matches!(route, Route::Model { action: Action::Infer, .. }) { Method::POST } else { Method::GET };
    if req.method() != want {
        let mut r = error(&OipError::bad(format!("{path} takes {want}, not {}", req.method())));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(if want == Method::POST { "POST" } else { "GET" }));
        return r;
    }
    // Probes carry no credentials (orchestrators' liveness/readiness checks) and reveal
    // nothing; everything else needs the token when one is configured.
    if !matches!(route, Route::Live | Route::Ready) {
        if let Err(e) = oip.authorize(req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())) {
            if let Route::Model { name, action: Action::Infer, .. } = &route {
                oip.record_failure(Some(*name), &e, arrival);
            }
            return error(&e);
        }
    }
    match route {
        Route::Live => empty(StatusCode::OK),
        Route::Ready => empty(if oip.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }),
        Route::Server => json_response(&json!({"name": "edgeinfer", "version": env!("CARGO_PKG_VERSION"), "extensions": oip::EXTENSIONS})),
        Route::Metrics => {
            let mut r = Response::new(Full::new(Bytes::from(oip.scrape())));
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::telemetry::metrics::CONTENT_TYPE));
            r
        }
        Route::AllStats => json_response(&oip.stats_json(None)),
        Route::Model { name, version, action } => {
            let target = match oip.target(name, version) {
                Ok(t) => t,
                Err(e) => {
                    if action == Action::Infer {
                        oip.record_failure(None, &e, arrival);
                    }
                    return error(&e);
                }
            };
            match action {
                Action::Metadata => json_response(&metadata_json(oip, target)),
                Action::Ready => empty(if oip.ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }),
                Action::Config => json_response(&oip.config_json(target)),
                Action::Stats => json_response(&oip.stats_json(Some(target))),
                Action::Infer => {
                    let name = name.to_string();
                    let version = version.to_string();
                    match read_infer(oip, &name, &version, req).await {
                        Ok(request) => match oip.infer(request, arrival).await {
                            Ok(resp) => encode_response(resp),
                            Err(e) => error(&e),
                        },
                        Err(e) => {
                            oip.record_failure(Some(&name), &e, arrival);
                            error(&e)
                        }
                    }
                }
            }
        }
    }
}

fn metadata_json(oip: &Oip, t: Target) -> Value {
    let m = oip.metadata(t);
    let tensors =
        |ts: &[oip::TensorMeta]| ts.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect::<Vec<_>>();
    json!({"name": m.name, "versions": [oip::VERSION], "platform": m.platform, "inputs": tensors(&m.inputs), "outputs": tensors(&m.outputs)})
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Reads and parses an inference request's body within the cap and the read timeout.
async fn read_infer(oip: &Oip, name: &str, version: &str, req: Request<Incoming>) -> Result<InferRequest, OipError> {
    let limits = &oip.limits;
    let cap = limits.max_frame_bytes;
    let too_large =
        |n: String| OipError::new(Kind::TooLarge, format!("request body of {n} bytes exceeds the {cap}-byte limit (server.max_frame_bytes)"));
    let json_len = match req.headers().get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| OipError::bad(format!("{HEADER_LENGTH} must be a byte count, not {v:?}")))?,
        ),
    };
    if let Some(len) = content_length(req.headers()).filter(|l| *l > cap as u64) {
        // Refused from the header alone: nothing is buffered.
        drain(req.into_body(), limits.read_timeout).await;
        return Err(too_large(len.to_string()));
    }
    let body = match tokio::time::timeout(limits.read_timeout, Limited::new(req.into_body(), cap).collect()).await {
        Err(_) => return Err(OipError::new(Kind::Timeout, "request body not received within server.read_timeout_ms")),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(format!("more than {cap}"))),
        Ok(Err(e)) => return Err(OipError::bad(format!("cannot read the request body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    parse_infer(name, version, body, json_len)
}

/// Reads and discards up to [`DRAIN_LIMIT`] bytes of a refused body, within the read timeout.
async fn drain(mut body: Incoming, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<JsonInput>,
    #[serde(default)]
    outputs: Vec<JsonOutput>,
}

#[derive(Deserialize)]
struct JsonInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct JsonOutput {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

/// The JSON part of a body (all of it without Triton's header-length header), then each input's
/// data from the binary section (`binary_data_size`, in input order) or from its `data`.
pub fn parse_infer(name: &str, version: &str, body: Bytes, json_len: Option<usize>) -> Result<InferRequest, OipError> {
    let (head, mut binary) = match json_len {
        Some(l) if l > body.len() => {
            return Err(OipError::bad(format!("{HEADER_LENGTH} is {l} but the body has only {} bytes", body.len())));
        }
        Some(l) => (body.slice(..l), body.slice(l..)),
        None => (body, Bytes::new()),
    };
    let req: JsonRequest = serde_json::from_slice(&head).map_err(|e| OipError::bad(format!("inference request JSON: {e}")))?;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in req.inputs {
        let data = match i.parameters.get("binary_data_size") {
            Some(size) => {
                let size =
                    size.as_u64().ok_or_else(|| OipError::bad(format!("input '{}': binary_data_size must be a byte count", i.name)))? as usize;
                if size > binary.len() {
                    return Err(OipError::bad(format!(
                        "binary section truncated: input '{}' declares {size} bytes (binary_data_size), {} remain",
                        i.name,
                        binary.len()
                    )));
                }
                oip::raw_to_data(&i.name, &i.datatype, binary.split_to(size))?
            }
            None => json_data(&i)?,
        };
        inputs.push(InputTensor { name: i.name, datatype: i.datatype, shape: i.shape, data });
    }
    if !binary.is_empty() {
        return Err(OipError::bad(format!("binary section has {} bytes beyond those the inputs declare (binary_data_size)", binary.len())));
    }
    let binary_output = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let timeout_us = req.parameters.get("timeout").map(oip::timeout_from_json).transpose()?;
    let outputs = req
        .outputs
        .into_iter()
        .map(|o| {
            let classification = o.parameters.get("classification").map(oip::classification_from_json).transpose()?;
            let binary = o.parameters.get("binary_data").and_then(Value::as_bool);
            Ok(RequestedOutput { name: o.name, classification, binary })
        })
        .collect::<Result<_, OipError>>()?;
    Ok(InferRequest {
        model: name.into(),
        version: version.into(),
        id: req.id.unwrap_or_default(),
        inputs,
        outputs,
        timeout_us,
        deadline: None,
        binary_output,
    })
}

/// An input's `data` in JSON: row-major, flat or nested. `BYTES` elements are strings; an
/// image cannot be a JSON string as it is, so a string is taken as base64 when it decodes as
/// such (KServe's convention, and what `parameters.content_type = "base64"` declares).
fn json_data(i: &JsonInput) -> Result<Data, OipError> {
    let Some(data) = &i.data else {
        return Err(OipError::bad(format!("input '{}' has neither data nor binary_data_size", i.name)));
    };
    let mut flat = Vec::new();
    flatten(data, &mut flat);
    match i.datatype.as_str() {
        "BYTES" => {
            let declared_b64 = i.parameters.get("content_type").and_then(Value::as_str) == Some("base64");
            let items = flat
                .into_iter()
                .enumerate()
                .map(|(k, v)| {
                    let s = v
                        .as_str()
                        .ok_or_else(|| OipError::bad(format!("input '{}' element {k}: BYTES data must be strings, not {v}", i.name)))?;
                    match base64_decode(s) {
                        Some(b) => Ok(Bytes::from(b)),
                        None if declared_b64 => Err(OipError::bad(format!("input '{}' element {k}: not valid base64", i.name))),
                        None => Ok(Bytes::copy_from_slice(s.as_bytes())),
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(Data::Bytes(items))
        }
        "FP32" => flat
            .into_iter()
            .map(|v| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| OipError::bad(format!("input '{}': FP32 data must be numbers, not {v}", i.name)))
            })
            .collect::<Result<_, _>>()
            .map(Data::Fp32),
        _ => Ok(Data::Unsupported),
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn param_json(p: &Param) -> Value {
    match p {
        Param::Str(s) => json!(s),
        Param::F64(x) => json!(x),
        Param::I64(x) => json!(x),
    }
}

/// The response: JSON alone, or with Triton's binary section when any output is binary.
pub fn encode_response(resp: InferResponse) -> Response<Body> {
    let mut binary = Vec::new();
    let mut any_binary = false;
    let outputs: Vec<Value> = resp
        .outputs
        .iter()
        .map(|o| {
            let mut v = json!({"name": o.name, "datatype": o.data.datatype(), "shape": o.shape});
            if o.binary {
                any_binary = true;
                let raw = o.data.to_raw();
                v["parameters"] = json!({"binary_data_size": raw.len()});
                binary.extend_from_slice(&raw);
            } else {
                v["data"] = match &o.data {
                    OutData::Fp32(d) => json!(d),
                    OutData::Bytes(d) => json!(d.iter().map(|b| String::from_utf8_lossy(b)).collect::<Vec<_>>()),
                };
            }
            v
        })
        .collect();
    let parameters: Map<String, Value> = resp.parameters.iter().map(|(k, v)| (k.to_string(), param_json(v))).collect();
    let mut head = json!({"model_name": resp.model, "model_version": oip::VERSION, "parameters": parameters, "outputs": outputs});
    if !resp.id.is_empty() {
        head["id"] = json!(resp.id);
    }
    let head = serde_json::to_vec(&head).expect("a JSON value serialises");
    if !any_binary {
        return with_type(Response::new(Full::new(Bytes::from(head))), "application/json");
    }
    let head_len = head.len();
    let mut body = head;
    body.extend_from_slice(&binary);
    let mut r = with_type(Response::new(Full::new(Bytes::from(body))), "application/octet-stream");
    r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(head_len));
    r
}

fn with_type(mut r: Response<Body>, ty: &'static str) -> Response<Body> {
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
    r
}

fn json_response(v: &Value) -> Response<Body> {
    with_type(Response::new(Full::new(Bytes::from(v.to_string()))), "application/json")
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// `{"error": "…"}` with the status that fits (KServe v2's error shape).
pub fn error(e: &OipError) -> Response<Body> {
    let status = match e.kind {
        Kind::BadRequest => StatusCode::BAD_REQUEST,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Unauthorized => StatusCode::UNAUTHORIZED,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
        Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = json_response(&json!({"error": e.message}));
    *r.status_mut() = status;
    if e.kind == Kind::Unauthorized {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if matches!(e.kind, Kind::TooLarge | Kind::Timeout) {
        // The rest of the body was not read: this connection cannot carry another request.
        r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/v2"), Some(Route::Server));
        assert_eq!(route("/v2/health/ready"), Some(Route::Ready));
        assert_eq!(route("/metrics"), Some(Route::Metrics));
        assert_eq!(route("/v2/models/edgeinfer"), Some(Route::Model { name: "edgeinfer", version: "", action: Action::Metadata }));
        assert_eq!(route("/v2/models/m/versions/1/infer"), Some(Route::Model { name: "m", version: "1", action: Action::Infer }));
        assert_eq!(route("/v2/models/m/stats"), Some(Route::Model { name: "m", version: "", action: Action::Stats }));
        assert_eq!(route("/v2/models/stats"), Some(Route::AllStats));
        assert_eq!(route("/v2/models/m/infer/extra"), None);
        assert_eq!(route("/v2/models//ready"), None);
        assert_eq!(route("/v1/models/m"), None);
    }

    #[test]
    fn binary_section_is_cut_per_input_and_truncation_is_named() {
        let image = b"\xff\xd8not really";
        let raw = oip::bytes_to_raw(&[image.to_vec()]);
        let head = format!(
            r#"{{"inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","parameters":{{"binary_data_size":{}}}}}],"parameters":{{"timeout":2000}},"outputs":[{{"name":"probabilities","parameters":{{"classification":3,"binary_data":true}}}}]}}"#,
            raw.len()
        );
        let mut body = head.clone().into_bytes();
        body.extend_from_slice(&raw);
        let r = parse_infer("edgeinfer", "", Bytes::from(body.clone()), Some(head.len())).unwrap();
        assert_eq!(r.inputs[0].data, Data::Bytes(vec![Bytes::from_static(image)]));
        assert_eq!((r.timeout_us, r.outputs[0].classification, r.outputs[0].binary), (Some(2000.0), Some(3), Some(true)));
        let e = parse_infer("edgeinfer", "", Bytes::from(body[..body.len() - 3].to_vec()), Some(head.len())).unwrap_err();
        assert!(e.message.contains("binary section truncated"), "{}", e.message);
        let e = parse_infer("edgeinfer", "", Bytes::from(body.clone()), Some(body.len() + 1)).unwrap_err();
        assert!(e.message.contains(HEADER_LENGTH), "{}", e.message);
    }

    #[test]
    fn json_data_takes_base64_images_and_nested_numbers() {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG....");
        let body = format!(r#"{{"id":"7","inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","data":["{b64}"]}}]}}"#);
        let r = parse_infer("m", "", Bytes::from(body), None).unwrap();
        assert_eq!(r.inputs[0].data, Data::Bytes(vec![Bytes::from_static(b"\x89PNG....")]));
        assert_eq!(r.id, "7");
        let body = r#"{"inputs":[{"name":"input","shape":[1,2],"datatype":"FP32","data":[[1, 2.5]]}]}"#;
        assert_eq!(parse_infer("m", "", Bytes::from(body), None).unwrap().inputs[0].data, Data::Fp32(vec![1.0, 2.5]));
        let body = r#"{"inputs":[{"name":"input","shape":[1],"datatype":"FP32","data":["x"]}]}"#;
        assert!(parse_infer("m", "", Bytes::from(body), None).unwrap_err().message.contains("must be numbers"));
        let e = parse_infer("m", "", Bytes::from_static(b"{\"inputs\": 3}"), None).unwrap_err();
        assert!(e.message.contains("inference request JSON"), "{}", e.message);
    }
}

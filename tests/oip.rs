//! The Open Inference Protocol front ends in process, on loopback: HTTP (JSON and Triton's
//! binary tensor data) and gRPC classify images through the adaptive ladder and through one
//! rung (image or FP32 tensor), with Triton's classification extension; every kind of bad
//! input gets a clear error of the right status and the server carries on; the token is
//! enforced; a request's own `timeout` changes which rung serves it; `/metrics` counts what
//! was sent; graceful shutdown answers what each front end had accepted. The real clients
//! (tritonclient, curl, Prometheus) are driven by `tests/oip_clients.rs`.

mod common;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use edgeinfer::config::{BackendChoice, Config};
use edgeinfer::server::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use edgeinfer::server::grpc::proto::{self, infer_parameter::ParameterChoice, InferParameter, ModelInferRequest};
use edgeinfer::server::grpc::{output_data, proto::model_infer_request::InferInputTensor};
use edgeinfer::server::oip::{bytes_to_raw, fp32_to_raw, OutData};
use edgeinfer::server::open::Protocol;
use edgeinfer::service::Service;
use futures::StreamExt as _;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tonic::Code;

const TOKEN: &str = "s3cret";

/// One HTTP request on a fresh connection: (status, headers, body).
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> (u16, http::HeaderMap, Bytes) {
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(socket)).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(req.body(Full::new(Bytes::from(body))).unwrap()))
        .await
        .expect("answered in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status.as_u16(), parts.headers, body.collect().await.unwrap().to_bytes())
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {TOKEN}"))
}

/// POST a JSON inference request: (status, parsed JSON).
async fn infer_json(addr: std::net::SocketAddr, model: &str, body: &Value) -> (u16, Value) {
    let (status, _, b) = http(addr, "POST", &format!("/v2/models/{model}/infer"), &[bearer()], body.to_string().into_bytes()).await;
    (status, serde_json::from_slice(&b).unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&b))))
}

/// POST with Triton's binary section: the JSON `head` then `binary`. (status, header JSON, binary part).
async fn infer_binary(addr: std::net::SocketAddr, model: &str, head: &Value, binary: &[u8]) -> (u16, Value, Bytes) {
    let head = head.to_string();
    let mut body = head.clone().into_bytes();
    body.extend_from_slice(binary);
    let (status, headers, b) =
        http(addr, "POST", &format!("/v2/models/{model}/infer"), &[bearer(), ("inference-header-content-length", head.len().to_string())], body)
            .await;
    let json_len = headers.get("inference-header-content-length").map_or(b.len(), |v| v.to_str().unwrap().parse().unwrap());
    (status, serde_json::from_slice(&b[..json_len]).unwrap(), b.slice(json_len..))
}

fn image_input_binary(image: &[u8]) -> (Value, Vec<u8>) {
    let raw = bytes_to_raw(&[image.to_vec()]);
    (json!({"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": raw.len()}}), raw)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn tiny_config(dir: &std::path::Path) -> Config {
    let mut c = common::config(dir, BackendChoice::Auto);
    c.server.auth_token = TOKEN.into();
    c.server.max_frame_bytes = 256 * 1024;
    c
}

async fn grpc_client(svc: &Service) -> GrpcInferenceServiceClient<tonic::transport::Channel> {
    GrpcInferenceServiceClient::connect(format!("http://{}", svc.grpc_addr.unwrap())).await.unwrap()
}

/// A gRPC request with the token in its metadata.
fn authed<T>(m: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(m);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn grpc_image_request(model: &str, datatype: &str, shape: Vec<i64>, raw: Vec<u8>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor { name: "image".into(), datatype: datatype.into(), shape, ..Default::default() }],
        raw_input_contents: vec![raw.into()],
        ..Default::default()
    }
}

fn int_param(v: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(v)) }
}

fn string_param(r: &proto::ModelInferResponse, key: &str) -> String {
    match r.parameters.get(key).and_then(|p| p.parameter_choice.clone()) {
        Some(ParameterChoice::StringParam(s)) => s,
        other => panic!("parameter {key}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_classifies_through_the_ladder_and_a_rung_and_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(tiny_config(dir.path())).await.unwrap();
    let addr = svc.http_addr.unwrap();
    let jpeg = common::jpeg(64, 48);

    // Binary data extension: image in the binary section, probabilities back in it.
    let (input, raw) = image_input_binary(&jpeg);
    let head = json!({"id": "a1", "inputs": [input], "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]});
    let (status, resp, binary) = infer_binary(addr, "edgeinfer", &head, &raw).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!((resp["model_name"].as_str(), resp["id"].as_str()), (Some("edgeinfer"), Some("a1")));
    let p = &resp["parameters"];
    assert_eq!((p["model"].as_str(), p["accuracy"].as_f64()), (Some("tiny_96"), Some(50.0)), "idle server: the best rung: {resp}");
    assert!(p["inference_us"].as_i64().unwrap() > 0 && p["queue_us"].is_i64() && p["preprocess_us"].is_i64(), "{resp}");
    let out = &resp["outputs"][0];
    let classes = out["shape"][1].as_u64().unwrap() as usize;
    assert_eq!((out["datatype"].as_str(), out["shape"][0].as_u64()), (Some("FP32"), Some(1)));
    assert_eq!(binary.len(), classes * 4);
    assert_eq!(out["parameters"]["binary_data_size"].as_u64(), Some(binary.len() as u64));
    let sum: f32 = binary.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).sum();
    assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to 1: {sum}");

    // JSON both ways (image base64), classification: K strings "score:index:label", best first.
    let body = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&jpeg)]}],
                      "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]});
    let (status, resp) = infer_json(addr, "edgeinfer", &body).await;
    assert_eq!(status, 200, "{resp}");
    let out = &resp["outputs"][0];
    assert_eq!((out["datatype"].as_str(), out["shape"].clone()), (Some("BYTES"), json!([1, 3])));
    let scores: Vec<f32> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let parts: Vec<&str> = s.as_str().unwrap().split(':').collect();
            assert_eq!(parts.len(), 3, "{s}");
            assert!(parts[1].parse::<usize>().unwrap() < classes);
            parts[0].parse().unwrap()
        })
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // One rung by name, with an FP32 tensor in its own shape (JSON data) and with an image.
    let tensor: Vec<f32> = (0..3 * 32 * 32).map(|i| (i % 17) as f32 / 17.0).collect();
    let body = json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": tensor}]});
    let (status, resp) = infer_json(addr, "tiny_32", &body).await;
    assert_eq!((status, resp["parameters"]["model"].as_str()), (200, Some("tiny_32")), "{resp}");
    assert_eq!(resp["outputs"][0]["data"].as_array().unwrap().len(), classes);
    let (status, resp, _) = infer_binary(addr, "tiny_64", &json!({"inputs": [input.clone()]}), &raw).await;
    assert_eq!((status, resp["parameters"]["model"].as_str()), (200, Some("tiny_64")), "{resp}");
    // The versioned path serves the same model; the rung's metadata lists both inputs.
    let (status, resp) = infer_json(addr, "tiny_32/versions/1", &body).await;
    assert_eq!(status, 200, "{resp}");
    let (status, _, meta) = http(addr, "GET", "/v2/models/tiny_32", &[bearer()], vec![]).await;
    let meta: Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(status, 200);
    assert_eq!(meta["inputs"][1], json!({"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}));
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, classes]));

    // Bad input: each a clear error of the right status.
    let png = common::png(20, 20);
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("edgeinfer", json!({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}), 400, "must be BYTES"),
        ("edgeinfer", json!({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES", "data": [b64(&png)]}]}), 400, "takes [N]"),
        ("edgeinfer", json!({"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": [b64(&png)]}]}), 400, "1 element(s)"),
        (
            "edgeinfer",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"not an image at all")]}]}),
            400,
            "JPEG or PNG",
        ),
        ("edgeinfer", json!({"inputs": [{"name": "picture", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}]}), 400, "missing input"),
        ("edgeinfer", json!({"inputs": []}), 400, "missing input"),
        ("tiny_32", json!({"inputs": [{"name": "input", "shape": [1, 3, 30, 30], "datatype": "FP32", "data": [0.0]}]}), 400, "[-1, 3, 32, 32]"),
        ("tiny_32", json!({"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "INT8", "data": [0]}]}), 400, "must be FP32"),
        ("nonesuch", json!({"inputs": []}), 404, "unknown model 'nonesuch'"),
        (
            "edgeinfer",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}], "outputs": [{"name": "logits"}]}),
            400,
            "unknown output",
        ),
        (
            "edgeinfer",
            json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}], "parameters": {"timeout": "soon"}}),
            400,
            "timeout",
        ),
    ];
    for (model, body, want, needle) in cases {
        let (status, resp) = infer_json(addr, model, &body).await;
        let msg = resp["error"].as_str().unwrap_or_default();
        println!("HTTP {status} for {needle:?}: {msg}");
        assert_eq!(status, want, "{needle}: {resp}");
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
    // Malformed JSON; a truncated binary section; a header length past the body.
    let (status, _, b) = http(addr, "POST", "/v2/models/edgeinfer/infer", &[bearer()], b"{\"inputs\": [".to_vec()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("inference request JSON"));
    let (status, resp, _) = infer_binary(addr, "edgeinfer", &json!({"inputs": [input.clone()]}), &raw[..raw.len() / 2]).await;
    assert_eq!(status, 400);
    assert!(resp["error"].as_str().unwrap().contains("binary section truncated"), "{resp}");
    let (status, _, b) =
        http(addr, "POST", "/v2/models/edgeinfer/infer", &[bearer(), ("inference-header-content-length", "999".into())], b"{}".to_vec()).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&b));
    // Over the body cap: refused from Content-Length, before the body is buffered.
    let (status, _, b) = http(addr, "POST", "/v2/models/edgeinfer/infer", &[bearer()], vec![b' '; 300 * 1024]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&b));
    assert!(String::from_utf8_lossy(&b).contains("server.max_frame_bytes"));
    // The token: missing or wrong is 401 everywhere but the health probes.
    let (status, h, b) =
        http(addr, "POST", "/v2/models/edgeinfer/infer", &[("authorization", "Bearer nope".into())], body.to_string().into_bytes()).await;
    assert_eq!((status, h.get("www-authenticate").map(|v| v.to_str().unwrap())), (401, Some("Bearer")), "{}", String::from_utf8_lossy(&b));
    assert_eq!(http(addr, "GET", "/v2/models/edgeinfer", &[], vec![]).await.0, 401);
    assert_eq!(http(addr, "GET", "/metrics", &[], vec![]).await.0, 401);
    assert_eq!(http(addr, "GET", "/v2/health/live", &[], vec![]).await.0, 200);
    assert_eq!(http(addr, "GET", "/v2/health/ready", &[], vec![]).await.0, 200);
    assert_eq!(http(addr, "GET", "/v2/nothing", &[bearer()], vec![]).await.0, 404);
    assert_eq!(http(addr, "GET", "/v2/models/edgeinfer/infer", &[bearer()], vec![]).await.0, 405);

    // The service carried on: a good request still works.
    let (status, resp, _) = infer_binary(addr, "edgeinfer", &json!({"inputs": [input]}), &raw).await;
    assert_eq!(status, 200, "{resp}");

    // Server metadata, Triton's config and stats shapes, and the metrics.
    let (_, _, b) = http(addr, "GET", "/v2", &[bearer()], vec![]).await;
    let server: Value = serde_json::from_slice(&b).unwrap();
    assert!(server["extensions"].as_array().unwrap().iter().any(|e| e == "binary_tensor_data"), "{server}");
    let (_, _, b) = http(addr, "GET", "/v2/models/edgeinfer/config", &[bearer()], vec![]).await;
    let config: Value = serde_json::from_slice(&b).unwrap();
    assert_eq!((config["name"].as_str(), config["input"][0]["data_type"].as_str()), (Some("edgeinfer"), Some("TYPE_STRING")));
    let (_, _, b) = http(addr, "GET", "/v2/models/edgeinfer/stats", &[bearer()], vec![]).await;
    let stats: Value = serde_json::from_slice(&b).unwrap();
    let s = &stats["model_stats"][0];
    assert_eq!((s["name"].as_str(), s["inference_stats"]["success"]["count"].as_u64()), (Some("edgeinfer"), Some(3)), "{stats}");
    let (status, h, b) = http(addr, "GET", "/metrics", &[bearer()], vec![]).await;
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert_eq!(status, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    for line in [
        "edgeinfer_requests_total{model=\"edgeinfer\",status=\"ok\"} 3",
        "edgeinfer_requests_total{model=\"tiny_32\",status=\"ok\"} 2",
        "edgeinfer_requests_total{model=\"unknown\",status=\"not_found\"} 1",
        "edgeinfer_requests_total{model=\"edgeinfer\",status=\"too_large\"} 1",
        "edgeinfer_requests_total{model=\"edgeinfer\",status=\"unauthorized\"} 1",
        "edgeinfer_queue_depth{model=\"tiny_96\"} 0",
        "edgeinfer_latency_bound_seconds 0.05",
        "edgeinfer_open_connections{protocol=\"http\"}",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        text.contains("edgeinfer_model_inference_seconds{model=\"tiny_32\"}") && text.contains("edgeinfer_request_duration_seconds_bucket"),
        "{text}"
    );
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_classifies_and_refuses_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(tiny_config(dir.path())).await.unwrap();
    let mut c = grpc_client(&svc).await;
    let jpeg = common::jpeg(64, 48);

    assert!(c.server_live(proto::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(c.server_ready(proto::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta =
        c.model_metadata(authed(proto::ModelMetadataRequest { name: "edgeinfer".into(), version: String::new() })).await.unwrap().into_inner();
    assert_eq!((meta.inputs[0].name.as_str(), meta.inputs[0].datatype.as_str(), meta.inputs[0].shape.clone()), ("image", "BYTES", vec![-1]));
    let server = c.server_metadata(authed(proto::ServerMetadataRequest {})).await.unwrap().into_inner();
    assert!(server.extensions.iter().any(|e| e == "classification"));

    // Raw contents in and out; classification through the output's parameter.
    let mut req = grpc_image_request("edgeinfer", "BYTES", vec![1], bytes_to_raw(std::slice::from_ref(&jpeg)));
    req.outputs = vec![proto::model_infer_request::InferRequestedOutputTensor {
        name: "probabilities".into(),
        parameters: [("classification".to_string(), int_param(2))].into(),
    }];
    let r = c.model_infer(authed(req)).await.unwrap().into_inner();
    assert_eq!(string_param(&r, "model"), "tiny_96");
    assert_eq!((r.outputs[0].datatype.as_str(), r.outputs[0].shape.clone()), ("BYTES", vec![1, 2]));
    let Some(OutData::Bytes(top)) = output_data(&r, 0) else { panic!("BYTES output") };
    assert!(top.iter().all(|s| String::from_utf8_lossy(s).split(':').count() == 3), "{top:?}");
    // Typed contents (not raw) are taken too; a rung by name with a raw FP32 tensor.
    let mut req = grpc_image_request("edgeinfer", "BYTES", vec![1], vec![]);
    req.raw_input_contents.clear();
    req.inputs[0].contents = Some(proto::InferTensorContents { bytes_contents: vec![jpeg.clone().into()], ..Default::default() });
    let r = c.model_infer(authed(req)).await.unwrap().into_inner();
    let Some(OutData::Fp32(p)) = output_data(&r, 0) else { panic!("FP32 output") };
    assert_eq!(r.outputs[0].shape, vec![1, p.len() as i64]);
    let tensor = vec![0.25f32; 3 * 64 * 64];
    let mut req = grpc_image_request("tiny_64", "FP32", vec![1, 3, 64, 64], fp32_to_raw(&tensor));
    req.inputs[0].name = "input".into();
    let r = c.model_infer(authed(req)).await.unwrap().into_inner();
    assert_eq!(string_param(&r, "model"), "tiny_64");

    // Bad input: each the status that fits, with a clear message.
    let good = bytes_to_raw(std::slice::from_ref(&jpeg));
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 10);
    let cases: Vec<(ModelInferRequest, Code, &str)> = vec![
        (grpc_image_request("edgeinfer", "FP32", vec![1], fp32_to_raw(&[1.0])), Code::InvalidArgument, "must be BYTES"),
        (grpc_image_request("edgeinfer", "BYTES", vec![1, 1], good.clone()), Code::InvalidArgument, "takes [N]"),
        (grpc_image_request("edgeinfer", "BYTES", vec![1], bytes_to_raw(&[b"plain text".to_vec()])), Code::InvalidArgument, "JPEG or PNG"),
        (ModelInferRequest { model_name: "edgeinfer".into(), ..Default::default() }, Code::InvalidArgument, "missing input"),
        (grpc_image_request("nonesuch", "BYTES", vec![1], good.clone()), Code::NotFound, "unknown model"),
        (grpc_image_request("edgeinfer", "BYTES", vec![1], truncated), Code::InvalidArgument, "only"),
        // Over server.max_frame_bytes: refused from the message's length prefix, naming the key.
        (grpc_image_request("edgeinfer", "BYTES", vec![1], vec![0; 300 * 1024]), Code::ResourceExhausted, "(server.max_frame_bytes)"),
    ];
    for (req, code, needle) in cases {
        let e = c.model_infer(authed(req)).await.unwrap_err();
        println!("gRPC {:?} for {needle:?}: {}", e.code(), e.message());
        assert_eq!(e.code(), code, "{needle}: {}", e.message());
        assert!(e.message().contains(needle), "{:?} should mention {needle:?}", e.message());
    }
    // No token, or a wrong one.
    let e = c.model_infer(grpc_image_request("edgeinfer", "BYTES", vec![1], good.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    let mut wrong = tonic::Request::new(grpc_image_request("edgeinfer", "BYTES", vec![1], good.clone()));
    wrong.metadata_mut().insert("authorization", "Bearer guess".parse().unwrap());
    assert_eq!(c.model_infer(wrong).await.unwrap_err().code(), Code::Unauthenticated);
    // Still serving, on the same channel.
    let r = c.model_infer(authed(grpc_image_request("edgeinfer", "BYTES", vec![1], good))).await.unwrap().into_inner();
    assert_eq!(r.model_name, "edgeinfer");
    assert!(common::eventually(5, || svc.engine.in_system() == 0).await, "nothing left in the engine");
    // The oversize message is counted; its model is inside the message that was never read.
    let (_, _, b) = http(svc.http_addr.unwrap(), "GET", "/metrics", &[bearer()], vec![]).await;
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(text.contains("edgeinfer_requests_total{model=\"unknown\",status=\"too_large\"} 1"), "{text}");
    svc.stop().await;
}

/// A stand-in ModelInfer call the cheapest rung serves.
fn stand_in_call() -> ModelInferRequest {
    grpc_image_request("m3", "BYTES", vec![1], bytes_to_raw(&[common::png(16, 16)]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_max_connections_is_answered_with_a_status_naming_the_key() {
    let svc = common::stand_in_service_with(|c| c.server.max_connections = 1).await;
    let addr = svc.grpc_addr.unwrap();
    let mut a = grpc_client(&svc).await;
    a.model_infer(stand_in_call()).await.unwrap();
    // One connection more, through tonic's Channel and through a bare HTTP/2 connection: the
    // handshake completes and the call gets RESOURCE_EXHAUSTED naming the key, not a reset.
    let mut b = grpc_client(&svc).await;
    let e = b.model_infer(stand_in_call()).await.unwrap_err();
    println!("gRPC {:?} over the connection cap: {}", e.code(), e.message());
    assert_eq!(e.code(), Code::ResourceExhausted, "{}", e.message());
    assert_eq!(e.message(), "too many connections (server.max_connections = 1)");
    let mut bare = edgeinfer::server::grpc::connect(addr).await.unwrap();
    let e = bare.server_live(proto::ServerLiveRequest {}).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::ResourceExhausted, "too many connections (server.max_connections = 1)"));
    assert_eq!(svc.telemetry.connections().refused, 2);
    // The connection inside the cap carries on.
    assert_eq!(string_param(&a.model_infer(stand_in_call()).await.unwrap().into_inner(), "model"), "m3");
    // Its place freed, a new connection is served.
    drop(a);
    assert!(common::eventually(5, || svc.oip.connections.open(Protocol::Grpc) == 0).await);
    let mut d = grpc_client(&svc).await;
    assert_eq!(string_param(&d.model_infer(stand_in_call()).await.unwrap().into_inner(), "model"), "m3");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cap_holds_across_the_binary_http_and_grpc_front_ends() {
    use edgeinfer::protocol::Status;
    use tokio::io::AsyncReadExt;
    let svc = common::stand_in_service_with(|c| c.server.max_connections = 2).await;
    // One binary and one gRPC connection fill the node...
    let mut binary = edgeinfer::client::Client::connect(svc.addr, 1).await.unwrap();
    assert_eq!(binary.infer(common::png(16, 16).into(), 16).await.unwrap().status, Status::Ok);
    let mut g = grpc_client(&svc).await;
    g.model_infer(stand_in_call()).await.unwrap();
    assert_eq!(svc.oip.connections.total(), 2);
    assert_eq!(svc.telemetry.connections().open, 2, "the summary's count is the node's");
    let metrics = svc.oip.scrape();
    for line in ["edgeinfer_open_connections{protocol=\"binary\"} 1", "edgeinfer_open_connections{protocol=\"grpc\"} 1"] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    // ...so the first HTTP connection, far under the cap on its own front end, is refused with
    // the key named (read without sending: the refusal does not wait for a request)...
    let mut http_socket = tokio::net::TcpStream::connect(svc.http_addr.unwrap()).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), http_socket.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too many connections (server.max_connections = 2)"), "{answer}");
    // ...and so is one more binary connection.
    let mut extra = edgeinfer::client::Client::connect(svc.addr, 3).await.unwrap();
    let refused = extra.recv().await.unwrap();
    assert_eq!(refused.status, Status::Overloaded);
    assert!(refused.message.contains("server.max_connections = 2"), "{}", refused.message);
    assert_eq!(svc.telemetry.connections().refused, 2);
    // The connections inside the cap carry on; the binary one's place, given back, serves HTTP.
    g.model_infer(stand_in_call()).await.unwrap();
    drop(binary);
    assert!(common::eventually(5, || svc.oip.connections.total() == 1).await);
    let (status, _, _) = http(svc.http_addr.unwrap(), "GET", "/v2/health/live", &[], vec![]).await;
    assert_eq!(status, 200);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_answered_at_once_are_capped_for_the_node_and_past_it_a_connection_is_closed() {
    use edgeinfer::protocol::Status;
    use edgeinfer::server::open::REFUSALS_IN_FLIGHT;
    use tokio::io::AsyncReadExt;
    let svc = common::stand_in_service_with(|c| {
        c.server.max_connections = 1;
        c.server.read_timeout_ms = 2_000;
    })
    .await;
    let _inside = edgeinfer::client::Client::connect(svc.addr, 1).await.unwrap();
    assert!(common::eventually(5, || svc.oip.connections.total() == 1).await);
    // Silent gRPC connections over the cap: each refusal waits up to the read timeout for a call
    // to answer, so together they hold the node's whole refusal budget.
    let mut silent = Vec::new();
    for _ in 0..REFUSALS_IN_FLIGHT {
        silent.push(tokio::net::TcpStream::connect(svc.grpc_addr.unwrap()).await.unwrap());
    }
    assert!(common::eventually(5, || svc.oip.connections.refusing() == REFUSALS_IN_FLIGHT).await);
    // One more connection, on another front end, is closed without an answer.
    let mut closed = tokio::net::TcpStream::connect(svc.addr).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), closed.read_to_end(&mut got)).await.expect("closed at once");
    assert!(read.is_err() || got.is_empty(), "answered past the refusal budget: {} bytes", got.len());
    // Once those refusals have timed out, a connection over the cap is answered again.
    assert!(common::eventually(10, || svc.oip.connections.refusing() == 0).await);
    let mut extra = edgeinfer::client::Client::connect(svc.addr, 2).await.unwrap();
    let refused = extra.recv().await.unwrap();
    assert_eq!(refused.status, Status::Overloaded);
    assert!(refused.message.contains("server.max_connections = 1"), "{}", refused.message);
    drop(silent);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cuts_off_a_call_that_stalls_mid_message_after_the_read_timeout() {
    let svc = common::stand_in_service_with(|c| {
        c.server.read_timeout_ms = 300;
        c.server.idle_timeout_ms = 10_000;
    })
    .await;
    let addr = svc.grpc_addr.unwrap();
    // A ModelInfer call whose prefix announces a 1000-byte message; 100 bytes of it, then
    // silence with the stream left open.
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake::<_, _, BoxBody<Bytes, std::convert::Infallible>>(TokioExecutor::new(), TokioIo::new(socket))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut part = vec![0u8];
    part.extend_from_slice(&1000u32.to_be_bytes());
    part.extend_from_slice(&[0; 100]);
    let chunks = futures::stream::iter([Ok(Frame::data(Bytes::from(part)))]).chain(futures::stream::pending());
    let grpc_call = |method: &str| {
        http::Request::post(format!("http://{addr}/inference.GRPCInferenceService/{method}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    };
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(20),
        send.send_request(grpc_call("ModelInfer").body(BodyExt::boxed(StreamBody::new(chunks))).unwrap()),
    )
    .await
    .expect("answered, not left hanging")
    .unwrap();
    let waited = started.elapsed();
    let status = tonic::Status::from_header_map(resp.headers()).expect("a gRPC status in the response headers");
    println!("gRPC {:?} after {waited:?} for a stalled message: {}", status.code(), status.message());
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert_eq!(status.message(), "request not received within 300 ms (server.read_timeout_ms)");
    assert!(waited >= Duration::from_millis(300), "not cut off before the read timeout: {waited:?}");
    // Other connections carry on, and so does this one: its other calls are served.
    let mut c = grpc_client(&svc).await;
    assert_eq!(string_param(&c.model_infer(stand_in_call()).await.unwrap().into_inner(), "model"), "m3");
    let live = futures::stream::iter([Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))]);
    let resp = send.send_request(grpc_call("ServerLive").body(BodyExt::boxed(StreamBody::new(live))).unwrap()).await.unwrap();
    let trailers = resp.into_body().collect().await.unwrap().trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").map(|v| v.to_str().unwrap()), Some("0"), "{trailers:?}");
    // Counted as a timeout, under `unknown` (the model is in the message never received).
    let (_, _, b) = http(svc.http_addr.unwrap(), "GET", "/metrics", &[], vec![]).await;
    let text = String::from_utf8(b.to_vec()).unwrap();
    assert!(text.contains("edgeinfer_requests_total{model=\"unknown\",status=\"timeout\"} 1"), "{text}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_own_timeout_changes_which_rung_serves_it() {
    let svc = common::stand_in_service().await;
    let addr = svc.http_addr.unwrap();
    let png = common::png(16, 16);
    let body = |timeout: Option<u64>| {
        let mut b = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}]});
        if let Some(t) = timeout {
            b["parameters"] = json!({"timeout": t});
        }
        b
    };
    let mut c = grpc_client(&svc).await;
    let grpc = |timeout: Option<i64>| {
        let mut r = grpc_image_request("edgeinfer", "BYTES", vec![1], bytes_to_raw(std::slice::from_ref(&png)));
        if let Some(t) = timeout {
            r.parameters.insert("timeout".into(), int_param(t));
        }
        r
    };
    for _ in 0..3 {
        // Idle, bound T = 200 ms: the best rung (60 ms).
        let (_, r) = infer_json(addr, "edgeinfer", &body(None)).await;
        assert_eq!(r["parameters"]["model"].as_str(), Some("m0"), "{r}");
        let r = c.model_infer(grpc(None)).await.unwrap().into_inner();
        assert_eq!(string_param(&r, "model"), "m0");
        // Its own bound of 20 ms: the 60 ms rung cannot make it; a cheaper one serves.
        let (_, r) = infer_json(addr, "edgeinfer", &body(Some(20_000))).await;
        let m = r["parameters"]["model"].as_str().unwrap().to_string();
        assert!(["m1", "m2", "m3"].contains(&m.as_str()), "timeout 20 ms served by {m}: {r}");
        let r = c.model_infer(grpc(Some(20_000))).await.unwrap().into_inner();
        assert_ne!(string_param(&r, "model"), "m0");
    }
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_deadline_tightens_the_bound_and_is_kept_by_the_server() {
    let svc = common::stand_in_service().await;
    let png = common::png(16, 16);
    let call = |model: &str, grpc_timeout: Option<&str>| {
        let mut r = tonic::Request::new(grpc_image_request(model, "BYTES", vec![1], bytes_to_raw(std::slice::from_ref(&png))));
        if let Some(t) = grpc_timeout {
            r.metadata_mut().insert("grpc-timeout", t.parse().unwrap());
        }
        r
    };
    let mut c = grpc_client(&svc).await;
    for _ in 0..3 {
        // A generous deadline does not loosen T (200 ms): the best rung (60 ms) serves.
        let r = c.model_infer(call("edgeinfer", Some("10S"))).await.unwrap().into_inner();
        assert_eq!(string_param(&r, "model"), "m0");
        // A client that gives up after 50 ms is served within it by a cheaper rung.
        let r = c.model_infer(call("edgeinfer", Some("50m"))).await.unwrap().into_inner();
        assert_ne!(string_param(&r, "model"), "m0");
    }
    // Both workers busy with the 60 ms rung: a call with 5 ms to live cannot be answered in
    // time; the server ends it with DEADLINE_EXCEEDED at its deadline, and carries on.
    let busy: Vec<_> = (0..2)
        .map(|_| {
            let (mut c, r) = (c.clone(), call("m0", None));
            tokio::spawn(async move { c.model_infer(r).await })
        })
        .collect();
    assert!(common::eventually(5, || svc.engine.in_system() == 2).await, "both workers busy");
    // A bare HTTP/2 client: tonic's Channel would enforce the deadline itself (`Cancelled`), and
    // what is checked here is the server's doing.
    let mut bare = edgeinfer::server::grpc::connect(svc.grpc_addr.unwrap()).await.unwrap();
    let e = bare.model_infer(call("edgeinfer", Some("5m"))).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{}", e.message());
    assert_eq!(e.message(), "no answer within the call's deadline of 5 ms (grpc-timeout)");
    for b in busy {
        assert_eq!(string_param(&b.await.unwrap().unwrap().into_inner(), "model"), "m0");
    }
    // A malformed header is bad input, answered clearly.
    let e = c.model_infer(call("edgeinfer", Some("soon"))).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("malformed grpc-timeout header 'soon'"), "{}", e.message());
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_answers_what_every_front_end_accepted() {
    let svc = common::stand_in_service().await;
    let (http_addr, png) = (svc.http_addr.unwrap(), common::png(16, 16));
    let mut c = grpc_client(&svc).await;
    // Requests for the 60 ms rung in flight on both front ends when the stop begins.
    let body = json!({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(&png)]}]});
    let h = tokio::spawn(async move { infer_json(http_addr, "m0", &body).await });
    let g = tokio::spawn(async move { c.model_infer(grpc_image_request("m0", "BYTES", vec![1], bytes_to_raw(&[common::png(16, 16)]))).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopped = tokio::spawn(svc.stop());
    let (status, r) = h.await.unwrap();
    assert_eq!((status, r["parameters"]["model"].as_str()), (200, Some("m0")), "{r}");
    let r = g.await.unwrap().expect("the gRPC call in flight is answered").into_inner();
    assert_eq!(string_param(&r, "model"), "m0");
    tokio::time::timeout(Duration::from_secs(30), stopped).await.expect("stops").unwrap();
    // Stopped: nothing listens any more.
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
}

/// A gRPC peer that stops inside an HTTP/2 frame or header block, before any call exists that a
/// status could answer, is cut off after `server.read_timeout_ms`, as the binary protocol cuts
/// off a half-sent frame; one quiet between frames is idle and stays until the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_cuts_off_a_peer_that_stalls_inside_a_frame_or_header_block() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let svc = common::stand_in_service_with(|c| {
        c.server.read_timeout_ms = 300;
        c.server.idle_timeout_ms = 10_000;
    })
    .await;
    let addr = svc.grpc_addr.unwrap();
    let frame = |ty: u8, flags: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags, 0, 0, 0, if ty == 0x4 { 0 } else { 1 }];
        f.extend_from_slice(payload);
        f
    };
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, &[])); // an empty SETTINGS frame
                                        // How long the server keeps a connection that sent `bytes` and then went quiet (capped).
    let kept_for = |bytes: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let started = std::time::Instant::now();
        let mut sink = [0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        (closed.is_ok(), started.elapsed())
    };
    // Stopped 5 bytes into a frame header.
    let mut half_header = opening.clone();
    half_header.extend_from_slice(&frame(0x1, 0x4, &[0; 8])[..5]);
    // A HEADERS frame without END_HEADERS, its CONTINUATION never sent.
    let mut open_block = opening.clone();
    open_block.extend(frame(0x1, 0, &[0x82]));
    // Half the preface.
    let half_preface = opening[..12].to_vec();
    for (what, bytes) in [("half a frame header", half_header), ("an open header block", open_block), ("half the preface", half_preface)] {
        let (closed, after) = kept_for(bytes).await;
        assert!(closed, "{what}: still open after {after:?}");
        assert!(after >= Duration::from_millis(250), "{what}: cut off before the read timeout, after {after:?}");
    }
    // Quiet at a frame boundary: idle, not stalled, so still open when the test stops watching.
    let (closed, after) = kept_for(opening).await;
    assert!(!closed, "a connection quiet between frames was closed after {after:?}");
    // And the server carries on.
    let mut c = grpc_client(&svc).await;
    assert_eq!(string_param(&c.model_infer(stand_in_call()).await.unwrap().into_inner(), "model"), "m3");
    svc.stop().await;
}

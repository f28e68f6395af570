//! The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` (proto/
//! grpc_predict_v2.proto) on tonic. Messages are translated to and from `oip.rs`'s types, which
//! do the validation and enter the engine. Limits: the token in the `authorization` metadata
//! (`Bearer TOKEN`), `server.max_frame_bytes` as the largest message (tonic checks its length
//! prefix before buffering it and answers `OUT_OF_RANGE`), `server.max_connections`, and the idle and write timeouts
//! (`guarded.rs`). Shutdown stops accepting and lets calls in flight finish.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status};

use super::guarded::Guarded;
use super::oip::{self, Data, InferRequest, InputTensor, Kind, Listener, Oip, OipError, OutData, Param, RequestedOutput, Target};

/// The generated messages, server and client (the client serves tests and `bench frontends`).
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::infer_parameter::ParameterChoice;
use proto::model_infer_response::InferOutputTensor;
use proto::*;

fn open_grpc(o: &Oip) -> &AtomicUsize {
    &o.connections.grpc
}

/// Serves until `shutdown`, then waits for the calls in flight.
pub async fn run(l: Listener, shutdown: CancellationToken) {
    let oip = l.oip.clone();
    let max_message = oip.limits.max_frame_bytes;
    let incoming = futures::stream::unfold((l.socket, oip.clone()), |(listener, oip)| async move {
        loop {
            match listener.accept().await {
                Ok((socket, _)) => {
                    let _ = socket.set_nodelay(true);
                    // Over the cap the connection is closed before HTTP/2 starts: gRPC has no
                    // way to answer a connection it has not accepted.
                    if open_grpc(&oip).load(Ordering::Relaxed) >= oip.limits.max_connections {
                        oip.telemetry.count_refused_connection();
                        continue;
                    }
                    let io = Guarded::new(socket, oip.limits.idle_timeout, oip.limits.write_timeout, Some((oip.clone(), open_grpc)));
                    return Some((Ok::<_, std::io::Error>(io), (listener, oip)));
                }
                Err(e) => {
                    tracing::warn!("grpc accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    let service = GrpcInferenceServiceServer::new(Grpc { oip }).max_decoding_message_size(max_message).max_encoding_message_size(usize::MAX);
    let served =
        tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::error!("grpc server stopped: {e}");
    }
}

struct Grpc {
    oip: Arc<Oip>,
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
            Some(bytes) => oip::raw_to_data(&i.name, &i.datatype, Bytes::from(bytes))?,
            None => {
                let c = i.contents.unwrap_or_default();
                match i.datatype.as_str() {
                    "BYTES" if !c.bytes_contents.is_empty() => Data::Bytes(c.bytes_contents.into_iter().map(Bytes::from).collect()),
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
    Ok(InferRequest { model: r.model_name, version: r.model_version, id: r.id, inputs, outputs, timeout_us, binary_output: false })
}

/// The protocol's response as a `ModelInferResponse`, every output in `raw_output_contents`
/// (what Triton sends and its clients read).
pub fn to_response(r: oip::InferResponse) -> ModelInferResponse {
    let mut raw = Vec::with_capacity(r.outputs.len());
    let outputs = r
        .outputs
        .into_iter()
        .map(|o| {
            raw.push(o.data.to_raw());
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
    let raw = Bytes::from(r.raw_output_contents.get(index)?.clone());
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
        let request = self.authorize(&r).and_then(|()| to_request(r.into_inner()));
        let request = match request {
            Ok(req) => req,
            Err(e) => {
                self.oip.record_failure(Some(&model), &e, arrival);
                return Err(status(&e));
            }
        };
        match self.oip.infer(request, arrival).await {
            Ok(resp) => Ok(Response::new(to_response(resp))),
            Err(e) => Err(status(&e)),
        }
    }
}

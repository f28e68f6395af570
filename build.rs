//! Compiles proto/grpc_predict_v2.proto (the Open Inference Protocol's gRPC service) into Rust.
//! `protox` parses it in pure Rust, so a build needs only cargo: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Server and client: the client drives the tests and `bench frontends`. The tensor bytes
    // (images in, probabilities out) are `bytes::Bytes`, not `Vec<u8>`: decoding then slices
    // the message buffer tonic already holds instead of copying each image once more, and the
    // engine takes the image as `Bytes` as it is.
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        .bytes(".inference.InferTensorContents.bytes_contents")
        .compile_fds(descriptors)?;
    Ok(())
}

//! Compiles proto/grpc_predict_v2.proto (the Open Inference Protocol's gRPC service) into Rust.
//! `protox` parses it in pure Rust, so a build needs only cargo: no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Server and client: the client drives the tests and `bench frontends`.
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(descriptors)?;
    Ok(())
}

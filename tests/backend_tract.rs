//! The tract fallback serves real requests. Its own test binary (= process), because the
//! inference backend is chosen once per process.

mod common;

use edgeinfer::client::Client;
use edgeinfer::config::BackendChoice;
use edgeinfer::engine::backend::BackendKind;
use edgeinfer::protocol::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tract_backend_serves_requests() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(dir.path(), BackendChoice::Tract).await;
    assert_eq!(svc.engine.backend.name, BackendKind::Tract);
    assert!(svc.engine.backend.fallback_reason.is_none(), "tract was asked for, not fallen back to");
    let mut c = Client::connect(svc.addr, 1).await.unwrap();
    for size in [96, 50, 200] {
        let r = c.infer(common::jpeg(size, size).into(), size as u16).await.unwrap();
        assert_eq!(r.status, Status::Ok, "{}", r.message);
        assert_eq!(r.top.len(), 5);
        let sum: f32 = r.top.iter().map(|c| c.score).sum();
        assert!(sum > 0.0 && sum <= 1.0001, "top-5 are probabilities: {sum}");
    }
    // Asking for ONNX Runtime in a process that already runs tract is a clear error.
    let mut cfg = common::config(dir.path(), BackendChoice::Onnxruntime);
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    let err = edgeinfer::service::Service::start(cfg).await.err().expect("backend clash is refused");
    assert!(format!("{err:#}").contains("already initialised as tract"), "{err:#}");
    svc.stop().await;
}

//! ONNX Runtime, loaded at run time, serves real requests. When `EDGEINFER_EXPECT_ORT=1` (CI
//! sets it) a fallback to tract is a failure rather than a skip.

mod common;

use edgeinfer::client::Client;
use edgeinfer::config::BackendChoice;
use edgeinfer::engine::backend::BackendKind;
use edgeinfer::protocol::Status;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnxruntime_backend_serves_requests() {
    let expected = std::env::var("EDGEINFER_EXPECT_ORT").is_ok_and(|v| v == "1");
    let dir = tempfile::tempdir().unwrap();
    let cfg = common::config(dir.path(), if expected { BackendChoice::Onnxruntime } else { BackendChoice::Auto });
    let svc = edgeinfer::service::Service::start(cfg).await.expect("service starts");
    if svc.engine.backend.name != BackendKind::Onnxruntime {
        eprintln!("SKIPPED: ONNX Runtime unavailable here: {:?}", svc.engine.backend.fallback_reason);
        svc.stop().await;
        return;
    }
    assert!(svc.engine.backend.version.starts_with("1."), "{}", svc.engine.backend.version);
    let mut c = Client::connect(svc.addr, 1).await.unwrap();
    let r = c.infer(common::png(120, 80).into(), 120).await.unwrap();
    assert_eq!(r.status, Status::Ok, "{}", r.message);
    assert_eq!(r.top.len(), 5);
    svc.stop().await;
}

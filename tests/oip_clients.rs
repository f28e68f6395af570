//! The Open Inference Protocol and /metrics against the real clients people use:
//! `tritonclient[http,grpc]` (Python, from PyPI), `curl`, and Debian's `prometheus` package
//! (`promtool check metrics`, and a real Prometheus server scraping edgeinfer, queried through
//! its HTTP API). `.ci/run` installs them; the Python venv is `$EDGEINFER_CI_VENV` (default
//! `target/ci-venv`). Locally a missing tool skips the test with the reason; under CI
//! (`CI=true`) it fails instead.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use edgeinfer::config::{BackendChoice, Config};
use edgeinfer::service::Service;
use serde_json::Value;

/// Why a tool is missing, or `None` when it runs. Under CI a missing tool is a failure.
fn require(what: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else { return true };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is required under CI: {why} (.ci/run installs it)");
    }
    eprintln!("SKIPPED: {what}: {why}");
    false
}

fn venv_python() -> PathBuf {
    let venv =
        std::env::var_os("EDGEINFER_CI_VENV").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-venv"));
    venv.join("bin/python")
}

fn tool_missing(cmd: &str, args: &[&str]) -> Option<String> {
    match Command::new(cmd).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`{cmd} {}` exited with {s}", args.join(" "))),
        Err(e) => Some(format!("cannot run {cmd}: {e}")),
    }
}

/// Whether every one of these commands runs (`--version`); see [`require`].
fn have(tools: &[&str]) -> bool {
    tools.iter().all(|t| require(t, tool_missing(t, &["--version"])))
}

/// Runs curl off the async runtime (the server under test shares it): (succeeded, stdout).
async fn curl(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(&args).output().expect("curl runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await
    .unwrap()
}

fn tiny_config(dir: &Path) -> Config {
    common::config(dir, BackendChoice::Auto)
}

const CLIENT_SCRIPT: &str = r#"
import base64, sys
import numpy as np
import tritonclient.http as th
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

http_url, grpc_url, jpeg_path, stand_in_http, stand_in_grpc, capped_grpc = sys.argv[1:7]
jpeg = open(jpeg_path, "rb").read()
image = np.array([jpeg], dtype=np.object_)

def check(cond, what):
    if not cond:
        raise SystemExit("FAILED: " + what)
    print("ok:", what)

h = th.InferenceServerClient(http_url)
g = tg.InferenceServerClient(grpc_url)
check(h.is_server_live() and h.is_server_ready() and h.is_model_ready("edgeinfer"), "http health")
check(g.is_server_live() and g.is_server_ready() and g.is_model_ready("tiny_64"), "grpc health")
meta = h.get_model_metadata("edgeinfer")
check(meta["inputs"][0]["name"] == "image" and meta["inputs"][0]["datatype"] == "BYTES", "http metadata %s" % meta)
gmeta = g.get_model_metadata("tiny_32", as_json=True)
check(gmeta["inputs"][1]["datatype"] == "FP32", "grpc metadata %s" % gmeta)
check(h.get_model_config("edgeinfer")["name"] == "edgeinfer", "http config")
check("binary_tensor_data" in h.get_server_metadata()["extensions"], "extensions")

def http_infer(model, binary, class_count=0, **kw):
    i = th.InferInput("image", [1], "BYTES")
    if binary:
        i.set_data_from_numpy(image, binary_data=True)
    else:  # JSON: the image as a base64 string
        i.set_data_from_numpy(np.array([base64.b64encode(jpeg).decode()], dtype=np.object_), binary_data=False)
    o = th.InferRequestedOutput("probabilities", binary_data=binary, class_count=class_count)
    return h.infer(model, [i], outputs=[o], **kw)

def grpc_infer(model, class_count=0, client=g, **kw):
    i = tg.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(image)
    o = tg.InferRequestedOutput("probabilities", class_count=class_count)
    return client.infer(model, [i], outputs=[o], **kw)

for model, rung in [("edgeinfer", None), ("tiny_64", "tiny_64")]:
    for binary in (True, False):
        r = http_infer(model, binary)
        p = r.as_numpy("probabilities")
        served = r.get_response()["parameters"]["model"]
        check(p.shape[0] == 1 and abs(float(p.sum()) - 1.0) < 1e-3 and (rung is None or served == rung),
              "http %s %s: shape %s, served by %s" % (model, "binary" if binary else "json", p.shape, served))
        top = http_infer(model, binary, class_count=3).as_numpy("probabilities")
        check(top.shape == (1, 3) and all(len(x.split(b":") if isinstance(x, bytes) else x.split(":")) == 3 for x in top[0]),
              "http %s class_count=3: %s" % (model, top))
    r = grpc_infer(model)
    served = r.get_response().parameters["model"].string_param
    check(r.as_numpy("probabilities").shape[0] == 1 and (rung is None or served == rung), "grpc %s served by %s" % (model, served))
    top = grpc_infer(model, class_count=2).as_numpy("probabilities")
    check(top.shape == (1, 2) and float(top[0][0].split(b":")[0]) >= float(top[0][1].split(b":")[0]), "grpc %s class_count=2: %s" % (model, top))

# A rung with an FP32 tensor in its own input shape.
t = th.InferInput("input", [1, 3, 32, 32], "FP32")
t.set_data_from_numpy(np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32))
r = h.infer("tiny_32", [t])
check(r.get_response()["parameters"]["model"] == "tiny_32", "http FP32 tensor to a rung")
t = tg.InferInput("input", [1, 3, 32, 32], "FP32")
t.set_data_from_numpy(np.zeros((1, 3, 32, 32), dtype=np.float32))
check(g.infer("tiny_32", [t]).get_response().parameters["model"].string_param == "tiny_32", "grpc FP32 tensor to a rung")

# Bad input: a clear error, and the server carries on.
for client, name in [(h, "http"), (g, "grpc")]:
    lib = th if client is h else tg
    bad = lib.InferInput("image", [1], "FP32")
    bad.set_data_from_numpy(np.array([1.0], dtype=np.float32))
    try:
        client.infer("edgeinfer", [bad])
        check(False, name + " wrong datatype refused")
    except InferenceServerException as e:
        check("must be BYTES" in e.message(), name + " wrong datatype refused: " + e.message())
    try:
        client.infer("nonesuch", [bad])
        check(False, name + " unknown model refused")
    except InferenceServerException as e:
        check("unknown model" in e.message(), name + " unknown model refused: " + e.message())

# A request's own timeout changes which rung serves (stand-in rungs: 60, 10, 5, 2.5 ms; T 200 ms).
sh = th.InferenceServerClient(stand_in_http)
sg = tg.InferenceServerClient(stand_in_grpc)
def stand_in(client, lib, **kw):
    i = lib.InferInput("image", [1], "BYTES")
    i.set_data_from_numpy(image, **({"binary_data": True} if lib is th else {}))
    r = client.infer("edgeinfer", [i], **kw)
    params = r.get_response()["parameters"] if lib is th else {"model": r.get_response().parameters["model"].string_param}
    return params["model"]
for client, lib in [(sh, th), (sg, tg)]:
    slow = stand_in(client, lib)
    fast = stand_in(client, lib, timeout=20000)
    check(slow == "m0" and fast != "m0", "%s: no timeout -> %s, timeout 20 ms -> %s" % (lib.__name__, slow, fast))
# A server with server.max_connections = 1 and server.max_frame_bytes = 64 KiB: what a
# tritonclient user sees over those limits. (A local subchannel pool: grpcio would otherwise
# share one connection between the two clients.)
own = [("grpc.use_local_subchannel_pool", 1)]
inside = tg.InferenceServerClient(capped_grpc, channel_args=own)
check(inside.is_server_live(), "grpc: the connection inside the cap is served")
try:
    tg.InferenceServerClient(capped_grpc, channel_args=own).is_server_live()
    check(False, "grpc: a connection over the cap is refused")
except InferenceServerException as e:
    check("server.max_connections" in e.message(), "grpc: a connection over the cap is refused: " + e.message())
big = tg.InferInput("image", [1], "BYTES")
big.set_data_from_numpy(np.array([b"\xff" * 100_000], dtype=np.object_))
try:
    inside.infer("edgeinfer", [big])
    check(False, "grpc: an oversize message is refused")
except InferenceServerException as e:
    check("server.max_frame_bytes" in e.message(), "grpc: an oversize message is refused: " + e.message())
check(stand_in(inside, tg) == "m0", "grpc: the connection inside the cap carries on")
print("ALL OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_http_and_grpc_classify_through_the_ladder_and_a_rung() {
    let python = venv_python();
    let missing = match Command::new(&python).args(["-c", "import tritonclient.http, tritonclient.grpc, numpy"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!("{} cannot import tritonclient: {}", python.display(), String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Some(format!("no Python venv at {}: {e}", python.display())),
    };
    if !require("tritonclient[http,grpc]", missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(tiny_config(dir.path())).await.unwrap();
    let stand_in = common::stand_in_service().await;
    let capped = common::stand_in_service_with(|c| {
        c.server.max_connections = 1;
        c.server.max_frame_bytes = 64 * 1024;
    })
    .await;
    let jpeg = dir.path().join("photo.jpg");
    std::fs::write(&jpeg, common::jpeg(80, 60)).unwrap();
    let script = dir.path().join("clients.py");
    std::fs::write(&script, CLIENT_SCRIPT).unwrap();
    let args: Vec<String> = vec![
        script.display().to_string(),
        svc.http_addr.unwrap().to_string(),
        svc.grpc_addr.unwrap().to_string(),
        jpeg.display().to_string(),
        stand_in.http_addr.unwrap().to_string(),
        stand_in.grpc_addr.unwrap().to_string(),
        capped.grpc_addr.unwrap().to_string(),
    ];
    // Off the runtime the servers under test share; bounded, so a hung client fails the test.
    let run = tokio::task::spawn_blocking(move || Command::new(&python).args(&args).output());
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("clients finish in time").unwrap().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success() && stdout.contains("ALL OK"), "tritonclient script failed:\n{stdout}\n{stderr}");
    svc.stop().await;
    stand_in.stop().await;
    capped.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_health_and_metadata_and_promtool_accepts_the_metrics() {
    if !have(&["curl", "promtool"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(tiny_config(dir.path())).await.unwrap();
    let base = format!("http://{}", svc.http_addr.unwrap());
    for path in ["/v2/health/live", "/v2/health/ready", "/v2/models/edgeinfer/ready"] {
        let (ok, _) = curl(vec!["-f".into(), format!("{base}{path}")]).await;
        assert!(ok, "{path}");
    }
    let (ok, body) = curl(vec!["-f".into(), format!("{base}/v2")]).await;
    let server: Value = serde_json::from_str(&body).unwrap();
    assert!(ok && server["name"] == "edgeinfer", "{body}");
    let (ok, body) = curl(vec!["-f".into(), format!("{base}/v2/models/edgeinfer")]).await;
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert!(ok && meta["inputs"][0]["name"] == "image" && meta["outputs"][0]["name"] == "probabilities", "{body}");
    let (ok, body) = curl(vec!["-f".into(), format!("{base}/v2/models/tiny_96/config")]).await;
    assert!(ok && body.contains("\"max_batch_size\":0"), "{body}");
    // Unknown model: curl sees the status and the JSON error.
    let (_, body) = curl(vec!["-w".into(), " %{http_code}".into(), format!("{base}/v2/models/nonesuch")]).await;
    assert!(body.contains("unknown model") && body.ends_with(" 404"), "{body}");
    // An inference with curl and a JSON body, then the metrics through promtool.
    let png = common::png(32, 32);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let body = format!(
        r#"{{"inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","data":["{b64}"]}}],"outputs":[{{"name":"probabilities","parameters":{{"classification":2}}}}]}}"#
    );
    let (ok, out) = curl(vec![
        "-f".into(),
        "-H".into(),
        "Content-Type: application/json".into(),
        "-d".into(),
        body,
        format!("{base}/v2/models/edgeinfer/infer"),
    ])
    .await;
    assert!(ok && out.contains("\"datatype\":\"BYTES\""), "{out}");
    let (ok, metrics) = curl(vec!["-f".into(), format!("{base}/metrics")]).await;
    assert!(ok && metrics.contains("edgeinfer_requests_total{model=\"edgeinfer\",status=\"ok\"} 1"), "{metrics}");
    let mut check =
        Command::new("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    std::io::Write::write_all(&mut check.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "promtool check metrics: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    svc.stop().await;
}

/// Kills the Prometheus server when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_request_count_sent() {
    if !have(&["prometheus", "curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let svc = Service::start(tiny_config(dir.path())).await.unwrap();
    let target: SocketAddr = svc.http_addr.unwrap();
    // Send a known number of requests to the ladder over HTTP.
    const SENT: usize = 7;
    let png = common::png(32, 32);
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &png);
    let body = format!(r#"{{"inputs":[{{"name":"image","shape":[1],"datatype":"BYTES","data":["{b64}"]}}]}}"#);
    for _ in 0..SENT {
        let (ok, out) = curl(vec!["-f".into(), "-d".into(), body.clone(), format!("http://{target}/v2/models/edgeinfer/infer")]).await;
        assert!(ok, "{out}");
    }
    // The scrape configuration the README shows, pointed at this server.
    let port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: edgeinfer\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts"),
    );
    let query = "http://127.0.0.1:{port}/api/v1/query?query=sum(edgeinfer_requests_total%7Bmodel%3D%22edgeinfer%22%7D)"
        .replace("{port}", &port.to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let (ok, out) = curl(vec![query.clone()]).await;
        if ok {
            let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            if let Some(n) = v["data"]["result"][0]["value"][1].as_str() {
                if n == SENT.to_string() {
                    println!("Prometheus: sum(edgeinfer_requests_total{{model=\"edgeinfer\"}}) = {n}");
                    break;
                }
            }
            last = out;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never returned {SENT}; last answer: {last}\nlog: {}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    svc.stop().await;
}

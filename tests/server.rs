//! End-to-end tests of the server on loopback with real inference (ONNX Runtime when it can be
//! found or fetched, tract otherwise), including every kind of bad input.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgeinfer::client::Client;
use edgeinfer::config::BackendChoice;
use edgeinfer::dispatch::policy::PolicyName;
use edgeinfer::protocol::{Request, Response, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn request_body(id: u64, version: u8, image: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    Request { request_id: id, client_id: 1, resolution: 64, token: String::new(), image: Bytes::copy_from_slice(image) }.encode(&mut b);
    b[0] = version;
    b.freeze()
}

/// `body` behind its 4-byte big-endian length: one frame as it goes on the wire.
fn framed(body: &[u8]) -> Vec<u8> {
    [&(body.len() as u32).to_be_bytes()[..], body].concat()
}

/// Reads one raw response frame, or `None` when the server closed the connection.
async fn read_frame(s: &mut TcpStream) -> Option<Response> {
    let len = tokio::time::timeout(Duration::from_secs(10), s.read_u32()).await.expect("server answers in time").ok()?;
    let mut body = vec![0; len as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(Response::decode(&body).unwrap())
}

async fn assert_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(n, Ok(0) | Err(_)), "connection should be closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_requests_and_survives_every_kind_of_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(dir.path(), BackendChoice::Auto).await;
    let addr = svc.addr;
    let mut good = Client::connect(addr, 1).await.unwrap();

    // A normal request: top-5, the most accurate model on an idle server, timings that add up.
    let r = good.infer(common::jpeg(64, 64).into(), 64).await.unwrap();
    assert_eq!(r.status, Status::Ok, "{}", r.message);
    let m = r.model.as_ref().unwrap();
    assert_eq!((m.index, m.name.as_str(), m.accuracy), (0, "tiny_96", 50.0));
    assert_eq!(r.top.len(), 5);
    assert!(r.top.windows(2).all(|w| w[0].score >= w[1].score));
    assert!(r.timings.inference_us > 0 && r.timings.total_us >= r.timings.inference_us);

    // Bad requests on one connection each get an error response, and the connection reads on.
    let mut c = TcpStream::connect(addr).await.unwrap();
    let png = common::png(40, 30);
    let cases: Vec<(Bytes, Status, &str)> = vec![
        (request_body(11, 7, &png), Status::BadRequest, "version 7"),
        (request_body(12, 1, b"definitely not an image"), Status::BadRequest, "JPEG or PNG"),
        (request_body(13, 1, b""), Status::BadRequest, "empty image"),
        (request_body(14, 1, &huge_png_header(100_000, 100_000)), Status::TooLarge, "pixels"),
        // So large that the PNG decoder's own allocation limit would object first; the cap from
        // the header answers instead, as promised (`too_large`, not `bad_request`).
        (request_body(17, 1, &huge_png_header(2_147_483_647, 1)), Status::TooLarge, "2147483647x1"),
        (Bytes::from_static(&[1, 0, 0]), Status::BadRequest, "shorter"),
        (request_body(15, 1, &png[..png.len() / 2]), Status::BadRequest, "decode"),
        (request_body(16, 1, &png), Status::Ok, ""),
    ];
    for (body, status, needle) in cases {
        c.write_all(&framed(&body)).await.unwrap();
        let r = read_frame(&mut c).await.expect("answered, not closed");
        assert_eq!(r.status, status, "{needle}: {}", r.message);
        assert!(r.message.contains(needle), "{:?} should mention {needle:?}", r.message);
        if body.len() >= 12 {
            assert_eq!(r.request_id, u64::from_be_bytes(body[4..12].try_into().unwrap()));
        }
    }

    // The server sizes its read buffer from the length prefix when a whole prefix has arrived.
    // A frame that arrives in pieces (the prefix itself split), and two frames in one write,
    // are read all the same.
    let frame = framed(&request_body(21, 1, &png));
    for piece in [&frame[..1], &frame[1..3], &frame[3..9], &frame[9..]] {
        c.write_all(piece).await.unwrap();
        c.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = read_frame(&mut c).await.expect("answered, not closed");
    assert_eq!((r.status, r.request_id), (Status::Ok, 21), "{}", r.message);
    let two = [framed(&request_body(22, 1, &png)), framed(&request_body(23, 1, b"not an image"))].concat();
    c.write_all(&two).await.unwrap();
    let (a, b) = (read_frame(&mut c).await.expect("first answered"), read_frame(&mut c).await.expect("second answered"));
    assert_eq!((a.status, a.request_id, b.status, b.request_id), (Status::Ok, 22, Status::BadRequest, 23));

    // A frame over the limit is refused from its length alone: the body is never sent.
    let mut big = TcpStream::connect(addr).await.unwrap();
    big.write_u32(100 * 1024 * 1024).await.unwrap();
    let r = read_frame(&mut big).await.expect("too_large answer before any body byte");
    assert_eq!(r.status, Status::TooLarge);
    assert!(r.message.contains("limit"));
    assert_closed(&mut big).await;

    // A truncated frame (peer announces 1000 bytes, sends 10, half-closes): closed, nothing else hurt.
    let mut trunc = TcpStream::connect(addr).await.unwrap();
    trunc.write_u32(1000).await.unwrap();
    trunc.write_all(&[1; 10]).await.unwrap();
    trunc.shutdown().await.unwrap();
    assert_closed(&mut trunc).await;

    // Peer gone mid-request: sends a full request and disconnects without reading.
    let mut gone = TcpStream::connect(addr).await.unwrap();
    gone.write_all(&framed(&request_body(99, 1, &png))).await.unwrap();
    drop(gone);

    // Everyone else carries on.
    for _ in 0..5 {
        let r = good.infer(common::png(50, 50).into(), 50).await.unwrap();
        assert_eq!(r.status, Status::Ok);
    }
    // 18 answered: the request whose peer hung up mid-request was abandoned, not answered.
    assert!(common::eventually(5, || svc.telemetry.totals().requests >= 18).await);
    let totals = svc.telemetry.totals();
    assert!(totals.errors >= 9, "errors counted: {:?}", totals.errors_by_status);
    assert_eq!(totals.errors_by_status.get("too_large"), Some(&3));
    assert_eq!(svc.engine.dispatcher.snapshot().iter().map(|q| q.depth).sum::<usize>(), 0);
    svc.stop().await;
}

/// A PNG whose header claims `w` x `h` pixels and which has no more pixel data than 1 x 1.
fn huge_png_header(w: u32, h: u32) -> Vec<u8> {
    let mut p = common::png(1, 1);
    p[16..20].copy_from_slice(&w.to_be_bytes());
    p[20..24].copy_from_slice(&h.to_be_bytes());
    // Keep the IHDR chunk's CRC valid, so only the size can be objected to.
    let crc = crc32fast::hash(&p[12..29]);
    p[29..33].copy_from_slice(&crc.to_be_bytes());
    p
}

/// `clients` concurrent closed loops of `each` JPEG requests at `side` px; every answer must be
/// `ok`. Returns the ladder index that served each request.
async fn load(addr: std::net::SocketAddr, clients: u32, each: usize, side: u32) -> Vec<u16> {
    load_or_shed(addr, clients, each, side, false).await.into_iter().map(|m| m.expect("served")).collect()
}

/// [`load`], where `shed` also allows `overloaded` answers (`None`).
async fn load_or_shed(addr: std::net::SocketAddr, clients: u32, each: usize, side: u32, shed: bool) -> Vec<Option<u16>> {
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(async move {
                let mut c = Client::connect(addr, i).await.unwrap();
                let mut models = Vec::with_capacity(each);
                for _ in 0..each {
                    let r = c.infer(common::jpeg(side, side).into(), side as u16).await.unwrap();
                    if shed && r.status == Status::Overloaded {
                        models.push(None);
                        continue;
                    }
                    assert_eq!(r.status, Status::Ok, "{}", r.message);
                    models.push(Some(r.model.unwrap().index));
                }
                models
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paper_spreads_concurrent_clients_down_the_ladder_under_a_tight_bound() {
    let dir = tempfile::tempdir().unwrap();
    // The paper's rule: the last queue always accepts, so even an infeasible bound answers all.
    let mut cfg = common::config(dir.path(), BackendChoice::Auto);
    cfg.dispatch.policy = PolicyName::Paper;
    let svc = edgeinfer::service::Service::start(cfg).await.unwrap();
    // A bound below the most accurate model's own cost pushes requests down the ladder.
    let ewma0 = svc.engine.dispatcher.snapshot()[0].ewma_us / 1000.0;
    svc.engine.dispatcher.set_bound_ms(ewma0 * 0.9);
    let mut served = [0usize; 3];
    for m in load(svc.addr, 8, 10, 64).await {
        served[m as usize] += 1;
    }
    assert_eq!(served.iter().sum::<usize>(), 80);
    assert!(served[1] + served[2] > 0, "tight bound must use cheaper models: {served:?}");
    assert!(common::eventually(5, || svc.telemetry.totals().requests == 80).await);
    let totals = svc.telemetry.totals();
    assert_eq!((totals.requests, totals.errors), (80, 0));
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_answers_what_was_read() {
    let dir = tempfile::tempdir().unwrap();
    let svc = common::start(dir.path(), BackendChoice::Auto).await;
    let addr = svc.addr;
    let mut c = Client::connect(addr, 5).await.unwrap();
    let r = c.infer(common::png(64, 64).into(), 64).await.unwrap();
    assert_eq!(r.status, Status::Ok);
    svc.stop().await;
    // After stop: the old connection is closed and new ones are refused.
    assert!(c.infer(common::png(64, 64).into(), 64).await.is_err());
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_policy_serves_from_the_shared_executor_and_moves_down_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config(dir.path(), BackendChoice::Auto);
    cfg.dispatch.policy = PolicyName::Deadline;
    cfg.engine.pool_workers = 2;
    let svc = edgeinfer::service::Service::start(cfg).await.unwrap();
    assert!(svc.engine.is_shared());
    assert_eq!(svc.engine.policy_name(), "deadline");
    // Idle, with a generous bound (so a loaded test machine cannot eat it): the most accurate model.
    svc.engine.dispatcher.set_bound_ms(1_000.0);
    let mut c = Client::connect(svc.addr, 1).await.unwrap();
    let r = c.infer(common::png(96, 96).into(), 96).await.unwrap();
    assert_eq!((r.status, r.model.unwrap().index), (Status::Ok, 0));
    // A bound tighter than the best model's cost: cheaper models, or `overloaded` for requests
    // that no model can serve within it while others wait (never an error of another kind).
    let ewma0 = svc.engine.dispatcher.snapshot()[0].ewma_us / 1000.0;
    svc.engine.dispatcher.set_bound_ms(ewma0);
    let answers = load_or_shed(svc.addr, 6, 10, 96, true).await;
    let lower = answers.iter().filter(|m| m.is_some_and(|m| m > 0)).count();
    assert!(lower > 0, "a tight bound must use cheaper models: {answers:?}");
    assert!(common::eventually(5, || svc.telemetry.totals().requests == 61).await);
    let t = svc.telemetry.totals();
    assert_eq!(t.errors, t.errors_by_status.get("overloaded").copied().unwrap_or(0), "{:?}", t.errors_by_status);
    assert_eq!(svc.engine.backlog(), 0);
    svc.stop().await;
}

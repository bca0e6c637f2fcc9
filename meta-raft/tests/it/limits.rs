//! A member's memory under requests that stall part way: bounded by each connection's
//! share and the member's request budget, with other clients served meanwhile.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Frame;
use mobilus_proto::fs::ROOT_INO;
use mobilus_proto::pb;
use mobilus_telemetry::memory::{rss_mib, settled_rss_mib};
use tonic::transport::Channel;

use crate::harness::Cluster;

fn channel(addr: &str) -> Channel {
    mobilus_tls::client::channel(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap(),
        mobilus_tls::Role::Meta,
        &mobilus_tls::client::ClientTls::ProcessDefault,
    )
}

/// A SetXattr request that declares a `message`-byte protobuf, sends all of it but the
/// last byte, then nothing, forever. Resolves only if the member answers first (with
/// its status in the response's headers).
async fn stalled_request(channel: Channel, message: usize) -> Option<String> {
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(message as u32).to_be_bytes());
    let frames = std::iter::once(Bytes::from(prefix)).chain(
        (0..message - 1)
            .step_by(1 << 20)
            .map(move |at| Bytes::from(vec![0x0a; (message - 1 - at).min(1 << 20)])),
    );
    let stream = futures::StreamExt::chain(
        tokio_stream::iter(frames.map(|b| Ok::<_, tonic::Status>(Frame::data(b)))),
        futures::stream::pending(),
    );
    let request = http::Request::builder()
        .method("POST")
        .uri("/mobilus.meta.v1.Meta/SetXattr")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            stream,
        )))
        .unwrap();
    let response = tower::ServiceExt::oneshot(channel, request).await.ok()?;
    response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("?").to_string())
}

/// The value of a counter on a member's metrics endpoint (0 before its first increment).
fn counter(metrics_addr: &str, series: &str) -> u64 {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(metrics_addr).unwrap();
    write!(tcp, "GET /metrics HTTP/1.0\r\nHost: {metrics_addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

fn full_xattr() -> pb::SetXattrRequest {
    pb::SetXattrRequest {
        ino: ROOT_INO,
        name: b"user.full".to_vec(),
        value: vec![7; mobilus_proto::fs::XATTR_VALUE_MAX],
        flags: 0,
        fence: None,
    }
}

/// Clients that start the largest requests on many connections and never finish them
/// have the member hold at most its request budget (the pool for large requests refuses
/// the rest); a client beside them is served, and a large request is served once the
/// stalled requests go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_requests_leave_a_members_memory_bounded_and_others_served() {
    const CONNECTIONS: usize = 6;
    const STREAMS: usize = 8;
    const MESSAGE: usize = mobilus_proto::MAX_MESSAGE_BYTES - (1 << 20);
    const BUDGET_MIB: u64 = 256;
    let tmp = tempfile::tempdir().unwrap();
    let metrics_file = tmp.path().join("metrics-addr");
    let cluster = Cluster::start(
        1,
        &[
            "--request-buffer-mib",
            &BUDGET_MIB.to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--metrics-ready-file",
            metrics_file.to_str().unwrap(),
        ],
    )
    .await;
    let member = &cluster.members[0];
    let metrics_addr = std::fs::read_to_string(&metrics_file).unwrap();
    let metrics_addr = metrics_addr.trim();
    let c = cluster.client();
    c.mkdir(ROOT_INO, b"warm", 0o755, 0, 0, None).await.unwrap();
    let pid = member.pid();
    let before = rss_mib(pid).unwrap();

    let mut stalled = Vec::new();
    for _ in 0..CONNECTIONS {
        let channel = channel(&member.addr);
        for _ in 0..STREAMS {
            stalled.push(tokio::spawn(stalled_request(channel.clone(), MESSAGE)));
        }
    }
    settled_rss_mib(pid).await;
    let held = rss_mib(pid).unwrap();
    let offered = (CONNECTIONS * STREAMS * MESSAGE) as u64 >> 20;
    println!(
        "RSS {before} MiB at start, {held} MiB with {offered} MiB of requests offered on \
         {CONNECTIONS} connections (request budget {BUDGET_MIB} MiB)"
    );
    assert!(
        held < before + BUDGET_MIB + 128,
        "the member holds {held} MiB (started at {before}) with {offered} MiB offered"
    );

    // A small request on its own connection is served at once...
    let t = Instant::now();
    c.mkdir(ROOT_INO, b"beside", 0o755, 0, 0, None)
        .await
        .expect("a mkdir beside the stalled requests");
    c.getattr(ROOT_INO, false).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "served in {:?}",
        t.elapsed()
    );

    // Requests past the budget were refused; the others hang, held. The connections'
    // shares together are more than the budget: its pool for large requests refused.
    let mut refused = 0;
    let mut hanging = Vec::new();
    for s in stalled {
        if s.is_finished() {
            assert_eq!(s.await.unwrap().as_deref(), Some("8"), "RESOURCE_EXHAUSTED");
            refused += 1;
        } else {
            hanging.push(s);
        }
    }
    let by_pool = |pool: &str| {
        counter(
            metrics_addr,
            &format!("mobilus_request_buffer_refused_total{{pool=\"{pool}\"}}"),
        )
    };
    let (large, connection) = (by_pool("large"), by_pool("connection"));
    println!(
        "{refused} refused ({large} by the large requests' pool, {connection} by their \
         connection's share), {} held",
        hanging.len()
    );
    assert!(refused > 0 && !hanging.is_empty(), "{refused} refused");
    assert!(large > 0, "the member's budget never refused");
    // A busy refusal is one a client may retry: nothing was done.
    let mut raw = pb::meta_client::MetaClient::new(channel(&member.addr));
    // Once they go, their room comes back: the large request is served.
    for s in hanging {
        s.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match raw.set_xattr(full_xattr()).await {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("after the stalled requests went: {s}"),
        }
    }
}

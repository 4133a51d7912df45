//! The typed SDK against a real server: the Recorder (batching, retries across a server
//! restart, overflow, flush on shutdown), the RecorderLayer in an axum app, the paging
//! stream and exports to a path.

use std::collections::HashSet;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt};
use reqlog_client::{
    ApiKeyIdentity, ClientError, ClientIp, LogQuery, Overflow, RecordError, Recorder,
    RecorderConfig, RecorderLayer, ReqlogClient, hash_ip, pb,
};
use reqlog_tests::{Backend, TestServer, backend_tests, record};

/// Every row of `account`, through the plain ListLogs call.
async fn all_rows(client: &ReqlogClient, account: &str) -> Vec<pb::LogEntry> {
    let mut rows = Vec::new();
    let mut request = pb::ListLogsRequest {
        account_id: account.into(),
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = client
            .list_logs(request.clone())
            .await
            .expect("listing should work");
        rows.extend(page.logs);
        if page.next_page_token.is_empty() {
            return rows;
        }
        request.page_token = page.next_page_token;
    }
}

/// Polls until `condition` holds; the test's own timeout is the limit (no timed assertion).
async fn eventually(mut condition: impl AsyncFnMut() -> bool) {
    while !condition().await {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn lazy_client(addr: std::net::SocketAddr) -> ReqlogClient {
    ReqlogClient::builder(format!("http://{addr}"))
        .token("test-token")
        .connect_lazy()
        .expect("a loopback endpoint should be valid")
}

async fn recorder_sends_full_batches_without_waiting_for_the_delay(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // A delay no test waits for: only a full batch can be sent before the flush.
    let recorder = Recorder::new(
        lazy_client(server.addr),
        RecorderConfig::default()
            .max_batch(10)
            .max_delay(Duration::from_secs(3_600)),
    );
    for n in 0..13 {
        recorder
            .record(record("acct_batch", n))
            .await
            .expect("the buffer has room");
    }
    eventually(async || all_rows(&server.client, "acct_batch").await.len() >= 10).await;
    assert_eq!(all_rows(&server.client, "acct_batch").await.len(), 10);
    assert_eq!(recorder.stats().sent, 10);

    recorder.flush().await.expect("the recorder is running");
    let rows = all_rows(&server.client, "acct_batch").await;
    assert_eq!(rows.len(), 13);
    // Every record got a request id of its own.
    let ids: HashSet<_> = rows.iter().map(|row| row.request_id.clone()).collect();
    assert_eq!(ids.len(), 13);
    assert!(ids.iter().all(|id| id.len() == 36));

    // Invalid records are counted as rejected, not retried.
    let mut bad = record("acct_batch", 99);
    bad.client_ip = "not-an-ip".into();
    recorder.record(bad).await.expect("the buffer has room");
    recorder.shutdown().await;
    let stats = recorder.stats();
    assert_eq!((stats.sent, stats.rejected, stats.retried), (13, 1, 0));
    assert_eq!(
        recorder.record(record("acct_batch", 1)).await,
        Err(RecordError::Closed)
    );
    server.shutdown().await;
}

async fn recorder_retries_across_a_server_restart_without_duplicates(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let addr = server.addr;
    let recorder = Recorder::new(
        lazy_client(addr),
        RecorderConfig::default()
            .max_batch(4)
            .max_delay(Duration::from_millis(10))
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
            .max_attempts(1_000),
    );
    for n in 0..5 {
        recorder
            .record(record("acct_restart", n))
            .await
            .expect("room");
    }
    recorder.flush().await.expect("running");
    assert_eq!(all_rows(&server.client, "acct_restart").await.len(), 5);

    let test_db = server.stop().await;
    for n in 5..15 {
        recorder
            .record(record("acct_restart", n))
            .await
            .expect("room");
    }
    // The batches fail while the server is down...
    eventually(async || recorder.stats().retried > 0).await;
    // ...and go through once a new server listens on the same address and database.
    let server = TestServer::start_on(test_db, |config| config.listen = addr).await;
    recorder.flush().await.expect("running");
    recorder.shutdown().await;

    let rows = all_rows(&server.client, "acct_restart").await;
    let request_ids: HashSet<_> = rows.iter().map(|row| row.request_id.clone()).collect();
    assert_eq!(rows.len(), 15);
    assert_eq!(request_ids.len(), 15);
    let stats = recorder.stats();
    assert_eq!(stats.sent, 15);
    assert_eq!((stats.failed, stats.dropped, stats.rejected), (0, 0, 0));
    assert!(stats.retried > 0);
    server.shutdown().await;
}

/// A recorder (batches of 1, `capacity` records) aimed at the address of a server that was
/// started and stopped: nothing listens, so its first batch is stuck retrying while the
/// buffer fills. Returns the address and database to start the server again on.
async fn recorder_to_a_stopped_server(
    backend: Backend,
    capacity: usize,
    overflow: Overflow,
) -> Option<(std::net::SocketAddr, reqlog_tests::TestDb, Recorder)> {
    let server = TestServer::start(backend).await?;
    let addr = server.addr;
    let test_db = server.stop().await;
    let recorder = Recorder::new(
        lazy_client(addr),
        RecorderConfig::default()
            .max_batch(1)
            .capacity(capacity)
            .overflow(overflow)
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .max_attempts(1_000),
    );
    Some((addr, test_db, recorder))
}

async fn recorder_drops_and_counts_when_full_and_shutdown_delivers_the_rest(backend: Backend) {
    let Some((addr, test_db, recorder)) =
        recorder_to_a_stopped_server(backend, 5, Overflow::Drop).await
    else {
        return;
    };
    let mut taken = 0;
    let mut refused = 0;
    for n in 0..30 {
        match recorder.record(record("acct_full", n)).await {
            Ok(()) => taken += 1,
            Err(RecordError::Dropped) => refused += 1,
            Err(RecordError::Closed) => panic!("the recorder is running"),
        }
    }
    // The buffer holds 5, the sender at most one batch of 1 more.
    assert!((5..=6).contains(&taken), "took {taken}");
    assert_eq!(recorder.stats().dropped, refused);

    let server = TestServer::start_on(test_db, |config| config.listen = addr).await;
    recorder.shutdown().await;
    assert_eq!(all_rows(&server.client, "acct_full").await.len(), taken);
    assert_eq!(recorder.stats().sent, taken as u64);
    server.shutdown().await;
}

async fn recorder_waits_for_room_under_the_wait_policy(backend: Backend) {
    let Some((addr, test_db, recorder)) =
        recorder_to_a_stopped_server(backend, 2, Overflow::Wait).await
    else {
        return;
    };
    let producer = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            for n in 0..20 {
                recorder
                    .record(record("acct_wait", n))
                    .await
                    .expect("running");
            }
        })
    };
    // The producer cannot finish while nothing is delivered: it waits for room.
    eventually(async || recorder.stats().retried > 0).await;
    assert!(!producer.is_finished());
    let server = TestServer::start_on(test_db, |config| config.listen = addr).await;
    producer.await.expect("the producer should not panic");
    recorder.shutdown().await;
    assert_eq!(all_rows(&server.client, "acct_wait").await.len(), 20);
    assert_eq!(recorder.stats().dropped, 0);
    server.shutdown().await;
}

async fn layer_records_requests_of_an_axum_app(backend: Backend) {
    use axum::Router;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use tower::ServiceExt;

    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let recorder = Recorder::new(lazy_client(server.addr), RecorderConfig::default());
    // The handler names the key (as an inner auth step would), through the response.
    async fn item() -> impl IntoResponse {
        let mut response = (StatusCode::CREATED, "made").into_response();
        response.extensions_mut().insert(ApiKeyIdentity {
            account_id: "acct_layer".into(),
            api_key_id: "key_ext".into(),
            api_key_name: "Production".into(),
            api_key_prefix: "bye_AB12C".into(),
        });
        response
    }
    async fn plain() -> StatusCode {
        StatusCode::SERVICE_UNAVAILABLE
    }
    let app = Router::new()
        .route("/v1/items/{id}", get(item).post(item))
        .route("/v1/plain", get(plain))
        .layer(
            RecorderLayer::new(recorder.clone())
                .identity_headers("x-account-id", "x-api-key-id")
                .client_ip_header("x-forwarded-for"),
        );

    let response = app
        .clone()
        .oneshot(
            Request::post("/v1/items/7?token=secret&page=2")
                .header("user-agent", "layer-test/1.0")
                .header("x-forwarded-for", "203.0.113.10, 10.0.0.1")
                .body(axum::body::Body::empty())
                .expect("a valid request"),
        )
        .await
        .expect("the app should answer");
    assert_eq!(response.status(), StatusCode::CREATED);
    // Identity from headers, IP from an extension.
    let mut request = Request::get("/v1/plain")
        .header("x-account-id", "acct_layer")
        .header("x-api-key-id", "key_header")
        .body(axum::body::Body::empty())
        .expect("a valid request");
    request
        .extensions_mut()
        .insert(ClientIp("2001:db8::1".parse().expect("an IPv6 literal")));
    app.clone()
        .oneshot(request)
        .await
        .expect("the app should answer");
    // No identity: not recorded.
    app.clone()
        .oneshot(
            Request::get("/v1/plain")
                .body(axum::body::Body::empty())
                .expect("a valid request"),
        )
        .await
        .expect("the app should answer");
    recorder.flush().await.expect("running");

    let rows = all_rows(&server.client, "acct_layer").await;
    assert_eq!(rows.len(), 2);
    let post = rows
        .iter()
        .find(|r| r.api_key_id == "key_ext")
        .expect("the POST row");
    assert_eq!(post.method, "POST");
    assert_eq!(post.endpoint, "/v1/items/7");
    let params = post.query_params.as_deref().expect("a query string");
    assert!(
        !params.contains("secret") && params.ends_with("&page=2"),
        "{params}"
    );
    assert_eq!(post.status_code, 201);
    assert_eq!(post.ip_hash, hash_ip("203.0.113.10").expect("an IP"));
    assert_eq!(post.user_agent, "layer-test/1.0");
    assert_eq!(post.api_key_name, "Production");
    let plain = rows
        .iter()
        .find(|r| r.api_key_id == "key_header")
        .expect("the GET row");
    assert_eq!((plain.method.as_str(), plain.status_code), ("GET", 503));
    assert_eq!(plain.ip_hash, hash_ip("2001:DB8:0::1").expect("an IP"));
    recorder.shutdown().await;
    server.shutdown().await;
}

async fn stream_logs_walks_every_page(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let records: Vec<_> = (0..45).map(|n| record("acct_stream", n)).collect();
    server
        .client
        .record_batch(records)
        .await
        .expect("the batch is valid");

    let streamed: Vec<pb::LogEntry> = server
        .client
        .stream_logs(
            LogQuery::new("acct_stream")
                .order_by(pb::LogField::StatusCode, false)
                .page_size(7),
        )
        .try_collect()
        .await
        .expect("every page should load");
    assert_eq!(streamed.len(), 45);
    let ids: HashSet<_> = streamed.iter().map(|row| row.id.clone()).collect();
    assert_eq!(ids.len(), 45);
    assert!(
        streamed
            .windows(2)
            .all(|w| w[0].status_code <= w[1].status_code)
    );

    let gets: Vec<pb::LogEntry> = server
        .client
        .stream_logs(LogQuery::new("acct_stream").method("GET").page_size(2))
        .try_collect()
        .await
        .expect("every page should load");
    assert_eq!(gets.len(), 9);
    assert!(gets.iter().all(|row| row.method == "GET"));

    // A bad filter: one error naming the field, then the stream ends.
    let mut bad = server
        .client
        .stream_logs(LogQuery::new("acct_stream").status_class(pb::StatusClass::Unspecified));
    match bad.try_next().await {
        Err(ClientError::InvalidArgument { violations, .. }) => {
            assert!(
                violations
                    .iter()
                    .any(|v| v.field.contains("status_classes")),
                "{violations:?}"
            );
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
    assert!(futures::StreamExt::next(&mut bad).await.is_none());
    server.shutdown().await;
}

async fn export_to_path_writes_a_verified_file_and_never_a_partial_one(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    for batch in 0..5 {
        let records: Vec<_> = (0..1000)
            .map(|n| {
                let mut r = record("acct_export", batch * 1000 + n);
                r.endpoint = format!("/v1/items/{}/{}", n, "x".repeat(200));
                r
            })
            .collect();
        server
            .client
            .record_batch(records)
            .await
            .expect("the batch is valid");
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("logs.ndjson");
    let summary = server
        .client
        .export_to_path(
            &path,
            pb::ExportFormat::Ndjson,
            &LogQuery::new("acct_export"),
        )
        .await
        .expect("the export should complete");
    let bytes = std::fs::read(&path).expect("the file exists under its name");
    assert_eq!(summary.row_count, 5000);
    assert_eq!(bytes.len() as i64, summary.byte_count);
    assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 5000);
    let names = || -> Vec<_> {
        std::fs::read_dir(dir.path())
            .expect("readable")
            .map(|e| e.expect("an entry").file_name())
            .collect()
    };
    assert_eq!(names(), ["logs.ndjson"]);

    // A refused export leaves no file either.
    let fresh = dir.path().join("new.csv");
    let refused = server
        .client
        .export_to_path(
            &fresh,
            pb::ExportFormat::Csv,
            &LogQuery::new("acct_export").status_class(pb::StatusClass::Unspecified),
        )
        .await;
    assert!(matches!(refused, Err(ClientError::InvalidArgument { .. })));
    assert!(!fresh.exists());
    assert_eq!(names(), ["logs.ndjson"]);
    server.shutdown().await;
}

/// A LogService whose exports stop after two chunks: without a summary, with an error,
/// with a summary that does not match, or never (a stalled stream).
#[derive(Debug, Clone, Copy)]
enum CutOff {
    NoSummary,
    Error,
    WrongSummary,
    Stall,
}

#[tonic::async_trait]
impl pb::log_service_server::LogService for CutOff {
    async fn list_logs(
        &self,
        _: tonic::Request<pb::ListLogsRequest>,
    ) -> Result<tonic::Response<pb::ListLogsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    type ExportLogsStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<pb::ExportLogsResponse, tonic::Status>> + Send>,
    >;

    async fn export_logs(
        &self,
        _: tonic::Request<pb::ExportLogsRequest>,
    ) -> Result<tonic::Response<Self::ExportLogsStream>, tonic::Status> {
        use pb::export_logs_response::Payload;
        let chunk = |text: &str| {
            Ok(pb::ExportLogsResponse {
                payload: Some(Payload::Chunk(text.as_bytes().to_vec())),
            })
        };
        let mut messages = vec![chunk("apikey_name\n"), chunk("Production\n")];
        match self {
            Self::Stall => {
                let stalled = futures::stream::iter(messages).chain(futures::stream::pending());
                return Ok(tonic::Response::new(Box::pin(stalled)));
            }
            Self::NoSummary => {}
            Self::Error => messages.push(Err(tonic::Status::unavailable("database gone"))),
            Self::WrongSummary => messages.push(Ok(pb::ExportLogsResponse {
                payload: Some(Payload::Summary(pb::ExportSummary {
                    row_count: 1,
                    byte_count: 23,
                    sha256: "0".repeat(64),
                })),
            })),
        }
        Ok(tonic::Response::new(Box::pin(futures::stream::iter(
            messages,
        ))))
    }

    async fn get_usage_stats(
        &self,
        _: tonic::Request<pb::GetUsageStatsRequest>,
    ) -> Result<tonic::Response<pb::GetUsageStatsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn hash_ip(
        &self,
        _: tonic::Request<pb::HashIpRequest>,
    ) -> Result<tonic::Response<pb::HashIpResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }
}

#[tokio::test]
async fn a_cut_off_export_leaves_no_file_under_the_final_name() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let existing = dir.path().join("existing.csv");
    std::fs::write(&existing, "earlier export\n").expect("writable");
    for cut_off in [
        CutOff::NoSummary,
        CutOff::Error,
        CutOff::WrongSummary,
        CutOff::Stall,
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("bound");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::log_service_server::LogServiceServer::new(cut_off))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        // The deadline covers the whole stream, so the stalled one ends too.
        let client = ReqlogClient::builder(format!("http://{addr}"))
            .timeout(Duration::from_millis(300))
            .connect()
            .await
            .expect("connects");
        let fresh = dir.path().join("fresh.csv");
        let query = LogQuery::new("acct");
        let result = client
            .export_to_path(&fresh, pb::ExportFormat::Csv, &query)
            .await;
        match (cut_off, &result) {
            (CutOff::NoSummary, Err(ClientError::ExportTruncated { received_bytes: 23 }))
            | (CutOff::Error, Err(ClientError::Unavailable(_)))
            | (CutOff::WrongSummary, Err(ClientError::ExportMismatch { .. })) => {}
            (CutOff::Stall, Err(ClientError::Rpc(status)))
                if status.code() == tonic::Code::DeadlineExceeded => {}
            _ => panic!("{cut_off:?} gave {result:?}"),
        }
        assert!(!fresh.exists(), "{cut_off:?}");
        let result = client
            .export_to_path(&existing, pb::ExportFormat::Csv, &query)
            .await;
        assert!(result.is_err(), "{cut_off:?}");
        assert_eq!(
            std::fs::read_to_string(&existing).expect("still there"),
            "earlier export\n"
        );
        // Only the earlier file: no temporary file is left behind either.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("readable")
            .map(|entry| entry.expect("an entry").file_name())
            .collect();
        assert_eq!(names, ["existing.csv"], "{cut_off:?}");
        server.abort();
    }
}

backend_tests!(
    recorder_sends_full_batches_without_waiting_for_the_delay,
    recorder_retries_across_a_server_restart_without_duplicates,
    recorder_drops_and_counts_when_full_and_shutdown_delivers_the_rest,
    recorder_waits_for_room_under_the_wait_policy,
    layer_records_requests_of_an_axum_app,
    stream_logs_walks_every_page,
    export_to_path_writes_a_verified_file_and_never_a_partial_one,
);

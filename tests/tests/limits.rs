//! Hard limits, each with a clear status: message size on every service, batch size, field
//! lengths, control characters and invalid text, and the server-side deadline.

use std::time::Duration;

use reqlog_client::pb;
use reqlog_tests::auth::{Bearer, Clients};
use reqlog_tests::{Backend, TestServer, backend_tests, record, violated_fields};
use sea_orm::{ConnectOptions, ConnectionTrait, Database};
use tonic::Code;

backend_tests!(
    messages_over_16_mib_are_refused_by_every_service,
    batches_fields_and_control_characters_have_limits,
    text_that_is_not_utf8_is_refused_naming_the_field,
);

const MIB: usize = 1024 * 1024;

async fn messages_over_16_mib_are_refused_by_every_service(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut c = Clients::new(server.channel(), Bearer::none());
    let huge = "x".repeat(17 * MIB);
    let status = c
        .ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(pb::RequestRecord {
                user_agent: huge.clone(),
                ..record("acct_l", 0)
            }),
        })
        .await
        .expect_err("17 MiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    let status = c
        .logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_l".into(),
            filter: Some(pb::LogFilter {
                search: huge.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("17 MiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    let upsert = |name: String| pb::UpsertApiKeyRequest {
        account_id: "acct_l".into(),
        api_key_id: "key_l".into(),
        name,
        prefix: String::new(),
        status: pb::ApiKeyStatus::Active as i32,
        expires_at: None,
    };
    let status = c
        .admin
        .upsert_api_key(upsert(huge))
        .await
        .expect_err("17 MiB");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // 5 MiB passes the transport on AdminService too (above tonic's 4 MiB default) and
    // meets the field's own limit.
    let status = c
        .admin
        .upsert_api_key(upsert("n".repeat(5 * MIB)))
        .await
        .expect_err("a 5 MiB name");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["name"]);
    server.shutdown().await;
}

async fn batches_fields_and_control_characters_have_limits(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |config| config.max_batch_size = 5).await
    else {
        return;
    };
    let mut c = Clients::new(server.channel(), Bearer::none());
    let status = c
        .ingest
        .record_requests(pb::RecordRequestsRequest {
            records: (0..6).map(|n| record("acct_l", n)).collect(),
        })
        .await
        .expect_err("6 records over a limit of 5");
    assert_eq!(violated_fields(&status), ["records"]);

    let bad_records = [
        (
            pb::RequestRecord {
                api_key_id: "k".repeat(129),
                ..record("acct_l", 0)
            },
            "record.api_key_id",
        ),
        (
            pb::RequestRecord {
                endpoint: format!("/{}", "e".repeat(2048)),
                ..record("acct_l", 0)
            },
            "record.endpoint",
        ),
        (
            pb::RequestRecord {
                api_key_name: "bell\u{7}".into(),
                ..record("acct_l", 0)
            },
            "record.api_key_name",
        ),
        (
            pb::RequestRecord {
                endpoint: "/v1/x\u{1b}[31m".into(),
                ..record("acct_l", 0)
            },
            "record.endpoint",
        ),
        (
            pb::RequestRecord {
                query_string: "a=1\nb=2".into(),
                ..record("acct_l", 0)
            },
            "record.query_string",
        ),
        (
            pb::RequestRecord {
                user_agent: "agent\u{0}".into(),
                ..record("acct_l", 0)
            },
            "record.user_agent",
        ),
    ];
    for (bad, field) in bad_records {
        let status = c
            .ingest
            .record_request(pb::RecordRequestRequest { record: Some(bad) })
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&status), [field]);
    }

    let status = c
        .logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_l".into(),
            filter: Some(pb::LogFilter {
                search: "nul\u{0}".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a control character in search");
    assert_eq!(violated_fields(&status), ["filter.search"]);
    let status = c
        .admin
        .upsert_api_key(pb::UpsertApiKeyRequest {
            account_id: "acct_l".into(),
            api_key_id: "key_l".into(),
            name: "ok".into(),
            prefix: "bye\u{8}".into(),
            status: pb::ApiKeyStatus::Active as i32,
            expires_at: None,
        })
        .await
        .expect_err("a control character in prefix");
    assert_eq!(violated_fields(&status), ["prefix"]);
    server.shutdown().await;
}

/// `HashIpRequest` with `ip` as raw bytes, to send what a correct client never could.
#[derive(Clone, PartialEq, prost::Message)]
struct RawHashIpRequest {
    #[prost(string, tag = "1")]
    account_id: String,
    #[prost(bytes = "vec", tag = "2")]
    ip: Vec<u8>,
}

async fn text_that_is_not_utf8_is_refused_naming_the_field(backend: Backend) {
    use tonic::codegen::http::uri::PathAndQuery;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut grpc = tonic::client::Grpc::new(server.channel());
    grpc.ready().await.expect("the channel is ready");
    let status = grpc
        .unary::<_, pb::HashIpResponse, _>(
            tonic::Request::new(RawHashIpRequest {
                account_id: "acct_l".into(),
                ip: vec![0x31, 0xff, 0xfe, 0x2e],
            }),
            PathAndQuery::from_static("/reqlog.v1.LogService/HashIp"),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("invalid UTF-8");
    // Decoding fails before any handler runs; gRPC's code for that is INTERNAL, and
    // prost's message names the field (and never quotes the bytes).
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("HashIpRequest.ip"), "{status:?}");
    server.shutdown().await;
}

/// A write that cannot finish (the test holds a lock on the log table) is answered
/// CANCELLED at the server's deadline instead of hanging the caller. PostgreSQL only: there
/// a blocked statement waits, whereas SQLite's writer fails at once on a foreign lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_has_a_server_side_deadline() {
    let Some(server) = TestServer::start_with(Backend::Postgres, |config| {
        config.request_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let mut options = ConnectOptions::new(server.test_db.url.clone());
    options.max_connections(1).min_connections(1);
    let blocker = Database::connect(options).await.expect("second connection");
    blocker
        .execute_unprepared("BEGIN; LOCK TABLE log_entries IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock the log table");
    let mut c = Clients::new(server.channel(), Bearer::none());
    let status = c
        .ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(record("acct_deadline", 0)),
        })
        .await
        .expect_err("the write cannot commit while the table is locked");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(status.message().contains("Timeout"), "{status:?}");
    blocker.execute_unprepared("COMMIT").await.expect("release");
    blocker.close().await.ok();
    // Once the lock is free, calls complete again.
    c.ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(record("acct_deadline", 1)),
        })
        .await
        .expect("a write after the lock is released");
    server.shutdown().await;
}

//! Access control: every role on every RPC, account scoping, missing and wrong tokens,
//! token rotation by SIGHUP, `reqlog hash-token`, and the activity record.

use std::path::Path;
use std::time::Duration;

use reqlog_client::pb;
use reqlog_tests::auth::{Bearer, Clients, TestPrincipal, token_sha256, write_auth_file};
use reqlog_tests::process::{ServerProcess, reqlog_binary};
use reqlog_tests::{Backend, TestServer, backend_tests, now_seconds, record};
use tonic::{Code, Status};

backend_tests!(
    every_role_on_every_rpc,
    principals_stay_in_their_accounts,
    missing_and_unknown_tokens_are_unauthenticated,
    health_and_reflection_need_no_token,
    the_activity_record_keeps_every_administrative_action,
    background_sweeps_are_recorded_and_retention_spares_the_record,
);

/// Every RPC of the three reqlog services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    RecordRequest,
    RecordRequests,
    ListLogs,
    ExportLogs,
    GetUsageStats,
    HashIp,
    PurgeForKey,
    UpsertApiKey,
    SetAccountPlan,
    RunRetentionSweep,
    PreviewRetention,
    ListActivity,
}

const RPCS: [Rpc; 12] = [
    Rpc::RecordRequest,
    Rpc::RecordRequests,
    Rpc::ListLogs,
    Rpc::ExportLogs,
    Rpc::GetUsageStats,
    Rpc::HashIp,
    Rpc::PurgeForKey,
    Rpc::UpsertApiKey,
    Rpc::SetAccountPlan,
    Rpc::RunRetentionSweep,
    Rpc::PreviewRetention,
    Rpc::ListActivity,
];

/// API.md's table: which roles may call which RPC.
fn allowed(role: &str, rpc: Rpc) -> bool {
    let column = match rpc {
        Rpc::RecordRequest | Rpc::RecordRequests => "ingest",
        Rpc::ListLogs | Rpc::ExportLogs | Rpc::GetUsageStats | Rpc::HashIp => "read",
        _ => "admin",
    };
    matches!(
        (role, column),
        ("admin", _) | ("ingest", "ingest") | ("member", "read")
    )
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// Calls `rpc` on `account` with a valid request; a stream is read to its end.
async fn call(clients: &Clients, rpc: Rpc, account: &str) -> Result<(), Status> {
    let mut c = clients.clone();
    let account = account.to_owned();
    match rpc {
        Rpc::RecordRequest => {
            c.ingest
                .record_request(pb::RecordRequestRequest {
                    record: Some(record(&account, 0)),
                })
                .await?;
        }
        Rpc::RecordRequests => {
            c.ingest
                .record_requests(pb::RecordRequestsRequest {
                    records: vec![record(&account, 1)],
                })
                .await?;
        }
        Rpc::ListLogs => {
            c.logs
                .list_logs(pb::ListLogsRequest {
                    account_id: account,
                    ..Default::default()
                })
                .await?;
        }
        Rpc::ExportLogs => {
            let mut stream = c
                .logs
                .export_logs(pb::ExportLogsRequest {
                    account_id: account,
                    ..Default::default()
                })
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
        }
        Rpc::GetUsageStats => {
            c.logs
                .get_usage_stats(pb::GetUsageStatsRequest {
                    account_id: account,
                    start_time: ts(now_seconds() - 86_400),
                    end_time: ts(now_seconds() + 3_600),
                    ..Default::default()
                })
                .await?;
        }
        Rpc::HashIp => {
            c.logs
                .hash_ip(pb::HashIpRequest {
                    account_id: account,
                    ip: "203.0.113.7".into(),
                })
                .await?;
        }
        Rpc::PurgeForKey => {
            c.admin
                .purge_for_key(pb::PurgeForKeyRequest {
                    account_id: account,
                    api_key_id: "key_gone".into(),
                })
                .await?;
        }
        Rpc::UpsertApiKey => {
            c.admin
                .upsert_api_key(pb::UpsertApiKeyRequest {
                    account_id: account,
                    api_key_id: "key_1".into(),
                    name: "Key 1".into(),
                    prefix: "bye_K1".into(),
                    status: pb::ApiKeyStatus::Active as i32,
                    expires_at: None,
                })
                .await?;
        }
        Rpc::SetAccountPlan => {
            c.admin
                .set_account_plan(pb::SetAccountPlanRequest {
                    account_id: account,
                    plan: pb::Plan::Pro as i32,
                    retention_days: None,
                })
                .await?;
        }
        Rpc::RunRetentionSweep => {
            c.admin
                .run_retention_sweep(pb::RunRetentionSweepRequest {
                    account_id: account,
                })
                .await?;
        }
        Rpc::PreviewRetention => {
            c.admin
                .preview_retention(pb::PreviewRetentionRequest {
                    account_id: account,
                    plan: pb::Plan::Pro as i32,
                    retention_days: None,
                })
                .await?;
        }
        Rpc::ListActivity => {
            c.admin
                .list_activity(pb::ListActivityRequest {
                    account_id: account,
                    ..Default::default()
                })
                .await?;
        }
    }
    Ok(())
}

const ROLES: [&str; 4] = ["ingest", "member", "admin", "guest"];

/// A server whose auth file names `principals`; the file lives in the returned directory.
async fn server_with(
    backend: Backend,
    principals: &[TestPrincipal<'_>],
) -> Option<(TestServer, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("auth.toml");
    write_auth_file(&path, principals);
    let server = TestServer::start_with(backend, |config| {
        config.auth_file = Some(path);
    })
    .await?;
    Some((server, dir))
}

fn everywhere<'a>(role: &'a str, token: &'a str) -> TestPrincipal<'a> {
    TestPrincipal {
        name: role,
        token,
        role,
        accounts: &["*"],
    }
}

async fn every_role_on_every_rpc(backend: Backend) {
    let tokens: Vec<String> = ROLES.iter().map(|role| format!("tok-{role}-1")).collect();
    let principals: Vec<TestPrincipal<'_>> = ROLES
        .iter()
        .zip(&tokens)
        .map(|(role, token)| everywhere(role, token))
        .collect();
    let Some((server, _dir)) = server_with(backend, &principals).await else {
        return;
    };
    let mut failures = Vec::new();
    for (role, token) in ROLES.iter().zip(&tokens) {
        let clients = Clients::with_token(server.channel(), token);
        for rpc in RPCS {
            let outcome = call(&clients, rpc, "acct_roles").await;
            let ok = match (&outcome, allowed(role, rpc)) {
                (Ok(()), true) => true,
                (Err(status), false) => status.code() == Code::PermissionDenied,
                _ => false,
            };
            if !ok {
                failures.push(format!("{role} × {rpc:?}: {outcome:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    server.shutdown().await;
}

async fn principals_stay_in_their_accounts(backend: Backend) {
    let principals = [
        TestPrincipal {
            name: "scoped-admin",
            token: "tok-scoped-admin",
            role: "admin",
            accounts: &["acct_a"],
        },
        TestPrincipal {
            name: "scoped-gateway",
            token: "tok-scoped-gateway",
            role: "ingest",
            accounts: &["acct_a", "acct_c"],
        },
        everywhere("admin", "tok-admin"),
    ];
    let Some((server, _dir)) = server_with(backend, &principals).await else {
        return;
    };
    let scoped = Clients::with_token(server.channel(), "tok-scoped-admin");
    for rpc in RPCS {
        call(&scoped, rpc, "acct_a")
            .await
            .unwrap_or_else(|status| panic!("{rpc:?} on its own account: {status:?}"));
        let status = call(&scoped, rpc, "acct_b")
            .await
            .expect_err("another account is refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc:?}: {status:?}");
        assert!(status.message().contains("acct_b"), "{status:?}");
    }
    // "Every account" is not one of its accounts.
    for rpc in [Rpc::RunRetentionSweep, Rpc::ListActivity] {
        let status = call(&scoped, rpc, "").await.expect_err("every account");
        assert_eq!(status.code(), Code::PermissionDenied, "{rpc:?}");
    }

    // A batch with one record outside the gateway's accounts is refused whole.
    let mut gateway = Clients::with_token(server.channel(), "tok-scoped-gateway");
    let status = gateway
        .ingest
        .record_requests(pb::RecordRequestsRequest {
            records: vec![
                record("acct_c", 1),
                record("acct_b", 2),
                record("acct_a", 3),
            ],
        })
        .await
        .expect_err("acct_b is not the gateway's");
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut admin = Clients::with_token(server.channel(), "tok-admin");
    let stored = admin
        .logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_c".into(),
            ..Default::default()
        })
        .await
        .expect("admin lists acct_c")
        .into_inner();
    assert!(
        stored.logs.is_empty(),
        "nothing of the refused batch is stored"
    );
    let accepted = gateway
        .ingest
        .record_requests(pb::RecordRequestsRequest {
            records: vec![record("acct_c", 1), record("acct_a", 3)],
        })
        .await
        .expect("both accounts are the gateway's")
        .into_inner();
    assert_eq!(accepted.accepted, 2);
    server.shutdown().await;
}

async fn missing_and_unknown_tokens_are_unauthenticated(backend: Backend) {
    let Some((server, _dir)) = server_with(backend, &[everywhere("admin", "tok-right")]).await
    else {
        return;
    };
    let wrong = "tok-wrong-7c1e9d";
    for (label, bearer) in [
        ("no token", Bearer::none()),
        ("unknown token", Bearer::token(wrong)),
        ("a prefix of the token", Bearer::token("tok-righ")),
    ] {
        let clients = Clients::new(server.channel(), bearer);
        for rpc in RPCS {
            let status = call(&clients, rpc, "acct_1")
                .await
                .expect_err("no valid token");
            assert_eq!(status.code(), Code::Unauthenticated, "{label} {rpc:?}");
            assert!(!status.message().contains(wrong), "{status:?}");
        }
    }
    // Not `Bearer`: a token in another scheme is no token.
    let mut logs = pb::log_service_client::LogServiceClient::new(server.channel());
    let mut request = tonic::Request::new(pb::ListLogsRequest {
        account_id: "acct_1".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        "Basic tok-right".parse().expect("ascii metadata"),
    );
    let status = logs.list_logs(request).await.expect_err("Basic is refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    // The right token works on the same channel.
    call(
        &Clients::with_token(server.channel(), "tok-right"),
        Rpc::ListLogs,
        "acct_1",
    )
    .await
    .expect("the right token");
    server.shutdown().await;
}

async fn health_and_reflection_need_no_token(backend: Backend) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let Some((server, _dir)) = server_with(backend, &[everywhere("admin", "tok")]).await else {
        return;
    };
    for service in ["", "reqlog.v1.IngestService"] {
        let health = HealthClient::new(server.channel())
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health needs no token")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
    }
    let mut responses = ServerReflectionClient::new(server.channel())
        .server_reflection_info(tokio_stream::once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }))
        .await
        .expect("reflection needs no token")
        .into_inner();
    assert!(
        responses
            .message()
            .await
            .expect("a reflection answer")
            .is_some()
    );
    server.shutdown().await;
}

/// Every entry of ListActivity for `account`, walking all pages of `page_size`.
async fn all_activity(clients: &Clients, account: &str, page_size: i32) -> Vec<pb::ActivityEntry> {
    let mut admin = clients.admin.clone();
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_activity(pb::ListActivityRequest {
                account_id: account.into(),
                page_size,
                page_token: page_token.clone(),
            })
            .await
            .expect("list activity")
            .into_inner();
        assert!(page.entries.len() <= page_size.max(1) as usize);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

async fn the_activity_record_keeps_every_administrative_action(backend: Backend) {
    let principals = [
        TestPrincipal {
            name: "billing",
            token: "tok-billing",
            role: "admin",
            accounts: &["*"],
        },
        everywhere("member", "tok-member"),
        everywhere("ingest", "tok-gateway"),
    ];
    let Some((server, _dir)) = server_with(backend, &principals).await else {
        return;
    };
    let mut gateway = Clients::with_token(server.channel(), "tok-gateway");
    let old = |n: usize| pb::RequestRecord {
        api_key_id: "key_old".into(),
        timestamp: ts(now_seconds() - 10 * 86_400),
        ..record("acct_act", n)
    };
    // One row of key_0 (the purge's), one of key_1, three too old for a 7-day plan.
    let ingested = gateway
        .ingest
        .record_requests(pb::RecordRequestsRequest {
            records: vec![
                record("acct_act", 0),
                record("acct_act", 4),
                old(1),
                old(2),
                old(5),
            ],
        })
        .await
        .expect("ingest")
        .into_inner();
    assert_eq!(ingested.accepted, 5, "{ingested:?}");
    let billing = Clients::with_token(server.channel(), "tok-billing");
    let mut admin = billing.admin.clone();
    admin
        .upsert_api_key(pb::UpsertApiKeyRequest {
            account_id: "acct_act".into(),
            api_key_id: "key_0".into(),
            name: "Key 0".into(),
            prefix: "bye_K0".into(),
            status: pb::ApiKeyStatus::Inactive as i32,
            expires_at: None,
        })
        .await
        .expect("upsert");
    admin
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: "acct_act".into(),
            plan: pb::Plan::Starter as i32,
            retention_days: None,
        })
        .await
        .expect("plan");
    let purged = admin
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: "acct_act".into(),
            api_key_id: "key_0".into(),
        })
        .await
        .expect("purge")
        .into_inner()
        .deleted_count;
    assert_eq!(purged, 1);
    let swept = admin
        .run_retention_sweep(pb::RunRetentionSweepRequest {
            account_id: "acct_act".into(),
        })
        .await
        .expect("sweep")
        .into_inner()
        .deleted_count;
    assert_eq!(
        swept, 3,
        "the three 10-day-old rows are past Starter's 7 days"
    );
    // Another account's action, to see the account filter work.
    admin
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: "acct_other".into(),
            plan: pb::Plan::Pro as i32,
            retention_days: Some(45),
        })
        .await
        .expect("plan of another account");

    let entries = all_activity(&billing, "acct_act", 2).await;
    let summary: Vec<(i32, &str, &str, i64, &str)> = entries
        .iter()
        .map(|entry| {
            (
                entry.action,
                entry.principal.as_str(),
                entry.api_key_id.as_str(),
                entry.rows_affected,
                entry.detail.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                pb::ActivityAction::RetentionSweep as i32,
                "billing",
                "",
                3,
                "trigger=manual retention_days=7"
            ),
            (
                pb::ActivityAction::PurgeForKey as i32,
                "billing",
                "key_0",
                1,
                ""
            ),
            (
                pb::ActivityAction::SetAccountPlan as i32,
                "billing",
                "",
                0,
                "plan=STARTER retention_days=7"
            ),
            (
                pb::ActivityAction::UpsertApiKey as i32,
                "billing",
                "key_0",
                0,
                "status=INACTIVE"
            ),
        ],
        "newest first"
    );
    assert!(entries.iter().all(|entry| entry.account_id == "acct_act"));
    let now = now_seconds();
    for entry in &entries {
        let at = entry.time.as_ref().expect("a time").seconds;
        assert!((now - 600..=now + 5).contains(&at), "{entry:?}");
    }
    let everything = all_activity(&billing, "", 1000).await;
    assert_eq!(everything.len(), 5);
    assert_eq!(everything[0].account_id, "acct_other");
    assert_eq!(everything[0].detail, "plan=PRO retention_days=45");

    // A token of one listing does not continue another.
    let first = admin
        .list_activity(pb::ListActivityRequest {
            account_id: "acct_act".into(),
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("first page")
        .into_inner();
    let status = admin
        .list_activity(pb::ListActivityRequest {
            account_id: "acct_other".into(),
            page_size: 1,
            page_token: first.next_page_token,
        })
        .await
        .expect_err("token of another listing");
    assert_eq!(status.code(), Code::InvalidArgument);

    // Only admins read the record.
    let status = call(
        &Clients::with_token(server.channel(), "tok-member"),
        Rpc::ListActivity,
        "acct_act",
    )
    .await
    .expect_err("members do not read activity");
    assert_eq!(status.code(), Code::PermissionDenied);
    server.shutdown().await;
}

async fn background_sweeps_are_recorded_and_retention_spares_the_record(backend: Backend) {
    // No auth file: manual actions are `anonymous`, the server's own sweep `background`.
    let Some(server) = TestServer::start_with(backend, |config| {
        config.sweep_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let clients = Clients::new(server.channel(), Bearer::none());
    let mut admin = clients.admin.clone();
    admin
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: "acct_bg".into(),
            plan: pb::Plan::Free as i32,
            retention_days: None,
        })
        .await
        .expect("plan");
    let mut ingest = clients.ingest.clone();
    ingest
        .record_requests(pb::RecordRequestsRequest {
            records: (0..3)
                .map(|n| pb::RequestRecord {
                    timestamp: ts(now_seconds() - 3 * 86_400),
                    ..record("acct_bg", n)
                })
                .collect(),
        })
        .await
        .expect("old rows");

    // The background sweep runs every 200 ms: wait (bounded) for its entry.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let background = loop {
        let entries = all_activity(&clients, "acct_bg", 100).await;
        if let Some(entry) = entries.iter().find(|e| e.principal == "background") {
            break entry.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no background sweep recorded: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(background.action, pb::ActivityAction::RetentionSweep as i32);
    assert_eq!(background.rows_affected, 3);
    assert_eq!(background.detail, "trigger=background retention_days=1");

    // The plan change is still there, older than any retention window would keep a log
    // row of a 1-day plan: the record is not swept.
    let entries = all_activity(&clients, "acct_bg", 100).await;
    let plan = entries
        .iter()
        .find(|e| e.action == pb::ActivityAction::SetAccountPlan as i32)
        .expect("the plan change is kept");
    assert_eq!(plan.principal, "anonymous");
    server.shutdown().await;
}

fn write_rotating(path: &Path, token: &str) {
    write_auth_file(
        path,
        &[TestPrincipal {
            name: "edge-gateway",
            token,
            role: "ingest",
            accounts: &["*"],
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_tokens_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let auth = dir.path().join("auth.toml");
    write_rotating(&auth, "tok-before-rotation");
    let database = format!("sqlite://{}?mode=rwc", dir.path().join("r.db").display());
    let auth_arg = auth.display().to_string();
    let server = ServerProcess::start(
        "rotation",
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--auth-file",
            &auth_arg,
        ],
        Duration::from_secs(60),
    );
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect_lazy();
    let status_of = |token: &'static str| {
        let clients = Clients::with_token(channel.clone(), token);
        async move {
            call(&clients, Rpc::RecordRequest, "acct_rot")
                .await
                .map_err(|status| status.code())
        }
    };
    assert_eq!(status_of("tok-before-rotation").await, Ok(()));
    assert_eq!(
        status_of("tok-after-rotation").await,
        Err(Code::Unauthenticated)
    );

    write_rotating(&auth, "tok-after-rotation");
    server.hangup();
    server.wait_for_events("auth file reloaded", 1, Duration::from_secs(30));
    assert_eq!(
        status_of("tok-before-rotation").await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(status_of("tok-after-rotation").await, Ok(()));

    // A broken file is reported and changes nothing.
    std::fs::write(&auth, "[[principal]]\nname = \"x\"\nrole = \"root\"\n").expect("write");
    server.hangup();
    let failed = server.wait_for_events(
        "auth file reload failed; the principals loaded before stay in force",
        1,
        Duration::from_secs(30),
    );
    assert!(failed[0].text.contains("auth.toml"), "{}", failed[0].text);
    assert_eq!(status_of("tok-after-rotation").await, Ok(()));
    assert!(!server.log_text().contains("tok-after-rotation"));
}

#[test]
fn hash_token_prints_the_digest_of_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    for input in ["s3cret-token\n", "s3cret-token"] {
        let mut child = Command::new(reqlog_binary())
            .arg("hash-token")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("reqlog hash-token runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write the token");
        let output = child.wait_with_output().expect("hash-token ends");
        assert!(output.status.success());
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            token_sha256("s3cret-token")
        );
    }
}

//! Purge, plans, the retention sweep, usage statistics and key status, on every backend.

use std::time::Duration;

use reqlog_client::{ClientError, pb};
use reqlog_service::domain::lifecycle::Plan;
use reqlog_tests::{Backend, TestServer, backend_tests, now_seconds, record};
use tonic::Code;

backend_tests!(
    purge_removes_a_key_and_refuses_it_later,
    every_plan_window_is_applied,
    overrides_plan_changes_and_one_account_sweeps,
    accounts_never_set_use_the_default_plan,
    the_server_sweeps_by_itself,
    preview_tells_what_a_window_would_remove,
    statistics_bucket_by_hour_and_day_and_survive_deletes,
    key_status_follows_upserts_and_expiry,
    a_purge_outlives_its_callers_deadline,
    a_shutdown_stops_a_purge_and_the_next_sweep_finishes_it,
    a_shutdown_stops_a_sweep_and_the_next_sweep_finishes_it,
    a_sweep_forgets_the_request_ids_of_the_rows_it_deleted,
    a_sweep_forgets_more_request_ids_than_a_step_deletes,
);

const DAY: i64 = 86_400;

/// (offset from midnight, key, method, status, requests, errors, total ms, max ms)
type BucketSummary = (i64, String, String, i32, i64, i64, i64, u32);

fn aged(account: &str, key: &str, age_seconds: i64, n: usize) -> pb::RequestRecord {
    pb::RequestRecord {
        api_key_id: key.into(),
        timestamp: Some(prost_types::Timestamp {
            seconds: now_seconds() - age_seconds,
            nanos: 0,
        }),
        ..record(account, n)
    }
}

async fn ids(server: &TestServer, account: &str) -> Vec<pb::LogEntry> {
    let page = server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: account.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list");
    assert!(page.next_page_token.is_empty(), "test data fits a page");
    page.logs
}

async fn set_plan(
    server: &TestServer,
    account: &str,
    plan: pb::Plan,
    days: Option<i32>,
) -> pb::AccountPlan {
    server
        .client
        .admin()
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: account.into(),
            plan: plan as i32,
            retention_days: days,
        })
        .await
        .expect("set plan")
        .into_inner()
        .account_plan
        .expect("a plan")
}

async fn sweep(server: &TestServer, account: &str) -> pb::RunRetentionSweepResponse {
    server
        .client
        .admin()
        .run_retention_sweep(pb::RunRetentionSweepRequest {
            account_id: account.into(),
        })
        .await
        .expect("sweep")
        .into_inner()
}

async fn totals(server: &TestServer, account: &str) -> (i64, i64, i64, u32) {
    let buckets = server
        .client
        .logs()
        .get_usage_stats(pb::GetUsageStatsRequest {
            account_id: account.into(),
            start_time: Some(prost_types::Timestamp {
                seconds: now_seconds() - 3_000 * DAY,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: now_seconds() + 3_600,
                nanos: 0,
            }),
            granularity: pb::Granularity::Day as i32,
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner()
        .buckets;
    buckets.iter().fold((0, 0, 0, 0), |acc, b| {
        (
            acc.0 + b.request_count,
            acc.1 + b.error_count,
            acc.2 + b.total_duration_ms,
            acc.3.max(b.max_duration_ms),
        )
    })
}

async fn purge_removes_a_key_and_refuses_it_later(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.delete_batch_rows = 7).await else {
        return;
    };
    let records: Vec<_> = (0..60)
        .map(|n| aged("acct_pg", &format!("key_{}", n % 3), 100 + n as i64, n))
        .collect();
    server.client.record_batch(records).await.expect("seed");
    let stats_before = totals(&server, "acct_pg").await;
    assert_eq!(stats_before.0, 60);
    // An account that never sent a record has no statistics.
    assert_eq!(totals(&server, "acct_never").await, (0, 0, 0, 0));

    let purge = |key: &str| {
        let request = pb::PurgeForKeyRequest {
            account_id: "acct_pg".into(),
            api_key_id: key.into(),
        };
        let mut admin = server.client.admin();
        async move {
            admin
                .purge_for_key(request)
                .await
                .expect("purge")
                .into_inner()
                .deleted_count
        }
    };
    assert_eq!(purge("key_1").await, 20);
    let left = ids(&server, "acct_pg").await;
    assert_eq!(left.len(), 40);
    assert!(left.iter().all(|e| e.api_key_id != "key_1"));
    assert_eq!(
        totals(&server, "acct_pg").await,
        stats_before,
        "statistics survive a purge"
    );

    // Later records for the key are refused, alone or in a batch.
    let error = server
        .client
        .record(aged("acct_pg", "key_1", 5, 1))
        .await
        .expect_err("purged key");
    assert!(
        matches!(error, ClientError::FailedPrecondition(_)),
        "{error:?}"
    );
    let batch = server
        .client
        .record_batch(vec![
            aged("acct_pg", "key_1", 5, 2),
            aged("acct_pg", "key_0", 5, 3),
        ])
        .await
        .expect("batch");
    assert_eq!(batch.accepted, 1);
    assert_eq!(
        batch
            .rejected
            .iter()
            .map(|r| (r.index, r.field.as_str()))
            .collect::<Vec<_>>(),
        vec![(0, "api_key_id")]
    );
    // The key stays deleted.
    let upsert = server
        .client
        .admin()
        .upsert_api_key(pb::UpsertApiKeyRequest {
            account_id: "acct_pg".into(),
            api_key_id: "key_1".into(),
            status: pb::ApiKeyStatus::Active as i32,
            ..Default::default()
        })
        .await
        .expect_err("a purged key is not revived");
    assert_eq!(upsert.code(), tonic::Code::FailedPrecondition);
    assert_eq!(purge("key_1").await, 0, "purging again deletes nothing");
    // A key never seen can be purged too, and is refused afterwards.
    assert_eq!(purge("key_never_seen").await, 0);
    assert!(
        server
            .client
            .record(aged("acct_pg", "key_never_seen", 5, 4))
            .await
            .is_err()
    );

    let bad = server
        .client
        .admin()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: "acct_pg".into(),
            api_key_id: String::new(),
        })
        .await
        .expect_err("no key");
    assert_eq!(reqlog_tests::violated_fields(&bad), vec!["api_key_id"]);
    server.shutdown().await;
}

/// Ages, in seconds, that straddle every plan's window.
const AGES: [i64; 6] = [DAY / 2, 2 * DAY, 8 * DAY, 31 * DAY, 181 * DAY, 366 * DAY];

async fn seed_ages(server: &TestServer, account: &str) {
    let records: Vec<_> = AGES
        .iter()
        .enumerate()
        .map(|(n, &age)| aged(account, "k", age, n))
        .collect();
    server.client.record_batch(records).await.expect("seed");
}

fn kept(window_days: i64) -> usize {
    AGES.iter().filter(|&&age| age < window_days * DAY).count()
}

async fn every_plan_window_is_applied(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.sweep_interval = Duration::ZERO).await
    else {
        return;
    };
    for (plan, days) in [
        (pb::Plan::Free, 1),
        (pb::Plan::Starter, 7),
        (pb::Plan::Pro, 30),
        (pb::Plan::Scale, 180),
        (pb::Plan::Enterprise, 365),
    ] {
        let account = format!("acct_{}", plan.as_str_name().to_lowercase());
        seed_ages(&server, &account).await;
        let set = set_plan(&server, &account, plan, None).await;
        assert_eq!(set.effective_retention_days, days);
        let swept = sweep(&server, &account).await;
        assert_eq!(
            swept.deleted_count as usize,
            AGES.len() - kept(i64::from(days)),
            "{plan:?}"
        );
        assert_eq!(
            ids(&server, &account).await.len(),
            kept(i64::from(days)),
            "{plan:?}"
        );
    }
    let bad = server
        .client
        .admin()
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: "a".into(),
            plan: 0,
            retention_days: None,
        })
        .await
        .expect_err("unspecified plan");
    assert_eq!(reqlog_tests::violated_fields(&bad), vec!["plan"]);
    server.shutdown().await;
}

async fn overrides_plan_changes_and_one_account_sweeps(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.sweep_interval = Duration::ZERO).await
    else {
        return;
    };
    seed_ages(&server, "acct_o").await;
    let set = set_plan(&server, "acct_o", pb::Plan::Free, Some(10)).await;
    assert_eq!(
        (set.retention_days_override, set.effective_retention_days),
        (Some(10), 10)
    );
    sweep(&server, "acct_o").await;
    assert_eq!(ids(&server, "acct_o").await.len(), kept(10));

    // A plan change applies on the next sweep.
    seed_ages(&server, "acct_c").await;
    set_plan(&server, "acct_c", pb::Plan::Enterprise, None).await;
    assert_eq!(sweep(&server, "acct_c").await.deleted_count, 1);
    set_plan(&server, "acct_c", pb::Plan::Starter, None).await;
    assert_eq!(
        ids(&server, "acct_c").await.len(),
        5,
        "nothing happens before the sweep"
    );
    let swept = sweep(&server, "acct_c").await;
    assert_eq!(ids(&server, "acct_c").await.len(), kept(7));
    assert_eq!(swept.accounts.len(), 1);
    assert_eq!(swept.accounts[0].retention_days, 7);

    // A sweep of one account leaves the others alone.
    seed_ages(&server, "acct_x").await;
    seed_ages(&server, "acct_y").await;
    sweep(&server, "acct_x").await;
    assert_eq!(ids(&server, "acct_x").await.len(), kept(1));
    assert_eq!(ids(&server, "acct_y").await.len(), AGES.len());
    // An all-accounts sweep reports per account.
    let all = sweep(&server, "").await;
    assert!(
        all.accounts
            .iter()
            .any(|a| a.account_id == "acct_y" && a.deleted_count as usize == AGES.len() - kept(1))
    );
    assert_eq!(
        all.deleted_count,
        all.accounts.iter().map(|a| a.deleted_count).sum::<i64>()
    );
    server.shutdown().await;
}

async fn accounts_never_set_use_the_default_plan(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.sweep_interval = Duration::ZERO;
        c.default_plan = Plan::Pro;
    })
    .await
    else {
        return;
    };
    seed_ages(&server, "acct_d").await;
    sweep(&server, "").await;
    assert_eq!(ids(&server, "acct_d").await.len(), kept(30));
    server.shutdown().await;
}

async fn the_server_sweeps_by_itself(backend: Backend) {
    let Some(server) =
        TestServer::start_with(backend, |c| c.sweep_interval = Duration::from_millis(200)).await
    else {
        return;
    };
    seed_ages(&server, "acct_auto").await;
    for _ in 0..100 {
        if ids(&server, "acct_auto").await.len() == kept(1) {
            server.shutdown().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the background sweep never ran");
}

async fn preview_tells_what_a_window_would_remove(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.sweep_interval = Duration::ZERO).await
    else {
        return;
    };
    seed_ages(&server, "acct_pv").await;
    set_plan(&server, "acct_pv", pb::Plan::Scale, None).await;
    let preview = server
        .client
        .admin()
        .preview_retention(pb::PreviewRetentionRequest {
            account_id: "acct_pv".into(),
            plan: pb::Plan::Starter as i32,
            retention_days: None,
        })
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.retention_days, 7);
    assert_eq!(preview.current_retention_days, 180);
    assert_eq!(preview.row_count as usize, AGES.len() - kept(7));
    let oldest = preview.oldest_timestamp.expect("oldest").seconds;
    let newest = preview.newest_timestamp.expect("newest").seconds;
    assert!((now_seconds() - oldest - 366 * DAY).abs() < 60);
    assert!((now_seconds() - newest - 8 * DAY).abs() < 60);
    assert_eq!(
        ids(&server, "acct_pv").await.len(),
        AGES.len(),
        "a preview deletes nothing"
    );
    server.shutdown().await;
}

async fn statistics_bucket_by_hour_and_day_and_survive_deletes(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.sweep_interval = Duration::ZERO).await
    else {
        return;
    };
    let midnight = (now_seconds() / DAY - 3) * DAY;
    let at = |offset: i64, key: &str, method: &str, status: i32, ms: u32| pb::RequestRecord {
        api_key_id: key.into(),
        method: method.into(),
        endpoint: "/v1/s".into(),
        status_code: status,
        duration_ms: ms,
        timestamp: Some(prost_types::Timestamp {
            seconds: midnight + offset,
            nanos: 0,
        }),
        ..record("acct_st", 0)
    };
    server
        .client
        .record_batch(vec![
            at(-1, "k1", "GET", 200, 10),     // 23:59:59 the day before
            at(0, "k1", "GET", 500, 20),      // 00:00:00
            at(3_599, "k2", "POST", 404, 30), // 00:59:59
            at(3_600, "k1", "GET", 200, 40),  // 01:00:00
        ])
        .await
        .expect("seed");
    let stats = |granularity: pb::Granularity, group_by: Vec<pb::UsageDimension>, key: &str| {
        let request = pb::GetUsageStatsRequest {
            account_id: "acct_st".into(),
            api_key_id: key.into(),
            start_time: Some(prost_types::Timestamp {
                seconds: midnight - DAY,
                nanos: 0,
            }),
            end_time: Some(prost_types::Timestamp {
                seconds: midnight + DAY,
                nanos: 0,
            }),
            granularity: granularity as i32,
            group_by: group_by.into_iter().map(|d| d as i32).collect(),
        };
        let mut logs = server.client.logs();
        async move {
            logs.get_usage_stats(request)
                .await
                .expect("stats")
                .into_inner()
                .buckets
        }
    };
    let summary = |buckets: &[pb::UsageBucket]| -> Vec<BucketSummary> {
        buckets
            .iter()
            .map(|b| {
                (
                    b.start_time.expect("start").seconds - midnight,
                    b.api_key_id.clone(),
                    b.method.clone(),
                    b.status_code,
                    b.request_count,
                    b.error_count,
                    b.total_duration_ms,
                    b.max_duration_ms,
                )
            })
            .collect()
    };
    let hours = stats(pb::Granularity::Unspecified, vec![], "").await;
    assert_eq!(
        summary(&hours),
        vec![
            (-3_600, String::new(), String::new(), 0, 1, 0, 10, 10),
            (0, String::new(), String::new(), 0, 2, 2, 50, 30),
            (3_600, String::new(), String::new(), 0, 1, 0, 40, 40),
        ]
    );
    let days = stats(pb::Granularity::Day, vec![pb::UsageDimension::ApiKey], "").await;
    assert_eq!(
        summary(&days),
        vec![
            (-DAY, "k1".into(), String::new(), 0, 1, 0, 10, 10),
            (0, "k1".into(), String::new(), 0, 2, 1, 60, 40),
            (0, "k2".into(), String::new(), 0, 1, 1, 30, 30),
        ]
    );
    let by_method_status = stats(
        pb::Granularity::Day,
        vec![pb::UsageDimension::Method, pb::UsageDimension::StatusCode],
        "k1",
    )
    .await;
    assert_eq!(
        summary(&by_method_status),
        vec![
            (-DAY, String::new(), "GET".into(), 200, 1, 0, 10, 10),
            (0, String::new(), "GET".into(), 200, 1, 0, 40, 40),
            (0, String::new(), "GET".into(), 500, 1, 1, 20, 20),
        ]
    );
    let by_endpoint = stats(pb::Granularity::Day, vec![pb::UsageDimension::Endpoint], "").await;
    assert!(by_endpoint.iter().all(|b| b.endpoint == "/v1/s"));

    // Neither a sweep that removes everything nor a purge reduces them.
    let before = totals(&server, "acct_st").await;
    set_plan(&server, "acct_st", pb::Plan::Free, None).await;
    assert_eq!(sweep(&server, "acct_st").await.deleted_count, 4);
    server
        .client
        .admin()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: "acct_st".into(),
            api_key_id: "k1".into(),
        })
        .await
        .expect("purge");
    assert_eq!(totals(&server, "acct_st").await, before);

    let bad = server
        .client
        .logs()
        .get_usage_stats(pb::GetUsageStatsRequest {
            account_id: "acct_st".into(),
            group_by: vec![0],
            ..Default::default()
        })
        .await
        .expect_err("unspecified dimension");
    assert_eq!(reqlog_tests::violated_fields(&bad), vec!["group_by"]);
    server.shutdown().await;
}

async fn key_status_follows_upserts_and_expiry(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    server
        .client
        .record(aged("acct_k", "key_a", 10, 1))
        .await
        .expect("record");
    let status_now = || async { ids(&server, "acct_k").await[0].api_key_status };
    assert_eq!(status_now().await, pb::ApiKeyStatus::Unspecified as i32);
    let upsert = |status: pb::ApiKeyStatus, expires: Option<i64>| {
        let request = pb::UpsertApiKeyRequest {
            account_id: "acct_k".into(),
            api_key_id: "key_a".into(),
            name: "Renamed".into(),
            prefix: "bye_NEW".into(),
            status: status as i32,
            expires_at: expires.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
        };
        let mut admin = server.client.admin();
        async move { admin.upsert_api_key(request).await }
    };
    let key = upsert(pb::ApiKeyStatus::Active, None)
        .await
        .expect("upsert")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(
        (key.status, key.name.as_str()),
        (pb::ApiKeyStatus::Active as i32, "Renamed")
    );
    assert_eq!(status_now().await, pb::ApiKeyStatus::Active as i32);
    // The row keeps the name the key had when the request was made.
    assert_eq!(
        ids(&server, "acct_k").await[0].api_key_name,
        record("acct_k", 1).api_key_name
    );
    upsert(pb::ApiKeyStatus::Rotated, None)
        .await
        .expect("upsert");
    assert_eq!(status_now().await, pb::ApiKeyStatus::Rotated as i32);
    // An expiry shows as EXPIRED once it has passed, without another call. Whole seconds: at
    // `now + 1` the expiry could be a few milliseconds away, and pass before the answer.
    let key = upsert(pb::ApiKeyStatus::Active, Some(now_seconds() + 2))
        .await
        .expect("upsert")
        .into_inner()
        .api_key
        .expect("key");
    assert_eq!(key.status, pb::ApiKeyStatus::Active as i32);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(status_now().await, pb::ApiKeyStatus::Expired as i32);
    let bad = upsert(pb::ApiKeyStatus::Unspecified, None)
        .await
        .expect_err("unspecified");
    assert_eq!(reqlog_tests::violated_fields(&bad), vec!["status"]);
    server.shutdown().await;
}

/// Records `rows` rows of `key`, `age_seconds` old, numbered from `first`.
async fn seed_key(
    server: &TestServer,
    account: &str,
    key: &str,
    age_seconds: i64,
    (first, rows): (usize, usize),
) {
    let numbers: Vec<usize> = (first..first + rows).collect();
    for chunk in numbers.chunks(1_000) {
        let records = chunk
            .iter()
            .map(|&n| aged(account, key, age_seconds, n))
            .collect();
        server.client.record_batch(records).await.expect("seed");
    }
}

/// The account's activity entries of `action`, newest first.
async fn activity_of(
    server: &TestServer,
    account: &str,
    action: pb::ActivityAction,
) -> Vec<pb::ActivityEntry> {
    let entries = server
        .client
        .admin()
        .list_activity(pb::ListActivityRequest {
            account_id: account.into(),
            page_size: 1_000,
            ..Default::default()
        })
        .await
        .expect("list activity")
        .into_inner()
        .entries;
    entries
        .into_iter()
        .filter(|entry| entry.action == action as i32)
        .collect()
}

async fn row_count(server: &TestServer, account: &str) -> i64 {
    server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: account.into(),
            page_size: 1,
            include_total_size: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .total_size
}

/// Rows deleted 10 a transaction: a purge or sweep of thousands takes a few hundred commits.
fn slow_deletes(config: &mut reqlog_service::config::Config) {
    config.sweep_interval = Duration::ZERO;
    config.delete_batch_rows = 10;
}

/// Stops the server a moment into `call` (2,000 commits take seconds) and returns its
/// database; the call, stopped by the shutdown, must answer UNAVAILABLE.
async fn stop_during<T: std::fmt::Debug + Send + 'static>(
    server: TestServer,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send + 'static,
) -> reqlog_tests::TestDb {
    let call = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let test_db = server.stop().await;
    let status = call
        .await
        .expect("the call should not panic")
        .expect_err("a call stopped by shutdown is not a success");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("shutting down"), "{status:?}");
    test_db
}

async fn a_purge_outlives_its_callers_deadline(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, slow_deletes).await else {
        return;
    };
    let account = "acct_deadline";
    seed_key(&server, account, "k_gone", 60, (0, 10_000)).await;
    seed_key(&server, account, "k_kept", 60, (10_000, 10)).await;
    let mut request = tonic::Request::new(pb::PurgeForKeyRequest {
        account_id: account.into(),
        api_key_id: "k_gone".into(),
    });
    request.set_timeout(Duration::from_millis(50));
    let status = server
        .client
        .admin()
        .purge_for_key(request)
        .await
        .expect_err("1,000 commits outlast a 50 ms deadline, even on a fast disk");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The caller is gone; the purge is not.
    let mut recorded = Vec::new();
    for _ in 0..600 {
        recorded = activity_of(&server, account, pb::ActivityAction::PurgeForKey).await;
        if !recorded.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let [entry] = recorded.as_slice() else {
        panic!("one purge entry expected once the purge ends, got {recorded:?}");
    };
    assert_eq!(
        (
            entry.api_key_id.as_str(),
            entry.rows_affected,
            entry.detail.as_str()
        ),
        ("k_gone", 10_000, "")
    );
    let left = ids(&server, account).await;
    assert_eq!(left.len(), 10);
    assert!(left.iter().all(|row| row.api_key_id == "k_kept"));
    server.shutdown().await;
}

async fn a_shutdown_stops_a_purge_and_the_next_sweep_finishes_it(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, slow_deletes).await else {
        return;
    };
    let account = "acct_stopped_purge";
    seed_key(&server, account, "k_gone", 60, (0, 20_000)).await;
    seed_key(&server, account, "k_kept", 60, (20_000, 5)).await;
    let mut admin = server.client.admin();
    let test_db = stop_during(server, async move {
        admin
            .purge_for_key(pb::PurgeForKeyRequest {
                account_id: account.into(),
                api_key_id: "k_gone".into(),
            })
            .await
    })
    .await;

    let server = TestServer::start_on(test_db, |c| c.sweep_interval = Duration::ZERO).await;
    let stopped = activity_of(&server, account, pb::ActivityAction::PurgeForKey).await;
    let [stopped] = stopped.as_slice() else {
        panic!("the stopped purge should be recorded once, got {stopped:?}");
    };
    assert_eq!(stopped.detail, "interrupted=shutdown");
    let first = stopped.rows_affected;
    assert!(
        (1..20_000).contains(&first),
        "deleted {first} before stopping"
    );
    assert_eq!(row_count(&server, account).await, 20_005 - first);

    // Nothing is old enough to go by age; what the purge left goes all the same.
    assert_eq!(sweep(&server, account).await.deleted_count, 0);
    let entries = activity_of(&server, account, pb::ActivityAction::PurgeForKey).await;
    let [finished, _] = entries.as_slice() else {
        panic!("the sweep should record the purge it finished, got {entries:?}");
    };
    assert_eq!(
        (
            finished.api_key_id.as_str(),
            finished.rows_affected,
            finished.detail.as_str()
        ),
        (
            "k_gone",
            20_000 - first,
            "trigger=manual finished_by=retention_sweep"
        )
    );
    let left = ids(&server, account).await;
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|row| row.api_key_id == "k_kept"));
    // A second sweep finds nothing left to finish and records no purge.
    sweep(&server, account).await;
    assert_eq!(
        activity_of(&server, account, pb::ActivityAction::PurgeForKey)
            .await
            .len(),
        2
    );
    server.shutdown().await;
}

async fn a_shutdown_stops_a_sweep_and_the_next_sweep_finishes_it(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, slow_deletes).await else {
        return;
    };
    let account = "acct_stopped_sweep";
    // The default plan (Free) keeps a day.
    seed_key(&server, account, "k", 2 * DAY, (0, 20_000)).await;
    seed_key(&server, account, "k", 60, (20_000, 5)).await;
    let mut admin = server.client.admin();
    let test_db = stop_during(server, async move {
        admin
            .run_retention_sweep(pb::RunRetentionSweepRequest {
                account_id: account.into(),
            })
            .await
    })
    .await;

    let server = TestServer::start_on(test_db, |c| c.sweep_interval = Duration::ZERO).await;
    let stopped = activity_of(&server, account, pb::ActivityAction::RetentionSweep).await;
    let [stopped] = stopped.as_slice() else {
        panic!("the stopped sweep should be recorded once, got {stopped:?}");
    };
    assert!(
        stopped.detail.ends_with("interrupted=shutdown"),
        "{stopped:?}"
    );
    let first = stopped.rows_affected;
    assert!(first < 20_000, "deleted {first} before stopping");
    assert_eq!(row_count(&server, account).await, 20_005 - first);
    let rest = sweep(&server, account).await;
    assert_eq!(rest.deleted_count, 20_000 - first);
    assert_eq!(row_count(&server, account).await, 5);
    server.shutdown().await;
}

async fn a_sweep_forgets_the_request_ids_of_the_rows_it_deleted(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let with_id = |account: &str, request_id: &str, age_days: i64| pb::RequestRecord {
        request_id: request_id.into(),
        ..aged(account, "k1", age_days * DAY, 1)
    };
    set_plan(&server, "acct_short", pb::Plan::Pro, Some(7)).await;
    set_plan(&server, "acct_long", pb::Plan::Pro, Some(365)).await;
    let duplicate = |account: &str, request_id: &str, age_days: i64| {
        let record = with_id(account, request_id, age_days);
        let client = server.client.clone();
        async move { client.record(record).await.expect("record").duplicate }
    };
    // "old" ids of both accounts share a day, so that only the account tells them apart.
    assert!(!duplicate("acct_short", "old", 30).await);
    assert!(!duplicate("acct_short", "recent", 1).await);
    assert!(!duplicate("acct_long", "old", 30).await);
    let swept = sweep(&server, "").await;
    assert_eq!(swept.deleted_count, 1, "{swept:?}");
    // The swept row's id is forgotten with it: a retry stores it again.
    assert!(!duplicate("acct_short", "old", 30).await);
    // Ids of rows that stay still guard them, in this account and in the other.
    assert!(duplicate("acct_short", "recent", 1).await);
    assert!(duplicate("acct_long", "old", 30).await);
    server.shutdown().await;
}

async fn a_sweep_forgets_more_request_ids_than_a_step_deletes(backend: Backend) {
    // Steps of 7 deletions: the 30 rows take five, their 30 keys as many again.
    let Some(server) = TestServer::start_with(backend, |c| c.delete_batch_rows = 7).await else {
        return;
    };
    set_plan(&server, "acct_short", pb::Plan::Pro, Some(7)).await;
    let old: Vec<_> = (0..30)
        .map(|n| pb::RequestRecord {
            request_id: format!("old_{n}"),
            ..aged("acct_short", "k1", 30 * DAY, n)
        })
        .collect();
    let recent = pb::RequestRecord {
        request_id: "recent".into(),
        ..aged("acct_short", "k1", DAY, 30)
    };
    let mut all = old.clone();
    all.push(recent.clone());
    let stored = server.client.record_batch(all).await.expect("seed");
    assert_eq!((stored.accepted, stored.duplicates), (31, 0));

    let swept = sweep(&server, "acct_short").await;
    assert_eq!(swept.deleted_count, 30, "{swept:?}");
    // Every swept row's key is forgotten, the kept row's is not.
    let again = server.client.record_batch(old).await.expect("retry");
    assert_eq!((again.accepted, again.duplicates), (30, 0));
    let kept = server
        .client
        .record_batch(vec![recent])
        .await
        .expect("retry");
    assert_eq!((kept.accepted, kept.duplicates), (0, 1));
    server.shutdown().await;
}

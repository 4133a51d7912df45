//! ListLogs against a model of the rows, on every backend.

use std::cmp::Ordering;
use std::collections::HashSet;

use reqlog_client::{ClientError, pb};
use reqlog_service::domain::filter::{LogFilter, LogQuery, SortField, SortOrder};
use reqlog_service::store::logs::page_select;
use reqlog_tests::{Backend, LOG_FIELDS, TestServer, backend_tests, now_seconds, record};
use sea_orm::{ConnectionTrait, QueryTrait, Statement};
use tonic::Code;

backend_tests!(
    every_sort_field_walks_every_row_once_both_ways,
    pages_stay_exact_while_rows_are_recorded,
    page_tokens_are_bound_to_their_query,
    each_filter_alone_and_combined,
    search_hits_each_field_and_matches_literally,
    page_sizes_default_clamp_and_total_size,
    key_status_shows_on_entries,
    indexes_serve_default_order_and_key_filter,
    a_hundred_thousand_rows_page_exactly,
);

/// A row's sort value, as API.md orders it: text bytewise, NULL before every value.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Null,
    Int(i64),
    Text(Vec<u8>),
}

fn key_of(entry: &pb::LogEntry, field: pb::LogField) -> Key {
    let text = |s: &str| Key::Text(s.as_bytes().to_vec());
    let optional = |s: &Option<String>| s.as_deref().map_or(Key::Null, text);
    match field {
        pb::LogField::Unspecified | pb::LogField::Timestamp => {
            let ts = entry.timestamp.expect("a timestamp");
            Key::Int(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000))
        }
        pb::LogField::ApiKeyName => text(&entry.api_key_name),
        pb::LogField::ApiKeyPrefix => text(&entry.api_key_prefix),
        pb::LogField::Method => text(&entry.method),
        pb::LogField::Endpoint => text(&entry.endpoint),
        pb::LogField::QueryParams => optional(&entry.query_params),
        pb::LogField::StatusCode => Key::Int(i64::from(entry.status_code)),
        pb::LogField::ErrorCode => optional(&entry.error_code),
        pb::LogField::IpHash => text(&entry.ip_hash),
        pb::LogField::DurationMs => Key::Int(i64::from(entry.duration_ms)),
    }
}

fn id_of(entry: &pb::LogEntry) -> i64 {
    entry.id.parse().expect("ids are decimal")
}

/// The model's order for a field and direction (UNSPECIFIED: newest first).
fn model_sort(rows: &mut [pb::LogEntry], field: pb::LogField, descending: bool) {
    let descending = descending || field == pb::LogField::Unspecified;
    rows.sort_by(|a, b| {
        let order = key_of(a, field)
            .cmp(&key_of(b, field))
            .then(id_of(a).cmp(&id_of(b)));
        if descending { order.reverse() } else { order }
    });
}

fn request(
    account: &str,
    field: pb::LogField,
    descending: bool,
    page_size: i32,
) -> pb::ListLogsRequest {
    pb::ListLogsRequest {
        account_id: account.into(),
        order_by: Some(pb::SortOrder {
            field: field as i32,
            descending,
        }),
        page_size,
        ..Default::default()
    }
}

/// Walks every page of a request; asserts every page but the last is full.
async fn walk(server: &TestServer, mut request: pb::ListLogsRequest) -> Vec<pb::LogEntry> {
    let mut rows = Vec::new();
    loop {
        let page = server
            .client
            .list_logs(request.clone())
            .await
            .expect("a page");
        let full = page.logs.len() as i32 == request.page_size;
        rows.extend(page.logs);
        if page.next_page_token.is_empty() {
            return rows;
        }
        assert!(full, "only the last page may be short");
        request.page_token = page.next_page_token;
    }
}

/// Seeds an account with varied rows, including NULLs and ties in every column.
async fn seed(server: &TestServer, account: &str, count: usize) -> Vec<pb::LogEntry> {
    let records: Vec<_> = (0..count)
        .map(|n| {
            let mut r = record(account, n);
            // Mixed-case names and prefixes put bytewise and case-folded orders apart.
            if n % 5 == 0 {
                r.api_key_name = format!("alpha {}", n % 3);
            }
            if n % 11 == 0 {
                r.api_key_prefix = String::new();
            }
            r
        })
        .collect();
    for chunk in records.chunks(500) {
        let response = server
            .client
            .record_batch(chunk.to_vec())
            .await
            .expect("seed batch");
        assert_eq!(response.accepted as usize, chunk.len());
    }
    walk(
        server,
        request(account, pb::LogField::Unspecified, false, 1000),
    )
    .await
}

async fn every_sort_field_walks_every_row_once_both_ways(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let all = seed(&server, "acct_sort", 157).await;
    assert_eq!(all.len(), 157);
    assert!(
        all.iter().any(|r| r.query_params.is_none()) && all.iter().any(|r| r.error_code.is_none())
    );
    for field in LOG_FIELDS {
        for descending in [false, true] {
            let walked = walk(&server, request("acct_sort", field, descending, 10)).await;
            let mut expected = all.clone();
            model_sort(&mut expected, field, descending);
            let walked_ids: Vec<&str> = walked.iter().map(|r| r.id.as_str()).collect();
            let expected_ids: Vec<&str> = expected.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(
                walked_ids, expected_ids,
                "{field:?} descending={descending}"
            );
        }
    }
    server.shutdown().await;
}

async fn pages_stay_exact_while_rows_are_recorded(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let before: HashSet<String> = seed(&server, "acct_live", 120)
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    for (field, descending) in [
        (pb::LogField::Unspecified, true),
        (pb::LogField::Endpoint, false),
        (pb::LogField::ErrorCode, true),
    ] {
        let mut request = request("acct_live", field, descending, 7);
        let mut seen = Vec::new();
        let mut n = 1000;
        loop {
            let page = server
                .client
                .list_logs(request.clone())
                .await
                .expect("a page");
            seen.extend(page.logs.into_iter().map(|r| r.id));
            // New rows land between pages: some newer, some older than everything listed.
            server
                .client
                .record(record("acct_live", n))
                .await
                .expect("live record");
            server
                .client
                .record(pb::RequestRecord {
                    timestamp: Some(prost_types::Timestamp {
                        seconds: now_seconds() - 300_000,
                        nanos: 0,
                    }),
                    ..record("acct_live", n + 1)
                })
                .await
                .expect("late record");
            n += 2;
            if page.next_page_token.is_empty() {
                break;
            }
            request.page_token = page.next_page_token;
        }
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "no row twice ({field:?})");
        assert!(
            before.iter().all(|id| unique.contains(id)),
            "every earlier row once ({field:?})"
        );
    }
    server.shutdown().await;
}

fn page_token_error(result: Result<pb::ListLogsResponse, ClientError>) -> Vec<String> {
    match result {
        Err(ClientError::InvalidArgument { violations, .. }) => {
            violations.into_iter().map(|v| v.field).collect()
        }
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

async fn page_tokens_are_bound_to_their_query(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    seed(&server, "acct_tok", 30).await;
    seed(&server, "acct_tok2", 30).await;
    let first = server
        .client
        .list_logs(request("acct_tok", pb::LogField::Method, false, 5))
        .await
        .expect("page");
    let token = first.next_page_token.clone();
    assert!(!token.is_empty());

    let with = |mut r: pb::ListLogsRequest| {
        r.page_token = token.clone();
        r
    };
    // The same query continues.
    let second = server
        .client
        .list_logs(with(request("acct_tok", pb::LogField::Method, false, 5)))
        .await
        .expect("page 2");
    assert_eq!(second.logs.len(), 5);
    // A different page size is the same query.
    server
        .client
        .list_logs(with(request("acct_tok", pb::LogField::Method, false, 9)))
        .await
        .expect("resized");

    let mut other_filter = request("acct_tok", pb::LogField::Method, false, 5);
    other_filter.filter = Some(pb::LogFilter {
        search: "x".into(),
        ..Default::default()
    });
    for (what, bad) in [
        (
            "another account",
            with(request("acct_tok2", pb::LogField::Method, false, 5)),
        ),
        (
            "another field",
            with(request("acct_tok", pb::LogField::Endpoint, false, 5)),
        ),
        (
            "another direction",
            with(request("acct_tok", pb::LogField::Method, true, 5)),
        ),
        ("another filter", with(other_filter)),
    ] {
        assert_eq!(
            page_token_error(server.client.list_logs(bad).await),
            vec!["page_token"],
            "{what}"
        );
    }
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    for bad_token in [
        String::from_utf8(tampered).expect("ascii"),
        "garbage".into(),
        "%%%".into(),
    ] {
        let mut bad = request("acct_tok", pb::LogField::Method, false, 5);
        bad.page_token = bad_token;
        assert_eq!(
            page_token_error(server.client.list_logs(bad).await),
            vec!["page_token"]
        );
    }

    // Tokens survive a restart: the key lives in the database.
    let test_db = server.stop().await;
    let server = TestServer::start_on(test_db, |_| {}).await;
    let resumed = server
        .client
        .list_logs(with(request("acct_tok", pb::LogField::Method, false, 5)))
        .await
        .expect("after restart");
    assert_eq!(
        resumed.logs.iter().map(|r| &r.id).collect::<Vec<_>>(),
        second.logs.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    server.shutdown().await;
}

async fn listed(server: &TestServer, account: &str, filter: pb::LogFilter) -> Vec<String> {
    let mut r = request(account, pb::LogField::Unspecified, true, 1000);
    r.filter = Some(filter);
    walk(server, r).await.into_iter().map(|e| e.id).collect()
}

fn expected(all: &[pb::LogEntry], keep: impl Fn(&pb::LogEntry) -> bool) -> Vec<String> {
    all.iter()
        .filter(|e| keep(e))
        .map(|e| e.id.clone())
        .collect()
}

async fn each_filter_alone_and_combined(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut all = seed(&server, "acct_f", 200).await;
    seed(&server, "acct_f_other", 50).await;
    model_sort(&mut all, pb::LogField::Unspecified, true);
    let ts = |e: &pb::LogEntry| e.timestamp.expect("ts").seconds;
    let mid = ts(&all[100]);
    let hash = all[3].ip_hash.clone();
    type Keep = Box<dyn Fn(&pb::LogEntry) -> bool>;
    let cases: Vec<(&str, pb::LogFilter, Keep)> = vec![
        (
            "key ids",
            pb::LogFilter {
                api_key_ids: vec!["key_1".into(), "key_2".into()],
                ..Default::default()
            },
            Box::new(|e| e.api_key_id == "key_1" || e.api_key_id == "key_2"),
        ),
        (
            "methods",
            pb::LogFilter {
                methods: vec!["get".into(), "DELETE".into()],
                ..Default::default()
            },
            Box::new(|e| e.method == "GET" || e.method == "DELETE"),
        ),
        (
            "status codes",
            pb::LogFilter {
                status_codes: vec![404, 201],
                ..Default::default()
            },
            Box::new(|e| e.status_code == 404 || e.status_code == 201),
        ),
        (
            "status classes",
            pb::LogFilter {
                status_classes: vec![
                    pb::StatusClass::StatusClass4xx as i32,
                    pb::StatusClass::StatusClass5xx as i32,
                ],
                ..Default::default()
            },
            Box::new(|e| e.status_code >= 400),
        ),
        (
            "error codes",
            pb::LogFilter {
                error_codes: vec!["BSE1001".into()],
                ..Default::default()
            },
            Box::new(|e| e.error_code.as_deref() == Some("BSE1001")),
        ),
        (
            "ip hash prefix",
            pb::LogFilter {
                ip_hash_prefix: hash[..6].to_uppercase(),
                ..Default::default()
            },
            Box::new(move |e| e.ip_hash.starts_with(&hash[..6])),
        ),
        (
            "endpoint prefix",
            pb::LogFilter {
                endpoint_prefix: "/v1/items/3".into(),
                ..Default::default()
            },
            Box::new(|e| e.endpoint.starts_with("/v1/items/3")),
        ),
        (
            "endpoint prefix is case-sensitive",
            pb::LogFilter {
                endpoint_prefix: "/V1".into(),
                ..Default::default()
            },
            Box::new(|_| false),
        ),
        (
            "time range",
            pb::LogFilter {
                start_time: Some(prost_types::Timestamp {
                    seconds: mid - 20,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: mid,
                    nanos: 0,
                }),
                ..Default::default()
            },
            Box::new(move |e| (mid - 20..mid).contains(&ts(e))),
        ),
        (
            "combined",
            pb::LogFilter {
                api_key_ids: vec!["key_0".into()],
                methods: vec!["GET".into(), "POST".into(), "PUT".into()],
                status_classes: vec![pb::StatusClass::StatusClass2xx as i32],
                search: "items".into(),
                ..Default::default()
            },
            Box::new(|e| {
                e.api_key_id == "key_0"
                    && ["GET", "POST", "PUT"].contains(&e.method.as_str())
                    && (200..300).contains(&e.status_code)
            }),
        ),
    ];
    for (what, filter, keep) in cases {
        let want = expected(&all, keep);
        assert!(
            what.contains("case-sensitive") || !want.is_empty(),
            "{what}: the data should hit it"
        );
        assert_eq!(listed(&server, "acct_f", filter).await, want, "{what}");
    }

    // Bad filters name their field.
    for (field, filter) in [
        (
            "filter.status_classes",
            pb::LogFilter {
                status_classes: vec![0],
                ..Default::default()
            },
        ),
        (
            "filter.methods",
            pb::LogFilter {
                methods: vec!["BREW".into()],
                ..Default::default()
            },
        ),
        (
            "filter.ip_hash_prefix",
            pb::LogFilter {
                ip_hash_prefix: "zz".into(),
                ..Default::default()
            },
        ),
        (
            "filter.status_codes",
            pb::LogFilter {
                status_codes: vec![7],
                ..Default::default()
            },
        ),
    ] {
        let mut r = request("acct_f", pb::LogField::Unspecified, true, 10);
        r.filter = Some(filter);
        assert_eq!(
            page_token_error(server.client.list_logs(r).await),
            vec![field]
        );
    }
    let mut no_account = request("", pb::LogField::Unspecified, true, 10);
    no_account.account_id.clear();
    assert_eq!(
        page_token_error(server.client.list_logs(no_account).await),
        vec!["account_id"]
    );
    server.shutdown().await;
}

async fn search_hits_each_field_and_matches_literally(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let base = record("acct_q", 1);
    let rows = vec![
        pb::RequestRecord {
            api_key_name: "Billing Bot".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            api_key_prefix: "bye_ZZTOP".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            method: "OPTIONS".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            endpoint: "/v2/Uploads".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            query_string: "q=100%_off\\now".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            status_code: 418,
            ..base.clone()
        },
        pb::RequestRecord {
            error_code: "QUOTA9".into(),
            ..base.clone()
        },
        pb::RequestRecord {
            client_ip: "198.51.100.77".into(),
            ..base.clone()
        },
    ];
    let response = server.client.record_batch(rows).await.expect("seed");
    let ids = response.ids.clone();
    let hash77: String = {
        use sha2::Digest;
        sha2::Sha256::digest(b"198.51.100.77")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let search = |term: &str| pb::LogFilter {
        search: term.into(),
        ..Default::default()
    };
    let cases: Vec<(String, Vec<usize>)> = vec![
        ("billing bot".into(), vec![0]),
        ("zztop".into(), vec![1]),
        ("options".into(), vec![2]),
        ("UPLOADS".into(), vec![3]),
        ("100%_".into(), vec![4]),
        ("%".into(), vec![4]),
        ("\\".into(), vec![4]),
        ("418".into(), vec![5]),
        ("quota".into(), vec![6]),
        (hash77[10..30].to_uppercase(), vec![7]),
        ("absent-term".into(), vec![]),
    ];
    for (term, want) in cases {
        let mut got = listed(&server, "acct_q", search(&term)).await;
        got.sort();
        let mut want: Vec<String> = want.into_iter().map(|i| ids[i].clone()).collect();
        want.sort();
        assert_eq!(got, want, "search {term:?}");
    }
    // One- and two-character terms work, and '_' is not a wildcard.
    assert_eq!(listed(&server, "acct_q", search("%_")).await.len(), 1);
    assert_eq!(listed(&server, "acct_q", search("o_f")).await.len(), 0);
    assert_eq!(listed(&server, "acct_q", search("Z")).await.len(), 1);
    assert_eq!(listed(&server, "acct_q", search("v2")).await.len(), 1);
    server.shutdown().await;
}

async fn page_sizes_default_clamp_and_total_size(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let records: Vec<_> = (0..1100).map(|n| record("acct_p", n)).collect();
    for chunk in records.chunks(550) {
        server
            .client
            .record_batch(chunk.to_vec())
            .await
            .expect("seed");
    }
    let mut r = request("acct_p", pb::LogField::Unspecified, true, 0);
    r.include_total_size = true;
    let page = server
        .client
        .list_logs(r.clone())
        .await
        .expect("default size");
    assert_eq!(page.logs.len(), 500);
    assert_eq!(page.total_size, 1100);
    r.page_size = 5000;
    assert_eq!(
        server
            .client
            .list_logs(r.clone())
            .await
            .expect("clamped")
            .logs
            .len(),
        1000
    );
    r.page_size = -1;
    assert_eq!(
        page_token_error(server.client.list_logs(r.clone()).await),
        vec!["page_size"]
    );
    r.page_size = 10;
    r.include_total_size = false;
    assert_eq!(
        server
            .client
            .list_logs(r.clone())
            .await
            .expect("no total")
            .total_size,
        0
    );
    r.include_total_size = true;
    r.filter = Some(pb::LogFilter {
        methods: vec!["GET".into()],
        ..Default::default()
    });
    assert_eq!(
        server
            .client
            .list_logs(r)
            .await
            .expect("filtered total")
            .total_size,
        220
    );
    // An account that never sent a record: no rows, no total, no next page.
    let mut never = request("acct_never", pb::LogField::Unspecified, true, 10);
    never.include_total_size = true;
    never.filter = Some(pb::LogFilter {
        search: "v1/".into(),
        ..Default::default()
    });
    let page = server.client.list_logs(never).await.expect("empty page");
    assert!(page.logs.is_empty());
    assert_eq!(page.total_size, 0);
    assert!(page.next_page_token.is_empty());
    server.shutdown().await;
}

async fn key_status_shows_on_entries(backend: Backend) {
    use reqlog_service::store::entity::api_key;
    use sea_orm::{ActiveModelTrait, ActiveValue::Set};
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    seed(&server, "acct_ks", 9).await;
    let micros = now_seconds() * 1_000_000;
    for (key, status, expires_at) in [
        ("key_0", "ACTIVE", None),
        ("key_1", "ROTATED", Some(micros + 3_600_000_000)),
        ("key_2", "ACTIVE", Some(micros - 1)),
    ] {
        api_key::ActiveModel {
            account_id: Set("acct_ks".into()),
            api_key_id: Set(key.into()),
            name: Set(key.into()),
            prefix: Set(String::new()),
            status: Set(status.into()),
            expires_at: Set(expires_at),
            deleted_at: Set(None),
            updated_at: Set(micros),
        }
        .insert(&server.db)
        .await
        .expect("insert key");
    }
    for entry in walk(
        &server,
        request("acct_ks", pb::LogField::Unspecified, true, 100),
    )
    .await
    {
        let want = match entry.api_key_id.as_str() {
            "key_0" => pb::ApiKeyStatus::Active,
            "key_1" => pb::ApiKeyStatus::Rotated,
            _ => pb::ApiKeyStatus::Expired, // expires_at has passed
        };
        assert_eq!(entry.api_key_status, want as i32, "{}", entry.api_key_id);
    }
    server.shutdown().await;
}

/// The query plan of a page's SELECT, as text.
async fn plan(server: &TestServer, query: &LogQuery) -> String {
    let backend = server.db.get_database_backend();
    // The account's number is a bound value: any one shows the plan.
    let statement = page_select(backend, 1, query, None, 500).build(backend);
    let (prefix, column) = match backend {
        sea_orm::DbBackend::Postgres => {
            // An empty table makes a sequential scan cheapest; ask whether an index *can*
            // serve the order without a sort. Its estimate for a table never analyzed
            // also depends on the row's width: since rows hold their key's label as a
            // number, a bitmap scan and a sort of the "2 rows" it guesses looked cheaper.
            server
                .db
                .execute_unprepared("SET enable_seqscan = off; SET enable_bitmapscan = off")
                .await
                .expect("set");
            ("EXPLAIN ", "QUERY PLAN")
        }
        _ => ("EXPLAIN QUERY PLAN ", "detail"),
    };
    explain(server, statement, prefix, column).await
}

/// The plan of `statement` as text: `prefix` is the backend's EXPLAIN, `column` the
/// column its lines come in.
async fn explain(server: &TestServer, statement: Statement, prefix: &str, column: &str) -> String {
    let explain = Statement::from_sql_and_values(
        server.db.get_database_backend(),
        format!("{prefix}{}", statement.sql),
        statement.values.map(|v| v.0).unwrap_or_default(),
    );
    let rows = server.db.query_all(explain).await.expect("explain");
    rows.iter()
        .map(|row| row.try_get::<String>("", column).expect("plan text"))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn indexes_serve_default_order_and_key_filter(backend: Backend) {
    let Some(server) =
        TestServer::start_with(backend, |config| config.db_max_connections = 1).await
    else {
        return;
    };
    let default_order =
        LogQuery::new("acct", LogFilter::default(), SortOrder::default()).expect("query");
    let by_key = LogQuery::new(
        "acct",
        LogFilter {
            api_key_ids: vec!["key_1".into()],
            ..Default::default()
        },
        SortOrder {
            field: SortField::Timestamp,
            descending: false,
        },
    )
    .expect("query");
    // SQLite's table is clustered on (account_no, ts, id): its primary key is that index.
    let account_ts = match backend {
        Backend::Sqlite => "USING PRIMARY KEY (account_no=?)",
        _ => "idx_log_entries_account_ts",
    };
    for (query, index) in [
        (default_order, account_ts),
        (by_key, "idx_log_entries_account_key_ts"),
    ] {
        let plan = plan(&server, &query).await;
        assert!(plan.contains(index), "{index} should serve:\n{plan}");
        assert!(
            !plan.contains("TEMP B-TREE") && !plan.contains("Sort"),
            "no sort step:\n{plan}"
        );
    }
    server.shutdown().await;
}

async fn a_hundred_thousand_rows_page_exactly(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let total = 100_000;
    let mut senders = Vec::new();
    for part in 0..4 {
        let client = server.client.clone();
        senders.push(tokio::spawn(async move {
            for batch in (part..total / 1000).step_by(4) {
                let records: Vec<_> = (batch * 1000..(batch + 1) * 1000)
                    .map(|n| record("acct_big", n))
                    .collect();
                let response = client.record_batch(records).await.expect("batch");
                assert_eq!(response.accepted, 1000);
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    for (field, descending) in [
        (pb::LogField::Unspecified, true),
        (pb::LogField::Endpoint, false),
        (pb::LogField::ErrorCode, true),
        (pb::LogField::DurationMs, false),
    ] {
        let rows = walk(&server, request("acct_big", field, descending, 1000)).await;
        assert_eq!(rows.len(), total, "{field:?}");
        let unique: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(unique.len(), total, "{field:?}: every row once");
        let ordered = rows.windows(2).all(|pair| {
            let order = key_of(&pair[0], field)
                .cmp(&key_of(&pair[1], field))
                .then(id_of(&pair[0]).cmp(&id_of(&pair[1])));
            let descending = descending || field == pb::LogField::Unspecified;
            order
                == if descending {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
        });
        assert!(ordered, "{field:?}: in order");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn status_class_unspecified_is_refused_with_its_code() {
    let server = TestServer::start(Backend::Sqlite).await.expect("sqlite");
    let mut r = request("acct", pb::LogField::Unspecified, true, 10);
    r.filter = Some(pb::LogFilter {
        status_classes: vec![0],
        ..Default::default()
    });
    let status = server
        .client
        .logs()
        .list_logs(r)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    server.shutdown().await;
}

/// PostgreSQL: a page sorted by path joins the paths' dictionary by a hash join and sorts
/// once. Joined directly, the dictionary's unique index on `value` offered the paths in
/// order, and the planner, once the table was analyzed, chose a nested loop of every path
/// against every row of the account (`store::logs::join_paths`).
#[tokio::test]
async fn postgres_sorts_by_path_with_a_hash_join() {
    let Some(server) = TestServer::start(Backend::Postgres).await else {
        return;
    };
    server
        .db
        .execute_unprepared(
            "INSERT INTO account_numbers (id, value) VALUES (1000, 'acct_paths'); \
             INSERT INTO endpoint_numbers (id, value) \
             SELECT 1000 + i, '/v1/path/' || i FROM generate_series(1, 14) i; \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             SELECT i, 1000, 1000000::bigint * i, 1, 1, 'GET', 1001 + (i * 7) % 14, 200, \
             '\\xab'::bytea, i FROM generate_series(1, 20000) i; \
             ANALYZE log_entries; ANALYZE endpoint_numbers",
        )
        .await
        .expect("rows of fourteen paths");
    let query = LogQuery::new(
        "acct_paths",
        LogFilter::default(),
        SortOrder {
            field: SortField::Endpoint,
            descending: false,
        },
    )
    .expect("query");
    let statement = page_select(sea_orm::DbBackend::Postgres, 1000, &query, None, 100)
        .build(sea_orm::DbBackend::Postgres);
    let plan = explain(&server, statement, "EXPLAIN ", "QUERY PLAN").await;
    assert!(
        plan.contains("Hash Join") && !plan.contains("Nested Loop"),
        "a hash join:\n{plan}"
    );
    server.shutdown().await;
}

//! ExportLogs on every backend: the file format byte for byte, the same rows and order as
//! ListLogs, `ids`, one consistent view while rows are recorded, large exports, slow
//! readers, cancellation and failures mid-stream; and the SDK's verification.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use reqlog_client::pb::export_logs_response::Payload;
use reqlog_client::{ClientError, pb};
use reqlog_service::domain::export::Rfc3339Millis;
use reqlog_service::store::export::EXPORT_APPLICATION_NAME;
use reqlog_tests::{
    Backend, LOG_FIELDS, TestServer, backend_tests, now_seconds, record, violated_fields,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::Code;

backend_tests!(
    golden_files_byte_for_byte,
    empty_exports,
    csv_quotes_and_defuses_formulas,
    same_rows_and_order_as_list_logs,
    ids_export_exactly_those_rows,
    bad_requests_name_their_field,
    two_hundred_thousand_rows_count_and_checksum,
    rows_recorded_during_an_export_do_not_appear,
    cancelled_export_stops_the_producer,
    slow_reader_completes_correctly,
    exports_beyond_the_limit_are_refused,
    database_failure_mid_stream_ends_in_an_error,
    sqlite_exports_hold_their_snapshot_until_they_end,
);

const HEADER: &str = "apikey_name,apikey_prefix,method,endpoint,query_params,status_code,error_code,ip_hash,timestamp";

/// A server with the background sweep off: the golden rows carry fixed, old timestamps.
async fn start(backend: Backend) -> Option<TestServer> {
    TestServer::start_with(backend, |config| config.sweep_interval = Duration::ZERO).await
}

fn export_request(account: &str, format: pb::ExportFormat) -> pb::ExportLogsRequest {
    pb::ExportLogsRequest {
        account_id: account.into(),
        format: format as i32,
        ..Default::default()
    }
}

/// The file through the SDK, which verifies it against the summary.
async fn export(
    server: &TestServer,
    request: pb::ExportLogsRequest,
) -> (Vec<u8>, pb::ExportSummary) {
    let mut file = Vec::new();
    let summary = server
        .client
        .export_to(&mut file, request)
        .await
        .expect("the export should complete and match its summary");
    (file, summary)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Records `records` in batches of 1000 from 4 concurrent callers.
async fn seed_records(server: &TestServer, records: Vec<pb::RequestRecord>) {
    let batches: Vec<Vec<pb::RequestRecord>> = records.chunks(1000).map(<[_]>::to_vec).collect();
    let mut lanes: Vec<Vec<Vec<pb::RequestRecord>>> = vec![Vec::new(); 4];
    for (n, batch) in batches.into_iter().enumerate() {
        lanes[n % 4].push(batch);
    }
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let client = server.client.clone();
            tokio::spawn(async move {
                for batch in lane {
                    let len = batch.len();
                    let response = client.record_batch(batch).await.expect("a seed batch");
                    assert_eq!(response.accepted as usize, len, "{:?}", response.rejected);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a seeding task");
    }
}

async fn seed(server: &TestServer, account: &str, count: usize) {
    seed_records(server, (0..count).map(|n| record(account, n)).collect()).await;
}

fn micros_of(entry: &pb::LogEntry) -> i64 {
    let ts = entry.timestamp.expect("a timestamp");
    ts.seconds * 1_000_000 + i64::from(ts.nanos / 1_000)
}

/// What the export should hold for a listed entry.
fn expected_object(entry: &pb::LogEntry) -> Value {
    json!({
        "apikey_name": entry.api_key_name,
        "apikey_prefix": entry.api_key_prefix,
        "method": entry.method,
        "endpoint": entry.endpoint,
        "query_params": entry.query_params,
        "status_code": entry.status_code,
        "error_code": entry.error_code,
        "ip_hash": entry.ip_hash,
        "timestamp": Rfc3339Millis::new(micros_of(entry)).as_str(),
    })
}

fn ndjson_objects(file: &[u8]) -> Vec<Value> {
    std::str::from_utf8(file)
        .expect("exports are UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).expect("each NDJSON line is an object"))
        .collect()
}

/// Every page of a ListLogs request.
async fn list_all(server: &TestServer, mut request: pb::ListLogsRequest) -> Vec<pb::LogEntry> {
    request.page_size = 1000;
    let mut rows = Vec::new();
    loop {
        let page = server
            .client
            .list_logs(request.clone())
            .await
            .expect("a page");
        rows.extend(page.logs);
        if page.next_page_token.is_empty() {
            return rows;
        }
        request.page_token = page.next_page_token;
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// Compares with a golden file; `REQLOG_UPDATE_GOLDEN=1` rewrites it instead.
fn assert_golden(name: &str, actual: &[u8]) {
    let path = golden_path(name);
    if std::env::var_os("REQLOG_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).expect("the golden file should be writable");
    }
    let expected = std::fs::read(&path).expect("the golden file should exist");
    assert!(
        expected == actual,
        "{name} differs from its golden file:\n--- expected\n{}\n--- actual\n{}",
        String::from_utf8_lossy(&expected),
        String::from_utf8_lossy(actual)
    );
}

fn at(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// The fixed data set behind the golden files: fixed timestamps (2026-03-06T12:30:45Z and
/// around), every nullable column both ways, characters CSV must quote and values a
/// spreadsheet would evaluate.
fn golden_records(account: &str) -> Vec<pb::RequestRecord> {
    const T: i64 = 1_772_800_245; // 2026-03-06T12:30:45Z
    let base = pb::RequestRecord {
        account_id: account.into(),
        api_key_id: "key_1".into(),
        api_key_name: "Production".into(),
        api_key_prefix: "bye_AB12C".into(),
        method: "GET".into(),
        endpoint: "/v1/models".into(),
        status_code: 200,
        client_ip: "203.0.113.10".into(),
        user_agent: "never-exported/1.0".into(),
        duration_ms: 12,
        timestamp: at(T, 0),
        ..Default::default()
    };
    vec![
        base.clone(),
        pb::RequestRecord {
            method: "post".into(),
            endpoint: "/v1/chat/completions?stream=true".into(),
            query_string: "token=secret&temperature=0.5".into(),
            status_code: 429,
            error_code: "BSE1001".into(),
            client_ip: "2001:DB8::1".into(),
            timestamp: at(T - 1, 123_456_789),
            ..base.clone()
        },
        pb::RequestRecord {
            api_key_id: "key_2".into(),
            api_key_name: "Acme, Inc. \"EU\"".into(),
            api_key_prefix: "bye_ZZ9".into(),
            method: "DELETE".into(),
            endpoint: "/v1/files/file,1".into(),
            query_string: "q=\"a,b\"&x=1".into(),
            status_code: 204,
            client_ip: String::new(),
            timestamp: at(T - 60, 999_999_999),
            ..base.clone()
        },
        pb::RequestRecord {
            api_key_id: "key_3".into(),
            api_key_name: "=HYPERLINK(\"http://evil.example\",\"click\")".into(),
            api_key_prefix: "-1".into(),
            query_string: "@x=1".into(),
            error_code: "+E".into(),
            status_code: 500,
            timestamp: at(T - 3_600, 1_000_000),
            ..base.clone()
        },
        pb::RequestRecord {
            api_key_id: "key_4".into(),
            api_key_name: "Ünïcödé ключ 鍵".into(),
            api_key_prefix: "@bye".into(),
            method: "put".into(),
            endpoint: "/v1/items/é".into(),
            query_string: "name=José&n=-5".into(),
            status_code: 201,
            timestamp: at(T - 86_400 * 65, 0), // 2025-12-31T12:30:45Z
            ..base.clone()
        },
        pb::RequestRecord {
            api_key_id: "key_5".into(),
            api_key_name: String::new(),
            api_key_prefix: String::new(),
            method: "OPTIONS".into(),
            endpoint: "/".into(),
            status_code: 100,
            client_ip: "::ffff:198.51.100.7".into(),
            timestamp: at(951_782_400, 0), // 2000-02-29T00:00:00Z
            ..base
        },
    ]
}

async fn golden_files_byte_for_byte(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    seed_records(&server, golden_records("acct_golden")).await;
    // Another account's rows never leak into an export.
    seed(&server, "acct_other", 10).await;

    for (format, name) in [
        (pb::ExportFormat::Unspecified, "export.csv"),
        (pb::ExportFormat::Csv, "export.csv"),
        (pb::ExportFormat::Json, "export.json"),
        (pb::ExportFormat::Ndjson, "export.ndjson"),
    ] {
        let (file, summary) = export(&server, export_request("acct_golden", format)).await;
        assert_golden(name, &file);
        assert_eq!(summary.row_count, 6, "{name}");
        assert_eq!(summary.byte_count, file.len() as i64);
        assert_eq!(summary.sha256, sha256_hex(&file));
    }
    // Oldest first: the same rows, reversed.
    let mut request = export_request("acct_golden", pb::ExportFormat::Csv);
    request.order_by = Some(pb::SortOrder {
        field: pb::LogField::Timestamp as i32,
        descending: false,
    });
    let (ascending, _) = export(&server, request).await;
    let golden = std::fs::read_to_string(golden_path("export.csv")).expect("golden");
    let mut lines: Vec<&str> = golden.lines().skip(1).collect();
    lines.reverse();
    assert_eq!(
        String::from_utf8(ascending).expect("UTF-8"),
        format!("{HEADER}\n{}\n", lines.join("\n"))
    );
    // The JSON golden is one array with the nine keys, in order, in every object.
    let json: Value =
        serde_json::from_slice(&std::fs::read(golden_path("export.json")).expect("golden"))
            .expect("the JSON export is valid JSON");
    assert_eq!(json.as_array().map(Vec::len), Some(6));
    server.shutdown().await;
}

async fn empty_exports(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    seed(&server, "acct_other", 5).await;
    for (format, expected) in [
        (pb::ExportFormat::Csv, format!("{HEADER}\n")),
        (pb::ExportFormat::Json, "[]\n".to_owned()),
        (pb::ExportFormat::Ndjson, String::new()),
    ] {
        let (file, summary) = export(&server, export_request("acct_empty", format)).await;
        assert_eq!(String::from_utf8(file).expect("UTF-8"), expected);
        assert_eq!(summary.row_count, 0);
        assert_eq!(summary.byte_count, expected.len() as i64);
        assert_eq!(summary.sha256, sha256_hex(expected.as_bytes()));
    }
    // NDJSON of nothing: no chunk at all, only the summary.
    let mut stream = server
        .client
        .logs()
        .export_logs(export_request("acct_empty", pb::ExportFormat::Ndjson))
        .await
        .expect("the export starts")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("a message")
        .expect("the summary");
    assert!(matches!(first.payload, Some(Payload::Summary(_))));
    assert!(stream.message().await.expect("the end").is_none());
    server.shutdown().await;
}

async fn csv_quotes_and_defuses_formulas(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    // (api_key_name, api_key_prefix, query_string, error_code) as recorded.
    let cases: [(&str, &str, &str, &str); 8] = [
        ("=1+1", "=cmd", "", ""),
        ("+1", "+p", "a=1", "+E"),
        ("-1", "-p", "-x=1", "-E"),
        ("@SUM(A1)", "@p", "@x=1", "@E"),
        ("a,b", "c\"d", "q=\"x,y\"&z=1", "E,1"),
        ("\"quoted\"", "p", "q=\"", "E\"1"),
        (
            "=HYPERLINK(\"http://evil.example\",\"a,b\")",
            "p",
            "=x",
            "=E",
        ),
        ("plain", "bye_1", "page=2", "E1"),
    ];
    let records: Vec<pb::RequestRecord> = cases
        .iter()
        .enumerate()
        .map(|(n, (name, prefix, query, error))| pb::RequestRecord {
            api_key_name: (*name).into(),
            api_key_prefix: (*prefix).into(),
            query_string: (*query).into(),
            error_code: (*error).into(),
            // One second apart, newest first in the export: case 0 is the newest.
            timestamp: at(now_seconds() - 100 - n as i64, 0),
            ..record("acct_quote", n)
        })
        .collect();
    seed_records(&server, records).await;

    let (file, _) = export(&server, export_request("acct_quote", pb::ExportFormat::Csv)).await;
    let mut reader = csv::ReaderBuilder::new().from_reader(file.as_slice());
    let header: Vec<String> = reader
        .headers()
        .expect("a header")
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header.join(","), HEADER);
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .collect::<Result<_, _>>()
        .expect("RFC 4180 CSV parses back");
    assert_eq!(rows.len(), cases.len());
    let defused = |value: &str| match value.chars().next() {
        Some('=' | '+' | '-' | '@') => format!("'{value}"),
        _ => value.to_owned(),
    };
    for (row, (name, prefix, query, error)) in rows.iter().zip(cases) {
        assert_eq!(&row[0], defused(name), "api_key_name {name}");
        assert_eq!(&row[1], defused(prefix), "api_key_prefix {prefix}");
        assert!(row[3].starts_with("/v1/items/"), "endpoint");
        assert_eq!(&row[4], defused(query), "query_params {query}");
        assert_eq!(&row[6], defused(error), "error_code {error}");
        // Numbers and timestamps are never touched.
        assert!(row[5].parse::<i32>().is_ok());
        assert!(row[8].ends_with('Z') && row[8].len() == 24);
    }
    // JSON carries the values as recorded: defusing is for spreadsheets only.
    let (file, _) = export(
        &server,
        export_request("acct_quote", pb::ExportFormat::Ndjson),
    )
    .await;
    let objects = ndjson_objects(&file);
    for (object, (name, _, query, _)) in objects.iter().zip(cases) {
        assert_eq!(object["apikey_name"], name);
        if !query.is_empty() {
            assert_eq!(object["query_params"], query);
        }
    }
    server.shutdown().await;
}

async fn same_rows_and_order_as_list_logs(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    // More than two export pages, with ties and NULLs in every sortable column.
    let account = "acct_order";
    seed(&server, account, 2_345).await;
    seed(&server, "acct_other", 50).await;

    let check = |filter: Option<pb::LogFilter>, order: Option<pb::SortOrder>| {
        let server = &server;
        async move {
            let listed = list_all(
                server,
                pb::ListLogsRequest {
                    account_id: account.into(),
                    filter: filter.clone(),
                    order_by: order,
                    ..Default::default()
                },
            )
            .await;
            let (file, summary) = export(
                server,
                pb::ExportLogsRequest {
                    account_id: account.into(),
                    format: pb::ExportFormat::Ndjson as i32,
                    filter,
                    order_by: order,
                    ids: Vec::new(),
                },
            )
            .await;
            let expected: Vec<Value> = listed.iter().map(expected_object).collect();
            let exported = ndjson_objects(&file);
            assert_eq!(summary.row_count as usize, exported.len());
            assert!(exported == expected, "order {order:?}");
            exported.len()
        }
    };

    for field in LOG_FIELDS {
        for descending in [false, true] {
            let total = check(
                None,
                Some(pb::SortOrder {
                    field: field as i32,
                    descending,
                }),
            )
            .await;
            assert_eq!(total, 2_345);
        }
    }
    let all = list_all(
        &server,
        pb::ListLogsRequest {
            account_id: account.into(),
            ..Default::default()
        },
    )
    .await;
    let hash = all
        .iter()
        .find(|r| !r.ip_hash.is_empty())
        .expect("a hashed IP")
        .ip_hash
        .clone();
    let filters = [
        pb::LogFilter {
            search: "items/3".into(),
            ..Default::default()
        },
        pb::LogFilter {
            methods: vec!["get".into(), "POST".into()],
            status_classes: vec![pb::StatusClass::StatusClass4xx as i32],
            ..Default::default()
        },
        pb::LogFilter {
            api_key_ids: vec!["key_1".into()],
            error_codes: vec!["BSE1000".into(), "BSE1003".into()],
            ..Default::default()
        },
        pb::LogFilter {
            endpoint_prefix: "/v1/items/1".into(),
            ip_hash_prefix: hash[..4].to_uppercase(),
            ..Default::default()
        },
        pb::LogFilter {
            start_time: all[1_500].timestamp,
            end_time: all[300].timestamp,
            status_codes: vec![200, 503],
            ..Default::default()
        },
    ];
    for filter in filters {
        for order in [
            None,
            Some(pb::SortOrder {
                field: pb::LogField::ErrorCode as i32,
                descending: false,
            }),
        ] {
            let count = check(Some(filter.clone()), order).await;
            assert!(count > 0 && count < 2_345, "{filter:?} selects {count}");
        }
    }
    server.shutdown().await;
}

async fn ids_export_exactly_those_rows(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    seed(&server, "acct_ids", 1_500).await;
    seed(&server, "acct_foreign", 20).await;
    let mine = list_all(
        &server,
        pb::ListLogsRequest {
            account_id: "acct_ids".into(),
            ..Default::default()
        },
    )
    .await;
    let foreign = list_all(
        &server,
        pb::ListLogsRequest {
            account_id: "acct_foreign".into(),
            ..Default::default()
        },
    )
    .await;
    // Every 7th row, ids of another account, ids of no row, and a repeat.
    let chosen: Vec<&pb::LogEntry> = mine.iter().step_by(7).collect();
    let mut ids: Vec<String> = chosen.iter().map(|r| r.id.clone()).collect();
    ids.extend(foreign.iter().take(5).map(|r| r.id.clone()));
    ids.extend(["999999999".to_owned(), "0".to_owned(), ids[0].clone()]);
    ids.reverse(); // the request's order does not matter: order_by does

    for order in [
        None,
        Some(pb::SortOrder {
            field: pb::LogField::StatusCode as i32,
            descending: false,
        }),
    ] {
        let listed = list_all(
            &server,
            pb::ListLogsRequest {
                account_id: "acct_ids".into(),
                order_by: order,
                ..Default::default()
            },
        )
        .await;
        let wanted: std::collections::HashSet<&str> =
            chosen.iter().map(|r| r.id.as_str()).collect();
        let expected: Vec<Value> = listed
            .iter()
            .filter(|r| wanted.contains(r.id.as_str()))
            .map(expected_object)
            .collect();
        let (file, summary) = export(
            &server,
            pb::ExportLogsRequest {
                account_id: "acct_ids".into(),
                format: pb::ExportFormat::Ndjson as i32,
                // Ignored when ids are given: it would select none of them.
                filter: Some(pb::LogFilter {
                    search: "no row matches this".into(),
                    ..Default::default()
                }),
                order_by: order,
                ids: ids.clone(),
            },
        )
        .await;
        assert_eq!(summary.row_count as usize, chosen.len());
        assert!(ndjson_objects(&file) == expected, "order {order:?}");
    }

    // Only foreign and unknown ids: an empty export, not an error.
    let (file, summary) = export(
        &server,
        pb::ExportLogsRequest {
            account_id: "acct_ids".into(),
            ids: vec![foreign[0].id.clone(), "123456789".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(summary.row_count, 0);
    assert_eq!(file, format!("{HEADER}\n").into_bytes());

    // The maximum selection works.
    let mut many: Vec<String> = mine.iter().map(|r| r.id.clone()).collect();
    many.extend((0..10_000 - many.len()).map(|n| (10_000_000 + n).to_string()));
    assert_eq!(many.len(), 10_000);
    let (_, summary) = export(
        &server,
        pb::ExportLogsRequest {
            account_id: "acct_ids".into(),
            ids: many,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(summary.row_count, 1_500);
    server.shutdown().await;
}

async fn export_error(server: &TestServer, request: pb::ExportLogsRequest) -> tonic::Status {
    match server.client.logs().export_logs(request).await {
        Ok(_) => panic!("the export should be refused"),
        Err(status) => status,
    }
}

async fn bad_requests_name_their_field(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    let valid = || export_request("acct_bad", pb::ExportFormat::Csv);
    let cases: Vec<(pb::ExportLogsRequest, &str)> = vec![
        (
            pb::ExportLogsRequest {
                account_id: String::new(),
                ..valid()
            },
            "account_id",
        ),
        (
            pb::ExportLogsRequest {
                account_id: "bad account!".into(),
                ..valid()
            },
            "account_id",
        ),
        (
            pb::ExportLogsRequest {
                format: 9,
                ..valid()
            },
            "format",
        ),
        (
            pb::ExportLogsRequest {
                filter: Some(pb::LogFilter {
                    status_classes: vec![pb::StatusClass::Unspecified as i32],
                    ..Default::default()
                }),
                ..valid()
            },
            "filter.status_classes",
        ),
        (
            pb::ExportLogsRequest {
                order_by: Some(pb::SortOrder {
                    field: 99,
                    descending: false,
                }),
                ..valid()
            },
            "order_by.field",
        ),
        (
            pb::ExportLogsRequest {
                ids: vec!["12".into(), "abc".into()],
                ..valid()
            },
            "ids",
        ),
        (
            pb::ExportLogsRequest {
                ids: vec!["-3".into()],
                ..valid()
            },
            "ids",
        ),
        (
            pb::ExportLogsRequest {
                ids: (0..10_001).map(|n| n.to_string()).collect(),
                ..valid()
            },
            "ids",
        ),
    ];
    for (request, field) in cases {
        let status = export_error(&server, request).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&status), vec![field.to_owned()]);
    }
    // The SDK reports the same.
    let error = server
        .client
        .export_to(
            Vec::new(),
            pb::ExportLogsRequest {
                format: 9,
                ..valid()
            },
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, ClientError::InvalidArgument { violations, .. } if violations[0].field == "format"),
        "{error:?}"
    );
    server.shutdown().await;
}

async fn two_hundred_thousand_rows_count_and_checksum(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    const ROWS: usize = 200_000;
    seed(&server, "acct_big", ROWS).await;

    // The raw stream: every chunk at most 64 KiB, the summary last and right.
    let mut stream = server
        .client
        .logs()
        .export_logs(export_request("acct_big", pb::ExportFormat::Csv))
        .await
        .expect("the export starts")
        .into_inner();
    let mut file = Vec::new();
    let mut chunks = 0;
    let mut summary = None;
    while let Some(message) = stream.message().await.expect("no error mid-stream") {
        assert!(summary.is_none(), "nothing follows the summary");
        match message.payload.expect("a payload") {
            Payload::Chunk(chunk) => {
                assert!(!chunk.is_empty() && chunk.len() <= 64 * 1024);
                chunks += 1;
                file.extend_from_slice(&chunk);
            }
            Payload::Summary(s) => summary = Some(s),
        }
    }
    let summary = summary.expect("a summary");
    assert_eq!(summary.row_count, ROWS as i64);
    assert_eq!(summary.byte_count, file.len() as i64);
    assert_eq!(summary.sha256, sha256_hex(&file));
    assert!(chunks as i64 >= summary.byte_count / (64 * 1024));

    // Parsed back: the header and one record a row, newest first.
    let mut reader = csv::Reader::from_reader(file.as_slice());
    assert_eq!(
        reader
            .headers()
            .expect("a header")
            .iter()
            .collect::<Vec<_>>()
            .join(","),
        HEADER
    );
    let mut count = 0;
    let mut previous = String::from("~");
    for record in reader.records() {
        let record = record.expect("each line parses");
        assert_eq!(record.len(), 9);
        assert!(&record[8] <= previous.as_str(), "timestamps descend");
        previous = record[8].to_owned();
        count += 1;
    }
    assert_eq!(count, ROWS);
    assert_eq!(file.iter().filter(|&&b| b == b'\n').count(), ROWS + 1);

    // The SDK verifies the same export and gets the same bytes.
    let (again, sdk_summary) =
        export(&server, export_request("acct_big", pb::ExportFormat::Csv)).await;
    assert_eq!(sdk_summary, summary);
    assert!(again == file);
    server.shutdown().await;
}

async fn rows_recorded_during_an_export_do_not_appear(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    // About 8 MB of CSV: far more than the channel and the HTTP/2 windows hold, so the
    // export is still reading pages when the late rows arrive.
    const ROWS: usize = 40_000;
    seed(&server, "acct_live", ROWS).await;
    for descending in [true, false] {
        let mut request = export_request("acct_live", pb::ExportFormat::Csv);
        request.order_by = Some(pb::SortOrder {
            field: pb::LogField::Timestamp as i32,
            descending,
        });
        let mut stream = server
            .client
            .logs()
            .export_logs(request.clone())
            .await
            .expect("the export starts")
            .into_inner();
        let mut file = Vec::new();
        let Some(Payload::Chunk(first)) = stream
            .message()
            .await
            .expect("a message")
            .and_then(|m| m.payload)
        else {
            panic!("a first chunk");
        };
        file.extend_from_slice(&first);

        // While the export is under way: rows older, newer and in between every exported
        // timestamp (so that some sort after the export's position whichever the
        // direction), and rows tied with exported ones (higher ids).
        let late: Vec<pb::RequestRecord> = (0..600)
            .map(|n| {
                let mut r = record("acct_live", n * 33);
                r.api_key_name = format!("late row {descending}");
                if n % 3 == 0 {
                    r.timestamp = at(now_seconds() - 400_000 - n as i64, 0);
                } else if n % 3 == 1 {
                    r.timestamp = at(now_seconds() - 10 - n as i64, 0);
                }
                r
            })
            .collect();
        seed_records(&server, late).await;
        match backend {
            Backend::Postgres => assert!(
                connections_in_use(&server.db) >= 1,
                "the export should still hold its snapshot"
            ),
            Backend::Sqlite => assert_snapshot_held(&server).await,
        }

        let mut summary = None;
        while let Some(message) = stream.message().await.expect("no error") {
            match message.payload.expect("a payload") {
                Payload::Chunk(chunk) => file.extend_from_slice(&chunk),
                Payload::Summary(s) => summary = Some(s),
            }
        }
        let summary = summary.expect("a summary");
        let text = String::from_utf8(file).expect("UTF-8");
        assert!(
            !text.contains(&format!("late row {descending}")),
            "a row recorded later was exported"
        );
        assert_eq!(
            text.lines().count(),
            ROWS + 1 + if descending { 0 } else { 600 }
        );
        assert_eq!(summary.row_count as usize, text.lines().count() - 1);

        // A new export sees them.
        let (_, summary) = export(&server, request).await;
        let expected = ROWS + if descending { 600 } else { 1_200 };
        assert_eq!(summary.row_count as usize, expected);
    }
    server.shutdown().await;
}

/// Pooled connections checked out now. On PostgreSQL an export's snapshot holds one from
/// its start until its producer task ends.
fn connections_in_use(db: &DatabaseConnection) -> usize {
    let (size, idle) = match db {
        DatabaseConnection::SqlxSqlitePoolConnection(_) => {
            let pool = db.get_sqlite_connection_pool();
            (pool.size() as usize, pool.num_idle())
        }
        _ => {
            let pool = db.get_postgres_connection_pool();
            (pool.size() as usize, pool.num_idle())
        }
    };
    size.saturating_sub(idle)
}

/// Waits until no pooled connection is checked out: this shows the producer task is gone.
async fn wait_for_idle_pool(db: &DatabaseConnection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while connections_in_use(db) > 0 {
        assert!(
            Instant::now() < deadline,
            "a connection is still held after the export was cancelled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Export sessions (by their `application_name`) of this test database inside a transaction
/// (PostgreSQL only): all of them, or only those waiting idle inside one. The search indexer
/// and the ingest writer open transactions too, so counting every session would be racy.
async fn open_transactions(db: &DatabaseConnection, idle_only: bool) -> i64 {
    let sql = if idle_only {
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = $1 AND state LIKE 'idle in transaction%'"
    } else {
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = $1 AND xact_start IS NOT NULL"
    };
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            sql,
            [EXPORT_APPLICATION_NAME.into()],
        ))
        .await
        .expect("pg_stat_activity")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a count")
}

async fn cancelled_export_stops_the_producer(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    seed(&server, "acct_cancel", 20_000).await;
    // More cancellations than the server runs exports at once: a producer left running
    // would hold its slot, and a later export would be refused.
    for _ in 0..6 {
        let mut stream = server
            .client
            .logs()
            .export_logs(export_request("acct_cancel", pb::ExportFormat::Json))
            .await
            .expect("the export starts")
            .into_inner();
        let first = stream.message().await.expect("a message").expect("a chunk");
        assert!(matches!(first.payload, Some(Payload::Chunk(_))));
        match backend {
            Backend::Postgres => {
                assert!(
                    connections_in_use(&server.db) >= 1,
                    "the export is under way"
                );
                assert!(
                    open_transactions(&server.db, false).await >= 1,
                    "the snapshot is open"
                );
            }
            Backend::Sqlite => assert_snapshot_held(&server).await,
        }
        drop(stream);
        match backend {
            Backend::Postgres => {
                wait_for_idle_pool(&server.db).await;
                assert_eq!(open_transactions(&server.db, true).await, 0);
            }
            Backend::Sqlite => wait_for_no_snapshot(&server.db).await,
        }
    }
    // The server still serves: ingest, ListLogs, and a whole export.
    server
        .client
        .record(record("acct_cancel", 20_000))
        .await
        .expect("ingest still works");
    let page = server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_cancel".into(),
            ..Default::default()
        })
        .await
        .expect("ListLogs still works");
    assert_eq!(page.logs.len(), 500);
    let (_, summary) = export(
        &server,
        export_request("acct_cancel", pb::ExportFormat::Json),
    )
    .await;
    assert_eq!(summary.row_count, 20_001);
    server.shutdown().await;
}

async fn slow_reader_completes_correctly(backend: Backend) {
    let Some(server) = start(backend).await else {
        return;
    };
    seed(&server, "acct_slow", 10_000).await;
    let (fast, fast_summary) =
        export(&server, export_request("acct_slow", pb::ExportFormat::Csv)).await;

    let mut stream = server
        .client
        .logs()
        .export_logs(export_request("acct_slow", pb::ExportFormat::Csv))
        .await
        .expect("the export starts")
        .into_inner();
    let mut file = Vec::new();
    let mut summary = None;
    let mut messages = 0;
    while let Some(message) = stream.message().await.expect("no error") {
        messages += 1;
        match message.payload.expect("a payload") {
            Payload::Chunk(chunk) => file.extend_from_slice(&chunk),
            Payload::Summary(s) => summary = Some(s),
        }
        if messages % 4 == 0 {
            // Ingest is not held up by the export waiting for its reader.
            let started = Instant::now();
            server
                .client
                .record(record("acct_other", messages))
                .await
                .expect("ingest during a slow export");
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(messages > 20, "the export spans many messages");
    assert_eq!(summary.expect("a summary"), fast_summary);
    assert!(file == fast);
    server.shutdown().await;
}

async fn exports_beyond_the_limit_are_refused(backend: Backend) {
    // A pool of 2 connections leaves room for one export.
    let Some(server) = TestServer::start_with(backend, |config| {
        config.sweep_interval = Duration::ZERO;
        config.db_max_connections = 2;
    })
    .await
    else {
        return;
    };
    seed(&server, "acct_limit", 10_000).await;
    let mut first = server
        .client
        .logs()
        .export_logs(export_request("acct_limit", pb::ExportFormat::Csv))
        .await
        .expect("the first export starts")
        .into_inner();
    first.message().await.expect("a message").expect("a chunk");
    let status = export_error(&server, export_request("acct_limit", pb::ExportFormat::Csv)).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Ingest and ListLogs still get a connection.
    server
        .client
        .record(record("acct_limit", 10_000))
        .await
        .expect("ingest during an export");
    server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_limit".into(),
            ..Default::default()
        })
        .await
        .expect("ListLogs during an export");
    // Once the first export is cancelled its slot is free again.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut file = Vec::new();
        match server
            .client
            .export_to(
                &mut file,
                export_request("acct_limit", pb::ExportFormat::Csv),
            )
            .await
        {
            Ok(summary) => {
                assert_eq!(summary.row_count, 10_001);
                break;
            }
            Err(ClientError::Rpc(status)) if status.code() == Code::ResourceExhausted => {
                assert!(
                    Instant::now() < deadline,
                    "the cancelled export kept its slot"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("{error:?}"),
        }
    }
    server.shutdown().await;
}

async fn database_failure_mid_stream_ends_in_an_error(backend: Backend) {
    if backend != Backend::Postgres {
        // SQLite offers no way to break one open connection from outside.
        return;
    }
    let Some(server) = start(backend).await else {
        return;
    };
    // Far more than the transport buffers, so that the producer waits with pages unread.
    seed(&server, "acct_fail", 60_000).await;
    let mut stream = server
        .client
        .logs()
        .export_logs(export_request("acct_fail", pb::ExportFormat::Csv))
        .await
        .expect("the export starts")
        .into_inner();
    stream.message().await.expect("a message").expect("a chunk");
    // Kill the export's session once it waits inside its transaction (the producer is
    // blocked on the full channel): its next page read fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    while open_transactions(&server.db, true).await == 0 {
        assert!(Instant::now() < deadline, "the export never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The session is idle only between page reads: retry until one was really terminated.
    loop {
        let row = server
            .db
            .query_one(Statement::from_sql_and_values(
                server.db.get_database_backend(),
                // In the select list, not the WHERE clause: there the planner may call it
                // for other databases' sessions before filtering them out.
                "SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state LIKE 'idle in transaction%' \
                 AND application_name = $1",
                [EXPORT_APPLICATION_NAME.into()],
            ))
            .await
            .expect("terminate the export's session")
            .expect("a row");
        if row.try_get_by_index::<i64>(0).expect("a count") > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the export's session was never idle"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let error = loop {
        match stream.message().await {
            Ok(Some(message)) => {
                assert!(
                    matches!(message.payload, Some(Payload::Chunk(_))),
                    "no summary after a failure"
                );
            }
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    // A lost connection maps as everywhere else: UNAVAILABLE, retryable (other database
    // errors are INTERNAL "database error"); never a message with SQL in it.
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert_eq!(error.message(), "database unavailable, retry later");
    assert!(ClientError::from(error).is_retryable());
    // The next export gets a sound connection and completes.
    let (_, summary) = export(&server, export_request("acct_fail", pb::ExportFormat::Csv)).await;
    assert_eq!(summary.row_count, 60_000);
    server.shutdown().await;
}

/// SQLite: `(log, checkpointed)` frames of a passive checkpoint run now. A checkpoint
/// cannot copy back frames newer than a reader's snapshot, so `checkpointed < log` after a
/// commit shows some reader still holds an older snapshot.
async fn checkpoint_frames(db: &DatabaseConnection) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = db
            .query_one(Statement::from_string(
                db.get_database_backend(),
                "PRAGMA wal_checkpoint(PASSIVE)",
            ))
            .await
            .expect("PRAGMA wal_checkpoint")
            .expect("a row");
        let frames = |column| row.try_get_by_index::<i64>(column).expect("a number");
        // -1: the server's own checkpoint was running; ask again.
        if frames(1) >= 0 {
            return (frames(1), frames(2));
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints never got their turn"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SQLite: an export under way holds its snapshot (on its own connection, not a pooled
/// one): a row committed now stays in the WAL, whatever the checkpoints do.
async fn assert_snapshot_held(server: &TestServer) {
    server
        .client
        .record(record("acct_snapshot", 0))
        .await
        .expect("a commit after the export started");
    let (log, checkpointed) = checkpoint_frames(&server.db).await;
    assert!(
        checkpointed < log,
        "no snapshot holds the WAL back ({checkpointed} of {log} frames copied back)"
    );
}

/// SQLite: waits until a checkpoint copies back the whole WAL: no reader holds an old
/// snapshot any more (writes of the search indexer may still come and go meanwhile).
async fn wait_for_no_snapshot(db: &DatabaseConnection) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (log, checkpointed) = checkpoint_frames(db).await;
        if checkpointed == log {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "a snapshot is still held after the export ended ({checkpointed} of {log} frames)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sqlite_exports_hold_their_snapshot_until_they_end(backend: Backend) {
    if backend != Backend::Sqlite {
        return;
    }
    // One pooled connection: the export must not need it, or ListLogs would wait for it.
    let Some(server) = TestServer::start_with(backend, |config| {
        config.sweep_interval = Duration::ZERO;
        config.db_max_connections = 1;
    })
    .await
    else {
        return;
    };
    seed(&server, "acct_wal", 20_000).await;
    let mut stream = server
        .client
        .logs()
        .export_logs(export_request("acct_wal", pb::ExportFormat::Csv))
        .await
        .expect("the export starts")
        .into_inner();
    stream.message().await.expect("a message").expect("a chunk");
    assert_snapshot_held(&server).await;
    let page = server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_wal".into(),
            ..Default::default()
        })
        .await
        .expect("ListLogs during an export");
    assert_eq!(page.logs.len(), 500);
    // Read to the end: the snapshot ends with the export.
    let mut rows = None;
    while let Some(message) = stream.message().await.expect("no error") {
        if let Some(Payload::Summary(summary)) = message.payload {
            rows = Some(summary.row_count);
        }
    }
    assert_eq!(rows, Some(20_000));
    wait_for_no_snapshot(&server.db).await;
    server.shutdown().await;
}

/// A fake LogService that streams what it is told, to check the SDK's verification.
mod sdk {
    use std::pin::Pin;

    use reqlog_client::ReqlogClient;
    use reqlog_client::pb::log_service_server::{LogService, LogServiceServer};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status};

    use super::*;

    #[derive(Clone)]
    struct Fake(Vec<pb::ExportLogsResponse>);

    type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportLogsResponse, Status>> + Send>>;

    #[tonic::async_trait]
    impl LogService for Fake {
        type ExportLogsStream = ExportStream;

        async fn list_logs(
            &self,
            _: Request<pb::ListLogsRequest>,
        ) -> Result<Response<pb::ListLogsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn export_logs(
            &self,
            _: Request<pb::ExportLogsRequest>,
        ) -> Result<Response<ExportStream>, Status> {
            let messages: Vec<Result<_, Status>> = self.0.iter().cloned().map(Ok).collect();
            Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
        }

        async fn get_usage_stats(
            &self,
            _: Request<pb::GetUsageStatsRequest>,
        ) -> Result<Response<pb::GetUsageStatsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }

        async fn hash_ip(
            &self,
            _: Request<pb::HashIpRequest>,
        ) -> Result<Response<pb::HashIpResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
    }

    async fn export_from(
        messages: Vec<pb::ExportLogsResponse>,
    ) -> (Vec<u8>, Result<pb::ExportSummary, ClientError>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("an address");
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LogServiceServer::new(Fake(messages)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let client = ReqlogClient::connect(format!("http://{addr}"))
            .await
            .expect("connect");
        let mut file = Vec::new();
        let result = client
            .export_to(&mut file, export_request("acct", pb::ExportFormat::Csv))
            .await;
        server.abort();
        (file, result)
    }

    fn chunk(bytes: &[u8]) -> pb::ExportLogsResponse {
        pb::ExportLogsResponse {
            payload: Some(Payload::Chunk(bytes.to_vec())),
        }
    }

    fn summary(rows: i64, file: &[u8]) -> pb::ExportLogsResponse {
        pb::ExportLogsResponse {
            payload: Some(Payload::Summary(pb::ExportSummary {
                row_count: rows,
                byte_count: file.len() as i64,
                sha256: sha256_hex(file),
            })),
        }
    }

    #[tokio::test]
    async fn a_complete_stream_is_written_and_verified() {
        let (file, result) = export_from(vec![
            chunk(b"a,b\n"),
            chunk(b"1,2\n"),
            summary(1, b"a,b\n1,2\n"),
        ])
        .await;
        assert_eq!(file, b"a,b\n1,2\n");
        assert_eq!(result.expect("verified").row_count, 1);
    }

    #[tokio::test]
    async fn a_stream_without_summary_is_truncated() {
        let (_, result) = export_from(vec![chunk(b"a,b\n"), chunk(b"1,2\n")]).await;
        assert!(
            matches!(
                result,
                Err(ClientError::ExportTruncated { received_bytes: 8 })
            ),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn bytes_that_differ_from_the_summary_are_a_mismatch() {
        // A lost chunk: the count and the checksum disagree.
        let (_, result) = export_from(vec![chunk(b"a,b\n"), summary(1, b"a,b\n1,2\n")]).await;
        assert!(
            matches!(result, Err(ClientError::ExportMismatch { .. })),
            "{result:?}"
        );
        // Same length, other bytes: only the checksum disagrees.
        let (_, result) = export_from(vec![chunk(b"a,b\n1,3\n"), summary(1, b"a,b\n1,2\n")]).await;
        assert!(
            matches!(result, Err(ClientError::ExportMismatch { .. })),
            "{result:?}"
        );
        // Something after the summary.
        let (_, result) = export_from(vec![chunk(b"x\n"), summary(1, b"x\n"), chunk(b"y\n")]).await;
        assert!(
            matches!(result, Err(ClientError::ExportMismatch { .. })),
            "{result:?}"
        );
    }
}

//! ListLogs and ExportLogs against an in-memory model: random rows, random filters, sorts
//! and page sizes; the pages must concatenate to exactly the model's answer, and the
//! export must hold the same rows in the same order. Each case gets an account of its own
//! on one server per backend. `PROPTEST_CASES` raises the case count (default 32).

use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use reqlog_client::pb;
use reqlog_service::domain::ip::hash_ip;
use reqlog_service::domain::query::Sanitizer;
use reqlog_tests::{Backend, LOG_FIELDS, TestServer, now_seconds};

const KEYS: [(&str, &str, &str); 3] = [
    ("key_0", "Key A", "bye_A"),
    ("key_1", "key_b", "bye_b"),
    ("key_2", "KEY%C", "Bye_c"),
];
const METHODS: [&str; 4] = ["GET", "POST", "DELETE", "PATCH"];
const ENDPOINTS: [&str; 4] = ["/v1/items", "/v1/items/7", "/v1/Users", "/v2/a_b"];
const QUERIES: [&str; 4] = ["", "page=1", "q=Ab_%25", "token=zz&x=1"];
const STATUSES: [i32; 6] = [101, 200, 302, 404, 500, 503];
const ERRORS: [&str; 3] = ["", "BSE1001", "E_2"];
const IPS: [&str; 4] = [
    "203.0.113.1",
    "198.51.100.7",
    "2001:db8::1",
    "::ffff:203.0.113.1",
];
const SEARCHES: [&str; 13] = [
    "a", "B", "_", "%", "v1", "00", "key", "get", "/", "zz", "redacted", "e_2", "ab",
];
const ENDPOINT_PREFIXES: [&str; 4] = ["/v1", "/v1/items", "/V1", "/v2/a"];
const HEX: [&str; 6] = ["a", "B", "0", "7f", "E3", "c"];

/// One generated row, as indexes into the pools.
#[derive(Debug, Clone)]
struct RowSpec {
    key: usize,
    method: usize,
    endpoint: usize,
    query: usize,
    status: usize,
    error: usize,
    ip: usize,
    /// Seconds after the case's base time (few values: many ties).
    second: i64,
    millis: i64,
    duration: u32,
}

#[derive(Debug, Clone)]
struct FilterSpec {
    search: Option<usize>,
    keys: Vec<usize>,
    methods: Vec<usize>,
    statuses: Vec<usize>,
    classes: Vec<i32>,
    errors: Vec<usize>,
    ip_prefix: Option<usize>,
    endpoint_prefix: Option<usize>,
    start: Option<i64>,
    end: Option<i64>,
}

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<RowSpec>,
    filter: FilterSpec,
    field: usize,
    descending: bool,
    page_size: i32,
}

fn row() -> impl Strategy<Value = RowSpec> {
    (
        (0..KEYS.len(), 0..METHODS.len(), 0..ENDPOINTS.len()),
        (0..QUERIES.len(), 0..STATUSES.len(), 0..ERRORS.len()),
        (0..IPS.len(), 0..6i64, 0..3i64, 0..4u32),
    )
        .prop_map(
            |((key, method, endpoint), (query, status, error), (ip, second, millis, duration))| {
                RowSpec {
                    key,
                    method,
                    endpoint,
                    query,
                    status,
                    error,
                    ip,
                    second,
                    millis,
                    duration,
                }
            },
        )
}

fn some_of(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        2 => Just(Vec::new()),
        1 => proptest::collection::vec(0..len, 1..3),
    ]
}

fn filter() -> impl Strategy<Value = FilterSpec> {
    (
        (
            proptest::option::weighted(0.3, 0..SEARCHES.len()),
            some_of(KEYS.len()),
            some_of(METHODS.len()),
            some_of(STATUSES.len()),
        ),
        (
            prop_oneof![2 => Just(Vec::new()), 1 => proptest::collection::vec(1..=5i32, 1..3)],
            some_of(ERRORS.len() - 1),
            proptest::option::weighted(0.2, 0..HEX.len()),
            proptest::option::weighted(0.2, 0..ENDPOINT_PREFIXES.len()),
            proptest::option::weighted(0.2, 0..6i64),
            proptest::option::weighted(0.2, 0..7i64),
        ),
    )
        .prop_map(
            |((search, keys, methods, statuses), (classes, errors, ip, endpoint, start, end))| {
                FilterSpec {
                    search,
                    keys,
                    methods,
                    statuses,
                    classes,
                    // Index 0 is "no error code"; filters name real codes.
                    errors: errors.into_iter().map(|index| index + 1).collect(),
                    ip_prefix: ip,
                    endpoint_prefix: endpoint,
                    start,
                    end,
                }
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(row(), 0..40),
        filter(),
        0..LOG_FIELDS.len(),
        any::<bool>(),
        proptest::sample::select(vec![0, 1, 2, 3, 7, 1000]),
    )
        .prop_map(|(rows, filter, field, descending, page_size)| Case {
            rows,
            filter,
            field,
            descending,
            page_size,
        })
}

/// A row as the model keeps it: what the server should store.
#[derive(Debug, Clone)]
struct Stored {
    id: i64,
    key: usize,
    method: &'static str,
    endpoint: &'static str,
    query: Option<String>,
    status: i32,
    error: Option<&'static str>,
    ip_hash: String,
    micros: i64,
    duration: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Null,
    Int(i64),
    Text(String),
}

impl Stored {
    fn sort_value(&self, field: pb::LogField) -> SortValue {
        let text = |value: &str| SortValue::Text(value.to_owned());
        match field {
            pb::LogField::Unspecified | pb::LogField::Timestamp => SortValue::Int(self.micros),
            pb::LogField::ApiKeyName => text(KEYS[self.key].1),
            pb::LogField::ApiKeyPrefix => text(KEYS[self.key].2),
            pb::LogField::Method => text(self.method),
            pb::LogField::Endpoint => text(self.endpoint),
            pb::LogField::QueryParams => self.query.as_deref().map_or(SortValue::Null, text),
            pb::LogField::StatusCode => SortValue::Int(i64::from(self.status)),
            pb::LogField::ErrorCode => self.error.map_or(SortValue::Null, text),
            pb::LogField::IpHash => text(&self.ip_hash),
            pb::LogField::DurationMs => SortValue::Int(i64::from(self.duration)),
        }
    }

    fn matches(&self, filter: &FilterSpec, base: i64) -> bool {
        let searchable = [
            KEYS[self.key].1.to_owned(),
            KEYS[self.key].2.to_owned(),
            self.method.to_owned(),
            self.endpoint.to_owned(),
            self.query.clone().unwrap_or_default(),
            self.status.to_string(),
            self.error.unwrap_or_default().to_owned(),
            self.ip_hash.clone(),
        ];
        let at = |second: i64| (base + second) * 1_000_000;
        filter.search.is_none_or(|index| {
            let term = SEARCHES[index].to_ascii_lowercase();
            searchable
                .iter()
                .any(|column| column.to_ascii_lowercase().contains(&term))
        }) && (filter.keys.is_empty() || filter.keys.contains(&self.key))
            && (filter.methods.is_empty()
                || filter.methods.iter().any(|&m| METHODS[m] == self.method))
            && (filter.statuses.is_empty()
                || filter.statuses.iter().any(|&s| STATUSES[s] == self.status))
            && (filter.classes.is_empty() || filter.classes.contains(&(self.status / 100)))
            && (filter.errors.is_empty()
                || filter.errors.iter().any(|&e| Some(ERRORS[e]) == self.error))
            && filter
                .ip_prefix
                .is_none_or(|index| self.ip_hash.starts_with(&HEX[index].to_ascii_lowercase()))
            && filter
                .endpoint_prefix
                .is_none_or(|index| self.endpoint.starts_with(ENDPOINT_PREFIXES[index]))
            && filter.start.is_none_or(|second| self.micros >= at(second))
            && filter.end.is_none_or(|second| self.micros < at(second))
    }
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

fn proto_filter(filter: &FilterSpec, base: i64) -> pb::LogFilter {
    pb::LogFilter {
        search: filter
            .search
            .map(|i| SEARCHES[i].to_owned())
            .unwrap_or_default(),
        api_key_ids: filter.keys.iter().map(|&k| KEYS[k].0.to_owned()).collect(),
        // Lower case on purpose: method filters are case-insensitive.
        methods: filter
            .methods
            .iter()
            .map(|&m| METHODS[m].to_ascii_lowercase())
            .collect(),
        status_codes: filter.statuses.iter().map(|&s| STATUSES[s]).collect(),
        status_classes: filter.classes.clone(),
        error_codes: filter
            .errors
            .iter()
            .map(|&e| ERRORS[e].to_owned())
            .collect(),
        ip_hash_prefix: filter
            .ip_prefix
            .map(|i| HEX[i].to_owned())
            .unwrap_or_default(),
        endpoint_prefix: filter
            .endpoint_prefix
            .map(|i| ENDPOINT_PREFIXES[i].to_owned())
            .unwrap_or_default(),
        start_time: filter.start.map(|s| timestamp((base + s) * 1_000_000)),
        end_time: filter.end.map(|s| timestamp((base + s) * 1_000_000)),
    }
}

async fn check(server: &TestServer, account: &str, case: Case) -> Result<(), TestCaseError> {
    let base = now_seconds() - 1_800;
    let records: Vec<pb::RequestRecord> = case
        .rows
        .iter()
        .map(|spec| pb::RequestRecord {
            account_id: account.to_owned(),
            request_id: String::new(),
            api_key_id: KEYS[spec.key].0.to_owned(),
            api_key_name: KEYS[spec.key].1.to_owned(),
            api_key_prefix: KEYS[spec.key].2.to_owned(),
            method: METHODS[spec.method].to_owned(),
            endpoint: ENDPOINTS[spec.endpoint].to_owned(),
            query_string: QUERIES[spec.query].to_owned(),
            status_code: STATUSES[spec.status],
            error_code: ERRORS[spec.error].to_owned(),
            client_ip: IPS[spec.ip].to_owned(),
            user_agent: "proptest".to_owned(),
            duration_ms: spec.duration,
            timestamp: Some(timestamp(
                (base + spec.second) * 1_000_000 + spec.millis * 1_000,
            )),
        })
        .collect();
    let mut model = Vec::new();
    if !records.is_empty() {
        let response = server
            .client
            .record_batch(records)
            .await
            .expect("valid records are accepted");
        prop_assert!(response.rejected.is_empty(), "{:?}", response.rejected);
        let sanitizer = Sanitizer::default();
        for (spec, id) in case.rows.iter().zip(&response.ids) {
            let query = sanitizer.sanitize(QUERIES[spec.query]);
            model.push(Stored {
                id: id.parse().expect("ids are numbers"),
                key: spec.key,
                method: METHODS[spec.method],
                endpoint: ENDPOINTS[spec.endpoint],
                query: (!query.is_empty()).then_some(query),
                status: STATUSES[spec.status],
                error: Some(ERRORS[spec.error]).filter(|code| !code.is_empty()),
                ip_hash: hash_ip(IPS[spec.ip]).expect("pooled IPs are valid"),
                micros: (base + spec.second) * 1_000_000 + spec.millis * 1_000,
                duration: spec.duration,
            });
        }
    }

    let field = LOG_FIELDS[case.field];
    let descending = case.descending || field == pb::LogField::Unspecified;
    let mut expected: Vec<&Stored> = model
        .iter()
        .filter(|row| row.matches(&case.filter, base))
        .collect();
    expected.sort_by(|a, b| {
        let order = (a.sort_value(field), a.id).cmp(&(b.sort_value(field), b.id));
        if descending { order.reverse() } else { order }
    });
    let expected_ids: Vec<String> = expected.iter().map(|row| row.id.to_string()).collect();

    let filter = proto_filter(&case.filter, base);
    let order_by = Some(pb::SortOrder {
        field: field as i32,
        descending: case.descending,
    });
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = server
            .client
            .list_logs(pb::ListLogsRequest {
                account_id: account.to_owned(),
                filter: Some(filter.clone()),
                order_by,
                page_size: case.page_size,
                page_token,
                include_total_size: true,
            })
            .await
            .expect("ListLogs should answer");
        prop_assert_eq!(page.total_size, expected_ids.len() as i64);
        listed.extend(page.logs.into_iter().map(|entry| entry.id));
        if page.next_page_token.is_empty() {
            break;
        }
        prop_assert!(listed.len() <= expected_ids.len(), "more pages than rows");
        page_token = page.next_page_token;
    }
    prop_assert_eq!(&listed, &expected_ids);

    let mut file = Vec::new();
    let summary = server
        .client
        .export_to(
            &mut file,
            pb::ExportLogsRequest {
                account_id: account.to_owned(),
                format: pb::ExportFormat::Ndjson as i32,
                filter: Some(filter),
                order_by,
                ids: Vec::new(),
            },
        )
        .await
        .expect("the export should complete");
    prop_assert_eq!(summary.row_count, expected_ids.len() as i64);
    let exported: Vec<(String, String, i64, String)> = std::str::from_utf8(&file)
        .expect("exports are UTF-8")
        .lines()
        .map(|line| {
            let object: serde_json::Value = serde_json::from_str(line).expect("NDJSON");
            (
                object["endpoint"].as_str().unwrap_or_default().to_owned(),
                object["method"].as_str().unwrap_or_default().to_owned(),
                object["status_code"].as_i64().unwrap_or_default(),
                object["ip_hash"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let wanted: Vec<(String, String, i64, String)> = expected
        .iter()
        .map(|row| {
            (
                row.endpoint.to_owned(),
                row.method.to_owned(),
                i64::from(row.status),
                row.ip_hash.clone(),
            )
        })
        .collect();
    prop_assert_eq!(exported, wanted);
    Ok(())
}

fn run(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let Some(server) = runtime.block_on(TestServer::start(backend)) else {
        return;
    };
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config::with_cases(cases));
    let counter = AtomicUsize::new(0);
    let result = runner.run(&case(), |case| {
        let account = format!("prop_{}", counter.fetch_add(1, Ordering::SeqCst));
        runtime.block_on(check(&server, &account, case))
    });
    runtime.block_on(server.shutdown());
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn listing_and_export_match_the_model_on_sqlite() {
    run(Backend::Sqlite);
}

#[test]
fn listing_and_export_match_the_model_on_postgres() {
    run(Backend::Postgres);
}

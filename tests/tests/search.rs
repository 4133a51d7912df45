//! Search beyond the walk over the newest rows: a term that the newest rows do not fill a page
//! with is looked up in the search index (rows copied off the ingest path: a trigram GIN index
//! on PostgreSQL, FTS5 trigrams on SQLite) and merged with the rows not indexed yet. The pages
//! are exactly the matching rows, newest first.

use reqlog_client::pb;
use reqlog_service::store::search;
use reqlog_tests::{Backend, TestServer, backend_tests, record};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

backend_tests!(
    rare_terms_page_through_indexed_and_newest_rows,
    key_names_beyond_the_walk_are_found_through_their_labels,
    a_name_many_keys_share_is_found_by_walking_the_account,
    filtered_rare_terms_take_candidates_until_the_page_fills,
    purged_rows_leave_the_search_index,
    rows_purged_before_indexing_never_reach_the_index,
);

const ACCOUNT: &str = "acct_search";
/// More rows than the walk over the newest rows covers (20,000), so that a term only old rows
/// hold is found through the index.
const ROWS: usize = 20_600;

fn marked(n: usize, marker: &str) -> pb::RequestRecord {
    let mut record = record(ACCOUNT, n);
    record.query_string = format!("q={marker}-{n}");
    record
}

/// Purges a key of the test account; returns the rows deleted.
async fn purge(server: &TestServer, api_key_id: &str) -> i64 {
    server
        .client
        .admin()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: ACCOUNT.into(),
            api_key_id: api_key_id.into(),
        })
        .await
        .expect("purge")
        .into_inner()
        .deleted_count
}

async fn record_all(server: &TestServer, records: Vec<pb::RequestRecord>) {
    for chunk in records.chunks(1000) {
        let response = server
            .client
            .record_batch(chunk.to_vec())
            .await
            .expect("batch");
        assert_eq!(response.accepted as usize, chunk.len());
    }
}

async fn search_all(server: &TestServer, term: &str, page_size: i32) -> Vec<String> {
    search_filtered(
        server,
        pb::LogFilter {
            search: term.into(),
            ..Default::default()
        },
        page_size,
    )
    .await
}

/// Every page of the filter's rows (the filter names a search term), as their query params.
async fn search_filtered(
    server: &TestServer,
    filter: pb::LogFilter,
    page_size: i32,
) -> Vec<String> {
    let mut params = Vec::new();
    let mut token = String::new();
    loop {
        let page = server
            .client
            .list_logs(pb::ListLogsRequest {
                account_id: ACCOUNT.into(),
                filter: Some(filter.clone()),
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("list");
        params.extend(
            page.logs
                .into_iter()
                .map(|e| e.query_params.unwrap_or_default()),
        );
        if page.next_page_token.is_empty() {
            return params;
        }
        token = page.next_page_token;
    }
}

async fn rare_terms_page_through_indexed_and_newest_rows(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // The ten oldest rows carry the term, the rest do not. Row 20 holds every trigram of
    // "needle" (nee, eed, edl, dle) but not the term: the index names it, the re-check drops it.
    let records = (0..ROWS)
        .map(|n| match n {
            0..10 => marked(n, "Needle"),
            20 => marked(n, "neeedl+dle"),
            _ => record(ACCOUNT, n),
        })
        .collect();
    record_all(&server, records).await;
    // Another account's rows with the term never show.
    let mut other = marked(0, "Needle");
    other.account_id = "acct_other".into();
    server.client.record(other).await.expect("record");
    search::index_pending(&server.db)
        .await
        .expect("index the rows so far");
    if backend == Backend::Postgres {
        assert_lookup_narrows_by_account(&server).await;
    }
    // Two newer rows with the term arrive after indexing: only a walk can find them. So does
    // another account's, which the pages never show either.
    record_all(
        &server,
        vec![marked(ROWS, "needle"), marked(ROWS + 1, "NEEDLE")],
    )
    .await;
    let mut other = marked(ROWS + 2, "needle");
    other.account_id = "acct_other".into();
    server.client.record(other).await.expect("record");

    // Newest first: the timestamps grow with n (two rows per second, id breaks ties).
    let expected: Vec<String> = [ROWS + 1, ROWS]
        .into_iter()
        .chain((0..10).rev())
        .map(|n| {
            let marker = match n {
                n if n == ROWS => "needle",
                n if n == ROWS + 1 => "NEEDLE",
                _ => "Needle",
            };
            format!("q={marker}-{n}")
        })
        .collect();
    for page_size in [4, 100] {
        assert_eq!(
            search_all(&server, "needle", page_size).await,
            expected,
            "page size {page_size}"
        );
    }
    assert!(search_all(&server, "absent-needle", 50).await.is_empty());
    // A frequent term fills a page from the newest rows alone.
    let frequent = search_all(&server, "/v1/items/", 1000).await;
    assert_eq!(frequent.len(), ROWS + 2);
    // Purged rows found through the index are gone from the pages at once, though their
    // postings may wait for the indexer's next chunk (SQLite).
    assert_eq!(purge(&server, "key_1").await as usize, ROWS.div_ceil(3));
    let kept: Vec<String> = expected
        .into_iter()
        .filter(|params| !["q=Needle-1", "q=Needle-4", "q=Needle-7"].contains(&params.as_str()))
        .collect();
    assert_eq!(kept.len(), 9);
    assert_eq!(search_all(&server, "needle", 4).await, kept);
    server.shutdown().await;
}

/// The search index holds no key names or prefixes: a term that only the names of old rows'
/// keys hold is found through the labels that match it and the key index, on every page,
/// and only under the label that holds it (a key renamed keeps its old rows' name).
async fn key_names_beyond_the_walk_are_found_through_their_labels(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let labelled = |n: usize, key: &str, name: &str, prefix: &str| {
        let mut record = record(ACCOUNT, n);
        record.api_key_id = key.into();
        record.api_key_name = name.into();
        record.api_key_prefix = prefix.into();
        record.query_string = format!("q=row-{n}");
        record
    };
    // The ten oldest rows are key k_old's as "Legacy Billing", the next five as "Renamed";
    // k_two's five rows after them carry the term in their prefix.
    let records = (0..ROWS)
        .map(|n| match n {
            0..10 => labelled(n, "k_old", "Legacy Billing", "pk_old"),
            10..15 => labelled(n, "k_old", "Renamed", "pk_old"),
            15..20 => labelled(n, "k_two", "Reports", "pk_legacy_bill"),
            _ => record(ACCOUNT, n),
        })
        .collect();
    record_all(&server, records).await;
    // Another account's key of the same name never shows.
    let mut other = labelled(0, "k_old", "Legacy Billing", "pk_old");
    other.account_id = "acct_other".into();
    server.client.record(other).await.expect("record");
    search::index_pending(&server.db)
        .await
        .expect("index the rows");

    let rows = |range: std::ops::Range<usize>| -> Vec<String> {
        range.rev().map(|n| format!("q=row-{n}")).collect()
    };
    let mut expected = rows(15..20);
    expected.extend(rows(0..10));
    for page_size in [3, 100] {
        assert_eq!(
            search_all(&server, "legacy_bill", page_size).await,
            rows(15..20),
            "the prefix, page size {page_size}"
        );
        assert_eq!(
            search_all(&server, "LEGACY", page_size).await,
            expected,
            "name and prefix, page size {page_size}"
        );
    }
    assert_eq!(search_all(&server, "renamed", 2).await, rows(10..15));
    assert!(search_all(&server, "legacy-absent", 10).await.is_empty());
    server.shutdown().await;
}

/// A term in the names of more keys than a search reads key by key (32): the account's rows
/// are walked instead, with the same answer.
async fn a_name_many_keys_share_is_found_by_walking_the_account(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let records = (0..ROWS)
        .map(|n| {
            let mut record = record(ACCOUNT, n);
            if n < 40 {
                record.api_key_id = format!("fleet_{n}");
                record.api_key_name = format!("Fleet car {n}");
                record.query_string = format!("q=row-{n}");
            }
            record
        })
        .collect();
    record_all(&server, records).await;
    search::index_pending(&server.db)
        .await
        .expect("index the rows");
    let expected: Vec<String> = (0..40).rev().map(|n| format!("q=row-{n}")).collect();
    for page_size in [7, 100] {
        assert_eq!(
            search_all(&server, "fleet car", page_size).await,
            expected,
            "page size {page_size}"
        );
    }
    server.shutdown().await;
}

/// A rare term whose rows the page's other filters mostly drop: the index's candidates are
/// taken newest first a round at a time (PostgreSQL: 256, then twice as many), and rounds go
/// on until the page is full or the candidates run out, also within a time range.
async fn filtered_rare_terms_take_candidates_until_the_page_fills(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // The 600 oldest rows hold the term; six of them (n = 7, 107, …, 507) have status 418.
    let records: Vec<pb::RequestRecord> = (0..ROWS)
        .map(|n| match n {
            0..600 => {
                let mut record = marked(n, "Needle");
                record.status_code = if n % 100 == 7 { 418 } else { 200 };
                record
            }
            _ => record(ACCOUNT, n),
        })
        .collect();
    // Rows 0..=399 lie before row 400's second (two rows a second), rows 200.. from row 200's.
    let (before, since) = (records[400].timestamp, records[200].timestamp);
    record_all(&server, records).await;
    search::index_pending(&server.db)
        .await
        .expect("index the rows");
    let teapots = pb::LogFilter {
        search: "needle".into(),
        status_codes: vec![418],
        ..Default::default()
    };
    let expected: Vec<String> = [507, 407, 307, 207, 107, 7]
        .iter()
        .map(|n| format!("q=Needle-{n}"))
        .collect();
    for page_size in [1, 4, 100] {
        assert_eq!(
            search_filtered(&server, teapots.clone(), page_size).await,
            expected,
            "page size {page_size}"
        );
    }
    // 307 and older.
    let earlier = pb::LogFilter {
        end_time: before,
        ..teapots.clone()
    };
    assert_eq!(
        search_filtered(&server, earlier, 2).await,
        expected[2..].to_vec()
    );
    // 507 … 207.
    let since = pb::LogFilter {
        start_time: since,
        ..teapots
    };
    assert_eq!(
        search_filtered(&server, since, 3).await,
        expected[..4].to_vec()
    );
    server.shutdown().await;
}

/// PostgreSQL: the index holds the account beside the trigrams (btree_gin), and the service's
/// lookup names it so that the index scan uses it: only the account's candidates are read,
/// not every account's.
async fn assert_lookup_narrows_by_account(server: &TestServer) {
    use reqlog_service::domain::filter::{LogFilter, LogQuery, SortOrder};
    use sea_orm::sea_query::PostgresQueryBuilder;
    let account_no = reqlog_service::store::dictionary::account_no(&server.db, ACCOUNT)
        .await
        .expect("lookup")
        .expect("the account has a number");
    let query = LogQuery::new(ACCOUNT, LogFilter::default(), SortOrder::default()).expect("query");
    let (sql, values) =
        reqlog_service::store::logs::postgres_candidates(account_no, &query, "needle", None, 256)
            .expect("candidates")
            .build(PostgresQueryBuilder);
    let txn = server.db.begin().await.expect("begin");
    // A small table is cheaper to scan: ask how the index would serve the lookup.
    txn.execute_unprepared("SET LOCAL enable_seqscan = off")
        .await
        .expect("set");
    let plan: Vec<String> = txn
        .query_all(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!("EXPLAIN {sql}"),
            values.0,
        ))
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get::<String>("", "QUERY PLAN").expect("plan line"))
        .collect();
    txn.rollback().await.expect("rollback");
    assert!(
        plan.iter()
            .any(|line| line.contains("Index Cond") && line.contains("account_no")),
        "the account should narrow the index scan:\n{}",
        plan.join("\n")
    );
}

async fn purged_rows_leave_the_search_index(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let records = (0..30).map(|n| marked(n, "haystack")).collect();
    record_all(&server, records).await;
    search::index_pending(&server.db).await.expect("index");
    assert_eq!(index_rows_holding(&server, "haystack").await, 30);
    assert_eq!(purge(&server, "key_1").await, 10);
    // Searches see the purge at once, whether or not the index has dropped the rows yet (on
    // SQLite the indexer's next chunk drops them).
    let found = search_all(&server, "haystack", 7).await;
    assert_eq!(found.len(), 20);
    assert!(found.iter().all(|params| {
        let n: usize = params
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("n");
        n % 3 != 1
    }));
    search::index_pending(&server.db).await.expect("index");
    assert_eq!(index_rows_holding(&server, "haystack").await, 20);
    assert_index_consistent(&server).await;
    server.shutdown().await;
}

/// SQLite: FTS5's own check of the index's structure. PostgreSQL: nothing to check.
async fn assert_index_consistent(server: &TestServer) {
    if server.db.get_database_backend() == sea_orm::DbBackend::Sqlite {
        server
            .db
            .execute_unprepared(
                "INSERT INTO log_search (log_search, rank) VALUES ('integrity-check', 0)",
            )
            .await
            .expect("the FTS5 index is consistent");
    }
}

async fn rows_purged_before_indexing_never_reach_the_index(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    // Indexed rows of key_0 and key_2, then rows of key_1 purged before any indexing (the
    // background indexer may or may not have run in between: both must hold).
    let records: Vec<_> = (0..30).map(|n| marked(n, "pinecone")).collect();
    record_all(&server, records).await;
    purge(&server, "key_1").await;
    search::index_pending(&server.db).await.expect("index");
    assert_index_consistent(&server).await;
    assert_eq!(index_rows_holding(&server, "pinecone").await, 20);
    let found = search_all(&server, "pinecone", 100).await;
    assert_eq!(found.len(), 20);
    // Deleting rows that were indexed leaves the index consistent too.
    purge(&server, "key_2").await;
    assert_eq!(search_all(&server, "pinecone", 100).await.len(), 10);
    search::index_pending(&server.db).await.expect("index");
    assert_index_consistent(&server).await;
    assert_eq!(index_rows_holding(&server, "pinecone").await, 10);
    server.shutdown().await;
}

/// Rows of the search index that hold the term (PostgreSQL), or all its trigrams (SQLite).
async fn index_rows_holding(server: &TestServer, term: &str) -> i64 {
    let backend = server.db.get_database_backend();
    let (sql, value) = match backend {
        sea_orm::DbBackend::Postgres => (
            "SELECT COUNT(*) AS n FROM log_search WHERE doc LIKE $1",
            format!("%{term}%"),
        ),
        _ => (
            "SELECT COUNT(*) AS n FROM log_search WHERE log_search MATCH ?",
            search::trigram_query(term).expect("a trigram query"),
        ),
    };
    let row = server
        .db
        .query_one(Statement::from_sql_and_values(backend, sql, [value.into()]))
        .await
        .expect("count")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("n")
}

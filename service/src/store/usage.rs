//! Hourly usage counters (`usage_stats`): how they are kept and read.
//!
//! A counter row is one (account, hour, key, endpoint, method, status) and its sums. The
//! account leads its key, so adding a record's counts dirties a page of the counters' tree at
//! the account's place, much as its row does in `log_entries`. The key id and the endpoint
//! are numbers in `api_key_numbers` and `endpoint_numbers` (`store::dictionary`): they repeat
//! in nearly every counter row, and reads spell only the groups they return.
//!
//! PostgreSQL: each ingest group adds its rows' counts in its own transaction
//! ([`add_group`]), so every replica's reads see them at once.
//!
//! SQLite: the ingest group does not touch the counters. Each search indexer chunk folds
//! the rows it indexes into them, grouped ([`fold_through_sqlite`]), in the transaction that
//! moves the setting [`FOLDED_THROUGH`] to the chunk's last id, so the counters hold every row
//! up to it and none above. A purge or sweep step folds the rows above it before deleting
//! any ([`fold_before_delete_sqlite`]), so no count is lost, and [`buckets`] adds
//! the rows above it to the counters in the same statement, so a read sees every committed
//! row once. A group's upsert had dirtied one random page of the counters per record:
//! skipping it measured +13% unary and +22% batch ingest, folding it in the chunks +6% and
//! +8% (the chunks write those pages now, grouped; BENCHMARKS.md).

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, OnConflict, Order, Query, SelectStatement, UnionType};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement, Value};

use super::StoreError;
use super::dictionary::{Dictionary, account_no, holds_number_of, spelled};
use super::entity::{log_entry, usage_stat};
use super::writer::INSERT_CHUNK_ROWS;
use crate::domain::lifecycle::{Dimension, Granularity, UsageQuery};
use crate::domain::record::NewLogEntry;
use crate::domain::time::hour_start_seconds;

/// The settings row holding the highest id whose row the counters hold (SQLite).
pub const FOLDED_THROUGH: &str = "usage_folded_through";

/// The hour a row's `ts` (microseconds) falls in, in seconds, rounded down as
/// [`hour_start_seconds`] does (SQLite's `/` truncates toward zero).
const SQLITE_HOUR_OF_TS: &str = r#"(("ts" / 3600000000 - ("ts" % 3600000000 < 0)) * 3600)"#;

/// The counters' columns: the key (the first [`KEY_LEN`], in the primary key's order),
/// then the sums.
const COLUMNS: [usage_stat::Column; 10] = [
    usage_stat::Column::AccountNo,
    usage_stat::Column::BucketStart,
    usage_stat::Column::ApiKeyNo,
    usage_stat::Column::EndpointNo,
    usage_stat::Column::Method,
    usage_stat::Column::StatusCode,
    usage_stat::Column::RequestCount,
    usage_stat::Column::ErrorCount,
    usage_stat::Column::TotalDurationMs,
    usage_stat::Column::MaxDurationMs,
];

/// Columns of the counters' key.
const KEY_LEN: usize = 6;

#[derive(Default)]
struct Delta {
    requests: i64,
    errors: i64,
    total_ms: i64,
    max_ms: i64,
}

/// The upsert that adds a delta to an existing counter (`excluded` holds the delta).
fn add_on_conflict(backend: DbBackend) -> OnConflict {
    let greatest = match backend {
        DbBackend::Postgres => "GREATEST",
        _ => "MAX",
    };
    use usage_stat::Column as C;
    OnConflict::columns(COLUMNS[..KEY_LEN].iter().copied())
        .values([
            (
                C::RequestCount,
                Expr::cust(r#""usage_stats"."request_count" + "excluded"."request_count""#),
            ),
            (
                C::ErrorCount,
                Expr::cust(r#""usage_stats"."error_count" + "excluded"."error_count""#),
            ),
            (
                C::TotalDurationMs,
                Expr::cust(r#""usage_stats"."total_duration_ms" + "excluded"."total_duration_ms""#),
            ),
            (
                C::MaxDurationMs,
                Expr::cust(format!(
                    r#"{greatest}("usage_stats"."max_duration_ms", "excluded"."max_duration_ms")"#
                )),
            ),
        ])
        .to_owned()
}

/// Adds an ingest group's stored records (`stored`: positions in `entries`; `account_nos`:
/// each entry's account number) to the hourly counters, in the group's transaction.
/// `number` gives a key id's or a path's number, which the group's transaction found or added.
pub async fn add_group(
    txn: &impl ConnectionTrait,
    entries: &[&NewLogEntry],
    stored: impl Iterator<Item = usize>,
    account_nos: &[i64],
    number: impl Fn(Dictionary, &str) -> Option<i64>,
) -> Result<(), StoreError> {
    let backend = txn.get_database_backend();
    let number = |dictionary, value| {
        number(dictionary, value).ok_or_else(|| {
            StoreError::Database(DbErr::Custom(format!(
                "a value has no number in {}",
                dictionary.table_name()
            )))
        })
    };
    let mut deltas: HashMap<(i64, i64, i64, i64, &str, i32), Delta> = HashMap::new();
    for index in stored {
        let entry = entries[index];
        let delta = deltas
            .entry((
                account_nos[index],
                hour_start_seconds(entry.ts_micros),
                number(Dictionary::ApiKeys, &entry.api_key_id)?,
                number(Dictionary::Endpoints, &entry.endpoint)?,
                entry.method,
                entry.status_code,
            ))
            .or_default();
        delta.requests += 1;
        delta.errors += i64::from(entry.status_code >= 400);
        delta.total_ms += i64::from(entry.duration_ms);
        delta.max_ms = delta.max_ms.max(i64::from(entry.duration_ms));
    }
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    // A stable order keeps concurrent upserts on PostgreSQL from deadlocking on row locks.
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for chunk in deltas.chunks(INSERT_CHUNK_ROWS) {
        let mut insert = Query::insert();
        insert
            .into_table(usage_stat::Entity)
            .columns(COLUMNS)
            .on_conflict(add_on_conflict(backend));
        for ((account, bucket, key, endpoint, method, status), delta) in chunk {
            insert
                .values([
                    (*account).into(),
                    (*bucket).into(),
                    (*key).into(),
                    (*endpoint).into(),
                    (*method).into(),
                    (*status).into(),
                    delta.requests.into(),
                    delta.errors.into(),
                    delta.total_ms.into(),
                    delta.max_ms.into(),
                ])
                .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?;
        }
        txn.execute(backend.build(&insert)).await?;
    }
    Ok(())
}

/// The highest id whose row the counters hold (SQLite): rows above it are counted from
/// `log_entries` when read.
pub async fn folded_through(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    super::settings::integer(db, FOLDED_THROUGH).await
}

/// Adds the rows with ids up to `upto` that the counters do not hold yet, and records that
/// they do (SQLite; in the caller's write transaction, which makes the ids final).
pub async fn fold_through_sqlite(txn: &impl ConnectionTrait, upto: i64) -> Result<(), StoreError> {
    let from = folded_through(txn).await?;
    if upto > from {
        fold_ids_sqlite(txn, from, upto).await?;
    }
    Ok(())
}

/// Folds the rows with ids in `(from, upto]`, `from` being the current [`FOLDED_THROUGH`],
/// and moves it to `upto`.
async fn fold_ids_sqlite(
    txn: &impl ConnectionTrait,
    from: i64,
    upto: i64,
) -> Result<(), StoreError> {
    fold_sqlite(
        txn,
        r#""id" > ? AND "id" <= ?"#,
        vec![from.into(), upto.into()],
    )
    .await?;
    super::settings::set_integer(txn, FOLDED_THROUGH, upto).await
}

/// Unfolded rows up to which a delete step folds them all (by id) instead of only the rows
/// it deletes: under ingest a few hundred wait between two sweep steps, and folding the
/// step's own rows ran its batch query once more (a sweep ~10% slower).
const FOLD_ALL_BEFORE_DELETE_ROWS: i64 = 5_000;

/// Counts the rows `condition` (with `values` bound) selects that no chunk has folded yet
/// (SQLite), for a purge or sweep step about to delete them: when few wait, every unfolded
/// row; behind a burst of ingest, only the step's own. Nothing to do, and no statement,
/// while every row is folded, as it is once the indexer has caught up.
pub async fn fold_before_delete_sqlite(
    txn: &impl ConnectionTrait,
    condition: &str,
    mut values: Vec<Value>,
) -> Result<(), StoreError> {
    let folded = folded_through(txn).await?;
    let last = super::search::last_id_sqlite(txn).await?;
    if folded >= last {
        return Ok(());
    }
    if last - folded <= FOLD_ALL_BEFORE_DELETE_ROWS {
        return fold_ids_sqlite(txn, folded, last).await;
    }
    values.push(folded.into());
    fold_sqlite(txn, &format!(r#"{condition} AND "id" > ?"#), values).await
}

/// Adds the `log_entries` rows that `condition` (SQL over the table's columns, with
/// `values` bound to its `?`) selects to the counters, grouped first (SQLite), in one
/// statement: the rows hold their key's and path's numbers, as the counters do.
async fn fold_sqlite(
    txn: &impl ConnectionTrait,
    condition: &str,
    values: Vec<Value>,
) -> Result<(), StoreError> {
    use log_entry::Column as L;
    let mut rows = Query::select();
    rows.columns([L::AccountNo])
        .expr(Expr::cust(SQLITE_HOUR_OF_TS))
        .columns([L::ApiKeyNo, L::EndpointNo, L::Method, L::StatusCode])
        .exprs([
            Expr::cust("COUNT(*)"),
            Expr::cust(r#"SUM("status_code" >= 400)"#),
            Expr::cust(r#"SUM("duration_ms")"#),
            Expr::cust(r#"MAX("duration_ms")"#),
        ])
        .from(log_entry::Entity)
        // A WHERE also tells SQLite's parser that the upsert's ON is not a join's.
        .and_where(Expr::cust_with_values(condition, values))
        .add_group_by((1..=KEY_LEN).map(|n| Expr::cust(n.to_string())));
    let mut insert = Query::insert();
    insert
        .into_table(usage_stat::Entity)
        .columns(COLUMNS)
        .select_from(rows)
        .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?
        .on_conflict(add_on_conflict(DbBackend::Sqlite));
    txn.execute(DbBackend::Sqlite.build(&insert)).await?;
    Ok(())
}

/// One usage bucket of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Bucket start, seconds.
    pub bucket_start: i64,
    /// The key, when grouped by key.
    pub api_key_id: Option<String>,
    /// The endpoint, when grouped by endpoint.
    pub endpoint: Option<String>,
    /// The method, when grouped by method.
    pub method: Option<String>,
    /// The status code, when grouped by status code.
    pub status_code: Option<i32>,
    /// Requests.
    pub request_count: i64,
    /// Requests with status ≥ 400.
    pub error_count: i64,
    /// Sum of latencies.
    pub total_duration_ms: i64,
    /// Largest latency.
    pub max_duration_ms: i64,
}

/// The account's hourly counts within the query's bounds and key, as counter rows
/// (`bucket_start`, the key's and path's numbers, method, status and the four sums): the
/// counters, and on SQLite the rows no indexer chunk has folded yet, one counter row each.
fn counted(backend: DbBackend, account_no: i64, query: &UsageQuery) -> SelectStatement {
    use usage_stat::Column as C;
    let mut counters = Query::select();
    counters
        .columns([
            C::BucketStart,
            C::ApiKeyNo,
            C::EndpointNo,
            C::Method,
            C::StatusCode,
            C::RequestCount,
            C::ErrorCount,
            C::TotalDurationMs,
            C::MaxDurationMs,
        ])
        .from(usage_stat::Entity)
        .and_where(Expr::col(C::AccountNo).eq(account_no))
        .and_where(Expr::col(C::BucketStart).gte(query.start_seconds))
        .and_where(Expr::col(C::BucketStart).lt(query.end_seconds));
    if let Some(key) = &query.api_key_id {
        counters.and_where(holds_number_of(C::ApiKeyNo, Dictionary::ApiKeys, &[key]));
    }
    if backend != DbBackend::Sqlite {
        return counters;
    }
    use log_entry::Column as L;
    let hour = || Expr::cust(SQLITE_HOUR_OF_TS);
    let mut unfolded = Query::select();
    unfolded
        .expr_as(hour(), Alias::new("bucket_start"))
        .columns([L::ApiKeyNo, L::EndpointNo, L::Method, L::StatusCode])
        .expr_as(Expr::val(1), Alias::new("request_count"))
        .expr_as(
            Expr::cust(r#"("status_code" >= 400)"#),
            Alias::new("error_count"),
        )
        .expr_as(Expr::col(L::DurationMs), Alias::new("total_duration_ms"))
        .expr_as(Expr::col(L::DurationMs), Alias::new("max_duration_ms"))
        .from(log_entry::Entity)
        // The rows above the watermark are the ones the indexer has not reached (a few
        // thousand under steady ingest, tens of thousands under batch ingest), so only the id
        // index may find them: the account (unary `+` keeps SQLite from using it) can hold a
        // fifth of the table. The subquery keeps the account's from the index alone; as one
        // condition SQLite read every row above the watermark from the table before looking
        // at its account (sqlite3 shell, 60k rows waiting: 110 → 10 ms for a small account).
        .and_where(Expr::col(L::AccountNo).eq(account_no))
        .and_where(Expr::cust_with_values(
            r#"("ts", "id") IN (SELECT "ts", "id" FROM "log_entries" WHERE "id" > COALESCE((SELECT CAST("value" AS INTEGER) FROM "settings" WHERE "name" = ?), 0) AND +"account_no" = ?)"#,
            [Value::from(FOLDED_THROUGH), Value::from(account_no)],
        ))
        .and_where(Expr::cust_with_values(
            format!("{SQLITE_HOUR_OF_TS} >= ?"),
            [query.start_seconds],
        ))
        .and_where(Expr::cust_with_values(
            format!("{SQLITE_HOUR_OF_TS} < ?"),
            [query.end_seconds],
        ));
    if let Some(key) = &query.api_key_id {
        unfolded.and_where(holds_number_of(L::ApiKeyNo, Dictionary::ApiKeys, &[key]));
    }
    counters.union(UnionType::All, unfolded);
    counters
}

/// The statement that sums an account's counts into the query's buckets and groups: grouped
/// by the numbers the counters hold, then the key ids and paths of the groups spelled and
/// ordered. Spelled before the sums, every counter row took its lookups (the biggest
/// account's 166,701 counters in the benchmark's 1M rows, sqlite3 shell: by day, key and
/// path 197–220 → 129–130 ms; by hour and key 100–102 → 35–36 ms).
fn buckets_statement(backend: DbBackend, account_no: i64, query: &UsageQuery) -> Statement {
    let bucket = match query.granularity {
        Granularity::Hour => Expr::col(Alias::new("bucket_start")).into(),
        Granularity::Day => Expr::cust(r#"("bucket_start" - ("bucket_start" % 86400))"#),
    };
    let mut sums = Query::select();
    sums.from_subquery(counted(backend, account_no, query), Alias::new("counted"))
        .expr_as(bucket.clone(), Alias::new("bucket"))
        .add_group_by([bucket]);
    let mut spelled_groups = Query::select();
    spelled_groups
        .column(Alias::new("bucket"))
        .order_by(Alias::new("bucket"), Order::Asc);
    for dimension in &query.group_by {
        // The column summed by, what the group's row calls it, and its dictionary if any.
        let (number, text, dictionary) = match dimension {
            Dimension::ApiKey => ("api_key_no", "api_key_id", Some(Dictionary::ApiKeys)),
            Dimension::Endpoint => ("endpoint_no", "endpoint", Some(Dictionary::Endpoints)),
            Dimension::Method => ("method", "method", None),
            Dimension::StatusCode => ("status_code", "status_code", None),
        };
        sums.column(Alias::new(number))
            .add_group_by([Expr::col(Alias::new(number)).into()]);
        match dictionary {
            Some(dictionary) => {
                spelled_groups.expr_as(spelled(dictionary, "sums", number), Alias::new(text));
            }
            None => {
                spelled_groups.column(Alias::new(text));
            }
        }
        spelled_groups.order_by(Alias::new(text), Order::Asc);
    }
    for (sum, alias) in [
        (r#"CAST(SUM("request_count") AS BIGINT)"#, "requests"),
        (r#"CAST(SUM("error_count") AS BIGINT)"#, "errors"),
        (r#"CAST(SUM("total_duration_ms") AS BIGINT)"#, "total_ms"),
        (r#"CAST(MAX("max_duration_ms") AS BIGINT)"#, "max_ms"),
    ] {
        sums.expr_as(Expr::cust(sum), Alias::new(alias));
        spelled_groups.column(Alias::new(alias));
    }
    spelled_groups.from_subquery(sums, Alias::new("sums"));
    backend.build(&spelled_groups)
}

/// Sums the account's hourly counts into the query's buckets and groups.
pub async fn buckets(
    db: &impl ConnectionTrait,
    query: &UsageQuery,
) -> Result<Vec<UsageRow>, StoreError> {
    let backend = db.get_database_backend();
    let Some(account_no) = account_no(db, &query.account_id).await? else {
        return Ok(Vec::new());
    };
    let grouped = |dimension| query.group_by.contains(&dimension);
    let rows = db
        .query_all(buckets_statement(backend, account_no, query))
        .await?;
    rows.iter()
        .map(|row| {
            Ok(UsageRow {
                bucket_start: row.try_get("", "bucket")?,
                api_key_id: grouped(Dimension::ApiKey)
                    .then(|| row.try_get("", "api_key_id"))
                    .transpose()?,
                endpoint: grouped(Dimension::Endpoint)
                    .then(|| row.try_get("", "endpoint"))
                    .transpose()?,
                method: grouped(Dimension::Method)
                    .then(|| row.try_get("", "method"))
                    .transpose()?,
                status_code: grouped(Dimension::StatusCode)
                    .then(|| row.try_get("", "status_code"))
                    .transpose()?,
                request_count: row.try_get("", "requests")?,
                error_count: row.try_get("", "errors")?,
                total_duration_ms: row.try_get("", "total_ms")?,
                max_duration_ms: row.try_get("", "max_ms")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sea_orm::DatabaseConnection;

    use super::*;
    use crate::store::admin::{SweepItem, sweep_step};
    use crate::store::test_count as count;
    use crate::store::writer::WriterDb;

    const HOUR_MICROS: i64 = 3_600_000_000;

    /// Account `a` (number 1) with rows 1..=n (none for 0) of key `k` (number 1): row i at
    /// hour 100 + i % 3, status 200 or (every fourth) 500, i ms.
    async fn rows(n: i64) -> (tempfile::TempDir, DatabaseConnection) {
        let (dir, db) = crate::store::test_database().await;
        db.execute_unprepared(
            "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO api_key_numbers (id, value) VALUES (1, 'k')",
        )
        .await
        .unwrap();
        db.execute_unprepared(&format!(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO endpoint_numbers (id, value) SELECT 1, '/v1' WHERE {n} > 0; \
             WITH RECURSIVE n(i) AS (SELECT 1 WHERE {n} > 0 UNION ALL SELECT i + 1 FROM n \
             WHERE i < {n}) \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             SELECT i, 1, (100 + i % 3) * {HOUR_MICROS} + i, 1, 1, 'GET', 1, \
             CASE WHEN i % 4 = 0 THEN 500 ELSE 200 END, X'ab', i FROM n"
        ))
        .await
        .unwrap();
        db.execute_unprepared(&format!(
            "UPDATE log_id_sequence SET last_id = {n} WHERE name = 'log_entries'"
        ))
        .await
        .unwrap();
        (dir, db)
    }

    fn query() -> UsageQuery {
        UsageQuery {
            account_id: "a".into(),
            api_key_id: None,
            start_seconds: 0,
            end_seconds: 1_000 * 3_600,
            granularity: Granularity::Hour,
            group_by: vec![Dimension::StatusCode],
        }
    }

    /// (hour, status, requests, errors, total ms, max ms) of every bucket, hours from 100.
    async fn counts(db: &DatabaseConnection) -> Vec<(i64, i32, i64, i64, i64, i64)> {
        buckets(db, &query())
            .await
            .unwrap()
            .into_iter()
            .map(|row| {
                (
                    row.bucket_start / 3_600 - 100,
                    row.status_code.unwrap(),
                    row.request_count,
                    row.error_count,
                    row.total_duration_ms,
                    row.max_duration_ms,
                )
            })
            .collect()
    }

    /// Runs one sweep step of up to `limit` rows over account `a`, whose every row is past
    /// the cutoff; returns the rows it deleted.
    async fn sweep_step_of(db: &DatabaseConnection, limit: u64) -> u64 {
        let items = [SweepItem {
            account_id: "a".into(),
            account_no: 1,
            cutoff_micros: 1_000 * HOUR_MICROS,
        }];
        let budget = std::time::Duration::from_secs(60);
        let progress = sweep_step(&WriterDb::Pool(db.clone()), &items, limit, budget)
            .await
            .unwrap();
        progress[0].deleted
    }

    /// The requests and total milliseconds all counters hold, read from the table itself.
    async fn counter_sums(db: &DatabaseConnection) -> (i64, i64) {
        let row = db
            .query_one(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT SUM(request_count) AS n, SUM(total_duration_ms) AS ms FROM usage_stats",
            ))
            .await
            .unwrap()
            .unwrap();
        (
            row.try_get("", "n").unwrap(),
            row.try_get("", "ms").unwrap(),
        )
    }

    /// What [`rows`]`(12)` counts: hour h holds ids i ≡ h (mod 3), 500 when i % 4 = 0.
    const TWELVE: [(i64, i32, i64, i64, i64, i64); 6] = [
        (0, 200, 3, 0, 3 + 6 + 9, 9),
        (0, 500, 1, 1, 12, 12),
        (1, 200, 3, 0, 1 + 7 + 10, 10),
        (1, 500, 1, 1, 4, 4),
        (2, 200, 3, 0, 2 + 5 + 11, 11),
        (2, 500, 1, 1, 8, 8),
    ];

    #[tokio::test]
    async fn rows_are_counted_once_before_and_after_the_indexer_folds_them() {
        let (_dir, db) = rows(12).await;
        // No chunk has run: every count comes from the rows.
        assert_eq!(count(&db, "usage_stats").await, 0);
        assert_eq!(counts(&db).await, TWELVE);
        crate::store::search::index_pending(&db).await.unwrap();
        assert_eq!(count(&db, "usage_stats").await, 6);
        assert_eq!(counts(&db).await, TWELVE);
        // Rows after the fold are added to the counters, not counted twice.
        db.execute_unprepared(&format!(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES (13, 1, 100 * {HOUR_MICROS}, 1, 1, 'GET', 1, 200, X'ab', 40); \
             UPDATE log_id_sequence SET last_id = 13 WHERE name = 'log_entries'"
        ))
        .await
        .unwrap();
        let mut thirteen = TWELVE.to_vec();
        thirteen[0] = (0, 200, 4, 0, 3 + 6 + 9 + 40, 40);
        assert_eq!(counts(&db).await, thirteen);
        crate::store::search::index_pending(&db).await.unwrap();
        assert_eq!(counts(&db).await, thirteen);
    }

    #[tokio::test]
    async fn counters_hold_numbers_and_reads_spell_them_in_text_order() {
        let (_dir, db) = rows(0).await;
        // Keys and paths arrive in the reverse of their text order, so their numbers are too.
        let insert = |id: i64, key: &str, endpoint: &str| {
            format!(
                "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
                 VALUES (1, 1, 1, 'name', 'pk_'); \
                 INSERT OR IGNORE INTO api_key_numbers (value) VALUES ('{key}'); \
                 INSERT OR IGNORE INTO endpoint_numbers (value) VALUES ('{endpoint}'); \
                 INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
                 method, endpoint_no, status_code, ip_hash, duration_ms) \
                 VALUES ({id}, 1, 100 * {HOUR_MICROS} + {id}, \
                 (SELECT id FROM api_key_numbers WHERE value = '{key}'), 1, 'GET', \
                 (SELECT id FROM endpoint_numbers WHERE value = '{endpoint}'), 200, X'ab', {id}); \
                 UPDATE log_id_sequence SET last_id = {id} WHERE name = 'log_entries'"
            )
        };
        for (id, key, endpoint) in [(1, "zeta", "/v2"), (2, "alpha", "/v1"), (3, "zeta", "/v1")] {
            db.execute_unprepared(&insert(id, key, endpoint))
                .await
                .unwrap();
        }
        let grouped = |api_key_id: Option<&str>| UsageQuery {
            api_key_id: api_key_id.map(str::to_owned),
            group_by: vec![Dimension::ApiKey, Dimension::Endpoint],
            ..query()
        };
        let read = |query: UsageQuery| {
            let db = db.clone();
            async move {
                buckets(&db, &query)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|row| {
                        (
                            row.api_key_id.unwrap(),
                            row.endpoint.unwrap(),
                            row.request_count,
                            row.total_duration_ms,
                        )
                    })
                    .collect::<Vec<_>>()
            }
        };
        let all = vec![
            ("alpha".to_owned(), "/v1".to_owned(), 1, 2),
            ("zeta".to_owned(), "/v1".to_owned(), 1, 3),
            ("zeta".to_owned(), "/v2".to_owned(), 1, 1),
        ];
        let zeta = all[1..].to_vec();
        // Unfolded, the rows are read as text.
        assert_eq!(read(grouped(None)).await, all);
        crate::store::search::index_pending(&db).await.unwrap();
        assert_eq!(count(&db, "usage_stats").await, 3);
        assert_eq!(count(&db, "endpoint_numbers").await, 2);
        assert_eq!(read(grouped(None)).await, all);
        assert_eq!(read(grouped(Some("zeta"))).await, zeta);
        assert_eq!(read(grouped(Some("nobody"))).await, Vec::new());
        // A folded counter and a row not folded yet of the same group make one bucket; the
        // fold adds no value twice.
        db.execute_unprepared(&insert(4, "zeta", "/v2"))
            .await
            .unwrap();
        let mut four = all.clone();
        four[2] = ("zeta".to_owned(), "/v2".to_owned(), 2, 5);
        assert_eq!(read(grouped(None)).await, four);
        crate::store::search::index_pending(&db).await.unwrap();
        assert_eq!(read(grouped(None)).await, four);
        assert_eq!(count(&db, "endpoint_numbers").await, 2);
        assert_eq!(count(&db, "usage_stats").await, 3);
        // The counters hold the dictionaries' numbers, not the texts.
        let row = db
            .query_one(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT typeof(api_key_no) AS k, typeof(endpoint_no) AS e FROM usage_stats LIMIT 1",
            ))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get::<String>("", "k").unwrap(), "integer");
        assert_eq!(row.try_get::<String>("", "e").unwrap(), "integer");
    }

    #[tokio::test]
    async fn deleted_rows_stay_counted_whether_folded_or_not() {
        let (_dir, db) = rows(12).await;
        // Rows up to 5 folded, as a chunk would have left them (the search index aside).
        fold_sqlite(&db, r#""id" <= ?"#, vec![5.into()])
            .await
            .unwrap();
        db.execute_unprepared(
            "UPDATE settings SET value = '5' WHERE name = 'usage_folded_through'",
        )
        .await
        .unwrap();
        assert_eq!(counts(&db).await, TWELVE);
        assert_eq!(sweep_step_of(&db, 100).await, 12);
        assert_eq!(count(&db, "log_entries").await, 0);
        assert_eq!(counts(&db).await, TWELVE);
        // Few rows waited: the step folded them all, by id.
        assert_eq!(folded_through(&db).await.unwrap(), 12);
    }

    #[tokio::test]
    async fn behind_a_burst_a_delete_step_folds_only_its_own_rows() {
        let n = FOLD_ALL_BEFORE_DELETE_ROWS + 1_000;
        let (_dir, db) = rows(n).await;
        let before = counts(&db).await;
        assert_eq!(sweep_step_of(&db, 100).await, 100);
        assert_eq!(counts(&db).await, before);
        // The 100 rows went into counters; the watermark did not move past the rest.
        assert_eq!(folded_through(&db).await.unwrap(), 0);
        assert_eq!(counter_sums(&db).await.0, 100);
    }

    #[tokio::test]
    async fn rows_counted_at_ingest_before_the_migration_are_counted_once() {
        use reqlog_migrations::{Migrator, MigratorTrait};
        let (_dir, db) = rows(12).await;
        // Reverting the migration (and the eight after it) counts the rows no chunk folded,
        // as ingest would have.
        Migrator::down(&db, Some(9)).await.unwrap();
        assert_eq!(count(&db, "usage_stats").await, 6);
        assert_eq!(counter_sums(&db).await, (12, (1..=12).sum()));
        // Applying it again: every existing row is in the counters already.
        Migrator::up(&db, None).await.unwrap();
        assert_eq!(folded_through(&db).await.unwrap(), 12);
        assert_eq!(counts(&db).await, TWELVE);
    }

    #[tokio::test]
    async fn sqlite_reads_the_counters_by_key_and_the_newest_rows_by_id() {
        let (_dir, db) = rows(12).await;
        let statement = buckets_statement(DbBackend::Sqlite, 1, &query());
        let plan = crate::store::test_sqlite_plan(&db, statement).await;
        let has = |text: &str| plan.iter().any(|line| line.contains(text));
        assert!(
            has(
                "SEARCH usage_stats USING PRIMARY KEY (account_no=? AND bucket_start>? AND bucket_start<?)"
            ),
            "{plan:#?}"
        );
        // The rows waiting are picked from the id index alone, then read by their key.
        assert!(
            has("SEARCH log_entries USING COVERING INDEX idx_log_entries_id (id>?)"),
            "{plan:#?}"
        );
        assert!(
            has("SEARCH log_entries USING PRIMARY KEY (account_no=? AND ts=?)"),
            "{plan:#?}"
        );
        assert!(
            !has("SCAN log_entries") && !has("SCAN usage_stats"),
            "{plan:#?}"
        );
    }
}

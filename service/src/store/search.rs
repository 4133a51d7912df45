//! PostgreSQL's search index, kept off the ingest path.
//!
//! A trigram GIN index on every row costs PostgreSQL ~4× the insert time (measured: 100k
//! rows 5.3 s without, 21.9–23.5 s with, pending list or not), so the ingest transaction does
//! not touch it. Instead `log_search` holds a copy of each row's free-text columns (`doc`,
//! the columns joined by U+0001) under a `gin_trgm_ops` index, filled by [`index_pending`]
//! in the background. Every id up to the watermark `search_indexed_through` (in `settings`)
//! is in `log_search`; rows above it (the newest, not yet indexed) are searched by walking
//! them, so a query always sees every committed row.
//!
//! The watermark is safe because ids only become final at commit: every ingest transaction
//! holds [`INGEST_BARRIER_LOCK`] shared (taken with its key locks, in the same statement), and
//! the indexer reads `MAX(id)` while holding it exclusively, when no ingest transaction is in
//! flight, so no lower id can commit later.
//!
//! SQLite has no such index: its rows are clustered by account and time, and its search
//! walks them (see `store::logs`).

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

use super::StoreError;

/// The advisory lock ingest transactions share and the indexer takes alone.
pub const INGEST_BARRIER_LOCK: i64 = 0x7265_716c_6f67_2000;
/// The advisory lock that keeps two replicas from indexing the same rows at once.
const INDEXER_LOCK: i64 = 0x7265_716c_6f67_2001;
/// The settings row holding the highest id known to be in `log_search`.
pub const WATERMARK: &str = "search_indexed_through";
/// Rows one indexing transaction copies.
const CHUNK_ROWS: i64 = 5_000;

/// The text `log_search.doc` holds for a row of `log_entries` (SQL over its columns). Every
/// searched free-text column is a substring of it, so a row whose column contains the term
/// has a `doc` that contains it too.
pub const DOC_SQL: &str = "api_key_name || chr(1) || api_key_prefix || chr(1) || endpoint \
     || chr(1) || COALESCE(query_params, '') || chr(1) || COALESCE(error_code, '')";

/// Copies rows committed since the last run into `log_search`; returns how many. A no-op on
/// SQLite, and when another replica is indexing.
pub async fn index_pending(db: &DatabaseConnection) -> Result<u64, StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(0);
    }
    let backend = DbBackend::Postgres;
    // The barrier: while held exclusively no ingest transaction is open, so every id up to
    // this MAX(id) is committed or will never be.
    let target = {
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({INGEST_BARRIER_LOCK})"
        ))
        .await?;
        let row = txn
            .query_one(Statement::from_string(
                backend,
                "SELECT COALESCE(MAX(id), 0) AS id FROM log_entries",
            ))
            .await?;
        txn.commit().await?;
        match row {
            Some(row) => row.try_get::<i64>("", "id")?,
            None => 0,
        }
    };
    let mut copied = 0;
    loop {
        let txn = db.begin().await?;
        let locked = txn
            .query_one(Statement::from_string(
                backend,
                format!("SELECT pg_try_advisory_xact_lock({INDEXER_LOCK}) AS locked"),
            ))
            .await?
            .map(|row| row.try_get::<bool>("", "locked"))
            .transpose()?
            .unwrap_or(false);
        if !locked {
            return Ok(copied);
        }
        let from = watermark(&txn).await?;
        if from >= target {
            return Ok(copied);
        }
        let upto = (from + CHUNK_ROWS).min(target);
        let inserted = txn
            .execute(Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO log_search (id, account_id, doc) \
                     SELECT id, account_id, {DOC_SQL} FROM log_entries WHERE id > $1 AND id <= $2 \
                     ON CONFLICT (id) DO NOTHING"
                ),
                [from.into(), upto.into()],
            ))
            .await?
            .rows_affected();
        txn.execute(Statement::from_sql_and_values(
            backend,
            "INSERT INTO settings (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            [WATERMARK.into(), upto.to_string().into()],
        ))
        .await?;
        txn.commit().await?;
        copied += inserted;
    }
}

/// The highest id known to be in `log_search` (0 before the first run).
pub async fn watermark(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT value FROM settings WHERE name = $1",
            [WATERMARK.into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get::<String>("", "value")?.parse().unwrap_or(0),
        None => 0,
    })
}

/// Indexes every `interval` until the task is dropped (PostgreSQL only).
pub async fn index_forever(db: DatabaseConnection, interval: Duration) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match index_pending(&db).await {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "search index caught up"),
            Err(error) => tracing::warn!(%error, "search indexing failed; retrying"),
        }
    }
}

//! Key lifecycle, plans and retention in SQL. Every function that writes
//! is meant to run on the writer (`Writer::run`), so it is ordered with ingest.

use std::collections::HashMap;

use sea_orm::sea_query::{Alias, Expr, OnConflict, Order, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QuerySelect, Statement, TransactionTrait,
};

use super::StoreError;
use super::dictionary::{Dictionary, account_no, holds_number_of};
use super::entity::{account, api_key, log_entry};
use super::writer::{WriterDb, WriterTxn};
use crate::domain::lifecycle::{Plan, Retention};
use crate::domain::time::day_of;

/// How many lock buckets purge and ingest share on PostgreSQL (see [`lock_key_buckets`]).
const KEY_LOCK_BUCKETS: u64 = 16;
/// The advisory lock that keeps two replicas from sweeping at once.
pub const SWEEP_LOCK_ID: i64 = 0x7265_716c_6f67_0001;

fn key_lock_bucket(account_id: &str, api_key_id: &str) -> i64 {
    // FNV-1a: stable across processes and versions, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in account_id.bytes().chain([0]).chain(api_key_id.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    0x7265_716c_6f67_1000 + (hash % KEY_LOCK_BUCKETS) as i64
}

/// PostgreSQL only: takes the transaction-scoped advisory locks of these keys' buckets,
/// shared for ingest and exclusive for a purge's mark. A purge's mark therefore waits for
/// ingest transactions already holding one of its keys, and later ingest transactions wait
/// for the mark and then see it, on every replica. SQLite's single write lock does the same.
pub async fn lock_key_buckets<'a>(
    txn: &impl ConnectionTrait,
    keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    exclusive: bool,
) -> Result<(), StoreError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let mut buckets: Vec<i64> = keys
        .into_iter()
        .map(|(account, key)| key_lock_bucket(account, key))
        .collect();
    if !exclusive && !buckets.is_empty() {
        // Ingest also holds the search indexer's barrier (see `store::search`).
        buckets.push(super::search::INGEST_BARRIER_LOCK);
    }
    // One order everywhere, so two transactions never wait on each other in a cycle.
    buckets.sort_unstable();
    buckets.dedup();
    if buckets.is_empty() {
        return Ok(());
    }
    let function = if exclusive {
        "pg_advisory_xact_lock"
    } else {
        "pg_advisory_xact_lock_shared"
    };
    // One round trip for every bucket; the numbers are ours (hashes), never caller text.
    let values: Vec<String> = buckets.iter().map(|bucket| format!("({bucket})")).collect();
    txn.execute(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "SELECT COUNT({function}(b)) FROM (SELECT b FROM (VALUES {}) AS v(b) ORDER BY b) AS s",
            values.join(", ")
        ),
    ))
    .await?;
    Ok(())
}

/// Marks a key deleted (keeping the first deletion time); later records for it are refused.
pub async fn mark_key_deleted(
    db: &impl TransactionTrait,
    account_id: &str,
    api_key_id: &str,
    now_micros: i64,
) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    lock_key_buckets(&txn, [(account_id, api_key_id)], true).await?;
    api_key::Entity::insert(api_key::ActiveModel {
        account_id: Set(account_id.to_owned()),
        api_key_id: Set(api_key_id.to_owned()),
        name: Set(String::new()),
        prefix: Set(String::new()),
        status: Set(String::new()),
        expires_at: Set(None),
        deleted_at: Set(Some(now_micros)),
        updated_at: Set(now_micros),
    })
    .on_conflict(
        OnConflict::columns([api_key::Column::AccountId, api_key::Column::ApiKeyId])
            .value(
                api_key::Column::DeletedAt,
                Expr::cust(r#"COALESCE("api_keys"."deleted_at", "excluded"."deleted_at")"#),
            )
            .update_column(api_key::Column::UpdatedAt)
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(())
}

/// Deletes up to `limit` rows of a key, in one transaction; returns how many.
pub async fn delete_key_rows(
    db: &WriterDb,
    account_id: &str,
    api_key_id: &str,
    limit: u64,
) -> Result<u64, StoreError> {
    let txn = db.begin_write().await?;
    let Some(account_no) = account_no(&txn, account_id).await? else {
        return Ok(0);
    };
    let mut batch = Query::select();
    batch
        .from(log_entry::Entity)
        .and_where(log_entry::Column::AccountNo.eq(account_no))
        .and_where(holds_number_of(
            log_entry::Column::ApiKeyNo,
            Dictionary::ApiKeys,
            &[api_key_id],
        ))
        .limit(limit);
    let deleted = delete_batch(&txn, batch).await?;
    txn.commit().await?;
    Ok(deleted)
}

/// One account's share of a retention sweep.
#[derive(Debug, Clone)]
pub struct SweepItem {
    /// The account.
    pub account_id: String,
    /// Its number in `account_numbers`.
    pub account_no: i64,
    /// Rows older than this (microseconds) go.
    pub cutoff_micros: i64,
}

/// What one [`sweep_step`] did to one account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepProgress {
    /// Rows deleted from the account in this step.
    pub deleted: u64,
    /// Whether the account has no row older than its cutoff left, and no idempotency key
    /// from before it.
    pub finished: bool,
}

/// One transaction of a retention sweep: deletes up to `limit` rows and idempotency keys in
/// all (and stops taking new accounts once `budget` has passed), taking `items` in order,
/// each account's rows older than its cutoff, then its keys from before it. One transaction
/// serves many small accounts, since each commit costs an fsync (with automerge turned off in
/// the same commit, the 1M-row sweep of 1,000 accounts went 42.6 → 19.1 s). Returns the
/// progress of each account it reached, in order.
pub async fn sweep_step(
    db: &WriterDb,
    items: &[SweepItem],
    limit: u64,
    budget: std::time::Duration,
) -> Result<Vec<SweepProgress>, StoreError> {
    let started = std::time::Instant::now();
    let txn = db.begin_write().await?;
    let mut progress = Vec::new();
    let mut left = limit;
    for item in items {
        // Ingest waits for the whole step: past the budget the next account waits for the
        // next step (without the budget, ingest p99 during a PostgreSQL sweep was 841 ms;
        // with it 84 ms).
        if left == 0 || (started.elapsed() > budget && !progress.is_empty()) {
            break;
        }
        let mut batch = Query::select();
        batch
            .from(log_entry::Entity)
            .and_where(log_entry::Column::AccountNo.eq(item.account_no))
            .and_where(log_entry::Column::Ts.lt(item.cutoff_micros))
            .limit(left);
        let deleted = delete_batch(&txn, batch).await?;
        left -= deleted;
        // Its old idempotency keys go once its old rows have (the step's budget was not used
        // up by them), counted against the same budget: the biggest account's ~100k keys in
        // one statement made a 230 ms step.
        let finished = left > 0 && {
            let horizon = request_id_horizon(item.cutoff_micros);
            left -= prune_request_ids(&txn, item.account_no, horizon, left).await?;
            if let WriterTxn::Held(held) = &txn {
                super::claims::prune(held, item.account_no, horizon).await?;
            }
            left > 0
        };
        progress.push(SweepProgress { deleted, finished });
    }
    txn.commit().await?;
    Ok(progress)
}

/// Deletes the rows `batch` (a SELECT without columns) finds, and their search-index
/// entries: by their primary key `(account_no, ts, id)` on SQLite, where the table is
/// clustered on it, queueing the indexed rows' postings for the indexer to drop; by `id` on
/// PostgreSQL, with their `log_search` rows.
async fn delete_batch(
    txn: &impl ConnectionTrait,
    mut batch: sea_orm::sea_query::SelectStatement,
) -> Result<u64, StoreError> {
    use log_entry::Column as C;
    match txn.get_database_backend() {
        DbBackend::Sqlite => {
            // In key order, so that the two statements below choose the same rows (the
            // callers' batches are one account's, read from an index in this order).
            batch
                .columns([C::AccountNo, C::Ts, C::Id])
                .order_by(C::Ts, Order::Asc)
                .order_by(C::Id, Order::Asc);
            let (batch_sql, values) = batch.build(sea_orm::sea_query::SqliteQueryBuilder);
            let chosen = format!(r#"("account_no", "ts", "id") IN ({batch_sql})"#);
            // Stable while this transaction holds the write lock (the indexer writes too).
            let indexed_through = super::search::watermark(txn).await?;
            // Statistics outlive the rows: those no indexer chunk reached are counted first.
            super::usage::fold_before_delete_sqlite(txn, &chosen, values.0.clone()).await?;
            // Queued for the indexer rather than dropped here: FTS5's per-row 'delete' was
            // 37–47% of a purge, and every ingest caller waits for a writer job (see
            // `search::drop_removed_sqlite`). Only rows the indexer copied have postings.
            let mut queue_values = values.0.clone();
            queue_values.push(indexed_through.into());
            txn.execute(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                format!(
                    r#"INSERT OR FAIL INTO log_search_removals (id, {columns}) SELECT "id", {texts} FROM log_entries WHERE {chosen} AND "id" <= ?"#,
                    columns = super::search::SQLITE_COLUMNS,
                    texts = super::search::SQLITE_ROW_TEXTS,
                ),
                queue_values,
            ))
            .await?;
            let deleted = txn
                .execute(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    format!("DELETE FROM log_entries WHERE {chosen}"),
                    values.0,
                ))
                .await?
                .rows_affected();
            Ok(deleted)
        }
        _ => {
            // The rows leave the search index in the same statement.
            super::search::exclude_indexer(txn).await?;
            batch.column(C::Id);
            let (batch_sql, values) = batch.build(sea_orm::sea_query::PostgresQueryBuilder);
            let row = txn
                .query_one(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    format!(
                        "WITH gone AS (DELETE FROM log_entries WHERE id IN ({batch_sql}) RETURNING id), \
                         unindexed AS (DELETE FROM log_search WHERE id IN (SELECT id FROM gone)) \
                         SELECT COUNT(*) AS deleted FROM gone"
                    ),
                    values.0,
                ))
                .await?;
            let deleted = match row {
                Some(row) => row.try_get::<i64>("", "deleted")?,
                None => 0,
            };
            Ok(u64::try_from(deleted).unwrap_or(0))
        }
    }
}

/// Forgets up to `limit` idempotency keys of an account from days before `before_day`;
/// returns how many.
///
/// The key leads with the day, so `account_no = ? AND day < ?` is a range over every account's
/// old keys, read again for each account a sweep finishes (PostgreSQL: 1,001 sequential scans
/// of `request_ids` reading 206M rows in one sweep of 270k rows). One probe of
/// `(day, account_no)` per day since the oldest stored day seeks to the account's keys instead.
pub async fn prune_request_ids(
    db: &impl ConnectionTrait,
    account_no: i64,
    before_day: i64,
    limit: u64,
) -> Result<u64, StoreError> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "DELETE FROM request_ids WHERE (day, account_no, request_key) IN ( \
                 SELECT day, account_no, request_key FROM request_ids \
                 WHERE account_no = $1 AND day = ANY(ARRAY( \
                     SELECT generate_series((SELECT MIN(day) FROM request_ids), $2::bigint - 1))) \
                 LIMIT $3)"
        }
        _ => {
            "WITH RECURSIVE days(day) AS ( \
                 SELECT MIN(day) FROM request_ids \
                 UNION ALL SELECT day + 1 FROM days WHERE day + 1 < ?2) \
             DELETE FROM request_ids WHERE (day, account_no, request_key) IN ( \
                 SELECT day, account_no, request_key FROM request_ids \
                 WHERE account_no = ?1 AND day IN (SELECT day FROM days WHERE day < ?2) \
                 LIMIT ?3)"
        }
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let result = db
        .execute(Statement::from_sql_and_values(
            backend,
            sql,
            [account_no.into(), before_day.into(), limit.into()],
        ))
        .await?;
    Ok(result.rows_affected())
}

/// Why an upsert was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertRefused {
    /// The key was purged; it stays deleted.
    Purged,
}

/// Creates or updates a key; a purged key is left as it is.
pub async fn upsert_key(
    db: &impl TransactionTrait,
    key: api_key::Model,
) -> Result<Result<api_key::Model, UpsertRefused>, StoreError> {
    let txn = super::begin_write(db).await?;
    let existing = api_key::Entity::find_by_id((key.account_id.clone(), key.api_key_id.clone()))
        .one(&txn)
        .await?;
    if existing.is_some_and(|stored| stored.deleted_at.is_some()) {
        return Ok(Err(UpsertRefused::Purged));
    }
    api_key::Entity::insert(api_key::ActiveModel {
        account_id: Set(key.account_id.clone()),
        api_key_id: Set(key.api_key_id.clone()),
        name: Set(key.name.clone()),
        prefix: Set(key.prefix.clone()),
        status: Set(key.status.clone()),
        expires_at: Set(key.expires_at),
        deleted_at: Set(None),
        updated_at: Set(key.updated_at),
    })
    .on_conflict(
        OnConflict::columns([api_key::Column::AccountId, api_key::Column::ApiKeyId])
            .update_columns([
                api_key::Column::Name,
                api_key::Column::Prefix,
                api_key::Column::Status,
                api_key::Column::ExpiresAt,
                api_key::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(Ok(key))
}

/// Sets an account's plan and override.
pub async fn set_plan(
    db: &impl ConnectionTrait,
    account_id: &str,
    retention: Retention,
    now_micros: i64,
) -> Result<(), StoreError> {
    account::Entity::insert(account::ActiveModel {
        account_id: Set(account_id.to_owned()),
        plan: Set(retention.plan.as_str().to_owned()),
        retention_days_override: Set(retention.override_days),
        updated_at: Set(now_micros),
    })
    .on_conflict(
        OnConflict::column(account::Column::AccountId)
            .update_columns([
                account::Column::Plan,
                account::Column::RetentionDaysOverride,
                account::Column::UpdatedAt,
            ])
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

fn retention_of_row(row: &account::Model, default: Plan) -> Retention {
    Retention {
        plan: row.plan.parse().unwrap_or(default),
        override_days: row.retention_days_override,
    }
}

/// Every account's retention (accounts never set are absent: they use the default plan).
pub async fn retentions(
    db: &impl ConnectionTrait,
    default: Plan,
) -> Result<HashMap<String, Retention>, StoreError> {
    Ok(account::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|row| (row.account_id.clone(), retention_of_row(&row, default)))
        .collect())
}

/// One account's retention.
pub async fn retention(
    db: &impl ConnectionTrait,
    account_id: &str,
    default: Plan,
) -> Result<Retention, StoreError> {
    Ok(account::Entity::find_by_id(account_id.to_owned())
        .one(db)
        .await?
        .map_or(
            Retention {
                plan: default,
                override_days: None,
            },
            |row| retention_of_row(&row, default),
        ))
}

/// Accounts (of one, or of all) that hold log rows, with their numbers. One probe of the
/// clustered key (SQLite) or account index (PostgreSQL) per account ever seen.
pub async fn accounts_with_rows(
    db: &impl ConnectionTrait,
    only: Option<&str>,
) -> Result<Vec<(String, i64)>, StoreError> {
    let backend = db.get_database_backend();
    let mut select = Query::select();
    select
        .columns([Alias::new("value"), Alias::new("id")])
        .from(Alias::new("account_numbers"))
        .and_where(Expr::exists(
            Query::select()
                .expr(Expr::val(1))
                .from(log_entry::Entity)
                .and_where(
                    Expr::col((log_entry::Entity, log_entry::Column::AccountNo))
                        .equals((Alias::new("account_numbers"), Alias::new("id"))),
                )
                .to_owned(),
        ))
        .order_by(Alias::new("id"), Order::Asc);
    if let Some(account_id) = only {
        select.and_where(Expr::col(Alias::new("value")).eq(account_id));
    }
    db.query_all(backend.build(&select))
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "value")?, row.try_get("", "id")?)))
        .collect()
}

/// Purged keys (of one account, or of all) that still hold rows: a purge the server's
/// shutdown cut short. The key index answers each key's check.
pub async fn purged_keys_with_rows(
    db: &impl ConnectionTrait,
    only: Option<&str>,
) -> Result<Vec<(String, String)>, StoreError> {
    let accounts = Alias::new(Dictionary::Accounts.table_name());
    let keys = Alias::new(Dictionary::ApiKeys.table_name());
    let mut has_rows = Query::select();
    has_rows
        .expr(Expr::val(1))
        .from(log_entry::Entity)
        .inner_join(
            accounts.clone(),
            Expr::col((accounts.clone(), Alias::new("id")))
                .equals((log_entry::Entity, log_entry::Column::AccountNo)),
        )
        .inner_join(
            keys.clone(),
            Expr::col((keys.clone(), Alias::new("id")))
                .equals((log_entry::Entity, log_entry::Column::ApiKeyNo)),
        )
        .and_where(
            Expr::col((accounts, Alias::new("value")))
                .equals((api_key::Entity, api_key::Column::AccountId)),
        )
        .and_where(
            Expr::col((keys, Alias::new("value")))
                .equals((api_key::Entity, api_key::Column::ApiKeyId)),
        );
    let mut keys = api_key::Entity::find()
        .select_only()
        .column(api_key::Column::AccountId)
        .column(api_key::Column::ApiKeyId)
        .filter(api_key::Column::DeletedAt.is_not_null())
        .filter(Expr::exists(has_rows));
    if let Some(account_id) = only {
        keys = keys.filter(api_key::Column::AccountId.eq(account_id));
    }
    Ok(keys.into_tuple::<(String, String)>().all(db).await?)
}

/// Rows of an account older than a cutoff: how many, and the oldest and newest timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgeCount {
    /// Rows.
    pub rows: i64,
    /// Oldest timestamp among them, microseconds.
    pub oldest: Option<i64>,
    /// Newest timestamp among them, microseconds.
    pub newest: Option<i64>,
}

/// Counts an account's rows older than `cutoff_micros` (served by the account/time index).
pub async fn count_rows_before(
    db: &impl ConnectionTrait,
    account_id: &str,
    cutoff_micros: i64,
) -> Result<AgeCount, StoreError> {
    let Some(account_no) = account_no(db, account_id).await? else {
        return Ok(AgeCount::default());
    };
    let (rows, oldest, newest) = log_entry::Entity::find()
        .select_only()
        .expr(Expr::cust(r#"CAST(COUNT(*) AS BIGINT)"#))
        .expr(Expr::col(log_entry::Column::Ts).min())
        .expr(Expr::col(log_entry::Column::Ts).max())
        .filter(log_entry::Column::AccountNo.eq(account_no))
        .filter(log_entry::Column::Ts.lt(cutoff_micros))
        .into_tuple::<(i64, Option<i64>, Option<i64>)>()
        .one(db)
        .await?
        .unwrap_or_default();
    Ok(AgeCount {
        rows,
        oldest,
        newest,
    })
}

/// The day (UTC day number) before which idempotency keys can go, for a sweep cutoff: keys
/// of the cutoff's day and the day before still guard rows inside the window (±1 day).
pub fn request_id_horizon(cutoff_micros: i64) -> i64 {
    day_of(cutoff_micros) - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_count as count;

    #[tokio::test]
    async fn a_sweep_step_prunes_keys_within_its_budget() {
        let (_dir, db) = crate::store::test_database().await;
        // Ten rows of days 100–109 and their keys, and a cutoff far after them.
        db.execute_unprepared(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT OR IGNORE INTO endpoint_numbers (id, value) VALUES (1, '/v1'); \
             WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 9) \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             SELECT i + 1, 1, (100 + i) * 86400000000, 1, 1, 'GET', 1, \
             200, X'ab', 1 FROM n",
        )
        .await
        .unwrap();
        db.execute_unprepared(
            "INSERT INTO request_ids (day, account_no, request_key, log_id) \
             SELECT ts / 86400000000, account_no, CAST('r' || id AS BLOB), id FROM log_entries",
        )
        .await
        .unwrap();
        let items = [SweepItem {
            account_id: "a".into(),
            account_no: 1,
            cutoff_micros: 200 * 86_400_000_000,
        }];
        let budget = std::time::Duration::from_secs(60);
        let mut steps = Vec::new();
        for _ in 0..3 {
            let progress = sweep_step(&WriterDb::Pool(db.clone()), &items, 7, budget)
                .await
                .unwrap();
            steps.push((
                progress,
                count(&db, "log_entries").await,
                count(&db, "request_ids").await,
            ));
        }
        let step = |deleted, finished| vec![SweepProgress { deleted, finished }];
        assert_eq!(
            steps,
            [
                // Rows are left: no key goes yet.
                (step(7, false), 3, 10),
                // The last 3 rows, then 4 keys: the budget is spent, so not finished.
                (step(3, false), 0, 6),
                // The other 6 keys, within the budget: finished.
                (step(0, true), 0, 0),
            ]
        );
    }
}

//! Helpers for migrations whose statements must apply as one unit, SQLite's above all.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseBackend, TransactionTrait};

/// Runs `statements` in one transaction, on one connection.
///
/// sea-orm-migration runs an SQLite migration on the pool, statement by statement, outside
/// any transaction. A pooled connection whose cached schema predates another connection's
/// change refuses a statement while parsing it (`duplicate column name` for a column
/// renamed away on another connection) instead of reading the schema again; and a migration
/// that failed halfway stayed half applied.
pub(crate) async fn in_one_transaction(
    manager: &SchemaManager<'_>,
    statements: &[&str],
) -> Result<(), DbErr> {
    let txn = manager.get_connection().begin().await?;
    // Reading the schema table checks the schema's version first, so the statements below
    // are parsed against the current schema.
    txn.execute_unprepared("SELECT COUNT(*) FROM sqlite_schema")
        .await?;
    for statement in statements {
        txn.execute_unprepared(statement).await?;
    }
    txn.commit().await
}

/// Runs `statements` in order as one unit on either backend: on SQLite with
/// [`in_one_transaction`], on PostgreSQL in the transaction sea-orm-migration runs each
/// migration in.
pub(crate) async fn run_all(
    manager: &SchemaManager<'_>,
    statements: &[String],
) -> Result<(), DbErr> {
    if manager.get_database_backend() == DatabaseBackend::Sqlite {
        let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
        return in_one_transaction(manager, &statements).await;
    }
    for statement in statements {
        manager
            .get_connection()
            .execute_unprepared(statement)
            .await?;
    }
    Ok(())
}

/// `columns` (a list separated by ", ") with each name prefixed by `alias`, for a copy's
/// `SELECT` from a join.
pub(crate) fn qualified(alias: &str, columns: &str) -> String {
    columns
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// SQLite: replaces `log_entries` by `log_entries_copy` (filled by the caller), with its two
/// indexes and the planner statistics they had (a real `ANALYZE`'s, or the first
/// migration's defaults); `key` is the key index's second column.
pub(crate) fn swap_log_entries_copy(key: &str) -> Vec<String> {
    vec![
        "CREATE TEMP TABLE log_entries_stat AS \
         SELECT tbl, idx, stat FROM sqlite_stat1 WHERE tbl = 'log_entries'"
            .to_owned(),
        "DROP TABLE log_entries".to_owned(),
        "ALTER TABLE log_entries_copy RENAME TO log_entries".to_owned(),
        format!(
            "CREATE INDEX idx_log_entries_account_key_ts ON log_entries \
             (account_no, {key}, ts, id)"
        ),
        "CREATE INDEX idx_log_entries_id ON log_entries (id)".to_owned(),
        "DELETE FROM sqlite_stat1 WHERE tbl = 'log_entries'".to_owned(),
        "INSERT INTO sqlite_stat1 (tbl, idx, stat) \
         SELECT tbl, idx, stat FROM temp.log_entries_stat"
            .to_owned(),
        "DROP TABLE temp.log_entries_stat".to_owned(),
        "ANALYZE sqlite_schema".to_owned(),
    ]
}

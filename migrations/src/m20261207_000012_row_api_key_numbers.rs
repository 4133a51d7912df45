//! Rows hold their API key id as its number in `api_key_numbers` (`api_key_no`), as they
//! hold the account's.
//!
//! The key id repeats on every row of the key, in `log_entries` and again in the key index
//! that serves the key filter and PurgeForKey. Nothing sorts or searches by it: a filter
//! names ids, which the statement looks up; a page spells its rows' numbers in one query.
//!
//! SQLite: the table is copied into one of the new shape, which takes the old name; its two
//! indexes are created again and keep the planner statistics they had. PostgreSQL: the
//! column is added, filled and the text dropped; the key index is built again. Down turns
//! the numbers back into text.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::{run_all, swap_log_entries_copy};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// SQLite's `log_entries_copy`, with the key as `key_column` (its type included).
fn sqlite_copy(key_column: &str) -> String {
    format!(
        "CREATE TABLE log_entries_copy (
            id INTEGER NOT NULL,
            account_no INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            request_id TEXT NULL,
            {key_column} NOT NULL,
            api_key_name TEXT NOT NULL,
            api_key_prefix TEXT NOT NULL,
            method TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            query_params TEXT NULL,
            status_code INTEGER NOT NULL,
            error_code TEXT NULL,
            ip_hash BLOB NOT NULL,
            user_agent_id INTEGER NULL,
            duration_ms INTEGER NOT NULL,
            PRIMARY KEY (account_no, ts, id)
        ) WITHOUT ROWID"
    )
}

/// The columns after the key, as both shapes name them.
const REST: &str = "api_key_name, api_key_prefix, method, endpoint, query_params, \
                    status_code, error_code, ip_hash, user_agent_id, duration_ms";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut statements = vec![
            // The WHERE tells SQLite's parser that the upsert's ON is not a join's.
            "INSERT INTO api_key_numbers (value) SELECT DISTINCT api_key_id FROM log_entries \
             WHERE true ORDER BY 1 ON CONFLICT (value) DO NOTHING"
                .to_owned(),
        ];
        if backend == DatabaseBackend::Sqlite {
            statements.extend([
                sqlite_copy("api_key_no INTEGER"),
                format!(
                    "INSERT INTO log_entries_copy (id, account_no, ts, request_id, api_key_no, \
                     {REST}) SELECT e.id, e.account_no, e.ts, e.request_id, k.id, {REST} \
                     FROM log_entries e JOIN api_key_numbers k ON k.value = e.api_key_id"
                ),
            ]);
            statements.extend(swap_log_entries_copy("api_key_no"));
        } else {
            statements.extend(
                [
                    "ALTER TABLE log_entries ADD COLUMN api_key_no INTEGER",
                    "UPDATE log_entries e SET api_key_no = k.id FROM api_key_numbers k \
                     WHERE k.value = e.api_key_id",
                    "ALTER TABLE log_entries ALTER COLUMN api_key_no SET NOT NULL",
                    "DROP INDEX idx_log_entries_account_key_ts",
                    "ALTER TABLE log_entries DROP COLUMN api_key_id",
                    "CREATE INDEX idx_log_entries_account_key_ts ON log_entries \
                     (account_no, api_key_no, ts, id)",
                ]
                .map(str::to_owned),
            );
        }
        run_all(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = if manager.get_database_backend() == DatabaseBackend::Sqlite {
            let mut statements = vec![
                sqlite_copy("api_key_id TEXT"),
                format!(
                    "INSERT INTO log_entries_copy (id, account_no, ts, request_id, api_key_id, \
                     {REST}) SELECT e.id, e.account_no, e.ts, e.request_id, k.value, {REST} \
                     FROM log_entries e JOIN api_key_numbers k ON k.id = e.api_key_no"
                ),
            ];
            statements.extend(swap_log_entries_copy("api_key_id"));
            statements
        } else {
            [
                "ALTER TABLE log_entries ADD COLUMN api_key_id TEXT COLLATE \"C\"",
                "UPDATE log_entries e SET api_key_id = k.value FROM api_key_numbers k \
                 WHERE k.id = e.api_key_no",
                "ALTER TABLE log_entries ALTER COLUMN api_key_id SET NOT NULL",
                "DROP INDEX idx_log_entries_account_key_ts",
                "ALTER TABLE log_entries DROP COLUMN api_key_no",
                "CREATE INDEX idx_log_entries_account_key_ts ON log_entries \
                 (account_no, api_key_id, ts, id)",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        run_all(manager, &statements).await
    }
}

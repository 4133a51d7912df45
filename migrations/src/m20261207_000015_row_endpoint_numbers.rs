//! Rows hold their path as a number, `endpoint_no`, in `endpoint_numbers`, the dictionary
//! the usage counters already use (`m20261207_000011`).
//!
//! A platform's paths are few and repeat on every row (in the benchmark's data 14 paths of
//! 17 characters on average, 17 B of `log_entries`' 122 B a row). A filter or a search on
//! the path tries the dictionary's values once and tests each row's number; a sort by path
//! joins the value; the search index still holds the text, which its indexer joins.
//!
//! SQLite: the table is copied into one of the new shape, which takes the old name, as in
//! `m20261207_000013`. PostgreSQL: the column is added, filled and the text dropped. Down
//! turns the numbers back into text and leaves the dictionary to the counters.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::{qualified, run_all, swap_log_entries_copy};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// SQLite's `log_entries_copy`, with the path as `endpoint_column`.
fn sqlite_copy(endpoint_column: &str) -> String {
    format!(
        "CREATE TABLE log_entries_copy (
            id INTEGER NOT NULL,
            account_no INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            request_id TEXT NULL,
            api_key_no INTEGER NOT NULL,
            api_key_label_no INTEGER NOT NULL,
            method TEXT NOT NULL,
            {endpoint_column},
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

/// The columns both shapes share, but for the path.
const SHARED: &str = "id, account_no, ts, request_id, api_key_no, api_key_label_no, method, \
                      query_params, status_code, error_code, ip_hash, user_agent_id, duration_ms";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        // `WHERE true`: SQLite would read `ON CONFLICT` as a join's constraint.
        let mut statements = vec![
            "INSERT INTO endpoint_numbers (value) \
             SELECT DISTINCT endpoint FROM log_entries WHERE true ORDER BY 1 \
             ON CONFLICT DO NOTHING"
                .to_owned(),
        ];
        if backend == DatabaseBackend::Sqlite {
            statements.extend([
                sqlite_copy("endpoint_no INTEGER NOT NULL"),
                format!(
                    "INSERT INTO log_entries_copy ({SHARED}, endpoint_no) \
                     SELECT {}, p.id FROM log_entries e \
                     JOIN endpoint_numbers p ON p.value = e.endpoint",
                    qualified("e", SHARED)
                ),
            ]);
            statements.extend(swap_log_entries_copy("api_key_no"));
        } else {
            statements.extend(
                [
                    "ALTER TABLE log_entries ADD COLUMN endpoint_no INTEGER",
                    "UPDATE log_entries e SET endpoint_no = p.id FROM endpoint_numbers p \
                     WHERE p.value = e.endpoint",
                    "ALTER TABLE log_entries ALTER COLUMN endpoint_no SET NOT NULL",
                    "ALTER TABLE log_entries DROP COLUMN endpoint",
                ]
                .map(str::to_owned),
            );
        }
        run_all(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = if manager.get_database_backend() == DatabaseBackend::Sqlite {
            let mut statements = vec![
                sqlite_copy("endpoint TEXT NOT NULL"),
                format!(
                    "INSERT INTO log_entries_copy ({SHARED}, endpoint) \
                     SELECT {}, p.value FROM log_entries e \
                     JOIN endpoint_numbers p ON p.id = e.endpoint_no",
                    qualified("e", SHARED)
                ),
            ];
            statements.extend(swap_log_entries_copy("api_key_no"));
            statements
        } else {
            [
                "ALTER TABLE log_entries ADD COLUMN endpoint TEXT COLLATE \"C\"",
                "UPDATE log_entries e SET endpoint = p.value \
                 FROM endpoint_numbers p WHERE p.id = e.endpoint_no",
                "ALTER TABLE log_entries ALTER COLUMN endpoint SET NOT NULL",
                "ALTER TABLE log_entries DROP COLUMN endpoint_no",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        run_all(manager, &statements).await
    }
}

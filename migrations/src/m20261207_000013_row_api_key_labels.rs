//! Rows hold their key's name and prefix as one number, `api_key_label_no`, in
//! `api_key_labels (account_no, api_key_no, name, prefix)`.
//!
//! A key's name and prefix repeat on every row the key made (in the benchmark's data 28 of
//! `log_entries`' 150 B a row) and change only when the key is renamed. The labels are kept
//! per account and key, so that a search tries the account's few labels, not every row's
//! text, and reaches the rows of a matching label through the key index; a sort by name or
//! prefix joins them.
//!
//! SQLite: the table is copied into one of the new shape, which takes the old name, as in
//! `m20261207_000012`. PostgreSQL: the column is added, filled and the texts dropped. Down
//! turns the numbers back into text.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::{qualified, run_all, swap_log_entries_copy};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// SQLite's `log_entries_copy`, with the key's name and prefix as `label_columns`.
fn sqlite_copy(label_columns: &str) -> String {
    format!(
        "CREATE TABLE log_entries_copy (
            id INTEGER NOT NULL,
            account_no INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            request_id TEXT NULL,
            api_key_no INTEGER NOT NULL,
            {label_columns},
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

/// The columns both shapes share, but for the label.
const SHARED: &str = "id, account_no, ts, request_id, api_key_no, method, endpoint, \
                      query_params, status_code, error_code, ip_hash, user_agent_id, duration_ms";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut statements = vec![
            match backend {
                DatabaseBackend::Sqlite => {
                    "CREATE TABLE api_key_labels (
                    id INTEGER PRIMARY KEY,
                    account_no INTEGER NOT NULL,
                    api_key_no INTEGER NOT NULL,
                    name TEXT NOT NULL,
                    prefix TEXT NOT NULL,
                    UNIQUE (account_no, api_key_no, name, prefix)
                )"
                }
                _ => {
                    "CREATE TABLE api_key_labels (
                    id BIGSERIAL PRIMARY KEY,
                    account_no INTEGER NOT NULL,
                    api_key_no INTEGER NOT NULL,
                    name TEXT COLLATE \"C\" NOT NULL,
                    prefix TEXT COLLATE \"C\" NOT NULL,
                    UNIQUE (account_no, api_key_no, name, prefix)
                )"
                }
            }
            .to_owned(),
            "INSERT INTO api_key_labels (account_no, api_key_no, name, prefix) \
             SELECT DISTINCT account_no, api_key_no, api_key_name, api_key_prefix \
             FROM log_entries ORDER BY 1, 2, 3, 4"
                .to_owned(),
        ];
        let join = "JOIN api_key_labels l ON l.account_no = e.account_no \
                    AND l.api_key_no = e.api_key_no AND l.name = e.api_key_name \
                    AND l.prefix = e.api_key_prefix";
        if backend == DatabaseBackend::Sqlite {
            statements.extend([
                sqlite_copy("api_key_label_no INTEGER NOT NULL"),
                format!(
                    "INSERT INTO log_entries_copy ({SHARED}, api_key_label_no) \
                     SELECT {}, l.id FROM log_entries e {join}",
                    qualified("e", SHARED)
                ),
            ]);
            statements.extend(swap_log_entries_copy("api_key_no"));
        } else {
            statements.extend(
                [
                    "ALTER TABLE log_entries ADD COLUMN api_key_label_no INTEGER",
                    "UPDATE log_entries e SET api_key_label_no = l.id FROM api_key_labels l \
                     WHERE l.account_no = e.account_no AND l.api_key_no = e.api_key_no \
                     AND l.name = e.api_key_name AND l.prefix = e.api_key_prefix",
                    "ALTER TABLE log_entries ALTER COLUMN api_key_label_no SET NOT NULL",
                    "ALTER TABLE log_entries DROP COLUMN api_key_name",
                    "ALTER TABLE log_entries DROP COLUMN api_key_prefix",
                ]
                .map(str::to_owned),
            );
        }
        run_all(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut statements = if manager.get_database_backend() == DatabaseBackend::Sqlite {
            let mut statements = vec![
                sqlite_copy("api_key_name TEXT NOT NULL, api_key_prefix TEXT NOT NULL"),
                format!(
                    "INSERT INTO log_entries_copy ({SHARED}, api_key_name, api_key_prefix) \
                     SELECT {}, l.name, l.prefix FROM log_entries e \
                     JOIN api_key_labels l ON l.id = e.api_key_label_no",
                    qualified("e", SHARED)
                ),
            ];
            statements.extend(swap_log_entries_copy("api_key_no"));
            statements
        } else {
            [
                "ALTER TABLE log_entries ADD COLUMN api_key_name TEXT COLLATE \"C\"",
                "ALTER TABLE log_entries ADD COLUMN api_key_prefix TEXT COLLATE \"C\"",
                "UPDATE log_entries e SET api_key_name = l.name, api_key_prefix = l.prefix \
                 FROM api_key_labels l WHERE l.id = e.api_key_label_no",
                "ALTER TABLE log_entries ALTER COLUMN api_key_name SET NOT NULL",
                "ALTER TABLE log_entries ALTER COLUMN api_key_prefix SET NOT NULL",
                "ALTER TABLE log_entries DROP COLUMN api_key_label_no",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        statements.push("DROP TABLE api_key_labels".to_owned());
        run_all(manager, &statements).await
    }
}

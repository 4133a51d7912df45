//! The usage counters hold the API key id and the endpoint as numbers in two new
//! dictionaries, `api_key_numbers` and `endpoint_numbers`, like the account.
//!
//! Both texts repeat in nearly every counter row: hourly counters per key, path, method and
//! status are sparse (1M benchmark rows: 46.9 B/row of counters), and each held an
//! 11-character key id and a ~20-character path in its key. Nothing sorts or searches the
//! counters by these texts: a read spells only the dimensions it groups by, and a key
//! filter is one lookup.
//!
//! The counters are copied into a table of the new shape, which then takes the old name.
//! Down copies them back as text.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::run_all;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// The two dictionaries' tables, as `m20261122_000001` creates the others.
fn create_dictionaries(backend: DatabaseBackend) -> Vec<String> {
    ["api_key_numbers", "endpoint_numbers"]
        .into_iter()
        .map(|table| match backend {
            DatabaseBackend::Sqlite => format!(
                "CREATE TABLE {table} (
                    id INTEGER PRIMARY KEY,
                    value TEXT NOT NULL UNIQUE
                )"
            ),
            _ => format!(
                "CREATE TABLE {table} (
                    id BIGSERIAL PRIMARY KEY,
                    value TEXT COLLATE \"C\" NOT NULL UNIQUE
                )"
            ),
        })
        .collect()
}

/// `usage_stats_copy` with the key id and endpoint as numbers or (`numbered` false) as text.
/// SQLite keeps the counters in their key's tree; PostgreSQL lays fixed-width columns first,
/// so that no 8-byte value is padded after text.
fn create_copy(backend: DatabaseBackend, numbered: bool) -> String {
    let primary_key = if numbered {
        "PRIMARY KEY (account_no, bucket_start, api_key_no, endpoint_no, method, status_code)"
    } else {
        "PRIMARY KEY (account_no, bucket_start, api_key_id, endpoint, method, status_code)"
    };
    match backend {
        DatabaseBackend::Sqlite => {
            let dimensions = if numbered {
                "api_key_no INTEGER NOT NULL, endpoint_no INTEGER NOT NULL"
            } else {
                "api_key_id TEXT NOT NULL, endpoint TEXT NOT NULL"
            };
            format!(
                "CREATE TABLE usage_stats_copy (
                    account_no INTEGER NOT NULL,
                    bucket_start INTEGER NOT NULL,
                    {dimensions},
                    method TEXT NOT NULL,
                    status_code INTEGER NOT NULL,
                    request_count INTEGER NOT NULL,
                    error_count INTEGER NOT NULL,
                    total_duration_ms INTEGER NOT NULL,
                    max_duration_ms INTEGER NOT NULL,
                    {primary_key}
                ) WITHOUT ROWID"
            )
        }
        _ => {
            let dimensions = if numbered {
                "api_key_no INTEGER NOT NULL,
                endpoint_no INTEGER NOT NULL,
                method TEXT COLLATE \"C\" NOT NULL"
            } else {
                "api_key_id TEXT COLLATE \"C\" NOT NULL,
                endpoint TEXT COLLATE \"C\" NOT NULL,
                method TEXT COLLATE \"C\" NOT NULL"
            };
            format!(
                "CREATE TABLE usage_stats_copy (
                    bucket_start BIGINT NOT NULL,
                    request_count BIGINT NOT NULL,
                    error_count BIGINT NOT NULL,
                    total_duration_ms BIGINT NOT NULL,
                    max_duration_ms BIGINT NOT NULL,
                    status_code INTEGER NOT NULL,
                    account_no INTEGER NOT NULL,
                    {dimensions},
                    {primary_key}
                )"
            )
        }
    }
}

/// The statements that replace `usage_stats` by the filled copy.
fn replace_with_copy(backend: DatabaseBackend) -> Vec<String> {
    let mut statements = vec![
        "DROP TABLE usage_stats".to_owned(),
        "ALTER TABLE usage_stats_copy RENAME TO usage_stats".to_owned(),
    ];
    if backend == DatabaseBackend::Postgres {
        // The constraint keeps the name the table was created with.
        statements.push(
            "ALTER TABLE usage_stats RENAME CONSTRAINT usage_stats_copy_pkey TO usage_stats_pkey"
                .to_owned(),
        );
    }
    statements
}

const COUNTS: &str = "u.request_count, u.error_count, u.total_duration_ms, u.max_duration_ms";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut statements = create_dictionaries(backend);
        statements.extend([
            "INSERT INTO api_key_numbers (value) \
             SELECT DISTINCT api_key_id FROM usage_stats ORDER BY 1"
                .to_owned(),
            "INSERT INTO endpoint_numbers (value) \
             SELECT DISTINCT endpoint FROM usage_stats ORDER BY 1"
                .to_owned(),
            create_copy(backend, true),
            format!(
                "INSERT INTO usage_stats_copy (account_no, bucket_start, api_key_no, \
                 endpoint_no, method, status_code, request_count, error_count, \
                 total_duration_ms, max_duration_ms) \
                 SELECT u.account_no, u.bucket_start, k.id, e.id, u.method, u.status_code, \
                 {COUNTS} FROM usage_stats u \
                 JOIN api_key_numbers k ON k.value = u.api_key_id \
                 JOIN endpoint_numbers e ON e.value = u.endpoint"
            ),
        ]);
        statements.extend(replace_with_copy(backend));
        run_all(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let mut statements = vec![
            create_copy(backend, false),
            format!(
                "INSERT INTO usage_stats_copy (account_no, bucket_start, api_key_id, \
                 endpoint, method, status_code, request_count, error_count, \
                 total_duration_ms, max_duration_ms) \
                 SELECT u.account_no, u.bucket_start, k.value, e.value, u.method, \
                 u.status_code, {COUNTS} FROM usage_stats u \
                 JOIN api_key_numbers k ON k.id = u.api_key_no \
                 JOIN endpoint_numbers e ON e.id = u.endpoint_no"
            ),
        ];
        statements.extend(replace_with_copy(backend));
        statements.extend([
            "DROP TABLE api_key_numbers".to_owned(),
            "DROP TABLE endpoint_numbers".to_owned(),
        ]);
        run_all(manager, &statements).await
    }
}

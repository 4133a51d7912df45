//! The search index no longer copies the key's name and prefix.
//!
//! Since `m20261207_000013` rows hold them as a label number, and a search tries the
//! account's labels and reaches the rows of a matching one through the key index
//! (`store::labels`). In the index they took nearly half of SQLite's trigram postings (1M
//! rows: 58.1 → 32.7 MB for the FTS5 table alone) and part of every PostgreSQL `doc`.
//!
//! Both backends empty the index and forget its watermark, as `m20261207_000009` did: the
//! background indexer copies every row again, and until it has, searches walk the rows not
//! indexed yet (complete, only slower).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::run_all;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// SQLite: the index and its removal queue over `columns` (with their types, for the queue).
fn sqlite_rebuild(columns: &[(&str, &str)]) -> Vec<String> {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    let typed: Vec<String> = columns
        .iter()
        .map(|(name, kind)| format!("{name} {kind}"))
        .collect();
    vec![
        "DROP TABLE log_search".to_owned(),
        format!(
            "CREATE VIRTUAL TABLE log_search USING fts5({}, tokenize = 'trigram', \
             content = '', detail = none, columnsize = 0)",
            names.join(", ")
        ),
        "INSERT INTO log_search (log_search, rank) VALUES ('automerge', 0)".to_owned(),
        "DROP TABLE log_search_removals".to_owned(),
        format!(
            "CREATE TABLE log_search_removals (seq INTEGER PRIMARY KEY, id INTEGER NOT NULL, {})",
            typed.join(", ")
        ),
        "DELETE FROM settings WHERE name = 'search_indexed_through'".to_owned(),
    ]
}

/// The columns the index keeps after this migration.
const WITHOUT_LABELS: [(&str, &str); 3] = [
    ("endpoint", "TEXT NOT NULL"),
    ("query_params", "TEXT NULL"),
    ("error_code", "TEXT NULL"),
];

/// Before it.
const WITH_LABELS: [(&str, &str); 5] = [
    ("api_key_name", "TEXT NOT NULL"),
    ("api_key_prefix", "TEXT NOT NULL"),
    ("endpoint", "TEXT NOT NULL"),
    ("query_params", "TEXT NULL"),
    ("error_code", "TEXT NULL"),
];

/// PostgreSQL: `log_search` emptied, for the indexer to fill with the new `doc`.
fn postgres_reset() -> Vec<String> {
    [
        "TRUNCATE log_search",
        "DELETE FROM settings WHERE name = 'search_indexed_through'",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Sqlite => sqlite_rebuild(&WITHOUT_LABELS),
            _ => postgres_reset(),
        };
        run_all(manager, &statements).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Sqlite => sqlite_rebuild(&WITH_LABELS),
            _ => postgres_reset(),
        };
        run_all(manager, &statements).await
    }
}

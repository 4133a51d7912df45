//! SQLite: the FTS5 search index holds each searched column as a column of its own, and no
//! longer stores each row's column sizes.
//!
//! It indexed the columns joined by U+0001 into one `doc`, and the trigram tokenizer, which
//! knows no separators, also indexed the ~12 trigrams of each row that span two columns and
//! can never match (the search re-checks each column on its own). `columnsize=0` drops
//! `log_search_docsize`, one row per indexed row that only ranking functions read, and
//! reqlog never ranks. 200k of the benchmark's rows, one segment each: 78.5 B/row as one
//! `doc`, 68.5 without the sizes, 58.3 as columns without them; inserts 148k → 172k rows/s.
//!
//! The new table starts empty and the indexer's watermark goes back to 0, so the indexer
//! copies every row again, a chunk at a time; until it has, the rows above the watermark are
//! found by id and walked, as new rows always are, so every search stays complete. The queue
//! of postings to drop (`log_search_removals`) belonged to the old table and goes with it.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::in_one_transaction;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// Rebuilds both tables in `shape` and sends the indexer back to the first row.
async fn rebuild(manager: &SchemaManager<'_>, shape: [&str; 2]) -> Result<(), DbErr> {
    in_one_transaction(
        manager,
        &[
            "DROP TABLE log_search",
            shape[0],
            // As in the migration that created the index: the indexer merges, not each write.
            "INSERT INTO log_search (log_search, rank) VALUES ('automerge', 0)",
            "DROP TABLE log_search_removals",
            shape[1],
            "DELETE FROM settings WHERE name = 'search_indexed_through'",
        ],
    )
    .await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        rebuild(
            manager,
            [
                "CREATE VIRTUAL TABLE log_search USING fts5(
                    api_key_name, api_key_prefix, endpoint, query_params, error_code,
                    tokenize = 'trigram',
                    content = '',
                    detail = none,
                    columnsize = 0
                )",
                "CREATE TABLE log_search_removals (
                    seq INTEGER PRIMARY KEY,
                    id INTEGER NOT NULL,
                    api_key_name TEXT NOT NULL,
                    api_key_prefix TEXT NOT NULL,
                    endpoint TEXT NOT NULL,
                    query_params TEXT NULL,
                    error_code TEXT NULL
                )",
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        rebuild(
            manager,
            [
                "CREATE VIRTUAL TABLE log_search USING fts5(
                    doc,
                    tokenize = 'trigram',
                    content = '',
                    detail = none
                )",
                "CREATE TABLE log_search_removals (
                    seq INTEGER PRIMARY KEY,
                    id INTEGER NOT NULL,
                    doc TEXT NOT NULL
                )",
            ],
        )
        .await
    }
}

//! SQLite: rows deleted from `log_entries` wait in `log_search_removals` until the search
//! indexer drops their postings from the FTS5 index, so that a purge or sweep step does not
//! pay FTS5's per-row 'delete' while every ingest caller waits for it. A stale posting is
//! harmless meanwhile: every candidate the index names is re-checked against `log_entries`,
//! and ids are never reused.
//!
//! `seq` is the queue order (appended at the right edge, taken from the left); `doc` is the
//! row's indexed text, which FTS5's 'delete' command of a contentless table needs.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE log_search_removals (
                    seq INTEGER PRIMARY KEY,
                    id INTEGER NOT NULL,
                    doc TEXT NOT NULL
                )",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        let connection = manager.get_connection();
        // The postings of the rows still queued go now, so the index stays exact.
        connection
            .execute_unprepared(
                "INSERT INTO log_search (log_search, rowid, doc) \
                 SELECT 'delete', id, doc FROM log_search_removals ORDER BY seq",
            )
            .await?;
        connection
            .execute_unprepared("DROP TABLE log_search_removals")
            .await?;
        Ok(())
    }
}

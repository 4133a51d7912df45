//! PostgreSQL's search index: a trigram GIN index over a copy of each row's free-text
//! columns, kept in its own table and filled off the ingest path (see the service's
//! `store::search`). SQLite gets its own (FTS5) in migration 000004.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let connection = manager.get_connection();
        // pg_trgm is a trusted extension (the database owner may create it); where it is
        // not installed the table still exists, the index does not, and search walks rows.
        connection
            .execute_unprepared(
                "DO $$ BEGIN
                    CREATE EXTENSION IF NOT EXISTS pg_trgm;
                EXCEPTION WHEN OTHERS THEN
                    RAISE NOTICE 'pg_trgm is not available (%): search will walk rows', SQLERRM;
                END $$",
            )
            .await?;
        // btree_gin (trusted too, in the same contrib package) lets the index hold the
        // account beside the trigrams: a rare term's lookup then reads the account's matching
        // rows only, not every account's (1M rows: 1,988 of 10,007 candidates, whose heap
        // pages the recheck read one by one: 54–106 ms against a 50 ms goal).
        connection
            .execute_unprepared(
                "DO $$ BEGIN
                    CREATE EXTENSION IF NOT EXISTS btree_gin;
                EXCEPTION WHEN OTHERS THEN
                    RAISE NOTICE 'btree_gin is not available (%): search looks terms up in every account', SQLERRM;
                END $$",
            )
            .await?;
        connection
            .execute_unprepared(
                "CREATE TABLE log_search (
                    id BIGINT NOT NULL PRIMARY KEY,
                    account_no INTEGER NOT NULL,
                    doc TEXT COLLATE \"C\" NOT NULL
                )",
            )
            .await?;
        connection
            .execute_unprepared(
                "DO $$ BEGIN
                    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
                        RETURN;
                    END IF;
                    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'btree_gin') THEN
                        CREATE INDEX idx_log_search_doc ON log_search
                            USING gin (account_no, doc gin_trgm_ops);
                    ELSE
                        CREATE INDEX idx_log_search_doc ON log_search USING gin (doc gin_trgm_ops);
                    END IF;
                END $$",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE log_search")
            .await?;
        Ok(())
    }
}

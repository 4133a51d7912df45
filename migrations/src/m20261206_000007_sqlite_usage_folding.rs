//! SQLite: the usage counters are folded from the rows by the search indexer instead of
//! being added by each ingest group (see the service's `store::usage`). Every row that exists
//! now was counted when it was ingested, so the counters hold every id up to the sequence's.

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
                "INSERT INTO settings (name, value) \
                 SELECT 'usage_folded_through', CAST(last_id AS TEXT) FROM log_id_sequence \
                 WHERE name = 'log_entries'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        let connection = manager.get_connection();
        // Ingest groups count their rows again after this: count those not counted yet.
        for statement in [
            "INSERT INTO usage_stats (account_no, bucket_start, api_key_id, endpoint, method, \
             status_code, request_count, error_count, total_duration_ms, max_duration_ms) \
             SELECT account_no, (ts / 3600000000 - (ts % 3600000000 < 0)) * 3600, api_key_id, \
             endpoint, method, status_code, COUNT(*), SUM(status_code >= 400), \
             SUM(duration_ms), MAX(duration_ms) FROM log_entries \
             WHERE id > COALESCE((SELECT CAST(value AS INTEGER) FROM settings \
             WHERE name = 'usage_folded_through'), 0) \
             GROUP BY 1, 2, 3, 4, 5, 6 \
             ON CONFLICT (account_no, bucket_start, api_key_id, endpoint, method, status_code) \
             DO UPDATE SET request_count = request_count + excluded.request_count, \
             error_count = error_count + excluded.error_count, \
             total_duration_ms = total_duration_ms + excluded.total_duration_ms, \
             max_duration_ms = MAX(max_duration_ms, excluded.max_duration_ms)",
            "DELETE FROM settings WHERE name = 'usage_folded_through'",
        ] {
            connection.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}

//! PostgreSQL: `log_search` holds each row's `ts` beside its text, so that a search looks
//! its candidates up newest first (in the page's order) and reads only the page's rows from
//! `log_entries`, not every candidate's (see the service's `store::logs`).

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
        for statement in [
            "ALTER TABLE log_search ADD COLUMN ts BIGINT",
            // Rows indexed before this migration take their row's time; a row deleted
            // meanwhile took its index entry with it (same transaction).
            "UPDATE log_search SET ts = log_entries.ts FROM log_entries \
             WHERE log_entries.id = log_search.id",
            "DELETE FROM log_search WHERE ts IS NULL",
            "ALTER TABLE log_search ALTER COLUMN ts SET NOT NULL",
        ] {
            connection.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE log_search DROP COLUMN ts")
            .await?;
        Ok(())
    }
}

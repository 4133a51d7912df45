//! SQLite: the request ids of the newest rows wait in memory on the writer's connection
//! until the search indexer copies them into `request_ids` (see the service's
//! `store::claims`). Every row that exists now had its request id claimed when it was
//! ingested, so `request_ids` holds the claims of every id up to the sequence's.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseBackend, Statement};
use sha2::{Digest, Sha256};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

const MICROS_PER_DAY: i64 = 86_400_000_000;

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
                 SELECT 'request_ids_claimed_through', CAST(last_id AS TEXT) \
                 FROM log_id_sequence WHERE name = 'log_entries'",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        // Ingest groups claim their request ids themselves again: claim those of the rows
        // whose claims were still pending when the last server stopped. The key is the
        // first 16 bytes of the id's SHA-256, which SQLite cannot compute.
        let connection = manager.get_connection();
        let rows = connection
            .query_all(Statement::from_string(
                DatabaseBackend::Sqlite,
                "SELECT id, account_no, ts, request_id FROM log_entries \
                 WHERE request_id IS NOT NULL AND id > COALESCE((SELECT CAST(value AS INTEGER) \
                 FROM settings WHERE name = 'request_ids_claimed_through'), 0)",
            ))
            .await?;
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let account_no: i64 = row.try_get("", "account_no")?;
            let ts: i64 = row.try_get("", "ts")?;
            let request_id: String = row.try_get("", "request_id")?;
            let key = Sha256::digest(request_id.as_bytes())[..16].to_vec();
            connection
                .execute(Statement::from_sql_and_values(
                    DatabaseBackend::Sqlite,
                    "INSERT INTO request_ids (day, account_no, request_key, log_id) \
                     VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    [
                        ts.div_euclid(MICROS_PER_DAY).into(),
                        account_no.into(),
                        key.into(),
                        id.into(),
                    ],
                ))
                .await?;
        }
        connection
            .execute_unprepared("DELETE FROM settings WHERE name = 'request_ids_claimed_through'")
            .await?;
        Ok(())
    }
}

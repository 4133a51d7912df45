//! SQLite: a request id that is lower-case hex of even length is stored as its bytes.
//!
//! Gateways commonly send such ids (nginx's `$request_id` is 32 hex digits, a W3C trace id
//! too): as bytes they take half the space in each row. `log_entries.request_id` holds the
//! text or, for such an id, its bytes (SQLite keeps each value's own type); reads spell
//! bytes as lower-case hex again, which is exactly the text that came. Rows stored before
//! stay text, which reads the same, so `up` changes no schema and no row: it records that
//! the column may now hold bytes, so that a build from before cannot open the database
//! (it would refuse a migration it does not know) and read them as text.
//!
//! A virtual generated column that spelled the text was tried and not kept: SQLite computes
//! generated columns on every insert, and a 34-row insert took 1.4–1.7× as long.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

use crate::sqlite::in_one_transaction;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Sqlite {
            return Ok(());
        }
        in_one_transaction(
            manager,
            &[
                "UPDATE log_entries SET request_id = lower(hex(request_id)) \
               WHERE typeof(request_id) = 'blob'",
            ],
        )
        .await
    }
}

//! reqlog's schema, for SQLite and PostgreSQL.
//!
//! The migrations declare their own identifiers and never import the service's entities, so a
//! later entity change cannot rewrite history that has shipped.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_schema;
mod m20261122_000002_activity;
mod m20261122_000003_search_index;
mod m20261124_000004_sqlite_search_index;
mod m20261130_000005_sqlite_search_removals;
mod m20261206_000006_search_timestamps;
mod m20261206_000007_sqlite_usage_folding;
mod m20261206_000008_sqlite_pending_claims;
mod m20261207_000009_sqlite_search_columns;
mod m20261207_000010_sqlite_packed_request_ids;
mod m20261207_000011_usage_dictionary_numbers;
mod m20261207_000012_row_api_key_numbers;
mod m20261207_000013_row_api_key_labels;
mod m20261207_000014_search_without_labels;
mod m20261207_000015_row_endpoint_numbers;
mod sqlite;

/// Every reqlog migration, in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_schema::Migration),
            Box::new(m20261122_000002_activity::Migration),
            Box::new(m20261122_000003_search_index::Migration),
            Box::new(m20261124_000004_sqlite_search_index::Migration),
            Box::new(m20261130_000005_sqlite_search_removals::Migration),
            Box::new(m20261206_000006_search_timestamps::Migration),
            Box::new(m20261206_000007_sqlite_usage_folding::Migration),
            Box::new(m20261206_000008_sqlite_pending_claims::Migration),
            Box::new(m20261207_000009_sqlite_search_columns::Migration),
            Box::new(m20261207_000010_sqlite_packed_request_ids::Migration),
            Box::new(m20261207_000011_usage_dictionary_numbers::Migration),
            Box::new(m20261207_000012_row_api_key_numbers::Migration),
            Box::new(m20261207_000013_row_api_key_labels::Migration),
            Box::new(m20261207_000014_search_without_labels::Migration),
            Box::new(m20261207_000015_row_endpoint_numbers::Migration),
        ]
    }
}

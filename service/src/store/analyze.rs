//! PostgreSQL only: keeps the planner's table statistics from going stale.
//!
//! Autovacuum normally does this. Where it is off (as on the machine the benchmarks ran
//! on), a loaded table is never analyzed: `reltuples` stayed -1 after 1M rows. Pages and
//! exports in time order avoid the planner's sorts whatever the statistics, but sorts by
//! other columns and searches take its estimates: 1M rows, biggest account, other sort
//! fields 175-190 ms a page without statistics and 81-88 ms with them, a rare term 28.7 and
//! 10.6 ms. reqlog therefore analyzes its own tables once many rows changed since their
//! last analysis. Its threshold is twice autovacuum's default share of the table, so where
//! autovacuum runs it gets there first.

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::StoreError;

/// How often the server looks for stale statistics: a query on `pg_stat_user_tables`.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Rows changed since the last analysis, beyond a fifth of the table, that call for a new
/// one (autovacuum's defaults: 50 rows and a tenth).
const ANALYZE_MIN_CHANGES: i64 = 1_000;

/// The tables of the current schema with at least [`ANALYZE_MIN_CHANGES`] changed rows and
/// changes beyond a fifth of their rows since they were last analyzed, by anyone, that this
/// role may analyze: as the owner's member (superusers are), or as the database's owner.
/// PostgreSQL skips any other table with a warning, not an error: a deployment whose tables
/// belong to a migration role would otherwise "analyze" the same tables every minute.
const STALE_TABLES_SQL: &str = r#"
    SELECT s.relname::text AS name FROM pg_stat_user_tables s
    JOIN pg_class c ON c.oid = s.relid
    WHERE s.schemaname = current_schema()
      AND s.n_mod_since_analyze >= $1
      AND s.n_mod_since_analyze > s.n_live_tup / 5
      AND (pg_has_role(c.relowner, 'USAGE')
           OR pg_has_role((SELECT datdba FROM pg_database
                           WHERE datname = current_database()), 'USAGE'))
    ORDER BY s.relname"#;

/// The tables [`analyze_stale_tables`] would analyze now. Empty on SQLite.
pub async fn stale_tables(db: &impl ConnectionTrait) -> Result<Vec<String>, StoreError> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(Vec::new());
    }
    Ok(db
        .query_all(Statement::from_sql_and_values(
            DbBackend::Postgres,
            STALE_TABLES_SQL,
            [ANALYZE_MIN_CHANGES.into()],
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "name"))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Analyzes every table whose statistics are stale; returns their names. A no-op on SQLite,
/// whose queries are written for a planner without statistics.
pub async fn analyze_stale_tables(db: &impl ConnectionTrait) -> Result<Vec<String>, StoreError> {
    let stale = stale_tables(db).await?;
    for table in &stale {
        // The name comes from the catalogue; quoted as an identifier all the same.
        let quoted = format!("\"{}\"", table.replace('"', "\"\""));
        db.execute_unprepared(&format!("ANALYZE {quoted}")).await?;
    }
    Ok(stale)
}

/// Checks every `interval` until the task is dropped (PostgreSQL; returns at once on SQLite).
pub async fn analyze_forever(db: DatabaseConnection, interval: Duration) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match analyze_stale_tables(&db).await {
            Ok(tables) if tables.is_empty() => {}
            Ok(tables) => tracing::info!(?tables, "analyzed tables with stale statistics"),
            Err(error) => tracing::warn!(%error, "analyzing tables failed; retrying"),
        }
    }
}

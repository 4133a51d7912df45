//! SQLite connections reqlog opens itself with rusqlite, beside sqlx's pools: the writer's
//! ([`HeldSqlite`]) and each export's (`store::export`).
//!
//! sqlx runs every statement of an SQLite connection on a worker thread and waits for it
//! through a channel, and pings a pooled connection as it returns to the pool. A unary
//! ingest group (34 records, seven statements, BEGIN and COMMIT) spent ~0.3 ms of its 2.6
//! ms waiting for that ping before its `BEGIN`, and a hop to the worker and back for each
//! statement (BENCHMARKS.md, "Unary ingest: where a group's transaction goes"). The writer
//! therefore holds a connection of its own and runs a whole group on it in one call; its
//! purge and sweep steps and the search indexer's chunks run there too
//! (`writer::Writer::write`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::OpenFlags;
use rusqlite::types::ValueRef;
use sea_orm::sea_query::Value;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, ProxyExecResult, ProxyRow,
    QueryResult, RuntimeErr, Statement,
};

use super::StoreError;
use super::seen::SeenIds;

/// How long the writer's connection waits for SQLite's write lock (as sqlx's pools do).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Statements the writer's connection keeps prepared: a group runs about ten, and the
/// multi-row INSERTs differ by their row count.
const STATEMENT_CACHE: usize = 128;

/// The file of an SQLite database as SQLite itself names it (absolute), or `None` for
/// PostgreSQL and for an SQLite database in memory (SQLite names no file for it).
pub async fn file(db: &DatabaseConnection) -> Result<Option<PathBuf>, StoreError> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(None);
    }
    let file = db
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT file FROM pragma_database_list WHERE name = 'main'",
        ))
        .await?
        .map(|row| row.try_get_by_index::<String>(0))
        .transpose()?;
    Ok(file.filter(|file| !file.is_empty()).map(PathBuf::from))
}

/// A bound value of a statement, as rusqlite binds it. reqlog binds integers, text and
/// bytes (IP hashes, request keys); anything else is refused, not guessed.
pub fn bind_value(value: Value) -> Result<rusqlite::types::Value, DbErr> {
    use rusqlite::types::Value as Sql;
    let integer = |value: Option<i64>| value.map_or(Sql::Null, Sql::Integer);
    Ok(match value {
        Value::Bool(value) => integer(value.map(i64::from)),
        Value::TinyInt(value) => integer(value.map(i64::from)),
        Value::SmallInt(value) => integer(value.map(i64::from)),
        Value::Int(value) => integer(value.map(i64::from)),
        Value::BigInt(value) => integer(value),
        Value::TinyUnsigned(value) => integer(value.map(i64::from)),
        Value::SmallUnsigned(value) => integer(value.map(i64::from)),
        Value::Unsigned(value) => integer(value.map(i64::from)),
        Value::BigUnsigned(value) => {
            integer(value.map(|value| i64::try_from(value).unwrap_or(i64::MAX)))
        }
        Value::String(value) => value.map_or(Sql::Null, |value| Sql::Text(*value)),
        Value::Bytes(value) => value.map_or(Sql::Null, |value| Sql::Blob(*value)),
        // Not the value itself in the message: it may be a searched secret.
        _ => {
            return Err(DbErr::Custom(
                "a bound value of a type reqlog does not bind to SQLite".into(),
            ));
        }
    })
}

/// An SQLite database file's connection that the writer holds for its whole life (see the
/// module comment), configured as the writer's sqlx pool is: WAL, `synchronous=FULL` (a
/// commit returns after its fsync), no automatic checkpoints (`store::checkpoint_forever`
/// does them), a 64 MiB page cache, the pending request-id claims in memory
/// (`store::claims`) and a filter of the request ids the file holds (`store::seen`).
///
/// Its statements run on the calling thread: the writer calls it from a thread of its own.
#[derive(Debug)]
pub struct HeldSqlite {
    connection: Mutex<rusqlite::Connection>,
    /// The request ids the file holds, as a filter (`store::seen`).
    seen: SeenIds,
}

impl HeldSqlite {
    /// Opens `file`, which must exist and be migrated.
    pub async fn open(file: PathBuf) -> Result<Self, StoreError> {
        let opened = tokio::task::spawn_blocking(move || Self::open_now(&file))
            .await
            .map_err(|error| {
                StoreError::Database(DbErr::Custom(format!(
                    "opening the writer's SQLite connection failed: {error}"
                )))
            })?;
        Ok(opened?)
    }

    fn open_now(file: &Path) -> Result<Self, DbErr> {
        let connection = rusqlite::Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| exec_error(&error))?;
        connection
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|error| exec_error(&error))?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA wal_autocheckpoint = 0; PRAGMA cache_size = -65536; \
                 PRAGMA temp_store = memory; PRAGMA foreign_keys = ON;",
            )
            .map_err(|error| exec_error(&error))?;
        connection
            .execute_batch(super::claims::CREATE_PENDING)
            .map_err(|error| exec_error(&error))?;
        Ok(Self {
            connection: Mutex::new(connection),
            seen: SeenIds::new(file.to_path_buf()),
        })
    }

    /// Begins a transaction that takes the write lock at once (`BEGIN IMMEDIATE`), waiting
    /// up to the busy timeout for another writer's: see `store::begin_write` for why a
    /// deferred one must not be used to write.
    pub fn begin(self: &Arc<Self>) -> Result<HeldTxn, StoreError> {
        self.with(|connection| {
            // A transaction nobody ended (its `HeldTxn` leaked) would make every later BEGIN
            // fail; what it wrote was never acknowledged, so it goes.
            if !connection.is_autocommit() {
                connection.execute_batch("ROLLBACK")?;
            }
            connection.execute_batch("BEGIN IMMEDIATE")
        })
        .map_err(|error| StoreError::from(exec_error(&error)))?;
        Ok(HeldTxn {
            held: Arc::clone(self),
            open: true,
        })
    }

    fn with<T>(
        &self,
        work: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        // A panic while locked cannot leave the connection half-used: SQLite's own state
        // is consistent after every call, and a transaction left open is rolled back by
        // its `HeldTxn`'s drop or, failing that, by the next `begin`.
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        work(&connection)
    }

    fn execute(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        let values = bound(statement.values)?;
        self.with(|connection| {
            let changed = connection
                .prepare_cached(&statement.sql)?
                .execute(rusqlite::params_from_iter(values))?;
            Ok(ProxyExecResult::new(
                u64::try_from(connection.last_insert_rowid()).unwrap_or(0),
                changed as u64,
            ))
        })
        .map(ExecResult::from)
        .map_err(|error| exec_error(&error))
    }

    fn query(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        let values = bound(statement.values)?;
        self.with(|connection| {
            let mut prepared = connection.prepare_cached(&statement.sql)?;
            let names: Vec<String> = prepared
                .column_names()
                .into_iter()
                .map(str::to_owned)
                .collect();
            let mut rows = prepared.query(rusqlite::params_from_iter(values))?;
            let mut results = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = BTreeMap::new();
                for (index, name) in names.iter().enumerate() {
                    values.insert(name.clone(), read_value(row.get_ref(index)?));
                }
                results.push(QueryResult::from(ProxyRow::new(values)));
            }
            Ok(results)
        })
        .map_err(|error| query_error(&error))
    }
}

/// A transaction on the writer's connection. Dropped without [`HeldTxn::commit`], it rolls
/// back.
#[derive(Debug)]
pub struct HeldTxn {
    held: Arc<HeldSqlite>,
    open: bool,
}

impl HeldTxn {
    /// The filter of the request ids the connection's file holds.
    pub fn seen(&self) -> &SeenIds {
        &self.held.seen
    }

    /// Commits; it returns after the fsync (`synchronous=FULL`).
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.open = false;
        let committed = self.held.with(|connection| {
            let committed = connection.execute_batch("COMMIT");
            // A COMMIT that failed may leave the transaction open (SQLITE_BUSY) or end it
            // (an I/O error rolls back): either way nothing of it stays.
            if committed.is_err() && !connection.is_autocommit() {
                let _ = connection.execute_batch("ROLLBACK");
            }
            committed
        });
        committed.map_err(|error| StoreError::from(exec_error(&error)))
    }
}

impl Drop for HeldTxn {
    fn drop(&mut self) {
        if self.open {
            self.held
                .with(|connection| {
                    if !connection.is_autocommit() {
                        let _ = connection.execute_batch("ROLLBACK");
                    }
                    Ok(())
                })
                .unwrap_or(());
        }
    }
}

/// The statements run at once on the calling thread: each future is ready when first
/// polled.
#[async_trait::async_trait]
impl ConnectionTrait for HeldTxn {
    fn get_database_backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.held.execute(stmt)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.held
            .with(|connection| {
                connection.execute_batch(sql)?;
                Ok(ProxyExecResult::new(
                    u64::try_from(connection.last_insert_rowid()).unwrap_or(0),
                    connection.changes(),
                ))
            })
            .map(ExecResult::from)
            .map_err(|error| exec_error(&error))
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        Ok(self.held.query(stmt)?.into_iter().next())
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.held.query(stmt)
    }
}

fn bound(values: Option<sea_orm::sea_query::Values>) -> Result<Vec<rusqlite::types::Value>, DbErr> {
    values
        .map(|values| values.0)
        .unwrap_or_default()
        .into_iter()
        .map(bind_value)
        .collect()
}

/// A column's value as SeaORM reads it back: integers as `BigInt` (read them as `i64`),
/// and NULL as a missing `BigInt`, since SQLite does not say which type is missing (the
/// only nullable values the writer's statements read are integers).
fn read_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::BigInt(None),
        ValueRef::Integer(value) => Value::BigInt(Some(value)),
        ValueRef::Real(value) => Value::Double(Some(value)),
        ValueRef::Text(text) => {
            Value::String(Some(Box::new(String::from_utf8_lossy(text).into_owned())))
        }
        ValueRef::Blob(bytes) => Value::Bytes(Some(Box::new(bytes.to_vec()))),
    }
}

/// A multi-row write that a constraint could abort halfway first copies every page it
/// changes into a statement journal, to undo just that statement. reqlog's multi-row
/// INSERTs on SQLite run in write transactions that any error rolls back whole (a group,
/// an indexer chunk, a delete step), which never need that, so they say `OR FAIL`: it stops
/// at the failing row and keeps no journal (an `ON CONFLICT` clause still decides
/// uniqueness conflicts). On a group's INSERTs batch ingest gained 3–15% and unary ingest
/// −1% to +16% (BENCHMARKS.md); the journal's page copies had been ~3% of the server's
/// samples under unary load. An upsert's `DO UPDATE` on a `WITHOUT ROWID` table keeps the
/// journal whatever the INSERT says (SQLite codes a check there that may abort), so the
/// usage fold is left as it is. Other statements and PostgreSQL's are returned unchanged.
pub fn without_statement_journal(mut statement: Statement) -> Statement {
    if statement.db_backend == DbBackend::Sqlite && statement.sql.starts_with("INSERT INTO ") {
        statement
            .sql
            .replace_range(.."INSERT".len(), "INSERT OR FAIL");
    }
    statement
}

/// rusqlite's errors name SQLite's message (and, for a statement that does not prepare,
/// its SQL), never a bound value.
fn exec_error(error: &rusqlite::Error) -> DbErr {
    DbErr::Exec(RuntimeErr::Internal(format!("sqlite: {error}")))
}

fn query_error(error: &rusqlite::Error) -> DbErr {
    DbErr::Query(RuntimeErr::Internal(format!("sqlite: {error}")))
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    use super::*;

    async fn held() -> (tempfile::TempDir, DatabaseConnection, Arc<HeldSqlite>) {
        let (dir, db) = crate::store::test_database().await;
        let path = file(&db).await.expect("file").expect("a file");
        let held = Arc::new(HeldSqlite::open(path).await.expect("open"));
        (dir, db, held)
    }

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, sql, values)
    }

    #[test]
    fn sqlite_inserts_fail_without_a_statement_journal_and_others_are_left_alone() {
        let sql = |backend, sql: &str| {
            without_statement_journal(Statement::from_string(backend, sql.to_owned())).sql
        };
        assert_eq!(
            sql(
                DbBackend::Sqlite,
                "INSERT INTO \"request_ids\" (\"day\") VALUES (1) ON CONFLICT (\"day\") DO NOTHING"
            ),
            "INSERT OR FAIL INTO \"request_ids\" (\"day\") VALUES (1) ON CONFLICT (\"day\") DO NOTHING"
        );
        for (backend, unchanged) in [
            (
                DbBackend::Postgres,
                "INSERT INTO \"log_entries\" (\"id\") VALUES (1)",
            ),
            (DbBackend::Sqlite, "INSERT OR IGNORE INTO t (a) VALUES (1)"),
            (DbBackend::Sqlite, "UPDATE t SET a = 1"),
        ] {
            assert_eq!(sql(backend, unchanged), unchanged);
        }
    }

    #[tokio::test]
    async fn a_committed_transaction_is_seen_by_the_pool_and_reads_back_typed() {
        let (_dir, db, held) = held().await;
        let txn = held.begin().expect("begin");
        let added = txn
            .execute(statement(
                "INSERT INTO user_agents (value) VALUES (?), (?)",
                vec!["curl/8".into(), "ua".into()],
            ))
            .await
            .expect("insert");
        assert_eq!(added.rows_affected(), 2);
        let rows = txn
            .query_all(statement(
                "SELECT id, value, unhex('ab') AS bytes FROM user_agents WHERE value = ?",
                vec!["curl/8".into()],
            ))
            .await
            .expect("select");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].try_get::<String>("", "value").expect("text"),
            "curl/8"
        );
        assert!(rows[0].try_get::<i64>("", "id").expect("an integer") > 0);
        assert_eq!(
            rows[0].try_get::<Vec<u8>>("", "bytes").expect("bytes"),
            vec![0xab]
        );
        // Not visible to others before the commit, visible after.
        assert_eq!(crate::store::test_count(&db, "user_agents").await, 0);
        txn.commit().expect("commit");
        assert_eq!(crate::store::test_count(&db, "user_agents").await, 2);
    }

    #[tokio::test]
    async fn a_transaction_dropped_or_failed_leaves_nothing() {
        let (_dir, db, held) = held().await;
        {
            let txn = held.begin().expect("begin");
            txn.execute(statement(
                "INSERT INTO user_agents (value) VALUES (?)",
                vec!["dropped".into()],
            ))
            .await
            .expect("insert");
        }
        let txn = held.begin().expect("the next transaction begins");
        let error = txn
            .execute(statement(
                "INSERT INTO no_such_table VALUES (?)",
                vec![1.into()],
            ))
            .await
            .expect_err("no such table");
        assert!(error.to_string().contains("no_such_table"), "{error}");
        drop(txn);
        assert_eq!(crate::store::test_count(&db, "user_agents").await, 0);
        // While it holds the write lock, the pool's writers wait; once it is released
        // they write.
        let txn = held.begin().expect("begin");
        txn.commit().expect("commit");
        db.execute_unprepared("INSERT INTO user_agents (value) VALUES ('after')")
            .await
            .expect("the lock was released");
    }

    #[tokio::test]
    async fn a_transaction_nobody_ended_is_rolled_back_by_the_next() {
        let (_dir, db, held) = held().await;
        let leaked = held.begin().expect("begin");
        leaked
            .execute(statement(
                "INSERT INTO user_agents (value) VALUES (?)",
                vec!["leaked".into()],
            ))
            .await
            .expect("insert");
        std::mem::forget(leaked);
        let txn = held.begin().expect("the next transaction begins");
        txn.commit().expect("commit");
        assert_eq!(crate::store::test_count(&db, "user_agents").await, 0);
    }

    #[test]
    fn bound_values_are_integers_text_or_bytes() {
        use rusqlite::types::Value as Sql;
        let bound = |value: Value| bind_value(value).expect("bound");
        assert_eq!(bound(Value::BigUnsigned(Some(1_001))), Sql::Integer(1_001));
        assert_eq!(bound(Value::Int(Some(-3))), Sql::Integer(-3));
        assert_eq!(bound(Value::BigInt(None)), Sql::Null);
        assert_eq!(
            bound(Value::String(Some(Box::new("x".into())))),
            Sql::Text("x".into())
        );
        assert_eq!(
            bound(Value::Bytes(Some(Box::new(vec![0xab])))),
            Sql::Blob(vec![0xab])
        );
        let refused = bind_value(Value::Double(Some(0.5))).expect_err("no floats");
        assert!(!refused.to_string().contains("0.5"), "{refused}");
    }
}

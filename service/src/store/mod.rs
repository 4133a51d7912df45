//! Storage: SeaORM entities, the single writer and the queries. The only place `DbErr` is seen.

pub mod activity;
pub mod admin;
pub mod analyze;
pub mod claims;
pub mod dictionary;
pub mod entity;
pub mod export;
pub mod labels;
pub mod logs;
pub mod search;
pub mod seen;
pub mod settings;
pub mod sqlite;
pub mod usage;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqlog_migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::Error as SqlxError;
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, RuntimeErr, Statement, TransactionTrait,
};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached now; retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the server is shutting down).
    #[error("writer stopped")]
    WriterStopped,
    /// The writer's queue stayed full for the whole bounded wait: the database is slower
    /// than the callers; they should retry after the given delay.
    #[error("the write queue is full")]
    Overloaded {
        /// How long callers should wait before retrying.
        retry_after: Duration,
    },
    /// Any other database error.
    #[error("database error")]
    Database(#[source] DbErr),
}

impl From<DbErr> for StoreError {
    fn from(error: DbErr) -> Self {
        match error {
            DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => Self::Unavailable(error.to_string()),
            DbErr::Exec(RuntimeErr::SqlxError(ref sqlx_error))
            | DbErr::Query(RuntimeErr::SqlxError(ref sqlx_error)) => {
                match connection_lost(sqlx_error) {
                    Some(reason) => Self::Unavailable(reason),
                    None => Self::Database(error),
                }
            }
            other => Self::Database(other),
        }
    }
}

/// Why a statement failed because the database went away (a retry may succeed once it is
/// back), or `None` for any other failure. The reason names the kind of failure only: no SQL
/// and no value of the statement.
fn connection_lost(error: &SqlxError) -> Option<String> {
    match error {
        // The socket broke mid-statement (server stopped, network cut), or the pool could
        // not hand out a connection in time, or was closed under the caller.
        SqlxError::Io(io) => Some(format!("connection to the database lost: {}", io.kind())),
        SqlxError::PoolTimedOut => Some("no database connection available in time".into()),
        SqlxError::PoolClosed => Some("database pool closed".into()),
        // A connection cut halfway through a message reads as garbage.
        SqlxError::Protocol(_) => Some("database connection broke mid-message".into()),
        SqlxError::Database(db_error) => db_error
            .code()
            .filter(|code| is_connection_sqlstate(code))
            .map(|code| format!("database connection ended by the server (sqlstate {code})")),
        _ => None,
    }
}

/// PostgreSQL SQLSTATEs that mean the server or the connection went away rather than the
/// statement being wrong: class 08 (connection exception), and 57P01 admin_shutdown, 57P02
/// crash_shutdown, 57P03 cannot_connect_now (starting up, shutting down, in recovery).
/// SQLite's codes are decimal numbers, so none of them matches.
fn is_connection_sqlstate(code: &str) -> bool {
    code.len() == 5 && (code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03"))
}

/// How to open the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// `sqlite://…` or `postgres://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// PostgreSQL only: the longest one statement may run before the server cancels it
    /// (`statement_timeout` on every connection); `None` leaves the server's setting.
    pub statement_timeout: Option<Duration>,
    /// SQLite only: this pool is the writer's. Its commits never checkpoint the WAL (a
    /// checkpoint inside a commit stalls every caller of that group); [`checkpoint_forever`]
    /// does that beside them and, between two groups, on the writer.
    pub sqlite_writer: bool,
}

/// Opens the pool. SQLite runs in WAL mode with `synchronous=FULL`, so every commit is
/// fsync'd before the writer answers (durable across power loss, not only process crashes).
pub async fn connect(options: &DbOptions) -> Result<DatabaseConnection, StoreError> {
    let sqlite_writer = options.sqlite_writer;
    // sqlx opens an SQLite file only if it exists unless the URL says `mode=rwc`; a path
    // without a mode is created as well, as for the default URL.
    let create_sqlite_file = !sqlite_mode_given(&options.url);
    let mut connect = ConnectOptions::new(options.url.clone());
    connect
        .max_connections(options.max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |sqlite| {
            let sqlite = if create_sqlite_file {
                sqlite.create_if_missing(true)
            } else {
                sqlite
            };
            sqlite
                .pragma(
                    "wal_autocheckpoint",
                    if sqlite_writer { "0" } else { "1000" },
                )
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(5))
                // 64 MiB of page cache per connection: the newest index pages stay hot.
                .pragma("cache_size", "-65536")
                .pragma("temp_store", "memory")
        });
    if let Some(timeout) = options
        .statement_timeout
        .filter(|timeout| !timeout.is_zero())
    {
        // Sent as a startup option, so it holds on every connection the pool opens, also
        // those opened again after the server was restarted. Milliseconds, at least 1.
        let millis = timeout.as_millis().clamp(1, i32::MAX as u128).to_string();
        connect.map_sqlx_postgres_opts(move |postgres| {
            postgres.options([("statement_timeout", millis.as_str())])
        });
    }
    Ok(Database::connect(connect).await?)
}

/// SQLite only: copies committed WAL frames into the database file every `interval`
/// (PASSIVE: it never blocks the writer or readers), so the writer's commits never have to.
/// Measured: unary ingest at 64 callers 4.6k → 8.4k req/s, p99 36 → 11 ms.
///
/// A checkpoint beside a writer that commits back to back never catches up with it, and
/// SQLite starts the WAL over only once every frame in it has been copied: the WAL grew
/// without bound (1.1 GB after 300k rows of batch ingest). So once it holds more than
/// `restart_frames` (pages), the last frames are copied as a job of the writer, between two
/// groups, when no commit can add any (see [`restart_wal`]). Runs until the task is dropped.
pub async fn checkpoint_forever(
    db: DatabaseConnection,
    writer: writer::Writer,
    interval: Duration,
    restart_frames: i64,
) {
    if db.get_database_backend() != DbBackend::Sqlite {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = async {
            if checkpoint(&db).await?.log >= restart_frames {
                restart_wal(&db, &writer).await?;
            }
            Ok::<_, StoreError>(())
        };
        if let Err(error) = result.await {
            tracing::warn!(%error, "wal checkpoint failed");
        }
    }
}

/// How often the frames committed while the restart job waits for its turn are copied.
const RESTART_WAIT_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(10);

/// Copies the WAL's last frames on the writer, so that the next commit starts the WAL over.
/// Every caller waits for that job, and it lasts as long as the frames it copies: behind a
/// sweep's steps in the writer's queue it waited up to 190 ms while thousands of frames
/// arrived, and took 22–57 ms. So until the job starts, the frames committed meanwhile are
/// copied beside the writer, and the job copies about one group's.
async fn restart_wal(db: &DatabaseConnection, writer: &writer::Writer) -> Result<(), StoreError> {
    let started = Arc::new(AtomicBool::new(false));
    let job_started = Arc::clone(&started);
    let job = writer.run(move |db| async move {
        job_started.store(true, Ordering::SeqCst);
        // A checkpoint beside may still be running: a PASSIVE one then copies nothing.
        for _ in 0..100 {
            if !checkpoint(&db).await?.busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    });
    tokio::pin!(job);
    loop {
        tokio::select! {
            finished = &mut job => return finished,
            () = tokio::time::sleep(RESTART_WAIT_CHECKPOINT_INTERVAL) => {
                if !started.load(Ordering::SeqCst) {
                    checkpoint(db).await?;
                }
            }
        }
    }
}

/// What one checkpoint found.
struct CheckpointStatus {
    /// Another checkpoint was running, so this one copied nothing.
    busy: bool,
    /// Frames in the WAL (-1 when not in WAL mode).
    log: i64,
}

/// One PASSIVE checkpoint.
async fn checkpoint(db: &DatabaseConnection) -> Result<CheckpointStatus, StoreError> {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "PRAGMA wal_checkpoint(PASSIVE)",
        ))
        .await?;
    Ok(match row {
        Some(row) => CheckpointStatus {
            busy: row.try_get::<i64>("", "busy")? != 0,
            log: row.try_get("", "log")?,
        },
        None => CheckpointStatus {
            busy: false,
            log: -1,
        },
    })
}

/// Begins a transaction that will write. On SQLite it takes the write lock with its first
/// statement: a deferred transaction that reads before it writes cannot wait for another
/// writer's lock when it upgrades (SQLite answers BUSY at once, whatever the busy timeout),
/// so it would fail while, say, an operator's transaction holds the lock; a first statement
/// that writes waits out the busy timeout instead.
pub async fn begin_write(db: &impl TransactionTrait) -> Result<DatabaseTransaction, StoreError> {
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Sqlite {
        txn.execute_unprepared(
            "UPDATE log_id_sequence SET last_id = last_id WHERE name = 'log_entries'",
        )
        .await?;
    }
    Ok(txn)
}

/// `values` as one JSON text parameter, for statements that unpack it (`json_each`,
/// `json_array_elements`) instead of binding a variable per value.
pub(crate) fn json_param<T: serde::Serialize>(values: &[T]) -> Result<String, StoreError> {
    serde_json::to_string(values)
        .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))
}

/// A migrated SQLite database in a temporary directory, for the store's unit tests; the
/// directory lives as long as the returned guard.
#[cfg(test)]
pub(crate) async fn test_database() -> (tempfile::TempDir, DatabaseConnection) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    (dir, test_database_at(url).await)
}

/// SQLite's plan for `statement`, a line per step (`EXPLAIN QUERY PLAN`'s `detail`), for the
/// store's unit tests.
#[cfg(test)]
pub(crate) async fn test_sqlite_plan(
    db: &DatabaseConnection,
    statement: sea_orm::Statement,
) -> Vec<String> {
    let explain = sea_orm::Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!("EXPLAIN QUERY PLAN {}", statement.sql),
        statement.values.map(|values| values.0).unwrap_or_default(),
    );
    db.query_all(explain)
        .await
        .expect("explain")
        .iter()
        .map(|row| row.try_get::<String>("", "detail").expect("a plan step"))
        .collect()
}

/// A migrated SQLite database at `url` behind a pool of one connection, for the store's
/// unit tests.
#[cfg(test)]
pub(crate) async fn test_database_at(url: String) -> DatabaseConnection {
    let db = connect(&DbOptions {
        url,
        max_connections: 1,
        statement_timeout: None,
        sqlite_writer: false,
    })
    .await
    .expect("connect");
    migrate(&db).await.expect("migrate");
    db
}

/// Rows in an SQLite `table`, for the store's unit tests.
#[cfg(test)]
pub(crate) async fn test_count(db: &DatabaseConnection, table: &str) -> i64 {
    let row = db
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get::<i64>("", "n").expect("an integer")
}

/// Applies every pending migration.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), StoreError> {
    Ok(Migrator::up(db, None).await?)
}

/// Whether the database answers a trivial query.
pub async fn ping(db: &DatabaseConnection) -> Result<(), StoreError> {
    db.execute_unprepared("SELECT 1").await?;
    Ok(())
}

/// The file behind an SQLite URL, if it names one: not `:memory:` nor `mode=memory` (in
/// memory), nor an empty path (a temporary file of the connection's own).
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let (path, options) = rest.split_once('?').unwrap_or((rest, ""));
    let in_memory = path.contains(":memory:")
        || options
            .split('&')
            .any(|option| option.eq_ignore_ascii_case("mode=memory"));
    (!path.is_empty() && !in_memory).then(|| PathBuf::from(path))
}

/// Whether an SQLite URL says how to open its file (`mode=ro`, `rw`, `rwc` or `memory`).
fn sqlite_mode_given(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, options)| {
        options.split('&').any(|option| {
            option
                .get(..5)
                .is_some_and(|name| name.eq_ignore_ascii_case("mode="))
        })
    })
}

/// The backend of a connection.
pub fn backend(db: &impl ConnectionTrait) -> DbBackend {
    db.get_database_backend()
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use sea_orm::ConnAcquireErr;
    use sea_orm::sqlx::error::{DatabaseError, ErrorKind};

    use super::*;

    /// A database error with a given SQLSTATE, as the PostgreSQL driver reports them.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "a message that may quote SELECT secret_value"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> ErrorKind {
            ErrorKind::Other
        }
    }

    fn exec(error: SqlxError) -> DbErr {
        DbErr::Exec(RuntimeErr::SqlxError(error))
    }

    fn query(error: SqlxError) -> DbErr {
        DbErr::Query(RuntimeErr::SqlxError(error))
    }

    fn is_unavailable(error: DbErr) -> bool {
        matches!(StoreError::from(error), StoreError::Unavailable(_))
    }

    #[test]
    fn lost_connections_are_unavailable() {
        let io = |kind| SqlxError::Io(std::io::Error::new(kind, "peer went away"));
        assert!(is_unavailable(exec(io(
            std::io::ErrorKind::ConnectionReset
        ))));
        assert!(is_unavailable(query(io(std::io::ErrorKind::BrokenPipe))));
        assert!(is_unavailable(query(io(std::io::ErrorKind::UnexpectedEof))));
        assert!(is_unavailable(exec(SqlxError::PoolTimedOut)));
        assert!(is_unavailable(query(SqlxError::PoolClosed)));
        assert!(is_unavailable(exec(SqlxError::Protocol(
            "unexpected message".into()
        ))));
        assert!(is_unavailable(DbErr::ConnectionAcquire(
            ConnAcquireErr::Timeout
        )));
        assert!(is_unavailable(DbErr::Conn(RuntimeErr::SqlxError(
            SqlxError::PoolTimedOut
        ))));
    }

    #[test]
    fn server_shutdown_sqlstates_are_unavailable() {
        for code in [
            "08000", "08003", "08006", "08001", "08P01", "57P01", "57P02", "57P03",
        ] {
            let error = SqlxError::Database(Box::new(Sqlstate(code)));
            assert!(is_unavailable(exec(error)), "{code} on execute");
            let error = SqlxError::Database(Box::new(Sqlstate(code)));
            assert!(is_unavailable(query(error)), "{code} on query");
        }
    }

    #[test]
    fn statement_errors_stay_database_errors() {
        // unique_violation, query_canceled (statement timeout), syntax error, SQLite's BUSY
        // and constraint codes, a 57 code that is not a shutdown.
        for code in [
            "23505", "57014", "42601", "5", "2067", "57P04", "0800", "080000",
        ] {
            let error = SqlxError::Database(Box::new(Sqlstate(code)));
            assert!(!is_unavailable(exec(error)), "{code}");
        }
        assert!(!is_unavailable(query(SqlxError::RowNotFound)));
        assert!(!is_unavailable(DbErr::Custom("anything".into())));
        assert!(!is_unavailable(DbErr::Exec(RuntimeErr::Internal(
            "connection reset".into()
        ))));
    }

    #[test]
    fn unavailable_reasons_carry_no_statement_text() {
        let error = SqlxError::Database(Box::new(Sqlstate("57P01")));
        let StoreError::Unavailable(reason) = StoreError::from(exec(error)) else {
            panic!("57P01 should be unavailable");
        };
        assert!(reason.contains("57P01"), "{reason}");
        assert!(!reason.contains("secret_value"), "{reason}");
    }

    #[test]
    fn sqlite_paths_come_from_urls() {
        assert_eq!(
            sqlite_path("sqlite://reqlog.db?mode=rwc"),
            Some(PathBuf::from("reqlog.db"))
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(
            sqlite_path("sqlite://logs.db?cache=shared&mode=memory"),
            None
        );
        assert_eq!(sqlite_path("sqlite://"), None);
        assert_eq!(sqlite_path("postgres://localhost/db"), None);
    }

    #[test]
    fn sqlite_urls_without_a_mode_are_told_apart() {
        assert!(sqlite_mode_given("sqlite://reqlog.db?mode=rwc"));
        assert!(sqlite_mode_given("sqlite:///tmp/x.db?cache=shared&MODE=ro"));
        assert!(!sqlite_mode_given("sqlite:///tmp/x.db"));
        assert!(!sqlite_mode_given("sqlite:///tmp/x.db?cache=shared"));
        assert!(!sqlite_mode_given("sqlite:///tmp/mode=rw.db"));
    }
}

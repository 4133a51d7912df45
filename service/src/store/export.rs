//! Reading an export: keyset pages of the ListLogs query, all inside one read-only snapshot.
//!
//! # Why the export is one consistent view
//!
//! Every page is read inside ONE read transaction opened when the export starts, and a first
//! statement runs before the handler answers, so the snapshot is fixed at that moment:
//! - SQLite (WAL mode): a read transaction keeps the WAL snapshot (its "end mark") of its
//!   first read until it ends. Commits made later by the writer are invisible to it; the
//!   writer is never blocked by it (WAL readers and the writer do not lock each other out).
//! - PostgreSQL: `REPEATABLE READ, READ ONLY`. The snapshot is taken at the transaction's
//!   first statement and used by every later one. This also covers what an id cap
//!   (`id <= max id at start`) would not: concurrent writers (several replicas) whose
//!   transactions commit out of id order.
//!
//! Within that fixed set of rows, keyset paging over the total order (field, id) visits
//! each row exactly once: no row is skipped or repeated, and rows recorded, purged or swept
//! during the export neither appear nor vanish half-way.
//!
//! # Where the snapshot lives
//!
//! - PostgreSQL: a pooled connection, held for the export's duration (old row versions are
//!   kept from VACUUM meanwhile).
//! - SQLite: a read-only connection of the export's own on the database file, opened with
//!   rusqlite and closed when the export ends. The pool's driver hands every row from its
//!   worker thread to the task through a channel and copies each value on its own; reading
//!   a page as one JSON value instead (the design before this one) left SQLite building and
//!   the task parsing and re-sorting JSON on the export's critical path. Rows stepped
//!   straight into tuples on a blocking thread export 50% more rows a second (BENCHMARKS.md,
//!   "W4: SQLite exports on a rusqlite connection of their own"), and the export takes no
//!   connection from the pool the other readers share. The WAL cannot be checkpointed past the snapshot
//!   until the export ends. An SQLite database with no file (in memory) is read like
//!   PostgreSQL, on a pooled connection.
//!
//! [`export_slots`] caps how many exports run at once either way.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::OpenFlags;
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, IsolationLevel, QueryFilter, QuerySelect, QueryTrait, Statement,
    TransactionTrait,
};

use super::StoreError;
use super::dictionary::{self, Dictionary};
use super::entity::log_entry;
use super::labels;
use super::logs::page_select;
use crate::domain::export::{ExportQuery, ExportRow};
use crate::domain::filter::{SortField, SortOrder};
use crate::domain::ip::to_hex;
use crate::domain::page_token::{Cursor, CursorValue};

/// Rows one page read brings into memory (a typical page holds ~200 KiB of text). Measured
/// when SQLite pages were JSON: fewer rows a page cost throughput (500: -25%), more gained
/// nothing measurable (4,000).
pub const EXPORT_PAGE_ROWS: u32 = 1_000;

/// SQLite page cache of an export's connection (`PRAGMA cache_size`, negative = KiB): one
/// pass over the rows gains nothing from more, and the server's memory would grow by it.
const EXPORT_CACHE_SIZE: i64 = -2048;

/// How long an export's SQLite connection waits for a lock (only WAL recovery takes one
/// that a reader must wait for), as the pool's connections do.
const EXPORT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns an export reads, in this order: the keyset needs `id`, the order's field
/// (`ts` and `duration_ms` are the numeric ones) and the nine exported columns, the key's
/// name and prefix as their label's number, the path as its number. `user_agent` is never
/// read.
type RowTuple = (
    i64,            // id
    i64,            // ts
    i64,            // duration_ms
    i32,            // api_key_label_no (`integer`, which PostgreSQL's driver reads as i32 only)
    String,         // method
    i32,            // endpoint_no (`integer`, as the label's)
    Option<String>, // query_params
    i32,            // status_code
    Option<String>, // error_code
    Vec<u8>,        // ip_hash
);

const COLUMNS: [log_entry::Column; 10] = [
    log_entry::Column::Id,
    log_entry::Column::Ts,
    log_entry::Column::DurationMs,
    log_entry::Column::ApiKeyLabelNo,
    log_entry::Column::Method,
    log_entry::Column::EndpointNo,
    log_entry::Column::QueryParams,
    log_entry::Column::StatusCode,
    log_entry::Column::ErrorCode,
    log_entry::Column::IpHash,
];

/// How many exports may run at once on `db`: half its pool (at least one). On PostgreSQL
/// each holds a pooled connection, and the other readers (ListLogs, statistics, health
/// checks) keep the rest; on SQLite each holds a connection and a WAL snapshot of its own.
pub fn export_slots(db: &DatabaseConnection) -> usize {
    let pool_size = match db {
        DatabaseConnection::SqlxSqlitePoolConnection(_) => db
            .get_sqlite_connection_pool()
            .options()
            .get_max_connections(),
        DatabaseConnection::SqlxPostgresPoolConnection(_) => db
            .get_postgres_connection_pool()
            .options()
            .get_max_connections(),
        #[allow(unreachable_patterns)]
        _ => 2,
    };
    usize::try_from(pool_size / 2).unwrap_or(1).max(1)
}

/// `application_name` of a PostgreSQL session while it serves an export.
pub const EXPORT_APPLICATION_NAME: &str = "reqlog export";

/// An export being read: its snapshot and its query.
#[derive(Debug)]
pub struct ExportReader {
    snapshot: Snapshot,
    query: ExportQuery,
    /// The account's number; none for an account that never sent a record (no rows).
    account_no: Option<i64>,
    /// The key labels and paths read so far, by number.
    texts: Mutex<Texts>,
}

/// A key label's name and prefix.
type Label = Arc<(String, String)>;

/// Texts an export's cache holds at most of each kind; past this it starts over. A gateway
/// that records raw paths with ids in them gives nearly every row a path of its own, which
/// would otherwise grow the cache, and the server's memory, with the export.
const EXPORT_CACHED_TEXTS: usize = 65_536;

/// The texts of numbers the rows hold: key labels and paths.
#[derive(Debug, Default)]
struct Texts {
    labels: HashMap<i64, Label>,
    paths: HashMap<i64, Arc<str>>,
}

/// The numbers of `wanted` whose texts `cache` lacks.
fn missing<T: ?Sized>(wanted: &HashSet<i64>, cache: &HashMap<i64, Arc<T>>) -> Vec<i64> {
    wanted
        .iter()
        .copied()
        .filter(|number| !cache.contains_key(number))
        .collect()
}

/// The texts of a page's `numbers`: read for the page (`found`) or cached before.
fn of_page<T: ?Sized>(
    numbers: HashSet<i64>,
    found: &HashMap<i64, Arc<T>>,
    cache: &HashMap<i64, Arc<T>>,
) -> HashMap<i64, Arc<T>> {
    numbers
        .into_iter()
        .filter_map(|number| {
            let text = found.get(&number).or(cache.get(&number))?;
            Some((number, Arc::clone(text)))
        })
        .collect()
}

/// Adds `found` to `cache`, which starts over first past [`EXPORT_CACHED_TEXTS`]. Called
/// once the page has its texts ([`of_page`]), so starting over loses none of them.
fn remember<T: ?Sized>(cache: &mut HashMap<i64, Arc<T>>, found: HashMap<i64, Arc<T>>) {
    if cache.len() + found.len() > EXPORT_CACHED_TEXTS {
        cache.clear();
    }
    cache.extend(found);
}

/// Where the export's read transaction is open (see the module comment).
#[derive(Debug)]
enum Snapshot {
    /// PostgreSQL, and SQLite without a file: a transaction on a pooled connection.
    Pooled(DatabaseTransaction),
    /// SQLite with a file: a read-only connection of the export's own, inside `BEGIN`.
    /// Locked by one page read at a time (the next page is read while the last is encoded).
    Own(Arc<Mutex<rusqlite::Connection>>),
}

impl ExportReader {
    /// Opens the snapshot the whole export reads from (see the module comment). When this
    /// returns, rows committed later will not be exported.
    pub async fn open(db: &DatabaseConnection, query: ExportQuery) -> Result<Self, StoreError> {
        let account_id = &query.query.account_id;
        let (snapshot, account_no) = match super::sqlite::file(db).await? {
            Some(file) => {
                let connection = open_own(file).await?;
                // An account keeps its number once given, so the pool may look it up: a
                // number given after the snapshot only finds rows the snapshot cannot see.
                let account_no = dictionary::account_no(db, account_id).await?;
                (Snapshot::Own(Arc::new(Mutex::new(connection))), account_no)
            }
            None => {
                let txn = begin_pooled(db, prefers_ordered_scan(&query)).await?;
                let account_no = dictionary::account_no(&txn, account_id).await?;
                (Snapshot::Pooled(txn), account_no)
            }
        };
        Ok(Self {
            snapshot,
            query,
            account_no,
            texts: Mutex::default(),
        })
    }

    /// Reads the page after `after` (the first page when `None`), in the query's order:
    /// the cursor comes from the page before ([`PageRows::next`]). Only the database's
    /// work is done here, on SQLite's blocking thread or PostgreSQL's server, so it can run
    /// while the page before is encoded.
    pub async fn read_page(&self, after: Option<&Cursor>) -> Result<ReadPage, StoreError> {
        let order = self.query.query.order;
        let Some(account_no) = self.account_no else {
            return Ok(ReadPage {
                rows: Vec::new(),
                texts: Texts::default(),
                order,
            });
        };
        let backend = match self.snapshot {
            Snapshot::Pooled(ref txn) => txn.get_database_backend(),
            Snapshot::Own(_) => DbBackend::Sqlite,
        };
        // The very SELECT of ListLogs (filter, order, keyset after the cursor, one row more
        // than a page to learn whether another follows), narrowed to an `ids` selection.
        let mut select = page_select(
            backend,
            account_no,
            &self.query.query,
            after,
            EXPORT_PAGE_ROWS,
        );
        if let Some(ids) = &self.query.ids {
            select = select.filter(log_entry::Column::Id.is_in(ids.iter().copied()));
        }
        let select = select.select_only().columns(COLUMNS);
        let rows: Vec<RowTuple> = match self.snapshot {
            Snapshot::Pooled(ref txn) => select.into_tuple().all(txn).await?,
            Snapshot::Own(ref connection) => {
                read_own(Arc::clone(connection), select.build(backend)).await?
            }
        };
        let texts = self
            .texts_of(
                rows.iter().map(|row| i64::from(row.3)).collect(),
                rows.iter().map(|row| i64::from(row.5)).collect(),
            )
            .await?;
        Ok(ReadPage { rows, texts, order })
    }

    /// The name and prefix of each label in `labels` and the text of each path in `paths`:
    /// from the export's cache, the rest read in one statement from the snapshot (numbers
    /// never change their text, so the cache holds for the whole export). An account has
    /// few labels and paths, so after its first pages an export reads none; a join in the
    /// page's SELECT had cost every row a lookup (W4 on SQLite: 17% fewer rows a second,
    /// BENCHMARKS.md).
    async fn texts_of(
        &self,
        labels: HashSet<i64>,
        paths: HashSet<i64>,
    ) -> Result<Texts, StoreError> {
        let (missing_labels, missing_paths) = {
            let cache = self.texts.lock().unwrap_or_else(PoisonError::into_inner);
            (
                missing(&labels, &cache.labels),
                missing(&paths, &cache.paths),
            )
        };
        let found = if missing_labels.is_empty() && missing_paths.is_empty() {
            Texts::default()
        } else {
            match self.snapshot {
                Snapshot::Pooled(ref txn) => {
                    let [mut names, mut prefixes, paths] = dictionary::texts_of(
                        txn,
                        [
                            (labels::NAMES, missing_labels.clone()),
                            (labels::PREFIXES, missing_labels),
                            (Dictionary::Endpoints.into(), missing_paths),
                        ],
                    )
                    .await?;
                    Texts {
                        labels: names
                            .drain()
                            .filter_map(|(number, name)| {
                                let prefix = prefixes.remove(&number)?;
                                Some((number, Arc::new((name, prefix))))
                            })
                            .collect(),
                        paths: paths
                            .into_iter()
                            .map(|(number, path)| (number, Arc::from(path)))
                            .collect(),
                    }
                }
                Snapshot::Own(ref connection) => {
                    read_own_texts(Arc::clone(connection), missing_labels, missing_paths).await?
                }
            }
        };
        let mut cache = self.texts.lock().unwrap_or_else(PoisonError::into_inner);
        let page = Texts {
            labels: of_page(labels, &found.labels, &cache.labels),
            paths: of_page(paths, &found.paths, &cache.paths),
        };
        remember(&mut cache.labels, found.labels);
        remember(&mut cache.paths, found.paths);
        Ok(page)
    }

    /// Ends the snapshot: the pooled transaction is rolled back (it only ever read), the
    /// export's own connection closed. Call it on every path, cancellation and failures
    /// included; a reader merely dropped ends its snapshot too, without reporting errors.
    pub async fn close(self) -> Result<(), StoreError> {
        match self.snapshot {
            Snapshot::Pooled(txn) => txn.rollback().await?,
            // A page read still running (its export cancelled) holds the other reference
            // and closes the connection when it ends.
            Snapshot::Own(connection) => {
                if let Some(connection) = Arc::into_inner(connection) {
                    let connection = connection
                        .into_inner()
                        .unwrap_or_else(PoisonError::into_inner);
                    connection
                        .close()
                        .map_err(|(_, error)| sqlite_error(error))?;
                }
            }
        }
        Ok(())
    }
}

/// Opens a read-only connection to `file` and its snapshot: `BEGIN` is deferred, so the
/// first read fixes it (one row of the table is the cheapest read).
async fn open_own(file: PathBuf) -> Result<rusqlite::Connection, StoreError> {
    blocking(move || {
        let connection = rusqlite::Connection::open_with_flags(
            file,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(EXPORT_BUSY_TIMEOUT)?;
        connection.execute_batch(&format!("PRAGMA cache_size = {EXPORT_CACHE_SIZE}; BEGIN"))?;
        connection.query_row(
            "SELECT count(*) FROM (SELECT id FROM log_entries LIMIT 1)",
            [],
            |_| Ok(()),
        )?;
        Ok(connection)
    })
    .await
}

/// PostgreSQL (and SQLite in memory): a transaction on a pooled connection whose first
/// statement has taken the snapshot.
async fn begin_pooled(
    db: &DatabaseConnection,
    ordered_scan: bool,
) -> Result<DatabaseTransaction, StoreError> {
    let txn = match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db
                .begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await?;
            // Names the session in pg_stat_activity while the export holds its snapshot,
            // so an operator (or a test) can tell a long export from ingest or indexing.
            txn.execute_unprepared(&format!(
                "SET LOCAL application_name = '{EXPORT_APPLICATION_NAME}'"
            ))
            .await?;
            if ordered_scan {
                txn.execute_unprepared("SET LOCAL enable_sort = off")
                    .await?;
            }
            txn
        }
        // SQLite has neither setting (sea-orm would only warn): a deferred BEGIN's first
        // read fixes the snapshot.
        _ => db.begin().await?,
    };
    // The first statement takes the snapshot on both backends (a bare BEGIN does not).
    log_entry::Entity::find()
        .select_only()
        .column(log_entry::Column::Id)
        .limit(1)
        .into_tuple::<i64>()
        .one(&txn)
        .await?;
    Ok(txn)
}

/// PostgreSQL: whether every page of this export is best read by walking an index in the
/// export's order, so the planner is told to avoid sorting (see
/// [`super::logs::walks_in_time_order`]). Over a whole export such a walk reads each of the
/// account's rows at most once, where the sort the planner chose without statistics read
/// every row below the cursor, page after page (1M rows: 197 ms a page against 0.4 ms, the
/// export 4.5 s against 2.4 s). Not for a selection of ids, which the primary key finds.
fn prefers_ordered_scan(query: &ExportQuery) -> bool {
    query.ids.is_none() && super::logs::walks_in_time_order(&query.query)
}

/// One page's rows off the export's own SQLite connection, stepped on a blocking thread.
async fn read_own(
    connection: Arc<Mutex<rusqlite::Connection>>,
    page: Statement,
) -> Result<Vec<RowTuple>, StoreError> {
    let values = page
        .values
        .map(|values| values.0)
        .unwrap_or_default()
        .into_iter()
        .map(super::sqlite::bind_value)
        .collect::<Result<Vec<_>, _>>()?;
    let sql = page.sql;
    blocking(move || {
        let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
        // Two statements serve a whole export: the first page's and every later one's.
        let mut statement = connection.prepare_cached(&sql)?;
        let rows = statement.query_map(rusqlite::params_from_iter(values), |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
                row.get(9)?,
            ))
        })?;
        rows.collect()
    })
    .await
}

/// The name and prefix of each label in `labels` and the text of each path in `paths`,
/// read on the export's own SQLite connection (in its snapshot).
async fn read_own_texts(
    connection: Arc<Mutex<rusqlite::Connection>>,
    labels: Vec<i64>,
    paths: Vec<i64>,
) -> Result<Texts, StoreError> {
    blocking(move || {
        let connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = Texts::default();
        for chunk in labels.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut statement = connection.prepare(&format!(
                "SELECT id, name, prefix FROM api_key_labels WHERE id IN ({marks})"
            ))?;
            let rows = statement.query_map(rusqlite::params_from_iter(chunk), |row| {
                Ok((row.get(0)?, Arc::new((row.get(1)?, row.get(2)?))))
            })?;
            for row in rows {
                let (number, label) = row?;
                found.labels.insert(number, label);
            }
        }
        for chunk in paths.chunks(500) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let mut statement = connection.prepare(&format!(
                "SELECT id, value FROM {} WHERE id IN ({marks})",
                Dictionary::Endpoints.table_name()
            ))?;
            let rows = statement.query_map(rusqlite::params_from_iter(chunk), |row| {
                Ok((row.get(0)?, Arc::<str>::from(row.get::<_, String>(1)?)))
            })?;
            for row in rows {
                let (number, path) = row?;
                found.paths.insert(number, path);
            }
        }
        Ok(found)
    })
    .await
}

/// Runs SQLite work on tokio's blocking threads: stepping a statement blocks.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, rusqlite::Error> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(sqlite_error),
        Err(error) => Err(StoreError::Database(DbErr::Custom(format!(
            "export read task failed: {error}"
        )))),
    }
}

/// An error of the export's own SQLite connection, as any other database error. rusqlite
/// names SQLite's message, never a bound value.
fn sqlite_error(error: rusqlite::Error) -> StoreError {
    StoreError::Database(DbErr::Custom(format!("export read: {error}")))
}

/// A page as read: at most one row more than [`EXPORT_PAGE_ROWS`], in the query's order.
#[derive(Debug)]
pub struct ReadPage {
    rows: Vec<RowTuple>,
    /// The texts of the labels and paths the rows name.
    texts: Texts,
    order: SortOrder,
}

/// A page's rows in the query's order, and where the page after it starts.
#[derive(Debug)]
pub struct PageRows<'a> {
    /// At most [`EXPORT_PAGE_ROWS`] rows, their text borrowed from the page.
    pub rows: Vec<ExportRow<'a>>,
    /// The cursor of the next page; `None` when this was the last.
    pub next: Option<Cursor>,
}

impl ReadPage {
    /// The page's rows, and the cursor of the page after it.
    pub fn rows(&self) -> PageRows<'_> {
        let page_rows = EXPORT_PAGE_ROWS as usize;
        let (rows, next) = if self.rows.len() > page_rows {
            let rows = &self.rows[..page_rows];
            let next = rows
                .last()
                .map(|last| cursor_after(self.order.field, last, self.spelled(last)));
            (rows, next)
        } else {
            (&self.rows[..], None)
        };
        PageRows {
            rows: rows
                .iter()
                .map(|row| export_row(row, self.spelled(row)))
                .collect(),
            next,
        }
    }

    /// The name and prefix of `row`'s key, and its path. Every row's label and path are
    /// read with the page and never removed, so the empty fallbacks are never used.
    fn spelled(&self, row: &RowTuple) -> Spelled<'_> {
        let (name, prefix) = self
            .texts
            .labels
            .get(&i64::from(row.3))
            .map_or(("", ""), |label| (label.0.as_str(), label.1.as_str()));
        let path = self
            .texts
            .paths
            .get(&i64::from(row.5))
            .map_or("", |path| path);
        Spelled { name, prefix, path }
    }
}

/// The texts of a row's numbers: its key's name and prefix, and its path.
struct Spelled<'a> {
    name: &'a str,
    prefix: &'a str,
    path: &'a str,
}

fn export_row<'a>(row: &'a RowTuple, texts: Spelled<'a>) -> ExportRow<'a> {
    let (_, ts, _, _, method, _, query_params, status, error, ip) = row;
    ExportRow {
        api_key_name: Cow::Borrowed(texts.name),
        api_key_prefix: Cow::Borrowed(texts.prefix),
        method: Cow::Borrowed(method),
        endpoint: Cow::Borrowed(texts.path),
        query_params: query_params.as_deref().map(Cow::Borrowed),
        status_code: *status,
        error_code: error.as_deref().map(Cow::Borrowed),
        ip_hash: Cow::Owned(to_hex(ip)),
        timestamp_micros: *ts,
    }
}

/// The keyset position of `row` (whose numbers spell `texts`) in an order on `field`, as
/// ListLogs' `cursor_of` gives it.
fn cursor_after(field: SortField, row: &RowTuple, texts: Spelled<'_>) -> Cursor {
    let text = |value: &str| CursorValue::Text(value.to_owned());
    let nullable = |value: &Option<String>| value.as_deref().map_or(CursorValue::Null, text);
    let value = match field {
        SortField::Timestamp => CursorValue::Int(row.1),
        SortField::DurationMs => CursorValue::Int(row.2),
        SortField::ApiKeyName => text(texts.name),
        SortField::ApiKeyPrefix => text(texts.prefix),
        SortField::Method => text(&row.4),
        SortField::Endpoint => text(texts.path),
        SortField::QueryParams => nullable(&row.6),
        SortField::StatusCode => CursorValue::Int(i64::from(row.7)),
        SortField::ErrorCode => nullable(&row.8),
        SortField::IpHash => CursorValue::Text(to_hex(&row.9)),
    };
    Cursor { value, id: row.0 }
}

#[cfg(test)]
mod tests {
    use sea_orm::{ConnectionTrait, DatabaseConnection};

    use super::*;
    use crate::domain::filter::{LogFilter, LogQuery};
    use crate::store::{test_database, test_database_at};

    /// Rows 1..=`count` of account `a` (number 1), row `i` at time `i` with query
    /// parameters `q=i%7` on odd rows and none on even ones, and one row of account `b`.
    async fn seed(db: &DatabaseConnection, count: i64) {
        db.execute_unprepared(&format!(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO account_numbers (id, value) VALUES (1, 'a'), (2, 'b'); \
             INSERT OR IGNORE INTO endpoint_numbers (id, value) VALUES (1, '/v1'); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, query_params, status_code, ip_hash, \
             duration_ms) \
             SELECT i, 1, i, 1, 1, 'GET', 1, \
             CASE WHEN i % 2 = 1 THEN 'q=' || (i % 7) END, 200, X'AB01', 1 FROM n; \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES ({count} + 1, 2, 5, 1, 1, 'GET', 1, 200, X'', 1)"
        ))
        .await
        .expect("seed rows");
    }

    fn export_query(field: SortField, descending: bool) -> ExportQuery {
        let order = SortOrder { field, descending };
        let query = LogQuery::new("a", LogFilter::default(), order).expect("a valid query");
        ExportQuery::new(query, &[]).expect("a valid export")
    }

    /// Every page of `reader`, each row as (time, query parameters), and the page sizes.
    async fn read_all(reader: &ExportReader) -> (Vec<(i64, Option<String>)>, Vec<usize>) {
        let (mut rows, mut sizes) = (Vec::new(), Vec::new());
        let mut after = None;
        loop {
            let page = reader.read_page(after.as_ref()).await.expect("a page");
            let PageRows {
                rows: page_rows,
                next,
            } = page.rows();
            sizes.push(page_rows.len());
            rows.extend(page_rows.iter().map(|row| {
                assert_eq!(row.ip_hash, "ab01", "IP hashes come as lower-case hex");
                let params = row.query_params.as_deref().map(str::to_owned);
                (row.timestamp_micros, params)
            }));
            match next {
                Some(next) => after = Some(next),
                None => return (rows, sizes),
            }
        }
    }

    /// Account `a`'s 2,501 rows by query parameters: NULL first, then bytewise, ties by id.
    fn by_query_params(count: i64) -> Vec<(i64, Option<String>)> {
        let mut rows: Vec<(i64, Option<String>)> = (1..=count)
            .map(|i| (i, (i % 2 == 1).then(|| format!("q={}", i % 7))))
            .collect();
        rows.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
        rows
    }

    #[tokio::test]
    async fn an_sqlite_file_is_exported_on_a_connection_of_its_own() {
        let (_dir, db) = test_database().await;
        seed(&db, 2_501).await;
        let reader = ExportReader::open(&db, export_query(SortField::QueryParams, false))
            .await
            .expect("open");
        assert!(matches!(reader.snapshot, Snapshot::Own(_)));
        db.execute_unprepared(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES (9000, 1, 9000, 1, 1, 'GET', 1, 200, X'AB01', 1)",
        )
        .await
        .expect("a row after the snapshot");
        let (rows, sizes) = read_all(&reader).await;
        assert_eq!(sizes, [1_000, 1_000, 501]);
        assert_eq!(rows, by_query_params(2_501));
        reader.close().await.expect("close");
        // A new export sees the later row; newest first by default.
        let reader = ExportReader::open(&db, export_query(SortField::Timestamp, true))
            .await
            .expect("open");
        let (rows, _) = read_all(&reader).await;
        assert_eq!(rows.len(), 2_502);
        assert_eq!(rows[0].0, 9000);
        assert!(rows.windows(2).all(|pair| pair[0].0 > pair[1].0));
        reader.close().await.expect("close");
    }

    #[tokio::test]
    async fn an_sqlite_database_in_memory_is_exported_on_a_pooled_connection() {
        let db = test_database_at("sqlite::memory:".into()).await;
        seed(&db, 2_501).await;
        let reader = ExportReader::open(&db, export_query(SortField::QueryParams, false))
            .await
            .expect("open");
        assert!(matches!(reader.snapshot, Snapshot::Pooled(_)));
        let (rows, sizes) = read_all(&reader).await;
        assert_eq!(sizes, [1_000, 1_000, 501]);
        assert_eq!(rows, by_query_params(2_501));
        reader.close().await.expect("close");
    }

    /// Rows of three labels and two paths, exported by name and by path on both kinds of
    /// snapshot: each row carries its own label's and path's texts (read once per export,
    /// on the snapshot), and the keyset pages cross from one text to the next.
    #[tokio::test]
    async fn rows_carry_their_labels_and_paths_across_pages() {
        let (_dir, file_db) = test_database().await;
        let memory_db = test_database_at("sqlite::memory:".into()).await;
        for db in [file_db, memory_db] {
            db.execute_unprepared(
                "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
                 INSERT INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
                 VALUES (1, 1, 1, 'Zeta', 'pk_z'), (2, 1, 1, 'Alpha', 'pk_a'), (3, 1, 1, 'Mid', 'pk_m'); \
                 INSERT INTO endpoint_numbers (id, value) VALUES (1, '/v2'), (2, '/v1'); \
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500) \
                 INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
                 method, endpoint_no, status_code, ip_hash, duration_ms) \
                 SELECT i, 1, i, 1, 1 + i % 3, 'GET', 1 + i % 2, 200, X'AB01', 1 FROM n",
            )
            .await
            .expect("rows of three labels and two paths");
            // Row i (its timestamp) has label 1 + i % 3 and path 1 + i % 2.
            let own_texts = |i: i64| {
                let (name, prefix) = [("Zeta", "pk_z"), ("Alpha", "pk_a"), ("Mid", "pk_m")]
                    [usize::try_from(i % 3).expect("a label")];
                let path = ["/v2", "/v1"][usize::try_from(i % 2).expect("a path")];
                (name.to_owned(), prefix.to_owned(), path.to_owned())
            };
            for field in [SortField::ApiKeyName, SortField::Endpoint] {
                let reader = ExportReader::open(&db, export_query(field, false))
                    .await
                    .expect("open");
                let mut texts = Vec::new();
                let mut after = None;
                loop {
                    let page = reader.read_page(after.as_ref()).await.expect("a page");
                    let PageRows { rows, next } = page.rows();
                    for row in &rows {
                        let spelled = (
                            row.api_key_name.to_string(),
                            row.api_key_prefix.to_string(),
                            row.endpoint.to_string(),
                        );
                        assert_eq!(spelled, own_texts(row.timestamp_micros), "{field:?}");
                        texts.push(spelled);
                    }
                    match next {
                        Some(next) => after = Some(next),
                        None => break,
                    }
                }
                reader.close().await.expect("close");
                let sorted: Vec<String> = texts
                    .iter()
                    .map(|(name, _, path)| match field {
                        SortField::Endpoint => path.clone(),
                        _ => name.clone(),
                    })
                    .collect();
                let expected: Vec<String> = match field {
                    // 1 + i % 3: Alpha for i = 1, 4, …; Mid for 2, 5, …; Zeta for 3, 6, ….
                    SortField::ApiKeyName => [("Alpha", 834), ("Mid", 833), ("Zeta", 833)]
                        .iter()
                        .flat_map(|&(name, count)| vec![name.to_owned(); count])
                        .collect(),
                    _ => [("/v1", 1250), ("/v2", 1250)]
                        .iter()
                        .flat_map(|&(path, count)| vec![path.to_owned(); count])
                        .collect(),
                };
                assert_eq!(sorted, expected, "{field:?}");
            }
        }
    }

    /// Rows whose paths are nearly all different (raw paths with ids in them): the
    /// export's cache starts over past [`EXPORT_CACHED_TEXTS`] paths, and the page on which
    /// it does still spells the paths it had cached before, as every other page does.
    #[tokio::test]
    async fn a_cache_that_starts_over_keeps_every_rows_path() {
        let (_dir, db) = test_database().await;
        let rows = 2 * i64::try_from(EXPORT_CACHED_TEXTS).expect("a count") + 2_000;
        // Odd rows share `/common`; even row i has `/p/i` of its own.
        db.execute_unprepared(&format!(
            "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO endpoint_numbers (id, value) VALUES (1, '/common'); \
             WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 2 FROM n WHERE i < {rows}) \
             INSERT INTO endpoint_numbers (id, value) SELECT i, '/p/' || i FROM n; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             SELECT i, 1, i, 1, 1, 'GET', CASE WHEN i % 2 = 1 THEN 1 ELSE i END, 200, \
             X'AB01', 1 FROM n"
        ))
        .await
        .expect("rows of many paths");
        let reader = ExportReader::open(&db, export_query(SortField::Timestamp, false))
            .await
            .expect("open");
        let mut seen = 0;
        let mut after = None;
        loop {
            let page = reader.read_page(after.as_ref()).await.expect("a page");
            let PageRows { rows, next } = page.rows();
            for row in &rows {
                let i = row.timestamp_micros;
                let path = if i % 2 == 1 {
                    "/common".to_owned()
                } else {
                    format!("/p/{i}")
                };
                assert_eq!(row.endpoint, path, "row {i}");
                seen += 1;
            }
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        let cached = reader.texts.lock().expect("the cache").paths.len();
        assert!(cached <= EXPORT_CACHED_TEXTS, "{cached} paths cached");
        reader.close().await.expect("close");
        assert_eq!(seen, rows);
    }

    #[tokio::test]
    async fn an_account_without_rows_exports_nothing() {
        let (_dir, db) = test_database().await;
        seed(&db, 10).await;
        let query = LogQuery::new("never", LogFilter::default(), SortOrder::default())
            .expect("a valid query");
        let reader = ExportReader::open(&db, ExportQuery::new(query, &[]).expect("an export"))
            .await
            .expect("open");
        let (rows, sizes) = read_all(&reader).await;
        assert!(rows.is_empty());
        assert_eq!(sizes, [0]);
        reader.close().await.expect("close");
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_opened_is_a_database_error() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let missing = dir.path().join("gone.db");
        let error = open_own(missing.clone()).await.expect_err("no such file");
        assert!(matches!(error, StoreError::Database(_)), "{error:?}");
        // Read-only: the export never creates the file either.
        assert!(!missing.exists());
    }

    #[test]
    fn only_exports_in_time_order_without_search_or_several_keys_avoid_sorts() {
        let with = |field, filter: LogFilter| {
            let order = SortOrder {
                field,
                descending: true,
            };
            let query = LogQuery::new("a", filter, order).expect("a valid query");
            prefers_ordered_scan(&ExportQuery::new(query, &[]).expect("an export"))
        };
        let keys = |ids: &[&str]| LogFilter {
            api_key_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            ..LogFilter::default()
        };
        assert!(with(SortField::Timestamp, LogFilter::default()));
        assert!(with(SortField::Timestamp, keys(&["k1"])));
        let statuses = LogFilter {
            status_codes: vec![429],
            ..LogFilter::default()
        };
        assert!(with(SortField::Timestamp, statuses));
        assert!(!with(SortField::Timestamp, keys(&["k1", "k2"])));
        let search = LogFilter {
            search: Some("needle".into()),
            ..LogFilter::default()
        };
        assert!(!with(SortField::Timestamp, search));
        assert!(!with(SortField::Endpoint, LogFilter::default()));
        let query =
            LogQuery::new("a", LogFilter::default(), SortOrder::default()).expect("a valid query");
        let selection = ExportQuery::new(query, &["7".to_owned()]).expect("an export");
        assert!(!prefers_ordered_scan(&selection));
    }
}

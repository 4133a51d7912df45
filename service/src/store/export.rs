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
//! The price is one pooled connection held for the export's duration (and, on SQLite, a WAL
//! that cannot be checkpointed past the snapshot until the export ends; on PostgreSQL, old
//! row versions kept from VACUUM). [`export_slots`] caps how many exports may hold
//! connections at once, so that other readers always find one.

use std::cmp::Ordering;

use sea_orm::sea_query::{Alias, Expr, Query, SelectStatement};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, IsolationLevel, QueryFilter, QuerySelect, QueryTrait, Statement,
    TransactionTrait,
};

use super::StoreError;
use super::entity::log_entry;
use super::logs::{cursor_of, page_select};
use crate::domain::export::{ExportQuery, ExportRow};
use crate::domain::filter::{SortField, SortOrder};
use crate::domain::page_token::Cursor;

/// Rows one page read brings into memory: typical rows make about 200 KiB of JSON text and
/// as much again once parsed; fewer rows a page cost throughput (500: -25%).
pub const EXPORT_PAGE_ROWS: u32 = 1_000;

/// SQLite page cache of an export's connection while it runs (`PRAGMA cache_size`, negative
/// = KiB): 2 MiB, as fast for one pass over the rows as the pool's 64 MiB.
const EXPORT_CACHE_SIZE: i64 = -2048;

/// The columns an export reads, in this order: the keyset needs `id`, the order's field
/// (`ts` and `duration_ms` are the numeric ones) and the nine exported columns. `user_agent`
/// is never read.
type RowTuple = (
    i64,            // id
    i64,            // ts
    i64,            // duration_ms
    String,         // api_key_name
    String,         // api_key_prefix
    String,         // method
    String,         // endpoint
    Option<String>, // query_params
    i32,            // status_code
    Option<String>, // error_code
    String,         // ip_hash
);

/// The same columns as the JSON array of one row (SQLite), in [`RowTuple`]'s order.
const ROW_JSON: &str = r#""id", "ts", "duration_ms", "api_key_name", "api_key_prefix", "method", "endpoint", "query_params", "status_code", "error_code", "ip_hash""#;

const COLUMNS: [log_entry::Column; 11] = [
    log_entry::Column::Id,
    log_entry::Column::Ts,
    log_entry::Column::DurationMs,
    log_entry::Column::ApiKeyName,
    log_entry::Column::ApiKeyPrefix,
    log_entry::Column::Method,
    log_entry::Column::Endpoint,
    log_entry::Column::QueryParams,
    log_entry::Column::StatusCode,
    log_entry::Column::ErrorCode,
    log_entry::Column::IpHash,
];

/// How many exports may run at once on `db`: half its pool (at least one), so that the
/// other readers (ListLogs, statistics, health checks) keep connections while exports hold
/// theirs.
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

/// An export being read: its snapshot, its query and where the next page starts.
#[derive(Debug)]
pub struct ExportReader {
    txn: DatabaseTransaction,
    query: ExportQuery,
    after: Option<Cursor>,
    finished: bool,
    /// SQLite: the connection's page cache setting before the export shrank it.
    pooled_cache_size: Option<i64>,
}

impl ExportReader {
    /// Opens the snapshot the whole export reads from (see the module comment). When this
    /// returns, rows committed later will not be exported.
    pub async fn open(db: &DatabaseConnection, query: ExportQuery) -> Result<Self, StoreError> {
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
                txn
            }
            // SQLite has neither setting (sea-orm would only warn): a deferred BEGIN's
            // first read fixes the snapshot.
            _ => db.begin().await?,
        };
        // The first statement takes the snapshot on both backends (a bare BEGIN does not);
        // one row of the table is the cheapest read of it.
        log_entry::Entity::find()
            .select_only()
            .column(log_entry::Column::Id)
            .limit(1)
            .into_tuple::<i64>()
            .one(&txn)
            .await?;
        let mut reader = Self {
            txn,
            query,
            after: None,
            finished: false,
            pooled_cache_size: None,
        };
        if db.get_database_backend() == DbBackend::Sqlite {
            reader.shrink_page_cache().await?;
        }
        Ok(reader)
    }

    /// SQLite: the pool gives each connection a large page cache, which pays off for
    /// queries that revisit the newest pages. An export reads each page once: in a large
    /// cache it would only fill the cache, growing the server's memory by the whole cache
    /// (64 MiB) for no gain. While the export holds the connection, it gets a small cache
    /// (shrinking also frees what the connection had cached); `close` restores the pool's
    /// setting before the connection goes back.
    async fn shrink_page_cache(&mut self) -> Result<(), StoreError> {
        let backend = self.txn.get_database_backend();
        let pooled = self
            .txn
            .query_one(Statement::from_string(backend, "PRAGMA cache_size"))
            .await?
            .map(|row| row.try_get_by_index::<i64>(0))
            .transpose()?;
        if let Some(pooled) = pooled {
            self.txn
                .execute_unprepared(&format!("PRAGMA cache_size = {EXPORT_CACHE_SIZE}"))
                .await?;
            self.pooled_cache_size = Some(pooled);
        }
        Ok(())
    }

    /// The next page of rows, in the query's order; `None` once every row was returned.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ExportRow>>, StoreError> {
        if self.finished {
            return Ok(None);
        }
        let backend = self.txn.get_database_backend();
        // The very SELECT of ListLogs (filter, order, keyset after the cursor, one row more
        // than a page to learn whether another follows), narrowed to an `ids` selection.
        let mut select = page_select(
            backend,
            &self.query.query,
            self.after.as_ref(),
            EXPORT_PAGE_ROWS,
        );
        if let Some(ids) = &self.query.ids {
            select = select.filter(log_entry::Column::Id.is_in(ids.iter().copied()));
        }
        let select = select.select_only().columns(COLUMNS);
        let order = self.query.query.order;
        let mut rows: Vec<RowTuple> = match backend {
            DbBackend::Sqlite => {
                let mut rows = read_json_page(&self.txn, select.into_query()).await?;
                // An aggregate's input order is not promised by SQL: restore the page's
                // order. The order is total (field, then id) and compares text bytewise,
                // NULL first, exactly as the database sorts (binary collation), so the
                // result is the database's own order, whatever order the aggregate saw.
                rows.sort_by(|a, b| compare(order, a, b));
                rows
            }
            // The PostgreSQL driver reads rows in batches off the socket: plain rows are
            // faster there than building and parsing JSON (1M rows: ~2.4 s against ~3.4 s).
            _ => select.into_tuple().all(&self.txn).await?,
        };

        let page_rows = EXPORT_PAGE_ROWS as usize;
        if rows.len() > page_rows {
            rows.truncate(page_rows);
            self.after = rows
                .last()
                .map(|last| cursor_of(order.field, &cursor_model(last)));
        } else {
            self.finished = true;
        }
        Ok(Some(rows.into_iter().map(export_row).collect()))
    }

    /// Ends the snapshot (it only ever read, so it is rolled back) and gives the connection
    /// back as the pool configured it. Call it on every path, cancellation and failures
    /// included; a reader merely dropped is still rolled back, but its SQLite connection
    /// keeps the export's small page cache.
    pub async fn close(self) -> Result<(), StoreError> {
        if let Some(pooled) = self.pooled_cache_size {
            self.txn
                .execute_unprepared(&format!("PRAGMA cache_size = {pooled}"))
                .await?;
        }
        self.txn.rollback().await?;
        Ok(())
    }
}

/// SQLite: the page read as ONE value, a JSON array of row arrays built by the database.
/// Row by row, the SQLite driver hands every row from its worker thread to the task through
/// a channel and copies every value on its own: that cost 3-4× the time of the query
/// itself. One value a page makes reading 3-4× faster (1M rows: ~7 s → ~2 s), for one page
/// of JSON text in memory.
async fn read_json_page(
    txn: &DatabaseTransaction,
    page: SelectStatement,
) -> Result<Vec<RowTuple>, StoreError> {
    let backend = txn.get_database_backend();
    let statement = backend.build(
        Query::select()
            .expr(Expr::cust(format!(
                "json_group_array(json_array({ROW_JSON}))"
            )))
            .from_subquery(page, Alias::new("page")),
    );
    let json: Option<String> = match txn.query_one(statement).await? {
        Some(row) => row.try_get_by_index(0)?,
        None => None,
    };
    Ok(match json {
        Some(json) => serde_json::from_str(&json)
            .map_err(|error| DbErr::Json(format!("export page: {error}")))?,
        None => Vec::new(),
    })
}

/// Two rows in `order`: the field (text bytewise, NULL before every value), then id, both
/// in the order's direction.
fn compare(order: SortOrder, a: &RowTuple, b: &RowTuple) -> Ordering {
    fn text(value: &Option<String>) -> Option<&[u8]> {
        value.as_deref().map(str::as_bytes)
    }
    let by_field = match order.field {
        SortField::Timestamp => a.1.cmp(&b.1),
        SortField::DurationMs => a.2.cmp(&b.2),
        SortField::ApiKeyName => a.3.as_bytes().cmp(b.3.as_bytes()),
        SortField::ApiKeyPrefix => a.4.as_bytes().cmp(b.4.as_bytes()),
        SortField::Method => a.5.as_bytes().cmp(b.5.as_bytes()),
        SortField::Endpoint => a.6.as_bytes().cmp(b.6.as_bytes()),
        SortField::QueryParams => text(&a.7).cmp(&text(&b.7)),
        SortField::StatusCode => a.8.cmp(&b.8),
        SortField::ErrorCode => text(&a.9).cmp(&text(&b.9)),
        SortField::IpHash => a.10.as_bytes().cmp(b.10.as_bytes()),
    };
    let ordering = by_field.then(a.0.cmp(&b.0));
    if order.descending {
        ordering.reverse()
    } else {
        ordering
    }
}

/// The row as far as `cursor_of` reads it: the sortable columns and `id`; the columns an
/// export never reads stay empty.
fn cursor_model(row: &RowTuple) -> log_entry::Model {
    let (id, ts, duration_ms, name, prefix, method, endpoint, query_params, status, error, ip) =
        row;
    log_entry::Model {
        id: *id,
        account_id: String::new(),
        ts: *ts,
        request_id: None,
        api_key_id: String::new(),
        api_key_name: name.clone(),
        api_key_prefix: prefix.clone(),
        method: method.clone(),
        endpoint: endpoint.clone(),
        query_params: query_params.clone(),
        status_code: *status,
        error_code: error.clone(),
        ip_hash: ip.clone(),
        user_agent: String::new(),
        duration_ms: *duration_ms,
    }
}

fn export_row(row: RowTuple) -> ExportRow {
    let (_, ts, _, name, prefix, method, endpoint, query_params, status, error, ip) = row;
    ExportRow {
        api_key_name: name,
        api_key_prefix: prefix,
        method,
        endpoint,
        query_params,
        status_code: status,
        error_code: error,
        ip_hash: ip,
        timestamp_micros: ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, query_params: Option<&str>, name: &str) -> RowTuple {
        (
            id,
            1_000,
            5,
            name.to_owned(),
            String::new(),
            "GET".to_owned(),
            "/".to_owned(),
            query_params.map(str::to_owned),
            200,
            None,
            String::new(),
        )
    }

    fn sorted(field: SortField, descending: bool, mut rows: Vec<RowTuple>) -> Vec<i64> {
        rows.sort_by(|a, b| compare(SortOrder { field, descending }, a, b));
        rows.iter().map(|row| row.0).collect()
    }

    #[test]
    fn pages_sort_as_the_database_does() {
        let rows = vec![
            row(1, Some("b"), "b"),
            row(2, None, "B"),
            row(3, Some("a"), "a"),
            row(4, None, "é"),
            row(5, Some("a"), "Z"),
        ];
        // NULL first ascending, last descending; ties on id in the same direction.
        assert_eq!(
            sorted(SortField::QueryParams, false, rows.clone()),
            [2, 4, 3, 5, 1]
        );
        assert_eq!(
            sorted(SortField::QueryParams, true, rows.clone()),
            [1, 5, 3, 4, 2]
        );
        // Bytewise: upper case before lower case, multi-byte UTF-8 last.
        assert_eq!(
            sorted(SortField::ApiKeyName, false, rows.clone()),
            [2, 5, 3, 1, 4]
        );
        // Equal fields: id alone decides.
        assert_eq!(sorted(SortField::Timestamp, true, rows), [5, 4, 3, 2, 1]);
    }
}

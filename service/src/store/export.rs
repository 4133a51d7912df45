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
//! connections at once, so that ingest and ListLogs always find one.

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    EntityTrait, IsolationLevel, QueryFilter, QuerySelect, TransactionTrait,
};

use super::StoreError;
use super::entity::log_entry;
use super::logs::{cursor_of, page_select};
use crate::domain::export::{ExportQuery, ExportRow};
use crate::domain::page_token::Cursor;

/// Rows one page read brings into memory (about 300 KiB of typical rows).
pub const EXPORT_PAGE_ROWS: u32 = 1_000;

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
/// writer and ListLogs keep connections while exports hold theirs.
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

/// An export being read: its snapshot, its query and where the next page starts.
#[derive(Debug)]
pub struct ExportReader {
    txn: DatabaseTransaction,
    query: ExportQuery,
    after: Option<Cursor>,
    finished: bool,
}

impl ExportReader {
    /// Opens the snapshot the whole export reads from (see the module comment). When this
    /// returns, rows committed later will not be exported.
    pub async fn open(db: &DatabaseConnection, query: ExportQuery) -> Result<Self, StoreError> {
        let txn = match db.get_database_backend() {
            DbBackend::Postgres => {
                db.begin_with_config(
                    Some(IsolationLevel::RepeatableRead),
                    Some(AccessMode::ReadOnly),
                )
                .await?
            }
            // SQLite has neither setting (sea-orm would only warn): a deferred BEGIN's
            // first read fixes the snapshot.
            _ => db.begin().await?,
        };
        // The first statement takes the snapshot on both backends (a bare BEGIN does not).
        // MAX(id) is an O(log n) read of the primary key.
        log_entry::Entity::find()
            .select_only()
            .column_as(log_entry::Column::Id.max(), "max_id")
            .into_tuple::<Option<i64>>()
            .one(&txn)
            .await?;
        Ok(Self {
            txn,
            query,
            after: None,
            finished: false,
        })
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
        let mut rows: Vec<RowTuple> = select
            .select_only()
            .columns(COLUMNS)
            .into_tuple()
            .all(&self.txn)
            .await?;
        let page_rows = EXPORT_PAGE_ROWS as usize;
        if rows.len() > page_rows {
            rows.truncate(page_rows);
            self.after = rows
                .last()
                .map(|last| cursor_of(self.query.query.order.field, &cursor_model(last)));
        } else {
            self.finished = true;
        }
        Ok(Some(rows.into_iter().map(export_row).collect()))
    }

    /// Ends the snapshot. It only ever read, so it is rolled back; dropping the reader
    /// (a cancelled export) rolls it back as well.
    pub async fn close(self) -> Result<(), StoreError> {
        self.txn.rollback().await?;
        Ok(())
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

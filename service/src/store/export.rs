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

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

use serde::de::{Deserialize, Deserializer, Visitor};

use sea_orm::sea_query::{Alias, Expr, Query, SelectStatement};
use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, IsolationLevel, QueryFilter, QuerySelect, QueryTrait, Statement,
    TransactionTrait,
};

use super::StoreError;
use super::entity::log_entry;
use super::logs::page_select;
use crate::domain::export::{ExportQuery, ExportRow};
use crate::domain::filter::{SortField, SortOrder};
use crate::domain::ip::to_hex;
use crate::domain::page_token::{Cursor, CursorValue};

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
    Vec<u8>,        // ip_hash
);

/// The same columns as the JSON array of one row (SQLite), in [`RowTuple`]'s order. JSON
/// holds no bytes, so the IP hash comes as its hex, which SQLite writes in upper case: it
/// sorts as the bytes do, and [`RowRef::into_export_row`] lowers it (not SQL's `lower()`:
/// the page is built on the driver's thread, the export's busiest).
const ROW_JSON: &str = r#""id", "ts", "duration_ms", "api_key_name", "api_key_prefix", "method", "endpoint", "query_params", "status_code", "error_code", hex("ip_hash")"#;

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

/// An export being read: its snapshot and its query.
#[derive(Debug)]
pub struct ExportReader {
    txn: DatabaseTransaction,
    query: ExportQuery,
    /// The account's number; none for an account that never sent a record (no rows).
    account_no: Option<i64>,
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
        let account_no = super::dictionary::account_no(&txn, &query.query.account_id).await?;
        let mut reader = Self {
            txn,
            query,
            account_no,
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

    /// Reads the page after `after` (the first page when `None`), in the query's order:
    /// the cursor comes from the page before ([`PageRows::next`]). Only the database's
    /// work is done here; the page's rows are parsed by [`ReadPage::rows`], which can run
    /// while the next page is read.
    pub async fn read_page(&self, after: Option<&Cursor>) -> Result<ReadPage, StoreError> {
        let backend = self.txn.get_database_backend();
        let order = self.query.query.order;
        let Some(account_no) = self.account_no else {
            return Ok(ReadPage {
                body: PageBody::Rows(Vec::new()),
                order,
            });
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
        let body = match backend {
            DbBackend::Sqlite => {
                PageBody::Json(read_json_page(&self.txn, select.into_query()).await?)
            }
            // The PostgreSQL driver reads rows in batches off the socket: plain rows are
            // faster there than building and parsing JSON (1M rows: ~2.4 s against ~3.4 s).
            _ => PageBody::Rows(select.into_tuple().all(&self.txn).await?),
        };
        Ok(ReadPage { body, order })
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

/// A page as read, before its rows are parsed and put in order.
#[derive(Debug)]
pub struct ReadPage {
    body: PageBody,
    order: SortOrder,
}

#[derive(Debug)]
enum PageBody {
    /// SQLite: the rows as one JSON array of row arrays ([`ROW_JSON`]), in no promised
    /// order.
    Json(String),
    /// PostgreSQL: the rows, in order.
    Rows(Vec<RowTuple>),
}

/// A page's rows in the query's order, and where the page after it starts.
#[derive(Debug)]
pub struct PageRows<'a> {
    /// At most [`EXPORT_PAGE_ROWS`] rows, text borrowed from the page where it can be.
    pub rows: Vec<ExportRow<'a>>,
    /// The cursor of the next page; `None` when this was the last.
    pub next: Option<Cursor>,
}

impl ReadPage {
    /// The page's rows in the query's order, and the cursor of the page after it.
    pub fn rows(&self) -> Result<PageRows<'_>, StoreError> {
        let mut rows: Vec<RowRef<'_>> = match &self.body {
            PageBody::Json(json) => {
                let mut rows: Vec<RowRef<'_>> = serde_json::from_str(json)
                    .map_err(|error| DbErr::Json(format!("export page: {error}")))?;
                // An aggregate's input order is not promised by SQL: restore the page's
                // order. The order is total (field, then id) and compares text bytewise,
                // NULL first, exactly as the database sorts (binary collation), so the
                // result is the database's own order, whatever order the aggregate saw.
                rows.sort_by(|a, b| compare(self.order, a, b));
                rows
            }
            PageBody::Rows(rows) => rows.iter().map(RowRef::from).collect(),
        };
        let page_rows = EXPORT_PAGE_ROWS as usize;
        let next = if rows.len() > page_rows {
            rows.truncate(page_rows);
            rows.last().map(|last| {
                let (value, id) = key_of(self.order.field, last);
                Cursor {
                    value: value.into(),
                    id,
                }
            })
        } else {
            None
        };
        Ok(PageRows {
            rows: rows.into_iter().map(RowRef::into_export_row).collect(),
            next,
        })
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
) -> Result<String, StoreError> {
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
    Ok(json.unwrap_or_else(|| String::from("[]")))
}

/// A row of a page, in [`RowTuple`]'s order, its text borrowed from the page.
#[derive(Debug, serde::Deserialize)]
struct RowRef<'a>(
    i64,
    i64,
    i64,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Text<'a>,
    #[serde(borrow)] Option<Text<'a>>,
    i32,
    #[serde(borrow)] Option<Text<'a>>,
    #[serde(borrow)] Text<'a>,
);

impl<'a> From<&'a RowTuple> for RowRef<'a> {
    fn from(row: &'a RowTuple) -> Self {
        let text = |value: &'a String| Text(Cow::Borrowed(value.as_str()));
        Self(
            row.0,
            row.1,
            row.2,
            text(&row.3),
            text(&row.4),
            text(&row.5),
            text(&row.6),
            row.7.as_ref().map(text),
            row.8,
            row.9.as_ref().map(text),
            Text(Cow::Owned(to_hex(&row.10))),
        )
    }
}

impl<'a> RowRef<'a> {
    fn into_export_row(self) -> ExportRow<'a> {
        let Self(_, ts, _, name, prefix, method, endpoint, query_params, status, error, ip) = self;
        ExportRow {
            api_key_name: name.0,
            api_key_prefix: prefix.0,
            method: method.0,
            endpoint: endpoint.0,
            query_params: query_params.map(|text| text.0),
            status_code: status,
            error_code: error.map(|text| text.0),
            ip_hash: lower_case(ip.0),
            timestamp_micros: ts,
        }
    }
}

/// Hex as exports show it, lower case; already lower-case text stays borrowed.
fn lower_case(hex: Cow<'_, str>) -> Cow<'_, str> {
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(hex.to_ascii_lowercase())
    } else {
        hex
    }
}

/// Text of a JSON page: borrowed from it, unless it had to be unescaped. (`Cow` on its own
/// borrows only as a struct field marked `#[serde(borrow)]`, never inside an `Option`.)
#[derive(Debug)]
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(std::marker::PhantomData<Text<'a>>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(value)))
            }

            fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value.to_owned())))
            }

            fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(value)))
            }
        }
        deserializer.deserialize_str(TextVisitor(std::marker::PhantomData))
    }
}

/// A sort field's value, compared as the database does: NULL before every value, text
/// bytewise (binary collation). A column holds one type, so the order between types only
/// has to be fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Null,
    Int(i64),
    Text(&'a str),
}

impl From<Key<'_>> for CursorValue {
    fn from(key: Key<'_>) -> Self {
        match key {
            Key::Null => Self::Null,
            Key::Int(value) => Self::Int(value),
            Key::Text(value) => Self::Text(value.to_owned()),
        }
    }
}

/// A row's place in `field`'s order: the field's value, then id.
fn key_of<'a>(field: SortField, row: &'a RowRef<'_>) -> (Key<'a>, i64) {
    fn text<'a>(value: &'a Text<'_>) -> Key<'a> {
        Key::Text(&value.0)
    }
    fn nullable<'a>(value: &'a Option<Text<'_>>) -> Key<'a> {
        value.as_ref().map_or(Key::Null, text)
    }
    let value = match field {
        SortField::Timestamp => Key::Int(row.1),
        SortField::DurationMs => Key::Int(row.2),
        SortField::ApiKeyName => text(&row.3),
        SortField::ApiKeyPrefix => text(&row.4),
        SortField::Method => text(&row.5),
        SortField::Endpoint => text(&row.6),
        SortField::QueryParams => nullable(&row.7),
        SortField::StatusCode => Key::Int(i64::from(row.8)),
        SortField::ErrorCode => nullable(&row.9),
        SortField::IpHash => text(&row.10),
    };
    (value, row.0)
}

/// Two rows in `order`: the field (text bytewise, NULL before every value), then id, both
/// in the order's direction.
fn compare(order: SortOrder, a: &RowRef<'_>, b: &RowRef<'_>) -> Ordering {
    let ordering = key_of(order.field, a).cmp(&key_of(order.field, b));
    if order.descending {
        ordering.reverse()
    } else {
        ordering
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
            Vec::new(),
        )
    }

    fn sorted(field: SortField, descending: bool, rows: Vec<RowTuple>) -> Vec<i64> {
        let mut rows: Vec<RowRef<'_>> = rows.iter().map(RowRef::from).collect();
        rows.sort_by(|a, b| compare(SortOrder { field, descending }, a, b));
        rows.iter().map(|row| row.0).collect()
    }

    /// A page of `count` rows as SQLite's JSON, newest id first (not the page's order).
    fn json_page(count: i64, order: SortOrder) -> ReadPage {
        let rows: Vec<serde_json::Value> = (0..count)
            .rev()
            .map(|id| {
                let query_params = (id % 2 == 1).then_some("a=1&b=\"2\"");
                serde_json::json!([
                    id,
                    1_000 + id,
                    5,
                    "Key 1",
                    "bye_AB12C",
                    "GET",
                    "/v1/models",
                    query_params,
                    200,
                    null,
                    "AB"
                ])
            })
            .collect();
        ReadPage {
            body: PageBody::Json(serde_json::to_string(&rows).unwrap()),
            order,
        }
    }

    #[test]
    fn a_json_page_is_put_in_order_and_cut_at_the_page_size() {
        let order = SortOrder {
            field: SortField::Timestamp,
            descending: false,
        };
        let full = EXPORT_PAGE_ROWS as i64;
        let page = json_page(full + 1, order);
        let read = page.rows().unwrap();
        assert_eq!(read.rows.len(), EXPORT_PAGE_ROWS as usize);
        let times: Vec<i64> = read.rows.iter().map(|row| row.timestamp_micros).collect();
        assert_eq!(times, (1_000..1_000 + full).collect::<Vec<_>>());
        // The next page starts after the last row kept, not after the extra one.
        assert_eq!(
            read.next,
            Some(Cursor {
                value: CursorValue::Int(1_000 + full - 1),
                id: full - 1,
            })
        );
        // Text is borrowed from the page unless it had to be unescaped; NULL stays NULL.
        assert_eq!(read.rows[0].query_params, None);
        assert_eq!(read.rows[1].query_params.as_deref(), Some("a=1&b=\"2\""));
        assert!(matches!(read.rows[1].query_params, Some(Cow::Owned(_))));
        assert!(matches!(read.rows[1].endpoint, Cow::Borrowed("/v1/models")));
        assert_eq!(read.rows[1].error_code, None);
        // SQLite's hex is upper case; exports show the IP hash in lower case.
        assert_eq!(read.rows[1].ip_hash, "ab");

        // A page no longer than the page size is the last.
        let last = json_page(full, order);
        let read = last.rows().unwrap();
        assert_eq!(read.rows.len(), EXPORT_PAGE_ROWS as usize);
        assert_eq!(read.next, None);
        let empty = json_page(0, order);
        assert!(empty.rows().unwrap().rows.is_empty());
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

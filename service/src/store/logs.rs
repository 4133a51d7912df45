//! Reading log rows: filters, orders and keyset pages, the same SQL shape on both backends.

use std::collections::HashMap;

use sea_orm::sea_query::{
    Alias, Asterisk, Condition, Expr, JoinType, NullOrdering, Query, SelectStatement, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, Order, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, TransactionTrait,
};

use super::StoreError;
use super::dictionary::{self, Dictionary, account_no, holds_number_of};
use super::entity::{api_key, log_entry};
use super::labels;
use crate::domain::filter::{LogFilter, LogQuery, SortField, SortOrder};
use crate::domain::ip::{from_hex, hex_prefix_range, to_hex};
use crate::domain::page_token::{Cursor, CursorValue};
use crate::domain::record::METHODS;

/// One page of rows, and where the next one starts.
#[derive(Debug, Clone)]
pub struct Page {
    /// The rows, in order.
    pub rows: Vec<log_entry::Model>,
    /// The position after the last row, when more rows follow.
    pub next: Option<Cursor>,
    /// How many rows match the query's account and filter, when asked for.
    pub total: Option<i64>,
}

/// Up to `page_size` rows of the query after `after` (from the start when `None`), and
/// with `include_total` how many rows match in all.
pub async fn page(
    db: &(impl ConnectionTrait + TransactionTrait),
    query: &LogQuery,
    after: Option<&Cursor>,
    page_size: u32,
    include_total: bool,
) -> Result<Page, StoreError> {
    let backend = db.get_database_backend();
    let Some(account_no) = account_no(db, &query.account_id).await? else {
        // An account that never sent a record has no rows.
        return Ok(Page {
            rows: Vec::new(),
            next: None,
            total: include_total.then_some(0),
        });
    };
    let mut page = if let Some(term) = indexed_search_term(query) {
        let mut page = indexed_search_page(db, account_no, query, term, after, page_size).await?;
        // In time order, whose cursor needs no text.
        fill_texts(db, &query.account_id, &mut page.rows).await?;
        page
    } else {
        let select = page_select(backend, account_no, query, after, page_size);
        let mut rows = if backend == DbBackend::Postgres
            && walks_in_time_order(query)
            && may_sort_without_statistics(&query.filter)
        {
            // A transaction only for this: three more round trips, which the plain pages,
            // whose plan does not depend on the statistics, do not pay.
            let txn = db.begin().await?;
            txn.execute_unprepared("SET LOCAL enable_sort = off")
                .await?;
            let rows = select.all(&txn).await?;
            txn.commit().await?;
            rows
        } else {
            select.all(db).await?
        };
        // Before the cursor is taken: an order on a key's name or prefix needs its text.
        fill_texts(db, &query.account_id, &mut rows).await?;
        finish_page(query, rows, page_size)
    };
    if include_total {
        page.total = Some(count(db, account_no, &query.filter).await?);
    }
    Ok(page)
}

/// PostgreSQL: whether this query's pages are best read by walking an index in time order
/// (`(account_no, ts, id)`, or `(account_no, api_key_no, ts, id)` for one key), so that the
/// planner is told to avoid sorting (`enable_sort = off`, for one transaction). Such a walk
/// stops after a page's rows. Left to its estimate, the planner sorts instead when it
/// believes the account small, as it does when the table's statistics do not name the
/// account (no `ANALYZE` yet, autovacuum off, or an account that grew since): a bitmap scan
/// of every row of the account and a sort, for every page (a 200k-row account: 60–77 ms a
/// page with a status or method filter, against 0.15–0.2 ms once analyzed). Not with a search term or several
/// keys: there an index of their own may find few rows, which a sort orders cheaply, and no
/// index gives their order.
pub fn walks_in_time_order(query: &LogQuery) -> bool {
    query.order.field == SortField::Timestamp
        && query.filter.search.is_none()
        && query.filter.api_key_ids.len() <= 1
}

/// Whether the filter narrows the account's rows by more than a time range, which is when
/// the planner, misjudging how few rows match, sorts: with a condition no index serves
/// (method, status, error code, IP or endpoint prefix), or by one key, whose rows it
/// bitmap-scanned and sorted too (a 6,667-row key: 11.8 ms against 0.6 ms once analyzed). The plain
/// page and a time range walk `(account_no, ts, id)` either way, in one statement.
fn may_sort_without_statistics(filter: &LogFilter) -> bool {
    !filter.api_key_ids.is_empty()
        || !filter.methods.is_empty()
        || !filter.status_codes.is_empty()
        || !filter.status_classes.is_empty()
        || !filter.error_codes.is_empty()
        || filter.ip_hash_prefix.is_some()
        || filter.endpoint_prefix.is_some()
}

/// Puts each row's account id, key id, key name and prefix, path and user agent text in
/// place of their numbers: the account is the query's, the others one lookup a page
/// (`api_key_numbers`, `api_key_labels`, `endpoint_numbers`, `user_agents`).
async fn fill_texts(
    db: &impl ConnectionTrait,
    account_id: &str,
    rows: &mut [log_entry::Model],
) -> Result<(), StoreError> {
    let labels: Vec<i64> = rows
        .iter()
        .map(|row| i64::from(row.api_key_label_no))
        .collect();
    let [agents, keys, names, prefixes, paths] = dictionary::texts_of(
        db,
        [
            (
                Dictionary::UserAgents.into(),
                rows.iter().filter_map(|row| row.user_agent_id).collect(),
            ),
            (
                Dictionary::ApiKeys.into(),
                rows.iter().map(|row| i64::from(row.api_key_no)).collect(),
            ),
            (labels::NAMES, labels.clone()),
            (labels::PREFIXES, labels),
            (
                Dictionary::Endpoints.into(),
                rows.iter().map(|row| i64::from(row.endpoint_no)).collect(),
            ),
        ],
    )
    .await?;
    for row in rows.iter_mut() {
        account_id.clone_into(&mut row.account_id);
        // Numbers are never removed, so every row's are found.
        if let Some(text) = row.user_agent_id.and_then(|id| agents.get(&id)) {
            row.user_agent.clone_from(text);
        }
        if let Some(text) = keys.get(&i64::from(row.api_key_no)) {
            row.api_key_id.clone_from(text);
        }
        let label = i64::from(row.api_key_label_no);
        if let (Some(name), Some(prefix)) = (names.get(&label), prefixes.get(&label)) {
            row.api_key_name.clone_from(name);
            row.api_key_prefix.clone_from(prefix);
        }
        if let Some(text) = paths.get(&i64::from(row.endpoint_no)) {
            row.endpoint.clone_from(text);
        }
    }
    Ok(())
}

fn finish_page(query: &LogQuery, mut rows: Vec<log_entry::Model>, page_size: u32) -> Page {
    let next = if rows.len() > page_size as usize {
        rows.truncate(page_size as usize);
        rows.last().map(|last| cursor_of(query.order.field, last))
    } else {
        None
    };
    Page {
        rows,
        next,
        total: None,
    }
}

/// Rows of the newest (in the query's direction) an indexed search walks before it looks
/// the term up instead: a term on more than ~0.5% of rows fills a page of 100 within them.
/// The walk costs ~0.4 µs a row on SQLite; the lookup ~4 µs per row of any account that
/// holds the term's trigrams (10k candidates in 38 ms), so the walk is the cheaper way for
/// all but rare terms (on 1M rows a 1% term took 84 ms through the index after a 2,000-row
/// walk, 7.6 ms with this one).
const SEARCH_WALK_ROWS: u64 = 20_000;
/// The same on PostgreSQL, where a longer walk changes the plan (see `indexed_search_page`).
const POSTGRES_SEARCH_WALK_ROWS: u64 = 2_000;

/// The search term, when the search index can answer this query: time order, a term of
/// three characters or more (trigrams), and one that only free-text columns can hold (the
/// index does not copy methods, status codes and IP hashes).
fn indexed_search_term(query: &LogQuery) -> Option<&str> {
    let term = query.filter.search.as_deref()?;
    let eligible = query.order.field == SortField::Timestamp
        && term.chars().count() >= 3
        && SearchColumns::of(term).free_text_only();
    eligible.then_some(term)
}

/// A search page through the index: first the walk over the newest rows (cheap when the term
/// is frequent); when that does not fill the page, the rows the index holds for the term plus
/// the rows not indexed yet, merged in time order. Both reads keep the full search condition,
/// so the index only has to name a superset of the matching rows.
async fn indexed_search_page(
    db: &impl ConnectionTrait,
    account_no: i64,
    query: &LogQuery,
    term: &str,
    after: Option<&Cursor>,
    page_size: u32,
) -> Result<Page, StoreError> {
    let backend = db.get_database_backend();
    let wanted = page_size as usize + 1;
    let mut unsearched = query.clone();
    unsearched.filter.search = None;
    let rows = match backend {
        DbBackend::Postgres => {
            // A 2,000-row subquery in index order: a frequent term took 2.4 ms this way, but
            // 261 ms with a 20,000-row subquery and 202 ms with the walk bounded by a (ts, id)
            // range as on SQLite; PostgreSQL's trigram lookup is cheap enough for the rest.
            let recent = page_select(backend, account_no, &unsearched, after, 0)
                .limit(POSTGRES_SEARCH_WALK_ROWS)
                .into_query();
            let direction = if query.order.descending {
                Order::Desc
            } else {
                Order::Asc
            };
            let walk = Query::select()
                .column(Asterisk)
                .from_subquery(recent, Alias::new("recent"))
                .cond_where(search_condition(backend, account_no, term))
                .order_by(Alias::new("ts"), direction.clone())
                .order_by(Alias::new("id"), direction)
                .limit(wanted as u64)
                .to_owned();
            log_entry::Entity::find()
                .from_raw_sql(backend.build(&walk))
                .all(db)
                .await?
        }
        _ => {
            // Bounded by the row SEARCH_WALK_ROWS deep (read from the clustered key): one
            // range scan that stops at the page's last match. As a 20,000-row LIMIT subquery
            // a frequent term took 11.4 ms, bounded 2.8–5.0 ms.
            let boundary = page_select(backend, account_no, &unsearched, after, 0)
                .select_only()
                .column(log_entry::Column::Ts)
                .column(log_entry::Column::Id)
                .offset(SEARCH_WALK_ROWS - 1)
                .into_tuple::<(i64, i64)>()
                .one(db)
                .await?;
            let Some(boundary) = boundary else {
                // Fewer rows than the walk covers: walking them all is the whole answer.
                let rows = page_select(backend, account_no, query, after, page_size)
                    .all(db)
                    .await?;
                return Ok(finish_page(query, rows, page_size));
            };
            page_select(backend, account_no, query, after, page_size)
                .filter(up_to(query.order, boundary))
                .all(db)
                .await?
        }
    };
    if rows.len() == wanted {
        return Ok(finish_page(query, rows, page_size));
    }

    let indexed_through = super::search::watermark(db).await?;
    let newest = page_select(backend, account_no, query, after, page_size)
        .filter(unindexed(backend, account_no, indexed_through))
        .all(db)
        .await?;
    let indexed = match backend {
        DbBackend::Postgres => {
            indexed_rows_postgres(db, account_no, query, term, after, page_size).await?
        }
        _ => {
            page_select(backend, account_no, query, after, page_size)
                .filter(fts_candidates(term))
                .all(db)
                .await?
        }
    };
    let labelled = labelled_rows(db, account_no, query, term, after, page_size).await?;
    let mut rows = newest;
    rows.extend(indexed);
    rows.extend(labelled);
    rows.sort_by_key(|row| (row.ts, row.id));
    // The two reads are separate statements: the indexer may have copied a row between
    // them, and then both found it.
    rows.dedup_by_key(|row| row.id);
    if query.order.descending {
        rows.reverse();
    }
    rows.truncate(wanted);
    Ok(finish_page(query, rows, page_size))
}

/// Keys whose matching labels a search reads key by key; past this many, it walks the
/// account's rows instead (a term in the name of most keys fills its pages in the walk
/// over the newest rows long before it gets here).
const MOST_LABELLED_KEYS: usize = 32;

/// The page's rows whose key's label holds `term`, in the page's order: the search index
/// holds neither the name nor the prefix (migration `m20261207_000014`), so the keys whose
/// labels match (`labels::matching_keys`, the account's few labels) are read through the key
/// index, one range a key, each with the full search condition.
async fn labelled_rows(
    db: &impl ConnectionTrait,
    account_no: i64,
    query: &LogQuery,
    term: &str,
    after: Option<&Cursor>,
    page_size: u32,
) -> Result<Vec<log_entry::Model>, StoreError> {
    let backend = db.get_database_backend();
    let keys =
        labels::matching_keys(db, account_no, label_holds(backend, &like_pattern(term))).await?;
    if keys.len() > MOST_LABELLED_KEYS {
        return Ok(page_select(backend, account_no, query, after, page_size)
            .all(db)
            .await?);
    }
    let mut rows = Vec::new();
    for key in keys {
        rows.extend(
            page_select(backend, account_no, query, after, page_size)
                .filter(log_entry::Column::ApiKeyNo.eq(key))
                .all(db)
                .await?,
        );
    }
    Ok(rows)
}

/// The condition "the account's row lies above the search index's watermark".
///
/// SQLite: the rows above it are the ones the indexer has not reached (a second's ingest,
/// tens of thousands under batch ingest), so they are found through `idx_log_entries_id`, not
/// by walking the account (68 ms on 1M rows). The subquery keeps the account's from the index
/// alone: as `id > ?` beside the page's `account_no = ?`, SQLite read each of them from the
/// table before looking at its account (in the sqlite3 shell, 1M rows of which 60k wait, an
/// absent term: 156–382 → 6 ms for a small account, 32 ms for the biggest).
fn unindexed(backend: DbBackend, account_no: i64, indexed_through: i64) -> SimpleExpr {
    match backend {
        DbBackend::Postgres => {
            Expr::col((log_entry::Entity, log_entry::Column::Id)).gt(indexed_through)
        }
        _ => Expr::cust_with_values(
            r#"("log_entries"."ts", "log_entries"."id") IN (SELECT "ts", "id" FROM "log_entries" WHERE "id" > ? AND +"account_no" = ?)"#,
            [indexed_through, account_no],
        ),
    }
}

/// The condition "the row's id is among the SQLite search index's candidates for `term`"
/// (the index names a superset: callers keep the full search condition). The FTS table holds
/// no account: its candidates are looked up by id (`idx_log_entries_id`), and the account
/// filter drops other accounts' rows.
fn fts_candidates(term: &str) -> SimpleExpr {
    Expr::cust_with_values(
        r#""log_entries"."id" IN (SELECT rowid FROM "log_search" WHERE "log_search" MATCH ?)"#,
        [super::search::trigram_query(term).unwrap_or_default()],
    )
}

/// Candidates the first PostgreSQL lookup takes: a page and room for the rows the page's other
/// filters drop. Each further round, run only while the page is short, takes twice as many,
/// up to [`POSTGRES_MOST_CANDIDATES`].
const POSTGRES_FIRST_CANDIDATES: u64 = 256;
/// The most candidates one round takes (each is a bound value of the rows' query).
const POSTGRES_MOST_CANDIDATES: u64 = 8_192;

/// The page's rows among the PostgreSQL search index's candidates for `term`, in the page's
/// order. `log_search` holds each candidate's `(ts, id)`, so the candidates are taken in the
/// page's order, a round at a time, and only their rows are read from `log_entries`: reading
/// every candidate's row was half of a rare term's lookup (1% of a 200k-row account: 1,988
/// candidates, 53 ms, of which 27 ms fetching their rows; W3's rare term p50 41 → 34–35 ms).
async fn indexed_rows_postgres(
    db: &impl ConnectionTrait,
    account_no: i64,
    query: &LogQuery,
    term: &str,
    after: Option<&Cursor>,
    page_size: u32,
) -> Result<Vec<log_entry::Model>, StoreError> {
    let backend = DbBackend::Postgres;
    let wanted = page_size as usize + 1;
    // Candidates come after this (ts, id): the page's cursor, then each round's last one.
    let mut from = after.and_then(|cursor| match cursor.value {
        CursorValue::Int(ts) => Some((ts, cursor.id)),
        _ => None,
    });
    let mut take = POSTGRES_FIRST_CANDIDATES.max(wanted as u64);
    let mut rows = Vec::new();
    loop {
        let candidates = postgres_candidates(account_no, query, term, from, take)?;
        let found: Vec<(i64, i64)> = db
            .query_all(backend.build(&candidates))
            .await?
            .iter()
            .map(|row| Ok((row.try_get::<i64>("", "ts")?, row.try_get::<i64>("", "id")?)))
            .collect::<Result<_, DbErr>>()?;
        let Some(&last) = found.last() else {
            return Ok(rows);
        };
        // By id alone, not the account too: without statistics (autovacuum off, or a table
        // not analyzed yet) the planner ANDed the id lookups with a bitmap of the account's
        // whole index (200k entries, 15 of 20 ms); by id, 2-3 ms. Every candidate is the
        // account's (`log_search` holds each row's account), and is checked again below.
        let among_found = with_row_conditions(backend, account_no, &query.filter, Condition::all())
            .add(log_entry::Column::Id.is_in(found.iter().map(|&(_, id)| id)));
        let mut page = select_after(backend, among_found, query, after, page_size)
            .all(db)
            .await?;
        page.retain(|row| i64::from(row.account_no) == account_no);
        // Later rounds' candidates all come after this round's, so the rows stay in order.
        rows.extend(page);
        if rows.len() >= wanted || (found.len() as u64) < take {
            return Ok(rows);
        }
        from = Some(last);
        take = (take * 2).min(POSTGRES_MOST_CANDIDATES);
    }
}

/// The SELECT of up to `take` candidates' `id` and `ts` from PostgreSQL's `log_search` for
/// `term` in `account_no`, in the query's order, after `from` (a `(ts, id)`) and within the
/// query's time range: the index names a superset of the matching rows, so callers keep the
/// full search condition on the rows.
pub fn postgres_candidates(
    account_no: i64,
    query: &LogQuery,
    term: &str,
    from: Option<(i64, i64)>,
    take: u64,
) -> Result<SelectStatement, StoreError> {
    // Bound as `integer`, the column's type: `btree_gin`'s operator class has no
    // `integer = bigint`, and with a bigint the index scan left the account out (it read
    // every account's candidates and filtered them afterwards).
    let account = i32::try_from(account_no)
        .map_err(|_| StoreError::Database(DbErr::Custom("account number out of range".into())))?;
    let direction = if query.order.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let (ts, id) = (Alias::new("ts"), Alias::new("id"));
    let mut candidates = Query::select();
    candidates
        .column(id.clone())
        .column(ts.clone())
        .from(Alias::new("log_search"))
        .and_where(Expr::col(Alias::new("account_no")).eq(account))
        .and_where(Expr::cust_with_values(
            r#""doc" ILIKE $1 ESCAPE '\'"#,
            [like_pattern(term)],
        ))
        .order_by(ts.clone(), direction.clone())
        .order_by(id.clone(), direction)
        .limit(take);
    if let Some(start) = query.filter.start_micros {
        candidates.and_where(Expr::col(ts.clone()).gte(start));
    }
    if let Some(end) = query.filter.end_micros {
        candidates.and_where(Expr::col(ts.clone()).lt(end));
    }
    if let Some((after_ts, after_id)) = from {
        let pair = Expr::tuple([Expr::col(ts).into(), Expr::col(id).into()]);
        let bound = Expr::tuple([after_ts.into(), after_id.into()]);
        candidates.and_where(if query.order.descending {
            pair.lt(bound)
        } else {
            pair.gt(bound)
        });
    }
    Ok(candidates)
}

/// The SELECT behind [`page`]: `page_size + 1` rows, so that a following page is known.
/// `account_no` is the query's account's number ([`account_no`]).
pub fn page_select(
    backend: DbBackend,
    account_no: i64,
    query: &LogQuery,
    after: Option<&Cursor>,
    page_size: u32,
) -> Select<log_entry::Entity> {
    let condition = filter_condition(backend, account_no, &query.filter);
    select_after(backend, condition, query, after, page_size)
}

/// Rows meeting `condition` after `after` in the query's order, `page_size + 1` of them.
fn select_after(
    backend: DbBackend,
    mut condition: Condition,
    query: &LogQuery,
    after: Option<&Cursor>,
    page_size: u32,
) -> Select<log_entry::Entity> {
    if let Some(cursor) = after {
        condition = condition.add(after_cursor(query.order, cursor));
    }
    let mut select = log_entry::Entity::find().filter(condition);
    if sorts_by_label(query.order.field) {
        select = join_labels(select);
    }
    if query.order.field == SortField::Endpoint {
        select = join_paths(select, backend);
    }
    apply_order(select, backend, query.order).limit(u64::from(page_size) + 1)
}

/// The alias of the joined `api_key_labels` ([`join_labels`]).
const LABEL: &str = "label";

/// Whether an order on `field` reads the key's label: name and prefix are stored once per
/// label (`store::labels`), rows hold its number.
fn sorts_by_label(field: SortField) -> bool {
    matches!(field, SortField::ApiKeyName | SortField::ApiKeyPrefix)
}

/// Joins each row's label as [`LABEL`]: one primary-key lookup a row (1M rows, a sort by
/// name over the 200k-row account: 26 ms with the text in the row, 48 ms joined; as a
/// scalar subquery per row 74 ms).
fn join_labels(mut select: Select<log_entry::Entity>) -> Select<log_entry::Entity> {
    let label = Alias::new(LABEL);
    QueryTrait::query(&mut select).join_as(
        JoinType::InnerJoin,
        Alias::new(labels::TABLE),
        label.clone(),
        Expr::col((label, Alias::new("id")))
            .equals((log_entry::Entity, log_entry::Column::ApiKeyLabelNo)),
    );
    select
}

/// The alias of the joined `endpoint_numbers` ([`join_paths`]).
const PATH: &str = "path";

/// Joins each row's path as [`PATH`], as [`join_labels`] its label: rows hold the path's
/// number (`endpoint_numbers`).
///
/// On PostgreSQL the dictionary is joined as a subquery with `OFFSET 0`, which the planner
/// never merges into the page's query. Joined directly, its unique index on `value` offered
/// the paths already in the page's order, and the planner ran a nested loop over them, each
/// path against every row of the account, feeding an incremental sort: a 200k-row account
/// sorted by path took 414 ms (psql; 210 ms in the benchmark) against 129 ms with the
/// subquery, a hash join and one top-N sort.
fn join_paths(
    mut select: Select<log_entry::Entity>,
    backend: DbBackend,
) -> Select<log_entry::Entity> {
    let path = Alias::new(PATH);
    let on = Expr::col((path.clone(), Alias::new("id")))
        .equals((log_entry::Entity, log_entry::Column::EndpointNo));
    let query = QueryTrait::query(&mut select);
    if backend == DbBackend::Postgres {
        let paths = Query::select()
            .columns([Alias::new("id"), Alias::new("value")])
            .from(Dictionary::Endpoints.table())
            .offset(0)
            .to_owned();
        query.join_subquery(JoinType::InnerJoin, paths, path, on);
    } else {
        query.join_as(JoinType::InnerJoin, Dictionary::Endpoints.table(), path, on);
    }
    select
}

/// How many of the account's rows match `filter`.
async fn count(
    db: &impl ConnectionTrait,
    account_no: i64,
    filter: &LogFilter,
) -> Result<i64, StoreError> {
    let backend = db.get_database_backend();
    let total = log_entry::Entity::find()
        .filter(filter_condition(backend, account_no, filter))
        .count(db)
        .await?;
    Ok(i64::try_from(total).unwrap_or(i64::MAX))
}

/// The current state of an account's keys, by key id (keys never upserted are absent).
pub async fn keys(
    db: &impl ConnectionTrait,
    account_id: &str,
    key_ids: impl IntoIterator<Item = &str>,
) -> Result<HashMap<String, api_key::Model>, StoreError> {
    let mut key_ids: Vec<&str> = key_ids.into_iter().collect();
    key_ids.sort_unstable();
    key_ids.dedup();
    if key_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let keys = api_key::Entity::find()
        .filter(api_key::Column::AccountId.eq(account_id))
        .filter(api_key::Column::ApiKeyId.is_in(key_ids))
        .all(db)
        .await?;
    Ok(keys
        .into_iter()
        .map(|key| (key.api_key_id.clone(), key))
        .collect())
}

/// What an order on `field` sorts by: the row's column, or the joined label's
/// ([`join_labels`]) or path's ([`join_paths`]). Qualified, so that the joined table's
/// columns never shadow the row's.
fn sort_expr(field: SortField) -> Expr {
    let column = match field {
        SortField::ApiKeyName => return Expr::col((Alias::new(LABEL), Alias::new("name"))),
        SortField::ApiKeyPrefix => return Expr::col((Alias::new(LABEL), Alias::new("prefix"))),
        SortField::Timestamp => log_entry::Column::Ts,
        SortField::Method => log_entry::Column::Method,
        SortField::Endpoint => return Expr::col((Alias::new(PATH), Alias::new("value"))),
        SortField::QueryParams => log_entry::Column::QueryParams,
        SortField::StatusCode => log_entry::Column::StatusCode,
        SortField::ErrorCode => log_entry::Column::ErrorCode,
        SortField::IpHash => log_entry::Column::IpHash,
        SortField::DurationMs => log_entry::Column::DurationMs,
    };
    Expr::col((log_entry::Entity, column))
}

/// The keyset position of `row` in an order on `field`: what the next page starts after.
pub fn cursor_of(field: SortField, row: &log_entry::Model) -> Cursor {
    let text = |value: &str| CursorValue::Text(value.to_owned());
    let value = match field {
        SortField::Timestamp => CursorValue::Int(row.ts),
        SortField::ApiKeyName => text(&row.api_key_name),
        SortField::ApiKeyPrefix => text(&row.api_key_prefix),
        SortField::Method => text(&row.method),
        SortField::Endpoint => text(&row.endpoint),
        SortField::QueryParams => row.query_params.as_deref().map_or(CursorValue::Null, text),
        SortField::StatusCode => CursorValue::Int(i64::from(row.status_code)),
        SortField::ErrorCode => row.error_code.as_deref().map_or(CursorValue::Null, text),
        // In the token as hex, as the API shows it; `cursor_expr` turns it back into bytes.
        SortField::IpHash => CursorValue::Text(to_hex(&row.ip_hash)),
        SortField::DurationMs => CursorValue::Int(row.duration_ms),
    };
    Cursor { value, id: row.id }
}

/// ORDER BY the field, then id, one direction. NULL sorts before every value; SQLite does
/// that by itself, PostgreSQL is told (only for nullable columns, so that the non-null ones
/// still match their indexes' order).
fn apply_order(
    select: Select<log_entry::Entity>,
    backend: DbBackend,
    order: SortOrder,
) -> Select<log_entry::Entity> {
    let direction = if order.descending {
        Order::Desc
    } else {
        Order::Asc
    };
    let col = sort_expr(order.field);
    let select = if backend == DbBackend::Postgres && order.field.is_nullable() {
        let nulls = if order.descending {
            NullOrdering::Last
        } else {
            NullOrdering::First
        };
        select.order_by_with_nulls(col, direction.clone(), nulls)
    } else {
        select.order_by(col, direction.clone())
    };
    select.order_by(
        Expr::col((log_entry::Entity, log_entry::Column::Id)),
        direction,
    )
}

/// Rows strictly after the cursor in the query's order.
fn after_cursor(order: SortOrder, cursor: &Cursor) -> Condition {
    let col = || sort_expr(order.field);
    let id = || Expr::col((log_entry::Entity, log_entry::Column::Id));
    let pair = || Expr::tuple([col().into(), id().into()]);
    let value = cursor_expr(order.field, &cursor.value);
    match (value, order.descending) {
        // Row values keep the condition a single index range on (field, id).
        (Some(value), false) => {
            Condition::all().add(pair().gt(Expr::tuple([value, cursor.id.into()])))
        }
        (Some(value), true) => {
            let before = pair().lt(Expr::tuple([value, cursor.id.into()]));
            if order.field.is_nullable() {
                Condition::any().add(before).add(col().is_null())
            } else {
                Condition::all().add(before)
            }
        }
        (None, false) => Condition::any()
            .add(
                Condition::all()
                    .add(col().is_null())
                    .add(id().gt(cursor.id)),
            )
            .add(col().is_not_null()),
        (None, true) => Condition::all()
            .add(col().is_null())
            .add(id().lt(cursor.id)),
    }
}

/// A cursor's value as the column's SQL value; `None` for NULL. The IP hash travels as its
/// hex and is compared as the stored bytes (whose order is the hex's).
fn cursor_expr(field: SortField, value: &CursorValue) -> Option<SimpleExpr> {
    match value {
        CursorValue::Null => None,
        CursorValue::Int(value) => Some((*value).into()),
        CursorValue::Text(hex) if field == SortField::IpHash => {
            // Hex that `cursor_of` wrote (lower case, sealed in a token) or an export page's
            // key (SQLite's upper case); anything else would still compare as its own bytes
            // rather than fail.
            Some(
                from_hex(hex)
                    .unwrap_or_else(|| hex.as_bytes().to_vec())
                    .into(),
            )
        }
        CursorValue::Text(value) => Some(value.clone().into()),
    }
}

/// Rows in time order up to and including `boundary` (ts, id): a range on the (ts, id) key,
/// so the scan ends there.
fn up_to(order: SortOrder, (ts, id): (i64, i64)) -> Condition {
    let pair = Expr::tuple([
        Expr::col((log_entry::Entity, log_entry::Column::Ts)).into(),
        Expr::col((log_entry::Entity, log_entry::Column::Id)).into(),
    ]);
    let bound = Expr::tuple([ts.into(), id.into()]);
    Condition::all().add(if order.descending {
        pair.gte(bound)
    } else {
        pair.lte(bound)
    })
}

/// `%term%` with `%`, `_` and `\` matched literally.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Case-insensitive (ASCII at least) substring match of `target` (SQL text): SQLite's LIKE
/// folds ASCII case by default; PostgreSQL needs ILIKE.
fn contains(backend: DbBackend, target: &str, pattern: &str) -> SimpleExpr {
    let sql = match backend {
        DbBackend::Postgres => format!(r"{target} ILIKE $1 ESCAPE '\'"),
        _ => format!(r"{target} LIKE ? ESCAPE '\'"),
    };
    Expr::cust_with_values(sql, [pattern])
}

/// The condition "a label's name or prefix holds the search term" (`pattern`, from
/// [`like_pattern`]), on `api_key_labels`' unqualified columns.
fn label_holds(backend: DbBackend, pattern: &str) -> Condition {
    Condition::any()
        .add(contains(backend, r#""name""#, pattern))
        .add(contains(backend, r#""prefix""#, pattern))
}

/// Which of the columns with a fixed shape could hold a search term: methods come from a
/// fixed set, status codes are three digits, IP hashes lower-case hex.
#[derive(Debug)]
struct SearchColumns {
    methods: Vec<&'static str>,
    status_code: bool,
    ip_hash: bool,
}

impl SearchColumns {
    fn of(term: &str) -> Self {
        let folded = term.to_ascii_uppercase();
        Self {
            methods: METHODS
                .iter()
                .copied()
                .filter(|method| method.contains(folded.as_str()))
                .collect(),
            status_code: term.len() <= 3 && term.bytes().all(|b| b.is_ascii_digit()),
            ip_hash: term.len() <= 64 && term.bytes().all(|b| b.is_ascii_hexdigit()),
        }
    }

    /// Whether only the free-text columns (name, prefix, endpoint, query, error code) can
    /// hold the term.
    fn free_text_only(&self) -> bool {
        self.methods.is_empty() && !self.status_code && !self.ip_hash
    }
}

/// The search's test on each row, narrowed to the columns whose values could contain the
/// term (see [`SearchColumns`]): methods become an IN list of the matching ones, and a term
/// that cannot occur in a status code or an IP hash is not tried on them for every row. The
/// free-text columns are always tried: the key's name and prefix as "the row's label is one
/// of the account's labels that hold the term" (`store::labels`: the account's few labels
/// are tried once, not each row's), the path as "the row's path is one of the paths that
/// hold it" (the dictionary's values, tried once). Column names are unqualified, so the
/// test also applies to a subquery's rows.
fn search_condition(backend: DbBackend, account_no: i64, term: &str) -> Condition {
    let pattern = like_pattern(term);
    let columns = SearchColumns::of(term);
    let mut any = Condition::any().add(Expr::col(log_entry::Column::ApiKeyLabelNo).in_subquery(
        labels::of_account_where(account_no, label_holds(backend, &pattern)),
    ));
    any = any.add(
        Expr::col(log_entry::Column::EndpointNo).in_subquery(dictionary::numbers_where(
            Dictionary::Endpoints,
            contains(backend, r#""value""#, &pattern),
        )),
    );
    for target in [r#""query_params""#, r#""error_code""#] {
        any = any.add(contains(backend, target, &pattern));
    }
    if !columns.methods.is_empty() {
        any = any.add(Expr::col(log_entry::Column::Method).is_in(columns.methods));
    }
    if columns.status_code {
        any = any.add(contains(
            backend,
            r#"CAST("status_code" AS TEXT)"#,
            &pattern,
        ));
    }
    if columns.ip_hash {
        // The bytes as hex: upper case in SQLite, which LIKE matches without regard to case.
        let hex = match backend {
            DbBackend::Postgres => r#"encode("ip_hash", 'hex')"#,
            _ => r#"hex("ip_hash")"#,
        };
        any = any.add(contains(backend, hex, &pattern));
    }
    any
}

/// The WHERE clause for an account's rows (by its number) under a filter.
pub fn filter_condition(backend: DbBackend, account_no: i64, filter: &LogFilter) -> Condition {
    let account = Condition::all().add(log_entry::Column::AccountNo.eq(account_no));
    with_row_conditions(backend, account_no, filter, account)
}

/// `all` and the filter's conditions on a row's columns (every one but the account, whose
/// number the search's label lookup takes).
fn with_row_conditions(
    backend: DbBackend,
    account_no: i64,
    filter: &LogFilter,
    mut all: Condition,
) -> Condition {
    use log_entry::Column as C;
    if let Some(term) = &filter.search {
        all = all.add(search_condition(backend, account_no, term));
    }
    if !filter.api_key_ids.is_empty() {
        let ids: Vec<&str> = filter.api_key_ids.iter().map(String::as_str).collect();
        // Qualified: a sort by name or prefix joins the label, which names its key too.
        let column = (log_entry::Entity, C::ApiKeyNo);
        all = all.add(holds_number_of(column, Dictionary::ApiKeys, &ids));
    }
    if !filter.methods.is_empty() {
        all = all.add(C::Method.is_in(filter.methods.iter().copied()));
    }
    if !filter.status_codes.is_empty() || !filter.status_classes.is_empty() {
        // Codes and classes are two views of one column: OR-ed with each other would
        // widen the filter, so each is its own AND-ed condition.
        if !filter.status_codes.is_empty() {
            all = all.add(C::StatusCode.is_in(filter.status_codes.iter().copied()));
        }
        if !filter.status_classes.is_empty() {
            let mut any = Condition::any();
            for class in &filter.status_classes {
                any = any.add(C::StatusCode.between(class * 100, class * 100 + 99));
            }
            all = all.add(any);
        }
    }
    if !filter.error_codes.is_empty() {
        all = all.add(C::ErrorCode.is_in(filter.error_codes.iter().map(String::as_str)));
    }
    if let Some(prefix) = &filter.ip_hash_prefix {
        // A hex prefix (of any length) is the range of the 32-byte digests that start with
        // it: the prefix padded with 0s, then with fs. An empty hash (no IP) lies outside.
        let (low, high) = hex_prefix_range(prefix);
        all = all.add(C::IpHash.between(low, high));
    }
    if let Some(prefix) = &filter.endpoint_prefix {
        // Paths are case-sensitive, so not LIKE (which folds case in SQLite); SUBSTR counts
        // characters on both backends. Tried on the paths' dictionary once, not on each row.
        let sql = match backend {
            DbBackend::Postgres => r#"SUBSTR("value", 1, $1) = $2"#,
            _ => r#"SUBSTR("value", 1, ?) = ?"#,
        };
        let length = i32::try_from(prefix.chars().count()).unwrap_or(i32::MAX);
        let starts = Expr::cust_with_values(
            sql,
            [
                sea_orm::Value::from(length),
                sea_orm::Value::from(prefix.as_str()),
            ],
        );
        all = all.add(
            Expr::col((log_entry::Entity, C::EndpointNo))
                .in_subquery(dictionary::numbers_where(Dictionary::Endpoints, starts)),
        );
    }
    if let Some(start) = filter.start_micros {
        all = all.add(C::Ts.gte(start));
    }
    if let Some(end) = filter.end_micros {
        all = all.add(C::Ts.lt(end));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::page_token::CursorValue;

    fn sql(condition: Condition) -> String {
        log_entry::Entity::find()
            .filter(condition)
            .into_query()
            .to_string(sea_orm::sea_query::SqliteQueryBuilder)
    }

    #[test]
    fn only_narrowed_pages_in_time_order_without_search_or_several_keys_avoid_sorts() {
        let query = |field, filter: LogFilter| {
            let order = SortOrder {
                field,
                descending: true,
            };
            LogQuery::new("a", filter, order).expect("a valid query")
        };
        let avoids_sorts = |field, filter: LogFilter| {
            let query = query(field, filter);
            walks_in_time_order(&query) && may_sort_without_statistics(&query.filter)
        };
        let statuses = LogFilter {
            status_codes: vec![429],
            ..LogFilter::default()
        };
        assert!(avoids_sorts(SortField::Timestamp, statuses.clone()));
        let one_key = LogFilter {
            api_key_ids: vec!["k1".into()],
            methods: vec!["DELETE"],
            ..LogFilter::default()
        };
        assert!(avoids_sorts(SortField::Timestamp, one_key.clone()));
        let key_alone = LogFilter {
            api_key_ids: vec!["k1".into()],
            ..LogFilter::default()
        };
        assert!(avoids_sorts(SortField::Timestamp, key_alone));
        // The plain page and a time range alone walk their index anyway.
        assert!(!avoids_sorts(SortField::Timestamp, LogFilter::default()));
        let range = LogFilter {
            start_micros: Some(1),
            ..LogFilter::default()
        };
        assert!(!avoids_sorts(SortField::Timestamp, range));
        let two_keys = LogFilter {
            api_key_ids: vec!["k1".into(), "k2".into()],
            ..one_key
        };
        assert!(!avoids_sorts(SortField::Timestamp, two_keys));
        let search = LogFilter {
            search: Some("needle".into()),
            ..statuses.clone()
        };
        assert!(!avoids_sorts(SortField::Timestamp, search));
        assert!(!avoids_sorts(SortField::Endpoint, statuses));
    }

    #[test]
    fn search_tries_only_columns_that_could_hold_the_term() {
        let word = sql(search_condition(DbBackend::Sqlite, 1, "images/gen"));
        assert!(
            !word.contains(r#"hex("ip_hash") LIKE"#) && !word.contains("CAST"),
            "{word}"
        );
        assert!(!word.contains(r#""method" IN"#), "{word}");
        assert!(word.contains(r#""query_params" LIKE"#), "{word}");
        // The path: the dictionary's paths that hold the term.
        assert!(
            word.contains(
                r#""endpoint_no" IN (SELECT "id" FROM "endpoint_numbers" WHERE "value" LIKE"#
            ),
            "{word}"
        );
        // The key's name and prefix: the account's labels that hold the term.
        assert!(
            word.contains(
                r#""api_key_label_no" IN (SELECT "id" FROM "api_key_labels" WHERE "account_no" = 1 AND (("name" LIKE"#
            ),
            "{word}"
        );

        let hex = sql(search_condition(DbBackend::Sqlite, 1, "a3F"));
        assert!(
            hex.contains(r#"hex("ip_hash") LIKE"#) && !hex.contains("CAST"),
            "{hex}"
        );

        let digits = sql(search_condition(DbBackend::Sqlite, 1, "50"));
        assert!(
            digits.contains("CAST") && digits.contains(r#"hex("ip_hash") LIKE"#),
            "{digits}"
        );

        let method = sql(search_condition(DbBackend::Sqlite, 1, "os"));
        assert!(method.contains(r#""method" IN ('POST')"#), "{method}");
        let many = sql(search_condition(DbBackend::Sqlite, 1, "t"));
        assert!(
            many.contains(r#"IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS')"#),
            "{many}"
        );
    }

    /// The rows a search reads beyond the index: picked from the id index alone, then read by
    /// their key, whatever else the page asks.
    #[tokio::test]
    async fn sqlite_reads_the_unindexed_rows_by_id_then_by_key() {
        let (_dir, db) = crate::store::test_database().await;
        let filters = [
            LogFilter::default(),
            LogFilter {
                api_key_ids: vec!["k1".into()],
                status_codes: vec![500],
                ..LogFilter::default()
            },
            LogFilter {
                start_micros: Some(1),
                end_micros: Some(1_000_000),
                ..LogFilter::default()
            },
        ];
        let cursor = Cursor {
            value: CursorValue::Int(500),
            id: 7,
        };
        for filter in filters {
            for descending in [true, false] {
                let order = SortOrder {
                    field: SortField::Timestamp,
                    descending,
                };
                let query = LogQuery::new("a", filter.clone(), order).expect("a valid query");
                for after in [None, Some(&cursor)] {
                    let statement = page_select(DbBackend::Sqlite, 1, &query, after, 100)
                        .filter(search_condition(DbBackend::Sqlite, 1, "needle"))
                        .filter(unindexed(DbBackend::Sqlite, 1, 42))
                        .build(DbBackend::Sqlite);
                    let plan = crate::store::test_sqlite_plan(&db, statement).await;
                    let has = |text: &str| plan.iter().any(|line| line.contains(text));
                    // Each row picked is then one probe of the clustered key (or of the key
                    // index, with a key filter), never a walk of the account. (The search's
                    // paths are the few of their dictionary, scanned once.)
                    assert!(
                        has("SEARCH log_entries USING COVERING INDEX idx_log_entries_id (id>?)")
                            && has("(account_no=? AND ts=?)")
                                != has("(account_no=? AND api_key_no=? AND ts=?)")
                            && !has("SCAN log_entries"),
                        "{filter:?}, descending {descending}, after {after:?}: {plan:#?}"
                    );
                }
            }
        }
    }

    /// A database from before rows held key numbers: the migration numbers every row's key
    /// (keeping the key index's planner statistics), pages spell them back, every key
    /// filter still selects by id, and reverting it gives the text back.
    #[tokio::test]
    async fn rows_hold_key_numbers_and_pages_spell_them() {
        use reqlog_migrations::{Migrator, MigratorTrait};
        let (_dir, db) = crate::store::test_database().await;
        // The migration and the three after it (key labels, the search index without them,
        // and rows' path numbers).
        Migrator::down(&db, Some(4)).await.expect("down");
        db.execute_unprepared(
            "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_id, api_key_name, \
             api_key_prefix, method, endpoint, status_code, ip_hash, duration_ms) \
             VALUES (1, 1, 1, 'zeta', 'Z', 'pk_z', 'GET', '/v1', 200, X'ab', 1), \
                    (2, 1, 2, 'alpha', 'A', 'pk_a', 'GET', '/v1', 200, X'ab', 1), \
                    (3, 1, 3, 'zeta', 'Z', 'pk_z', 'GET', '/v1', 200, X'ab', 1); \
             UPDATE log_id_sequence SET last_id = 3; \
             UPDATE sqlite_stat1 SET stat = '7 7 3 1 1' \
             WHERE idx = 'idx_log_entries_account_key_ts'",
        )
        .await
        .expect("rows of the old shape");
        Migrator::up(&db, None).await.expect("up");
        let one = |sql: &'static str| {
            let db = db.clone();
            async move {
                db.query_one(sea_orm::Statement::from_string(DbBackend::Sqlite, sql))
                    .await
                    .expect("a query")
                    .expect("a row")
                    .try_get::<String>("", "v")
                    .expect("text")
            }
        };
        assert_eq!(
            one("SELECT group_concat(typeof(api_key_no)) AS v FROM log_entries").await,
            "integer,integer,integer"
        );
        assert_eq!(
            one("SELECT stat AS v FROM sqlite_stat1 WHERE idx = 'idx_log_entries_account_key_ts'")
                .await,
            "7 7 3 1 1"
        );
        let keys_of = |ids: &[&str]| {
            let filter = LogFilter {
                api_key_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
                ..LogFilter::default()
            };
            let query = LogQuery::new("a", filter, SortOrder::default()).expect("a valid query");
            let db = db.clone();
            async move {
                page(&db, &query, None, 100, true)
                    .await
                    .expect("a page")
                    .rows
                    .into_iter()
                    .map(|row| {
                        // The label migration numbered the names and prefixes too.
                        let label = (row.api_key_name.as_str(), row.api_key_prefix.as_str());
                        let expected = if row.api_key_id == "zeta" {
                            ("Z", "pk_z")
                        } else {
                            ("A", "pk_a")
                        };
                        assert_eq!(label, expected, "row {}", row.id);
                        (row.id, row.api_key_id)
                    })
                    .collect::<Vec<_>>()
            }
        };
        let zeta = |id: i64| (id, "zeta".to_owned());
        let all = vec![zeta(3), (2, "alpha".to_owned()), zeta(1)];
        assert_eq!(keys_of(&[]).await, all);
        assert_eq!(keys_of(&["zeta"]).await, [zeta(3), zeta(1)]);
        assert_eq!(keys_of(&["alpha", "zeta"]).await, all);
        assert_eq!(keys_of(&["nobody"]).await, []);
        assert_eq!(
            keys_of(&["nobody", "alpha"]).await,
            [(2, "alpha".to_owned())]
        );

        Migrator::down(&db, Some(4)).await.expect("down again");
        assert_eq!(
            one("SELECT group_concat(api_key_id) AS v FROM (SELECT api_key_id FROM log_entries ORDER BY id)")
                .await,
            "zeta,alpha,zeta"
        );
    }

    /// PostgreSQL joins the paths behind `OFFSET 0` (see [`join_paths`]); SQLite directly.
    #[test]
    fn a_sort_by_path_joins_the_dictionary_behind_a_fence_on_postgres() {
        let order = SortOrder {
            field: SortField::Endpoint,
            descending: false,
        };
        let query = LogQuery::new("a", LogFilter::default(), order).expect("a valid query");
        let cursor = Cursor {
            value: CursorValue::Text("/v1".into()),
            id: 7,
        };
        for after in [None, Some(&cursor)] {
            let select = |backend| page_select(backend, 1, &query, after, 100).into_query();
            let postgres =
                select(DbBackend::Postgres).to_string(sea_orm::sea_query::PostgresQueryBuilder);
            assert!(
                postgres.contains(
                    r#"INNER JOIN (SELECT "id", "value" FROM "endpoint_numbers" OFFSET 0) AS "path""#
                ) && postgres.contains(r#"ORDER BY "path"."value" ASC"#),
                "{postgres}"
            );
            let sqlite =
                select(DbBackend::Sqlite).to_string(sea_orm::sea_query::SqliteQueryBuilder);
            assert!(
                sqlite.contains(r#"INNER JOIN "endpoint_numbers" AS "path""#)
                    && sqlite.contains(r#"ORDER BY "path"."value" ASC"#),
                "{sqlite}"
            );
        }
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("a%b_c\\d"), r"%a\%b\_c\\d%");
    }
}

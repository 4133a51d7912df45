//! The search index, kept off the ingest path, on both backends.
//!
//! A trigram index written by every insert costs several times the insert (measured on
//! PostgreSQL: 100k rows 5.3 s without a GIN index, 21.9–23.5 s with, pending list or not;
//! the issue measured SQLite at 10k rows/s with three indexes, 3k with a trigram index), so
//! the ingest transaction does not touch it. [`index_pending`] copies each new row's
//! free-text columns into `log_search` in the background: on PostgreSQL a table with a
//! `gin_trgm_ops` index over the columns joined by U+0001 ([`DOC_SQL`]), on SQLite a
//! contentless FTS5 trigram table keyed by the row's id, a column of it for each
//! ([`SQLITE_COLUMNS`]). Every id up to the watermark
//! `search_indexed_through` (in `settings`) is in `log_search`; rows above it (the newest, not
//! yet indexed) are found by id and searched by walking them, so a query always sees every
//! committed row. On SQLite a purge or sweep queues its indexed rows in
//! `log_search_removals`, and the indexer's chunks drop their postings once no purge or
//! sweep is running ([`drop_removed_sqlite`], [`DeletesRunning`]); a posting of a deleted row
//! names an id that no longer exists, and every candidate is re-checked against
//! `log_entries`.
//!
//! The watermark is safe because ids only become final at commit. PostgreSQL: every ingest
//! transaction holds [`INGEST_BARRIER_LOCK`] shared (taken with its key locks, in the same
//! statement), and the indexer reads `MAX(id)` while holding it exclusively, when no ingest
//! transaction is in flight, so no lower id can commit later. SQLite: the indexer holds the
//! database's single write lock, so every id the sequence has handed out is committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

use super::StoreError;
use super::writer::{Writer, WriterDb, WriterTxn};

/// The advisory lock ingest transactions share and the indexer takes alone.
pub const INGEST_BARRIER_LOCK: i64 = 0x7265_716c_6f67_2000;
/// The advisory lock that keeps two replicas (or a replica's background task and a direct
/// call) from indexing the same rows at once.
const INDEXER_LOCK: i64 = 0x7265_716c_6f67_2001;
/// The settings row holding the highest id known to be in `log_search`.
pub const WATERMARK: &str = "search_indexed_through";
/// Rows one PostgreSQL indexing transaction copies.
const CHUNK_ROWS: i64 = 5_000;
/// Rows one SQLite indexing transaction copies: a sixteenth of the rows waiting, within
/// these bounds. It runs as a job of the writer and every caller waits meanwhile (FTS5
/// inserts run at ~100k rows/s), so it copies little when little waits: unary ingest at 64
/// callers made a backlog of ~5,000 rows a second, and one chunk of it all took the p99 to
/// 39–48 ms, 500-row chunks to 24–25 ms. Under batch ingest the backlog grows until a sixteenth
/// of it matches a group, so the indexer keeps up (fixed 2,000-row chunks fell behind: 7.9 s
/// of backlog after 1M rows).
const SQLITE_CHUNK_ROWS: std::ops::RangeInclusive<i64> = 500..=10_000;
/// The share of the waiting rows one chunk copies, as its divisor.
const SQLITE_BACKLOG_SHARE: i64 = 16;
/// Deleted rows whose postings one SQLite chunk drops: every ingest caller waits for the
/// chunk, so it stays shorter than a sweep step (a 1,000-row delete).
const SQLITE_REMOVAL_ROWS: i64 = 500;
/// Rows per FTS5 page merged: each chunk merges about what it writes (500 pages per 10,000
/// rows), so merging keeps pace with copying at any chunk size.
const SQLITE_ROWS_PER_MERGE_PAGE: i64 = 20;

/// A `log_entries` row's path (SQL): rows hold its number in `endpoint_numbers`, and the
/// search index copies the text. One point lookup a row in a table of a few pages.
macro_rules! row_path_sql {
    () => {
        "(SELECT value FROM endpoint_numbers WHERE endpoint_numbers.id = log_entries.endpoint_no)"
    };
}

/// PostgreSQL: the text `log_search.doc` holds for a row of `log_entries` (SQL over its
/// columns). Every searched free-text column is a substring of it, so a row whose column
/// contains the term has a `doc` that contains it too (`pg_trgm` takes trigrams within words,
/// so none spans two columns).
/// The key's name and prefix are not in it: a search finds the rows of a label that holds
/// the term through the key index (`store::labels::matching_keys`).
pub const DOC_SQL: &str = concat!(
    row_path_sql!(),
    " || chr(1) || COALESCE(query_params, '') || chr(1) || COALESCE(error_code, '')"
);

/// SQLite: the searched free-text columns, as `log_search` and `log_search_removals` name
/// them (`log_entries` holds the path as a number: [`SQLITE_ROW_TEXTS`]). Each is a column of the FTS5 table: the trigram
/// tokenizer knows no separators, and joined into one text the columns added ~12 trigrams a
/// row that span two of them and never match (migration `m20261207_000009`).
/// The key's name and prefix are not among them (see [`DOC_SQL`]; migration
/// `m20261207_000014`).
pub const SQLITE_COLUMNS: &str = "endpoint, query_params, error_code";

/// SQLite: [`SQLITE_COLUMNS`]' values of a `log_entries` row, in the same order.
pub const SQLITE_ROW_TEXTS: &str = concat!(row_path_sql!(), ", query_params, error_code");

/// The FTS5 query (SQLite) for rows whose text may contain `term`: the AND of the term's
/// distinct trigrams, each a quoted token (the table keeps no positions, so no phrase
/// queries). The tokenizer folds case on both sides. A superset of the matches, which the
/// caller re-checks; `None` under three characters.
pub fn trigram_query(term: &str) -> Option<String> {
    let trigrams = quoted_trigrams(term);
    (!trigrams.is_empty()).then(|| trigrams.join(" AND "))
}

/// The term's distinct trigrams, each quoted as an FTS5 string.
fn quoted_trigrams(term: &str) -> Vec<String> {
    let chars: Vec<char> = term.chars().collect();
    let mut trigrams: Vec<String> = chars
        .windows(3)
        .map(|window| window.iter().collect::<String>())
        .collect();
    trigrams.sort_unstable();
    trigrams.dedup();
    trigrams
        .iter()
        .map(|trigram| format!("\"{}\"", trigram.replace('"', "\"\"")))
        .collect()
}

/// Orders a PostgreSQL transaction that deletes rows against the indexer: it waits for a
/// running indexer chunk, and no chunk starts until it ends. Without it a chunk that read a
/// row before the delete committed copied it after the delete had removed the row's (not yet
/// existing) entry, and the copy of a purged row's text stayed in `log_search`.
pub async fn exclude_indexer(txn: &impl ConnectionTrait) -> Result<(), StoreError> {
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock_shared({INDEXER_LOCK})"
    ))
    .await?;
    Ok(())
}

/// Copies rows committed since the last run into `log_search`; returns how many (another
/// replica may have copied some of them). When it returns, every row committed before the
/// call is in the index, and (SQLite) every row deleted before it is out of it.
pub async fn index_pending(db: &DatabaseConnection) -> Result<u64, StoreError> {
    match db.get_database_backend() {
        DbBackend::Postgres => index_pending_postgres(db).await,
        _ => index_pending_sqlite(db).await,
    }
}

async fn index_pending_sqlite(db: &DatabaseConnection) -> Result<u64, StoreError> {
    let mut copied = 0;
    loop {
        let chunk = index_chunk_sqlite(&WriterDb::Pool(db.clone()), true).await?;
        copied += chunk.inserted;
        if !chunk.more {
            return Ok(copied);
        }
    }
}

/// Rows the next SQLite chunk copies when `waiting` rows are not indexed yet.
fn sqlite_chunk_rows(waiting: i64) -> i64 {
    (waiting / SQLITE_BACKLOG_SHARE).clamp(*SQLITE_CHUNK_ROWS.start(), *SQLITE_CHUNK_ROWS.end())
}

/// What one SQLite indexing chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Chunk {
    /// Rows copied into the index.
    inserted: u64,
    /// Whether rows or (when it dropped removals) queued removals were left for another
    /// chunk when it committed.
    more: bool,
}

/// Copies the next chunk of unindexed rows and (when `drop_removed`) drops the next chunk of
/// queued removals in one write transaction.
async fn index_chunk_sqlite(db: &WriterDb, drop_removed: bool) -> Result<Chunk, StoreError> {
    let backend = DbBackend::Sqlite;
    let txn = db.begin_write().await?;
    let from = watermark(&txn).await?;
    let last = last_id_sqlite(&txn).await?;
    let chunk = sqlite_chunk_rows(last - from);
    let upto = (from + chunk).min(last).max(from);
    let removed = if drop_removed {
        drop_removed_sqlite(&txn, SQLITE_REMOVAL_ROWS).await?
    } else {
        0
    };
    // Merges segments left by earlier chunks and deletes (the table's automerge is off), as
    // much as a full chunk writes even when fewer rows wait: merging only in proportion to
    // the rows copied and dropped made chunks of up to 860 ms while a sweep's postings were
    // dropped (300k rows).
    txn.execute_unprepared(&format!(
        "INSERT INTO log_search (log_search, rank) VALUES ('merge', {})",
        (chunk + removed) / SQLITE_ROWS_PER_MERGE_PAGE
    ))
    .await?;
    let inserted = if upto > from {
        let inserted = txn
            .execute(Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO log_search (rowid, {SQLITE_COLUMNS}) \
                     SELECT id, {SQLITE_ROW_TEXTS} FROM log_entries WHERE id > ? AND id <= ?"
                ),
                [from.into(), upto.into()],
            ))
            .await?
            .rows_affected();
        super::usage::fold_through_sqlite(&txn, upto).await?;
        set_watermark(&txn, upto).await?;
        inserted
    } else {
        0
    };
    // The claims of as many rows, on the connection the writer holds (`claims`).
    let claims_left = match &txn {
        WriterTxn::Held(held) => super::claims::fold(held, chunk).await?,
        WriterTxn::Pool(_) => false,
    };
    txn.commit().await?;
    Ok(Chunk {
        inserted,
        more: upto < last || removed == SQLITE_REMOVAL_ROWS || claims_left,
    })
}

/// The last id SQLite's sequence handed out; within a write transaction, every id up to it
/// is committed or gone.
pub async fn last_id_sqlite(txn: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let last = txn
        .query_one(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT last_id FROM log_id_sequence WHERE name = 'log_entries'",
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "last_id"))
        .transpose()?;
    Ok(last.unwrap_or(0))
}

/// Drops the postings of up to `limit` deleted rows, the oldest queued first, from the FTS5
/// index and the queue; returns how many. Purge and sweep queue them (`admin::delete_batch`)
/// because FTS5's 'delete' of a contentless table re-tokenizes the row's text, which was
/// 37–47% of an SQLite purge's time. Until then a deleted row's postings name an id that no
/// longer exists, and every candidate is re-checked against `log_entries`.
async fn drop_removed_sqlite(txn: &impl ConnectionTrait, limit: i64) -> Result<i64, StoreError> {
    let backend = DbBackend::Sqlite;
    // `seq` only grows and is taken from the left, so a range is the oldest `limit` rows.
    let below = txn
        .query_one(Statement::from_sql_and_values(
            backend,
            "SELECT MIN(seq) + ? AS below FROM log_search_removals",
            [limit.into()],
        ))
        .await?
        .map(|row| row.try_get::<Option<i64>>("", "below"))
        .transpose()?
        .flatten();
    let Some(below) = below else {
        return Ok(0);
    };
    let dropped = txn
        .execute(Statement::from_sql_and_values(
            backend,
            format!(
                "INSERT INTO log_search (log_search, rowid, {SQLITE_COLUMNS}) \
                 SELECT 'delete', id, {SQLITE_COLUMNS} FROM log_search_removals \
                 WHERE seq < ? ORDER BY seq"
            ),
            [below.into()],
        ))
        .await?
        .rows_affected();
    txn.execute(Statement::from_sql_and_values(
        backend,
        "DELETE FROM log_search_removals WHERE seq < ?",
        [below.into()],
    ))
    .await?;
    Ok(i64::try_from(dropped).unwrap_or(limit))
}

async fn index_pending_postgres(db: &DatabaseConnection) -> Result<u64, StoreError> {
    let backend = DbBackend::Postgres;
    // The barrier: while held exclusively no ingest transaction is open, so every id up to
    // this MAX(id) is committed or will never be.
    let target = {
        let txn = db.begin().await?;
        txn.execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock({INGEST_BARRIER_LOCK})"
        ))
        .await?;
        let row = txn
            .query_one(Statement::from_string(
                backend,
                "SELECT COALESCE(MAX(id), 0) AS id FROM log_entries",
            ))
            .await?;
        txn.commit().await?;
        match row {
            Some(row) => row.try_get::<i64>("", "id")?,
            None => 0,
        }
    };
    let mut copied = 0;
    loop {
        let txn = db.begin().await?;
        // Waits out another replica's chunk (at most one chunk long), then goes on where it
        // stopped: on return every row committed before the call is indexed.
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({INDEXER_LOCK})"))
            .await?;
        let from = watermark(&txn).await?;
        if from >= target {
            return Ok(copied);
        }
        let upto = (from + CHUNK_ROWS).min(target);
        let inserted = txn
            .execute(Statement::from_sql_and_values(
                backend,
                format!(
                    "INSERT INTO log_search (id, account_no, ts, doc) \
                     SELECT id, account_no, ts, {DOC_SQL} FROM log_entries \
                     WHERE id > $1 AND id <= $2 ON CONFLICT (id) DO NOTHING"
                ),
                [from.into(), upto.into()],
            ))
            .await?
            .rows_affected();
        set_watermark(&txn, upto).await?;
        txn.commit().await?;
        copied += inserted;
    }
}

/// The highest id known to be in `log_search` (0 before the first run).
pub async fn watermark(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    super::settings::integer(db, WATERMARK).await
}

async fn set_watermark(db: &impl ConnectionTrait, upto: i64) -> Result<(), StoreError> {
    super::settings::set_integer(db, WATERMARK, upto).await
}

/// Whether a purge or sweep is deleting rows. SQLite's background indexer leaves the queued
/// removals alone meanwhile: its chunks are writer jobs, so dropping postings during a purge
/// alternated with the purge's own steps and made it little faster than dropping them in the
/// steps (a profile of a 100k-row purge: FTS5 merges and writes beside the deletes).
#[derive(Debug, Clone, Default)]
pub struct DeletesRunning(Arc<AtomicUsize>);

impl DeletesRunning {
    /// Marks a purge or sweep as running until the guard is dropped.
    pub fn enter(&self) -> DeletesRunningGuard {
        self.0.fetch_add(1, AtomicOrdering::SeqCst);
        DeletesRunningGuard(Arc::clone(&self.0))
    }

    fn any(&self) -> bool {
        self.0.load(AtomicOrdering::SeqCst) > 0
    }
}

/// A running purge or sweep (see [`DeletesRunning::enter`]).
#[derive(Debug)]
pub struct DeletesRunningGuard(Arc<AtomicUsize>);

impl Drop for DeletesRunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, AtomicOrdering::SeqCst);
    }
}

/// Indexes every `interval` until the task is dropped. On SQLite each chunk runs as a job of
/// the writer, between ingest groups and on their connection ([`Writer::write`]): on a
/// connection of its own the indexer would wait for
/// the write lock, which the writer takes again right after each commit, and fall ever
/// further behind under sustained ingest. Queued removals wait while `deletes` are running.
pub async fn index_forever(
    db: DatabaseConnection,
    writer: Writer,
    interval: Duration,
    deletes: DeletesRunning,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let indexed = match db.get_database_backend() {
            DbBackend::Postgres => index_pending(&db).await,
            _ => index_through_writer(&writer, &deletes).await,
        };
        match indexed {
            Ok(0) => {}
            Ok(rows) => tracing::debug!(rows, "search index caught up"),
            Err(error) => tracing::warn!(%error, "search indexing failed; retrying"),
        }
    }
}

/// Indexes until a chunk finds nothing more to do. It does not chase rows committed after
/// that: under steady unary ingest every group left a few new rows, and a chunk ran after
/// each group, a commit of its own that every caller waited for. The next tick takes them.
async fn index_through_writer(
    writer: &Writer,
    deletes: &DeletesRunning,
) -> Result<u64, StoreError> {
    let mut copied = 0;
    loop {
        let drop_removed = !deletes.any();
        let chunk = writer
            .write(move |db| async move { index_chunk_sqlite(&db, drop_removed).await })
            .await?;
        copied += chunk.inserted;
        if !chunk.more {
            return Ok(copied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_a_sixteenth_of_the_backlog_within_bounds() {
        // A second of unary ingest waits in 500-row chunks; batch ingest in larger ones.
        assert_eq!(sqlite_chunk_rows(0), 500);
        assert_eq!(sqlite_chunk_rows(5_000), 500);
        assert_eq!(sqlite_chunk_rows(64_000), 4_000);
        assert_eq!(sqlite_chunk_rows(5_000_000), 10_000);
        // Each merges about what it writes, as 500 pages per 10,000 rows did.
        assert_eq!(sqlite_chunk_rows(0) / SQLITE_ROWS_PER_MERGE_PAGE, 25);
        assert_eq!(
            sqlite_chunk_rows(i64::MAX) / SQLITE_ROWS_PER_MERGE_PAGE,
            500
        );
    }

    #[test]
    fn a_term_becomes_the_and_of_its_distinct_trigrams() {
        assert_eq!(
            trigram_query("Needle").as_deref(),
            Some(r#""Nee" AND "dle" AND "edl" AND "eed""#)
        );
        assert_eq!(trigram_query("aaaa").as_deref(), Some(r#""aaa""#));
        // Quotes inside a trigram are doubled, as FTS5 strings want.
        assert_eq!(trigram_query(r#"a"b"#).as_deref(), Some(r#""a""b""#));
        // Trigrams are of characters, not bytes.
        assert_eq!(trigram_query("日本語").as_deref(), Some(r#""日本語""#));
        assert_eq!(trigram_query("ab"), None);
    }

    #[tokio::test]
    async fn sqlite_indexing_moves_the_watermark_to_the_last_id() {
        let (_dir, db) = crate::store::test_database().await;
        assert_eq!(index_pending(&db).await.unwrap(), 0);
        for statement in [
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO endpoint_numbers (id, value) VALUES (1, '/v1/needle'), (2, '/v1/other'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES (1, 1, 1, 1, 1, 'GET', 1, 200, X'ab', 1), \
                    (2, 1, 2, 1, 1, 'GET', 2, 200, X'ab', 1)",
            "UPDATE log_id_sequence SET last_id = 2",
        ] {
            db.execute_unprepared(statement).await.unwrap();
        }
        assert_eq!(index_pending(&db).await.unwrap(), 2);
        assert_eq!(watermark(&db).await.unwrap(), 2);
        assert_eq!(index_pending(&db).await.unwrap(), 0);
        let found = db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Sqlite,
                "SELECT rowid AS id FROM log_search WHERE log_search MATCH ?",
                [trigram_query("NEEDLE").unwrap().into()],
            ))
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].try_get::<i64>("", "id").unwrap(), 1);
    }

    #[tokio::test]
    async fn a_sqlite_chunk_says_whether_work_is_left() {
        let (_dir, db) = crate::store::test_database().await;
        // On the connection the writer holds, as the server runs it.
        let file = crate::store::sqlite::file(&db).await.unwrap().unwrap();
        let held = WriterDb::Held(Arc::new(
            crate::store::sqlite::HeldSqlite::open(file).await.unwrap(),
        ));
        let chunk = |_: &DatabaseConnection| {
            let held = held.clone();
            async move {
                let chunk = index_chunk_sqlite(&held, true).await.unwrap();
                (chunk.inserted, chunk.more)
            }
        };
        // Nothing to do.
        assert_eq!(chunk(&db).await, (0, false));
        db.execute_unprepared(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) \
             INSERT INTO endpoint_numbers (id, value) SELECT i, '/v1/row' || i FROM n; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 600) \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             SELECT i, 1, i, 1, 1, 'GET', i, 200, X'ab', 1 FROM n",
        )
        .await
        .unwrap();
        db.execute_unprepared(
            "UPDATE log_id_sequence SET last_id = 600; \
             INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO api_key_numbers (id, value) VALUES (1, 'k')",
        )
        .await
        .unwrap();
        // 600 waiting: a chunk of 500, then the rest, and the second says it caught up.
        assert_eq!(chunk(&db).await, (500, true));
        assert_eq!(chunk(&db).await, (100, false));
        assert_eq!(watermark(&db).await.unwrap(), 600);
        // A full chunk of removals may have left some; one that drops fewer has not.
        crate::store::admin::delete_key_rows(&WriterDb::Pool(db.clone()), "a", "k", 600)
            .await
            .unwrap();
        assert_eq!(queued_removals(&db).await, 600);
        assert_eq!(chunk(&db).await, (0, true));
        assert_eq!(queued_removals(&db).await, 100);
        assert_eq!(chunk(&db).await, (0, false));
        assert_eq!(queued_removals(&db).await, 0);
        assert_index_consistent(&db).await;
    }

    #[test]
    fn deletes_run_until_every_guard_is_dropped() {
        let deletes = DeletesRunning::default();
        assert!(!deletes.any());
        let purge = deletes.enter();
        let sweep = deletes.clone().enter();
        drop(purge);
        assert!(deletes.any());
        drop(sweep);
        assert!(!deletes.any());
    }

    #[tokio::test]
    async fn sqlite_deleted_rows_leave_the_index_on_the_next_chunk() {
        let (_dir, db) = crate::store::test_database().await;
        db.execute_unprepared(
            "INSERT OR IGNORE INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'name', 'pk_'); \
             INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO api_key_numbers (id, value) VALUES (1, 'gone'), (2, 'kept'); \
             INSERT INTO endpoint_numbers (id, value) VALUES (1, '/v1/needle'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, status_code, ip_hash, duration_ms) \
             VALUES (1, 1, 1, 1, 1, 'GET', 1, 200, X'ab', 1), \
                    (2, 1, 2, 2, 1, 'GET', 1, 200, X'ab', 1)",
        )
        .await
        .unwrap();
        db.execute_unprepared("UPDATE log_id_sequence SET last_id = 2")
            .await
            .unwrap();
        assert_eq!(index_pending(&db).await.unwrap(), 2);
        assert_eq!(
            crate::store::admin::delete_key_rows(&WriterDb::Pool(db.clone()), "a", "gone", 100)
                .await
                .unwrap(),
            1
        );
        // The delete only queued the row: its posting stays until the indexer's next chunk.
        assert_eq!(matches(&db, "needle").await, [1, 2]);
        assert_eq!(queued_removals(&db).await, 1);
        // While a purge or sweep runs, the background indexer's chunks leave the queue alone.
        assert_eq!(
            index_chunk_sqlite(&WriterDb::Pool(db.clone()), false)
                .await
                .unwrap(),
            Chunk {
                inserted: 0,
                more: false
            }
        );
        assert_eq!(queued_removals(&db).await, 1);
        assert_eq!(index_pending(&db).await.unwrap(), 0);
        assert_eq!(matches(&db, "needle").await, [2]);
        assert_eq!(queued_removals(&db).await, 0);
        assert_index_consistent(&db).await;
    }

    /// The trigrams of each text, folded to lower case as the tokenizer folds them.
    fn trigrams_of(texts: &[&str]) -> std::collections::BTreeSet<String> {
        texts
            .iter()
            .flat_map(|text| {
                let chars: Vec<char> = text.to_lowercase().chars().collect();
                chars
                    .windows(3)
                    .map(|window| window.iter().collect::<String>())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Every term the FTS5 index holds (`fts5vocab`).
    async fn indexed_terms(db: &DatabaseConnection) -> std::collections::BTreeSet<String> {
        db.execute_unprepared(
            "CREATE VIRTUAL TABLE IF NOT EXISTS temp.log_search_terms \
             USING fts5vocab(main, log_search, 'row')",
        )
        .await
        .unwrap();
        db.query_all(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT term FROM temp.log_search_terms",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<String>("", "term").unwrap())
        .collect()
    }

    async fn matches(db: &DatabaseConnection, term: &str) -> Vec<i64> {
        db.query_all(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            "SELECT rowid AS id FROM log_search WHERE log_search MATCH ? ORDER BY rowid",
            [trigram_query(term).unwrap().into()],
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get::<i64>("", "id").unwrap())
        .collect()
    }

    #[tokio::test]
    async fn sqlite_indexes_each_column_apart_and_nothing_across_two() {
        let (_dir, db) = crate::store::test_database().await;
        db.execute_unprepared(
            "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO api_key_labels (id, account_no, api_key_no, name, prefix) \
             VALUES (1, 1, 1, 'Billing', 'pk_live'), (2, 1, 1, 'Reports', 'pk_test'); \
             INSERT INTO endpoint_numbers (id, value) VALUES (1, '/v1/charges'), (2, '/v1/export'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_no, api_key_label_no, \
             method, endpoint_no, query_params, status_code, error_code, \
             ip_hash, duration_ms) \
             VALUES (1, 1, 1, 1, 1, 'GET', 1, 'limit=5', \
                     402, 'CARD_DECLINED', X'ab', 1), \
                    (2, 1, 2, 1, 2, 'GET', 2, NULL, \
                     200, NULL, X'ab', 1); \
             UPDATE log_id_sequence SET last_id = 2",
        )
        .await
        .unwrap();
        assert_eq!(index_pending(&db).await.unwrap(), 2);
        // Exactly the columns' own trigrams: none spans two columns, and the key's name and
        // prefix are not indexed (a search reaches them through the key's label).
        assert_eq!(
            indexed_terms(&db).await,
            trigrams_of(&["/v1/charges", "limit=5", "CARD_DECLINED", "/v1/export"])
        );
        for (term, rows) in [
            ("billing", vec![]),
            ("PK_", vec![]),
            ("export", vec![2]),
            ("imit=", vec![1]),
            ("declined", vec![1]),
        ] {
            assert_eq!(matches(&db, term).await, rows, "{term}");
        }
    }

    #[tokio::test]
    async fn the_sqlite_column_migration_indexes_every_row_again() {
        use reqlog_migrations::{Migrator, MigratorTrait};
        let (_dir, db) = crate::store::test_database().await;
        // This migration and the six after it.
        Migrator::down(&db, Some(7)).await.expect("down");
        // A database from before the migration: two rows indexed as one text, one of them
        // deleted and queued for the indexer.
        db.execute_unprepared(
            "INSERT INTO account_numbers (id, value) VALUES (1, 'a'); \
             INSERT INTO log_entries (id, account_no, ts, api_key_id, api_key_name, \
             api_key_prefix, method, endpoint, status_code, ip_hash, duration_ms) \
             VALUES (2, 1, 2, 'k', 'name', 'pk_', 'GET', '/v1/needle', 200, X'ab', 1); \
             UPDATE log_id_sequence SET last_id = 2; \
             INSERT INTO log_search (rowid, doc) VALUES \
               (1, 'name' || char(1) || 'pk_' || char(1) || '/v1/gone' || char(1) || char(1)), \
               (2, 'name' || char(1) || 'pk_' || char(1) || '/v1/needle' || char(1) || char(1)); \
             INSERT INTO log_search_removals (id, doc) VALUES \
               (1, 'name' || char(1) || 'pk_' || char(1) || '/v1/gone' || char(1) || char(1)); \
             INSERT INTO settings (name, value) VALUES ('search_indexed_through', '2')",
        )
        .await
        .unwrap();
        Migrator::up(&db, None).await.expect("up");
        assert_eq!(watermark(&db).await.unwrap(), 0, "every row waits again");
        assert_eq!(queued_removals(&db).await, 0);
        assert_eq!(matches(&db, "needle").await, Vec::<i64>::new());
        assert_eq!(index_pending(&db).await.unwrap(), 1);
        assert_eq!(matches(&db, "needle").await, [2]);
        assert_eq!(matches(&db, "gone").await, Vec::<i64>::new());
        assert_index_consistent(&db).await;
    }

    async fn assert_index_consistent(db: &DatabaseConnection) {
        db.execute_unprepared(
            "INSERT INTO log_search (log_search, rank) VALUES ('integrity-check', 0)",
        )
        .await
        .expect("the FTS5 index is consistent");
    }

    async fn queued_removals(db: &DatabaseConnection) -> i64 {
        crate::store::test_count(db, "log_search_removals").await
    }
}

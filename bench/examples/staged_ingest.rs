//! Batch ingest under three storage designs, on SQLite alone: a design experiment for
//! PERFORMANCE.md's goal W1 (batch ingest at >= 0.40 of a bare-table insert, with every
//! structure the service keeps built).
//!
//! BENCHMARKS.md ("Where batch ingest's time goes") found the service's writer limited by the
//! pages it writes: the account-clustered `log_entries` alone takes ingest to 0.21–0.25 of the
//! bare table, because a 1,000-row group lands at up to 1,000 accounts' right edges, and the
//! other structures take it to 0.08. This program asks whether appending first and building
//! the per-account structures later, in large sorted batches, closes that gap. It drives
//! SQLite directly (no gRPC, no server, one thread) with the benchmark's own generated rows,
//! each design into a fresh file:
//!
//! - `bare`: `log_entries`' columns in a rowid table with no other index (W1's baseline),
//!   run first and last; the ratios are against the mean of the two. `bare-bench` is the
//!   same with the benchmark's own DDL, `id BIGINT PRIMARY KEY`, which SQLite keeps as a
//!   separate unique index on `id`: shown for reference.
//! - `synchronous`: the service's schema and, per 1,000-row transaction, the statements its
//!   writer runs today (`store/writer.rs`), plus the search indexer (`store/search.rs`) run
//!   whenever 10,000 rows are waiting for it.
//! - `staged`: each ingest transaction checks request ids (against `request_ids` and the
//!   inbox) and appends to an inbox table in arrival order; whenever the inbox holds
//!   `--mover-rows` rows, a mover transaction builds `log_entries`, `request_ids`,
//!   `usage_stats` and the search index from it, each in its own key order, and empties it.
//!
//! Every design uses the service's connection settings (WAL, `synchronous=FULL`, 64 MiB page
//! cache) and one transaction per 1,000 rows. Only database work is timed; generating rows
//! and converting them (in the service: gRPC, validation, IP hashing) is left out of every
//! design alike. Indexer and mover transactions run between ingest transactions on the same
//! thread and count in the total. SQLite checkpoints the WAL itself (every 1,000 pages, inside
//! the commit that crosses it) in every design, where the service checkpoints beside its
//! writer: on this 2-core machine that work competes for the same cores either way.
//!
//! ```text
//! cargo run --release -p reqlog-bench --example staged_ingest -- --rows 200000
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use reqlog_client::pb;
use rusqlite::{Connection, OptionalExtension, Statement, ToSql, Transaction};
use sha2::{Digest, Sha256};

// The benchmark's generator; this program uses none of the workloads' constants.
#[allow(dead_code)]
#[path = "../src/data.rs"]
mod data;

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Rows per ingest transaction: one `RecordRequests` call of the benchmark.
const BATCH_ROWS: usize = 1_000;
/// Rows one indexer transaction copies (the largest of `search::SQLITE_CHUNK_ROWS`, what the
/// service copies under batch ingest); also the backlog at which the synchronous design runs
/// the indexer.
const INDEXER_CHUNK_ROWS: i64 = 10_000;
/// FTS5 pages each indexer transaction merges first (a page per
/// `search::SQLITE_ROWS_PER_MERGE_PAGE` rows of the chunk).
const INDEXER_MERGE_PAGES: i64 = 500;
/// Keys one request-id lookup carries (`writer::LOOKUP_CHUNK_KEYS`).
const LOOKUP_CHUNK_KEYS: usize = 100;
/// Rows one multi-row INSERT carries (`writer::INSERT_CHUNK_ROWS`).
const INSERT_CHUNK_ROWS: usize = 1_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;
/// The settings row naming the highest id in `log_search` (`search::WATERMARK`).
const WATERMARK: &str = "search_indexed_through";

/// The service's SQLite schema as its migrations create it (`.schema` of a database made by
/// `reqlog serve`), without the migrations' own table and the seeded planner statistics.
const SERVICE_SCHEMA: &str = r#"
CREATE TABLE log_entries (
    id INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    request_id TEXT NULL,
    api_key_id TEXT NOT NULL,
    api_key_name TEXT NOT NULL,
    api_key_prefix TEXT NOT NULL,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    query_params TEXT NULL,
    status_code INTEGER NOT NULL,
    error_code TEXT NULL,
    ip_hash TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (account_id, ts, id)
) WITHOUT ROWID;
CREATE TABLE log_id_sequence (
    name TEXT NOT NULL PRIMARY KEY,
    last_id INTEGER NOT NULL
);
CREATE INDEX "idx_log_entries_account_key_ts" ON "log_entries" ("account_id", "api_key_id", "ts", "id");
CREATE TABLE request_ids (
    day INTEGER NOT NULL,
    account_id TEXT NOT NULL,
    request_id TEXT NOT NULL,
    log_id INTEGER NOT NULL,
    PRIMARY KEY (day, account_id, request_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS "api_keys" ( "account_id" text NOT NULL, "api_key_id" text NOT NULL, "name" text NOT NULL, "prefix" text NOT NULL, "status" text NOT NULL, "expires_at" bigint NULL, "deleted_at" bigint NULL, "updated_at" bigint NOT NULL, PRIMARY KEY ("account_id", "api_key_id") );
CREATE TABLE IF NOT EXISTS "accounts" ( "account_id" text NOT NULL PRIMARY KEY, "plan" text NOT NULL, "retention_days_override" integer NULL, "updated_at" bigint NOT NULL );
CREATE TABLE IF NOT EXISTS "usage_stats" ( "account_id" text NOT NULL, "bucket_start" bigint NOT NULL, "api_key_id" text NOT NULL, "endpoint" text NOT NULL, "method" text NOT NULL, "status_code" integer NOT NULL, "request_count" bigint NOT NULL, "error_count" bigint NOT NULL, "total_duration_ms" bigint NOT NULL, "max_duration_ms" bigint NOT NULL, PRIMARY KEY ("account_id", "bucket_start", "api_key_id", "endpoint", "method", "status_code") );
CREATE TABLE IF NOT EXISTS "settings" ( "name" text NOT NULL PRIMARY KEY, "value" text NOT NULL );
CREATE TABLE IF NOT EXISTS "activity" ( "id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "at" bigint NOT NULL, "principal" text NOT NULL, "action" text NOT NULL, "account_id" text NOT NULL, "api_key_id" text NOT NULL, "rows_affected" bigint NOT NULL, "detail" text NOT NULL );
CREATE INDEX "idx_activity_account_id" ON "activity" ("account_id", "id");
CREATE INDEX idx_log_entries_id ON log_entries (id);
CREATE VIRTUAL TABLE log_search USING fts5(
    doc,
    tokenize = 'trigram',
    content = '',
    detail = none
);
INSERT INTO log_id_sequence (name, last_id) VALUES ('log_entries', 0);
INSERT INTO log_search (log_search, rank) VALUES ('automerge', 0);
"#;

/// The staged design's inbox: rows in arrival order (the id is the rowid, so each append
/// lands at the right edge), and one unique index so that a request id not moved yet is
/// still found (and cannot be stored twice).
const INBOX_SCHEMA: &str = "
CREATE TABLE log_inbox (
    id INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    request_id TEXT NULL,
    api_key_id TEXT NOT NULL,
    api_key_name TEXT NOT NULL,
    api_key_prefix TEXT NOT NULL,
    method TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    query_params TEXT NULL,
    status_code INTEGER NOT NULL,
    error_code TEXT NULL,
    ip_hash TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    duration_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX idx_log_inbox_request ON log_inbox (account_id, request_id);
";

/// The columns of a stored row, in the order the writer's INSERT names them.
const LOG_COLUMNS: &str = "id, account_id, ts, request_id, api_key_id, api_key_name, \
    api_key_prefix, method, endpoint, query_params, status_code, error_code, ip_hash, \
    user_agent, duration_ms";

/// The text `log_search` indexes for a row (`search::doc_sql` for SQLite).
const DOC_SQL: &str = "api_key_name || char(1) || api_key_prefix || char(1) || endpoint \
    || char(1) || COALESCE(query_params, '') || char(1) || COALESCE(error_code, '')";

/// What an upsert into `usage_stats` adds to an existing counter row (`upsert_usage`).
const USAGE_UPSERT: &str = "ON CONFLICT (account_id, bucket_start, api_key_id, endpoint, \
    method, status_code) DO UPDATE SET \
    request_count = usage_stats.request_count + excluded.request_count, \
    error_count = usage_stats.error_count + excluded.error_count, \
    total_duration_ms = usage_stats.total_duration_ms + excluded.total_duration_ms, \
    max_duration_ms = MAX(usage_stats.max_duration_ms, excluded.max_duration_ms)";

/// Batch ingest on SQLite under three storage designs, same rows, same durability.
#[derive(Debug, Parser)]
struct Cli {
    /// Rows each design ingests.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Where the databases go (a fresh directory inside it, removed at the end); by default
    /// the system's temporary directory, as the benchmark's.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The data set's seed (the benchmark's default).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Inbox rows at which the staged design's mover runs; each value is a run of its own.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000, 50_000])]
    mover_rows: Vec<usize>,
}

#[derive(Debug, Clone, Copy)]
enum Design {
    Bare,
    BareBench,
    Synchronous,
    Staged { mover_rows: usize },
}

impl Design {
    fn label(self) -> String {
        match self {
            Self::Bare => "bare".into(),
            Self::BareBench => "bare-bench".into(),
            Self::Synchronous => "synchronous".into(),
            Self::Staged { mover_rows } => format!("staged-{mover_rows}"),
        }
    }

    fn schema(self) -> String {
        let bare = |id: &str| {
            format!(
                "CREATE TABLE log_bare ({id}, account_id TEXT NOT NULL, ts BIGINT NOT NULL, \
                 request_id TEXT, api_key_id TEXT NOT NULL, api_key_name TEXT NOT NULL, \
                 api_key_prefix TEXT NOT NULL, method TEXT NOT NULL, endpoint TEXT NOT NULL, \
                 query_params TEXT, status_code INTEGER NOT NULL, error_code TEXT, \
                 ip_hash TEXT NOT NULL, user_agent TEXT NOT NULL, duration_ms BIGINT NOT NULL)"
            )
        };
        match self {
            // `INTEGER PRIMARY KEY` is the rowid itself: no index but the table.
            Self::Bare => bare("id INTEGER PRIMARY KEY"),
            // bench/src/workloads.rs's BARE_TABLE.
            Self::BareBench => bare("id BIGINT PRIMARY KEY"),
            Self::Synchronous => SERVICE_SCHEMA.into(),
            Self::Staged { .. } => format!("{SERVICE_SCHEMA}{INBOX_SCHEMA}"),
        }
    }
}

/// A row as the service stores it (`RecordRules::validate`): empty optional text becomes
/// NULL, the client IP its SHA-256 in lower-case hex, the timestamp microseconds. The
/// generator's IPs are canonical IPv4 text already, its endpoints carry no `?…` part and its
/// query strings nothing to redact, so the rest is stored as generated.
#[derive(Debug)]
struct Row {
    account_id: String,
    ts: i64,
    request_id: Option<String>,
    api_key_id: String,
    api_key_name: String,
    api_key_prefix: String,
    method: String,
    endpoint: String,
    query_params: Option<String>,
    status_code: i32,
    error_code: Option<String>,
    ip_hash: String,
    user_agent: String,
    duration_ms: i64,
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

impl Row {
    fn from_record(record: &pb::RequestRecord) -> Self {
        let mut ip_hash = String::with_capacity(64);
        for byte in Sha256::digest(record.client_ip.as_bytes()) {
            let _ = write!(ip_hash, "{byte:02x}");
        }
        let ts = record.timestamp.map_or(0, |t| {
            t.seconds * 1_000_000 + i64::from(t.nanos.div_euclid(1_000))
        });
        Self {
            account_id: record.account_id.clone(),
            ts,
            request_id: non_empty(&record.request_id),
            api_key_id: record.api_key_id.clone(),
            api_key_name: record.api_key_name.clone(),
            api_key_prefix: record.api_key_prefix.clone(),
            method: record.method.clone(),
            endpoint: record.endpoint.clone(),
            query_params: non_empty(&record.query_string),
            status_code: record.status_code,
            error_code: non_empty(&record.error_code),
            ip_hash,
            user_agent: record.user_agent.clone(),
            duration_ms: i64::from(record.duration_ms),
        }
    }

    /// The UTC day number `request_ids` is keyed by (`time::day_of`).
    fn day(&self) -> i64 {
        self.ts.div_euclid(MICROS_PER_DAY)
    }

    /// The start of the row's UTC hour, in seconds (`time::hour_start_seconds`).
    fn hour_start(&self) -> i64 {
        self.ts.div_euclid(MICROS_PER_HOUR) * 3_600
    }
}

/// The process's write counters (`/proc/self/io`): `wchar` counts bytes passed to write(2)
/// and its kin (WAL frames, checkpoint copies), `write_bytes` bytes the kernel had to send to
/// the disk (a page rewritten before writeback counts once).
#[derive(Debug, Default, Clone, Copy)]
struct Io {
    wchar: u64,
    write_bytes: u64,
}

impl Io {
    fn read() -> Result<Self> {
        let text = std::fs::read_to_string("/proc/self/io")?;
        let field = |name: &str| -> Result<u64> {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
                .ok_or_else(|| format!("/proc/self/io has no {name}").into())
        };
        Ok(Self {
            wchar: field("wchar")?,
            write_bytes: field("write_bytes")?,
        })
    }

    fn add_since(&mut self, before: Self, after: Self) {
        self.wchar += after.wchar.saturating_sub(before.wchar);
        self.write_bytes += after.write_bytes.saturating_sub(before.write_bytes);
    }
}

/// The three kinds of transaction a design runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The 1,000-row ingest transactions.
    #[default]
    Ingest,
    /// Indexer or mover runs between ingest transactions.
    Between,
    /// The indexer or mover catching up after the last ingest transaction.
    Final,
}

impl Phase {
    const ALL: [Self; 3] = [Self::Ingest, Self::Between, Self::Final];

    fn name(self, design: Design) -> &'static str {
        match (self, design) {
            (Self::Ingest, _) => "ingest transactions",
            (Self::Between, Design::Synchronous) => "indexer runs",
            (Self::Between, _) => "mover runs",
            (Self::Final, Design::Synchronous) => "final indexer run",
            (Self::Final, _) => "final move",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct PhaseTotal {
    time: Duration,
    runs: u64,
    rows: u64,
    io: Io,
}

#[derive(Debug)]
struct StepTotal {
    phase: Phase,
    name: &'static str,
    time: Duration,
    count: u64,
}

/// Where a design's time and bytes went, by phase and by statement.
#[derive(Debug, Default)]
struct Tally {
    current: Phase,
    phases: [PhaseTotal; 3],
    steps: Vec<StepTotal>,
}

impl Tally {
    /// Times one run of a phase handling `rows` rows. The counters are read outside the timed
    /// span.
    fn phase<T>(
        &mut self,
        phase: Phase,
        rows: usize,
        work: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let before = Io::read()?;
        self.current = phase;
        let started = Instant::now();
        let out = work(self)?;
        let elapsed = started.elapsed();
        let after = Io::read()?;
        let total = &mut self.phases[phase as usize];
        total.time += elapsed;
        total.runs += 1;
        total.rows += rows as u64;
        total.io.add_since(before, after);
        Ok(out)
    }

    /// Times one statement (or a few of one kind) of the current phase.
    fn step<T, E>(
        &mut self,
        name: &'static str,
        work: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let out = work();
        let elapsed = started.elapsed();
        let phase = self.current;
        match self
            .steps
            .iter_mut()
            .find(|step| step.phase == phase && step.name == name)
        {
            Some(step) => {
                step.time += elapsed;
                step.count += 1;
            }
            None => self.steps.push(StepTotal {
                phase,
                name,
                time: elapsed,
                count: 1,
            }),
        }
        out
    }

    fn total_time(&self) -> Duration {
        self.phases.iter().map(|phase| phase.time).sum()
    }

    fn total_io(&self) -> Io {
        let mut io = Io::default();
        for phase in &self.phases {
            io.add_since(Io::default(), phase.io);
        }
        io
    }
}

/// `rows` parenthesised groups of `columns` placeholders.
fn placeholders(rows: usize, columns: usize) -> String {
    let group = format!("({})", vec!["?"; columns].join(", "));
    vec![group; rows].join(", ")
}

/// Binds values to consecutive parameters, from the first.
fn bind_all(statement: &mut Statement<'_>, values: &[&dyn ToSql]) -> rusqlite::Result<()> {
    for (index, value) in values.iter().enumerate() {
        statement.raw_bind_parameter(index + 1, value)?;
    }
    Ok(())
}

/// A row's values in `LOG_COLUMNS` order.
fn row_values<'a>(id: &'a i64, row: &'a Row) -> [&'a dyn ToSql; 15] {
    [
        id,
        &row.account_id,
        &row.ts,
        &row.request_id,
        &row.api_key_id,
        &row.api_key_name,
        &row.api_key_prefix,
        &row.method,
        &row.endpoint,
        &row.query_params,
        &row.status_code,
        &row.error_code,
        &row.ip_hash,
        &row.user_agent,
        &row.duration_ms,
    ]
}

/// Runs a prepared statement and counts the rows it returns.
fn count_returned(statement: &mut Statement<'_>) -> rusqlite::Result<usize> {
    let mut returned = statement.raw_query();
    let mut count = 0;
    while returned.next()?.is_some() {
        count += 1;
    }
    Ok(count)
}

/// The service's connection settings (`store::connect`).
fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
         PRAGMA cache_size=-65536; PRAGMA temp_store=memory;",
    )?;
    // sqlx's per-connection statement cache holds 100: the writer's multi-row statements of
    // varying length are re-prepared about as often here.
    conn.set_prepared_statement_cache_capacity(100);
    Ok(conn)
}

/// The service's `begin_write`: BEGIN, then a statement that writes, so that the write lock
/// is taken first thing.
fn begin_write(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    let txn = conn.transaction()?;
    txn.prepare_cached("UPDATE log_id_sequence SET last_id = last_id WHERE name = 'log_entries'")?
        .execute([])?;
    Ok(txn)
}

/// The bench's baseline: a prepared single-row INSERT per row.
fn bare_group(
    conn: &mut Connection,
    rows: &[Row],
    next_id: &mut i64,
    tally: &mut Tally,
) -> Result<()> {
    let txn = tally.step("begin", || conn.transaction())?;
    tally.step("insert", || -> rusqlite::Result<()> {
        let mut insert = txn.prepare_cached(&format!(
            "INSERT INTO log_bare ({LOG_COLUMNS}) VALUES {}",
            placeholders(1, 15)
        ))?;
        for row in rows {
            *next_id += 1;
            bind_all(&mut insert, &row_values(next_id, row))?;
            insert.raw_execute()?;
        }
        Ok(())
    })?;
    tally.step("commit", || txn.commit())?;
    Ok(())
}

/// The purged-key check (`deleted_keys`): the group's distinct keys against `api_keys`, 100
/// a statement. No key is purged here, as in the benchmark.
fn deleted_keys(txn: &Connection, rows: &[Row]) -> Result<()> {
    let keys: HashSet<(&str, &str)> = rows
        .iter()
        .map(|row| (row.account_id.as_str(), row.api_key_id.as_str()))
        .collect();
    let keys: Vec<(&str, &str)> = keys.into_iter().collect();
    for chunk in keys.chunks(LOOKUP_CHUNK_KEYS) {
        let mut select = txn.prepare_cached(&format!(
            "SELECT account_id, api_key_id FROM api_keys WHERE deleted_at IS NOT NULL AND ({})",
            vec!["(account_id = ? AND api_key_id = ?)"; chunk.len()].join(" OR ")
        ))?;
        for (index, (account, key)) in chunk.iter().enumerate() {
            select.raw_bind_parameter(2 * index + 1, account)?;
            select.raw_bind_parameter(2 * index + 2, key)?;
        }
        if count_returned(&mut select)? > 0 {
            return Err("no key is purged in this experiment".into());
        }
    }
    Ok(())
}

/// The days on which a group's (account, request id) keys are stored already.
type Found<'a> = HashMap<(&'a str, &'a str), Vec<i64>>;

/// Request ids stored in `request_ids` on each row's day or either neighbour
/// (`existing_request_ids`): 100 keys a statement, a chain of ORs of point lookups.
fn stored_request_ids<'a>(txn: &Connection, rows: &'a [Row], found: &mut Found<'a>) -> Result<()> {
    let wanted: Vec<(i64, &str, &str)> = rows
        .iter()
        .filter_map(|row| {
            Some((
                row.day(),
                row.account_id.as_str(),
                row.request_id.as_deref()?,
            ))
        })
        .collect();
    for chunk in wanted.chunks(LOOKUP_CHUNK_KEYS) {
        let mut select = txn.prepare_cached(&format!(
            "SELECT day, account_id, request_id, log_id FROM request_ids WHERE {}",
            vec!["(day IN (?, ?, ?) AND account_id = ? AND request_id = ?)"; chunk.len()]
                .join(" OR ")
        ))?;
        for (index, (day, account, rid)) in chunk.iter().enumerate() {
            let values: [&dyn ToSql; 5] = [&(day - 1), day, &(day + 1), account, rid];
            for (offset, value) in values.iter().enumerate() {
                select.raw_bind_parameter(5 * index + offset + 1, value)?;
            }
        }
        let mut stored = select.raw_query();
        while let Some(hit) = stored.next()? {
            let (day, account, rid): (i64, String, String) =
                (hit.get(0)?, hit.get(1)?, hit.get(2)?);
            if let Some(&(_, a, r)) = chunk.iter().find(|(_, a, r)| *a == account && *r == rid) {
                found.entry((a, r)).or_default().push(day);
            }
        }
    }
    Ok(())
}

/// Request ids appended to the inbox and not moved yet, through its unique index.
fn inbox_request_ids<'a>(txn: &Connection, rows: &'a [Row], found: &mut Found<'a>) -> Result<()> {
    let wanted: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|row| Some((row.account_id.as_str(), row.request_id.as_deref()?)))
        .collect();
    for chunk in wanted.chunks(LOOKUP_CHUNK_KEYS) {
        let mut select = txn.prepare_cached(&format!(
            "SELECT account_id, request_id, ts FROM log_inbox WHERE {}",
            vec!["(account_id = ? AND request_id = ?)"; chunk.len()].join(" OR ")
        ))?;
        for (index, (account, rid)) in chunk.iter().enumerate() {
            select.raw_bind_parameter(2 * index + 1, account)?;
            select.raw_bind_parameter(2 * index + 2, rid)?;
        }
        let mut held = select.raw_query();
        while let Some(hit) = held.next()? {
            let (account, rid, ts): (String, String, i64) = (hit.get(0)?, hit.get(1)?, hit.get(2)?);
            if let Some(&(a, r)) = chunk.iter().find(|(a, r)| *a == account && *r == rid) {
                found
                    .entry((a, r))
                    .or_default()
                    .push(ts.div_euclid(MICROS_PER_DAY));
            }
        }
    }
    Ok(())
}

/// The rows to store, in arrival order (`commit_group`'s decisions): a row whose request id
/// is stored, or held by an earlier row of the group, on a day within one of its own is a
/// duplicate. The generated rows have none.
fn rows_to_store<'a>(rows: &'a [Row], found: &Found<'_>) -> Vec<&'a Row> {
    let mut earlier: Found<'a> = HashMap::new();
    rows.iter()
        .filter(|row| {
            let Some(rid) = row.request_id.as_deref() else {
                return true;
            };
            let key = (row.account_id.as_str(), rid);
            let day = row.day();
            let near = |days: &Vec<i64>| days.iter().any(|stored| (stored - day).abs() <= 1);
            if found.get(&key).is_some_and(near) || earlier.get(&key).is_some_and(near) {
                return false;
            }
            earlier.entry(key).or_default().push(day);
            true
        })
        .collect()
}

/// Reserves `count` ids from the counter row (`reserve_ids`) and pairs them with the rows.
fn reserve_ids<'a>(txn: &Connection, rows: Vec<&'a Row>) -> Result<Vec<(i64, &'a Row)>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let count = rows.len() as i64;
    let last: i64 = txn
        .prepare_cached(
            "UPDATE log_id_sequence SET last_id = last_id + ? WHERE name = 'log_entries' \
             RETURNING last_id",
        )?
        .query_row([count], |row| row.get(0))?;
    Ok((last - count + 1..).zip(rows).collect())
}

/// Claims the stored rows' request ids (`claim_request_ids`): multi-row
/// `INSERT … ON CONFLICT DO NOTHING RETURNING`, in arrival order. Only replicas racing on
/// PostgreSQL lose a claim; here one lost is an error.
fn claim_request_ids(txn: &Connection, stored: &[(i64, &Row)]) -> Result<()> {
    let claims: Vec<(i64, i64, &str, &str)> = stored
        .iter()
        .filter_map(|(id, row)| {
            Some((
                row.day(),
                *id,
                row.account_id.as_str(),
                row.request_id.as_deref()?,
            ))
        })
        .collect();
    for chunk in claims.chunks(INSERT_CHUNK_ROWS) {
        let mut insert = txn.prepare_cached(&format!(
            "INSERT INTO request_ids (day, account_id, request_id, log_id) VALUES {} \
             ON CONFLICT (day, account_id, request_id) DO NOTHING RETURNING log_id",
            placeholders(chunk.len(), 4)
        ))?;
        for (index, (day, id, account, rid)) in chunk.iter().enumerate() {
            let values: [&dyn ToSql; 4] = [day, account, rid, id];
            for (offset, value) in values.iter().enumerate() {
                insert.raw_bind_parameter(4 * index + offset + 1, value)?;
            }
        }
        if count_returned(&mut insert)? != chunk.len() {
            return Err("a request id was claimed already".into());
        }
    }
    Ok(())
}

/// Multi-row INSERTs of the stored rows in id order (`insert_rows`), into `table`.
fn insert_rows(txn: &Connection, table: &str, stored: &[(i64, &Row)]) -> Result<()> {
    for chunk in stored.chunks(INSERT_CHUNK_ROWS) {
        let mut insert = txn.prepare_cached(&format!(
            "INSERT INTO {table} ({LOG_COLUMNS}) VALUES {}",
            placeholders(chunk.len(), 15)
        ))?;
        for (index, (id, row)) in chunk.iter().enumerate() {
            for (offset, value) in row_values(id, row).iter().enumerate() {
                insert.raw_bind_parameter(15 * index + offset + 1, value)?;
            }
        }
        insert.raw_execute()?;
    }
    Ok(())
}

/// A `usage_stats` key: account, hour, key, endpoint, method, status.
type UsageKey<'a> = (&'a str, i64, &'a str, &'a str, &'a str, i32);

#[derive(Debug, Default)]
struct UsageDelta {
    requests: i64,
    errors: i64,
    total_ms: i64,
    max_ms: i64,
}

/// Adds the stored rows to the hourly counters (`upsert_usage`): summed per key in memory,
/// then multi-row upserts in key order.
fn upsert_usage(txn: &Connection, stored: &[(i64, &Row)]) -> Result<()> {
    let mut deltas: HashMap<UsageKey<'_>, UsageDelta> = HashMap::new();
    for (_, row) in stored {
        let delta = deltas
            .entry((
                row.account_id.as_str(),
                row.hour_start(),
                row.api_key_id.as_str(),
                row.endpoint.as_str(),
                row.method.as_str(),
                row.status_code,
            ))
            .or_default();
        delta.requests += 1;
        delta.errors += i64::from(row.status_code >= 400);
        delta.total_ms += row.duration_ms;
        delta.max_ms = delta.max_ms.max(row.duration_ms);
    }
    let mut deltas: Vec<_> = deltas.into_iter().collect();
    deltas.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for chunk in deltas.chunks(INSERT_CHUNK_ROWS) {
        let mut upsert = txn.prepare_cached(&format!(
            "INSERT INTO usage_stats (account_id, bucket_start, api_key_id, endpoint, method, \
             status_code, request_count, error_count, total_duration_ms, max_duration_ms) \
             VALUES {} {USAGE_UPSERT}",
            placeholders(chunk.len(), 10)
        ))?;
        for (index, ((account, hour, key, endpoint, method, status), delta)) in
            chunk.iter().enumerate()
        {
            let values: [&dyn ToSql; 10] = [
                account,
                hour,
                key,
                endpoint,
                method,
                status,
                &delta.requests,
                &delta.errors,
                &delta.total_ms,
                &delta.max_ms,
            ];
            for (offset, value) in values.iter().enumerate() {
                upsert.raw_bind_parameter(10 * index + offset + 1, value)?;
            }
        }
        upsert.raw_execute()?;
    }
    Ok(())
}

/// One group of the service's writer today (`commit_group`); returns the rows stored.
fn synchronous_group(conn: &mut Connection, rows: &[Row], tally: &mut Tally) -> Result<usize> {
    let txn = tally.step("begin", || begin_write(conn))?;
    tally.step("deleted-key check", || deleted_keys(&txn, rows))?;
    let mut found = Found::new();
    tally.step("request-id lookups", || {
        stored_request_ids(&txn, rows, &mut found)
    })?;
    let to_store = rows_to_store(rows, &found);
    let stored = tally.step("id reservation", || reserve_ids(&txn, to_store))?;
    tally.step("request-id claims", || claim_request_ids(&txn, &stored))?;
    tally.step("log_entries insert", || {
        insert_rows(&txn, "log_entries", &stored)
    })?;
    tally.step("usage_stats upsert", || upsert_usage(&txn, &stored))?;
    tally.step("commit", || txn.commit())?;
    Ok(stored.len())
}

/// Sets the search watermark (`set_watermark`).
fn set_watermark(txn: &Connection, upto: i64) -> rusqlite::Result<usize> {
    txn.prepare_cached(
        "INSERT INTO settings (name, value) VALUES (?, ?) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(rusqlite::params![WATERMARK, upto.to_string()])
}

/// FTS5's bounded merge of the segments earlier inserts left (the table's automerge is off).
fn merge_search(txn: &Connection, pages: i64) -> rusqlite::Result<usize> {
    txn.prepare_cached("INSERT INTO log_search (log_search, rank) VALUES ('merge', ?)")?
        .execute([pages])
}

/// One indexer transaction (`index_chunk_sqlite`): merge, copy up to 10,000 rows above the
/// watermark into `log_search`, move the watermark. False when there was nothing to copy
/// (that transaction only merged).
fn index_chunk(conn: &mut Connection, tally: &mut Tally) -> Result<bool> {
    let txn = tally.step("begin", || begin_write(conn))?;
    let (from, last) = tally.step("watermark and last id", || -> rusqlite::Result<_> {
        let from: Option<String> = txn
            .prepare_cached("SELECT value FROM settings WHERE name = ? LIMIT 1")?
            .query_row([WATERMARK], |row| row.get(0))
            .optional()?;
        let last: i64 = txn
            .prepare_cached("SELECT last_id FROM log_id_sequence WHERE name = 'log_entries'")?
            .query_row([], |row| row.get(0))?;
        Ok((from.and_then(|value| value.parse().ok()).unwrap_or(0), last))
    })?;
    tally.step("fts merge", || merge_search(&txn, INDEXER_MERGE_PAGES))?;
    if from >= last {
        tally.step("commit", || txn.commit())?;
        return Ok(false);
    }
    let upto = (from + INDEXER_CHUNK_ROWS).min(last);
    tally.step("fts insert", || {
        txn.prepare_cached(&format!(
            "INSERT INTO log_search (rowid, doc) \
             SELECT id, {DOC_SQL} FROM log_entries WHERE id > ? AND id <= ?"
        ))?
        .execute([from, upto])
    })?;
    tally.step("watermark", || set_watermark(&txn, upto))?;
    tally.step("commit", || txn.commit())?;
    Ok(true)
}

/// One indexer run (`index_pending`): chunks until one finds nothing left, as each tick of
/// the service's `index_forever` does.
fn index_pending(conn: &mut Connection, tally: &mut Tally) -> Result<()> {
    while index_chunk(conn, tally)? {}
    Ok(())
}

/// One staged ingest transaction: the writer's checks and ids, then an append to the inbox.
fn staged_group(conn: &mut Connection, rows: &[Row], tally: &mut Tally) -> Result<usize> {
    let txn = tally.step("begin", || begin_write(conn))?;
    tally.step("deleted-key check", || deleted_keys(&txn, rows))?;
    let mut found = Found::new();
    tally.step("request-id lookups (request_ids)", || {
        stored_request_ids(&txn, rows, &mut found)
    })?;
    tally.step("request-id lookups (inbox)", || {
        inbox_request_ids(&txn, rows, &mut found)
    })?;
    let to_store = rows_to_store(rows, &found);
    let stored = tally.step("id reservation", || reserve_ids(&txn, to_store))?;
    tally.step("inbox append", || insert_rows(&txn, "log_inbox", &stored))?;
    tally.step("commit", || txn.commit())?;
    Ok(stored.len())
}

/// One mover transaction: every structure built from the inbox in its own key order, then
/// the inbox emptied. The search index merges as much per row as the service's indexer does
/// (500 pages per 10,000 rows).
fn move_inbox(conn: &mut Connection, rows: usize, tally: &mut Tally) -> Result<()> {
    let txn = tally.step("begin", || begin_write(conn))?;
    tally.step("log_entries insert (sorted)", || {
        txn.prepare_cached(&format!(
            "INSERT INTO log_entries ({LOG_COLUMNS}) SELECT {LOG_COLUMNS} FROM log_inbox \
             ORDER BY account_id, ts, id"
        ))?
        .execute([])
    })?;
    // No conflict is possible: the ingest transactions looked each key up under the write
    // lock and the inbox's unique index held it since; a conflict would be a bug.
    tally.step("request_ids insert (sorted)", || {
        txn.prepare_cached(&format!(
            "INSERT INTO request_ids (day, account_id, request_id, log_id) \
             SELECT ts / {MICROS_PER_DAY}, account_id, request_id, id FROM log_inbox \
             WHERE request_id IS NOT NULL \
             ORDER BY ts / {MICROS_PER_DAY}, account_id, request_id"
        ))?
        .execute([])
    })?;
    // `WHERE true` keeps SQLite from reading ON CONFLICT as a join constraint.
    tally.step("usage_stats upsert (grouped)", || {
        txn.prepare_cached(&format!(
            "INSERT INTO usage_stats (account_id, bucket_start, api_key_id, endpoint, method, \
             status_code, request_count, error_count, total_duration_ms, max_duration_ms) \
             SELECT account_id, ts / {MICROS_PER_HOUR} * 3600 AS bucket, api_key_id, \
                    endpoint, method, status_code, COUNT(*), SUM(status_code >= 400), \
                    SUM(duration_ms), MAX(duration_ms) \
             FROM log_inbox WHERE true \
             GROUP BY account_id, bucket, api_key_id, endpoint, method, status_code \
             ORDER BY account_id, bucket, api_key_id, endpoint, method, status_code \
             {USAGE_UPSERT}"
        ))?
        .execute([])
    })?;
    let pages = (rows * INDEXER_MERGE_PAGES as usize).div_ceil(INDEXER_CHUNK_ROWS as usize) as i64;
    tally.step("fts merge", || merge_search(&txn, pages))?;
    tally.step("fts insert (id order)", || {
        txn.prepare_cached(&format!(
            "INSERT INTO log_search (rowid, doc) SELECT id, {DOC_SQL} FROM log_inbox ORDER BY id"
        ))?
        .execute([])
    })?;
    tally.step("watermark", || {
        let upto: i64 = txn
            .prepare_cached("SELECT MAX(id) FROM log_inbox")?
            .query_row([], |row| row.get(0))?;
        set_watermark(&txn, upto)
    })?;
    tally.step("inbox delete", || {
        txn.prepare_cached("DELETE FROM log_inbox")?.execute([])
    })?;
    tally.step("commit", || txn.commit())?;
    Ok(())
}

/// What one design measured.
#[derive(Debug)]
struct Report {
    design: Design,
    /// The design's label, marked when it is a repeat.
    label: String,
    rows: usize,
    tally: Tally,
    /// Database and WAL after a truncating checkpoint.
    file_bytes: u64,
    /// Of which free pages (the staged inbox's, once emptied).
    free_bytes: u64,
    /// Row counts of the structures, for the reader to compare designs.
    check: String,
}

impl Report {
    fn rate(&self) -> f64 {
        self.rows as f64 / self.tally.total_time().as_secs_f64()
    }

    fn per_row(&self, bytes: u64) -> f64 {
        bytes as f64 / self.rows as f64
    }
}

/// Ingests `rows` generated rows into a fresh database under `design`.
fn measure(design: Design, cli: &Cli, now_seconds: i64, dir: &Path) -> Result<Report> {
    let path = dir.join(format!("{}.db", design.label()));
    let mut conn = open(&path)?;
    conn.execute_batch(&design.schema())?;
    let mut generator = data::Generator::new(cli.seed, cli.rows, now_seconds);
    let mut tally = Tally::default();
    let mut next_id = 0;
    // Rows the indexer or mover has not handled yet.
    let mut waiting = 0;
    let mut left = cli.rows;
    while left > 0 {
        let count = left.min(BATCH_ROWS);
        left -= count;
        let rows: Vec<Row> = generator
            .batch(count)
            .iter()
            .map(Row::from_record)
            .collect();
        match design {
            Design::Synchronous if waiting >= INDEXER_CHUNK_ROWS as usize => {
                tally.phase(Phase::Between, waiting, |tally| {
                    index_pending(&mut conn, tally)
                })?;
                waiting = 0;
            }
            Design::Staged { mover_rows } if waiting >= mover_rows => {
                tally.phase(Phase::Between, waiting, |tally| {
                    move_inbox(&mut conn, waiting, tally)
                })?;
                waiting = 0;
            }
            _ => {}
        }
        waiting += tally.phase(Phase::Ingest, count, |tally| match design {
            Design::Bare | Design::BareBench => {
                bare_group(&mut conn, &rows, &mut next_id, tally).map(|()| count)
            }
            Design::Synchronous => synchronous_group(&mut conn, &rows, tally),
            Design::Staged { .. } => staged_group(&mut conn, &rows, tally),
        })?;
    }
    if waiting > 0 {
        match design {
            Design::Synchronous => tally.phase(Phase::Final, waiting, |tally| {
                index_pending(&mut conn, tally)
            })?,
            Design::Staged { .. } => tally.phase(Phase::Final, waiting, |tally| {
                move_inbox(&mut conn, waiting, tally)
            })?,
            Design::Bare | Design::BareBench => {}
        }
    }

    // Untimed: bring the WAL into the file, then size and count what was built.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let size = |suffix: &str| {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        std::fs::metadata(name).map_or(0, |meta| meta.len())
    };
    let file_bytes = size("") + size("-wal");
    let free_bytes: u64 = conn.query_row(
        "SELECT freelist_count * page_size FROM pragma_freelist_count, pragma_page_size",
        [],
        |row| row.get(0),
    )?;
    let check = match design {
        Design::Bare | Design::BareBench => {
            let stored: i64 = conn.query_row("SELECT COUNT(*) FROM log_bare", [], |r| r.get(0))?;
            format!("log_bare {stored}")
        }
        Design::Synchronous | Design::Staged { .. } => {
            let counts: [i64; 5] = conn.query_row(
                "SELECT (SELECT COUNT(*) FROM log_entries), (SELECT COUNT(*) FROM request_ids), \
                        (SELECT COUNT(*) FROM usage_stats), \
                        (SELECT SUM(request_count) FROM usage_stats), \
                        (SELECT COUNT(*) FROM log_search_docsize)",
                [],
                |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
            )?;
            if counts[0] != cli.rows as i64 || counts[3] != counts[0] || counts[4] != counts[0] {
                return Err(
                    format!("{}: structures incomplete: {counts:?}", design.label()).into(),
                );
            }
            format!(
                "log_entries {}, request_ids {}, usage_stats {} rows counting {}, log_search {}",
                counts[0], counts[1], counts[2], counts[3], counts[4]
            )
        }
    };
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.clone().into_os_string();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
    Ok(Report {
        design,
        label: design.label(),
        rows: cli.rows,
        tally,
        file_bytes,
        free_bytes,
        check,
    })
}

/// Removes the run's directory however the run ends.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn print_summary(reports: &[Report]) {
    let bare: Vec<f64> = reports
        .iter()
        .filter(|report| matches!(report.design, Design::Bare))
        .map(Report::rate)
        .collect();
    let bare = (!bare.is_empty()).then(|| bare.iter().sum::<f64>() / bare.len() as f64);
    println!(
        "\n\"vs bare\" is against the mean of the bare runs (first and last): {:.0} rows/s",
        bare.unwrap_or(f64::NAN)
    );
    println!(
        "{:<14} {:>10} {:>9} {:>8} {:>16} {:>11} {:>11}",
        "design", "rows/s", "seconds", "vs bare", "write_bytes/row", "wchar/row", "file B/row"
    );
    for report in reports {
        let io = report.tally.total_io();
        let ratio = bare.map_or("-".into(), |bare| format!("{:.3}", report.rate() / bare));
        println!(
            "{:<14} {:>10.0} {:>9.2} {:>8} {:>16.0} {:>11.0} {:>11.0}",
            report.label,
            report.rate(),
            report.tally.total_time().as_secs_f64(),
            ratio,
            report.per_row(io.write_bytes),
            report.per_row(io.wchar),
            report.per_row(report.file_bytes),
        );
    }
}

fn print_breakdown(report: &Report) {
    let total = report.tally.total_time().as_secs_f64();
    println!(
        "\n{}: {:.2} s; {}; file {:.0} B/row, of which free pages {:.0} B/row",
        report.label,
        total,
        report.check,
        report.per_row(report.file_bytes),
        report.per_row(report.free_bytes),
    );
    for phase in Phase::ALL {
        let sums = report.tally.phases[phase as usize];
        if sums.runs == 0 {
            continue;
        }
        let seconds = sums.time.as_secs_f64();
        println!(
            "  {:<34} {:>8.2} s {:>5.1}%  {} runs, {} rows ({:.0} rows/s), {:.0} ms a run; \
             wchar {:.0} B/row, write_bytes {:.0} B/row (per row of the whole run)",
            phase.name(report.design),
            seconds,
            100.0 * seconds / total,
            sums.runs,
            sums.rows,
            sums.rows as f64 / seconds,
            1_000.0 * seconds / sums.runs as f64,
            report.per_row(sums.io.wchar),
            report.per_row(sums.io.write_bytes),
        );
        for step in report.tally.steps.iter().filter(|step| step.phase == phase) {
            let seconds = step.time.as_secs_f64();
            println!(
                "    {:<32} {:>8.2} s {:>5.1}%  x{}",
                step.name,
                seconds,
                100.0 * seconds / total,
                step.count
            );
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.rows == 0 {
        return Err("--rows must be at least 1".into());
    }
    let base = cli.dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = Scratch(base.join(format!("reqlog-staged-ingest-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    // One "now" for every design, so that each ingests exactly the same rows.
    let now_seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let mut designs = vec![Design::Bare, Design::BareBench, Design::Synchronous];
    designs.extend(
        cli.mover_rows
            .iter()
            .map(|&mover_rows| Design::Staged { mover_rows }),
    );
    // The bare table again at the end: its rate is mostly fsync latency, which drifts with
    // the machine's load (155k and 499k rows/s in two runs minutes apart), so the ratios use
    // the mean of a run before and one after the others.
    designs.push(Design::Bare);
    println!(
        "staged_ingest: {} rows a design (seed {}), {BATCH_ROWS} rows a transaction, one thread, \
         SQLite {} in {} (WAL, synchronous=FULL, 64 MiB cache, autocheckpoint 1,000 pages); \
         generating rows is not timed",
        cli.rows,
        cli.seed,
        rusqlite::version(),
        scratch.0.display()
    );
    let mut reports: Vec<Report> = Vec::new();
    for design in designs {
        eprintln!("staged_ingest: {}", design.label());
        let mut report = measure(design, &cli, now_seconds, &scratch.0)?;
        if reports.iter().any(|earlier| earlier.label == report.label) {
            report.label.push_str(" again");
        }
        eprintln!(
            "staged_ingest: {} {:.0} rows/s",
            report.label,
            report.rate()
        );
        reports.push(report);
    }
    print_summary(&reports);
    for report in &reports {
        print_breakdown(report);
    }
    Ok(())
}

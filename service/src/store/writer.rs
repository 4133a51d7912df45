//! The single writer: every ingest goes through one task that commits in groups.
//!
//! While a commit runs, new jobs queue up in the channel; when it ends, the writer takes
//! everything waiting (up to `max_group_rows`) into the next transaction. An idle writer
//! commits a lone record at once: there is no timer. Each caller is answered after the
//! commit that holds its rows returns, and SQLite's `synchronous=FULL` (PostgreSQL's
//! `synchronous_commit`) means that is after the fsync, so one fsync serves a whole group.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use sea_orm::sea_query::{Expr, OnConflict, Query, Value};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use super::StoreError;
use super::claims::Claim;
use super::dictionary::{Dictionary, Ids};
use super::entity::{log_entry, request_id};
use super::labels::{Label, Labels};
use super::seen::SeenIds;
use super::sqlite::{HeldSqlite, HeldTxn, without_statement_journal};
use crate::domain::ip::{from_hex, to_hex};
use crate::domain::record::{NewLogEntry, RequestKey};
use crate::domain::time::day_of;

/// Rows a single multi-row INSERT carries (of up to 15 values: well under SQLite's 32,766 and
/// PostgreSQL's 65,535 bound parameters).
pub(super) const INSERT_CHUNK_ROWS: usize = 1_000;

/// What became of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Newly stored under this id.
    Stored(i64),
    /// Its `request_id` was already stored, as this id.
    Duplicate(i64),
    /// Its key was purged; records for it are refused.
    KeyDeleted,
}

/// Counters of the writer's work, for tests, metrics and benchmarks.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Records newly stored.
    pub rows: AtomicU64,
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most records one transaction takes.
    pub max_group_rows: usize,
    /// Jobs (calls and internal writes) the channel to the writer holds.
    pub queue_jobs: usize,
    /// Records that may be queued or committing at once; an ingest call that cannot get
    /// room for its records within `enqueue_wait` fails with [`StoreError::Overloaded`].
    pub queue_records: usize,
    /// The longest an ingest call waits for room in the queue.
    pub enqueue_wait: Duration,
    /// The retry delay an overloaded caller is advised.
    pub retry_after: Duration,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_group_rows: 10_000,
            queue_jobs: 4_096,
            queue_records: 50_000,
            enqueue_wait: Duration::from_millis(100),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A write that is not an ingest: purge and sweep batches, key and plan changes. It runs
/// between groups, in queue order, so it is ordered against every ingest around it.
type Task = Box<dyn FnOnce(DatabaseConnection) -> BoxFuture<'static, ()> + Send>;

/// A write that runs only statements, on the connection ingest groups use ([`Writer::write`]).
type Write = Box<dyn FnOnce(WriterDb) -> BoxFuture<'static, ()> + Send>;

enum Job {
    Ingest(IngestJob),
    Task(Task),
    Write(Write),
}

struct IngestJob {
    entries: Vec<NewLogEntry>,
    reply: oneshot::Sender<Result<Vec<IngestOutcome>, StoreError>>,
}

/// The handle callers use to reach the writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WriterStats>,
    /// Room for records in the queue: a permit a record, held until its caller is answered.
    room: Arc<Semaphore>,
    config: WriterConfig,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ingest(job) => f
                .debug_struct("Ingest")
                .field("entries", &job.entries.len())
                .finish(),
            Self::Task(_) => f.write_str("Task"),
            Self::Write(_) => f.write_str("Write"),
        }
    }
}

impl Writer {
    /// Starts the writer task. It ends once every `Writer` handle is dropped and the queue is
    /// drained, so awaiting the handle after shutdown means every accepted job was answered.
    /// While `available` is false (the health check failed) jobs fail fast as unavailable.
    ///
    /// Ingest groups and [`Writer::write`]s run on `held` when given (an SQLite file: see
    /// [`HeldSqlite`]), inline on a thread the writer then has to itself, else on `db`;
    /// [`Writer::run`]s always get `db`.
    pub fn spawn(
        db: DatabaseConnection,
        held: Option<HeldSqlite>,
        config: WriterConfig,
        available: Arc<AtomicBool>,
    ) -> (Self, JoinHandle<()>) {
        let config = WriterConfig {
            queue_jobs: config.queue_jobs.max(1),
            queue_records: config.queue_records.clamp(1, Semaphore::MAX_PERMITS),
            ..config
        };
        let (jobs, queue) = mpsc::channel(config.queue_jobs);
        let stats = Arc::new(WriterStats::default());
        let room = Arc::new(Semaphore::new(config.queue_records));
        let groups = match held {
            Some(held) => WriterDb::Held(Arc::new(held)),
            None => WriterDb::Pool(db.clone()),
        };
        let on_held = matches!(groups, WriterDb::Held(_));
        let run = run(db, groups, queue, config, available, Arc::clone(&stats));
        let task = if on_held {
            // A thread of its own, where the held connection's statements run inline: as a
            // task, each job went to a blocking thread and back, and the task then waited
            // for a worker busy with gRPC; that was 14% of the writer's time under unary
            // load (~0.35 ms a job, BENCHMARKS.md).
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || runtime.block_on(run))
        } else {
            tokio::spawn(run)
        };
        (
            Self {
                jobs,
                stats,
                room,
                config,
            },
            task,
        )
    }

    /// Stores records (each on its own) and answers once they are durably committed.
    ///
    /// When the database falls behind, the queue fills: a call then waits at most
    /// `enqueue_wait` for room and fails with [`StoreError::Overloaded`] rather than letting
    /// waiting calls (and their records) pile up in memory.
    pub async fn ingest(
        &self,
        entries: Vec<NewLogEntry>,
    ) -> Result<Vec<IngestOutcome>, StoreError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let overloaded = || StoreError::Overloaded {
            retry_after: self.config.retry_after,
        };
        // A call larger than the whole queue waits for an empty queue, not forever.
        let wanted = entries.len().min(self.config.queue_records);
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        let wait = self.config.enqueue_wait;
        // Held until this call is answered (or dropped when the caller goes away, its job
        // then still bounded by the channel's capacity).
        let _room = tokio::time::timeout(wait, Arc::clone(&self.room).acquire_many_owned(wanted))
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| StoreError::WriterStopped)?;
        let slot = tokio::time::timeout(wait, self.jobs.reserve())
            .await
            .map_err(|_| overloaded())?
            .map_err(|_| StoreError::WriterStopped)?;
        let (reply, answer) = oneshot::channel();
        slot.send(Job::Ingest(IngestJob { entries, reply }));
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Runs one write (its own transaction, or none) on the writer, ordered with ingest:
    /// every record acknowledged before it was committed before it runs. It gets the
    /// writer's pooled connection.
    pub async fn run<T, F, Fut>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(DatabaseConnection) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.submit(|reply| {
            Job::Task(Box::new(move |db| {
                Box::pin(async move {
                    let _ = reply.send(write(db).await);
                })
            }))
        })
        .await
    }

    /// Runs one write transaction on the writer, ordered with ingest as [`Writer::run`], on
    /// the connection ingest groups use: on SQLite the one the writer holds (no pool
    /// checkout, no hop per statement, and no page cache dropped between the two), where
    /// the write runs on the writer's own thread and must do nothing but run statements on it
    /// (its future must be ready when first polled; one that is not fails as if the writer
    /// had stopped).
    pub async fn write<T, F, Fut>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(WriterDb) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        self.submit(|reply| {
            Job::Write(Box::new(move |db| {
                Box::pin(async move {
                    let _ = reply.send(write(db).await);
                })
            }))
        })
        .await
    }

    /// Queues the job `job` makes of the reply's sender, and waits for the reply.
    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Job,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(job(reply))
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// The writer's counters, shared.
    pub fn stats_handle(&self) -> Arc<WriterStats> {
        Arc::clone(&self.stats)
    }
}

async fn run(
    db: DatabaseConnection,
    groups: WriterDb,
    mut queue: mpsc::Receiver<Job>,
    config: WriterConfig,
    available: Arc<AtomicBool>,
    stats: Arc<WriterStats>,
) {
    // A task met while gathering a group waits here until that group is committed.
    let mut held: Option<Job> = None;
    let mut dictionaries = Dictionaries::default();
    loop {
        let first = match held.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        let first = match first {
            Job::Task(task) => {
                task(db.clone()).await;
                continue;
            }
            Job::Write(write) => {
                run_write(&groups, write).await;
                continue;
            }
            Job::Ingest(job) => job,
        };
        let mut rows = first.entries.len();
        let mut group = vec![first];
        while rows < config.max_group_rows {
            match queue.try_recv() {
                Ok(Job::Ingest(job)) => {
                    rows += job.entries.len();
                    group.push(job);
                }
                Ok(task) => {
                    held = Some(task);
                    break;
                }
                Err(_) => break,
            }
        }
        if !available.load(Ordering::Acquire) {
            for job in group {
                let reply = Err(StoreError::Unavailable("health check failing".into()));
                let _ = job.reply.send(reply);
            }
            continue;
        }
        match &groups {
            WriterDb::Held(_) => commit_held(&groups, group, &stats, &mut dictionaries),
            WriterDb::Pool(_) => commit_and_answer(&groups, group, &stats, &mut dictionaries).await,
        }
    }
}

/// The connection the writer runs ingest groups and [`Writer::write`]s on: the writer's pooled
/// connection (PostgreSQL), or the SQLite connection it holds.
#[derive(Debug, Clone)]
pub enum WriterDb {
    /// A pooled connection; also what PostgreSQL's purges and sweeps run on beside the writer.
    Pool(DatabaseConnection),
    /// The SQLite connection the writer holds (see [`HeldSqlite`]).
    Held(Arc<HeldSqlite>),
}

impl WriterDb {
    /// Begins a transaction that holds SQLite's write lock from its first statement (see
    /// `store::begin_write`).
    pub async fn begin_write(&self) -> Result<WriterTxn, StoreError> {
        Ok(match self {
            Self::Pool(db) => WriterTxn::Pool(super::begin_write(db).await?),
            Self::Held(held) => WriterTxn::Held(held.begin()?),
        })
    }
}

/// A write transaction of a [`WriterDb`]; dropped without [`WriterTxn::commit`], it rolls
/// back.
#[derive(Debug)]
pub enum WriterTxn {
    /// On a pooled connection.
    Pool(DatabaseTransaction),
    /// On the SQLite connection the writer holds.
    Held(HeldTxn),
}

impl WriterTxn {
    /// Commits; it returns once the commit is durable.
    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Pool(txn) => Ok(txn.commit().await?),
            Self::Held(txn) => txn.commit(),
        }
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for WriterTxn {
    fn get_database_backend(&self) -> DbBackend {
        match self {
            Self::Pool(txn) => txn.get_database_backend(),
            Self::Held(txn) => txn.get_database_backend(),
        }
    }

    async fn execute(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        match self {
            Self::Pool(txn) => txn.execute(stmt).await,
            Self::Held(txn) => txn.execute(stmt).await,
        }
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<sea_orm::ExecResult, DbErr> {
        match self {
            Self::Pool(txn) => txn.execute_unprepared(sql).await,
            Self::Held(txn) => txn.execute_unprepared(sql).await,
        }
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<sea_orm::QueryResult>, DbErr> {
        match self {
            Self::Pool(txn) => txn.query_one(stmt).await,
            Self::Held(txn) => txn.query_one(stmt).await,
        }
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        match self {
            Self::Pool(txn) => txn.query_all(stmt).await,
            Self::Held(txn) => txn.query_all(stmt).await,
        }
    }
}

/// Runs a [`Writer::write`]: on the pool, as any task; on the held SQLite connection inline,
/// on the writer's own thread, where its statements run as they are polled.
async fn run_write(db: &WriterDb, write: Write) {
    match db {
        WriterDb::Pool(_) => write(db.clone()).await,
        WriterDb::Held(_) => {
            let done = contained(|| write(db.clone()).now_or_never());
            if done.is_none() {
                tracing::error!("a write on the writer's SQLite connection did not complete");
            }
        }
    }
}

/// Commits a group on the held SQLite connection and answers its callers, inline on the
/// writer's own thread: no statement waits for a hop to another thread.
fn commit_held(
    held: &WriterDb,
    group: Vec<IngestJob>,
    stats: &WriterStats,
    dictionaries: &mut Dictionaries,
) {
    // Every statement runs on this thread as it is polled, so the group's future is ready
    // at its first poll; were it not, its callers would hear that the writer stopped (their
    // replies dropped with it) rather than wait forever.
    let done = contained(|| commit_and_answer(held, group, stats, dictionaries).now_or_never());
    if done.is_none() {
        tracing::error!("an ingest group on the writer's SQLite connection did not complete");
        // A panic may have left a cache half-updated; the next group reads them again.
        *dictionaries = Dictionaries::default();
    }
}

/// Runs `work`, turning a panic into `None`, so that one job's bug fails its callers (their
/// replies dropped: "the writer stopped") and not the writer. The held connection's open
/// transaction, if any, was rolled back as its `HeldTxn` unwound.
fn contained<T>(work: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or(None)
}

/// The writer's caches of the dictionaries' committed values.
#[derive(Debug)]
struct Dictionaries {
    accounts: Ids,
    agents: Ids,
    /// Rows' (and PostgreSQL's usage counters') key ids.
    keys: Ids,
    /// PostgreSQL's usage counters' paths.
    endpoints: Ids,
    /// Rows' key names and prefixes.
    labels: Labels,
}

impl Default for Dictionaries {
    fn default() -> Self {
        Self {
            accounts: Ids::new(Dictionary::Accounts),
            agents: Ids::new(Dictionary::UserAgents),
            keys: Ids::new(Dictionary::ApiKeys),
            endpoints: Ids::new(Dictionary::Endpoints),
            labels: Labels::default(),
        }
    }
}

async fn commit_and_answer(
    db: &WriterDb,
    group: Vec<IngestJob>,
    stats: &WriterStats,
    dictionaries: &mut Dictionaries,
) {
    let entries: Vec<&NewLogEntry> = group.iter().flat_map(|job| &job.entries).collect();
    match commit_group(db, &entries, dictionaries).await {
        Ok(outcomes) => {
            record_stats(stats, &outcomes);
            let mut outcomes = outcomes.into_iter();
            for job in group {
                let mine = outcomes.by_ref().take(job.entries.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        // The database is gone: retrying job by job would wait out the pool's timeout once
        // per job. Everyone hears at once, and retries later.
        Err(StoreError::Unavailable(reason)) => {
            for job in group {
                let _ = job.reply.send(Err(StoreError::Unavailable(reason.clone())));
            }
        }
        Err(error) if group.len() > 1 => {
            // One bad job must not fail its neighbours: commit each on its own.
            tracing::warn!(%error, jobs = group.len(), "group commit failed, retrying jobs one by one");
            for job in group {
                let entries: Vec<&NewLogEntry> = job.entries.iter().collect();
                let result = commit_group(db, &entries, dictionaries).await;
                if let Ok(outcomes) = &result {
                    record_stats(stats, outcomes);
                }
                let _ = job.reply.send(result);
            }
        }
        Err(error) => {
            for job in group {
                let _ = job.reply.send(Err(clone_error(&error)));
            }
        }
    }
}

fn record_stats(stats: &WriterStats, outcomes: &[IngestOutcome]) {
    let stored = outcomes
        .iter()
        .filter(|outcome| matches!(outcome, IngestOutcome::Stored(_)))
        .count();
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats.rows.fetch_add(stored as u64, Ordering::Relaxed);
}

fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(reason) => StoreError::Unavailable(reason.clone()),
        StoreError::WriterStopped => StoreError::WriterStopped,
        StoreError::Overloaded { retry_after } => StoreError::Overloaded {
            retry_after: *retry_after,
        },
        StoreError::Database(db_error) => StoreError::Database(DbErr::Custom(db_error.to_string())),
    }
}

/// PostgreSQL: everything a group looks up, in one statement (one round trip): which of its
/// keys (`$1`, a JSON array of `[account_id, api_key_id]`) are marked deleted (`kind` 1),
/// which of its request-id probes (`$2`, a JSON array of `[day, account number, request key
/// in hex]`) are stored (`kind` 2, with the stored row's day and id), and `$3` fresh log ids
/// (`kind` 3), one for every record, of which the records stored take the smallest. A
/// record that turns out a duplicate leaves its id unused; ids are never reused anyway. The
/// first two name their probe by 1-based position (`n`). Three statements before: 0.75 ms
/// of a 31.5-record group's 2.8 ms (unary ingest).
///
/// Each probe is its own index lookup: a LATERAL subquery with LIMIT 1 is never flattened into
/// a join. As a plain join, the generic plan of a young or unanalysed table hashed the whole
/// table by a sequential scan once per group (unary ingest, 20 s: 1,744 scans of
/// `request_ids` reading 48.5M rows; 2.9k req/s against 7.5k–8.4k with index probes).
pub const GROUP_LOOKUP_SQL: &str = r#"
    SELECT 1::bigint AS kind, w.n, NULL::bigint AS day, NULL::bigint AS log_id
    FROM json_array_elements($1::json) WITH ORDINALITY AS w(v, n)
    CROSS JOIN LATERAL (
        SELECT 1 FROM api_keys k
        WHERE k.account_id = (w.v->>0) COLLATE "C"
          AND k.api_key_id = (w.v->>1) COLLATE "C"
          AND k.deleted_at IS NOT NULL
        LIMIT 1
    ) k
    UNION ALL
    SELECT 2, w.n, r.day, r.log_id
    FROM json_array_elements($2::json) WITH ORDINALITY AS w(v, n)
    CROSS JOIN LATERAL (
        SELECT r.day, r.log_id FROM request_ids r
        WHERE r.day = (w.v->>0)::bigint
          AND r.account_no = (w.v->>1)::integer
          AND r.request_key = decode(w.v->>2, 'hex')
        LIMIT 1
    ) r
    UNION ALL
    SELECT 3, 0, NULL, nextval('log_entries_id_seq') FROM generate_series(1, $3)"#;

/// The text of [`SQLITE_GROUP_LOOKUP_SQL`], which [`SQLITE_HELD_GROUP_LOOKUP_SQL`] extends.
macro_rules! sqlite_group_lookup_sql {
    () => {
        r#"
    SELECT 1 AS kind, w.key + 1 AS n, NULL AS day, NULL AS log_id FROM json_each(?1) AS w
    WHERE EXISTS (
        SELECT 1 FROM api_keys k
        WHERE k.account_id = w.value ->> 0
          AND k.api_key_id = w.value ->> 1
          AND k.deleted_at IS NOT NULL
    )
    UNION ALL
    SELECT 2, w.key + 1, r.day, r.log_id FROM json_each(?2) AS w
    JOIN request_ids r
      ON r.day = w.value ->> 0
     AND r.account_no = w.value ->> 1
     AND r.request_key = unhex(w.value ->> 2)"#
    };
}

/// SQLite: [`GROUP_LOOKUP_SQL`]'s first two parts over `json_each` (`key` is 0-based), a
/// primary-key lookup per JSON element; ids come from `log_id_sequence` once the group knows
/// how many it stores. Under unary ingest (groups of 34 records) the chains of `OR`ed
/// conditions these replaced took 0.73 ms of each group's 3.2 ms transaction; as JSON joins
/// 0.29 ms.
pub const SQLITE_GROUP_LOOKUP_SQL: &str = sqlite_group_lookup_sql!();

/// [`SQLITE_GROUP_LOOKUP_SQL`] on the connection the writer holds, whose newest claims are
/// still pending in memory (`store::claims`): each request-id probe also reads
/// `temp.pending_request_ids`.
pub const SQLITE_HELD_GROUP_LOOKUP_SQL: &str = concat!(
    sqlite_group_lookup_sql!(),
    r#"
    UNION ALL
    SELECT 2, w.key + 1, p.day, p.log_id FROM json_each(?2) AS w
    JOIN temp.pending_request_ids p
      ON p.day = w.value ->> 0
     AND p.account_no = w.value ->> 1
     AND p.request_key = unhex(w.value ->> 2)"#
);

/// What the group decided for one record before ids exist.
#[derive(Debug, Clone, Copy)]
enum Decision {
    Store,
    Duplicate(i64),
    DuplicateOfEarlier(usize),
    KeyDeleted,
}

/// One transaction for a whole group: deleted-key check, idempotency, ids, rows, statistics.
async fn commit_group(
    db: &WriterDb,
    entries: &[&NewLogEntry],
    dictionaries: &mut Dictionaries,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let txn = db.begin_write().await?;
    let backend = txn.get_database_backend();
    // SQLite's connection the writer holds keeps the newest claims in memory.
    let held = match &txn {
        WriterTxn::Held(held) => Some(held),
        WriterTxn::Pool(_) => None,
    };
    if let Some(held) = held {
        super::claims::sync(held).await?;
    }

    // Ordered against a purge's mark on every replica (PostgreSQL; a no-op on SQLite).
    let keys = entries
        .iter()
        .map(|entry| (entry.account_id.as_str(), entry.api_key_id.as_str()));
    super::admin::lock_key_buckets(&txn, keys, false).await?;
    // Every account of the group gets its number first, also one whose records all turn
    // out duplicates or whose key was purged: the number is needed to look its request
    // ids up.
    let group_accounts = dictionaries
        .accounts
        .resolve(&txn, entries.iter().map(|entry| entry.account_id.as_str()))
        .await?;
    // Each record's account number, by position: looked up once, used by every statement.
    let account_nos = entries
        .iter()
        .map(|entry| {
            dictionaries
                .accounts
                .id(&group_accounts, &entry.account_id)
                .ok_or_else(|| {
                    StoreError::Database(DbErr::Custom("an account has no number".into()))
                })
        })
        .collect::<Result<Vec<i64>, _>>()?;
    let Found {
        deleted,
        existing,
        reserved,
    } = look_up(&txn, entries, &account_nos, held.map(|held| held.seen())).await?;

    // Decide each record in order, so a repeated request_id inside the group is a duplicate
    // of its first occurrence.
    let mut decisions = Vec::with_capacity(entries.len());
    let mut first_in_group: HashMap<(&str, RequestKey), Vec<(i64, usize)>> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if deleted.contains(&(entry.account_id.as_str(), entry.api_key_id.as_str())) {
            decisions.push(Decision::KeyDeleted);
            continue;
        }
        let Some(rid) = entry.request_key else {
            decisions.push(Decision::Store);
            continue;
        };
        let day = day_of(entry.ts_micros);
        let key = (entry.account_id.as_str(), rid);
        if let Some(log_id) = existing.get(&key).and_then(|days| within_a_day(days, day)) {
            decisions.push(Decision::Duplicate(log_id));
        } else if let Some(earlier) = first_in_group
            .get(&key)
            .and_then(|days| within_a_day(days, day))
        {
            decisions.push(Decision::DuplicateOfEarlier(earlier));
        } else {
            first_in_group.entry(key).or_default().push((day, index));
            decisions.push(Decision::Store);
        }
    }

    let to_store: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(decisions[i], Decision::Store))
        .collect();
    let ids = reserve_ids(&txn, backend, to_store.len(), reserved).await?;
    let last_id = ids.last().copied();
    let mut assigned: HashMap<usize, i64> = to_store.iter().copied().zip(ids).collect();

    let claims = claims_of(entries, &assigned, &account_nos);
    // Without their positions, for the held connection's pending claims and its filter;
    // PostgreSQL has neither.
    let group_claims: Vec<Claim> = match held {
        Some(_) => claims.iter().map(|&(_, claim)| claim).collect(),
        None => Vec::new(),
    };
    match held {
        // The writer's SQLite connection: a small group's claims wait in memory (its
        // lookups saw every claim, so none conflicts).
        Some(held) if claims.len() < super::claims::PENDING_GROUP_CLAIMS => {
            super::claims::add(held, &group_claims).await?;
        }
        // Claim the request ids first: a claim lost to another replica makes the record a
        // duplicate before its row is written (the unique key, not a check-then-insert,
        // decides).
        _ => {
            for (index, log_id) in claim_request_ids(&txn, &claims).await? {
                assigned.remove(&index);
                decisions[index] = Decision::Duplicate(log_id);
            }
        }
    }
    if let (Some(held), Some(last_id)) = (held, last_id) {
        super::claims::covered(held, &group_claims, last_id).await?;
    }

    let stored = || assigned.keys().map(|&index| entries[index]);
    let group_agents = dictionaries
        .agents
        .resolve(&txn, stored().map(|entry| entry.user_agent.as_str()))
        .await?;
    let group_keys = dictionaries
        .keys
        .resolve(&txn, stored().map(|entry| entry.api_key_id.as_str()))
        .await?;
    let group_labels = dictionaries
        .labels
        .resolve(
            &txn,
            assigned.keys().filter_map(|&index| {
                let entry = entries[index];
                let key_no = dictionaries.keys.id(&group_keys, &entry.api_key_id)?;
                let name = entry.api_key_name.as_str();
                Some((
                    account_nos[index],
                    key_no,
                    name,
                    entry.api_key_prefix.as_str(),
                ))
            }),
        )
        .await?;
    let group_endpoints = dictionaries
        .endpoints
        .resolve(&txn, stored().map(|entry| entry.endpoint.as_str()))
        .await?;
    let numbers = RowNumbers {
        agent_id: &|agent| dictionaries.agents.id(&group_agents, agent),
        key_no: &|key| dictionaries.keys.id(&group_keys, key),
        label_no: &|label| dictionaries.labels.id(&group_labels, label),
        endpoint_no: &|path| dictionaries.endpoints.id(&group_endpoints, path),
    };
    insert_rows(&txn, entries, &assigned, &account_nos, &numbers).await?;
    // SQLite's counters are folded from the rows by the search indexer (`usage`).
    if backend != DbBackend::Sqlite {
        let number = |dictionary, value: &str| match dictionary {
            Dictionary::ApiKeys => (numbers.key_no)(value),
            Dictionary::Endpoints => (numbers.endpoint_no)(value),
            Dictionary::Accounts | Dictionary::UserAgents => None,
        };
        let stored = assigned.keys().copied();
        super::usage::add_group(&txn, entries, stored, &account_nos, number).await?;
    }
    txn.commit().await?;
    dictionaries.accounts.committed(group_accounts);
    dictionaries.agents.committed(group_agents);
    dictionaries.keys.committed(group_keys);
    dictionaries.labels.committed(group_labels);
    dictionaries.endpoints.committed(group_endpoints);

    let mut outcomes: Vec<IngestOutcome> = Vec::with_capacity(entries.len());
    for (index, decision) in decisions.iter().enumerate() {
        let outcome = match *decision {
            Decision::KeyDeleted => IngestOutcome::KeyDeleted,
            Decision::Duplicate(log_id) => IngestOutcome::Duplicate(log_id),
            Decision::Store => match assigned.get(&index) {
                Some(&id) => IngestOutcome::Stored(id),
                None => outcomes_missing(index)?,
            },
            Decision::DuplicateOfEarlier(earlier) => match outcomes[earlier] {
                IngestOutcome::Stored(id) | IngestOutcome::Duplicate(id) => {
                    IngestOutcome::Duplicate(id)
                }
                IngestOutcome::KeyDeleted => IngestOutcome::KeyDeleted,
            },
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

fn outcomes_missing(index: usize) -> Result<IngestOutcome, StoreError> {
    Err(StoreError::Database(DbErr::Custom(format!(
        "record {index} was neither stored nor a duplicate"
    ))))
}

/// The log id stored under a key on a day within one day of `day`, if any.
fn within_a_day<T: Copy>(days: &[(i64, T)], day: i64) -> Option<T> {
    days.iter()
        .find(|(stored_day, _)| (stored_day - day).abs() <= 1)
        .map(|&(_, value)| value)
}

/// What a group's lookup found (see [`GROUP_LOOKUP_SQL`]).
struct Found<'a> {
    /// The group's keys that are marked deleted.
    deleted: HashSet<(&'a str, &'a str)>,
    /// Stored request ids of the group's keys, on each record's day and both neighbours:
    /// (day, log id) by (account, key).
    existing: HashMap<(&'a str, RequestKey), Vec<(i64, i64)>>,
    /// PostgreSQL: fresh log ids, one per record, in increasing order.
    reserved: Vec<i64>,
}

/// Looks up the group's purged keys and stored request ids (and, on PostgreSQL, reserves
/// its ids) in one statement, whose probes go in as JSON arrays. On the connection the
/// writer holds (`seen`), the newest claims are pending in memory, and only the ids the
/// filter of stored ids may hold are probed.
async fn look_up<'a>(
    txn: &impl ConnectionTrait,
    entries: &[&'a NewLogEntry],
    account_nos: &[i64],
    seen: Option<&SeenIds>,
) -> Result<Found<'a>, StoreError> {
    let keys: HashSet<(&str, &str)> = entries
        .iter()
        .map(|entry| (entry.account_id.as_str(), entry.api_key_id.as_str()))
        .collect();
    let keys: Vec<(&str, &str)> = keys.into_iter().collect();
    // Each request id is probed on its record's day and both neighbours: `probes` names
    // the record's (account, key) for a row to map back to, `probes_json` is what the
    // statement reads, (day, account number, key in hex), the key encoded once.
    let mut probes: Vec<(&str, RequestKey)> = Vec::new();
    let mut probes_json: Vec<(i64, i64, String)> = Vec::new();
    for (entry, &number) in entries.iter().zip(account_nos) {
        let Some(rid) = entry.request_key else {
            continue;
        };
        if seen.is_some_and(|seen| !seen.may_hold(number, &rid)) {
            continue;
        }
        let day = day_of(entry.ts_micros);
        let hex = to_hex(&rid);
        for probe_day in [day - 1, day, day + 1] {
            probes.push((entry.account_id.as_str(), rid));
            probes_json.push((probe_day, number, hex.clone()));
        }
    }
    let backend = txn.get_database_backend();
    let keys_json = super::json_param(&keys)?;
    let probes_json = super::json_param(&probes_json)?;
    let statement = match backend {
        DbBackend::Postgres => Statement::from_sql_and_values(
            backend,
            GROUP_LOOKUP_SQL,
            [
                keys_json.into(),
                probes_json.into(),
                i64::try_from(entries.len()).unwrap_or(i64::MAX).into(),
            ],
        ),
        _ => Statement::from_sql_and_values(
            backend,
            if seen.is_some() {
                SQLITE_HELD_GROUP_LOOKUP_SQL
            } else {
                SQLITE_GROUP_LOOKUP_SQL
            },
            [keys_json.into(), probes_json.into()],
        ),
    };
    let mut found = Found {
        deleted: HashSet::new(),
        existing: HashMap::new(),
        reserved: Vec::new(),
    };
    for row in txn.query_all(statement).await? {
        let position: i64 = row.try_get("", "n")?;
        match row.try_get::<i64>("", "kind")? {
            1 => {
                if let Some(&key) = probe_at(&keys, position) {
                    found.deleted.insert(key);
                }
            }
            2 => {
                if let Some(&(account, rid)) = probe_at(&probes, position) {
                    let day: Option<i64> = row.try_get("", "day")?;
                    let log_id: Option<i64> = row.try_get("", "log_id")?;
                    if let (Some(day), Some(log_id)) = (day, log_id) {
                        found
                            .existing
                            .entry((account, rid))
                            .or_default()
                            .push((day, log_id));
                    }
                }
            }
            _ => {
                if let Some(id) = row.try_get::<Option<i64>>("", "log_id")? {
                    found.reserved.push(id);
                }
            }
        }
    }
    found.reserved.sort_unstable();
    Ok(found)
}

/// The probe a lookup row names by its 1-based position. The group's keys go in as one
/// JSON array joined to the table instead of chunks of `OR`ed conditions: on 1M rows
/// PostgreSQL's planner spent 14 ms planning each 100-key `OR` and 9.5 ms running it; the
/// join ran 100 keys in 3 ms.
fn probe_at<T>(probes: &[T], position: i64) -> Option<&T> {
    probes.get(usize::try_from(position).ok()?.checked_sub(1)?)
}

/// Reserves `count` fresh log ids, in increasing order: on PostgreSQL the smallest of those
/// the group's lookup took from the sequence (`reserved`), on SQLite from the counter row.
async fn reserve_ids(
    txn: &impl ConnectionTrait,
    backend: DbBackend,
    count: usize,
    mut reserved: Vec<i64>,
) -> Result<Vec<i64>, StoreError> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let count_i64 = i64::try_from(count).unwrap_or(i64::MAX);
    match backend {
        DbBackend::Postgres => {
            if reserved.len() < count {
                return Err(StoreError::Database(DbErr::Custom(format!(
                    "{} log ids reserved for {count} records",
                    reserved.len()
                ))));
            }
            reserved.truncate(count);
            Ok(reserved)
        }
        _ => {
            // A counter row, not MAX(id): ids of purged rows are never handed out again,
            // and the clustered table has no index on id alone. The write transaction
            // serialises writers.
            let row = txn
                .query_one(Statement::from_sql_and_values(
                    backend,
                    "UPDATE log_id_sequence SET last_id = last_id + ? WHERE name = 'log_entries' RETURNING last_id",
                    [count_i64.into()],
                ))
                .await?;
            let last: i64 = match row {
                Some(row) => row.try_get("", "last_id")?,
                None => {
                    return Err(StoreError::Database(DbErr::Custom(
                        "log_id_sequence has no log_entries row".into(),
                    )));
                }
            };
            let high = last - count_i64;
            Ok((1..=count_i64).map(|offset| high + offset).collect())
        }
    }
}

/// The claims of the records to store that carry a request id, each with its record's
/// position, in key order: two PostgreSQL replicas claiming the same keys then wait for
/// each other instead of each holding one the other wants (a deadlock, which fails a group).
fn claims_of(
    entries: &[&NewLogEntry],
    assigned: &HashMap<usize, i64>,
    account_nos: &[i64],
) -> Vec<(usize, Claim)> {
    let mut claims: Vec<(usize, Claim)> = assigned
        .iter()
        .filter_map(|(&index, &log_id)| {
            let entry = entries[index];
            let rid = entry.request_key?;
            Some((
                index,
                (day_of(entry.ts_micros), account_nos[index], rid, log_id),
            ))
        })
        .collect();
    claims.sort_unstable_by_key(|&(_, (day, account, key, _))| (day, account, key));
    claims
}

/// Inserts `claims` (see [`claims_of`]) into `request_ids`; returns those another writer
/// claimed first (position, the other writer's log id). Only replicas racing on PostgreSQL
/// lose claims.
async fn claim_request_ids(
    txn: &impl ConnectionTrait,
    claims: &[(usize, Claim)],
) -> Result<Vec<(usize, i64)>, StoreError> {
    let mut lost = Vec::new();
    for chunk in claims.chunks(INSERT_CHUNK_ROWS) {
        let mut insert = Query::insert();
        insert
            .into_table(request_id::Entity)
            .columns([
                request_id::Column::Day,
                request_id::Column::AccountNo,
                request_id::Column::RequestKey,
                request_id::Column::LogId,
            ])
            .on_conflict(
                OnConflict::columns([
                    request_id::Column::Day,
                    request_id::Column::AccountNo,
                    request_id::Column::RequestKey,
                ])
                .do_nothing()
                .to_owned(),
            )
            .returning_col(request_id::Column::LogId);
        for &(_, (day, account, rid, log_id)) in chunk {
            insert
                .values([
                    day.into(),
                    account.into(),
                    rid.to_vec().into(),
                    log_id.into(),
                ])
                .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?;
        }
        let rows = txn
            .query_all(without_statement_journal(
                txn.get_database_backend().build(&insert),
            ))
            .await?;
        if rows.len() == chunk.len() {
            continue;
        }
        let claimed: HashSet<i64> = rows
            .iter()
            .map(|row| row.try_get::<i64>("", "log_id"))
            .collect::<Result<_, _>>()?;
        for &(index, (day, account, rid, log_id)) in chunk {
            if claimed.contains(&log_id) {
                continue;
            }
            let query = Query::select()
                .column(request_id::Column::LogId)
                .from(request_id::Entity)
                .and_where(Expr::col(request_id::Column::Day).eq(day))
                .and_where(Expr::col(request_id::Column::AccountNo).eq(account))
                .and_where(Expr::col(request_id::Column::RequestKey).eq(rid.to_vec()))
                .to_owned();
            let row = txn
                .query_one(txn.get_database_backend().build(&query))
                .await?;
            if let Some(row) = row {
                lost.push((index, row.try_get::<i64>("", "log_id")?));
            }
        }
    }
    Ok(lost)
}

/// The numbers a row holds in place of its texts, as the group's transaction found or
/// added them.
struct RowNumbers<'a> {
    agent_id: &'a (dyn Fn(&str) -> Option<i64> + Sync),
    key_no: &'a (dyn Fn(&str) -> Option<i64> + Sync),
    label_no: &'a (dyn Fn(Label<'_>) -> Option<i64> + Sync),
    endpoint_no: &'a (dyn Fn(&str) -> Option<i64> + Sync),
}

async fn insert_rows(
    txn: &impl ConnectionTrait,
    entries: &[&NewLogEntry],
    assigned: &HashMap<usize, i64>,
    account_nos: &[i64],
    numbers: &RowNumbers<'_>,
) -> Result<(), StoreError> {
    // (id, record, its account number)
    let mut rows: Vec<(i64, &NewLogEntry, i64)> = assigned
        .iter()
        .map(|(&index, &id)| (id, entries[index], account_nos[index]))
        .collect();
    rows.sort_unstable_by_key(|row| row.0);
    let sqlite = txn.get_database_backend() == DbBackend::Sqlite;
    for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
        let mut insert = Query::insert();
        insert.into_table(log_entry::Entity).columns([
            log_entry::Column::Id,
            log_entry::Column::AccountNo,
            log_entry::Column::Ts,
            log_entry::Column::RequestId,
            log_entry::Column::ApiKeyNo,
            log_entry::Column::ApiKeyLabelNo,
            log_entry::Column::Method,
            log_entry::Column::EndpointNo,
            log_entry::Column::QueryParams,
            log_entry::Column::StatusCode,
            log_entry::Column::ErrorCode,
            log_entry::Column::IpHash,
            log_entry::Column::UserAgentId,
            log_entry::Column::DurationMs,
        ]);
        for &(id, entry, account_no) in chunk {
            let request_id = entry.request_id.as_deref();
            let key_no = (numbers.key_no)(&entry.api_key_id).ok_or_else(|| {
                StoreError::Database(DbErr::Custom("a key id has no number".into()))
            })?;
            let label = (
                account_no,
                key_no,
                entry.api_key_name.as_str(),
                entry.api_key_prefix.as_str(),
            );
            let label_no = (numbers.label_no)(label).ok_or_else(|| {
                StoreError::Database(DbErr::Custom("a key's label has no number".into()))
            })?;
            let endpoint_no = (numbers.endpoint_no)(&entry.endpoint).ok_or_else(|| {
                StoreError::Database(DbErr::Custom("a path has no number".into()))
            })?;
            insert
                .values([
                    id.into(),
                    account_no.into(),
                    entry.ts_micros.into(),
                    if sqlite {
                        packed_request_id(request_id)
                    } else {
                        Value::from(request_id)
                    }
                    .into(),
                    key_no.into(),
                    label_no.into(),
                    entry.method.into(),
                    endpoint_no.into(),
                    entry.query_params.as_deref().into(),
                    entry.status_code.into(),
                    entry.error_code.as_deref().into(),
                    entry.ip_hash.clone().into(),
                    (numbers.agent_id)(&entry.user_agent).into(),
                    i64::from(entry.duration_ms).into(),
                ])
                .map_err(|error| StoreError::Database(DbErr::Custom(error.to_string())))?;
        }
        txn.execute(without_statement_journal(
            txn.get_database_backend().build(&insert),
        ))
        .await?;
    }
    Ok(())
}

/// A request id as SQLite stores it (migration `m20261207_000010`): lower-case hex of even
/// length (nginx's `$request_id`, trace ids) as its bytes, half the size; anything else as
/// the text. Reads spell bytes as lower-case hex again ([`log_entry::RequestId`]), so the
/// text reads back as it came.
fn packed_request_id(request_id: Option<&str>) -> Value {
    let lower_hex = |id: &str| {
        !id.is_empty()
            && id
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    match request_id {
        Some(id) if lower_hex(id) => from_hex(id).map_or_else(|| id.into(), Value::from),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::ConnectionTrait;

    use super::*;
    use crate::domain::record::request_key;
    use crate::store::test_count;

    fn entry(request_id: &str) -> NewLogEntry {
        NewLogEntry {
            account_id: "acct_writer".into(),
            request_id: Some(request_id.into()),
            request_key: Some(request_key(request_id)),
            api_key_id: "key_1".into(),
            api_key_name: "Production".into(),
            api_key_prefix: "sk_live_".into(),
            method: "GET",
            endpoint: "/v1/models".into(),
            query_params: None,
            status_code: 200,
            error_code: None,
            ip_hash: vec![7; 32],
            user_agent: "curl/8".into(),
            duration_ms: 12,
            ts_micros: crate::domain::time::now_micros(),
        }
    }

    /// A writer on the connection it holds, as the server runs an SQLite file.
    async fn held_writer() -> (
        tempfile::TempDir,
        DatabaseConnection,
        Writer,
        JoinHandle<()>,
    ) {
        let (dir, db) = crate::store::test_database().await;
        let file = super::super::sqlite::file(&db).await.unwrap().unwrap();
        let held = HeldSqlite::open(file).await.unwrap();
        let (writer, task) = Writer::spawn(
            db.clone(),
            Some(held),
            WriterConfig::default(),
            Arc::new(AtomicBool::new(true)),
        );
        (dir, db, writer, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writers_own_thread_runs_groups_writes_and_pool_tasks() {
        let (_dir, db, writer, task) = held_writer().await;
        let stored = writer.ingest(vec![entry("r1"), entry("r2")]).await.unwrap();
        assert!(matches!(
            stored[..],
            [IngestOutcome::Stored(_), IngestOutcome::Stored(_)]
        ));
        // A write on the held connection sees what the group before it committed.
        let counted = writer
            .write(|db| async move {
                let txn = db.begin_write().await?;
                let row = txn
                    .query_one(Statement::from_string(
                        DbBackend::Sqlite,
                        "SELECT COUNT(*) AS n FROM log_entries",
                    ))
                    .await?;
                Ok(row.map(|row| row.try_get::<i64>("", "n")).transpose()?)
            })
            .await
            .unwrap();
        assert_eq!(counted, Some(2));
        // A task on the pool (sqlx, driven from that thread) too.
        let pooled = writer
            .run(|db| async move { Ok(test_count(&db, "log_entries").await) })
            .await;
        assert_eq!(pooled.unwrap(), 2);
        let again = writer.ingest(vec![entry("r1")]).await.unwrap();
        assert!(matches!(again[..], [IngestOutcome::Duplicate(_)]));
        drop(writer);
        task.await.expect("the writer ends when its queue closes");
        assert_eq!(test_count(&db, "log_entries").await, 2);
    }

    #[tokio::test]
    async fn a_job_that_panics_fails_its_caller_and_the_writer_goes_on() {
        let (_dir, db, writer, task) = held_writer().await;
        writer.ingest(vec![entry("before")]).await.unwrap();
        let failed = writer
            .write(|db| async move {
                let txn = db.begin_write().await?;
                txn.execute_unprepared("DELETE FROM log_entries").await?;
                if txn.get_database_backend() == DbBackend::Sqlite {
                    panic!("a bug in a job");
                }
                txn.commit().await
            })
            .await;
        assert!(
            matches!(failed, Err(StoreError::WriterStopped)),
            "{failed:?}"
        );
        // The held connection's transaction was rolled back, and the next group runs.
        let stored = writer.ingest(vec![entry("after")]).await.unwrap();
        assert!(matches!(stored[..], [IngestOutcome::Stored(_)]));
        drop(writer);
        task.await.expect("the writer ends when its queue closes");
        assert_eq!(test_count(&db, "log_entries").await, 2);
    }

    /// Each row's request id as read (the generated column) and as stored, in id order.
    async fn stored_request_ids(db: &DatabaseConnection) -> Vec<(String, String)> {
        db.query_all(Statement::from_string(
            DbBackend::Sqlite,
            "SELECT request_id, typeof(request_id) AS stored FROM log_entries ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.try_get::<log_entry::RequestId>("", "request_id")
                    .unwrap()
                    .0,
                row.try_get::<String>("", "stored").unwrap(),
            )
        })
        .collect()
    }

    #[tokio::test]
    async fn sqlite_stores_lower_case_hex_request_ids_as_bytes_and_reads_the_text_back() {
        use reqlog_migrations::{Migrator, MigratorTrait};
        use sea_orm::{EntityTrait, QueryOrder};
        let (_dir, db, writer, task) = held_writer().await;
        let ids = [
            "0123456789abcdef0123456789abcdef",
            "ab",
            "0af",
            "0AF0",
            "req-1",
            "00000000-0000-4000-8000-000000000000",
        ];
        let stored = writer
            .ingest(ids.iter().map(|id| entry(id)).collect())
            .await
            .unwrap();
        assert!(
            stored
                .iter()
                .all(|outcome| matches!(outcome, IngestOutcome::Stored(_)))
        );
        drop(writer);
        task.await.expect("the writer ends when its queue closes");
        let expected: Vec<(String, String)> = ids
            .iter()
            .zip(["blob", "blob", "text", "text", "text", "text"])
            .map(|(id, stored)| (id.to_string(), stored.to_owned()))
            .collect();
        assert_eq!(stored_request_ids(&db).await, expected);
        // Reads through the entity get the text, as every query does.
        let rows = log_entry::Entity::find()
            .order_by_asc(log_entry::Column::Id)
            .all(&db)
            .await
            .unwrap();
        let read: Vec<Option<String>> = rows
            .into_iter()
            .map(|row| row.request_id.map(|id| id.0))
            .collect();
        assert_eq!(read, ids.map(|id| Some(id.to_owned())));
        // Reverting the migration (and the five after it) turns the bytes back into the same
        // text.
        Migrator::down(&db, Some(6)).await.expect("down");
        let texts = db
            .query_all(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT request_id, typeof(request_id) AS stored FROM log_entries ORDER BY id",
            ))
            .await
            .unwrap();
        for (row, id) in texts.iter().zip(ids) {
            assert_eq!(row.try_get::<String>("", "request_id").unwrap(), id);
            assert_eq!(row.try_get::<String>("", "stored").unwrap(), "text");
        }
        Migrator::up(&db, None).await.expect("up");
        assert_eq!(
            stored_request_ids(&db).await,
            ids.map(|id| (id.to_owned(), "text".to_owned()))
        );
    }
}

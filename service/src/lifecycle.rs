//! A row's lifecycle: purge of a deleted key, the retention sweep, and its preview.
//!
//! Deletes run in bounded batches, each its own short transaction on the writer, so ingest
//! groups interleave with them instead of waiting for the whole purge or sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tokio::sync::Mutex;

use crate::domain::activity::{ActivityAction, BACKGROUND};
use crate::domain::lifecycle::{Plan, Retention};
use crate::domain::time::now_micros;
use crate::store::StoreError;
use crate::store::activity::{self, NewActivity};
use crate::store::admin::{self, AgeCount, SWEEP_LOCK_ID};
use crate::store::writer::Writer;

/// Accounts one sweep transaction visits at most: each costs a statement even when it has
/// nothing to delete.
const SWEEP_ACCOUNTS_PER_STEP: usize = 500;

/// Time after which a sweep transaction takes no further account (ingest waits meanwhile).
const SWEEP_STEP_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

/// Rows deleted from one account by a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSweep {
    /// The account.
    pub account_id: String,
    /// Rows deleted.
    pub deleted: u64,
    /// The window applied, in days.
    pub retention_days: i32,
    /// Rows older than this (microseconds) were deleted.
    pub cutoff_micros: i64,
}

/// What a retention window would remove from an account now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPreview {
    /// The window previewed, in days.
    pub retention_days: i32,
    /// Rows older than this (microseconds) would go.
    pub cutoff_micros: i64,
    /// Those rows.
    pub rows: AgeCount,
    /// The account's current window, in days.
    pub current_retention_days: i32,
}

/// Purge, sweep and preview over the writer.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    db: DatabaseConnection,
    writer: Writer,
    default_plan: Plan,
    batch_rows: u64,
    sweeping: Arc<Mutex<()>>,
}

impl Lifecycle {
    /// Lifecycle operations deleting `batch_rows` rows per transaction.
    pub fn new(
        db: DatabaseConnection,
        writer: Writer,
        default_plan: Plan,
        batch_rows: u64,
    ) -> Self {
        Self {
            db,
            writer,
            default_plan,
            batch_rows: batch_rows.max(1),
            sweeping: Arc::new(Mutex::new(())),
        }
    }

    /// The database the lifecycle reads from.
    pub fn database(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The plan of accounts never set.
    pub fn default_plan(&self) -> Plan {
        self.default_plan
    }

    /// Marks the key deleted, then deletes every row of it in batches; returns rows deleted.
    pub async fn purge(&self, account_id: &str, api_key_id: &str) -> Result<u64, StoreError> {
        let (account, key) = (account_id.to_owned(), api_key_id.to_owned());
        self.writer
            .run(move |db| async move {
                admin::mark_key_deleted(&db, &account, &key, now_micros()).await
            })
            .await?;
        let mut deleted = 0;
        loop {
            let (account, key, limit) = (
                account_id.to_owned(),
                api_key_id.to_owned(),
                self.batch_rows,
            );
            let batch =
                self.writer
                    .run(move |db| async move {
                        admin::delete_key_rows(&db, &account, &key, limit).await
                    })
                    .await?;
            deleted += batch;
            if batch < self.batch_rows {
                return Ok(deleted);
            }
        }
    }

    /// Deletes rows older than each account's window (one account, or all).
    ///
    /// One sweep at a time: a mutex within this process, and on PostgreSQL an advisory lock
    /// held by a transaction for the sweep's length, so replicas take turns too.
    pub async fn sweep(&self, only: Option<&str>) -> Result<Vec<AccountSweep>, StoreError> {
        let _local = self.sweeping.lock().await;
        let guard = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                let txn = self.db.begin().await?;
                // Waiting for another replica's sweep is not a slow statement.
                txn.execute_unprepared("SET LOCAL statement_timeout = 0")
                    .await?;
                txn.execute(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_advisory_xact_lock($1)",
                    [SWEEP_LOCK_ID.into()],
                ))
                .await?;
                Some(txn)
            }
            _ => None,
        };
        let started = Instant::now();
        let result = self.sweep_locked(only).await;
        if let Some(txn) = guard {
            txn.commit().await?;
        }
        let report = result?;
        let deleted: u64 = report.iter().map(|account| account.deleted).sum();
        tracing::info!(
            accounts = report.len(),
            deleted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "retention sweep finished"
        );
        Ok(report)
    }

    async fn sweep_locked(&self, only: Option<&str>) -> Result<Vec<AccountSweep>, StoreError> {
        let retentions = admin::retentions(&self.db, self.default_plan).await?;
        let accounts = match only {
            Some(account) => vec![account.to_owned()],
            None => admin::accounts_with_rows(&self.db).await?,
        };
        let now = now_micros();
        let items: Vec<(admin::SweepItem, Retention)> = accounts
            .into_iter()
            .map(|account_id| {
                let retention = retentions.get(&account_id).copied().unwrap_or(Retention {
                    plan: self.default_plan,
                    override_days: None,
                });
                let item = admin::SweepItem {
                    account_id,
                    cutoff_micros: retention.cutoff(now),
                };
                (item, retention)
            })
            .collect();
        let mut deleted = vec![0u64; items.len()];
        // Each step is one short transaction of at most `batch_rows` deletions, across as
        // many accounts as it takes; the next step starts at the first unfinished account.
        let mut next = 0;
        while next < items.len() {
            let work: Vec<admin::SweepItem> = items[next..]
                .iter()
                .take(SWEEP_ACCOUNTS_PER_STEP)
                .map(|(item, _)| item.clone())
                .collect();
            let limit = self.batch_rows;
            let progress = self
                .writer
                .run(move |db| async move {
                    admin::sweep_step(&db, &work, limit, SWEEP_STEP_BUDGET).await
                })
                .await?;
            if progress.is_empty() {
                break;
            }
            for step in progress {
                deleted[next] += step.deleted;
                if !step.finished {
                    break;
                }
                next += 1;
            }
        }
        let report = items
            .into_iter()
            .zip(deleted)
            .filter(|(_, deleted)| *deleted > 0)
            .map(|((item, retention), deleted)| AccountSweep {
                account_id: item.account_id,
                deleted,
                retention_days: retention.days(),
                cutoff_micros: item.cutoff_micros,
            })
            .collect();
        Ok(report)
    }

    /// What `retention` would remove from the account if it applied now.
    pub async fn preview(
        &self,
        account_id: &str,
        retention: Retention,
    ) -> Result<RetentionPreview, StoreError> {
        let current = admin::retention(&self.db, account_id, self.default_plan).await?;
        let cutoff = retention.cutoff(now_micros());
        let rows = admin::count_rows_before(&self.db, account_id, cutoff).await?;
        Ok(RetentionPreview {
            retention_days: retention.days(),
            cutoff_micros: cutoff,
            rows,
            current_retention_days: current.days(),
        })
    }

    /// Appends to the activity record, through the writer like every other write.
    pub async fn record_activity(&self, entries: Vec<NewActivity>) -> Result<(), StoreError> {
        self.writer
            .run(move |db| async move { activity::record(&db, entries).await })
            .await
    }

    /// Records a sweep by `principal`: an entry per account it deleted from, or one entry
    /// (for `only`, or every account) with no rows when it deleted nothing, so that every
    /// sweep leaves a trace.
    pub async fn record_sweep(
        &self,
        principal: &str,
        only: Option<&str>,
        report: &[AccountSweep],
    ) -> Result<(), StoreError> {
        let trigger = if principal == BACKGROUND {
            "trigger=background"
        } else {
            "trigger=manual"
        };
        let at = now_micros();
        let entry = |account_id: &str, rows_affected: u64, detail: String| NewActivity {
            at,
            principal: principal.to_owned(),
            action: ActivityAction::RetentionSweep.as_str(),
            account_id: account_id.to_owned(),
            api_key_id: String::new(),
            rows_affected,
            detail,
        };
        let entries = if report.is_empty() {
            vec![entry(only.unwrap_or_default(), 0, trigger.to_owned())]
        } else {
            report
                .iter()
                .map(|swept| {
                    entry(
                        &swept.account_id,
                        swept.deleted,
                        format!("{trigger} retention_days={}", swept.retention_days),
                    )
                })
                .collect()
        };
        self.record_activity(entries).await
    }

    /// Sweeps every `interval` until the task is dropped.
    pub async fn run_periodic(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate: sweep one interval after start
        loop {
            ticker.tick().await;
            match self.sweep(None).await {
                Ok(report) => {
                    if let Err(error) = self.record_sweep(BACKGROUND, None, &report).await {
                        tracing::error!(%error, "recording the background sweep failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "retention sweep failed; retrying next interval");
                }
            }
        }
    }
}

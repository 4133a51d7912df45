//! W4 (export) and W5 (purge, sweep, ingest latency during the sweep), each on a data set
//! loaded for it through the service, beside a baseline on a copy of the same database.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqlog_client::pb;
use sea_orm::{ConnectionTrait, Database};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;

use crate::data::{self, Generator};
use crate::server::ServerProcess;
use crate::workloads::{
    BenchDb, account_no, figure, find_account_no, find_number, percentile, record_until,
    wait_for_search_removals,
};
use crate::{Backend, Context, Figure};

/// The key W5 purges: it holds a tenth of the rows.
const PURGE_ACCOUNT: &str = data::BIGGEST;
const PURGE_KEY: &str = "key_w5_purged";
/// The account W4 exports: it holds every row of its data set.
const EXPORT_ACCOUNT: &str = "acct_export";
/// Rows per DELETE in the baselines (the service's steps are `--delete-batch-rows`, 1,000 by
/// default).
const DELETE_BATCH: i64 = 5_000;
/// The retention window W5 sweeps with: the data spans 30 days, so half the rows go.
const SWEEP_DAYS: i32 = 15;
/// Unary callers measuring ingest latency while idle and during the sweep: a steady load a
/// gateway would put on the service, not the saturating 64 of W2.
const LATENCY_CALLERS: u64 = 8;

/// Starts the [`LATENCY_CALLERS`] (ids from `seed`); returns the flag that stops them and
/// the task that answers their latencies.
fn latency_load(
    server: &ServerProcess,
    ctx: &Context,
    seed: u64,
) -> (Arc<AtomicBool>, JoinHandle<Result<Vec<f64>, String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(record_until(
        server.client.clone(),
        LATENCY_CALLERS,
        seed,
        ctx.now_seconds,
        true,
        Arc::clone(&stop),
    ));
    (stop, load)
}

/// Loads `ctx.rows` generated rows, each passed through `shape`, through RecordRequests.
async fn load(
    ctx: &Context,
    name: &str,
    shape: impl Fn(usize, &mut pb::RequestRecord),
) -> Result<BenchDb, String> {
    let db = BenchDb::create(ctx, name).await?;
    let server = ServerProcess::start(
        &ctx.binary,
        &db.url,
        &ctx.dir.join(format!("{name}-load.log")),
        &[],
    )
    .await?;
    let mut generator = Generator::new(ctx.seed, ctx.rows, ctx.now_seconds);
    let mut n = 0;
    let mut left = ctx.rows;
    let mut in_flight = tokio::task::JoinSet::new();
    while left > 0 {
        let size = left.min(1000);
        left -= size;
        let mut batch = generator.batch(size);
        for record in &mut batch {
            shape(n, record);
            n += 1;
        }
        if in_flight.len() >= 4
            && let Some(done) = in_flight.join_next().await
        {
            done.map_err(|e| e.to_string())??;
        }
        let client = server.client.clone();
        in_flight.spawn(async move {
            client
                .record_batch(batch)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
    while let Some(done) = in_flight.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    server.stop()?;
    Ok(db)
}

/// A copy of a loaded database, for the baseline to delete from.
async fn copy(ctx: &Context, db: &BenchDb, name: &str) -> Result<BenchDb, String> {
    match (&db.file, ctx.backend) {
        (Some(file), Backend::Sqlite) => {
            let target = ctx.dir.join(format!("{name}.db"));
            let conn = rusqlite::Connection::open(file).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&target);
            conn.execute("VACUUM INTO ?1", [target.display().to_string()])
                .map_err(|e| e.to_string())?;
            Ok(BenchDb::sqlite(target))
        }
        _ => {
            let copy = BenchDb::create(ctx, name).await?;
            copy.clone_postgres_from(db).await?;
            Ok(copy)
        }
    }
}

/// Runs `statement` (one batch of at most DELETE_BATCH rows, parameters `params`) until it
/// deletes nothing, each batch its own transaction at the service's durability; returns
/// the rows deleted.
async fn delete_batches(
    ctx: &Context,
    db: &BenchDb,
    statement: &str,
    params: Vec<sea_orm::Value>,
) -> Result<u64, String> {
    let mut total = 0;
    match (&db.file, ctx.backend) {
        (Some(file), Backend::Sqlite) => {
            let conn = rusqlite::Connection::open(file).map_err(|e| e.to_string())?;
            conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
                .map_err(|e| e.to_string())?;
            let values: Vec<rusqlite::types::Value> = params
                .into_iter()
                .map(|value| match value {
                    sea_orm::Value::BigInt(Some(v)) => rusqlite::types::Value::Integer(v),
                    sea_orm::Value::String(Some(s)) => rusqlite::types::Value::Text(*s),
                    _ => rusqlite::types::Value::Null,
                })
                .collect();
            let mut delete = conn.prepare(statement).map_err(|e| e.to_string())?;
            loop {
                let deleted = delete
                    .execute(rusqlite::params_from_iter(values.iter()))
                    .map_err(|e| e.to_string())?;
                total += deleted as u64;
                if deleted == 0 {
                    break;
                }
            }
        }
        _ => {
            let conn = Database::connect(&db.url)
                .await
                .map_err(|e| e.to_string())?;
            let statement = sea_orm::Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                statement,
                params,
            );
            loop {
                let deleted = conn
                    .execute(statement.clone())
                    .await
                    .map_err(|e| e.to_string())?
                    .rows_affected();
                total += deleted;
                if deleted == 0 {
                    break;
                }
            }
            conn.close().await.ok();
        }
    }
    Ok(total)
}

/// One batch of an account's rows (by its number) matching `condition`, deleted by primary
/// key: the clustered key on SQLite (no index on id alone), id on PostgreSQL.
fn by_key(ctx: &Context, condition: &str) -> String {
    match ctx.backend {
        Backend::Sqlite => format!(
            "DELETE FROM log_entries WHERE (account_no, ts, id) IN (SELECT account_no, ts, id FROM log_entries WHERE account_no = ? AND {condition} LIMIT {DELETE_BATCH})"
        ),
        Backend::Postgres => format!(
            "DELETE FROM log_entries WHERE id IN (SELECT id FROM log_entries WHERE account_no = ? AND {condition} LIMIT {DELETE_BATCH})"
        ),
    }
}

fn sql(ctx: &Context, sqlite: &str) -> String {
    match ctx.backend {
        Backend::Sqlite => sqlite.to_owned(),
        // PostgreSQL numbers its parameters.
        Backend::Postgres => {
            let mut out = String::with_capacity(sqlite.len());
            let mut n = 0;
            for c in sqlite.chars() {
                if c == '?' {
                    n += 1;
                    out.push_str(&format!("${n}"));
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

/// W5: purge a key holding a tenth of the rows, then sweep half of the rest with a steady
/// unary load running; baselines are raw batched DELETEs of the same rows on a copy.
pub(crate) async fn purge(ctx: &Context) -> Result<Vec<Figure>, String> {
    eprintln!("W5: loading {} rows (a tenth under one key)", ctx.rows);
    let db = load(ctx, "purge", |n, record| {
        if n % 10 == 3 {
            record.account_id = PURGE_ACCOUNT.to_owned();
            record.api_key_id = PURGE_KEY.to_owned();
            record.api_key_name = "Purged key".to_owned();
        }
    })
    .await?;
    let baseline_db = copy(ctx, &db, "purge_baseline").await?;
    // The purge and the sweep are single calls timed whole: the server's default deadline
    // (60 s) cut a PostgreSQL sweep of 450k rows short on a slow day.
    let server = ServerProcess::start(
        &ctx.binary,
        &db.url,
        &ctx.dir.join("purge.log"),
        &["--request-timeout", "0"],
    )
    .await?;
    // Purge and sweep measured in the steady state, not racing the indexer's backlog.
    let catch_up = crate::workloads::wait_for_search_index(&db).await?;
    eprintln!("W5: search index caught up {catch_up:.1} s after the server started");
    let admin = server.client.admin();
    let mut figures = Vec::new();

    eprintln!("W5: purging");
    let started = Instant::now();
    let purged = admin
        .clone()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: PURGE_ACCOUNT.to_owned(),
            api_key_id: PURGE_KEY.to_owned(),
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .deleted_count;
    let purge_seconds = started.elapsed().as_secs_f64();
    // SQLite's indexer drops the purged rows' search postings after the call: timed apart,
    // and over before the idle latency is measured.
    let purge_cleanup = wait_for_search_removals(&db).await?;
    let purge_account_no = account_no(&baseline_db, PURGE_ACCOUNT).await?;
    let purge_key_no = find_number(&baseline_db, "api_key_numbers", PURGE_KEY)
        .await?
        .ok_or_else(|| format!("{PURGE_KEY} has no number"))?;
    let started = Instant::now();
    let baseline_purged = delete_batches(
        ctx,
        &baseline_db,
        &sql(ctx, &by_key(ctx, "api_key_no = ?")),
        vec![purge_account_no.into(), purge_key_no.into()],
    )
    .await?;
    let baseline_seconds = started.elapsed().as_secs_f64();
    if purged as u64 != baseline_purged {
        return Err(format!(
            "purge deleted {purged} rows, the baseline {baseline_purged}"
        ));
    }
    figures.push(figure(
        "purge",
        format!("PurgeForKey, {purged} of {} rows", ctx.rows),
        ctx,
        (purge_seconds, baseline_seconds),
        "<= 1.5x baseline time",
        purge_seconds <= 1.5 * baseline_seconds,
        "s",
    ));
    if let Some(cleanup) = purge_cleanup {
        figures.push(figure(
            "purge",
            format!("PurgeForKey, then its search postings dropped ({cleanup:.2} s after)"),
            ctx,
            (purge_seconds + cleanup, baseline_seconds),
            "-",
            true,
            "s",
        ));
    }

    eprintln!("W5: ingest latency, idle");
    let (stop, idle) = latency_load(&server, ctx, 11);
    tokio::time::sleep(Duration::from_secs(ctx.seconds.clamp(2, 10))).await;
    stop.store(true, Ordering::Relaxed);
    let mut idle = idle.await.map_err(|e| e.to_string())??;

    eprintln!("W5: sweeping with the load running");
    for account in (0..data::ACCOUNTS).map(data::account_name) {
        admin
            .clone()
            .set_account_plan(pb::SetAccountPlanRequest {
                account_id: account,
                plan: pb::Plan::Pro as i32,
                retention_days: Some(SWEEP_DAYS),
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    let cutoff = (ctx.now_seconds - i64::from(SWEEP_DAYS) * 86_400) * 1_000_000;
    let (stop, during) = latency_load(&server, ctx, 12);
    let started = Instant::now();
    let swept = admin
        .clone()
        .run_retention_sweep(pb::RunRetentionSweepRequest::default())
        .await
        .map_err(|e| e.to_string())?
        .into_inner()
        .deleted_count;
    let sweep_seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut during = during.await.map_err(|e| e.to_string())??;
    // What the sweep left to SQLite's indexer, with the same load running.
    let (stop, cleaning) = latency_load(&server, ctx, 13);
    let sweep_cleanup = wait_for_search_removals(&db).await?;
    stop.store(true, Ordering::Relaxed);
    let mut cleaning = cleaning.await.map_err(|e| e.to_string())??;
    server.stop()?;

    // The service's sweep is a little later than the data's "now": rows within those
    // seconds of the cutoff may differ, so the baseline deletes by the service's count.
    let mut numbers = Vec::with_capacity(data::ACCOUNTS);
    for account in (0..data::ACCOUNTS).map(data::account_name) {
        // An account the data gave no rows (small runs) has no number and nothing to delete.
        numbers.extend(find_account_no(&baseline_db, &account).await?);
    }
    let started = Instant::now();
    let mut baseline_swept = 0;
    for number in numbers {
        baseline_swept += delete_batches(
            ctx,
            &baseline_db,
            &sql(ctx, &by_key(ctx, "ts < ?")),
            vec![number.into(), cutoff.into()],
        )
        .await?;
    }
    let baseline_seconds = started.elapsed().as_secs_f64();
    figures.push(figure(
        "purge",
        format!(
            "RunRetentionSweep, {swept} of {} rows (baseline deleted {baseline_swept})",
            ctx.rows - purged as usize
        ),
        ctx,
        (sweep_seconds, baseline_seconds),
        "<= 1.5x baseline time",
        sweep_seconds <= 1.5 * baseline_seconds,
        "s",
    ));
    let idle_p99 = percentile(&mut idle, 0.99);
    let during_p99 = percentile(&mut during, 0.99);
    figures.push(figure(
        "purge",
        format!(
            "RecordRequest p99 during the sweep vs idle, {LATENCY_CALLERS} callers ({} / {} calls)",
            during.len(),
            idle.len()
        ),
        ctx,
        (during_p99, idle_p99),
        "<= 2x idle p99",
        during_p99 <= 2.0 * idle_p99,
        "ms",
    ));
    if let Some(cleanup) = sweep_cleanup {
        figures.push(figure(
            "purge",
            format!("RunRetentionSweep, then its search postings dropped ({cleanup:.2} s after)"),
            ctx,
            (sweep_seconds + cleanup, baseline_seconds),
            "-",
            true,
            "s",
        ));
        if !cleaning.is_empty() {
            let cleaning_p99 = percentile(&mut cleaning, 0.99);
            figures.push(figure(
                "purge",
                format!(
                    "RecordRequest p99 while they are dropped vs idle ({} calls)",
                    cleaning.len()
                ),
                ctx,
                (cleaning_p99, idle_p99),
                "-",
                true,
                "ms",
            ));
        }
    }
    db.remove().await;
    baseline_db.remove().await;
    Ok(figures)
}

/// W4: export one account holding every row as CSV; the baseline reads the same rows and
/// columns in the same order straight from the database and writes them as CSV.
pub(crate) async fn export(ctx: &Context) -> Result<Vec<Figure>, String> {
    eprintln!("W4: loading {} rows into one account", ctx.rows);
    let db = load(ctx, "export", |_, record| {
        EXPORT_ACCOUNT.clone_into(&mut record.account_id);
    })
    .await?;
    let server =
        ServerProcess::start(&ctx.binary, &db.url, &ctx.dir.join("export.log"), &[]).await?;
    let catch_up = crate::workloads::wait_for_search_index(&db).await?;
    eprintln!("W4: search index caught up {catch_up:.1} s after the server started");
    let mut best = f64::MAX;
    let mut growth_kib = 0;
    let mut bytes = 0;
    for _ in 0..3 {
        let before = server.memory_kib("VmRSS");
        let started = Instant::now();
        let mut stream = server
            .client
            .logs()
            .export_logs(pb::ExportLogsRequest {
                account_id: EXPORT_ACCOUNT.to_owned(),
                format: pb::ExportFormat::Csv as i32,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let mut received = 0;
        while let Some(message) = stream.next().await {
            if let Some(pb::export_logs_response::Payload::Chunk(chunk)) =
                message.map_err(|e| e.to_string())?.payload
            {
                received += chunk.len();
            }
        }
        best = best.min(started.elapsed().as_secs_f64());
        growth_kib = growth_kib.max(server.memory_kib("VmHWM").saturating_sub(before));
        bytes = received;
    }
    server.stop()?;
    let rate = ctx.rows as f64 / best;
    eprintln!(
        "W4: {bytes} bytes of CSV, server RSS growth {} MiB",
        growth_kib / 1024
    );

    let mut baseline_best = f64::MAX;
    for _ in 0..3 {
        baseline_best = baseline_best.min(baseline_export(ctx, &db).await?);
    }
    let baseline_rate = ctx.rows as f64 / baseline_best;
    db.remove().await;
    let ratio = rate / baseline_rate;
    Ok(vec![
        figure(
            "export",
            format!("ExportLogs CSV, {} rows, best of 3", ctx.rows),
            ctx,
            (rate, baseline_rate),
            ">= 0.80 of baseline",
            ratio >= 0.80,
            "rows/s",
        ),
        figure(
            "export",
            "server RSS growth during the export",
            ctx,
            (growth_kib as f64 / 1024.0, 32.0),
            "<= 32 MiB",
            growth_kib <= 32 * 1024,
            "MiB",
        ),
    ])
}

/// The baseline export: the same nine columns and order, timestamps formatted by the
/// database, written as CSV into memory; returns seconds. Rows hold their key's label and
/// their path as numbers: joined (`api_key_labels`, `endpoint_numbers`) to spell them.
async fn baseline_export(ctx: &Context, db: &BenchDb) -> Result<f64, String> {
    let number = account_no(db, EXPORT_ACCOUNT).await?;
    match (&db.file, ctx.backend) {
        (Some(file), Backend::Sqlite) => {
            let conn = rusqlite::Connection::open(file).map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut query = conn
                .prepare(
                    "SELECT l.name, l.prefix, method, ep.value, query_params, status_code, \
                     error_code, lower(hex(ip_hash)), strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000000.0, 'unixepoch') \
                     FROM log_entries e JOIN api_key_labels l ON l.id = e.api_key_label_no \
                     JOIN endpoint_numbers ep ON ep.id = e.endpoint_no \
                     WHERE e.account_no = ?1 ORDER BY ts DESC, e.id DESC",
                )
                .map_err(|e| e.to_string())?;
            let mut rows = query.query([number]).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(1 << 20);
            let mut written = 0usize;
            while let Some(row) = rows.next().map_err(|e| e.to_string())? {
                for i in 0..9 {
                    if i > 0 {
                        out.push(b',');
                    }
                    match row.get_ref(i).map_err(|e| e.to_string())? {
                        rusqlite::types::ValueRef::Text(text) => {
                            if text
                                .iter()
                                .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
                            {
                                out.push(b'"');
                                for &b in text {
                                    if b == b'"' {
                                        out.push(b'"');
                                    }
                                    out.push(b);
                                }
                                out.push(b'"');
                            } else {
                                out.extend_from_slice(text);
                            }
                        }
                        rusqlite::types::ValueRef::Integer(v) => {
                            out.extend_from_slice(v.to_string().as_bytes());
                        }
                        _ => {}
                    }
                }
                out.push(b'\n');
                if out.len() >= 1 << 20 {
                    written += out.len();
                    out.clear();
                }
            }
            std::hint::black_box(written + out.len());
            Ok(started.elapsed().as_secs_f64())
        }
        _ => {
            use sea_orm::sqlx::postgres::PgPoolCopyExt;
            let pool = sea_orm::sqlx::PgPool::connect(&db.url)
                .await
                .map_err(|e| e.to_string())?;
            let started = Instant::now();
            let mut stream = pool
                .copy_out_raw(&format!(
                    "COPY (SELECT l.name, l.prefix, method, ep.value, query_params, status_code, \
                     error_code, encode(ip_hash, 'hex'), to_char(to_timestamp(ts / 1000000.0) AT TIME ZONE 'UTC', \
                     'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') FROM log_entries e \
                     JOIN api_key_labels l ON l.id = e.api_key_label_no \
                     JOIN endpoint_numbers ep ON ep.id = e.endpoint_no WHERE e.account_no = {number} \
                     ORDER BY ts DESC, e.id DESC) TO STDOUT (FORMAT csv)"
                ))
                .await
                .map_err(|e| e.to_string())?;
            let mut received = 0usize;
            while let Some(chunk) = stream.next().await {
                received += chunk.map_err(|e| e.to_string())?.len();
            }
            std::hint::black_box(received);
            let seconds = started.elapsed().as_secs_f64();
            pool.close().await;
            Ok(seconds)
        }
    }
}

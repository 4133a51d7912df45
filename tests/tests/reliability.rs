//! Faults against the real `reqlog` binary: SIGTERM and SIGKILL during sustained ingest
//! from several clients, and a database too slow for the load (backpressure). Whatever
//! the server acknowledged must be stored, exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use reqlog_client::ReqlogClient;
use reqlog_tests::load::{IngestLog, assert_exactly_once, id_batch, stored_request_ids};
use reqlog_tests::process::ServerProcess;
use reqlog_tests::{Backend, TestDb, backend_tests};
use sea_orm::{ConnectionTrait, Database};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic_types::StatusExt;

const ACCOUNT: &str = "acct_faults";
const CLIENTS: usize = 4;
const BATCH: usize = 50;
/// Batches acknowledged (all clients together) before the fault.
const BATCHES_BEFORE_FAULT: usize = 60;

fn start(name: &str, url: &str, extra: &[&str]) -> ServerProcess {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--sweep-interval",
        "0",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(name, &args, Duration::from_secs(120))
}

/// A client sending batches until a call fails (the server went away).
async fn ingest_until_failure(
    endpoint: String,
    tag: &'static str,
    client_no: usize,
    progress: Arc<AtomicUsize>,
) -> IngestLog {
    let client = ReqlogClient::connect(endpoint)
        .await
        .expect("the client should connect");
    let mut log = IngestLog::default();
    for seq in 0.. {
        let batch = id_batch(ACCOUNT, tag, client_no, seq, BATCH);
        if log.send(&client, batch).await.is_err() {
            break;
        }
        progress.fetch_add(1, Ordering::SeqCst);
    }
    log
}

/// Starts the clients and returns once they have `BATCHES_BEFORE_FAULT` acknowledged.
async fn load(server: &ServerProcess, tag: &'static str) -> Vec<JoinHandle<IngestLog>> {
    let progress = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client_no| {
            tokio::spawn(ingest_until_failure(
                server.endpoint(),
                tag,
                client_no,
                Arc::clone(&progress),
            ))
        })
        .collect();
    while progress.load(Ordering::SeqCst) < BATCHES_BEFORE_FAULT {
        assert!(
            !clients.iter().any(JoinHandle::is_finished),
            "a client failed before the fault:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    clients
}

async fn collect(clients: Vec<JoinHandle<IngestLog>>) -> Vec<IngestLog> {
    let mut logs = Vec::new();
    for client in clients {
        logs.push(client.await.expect("a client task should not panic"));
    }
    logs
}

/// SIGTERM: calls in flight are answered, the writer commits what it holds, the process
/// exits 0; afterwards every acknowledged record is there, and no refused one.
async fn sigterm_during_ingest_keeps_every_acknowledged_record(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let mut server = start("sigterm", &test_db.url, &["--shutdown-grace", "60s"]);
    let clients = load(&server, "term").await;
    server.signal("TERM");
    let logs = collect(clients).await;
    let status = server
        .wait_exit(Duration::from_secs(90))
        .expect("the server should stop within its grace period");
    assert!(
        status.success(),
        "a graceful stop exits 0, got {status}:\n{}",
        server.log_text()
    );
    for log in &logs {
        for (code, message) in &log.failures {
            // A stream cut by the closing connection reaches tonic's client as an h2 error,
            // which it reports as INTERNAL "h2 protocol error: …"; the server's own INTERNAL
            // ("database error") would be a real failure.
            let transport = *code == Code::Internal && message.starts_with("h2 protocol error");
            assert!(
                transport || matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown),
                "a call during shutdown failed with {code:?} {message}:\n{}",
                server.log_text()
            );
        }
    }

    let restarted = start("sigterm-restarted", &test_db.url, &[]);
    let client = ReqlogClient::connect(restarted.endpoint())
        .await
        .expect("the client should connect");
    let stored = stored_request_ids(&client, ACCOUNT).await;
    assert_exactly_once(&stored, logs.iter().flat_map(|log| &log.acknowledged));
    // A graceful stop answers every call it took: a call that got no answer never ran.
    let refused_but_stored: Vec<_> = logs
        .iter()
        .flat_map(|log| log.unacknowledged.iter().flatten())
        .filter(|record| stored.contains_key(&record.request_id))
        .map(|record| record.request_id.clone())
        .collect();
    assert!(
        refused_but_stored.is_empty(),
        "records stored without an answer: {refused_but_stored:?}"
    );
    drop(restarted);
    test_db.remove().await;
}

/// SIGKILL: nothing is drained, but what was acknowledged was committed; clients resend
/// the calls that got no answer, with the same request ids, and each is stored once.
async fn sigkill_during_ingest_then_retries_store_each_record_once(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let mut server = start("sigkill", &test_db.url, &[]);
    let clients = load(&server, "kill").await;
    server.signal("KILL");
    let mut logs = collect(clients).await;
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("a killed server should be gone");
    assert!(!status.success());

    let resent = restart_and_resend("sigkill-restarted", &test_db.url, &mut logs).await;
    assert!(resent >= 1, "every client's last call should have failed");
    test_db.remove().await;
}

/// Restarts the server on the same database and checks that every acknowledged record is
/// stored once; then resends every call that got no answer (same request ids) and checks
/// that each record sent is stored exactly once. Returns how many calls were resent.
async fn restart_and_resend(name: &str, url: &str, logs: &mut [IngestLog]) -> usize {
    let restarted = start(name, url, &[]);
    let client = ReqlogClient::connect(restarted.endpoint())
        .await
        .expect("the client should connect");
    let stored = stored_request_ids(&client, ACCOUNT).await;
    assert_exactly_once(&stored, logs.iter().flat_map(|log| &log.acknowledged));
    let mut resent = 0;
    for log in logs.iter_mut() {
        resent += log.unacknowledged.len();
        log.retry_all(&client).await;
    }
    let stored = stored_request_ids(&client, ACCOUNT).await;
    let acknowledged: Vec<&String> = logs.iter().flat_map(|log| &log.acknowledged).collect();
    assert_exactly_once(&stored, acknowledged.iter().copied());
    assert_eq!(
        stored.len(),
        acknowledged.len(),
        "every record sent is acknowledged now, and nothing else is stored"
    );
    resent
}

/// SIGTERM with a grace period too short to drain the calls in flight: the process still
/// exits (status 1 when the grace ran out), every acknowledged record is stored once, and
/// the clients' resends of the unanswered calls (same request ids) are stored once too,
/// whether the writer committed them before it ended or not.
async fn sigterm_past_a_short_grace_loses_nothing_acknowledged(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let mut server = start("sigterm-grace", &test_db.url, &["--shutdown-grace", "1ms"]);
    let clients = load(&server, "grace").await;
    server.signal("TERM");
    let mut logs = collect(clients).await;
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server should exit soon after its grace period");
    let log = server.log_text();
    assert!(
        status.success() || log.contains("shutdown grace period over"),
        "a stop that fails says the grace ran out, got {status}:\n{log}"
    );

    restart_and_resend("sigterm-grace-restarted", &test_db.url, &mut logs).await;
    test_db.remove().await;
}

/// SIGTERM during an export that outlasts half the grace period (the reader is slow):
/// the export ends with UNAVAILABLE, not with a summary, and the server still exits 0.
async fn sigterm_ends_a_long_export_cleanly(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let mut server = start("sigterm-export", &test_db.url, &["--shutdown-grace", "4s"]);
    let client = ReqlogClient::connect(server.endpoint())
        .await
        .expect("the client should connect");
    let mut log = IngestLog::default();
    // ~18 MB of NDJSON: more than HTTP/2 windows and socket buffers hold in flight.
    for seq in 0..60 {
        log.send(&client, id_batch(ACCOUNT, "export", 0, seq, 1_000))
            .await
            .expect("ingest on an idle server succeeds");
    }
    let mut stream = client
        .logs()
        .export_logs(reqlog_client::pb::ExportLogsRequest {
            account_id: ACCOUNT.to_owned(),
            format: reqlog_client::pb::ExportFormat::Ndjson as i32,
            ..Default::default()
        })
        .await
        .expect("the export should start")
        .into_inner();
    let first = stream.message().await.expect("a first chunk");
    assert!(first.is_some());
    server.signal("TERM");
    // At 50 ms a chunk the ~280 chunks take far longer than the 2 s exports get.
    let mut chunks = 1;
    let ended = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match stream.message().await {
            Ok(Some(message)) => {
                assert!(
                    matches!(
                        message.payload,
                        Some(reqlog_client::pb::export_logs_response::Payload::Chunk(_))
                    ),
                    "a slow export must not reach its summary after {chunks} chunks"
                );
                chunks += 1;
            }
            Ok(None) => panic!("the export ended without a status after {chunks} chunks"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the server should stop");
    assert!(status.success(), "{status}:\n{}", server.log_text());
    assert_eq!(server.events("export ended by shutdown").len(), 1);
    test_db.remove().await;
}

backend_tests!(
    sigterm_ends_a_long_export_cleanly,
    sigterm_during_ingest_keeps_every_acknowledged_record,
    sigkill_during_ingest_then_retries_store_each_record_once,
    sigterm_past_a_short_grace_loses_nothing_acknowledged,
);

/// Records attempted while the database is held up; enough that a server buffering them
/// (as a waiting queue would) grows far past `RSS_GROWTH_LIMIT_KIB`.
const OVERLOAD_RECORDS: usize = 400_000;
/// Callers with a call in flight each, over a few connections: a waiting queue would hold
/// all their records at once.
const OVERLOAD_CALLERS: usize = 32;
const OVERLOAD_CONNECTIONS: usize = 8;
const OVERLOAD_BATCH: usize = 1_000;
/// In-flight calls (32 × ~1,000 decoded records) dominate what the server holds: measured
/// ~30-40 MiB of growth; the 400,000 records offered would be several times the limit.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// A database slower than the load: another session holds an EXCLUSIVE lock on the log
/// table most of the time (reads go on, writes wait), so the writer's inserts wait.
/// Calls that find the queue full get RESOURCE_EXHAUSTED with RetryInfo, the server's
/// memory stays bounded, and every acknowledged record is stored.
///
/// PostgreSQL, because SQLite cannot be slowed this way today: with another connection
/// holding SQLite's write lock (`BEGIN IMMEDIATE`), the writer's transaction, which reads
/// before it writes, fails at once with "database is locked" (INTERNAL) instead of waiting
/// on its busy timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_database_gets_resource_exhausted_not_memory_growth() {
    let Some(test_db) = TestDb::create(Backend::Postgres).await else {
        return;
    };
    let server = start(
        "backpressure",
        &test_db.url,
        &[
            "--ingest-queue-records",
            "2000",
            "--ingest-queue-wait",
            "20ms",
        ],
    );
    let client = ReqlogClient::connect(server.endpoint())
        .await
        .expect("the client should connect");
    // Warm up (pages, pools, allocator) before the baseline.
    let mut warm_up = IngestLog::default();
    for seq in 0..10 {
        warm_up
            .send(&client, id_batch(ACCOUNT, "warm", 0, seq, OVERLOAD_BATCH))
            .await
            .expect("ingest on an idle database succeeds");
    }
    let baseline = server
        .rss_kib()
        .expect("the server's RSS should be readable");

    let locker = Database::connect(test_db.url.as_str())
        .await
        .expect("a second session should connect");
    let done = Arc::new(AtomicBool::new(false));
    let holder = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            // Long holds, short gaps: the writer commits a group now and then and the
            // queue stays full in between. One round trip, so the lock never outlives it.
            while !done.load(Ordering::SeqCst) {
                locker
                    .execute_unprepared(
                        "BEGIN; LOCK TABLE log_entries IN EXCLUSIVE MODE; \
                         SELECT pg_sleep(0.5); COMMIT;",
                    )
                    .await
                    .expect("the table lock should be taken and released");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            locker.close().await.ok();
        })
    };

    let attempted = Arc::new(AtomicUsize::new(0));
    let mut connections = Vec::new();
    for _ in 0..OVERLOAD_CONNECTIONS {
        let connection = ReqlogClient::connect(server.endpoint())
            .await
            .expect("the client should connect");
        connections.push(connection);
    }
    let clients: Vec<JoinHandle<IngestLog>> = (0..OVERLOAD_CALLERS)
        .map(|client_no| {
            let client = connections[client_no % OVERLOAD_CONNECTIONS].clone();
            let (done, attempted) = (Arc::clone(&done), Arc::clone(&attempted));
            tokio::spawn(async move {
                let mut log = IngestLog::default();
                let mut seq = 0;
                while !done.load(Ordering::SeqCst) {
                    let batch = id_batch(ACCOUNT, "flood", client_no, seq, OVERLOAD_BATCH);
                    seq += 1;
                    attempted.fetch_add(OVERLOAD_BATCH, Ordering::SeqCst);
                    if let Err(status) = log.send(&client, batch).await {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        let advice = status
                            .get_details_retry_info()
                            .expect("RESOURCE_EXHAUSTED should carry RetryInfo");
                        assert!(advice.retry_delay.is_some_and(|delay| !delay.is_zero()));
                        // Not resent here: the check is on what was acknowledged.
                        log.unacknowledged.clear();
                    }
                }
                log
            })
        })
        .collect();

    let mut peak = baseline;
    while attempted.load(Ordering::SeqCst) < OVERLOAD_RECORDS {
        assert!(
            !clients.iter().any(JoinHandle::is_finished),
            "a client failed:\n{}",
            server.log_text()
        );
        peak = peak.max(server.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.store(true, Ordering::SeqCst);
    let logs = collect(clients).await;
    holder.await.expect("the lock holder should not panic");
    peak = peak.max(server.rss_kib().unwrap_or(0));

    let exhausted: usize = logs.iter().map(|log| log.failures.len()).sum();
    eprintln!(
        "backpressure: {} records attempted, {exhausted} calls refused, RSS {baseline} KiB → peak {peak} KiB",
        attempted.load(Ordering::SeqCst)
    );
    assert!(
        exhausted > 0,
        "a full queue should answer RESOURCE_EXHAUSTED"
    );
    assert!(
        peak.saturating_sub(baseline) < RSS_GROWTH_LIMIT_KIB,
        "the server grew from {baseline} KiB to {peak} KiB under overload"
    );

    let stored = stored_request_ids(&client, ACCOUNT).await;
    assert_exactly_once(
        &stored,
        logs.iter()
            .chain([&warm_up])
            .flat_map(|log| &log.acknowledged),
    );
    drop(server);
    test_db.remove().await;
}

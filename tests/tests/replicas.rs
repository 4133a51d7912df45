//! Two `reqlog serve` processes on one PostgreSQL database, as replicas behind a load
//! balancer: request-id idempotency across both, a purge on one seen by the other, and
//! retention sweeps that take turns. Runs when `REQLOG_TEST_POSTGRES_URL` is set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqlog_client::{ClientError, ReqlogClient, pb};
use reqlog_tests::process::ServerProcess;
use reqlog_tests::{Backend, TestDb, now_seconds, record};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement};

const INGEST_ACCOUNT: &str = "acct_replicas";
const PURGE_ACCOUNT: &str = "acct_replicas_purge";
const SWEEP_ACCOUNT: &str = "acct_replicas_sweep";
/// Request ids both replicas receive, each from two callers on each replica.
const SHARED_IDS: usize = 300;
/// Rows older than the default (Free, one day) window, and rows inside it.
const OLD_ROWS: usize = 1_200;
const RECENT_ROWS: usize = 40;
/// Small delete batches, so a sweep takes many transactions and two sweeps that were
/// not kept apart would interleave and split the rows between them.
const DELETE_BATCH_ROWS: &str = "20";

/// User agents the replicas' records carry.
const REPLICA_AGENTS: usize = 7;

fn replica_agent(n: usize) -> String {
    format!("replica-agent/{}", n % REPLICA_AGENTS)
}

/// A recent timestamp (inside every retention window), varied by `n`.
fn recent(n: usize) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: now_seconds() - 3_600 + (n % 600) as i64,
        nanos: 0,
    }
}

/// A timestamp two to three days old (outside the Free plan's window), varied by `n`.
fn old(n: usize) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: now_seconds() - 2 * 86_400 - (n % 40_000) as i64,
        nanos: 0,
    }
}

fn start_replica(name: &str, url: &str) -> ServerProcess {
    ServerProcess::start(
        name,
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--sweep-interval",
            "0",
            "--delete-batch-rows",
            DELETE_BATCH_ROWS,
            "--health-check-interval",
            "500ms",
        ],
        Duration::from_secs(60),
    )
}

async fn count(db: &DatabaseConnection, sql: &str, account: &str) -> i64 {
    let row = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [account.into()],
        ))
        .await
        .expect("counting should succeed")
        .expect("a count row");
    row.try_get("", "n").expect("a count")
}

/// Sends every shared record through `client`, in the order `order` gives; returns
/// request id → (row id, duplicate).
async fn send_all(
    client: ReqlogClient,
    records: Arc<Vec<pb::RequestRecord>>,
    order: Vec<usize>,
) -> HashMap<String, (String, bool)> {
    let mut answers = HashMap::new();
    for index in order {
        let record = records[index].clone();
        let request_id = record.request_id.clone();
        let outcome = client
            .record(record)
            .await
            .unwrap_or_else(|error| panic!("{request_id} failed: {error:?}"));
        answers.insert(request_id, (outcome.id, outcome.duplicate));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_share_one_database() {
    let Some(test_db) = TestDb::create(Backend::Postgres).await else {
        return; // TestDb printed the notice
    };
    let started = Instant::now();
    let binary = tokio::task::spawn_blocking(reqlog_tests::process::reqlog_binary)
        .await
        .expect("built");
    eprintln!(
        "reqlog binary {} ready after {:?}",
        binary.display(),
        started.elapsed()
    );

    // A migrates; B starts on the migrated database.
    let url = test_db.url.clone();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let a = start_replica("replica-a", &url);
        let b = start_replica("replica-b", &url);
        (a, b)
    })
    .await
    .expect("replicas start");
    assert_ne!(a.addr, b.addr);
    let client_a = ReqlogClient::connect(a.endpoint())
        .await
        .expect("connect to A");
    let client_b = ReqlogClient::connect(b.endpoint())
        .await
        .expect("connect to B");
    let db = Database::connect(&test_db.url)
        .await
        .expect("the test database should accept connections");
    let phase = Instant::now();

    // 1. The same request ids through both replicas at once, from two callers on each, in
    // different orders: one row per id, and every answer names that row. The account and
    // the user agents are new to both, so the replicas also race to add them to the
    // dictionaries.
    let records: Arc<Vec<pb::RequestRecord>> = Arc::new(
        (0..SHARED_IDS)
            .map(|n| {
                let mut record = record(INGEST_ACCOUNT, n);
                record.request_id = format!("shared-{n}");
                record.timestamp = Some(recent(n));
                record.user_agent = replica_agent(n);
                record
            })
            .collect(),
    );
    let forward: Vec<usize> = (0..SHARED_IDS).collect();
    let backward: Vec<usize> = (0..SHARED_IDS).rev().collect();
    let odd_first: Vec<usize> = (0..SHARED_IDS)
        .filter(|n| n % 2 == 1)
        .chain((0..SHARED_IDS).filter(|n| n % 2 == 0))
        .collect();
    let callers = [
        (client_a.clone(), forward.clone()),
        (client_b.clone(), forward),
        (client_a.clone(), backward),
        (client_b.clone(), odd_first),
    ];
    let tasks: Vec<_> = callers
        .into_iter()
        .map(|(client, order)| tokio::spawn(send_all(client, Arc::clone(&records), order)))
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("callers do not panic"));
    }
    for record in records.iter() {
        let id = &record.request_id;
        let seen: Vec<&(String, bool)> = answers.iter().map(|answers| &answers[id]).collect();
        assert!(
            seen.iter().all(|(row, _)| *row == seen[0].0),
            "{id}: replicas answered different rows: {seen:?}"
        );
        let stored = seen.iter().filter(|(_, duplicate)| !duplicate).count();
        assert_eq!(
            stored, 1,
            "{id}: {stored} calls claim to have stored it: {seen:?}"
        );
    }
    let rows = count(
        &db,
        "SELECT COUNT(*) AS n FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1)",
        INGEST_ACCOUNT,
    )
    .await;
    assert_eq!(rows, SHARED_IDS as i64);
    let distinct = count(
        &db,
        "SELECT COUNT(DISTINCT request_id) AS n FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1)",
        INGEST_ACCOUNT,
    )
    .await;
    assert_eq!(distinct, SHARED_IDS as i64);
    let numbers = count(
        &db,
        "SELECT COUNT(*) AS n FROM account_numbers WHERE value = $1",
        INGEST_ACCOUNT,
    )
    .await;
    assert_eq!(numbers, 1, "one number for the account both replicas added");
    // Both replicas list the same rows (and the one answer's id is the listed row's id).
    for client in [&client_a, &client_b] {
        let page = client
            .list_logs(pb::ListLogsRequest {
                account_id: INGEST_ACCOUNT.into(),
                page_size: 1000,
                include_total_size: true,
                ..Default::default()
            })
            .await
            .expect("listing should succeed");
        assert_eq!(page.total_size, SHARED_IDS as i64);
        for log in &page.logs {
            assert_eq!(answers[0][&log.request_id].0, log.id);
            let n: usize = log.request_id["shared-".len()..].parse().expect("a number");
            assert_eq!(log.user_agent, replica_agent(n));
        }
    }
    let agents = count(
        &db,
        "SELECT COUNT(*) AS n FROM user_agents WHERE value LIKE $1",
        "replica-agent/%",
    )
    .await;
    assert_eq!(agents, REPLICA_AGENTS as i64, "each agent is stored once");
    eprintln!("idempotency across replicas: {:?}", phase.elapsed());
    let phase = Instant::now();

    // 2. B has taken records for a key; A purges it; B refuses later records for it.
    let purged_key = |n: usize| {
        let mut record = record(PURGE_ACCOUNT, n);
        record.api_key_id = "key_purged".into();
        record.timestamp = Some(recent(n));
        record
    };
    let batch = client_b
        .record_batch((0..20).map(purged_key).collect())
        .await
        .expect("B stores the key's records");
    assert_eq!(batch.accepted, 20);
    let purge = client_a
        .admin()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: PURGE_ACCOUNT.into(),
            api_key_id: "key_purged".into(),
        })
        .await
        .expect("A purges the key")
        .into_inner();
    assert_eq!(purge.deleted_count, 20);
    let refused = client_b
        .record(purged_key(100))
        .await
        .expect_err("B must refuse a purged key's records");
    assert!(
        matches!(refused, ClientError::FailedPrecondition(_)),
        "{refused:?}"
    );
    let mut other_key = record(PURGE_ACCOUNT, 102);
    other_key.timestamp = Some(recent(102));
    let batch = client_b
        .record_batch(vec![purged_key(101), other_key])
        .await
        .expect("a batch stands record by record");
    assert_eq!(batch.accepted, 1, "{batch:?}");
    assert_eq!(
        batch.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        [0]
    );
    let left = count(
        &db,
        "SELECT COUNT(*) AS n FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1) AND api_key_no = (SELECT id FROM api_key_numbers WHERE value = 'key_purged')",
        PURGE_ACCOUNT,
    )
    .await;
    assert_eq!(left, 0, "purged history must not reappear");
    let mut other_key = record(PURGE_ACCOUNT, 103);
    other_key.timestamp = Some(recent(103));
    client_a
        .record(other_key)
        .await
        .expect("other keys are unaffected");
    eprintln!("purge seen across replicas: {:?}", phase.elapsed());
    let phase = Instant::now();

    // 3. Old and recent rows; then a sweep of every account through both replicas at once.
    let sweep_rows: Vec<pb::RequestRecord> = (0..OLD_ROWS + RECENT_ROWS)
        .map(|n| {
            let mut record = record(SWEEP_ACCOUNT, n);
            record.timestamp = Some(if n < OLD_ROWS { old(n) } else { recent(n) });
            record
        })
        .collect();
    for (i, chunk) in sweep_rows.chunks(500).enumerate() {
        let client = if i % 2 == 0 { &client_a } else { &client_b };
        let response = client
            .record_batch(chunk.to_vec())
            .await
            .expect("storing sweep rows should succeed");
        assert_eq!(response.accepted as usize, chunk.len());
    }
    let cutoff_micros = (now_seconds() - 86_400) * 1_000_000;
    let old_everywhere = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT COUNT(*) AS n FROM log_entries WHERE ts < $1",
            [cutoff_micros.into()],
        ))
        .await
        .expect("counting should succeed")
        .expect("a count row")
        .try_get::<i64>("", "n")
        .expect("a count");
    assert_eq!(
        old_everywhere, OLD_ROWS as i64,
        "only the sweep account has old rows"
    );

    let sweep = |client: ReqlogClient| async move {
        client
            .admin()
            .run_retention_sweep(pb::RunRetentionSweepRequest {
                account_id: String::new(),
            })
            .await
            .map(tonic::Response::into_inner)
    };
    let (swept_a, swept_b) = tokio::join!(sweep(client_a.clone()), sweep(client_b.clone()));
    let swept_a = swept_a.expect("the sweep through A succeeds");
    let swept_b = swept_b.expect("the sweep through B succeeds");
    assert_eq!(
        swept_a.deleted_count + swept_b.deleted_count,
        old_everywhere,
        "old rows are deleted exactly once in total (A {}, B {})",
        swept_a.deleted_count,
        swept_b.deleted_count
    );
    // Taking turns: whichever got the lock first deleted everything; the other found
    // nothing left. Sweeps running side by side would have split the batches.
    let (first, second) = if swept_a.deleted_count >= swept_b.deleted_count {
        (&swept_a, &swept_b)
    } else {
        (&swept_b, &swept_a)
    };
    assert_eq!(
        (first.deleted_count, second.deleted_count),
        (old_everywhere, 0),
        "the two sweeps overlapped"
    );
    let sweep_account = first
        .accounts
        .iter()
        .find(|account| account.account_id == SWEEP_ACCOUNT)
        .expect("the sweep account is reported");
    assert_eq!(sweep_account.deleted_count, OLD_ROWS as i64);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1)",
            SWEEP_ACCOUNT
        )
        .await,
        RECENT_ROWS as i64
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) AS n FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1)",
            INGEST_ACCOUNT
        )
        .await,
        SHARED_IDS as i64,
        "recent rows survive the sweep"
    );
    // Each replica logged its own sweep, with what it answered, when it ended and how long
    // it ran once it held the lock. The later one began only after the earlier one ended.
    let mut intervals = Vec::new();
    for (replica, answer) in [(&a, &swept_a), (&b, &swept_b)] {
        let finished = replica.events("retention sweep finished");
        let [line] = finished.as_slice() else {
            panic!("{} logged {} sweeps", replica.name, finished.len());
        };
        assert_eq!(
            line.field("deleted").as_i64(),
            Some(answer.deleted_count),
            "{}",
            replica.name
        );
        let end = line.timestamp_micros().expect("a JSON log timestamp");
        let elapsed_ms = line.field("elapsed_ms").as_i64().expect("elapsed_ms");
        intervals.push((end - elapsed_ms * 1_000, end, replica.name.clone()));
    }
    intervals.sort_by_key(|&(_, end, _)| end);
    let (earlier, later) = (&intervals[0], &intervals[1]);
    // Both clocks are this machine's. The lock is released (commit) just before the earlier
    // sweep's line is written; 25 ms of slack covers that process being descheduled there
    // on a busy machine, while sweeps side by side would overlap by their whole length.
    assert!(
        later.0 >= earlier.1 - 25_000,
        "the sweeps overlapped: {} ran {:?}, {} ran {:?} (µs since the epoch)",
        earlier.2,
        (earlier.0, earlier.1),
        later.2,
        (later.0, later.1)
    );
    eprintln!(
        "concurrent sweeps: deleted {} and {}, {} ms then {} ms; {:?}",
        first.deleted_count,
        second.deleted_count,
        (earlier.1 - earlier.0) / 1_000,
        (later.1 - later.0) / 1_000,
        phase.elapsed()
    );

    db.close().await.ok();
    let (mut a, mut b) = (a, b);
    let (exit_a, exit_b) = tokio::task::spawn_blocking(move || {
        let grace = Duration::from_secs(10);
        (a.stop(grace), b.stop(grace))
    })
    .await
    .expect("replicas stop");
    for (name, exit) in [("A", exit_a), ("B", exit_b)] {
        assert!(
            exit.is_some_and(|status| status.success()),
            "replica {name} should exit cleanly on SIGTERM: {exit:?}"
        );
    }
    test_db.remove().await;
    eprintln!("two replicas: {:?} in all", started.elapsed());
}

//! PostgreSQL stopped during ingest: calls fail with UNAVAILABLE (retryable), health turns
//! NOT_SERVING, both recover by themselves when the database is back, and no acknowledged
//! record is lost or stored twice.
//!
//! The test stops a PostgreSQL cluster of its own (`initdb` on a free port), so the shared
//! server the other tests use keeps running. It runs when `REQLOG_TEST_POSTGRES_URL` is set
//! (the sign that PostgreSQL tests are wanted) and `initdb` is found.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqlog_client::{ClientError, ReqlogClient, pb};
use reqlog_service::store::StoreError;
use reqlog_tests::process::PgCluster;
use reqlog_tests::{Backend, POSTGRES_URL_VAR, TestDb, TestServer, record};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const ACCOUNT: &str = "acct_outage";
/// Clients sending one record a call, and clients sending batches.
const SINGLE_CLIENTS: usize = 2;
const BATCH_CLIENTS: usize = 2;
const BATCH_RECORDS: usize = 100;
/// No single phase may take longer; the whole test stays under a minute.
const PHASE_LIMIT: Duration = Duration::from_secs(15);
/// A gateway's deadline for one call. At the start of an outage the writer waits out the
/// pool's acquire timeout (5 s) for the group in hand, and again for each of its jobs when
/// it retries them one by one (up to 4 here), so the first UNAVAILABLE answers may take
/// that long; later ones come at once (health check failing).
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// What the clients saw.
#[derive(Debug, Default)]
struct Ledger {
    /// Acknowledged request ids and the row id the server answered.
    acked: Mutex<HashMap<String, String>>,
    /// Acknowledgements that said `duplicate` (a retry of a record whose commit landed
    /// although its answer was lost).
    duplicates: AtomicU64,
    /// Calls answered UNAVAILABLE.
    unavailable: AtomicU64,
    /// The longest a call took to be answered UNAVAILABLE, in milliseconds.
    slowest_unavailable_ms: AtomicU64,
    /// Anything else: every entry fails the test.
    unexpected: Mutex<Vec<String>>,
}

impl Ledger {
    fn acked(&self) -> usize {
        self.acked.lock().expect("not poisoned").len()
    }

    fn ack(&self, request_id: &str, id: String, duplicate: bool) {
        if duplicate {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        let previous = self
            .acked
            .lock()
            .expect("not poisoned")
            .insert(request_id.to_owned(), id);
        if previous.is_some() {
            self.unexpected(format!("{request_id} acknowledged twice"));
        }
    }

    fn unexpected(&self, what: String) {
        self.unexpected.lock().expect("not poisoned").push(what);
    }

    /// Classifies a failed call; every caller retries the same request ids afterwards.
    fn failed(&self, error: &ClientError, took: Duration) {
        match error {
            ClientError::Unavailable(_) => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
                self.slowest_unavailable_ms
                    .fetch_max(took.as_millis() as u64, Ordering::Relaxed);
            }
            other => self.unexpected(format!("{other:?}")),
        }
    }
}

fn with_request_id(n: usize, request_id: String) -> pb::RequestRecord {
    let mut record = record(ACCOUNT, n);
    record.request_id = request_id;
    record
}

/// Sends records one a call; retries an unacknowledged one (same request id, same
/// timestamp) until it is acknowledged, then moves on, until `stop`.
async fn single_client(client: ReqlogClient, n: usize, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut seq = 0;
    while !stop.load(Ordering::Acquire) {
        let request_id = format!("single-{n}-{seq}");
        let record = with_request_id(seq, request_id.clone());
        loop {
            let sent = Instant::now();
            match tokio::time::timeout(CALL_LIMIT, client.record(record.clone())).await {
                Ok(Ok(outcome)) => {
                    ledger.ack(&request_id, outcome.id, outcome.duplicate);
                    break;
                }
                Ok(Err(error)) => ledger.failed(&error, sent.elapsed()),
                Err(_) => ledger.unexpected(format!("{request_id}: no answer in {CALL_LIMIT:?}")),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seq += 1;
    }
}

/// As `single_client`, with `RecordRequests` batches.
async fn batch_client(client: ReqlogClient, n: usize, ledger: Arc<Ledger>, stop: Arc<AtomicBool>) {
    let mut seq = 0;
    while !stop.load(Ordering::Acquire) {
        let ids: Vec<String> = (0..BATCH_RECORDS)
            .map(|i| format!("batch-{n}-{seq}-{i}"))
            .collect();
        let records: Vec<pb::RequestRecord> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| with_request_id(seq * BATCH_RECORDS + i, id.clone()))
            .collect();
        loop {
            let sent = Instant::now();
            let call = client.record_batch(records.clone());
            match tokio::time::timeout(CALL_LIMIT, call).await {
                Ok(Ok(response)) => {
                    if !response.rejected.is_empty() {
                        ledger.unexpected(format!("rejected: {:?}", response.rejected));
                    }
                    let stored = (response.accepted + response.duplicates) as usize;
                    if stored != ids.len() {
                        ledger.unexpected(format!("batch stored {stored} of {}", ids.len()));
                    }
                    // A batch answers counts, not ids: the row ids are checked by request id.
                    for id in &ids {
                        ledger.ack(id, String::new(), false);
                    }
                    if response.duplicates > 0 {
                        ledger
                            .duplicates
                            .fetch_add(response.duplicates as u64, Ordering::Relaxed);
                    }
                    break;
                }
                Ok(Err(error)) => ledger.failed(&error, sent.elapsed()),
                Err(_) => {
                    ledger.unexpected(format!("batch {n}-{seq}: no answer in {CALL_LIMIT:?}"))
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seq += 1;
    }
}

async fn health(channel: &tonic::transport::Channel) -> ServingStatus {
    let mut client = HealthClient::new(channel.clone());
    let mut statuses = Vec::new();
    for service in [
        "",
        "reqlog.v1.IngestService",
        "reqlog.v1.LogService",
        "reqlog.v1.AdminService",
    ] {
        let status = client
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers whatever the database does")
            .into_inner()
            .status();
        statuses.push(status);
    }
    // The overall status and each service's change together; mid-change, say "unknown".
    if statuses.iter().all(|status| *status == statuses[0]) {
        statuses[0]
    } else {
        ServingStatus::Unknown
    }
}

/// Polls until `check` holds; panics with `what` after `limit`.
async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

/// The `statement_timeout` of a connection of the server's pool.
async fn statement_timeout(server: &TestServer) -> String {
    server
        .db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SHOW statement_timeout",
        ))
        .await
        .expect("SHOW should succeed")
        .expect("a row")
        .try_get("", "statement_timeout")
        .expect("a setting")
}

/// Every row of the account through ListLogs: (request id, row id).
async fn stored_rows(client: &ReqlogClient) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_logs(pb::ListLogsRequest {
                account_id: ACCOUNT.into(),
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("listing should succeed once the database is back");
        rows.extend(page.logs.into_iter().map(|log| (log.request_id, log.id)));
        if page.next_page_token.is_empty() {
            return rows;
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stopped_during_ingest_recovers_and_loses_nothing() {
    if std::env::var_os(POSTGRES_URL_VAR).is_none() {
        eprintln!("skipped: {POSTGRES_URL_VAR} is not set");
        return;
    }
    let Some(bin) = PgCluster::find_bin() else {
        eprintln!("skipped: initdb not found (set PG_BIN to PostgreSQL's bin directory)");
        return;
    };
    let started = Instant::now();
    let cluster = tokio::task::spawn_blocking(move || PgCluster::start_new(bin))
        .await
        .expect("the cluster should be made");
    eprintln!(
        "private cluster on port {} after {:?}",
        cluster.port,
        started.elapsed()
    );

    let server = TestServer::start_on(
        TestDb::existing(cluster.url(), Backend::Postgres),
        |config| {
            config.db_statement_timeout = Duration::from_secs(45);
        },
    )
    .await;
    let health_channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("health client should connect");
    assert_eq!(health(&health_channel).await, ServingStatus::Serving);
    assert_eq!(statement_timeout(&server).await, "45s");

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for n in 0..SINGLE_CLIENTS {
        let client = ReqlogClient::connect(format!("http://{}", server.addr))
            .await
            .expect("client should connect");
        clients.push(tokio::spawn(single_client(
            client,
            n,
            Arc::clone(&ledger),
            Arc::clone(&stop),
        )));
    }
    for n in 0..BATCH_CLIENTS {
        let client = ReqlogClient::connect(format!("http://{}", server.addr))
            .await
            .expect("client should connect");
        clients.push(tokio::spawn(batch_client(
            client,
            n,
            Arc::clone(&ledger),
            Arc::clone(&stop),
        )));
    }

    // Phase 1: ingest is flowing.
    wait_until("ingest before the outage", PHASE_LIMIT, || async {
        ledger.acked() >= 200
    })
    .await;
    let acked_before = ledger.acked();

    // Phase 2: PostgreSQL stops under load. Besides the clients' calls (which may or may not
    // be inside a statement at that moment), two connections of the server's own pool
    // certainly are: one running a long statement, one holding an open transaction.
    let sleeper = {
        let db = server.db.clone();
        tokio::spawn(async move { db.execute_unprepared("SELECT pg_sleep(20)").await })
    };
    let held = server.db.begin().await.expect("a transaction should begin");
    held.query_one(Statement::from_string(DbBackend::Postgres, "SELECT 1"))
        .await
        .expect("the transaction's connection works");
    tokio::time::sleep(Duration::from_millis(100)).await; // the sleeper is inside pg_sleep
    let outage = Instant::now();
    tokio::task::block_in_place(|| cluster.stop());
    // What the driver reports for a statement cut off by the shutdown, and for the next
    // statement on a connection the server closed, is classified as unavailable.
    let cut_off = sleeper
        .await
        .expect("the sleeper does not panic")
        .expect_err("a statement running at shutdown fails");
    let cut_off = StoreError::from(cut_off);
    assert!(matches!(cut_off, StoreError::Unavailable(_)), "{cut_off:?}");
    let closed = held
        .query_one(Statement::from_string(DbBackend::Postgres, "SELECT 1"))
        .await
        .expect_err("a closed connection fails");
    let closed = StoreError::from(closed);
    assert!(matches!(closed, StoreError::Unavailable(_)), "{closed:?}");
    let broken = held
        .query_one(Statement::from_string(DbBackend::Postgres, "SELECT 1"))
        .await
        .expect_err("a closed connection keeps failing");
    let broken = StoreError::from(broken);
    assert!(matches!(broken, StoreError::Unavailable(_)), "{broken:?}");
    drop(held);
    eprintln!("cut off: {cut_off:?}; closed: {closed:?}; then: {broken:?}");
    let unavailable_at_stop = ledger.unavailable.load(Ordering::Relaxed);
    let detected = wait_until("health NOT_SERVING", PHASE_LIMIT, || async {
        health(&health_channel).await == ServingStatus::NotServing
    })
    .await;
    eprintln!(
        "acknowledged {acked_before} before the stop; NOT_SERVING {detected:?} after pg_ctl stop returned"
    );
    let told = tokio::time::timeout(
        CALL_LIMIT + Duration::from_secs(5),
        wait_until("clients told UNAVAILABLE", CALL_LIMIT, || async {
            ledger.unavailable.load(Ordering::Relaxed) > unavailable_at_stop
        }),
    )
    .await;
    assert!(
        told.is_ok(),
        "clients were not told UNAVAILABLE; other failures: {:#?}",
        ledger.unexpected.lock().expect("not poisoned")
    );
    let acked_down = ledger.acked();

    // A fresh call of each kind fails the same way, and a write answered UNAVAILABLE is not
    // stored later behind the caller's back (checked at the end).
    let probe = server
        .client
        .record(with_request_id(0, "probe-while-down".into()))
        .await
        .expect_err("nothing can be stored while PostgreSQL is down");
    assert!(matches!(probe, ClientError::Unavailable(_)), "{probe:?}");
    let listed = tokio::time::timeout(
        PHASE_LIMIT,
        server.client.list_logs(pb::ListLogsRequest {
            account_id: ACCOUNT.into(),
            ..Default::default()
        }),
    )
    .await
    .expect("listing should fail within the pool's acquire timeout")
    .expect_err("nothing can be listed while PostgreSQL is down");
    assert!(matches!(listed, ClientError::Unavailable(_)), "{listed:?}");
    assert_eq!(
        ledger.acked(),
        acked_down,
        "nothing is acknowledged while PostgreSQL is down"
    );
    assert_eq!(health(&health_channel).await, ServingStatus::NotServing);
    let down_for = outage.elapsed();

    // Phase 3: PostgreSQL is back; the server recovers without being told.
    tokio::task::block_in_place(|| cluster.start());
    let healed = wait_until("health SERVING again", PHASE_LIMIT, || async {
        health(&health_channel).await == ServingStatus::Serving
    })
    .await;
    let resumed = wait_until("ingest again", PHASE_LIMIT, || async {
        ledger.acked() >= acked_down + 200
    })
    .await;
    eprintln!(
        "down for {down_for:?}; SERVING {healed:?} after restart, ingest flowing {resumed:?} after that"
    );

    // Connections opened anew after the restart carry the timeout too.
    assert_eq!(statement_timeout(&server).await, "45s");

    // Phase 4: the clients finish what they have in hand.
    stop.store(true, Ordering::Release);
    for client in clients {
        tokio::time::timeout(CALL_LIMIT, client)
            .await
            .expect("clients finish once the database is back")
            .expect("client tasks do not panic");
    }
    let unexpected = ledger.unexpected.lock().expect("not poisoned").clone();
    assert!(
        unexpected.is_empty(),
        "calls failed other than with UNAVAILABLE: {unexpected:#?}\n{}",
        cluster.server_log()
    );
    let unavailable = ledger.unavailable.load(Ordering::Relaxed);
    assert!(unavailable > 0);

    // Every acknowledged record is stored exactly once, under the id it was answered with;
    // nothing else is stored.
    let acked = ledger.acked.lock().expect("not poisoned").clone();
    let mut stored: HashMap<String, Vec<String>> = HashMap::new();
    for (request_id, id) in stored_rows(&server.client).await {
        stored.entry(request_id).or_default().push(id);
    }
    for (request_id, id) in &acked {
        let rows = stored
            .get(request_id)
            .unwrap_or_else(|| panic!("acknowledged {request_id} was lost"));
        assert_eq!(rows.len(), 1, "{request_id} stored {} times", rows.len());
        if !id.is_empty() {
            assert_eq!(&rows[0], id, "{request_id} answered another row's id");
        }
    }
    let extra: Vec<&String> = stored
        .keys()
        .filter(|id| !acked.contains_key(*id))
        .collect();
    assert!(extra.is_empty(), "stored but never acknowledged: {extra:?}");
    let row = server
        .db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT COUNT(*) AS total, COUNT(DISTINCT request_id) AS distinct_ids \
             FROM log_entries WHERE account_no = (SELECT id FROM account_numbers WHERE value = $1)",
            [ACCOUNT.into()],
        ))
        .await
        .expect("counting should succeed")
        .expect("a count row");
    let total: i64 = row.try_get("", "total").expect("a count");
    let distinct: i64 = row.try_get("", "distinct_ids").expect("a count");
    assert_eq!(total as usize, acked.len());
    assert_eq!(distinct as usize, acked.len());
    eprintln!(
        "{} records acknowledged ({} on retry as duplicates), {unavailable} UNAVAILABLE answers \
         (slowest {} ms), all stored once; {:?} in all",
        acked.len(),
        ledger.duplicates.load(Ordering::Relaxed),
        ledger.slowest_unavailable_ms.load(Ordering::Relaxed),
        started.elapsed()
    );

    server.shutdown().await;
    tokio::task::block_in_place(|| cluster.stop());
}

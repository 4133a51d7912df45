//! A bounded soak against the real binary: several clients ingest (with retries and
//! deliberate resends), list, export, purge and sweep at once for `REQLOG_SOAK_SECONDS`
//! (default 15 per backend). Prints throughput and the server's peak RSS; fails on any lost
//! or doubled record and on any status other than the expected ones (RESOURCE_EXHAUSTED on
//! ingest, which is retried). Run longer with e.g. `REQLOG_SOAK_SECONDS=600`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqlog_client::{ReqlogClient, pb};
use reqlog_tests::load::{assert_exactly_once, id_batch, stored_request_ids};
use reqlog_tests::process::ServerProcess;
use reqlog_tests::{Backend, TestDb, backend_tests};
use tokio::task::JoinHandle;
use tonic::Code;

const ACCOUNT: &str = "acct_soak";
const PURGE_ACCOUNT: &str = "acct_soak_purge";
const INGESTERS: usize = 4;

fn soak_duration() -> Duration {
    let seconds = std::env::var("REQLOG_SOAK_SECONDS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(seconds)
}

type Acked = Arc<Mutex<HashSet<String>>>;

/// Sends a batch until it is taken (RESOURCE_EXHAUSTED is retried); returns the response.
async fn send(client: &ReqlogClient, batch: &[pb::RequestRecord]) -> pb::RecordRequestsResponse {
    loop {
        let request = pb::RecordRequestsRequest {
            records: batch.to_vec(),
        };
        match client.ingest().record_requests(request).await {
            Ok(response) => return response.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("ingest failed: {status:?}"),
        }
    }
}

async fn ingester(client: ReqlogClient, client_no: usize, until: Instant, acked: Acked) -> usize {
    let mut records = 0;
    let mut previous: Option<Vec<pb::RequestRecord>> = None;
    let mut seq = 0;
    while Instant::now() < until {
        // Every tenth call resends the last batch, as a client whose answer was lost would.
        if seq % 10 == 9
            && let Some(batch) = previous.take()
        {
            let response = send(&client, &batch).await;
            assert_eq!(
                response.duplicates as usize,
                batch.len(),
                "a resend is all duplicates"
            );
            assert_eq!(response.accepted, 0);
            seq += 1;
            continue;
        }
        let batch = id_batch(ACCOUNT, "soak", client_no, seq, 1 + (seq * 7) % 50);
        let response = send(&client, &batch).await;
        assert!(response.rejected.is_empty(), "{:?}", response.rejected);
        assert_eq!(response.accepted as usize, batch.len());
        records += batch.len();
        acked
            .lock()
            .expect("never poisoned")
            .extend(batch.iter().map(|record| record.request_id.clone()));
        previous = Some(batch);
        seq += 1;
    }
    records
}

/// Walks every page while ingest goes on: each row acknowledged before the walk appears,
/// none twice.
async fn lister(client: ReqlogClient, until: Instant, acked: Acked) -> usize {
    let mut walks = 0;
    while Instant::now() < until {
        let before = acked.lock().expect("never poisoned").clone();
        let mut seen = HashSet::new();
        let mut page_token = String::new();
        let page_size = [7, 100, 1000][walks % 3];
        loop {
            let page = client
                .list_logs(pb::ListLogsRequest {
                    account_id: ACCOUNT.to_owned(),
                    page_size,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("ListLogs should answer");
            for entry in page.logs {
                assert!(
                    seen.insert(entry.request_id),
                    "a row came twice in one walk"
                );
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let missing = before.difference(&seen).count();
        assert_eq!(missing, 0, "rows acknowledged before the walk are missing");
        walks += 1;
    }
    walks
}

async fn exporter(client: ReqlogClient, until: Instant, acked: Acked) -> usize {
    let mut exports = 0;
    while Instant::now() < until {
        let before = acked.lock().expect("never poisoned").len();
        let mut file = Vec::new();
        let summary = client
            .export_to(
                &mut file,
                pb::ExportLogsRequest {
                    account_id: ACCOUNT.to_owned(),
                    format: pb::ExportFormat::Ndjson as i32,
                    ..Default::default()
                },
            )
            .await
            .expect("the export should complete");
        assert!(summary.row_count as usize >= before, "an export lost rows");
        assert_eq!(
            file.iter().filter(|&&byte| byte == b'\n').count() as i64,
            summary.row_count
        );
        exports += 1;
    }
    exports
}

/// Each round: records for a fresh key, a purge that deletes exactly those, a sweep of
/// the main account that deletes nothing (its rows are recent), and the purged key refused.
async fn purger(client: ReqlogClient, until: Instant) -> usize {
    let mut rounds = 0;
    while Instant::now() < until {
        let key = format!("pkey_{rounds}");
        let mut batch = id_batch(PURGE_ACCOUNT, "purge", 0, rounds, 20);
        for record in &mut batch {
            record.api_key_id = key.clone();
        }
        let response = send(&client, &batch).await;
        assert_eq!(response.accepted, 20);
        let purged = client
            .admin()
            .purge_for_key(pb::PurgeForKeyRequest {
                account_id: PURGE_ACCOUNT.to_owned(),
                api_key_id: key.clone(),
            })
            .await
            .expect("PurgeForKey should answer")
            .into_inner();
        assert_eq!(purged.deleted_count, 20);
        let refused = send(&client, &batch[..1]).await;
        assert_eq!(
            refused.rejected.len(),
            1,
            "a purged key's records are refused"
        );
        client
            .admin()
            .run_retention_sweep(pb::RunRetentionSweepRequest {
                account_id: ACCOUNT.to_owned(),
            })
            .await
            .expect("RunRetentionSweep should answer");
        rounds += 1;
    }
    rounds
}

async fn soak(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let server = ServerProcess::start(
        &format!("soak-{backend:?}"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &test_db.url,
            "--sweep-interval",
            "0",
        ],
        Duration::from_secs(120),
    );
    let client = ReqlogClient::connect(server.endpoint())
        .await
        .expect("the client should connect");
    let duration = soak_duration();
    let started = Instant::now();
    let until = started + duration;
    let acked: Acked = Arc::default();

    let ingesters: Vec<JoinHandle<usize>> = (0..INGESTERS)
        .map(|client_no| {
            tokio::spawn(ingester(
                client.clone(),
                client_no,
                until,
                Arc::clone(&acked),
            ))
        })
        .collect();
    let lister = tokio::spawn(lister(client.clone(), until, Arc::clone(&acked)));
    let exporter = tokio::spawn(exporter(client.clone(), until, Arc::clone(&acked)));
    let purger = tokio::spawn(purger(client.clone(), until));

    let mut peak_rss = 0;
    let tasks_done = || ingesters.iter().all(JoinHandle::is_finished);
    while !tasks_done() {
        peak_rss = peak_rss.max(server.rss_kib().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut records = 0;
    for ingester in ingesters {
        records += ingester.await.expect("an ingester failed");
    }
    let walks = lister.await.expect("the lister failed");
    let exports = exporter.await.expect("the exporter failed");
    let rounds = purger.await.expect("the purger failed");
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "soak ({backend:?}, {elapsed:.0} s): {records} records acknowledged ({:.0}/s), \
         {walks} full listings, {exports} exports, {rounds} purge+sweep rounds, \
         server peak RSS {} MiB",
        records as f64 / elapsed,
        peak_rss / 1024
    );

    let stored = stored_request_ids(&client, ACCOUNT).await;
    let acked = acked.lock().expect("never poisoned").clone();
    assert_exactly_once(&stored, &acked);
    assert_eq!(
        stored.len(),
        acked.len(),
        "nothing but acknowledged records is stored"
    );
    drop(server);
    test_db.remove().await;
}

backend_tests!(soak);

//! Load for the reliability tests and the soak: numbered records with unique request ids,
//! clients that ingest them and remember what was acknowledged, and the check that the
//! database holds each acknowledged request id exactly once.

use std::collections::HashMap;

use reqlog_client::{ReqlogClient, pb};
use tonic::Code;

/// A batch of `size` records for `account`, each with a request id unique to
/// (`tag`, `client`, `seq`, index), so a retry of the same batch carries the same ids.
pub fn id_batch(
    account: &str,
    tag: &str,
    client: usize,
    seq: usize,
    size: usize,
) -> Vec<pb::RequestRecord> {
    (0..size)
        .map(|index| {
            let mut record = crate::record(account, seq * size + index);
            record.request_id = format!("{tag}-{client}-{seq}-{index}");
            // Within the last hour: inside every plan's retention window.
            record.timestamp = Some(prost_types::Timestamp {
                seconds: crate::now_seconds() - 3_600 + ((seq * size + index) % 3_000) as i64,
                nanos: 0,
            });
            record
        })
        .collect()
}

/// What one ingesting client saw.
#[derive(Debug, Default)]
pub struct IngestLog {
    /// Request ids the server acknowledged (stored or duplicate).
    pub acknowledged: Vec<String>,
    /// Batches that got no acknowledgement, to retry with the same ids.
    pub unacknowledged: Vec<Vec<pb::RequestRecord>>,
    /// The failed calls' codes and messages, in order.
    pub failures: Vec<(Code, String)>,
}

impl IngestLog {
    /// Sends one batch and files the outcome; returns the failure's code, if any.
    /// Panics on a record the server rejected: these tests send only valid records.
    pub async fn send(
        &mut self,
        client: &ReqlogClient,
        batch: Vec<pb::RequestRecord>,
    ) -> Result<(), tonic::Status> {
        let request = pb::RecordRequestsRequest {
            records: batch.clone(),
        };
        match client.ingest().record_requests(request).await {
            Ok(response) => {
                let response = response.into_inner();
                assert!(
                    response.rejected.is_empty(),
                    "valid records were rejected: {:?}",
                    response.rejected
                );
                self.acknowledged
                    .extend(batch.into_iter().map(|record| record.request_id));
                Ok(())
            }
            Err(status) => {
                self.failures
                    .push((status.code(), status.message().to_owned()));
                self.unacknowledged.push(batch);
                Err(status)
            }
        }
    }

    /// Resends every unacknowledged batch until the server takes it (it may answer
    /// RESOURCE_EXHAUSTED or UNAVAILABLE for a while); any other failure panics.
    pub async fn retry_all(&mut self, client: &ReqlogClient) {
        for batch in std::mem::take(&mut self.unacknowledged) {
            loop {
                let request = pb::RecordRequestsRequest {
                    records: batch.clone(),
                };
                match client.ingest().record_requests(request).await {
                    Ok(response) => {
                        assert!(response.get_ref().rejected.is_empty());
                        self.acknowledged
                            .extend(batch.iter().map(|record| record.request_id.clone()));
                        break;
                    }
                    Err(status)
                        if matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(status) => panic!("a retry failed: {status:?}"),
                }
            }
        }
    }
}

/// How many times each request id of `account` is stored, read back through ListLogs.
pub async fn stored_request_ids(client: &ReqlogClient, account: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_logs(pb::ListLogsRequest {
                account_id: account.to_owned(),
                page_size: 1_000,
                page_token,
                ..Default::default()
            })
            .await
            .expect("ListLogs should answer");
        for entry in page.logs {
            *counts.entry(entry.request_id).or_insert(0) += 1;
        }
        if page.next_page_token.is_empty() {
            return counts;
        }
        page_token = page.next_page_token;
    }
}

/// Asserts that every acknowledged id is stored exactly once and that nothing else is
/// (`attempted` ids may be stored, at most once: sent, committed, answer lost).
pub fn assert_exactly_once<'a>(
    stored: &HashMap<String, usize>,
    acknowledged: impl IntoIterator<Item = &'a String>,
) {
    let mut missing = Vec::new();
    let mut acknowledged_count = 0;
    for id in acknowledged {
        acknowledged_count += 1;
        if !stored.contains_key(id) {
            missing.push(id.clone());
        }
    }
    let doubled: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        missing.is_empty(),
        "{} of {acknowledged_count} acknowledged records are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        doubled.is_empty(),
        "{} request ids are stored more than once, e.g. {:?}",
        doubled.len(),
        &doubled[..doubled.len().min(5)]
    );
}

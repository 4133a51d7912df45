//! `reqlog.v1.IngestService`.

use std::sync::Arc;

use reqlog_client::pb;
use reqlog_client::pb::ingest_service_server::IngestService;
use tonic::{Request, Response, Status};

use super::convert::record_input;
use crate::auth::{self, Action};
use crate::domain::Violation;
use crate::domain::record::RecordRules;
use crate::domain::time::now_micros;
use crate::error::Error;
use crate::store::writer::{IngestOutcome, Writer};

/// Records requests for gateways.
#[derive(Debug, Clone)]
pub struct IngestApi {
    rules: Arc<RecordRules>,
    writer: Writer,
    max_batch_size: usize,
}

impl IngestApi {
    /// An ingest service writing through `writer`.
    pub fn new(rules: Arc<RecordRules>, writer: Writer, max_batch_size: usize) -> Self {
        Self {
            rules,
            writer,
            max_batch_size,
        }
    }
}

const KEY_PURGED: &str = "the api key was purged; records for it are refused";

#[tonic::async_trait]
impl IngestService for IngestApi {
    #[tracing::instrument(skip_all)]
    async fn record_request(
        &self,
        request: Request<pb::RecordRequestRequest>,
    ) -> Result<Response<pb::RecordRequestResponse>, Status> {
        // An empty account is not a scope: validation refuses it below.
        let account = request
            .get_ref()
            .record
            .as_ref()
            .map(|r| r.account_id.as_str());
        auth::principal(&request)?
            .authorize_all(Action::Ingest, account.filter(|a| !a.is_empty()))?;
        let record = request
            .get_ref()
            .record
            .as_ref()
            .ok_or_else(|| Violation::new("record", "is required"))
            .map_err(Error::from)?;
        let entry = self
            .rules
            .validate(&record_input(record), now_micros())
            .map_err(|violation| Error::from(violation.within("record")))?;
        let outcome = self.writer.ingest(vec![entry]).await.map_err(Error::from)?;
        let (id, duplicate) = match outcome.first() {
            Some(IngestOutcome::Stored(id)) => (*id, false),
            Some(IngestOutcome::Duplicate(id)) => (*id, true),
            Some(IngestOutcome::KeyDeleted) | None => {
                return Err(Error::FailedPrecondition(KEY_PURGED.into()).into());
            }
        };
        Ok(Response::new(pb::RecordRequestResponse {
            id: id.to_string(),
            duplicate,
        }))
    }

    #[tracing::instrument(skip_all, fields(records = request.get_ref().records.len()))]
    async fn record_requests(
        &self,
        request: Request<pb::RecordRequestsRequest>,
    ) -> Result<Response<pb::RecordRequestsResponse>, Status> {
        let records = &request.get_ref().records;
        // One record outside the caller's accounts refuses the whole call: a batch is one
        // caller's, and a partial answer would tell which accounts exist.
        auth::principal(&request)?.authorize_all(
            Action::Ingest,
            records
                .iter()
                .map(|record| record.account_id.as_str())
                .filter(|account| !account.is_empty()),
        )?;
        if records.len() > self.max_batch_size {
            let reason = format!("must hold at most {} records", self.max_batch_size);
            return Err(Error::from(Violation::new("records", reason)).into());
        }
        let now = now_micros();
        let mut rejected = Vec::new();
        let mut valid = Vec::with_capacity(records.len());
        let mut valid_indexes = Vec::with_capacity(records.len());
        for (index, record) in records.iter().enumerate() {
            match self.rules.validate(&record_input(record), now) {
                Ok(entry) => {
                    valid.push(entry);
                    valid_indexes.push(index);
                }
                Err(violation) => rejected.push(pb::RejectedRecord {
                    index: index as i32,
                    field: violation.field,
                    reason: violation.reason,
                }),
            }
        }
        let outcomes = self.writer.ingest(valid).await.map_err(Error::from)?;

        let mut response = pb::RecordRequestsResponse {
            ids: vec![String::new(); records.len()],
            ..Default::default()
        };
        for (index, outcome) in valid_indexes.into_iter().zip(outcomes) {
            match outcome {
                IngestOutcome::Stored(id) => {
                    response.accepted += 1;
                    response.ids[index] = id.to_string();
                }
                IngestOutcome::Duplicate(id) => {
                    response.duplicates += 1;
                    response.ids[index] = id.to_string();
                }
                IngestOutcome::KeyDeleted => rejected.push(pb::RejectedRecord {
                    index: index as i32,
                    field: "api_key_id".into(),
                    reason: KEY_PURGED.into(),
                }),
            }
        }
        rejected.sort_unstable_by_key(|rejection| rejection.index);
        response.rejected = rejected;
        Ok(Response::new(response))
    }
}

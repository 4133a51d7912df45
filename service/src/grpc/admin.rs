//! `reqlog.v1.AdminService`.

use reqlog_client::pb;
use reqlog_client::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::convert;
use crate::domain::Violation;
use crate::domain::lifecycle::Retention;
use crate::domain::record::{validate_account_id, validate_text};
use crate::domain::time::now_micros;
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::store::admin::{self, UpsertRefused};
use crate::store::entity::api_key;
use crate::store::writer::Writer;

/// Key lifecycle, plans and retention, for key management and billing.
#[derive(Debug, Clone)]
pub struct AdminApi {
    writer: Writer,
    lifecycle: Lifecycle,
}

impl AdminApi {
    /// An admin service writing through `writer`.
    pub fn new(writer: Writer, lifecycle: Lifecycle) -> Self {
        Self { writer, lifecycle }
    }
}

fn invalid(violation: Violation) -> Status {
    Error::from(violation).into()
}

fn key_ids(account_id: &str, api_key_id: &str) -> Result<(), Status> {
    validate_account_id("account_id", account_id).map_err(invalid)?;
    validate_text("api_key_id", api_key_id, 128, true).map_err(invalid)
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn purge_for_key(
        &self,
        request: Request<pb::PurgeForKeyRequest>,
    ) -> Result<Response<pb::PurgeForKeyResponse>, Status> {
        let request = request.into_inner();
        key_ids(&request.account_id, &request.api_key_id)?;
        let deleted = self
            .lifecycle
            .purge(&request.account_id, &request.api_key_id)
            .await
            .map_err(Error::from)?;
        tracing::info!(deleted, "purged key");
        Ok(Response::new(pb::PurgeForKeyResponse {
            deleted_count: i64::try_from(deleted).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn upsert_api_key(
        &self,
        request: Request<pb::UpsertApiKeyRequest>,
    ) -> Result<Response<pb::UpsertApiKeyResponse>, Status> {
        let request = request.into_inner();
        key_ids(&request.account_id, &request.api_key_id)?;
        validate_text("name", &request.name, 128, false).map_err(invalid)?;
        validate_text("prefix", &request.prefix, 32, false).map_err(invalid)?;
        let status = convert::key_status_from_pb(request.status).map_err(invalid)?;
        let expires_at =
            convert::optional_micros("expires_at", request.expires_at.as_ref()).map_err(invalid)?;
        let now = now_micros();
        let key = api_key::Model {
            account_id: request.account_id,
            api_key_id: request.api_key_id,
            name: request.name,
            prefix: request.prefix,
            status: status.as_str().to_owned(),
            expires_at,
            deleted_at: None,
            updated_at: now,
        };
        let stored = self
            .writer
            .run(move |db| async move { admin::upsert_key(&db, key).await })
            .await
            .map_err(Error::from)?
            .map_err(|UpsertRefused::Purged| {
                Error::FailedPrecondition("the api key was purged; it stays deleted".into())
            })?;
        Ok(Response::new(pb::UpsertApiKeyResponse {
            api_key: Some(convert::api_key(stored, now)),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn set_account_plan(
        &self,
        request: Request<pb::SetAccountPlanRequest>,
    ) -> Result<Response<pb::SetAccountPlanResponse>, Status> {
        let request = request.into_inner();
        validate_account_id("account_id", &request.account_id).map_err(invalid)?;
        let plan = convert::plan(request.plan).map_err(invalid)?;
        let retention = Retention::new(plan, request.retention_days).map_err(invalid)?;
        let account = request.account_id.clone();
        self.writer
            .run(move |db| async move { admin::set_plan(&db, &account, retention, now_micros()).await })
            .await
            .map_err(Error::from)?;
        tracing::info!(
            plan = plan.as_str(),
            days = retention.days(),
            "account plan set"
        );
        Ok(Response::new(pb::SetAccountPlanResponse {
            account_plan: Some(convert::account_plan(&request.account_id, retention)),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn run_retention_sweep(
        &self,
        request: Request<pb::RunRetentionSweepRequest>,
    ) -> Result<Response<pb::RunRetentionSweepResponse>, Status> {
        let account = request.into_inner().account_id;
        if !account.is_empty() {
            validate_account_id("account_id", &account).map_err(invalid)?;
        }
        let report = self
            .lifecycle
            .sweep((!account.is_empty()).then_some(account.as_str()))
            .await
            .map_err(Error::from)?;
        let accounts: Vec<pb::AccountSweepResult> = report
            .into_iter()
            .map(|swept| pb::AccountSweepResult {
                account_id: swept.account_id,
                deleted_count: i64::try_from(swept.deleted).unwrap_or(i64::MAX),
                retention_days: swept.retention_days,
                cutoff: Some(convert::timestamp(swept.cutoff_micros)),
            })
            .collect();
        Ok(Response::new(pb::RunRetentionSweepResponse {
            deleted_count: accounts.iter().map(|a| a.deleted_count).sum(),
            accounts,
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn preview_retention(
        &self,
        request: Request<pb::PreviewRetentionRequest>,
    ) -> Result<Response<pb::PreviewRetentionResponse>, Status> {
        let request = request.into_inner();
        validate_account_id("account_id", &request.account_id).map_err(invalid)?;
        let plan = convert::plan(request.plan).map_err(invalid)?;
        let retention = Retention::new(plan, request.retention_days).map_err(invalid)?;
        let preview = self
            .lifecycle
            .preview(&request.account_id, retention)
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::PreviewRetentionResponse {
            retention_days: preview.retention_days,
            cutoff: Some(convert::timestamp(preview.cutoff_micros)),
            row_count: preview.rows.rows,
            oldest_timestamp: preview.rows.oldest.map(convert::timestamp),
            newest_timestamp: preview.rows.newest.map(convert::timestamp),
            current_retention_days: preview.current_retention_days,
        }))
    }
}

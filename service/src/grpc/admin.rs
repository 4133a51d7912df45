//! `reqlog.v1.AdminService`.

use reqlog_client::pb;
use reqlog_client::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use super::convert;
use crate::auth::{self, Action};
use crate::domain::Violation;
use crate::domain::activity::{
    ActivityAction, activity_page_size, open_activity_token, seal_activity_token,
};
use crate::domain::lifecycle::Retention;
use crate::domain::record::{validate_account_id, validate_text};
use crate::domain::time::now_micros;
use crate::error::Error;
use crate::lifecycle::Lifecycle;
use crate::store::activity::{self, NewActivity};
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

/// An activity entry for an action `principal` just finished.
fn activity_entry(
    principal: &str,
    action: ActivityAction,
    account_id: &str,
    api_key_id: &str,
    rows_affected: u64,
    detail: String,
) -> NewActivity {
    NewActivity {
        at: now_micros(),
        principal: principal.to_owned(),
        action: action.as_str(),
        account_id: account_id.to_owned(),
        api_key_id: api_key_id.to_owned(),
        rows_affected,
        detail,
    }
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
        let principal = auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
        let request = request.into_inner();
        key_ids(&request.account_id, &request.api_key_id)?;
        let purge = self
            .lifecycle
            .purge_recorded(&principal.name, &request.account_id, &request.api_key_id)
            .await
            .map_err(Error::from)?;
        if purge.interrupted {
            return Err(Error::Unavailable(format!(
                "the server is shutting down: {} rows of the key were deleted; call again to \
                 finish (the next retention sweep also finishes it)",
                purge.deleted
            ))
            .into());
        }
        Ok(Response::new(pb::PurgeForKeyResponse {
            deleted_count: i64::try_from(purge.deleted).unwrap_or(i64::MAX),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn upsert_api_key(
        &self,
        request: Request<pb::UpsertApiKeyRequest>,
    ) -> Result<Response<pb::UpsertApiKeyResponse>, Status> {
        let principal = auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
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
        self.lifecycle
            .record_activity(vec![activity_entry(
                &principal.name,
                ActivityAction::UpsertApiKey,
                &stored.account_id,
                &stored.api_key_id,
                0,
                format!("status={}", status.as_str()),
            )])
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::UpsertApiKeyResponse {
            api_key: Some(convert::api_key(stored, now)),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn set_account_plan(
        &self,
        request: Request<pb::SetAccountPlanRequest>,
    ) -> Result<Response<pb::SetAccountPlanResponse>, Status> {
        let principal = auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
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
        self.lifecycle
            .record_activity(vec![activity_entry(
                &principal.name,
                ActivityAction::SetAccountPlan,
                &request.account_id,
                "",
                0,
                format!("plan={} retention_days={}", plan.as_str(), retention.days()),
            )])
            .await
            .map_err(Error::from)?;
        Ok(Response::new(pb::SetAccountPlanResponse {
            account_plan: Some(convert::account_plan(&request.account_id, retention)),
        }))
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn run_retention_sweep(
        &self,
        request: Request<pb::RunRetentionSweepRequest>,
    ) -> Result<Response<pb::RunRetentionSweepResponse>, Status> {
        // An empty account sweeps every account: only a principal of every account may.
        let principal = auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
        let account = request.into_inner().account_id;
        if !account.is_empty() {
            validate_account_id("account_id", &account).map_err(invalid)?;
        }
        let only = (!account.is_empty()).then_some(account.as_str());
        let report = self
            .lifecycle
            .sweep_recorded(&principal.name, only)
            .await
            .map_err(Error::from)?;
        if report.interrupted {
            return Err(Error::Unavailable(format!(
                "the server is shutting down: the sweep deleted {} rows before it stopped; \
                 the next sweep finishes it",
                report.deleted()
            ))
            .into());
        }
        let accounts: Vec<pb::AccountSweepResult> = report
            .accounts
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
        auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
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

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn list_activity(
        &self,
        request: Request<pb::ListActivityRequest>,
    ) -> Result<Response<pb::ListActivityResponse>, Status> {
        auth::authorize(&request, Action::Admin, &request.get_ref().account_id)?;
        let request = request.into_inner();
        let account = request.account_id.as_str();
        if !account.is_empty() {
            validate_account_id("account_id", account).map_err(invalid)?;
        }
        let page_size = activity_page_size(request.page_size).map_err(invalid)?;
        let before = match request.page_token.as_str() {
            "" => None,
            token => Some(open_activity_token(token, account).map_err(invalid)?),
        };
        // One more than the page tells whether another page follows.
        let mut rows = activity::list(
            self.lifecycle.database(),
            (!account.is_empty()).then_some(account),
            before,
            page_size + 1,
        )
        .await
        .map_err(Error::from)?;
        let next_page_token = if rows.len() as u64 > page_size {
            rows.truncate(page_size as usize);
            rows.last()
                .map(|last| seal_activity_token(account, last.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListActivityResponse {
            entries: rows.into_iter().map(convert::activity_entry).collect(),
            next_page_token,
        }))
    }
}

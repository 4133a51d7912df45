//! `reqlog.v1.AdminService`.

use reqlog_client::pb;
use reqlog_client::pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

/// Key lifecycle, plans and retention, for key management and billing.
#[derive(Debug, Clone, Default)]
pub struct AdminApi;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn purge_for_key(
        &self,
        _request: Request<pb::PurgeForKeyRequest>,
    ) -> Result<Response<pb::PurgeForKeyResponse>, Status> {
        Err(Status::unimplemented("PurgeForKey is not implemented yet"))
    }

    async fn upsert_api_key(
        &self,
        _request: Request<pb::UpsertApiKeyRequest>,
    ) -> Result<Response<pb::UpsertApiKeyResponse>, Status> {
        Err(Status::unimplemented("UpsertApiKey is not implemented yet"))
    }

    async fn set_account_plan(
        &self,
        _request: Request<pb::SetAccountPlanRequest>,
    ) -> Result<Response<pb::SetAccountPlanResponse>, Status> {
        Err(Status::unimplemented(
            "SetAccountPlan is not implemented yet",
        ))
    }

    async fn run_retention_sweep(
        &self,
        _request: Request<pb::RunRetentionSweepRequest>,
    ) -> Result<Response<pb::RunRetentionSweepResponse>, Status> {
        Err(Status::unimplemented(
            "RunRetentionSweep is not implemented yet",
        ))
    }
}

//! `LogService.GetUsageStats`.

use reqlog_client::pb;
use sea_orm::DatabaseConnection;
use tonic::{Response, Status};

/// Usage buckets of an account.
pub async fn get_usage_stats(
    _db: &DatabaseConnection,
    _request: pb::GetUsageStatsRequest,
) -> Result<Response<pb::GetUsageStatsResponse>, Status> {
    Err(Status::unimplemented(
        "GetUsageStats is not implemented yet",
    ))
}

//! `LogService.ExportLogs`.

use reqlog_client::pb;
use sea_orm::DatabaseConnection;
use tonic::{Response, Status};

use super::logs::ExportStream;

/// Starts an export stream.
pub async fn export_logs(
    _db: &DatabaseConnection,
    _request: pb::ExportLogsRequest,
) -> Result<Response<ExportStream>, Status> {
    Err(Status::unimplemented("ExportLogs is not implemented yet"))
}

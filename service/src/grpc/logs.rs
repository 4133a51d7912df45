//! `reqlog.v1.LogService`.

use std::pin::Pin;

use reqlog_client::pb;
use reqlog_client::pb::log_service_server::LogService;
use sea_orm::DatabaseConnection;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert;
use super::export::{self, ExportLimit};
use crate::auth::{self, Action};
use crate::domain::Violation;
use crate::domain::filter::{LogQuery, effective_page_size};
use crate::domain::ip::IpHasher;
use crate::domain::page_token::PageTokenKey;
use crate::domain::time::now_micros;
use crate::error::Error;
use crate::shutdown::Ending;
use crate::store::logs;

/// Lists and exports logs for consoles and services.
#[derive(Debug, Clone)]
pub struct LogApi {
    db: DatabaseConnection,
    tokens: PageTokenKey,
    exports: ExportLimit,
    ip_hasher: IpHasher,
    ending: Ending,
}

impl LogApi {
    /// A log service reading from `db`, sealing page tokens with `tokens`; HashIp answers
    /// with `ip_hasher`, the one ingest stores with; running exports end (UNAVAILABLE) when
    /// `ending` fires.
    pub fn new(
        db: DatabaseConnection,
        tokens: PageTokenKey,
        ip_hasher: IpHasher,
        ending: Ending,
    ) -> Self {
        let exports = ExportLimit::for_pool(&db);
        Self {
            db,
            tokens,
            exports,
            ip_hasher,
            ending,
        }
    }
}

/// The stream of an export: chunks, then the summary.
pub type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportLogsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl LogService for LogApi {
    type ExportLogsStream = ExportStream;

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn list_logs(
        &self,
        request: Request<pb::ListLogsRequest>,
    ) -> Result<Response<pb::ListLogsResponse>, Status> {
        auth::authorize(&request, Action::Read, &request.get_ref().account_id)?;
        let request = request.into_inner();
        let query = LogQuery::new(
            &request.account_id,
            convert::filter(request.filter.as_ref()).map_err(Error::from)?,
            convert::order(request.order_by.as_ref()).map_err(Error::from)?,
        )
        .map_err(Error::from)?;
        let page_size = effective_page_size(request.page_size).map_err(Error::from)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(self.tokens.open(token, &query).map_err(Error::from)?),
        };

        let page = logs::page(
            &self.db,
            &query,
            after.as_ref(),
            page_size,
            request.include_total_size,
        )
        .await
        .map_err(Error::from)?;
        let keys = logs::keys(
            &self.db,
            &query.account_id,
            page.rows.iter().map(|row| row.api_key_id.as_str()),
        )
        .await
        .map_err(Error::from)?;

        let now = now_micros();
        let entries = page
            .rows
            .into_iter()
            .map(|row| {
                let status = convert::effective_key_status(keys.get(&row.api_key_id), now);
                convert::log_entry(row, status)
            })
            .collect();
        Ok(Response::new(pb::ListLogsResponse {
            logs: entries,
            next_page_token: page
                .next
                .map(|cursor| self.tokens.seal(&query, &cursor))
                .unwrap_or_default(),
            total_size: page.total.unwrap_or(0),
        }))
    }

    async fn export_logs(
        &self,
        request: Request<pb::ExportLogsRequest>,
    ) -> Result<Response<Self::ExportLogsStream>, Status> {
        auth::authorize(&request, Action::Read, &request.get_ref().account_id)?;
        export::export_logs(
            &self.db,
            &self.exports,
            self.ending.clone(),
            request.into_inner(),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn get_usage_stats(
        &self,
        request: Request<pb::GetUsageStatsRequest>,
    ) -> Result<Response<pb::GetUsageStatsResponse>, Status> {
        auth::authorize(&request, Action::Read, &request.get_ref().account_id)?;
        super::stats::get_usage_stats(&self.db, request.into_inner()).await
    }

    #[tracing::instrument(skip_all, fields(account_id = %request.get_ref().account_id))]
    async fn hash_ip(
        &self,
        request: Request<pb::HashIpRequest>,
    ) -> Result<Response<pb::HashIpResponse>, Status> {
        auth::authorize(&request, Action::Read, &request.get_ref().account_id)?;
        let request = request.into_inner();
        crate::domain::record::validate_account_id("account_id", &request.account_id)
            .map_err(Error::from)?;
        if request.ip.is_empty() {
            return Err(Error::from(Violation::new("ip", "is required")).into());
        }
        // As for `client_ip`: the reason never repeats the address.
        let ip_hash = self
            .ip_hasher
            .hash(&request.ip)
            .map_err(|_| Error::from(Violation::new("ip", "is not an IPv4 or IPv6 address")))?;
        Ok(Response::new(pb::HashIpResponse { ip_hash }))
    }
}

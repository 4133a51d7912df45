//! `LogService.GetUsageStats`.

use reqlog_client::pb;
use sea_orm::DatabaseConnection;
use tonic::{Response, Status};

use super::convert;
use crate::domain::Violation;
use crate::domain::lifecycle::{Dimension, Granularity, UsageQuery};
use crate::domain::time::{MICROS_PER_SECOND, now_micros};
use crate::error::Error;
use crate::store::usage;

fn dimension(value: i32) -> Result<Dimension, Violation> {
    match pb::UsageDimension::try_from(value) {
        Ok(pb::UsageDimension::ApiKey) => Ok(Dimension::ApiKey),
        Ok(pb::UsageDimension::Endpoint) => Ok(Dimension::Endpoint),
        Ok(pb::UsageDimension::Method) => Ok(Dimension::Method),
        Ok(pb::UsageDimension::StatusCode) => Ok(Dimension::StatusCode),
        Ok(pb::UsageDimension::Unspecified) => Err(Violation::new(
            "group_by",
            "must not contain USAGE_DIMENSION_UNSPECIFIED",
        )),
        Err(_) => Err(Violation::new("group_by", "contains an unknown dimension")),
    }
}

fn query(request: &pb::GetUsageStatsRequest) -> Result<UsageQuery, Violation> {
    let granularity = match pb::Granularity::try_from(request.granularity) {
        Ok(pb::Granularity::Unspecified | pb::Granularity::Hour) => Granularity::Hour,
        Ok(pb::Granularity::Day) => Granularity::Day,
        Err(_) => return Err(Violation::new("granularity", "is not a known granularity")),
    };
    let group_by = request
        .group_by
        .iter()
        .map(|&value| dimension(value))
        .collect::<Result<Vec<_>, _>>()?;
    let seconds = |field, ts| {
        convert::optional_micros(field, ts)
            .map(|micros| micros.map(|m| m.div_euclid(MICROS_PER_SECOND)))
    };
    UsageQuery::new(
        &request.account_id,
        &request.api_key_id,
        seconds("start_time", request.start_time.as_ref())?,
        seconds("end_time", request.end_time.as_ref())?,
        now_micros() / MICROS_PER_SECOND,
        granularity,
        group_by,
    )
}

/// Usage buckets of an account, summed from the hourly counters.
pub async fn get_usage_stats(
    db: &DatabaseConnection,
    request: pb::GetUsageStatsRequest,
) -> Result<Response<pb::GetUsageStatsResponse>, Status> {
    let query = query(&request).map_err(Error::from)?;
    let rows = usage::buckets(db, &query).await.map_err(Error::from)?;
    let buckets = rows
        .into_iter()
        .map(|row| pb::UsageBucket {
            start_time: Some(convert::timestamp(row.bucket_start * MICROS_PER_SECOND)),
            api_key_id: row.api_key_id.unwrap_or_default(),
            endpoint: row.endpoint.unwrap_or_default(),
            method: row.method.unwrap_or_default(),
            status_code: row.status_code.unwrap_or_default(),
            request_count: row.request_count,
            error_count: row.error_count,
            total_duration_ms: row.total_duration_ms,
            max_duration_ms: u32::try_from(row.max_duration_ms).unwrap_or(u32::MAX),
        })
        .collect();
    Ok(Response::new(pb::GetUsageStatsResponse { buckets }))
}

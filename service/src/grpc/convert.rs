//! Proto ↔ domain conversion.

use reqlog_client::pb;

use crate::domain::Violation;
use crate::domain::filter::{FilterInput, LogFilter, SortField, SortOrder};
use crate::domain::ip::to_hex;
use crate::domain::lifecycle::{KeyStatus, Plan, Retention};
use crate::domain::record::RecordInput;
use crate::domain::time::{OutOfRange, micros_from_parts, parts_from_micros};
use crate::store::entity::{api_key, log_entry};

/// A proto timestamp from microseconds.
pub fn timestamp(micros: i64) -> prost_types::Timestamp {
    let (seconds, nanos) = parts_from_micros(micros);
    prost_types::Timestamp { seconds, nanos }
}

/// Microseconds from a proto timestamp.
pub fn micros(timestamp: &prost_types::Timestamp) -> Result<i64, OutOfRange> {
    micros_from_parts(timestamp.seconds, timestamp.nanos).ok_or(OutOfRange)
}

/// A gateway's record as the domain reads it.
pub fn record_input(record: &pb::RequestRecord) -> RecordInput<'_> {
    RecordInput {
        account_id: &record.account_id,
        request_id: &record.request_id,
        api_key_id: &record.api_key_id,
        api_key_name: &record.api_key_name,
        api_key_prefix: &record.api_key_prefix,
        method: &record.method,
        endpoint: &record.endpoint,
        query_string: &record.query_string,
        status_code: record.status_code,
        error_code: &record.error_code,
        client_ip: &record.client_ip,
        user_agent: &record.user_agent,
        duration_ms: record.duration_ms,
        timestamp: record.timestamp.as_ref().map(|ts| (ts.seconds, ts.nanos)),
    }
}

/// A validated filter; an absent filter is no condition.
pub fn filter(filter: Option<&pb::LogFilter>) -> Result<LogFilter, Violation> {
    let Some(filter) = filter else {
        return Ok(LogFilter::default());
    };
    LogFilter::parse(FilterInput {
        search: &filter.search,
        api_key_ids: &filter.api_key_ids,
        methods: &filter.methods,
        status_codes: &filter.status_codes,
        status_classes: filter
            .status_classes
            .iter()
            .map(|&class| match pb::StatusClass::try_from(class) {
                Ok(pb::StatusClass::StatusClass1xx) => 1,
                Ok(pb::StatusClass::StatusClass2xx) => 2,
                Ok(pb::StatusClass::StatusClass3xx) => 3,
                Ok(pb::StatusClass::StatusClass4xx) => 4,
                Ok(pb::StatusClass::StatusClass5xx) => 5,
                Ok(pb::StatusClass::Unspecified) => 0,
                Err(_) => -1,
            })
            .collect(),
        error_codes: &filter.error_codes,
        ip_hash_prefix: &filter.ip_hash_prefix,
        endpoint_prefix: &filter.endpoint_prefix,
        start_micros: filter.start_time.as_ref().map(micros),
        end_micros: filter.end_time.as_ref().map(micros),
    })
}

/// The order; absent or `LOG_FIELD_UNSPECIFIED` is the default (newest first).
pub fn order(order: Option<&pb::SortOrder>) -> Result<SortOrder, Violation> {
    let Some(order) = order else {
        return Ok(SortOrder::default());
    };
    let field = match pb::LogField::try_from(order.field) {
        Ok(pb::LogField::Unspecified) => return Ok(SortOrder::default()),
        Ok(pb::LogField::Timestamp) => SortField::Timestamp,
        Ok(pb::LogField::ApiKeyName) => SortField::ApiKeyName,
        Ok(pb::LogField::ApiKeyPrefix) => SortField::ApiKeyPrefix,
        Ok(pb::LogField::Method) => SortField::Method,
        Ok(pb::LogField::Endpoint) => SortField::Endpoint,
        Ok(pb::LogField::QueryParams) => SortField::QueryParams,
        Ok(pb::LogField::StatusCode) => SortField::StatusCode,
        Ok(pb::LogField::ErrorCode) => SortField::ErrorCode,
        Ok(pb::LogField::IpHash) => SortField::IpHash,
        Ok(pb::LogField::DurationMs) => SortField::DurationMs,
        Err(_) => return Err(Violation::new("order_by.field", "is not a known LogField")),
    };
    Ok(SortOrder {
        field,
        descending: order.descending,
    })
}

/// A stored key status as the proto enum.
pub fn key_status(status: &str) -> pb::ApiKeyStatus {
    match status {
        "ACTIVE" => pb::ApiKeyStatus::Active,
        "ROTATED" => pb::ApiKeyStatus::Rotated,
        "EXPIRED" => pb::ApiKeyStatus::Expired,
        "INACTIVE" => pb::ApiKeyStatus::Inactive,
        _ => pb::ApiKeyStatus::Unspecified,
    }
}

/// The key's status now: a key past its `expires_at` is EXPIRED whatever was last set.
pub fn effective_key_status(key: Option<&api_key::Model>, now_micros: i64) -> pb::ApiKeyStatus {
    match key {
        None => pb::ApiKeyStatus::Unspecified,
        Some(key) if key.expires_at.is_some_and(|at| at <= now_micros) => pb::ApiKeyStatus::Expired,
        Some(key) => key_status(&key.status),
    }
}

/// A stored row as consoles see it.
pub fn log_entry(row: log_entry::Model, status: pb::ApiKeyStatus) -> pb::LogEntry {
    pb::LogEntry {
        id: row.id.to_string(),
        account_id: row.account_id,
        request_id: row.request_id.map(|id| id.0).unwrap_or_default(),
        api_key_id: row.api_key_id,
        api_key_name: row.api_key_name,
        api_key_prefix: row.api_key_prefix,
        api_key_status: status.into(),
        method: row.method,
        endpoint: row.endpoint,
        query_params: row.query_params,
        status_code: row.status_code,
        error_code: row.error_code,
        ip_hash: to_hex(&row.ip_hash),
        user_agent: row.user_agent,
        duration_ms: u32::try_from(row.duration_ms).unwrap_or(u32::MAX),
        timestamp: Some(timestamp(row.ts)),
    }
}

/// A plan from the proto; UNSPECIFIED and unknown values are refused.
pub fn plan(value: i32) -> Result<Plan, Violation> {
    match pb::Plan::try_from(value) {
        Ok(pb::Plan::Free) => Ok(Plan::Free),
        Ok(pb::Plan::Starter) => Ok(Plan::Starter),
        Ok(pb::Plan::Pro) => Ok(Plan::Pro),
        Ok(pb::Plan::Scale) => Ok(Plan::Scale),
        Ok(pb::Plan::Enterprise) => Ok(Plan::Enterprise),
        Ok(pb::Plan::Unspecified) => Err(Violation::new("plan", "must be set")),
        Err(_) => Err(Violation::new("plan", "is not a known plan")),
    }
}

/// A plan as the proto enum.
pub fn plan_to_pb(plan: Plan) -> pb::Plan {
    match plan {
        Plan::Free => pb::Plan::Free,
        Plan::Starter => pb::Plan::Starter,
        Plan::Pro => pb::Plan::Pro,
        Plan::Scale => pb::Plan::Scale,
        Plan::Enterprise => pb::Plan::Enterprise,
    }
}

/// A key status from the proto; UNSPECIFIED and unknown values are refused.
pub fn key_status_from_pb(value: i32) -> Result<KeyStatus, Violation> {
    match pb::ApiKeyStatus::try_from(value) {
        Ok(pb::ApiKeyStatus::Active) => Ok(KeyStatus::Active),
        Ok(pb::ApiKeyStatus::Rotated) => Ok(KeyStatus::Rotated),
        Ok(pb::ApiKeyStatus::Expired) => Ok(KeyStatus::Expired),
        Ok(pb::ApiKeyStatus::Inactive) => Ok(KeyStatus::Inactive),
        Ok(pb::ApiKeyStatus::Unspecified) => Err(Violation::new("status", "must be set")),
        Err(_) => Err(Violation::new("status", "is not a known status")),
    }
}

/// A stored key as the proto message, with its effective status at `now_micros`.
pub fn api_key(key: api_key::Model, now_micros: i64) -> pb::ApiKey {
    let status = effective_key_status(Some(&key), now_micros);
    pb::ApiKey {
        account_id: key.account_id,
        api_key_id: key.api_key_id,
        name: key.name,
        prefix: key.prefix,
        status: status.into(),
        expires_at: key.expires_at.map(timestamp),
        deleted_at: key.deleted_at.map(timestamp),
    }
}

/// An account's plan as the proto message.
pub fn account_plan(account_id: &str, retention: Retention) -> pb::AccountPlan {
    pb::AccountPlan {
        account_id: account_id.to_owned(),
        plan: plan_to_pb(retention.plan).into(),
        retention_days_override: retention.override_days,
        effective_retention_days: retention.days(),
    }
}

/// An optional proto timestamp as microseconds, naming `field` when out of range.
pub fn optional_micros(
    field: &str,
    timestamp: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Violation> {
    timestamp
        .map(|ts| {
            micros(ts).map_err(|OutOfRange| Violation::new(field, "must lie between 1970 and 9999"))
        })
        .transpose()
}

/// An activity-record row as the proto's entry.
pub fn activity_entry(row: crate::store::activity::entry::Model) -> pb::ActivityEntry {
    use crate::domain::activity::ActivityAction;
    let action = match ActivityAction::parse(&row.action) {
        Some(ActivityAction::PurgeForKey) => pb::ActivityAction::PurgeForKey,
        Some(ActivityAction::UpsertApiKey) => pb::ActivityAction::UpsertApiKey,
        Some(ActivityAction::SetAccountPlan) => pb::ActivityAction::SetAccountPlan,
        Some(ActivityAction::RetentionSweep) => pb::ActivityAction::RetentionSweep,
        None => pb::ActivityAction::Unspecified,
    };
    pb::ActivityEntry {
        id: row.id.to_string(),
        time: Some(timestamp(row.at)),
        principal: row.principal,
        action: action as i32,
        account_id: row.account_id,
        api_key_id: row.api_key_id,
        rows_affected: row.rows_affected,
        detail: row.detail,
    }
}

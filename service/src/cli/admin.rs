//! `reqlog purge`, `sweep`, `plan`, `stats` and `hash-ip`.

use clap::{Args, ValueEnum};
use reqlog_client::pb;

use super::{CliError, Connect, time};
use crate::domain::lifecycle::Plan;
use crate::grpc::convert::plan_to_pb;

/// `reqlog purge ACCOUNT API_KEY_ID`.
#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,
    /// The account.
    pub account_id: String,
    /// The key whose rows are deleted; records for it are refused afterwards.
    pub api_key_id: String,
}

/// `reqlog sweep [ACCOUNT]`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,
    /// Only this account (default: every account).
    pub account_id: Option<String>,
}

/// `reqlog plan ACCOUNT PLAN [--retention-days N] [--dry-run]`.
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,
    /// The account.
    pub account_id: String,
    /// The plan.
    #[arg(value_enum)]
    pub plan: Plan,
    /// Overrides the plan's retention window, in days.
    #[arg(long)]
    pub retention_days: Option<i32>,
    /// Only show what the next sweep would delete under this plan.
    #[arg(long)]
    pub dry_run: bool,
}

/// Bucket sizes for `reqlog stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Granularity {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

/// Grouping dimensions for `reqlog stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dimension {
    /// By API key.
    Key,
    /// By endpoint.
    Endpoint,
    /// By method.
    Method,
    /// By status code.
    Status,
}

/// `reqlog stats ACCOUNT [--key ID] [--since T] [--until T]`.
#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,
    /// The account.
    pub account_id: String,
    /// Only this API key.
    #[arg(long = "key", value_name = "API_KEY_ID")]
    pub key: Option<String>,
    /// From this time (RFC 3339 or an age such as `7d`; default 24h ago).
    #[arg(long, default_value = "24h")]
    pub since: String,
    /// Until this time (RFC 3339 or an age; default now).
    #[arg(long)]
    pub until: Option<String>,
    /// Bucket size.
    #[arg(long, value_enum, default_value_t = Granularity::Hour)]
    pub granularity: Granularity,
    /// Group by these (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub group_by: Vec<Dimension>,
    /// One JSON object a bucket instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `reqlog hash-ip IP [--account ACCOUNT]`.
#[derive(Debug, Clone, Args)]
pub struct HashIpArgs {
    #[command(flatten)]
    /// Server and credentials (used with --account).
    pub connect: Connect,
    /// An IPv4 or IPv6 address.
    pub ip: String,
    /// Ask the server (HashIp) for the hash it stores for this account: needed when it runs
    /// with an IP-hash key. Without it the plain SHA-256 is computed here, offline.
    #[arg(long)]
    pub account: Option<String>,
}

/// A purge or sweep goes on when its caller stops waiting (`--timeout`): say so beside the
/// error, so that nobody takes it for undone.
fn left_running(status: tonic::Status, what: &str) -> reqlog_client::ClientError {
    if matches!(
        status.code(),
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) {
        eprintln!(
            "note: the {what} goes on on the server; its activity entry appears when it is done"
        );
    }
    status.into()
}

pub(super) async fn purge(args: PurgeArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let response = client
        .admin()
        .purge_for_key(pb::PurgeForKeyRequest {
            account_id: args.account_id,
            api_key_id: args.api_key_id,
        })
        .await
        .map_err(|status| left_running(status, "purge"))?
        .into_inner();
    println!("purged: {} rows deleted", response.deleted_count);
    Ok(())
}

pub(super) async fn sweep(args: SweepArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let response = client
        .admin()
        .run_retention_sweep(pb::RunRetentionSweepRequest {
            account_id: args.account_id.unwrap_or_default(),
        })
        .await
        .map_err(|status| left_running(status, "sweep"))?
        .into_inner();
    for account in &response.accounts {
        println!(
            "{}: {} rows deleted (retention {} days, before {})",
            account.account_id,
            account.deleted_count,
            account.retention_days,
            time::utc(account.cutoff.as_ref()).unwrap_or_default()
        );
    }
    println!("sweep: {} rows deleted", response.deleted_count);
    Ok(())
}

pub(super) async fn plan(args: PlanArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let plan = plan_to_pb(args.plan) as i32;
    if args.dry_run {
        let preview = client
            .admin()
            .preview_retention(pb::PreviewRetentionRequest {
                account_id: args.account_id.clone(),
                plan,
                retention_days: args.retention_days,
            })
            .await
            .map_err(reqlog_client::ClientError::from)?
            .into_inner();
        println!(
            "{}: {} days (now {}); the next sweep would delete {} rows older than {}",
            args.account_id,
            preview.retention_days,
            preview.current_retention_days,
            preview.row_count,
            time::utc(preview.cutoff.as_ref()).unwrap_or_default()
        );
        return Ok(());
    }
    let response = client
        .admin()
        .set_account_plan(pb::SetAccountPlanRequest {
            account_id: args.account_id.clone(),
            plan,
            retention_days: args.retention_days,
        })
        .await
        .map_err(reqlog_client::ClientError::from)?
        .into_inner();
    let days = response
        .account_plan
        .map(|p| p.effective_retention_days)
        .unwrap_or_default();
    println!(
        "{}: plan {:?}, retention {days} days (applies at the next sweep)",
        args.account_id, args.plan
    );
    Ok(())
}

pub(super) async fn stats(args: StatsArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let start = time::parse_time(&args.since, "--since")?;
    let end = match &args.until {
        Some(until) => time::parse_time(until, "--until")?,
        None => std::time::SystemTime::now(),
    };
    let group_by = args
        .group_by
        .iter()
        .map(|d| match d {
            Dimension::Key => pb::UsageDimension::ApiKey as i32,
            Dimension::Endpoint => pb::UsageDimension::Endpoint as i32,
            Dimension::Method => pb::UsageDimension::Method as i32,
            Dimension::Status => pb::UsageDimension::StatusCode as i32,
        })
        .collect();
    let response = client
        .logs()
        .get_usage_stats(pb::GetUsageStatsRequest {
            account_id: args.account_id,
            api_key_id: args.key.unwrap_or_default(),
            start_time: Some(time::to_pb(start)),
            end_time: Some(time::to_pb(end)),
            granularity: match args.granularity {
                Granularity::Hour => pb::Granularity::Hour as i32,
                Granularity::Day => pb::Granularity::Day as i32,
            },
            group_by,
        })
        .await
        .map_err(reqlog_client::ClientError::from)?
        .into_inner();
    if args.json {
        for bucket in &response.buckets {
            let line = serde_json::json!({
                "start_time": time::utc(bucket.start_time.as_ref()),
                "api_key_id": bucket.api_key_id,
                "endpoint": bucket.endpoint,
                "method": bucket.method,
                "status_code": bucket.status_code,
                "request_count": bucket.request_count,
                "error_count": bucket.error_count,
                "total_duration_ms": bucket.total_duration_ms,
                "max_duration_ms": bucket.max_duration_ms,
            });
            println!("{line}");
        }
        return Ok(());
    }
    let zone = time::zone();
    println!(
        "START                KEY / ENDPOINT / METHOD / STATUS          REQUESTS    ERRORS  AVG MS  MAX MS"
    );
    for bucket in &response.buckets {
        let mut group: Vec<String> = Vec::new();
        for part in [&bucket.api_key_id, &bucket.endpoint, &bucket.method] {
            if !part.is_empty() {
                group.push(part.clone());
            }
        }
        if bucket.status_code != 0 {
            group.push(bucket.status_code.to_string());
        }
        let average = bucket
            .total_duration_ms
            .checked_div(bucket.request_count)
            .unwrap_or_default();
        println!(
            "{:<19}  {:<40}  {:>8}  {:>8}  {:>6}  {:>6}",
            time::local(bucket.start_time.as_ref(), &zone),
            group.join(" "),
            bucket.request_count,
            bucket.error_count,
            average,
            bucket.max_duration_ms
        );
    }
    Ok(())
}

pub(super) async fn hash_ip(args: HashIpArgs) -> Result<(), CliError> {
    let hash = match &args.account {
        Some(account) => {
            let client = args.connect.client()?;
            super::server_hash_ip(&client, account, &args.ip).await?
        }
        None => reqlog_client::hash_ip(&args.ip)
            .map_err(|_| CliError::Usage("not an IP address".into()))?,
    };
    println!("{hash}");
    Ok(())
}

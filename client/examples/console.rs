//! A console: the last hour's server errors of an account, then an export to a file.
//!
//! ```text
//! cargo run -p reqlog-client --example console -- acct_demo
//! ```

use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use reqlog_client::{LogQuery, ReqlogClient, hash_ip, pb};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let account = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "acct_demo".into());
    let server = std::env::var("REQLOG_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let client = ReqlogClient::builder(server)
        .token(std::env::var("REQLOG_TOKEN").unwrap_or_default())
        .timeout(Duration::from_secs(30))
        .connect()
        .await?;

    let query = LogQuery::new(&account)
        .status_class(pb::StatusClass::StatusClass4xx)
        .status_class(pb::StatusClass::StatusClass5xx)
        .since(SystemTime::now() - Duration::from_secs(3_600))
        .order_by(pb::LogField::Timestamp, true)
        .page_size(200);

    // Every matching row, a page at a time.
    let mut logs = client.stream_logs(query.clone());
    let mut shown = 0;
    while let Some(entry) = logs.try_next().await? {
        println!(
            "{:<24} {:<6} {:<32} {} {}…",
            entry.api_key_name,
            entry.method,
            entry.endpoint,
            entry.status_code,
            &entry.ip_hash[..entry.ip_hash.len().min(12)]
        );
        shown += 1;
    }
    println!("{shown} rows");

    // Rows from one known IP: hash it the way the server does.
    let from_ip = LogQuery::new(&account).ip_hash_prefix(hash_ip("203.0.113.10")?);
    let count = client
        .stream_logs(from_ip)
        .try_fold(0, |n, _| async move { Ok(n + 1) })
        .await?;
    println!("{count} rows from 203.0.113.10");

    // A verified export; the file appears under its name only once complete.
    let summary = client
        .export_to_path("errors.csv", pb::ExportFormat::Csv, &query)
        .await?;
    println!(
        "errors.csv: {} rows, sha256 {}",
        summary.row_count, summary.sha256
    );
    Ok(())
}

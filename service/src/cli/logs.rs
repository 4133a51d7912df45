//! `reqlog logs`: an account's logs as the console shows them, or as JSON lines.

use std::io::Write;

use clap::Args;
use futures_util::StreamExt;
use reqlog_client::pb;

use super::style::{color_stdout, paint, status_color};
use super::{CliError, Connect, FilterArgs, time};

/// `reqlog logs ACCOUNT [filters]`.
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    /// Server and credentials.
    pub connect: Connect,

    #[command(flatten)]
    /// Which rows, in which order.
    pub filter: FilterArgs,

    /// Rows fetched per call (the server caps it at 1000).
    #[arg(long, default_value_t = 100)]
    pub page_size: i32,

    /// Rows shown at most; 0 shows every matching row.
    #[arg(long, short = 'n', default_value_t = 50)]
    pub limit: usize,

    /// One JSON object a line instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Columns longer than this are cut, with `…`.
const MAX_CELL: usize = 48;

pub(super) async fn run(args: LogsArgs) -> Result<(), CliError> {
    let client = args.connect.client()?;
    let query = args.filter.query()?.page_size(args.page_size);
    let limit = if args.limit == 0 {
        usize::MAX
    } else {
        args.limit
    };
    let mut stream = client.stream_logs(query).take(limit);
    let mut stdout = std::io::stdout().lock();
    let write_error = |source| CliError::Io {
        context: "cannot write to stdout".into(),
        source,
    };
    if args.json {
        while let Some(entry) = stream.next().await {
            let line = json_line(&entry?);
            writeln!(stdout, "{line}").map_err(write_error)?;
        }
        return Ok(());
    }
    let mut entries = Vec::new();
    while let Some(entry) = stream.next().await {
        entries.push(entry?);
    }
    let table = render_table(&entries, &time::zone(), color_stdout());
    stdout.write_all(table.as_bytes()).map_err(write_error)
}

/// The key status as the console names it.
fn key_status(status: i32) -> &'static str {
    match pb::ApiKeyStatus::try_from(status) {
        Ok(pb::ApiKeyStatus::Active) => "active",
        Ok(pb::ApiKeyStatus::Rotated) => "rotated",
        Ok(pb::ApiKeyStatus::Expired) => "expired",
        Ok(pb::ApiKeyStatus::Inactive) => "inactive",
        _ => "unknown",
    }
}

fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_CELL {
        text.to_owned()
    } else {
        let mut out: String = text.chars().take(MAX_CELL - 1).collect();
        out.push('…');
        out
    }
}

/// The table: a header, one line a row, columns padded to their widest cell; the status
/// is coloured by class when `color`.
fn render_table(entries: &[pb::LogEntry], zone: &jiff::tz::TimeZone, color: bool) -> String {
    const HEADER: [&str; 9] = [
        "KEY",
        "KEY STATUS",
        "METHOD",
        "ENDPOINT",
        "PARAMS",
        "STATUS",
        "ERROR",
        "IP",
        "TIME",
    ];
    const STATUS_COLUMN: usize = 5;
    let rows: Vec<[String; 9]> = entries
        .iter()
        .map(|entry| {
            let key = match (
                entry.api_key_name.is_empty(),
                entry.api_key_prefix.is_empty(),
            ) {
                (false, false) => format!("{} ({})", entry.api_key_name, entry.api_key_prefix),
                (false, true) => entry.api_key_name.clone(),
                (true, false) => entry.api_key_prefix.clone(),
                (true, true) => entry.api_key_id.clone(),
            };
            let ip = if entry.ip_hash.is_empty() {
                String::new()
            } else {
                format!("{}…", &entry.ip_hash[..entry.ip_hash.len().min(12)])
            };
            [
                cut(&key),
                key_status(entry.api_key_status).to_owned(),
                entry.method.clone(),
                cut(&entry.endpoint),
                cut(entry.query_params.as_deref().unwrap_or_default()),
                entry.status_code.to_string(),
                entry.error_code.clone().unwrap_or_default(),
                ip,
                time::local(entry.timestamp.as_ref(), zone),
            ]
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String], status: Option<i32>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            let shown = match status {
                Some(code) if i == STATUS_COLUMN => paint(cell, status_color(code), color),
                _ => cell.clone(),
            };
            text.push_str(&shown);
            if i + 1 < cells.len() {
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(str::to_owned), None);
    for (row, entry) in rows.iter().zip(entries) {
        line(row, Some(entry.status_code));
    }
    out
}

/// A log entry as one JSON object (every field; time in RFC 3339 UTC).
fn json_line(entry: &pb::LogEntry) -> serde_json::Value {
    serde_json::json!({
        "id": entry.id,
        "account_id": entry.account_id,
        "request_id": entry.request_id,
        "api_key_id": entry.api_key_id,
        "api_key_name": entry.api_key_name,
        "api_key_prefix": entry.api_key_prefix,
        "api_key_status": key_status(entry.api_key_status),
        "method": entry.method,
        "endpoint": entry.endpoint,
        "query_params": entry.query_params,
        "status_code": entry.status_code,
        "error_code": entry.error_code,
        "ip_hash": entry.ip_hash,
        "user_agent": entry.user_agent,
        "duration_ms": entry.duration_ms,
        "timestamp": time::utc(entry.timestamp.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(status_code: i32) -> pb::LogEntry {
        pb::LogEntry {
            api_key_name: "Production".into(),
            api_key_prefix: "bye_AB12C".into(),
            api_key_status: pb::ApiKeyStatus::Rotated as i32,
            method: "GET".into(),
            endpoint: "/v1/models".into(),
            query_params: Some("page=2".into()),
            status_code,
            ip_hash: "631f08140b24b7274d12df3c37a1a80ce5876dafd7007d772e0114fddf88b682".into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_772_800_245,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_shows_what_the_console_shows() {
        let table = render_table(&[entry(200), entry(503)], &jiff::tz::TimeZone::UTC, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("KEY "));
        assert!(lines[1].contains("Production (bye_AB12C)  rotated"));
        assert!(lines[1].contains("631f08140b24…"));
        assert!(!lines[1].contains("631f08140b24b"));
        assert!(lines[1].contains("2026-03-06 12:30:45"));
        assert!(!table.contains('\x1b'));
    }

    #[test]
    fn statuses_are_coloured_only_when_asked() {
        let table = render_table(&[entry(404)], &jiff::tz::TimeZone::UTC, true);
        assert!(table.contains("\x1b[38;5;214m404\x1b[0m"));
    }

    #[test]
    fn long_cells_are_cut() {
        let long = "x".repeat(100);
        let cell = cut(&long);
        assert_eq!(cell.chars().count(), MAX_CELL);
        assert!(cell.ends_with('…'));
    }
}

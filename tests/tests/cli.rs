//! The `reqlog` operator CLI run as a process against a real server.

use std::process::{Command, Output};

use reqlog_client::{hash_ip, pb};
use reqlog_tests::process::{free_port, reqlog_binary};
use reqlog_tests::{Backend, TestServer, backend_tests, record};

/// Runs `reqlog ARGS` (off the async runtime) with a clean environment for its variables.
async fn reqlog(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let binary = reqlog_binary();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(binary);
        command.args(&args);
        for var in [
            "REQLOG_SERVER",
            "REQLOG_TOKEN",
            "NO_COLOR",
            "REQLOG_TIMEOUT",
        ] {
            command.env_remove(var);
        }
        command.envs(envs).output().expect("reqlog should run")
    })
    .await
    .expect("the blocking task should not panic")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

async fn seeded(backend: Backend) -> Option<(TestServer, String)> {
    let server = TestServer::start(backend).await?;
    let records: Vec<_> = (0..30).map(|n| record("acct_cli", n)).collect();
    let response = server
        .client
        .record_batch(records)
        .await
        .expect("the batch is valid");
    assert_eq!(response.accepted, 30);
    let url = format!("http://{}", server.addr);
    Some((server, url))
}

async fn logs_prints_a_table_and_json_with_every_filter(backend: Backend) {
    let Some((server, url)) = seeded(backend).await else {
        return;
    };
    let output = reqlog(&["logs", "acct_cli", "--server", &url, "--limit", "0"], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 31, "{table}");
    for column in [
        "KEY",
        "KEY STATUS",
        "METHOD",
        "ENDPOINT",
        "PARAMS",
        "STATUS",
        "ERROR",
        "IP",
        "TIME",
    ] {
        assert!(lines[0].contains(column), "{}", lines[0]);
    }
    let short_hash = &hash_ip("203.0.113.0").expect("an IP")[..12];
    assert!(table.contains(&format!("{short_hash}…")), "{table}");
    assert!(table.contains("Key 0 (bye_K0)  unknown"), "{table}");
    // Not a terminal: no colour codes.
    assert!(!table.contains('\x1b'));

    // Filters, sort and limit, as JSON lines; the token travels in the environment.
    let output = reqlog(
        &[
            "logs",
            "acct_cli",
            "--server",
            &url,
            "--json",
            "--method",
            "get",
            "--method",
            "POST",
            "--class",
            "2xx",
            "--class",
            "4xx",
            "--sort",
            "duration",
            "--asc",
            "--page-size",
            "2",
            "--limit",
            "100",
        ],
        &[("REQLOG_TOKEN", "t0ken")],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    let expected = (0..30)
        .map(|n| record("acct_cli", n))
        .filter(|r| ["GET", "POST"].contains(&r.method.as_str()))
        .filter(|r| (200..300).contains(&r.status_code) || (400..500).contains(&r.status_code))
        .count();
    assert_eq!(rows.len(), expected);
    let durations: Vec<u64> = rows
        .iter()
        .map(|row| row["duration_ms"].as_u64().expect("a number"))
        .collect();
    assert!(durations.windows(2).all(|w| w[0] <= w[1]), "{durations:?}");

    // --ip hashes locally; --search and --limit.
    let output = reqlog(
        &[
            "logs",
            "acct_cli",
            "--server",
            &url,
            "--json",
            "--ip",
            "203.0.113.4",
            "-n",
            "1",
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let row: serde_json::Value =
        serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    assert_eq!(row["ip_hash"], hash_ip("203.0.113.4").expect("an IP"));
    server.shutdown().await;
}

async fn export_writes_a_file_with_a_progress_line_or_to_stdout(backend: Backend) {
    let Some((server, url)) = seeded(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = dir.path().join("out.csv");
    let path_text = path.display().to_string();
    let output = reqlog(
        &[
            "export", "acct_cli", "--server", &url, "--class", "5xx", "-o", &path_text,
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let csv = std::fs::read_to_string(&path).expect("the export file");
    assert!(csv.starts_with("apikey_name,apikey_prefix,method,endpoint,"));
    let rows = (0..30)
        .filter(|n| record("acct_cli", *n).status_code >= 500)
        .count();
    assert_eq!(csv.lines().count(), rows + 1);
    let progress = stderr(&output);
    assert!(
        progress.starts_with(&format!("exported {rows} rows, {} B in ", csv.len())),
        "{progress}"
    );
    assert!(progress.contains("/s) to "), "{progress}");

    let output = reqlog(
        &[
            "export", "acct_cli", "--server", &url, "--format", "ndjson", "-q",
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).lines().count(), 30);
    assert!(stderr(&output).is_empty());
    server.shutdown().await;
}

async fn admin_commands_purge_sweep_plan_and_stats(backend: Backend) {
    let Some((server, url)) = seeded(backend).await else {
        return;
    };
    let output = reqlog(&["purge", "acct_cli", "key_0", "--server", &url], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), "purged: 10 rows deleted");

    let output = reqlog(
        &[
            "plan",
            "acct_cli",
            "pro",
            "--retention-days",
            "3",
            "--server",
            &url,
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("retention 3 days"),
        "{}",
        stdout(&output)
    );

    let output = reqlog(
        &["plan", "acct_cli", "free", "--dry-run", "--server", &url],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).starts_with("acct_cli: 1 days (now 3)"),
        "{}",
        stdout(&output)
    );

    let output = reqlog(&["sweep", "acct_cli", "--server", &url], &[]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).ends_with("sweep: 0 rows deleted\n"),
        "{}",
        stdout(&output)
    );

    let output = reqlog(
        &[
            "stats",
            "acct_cli",
            "--since",
            "7d",
            "--group-by",
            "method",
            "--json",
            "--server",
            &url,
        ],
        &[],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let total: i64 = stdout(&output)
        .lines()
        .map(|line| {
            let bucket: serde_json::Value = serde_json::from_str(line).expect("JSON");
            bucket["request_count"].as_i64().expect("a count")
        })
        .sum();
    // Statistics survive the purge.
    assert_eq!(total, 30);

    let listed = server
        .client
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_cli".into(),
            ..Default::default()
        })
        .await
        .expect("listing works");
    assert_eq!(listed.logs.len(), 20);
    server.shutdown().await;
}

backend_tests!(
    logs_prints_a_table_and_json_with_every_filter,
    export_writes_a_file_with_a_progress_line_or_to_stdout,
    admin_commands_purge_sweep_plan_and_stats,
);

#[tokio::test]
async fn hash_ip_matches_the_server_and_refuses_garbage() {
    let output = reqlog(&["hash-ip", "::ffff:203.0.113.10"], &[]).await;
    assert!(output.status.success());
    assert_eq!(
        stdout(&output),
        "631f08140b24b7274d12df3c37a1a80ce5876dafd7007d772e0114fddf88b682\n"
    );
    let output = reqlog(&["hash-ip", "203.0.113"], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr(&output), "reqlog: not an IP address\n");
}

#[tokio::test]
async fn errors_are_one_line_and_a_non_zero_exit() {
    // Nothing listens here.
    let url = format!("http://127.0.0.1:{}", free_port());
    let output = reqlog(&["logs", "acct_cli", "--server", &url], &[]).await;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(message.starts_with("reqlog: unavailable: "), "{message}");

    // Bad usage is clap's exit code 2.
    let output = reqlog(&["logs", "acct_cli", "--class", "9xx"], &[]).await;
    assert_eq!(output.status.code(), Some(2));
    let output = reqlog(
        &["logs", "acct_cli", "--since", "yesterday", "--server", &url],
        &[],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        stderr(&output),
        "reqlog: --since must be an RFC 3339 time (2026-03-06T12:00:00Z) or an age (90m, 2d)\n"
    );
}

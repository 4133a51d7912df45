//! Privacy, proven: raw IPs, secret query values and tokens reach no database file (WAL
//! included) and no output line even at `RUST_LOG=trace`; keyed IP hashing and HashIp.

use std::path::Path;
use std::time::Duration;

use reqlog_client::pb;
use reqlog_tests::auth::{Clients, TestPrincipal, write_auth_file};
use reqlog_tests::process::ServerProcess;
use reqlog_tests::{Backend, TestServer, backend_tests, record, violated_fields};
use sha2::{Digest, Sha256};
use tonic::Code;

backend_tests!(
    hash_ip_answers_plain_sha256_without_a_key,
    hash_ip_answers_the_keyed_hash_ingest_stores,
);

const TOKEN: &str = "tok-privacy-Lm4tP0x";
const WRONG_TOKEN: &str = "tok-wrong-Qz81vv";
const IPV4: &str = "198.51.100.173";
const IPV6: &str = "2001:db8:beef:cafe::4e2f";
const IPV6_LONG: &str = "2001:DB8:BEEF:CAFE:0:0:0:4E2F";
const BAD_IP: &str = "198.51.100.299";
const SECRETS: [&str; 3] = ["PrivTok9zX", "Hunter2Qq", "EndpointSecret77"];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Every needle found in any file under `dir`, with the file's name.
fn found_in_files(dir: &Path, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("the database directory") {
        let path = entry.expect("a directory entry").path();
        if !path.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).expect("a database file");
        for needle in needles {
            let lower = needle.to_ascii_lowercase();
            if contains(&bytes, needle.as_bytes()) || contains(&bytes, lower.as_bytes()) {
                found.push(format!("{needle} in {}", path.display()));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_private_reaches_the_database_or_the_logs_at_trace_level() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db_dir = dir.path().join("db");
    std::fs::create_dir(&db_dir).expect("db directory");
    let auth = dir.path().join("auth.toml");
    write_auth_file(
        &auth,
        &[TestPrincipal {
            name: "privacy-admin",
            token: TOKEN,
            role: "admin",
            accounts: &["*"],
        }],
    );
    let database = format!("sqlite://{}?mode=rwc", db_dir.join("reqlog.db").display());
    let auth_arg = auth.display().to_string();
    let mut server = ServerProcess::start_logging(
        "privacy",
        &[
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
            "--auth-file",
            &auth_arg,
        ],
        "trace",
        Duration::from_secs(60),
    );
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .connect_lazy();
    let mut clients = Clients::with_token(channel.clone(), TOKEN);

    let one = clients
        .ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(pb::RequestRecord {
                client_ip: IPV4.into(),
                endpoint: format!("/v1/private?secret={}", SECRETS[2]),
                query_string: format!("token={}&duration=5&password={}", SECRETS[0], SECRETS[1]),
                ..record("acct_priv", 0)
            }),
        })
        .await
        .expect("record with an IPv4 address")
        .into_inner();
    assert!(!one.duplicate);
    let batch = clients
        .ingest
        .record_requests(pb::RecordRequestsRequest {
            records: vec![
                pb::RequestRecord {
                    client_ip: IPV6.into(),
                    ..record("acct_priv", 1)
                },
                pb::RequestRecord {
                    client_ip: IPV6_LONG.into(),
                    ..record("acct_priv", 2)
                },
                pb::RequestRecord {
                    client_ip: BAD_IP.into(),
                    ..record("acct_priv", 3)
                },
            ],
        })
        .await
        .expect("a batch")
        .into_inner();
    assert_eq!(batch.accepted, 2);
    assert_eq!(batch.rejected.len(), 1);
    assert!(!batch.rejected[0].reason.contains(BAD_IP));
    let status = clients
        .ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(pb::RequestRecord {
                client_ip: BAD_IP.into(),
                ..record("acct_priv", 4)
            }),
        })
        .await
        .expect_err("not an IP");
    assert_eq!(violated_fields(&status), ["record.client_ip"]);
    assert!(!status.message().contains(BAD_IP));
    for ip in [IPV4, IPV6, BAD_IP] {
        let _ = clients
            .logs
            .hash_ip(pb::HashIpRequest {
                account_id: "acct_priv".into(),
                ip: ip.into(),
            })
            .await;
    }
    let listed = clients
        .logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_priv".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.logs.len(), 3);
    let ipv6_hash = hex(&Sha256::digest(IPV6.as_bytes()));
    assert_eq!(
        listed
            .logs
            .iter()
            .filter(|entry| entry.ip_hash == ipv6_hash)
            .count(),
        2,
        "both spellings of the IPv6 address hash alike"
    );
    let wrong = Clients::with_token(channel, WRONG_TOKEN)
        .logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_priv".into(),
            ..Default::default()
        })
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let mut needles = vec![IPV4, IPV6, IPV6_LONG, BAD_IP, TOKEN, WRONG_TOKEN];
    needles.extend(SECRETS);
    // While the server runs: the WAL holds the recent commits.
    let found = found_in_files(&db_dir, &needles);
    assert!(found.is_empty(), "while running: {found:?}");

    let exit = server.stop(Duration::from_secs(30));
    assert!(exit.is_some_and(|status| status.success()), "clean stop");
    let found = found_in_files(&db_dir, &needles);
    assert!(found.is_empty(), "after stopping: {found:?}");

    let stderr = server.log_text();
    let stdout = server.stdout_text();
    assert!(
        stderr.lines().count() > 50,
        "trace logging should be on:\n{stderr}"
    );
    for needle in &needles {
        let lower = needle.to_ascii_lowercase();
        for (name, output) in [("stderr", &stderr), ("stdout", &stdout)] {
            assert!(
                !output.contains(needle) && !output.contains(&lower),
                "{needle} in the server's {name}"
            );
        }
    }
}

async fn hash_ip_answers_plain_sha256_without_a_key(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let mut logs = Clients::new(server.channel(), reqlog_tests::auth::Bearer::none()).logs;
    for (ip, canonical) in [
        ("203.0.113.10", "203.0.113.10"),
        ("::ffff:203.0.113.10", "203.0.113.10"),
        ("2001:DB8::1", "2001:db8::1"),
    ] {
        let answer = logs
            .hash_ip(pb::HashIpRequest {
                account_id: "acct_h".into(),
                ip: ip.into(),
            })
            .await
            .expect("hash")
            .into_inner();
        assert_eq!(answer.ip_hash, hex(&Sha256::digest(canonical.as_bytes())));
    }
    for (ip, field) in [("", "ip"), ("10.0.0.300", "ip")] {
        let status = logs
            .hash_ip(pb::HashIpRequest {
                account_id: "acct_h".into(),
                ip: ip.into(),
            })
            .await
            .expect_err("not an IP");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    server.shutdown().await;
}

async fn hash_ip_answers_the_keyed_hash_ingest_stores(backend: Backend) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key_file = dir.path().join("ip.key");
    let key = "6f1d0c9e4b7a2358d1e0f9c8b7a6958473625140f1e2d3c4b5a6978812345678";
    std::fs::write(&key_file, format!("{key}\n")).expect("key file");
    let Some(server) = TestServer::start_with(backend, |config| {
        config.ip_hash_key_file = Some(key_file.clone());
    })
    .await
    else {
        return;
    };
    let clients = Clients::new(server.channel(), reqlog_tests::auth::Bearer::none());
    let mut ingest = clients.ingest.clone();
    let mut logs = clients.logs.clone();
    ingest
        .record_request(pb::RecordRequestRequest {
            record: Some(pb::RequestRecord {
                client_ip: "203.0.113.10".into(),
                ..record("acct_k", 0)
            }),
        })
        .await
        .expect("record");
    let hashed = logs
        .hash_ip(pb::HashIpRequest {
            account_id: "acct_k".into(),
            ip: "203.0.113.10".into(),
        })
        .await
        .expect("hash")
        .into_inner()
        .ip_hash;
    // HMAC-SHA256 under the file's text (trimmed), computed here independently.
    assert_eq!(hashed, hmac_sha256_hex(key.as_bytes(), b"203.0.113.10"));
    assert_ne!(hashed, hex(&Sha256::digest(b"203.0.113.10")));
    // The stored hash is the same, so a console finds the address's rows by prefix.
    let found = logs
        .list_logs(pb::ListLogsRequest {
            account_id: "acct_k".into(),
            filter: Some(pb::LogFilter {
                ip_hash_prefix: hashed[..12].to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(found.logs.len(), 1);
    assert_eq!(found.logs[0].ip_hash, hashed);
    server.shutdown().await;
}

/// RFC 2104 HMAC over SHA-256, written out so the test does not reuse the server's code.
fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    hex(&Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize())
}

#[tokio::test]
async fn a_short_ip_hash_key_stops_the_start() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let key_file = dir.path().join("ip.key");
    std::fs::write(&key_file, "too-short\n").expect("key file");
    let test_db = reqlog_tests::TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite");
    let mut config = reqlog_tests::test_config(&test_db.url);
    config.ip_hash_key_file = Some(key_file);
    let error = reqlog_service::Application::build(&config)
        .await
        .expect_err("a short key is refused");
    assert!(error.to_string().contains("at least 32 bytes"), "{error}");
}

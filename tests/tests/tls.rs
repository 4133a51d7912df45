//! TLS and mutual TLS: real handshakes against certificates made by the test (rcgen).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use reqlog_client::pb;
use reqlog_service::Application;
use reqlog_tests::{Backend, TestDb, record, test_config};
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `names`, as (certificate PEM, key PEM).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a PEM file");
    path
}

fn server_files(ca: &Ca, client_ca: &Ca) -> Files {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    Files {
        cert: write(dir.path(), "server.pem", &cert),
        key: write(dir.path(), "server.key", &key),
        client_ca: write(dir.path(), "client-ca.pem", &client_ca.pem()),
        _dir: dir,
    }
}

/// A server with TLS (and mTLS when `mutual`) over SQLite; stops when `stop` is sent.
async fn start(files: &Files, mutual: bool) -> (u16, oneshot::Sender<()>, TestDb) {
    let test_db = TestDb::create(Backend::Sqlite).await.expect("sqlite");
    let mut config = test_config(&test_db.url);
    config.tls_cert = Some(files.cert.clone());
    config.tls_key = Some(files.key.clone());
    config.tls_client_ca = mutual.then(|| files.client_ca.clone());
    let app = Application::build(&config)
        .await
        .expect("TLS server builds");
    let port = app.local_addr().port();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async {
        let _ = stopped.await;
    }));
    (port, stop, test_db)
}

async fn tls_channel(
    port: u16,
    ca: &Ca,
    identity: Option<(String, String)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://localhost:{port}"))
        .expect("endpoint")
        .tls_config(tls)
        .expect("client TLS config")
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))
}

/// One RecordRequest over `channel`.
async fn record_over(channel: Channel) -> Result<(), tonic::Status> {
    pb::ingest_service_client::IngestServiceClient::new(channel)
        .record_request(pb::RecordRequestRequest {
            record: Some(record("acct_tls", 1)),
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_over_tls_and_plaintext_is_refused() {
    let ca = Ca::new("reqlog test CA");
    let files = server_files(&ca, &ca);
    let (port, stop, _db) = start(&files, false).await;

    let channel = tls_channel(port, &ca, None).await.expect("TLS handshake");
    record_over(channel).await.expect("a call over TLS");

    // A client that does not trust the server's CA fails the handshake.
    let stranger = Ca::new("another CA");
    assert!(tls_channel(port, &stranger, None).await.is_err());

    // Plaintext HTTP/2 to a TLS port gets no answer.
    let plaintext = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("endpoint")
        .connect_lazy();
    assert!(record_over(plaintext).await.is_err());
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let files = server_files(&server_ca, &client_ca);
    let (port, stop, _db) = start(&files, true).await;

    let client = client_ca.leaf(&["edge-gateway"]);
    let channel = tls_channel(port, &server_ca, Some(client))
        .await
        .expect("mTLS handshake");
    record_over(channel)
        .await
        .expect("a call with a client certificate");

    // No certificate: the server ends the handshake (rustls may only report it on the
    // first call, after the client's part of the handshake finished).
    let refused = match tls_channel(port, &server_ca, None).await {
        Err(_) => true,
        Ok(channel) => record_over(channel).await.is_err(),
    };
    assert!(refused, "a client without a certificate must be refused");

    // A certificate from a CA the server does not trust for clients.
    let forged = server_ca.leaf(&["edge-gateway"]);
    let refused = match tls_channel(port, &server_ca, Some(forged)).await {
        Err(_) => true,
        Ok(channel) => record_over(channel).await.is_err(),
    };
    assert!(refused, "a certificate of another CA must be refused");
    let _ = stop.send(());
}

#[tokio::test]
async fn unreadable_tls_files_stop_the_start() {
    let test_db = TestDb::create(Backend::Sqlite).await.expect("sqlite");
    let mut config = test_config(&test_db.url);
    config.tls_cert = Some("missing/server.pem".into());
    config.tls_key = Some("missing/server.key".into());
    let error = Application::build(&config)
        .await
        .expect_err("no certificate, no start");
    assert!(error.to_string().contains("--tls-cert"), "{error}");
}

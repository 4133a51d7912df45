//! Test harness: a real reqlog server on a loopback port over a real database.
//!
//! Every suite runs on SQLite (a temporary file); when `REQLOG_TEST_POSTGRES_URL` is set
//! (e.g. `postgres://postgres@127.0.0.1:5432/postgres`) the same tests also run on
//! PostgreSQL, each in a database of its own. `TEST_LOG=1` turns server tracing on.

pub mod auth;
pub mod load;
pub mod process;

use std::sync::Arc;
use std::sync::Once;

use reqlog_client::{ReqlogClient, pb};
use reqlog_service::app::AppError;
use reqlog_service::store::writer::WriterStats;
use reqlog_service::{Application, Config};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "REQLOG_TEST_POSTGRES_URL";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh database on the server `REQLOG_TEST_POSTGRES_URL` names.
    Postgres,
}

/// A database made for one test; removed when dropped (SQLite) or at shutdown (PostgreSQL).
#[derive(Debug)]
pub struct TestDb {
    /// The URL the server connects to.
    pub url: String,
    /// Which backend.
    pub backend: Backend,
    dir: Option<TempDir>,
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A fresh database, or `None` (with a printed notice) when PostgreSQL is not configured.
    pub async fn create(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary directory should be creatable");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("reqlog.db").display()
                );
                Some(Self {
                    url,
                    backend,
                    dir: Some(dir),
                    postgres: None,
                })
            }
            Backend::Postgres => {
                let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
                    eprintln!("skipped on PostgreSQL: {POSTGRES_URL_VAR} is not set");
                    return None;
                };
                let name = format!("reqlog_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url)
                    .await
                    .expect("the PostgreSQL test server should accept connections");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("a test database should be creatable");
                admin.close().await.ok();
                let url = replace_database(&admin_url, &name);
                Some(Self {
                    url,
                    backend,
                    dir: None,
                    postgres: Some((admin_url, name)),
                })
            }
        }
    }

    /// A database the test set up itself (e.g. on a private PostgreSQL cluster); `remove`
    /// leaves it alone.
    pub fn existing(url: impl Into<String>, backend: Backend) -> Self {
        Self {
            url: url.into(),
            backend,
            dir: None,
            postgres: None,
        }
    }

    /// The SQLite file, for tests that tamper with it.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        self.dir.as_ref().map(|dir| dir.path().join("reqlog.db"))
    }

    /// Drops a PostgreSQL test database.
    pub async fn remove(mut self) {
        if let Some((admin_url, name)) = self.postgres.take()
            && let Ok(admin) = Database::connect(&admin_url).await
        {
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            admin.close().await.ok();
        }
    }
}

/// The URL with its database (path) replaced.
fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            reqlog_service::telemetry::init(reqlog_service::config::LogFormat::Text);
        }
    });
}

/// A running server, its client and a handle on its database.
#[derive(Debug)]
pub struct TestServer {
    /// The bound loopback address.
    pub addr: std::net::SocketAddr,
    /// An SDK client connected to it.
    pub client: ReqlogClient,
    /// The server's database pool (shared with the server).
    pub db: DatabaseConnection,
    /// The writer's counters.
    pub stats: Arc<WriterStats>,
    /// The database under the server.
    pub test_db: TestDb,
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), AppError>>,
}

/// A default test configuration: loopback, port 0, a fast health check.
pub fn test_config(url: &str) -> Config {
    let mut config = Config::with_database_url(url);
    config.listen = "127.0.0.1:0"
        .parse()
        .expect("a literal address should parse");
    config.health_check_interval = std::time::Duration::from_millis(100);
    config
}

impl TestServer {
    /// Starts a server over a fresh database; `None` when the backend is not configured.
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// As `start`, letting the test adjust the configuration first.
    pub async fn start_with(backend: Backend, configure: impl FnOnce(&mut Config)) -> Option<Self> {
        let test_db = TestDb::create(backend).await?;
        Some(Self::start_on(test_db, configure).await)
    }

    /// Starts a server over an existing test database.
    pub async fn start_on(test_db: TestDb, configure: impl FnOnce(&mut Config)) -> Self {
        init_tracing();
        let mut config = test_config(&test_db.url);
        configure(&mut config);
        let app = Application::build(&config)
            .await
            .expect("application should build");
        let addr = app.local_addr(); // already bound: no sleep, no retry
        let db = app.database();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (stats_tx, stats_rx) = oneshot::channel();
        let handle = tokio::spawn(app.serve(
            async {
                let _ = shutdown_rx.await;
            },
            move |stats| {
                let _ = stats_tx.send(stats);
            },
        ));
        let stats = stats_rx
            .await
            .expect("the server should hand out its writer stats");
        let client = ReqlogClient::connect(format!("http://{addr}"))
            .await
            .expect("client should connect");
        Self {
            addr,
            client,
            db,
            stats,
            test_db,
            shutdown,
            handle,
        }
    }

    /// A channel to the server (connects on first use), for the generated clients.
    pub fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("a socket address is a valid URI")
            .connect_lazy()
    }

    /// Stops the server, asserts it exited cleanly, and returns its database.
    pub async fn stop(self) -> TestDb {
        let _ = self.shutdown.send(());
        self.handle
            .await
            .expect("the server task should not panic")
            .expect("the server should stop cleanly");
        self.test_db
    }

    /// Stops the server, asserts a clean exit and removes its database.
    pub async fn shutdown(self) {
        self.stop().await.remove().await;
    }
}

/// Every `LogField`, the default order first.
pub const LOG_FIELDS: [pb::LogField; 11] = [
    pb::LogField::Unspecified,
    pb::LogField::Timestamp,
    pb::LogField::ApiKeyName,
    pb::LogField::ApiKeyPrefix,
    pb::LogField::Method,
    pb::LogField::Endpoint,
    pb::LogField::QueryParams,
    pb::LogField::StatusCode,
    pb::LogField::ErrorCode,
    pb::LogField::IpHash,
    pb::LogField::DurationMs,
];

/// A valid record for `account`, varied by `n`.
pub fn record(account: &str, n: usize) -> pb::RequestRecord {
    const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
    const STATUSES: [i32; 6] = [200, 201, 204, 400, 404, 503];
    pb::RequestRecord {
        account_id: account.to_owned(),
        request_id: String::new(),
        api_key_id: format!("key_{}", n % 3),
        api_key_name: format!("Key {}", n % 3),
        api_key_prefix: format!("bye_K{}", n % 3),
        method: METHODS[n % METHODS.len()].to_owned(),
        endpoint: format!("/v1/items/{}", n % 7),
        query_string: if n.is_multiple_of(2) {
            format!("page={n}")
        } else {
            String::new()
        },
        status_code: STATUSES[n % STATUSES.len()],
        error_code: if n % 6 >= 3 {
            format!("BSE{}", 1000 + n % 4)
        } else {
            String::new()
        },
        client_ip: format!("203.0.113.{}", n % 250),
        user_agent: "reqlog-tests/1.0".to_owned(),
        duration_ms: (n * 37 % 1000) as u32,
        timestamp: Some(prost_types::Timestamp {
            // Spread over the last few hours, one second apart, some sharing a second.
            seconds: now_seconds() - 200_000 + (n as i64 / 2),
            nanos: 0,
        }),
    }
}

/// Now, in whole seconds since the epoch.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or_default()
}

/// The field names of an INVALID_ARGUMENT status's BadRequest details.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Generates, for each listed `async fn name(backend: Backend)`, a test on SQLite and one
/// on PostgreSQL (which prints a notice and passes when PostgreSQL is not configured).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Backend::Sqlite).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Backend::Postgres).await;
                }
            )+
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_replaced_in_urls() {
        assert_eq!(
            replace_database("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            replace_database("postgres://u:p@h/db?sslmode=disable", "t2"),
            "postgres://u:p@h/t2?sslmode=disable"
        );
        assert_eq!(
            replace_database("postgres://h:5432", "t3"),
            "postgres://h:5432/t3"
        );
    }
}

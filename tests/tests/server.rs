//! The server as a whole: refused options, health, reflection, migrations.

use std::time::Duration;

use reqlog_client::ClientError;
use reqlog_migrations::{Migrator, MigratorTrait};
use reqlog_service::Application;
use reqlog_tests::{Backend, TestDb, TestServer, backend_tests, record, test_config};
use sea_orm::{ConnectionTrait, Database};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

backend_tests!(
    health_follows_the_database,
    migrations_run_up_and_down,
    migrations_apply_on_connections_that_read_the_old_schema,
    key_ids_paths_and_labels_become_numbers_and_read_back_the_same,
    reflection_lists_every_service,
);

async fn status_of(server: &TestServer, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("health client should connect");
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check should answer");
    response.into_inner().status()
}

async fn wait_for_status(server: &TestServer, wanted: ServingStatus) {
    for _ in 0..100 {
        if status_of(server, "").await == wanted {
            for service in [
                "reqlog.v1.IngestService",
                "reqlog.v1.LogService",
                "reqlog.v1.AdminService",
            ] {
                assert_eq!(status_of(server, service).await, wanted, "{service}");
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("health never became {wanted:?}");
}

/// Makes the database unreachable and reachable again, in the way each backend allows.
async fn cut_database(server: &TestServer, cut: bool) {
    match server.test_db.backend {
        Backend::Sqlite => {
            let file = server.test_db.sqlite_file().expect("an SQLite file");
            let aside = file.with_extension("aside");
            if cut {
                std::fs::rename(&file, &aside).expect("the database file should move aside");
            } else {
                std::fs::rename(&aside, &file).expect("the database file should move back");
            }
        }
        Backend::Postgres => {
            let name = server
                .test_db
                .url
                .rsplit('/')
                .next()
                .expect("a database name")
                .to_owned();
            let admin_url =
                std::env::var(reqlog_tests::POSTGRES_URL_VAR).expect("set for PostgreSQL runs");
            let admin = Database::connect(&admin_url)
                .await
                .expect("admin connection");
            let allow = if cut { "false" } else { "true" };
            admin
                .execute_unprepared(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {allow}"))
                .await
                .expect("alter database");
            if cut {
                admin
                    .execute_unprepared(&format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    ))
                    .await
                    .expect("terminate connections");
            }
            admin.close().await.ok();
        }
    }
}

async fn health_follows_the_database(backend: Backend) {
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    wait_for_status(&server, ServingStatus::Serving).await;
    server
        .client
        .record(record("acct_h", 1))
        .await
        .expect("healthy ingest");

    cut_database(&server, true).await;
    wait_for_status(&server, ServingStatus::NotServing).await;
    let error = server
        .client
        .record(record("acct_h", 2))
        .await
        .expect_err("nothing is acknowledged");
    assert!(matches!(error, ClientError::Unavailable(_)), "{error:?}");
    assert!(error.is_retryable());

    cut_database(&server, false).await;
    wait_for_status(&server, ServingStatus::Serving).await;
    server
        .client
        .record(record("acct_h", 3))
        .await
        .expect("ingest recovers");
    server.shutdown().await;
}

async fn migrations_run_up_and_down(backend: Backend) {
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let db = Database::connect(&test_db.url).await.expect("connect");
    Migrator::up(&db, None).await.expect("up");
    assert!(
        Migrator::get_pending_migrations(&db)
            .await
            .expect("status")
            .is_empty()
    );
    Migrator::down(&db, None).await.expect("down");
    assert_eq!(
        Migrator::get_pending_migrations(&db)
            .await
            .expect("status")
            .len(),
        Migrator::migrations().len()
    );
    let leftover = db
        .query_one(sea_orm::Statement::from_string(
            db.get_database_backend(),
            match backend {
                Backend::Sqlite => "SELECT COUNT(*) AS n FROM sqlite_master WHERE name IN ('log_entries', 'request_ids', 'usage_stats')",
                Backend::Postgres => "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name IN ('log_entries', 'request_ids', 'usage_stats')",
            },
        ))
        .await
        .expect("catalog query")
        .expect("a count");
    assert_eq!(leftover.try_get::<i64>("", "n").expect("n"), 0);
    Migrator::up(&db, None).await.expect("up again");
    db.close().await.ok();
    test_db.remove().await;
}

/// A pool whose connections all read the schema before the last migrations (as a server's
/// do once it has served): each migration must see the schema its predecessors left, on
/// whichever connection its statements run. A draft of `m20261207_000010` (a rename, then
/// a column added under the old name) failed here with "duplicate column name" until SQLite
/// migrations ran in one transaction (`reqlog_migrations::sqlite::in_one_transaction`).
async fn migrations_apply_on_connections_that_read_the_old_schema(backend: Backend) {
    use sea_orm::TransactionTrait;
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let mut options = sea_orm::ConnectOptions::new(test_db.url.clone());
    options.max_connections(4);
    let db = Database::connect(options).await.expect("connect");
    let all = Migrator::migrations().len();
    Migrator::up(&db, Some(u32::try_from(all - 5).expect("a count")))
        .await
        .expect("up to the last five");
    // Several connections at once, each reading the tables the last migrations change.
    let mut open = Vec::new();
    for _ in 0..4 {
        let txn = db.begin().await.expect("begin");
        for table in ["log_entries", "usage_stats"] {
            txn.execute_unprepared(&format!("SELECT * FROM {table} LIMIT 1"))
                .await
                .expect("read");
        }
        open.push(txn);
    }
    for txn in open {
        txn.commit().await.expect("commit");
    }
    Migrator::up(&db, None).await.expect("the last five");
    db.execute_unprepared("SELECT request_id FROM log_entries LIMIT 1")
        .await
        .expect("the request id reads as before");
    db.execute_unprepared("SELECT api_key_no, endpoint_no FROM usage_stats LIMIT 1")
        .await
        .expect("the counters hold numbers");
    db.execute_unprepared("SELECT api_key_label_no, endpoint_no FROM log_entries LIMIT 1")
        .await
        .expect("the rows hold label and path numbers");
    Migrator::down(&db, Some(5)).await.expect("down again");
    Migrator::up(&db, None).await.expect("up again");
    db.close().await.ok();
    test_db.remove().await;
}

/// A database from before key ids, paths and key labels were numbers, with rows and
/// counters: after the migrations a page, a key filter, a sort by name or path, a path
/// filter and the statistics read the same texts and counts as before, and reverting them
/// gives the texts back.
async fn key_ids_paths_and_labels_become_numbers_and_read_back_the_same(backend: Backend) {
    use reqlog_service::domain::filter::{LogFilter, LogQuery, SortField, SortOrder};
    use reqlog_service::domain::lifecycle::{Dimension, Granularity, UsageQuery};
    use reqlog_service::store::{logs, usage};
    let Some(test_db) = TestDb::create(backend).await else {
        return;
    };
    let db = Database::connect(&test_db.url).await.expect("connect");
    let all = Migrator::migrations().len();
    Migrator::up(&db, Some(u32::try_from(all - 5).expect("a count")))
        .await
        .expect("up to before the numbers");
    let hour: i64 = 3_600 * 500_000;
    let ts = hour * 1_000_000;
    // Two rows of key_b and one of key_a, and the counters that hold them (on SQLite, the
    // rows are marked as folded into them).
    let statements = [
        "INSERT INTO account_numbers (id, value) VALUES (1, 'acct_m')".to_owned(),
        format!(
            "INSERT INTO log_entries (id, account_no, ts, api_key_id, api_key_name, \
             api_key_prefix, method, endpoint, status_code, ip_hash, duration_ms) VALUES \
             (1, 1, {ts}, 'key_b', 'B', 'pk_b', 'GET', '/v1/b', 200, {hash}, 5), \
             (2, 1, {ts} + 1, 'key_a', 'A', 'pk_a', 'POST', '/v1/a', 500, {hash}, 7), \
             (3, 1, {ts} + 2, 'key_b', 'B', 'pk_b', 'GET', '/v1/b', 200, {hash}, 9)",
            hash = match backend {
                Backend::Sqlite => "X'ab'",
                Backend::Postgres => "'\\xab'::bytea",
            }
        ),
        format!(
            "INSERT INTO usage_stats (account_no, bucket_start, api_key_id, endpoint, method, \
             status_code, request_count, error_count, total_duration_ms, max_duration_ms) \
             VALUES (1, {hour}, 'key_b', '/v1/b', 'GET', 200, 2, 0, 14, 9), \
             (1, {hour}, 'key_a', '/v1/a', 'POST', 500, 1, 1, 7, 7)"
        ),
    ];
    for statement in &statements {
        db.execute_unprepared(statement).await.expect("old rows");
    }
    if backend == Backend::Sqlite {
        db.execute_unprepared(
            "UPDATE log_id_sequence SET last_id = 3; \
             UPDATE settings SET value = '3' WHERE name = 'usage_folded_through'",
        )
        .await
        .expect("the rows are counted");
    }
    let texts = |column: &'static str, table: &'static str| {
        let db = db.clone();
        async move {
            db.query_all(sea_orm::Statement::from_string(
                db.get_database_backend(),
                format!("SELECT {column} AS v FROM {table} ORDER BY {column}"),
            ))
            .await
            .expect("texts")
            .iter()
            .map(|row| row.try_get::<String>("", "v").expect("text"))
            .collect::<Vec<_>>()
        }
    };
    let before = (
        texts("api_key_id", "log_entries").await,
        texts("api_key_id", "usage_stats").await,
        texts("endpoint", "usage_stats").await,
        texts("api_key_name || api_key_prefix", "log_entries").await,
        texts("endpoint", "log_entries").await,
    );

    Migrator::up(&db, None).await.expect("the numbers");
    let keys_of = |ids: &[&str]| {
        let filter = LogFilter {
            api_key_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            ..LogFilter::default()
        };
        let query = LogQuery::new("acct_m", filter, SortOrder::default()).expect("a query");
        let db = db.clone();
        async move {
            logs::page(&db, &query, None, 10, true)
                .await
                .expect("a page")
                .rows
                .into_iter()
                .map(|row| (row.id, row.api_key_id))
                .collect::<Vec<_>>()
        }
    };
    let b = |id: i64| (id, "key_b".to_owned());
    assert_eq!(keys_of(&[]).await, [b(3), (2, "key_a".to_owned()), b(1)]);
    assert_eq!(keys_of(&["key_b"]).await, [b(3), b(1)]);
    let by_name = LogQuery::new(
        "acct_m",
        LogFilter::default(),
        SortOrder {
            field: SortField::ApiKeyName,
            descending: false,
        },
    )
    .expect("a query");
    let labels: Vec<_> = logs::page(&db, &by_name, None, 10, false)
        .await
        .expect("a page by name")
        .rows
        .into_iter()
        .map(|row| (row.id, row.api_key_name, row.api_key_prefix))
        .collect();
    let label = |id: i64, name: &str, prefix: &str| (id, name.to_owned(), prefix.to_owned());
    assert_eq!(
        labels,
        [
            label(2, "A", "pk_a"),
            label(1, "B", "pk_b"),
            label(3, "B", "pk_b")
        ]
    );
    let stats = usage::buckets(
        &db,
        &UsageQuery {
            account_id: "acct_m".into(),
            api_key_id: None,
            start_seconds: 0,
            end_seconds: hour * 2,
            granularity: Granularity::Hour,
            group_by: vec![Dimension::ApiKey, Dimension::Endpoint],
        },
    )
    .await
    .expect("statistics");
    let stats: Vec<_> = stats
        .into_iter()
        .map(|row| {
            (
                row.api_key_id.expect("a key"),
                row.endpoint.expect("a path"),
                row.request_count,
                row.total_duration_ms,
            )
        })
        .collect();
    assert_eq!(
        stats,
        [
            ("key_a".to_owned(), "/v1/a".to_owned(), 1, 7),
            ("key_b".to_owned(), "/v1/b".to_owned(), 2, 14),
        ]
    );

    let paths = |filter: LogFilter| {
        let query = LogQuery::new(
            "acct_m",
            filter,
            SortOrder {
                field: SortField::Endpoint,
                descending: true,
            },
        )
        .expect("a query");
        let db = db.clone();
        async move {
            logs::page(&db, &query, None, 10, false)
                .await
                .expect("a page by path")
                .rows
                .into_iter()
                .map(|row| (row.id, row.endpoint))
                .collect::<Vec<_>>()
        }
    };
    let path = |id: i64, path: &str| (id, path.to_owned());
    assert_eq!(
        paths(LogFilter::default()).await,
        [path(3, "/v1/b"), path(1, "/v1/b"), path(2, "/v1/a")]
    );
    let under_a = LogFilter {
        endpoint_prefix: Some("/v1/a".into()),
        ..LogFilter::default()
    };
    assert_eq!(paths(under_a).await, [path(2, "/v1/a")]);

    Migrator::down(&db, Some(5))
        .await
        .expect("down to the texts");
    let after = (
        texts("api_key_id", "log_entries").await,
        texts("api_key_id", "usage_stats").await,
        texts("endpoint", "usage_stats").await,
        texts("api_key_name || api_key_prefix", "log_entries").await,
        texts("endpoint", "log_entries").await,
    );
    assert_eq!(after, before);
    db.close().await.ok();
    test_db.remove().await;
}

async fn reflection_lists_every_service(backend: Backend) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let Some(server) = TestServer::start(backend).await else {
        return;
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection should answer")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("a message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "reqlog.v1.IngestService",
        "reqlog.v1.LogService",
        "reqlog.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_missing_auth_file_stops_the_start() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    let mut config = test_config(&test_db.url);
    config.auth_file = Some("no-such-dir/auth.toml".into());
    let error = Application::build(&config)
        .await
        .expect_err("must not start");
    assert!(
        error.to_string().contains("no-such-dir/auth.toml"),
        "{error}"
    );
}

#[tokio::test]
async fn a_non_loopback_listen_address_is_refused_without_access_control() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    let mut config = test_config(&test_db.url);
    config.listen = "0.0.0.0:0".parse().expect("address");
    let error = Application::build(&config)
        .await
        .expect_err("must not start");
    assert!(error.to_string().contains("0.0.0.0"), "{error}");
}

#[tokio::test]
async fn an_sqlite_database_without_a_file_is_refused() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    for url in [
        "sqlite::memory:",
        "sqlite://logs.db?mode=memory&cache=shared",
        "sqlite://",
    ] {
        let mut config = test_config(&test_db.url);
        config.database_url = url.into();
        let error = Application::build(&config)
            .await
            .expect_err("must not start");
        assert!(
            error
                .to_string()
                .contains("--database-url must name an SQLite file"),
            "{url}: {error}"
        );
    }
}

#[tokio::test]
async fn an_sqlite_url_without_a_mode_creates_its_file() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    let dir = tempfile::tempdir().expect("a temporary directory should be creatable");
    let file = dir.path().join("new.db");
    let mut config = test_config(&test_db.url);
    config.database_url = format!("sqlite://{}", file.display());
    let app = Application::build(&config)
        .await
        .expect("a missing file should be created");
    let tables = app
        .database()
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Sqlite,
            "SELECT COUNT(*) AS n FROM sqlite_schema WHERE name = 'log_entries'",
        ))
        .await
        .expect("the schema should be readable")
        .expect("one row")
        .try_get::<i64>("", "n")
        .expect("a count");
    assert_eq!(tables, 1, "the new file should be migrated");
    assert!(file.exists());
}

#[tokio::test]
async fn an_sqlite_file_that_cannot_be_opened_is_named_with_its_cause() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    let dir = tempfile::tempdir().expect("a temporary directory should be creatable");
    let mut config = test_config(&test_db.url);
    for url in [
        // No such directory, whether or not the URL asks for the file to be created.
        format!("sqlite://{}/missing/new.db", dir.path().display()),
        format!("sqlite://{}/missing/new.db?mode=rwc", dir.path().display()),
        // An explicit read-write mode does not create the file.
        format!("sqlite://{}/absent.db?mode=rw", dir.path().display()),
    ] {
        config.database_url = url.clone();
        let error = Application::build(&config)
            .await
            .expect_err("must not start");
        assert!(
            error.to_string().contains("unable to open database file"),
            "{url}: {error}"
        );
    }
    assert!(!dir.path().join("absent.db").exists());
}

#[tokio::test]
async fn a_zero_checkpoint_interval_is_refused() {
    let test_db = TestDb::create(Backend::Sqlite)
        .await
        .expect("sqlite always works");
    let mut config = test_config(&test_db.url);
    config.sqlite_checkpoint_interval = Duration::ZERO;
    let error = Application::build(&config)
        .await
        .expect_err("must not start");
    assert!(
        error.to_string().contains("--sqlite-checkpoint-interval"),
        "{error}"
    );
}

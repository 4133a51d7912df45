//! Wiring: connect, migrate, bind, serve, shut down.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use reqlog_client::{MAX_MESSAGE_BYTES, pb};
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tower_http::trace::TraceLayer;

use crate::auth::{AuthFileError, AuthInterceptor, Authenticator};
use crate::config::Config;
use crate::domain::ip::{IpHasher, MIN_IP_HASH_KEY_BYTES};
use crate::domain::page_token::PageTokenKey;
use crate::domain::query::Sanitizer;
use crate::domain::record::RecordRules;
use crate::grpc::admin::AdminApi;
use crate::grpc::ingest::IngestApi;
use crate::grpc::logs::LogApi;
use crate::health::{DbMonitor, set_all};
use crate::lifecycle::Lifecycle;
use crate::shutdown::Ending;
use crate::store::sqlite::HeldSqlite;
use crate::store::writer::{Writer, WriterConfig, WriterStats};
use crate::store::{self, DbOptions, StoreError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration asks for something the server will not do.
    #[error("configuration error: {0}")]
    Config(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// The listener could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Calls were still running when the shutdown grace period ran out; they were abandoned.
    #[error("calls still running after the {0:?} shutdown grace period were abandoned")]
    GraceExpired(Duration),
    /// The auth file could not be read or is not valid.
    #[error(transparent)]
    Auth(#[from] AuthFileError),
}

/// A built server: connected, migrated and bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    db: DatabaseConnection,
    writer_db: DatabaseConnection,
    config: Config,
    tokens: PageTokenKey,
    authenticator: Arc<Authenticator>,
    ip_hasher: IpHasher,
    tls: Option<ServerTlsConfig>,
}

/// Refuses what would be a hole if accepted and ignored.
fn check_config(config: &Config) -> Result<(), AppError> {
    if config.auth_file.is_none() && !config.listen.ip().is_loopback() {
        return Err(AppError::Config(format!(
            "refusing to listen on {} without access control: use a loopback address or \
             --auth-file",
            config.listen
        )));
    }
    // Each pool (the writer's, the readers') would open a database of its own: records
    // accepted, never found, and all gone at exit.
    if config.database_url.starts_with("sqlite:")
        && store::sqlite_path(&config.database_url).is_none()
    {
        return Err(AppError::Config(
            "--database-url must name an SQLite file (e.g. sqlite://reqlog.db?mode=rwc): a \
             database in memory or without a path is private to one connection pool, and \
             reqlog reads and writes through separate pools"
                .into(),
        ));
    }
    if config.sqlite_checkpoint_interval.is_zero() {
        return Err(AppError::Config(
            "--sqlite-checkpoint-interval must be longer than 0".into(),
        ));
    }
    Ok(())
}

fn read_file(flag: &str, path: &std::path::Path) -> Result<Vec<u8>, AppError> {
    std::fs::read(path)
        .map_err(|error| AppError::Config(format!("{flag} {}: {error}", path.display())))
}

/// The TLS settings of `--tls-cert`, `--tls-key` and `--tls-client-ca`, files read now so
/// that a bad path stops the start instead of the first handshake.
fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, AppError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(read_file("--tls-cert", cert)?, read_file("--tls-key", key)?);
    let mut tls = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &config.tls_client_ca {
        // Client certificates are then required, not merely checked when offered.
        tls = tls.client_ca_root(Certificate::from_pem(read_file("--tls-client-ca", ca)?));
    }
    Ok(Some(tls))
}

fn ip_hasher(config: &Config) -> Result<IpHasher, AppError> {
    let Some(path) = &config.ip_hash_key_file else {
        return Ok(IpHasher::Plain);
    };
    IpHasher::keyed(&read_file("--ip-hash-key-file", path)?).map_err(|_| {
        AppError::Config(format!(
            "--ip-hash-key-file {} must hold at least {MIN_IP_HASH_KEY_BYTES} bytes",
            path.display()
        ))
    })
}

/// Re-reads the auth file on every SIGHUP; a bad file keeps the principals in force.
async fn reload_on_hangup(authenticator: Arc<Authenticator>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGHUP; the auth file will not be reloaded");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match authenticator.reload() {
            Ok(principals) => tracing::info!(principals, "auth file reloaded"),
            Err(error) => tracing::error!(
                %error,
                "auth file reload failed; the principals loaded before stay in force"
            ),
        }
    }
}

impl Application {
    /// Connects, migrates (unless `--no-migrate`) and binds the listener, so that
    /// `local_addr` is known before serving starts.
    pub async fn build(config: &Config) -> Result<Self, AppError> {
        check_config(config)?;
        let authenticator = Arc::new(match &config.auth_file {
            Some(path) => Authenticator::from_file(path.clone())?,
            None => Authenticator::open(),
        });
        let ip_hasher = ip_hasher(config)?;
        let tls = tls_config(config)?;
        let options = DbOptions {
            url: config.database_url.clone(),
            max_connections: config.db_max_connections,
            statement_timeout: Some(config.db_statement_timeout)
                .filter(|timeout| !timeout.is_zero()),
            sqlite_writer: false,
        };
        let db = store::connect(&options).await?;
        // The writer gets a connection of its own: on SQLite a connection that shares the
        // file with other writers must drop its page cache after each of their commits, so
        // a writer hopping between pooled connections re-reads its index pages every group.
        let writer_db = store::connect(&DbOptions {
            max_connections: 1,
            sqlite_writer: true,
            ..options
        })
        .await?;
        if !config.no_migrate {
            store::migrate(&db).await?;
        }
        let tokens = PageTokenKey::new(store::settings::page_token_key(&db).await?);
        let listener = TcpListener::bind(config.listen).await?;
        Ok(Self {
            listener,
            db,
            writer_db,
            config: config.clone(),
            tokens,
            authenticator,
            ip_hasher,
            tls,
        })
    }

    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.listen)
    }

    /// The database pool, for tests and tools that inspect what was stored.
    pub fn database(&self) -> DatabaseConnection {
        self.db.clone()
    }

    /// Serves until `shutdown` resolves, then reports NOT_SERVING, takes no new calls,
    /// drains in-flight calls, lets the writer commit and answer everything it accepted,
    /// and closes the database. Exports still running halfway through `--shutdown-grace`
    /// end with UNAVAILABLE; anything still running when it is over is abandoned
    /// ([`AppError::GraceExpired`]).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        self.serve(shutdown, |_| {}).await
    }

    /// As `run_until_stopped`, handing the writer's counters to `observe` once it runs.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        observe: impl FnOnce(Arc<WriterStats>),
    ) -> Result<(), AppError> {
        let Self {
            listener,
            db,
            writer_db,
            config,
            tokens,
            authenticator,
            ip_hasher,
            tls,
        } = self;
        let available = Arc::new(AtomicBool::new(true));
        // SQLite: ingest groups, purge and sweep steps and the indexer's chunks run on a
        // connection the writer holds (store::sqlite).
        let held = match store::sqlite::file(&writer_db).await? {
            Some(file) => Some(HeldSqlite::open(file).await?),
            None => None,
        };
        let (writer, writer_task) = Writer::spawn(
            writer_db.clone(),
            held,
            WriterConfig {
                max_group_rows: config.max_group_rows as usize,
                queue_records: config.ingest_queue_records as usize,
                enqueue_wait: config.ingest_queue_wait,
                ..WriterConfig::default()
            },
            Arc::clone(&available),
        );
        observe(writer.stats_handle());

        let (reporter, health_service) = tonic_health::server::health_reporter();
        set_all(&reporter, ServingStatus::Serving).await;
        let monitor: JoinHandle<()> = tokio::spawn(
            DbMonitor::new(
                db.clone(),
                &config.database_url,
                reporter.clone(),
                available,
                config.health_check_interval,
            )
            .run(),
        );

        let checkpointer = tokio::spawn(store::checkpoint_forever(
            db.clone(),
            writer.clone(),
            config.sqlite_checkpoint_interval,
            config.sqlite_wal_restart_frames,
        ));
        let analyzer = tokio::spawn(store::analyze::analyze_forever(
            db.clone(),
            store::analyze::CHECK_INTERVAL,
        ));
        // Copies new rows into the search index off the ingest path, and (SQLite) drops
        // deleted rows' postings once no purge or sweep is running.
        let deletes = store::search::DeletesRunning::default();
        let search_indexer = tokio::spawn(store::search::index_forever(
            db.clone(),
            writer.clone(),
            std::time::Duration::from_secs(1),
            deletes.clone(),
        ));

        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let rules = Arc::new(RecordRules {
            sanitizer: match &config.redact_params {
                Some(names) => Sanitizer::new(names.iter().map(String::as_str)),
                None => Sanitizer::default(),
            },
            ip_hasher: ip_hasher.clone(),
        });
        // Fired when the shutdown begins: starts the grace period's clock, and stops purges
        // and sweeps after the batch in hand.
        let (stopping, mut grace_clock) = Ending::new();
        let lifecycle = Lifecycle::new(
            db.clone(),
            writer.clone(),
            config.default_plan,
            config.delete_batch_rows,
            grace_clock.clone(),
            deletes,
        );
        let sweeper = (!config.sweep_interval.is_zero())
            .then(|| tokio::spawn(lifecycle.clone().run_periodic(config.sweep_interval)));
        let admin = AdminApi::new(writer.clone(), lifecycle);
        let ingest = IngestApi::new(rules, writer, config.max_batch_size as usize);
        let (end_exports, ending) = Ending::new();
        let logs = LogApi::new(db.clone(), tokens, ip_hasher, ending);
        let reloader = authenticator
            .is_enforcing()
            .then(|| tokio::spawn(reload_on_hangup(Arc::clone(&authenticator))));
        // Health and reflection stay outside: probes and tools need no token.
        let guard = AuthInterceptor::new(authenticator);

        let shutdown_reporter = reporter.clone();
        let grace = config.shutdown_grace;
        let shutdown = async move {
            shutdown.await;
            tracing::info!(?grace, "shutting down: not serving, draining calls");
            stopping.fire();
            set_all(&shutdown_reporter, ServingStatus::NotServing).await;
        };
        let grace_over = async move {
            grace_clock.fired().await;
            tokio::time::sleep(grace / 2).await;
            end_exports.fire();
            tokio::time::sleep(grace - grace / 2).await;
        };

        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        if !config.request_timeout.is_zero() {
            builder = builder.timeout(config.request_timeout);
        }
        let server = builder
            .layer(TraceLayer::new_for_grpc())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(InterceptedService::new(
                pb::ingest_service_server::IngestServiceServer::new(ingest)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                guard.clone(),
            ))
            .add_service(InterceptedService::new(
                pb::log_service_server::LogServiceServer::new(logs)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                guard.clone(),
            ))
            .add_service(InterceptedService::new(
                pb::admin_service_server::AdminServiceServer::new(admin)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
                guard,
            ))
            // Without TCP_NODELAY a small response can wait ~40 ms for a delayed ACK.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            );
        // Aborted again after the drain, in case the grace period cut the drain short.
        let search_indexer_abort = search_indexer.abort_handle();
        let checkpointer_abort = checkpointer.abort_handle();
        let drain = async move {
            server.await?;
            // The services (and with them every writer handle) are dropped: the writer
            // drains its queue, answers, and ends. The sweeper, the search indexer and the
            // checkpointer hold handles too: stop them first. The sweeper (like a purge or
            // sweep a caller left running) ends by itself: it saw the shutdown begin and
            // records what it did.
            if let Some(sweeper) = sweeper {
                let _ = sweeper.await;
            }
            search_indexer.abort();
            let _ = search_indexer.await;
            checkpointer.abort();
            let _ = checkpointer.await;
            if let Err(error) = writer_task.await {
                tracing::error!(%error, "writer task failed");
            }
            Ok::<_, AppError>(())
        };
        let drained = tokio::select! {
            result = drain => result,
            () = grace_over => {
                // Dropping the drain drops the writer's handle, not its task. PostgreSQL's
                // writer (a task) dies with the runtime, mid-transaction at worst, which the
                // database rolls back. SQLite's runs on a blocking thread, which the
                // runtime's drop waits for: it commits what is still queued once the
                // handlers holding its handles are dropped (callers gone; a resend finds
                // the rows).
                tracing::error!(?grace, "shutdown grace period over: abandoning running calls");
                Err(AppError::GraceExpired(grace))
            }
        };
        monitor.abort();
        analyzer.abort();
        checkpointer_abort.abort();
        search_indexer_abort.abort();
        if let Some(reloader) = reloader {
            reloader.abort();
        }
        drained?;
        writer_db.close().await.map_err(StoreError::from)?;
        db.close().await.map_err(StoreError::from)?;
        tracing::info!("stopped");
        Ok(())
    }
}

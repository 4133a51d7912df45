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
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::domain::page_token::PageTokenKey;
use crate::domain::query::Sanitizer;
use crate::domain::record::RecordRules;
use crate::grpc::admin::AdminApi;
use crate::grpc::ingest::IngestApi;
use crate::grpc::logs::LogApi;
use crate::health::{DbMonitor, set_all};
use crate::lifecycle::Lifecycle;
use crate::shutdown::Ending;
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
}

/// A built server: connected, migrated and bound, not yet serving.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    db: DatabaseConnection,
    writer_db: DatabaseConnection,
    config: Config,
    tokens: PageTokenKey,
}

/// Refuses what would be a hole if accepted and ignored.
fn check_config(config: &Config) -> Result<(), AppError> {
    if config.auth_file.is_some() {
        return Err(AppError::Config(
            "--auth-file is not supported yet (access control has not landed); refusing to \
             start rather than ignore it"
                .into(),
        ));
    }
    if !config.listen.ip().is_loopback() {
        return Err(AppError::Config(format!(
            "refusing to listen on {} without access control: use a loopback address",
            config.listen
        )));
    }
    Ok(())
}

impl Application {
    /// Connects, migrates (unless `--no-migrate`) and binds the listener, so that
    /// `local_addr` is known before serving starts.
    pub async fn build(config: &Config) -> Result<Self, AppError> {
        check_config(config)?;
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
        } = self;
        let available = Arc::new(AtomicBool::new(true));
        let (writer, writer_task) = Writer::spawn(
            writer_db.clone(),
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
            std::time::Duration::from_millis(500),
        ));
        // PostgreSQL: copies new rows into the search index off the ingest path.
        let search_indexer = tokio::spawn(store::search::index_forever(
            db.clone(),
            std::time::Duration::from_secs(1),
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
        });
        let lifecycle = Lifecycle::new(
            db.clone(),
            writer.clone(),
            config.default_plan,
            config.delete_batch_rows,
        );
        let sweeper = (!config.sweep_interval.is_zero())
            .then(|| tokio::spawn(lifecycle.clone().run_periodic(config.sweep_interval)));
        let admin = AdminApi::new(writer.clone(), lifecycle);
        let ingest = IngestApi::new(rules, writer, config.max_batch_size as usize);
        let (end_exports, ending) = Ending::new();
        let logs = LogApi::new(db.clone(), tokens, ending);

        // Fired when the shutdown begins: starts the grace period's clock.
        let (stopping, mut grace_clock) = Ending::new();
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

        let server = Server::builder()
            .layer(TraceLayer::new_for_grpc())
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_alpha)
            .add_service(
                pb::ingest_service_server::IngestServiceServer::new(ingest)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(
                pb::log_service_server::LogServiceServer::new(logs)
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
            .add_service(pb::admin_service_server::AdminServiceServer::new(admin))
            // Without TCP_NODELAY a small response can wait ~40 ms for a delayed ACK.
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                shutdown,
            );
        let drain = async move {
            server.await?;
            // The services (and with them every writer handle) are dropped: the writer
            // drains its queue, answers, and ends. The sweeper holds a handle too: stop it
            // first.
            if let Some(sweeper) = sweeper {
                sweeper.abort();
                let _ = sweeper.await;
            }
            if let Err(error) = writer_task.await {
                tracing::error!(%error, "writer task failed");
            }
            Ok::<_, AppError>(())
        };
        let drained = tokio::select! {
            result = drain => result,
            () = grace_over => {
                // Dropping the drain drops the writer's handle, not its task: it dies with
                // the process, mid-transaction at worst, which the database rolls back.
                tracing::error!(?grace, "shutdown grace period over: abandoning running calls");
                Err(AppError::GraceExpired(grace))
            }
        };
        monitor.abort();
        checkpointer.abort();
        search_indexer.abort();
        drained?;
        writer_db.close().await.map_err(StoreError::from)?;
        db.close().await.map_err(StoreError::from)?;
        tracing::info!("stopped");
        Ok(())
    }
}

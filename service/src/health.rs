//! Database health: `grpc.health.v1` turns NOT_SERVING while the database cannot be reached,
//! and ingest fails fast (UNAVAILABLE) instead of acknowledging what it cannot keep.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqlog_client::pb;
use sea_orm::DatabaseConnection;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store;

/// Every name the health service answers for: the overall status ("") and each service.
pub const SERVICE_NAMES: [&str; 4] = [
    "",
    pb::ingest_service_server::SERVICE_NAME,
    pb::log_service_server::SERVICE_NAME,
    pb::admin_service_server::SERVICE_NAME,
];

/// Sets every name to one status, so the overall and per-service statuses change together.
pub async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in SERVICE_NAMES {
        reporter.set_service_status(name, status).await;
    }
}

/// Watches the database and reports its state.
#[derive(Debug)]
pub struct DbMonitor {
    db: DatabaseConnection,
    reporter: HealthReporter,
    available: Arc<AtomicBool>,
    interval: Duration,
    /// SQLite only: the file and the (device, inode) it had at start. A file that was
    /// removed or replaced would take acknowledged writes into an unlinked inode.
    sqlite_file: Option<(PathBuf, (u64, u64))>,
}

fn file_identity(path: &PathBuf) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}

impl DbMonitor {
    /// A monitor of `db`; `available` is shared with the writer.
    pub fn new(
        db: DatabaseConnection,
        database_url: &str,
        reporter: HealthReporter,
        available: Arc<AtomicBool>,
        interval: Duration,
    ) -> Self {
        let sqlite_file = store::sqlite_path(database_url)
            .and_then(|path| file_identity(&path).map(|identity| (path, identity)));
        Self {
            db,
            reporter,
            available,
            interval,
            sqlite_file,
        }
    }

    async fn healthy(&self) -> bool {
        if let Some((path, identity)) = &self.sqlite_file
            && file_identity(path) != Some(*identity)
        {
            return false;
        }
        let limit = self.interval.max(Duration::from_secs(1));
        matches!(
            tokio::time::timeout(limit, store::ping(&self.db)).await,
            Ok(Ok(()))
        )
    }

    /// Checks forever, every `interval`; reports only changes.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let healthy = self.healthy().await;
            if self.available.swap(healthy, Ordering::AcqRel) == healthy {
                continue;
            }
            if healthy {
                tracing::info!("database reachable again, serving");
                set_all(&self.reporter, ServingStatus::Serving).await;
            } else {
                tracing::warn!("database unreachable, not serving");
                set_all(&self.reporter, ServingStatus::NotServing).await;
            }
        }
    }
}

//! Command line and environment configuration: flag > `REQLOG_*` variable > default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::lifecycle::Plan;

/// `reqlog`: the request-log service.
#[derive(Debug, Parser)]
#[command(name = "reqlog", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The `reqlog` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the gRPC server.
    Serve(Box<Config>),
    /// Reads a token from standard input and prints its `token_sha256` for the auth file.
    HashToken,
    /// Lists an account's logs as a table (or JSON lines).
    Logs(Box<crate::cli::LogsArgs>),
    /// Exports an account's logs (CSV, JSON, NDJSON) to a file or stdout.
    Export(Box<crate::cli::ExportArgs>),
    /// Deletes every row of an API key and marks it deleted (statistics stay).
    Purge(crate::cli::PurgeArgs),
    /// Runs the retention sweep now, for one account or all.
    Sweep(crate::cli::SweepArgs),
    /// Sets an account's plan and retention window (or previews it).
    Plan(crate::cli::PlanArgs),
    /// Prints an account's usage statistics.
    Stats(Box<crate::cli::StatsArgs>),
    /// Prints the ip_hash reqlog stores for an IP address (computed locally).
    HashIp(crate::cli::HashIpArgs),
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

/// Everything `reqlog serve` is configured with.
#[derive(Clone, Args)]
pub struct Config {
    /// Socket address to bind; port 0 picks a free port.
    #[arg(long, env = "REQLOG_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// `sqlite://reqlog.db?mode=rwc` (the default: a file in the working directory, created
    /// if missing) or `postgres://user:password@host/db`.
    #[arg(
        long,
        env = "REQLOG_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://reqlog.db?mode=rwc"
    )]
    pub database_url: String,

    /// TOML file of bearer-token principals (`[[principal]]` name, token_sha256, role,
    /// accounts); re-read on SIGHUP. Without it every call is allowed and only a loopback
    /// `--listen` is accepted.
    #[arg(long, env = "REQLOG_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// PEM certificate chain for TLS; with `--tls-key`, the server speaks only TLS.
    #[arg(long, env = "REQLOG_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "REQLOG_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "REQLOG_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File holding a secret key (at least 32 bytes, e.g. `openssl rand -hex 32`): `ip_hash`
    /// becomes HMAC-SHA256 under it instead of plain SHA-256.
    #[arg(long, env = "REQLOG_IP_HASH_KEY_FILE")]
    pub ip_hash_key_file: Option<PathBuf>,

    /// Longest a unary call (or the start of a stream) may take on the server before it is
    /// answered CANCELLED, e.g. `30s`; a shorter `grpc-timeout` from the client wins. `0`
    /// turns the server's own deadline off.
    #[arg(long, env = "REQLOG_REQUEST_TIMEOUT", default_value = "60s",
          value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Leave migrations to an operator (`reqlog-migrate up`) instead of applying them at start.
    #[arg(long, env = "REQLOG_NO_MIGRATE")]
    pub no_migrate: bool,

    /// Most records one `RecordRequests` call may carry.
    #[arg(long, env = "REQLOG_MAX_BATCH_SIZE", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_batch_size: u32,

    /// Most records one group commit writes; more waiting records go into the next one.
    #[arg(long, env = "REQLOG_MAX_GROUP_ROWS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_group_rows: u32,

    /// Records that may wait for the writer at once (queued or committing). When the
    /// database falls behind and the queue is full, ingest calls wait at most
    /// `--ingest-queue-wait` for room, then fail with RESOURCE_EXHAUSTED and retry advice.
    #[arg(long, env = "REQLOG_INGEST_QUEUE_RECORDS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub ingest_queue_records: u32,

    /// How long an ingest call waits for room in a full queue, e.g. `100ms`, `1s`.
    #[arg(long, env = "REQLOG_INGEST_QUEUE_WAIT", default_value = "100ms",
          value_parser = parse_duration)]
    pub ingest_queue_wait: Duration,

    /// After SIGTERM or SIGINT: how long running calls get to finish (exports get half of
    /// it, then end with UNAVAILABLE). Whatever still runs then is abandoned and reqlog
    /// exits with status 1; acknowledged records are committed already and never lost.
    #[arg(long, env = "REQLOG_SHUTDOWN_GRACE", default_value = "30s",
          value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Query parameters whose values are redacted before storage (comma-separated,
    /// case-insensitive); replaces the built-in list.
    #[arg(long, env = "REQLOG_REDACT_PARAMS", value_delimiter = ',')]
    pub redact_params: Option<Vec<String>>,

    /// Database connections in the pool.
    #[arg(long, env = "REQLOG_DB_MAX_CONNECTIONS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// PostgreSQL only: the longest one statement may run before the server cancels it
    /// (`statement_timeout` on every connection), e.g. `30s`, `2m`; `0` leaves the server's
    /// own setting. Ignored for SQLite.
    #[arg(long, env = "REQLOG_DB_STATEMENT_TIMEOUT", default_value = "30s",
          value_parser = parse_duration)]
    pub db_statement_timeout: Duration,

    /// How often the database is checked for the health service, e.g. `1s`, `500ms`.
    #[arg(long, env = "REQLOG_HEALTH_CHECK_INTERVAL", default_value = "1s",
          value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// How often the retention sweep runs by itself, e.g. `1h`, `30m`; `0` turns it off (the
    /// RunRetentionSweep RPC still works).
    #[arg(long, env = "REQLOG_SWEEP_INTERVAL", default_value = "1h", value_parser = parse_duration)]
    pub sweep_interval: Duration,

    /// The plan of accounts never given one by SetAccountPlan.
    #[arg(long, env = "REQLOG_DEFAULT_PLAN", value_enum, default_value_t = Plan::Free)]
    pub default_plan: Plan,

    /// Rows one purge or sweep transaction deletes. SQLite: ingest runs between batches (with
    /// 5,000, ingest p99 during a 1M-row sweep was 361 ms; with 1,000, 123 ms). PostgreSQL:
    /// batches run beside ingest; smaller ones hold row locks for less time.
    #[arg(long, env = "REQLOG_DELETE_BATCH_ROWS", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub delete_batch_rows: u64,

    /// SQLite only: WAL frames (pages) past which the checkpointer copies the last ones on
    /// the writer, between two groups, so that the WAL starts over instead of growing (a
    /// checkpoint beside a busy writer never catches up: 1.1 GB of WAL after 300k rows).
    /// Every caller waits for that step, so it should be rare: 32,768 pages (128 MiB) made
    /// unary ingest's p99 24–27 ms where 4,096 made it 38–39 ms.
    #[arg(long, env = "REQLOG_SQLITE_WAL_RESTART_FRAMES", default_value_t = 32_768,
          value_parser = clap::value_parser!(i64).range(1..=10_000_000))]
    pub sqlite_wal_restart_frames: i64,

    /// SQLite only: how often committed WAL frames are copied into the database file,
    /// beside the writer (a checkpoint inside a commit would stall its whole group).
    #[arg(long, env = "REQLOG_SQLITE_CHECKPOINT_INTERVAL", default_value = "500ms",
          value_parser = parse_duration)]
    pub sqlite_checkpoint_interval: Duration,

    /// Log format on stderr; the level comes from `RUST_LOG`.
    #[arg(long, env = "REQLOG_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn with_database_url(database_url: impl Into<String>) -> Self {
        /// `reqlog serve`'s flags alone, so the defaults come from one place: clap.
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let mut config = Defaults::parse_from(["reqlog"]).config;
        config.database_url = database_url.into();
        config
    }
}

// Written by hand so the database URL's password never reaches a log line.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("auth_file", &self.auth_file)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_client_ca", &self.tls_client_ca)
            .field("ip_hash_key_file", &self.ip_hash_key_file)
            .field("request_timeout", &self.request_timeout)
            .field("no_migrate", &self.no_migrate)
            .field("max_batch_size", &self.max_batch_size)
            .field("max_group_rows", &self.max_group_rows)
            .field("ingest_queue_records", &self.ingest_queue_records)
            .field("ingest_queue_wait", &self.ingest_queue_wait)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("redact_params", &self.redact_params)
            .field("db_max_connections", &self.db_max_connections)
            .field("db_statement_timeout", &self.db_statement_timeout)
            .field("health_check_interval", &self.health_check_interval)
            .field("sweep_interval", &self.sweep_interval)
            .field("default_plan", &self.default_plan)
            .field("delete_batch_rows", &self.delete_batch_rows)
            .field("sqlite_wal_restart_frames", &self.sqlite_wal_restart_frames)
            .field(
                "sqlite_checkpoint_interval",
                &self.sqlite_checkpoint_interval,
            )
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Parses `250ms`, `5s`, `10m`, `1h` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 5s, 10m or 1h"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(value)),
        "" if value == 0 => 0,
        "s" => value,
        "m" => value * 60,
        "h" => value * 3_600,
        "d" => value * 86_400,
        _ => return Err(format!("`{text}` has no unit: use ms, s, m, h or d")),
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3_600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/logs"),
            "postgres://app:***@db:5432/logs"
        );
        assert_eq!(
            redact_url("sqlite://reqlog.db?mode=rwc"),
            "sqlite://reqlog.db?mode=rwc"
        );
    }

    #[test]
    fn the_statement_timeout_defaults_to_30s_and_0_turns_it_off() {
        let config = Config::with_database_url("postgres://db/logs");
        assert_eq!(config.db_statement_timeout, Duration::from_secs(30));
        let cli = Cli::try_parse_from(["reqlog", "serve", "--db-statement-timeout", "0"])
            .expect("0 is a valid timeout");
        let Command::Serve(serve) = cli.command else {
            panic!("serve was parsed");
        };
        assert_eq!(serve.db_statement_timeout, Duration::ZERO);
        assert!(Cli::try_parse_from(["reqlog", "serve", "--db-statement-timeout", "30"]).is_err());
    }

    #[test]
    fn debug_output_hides_the_password() {
        let config = Config::with_database_url("postgres://app:hunter2@db/logs");
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

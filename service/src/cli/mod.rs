//! The operator commands of the `reqlog` binary (`logs`, `export`, `purge`, `sweep`,
//! `plan`, `stats`, `hash-ip`): thin wrappers over the SDK in `reqlog-client`.
//!
//! Each command prints its result on stdout; an error is one line on stderr and exit
//! code 1 (2 for bad usage, from clap).

mod admin;
mod export;
mod logs;
mod style;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use reqlog_client::{ClientError, LogQuery, ReqlogClient, TlsOptions, pb};

use crate::config::{Command, parse_duration};

pub use admin::{HashIpArgs, PlanArgs, PurgeArgs, StatsArgs, SweepArgs};
pub use export::ExportArgs;
pub use logs::LogsArgs;

/// Where the server is and how to reach it: on every client subcommand.
#[derive(Debug, Clone, Args)]
pub struct Connect {
    /// The reqlog server, e.g. `http://127.0.0.1:50051` or `https://reqlog.internal`.
    #[arg(long, env = "REQLOG_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// Bearer token sent with every call.
    #[arg(long, env = "REQLOG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Deadline of each call (an export: of the whole stream), e.g. `30s`, `5m`.
    #[arg(long, env = "REQLOG_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// CA certificate (PEM) that signed an `https://` server's certificate.
    #[arg(long, env = "REQLOG_CA_CERT")]
    pub ca_cert: Option<PathBuf>,

    /// Client certificate (PEM) for mutual TLS; needs --client-key.
    #[arg(long, env = "REQLOG_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Client private key (PEM) for mutual TLS; needs --client-cert.
    #[arg(long, env = "REQLOG_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Why a command failed; printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A call to the server failed.
    #[error("{}", describe(.0))]
    Client(#[from] ClientError),
    /// A flag's value is unusable.
    #[error("{0}")]
    Usage(String),
    /// Reading or writing a local file failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

/// One line for a client error: the gRPC code and message (never tonic's metadata dump),
/// the fields at fault, and the causes of a transport error.
fn describe(error: &ClientError) -> String {
    match error {
        ClientError::Rpc(status) => format!("{:?}: {}", status.code(), status.message()),
        ClientError::InvalidArgument {
            message,
            violations,
        } if !violations.is_empty() => {
            let fields: Vec<String> = violations
                .iter()
                .map(|v| format!("{}: {}", v.field, v.reason))
                .collect();
            format!("invalid argument: {message} ({})", fields.join("; "))
        }
        other => {
            let mut line = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !line.ends_with(&text) {
                    line.push_str(": ");
                    line.push_str(&text);
                }
                source = cause.source();
            }
            line
        }
    }
}

/// Runs one operator command; the exit code says whether it worked.
pub async fn run(command: Command) -> ExitCode {
    let result = match command {
        // Dispatched by main; listed so the match stays exhaustive.
        Command::Serve(_) | Command::HashToken => {
            Err(CliError::Usage("not a client command".into()))
        }
        Command::Logs(args) => logs::run(*args).await,
        Command::Export(args) => export::run(*args).await,
        Command::Purge(args) => admin::purge(args).await,
        Command::Sweep(args) => admin::sweep(args).await,
        Command::Plan(args) => admin::plan(args).await,
        Command::Stats(args) => admin::stats(*args).await,
        Command::HashIp(args) => admin::hash_ip(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reqlog: {error}");
            ExitCode::FAILURE
        }
    }
}

impl Connect {
    /// A client for these options; connects lazily, so the first call reports an
    /// unreachable server.
    pub fn client(&self) -> Result<ReqlogClient, CliError> {
        let mut builder = ReqlogClient::builder(self.server.clone())
            .timeout(self.timeout)
            .connect_timeout(Duration::from_secs(10));
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        if self.ca_cert.is_some() || self.client_cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(path) = &self.ca_cert {
                tls = tls.ca_certificate_pem(read(path, "CA certificate")?);
            }
            if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
                tls = tls.identity_pem(read(cert, "client certificate")?, read(key, "client key")?);
            }
            builder = builder.tls(tls);
        }
        Ok(builder.connect_lazy()?)
    }
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Io {
        context: format!("cannot read the {what} {}", path.display()),
        source,
    })
}

/// A status class on the command line: `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusClassArg {
    /// 100-199.
    #[value(name = "1xx")]
    C1xx,
    /// 200-299.
    #[value(name = "2xx")]
    C2xx,
    /// 300-399.
    #[value(name = "3xx")]
    C3xx,
    /// 400-499.
    #[value(name = "4xx")]
    C4xx,
    /// 500-599.
    #[value(name = "5xx")]
    C5xx,
}

impl StatusClassArg {
    fn to_pb(self) -> pb::StatusClass {
        match self {
            Self::C1xx => pb::StatusClass::StatusClass1xx,
            Self::C2xx => pb::StatusClass::StatusClass2xx,
            Self::C3xx => pb::StatusClass::StatusClass3xx,
            Self::C4xx => pb::StatusClass::StatusClass4xx,
            Self::C5xx => pb::StatusClass::StatusClass5xx,
        }
    }
}

/// A sort field on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SortField {
    /// When the request happened (the default, newest first).
    Timestamp,
    /// The key's name.
    KeyName,
    /// The key's prefix.
    KeyPrefix,
    /// The HTTP method.
    Method,
    /// The path.
    Endpoint,
    /// The (sanitized) query string.
    Params,
    /// The HTTP status.
    Status,
    /// The error code.
    ErrorCode,
    /// The IP hash.
    IpHash,
    /// The latency.
    Duration,
}

impl SortField {
    fn to_pb(self) -> pb::LogField {
        match self {
            Self::Timestamp => pb::LogField::Timestamp,
            Self::KeyName => pb::LogField::ApiKeyName,
            Self::KeyPrefix => pb::LogField::ApiKeyPrefix,
            Self::Method => pb::LogField::Method,
            Self::Endpoint => pb::LogField::Endpoint,
            Self::Params => pb::LogField::QueryParams,
            Self::Status => pb::LogField::StatusCode,
            Self::ErrorCode => pb::LogField::ErrorCode,
            Self::IpHash => pb::LogField::IpHash,
            Self::Duration => pb::LogField::DurationMs,
        }
    }
}

/// The filter and order flags shared by `logs` and `export`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// The account whose logs to read.
    pub account_id: String,

    /// Case-insensitive substring over key name and prefix, method, endpoint, params,
    /// status, error code and IP hash.
    #[arg(long, short = 's')]
    pub search: Option<String>,

    /// Only this API key id (repeatable).
    #[arg(long = "key", value_name = "API_KEY_ID")]
    pub keys: Vec<String>,

    /// Only this HTTP method (repeatable).
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,

    /// Only this HTTP status (repeatable).
    #[arg(long = "status", value_name = "CODE")]
    pub statuses: Vec<i32>,

    /// Only this status class (repeatable): 1xx, 2xx, 3xx, 4xx, 5xx.
    #[arg(long = "class", value_name = "CLASS", value_enum)]
    pub classes: Vec<StatusClassArg>,

    /// Only this error code (repeatable).
    #[arg(long = "error-code", value_name = "CODE")]
    pub error_codes: Vec<String>,

    /// Only requests from this IP (hashed here; the raw IP is never sent).
    #[arg(long, conflicts_with = "ip_hash")]
    pub ip: Option<String>,

    /// Only IP hashes starting with this hex.
    #[arg(long)]
    pub ip_hash: Option<String>,

    /// Only endpoints starting with this path.
    #[arg(long)]
    pub endpoint: Option<String>,

    /// From this time (inclusive): RFC 3339 (`2026-03-06T12:00:00Z`) or an age (`90m`, `2d`).
    #[arg(long)]
    pub since: Option<String>,

    /// Until this time (exclusive): RFC 3339 or an age.
    #[arg(long)]
    pub until: Option<String>,

    /// Sort by this field.
    #[arg(long, value_enum)]
    pub sort: Option<SortField>,

    /// Sort ascending (the default is descending).
    #[arg(long)]
    pub asc: bool,
}

impl FilterArgs {
    /// The SDK query these flags describe.
    pub fn query(&self) -> Result<LogQuery, CliError> {
        let mut query = LogQuery::new(self.account_id.clone());
        if let Some(search) = &self.search {
            query = query.search(search.clone());
        }
        for key in &self.keys {
            query = query.api_key(key.clone());
        }
        for method in &self.methods {
            query = query.method(method.clone());
        }
        for status in &self.statuses {
            query = query.status(*status);
        }
        for class in &self.classes {
            query = query.status_class(class.to_pb());
        }
        for code in &self.error_codes {
            query = query.error_code(code.clone());
        }
        if let Some(ip) = &self.ip {
            let hash = reqlog_client::hash_ip(ip)
                .map_err(|_| CliError::Usage("--ip is not an IP address".into()))?;
            query = query.ip_hash_prefix(hash);
        }
        if let Some(prefix) = &self.ip_hash {
            query = query.ip_hash_prefix(prefix.clone());
        }
        if let Some(prefix) = &self.endpoint {
            query = query.endpoint_prefix(prefix.clone());
        }
        if let Some(since) = &self.since {
            query = query.since(time::parse_time(since, "--since")?);
        }
        if let Some(until) = &self.until {
            query = query.until(time::parse_time(until, "--until")?);
        }
        if self.sort.is_some() || self.asc {
            let field = self.sort.unwrap_or(SortField::Timestamp);
            query = query.order_by(field.to_pb(), !self.asc);
        }
        Ok(query)
    }
}

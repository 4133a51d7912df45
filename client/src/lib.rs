//! Typed client for reqlog, the request-log service.
//!
//! [`ReqlogClient`] covers what gateways and consoles call most; the generated clients in
//! [`pb`] reach every RPC.
//!
//! ```no_run
//! # async fn example() -> Result<(), reqlog_client::ClientError> {
//! use reqlog_client::{pb, ReqlogClient};
//!
//! let client = ReqlogClient::connect("http://127.0.0.1:50051").await?;
//! let outcome = client
//!     .record(pb::RequestRecord {
//!         account_id: "acct_1".into(),
//!         api_key_id: "key_1".into(),
//!         method: "GET".into(),
//!         endpoint: "/v1/models".into(),
//!         status_code: 200,
//!         ..Default::default()
//!     })
//!     .await?;
//! println!("stored as {}", outcome.id);
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// Generated protobuf types and gRPC clients (and, with the `server` feature, server stubs).
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("reqlog.v1");

    /// The encoded descriptors of every reqlog proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("reqlog_descriptor");
}

pub use prost_types;

mod builder;
mod export;
mod ip;
#[cfg(feature = "tower")]
mod layer;
mod query;
mod recorder;

pub use builder::ClientBuilder;
#[cfg(feature = "tls")]
pub use builder::TlsOptions;
pub use ip::{InvalidIp, hash_ip};
#[cfg(feature = "tower")]
pub use layer::{ApiKeyIdentity, ClientIp, RecorderLayer, RecorderService};
pub use query::{LogQuery, LogStream};
pub use recorder::{Overflow, RecordError, Recorder, RecorderConfig, RecorderStats};

use pb::admin_service_client::AdminServiceClient;
use pb::ingest_service_client::IngestServiceClient;
use pb::log_service_client::LogServiceClient;

/// The largest message the client sends or accepts: the server's own limit.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// One field that failed validation, as the server named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field's name, e.g. `record.client_ip`.
    pub field: String,
    /// Why the value was refused.
    pub reason: String,
}

/// An error from a reqlog call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request's content; `violations` names the fields.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server's message.
        message: String,
        /// The fields at fault.
        violations: Vec<FieldViolation>,
    },
    /// The operation is not allowed in the current state (e.g. a purged key).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// What was asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The server or its database cannot serve now; the call may be retried.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other gRPC status.
    #[error("rpc failed: {0}")]
    Rpc(Box<Status>),
    /// The bearer token cannot be sent as gRPC metadata (it holds characters outside
    /// visible ASCII). The token itself is never part of the message.
    #[error("invalid token: it must be visible ASCII")]
    InvalidToken,
    /// The connection could not be set up.
    #[error("transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// An export stream ended before its summary: the file written is incomplete.
    #[error("export truncated after {received_bytes} bytes: no summary arrived")]
    ExportTruncated {
        /// Bytes received (and written) before the stream ended.
        received_bytes: u64,
    },
    /// An export's bytes do not match its summary: the file written is not the export.
    #[error(
        "export does not match its summary: {received_bytes} bytes with sha256 \
         {received_sha256}, expected {expected_bytes} bytes with sha256 {expected_sha256}"
    )]
    ExportMismatch {
        /// The summary's byte count.
        expected_bytes: i64,
        /// The summary's SHA-256.
        expected_sha256: String,
        /// Bytes received.
        received_bytes: u64,
        /// SHA-256 of the bytes received.
        received_sha256: String,
    },
    /// Writing an export to its destination failed.
    #[error("export write failed: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// Whether the same call may succeed when sent again unchanged.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Rpc(status) => matches!(
                status.code(),
                Code::ResourceExhausted | Code::DeadlineExceeded | Code::Aborted
            ),
            _ => false,
        }
    }
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument => {
                let violations = status
                    .get_details_bad_request()
                    .map(|bad_request| {
                        bad_request
                            .field_violations
                            .into_iter()
                            .map(|violation| FieldViolation {
                                field: violation.field,
                                reason: violation.description,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Self::InvalidArgument {
                    message,
                    violations,
                }
            }
            Code::FailedPrecondition => Self::FailedPrecondition(message),
            Code::NotFound => Self::NotFound(message),
            Code::Unavailable => Self::Unavailable(message),
            _ => Self::Rpc(Box::new(status)),
        }
    }
}

/// Where one recorded request was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOutcome {
    /// The stored row's id (for a duplicate, the row stored first).
    pub id: String,
    /// True when the same `request_id` had already been stored.
    pub duplicate: bool,
}

/// The generated clients' transport: the channel plus [`CallOptions`] on every call.
pub type AuthChannel = InterceptedService<Channel, CallOptions>;

/// What [`ReqlogClient`] adds to every call: the bearer token and the call's deadline.
///
/// Applied by an interceptor, so the generated clients from [`ReqlogClient::ingest`],
/// [`ReqlogClient::logs`] and [`ReqlogClient::admin`] carry them too.
#[derive(Clone, Default)]
pub struct CallOptions {
    authorization: Option<AsciiMetadataValue>,
    timeout: Option<Duration>,
}

// Written by hand: the token must never reach a log line.
impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "Bearer ***"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CallOptions {
    /// Options sending `token` as `authorization: Bearer <token>`.
    pub fn with_token(token: &str) -> Result<Self, ClientError> {
        let mut value: AsciiMetadataValue = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidToken)?;
        value.set_sensitive(true);
        Ok(Self {
            authorization: Some(value),
            timeout: None,
        })
    }
}

impl Interceptor for CallOptions {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        // Sent as `grpc-timeout`: tonic's channel enforces it here and the server sees it.
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        Ok(request)
    }
}

/// A connection to a reqlog server; cheap to clone, and every clone shares the connection.
///
/// ```no_run
/// # async fn example() -> Result<(), reqlog_client::ClientError> {
/// use std::time::Duration;
/// use reqlog_client::ReqlogClient;
///
/// let client = ReqlogClient::builder("http://127.0.0.1:50051")
///     .token("s3cret")
///     .timeout(Duration::from_secs(10))
///     .connect()
///     .await?;
/// // One call with a shorter deadline; `client` keeps its own.
/// let quick = client.with_timeout(Duration::from_millis(500));
/// # let _ = quick;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReqlogClient {
    channel: Channel,
    options: CallOptions,
}

impl ReqlogClient {
    /// Connects to a server at `endpoint`, e.g. `http://127.0.0.1:50051`, with no token,
    /// no TLS and no deadline; [`ReqlogClient::builder`] sets those.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(endpoint.into())?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// A builder for a client with a token, TLS, deadlines or a lazy connection.
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// Wraps a channel the caller configured (TLS, timeouts, load balancing).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            channel,
            options: CallOptions::default(),
        }
    }

    /// Wraps a channel, sending `options` with every call.
    pub fn from_channel_with(channel: Channel, options: CallOptions) -> Self {
        Self { channel, options }
    }

    /// A clone whose calls carry this deadline (sent as `grpc-timeout`, enforced by the
    /// client too; for an export, over the whole stream); the connection is shared.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        let mut clone = self.clone();
        clone.options.timeout = Some(timeout);
        clone
    }

    /// A clone that sends `token` as `authorization: Bearer <token>` on every call.
    pub fn with_token(&self, token: &str) -> Result<Self, ClientError> {
        let mut clone = self.clone();
        clone.options.authorization = CallOptions::with_token(token)?.authorization;
        Ok(clone)
    }

    fn intercepted(&self) -> AuthChannel {
        InterceptedService::new(self.channel.clone(), self.options.clone())
    }

    /// The generated ingest client, for calls this type does not wrap.
    pub fn ingest(&self) -> IngestServiceClient<AuthChannel> {
        IngestServiceClient::new(self.intercepted())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated log client, for calls this type does not wrap.
    pub fn logs(&self) -> LogServiceClient<AuthChannel> {
        LogServiceClient::new(self.intercepted())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated admin client, for calls this type does not wrap.
    pub fn admin(&self) -> AdminServiceClient<AuthChannel> {
        AdminServiceClient::new(self.intercepted())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Records one request; returns once the row is durably stored.
    pub async fn record(&self, record: pb::RequestRecord) -> Result<RecordOutcome, ClientError> {
        let response = self
            .ingest()
            .record_request(pb::RecordRequestRequest {
                record: Some(record),
            })
            .await?
            .into_inner();
        Ok(RecordOutcome {
            id: response.id,
            duplicate: response.duplicate,
        })
    }

    /// Records a batch; each record is accepted or rejected on its own.
    pub async fn record_batch(
        &self,
        records: Vec<pb::RequestRecord>,
    ) -> Result<pb::RecordRequestsResponse, ClientError> {
        Ok(self
            .ingest()
            .record_requests(pb::RecordRequestsRequest { records })
            .await?
            .into_inner())
    }

    /// Lists one page of an account's logs.
    pub async fn list_logs(
        &self,
        request: pb::ListLogsRequest,
    ) -> Result<pb::ListLogsResponse, ClientError> {
        Ok(self.logs().list_logs(request).await?.into_inner())
    }
}

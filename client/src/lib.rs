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

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Generated protobuf types and gRPC clients (and, with the `server` feature, server stubs).
#[allow(unreachable_pub, missing_debug_implementations, clippy::all)]
pub mod pb {
    tonic::include_proto!("reqlog.v1");

    /// The encoded descriptors of every reqlog proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("reqlog_descriptor");
}

pub use prost_types;

mod export;

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

/// A connection to a reqlog server; cheap to clone, and every clone shares the connection.
#[derive(Debug, Clone)]
pub struct ReqlogClient {
    channel: Channel,
}

impl ReqlogClient {
    /// Connects to a server at `endpoint`, e.g. `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(endpoint.into())?.connect().await?;
        Ok(Self::from_channel(channel))
    }

    /// Wraps a channel the caller configured (TLS, timeouts, load balancing).
    pub fn from_channel(channel: Channel) -> Self {
        Self { channel }
    }

    /// The generated ingest client, for calls this type does not wrap.
    pub fn ingest(&self) -> IngestServiceClient<Channel> {
        IngestServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated log client, for calls this type does not wrap.
    pub fn logs(&self) -> LogServiceClient<Channel> {
        LogServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// The generated admin client, for calls this type does not wrap.
    pub fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel.clone())
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

//! The service's one error type, and its one mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;
use crate::domain::Violation;
use crate::store::StoreError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field at fault, e.g. `record.client_ip`.
        field: String,
        /// Why; never echoes a private value.
        reason: String,
    },
    /// The operation is not allowed in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The server cannot take more work now; the caller should back off and retry.
    #[error("{0}")]
    ResourceExhausted(String),
    /// No token, or an unknown one.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller outside its role or accounts.
    #[error("{0}")]
    PermissionDenied(String),
    /// A storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AuthError> for Error {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthenticated(reason) => Self::Unauthenticated(reason.to_owned()),
            AuthError::PermissionDenied(reason) => Self::PermissionDenied(reason),
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        Error::from(error).into()
    }
}

impl From<Violation> for Error {
    fn from(violation: Violation) -> Self {
        Self::InvalidArgument {
            field: violation.field,
            reason: violation.reason,
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidArgument { field, reason } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, reason),
            ),
            Error::FailedPrecondition(_) => Status::failed_precondition(message),
            Error::ResourceExhausted(_) => Status::resource_exhausted(message),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Store(StoreError::Unavailable(reason)) => {
                tracing::warn!(%reason, "database unavailable");
                Status::unavailable("database unavailable, retry later")
            }
            Error::Store(StoreError::WriterStopped) => {
                Status::unavailable("server is shutting down, retry on another replica")
            }
            Error::Store(StoreError::Database(db_error)) => {
                tracing::error!(error = %db_error, "database error");
                // SQL and its values never reach callers.
                Status::internal("database error")
            }
        }
    }
}

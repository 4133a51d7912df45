//! The service's one error type, and its one mapping to `tonic::Status`.

use std::time::Duration;

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
    /// The server cannot finish the call now (e.g. it is shutting down); retrying may.
    #[error("{0}")]
    Unavailable(String),
    /// A storage failure.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The retry delay advised with a RESOURCE_EXHAUSTED that names none of its own.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`, so that clients back off by as much.
fn exhausted(message: String, retry_after: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(retry_after)),
    )
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
            Error::ResourceExhausted(_) => exhausted(message, DEFAULT_RETRY_AFTER),
            Error::Store(StoreError::Overloaded { retry_after }) => exhausted(
                "the server is busy writing, retry later".into(),
                retry_after,
            ),
            Error::Unauthenticated(_) => Status::unauthenticated(message),
            Error::PermissionDenied(_) => Status::permission_denied(message),
            Error::Unavailable(_) => Status::unavailable(message),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_resource_exhausted_with_retry_advice() {
        let retry_after = Duration::from_millis(750);
        let status = Status::from(Error::Store(StoreError::Overloaded { retry_after }));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let advice = status
            .get_details_retry_info()
            .expect("the status should carry RetryInfo");
        assert_eq!(advice.retry_delay, Some(retry_after));
    }

    #[test]
    fn other_exhaustion_advises_a_default_delay() {
        let status = Status::from(Error::ResourceExhausted("too many exports".into()));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let advice = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(advice.retry_delay, Some(DEFAULT_RETRY_AFTER));
    }
}

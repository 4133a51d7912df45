//! Validated domain types and the rules that make them: no tonic, no SeaORM.

pub mod activity;
pub mod export;
pub mod filter;
pub mod ip;
pub mod lifecycle;
pub mod page_token;
pub mod query;
pub mod record;
pub mod time;

/// One input value that breaks a rule; becomes INVALID_ARGUMENT with a BadRequest violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct Violation {
    /// The field at fault, as named in the proto (e.g. `client_ip`).
    pub field: String,
    /// Why the value was refused; never echoes a private value.
    pub reason: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same violation, with its field nested under `parent` (`record.client_ip`).
    pub fn within(mut self, parent: &str) -> Self {
        self.field = format!("{parent}.{}", self.field);
        self
    }
}

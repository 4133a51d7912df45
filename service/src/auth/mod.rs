//! Access control: bearer-token principals from `--auth-file`, and the one check every
//! handler calls.
//!
//! The interceptor ([`guard`]) turns the `authorization` metadata into a [`Principal`] (or
//! UNAUTHENTICATED) and leaves it in the request's extensions; a handler then calls
//! [`authorize`] with the action and the account the request message names, because only
//! the handler has decoded the message.

pub mod file;
pub mod guard;

use std::fmt;
use std::sync::Arc;

use tonic::Request;

pub use file::{AuthFile, AuthFileError};
pub use guard::{AuthInterceptor, Authenticator};

/// What a principal may do, as API.md's table gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Gateways: IngestService only.
    Ingest,
    /// Consoles: ListLogs, ExportLogs, GetUsageStats, HashIp.
    Member,
    /// Everything.
    Admin,
    /// Nothing (an account that exists but is switched off).
    Guest,
}

impl Role {
    /// The name used in the auth file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Member => "member",
            Self::Admin => "admin",
            Self::Guest => "guest",
        }
    }

    /// Whether this role may perform `action` (on an account it is scoped to).
    pub fn allows(self, action: Action) -> bool {
        match self {
            Self::Admin => true,
            Self::Ingest => action == Action::Ingest,
            Self::Member => action == Action::Read,
            Self::Guest => false,
        }
    }
}

/// The kinds of call, one per column of API.md's role table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// IngestService.
    Ingest,
    /// LogService: ListLogs, ExportLogs, GetUsageStats, HashIp.
    Read,
    /// AdminService.
    Admin,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Self::Ingest => "record requests",
            Self::Read => "read logs",
            Self::Admin => "call AdminService",
        }
    }
}

/// Which accounts a principal reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accounts {
    /// `["*"]`: every account.
    All,
    /// Exactly these.
    Only(Vec<String>),
}

impl Accounts {
    fn contains(&self, account_id: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(ids) => ids.iter().any(|id| id == account_id),
        }
    }
}

/// A caller, as the auth file names it. Holds no token and no digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `name` from the auth file; `anonymous` when there is no auth file.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub accounts: Accounts,
}

/// A call that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, or one that no principal has: UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A known principal outside its role or accounts: PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
}

impl Principal {
    /// The principal of every call when there is no auth file (loopback only).
    pub fn anonymous() -> Self {
        Self {
            name: ANONYMOUS.to_owned(),
            role: Role::Admin,
            accounts: Accounts::All,
        }
    }

    /// The one access check: may this principal perform `action` on `account_id`? An empty
    /// `account_id` means every account (a sweep or listing across accounts), which only a
    /// principal of `accounts = ["*"]` reaches.
    pub fn authorize(&self, action: Action, account_id: &str) -> Result<(), AuthError> {
        if !self.role.allows(action) {
            return Err(AuthError::PermissionDenied(format!(
                "principal {} (role {}) may not {}",
                self.name,
                self.role.as_str(),
                action.describe()
            )));
        }
        let reached = if account_id.is_empty() {
            self.accounts == Accounts::All
        } else {
            self.accounts.contains(account_id)
        };
        if !reached {
            let what = if account_id.is_empty() {
                "every account".to_owned()
            } else {
                format!("account {account_id}")
            };
            return Err(AuthError::PermissionDenied(format!(
                "principal {} may not access {what}",
                self.name
            )));
        }
        Ok(())
    }

    /// `authorize` for each account a call touches (a batch of records).
    pub fn authorize_all<'a>(
        &self,
        action: Action,
        account_ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), AuthError> {
        if !self.role.allows(action) {
            return self.authorize(action, "");
        }
        account_ids
            .into_iter()
            .try_for_each(|account| self.authorize(action, account))
    }
}

/// The principal name recorded when no auth file is configured.
pub const ANONYMOUS: &str = "anonymous";

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The principal the interceptor attached to `request`. Every reqlog service is wrapped in
/// the interceptor, so a missing one means a wiring mistake: refuse rather than allow.
pub fn principal<T>(request: &Request<T>) -> Result<Arc<Principal>, AuthError> {
    request
        .extensions()
        .get::<Arc<Principal>>()
        .cloned()
        .ok_or(AuthError::Unauthenticated("no principal for this call"))
}

/// [`principal`] then [`Principal::authorize`], for handlers.
pub fn authorize<T>(
    request: &Request<T>,
    action: Action,
    account_id: &str,
) -> Result<Arc<Principal>, AuthError> {
    let principal = principal(request)?;
    principal.authorize(action, account_id)?;
    Ok(principal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(role: Role) -> Principal {
        Principal {
            name: "p".into(),
            role,
            accounts: Accounts::Only(vec!["acct_a".into()]),
        }
    }

    #[test]
    fn roles_follow_the_table() {
        use Action::*;
        let table = [
            (Role::Ingest, [true, false, false]),
            (Role::Member, [false, true, false]),
            (Role::Admin, [true, true, true]),
            (Role::Guest, [false, false, false]),
        ];
        for (role, expected) in table {
            for (action, allowed) in [Ingest, Read, Admin].into_iter().zip(expected) {
                assert_eq!(role.allows(action), allowed, "{role:?} {action:?}");
            }
        }
    }

    #[test]
    fn accounts_scope_every_action() {
        let admin = scoped(Role::Admin);
        assert!(admin.authorize(Action::Admin, "acct_a").is_ok());
        assert!(matches!(
            admin.authorize(Action::Admin, "acct_b"),
            Err(AuthError::PermissionDenied(_))
        ));
        // "Every account" needs the wildcard.
        assert!(admin.authorize(Action::Admin, "").is_err());
        assert!(Principal::anonymous().authorize(Action::Admin, "").is_ok());
    }

    #[test]
    fn a_batch_is_refused_when_one_account_is_out_of_scope() {
        let gateway = scoped(Role::Ingest);
        assert!(
            gateway
                .authorize_all(Action::Ingest, ["acct_a", "acct_a"])
                .is_ok()
        );
        assert!(
            gateway
                .authorize_all(Action::Ingest, ["acct_a", "acct_b"])
                .is_err()
        );
        // An empty batch still needs the role.
        assert!(
            scoped(Role::Member)
                .authorize_all(Action::Ingest, [])
                .is_err()
        );
    }
}

//! The activity record's vocabulary: the actions, the entries a sweep leaves, and the
//! ListActivity page token.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::Violation;

/// An administrative action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivityAction {
    /// PurgeForKey.
    PurgeForKey,
    /// UpsertApiKey.
    UpsertApiKey,
    /// SetAccountPlan.
    SetAccountPlan,
    /// A retention sweep, manual or background.
    RetentionSweep,
}

impl ActivityAction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PurgeForKey => "purge_for_key",
            Self::UpsertApiKey => "upsert_api_key",
            Self::SetAccountPlan => "set_account_plan",
            Self::RetentionSweep => "retention_sweep",
        }
    }

    /// The action of a stored name.
    pub fn parse(stored: &str) -> Option<Self> {
        [
            Self::PurgeForKey,
            Self::UpsertApiKey,
            Self::SetAccountPlan,
            Self::RetentionSweep,
        ]
        .into_iter()
        .find(|action| action.as_str() == stored)
    }
}

/// Who ran the server's own periodic sweep.
pub const BACKGROUND: &str = "background";

/// Entries a page of ListActivity holds by default, and at most.
pub const DEFAULT_ACTIVITY_PAGE: u64 = 100;
/// The largest page.
pub const MAX_ACTIVITY_PAGE: u64 = 1_000;

/// `page_size`: 0 → 100, above 1000 → 1000, negative refused.
pub fn activity_page_size(requested: i32) -> Result<u64, Violation> {
    match requested {
        0 => Ok(DEFAULT_ACTIVITY_PAGE),
        n if n < 0 => Err(Violation::new("page_size", "must not be negative")),
        n => Ok((n as u64).min(MAX_ACTIVITY_PAGE)),
    }
}

/// A ListActivity position: entries older than `before_id`, for `account` ("" = all).
/// Not secret (only admins list activity) but bound to its account, so a token of one
/// listing cannot be replayed against another.
pub fn seal_activity_token(account: &str, before_id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{before_id}:{account}"))
}

/// The entry id a ListActivity token continues before.
pub fn open_activity_token(token: &str, account: &str) -> Result<i64, Violation> {
    let invalid = || Violation::new("page_token", "is not a token of this listing");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (id, bound) = text.split_once(':').ok_or_else(invalid)?;
    if bound != account {
        return Err(invalid());
    }
    id.parse().map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_with_their_account() {
        let token = seal_activity_token("acct_1", 42);
        assert_eq!(open_activity_token(&token, "acct_1"), Ok(42));
        assert!(open_activity_token(&token, "acct_2").is_err());
        assert!(open_activity_token(&token, "").is_err());
        assert!(open_activity_token("garbage!", "acct_1").is_err());
    }

    #[test]
    fn actions_round_trip_and_page_sizes_clamp() {
        for action in [
            ActivityAction::PurgeForKey,
            ActivityAction::UpsertApiKey,
            ActivityAction::SetAccountPlan,
            ActivityAction::RetentionSweep,
        ] {
            assert_eq!(ActivityAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(activity_page_size(0), Ok(100));
        assert_eq!(activity_page_size(5_000), Ok(1_000));
        assert!(activity_page_size(-1).is_err());
    }
}

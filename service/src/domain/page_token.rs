//! Page tokens: the last row's position, bound to its query and sealed with an HMAC.
//!
//! Layout before base64url: version (1 byte) ‖ SHA-256 of the query's fingerprint (first
//! 16 bytes) ‖ the cursor as JSON ‖ HMAC-SHA256 over all of that (first 16 bytes).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Violation;
use super::filter::LogQuery;

const VERSION: u8 = 1;
const DIGEST_LEN: usize = 16;
const TAG_LEN: usize = 16;

/// A sort value of the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CursorValue {
    /// The column was NULL.
    Null,
    /// A numeric column.
    Int(i64),
    /// A text column.
    Text(String),
}

/// Where the next page starts: after this (value, id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort column's value.
    pub value: CursorValue,
    /// The row id (the tie-break).
    pub id: i64,
}

/// The secret tokens are sealed with (kept in the database, shared by replicas).
#[derive(Clone)]
pub struct PageTokenKey(Vec<u8>);

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(..)")
    }
}

impl PageTokenKey {
    /// A key from its bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    /// The opaque token for the page after `cursor`.
    pub fn seal(&self, query: &LogQuery, cursor: &Cursor) -> String {
        let mut bytes = vec![VERSION];
        bytes.extend_from_slice(&query_digest(query));
        bytes.extend_from_slice(&serde_json::to_vec(cursor).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(&bytes);
        bytes.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The cursor in `token`, if this key sealed it for exactly this query.
    pub fn open(&self, token: &str, query: &LogQuery) -> Result<Cursor, Violation> {
        let invalid = || Violation::new("page_token", "is not a page token this server issued");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        if bytes.len() < 1 + DIGEST_LEN + TAG_LEN {
            return Err(invalid());
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let mut mac = self.mac();
        mac.update(body);
        // Constant-time comparison of the truncated tag.
        mac.verify_truncated_left(tag).map_err(|_| invalid())?;
        if body[0] != VERSION {
            return Err(invalid());
        }
        if body[1..=DIGEST_LEN] != query_digest(query) {
            return Err(Violation::new(
                "page_token",
                "belongs to another query: account, filter and order must stay the same",
            ));
        }
        serde_json::from_slice(&body[1 + DIGEST_LEN..]).map_err(|_| invalid())
    }
}

fn query_digest(query: &LogQuery) -> [u8; DIGEST_LEN] {
    let digest = Sha256::digest(query.fingerprint());
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&digest[..DIGEST_LEN]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::filter::{LogFilter, SortOrder};

    fn query(account: &str) -> LogQuery {
        LogQuery::new(account, LogFilter::default(), SortOrder::default()).unwrap()
    }

    fn cursor() -> Cursor {
        Cursor {
            value: CursorValue::Text("GET".into()),
            id: 42,
        }
    }

    #[test]
    fn a_token_opens_for_its_own_query() {
        let key = PageTokenKey::new(vec![7; 32]);
        let token = key.seal(&query("a"), &cursor());
        assert_eq!(key.open(&token, &query("a")).unwrap(), cursor());
    }

    #[test]
    fn another_query_key_or_a_changed_byte_is_refused() {
        let key = PageTokenKey::new(vec![7; 32]);
        let token = key.seal(&query("a"), &cursor());
        assert_eq!(
            key.open(&token, &query("b")).unwrap_err().field,
            "page_token"
        );
        assert!(
            PageTokenKey::new(vec![8; 32])
                .open(&token, &query("a"))
                .is_err()
        );
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 1;
        assert!(
            key.open(&URL_SAFE_NO_PAD.encode(bytes), &query("a"))
                .is_err()
        );
        assert!(key.open("garbage!", &query("a")).is_err());
        assert!(key.open("", &query("a")).is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::filter::{LogFilter, SortField, SortOrder};

    const FIELDS: [SortField; 10] = [
        SortField::Timestamp,
        SortField::ApiKeyName,
        SortField::ApiKeyPrefix,
        SortField::Method,
        SortField::Endpoint,
        SortField::QueryParams,
        SortField::StatusCode,
        SortField::ErrorCode,
        SortField::IpHash,
        SortField::DurationMs,
    ];

    /// Queries from small pools, so that equal queries come up often.
    fn query() -> impl Strategy<Value = LogQuery> {
        (
            proptest::sample::select(vec!["acct_a", "acct_b"]),
            proptest::option::of(proptest::sample::select(vec!["get", "x"])),
            proptest::collection::vec(proptest::sample::select(vec![200, 404]), 0..2),
            proptest::option::of(proptest::sample::select(vec!["/v1", "/v2"])),
            proptest::option::of(0..3i64),
            proptest::sample::select(FIELDS.to_vec()),
            any::<bool>(),
        )
            .prop_map(
                |(account, search, status_codes, prefix, start, field, descending)| {
                    let filter = LogFilter {
                        search: search.map(str::to_owned),
                        status_codes,
                        endpoint_prefix: prefix.map(str::to_owned),
                        start_micros: start,
                        ..LogFilter::default()
                    };
                    LogQuery::new(account, filter, SortOrder { field, descending })
                        .expect("pooled accounts are valid")
                },
            )
    }

    fn cursor() -> impl Strategy<Value = Cursor> {
        (
            prop_oneof![
                Just(CursorValue::Null),
                any::<i64>().prop_map(CursorValue::Int),
                ".{0,12}".prop_map(CursorValue::Text),
            ],
            any::<i64>(),
        )
            .prop_map(|(value, id)| Cursor { value, id })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A token opens for exactly the query it was sealed for, and to its own cursor.
        #[test]
        fn a_token_opens_only_for_its_query(a in query(), b in query(), at in cursor()) {
            let key = PageTokenKey::new(vec![3; 32]);
            let token = key.seal(&a, &at);
            prop_assert_eq!(key.open(&token, &a), Ok(at.clone()));
            let other = key.open(&token, &b);
            if a == b {
                prop_assert_eq!(other, Ok(at));
            } else {
                prop_assert_eq!(other.map_err(|violation| violation.field), Err("page_token".into()));
            }
        }

        /// Any change to a token's bytes, or any other text, is refused: never a cursor.
        #[test]
        fn altered_tokens_never_open(
            q in query(),
            at in cursor(),
            position in any::<proptest::sample::Index>(),
            flip in 1u8..,
            junk in "[A-Za-z0-9_-]{0,80}",
        ) {
            let key = PageTokenKey::new(vec![3; 32]);
            let token = key.seal(&q, &at);
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).expect("tokens are base64url");
            let index = position.index(bytes.len());
            bytes[index] ^= flip;
            prop_assert!(key.open(&URL_SAFE_NO_PAD.encode(&bytes), &q).is_err());
            if junk != token {
                prop_assert!(key.open(&junk, &q).is_err());
            }
        }
    }
}

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

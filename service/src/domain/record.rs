//! A gateway's record, validated and normalised into the row that is stored.

use sha2::{Digest, Sha256};

use super::Violation;
use super::ip::IpHasher;
use super::query::Sanitizer;
use super::time::{MICROS_PER_SECOND, micros_from_parts};

/// The HTTP methods a record may carry, in their stored (upper-case) form.
pub const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];
/// How far in the future a record's timestamp may lie (clock skew between gateway and us).
pub const MAX_FUTURE_SKEW_MICROS: i64 = 5 * 60 * MICROS_PER_SECOND;
/// User agents longer than this many characters are cut.
pub const MAX_USER_AGENT_CHARS: usize = 512;

/// A record as received, before validation; fields as the proto names them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordInput<'a> {
    /// `account_id`.
    pub account_id: &'a str,
    /// `request_id`.
    pub request_id: &'a str,
    /// `api_key_id`.
    pub api_key_id: &'a str,
    /// `api_key_name`.
    pub api_key_name: &'a str,
    /// `api_key_prefix`.
    pub api_key_prefix: &'a str,
    /// `method`.
    pub method: &'a str,
    /// `endpoint`.
    pub endpoint: &'a str,
    /// `query_string`.
    pub query_string: &'a str,
    /// `status_code`.
    pub status_code: i32,
    /// `error_code`.
    pub error_code: &'a str,
    /// `client_ip` (raw; never stored).
    pub client_ip: &'a str,
    /// `user_agent`.
    pub user_agent: &'a str,
    /// `duration_ms`.
    pub duration_ms: u32,
    /// `timestamp` as (seconds, nanos); `None` when unset.
    pub timestamp: Option<(i64, i32)>,
}

/// A validated record, exactly as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogEntry {
    /// The account.
    pub account_id: String,
    /// The idempotency key, when one was given.
    pub request_id: Option<String>,
    /// What `request_ids` stores of it: see [`request_key`].
    pub request_key: Option<RequestKey>,
    /// The API key.
    pub api_key_id: String,
    /// The key's name at the time.
    pub api_key_name: String,
    /// The key's prefix at the time.
    pub api_key_prefix: String,
    /// Upper-case method.
    pub method: &'static str,
    /// The path, without a query part.
    pub endpoint: String,
    /// The sanitized query string, `None` when empty.
    pub query_params: Option<String>,
    /// The HTTP status.
    pub status_code: i32,
    /// The error code, `None` when empty.
    pub error_code: Option<String>,
    /// The digest of the canonical client IP (32 bytes; see [`IpHasher::digest`]), or none.
    pub ip_hash: Vec<u8>,
    /// The user agent, at most 512 characters.
    pub user_agent: String,
    /// Latency in milliseconds.
    pub duration_ms: u32,
    /// When the request happened, microseconds since the epoch.
    pub ts_micros: i64,
}

/// Limits that operators may configure.
#[derive(Debug, Clone, Default)]
pub struct RecordRules {
    /// Which query parameters are redacted.
    pub sanitizer: Sanitizer,
    /// How client IPs are hashed.
    pub ip_hasher: IpHasher,
}

/// An account id: 1-64 characters of `[A-Za-z0-9._:-]`.
pub fn validate_account_id(field: &str, value: &str) -> Result<(), Violation> {
    if value.is_empty() {
        return Err(Violation::new(field, "is required"));
    }
    if value.len() > 64 {
        return Err(Violation::new(field, "must be at most 64 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(Violation::new(
            field,
            "may contain only letters, digits and . _ : -",
        ));
    }
    Ok(())
}

/// Text of at most `max` characters with no control characters; `required` refuses "".
pub fn validate_text(
    field: &str,
    value: &str,
    max: usize,
    required: bool,
) -> Result<(), Violation> {
    if required && value.is_empty() {
        return Err(Violation::new(field, "is required"));
    }
    if value.chars().count() > max {
        return Err(Violation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    reject_control_chars(field, value)
}

fn reject_control_chars(field: &str, value: &str) -> Result<(), Violation> {
    if value.chars().any(char::is_control) {
        return Err(Violation::new(field, "must not contain control characters"));
    }
    Ok(())
}

/// Parses a method in any case into its stored upper-case form.
pub fn parse_method(field: &str, value: &str) -> Result<&'static str, Violation> {
    if value.is_empty() {
        return Err(Violation::new(field, "is required"));
    }
    METHODS
        .iter()
        .find(|method| method.eq_ignore_ascii_case(value))
        .copied()
        .ok_or_else(|| {
            Violation::new(
                field,
                "must be one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS",
            )
        })
}

/// The first 16 bytes of a request id's SHA-256.
pub type RequestKey = [u8; 16];

/// How `request_ids` stores a request id: 16 bytes of its SHA-256 whatever its length (the
/// benchmark's 28–32 characters, a UUID's 36) instead of the text, which the row already
/// holds. Two ids of one account and day share a key with a chance of about n²/2¹²⁹, so
/// a gateway would need ~2⁶⁴ ids in a day to see one collision, and only its own.
pub fn request_key(request_id: &str) -> RequestKey {
    let digest = Sha256::digest(request_id.as_bytes());
    let mut key = [0; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// Optional text: "" becomes `None`.
fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// At most `max` characters of `value`.
fn truncate_chars(value: &str, max: usize) -> &str {
    match value.char_indices().nth(max) {
        Some((cut, _)) => &value[..cut],
        None => value,
    }
}

impl RecordRules {
    /// Checks every rule of API.md and builds the row to store. `now_micros` is the time the
    /// record was received.
    pub fn validate(
        &self,
        input: &RecordInput<'_>,
        now_micros: i64,
    ) -> Result<NewLogEntry, Violation> {
        validate_account_id("account_id", input.account_id)?;
        validate_text("request_id", input.request_id, 128, false)?;
        validate_text("api_key_id", input.api_key_id, 128, true)?;
        validate_text("api_key_name", input.api_key_name, 128, false)?;
        validate_text("api_key_prefix", input.api_key_prefix, 32, false)?;
        let method = parse_method("method", input.method)?;

        let (path, endpoint_query) = match input.endpoint.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (input.endpoint, None),
        };
        if input.endpoint.is_empty() {
            return Err(Violation::new("endpoint", "is required"));
        }
        if !path.starts_with('/') {
            return Err(Violation::new("endpoint", "must start with /"));
        }
        validate_text("endpoint", path, 2048, true)?;
        reject_control_chars("endpoint", input.endpoint)?;

        // The endpoint's own query part comes first, then the query string; nothing dropped.
        let joined_query = match (endpoint_query, input.query_string) {
            (Some(from_endpoint), "") => from_endpoint.to_owned(),
            (Some(from_endpoint), extra) => format!("{from_endpoint}&{extra}"),
            (None, query) => query.to_owned(),
        };
        validate_text("query_string", &joined_query, 4096, false)?;

        if !(100..=599).contains(&input.status_code) {
            return Err(Violation::new("status_code", "must be between 100 and 599"));
        }
        validate_text("error_code", input.error_code, 64, false)?;
        // The reason never repeats the address: raw IPs reach no log line or error message.
        let ip_hash = self
            .ip_hasher
            .digest(input.client_ip)
            .map_err(|_| Violation::new("client_ip", "is not an IPv4 or IPv6 address"))?;
        reject_control_chars("user_agent", input.user_agent)?;

        let ts_micros = match input.timestamp {
            None => now_micros,
            Some((seconds, nanos)) => micros_from_parts(seconds, nanos)
                .ok_or_else(|| Violation::new("timestamp", "must lie between 1970 and 9999"))?,
        };
        if ts_micros > now_micros.saturating_add(MAX_FUTURE_SKEW_MICROS) {
            return Err(Violation::new(
                "timestamp",
                "must not be more than 5 minutes in the future",
            ));
        }

        Ok(NewLogEntry {
            account_id: input.account_id.to_owned(),
            request_id: non_empty(input.request_id),
            request_key: (!input.request_id.is_empty()).then(|| request_key(input.request_id)),
            api_key_id: input.api_key_id.to_owned(),
            api_key_name: input.api_key_name.to_owned(),
            api_key_prefix: input.api_key_prefix.to_owned(),
            method,
            endpoint: path.to_owned(),
            query_params: non_empty(&self.sanitizer.sanitize(&joined_query)),
            status_code: input.status_code,
            error_code: non_empty(input.error_code),
            ip_hash,
            user_agent: truncate_chars(input.user_agent, MAX_USER_AGENT_CHARS).to_owned(),
            duration_ms: input.duration_ms,
            ts_micros,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_772_800_245_000_000;

    fn valid() -> RecordInput<'static> {
        RecordInput {
            account_id: "acct_1",
            api_key_id: "key_1",
            method: "get",
            endpoint: "/v1/models",
            status_code: 200,
            ..Default::default()
        }
    }

    fn field_of(input: RecordInput<'_>) -> String {
        RecordRules::default()
            .validate(&input, NOW)
            .expect_err("input should be refused")
            .field
    }

    #[test]
    fn a_minimal_record_is_normalised() {
        let entry = RecordRules::default().validate(&valid(), NOW).unwrap();
        assert_eq!(entry.method, "GET");
        assert_eq!(entry.query_params, None);
        assert_eq!(entry.error_code, None);
        assert_eq!(entry.request_id, None);
        assert!(entry.ip_hash.is_empty());
        assert_eq!(entry.ts_micros, NOW);
    }

    #[test]
    fn endpoint_query_moves_into_query_params_before_the_query_string() {
        let entry = RecordRules::default()
            .validate(
                &RecordInput {
                    endpoint: "/v1/x?a=1&token=t",
                    query_string: "b=2",
                    ..valid()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(entry.endpoint, "/v1/x");
        assert_eq!(
            entry.query_params.as_deref(),
            Some("a=1&token=[REDACTED]&b=2")
        );
    }

    #[test]
    fn each_rule_names_its_field() {
        let long_129 = "k".repeat(129);
        let cases: Vec<(RecordInput<'_>, &str)> = vec![
            (
                RecordInput {
                    account_id: "",
                    ..valid()
                },
                "account_id",
            ),
            (
                RecordInput {
                    account_id: "a b",
                    ..valid()
                },
                "account_id",
            ),
            (
                RecordInput {
                    request_id: &long_129,
                    ..valid()
                },
                "request_id",
            ),
            (
                RecordInput {
                    api_key_id: "",
                    ..valid()
                },
                "api_key_id",
            ),
            (
                RecordInput {
                    api_key_name: &long_129,
                    ..valid()
                },
                "api_key_name",
            ),
            (
                RecordInput {
                    api_key_prefix: "p".repeat(33).leak(),
                    ..valid()
                },
                "api_key_prefix",
            ),
            (
                RecordInput {
                    method: "TRACE",
                    ..valid()
                },
                "method",
            ),
            (
                RecordInput {
                    endpoint: "v1/x",
                    ..valid()
                },
                "endpoint",
            ),
            (
                RecordInput {
                    status_code: 99,
                    ..valid()
                },
                "status_code",
            ),
            (
                RecordInput {
                    status_code: 600,
                    ..valid()
                },
                "status_code",
            ),
            (
                RecordInput {
                    error_code: "e".repeat(65).leak(),
                    ..valid()
                },
                "error_code",
            ),
            (
                RecordInput {
                    client_ip: "10.0.0.300",
                    ..valid()
                },
                "client_ip",
            ),
            (
                RecordInput {
                    timestamp: Some((NOW / 1_000_000 + 301, 0)),
                    ..valid()
                },
                "timestamp",
            ),
            (
                RecordInput {
                    user_agent: "bad\u{0}agent",
                    ..valid()
                },
                "user_agent",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(field_of(input), field);
        }
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let name: String = "é".repeat(128);
        assert!(
            RecordRules::default()
                .validate(
                    &RecordInput {
                        api_key_name: &name,
                        ..valid()
                    },
                    NOW
                )
                .is_ok()
        );
    }

    #[test]
    fn long_user_agents_are_cut_at_512_characters() {
        let agent = "ü".repeat(600);
        let entry = RecordRules::default()
            .validate(
                &RecordInput {
                    user_agent: &agent,
                    ..valid()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(entry.user_agent.chars().count(), 512);
    }

    #[test]
    fn a_request_id_is_keyed_by_the_first_16_bytes_of_its_sha256() {
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223 b00361a3…
        assert_eq!(
            crate::domain::ip::to_hex(&request_key("abc")),
            "ba7816bf8f01cfea414140de5dae2223"
        );
        let rules = RecordRules::default();
        let keyed = rules
            .validate(
                &RecordInput {
                    request_id: "abc",
                    ..valid()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(keyed.request_key, Some(request_key("abc")));
        let unkeyed = rules
            .validate(
                &RecordInput {
                    request_id: "",
                    ..valid()
                },
                NOW,
            )
            .unwrap();
        assert_eq!(unkeyed.request_key, None);
    }
}

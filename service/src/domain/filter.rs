//! What ListLogs and ExportLogs select and in which order, validated.

use serde::Serialize;

use super::Violation;
use super::record::{parse_method, validate_account_id, validate_text};
use super::time::OutOfRange;

/// Most values one repeated filter field may list.
pub const MAX_FILTER_VALUES: usize = 100;
/// Longest search term, in characters.
pub const MAX_SEARCH_CHARS: usize = 256;
/// Rows a page holds when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Most rows a page holds; larger requests are clamped.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A sortable column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SortField {
    /// `ts`.
    Timestamp,
    /// `api_key_name`.
    ApiKeyName,
    /// `api_key_prefix`.
    ApiKeyPrefix,
    /// `method`.
    Method,
    /// `endpoint`.
    Endpoint,
    /// `query_params` (nullable).
    QueryParams,
    /// `status_code`.
    StatusCode,
    /// `error_code` (nullable).
    ErrorCode,
    /// `ip_hash`.
    IpHash,
    /// `duration_ms`.
    DurationMs,
}

impl SortField {
    /// Whether the column holds numbers (else text).
    pub fn is_numeric(self) -> bool {
        matches!(self, Self::Timestamp | Self::StatusCode | Self::DurationMs)
    }

    /// Whether the column may be NULL.
    pub fn is_nullable(self) -> bool {
        matches!(self, Self::QueryParams | Self::ErrorCode)
    }
}

/// A total order: the field, then `id`, both in the same direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SortOrder {
    /// The column.
    pub field: SortField,
    /// Largest first.
    pub descending: bool,
}

impl Default for SortOrder {
    /// Newest first.
    fn default() -> Self {
        Self {
            field: SortField::Timestamp,
            descending: true,
        }
    }
}

/// Conditions on rows; every part is AND-ed, an empty part adds none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogFilter {
    /// Case-insensitive substring over the searchable columns.
    pub search: Option<String>,
    /// Only these keys.
    pub api_key_ids: Vec<String>,
    /// Only these (upper-case) methods.
    pub methods: Vec<&'static str>,
    /// Only these status codes.
    pub status_codes: Vec<i32>,
    /// Only these status classes, as their first digit (1-5).
    pub status_classes: Vec<i32>,
    /// Only these error codes.
    pub error_codes: Vec<String>,
    /// IP hashes starting with this lower-case hex.
    pub ip_hash_prefix: Option<String>,
    /// Endpoints starting with this text (case-sensitive).
    pub endpoint_prefix: Option<String>,
    /// At or after, in microseconds.
    pub start_micros: Option<i64>,
    /// Before, in microseconds.
    pub end_micros: Option<i64>,
}

/// A filter as received; fields as the proto names them.
#[derive(Debug, Clone, Default)]
pub struct FilterInput<'a> {
    /// `search`.
    pub search: &'a str,
    /// `api_key_ids`.
    pub api_key_ids: &'a [String],
    /// `methods`.
    pub methods: &'a [String],
    /// `status_codes`.
    pub status_codes: &'a [i32],
    /// `status_classes` as their first digit; 0 is UNSPECIFIED, anything else unknown.
    pub status_classes: Vec<i32>,
    /// `error_codes`.
    pub error_codes: &'a [String],
    /// `ip_hash_prefix`.
    pub ip_hash_prefix: &'a str,
    /// `endpoint_prefix`.
    pub endpoint_prefix: &'a str,
    /// `start_time` in microseconds; `Err` when the timestamp was out of range.
    pub start_micros: Option<Result<i64, OutOfRange>>,
    /// `end_time` in microseconds; `Err` when the timestamp was out of range.
    pub end_micros: Option<Result<i64, OutOfRange>>,
}

fn check_count(field: &str, count: usize) -> Result<(), Violation> {
    if count > MAX_FILTER_VALUES {
        return Err(Violation::new(
            field,
            format!("may list at most {MAX_FILTER_VALUES} values"),
        ));
    }
    Ok(())
}

fn time_bound(
    field: &str,
    value: Option<Result<i64, OutOfRange>>,
) -> Result<Option<i64>, Violation> {
    value
        .transpose()
        .map_err(|OutOfRange| Violation::new(field, "must lie between 1970 and 9999"))
}

impl LogFilter {
    /// Validates a filter; violations name fields under `filter.`.
    pub fn parse(input: FilterInput<'_>) -> Result<Self, Violation> {
        Self::parse_inner(input).map_err(|violation| violation.within("filter"))
    }

    fn parse_inner(input: FilterInput<'_>) -> Result<Self, Violation> {
        validate_text("search", input.search, MAX_SEARCH_CHARS, false)?;

        check_count("api_key_ids", input.api_key_ids.len())?;
        for key in input.api_key_ids {
            validate_text("api_key_ids", key, 128, true)?;
        }
        check_count("methods", input.methods.len())?;
        let methods = input
            .methods
            .iter()
            .map(|method| parse_method("methods", method))
            .collect::<Result<Vec<_>, _>>()?;
        check_count("status_codes", input.status_codes.len())?;
        if input
            .status_codes
            .iter()
            .any(|code| !(100..=599).contains(code))
        {
            return Err(Violation::new(
                "status_codes",
                "must be between 100 and 599",
            ));
        }
        check_count("status_classes", input.status_classes.len())?;
        if let Some(bad) = input
            .status_classes
            .iter()
            .find(|class| !(1..=5).contains(*class))
        {
            let reason = if *bad == 0 {
                "must not contain STATUS_CLASS_UNSPECIFIED"
            } else {
                "contains an unknown status class"
            };
            return Err(Violation::new("status_classes", reason));
        }
        check_count("error_codes", input.error_codes.len())?;
        for code in input.error_codes {
            validate_text("error_codes", code, 64, true)?;
        }
        if input.ip_hash_prefix.len() > 64
            || !input.ip_hash_prefix.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(Violation::new(
                "ip_hash_prefix",
                "must be at most 64 hexadecimal digits",
            ));
        }
        validate_text("endpoint_prefix", input.endpoint_prefix, 2048, false)?;
        let start_micros = time_bound("start_time", input.start_micros)?;
        let end_micros = time_bound("end_time", input.end_micros)?;

        Ok(Self {
            search: non_empty(input.search),
            api_key_ids: input.api_key_ids.to_vec(),
            methods,
            status_codes: input.status_codes.to_vec(),
            status_classes: input.status_classes,
            error_codes: input.error_codes.to_vec(),
            ip_hash_prefix: non_empty(&input.ip_hash_prefix.to_ascii_lowercase()),
            endpoint_prefix: non_empty(input.endpoint_prefix),
            start_micros,
            end_micros,
        })
    }
}

fn non_empty(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

/// One account's rows under a filter, in an order: what a page token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogQuery {
    /// The account.
    pub account_id: String,
    /// The conditions.
    pub filter: LogFilter,
    /// The order.
    pub order: SortOrder,
}

impl LogQuery {
    /// Validates the account and bundles the query.
    pub fn new(account_id: &str, filter: LogFilter, order: SortOrder) -> Result<Self, Violation> {
        validate_account_id("account_id", account_id)?;
        Ok(Self {
            account_id: account_id.to_owned(),
            filter,
            order,
        })
    }

    /// A canonical encoding: equal queries give equal bytes.
    pub fn fingerprint(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The page size to use for a requested one: 0 → the default; above the maximum → clamped.
pub fn effective_page_size(requested: i32) -> Result<u32, Violation> {
    match requested {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if n < 0 => Err(Violation::new("page_size", "must not be negative")),
        n => Ok(u32::try_from(n).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_filter_is_no_condition() {
        assert_eq!(
            LogFilter::parse(FilterInput::default()).unwrap(),
            LogFilter::default()
        );
    }

    #[test]
    fn values_are_normalised() {
        let methods = vec!["get".to_owned(), "Post".to_owned()];
        let filter = LogFilter::parse(FilterInput {
            methods: &methods,
            ip_hash_prefix: "ABcd",
            ..Default::default()
        })
        .unwrap();
        assert_eq!(filter.methods, vec!["GET", "POST"]);
        assert_eq!(filter.ip_hash_prefix.as_deref(), Some("abcd"));
    }

    #[test]
    fn bad_parts_name_their_field() {
        let cases: Vec<(FilterInput<'_>, &str)> = vec![
            (
                FilterInput {
                    status_classes: vec![0],
                    ..Default::default()
                },
                "filter.status_classes",
            ),
            (
                FilterInput {
                    status_classes: vec![9],
                    ..Default::default()
                },
                "filter.status_classes",
            ),
            (
                FilterInput {
                    status_codes: &[42],
                    ..Default::default()
                },
                "filter.status_codes",
            ),
            (
                FilterInput {
                    ip_hash_prefix: "xyz",
                    ..Default::default()
                },
                "filter.ip_hash_prefix",
            ),
            (
                FilterInput {
                    start_micros: Some(Err(OutOfRange)),
                    ..Default::default()
                },
                "filter.start_time",
            ),
        ];
        for (input, field) in cases {
            assert_eq!(LogFilter::parse(input).unwrap_err().field, field);
        }
        let methods = vec!["TRACE".to_owned()];
        let input = FilterInput {
            methods: &methods,
            ..Default::default()
        };
        assert_eq!(LogFilter::parse(input).unwrap_err().field, "filter.methods");
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(effective_page_size(0), Ok(500));
        assert_eq!(effective_page_size(7), Ok(7));
        assert_eq!(effective_page_size(5000), Ok(1000));
        assert!(effective_page_size(-1).is_err());
    }

    #[test]
    fn fingerprints_differ_between_queries() {
        let a = LogQuery::new("acct", LogFilter::default(), SortOrder::default()).unwrap();
        let mut b = a.clone();
        b.order.descending = false;
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}

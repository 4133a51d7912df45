//! Plans and retention windows, key states, and usage-statistics requests.

use std::str::FromStr;

use super::Violation;
use super::time::{MICROS_PER_DAY, MICROS_PER_HOUR};

/// Longest retention window an override may set, in days (ten years).
pub const MAX_RETENTION_DAYS: i32 = 3_650;

/// A billing plan; each sets a retention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Plan {
    /// 1 day.
    Free,
    /// 7 days.
    Starter,
    /// 30 days.
    Pro,
    /// 180 days.
    Scale,
    /// 365 days.
    Enterprise,
}

impl Plan {
    /// The plan's retention window, in days.
    pub fn retention_days(self) -> i32 {
        match self {
            Self::Free => 1,
            Self::Starter => 7,
            Self::Pro => 30,
            Self::Scale => 180,
            Self::Enterprise => 365,
        }
    }

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "FREE",
            Self::Starter => "STARTER",
            Self::Pro => "PRO",
            Self::Scale => "SCALE",
            Self::Enterprise => "ENTERPRISE",
        }
    }
}

impl FromStr for Plan {
    type Err = Violation;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "FREE" => Ok(Self::Free),
            "STARTER" => Ok(Self::Starter),
            "PRO" => Ok(Self::Pro),
            "SCALE" => Ok(Self::Scale),
            "ENTERPRISE" => Ok(Self::Enterprise),
            _ => Err(Violation::new("plan", "is not a known plan")),
        }
    }
}

/// An account's plan and optional override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The plan.
    pub plan: Plan,
    /// Days that replace the plan's window.
    pub override_days: Option<i32>,
}

impl Retention {
    /// Validates an override (1 to 3,650 days).
    pub fn new(plan: Plan, override_days: Option<i32>) -> Result<Self, Violation> {
        if let Some(days) = override_days
            && !(1..=MAX_RETENTION_DAYS).contains(&days)
        {
            return Err(Violation::new(
                "retention_days",
                format!("must be between 1 and {MAX_RETENTION_DAYS}"),
            ));
        }
        Ok(Self {
            plan,
            override_days,
        })
    }

    /// The window the sweep applies, in days.
    pub fn days(self) -> i32 {
        self.override_days
            .unwrap_or_else(|| self.plan.retention_days())
    }

    /// Rows with a timestamp before this (microseconds) are outside the window at `now`.
    pub fn cutoff(self, now_micros: i64) -> i64 {
        now_micros - i64::from(self.days()) * MICROS_PER_DAY
    }
}

/// An API key's status as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// In use.
    Active,
    /// Replaced by a newer key.
    Rotated,
    /// Past its expiry.
    Expired,
    /// Switched off.
    Inactive,
}

impl KeyStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Rotated => "ROTATED",
            Self::Expired => "EXPIRED",
            Self::Inactive => "INACTIVE",
        }
    }
}

/// A usage bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    /// UTC hours.
    Hour,
    /// UTC days.
    Day,
}

impl Granularity {
    /// The bucket's length in seconds.
    pub fn seconds(self) -> i64 {
        match self {
            Self::Hour => MICROS_PER_HOUR / 1_000_000,
            Self::Day => MICROS_PER_DAY / 1_000_000,
        }
    }

    /// Most buckets one request may span.
    pub fn max_buckets(self) -> i64 {
        match self {
            Self::Hour => 24 * 93,
            Self::Day => 3_660,
        }
    }
}

/// A dimension to group usage by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dimension {
    /// The API key.
    ApiKey,
    /// The endpoint.
    Endpoint,
    /// The method.
    Method,
    /// The status code.
    StatusCode,
}

/// A validated usage-statistics request: buckets whose start lies in `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    /// The account.
    pub account_id: String,
    /// One key, or every key.
    pub api_key_id: Option<String>,
    /// Seconds; the first bucket start included (aligned up to the bucket size).
    pub start_seconds: i64,
    /// Seconds; bucket starts before this are included (aligned up to the bucket size).
    pub end_seconds: i64,
    /// Bucket size.
    pub granularity: Granularity,
    /// Dimensions, deduplicated, in a fixed order.
    pub group_by: Vec<Dimension>,
}

fn align_up(seconds: i64, size: i64) -> i64 {
    -(-seconds).div_euclid(size) * size
}

impl UsageQuery {
    /// Validates bounds given in seconds (`None` = unset: the last day of hours, or the last
    /// 30 days of days, ending now).
    pub fn new(
        account_id: &str,
        api_key_id: &str,
        start_seconds: Option<i64>,
        end_seconds: Option<i64>,
        now_seconds: i64,
        granularity: Granularity,
        mut group_by: Vec<Dimension>,
    ) -> Result<Self, Violation> {
        super::record::validate_account_id("account_id", account_id)?;
        super::record::validate_text("api_key_id", api_key_id, 128, false)?;
        let size = granularity.seconds();
        let end = align_up(end_seconds.unwrap_or(now_seconds + 1), size);
        let default_span = match granularity {
            Granularity::Hour => 24,
            Granularity::Day => 30,
        };
        let start = align_up(start_seconds.unwrap_or(end - default_span * size), size);
        if end < start {
            return Err(Violation::new("end_time", "must not be before start_time"));
        }
        if (end - start) / size > granularity.max_buckets() {
            return Err(Violation::new(
                "end_time",
                format!(
                    "the range may span at most {} buckets",
                    granularity.max_buckets()
                ),
            ));
        }
        group_by.sort_unstable();
        group_by.dedup();
        Ok(Self {
            account_id: account_id.to_owned(),
            api_key_id: (!api_key_id.is_empty()).then(|| api_key_id.to_owned()),
            start_seconds: start,
            end_seconds: end,
            granularity,
            group_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_their_windows_and_overrides_win() {
        let windows: Vec<i32> = [
            Plan::Free,
            Plan::Starter,
            Plan::Pro,
            Plan::Scale,
            Plan::Enterprise,
        ]
        .iter()
        .map(|plan| Retention::new(*plan, None).unwrap().days())
        .collect();
        assert_eq!(windows, vec![1, 7, 30, 180, 365]);
        assert_eq!(Retention::new(Plan::Free, Some(90)).unwrap().days(), 90);
        assert_eq!(
            Retention::new(Plan::Free, Some(0)).unwrap_err().field,
            "retention_days"
        );
        assert_eq!(
            Retention::new(Plan::Pro, None)
                .unwrap()
                .cutoff(40 * MICROS_PER_DAY),
            10 * MICROS_PER_DAY
        );
    }

    #[test]
    fn usage_bounds_align_to_buckets() {
        let query = UsageQuery::new(
            "a",
            "",
            Some(3_601),
            Some(7_200),
            0,
            Granularity::Hour,
            vec![],
        )
        .unwrap();
        assert_eq!((query.start_seconds, query.end_seconds), (7_200, 7_200));
        let query = UsageQuery::new(
            "a",
            "",
            Some(0),
            Some(86_401),
            0,
            Granularity::Day,
            vec![Dimension::Method, Dimension::ApiKey, Dimension::Method],
        )
        .unwrap();
        assert_eq!((query.start_seconds, query.end_seconds), (0, 172_800));
        assert_eq!(query.group_by, vec![Dimension::ApiKey, Dimension::Method]);
        assert!(
            UsageQuery::new("a", "", Some(10_000), Some(0), 0, Granularity::Hour, vec![]).is_err()
        );
        assert!(
            UsageQuery::new(
                "a",
                "",
                Some(0),
                Some(100 * 86_400),
                0,
                Granularity::Hour,
                vec![]
            )
            .is_err()
        );
    }
}

//! Times on the command line: parsed from RFC 3339 or an age, shown in local time.

use std::time::{Duration, SystemTime};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use super::CliError;
use crate::config::parse_duration;

/// `2026-03-06T12:00:00Z` (any RFC 3339 offset) or an age before now such as `90m`, `2d`.
pub(super) fn parse_time(text: &str, flag: &str) -> Result<SystemTime, CliError> {
    if let Ok(timestamp) = text.parse::<Timestamp>() {
        return Ok(SystemTime::from(timestamp));
    }
    let age = parse_duration(text).map_err(|_| {
        CliError::Usage(format!(
            "{flag} must be an RFC 3339 time (2026-03-06T12:00:00Z) or an age (90m, 2d)"
        ))
    })?;
    SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| CliError::Usage(format!("{flag} reaches before 1970")))
}

/// `2026-03-06 13:30:45` in the machine's time zone (`TZ`, else /etc/localtime; UTC when
/// neither is known).
pub(super) fn local(timestamp: Option<&prost_types::Timestamp>, zone: &TimeZone) -> String {
    let Some(timestamp) = timestamp else {
        return String::new();
    };
    match Timestamp::new(timestamp.seconds, timestamp.nanos) {
        Ok(time) => time
            .to_zoned(zone.clone())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => String::from("?"),
    }
}

/// RFC 3339 UTC with milliseconds, for JSON output.
pub(super) fn utc(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    let time = Timestamp::new(timestamp.seconds, timestamp.nanos).ok()?;
    Some(time.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
}

/// The system time zone, looked up once per command.
pub(super) fn zone() -> TimeZone {
    TimeZone::try_system().unwrap_or(TimeZone::UTC)
}

/// A protobuf timestamp for a system time.
pub(super) fn to_pb(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

/// Human-readable byte counts: `1.5 MiB`.
pub(super) fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Seconds as `1.2s`.
pub(super) fn seconds(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_rfc3339_or_as_an_age() {
        let fixed = parse_time("2026-03-06T12:30:45Z", "--since").unwrap();
        assert_eq!(
            fixed
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_772_800_245
        );
        let hour_ago = parse_time("1h", "--since").unwrap();
        let age = SystemTime::now().duration_since(hour_ago).unwrap();
        assert!(age >= Duration::from_secs(3_600) && age < Duration::from_secs(3_700));
        assert!(parse_time("yesterday", "--since").is_err());
    }

    #[test]
    fn utc_output_has_milliseconds() {
        let timestamp = prost_types::Timestamp {
            seconds: 1_772_800_245,
            nanos: 7_000_000,
        };
        assert_eq!(utc(Some(&timestamp)).unwrap(), "2026-03-06T12:30:45.007Z");
        assert_eq!(
            local(Some(&timestamp), &TimeZone::UTC),
            "2026-03-06 12:30:45"
        );
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}

//! Timestamps are stored as microseconds since the Unix epoch, UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds in one second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;
/// Microseconds in one hour.
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SECOND;
/// Microseconds in one UTC day.
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;
/// The latest second accepted anywhere: 9999-12-31T23:59:59Z.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// A time outside 1970-9999, or nanos outside 0..10^9.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

/// Now, in microseconds since the epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Seconds and nanos (a protobuf Timestamp) as microseconds, when they name a time between
/// 1970 and 9999.
pub fn micros_from_parts(seconds: i64, nanos: i32) -> Option<i64> {
    if !(0..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return None;
    }
    Some(seconds * MICROS_PER_SECOND + i64::from(nanos) / 1_000)
}

/// Microseconds as protobuf seconds and nanos.
pub fn parts_from_micros(micros: i64) -> (i64, i32) {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let nanos = micros.rem_euclid(MICROS_PER_SECOND) * 1_000;
    (seconds, i32::try_from(nanos).unwrap_or(0))
}

/// The UTC day number (days since the epoch) of a time.
pub fn day_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_DAY)
}

/// The start of the UTC hour holding a time, in seconds since the epoch.
pub fn hour_start_seconds(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_HOUR) * 3_600
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_at_microsecond_precision() {
        let micros = micros_from_parts(1_772_800_245, 123_456_789).unwrap();
        assert_eq!(micros, 1_772_800_245_123_456);
        assert_eq!(parts_from_micros(micros), (1_772_800_245, 123_456_000));
    }

    #[test]
    fn out_of_range_parts_are_refused() {
        assert_eq!(micros_from_parts(-1, 0), None);
        assert_eq!(micros_from_parts(MAX_SECONDS + 1, 0), None);
        assert_eq!(micros_from_parts(0, 1_000_000_000), None);
        assert_eq!(micros_from_parts(0, -1), None);
    }

    #[test]
    fn buckets_align_to_utc_hours_and_days() {
        let micros = micros_from_parts(86_400 + 3_600 * 5 + 59, 0).unwrap();
        assert_eq!(day_of(micros), 1);
        assert_eq!(hour_start_seconds(micros), 86_400 + 3_600 * 5);
    }
}

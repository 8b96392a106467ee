//! Timestamps exactly as Go's `time.RFC3339Nano` prints them in UTC, which
//! is what kubelet's log parser expects.

use chrono::{DateTime, Timelike, Utc};

/// `2026-11-23T17:12:00.123456789Z`: nanoseconds with trailing zeros
/// trimmed, and no fraction at all when it is zero (Go's `.999999999`).
pub fn format_timestamp(at: DateTime<Utc>) -> String {
    let mut out = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    // chrono puts a leap second into the nanoseconds (>= 1e9); Go cannot
    // represent one, so it stays in the last nanosecond of the second.
    let nanos = at.nanosecond().min(999_999_999);
    if nanos > 0 {
        let fraction = format!("{nanos:09}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(nanos: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 17, 12, 0).unwrap()
            + chrono::Duration::nanoseconds(nanos.into())
    }

    #[test]
    fn zero_fraction_is_left_out() {
        assert_eq!(format_timestamp(at(0)), "2026-11-23T17:12:00Z");
    }

    #[test]
    fn trailing_zeros_are_trimmed() {
        assert_eq!(
            format_timestamp(at(123_456_789)),
            "2026-11-23T17:12:00.123456789Z"
        );
        assert_eq!(format_timestamp(at(120_000_000)), "2026-11-23T17:12:00.12Z");
        assert_eq!(format_timestamp(at(1)), "2026-11-23T17:12:00.000000001Z");
        assert_eq!(format_timestamp(at(500_000)), "2026-11-23T17:12:00.0005Z");
    }

    #[test]
    fn single_digit_fields_are_padded() {
        let t = Utc.with_ymd_and_hms(2027, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(format_timestamp(t), "2027-01-02T03:04:05Z");
    }
}

//! Dates and instants typed by people (`--from`, `--to`, `range=custom`).

/// A day (`YYYY-MM-DD`, midnight UTC) or an RFC 3339 instant, in µs since the
/// epoch. With `end_of_day`, a day means the midnight after it, so a range
/// `to` a day includes that whole day.
pub fn parse_day_or_instant(s: &str, end_of_day: bool) -> Option<i64> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let day = if end_of_day { day.succ_opt()? } else { day };
        return Some(day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros());
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_end_at_the_next_midnight() {
        let from = parse_day_or_instant("2026-11-23", false).unwrap();
        let to = parse_day_or_instant("2026-11-23", true).unwrap();
        assert_eq!(to - from, 86_400_000_000);
        assert_eq!(
            parse_day_or_instant("2026-11-23T10:00:00Z", true),
            Some(1_795_428_000_000_000)
        );
        assert_eq!(parse_day_or_instant("tomorrow", false), None);
    }
}

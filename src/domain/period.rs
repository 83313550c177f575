//! Local days and chart buckets in a site's time zone.
//!
//! The store holds UTC instants and the bundled DuckDB has no ICU, so every
//! boundary ("today", a local day, a local hour) is computed here with
//! chrono-tz and queries run on UTC ranges. Every zone offset in use is a
//! multiple of 15 minutes, so counts the store groups by 15-minute UTC slot
//! fold exactly into local hours and days ([`Period::fold`]), DST included:
//! a Los Angeles day is 23 or 25 hours on the days the clocks change.

use chrono::{Duration, NaiveDate, NaiveTime, TimeZone, Timelike};
use chrono_tz::Tz;
use serde::Serialize;

const SEC: i64 = 1_000_000;
/// The width of the UTC slots the store groups by, µs.
pub const SLOT: i64 = 15 * 60 * SEC;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;
/// The longest range a dashboard asks for, in days.
pub const MAX_DAYS: i64 = 400;

/// The width of a chart bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// A local hour.
    Hour,
    /// A local day.
    Day,
}

impl Bucket {
    /// Hours for spans up to three days (73 hours: three local days across
    /// a DST change), days beyond.
    pub fn for_span(micros: i64) -> Bucket {
        if micros <= 3 * DAY + HOUR {
            Bucket::Hour
        } else {
            Bucket::Day
        }
    }
}

/// A time range read in a site's zone: `[from, to)` in µs since the epoch
/// (UTC), the zone, and the chart bucket that suits its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// Start, inclusive.
    pub from: i64,
    /// End, exclusive.
    pub to: i64,
    /// Chart bucket.
    pub bucket: Bucket,
    /// The zone days and hours are read in.
    pub tz: Tz,
}

/// Why a range was refused; the message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPeriod(pub String);

impl Period {
    /// A period from the dashboard's `range` parameter: `today` (the local
    /// day, midnight to midnight), `24h` (the 24 hours before `now`), `7d`
    /// and `30d` (that many whole local days ending today, the default being
    /// `7d`), or `custom` with `from` and `to`, each a
    /// local day (`YYYY-MM-DD`, `to` inclusive) or an RFC 3339 instant.
    pub fn parse(
        range: Option<&str>,
        from: Option<&str>,
        to: Option<&str>,
        now: i64,
        tz: Tz,
    ) -> Result<Period, InvalidPeriod> {
        let bad = |m: &str| InvalidPeriod(m.to_owned());
        match range.unwrap_or("7d") {
            "today" => Ok(Period::last_days(1, now, tz)),
            "24h" => Ok(Period::new(now - DAY, now + 1, tz)),
            "7d" => Ok(Period::last_days(7, now, tz)),
            "30d" => Ok(Period::last_days(30, now, tz)),
            "custom" => {
                let from = from.ok_or_else(|| bad("range=custom needs from"))?;
                let to = to.ok_or_else(|| bad("range=custom needs to"))?;
                let from = instant(from, false, tz)
                    .ok_or_else(|| bad("from must be YYYY-MM-DD or RFC 3339"))?;
                let to = instant(to, true, tz)
                    .ok_or_else(|| bad("to must be YYYY-MM-DD or RFC 3339"))?;
                if to <= from || to - from > MAX_DAYS * DAY + HOUR {
                    return Err(bad("to must be after from, at most 400 days later"));
                }
                Ok(Period::new(from, to, tz))
            }
            _ => Err(bad("range must be today, 24h, 7d, 30d or custom")),
        }
    }

    /// `[from, to)` in `tz`, bucketed by its length.
    pub fn new(from: i64, to: i64, tz: Tz) -> Period {
        Period {
            from,
            to,
            bucket: Bucket::for_span(to - from),
            tz,
        }
    }

    /// The `days` whole local days ending with today.
    pub fn last_days(days: i64, now: i64, tz: Tz) -> Period {
        let today = local_day(tz, now);
        let first = today - Duration::days(days - 1);
        Period::new(day_start(tz, first), day_start(tz, next_day(today)), tz)
    }

    /// The start of every `bucket` of the period, in order; the first one
    /// may begin before `from` (the local hour or day `from` falls in).
    pub fn buckets(&self, bucket: Bucket) -> Vec<i64> {
        let mut out = Vec::new();
        match bucket {
            Bucket::Day => {
                let mut day = local_day(self.tz, self.from);
                loop {
                    let start = day_start(self.tz, day);
                    if start >= self.to {
                        break;
                    }
                    out.push(start);
                    day = next_day(day);
                }
            }
            Bucket::Hour => {
                let mut slot = self.from - self.from.rem_euclid(SLOT);
                while slot < self.to {
                    let start = hour_start(self.tz, slot);
                    if out.last() != Some(&start) {
                        out.push(start);
                    }
                    slot += SLOT;
                }
            }
        }
        out
    }

    /// Folds counts per UTC slot (`(slot start µs, counts)`) into the
    /// period's `bucket`s: one entry per bucket, in order, empty ones
    /// included; slots outside the period are ignored.
    pub fn fold<T: Clone + Default>(
        &self,
        bucket: Bucket,
        slots: impl IntoIterator<Item = (i64, T)>,
        add: impl Fn(&mut T, &T),
    ) -> Vec<(i64, T)> {
        let mut out: Vec<(i64, T)> = self
            .buckets(bucket)
            .into_iter()
            .map(|start| (start, T::default()))
            .collect();
        for (slot, counts) in slots {
            let start = match bucket {
                Bucket::Hour => hour_start(self.tz, slot),
                Bucket::Day => day_start(self.tz, local_day(self.tz, slot)),
            };
            if let Ok(i) = out.binary_search_by_key(&start, |(s, _)| *s) {
                add(&mut out[i].1, &counts);
            }
        }
        out
    }

    /// A bucket's label: the local day (`2026-11-01`) or the local hour
    /// with its offset (`2026-11-01T01:00:00-07:00`, so the hour DST
    /// repeats is told apart).
    pub fn label(&self, bucket: Bucket, start: i64) -> String {
        match bucket {
            Bucket::Day => local_day(self.tz, start).to_string(),
            Bucket::Hour => local_time(self.tz, start),
        }
    }
}

/// An RFC 3339 local time with offset, e.g. `2026-11-01T23:30:00-08:00`.
pub fn local_time(tz: Tz, micros: i64) -> String {
    tz.timestamp_micros(micros)
        .single()
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%:z").to_string())
        .unwrap_or_default()
}

/// The local day an instant falls on.
pub fn local_day(tz: Tz, micros: i64) -> NaiveDate {
    tz.timestamp_micros(micros)
        .single()
        .map(|t| t.date_naive())
        .unwrap_or_default()
}

/// The first instant of a local day: its midnight, or, where midnight falls
/// in a DST gap, the first quarter hour after it that exists.
pub fn day_start(tz: Tz, day: NaiveDate) -> i64 {
    let mut local = day.and_time(NaiveTime::MIN);
    for _ in 0..(2 * 24 * 4) {
        if let Some(t) = tz.from_local_datetime(&local).earliest() {
            return t.timestamp_micros();
        }
        local += Duration::minutes(15);
    }
    day.and_time(NaiveTime::MIN).and_utc().timestamp_micros()
}

/// The start of the local hour an instant falls in.
pub fn hour_start(tz: Tz, micros: i64) -> i64 {
    match tz.timestamp_micros(micros).single() {
        Some(t) => {
            let into_hour = i64::from(t.minute()) * 60 + i64::from(t.second());
            micros - into_hour * SEC - i64::from(t.nanosecond() / 1000)
        }
        None => micros - micros.rem_euclid(HOUR),
    }
}

fn next_day(day: NaiveDate) -> NaiveDate {
    day.succ_opt().unwrap_or(day)
}

/// A local day (`to`: the midnight after it) or an RFC 3339 instant, µs.
fn instant(s: &str, end_of_day: bool, tz: Tz) -> Option<i64> {
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Some(day_start(
            tz,
            if end_of_day { day.succ_opt()? } else { day },
        ));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LA: Tz = chrono_tz::America::Los_Angeles;

    fn at(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros()
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn a_los_angeles_day_is_23_or_25_hours_when_the_clocks_change() {
        let len = |d: &str| (day_start(LA, next_day(day(d))) - day_start(LA, day(d))) / HOUR;
        assert_eq!(len("2026-03-08"), 23);
        assert_eq!(len("2026-11-01"), 25);
        assert_eq!(len("2026-11-02"), 24);
        assert_eq!(day_start(LA, day("2026-11-01")), at("2026-11-01T07:00:00Z"));
        assert_eq!(day_start(LA, day("2026-11-02")), at("2026-11-02T08:00:00Z"));
    }

    #[test]
    fn late_evening_belongs_to_the_local_day_not_the_utc_one() {
        let t = at("2026-11-01T23:30:00-08:00");
        assert_eq!(local_day(LA, t), day("2026-11-01"));
        assert_eq!(local_day(Tz::UTC, t), day("2026-11-02"));
    }

    #[test]
    fn a_gap_at_midnight_starts_the_day_when_the_gap_ends() {
        // Santiago springs forward at midnight: 2026-09-06 begins at 01:00.
        let tz = chrono_tz::America::Santiago;
        assert_eq!(
            day_start(tz, day("2026-09-06")),
            at("2026-09-06T01:00:00-03:00")
        );
    }

    #[test]
    fn seven_days_are_whole_local_days_ending_today() {
        let now = at("2026-11-03T12:00:00-08:00");
        let p = Period::parse(Some("7d"), None, None, now, LA).unwrap();
        assert_eq!(p.from, at("2026-10-28T00:00:00-07:00"));
        assert_eq!(p.to, at("2026-11-04T00:00:00-08:00"));
        assert_eq!(p.bucket, Bucket::Day);
        let days: Vec<String> = p
            .buckets(Bucket::Day)
            .into_iter()
            .map(|s| p.label(Bucket::Day, s))
            .collect();
        assert_eq!(days.first().unwrap(), "2026-10-28");
        assert_eq!(days.last().unwrap(), "2026-11-03");
        assert_eq!(days.len(), 7);
    }

    #[test]
    fn today_is_the_local_day_in_hours_dst_included() {
        // 2026-11-01 in Los Angeles has 25 hours (clocks go back at 02:00).
        let now = at("2026-11-01T23:30:00-08:00");
        let p = Period::parse(Some("today"), None, None, now, LA).unwrap();
        assert_eq!(p.from, at("2026-11-01T00:00:00-07:00"));
        assert_eq!(p.to, at("2026-11-02T00:00:00-08:00"));
        assert_eq!(p.bucket, Bucket::Hour);
        assert_eq!(p.buckets(Bucket::Hour).len(), 25);
    }

    #[test]
    fn custom_days_are_local_and_to_is_inclusive() {
        let p = Period::parse(
            Some("custom"),
            Some("2026-11-01"),
            Some("2026-11-01"),
            0,
            LA,
        )
        .unwrap();
        assert_eq!(p.to - p.from, 25 * HOUR);
        assert_eq!(p.bucket, Bucket::Hour);
        let hours = p.buckets(Bucket::Hour);
        assert_eq!(hours.len(), 25);
        assert_eq!(p.label(Bucket::Hour, hours[1]), "2026-11-01T01:00:00-07:00");
        assert_eq!(p.label(Bucket::Hour, hours[2]), "2026-11-01T01:00:00-08:00");
        assert_eq!(
            p.label(Bucket::Hour, hours[24]),
            "2026-11-01T23:00:00-08:00"
        );
        let instants = Period::parse(
            Some("custom"),
            Some("2026-11-01T00:00:00Z"),
            Some("2026-11-01T06:00:00Z"),
            0,
            LA,
        )
        .unwrap();
        assert_eq!(instants.to - instants.from, 6 * HOUR);
    }

    #[test]
    fn bad_ranges_say_what_is_accepted() {
        let p = |r, f, t| Period::parse(Some(r), f, t, 0, LA).unwrap_err().0;
        assert!(p("1y", None, None).contains("today, 24h, 7d, 30d or custom"));
        assert!(p("custom", None, Some("2026-01-01")).contains("needs from"));
        assert!(p("custom", Some("yesterday"), Some("2026-01-01")).contains("from must"));
        assert!(p("custom", Some("2026-01-02"), Some("2026-01-01")).contains("after from"));
        assert!(p("custom", Some("2020-01-01"), Some("2026-01-01")).contains("400 days"));
    }

    #[test]
    fn slots_fold_into_local_days_and_hours() {
        let p = Period::parse(
            Some("custom"),
            Some("2026-10-31"),
            Some("2026-11-02"),
            0,
            LA,
        )
        .unwrap();
        let slots = [
            (at("2026-11-01T23:30:00-08:00"), 1u64),
            (at("2026-11-01T01:15:00-07:00"), 10),
            (at("2026-11-01T01:15:00-08:00"), 100),
            (at("2026-10-30T12:00:00Z"), 1000), // before the period
        ];
        let days = p.fold(Bucket::Day, slots, |a, b| *a += b);
        let days: Vec<(String, u64)> = days
            .into_iter()
            .map(|(s, n)| (p.label(Bucket::Day, s), n))
            .collect();
        assert_eq!(
            days,
            [
                ("2026-10-31".into(), 0),
                ("2026-11-01".into(), 111),
                ("2026-11-02".into(), 0)
            ]
        );
        let hours = p.fold(Bucket::Hour, slots, |a, b| *a += b);
        assert_eq!(hours.len(), 24 + 25 + 24);
        let count = |label: &str| {
            hours
                .iter()
                .find(|(s, _)| p.label(Bucket::Hour, *s) == label)
                .unwrap()
                .1
        };
        assert_eq!(count("2026-11-01T01:00:00-07:00"), 10);
        assert_eq!(count("2026-11-01T01:00:00-08:00"), 100);
        assert_eq!(count("2026-11-01T23:00:00-08:00"), 1);
    }

    #[test]
    fn half_hour_zones_bucket_on_their_own_hours() {
        let tz = chrono_tz::Asia::Kolkata;
        let p = Period::new(at("2026-11-01T00:00:00Z"), at("2026-11-01T03:00:00Z"), tz);
        let labels: Vec<String> = p
            .buckets(Bucket::Hour)
            .into_iter()
            .map(|s| p.label(Bucket::Hour, s))
            .collect();
        assert_eq!(labels[0], "2026-11-01T05:00:00+05:30");
        assert_eq!(labels[1], "2026-11-01T06:00:00+05:30");
        assert_eq!(labels.len(), 4);
    }
}

//! Budget periods and the window of time the current one covers.
//!
//! Design choice: `day` is the calendar day and `calendar_month` the
//! calendar month in the configured time zone (`[budgets] timezone`), so
//! they start at local midnight whatever DST does that night; `month` is a
//! rolling 30-day window anchored at the budget's creation (one for every
//! 30 days since), for those who bill by "30 days from sign-up". Every
//! instance computes the same window for the same budget and instant, which
//! is what makes the window's start a key of the shared counters.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;
const ROLLING_MONTH_MS: i64 = 30 * DAY_MS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    Day,
    /// 30 days from the budget's creation, then the next 30, and so on.
    Month,
    CalendarMonth,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Month => "month",
            Self::CalendarMonth => "calendar_month",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Day, Self::Month, Self::CalendarMonth]
            .into_iter()
            .find(|p| p.as_str() == text)
    }
}

/// The current period: `[start_ms, end_ms)`, in ms since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The window of `period` that holds `now_ms`, for a budget created at
/// `created_ms`. An error only for instants outside jiff's range.
pub fn window(
    period: Period,
    created_ms: i64,
    now_ms: i64,
    tz: &TimeZone,
) -> Result<Window, jiff::Error> {
    match period {
        Period::Month => {
            let elapsed = now_ms.saturating_sub(created_ms).max(0);
            let start_ms = created_ms + elapsed / ROLLING_MONTH_MS * ROLLING_MONTH_MS;
            Ok(Window {
                start_ms,
                end_ms: start_ms + ROLLING_MONTH_MS,
            })
        }
        Period::Day => {
            let today = local_date(now_ms, tz)?;
            Ok(Window {
                start_ms: midnight(today, tz)?,
                end_ms: midnight(today.tomorrow()?, tz)?,
            })
        }
        Period::CalendarMonth => {
            let first = local_date(now_ms, tz)?.first_of_month();
            let next = if first.month() == 12 {
                Date::new(first.year() + 1, 1, 1)?
            } else {
                Date::new(first.year(), first.month() + 1, 1)?
            };
            Ok(Window {
                start_ms: midnight(first, tz)?,
                end_ms: midnight(next, tz)?,
            })
        }
    }
}

fn local_date(ms: i64, tz: &TimeZone) -> Result<Date, jiff::Error> {
    Ok(Timestamp::from_millisecond(ms)?
        .to_zoned_datetime(tz.clone())
        .date())
}

/// The first instant of `date` in `tz` (not always 00:00 where DST
/// skips midnight).
fn midnight(date: Date, tz: &TimeZone) -> Result<i64, jiff::Error> {
    Ok(date
        .to_zoned_datetime(tz.clone())?
        .start_of_day()?
        .timestamp()
        .as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn a_calendar_month_in_a_zone_starts_at_local_midnight_across_dst() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        // March 2026 holds the switch to summer time (29 March): the month
        // starts at 00:00 CET and ends at 00:00 CEST.
        let w = window(Period::CalendarMonth, 0, ms("2026-03-30T12:00:00Z"), &tz).unwrap();
        assert_eq!(w.start_ms, ms("2026-02-28T23:00:00Z"));
        assert_eq!(w.end_ms, ms("2026-03-31T22:00:00Z"));
        // One hour short of 31 days: the month lost an hour to DST.
        assert_eq!(w.end_ms - w.start_ms, 31 * DAY_MS - 3_600_000);
    }

    #[test]
    fn a_calendar_month_crosses_the_year_end_in_its_own_zone() {
        let tz = TimeZone::get("Asia/Tokyo").unwrap();
        // 31 December 20:00 UTC is already 1 January in Tokyo.
        let w = window(Period::CalendarMonth, 0, ms("2026-12-31T20:00:00Z"), &tz).unwrap();
        assert_eq!(w.start_ms, ms("2026-12-31T15:00:00Z"));
        assert_eq!(w.end_ms, ms("2027-01-31T15:00:00Z"));
        let utc = TimeZone::UTC;
        let w = window(Period::CalendarMonth, 0, ms("2026-12-31T20:00:00Z"), &utc).unwrap();
        assert_eq!(w.start_ms, ms("2026-12-01T00:00:00Z"));
        assert_eq!(w.end_ms, ms("2027-01-01T00:00:00Z"));
    }

    #[test]
    fn a_day_is_the_local_calendar_day_even_when_it_has_23_hours() {
        let tz = TimeZone::get("America/New_York").unwrap();
        let w = window(Period::Day, 0, ms("2026-03-08T15:00:00Z"), &tz).unwrap();
        assert_eq!(w.start_ms, ms("2026-03-08T05:00:00Z"));
        assert_eq!(w.end_ms, ms("2026-03-09T04:00:00Z"));
        // The last instant of a day is in it; the next one is not.
        let w2 = window(Period::Day, 0, w.end_ms - 1, &tz).unwrap();
        assert_eq!(w2, w);
        let w3 = window(Period::Day, 0, w.end_ms, &tz).unwrap();
        assert_eq!(w3.start_ms, w.end_ms);
    }

    #[test]
    fn a_rolling_month_is_30_days_from_creation() {
        let created = ms("2026-01-15T10:00:00Z");
        let tz = TimeZone::UTC;
        let w = window(Period::Month, created, created, &tz).unwrap();
        assert_eq!(
            (w.start_ms, w.end_ms),
            (created, created + ROLLING_MONTH_MS)
        );
        let later = created + ROLLING_MONTH_MS + 5;
        let w = window(Period::Month, created, later, &tz).unwrap();
        assert_eq!(w.start_ms, created + ROLLING_MONTH_MS);
        assert_eq!(Period::parse("calendar_month"), Some(Period::CalendarMonth));
        assert_eq!(Period::parse("week"), None);
    }
}

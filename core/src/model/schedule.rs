//! Cron schedules: the pattern (croner), the time zone (jiff's bundled IANA database),
//! and which ticks a schedule fires when it is found due. Pure code: the engine feeds it
//! the engine clock's time.

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};
use serde_json::json;

use crate::error::{Error, Result};

/// Most missed ticks one catch-up may fire (`catch_up.limit`).
pub const MAX_CATCH_UP: u32 = 1_000;
/// The catch-up limit when `catch_up.policy` is `all` and no limit is given.
pub const DEFAULT_CATCH_UP: u32 = 100;

/// What happens to ticks missed while no process fired the schedule (downtime).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Fire only the latest missed tick; the older ones are skipped.
    Skip,
    /// Fire every missed tick, oldest first, up to `limit` (the latest ones).
    All { limit: u32 },
}

impl CatchUp {
    pub fn parse(policy: &str, limit: Option<u32>) -> Result<CatchUp> {
        match (policy, limit) {
            ("skip", None) => Ok(CatchUp::Skip),
            ("skip", Some(_)) => Err(Error::invalid_argument(
                "catch_up.limit applies to the policy `all` only",
            )
            .with_details(json!({ "field": "catch_up.limit" }))),
            ("all", limit) => {
                let limit = limit.unwrap_or(DEFAULT_CATCH_UP);
                if !(1..=MAX_CATCH_UP).contains(&limit) {
                    return Err(Error::invalid_argument(format!(
                        "catch_up.limit: expected an integer between 1 and {MAX_CATCH_UP}, got {limit}"
                    ))
                    .with_details(json!({ "field": "catch_up.limit" })));
                }
                Ok(CatchUp::All { limit })
            }
            (other, _) => Err(Error::invalid_argument(format!(
                "catch_up.policy: expected `skip` or `all`, got `{other}`"
            ))
            .with_details(json!({ "field": "catch_up.policy", "policies": ["skip", "all"] }))),
        }
    }

    pub fn policy(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::All { .. } => "all",
        }
    }

    /// The stored limit: 1 for `skip` (one tick).
    pub fn limit(self) -> u32 {
        match self {
            CatchUp::Skip => 1,
            CatchUp::All { limit } => limit,
        }
    }
}

/// A parsed pattern in its time zone.
#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: TimeZone,
}

impl CronSpec {
    /// Parses `pattern` (5 fields, or 6 with seconds first) in the IANA zone `timezone`.
    pub fn parse(pattern: &str, timezone: &str) -> Result<CronSpec> {
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(pattern)
            .map_err(|e| {
                Error::invalid_argument(format!("cron: `{pattern}` is not a cron pattern: {e}"))
                    .with_details(json!({ "field": "cron", "cron": pattern }))
            })?;
        let tz = TimeZone::get(timezone).map_err(|_| {
            Error::invalid_argument(format!(
                "timezone: `{timezone}` is not an IANA time zone (for example UTC, Europe/Berlin, America/New_York)"
            ))
            .with_details(json!({ "field": "timezone", "timezone": timezone }))
        })?;
        let spec = CronSpec { cron, tz };
        // A pattern that names no real time (February 30th) never fires: refuse it.
        spec.next_after(crate::time::now_ms()).map_err(|_| {
            Error::invalid_argument(format!("cron: `{pattern}` never matches a time"))
                .with_details(json!({ "field": "cron", "cron": pattern }))
        })?;
        Ok(spec)
    }

    fn zoned(&self, ms: i64) -> Result<Zoned> {
        Timestamp::from_millisecond(ms)
            .map(|t| t.to_zoned(self.tz.clone()))
            .map_err(|e| Error::internal(format!("time {ms} ms is out of range: {e}")))
    }

    fn ms(z: &Zoned) -> i64 {
        z.timestamp().as_millisecond()
    }

    /// The first tick strictly after `ms`.
    pub fn next_after(&self, ms: i64) -> Result<i64> {
        let z = self.zoned(ms)?;
        self.cron
            .find_next_occurrence(&z, false)
            .map(|n| Self::ms(&n))
            .map_err(|e| Error::invalid_argument(format!("cron: no next tick: {e}")))
    }

    /// The ticks to fire for a schedule whose next unfired tick is `next` (due: at or
    /// before `now`), oldest first, and the first tick after `now` (the new `next`).
    pub fn due_ticks(&self, next: i64, now: i64, catch_up: CatchUp) -> Result<(Vec<i64>, i64)> {
        let after = self.next_after(now)?;
        if next > now {
            return Ok((Vec::new(), next));
        }
        // Walk back from `now`: the latest ticks are the ones kept, so a long downtime
        // costs `limit` steps, not one per missed tick.
        let mut ticks = Vec::new();
        let mut cursor = self.zoned(now)?;
        let mut inclusive = true;
        while ticks.len() < catch_up.limit() as usize {
            let Ok(prev) = self.cron.find_previous_occurrence(&cursor, inclusive) else {
                break;
            };
            let at = Self::ms(&prev);
            if at < next {
                break;
            }
            ticks.push(at);
            cursor = prev;
            inclusive = false;
        }
        ticks.reverse();
        Ok((ticks, after))
    }
}

/// The idempotency key of the task a schedule's tick creates: the same tick makes the
/// same key in every process, so it makes one task.
pub fn tick_key(schedule: &str, tick_ms: i64) -> String {
    format!("schedule:{schedule}:{}", crate::time::rfc3339(tick_ms))
}

/// Parses an RFC 3339 time (`2026-05-01T09:00:00Z`, `2026-05-01T11:00:00+02:00`) to
/// epoch milliseconds.
pub fn parse_rfc3339(field: &str, text: &str) -> Result<i64> {
    text.parse::<Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            Error::invalid_argument(format!(
                "{field}: `{text}` is not an RFC 3339 time such as 2026-05-01T09:00:00Z: {e}"
            ))
            .with_details(json!({ "field": field }))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> i64 {
        parse_rfc3339("t", s).unwrap()
    }

    #[test]
    fn every_minute_ticks_and_catch_up() {
        let c = CronSpec::parse("* * * * *", "UTC").unwrap();
        let t0 = at("2026-01-01T00:00:00Z");
        assert_eq!(c.next_after(t0).unwrap(), at("2026-01-01T00:01:00Z"));
        let now = at("2026-01-01T00:05:30Z");
        let (ticks, next) = c.due_ticks(t0, now, CatchUp::Skip).unwrap();
        assert_eq!(ticks, vec![at("2026-01-01T00:05:00Z")]);
        assert_eq!(next, at("2026-01-01T00:06:00Z"));
        let (ticks, _) = c.due_ticks(t0, now, CatchUp::All { limit: 100 }).unwrap();
        assert_eq!(ticks.len(), 6);
        assert_eq!(ticks[0], t0);
        let (ticks, _) = c.due_ticks(t0, now, CatchUp::All { limit: 2 }).unwrap();
        assert_eq!(
            ticks,
            vec![at("2026-01-01T00:04:00Z"), at("2026-01-01T00:05:00Z")]
        );
        let (ticks, next) = c.due_ticks(now + 1, now, CatchUp::Skip).unwrap();
        assert!(ticks.is_empty());
        assert_eq!(next, now + 1);
    }

    #[test]
    fn a_daily_tick_follows_its_zone_across_dst() {
        // 02:30 does not exist in Berlin on 2026-03-29 (clocks jump 02:00 -> 03:00):
        // croner fires that day's tick at the first time after the gap.
        let c = CronSpec::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let before = c.next_after(at("2026-03-28T00:00:00Z")).unwrap();
        assert_eq!(before, at("2026-03-28T01:30:00Z")); // 02:30 CET
        let gap = c.next_after(before).unwrap();
        assert_eq!(gap, at("2026-03-29T01:00:00Z")); // 03:00 CEST
        let after = c.next_after(gap).unwrap();
        assert_eq!(after, at("2026-03-30T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(CronSpec::parse("61 * * * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "Mars/Olympus").is_err());
        assert!(CronSpec::parse("0 0 30 2 *", "UTC").is_err());
        assert!(CatchUp::parse("some", None).is_err());
        assert!(CatchUp::parse("all", Some(0)).is_err());
        assert!(CatchUp::parse("skip", Some(3)).is_err());
        assert_eq!(
            CatchUp::parse("all", None).unwrap(),
            CatchUp::All { limit: 100 }
        );
        assert!(parse_rfc3339("run_at", "tomorrow").is_err());
        assert_eq!(
            parse_rfc3339("run_at", "2026-05-01T11:00:00+02:00").unwrap(),
            at("2026-05-01T09:00:00Z")
        );
    }
}

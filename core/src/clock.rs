//! The engine's clock: every time the engine decides with (when a retry comes due, when
//! a lease expires, when a step times out, the timestamps of transitions and events)
//! is read from the [`Clock`] of its engine, never from the system directly.
//!
//! The system clock is the default. A manual clock (`clock: manual`) starts at the real
//! time when the engine opens and then moves only when told to (`advance_clock`), so a
//! test can run a workflow with retries, backoffs and timeouts of minutes without
//! waiting for them. Waiting itself (how long a `claim` with `wait_ms` blocks, how
//! often the sweep runs) stays in real time: those are pauses, not decisions.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::{Error, ErrorCode, Result};

/// Largest single `advance_clock` step (30 days), as other durations are bounded.
pub const MAX_ADVANCE_MS: i64 = 30 * 24 * 3600 * 1000;

#[derive(Debug)]
pub enum Clock {
    /// The system's wall clock.
    System,
    /// Milliseconds since the epoch, moved only by [`Clock::advance`].
    Manual(AtomicI64),
}

impl Clock {
    /// The clock a `clock` setting names (`system` or `manual`).
    pub fn from_setting(setting: &str) -> Result<Clock> {
        match setting {
            "system" => Ok(Clock::System),
            "manual" => Ok(Clock::Manual(AtomicI64::new(crate::time::now_ms()))),
            other => Err(Error::invalid_argument(format!(
                "clock: expected one of system, manual, got {other:?}"
            ))
            .with_details(serde_json::json!({ "field": "clock" }))),
        }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => crate::time::now_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Acquire),
        }
    }

    pub fn is_manual(&self) -> bool {
        matches!(self, Clock::Manual(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Clock::System => "system",
            Clock::Manual(_) => "manual",
        }
    }

    /// Moves a manual clock forward by `ms` (0 to [`MAX_ADVANCE_MS`]) and returns the new
    /// time. A system clock cannot be moved: `invalid_state`.
    pub fn advance(&self, ms: i64) -> Result<i64> {
        match self {
            Clock::System => Err(Error::new(
                ErrorCode::InvalidState,
                "advance_clock needs a manual clock; this engine runs on the system clock \
                 (open it with the setting clock: manual)",
            )
            .with_details(serde_json::json!({ "clock": "system" }))),
            Clock::Manual(now) => {
                if !(0..=MAX_ADVANCE_MS).contains(&ms) {
                    return Err(Error::invalid_argument(format!(
                        "ms: expected an integer between 0 and {MAX_ADVANCE_MS}, got {ms}"
                    ))
                    .with_details(serde_json::json!({ "field": "ms" })));
                }
                Ok(now.fetch_add(ms, Ordering::AcqRel) + ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let c = Clock::from_setting("manual").unwrap();
        let t0 = c.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(c.now_ms(), t0);
        assert_eq!(c.advance(60_000).unwrap(), t0 + 60_000);
        assert_eq!(c.now_ms(), t0 + 60_000);
        assert_eq!(c.advance(-1).unwrap_err().code, ErrorCode::InvalidArgument);
        assert_eq!(c.now_ms(), t0 + 60_000);
    }

    #[test]
    fn the_system_clock_refuses_to_move() {
        let c = Clock::from_setting("system").unwrap();
        assert_eq!(c.advance(1).unwrap_err().code, ErrorCode::InvalidState);
        assert!(Clock::from_setting("fast").is_err());
    }
}

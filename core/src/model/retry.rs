//! Retry policies and the decision taken after a failed attempt.

use serde::{Deserialize, Serialize};

/// How the delay grows between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `base_ms * 2^(attempt-1)`, capped at `max_ms`.
    Exponential,
    /// `base_ms * attempt`, capped at `max_ms`.
    Linear,
    /// Always `base_ms`.
    Fixed,
}

impl Backoff {
    pub fn as_str(self) -> &'static str {
        match self {
            Backoff::Exponential => "exponential",
            Backoff::Linear => "linear",
            Backoff::Fixed => "fixed",
        }
    }

    pub fn parse(s: &str) -> Option<Backoff> {
        match s {
            "exponential" => Some(Backoff::Exponential),
            "linear" => Some(Backoff::Linear),
            "fixed" => Some(Backoff::Fixed),
            _ => None,
        }
    }
}

/// A complete retry policy, as stored on every step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts including the first (1 = never retry).
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub base_ms: u64,
    pub max_ms: u64,
    /// Fraction of the delay randomised either way (0.1 = ±10%), in `[0, 1]`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Backoff::Exponential,
            base_ms: 1_000,
            max_ms: 60_000,
            jitter: 0.1,
        }
    }
}

/// A partial policy as written in a template; unset fields come from the defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<f64>,
}

/// Longest delay a handler may ask for with `retry_after_ms` (30 days).
pub const MAX_RETRY_AFTER_MS: u64 = 30 * 24 * 3600 * 1000;

impl RetrySpec {
    /// Lays this spec over `base` and validates the result.
    pub fn resolve(&self, base: &RetryPolicy) -> Result<RetryPolicy, String> {
        let backoff = match &self.backoff {
            None => base.backoff,
            Some(s) => Backoff::parse(s).ok_or_else(|| {
                format!("unknown backoff `{s}` (expected exponential, linear or fixed)")
            })?,
        };
        let policy = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            backoff,
            base_ms: self.base_ms.unwrap_or(base.base_ms),
            max_ms: self.max_ms.unwrap_or(base.max_ms),
            jitter: self.jitter.unwrap_or(base.jitter),
        };
        policy.validate()?;
        Ok(policy)
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.max_attempts > 1000 {
            return Err("max_attempts must be at most 1000".into());
        }
        if self.base_ms > self.max_ms {
            return Err(format!(
                "base_ms ({}) must not exceed max_ms ({})",
                self.base_ms, self.max_ms
            ));
        }
        if self.max_ms > MAX_RETRY_AFTER_MS {
            return Err(format!("max_ms must be at most {MAX_RETRY_AFTER_MS}"));
        }
        if !(0.0..=1.0).contains(&self.jitter) || self.jitter.is_nan() {
            return Err(format!("jitter must be within [0, 1], got {}", self.jitter));
        }
        Ok(())
    }

    /// Delay before the attempt after failed attempt number `attempt` (1-based).
    /// `unit` is a uniform random number in `[0, 1)` that spreads the jitter.
    pub fn delay_ms(&self, attempt: u32, unit: f64) -> u64 {
        let n = attempt.max(1);
        let raw = match self.backoff {
            Backoff::Exponential => {
                let shift = (n - 1).min(62);
                self.base_ms.saturating_mul(1u64 << shift)
            }
            Backoff::Linear => self.base_ms.saturating_mul(u64::from(n)),
            Backoff::Fixed => self.base_ms,
        };
        let capped = raw.min(self.max_ms) as f64;
        let spread = capped * self.jitter * (2.0 * unit - 1.0);
        ((capped + spread).max(0.0) as u64).min(self.max_ms)
    }
}

/// What a failed attempt leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Back to `ready` after this many milliseconds.
    Retry { delay_ms: u64 },
    /// Attempts are used up: the step goes to `error`.
    Exhausted,
    /// The failure is not retryable: the step goes to `error`.
    Permanent,
}

/// Decides the fate of a step whose attempt number `attempt` (counted since the last
/// operator retry) failed.
pub fn after_failure(
    policy: &RetryPolicy,
    attempt: u32,
    retryable: bool,
    retry_after_ms: Option<u64>,
    unit: f64,
) -> Outcome {
    if !retryable {
        return Outcome::Permanent;
    }
    if attempt >= policy.max_attempts {
        return Outcome::Exhausted;
    }
    let delay_ms = match retry_after_ms {
        Some(ms) => ms.min(MAX_RETRY_AFTER_MS),
        None => policy.delay_ms(attempt, unit),
    };
    Outcome::Retry { delay_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: Backoff, jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            backoff,
            base_ms: 100,
            max_ms: 1_000,
            jitter,
        }
    }

    #[test]
    fn delays_follow_the_backoff_and_are_capped() {
        let table = [
            (Backoff::Exponential, [100, 200, 400, 800, 1000, 1000]),
            (Backoff::Linear, [100, 200, 300, 400, 500, 600]),
            (Backoff::Fixed, [100, 100, 100, 100, 100, 100]),
        ];
        for (backoff, expected) in table {
            let p = policy(backoff, 0.0);
            let got: Vec<u64> = (1..=6).map(|a| p.delay_ms(a, 0.5)).collect();
            assert_eq!(got, expected, "{backoff:?}");
        }
        assert_eq!(policy(Backoff::Exponential, 0.0).delay_ms(200, 0.0), 1000);
    }

    #[test]
    fn jitter_spreads_within_bounds_and_never_past_the_cap() {
        let p = policy(Backoff::Exponential, 0.5);
        assert_eq!(p.delay_ms(2, 0.0), 100);
        assert_eq!(p.delay_ms(2, 0.5), 200);
        assert_eq!(p.delay_ms(2, 0.999_999), 299);
        assert_eq!(p.delay_ms(5, 0.999_999), 1000);
    }

    #[test]
    fn outcome_table() {
        let p = policy(Backoff::Fixed, 0.0);
        let rows = [
            (1, true, None, Outcome::Retry { delay_ms: 100 }),
            (1, true, Some(5_000), Outcome::Retry { delay_ms: 5_000 }),
            (4, true, None, Outcome::Retry { delay_ms: 100 }),
            (5, true, None, Outcome::Exhausted),
            (6, true, Some(1), Outcome::Exhausted),
            (1, false, None, Outcome::Permanent),
            (1, false, Some(10), Outcome::Permanent),
        ];
        for (attempt, retryable, after, expected) in rows {
            assert_eq!(
                after_failure(&p, attempt, retryable, after, 0.5),
                expected,
                "attempt {attempt} retryable {retryable} after {after:?}"
            );
        }
    }

    #[test]
    fn bad_policies_name_the_problem() {
        let base = RetryPolicy::default();
        let cases = [
            (
                RetrySpec {
                    max_attempts: Some(0),
                    ..Default::default()
                },
                "max_attempts",
            ),
            (
                RetrySpec {
                    base_ms: Some(10),
                    max_ms: Some(5),
                    ..Default::default()
                },
                "base_ms",
            ),
            (
                RetrySpec {
                    jitter: Some(1.5),
                    ..Default::default()
                },
                "jitter",
            ),
            (
                RetrySpec {
                    backoff: Some("cubic".into()),
                    ..Default::default()
                },
                "backoff",
            ),
        ];
        for (spec, word) in cases {
            let err = spec.resolve(&base).unwrap_err();
            assert!(err.contains(word), "{err}");
        }
    }
}

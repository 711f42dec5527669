//! Retry and restart policies: how long a handler waits before it tries an event again, and
//! how often its actor may be restarted after a panic before the supervisor escalates.

use std::time::Duration;

/// Exponential backoff with jitter: `base * multiplier^(attempt-1)`, capped at `max`, then
/// shortened by a random fraction of at most `jitter` so that many failing handlers do not
/// retry in lock-step.
///
/// ```
/// use actorbus::Backoff;
/// use std::time::Duration;
///
/// let b = Backoff::new(Duration::from_millis(10)).multiplier(2.0).max(Duration::from_millis(50)).jitter(0.0);
/// assert_eq!(b.delay_for(1), Duration::from_millis(10));
/// assert_eq!(b.delay_for(3), Duration::from_millis(40));
/// assert_eq!(b.delay_for(9), Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    multiplier: f64,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// A backoff starting at `base`, doubling, capped at 30 s, with 20 % jitter.
    pub fn new(base: Duration) -> Self {
        Self {
            base,
            multiplier: 2.0,
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }

    /// A backoff that never waits (tests, or handlers whose failures are not load-related).
    pub fn none() -> Self {
        Self::new(Duration::ZERO).jitter(0.0)
    }

    /// Growth factor between attempts; values below 1 are treated as 1.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Upper bound of any single delay.
    pub fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Fraction (0..=1) by which a delay may be randomly shortened.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The delay before attempt `attempt + 1`, where `attempt` (1-based) is the attempt that
    /// just failed. Never more than `max`, never less than `(1 - jitter)` of the exact value.
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exact = self.exact_delay_for(attempt);
        if self.jitter == 0.0 || exact.is_zero() {
            return exact;
        }
        exact.mul_f64(1.0 - self.jitter * fastrand::f64())
    }

    /// [`delay_for`](Self::delay_for) without jitter: the upper bound of the random delay.
    pub fn exact_delay_for(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let factor = self.multiplier.powi(exponent);
        let secs = (self.base.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(10))
    }
}

/// How a handler's failing events are retried before they become dead letters.
///
/// ```
/// use actorbus::RetryPolicy;
/// use std::time::Duration;
///
/// let policy = RetryPolicy::new(5).base_delay(Duration::from_millis(1));
/// assert_eq!(policy.max_attempts(), 5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    max_attempts: u32,
    backoff: Backoff,
}

impl RetryPolicy {
    /// Up to `max_attempts` attempts per event (the first try included), default backoff.
    pub fn new(max_attempts: u32) -> Self {
        Self {
            max_attempts,
            backoff: Backoff::default(),
        }
    }

    /// One attempt: a failing event becomes a dead letter at once.
    pub fn no_retry() -> Self {
        Self::new(1)
    }

    /// Replaces the whole backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Delay after the first failure.
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.backoff.base = base;
        self
    }

    /// Growth factor between attempts.
    pub fn multiplier(mut self, multiplier: f64) -> Self {
        self.backoff = self.backoff.multiplier(multiplier);
        self
    }

    /// Upper bound of one delay.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.backoff = self.backoff.max(max);
        self
    }

    /// Fraction (0..=1) of random shortening of each delay.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.backoff = self.backoff.jitter(jitter);
        self
    }

    /// Attempts per event, the first one included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The backoff between attempts.
    pub fn backoff_policy(&self) -> &Backoff {
        &self.backoff
    }
}

impl Default for RetryPolicy {
    /// 5 attempts, 10 ms doubling up to 30 s, 20 % jitter.
    fn default() -> Self {
        Self::new(5)
    }
}

/// What the supervisor does when a handler panicked more often than its restart budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Escalation {
    /// Stop calling the handler; its undelivered events are kept as dead letters so that
    /// `EventBus::redrive` can hand them back once the handler is fixed. The rest of the bus runs on.
    #[default]
    ParkHandler,
    /// Stop the whole bus: intake closes and `publish` answers `Error::Halted`.
    StopBus,
}

/// How a handler actor is restarted after its handler panicked: after `backoff`, at most
/// `max_restarts` times within `within`, then `escalation`.
///
/// ```
/// use actorbus::{Escalation, RestartPolicy};
/// use std::time::Duration;
///
/// let policy = RestartPolicy::new(3, Duration::from_secs(60)).escalation(Escalation::StopBus);
/// assert_eq!(policy.max_restarts(), 3);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartPolicy {
    max_restarts: u32,
    within: Duration,
    backoff: Backoff,
    escalation: Escalation,
}

impl RestartPolicy {
    /// At most `max_restarts` restarts in any window of `within`; default backoff, park on escalation.
    pub fn new(max_restarts: u32, within: Duration) -> Self {
        Self {
            max_restarts,
            within,
            backoff: Backoff::new(Duration::from_millis(10)).max(Duration::from_secs(5)),
            escalation: Escalation::ParkHandler,
        }
    }

    /// Delay before each restart, growing with the restarts counted in the window.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// What happens when the budget is spent.
    pub fn escalation(mut self, escalation: Escalation) -> Self {
        self.escalation = escalation;
        self
    }

    /// Restarts allowed per window.
    pub fn max_restarts(&self) -> u32 {
        self.max_restarts
    }

    /// The window over which restarts are counted.
    pub fn within(&self) -> Duration {
        self.within
    }

    /// The backoff between restarts.
    pub fn backoff_policy(&self) -> &Backoff {
        &self.backoff
    }

    /// The configured escalation.
    pub fn escalation_policy(&self) -> Escalation {
        self.escalation
    }
}

impl Default for RestartPolicy {
    /// 10 restarts per minute, 10 ms doubling up to 5 s, then park the handler.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let b = Backoff::new(Duration::from_millis(10))
            .multiplier(3.0)
            .max(Duration::from_millis(200))
            .jitter(0.0);
        let delays: Vec<_> = (1..=5).map(|a| b.delay_for(a).as_millis()).collect();
        assert_eq!(delays, vec![10, 30, 90, 200, 200]);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let b = Backoff::new(Duration::from_millis(100))
            .multiplier(1.0)
            .jitter(0.5);
        for attempt in 1..200 {
            let d = b.delay_for(attempt);
            assert!(d <= Duration::from_millis(100), "{d:?}");
            assert!(d >= Duration::from_millis(50), "{d:?}");
        }
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let b = Backoff::new(Duration::from_secs(1))
            .multiplier(10.0)
            .max(Duration::from_secs(7));
        assert_eq!(b.exact_delay_for(u32::MAX), Duration::from_secs(7));
        assert_eq!(b.exact_delay_for(0), Duration::from_secs(1));
    }

    #[test]
    fn nonsense_settings_are_clamped() {
        let b = Backoff::new(Duration::from_millis(10))
            .multiplier(f64::NAN)
            .jitter(7.0);
        assert_eq!(b.exact_delay_for(5), Duration::from_millis(10));
        assert!(b.delay_for(1) <= Duration::from_millis(10));
    }
}

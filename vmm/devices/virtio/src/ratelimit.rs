//! Guest-triggered errors are logged, but a guest that misbehaves in a loop
//! must not be able to fill the host's disk or burn its CPU through our log.
//! No crate does exactly this for `tracing`, hence these few lines.

use std::time::{Duration, Instant};

/// Allows at most `burst` messages per `period`; counts what it dropped.
#[derive(Debug)]
pub struct RateLimitedLog {
    period: Duration,
    burst: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    pub const fn new(period: Duration, burst: u32) -> Self {
        Self {
            period,
            burst,
            window_start: None,
            in_window: 0,
            suppressed: 0,
        }
    }

    /// Returns `Some(number suppressed since the last allowed message)` if
    /// a message may be logged now, `None` if it must be dropped.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.period {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new(Duration::from_secs(1), 10)
    }
}

/// Logs a warning through a [`RateLimitedLog`].
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $limiter.allow() {
            if suppressed > 0 {
                tracing::warn!(suppressed, $($arg)+);
            } else {
                tracing::warn!($($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_drops_then_reopens_and_reports_the_drop_count() {
        let mut log = RateLimitedLog::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(log.allow_at(t0), Some(0));
        assert_eq!(log.allow_at(t0), Some(0));
        assert_eq!(log.allow_at(t0), None);
        assert_eq!(log.allow_at(t0 + Duration::from_millis(500)), None);
        assert_eq!(log.allow_at(t0 + Duration::from_secs(1)), Some(2));
    }
}

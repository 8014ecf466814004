//! Lock-free limits for the minter: the attempt budget while minting fails,
//! and an interval for repeated log lines.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Limits mint attempts across all users to `per_sec` per second, but only
/// while the last attempt failed.
///
/// The limit is a token bucket of `per_sec` attempts, refilled
/// continuously, kept as one atomic "theoretical arrival time" (the generic
/// cell rate algorithm): an attempt is allowed when taking it would put that
/// time at most one second ahead of now. Over any interval of `t` seconds at
/// most `per_sec * (1 + t)` attempts start while minting is failing.
pub(super) struct FailingMints {
    failing: AtomicBool,
    epoch: Instant,
    /// When the bucket is full again, in nanoseconds after `epoch`.
    full_at: AtomicU64,
    /// Nanoseconds one attempt adds to `full_at`.
    cost: u64,
}

impl FailingMints {
    /// `per_sec` is at least 1; config validation rejects 0.
    pub(super) fn new(per_sec: u32) -> Self {
        FailingMints {
            failing: AtomicBool::new(false),
            epoch: Instant::now(),
            full_at: AtomicU64::new(0),
            cost: NANOS_PER_SEC / u64::from(per_sec.max(1)),
        }
    }

    /// Takes one attempt from the budget. Always succeeds while minting
    /// works, and returns false when the budget is used up.
    pub(super) fn try_acquire(&self) -> bool {
        if !self.failing.load(Ordering::Acquire) {
            return true;
        }
        let now = nanos_since(self.epoch);
        self.full_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |full_at| {
                let next_full_at = full_at.max(now).saturating_add(self.cost);
                (next_full_at - now <= NANOS_PER_SEC).then_some(next_full_at)
            })
            .is_ok()
    }

    /// Records the outcome of an attempt: a failure turns the limit on, a
    /// success turns it off.
    pub(super) fn record(&self, succeeded: bool) {
        self.failing.store(!succeeded, Ordering::Release);
    }
}

/// Allows one log line per `interval` and counts the ones suppressed.
pub(super) struct LogInterval {
    interval: Duration,
    epoch: Instant,
    /// When the last line was allowed, in nanoseconds after `epoch` plus
    /// one, or 0 before the first.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogInterval {
    pub(super) fn new(interval: Duration) -> Self {
        LogInterval {
            interval,
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Returns the number of lines suppressed since the last allowed one
    /// when a line may be logged now, and `None` otherwise.
    pub(super) fn allow(&self) -> Option<u64> {
        let now = nanos_since(self.epoch).saturating_add(1);
        let interval = u64::try_from(self.interval.as_nanos()).unwrap_or(u64::MAX);
        let allowed = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                (last == 0 || now.saturating_sub(last) >= interval).then_some(now)
            })
            .is_ok();
        if allowed {
            Some(self.suppressed.swap(0, Ordering::AcqRel))
        } else {
            self.suppressed.fetch_add(1, Ordering::AcqRel);
            None
        }
    }
}

fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_applies_only_while_failing() {
        let limit = FailingMints::new(2);
        for _ in 0..10 {
            assert!(limit.try_acquire(), "no limit while minting works");
        }
        limit.record(false);
        assert!(limit.try_acquire(), "first attempt while failing");
        assert!(limit.try_acquire(), "second attempt while failing");
        assert!(!limit.try_acquire(), "the third attempt in a second waits");

        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(limit.try_acquire(), "half a second refills one attempt");
        assert!(!limit.try_acquire(), "but only one");

        limit.record(true);
        assert!(limit.try_acquire(), "a success lifts the limit");
    }

    #[tokio::test(start_paused = true)]
    async fn log_interval_allows_one_line_per_interval() {
        let interval = LogInterval::new(Duration::from_secs(60));
        assert_eq!(interval.allow(), Some(0), "the first line is logged");
        assert_eq!(interval.allow(), None);
        assert_eq!(interval.allow(), None);

        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            interval.allow(),
            Some(2),
            "reports the two suppressed lines"
        );
        assert_eq!(interval.allow(), None);
    }
}

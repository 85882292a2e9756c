//! The store's estimate of the Redis server's clock, so that most fast claims can propose a
//! fence from the server's time without asking for it.
//!
//! A reading is a `TIME` reply placed at the middle of its round trip on the local monotonic
//! clock, so it is off by at most half that round trip. An estimate made from it later adds the
//! monotonic time elapsed (immune to wall-clock steps on this machine) and allows for drift
//! between the two clocks. Readings older than [`REFRESH`] are not used.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a reading is used before the next claim reads `TIME` again.
pub(crate) const REFRESH: Duration = Duration::from_secs(1);

/// Allowed drift between this machine's monotonic clock and the server's clock: 1000 ppm,
/// twice the most NTP slews a clock.
const DRIFT_PER_MICRO: f64 = 0.001;

#[derive(Clone, Copy, Debug)]
struct Reading {
    server_micros: u64,
    at: Instant,
    uncertainty: Duration,
}

/// A fence proposal and how far it may be from the server's clock when it was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Proposal {
    pub(crate) fence: u64,
    pub(crate) error: Duration,
}

/// The latest reading; `None` until the first.
#[derive(Debug, Default)]
pub(crate) struct ServerClock {
    latest: RwLock<Option<Reading>>,
}

impl ServerClock {
    /// Records a `TIME` reply received `round_trip` after its request was sent at `sent`.
    pub(crate) fn record(&self, server_micros: u64, sent: Instant, round_trip: Duration) {
        let reading = Reading {
            server_micros,
            at: sent + round_trip / 2,
            uncertainty: round_trip / 2,
        };
        if let Ok(mut latest) = self.latest.write() {
            // Keep the more precise of two recent readings.
            if latest.is_none_or(|old| {
                old.at.elapsed() >= REFRESH / 2 || reading.uncertainty <= old.uncertainty
            }) {
                *latest = Some(reading);
            }
        }
    }

    /// A proposal from a reading younger than [`REFRESH`], for a request sent at `now`; `None`
    /// when there is none and the claim must read `TIME` itself.
    pub(crate) fn propose(&self, now: Instant) -> Option<Proposal> {
        let reading = (*self.latest.read().ok()?)?;
        let age = now.checked_duration_since(reading.at)?;
        if age >= REFRESH {
            return None;
        }
        let estimate = reading
            .server_micros
            .saturating_add(u64::try_from(age.as_micros()).unwrap_or(u64::MAX));
        let fence = next_after_last(estimate);
        let drift = Duration::from_secs_f64(age.as_secs_f64() * DRIFT_PER_MICRO);
        let ahead = Duration::from_micros(fence - estimate);
        Some(Proposal {
            fence,
            error: reading.uncertainty + drift + ahead,
        })
    }
}

/// A proposal from this machine's wall clock, used with a `TIME` read in the same round trip.
pub(crate) fn propose_from_wall_clock() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        });
    next_after_last(now)
}

/// `at_least`, or one more than the last proposal of this process if that is greater: a
/// process never proposes the same fence twice.
fn next_after_last(at_least: u64) -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = at_least.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// How far a kept fence may be from the server's clock when its claim was written, for every
/// claim whatever its lease: fences increase across claims as long as every lease is longer
/// than twice this (see "Fences" on `RedisStore`), which `MIN_LEASE` (250ms) is.
pub(crate) const MAX_FENCE_ERROR: Duration = Duration::from_millis(100);

/// Whether a fence is close enough to the server's clock to keep.
pub(crate) fn acceptable(error: Duration) -> bool {
    error <= MAX_FENCE_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposals_increase_within_the_process() {
        let mut last = propose_from_wall_clock();
        for _ in 0..10_000 {
            let next = propose_from_wall_clock();
            assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn no_proposal_without_a_recent_reading() {
        let clock = ServerClock::default();
        let now = Instant::now();
        assert_eq!(clock.propose(now), None);
        clock.record(1_000_000_000_000_000, now, Duration::from_micros(200));
        assert!(clock.propose(now + REFRESH / 2).is_some());
        assert_eq!(clock.propose(now + REFRESH * 2), None);
    }

    #[test]
    fn a_proposal_follows_the_monotonic_clock_and_bounds_its_error() {
        let clock = ServerClock::default();
        let sent = Instant::now();
        // Far in the future of any other test's proposals in this process.
        let server = 4_000_000_000_000_000;
        clock.record(server, sent, Duration::from_micros(400));
        let later = sent + Duration::from_millis(500);
        let proposal = clock.propose(later).unwrap();
        let estimate = server + 499_800;
        assert!(proposal.fence >= estimate, "{proposal:?}");
        // Half the round trip, 1000 ppm of the ~0.5s age, and any step past the last proposal.
        assert!(proposal.error >= Duration::from_micros(200 + 499));
        assert!(proposal.error < Duration::from_millis(2), "{proposal:?}");
    }

    #[test]
    fn the_error_bound_is_the_same_for_every_lease_and_fits_the_shortest_twice() {
        assert!(acceptable(MAX_FENCE_ERROR));
        assert!(!acceptable(MAX_FENCE_ERROR + Duration::from_micros(1)));
        assert!(idem_core::MIN_LEASE > MAX_FENCE_ERROR * 2);
    }
}

//! Durations: the limits every lease and retention is checked against, and deadline arithmetic
//! that cannot overflow.

use std::time::Duration;

use tokio::time::Instant;

use crate::Error;

/// The shortest lease a call may have. A lease is the time a crashed holder blocks its key, and
/// the time a store has to tell claims apart; below this, clock error between processes and
/// round trips on a loaded machine would eat it (the Redis store keeps its fencing tokens
/// increasing only for leases above twice its accepted clock error).
pub const MIN_LEASE: Duration = Duration::from_millis(250);

/// The longest lease or retention a call may have: 100 years. Longer durations overflow clocks
/// and store expiry commands.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Refuses a lease or retention that the runtime and the stores cannot honour.
pub(crate) fn check_durations(lease: Duration, retention: Duration) -> Result<(), Error> {
    let refuse = |reason: String| Err(Error::InvalidOption { reason });
    if lease < MIN_LEASE || lease > MAX_DURATION {
        return refuse(format!(
            "the lease is {lease:?}, but it must be from {MIN_LEASE:?} to {} days; \
             a lease is how long a crashed call blocks its key, so keep it a few times the \
             body's usual duration",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    if retention.is_zero() || retention > MAX_DURATION {
        return refuse(format!(
            "the retention is {retention:?}, but it must be above zero and at most {} days",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(())
}

/// `at + by`, saturating far in the future instead of overflowing.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    Instant::from_std(later_std(at.into_std(), by))
}

/// [`later`] on the standard clock (the memory store's real-time mode).
pub(crate) fn later_std(at: std::time::Instant, by: Duration) -> std::time::Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(MAX_DURATION))
        .unwrap_or(at)
}

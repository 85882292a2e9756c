//! The backend contract.

use std::time::Duration;

use async_trait::async_trait;

use crate::Error;

mod attempt;
mod memory;
mod record;

pub use memory::MemoryStore;
pub use record::{Outcome, Record, MAX_FINGERPRINT, RECORD_VERSION};

/// A fencing token: strictly increasing per key across claims. Pass it to downstream systems
/// so they can refuse writes from a stale holder (see [`crate::context`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(pub u64);

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Identifies one attempt (one call of the runtime). A claim is re-entrant for the same attempt:
/// if a claim's reply was lost and the runtime retries it, the store returns the claim that
/// attempt already holds instead of reporting it as someone else's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AttemptId(pub u128);

impl AttemptId {
    /// A new attempt id, unique within and (with overwhelming probability) across processes.
    pub fn random() -> Self {
        Self(attempt::u128())
    }
}

/// What a claim asks for.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClaimRequest<'a> {
    /// The full store key (prefix, namespace and user key; at most a few hundred bytes).
    pub key: &'a str,
    /// The attempt claiming it.
    pub attempt: AttemptId,
    /// The request fingerprint to keep with a pending claim (empty when there is none).
    pub fingerprint: &'a [u8],
    /// How long the claim lasts unless renewed.
    pub lease: Duration,
    /// How long the record will be kept once made (zero when unknown). A hint: a store may give
    /// a pending claim its final expiry up front, so that recording it later changes less.
    pub retention: Duration,
}

impl<'a> ClaimRequest<'a> {
    /// A claim request.
    pub fn new(key: &'a str, attempt: AttemptId, fingerprint: &'a [u8], lease: Duration) -> Self {
        ClaimRequest {
            key,
            attempt,
            fingerprint,
            lease,
            retention: Duration::ZERO,
        }
    }

    /// The same request, with the retention its record will have.
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The caller now holds the key (it was absent, its lease had lapsed, or this attempt already
    /// held it).
    #[non_exhaustive]
    Acquired {
        /// The fencing token of this claim.
        fence: Fence,
    },
    /// The key holds a completed record: replay it.
    #[non_exhaustive]
    Completed {
        /// The record bytes, as given to [`Store::complete`].
        record: Vec<u8>,
        /// The fence of the claim that recorded it: which execution a replay replays.
        fence: Fence,
    },
    /// An earlier call of the key ended with an unknown outcome, and the key is held
    /// ([`Store::hold`]): no call runs the body until the hold lapses or an operator resolves
    /// the key.
    #[non_exhaustive]
    Held {
        /// The fence of the call whose outcome is unknown.
        fence: Fence,
    },
    /// Another attempt holds a live claim.
    InProgress {
        /// Its fencing token (to wait for a change of state with [`Store::wait`]).
        fence: Fence,
        /// Its request fingerprint.
        fingerprint: Vec<u8>,
        /// How long its lease has left, by the store's clock.
        lease_remaining: Duration,
    },
}

impl ClaimOutcome {
    /// The caller now holds the key, under `fence`.
    pub fn acquired(fence: Fence) -> Self {
        Self::Acquired { fence }
    }

    /// The key holds `record`, recorded under `fence`.
    pub fn completed(record: Vec<u8>, fence: Fence) -> Self {
        Self::Completed { record, fence }
    }

    /// The key is held with an unknown outcome, by the call of `fence`.
    pub fn held(fence: Fence) -> Self {
        Self::Held { fence }
    }
}

/// A backend that decides, per key, who runs the effect: a per-key state machine that the store
/// runs atomically, each method one step.
///
/// ```text
///               claim (new or lapsed)              complete(fence)
///   (absent) ─────────────────────────▶ Pending ─────────────────────▶ Completed ──▶ (absent)
///       ▲                               │  │  ▲                           retention lapses
///       │          release(fence)       │  │  │ renew(fence)
///       ├───────────────────────────────┘  └──┘
///       │                               │ hold(fence)
///       │   hold lapses, or resolved    ▼
///       └─────────────────────────── Held ── resolved with a record ──▶ Completed
/// ```
///
/// * A key is **absent**, **pending** (claimed by one attempt, with a fencing token and a lease
///   that the store expires by its own clock), **completed** (holding a record until its
///   retention lapses) or **held** (its call ended with an unknown outcome: nobody runs the
///   body until the hold lapses or an operator resolves it; see [`Store::hold`] and
///   [`StoreAdmin::resolve`](crate::admin::StoreAdmin::resolve)).
/// * Every claim that is granted gets a fencing token greater than every token granted for that
///   key before (at least within the retention period), including after releases and takeovers.
/// * `complete`, `release` and `renew` apply only while the given token is the current one and the
///   key is pending; otherwise they fail with [`Error::LeaseLost`] and change nothing.
///
/// Stores move bytes only; the runtime owns the record format.
///
/// Errors: return [`Error::store`] when a command certainly did not apply,
/// [`Error::store_indeterminate`] when it may have (reply lost, timeout after sending),
/// [`Error::corrupt`] for stored data of the wrong shape, and [`Error::lease_lost`] when a
/// fencing token is not current. The runtime retries `claim`, `complete`, `release` and `renew`
/// on store errors; all are safe to repeat.
///
/// The contract test suite, `idem::testing` (feature `testing`), checks an implementation.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims `request.key`: grants a new claim if the key is absent or its lease has lapsed,
    /// returns the existing claim if `request.attempt` holds it, returns the record if it is
    /// completed, and otherwise reports it in progress.
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error>;

    /// Pending → completed: stores `record` for `retention` if `fence` is the current claim's.
    /// A store may keep it longer, up to the end of the claim's lease.
    /// Completing again with the fence that completed the key is not an error (a retried
    /// complete whose first reply was lost).
    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error>;

    /// Pending → absent: gives the key back if `fence` is the current claim's, so that a retry
    /// runs the body again. Releasing a key that is already absent with no newer claim is not an
    /// error (a retried release whose first reply was lost).
    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error>;

    /// Extends the lease of the current claim to `lease` from now, if `fence` is current.
    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error>;

    /// Pending → held: the call that holds `fence` ended with an unknown outcome (its effect
    /// may have happened). Claims get [`ClaimOutcome::Held`], and nobody runs the body, until
    /// `hold` has passed (and at least until the claim's lease would have ended), when the key
    /// is claimable as after a lapsed lease, or until an operator resolves it. Holding again
    /// with the fence that holds the key is not an error (a retried hold whose first reply was
    /// lost); with any other fence it fails with [`Error::LeaseLost`].
    ///
    /// The default renews the claim for `hold` instead: a store without a held state keeps the
    /// key in progress that long.
    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        self.renew(key, fence, hold).await
    }

    /// Waits until the claim `fence` on `key` is no longer pending (completed, released, taken
    /// over or lapsed), or until `timeout`. Returns early rather than late: callers re-claim
    /// afterwards. Stores should wake waiters on change; the default polls.
    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        let _ = (key, fence);
        tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
        Ok(())
    }
}

/// A shared store is a store: `Arc<MemoryStore>`, `Arc<dyn Store>`, ...
#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        (**self).claim(request).await
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        (**self).complete(key, fence, record, retention).await
    }

    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        (**self).release(key, fence).await
    }

    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        (**self).renew(key, fence, lease).await
    }

    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        (**self).hold(key, fence, hold).await
    }

    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        (**self).wait(key, fence, timeout).await
    }
}

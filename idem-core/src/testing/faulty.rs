//! A memory store whose operations fail on demand, for tests of what the runtime does when its
//! store fails (feature `testing`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::store::{ClaimOutcome, ClaimRequest, Fence, MemoryStore, Store};
use crate::Error;

/// A [`MemoryStore`] that refuses claims, loses leases or fails releases while the matching
/// switch is on, or answers a claim late.
#[derive(Debug, Default)]
pub struct FaultyStore {
    inner: MemoryStore,
    /// Claims fail with a store error.
    pub claims_fail: AtomicBool,
    /// Renewals report the lease lost.
    pub leases_lost: AtomicBool,
    /// Renewals fail with a store error (the lease is not lost, the store is unreachable).
    pub renewals_fail: AtomicBool,
    /// Releases fail with a store error.
    pub releases_fail: AtomicBool,
    /// The next claim's reply comes this many milliseconds after the claim was applied (a slow
    /// network or a paused process), then replies are on time again.
    pub next_claim_reply_late_ms: AtomicU64,
    /// The next claim is applied, and its reply lost (an indeterminate store error); then
    /// replies come again.
    pub next_claim_reply_lost: AtomicBool,
}

impl FaultyStore {
    /// Over `inner`, every switch off.
    pub fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            ..Self::default()
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        if self.claims_fail.load(Ordering::SeqCst) {
            return Err(Error::store("claim", "injected: connection refused"));
        }
        let outcome = self.inner.claim(request).await;
        if self.next_claim_reply_lost.swap(false, Ordering::SeqCst) {
            return Err(Error::store_indeterminate(
                "claim",
                "injected: the reply was lost",
            ));
        }
        let late = self.next_claim_reply_late_ms.swap(0, Ordering::SeqCst);
        if late > 0 {
            tokio::time::sleep(Duration::from_millis(late)).await;
        }
        outcome
    }
    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        self.inner.complete(key, fence, record, retention).await
    }
    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        if self.releases_fail.load(Ordering::SeqCst) {
            return Err(Error::store("release", "injected: connection reset"));
        }
        self.inner.release(key, fence).await
    }
    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        if self.leases_lost.load(Ordering::SeqCst) {
            return Err(Error::lease_lost(key));
        }
        if self.renewals_fail.load(Ordering::SeqCst) {
            return Err(Error::store("renew", "injected: connection refused"));
        }
        self.inner.renew(key, fence, lease).await
    }
    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        self.inner.hold(key, fence, hold).await
    }
    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        self.inner.wait(key, fence, timeout).await
    }
}

//! The oracle itself is tested: over stores that break the guarantee on purpose, it must report
//! the duplicates, divergent values and lost keys that happened. (A checker that cannot fail
//! would make every green soak meaningless.)
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idem_chaos::{workload, Spec};
use idem_core::{ClaimOutcome, ClaimRequest, Error, Fence, Idempotency, Store};

/// Grants every claim and accepts every write: no duplicate is ever stopped.
#[derive(Default)]
struct GrantsEverything {
    fences: AtomicU64,
}

#[async_trait]
impl Store for GrantsEverything {
    async fn claim(&self, _: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        let fence = Fence(self.fences.fetch_add(1, Ordering::SeqCst) + 1);
        Ok(ClaimOutcome::acquired(fence))
    }
    async fn complete(&self, _: &str, _: Fence, _: &[u8], _: Duration) -> Result<(), Error> {
        Ok(())
    }
    async fn release(&self, _: &str, _: Fence) -> Result<(), Error> {
        Ok(())
    }
    async fn renew(&self, _: &str, _: Fence, _: Duration) -> Result<(), Error> {
        Ok(())
    }
}

/// Reports every key in progress forever: nothing ever runs.
struct NeverGrants;

#[async_trait]
impl Store for NeverGrants {
    async fn claim(&self, _: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        Ok(ClaimOutcome::InProgress {
            fence: Fence(1),
            fingerprint: Vec::new(),
            lease_remaining: Duration::from_secs(1),
        })
    }
    async fn complete(&self, key: &str, _: Fence, _: &[u8], _: Duration) -> Result<(), Error> {
        Err(Error::lease_lost(key))
    }
    async fn release(&self, key: &str, _: Fence) -> Result<(), Error> {
        Err(Error::lease_lost(key))
    }
    async fn renew(&self, key: &str, _: Fence, _: Duration) -> Result<(), Error> {
        Err(Error::lease_lost(key))
    }
}

fn spec() -> Spec {
    let mut spec = Spec::small(10, 3, 7);
    spec.attempts = 3;
    spec
}

#[tokio::test(start_paused = true)]
async fn a_store_that_stops_nothing_is_caught_with_duplicates_and_divergent_values() {
    let spec = spec();
    let idem = Idempotency::new(GrantsEverything::default());
    let (report, _) = workload::run(&idem, &spec, || {}).await;
    println!("{report:?}");
    // Every delivery ran: 3 per key, and the final re-delivery once more.
    assert_eq!(report.executions, 10 * 4);
    assert_eq!(report.duplicates, 10 * 3);
    assert_eq!(report.unwarned_duplicates, 10 * 3, "no caller was warned");
    assert_eq!(report.divergent, 10, "every key got several values");
    assert_eq!(report.lost, 0);
    assert!(!report.holds() && !report.holds_but_for_warned_duplicates());
}

#[tokio::test(start_paused = true)]
async fn a_store_that_grants_nothing_is_caught_with_lost_keys() {
    let spec = spec();
    let idem = Idempotency::new(NeverGrants).with_lease(Duration::from_millis(300));
    let (report, _) = workload::run(&idem, &spec, || {}).await;
    println!("{report:?}");
    assert_eq!(report.executions, 0);
    assert_eq!(report.lost, 10);
    assert_eq!(report.ok, 0);
    assert!(!report.holds() && !report.holds_but_for_warned_duplicates());
}

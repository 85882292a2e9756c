//! The store contract suite: checks that a [`Store`] implements the state machine its docs
//! describe (feature `testing`).
//!
//! Each check is a plain async function over `&dyn Store` and a key prefix of its own, so a
//! backend can run them one by one; [`store_contract_tests!`](crate::store_contract_tests)
//! generates one `#[tokio::test]` per check:
//!
//! ```text
//! idem::testing::store_contract_tests!(async { idem::MemoryStore::new() }); // in a store's tests
//! ```
//!
//! Leases in these checks are real time (a few hundred milliseconds), because a server-side
//! store keeps its own clock. The checks are test assertions: they panic (`assert!`, `expect`)
//! on a contract violation, with a message naming it.

use std::time::Duration;

mod admin;
mod faulty;

pub use admin::{
    evict_is_fenced, inspect_reads_every_state, inspect_shows_a_foreign_record,
    list_pages_through_a_namespace, ping_answers, resolve_acts_on_held_keys_only, AdminFixture,
};
pub use faulty::FaultyStore;

use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
use crate::Error;

/// The lease used by checks that let a lease lapse.
pub const SHORT_LEASE: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(60);

/// A key no other check (or test run) uses.
pub fn unique_key(check: &str) -> String {
    format!(
        "contract:{check}:{:032x}",
        crate::store::AttemptId::random().0
    )
}

async fn claim(store: &dyn Store, key: &str, attempt: AttemptId, lease: Duration) -> ClaimOutcome {
    claim_with(store, key, attempt, b"fp", lease).await
}

async fn claim_with(
    store: &dyn Store,
    key: &str,
    attempt: AttemptId,
    fingerprint: &[u8],
    lease: Duration,
) -> ClaimOutcome {
    match store
        .claim(ClaimRequest::new(key, attempt, fingerprint, lease))
        .await
    {
        Ok(outcome) => outcome,
        Err(err) => panic!("claim of {key} failed: {err}"),
    }
}

fn acquired(outcome: ClaimOutcome) -> Fence {
    match outcome {
        ClaimOutcome::Acquired { fence, .. } => fence,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn assert_lease_lost(result: Result<(), Error>, what: &str) {
    match result {
        Err(Error::LeaseLost { .. }) => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

/// An absent key is granted; the same attempt claiming again gets the same claim back
/// (a retried claim whose reply was lost); another attempt sees it in progress.
pub async fn claim_is_granted_once_and_reentrant(store: &dyn Store, key: &str) {
    let first = AttemptId::random();
    let fence = acquired(claim(store, key, first, LONG).await);
    let again = acquired(claim(store, key, first, LONG).await);
    assert_eq!(again, fence, "the same attempt must get its own claim back");
    match claim_with(store, key, AttemptId::random(), b"other", LONG).await {
        ClaimOutcome::InProgress {
            fence: holder,
            fingerprint,
            lease_remaining,
        } => {
            assert_eq!(holder, fence);
            assert_eq!(fingerprint, b"fp", "the holder's fingerprint is reported");
            assert!(
                lease_remaining <= LONG && lease_remaining > LONG / 2,
                "{lease_remaining:?}"
            );
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
}

/// The value of a step the contract says succeeds; a failure is a contract violation, named.
fn must<T>(step: Result<T, Error>, what: &str) -> T {
    match step {
        Ok(value) => value,
        Err(err) => panic!("{what}: failed with {err} ({err:?})"),
    }
}

/// A completed key replays its exact bytes to every claim; completing again with the same
/// fence is accepted (a retried complete), with another fence refused.
pub async fn completed_key_replays_its_record(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    let record: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    must(
        store.complete(key, fence, &record, LONG).await,
        "complete by the holder",
    );
    must(
        store.complete(key, fence, &record, LONG).await,
        "a repeated complete with the same fence is accepted",
    );
    assert_lease_lost(
        store.complete(key, Fence(fence.0 + 1000), b"x", LONG).await,
        "complete with another fence",
    );
    for _ in 0..2 {
        match claim(store, key, AttemptId::random(), LONG).await {
            ClaimOutcome::Completed {
                record: replay,
                fence: recorded_by,
                ..
            } => {
                assert_eq!(replay, record);
                assert_eq!(
                    recorded_by, fence,
                    "a replay names the claim that recorded it"
                );
            }
            other => panic!("expected Completed, got {other:?}"),
        }
    }
    assert_lease_lost(
        store.release(key, fence).await,
        "release of a completed key",
    );
    assert_lease_lost(
        store.renew(key, fence, LONG).await,
        "renew of a completed key",
    );
}

/// Only the current fence may complete, release or renew; a refused write changes nothing.
pub async fn stale_fences_are_refused(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    let stale = Fence(fence.0.saturating_sub(1));
    assert_lease_lost(store.complete(key, stale, b"stale", LONG).await, "complete");
    assert_lease_lost(store.renew(key, stale, LONG).await, "renew");
    assert_lease_lost(store.release(key, stale).await, "release");
    match claim(store, key, AttemptId::random(), LONG).await {
        ClaimOutcome::InProgress { fence: holder, .. } => assert_eq!(holder, fence),
        other => panic!("refused writes must not change the key, got {other:?}"),
    }
    assert_lease_lost(
        store
            .complete("contract:never-claimed", fence, b"x", LONG)
            .await
            .map(|_| ()),
        "complete of a key never claimed",
    );
}

/// A released key can be claimed again, with a greater fence; releasing again is harmless.
pub async fn release_frees_the_key_with_a_greater_fence_next(store: &dyn Store, key: &str) {
    let first = acquired(claim(store, key, AttemptId::random(), LONG).await);
    must(store.release(key, first).await, "release by the holder");
    must(
        store.release(key, first).await,
        "a repeated release of an absent key is accepted",
    );
    let second = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(
        second > first,
        "fences must increase: {first} then {second}"
    );
    assert_lease_lost(store.release(key, first).await, "release by the old holder");
}

/// When a lease lapses, another attempt takes over with a greater fence and the old holder's
/// writes are refused.
pub async fn lapsed_lease_is_taken_over(store: &dyn Store, key: &str) {
    let old = acquired(claim(store, key, AttemptId::random(), SHORT_LEASE).await);
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    let new = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(
        new > old,
        "fences must increase across a takeover: {old} then {new}"
    );
    // A store may forget a lapsed claim before the takeover; then it is not reported as one.
    assert_lease_lost(
        store.complete(key, old, b"late", LONG).await,
        "late complete",
    );
    assert_lease_lost(store.renew(key, old, LONG).await, "late renew");
    assert_lease_lost(store.release(key, old).await, "late release");
    must(
        store.complete(key, new, b"new", LONG).await,
        "the new holder completes",
    );
}

/// A claim whose lease lapsed cannot complete, even when nobody took the key over: its record
/// could land after a takeover's body began, so the runtime never writes under a lapsed claim.
pub async fn complete_after_lapse_is_refused(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), SHORT_LEASE).await);
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    assert_lease_lost(
        store.complete(key, fence, b"late", LONG).await,
        "complete after lapse, key not taken over",
    );
    // Nothing was recorded: the next attempt claims the key.
    let next = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(next > fence, "fences must increase: {fence} then {next}");
}

/// Renewing keeps a claim alive past its first lease; the same attempt's lapsed claim cannot
/// be renewed.
pub async fn renew_extends_the_lease(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), SHORT_LEASE).await);
    for _ in 0..3 {
        tokio::time::sleep(SHORT_LEASE / 2).await;
        must(
            store.renew(key, fence, SHORT_LEASE).await,
            "renew by the holder",
        );
    }
    match claim(store, key, AttemptId::random(), LONG).await {
        ClaimOutcome::InProgress { fence: holder, .. } => assert_eq!(holder, fence),
        other => panic!("a renewed claim must still be held, got {other:?}"),
    }
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    assert_lease_lost(
        store.renew(key, fence, SHORT_LEASE).await,
        "renew after lapse",
    );
}

/// A record is kept for its retention, then the key is free again.
pub async fn records_expire_after_retention(store: &dyn Store, key: &str) {
    // The claim's lease is no longer than the retention: a store may keep a record for the
    // rest of its claim's lease (the Redis store does, for its fences).
    let fence = acquired(claim(store, key, AttemptId::random(), SHORT_LEASE).await);
    must(
        store
            .complete(key, fence, b"short-lived", SHORT_LEASE)
            .await,
        "complete",
    );
    assert!(matches!(
        claim(store, key, AttemptId::random(), LONG).await,
        ClaimOutcome::Completed { .. }
    ));
    tokio::time::sleep(SHORT_LEASE + Duration::from_millis(100)).await;
    let next = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(
        next > fence,
        "fences must increase after retention: {fence} then {next}"
    );
}

/// Fences strictly increase across a long mix of claims, releases and completions.
pub async fn fences_strictly_increase(store: &dyn Store, key: &str) {
    let mut last = Fence(0);
    for round in 0..20 {
        let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
        assert!(fence > last, "round {round}: {last} then {fence}");
        last = fence;
        must(store.release(key, fence).await, "release");
    }
}

/// Of many attempts claiming one key at once, exactly one is granted.
pub async fn concurrent_claims_grant_exactly_one(store: &dyn Store, key: &str) {
    let claims = (0..32).map(|_| claim(store, key, AttemptId::random(), LONG));
    let outcomes = futures_join_all(claims).await;
    let granted = outcomes
        .iter()
        .filter(|o| matches!(o, ClaimOutcome::Acquired { .. }))
        .count();
    assert_eq!(granted, 1, "{outcomes:?}");
}

/// `wait` returns once the awaited claim completes, well before its timeout, and at once when
/// the fence is not the current claim.
pub async fn wait_returns_when_the_claim_changes(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    let timeout = Duration::from_secs(20);
    let start = tokio::time::Instant::now();
    let waiter = store.wait(key, fence, timeout);
    let completer = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.complete(key, fence, b"done", LONG).await
    };
    let (waited, completed) = tokio::join!(waiter, completer);
    must(waited, "wait");
    must(completed, "complete");
    assert!(
        start.elapsed() < timeout / 2,
        "wait must return when the claim completes, not at its timeout"
    );
    let start = tokio::time::Instant::now();
    must(
        store.wait(key, Fence(fence.0 + 1), timeout).await,
        "wait on a fence that is not pending",
    );
    assert!(start.elapsed() < timeout / 2);
}

/// `wait` returns once the awaited claim is released, well before its timeout: the path a
/// waiting duplicate takes after the first call failed and gave the key back.
pub async fn wait_returns_when_the_claim_is_released(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), LONG).await);
    let timeout = Duration::from_secs(20);
    let start = tokio::time::Instant::now();
    let waiter = store.wait(key, fence, timeout);
    let releaser = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        store.release(key, fence).await
    };
    let (waited, released) = tokio::join!(waiter, releaser);
    must(waited, "wait");
    must(released, "release");
    assert!(
        start.elapsed() < timeout / 2,
        "wait must return when the claim is released, not at its timeout"
    );
}

/// A held key (an unknown outcome) answers every claim `Held`, whoever asks, and refuses its
/// holder's record, renewal and release; holding again with its fence is accepted (a retried
/// hold), with another fence refused; a hold shorter than the lease left lasts the lease.
pub async fn hold_keeps_every_call_out(store: &dyn Store, key: &str) {
    let holder = AttemptId::random();
    let fence = acquired(claim(store, key, holder, LONG).await);
    must(
        store.hold(key, fence, Duration::from_millis(1)).await,
        "hold",
    );
    for attempt in [holder, AttemptId::random()] {
        match claim(store, key, attempt, LONG).await {
            ClaimOutcome::Held { fence: held, .. } => assert_eq!(held, fence),
            other => panic!("a held key (held for less than its lease) answered {other:?}"),
        }
    }
    must(
        store.hold(key, fence, LONG).await,
        "a repeated hold with the same fence is accepted",
    );
    assert_lease_lost(
        store.hold(key, Fence(fence.0 + 1000), LONG).await,
        "hold with another fence",
    );
    assert_lease_lost(
        store.complete(key, fence, b"x", LONG).await,
        "complete a held key",
    );
    assert_lease_lost(store.renew(key, fence, LONG).await, "renew a held key");
    let _ = store.release(key, fence).await;
    assert!(
        matches!(
            claim(store, key, AttemptId::random(), LONG).await,
            ClaimOutcome::Held { .. }
        ),
        "a release by the holder does not free a held key"
    );
    let started = std::time::Instant::now();
    must(store.wait(key, fence, LONG).await, "wait on a held key");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a wait on a held key returns at once: nothing will change it but an operator"
    );
}

/// A hold lapses: the key is then claimable, under a greater fence.
pub async fn hold_lapses_into_a_claimable_key(store: &dyn Store, key: &str) {
    let fence = acquired(claim(store, key, AttemptId::random(), SHORT_LEASE).await);
    must(store.hold(key, fence, SHORT_LEASE * 2).await, "hold");
    tokio::time::sleep(SHORT_LEASE).await;
    assert!(
        matches!(
            claim(store, key, AttemptId::random(), LONG).await,
            ClaimOutcome::Held { .. }
        ),
        "held for its whole hold, past the lease"
    );
    tokio::time::sleep(SHORT_LEASE + SHORT_LEASE / 2).await;
    let next = acquired(claim(store, key, AttemptId::random(), LONG).await);
    assert!(
        next > fence,
        "a lapsed hold is taken over with a greater fence"
    );
}

/// Keys with any characters are distinct keys, and empty and large records round-trip.
pub async fn odd_keys_and_large_records(store: &dyn Store, key: &str) {
    let keys = [
        format!("{key}:space and\nnewline"),
        format!("{key}:{{braces}}"),
        format!("{key}:ünïcødé ✓"),
        format!("{key}:{}", "x".repeat(300)),
    ];
    let large = vec![0xA5u8; 1 << 20];
    for (i, k) in keys.iter().enumerate() {
        let fence = acquired(claim(store, k, AttemptId::random(), LONG).await);
        let record = if i == 0 { Vec::new() } else { large.clone() };
        must(store.complete(k, fence, &record, LONG).await, "complete");
        match claim(store, k, AttemptId::random(), LONG).await {
            ClaimOutcome::Completed { record: replay, .. } => assert_eq!(replay, record, "{k}"),
            other => panic!("{k}: expected Completed, got {other:?}"),
        }
    }
}

/// Joins futures without a dependency on `futures`.
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// What a contract test runs against: a store, or a fixture that owns one (and, say, the server
/// behind it, which must live as long as the test).
pub trait Fixture: Send + Sync {
    /// The store under test.
    fn store(&self) -> &dyn Store;
}

impl<S: Store> Fixture for S {
    fn store(&self) -> &dyn Store {
        self
    }
}

/// Generates one `#[tokio::test]` per contract check. `$store` is an expression whose value is
/// a future of a [`Fixture`] (a store, or something owning one), evaluated once per test; the
/// calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! store_contract_tests {
    ($store:expr) => {
        $crate::store_contract_tests!(@each $store;
            claim_is_granted_once_and_reentrant,
            completed_key_replays_its_record,
            stale_fences_are_refused,
            release_frees_the_key_with_a_greater_fence_next,
            lapsed_lease_is_taken_over,
            complete_after_lapse_is_refused,
            renew_extends_the_lease,
            records_expire_after_retention,
            fences_strictly_increase,
            concurrent_claims_grant_exactly_one,
            wait_returns_when_the_claim_changes,
            wait_returns_when_the_claim_is_released,
            odd_keys_and_large_records,
            hold_keeps_every_call_out,
            hold_lapses_into_a_claimable_key,
        );
    };
    (@each $store:expr; $($check:ident,)*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = $store.await;
                $crate::testing::$check(
                    $crate::testing::Fixture::store(&fixture),
                    &$crate::testing::unique_key(stringify!($check)),
                )
                .await;
            }
        )*
    };
}

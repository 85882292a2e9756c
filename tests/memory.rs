//! `#[idempotent]` behaviour on the in-memory store, with tokio's paused clock, plus the
//! failure paths that need a store that fails on purpose.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::behaviour::slow_with_short_lease;
use idem::store::{ClaimOutcome, ClaimRequest, Store};
use idem::{idempotent, Error, Fence, Idempotency, MemoryStore};

behaviour_tests!(
    #[tokio::test(start_paused = true)]
    async {
        Idempotency::new(MemoryStore::with_tokio_clock())
    }
);

/// The concurrency checks again on two worker threads in real time: real parallel claims.
mod parallel {
    crate::behaviour_tests!(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async {
            idem::Idempotency::new(idem::MemoryStore::new())
        }
    );
}

/// A memory store (on tokio's paused clock) whose operations fail on demand: `fail_*` counts the
/// failures still to come.
struct FailingStore {
    inner: MemoryStore,
    fail_claims: AtomicU32,
    fail_completes: AtomicU32,
    fail_renews: AtomicU32,
    completes: AtomicU32,
}

fn take_failure(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl Store for FailingStore {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        if take_failure(&self.fail_claims) {
            return Err(Error::store("claim", "injected: connection refused"));
        }
        self.inner.claim(request).await
    }
    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        self.completes.fetch_add(1, Ordering::SeqCst);
        if take_failure(&self.fail_completes) {
            return Err(Error::store_indeterminate(
                "complete",
                "injected: reply lost",
            ));
        }
        self.inner.complete(key, fence, record, retention).await
    }
    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        self.inner.release(key, fence).await
    }
    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        if take_failure(&self.fail_renews) {
            return Err(Error::store("renew", "injected: timeout"));
        }
        self.inner.renew(key, fence, lease).await
    }
    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        self.inner.wait(key, fence, timeout).await
    }
}

fn failing() -> (Arc<FailingStore>, Idempotency) {
    let store = Arc::new(FailingStore {
        inner: MemoryStore::with_tokio_clock(),
        fail_claims: AtomicU32::new(0),
        fail_completes: AtomicU32::new(0),
        fail_renews: AtomicU32::new(0),
        completes: AtomicU32::new(0),
    });
    let idem = Idempotency::from_arc(store.clone());
    (store, idem)
}

#[tokio::test(start_paused = true)]
async fn store_down_before_the_body_fails_closed() {
    let (store, idem) = failing();
    store.fail_claims.store(u32::MAX, Ordering::SeqCst);
    let runs = AtomicU32::new(0);
    let err = slow_with_short_lease(&idem, "down", &runs, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store {
                operation: "claim",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.body_may_have_run());
    assert!(err.to_string().contains("the body did not run"), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn transient_claim_failures_are_retried() {
    let (store, idem) = failing();
    store.fail_claims.store(2, Ordering::SeqCst);
    let runs = AtomicU32::new(0);
    assert_eq!(
        slow_with_short_lease(&idem, "flaky-claim", &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn record_write_is_retried_then_reported_as_not_recorded() {
    let (store, idem) = failing();
    let runs = AtomicU32::new(0);
    // Two lost replies, then success: the caller never sees them.
    store.fail_completes.store(2, Ordering::SeqCst);
    assert_eq!(
        slow_with_short_lease(&idem, "flaky-record", &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.completes.load(Ordering::SeqCst), 3);
    // A store that stays down after the body: the effect happened, the record did not.
    store.fail_completes.store(u32::MAX, Ordering::SeqCst);
    let err = slow_with_short_lease(&idem, "unrecorded", &runs, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotRecorded { .. }), "{err}");
    assert!(err.body_may_have_run() && err.is_indeterminate());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Its message and its causes say the body ran, and never the contrary; the cause is the
    // store's own error, reached through `source()`, not repeated in the message.
    let cause = std::error::Error::source(&err).expect("the store's error");
    let text = err.to_string();
    assert!(text.contains("ran and its effect happened"), "{text}");
    assert!(
        text.contains("`complete` failed, and may have applied"),
        "{text}"
    );
    assert_eq!(cause.to_string(), "injected: reply lost");
    assert!(!text.contains(&cause.to_string()), "{text}");
    assert!(
        !format!("{text}: {cause}").contains("did not run"),
        "{text}: {cause}"
    );
    // The claim is held until its lease lapses, so a duplicate does not run the body at once.
    store.fail_completes.store(0, Ordering::SeqCst);
    let retry = slow_with_short_lease(&idem, "unrecorded", &runs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(retry, 3, "after the lease lapsed the retry took over");
}

/// Regression: a record write that kept failing for longer than the store attempts used to give
/// up while the claim was still valid, leaving the effect without its record, so the next
/// delivery ran the body again. It is now retried for as long as the lease holds.
#[tokio::test(start_paused = true)]
async fn record_write_failures_within_the_lease_do_not_duplicate() {
    let (store, idem) = failing();
    store.fail_completes.store(6, Ordering::SeqCst);
    let runs = AtomicU32::new(0);
    assert_eq!(
        slow_with_short_lease(&idem, "persistent-record-failure", &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.completes.load(Ordering::SeqCst), 7);
    assert_eq!(
        slow_with_short_lease(&idem, "persistent-record-failure", &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holder_whose_renewals_failed_gets_the_result_of_the_call_that_took_over() {
    let (store, idem) = failing();
    store.fail_renews.store(u32::MAX, Ordering::SeqCst);
    let runs = Arc::new(AtomicU32::new(0));
    let first = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            slow_with_short_lease(&idem, "lapsing", &runs, Duration::from_secs(3)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The lease (1s) lapsed without renewal: a duplicate takes over and runs.
    assert_eq!(
        slow_with_short_lease(&idem, "lapsing", &runs, Duration::ZERO)
            .await
            .unwrap(),
        2
    );
    // The stale holder's own result (1) is not recorded over the new one, and its caller gets
    // the key's recorded result: one key, one result (it got `LeaseLost` before issue 20).
    assert_eq!(first.await.unwrap().unwrap(), 2);
    assert_eq!(
        slow_with_short_lease(&idem, "lapsing", &runs, Duration::ZERO)
            .await
            .unwrap(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_evicted() {
    let store = Arc::new(MemoryStore::with_tokio_clock());
    let idem = Idempotency::from_arc(store.clone()).with_retention(Duration::from_secs(10));
    let runs = AtomicU32::new(0);
    for i in 0..10_000 {
        slow_with_short_lease(&idem, &format!("k{i}"), &runs, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(store.len() >= 10_000);
    tokio::time::sleep(Duration::from_secs(11)).await;
    for i in 0..10_000 {
        slow_with_short_lease(&idem, &format!("later{}", i % 10), &runs, Duration::ZERO)
            .await
            .unwrap();
    }
    assert!(
        store.len() < 1_000,
        "expired entries were kept: {}",
        store.len()
    );
}

#[tokio::test]
async fn empty_key_is_invalid() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    let err = slow_with_short_lease(&idem, "", &runs, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[idempotent(key = id)]
async fn on_default(id: u32, runs: &AtomicU32) -> Result<u32, Error> {
    Ok(runs.fetch_add(1, Ordering::SeqCst) + id)
}

#[tokio::test]
async fn functions_without_using_share_the_default_memory_store() {
    let runs = AtomicU32::new(0);
    assert_eq!(on_default(10, &runs).await.unwrap(), 10);
    assert_eq!(on_default(10, &runs).await.unwrap(), 10);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Its records are in the default runtime's store, under the function's path: the test
    // crate `memory`, and the function's name.
    let key = idem::default_runtime()
        .store_key("memory.on_default", "10")
        .unwrap();
    assert_eq!(key, "idem:memory.on_default:10");
    assert!(
        idem::default_runtime()
            .store()
            .claim(ClaimRequest::new(
                &key,
                idem::store::AttemptId::random(),
                b"",
                Duration::from_secs(1)
            ))
            .await
            .is_ok_and(|outcome| matches!(outcome, ClaimOutcome::Completed { .. })),
        "the record is at {key}"
    );
    assert!(
        idem::install(Idempotency::new(MemoryStore::new())).is_err(),
        "already in use"
    );
}

#[idempotent(key = order, using = idem, namespace = "fingerprint-added")]
async fn before_fingerprinting(
    idem: &Idempotency,
    order: u32,
    runs: &AtomicU32,
) -> Result<u32, Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(order * 10)
}

#[idempotent(key = order, using = idem, namespace = "fingerprint-added", fingerprint = (order, cents))]
async fn after_fingerprinting(
    idem: &Idempotency,
    order: u32,
    cents: u64,
    runs: &AtomicU32,
) -> Result<u32, Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(order * 10 + u32::try_from(cents).unwrap_or(0))
}

/// Regression: adding `fingerprint = ...` to a function turned duplicates of requests recorded
/// before (with no fingerprint) into `KeyReused`, whose message tells clients to use a new key,
/// which charges them again. A record or claim without a fingerprint matches any request.
#[tokio::test(start_paused = true)]
async fn adding_a_fingerprint_keeps_older_records_replayable() {
    let idem = Idempotency::new(MemoryStore::with_tokio_clock());
    let runs = AtomicU32::new(0);
    assert_eq!(before_fingerprinting(&idem, 1, &runs).await.unwrap(), 10);
    // The new version of the function, deployed: the old record is replayed.
    assert_eq!(after_fingerprinting(&idem, 1, 5, &runs).await.unwrap(), 10);
    // And a call of the new version meets an old one still in progress: it waits for it.
    let (old, new) = tokio::join!(before_fingerprinting(&idem, 2, &runs), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after_fingerprinting(&idem, 2, 5, &runs).await
    });
    assert_eq!((old.unwrap(), new.unwrap()), (20, 20));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // Between fingerprinted requests the check holds.
    assert_eq!(after_fingerprinting(&idem, 3, 5, &runs).await.unwrap(), 35);
    assert!(matches!(
        after_fingerprinting(&idem, 3, 6, &runs).await,
        Err(Error::KeyReused { .. })
    ));
}

/// `Call::scope`: the same key of two callers is two keys (two executions, neither a
/// `KeyReused`), the same caller's retry replays, and an empty key is still refused.
#[tokio::test]
async fn scoped_keys_of_two_callers_never_meet() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    let charge = |caller: &'static str, amount: u32| {
        let call = idem::Call::new("charge", "order-1")
            .scope(caller)
            .fingerprint(&amount);
        let runs = &runs;
        idem.run(call, async move {
            Ok::<_, Error>(format!(
                "{caller} run {}",
                runs.fetch_add(1, Ordering::SeqCst) + 1
            ))
        })
    };
    assert_eq!(charge("alice", 5).await.unwrap(), "alice run 1");
    assert_eq!(charge("bob", 9).await.unwrap(), "bob run 2");
    assert_eq!(charge("alice", 5).await.unwrap(), "alice run 1");
    assert!(matches!(
        charge("alice", 6).await,
        Err(Error::KeyReused { .. })
    ));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let empty = idem::Call::new("charge", "").scope("alice");
    let refused = idem.run(empty, async { Ok::<_, Error>(1) }).await;
    assert!(
        matches!(refused, Err(Error::InvalidKey { .. })),
        "{refused:?}"
    );
}

#[idempotent(key = order, using = idem)]
async fn charge_without_fingerprint(
    idem: &Idempotency,
    order: u32,
    cents: u32,
    runs: &AtomicU32,
) -> Result<u32, Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

/// Issue 20 (a suspicion, decided as a documented rule): without `fingerprint`, the key alone
/// is the request, so another request under a used key gets the first one's result. A default
/// fingerprint of the arguments is not possible (they need not be `Serialize`, and often hold
/// `&self` or a connection), and a warning would fire on every function whose key is derived
/// from the request itself (a message id, an order id), where none is needed. The rule is in
/// `docs/reference.md` (`fingerprint` row): use one whenever a client chooses the key.
#[tokio::test(start_paused = true)]
async fn without_a_fingerprint_the_key_alone_is_the_request() {
    let idem = Idempotency::new(MemoryStore::with_tokio_clock());
    let runs = AtomicU32::new(0);
    assert_eq!(
        charge_without_fingerprint(&idem, 1, 500, &runs)
            .await
            .unwrap(),
        500
    );
    assert_eq!(
        charge_without_fingerprint(&idem, 1, 999, &runs)
            .await
            .unwrap(),
        500
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

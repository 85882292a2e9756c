//! Unknown outcomes held past their lease: every way a call can end with one (an `Err` so
//! classified, a panic, a cancellation mid-body, a lease that lapsed before the end) holds the
//! key, and no call runs the body until the hold lapses or an operator resolves the key.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::admin::{KeyState, StoreAdmin};
use idem_core::{
    Call, ClaimOutcome, ClaimRequest, Disposition, Error, Fence, Idempotency, MemoryStore, Store,
    UnknownHold,
};

const LEASE: Duration = Duration::from_millis(300);

#[derive(Debug)]
enum PayError {
    TimedOut,
    Declined,
    Idem(Error),
}

impl From<Error> for PayError {
    fn from(err: Error) -> Self {
        Self::Idem(err)
    }
}

fn runtime(store: &Arc<MemoryStore>, hold: UnknownHold) -> Idempotency {
    Idempotency::from_arc(store.clone())
        .with_lease(LEASE)
        .with_unknown_hold(hold)
}

fn classify(err: &PayError) -> Disposition {
    match err {
        PayError::TimedOut => Disposition::OutcomeUnknown,
        PayError::Declined | PayError::Idem(_) => Disposition::Release,
    }
}

/// A memory store whose releases (or claims) can be slow: the reply of a store across a network.
#[derive(Default)]
struct Slow {
    inner: MemoryStore,
    slow_release: AtomicBool,
    slow_complete: AtomicBool,
    /// The next claim is applied, then its reply is late by a second.
    slow_next_claim: AtomicBool,
    claims: AtomicUsize,
}

#[async_trait]
impl Store for Slow {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        let outcome = self.inner.claim(request).await;
        if self.slow_next_claim.swap(false, Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        outcome
    }
    async fn complete(&self, k: &str, f: Fence, r: &[u8], t: Duration) -> Result<(), Error> {
        if self.slow_complete.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.complete(k, f, r, t).await
    }
    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        if self.slow_release.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.inner.release(key, fence).await
    }
    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        self.inner.renew(key, fence, lease).await
    }
    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        self.inner.hold(key, fence, hold).await
    }
    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        self.inner.wait(key, fence, timeout).await
    }
}

/// A later call of `key`: whether it ran its body.
async fn retry(idem: &Idempotency, key: &str, runs: &AtomicUsize) -> Result<u32, PayError> {
    idem.run_with(Call::new("pay", key), classify, async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok(7)
    })
    .await
}

async fn state(store: &MemoryStore, key: &str) -> Option<KeyState> {
    let key = idem_core::key::store_key(idem_core::DEFAULT_KEY_PREFIX, "pay", key).unwrap();
    store
        .inspect(&key)
        .await
        .unwrap()
        .map(|info| info.summary.state)
}

fn is_held(result: &Result<u32, PayError>) -> bool {
    matches!(result, Err(PayError::Idem(Error::OutcomeUnknown { .. })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unknown_outcome_is_held_past_its_lease_until_resolved() {
    let store = Arc::new(MemoryStore::new());
    let idem = runtime(&store, UnknownHold::UntilResolved);
    let runs = AtomicUsize::new(0);

    // An error classified so.
    let timed_out = idem
        .run_with(Call::new("pay", "err"), classify, async {
            Err::<u32, _>(PayError::TimedOut)
        })
        .await;
    assert!(matches!(timed_out, Err(PayError::TimedOut)));
    // A panic.
    let idem_for_panic = idem.clone();
    let panicked = tokio::spawn(async move {
        idem_for_panic
            .run_with(Call::new("pay", "panic"), classify, async {
                if true {
                    panic!("the gateway client panicked (on purpose, in a test)");
                }
                Ok::<u32, PayError>(1)
            })
            .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    // A call dropped mid-body.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        idem.run_with(Call::new("pay", "cancel"), classify, async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<u32, PayError>(1)
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the call was cancelled");

    // Well past the lease: held, and no call runs the body.
    tokio::time::sleep(LEASE * 3).await;
    for key in ["err", "panic", "cancel"] {
        assert_eq!(state(&store, key).await, Some(KeyState::Unknown), "{key}");
        let again = retry(&idem, key, &runs).await;
        assert!(is_held(&again), "{key}: {again:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_for_a_while_lapses_then_the_next_call_runs_once() {
    let store = Arc::new(MemoryStore::new());
    let idem = runtime(&store, UnknownHold::For(LEASE * 3));
    let runs = AtomicUsize::new(0);
    let timed_out = idem
        .run_with(Call::new("pay", "w"), classify, async {
            Err::<u32, _>(PayError::TimedOut)
        })
        .await;
    assert!(matches!(timed_out, Err(PayError::TimedOut)));
    tokio::time::sleep(LEASE * 2).await;
    assert!(
        is_held(&retry(&idem, "w", &runs).await),
        "held past the lease"
    );
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(retry(&idem, "w", &runs).await.unwrap(), 7);
    assert_eq!(retry(&idem, "w", &runs).await.unwrap(), 7);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the hold lapsed: run once, then replayed"
    );
}

/// A body that outlives its claim (renewals stop at `max_hold`) and ends with an unknown
/// outcome: the key was free when it ended, so it is claimed afresh and held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_outlived_its_lease_still_holds_its_key() {
    let store = Arc::new(MemoryStore::new());
    let idem = runtime(&store, UnknownHold::UntilResolved).with_max_hold(LEASE);
    let runs = AtomicUsize::new(0);
    let slow = idem
        .run_with(Call::new("pay", "slow"), classify, async {
            tokio::time::sleep(LEASE * 4).await;
            Err::<u32, _>(PayError::TimedOut)
        })
        .await;
    assert!(matches!(slow, Err(PayError::TimedOut)));
    assert!(is_held(&retry(&idem, "slow", &runs).await));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A panic, a cancellation and an `Err` classified unknown, each after the claim lapsed
/// (renewals stop at `max_hold`): each holds the key under a fresh claim (a reviewer saw the
/// panic and the cancellation leave the key free, and the next delivery run the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unknown_outcome_after_a_lapsed_lease_holds_the_key() {
    let store = Arc::new(MemoryStore::new());
    let idem = runtime(&store, UnknownHold::UntilResolved).with_max_hold(LEASE);
    let for_panic = idem.clone();
    let panicked = tokio::spawn(async move {
        for_panic
            .run_with(Call::new("pay", "late-panic"), classify, async {
                tokio::time::sleep(LEASE * 4).await;
                if true {
                    panic!("a panic after the lease lapsed (on purpose, in a test)");
                }
                Ok::<u32, PayError>(1)
            })
            .await
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let cancelled = tokio::time::timeout(
        LEASE * 4,
        idem.run_with(Call::new("pay", "late-cancel"), classify, async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<u32, PayError>(1)
        }),
    )
    .await;
    assert!(cancelled.is_err());
    let errored = idem
        .run_with(Call::new("pay", "late-err"), classify, async {
            tokio::time::sleep(LEASE * 4).await;
            Err::<u32, _>(PayError::TimedOut)
        })
        .await;
    assert!(matches!(errored, Err(PayError::TimedOut)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let runs = AtomicUsize::new(0);
    for key in ["late-panic", "late-cancel", "late-err"] {
        assert_eq!(state(&store, key).await, Some(KeyState::Unknown), "{key}");
        assert!(is_held(&retry(&idem, key, &runs).await), "{key}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A call cancelled while its settling claims the lapsed key again (the claim's reply late):
/// the background finds that claim (the same attempt) and holds it, so the key is not left in
/// flight to lapse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_it_claims_again_to_hold_still_holds() {
    let store = Arc::new(Slow::default());
    let idem = Idempotency::from_arc(store.clone())
        .with_lease(LEASE)
        .with_max_hold(LEASE)
        .with_unknown_hold(UnknownHold::UntilResolved);
    let slow = store.clone();
    let cancelled = tokio::time::timeout(
        LEASE * 4 + Duration::from_millis(300),
        idem.run_with(Call::new("pay", "reclaim"), classify, async move {
            tokio::time::sleep(LEASE * 4).await;
            slow.slow_next_claim.store(true, Ordering::SeqCst);
            Err::<u32, _>(PayError::TimedOut)
        }),
    )
    .await;
    assert!(cancelled.is_err(), "cancelled during the claim");
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(
        state(&store.inner, "reclaim").await,
        Some(KeyState::Unknown)
    );
    let runs = AtomicUsize::new(0);
    assert!(is_held(&retry(&idem, "reclaim", &runs).await));
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A call cancelled while its known end is being made durable gets that end, not a hold: an
/// `Err` that releases is released (the retry runs), an `Ok` is recorded (the retry replays).
/// (A reviewer saw both held as unknown outcomes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_settling_a_known_end_gets_that_end() {
    let store = Arc::new(Slow::default());
    store.slow_release.store(true, Ordering::SeqCst);
    store.slow_complete.store(true, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store.clone())
        .with_lease(LEASE)
        .with_unknown_hold(UnknownHold::UntilResolved);
    let released = tokio::time::timeout(
        Duration::from_millis(50),
        idem.run_with(Call::new("pay", "declined"), classify, async {
            Err::<u32, _>(PayError::Declined)
        }),
    )
    .await;
    assert!(released.is_err(), "cancelled while releasing");
    let recorded = tokio::time::timeout(
        Duration::from_millis(50),
        idem.run_with(Call::new("pay", "paid"), classify, async {
            Ok::<u32, PayError>(5)
        }),
    )
    .await;
    assert!(recorded.is_err(), "cancelled while recording");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state(&store.inner, "declined").await, None, "released");
    assert_eq!(state(&store.inner, "paid").await, Some(KeyState::Completed));
    let runs = AtomicUsize::new(0);
    assert_eq!(retry(&idem, "declined", &runs).await.unwrap(), 7);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the released key runs again"
    );
    let replay = idem
        .run_with(Call::new("pay", "paid"), classify, async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, PayError>(0)
        })
        .await;
    assert_eq!(replay.unwrap(), 5, "the recorded result replays");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

//! Unknown outcomes held past their lease: every way a call can end with one (an `Err` so
//! classified, a panic, a cancellation mid-body, a lease that lapsed before the end) holds the
//! key, and no call runs the body until the hold lapses or an operator resolves the key.
#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem_core::admin::{KeyState, StoreAdmin};
use idem_core::{Call, Disposition, Error, Idempotency, MemoryStore, UnknownHold};

const LEASE: Duration = Duration::from_millis(300);

#[derive(Debug)]
enum PayError {
    TimedOut,
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
        PayError::Idem(_) => Disposition::Release,
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

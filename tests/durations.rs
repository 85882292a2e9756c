//! Zero, tiny and extreme durations are refused before the body runs, never a panic; and the
//! process-wide default store is not moved by another runtime's paused clock.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::store::{AttemptId, ClaimRequest};
use idem::{idempotent, Call, Error, Idempotency, MemoryStore};

async fn count(runs: &AtomicU32) -> Result<u32, Error> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(execution)
}

fn assert_invalid_option(result: Result<u32, Error>, what: &str) {
    match result {
        Err(err @ Error::InvalidOption { .. }) => {
            assert!(!err.body_may_have_run());
            assert!(err.to_string().contains(what), "{err}");
        }
        other => panic!("expected InvalidOption about {what}, got {other:?}"),
    }
}

/// Regression: a zero lease let four concurrent calls all run the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_lease_is_refused_before_the_body_runs() {
    let idem = Idempotency::new(MemoryStore::new()).with_lease(Duration::ZERO);
    let runs = Arc::new(AtomicU32::new(0));
    let calls = (0..4).map(|_| {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move { idem.run(Call::new("zero", "k"), count(&runs)).await })
    });
    for call in calls {
        assert_invalid_option(call.await.unwrap(), "lease");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // Per call too, and a lease below the floor.
    let idem = Idempotency::new(MemoryStore::new());
    for lease in [
        Duration::ZERO,
        Duration::from_millis(1),
        idem::MIN_LEASE / 2,
    ] {
        let call = Call::new("tiny", "k").lease(lease);
        assert_invalid_option(idem.run(call, count(&runs)).await, "lease");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// Regression: `retention(Duration::MAX)` panicked ("overflow when adding duration to instant")
/// after the body ran, and `lease(Duration::MAX)` panicked in the claim.
#[tokio::test]
async fn extreme_durations_are_refused_not_a_panic() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicU32::new(0);
    let call = Call::new("max", "retention").retention(Duration::MAX);
    assert_invalid_option(idem.run(call, count(&runs)).await, "retention");
    let call = Call::new("max", "lease").lease(Duration::MAX);
    assert_invalid_option(idem.run(call, count(&runs)).await, "lease");
    let call = Call::new("zero", "retention").retention(Duration::ZERO);
    assert_invalid_option(idem.run(call, count(&runs)).await, "retention");
    let idem = idem.with_retention(Duration::MAX);
    assert_invalid_option(
        idem.run(Call::new("max", "k"), count(&runs)).await,
        "retention",
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // The longest accepted durations work.
    let idem = Idempotency::new(MemoryStore::new());
    let call = Call::new("max", "ok")
        .retention(idem::MAX_DURATION)
        .lease(idem::MAX_DURATION);
    assert_eq!(idem.run(call, count(&runs)).await.unwrap(), 1);
}

/// A store used directly with extreme durations saturates instead of panicking.
#[tokio::test]
async fn the_memory_store_saturates_extreme_durations() {
    use idem::store::{ClaimOutcome, Store};
    let store = MemoryStore::new();
    let claim = ClaimRequest::new("k", AttemptId::random(), b"", Duration::MAX);
    let Ok(ClaimOutcome::Acquired { fence, .. }) = store.claim(claim).await else {
        panic!("a fresh key is acquired");
    };
    store.renew("k", fence, Duration::MAX).await.unwrap();
    store
        .complete("k", fence, b"r", Duration::MAX)
        .await
        .unwrap();
    let again = ClaimRequest::new("k", AttemptId::random(), b"", Duration::MAX);
    assert!(matches!(
        store.claim(again).await,
        Ok(ClaimOutcome::Completed { .. })
    ));
}

static DEFAULT_RUNS: AtomicU32 = AtomicU32::new(0);

#[idempotent(key = id)]
async fn on_the_default_runtime(id: u32) -> Result<u32, Error> {
    Ok(DEFAULT_RUNS.fetch_add(1, Ordering::SeqCst) + id)
}

/// Regression: a test runtime with a paused clock, advanced 25 hours, swept the live records
/// of every other runtime sharing the process-wide default memory store.
#[test]
fn a_paused_clock_in_one_runtime_does_not_expire_another_runtimes_records() {
    let real = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(real.block_on(on_the_default_runtime(7)).unwrap(), 7);

    std::thread::spawn(|| {
        let paused = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        paused.block_on(async {
            tokio::time::advance(Duration::from_secs(25 * 3600)).await;
            // Enough operations for the store to sweep every shard several times.
            let store = idem::default_runtime().store();
            for i in 0..20_000 {
                let key = format!("paused-{i}");
                let request = ClaimRequest::new(&key, AttemptId::random(), b"", idem::MIN_LEASE);
                store.claim(request).await.unwrap();
            }
        });
    })
    .join()
    .unwrap();

    // Still recorded: replayed, not run again.
    assert_eq!(real.block_on(on_the_default_runtime(7)).unwrap(), 7);
    assert_eq!(DEFAULT_RUNS.load(Ordering::SeqCst), 1);
}

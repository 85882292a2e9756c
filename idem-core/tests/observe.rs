//! What a call tells the outside: the observer hook and the `tracing` span see the outcome of
//! each path (executed, replayed, waited, in progress, key reused, released, outcome unknown,
//! lease lost, store error, corrupt), and never the raw key.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::testing::FaultyStore;
use idem_core::{
    Call, CallOutcome, CallReport, Disposition, Error, Fence, Idempotency, MemoryStore, Observer,
    OnInProgress, Started,
};

/// Every report, in order.
#[derive(Default)]
struct Reports(Mutex<Vec<(CallOutcome, String, Option<Fence>)>>);

impl Observer for Reports {
    fn call_finished(&self, report: &CallReport<'_>) {
        self.0
            .lock()
            .unwrap()
            .push((report.outcome, report.key_hash.to_owned(), report.fence));
    }
}

impl Reports {
    fn outcomes(&self) -> Vec<CallOutcome> {
        self.0.lock().unwrap().iter().map(|r| r.0).collect()
    }
    fn last(&self) -> (CallOutcome, String, Option<Fence>) {
        self.0.lock().unwrap().last().cloned().unwrap()
    }
}

fn observed() -> (Arc<Reports>, Arc<FaultyStore>, Idempotency) {
    let reports = Arc::new(Reports::default());
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let idem = Idempotency::from_arc(store.clone())
        .with_store_attempts(1)
        .with_observer(reports.clone());
    (reports, store, idem)
}

fn ok(value: u32) -> Result<u32, Error> {
    Ok(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_reports_its_outcome() {
    let (reports, store, idem) = observed();
    let call = |key: &str| Call::new("observed", key).on_in_progress(OnInProgress::Reject);

    let call_a = || call("a").fingerprint(&"first");
    idem.run(call_a(), async { ok(1) }).await.unwrap();
    let (outcome, hash, fence) = reports.last();
    assert_eq!(outcome, CallOutcome::Executed);
    assert!(fence.is_some(), "an execution holds a fence");
    assert_eq!(hash.len(), 16);
    assert!(
        hash.chars().all(|c| c.is_ascii_hexdigit()),
        "a hash, not the key: {hash}"
    );

    idem.run(call_a(), async { ok(2) }).await.unwrap();
    assert_eq!(reports.last().0, CallOutcome::Replayed);
    assert_eq!(reports.last().1, hash, "one key, one hash");

    // Another request under the same key.
    let reused = idem
        .run(call("a").fingerprint(&"other"), async { ok(3) })
        .await;
    assert!(matches!(reused, Err(Error::KeyReused { .. })));
    assert_eq!(reports.last().0, CallOutcome::KeyReused);

    // A duplicate while the first runs: in progress (reject), or waited.
    let slow = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.run(call("b"), async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                ok(4)
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(idem.run(call("b"), async { ok(5) }).await.is_err());
    assert_eq!(reports.last().0, CallOutcome::InProgress);
    let waited = idem
        .run(call("b").on_in_progress(OnInProgress::Wait), async {
            ok(6)
        })
        .await
        .unwrap();
    assert_eq!(waited, 4);
    slow.await.unwrap().unwrap();
    assert!(reports.outcomes().contains(&CallOutcome::Waited));

    // Errors: released, or an unknown outcome.
    let failed = idem
        .run(call("c"), async {
            Err::<u32, _>(Error::invalid_key("refused"))
        })
        .await;
    assert!(failed.is_err());
    assert_eq!(reports.last().0, CallOutcome::Released);
    let unknown = idem
        .run_with(call("d"), |_: &Error| Disposition::OutcomeUnknown, async {
            Err::<u32, _>(Error::invalid_key("timeout"))
        })
        .await;
    assert!(unknown.is_err());
    assert_eq!(reports.last().0, CallOutcome::OutcomeUnknown);

    // A panic, and a cancellation mid-body: unknown outcomes too.
    let panicked = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.run(call("e"), async {
                if true {
                    panic!("on purpose, in a test");
                }
                ok(7)
            })
            .await
        })
    };
    assert!(panicked.await.is_err());
    assert_eq!(reports.last().0, CallOutcome::OutcomeUnknown);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        idem.run(call("f"), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ok(8)
        }),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(reports.last().0, CallOutcome::OutcomeUnknown);

    // The store fails before the body.
    store.claims_fail.store(true, Ordering::SeqCst);
    assert!(idem.run(call("g"), async { ok(9) }).await.is_err());
    assert_eq!(reports.last().0, CallOutcome::StoreError);
    store.claims_fail.store(false, Ordering::SeqCst);

    // The lease is lost while the body runs, and another call holds the key when it ends (a
    // key still free would take the record under a fresh claim).
    store.leases_lost.store(true, Ordering::SeqCst);
    let took_over = std::sync::Mutex::new(None);
    let lost = idem
        .run(call("h").lease(Duration::from_millis(300)), async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let taken = idem.start::<u32>(call("h")).await;
            *took_over.lock().unwrap() = Some(taken);
            ok(10)
        })
        .await;
    assert!(matches!(lost, Err(Error::LeaseLost { .. })), "{lost:?}");
    assert_eq!(reports.last().0, CallOutcome::LeaseLost);
    store.leases_lost.store(false, Ordering::SeqCst);
    assert!(matches!(
        took_over.lock().unwrap().take(),
        Some(Ok(Started::Claimed(_)))
    ));

    // A record that does not decode as the function's type.
    idem.run(call("i"), async { Ok::<_, Error>("text".to_owned()) })
        .await
        .unwrap();
    assert!(idem.run(call("i"), async { ok(11) }).await.is_err());
    assert_eq!(reports.last().0, CallOutcome::Corrupt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_step_calls_report_once_each() {
    let (reports, _, idem) = observed();
    let call = || Call::new("observed", "two-step");
    let Started::Claimed(claimed) = idem.start::<u32>(call()).await.unwrap() else {
        panic!("a new key is claimed")
    };
    assert!(reports.outcomes().is_empty(), "nothing ended yet");
    claimed
        .run_with(|_: &Error| Disposition::Release, async { ok(1) })
        .await
        .unwrap();
    assert_eq!(reports.outcomes(), [CallOutcome::Executed]);
    assert!(matches!(
        idem.start::<u32>(call()).await.unwrap(),
        Started::Recorded(1, _)
    ));
    assert_eq!(reports.last().0, CallOutcome::Replayed);
    // A claim dropped unrun keeps its key: an unknown outcome.
    let Started::Claimed(dropped) = idem
        .start::<u32>(Call::new("observed", "dropped"))
        .await
        .unwrap()
    else {
        panic!("a new key is claimed")
    };
    drop(dropped);
    assert_eq!(reports.last().0, CallOutcome::OutcomeUnknown);
    assert_eq!(reports.outcomes().len(), 3);
}

/// A claim run after its lease lapsed (another call took over meanwhile) does not run its body:
/// it is `ClaimLapsed` (nothing ran; retry), and the effect happens once.
#[tokio::test(start_paused = true)]
async fn a_claim_run_after_its_lease_lapsed_does_not_run() {
    let idem = Idempotency::new(MemoryStore::with_tokio_clock());
    let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let call = || Call::new("late", "order-1").lease(Duration::from_millis(300));
    let Started::Claimed(claimed) = idem.start::<u32>(call()).await.unwrap() else {
        panic!("a new key is claimed")
    };
    // The task that was to run it waited longer than a lease.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counted = runs.clone();
    let takeover = idem
        .run(call(), async move {
            ok(counted.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await;
    assert_eq!(takeover.unwrap(), 1);
    let counted = runs.clone();
    let late = claimed
        .run_with(|_: &Error| Disposition::Release, async move {
            ok(counted.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await;
    // The body did not run: not `LeaseLost`, which says its effect may have happened.
    assert!(matches!(late, Err(Error::ClaimLapsed { .. })), "{late:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the effect ran twice");
}

/// A claim run late but still valid is renewed before its body starts.
#[tokio::test(start_paused = true)]
async fn a_claim_run_late_but_valid_is_renewed_first() {
    let idem = Idempotency::new(MemoryStore::with_tokio_clock());
    let call = || {
        Call::new("late", "order-2")
            .lease(Duration::from_millis(300))
            .on_in_progress(OnInProgress::Reject)
    };
    let Started::Claimed(claimed) = idem.start::<u32>(call()).await.unwrap() else {
        panic!("a new key is claimed")
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    let body = tokio::spawn(async move {
        claimed
            .run_with(|_: &Error| Disposition::Release, async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                ok(1)
            })
            .await
    });
    // Past the first claim's lease: held only because it was renewed before the body.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        idem.start::<u32>(call()).await,
        Err(Error::InProgress { .. })
    ));
    assert_eq!(body.await.unwrap().unwrap(), 1);
}

/// A call cancelled while it waits for another is reported (`cancelled`), not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cancelled_while_waiting_is_reported() {
    let (reports, _, idem) = observed();
    let call = || Call::new("observed", "waiting").on_in_progress(OnInProgress::Wait);
    let Started::Claimed(holder) = idem.start::<u32>(call()).await.unwrap() else {
        panic!("a new key is claimed")
    };
    let waiting = tokio::time::timeout(
        Duration::from_millis(100),
        idem.run(call(), async { ok(1) }),
    );
    assert!(waiting.await.is_err(), "cancelled by the timeout");
    assert_eq!(reports.outcomes(), [CallOutcome::Cancelled]);
    drop(holder);
}

struct PanickingObserver;

impl Observer for PanickingObserver {
    fn call_finished(&self, _: &CallReport<'_>) {
        panic!("an observer with a bug (on purpose, in a test)");
    }
}

/// An observer that panics neither aborts the process (while a body's panic unwinds) nor turns
/// a finished call into a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_observer_is_contained() {
    let idem = Idempotency::new(MemoryStore::new()).with_observer(Arc::new(PanickingObserver));
    let value = idem
        .run(Call::new("observed", "panicking-observer"), async { ok(1) })
        .await;
    assert_eq!(value.unwrap(), 1);
    let body_panic = {
        let idem = idem.clone();
        tokio::spawn(async move {
            idem.run(Call::new("observed", "panicking-body"), async {
                if true {
                    panic!("the body panics (on purpose, in a test)");
                }
                ok(2)
            })
            .await
        })
    };
    // The body's panic reaches its task as a panic: the process did not abort.
    assert!(body_panic.await.unwrap_err().is_panic());
}

/// A call's future does nothing until polled: dropped unpolled, it reports nothing and claims
/// nothing.
#[tokio::test]
async fn a_call_never_polled_reports_and_claims_nothing() {
    let (reports, _store, idem) = observed();
    let unpolled = idem.run(Call::new("observed", "never"), async { ok(1) });
    drop(unpolled);
    assert!(reports.outcomes().is_empty(), "{:?}", reports.outcomes());
    let again = idem
        .run(
            Call::new("observed", "never").on_in_progress(OnInProgress::Reject),
            async { ok(2) },
        )
        .await;
    assert_eq!(again.unwrap(), 2, "the key was never claimed");
    assert_eq!(reports.outcomes(), [CallOutcome::Executed]);
}

/// A call's future is `Send` when its body and its error policy are, without asking `Sync` of
/// either (a policy that counts in a `Cell`, a body that holds one).
#[test]
fn calls_are_send_without_asking_sync() {
    fn assert_send<T: Send>(_: &T) {}
    let idem = Idempotency::new(MemoryStore::new());
    let seen = std::cell::Cell::new(0u32);
    let on_error = move |_: &Error| {
        seen.set(seen.get() + 1);
        Disposition::Release
    };
    let held = std::cell::Cell::new(1u32);
    let call = idem.run_with(Call::new("send", "k"), on_error, async move {
        tokio::task::yield_now().await;
        ok(held.get())
    });
    assert_send(&call);
}

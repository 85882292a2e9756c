//! Behaviour checks of `#[idempotent]` over any store, counting executions of real bodies.
//!
//! Each check takes the runtime under test and uses keys of its own. Time is `tokio::time`:
//! the memory store runs these with a paused clock, a server-side store in real time (so leases
//! here are short).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use idem::{idempotent, Error, Idempotency};
use serde::{Deserialize, Serialize};

/// A unique key per check and run, so checks can share a store.
pub fn key(check: &str) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{check}-{:016x}", hasher.finish())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub order: String,
    pub cents: u64,
    pub execution: u32,
}

/// A business error that is recorded with `record_errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Declined {
    Insufficient { execution: u32 },
    Idem(String),
}

impl From<Error> for Declined {
    fn from(err: Error) -> Self {
        Self::Idem(err.to_string())
    }
}

// Pinned, so that checks can plant records under its keys.
#[idempotent(key = order, using = idem, namespace = "charge")]
async fn charge(
    idem: &Idempotency,
    order: &str,
    cents: u64,
    runs: &AtomicU32,
    work: Duration,
) -> Result<Receipt, Error> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(work).await;
    Ok(Receipt {
        order: order.to_owned(),
        cents,
        execution,
    })
}

/// The body shared by the functions below, which differ only in their options: counts its
/// execution, works for `work`, returns the execution number.
async fn count_and_work(runs: &AtomicU32, work: Duration) -> Result<u32, Error> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(work).await;
    Ok(execution)
}

#[idempotent(key = order, using = idem, on_in_progress = reject)]
async fn charge_rejecting(
    idem: &Idempotency,
    order: &str,
    runs: &AtomicU32,
    work: Duration,
) -> Result<u32, Error> {
    count_and_work(runs, work).await
}

#[derive(Serialize)]
struct ChargeRequest<'a> {
    order: &'a str,
    cents: u64,
}

#[idempotent(key = order, using = idem, fingerprint = ChargeRequest { order, cents })]
async fn charge_fingerprinted(
    idem: &Idempotency,
    order: &str,
    cents: u64,
    runs: &AtomicU32,
) -> Result<u64, Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    Ok(cents)
}

/// `charge_fingerprinted` with a body that takes `work`.
#[idempotent(key = order, using = idem, lease = "1s", fingerprint = ChargeRequest { order, cents })]
async fn charge_fingerprinted_slowly(
    idem: &Idempotency,
    order: &str,
    cents: u64,
    runs: &AtomicU32,
    work: Duration,
) -> Result<u64, Error> {
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(work).await;
    Ok(cents)
}

#[idempotent(key = order, using = idem)]
async fn fail_first(idem: &Idempotency, order: &str, runs: &AtomicU32) -> Result<u32, Error> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if execution == 1 {
        return Err(Error::store("body", "simulated failure"));
    }
    Ok(execution)
}

#[idempotent(key = order, using = idem, record_errors)]
async fn decline(idem: &Idempotency, order: &str, runs: &AtomicU32) -> Result<u32, Declined> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    Err(Declined::Insufficient { execution })
}

#[idempotent(key = order, using = idem, lease = "1s", namespace = "panic_first")]
async fn panic_first(idem: &Idempotency, order: &str, runs: Arc<AtomicU32>) -> Result<u32, Error> {
    let execution = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if execution == 1 {
        panic!("simulated panic in the body");
    }
    Ok(execution)
}

/// Counts its execution, works for `work`, returns the execution number; 1s lease. Its namespace
/// is pinned so that `slow_rejecting` shares it.
#[idempotent(key = order, using = idem, lease = "1s", namespace = "slow_with_short_lease")]
pub async fn slow_with_short_lease(
    idem: &Idempotency,
    order: &str,
    runs: &AtomicU32,
    work: Duration,
) -> Result<u32, Error> {
    count_and_work(runs, work).await
}

/// The same function's namespace, rejecting duplicates instead of waiting.
#[idempotent(key = order, using = idem, lease = "1s", namespace = "slow_with_short_lease", on_in_progress = reject)]
async fn slow_rejecting(idem: &Idempotency, order: &str, runs: &AtomicU32) -> Result<u32, Error> {
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

// The lease is no longer than the retention: the Redis store keeps a record at least until its
// claim's lease would have ended.
#[idempotent(key = order, using = idem, ttl = "2s", lease = "2s")]
async fn short_retention(idem: &Idempotency, order: &str, runs: &AtomicU32) -> Result<u32, Error> {
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

#[idempotent(key = order, using = idem)]
async fn fence_of(
    idem: &Idempotency,
    order: &str,
    fail: bool,
    seen: &std::sync::Mutex<Vec<u64>>,
) -> Result<u64, Error> {
    let context = idem::context().expect("a body has a claim context");
    assert!(context.key.ends_with(order), "{} for {order}", context.key);
    seen.lock().unwrap().push(context.fence.0);
    if fail {
        return Err(Error::store("body", "release me"));
    }
    Ok(context.fence.0)
}

/// Sequential duplicates run the body once and all return the first result.
pub async fn sequential_duplicates_run_once(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("sequential");
    let first = charge(idem, &order, 1250, &runs, Duration::ZERO)
        .await
        .unwrap();
    for _ in 0..5 {
        let again = charge(idem, &order, 1250, &runs, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(first.execution, 1);
}

/// 64 concurrent duplicates: the body runs once and every caller gets its value.
pub async fn concurrent_duplicates_wait_and_share_one_result(idem: &Idempotency) {
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("concurrent");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (idem, runs, order) = (idem.clone(), runs.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            charge(&idem, &order, 990, &runs, Duration::from_millis(200)).await
        }));
    }
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap().unwrap());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(results.iter().all(|r| *r == results[0]), "{results:?}");
}

/// With `on_in_progress = reject`, concurrent duplicates get `InProgress` while one runs.
pub async fn concurrent_duplicates_are_rejected_in_reject_mode(idem: &Idempotency) {
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("reject");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (idem, runs, order) = (idem.clone(), runs.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            charge_rejecting(&idem, &order, &runs, Duration::from_millis(500)).await
        }));
    }
    let (mut ok, mut in_progress) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(execution) => {
                assert_eq!(execution, 1);
                ok += 1;
            }
            Err(Error::InProgress { .. }) => in_progress += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        ok >= 1 && ok + in_progress == 64,
        "ok {ok}, in progress {in_progress}"
    );
    assert!(
        in_progress > 0,
        "some duplicates must overlap the 500ms body"
    );
    // Once completed, the duplicates' retry is a replay.
    assert_eq!(
        charge_rejecting(idem, &order, &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
}

/// A duplicate with `WaitAtMost` waits that long for the first call, then gets `InProgress`
/// with the holder's lease remaining (an HTTP layer's `Retry-After`); a longer wait replays.
pub async fn bounded_waits_give_up_with_the_lease_remaining(idem: &Idempotency) {
    use idem::{Call, OnInProgress};
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("bounded-wait");
    let lease = Duration::from_secs(10);
    let call = |mode| {
        Call::new("bounded", &order)
            .lease(lease)
            .on_in_progress(mode)
    };
    let first = {
        let (idem, runs, call) = (idem.clone(), runs.clone(), call(OnInProgress::Reject));
        tokio::spawn(async move {
            idem.run(call, count_and_work(&runs, Duration::from_millis(1500)))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = tokio::time::Instant::now();
    let gave_up = idem
        .run(
            call(OnInProgress::WaitAtMost(Duration::from_millis(300))),
            count_and_work(&runs, Duration::ZERO),
        )
        .await;
    let waited = started.elapsed();
    match gave_up {
        Err(Error::InProgress {
            lease_remaining: Some(remaining),
            ..
        }) => assert!(
            remaining > Duration::from_secs(5) && remaining <= lease,
            "lease remaining {remaining:?} of a {lease:?} lease renewed every third"
        ),
        other => panic!("expected InProgress with the lease remaining, got {other:?}"),
    }
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1200),
        "waited {waited:?} for a bound of 300ms"
    );
    let replayed = idem
        .run(
            call(OnInProgress::WaitAtMost(Duration::from_secs(5))),
            count_and_work(&runs, Duration::ZERO),
        )
        .await
        .unwrap();
    assert_eq!(first.await.unwrap().unwrap(), replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `start` then `Claimed::run_with`: the claim and the body in two steps (the body on a task of
/// its own), a duplicate meanwhile is in progress, and a later one gets the record; a claim
/// dropped unrun frees its key.
pub async fn two_step_calls_claim_then_run(idem: &Idempotency) {
    use idem::steps::Started;
    use idem::{Call, OnInProgress, Served};
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("two-step");
    let call = || Call::new("two-step", &order).on_in_progress(OnInProgress::Reject);
    let claimed = match idem.start::<u32>(call()).await.unwrap() {
        Started::Claimed(claimed) => claimed,
        other => panic!("a new key must be claimed, got {other:?}"),
    };
    let body = {
        let runs = runs.clone();
        tokio::spawn(async move {
            claimed
                .run_with(|_: &Error| idem::Disposition::Release, async move {
                    count_and_work(&runs, Duration::from_millis(300)).await
                })
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(
        idem.start::<u32>(call()).await,
        Err(Error::InProgress { .. })
    ));
    assert_eq!(body.await.unwrap().unwrap(), 1);
    match idem.start::<u32>(call()).await.unwrap() {
        Started::Recorded(value, Served::Replayed) => assert_eq!(value, 1),
        other => panic!("a completed key must replay, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    // Dropped unrun, a claim is released in the background: no body ran, so its key is free
    // long before its 30 s lease (it blocked the key for the whole lease before issue 20).
    let dropped = key("two-step-dropped");
    let call = || {
        Call::new("two-step", &dropped)
            .lease(Duration::from_secs(30))
            .on_in_progress(OnInProgress::Reject)
    };
    drop(idem.start::<u32>(call()).await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match idem.start::<u32>(call()).await {
            Ok(Started::Claimed(_)) => break,
            Err(Error::InProgress { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a claim dropped unrun still holds its key: {other:?}"),
        }
    }
}

/// The same key with another fingerprint is refused without running the body.
pub async fn fingerprint_mismatch_is_key_reused(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("fingerprint");
    assert_eq!(
        charge_fingerprinted(idem, &order, 100, &runs)
            .await
            .unwrap(),
        100
    );
    assert_eq!(
        charge_fingerprinted(idem, &order, 100, &runs)
            .await
            .unwrap(),
        100
    );
    match charge_fingerprinted(idem, &order, 999, &runs).await {
        Err(Error::KeyReused { .. }) => {}
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Another request with a key in progress is refused at once as `KeyReused`: it neither waits
/// for nor is given the first request's result.
pub async fn fingerprint_mismatch_in_progress_is_key_reused(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("fingerprint-in-progress");
    let first = charge_fingerprinted_slowly(idem, &order, 100, &runs, Duration::from_millis(600));
    let other = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = tokio::time::Instant::now();
        let other = charge_fingerprinted_slowly(idem, &order, 999, &runs, Duration::ZERO).await;
        (other, started.elapsed())
    };
    let (first, (other, waited)) = tokio::join!(first, other);
    assert_eq!(first.unwrap(), 100);
    match other {
        Err(Error::KeyReused { .. }) => {}
        other => panic!("expected KeyReused while the first runs, got {other:?}"),
    }
    assert!(
        waited < Duration::from_millis(400),
        "it did not wait: {waited:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// An `Err` releases the claim: a retry runs the body again and its `Ok` is then recorded.
pub async fn errors_release_and_retry_runs_again(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("error");
    assert!(fail_first(idem, &order, &runs).await.is_err());
    assert_eq!(fail_first(idem, &order, &runs).await.unwrap(), 2);
    assert_eq!(fail_first(idem, &order, &runs).await.unwrap(), 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// With `record_errors`, the `Err` is recorded and replayed.
pub async fn recorded_errors_are_replayed(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("record-errors");
    let first = decline(idem, &order, &runs).await.unwrap_err();
    assert_eq!(first, Declined::Insufficient { execution: 1 });
    assert_eq!(decline(idem, &order, &runs).await.unwrap_err(), first);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `panic_first`'s namespace, rejecting duplicates instead of waiting.
#[idempotent(key = order, using = idem, lease = "1s", namespace = "panic_first", on_in_progress = reject)]
async fn panic_first_rejecting(idem: &Idempotency, order: &str) -> Result<u32, Error> {
    Ok(0)
}

/// A panic is an unknown outcome: the panic resumes in the caller and the claim is kept until
/// its lease lapses (as after a cancellation); then the next call takes over.
pub async fn panics_keep_the_claim_until_the_lease_lapses(idem: &Idempotency) {
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("panic");
    // Before the claim, so that its lease cannot end earlier than a lease from here.
    let started = tokio::time::Instant::now();
    let task = {
        let (idem, order, runs) = (idem.clone(), order.clone(), runs.clone());
        tokio::spawn(async move { panic_first(&idem, &order, runs).await })
    };
    let err = task.await.unwrap_err();
    assert!(err.is_panic(), "the panic resumes in the caller");
    match panic_first_rejecting(idem, &order).await {
        Err(Error::InProgress { .. }) => {}
        other => panic!("the claim must still be held, got {other:?}"),
    }
    assert_eq!(panic_first(idem, &order, runs.clone()).await.unwrap(), 2);
    // 100ms for a store whose clock decides the lease (Redis, PostgreSQL) to differ from ours.
    assert!(
        started.elapsed() + Duration::from_millis(100) >= Duration::from_secs(1),
        "taken over after the lease, not before: {:?}",
        started.elapsed()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayError {
    /// Refused by the provider: recorded, replayed.
    Declined,
    /// Invalid input: nothing happened, a retry may run again.
    Invalid,
    /// No answer from the provider: it may have charged.
    Timeout,
    Idem(String),
}

impl From<Error> for PayError {
    fn from(err: Error) -> Self {
        Self::Idem(err.to_string())
    }
}

fn pay_error_means(err: &PayError) -> idem::Disposition {
    match err {
        PayError::Declined => idem::Disposition::Record,
        PayError::Timeout => idem::Disposition::OutcomeUnknown,
        _ => idem::Disposition::Release,
    }
}

/// Fails with the errors in `script`, one per execution (then succeeds), and notes the
/// downstream key each execution would send.
#[idempotent(key = order, using = idem, lease = "1s", namespace = "pay", record_errors, on_error = pay_error_means)]
async fn pay(
    idem: &Idempotency,
    order: &str,
    script: &[PayError],
    keys: &std::sync::Mutex<Vec<String>>,
) -> Result<u32, PayError> {
    let context = idem::context().expect("a body has a claim context");
    let mut keys = keys.lock().unwrap();
    keys.push(context.downstream_key("provider"));
    match script.get(keys.len() - 1) {
        Some(err) => Err(err.clone()),
        None => Ok(u32::try_from(keys.len()).unwrap()),
    }
}

/// `pay`'s namespace, rejecting duplicates instead of waiting.
#[idempotent(key = order, using = idem, lease = "1s", namespace = "pay", record_errors, on_in_progress = reject)]
async fn pay_rejecting(idem: &Idempotency, order: &str) -> Result<u32, PayError> {
    Ok(0)
}

/// `on_error` decides per error: an unknown outcome keeps the claim for a lease and the
/// takeover sends the same downstream key; a release lets the retry run at once; a recorded
/// error is replayed.
pub async fn errors_are_released_recorded_or_unknown_as_classified(idem: &Idempotency) {
    let keys = std::sync::Mutex::new(Vec::new());
    let order = key("classified");
    let script = [PayError::Invalid, PayError::Timeout, PayError::Declined];
    // Invalid: released, so the retry runs at once.
    assert_eq!(
        pay(idem, &order, &script, &keys).await,
        Err(PayError::Invalid)
    );
    // Timeout: the outcome is unknown; the claim is kept... (its lease runs from after this)
    let started = tokio::time::Instant::now();
    assert_eq!(
        pay(idem, &order, &script, &keys).await,
        Err(PayError::Timeout)
    );
    match pay_rejecting(idem, &order).await {
        Err(PayError::Idem(text)) if text.contains("in progress") => {}
        other => panic!("the claim must be kept after an unknown outcome, got {other:?}"),
    }
    // ...until its lease lapses; the takeover runs again: Declined, recorded and replayed.
    assert_eq!(
        pay(idem, &order, &script, &keys).await,
        Err(PayError::Declined)
    );
    // 100ms for a store whose clock decides the lease to differ from ours.
    assert!(started.elapsed() + Duration::from_millis(100) >= Duration::from_secs(1));
    assert_eq!(
        pay(idem, &order, &script, &keys).await,
        Err(PayError::Declined)
    );
    let keys = keys.into_inner().unwrap();
    assert_eq!(keys.len(), 3, "three executions: {keys:?}");
    assert!(
        keys.iter().all(|k| k == &keys[0]),
        "every attempt of one call sends the same downstream key: {keys:?}"
    );
    // Another call, or another downstream, gets another key.
    let other = std::sync::Mutex::new(Vec::new());
    assert_eq!(
        pay(idem, &key("classified-other"), &[], &other).await,
        Ok(1)
    );
    assert_ne!(other.into_inner().unwrap()[0], keys[0]);
}

/// `served` tells the caller how each result came to be, without changing the function.
pub async fn callers_see_how_a_result_was_served(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("served");
    let work = Duration::from_millis(300);
    let (first, how) = idem::served(charge(idem, &order, 1, &runs, work)).await;
    assert_eq!(
        (first.unwrap().execution, how),
        (1, Some(idem::Served::Executed))
    );
    let (again, how) = idem::served(charge(idem, &order, 1, &runs, work)).await;
    assert_eq!(
        (again.unwrap().execution, how),
        (1, Some(idem::Served::Replayed))
    );

    let order = key("served-concurrent");
    let (first, second) = tokio::join!(idem::served(charge(idem, &order, 1, &runs, work)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        idem::served(charge(idem, &order, 1, &runs, Duration::ZERO)).await
    });
    assert_eq!(first.1, Some(idem::Served::Executed));
    assert_eq!(second.1, Some(idem::Served::Waited));
    assert_eq!(first.0.unwrap(), second.0.unwrap());

    let (empty, how) = idem::served(charge(idem, "", 1, &runs, work)).await;
    assert!(matches!(empty, Err(Error::InvalidKey { .. })));
    assert_eq!(how, Some(idem::Served::NotRun));
    let (_, how) = idem::served(async { 1 }).await;
    assert_eq!(how, None, "no idempotent call inside");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A dropped call keeps its claim until the lease lapses; then the next call takes over.
pub async fn cancellation_keeps_the_claim_until_the_lease_lapses(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("cancel");
    let lease = Duration::from_secs(1);
    // Before the claim: its lease cannot end earlier than a lease from here.
    let started = tokio::time::Instant::now();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        slow_with_short_lease(idem, &order, &runs, Duration::from_secs(60)),
    )
    .await;
    assert!(cancelled.is_err(), "the call was cancelled mid-body");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Still claimed: a rejecting duplicate is refused, the body does not run.
    match slow_rejecting(idem, &order, &runs).await {
        Err(Error::InProgress { .. }) => {}
        other => panic!("expected InProgress, got {other:?}"),
    }
    // A waiting call takes over once the lease lapses, and runs the body.
    let taken_over = slow_with_short_lease(idem, &order, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken_over, 2);
    // 100ms for a store whose clock decides the lease to differ from ours.
    assert!(started.elapsed() + Duration::from_millis(100) >= lease);
}

/// A body that runs for several leases keeps its claim (renewed), and its result is recorded.
pub async fn long_body_keeps_its_claim(idem: &Idempotency) {
    let runs = Arc::new(AtomicU32::new(0));
    let order = key("long");
    let first = {
        let (idem, order, runs) = (idem.clone(), order.clone(), runs.clone());
        tokio::spawn(async move {
            slow_with_short_lease(&idem, &order, &runs, Duration::from_millis(3500)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match slow_rejecting(idem, &order, &runs).await {
        Err(Error::InProgress { .. }) => {}
        other => panic!("a renewed claim must not be taken over, got {other:?}"),
    }
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(
        slow_with_short_lease(idem, &order, &runs, Duration::ZERO)
            .await
            .unwrap(),
        1
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Fencing tokens seen by bodies strictly increase across released claims.
pub async fn fences_increase_across_claims(idem: &Idempotency) {
    let order = key("fence");
    let seen = std::sync::Mutex::new(Vec::new());
    for _ in 0..3 {
        assert!(fence_of(idem, &order, true, &seen).await.is_err());
    }
    let last = fence_of(idem, &order, false, &seen).await.unwrap();
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 4, "every released claim ran the body again");
    assert_eq!(seen.last(), Some(&last));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

/// Claims `store_key` in the store itself, as a holder outside the runtime would.
async fn claim_directly(idem: &Idempotency, store_key: &str, lease: Duration) -> idem::Fence {
    let outcome = idem
        .store()
        .claim(idem::store::ClaimRequest::new(
            store_key,
            idem::store::AttemptId::random(),
            b"",
            lease,
        ))
        .await
        .unwrap();
    match outcome {
        idem::store::ClaimOutcome::Acquired { fence, .. } => fence,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// A holder that crashed after claiming blocks its key for one lease, no longer; the call that
/// takes over records its result, and the crashed holder's late write is refused.
pub async fn a_crashed_holder_is_taken_over_and_cannot_record_late(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("crashed");
    let store_key = idem.store_key("charge", &order).unwrap();
    let stale = claim_directly(idem, &store_key, Duration::from_millis(500)).await;
    let started = tokio::time::Instant::now();
    let receipt = charge(idem, &order, 7, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(receipt.execution, 1);
    let waited = started.elapsed();
    assert!(
        waited + Duration::from_millis(100) >= Duration::from_millis(500)
            && waited < Duration::from_secs(5),
        "taken over when the lease lapsed: {waited:?}"
    );
    let late = idem
        .store()
        .complete(&store_key, stale, b"late", Duration::from_secs(60))
        .await;
    assert!(matches!(late, Err(Error::LeaseLost { .. })), "{late:?}");
    let replay = charge(idem, &order, 7, &runs, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(replay, receipt, "the record is the takeover's");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Garbage at a completed key is `Corrupt`, never a miss: the body does not run.
pub async fn corrupt_record_is_an_error_not_a_miss(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("corrupt");
    let store_key = idem.store_key("charge", &order).unwrap();
    let fence = claim_directly(idem, &store_key, Duration::from_secs(5)).await;
    idem.store()
        .complete(
            &store_key,
            fence,
            b"\x00garbage\xff",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    match charge(idem, &order, 1, &runs, Duration::ZERO).await {
        Err(Error::Corrupt { key, .. }) => assert_eq!(key, store_key),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// After the retention period the key is new again and the body runs again.
pub async fn retention_expiry_allows_a_new_execution(idem: &Idempotency) {
    let runs = AtomicU32::new(0);
    let order = key("retention");
    assert_eq!(short_retention(idem, &order, &runs).await.unwrap(), 1);
    assert_eq!(short_retention(idem, &order, &runs).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(short_retention(idem, &order, &runs).await.unwrap(), 2);
}

/// Generates one test per check for a store; `$runtime` is an async expression giving the
/// `Idempotency` under test (or anything that is `AsRef<Idempotency>` and keeps its server
/// alive), `#[$test]` the test attribute.
#[macro_export]
macro_rules! behaviour_tests {
    (#[$test:meta] $runtime:expr) => {
        $crate::behaviour_tests!(@each #[$test] $runtime;
            sequential_duplicates_run_once,
            concurrent_duplicates_wait_and_share_one_result,
            concurrent_duplicates_are_rejected_in_reject_mode,
            bounded_waits_give_up_with_the_lease_remaining,
            two_step_calls_claim_then_run,
            fingerprint_mismatch_is_key_reused,
            fingerprint_mismatch_in_progress_is_key_reused,
            errors_release_and_retry_runs_again,
            recorded_errors_are_replayed,
            panics_keep_the_claim_until_the_lease_lapses,
            errors_are_released_recorded_or_unknown_as_classified,
            callers_see_how_a_result_was_served,
            cancellation_keeps_the_claim_until_the_lease_lapses,
            long_body_keeps_its_claim,
            fences_increase_across_claims,
            corrupt_record_is_an_error_not_a_miss,
            a_crashed_holder_is_taken_over_and_cannot_record_late,
            retention_expiry_allows_a_new_execution,
        );
    };
    (@each #[$test:meta] $runtime:expr; $($check:ident,)*) => {
        $(
            #[$test]
            async fn $check() {
                let fixture = $runtime.await;
                $crate::common::behaviour::$check(::std::convert::AsRef::as_ref(&fixture)).await;
            }
        )*
    };
}

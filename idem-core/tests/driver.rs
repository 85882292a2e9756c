//! How the runtime drives a body (regressions found by reviews of the driver split): a claim
//! known to have lapsed never runs its body and says so, a claim that holds runs it, a cancelled
//! body is dropped inside its claim context and the call is always reported, and a body's first
//! yield yields.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idem_core::testing::FaultyStore;
use idem_core::{Call, CallReport, Error, Idempotency, MemoryStore, Observer};

/// Regression: the claim's reply came back after its lease had run out, which the runtime knew
/// (its lease clock runs from when the claim was sent), yet the body ran; a duplicate that took
/// over meanwhile ran it too.
#[tokio::test(start_paused = true)]
async fn a_claim_whose_reply_came_after_its_lease_does_not_run() {
    let store = Arc::new(FaultyStore::new(MemoryStore::with_tokio_clock()));
    store.next_claim_reply_late_ms.store(400, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store);
    let runs = Arc::new(AtomicU32::new(0));
    let call = || Call::new("late-reply", "k").lease(Duration::from_millis(250));
    let counted = runs.clone();
    let first = tokio::spawn({
        let idem = idem.clone();
        async move {
            idem.run(call(), async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<u32, Error>(1)
            })
            .await
        }
    });
    // The first claim's lease lapses while its reply is on the way; this one takes over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let counted = runs.clone();
    let second = idem
        .run(call(), async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok::<u32, Error>(2)
        })
        .await;
    let first = first.await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran twice");
    assert_eq!(second.unwrap(), 2);
    // Regression (second review): the first call was told `LeaseLost`, which says its effect
    // may have happened, though its body never ran.
    let first = first.unwrap_err();
    // Regression (issue 20): it was `Error::Store` ("the store failed"), though the store had
    // answered.
    assert!(matches!(first, Error::ClaimLapsed { .. }), "{first:?}");
    assert!(!first.body_may_have_run(), "{first}");
    let message = first.to_string();
    assert!(
        message.contains("lapsed before the body could start") && !message.contains("store"),
        "{message}"
    );
}

/// Regression (second review): a claim past a third of its lease whose renewal failed (a store
/// that is briefly unreachable) was refused though it still held; it ran before the confirmation
/// was added, and runs again now.
#[tokio::test(start_paused = true)]
async fn a_valid_claim_runs_though_its_renewal_failed() {
    let store = Arc::new(FaultyStore::new(MemoryStore::with_tokio_clock()));
    store.next_claim_reply_late_ms.store(100, Ordering::SeqCst);
    store.renewals_fail.store(true, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store);
    let result = idem
        .run(
            Call::new("flaky-renewal", "k").lease(Duration::from_millis(250)),
            async { Ok::<u32, Error>(1) },
        )
        .await;
    assert_eq!(result.unwrap(), 1);
}

/// Notes, in order, what happens to a body and its call.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn push(&self, line: impl Into<String>) {
        self.0.lock().unwrap().push(line.into());
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Observer for Log {
    fn call_finished(&self, report: &CallReport<'_>) {
        self.push(format!("reported {}", report.outcome));
    }
}

/// Held by a body: notes its drop, and whether the body's claim context was there.
struct DropProbe(Arc<Log>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        let context = if idem_core::context().is_some() {
            "in its context"
        } else {
            "outside its context"
        };
        self.0.push(format!("body dropped {context}"));
    }
}

/// Regression: a cancelled call dropped its driver (and reported) before its body, and dropped
/// the body outside its claim context, where a body's drop code (a guard that logs the fence)
/// found none.
#[tokio::test(start_paused = true)]
async fn a_cancelled_body_is_dropped_in_its_context_before_the_call_is_reported() {
    let log = Arc::new(Log::default());
    let idem = Idempotency::new(MemoryStore::with_tokio_clock()).with_observer(log.clone());
    let probe = DropProbe(log.clone());
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        idem.run(Call::new("cancelled", "a"), async move {
            let _probe = probe;
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<u32, Error>(1)
        }),
    )
    .await;
    assert!(cancelled.is_err(), "the call was not cancelled");
    assert_eq!(
        log.lines(),
        ["body dropped in its context", "reported outcome_unknown"]
    );
}

/// Regression: after its first `Pending` the body was polled again at once, so its first
/// `yield_now` did not let another task run.
#[tokio::test]
async fn a_body_that_yields_lets_other_tasks_run() {
    let idem = Idempotency::new(MemoryStore::new());
    let other_ran = Arc::new(AtomicBool::new(false));
    let flag = other_ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    let flag = other_ran.clone();
    let seen = idem
        .run(Call::new("yields", "k"), async move {
            tokio::task::yield_now().await;
            Ok::<bool, Error>(flag.load(Ordering::SeqCst))
        })
        .await
        .unwrap();
    assert!(seen, "the body's yield did not let the other task run");
}

/// Held by a body: panics when dropped.
struct PanicsOnDrop(Arc<Log>);

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        self.0.push("body dropped");
        panic!("a body's drop panicked");
    }
}

/// Regression (second review): a cancelled body whose drop panicked was dropped before the call
/// was reported, so the report came while unwinding, where observers are not called: the call
/// (which keeps its claim) was never reported.
#[tokio::test(start_paused = true)]
async fn a_body_whose_drop_panics_is_still_reported() {
    let log = Arc::new(Log::default());
    let idem = Idempotency::new(MemoryStore::with_tokio_clock()).with_observer(log.clone());
    let probe = PanicsOnDrop(log.clone());
    let task = tokio::spawn(async move {
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            idem.run(Call::new("drop-panics", "k"), async move {
                let _probe = probe;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<u32, Error>(1)
            }),
        )
        .await;
    });
    let joined = task.await;
    assert!(
        joined.is_err_and(|err| err.is_panic()),
        "the drop's panic goes on"
    );
    assert_eq!(log.lines(), ["body dropped", "reported outcome_unknown"]);
    assert!(idem_core::context().is_none());
}

/// Regression (third review): when the confirmation's renewal failed, the body started however
/// little lease was left (15 ms of 250 here), and a duplicate that took over once it ran out
/// ran the effect too. With less than a third of a lease left, it does not start.
#[tokio::test(start_paused = true)]
async fn a_claim_with_too_little_lease_left_after_a_failed_renewal_does_not_run() {
    let store = Arc::new(FaultyStore::new(MemoryStore::with_tokio_clock()));
    store.next_claim_reply_late_ms.store(205, Ordering::SeqCst);
    store.renewals_fail.store(true, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store);
    let runs = Arc::new(AtomicU32::new(0));
    let counted = runs.clone();
    let first = idem
        .run(
            Call::new("sliver", "k").lease(Duration::from_millis(250)),
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<u32, Error>(1)
            },
        )
        .await;
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the body started on a sliver of lease"
    );
    let first = first.unwrap_err();
    assert!(matches!(first, Error::Store { .. }), "{first:?}");
    assert!(!first.body_may_have_run());
}

/// Regression (third review): `with_context` (the transactional path's wrapper) dropped a
/// cancelled body outside its context.
#[tokio::test(start_paused = true)]
async fn with_context_drops_a_cancelled_body_in_its_context() {
    let idem = Idempotency::new(MemoryStore::with_tokio_clock());
    let taken = Arc::new(Mutex::new(None));
    let into = taken.clone();
    idem.run(Call::new("with-context", "k"), async move {
        *into.lock().unwrap() = idem_core::context();
        Ok::<_, Error>(())
    })
    .await
    .unwrap();
    let context = taken.lock().unwrap().take().unwrap();
    let log = Arc::new(Log::default());
    let probe = DropProbe(log.clone());
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        idem_core::with_context(context, async move {
            let _probe = probe;
            tokio::time::sleep(Duration::from_secs(10)).await;
        }),
    )
    .await;
    assert!(cancelled.is_err());
    assert_eq!(log.lines(), ["body dropped in its context"]);
}

/// Issue 20 (defect 1): a body that blocks its thread (in `block_in_place`, tokio's way to
/// block) got no renewals, since the lease was kept by the body's own task: a duplicate took
/// the key over and ran too (`runs=2`), and both calls returned `LeaseLost`. The lease is kept
/// from a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_blocks_its_thread_keeps_its_lease() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let call = || Call::new("blocking", "k").lease(Duration::from_millis(300));
    let first = tokio::spawn({
        let (idem, runs) = (idem.clone(), runs.clone());
        async move {
            idem.run(call(), async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(1200)));
                Ok::<u32, Error>(1)
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let counted = runs.clone();
    let duplicate = idem
        .run(call(), async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<u32, Error>(2)
        })
        .await;
    // It waited a lease (its patience) for a holder that kept its claim, and did not run.
    assert!(
        matches!(duplicate, Err(Error::InProgress { .. })),
        "{duplicate:?}"
    );
    assert_eq!(first.await.unwrap().unwrap(), 1);
    let replayed = idem.run(call(), async { Ok::<u32, Error>(2) }).await;
    assert_eq!(replayed.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran twice");
}

/// Issue 20 (defect 6): a call cancelled while its claim's reply was on the way (a client that
/// gave up on a slow store) left the key claimed for a whole lease, though its body never
/// started: every retry got `InProgress`. A claim whose body never started is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_cancelled_before_its_body_started_frees_the_key() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let idem = Idempotency::from_arc(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let call = || {
        Call::new("cancelled", "k")
            .lease(Duration::from_secs(30))
            .on_in_progress(idem_core::OnInProgress::Reject)
    };
    let body = |runs: Arc<AtomicU32>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, Error>(1)
    };
    // Cancelled while the claim's reply is late, and once while waiting to run (`start`).
    store.next_claim_reply_late_ms.store(500, Ordering::SeqCst);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        idem.run(call(), body(runs.clone())),
    )
    .await;
    assert!(cancelled.is_err(), "the call was not cancelled");
    let started = idem
        .start::<u32>(Call::new("cancelled", "k2"))
        .await
        .unwrap();
    assert!(matches!(started, idem_core::Started::Claimed(_)));
    drop(started);
    // The release runs in the background: the key is free well inside its 30 s lease.
    for key in ["k", "k2"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let call = Call::new("cancelled", key).on_in_progress(idem_core::OnInProgress::Reject);
            match idem.run(call, body(runs.clone())).await {
                Ok(_) => break,
                Err(Error::InProgress { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(err) => panic!("{key} was not freed: {err}"),
            }
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each key's body ran once");
}

/// Issue 20 (what peers do): a body whose claim lapsed (its renewals failed) while nobody took
/// the key over got `LeaseLost` and left no record, so the next delivery ran it again. Its
/// result is recorded under a fresh claim when the key is still free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_records_its_result_when_the_key_is_still_free() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    store.renewals_fail.store(true, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let call = || Call::new("lapsed", "k").lease(Duration::from_millis(300));
    let counted = runs.clone();
    let first = idem
        .run(call(), async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok::<u32, Error>(1)
        })
        .await;
    assert_eq!(first.unwrap(), 1);
    store.renewals_fail.store(false, Ordering::SeqCst);
    let counted = runs.clone();
    let (again, how) = idem_core::served(idem.run(call(), async move {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok::<u32, Error>(2)
    }))
    .await;
    assert_eq!(
        (again.unwrap(), how),
        (1, Some(idem_core::Served::Replayed))
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// Issue 20 (what peers do): a body whose claim lapsed and was taken over by a duplicate that
/// recorded its own result got `LeaseLost`, so its caller and the duplicate's saw two
/// different outcomes of one key. It gets the recorded result, as any later delivery does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_gets_the_result_of_the_call_that_took_over() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    store.leases_lost.store(true, Ordering::SeqCst);
    let idem = Idempotency::from_arc(store.clone());
    let call = || Call::new("taken-over", "k").lease(Duration::from_millis(300));
    let first = tokio::spawn({
        let idem = idem.clone();
        async move {
            idem_core::served(idem.run(call(), async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                Ok::<u32, Error>(1)
            }))
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let takeover = idem.run(call(), async { Ok::<u32, Error>(2) }).await;
    assert_eq!(takeover.unwrap(), 2);
    let (first, how) = first.await.unwrap();
    assert_eq!(first.unwrap(), 2, "one key, one result");
    assert_eq!(
        how,
        Some(idem_core::Served::Superseded),
        "its effect happened too"
    );

    // While the call that took over is still running, the lapsed one's lease is lost.
    let call = || Call::new("taken-over", "k2").lease(Duration::from_millis(300));
    let first = tokio::spawn({
        let idem = idem.clone();
        async move {
            idem.run(call(), async {
                tokio::time::sleep(Duration::from_millis(700)).await;
                Ok::<u32, Error>(1)
            })
            .await
        }
    });
    // The first claim has lapsed; the takeover's is renewed, and holds the key when the first
    // body ends.
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.leases_lost.store(false, Ordering::SeqCst);
    let takeover = tokio::spawn({
        let idem = idem.clone();
        async move {
            idem.run(call(), async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                Ok::<u32, Error>(2)
            })
            .await
        }
    });
    let first = first.await.unwrap();
    assert!(matches!(first, Err(Error::LeaseLost { .. })), "{first:?}");
    assert_eq!(takeover.await.unwrap().unwrap(), 2);
}

/// Issue 20 (what peers do): a hung body kept its key for as long as it hung, renewing its
/// lease, so every redelivery got `InProgress`. With `max_hold`, renewals stop once the claim
/// is that old: the key passes to the next delivery a lease later, and the hung body's late
/// result gives way to the one recorded meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_body_gives_its_key_up_after_max_hold() {
    let idem = Idempotency::new(MemoryStore::new()).with_max_hold(Duration::from_millis(500));
    let call = || {
        Call::new("hung", "k")
            .lease(Duration::from_millis(300))
            .on_in_progress(idem_core::OnInProgress::Reject)
    };
    let hung = tokio::spawn({
        let idem = idem.clone();
        async move {
            idem.run(call(), async {
                tokio::time::sleep(Duration::from_millis(2000)).await;
                Ok::<u32, Error>(1)
            })
            .await
        }
    });
    // Renewed until 500 ms, then the lease (300 ms) runs out: free by about 800 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let early = idem.run(call(), async { Ok::<u32, Error>(2) }).await;
    assert!(matches!(early, Err(Error::InProgress { .. })), "{early:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let next = idem.run(call(), async { Ok::<u32, Error>(2) }).await;
    assert_eq!(next.unwrap(), 2, "the hung body's key passed on");
    assert_eq!(hung.await.unwrap().unwrap(), 2, "one key, one result");
    // A ceiling of zero is refused.
    let zero = idem
        .run(call().max_hold(Duration::ZERO), async {
            Ok::<u32, Error>(3)
        })
        .await;
    assert!(matches!(zero, Err(Error::InvalidOption { .. })), "{zero:?}");
}

/// Regression (issue 20 review): a lapsed claim whose key another request (another
/// fingerprint) took over and recorded was told `KeyReused`, "the body did not run; use a new
/// key", though its body ran: a payment caller would charge again. Such a record is not this
/// call's to return: it gets `LeaseLost`, which says the body ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_claim_superseded_by_another_request_says_its_body_ran() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicU32::new(0));
    let lease = Duration::from_millis(250);
    let a = {
        let (idem, runs) = (idem.clone(), runs.clone());
        tokio::spawn(async move {
            idem_core::served(
                idem.run(
                    Call::new("pay", "k")
                        .fingerprint(&"request A")
                        .lease(lease)
                        .max_hold(Duration::from_millis(1)),
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(700)).await;
                        Ok::<u32, Error>(1)
                    },
                ),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(450)).await;
    let counted = runs.clone();
    let b = idem
        .run(
            Call::new("pay", "k").fingerprint(&"request B").lease(lease),
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok::<u32, Error>(2)
            },
        )
        .await;
    assert_eq!(b.unwrap(), 2);
    let (a, how) = a.await.unwrap();
    let err = a.unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err:?}");
    assert!(err.body_may_have_run(), "{err}");
    assert_eq!(how, Some(idem_core::Served::Executed));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// Regression (issue 20 review): a claim whose reply was lost (an indeterminate store error,
/// after the runtime's retries) may have been granted, with nobody to run its body: the key
/// stayed held for a whole lease, though the error said a retry would find its own claim (a
/// retry is another attempt, and got `InProgress`). It is released in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_is_released() {
    let store = Arc::new(FaultyStore::new(MemoryStore::new()));
    let idem = Idempotency::from_arc(store.clone()).with_store_attempts(1);
    let call = || {
        Call::new("lost-reply", "k")
            .lease(Duration::from_secs(30))
            .on_in_progress(idem_core::OnInProgress::Reject)
    };
    store.next_claim_reply_lost.store(true, Ordering::SeqCst);
    let lost = idem.run(call(), async { Ok::<u32, Error>(1) }).await;
    let err = lost.unwrap_err();
    assert!(err.is_indeterminate() && !err.body_may_have_run(), "{err}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match idem.run(call(), async { Ok::<u32, Error>(2) }).await {
            Ok(value) => break assert_eq!(value, 2),
            Err(Error::InProgress { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(err) => panic!("the key stayed held: {err}"),
        }
    }
}

/// Leases are kept by one watcher per runtime and thread, which starts a renewal task only for a
/// body that runs towards its first renewal. A thread that outlives its runtime and runs calls on
/// a new one must get a watcher on the new one: a body there still keeps its lease, and a
/// duplicate neither takes it over nor runs.
#[test]
fn a_long_body_keeps_its_lease_on_a_thread_s_second_runtime() {
    let idem = Idempotency::new(MemoryStore::new());
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let call =
        |key: &'static str| Call::new("second-runtime", key).lease(Duration::from_millis(300));
    // The first runtime's watcher starts on this thread, then its runtime ends.
    runtime().block_on(async {
        let first = idem.run(call("warm"), async { Ok::<u32, Error>(0) }).await;
        assert_eq!(first.unwrap(), 0);
    });
    let runs = Arc::new(AtomicU32::new(0));
    runtime().block_on(async {
        let long = {
            let runs = runs.clone();
            idem.run(call("long"), async move {
                runs.fetch_add(1, Ordering::SeqCst);
                // Three leases: the claim lapses unless it is renewed.
                tokio::time::sleep(Duration::from_millis(900)).await;
                Ok::<u32, Error>(1)
            })
        };
        let duplicate = async {
            tokio::time::sleep(Duration::from_millis(450)).await;
            let counted = runs.clone();
            idem.run(
                call("long").on_in_progress(idem_core::OnInProgress::Reject),
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, Error>(2)
                },
            )
            .await
        };
        let (long, duplicate) = tokio::join!(long, duplicate);
        assert_eq!(long.unwrap(), 1);
        assert!(
            matches!(duplicate, Err(Error::InProgress { .. })),
            "the duplicate took a claim that was not renewed: {duplicate:?}"
        );
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran twice");
}

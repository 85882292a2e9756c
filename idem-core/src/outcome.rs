//! What a call's `Err` means, and how a call's result came to be.

use std::future::Future;
use std::sync::{Arc, Mutex};

/// What an `Err` returned by the body means, decided per error by the function given to
/// [`Idempotency::run_with`](crate::Idempotency::run_with) (or the macro's `on_error = ...`).
///
/// # Unknown outcomes
///
/// One rule covers every call whose outcome is unknown: a body that panics, a call that is
/// cancelled (its future dropped, a timeout), a process that crashes mid-body, and an `Err` the
/// function classifies as [`OutcomeUnknown`](OnError::OutcomeUnknown). Nothing is recorded and
/// the claim is **kept** until its lease lapses (renewals stop when the body stops); then the
/// next delivery takes over and runs the body again.
///
/// Why: the effect may have started, and may still be landing (a request to a payment provider
/// that timed out on our side). Releasing at once would let a retry run concurrently with it;
/// recording would replay a success or failure that may be false. Keeping the claim gives the
/// effect one lease to land, and the body that takes over should make the effect idempotent
/// downstream with [`downstream_key`](crate::ClaimContext::downstream_key), which is the same for
/// every attempt of the call, so the downstream system recognises the repeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnError {
    /// Nothing happened that a retry must not repeat (validation failed, the effect was
    /// refused): the claim is released and the next call runs the body again. The default.
    Release,
    /// The error is the call's result: recorded and replayed to duplicates like an `Ok`
    /// (needs `E: Serialize + DeserializeOwned`, the `record_errors` flavour; elsewhere it is
    /// taken as [`OutcomeUnknown`](OnError::OutcomeUnknown)).
    Record,
    /// The effect may have started: the outcome is unknown. Nothing is recorded and the claim
    /// is kept until its lease lapses, as after a panic or a crash (see above).
    OutcomeUnknown,
}

/// How a call's result came to be, read with [`served`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Served {
    /// This call ran the body (its result may still be an error, or not recorded).
    Executed,
    /// A duplicate: the recorded result of an earlier call, replayed; the body did not run.
    Replayed,
    /// A duplicate that arrived while the first call was running, waited for it, and got its
    /// recorded result; the body did not run.
    Waited,
    /// The body did not run and nothing was replayed: the call failed before (an invalid key,
    /// a store error, `InProgress`, `KeyReused`, a corrupt record).
    NotRun,
    /// This call ran the body, but its claim lapsed meanwhile and another call took the key
    /// over and recorded its result, which is this call's result too (one key, one result).
    /// **The effect happened twice**: this body's and the other's. Reconcile it (the fencing
    /// token tells the two apart downstream), or make the effect idempotent downstream.
    Superseded,
}

tokio::task_local! {
    static OBSERVED: Arc<Mutex<Option<Served>>>;
}

/// Runs `call` (one idempotent call: an `#[idempotent]` function's future, or
/// [`Idempotency::run`](crate::Idempotency::run)) and tells how its result came to be, without
/// changing the function. `None` when no idempotent call finished inside it. With several
/// idempotent calls inside, it tells of the one that finished last, so wrap one call.
///
/// ```
/// # use idem_core as idem; // what users of the `idem` crate write
/// use idem::{served, Call, Error, Idempotency, MemoryStore, Served};
///
/// # async fn demo() -> Result<(), Error> {
/// let idem = Idempotency::new(MemoryStore::new());
/// let charge = || idem.run(Call::new("charge", "order-1"), async { Ok::<_, Error>(1250) });
/// let (first, how) = served(charge()).await;
/// assert_eq!((first?, how), (1250, Some(Served::Executed)));
/// let (again, how) = served(charge()).await;
/// assert_eq!((again?, how), (1250, Some(Served::Replayed)));
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn served<F: Future>(call: F) -> (F::Output, Option<Served>) {
    let slot = Arc::new(Mutex::new(None));
    let output = OBSERVED.scope(slot.clone(), call).await;
    let served = *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (output, served)
}

/// Tells an enclosing [`served`], if any, how a call ended: for code that runs a call on
/// another task (where the caller's `served` cannot see it) and passes its outcome on.
#[doc(hidden)]
pub fn report(how: Served) {
    let _ = OBSERVED.try_with(|slot| {
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(how);
    });
}

//! How a call's result came to be ([`Served`]), read around a call with [`served`].

use std::future::Future;
use std::sync::{Arc, Mutex};

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

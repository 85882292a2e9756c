//! A key claimed inside a transaction: what `begin_transaction*` returns, and the claim a body
//! runs under. How it ends is in `settle`.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TransactionalStore;
use crate::context::ClaimContext;
use crate::observe::{CallOutcome, CallTrace};
use crate::policy::{Disposition, Policy};
use crate::runtime::{Prepared, TransactionClaims};
use crate::store::{AttemptId, Fence};
use crate::Error;

/// What [`Idempotency::begin_transaction_with`](crate::Idempotency::begin_transaction_with) found.
#[must_use = "a claimed key must be finished, or its transaction is rolled back when dropped"]
pub enum TransactionBegun<'c, S: TransactionalStore, T, E, F> {
    /// Nothing to run: the recorded result (replayed, or waited for), or why the call failed
    /// before the body (an `Err` made from the [`Error`]).
    Done(Result<T, E>),
    /// The key is claimed in a transaction: run the body on
    /// [`connection`](TransactionClaim::connection), then
    /// [`finish`](TransactionClaim::finish) with its result.
    Claimed(TransactionClaim<'c, S, T, E, F>),
}

/// A key claimed inside a transaction on the caller's connection. Dropping it without
/// [`finish`](Self::finish) rolls the transaction back: the key is free once the rollback
/// reaches the database, which the driver sends with the connection's next use (or its return
/// to a pool). A transaction of idem's own left idle on a connection its caller keeps is ended
/// by the store a lease later ([`TransactionalStore::claim_ended`]); a savepoint in the caller's
/// own transaction is left to the caller. The rules side by side: `docs/guarantees.md`.
#[must_use = "finish the claim with the body's result, or its transaction is rolled back"]
pub struct TransactionClaim<'c, S: TransactionalStore, T, E, F> {
    pub(super) transaction: S::Transaction<'c>,
    pub(super) claim: DetachedClaim<S, T, E, F>,
}

/// A [`TransactionClaim`] without its transaction, for a body that runs where the claim cannot
/// go: the HTTP layer lends the transaction to the handler through the request, and finishes
/// the claim with it afterwards. Made by [`TransactionClaim::detach`].
///
/// Dropping it without [`finish`](Self::finish) records nothing: the transaction, dropped too,
/// rolls back and the key is free.
#[must_use = "finish the claim with its transaction and the body's result"]
pub struct DetachedClaim<S: TransactionalStore, T, E, F> {
    pub(super) store: Arc<S>,
    /// Boxed: it keeps `TransactionBegun::Claimed` near the size of a replayed result.
    pub(super) call: Box<Prepared>,
    pub(super) attempt: AttemptId,
    pub(super) fence: Fence,
    pub(super) policy: Policy<E, F>,
    /// The call's trace, finished by `finish` (or, dropped unfinished, as released).
    /// Boxed: it is large next to a replayed result.
    pub(super) trace: Option<Box<CallTrace>>,
    /// The key's place among the keys claimed in open transactions, while the claim lives.
    pub(super) _registered: Registered,
    /// Whether `finish` ended it; dropped otherwise, it was abandoned
    /// ([`TransactionalStore::claim_ended`]).
    pub(super) finished: bool,
    /// Whether it was claimed in a savepoint of the caller's own transaction, which is the
    /// caller's to end, abandoned or not.
    pub(super) in_callers_transaction: bool,
    pub(super) _result: PhantomData<fn() -> T>,
}

/// A key claimed on a connection, registered until the claim ends.
pub(crate) struct Registered {
    claims: Arc<TransactionClaims>,
    entry: Option<(usize, String)>,
}

impl Registered {
    pub(crate) fn new(claims: Arc<TransactionClaims>, entry: (usize, String)) -> Self {
        lock(&claims).insert(entry.clone());
        Self {
            claims,
            entry: Some(entry),
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            lock(&self.claims).remove(&entry);
        }
    }
}

pub(super) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<S: TransactionalStore, T, E, F> std::fmt::Debug for TransactionBegun<'_, S, T, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Not the result: it may hold personal data, and a `Debug` ends up in logs.
            TransactionBegun::Done(result) => f
                .debug_tuple("Done")
                .field(&if result.is_ok() { "Ok(..)" } else { "Err(..)" })
                .finish(),
            TransactionBegun::Claimed(claim) => f.debug_tuple("Claimed").field(claim).finish(),
        }
    }
}

impl<'c, S: TransactionalStore, T, E, F> std::fmt::Debug for TransactionClaim<'c, S, T, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.claim.fmt(f)
    }
}

/// Dropped unfinished, the claim's transaction rolls back (now, or when whoever holds it drops
/// it) and the key is free: the call was released, not left with an unknown outcome.
impl<S: TransactionalStore, T, E, F> Drop for DetachedClaim<S, T, E, F> {
    fn drop(&mut self) {
        if let Some(mut trace) = self.trace.take() {
            trace.close(CallOutcome::Released);
        }
        let abandoned = (!self.finished && !self.in_callers_transaction).then_some(self.call.lease);
        self.store
            .claim_ended(&self.call.key, self.fence, abandoned);
    }
}

impl<S: TransactionalStore, T, E, F> std::fmt::Debug for DetachedClaim<S, T, E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionClaim")
            .field("key", &self.call.key)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl<'c, S, T, E, F> TransactionClaim<'c, S, T, E, F>
where
    S: TransactionalStore,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> Disposition,
{
    /// The connection, inside the transaction that holds the claim: the body's writes go
    /// through it.
    pub fn connection(&mut self) -> &mut S::Connection {
        &mut self.transaction
    }

    /// The claim, for the body: its key and fencing token. Run the body inside
    /// [`with_context`](crate::with_context) with it, and [`crate::context`] returns it there.
    pub fn context(&self) -> ClaimContext {
        self.claim.context()
    }

    /// Separates the transaction from the claim, for a body that must own the transaction
    /// while it runs. Hand the same transaction back to [`DetachedClaim::finish`]: any other
    /// holds no claim, so the record fails and everything rolls back.
    pub fn detach(self) -> (S::Transaction<'c>, DetachedClaim<S, T, E, F>) {
        (self.transaction, self.claim)
    }

    /// Ends the call with the body's result: an `Ok` (or an `Err` recorded by the policy) is
    /// recorded and the transaction committed, so the body's writes and the record become
    /// visible together; any other `Err` rolls the transaction back and frees the key.
    ///
    /// If the record cannot be written, or the commit fails, the body's writes are rolled back
    /// too and the error is [`Error::RolledBack`] (the key is free); a commit whose outcome is
    /// unknown (the connection was lost during `COMMIT`) is [`Error::CommitUnknown`]: a retry
    /// replays if it committed and runs the body if it did not.
    pub async fn finish(self, result: Result<T, E>) -> Result<T, E> {
        self.claim.finish(self.transaction, result).await
    }
}

impl<S, T, E, F> DetachedClaim<S, T, E, F>
where
    S: TransactionalStore,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> Disposition,
{
    /// The claim, for the body: its key and fencing token.
    pub fn context(&self) -> ClaimContext {
        ClaimContext {
            key: self.call.key.clone(),
            fence: self.fence,
        }
    }
}

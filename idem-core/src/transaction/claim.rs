//! A key claimed inside a transaction, and how it ends: the record committed with the body's
//! writes, or everything rolled back.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TransactionalStore;
use crate::context::ClaimContext;
use crate::encode::encode_exactly;
use crate::error::not_recorded;
use crate::observe::{self, CallOutcome, CallTrace};
use crate::policy::{Disposition, ErrorPolicy, Policy};
use crate::runtime::{Prepared, TransactionClaims};
use crate::store::{AttemptId, Fence, Outcome, Record};
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

    /// [`TransactionClaim::finish`], with the transaction [`detach`](TransactionClaim::detach)
    /// returned.
    pub async fn finish(
        mut self,
        transaction: S::Transaction<'_>,
        result: Result<T, E>,
    ) -> Result<T, E> {
        let trace = self.trace.take();
        let span = trace
            .as_ref()
            .map_or_else(tracing::Span::none, |t| t.span.clone());
        let (result, how) = observe::in_span(&span, self.end(transaction, result)).await;
        self.finished = true;
        if let Some(mut trace) = trace {
            trace.finish(how);
        }
        result
    }

    async fn end(
        &self,
        transaction: S::Transaction<'_>,
        result: Result<T, E>,
    ) -> (Result<T, E>, CallOutcome) {
        let open = Open {
            store: &*self.store,
            transaction,
        };
        let ended = match self.settlement(&result) {
            Settlement::RollBack => {
                open.roll_back().await;
                return (result, CallOutcome::Released);
            }
            Settlement::Hold => self.hold(open).await.map(|()| CallOutcome::OutcomeUnknown),
            Settlement::Record {
                outcome,
                json,
                undo_body,
            } => {
                let recorded = self.record(open, outcome, json, undo_body).await;
                recorded.map(|()| CallOutcome::Executed)
            }
        };
        match ended {
            Ok(how) => (result, how),
            // idem's own failure ends the call: the body's writes are rolled back with it, and
            // the error says so (the body ran: never "did not run").
            Err(err) => {
                let err = after_the_body(&self.call.key, err);
                let how = CallOutcome::of_error(&err);
                (Err(err.into()), how)
            }
        }
    }

    /// What becomes of the call, from the body's result and the error policy.
    fn settlement(&self, result: &Result<T, E>) -> Settlement {
        let policy = &self.policy;
        match result {
            Ok(value) => Settlement::Record {
                outcome: Outcome::Ok,
                json: encode_exactly(value),
                undo_body: false,
            },
            Err(err) => match (policy.classify(err), policy.encode(err)) {
                (Disposition::Record, Some(json)) => Settlement::Record {
                    outcome: Outcome::Err,
                    json,
                    undo_body: true,
                },
                (Disposition::OutcomeUnknown, _) if policy.needs_savepoint() => Settlement::Hold,
                _ => Settlement::RollBack,
            },
        }
    }

    /// Records the result in the transaction and commits: the body's writes (undone first for a
    /// recorded error) and the record, together.
    async fn record(
        &self,
        mut open: Open<'_, '_, S>,
        outcome: Outcome,
        json: Result<Vec<u8>, serde_json::Error>,
        undo_body: bool,
    ) -> Result<(), Error> {
        let (store, call) = (open.store, &self.call);
        if undo_body {
            let name = savepoint_name(self.attempt);
            or_roll_back!(
                open,
                store
                    .rollback_to_savepoint(&mut open.transaction, &name)
                    .await
            );
        }
        let json = or_roll_back!(
            open,
            json.map_err(|source| Error::Encode {
                what: "the result",
                source,
            })
        );
        let record = Record::encode(outcome, &call.fingerprint, &json);
        let completed = store
            .complete_in(
                &mut open.transaction,
                &call.key,
                self.fence,
                &record,
                call.retention,
            )
            .await;
        or_roll_back!(open, completed);
        open.commit().await
    }

    /// An unknown outcome: the database writes are undone, but effects elsewhere may have
    /// started, so the claim commits without a record and holds the key until its lease lapses,
    /// as outside a transaction. It never left this transaction, so no duplicate can slip in
    /// between.
    async fn hold(&self, mut open: Open<'_, '_, S>) -> Result<(), Error> {
        let (store, call) = (open.store, &self.call);
        let name = savepoint_name(self.attempt);
        or_roll_back!(
            open,
            store
                .rollback_to_savepoint(&mut open.transaction, &name)
                .await
        );
        let extended = store
            .extend_in(&mut open.transaction, &call.key, self.fence, call.lease)
            .await;
        or_roll_back!(open, extended);
        match open.commit().await {
            // (A step before the COMMIT that failed, indeterminately or not, was rolled back with
            // everything: the key is free, `RolledBack`.)
            // The hold's COMMIT got no reply: the key is held for a lease, or free. Not
            // `CommitUnknown` (there is no record to replay): the body ran and its result is
            // not recorded.
            Err(
                err @ Error::Store {
                    indeterminate: true,
                    ..
                },
            ) => Err(not_recorded(call.key.clone(), err)),
            // Otherwise the key could not be held: say so rather than return the body's error
            // as if a retry had to wait.
            other => other,
        }
    }
}

/// What becomes of a transactional call once its body returned.
enum Settlement {
    /// Record the result and commit it with the body's writes (undone first, for an error
    /// recorded in their place).
    Record {
        outcome: Outcome,
        json: Result<Vec<u8>, serde_json::Error>,
        undo_body: bool,
    },
    /// An unknown outcome: undo the body's writes, commit the claim alone (see
    /// `TransactionClaim::hold`).
    Hold,
    /// Roll everything back: the key is free.
    RollBack,
}

/// The call's transaction until it commits. Every error on the way ends through
/// [`or_roll_back!`], which rolls it back: one exit, not one hand-written rollback per step
/// (dropping the transaction would roll back too, but only at the connection's next use).
struct Open<'s, 't, S: TransactionalStore> {
    store: &'s S,
    transaction: S::Transaction<'t>,
}

impl<S: TransactionalStore> Open<'_, '_, S> {
    async fn roll_back(self) {
        let _ = self.store.rollback(self.transaction).await;
    }

    async fn commit(self) -> Result<(), Error> {
        self.store.commit(self.transaction).await
    }
}

/// A step's value, or (its error, after rolling the open transaction back) the function's.
macro_rules! or_roll_back {
    ($open:ident, $step:expr) => {
        match $step {
            Ok(value) => value,
            Err(err) => {
                $open.roll_back().await;
                return Err(err);
            }
        }
    };
}
use or_roll_back;

/// An error that ended a transactional call after its body ran, as the caller must read it: the
/// body ran, and its writes either rolled back with the claim (the key is free) or, when the
/// `COMMIT` got no reply, committed with the record or not at all.
fn after_the_body(key: &str, err: Error) -> Error {
    match err {
        Error::TransactionAborted { .. }
        | Error::RolledBack { .. }
        | Error::CommitUnknown { .. }
        | Error::NotRecorded { .. } => err,
        Error::Store {
            indeterminate: true,
            operation: "commit",
            source,
        } => Error::CommitUnknown {
            key: key.to_owned(),
            source,
        },
        err => Error::RolledBack {
            key: key.to_owned(),
            source: Box::new(err),
        },
    }
}

/// The savepoint before a call's body: unique to the call, so that a body's own savepoints
/// cannot be confused with it.
pub(super) fn savepoint_name(attempt: AttemptId) -> String {
    format!("idem_body_{:032x}", attempt.0)
}

/// Rolls `transaction` back after `err`, and returns `err`.
pub(super) async fn rolled_back<S: TransactionalStore>(
    store: &S,
    transaction: S::Transaction<'_>,
    err: Error,
) -> Error {
    let _ = store.rollback(transaction).await;
    err
}

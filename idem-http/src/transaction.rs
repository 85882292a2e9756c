//! The transactional mode: a request's claim, the handler's writes and its recorded response in
//! one database transaction, lent to the handler through the [`Tx`] extractor.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;
use idem_core::{
    Call, DetachedClaim, Disposition, Error, Idempotency, TransactionBegun, TransactionalStore,
};
use tokio::sync::{Mutex, OwnedMappedMutexGuard, OwnedMutexGuard};

use crate::problem::{Rejection, DEFAULT_PROBLEM_BASE};
use crate::recorded::RecordedResponse;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The transaction between the layer and the handler: the layer puts it in, the handler's
/// [`Tx`] locks it while the handler runs, and the layer takes it out to commit.
type Slot<S> = Arc<Mutex<Option<<S as TransactionalStore>::Transaction<'static>>>>;

/// The slot as a request extension.
struct Lent<S: TransactionalStore>(Slot<S>);

impl<S: TransactionalStore> Clone for Lent<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Why a transactional handler's response is not recorded: the `E` of the core's claim.
pub(crate) enum Unrecorded {
    /// What the response's status (or its unrecordable body) means for the claim.
    As(Disposition),
    /// idem failed around the handler.
    Idem(Error),
    /// The handler kept its `Tx` past its response: nothing committed.
    Kept,
}

impl From<Error> for Unrecorded {
    fn from(err: Error) -> Self {
        Self::Idem(err)
    }
}

fn classify(unrecorded: &Unrecorded) -> Disposition {
    match unrecorded {
        Unrecorded::As(disposition) => *disposition,
        Unrecorded::Idem(_) | Unrecorded::Kept => Disposition::Release,
    }
}

/// What beginning a transactional request found.
pub(crate) enum Began {
    /// The recorded response, or why there is none: no handler runs.
    Done(Result<RecordedResponse, Error>),
    /// The key is claimed in a transaction, ready to be lent to the handler.
    Claimed(Box<dyn Lending>),
}

/// A claimed request's transaction and claim, erased over the store's type.
pub(crate) trait Lending: Send {
    /// Puts the transaction in `extensions`, where the handler's [`Tx`] finds it.
    fn lend(&self, extensions: &mut http::Extensions);

    /// Takes the transaction back and ends the call: records `result` and commits, or rolls
    /// back, as the claim's policy says. `Err(Unrecorded::Idem)` when idem failed, and
    /// `Err(Unrecorded::Kept)` when the handler kept the transaction past its response (then
    /// nothing commits).
    fn finish(
        self: Box<Self>,
        result: Result<RecordedResponse, Disposition>,
    ) -> BoxFuture<'static, Result<RecordedResponse, Unrecorded>>;
}

/// The layer's transactional mode over store type `S`, erased so that the layer is not generic.
pub(crate) trait Mode: Send + Sync {
    fn begin<'a>(&'a self, idem: &'a Idempotency, call: Call) -> BoxFuture<'a, Began>;
}

/// [`Mode`] over `S`.
pub(crate) struct InTransaction<S>(std::marker::PhantomData<fn() -> S>);

impl<S> InTransaction<S> {
    pub(crate) fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<S: TransactionalStore> Mode for InTransaction<S> {
    fn begin<'a>(&'a self, idem: &'a Idempotency, call: Call) -> BoxFuture<'a, Began> {
        Box::pin(async move {
            let begun = idem
                .begin_pooled_transaction::<S, RecordedResponse, Unrecorded, _>(
                    call,
                    classify as fn(&Unrecorded) -> Disposition,
                )
                .await;
            match begun {
                TransactionBegun::Done(Ok(recorded)) => Began::Done(Ok(recorded)),
                TransactionBegun::Done(Err(Unrecorded::Idem(err))) => Began::Done(Err(err)),
                // Only a handler's response is classified, and none ran.
                TransactionBegun::Done(Err(Unrecorded::As(_) | Unrecorded::Kept)) => {
                    Began::Done(Err(Error::invalid_option(
                        "a transactional request ended before its handler",
                    )))
                }
                TransactionBegun::Claimed(claim) => {
                    let (transaction, claim) = claim.detach();
                    Began::Claimed(Box::new(Claimed::<S> {
                        slot: Arc::new(Mutex::new(Some(transaction))),
                        claim,
                    }))
                }
            }
        })
    }
}

struct Claimed<S: TransactionalStore> {
    slot: Slot<S>,
    claim: DetachedClaim<S, RecordedResponse, Unrecorded, fn(&Unrecorded) -> Disposition>,
}

impl<S: TransactionalStore> Lending for Claimed<S> {
    fn lend(&self, extensions: &mut http::Extensions) {
        extensions.insert(Lent::<S>(self.slot.clone()));
    }

    fn finish(
        self: Box<Self>,
        result: Result<RecordedResponse, Disposition>,
    ) -> BoxFuture<'static, Result<RecordedResponse, Unrecorded>> {
        let Self { slot, claim } = *self;
        Box::pin(async move {
            // Locked only while a `Tx` lives: the handler has answered, so one that still
            // lives was moved somewhere that outlives the request, and what it writes next
            // must not commit with this response.
            let transaction = match slot.try_lock() {
                Ok(mut lent) => lent.take(),
                Err(_) => None,
            };
            let Some(transaction) = transaction else {
                // The claim is dropped unfinished, and the transaction rolls back when the
                // `Tx` holding it is dropped.
                return Err(Unrecorded::Kept);
            };
            claim
                .finish(transaction, result.map_err(Unrecorded::As))
                .await
        })
    }
}

/// The request's database transaction, for a handler behind an
/// [`IdempotencyLayer`](crate::IdempotencyLayer) in
/// [transactional mode](crate::IdempotencyLayer::in_transaction): the same transaction that
/// holds the request's claim, so that what the handler writes through it commits together with
/// its recorded response, or not at all.
///
/// It dereferences to the store's connection (for PostgreSQL, sqlx's `PgConnection`: pass
/// `&mut *tx` to a query). The layer commits after the handler answers: a response the layer
/// records (2xx, most 4xx) commits the writes with it; a released one (5xx, 408, 425, 429)
/// rolls them back, so a retry runs against unchanged data.
///
/// Take it at most once per request, and only inside the handler: the layer commits after
/// the handler answers, and a `Tx` kept beyond that (moved into a spawned task) makes the
/// request fail with 500 `misconfigured` and its writes roll back. On a route the layer does
/// not cover transactionally (another method, no key with
/// [`key_optional`](crate::IdempotencyLayer::key_optional), no layer at all), taking it is
/// refused with 500 `misconfigured`; take `Option<Tx<S>>` to get `None` there instead.
///
/// The layer owns the transaction: do not end it through the `Tx` (`COMMIT`, `ROLLBACK`,
/// `RELEASE`, or `ROLLBACK TO` a savepoint you did not make). idem cannot detect it, and the
/// writes and the record would then commit apart. A statement that may fail belongs inside a
/// savepoint of your own (sqlx: `(&mut *tx).begin()`), so that its failure does not abort the
/// request's transaction; a failure that aborts it anyway while the handler answers a
/// recorded status gets 500 `transaction-aborted`, everything rolled back and the key free.
pub struct Tx<S: TransactionalStore> {
    lent: OwnedMappedMutexGuard<Option<S::Transaction<'static>>, S::Transaction<'static>>,
}

impl<S: TransactionalStore> std::fmt::Debug for Tx<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx").finish_non_exhaustive()
    }
}

impl<S: TransactionalStore> std::ops::Deref for Tx<S> {
    type Target = S::Connection;

    fn deref(&self) -> &S::Connection {
        &self.lent
    }
}

impl<S: TransactionalStore> std::ops::DerefMut for Tx<S> {
    fn deref_mut(&mut self) -> &mut S::Connection {
        &mut self.lent
    }
}

/// Why a [`Tx`] could not be taken: the route is not behind a transactional layer, or the
/// transaction is taken already. A 500 `misconfigured` problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxRejection {
    /// No transaction was lent to this request.
    NotLent,
    /// Another `Tx` of this request holds it.
    Taken,
}

impl std::fmt::Display for TxRejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotLent => {
                "no transaction was lent to this request: a `Tx` needs the route behind an \
                 `IdempotencyLayer` in transactional mode (`in_transaction`), for a request \
                 with an Idempotency-Key and a method the layer covers"
            }
            Self::Taken => "the request's transaction is taken already: take one `Tx` per request",
        })
    }
}

impl std::error::Error for TxRejection {}

impl IntoResponse for TxRejection {
    fn into_response(self) -> Response {
        Rejection::Misconfigured.to_response(DEFAULT_PROBLEM_BASE, &self.to_string(), None)
    }
}

impl<S: TransactionalStore, State: Send + Sync> FromRequestParts<State> for Tx<S> {
    type Rejection = TxRejection;

    async fn from_request_parts(parts: &mut Parts, _: &State) -> Result<Self, TxRejection> {
        let Some(Lent(slot)) = parts.extensions.get::<Lent<S>>().cloned() else {
            return Err(TxRejection::NotLent);
        };
        let lent = slot.try_lock_owned().map_err(|_| TxRejection::Taken)?;
        // Empty once the layer took it back to commit: nothing left to lend.
        let lent =
            OwnedMutexGuard::try_map(lent, Option::as_mut).map_err(|_| TxRejection::Taken)?;
        Ok(Self { lent })
    }
}

/// `Option<Tx<S>>`: `None` where no transaction was lent (a request without a key on a
/// [`key_optional`](crate::IdempotencyLayer::key_optional) route, say), so that the handler can
/// fall back to a connection of its own; taken twice is still refused.
impl<S: TransactionalStore, State: Send + Sync> OptionalFromRequestParts<State> for Tx<S> {
    type Rejection = TxRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &State,
    ) -> Result<Option<Self>, TxRejection> {
        match <Self as FromRequestParts<State>>::from_request_parts(parts, state).await {
            Ok(tx) => Ok(Some(tx)),
            Err(TxRejection::NotLent) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each rejection says how to fix the route. The match makes a new variant fail to compile
    /// here until it has a case.
    #[test]
    fn every_rejection_says_how_to_fix_it() {
        for rejection in [TxRejection::NotLent, TxRejection::Taken] {
            let says = match rejection {
                TxRejection::NotLent => "in transactional mode (`in_transaction`)",
                TxRejection::Taken => "take one `Tx` per request",
            };
            let message = rejection.to_string();
            assert!(message.contains(says), "{message:?} should say {says:?}");
            assert!(!message.contains("  "), "{message:?} has a run of spaces");
        }
    }
}

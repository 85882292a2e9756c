//! Calls run inside a database transaction: the claim, the body's writes and the record commit
//! together, or none of them does.

use std::future::Future;
use std::ops::DerefMut;
use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::context::{self, ClaimContext};
use crate::exact::encode_exactly;
use crate::outcome::{self, OnError, Served};
use crate::record::{Outcome, Record};
use crate::runtime::{
    decode_replay, later, same_request, ErrorPolicy, Prepared, Recordable, Unrecorded,
};
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
use crate::{Call, Error, Idempotency, OnInProgress};

/// A store whose claims and records can take part in a transaction of its database, so that a
/// body's writes through the same connection commit with the record or not at all.
///
/// Every method but `begin` works on a connection inside a transaction that `begin` opened. A
/// failure before `commit` returns leaves nothing behind: the runtime rolls back.
pub trait TransactionalStore: Store {
    /// The connection a body writes through (for PostgreSQL, sqlx's `PgConnection`).
    type Connection: ?Sized + Send;

    /// An open transaction, or a savepoint when the connection already was in one; dropping it
    /// rolls it back.
    type Transaction<'c>: DerefMut<Target = Self::Connection> + Send
    where
        Self: 'c;

    /// Opens a transaction on `connection`, or a savepoint if it is in one already.
    fn begin<'c>(
        &'c self,
        connection: &'c mut Self::Connection,
    ) -> impl Future<Output = Result<Self::Transaction<'c>, Error>> + Send;

    /// Commits the transaction (releases the savepoint). An error whose outcome is unknown (the
    /// connection was lost during `COMMIT`) is [`Error::store_indeterminate`].
    fn commit(
        &self,
        transaction: Self::Transaction<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Rolls the transaction (or savepoint) back.
    fn rollback(
        &self,
        transaction: Self::Transaction<'_>,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// [`Store::claim`] inside the transaction: a granted claim is visible to others only once
    /// the transaction commits. Must not wait for other transactions: a key another open
    /// transaction claimed is reported [`ClaimOutcome::InProgress`] (with an empty fingerprint
    /// when it cannot be read).
    fn claim_in(
        &self,
        connection: &mut Self::Connection,
        request: ClaimRequest<'_>,
    ) -> impl Future<Output = Result<ClaimOutcome, Error>> + Send;

    /// [`Store::complete`] inside the transaction.
    fn complete_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// How long a duplicate sleeps between looks at a key another transaction holds, at first and at
/// most.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

impl Idempotency {
    /// Runs `body` inside a transaction on `connection`: the claim, the body's writes through
    /// the connection it is given, and the record commit together, or roll back together. A
    /// duplicate replays the record; an `Err` rolls everything back and frees the key at once.
    ///
    /// If `connection` is already in a transaction, a savepoint is used instead, and the record
    /// becomes durable (and visible to duplicates) when the caller commits; if the caller rolls
    /// back, the record vanishes with the body's writes.
    ///
    /// The runtime must have been made with [`Idempotency::new`] over an `S`; otherwise the call
    /// fails with [`Error::InvalidOption`] before the body runs.
    pub async fn run_in_transaction<S, T, E, F>(
        &self,
        call: Call,
        connection: &mut S::Connection,
        body: F,
    ) -> Result<T, E>
    where
        S: TransactionalStore,
        F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let errors = Unrecorded(|_: &E| OnError::Release);
        self.transact::<S, _, _, _>(call, connection, body, errors)
            .await
    }

    /// Like [`run_in_transaction`](Self::run_in_transaction), but an `Err` is recorded (in the
    /// same transaction, after the body's writes were rolled back to a savepoint) and replayed.
    pub async fn run_in_transaction_recording_errors<S, T, E, F>(
        &self,
        call: Call,
        connection: &mut S::Connection,
        body: F,
    ) -> Result<T, E>
    where
        S: TransactionalStore,
        F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        let errors = Recordable(|_: &E| OnError::Record);
        self.transact::<S, _, _, _>(call, connection, body, errors)
            .await
    }

    /// Like [`run_in_transaction`](Self::run_in_transaction), with `on_error` deciding what each
    /// `Err` means. The body's writes are rolled back either way; [`OnError::OutcomeUnknown`]
    /// then claims the key for one lease outside the transaction, for effects the body may have
    /// started elsewhere.
    pub async fn run_in_transaction_with<S, T, E, F>(
        &self,
        call: Call,
        connection: &mut S::Connection,
        on_error: impl Fn(&E) -> OnError,
        body: F,
    ) -> Result<T, E>
    where
        S: TransactionalStore,
        F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        self.transact::<S, _, _, _>(call, connection, body, Unrecorded(on_error))
            .await
    }

    /// Like [`run_in_transaction_recording_errors`](Self::run_in_transaction_recording_errors),
    /// with `on_error` deciding what each `Err` means.
    pub async fn run_in_transaction_recording_errors_with<S, T, E, F>(
        &self,
        call: Call,
        connection: &mut S::Connection,
        on_error: impl Fn(&E) -> OnError,
        body: F,
    ) -> Result<T, E>
    where
        S: TransactionalStore,
        F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        self.transact::<S, _, _, _>(call, connection, body, Recordable(on_error))
            .await
    }

    async fn transact<S, T, E, F>(
        &self,
        call: Call,
        connection: &mut S::Connection,
        body: F,
        errors: impl ErrorPolicy<E>,
    ) -> Result<T, E>
    where
        S: TransactionalStore,
        F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let (result, served) = match self.store_as::<S>() {
            Some(store) => serve_in_transaction(self, store, call, connection, body, errors).await,
            None => (
                Err(Error::InvalidOption {
                    reason: format!(
                        "this call runs in a database transaction, which needs a runtime made \
                         with `Idempotency::new` over a `{}`; this runtime's store is another",
                        std::any::type_name::<S>()
                    ),
                }
                .into()),
                Served::NotRun,
            ),
        };
        outcome::report(served);
        result
    }
}

/// The call inside a transaction, and how its result came to be.
async fn serve_in_transaction<S, T, E, F>(
    runtime: &Idempotency,
    store: &S,
    call: Call,
    connection: &mut S::Connection,
    body: F,
    errors: impl ErrorPolicy<E>,
) -> (Result<T, E>, Served)
where
    S: TransactionalStore,
    F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
{
    let call = match runtime.prepare(call) {
        Ok(call) => call,
        Err(err) => return (Err(err.into()), Served::NotRun),
    };
    let attempt = AttemptId::random();
    let (mut transaction, fence) = match claim(store, connection, &call, attempt).await {
        Ok(Claimed::Fence(transaction, fence)) => (transaction, fence),
        Ok(Claimed::Replay { record, waited }) => {
            return match decode_replay(&call.key, &call.fingerprint, &record, &errors) {
                Ok(replayed) if waited => (replayed, Served::Waited),
                Ok(replayed) => (replayed, Served::Replayed),
                Err(err) => (Err(err.into()), Served::NotRun),
            };
        }
        Err(err) => return (Err(err.into()), Served::NotRun),
    };
    let context = ClaimContext {
        key: call.key.clone(),
        fence,
    };
    let ran = run_body_in(store, &mut transaction, errors.can_record(), context, body).await;
    let result = match ran {
        Ran::Returned(result) => result,
        Ran::Panicked(panic) => {
            // The writes are undone and the key is free at once; the panic goes on.
            let _ = store.rollback(transaction).await;
            std::panic::resume_unwind(panic)
        }
        Ran::StoreFailed(err) => {
            return (
                Err(rolled_back(store, transaction, err).await.into()),
                Served::Executed,
            )
        }
    };
    let (outcome, json) = match &result {
        Ok(value) => (Outcome::Ok, encode_exactly(value)),
        Err(err) => match (errors.classify(err), errors.encode(err)) {
            (OnError::Record, Some(json)) => (Outcome::Err, json),
            (how, _) => {
                let _ = store.rollback(transaction).await;
                if how == OnError::OutcomeUnknown {
                    // The database writes are undone, but effects elsewhere may have started:
                    // hold the key for a lease, as outside a transaction.
                    let request =
                        ClaimRequest::new(&call.key, attempt, &call.fingerprint, call.lease);
                    let _ = store.claim(request).await;
                }
                return (result, Served::Executed);
            }
        },
    };
    let json = match json {
        Ok(json) => json,
        Err(source) => {
            let err = Error::Encode {
                what: "the result (the transaction was rolled back)",
                source,
            };
            return (
                Err(rolled_back(store, transaction, err).await.into()),
                Served::Executed,
            );
        }
    };
    let record = Record::encode(outcome, &call.fingerprint, &json);
    if let Err(err) = store
        .complete_in(&mut transaction, &call.key, fence, &record, call.retention)
        .await
    {
        return (
            Err(rolled_back(store, transaction, err).await.into()),
            Served::Executed,
        );
    }
    match store.commit(transaction).await {
        Ok(()) => (result, Served::Executed),
        Err(err) => (Err(err.into()), Served::Executed),
    }
}

/// Rolls `transaction` back after `err`, and returns `err`.
async fn rolled_back<S: TransactionalStore>(
    store: &S,
    transaction: S::Transaction<'_>,
    err: Error,
) -> Error {
    let _ = store.rollback(transaction).await;
    err
}

/// How the body ended.
enum Ran<R> {
    Returned(R),
    Panicked(Box<dyn std::any::Any + Send>),
    /// The savepoint around the body could not be made or ended.
    StoreFailed(Error),
}

/// Runs the body on the transaction's connection. Errors that may be recorded need the body's
/// writes undone without losing the claim, so with `recordable` the body runs in a savepoint of
/// its own, released if it returns `Ok` and rolled back if it returns `Err`.
async fn run_body_in<S, F, T, E>(
    store: &S,
    connection: &mut S::Connection,
    recordable: bool,
    context: ClaimContext,
    body: F,
) -> Ran<Result<T, E>>
where
    S: TransactionalStore,
    F: AsyncFnOnce(&mut S::Connection) -> Result<T, E>,
{
    if !recordable {
        return match run_body(context::scope(context, body(connection))).await {
            Ok(result) => Ran::Returned(result),
            Err(panic) => Ran::Panicked(panic),
        };
    }
    let mut savepoint = match store.begin(connection).await {
        Ok(savepoint) => savepoint,
        Err(err) => return Ran::StoreFailed(err),
    };
    let result = match run_body(context::scope(context, body(&mut *savepoint))).await {
        Ok(result) => result,
        // Dropping the savepoint rolls it back.
        Err(panic) => return Ran::Panicked(panic),
    };
    let ended = if result.is_ok() {
        store.commit(savepoint).await
    } else {
        store.rollback(savepoint).await
    };
    match ended {
        Ok(()) => Ran::Returned(result),
        Err(err) => Ran::StoreFailed(err),
    }
}

/// Polls the body to completion, catching a panic so that the transaction is rolled back before
/// it goes on.
async fn run_body<F: Future>(body: F) -> std::thread::Result<F::Output> {
    let mut body = std::pin::pin!(body);
    std::future::poll_fn(move |cx| {
        match std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    })
    .await
}

enum Claimed<'c, S: TransactionalStore + 'c> {
    /// The claim, in the transaction that holds it.
    Fence(S::Transaction<'c>, Fence),
    /// A record to replay, and whether this call waited for a concurrent first call.
    Replay { record: Vec<u8>, waited: bool },
}

/// Claims the key in a new transaction, waiting for (or rejecting) another that holds it. A
/// waiting duplicate keeps its transaction open, holding nothing (its claims were not granted),
/// and looks again: under READ COMMITTED each look sees what committed meanwhile.
async fn claim<'c, S: TransactionalStore>(
    store: &'c S,
    connection: &'c mut S::Connection,
    call: &Prepared,
    attempt: AttemptId,
) -> Result<Claimed<'c, S>, Error> {
    let request = ClaimRequest::new(&call.key, attempt, &call.fingerprint, call.lease);
    // As outside a transaction, a duplicate waits at most one lease for the first call.
    let give_up_at = later(Instant::now(), call.lease);
    let mut pause = POLL_FIRST;
    let mut waited = false;
    let mut transaction = store.begin(connection).await?;
    loop {
        let holder = match store.claim_in(&mut transaction, request).await {
            Ok(ClaimOutcome::Acquired { fence, .. }) => {
                return Ok(Claimed::Fence(transaction, fence));
            }
            Ok(ClaimOutcome::Completed { record }) => {
                let _ = store.rollback(transaction).await;
                return Ok(Claimed::Replay { record, waited });
            }
            Ok(ClaimOutcome::InProgress { fingerprint, .. }) => fingerprint,
            Err(err) => return Err(rolled_back(store, transaction, err).await),
        };
        let refusal = if !same_request(&holder, &call.fingerprint) {
            Some(Error::KeyReused {
                key: call.key.clone(),
            })
        } else if call.on_in_progress == OnInProgress::Reject || Instant::now() >= give_up_at {
            Some(Error::InProgress {
                key: call.key.clone(),
            })
        } else {
            None
        };
        if let Some(err) = refusal {
            return Err(rolled_back(store, transaction, err).await);
        }
        waited = true;
        tokio::time::sleep(pause.min(give_up_at.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

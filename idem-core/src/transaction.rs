//! Calls run inside a database transaction: the claim, the body's writes and the record commit
//! together, or none of them does.
//!
//! The call is two steps around the body, so that the body is ordinary code (no closure whose
//! future would have to be `Send` for every lifetime): [`Idempotency::begin_transaction`] claims
//! the key in a transaction on the caller's connection (or finds the record to replay), the body
//! writes through [`TransactionClaim::connection`], and [`TransactionClaim::finish`] records its
//! result and commits, or rolls back.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::DerefMut;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use crate::context::ClaimContext;
use crate::exact::encode_exactly;
use crate::observe::{self, CallOutcome, CallTrace};
use crate::outcome::{self, OnError, Served};
use crate::record::{Outcome, Record};
use crate::runtime::{
    decode_replay, later, not_recorded, same_request, ErrorPolicy, Prepared, TransactionClaims,
};
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
use crate::{Call, Error, Idempotency};

/// A store whose claims and records can take part in a transaction of its database, so that a
/// body's writes through the same connection commit with the record or not at all.
///
/// Every method but `begin` works on a connection inside a transaction that `begin` opened. A
/// failure before `commit` returns leaves nothing behind: the runtime rolls back.
#[async_trait::async_trait]
pub trait TransactionalStore: Store {
    /// The connection a body writes through (for PostgreSQL, sqlx's `PgConnection`).
    type Connection: ?Sized + Send;

    /// An open transaction, or a savepoint when the connection already was in one; dropping it
    /// rolls it back.
    type Transaction<'c>: DerefMut<Target = Self::Connection> + Send;

    /// Opens a transaction on `connection`, or a savepoint if it is in one already.
    async fn begin<'c>(
        &self,
        connection: &'c mut Self::Connection,
    ) -> Result<Self::Transaction<'c>, Error>;

    /// Whether `connection` is already inside a transaction, so that [`begin`](Self::begin)
    /// would open a savepoint in the caller's transaction. By default, `false`.
    fn in_transaction(&self, connection: &Self::Connection) -> bool {
        let _ = connection;
        false
    }

    /// Opens a transaction on a connection of the store's own (from its pool), for a caller that
    /// holds none: the HTTP layer's transactional mode begins each request's transaction so.
    async fn begin_pooled(&self) -> Result<Self::Transaction<'static>, Error>;

    /// Commits the transaction (releases the savepoint). An error whose outcome is unknown (the
    /// connection was lost during `COMMIT`) is [`Error::store_indeterminate`].
    async fn commit(&self, transaction: Self::Transaction<'_>) -> Result<(), Error>;

    /// Rolls the transaction (or savepoint) back.
    async fn rollback(&self, transaction: Self::Transaction<'_>) -> Result<(), Error>;

    /// Marks where the body's writes begin, under `name` (unique to the call, a plain
    /// identifier), so that they can be undone without the claim (`SAVEPOINT name`).
    async fn mark(&self, connection: &mut Self::Connection, name: &str) -> Result<(), Error>;

    /// Undoes the writes since [`mark`](Self::mark) `name` (`ROLLBACK TO SAVEPOINT name`).
    async fn undo_to_mark(
        &self,
        connection: &mut Self::Connection,
        name: &str,
    ) -> Result<(), Error>;

    /// [`Store::claim`] inside the transaction: a granted claim is visible to others only once
    /// the transaction commits. Must not wait for other transactions: a key another open
    /// transaction claimed is reported [`ClaimOutcome::InProgress`] (with an empty fingerprint
    /// when it cannot be read).
    async fn claim_in(
        &self,
        connection: &mut Self::Connection,
        request: ClaimRequest<'_>,
    ) -> Result<ClaimOutcome, Error>;

    /// Extends the lease of the claim `fence` holds in this transaction to `lease` from now: the
    /// claim of an unknown outcome commits without a record and must hold the key for a whole
    /// lease from then, however long the body ran.
    async fn extend_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        lease: Duration,
    ) -> Result<(), Error>;

    /// The claim `fence` on `key`, granted by [`claim_in`](Self::claim_in), ended. `abandoned`
    /// is `Some(lease)` when it was dropped unfinished: its transaction rolls back only when its
    /// connection is used again, which a caller that keeps the connection may never do. A store
    /// ends such a transaction once it has sat idle in it for `lease`, so that its key is free
    /// within a lease whatever the caller does with its connection. Must not block; by default
    /// does nothing.
    fn claim_ended(&self, key: &str, fence: Fence, abandoned: Option<Duration>) {
        let _ = (key, fence, abandoned);
    }

    /// Waits, up to `timeout`, for the open transaction that holds `key` to end: `claim_in`
    /// reported the key [`InProgress`](ClaimOutcome::InProgress) with fence 0 (its claim is not
    /// committed). A store should wait where the database's deadlock detection sees it, and
    /// report a cycle (two transactions claiming two keys in opposite orders) as
    /// [`Error::Deadlock`]; returning early is fine (the runtime claims again). By default,
    /// sleeps `timeout`.
    async fn wait_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let _ = (connection, key);
        tokio::time::sleep(timeout).await;
        Ok(())
    }

    /// [`Store::complete`] inside the transaction.
    async fn complete_in(
        &self,
        connection: &mut Self::Connection,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error>;
}

/// How long a duplicate sleeps between looks at a key another transaction holds, at first and at
/// most.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(50);

/// What [`Idempotency::begin_transaction`] found.
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
    transaction: S::Transaction<'c>,
    claim: DetachedClaim<S, T, E, F>,
}

/// A [`TransactionClaim`] without its transaction, for a body that runs where the claim cannot
/// go: the HTTP layer lends the transaction to the handler through the request, and finishes
/// the claim with it afterwards. Made by [`TransactionClaim::detach`].
///
/// Dropping it without [`finish`](Self::finish) records nothing: the transaction, dropped too,
/// rolls back and the key is free.
#[must_use = "finish the claim with its transaction and the body's result"]
pub struct DetachedClaim<S: TransactionalStore, T, E, F> {
    store: Arc<S>,
    /// Boxed: it keeps `TransactionBegun::Claimed` near the size of a replayed result.
    call: Box<Prepared>,
    attempt: AttemptId,
    fence: Fence,
    policy: Policy<E, F>,
    /// The call's trace, finished by `finish` (or, dropped unfinished, as released).
    /// Boxed: it is large next to a replayed result.
    trace: Option<Box<CallTrace>>,
    /// The key's place among the keys claimed in open transactions, while the claim lives.
    _registered: Registered,
    /// Whether `finish` ended it; dropped otherwise, it was abandoned
    /// ([`TransactionalStore::claim_ended`]).
    finished: bool,
    /// Whether it was claimed in a savepoint of the caller's own transaction, which is the
    /// caller's to end, abandoned or not.
    in_callers_transaction: bool,
    _result: PhantomData<fn() -> T>,
}

/// A key claimed on a connection, registered until the claim ends.
struct Registered {
    claims: Arc<TransactionClaims>,
    entry: Option<(usize, String)>,
}

impl Registered {
    fn new(claims: Arc<TransactionClaims>, entry: (usize, String)) -> Self {
        lock(&claims).insert(entry.clone());
        Registered {
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

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            trace.finish(CallOutcome::Released);
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

/// How a transactional call treats its body's `Err`: classified by `F`, and recorded with the
/// codec when there is one. A savepoint before the body lets its writes be undone alone, for an
/// error's record or to keep the claim of an unknown outcome; `classifies` is false when every
/// error is released (no savepoint needed).
struct Policy<E, F> {
    on_error: F,
    codec: Option<Codec<E>>,
    classifies: bool,
}

impl<E, F> Policy<E, F> {
    /// Errors classified by `on_error`, none recorded.
    fn classifying(on_error: F) -> Self {
        Policy {
            on_error,
            codec: None,
            classifies: true,
        }
    }

    /// Whether the body runs after a savepoint: when an error may be recorded or keep the claim.
    fn marks(&self) -> bool {
        self.codec.is_some() || self.classifies
    }
}

/// The serde functions of a recorded error type.
struct Codec<E> {
    encode: fn(&E) -> Result<Vec<u8>, serde_json::Error>,
    decode: fn(&[u8]) -> Result<E, serde_json::Error>,
}

impl<E: Serialize + DeserializeOwned> Codec<E> {
    /// Errors recorded as JSON, refused if they would not replay as written.
    fn json() -> Self {
        Codec {
            encode: encode_exactly::<E>,
            decode: |json| serde_json::from_slice(json),
        }
    }
}

impl<E, F: Fn(&E) -> OnError> ErrorPolicy<E> for Policy<E, F> {
    fn classify(&self, err: &E) -> OnError {
        match ((self.on_error)(err), &self.codec) {
            // The safe side of what was asked: nothing is replayed, nothing re-runs at once.
            (OnError::Record, None) => OnError::OutcomeUnknown,
            (how, _) => how,
        }
    }
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        self.codec.as_ref().map(|codec| (codec.encode)(err))
    }
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>> {
        self.codec.as_ref().map(|codec| (codec.decode)(json))
    }
}

impl Idempotency {
    /// Claims `call`'s key inside a transaction on `connection` (a savepoint, if the connection
    /// is in a transaction already), or finds its record. Run the body on the claim's
    /// [`connection`](TransactionClaim::connection), then
    /// [`finish`](TransactionClaim::finish) it with the body's result: the body's writes and the
    /// record commit together. An `Err` (as `on_error` classifies it), a panic or a dropped claim
    /// rolls everything back, and the key is free as soon as the rollback reaches the database
    /// (for a dropped claim, see [`TransactionClaim`]). In a savepoint, the record becomes
    /// durable (and visible to duplicates) when the caller commits, and vanishes with the body's
    /// writes if the caller rolls back.
    ///
    /// A duplicate arriving while another transaction holds the key looks again until it ends
    /// (up to one lease), or with [`OnInProgress::Reject`](crate::OnInProgress::Reject) gets [`Error::InProgress`] at once.
    /// The runtime must have been made with [`Idempotency::new`] over an `S`; otherwise the call
    /// fails with [`Error::InvalidOption`] before the body runs.
    ///
    /// `on_error` decides what each `Err` means: `Release` rolls back and frees the key;
    /// [`OnError::OutcomeUnknown`] (the body may have started effects outside the database)
    /// undoes the body's writes to a savepoint made before the body and commits the claim, so
    /// the key is held until its lease lapses, as outside a transaction. (That savepoint is one
    /// more statement; [`begin_transaction_releasing`](Self::begin_transaction_releasing) has
    /// none.) Because that hold must outlive the call, a `connection` already inside the
    /// caller's own transaction is refused with [`Error::InvalidOption`] before the body runs:
    /// there the hold would commit with the caller's transaction, and vanish with its rollback.
    pub async fn begin_transaction<'c, S, T, E, F>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
        on_error: F,
    ) -> TransactionBegun<'c, S, T, E, F>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> OnError,
    {
        let policy = Policy::classifying(on_error);
        self.begin_with(
            call,
            |store: Arc<S>| begin_own(store, connection, true),
            policy,
        )
        .await
    }

    /// Like [`begin_transaction`](Self::begin_transaction), with every `Err` rolled back and
    /// its key freed at once.
    pub async fn begin_transaction_releasing<'c, S, T, E>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
    ) -> TransactionBegun<'c, S, T, E, impl Fn(&E) -> OnError>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let policy = Policy {
            on_error: |_: &E| OnError::Release,
            codec: None,
            classifies: false,
        };
        self.begin_with(
            call,
            |store: Arc<S>| begin_own(store, connection, false),
            policy,
        )
        .await
    }

    /// Like [`begin_transaction`](Self::begin_transaction), but errors that `on_error` calls
    /// [`OnError::Record`] are recorded and replayed: the body's writes are undone (to a
    /// savepoint made before the body) and the error's record commits instead. As there, a
    /// connection inside the caller's own transaction is refused (`on_error` may say
    /// `OutcomeUnknown`, whose hold cannot outlive that transaction).
    pub async fn begin_transaction_recording_errors<'c, S, T, E, F>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
        on_error: F,
    ) -> TransactionBegun<'c, S, T, E, F>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
        F: Fn(&E) -> OnError,
    {
        let policy = Policy {
            on_error,
            codec: Some(Codec::json()),
            classifies: true,
        };
        self.begin_with(
            call,
            |store: Arc<S>| begin_own(store, connection, true),
            policy,
        )
        .await
    }

    /// [`begin_transaction_recording_errors`](Self::begin_transaction_recording_errors) with
    /// every `Err` recorded: no error can be an unknown outcome, so it may run in the caller's
    /// own transaction too. For `idem-postgres` and the macro.
    #[doc(hidden)]
    pub async fn begin_transaction_recording_every_error<'c, S, T, E>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
    ) -> TransactionBegun<'c, S, T, E, impl Fn(&E) -> OnError>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        let policy = Policy {
            on_error: |_: &E| OnError::Record,
            codec: Some(Codec::json()),
            classifies: false,
        };
        self.begin_with(
            call,
            |store: Arc<S>| begin_own(store, connection, false),
            policy,
        )
        .await
    }

    /// Like [`begin_transaction`](Self::begin_transaction), in a transaction on a connection of
    /// the store's own pool ([`TransactionalStore::begin_pooled`]) rather than the caller's: for
    /// a body that reaches the connection through the claim, such as a handler behind the HTTP
    /// layer's transactional mode, which [`detach`](TransactionClaim::detach)es it.
    pub async fn begin_pooled_transaction<S, T, E, F>(
        &self,
        call: Call,
        on_error: F,
    ) -> TransactionBegun<'static, S, T, E, F>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> OnError,
    {
        let policy = Policy::classifying(on_error);
        self.begin_with(
            call,
            |store: Arc<S>| async move { Ok((store.begin_pooled().await?, false)) },
            policy,
        )
        .await
    }

    async fn begin_with<'c, S, T, E, F, O, Fut>(
        &self,
        call: Call,
        open: O,
        policy: Policy<E, F>,
    ) -> TransactionBegun<'c, S, T, E, F>
    where
        S: TransactionalStore,
        T: DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> OnError,
        O: FnOnce(Arc<S>) -> Fut,
        Fut: Future<Output = Result<(S::Transaction<'c>, bool), Error>>,
    {
        let mut trace = self.trace(&call);
        let span = trace.span.clone();
        let claiming = self.claim_in_transaction(call, open, policy, &mut trace);
        let (mut begun, served) = observe::in_span(&span, claiming).await;
        match &mut begun {
            TransactionBegun::Claimed(claim) => claim.claim.trace = Some(Box::new(trace)),
            TransactionBegun::Done(_) => trace.finish(served.1),
        }
        if let Some(served) = served.0 {
            outcome::report(served);
        }
        begun
    }

    /// The claim, or the call's result and how it came to be.
    async fn claim_in_transaction<'c, S, T, E, F, O, Fut>(
        &self,
        call: Call,
        open: O,
        policy: Policy<E, F>,
        trace: &mut CallTrace,
    ) -> (
        TransactionBegun<'c, S, T, E, F>,
        (Option<Served>, CallOutcome),
    )
    where
        S: TransactionalStore,
        T: DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> OnError,
        O: FnOnce(Arc<S>) -> Fut,
        Fut: Future<Output = Result<(S::Transaction<'c>, bool), Error>>,
    {
        let fail = |err: Error| {
            let how = CallOutcome::of_error(&err);
            (
                TransactionBegun::Done(Err(err.into())),
                (Some(Served::NotRun), how),
            )
        };
        let Some(store) = self.store_arc::<S>() else {
            return fail(Error::invalid_option(format!(
                "this call runs in a database transaction, which needs a runtime made with \
                 `Idempotency::new` over a `{}`; this runtime's store is another",
                std::any::type_name::<S>()
            )));
        };
        let call = match self.prepare(call) {
            Ok(call) => call,
            Err(err) => return fail(err),
        };
        trace.keyed(&call.key);
        let attempt = AttemptId::random();
        let (transaction, in_callers_transaction) = match open(store.clone()).await {
            Ok(opened) => opened,
            Err(err) => return fail(err),
        };
        // Where the connection is, while the transaction borrows it, tells a nested call on the
        // same connection from a call on another.
        let held_on = (
            std::ptr::from_ref::<S::Connection>(&transaction).cast::<()>() as usize,
            call.key.clone(),
        );
        let nested = lock(self.transaction_claims()).contains(&held_on);
        if nested {
            let _ = store.rollback(transaction).await;
            return fail(Error::invalid_option(format!(
                "`{}` is claimed by a call still running in this same transaction (a nested call \
                 with the same key), which this call would wait on forever; give the inner call \
                 another key",
                call.key
            )));
        }
        let (transaction, fence) = match claim(&*store, transaction, &call, attempt).await {
            Ok(Claimed::Fence(transaction, fence)) => (transaction, fence),
            Ok(Claimed::Replay { record, waited }) => {
                return match decode_replay(&call.key, &call.fingerprint, &record, &policy) {
                    Ok(result) => {
                        let served = if waited {
                            (Served::Waited, CallOutcome::Waited)
                        } else {
                            (Served::Replayed, CallOutcome::Replayed)
                        };
                        (TransactionBegun::Done(result), (Some(served.0), served.1))
                    }
                    Err(err) => fail(err),
                };
            }
            Err(err) => return fail(err),
        };
        trace.claimed(fence);
        let registered = Registered::new(self.transaction_claims().clone(), held_on);
        let marks = policy.marks();
        // The claim exists from here: a call cancelled while the mark is made drops it as an
        // abandoned claim (`TransactionalStore::claim_ended`), as it would mid-body.
        let mut claim = TransactionClaim {
            transaction,
            claim: DetachedClaim {
                store,
                call: Box::new(call),
                attempt,
                fence,
                policy,
                trace: None,
                _registered: registered,
                finished: false,
                in_callers_transaction,
                _result: PhantomData,
            },
        };
        if marks {
            let (store, mark) = (claim.claim.store.clone(), mark_name(attempt));
            if let Err(err) = store.mark(&mut claim.transaction, &mark).await {
                let TransactionClaim {
                    transaction,
                    claim: mut detached,
                } = claim;
                let _ = store.rollback(transaction).await;
                // Rolled back, not abandoned.
                detached.finished = true;
                return fail(err);
            }
        }
        // `Executed` is reported when the claim is finished; the outcome is a placeholder.
        (
            TransactionBegun::Claimed(claim),
            (None, CallOutcome::OutcomeUnknown),
        )
    }
}

impl<'c, S, T, E, F> TransactionClaim<'c, S, T, E, F>
where
    S: TransactionalStore,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> OnError,
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
    /// too and the error is returned; a commit whose outcome is unknown (the connection was lost
    /// during `COMMIT`) is [`Error::Store`] with `is_indeterminate()`: a retry replays if it
    /// committed and runs the body if it did not.
    pub async fn finish(self, result: Result<T, E>) -> Result<T, E> {
        self.claim.finish(self.transaction, result).await
    }
}

impl<S, T, E, F> DetachedClaim<S, T, E, F>
where
    S: TransactionalStore,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> OnError,
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
        outcome::report(Served::Executed);
        result
    }

    async fn end(
        &self,
        mut transaction: S::Transaction<'_>,
        result: Result<T, E>,
    ) -> (Result<T, E>, CallOutcome) {
        let (store, call, attempt, fence, policy) = (
            &*self.store,
            &self.call,
            self.attempt,
            self.fence,
            &self.policy,
        );
        // idem's own failure ends the call: the body's writes are rolled back with it, and the
        // error says so (the body ran: never "did not run").
        let failed = |err: Error| {
            let err = after_the_body(&call.key, err);
            let how = CallOutcome::of_error(&err);
            (Err(err.into()), how)
        };
        let (outcome, json) = match &result {
            Ok(value) => (Outcome::Ok, encode_exactly(value)),
            Err(err) => match (policy.classify(err), policy.encode(err)) {
                (OnError::Record, Some(json)) => {
                    // The body's writes go; the claim stays, for the error's record.
                    let mark = mark_name(attempt);
                    if let Err(undo) = store.undo_to_mark(&mut transaction, &mark).await {
                        return failed(rolled_back(store, transaction, undo).await);
                    }
                    (Outcome::Err, json)
                }
                (OnError::OutcomeUnknown, _) if policy.marks() => {
                    // The database writes are undone, but effects elsewhere may have started:
                    // the claim commits without a record and holds the key until its lease
                    // lapses, as outside a transaction. It never left this transaction, so no
                    // duplicate can slip in between.
                    let mark = mark_name(attempt);
                    let held = match store.undo_to_mark(&mut transaction, &mark).await {
                        Ok(()) => {
                            let extended = store
                                .extend_in(&mut transaction, &call.key, fence, call.lease)
                                .await;
                            match extended {
                                Ok(()) => store.commit(transaction).await,
                                Err(err) => Err(rolled_back(store, transaction, err).await),
                            }
                        }
                        Err(undo) => Err(rolled_back(store, transaction, undo).await),
                    };
                    return match held {
                        Ok(()) => (result, CallOutcome::OutcomeUnknown),
                        // The hold's COMMIT got no reply: the key is held for a lease, or free.
                        // Not `CommitUnknown` (there is no record to replay): the body ran and
                        // its result is not recorded.
                        Err(
                            err @ Error::Store {
                                indeterminate: true,
                                ..
                            },
                        ) => failed(not_recorded(call.key.clone(), err)),
                        // The key could not be held: say so rather than return the body's
                        // error as if a retry had to wait.
                        Err(err) => failed(err),
                    };
                }
                _ => {
                    let _ = store.rollback(transaction).await;
                    return (result, CallOutcome::Released);
                }
            },
        };
        let json = match json {
            Ok(json) => json,
            Err(source) => {
                let err = Error::Encode {
                    what: "the result",
                    source,
                };
                return failed(rolled_back(store, transaction, err).await);
            }
        };
        let record = Record::encode(outcome, &call.fingerprint, &json);
        if let Err(err) = store
            .complete_in(&mut transaction, &call.key, fence, &record, call.retention)
            .await
        {
            return failed(rolled_back(store, transaction, err).await);
        }
        match store.commit(transaction).await {
            Ok(()) => (result, CallOutcome::Executed),
            Err(err) => failed(err),
        }
    }
}

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

/// Opens the call's transaction on the caller's `connection`. Where the body's errors are
/// classified (`may_hold`: one may be an unknown outcome, whose claim must hold the key for a
/// lease), a connection already in the caller's own transaction is refused: the hold would
/// commit with that transaction, and the caller's rollback (what `?` does) would free the key
/// for a retry that repeats the effect.
async fn begin_own<S: TransactionalStore>(
    store: Arc<S>,
    connection: &mut S::Connection,
    may_hold: bool,
) -> Result<(S::Transaction<'_>, bool), Error> {
    let in_callers_transaction = store.in_transaction(connection);
    if may_hold && in_callers_transaction {
        return Err(Error::invalid_option(
            "errors classified by `on_error` may be unknown outcomes, whose claim must hold the \
             key for a lease, and inside your own transaction that hold would vanish if you roll \
             back; pass a connection that is not in a transaction (idem then commits the hold), \
             or classify no errors here (errors released: `begin`; recorded: \
             `begin_recording_errors`)",
        ));
    }
    Ok((store.begin(connection).await?, in_callers_transaction))
}

/// The savepoint before a call's body: unique to the call, so that a body's own savepoints
/// cannot be confused with it.
fn mark_name(attempt: AttemptId) -> String {
    format!("idem_body_{:032x}", attempt.0)
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

enum Claimed<'c, S: TransactionalStore> {
    /// The claim, in the transaction that holds it.
    Fence(S::Transaction<'c>, Fence),
    /// A record to replay, and whether this call waited for a concurrent first call.
    Replay { record: Vec<u8>, waited: bool },
}

/// Claims the key in `transaction`, waiting for (or rejecting) another that holds it. A
/// waiting duplicate keeps its transaction open, holding nothing (its claims were not granted),
/// and looks again: under READ COMMITTED each look sees what committed meanwhile.
async fn claim<'c, S: TransactionalStore>(
    store: &S,
    mut transaction: S::Transaction<'c>,
    call: &Prepared,
    attempt: AttemptId,
) -> Result<Claimed<'c, S>, Error> {
    let request = ClaimRequest::new(&call.key, attempt, &call.fingerprint, call.lease);
    // As outside a transaction, a duplicate waits at most one lease for the first call.
    let give_up_at = later(Instant::now(), call.on_in_progress.patience(call.lease));
    let mut pause = POLL_FIRST;
    let mut waited = false;
    loop {
        let (holder, lease_remaining, open) = match store.claim_in(&mut transaction, request).await
        {
            Ok(ClaimOutcome::Acquired { fence, .. }) => {
                return Ok(Claimed::Fence(transaction, fence));
            }
            Ok(ClaimOutcome::Completed { record }) => {
                let _ = store.rollback(transaction).await;
                return Ok(Claimed::Replay { record, waited });
            }
            Ok(ClaimOutcome::InProgress {
                fingerprint,
                lease_remaining,
                fence,
            }) => (fingerprint, lease_remaining, fence == Fence(0)),
            Err(err) => return Err(rolled_back(store, transaction, err).await),
        };
        let refusal = if !same_request(&holder, &call.fingerprint) {
            Some(Error::KeyReused {
                key: call.key.clone(),
            })
        } else if Instant::now() >= give_up_at {
            Some(Error::InProgress {
                key: call.key.clone(),
                lease_remaining: Some(lease_remaining),
            })
        } else {
            None
        };
        if let Some(err) = refusal {
            return Err(rolled_back(store, transaction, err).await);
        }
        waited = true;
        let patience = give_up_at.saturating_duration_since(Instant::now());
        if open {
            // Another open transaction holds the key: wait for it to end where the database
            // sees the wait, so that a cycle of waits is found (and broken) within a second.
            if let Err(err) = store.wait_in(&mut transaction, &call.key, patience).await {
                return Err(rolled_back(store, transaction, err).await);
            }
        } else {
            // A committed claim (outside a transaction, or an unknown outcome held): look
            // again as it renews or lapses.
            tokio::time::sleep(pause.min(patience)).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

//! Claiming a key inside a transaction: [`Idempotency::begin_transaction_with`] and its flavours.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;

use super::claim::{lock, DetachedClaim, Registered, TransactionBegun, TransactionClaim};
use super::settle::{or_roll_back, savepoint_name, Open};
use super::TransactionalStore;
use crate::call::Call;
use crate::observe::{self, CallOutcome, CallTrace};
use crate::policy::{Codec, Disposition, Policy};
use crate::runtime::{decode_replay, same_request, Prepared};
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence};
use crate::time::later;
use crate::{Error, Idempotency};

/// How long a duplicate sleeps between looks at a key another transaction holds, at first and at
/// most.
const POLL_FIRST: Duration = Duration::from_millis(5);

const POLL_MAX: Duration = Duration::from_millis(50);

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
    /// [`Disposition::OutcomeUnknown`] (the body may have started effects outside the database)
    /// undoes the body's writes to a savepoint made before the body and commits the claim, so
    /// the key is held until its lease lapses, as outside a transaction. (That savepoint is one
    /// more statement; [`begin_transaction`](Self::begin_transaction) has
    /// none.) Because that hold must outlive the call, a `connection` already inside the
    /// caller's own transaction is refused with [`Error::InvalidOption`] before the body runs:
    /// there the hold would commit with the caller's transaction, and vanish with its rollback.
    pub async fn begin_transaction_with<'c, S, T, E, F>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
        on_error: F,
    ) -> TransactionBegun<'c, S, T, E, F>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> Disposition,
    {
        let policy = Policy::classifying(on_error);
        self.begin_with(
            call,
            |store: Arc<S>| begin_own(store, connection, true),
            policy,
        )
        .await
    }

    /// Like [`begin_transaction_with`](Self::begin_transaction_with), with every `Err` rolled back and
    /// its key freed at once.
    pub async fn begin_transaction<'c, S, T, E>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
    ) -> TransactionBegun<'c, S, T, E, impl Fn(&E) -> Disposition>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let policy = Policy {
            on_error: |_: &E| Disposition::Release,
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

    /// Like [`begin_transaction_with`](Self::begin_transaction_with), but errors that `on_error` calls
    /// [`Disposition::Record`] are recorded and replayed: the body's writes are undone (to a
    /// savepoint made before the body) and the error's record commits instead. As there, a
    /// connection inside the caller's own transaction is refused (`on_error` may say
    /// `OutcomeUnknown`, whose hold cannot outlive that transaction).
    pub async fn begin_transaction_recording_errors_with<'c, S, T, E, F>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
        on_error: F,
    ) -> TransactionBegun<'c, S, T, E, F>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
        F: Fn(&E) -> Disposition,
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

    /// [`begin_transaction_recording_errors_with`](Self::begin_transaction_recording_errors_with)
    /// with every `Err` recorded: no error can be an unknown outcome, so it may run in the
    /// caller's own transaction too.
    pub async fn begin_transaction_recording_errors<'c, S, T, E>(
        &self,
        call: Call,
        connection: &'c mut S::Connection,
    ) -> TransactionBegun<'c, S, T, E, impl Fn(&E) -> Disposition>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        let policy = Policy {
            on_error: |_: &E| Disposition::Record,
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

    /// Like [`begin_transaction_with`](Self::begin_transaction_with), in a transaction on a connection of
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
        F: Fn(&E) -> Disposition,
    {
        let policy = Policy::classifying(on_error);
        self.begin_with(
            call,
            |store: Arc<S>| async move { Ok((store.begin_pooled().await?, Opened::Pooled)) },
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
        F: Fn(&E) -> Disposition,
        O: FnOnce(Arc<S>) -> Fut,
        Fut: Future<Output = Result<(S::Transaction<'c>, Opened), Error>>,
    {
        let mut trace = self.trace(&call);
        let span = trace.span.clone();
        let claiming = self.claim_in_transaction(call, open, policy, &mut trace);
        let (mut begun, how) = observe::in_span(&span, claiming).await;
        match &mut begun {
            // `finish` ends its trace.
            TransactionBegun::Claimed(claim) => claim.claim.trace = Some(Box::new(trace)),
            TransactionBegun::Done(_) => trace.finish(how),
        }
        begun
    }

    /// The claim, or the call's result and how the call ended (for a claim, how it ends is for
    /// `finish` to tell).
    async fn claim_in_transaction<'c, S, T, E, F, O, Fut>(
        &self,
        call: Call,
        open: O,
        policy: Policy<E, F>,
        trace: &mut CallTrace,
    ) -> (TransactionBegun<'c, S, T, E, F>, CallOutcome)
    where
        S: TransactionalStore,
        T: DeserializeOwned,
        E: From<Error>,
        F: Fn(&E) -> Disposition,
        O: FnOnce(Arc<S>) -> Fut,
        Fut: Future<Output = Result<(S::Transaction<'c>, Opened), Error>>,
    {
        let fail = |err: Error| {
            let how = CallOutcome::before_body(&err);
            (TransactionBegun::Done(Err(err.into())), how)
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
        let (transaction, opened) = match open(store.clone()).await {
            Ok(opened) => opened,
            Err(err) => return fail(err),
        };
        let in_callers_transaction = opened == Opened::InCallersTransaction;
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
        let (transaction, fence) = match claim(&*store, transaction, &call, attempt, opened).await {
            Ok(Acquired::Fence(transaction, fence)) => (transaction, fence),
            Ok(Acquired::Replay {
                record,
                waited,
                fence,
            }) => {
                trace.replays(fence);
                return match decode_replay(&call.key, &call.fingerprint, &record, &policy) {
                    Ok(result) => {
                        let how = if waited {
                            CallOutcome::Waited
                        } else {
                            CallOutcome::Replayed
                        };
                        (TransactionBegun::Done(result), how)
                    }
                    Err(err) => fail(err),
                };
            }
            Err(err) => return fail(err),
        };
        trace.claimed(fence);
        let registered = Registered::new(self.transaction_claims().clone(), held_on);
        let savepoint = policy.needs_savepoint();
        // The claim exists from here: a call cancelled while the savepoint is made drops it as an
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
        if savepoint {
            let (store, name) = (claim.claim.store.clone(), savepoint_name(attempt));
            if let Err(err) = store.savepoint(&mut claim.transaction, &name).await {
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
        // How the call ends is told when the claim is finished; unused here.
        (
            TransactionBegun::Claimed(claim),
            CallOutcome::OutcomeUnknown,
        )
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
) -> Result<(S::Transaction<'_>, Opened), Error> {
    let in_callers_transaction = store.in_transaction(connection);
    if may_hold && in_callers_transaction {
        return Err(Error::invalid_option(
            "errors classified by `on_error` may be unknown outcomes, whose claim must hold the \
             key for a lease, and inside your own transaction that hold would vanish if you roll \
             back; pass a connection that is not in a transaction (idem then commits the hold), \
             or classify no errors here (release every error, or record every error)",
        ));
    }
    let opened = if in_callers_transaction {
        Opened::InCallersTransaction
    } else {
        Opened::OnCallersConnection
    };
    Ok((store.begin(connection).await?, opened))
}

/// Where a call's transaction was opened, which decides how a replay ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opened {
    /// A transaction of idem's own on the caller's connection, which the caller may then keep
    /// idle: a replay's rollback is awaited, so that nothing is left open on it.
    OnCallersConnection,
    /// A savepoint in the caller's own transaction, which the caller goes on using.
    InCallersTransaction,
    /// A transaction on a connection of the store's pool, which the pool takes back (and
    /// flushes) as the call returns.
    Pooled,
}

enum Acquired<'c, S: TransactionalStore> {
    /// The claim, in the transaction that holds it.
    Fence(S::Transaction<'c>, Fence),
    /// A record to replay, whether this call waited for a concurrent first call, and the
    /// fence that recorded it.
    Replay {
        record: Vec<u8>,
        waited: bool,
        fence: Fence,
    },
}

/// Claims the key in `transaction`, waiting for (or rejecting) another that holds it. A
/// waiting duplicate keeps its transaction open, holding nothing (its claims were not granted),
/// and looks again: under READ COMMITTED each look sees what committed meanwhile.
async fn claim<'c, S: TransactionalStore>(
    store: &S,
    transaction: S::Transaction<'c>,
    call: &Prepared,
    attempt: AttemptId,
    opened: Opened,
) -> Result<Acquired<'c, S>, Error> {
    let mut open = Open { store, transaction };
    let request = ClaimRequest::new(&call.key, attempt, &call.fingerprint, call.lease)
        .with_retention(call.retention);
    // As outside a transaction, a duplicate waits at most one lease for the first call.
    let give_up_at = later(Instant::now(), call.on_in_progress.patience(call.lease));
    let mut pause = POLL_FIRST;
    let mut waited = false;
    loop {
        let claimed = store.claim_in(&mut open.transaction, request).await;
        let (holder, lease_remaining, held_open) = match or_roll_back!(open, claimed) {
            ClaimOutcome::Acquired { fence, .. } => {
                return Ok(Acquired::Fence(open.transaction, fence));
            }
            ClaimOutcome::Completed { record, fence, .. } => {
                // The rollback may wait for the connection's next use only where that use comes
                // at once: not after a wait (`wait_in` may have taken the key's lock), nor on
                // the caller's connection, which the caller may keep idle (holding the claim
                // statement's locks on the table, and open to an idle-in-transaction timeout).
                let rollback_may_wait = !waited && opened != Opened::OnCallersConnection;
                store
                    .end_replay(open.transaction, attempt, rollback_may_wait)
                    .await;
                return Ok(Acquired::Replay {
                    record,
                    waited,
                    fence,
                });
            }
            ClaimOutcome::Held { .. } => {
                open.roll_back().await;
                return Err(Error::OutcomeUnknown {
                    key: call.key.clone(),
                });
            }
            ClaimOutcome::InProgress {
                fingerprint,
                lease_remaining,
                fence,
            } => (fingerprint, lease_remaining, fence == Fence(0)),
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
            open.roll_back().await;
            return Err(err);
        }
        waited = true;
        let patience = give_up_at.saturating_duration_since(Instant::now());
        if held_open {
            // Another open transaction holds the key: wait for it to end where the database
            // sees the wait, so that a cycle of waits is found (and broken) within a second.
            let waited_in = store
                .wait_in(&mut open.transaction, &call.key, patience)
                .await;
            or_roll_back!(open, waited_in);
        } else {
            // A committed claim (outside a transaction, or an unknown outcome held): look
            // again as it renews or lapses.
            tokio::time::sleep(pause.min(patience)).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

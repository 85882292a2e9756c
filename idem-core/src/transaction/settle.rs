//! How a transactional call ends once its body returned: the record committed with the body's
//! writes, the claim alone committed for an unknown outcome, or everything rolled back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::claim::DetachedClaim;
use super::TransactionalStore;
use crate::encode::encode_exactly;
use crate::error::not_recorded;
use crate::observe::{self, CallOutcome};
use crate::policy::{Disposition, ErrorPolicy};
use crate::store::{AttemptId, Outcome, Record};
use crate::Error;

impl<S, T, E, F> DetachedClaim<S, T, E, F>
where
    S: TransactionalStore,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    F: Fn(&E) -> Disposition,
{
    /// [`TransactionClaim::finish`](crate::TransactionClaim::finish), with the transaction
    /// [`detach`](crate::TransactionClaim::detach) returned.
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
    /// started, so the claim commits without a record and holds the key until its lease lapses
    /// (or as the call's `UnknownHold` says), as outside a transaction. It never left this transaction, so no duplicate can slip in
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
        let extended = match call.hold_unknown {
            Some(hold) => {
                let hold = hold.max(call.lease);
                store
                    .hold_in(&mut open.transaction, &call.key, self.fence, hold)
                    .await
            }
            None => {
                store
                    .extend_in(&mut open.transaction, &call.key, self.fence, call.lease)
                    .await
            }
        };
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
    /// `DetachedClaim::hold`).
    Hold,
    /// Roll everything back: the key is free.
    RollBack,
}

/// The call's transaction until it commits. Every error on the way ends through
/// [`or_roll_back!`], which rolls it back: one exit, not one hand-written rollback per step
/// (dropping the transaction would roll back too, but only at the connection's next use).
pub(super) struct Open<'s, 't, S: TransactionalStore> {
    pub(super) store: &'s S,
    pub(super) transaction: S::Transaction<'t>,
}

impl<S: TransactionalStore> Open<'_, '_, S> {
    pub(super) async fn roll_back(self) {
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

pub(super) use or_roll_back;

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

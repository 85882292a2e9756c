//! What idem tells the outside about each call: a `tracing` span with its outcome, events for
//! what needs attention, metrics (feature `metrics`), and an [`Observer`] hook.
//!
//! Names follow OpenTelemetry's conventions (lowercase, dotted, `error.type`), so that
//! `tracing-opentelemetry` users get sensible traces without configuration. The raw key is never
//! recorded (keys can be personal data): calls carry a short hash of their store key instead.

use std::time::Duration;

use crate::store::Fence;

mod served;
mod trace;

pub use served::{report, served, Served};
pub(crate) use trace::{
    enter, held, hold_failed, in_span, operated, record_failed, release_failed, store_retry,
    store_span, CallTrace,
};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallOutcome {
    /// The body ran and its result (an `Ok`, or an `Err` recorded with `record_errors`) was
    /// recorded.
    Executed,
    /// A duplicate: the recorded result was replayed.
    Replayed,
    /// A duplicate that waited for the first call and got its result.
    Waited,
    /// Another call holds the key (`Error::InProgress`).
    InProgress,
    /// An earlier call's outcome is unknown and the key is held until it is resolved
    /// (`Error::OutcomeUnknown`): the body did not run.
    Held,
    /// The key was used for another request (`Error::KeyReused`).
    KeyReused,
    /// The claim lapsed while the body ran; its result was not recorded (`Error::LeaseLost`).
    LeaseLost,
    /// The body ran; its result could not be recorded (`Error::NotRecorded`).
    NotRecorded,
    /// The body returned an error that released the key for a retry.
    Released,
    /// The outcome is unknown (a panic, a cancellation mid-body, or an error classified so): the
    /// key stays claimed until its lease lapses, or is held as the call's `hold_unknown` says.
    OutcomeUnknown,
    /// The store failed before the body ran (`Error::Store`).
    StoreError,
    /// A stored record could not be read (`Error::Corrupt`).
    Corrupt,
    /// The key or an option was refused, or the request could not be fingerprinted.
    Invalid,
    /// The call was dropped (cancelled) before its body ran: while claiming or waiting. A claim
    /// request may have been applied; if so, the key is held until its lease lapses.
    Cancelled,
}

impl CallOutcome {
    /// The outcome as a short name (`executed`, `replayed`, ...): a span field and a metric
    /// label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::Waited => "waited",
            Self::InProgress => "in_progress",
            Self::Held => "held",
            Self::KeyReused => "key_reused",
            Self::LeaseLost => "lease_lost",
            Self::NotRecorded => "not_recorded",
            Self::Released => "released",
            Self::OutcomeUnknown => "outcome_unknown",
            Self::StoreError => "store_error",
            Self::Corrupt => "corrupt",
            Self::Invalid => "invalid",
            Self::Cancelled => "cancelled",
        }
    }

    /// How a call that ended so came to its result, as [`served`] tells it: the body ran,
    /// a record was replayed or waited for, or neither. (A body whose claim lapsed and whose key
    /// another call recorded meanwhile is `LeaseLost` here, and told as
    /// [`Served::Superseded`] by the call itself.)
    pub(crate) fn served(self) -> Served {
        match self {
            Self::Executed
            | Self::LeaseLost
            | Self::NotRecorded
            | Self::Released
            | Self::OutcomeUnknown => Served::Executed,
            Self::Replayed => Served::Replayed,
            Self::Waited => Served::Waited,
            Self::InProgress
            | Self::Held
            | Self::KeyReused
            | Self::StoreError
            | Self::Corrupt
            | Self::Invalid
            | Self::Cancelled => Served::NotRun,
        }
    }

    /// The outcome of a call that failed with `err` before its body: one whose
    /// [`served`](Self::served) is `NotRun`, whatever the error.
    pub(crate) fn before_body(err: &crate::Error) -> Self {
        use crate::Error;
        match err {
            Error::InProgress { .. } | Error::ClaimLapsed { .. } | Error::Deadlock { .. } => {
                Self::InProgress
            }
            Error::OutcomeUnknown { .. } => Self::Held,
            Error::KeyReused { .. } => Self::KeyReused,
            Error::Corrupt { .. } => Self::Corrupt,
            Error::InvalidKey { .. } | Error::InvalidOption { .. } | Error::Encode { .. } => {
                Self::Invalid
            }
            // The claim's statement failed (in a caller's transaction that was aborted, say):
            // the store's failure. The others come after a body only; listed so that a new
            // variant must be placed here.
            Error::Store { .. }
            | Error::TransactionAborted { .. }
            | Error::RolledBack { .. }
            | Error::CommitUnknown { .. }
            | Error::LeaseLost { .. }
            | Error::NotRecorded { .. } => Self::StoreError,
        }
    }

    /// The outcome of a call that failed with `err` once its body ran.
    pub(crate) fn of_error(err: &crate::Error) -> Self {
        use crate::Error;
        match err {
            // The body did not run, and another call may hold the key.
            Error::InProgress { .. } | Error::ClaimLapsed { .. } | Error::Deadlock { .. } => {
                Self::InProgress
            }
            Error::OutcomeUnknown { .. } => Self::Held,
            Error::KeyReused { .. } => Self::KeyReused,
            Error::LeaseLost { .. } => Self::LeaseLost,
            Error::NotRecorded { .. } => Self::NotRecorded,
            Error::Store { .. } => Self::StoreError,
            Error::Corrupt { .. } => Self::Corrupt,
            // Rolled back whole: the key is free, as for a released error.
            Error::TransactionAborted { .. } | Error::RolledBack { .. } => Self::Released,
            // Committed with its record, or not at all: nobody knows yet.
            Error::CommitUnknown { .. } => Self::OutcomeUnknown,
            _ => Self::Invalid,
        }
    }
}

impl std::fmt::Display for CallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished call, as an [`Observer`] sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallReport<'a> {
    /// The call's namespace (by the macro, the function's).
    pub namespace: &'a str,
    /// A short hash of the call's store key: the same for every delivery of one key, without
    /// the key itself.
    pub key_hash: &'a str,
    /// How it ended.
    pub outcome: CallOutcome,
    /// The fencing token, if this call held the claim.
    pub fence: Option<Fence>,
    /// From the call's start to its end.
    pub duration: Duration,
}

/// Told of every call's end: for services that want outcomes without `tracing` or `metrics`
/// (to count absorbed duplicates, or to tell a replayed response from a fresh one).
///
/// ```
/// # use idem_core as idem; // what users of the `idem` crate write
/// use idem::{Call, CallOutcome, CallReport, Idempotency, MemoryStore, Observer};
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// #[derive(Default)]
/// struct Duplicates(AtomicU32);
///
/// impl Observer for Duplicates {
///     fn call_finished(&self, report: &CallReport<'_>) {
///         if matches!(report.outcome, CallOutcome::Replayed | CallOutcome::Waited) {
///             self.0.fetch_add(1, Ordering::Relaxed);
///         }
///     }
/// }
///
/// # async fn demo() -> Result<(), idem::Error> {
/// let duplicates = Arc::new(Duplicates::default());
/// let idem = Idempotency::new(MemoryStore::new()).with_observer(duplicates.clone());
/// for _ in 0..3 {
///     idem.run(Call::new("charge", "order-1"), async { Ok::<_, idem::Error>(1) }).await?;
/// }
/// assert_eq!(duplicates.0.load(Ordering::Relaxed), 2);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
pub trait Observer: Send + Sync + 'static {
    /// A call ended. Called on the call's task: keep it short.
    fn call_finished(&self, report: &CallReport<'_>);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    /// Whatever ended a call before its body, `served` tells `NotRun`; and the outcomes of a
    /// call whose body ran tell `Executed`.
    #[test]
    fn a_call_that_failed_before_its_body_was_not_run() {
        let store = || Error::store("claim", "connection refused");
        let errors = [
            Error::invalid_key("empty"),
            Error::invalid_option("lease 0s"),
            Error::in_progress("k", None),
            Error::lease_lost("k"),
            Error::deadlock("k"),
            store(),
            Error::store_indeterminate("claim", "timed out"),
            Error::NotRecorded {
                key: "k".into(),
                source: Box::new(store()),
            },
            Error::transaction_aborted("claim", "25P02"),
            Error::RolledBack {
                key: "k".into(),
                source: Box::new(store()),
            },
            Error::CommitUnknown {
                key: "k".into(),
                source: "reset".into(),
            },
            Error::corrupt("k", "bad magic"),
        ];
        for err in &errors {
            let how = CallOutcome::before_body(err);
            assert_eq!(how.served(), Served::NotRun, "{err:?} → {how:?}");
        }
        assert_eq!(
            CallOutcome::before_body(&Error::transaction_aborted("claim", "25P02")),
            CallOutcome::StoreError
        );
        for err in &errors[7..11] {
            let how = CallOutcome::of_error(err);
            assert_eq!(how.served(), Served::Executed, "{err:?} → {how:?}");
        }
    }
}

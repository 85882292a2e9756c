//! What idem tells the outside about each call: a `tracing` span with its outcome, events for
//! what needs attention, metrics (feature `metrics`), and an [`Observer`] hook.
//!
//! Names follow OpenTelemetry's conventions (lowercase, dotted, `error.type`), so that
//! `tracing-opentelemetry` users get sensible traces without configuration. The raw key is never
//! recorded (keys can be personal data): calls carry a short hash of their store key instead.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Span;

use crate::store::Fence;

mod served;

pub use served::{report, served, Served};

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
    /// The key was used for another request (`Error::KeyReused`).
    KeyReused,
    /// The claim lapsed while the body ran; its result was not recorded (`Error::LeaseLost`).
    LeaseLost,
    /// The body ran; its result could not be recorded (`Error::NotRecorded`).
    NotRecorded,
    /// The body returned an error that released the key for a retry.
    Released,
    /// The outcome is unknown (a panic, a cancellation mid-body, or an error classified so): the
    /// key stays claimed until its lease lapses.
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

/// A short, stable hash of a store key, for logs: 16 hex digits. It masks the key; it does not
/// anonymise it (anyone can hash a guessed key and compare).
pub(crate) fn key_hash(store_key: &str) -> String {
    // SipHash with fixed keys: the same for every process of one build, and cheap.
    #[allow(
        deprecated,
        reason = "SipHasher is deprecated for its name only; its keys are fixed here"
    )]
    let mut hasher = std::hash::SipHasher::new();
    store_key.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// One call being traced: its span, and what is known so far. Dropped before `finish` while its
/// body runs (a panic, a cancellation), it reports an unknown outcome.
pub(crate) struct CallTrace {
    pub(crate) span: Span,
    namespace: Cow<'static, str>,
    observer: Option<Arc<dyn Observer>>,
    key_hash: Option<String>,
    fence: Option<Fence>,
    /// When the call started, if anything will want its duration.
    started: Option<Instant>,
    running: bool,
    done: bool,
}

impl CallTrace {
    pub(crate) fn new(namespace: Cow<'static, str>, observer: Option<Arc<dyn Observer>>) -> Self {
        let span = if tracing::level_enabled!(tracing::Level::INFO) {
            tracing::info_span!(
                "idem.call",
                idem.namespace = %namespace,
                idem.key_hash = Empty,
                idem.fence = Empty,
                idem.outcome = Empty,
                error.type = Empty,
            )
        } else {
            Span::none()
        };
        let started = (observer.is_some() || cfg!(feature = "metrics")).then(Instant::now);
        Self {
            span,
            namespace,
            observer,
            key_hash: None,
            fence: None,
            started,
            running: false,
            done: false,
        }
    }

    /// The call's store key is known.
    pub(crate) fn keyed(&mut self, store_key: &str) {
        let listened = self.observer.is_some()
            || !self.span.is_disabled()
            || tracing::level_enabled!(tracing::Level::WARN);
        if listened {
            let hash = key_hash(store_key);
            if !self.span.is_disabled() {
                self.span.record("idem.key_hash", hash.as_str());
            }
            self.key_hash = Some(hash);
        }
    }

    /// The call holds the claim: its body is about to run.
    pub(crate) fn claimed(&mut self, fence: Fence) {
        if !self.span.is_disabled() {
            self.span.record("idem.fence", fence.0);
        }
        self.fence = Some(fence);
        self.running = true;
        #[cfg(feature = "metrics")]
        metrics::gauge!("idem.calls.running", "idem.namespace" => self.namespace.clone())
            .increment(1.0);
    }

    /// Ends the call with `outcome`: its span, event and metrics, and what an enclosing
    /// [`served`] tells of it.
    pub(crate) fn finish(&mut self, outcome: CallOutcome) {
        if self.close(outcome) {
            report(outcome.served());
        }
    }

    /// Ends the call's span, event, metrics and observer report with `outcome`, once: returns
    /// whether it did now. Nothing is told to [`served`]: for calls dropped unfinished, whose
    /// caller is gone.
    pub(crate) fn close(&mut self, outcome: CallOutcome) -> bool {
        if std::mem::replace(&mut self.done, true) {
            return false;
        }
        let duration = self
            .started
            .map_or(Duration::ZERO, |started| started.elapsed());
        let warned = matches!(
            outcome,
            CallOutcome::LeaseLost
                | CallOutcome::NotRecorded
                | CallOutcome::Corrupt
                | CallOutcome::OutcomeUnknown
                | CallOutcome::StoreError
                | CallOutcome::Invalid
        );
        let warn = warned && outcome != CallOutcome::StoreError && outcome != CallOutcome::Invalid;
        if !self.span.is_disabled() {
            self.span.record("idem.outcome", outcome.as_str());
            if warned {
                self.span.record("error.type", outcome.as_str());
            }
        }
        // The event's span carries the fields; a warning carries them too, for subscribers that
        // keep warnings only (and so drop the span).
        let event = || {
            if warn {
                tracing::warn!(
                    idem.namespace = %self.namespace,
                    idem.key_hash = self.key_hash.as_deref().unwrap_or(""),
                    idem.fence = self.fence.map(|fence| fence.0),
                    "idempotent call: {outcome}"
                );
            } else {
                tracing::debug!("idempotent call: {outcome}");
            }
        };
        if self.span.is_disabled() {
            event();
        } else {
            self.span.in_scope(event);
        }
        #[cfg(feature = "metrics")]
        {
            let labels = [
                ("idem.namespace", self.namespace.clone()),
                ("idem.outcome", Cow::Borrowed(outcome.as_str())),
            ];
            metrics::counter!("idem.calls", &labels).increment(1);
            metrics::histogram!("idem.call.duration", &labels).record(duration.as_secs_f64());
            if self.running {
                metrics::gauge!("idem.calls.running", "idem.namespace" => self.namespace.clone())
                    .decrement(1.0);
            }
        }
        // Never while unwinding: a panic in the observer there would abort the process. And an
        // observer that panics must not turn a finished call into a panic for its caller.
        if let Some(observer) = self.observer.as_ref().filter(|_| !std::thread::panicking()) {
            let report = CallReport {
                namespace: &self.namespace,
                key_hash: self.key_hash.as_deref().unwrap_or(""),
                outcome,
                fence: self.fence,
                duration,
            };
            let told = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                observer.call_finished(&report);
            }));
            if told.is_err() {
                tracing::error!("an idem Observer panicked; the call's outcome was {outcome}");
            }
        }
        true
    }
}

impl Drop for CallTrace {
    fn drop(&mut self) {
        if !self.done {
            // Dropped mid-body (a cancellation: panics are told before they unwind), the claim
            // is kept; dropped before, the call was cancelled while claiming or waiting.
            let outcome = if self.running {
                CallOutcome::OutcomeUnknown
            } else {
                CallOutcome::Cancelled
            };
            self.close(outcome);
        }
    }
}

/// A store operation, as a child span of its call (at DEBUG: its duration is the round trip).
pub(crate) fn store_span(operation: &'static str) -> Span {
    // `level_enabled!` first: with nothing listening, even building a disabled span costs.
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        tracing::debug_span!("idem.store", db.operation = operation)
    } else {
        Span::none()
    }
}

/// `future` inside `span`, or as it is when nothing listens to the span. A disabled span is not
/// free to enter: with `tracing`'s `log` feature (which other crates turn on) each enter, exit
/// and record asks `log` whether it listens, on every poll. (Not an `async fn`: one would hold
/// the future twice, as its argument and as what it awaits.)
pub(crate) fn in_span<F: std::future::Future>(span: &Span, future: F) -> InSpan<F> {
    if span.is_disabled() {
        InSpan::Plain { future }
    } else {
        InSpan::Traced {
            future: tracing::Instrument::instrument(future, span.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`in_span`] returns.
    #[project = InSpanProjection]
    pub(crate) enum InSpan<F> {
        Plain { #[pin] future: F },
        Traced { #[pin] future: tracing::instrument::Instrumented<F> },
    }
}

impl<F: std::future::Future> std::future::Future for InSpan<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.project() {
            InSpanProjection::Plain { future } => future.poll(cx),
            InSpanProjection::Traced { future } => future.poll(cx),
        }
    }
}

/// Enters `span` unless nothing listens to it (see [`in_span`]).
pub(crate) fn enter(span: &Span) -> Option<tracing::span::Entered<'_>> {
    (!span.is_disabled()).then(|| span.enter())
}

/// A release failed: the key stays claimed until its lease lapses, which delays a retry.
pub(crate) fn release_failed(err: &crate::Error) {
    tracing::warn!(
        db.operation = "release",
        error.type = "store",
        "idem could not release a key (a retry waits for its lease to lapse): {err}"
    );
}

/// A store operation failed and will be tried again.
pub(crate) fn store_retry(operation: &'static str, attempt: u32, err: &crate::Error) {
    tracing::warn!(
        db.operation = operation,
        idem.attempt = attempt,
        error.type = "store",
        "idem store operation failed, retrying: {err}"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("idem.store.retries", "db.operation" => operation).increment(1);
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

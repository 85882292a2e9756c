//! A call's `tracing` span and the events, metrics and observer report that end it; the spans of
//! store operations.

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Span;

use super::{report, CallOutcome, CallReport, Observer};
use crate::store::Fence;

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

    /// The call replays the record made under `fence`: the span names the execution it
    /// replays.
    pub(crate) fn replays(&mut self, fence: Fence) {
        if !self.span.is_disabled() {
            self.span.record("idem.fence", fence.0);
        }
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

/// A key was held after an unknown outcome: nobody runs its body until the hold lapses or an
/// operator resolves it.
pub(crate) fn held(store_key: &str, fence: crate::Fence, hold: std::time::Duration) {
    tracing::warn!(
        idem.key_hash = key_hash(store_key).as_str(),
        idem.fence = fence.0,
        idem.hold_s = hold.as_secs(),
        "idem held a key whose call ended with an unknown outcome: calls of it fail with \
         OutcomeUnknown until the hold lapses or it is resolved (`idem resolve`)"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("idem.held").increment(1);
}

/// Holding a key after an unknown outcome failed: it is held for what its lease has left.
pub(crate) fn hold_failed(err: &crate::Error) {
    tracing::warn!(
        db.operation = "hold",
        error.type = "store",
        "idem could not hold a key whose call ended with an unknown outcome: once its lease \
         lapses (if it has not), the next delivery may run the body again: {err}"
    );
}

/// A result recorded in the background (its call was dropped while recording it) failed: the
/// key stays claimed until its lease lapses, then the next delivery may run the body again.
pub(crate) fn record_failed(err: &crate::Error) {
    tracing::warn!(
        db.operation = "complete",
        error.type = "store",
        "idem could not record a result whose call was dropped while recording it (the next \
         delivery may run the body again once the lease lapses): {err}"
    );
}

/// An operator acted on a key: evicted or resolved it.
pub(crate) fn operated(action: &'static str, store_key: &str, fence: crate::Fence) {
    tracing::warn!(
        idem.admin = action,
        idem.key_hash = key_hash(store_key).as_str(),
        idem.fence = fence.0,
        "an operator {action} an idem key"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("idem.admin", "action" => action).increment(1);
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

//! Running a body under a claim, split in two so that each idempotent function adds little code:
//! a driver that does not depend on the body's or the result's types, compiled once (claim or
//! confirm, keep the lease while the body runs, then record, release or keep the claim), and a
//! thin generic part that only polls the body and encodes or decodes its result.
//!
//! The two meet in a [`BodySlot`]: the driver says when the body may run, and the generic part
//! puts there how the body ended. The generic part polls both, the driver first, in one task.
//! Its own code is one small `poll` per body type ([`Execute`]), which hands the body on as a
//! `dyn Future` to [`ExecuteState::poll_with`], compiled once per result type.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tracing::Span;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::{self, ClaimContext};
use crate::exact::encode_exactly;
use crate::observe::{self, CallOutcome, CallTrace};
use crate::outcome::{self, OnError, Served};
use crate::record::Outcome;
use crate::runtime::{replayed, Begun, Call, Claim, ErrorPolicy, Idempotency, Settled};
use crate::Error;

/// Where a call starts.
pub(crate) enum Start {
    /// A call to claim.
    Call(Call),
    /// A claim taken earlier (by [`Idempotency::start`]) and its trace, to confirm before the
    /// body runs.
    Claimed(Claim, CallTrace),
}

/// How the driver ended.
pub(crate) enum Driven {
    /// A record to replay: the body must not run. The generic part decodes it and finishes the
    /// trace.
    Replay {
        key: String,
        fingerprint: Vec<u8>,
        record: Vec<u8>,
        waited: bool,
        trace: CallTrace,
    },
    /// The body ran, but its claim lapsed and another call recorded its result meanwhile: that
    /// record is this call's result too. The generic part decodes it and finishes the trace.
    Superseded {
        key: String,
        fingerprint: Vec<u8>,
        record: Vec<u8>,
        trace: CallTrace,
    },
    /// The body did not run.
    NotRun(Error),
    /// The body ran; an `Err` if its end could not be made durable (lease lost, not recorded).
    Ran(Result<(), Error>),
}

/// How a body ended, as the driver needs to know it.
pub(crate) enum End {
    /// Record this outcome with this JSON (or report why it cannot be recorded).
    Record(Outcome, Result<Vec<u8>, serde_json::Error>),
    /// Give the key back: a retry runs the body again.
    Release,
    /// The outcome is unknown: keep the claim until its lease lapses.
    KeepClaim,
}

/// What the driver and the generic part share.
#[derive(Default)]
pub(crate) struct BodySlot(Mutex<SlotState>);

#[derive(Default)]
enum SlotState {
    /// The body may not run yet.
    #[default]
    Waiting,
    /// The body may run, with this context and in this span; `pending` once it returned
    /// `Pending` (from then on the driver keeps the lease).
    Running {
        context: Arc<ClaimContext>,
        span: Span,
        pending: bool,
    },
    /// The body ended so (taken by the driver).
    Ended(Option<End>),
}

impl BodySlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn allow(&self, context: ClaimContext, span: Span) {
        *self.state() = SlotState::Running {
            context: Arc::new(context),
            span,
            pending: false,
        };
    }

    /// The body's context and span, while it may run.
    fn running(&self) -> Option<(Arc<ClaimContext>, Span)> {
        match &*self.state() {
            SlotState::Running { context, span, .. } => Some((context.clone(), span.clone())),
            _ => None,
        }
    }

    /// The body returned `Pending`: whether this is the first time.
    fn pending(&self) -> bool {
        match &mut *self.state() {
            SlotState::Running { pending, .. } => !std::mem::replace(pending, true),
            _ => false,
        }
    }

    fn ended(&self, end: End) {
        *self.state() = SlotState::Ended(Some(end));
    }

    /// How the body ended, once.
    fn take_end(&self) -> Option<End> {
        match &mut *self.state() {
            SlotState::Ended(end) => end.take(),
            _ => None,
        }
    }

    /// Whether the body returned `Pending` at least once.
    fn waited(&self) -> bool {
        matches!(&*self.state(), SlotState::Running { pending: true, .. })
    }
}

impl Idempotency {
    /// Everything of a call but its body: claim (or confirm the claim), let the body run, keep
    /// the lease while it does, and make its end durable. Compiled once for every function.
    pub(crate) async fn drive(self, start: Start, slot: Arc<BodySlot>) -> Driven {
        match start {
            Start::Call(call) => {
                let mut trace = self.trace(&call);
                let span = trace.span.clone();
                let claimed = async {
                    match self.begin(call, &mut trace).await {
                        Ok(Begun::Claimed(claim)) => self.run_claimed(claim, &slot, trace).await,
                        Ok(Begun::Replay {
                            key,
                            fingerprint,
                            record,
                            waited,
                        }) => Driven::Replay {
                            key,
                            fingerprint,
                            record,
                            waited,
                            trace,
                        },
                        Err(err) => not_run(err, trace),
                    }
                };
                observe::in_span(&span, claimed).await
            }
            Start::Claimed(claim, trace) => {
                let span = trace.span.clone();
                observe::in_span(&span, self.run_claimed(claim, &slot, trace)).await
            }
        }
    }

    /// The body runs under `claim`; then its end is made durable.
    async fn run_claimed(&self, mut claim: Claim, slot: &BodySlot, mut trace: CallTrace) -> Driven {
        // The claim must still hold, and hold for a while, before the body starts: a claim whose
        // reply came late, or one that waited to be run (`Idempotency::start`), may have lapsed,
        // and another caller may have taken over. Nothing to do in the common case (a clock
        // read); past a third of the lease it is renewed first.
        if let Err(err) = self.confirm(&claim).await {
            return not_run(err, trace);
        }
        claim.started();
        slot.allow(
            ClaimContext {
                key: claim.key.clone(),
                fence: claim.fence,
            },
            trace.span.clone(),
        );
        // The lease is kept from a task of its own where the runtime has threads (a body may
        // block its thread), and otherwise only for a body that did not end at its first poll:
        // one that ends at once registers no timer.
        let body_ended = std::future::poll_fn(|_| match slot.take_end() {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        });
        // A lost lease shows when the end is made durable: the store refuses the stale fence,
        // and a record is then written under a fresh claim if the key is free.
        let end = self
            .keeping_lease_apart(&claim, body_ended, || slot.waited())
            .await;
        let how = match &end {
            End::Record(..) => CallOutcome::Executed,
            End::Release => CallOutcome::Released,
            End::KeepClaim => CallOutcome::OutcomeUnknown,
        };
        let result = match self.finish(&claim, end).await {
            Ok(Settled::Mine) => {
                trace.finish(how);
                Ok(())
            }
            // Another call's record answers this call too (the body's own output is dropped):
            // one key, one result. Its effect happened as well, which the trace tells
            // (`lease_lost`, a warning) and `served` shows (`Replayed`, though the body ran).
            Ok(Settled::Winner(record)) => {
                return Driven::Superseded {
                    key: claim.key.clone(),
                    fingerprint: claim.fingerprint().to_vec(),
                    record,
                    trace,
                };
            }
            Err(err) => {
                trace.finish(CallOutcome::of_error(&err));
                Err(err)
            }
        };
        outcome::report(Served::Executed);
        Driven::Ran(result)
    }
}

/// Runs `body` at most once per key, started at `start` (the generic part of every `run`
/// flavour): the driver does everything but poll the body and encode or decode its result.
pub(crate) fn execute<T, E, Fut, P>(
    runtime: Idempotency,
    start: Start,
    body: Fut,
    errors: P,
) -> Execute<Fut, T, E, P>
where
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    P: ErrorPolicy<E>,
{
    let slot = Arc::new(BodySlot::default());
    Execute {
        state: ExecuteState {
            driver: Some(Box::pin(runtime.drive(start, slot.clone()))),
            slot,
            output: None,
            errors,
        },
        body: Some(body),
    }
}

pin_project! {
    /// The future of one call: its body and the rest of the call.
    pub(crate) struct Execute<Fut, T, E, P> {
        state: ExecuteState<T, E, P>,
        // An `Option` only so that a body dropped mid-run (a cancelled call) is dropped first,
        // inside its claim context and span, as it would be had it finished.
        #[pin]
        body: Option<Fut>,
    }

    impl<Fut, T, E, P> PinnedDrop for Execute<Fut, T, E, P> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some((context, span)) = this.state.slot.running() {
                let _entered = observe::enter(&span);
                let mut body = this.body;
                let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context::poll_in(context, || body.set(None))
                }));
                if let Err(panic) = dropped {
                    // The call is reported before the panic goes on: an observer is never
                    // called while unwinding.
                    this.state.driver = None;
                    // Already unwinding, a second panic out of a drop aborts the process: this
                    // one ends here.
                    if !std::thread::panicking() {
                        std::panic::resume_unwind(panic);
                    }
                }
            }
        }
    }
}

/// The driver's future. On the heap: it is large (its store operations, timers and trace), and
/// a call's future is moved several times before it runs.
type Driver = Pin<Box<dyn Future<Output = Driven> + Send>>;

/// Everything of a call's future but its body.
pub(crate) struct ExecuteState<T, E, P> {
    driver: Option<Driver>,
    slot: Arc<BodySlot>,
    output: Option<Result<T, E>>,
    errors: P,
}

impl<Fut, T, E, P> Future for Execute<Fut, T, E, P>
where
    Fut: Future<Output = Result<T, E>>,
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    P: ErrorPolicy<E>,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let this = self.project();
        match this.body.as_pin_mut() {
            Some(body) => this.state.poll_with(body, cx),
            // Only a dropped `Execute` lets go of its body.
            None => Poll::Ready(Err(polled_after_completion().into())),
        }
    }
}

impl<T, E, P> ExecuteState<T, E, P>
where
    T: Serialize + DeserializeOwned,
    E: From<Error>,
    P: ErrorPolicy<E>,
{
    /// Polls the driver, and the body when the driver lets it run. Not inlined: one copy per
    /// result type, not per function.
    #[inline(never)]
    fn poll_with(
        &mut self,
        mut body: Pin<&mut dyn Future<Output = Result<T, E>>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, E>> {
        let this = self;
        loop {
            let Some(driver) = this.driver.as_mut() else {
                // Polled after it returned: the driver is gone.
                return Poll::Ready(Err(polled_after_completion().into()));
            };
            if let Poll::Ready(driven) = driver.as_mut().poll(cx) {
                this.driver = None;
                return Poll::Ready(self::result(driven, this.output.take(), &this.errors));
            }
            if this.output.is_some() {
                return Poll::Pending;
            }
            let Some((context, span)) = this.slot.running() else {
                return Poll::Pending;
            };
            let polled = {
                let _entered = observe::enter(&span);
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context::poll_in(context, || body.as_mut().poll(cx))
                }))
            };
            match polled {
                Ok(Poll::Ready(result)) => {
                    this.slot.ended(end_of(&result, &this.errors));
                    this.output = Some(result);
                }
                Ok(Poll::Pending) => {
                    // The body waits. The first time, the driver starts keeping the lease (it is
                    // polled once more for that; the body is not, so that a body that yields
                    // lets other tasks run).
                    if this.slot.pending() {
                        if let Poll::Ready(driven) = driver.as_mut().poll(cx) {
                            this.driver = None;
                            let output = this.output.take();
                            return Poll::Ready(self::result(driven, output, &this.errors));
                        }
                    }
                    return Poll::Pending;
                }
                Err(panic) => {
                    // An unknown outcome: the claim is kept (see `OnError::OutcomeUnknown`).
                    // The driver's trace tells so as it is dropped, before unwinding, where an
                    // observer that panicked would abort the process.
                    this.driver = None;
                    std::panic::resume_unwind(panic)
                }
            }
        }
    }
}

/// The call's result, from how the driver ended and the body's output, if it ran.
fn result<T, E>(
    driven: Driven,
    output: Option<Result<T, E>>,
    errors: &impl ErrorPolicy<E>,
) -> Result<T, E>
where
    T: DeserializeOwned,
    E: From<Error>,
{
    match driven {
        Driven::Replay {
            key,
            fingerprint,
            record,
            waited,
            mut trace,
        } => {
            let (result, served, how) = replayed(&key, &fingerprint, &record, waited, errors);
            trace.finish(how);
            outcome::report(served);
            result
        }
        Driven::Superseded {
            key,
            fingerprint,
            record,
            mut trace,
        } => {
            trace.finish(CallOutcome::LeaseLost);
            match replayed(&key, &fingerprint, &record, false, errors) {
                // The other call's result (its value or its recorded error).
                (result, Served::Replayed, _) => {
                    outcome::report(Served::Superseded);
                    result
                }
                // Not this call's to return (another request's record, or one this function
                // cannot read): the body ran, its result is not recorded.
                _ => {
                    outcome::report(Served::Executed);
                    Err(Error::lease_lost(key).into())
                }
            }
        }
        Driven::NotRun(err) => Err(err.into()),
        Driven::Ran(Ok(())) => output.unwrap_or_else(|| Err(body_lost().into())),
        Driven::Ran(Err(err)) => Err(err.into()),
    }
}

/// A call that ended before its body ran.
fn not_run(err: Error, mut trace: CallTrace) -> Driven {
    trace.finish(CallOutcome::of_error(&err));
    outcome::report(Served::NotRun);
    Driven::NotRun(err)
}

/// The driver only goes on once the body's output is kept; this is the error should that ever
/// not hold.
#[cold]
fn body_lost() -> Error {
    Error::store(
        "run",
        "idem lost the body's result after recording it (a bug in idem: please report it)",
    )
}

#[cold]
fn polled_after_completion() -> Error {
    Error::store(
        "run",
        "an idempotent call's future was polled after it completed (a bug in the caller)",
    )
}

/// How a body's result ends its claim. Not inlined: one copy per result type, not per function.
#[inline(never)]
fn end_of<T, E>(result: &Result<T, E>, errors: &impl ErrorPolicy<E>) -> End
where
    T: Serialize + DeserializeOwned,
{
    match result {
        Ok(value) => End::Record(Outcome::Ok, encode_exactly(value)),
        Err(err) => match (errors.classify(err), errors.encode(err)) {
            (OnError::Record, Some(json)) => End::Record(Outcome::Err, json),
            (OnError::Release, _) => End::Release,
            _ => End::KeepClaim,
        },
    }
}

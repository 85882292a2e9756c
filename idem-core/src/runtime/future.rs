//! The generic half of a call's future: one small `poll` per body type ([`Execute`]), which hands
//! the body on as a `dyn Future` to [`ExecuteState::poll_with`], compiled once per result type
//! and error policy. The driver it polls is in [`driver`](super::driver).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::driver::{BodySlot, Driven, End, Start};
use super::replay::replayed;
use super::Idempotency;
use crate::context;
use crate::encode::encode_exactly;
use crate::observe::{self, CallOutcome, Served};
use crate::policy::{Disposition, ErrorPolicy};
use crate::store::Outcome;
use crate::Error;

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
            phase: Phase::Running(Box::pin(runtime.drive(start, slot.clone()))),
            slot,
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
                    this.state.phase = Phase::Done;
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
    phase: Phase<T, E>,
    slot: Arc<BodySlot>,
    errors: P,
}

/// Where a call's future is. (Whether the body may run yet is the driver's to say, in the
/// [`BodySlot`].)
enum Phase<T, E> {
    /// The driver claims, then lets the body run and keeps its lease.
    Running(Driver),
    /// The body ended with this output; the driver makes its end durable.
    Recording(Driver, Result<T, E>),
    /// The call returned, or its body panicked.
    Done,
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
        loop {
            let driver = match &mut self.phase {
                Phase::Running(driver) | Phase::Recording(driver, _) => driver,
                Phase::Done => return Poll::Ready(Err(polled_after_completion().into())),
            };
            if let Poll::Ready(driven) = driver.as_mut().poll(cx) {
                return Poll::Ready(self.returned(driven));
            }
            if matches!(self.phase, Phase::Recording(..)) {
                return Poll::Pending;
            }
            let Some((context, span)) = self.slot.running() else {
                return Poll::Pending;
            };
            let polled = {
                let _entered = observe::enter(&span);
                std::panic::catch_unwind(AssertUnwindSafe(|| {
                    context::poll_in(context, || body.as_mut().poll(cx))
                }))
            };
            match polled {
                Ok(Poll::Ready(output)) => {
                    self.slot.ended(end_of(&output, &self.errors));
                    self.phase = match std::mem::replace(&mut self.phase, Phase::Done) {
                        Phase::Running(driver) => Phase::Recording(driver, output),
                        other => other,
                    };
                }
                Ok(Poll::Pending) => {
                    // The body waits. The first time, the driver starts keeping the lease (it is
                    // polled once more for that; the body is not, so that a body that yields
                    // lets other tasks run).
                    if self.slot.note_pending() {
                        if let Phase::Running(driver) = &mut self.phase {
                            if let Poll::Ready(driven) = driver.as_mut().poll(cx) {
                                return Poll::Ready(self.returned(driven));
                            }
                        }
                    }
                    return Poll::Pending;
                }
                Err(panic) => {
                    // An unknown outcome: the claim is kept (see `Disposition::OutcomeUnknown`).
                    // The driver's trace tells so as it is dropped, before unwinding, where an
                    // observer that panicked would abort the process.
                    self.phase = Phase::Done;
                    std::panic::resume_unwind(panic)
                }
            }
        }
    }

    /// The call's result once the driver returned `driven`; the future is done.
    fn returned(&mut self, driven: Driven) -> Result<T, E> {
        let output = match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Recording(_, output) => Some(output),
            Phase::Running(_) | Phase::Done => None,
        };
        self::result(driven, output, &self.errors)
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
            let (result, how) = replayed(&key, &fingerprint, &record, waited, errors);
            trace.finish(how);
            result
        }
        Driven::Superseded {
            key,
            fingerprint,
            record,
            mut trace,
        } => {
            // Told as executed, then as superseded if the other call's record is this call's
            // result: `served` tells the last.
            trace.finish(CallOutcome::LeaseLost);
            match replayed(&key, &fingerprint, &record, false, errors) {
                // The other call's result (its value or its recorded error).
                (result, CallOutcome::Replayed) => {
                    observe::report(Served::Superseded);
                    result
                }
                // Not this call's to return (another request's record, or one this function
                // cannot read): the body ran, its result is not recorded.
                _ => Err(Error::lease_lost(key).into()),
            }
        }
        Driven::NotRun(err) | Driven::Ran(Err(err)) => Err(err.into()),
        Driven::Ran(Ok(())) => output.unwrap_or_else(|| Err(body_lost().into())),
    }
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
            (Disposition::Record, Some(json)) => End::Record(Outcome::Err, json),
            (Disposition::Release, _) => End::Release,
            _ => End::KeepClaim,
        },
    }
}

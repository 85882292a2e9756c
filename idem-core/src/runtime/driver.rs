//! Running a body under a claim, split in two so that each idempotent function adds little code:
//! a driver that does not depend on the body's or the result's types, compiled once (claim or
//! confirm, keep the lease while the body runs, then record, release or keep the claim; here),
//! and a thin generic part that only polls the body and encodes or decodes its result
//! ([`future`](super::future)).
//!
//! The two meet in a [`BodySlot`]: the driver says when the body may run, and the generic part
//! puts there how the body ended. The generic part polls both, the driver first, in one task.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use tracing::Span;

use super::lease::HeldClaim;
use super::settle::Settled;
use super::{ClaimOrReplay, Idempotency};
use crate::call::Call;
use crate::context::ClaimContext;
use crate::observe::{self, CallOutcome, CallTrace};
use crate::store::Outcome;
use crate::Error;

/// Where a call starts.
pub(crate) enum Start {
    /// A call to claim.
    Call(Call),
    /// A claim taken earlier (by [`Idempotency::start`]) and its trace, to confirm before the
    /// body runs.
    Claimed(HeldClaim, CallTrace),
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

    pub(super) fn allow(&self, context: ClaimContext, span: Span) {
        *self.state() = SlotState::Running {
            context: Arc::new(context),
            span,
            pending: false,
        };
    }

    /// The body's context and span, while it may run.
    pub(super) fn running(&self) -> Option<(Arc<ClaimContext>, Span)> {
        match &*self.state() {
            SlotState::Running { context, span, .. } => Some((context.clone(), span.clone())),
            _ => None,
        }
    }

    /// The body returned `Pending`: whether this is the first time.
    pub(super) fn note_pending(&self) -> bool {
        match &mut *self.state() {
            SlotState::Running { pending, .. } => !std::mem::replace(pending, true),
            _ => false,
        }
    }

    pub(super) fn ended(&self, end: End) {
        *self.state() = SlotState::Ended(Some(end));
    }

    /// How the body ended, once.
    pub(super) fn take_end(&self) -> Option<End> {
        match &mut *self.state() {
            SlotState::Ended(end) => end.take(),
            _ => None,
        }
    }

    /// Whether the body returned `Pending` at least once.
    pub(super) fn has_yielded(&self) -> bool {
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
                    match self.claim_or_replay(call, &mut trace).await {
                        Ok(ClaimOrReplay::Claimed(claim)) => {
                            self.run_claimed(claim, &slot, trace).await
                        }
                        Ok(ClaimOrReplay::Replay {
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
    async fn run_claimed(
        &self,
        mut claim: HeldClaim,
        slot: &BodySlot,
        mut trace: CallTrace,
    ) -> Driven {
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
        // The lease is kept from other tasks where the runtime has threads (a body may block its
        // thread; see `keeper`), and otherwise only for a body that did not end at its first poll:
        // one that ends at once registers no timer.
        let body_ended = std::future::poll_fn(|_| match slot.take_end() {
            Some(end) => Poll::Ready(end),
            None => Poll::Pending,
        });
        // A lost lease shows when the end is made durable: the store refuses the stale fence,
        // and a record is then written under a fresh claim if the key is free.
        let end = self
            .keeping_lease_apart(&claim, body_ended, || slot.has_yielded())
            .await;
        let how = match &end {
            End::Record(..) => CallOutcome::Executed,
            End::Release => CallOutcome::Released,
            End::KeepClaim => CallOutcome::OutcomeUnknown,
        };
        claim.ending(&end);
        let settled = self.settle(&claim, end).await;
        claim.settled();
        let result = match settled {
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
        Driven::Ran(result)
    }
}

/// A call that ended before its body ran.
fn not_run(err: Error, mut trace: CallTrace) -> Driven {
    trace.finish(CallOutcome::before_body(&err));
    Driven::NotRun(err)
}

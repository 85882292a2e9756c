//! The two-step API: claim a key with [`Idempotency::start`], run its body later with
//! [`Claimed::run_with`] (the HTTP layer runs the body on a task of its own so).

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::acquire::ClaimOrReplay;
use super::driver::Start;
use super::execute;
use super::lease::HeldClaim;
use super::replay::replayed;
use super::Idempotency;
use crate::call::Call;
use crate::observe::{self, CallOutcome, CallTrace, Served};
use crate::policy::{Disposition, UnrecordedErrors};
use crate::Error;

impl Idempotency {
    /// Claims `call`'s key and stops there: the recorded result if there is one (the body must
    /// not run), or the claim, to run the body under with [`Claimed::run_with`]. For callers
    /// that run the body somewhere else than where they claim, such as on a task of its own;
    /// [`run_with`](Self::run_with) is both steps in one. Results recorded as errors are not
    /// read here (`Error::Corrupt`).
    pub async fn start<T>(&self, call: Call) -> Result<Started<T>, Error>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut trace = self.trace(&call);
        let span = trace.span.clone();
        let begun = observe::in_span(&span, self.claim_or_replay(call, &mut trace)).await;
        let (replayed, how) = match begun {
            Ok(ClaimOrReplay::Claimed(claim)) => {
                return Ok(Started::Claimed(Claimed(Box::new(ClaimedParts {
                    runtime: self.clone(),
                    claim,
                    trace,
                }))))
            }
            Ok(ClaimOrReplay::Replay {
                key,
                fingerprint,
                record,
                waited,
            }) => replayed::<T, Error>(
                &key,
                &fingerprint,
                &record,
                waited,
                &UnrecordedErrors(|_: &Error| Disposition::Release),
            ),
            Err(err) => {
                let how = CallOutcome::before_body(&err);
                (Err(err), how)
            }
        };
        trace.finish(how);
        Ok(Started::Recorded(replayed?, how.served()))
    }
}

/// What [`Idempotency::start`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Started<T> {
    /// The key's recorded result, replayed ([`Served::Replayed`]) or waited for
    /// ([`Served::Waited`]): the body must not run.
    Recorded(T, Served),
    /// The key is this call's: run the body with [`Claimed::run_with`].
    Claimed(Claimed),
}

/// A claim taken by [`Idempotency::start`]. Dropping it without running the body releases the
/// key (in the background, on the current tokio runtime): no body ran, so a retry may run at
/// once. Its lease is not renewed until [`run_with`](Claimed::run_with) starts: run it soon. A
/// claim found lapsed then does not run its body and gives [`Error::ClaimLapsed`] (nothing ran:
/// retry the call).
#[must_use = "a claim is released, unused, unless its body is run"]
pub struct Claimed(Box<ClaimedParts>);

/// What a [`Claimed`] holds (boxed: a claim and its trace are large next to a replayed value).
struct ClaimedParts {
    runtime: Idempotency,
    claim: HeldClaim,
    trace: CallTrace,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the key: keys can be personal data, and a `Debug` ends up in logs.
        f.debug_struct("Claimed")
            .field("fence", &self.0.claim.fence)
            .finish_non_exhaustive()
    }
}

impl Claimed {
    /// Runs `body` under the claim, renewing its lease, then records an `Ok` value or treats an
    /// `Err` as `on_error` says: what [`Idempotency::run_with`] does once it holds the claim.
    pub fn run_with<T, E, Fut>(
        self,
        on_error: impl Fn(&E) -> Disposition,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let ClaimedParts {
            runtime,
            claim,
            trace,
        } = *self.0;
        execute(
            runtime,
            Start::Claimed(claim, trace),
            body,
            UnrecordedErrors(on_error),
        )
    }
}

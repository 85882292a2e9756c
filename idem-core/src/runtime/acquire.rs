//! Everything before the body: the call's options resolved, and its key claimed (or its record
//! found), waiting for or rejecting a claim in progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::{HeldClaim, LeaseClock};
use super::replay::same_request;
use super::Idempotency;
use crate::call::{Call, OnInProgress};
use crate::key::scoped_store_key;
use crate::observe::{self, CallTrace};
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence};
use crate::time::{check_durations, later, MAX_DURATION};
use crate::Error;

impl Idempotency {
    /// Everything before the body, the same for every function: the key, the options, and the
    /// claim (or the record to replay).
    pub(crate) async fn claim_or_replay(
        &self,
        call: Call,
        trace: &mut CallTrace,
    ) -> Result<ClaimOrReplay, Error> {
        let Prepared {
            key,
            fingerprint,
            lease,
            retention,
            on_in_progress,
            max_hold,
            hold_unknown,
        } = self.prepare(call)?;
        trace.keyed(&key);
        match self
            .acquire(&key, &fingerprint, lease, on_in_progress)
            .await?
        {
            Acquired::Fence(fence, claimed_at) => Ok(ClaimOrReplay::Claimed({
                trace.claimed(fence);
                HeldClaim {
                    unstarted: Some(self.clone()),
                    lease_clock: Arc::new(LeaseClock::new(later(claimed_at, lease))),
                    hold_until: max_hold.map(|max_hold| later(claimed_at, max_hold)),
                    key,
                    fingerprint,
                    fence,
                    lease,
                    retention,
                    hold_unknown,
                    unsettled: None,
                }
            })),
            Acquired::Replay {
                record,
                waited,
                fence,
            } => {
                trace.replays(fence);
                Ok(ClaimOrReplay::Replay {
                    key,
                    fingerprint,
                    record,
                    waited,
                })
            }
        }
    }

    /// A call's options resolved against the runtime's, and checked.
    pub(crate) fn prepare(&self, call: Call) -> Result<Prepared, Error> {
        let settings = &*self.inner;
        let key = scoped_store_key(
            &settings.key_prefix,
            &call.namespace?,
            call.scope.as_deref(),
            &call.key,
        )?;
        let fingerprint = call.fingerprint?.map_or_else(Vec::new, |f| f.0.to_vec());
        let lease = call.lease.unwrap_or(settings.lease);
        let retention = call.retention.unwrap_or(settings.retention);
        check_durations(lease, retention)?;
        let max_hold = call.max_hold.or(settings.max_hold);
        if let Some(max_hold) = max_hold.filter(|m| m.is_zero() || *m > MAX_DURATION) {
            return Err(Error::InvalidOption {
                reason: format!(
                    "the max hold is {max_hold:?}, but it must be above zero and at most {} days",
                    MAX_DURATION.as_secs() / 86_400
                ),
            });
        }
        let hold_unknown = call
            .hold_unknown
            .unwrap_or(settings.hold_unknown)
            .duration()?;
        Ok(Prepared {
            key,
            fingerprint,
            lease,
            retention,
            on_in_progress: call.on_in_progress,
            max_hold,
            hold_unknown,
        })
    }

    /// Claims `key`, waiting for or rejecting a claim in progress.
    async fn acquire(
        &self,
        key: &str,
        fingerprint: &[u8],
        lease: Duration,
        on_in_progress: OnInProgress,
    ) -> Result<Acquired, Error> {
        let store = &self.inner.store;
        let attempt = AttemptId::random();
        let request = ClaimRequest::new(key, attempt, fingerprint, lease);
        // A duplicate waits at most one lease for the first call; a live first call renews its
        // claim, so after that the duplicate reports it in progress instead of waiting forever.
        let give_up_at = later(Instant::now(), on_in_progress.patience(lease));
        let mut waited = false;
        loop {
            let sent = Instant::now();
            let in_flight = ClaimInFlight {
                runtime: self,
                request,
                armed: true,
            };
            let claimed = self.retrying("claim", None, || store.claim(request)).await;
            // A claim whose reply was lost may have been granted: it stays armed, and is
            // released as a cancelled one would be.
            if !matches!(&claimed, Err(err) if err.is_indeterminate()) {
                in_flight.disarm();
            }
            match claimed? {
                ClaimOutcome::Acquired { fence, .. } => return Ok(Acquired::Fence(fence, sent)),
                ClaimOutcome::Completed { record, fence, .. } => {
                    return Ok(Acquired::Replay {
                        record,
                        waited,
                        fence,
                    })
                }
                ClaimOutcome::Held { .. } => {
                    return Err(Error::OutcomeUnknown {
                        key: key.to_owned(),
                    })
                }
                ClaimOutcome::InProgress {
                    fence,
                    fingerprint: holder,
                    lease_remaining,
                } => {
                    if !same_request(&holder, fingerprint) {
                        return Err(Error::KeyReused {
                            key: key.to_owned(),
                        });
                    }
                    let now = Instant::now();
                    if now >= give_up_at {
                        return Err(Error::InProgress {
                            key: key.to_owned(),
                            lease_remaining: Some(lease_remaining),
                        });
                    }
                    // Wake a little after the lease would lapse, so the re-claim can take over.
                    let timeout = lease_remaining
                        .saturating_add(Duration::from_millis(1))
                        .min(give_up_at - now);
                    waited = true;
                    if store.wait(key, fence, timeout).await.is_err() {
                        // The notification path failed; fall back to a short poll (its timer on
                        // the heap: the path is rare, and every call's future would carry it).
                        Box::pin(tokio::time::sleep(timeout.min(Duration::from_millis(50)))).await;
                    }
                }
                // ClaimOutcome is non_exhaustive for stores; a future variant is a store bug.
                #[allow(
                    unreachable_patterns,
                    reason = "ClaimOutcome is non_exhaustive to other crates only"
                )]
                other => {
                    return Err(Error::store(
                        "claim",
                        format!("unexpected claim outcome {other:?}"),
                    ))
                }
            }
        }
    }

    /// A claim is still valid before its body starts: lapsed, the body must not start (another
    /// call may hold the key now); past a third of its lease, it is renewed first. The errors
    /// say that the body did not run: never `LeaseLost`, which tells a caller that the effect may
    /// have happened.
    pub(crate) async fn confirm(&self, claim: &HeldClaim) -> Result<(), Error> {
        let now = Instant::now();
        let valid_until = claim.lease_clock.valid_until();
        if now >= valid_until {
            return Err(Error::ClaimLapsed {
                key: claim.key.clone(),
            });
        }
        if valid_until.saturating_duration_since(now) > claim.lease - claim.lease / 3 {
            return Ok(());
        }
        let renewed = self
            .retrying("renew", None, || {
                self.inner.store.renew(&claim.key, claim.fence, claim.lease)
            })
            .await;
        match renewed {
            Ok(()) => {
                claim.lease_clock.renewed(later(now, claim.lease));
                Ok(())
            }
            // The store refused the fence: another call took the key over.
            Err(Error::LeaseLost { .. }) => Err(Error::InProgress {
                key: claim.key.clone(),
                lease_remaining: None,
            }),
            // Not renewed, but still held for a third of a lease or more (what the lease
            // keeper has between renewals): the body may start, and the keeper goes on trying.
            // With less left, the body could outlive the claim before any renewal succeeds.
            Err(_)
                if claim
                    .lease_clock
                    .valid_until()
                    .saturating_duration_since(Instant::now())
                    >= claim.lease / 3 =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// A claim request whose reply has not come: dropped so (the call was cancelled), the claim may
/// have been granted all the same, with nobody to run its body. Its attempt claims again, which
/// the store answers with that claim if it was granted (claims are re-entrant per attempt), and
/// releases what it gets.
struct ClaimInFlight<'a> {
    runtime: &'a Idempotency,
    request: ClaimRequest<'a>,
    armed: bool,
}

impl ClaimInFlight<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ClaimInFlight<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let request = self.request;
        let (attempt, lease) = (request.attempt, request.lease);
        let fingerprint = request.fingerprint.to_vec();
        self.runtime.in_background(
            request.key.to_owned(),
            move |runtime, key| async move {
                let store = &runtime.inner.store;
                let again = ClaimRequest::new(&key, attempt, &fingerprint, lease);
                match store.claim(again).await? {
                    // Granted now if it was not before: either way nobody runs a body under
                    // it. The release is tried a few times, or the key waits out a lease.
                    ClaimOutcome::Acquired { fence, .. } => {
                        let mut released = store.release(&key, fence).await;
                        for pause in [10, 100, 1_000] {
                            if !matches!(&released, Err(err) if err.is_transient()) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                            released = store.release(&key, fence).await;
                        }
                        released
                    }
                    _ => Ok(()),
                }
            },
            observe::release_failed,
        );
    }
}

/// A call's options, resolved and checked.
pub(crate) struct Prepared {
    pub(crate) key: String,
    pub(crate) fingerprint: Vec<u8>,
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
    pub(crate) on_in_progress: OnInProgress,
    /// When set, renewals stop once a claim is this old.
    pub(crate) max_hold: Option<Duration>,
    /// How long the key is held after an unknown outcome; `None`: one lease.
    pub(crate) hold_unknown: Option<Duration>,
}

enum Acquired {
    /// The claim, and when its request was sent (its lease runs from no earlier than that).
    Fence(Fence, Instant),
    /// A record to replay, and whether this call waited for a concurrent first call.
    Replay {
        record: Vec<u8>,
        waited: bool,
        fence: Fence,
    },
}

/// What `begin` found.
pub(crate) enum ClaimOrReplay {
    Claimed(HeldClaim),
    Replay {
        key: String,
        fingerprint: Vec<u8>,
        record: Vec<u8>,
        waited: bool,
    },
}

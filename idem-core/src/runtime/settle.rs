//! Everything after the body: its result recorded, or its claim released or kept.

use tokio::time::Instant;

use super::driver::End;
use super::lease::{HeldClaim, OwedKey};
use super::Idempotency;
use crate::error::not_recorded;
use crate::observe;
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Record};
use crate::time::later;
use crate::Error;

impl Idempotency {
    /// Everything after the body, the same for every function: record, release or keep the
    /// claim.
    pub(crate) async fn settle(&self, claim: &HeldClaim, end: End) -> Result<Settled, Error> {
        let store = &self.inner.store;
        let (outcome, json) = match end {
            End::Record(outcome, json) => (outcome, json),
            End::Release => {
                // Not recorded: release so that a retry runs the body again. If the release
                // fails the claim lapses with its lease, which delays a retry but loses nothing.
                let released = self
                    .retrying("release", None, || store.release(&claim.key, claim.fence))
                    .await;
                match released {
                    // Lapsed (and maybe taken over): nothing of this call's left to release.
                    Ok(()) | Err(Error::LeaseLost { .. }) => {}
                    Err(err) => observe::release_failed(&err),
                }
                return Ok(Settled::Mine);
            }
            // An unknown outcome: the claim lapses with its lease, or is held longer.
            End::KeepClaim => {
                if let Some(hold) = claim.hold_unknown {
                    self.hold_key(&claim.owed(), hold).await;
                }
                return Ok(Settled::Mine);
            }
        };
        let record = match json {
            Ok(json) => Record::encode(outcome, &claim.fingerprint, &json),
            Err(source) => {
                return Err(not_recorded(
                    claim.key.clone(),
                    Error::Encode {
                        what: "the result",
                        source,
                    },
                ))
            }
        };
        // The record write is retried for up to one more lease, as long as the claim is known
        // to be valid, and the lease is renewed meanwhile: giving up earlier would leave an
        // effect without its record, which the next delivery repeats.
        let give_up_at = later(Instant::now(), claim.lease);
        let write = self.retrying("complete", Some((&*claim.lease_clock, give_up_at)), || {
            store.complete(&claim.key, claim.fence, &record, claim.retention)
        });
        // Lease lost: the write stops by itself once the claim's validity ran out.
        let written = self.keeping_lease(claim, write, || true).await;
        match written {
            Ok(()) => Ok(Settled::Mine),
            Err(Error::LeaseLost { .. }) => self.record_after_lapse(claim, &record).await,
            Err(err) => Err(not_recorded(claim.key.clone(), err)),
        }
    }

    /// Holds the key of a call whose outcome is unknown. If its claim lapsed first (a body
    /// longer than `max_hold`, renewals that failed), the key is claimed afresh and held under
    /// that claim, as a late record is: the effect may have happened all the same. If another
    /// call holds or recorded the key meanwhile, it is theirs. A hold that fails leaves the
    /// claim to lapse with its lease, as without a hold.
    pub(super) async fn hold_key(&self, owed: &OwedKey, hold: std::time::Duration) {
        let store = &self.inner.store;
        let key = owed.key.as_str();
        let mut fence = owed.fence;
        let mut held = self
            .retrying("hold", None, || store.hold(key, fence, hold))
            .await;
        if let Err(Error::LeaseLost { .. }) = held {
            // The same attempt for every try: a claim whose reply was lost comes back.
            let request = ClaimRequest::new(key, owed.reclaim, &owed.fingerprint, owed.lease);
            held = match self.retrying("claim", None, || store.claim(request)).await {
                Ok(ClaimOutcome::Acquired { fence: fresh, .. }) => {
                    fence = fresh;
                    self.retrying("hold", None, || store.hold(key, fence, hold))
                        .await
                }
                // Held or recorded by another call, or held by this one's other try: the key
                // has its answer.
                Ok(ClaimOutcome::Held { .. } | ClaimOutcome::Completed { .. }) => return,
                // Another call runs the body: this outcome could not be held.
                Ok(_) => Err(Error::lease_lost(key)),
                Err(err) => Err(err),
            };
        }
        match held {
            Ok(()) => observe::held(key, fence, hold),
            Err(err) => observe::hold_failed(&err),
        }
    }

    /// The body's `record`, whose claim lapsed before it could be written. If the key is free
    /// (nobody took it over, or whoever did let it go), it is claimed afresh and the record
    /// written under that claim: the effect happened once, and is recorded. If another call
    /// recorded its result meanwhile, that record is the key's answer, for this caller too, so
    /// that two callers of one key never see two results. Otherwise (another call holds the key
    /// now) the lease is lost.
    async fn record_after_lapse(&self, claim: &HeldClaim, record: &[u8]) -> Result<Settled, Error> {
        let store = &self.inner.store;
        let request = ClaimRequest::new(
            &claim.key,
            AttemptId::random(),
            &claim.fingerprint,
            claim.lease,
        );
        let lost = || Error::lease_lost(claim.key.clone());
        match self.retrying("claim", None, || store.claim(request)).await {
            Ok(ClaimOutcome::Acquired { fence, .. }) => {
                let written = self
                    .retrying("complete", None, || {
                        store.complete(&claim.key, fence, record, claim.retention)
                    })
                    .await;
                match written {
                    Ok(()) => Ok(Settled::Mine),
                    Err(_) => {
                        // UnrecordedErrors again: no body runs under this claim, so let it go.
                        let _ = store.release(&claim.key, fence).await;
                        Err(lost())
                    }
                }
            }
            Ok(ClaimOutcome::Completed { record, .. }) => Ok(Settled::Winner(record)),
            _ => Err(lost()),
        }
    }
}

/// Whose result a call that ran its body ends with.
pub(crate) enum Settled {
    /// The body's own (recorded, released or held, as its end said).
    Mine,
    /// Another call's record, written while this call's claim had lapsed: the key's answer.
    Winner(Vec<u8>),
}

//! A claim held while its body runs, and its lease: renewed every third of it, from other tasks
//! where the runtime has threads to spare (`keeper`); released in the background when the body
//! never started.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::driver::End;
use super::Idempotency;
use crate::observe;
use crate::store::{AttemptId, Fence, Record, Store};
use crate::time::later;
use crate::Error;

/// A claim held while the body runs.
pub(crate) struct HeldClaim {
    pub(crate) key: String,
    pub(super) fingerprint: Vec<u8>,
    pub(crate) fence: Fence,
    pub(super) lease: Duration,
    pub(super) retention: Duration,
    pub(super) lease_clock: Arc<LeaseClock>,
    /// From when the lease is no longer renewed (`max_hold` after the claim), if ever.
    pub(super) hold_until: Option<Instant>,
    /// How long the key is held after an unknown outcome; `None`: what the lease has left.
    pub(super) hold_unknown: Option<Duration>,
    /// Until the body may start, the runtime that releases the claim if it is dropped first (a
    /// cancelled call, a [`Claimed`] never run): a body that never started has no effect to
    /// guard, and its key must not stay held for a lease.
    pub(super) unstarted: Option<Idempotency>,
    /// From the body's start until its end is settled, with a hold for unknown outcomes: what
    /// a claim dropped first (a body that panicked, a call cancelled mid-body or mid-settle)
    /// still owes its key, done in the background.
    pub(super) unsettled: Option<Unsettled>,
}

/// What a claim dropped before its end was settled still owes its key.
pub(super) struct Unsettled {
    runtime: Idempotency,
    /// The attempt of a fresh claim, should the key have to be claimed again to be held: the
    /// same for the call's own settling and the background's, so that either finds the other's.
    pub(super) reclaim: AttemptId,
    owed: Owed,
}

/// The end a dropped claim's key gets.
enum Owed {
    /// The outcome is unknown (the body did not end, or ended so): hold the key.
    Hold,
    /// The body's error released the key: release it.
    Release,
    /// The body's result: record it.
    Record(Vec<u8>),
}

impl HeldClaim {
    /// The body may start: from now on, dropping the claim keeps it until its lease lapses, or
    /// holds it, with a hold for unknown outcomes.
    pub(crate) fn started(&mut self) {
        let runtime = self.unstarted.take();
        if let (Some(runtime), Some(_)) = (runtime, self.hold_unknown) {
            self.unsettled = Some(Unsettled {
                runtime,
                reclaim: AttemptId::random(),
                owed: Owed::Hold,
            });
        }
    }

    /// The body ended with `end`: what a claim dropped before it is settled owes its key.
    pub(crate) fn ending(&mut self, end: &End) {
        let Some(unsettled) = &mut self.unsettled else {
            return;
        };
        unsettled.owed = match end {
            End::Release => Owed::Release,
            End::Record(outcome, Ok(json)) => {
                Owed::Record(Record::encode(*outcome, &self.fingerprint, json))
            }
            End::Record(_, Err(_)) | End::KeepClaim => Owed::Hold,
        };
    }

    /// The body's end is settled (recorded, released or held): dropping the claim does nothing
    /// more.
    pub(crate) fn settled(&mut self) {
        self.unsettled = None;
    }

    /// The key this claim holds, as a hold needs it.
    pub(super) fn owed(&self) -> OwedKey {
        OwedKey {
            key: self.key.clone(),
            fingerprint: self.fingerprint.clone(),
            fence: self.fence,
            lease: self.lease,
            // The attempt a hold claims the key again with, if it must.
            reclaim: self
                .unsettled
                .as_ref()
                .map_or_else(AttemptId::random, |unsettled| unsettled.reclaim),
        }
    }

    /// The fingerprint of the call's request.
    pub(crate) fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

impl Drop for HeldClaim {
    fn drop(&mut self) {
        let (key, fence) = (std::mem::take(&mut self.key), self.fence);
        if let Some(runtime) = self.unstarted.take() {
            runtime.in_background(
                key,
                move |runtime, key| async move { runtime.inner.store.release(&key, fence).await },
                observe::release_failed,
            );
            return;
        }
        let (Some(unsettled), Some(hold)) = (self.unsettled.take(), self.hold_unknown) else {
            return;
        };
        let failed = match unsettled.owed {
            Owed::Hold => observe::hold_failed,
            Owed::Release => observe::release_failed,
            Owed::Record(_) => observe::record_failed,
        };
        let (fingerprint, lease, retention) = (
            std::mem::take(&mut self.fingerprint),
            self.lease,
            self.retention,
        );
        let (owed, reclaim) = (unsettled.owed, unsettled.reclaim);
        unsettled.runtime.in_background(
            key,
            move |runtime, key| async move {
                let store = &runtime.inner.store;
                match owed {
                    Owed::Hold => {
                        let owed = OwedKey {
                            key,
                            fingerprint,
                            fence,
                            lease,
                            reclaim,
                        };
                        runtime.hold_key(&owed, hold).await;
                        Ok(())
                    }
                    Owed::Release => store.release(&key, fence).await,
                    Owed::Record(record) => store.complete(&key, fence, &record, retention).await,
                }
            },
            failed,
        );
    }
}

/// A key a call still owes a hold, by its parts (owned, for a task of its own).
pub(super) struct OwedKey {
    pub(super) key: String,
    pub(super) fingerprint: Vec<u8>,
    pub(super) fence: Fence,
    pub(super) lease: Duration,
    pub(super) reclaim: AttemptId,
}

impl Idempotency {
    /// Renews the lease every third of it; returns only when the lease is lost (the store
    /// refused the fence, or no renewal succeeded for a whole lease).
    pub(crate) async fn keep_lease(&self, claim: &HeldClaim) {
        self.keep_lease_of(
            &claim.key,
            claim.fence,
            claim.lease,
            &claim.lease_clock,
            claim.hold_until,
        )
        .await;
    }

    /// [`keep_lease`](Self::keep_lease), from the claim's parts.
    pub(super) async fn keep_lease_of(
        &self,
        key: &str,
        fence: Fence,
        lease: Duration,
        clock: &LeaseClock,
        hold_until: Option<Instant>,
    ) {
        let store = &self.inner.store;
        let mut next = clock
            .valid_until()
            .checked_sub(lease - lease / 3)
            .unwrap_or_else(Instant::now);
        loop {
            tokio::time::sleep_until(next).await;
            let sent = Instant::now();
            if hold_until.is_some_and(|until| sent >= until) {
                // Held as long as allowed: the claim lapses with its lease, and the key passes
                // to the next delivery.
                tokio::time::sleep_until(clock.valid_until()).await;
                return;
            }
            let renew = store.renew(key, fence, lease);
            let renewed = observe::in_span(&observe::store_span("renew"), renew).await;
            match renewed {
                Ok(()) => {
                    clock.renewed(later(sent, lease));
                    next = later(sent, lease / 3);
                }
                Err(Error::LeaseLost { .. }) => return,
                Err(_) if Instant::now() >= clock.valid_until() => return,
                // A transient failure: try again soon, while the lease still holds.
                Err(_) => next = later(Instant::now(), lease / 10),
            }
        }
    }

    /// Runs a body's `work` to its end while the lease of `claim` is kept. Where the runtime has
    /// threads to spare, the lease is kept from other tasks (see `keeper`), so that a body that blocks its
    /// thread (in `block_in_place`, say) does not stop the renewals; on a runtime of one thread,
    /// a blocked body blocks any keeper, and the body's own task keeps it
    /// ([`keeping_lease`](Self::keeping_lease)). A lease lost meanwhile shows when the end is
    /// made durable: the store refuses the stale fence.
    pub(crate) async fn keeping_lease_apart<F: Future>(
        &self,
        claim: &HeldClaim,
        work: F,
        may_keep: impl Fn() -> bool,
    ) -> F::Output {
        // Registered with its runtime's watcher, which starts a renewal task only for a body
        // that runs towards its first renewal; unregistered (and renewals stopped) when `work`
        // ends or is dropped.
        match super::keeper::keep(self, claim) {
            Some(_kept) => work.await,
            None => self.keeping_lease(claim, work, may_keep).await,
        }
    }

    /// Runs `work` to its end while keeping `claim`'s lease from its own task, from the time
    /// `may_keep` says so (once it first waits); a lease lost meanwhile is no longer kept, and
    /// `work` still runs to its end.
    pub(crate) async fn keeping_lease<F: Future>(
        &self,
        claim: &HeldClaim,
        work: F,
        may_keep: impl Fn() -> bool,
    ) -> F::Output {
        let mut work = std::pin::pin!(work);
        // On the heap, and only once `work` waits: most work ends at its first poll.
        let mut keeper: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
        let mut lost = false;
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(output) = work.as_mut().poll(cx) {
                return std::task::Poll::Ready(output);
            }
            if !lost && may_keep() {
                let keeper = keeper.get_or_insert_with(|| Box::pin(self.keep_lease(claim)));
                lost = keeper.as_mut().poll(cx).is_ready();
            }
            std::task::Poll::Pending
        })
        .await
    }

    /// Runs `operation` on a task of its own (where a tokio runtime runs): for a claim dropped
    /// before its end, whose caller is gone. A lapsed claim (`LeaseLost`) is not this call's
    /// any more; other failures go to `failed`.
    pub(super) fn in_background<R, Fut>(&self, key: String, operation: R, failed: fn(&Error))
    where
        R: FnOnce(Self, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let Ok(tasks) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let runtime = self.clone();
        tasks.spawn(async move {
            match operation(runtime, key).await {
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(err) => failed(&err),
            }
        });
    }
}

/// Until when the current claim is known to be valid: the send time of the claim or of the last
/// successful renewal, plus the lease. Shared by the renewal loop and the record write.
pub(crate) struct LeaseClock(std::sync::Mutex<Instant>);

impl LeaseClock {
    pub(crate) fn new(valid_until: Instant) -> Self {
        Self(std::sync::Mutex::new(valid_until))
    }

    pub(crate) fn valid_until(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn renewed(&self, valid_until: Instant) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = valid_until;
    }
}

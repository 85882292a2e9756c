//! `FaultyStore`: wraps any store and, by a seeded draw per operation, fails it before it
//! applies (a definite failure), applies it and then fails (a lost reply: indeterminate), or
//! delays it. The same seed draws the same faults in the same order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::{ClaimOutcome, ClaimRequest, Error, Fence, Store};

/// How often each fault happens, per store operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaultPlan {
    /// Fail without applying (the command never reached the store).
    pub fail_before: f64,
    /// Apply, then fail (the reply was lost).
    pub fail_after: f64,
    /// Delay the operation by up to `max_delay`.
    pub delay: f64,
    /// The longest delay.
    pub max_delay: Duration,
    /// Whether renewals are hit too; failing renewals can make a body outlive its lease, which
    /// is outside the guarantee.
    pub include_renew: bool,
}

impl FaultPlan {
    /// No faults.
    pub const NONE: Self = Self {
        fail_before: 0.0,
        fail_after: 0.0,
        delay: 0.0,
        max_delay: Duration::ZERO,
        include_renew: false,
    };
}

/// What a `FaultyStore` did, for the report.
#[derive(Debug, Default)]
pub struct FaultCounts {
    /// Operations failed before applying.
    pub failed_before: AtomicU64,
    /// Operations applied, then failed.
    pub failed_after: AtomicU64,
    /// Operations delayed.
    pub delayed: AtomicU64,
}

enum Fault {
    None,
    FailBefore,
    FailAfter,
    Delay(Duration),
}

/// A store that fails on a seeded schedule.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    plan: Mutex<FaultPlan>,
    renewals_fail: std::sync::atomic::AtomicBool,
    rng: Mutex<fastrand::Rng>,
    /// What was injected so far.
    pub counts: FaultCounts,
}

impl<S: Store> FaultyStore<S> {
    /// Wraps `inner`; faults follow `plan`, drawn from `seed`.
    pub fn new(inner: S, plan: FaultPlan, seed: u64) -> Self {
        Self {
            inner,
            plan: Mutex::new(plan),
            renewals_fail: std::sync::atomic::AtomicBool::new(false),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            counts: FaultCounts::default(),
        }
    }

    /// Stops injecting faults.
    pub fn heal(&self) {
        *lock(&self.plan) = FaultPlan::NONE;
        self.renewals_fail.store(false, Ordering::Relaxed);
    }

    /// Makes every renewal fail (before applying) until healed: a store that cannot be reached
    /// while a body runs.
    pub fn fail_renewals(&self) {
        self.renewals_fail.store(true, Ordering::Relaxed);
    }

    fn draw(&self, renew: bool) -> Fault {
        let plan = *lock(&self.plan);
        if renew && !plan.include_renew {
            return Fault::None;
        }
        let mut rng = lock(&self.rng);
        let roll = rng.f64();
        if roll < plan.fail_before {
            Fault::FailBefore
        } else if roll < plan.fail_before + plan.fail_after {
            Fault::FailAfter
        } else if roll < plan.fail_before + plan.fail_after + plan.delay {
            let nanos = u64::try_from(plan.max_delay.as_nanos()).unwrap_or(u64::MAX);
            Fault::Delay(Duration::from_nanos(rng.u64(0..=nanos)))
        } else {
            Fault::None
        }
    }

    async fn apply<T, F>(&self, operation: &'static str, renew: bool, op: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, Error>>,
    {
        match self.draw(renew) {
            Fault::None => op.await,
            Fault::FailBefore => {
                self.counts.failed_before.fetch_add(1, Ordering::Relaxed);
                Err(Error::store(operation, "injected: failed before applying"))
            }
            Fault::FailAfter => {
                self.counts.failed_after.fetch_add(1, Ordering::Relaxed);
                let _ = op.await;
                Err(Error::store_indeterminate(
                    operation,
                    "injected: reply lost after applying",
                ))
            }
            Fault::Delay(delay) => {
                self.counts.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                op.await
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl<S: Store> Store for FaultyStore<S> {
    async fn claim(&self, request: ClaimRequest<'_>) -> Result<ClaimOutcome, Error> {
        self.apply("claim", false, self.inner.claim(request)).await
    }

    async fn complete(
        &self,
        key: &str,
        fence: Fence,
        record: &[u8],
        retention: Duration,
    ) -> Result<(), Error> {
        self.apply(
            "complete",
            false,
            self.inner.complete(key, fence, record, retention),
        )
        .await
    }

    async fn release(&self, key: &str, fence: Fence) -> Result<(), Error> {
        self.apply("release", false, self.inner.release(key, fence))
            .await
    }

    async fn renew(&self, key: &str, fence: Fence, lease: Duration) -> Result<(), Error> {
        if self.renewals_fail.load(Ordering::Relaxed) {
            self.counts.failed_before.fetch_add(1, Ordering::Relaxed);
            return Err(Error::store("renew", "injected: renewals fail"));
        }
        self.apply("renew", true, self.inner.renew(key, fence, lease))
            .await
    }

    async fn hold(&self, key: &str, fence: Fence, hold: Duration) -> Result<(), Error> {
        self.apply("hold", false, self.inner.hold(key, fence, hold))
            .await
    }

    async fn wait(&self, key: &str, fence: Fence, timeout: Duration) -> Result<(), Error> {
        self.inner.wait(key, fence, timeout).await
    }
}

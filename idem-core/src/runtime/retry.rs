//! Store operations retried while they fail with transient errors.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::lease::LeaseClock;
use super::Idempotency;
use crate::observe;
use crate::time::later;
use crate::Error;

impl Idempotency {
    /// Runs a store operation while it fails with a store error: up to `store_attempts` times,
    /// and beyond that, when `valid` is given, until its instant as long as its claim is still
    /// valid (it may be renewed meanwhile). Backoff doubles from 10ms to 200ms.
    pub(super) async fn retrying<T, Op, Fut>(
        &self,
        operation: &'static str,
        valid: Option<(&LeaseClock, Instant)>,
        mut op: Op,
    ) -> Result<T, Error>
    where
        Op: FnMut() -> Fut + Send,
        Fut: Future<Output = Result<T, Error>> + Send,
        T: Send,
    {
        match observe::in_span(&observe::store_span(operation), op()).await {
            // Retries are rare: their state (a timer, the backoff) lives on the heap, so that
            // every call's future does not carry it.
            Err(err) if err.is_transient() => Box::pin(self.retry(operation, valid, op, err)).await,
            other => other,
        }
    }

    /// [`retrying`](Self::retrying) after the first attempt failed with `err`.
    async fn retry<T, Op, Fut>(
        &self,
        operation: &'static str,
        valid: Option<(&LeaseClock, Instant)>,
        mut op: Op,
        mut err: Error,
    ) -> Result<T, Error>
    where
        Op: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let mut backoff = Duration::from_millis(10);
        let mut attempt = 1;
        loop {
            let before_deadline = valid.is_some_and(|(clock, give_up_at)| {
                later(Instant::now(), backoff) < clock.valid_until().min(give_up_at)
            });
            if attempt >= self.inner.store_attempts && !before_deadline {
                return Err(err);
            }
            observe::store_retry(operation, attempt, &err);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
            attempt += 1;
            match observe::in_span(&observe::store_span(operation), op()).await {
                Err(again) if again.is_transient() => err = again,
                other => return other,
            }
        }
    }
}

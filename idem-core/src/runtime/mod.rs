//! The runtime handle, [`Idempotency`]: a store plus defaults, and the `run*` calls. The
//! logic behind them lives in the sibling modules, in the order a call meets it: `acquire`
//! (claim, or find the record), `driver` and `future` (run the body under the claim), `lease`
//! (keep the claim while it runs), `settle` (record, release or keep it), `retry` (store
//! operations), `replay` (decode a record for a duplicate), and `claimed` (the two-step API).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::{Call, UnknownHold, DEFAULT_KEY_PREFIX, DEFAULT_LEASE, DEFAULT_RETENTION};
use crate::key::store_key;
use crate::observe::{CallTrace, Observer};
use crate::policy::{record, release, Disposition, RecordedErrors, UnrecordedErrors};
use crate::store::Store;
use crate::Error;

mod acquire;
mod claimed;
pub(crate) mod driver;
mod future;
mod keeper;
mod lease;
mod replay;
mod retry;
mod settle;

pub(crate) use acquire::{ClaimOrReplay, Prepared};
pub use claimed::{Claimed, Started};
use driver::Start;
pub(crate) use future::execute;
pub(crate) use replay::{decode_replay, same_request};

/// The runtime handle: a store plus defaults. Cheap to clone (one `Arc`).
///
/// ```
/// # use idem_core as idem; // what users of the `idem` crate write
/// use idem::{Call, Idempotency, MemoryStore};
/// use std::time::Duration;
///
/// # async fn demo() -> Result<(), idem::Error> {
/// let idem = Idempotency::new(MemoryStore::new())
///     .with_retention(Duration::from_secs(3600))
///     .with_lease(Duration::from_secs(10))
///     .with_key_prefix("payments:");
/// let receipt: u64 = idem
///     .run(Call::new("charge", "order-17"), async { Ok::<_, idem::Error>(17) })
///     .await?;
/// // A duplicate replays the record: the body does not run again.
/// let replay: u64 = idem
///     .run(Call::new("charge", "order-17"), async { unreachable!("not run twice") })
///     .await?;
/// assert_eq!(receipt, replay);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
#[derive(Clone)]
pub struct Idempotency {
    inner: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    store: Arc<dyn Store>,
    /// The same store as its own type, for modes only some stores offer (`store_as`).
    concrete: Option<Arc<dyn std::any::Any + Send + Sync>>,
    retention: Duration,
    lease: Duration,
    max_hold: Option<Duration>,
    hold_unknown: UnknownHold,
    key_prefix: String,
    store_attempts: u32,
    observer: Option<Arc<dyn Observer>>,
    /// The keys claimed in transactions still open, by connection: a nested call with the same
    /// key on the same connection is refused instead of waiting on itself.
    transaction_claims: Arc<TransactionClaims>,
}

/// Keys claimed in open transactions, each with the address of its connection.
pub(crate) type TransactionClaims = std::sync::Mutex<std::collections::HashSet<(usize, String)>>;

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("retention", &self.inner.retention)
            .field("lease", &self.inner.lease)
            .field("key_prefix", &self.inner.key_prefix)
            .field("store_attempts", &self.inner.store_attempts)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// A runtime over `store` with the defaults: retention 24h, lease 30s, key prefix `idem:`,
    /// 3 attempts for each store operation.
    pub fn new<S: Store>(store: S) -> Self {
        let store = Arc::new(store);
        let mut runtime = Self::from_arc(store.clone());
        Arc::make_mut(&mut runtime.inner).concrete = Some(store);
        runtime
    }

    /// A runtime over a shared store. (Modes that need a store's own type, such as running in a
    /// database transaction, need [`new`](Self::new).)
    pub fn from_arc(store: Arc<dyn Store>) -> Self {
        Self {
            inner: Arc::new(Settings {
                store,
                concrete: None,
                retention: DEFAULT_RETENTION,
                lease: DEFAULT_LEASE,
                max_hold: None,
                hold_unknown: UnknownHold::OneLease,
                key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
                store_attempts: 3,
                observer: None,
                transaction_claims: Arc::default(),
            }),
        }
    }

    /// How long records are kept (and so, how long a duplicate is recognised).
    #[must_use]
    pub fn with_retention(mut self, retention: Duration) -> Self {
        Arc::make_mut(&mut self.inner).retention = retention;
        self
    }

    /// How long a claim lasts; the runtime renews it every third of this while the body runs
    /// (on a multi-thread runtime from other tasks, so that a body blocking its thread in
    /// `block_in_place` keeps its claim).
    #[must_use]
    pub fn with_lease(mut self, lease: Duration) -> Self {
        Arc::make_mut(&mut self.inner).lease = lease;
        self
    }

    /// The longest a call holds its key while its body runs: renewals stop once the claim is
    /// this old, so a hung body's key passes to the next delivery a lease later (by default
    /// there is no ceiling: a body that runs keeps its key). The body is not stopped. Its late
    /// result is recorded if the key is free when it ends (nobody took it over, or whoever did
    /// let it go); if another call recorded meanwhile, its caller gets that result
    /// ([`Served::Superseded`](crate::Served::Superseded)); while another call still holds the
    /// key, [`Error::LeaseLost`].
    #[must_use]
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        Arc::make_mut(&mut self.inner).max_hold = Some(max_hold);
        self
    }

    /// How long a key is held when its call ends with an unknown outcome (by default one
    /// lease; see [`UnknownHold`]). A call may set its own with
    /// [`Call::hold_unknown`](crate::Call::hold_unknown).
    #[must_use]
    pub fn with_unknown_hold(mut self, hold: UnknownHold) -> Self {
        Arc::make_mut(&mut self.inner).hold_unknown = hold;
        self
    }

    /// The prefix of every store key (to share one store between services).
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).key_prefix = prefix.into();
        self
    }

    /// How many times each store operation is tried before its error is returned (at least 1).
    /// All operations are safe to repeat: claims are re-entrant per attempt and writes are
    /// fenced.
    #[must_use]
    pub fn with_store_attempts(mut self, attempts: u32) -> Self {
        Arc::make_mut(&mut self.inner).store_attempts = attempts.max(1);
        self
    }

    /// Tells `observer` of every call's end (see [`Observer`]). Calls are traced with `tracing`
    /// either way, and counted with `metrics` when the `metrics` feature is on.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        Arc::make_mut(&mut self.inner).observer = Some(observer);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The store as its own type `S`, if the runtime was made with [`new`](Self::new) over an
    /// `S`.
    pub fn store_as<S: Store>(&self) -> Option<&S> {
        self.inner.concrete.as_ref()?.downcast_ref()
    }

    /// The keys claimed in transactions still open.
    pub(crate) fn transaction_claims(&self) -> &Arc<TransactionClaims> {
        &self.inner.transaction_claims
    }

    /// The store as its own type, shared: for claims that outlive a borrow of the runtime.
    pub(crate) fn store_arc<S: Store>(&self) -> Option<Arc<S>> {
        self.inner.concrete.clone()?.downcast().ok()
    }

    /// The default retention.
    pub fn retention(&self) -> Duration {
        self.inner.retention
    }

    /// The default lease.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// The store key of `key` in `namespace` under this runtime's prefix: what a call with them
    /// claims (unscoped).
    pub fn store_key(&self, namespace: &str, key: &str) -> Result<String, Error> {
        store_key(&self.inner.key_prefix, namespace, key)
    }

    /// Runs `body` at most once per key: claims the key, runs the body, records an `Ok` value
    /// and returns it; a duplicate gets the recorded value without running the body. An `Err`
    /// is not recorded: the claim is released so that a retry runs the body again.
    ///
    /// The body is not polled unless the claim is confirmed (store failures fail closed).
    /// [`served`](crate::served) tells how the value came to be (executed, replayed, waited).
    pub fn run<T, E, Fut>(&self, call: Call, body: Fut) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        execute(
            self.clone(),
            Start::Call(call),
            body,
            UnrecordedErrors(release::<E>),
        )
    }

    /// Like [`run`](Self::run), but an `Err` is recorded and replayed too.
    pub fn run_recording_errors<T, E, Fut>(
        &self,
        call: Call,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        execute(
            self.clone(),
            Start::Call(call),
            body,
            RecordedErrors(record::<E>),
        )
    }

    /// Like [`run`](Self::run), with `on_error` deciding what each `Err` means: release the key
    /// for a retry, or [`Disposition::OutcomeUnknown`] when the effect may have started. Errors of
    /// this type are not recorded, so [`Disposition::Record`] is taken as `OutcomeUnknown`; use
    /// [`run_recording_errors_with`](Self::run_recording_errors_with) to record some.
    ///
    /// ```
    /// # use idem_core as idem; // what users of the `idem` crate write
    /// use idem::{Call, Disposition, Error, Idempotency, MemoryStore, OnInProgress};
    ///
    /// #[derive(Debug)]
    /// enum PayError { Declined, Timeout, Idem(Error) }
    /// impl From<Error> for PayError {
    ///     fn from(err: Error) -> Self { PayError::Idem(err) }
    /// }
    /// fn on_error(err: &PayError) -> Disposition {
    ///     match err {
    ///         // The provider may have charged: neither retry at once nor claim success.
    ///         PayError::Timeout => Disposition::OutcomeUnknown,
    ///         _ => Disposition::Release,
    ///     }
    /// }
    ///
    /// # async fn demo() {
    /// let idem = Idempotency::new(MemoryStore::new());
    /// let call = || Call::new("charge", "order-1").on_in_progress(OnInProgress::Reject);
    /// let first = idem.run_with(call(), on_error, async { Err::<u32, _>(PayError::Timeout) }).await;
    /// assert!(matches!(first, Err(PayError::Timeout)));
    /// // The claim is kept until its lease lapses: a retry now does not run the body.
    /// let retry = idem.run_with(call(), on_error, async { Ok::<u32, PayError>(1) }).await;
    /// assert!(matches!(retry, Err(PayError::Idem(Error::InProgress { .. }))));
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo());
    /// ```
    pub fn run_with<T, E, Fut>(
        &self,
        call: Call,
        on_error: impl Fn(&E) -> Disposition,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        execute(
            self.clone(),
            Start::Call(call),
            body,
            UnrecordedErrors(on_error),
        )
    }

    /// Like [`run_recording_errors`](Self::run_recording_errors), with `on_error` deciding what
    /// each `Err` means: recorded, released, or an unknown outcome.
    pub fn run_recording_errors_with<T, E, Fut>(
        &self,
        call: Call,
        on_error: impl Fn(&E) -> Disposition,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        execute(
            self.clone(),
            Start::Call(call),
            body,
            RecordedErrors(on_error),
        )
    }

    /// A call's trace, before anything is known of it but its namespace.
    pub(crate) fn trace(&self, call: &Call) -> CallTrace {
        let namespace = match &call.namespace {
            Ok(namespace) => namespace.clone(),
            Err(_) => Cow::Borrowed(""),
        };
        CallTrace::new(namespace, self.inner.observer.clone())
    }
}

impl AsRef<Self> for Idempotency {
    fn as_ref(&self) -> &Self {
        self
    }
}

//! Claim → execute → record, and replay: the logic behind `#[idempotent]`.

use std::borrow::Cow;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::runtime::RuntimeFlavor;
use tokio::time::Instant;

use crate::drive::{self, End, Start};
use crate::exact::encode_exactly;
use crate::fingerprint::Fingerprint;
use crate::key::{scoped_store_key, store_key};
use crate::observe::{self, CallOutcome, CallTrace, Observer};
use crate::outcome::{self, OnError, Served};
use crate::record::{Outcome, Record};
use crate::store::{AttemptId, ClaimOutcome, ClaimRequest, Fence, Store};
use crate::Error;

/// How long records are kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// How long a claim lasts between renewals by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease a call may have. A lease is the time a crashed holder blocks its key, and
/// the time a store has to tell claims apart; below this, clock error between processes and
/// round trips on a loaded machine would eat it (the Redis store keeps its fencing tokens
/// increasing only for leases above twice its accepted clock error).
pub const MIN_LEASE: Duration = Duration::from_millis(250);
/// The longest lease or retention a call may have: 100 years. Longer durations overflow clocks
/// and store expiry commands.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
/// The key prefix by default.
pub const DEFAULT_KEY_PREFIX: &str = "idem:";

/// What a duplicate does while the first call is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnInProgress {
    /// Wait for the first call's result and replay it. If the claim is still held after a
    /// whole lease (the first call renews it while it runs), return [`Error::InProgress`]; if its
    /// lease lapses meanwhile (it crashed), take over and run the body.
    #[default]
    Wait,
    /// Return [`Error::InProgress`] at once.
    Reject,
    /// Like [`Wait`](OnInProgress::Wait), but return [`Error::InProgress`] after this long
    /// (or after a lease, if that is shorter): for a caller that has a deadline of its own, such
    /// as an HTTP client that will not wait for ever.
    WaitAtMost(Duration),
}

impl OnInProgress {
    /// How long a duplicate waits for a claim held by another call whose lease is `lease`.
    pub(crate) fn patience(self, lease: Duration) -> Duration {
        match self {
            OnInProgress::Wait => lease,
            OnInProgress::Reject => Duration::ZERO,
            OnInProgress::WaitAtMost(limit) => limit.min(lease),
        }
    }
}

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

/// One idempotent call: its namespace and key, and options that override the runtime's.
#[derive(Debug)]
#[must_use = "a Call does nothing until passed to Idempotency::run"]
pub struct Call {
    namespace: Result<Cow<'static, str>, Error>,
    key: String,
    /// A hash of the caller the key belongs to, when keys are scoped per caller.
    scope: Option<String>,
    fingerprint: Result<Option<Fingerprint>, Error>,
    retention: Option<Duration>,
    lease: Option<Duration>,
    max_hold: Option<Duration>,
    on_in_progress: OnInProgress,
}

impl Call {
    /// A call of `key` in `namespace` (by the macro: the function's name). The key is formatted
    /// once, here.
    pub fn new(namespace: impl Into<Cow<'static, str>>, key: impl Display) -> Self {
        Self::in_namespace(Ok(namespace.into()), key)
    }

    /// A call in a function's default namespace, or with why it has none (for the macro).
    #[doc(hidden)]
    pub fn in_function(namespace: Result<&'static str, Error>, key: impl Display) -> Self {
        Self::in_namespace(namespace.map(Cow::Borrowed), key)
    }

    fn in_namespace(namespace: Result<Cow<'static, str>, Error>, key: impl Display) -> Self {
        Call {
            namespace,
            key: key.to_string(),
            scope: None,
            fingerprint: Ok(None),
            retention: None,
            lease: None,
            max_hold: None,
            on_in_progress: OnInProgress::Wait,
        }
    }

    /// Scopes the key to `caller` (a user id, an account, an API key's id): two callers' equal
    /// keys are two keys, so one caller can never be replayed another's result, nor learn
    /// through a `KeyReused` that another used a key. Give it to every call where keys come
    /// from clients, such as an HTTP request's `Idempotency-Key`. The store holds a hash of the
    /// caller, never the caller itself.
    ///
    /// No unscoped key meets a scoped one (the scope is stored in a form no key can spell).
    /// Adding a scope to calls that had none changes their store keys: a retry that spans that
    /// deploy runs the body again.
    ///
    /// ```
    /// # use idem_core as idem; // what users of the `idem` crate write
    /// use idem::Call;
    ///
    /// let alice = Call::new("orders", "order-1").scope("alice");
    /// let bob = Call::new("orders", "order-1").scope("bob");
    /// ```
    pub fn scope(mut self, caller: impl Display) -> Self {
        use sha2::Digest;
        let caller = caller.to_string();
        self.scope = Some(crate::key::hex(
            &sha2::Sha256::digest(caller.as_bytes())[..16],
        ));
        self
    }

    /// Describes the request: a later call with the same key and a different fingerprint gets
    /// [`Error::KeyReused`]. Map key order does not change the fingerprint.
    pub fn fingerprint<T: Serialize + ?Sized>(mut self, request: &T) -> Self {
        self.fingerprint = Fingerprint::of(request).map(Some);
        self
    }

    /// Sets a fingerprint computed elsewhere (for requests that are bytes rather than a
    /// `Serialize` value, such as an HTTP body): a later call with the same key and a different
    /// fingerprint gets [`Error::KeyReused`].
    pub fn with_fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Ok(Some(fingerprint));
        self
    }

    /// How long the record is kept (overrides the runtime's retention).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = Some(retention);
        self
    }

    /// How long the claim lasts between renewals (overrides the runtime's lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// The longest this call holds its key while its body runs (overrides the runtime's
    /// [`with_max_hold`](Idempotency::with_max_hold)).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// What a duplicate does while the first call runs.
    pub fn on_in_progress(mut self, mode: OnInProgress) -> Self {
        self.on_in_progress = mode;
        self
    }
}

/// How a body's `Err` is treated: the policy of one `run` flavour, so the core is written once.
pub(crate) trait ErrorPolicy<E> {
    /// What this error means.
    fn classify(&self, err: &E) -> OnError;
    /// The error's JSON for a record; `None` when errors of this type cannot be recorded.
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>>;
    /// A recorded error back; `None` when errors of this type are not recorded.
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>>;
}

/// Errors that cannot be recorded, classified by `F` (`Record` is kept as `OutcomeUnknown`).
pub(crate) struct Unrecorded<F>(pub(crate) F);

impl<E, F: Fn(&E) -> OnError> ErrorPolicy<E> for Unrecorded<F> {
    fn classify(&self, err: &E) -> OnError {
        match (self.0)(err) {
            // The safe side of what was asked: nothing is replayed, nothing re-runs at once.
            OnError::Record => OnError::OutcomeUnknown,
            other => other,
        }
    }
    fn encode(&self, _: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        None
    }
    fn decode(&self, _: &[u8]) -> Option<Result<E, serde_json::Error>> {
        None
    }
}

/// The policy of `run`: every error releases the key. A function, not a closure, so that it is
/// the same type for every body.
fn release<E>(_: &E) -> OnError {
    OnError::Release
}

/// The policy of `run_recording_errors`: every error is recorded.
fn record<E>(_: &E) -> OnError {
    OnError::Record
}

/// Errors that round-trip through serde, classified by `F`.
pub(crate) struct Recordable<F>(pub(crate) F);

impl<E, F> ErrorPolicy<E> for Recordable<F>
where
    E: Serialize + DeserializeOwned,
    F: Fn(&E) -> OnError,
{
    fn classify(&self, err: &E) -> OnError {
        (self.0)(err)
    }
    fn encode(&self, err: &E) -> Option<Result<Vec<u8>, serde_json::Error>> {
        Some(encode_exactly(err))
    }
    fn decode(&self, json: &[u8]) -> Option<Result<E, serde_json::Error>> {
        Some(serde_json::from_slice(json))
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
        Idempotency {
            inner: Arc::new(Settings {
                store,
                concrete: None,
                retention: DEFAULT_RETENTION,
                lease: DEFAULT_LEASE,
                max_hold: None,
                key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
                store_attempts: 3,
                observer: None,
                transaction_claims: Arc::default(),
            }),
        }
    }

    /// How long records are kept (and so, how long a duplicate is recognised).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        Arc::make_mut(&mut self.inner).retention = retention;
        self
    }

    /// How long a claim lasts; the runtime renews it every third of this while the body runs
    /// (on a multi-thread runtime from a task of its own, so that a body blocking its thread
    /// in `block_in_place` keeps its claim).
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
    pub fn with_max_hold(mut self, max_hold: Duration) -> Self {
        Arc::make_mut(&mut self.inner).max_hold = Some(max_hold);
        self
    }

    /// The prefix of every store key (to share one store between services).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.inner).key_prefix = prefix.into();
        self
    }

    /// How many times each store operation is tried before its error is returned (at least 1).
    /// All operations are safe to repeat: claims are re-entrant per attempt and writes are
    /// fenced.
    pub fn with_store_attempts(mut self, attempts: u32) -> Self {
        Arc::make_mut(&mut self.inner).store_attempts = attempts.max(1);
        self
    }

    /// Tells `observer` of every call's end (see [`Observer`]). Calls are traced with `tracing`
    /// either way, and counted with `metrics` when the `metrics` feature is on.
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

    /// The store key that `call` would use.
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
        drive::execute(
            self.clone(),
            Start::Call(call),
            body,
            Unrecorded(release::<E>),
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
        drive::execute(
            self.clone(),
            Start::Call(call),
            body,
            Recordable(record::<E>),
        )
    }

    /// Like [`run`](Self::run), with `on_error` deciding what each `Err` means: release the key
    /// for a retry, or [`OnError::OutcomeUnknown`] when the effect may have started. Errors of
    /// this type are not recorded, so [`OnError::Record`] is taken as `OutcomeUnknown`; use
    /// [`run_recording_errors_with`](Self::run_recording_errors_with) to record some.
    ///
    /// ```
    /// use idem_core::{Call, Error, Idempotency, MemoryStore, OnError};
    ///
    /// #[derive(Debug)]
    /// enum PayError { Declined, Timeout, Idem(Error) }
    /// impl From<Error> for PayError {
    ///     fn from(err: Error) -> Self { PayError::Idem(err) }
    /// }
    /// fn on_error(err: &PayError) -> OnError {
    ///     match err {
    ///         // The provider may have charged: neither retry at once nor claim success.
    ///         PayError::Timeout => OnError::OutcomeUnknown,
    ///         _ => OnError::Release,
    ///     }
    /// }
    ///
    /// # async fn demo() {
    /// let idem = Idempotency::new(MemoryStore::new());
    /// let call = || Call::new("charge", "order-1").on_in_progress(idem_core::OnInProgress::Reject);
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
        on_error: impl Fn(&E) -> OnError,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        drive::execute(self.clone(), Start::Call(call), body, Unrecorded(on_error))
    }

    /// Like [`run_recording_errors`](Self::run_recording_errors), with `on_error` deciding what
    /// each `Err` means: recorded, released, or an unknown outcome.
    pub fn run_recording_errors_with<T, E, Fut>(
        &self,
        call: Call,
        on_error: impl Fn(&E) -> OnError,
        body: Fut,
    ) -> impl Future<Output = Result<T, E>>
    where
        Fut: Future<Output = Result<T, E>>,
        T: Serialize + DeserializeOwned,
        E: Serialize + DeserializeOwned + From<Error>,
    {
        drive::execute(self.clone(), Start::Call(call), body, Recordable(on_error))
    }

    /// A call's trace, before anything is known of it but its namespace.
    pub(crate) fn trace(&self, call: &Call) -> CallTrace {
        let namespace = match &call.namespace {
            Ok(namespace) => namespace.clone(),
            Err(_) => Cow::Borrowed(""),
        };
        CallTrace::new(namespace, self.inner.observer.clone())
    }

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
        let begun = observe::in_span(&span, self.begin(call, &mut trace)).await;
        let (replayed, served, how) = match begun {
            Ok(Begun::Claimed(claim)) => {
                return Ok(Started::Claimed(Claimed(Box::new(ClaimedParts {
                    runtime: self.clone(),
                    claim,
                    trace,
                }))))
            }
            Ok(Begun::Replay {
                key,
                fingerprint,
                record,
                waited,
            }) => replayed::<T, Error>(
                &key,
                &fingerprint,
                &record,
                waited,
                &Unrecorded(|_: &Error| OnError::Release),
            ),
            Err(err) => {
                let how = CallOutcome::of_error(&err);
                (Err(err), Served::NotRun, how)
            }
        };
        trace.finish(how);
        outcome::report(served);
        Ok(Started::Recorded(replayed?, served))
    }

    /// Everything before the body, the same for every function: the key, the options, and the
    /// claim (or the record to replay).
    pub(crate) async fn begin(&self, call: Call, trace: &mut CallTrace) -> Result<Begun, Error> {
        let Prepared {
            key,
            fingerprint,
            lease,
            retention,
            on_in_progress,
            max_hold,
        } = self.prepare(call)?;
        trace.keyed(&key);
        match self
            .acquire(&key, &fingerprint, lease, on_in_progress)
            .await?
        {
            Acquired::Fence(fence, claimed_at) => Ok(Begun::Claimed({
                trace.claimed(fence);
                Claim {
                    unstarted: Some(self.clone()),
                    lease_clock: Arc::new(LeaseClock::new(later(claimed_at, lease))),
                    hold_until: max_hold.map(|max_hold| later(claimed_at, max_hold)),
                    key,
                    fingerprint,
                    fence,
                    lease,
                    retention,
                }
            })),
            Acquired::Replay { record, waited } => Ok(Begun::Replay {
                key,
                fingerprint,
                record,
                waited,
            }),
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
        Ok(Prepared {
            key,
            fingerprint,
            lease,
            retention,
            on_in_progress: call.on_in_progress,
            max_hold,
        })
    }

    /// Everything after the body, the same for every function: record, release or keep the
    /// claim.
    pub(crate) async fn finish(&self, claim: &Claim, end: End) -> Result<Settled, Error> {
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
            // An unknown outcome: the claim lapses with its lease.
            End::KeepClaim => return Ok(Settled::Mine),
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

    /// The body's `record`, whose claim lapsed before it could be written. If the key is free
    /// (nobody took it over, or whoever did let it go), it is claimed afresh and the record
    /// written under that claim: the effect happened once, and is recorded. If another call
    /// recorded its result meanwhile, that record is the key's answer, for this caller too, so
    /// that two callers of one key never see two results. Otherwise (another call holds the key
    /// now) the lease is lost.
    async fn record_after_lapse(&self, claim: &Claim, record: &[u8]) -> Result<Settled, Error> {
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
                        // Unrecorded again: no body runs under this claim, so let it go.
                        let _ = store.release(&claim.key, fence).await;
                        Err(lost())
                    }
                }
            }
            Ok(ClaimOutcome::Completed { record }) => Ok(Settled::Winner(record)),
            _ => Err(lost()),
        }
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
                ClaimOutcome::Completed { record } => {
                    return Ok(Acquired::Replay { record, waited })
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
                #[allow(unreachable_patterns)]
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
    pub(crate) async fn confirm(&self, claim: &Claim) -> Result<(), Error> {
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

    /// Renews the lease every third of it; returns only when the lease is lost (the store
    /// refused the fence, or no renewal succeeded for a whole lease).
    pub(crate) async fn keep_lease(&self, claim: &Claim) {
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
    async fn keep_lease_of(
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

    /// Runs a store operation while it fails with a store error: up to `store_attempts` times,
    /// and beyond that, when `valid` is given, until its instant as long as its claim is still
    /// valid (it may be renewed meanwhile). Backoff doubles from 10ms to 200ms.
    async fn retrying<T, Op, Fut>(
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

    /// Runs a body's `work` to its end while the lease of `claim` is kept. Where the runtime has
    /// threads to spare, the lease is kept from a task of its own, so that a body that blocks its
    /// thread (in `block_in_place`, say) does not stop the renewals; on a runtime of one thread,
    /// a blocked body blocks any keeper, and the body's own task keeps it
    /// ([`keeping_lease`](Self::keeping_lease)). A lease lost meanwhile shows when the end is
    /// made durable: the store refuses the stale fence.
    pub(crate) async fn keeping_lease_apart<F: Future>(
        &self,
        claim: &Claim,
        work: F,
        may_keep: impl Fn() -> bool,
    ) -> F::Output {
        let apart = tokio::runtime::Handle::try_current()
            .ok()
            .filter(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread);
        let Some(runtime) = apart else {
            return self.keeping_lease(claim, work, may_keep).await;
        };
        let keeper = {
            let (idem, key, fence, lease, clock, hold_until) = (
                self.clone(),
                claim.key.clone(),
                claim.fence,
                claim.lease,
                claim.lease_clock.clone(),
                claim.hold_until,
            );
            let span = tracing::Span::current();
            // Its first renewal is a third of a lease away: a body that ends sooner costs a
            // spawn and an abort, and no store command.
            runtime.spawn(observe::in_span(&span, async move {
                idem.keep_lease_of(&key, fence, lease, &clock, hold_until)
                    .await;
            }))
        };
        let _keeper = AbortOnDrop(keeper);
        work.await
    }

    /// Runs `work` to its end while keeping `claim`'s lease from its own task, from the time
    /// `may_keep` says so (once it first waits); a lease lost meanwhile is no longer kept, and
    /// `work` still runs to its end.
    pub(crate) async fn keeping_lease<F: Future>(
        &self,
        claim: &Claim,
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
        self.runtime
            .release_in_background(request.key.to_owned(), move |store, key| async move {
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
            });
    }
}

impl Idempotency {
    /// Runs `release` on a task of its own, for a claim dropped before its body started; with
    /// no runtime to run it on, the claim lapses with its lease.
    fn release_in_background<R, Fut>(&self, key: String, release: R)
    where
        R: FnOnce(Arc<dyn Store>, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.inner.store.clone();
        runtime.spawn(async move {
            match release(store, key).await {
                // Lapsed and taken over meanwhile: not this claim's to release.
                Ok(()) | Err(Error::LeaseLost { .. }) => {}
                Err(err) => observe::release_failed(&err),
            }
        });
    }
}

/// A task aborted when this is dropped: the lease keeper of a call, which must not outlive it
/// (a cancelled call's keeper would renew a claim nobody runs).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whose result a call that ran its body ends with.
pub(crate) enum Settled {
    /// The body's own (recorded, released or held, as its end said).
    Mine,
    /// Another call's record, written while this call's claim had lapsed: the key's answer.
    Winner(Vec<u8>),
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
}

enum Acquired {
    /// The claim, and when its request was sent (its lease runs from no earlier than that).
    Fence(Fence, Instant),
    /// A record to replay, and whether this call waited for a concurrent first call.
    Replay { record: Vec<u8>, waited: bool },
}

/// What `begin` found.
pub(crate) enum Begun {
    Claimed(Claim),
    Replay {
        key: String,
        fingerprint: Vec<u8>,
        record: Vec<u8>,
        waited: bool,
    },
}

/// A claim held while the body runs.
pub(crate) struct Claim {
    pub(crate) key: String,
    fingerprint: Vec<u8>,
    pub(crate) fence: Fence,
    lease: Duration,
    retention: Duration,
    lease_clock: Arc<LeaseClock>,
    /// From when the lease is no longer renewed (`max_hold` after the claim), if ever.
    hold_until: Option<Instant>,
    /// Until the body may start, the runtime that releases the claim if it is dropped first (a
    /// cancelled call, a [`Claimed`] never run): a body that never started has no effect to
    /// guard, and its key must not stay held for a lease.
    unstarted: Option<Idempotency>,
}

impl Claim {
    /// The body may start: from now on, dropping the claim keeps it until its lease lapses.
    pub(crate) fn started(&mut self) {
        self.unstarted = None;
    }

    /// The fingerprint of the call's request.
    pub(crate) fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(runtime) = self.unstarted.take() {
            let (key, fence) = (std::mem::take(&mut self.key), self.fence);
            runtime.release_in_background(key, move |store, key| async move {
                store.release(&key, fence).await
            });
        }
    }
}

/// Until when the current claim is known to be valid: the send time of the claim or of the last
/// successful renewal, plus the lease. Shared by the renewal loop and the record write.
struct LeaseClock(std::sync::Mutex<Instant>);

impl LeaseClock {
    fn new(valid_until: Instant) -> Self {
        LeaseClock(std::sync::Mutex::new(valid_until))
    }

    fn valid_until(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn renewed(&self, valid_until: Instant) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = valid_until;
    }
}

/// Refuses a lease or retention that the runtime and the stores cannot honour.
fn check_durations(lease: Duration, retention: Duration) -> Result<(), Error> {
    let refuse = |reason: String| Err(Error::InvalidOption { reason });
    if lease < MIN_LEASE || lease > MAX_DURATION {
        return refuse(format!(
            "the lease is {lease:?}, but it must be from {MIN_LEASE:?} to {} days; \
             a lease is how long a crashed call blocks its key, so keep it a few times the \
             body's usual duration",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    if retention.is_zero() || retention > MAX_DURATION {
        return refuse(format!(
            "the retention is {retention:?}, but it must be above zero and at most {} days",
            MAX_DURATION.as_secs() / 86_400
        ));
    }
    Ok(())
}

/// `at + by`, saturating far in the future instead of overflowing.
pub(crate) fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .or_else(|| at.checked_add(MAX_DURATION))
        .unwrap_or(at)
}

pub(crate) fn not_recorded(key: String, source: Error) -> Error {
    Error::NotRecorded {
        key,
        source: Box::new(source),
    }
}

/// Whether a stored fingerprint and a call's describe the same request. A missing one (a call
/// without `fingerprint`, or a record made before the function had one) matches any: adding a
/// fingerprint to a function must not turn duplicates of older requests into `KeyReused`,
/// which tells clients to use a new key and so runs the effect again.
pub(crate) fn same_request(stored: &[u8], call: &[u8]) -> bool {
    stored.is_empty() || call.is_empty() || stored == call
}

/// The replayed result (an `Ok`, or a recorded `Err`), or why nothing can be replayed.
/// A replay's result and how it was served: a record that is another request's
/// (`KeyReused`) or unreadable (`Corrupt`) replays nothing, and the call failed before the body.
pub(crate) fn replayed<T, E>(
    key: &str,
    fingerprint: &[u8],
    record: &[u8],
    waited: bool,
    errors: &impl ErrorPolicy<E>,
) -> (Result<T, E>, Served, CallOutcome)
where
    T: DeserializeOwned,
    E: From<Error>,
{
    match decode_replay(key, fingerprint, record, errors) {
        Ok(replayed) if waited => (replayed, Served::Waited, CallOutcome::Waited),
        Ok(replayed) => (replayed, Served::Replayed, CallOutcome::Replayed),
        Err(err) => {
            let how = CallOutcome::of_error(&err);
            (Err(err.into()), Served::NotRun, how)
        }
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
    claim: Claim,
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
        on_error: impl Fn(&E) -> OnError,
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
        drive::execute(
            runtime,
            Start::Claimed(claim, trace),
            body,
            Unrecorded(on_error),
        )
    }
}

pub(crate) fn decode_replay<T, E>(
    key: &str,
    fingerprint: &[u8],
    bytes: &[u8],
    errors: &impl ErrorPolicy<E>,
) -> Result<Result<T, E>, Error>
where
    T: DeserializeOwned,
{
    let record = Record::decode(key, bytes)?;
    if !same_request(record.fingerprint, fingerprint) {
        return Err(Error::KeyReused {
            key: key.to_owned(),
        });
    }
    let undecodable = |source: serde_json::Error| {
        Error::corrupt(
            key,
            format!("its value does not decode as this function's result type ({source})"),
        )
    };
    match record.outcome {
        Outcome::Ok => Ok(Ok(
            serde_json::from_slice(record.value).map_err(undecodable)?
        )),
        Outcome::Err => match errors.decode(record.value) {
            Some(decoded) => Ok(Err(decoded.map_err(undecodable)?)),
            None => Err(Error::corrupt(
                key,
                "it records an `Err`, but this function does not record errors (was `record_errors` removed?)",
            )),
        },
    }
}

impl AsRef<Idempotency> for Idempotency {
    fn as_ref(&self) -> &Idempotency {
        self
    }
}

//! One call's options: its namespace and key, and what overrides the runtime's defaults.

use std::borrow::Cow;
use std::fmt::Display;
use std::time::Duration;

use serde::Serialize;

use crate::encode::Fingerprint;
use crate::Error;

/// How long records are kept by default.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a claim lasts between renewals by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

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
            Self::Wait => lease,
            Self::Reject => Duration::ZERO,
            Self::WaitAtMost(limit) => limit.min(lease),
        }
    }
}

/// One idempotent call: its namespace and key, and options that override the runtime's.
#[derive(Debug)]
#[must_use = "a Call does nothing until passed to Idempotency::run"]
pub struct Call {
    pub(crate) namespace: Result<Cow<'static, str>, Error>,
    pub(crate) key: String,
    /// A hash of the caller the key belongs to, when keys are scoped per caller.
    pub(crate) scope: Option<String>,
    pub(crate) fingerprint: Result<Option<Fingerprint>, Error>,
    pub(crate) retention: Option<Duration>,
    pub(crate) lease: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) on_in_progress: OnInProgress,
    pub(crate) hold_unknown: Option<UnknownHold>,
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
        Self {
            namespace,
            key: key.to_string(),
            scope: None,
            fingerprint: Ok(None),
            retention: None,
            lease: None,
            max_hold: None,
            on_in_progress: OnInProgress::Wait,
            hold_unknown: None,
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
        self.scope = Some(crate::encode::hex(
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
    /// [`with_max_hold`](crate::Idempotency::with_max_hold)).
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.max_hold = Some(max_hold);
        self
    }

    /// What a duplicate does while the first call runs.
    pub fn on_in_progress(mut self, mode: OnInProgress) -> Self {
        self.on_in_progress = mode;
        self
    }

    /// How long this call's key is held if its outcome is unknown (overrides the runtime's
    /// [`with_unknown_hold`](crate::Idempotency::with_unknown_hold)).
    pub fn hold_unknown(mut self, hold: UnknownHold) -> Self {
        self.hold_unknown = Some(hold);
        self
    }
}

/// How long a key is held when its call ends with an unknown outcome (a body that panicked, or
/// an `Err` classified [`OutcomeUnknown`](crate::Disposition::OutcomeUnknown)): the effect may
/// have happened, or may still be landing, so no other call may run the body meanwhile.
///
/// A body that panics, or a call dropped mid-body (cancelled, timed out), sets its hold from a
/// task of its own (where a tokio runtime runs). A body whose claim lapsed before it ended is
/// held under a fresh claim if the key is still free. A process that dies cannot set a hold:
/// its key is held for what its lease had left. In a database transaction
/// (`transaction = conn`) an `Err` classified unknown commits the hold with the claim, while a
/// call dropped or panicking mid-body rolls back, its writes undone and its key free at once.
///
/// ```
/// # use idem_core as idem; // what users of the `idem` crate write
/// use idem::{Call, UnknownHold};
///
/// // A withdrawal that timed out must not run again until someone has checked the ledger.
/// let call = Call::new("withdraw", "w-42").hold_unknown(UnknownHold::UntilResolved);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UnknownHold {
    /// Until the claim's lease lapses; then the next delivery runs the body again (the
    /// default).
    #[default]
    OneLease,
    /// For this long (and at least until the lease lapses); then the next delivery runs the
    /// body again. Meanwhile calls fail with [`Error::OutcomeUnknown`].
    For(Duration),
    /// Until an operator resolves the key (records its result, or releases it: `idem resolve`,
    /// [`StoreAdmin::resolve`](crate::admin::StoreAdmin::resolve)). Meanwhile calls fail with
    /// [`Error::OutcomeUnknown`]. (Held for [`MAX_DURATION`](crate::MAX_DURATION), 100 years.)
    UntilResolved,
}

impl UnknownHold {
    /// The hold to ask the store for: `None` for one lease (no hold), and an error for a
    /// duration the stores cannot keep.
    pub(crate) fn duration(self) -> Result<Option<Duration>, Error> {
        match self {
            Self::OneLease => Ok(None),
            Self::For(hold) if !hold.is_zero() && hold <= crate::MAX_DURATION => Ok(Some(hold)),
            Self::For(hold) => Err(Error::InvalidOption {
                reason: format!(
                    "the hold of an unknown outcome is {hold:?}, but it must be above zero and \
                     at most {} days (or `UnknownHold::UntilResolved`)",
                    crate::MAX_DURATION.as_secs() / 86_400
                ),
            }),
            Self::UntilResolved => Ok(Some(crate::MAX_DURATION)),
        }
    }
}

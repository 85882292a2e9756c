//! What the layer was configured with: the state every request of the service reads.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::request::Parts;
use http::{Method, StatusCode};
use idem_core::{Disposition, Fingerprint, Idempotency, OnInProgress};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::transaction::Mode;

/// The default limit on request bodies the layer reads: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 1024 * 1024;

/// The default limit on response bodies the layer records: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 1024 * 1024;

/// The default cap on a 409's `Retry-After`.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

pub(crate) type ScopeFn = dyn Fn(&Parts) -> Option<String> + Send + Sync;

pub(crate) type FingerprintFn = dyn Fn(&Parts, &Bytes) -> Fingerprint + Send + Sync;

pub(crate) type StatusFn = dyn Fn(StatusCode) -> Disposition + Send + Sync;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) idem: Idempotency,
    pub(crate) namespace: Cow<'static, str>,
    pub(crate) methods: Vec<Method>,
    pub(crate) key_required: bool,
    pub(crate) scope: Option<Arc<ScopeFn>>,
    pub(crate) fingerprint: Arc<FingerprintFn>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) lease: Option<Duration>,
    pub(crate) max_hold: Option<Duration>,
    pub(crate) in_flight: OnInProgress,
    pub(crate) max_retry_after: Duration,
    pub(crate) problem_base: String,
    pub(crate) fail_open: bool,
    pub(crate) on_status: Arc<StatusFn>,
    pub(crate) on_unrecordable: Disposition,
    pub(crate) replayed_headers: Vec<HeaderName>,
    pub(crate) capacity: Option<Arc<Semaphore>>,
    /// The transactional mode's store, when on.
    pub(crate) transaction: Option<Arc<dyn Mode>>,
    /// The requests in flight; shared by every clone of the layer (a tracker's clones share
    /// its state), closed by `shutdown`.
    pub(crate) tasks: TaskTracker,
}

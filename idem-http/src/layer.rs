//! The layer: a builder of the options, and `Layer` making the service.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::request::Parts;
use http::{Method, StatusCode};
use idem_core::{Disposition, Fingerprint, Idempotency, OnInProgress, TransactionalStore};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::config::{
    Config, DEFAULT_MAX_REQUEST_BODY, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_MAX_RETRY_AFTER,
};
use crate::fingerprint::default_fingerprint;
use crate::problem::DEFAULT_PROBLEM_BASE;
use crate::recorded::DEFAULT_REPLAYED_HEADERS;
use crate::service::IdempotencyService;
use crate::status::default_on_status;
use crate::transaction::{InTransaction, Mode};

/// A tower [`Layer`](tower_layer::Layer) that makes requests carrying an `Idempotency-Key`
/// header idempotent, per the IETF draft `draft-ietf-httpapi-idempotency-key-header`, on idem's
/// runtime (any store: memory, Redis, PostgreSQL).
///
/// For each POST or PATCH request (by default) with a key, the layer reads the body (up to a
/// limit), fingerprints it, and claims the key, scoped to the caller if a
/// [`scope`](Self::scope) is given, and to the method and path:
///
/// | the key is | the response |
/// | --- | --- |
/// | new | the handler runs; its response is recorded (2xx, 3xx and 4xx other than 408, 425 and 429) or the claim released (5xx, 408, 425, 429), see [`on_status`](Self::on_status) |
/// | done, same request | the recorded response, with `Idempotent-Replayed: true` |
/// | done or in flight, different request | 422 `key-reused` |
/// | in flight, same request | 409 `in-flight` with `Retry-After`, or with [`wait_for_first`](Self::wait_for_first) the first response once it is recorded |
///
/// Responses the layer makes itself are `application/problem+json` (RFC 9457) and carry their
/// code in an `Idempotency-Rejection` header; see [`Rejection`](crate::Rejection).
///
/// Handlers run on their own task: a client that disconnects does not cancel the handler, which
/// finishes and records its response for the client's retry. [`shutdown`](Self::shutdown) waits
/// for them.
///
/// ```
/// use axum::{routing::post, Router};
/// # mod idem { pub use idem_core::*; pub mod http { pub use idem_http::*; } } // the `idem` crate's re-exports
/// use idem::http::IdempotencyLayer;
/// use idem::{Idempotency, MemoryStore};
///
/// let idempotency = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()));
/// let app: Router = Router::new()
///     .route("/payments", post(|| async { "charged" }))
///     .layer(idempotency.clone());
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    pub(crate) config: Arc<Config>,
}

impl IdempotencyLayer {
    /// A layer on `idem`'s store and defaults (lease, retention, key prefix), with keys
    /// required on POST and PATCH.
    pub fn new(idem: Idempotency) -> Self {
        Self {
            config: Arc::new(Config {
                idem,
                namespace: Cow::Borrowed("http"),
                methods: vec![Method::POST, Method::PATCH],
                key_required: true,
                scope: None,
                fingerprint: Arc::new(|parts: &Parts, body: &Bytes| {
                    default_fingerprint(parts, body)
                }),
                max_request_body: DEFAULT_MAX_REQUEST_BODY,
                max_response_body: DEFAULT_MAX_RESPONSE_BODY,
                lease: None,
                max_hold: None,
                in_flight: OnInProgress::Reject,
                max_retry_after: DEFAULT_MAX_RETRY_AFTER,
                problem_base: DEFAULT_PROBLEM_BASE.to_owned(),
                fail_open: false,
                on_status: Arc::new(default_on_status),
                on_unrecordable: Disposition::OutcomeUnknown,
                replayed_headers: DEFAULT_REPLAYED_HEADERS.to_vec(),
                capacity: None,
                transaction: None,
                tasks: TaskTracker::new(),
            }),
        }
    }

    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(Arc::make_mut(&mut self.config));
        self
    }

    /// The namespace of the layer's keys in the store (default `http`): give two services that
    /// share a store and a key prefix different namespaces.
    #[must_use]
    pub fn namespace(self, namespace: impl Into<Cow<'static, str>>) -> Self {
        let namespace = namespace.into();
        self.with(|config| config.namespace = namespace)
    }

    /// The methods the layer applies to (default POST and PATCH); other requests pass through
    /// untouched. GET, HEAD, PUT and DELETE are idempotent by definition.
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|config| config.methods = methods)
    }

    /// Lets requests without a key pass through untouched, without idempotency, instead of
    /// answering 400 `key-missing`. Choose it when adding the layer to an API whose clients do
    /// not all send keys yet; keep keys required on endpoints with effects that must not repeat
    /// (payments), where a client without a key has no safe way to retry.
    #[must_use]
    pub fn key_optional(self) -> Self {
        self.with(|config| config.key_required = false)
    }

    /// Scopes keys to the caller: `scope` reads the principal from the request (an
    /// authenticated user id in its extensions, an API key's id), and two callers' identical
    /// keys never meet. `None` puts the request in the shared, unscoped space.
    ///
    /// Authentication must run *before* this layer (as an outer layer), so that the principal
    /// is in the request when the layer reads it, and so that unauthenticated requests never
    /// claim a key: a replay is answered without calling the handler, so authentication done
    /// inside the handler (an extractor) does not guard replays. Without a scope, every
    /// caller's keys share one space. Tenants told apart by host name need the host in the
    /// scope (the key holds the method and the path, not the host, so that a retry that reaches
    /// another instance under another name is still a duplicate).
    ///
    /// ```
    /// # use idem_core::{Idempotency, MemoryStore};
    /// # use idem_http::IdempotencyLayer;
    /// #[derive(Clone)]
    /// struct User { id: u64 }
    ///
    /// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
    ///     .scope(|request| request.extensions.get::<User>().map(|user| user.id.to_string()));
    /// ```
    #[must_use]
    pub fn scope(self, scope: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.with(|config| config.scope = Some(Arc::new(scope)))
    }

    /// Replaces the request fingerprint (default [`default_fingerprint`]): a key sent again with
    /// a different fingerprint gets 422 `key-reused`.
    #[must_use]
    pub fn fingerprint(
        self,
        fingerprint: impl Fn(&Parts, &Bytes) -> Fingerprint + Send + Sync + 'static,
    ) -> Self {
        self.with(|config| config.fingerprint = Arc::new(fingerprint))
    }

    /// The largest request body the layer reads, in bytes (default 1 MiB). A larger request is
    /// refused with 413 `body-too-large` (by its `Content-Length` before reading, or once that
    /// much has arrived); it is never passed on without idempotency.
    #[must_use]
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|config| config.max_request_body = bytes)
    }

    /// The largest response body the layer records, in bytes (default 1 MiB). A larger response
    /// reaches the client but is not recorded: see [`on_unrecordable`](Self::on_unrecordable).
    #[must_use]
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|config| config.max_response_body = bytes)
    }

    /// The lease of the layer's claims (default: the runtime's). It bounds how long a key stays
    /// blocked after a crash or a panic, and so the 409s a client sees before its retry runs.
    #[must_use]
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|config| config.lease = Some(lease))
    }

    /// The longest a request holds its key while its handler runs (default: the runtime's,
    /// which has no ceiling): a hung handler's key passes to the next request a lease after
    /// this. The handler is not stopped; its late response is recorded if the key is free when
    /// it ends, and is otherwise replaced by the recorded one (or a 409 while another request
    /// still holds the key). Not for the transactional mode, whose claim is uncommitted while
    /// the handler runs.
    #[must_use]
    pub fn max_hold(self, max_hold: Duration) -> Self {
        self.with(|config| config.max_hold = Some(max_hold))
    }

    /// A duplicate that arrives while the first request runs waits up to `limit` for its
    /// response and gets it (as a replay), instead of a 409 at once; after `limit` it gets the
    /// 409. Waiting holds a connection and a task per duplicate: keep `limit` below your
    /// clients' timeouts.
    #[must_use]
    pub fn wait_for_first(self, limit: Duration) -> Self {
        self.with(|config| config.in_flight = OnInProgress::WaitAtMost(limit))
    }

    /// The cap on a 409's `Retry-After` (default 5 s). `Retry-After` is the holder's lease
    /// remaining, which is when a crashed holder's claim lapses; a live holder usually finishes
    /// much sooner, so the cap keeps clients from waiting out a whole lease.
    #[must_use]
    pub fn max_retry_after(self, cap: Duration) -> Self {
        self.with(|config| config.max_retry_after = cap)
    }

    /// The base of the problems' `type` URI, to which the code is appended (default
    /// `urn:idem:problem:`), e.g. `https://api.example.com/problems/` for documentation you
    /// host.
    #[must_use]
    pub fn problem_base(self, base: impl Into<String>) -> Self {
        let base = base.into();
        self.with(|config| config.problem_base = base)
    }

    /// When the store fails before the handler runs, runs the handler anyway, without
    /// idempotency, instead of answering 503 `store-unavailable` (the default, fail closed).
    /// Choose it only where a duplicate effect is cheaper than an outage.
    #[must_use]
    pub fn fail_open(self) -> Self {
        self.with(|config| config.fail_open = true)
    }

    /// Decides per status whether a response is recorded ([`Disposition::Record`]), released for a
    /// retry ([`Disposition::Release`]), or an unknown outcome that keeps the key claimed until its
    /// lease lapses ([`Disposition::OutcomeUnknown`]); default [`default_on_status`]. A handler
    /// that answers 502 or 504 after its upstream timed out mid-charge should map those to
    /// `OutcomeUnknown`:
    ///
    /// ```
    /// # use idem_core::{Idempotency, MemoryStore, Disposition};
    /// # use idem_http::{default_on_status, IdempotencyLayer};
    /// let layer = IdempotencyLayer::new(Idempotency::new(MemoryStore::new()))
    ///     .on_status(|status| match status.as_u16() {
    ///         502 | 504 => Disposition::OutcomeUnknown,
    ///         _ => default_on_status(status),
    ///     });
    /// ```
    #[must_use]
    pub fn on_status(
        self,
        classify: impl Fn(StatusCode) -> Disposition + Send + Sync + 'static,
    ) -> Self {
        self.with(|config| config.on_status = Arc::new(classify))
    }

    /// What happens to the claim when a response that should be recorded cannot be: a
    /// `text/event-stream`, a body over [`max_response_body`](Self::max_response_body), a body
    /// with trailers, or one that fails midway. The client gets the response either way. By
    /// default ([`Disposition::OutcomeUnknown`]) the key stays claimed until its lease lapses (409
    /// meanwhile), then a retry runs the handler again; [`Disposition::Release`] lets a retry run
    /// it at once (fit for streams without effects). Neither replays: idem cannot replay what
    /// it did not record.
    #[must_use]
    pub fn on_unrecordable(self, disposition: Disposition) -> Self {
        let disposition = match disposition {
            Disposition::Release => Disposition::Release,
            _ => Disposition::OutcomeUnknown,
        };
        self.with(|config| config.on_unrecordable = disposition)
    }

    /// Replays `name` too (beyond [`DEFAULT_REPLAYED_HEADERS`]). Hop-by-hop headers,
    /// `Content-Length`, `Date` and `Set-Cookie` are never replayed.
    #[must_use]
    pub fn replay_header(self, name: HeaderName) -> Self {
        self.with(|config| config.replayed_headers.push(name))
    }

    /// Replays exactly these headers (instead of [`DEFAULT_REPLAYED_HEADERS`]); the ones never
    /// replayed stay excluded.
    #[must_use]
    pub fn replay_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.with(|config| config.replayed_headers = names)
    }

    /// At most `limit` requests with keys in flight through the layer (replays included); more
    /// get 503 `over-capacity` with `Retry-After: 1`.
    #[must_use]
    pub fn max_in_flight(self, limit: usize) -> Self {
        let semaphore = Arc::new(Semaphore::new(limit));
        self.with(|config| config.capacity = Some(semaphore))
    }

    /// Stops taking requests with keys (503 `shutting-down`) and waits for the handlers in
    /// flight to finish and record. Call it after the server stops accepting connections (e.g.
    /// after `axum::serve(...).with_graceful_shutdown(...)` returns), on a clone of the layer
    /// given to the router.
    pub async fn shutdown(&self) {
        let tasks = &self.config.tasks;
        tasks.close();
        tasks.wait().await;
    }

    /// Runs each request with a key inside a database transaction of the runtime's store `S`
    /// (for PostgreSQL, `PostgresStore`): the layer begins it on a pooled connection, claims
    /// the key in it, and lends it to the handler through the [`Tx`](crate::Tx) extractor, so
    /// that the handler's writes and the recorded response commit together, or not at all. The
    /// runtime must have been made with `Idempotency::new` over an `S`; otherwise every request
    /// with a key gets 500 `misconfigured`.
    ///
    /// The response is sent once its transaction has committed. What each outcome does:
    ///
    /// | the handler | the transaction | the key | the client gets |
    /// | --- | --- | --- | --- |
    /// | answers a recorded status (2xx, most 4xx) | its writes and the response commit | done: replayed to duplicates | the response |
    /// | answers a released status (5xx, 408, 425, 429) | rolled back | free: a retry runs against unchanged data | the response |
    /// | answers a status [`on_status`](Self::on_status) calls `OutcomeUnknown` | writes rolled back, the claim commits | held for a lease | the response |
    /// | answers what cannot be recorded (a stream, a body over the limit) | rolled back (with [`on_unrecordable`](Self::on_unrecordable)'s default the claim commits and holds the key for a lease) | free, or held | 500 `response-unrecordable` |
    /// | answers a recorded status after one of its statements aborted the transaction (or a deferred constraint fails at `COMMIT`) | rolled back | free | 500 `transaction-aborted` |
    /// | panics (in its code or its response body) | writes rolled back, the claim commits | held for a lease (or as `with_unknown_hold` says) | 500 `handler-panicked` |
    /// | keeps its [`Tx`](crate::Tx) past its answer | rolled back | free | 500 `misconfigured` |
    /// | the client disconnects | the handler runs on, and commits | as above | its retry replays |
    /// | the process dies or the connection is lost before COMMIT | rolled back by the server | free | no answer; its retry runs |
    /// | the COMMIT's reply is lost | committed or not, unknown | done or free | 503 `store-unavailable`; its retry replays or runs |
    /// | the database is down | never begun | untouched | 503 `store-unavailable`, the handler not run ([`fail_open`](Self::fail_open) does not apply) |
    ///
    /// A different request under a key whose first request is still in flight gets 409 (its
    /// claim cannot be read until it commits, so it cannot be told from the same request), and
    /// 422 once the first commits. `docs/http.md` names the test of each row.
    ///
    /// ```
    /// # mod idem { // the `idem` crate's re-exports
    /// #     pub use idem_core::*;
    /// #     pub mod http { pub use idem_http::*; }
    /// #     pub mod store { pub use idem_core::TransactionalStore; }
    /// # }
    /// use idem::http::IdempotencyLayer;
    /// use idem::Idempotency;
    /// # // Written for any transactional store; with the `postgres` feature, `PostgresStore`.
    /// # fn layer<PostgresStore: idem::store::TransactionalStore>(idem: Idempotency) -> IdempotencyLayer {
    /// let idempotency = IdempotencyLayer::new(idem).in_transaction::<PostgresStore>();
    /// # idempotency }
    /// ```
    #[must_use]
    pub fn in_transaction<S: TransactionalStore>(self) -> Self {
        let mode: Arc<dyn Mode> = Arc::new(InTransaction::<S>::new());
        self.with(|config| config.transaction = Some(mode))
    }

    /// How many requests with keys the layer is handling now (reading their bodies, running
    /// their handlers, or recording).
    pub fn in_flight(&self) -> usize {
        self.config.tasks.len()
    }
}

impl std::fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("namespace", &config.namespace)
            .field("methods", &config.methods)
            .field("key_required", &config.key_required)
            .field("max_request_body", &config.max_request_body)
            .field("max_response_body", &config.max_response_body)
            .field("in_flight", &config.in_flight)
            .field("fail_open", &config.fail_open)
            .field("in_transaction", &config.transaction.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> tower_layer::Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            inner,
            config: self.config.clone(),
        }
    }
}

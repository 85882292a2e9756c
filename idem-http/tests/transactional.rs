//! The layer's transactional mode, row by row of its outcome table: handlers that write to a
//! private PostgreSQL through the request's `Tx`, an axum server on a loopback port, a real
//! client, and the rows counted in the database afterwards.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use idem_core::{Disposition, Idempotency};
use idem_http::{IdempotencyLayer, Tx};
use idem_postgres::sqlx::{self, PgPool};
use idem_postgres::PostgresStore;
use idem_test_servers::PostgresServer;
use support::{Counters, Running};

type PgTx = Tx<PostgresStore>;

const ORDER: &str = r#"{"amount_cents": 1250, "currency": "EUR"}"#;

/// Inserts one charge for `body` through the request's transaction and returns its id.
async fn insert(tx: &mut PgTx, body: &Bytes) -> i64 {
    sqlx::query_scalar("INSERT INTO charges (request) VALUES ($1) RETURNING id")
        .bind(String::from_utf8_lossy(body).into_owned())
        .fetch_one(&mut **tx)
        .await
        .unwrap()
}

/// 201 with the charge's id.
async fn charge(State(counters): State<Arc<Counters>>, mut tx: PgTx, body: Bytes) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    let id = insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("{{\"id\":{id}}}")).into_response()
}

/// Writes, then answers 500 on its first execution (201 after).
async fn write_then_fail(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    let id = insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    if n == 1 {
        (
            StatusCode::BAD_GATEWAY,
            "the gateway failed after the write",
        )
            .into_response()
    } else {
        (StatusCode::CREATED, format!("{{\"id\":{id}}}")).into_response()
    }
}

/// Writes, then panics on its first execution.
async fn write_then_panic(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    let n = counters.started.fetch_add(1, Ordering::SeqCst) + 1;
    let id = insert(&mut tx, &body).await;
    if n == 1 {
        panic!("the handler fails after its write (on purpose, in a test)");
    }
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("{{\"id\":{id}}}")).into_response()
}

/// Writes, then answers with an event stream, which cannot be recorded.
async fn write_then_stream(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    ([("content-type", "text/event-stream")], "data: charged\n\n").into_response()
}

/// Writes, then moves its `Tx` into a task that outlives the response.
async fn write_and_keep(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(tx);
    });
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, "charged").into_response()
}

/// Writes a charge, then a statement that fails (a coupon already used), which it catches and
/// answers with 409, a recorded status.
async fn write_then_catch_a_failed_statement(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    let coupon = sqlx::query("INSERT INTO coupons (code) VALUES ('used')")
        .execute(&mut *tx)
        .await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    match coupon {
        Ok(_) => (StatusCode::CREATED, "charged").into_response(),
        Err(_) => (StatusCode::CONFLICT, "coupon already used").into_response(),
    }
}

/// Writes twice under a deferred unique constraint: the COMMIT fails.
async fn write_a_deferred_violation(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    for _ in 0..2 {
        sqlx::query("INSERT INTO deferred (v) VALUES (1)")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, "booked").into_response()
}

/// Writes, then answers 201 with a body that panics when read.
async fn write_then_panic_in_the_body(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    let stream = futures_util::stream::poll_fn(
        |_| -> std::task::Poll<Option<Result<Bytes, std::io::Error>>> {
            panic!("the response body fails (on purpose, in a test)")
        },
    );
    (StatusCode::CREATED, axum::body::Body::from_stream(stream)).into_response()
}

/// Writes, then answers `status` (and `content_type`) with a body that holds the `Tx`.
fn body_holding(tx: PgTx, status: StatusCode, content_type: &'static str) -> Response {
    let stream = futures_util::stream::once(async move {
        drop(tx);
        Ok::<_, std::io::Error>(Bytes::from_static(b"data: done\n\n"))
    });
    let body = axum::body::Body::from_stream(stream);
    (status, [("content-type", content_type)], body).into_response()
}

/// Writes, then answers 503 with a body that holds the `Tx`.
async fn released_body_holding_the_tx(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    body_holding(tx, StatusCode::SERVICE_UNAVAILABLE, "text/plain")
}

/// Writes, then answers an event stream that holds the `Tx`.
async fn stream_holding_the_tx(
    State(counters): State<Arc<Counters>>,
    mut tx: PgTx,
    body: Bytes,
) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    insert(&mut tx, &body).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    body_holding(tx, StatusCode::OK, "text/event-stream")
}

/// Writes, then takes its time (a provider's call) before answering 201.
async fn slow_charge(State(counters): State<Arc<Counters>>, mut tx: PgTx, body: Bytes) -> Response {
    counters.started.fetch_add(1, Ordering::SeqCst);
    let id = insert(&mut tx, &body).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    counters.finished.fetch_add(1, Ordering::SeqCst);
    (StatusCode::CREATED, format!("{{\"id\":{id}}}")).into_response()
}

/// Whether a transaction was lent.
async fn maybe_lent(tx: Option<PgTx>) -> String {
    format!("lent: {}", tx.is_some())
}

/// Takes the transaction twice.
async fn two_transactions(_first: PgTx, _second: PgTx) -> Response {
    (StatusCode::CREATED, "unreachable").into_response()
}

/// Takes the transaction on a route outside the layer.
async fn outside(_tx: PgTx) -> Response {
    (StatusCode::CREATED, "unreachable").into_response()
}

struct Database {
    server: Option<PostgresServer>,
    pool: PgPool,
    idem: Idempotency,
}

impl Database {
    async fn start() -> Self {
        let (url, server) = idem_test_servers::any_database();
        let store = PostgresStore::connect(&url)
            .await
            .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
        store.migrate().await.unwrap();
        let pool = store.pool().clone();
        sqlx::raw_sql(
            "DROP TABLE IF EXISTS charges; \
             CREATE TABLE charges (id bigserial PRIMARY KEY, request text NOT NULL); \
             DROP TABLE IF EXISTS coupons; CREATE TABLE coupons (code text PRIMARY KEY); \
             INSERT INTO coupons VALUES ('used'); \
             DROP TABLE IF EXISTS deferred; \
             CREATE TABLE deferred (v int, UNIQUE (v) DEFERRABLE INITIALLY DEFERRED)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let prefix = format!("{}:", std::process::id());
        let idem = Idempotency::new(store)
            .with_key_prefix(prefix)
            .with_store_attempts(1);
        Self { server, pool, idem }
    }

    async fn charges(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM charges")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    async fn serve(&self, configure: fn(IdempotencyLayer) -> IdempotencyLayer) -> Running {
        self.serve_over(self.idem.clone(), configure).await
    }

    /// The app on `idem` (over this database, perhaps through another pool).
    async fn serve_over(
        &self,
        idem: Idempotency,
        configure: fn(IdempotencyLayer) -> IdempotencyLayer,
    ) -> Running {
        let layer = configure(IdempotencyLayer::new(idem).in_transaction::<PostgresStore>());
        let counters = Arc::new(Counters::default());
        let router = Router::new()
            .route("/charges", post(charge))
            .route("/fails", post(write_then_fail))
            .route("/panics", post(write_then_panic))
            .route("/streams", post(write_then_stream))
            .route("/keeps", post(write_and_keep))
            .route("/twice", post(two_transactions))
            .route("/coupon", post(write_then_catch_a_failed_statement))
            .route("/deferred", post(write_a_deferred_violation))
            .route("/body-panics", post(write_then_panic_in_the_body))
            .route("/released-holding", post(released_body_holding_the_tx))
            .route("/stream-holding", post(stream_holding_the_tx))
            .route("/maybe", post(maybe_lent))
            .route("/slow", post(slow_charge))
            .layer(layer)
            .route("/outside", post(outside))
            .with_state(counters.clone());
        Running::serve(router, counters).await
    }
}

fn defaults(layer: IdempotencyLayer) -> IdempotencyLayer {
    layer
}

/// A recorded response commits with the handler's write: one row, and the duplicate replays
/// the same id without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_response_commits_with_the_write_and_replays() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let first = app.post("/charges", "k1", ORDER).send().await;
    assert_eq!(first.status, 201, "{first:?}");
    let second = app.post("/charges", "k1", ORDER).send().await;
    assert_eq!(second.status, 201, "{second:?}");
    assert!(second.replayed());
    assert_eq!(second.body, first.body);
    assert_eq!((app.counters.started(), db.charges().await), (1, 1));
}

/// A released status (5xx) rolls the write back: no row, and the retry runs against unchanged
/// data and commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_status_rolls_the_write_back_and_the_retry_runs() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let failed = app.post("/fails", "k2", ORDER).send().await;
    assert_eq!(
        failed.status, 502,
        "the handler's own answer reaches the client"
    );
    assert_eq!(
        db.charges().await,
        0,
        "the failed attempt's write was rolled back"
    );
    let retried = app.post("/fails", "k2", ORDER).send().await;
    assert_eq!(retried.status, 201, "{retried:?}");
    let replayed = app.post("/fails", "k2", ORDER).send().await;
    assert!(replayed.replayed());
    assert_eq!((app.counters.started(), db.charges().await), (2, 1));
}

/// A status mapped to `OutcomeUnknown` rolls the write back but holds the key for a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_outcome_rolls_the_write_back_and_holds_the_key() {
    fn unknown(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer
            .lease(Duration::from_secs(1))
            .on_status(|status| match status.as_u16() {
                502 => Disposition::OutcomeUnknown,
                _ => idem_http::default_on_status(status),
            })
    }
    let db = Database::start().await;
    let app = db.serve(unknown).await;
    let failed = app.post("/fails", "k3", ORDER).send().await;
    assert_eq!(failed.status, 502);
    assert_eq!(db.charges().await, 0);
    let held = app.post("/fails", "k3", ORDER).send().await;
    assert_eq!(held.status, 409, "{held:?}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retried = app.post("/fails", "k3", ORDER).send().await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert_eq!((app.counters.started(), db.charges().await), (2, 1));
}

/// A panic rolls the write back, answers 500, and holds the key for a lease (effects outside
/// the database may have started); then the retry runs and commits once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_the_write_back_and_holds_the_key_for_a_lease() {
    fn short(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.lease(Duration::from_secs(1))
    }
    let db = Database::start().await;
    let app = db.serve(short).await;
    let panicked = app.post("/panics", "k4", ORDER).send().await;
    assert_eq!(panicked.status, 500);
    assert_eq!(panicked.problem(), "handler-panicked");
    assert_eq!(db.charges().await, 0);
    assert_eq!(app.post("/panics", "k4", ORDER).send().await.status, 409);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let retried = app.post("/panics", "k4", ORDER).send().await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert_eq!((app.counters.started(), db.charges().await), (2, 1));
}

/// A response that cannot be recorded is not sent: its write is rolled back and the client
/// gets 500 `response-unrecordable`; with `on_unrecordable(Release)` the retry runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecordable_response_is_not_sent_and_its_write_is_rolled_back() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let streamed = app.post("/streams", "k5", ORDER).send().await;
    assert_eq!(streamed.status, 500, "{streamed:?}");
    assert_eq!(streamed.problem(), "response-unrecordable");
    assert_eq!(db.charges().await, 0);
    let held = app.post("/streams", "k5", ORDER).send().await;
    assert_eq!(
        held.status, 409,
        "by default the key is held as an unknown outcome"
    );

    fn release(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.on_unrecordable(Disposition::Release)
    }
    let app = db.serve(release).await;
    let first = app.post("/streams", "k6", ORDER).send().await;
    let second = app.post("/streams", "k6", ORDER).send().await;
    assert_eq!((first.status.as_u16(), second.status.as_u16()), (500, 500));
    assert_eq!((app.counters.started(), db.charges().await), (2, 0));
}

/// A handler that keeps its `Tx` past its answer commits nothing: 500 `misconfigured`, no row,
/// and the key is free for a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_kept_past_the_response_commits_nothing() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let kept = app.post("/keeps", "k7", ORDER).send().await;
    assert_eq!(kept.status, 500, "{kept:?}");
    assert_eq!(kept.problem(), "misconfigured");
    assert!(kept.text().contains("kept its `Tx`"), "{}", kept.text());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(db.charges().await, 0);
    let retried = app.post("/keeps", "k7", ORDER).send().await;
    assert_eq!(retried.status, 500, "the retry runs again: {retried:?}");
    assert_eq!(app.counters.started(), 2);
}

/// `Tx` where the layer lent none, or taken twice: 500 `misconfigured`, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tx_not_lent_or_taken_twice_is_refused() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let outside = app.post("/outside", "k8", ORDER).send().await;
    assert_eq!(outside.status, 500);
    assert_eq!(outside.problem(), "misconfigured");
    assert!(
        outside.text().contains("no transaction was lent"),
        "{}",
        outside.text()
    );
    let unkeyed = app.request("GET", "/charges").send().await;
    assert_eq!(unkeyed.status, 405, "GET is not routed: {unkeyed:?}");
    let twice = app.post("/twice", "k9", ORDER).send().await;
    assert_eq!(twice.status, 500);
    assert!(twice.text().contains("taken already"), "{}", twice.text());
}

/// Two callers with one key, scoped apart: two charges, two ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_callers_sharing_a_key_get_two_charges() {
    fn scoped(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.scope(|parts| {
            parts
                .headers
                .get("x-customer")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
    }
    let db = Database::start().await;
    let app = db.serve(scoped).await;
    let alice = app
        .post("/charges", "order-1", ORDER)
        .header("x-customer", "alice")
        .send()
        .await;
    let bob = app
        .post("/charges", "order-1", ORDER)
        .header("x-customer", "bob")
        .send()
        .await;
    assert_eq!((alice.status.as_u16(), bob.status.as_u16()), (201, 201));
    assert!(!bob.replayed(), "{bob:?}");
    assert_ne!(alice.body, bob.body);
    assert_eq!(db.charges().await, 2);
}

/// The database is down: 503 `store-unavailable` without running the handler, within about a
/// second; when it is back, the retry runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_a_fast_503_and_the_handler_does_not_run() {
    let mut db = Database::start().await;
    let app = db.serve(defaults).await;
    let Some(server) = db.server.as_mut() else {
        panic!("this check stops its own server: unset IDEM_TEST_DATABASE_URL to run it");
    };
    server.stop_immediately();
    let asked = Instant::now();
    let down = app.post("/charges", "k10", ORDER).send().await;
    let took = asked.elapsed();
    eprintln!("the outage verdict took {took:?}");
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(down.problem(), "store-unavailable");
    assert_eq!(app.counters.started(), 0);
    // Not a timing benchmark: a bound far above the default timeouts, far below the pool's
    // 30 s default that an unconfigured sqlx pool would wait.
    assert!(took < Duration::from_secs(5), "the verdict took {took:?}");
    db.server.as_mut().unwrap().start_again();
    let mut answer = app.post("/charges", "k10", ORDER).send().await;
    for _ in 0..20 {
        if answer.status == 201 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        answer = app.post("/charges", "k10", ORDER).send().await;
    }
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!((app.counters.started(), db.charges().await), (1, 1));
}

/// A statement of the handler fails and aborts the transaction, but the handler answers a
/// recorded status: 500 `transaction-aborted` (not a 503 that invites the same failure again),
/// nothing kept, the key free. Likewise a deferred constraint that fails at COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_the_handler_broke_is_500_transaction_aborted() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    for attempt in 1..=2 {
        let answer = app.post("/coupon", "k11", ORDER).send().await;
        assert_eq!(answer.status, 500, "attempt {attempt}: {answer:?}");
        assert_eq!(answer.problem(), "transaction-aborted");
    }
    assert_eq!((app.counters.started(), db.charges().await), (2, 0));
    let deferred = app.post("/deferred", "k12", ORDER).send().await;
    assert_eq!(deferred.status, 500, "{deferred:?}");
    assert_eq!(deferred.problem(), "transaction-aborted");
}

/// A panic in the response body (after the handler returned) holds the key for a lease, as
/// the 500 says, and rolls the write back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_response_body_holds_the_key_as_it_says() {
    fn short(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.lease(Duration::from_secs(1))
    }
    let db = Database::start().await;
    let app = db.serve(short).await;
    let panicked = app.post("/body-panics", "k13", ORDER).send().await;
    assert_eq!(panicked.status, 500, "{panicked:?}");
    assert_eq!(panicked.problem(), "handler-panicked");
    assert!(
        panicked.text().contains("stays claimed"),
        "{}",
        panicked.text()
    );
    let held = app.post("/body-panics", "k13", ORDER).send().await;
    assert_eq!(held.status, 409, "{held:?}");
    assert_eq!((app.counters.started(), db.charges().await), (1, 0));
}

/// A body that holds the `Tx`: a released status still reaches the client (its writes roll
/// back when the body is dropped), and an event stream's key is held as `on_unrecordable`
/// says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_holding_the_tx_get_their_outcome() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let released = app.post("/released-holding", "k14", ORDER).send().await;
    assert_eq!(released.status, 503, "{released:?}");
    assert_eq!(released.text(), "data: done\n\n");
    let streamed = app.post("/stream-holding", "k15", ORDER).send().await;
    assert_eq!(streamed.status, 500, "{streamed:?}");
    assert_eq!(streamed.problem(), "response-unrecordable");
    let held = app.post("/stream-holding", "k15", ORDER).send().await;
    assert_eq!(held.status, 409, "{held:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!((app.counters.started(), db.charges().await), (2, 0));
}

/// The kept-`Tx` answer says what happened, and nothing it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_tx_is_explained_truthfully() {
    let db = Database::start().await;
    let app = db.serve(defaults).await;
    let kept = app.post("/keeps", "k16", ORDER).send().await;
    assert_eq!(kept.problem(), "misconfigured");
    let text = kept.text();
    assert!(text.contains("rolled back, and the key is free"), "{text}");
    assert!(!text.contains("did not run"), "{text}");
}

/// `Option<Tx>`: `Some` for a request with a key, `None` without one on a `key_optional` layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_tx_is_none_where_none_was_lent() {
    fn optional(layer: IdempotencyLayer) -> IdempotencyLayer {
        layer.key_optional()
    }
    let db = Database::start().await;
    let app = db.serve(optional).await;
    let keyed = app.post("/maybe", "k17", ORDER).send().await;
    assert_eq!(keyed.text(), "lent: true");
    let unkeyed = app.request("POST", "/maybe").json(ORDER).send().await;
    assert_eq!(unkeyed.text(), "lent: false");
}

/// While the first request's transaction is open (its claim unreadable to others), its request is
/// unknown: a different request under its key gets 409 like the same one (not 422: told "another
/// request", a retry of the same one could be sent again under a new key and repeat the effect);
/// after it commits, the different one gets 422 and the same one the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_request_under_a_key_in_flight_is_409_then_422() {
    let db = Database::start().await;
    let app = Arc::new(db.serve(defaults).await);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/slow", "k18", ORDER).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let other = r#"{"amount_cents": 1, "currency": "EUR"}"#;
    let different = app.post("/slow", "k18", other).send().await;
    assert_eq!(different.status, 409, "{different:?}");
    let same = app.post("/slow", "k18", ORDER).send().await;
    assert_eq!(same.status, 409, "{same:?}");
    assert_eq!(different.problem(), same.problem());
    assert_eq!(first.await.unwrap().status, 201);
    let different = app.post("/slow", "k18", other).send().await;
    assert_eq!(different.status, 422, "{different:?}");
    assert_eq!(different.problem(), "key-reused");
    assert!(app.post("/slow", "k18", ORDER).send().await.replayed());
    assert_eq!((app.counters.started(), db.charges().await), (1, 1));
}

/// The reply to the request's `COMMIT` is lost: 503 `store-unavailable` saying so, and the
/// retry settles it: a replay if it committed, a run if it did not; one row either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_commit_reply_is_503_and_the_retry_settles_it() {
    let db = Database::start().await;
    let options = db.pool.connect_options();
    let direct = db.serve(defaults).await;
    for (key, committed) in [("lost-committed", true), ("lost-rolled-back", false)] {
        let port = idem_test_servers::commit_cutting_proxy(
            options.get_host(),
            options.get_port(),
            committed,
        )
        .await;
        let cut_pool = sqlx::postgres::PgPoolOptions::new()
            .connect_with(options.as_ref().clone().port(port))
            .await
            .unwrap();
        let idem = Idempotency::new(PostgresStore::from_pool(cut_pool))
            .with_key_prefix(format!("{}:", std::process::id()))
            .with_store_attempts(1);
        let cut = db.serve_over(idem, defaults).await;
        let lost = cut.post("/charges", key, ORDER).send().await;
        assert_eq!(lost.status, 503, "{key}: {lost:?}");
        assert_eq!(lost.problem(), "store-unavailable");
        assert!(
            lost.text().contains("COMMIT was lost"),
            "{key}: {}",
            lost.text()
        );
        // Until the server has seen the cut connection and ended its transaction, the key is
        // still held: 409, as a client retrying after `Retry-After` would be told.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let retried = loop {
            let retried = direct.post("/charges", key, ORDER).send().await;
            if retried.status != 409 || tokio::time::Instant::now() >= deadline {
                break retried;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(retried.status, 201, "{key}: {retried:?}");
        assert_eq!(retried.replayed(), committed, "{key}: {retried:?}");
    }
    assert_eq!(
        db.charges().await,
        2,
        "one row per key, whatever each COMMIT did"
    );
}

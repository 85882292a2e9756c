//! `#[idempotent(transaction = conn)]` on axum handlers (features `axum` and `postgres`): the
//! connection from the `idem::postgres::Connection` extractor, `(StatusCode, Json<T>)` recorded
//! in the handler's transaction, `Problem` as the error type, replays marked; served on a
//! loopback port to a real client, against a private PostgreSQL, with rows counted.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

#[path = "support/customer.rs"]
mod customer;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use customer::Customer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem::http::{IdempotencyKey, MarkReplayedLayer, Problem};
use idem::postgres::sqlx::{self, PgPool};
use idem::postgres::{Connection, PostgresStore};
use idem::{idempotent, Idempotency};
use serde::{Deserialize, Serialize};

#[derive(Clone)]
struct App {
    idem: Idempotency,
    pool: PgPool,
    runs: Arc<AtomicU32>,
}

impl FromRef<App> for PgPool {
    fn from_ref(app: &App) -> Self {
        app.pool.clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    cents: i64,
    /// Fail after the insert: `"status"` answers 503, `"error"` returns a `Problem`.
    #[serde(default)]
    fail: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: i64,
    customer: String,
}

#[idempotent(key = key, scope = customer.0, using = &app.idem, fingerprint = order, transaction = conn)]
async fn create_payment(
    State(app): State<App>,
    customer: Customer,
    key: IdempotencyKey,
    mut conn: Connection,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<Receipt>), Problem> {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let id: i64 = sqlx::query_scalar("INSERT INTO charges (cents) VALUES ($1) RETURNING id")
        .bind(order.cents)
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| Problem::status(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
    let receipt = Json(Receipt {
        id,
        customer: customer.0,
    });
    match order.fail.as_deref() {
        Some("status") => Ok((StatusCode::SERVICE_UNAVAILABLE, receipt)),
        Some("error") => Err(Problem::status(StatusCode::PAYMENT_REQUIRED, "declined")),
        _ => Ok((StatusCode::CREATED, receipt)),
    }
}

/// Ignores a failed statement (which aborts its transaction) and answers 201.
#[idempotent(key = key, using = &app.idem, transaction = conn)]
async fn ignores_a_failure(
    State(app): State<App>,
    key: IdempotencyKey,
    mut conn: Connection,
) -> Result<(StatusCode, Json<i64>), Problem> {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let _ = sqlx::query("SELECT 1/0").execute(&mut *conn).await;
    Ok((StatusCode::CREATED, Json(0)))
}

/// Inserts, then takes its time (a provider's call).
#[idempotent(key = key, using = &app.idem, transaction = conn)]
async fn slow(
    State(app): State<App>,
    key: IdempotencyKey,
    mut conn: Connection,
) -> Result<(StatusCode, Json<i64>), Problem> {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let id: i64 = sqlx::query_scalar("INSERT INTO charges (cents) VALUES (7) RETURNING id")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| Problem::status(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    Ok((StatusCode::CREATED, Json(id)))
}

/// Inserts, then panics on its first execution.
#[idempotent(key = key, using = &app.idem, transaction = conn, lease = "1s", on_in_progress = reject)]
async fn panics(
    State(app): State<App>,
    key: IdempotencyKey,
    mut conn: Connection,
) -> Result<Json<i64>, Problem> {
    let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
    let id: i64 = sqlx::query_scalar("INSERT INTO charges (cents) VALUES (9) RETURNING id")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| Problem::status(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
    if run == 1 {
        panic!("the handler fails after its insert (on purpose, in a test)");
    }
    Ok(Json(id))
}

/// `Json<T>` alone, and no fingerprint.
#[idempotent(key = key, using = &app.idem, transaction = conn)]
async fn refund(
    State(app): State<App>,
    key: IdempotencyKey,
    mut conn: Connection,
) -> Result<Json<i64>, Problem> {
    app.runs.fetch_add(1, Ordering::SeqCst);
    let id: i64 = sqlx::query_scalar("INSERT INTO charges (cents) VALUES (-1) RETURNING id")
        .fetch_one(&mut *conn)
        .await
        .map_err(|err| Problem::status(StatusCode::SERVICE_UNAVAILABLE, err.to_string()))?;
    Ok(Json(id))
}

struct Running {
    url: String,
    app: App,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<axum::body::Bytes>>,
    _server: Option<idem_test_servers::PostgresServer>,
}

async fn start() -> Running {
    let (url, server) = idem_test_servers::any_database();
    let store = PostgresStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool().clone();
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS charges; \
         CREATE TABLE charges (id bigserial PRIMARY KEY, cents bigint NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = App {
        idem: Idempotency::new(store),
        pool,
        runs: Arc::default(),
    };
    let router = Router::new()
        .route("/payments", post(create_payment))
        .route("/refunds", post(refund))
        .route("/ignores", post(ignores_a_failure))
        .route("/slow", post(slow))
        .route("/panics", post(panics))
        .layer(MarkReplayedLayer::new())
        .with_state(app.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Running {
        url: address,
        app,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _server: server,
    }
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    json: serde_json::Value,
}

impl Running {
    async fn post(&self, path: &str, customer: &str, key: &str, json: &str) -> Answer {
        let request = axum::http::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header("x-customer", customer)
            .header("idempotency-key", key)
            .body(Full::new(axum::body::Bytes::copy_from_slice(
                json.as_bytes(),
            )))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let replayed = response.headers().get("idempotent-replayed").is_some();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&body)));
        Answer {
            status,
            replayed,
            json,
        }
    }

    /// Sends a request and gives up on it after `patience`, as a client that goes away.
    async fn abandon(&self, path: &str, key: &str, patience: std::time::Duration) {
        let request = axum::http::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Full::new(axum::body::Bytes::from_static(b"{}")))
            .unwrap();
        let answered = tokio::time::timeout(patience, self.client.request(request)).await;
        assert!(answered.is_err(), "answered before the client gave up");
    }

    async fn rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM charges")
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    fn runs(&self) -> u32 {
        self.app.runs.load(Ordering::SeqCst)
    }
}

const ORDER: &str = r#"{"cents": 1250}"#;

/// The status and data commit with the row, and the duplicate replays both, marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_in_its_transaction_commits_once_and_replays_marked() {
    let app = start().await;
    let first = app.post("/payments", "ann", "k1", ORDER).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.json);
    assert!(!first.replayed);
    let again = app.post("/payments", "ann", "k1", ORDER).await;
    assert_eq!(
        (again.status, &again.json),
        (StatusCode::CREATED, &first.json)
    );
    assert!(again.replayed);
    let other = app.post("/payments", "ann", "k1", r#"{"cents": 1}"#).await;
    assert_eq!(
        other.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        other.json
    );
    assert_eq!(other.json["code"], "key-reused");
    assert_eq!((app.runs(), app.rows().await), (1, 1));
}

/// A 5xx response, or an `Err`, rolls the row back and frees the key: the retry runs once more
/// against unchanged data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_status_or_an_error_rolls_the_row_back() {
    let app = start().await;
    let status = app
        .post("/payments", "bo", "k2", r#"{"cents": 5, "fail": "status"}"#)
        .await;
    assert_eq!(
        status.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        status.json
    );
    let error = app
        .post("/payments", "bo", "k3", r#"{"cents": 5, "fail": "error"}"#)
        .await;
    assert_eq!(error.status, StatusCode::PAYMENT_REQUIRED, "{}", error.json);
    assert_eq!(error.json["detail"], "declined");
    assert_eq!(app.rows().await, 0, "both rolled back");
    let retried = app
        .post("/payments", "bo", "k2", r#"{"cents": 5, "fail": "status"}"#)
        .await;
    assert_eq!(retried.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!retried.replayed, "released, so it ran again");
    assert_eq!(app.runs(), 3);
}

/// Two customers, one key: two rows, two receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_customers_with_one_key_are_charged_apart() {
    let app = start().await;
    let ann = app.post("/payments", "ann", "order-1", ORDER).await;
    let bo = app.post("/payments", "bo", "order-1", ORDER).await;
    assert_eq!(
        (ann.status, bo.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(
        (ann.json["customer"].as_str(), bo.json["customer"].as_str()),
        (Some("ann"), Some("bo"))
    );
    assert!(!bo.replayed);
    assert_eq!(app.rows().await, 2);
}

/// `Result<Json<T>, Problem>` in a transaction: recorded and replayed too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_handler_in_its_transaction_replays() {
    let app = start().await;
    let first = app.post("/refunds", "cy", "r1", "{}").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.json);
    let again = app.post("/refunds", "cy", "r1", "{}").await;
    assert_eq!(again.json, first.json);
    assert!(again.replayed);
    assert_eq!((app.runs(), app.rows().await), (1, 1));
}

/// A handler that broke its own transaction and answered 201 gets 500 `transaction-aborted`
/// through `Problem`, as through the layer; nothing is kept and the retry runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_transaction_is_500_transaction_aborted() {
    let app = start().await;
    for _ in 0..2 {
        let answer = app.post("/ignores", "dee", "t1", "{}").await;
        assert_eq!(
            answer.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}",
            answer.json
        );
        assert_eq!(answer.json["code"], "transaction-aborted");
    }
    assert_eq!(app.runs(), 2);
}

/// A client that goes away mid-handler does not cancel it: it commits, and the retry replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_does_not_cancel_the_handler() {
    let app = start().await;
    app.abandon("/slow", "s1", std::time::Duration::from_millis(150))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(app.rows().await, 1, "the abandoned handler committed");
    let retried = app.post("/slow", "eve", "s1", "{}").await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.json);
    assert!(retried.replayed);
    assert_eq!((app.runs(), app.rows().await), (1, 1));
}

/// A panic after the insert rolls it back and holds the key for a lease (as the layer does),
/// then the retry runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_rolls_back_and_holds_the_key_for_a_lease() {
    let app = start().await;
    let request = axum::http::Request::post(format!("{}/panics", app.url))
        .header("content-type", "application/json")
        .header("idempotency-key", "p1")
        .body(Full::new(axum::body::Bytes::from_static(b"{}")))
        .unwrap();
    let panicked = app.client.request(request).await;
    assert!(
        panicked.is_err(),
        "a panicking handler closes the connection: {panicked:?}"
    );
    assert_eq!(app.rows().await, 0, "its insert was rolled back");
    let held = app.post("/panics", "fay", "p1", "{}").await;
    assert_eq!(held.status, StatusCode::CONFLICT, "{}", held.json);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let retried = app.post("/panics", "fay", "p1", "{}").await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.json);
    assert_eq!((app.runs(), app.rows().await), (2, 1));
}

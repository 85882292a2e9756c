//! `#[idempotent]` on axum handlers (feature `axum`): the `IdempotencyKey` extractor, handlers
//! returning `Json<T>` or `(StatusCode, Json<T>)`, idem's errors as problem responses; served on
//! a loopback port and driven by a real HTTP client, with counted executions.

#![allow(
    clippy::unwrap_used,
    reason = "tests and their helpers fail loudly by design"
)]

#[path = "support/customer.rs"]
mod customer;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use customer::Customer;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use idem::http::{problem_response, IdempotencyKey, MarkReplayedLayer, Problem};
use idem::{idempotent, Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Clone)]
struct AppState {
    idem: Idempotency,
    charges: Arc<AtomicU32>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Order {
    amount_cents: u64,
    currency: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: String,
    #[serde(default)]
    customer: String,
    amount_cents: u64,
}

#[derive(Debug)]
enum ApiError {
    Idem(idem::Error),
}

impl From<idem::Error> for ApiError {
    fn from(err: idem::Error) -> Self {
        Self::Idem(err)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Idem(err) => problem_response(&err),
        }
    }
}

#[idempotent(key = key, scope = customer.0, using = &state.idem, fingerprint = order)]
async fn create_payment(
    State(state): State<AppState>,
    customer: Customer,
    key: IdempotencyKey,
    Json(order): Json<Order>,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let n = state.charges.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let receipt = Receipt {
        id: format!("pay_{n}"),
        customer: customer.0,
        amount_cents: order.amount_cents,
    };
    Ok((StatusCode::CREATED, Json(receipt)))
}

#[idempotent(key = key, using = &state.idem, on_in_progress = reject)]
async fn refund(
    State(state): State<AppState>,
    key: IdempotencyKey,
) -> Result<Json<Receipt>, Problem> {
    let n = state.charges.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(Json(Receipt {
        id: format!("ref_{n}"),
        customer: String::new(),
        amount_cents: 0,
    }))
}

/// 503 on its first execution, 201 after: the 503 must not be recorded.
#[idempotent(key = key, using = &state.idem)]
async fn busy_first(
    State(state): State<AppState>,
    key: IdempotencyKey,
) -> Result<(StatusCode, Json<Receipt>), ApiError> {
    let n = state.charges.fetch_add(1, Ordering::SeqCst) + 1;
    let status = if n == 1 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        Json(Receipt {
            id: format!("busy_{n}"),
            customer: String::new(),
            amount_cents: 0,
        }),
    ))
}

/// Refuses every request with a problem of its own; idem's errors answer as the layer's.
#[idempotent(key = key, using = &state.idem, fingerprint = cents)]
async fn declined(
    State(state): State<AppState>,
    key: IdempotencyKey,
    Json(cents): Json<u64>,
) -> Result<Json<Receipt>, Problem> {
    state.charges.fetch_add(1, Ordering::SeqCst);
    Err(Problem::status(
        StatusCode::PAYMENT_REQUIRED,
        format!("card declined for {cents} cents"),
    ))
}

struct App {
    url: String,
    charges: Arc<AtomicU32>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<axum::body::Bytes>>,
}

async fn start() -> App {
    let charges = Arc::new(AtomicU32::new(0));
    let state = AppState {
        idem: Idempotency::new(MemoryStore::new()),
        charges: charges.clone(),
    };
    let router = Router::new()
        .route("/payments", post(create_payment))
        .route("/refunds", post(refund))
        .route("/busy", post(busy_first))
        .route("/declined", post(declined))
        .layer(MarkReplayedLayer::new())
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    App {
        url,
        charges,
        client: Client::builder(TokioExecutor::new()).build_http(),
    }
}

impl App {
    async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        json: &str,
    ) -> (StatusCode, serde_json::Value) {
        self.post_as("anonymous", path, key, json).await
    }

    async fn post_as(
        &self,
        customer: &str,
        path: &str,
        key: Option<&str>,
        json: &str,
    ) -> (StatusCode, serde_json::Value) {
        let (status, _, json) = self.send(customer, path, key, json).await;
        (status, json)
    }

    async fn send(
        &self,
        customer: &str,
        path: &str,
        key: Option<&str>,
        json: &str,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let mut request = axum::http::Request::post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .header("x-customer", customer);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = request
            .body(Full::new(axum::body::Bytes::copy_from_slice(
                json.as_bytes(),
            )))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("JSON body, got {:?}", String::from_utf8_lossy(&body)));
        (status, headers, json)
    }
}

const ORDER: &str = r#"{"amount_cents": 1250, "currency": "EUR"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_status_and_json_replays_both() {
    let app = start().await;
    let (status, first) = app.post("/payments", Some("k-1"), ORDER).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(first["id"], "pay_1");
    let (status, again) = app.post("/payments", Some("\"k-1\""), ORDER).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    assert_eq!(app.charges.load(Ordering::SeqCst), 1);

    let (status, problem) = app
        .post(
            "/payments",
            Some("k-1"),
            r#"{"amount_cents": 1, "currency": "EUR"}"#,
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["code"], "key-reused");
    assert_eq!(app.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_wait_for_the_one_execution() {
    let app = Arc::new(start().await);
    let answers: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { app.post("/payments", Some("k-2"), ORDER).await })
        })
        .collect();
    for answer in answers {
        let (status, receipt) = answer.await.unwrap();
        assert_eq!(
            (status, receipt["id"].as_str()),
            (StatusCode::CREATED, Some("pay_1"))
        );
    }
    assert_eq!(app.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extractor_refuses_missing_and_malformed_keys() {
    let app = start().await;
    for (key, code) in [(None, "key-missing"), (Some("two words"), "key-malformed")] {
        let (status, problem) = app.post("/payments", key, ORDER).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["code"], code);
    }
    assert_eq!(app.charges.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_json_gets_409_while_in_flight() {
    let app = Arc::new(start().await);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/refunds", Some("r-1"), "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, problem) = app.post("/refunds", Some("r-1"), "{}").await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "in-flight");
    let (status, receipt) = first.await.unwrap();
    assert_eq!(
        (status, receipt["id"].as_str()),
        (StatusCode::OK, Some("ref_1"))
    );
    let (_, replayed) = app.post("/refunds", Some("r-1"), "{}").await;
    assert_eq!(replayed, receipt);
    assert_eq!(app.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_5xx_is_released_like_the_layers() {
    let app = start().await;
    let (status, first) = app.post("/busy", Some("b-1"), "{}").await;
    assert_eq!(
        (status, first["id"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("busy_1"))
    );
    let (status, retried) = app.post("/busy", Some("b-1"), "{}").await;
    assert_eq!(
        (status, retried["id"].as_str()),
        (StatusCode::CREATED, Some("busy_2"))
    );
    let (status, replayed) = app.post("/busy", Some("b-1"), "{}").await;
    assert_eq!((status, &replayed), (StatusCode::CREATED, &retried));
    assert_eq!(app.charges.load(Ordering::SeqCst), 2);
}

/// Two customers who pick the same key are two requests: two charges, each with its own
/// receipt, and neither learns that the other used the key (no 422 for another body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_keys_keep_two_customers_apart() {
    let app = start().await;
    let (status, alice) = app
        .post_as("alice", "/payments", Some("order-1"), ORDER)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{alice}");
    let (status, bob) = app
        .post_as("bob", "/payments", Some("order-1"), ORDER)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{bob}");
    assert_eq!(
        (alice["customer"].as_str(), bob["customer"].as_str()),
        (Some("alice"), Some("bob"))
    );
    assert_ne!(alice["id"], bob["id"]);
    assert_eq!(app.charges.load(Ordering::SeqCst), 2);
    let other = r#"{"amount_cents": 9, "currency": "EUR"}"#;
    let (status, carol) = app
        .post_as("carol", "/payments", Some("order-1"), other)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{carol}");
    let (status, again) = app
        .post_as("alice", "/payments", Some("order-1"), ORDER)
        .await;
    assert_eq!(
        (status, &again),
        (StatusCode::CREATED, &alice),
        "alice's retry replays hers"
    );
    assert_eq!(app.charges.load(Ordering::SeqCst), 3);
}

/// With `MarkReplayedLayer`, a replayed (or waited-for) handler response says so, as the
/// layer's do; a first execution does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_of_annotated_handlers_are_marked() {
    let app = start().await;
    let (status, headers, first) = app.send("dan", "/payments", Some("m-1"), ORDER).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers.get("idempotent-replayed"), None);
    let (status, headers, again) = app.send("dan", "/payments", Some("m-1"), ORDER).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    assert_eq!(headers.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(app.charges.load(Ordering::SeqCst), 1);
}

/// `Problem` needs no glue: idem's errors are the layer's problems (409 with `Retry-After`,
/// 422), and the handler's own are problems with its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problem_answers_idem_errors_as_the_layer_and_its_own_with_its_status() {
    let app = Arc::new(start().await);
    let (status, headers, problem) = app.send("erin", "/declined", Some("d-1"), "7").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{problem}");
    assert_eq!(
        headers.get("content-type").unwrap(),
        "application/problem+json"
    );
    assert_eq!(problem["detail"], "card declined for 7 cents");
    assert_eq!(problem["status"], 402);
    let first = {
        let app = app.clone();
        tokio::spawn(async move { app.post("/refunds", Some("r-2"), "{}").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, headers, problem) = app.send("anonymous", "/refunds", Some("r-2"), "{}").await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "in-flight");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    first.await.unwrap();
}

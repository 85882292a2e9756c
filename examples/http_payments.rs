//! A payments API behind idem's `Idempotency-Key` layer.
//!
//! ```sh
//! cargo run --example http_payments --features axum                  # the in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example http_payments --features axum,redis
//! ```
//!
//! `POST /payments` with an `Idempotency-Key` header and `{"amount_cents": 1250, "currency":
//! "EUR"}` charges once per key (about 300 ms, like a payment gateway) and answers 201 with the
//! receipt and its `Location`; `GET /payments` lists the charges made. A body with
//! `"simulate_gateway_error": true` fails with 502 on its first attempt (the key is released) and
//! succeeds when retried. The README's "HTTP services" section has the curl lines to try.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use idem::http::{IdempotencyKey, IdempotencyLayer};
use idem::{Idempotency, MemoryStore};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct PaymentRequest {
    amount_cents: u64,
    currency: String,
    #[serde(default)]
    simulate_gateway_error: bool,
}

#[derive(Clone, Serialize)]
struct Charge {
    id: String,
    amount_cents: u64,
    currency: String,
}

#[derive(Default)]
struct Ledger {
    charges: Vec<Charge>,
    /// Keys whose first attempt already failed at the gateway.
    failed_once: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

async fn create_payment(
    State(ledger): State<Shared>,
    key: Option<IdempotencyKey>,
    Json(request): Json<PaymentRequest>,
) -> Response {
    // The payment gateway's round trip.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = key.map(|key| key.to_string()).unwrap_or_default();
    if request.simulate_gateway_error && !ledger.failed_once.contains(&key) {
        ledger.failed_once.push(key);
        return (StatusCode::BAD_GATEWAY, "the payment gateway failed; retry").into_response();
    }
    let charge = Charge {
        id: format!("pay_{}", ledger.charges.len() + 1),
        amount_cents: request.amount_cents,
        currency: request.currency,
    };
    ledger.charges.push(charge.clone());
    println!(
        "charged {} {} as {}",
        charge.amount_cents, charge.currency, charge.id
    );
    let location = format!("/payments/{}", charge.id);
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(charge),
    )
        .into_response()
}

async fn list_payments(State(ledger): State<Shared>) -> Json<Vec<Charge>> {
    let ledger = ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(ledger.charges.clone())
}

async fn runtime() -> Result<Idempotency, Box<dyn std::error::Error>> {
    match std::env::var("REDIS_URL") {
        Err(_) => Ok(Idempotency::new(MemoryStore::new())),
        #[cfg(feature = "redis")]
        Ok(url) => {
            let store = idem::redis::RedisStore::connect(&url).await?;
            println!(
                "records in Redis at {}",
                url.rsplit('@').next().unwrap_or(&url)
            );
            Ok(Idempotency::new(store).with_key_prefix("http-payments:"))
        }
        #[cfg(not(feature = "redis"))]
        Ok(_) => Err("REDIS_URL is set: run with `--features axum,redis` to use Redis".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let idempotency = IdempotencyLayer::new(runtime().await?);
    let app = Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .layer(idempotency.clone())
        .with_state(Shared::default());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".to_owned());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Payments in flight finish and record before the process exits.
    idempotency.shutdown().await;
    Ok(())
}

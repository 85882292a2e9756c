//! A payments API behind idem's `Idempotency-Key` layer.
//!
//! ```sh
//! cargo run --example http_payments --features axum                  # the in-memory store
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example http_payments --features axum,redis
//! DATABASE_URL=postgres://postgres@127.0.0.1/test cargo run --example http_payments --features axum,postgres
//! ```
//!
//! `POST /payments` with an `Idempotency-Key` header and `{"amount_cents": 1250, "currency":
//! "EUR"}` charges once per key (about 300 ms, like a payment gateway) and answers 201 with the
//! receipt and its `Location`; `GET /payments` lists the charges made. A body with
//! `"simulate_gateway_error": true` fails with 502 on its first attempt (the key is released) and
//! succeeds when retried. The README's "HTTP services" section has the curl lines to try.
//!
//! With `DATABASE_URL`, each charge is a row of table `charges` (created if missing), written
//! through the request's transaction (`idem::postgres::Tx`) by a layer in transactional mode: the
//! row and the recorded response commit together, or neither does.

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
    amount_cents: i64,
    currency: String,
    #[serde(default)]
    simulate_gateway_error: bool,
}

#[derive(Clone, Serialize)]
#[cfg_attr(feature = "postgres", derive(sqlx::FromRow))]
struct Charge {
    id: String,
    amount_cents: i64,
    currency: String,
}

#[derive(Default)]
struct Ledger {
    charges: Vec<Charge>,
    /// Keys whose first attempt already failed at the gateway.
    failed_once: Vec<String>,
}

type Shared = Arc<Mutex<Ledger>>;

/// The payment gateway's round trip: fails once per key when the request asks it to.
async fn gateway(ledger: &Shared, key: &Option<IdempotencyKey>, request: &PaymentRequest) -> bool {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let key = key.as_ref().map(|key| key.to_string()).unwrap_or_default();
    if request.simulate_gateway_error && !ledger.failed_once.contains(&key) {
        ledger.failed_once.push(key);
        return false;
    }
    true
}

fn gateway_failed() -> Response {
    (StatusCode::BAD_GATEWAY, "the payment gateway failed; retry").into_response()
}

fn created(charge: Charge) -> Response {
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

async fn create_payment(
    State(ledger): State<Shared>,
    key: Option<IdempotencyKey>,
    Json(request): Json<PaymentRequest>,
) -> Response {
    if !gateway(&ledger, &key, &request).await {
        return gateway_failed();
    }
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let charge = Charge {
        id: format!("pay_{}", ledger.charges.len() + 1),
        amount_cents: request.amount_cents,
        currency: request.currency,
    };
    ledger.charges.push(charge.clone());
    created(charge)
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

/// The API on the in-memory ledger, behind a layer on `REDIS_URL`'s store or memory.
async fn memory_app() -> Result<(Router, IdempotencyLayer), Box<dyn std::error::Error>> {
    let idempotency = IdempotencyLayer::new(runtime().await?);
    let app = Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .layer(idempotency.clone())
        .with_state(Shared::default());
    Ok((app, idempotency))
}

#[cfg(feature = "postgres")]
mod database {
    //! The same API with its charges in PostgreSQL, written in each request's transaction.

    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::post;
    use axum::{Json, Router};
    use idem::http::{IdempotencyKey, IdempotencyLayer};
    use idem::postgres::{PostgresStore, Tx};
    use idem::Idempotency;
    use sqlx::PgPool;

    use super::{created, gateway, gateway_failed, Charge, PaymentRequest, Shared};

    const SCHEMA: &str = "CREATE SEQUENCE IF NOT EXISTS charges_id_seq; \
        CREATE TABLE IF NOT EXISTS charges ( \
            id text PRIMARY KEY DEFAULT 'pay_' || nextval('charges_id_seq'), \
            amount_cents bigint NOT NULL, \
            currency text NOT NULL)";

    #[derive(Clone)]
    struct App {
        pool: PgPool,
        gateway: Shared,
    }

    async fn create_payment(
        State(app): State<App>,
        key: Option<IdempotencyKey>,
        mut tx: Tx,
        Json(request): Json<PaymentRequest>,
    ) -> Response {
        if !gateway(&app.gateway, &key, &request).await {
            return gateway_failed();
        }
        // In the request's transaction: this row commits with the recorded 201, or not at all.
        let inserted = sqlx::query_as::<_, Charge>(
            "INSERT INTO charges (amount_cents, currency) VALUES ($1, $2) \
             RETURNING id, amount_cents, currency",
        )
        .bind(request.amount_cents)
        .bind(&request.currency)
        .fetch_one(&mut *tx)
        .await;
        match inserted {
            Ok(charge) => created(charge),
            Err(err) => database_failed(&err),
        }
    }

    async fn list_payments(State(app): State<App>) -> Result<Json<Vec<Charge>>, Response> {
        sqlx::query_as("SELECT id, amount_cents, currency FROM charges ORDER BY length(id), id")
            .fetch_all(&app.pool)
            .await
            .map(Json)
            .map_err(|err| database_failed(&err))
    }

    /// A 503: the layer releases the key, so the client's retry runs again.
    fn database_failed(err: &sqlx::Error) -> Response {
        use axum::response::IntoResponse;
        eprintln!("database error: {err}");
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "the database failed; retry",
        )
            .into_response()
    }

    pub(super) async fn app(
        url: &str,
    ) -> Result<(Router, IdempotencyLayer), Box<dyn std::error::Error>> {
        let store = PostgresStore::connect(url).await?;
        store.migrate().await?;
        let pool = store.pool().clone();
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        println!("charges and records in PostgreSQL, committed together");
        let idem = Idempotency::new(store).with_key_prefix("http-payments:");
        let idempotency = IdempotencyLayer::new(idem).in_transaction::<PostgresStore>();
        let app = Router::new()
            .route("/payments", post(create_payment).get(list_payments))
            .layer(idempotency.clone())
            .with_state(App {
                pool,
                gateway: Shared::default(),
            });
        Ok((app, idempotency))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (app, idempotency) = match std::env::var("DATABASE_URL") {
        Err(_) => memory_app().await?,
        #[cfg(feature = "postgres")]
        Ok(url) => database::app(&url).await?,
        #[cfg(not(feature = "postgres"))]
        Ok(_) => {
            return Err(
                "DATABASE_URL is set: run with `--features axum,postgres` to use PostgreSQL".into(),
            )
        }
    };
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
